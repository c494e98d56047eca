//! Orders and the eSIMs they deliver.

use serde::{Deserialize, Serialize};

use super::ekyc::EkycSession;
use super::ids::{OrderId, ResellerId};
use super::ledger::{EntryKind, LedgerEntry};
use super::personal::SealedPersonal;
use super::supplier::{Money, PlanState, ProfileState, SupplierError};

/// Where an order is in its life.
///
/// ```text
/// accepted -> submitted -> fulfilled -> cancelled
///     \            \-----> failed
///      `-> awaiting_kyc -> submitted
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Taken and paid for (balance held); not yet sent to the supplier.
    Accepted,
    /// Waiting for the end user's identity verification.
    AwaitingKyc,
    /// Sent to the supplier; waiting for delivery.
    Submitted,
    /// eSIMs delivered.
    Fulfilled,
    /// The supplier could not deliver; the hold is released.
    Failed,
    /// Cancelled after fulfilment; refunded.
    Cancelled,
}

impl OrderStatus {
    /// Every allowed transition, in one place.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Accepted, Submitted)
                | (Accepted, AwaitingKyc)
                | (Accepted, Failed)
                | (AwaitingKyc, Submitted)
                | (AwaitingKyc, Failed)
                | (Submitted, Fulfilled)
                | (Submitted, Failed)
                | (Fulfilled, Cancelled)
        )
    }

    /// Whether the order will not change again on its own.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Fulfilled | OrderStatus::Failed | OrderStatus::Cancelled
        )
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Id (also the opaque reference the supplier sees).
    pub id: OrderId,
    /// Owner.
    pub reseller: ResellerId,
    /// Gateway product id.
    pub product_id: String,
    /// Plugin serving the product.
    pub plugin: String,
    /// Supplier SKU.
    pub sku: String,
    /// eSIMs ordered.
    pub quantity: u32,
    /// Status.
    pub status: OrderStatus,
    /// Price per eSIM for this reseller.
    pub unit_price: Money,
    /// The reseller's `subject_ref` and `metadata`, sealed (see [`super::personal`]);
    /// never sent to a supplier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal: Option<SealedPersonal>,
    /// Supplier's reference for a pending order.
    pub supplier_ref: Option<String>,
    /// Delivered eSIMs.
    pub iccids: Vec<String>,
    /// Why it failed, for the reseller (no plugin internals).
    pub failure: Option<OrderFailure>,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change.
    pub updated_at_ms: u64,
    /// What is bought: new eSIMs, or a top-up of an existing one.
    #[serde(default)]
    pub kind: OrderKind,
    /// Supplier calls made so far (provision attempts and polls).
    #[serde(default)]
    pub attempts: u32,
    /// Not before this time is the supplier called again (backoff), ms since the epoch.
    /// While the order awaits eKYC: when the wait ends (the session expires).
    #[serde(default)]
    pub next_attempt_ms: u64,
    /// Its identity verification, for a product that needs one (see [`super::ekyc`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekyc: Option<EkycSession>,
    /// A routed product's other offers (`<plugin>:<sku>`) not yet tried, in order of
    /// preference: where the order fails over to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

/// What a new order buys and from whom; the rest of an [`Order`] starts out the same.
#[derive(Debug, Clone)]
pub struct OrderSpec {
    /// Owner.
    pub reseller: ResellerId,
    /// Gateway product id.
    pub product_id: String,
    /// Plugin serving it.
    pub plugin: String,
    /// Supplier SKU.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Price per unit for this reseller.
    pub unit_price: Money,
    /// What is bought.
    pub kind: OrderKind,
}

impl Order {
    /// A freshly accepted order with id `id`.
    pub fn accepted(
        spec: OrderSpec,
        id: OrderId,
        personal: Option<SealedPersonal>,
        now_ms: u64,
    ) -> Order {
        let iccids = match &spec.kind {
            OrderKind::TopUp { iccid } => vec![iccid.clone()],
            OrderKind::Esim => Vec::new(),
        };
        Order {
            id,
            reseller: spec.reseller,
            product_id: spec.product_id,
            plugin: spec.plugin,
            sku: spec.sku,
            quantity: spec.quantity,
            status: OrderStatus::Accepted,
            unit_price: spec.unit_price,
            personal,
            supplier_ref: None,
            iccids,
            failure: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            kind: spec.kind,
            attempts: 0,
            next_attempt_ms: 0,
            ekyc: None,
            fallbacks: Vec::new(),
        }
    }

