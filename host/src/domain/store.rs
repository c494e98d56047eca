//! What the domain needs from storage. `store::SledStore` implements it on sled; a
//! PostgreSQL implementation can replace it when one node is not enough.
//!
//! Operations that must not be torn apart by a crash are single methods here
//! ([`Store::accept_order`], [`Store::settle_order`], [`Store::post_entry`]) that each
//! implementation makes atomic (all or nothing after a crash). Writes are not durable until
//! [`Store::durable`] resolves: the API sends a 2xx only after it; implementations batch
//! concurrent calls into one flush (group commit).

use super::accounts::{ApiKey, KeyHash, Reseller};
use super::catalog::CachedCatalog;
use super::idempotency::{Claim, IdemKey, IdemState};
use super::ids::{KeyId, OrderId, ResellerId};
use super::jobs::Job;
use super::ledger::{Balance, LedgerEntry, Refused};
use super::orders::{EsimRecord, Order, OrderStatus};
use super::personal::SubjectLookup;
use super::supplier::BoxFuture;

/// A storage failure. Never caused by a client: the API maps it to 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption detected by the backend).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A record could not be decoded.
    #[error("stored record is unreadable: {0}")]
    Decode(String),
}

/// A settlement delivered an eSIM whose ICCID already belongs to another order. Nothing
/// was written. An ICCID belongs to exactly one order for good: a plugin that hands out
/// another order's ICCID must never move that eSIM into a second reseller's hands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ICCID {iccid} already belongs to another order")]
pub struct IccidTaken {
    /// The contested ICCID.
    pub iccid: String,
    /// The order that owns it (for the operator's log; never shown to the other reseller).
    pub owner: OrderId,
}

impl From<super::orders::TotalOutOfRange> for StoreError {
    fn from(e: super::orders::TotalOutOfRange) -> StoreError {
        StoreError::Decode(e.to_string())
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// One page of a list, newest first.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Whether older items exist.
    pub has_more: bool,
}

/// Records the gateway keeps.
pub trait Store: Send + Sync {
    /// A reseller by id.
    fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>>;
    /// Every reseller, oldest first.
    fn resellers(&self) -> StoreResult<Vec<Reseller>>;
    /// Insert or replace a reseller.
    fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()>;
    /// An API key by its keyed hash.
    fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>>;
    /// An API key by its public id.
    fn api_key_by_id(&self, id: KeyId) -> StoreResult<Option<ApiKey>>;
    /// Insert or replace an API key.
    fn put_api_key(&self, key: &ApiKey) -> StoreResult<()>;

