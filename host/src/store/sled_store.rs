//! sled implementation of [`Store`].
//!
//! | tree | key | value |
//! |---|---|---|
//! | `resellers` | reseller id (16 B) | JSON `Reseller` |
//! | `api_keys` | key hash (32 B) | JSON `ApiKey` |
//! | `api_key_ids` | key id (16 B) | key hash |
//! | `orders` | order id (16 B, sorts by time) | JSON `Order`, or a commit pointer |
//! | `ledger` | reseller id ++ entry id (sorts by time) | JSON `LedgerEntry` + what it commits |
//! | `idempotency` | reseller id ++ SHA-256(key) | `IdemRecord`, compact (see `StoredIdem`) |
//! | `esims` | ICCID | JSON `EsimRecord` (activation data sealed), a commit pointer, or a claim |
//! | `catalogs` | plugin id | JSON `CachedCatalog` |
//! | `subject_keys` | subject lookup (keyed hash, 32 B) | the subject's wrapped data key |
//! | `subject_orders` | reseller id ++ subject lookup ++ order id | empty: a subject's orders (readers check the order) |
//! | `subject_restrictions` | reseller id ++ subject lookup | JSON `Restriction` |
//! | `consents` | reseller id ++ subject lookup ++ consent id (sorts by time) | JSON `ConsentEvent` (subject ref sealed) |
//! | `jobs` | job id | JSON `Job` (housekeeping, each open order's next step, each delivery) |
//! | `jobs_due` | due time (8 B, big-endian) ++ job id | empty: live jobs by when they may next be taken; rebuilt on open |
//! | `events` | reseller id ++ event id (sorts by time) | a commit pointer to the entry that raised it, or the event in full |
//! | `journal` | a ULID | a commit that moves no money, until it is applied |
//! | `outbox` | event id | reseller id: events whose deliveries are not scheduled yet |
//! | `webhook_endpoints` | reseller id ++ endpoint id | JSON `Endpoint` (secrets sealed) |
//! | `webhook_attempts` | endpoint id ++ attempt id (sorts by time) | JSON `Attempt` |
//! | `webhook_attempts_by_time` | attempt time (8 B) ++ endpoint id ++ attempt id | empty: attempts oldest first, for retention |
//! | `requests` | id of a batch's newest record (sorts by time) | postcard `Vec<RequestRecord>`, oldest first (API request log; one write per batch) |
//! | `ledger_since` | epoch (8 B, big-endian) ++ ledger key | empty: the entries written since the last checkpoint (see below) |
//! | `audit` | sequence number (8 B, big-endian) | JSON `AuditEntry` (hash-chained; see `domain::audit`) |
//! | `meta` | name | bytes; `audit_checkpoint`: JSON `AuditCheckpoint`, where the purged audit log starts; `ledger_checkpoint`: the books (see below) |
//!
//! An order's hold entry has the order's id, so a reseller's ledger is also its list of
//! orders, newest first: no separate index is written per order.
//!
//! A *commit pointer* is `@` followed by a ledger key: the record is exactly as that
//! ledger entry's commit record carries it (see below). Orders and eSIMs that a ledger
//! entry settles are stored that way, so each is written in full once, not twice; a
//! record changed without moving money (an order submitted, an eSIM's state refreshed) is
//! stored in full again. JSON records start with `{`, so the two never collide.
//!
//! ## Every write is one key
//!
//! sled's multi-key transactions and batches take a process-wide write lock that waits
//! for every flush in progress, so under group commit they serialise the whole gateway
//! behind the disk (`cargo bench -p simgate --bench sled_writes`: about a third of the
//! throughput of single-key writes; BENCHMARKS.md). This store therefore never uses them.
//! A change that spans several records is made atomic by its *commit record*: the ledger
//! entry that moves the money carries the order as it is after the change (and the eSIMs
//! it delivers). The ledger entry is written first, in one insert; commit pointers to it
//! from `orders` and `esims` follow as plain inserts. If the process dies in between,
//! opening the store replays the ledger and points every record that is older than the
//! entry that committed it (or missing) at that entry.
//!
//! A commit that moves no money (an order left waiting at its supplier, an eSIM's new
//! state, with their events) has no ledger entry to carry it: it is written first as one
//! record in `journal`, then applied (each record in full), then its journal record is
//! removed. Opening the store applies any journal record a crash left behind.
//!
//! An ICCID belongs to one order for good. Settling an order first *claims* each ICCID it
//! delivers with a compare-and-swap on `esims` (`#` followed by the order id), so of two
//! orders racing for one ICCID exactly one wins, and an ICCID another order owns is never
//! overwritten (the settlement is refused, nothing is written). A claim reads as "no such
//! eSIM" until the commit pointer replaces it; a claim a crash left behind stays with its
//! order (whose retried delivery finds it its own) and is taken over only once that order
//! is final without the ICCID.
//!
//! Balances and the set of unfinished orders (the *books*) live in memory and are derived
//! from the ledger: a hold is checked against the in-memory balance and counted there
//! before its entry is written (see `SledStore::post` for why that order is safe).
//!
//! ## Checkpoints: opening reads what came after the last one
//!
//! Every ledger write is made under a shared gate and noted first in `ledger_since` under
//! the current *epoch*. A checkpoint ([`SledStore::checkpoint`]) takes the gate alone for
//! as long as it takes to copy the books and move to the next epoch, then writes the copy
//! as one record (`meta/ledger_checkpoint`, see `store::checkpoint`) naming the epoch it
//! stops at, and only then drops the notes of the epochs it holds. Opening loads the
//! checkpoint and reads only the entries noted from its epoch on (and repairs what they
//! committed), so recovery reads the entries of the last few seconds, not years of them.
//! An entry's commit pointers are written under the same gate as the entry, so every
//! entry a checkpoint holds has them written before it. Accepted orders not yet written
//! (`unwritten`) get a pointer to their hold before the checkpoint that holds the hold.
//! Checkpoints are taken every so many entries and seconds (`start_checkpoints`), on
//! open, and on close; without one (a data directory from before checkpoints, or a crash
//! in the first seconds) opening reads the whole ledger, logging its progress.
//!
//! The audit log's chain head (the next sequence number and the hash to link to) lives in
//! memory behind one lock, taken from the last entry (or the checkpoint) on open; each
//! entry is one insert made under that lock, so the entries on disk are always a prefix
//! of the chain in order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::domain::accounts::{ApiKey, KeyHash, KeyMode, Reseller};
use crate::domain::audit::{AuditCheckpoint, AuditEntry, AuditFilter, GENESIS, NewAuditEntry};
use crate::domain::catalog::CachedCatalog;
use crate::domain::consent::ConsentEvent;
use crate::domain::events::{Event, EventType};
use crate::domain::idempotency::{self, Claim, IdemKey, IdemRecord, IdemState};
use crate::domain::ids::{AttemptId, EndpointId, EventId, KeyId, OrderId, ResellerId};
use crate::domain::jobs::Job;
use crate::domain::ledger::{Balance, Books, EntryKind, LedgerEntry, Refused};
use crate::domain::nodes::NodeRecord;
use crate::domain::orders::{EsimRecord, Order, OrderStatus};
use crate::domain::personal::{Restriction, SubjectLookup};
use crate::domain::request_log::RequestRecord;
use crate::domain::store::{
    BackupSummary, Commit, IccidTaken, Page, Rejected, Store, StoreError, StoreResult,
};
use crate::domain::webhooks::{Attempt, Endpoint};

use super::backup::Tree;
use super::checkpoint::{LedgerCheckpoint, Rebuild};
use super::group_commit::GroupCommit;

/// Where the books' checkpoint is kept in `meta`.
const LEDGER_CHECKPOINT: &str = "ledger_checkpoint";

/// The trees and marker of the checkpoint written only by a clean close, before
/// checkpoints: dropped on open (the ledger is replayed in full once instead).
const OLD_CHECKPOINT: [&str; 3] = ["clean_shutdown", "balances", "orders_open"];

/// How often checkpoints are taken.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// After this many ledger entries...
    pub every_entries: usize,
    /// ...or this long, whichever comes first (if any entry was written).
    pub every: std::time::Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_entries: 20_000,
            every: std::time::Duration::from_secs(60),
        }
    }
}

/// What opening the store found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whether it started from a checkpoint (else it read the whole ledger).
    pub from_checkpoint: bool,
    /// Ledger entries read to rebuild the books.
    pub entries_read: usize,
    /// Records rewritten that a crash kept from being written behind their entry.
    pub repaired: usize,
}

/// Where the audit log's checkpoint is kept in `meta`.
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";

/// Where the next audit entry goes: its number, the hash it links to, and the time it may
/// not be earlier than.
struct AuditHead {
    next_seq: u64,
    prev_hash: String,
    last_at_ms: u64,
}

/// The sled-backed store.
pub struct SledStore {
    db: Arc<sled::Db>,
    /// Held alone while a backup is read; every write holds it shared (see `backup`).
    pause: Arc<RwLock<()>>,
    resellers: Tree,
    api_keys: Tree,
    api_key_ids: Tree,
    orders: Tree,
    ledger: Tree,
    ledger_since: Tree,
    idempotency: Tree,
    esims: Tree,
    catalogs: Tree,
    nodes: Tree,
    subject_keys: Tree,
    consents: Tree,
    subject_orders: Tree,
    restrictions: Tree,
    jobs: Tree,
    jobs_due: Tree,
    events: Tree,
    outbox: Tree,
    journal: Tree,
    endpoints: Tree,
    attempts: Tree,
    attempts_by_time: Tree,
    requests: Tree,
    audit: Tree,
    meta: Tree,
    /// Held for each audit append: the chain is one line.
    audit_head: Mutex<AuditHead>,
    books: Mutex<Books>,
    /// Ledger writes hold it shared, with the epoch they are noted under; a checkpoint
    /// takes it alone to copy the books and move to the next epoch; `close` takes it and
    /// sets it: no ledger write follows the last checkpoint.
    gate: RwLock<bool>,
    /// The epoch ledger writes are noted under (changed only under the gate).
    epoch: std::sync::atomic::AtomicU64,
    /// Entries written since the last checkpoint.
    since_checkpoint: std::sync::atomic::AtomicUsize,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    /// Wakes the checkpoint task early (enough entries).
    checkpoint_due: Arc<tokio::sync::Notify>,
    policy: Mutex<CheckpointPolicy>,
    recovery: Recovery,
    /// Read-through copies of the records every request reads (its API key, its
    /// reseller). This store is their only writer, so they never go stale.
    keys_seen: RwLock<HashMap<[u8; 32], ApiKey>>,
    /// Orders accepted but not yet written to `orders`: their hold's commit record holds
    /// them durably, and the fulfilment step that follows writes them once, settled or
    /// submitted, instead of twice. Read after `orders` (which is never older).
    unwritten: Mutex<HashMap<OrderId, Order>>,
    resellers_seen: RwLock<HashMap<ResellerId, Reseller>>,
    commit: GroupCommit,
}

/// A read-through copy of `tree`'s record under `key`, kept in `seen`.
fn read_through<K, T>(
    seen: &RwLock<HashMap<K, T>>,
    id: K,
    tree: &sled::Tree,
    key: &[u8],
) -> StoreResult<Option<T>>
where
    K: std::hash::Hash + Eq,
    T: Clone + DeserializeOwned,
{
    if let Some(v) = seen.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
        return Ok(Some(v.clone()));
    }
    // Read the tree under the write lock: a concurrent `write_through` (a revocation,
    // say) then lands either before this read or after this copy, never under it.
    let mut seen = seen.write().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = seen.get(&id) {
        return Ok(Some(v.clone()));
    }
    let found: Option<T> = get(tree, key)?;
    if let Some(v) = &found {
        // Only records that exist are kept: unknown keys cannot grow the map.
        seen.insert(id, v.clone());
    }
    Ok(found)
}

/// Write `value` to `tree` and to its read-through copy.
fn write_through<K, T>(
    seen: &RwLock<HashMap<K, T>>,
    id: K,
    tree: &Tree,
    key: &[u8],
    value: &T,
) -> StoreResult<()>
where
    K: std::hash::Hash + Eq,
    T: Clone + Serialize,
{
    let mut seen = seen.write().unwrap_or_else(|p| p.into_inner());
    put(tree, key, value)?;
    seen.insert(id, value.clone());
    Ok(())
}

/// A commit that moves no money, journaled until it is applied.
#[derive(Deserialize)]
struct Journaled {
    #[serde(default)]
    order: Option<Order>,
    #[serde(default)]
    esims: Vec<EsimRecord>,
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

impl Journaled {
    fn borrowed(&self) -> JournalRef<'_> {
        JournalRef {
            order: self.order.as_ref(),
            esims: &self.esims,
            events: &self.events,
            endpoints: &self.endpoints,
        }
    }
}

/// The borrowed form of [`Journaled`], for writing and applying.
#[derive(Serialize)]
struct JournalRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'a Order>,
    #[serde(skip_serializing_if = "<[EsimRecord]>::is_empty")]
    esims: &'a [EsimRecord],
    #[serde(skip_serializing_if = "<[Event]>::is_empty")]
    events: &'a [Event],
    #[serde(skip_serializing_if = "<[Endpoint]>::is_empty")]
    endpoints: &'a [Endpoint],
}

/// A ledger entry as stored, with the records it commits.
#[derive(Serialize, Deserialize)]
struct LedgerRecord {
    #[serde(flatten)]
    entry: LedgerEntry,
    /// The order as it is once this entry is posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commits_order: Option<Order>,
    /// eSIMs delivered (or changed) with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    commits_esims: Vec<EsimRecord>,
    /// Events raised with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    commits_events: Vec<Event>,
}

