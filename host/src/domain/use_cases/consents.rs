//! The consent ledger's use cases: record a grant or a withdrawal for a subject, and read
//! a subject's state per purpose, history and receipt. See [`crate::domain::consent`].

use serde::Serialize;

use crate::domain::consent::{
    CollectionMethod, ConsentAction, ConsentEvent, ConsentReceipt, ConsentState, MAX_HISTORY,
    PurposeState, ReceiptController, receipt, valid_label, valid_notice_hash, valid_purpose,
};
use crate::domain::ekyc::valid_url;
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::ids::{ConsentId, KeyId};

use super::orders::valid_subject_ref;

/// How far ahead of the gateway's clock a collection time may be (clock skew).
const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// A consent event as a reseller records it.
#[derive(Debug, Clone)]
pub struct NewConsent {
    /// The subject.
    pub subject_ref: String,
    /// The purpose, e.g. `ekyc`.
    pub purpose: String,
    /// Granted or withdrawn.
    pub action: ConsentAction,
    /// The notice's version.
    pub notice_version: String,
    /// SHA-256 of the notice, hex.
    pub notice_hash: String,
    /// Where the notice is published.
    pub policy_url: Option<String>,
    /// How it was collected.
    pub collection_method: CollectionMethod,
    /// Language of the notice.
    pub language: Option<String>,
    /// Jurisdiction.
    pub jurisdiction: Option<String>,
    /// When the subject gave it (default: now).
    pub collected_at_ms: Option<u64>,
}

/// One event of the ledger as a reseller sees it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Consent")]
pub struct ConsentView {
    /// Id.
    pub id: ConsentId,
    /// The purpose.
    pub purpose: String,
    /// Granted or withdrawn.
    pub action: ConsentAction,
    /// The notice's version.
    pub notice_version: String,
    /// SHA-256 of the notice, hex.
    pub notice_hash: String,
    /// Where the notice is published.
    pub policy_url: Option<String>,
    /// How it was collected.
    pub collection_method: CollectionMethod,
    /// Language of the notice.
    pub language: Option<String>,
    /// Jurisdiction.
    pub jurisdiction: Option<String>,
    /// When the subject gave or withdrew it, ms since the epoch.
    pub collected_at_ms: u64,
    /// When the gateway recorded it.
    pub recorded_at_ms: u64,
    /// The API key that recorded it.
    pub recorded_by: KeyId,
}

impl ConsentView {
    pub(crate) fn of(e: &ConsentEvent) -> ConsentView {
        ConsentView {
            id: e.id,
            purpose: e.purpose.clone(),
            action: e.action,
            notice_version: e.notice_version.clone(),
            notice_hash: e.notice_hash.clone(),
            policy_url: e.policy_url.clone(),
            collection_method: e.collection_method,
            language: e.language.clone(),
            jurisdiction: e.jurisdiction.clone(),
            collected_at_ms: e.collected_at_ms,
            recorded_at_ms: e.recorded_at_ms,
            recorded_by: e.recorded_by,
        }
    }
}

/// A subject's consents: where each purpose stands, the history, and a receipt.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "SubjectConsents")]
pub struct SubjectConsents {
    /// The subject.
    pub subject_ref: String,
    /// Each purpose the history names, with its current state.
    pub purposes: Vec<PurposeState>,
    /// Every event, oldest first.
    pub history: Vec<ConsentView>,
    /// A consent receipt (Kantara Consent Receipt v1.1 fields) for what is granted now;
    /// `null` when nothing is.
    pub receipt: Option<ConsentReceipt>,
}

fn invalid(field: &'static str) -> impl FnOnce(String) -> DomainError {
    move |message| DomainError::Invalid { field, message }
}

impl Gateway {
    /// Record a consent event for one of the caller's subjects.
    pub async fn record_consent(
        &self,
        who: &Principal,
        new: NewConsent,
    ) -> Result<ConsentView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        let reseller = self.reseller_of(who).await?;
        valid_subject_ref(&new.subject_ref)?;
        valid_purpose(&new.purpose).map_err(invalid("/purpose"))?;
        valid_label(&new.notice_version).map_err(invalid("/notice_version"))?;
        valid_notice_hash(&new.notice_hash).map_err(invalid("/notice_hash"))?;
        if let Some(url) = &new.policy_url {
            valid_url(url).map_err(invalid("/policy_url"))?;
        }
        if let Some(language) = &new.language {
            valid_label(language).map_err(invalid("/language"))?;
        }
        if let Some(jurisdiction) = &new.jurisdiction {
            valid_label(jurisdiction).map_err(invalid("/jurisdiction"))?;
        }
        let now = self.clock.now_ms();
        let collected_at_ms = new.collected_at_ms.unwrap_or(now);
        if collected_at_ms > now.saturating_add(MAX_SKEW_MS) {
            return Err(DomainError::Invalid {
                field: "/collected_at_ms",
                message: "must not be in the future".into(),
            });
        }
        let subject = self.keyring.subject_lookup(reseller.id, &new.subject_ref);
        let history = self
            .store
            .consents(reseller.id, &subject, MAX_HISTORY)
            .await?;
        if history.len() >= MAX_HISTORY {
            return Err(DomainError::Conflict {
                code: "consent_history_full",
                message: format!("a subject's consent history holds at most {MAX_HISTORY} events"),
            });
        }
        let id = ConsentId::new();
        let sealed_subject_ref = self
            .seal_for(&subject, &id.to_bytes(), new.subject_ref.as_bytes())
            .await?;
        let event = ConsentEvent {
            id,
            reseller: reseller.id,
            subject,
            purpose: new.purpose,
            action: new.action,
            notice_version: new.notice_version,
            notice_hash: new.notice_hash,
            policy_url: new.policy_url,
            collection_method: new.collection_method,
            language: new.language,
            jurisdiction: new.jurisdiction,
            collected_at_ms,
            recorded_at_ms: now,
            recorded_by: who.key,
            sealed_subject_ref,
        };
        self.store.put_consent(&event).await?;
        self.store.durable().await?;
        Ok(ConsentView::of(&event))
    }

    /// Where one of the caller's subjects stands on each purpose, its history and its
    /// receipt. A subject with no history has no purposes and no receipt.
    pub async fn subject_consents(
        &self,
        who: &Principal,
        subject_ref: &str,
    ) -> Result<SubjectConsents, DomainError> {
        let reseller = self.reseller_of(who).await?;
        valid_subject_ref(subject_ref)?;
        let subject = self.keyring.subject_lookup(reseller.id, subject_ref);
        let history = self
            .store
            .consents(reseller.id, &subject, MAX_HISTORY)
            .await?;
        let state = ConsentState::of(&history);
        let controller = ReceiptController {
            pii_controller: reseller.name.clone(),
            on_behalf: false,
            contact: reseller.id.to_string(),
        };
        Ok(SubjectConsents {
            subject_ref: subject_ref.to_string(),
            purposes: state.purposes().cloned().collect(),
            history: history.iter().map(ConsentView::of).collect(),
            receipt: receipt(&history, subject_ref, controller),
        })
    }
}
