//! What the domain needs from storage. `store::SledStore` implements it on sled and
//! `store::MemoryStore` in memory; a PostgreSQL implementation can replace them when one
//! node is not enough. Every backend passes the same suite (`store::conformance`).
//!
//! The trait is async because database drivers are. Reads are per aggregate. Records that
//! must change together are one [`Commit`] value (a ledger entry, the order it moves money
//! for, the eSIMs it delivers), applied all or nothing by [`Store::commit`]: sled writes it
//! as one commit record, a SQL backend as one transaction. Writes are not durable until
//! [`Store::durable`] resolves: the API sends a 2xx only after it; implementations batch
//! concurrent calls into one flush (group commit).

use super::accounts::{ApiKey, KeyHash, Reseller};
use super::audit::{AuditCheckpoint, AuditEntry, AuditFilter, NewAuditEntry};
use super::catalog::CachedCatalog;
use super::consent::ConsentEvent;
use super::events::{Event, EventType};
use super::idempotency::{Claim, IdemKey, IdemState};
use super::ids::{AttemptId, EndpointId, EventId, KeyId, OrderId, ResellerId};
use super::jobs::Job;
use super::ledger::{Balance, EntryKind, LedgerEntry, Refused};
use super::nodes::NodeRecord;
use super::orders::{EsimRecord, Order, OrderStatus, TotalOutOfRange};
use super::personal::{Restriction, SubjectLookup};
use super::request_log::RequestRecord;
use super::webhooks::{Attempt, Endpoint};

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

