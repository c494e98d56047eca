//! sled implementation of [`Store`].
//!
//! | tree | key | value |
//! |---|---|---|
//! | `resellers` | reseller id (16 B) | JSON `Reseller` |
//! | `api_keys` | key hash (32 B) | JSON `ApiKey` |
//! | `orders` | order id (16 B, sorts by time) | JSON `Order` |
//! | `api_key_ids` | key id (16 B) | key hash |
//! | `orders_by_reseller` | reseller id ++ order id | empty |
//! | `orders_open` | order id | empty (orders not yet final) |
//! | `ledger` | reseller id ++ entry id (sorts by time) | JSON `LedgerEntry` |
//! | `balances` | reseller id ++ currency | JSON `Balance` |
//! | `idempotency` | reseller id ++ SHA-256(key) | JSON `IdemRecord` |
//! | `esims` | ICCID | JSON `EsimRecord` (activation data sealed) |
//! | `catalogs` | plugin id | JSON `CachedCatalog` |
//! | `meta` | name | bytes |

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use ulid::Ulid;

use crate::domain::accounts::{ApiKey, KeyHash, Reseller};
use crate::domain::catalog::CachedCatalog;
use crate::domain::idempotency::{self, Claim, IdemKey, IdemRecord, IdemState};
use crate::domain::ids::{KeyId, OrderId, ResellerId};
use crate::domain::ledger::{Balance, Insufficient, LedgerEntry};
use crate::domain::orders::{EsimRecord, Order, OrderStatus};
use crate::domain::store::{Page, Store, StoreError, StoreResult};
use crate::domain::supplier::BoxFuture;

use super::group_commit::GroupCommit;

/// The sled-backed store.
pub struct SledStore {
    db: std::sync::Arc<sled::Db>,
    resellers: sled::Tree,
    api_keys: sled::Tree,
    api_key_ids: sled::Tree,
    orders: sled::Tree,
    orders_by_reseller: sled::Tree,
    orders_open: sled::Tree,
    ledger: sled::Tree,
    balances: sled::Tree,
    idempotency: sled::Tree,
    esims: sled::Tree,
    catalogs: sled::Tree,
    meta: sled::Tree,
    commit: GroupCommit,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
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

fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> StoreResult<()> {
    tree.insert(key, encode(value)).map_err(backend)?;
    Ok(())
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len());
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

fn balance_key(reseller: ResellerId, currency: &str) -> Vec<u8> {
    cat(&reseller.to_bytes(), currency.as_bytes())
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

/// Errors inside a transaction: our own abort reason, or a decode failure.
enum Abort {
    Insufficient(Insufficient),
    Decode(String),
}

type TxResult<T> = Result<T, ConflictableTransactionError<Abort>>;

fn tx_get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    match tree.get(key)? {
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ConflictableTransactionError::Abort(Abort::Decode(e.to_string()))),
        None => Ok(None),
    }
}

/// Apply a ledger entry to the balance tree and append it, inside a transaction.
fn tx_post(
    ledger: &TransactionalTree,
    balances: &TransactionalTree,
    entry: &LedgerEntry,
) -> TxResult<Balance> {
    let key = balance_key(entry.reseller, &entry.currency);
    let current: Balance = tx_get(balances, &key)?.unwrap_or_default();
    let next = current
        .apply(entry.kind, entry.amount)
        .map_err(|i| ConflictableTransactionError::Abort(Abort::Insufficient(i)))?;
    balances.insert(key, encode(&next))?;
    ledger.insert(
        cat(&entry.reseller.to_bytes(), &entry.id.to_bytes()),
        encode(entry),
    )?;
    Ok(next)
}

fn tx_put_order(
    orders: &TransactionalTree,
    by_reseller: &TransactionalTree,
    open: &TransactionalTree,
    order: &Order,
) -> TxResult<()> {
    let id = order.id.to_bytes();
    orders.insert(&id, encode(order))?;
    if order.status == OrderStatus::Accepted {
        // The index entry never changes after the order is first written.
        by_reseller.insert(cat(&order.reseller.to_bytes(), &id), &[])?;
    }
    if order.status.is_final() {
        open.remove(&id)?;
    } else {
        open.insert(&id, &[])?;
    }
    Ok(())
}

