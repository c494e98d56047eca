//! The gateway: the use cases wired to their ports (store, suppliers, keyring, clock),
//! who is calling ([`Principal`]) and how a use case fails ([`DomainError`]).
//!
//! The use cases themselves live one family per file in [`super::use_cases`]; each takes
//! the caller's [`Principal`] and enforces ownership: a reseller asking for another
//! reseller's record gets `NotFound`, exactly as if it did not exist.

use std::sync::Arc;
use std::time::Duration;

use super::accounts::{KeyMode, Reseller, Role};
use super::catalog::CatalogCache;
use super::clock::Clock;
use super::fulfilment::{Fulfilment, RetryPolicy};
use super::ids::{KeyId, OrderId, ResellerId};
use super::jobs::Alarm;
use super::keyring::Keyring;
use super::ledger::Refused;
use super::store::{Store, StoreError};
use super::supplier::{SupplierError, Suppliers};
use super::webhooks::{DeliveryBook, WebhookTuning, Webhooks};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key used.
    pub key: KeyId,
    /// The key's role.
    pub role: Role,
    /// The account it acts for (`None` for admin keys): the reseller's id for a live
    /// key, its test account for a test key (see [`KeyMode::account`]).
    pub reseller: Option<ResellerId>,
    /// The key's mode.
    pub mode: KeyMode,
}

impl Principal {
    /// The reseller behind the key, whichever account its mode works on (for the
    /// operator's records: the audit log names resellers, not their test accounts).
    pub fn reseller_id(&self) -> Option<ResellerId> {
        self.reseller.map(|account| self.mode.reseller_of(account))
    }
}

/// Why a use case refused or failed. The API maps each variant to one problem code.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// No valid key.
    #[error("missing, malformed, unknown or revoked API key")]
    Unauthenticated,
    /// The key's role may not do this.
    #[error("this API key's role may not do this")]
    Forbidden,
    /// No such record (or not the caller's).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// A field is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON pointer of the field, e.g. `/quantity`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The prepaid balance cannot cover the price; nothing was held.
    #[error("insufficient balance: {available} {currency} available, {needed} needed")]
    InsufficientBalance {
        /// Available, minor units.
        available: i64,
        /// Needed, minor units.
        needed: i64,
        /// Currency.
        currency: String,
    },
    /// The request conflicts with the record's state.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// The product's plugin is not loaded.
    #[error("the supplier for {0} is not available right now")]
    SupplierNotLoaded(String),
    /// The supplier refused or failed.
    #[error(transparent)]
    Supplier(#[from] SupplierError),
    /// A plugin refused an inbound request (a bad signature, say); the reason is the
    /// plugin's, for the operator.
    #[error("inbound request refused: {0}")]
    InboundRefused(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<super::orders::TotalOutOfRange> for DomainError {
    fn from(e: super::orders::TotalOutOfRange) -> DomainError {
        DomainError::Store(e.into())
    }
}

impl DomainError {
    /// The error for a ledger entry the balance refused; `field` names the request field
    /// whose amount was out of range.
    pub(crate) fn refused(refused: Refused, field: &'static str, currency: String) -> DomainError {
        match refused {
            Refused::Insufficient { available, needed } => DomainError::InsufficientBalance {
                available,
                needed,
                currency,
            },
            Refused::OutOfRange => DomainError::Invalid {
                field,
                message: format!(
                    "the amount would take the balance in {currency} out of the range the ledger can hold"
                ),
            },
        }
    }
}

/// Tunables of the use cases.
#[derive(Debug, Clone)]
pub struct GatewayTuning {
    /// How long `POST /v1/orders` waits for fulfilment before answering with the order
    /// as it stands (clients then poll or take the webhook).
    pub sync_wait: Duration,
    /// A cached catalog older than this is refreshed on the next read.
    pub catalog_ttl: Duration,
    /// How long a rotated key keeps working.
    pub rotation_grace: Duration,
    /// Credit given to the demo reseller (minor units of USD).
    pub demo_credit_minor: i64,
    /// How long an idempotency key is honoured.
    pub idempotency_retention: Duration,
    /// How webhooks are delivered.
    pub webhooks: WebhookTuning,
    /// How long an order waits in `awaiting_kyc` for its verification session to open
    /// before it fails and its hold is released.
    pub ekyc_wait: Duration,
    /// How long each class of record is kept.
    pub retention: super::use_cases::retention::RetentionPolicy,
    /// Gateway products offered by several suppliers.
    pub routes: super::catalog::Routes,
    /// The plugins test-mode keys order from (and live keys never do).
    pub sandboxes: super::catalog::Sandboxes,
}

impl Default for GatewayTuning {
    fn default() -> Self {
        GatewayTuning {
            sync_wait: Duration::from_secs(5),
            catalog_ttl: Duration::from_secs(600),
            rotation_grace: Duration::from_secs(24 * 3600),
            demo_credit_minor: 100_000,
            idempotency_retention: Duration::from_secs(24 * 3600),
            webhooks: WebhookTuning::default(),
            ekyc_wait: Duration::from_secs(7 * 24 * 3600),
            retention: Default::default(),
            routes: Default::default(),
            sandboxes: Default::default(),
        }
    }
}

/// The gateway's use cases over a store, the loaded suppliers and the keyring.
pub struct Gateway {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) suppliers: Arc<dyn Suppliers>,
    pub(crate) keyring: Arc<dyn Keyring>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) fulfilment: Arc<Fulfilment>,
    /// Wakes the job worker when a step is due sooner than it would look.
    pub(crate) alarm: Arc<Alarm>,
    /// Delivers webhooks.
    pub(crate) webhooks: Arc<dyn Webhooks>,
    /// Webhook deliveries in flight per endpoint, and their outcomes.
    pub(crate) deliveries: DeliveryBook,
    pub(crate) tuning: GatewayTuning,
    pub(crate) rng: ring::rand::SystemRandom,
    pub(crate) catalogs: CatalogCache,
}

