//! Subjects: the end users a reseller refers to by an opaque `subject_ref`. Their personal
//! fields are sealed under a data key of their own before any record holds them (see
//! [`crate::domain::personal`]); this is where that key is created and used.

use crate::domain::consent::{CollectionMethod, ConsentAction};
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::ids::{OrderId, ResellerId};
use crate::domain::orders::{Order, OrderStatus};
use crate::domain::personal::{Personal, Restriction, SealedPersonal, SubjectLookup};
use crate::domain::store::{Commit, StoreError};

use super::orders::valid_subject_ref;

impl Gateway {
    /// Seal the personal fields of order `id` of `reseller`: under the subject's data key
    /// (created on the subject's first record), or under the master key when there is no
    /// subject. Nothing to seal is `None`.
    pub(crate) async fn seal_personal(
        &self,
        reseller: ResellerId,
        id: OrderId,
        personal: &Personal,
    ) -> Result<Option<SealedPersonal>, DomainError> {
        if personal.is_empty() {
            return Ok(None);
        }
        let plaintext = serde_json::to_vec(personal).expect("personal fields serialise");
        let context = id.to_bytes();
        let Some(subject_ref) = &personal.subject_ref else {
            return Ok(Some(SealedPersonal {
                subject: None,
                sealed: self.keyring.seal(&context, &plaintext),
            }));
        };
        let lookup = self.keyring.subject_lookup(reseller, subject_ref);
        let sealed = self.seal_for(&lookup, &context, &plaintext).await?;
        Ok(Some(SealedPersonal {
            subject: Some(lookup),
            sealed,
        }))
    }

    /// Seal `plaintext` under subject `lookup`'s data key (made on first use), bound to
    /// `context`.
    pub(crate) async fn seal_for(
        &self,
        lookup: &SubjectLookup,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, DomainError> {
        let wrapped = match self.store.subject_key(lookup).await? {
            Some(wrapped) => wrapped,
            None => {
                self.store
                    .create_subject_key(lookup, &self.keyring.new_subject_key(lookup))
                    .await?
            }
        };
        Ok(self
            .keyring
            .seal_for_subject(lookup, &wrapped, context, plaintext)
            .ok_or_else(|| StoreError::Decode("a subject's data key does not open".into()))?)
    }

    /// Open what [`Gateway::seal_for`] sealed; `None` once the key it was sealed under is
    /// gone: the subject was erased (no key), or erased and seen again since (its new key
    /// does not open what was sealed before the erasure).
    pub(crate) async fn open_for(
        &self,
        lookup: &SubjectLookup,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>, DomainError> {
        let Some(wrapped) = self.store.subject_key(lookup).await? else {
            return Ok(None);
        };
        if let Some(plaintext) = self
            .keyring
            .open_for_subject(lookup, &wrapped, context, sealed)
        {
            return Ok(Some(plaintext));
        }
        // A key that does not unwrap is a broken store (or another keyring): an error. A
        // key that does, under which the record does not open, is a later key.
        if self
            .keyring
            .seal_for_subject(lookup, &wrapped, context, b"")
            .is_none()
        {
            return Err(StoreError::Decode("a subject's data key does not open".into()).into());
        }
        Ok(None)
    }

    /// The personal fields of an order, opened. A subject whose data key is gone has none
    /// left anywhere.
    pub(crate) async fn open_personal(&self, order: &Order) -> Result<Personal, DomainError> {
        let Some(personal) = &order.personal else {
            return Ok(Personal::default());
        };
        let context = order.id.to_bytes();
        let plaintext = match &personal.subject {
            None => self.keyring.open(&context, &personal.sealed),
            Some(lookup) => match self.open_for(lookup, &context, &personal.sealed).await? {
                None => return Ok(Personal::default()),
                Some(plaintext) => Some(plaintext),
            },
        };
        let plaintext = plaintext.ok_or_else(|| {
            StoreError::Decode(format!(
                "the personal fields of order {} do not open",
                order.id
            ))
        })?;
        Ok(serde_json::from_slice(&plaintext).map_err(|e| StoreError::Decode(e.to_string()))?)
    }
}

/// What a data-subject right did (P11).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "SubjectAction")]
pub struct SubjectAction {
    /// `rectify`, `erase`, `restrict`, `unrestrict` or `object`.
    pub action: &'static str,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The subject's orders this changed.
    pub orders_changed: usize,
    /// Consent events this wrote.
    pub consents_written: usize,
    /// Whether processing is restricted now.
    pub restricted: bool,
    /// `erase`: whether this call destroyed the subject's key (`false`: it was gone).
    pub erased_now: Option<bool>,
    /// `erase`: what is kept, and why.
    pub kept: Vec<KeptRecords>,
}

/// Records kept after an erasure, without their personal fields.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct KeptRecords {
    /// Which records.
    pub records: &'static str,
    /// How many of the subject's.
    pub count: usize,
    /// The fields kept.
    pub fields: &'static str,
    /// Why, and for how long.
    pub why: &'static str,
}

/// A subject's data, machine-readable (P11 access and portability). Documented in the
/// OpenAPI schema; `format` names its version.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "SubjectExport")]
pub struct SubjectExport {
    /// `simgate.subject-export.v1`.
    pub format: &'static str,
    /// The subject, as the reseller names it; `null` once erased.
    pub subject_ref: Option<String>,
    /// Whether the subject's personal fields were erased.
    pub erased: bool,
    /// When the export was made, ms since the epoch.
    pub exported_at_ms: u64,
    /// Whether processing is restricted, and since when.
    pub restricted_since_ms: Option<u64>,
    /// The subject's orders, with their eSIMs and eKYC statuses.
    pub orders: Vec<crate::domain::use_cases::orders::OrderView>,
    /// The subject's consent history, oldest first.
    pub consents: Vec<crate::domain::use_cases::consents::ConsentView>,
}

/// A rectification: what replaces what.
#[derive(Debug, Clone, Default)]
pub struct Rectification {
    /// A new `subject_ref` for every record of the subject.
    pub subject_ref: Option<String>,
    /// New metadata for every order of the subject (`Some(None)` clears it).
    pub metadata: Option<Option<serde_json::Value>>,
}

/// Most orders one subject-rights request handles.
pub const MAX_SUBJECT_ORDERS: usize = 10_000;

impl Gateway {
    /// The lookup of one of the caller's subjects, and the caller's reseller id.
    async fn subject_of(
        &self,
        who: &Principal,
        subject_ref: &str,
    ) -> Result<(ResellerId, SubjectLookup), DomainError> {
        let reseller = self.reseller_of(who).await?;
        valid_subject_ref(subject_ref)?;
        Ok((
            reseller.id,
            self.keyring.subject_lookup(reseller.id, subject_ref),
        ))
    }

