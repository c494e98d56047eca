//! eSIMs: the delivered profile with its activation data opened, and live usage from the
//! supplier (the states it reports are kept on the record).

use serde::Serialize;

use crate::domain::esim;
use crate::domain::events::Event;
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::ids::OrderId;
use crate::domain::orders::{ActivationData, EsimRecord};
use crate::domain::store::Commit;
use crate::domain::store::StoreError;
use crate::domain::supplier::{PlanState, ProfileState};

/// An eSIM as a reseller sees it, activation data opened.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Esim")]
pub struct EsimView {
    /// ICCID.
    pub iccid: String,
    /// Order that delivered it.
    pub order_id: OrderId,
    /// `LPA:1$smdp$matching`.
    pub activation_code: String,
    /// SM-DP+ address.
    pub smdp_address: String,
    /// Matching id.
    pub matching_id: String,
    /// Whether a confirmation code is needed.
    pub confirmation_code_required: bool,
    /// Apple universal install link.
    pub apple_install_link: String,
    /// Profile state.
    pub profile_state: ProfileState,
    /// Plan state.
    pub plan_state: PlanState,
    /// Supplier raw status.
    pub supplier_status: String,
}

/// Usage of an eSIM as observed now.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Usage")]
pub struct UsageView {
    /// ICCID.
    pub iccid: String,
    /// Bytes used.
    pub used_bytes: u64,
    /// Bytes included; `None` when unlimited.
    pub total_bytes: Option<u64>,
    /// Profile state.
    pub profile_state: ProfileState,
    /// Plan state.
    pub plan_state: PlanState,
    /// Supplier raw status.
    pub supplier_status: String,
    /// Plan expiry, ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// When the supplier reported this, ms since the epoch.
    pub observed_at_ms: u64,
}

impl Gateway {
    pub(crate) fn open_esim(&self, record: &EsimRecord) -> Result<EsimView, DomainError> {
        let plain = self
            .keyring
            .open(record.iccid.as_bytes(), &record.sealed_activation)
            .ok_or_else(|| {
                StoreError::Decode(format!(
                    "activation data of an eSIM of order {} does not open",
                    record.order
                ))
            })?;
        let data: ActivationData =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Decode(e.to_string()))?;
        let code = esim::activation_code(&data.smdp_address, &data.matching_id);
        Ok(EsimView {
            iccid: record.iccid.clone(),
            order_id: record.order,
            apple_install_link: esim::apple_install_link(&code),
            activation_code: code,
            smdp_address: data.smdp_address,
            matching_id: data.matching_id,
            confirmation_code_required: record.confirmation_code_required,
            profile_state: record.profile,
            plan_state: record.plan,
            supplier_status: record.raw_status.clone(),
        })
    }

    /// One eSIM, if the caller may see it.
    pub async fn esim(&self, who: &Principal, iccid: &str) -> Result<EsimView, DomainError> {
        let rec = self.esim_record(who, iccid).await?;
        self.open_esim(&rec)
    }

    pub(crate) async fn esim_record(
        &self,
        who: &Principal,
        iccid: &str,
    ) -> Result<EsimRecord, DomainError> {
        self.store
            .esim(iccid)
            .await?
            .filter(|e| self.visible(who, e.reseller))
            .ok_or(DomainError::NotFound("esim"))
    }

    /// Live usage of an eSIM from its supplier; the states seen are kept on the record.
    pub async fn usage(&self, who: &Principal, iccid: &str) -> Result<UsageView, DomainError> {
        let mut rec = self.esim_record(who, iccid).await?;
        let supplier = self
            .suppliers
            .get(&rec.plugin)
            .ok_or_else(|| DomainError::SupplierNotLoaded(rec.plugin.clone()))?;
        let usage = supplier.usage(rec.iccid.clone()).await?;
        let observed_at_ms = self.clock.now_ms();
        self.observe_esim(
            &mut rec,
            Observation {
                profile: Some(usage.profile),
                plan: Some(usage.plan),
                raw_status: Some(usage.raw_status.clone()),
                usage: usage.total_bytes.map(|total| (usage.used_bytes, total)),
            },
        )
        .await?;
        Ok(UsageView {
            iccid: rec.iccid,
            used_bytes: usage.used_bytes,
            total_bytes: usage.total_bytes,
            profile_state: usage.profile,
            plan_state: usage.plan,
            supplier_status: usage.raw_status,
            expires_at_ms: usage.expires_at_ms,
            observed_at_ms,
        })
    }

    /// Keep what a supplier says of an eSIM (from a usage call or a webhook) on its record,
    /// with the events it raises, in one commit; nothing is written when nothing moved.
    pub(crate) async fn observe_esim(
        &self,
        rec: &mut EsimRecord,
        seen: Observation,
    ) -> Result<(), DomainError> {
        // Observations of one eSIM (webhooks applied by concurrent jobs, a usage call) are
        // serialised under its order's lock and applied to the record as stored now: none
        // is lost to another's stale copy.
        let _lock = self.fulfilment.lock_order(rec.order).await?;
        if let Some(stored) = self.store.esim(&rec.iccid).await? {
            *rec = stored;
        }
        let observed_at_ms = self.clock.now_ms();
        let before = (rec.profile, rec.plan, rec.raw_status.clone());
        rec.profile = seen.profile.unwrap_or(rec.profile);
        rec.plan = seen.plan.unwrap_or(rec.plan);
        if let Some(raw) = seen.raw_status {
            rec.raw_status = raw;
        }
        let moved = before != (rec.profile, rec.plan, rec.raw_status.clone());
        let threshold = seen
            .usage
            .and_then(|(used, total)| Event::of_usage(rec, used, total, observed_at_ms));
        if !moved && threshold.is_none() {
            return Ok(());
        }
        // The new states and the events they raise, together.
        let mut events = Event::of_esim(rec, (before.0, before.1), observed_at_ms);
        if let Some((percent, event)) = threshold {
            rec.usage_told_pct = percent;
            events.push(event);
        }
        let change = Commit::change(None, vec![rec.clone()], events);
        if let Err(rejected) = self.store.commit(&change).await? {
            return Err(StoreError::Backend(format!(
                "eSIM {} could not be updated: {rejected}",
                rec.iccid
            ))
            .into());
        }
        Ok(())
    }
}

/// What a supplier says of an eSIM; `None` leaves that part as it is.
#[derive(Debug, Default)]
pub(crate) struct Observation {
    pub profile: Option<ProfileState>,
    pub plan: Option<PlanState>,
    pub raw_status: Option<String>,
    /// Bytes used and included.
    pub usage: Option<(u64, u64)>,
}
