//! The gateway's use cases: authenticate a key, show the catalog, place and read orders,
//! read eSIMs. Each method takes the caller's [`Principal`] and enforces ownership: a
//! reseller asking for another reseller's record gets `NotFound`, exactly as if it did not
//! exist.

use std::sync::Arc;

use serde::Serialize;

use super::accounts::{self, ApiKey, KeyHash, KeyMode, Reseller, Role};
use super::catalog::{self, Product, ProductFilter};
use super::esim;
use super::ids::{KeyId, OrderId, ResellerId};
use super::orders::{ActivationData, EsimRecord, Order, OrderFailure, OrderStatus};
use super::store::{Store, StoreError};
use super::supplier::{
    EsimProfile, PlanState, ProfileState, ProvisionOutcome, ProvisionRequest, SupplierError,
    Suppliers,
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
    /// Its eSIMs, with activation data.
    pub esims: Vec<EsimView>,
}

/// Keys minted on first start, shown once.
#[derive(Debug)]
pub struct BootstrapKeys {
    /// An admin key.
    pub admin: String,
    /// A demo reseller's test key, when demo mode is on.
    pub demo: Option<(ResellerId, String)>,
}

/// Most eSIMs one order may ask for.
pub const MAX_QUANTITY: u32 = 100;
/// Longest `subject_ref`.
pub const MAX_SUBJECT_REF: usize = 128;