/// Unwrap a transaction result into our own types.
fn finish_tx<T>(r: Result<T, TransactionError<Abort>>) -> StoreResult<Result<T, Insufficient>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(TransactionError::Abort(Abort::Insufficient(i))) => Ok(Err(i)),
        Err(TransactionError::Abort(Abort::Decode(e))) => Err(StoreError::Decode(e)),
        Err(TransactionError::Storage(e)) => Err(backend(e)),
    }
}

impl SledStore {
    /// Open (or create) the database in `dir`. Must run inside a tokio runtime (the
    /// group-commit flusher is a task).
    pub fn open(dir: &Path, cache_mib: u64) -> StoreResult<SledStore> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mib * 1024 * 1024)
            // Durability comes from explicit group-commit flushes, not a timer.
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let db = std::sync::Arc::new(db);
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        // The flusher holds the database weakly: dropping the store closes it (and frees
        // sled's directory lock) without waiting for the flusher task to notice.
        let flusher = std::sync::Arc::downgrade(&db);
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
        Ok(SledStore {
            resellers: tree("resellers")?,
            api_keys: tree("api_keys")?,
            api_key_ids: tree("api_key_ids")?,
            orders: tree("orders")?,
            orders_by_reseller: tree("orders_by_reseller")?,
            orders_open: tree("orders_open")?,
            ledger: tree("ledger")?,
            balances: tree("balances")?,
            idempotency: tree("idempotency")?,
            esims: tree("esims")?,
            catalogs: tree("catalogs")?,
            meta: tree("meta")?,
            db,
            commit,
        })
    }

    /// The raw database, for maintenance commands.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Every ledger entry of a reseller, oldest first (invariant checks, exports).
    pub fn ledger_entries(&self, reseller: ResellerId) -> StoreResult<Vec<LedgerEntry>> {
        self.ledger
            .scan_prefix(reseller.to_bytes())
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }
}

impl Store for SledStore {
    fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>> {
        get(&self.resellers, &id.to_bytes())
    }

    fn resellers(&self) -> StoreResult<Vec<Reseller>> {
        self.resellers
            .iter()
            .map(|kv| decode(&kv.map_err(backend)?.1))
            .collect()
    }

    fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()> {
        put(&self.resellers, &reseller.id.to_bytes(), reseller)
    }

    fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>> {
        get(&self.api_keys, &hash.0)
    }

    fn api_key_by_id(&self, id: KeyId) -> StoreResult<Option<ApiKey>> {
        match self.api_key_ids.get(id.to_bytes()).map_err(backend)? {
            Some(hash) => get(&self.api_keys, &hash),
            None => Ok(None),
        }
    }

    fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        put(&self.api_keys, &key.hash.0, key)?;
        self.api_key_ids
            .insert(key.id.to_bytes(), &key.hash.0)
            .map_err(backend)?;
        Ok(())
    }

    fn order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        get(&self.orders, &id.to_bytes())
    }

    fn orders_page(
        &self,
        reseller: ResellerId,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> StoreResult<Page<Order>> {
        let (start, end) = newest_first_range(reseller, before.map(|b| b.to_bytes()));
        let orders = self.orders_by_reseller.range(start..end).rev().map(|kv| {
            let (k, _) = kv.map_err(backend)?;
            let order = get::<Order>(&self.orders, &k[16..])?;
            Ok(order.filter(|o| status.is_none_or(|s| s == o.status)))
        });
        take_page(orders, limit)
    }

    fn open_orders(&self) -> StoreResult<Vec<Order>> {
        let mut out = Vec::new();
        for kv in self.orders_open.iter() {
            let (k, _) = kv.map_err(backend)?;
            if let Some(o) = get(&self.orders, &k)? {
                out.push(o);
            }
        }
        Ok(out)
    }

    fn put_order(&self, order: &Order) -> StoreResult<()> {
        let trees = [&self.orders, &self.orders_by_reseller, &self.orders_open];
        let r = trees[..].transaction(|t| tx_put_order(&t[0], &t[1], &t[2], order));
        finish_tx(r)?.map_err(|_| StoreError::Backend("unexpected ledger refusal".into()))
    }

    fn accept_order(
        &self,
        order: &Order,
        hold: &LedgerEntry,
        idem: Option<&IdemKey>,
    ) -> StoreResult<Result<Balance, Insufficient>> {
        let trees = [
            &self.orders,
            &self.orders_by_reseller,
            &self.orders_open,
            &self.ledger,
            &self.balances,
            &self.idempotency,
        ];
        let r = trees[..].transaction(|t| {
            let balance = tx_post(&t[3], &t[4], hold)?;
            tx_put_order(&t[0], &t[1], &t[2], order)?;
            if let Some(key) = idem {
                let k = key.storage_key();
                if let Some(mut rec) = tx_get::<IdemRecord>(&t[5], &k)? {
                    rec.state = IdemState::Order { order: order.id };
                    t[5].insert(k, encode(&rec))?;
                }
            }
            Ok(balance)
        });
        finish_tx(r)
    }

    fn settle_order(
        &self,
        order: &Order,
        entry: Option<&LedgerEntry>,
        esims: &[EsimRecord],
    ) -> StoreResult<()> {
        let trees = [
            &self.orders,
            &self.orders_by_reseller,
            &self.orders_open,
            &self.ledger,
            &self.balances,
            &self.esims,
        ];
        let r = trees[..].transaction(|t| {
            tx_put_order(&t[0], &t[1], &t[2], order)?;
            if let Some(e) = entry {
                tx_post(&t[3], &t[4], e)?;
            }
            for esim in esims {
                t[5].insert(esim.iccid.as_bytes(), encode(esim))?;
            }
            Ok(())
        });
        finish_tx(r)?.map_err(|i| {
            StoreError::Backend(format!(
                "settling order {} would break the ledger: {i}",
                order.id
            ))
        })
    }

    fn post_entry(&self, entry: &LedgerEntry) -> StoreResult<Result<Balance, Insufficient>> {
        let trees = [&self.ledger, &self.balances];
        finish_tx(trees[..].transaction(|t| tx_post(&t[0], &t[1], entry)))
    }

    fn balance(&self, reseller: ResellerId, currency: &str) -> StoreResult<Balance> {
        Ok(get(&self.balances, &balance_key(reseller, currency))?.unwrap_or_default())
    }

    fn balances(&self, reseller: ResellerId) -> StoreResult<Vec<(String, Balance)>> {
        self.balances
            .scan_prefix(reseller.to_bytes())
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                Ok((String::from_utf8_lossy(&k[16..]).into_owned(), decode(&v)?))
            })
            .collect()
    }

    fn ledger_page(
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
            .map(|kv| decode(&kv.map_err(backend)?.1).map(Some));
        take_page(entries, limit)
    }

    fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>> {
        get(&self.esims, iccid.as_bytes())
    }

    fn put_esim(&self, esim: &EsimRecord) -> StoreResult<()> {
        put(&self.esims, esim.iccid.as_bytes(), esim)
    }

    fn claim_idempotency(
        &self,
        key: &IdemKey,
        fingerprint: &[u8; 32],
        now_ms: u64,
    ) -> StoreResult<Claim> {
        let k = key.storage_key();
        let r = self.idempotency.transaction(|t| {
            let existing: Option<IdemRecord> = match t.get(&k)? {
                Some(b) => serde_json::from_slice(&b).ok(),
                None => None,
            };
            let claim = idempotency::judge(existing.as_ref(), fingerprint, now_ms);
            if claim == Claim::New {
                let rec = IdemRecord {
                    fingerprint: *fingerprint,
                    state: IdemState::InProgress { started_ms: now_ms },
                    created_at_ms: now_ms,
                };
                t.insert(k.as_slice(), encode(&rec))?;
            }
            Ok::<_, ConflictableTransactionError<()>>(claim)
        });
        r.map_err(|e| match e {
            TransactionError::Storage(e) => backend(e),
            TransactionError::Abort(()) => StoreError::Backend("idempotency claim aborted".into()),
        })
    }

    fn finish_idempotency(&self, key: &IdemKey, state: &IdemState) -> StoreResult<()> {
        let k = key.storage_key();
        if let Some(mut rec) = get::<IdemRecord>(&self.idempotency, &k)? {
            rec.state = state.clone();
            put(&self.idempotency, &k, &rec)?;
        }
        Ok(())
    }

    fn release_idempotency(&self, key: &IdemKey) -> StoreResult<()> {
        self.idempotency
            .remove(key.storage_key())
            .map_err(backend)?;
        Ok(())
    }

    fn expire_idempotency(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let mut expired = 0;
        for kv in self.idempotency.iter() {
            let (k, v) = kv.map_err(backend)?;
            let Ok(rec) = decode::<IdemRecord>(&v) else {
                continue;
            };
            let finished = !matches!(rec.state, IdemState::InProgress { .. });
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

    fn catalog(&self, plugin: &str) -> StoreResult<Option<CachedCatalog>> {
        get(&self.catalogs, plugin.as_bytes())
    }

    fn put_catalog(&self, catalog: &CachedCatalog) -> StoreResult<()> {
        put(&self.catalogs, catalog.plugin.as_bytes(), catalog)
    }

    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.meta.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.meta.insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn durable(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move { self.commit.wait().await.map_err(StoreError::Backend) })
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
        };
        {
            let s = SledStore::open(dir.path(), 8).unwrap();
            s.put_reseller(&r).unwrap();
            s.durable().await.unwrap();
        }
        let s = SledStore::open(dir.path(), 8).unwrap();
        assert_eq!(s.reseller(r.id).unwrap(), Some(r));
    }

    #[tokio::test]
    async fn finished_idempotency_records_expire_and_running_ones_stay() {
        use crate::domain::idempotency::{Claim, IdemKey};
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8).unwrap();
        let reseller = ResellerId::new();
        let key = |k: &str| IdemKey {
            reseller,
            key: k.into(),
        };
        let fp = [7u8; 32];
        assert_eq!(
            s.claim_idempotency(&key("old-done"), &fp, 1_000).unwrap(),
            Claim::New
        );
        s.finish_idempotency(
            &key("old-done"),
            &IdemState::Order {
                order: crate::domain::ids::OrderId::new(),
            },
        )
        .unwrap();
        assert_eq!(
            s.claim_idempotency(&key("old-running"), &fp, 1_000)
                .unwrap(),
            Claim::New
        );
        assert_eq!(
            s.claim_idempotency(&key("new-done"), &fp, 50_000).unwrap(),
            Claim::New
        );
        s.finish_idempotency(
            &key("new-done"),
            &IdemState::Order {
                order: crate::domain::ids::OrderId::new(),
            },
        )
        .unwrap();

        assert_eq!(s.expire_idempotency(10_000).unwrap(), 1);
        // The expired key is free again; the others still answer as before.
        assert_eq!(
            s.claim_idempotency(&key("old-done"), &[8u8; 32], 60_000)
                .unwrap(),
            Claim::New
        );
        assert_eq!(
            s.claim_idempotency(&key("old-running"), &[9u8; 32], 1_500)
                .unwrap(),
            Claim::Mismatch
        );
        assert!(matches!(
            s.claim_idempotency(&key("new-done"), &fp, 60_000).unwrap(),
            Claim::Replay(_)
        ));
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SledStore::open(dir.path(), 8).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put_meta(&format!("k{i}"), b"v").unwrap();
                s.durable().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..64u32 {
            assert!(s.meta(&format!("k{i}")).unwrap().is_some());
        }
    }
}
