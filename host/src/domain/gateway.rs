//! The gateway's use cases: authenticate a key, show the catalog, place and read orders,
//! read eSIMs. Each method takes the caller's [`Principal`] and enforces ownership: a
//! reseller asking for another reseller's record gets `NotFound`, exactly as if it did not
//! exist.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::accounts::{self, ApiKey, KeyHash, KeyMode, Reseller, Role};
use super::catalog::{self, CachedCatalog, CachedProduct, Product, ProductFilter};
use super::esim;
use super::fulfilment::{Fulfilment, RetryPolicy};
use super::idempotency::{self, Claim, IdemKey, IdemState};
use super::ids::{KeyId, OrderId, ResellerId};
use super::ledger::{Balance, EntryKind, LedgerEntry, Refused};
use super::orders::{
    ActivationData, EsimRecord, Order, OrderFailure, OrderKind, OrderSpec, OrderStatus,
};
use super::store::{Page, Store, StoreError};
use super::supplier::{
    FaultKind, Money, PlanState, ProfileState, Supplier, SupplierError, SupplierInfo, Suppliers,
};

/// Keyed operations the domain needs: API-key hashing and sealing of activation data.
/// Implemented by `privacy::Keyring` with keys kept outside the database.
pub trait Keyring: Send + Sync {
    /// HMAC-SHA256 of an API key under the server pepper.
    fn hash_key(&self, key: &str) -> KeyHash;
    /// Encrypt and authenticate `plaintext`, bound to `context` (e.g. the ICCID).
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8>;
    /// Reverse [`Keyring::seal`]; `None` if tampered with or sealed under another key.
    fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>>;
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key used.
    pub key: KeyId,
    /// The key's role.
    pub role: Role,
    /// The reseller it acts for (`None` for admin keys).
    pub reseller: Option<ResellerId>,
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
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError {
    /// The error for a ledger entry the balance refused; `field` names the request field
    /// whose amount was out of range.
    fn refused(refused: Refused, field: &'static str, currency: String) -> DomainError {
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

/// A new order as a reseller asks for it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Gateway product id.
    pub product_id: String,
    /// eSIMs to order.
    pub quantity: u32,
    /// Optional opaque subject reference (never sent to a supplier).
    pub subject_ref: Option<String>,
    /// Optional metadata (never sent to a supplier).
    pub metadata: Option<serde_json::Value>,
}

/// An eSIM as a reseller sees it, activation data opened.
#[derive(Debug, Clone, Serialize)]
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

/// An order as a reseller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    /// The order.
    #[serde(flatten)]
    pub order: Order,
    /// What it costs in total.
    pub total: Money,
    /// Its eSIMs, with activation data.
    pub esims: Vec<EsimView>,
}

/// Usage of an eSIM as observed now.
#[derive(Debug, Clone, Serialize)]
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

/// Keys minted on first start, shown once.
#[derive(Debug)]
pub struct BootstrapKeys {
    /// An admin key.
    pub admin: String,
    /// A demo reseller's test key, when demo mode is on.
    pub demo: Option<(ResellerId, String)>,
}

/// Tunables of the use cases.
#[derive(Debug, Clone, Copy)]
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
}