    /// An order by id.
    fn order(&self, id: OrderId) -> StoreResult<Option<Order>>;
    /// An order with the stored eSIMs of its `iccids` (those that exist), read together:
    /// an implementation that keeps them in one record reads it once.
    fn order_and_esims(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<EsimRecord>)>>;
    /// A reseller's orders, newest first, older than `before`, optionally by status; each
    /// with its eSIMs, as [`Store::order_and_esims`] reads them.
    fn orders_page(
        &self,
        reseller: ResellerId,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> StoreResult<Page<(Order, Vec<EsimRecord>)>>;
    /// Orders not yet in a final state (recovery after a restart).
    fn open_orders(&self) -> StoreResult<Vec<Order>>;
    /// Update an order that moves no money (submitted, pending, retry bookkeeping).
    fn put_order(&self, order: &Order) -> StoreResult<()>;
    /// Atomically: hold the order's total and insert the order. Nothing is written when
    /// the balance is short. The hold entry has the order's id (`hold.id == order.id.0`):
    /// a reseller's holds are its list of orders. (An idempotency key is bound to its order when it is
    /// claimed: the claim names the order id.)
    fn accept_order(
        &self,
        order: &Order,
        hold: &LedgerEntry,
    ) -> StoreResult<Result<Balance, Refused>>;
    /// Atomically: update the order, post its ledger entry (capture, release or refund)
    /// and insert or update its eSIMs. Each eSIM's ICCID is claimed for `order` in the same
    /// step: if any already belongs to another order, nothing is written and the owner is
    /// named ([`IccidTaken`]). Two settlements racing for one ICCID: exactly one wins.
    fn settle_order(
        &self,
        order: &Order,
        entry: &LedgerEntry,
        esims: &[EsimRecord],
    ) -> StoreResult<Result<(), IccidTaken>>;

    /// Post a ledger entry on its own (credits); refused if it would go negative.
    fn post_entry(&self, entry: &LedgerEntry) -> StoreResult<Result<Balance, Refused>>;
    /// A reseller's balance in a currency.
    fn balance(&self, reseller: ResellerId, currency: &str) -> StoreResult<Balance>;
    /// Currencies a reseller has a balance in.
    fn balances(&self, reseller: ResellerId) -> StoreResult<Vec<(String, Balance)>>;
    /// One ledger entry of a reseller, by id.
    fn ledger_entry(
        &self,
        reseller: ResellerId,
        id: ulid::Ulid,
    ) -> StoreResult<Option<LedgerEntry>>;
    /// A reseller's ledger entries, newest first, older than `before`.
    fn ledger_page(
        &self,
        reseller: ResellerId,
        before: Option<ulid::Ulid>,
        limit: usize,
    ) -> StoreResult<Page<LedgerEntry>>;

    /// An eSIM by ICCID.
    fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>>;
    /// Insert or replace an eSIM.
    fn put_esim(&self, esim: &EsimRecord) -> StoreResult<()>;

    /// Claim an idempotency key for a request with `fingerprint` (see `idempotency::judge`).
    /// A running claim whose creation (`IdemKey::order`: an order, or a ledger entry of
    /// the key's reseller) exists answers as done.
    fn claim_idempotency(
        &self,
        key: &IdemKey,
        fingerprint: &[u8; 32],
        now_ms: u64,
    ) -> StoreResult<Claim>;
    /// Record how the request that claimed `key` ended.
    fn finish_idempotency(&self, key: &IdemKey, state: &IdemState) -> StoreResult<()>;
    /// Free a key whose request failed on our side (a retry may run again).
    fn release_idempotency(&self, key: &IdemKey) -> StoreResult<()>;
    /// Forget finished idempotency records first used before `cutoff_ms`; returns how many.
    /// Records still in progress are kept (their lease decides), unless their order exists.
    fn expire_idempotency(&self, cutoff_ms: u64) -> StoreResult<usize>;

    /// A subject's wrapped data key, if it has one.
    fn subject_key(&self, lookup: &SubjectLookup) -> StoreResult<Option<Vec<u8>>>;
    /// Keep `wrapped` as the subject's data key unless it has one already; returns the
    /// key that is kept (two callers racing on a new subject both get the same one).
    fn create_subject_key(&self, lookup: &SubjectLookup, wrapped: &[u8]) -> StoreResult<Vec<u8>>;

    /// Add or replace a job (scheduled, rescheduled after a run, retried or dead).
    fn put_job(&self, job: &Job) -> StoreResult<()>;
    /// A job by id.
    fn job(&self, id: &str) -> StoreResult<Option<Job>>;
    /// Claim up to `limit` jobs claimable at `now_ms` (due, live, not leased), leasing each
    /// until `now_ms + lease_ms`: of two workers claiming at once, each job goes to one
    /// (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    fn claim_jobs(&self, now_ms: u64, lease_ms: u64, limit: usize) -> StoreResult<Vec<Job>>;
    /// Remove a job that is done for good.
    fn finish_job(&self, id: &str) -> StoreResult<()>;

    /// The cached catalog of a plugin.
    fn catalog(&self, plugin: &str) -> StoreResult<Option<CachedCatalog>>;
    /// Replace the cached catalog of a plugin.
    fn put_catalog(&self, catalog: &CachedCatalog) -> StoreResult<()>;

    /// A small gateway-level value (bootstrap markers, versions).
    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Set a gateway-level value.
    fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()>;
    /// Resolves once every write made before the call is on disk.
    fn durable(&self) -> BoxFuture<'_, StoreResult<()>>;
    /// Make everything durable and record a clean shutdown (so the next start need not
    /// repair anything). Writes that move money fail afterwards.
    fn close(&self) -> StoreResult<()>;
}
