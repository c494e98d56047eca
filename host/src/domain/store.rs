//! What the domain needs from storage. `store::SledStore` implements it on sled; a
//! PostgreSQL implementation can replace it when one node is not enough.
//!
//! Writes are not durable until [`Store::durable`] resolves: the API sends a 2xx only
//! after it. Implementations batch concurrent `durable` calls into one flush (group commit).

use super::accounts::{ApiKey, KeyHash, Reseller};
use super::ids::{OrderId, ResellerId};
use super::orders::{EsimRecord, Order};
use super::supplier::BoxFuture;

/// A storage failure. Never caused by a client: the API maps it to 500/503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption detected by the backend).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A record could not be decoded.
    #[error("stored record is unreadable: {0}")]
    Decode(String),
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Records the gateway keeps.
pub trait Store: Send + Sync {
    /// A reseller by id.
    fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>>;
    /// Insert or replace a reseller.
    fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()>;
    /// An API key by its keyed hash.
    fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>>;
    /// Insert or replace an API key.
    fn put_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    /// An order by id.
    fn order(&self, id: OrderId) -> StoreResult<Option<Order>>;
    /// Insert or replace an order (and its reseller index entry).
    fn put_order(&self, order: &Order) -> StoreResult<()>;
    /// An eSIM by ICCID.
    fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>>;
    /// Insert or replace an eSIM.
    fn put_esim(&self, esim: &EsimRecord) -> StoreResult<()>;
    /// A small gateway-level value (bootstrap markers, versions).
    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Set a gateway-level value.
    fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()>;
    /// Resolves once every write made before the call is on disk.
    fn durable(&self) -> BoxFuture<'_, StoreResult<()>>;
}