    /// What the order costs in total (held on acceptance).
    pub fn total(&self) -> Option<Money> {
        Some(Money {
            minor: self
                .unit_price
                .minor
                .checked_mul(i64::from(self.quantity))?,
            currency: self.unit_price.currency.clone(),
        })
    }

    /// The total of an order that was accepted: acceptance refuses an order without one,
    /// so a stored order that has none was not written by this gateway.
    pub fn accepted_total(&self) -> Result<Money, TotalOutOfRange> {
        self.total().ok_or(TotalOutOfRange(self.id))
    }

    /// Move the order to `next` at `now_ms`, if the state machine
    /// ([`OrderStatus::can_become`]) allows it: every status change goes through here.
    pub fn transition(&mut self, next: OrderStatus, now_ms: u64) -> Result<(), IllegalTransition> {
        if !self.status.can_become(next) {
            return Err(IllegalTransition {
                order: self.id,
                from: self.status,
                to: next,
            });
        }
        self.status = next;
        self.updated_at_ms = now_ms;
        Ok(())
    }

    /// The ledger entry of `kind` that moves this order's total, dated when the order last
    /// changed. A hold has the order's id (see [`LedgerEntry::hold_for`]).
    pub fn ledger_entry(&self, kind: EntryKind) -> Result<LedgerEntry, TotalOutOfRange> {
        let total = self.accepted_total()?;
        Ok(match kind {
            EntryKind::Hold => LedgerEntry::hold_for(
                self.reseller,
                self.id,
                total.minor,
                &total.currency,
                self.updated_at_ms,
            ),
            _ => LedgerEntry::new(
                self.reseller,
                kind,
                total.minor,
                &total.currency,
                Some(self.id),
                self.updated_at_ms,
            ),
        })
    }
}

/// A stored order whose total does not fit the ledger. Acceptance refuses such an order,
/// so one that is stored was not written by this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order {0} costs more than the ledger can hold")]
pub struct TotalOutOfRange(pub OrderId);

/// A status change the state machine does not allow (a bug, or a change that raced with
/// another one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order {order} cannot go from {from:?} to {to:?}")]
pub struct IllegalTransition {
    /// The order.
    pub order: OrderId,
    /// Its status.
    pub from: OrderStatus,
    /// The status asked for.
    pub to: OrderStatus,
}

/// What an order buys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum OrderKind {
    /// New eSIMs.
    #[default]
    Esim,
    /// A plan added to an existing eSIM.
    TopUp {
        /// The eSIM topped up.
        iccid: String,
    },
}

/// Why an order failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderFailure {
    /// Stable code, e.g. `out_of_stock`, `supplier_rejected`, `plugin_trap`.
    pub code: String,
    /// Human explanation.
    pub message: String,
}

impl OrderFailure {
    /// How a supplier failure is told to the reseller on a failed order: the same code
    /// and message an API problem carries (see `SupplierError::code`).
    pub fn of(e: &SupplierError) -> OrderFailure {
        OrderFailure {
            code: e.code().into(),
            message: e.public_message(),
        }
    }
}

/// A delivered eSIM as stored. Activation data is sealed (AES-256-GCM) so it is not
/// readable in the database files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EsimRecord {
    /// ICCID.
    pub iccid: String,
    /// The order that delivered it.
    pub order: OrderId,
    /// Owner.
    pub reseller: ResellerId,
    /// Plugin serving it.
    pub plugin: String,
    /// Sealed [`ActivationData`], bound to the ICCID.
    #[serde(with = "super::personal::b64")]
    pub sealed_activation: Vec<u8>,
    /// Whether a confirmation code is needed.
    pub confirmation_code_required: bool,
    /// Whether the ICCID passed the Luhn check (warn-only).
    pub luhn_valid: bool,
    /// Profile state, kept apart from the plan state.
    pub profile: ProfileState,
    /// Plan state.
    pub plan: PlanState,
    /// Supplier's raw status.
    pub raw_status: String,
    /// Created.
    pub created_at_ms: u64,
    /// The highest usage threshold (percent of the plan's data) already told with
    /// `esim.usage_threshold`; 0 for none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage_told_pct: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// What is sealed inside an [`EsimRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationData {
    /// SM-DP+ address.
    pub smdp_address: String,
    /// Matching id.
    pub matching_id: String,
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;

    #[test]
    fn only_listed_transitions_are_allowed() {
        assert!(Accepted.can_become(Submitted));
        assert!(Submitted.can_become(Fulfilled));
        assert!(Fulfilled.can_become(Cancelled));
        assert!(!Failed.can_become(Fulfilled));
        assert!(!Accepted.can_become(Cancelled));
        assert!(!Cancelled.can_become(Fulfilled));
    }
}
