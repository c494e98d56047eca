//! What the gateway's domain needs from a supplier, whatever runs it (a wasm plugin, or a
//! native fake in tests and benchmarks). These types mirror the WIT contract in plain Rust:
//! nothing here names wasmtime, so the domain that uses them (through
//! `simgate::domain::supplier`) stays free of it.
//!
//! Like the WIT records, the request types here have no field for a person or a reseller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ekyc::{EkycRedirect, EkycRequest, EkycUpdate, Inbound};

/// A boxed future, so `Supplier` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether `code` is an ISO 4217 currency a price can be in: a code of the standard's
/// list (`iso_currency`), other than `XXX` (no currency) and `XTS` (reserved for tests).
pub fn is_currency(code: &str) -> bool {
    !matches!(code, "XXX" | "XTS") && iso_currency::Currency::from_code(code).is_some()
}

/// Money in minor units of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Money {
    /// Minor units.
    pub minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Included data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAllowance {
    /// A fixed number of bytes.
    Bytes(u64),
    /// No cap.
    Unlimited,
}

/// A product as a supplier lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SupplierProduct {
    /// The supplier's SKU.
    pub sku: String,
    /// Display title.
    pub title: String,
    /// ISO 3166-1 alpha-2 codes.
    pub countries: Vec<String>,
    /// Region for multi-country plans.
    pub region: Option<String>,
    /// Included data.
    pub data: DataAllowance,
    /// Validity after activation.
    pub validity_days: u32,
    /// What the operator pays.
    pub wholesale: Money,
    /// Needs eKYC before provisioning.
    pub needs_kyc: bool,
    /// Can be used to top up.
    pub top_up_able: bool,
}

/// The data to install one eSIM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EsimProfile {
    /// ICCID digits.
    pub iccid: String,
    /// SM-DP+ address.
    pub smdp_address: String,
    /// Matching id.
    pub matching_id: String,
    /// Whether a confirmation code is needed.
    pub confirmation_code_required: bool,
}

/// Ask a supplier for eSIMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionRequest {
    /// Opaque reference minted by the gateway.
    pub order_ref: String,
    /// Supplier SKU.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// A provision or poll result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionOutcome {
    /// Ready now.
    Delivered(Vec<EsimProfile>),
    /// Finished later; the supplier's reference.
    Pending(String),
}

/// Profile state on the device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ProfileState {
    Released,
    Downloaded,
    Installed,
    Enabled,
    Disabled,
    Deleted,
    Error,
}

/// Plan state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum PlanState {
    Allocating,
    Ready,
    Active,
    Depleted,
    Expired,
    ExpiredUnused,
}

/// Usage as the supplier reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Bytes used.
    pub used_bytes: u64,
    /// Bytes included; `None` when unlimited.
    pub total_bytes: Option<u64>,
    /// Profile state.
    pub profile: ProfileState,
    /// Plan state.
    pub plan: PlanState,
    /// The supplier's raw status.
    pub raw_status: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: Option<u64>,
}

/// Optional features a supplier implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Feature {
    AsyncProvisioning,
    TopUp,
    Cancel,
    Usage,
    Ekyc,
    Webhooks,
}

/// What a supplier says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupplierInfo {
    /// Plugin id.
    pub id: String,
    /// Plugin version.
    pub version: String,
    /// Supplier display name.
    pub supplier: String,
    /// Optional features.
    pub features: Vec<Feature>,
}

/// How a supplier call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupplierError {
    /// No stock.
    #[error("out of stock")]
    OutOfStock,
    /// Retry after this many seconds.
    #[error("rate limited, retry after {0} s")]
    RateLimited(u32),
    /// Temporarily failing.
    #[error("supplier unavailable: {0}")]
    Unavailable(String),
    /// Refused for good.
    #[error("rejected by supplier: {0}")]
    Rejected(String),
    /// Bad request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Operation not implemented.
    #[error("not supported by this supplier")]
    NotSupported,
    /// The sandbox stopped the plugin, or the plugin is not there.
    #[error("{message}")]
    Fault {
        /// What kind of failure.
        kind: FaultKind,
        /// Explanation with the plugin's identity.
        message: String,
    },
}

