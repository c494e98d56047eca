//! Plugin secrets: values the operator keeps for a plugin (API tokens, webhook signing
//! keys). A plugin refers to a secret only by name; the host uses the value on its behalf
//! (filling `${secret:NAME}` at egress, checking HMACs) and never copies it into guest memory.
//!
//! Values come from the secrets file (`[plugin-id] NAME = "value"`, mode 0600) and, taking
//! precedence, from `SIMGATE_SECRET_<PLUGIN>_<NAME>` environment variables (`-` becomes `_`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::error::LoadError;

/// A secret value. It cannot be printed: `Debug` and `Display` show a placeholder.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The granted secrets of one plugin, by name.
#[derive(Debug, Clone, Default)]
pub struct SecretValues(BTreeMap<String, Secret>);

impl SecretValues {
    /// The value of a granted secret.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }
}

/// All secret values the operator configured, by plugin id then name.
#[derive(Debug, Clone, Default)]
pub struct SecretStore(BTreeMap<String, BTreeMap<String, Secret>>);

impl SecretStore {
    /// Read the secrets file (absent is fine) and the environment.
    pub fn load(path: &Path) -> Result<SecretStore, LoadError> {
        let mut store = SecretStore::default();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
                path: path.to_owned(),
                source,
            })?;
            let table: BTreeMap<String, BTreeMap<String, String>> =
                toml::from_str(&text).map_err(|e| LoadError::Grants {
                    path: path.to_owned(),
                    // toml's message may quote the offending line; it could hold a value.
                    message: format!(
                        "not a table of [plugin-id] NAME = \"value\" (at {:?})",
                        e.span()
                    ),
                })?;
            for (plugin, values) in table {
                let entry = store.0.entry(plugin).or_default();
                for (name, value) in values {
                    entry.insert(name, Secret::new(value));
                }
            }
        }
        for (key, value) in std::env::vars() {
            if let Some(rest) = key.strip_prefix("SIMGATE_SECRET_") {
                store
                    .0
                    .entry("__env".into())
                    .or_default()
                    .insert(rest.to_string(), Secret::new(value));
            }
        }
        Ok(store)
    }

    /// Add or replace a value (used by tests and the SDK harness).
    pub fn insert(&mut self, plugin: &str, name: &str, value: &str) {
        self.0
            .entry(plugin.to_string())
            .or_default()
            .insert(name.to_string(), Secret::new(value));
    }

    /// The values of `granted` names for `plugin`; names with no value are left out, so
    /// using them fails the same way as an ungranted name.
    pub fn for_plugin(&self, plugin: &str, granted: &BTreeSet<String>) -> SecretValues {
        let env_key = |name: &str| {
            format!("{}_{}", plugin, name)
                .replace('-', "_")
                .to_uppercase()
        };
        let mut out = BTreeMap::new();
        for name in granted {
            let from_env = self.0.get("__env").and_then(|m| m.get(&env_key(name)));
            let from_file = self.0.get(plugin).and_then(|m| m.get(name));
            if let Some(secret) = from_env.or(from_file) {
                out.insert(name.clone(), secret.clone());
            }
        }
        SecretValues(out)
    }
}

/// Check an HMAC in constant time (ring's `hmac::verify`).
pub fn verify_hmac(secret: &Secret, sha512: bool, message: &[u8], signature: &[u8]) -> bool {
    let alg = if sha512 {
        ring::hmac::HMAC_SHA512
    } else {
        ring::hmac::HMAC_SHA256
    };
    let key = ring::hmac::Key::new(alg, secret.expose().as_bytes());
    ring::hmac::verify(&key, message, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let mut store = SecretStore::default();
        store.insert("p", "T", "hunter2");
        assert!(!format!("{store:?}").contains("hunter2"));
    }

    #[test]
    fn only_granted_names_are_handed_out() {
        let mut store = SecretStore::default();
        store.insert("p", "A", "1");
        store.insert("p", "B", "2");
        store.insert("q", "A", "3");
        let vals = store.for_plugin("p", &["A".to_string()].into());
        assert_eq!(vals.get("A").unwrap().expose(), "1");
        assert!(vals.get("B").is_none());
    }

    #[test]
    fn hmac_checks_use_the_secret() {
        let s = Secret::new("k");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k");
        let tag = ring::hmac::sign(&key, b"msg");
        assert!(verify_hmac(&s, false, b"msg", tag.as_ref()));
        assert!(!verify_hmac(&s, false, b"msg2", tag.as_ref()));
    }
}
