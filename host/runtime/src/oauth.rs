//! OAuth2 client credentials (RFC 6749 section 4.4), run by the host for a plugin of
//! contract 0.2. The operator configures a client per plugin in the grants file (token
//! endpoint, the names of the secrets holding the client id and secret, the hosts the token
//! may go to); the plugin writes `Bearer ${oauth:NAME}` in a header and never sees the
//! token. The host fetches it at the first request that needs it, shares it between calls
//! (a plugin instance lives one call) and across hot reloads, fetches a new one shortly
//! before it expires or after the plugin reports it refused (`invalidate-token`), and lets
//! one fetch run at a time per client, so a burst of calls costs one token request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::egress::{EgressPolicy, OutboundRule};
use super::manifest::{OAuthGrant, TokenForm};
use super::secrets::Secret;

/// The longest token accepted from a token endpoint.
const MAX_TOKEN_BYTES: usize = 4096;
/// A token is kept at most this long, whatever its endpoint says (some say a year), so a
/// rotated client secret takes effect within a day.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Lifetime assumed when the endpoint names none.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// A token is replaced this long before it expires (or at 90% of a shorter life).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// One client's cached token, shared by every generation of the plugin.
#[derive(Default)]
pub struct TokenSlot {
    cached: Mutex<Option<(Secret, Instant)>>,
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl TokenSlot {
    fn current(&self) -> Option<Secret> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(_, refresh_at)| Instant::now() < *refresh_at)
            .map(|(token, _)| token.clone())
    }

    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Every plugin's token slots, by plugin, client name and client configuration (a changed
/// configuration starts with no token).
#[derive(Default)]
pub struct TokenCaches(Mutex<HashMap<String, Arc<TokenSlot>>>);

impl TokenCaches {
    fn slot(&self, plugin: &str, name: &str, grant: &OAuthGrant) -> Arc<TokenSlot> {
        let config = serde_json::to_string(grant).unwrap_or_default();
        let key = format!("{plugin}\0{name}\0{config}");
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }
}

/// One configured client.
pub struct OAuthClient {
    grant: OAuthGrant,
    hosts: Vec<OutboundRule>,
    slot: Arc<TokenSlot>,
}

/// A plugin's clients, by name.
#[derive(Default)]
pub struct OAuthClients(BTreeMap<String, OAuthClient>);

impl std::fmt::Debug for OAuthClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl OAuthClients {
    /// The effective clients of `plugin`, with their slots from `caches`.
    pub fn new(
        plugin: &str,
        effective: &BTreeMap<String, OAuthGrant>,
        caches: &TokenCaches,
    ) -> OAuthClients {
        OAuthClients(
            effective
                .iter()
                .map(|(name, grant)| {
                    let client = OAuthClient {
                        grant: grant.clone(),
                        hosts: grant
                            .hosts
                            .iter()
                            .filter_map(|r| OutboundRule::parse(r).ok())
                            .collect(),
                        slot: caches.slot(plugin, name, grant),
                    };
                    (name.clone(), client)
                })
                .collect(),
        )
    }

    /// Whether the plugin has a client `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Token requests sent for client `name` so far (for status and tests).
    pub fn fetches(&self, name: &str) -> u64 {
        self.0
            .get(name)
            .map_or(0, |c| c.slot.fetches.load(Ordering::Relaxed))
    }

    /// Drop client `name`'s cached token; `false` if there is no such client.
    pub fn invalidate(&self, name: &str) -> bool {
        self.0.get(name).map(|c| c.slot.forget()).is_some()
    }

    /// The token of client `name` for a request to `destination`: refused unless the
    /// client exists and is bound to the destination; fetched when none is cached.
    pub(super) async fn token_for(
        &self,
        policy: &EgressPolicy,
        name: &str,
        (scheme, host, port): (&str, &str, u16),
        deadline: tokio::time::Instant,
    ) -> Result<Secret, String> {
        let named = super::runtime::quote(name);
        let client = self
            .0
            .get(name)
            .ok_or_else(|| format!("OAuth client {named} is not configured for this plugin"))?;
        if !client.hosts.iter().any(|r| r.matches(scheme, host, port)) {
            return Err(format!(
                "OAuth client {named} is not bound to {scheme}://{host}:{port}; bind it under \
                 [plugins.{}.oauth.{name}] hosts",
                policy.plugin
            ));
        }
        if let Some(token) = client.slot.current() {
            return Ok(token);
        }
        let _one_at_a_time = client.slot.fetching.lock().await;
        if let Some(token) = client.slot.current() {
            return Ok(token);
        }
        client.slot.fetches.fetch_add(1, Ordering::Relaxed);
        let (token, lifetime) = fetch(policy, &client.grant, deadline)
            .await
            .map_err(|why| format!("OAuth client {named}: {why}"))?;
        let refresh_in = lifetime
            .min(MAX_LIFETIME)
            .saturating_sub(REFRESH_MARGIN.min(lifetime / 10));
        *client.slot.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((token.clone(), Instant::now() + refresh_in));
        Ok(token)
    }
}