impl SupplierError {
    /// The stable code a reseller sees for this failure, on a failed order and in an API
    /// problem alike (the one table of them).
    pub fn code(&self) -> &'static str {
        match self {
            SupplierError::OutOfStock => "out_of_stock",
            SupplierError::RateLimited(_) => "supplier_rate_limited",
            SupplierError::Unavailable(_) => "supplier_unavailable",
            SupplierError::Rejected(_) => "supplier_rejected",
            SupplierError::InvalidRequest(_) => "supplier_invalid_request",
            SupplierError::NotSupported => "not_supported",
            SupplierError::Fault { kind, .. } => kind.code(),
        }
    }

    /// What a reseller is told: the supplier's own reason where it gave one (a plugin's
    /// reasons are scrubbed of secrets and capped), never the plugin's internals.
    pub fn public_message(&self) -> String {
        match self {
            SupplierError::OutOfStock => "the supplier has no stock for this product".into(),
            SupplierError::RateLimited(_) | SupplierError::Unavailable(_) => {
                "the supplier is unavailable; try again later".into()
            }
            SupplierError::Rejected(r) | SupplierError::InvalidRequest(r) => r.clone(),
            SupplierError::NotSupported => "the supplier does not support this operation".into(),
            SupplierError::Fault {
                kind: FaultKind::NotLoaded,
                ..
            } => "the supplier integration is not loaded".into(),
            SupplierError::Fault { .. } => {
                "the supplier integration failed; the operator has been told".into()
            }
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            SupplierError::RateLimited(_) | SupplierError::Unavailable(_) => true,
            SupplierError::Fault { kind, .. } => kind.is_retryable(),
            _ => false,
        }
    }
}

/// Ways the sandbox can stop a plugin call (or find no plugin to call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The call ran past its wall-clock budget.
    Deadline,
    /// The plugin tried to use more memory than it may.
    Memory,
    /// The plugin trapped (panic, unreachable, bad memory access).
    Trap,
    /// The plugin tried to reach a host it was not granted.
    EgressDenied,
    /// The plugin returned something too large or malformed.
    BadOutput,
    /// Too many calls waiting for this plugin.
    Overloaded,
    /// The plugin is not loaded (removed, or never loaded).
    NotLoaded,
    /// The plugin held more host-side resources (HTTP fields, bodies, streams) than a
    /// call may: memory outside its own cap. Deterministic, so not retried.
    HostLimit,
    /// Anything else from the runtime (instantiation failed).
    Internal,
}

