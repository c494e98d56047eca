//! What a plugin asks for (`plugin.toml`), what the operator grants (`grants.toml`), and
//! what it therefore gets: a capability is effective only where both say yes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::LimitOverrides;

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
    /// OAuth2 client names the plugin refers to as `${oauth:NAME}` (contract 0.2); the
    /// operator configures each in the grants file. Left out of a packed manifest when
    /// empty, so a package that uses no OAuth still loads in a gateway that predates it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oauth: Vec<String>,
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
    /// OAuth2 client-credentials clients by name, whose tokens the host fetches, caches
    /// and attaches for the plugin (contract 0.2).
    pub oauth: BTreeMap<String, OAuthGrant>,
    /// Source addresses (IPs or CIDR blocks) a supplier's webhooks may come from. When set,
    /// `POST /v1/inbound/{plugin}/webhook` refuses every other address before the plugin is
    /// called: for suppliers that do not sign their webhooks.
    pub webhook_sources: Vec<String>,
}

/// One OAuth2 client-credentials client (RFC 6749 section 4.4) the host runs for a plugin.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthGrant {
    /// The token endpoint, `https://host/path` (or `http://` to a private address in tests).
    pub token_url: String,
    /// Name of the secret holding the client id (granted to the plugin under `secrets`).
    pub client_id: String,
    /// Name of the secret holding the client secret (granted to the plugin under `secrets`).
    pub client_secret: String,
    /// How the token request carries the credentials.
    #[serde(default)]
    pub form: TokenForm,
    /// Optional `scope`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Outbound rules (as `outbound`) the token may be sent to; nowhere else.
    pub hosts: Vec<String>,
}

/// The body of a token request.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TokenForm {
    /// `application/x-www-form-urlencoded`, as RFC 6749 says.
    #[default]
    Urlencoded,
    /// `multipart/form-data`, as some supplier APIs take it.
    Multipart,
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
    /// Effective OAuth clients: requested, configured, with both credentials granted.
    pub oauth: BTreeMap<String, OAuthGrant>,
    /// Source addresses the plugin's webhooks may come from (empty: any).
    pub webhook_sources: Vec<String>,
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
            webhook_sources: grant.webhook_sources.clone(),
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
        for name in &requests.oauth {
            match grant.oauth.get(name) {
                Some(client)
                    if caps.secrets.contains(&client.client_id)
                        && caps.secrets.contains(&client.client_secret) =>
                {
                    caps.oauth.insert(name.clone(), client.clone());
                }
                _ => caps.denied.push(format!("oauth {name}")),
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
            oauth: vec!["partner".into()],
        }
    }

    #[test]
    fn a_manifest_without_oauth_packs_as_a_gateway_before_oauth_can_read_it() {
        let plain = Requests {
            oauth: vec![],
            ..requests()
        };
        let text = toml::to_string(&plain).unwrap();
        assert!(!text.contains("oauth"), "{text}");
        let with = toml::to_string(&requests()).unwrap();
        assert!(with.contains("oauth"), "{with}");
    }

    #[test]
    fn an_oauth_client_is_effective_only_with_both_its_secrets_granted() {
        let client = OAuthGrant {
            token_url: "https://api.example.com/token".into(),
            client_id: "TOKEN".into(),
            client_secret: "OTHER".into(),
            hosts: vec!["https://api.example.com:443".into()],
            ..Default::default()
        };
        let grant = |secrets: &[&str]| Grant {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            oauth: [("partner".to_string(), client.clone())].into(),
            ..Default::default()
        };
        let caps = Capabilities::effective(&requests(), Some(&grant(&["TOKEN", "OTHER"])));
        assert_eq!(caps.oauth.get("partner"), Some(&client));
        let caps = Capabilities::effective(&requests(), Some(&grant(&["TOKEN"])));
        assert!(caps.oauth.is_empty());
        assert!(caps.denied.contains(&"oauth partner".to_string()));
        let unrequested = Requests {
            oauth: vec![],
            ..requests()
        };
        let caps = Capabilities::effective(&unrequested, Some(&grant(&["TOKEN", "OTHER"])));
        assert!(caps.oauth.is_empty(), "not requested, not effective");
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
        assert_eq!(caps.denied, vec!["secret OTHER", "oauth partner"]);
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
        assert_eq!(caps.denied.len(), 5);
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