impl From<TotalOutOfRange> for StoreError {
    fn from(e: TotalOutOfRange) -> StoreError {
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

/// Records that change together, all or nothing: a ledger entry (when money moves), the
/// order as it is afterwards, the eSIMs delivered or changed with it, and the events that
/// tell the reseller (audit entries join it with the audit log). The constructors keep
/// the rules that tie them together: an order's hold has the order's id, so whatever an
/// idempotent request created is found by that id; settling entries name their order;
/// and a settled order raises its event in the same commit.
#[derive(Debug, Clone)]
pub struct Commit {
    entry: Option<LedgerEntry>,
    order: Option<Order>,
    esims: Vec<EsimRecord>,
    events: Vec<Event>,
    endpoints: Vec<Endpoint>,
    /// Raise `balance.low` if the entry takes the available balance below this.
    low_balance: Option<i64>,
}

impl Commit {
    /// Accept a new order: hold its total.
    pub fn accept(order: Order) -> Result<Commit, TotalOutOfRange> {
        Ok(Commit {
            entry: Some(order.ledger_entry(EntryKind::Hold)?),
            order: Some(order),
            esims: Vec::new(),
            events: Vec::new(),
            endpoints: Vec::new(),
            low_balance: None,
        })
    }

    /// Settle an order: its new state, with the entry that moves its money (`Capture`,
    /// `Release` or `Refund`) and the eSIMs it delivered or changed. Each eSIM's ICCID is
    /// claimed for the order.
    pub fn settle(
        order: Order,
        kind: EntryKind,
        esims: Vec<EsimRecord>,
    ) -> Result<Commit, TotalOutOfRange> {
        debug_assert!(matches!(
            kind,
            EntryKind::Capture | EntryKind::Release | EntryKind::Refund
        ));
        Ok(Commit {
            entry: Some(order.ledger_entry(kind)?),
            events: Event::of_order(&order).into_iter().collect(),
            order: Some(order),
            esims,
            endpoints: Vec::new(),
            low_balance: None,
        })
    }

    /// Post an entry that belongs to no order (a credit).
    pub fn credit(entry: LedgerEntry) -> Commit {
        Commit {
            entry: Some(entry),
            order: None,
            esims: Vec::new(),
            events: Vec::new(),
            endpoints: Vec::new(),
            low_balance: None,
        }
    }

    /// A change that moves no money: an order's new state (submitted, say) or eSIMs'
    /// new states, with the events they raise. Its eSIMs must be ones their order already
    /// owns (a change delivers nothing).
    pub fn change(order: Option<Order>, esims: Vec<EsimRecord>, events: Vec<Event>) -> Commit {
        Commit {
            entry: None,
            order,
            esims,
            events,
            endpoints: Vec::new(),
            low_balance: None,
        }
    }

    /// Raise `balance.low` in this commit if its entry takes the available balance from
    /// `threshold` or more to below it (the reseller's alert for the entry's currency).
    pub fn alert_below(mut self, threshold: Option<i64>) -> Commit {
        self.low_balance = threshold;
        self
    }

    /// The events this commit writes, once the store has posted its entry and knows the
    /// balance `before` and `after` it: its own, and `balance.low` if the entry crossed
    /// the alert threshold.
    pub fn events_posted(&self, before: Balance, after: Balance) -> Vec<Event> {
        let mut events = self.events.clone();
        if let (Some(threshold), Some(entry)) = (self.low_balance, &self.entry)
            && before.available >= threshold
            && after.available < threshold
        {
            events.push(Event::balance_low(entry, after, threshold));
        }
        events
    }

    /// Raise `events` as well.
    pub fn raise(mut self, events: Vec<Event>) -> Commit {
        self.events.extend(events);
        self
    }

    /// A change that also stores `endpoint` (disabled, say) with its events.
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Commit {
        debug_assert!(self.entry.is_none(), "endpoints change without money");
        self.endpoints.push(endpoint);
        self
    }

    /// The webhook endpoints it stores (changes only).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The ledger entry, when money moves.
    pub fn entry(&self) -> Option<&LedgerEntry> {
        self.entry.as_ref()
    }

    /// The order as it is once the entry is posted.
    pub fn order(&self) -> Option<&Order> {
        self.order.as_ref()
    }

    /// The eSIMs delivered or changed.
    pub fn esims(&self) -> &[EsimRecord] {
        &self.esims
    }

    /// The events it raises.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The eSIMs and order, taken back (to answer from the records in hand).
    pub fn into_parts(self) -> (Option<LedgerEntry>, Option<Order>, Vec<EsimRecord>) {
        (self.entry, self.order, self.esims)
    }
}

/// Why a [`Commit`] was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The balance cannot cover the entry, or an amount leaves the ledger's range.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// An eSIM's ICCID belongs to another order.
    #[error(transparent)]
    IccidTaken(#[from] IccidTaken),
}

/// What a backup holds (see [`Store::backup_to`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupSummary {
    /// Trees (tables) copied.
    pub trees: usize,
    /// Records copied, over every tree.
    pub entries: u64,
    /// Size of the file.
    pub bytes: u64,
    /// SHA-256 of the file, hex (as `sha256sum` prints it).
    pub sha256: String,
}

/// An order's lock held across processes (see [`Store::lock_order`]); dropping it lets
/// the next holder in.
pub type HeldLock = Box<dyn std::any::Any + Send + Sync>;

/// Records the gateway keeps.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// A reseller by id.
    async fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>>;
    /// Every reseller, oldest first.
    async fn resellers(&self) -> StoreResult<Vec<Reseller>>;
    /// Insert or replace a reseller.
    async fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()>;
    /// An API key by its keyed hash.
    async fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>>;
    /// An API key by its public id.
    async fn api_key_by_id(&self, id: KeyId) -> StoreResult<Option<ApiKey>>;
    /// Insert or replace an API key.
    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()>;