impl FaultKind {
    /// Stable lower-case name, used in problem codes and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Deadline => "deadline",
            FaultKind::Memory => "memory",
            FaultKind::Trap => "trap",
            FaultKind::EgressDenied => "egress_denied",
            FaultKind::BadOutput => "bad_output",
            FaultKind::Overloaded => "overloaded",
            FaultKind::NotLoaded => "not_loaded",
            FaultKind::HostLimit => "host_limit",
            FaultKind::Internal => "internal",
        }
    }

    /// The code a reseller sees for a call that failed this way.
    pub fn code(self) -> &'static str {
        match self {
            FaultKind::Deadline => "plugin_deadline",
            FaultKind::Memory => "plugin_memory",
            FaultKind::Trap => "plugin_trap",
            FaultKind::EgressDenied => "plugin_egress_denied",
            FaultKind::BadOutput => "plugin_bad_output",
            FaultKind::Overloaded => "plugin_overloaded",
            FaultKind::NotLoaded => "supplier_not_loaded",
            FaultKind::HostLimit => "plugin_host_limit",
            FaultKind::Internal => "plugin_failed",
        }
    }

    /// Transient faults are worth a retry; a plugin that traps or lies will do it again.
    pub fn is_retryable(self) -> bool {
        matches!(self, FaultKind::Overloaded | FaultKind::Deadline)
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of a supplier call.
pub type SupplierResult<T> = Result<T, SupplierError>;

/// One supplier, as the domain sees it. Implemented by the wasm plugin runtime and by
/// native fakes.
pub trait Supplier: Send + Sync {
    /// Identity and features.
    fn info(&self) -> &SupplierInfo;
    /// The supplier's catalog.
    fn list_products(&self) -> BoxFuture<'_, SupplierResult<Vec<SupplierProduct>>>;
    /// Order eSIMs.
    fn provision(&self, req: ProvisionRequest) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>>;
    /// Follow up on a pending order.
    fn poll(
        &self,
        order_ref: String,
        supplier_ref: String,
    ) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>>;
    /// Current usage of an eSIM.
    fn usage(&self, iccid: String) -> BoxFuture<'_, SupplierResult<Usage>>;
    /// Add a plan to an eSIM; returns the supplier's reference.
    fn top_up(
        &self,
        order_ref: String,
        iccid: String,
        sku: String,
    ) -> BoxFuture<'_, SupplierResult<String>>;
    /// Cancel a never-installed eSIM.
    fn cancel(&self, order_ref: String, iccid: String) -> BoxFuture<'_, SupplierResult<()>>;
    /// Open an identity verification session at the supplier's provider.
    fn ekyc_start(&self, _req: EkycRequest) -> BoxFuture<'_, SupplierResult<EkycRedirect>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }
    /// Read a verification provider's callback (the plugin checks its signature).
    fn ekyc_callback(&self, _req: Inbound) -> BoxFuture<'_, SupplierResult<EkycUpdate>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }
    /// Whether the operator lets supplier webhooks for this plugin come from `addr`
    /// (an allow-list for suppliers that do not sign); everything, by default.
    fn accepts_webhook_from(&self, _addr: &str) -> bool {
        true
    }
    /// Verify and read a supplier webhook.
    fn parse_webhook(&self, _req: Inbound) -> BoxFuture<'_, SupplierResult<ParsedWebhook>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }
}

/// A supplier webhook its plugin verified and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedWebhook {
    /// The supplier's id of the notification, if it has one.
    pub event_id: Option<String>,
    /// What it says, normalised.
    pub events: Vec<SupplierEvent>,
}

/// The most events one webhook may carry.
pub const MAX_WEBHOOK_EVENTS: usize = 100;

/// One normalised supplier event. Orders are named by the reference the host gave the
/// supplier (the order id); eSIMs by ICCID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum SupplierEvent {
    /// A pending order is done: its eSIMs.
    OrderDelivered {
        /// The host's order reference.
        order_ref: String,
        /// The eSIMs.
        esims: Vec<EsimProfile>,
    },
    /// A pending order failed for good.
    OrderFailed {
        /// The host's order reference.
        order_ref: String,
        /// Why, for operators.
        reason: String,
    },
    /// A pending order is ready at the supplier: poll it now.
    OrderReady {
        /// The host's order reference.
        order_ref: String,
    },
    /// An eSIM's profile state changed.
    ProfileChanged {
        /// The eSIM.
        iccid: String,
        /// Its state now.
        profile: ProfileState,
        /// The supplier's status text.
        raw_status: String,
    },
    /// An eSIM's plan state changed.
    PlanChanged {
        /// The eSIM.
        iccid: String,
        /// Its state now.
        plan: PlanState,
        /// The supplier's status text.
        raw_status: String,
    },
    /// An eSIM's data usage, as the supplier reports it.
    UsageChanged {
        /// The eSIM.
        iccid: String,
        /// Bytes used.
        used_bytes: u64,
        /// Bytes included, when known.
        total_bytes: Option<u64>,
    },
    /// An eSIM crossed a usage threshold.
    UsageThreshold {
        /// The eSIM.
        iccid: String,
        /// Bytes used.
        used_bytes: u64,
        /// Percent of the plan.
        percent: u8,
    },
}

/// The set of suppliers currently loaded, by plugin id.
pub trait Suppliers: Send + Sync {
    /// The supplier with this plugin id, if loaded.
    fn get(&self, plugin_id: &str) -> Option<Arc<dyn Supplier>>;
    /// All loaded suppliers, sorted by id.
    fn all(&self) -> Vec<Arc<dyn Supplier>>;
    /// Whether a plugin with this id exists, loaded or not (a folder that failed to load):
    /// an order for an unknown plugin is the client's mistake, one for a known plugin
    /// that is not loaded is ours.
    fn known(&self, plugin_id: &str) -> bool {
        self.get(plugin_id).is_some()
    }
}
