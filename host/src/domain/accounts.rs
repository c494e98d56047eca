//! Resellers and their API keys.
//!
//! A key looks like `sgk_test_<30 base62>_<6 base62 checksum>`. The checksum (a keyed-free
//! SHA-256 prefix) lets the gateway refuse a mistyped or truncated key before touching the
//! store, and lets secret scanners recognise leaked keys. The key is shown once; the store
//! keeps only its HMAC-SHA256 under a pepper that lives outside the database.

use serde::{Deserialize, Serialize};

use super::ids::{KeyId, ResellerId};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operator: every reseller, plugins, audit log.
    Admin,
    /// A reseller: its own catalog, orders, eSIMs, balance.
    Reseller,
    /// A reseller's read-only key (dashboards, support tools).
    ResellerReadonly,
}

impl Role {
    /// Whether this role may change state (place orders, cancel, top up).
    pub fn can_write(self) -> bool {
        matches!(self, Role::Admin | Role::Reseller)
    }
}

/// Live or test mode, as the key's prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// `sgk_live_`.
    Live,
    /// `sgk_test_`.
    Test,
}

impl KeyMode {
    /// The account whose records a key of this mode reads and writes for reseller
    /// `reseller`. Live records are under the reseller's id; test-mode records (orders,
    /// eSIMs, ledger and balances, events, webhook endpoints, consents) under its *test
    /// account*, an id derived from it by flipping its last bit. A test key therefore
    /// cannot name a live record, nor a live key a test one: the separation is in every
    /// store key, not in a filter each read must remember.
    pub fn account(self, reseller: ResellerId) -> ResellerId {
        match self {
            KeyMode::Live => reseller,
            KeyMode::Test => {
                let mut bytes = reseller.to_bytes();
                bytes[15] ^= 1;
                ResellerId::from_bytes(bytes)
            }
        }
    }

    /// The reseller whose account of this mode `account` is.
    pub fn reseller_of(self, account: ResellerId) -> ResellerId {
        // Flipping the bit back: the mapping is its own inverse.
        self.account(account)
    }
}

/// A reseller account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reseller {
    /// Id.
    pub id: ResellerId,
    /// Display name (a company name, not a person's).
    pub name: String,
    /// Markup over wholesale in basis points (1500 = 15%).
    pub markup_bps: u32,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Per currency, the available balance (minor units) below which an order's hold
    /// raises `balance.low`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub low_balance_alerts: std::collections::BTreeMap<String, i64>,
    /// The same, for the test account (test-mode keys set and trigger them).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub test_low_balance_alerts: std::collections::BTreeMap<String, i64>,
    /// When the account was closed: its keys stop working, and its account data are
    /// deleted once the retention period after closure is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<u64>,
}

/// The stored form of an API key: never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public identifier.
    pub id: KeyId,
    /// Owner; `None` for admin keys.
    pub reseller: Option<ResellerId>,
    /// Role.
    pub role: Role,
    /// Live or test.
    pub mode: KeyMode,
    /// HMAC-SHA256 of the key under the pepper.
    pub hash: KeyHash,
    /// The first characters of the key, to tell keys apart in listings.
    pub hint: String,
    /// Creation time.
    pub created_at_ms: u64,
    /// When it stops working (revocation, or the end of a rotation grace period).
    pub expires_at_ms: Option<u64>,
}

impl ApiKey {
    /// Whether the key works at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|t| now_ms < t)
    }
}

/// HMAC-SHA256 of an API key under the server pepper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyHash(#[serde(with = "hex_bytes")] pub [u8; 32]);

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = 30;
const CHECK_LEN: usize = 6;

/// Mint a new key string: 30 uniformly random base62 characters (~178 bits).
pub fn mint_key(mode: KeyMode, rng: &dyn ring::rand::SecureRandom) -> String {
    let mut body = String::with_capacity(BODY_LEN);
    let mut buf = [0u8; 64];
    while body.len() < BODY_LEN {
        rng.fill(&mut buf).expect("the system random source works");
        // Rejection sampling: 248 = 4 * 62, so accepted bytes map uniformly.
        for b in buf.iter().filter(|b| **b < 248).take(BODY_LEN - body.len()) {
            body.push(BASE62[(*b % 62) as usize] as char);
        }
    }
    let prefix = prefix(mode);
    let check = checksum(prefix, &body);
    format!("{prefix}{body}_{check}")
}

