//! The `state` import of contract 0.2: a small key-value store per plugin id that outlives
//! one call (every call runs in a fresh instance). It is the gateway's memory, not the
//! database: it survives a hot reload of the plugin and is empty after a restart, so an
//! adapter keeps only what it can fetch again (a supplier's prices, say). Keys and values
//! are capped per plugin, so a hostile plugin cannot grow the gateway's memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The longest key.
pub const MAX_KEY_BYTES: usize = 128;
/// The most keys one plugin may hold.
pub const MAX_KEYS: usize = 64;
/// The most bytes (keys and values) one plugin may hold.
pub const MAX_TOTAL_BYTES: usize = 64 * 1024;

/// One plugin's store.
#[derive(Debug, Default)]
pub struct PluginKv(Mutex<BTreeMap<String, Vec<u8>>>);

impl PluginKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.map().get(key).cloned()
    }

    /// Store `value` under `key` unless a cap would be exceeded; the error says which.
    pub fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("keys are at most {MAX_KEY_BYTES} bytes"));
        }
        let mut map = self.map();
        let used: usize = map
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if used + key.len() + value.len() > MAX_TOTAL_BYTES {
            return Err(format!(
                "the plugin's state would exceed {MAX_TOTAL_BYTES} bytes"
            ));
        }
        if !map.contains_key(&key) && map.len() >= MAX_KEYS {
            return Err(format!("the plugin's state holds at most {MAX_KEYS} keys"));
        }
        map.insert(key, value);
        Ok(())
    }

    /// Remove `key`.
    pub fn remove(&self, key: &str) {
        self.map().remove(key);
    }
}

/// Every plugin's store, by plugin id.
#[derive(Debug, Default)]
pub struct PluginKvs(Mutex<HashMap<String, Arc<PluginKv>>>);

impl PluginKvs {
    /// The store of plugin `id` (created empty on first use).
    pub fn for_plugin(&self, id: &str) -> Arc<PluginKv> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_are_replaced() {
        let kv = PluginKv::default();
        kv.set("prices".into(), b"1".to_vec()).unwrap();
        kv.set("prices".into(), b"22".to_vec()).unwrap();
        assert_eq!(kv.get("prices").as_deref(), Some(&b"22"[..]));
        kv.remove("prices");
        assert_eq!(kv.get("prices"), None);
    }

    #[test]
    fn every_cap_holds() {
        let kv = PluginKv::default();
        assert!(kv.set("k".repeat(MAX_KEY_BYTES + 1), vec![]).is_err());
        assert!(kv.set("big".into(), vec![0; MAX_TOTAL_BYTES]).is_err());
        kv.set("half".into(), vec![0; MAX_TOTAL_BYTES / 2]).unwrap();
        assert!(
            kv.set("other".into(), vec![0; MAX_TOTAL_BYTES / 2])
                .is_err()
        );
        // Replacing a value counts the new size, not both.
        kv.set("half".into(), vec![0; MAX_TOTAL_BYTES / 2]).unwrap();
        kv.remove("half");
        for i in 0..MAX_KEYS {
            kv.set(format!("k{i}"), vec![]).unwrap();
        }
        assert!(kv.set("one-more".into(), vec![]).is_err());
        kv.set("k0".into(), b"x".to_vec()).unwrap();
    }

    #[test]
    fn plugins_do_not_share_a_store_and_a_reload_keeps_it() {
        let all = PluginKvs::default();
        all.for_plugin("a").set("x".into(), b"1".to_vec()).unwrap();
        assert_eq!(all.for_plugin("b").get("x"), None);
        assert_eq!(all.for_plugin("a").get("x").as_deref(), Some(&b"1"[..]));
    }
}
