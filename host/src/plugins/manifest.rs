//! What a plugin asks for (`plugin.toml`), what the operator grants (`grants.toml`), and
//! what it therefore gets: a capability is effective only where both say yes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::LimitOverrides;

use super::egress::OutboundRule;
use super::error::LoadError;

/// The largest manifest we read; a real one is well under 4 KiB.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// A plugin package's manifest, `NAME/plugin.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Stable plugin id: lower-case letters, digits and `-`; equals the folder name.
    pub id: String,
    /// Semantic version; must equal what `describe` returns.
    pub version: String,
    /// File name of the component inside the folder.
    pub wasm: String,
    /// Hex SHA-256 of the component. Required in a deployable package: the host refuses a
    /// component whose digest differs (a half-copied or swapped file).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Capabilities the plugin asks for.
    #[serde(default)]
    pub requests: Requests,
    /// Limits the plugin asks for (may only lower the host's).
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// Capabilities a plugin asks for in its manifest.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Requests {
    /// Outbound rules, `scheme://host:port` (`*` for any port, `*.` prefix for subdomains).
    pub outbound: Vec<String>,
    /// Secret names the plugin refers to as `${secret:NAME}` or in `verify-hmac`.
    pub secrets: Vec<String>,
    /// Config keys the plugin reads.
    pub config: Vec<String>,
}

impl Manifest {
    /// Read and validate `DIR/plugin.toml`.
    pub fn read(dir: &Path) -> Result<Manifest, LoadError> {
        let path = dir.join("plugin.toml");
        let text = read_capped(&path, MAX_MANIFEST_BYTES)?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| LoadError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |message: String| LoadError::Manifest {
            path: path.to_owned(),
            message,
        };
        if !is_plugin_id(&self.id) {
            return Err(bad(format!(
                "id {:?} must be 1-64 characters of a-z, 0-9 and '-'",
                self.id
            )));
        }
        if self.wasm.contains('/') || self.wasm.contains('\\') || self.wasm.starts_with('.') {
            return Err(bad(format!(
                "wasm {:?} must be a plain file name in the plugin folder",
                self.wasm
            )));
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(bad("sha256 must be 64 hex digits".into()));
        }
        for rule in &self.requests.outbound {
            OutboundRule::parse(rule).map_err(|e| bad(format!("outbound {rule:?}: {e}")))?;
        }
        Ok(())
    }