    /// An order by id.
    async fn order(&self, id: OrderId) -> StoreResult<Option<Order>>;
    /// An order with the stored eSIMs of its `iccids` (those that exist).
    async fn order_and_esims(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<EsimRecord>)>>;
    /// A reseller's orders, newest first, older than `before`, optionally by status; each
    /// with its eSIMs, as [`Store::order_and_esims`] reads them.
    async fn orders_page(
        &self,
        reseller: ResellerId,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> StoreResult<Page<(Order, Vec<EsimRecord>)>>;
    /// Orders not yet in a final state (recovery after a restart).
    async fn open_orders(&self) -> StoreResult<Vec<Order>>;
    /// Update an order that moves no money (submitted, pending, retry bookkeeping).
    async fn put_order(&self, order: &Order) -> StoreResult<()>;
    /// Apply `commit` all or nothing: post its entry (refused if a balance would not
    /// cover it), store its order and its events, and store its eSIMs, claiming each ICCID
    /// for the order. An ICCID another order owns refuses the whole commit and names the
    /// owner; of two commits racing for one ICCID, exactly one wins (a change that moves no
    /// money claims nothing: its eSIMs must be its order's already). Returns the balance
    /// after the entry, if money moved.
    async fn commit(&self, commit: &Commit) -> StoreResult<Result<Option<Balance>, Rejected>>;

    /// A reseller's events, newest first, older than `before`, optionally of one type.
    async fn events_page(
        &self,
        reseller: ResellerId,
        before: Option<EventId>,
        kind: Option<EventType>,
        limit: usize,
    ) -> StoreResult<Page<Event>>;
    /// One event of a reseller, by id.
    async fn event(&self, reseller: ResellerId, id: EventId) -> StoreResult<Option<Event>>;
    /// Up to `limit` committed events not yet taken out of the outbox, oldest first.
    async fn outbox(&self, limit: usize) -> StoreResult<Vec<Event>>;
    /// Take `events` out of the outbox: their deliveries are scheduled.
    async fn dispatched(&self, events: &[Event]) -> StoreResult<()>;

    /// Insert or replace a webhook endpoint.
    async fn put_endpoint(&self, endpoint: &Endpoint) -> StoreResult<()>;
    /// One of a reseller's endpoints.
    async fn endpoint(&self, reseller: ResellerId, id: EndpointId)
    -> StoreResult<Option<Endpoint>>;
    /// A reseller's endpoints, oldest first.
    async fn endpoints(&self, reseller: ResellerId) -> StoreResult<Vec<Endpoint>>;
    /// Remove one of a reseller's endpoints; returns whether it existed.
    async fn delete_endpoint(&self, reseller: ResellerId, id: EndpointId) -> StoreResult<bool>;
    /// Record a delivery attempt.
    async fn put_attempt(&self, attempt: &Attempt) -> StoreResult<()>;
    /// Forget up to `limit` delivery attempts made before `cutoff_ms`, oldest first;
    /// returns how many (fewer than `limit`: none older is left).
    async fn expire_attempts(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize>;
    /// The attempts at one of a reseller's endpoints, newest first, older than `before`.
    async fn attempts_page(
        &self,
        reseller: ResellerId,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: usize,
    ) -> StoreResult<Page<Attempt>>;

    /// A reseller's balance in a currency.
    async fn balance(&self, reseller: ResellerId, currency: &str) -> StoreResult<Balance>;
    /// Currencies a reseller has a balance in.
    async fn balances(&self, reseller: ResellerId) -> StoreResult<Vec<(String, Balance)>>;
    /// One ledger entry of a reseller, by id.
    async fn ledger_entry(
        &self,
        reseller: ResellerId,
        id: ulid::Ulid,
    ) -> StoreResult<Option<LedgerEntry>>;
    /// A reseller's ledger entries, newest first, older than `before`.
    async fn ledger_page(
        &self,
        reseller: ResellerId,
        before: Option<ulid::Ulid>,
        limit: usize,
    ) -> StoreResult<Page<LedgerEntry>>;

    /// An eSIM by ICCID.
    async fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>>;

    /// Claim an idempotency key for a request with `fingerprint` (see `idempotency::judge`).
    /// A running claim whose creation (`IdemKey::order`: an order, or a ledger entry of
    /// the key's reseller with that id) exists answers as done.
    async fn claim_idempotency(
        &self,
        key: &IdemKey,
        fingerprint: &[u8; 32],
        now_ms: u64,
    ) -> StoreResult<Claim>;
    /// Record how the request that claimed `key` ended.
    async fn finish_idempotency(&self, key: &IdemKey, state: &IdemState) -> StoreResult<()>;
    /// Free a key whose request failed on our side (a retry may run again).
    async fn release_idempotency(&self, key: &IdemKey) -> StoreResult<()>;
    /// Forget finished idempotency records first used before `cutoff_ms`; returns how many.
    /// Records still in progress are kept (their lease decides), unless their order exists.
    async fn expire_idempotency(&self, cutoff_ms: u64) -> StoreResult<usize>;

    /// A subject's wrapped data key, if it has one.
    async fn subject_key(&self, lookup: &SubjectLookup) -> StoreResult<Option<Vec<u8>>>;
    /// Keep `wrapped` as the subject's data key unless it has one already; returns the
    /// key that is kept (two callers racing on a new subject both get the same one).
    async fn create_subject_key(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
    ) -> StoreResult<Vec<u8>>;

    /// Note that order `order` of `reseller` holds personal fields of `subject`. An index
    /// entry may outlive a refused order or a rectification: readers check the order.
    async fn index_subject_order(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        order: OrderId,
    ) -> StoreResult<()>;
    /// The orders indexed under a reseller's subject, oldest first, at most `limit`.
    async fn subject_orders(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        limit: usize,
    ) -> StoreResult<Vec<OrderId>>;
    /// Destroy a subject's data key (erasure): whatever it sealed, wherever it was copied,
    /// can no longer be opened. Returns whether there was one.
    async fn destroy_subject_key(&self, lookup: &SubjectLookup) -> StoreResult<bool>;
    /// A reseller's subject's processing restriction, if one is in force.
    async fn restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
    ) -> StoreResult<Option<Restriction>>;
    /// Put a restriction in force (`Some`) or lift it (`None`).
    async fn set_restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        restriction: Option<&Restriction>,
    ) -> StoreResult<()>;

