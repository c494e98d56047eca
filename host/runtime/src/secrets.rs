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

    /// Every value, for building a [`Scrubber`].
    pub fn values(&self) -> impl Iterator<Item = &Secret> {
        self.0.values()
    }
}

/// What replaces a secret value wherever a scrubber finds it.
pub const REDACTED: &str = "[REDACTED]";

/// Values shorter than this are not scrubbed: replacing every `abc` in a supplier's
/// answer would corrupt it, and a secret that short protects nothing anyway.
const MIN_SCRUBBED_LEN: usize = 6;

/// Finds a plugin's secret values, and their common encodings, in text the plugin reads
/// back or hands out, and replaces them with [`REDACTED`].
///
/// This is the second line of defence: secrets are bound to the hosts they may be sent
/// to, so a reflecting host that is not bound never sees one. A bound supplier that
/// echoes a request back is caught here, in the encodings listed in [`encodings`]; an
/// echo in some other transformation (reversed, split, re-encoded whole lines) is not,
/// which is why binding comes first.
#[derive(Clone, Default)]
pub struct Scrubber {
    finder: Option<aho_corasick::AhoCorasick>,
    /// The values it looks for, so [`Scrubber::with`] can add more.
    sources: Vec<Secret>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrubber(***)")
    }
}

/// The forms of `value` a scrubber looks for: as is, base64 (standard and URL-safe),
/// hex (both cases), percent-encoded, and JSON-escaped.
///
/// Base64 is looked for inside longer encoded text too (a reflected `Bearer <secret>`
/// line): a value that starts at byte `r` of a 3-byte group shows up as the encoding of
/// its bytes from the next group boundary on, whole groups only, for each `r`. That core
/// is what is found and replaced; the one or two characters at each end that also encode
/// neighbouring bytes are left.
fn encodings(value: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let bytes = value.as_bytes();
    let mut forms = vec![
        value.to_string(),
        hex::encode(bytes),
        hex::encode_upper(bytes),
    ];
    for skip in 0..3.min(bytes.len()) {
        let rest = &bytes[skip..];
        let whole = &rest[..rest.len() - rest.len() % 3];
        if whole.len() >= MIN_SCRUBBED_LEN {
            forms.push(STANDARD_NO_PAD.encode(whole));
            forms.push(URL_SAFE_NO_PAD.encode(whole));
        }
    }
    let percent: String = bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    forms.push(percent.clone());
    forms.push(percent.to_lowercase());
    let json = serde_json::to_string(value).expect("a string serialises");
    forms.push(json[1..json.len() - 1].to_string());
    forms.sort();
    forms.dedup();
    forms
}

impl Scrubber {
    /// A scrubber for `secrets`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Scrubber {
        let sources: Vec<Secret> = secrets.into_iter().cloned().collect();
        let patterns: Vec<String> = sources
            .iter()
            .map(Secret::expose)
            .filter(|v| v.len() >= MIN_SCRUBBED_LEN)
            .flat_map(encodings)
            .collect();
        if patterns.is_empty() {
            return Scrubber::default();
        }
        let finder = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("literal patterns always build");
        Scrubber {
            finder: Some(finder),
            sources,
        }
    }

    /// A scrubber that also finds `more` (the tokens one request carried).
    pub fn with(&self, more: &[Secret]) -> Scrubber {
        Scrubber::new(self.sources.iter().chain(more))
    }

    /// `text` with every secret form replaced.
    pub fn text<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match &self.finder {
            Some(f) if f.is_match(text) => f
                .replace_all(text, &vec![REDACTED; f.patterns_len()])
                .into(),
            _ => text.into(),
        }
    }

    /// `bytes` with every secret form replaced.
    pub fn bytes<'b>(&self, bytes: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
        match &self.finder {
            Some(f) if f.is_match(bytes) => f
                .replace_all_bytes(bytes, &vec![REDACTED.as_bytes(); f.patterns_len()])
                .into(),
            _ => bytes.into(),
        }
    }

    /// `text`, scrubbed, as an owned string (for values that move on).
    pub fn owned(&self, text: String) -> String {
        match self.text(&text) {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(scrubbed) => scrubbed,
        }
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
    fn a_scrubber_finds_the_value_in_every_common_encoding() {
        use base64::Engine as _;
        let secret = Secret::new("s3cr3t/+value=");
        let scrub = Scrubber::new([&secret]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret.expose());
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.expose());
        let line = |prefix: &str| {
            base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{}", secret.expose()))
        };
        for text in [
            format!("Bearer {}", secret.expose()),
            format!("x={b64}&y"),
            format!("x={url}"),
            format!("hex {}", hex::encode(secret.expose())),
            format!("HEX {}", hex::encode_upper(secret.expose())),
            "q=s3cr3t%2F%2Bvalue%3D".to_string(),
            line("Bearer "),
            line("Bearer  "),
            line("Bearer   "),
            "q=s3cr3t%2f%2bvalue%3d".to_string(),
        ] {
            let out = scrub.text(&text);
            assert!(out.contains(REDACTED), "{text} -> {out}");
            assert!(!out.contains(secret.expose()), "{out}");
        }
        let quoted = Secret::new("quo\"ted-value");
        let json = serde_json::json!({ "echo": quoted.expose() }).to_string();
        assert!(!Scrubber::new([&quoted]).text(&json).contains("ted-value"));
        assert_eq!(scrub.text("nothing here"), "nothing here");
        assert_eq!(
            &scrub.bytes(b"pre s3cr3t/+value= post")[..],
            b"pre [REDACTED] post"
        );
    }

    #[test]
    fn very_short_values_are_not_scrubbed_and_no_secrets_scrub_nothing() {
        let short = Secret::new("abc");
        assert_eq!(Scrubber::new([&short]).text("abcabc"), "abcabc");
        assert_eq!(Scrubber::default().text("x"), "x");
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