    /// Path of the component next to the manifest.
    pub fn wasm_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.wasm)
    }

    /// Check the component at `wasm_path`, whose hex SHA-256 is `actual`, against
    /// `sha256`; with `required`, a manifest without one is refused too.
    pub fn check_digest(
        &self,
        wasm_path: &Path,
        actual: &str,
        required: bool,
    ) -> Result<(), LoadError> {
        match &self.sha256 {
            Some(expected) if !expected.eq_ignore_ascii_case(actual) => Err(LoadError::Digest {
                id: self.id.clone(),
                path: wasm_path.to_owned(),
                expected: expected.clone(),
                actual: actual.to_string(),
            }),
            None if required => Err(LoadError::MissingDigest {
                id: self.id.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Whether `id` is a valid plugin id (also safe as a folder name and a metrics label).
pub fn is_plugin_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The operator's grants file: per plugin id, what it may have.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// Grants by plugin id.
    pub plugins: BTreeMap<String, Grant>,
}

/// What the operator grants one plugin.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Grant {
    /// Outbound rules the operator allows (same syntax as the manifest's).
    pub outbound: Vec<String>,
    /// Secret names the operator allows; the values live in the secrets file.
    pub secrets: Vec<String>,
    /// Per secret name, the outbound rules (same syntax as `outbound`) the secret may be
    /// sent to as a `${secret:NAME}` placeholder. A secret bound to no host can only be
    /// used host-side (`verify-hmac`): a plugin can never send it anywhere, not even to
    /// another of its granted hosts (one that reflects requests would hand it back).
    pub secret_hosts: BTreeMap<String, Vec<String>>,
    /// Config values by key.
    pub config: BTreeMap<String, String>,
    /// Allow egress to loopback, private, link-local and metadata addresses. Only for
    /// tests and on-premise suppliers: it reopens the door to server-side request forgery.
    pub allow_private_addresses: bool,
    /// Limits the operator sets for this plugin (may only lower the host's).
    pub limits: LimitOverrides,
}

impl Grants {
    /// Read the grants file; a missing file grants nothing.
    pub fn read(path: &Path) -> Result<Grants, LoadError> {
        if !path.exists() {
            return Ok(Grants::default());
        }
        let text = read_capped(path, MAX_MANIFEST_BYTES * 16)?;
        toml::from_str(&text).map_err(|e| LoadError::Grants {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// What a plugin actually gets: the intersection of its requests and its grant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(rename = "PluginCapabilities")]
pub struct Capabilities {
    /// Effective outbound rules.
    pub outbound: Vec<String>,
    /// Effective secret names.
    pub secrets: BTreeSet<String>,
    /// Per effective secret, the destinations it may be sent to (within the effective
    /// outbound rules, which egress checks first).
    pub secret_hosts: BTreeMap<String, Vec<String>>,
    /// Effective config values (requested keys the operator set).
    pub config: BTreeMap<String, String>,
    /// Whether egress may reach non-public addresses.
    pub allow_private_addresses: bool,
    /// Requested capabilities the operator did not grant, for status and `plugin check`.
    pub denied: Vec<String>,
}

impl Capabilities {
    /// Intersect a manifest's requests with the operator's grant.
    pub fn effective(requests: &Requests, grant: Option<&Grant>) -> Capabilities {
        let empty = Grant::default();
        let grant = grant.unwrap_or(&empty);
        let mut caps = Capabilities {
            allow_private_addresses: grant.allow_private_addresses,
            ..Default::default()
        };
        for rule in &requests.outbound {
            if grant.outbound.contains(rule) {
                caps.outbound.push(rule.clone());
            } else {
                caps.denied.push(format!("outbound {rule}"));
            }
        }
        for name in &requests.secrets {
            if grant.secrets.contains(name) {
                caps.secrets.insert(name.clone());
                // A binding narrows where a secret may go; egress checks the outbound
                // rules first, so a binding can never widen where the plugin may go.
                let hosts: Vec<String> = grant
                    .secret_hosts
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter(|rule| OutboundRule::parse(rule).is_ok())
                    .cloned()
                    .collect();
                if !hosts.is_empty() {
                    caps.secret_hosts.insert(name.clone(), hosts);
                }
            } else {
                caps.denied.push(format!("secret {name}"));
            }
        }
        for key in &requests.config {
            match grant.config.get(key) {
                Some(value) => {
                    caps.config.insert(key.clone(), value.clone());
                }
                None => caps.denied.push(format!("config {key}")),
            }
        }
        caps
    }

    /// Whether egress (`wasi:http`) is linked at all.
    pub fn has_egress(&self) -> bool {
        !self.outbound.is_empty()
    }
}

/// Hex SHA-256 of a component, as written in `plugin.toml`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Read a small text file, refusing anything larger than `cap` bytes.
fn read_capped(path: &Path, cap: u64) -> Result<String, LoadError> {
    use std::io::Read;
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(cap + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > cap {
        return Err(LoadError::Manifest {
            path: path.to_owned(),
            message: format!("larger than {cap} bytes"),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Requests {
        Requests {
            outbound: vec!["https://api.example.com:443".into()],
            secrets: vec!["TOKEN".into(), "OTHER".into()],
            config: vec!["region".into()],
        }
    }

    #[test]
    fn capability_is_effective_only_where_both_say_yes() {
        let grant = Grant {
            outbound: vec![
                "https://api.example.com:443".into(),
                "https://x.test:443".into(),
            ],
            secrets: vec!["TOKEN".into()],
            config: [("region".to_string(), "eu".to_string())].into(),
            ..Default::default()
        };
        let caps = Capabilities::effective(&requests(), Some(&grant));
        assert_eq!(caps.outbound, vec!["https://api.example.com:443"]);
        assert_eq!(caps.secrets, ["TOKEN".to_string()].into());
        assert_eq!(caps.config["region"], "eu");
        assert_eq!(caps.denied, vec!["secret OTHER"]);
    }

    #[test]
    fn only_granted_secrets_keep_their_host_bindings() {
        let grant = Grant {
            outbound: vec!["https://api.example.com:443".into()],
            secrets: vec!["TOKEN".into()],
            secret_hosts: [
                (
                    "TOKEN".to_string(),
                    vec!["https://api.example.com:443".to_string(), "bad".to_string()],
                ),
                (
                    "OTHER".to_string(),
                    vec!["https://api.example.com:443".to_string()],
                ),
            ]
            .into(),
            ..Default::default()
        };
        let caps = Capabilities::effective(&requests(), Some(&grant));
        assert_eq!(
            caps.secret_hosts["TOKEN"],
            vec!["https://api.example.com:443"]
        );
        assert!(!caps.secret_hosts.contains_key("OTHER"), "not granted");
        let unbound = Grant {
            secret_hosts: Default::default(),
            ..grant
        };
        let caps = Capabilities::effective(&requests(), Some(&unbound));
        assert!(caps.secrets.contains("TOKEN"));
        assert!(
            caps.secret_hosts.is_empty(),
            "granted, but sendable nowhere"
        );
    }

    #[test]
    fn no_grant_means_nothing_but_the_safe_imports() {
        let caps = Capabilities::effective(&requests(), None);
        assert!(!caps.has_egress());
        assert!(caps.secrets.is_empty() && caps.config.is_empty());
        assert_eq!(caps.denied.len(), 4);
    }

    #[test]
    fn plugin_ids_are_safe_folder_names() {
        assert!(is_plugin_id("sandbox"));
        assert!(is_plugin_id("acme-2"));
        assert!(!is_plugin_id("../etc"));
        assert!(!is_plugin_id("Acme"));
        assert!(!is_plugin_id(""));
    }
}