    /// Delete transaction records past their retention, a bounded batch at a time: every
    /// final order whose last change came before `cutoff_ms`, with its eSIMs and the copies
    /// its ledger entries' commit records carry. The entries themselves (ids, amounts,
    /// times) stay: they are the account's balance history, deleted with the account.
    /// Looks at most `limit` ledger entries; returns how many it looked at (fewer than
    /// `limit`: nothing more is due now).
    async fn purge_transactions(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize>;

    /// Delete a closed account's data, a bounded batch at a time: its API keys, webhook
    /// endpoints and their attempts, consent events, restrictions, subject index,
    /// idempotency records, events, balances and ledger; the reseller record goes last.
    /// Orders and eSIMs are transaction records with a period of their own: whatever of
    /// them the ledger's commit records held is first written out in full. Deletes at
    /// most `limit` records; returns how many (fewer than `limit`: the account is gone).
    async fn forget_account(&self, reseller: ResellerId, limit: usize) -> StoreResult<usize>;

    /// Append API request records.
    async fn append_requests(&self, records: &[RequestRecord]) -> StoreResult<()>;
    /// Request records, newest first, older than `before`.
    async fn requests_page(
        &self,
        before: Option<ulid::Ulid>,
        limit: usize,
    ) -> StoreResult<Page<RequestRecord>>;
    /// Forget request records made before `cutoff_ms`, oldest first, a stored batch at a
    /// time (a record may outlive the cutoff by the span of the batch it was appended
    /// with), stopping once `limit` or more are gone; returns how many.
    async fn expire_requests(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize>;

    /// Append an event to the consent ledger (never replaced).
    async fn put_consent(&self, event: &ConsentEvent) -> StoreResult<()>;
    /// A subject's consent events with one reseller, oldest first, at most `limit`.
    async fn consents(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        limit: usize,
    ) -> StoreResult<Vec<ConsentEvent>>;

    /// Add or replace a job (scheduled, rescheduled after a run, retried or dead).
    async fn put_job(&self, job: &Job) -> StoreResult<()>;
    /// Add a job unless one with its id exists (a job in hand, perhaps leased by another
    /// worker, is left as it is); returns whether it was added.
    async fn add_job(&self, job: &Job) -> StoreResult<bool>;
    /// Add `job`, or bring the job of its id forward to `job.due_ms` if it is due later
    /// and not leased (a leased job is left to its worker, which reschedules it).
    async fn hasten_job(&self, job: &Job) -> StoreResult<()>;
    /// A job by id.
    async fn job(&self, id: &str) -> StoreResult<Option<Job>>;
    /// Every job whose id starts with `prefix` (metrics: what waits of one kind).
    async fn jobs_with_prefix(&self, prefix: &str) -> StoreResult<Vec<Job>>;
    /// Claim up to `limit` jobs claimable at `now_ms` (due, live, and not leased, or
    /// leased by another node run no longer alive by its [`NodeRecord`]), leasing each to run
    /// `run` until `now_ms + lease_ms`: of two workers claiming at once, each job goes to
    /// one (PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    async fn claim_jobs(
        &self,
        run: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<Job>>;
    /// Remove a job that is done for good.
    async fn finish_job(&self, id: &str) -> StoreResult<()>;

    /// Keep a node's record, replacing the one of its id.
    async fn put_node(&self, node: &NodeRecord) -> StoreResult<()>;
    /// Every node's record, by id.
    async fn nodes(&self) -> StoreResult<Vec<NodeRecord>>;
    /// Forget a node's record; returns whether there was one.
    async fn delete_node(&self, id: &str) -> StoreResult<bool>;
    /// Take order `id`'s lock across every process sharing this store, held until the
    /// value returned is dropped (waiting while another holds it). `None`: only one
    /// process opens this store, and the caller's own lock is enough.
    async fn lock_order(&self, _id: OrderId) -> StoreResult<Option<HeldLock>> {
        Ok(None)
    }

    /// The cached catalog of a plugin.
    async fn catalog(&self, plugin: &str) -> StoreResult<Option<CachedCatalog>>;
    /// Replace the cached catalog of a plugin.
    async fn put_catalog(&self, catalog: &CachedCatalog) -> StoreResult<()>;

    /// A small gateway-level value (bootstrap markers, versions).
    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Set a gateway-level value.
    async fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()>;
    /// Keep `value` under `key` unless the key has a value already; returns the value
    /// kept (of two callers racing on a new key, both get the first one's).
    async fn first_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>>;
    /// Resolves once every write made before the call is durable.
    async fn durable(&self) -> StoreResult<()>;
    /// Make everything durable and stop: commits fail afterwards. What an implementation
    /// does to start faster next time is its own affair.
    async fn close(&self) -> StoreResult<()>;

    /// Copy every record to a new file `to`, as the store stood at one moment between two
    /// writes: what a crash then would have left, which opening the copy repairs. `None`:
    /// this backend is backed up with its own tools.
    async fn backup_to(&self, _to: &std::path::Path) -> StoreResult<Option<BackupSummary>> {
        Ok(None)
    }

    /// Append `entry` to the audit log at `at_ms` (or the previous entry's time, if that
    /// is later: times never go back along the log). The store gives it the next sequence
    /// number and links it to the entry before, under one lock, so the chain is one line;
    /// after the log was purged to its last entry, numbering goes on from the checkpoint.
    /// Each entry is one write: a crash leaves a valid prefix of the chain. Durable with
    /// the next [`Store::durable`].
    async fn append_audit(&self, at_ms: u64, entry: NewAuditEntry) -> StoreResult<AuditEntry>;
    /// Audit entries matching `filter`, newest first, numbered below `before`.
    async fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Page<AuditEntry>>;
    /// Up to `limit` audit entries from number `from` on, oldest first, exactly as stored
    /// (verification reads the whole log this way, a page at a time).
    async fn audit_entries(&self, from: u64, limit: usize) -> StoreResult<Vec<AuditEntry>>;
    /// The checkpoint the last purge left: where the kept log starts.
    async fn audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>>;
    /// Keep `checkpoint` (durably), then delete every audit entry numbered below its
    /// `first_seq`; returns how many were deleted. A crash in between leaves entries the
    /// checkpoint already disowns; the next purge deletes them.
    async fn purge_audit(&self, checkpoint: &AuditCheckpoint) -> StoreResult<usize>;
}