/// The gateway's use cases over a store, the loaded suppliers and the keyring.
pub struct Gateway {
    store: Arc<dyn Store>,
    suppliers: Arc<dyn Suppliers>,
    keyring: Arc<dyn Keyring>,
    rng: ring::rand::SystemRandom,
}

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
    ) -> Gateway {
        Gateway {
            store,
            suppliers,
            keyring,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// The loaded suppliers.
    pub fn suppliers(&self) -> &Arc<dyn Suppliers> {
        &self.suppliers
    }

    /// On the first start of an empty store, mint an admin key and (in demo mode) a demo
    /// reseller with a test key. Later starts return `None`: keys are shown once.
    pub async fn bootstrap(&self, demo: bool) -> Result<Option<BootstrapKeys>, DomainError> {
        const MARKER: &str = "bootstrapped";
        if self.store.meta(MARKER)?.is_some() {
            return Ok(None);
        }
        let (admin, _) = self.create_key(None, Role::Admin, KeyMode::Live)?;
        let demo = if demo {
            let reseller = Reseller {
                id: ResellerId::new(),
                name: "Demo Reseller".into(),
                markup_bps: 1500,
                created_at_ms: now_ms(),
            };
            self.store.put_reseller(&reseller)?;
            let (key, _) = self.create_key(Some(reseller.id), Role::Reseller, KeyMode::Test)?;
            Some((reseller.id, key))
        } else {
            None
        };
        self.store.put_meta(MARKER, b"1")?;
        self.store.durable().await?;
        Ok(Some(BootstrapKeys { admin, demo }))
    }

    /// Mint and store a key; returns the key string (shown once) and its record.
    pub fn create_key(
        &self,
        reseller: Option<ResellerId>,
        role: Role,
        mode: KeyMode,
    ) -> Result<(String, ApiKey), DomainError> {
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

    /// Who holds this bearer key. The lookup is by keyed hash, so no comparison of the
    /// secret ever happens: an equal hash is the only match, found by the store's index.
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

    fn reseller_of(&self, who: &Principal) -> Result<Reseller, DomainError> {
        let id = who.reseller.ok_or(DomainError::Forbidden)?;
        self.store.reseller(id)?.ok_or(DomainError::Unauthenticated)
    }

    /// Every loaded supplier's products, priced for the caller. A supplier whose catalog
    /// call fails is left out (and logged) rather than failing the whole catalog.
    pub async fn catalog(
        &self,
        who: &Principal,
        filter: &ProductFilter,
    ) -> Result<Vec<Product>, DomainError> {
        let markup = self.reseller_of(who)?.markup_bps;
        let mut out = Vec::new();
        for supplier in self.suppliers.all() {
            let plugin = supplier.info().id.clone();
            match supplier.list_products().await {
                Ok(products) => out.extend(
                    products
                        .iter()
                        .map(|p| catalog::for_reseller(&plugin, p, markup))
                        .filter(|p| filter.accepts(p)),
                ),
                Err(e) => tracing::warn!(%plugin, error = %e, "catalog unavailable; left out"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Place an order and provision it. (The walking skeleton provisions inline; the
    /// order worker takes this over with holds, retries and polling.)
    pub async fn place_order(
        &self,
        who: &Principal,
        new: NewOrder,
    ) -> Result<OrderView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        let reseller = self.reseller_of(who)?;
        validate_new_order(&new)?;
        let (plugin, sku) =
            catalog::split_product_id(&new.product_id).ok_or(DomainError::Invalid {
                field: "/product_id",
                message: "expected <plugin>:<sku> as listed by GET /v1/products".into(),
            })?;
        let supplier = self
            .suppliers
            .get(plugin)
            .ok_or_else(|| DomainError::SupplierNotLoaded(new.product_id.clone()))?;
        let products = supplier.list_products().await?;
        let product = products
            .iter()
            .find(|p| p.sku == sku)
            .ok_or(DomainError::NotFound("product"))?;
        let now = now_ms();
        let mut order = Order {
            id: OrderId::new(),
            reseller: reseller.id,
            product_id: new.product_id.clone(),
            plugin: plugin.to_string(),
            sku: sku.to_string(),
            quantity: new.quantity,
            status: OrderStatus::Accepted,
            unit_price: catalog::price_with_markup(&product.wholesale, reseller.markup_bps),
            subject_ref: new.subject_ref,
            metadata: new.metadata,
            supplier_ref: None,
            iccids: Vec::new(),
            failure: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store.put_order(&order)?;

        // Only the order reference, SKU and quantity cross to the supplier (P3).
        let request = ProvisionRequest {
            order_ref: order.id.to_string(),
            sku: order.sku.clone(),
            quantity: order.quantity,
        };
        order.status = OrderStatus::Submitted;
        let outcome = supplier.provision(request).await;
        let mut esims = Vec::new();
        match outcome {
            Ok(ProvisionOutcome::Delivered(profiles))
                if profiles.len() == order.quantity as usize =>
            {
                for profile in profiles {
                    esims.push(self.record_esim(&order, profile)?);
                }
                order.iccids = esims.iter().map(|e| e.iccid.clone()).collect();
                order.status = OrderStatus::Fulfilled;
            }
            Ok(ProvisionOutcome::Delivered(profiles)) => {
                order.status = OrderStatus::Failed;
                order.failure = Some(OrderFailure {
                    code: "plugin_bad_output".into(),
                    message: format!(
                        "supplier delivered {} eSIMs for a quantity of {}",
                        profiles.len(),
                        order.quantity
                    ),
                });
            }
            Ok(ProvisionOutcome::Pending(supplier_ref)) => {
                order.supplier_ref = Some(supplier_ref);
            }
            Err(e) => {
                order.status = OrderStatus::Failed;
                order.failure = Some(failure_of(&e));
            }
        }
        order.updated_at_ms = now_ms();
        self.store.put_order(&order)?;
        self.store.durable().await?;
        let esims = esims
            .iter()
            .map(|e| self.open_esim(e))
            .collect::<Result<_, _>>()?;
        Ok(OrderView { order, esims })
    }

    fn record_esim(&self, order: &Order, profile: EsimProfile) -> Result<EsimRecord, DomainError> {
        let luhn_valid = esim::luhn_valid(&profile.iccid);
        if !luhn_valid {
            tracing::warn!(order = %order.id, plugin = %order.plugin, "delivered ICCID fails the Luhn check");
        }
        let activation = ActivationData {
            smdp_address: profile.smdp_address,
            matching_id: profile.matching_id,
        };
        let plaintext = serde_json::to_vec(&activation).expect("plain struct serialises");
        let record = EsimRecord {
            sealed_activation: self.keyring.seal(profile.iccid.as_bytes(), &plaintext),
            iccid: profile.iccid,
            order: order.id,
            reseller: order.reseller,
            plugin: order.plugin.clone(),
            confirmation_code_required: profile.confirmation_code_required,
            luhn_valid,
            profile: ProfileState::Released,
            plan: PlanState::Ready,
            raw_status: String::new(),
            created_at_ms: now_ms(),
        };
        self.store.put_esim(&record)?;
        Ok(record)
    }

    fn open_esim(&self, record: &EsimRecord) -> Result<EsimView, DomainError> {
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

    fn visible(&self, who: &Principal, owner: ResellerId) -> bool {
        who.role == Role::Admin || who.reseller == Some(owner)
    }

    /// One order, if the caller may see it.
    pub fn order(&self, who: &Principal, id: OrderId) -> Result<OrderView, DomainError> {
        let order = self
            .store
            .order(id)?
            .filter(|o| self.visible(who, o.reseller))
            .ok_or(DomainError::NotFound("order"))?;
        let mut esims = Vec::with_capacity(order.iccids.len());
        for iccid in &order.iccids {
            if let Some(rec) = self.store.esim(iccid)? {
                esims.push(self.open_esim(&rec)?);
            }
        }
        Ok(OrderView { order, esims })
    }

    /// One eSIM, if the caller may see it.
    pub fn esim(&self, who: &Principal, iccid: &str) -> Result<EsimView, DomainError> {
        let rec = self
            .store
            .esim(iccid)?
            .filter(|e| self.visible(who, e.reseller))
            .ok_or(DomainError::NotFound("esim"))?;
        self.open_esim(&rec)
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
    Ok(())
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
        SupplierError::Fault { kind, .. } => (
            format!("plugin_{}", kind.as_str()),
            "the supplier integration failed; the operator has been told".into(),
        ),
    };
    OrderFailure { code, message }
}