/// The borrowed form of [`LedgerRecord`], for writing.
#[derive(Serialize)]
struct LedgerRecordRef<'a> {
    #[serde(flatten)]
    entry: &'a LedgerEntry,
    #[serde(skip_serializing_if = "Option::is_none")]
    commits_order: Option<&'a Order>,
    #[serde(skip_serializing_if = "<[EsimRecord]>::is_empty")]
    commits_esims: &'a [EsimRecord],
    #[serde(skip_serializing_if = "<[Event]>::is_empty")]
    commits_events: &'a [Event],
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode(e.to_string()))
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> StoreResult<Option<T>> {
    tree.get(key)
        .map_err(backend)?
        .map(|b| decode(&b))
        .transpose()
}

fn put<T: Serialize + ?Sized>(tree: &Tree, key: &[u8], value: &T) -> StoreResult<()> {
    tree.insert(key, encode(value)).map_err(backend)?;
    Ok(())
}

/// The epoch a `ledger_since` note was made in.
fn epoch_of(note: &[u8]) -> StoreResult<u64> {
    note.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Decode("a ledger note is shorter than its epoch".into()))
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

/// Where a ledger entry is stored: reseller, then entry id (sorts by time).
fn ledger_key(entry: &LedgerEntry) -> Vec<u8> {
    cat(&entry.reseller.to_bytes(), &entry.id.to_bytes())
}

/// Where an event is indexed: reseller, then event id (sorts by time).
fn event_key(event: &Event) -> Vec<u8> {
    cat(&event.reseller.to_bytes(), &event.id.to_bytes())
}

/// Where a live job is found by the time a worker may next take it: its due time or, while
/// leased, its lease's end (big-endian, so entries sort by time), then its id. Dead jobs
/// are not indexed.
fn due_entry(job: &Job) -> Option<Vec<u8>> {
    (!job.dead).then(|| {
        cat(
            &job.due_ms.max(job.lease_until_ms).to_be_bytes(),
            job.id.as_bytes(),
        )
    })
}

/// Marks a commit pointer; JSON records start with `{`.
const COMMITTED: u8 = b'@';

/// A commit pointer to the ledger entry stored under `ledger_key`.
fn commit_pointer(ledger_key: &[u8]) -> Vec<u8> {
    cat(&[COMMITTED], ledger_key)
}

/// Marks an ICCID claimed by an order whose settlement is being written.
const CLAIMED: u8 = b'#';

/// The claim of an ICCID for `order`.
fn iccid_claim(order: OrderId) -> Vec<u8> {
    cat(&[CLAIMED], &order.to_bytes())
}

/// The order a stored claim names.
fn claimant(stored: &[u8]) -> Option<OrderId> {
    match stored.split_first() {
        Some((&CLAIMED, id)) => id.try_into().ok().map(OrderId::from_bytes),
        _ => None,
    }
}

/// The records a commit record carries; its entry's fields are skipped unread.
#[derive(Deserialize)]
struct Commits {
    #[serde(default)]
    commits_order: Option<Order>,
    #[serde(default)]
    commits_esims: Vec<EsimRecord>,
    #[serde(default)]
    commits_events: Vec<Event>,
}

fn dangling(what: &str) -> StoreError {
    StoreError::Decode(format!(
        "{what} points at a ledger entry that does not carry it"
    ))
}

/// How `idempotency` stores an [`IdemRecord`]: a version byte, then postcard. Every order
/// writes one claim, keyed by a hash, so claims land on random tree nodes; at about 60
/// bytes instead of about 190 as JSON, far more of those nodes stay in the page cache as
/// the tree grows.
#[derive(Serialize, Deserialize)]
struct StoredIdem {
    fingerprint: [u8; 32],
    created_at_ms: u64,
    state: StoredIdemState,
}

#[derive(Serialize, Deserialize)]
enum StoredIdemState {
    InProgress {
        started_ms: u64,
        order: Option<[u8; 16]>,
    },
    Order([u8; 16]),
}

/// The version byte of a [`StoredIdem`]; JSON records (as older stores wrote them) start
/// with `{`.
const IDEM_V1: u8 = 1;

fn encode_idem(rec: &IdemRecord) -> Vec<u8> {
    let state = match &rec.state {
        IdemState::InProgress { started_ms, order } => StoredIdemState::InProgress {
            started_ms: *started_ms,
            order: order.map(|o| o.to_bytes()),
        },
        IdemState::Order { order } => StoredIdemState::Order(order.to_bytes()),
    };
    let stored = StoredIdem {
        fingerprint: rec.fingerprint,
        created_at_ms: rec.created_at_ms,
        state,
    };
    postcard::to_extend(&stored, vec![IDEM_V1]).expect("idempotency records serialise")
}

fn decode_idem(bytes: &[u8]) -> StoreResult<IdemRecord> {
    let stored: StoredIdem = match bytes.split_first() {
        Some((&IDEM_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Decode(e.to_string()))?
        }
        Some((b'{', _)) => return decode(bytes),
        _ => {
            return Err(StoreError::Decode(
                "unknown idempotency record format".into(),
            ));
        }
    };
    let state = match stored.state {
        StoredIdemState::InProgress { started_ms, order } => IdemState::InProgress {
            started_ms,
            order: order.map(OrderId::from_bytes),
        },
        StoredIdemState::Order(order) => IdemState::Order {
            order: OrderId::from_bytes(order),
        },
    };
    Ok(IdemRecord {
        fingerprint: stored.fingerprint,
        state,
        created_at_ms: stored.created_at_ms,
    })
}

/// How far an order has come; a record is only ever replaced by a later one.
fn progress(status: OrderStatus) -> u8 {
    match status {
        OrderStatus::Accepted | OrderStatus::AwaitingKyc => 0,
        OrderStatus::Submitted => 1,
        OrderStatus::Fulfilled | OrderStatus::Failed => 2,
        OrderStatus::Cancelled => 3,
    }
}

/// Keys of one reseller's index entries older than `before` (all when `None`), to walk
/// newest first with `.rev()`.
fn newest_first_range(reseller: ResellerId, before: Option<[u8; 16]>) -> (Vec<u8>, Vec<u8>) {
    let prefix = reseller.to_bytes();
    (prefix.to_vec(), cat(&prefix, &before.unwrap_or([0xff; 16])))
}

/// The first `limit` items (skipping `None`: records filtered out) and whether more follow.
fn take_page<T>(
    items: impl Iterator<Item = StoreResult<Option<T>>>,
    limit: usize,
) -> StoreResult<Page<T>> {
    let mut page = Vec::new();
    for item in items {
        let Some(item) = item? else { continue };
        if page.len() == limit {
            return Ok(Page {
                items: page,
                has_more: true,
            });
        }
        page.push(item);
    }
    Ok(Page {
        items: page,
        has_more: false,
    })
}