    /// [`Gateway::subject_of`], for a caller whose key may write.
    async fn subject_to_change(
        &self,
        who: &Principal,
        subject_ref: &str,
    ) -> Result<(ResellerId, SubjectLookup), DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        self.subject_of(who, subject_ref).await
    }

    /// A subject's consent history, oldest first.
    async fn history_of(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
    ) -> Result<Vec<crate::domain::consent::ConsentEvent>, DomainError> {
        Ok(self
            .store
            .consents(reseller, subject, crate::domain::consent::MAX_HISTORY)
            .await?)
    }

    /// The subject's orders (those still filed under it).
    async fn orders_of(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
    ) -> Result<Vec<Order>, DomainError> {
        let ids = self
            .store
            .subject_orders(reseller, subject, MAX_SUBJECT_ORDERS)
            .await?;
        let mut orders = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(order) = self.store.order(id).await?
                && order.reseller == reseller
                && order.personal.as_ref().and_then(|p| p.subject) == Some(*subject)
            {
                orders.push(order);
            }
        }
        Ok(orders)
    }

    /// Refuse new processing for a restricted subject.
    pub(crate) async fn check_not_restricted(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
    ) -> Result<(), DomainError> {
        if self.store.restriction(reseller, subject).await?.is_some() {
            return Err(DomainError::Conflict {
                code: "subject_restricted",
                message: "processing for this subject is restricted: lift it with \
                          POST /v1/subjects/{subject_ref}/unrestrict first"
                    .into(),
            });
        }
        Ok(())
    }

    /// Everything kept about one of the caller's subjects, as one document.
    pub async fn export_subject(
        &self,
        who: &Principal,
        subject_ref: &str,
    ) -> Result<SubjectExport, DomainError> {
        let (reseller, subject) = self.subject_of(who, subject_ref).await?;
        let orders = self.orders_of(reseller, &subject).await?;
        let consents = self.history_of(reseller, &subject).await?;
        let erased = self.store.subject_key(&subject).await?.is_none()
            && (!orders.is_empty() || !consents.is_empty());
        let mut views = Vec::with_capacity(orders.len());
        for order in orders {
            views.push(self.order(who, order.id).await?);
        }
        Ok(SubjectExport {
            format: "simgate.subject-export.v1",
            subject_ref: (!erased).then(|| subject_ref.to_string()),
            erased,
            exported_at_ms: self.clock.now_ms(),
            restricted_since_ms: self
                .store
                .restriction(reseller, &subject)
                .await?
                .map(|r| r.since_ms),
            orders: views,
            consents: consents
                .iter()
                .map(crate::domain::use_cases::consents::ConsentView::of)
                .collect(),
        })
    }

    /// Replace the subject's `subject_ref` and/or metadata on every record of the subject.
    /// A new `subject_ref` moves the records to that subject (re-sealed under its key) and
    /// destroys the old subject's key. Orders still in progress are not touched: the
    /// request is refused until they settle.
    pub async fn rectify_subject(
        &self,
        who: &Principal,
        subject_ref: &str,
        change: Rectification,
    ) -> Result<SubjectAction, DomainError> {
        let (reseller, subject) = self.subject_to_change(who, subject_ref).await?;
        if let Some(new) = &change.subject_ref {
            valid_subject_ref(new)?;
        }
        if change.subject_ref.is_none() && change.metadata.is_none() {
            return Err(DomainError::Invalid {
                field: "/subject_ref",
                message: "give a new subject_ref, metadata, or both".into(),
            });
        }
        if let Some(Some(m)) = &change.metadata
            && m.to_string().len() > crate::domain::use_cases::orders::MAX_METADATA_BYTES
        {
            return Err(DomainError::Invalid {
                field: "/metadata",
                message: "too large".into(),
            });
        }
        let orders = self.orders_of(reseller, &subject).await?;
        if orders
            .iter()
            .any(|o| !o.status.is_final() && o.status != OrderStatus::AwaitingKyc)
        {
            return Err(DomainError::Conflict {
                code: "subject_orders_in_progress",
                message: "some of the subject's orders are with their supplier; retry once \
                          they settle"
                    .into(),
            });
        }
        let renamed = change
            .subject_ref
            .as_deref()
            .filter(|new| *new != subject_ref);
        let target = match renamed {
            Some(new) => self.keyring.subject_lookup(reseller, new),
            None => subject,
        };
        let now = self.clock.now_ms();
        let mut changed = 0;
        for mut order in orders {
            let _lock = self.fulfilment.lock_order(order.id).await?;
            let mut personal = self.open_personal(&order).await?;
            if personal.subject_ref.is_none() {
                // Erased already: nothing personal left to rectify.
                continue;
            }
            if let Some(new) = renamed {
                personal.subject_ref = Some(new.to_string());
            }
            if let Some(metadata) = &change.metadata {
                personal.metadata = metadata.clone();
            }
            order.personal = self.seal_personal(reseller, order.id, &personal).await?;
            order.updated_at_ms = now;
            self.store
                .index_subject_order(reseller, &target, order.id)
                .await?;
            let commit = Commit::change(Some(order), Vec::new(), Vec::new());
            if let Err(rejected) = self.store.commit(&commit).await? {
                return Err(
                    StoreError::Backend(format!("rectification refused: {rejected}")).into(),
                );
            }
            changed += 1;
        }
        let mut written = 0;
        if let Some(new) = renamed {
            for mut event in self.history_of(reseller, &subject).await? {
                event.subject = target;
                event.sealed_subject_ref = self
                    .seal_for(&target, &event.id.to_bytes(), new.as_bytes())
                    .await?;
                self.store.put_consent(&event).await?;
                written += 1;
            }
            if let Some(r) = self.store.restriction(reseller, &subject).await? {
                self.store
                    .set_restriction(reseller, &target, Some(&r))
                    .await?;
                self.store.set_restriction(reseller, &subject, None).await?;
            }
            // The old name's sealed copies go with its key.
            self.store.durable().await?;
            self.store.destroy_subject_key(&subject).await?;
        }
        self.store.durable().await?;
        Ok(SubjectAction {
            action: "rectify",
            at_ms: now,
            orders_changed: changed,
            consents_written: written,
            restricted: self.store.restriction(reseller, &target).await?.is_some(),
            erased_now: None,
            kept: Vec::new(),
        })
    }

    /// Erase one of the caller's subjects: destroy its data key, so every personal field
    /// sealed under it, wherever it was copied (orders, ledger commit records, consent
    /// events), can no longer be opened. Amounts, ids and times stay for legal retention.
    pub async fn erase_subject(
        &self,
        who: &Principal,
        subject_ref: &str,
    ) -> Result<SubjectAction, DomainError> {
        let (reseller, subject) = self.subject_to_change(who, subject_ref).await?;
        let orders = self.orders_of(reseller, &subject).await?;
        let consents = self.history_of(reseller, &subject).await?;
        let erased_now = self.store.destroy_subject_key(&subject).await?;
        self.store.durable().await?;
        Ok(SubjectAction {
            action: "erase",
            at_ms: self.clock.now_ms(),
            orders_changed: if erased_now { orders.len() } else { 0 },
            consents_written: 0,
            restricted: self.store.restriction(reseller, &subject).await?.is_some(),
            erased_now: Some(erased_now),
            kept: vec![
                KeptRecords {
                    records: "orders, their eSIMs and ledger entries",
                    count: orders.len(),
                    fields: "ids, product, quantity, amounts, status, times, ICCIDs and activation data",
                    why: "transaction records: kept 7 years for accounting and tax law, then deleted",
                },
                KeptRecords {
                    records: "consent events",
                    count: consents.len(),
                    fields: "purpose, granted or withdrawn, notice version and hash, collection method, times",
                    why: "proof that consent was given or withdrawn, for as long as the processing it covered may be questioned",
                },
            ],
        })
    }

    /// Restrict (`true`) or lift the restriction of (`false`) one of the caller's subjects.
    pub async fn restrict_subject(
        &self,
        who: &Principal,
        subject_ref: &str,
        restrict: bool,
    ) -> Result<SubjectAction, DomainError> {
        let (reseller, subject) = self.subject_to_change(who, subject_ref).await?;
        let now = self.clock.now_ms();
        let current = self.store.restriction(reseller, &subject).await?;
        match (restrict, current.is_some()) {
            (true, false) => {
                let restriction = Restriction {
                    since_ms: now,
                    by: who.key,
                };
                self.store
                    .set_restriction(reseller, &subject, Some(&restriction))
                    .await?
            }
            (false, true) => self.store.set_restriction(reseller, &subject, None).await?,
            // Already as asked: idempotent.
            _ => {}
        }
        self.store.durable().await?;
        Ok(SubjectAction {
            action: if restrict { "restrict" } else { "unrestrict" },
            at_ms: now,
            orders_changed: 0,
            consents_written: 0,
            restricted: restrict,
            erased_now: None,
            kept: Vec::new(),
        })
    }

    /// The subject objects to processing: every purpose it granted, but `ekyc` (which the
    /// products it ordered need), is withdrawn by a new consent event.
    pub async fn object_subject(
        &self,
        who: &Principal,
        subject_ref: &str,
    ) -> Result<SubjectAction, DomainError> {
        let (reseller, subject) = self.subject_to_change(who, subject_ref).await?;
        let history = self.history_of(reseller, &subject).await?;
        let state = crate::domain::consent::ConsentState::of(&history);
        let mut written = 0;
        for purpose in state.purposes() {
            if purpose.state != ConsentAction::Granted
                || purpose.purpose == crate::domain::use_cases::ekyc::EKYC_PURPOSE
            {
                continue;
            }
            let granted = history
                .iter()
                .find(|e| e.id == purpose.consent_id)
                .expect("the state names an event of the history");
            let withdrawal = crate::domain::use_cases::consents::NewConsent {
                subject_ref: subject_ref.to_string(),
                purpose: purpose.purpose.clone(),
                action: ConsentAction::Withdrawn,
                notice_version: granted.notice_version.clone(),
                notice_hash: granted.notice_hash.clone(),
                policy_url: granted.policy_url.clone(),
                collection_method: CollectionMethod::Api,
                language: granted.language.clone(),
                jurisdiction: granted.jurisdiction.clone(),
                collected_at_ms: None,
            };
            self.record_consent(who, withdrawal).await?;
            written += 1;
        }
        Ok(SubjectAction {
            action: "object",
            at_ms: self.clock.now_ms(),
            orders_changed: 0,
            consents_written: written,
            restricted: self.store.restriction(reseller, &subject).await?.is_some(),
            erased_now: None,
            kept: Vec::new(),
        })
    }
}