impl Default for GatewayTuning {
    fn default() -> Self {
        GatewayTuning {
            sync_wait: Duration::from_secs(5),
            catalog_ttl: Duration::from_secs(600),
            rotation_grace: Duration::from_secs(24 * 3600),
            demo_credit_minor: 100_000,
            idempotency_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Most eSIMs one order may ask for.
pub const MAX_QUANTITY: u32 = 100;
/// Longest `subject_ref`.
pub const MAX_SUBJECT_REF: usize = 128;
/// Largest serialised `metadata`.
pub const MAX_METADATA_BYTES: usize = 4096;

/// The gateway's use cases over a store, the loaded suppliers and the keyring.
pub struct Gateway {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) suppliers: Arc<dyn Suppliers>,
    pub(crate) keyring: Arc<dyn Keyring>,
    pub(crate) fulfilment: Arc<Fulfilment>,
    pub(crate) tuning: GatewayTuning,
    rng: ring::rand::SystemRandom,
    /// Catalogs read or fetched so far, by plugin id: every order looks its product up,
    /// and decoding the stored catalog each time would cost more than the order's writes.
    catalogs: std::sync::Mutex<std::collections::HashMap<String, Arc<CachedCatalog>>>,
    /// Catalog fetches that failed, by plugin id, so reads do not ask again at once.
    catalog_failures: std::sync::Mutex<std::collections::HashMap<String, CatalogFailure>>,
}

/// A plugin version whose catalog fetch failed, and when to ask again.
struct CatalogFailure {
    version: String,
    count: u32,
    retry_at_ms: u64,
}

/// The pause after a first failed catalog fetch.
const CATALOG_RETRY_FIRST: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Gateway {
    /// Wire the use cases.
    pub fn new(
        store: Arc<dyn Store>,
        suppliers: Arc<dyn Suppliers>,
        keyring: Arc<dyn Keyring>,
        policy: RetryPolicy,
        tuning: GatewayTuning,
    ) -> Gateway {
        let fulfilment = Fulfilment::new(store.clone(), suppliers.clone(), keyring.clone(), policy);
        Gateway {
            store,
            suppliers,
            keyring,
            fulfilment,
            tuning,
            rng: ring::rand::SystemRandom::new(),
            catalogs: Default::default(),
            catalog_failures: Default::default(),
        }
    }

    /// The loaded suppliers.
    pub fn suppliers(&self) -> &Arc<dyn Suppliers> {
        &self.suppliers
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
    pub fn recover(&self) -> Result<usize, DomainError> {
        Ok(self.fulfilment.recover()?)
    }

    /// On the first start of an empty store, mint an admin key and (in demo mode) a demo
    /// reseller with a test key and some credit. Later starts return `None`: keys are
    /// shown once.
    pub async fn bootstrap(&self, demo: bool) -> Result<Option<BootstrapKeys>, DomainError> {
        const MARKER: &str = "bootstrapped";
        if self.store.meta(MARKER)?.is_some() {
            return Ok(None);
        }
        let (admin, _) = self.create_key(None, Role::Admin, KeyMode::Live)?;
        let demo = if demo {
            let reseller = self.create_reseller("Demo Reseller", 1500)?;
            let (key, _) = self.create_key(Some(reseller.id), Role::Reseller, KeyMode::Test)?;
            self.credit(
                reseller.id,
                self.tuning.demo_credit_minor,
                "USD",
                Some("demo credit".into()),
            )?;
            Some((reseller.id, key))
        } else {
            None
        };
        self.store.put_meta(MARKER, b"1")?;
        self.store.durable().await?;
        Ok(Some(BootstrapKeys { admin, demo }))
    }

    /// Create a reseller account.
    pub fn create_reseller(&self, name: &str, markup_bps: u32) -> Result<Reseller, DomainError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(DomainError::Invalid {
                field: "/name",
                message: "must be 1 to 200 printable characters".into(),
            });
        }
        if markup_bps > 100_000 {
            return Err(DomainError::Invalid {
                field: "/markup_bps",
                message: "must be 0 to 100000 (0% to 1000%)".into(),
            });
        }
        let reseller = Reseller {
            id: ResellerId::new(),
            name: name.to_string(),
            markup_bps,
            created_at_ms: now_ms(),
        };
        self.store.put_reseller(&reseller)?;
        Ok(reseller)
    }

    /// Mint and store a key; returns the key string (shown once) and its record.
    pub fn create_key(
        &self,
        reseller: Option<ResellerId>,
        role: Role,
        mode: KeyMode,
    ) -> Result<(String, ApiKey), DomainError> {
        if (role == Role::Admin) != reseller.is_none() {
            return Err(DomainError::Invalid {
                field: "/role",
                message: "admin keys belong to no reseller; reseller keys belong to one".into(),
            });
        }
        if let Some(r) = reseller {
            self.store
                .reseller(r)?
                .ok_or(DomainError::NotFound("reseller"))?;
        }
        let key = accounts::mint_key(mode, &self.rng);
        let record = ApiKey {
            id: KeyId::new(),
            reseller,
            role,
            mode,
            hash: self.keyring.hash_key(&key),
            hint: accounts::key_hint(&key),
            created_at_ms: now_ms(),
            expires_at_ms: None,
        };
        self.store.put_api_key(&record)?;
        Ok((key, record))
    }

    /// Revoke a key now.
    pub fn revoke_key(&self, id: KeyId) -> Result<ApiKey, DomainError> {
        let mut key = self
            .store
            .api_key_by_id(id)?
            .ok_or(DomainError::NotFound("key"))?;
        let now = now_ms();
        key.expires_at_ms = Some(key.expires_at_ms.map_or(now, |t| t.min(now)));
        self.store.put_api_key(&key)?;
        Ok(key)
    }

    /// Replace the caller's key: a new key with the same role, the old one working for
    /// the grace period so deployments can switch without downtime.
    pub fn rotate_key(&self, who: &Principal) -> Result<(String, ApiKey), DomainError> {
        let mut old = self
            .store
            .api_key_by_id(who.key)?
            .ok_or(DomainError::Unauthenticated)?;
        let (key, record) = self.create_key(old.reseller, old.role, old.mode)?;
        let grace_end = now_ms() + self.tuning.rotation_grace.as_millis() as u64;
        old.expires_at_ms = Some(old.expires_at_ms.map_or(grace_end, |t| t.min(grace_end)));
        self.store.put_api_key(&old)?;
        Ok((key, record))
    }

    /// Add money to a reseller's prepaid balance.
    pub fn credit(
        &self,
        reseller: ResellerId,
        amount: i64,
        currency: &str,
        note: Option<String>,
    ) -> Result<Balance, DomainError> {
        if amount <= 0 {
            return Err(DomainError::Invalid {
                field: "/amount",
                message: "must be a positive amount in minor units".into(),
            });
        }
        if !super::supplier::is_currency(currency) {
            return Err(DomainError::Invalid {
                field: "/currency",
                message: "must be an ISO 4217 code such as USD".into(),
            });
        }
        self.store
            .reseller(reseller)?
            .ok_or(DomainError::NotFound("reseller"))?;
        let mut entry = LedgerEntry::new(reseller, EntryKind::Credit, amount, currency, None);
        entry.note = note;
        self.store
            .post_entry(&entry)?
            .map_err(|refused| DomainError::refused(refused, "/amount", currency.into()))
    }

    /// Who holds this bearer key. The lookup is by keyed hash (HMAC under the pepper), so
    /// the secret itself is never compared: only an equal hash finds a record.
    pub fn authenticate(&self, key: &str) -> Result<Principal, DomainError> {
        accounts::check_key_format(key).ok_or(DomainError::Unauthenticated)?;
        let record = self
            .store
            .api_key(&self.keyring.hash_key(key))?
            .filter(|k| k.is_active(now_ms()))
            .ok_or(DomainError::Unauthenticated)?;
        Ok(Principal {
            key: record.id,
            role: record.role,
            reseller: record.reseller,
        })
    }

    pub(crate) fn reseller_of(&self, who: &Principal) -> Result<Reseller, DomainError> {
        let id = who.reseller.ok_or(DomainError::Forbidden)?;
        self.store.reseller(id)?.ok_or(DomainError::Unauthenticated)
    }

    /// The cached catalog of one plugin, refreshed when stale or from another version.
    /// A supplier that fails keeps its last good catalog.
    pub async fn plugin_catalog(
        &self,
        supplier: &Arc<dyn Supplier>,
    ) -> Result<Option<Arc<CachedCatalog>>, DomainError> {
        let info = supplier.info();
        let remembered = self.remembered_catalog(&info.id);
        let cached = match remembered {
            Some(c) => Some(c),
            // First read since the start: the store's copy, if any.
            None => self
                .store
                .catalog(&info.id)?
                .map(|c| self.remember_catalog(c)),
        };
        let fresh = cached.as_ref().is_some_and(|c| {
            c.version == info.version
                && now_ms().saturating_sub(c.fetched_at_ms)
                    < self.tuning.catalog_ttl.as_millis() as u64
        });
        if fresh || self.catalog_backing_off(info) {
            return Ok(cached);
        }
        match self.fetch_catalog(supplier).await {
            Ok(catalog) => Ok(Some(catalog)),
            Err(DomainError::Supplier(e)) => {
                let wait = self.catalog_failed(info);
                tracing::warn!(plugin = %info.id, error = %e, retry_in_s = wait.as_secs(), "catalog refresh failed; serving the cached one");
                Ok(cached)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a failed catalog fetch of this plugin version is still backing off: a
    /// plugin whose catalog fails is asked again after a pause, not on every read.
    fn catalog_backing_off(&self, info: &SupplierInfo) -> bool {
        let failures = self
            .catalog_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        failures
            .get(&info.id)
            .is_some_and(|f| f.version == info.version && now_ms() < f.retry_at_ms)
    }

    /// Count a failed catalog fetch; returns how long to wait before the next one
    /// (doubling from 5 s up to the catalog TTL).
    fn catalog_failed(&self, info: &SupplierInfo) -> Duration {
        let mut failures = self
            .catalog_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let f = failures
            .entry(info.id.clone())
            .or_insert_with(|| CatalogFailure {
                version: info.version.clone(),
                count: 0,
                retry_at_ms: 0,
            });
        if f.version != info.version {
            f.version = info.version.clone();
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        let wait = CATALOG_RETRY_FIRST
            .saturating_mul(1 << f.count.saturating_sub(1).min(16))
            .min(self.tuning.catalog_ttl.max(CATALOG_RETRY_FIRST));
        f.retry_at_ms = now_ms().saturating_add(wait.as_millis() as u64);
        wait
    }

    fn remembered_catalog(&self, plugin: &str) -> Option<Arc<CachedCatalog>> {
        let catalogs = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        catalogs.get(plugin).cloned()
    }

    fn remember_catalog(&self, catalog: CachedCatalog) -> Arc<CachedCatalog> {
        let catalog = Arc::new(catalog);
        let mut catalogs = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        catalogs.insert(catalog.plugin.clone(), catalog.clone());
        catalog
    }

    /// Ask a supplier for its catalog now and cache it.
    async fn fetch_catalog(
        &self,
        supplier: &Arc<dyn Supplier>,
    ) -> Result<Arc<CachedCatalog>, DomainError> {
        let info = supplier.info();
        let products = supplier.list_products().await?;
        let catalog = CachedCatalog {
            plugin: info.id.clone(),
            version: info.version.clone(),
            fetched_at_ms: now_ms(),
            products: products.iter().map(CachedProduct::from).collect(),
        };
        self.store.put_catalog(&catalog)?;
        self.catalog_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info.id);
        Ok(self.remember_catalog(catalog))
    }

    /// Refresh every loaded plugin's catalog now (scheduled, and after a plugin changes).
    pub async fn refresh_catalogs(&self) {
        for supplier in self.suppliers.all() {
            if let Err(e) = self.fetch_catalog(&supplier).await {
                tracing::warn!(plugin = %supplier.info().id, error = %e, "scheduled catalog refresh failed");
            }
        }
    }

    /// Every loaded supplier's products, priced for the caller.
    pub async fn catalog(
        &self,
        who: &Principal,
        filter: &ProductFilter,
    ) -> Result<Vec<Product>, DomainError> {
        let markup = self.reseller_of(who)?.markup_bps;
        let mut out = Vec::new();
        for supplier in self.suppliers.all() {
            if let Some(catalog) = self.plugin_catalog(&supplier).await? {
                out.extend(
                    catalog
                        .products
                        .iter()
                        .filter_map(|p| catalog::for_reseller(&catalog.plugin, p, markup))
                        .filter(|p| filter.accepts(p)),
                );
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Find a product by gateway id in its plugin's catalog.
    pub(crate) async fn find_product(
        &self,
        product_id: &str,
        field: &'static str,
    ) -> Result<(Arc<dyn Supplier>, CachedProduct), DomainError> {
        let (plugin, sku) = catalog::split_product_id(product_id).ok_or(DomainError::Invalid {
            field,
            message: "expected <plugin>:<sku> as listed by GET /v1/products".into(),
        })?;
        let Some(supplier) = self.suppliers.get(plugin) else {
            // A plugin that exists (or served before) but is not loaded now is ours to
            // fix; a plugin nobody ever deployed is a product that does not exist.
            return Err(
                if self.suppliers.known(plugin) || self.store.catalog(plugin)?.is_some() {
                    DomainError::SupplierNotLoaded(product_id.to_string())
                } else {
                    DomainError::NotFound("product")
                },
            );
        };
        let catalog = self
            .plugin_catalog(&supplier)
            .await?
            .ok_or_else(|| DomainError::SupplierNotLoaded(product_id.to_string()))?;
        let product = catalog
            .products
            .iter()
            .find(|p| p.sku == sku)
            .cloned()
            .ok_or(DomainError::NotFound("product"))?;
        Ok((supplier, product))
    }

    /// Accept an order: hold its price, persist it, and hand it to fulfilment. Waits up
    /// to `sync_wait` for a final state so fast suppliers answer in one round trip.
    pub async fn place_order(
        &self,
        who: &Principal,
        new: NewOrder,
        idem: Option<&IdemKey>,
    ) -> Result<OrderView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        let reseller = self.reseller_of(who)?;
        validate_new_order(&new)?;
        let (supplier, product) = self.find_product(&new.product_id, "/product_id").await?;
        if product.needs_kyc {
            return Err(DomainError::Conflict {
                code: "ekyc_required",
                message:
                    "this product needs identity verification (eKYC) before it can be ordered, \
                          and this gateway does not run eKYC sessions yet"
                        .into(),
            });
        }
        let spec = OrderSpec {
            reseller: reseller.id,
            product_id: new.product_id.clone(),
            plugin: supplier.info().id.clone(),
            sku: product.sku.clone(),
            quantity: new.quantity,
            unit_price: unit_price(&product, reseller.markup_bps)?,
            kind: OrderKind::Esim,
        };
        let order = Order::accepted(spec, new.subject_ref, new.metadata, now_ms());
        self.accept(order, idem).await
    }

    /// Hold, persist durably, submit, and wait briefly for the outcome.
    pub(crate) async fn accept(
        &self,
        mut order: Order,
        idem: Option<&IdemKey>,
    ) -> Result<OrderView, DomainError> {
        if let Some(key) = idem {
            // The id was chosen when the key was claimed: the claim already names it.
            order.id = key.order;
        }
        let total = order.total().ok_or(DomainError::Invalid {
            field: "/quantity",
            message: "the order's total is larger than the ledger can hold".into(),
        })?;
        let hold = LedgerEntry::hold_for(order.reseller, order.id, total.minor, &total.currency);
        if let Err(refused) = self.store.accept_order(&order, &hold)? {
            return Err(DomainError::refused(refused, "/quantity", total.currency));
        }
        self.store.durable().await?;
        self.fulfilment.counters.reached(OrderStatus::Accepted);
        let id = order.id;
        let settled = self.fulfilment.watch(id);
        let mut first = Box::pin(self.fulfilment.clone().run(order));
        let deadline = tokio::time::Instant::now() + self.tuning.sync_wait;
        if let Ok(done) = tokio::time::timeout_at(deadline, &mut first).await {
            if let Some(done) = done {
                // Settled by this first step: answer from the records in hand.
                return self.view(done.order, &done.esims);
            }
            // Waiting for a retry or a poll: wait for that too.
            let _ = tokio::time::timeout_at(deadline, settled).await;
        } else {
            // The supplier is still working; let it finish in the background.
            tokio::spawn(first);
        }
        self.stored_view(id, |_| true)
    }

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

    pub(crate) fn visible(&self, who: &Principal, owner: ResellerId) -> bool {
        who.role == Role::Admin || who.reseller == Some(owner)
    }

    /// The API view of an order and its stored eSIMs (activation data opened).
    fn view(&self, order: Order, esims: &[EsimRecord]) -> Result<OrderView, DomainError> {
        Ok(OrderView {
            esims: esims
                .iter()
                .map(|e| self.open_esim(e))
                .collect::<Result<_, _>>()?,
            total: order.accepted_total()?,
            order,
        })
    }

    /// The API view of a stored order, read together with its eSIMs, if `may_see` it.
    fn stored_view(
        &self,
        id: OrderId,
        may_see: impl FnOnce(&Order) -> bool,
    ) -> Result<OrderView, DomainError> {
        let (order, esims) = self
            .store
            .order_and_esims(id)?
            .filter(|(o, _)| may_see(o))
            .ok_or(DomainError::NotFound("order"))?;
        self.order_view(order, esims)
    }

    /// The API view of an order with the eSIMs stored under its ICCIDs.
    fn order_view(
        &self,
        order: Order,
        mut esims: Vec<EsimRecord>,
    ) -> Result<OrderView, DomainError> {
        if order.kind != OrderKind::Esim {
            // A top-up names the eSIM it tops up, which an earlier order delivered.
            esims.clear();
        }
        self.view(order, &esims)
    }

    /// One order, if the caller may see it.
    pub fn order(&self, who: &Principal, id: OrderId) -> Result<OrderView, DomainError> {
        self.stored_view(id, |o| self.visible(who, o.reseller))
    }

    /// The caller's orders, newest first.
    pub fn orders(
        &self,
        who: &Principal,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> Result<Page<OrderView>, DomainError> {
        let reseller = self.reseller_of(who)?;
        let page = self.store.orders_page(reseller.id, before, status, limit)?;
        let items = page
            .items
            .into_iter()
            .map(|(o, esims)| self.order_view(o, esims))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            has_more: page.has_more,
        })
    }

    /// One eSIM, if the caller may see it.
    pub fn esim(&self, who: &Principal, iccid: &str) -> Result<EsimView, DomainError> {
        let rec = self.esim_record(who, iccid)?;
        self.open_esim(&rec)
    }

    pub(crate) fn esim_record(
        &self,
        who: &Principal,
        iccid: &str,
    ) -> Result<EsimRecord, DomainError> {
        self.store
            .esim(iccid)?
            .filter(|e| self.visible(who, e.reseller))
            .ok_or(DomainError::NotFound("esim"))
    }

    /// Live usage of an eSIM from its supplier; the states seen are kept on the record.
    pub async fn usage(&self, who: &Principal, iccid: &str) -> Result<UsageView, DomainError> {
        let mut rec = self.esim_record(who, iccid)?;
        let supplier = self
            .suppliers
            .get(&rec.plugin)
            .ok_or_else(|| DomainError::SupplierNotLoaded(rec.plugin.clone()))?;
        let usage = supplier.usage(rec.iccid.clone()).await?;
        let observed_at_ms = now_ms();
        if (rec.profile, rec.plan, rec.raw_status.as_str())
            != (usage.profile, usage.plan, usage.raw_status.as_str())
        {
            rec.profile = usage.profile;
            rec.plan = usage.plan;
            rec.raw_status = usage.raw_status.clone();
            self.store.put_esim(&rec)?;
        }
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

    /// Top up an eSIM with a top-up-able product of the same supplier: an order of kind
    /// `top_up`, paid and fulfilled like any other.
    pub async fn top_up(
        &self,
        who: &Principal,
        iccid: &str,
        product_id: &str,
        idem: Option<&IdemKey>,
    ) -> Result<OrderView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        let reseller = self.reseller_of(who)?;
        let esim = self.esim_record(who, iccid)?;
        let (supplier, product) = self.find_product(product_id, "/product_id").await?;
        if supplier.info().id != esim.plugin || !product.top_up_able {
            return Err(DomainError::Invalid {
                field: "/product_id",
                message: "must be a top-up-able product of the supplier that issued this eSIM"
                    .into(),
            });
        }
        let spec = OrderSpec {
            reseller: reseller.id,
            product_id: product_id.to_string(),
            plugin: esim.plugin.clone(),
            sku: product.sku.clone(),
            quantity: 1,
            unit_price: unit_price(&product, reseller.markup_bps)?,
            kind: OrderKind::TopUp { iccid: esim.iccid },
        };
        self.accept(Order::accepted(spec, None, None, now_ms()), idem)
            .await
    }

    /// Cancel a fulfilled order whose eSIMs were never installed, through the supplier,
    /// and refund its price to the prepaid balance.
    pub async fn cancel(&self, who: &Principal, id: OrderId) -> Result<OrderView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        let mut order = self
            .store
            .order(id)?
            .filter(|o| self.visible(who, o.reseller))
            .ok_or(DomainError::NotFound("order"))?;
        if order.status != OrderStatus::Fulfilled || order.kind != OrderKind::Esim {
            return Err(DomainError::Conflict {
                code: "order_not_cancellable",
                message: format!(
                    "only fulfilled eSIM orders can be cancelled; this one is {:?}",
                    order.status
                )
                .to_lowercase(),
            });
        }
        let supplier = self
            .suppliers
            .get(&order.plugin)
            .ok_or_else(|| DomainError::SupplierNotLoaded(order.plugin.clone()))?;
        // Never installed: check with the supplier now, not just our last observation.
        for iccid in &order.iccids {
            let usage = supplier.usage(iccid.clone()).await?;
            if usage.profile != ProfileState::Released {
                return Err(DomainError::Conflict {
                    code: "esim_installed",
                    message: format!(
                        "eSIM {iccid} was already {:?}; it cannot be cancelled",
                        usage.profile
                    )
                    .to_lowercase(),
                });
            }
        }
        for iccid in &order.iccids {
            supplier.cancel(order.id.to_string(), iccid.clone()).await?;
        }
        order.status = OrderStatus::Cancelled;
        order.updated_at_ms = now_ms();
        let total = order.accepted_total()?;
        let refund = LedgerEntry::new(
            order.reseller,
            EntryKind::Refund,
            total.minor,
            &total.currency,
            Some(order.id),
        );
        let mut esims = Vec::new();
        for iccid in &order.iccids {
            if let Some(mut e) = self.store.esim(iccid)? {
                e.profile = ProfileState::Deleted;
                esims.push(e);
            }
        }
        // The order's own eSIMs: they are claimed by this order already.
        self.store
            .settle_order(&order, &refund, &esims)?
            .map_err(|taken| StoreError::Backend(taken.to_string()))?;
        self.store.durable().await?;
        self.fulfilment.counters.reached(OrderStatus::Cancelled);
        self.order_view(order, esims)
    }

    /// The caller's balances.
    pub fn balances(&self, who: &Principal) -> Result<Vec<(String, Balance)>, DomainError> {
        let reseller = self.reseller_of(who)?;
        Ok(self.store.balances(reseller.id)?)
    }

    /// The caller's ledger entries, newest first.
    pub fn transactions(
        &self,
        who: &Principal,
        before: Option<ulid::Ulid>,
        limit: usize,
    ) -> Result<Page<LedgerEntry>, DomainError> {
        let reseller = self.reseller_of(who)?;
        Ok(self.store.ledger_page(reseller.id, before, limit)?)
    }

    /// Claim an idempotency key for the caller (see `idempotency`).
    pub fn claim_idempotency(
        &self,
        who: &Principal,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<(IdemKey, Claim), DomainError> {
        if !idempotency::valid_key(key) {
            return Err(DomainError::Invalid {
                field: "Idempotency-Key",
                message: "must be 1 to 255 printable ASCII characters".into(),
            });
        }
        let reseller = who.reseller.ok_or(DomainError::Forbidden)?;
        let idem = IdemKey {
            reseller,
            key: key.to_string(),
            order: OrderId::new(),
        };
        let claim = self.store.claim_idempotency(&idem, fingerprint, now_ms())?;
        Ok((idem, claim))
    }

    /// Record the outcome of an idempotent request that did not create an order.
    pub fn finish_idempotency(&self, key: &IdemKey, state: &IdemState) -> Result<(), DomainError> {
        Ok(self.store.finish_idempotency(key, state)?)
    }

    /// Forget idempotency keys older than the retention window; returns how many.
    pub fn expire_idempotency_keys(&self) -> Result<usize, DomainError> {
        let cutoff = now_ms().saturating_sub(self.tuning.idempotency_retention.as_millis() as u64);
        Ok(self.store.expire_idempotency(cutoff)?)
    }

    /// Free a key whose request created nothing, so the client may retry with it.
    pub fn release_idempotency(&self, key: &IdemKey) -> Result<(), DomainError> {
        Ok(self.store.release_idempotency(key)?)
    }
}

fn validate_new_order(new: &NewOrder) -> Result<(), DomainError> {
    if new.quantity == 0 || new.quantity > MAX_QUANTITY {
        return Err(DomainError::Invalid {
            field: "/quantity",
            message: format!("must be 1 to {MAX_QUANTITY}"),
        });
    }
    if let Some(s) = &new.subject_ref
        && (s.is_empty() || s.len() > MAX_SUBJECT_REF || s.chars().any(char::is_control))
    {
        return Err(DomainError::Invalid {
            field: "/subject_ref",
            message: format!(
                "must be 1 to {MAX_SUBJECT_REF} printable characters (an opaque reference, not personal data)"
            ),
        });
    }
    if let Some(m) = &new.metadata
        && m.to_string().len() > MAX_METADATA_BYTES
    {
        return Err(DomainError::Invalid {
            field: "/metadata",
            message: format!("must serialise to at most {MAX_METADATA_BYTES} bytes"),
        });
    }
    Ok(())
}

/// What one unit of `product` costs a reseller with `markup_bps`.
fn unit_price(product: &CachedProduct, markup_bps: u32) -> Result<Money, DomainError> {
    catalog::price_with_markup(&product.wholesale, markup_bps).ok_or(DomainError::Invalid {
        field: "/product_id",
        message: "this product's price is out of the range the ledger can hold".into(),
    })
}

/// How a supplier failure is told to the reseller.
pub fn failure_of(e: &SupplierError) -> OrderFailure {
    let (code, message) = match e {
        SupplierError::OutOfStock => (
            "out_of_stock".to_string(),
            "the supplier has no stock for this product".to_string(),
        ),
        SupplierError::RateLimited(_) | SupplierError::Unavailable(_) => (
            "supplier_unavailable".into(),
            "the supplier is unavailable; try again later".into(),
        ),
        SupplierError::Rejected(r) => ("supplier_rejected".into(), r.clone()),
        SupplierError::InvalidRequest(r) => ("supplier_invalid_request".into(), r.clone()),
        SupplierError::NotSupported => (
            "not_supported".into(),
            "the supplier does not support this".into(),
        ),
        SupplierError::Fault {
            kind: FaultKind::NotLoaded,
            ..
        } => (
            "supplier_not_loaded".into(),
            "the supplier integration was removed".into(),
        ),
        SupplierError::Fault { kind, .. } => (
            format!("plugin_{}", kind.as_str()),
            "the supplier integration failed; the operator has been told".into(),
        ),
    };
    OrderFailure { code, message }
}