/// Ask the token endpoint for a token; its lifetime from `expires_in`.
async fn fetch(
    policy: &EgressPolicy,
    grant: &OAuthGrant,
    deadline: tokio::time::Instant,
) -> Result<(Secret, Duration), String> {
    let secret = |name: &str| {
        policy
            .secrets
            .get(name)
            .cloned()
            .ok_or_else(|| format!("secret {} is not configured", super::runtime::quote(name)))
    };
    let (id, key) = (secret(&grant.client_id)?, secret(&grant.client_secret)?);
    let mut fields = vec![
        ("grant_type", "client_credentials"),
        ("client_id", id.expose()),
        ("client_secret", key.expose()),
    ];
    if let Some(scope) = &grant.scope {
        fields.push(("scope", scope));
    }
    let (content_type, body) = match grant.form {
        TokenForm::Urlencoded => (
            "application/x-www-form-urlencoded".to_string(),
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&fields)
                .finish()
                .into_bytes(),
        ),
        TokenForm::Multipart => multipart(&fields),
    };
    let request = http::Request::post(&grant.token_url)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::from(body))
        .map_err(|_| "the token URL is not a valid URL".to_string())?;
    let (status, body) = super::egress::exchange(policy, request, deadline).await?;
    if !status.is_success() {
        return Err(format!("the token endpoint answered {status}"));
    }
    read_token(&body)
}

/// `multipart/form-data` with text fields. Written here rather than pulled in: the crates
/// that build multipart bodies come with an HTTP client, and four text fields need a
/// boundary and a few header lines.
fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = format!("simgate-{}", hex::encode(rand_bytes()));
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn rand_bytes() -> [u8; 12] {
    let mut bytes = [0u8; 12];
    // A boundary needs to be unlikely in the values, not secret; a failed draw keeps zeros.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes
}

/// `access_token` and `expires_in` from a token response: at the top level (RFC 6749) or
/// under `data` (as some supplier APIs wrap it).
fn read_token(body: &[u8]) -> Result<(Secret, Duration), String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|_| "the token response is not JSON".to_string())?;
    let inner = if json.get("access_token").is_some() {
        &json
    } else {
        json.get("data").unwrap_or(&json)
    };
    let token = inner
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| {
            !t.is_empty()
                && t.len() <= MAX_TOKEN_BYTES
                && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .ok_or_else(|| "the token response has no usable access_token".to_string())?;
    let lifetime = match inner.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
        Some(Value::String(s)) => s.parse().ok().map(Duration::from_secs),
        _ => None,
    }
    .unwrap_or(DEFAULT_LIFETIME);
    Ok((Secret::new(token), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_the_top_level_or_under_data() {
        let (t, life) = read_token(br#"{"access_token":"abc","expires_in":3600}"#).unwrap();
        assert_eq!((t.expose(), life), ("abc", Duration::from_secs(3600)));
        let (t, life) =
            read_token(br#"{"data":{"access_token":"xyz","expires_in":"31536000"}}"#).unwrap();
        assert_eq!((t.expose(), life), ("xyz", Duration::from_secs(31_536_000)));
        let (_, life) = read_token(br#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(life, DEFAULT_LIFETIME);
    }

    #[test]
    fn unusable_tokens_are_refused() {
        assert!(read_token(b"not json").is_err());
        assert!(read_token(br#"{"access_token":""}"#).is_err());
        assert!(read_token(br#"{"access_token":"a\nb"}"#).is_err());
        assert!(read_token(br#"{"token":"abc"}"#).is_err());
        let long = format!(
            r#"{{"access_token":"{}"}}"#,
            "a".repeat(MAX_TOKEN_BYTES + 1)
        );
        assert!(read_token(long.as_bytes()).is_err());
    }

    #[test]
    fn a_multipart_body_names_every_field_between_boundaries() {
        let (ct, body) = multipart(&[("client_id", "id-1"), ("grant_type", "client_credentials")]);
        let boundary = ct.split("boundary=").nth(1).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"client_id\"\r\n\r\nid-1\r\n"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