fn prefix(mode: KeyMode) -> &'static str {
    match mode {
        KeyMode::Live => "sgk_live_",
        KeyMode::Test => "sgk_test_",
    }
}

fn checksum(prefix: &str, body: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{prefix}{body}").as_bytes());
    let mut n = u64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"));
    let mut out = [0u8; CHECK_LEN];
    for c in out.iter_mut() {
        *c = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

/// Check a presented key's shape and checksum; returns its mode. Says nothing about
/// whether the key exists.
pub fn check_key_format(key: &str) -> Option<KeyMode> {
    let (mode, rest) = if let Some(r) = key.strip_prefix("sgk_live_") {
        (KeyMode::Live, r)
    } else if let Some(r) = key.strip_prefix("sgk_test_") {
        (KeyMode::Test, r)
    } else {
        return None;
    };
    let (body, check) = rest.split_once('_')?;
    if body.len() != BODY_LEN
        || check.len() != CHECK_LEN
        || !body.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    // Not secret-dependent: the checksum is derived from the presented key alone.
    (checksum(prefix(mode), body) == check).then_some(mode)
}

/// The first characters of a key, safe to show in listings and logs.
pub fn key_hint(key: &str) -> String {
    key.chars().take(13).collect::<String>() + "…"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_pass_their_own_checksum() {
        let key = mint_key(KeyMode::Test, &ring::rand::SystemRandom::new());
        assert!(key.starts_with("sgk_test_"));
        assert_eq!(check_key_format(&key), Some(KeyMode::Test));
    }

    #[test]
    fn a_mistyped_key_fails_the_checksum() {
        let key = mint_key(KeyMode::Live, &ring::rand::SystemRandom::new());
        let mut typo = key.clone().into_bytes();
        typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
        assert_eq!(check_key_format(&String::from_utf8(typo).unwrap()), None);
        assert_eq!(check_key_format(&key[..key.len() - 1]), None);
        assert_eq!(check_key_format("Bearer nonsense"), None);
    }
}

/// Properties of the key checksum: every minted key passes, no single typo or truncation
/// does, and no string makes the check panic.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn mode() -> impl Strategy<Value = KeyMode> {
        prop_oneof![Just(KeyMode::Live), Just(KeyMode::Test)]
    }

    fn minted(mode: KeyMode) -> String {
        mint_key(mode, &ring::rand::SystemRandom::new())
    }

    proptest! {
        #[test]
        fn every_minted_key_checks_in_its_mode(mode in mode()) {
            let key = minted(mode);
            prop_assert_eq!(check_key_format(&key), Some(mode));
            prop_assert_eq!(key.len(), "sgk_live_".len() + BODY_LEN + 1 + CHECK_LEN);
            prop_assert!(key.is_ascii());
        }

        #[test]
        fn a_key_with_any_one_character_changed_is_refused(
            mode in mode(),
            at in any::<prop::sample::Index>(),
            with in any::<char>(),
        ) {
            let key = minted(mode);
            let at = at.index(key.len());
            let old = key.as_bytes()[at] as char;
            prop_assume!(with != old);
            let mut typo = key.clone();
            typo.replace_range(at..at + 1, with.encode_utf8(&mut [0; 4]));
            prop_assert_eq!(check_key_format(&typo), None, "{} accepted", typo);
        }

        #[test]
        fn a_truncated_or_extended_key_is_refused(
            mode in mode(),
            cut in any::<prop::sample::Index>(),
            tail in "\\PC{1,4}",
        ) {
            let key = minted(mode);
            let cut = cut.index(key.len());
            prop_assert_eq!(check_key_format(&key[..cut]), None);
            prop_assert_eq!(check_key_format(&format!("{key}{tail}")), None);
            prop_assert_eq!(check_key_format(&format!("{tail}{key}")), None);
        }

        #[test]
        fn any_string_is_checked_without_panicking(s in "\\PC*", prefixed in "sgk_(live|test)_\\PC{0,40}") {
            for s in [s, prefixed] {
                if let Some(mode) = check_key_format(&s) {
                    // Only the documented shape passes.
                    prop_assert!(s.starts_with(prefix(mode)));
                    prop_assert_eq!(s.len(), "sgk_live_".len() + BODY_LEN + 1 + CHECK_LEN);
                }
                let hint = key_hint(&s);
                prop_assert!(hint.chars().count() <= 14);
            }
        }
    }
}