impl SledStore {
    /// Open (or create) the database in `dir`, repairing what a crash left half-written.
    /// Must run inside a tokio runtime (the group-commit flusher is a task).
    pub fn open(dir: &Path, cache_mib: u64) -> StoreResult<SledStore> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mib * 1024 * 1024)
            // Durability comes from explicit group-commit flushes, not a timer.
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let db = Arc::new(db);
        let pause = Arc::new(RwLock::new(()));
        let tree = |name: &str| {
            db.open_tree(name)
                .map(|t| Tree::new(t, pause.clone()))
                .map_err(backend)
        };
        // The flusher holds the database weakly: dropping the store closes it (and frees
        // sled's directory lock) without waiting for the flusher task to notice.
        let flusher = Arc::downgrade(&db);
        let commit = GroupCommit::start(move || {
            let db = flusher.upgrade();
            async move {
                match db {
                    Some(db) => db
                        .flush_async()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Err("store closed".into()),
                }
            }
        });
        let mut store = SledStore {
            resellers: tree("resellers")?,
            api_keys: tree("api_keys")?,
            api_key_ids: tree("api_key_ids")?,
            orders: tree("orders")?,
            ledger: tree("ledger")?,
            ledger_since: tree("ledger_since")?,
            idempotency: tree("idempotency")?,
            esims: tree("esims")?,
            catalogs: tree("catalogs")?,
            nodes: tree("nodes")?,
            subject_keys: tree("subject_keys")?,
            consents: tree("consents")?,
            subject_orders: tree("subject_orders")?,
            restrictions: tree("subject_restrictions")?,
            jobs: tree("jobs")?,
            jobs_due: tree("jobs_due")?,
            events: tree("events")?,
            outbox: tree("outbox")?,
            journal: tree("journal")?,
            endpoints: tree("webhook_endpoints")?,
            attempts: tree("webhook_attempts")?,
            attempts_by_time: tree("webhook_attempts_by_time")?,
            requests: tree("requests")?,
            audit: tree("audit")?,
            meta: tree("meta")?,
            audit_head: Mutex::new(AuditHead {
                next_seq: 1,
                prev_hash: GENESIS.to_string(),
                last_at_ms: 0,
            }),
            db,
            pause,
            books: Mutex::new(Books::default()),
            gate: RwLock::new(false),
            epoch: Default::default(),
            since_checkpoint: Default::default(),
            checkpointing: Mutex::default(),
            checkpoint_due: Default::default(),
            policy: Mutex::default(),
            recovery: Recovery::default(),
            keys_seen: RwLock::default(),
            unwritten: Mutex::default(),
            resellers_seen: RwLock::default(),
            commit,
        };
        let (books, recovery) = store.rebuild_books()?;
        *store.lock_books() = books;
        store.recovery = recovery;
        let replayed = store.replay_journal()?;
        if replayed > 0 {
            tracing::warn!(changes = replayed, "applied changes a crash left journaled");
        }
        let voided = store.reindex_jobs()?;
        if voided > 0 {
            tracing::info!(
                jobs = voided,
                "took back the jobs a stopped process had in hand"
            );
        }
        *store.lock_audit_head() = store.read_audit_head()?;
        // The books are exact: the next open starts from here.
        store.checkpoint()?;
        for name in OLD_CHECKPOINT {
            store.meta.remove(name).map_err(backend)?;
            store.db.drop_tree(name).map_err(backend)?;
        }
        store.db.flush().map_err(backend)?;
        Ok(store)
    }

    /// Copy the whole database to a new file `to`, as it stands between two writes
    /// (writes wait while it is read; see `store::backup`).
    pub fn export_to(&self, to: &Path) -> StoreResult<BackupSummary> {
        super::backup::export(&self.db, &self.pause, to)
    }

    /// What opening found and did.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Take checkpoints by `policy` for as long as the store lives.
    pub fn start_checkpoints(self: &Arc<Self>, policy: CheckpointPolicy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
        // The task holds the store only while it checkpoints: dropping the store ends it.
        let store = Arc::downgrade(self);
        let due = self.checkpoint_due.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = due.notified() => {}
                    _ = tokio::time::sleep(policy.every) => {}
                }
                let Some(s) = store.upgrade() else { return };
                if s.since_checkpoint.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let taken = tokio::task::spawn_blocking(move || s.checkpoint()).await;
                match taken {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "could not write a ledger checkpoint")
                    }
                    Err(e) => tracing::error!(error = %e, "the ledger checkpoint failed"),
                }
            }
        });
    }

    /// Write the books down, so that opening after a crash reads only the ledger entries
    /// written after this. Ledger writes wait only while the books are copied.
    pub fn checkpoint(&self) -> StoreResult<()> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let (checkpoint, unwritten) = {
            let gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
            if *gate {
                // Closed: the last checkpoint stands.
                return Ok(());
            }
            self.checkpoint_under(&gate)
        };
        self.write_checkpoint(&checkpoint, &unwritten)
    }

    /// Copy the books and move to the next epoch: the copy holds exactly the entries
    /// noted before it. Called with the gate held alone.
    fn checkpoint_under(
        &self,
        _gate: &RwLockWriteGuard<'_, bool>,
    ) -> (LedgerCheckpoint, Vec<Order>) {
        let since = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.since_checkpoint.store(0, Ordering::Relaxed);
        let checkpoint = LedgerCheckpoint::of(&self.lock_books(), since);
        // Accepted orders whose hold is counted (a hold still waiting for the gate is
        // not, and its order must not point at an entry not yet written).
        let open: std::collections::HashSet<OrderId> = checkpoint.open.iter().copied().collect();
        let unwritten = self
            .lock_unwritten()
            .values()
            .filter(|o| open.contains(&o.id))
            .cloned()
            .collect();
        (checkpoint, unwritten)
    }

    /// Write a checkpoint taken by `checkpoint_under`: pointers for the accepted orders
    /// it holds, then the checkpoint in one insert, then drop the notes it makes useless.
    fn write_checkpoint(
        &self,
        checkpoint: &LedgerCheckpoint,
        unwritten: &[Order],
    ) -> StoreResult<()> {
        for order in unwritten {
            let hold = cat(&order.reseller.to_bytes(), &order.id.to_bytes());
            // Only where nothing is written yet: a step may have written a later state.
            let _ = self
                .orders
                .compare_and_swap(
                    order.id.to_bytes(),
                    None::<&[u8]>,
                    Some(commit_pointer(&hold)),
                )
                .map_err(backend)?;
        }
        self.meta
            .insert(LEDGER_CHECKPOINT, checkpoint.encode())
            .map_err(backend)?;
        let end = checkpoint.since.to_be_bytes();
        for key in self.ledger_since.range(..end.as_slice()).keys() {
            self.ledger_since
                .remove(key.map_err(backend)?)
                .map_err(backend)?;
        }
        Ok(())
    }

    /// The books, from the last checkpoint and the entries noted since it (or from the
    /// whole ledger), with every record those entries committed made sure of.
    fn rebuild_books(&self) -> StoreResult<(Books, Recovery)> {
        let checkpoint = match self.meta.get(LEDGER_CHECKPOINT).map_err(backend)? {
            Some(bytes) => Some(LedgerCheckpoint::decode(&bytes)?),
            None => None,
        };
        let mut rebuild = Rebuild::default();
        let mut repaired = 0;
        let mut read = |key: &[u8], rec: LedgerRecord| -> StoreResult<()> {
            rebuild.add(&rec.entry)?;
            if let Some(order) = &rec.commits_order {
                repaired += self.redo(key, order, &rec.commits_esims)?;
            }
            repaired += self.redo_events(key, &rec.commits_events)?;
            if rebuild.entries().is_multiple_of(100_000) {
                tracing::info!(entries = rebuild.entries(), "reading the ledger");
            }
            Ok(())
        };
        // Notes are made before their entries: the last epoch noted is the newest.
        let last_epoch = match self.ledger_since.last().map_err(backend)? {
            Some((k, _)) => epoch_of(&k)?,
            None => 0,
        };
        let from_checkpoint = checkpoint.is_some();
        match &checkpoint {
            Some(c) => {
                let start = c.since.to_be_bytes();
                for key in self.ledger_since.range(start.as_slice()..).keys() {
                    let key = key.map_err(backend)?;
                    let ledger_key = &key[8..];
                    // A note whose entry was never written (or was deleted with its
                    // account) counts nothing.
                    if let Some(v) = self.ledger.get(ledger_key).map_err(backend)? {
                        read(ledger_key, decode(&v)?)?;
                    }
                }
            }
            None => {
                tracing::info!("no ledger checkpoint: reading the whole ledger");
                for kv in self.ledger.iter() {
                    let (k, v) = kv.map_err(backend)?;
                    read(&k, decode(&v)?)?;
                }
            }
        }
        let entries_read = rebuild.entries();
        let books = rebuild.books(checkpoint.clone(), |r| {
            Ok(self
                .ledger
                .scan_prefix(r.to_bytes())
                .next()
                .transpose()
                .map_err(backend)?
                .is_some())
        })?;
        if repaired > 0 {
            tracing::warn!(
                records = repaired,
                "rewrote records a crash left behind their ledger entries"
            );
        }
        // New entries are noted after every epoch on disk.
        let since = checkpoint.map_or(0, |c| c.since);
        self.epoch.store(since.max(last_epoch), Ordering::Relaxed);
        Ok((
            books,
            Recovery {
                from_checkpoint,
                entries_read,
                repaired,
            },
        ))
    }

    /// Every ledger entry of a reseller, oldest first (invariant checks, exports).
    pub fn ledger_entries(&self, reseller: ResellerId) -> StoreResult<Vec<LedgerEntry>> {
        self.ledger
            .scan_prefix(reseller.to_bytes())
            .map(|kv| Ok(decode::<LedgerRecord>(&kv.map_err(backend)?.1)?.entry))
            .collect()
    }

    fn lock_audit_head(&self) -> MutexGuard<'_, AuditHead> {
        self.audit_head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the next audit entry goes: after the last one stored, else where the
    /// checkpoint says the kept log starts, else at the start.
    fn read_audit_head(&self) -> StoreResult<AuditHead> {
        if let Some((_, last)) = self.audit.last().map_err(backend)? {
            let last: AuditEntry = decode(&last)?;
            return Ok(AuditHead {
                next_seq: last.seq + 1,
                prev_hash: last.hash,
                last_at_ms: last.at_ms,
            });
        }
        let checkpoint: Option<AuditCheckpoint> = get(&self.meta, AUDIT_CHECKPOINT.as_bytes())?;
        Ok(match checkpoint {
            Some(c) => AuditHead {
                next_seq: c.first_seq,
                prev_hash: c.prev_hash,
                last_at_ms: 0,
            },
            None => AuditHead {
                next_seq: 1,
                prev_hash: GENESIS.to_string(),
                last_at_ms: 0,
            },
        })
    }

    fn lock_books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make sure the records that the ledger entry under `key` committed are stored, and
    /// no older than it left them; returns how many were rewritten.
    fn redo(&self, key: &[u8], order: &Order, esims: &[EsimRecord]) -> StoreResult<usize> {
        let mut n = 0;
        let pointer = commit_pointer(key);
        let behind = match self.orders.get(order.id.to_bytes()).map_err(backend)? {
            None => true,
            Some(stored) if stored == pointer => false,
            Some(stored) => progress(self.stored_order(&stored)?.status) < progress(order.status),
        };
        for esim in esims {
            if behind || !self.esims.contains_key(&esim.iccid).map_err(backend)? {
                self.esims
                    .insert(esim.iccid.as_bytes(), pointer.as_slice())
                    .map_err(backend)?;
                n += 1;
            }
        }
        if behind {
            self.point_at_commit(order, &[], &pointer)?;
            n += 1;
        }
        Ok(n)
    }

    /// Move a job's `jobs_due` entry from where `old` had it to where `new` has it. The
    /// index is rebuilt from `jobs` on open, so an entry a crash left missing or stale is
    /// mended then (and a stale one is dropped by the claim that meets it).
    fn index_job(&self, old: Option<&Job>, new: Option<&Job>) -> StoreResult<()> {
        let (old, new) = (old.and_then(due_entry), new.and_then(due_entry));
        if old != new {
            if let Some(old) = old {
                self.jobs_due.remove(old).map_err(backend)?;
            }
            if let Some(new) = new {
                self.jobs_due.insert(new, &[]).map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Walk one reseller's ledger oldest first from where the last run stopped, purging
    /// what each entry older than `cutoff_ms` committed, up to `limit` entries; stops at
    /// the first entry whose order is still open or changed since the cutoff (it is
    /// purged once it has aged too). Per entry, in an order a crash cannot hurt: the
    /// order and its eSIMs go, then the events its commit record raised, then the record
    /// is rewritten as the bare entry, then the cursor moves. A crash before the rewrite
    /// lets the open-time replay write the order back; the next run purges it again.
    fn purge_ledger_of(&self, reseller: &[u8], cutoff_ms: u64, limit: usize) -> StoreResult<usize> {
        let cursor_key = cat(b"retention/ledger/", reseller);
        let start = match self.meta.get(&cursor_key).map_err(backend)? {
            // Just after the last entry done.
            Some(done) => cat(&done, &[0]),
            None => reseller.to_vec(),
        };
        let end = cat(reseller, &[0xff; 16]);
        let mut looked = 0;
        for kv in self.ledger.range(start..=end) {
            if looked == limit {
                break;
            }
            let (key, value) = kv.map_err(backend)?;
            let record: LedgerRecord = decode(&value)?;
            if record.entry.created_at_ms >= cutoff_ms {
                break;
            }
            if let Some(id) = record.entry.order
                && let Some(order) = self.read_order(id)?
            {
                if !order.status.is_final() || order.updated_at_ms >= cutoff_ms {
                    break;
                }
                self.forget_order(&order)?;
            }
            for event in &record.commits_events {
                self.outbox.remove(event.id.to_bytes()).map_err(backend)?;
                self.events.remove(event_key(event)).map_err(backend)?;
            }
            if record.commits_order.is_some()
                || !record.commits_esims.is_empty()
                || !record.commits_events.is_empty()
            {
                let bare = LedgerRecordRef {
                    entry: &record.entry,
                    commits_order: None,
                    commits_esims: &[],
                    commits_events: &[],
                };
                self.ledger.insert(&key, encode(&bare)).map_err(backend)?;
            }
            self.meta
                .insert(&cursor_key, key.as_ref())
                .map_err(backend)?;
            looked += 1;
        }
        Ok(looked)
    }

    /// Delete a final order, its eSIMs and its subject index entry.
    fn forget_order(&self, order: &Order) -> StoreResult<()> {
        for iccid in &order.iccids {
            let Some(stored) = self.esims.get(iccid).map_err(backend)? else {
                continue;
            };
            // Only what this order owns (a top-up names another order's eSIM).
            if self.owner_of(iccid, &stored).ok().map(|(o, _)| o) == Some(order.id) {
                self.esims.remove(iccid.as_bytes()).map_err(backend)?;
            }
        }
        if let Some(subject) = order.personal.as_ref().and_then(|p| p.subject) {
            let key = [
                &order.reseller.to_bytes()[..],
                &subject.0,
                &order.id.to_bytes(),
            ]
            .concat();
            self.subject_orders.remove(key).map_err(backend)?;
        }
        self.orders.remove(order.id.to_bytes()).map_err(backend)?;
        self.lock_unwritten().remove(&order.id);
        Ok(())
    }

    /// Rebuild `jobs_due` from `jobs`, voiding every lease: sled lets one process open
    /// the database at a time, so a lease found on open was taken by a process that is
    /// gone (killed mid-step), and its job must not wait the lease out before it runs
    /// again (an order's money would stay held for the whole lease).
    fn reindex_jobs(&self) -> StoreResult<usize> {
        self.jobs_due.clear().map_err(backend)?;
        let mut voided = 0;
        for kv in self.jobs.iter() {
            let (key, value) = kv.map_err(backend)?;
            let mut job: Job = decode(&value)?;
            if job.lease_until_ms > 0 {
                job.lease_until_ms = 0;
                job.owner = None;
                put(&self.jobs, &key, &job)?;
                voided += 1;
            }
            self.index_job(None, Some(&job))?;
        }
        Ok(voided)
    }

    /// Write what a change carries, each record in full: the order (unless the stored one
    /// is further along), the eSIMs, the endpoints, and the events (outbox entry, then
    /// index).
    fn apply_change(&self, change: &JournalRef<'_>) -> StoreResult<()> {
        if let Some(order) = change.order {
            let behind = match self.orders.get(order.id.to_bytes()).map_err(backend)? {
                None => true,
                Some(stored) => {
                    progress(self.stored_order(&stored)?.status) <= progress(order.status)
                }
            };
            if behind {
                self.write_order(order)?;
            }
        }
        for esim in change.esims {
            put(&self.esims, esim.iccid.as_bytes(), esim)?;
        }
        for endpoint in change.endpoints {
            put(
                &self.endpoints,
                &cat(&endpoint.reseller.to_bytes(), &endpoint.id.to_bytes()),
                endpoint,
            )?;
        }
        for event in change.events {
            self.outbox
                .insert(event.id.to_bytes(), &event.reseller.to_bytes())
                .map_err(backend)?;
            put(&self.events, &event_key(event), event)?;
        }
        Ok(())
    }

    /// Apply every change a crash left journaled; returns how many.
    fn replay_journal(&self) -> StoreResult<usize> {
        let mut n = 0;
        for kv in self.journal.iter() {
            let (key, record) = kv.map_err(backend)?;
            let change: Journaled = decode(&record)?;
            self.apply_change(&change.borrowed())?;
            self.journal.remove(key).map_err(backend)?;
            n += 1;
        }
        Ok(n)
    }

    /// Index every event of the commit record under `key` that a crash kept from being
    /// indexed; returns how many.
    fn redo_events(&self, key: &[u8], events: &[Event]) -> StoreResult<usize> {
        let mut missing = Vec::new();
        for event in events {
            if !self
                .events
                .contains_key(event_key(event))
                .map_err(backend)?
            {
                missing.push(event.clone());
            }
        }
        self.point_events_at_commit(&missing, &commit_pointer(key))?;
        Ok(missing.len())
    }

    /// Put `events` in the outbox and index them under the commit record behind
    /// `pointer`. The outbox entry comes first: an indexed event is never left out of it
    /// (replay re-indexes an event whose index entry is missing, outbox entry and all).
    fn point_events_at_commit(&self, events: &[Event], pointer: &[u8]) -> StoreResult<()> {
        for event in events {
            self.outbox
                .insert(event.id.to_bytes(), &event.reseller.to_bytes())
                .map_err(backend)?;
            self.events
                .insert(event_key(event), pointer)
                .map_err(backend)?;
        }
        Ok(())
    }

    /// An event as indexed: in full (raised by a change), or in the commit record it
    /// points at.
    fn stored_event(&self, id: EventId, stored: &[u8]) -> StoreResult<Event> {
        let Some(key) = stored.strip_prefix(&[COMMITTED]) else {
            return decode(stored);
        };
        self.commits(key)?
            .and_then(|c| c.commits_events.into_iter().find(|e| e.id == id))
            .ok_or_else(|| dangling("an event"))
    }

    /// Store `order` and `esims` as the commit record behind `pointer` carries them.
    fn point_at_commit(
        &self,
        order: &Order,
        esims: &[EsimRecord],
        pointer: &[u8],
    ) -> StoreResult<()> {
        for esim in esims {
            self.esims
                .insert(esim.iccid.as_bytes(), pointer)
                .map_err(backend)?;
        }
        self.orders
            .insert(order.id.to_bytes(), pointer)
            .map_err(backend)?;
        self.lock_unwritten().remove(&order.id);
        Ok(())
    }

    /// Write an order in full.
    fn write_order(&self, order: &Order) -> StoreResult<()> {
        put(&self.orders, &order.id.to_bytes(), order)?;
        self.lock_unwritten().remove(&order.id);
        Ok(())
    }

    /// What a commit record carries.
    fn commits(&self, ledger_key: &[u8]) -> StoreResult<Option<Commits>> {
        self.ledger
            .get(ledger_key)
            .map_err(backend)?
            .map(|b| decode(&b))
            .transpose()
    }

    /// An order as stored in `orders`: in full, or behind a commit pointer; with the
    /// eSIMs that commit record carries (none for an order stored in full).
    fn stored_order_with_commit(&self, stored: &[u8]) -> StoreResult<(Order, Vec<EsimRecord>)> {
        match stored.split_first() {
            Some((&COMMITTED, key)) => {
                let c = self.commits(key)?.ok_or_else(|| dangling("an order"))?;
                let order = c.commits_order.ok_or_else(|| dangling("an order"))?;
                Ok((order, c.commits_esims))
            }
            _ => Ok((decode(stored)?, Vec::new())),
        }
    }

    /// An order as stored in `orders`.
    fn stored_order(&self, stored: &[u8]) -> StoreResult<Order> {
        Ok(self.stored_order_with_commit(stored)?.0)
    }

    /// An eSIM as stored in `esims`: in full, or behind a commit pointer; `None` for a
    /// claim (its settlement is not written yet).
    fn stored_esim(&self, iccid: &str, stored: &[u8]) -> StoreResult<Option<EsimRecord>> {
        match stored.split_first() {
            Some((&COMMITTED, key)) => self
                .commits(key)?
                .and_then(|c| c.commits_esims.into_iter().find(|e| e.iccid == iccid))
                .map(Some)
                .ok_or_else(|| dangling("an eSIM")),
            Some((&CLAIMED, _)) => Ok(None),
            _ => decode(stored).map(Some),
        }
    }

    /// The order that owns the ICCID stored as `stored`, and whether only by a claim.
    fn owner_of(&self, iccid: &str, stored: &[u8]) -> StoreResult<(OrderId, bool)> {
        if let Some(order) = claimant(stored) {
            return Ok((order, true));
        }
        let esim = self
            .stored_esim(iccid, stored)?
            .ok_or_else(|| dangling("an eSIM"))?;
        Ok((esim.order, false))
    }

    /// Whether a claim by `order` on `iccid` was left behind: its order is gone, or final
    /// without the ICCID (a crash cut its settlement short, and a retry delivered others).
    fn claim_is_stale(&self, order: OrderId, iccid: &str) -> StoreResult<bool> {
        Ok(match self.read_order(order)? {
            None => true,
            Some(o) => o.status.is_final() && !o.iccids.iter().any(|i| i == iccid),
        })
    }

    /// Claim every ICCID of `esims` for `order` (see the module docs). On a conflict, the
    /// claims this call made are withdrawn and the owner is named.
    fn claim_iccids(
        &self,
        order: OrderId,
        esims: &[EsimRecord],
    ) -> StoreResult<Result<(), IccidTaken>> {
        let claim = iccid_claim(order);
        let mut made: Vec<&str> = Vec::new();
        let mut outcome = Ok(());
        'esims: for esim in esims {
            let key = esim.iccid.as_bytes();
            let mut current = self.esims.get(key).map_err(backend)?;
            loop {
                if let Some(stored) = &current {
                    let (owner, only_claimed) = self.owner_of(&esim.iccid, stored)?;
                    if owner == order {
                        continue 'esims;
                    }
                    if !only_claimed || !self.claim_is_stale(owner, &esim.iccid)? {
                        outcome = Err(IccidTaken {
                            iccid: esim.iccid.clone(),
                            owner,
                        });
                        break 'esims;
                    }
                }
                match self
                    .esims
                    .compare_and_swap(key, current.as_ref(), Some(claim.as_slice()))
                    .map_err(backend)?
                {
                    Ok(()) => {
                        made.push(&esim.iccid);
                        continue 'esims;
                    }
                    Err(e) => current = e.current,
                }
            }
        }
        if outcome.is_err() {
            self.withdraw_claims(order, made.into_iter())?;
        }
        Ok(outcome)
    }

    /// Withdraw the claims `order` holds on `iccids` (an eSIM stored in full or behind
    /// a commit pointer is left as it is).
    fn withdraw_claims<'a>(
        &self,
        order: OrderId,
        iccids: impl Iterator<Item = &'a str>,
    ) -> StoreResult<()> {
        let claim = iccid_claim(order);
        for iccid in iccids {
            self.esims
                .compare_and_swap(iccid.as_bytes(), Some(claim.as_slice()), None::<&[u8]>)
                .map_err(backend)?
                .ok();
        }
        Ok(())
    }

    /// An order, written or still only in its hold's commit record.
    fn read_order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        match self.orders.get(id.to_bytes()).map_err(backend)? {
            Some(stored) => self.stored_order(&stored).map(Some),
            None => Ok(self.lock_unwritten().get(&id).cloned()),
        }
    }

    /// An order with its eSIMs (see [`Store::order_and_esims`]).
    fn read_order_and_esims(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<EsimRecord>)>> {
        let Some(stored) = self.orders.get(id.to_bytes()).map_err(backend)? else {
            return Ok(self
                .lock_unwritten()
                .get(&id)
                .map(|o| (o.clone(), Vec::new())));
        };
        // An order settled with its eSIMs points at the commit record that holds them
        // all: read it once.
        let (order, mut committed) = self.stored_order_with_commit(&stored)?;
        let mut esims = Vec::with_capacity(order.iccids.len());
        for iccid in &order.iccids {
            let Some(stored_esim) = self.esims.get(iccid).map_err(backend)? else {
                continue;
            };
            let same_commit = stored_esim == stored;
            match committed
                .iter()
                .position(|e| same_commit && e.iccid == *iccid)
            {
                Some(i) => esims.push(committed.swap_remove(i)),
                None => esims.extend(self.stored_esim(iccid, &stored_esim)?),
            }
        }
        Ok(Some((order, esims)))
    }

    /// A commit that moves money: its ledger entry's record carries everything else.
    fn commit_money(
        &self,
        entry: &LedgerEntry,
        commit: &Commit,
    ) -> StoreResult<Result<Balance, Rejected>> {
        // Held until the records the entry commits are written: a checkpoint that holds
        // the entry is taken after them.
        let gate = self.open_gate()?;
        let esims = commit.esims();
        let pointer = commit_pointer(&ledger_key(entry));
        let Some(order) = commit.order() else {
            let (balance, events) = match self.post(&gate, entry, None, &[], commit)? {
                Ok(posted) => posted,
                Err(refused) => return Ok(Err(refused.into())),
            };
            self.point_events_at_commit(&events, &pointer)?;
            return Ok(Ok(balance));
        };
        if entry.kind == EntryKind::Hold {
            // `Commit::accept`: the hold has the order's id, which lists the order.
            debug_assert_eq!(entry.id, order.id.0);
            // Visible before the hold: a replay that finds the claim's order must read it.
            self.lock_unwritten().insert(order.id, order.clone());
            let posted = self.post(&gate, entry, Some(order), &[], commit);
            if !matches!(posted, Ok(Ok(_))) {
                self.lock_unwritten().remove(&order.id);
            }
            let (balance, events) = match posted? {
                Ok(posted) => posted,
                Err(refused) => return Ok(Err(refused.into())),
            };
            self.point_events_at_commit(&events, &pointer)?;
            return Ok(Ok(balance));
        }
        if let Err(taken) = self.claim_iccids(order.id, esims)? {
            return Ok(Err(taken.into()));
        }
        let posted = self.post(&gate, entry, Some(order), esims, commit);
        if !matches!(posted, Ok(Ok(_))) {
            self.withdraw_claims(order.id, esims.iter().map(|e| e.iccid.as_str()))?;
        }
        let (balance, events) = match posted? {
            Ok(posted) => posted,
            Err(refused) => return Ok(Err(refused.into())),
        };
        // The commit record now holds the order, its eSIMs and events: point at it.
        self.point_events_at_commit(&events, &pointer)?;
        self.point_at_commit(order, esims, &pointer)?;
        Ok(Ok(balance))
    }

    /// A commit that moves no money: journaled as one record, applied, then forgotten; a
    /// journal record a crash left behind is applied again on open.
    fn commit_change(&self, commit: &Commit) -> StoreResult<Result<(), Rejected>> {
        for esim in commit.esims() {
            let owner = match self.esims.get(&esim.iccid).map_err(backend)? {
                Some(stored) => self.owner_of(&esim.iccid, &stored)?.0,
                None => {
                    return Err(StoreError::Backend(format!(
                        "a change may only update an eSIM already delivered; {} is not",
                        esim.iccid
                    )));
                }
            };
            if owner != esim.order {
                return Ok(Err(IccidTaken {
                    iccid: esim.iccid.clone(),
                    owner,
                }
                .into()));
            }
        }
        let gate = self.open_gate()?;
        let key = Ulid::new().to_bytes();
        let change = JournalRef {
            order: commit.order(),
            esims: commit.esims(),
            events: commit.events(),
            endpoints: commit.endpoints(),
        };
        self.journal.insert(key, encode(&change)).map_err(backend)?;
        self.apply_change(&change)?;
        self.journal.remove(key).map_err(backend)?;
        drop(gate);
        Ok(Ok(()))
    }

    fn lock_unwritten(&self) -> MutexGuard<'_, HashMap<OrderId, Order>> {
        self.unwritten.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn order_exists(&self, id: OrderId) -> StoreResult<bool> {
        Ok(self.orders.contains_key(id.to_bytes()).map_err(backend)?
            || self.lock_unwritten().contains_key(&id))
    }

    /// Whether what an idempotent request of `reseller` creates under id `id` exists: an
    /// order, or a ledger entry of that id (a credit; an order's hold has its id too) in
    /// either of its accounts (an admin's credit under the reseller's key may go to its
    /// test account).
    fn created(&self, reseller: ResellerId, id: OrderId) -> StoreResult<bool> {
        if self.order_exists(id)? {
            return Ok(true);
        }
        for mode in [KeyMode::Live, KeyMode::Test] {
            let key = cat(&mode.account(reseller).to_bytes(), &id.to_bytes());
            if self.ledger.contains_key(key).map_err(backend)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Check `entry` against the balance, write it with what it commits, and update the
    /// books. The check and the in-memory update are one step under the books lock, so
    /// holds never overdraw; the write happens after it, so orders do not queue behind
    /// each other's disk work. That is safe because every subset of written entries in
    /// which each capture or release follows its hold keeps every balance covered, and a
    /// capture or release is only posted once its hold is written.
    ///
    /// The entry is noted under the current epoch before it is written (both under the
    /// caller's `_gate`), so a checkpoint either holds it or opening reads it.
    fn post(
        &self,
        _gate: &RwLockReadGuard<'_, bool>,
        entry: &LedgerEntry,
        order: Option<&Order>,
        esims: &[EsimRecord],
        commit: &Commit,
    ) -> StoreResult<Result<(Balance, Vec<Event>), Refused>> {
        let (before, after) = match self.lock_books().post(entry) {
            Ok(counted) => counted,
            Err(refused) => return Ok(Err(refused)),
        };
        // The balance this entry leaves decides whether it raises `balance.low`; the
        // record is encoded once that is known (outside the books lock).
        let events = commit.events_posted(before, after);
        let record = encode(&LedgerRecordRef {
            entry,
            commits_order: order,
            commits_esims: esims,
            commits_events: &events,
        });
        let key = ledger_key(entry);
        let note = cat(&self.epoch.load(Ordering::Relaxed).to_be_bytes(), &key);
        let written = self
            .ledger_since
            .insert(note, &[])
            .and_then(|_| self.ledger.insert(key, record));
        if let Err(e) = written {
            // The entry was not written: take it back out of the books.
            self.lock_books().withdraw(entry, before, after);
            return Err(backend(e));
        }
        let policy = *self.policy.lock().unwrap_or_else(|p| p.into_inner());
        if self.since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1 == policy.every_entries {
            self.checkpoint_due.notify_one();
        }
        Ok(Ok((after, events)))
    }

    /// The gate, shared, unless the store is closed.
    fn open_gate(&self) -> StoreResult<RwLockReadGuard<'_, bool>> {
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if *gate {
            return Err(StoreError::Backend("the store is closed".into()));
        }
        Ok(gate)
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>> {
        read_through(&self.resellers_seen, id, &self.resellers, &id.to_bytes())
    }

    async fn resellers(&self) -> StoreResult<Vec<Reseller>> {
        self.resellers
            .iter()
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }

    async fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()> {
        write_through(
            &self.resellers_seen,
            reseller.id,
            &self.resellers,
            &reseller.id.to_bytes(),
            reseller,
        )
    }

    async fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>> {
        read_through(&self.keys_seen, hash.0, &self.api_keys, &hash.0)
    }

    async fn api_key_by_id(&self, id: KeyId) -> StoreResult<Option<ApiKey>> {
        match self.api_key_ids.get(id.to_bytes()).map_err(backend)? {
            Some(hash) => get(&self.api_keys, &hash),
            None => Ok(None),
        }
    }

    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        write_through(
            &self.keys_seen,
            key.hash.0,
            &self.api_keys,
            &key.hash.0,
            key,
        )?;
        self.api_key_ids
            .insert(key.id.to_bytes(), &key.hash.0)
            .map_err(backend)?;
        Ok(())
    }

    async fn order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        self.read_order(id)
    }

    async fn order_and_esims(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<EsimRecord>)>> {
        self.read_order_and_esims(id)
    }

    async fn orders_page(
        &self,
        reseller: ResellerId,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> StoreResult<Page<(Order, Vec<EsimRecord>)>> {
        // The reseller's ledger, newest first; each order's hold entry carries its id.
        let (start, end) = newest_first_range(reseller, before.map(|b| b.to_bytes()));
        let orders = self.ledger.range(start..end).rev().map(|kv| {
            let rec: LedgerRecord = decode(&kv.map_err(backend)?.1)?;
            let e = rec.entry;
            let Some(id) = e
                .order
                .filter(|id| e.kind == EntryKind::Hold && id.0 == e.id)
            else {
                return Ok(None);
            };
            let order = self.read_order_and_esims(id)?;
            Ok(order.filter(|(o, _)| status.is_none_or(|s| s == o.status)))
        });
        take_page(orders, limit)
    }

    async fn open_orders(&self) -> StoreResult<Vec<Order>> {
        let open: Vec<OrderId> = self.lock_books().open_orders().collect();
        let mut out = Vec::with_capacity(open.len());
        for id in open {
            if let Some(o) = self.read_order(id)?.filter(|o| !o.status.is_final()) {
                out.push(o);
            }
        }
        Ok(out)
    }

    async fn put_order(&self, order: &Order) -> StoreResult<()> {
        self.write_order(order)
    }

    async fn commit(&self, commit: &Commit) -> StoreResult<Result<Option<Balance>, Rejected>> {
        match commit.entry() {
            Some(entry) => Ok(self.commit_money(entry, commit)?.map(Some)),
            None => Ok(self.commit_change(commit)?.map(|()| None)),
        }
    }

    async fn events_page(
        &self,
        reseller: ResellerId,
        before: Option<EventId>,
        kind: Option<EventType>,
        limit: usize,
    ) -> StoreResult<Page<Event>> {
        let (start, end) = newest_first_range(reseller, before.map(|b| b.to_bytes()));
        let events = self.events.range(start..end).rev().map(|kv| {
            let (k, stored) = kv.map_err(backend)?;
            let id = EventId::from_bytes(k[16..].try_into().map_err(|_| dangling("an event"))?);
            let event = self.stored_event(id, &stored)?;
            Ok(Some(event).filter(|e| kind.is_none_or(|t| t == e.kind)))
        });
        take_page(events, limit)
    }

    async fn event(&self, reseller: ResellerId, id: EventId) -> StoreResult<Option<Event>> {
        match self
            .events
            .get(cat(&reseller.to_bytes(), &id.to_bytes()))
            .map_err(backend)?
        {
            Some(stored) => self.stored_event(id, &stored).map(Some),
            None => Ok(None),
        }
    }

    async fn outbox(&self, limit: usize) -> StoreResult<Vec<Event>> {
        let mut out = Vec::new();
        for kv in self.outbox.iter() {
            if out.len() == limit {
                break;
            }
            let (id, reseller) = kv.map_err(backend)?;
            let key = cat(&reseller, &id);
            // Indexed right after its outbox entry: one not indexed yet is taken next time.
            if let Some(stored) = self.events.get(&key).map_err(backend)? {
                let id =
                    EventId::from_bytes(id.as_ref().try_into().map_err(|_| dangling("an event"))?);
                out.push(self.stored_event(id, &stored)?);
            }
        }
        Ok(out)
    }

    async fn dispatched(&self, events: &[Event]) -> StoreResult<()> {
        for event in events {
            self.outbox.remove(event.id.to_bytes()).map_err(backend)?;
        }
        Ok(())
    }

    async fn put_endpoint(&self, endpoint: &Endpoint) -> StoreResult<()> {
        put(
            &self.endpoints,
            &cat(&endpoint.reseller.to_bytes(), &endpoint.id.to_bytes()),
            endpoint,
        )
    }

    async fn endpoint(
        &self,
        reseller: ResellerId,
        id: EndpointId,
    ) -> StoreResult<Option<Endpoint>> {
        get(&self.endpoints, &cat(&reseller.to_bytes(), &id.to_bytes()))
    }

    async fn endpoints(&self, reseller: ResellerId) -> StoreResult<Vec<Endpoint>> {
        self.endpoints
            .scan_prefix(reseller.to_bytes())
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }

    async fn delete_endpoint(&self, reseller: ResellerId, id: EndpointId) -> StoreResult<bool> {
        let removed = self
            .endpoints
            .remove(cat(&reseller.to_bytes(), &id.to_bytes()))
            .map_err(backend)?;
        Ok(removed.is_some())
    }

    async fn put_attempt(&self, attempt: &Attempt) -> StoreResult<()> {
        // The time index first: an attempt is never left where retention cannot find it.
        let by_time = [
            &attempt.at_ms.to_be_bytes()[..],
            &attempt.endpoint.to_bytes(),
            &attempt.id.to_bytes(),
        ]
        .concat();
        self.attempts_by_time
            .insert(by_time, &[])
            .map_err(backend)?;
        put(
            &self.attempts,
            &cat(&attempt.endpoint.to_bytes(), &attempt.id.to_bytes()),
            attempt,
        )
    }

    async fn expire_attempts(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize> {
        let mut n = 0;
        let cutoff = cutoff_ms.to_be_bytes();
        for key in self
            .attempts_by_time
            .range(..cutoff.as_slice())
            .keys()
            .take(limit)
        {
            let key = key.map_err(backend)?;
            self.attempts.remove(&key[8..]).map_err(backend)?;
            self.attempts_by_time.remove(&key).map_err(backend)?;
            n += 1;
        }
        Ok(n)
    }

    async fn attempts_page(
        &self,
        reseller: ResellerId,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: usize,
    ) -> StoreResult<Page<Attempt>> {
        let prefix = endpoint.to_bytes();
        let end = cat(&prefix, &before.map_or([0xff; 16], |b| b.to_bytes()));
        let attempts = self.attempts.range(prefix.to_vec()..end).rev().map(|kv| {
            let attempt: Attempt = decode(&kv.map_err(backend)?.1)?;
            Ok(Some(attempt).filter(|a| a.reseller == reseller))
        });
        take_page(attempts, limit)
    }

    async fn balance(&self, reseller: ResellerId, currency: &str) -> StoreResult<Balance> {
        Ok(self.lock_books().balance(reseller, currency))
    }

    async fn balances(&self, reseller: ResellerId) -> StoreResult<Vec<(String, Balance)>> {
        Ok(self.lock_books().balances_of(reseller))
    }

    async fn ledger_entry(
        &self,
        reseller: ResellerId,
        id: Ulid,
    ) -> StoreResult<Option<LedgerEntry>> {
        self.ledger
            .get(cat(&reseller.to_bytes(), &id.to_bytes()))
            .map_err(backend)?
            .map(|v| Ok(decode::<LedgerRecord>(&v)?.entry))
            .transpose()
    }

    async fn ledger_page(
        &self,
        reseller: ResellerId,
        before: Option<Ulid>,
        limit: usize,
    ) -> StoreResult<Page<LedgerEntry>> {
        let (start, end) = newest_first_range(reseller, before.map(|b| b.to_bytes()));
        let entries = self
            .ledger
            .range(start..end)
            .rev()
            .map(|kv| Ok(Some(decode::<LedgerRecord>(&kv.map_err(backend)?.1)?.entry)));
        take_page(entries, limit)
    }

    async fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>> {
        self.esims
            .get(iccid.as_bytes())
            .map_err(backend)?
            .map(|stored| self.stored_esim(iccid, &stored))
            .transpose()
            .map(Option::flatten)
    }

    async fn claim_idempotency(
        &self,
        key: &IdemKey,
        fingerprint: &[u8; 32],
        now_ms: u64,
    ) -> StoreResult<Claim> {
        let k = key.storage_key();
        let claim = IdemRecord::claim(key, fingerprint, now_ms);
        let claim = encode_idem(&claim);
        // Most keys are new: try to take the key outright before reading anything.
        let mut current = match self
            .idempotency
            .compare_and_swap(&k, None::<&[u8]>, Some(claim.as_slice()))
            .map_err(backend)?
        {
            Ok(()) => return Ok(Claim::New),
            Err(e) => e.current,
        };
        loop {
            let mut existing: Option<IdemRecord> =
                current.as_ref().and_then(|b| decode_idem(b).ok());
            if let Some(rec) = &mut existing
                && let IdemState::InProgress {
                    order: Some(order), ..
                } = rec.state
                && self.created(key.reseller, order)?
            {
                // The first request created its order (or posted its credit): that is the
                // answer now.
                rec.state = IdemState::Order { order };
            }
            let judged = idempotency::judge(existing.as_ref(), fingerprint, now_ms);
            if judged != Claim::New {
                return Ok(judged);
            }
            // Compare-and-swap: of two requests racing for one key, exactly one wins.
            match self
                .idempotency
                .compare_and_swap(&k, current, Some(claim.as_slice()))
                .map_err(backend)?
            {
                Ok(()) => return Ok(Claim::New),
                Err(e) => current = e.current,
            }
        }
    }

    async fn finish_idempotency(&self, key: &IdemKey, state: &IdemState) -> StoreResult<()> {
        let k = key.storage_key();
        if let Some(stored) = self.idempotency.get(&k).map_err(backend)? {
            let mut rec = decode_idem(&stored)?;
            rec.state = state.clone();
            self.idempotency
                .insert(k, encode_idem(&rec))
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn release_idempotency(&self, key: &IdemKey) -> StoreResult<()> {
        self.idempotency
            .remove(key.storage_key())
            .map_err(backend)?;
        Ok(())
    }

    async fn expire_idempotency(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let mut expired = 0;
        for kv in self.idempotency.iter() {
            let (k, v) = kv.map_err(backend)?;
            let Ok(rec) = decode_idem(&v) else {
                continue;
            };
            let finished = match rec.state {
                // Bound to its order once the order exists.
                IdemState::InProgress { order, .. } => match order {
                    Some(id) => self.order_exists(id)?,
                    None => false,
                },
                IdemState::Order { .. } => true,
            };
            // Compare-and-swap: a record rewritten meanwhile is left alone.
            if finished
                && rec.created_at_ms < cutoff_ms
                && self
                    .idempotency
                    .compare_and_swap(&k, Some(&v), None::<&[u8]>)
                    .map_err(backend)?
                    .is_ok()
            {
                expired += 1;
            }
        }
        Ok(expired)
    }

    async fn subject_key(&self, lookup: &SubjectLookup) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .subject_keys
            .get(lookup.0)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    async fn create_subject_key(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
    ) -> StoreResult<Vec<u8>> {
        match self
            .subject_keys
            .compare_and_swap(lookup.0, None::<&[u8]>, Some(wrapped))
            .map_err(backend)?
        {
            Ok(()) => Ok(wrapped.to_vec()),
            Err(lost) => lost
                .current
                .map(|v| v.to_vec())
                .ok_or_else(|| StoreError::Backend("a subject key vanished".into())),
        }
    }

    async fn index_subject_order(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        order: OrderId,
    ) -> StoreResult<()> {
        let key = [&reseller.to_bytes()[..], &subject.0, &order.to_bytes()].concat();
        self.subject_orders.insert(key, &[]).map_err(backend)?;
        Ok(())
    }

    async fn subject_orders(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        limit: usize,
    ) -> StoreResult<Vec<OrderId>> {
        self.subject_orders
            .scan_prefix(cat(&reseller.to_bytes(), &subject.0))
            .keys()
            .take(limit)
            .map(|k| {
                let k = k.map_err(backend)?;
                let id: [u8; 16] = k[k.len() - 16..].try_into().expect("16 bytes");
                Ok(OrderId::from_bytes(id))
            })
            .collect()
    }

    async fn destroy_subject_key(&self, lookup: &SubjectLookup) -> StoreResult<bool> {
        Ok(self
            .subject_keys
            .remove(lookup.0)
            .map_err(backend)?
            .is_some())
    }

    async fn restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
    ) -> StoreResult<Option<Restriction>> {
        get(&self.restrictions, &cat(&reseller.to_bytes(), &subject.0))
    }

    async fn set_restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        restriction: Option<&Restriction>,
    ) -> StoreResult<()> {
        let key = cat(&reseller.to_bytes(), &subject.0);
        match restriction {
            Some(r) => put(&self.restrictions, &key, r),
            None => {
                self.restrictions.remove(key).map_err(backend)?;
                Ok(())
            }
        }
    }

    async fn purge_transactions(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize> {
        let mut looked = 0;
        for reseller in self.resellers.iter().keys() {
            let reseller = reseller.map_err(backend)?;
            looked += self.purge_ledger_of(&reseller, cutoff_ms, limit - looked)?;
            if looked == limit {
                return Ok(looked);
            }
        }
        // Orders of accounts already deleted have no ledger left to lead to them: walk
        // the orders themselves, oldest first, from where the last run stopped.
        let cursor_key = b"retention/orders".as_slice();
        let start = match self.meta.get(cursor_key).map_err(backend)? {
            Some(done) => cat(&done, &[0]),
            None => Vec::new(),
        };
        for kv in self.orders.range(start..) {
            if looked == limit {
                break;
            }
            let (key, stored) = kv.map_err(backend)?;
            let order = self.stored_order(&stored)?;
            if order.created_at_ms >= cutoff_ms {
                break;
            }
            if !self
                .resellers
                .contains_key(order.reseller.to_bytes())
                .map_err(backend)?
            {
                if order.updated_at_ms >= cutoff_ms {
                    break;
                }
                self.forget_order(&order)?;
            }
            self.meta
                .insert(cursor_key, key.as_ref())
                .map_err(backend)?;
            looked += 1;
        }
        Ok(looked)
    }

    async fn forget_account(&self, reseller: ResellerId, limit: usize) -> StoreResult<usize> {
        let id = reseller.to_bytes();
        let mut left = limit;
        // Keys first: nothing can act for the account while the rest goes.
        let mut keys = Vec::new();
        for kv in self.api_keys.iter() {
            let (hash, value) = kv.map_err(backend)?;
            let key: ApiKey = decode(&value)?;
            if key.reseller == Some(reseller) {
                keys.push((hash, key.id));
            }
        }
        for (hash, key) in keys.into_iter().take(left) {
            self.api_key_ids.remove(key.to_bytes()).map_err(backend)?;
            self.api_keys.remove(&hash).map_err(backend)?;
            let hash: [u8; 32] = hash.as_ref().try_into().map_err(|_| dangling("a key"))?;
            self.keys_seen
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&hash);
            left -= 1;
        }
        // Endpoints, each after its attempts.
        for kv in self.endpoints.scan_prefix(id) {
            let (key, value) = kv.map_err(backend)?;
            let endpoint: Endpoint = decode(&value)?;
            for kv in self.attempts.scan_prefix(endpoint.id.to_bytes()) {
                if left == 0 {
                    return Ok(limit);
                }
                let (akey, avalue) = kv.map_err(backend)?;
                let attempt: Attempt = decode(&avalue)?;
                let by_time = [&attempt.at_ms.to_be_bytes()[..], &akey].concat();
                self.attempts_by_time.remove(by_time).map_err(backend)?;
                self.attempts.remove(&akey).map_err(backend)?;
                left -= 1;
            }
            if left == 0 {
                return Ok(limit);
            }
            self.endpoints.remove(&key).map_err(backend)?;
            left -= 1;
        }
        // Records kept only under the reseller's prefix.
        for tree in [
            &self.consents,
            &self.restrictions,
            &self.subject_orders,
            &self.idempotency,
        ] {
            for key in tree.scan_prefix(id).keys() {
                if left == 0 {
                    return Ok(limit);
                }
                tree.remove(key.map_err(backend)?).map_err(backend)?;
                left -= 1;
            }
        }
        for key in self.events.scan_prefix(id).keys() {
            if left == 0 {
                return Ok(limit);
            }
            let key = key.map_err(backend)?;
            self.outbox.remove(&key[16..]).map_err(backend)?;
            self.events.remove(&key).map_err(backend)?;
            left -= 1;
        }
        // The ledger newest first, so what a crash leaves is a prefix that still adds up.
        // What a commit record holds for an order or eSIM stored behind it is written out
        // in full before the record goes.
        for kv in self.ledger.scan_prefix(id).rev() {
            if left == 0 {
                return Ok(limit);
            }
            let (key, value) = kv.map_err(backend)?;
            let record: LedgerRecord = decode(&value)?;
            let pointer = commit_pointer(&key);
            if let Some(order) = &record.commits_order
                && self
                    .orders
                    .get(order.id.to_bytes())
                    .map_err(backend)?
                    .as_deref()
                    == Some(pointer.as_slice())
            {
                self.write_order(order)?;
            }
            for esim in &record.commits_esims {
                if self.esims.get(&esim.iccid).map_err(backend)?.as_deref()
                    == Some(pointer.as_slice())
                {
                    put(&self.esims, esim.iccid.as_bytes(), esim)?;
                }
            }
            self.ledger.remove(&key).map_err(backend)?;
            left -= 1;
        }
        self.lock_books().forget(reseller);
        if left == 0 {
            return Ok(limit);
        }
        if self.resellers.remove(id).map_err(backend)?.is_some() {
            left -= 1;
        }
        self.resellers_seen
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reseller);
        Ok(limit - left)
    }

    async fn append_requests(&self, records: &[RequestRecord]) -> StoreResult<()> {
        // One key per batch (the API logs every request: a write each would cost more than
        // many requests themselves), keyed by its newest record so that expiry can drop a
        // batch once its newest record is past the cutoff.
        let mut batch = records.to_vec();
        batch.sort_by_key(|r| r.id);
        let Some(newest) = batch.last() else {
            return Ok(());
        };
        let bytes = postcard::to_allocvec(&batch)
            .map_err(|e| StoreError::Backend(format!("encoding request records: {e}")))?;
        self.requests
            .insert(newest.id.to_bytes(), bytes)
            .map_err(backend)?;
        Ok(())
    }

    async fn requests_page(
        &self,
        before: Option<Ulid>,
        limit: usize,
    ) -> StoreResult<Page<RequestRecord>> {
        let mut items = Vec::with_capacity(limit);
        for kv in self.requests.iter().rev() {
            let batch: Vec<RequestRecord> = postcard::from_bytes(&kv.map_err(backend)?.1)
                .map_err(|e| StoreError::Decode(format!("request records: {e}")))?;
            for record in batch.into_iter().rev() {
                if before.is_some_and(|b| record.id >= b) {
                    continue;
                }
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        has_more: true,
                    });
                }
                items.push(record);
            }
        }
        Ok(Page {
            items,
            has_more: false,
        })
    }

    async fn expire_requests(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize> {
        // A batch goes once its newest record is past the cutoff: none of it is kept longer
        // than its period plus the batch's span (the writer flushes a batch within a second).
        let cutoff = Ulid::from_parts(cutoff_ms, 0).to_bytes();
        let mut n = 0;
        for kv in self.requests.range(..cutoff.as_slice()) {
            if n >= limit {
                break;
            }
            let (key, value) = kv.map_err(backend)?;
            let batch: Vec<RequestRecord> = postcard::from_bytes(&value)
                .map_err(|e| StoreError::Decode(format!("request records: {e}")))?;
            self.requests.remove(key).map_err(backend)?;
            n += batch.len();
        }
        Ok(n)
    }

    async fn put_consent(&self, event: &ConsentEvent) -> StoreResult<()> {
        let key = [
            &event.reseller.to_bytes()[..],
            &event.subject.0,
            &event.id.to_bytes(),
        ]
        .concat();
        put(&self.consents, &key, event)
    }

    async fn consents(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        limit: usize,
    ) -> StoreResult<Vec<ConsentEvent>> {
        self.consents
            .scan_prefix(cat(&reseller.to_bytes(), &subject.0))
            .take(limit)
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }

    async fn put_job(&self, job: &Job) -> StoreResult<()> {
        let old = self
            .jobs
            .insert(job.id.as_bytes(), encode(job))
            .map_err(backend)?;
        let old: Option<Job> = old.map(|v| decode(&v)).transpose()?;
        self.index_job(old.as_ref(), Some(job))
    }

    async fn add_job(&self, job: &Job) -> StoreResult<bool> {
        let added = self
            .jobs
            .compare_and_swap(job.id.as_bytes(), None::<&[u8]>, Some(encode(job)))
            .map_err(backend)?
            .is_ok();
        if added {
            self.index_job(None, Some(job))?;
        }
        Ok(added)
    }

    async fn hasten_job(&self, job: &Job) -> StoreResult<()> {
        loop {
            let stored = self.jobs.get(job.id.as_bytes()).map_err(backend)?;
            let (before, after) = match &stored {
                None => (None, job.clone()),
                Some(v) => {
                    let before: Job = decode(v)?;
                    if before.due_ms <= job.due_ms || before.lease_until_ms > job.due_ms {
                        return Ok(());
                    }
                    let after = Job {
                        due_ms: job.due_ms,
                        ..before.clone()
                    };
                    (Some(before), after)
                }
            };
            // Compare-and-swap against a claim or another change made meanwhile.
            if self
                .jobs
                .compare_and_swap(job.id.as_bytes(), stored, Some(encode(&after)))
                .map_err(backend)?
                .is_ok()
            {
                return self.index_job(before.as_ref(), Some(&after));
            }
        }
    }

    async fn jobs_with_prefix(&self, prefix: &str) -> StoreResult<Vec<Job>> {
        self.jobs
            .scan_prefix(prefix.as_bytes())
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }

    async fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        get(&self.jobs, id.as_bytes())
    }

    async fn claim_jobs(
        &self,
        run: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let mut claimed = Vec::new();
        // Only entries due by now: later jobs are never read.
        let upto = now_ms.saturating_add(1).to_be_bytes();
        for kv in self.jobs_due.range(..upto.as_slice()) {
            if claimed.len() == limit {
                break;
            }
            let (entry, _) = kv.map_err(backend)?;
            let Some(v) = self.jobs.get(&entry[8..]).map_err(backend)? else {
                // Its job was finished; the crash came before the entry went.
                self.jobs_due.remove(&entry).map_err(backend)?;
                continue;
            };
            let mut job: Job = decode(&v)?;
            if due_entry(&job).as_deref() != Some(&entry[..]) {
                // Stale: the job was rescheduled and indexed anew.
                self.jobs_due.remove(&entry).map_err(backend)?;
                continue;
            }
            // One process opens a sled store, and opening it voided every lease of the
            // runs before: every lease is this run's.
            if !job.claimable(now_ms, |_| true) {
                continue;
            }
            let before = job.clone();
            job = job.leased(run, now_ms.saturating_add(lease_ms));
            // Compare-and-swap: of two claimers, one leases the job.
            if self
                .jobs
                .compare_and_swap(job.id.as_bytes(), Some(&v), Some(encode(&job)))
                .map_err(backend)?
                .is_ok()
            {
                self.index_job(Some(&before), Some(&job))?;
                claimed.push(job);
            }
        }
        Ok(claimed)
    }

    async fn finish_job(&self, id: &str) -> StoreResult<()> {
        let old = self.jobs.remove(id.as_bytes()).map_err(backend)?;
        let old: Option<Job> = old.map(|v| decode(&v)).transpose()?;
        self.index_job(old.as_ref(), None)
    }

    async fn put_node(&self, node: &NodeRecord) -> StoreResult<()> {
        put(&self.nodes, node.id.as_bytes(), node)
    }

    async fn nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        self.nodes
            .iter()
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }

    async fn delete_node(&self, id: &str) -> StoreResult<bool> {
        Ok(self.nodes.remove(id.as_bytes()).map_err(backend)?.is_some())
    }

    async fn catalog(&self, plugin: &str) -> StoreResult<Option<CachedCatalog>> {
        get(&self.catalogs, plugin.as_bytes())
    }

    async fn put_catalog(&self, catalog: &CachedCatalog) -> StoreResult<()> {
        put(&self.catalogs, catalog.plugin.as_bytes(), catalog)
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.meta.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.meta.insert(key, value).map_err(backend)?;
        Ok(())
    }

    async fn first_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        match self
            .meta
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map_err(backend)?
        {
            Ok(()) => Ok(value.to_vec()),
            Err(kept) => Ok(kept.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    async fn durable(&self) -> StoreResult<()> {
        self.commit.wait().await.map_err(StoreError::Backend)
    }

    async fn close(&self) -> StoreResult<()> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let (checkpoint, unwritten) = {
            let mut closed = self.gate.write().unwrap_or_else(|p| p.into_inner());
            if *closed {
                return Ok(());
            }
            let taken = self.checkpoint_under(&closed);
            // No ledger write may follow the last checkpoint.
            *closed = true;
            taken
        };
        self.write_checkpoint(&checkpoint, &unwritten)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    async fn backup_to(&self, to: &Path) -> StoreResult<Option<BackupSummary>> {
        // Writes wait while it reads; on a runtime with other threads, this one is handed
        // over for the while so tasks that only read go on.
        let export = || self.export_to(to).map(Some);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(export),
            _ => export(),
        }
    }

    async fn append_audit(&self, at_ms: u64, entry: NewAuditEntry) -> StoreResult<AuditEntry> {
        let mut head = self.lock_audit_head();
        let entry = AuditEntry::chain(
            head.next_seq,
            at_ms.max(head.last_at_ms),
            entry,
            head.prev_hash.clone(),
        );
        put(&self.audit, &entry.seq.to_be_bytes(), &entry)?;
        *head = AuditHead {
            next_seq: entry.seq + 1,
            prev_hash: entry.hash.clone(),
            last_at_ms: entry.at_ms,
        };
        Ok(entry)
    }

    async fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Page<AuditEntry>> {
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        let mut items = Vec::new();
        for kv in self.audit.range(..end.as_slice()).rev() {
            let entry: AuditEntry = decode(&kv.map_err(backend)?.1)?;
            if filter.done_before(entry.at_ms) {
                break;
            }
            if !filter.matches(&entry) {
                continue;
            }
            if items.len() == limit {
                return Ok(Page {
                    items,
                    has_more: true,
                });
            }
            items.push(entry);
        }
        Ok(Page {
            items,
            has_more: false,
        })
    }

    async fn audit_entries(&self, from: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        use std::ops::Bound;
        // Every key after entry `from - 1`'s: a key that is no entry's number (written
        // into the tree by hand) is read too, and the chain check meets it.
        let after = from.checked_sub(1).map(u64::to_be_bytes);
        let start = match &after {
            Some(key) => Bound::Excluded(key.as_slice()),
            None => Bound::Unbounded,
        };
        self.audit
            .range::<&[u8], _>((start, Bound::Unbounded))
            .take(limit)
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }

    async fn audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>> {
        get(&self.meta, AUDIT_CHECKPOINT.as_bytes())
    }

    async fn purge_audit(&self, checkpoint: &AuditCheckpoint) -> StoreResult<usize> {
        put(&self.meta, AUDIT_CHECKPOINT.as_bytes(), checkpoint)?;
        // The checkpoint is on disk before any entry it disowns is deleted.
        self.durable().await?;
        let end = checkpoint.first_seq.to_be_bytes();
        let mut purged = 0;
        for kv in self.audit.range(..end.as_slice()) {
            let (key, _) = kv.map_err(backend)?;
            self.audit.remove(key).map_err(backend)?;
            purged += 1;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::accounts::Reseller;
    use std::sync::Arc;

    #[tokio::test]
    async fn records_survive_reopening_after_durable() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reseller {
            id: ResellerId::new(),
            name: "Acme Travel".into(),
            markup_bps: 100,
            created_at_ms: 1,
            low_balance_alerts: Default::default(),
            test_low_balance_alerts: Default::default(),
            closed_at_ms: None,
        };
        {
            let s = reopen(dir.path());
            s.put_reseller(&r).await.unwrap();
            s.durable().await.unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.reseller(r.id).await.unwrap(), Some(r));
    }

    #[tokio::test]
    async fn finished_idempotency_records_expire_and_running_ones_stay() {
        use crate::domain::idempotency::{Claim, IdemKey};
        let dir = tempfile::tempdir().unwrap();
        let s = reopen(dir.path());
        let reseller = ResellerId::new();
        let key = |k: &str| IdemKey {
            reseller,
            key: k.into(),
            order: crate::domain::ids::OrderId::new(),
        };
        let fp = [7u8; 32];
        assert_eq!(
            s.claim_idempotency(&key("old-done"), &fp, 1_000)
                .await
                .unwrap(),
            Claim::New
        );
        s.finish_idempotency(
            &key("old-done"),
            &IdemState::Order {
                order: crate::domain::ids::OrderId::new(),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            s.claim_idempotency(&key("old-running"), &fp, 1_000)
                .await
                .unwrap(),
            Claim::New
        );
        assert_eq!(
            s.claim_idempotency(&key("new-done"), &fp, 50_000)
                .await
                .unwrap(),
            Claim::New
        );
        s.finish_idempotency(
            &key("new-done"),
            &IdemState::Order {
                order: crate::domain::ids::OrderId::new(),
            },
        )
        .await
        .unwrap();

        assert_eq!(s.expire_idempotency(10_000).await.unwrap(), 1);
        // The expired key is free again; the others still answer as before.
        assert_eq!(
            s.claim_idempotency(&key("old-done"), &[8u8; 32], 60_000)
                .await
                .unwrap(),
            Claim::New
        );
        assert_eq!(
            s.claim_idempotency(&key("old-running"), &[9u8; 32], 1_500)
                .await
                .unwrap(),
            Claim::Mismatch
        );
        assert!(matches!(
            s.claim_idempotency(&key("new-done"), &fp, 60_000)
                .await
                .unwrap(),
            Claim::Replay(_)
        ));
    }

    fn order_for(reseller: ResellerId, price: i64) -> Order {
        use crate::domain::orders::{OrderKind, OrderSpec};
        use crate::domain::supplier::Money;
        let spec = OrderSpec {
            reseller,
            product_id: "sandbox:SKU".into(),
            plugin: "sandbox".into(),
            sku: "SKU".into(),
            quantity: 1,
            unit_price: Money {
                minor: price,
                currency: "USD".into(),
            },
            kind: OrderKind::Esim,
        };
        Order::accepted(spec, OrderId::new(), None, 1)
    }

    /// Open the store in `dir`, waiting (up to 10 s) for a handle just dropped to let go
    /// of sled's lock file: its background flusher still holds the database for a moment,
    /// longer on a loaded machine, and a crash test reopens at once.
    fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir, 8) {
                Ok(s) => return s,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("opening the store: {e}"),
            }
        }
    }

    async fn credit(s: &SledStore, reseller: ResellerId, amount: i64) {
        let e = LedgerEntry::new(reseller, EntryKind::Credit, amount, "USD", None, 1);
        s.commit(&Commit::credit(e)).await.unwrap().unwrap();
    }

    fn esim_of(order: &Order) -> EsimRecord {
        EsimRecord {
            iccid: "8999000000000000001".into(),
            order: order.id,
            reseller: order.reseller,
            plugin: order.plugin.clone(),
            sealed_activation: vec![1, 2, 3],
            confirmation_code_required: false,
            luhn_valid: true,
            profile: crate::domain::supplier::ProfileState::Released,
            plan: crate::domain::supplier::PlanState::Ready,
            raw_status: String::new(),
            created_at_ms: 2,
            usage_told_pct: 0,
        }
    }

    #[tokio::test]
    async fn a_crash_after_the_ledger_write_is_repaired_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let r = ResellerId::new();
        let accepted = order_for(r, 300);
        let mut fulfilled = accepted.clone();
        fulfilled.status = OrderStatus::Fulfilled;
        fulfilled.iccids = vec![esim_of(&accepted).iccid];
        let settle = Commit::settle(
            fulfilled.clone(),
            EntryKind::Capture,
            vec![esim_of(&accepted)],
        )
        .unwrap();
        let event = settle.events()[0].clone();
        {
            let s = reopen(dir.path());
            credit(&s, r, 1000).await;
            accept(&s, &accepted).await;
            // The process dies right after the capture's commit record: the order and
            // eSIM records that follow it in `commit` are never written.
            s.post(
                &s.open_gate().unwrap(),
                settle.entry().unwrap(),
                Some(&fulfilled),
                &[esim_of(&accepted)],
                &settle,
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                s.order(accepted.id).await.unwrap().unwrap().status,
                OrderStatus::Accepted
            );
            s.durable().await.unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.order(accepted.id).await.unwrap(), Some(fulfilled));
        assert_eq!(
            s.esim(&esim_of(&accepted).iccid).await.unwrap(),
            Some(esim_of(&accepted))
        );
        assert_eq!(
            s.balance(r, "USD").await.unwrap(),
            Balance {
                available: 700,
                held: 0
            }
        );
        assert!(s.open_orders().await.unwrap().is_empty());
        assert_eq!(
            s.event(r, event.id).await.unwrap(),
            Some(event.clone()),
            "the event the crash kept from being indexed is indexed"
        );
        let listed = s.orders_page(r, None, None, 10).await.unwrap();
        assert_eq!(
            listed.items.len(),
            1,
            "the reseller index was written with the order"
        );
    }

    #[tokio::test]
    async fn settled_records_are_stored_once_behind_their_commit_record_until_changed() {
        use crate::domain::supplier::ProfileState;
        let dir = tempfile::tempdir().unwrap();
        let r = ResellerId::new();
        let accepted = order_for(r, 300);
        let esim = esim_of(&accepted);
        let mut fulfilled = accepted.clone();
        fulfilled.status = OrderStatus::Fulfilled;
        fulfilled.iccids = vec![esim.iccid.clone()];
        let settle =
            Commit::settle(fulfilled.clone(), EntryKind::Capture, vec![esim.clone()]).unwrap();
        let mut refreshed = esim.clone();
        refreshed.profile = ProfileState::Installed;
        {
            let s = reopen(dir.path());
            credit(&s, r, 1000).await;
            accept(&s, &accepted).await;
            s.commit(&settle).await.unwrap().unwrap();
            // The order and the eSIM are pointers to the capture's commit record.
            let pointer = commit_pointer(&ledger_key(settle.entry().unwrap()));
            assert_eq!(
                s.orders.get(accepted.id.to_bytes()).unwrap().unwrap(),
                pointer
            );
            assert_eq!(s.esims.get(&esim.iccid).unwrap().unwrap(), pointer);
            assert_eq!(s.order(accepted.id).await.unwrap(), Some(fulfilled.clone()));
            assert_eq!(s.esim(&esim.iccid).await.unwrap(), Some(esim.clone()));
            assert_eq!(
                s.order_and_esims(accepted.id).await.unwrap(),
                Some((fulfilled.clone(), vec![esim.clone()]))
            );
            // A state refresh moves no money: it is stored in full, and read instead of
            // the commit record's older copy.
            s.commit(&Commit::change(None, vec![refreshed.clone()], Vec::new()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(s.esim(&esim.iccid).await.unwrap(), Some(refreshed.clone()));
            assert_eq!(
                s.order_and_esims(accepted.id).await.unwrap(),
                Some((fulfilled.clone(), vec![refreshed.clone()]))
            );
            s.durable().await.unwrap();
        }
        // Replaying the ledger after a crash keeps the newer record.
        let s = reopen(dir.path());
        assert_eq!(
            s.order_and_esims(accepted.id).await.unwrap(),
            Some((fulfilled, vec![refreshed]))
        );
    }

    #[test]
    fn idempotency_records_are_compact_and_round_trip() {
        let order = OrderId::new();
        let states = [
            IdemState::InProgress {
                started_ms: 1_795_000_000_000,
                order: Some(order),
            },
            IdemState::InProgress {
                started_ms: 5,
                order: None,
            },
            IdemState::Order { order },
        ];
        for state in states {
            let rec = IdemRecord {
                fingerprint: [0x7b; 32],
                state,
                created_at_ms: 1_795_000_000_000,
            };
            let bytes = encode_idem(&rec);
            assert_eq!(decode_idem(&bytes).unwrap(), rec);
            // Records written as JSON (by older stores) still read.
            assert_eq!(decode_idem(&encode(&rec)).unwrap(), rec);
        }
        let claim = IdemRecord {
            fingerprint: [0xff; 32],
            state: IdemState::InProgress {
                started_ms: u64::MAX,
                order: Some(order),
            },
            created_at_ms: u64::MAX,
        };
        let compact = encode_idem(&claim).len();
        assert!(compact <= 72, "a claim takes {compact} bytes");
        assert!(compact * 2 < encode(&claim).len());
        assert!(decode_idem(b"").is_err());
        assert!(decode_idem(&[IDEM_V1, 1, 2]).is_err());
    }

    /// Books as the whole ledger implies them (the invariant's right-hand side).
    async fn assert_books_match_the_ledger(s: &SledStore, resellers: &[ResellerId]) {
        for &r in resellers {
            let listed = s.ledger_entries(r).unwrap();
            assert_eq!(
                crate::domain::ledger::replay(&listed).unwrap(),
                s.balance(r, "USD").await.unwrap(),
                "reseller {r}"
            );
        }
    }

    #[tokio::test]
    async fn a_clean_close_is_loaded_and_a_later_crash_reads_only_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let r = ResellerId::new();
        let open = order_for(r, 250);
        {
            let s = reopen(dir.path());
            assert!(!s.recovery().from_checkpoint, "a new store has none");
            credit(&s, r, 1000).await;
            accept(&s, &open).await;
            s.close().await.unwrap();
            // Nothing moves money after the last checkpoint.
            let capture = Commit::settle(open.clone(), EntryKind::Capture, Vec::new()).unwrap();
            assert!(s.commit(&capture).await.is_err());
        }
        {
            let s = reopen(dir.path());
            assert_eq!(
                s.recovery(),
                Recovery {
                    from_checkpoint: true,
                    entries_read: 0,
                    repaired: 0
                }
            );
            assert_eq!(
                s.balance(r, "USD").await.unwrap(),
                Balance {
                    available: 750,
                    held: 250
                }
            );
            assert_eq!(s.open_orders().await.unwrap().len(), 1);
            // A crash from here reads this credit, which the checkpoint does not hold.
            credit(&s, r, 50).await;
            s.durable().await.unwrap();
        }
        let s = reopen(dir.path());
        assert!(s.recovery().from_checkpoint);
        assert_eq!(s.recovery().entries_read, 1);
        assert_eq!(
            s.balance(r, "USD").await.unwrap(),
            Balance {
                available: 800,
                held: 250
            }
        );
        assert_eq!(
            s.open_orders()
                .await
                .unwrap()
                .iter()
                .map(|o| o.id)
                .collect::<Vec<_>>(),
            vec![open.id]
        );
        assert_books_match_the_ledger(&s, &[r]).await;
    }

    #[tokio::test]
    async fn opening_after_a_crash_reads_only_the_entries_since_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let r = ResellerId::new();
        let (kept_open, settled_after) = (order_for(r, 10), order_for(r, 20));
        {
            let s = reopen(dir.path());
            for _ in 0..300 {
                credit(&s, r, 3).await;
            }
            accept(&s, &kept_open).await;
            accept(&s, &settled_after).await;
            s.checkpoint().unwrap();
            credit(&s, r, 7).await;
            let mut done = settled_after.clone();
            done.status = OrderStatus::Failed;
            s.commit(&Commit::settle(done, EntryKind::Release, Vec::new()).unwrap())
                .await
                .unwrap()
                .unwrap();
            s.durable().await.unwrap();
            // Dropped without `close`: as after a crash.
        }
        let s = reopen(dir.path());
        assert_eq!(
            s.recovery().entries_read,
            2,
            "the credit and the release after the checkpoint, not the 302 before"
        );
        assert_eq!(
            s.balance(r, "USD").await.unwrap(),
            Balance {
                available: 900 + 7 - 10,
                held: 10
            }
        );
        let open: Vec<OrderId> = s
            .open_orders()
            .await
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(open, vec![kept_open.id]);
        assert_books_match_the_ledger(&s, &[r]).await;
    }

    #[tokio::test]
    async fn an_accepted_order_not_yet_written_survives_a_crash_after_the_checkpoint_holding_its_hold()
     {
        let dir = tempfile::tempdir().unwrap();
        let r = ResellerId::new();
        let order = order_for(r, 40);
        {
            let s = reopen(dir.path());
            credit(&s, r, 100).await;
            accept(&s, &order).await;
            assert!(
                s.orders.get(order.id.to_bytes()).unwrap().is_none(),
                "only its hold's commit record holds it"
            );
            s.checkpoint().unwrap();
            s.durable().await.unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.recovery().entries_read, 0);
        assert_eq!(s.order(order.id).await.unwrap(), Some(order.clone()));
        assert_eq!(s.open_orders().await.unwrap(), vec![order]);
    }

    #[tokio::test]
    async fn a_store_without_a_checkpoint_reads_the_whole_ledger_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = ResellerId::new();
        {
            let s = reopen(dir.path());
            for _ in 0..5 {
                credit(&s, r, 2).await;
            }
            // As a data directory from before checkpoints: the clean-close marker of
            // that time, and no checkpoint.
            s.meta.insert(OLD_CHECKPOINT[0], &[1]).unwrap();
            s.meta.remove(LEDGER_CHECKPOINT).unwrap();
            s.durable().await.unwrap();
        }
        {
            let s = reopen(dir.path());
            assert!(!s.recovery().from_checkpoint);
            assert_eq!(s.recovery().entries_read, 5);
            assert_eq!(s.balance(r, "USD").await.unwrap().available, 10);
            assert!(s.meta.get(OLD_CHECKPOINT[0]).unwrap().is_none());
        }
        let s = reopen(dir.path());
        assert!(s.recovery().from_checkpoint, "opening wrote one");
        assert_eq!(s.recovery().entries_read, 0);
        assert_eq!(s.balance(r, "USD").await.unwrap().available, 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_taken_under_writes_restores_to_books_that_match_its_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(reopen(&dir.path().join("live")));
        let resellers = [ResellerId::new(), ResellerId::new()];
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for (w, r) in resellers.into_iter().enumerate() {
            let (s, stop, acknowledged) = (s.clone(), stop.clone(), acknowledged.clone());
            writers.push(tokio::spawn(async move {
                credit(&s, r, 1_000_000).await;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let order = order_for(r, 1 + (n % 7) as i64);
                    accept(&s, &order).await;
                    if n % 3 != w as u64 {
                        let mut done = order.clone();
                        done.status = OrderStatus::Fulfilled;
                        s.commit(&Commit::settle(done, EntryKind::Capture, Vec::new()).unwrap())
                            .await
                            .unwrap()
                            .unwrap();
                    }
                    s.durable().await.unwrap();
                    acknowledged.lock().unwrap().push(order.id);
                    if n.is_multiple_of(4) {
                        s.checkpoint().unwrap();
                    }
                    n += 1;
                }
            }));
        }
        wait_until(|| acknowledged.lock().unwrap().len() > 1500).await;
        let before: Vec<OrderId> = acknowledged.lock().unwrap().clone();
        let file = dir.path().join("backup");
        let made = s.backup_to(&file).await.unwrap().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let read = super::super::backup::import(&file, &dir.path().join("restored")).unwrap();
        assert_eq!(read, made);
        let restored = reopen(&dir.path().join("restored"));
        assert_books_match_the_ledger(&restored, &resellers).await;
        for id in before {
            assert!(
                restored.order(id).await.unwrap().is_some(),
                "order {id}, acknowledged before the backup, is in it"
            );
        }
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn books_rebuilt_after_crashes_between_random_checkpoints_match_the_whole_ledger() {
        // A small deterministic generator: the sequence is the same on every run.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let dir = tempfile::tempdir().unwrap();
        let resellers = [ResellerId::new(), ResellerId::new()];
        let mut open: Vec<Order> = Vec::new();
        for _crash in 0..6 {
            let s = reopen(dir.path());
            assert_books_match_the_ledger(&s, &resellers).await;
            let mut expected: Vec<OrderId> = open.iter().map(|o| o.id).collect();
            let mut found: Vec<OrderId> = s
                .open_orders()
                .await
                .unwrap()
                .iter()
                .map(|o| o.id)
                .collect();
            expected.sort();
            found.sort();
            assert_eq!(found, expected);
            for _ in 0..next(40) {
                let r = resellers[next(2) as usize];
                match next(5) {
                    0 => credit(&s, r, 1 + next(50) as i64).await,
                    1 | 2 => {
                        let order = order_for(r, 1 + next(30) as i64);
                        let accepted = s.commit(&Commit::accept(order.clone()).unwrap()).await;
                        if let Ok(Ok(_)) = accepted {
                            open.push(order);
                        }
                    }
                    3 if !open.is_empty() => {
                        let mut order = open.remove(next(open.len() as u64) as usize);
                        let kind = if next(2) == 0 {
                            order.status = OrderStatus::Failed;
                            EntryKind::Release
                        } else {
                            order.status = OrderStatus::Fulfilled;
                            EntryKind::Capture
                        };
                        s.commit(&Commit::settle(order, kind, Vec::new()).unwrap())
                            .await
                            .unwrap()
                            .unwrap();
                    }
                    _ => s.checkpoint().unwrap(),
                }
            }
            s.durable().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_claim_answers_as_its_order_once_the_order_exists() {
        use crate::domain::idempotency::{Claim, IdemKey};
        let dir = tempfile::tempdir().unwrap();
        let s = reopen(dir.path());
        let r = ResellerId::new();
        credit(&s, r, 1000).await;
        let key = IdemKey {
            reseller: r,
            key: "k1".into(),
            order: OrderId::new(),
        };
        let fp = [3u8; 32];
        assert_eq!(
            s.claim_idempotency(&key, &fp, 1_000).await.unwrap(),
            Claim::New
        );
        assert_eq!(
            s.claim_idempotency(&key, &fp, 1_001).await.unwrap(),
            Claim::InProgress
        );
        let mut order = order_for(r, 100);
        order.id = key.order;
        accept(&s, &order).await;
        assert_eq!(
            s.claim_idempotency(&key, &fp, 1_002).await.unwrap(),
            Claim::Replay(IdemState::Order { order: order.id })
        );
        // Long after the lease, still the same order (not a new claim)...
        assert_eq!(
            s.claim_idempotency(&key, &fp, 10_000_000).await.unwrap(),
            Claim::Replay(IdemState::Order { order: order.id })
        );
        // ...and the record expires like a finished one.
        assert_eq!(s.expire_idempotency(5_000).await.unwrap(), 1);
    }

    /// Accept `order` with a hold, then settle it (as fulfilled, with `esims`).
    async fn accept(s: &SledStore, order: &Order) {
        s.commit(&Commit::accept(order.clone()).unwrap())
            .await
            .unwrap()
            .unwrap();
    }

    async fn settle(
        s: &SledStore,
        order: &Order,
        kind: EntryKind,
        esims: &[EsimRecord],
    ) -> Result<Balance, Rejected> {
        let commit = Commit::settle(order.clone(), kind, esims.to_vec()).unwrap();
        let settled = s.commit(&commit).await.unwrap();
        settled.map(|b| b.expect("a settlement moves money"))
    }

    async fn accept_and_settle(
        s: &SledStore,
        order: &Order,
        esims: &[EsimRecord],
    ) -> Result<(), IccidTaken> {
        accept(s, order).await;
        let mut fulfilled = order.clone();
        fulfilled.status = OrderStatus::Fulfilled;
        fulfilled.iccids = esims.iter().map(|e| e.iccid.clone()).collect();
        let settle = Commit::settle(fulfilled, EntryKind::Capture, esims.to_vec()).unwrap();
        match s.commit(&settle).await.unwrap() {
            Ok(_) => Ok(()),
            Err(Rejected::IccidTaken(taken)) => Err(taken),
            Err(refused) => panic!("settling was refused: {refused}"),
        }
    }

    #[tokio::test]
    async fn an_iccid_that_belongs_to_one_order_is_refused_to_another_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = reopen(dir.path());
        let (a, b) = (ResellerId::new(), ResellerId::new());
        credit(&s, a, 1000).await;
        credit(&s, b, 1000).await;
        let first = order_for(a, 100);
        accept_and_settle(&s, &first, &[esim_of(&first)])
            .await
            .unwrap();

        let second = order_for(b, 100);
        let taken = accept_and_settle(&s, &second, &[esim_of(&second)])
            .await
            .unwrap_err();
        assert_eq!(taken.owner, first.id);
        // The eSIM and the first order are as they were; the second order is still open
        // with its hold, for fulfilment to fail and release.
        let esim = s.esim(&esim_of(&first).iccid).await.unwrap().unwrap();
        assert_eq!((esim.order, esim.reseller), (first.id, a));
        assert_eq!(
            s.order(second.id).await.unwrap().unwrap().status,
            OrderStatus::Accepted
        );
        assert_eq!(
            s.balance(b, "USD").await.unwrap(),
            Balance {
                available: 900,
                held: 100
            }
        );
        assert_eq!(
            s.ledger_entries(b).unwrap().len(),
            2,
            "credit and hold only"
        );
        // Settling the first order's own eSIM again (a cancel) is still allowed.
        let mut cancelled = s.order(first.id).await.unwrap().unwrap();
        cancelled.status = OrderStatus::Cancelled;
        assert!(
            settle(&s, &cancelled, EntryKind::Refund, &[esim_of(&first)])
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn of_orders_racing_for_one_iccid_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(reopen(dir.path()));
        let mut racers = Vec::new();
        for _ in 0..8 {
            let r = ResellerId::new();
            credit(&s, r, 1000).await;
            let o = order_for(r, 10);
            let s = s.clone();
            racers.push(tokio::spawn(async move {
                accept_and_settle(&s, &o, &[esim_of(&o)]).await.is_ok()
            }));
        }
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.unwrap());
        }
        assert_eq!(winners, 1);
        let owner = s.esim("8999000000000000001").await.unwrap().unwrap().order;
        assert_eq!(
            s.order(owner).await.unwrap().unwrap().status,
            OrderStatus::Fulfilled
        );
    }

    #[tokio::test]
    async fn a_claim_a_crash_left_behind_is_invisible_stays_with_its_order_and_expires_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = reopen(dir.path());
        let (a, b) = (ResellerId::new(), ResellerId::new());
        credit(&s, a, 1000).await;
        credit(&s, b, 1000).await;
        let crashed = order_for(a, 100);
        let iccid = esim_of(&crashed).iccid;
        // A crash between the claim and the commit record leaves only the claim.
        accept(&s, &crashed).await;
        s.esims
            .insert(iccid.as_bytes(), iccid_claim(crashed.id))
            .unwrap();
        assert_eq!(
            s.esim(&iccid).await.unwrap(),
            None,
            "a claim is no eSIM yet"
        );
        // While its order is open, nobody else takes it.
        let other = order_for(b, 100);
        assert_eq!(
            accept_and_settle(&s, &other, &[esim_of(&other)])
                .await
                .unwrap_err()
                .owner,
            crashed.id
        );
        // Once its order failed without it, the claim is stale and can be taken.
        let mut failed = s.order(crashed.id).await.unwrap().unwrap();
        failed.status = OrderStatus::Failed;
        settle(&s, &failed, EntryKind::Release, &[]).await.unwrap();
        let mut fulfilled = other.clone();
        fulfilled.status = OrderStatus::Fulfilled;
        fulfilled.iccids = vec![iccid.clone()];
        assert!(
            settle(&s, &fulfilled, EntryKind::Capture, &[esim_of(&other)])
                .await
                .is_ok()
        );
        assert_eq!(s.esim(&iccid).await.unwrap().unwrap().reseller, b);
    }

    #[tokio::test]
    async fn jobs_are_found_by_due_time_and_an_index_a_crash_left_behind_is_rebuilt() {
        use crate::domain::jobs::JobKind;
        let dir = tempfile::tempdir().unwrap();
        {
            let s = reopen(dir.path());
            for n in 0..500u64 {
                let job = Job::new(format!("later-{n}"), JobKind::RefreshCatalogs, 10_000 + n);
                s.put_job(&job).await.unwrap();
            }
            s.put_job(&Job::new("now", JobKind::ExpireIdempotency, 5))
                .await
                .unwrap();
            assert_eq!(s.jobs_due.len(), 501, "one entry per live job");
            let claimed = s.claim_jobs("run-1", 100, 50, 10).await.unwrap();
            assert_eq!(
                claimed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
                ["now"]
            );
            // Leased: indexed at its lease's end, claimable again only then.
            assert!(s.claim_jobs("run-1", 149, 50, 10).await.unwrap().is_empty());
            assert_eq!(s.claim_jobs("run-1", 150, 50, 10).await.unwrap().len(), 1);
            s.finish_job("now").await.unwrap();
            let mut dead = s.job("later-0").await.unwrap().unwrap();
            dead.dead = true;
            s.put_job(&dead).await.unwrap();
            s.finish_job("later-1").await.unwrap();
            assert_eq!(
                s.jobs_due.len(),
                498,
                "dead and finished jobs leave the index"
            );
            // A crash between a job's write and its index entry loses the entry...
            let later = Job::new("later-2", JobKind::RefreshCatalogs, 10_002);
            s.jobs_due.remove(due_entry(&later).unwrap()).unwrap();
            s.durable().await.unwrap();
        }
        // ...and opening the store rebuilds it.
        let s = reopen(dir.path());
        let due: Vec<String> = s
            .claim_jobs("run-1", 10_002, 50, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(due, ["later-2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_subject_gets_one_data_key_even_when_two_orders_race_to_create_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(reopen(dir.path()));
        let lookup = SubjectLookup([9; 32]);
        assert_eq!(s.subject_key(&lookup).await.unwrap(), None);
        let racers: Vec<_> = (0..8u8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.create_subject_key(&lookup, &[i; 40]).await.unwrap() })
            })
            .collect();
        let mut kept: Vec<Vec<u8>> = Vec::new();
        for racer in racers {
            kept.push(racer.await.unwrap());
        }
        assert!(
            kept.windows(2).all(|w| w[0] == w[1]),
            "every caller got the same key"
        );
        assert_eq!(s.subject_key(&lookup).await.unwrap(), Some(kept[0].clone()));
    }

    #[tokio::test]
    async fn a_claim_whose_credit_was_posted_before_a_crash_replays_instead_of_running_again() {
        use crate::domain::idempotency::{Claim, IdemKey, LEASE_MS};
        let dir = tempfile::tempdir().unwrap();
        let s = reopen(dir.path());
        let r = ResellerId::new();
        // A credit to the live account, and one to the test account claimed under the
        // reseller's key (the admin's credit route does that).
        for (n, mode) in [KeyMode::Live, KeyMode::Test].into_iter().enumerate() {
            let at = 1_000 * (n as u64 + 1);
            let key = IdemKey {
                reseller: r,
                key: format!("wire-{n}"),
                order: OrderId::new(),
            };
            let fp = [5u8; 32];
            assert_eq!(
                s.claim_idempotency(&key, &fp, at).await.unwrap(),
                Claim::New
            );
            // The credit is posted under the claim's id; then the process dies before
            // anything else is written.
            let mut credit =
                LedgerEntry::new(mode.account(r), EntryKind::Credit, 700, "USD", None, at);
            credit.id = key.order.0;
            s.commit(&Commit::credit(credit.clone()))
                .await
                .unwrap()
                .unwrap();
            // A retry long after the lease (a fresh claim id, as every request gets one)
            // finds the credit instead of a free key.
            let retry = IdemKey {
                order: OrderId::new(),
                ..key.clone()
            };
            assert_eq!(
                s.claim_idempotency(&retry, &fp, at + LEASE_MS + 1)
                    .await
                    .unwrap(),
                Claim::Replay(IdemState::Order { order: key.order }),
                "{mode:?}"
            );
            assert_eq!(
                s.ledger_entry(mode.account(r), key.order.0).await.unwrap(),
                Some(credit)
            );
        }
    }

    #[tokio::test]
    async fn a_job_a_killed_process_had_in_hand_runs_at_once_after_a_restart() {
        use crate::domain::jobs::JobKind;
        let dir = tempfile::tempdir().unwrap();
        let order = OrderId::new();
        {
            let s = reopen(dir.path());
            s.put_job(&Job::fulfil(order, 1_000)).await.unwrap();
            // Claimed with a ten-minute lease; then the process is killed mid-step.
            let claimed = s.claim_jobs("run-1", 1_000, 600_000, 10).await.unwrap();
            assert_eq!(claimed.len(), 1);
            assert!(
                s.claim_jobs("run-1", 2_000, 600_000, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            s.durable().await.unwrap();
        }
        let s = reopen(dir.path());
        // One process holds a sled database at a time: the lease died with its holder.
        let again = s.claim_jobs("run-1", 2_000, 600_000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "taken at once, not after the lease");
        assert_eq!(again[0].kind, JobKind::Fulfil { order });
    }

    /// A sled store in a temporary directory, opened on the same files each time.
    struct OnDisk(tempfile::TempDir);

    impl crate::store::conformance::Backend for OnDisk {
        fn open(&self) -> Arc<dyn Store> {
            // sled's own threads may hold the directory lock for a moment after the last
            // handle is dropped (a restart in a new process never sees that).
            for _ in 0..200 {
                match SledStore::open(self.0.path(), 8) {
                    Ok(store) => return Arc::new(store),
                    Err(e) if e.to_string().contains("could not acquire lock") => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    Err(e) => panic!("opening the store: {e}"),
                }
            }
            panic!("the previous store never released its directory")
        }
    }

    fn on_disk() -> OnDisk {
        OnDisk(tempfile::tempdir().unwrap())
    }

    mod conformance {
        use super::on_disk;
        crate::store_conformance!(on_disk());
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(reopen(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put_meta(&format!("k{i}"), b"v").await.unwrap();
                s.durable().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..64u32 {
            assert!(s.meta(&format!("k{i}")).await.unwrap().is_some());
        }
    }
}