impl Gateway {
    /// Wire the use cases.
    pub fn new(
        store: Arc<dyn Store>,
        suppliers: Arc<dyn Suppliers>,
        keyring: Arc<dyn Keyring>,
        clock: Arc<dyn Clock>,
        policy: RetryPolicy,
        tuning: GatewayTuning,
        webhooks: Arc<dyn Webhooks>,
    ) -> Gateway {
        let alarm = Arc::new(Alarm::default());
        let fulfilment = Fulfilment::new(
            store.clone(),
            suppliers.clone(),
            keyring.clone(),
            clock.clone(),
            policy,
            alarm.clone(),
        );
        Gateway {
            store,
            suppliers,
            keyring,
            clock,
            fulfilment,
            alarm,
            webhooks,
            deliveries: DeliveryBook::default(),
            tuning,
            rng: ring::rand::SystemRandom::new(),
            catalogs: CatalogCache::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Orders that reached each status since start, for metrics.
    pub fn order_counts(&self) -> Vec<(&'static str, u64)> {
        self.fulfilment.counters.snapshot()
    }

    /// Deliveries refused since start because their ICCID belonged to another order.
    pub fn iccid_conflicts(&self) -> u64 {
        self.fulfilment.counters.iccid_conflicts()
    }

    /// Resume unfinished orders after a restart.
    pub async fn recover(&self) -> Result<usize, DomainError> {
        Ok(self.fulfilment.recover().await?)
    }

    /// Give unfinished orders left without a next step a job (`Fulfilment::adopt`).
    pub async fn adopt_orders(&self, grace: Duration) -> Result<usize, DomainError> {
        Ok(self.fulfilment.adopt(grace).await?)
    }

    /// Take unfinished order `id`'s next step (its fulfilment job): `Ok(None)` once it is
    /// final, `Ok(Some(delay))` to step again after `delay`.
    pub async fn fulfil(&self, id: OrderId) -> Result<Option<Duration>, String> {
        self.fulfilment.step(id).await
    }

    /// How often the outbox is turned into webhook deliveries.
    pub fn dispatch_every(&self) -> Duration {
        self.tuning.webhooks.dispatch_every
    }

    /// What wakes the job worker for the jobs this gateway makes due.
    pub fn alarm(&self) -> Arc<Alarm> {
        self.alarm.clone()
    }

    /// The caller's reseller account (reseller keys only), as its key's mode sees it:
    /// for a test key, `id` is the test account and the alerts are the test account's.
    pub(crate) async fn reseller_of(&self, who: &Principal) -> Result<Reseller, DomainError> {
        let mut reseller = self.stored_reseller_of(who).await?;
        if who.mode == KeyMode::Test {
            reseller.id = who.reseller.ok_or(DomainError::Forbidden)?;
            reseller.low_balance_alerts = std::mem::take(&mut reseller.test_low_balance_alerts);
        }
        Ok(reseller)
    }

    /// The caller's reseller record as stored (reseller keys only), whatever its mode.
    pub(crate) async fn stored_reseller_of(
        &self,
        who: &Principal,
    ) -> Result<Reseller, DomainError> {
        let id = who.reseller_id().ok_or(DomainError::Forbidden)?;
        self.store
            .reseller(id)
            .await?
            .ok_or(DomainError::Unauthenticated)
    }

    /// Whether a key of `mode` may reach plugin `plugin`: test keys only the plugins the
    /// operator marks as sandboxes, live keys only the others.
    pub(crate) fn reachable(&self, mode: KeyMode, plugin: &str) -> bool {
        self.tuning.sandboxes.contains(plugin) == (mode == KeyMode::Test)
    }

    /// Whether the caller may see a record owned by `owner`.
    pub(crate) fn visible(&self, who: &Principal, owner: ResellerId) -> bool {
        who.role == Role::Admin || who.reseller == Some(owner)
    }
}
