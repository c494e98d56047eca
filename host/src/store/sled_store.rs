//! sled implementation of [`Store`].
//!
//! | tree | key | value |
//! |---|---|---|
//! | `resellers` | reseller id (16 B) | JSON `Reseller` |
//! | `api_keys` | key hash (32 B) | JSON `ApiKey` |
//! | `orders` | order id (16 B, sorts by time) | JSON `Order` |
//! | `orders_by_reseller` | reseller id ++ order id | empty |
//! | `esims` | ICCID | JSON `EsimRecord` (activation data sealed) |
//! | `meta` | name | bytes |

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::accounts::{ApiKey, KeyHash, Reseller};
use crate::domain::ids::{OrderId, ResellerId};
use crate::domain::orders::{EsimRecord, Order};
use crate::domain::store::{Store, StoreError, StoreResult};
use crate::domain::supplier::BoxFuture;

use super::group_commit::GroupCommit;

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    resellers: sled::Tree,
    api_keys: sled::Tree,
    orders: sled::Tree,
    orders_by_reseller: sled::Tree,
    esims: sled::Tree,
    meta: sled::Tree,
    commit: GroupCommit,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
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
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let flusher = db.clone();
        let commit = GroupCommit::start(move || {
            let db = flusher.clone();
            async move {
                db.flush_async()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        });
        Ok(SledStore {
            resellers: tree("resellers")?,
            api_keys: tree("api_keys")?,
            orders: tree("orders")?,
            orders_by_reseller: tree("orders_by_reseller")?,
            esims: tree("esims")?,
            meta: tree("meta")?,
            db,
            commit,
        })
    }

    /// The raw database, for maintenance commands.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> StoreResult<Option<T>> {
    match tree.get(key).map_err(backend)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Decode(e.to_string())),
        None => Ok(None),
    }
}

fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> StoreResult<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Decode(e.to_string()))?;
    tree.insert(key, bytes).map_err(backend)?;
    Ok(())
}

impl Store for SledStore {
    fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>> {
        get(&self.resellers, &id.to_bytes())
    }

    fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()> {
        put(&self.resellers, &reseller.id.to_bytes(), reseller)
    }

    fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>> {
        get(&self.api_keys, &hash.0)
    }

    fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        put(&self.api_keys, &key.hash.0, key)
    }

    fn order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        get(&self.orders, &id.to_bytes())
    }

    fn put_order(&self, order: &Order) -> StoreResult<()> {
        put(&self.orders, &order.id.to_bytes(), order)?;
        let mut index = [0u8; 32];
        index[..16].copy_from_slice(&order.reseller.to_bytes());
        index[16..].copy_from_slice(&order.id.to_bytes());
        self.orders_by_reseller
            .insert(index, &[])
            .map_err(backend)?;
        Ok(())
    }

    fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>> {
        get(&self.esims, iccid.as_bytes())
    }

    fn put_esim(&self, esim: &EsimRecord) -> StoreResult<()> {
        put(&self.esims, esim.iccid.as_bytes(), esim)
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
        // The group-commit flusher task holds the database until it sees the store dropped;
        // on this single-threaded runtime it runs only when the test yields.
        tokio::task::yield_now().await;
        let s = SledStore::open(dir.path(), 8).unwrap();
        assert_eq!(s.reseller(r.id).unwrap(), Some(r));
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
