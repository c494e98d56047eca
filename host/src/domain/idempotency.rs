//! Idempotency keys: a POST that costs money or reaches a supplier carries
//! `Idempotency-Key`. Same key and same request: the first outcome is replayed (for an
//! order, the order as it is now); same key, different request: 422; first request still
//! running: 409; no key: 400. Keys are scoped per reseller.

use serde::{Deserialize, Serialize};

use super::ids::{OrderId, ResellerId};

/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;
/// How long an unfinished first request holds its key before a retry may take it over
/// (the first request crashed). Longer than any request can run.
pub const LEASE_MS: u64 = 60_000;

/// The scope and key of one idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemKey {
    /// The reseller whose key space this is.
    pub reseller: ResellerId,
    /// The client's key.
    pub key: String,
    /// The id what the request creates gets (an order; for a credit, its ledger entry),
    /// chosen when the key is claimed and stored with the claim: the claim then binds the
    /// key to what it created without another write, and a replay (even after a crash
    /// between the creation and anything else) finds it once it exists.
    pub order: OrderId,
}

impl IdemKey {
    /// Store key: reseller id ++ SHA-256 of the client's key (fixed length, no injection).
    pub fn storage_key(&self) -> Vec<u8> {
        let mut k = self.reseller.to_bytes().to_vec();
        k.extend_from_slice(
            ring::digest::digest(&ring::digest::SHA256, self.key.as_bytes()).as_ref(),
        );
        k
    }
}

/// What a key stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum IdemState {
    /// The first request is running.
    InProgress {
        /// When it started.
        started_ms: u64,
        /// The order it creates, if it creates one (answers replays once the order exists).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<OrderId>,
    },
    /// The first request created this order (or, for a credit, this ledger entry).
    Order {
        /// The order, or the credit's ledger entry id.
        order: OrderId,
    },
}

/// A stored idempotency record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    /// SHA-256 of method, path and body of the first request.
    #[serde(with = "hex_fp")]
    pub fingerprint: [u8; 32],
    /// State.
    #[serde(flatten)]
    pub state: IdemState,
    /// When the key was first used.
    pub created_at_ms: u64,
}

/// Result of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: this request runs.
    New,
    /// Same key, same request, finished: replay.
    Replay(IdemState),
    /// Same key, different request.
    Mismatch,
    /// Same key, first request still running.
    InProgress,
}

/// Fingerprint of a request: its method, path and the *meaning* of its body. A JSON body
/// is fingerprinted in a canonical form (object keys sorted, no insignificant white
/// space), so a client that serialises the same request with its keys in another order
/// is not told it reused the key for a different request. Other bodies count as bytes.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(method.as_bytes());
    ctx.update(b" ");
    ctx.update(path.as_bytes());
    ctx.update(b"\n");
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => {
            let mut canonical = Vec::with_capacity(body.len());
            write_canonical(&value, &mut canonical);
            ctx.update(&canonical);
        }
        Err(_) => ctx.update(body),
    }
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

/// `value` as compact JSON with every object's keys sorted (whatever order the JSON
/// library keeps them in).
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("writing to a Vec");
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec"),
    }
}

/// Decide what an existing record means for a new request (the rule, in one place).
pub fn judge(existing: Option<&IdemRecord>, fingerprint: &[u8; 32], now_ms: u64) -> Claim {
    match existing {
        None => Claim::New,
        Some(r) if &r.fingerprint != fingerprint => Claim::Mismatch,
        Some(IdemRecord {
            state: IdemState::InProgress { started_ms, .. },
            ..
        }) => {
            if now_ms.saturating_sub(*started_ms) > LEASE_MS {
                // The first request died before finishing; nothing was committed for it.
                Claim::New
            } else {
                Claim::InProgress
            }
        }
        Some(r) => Claim::Replay(r.state.clone()),
    }
}

/// Whether a client key is acceptable.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x21..0x7f).contains(&b))
}

mod hex_fp {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        hex::decode(String::deserialize(d)?)
            .map_err(serde::de::Error::custom)?
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fp: [u8; 32], state: IdemState) -> IdemRecord {
        IdemRecord {
            fingerprint: fp,
            state,
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_request_fingerprints_by_its_meaning_not_its_bytes() {
        let a = fingerprint(
            "POST",
            "/v1/orders",
            br#"{"product_id":"p:1","quantity":2,"metadata":{"b":1,"a":[1,{"y":0,"x":0}]}}"#,
        );
        let reordered = fingerprint(
            "POST",
            "/v1/orders",
            b"{ \"metadata\": {\"a\": [1, {\"x\": 0, \"y\": 0}], \"b\": 1},\n \"quantity\": 2, \"product_id\": \"p:1\" }",
        );
        assert_eq!(a, reordered);
        let other = fingerprint(
            "POST",
            "/v1/orders",
            br#"{"product_id":"p:1","quantity":3}"#,
        );
        assert_ne!(a, other);
        assert_ne!(
            fingerprint("POST", "/v1/orders", b"not json"),
            fingerprint("POST", "/v1/orders", b"not  json")
        );
    }

    #[test]
    fn the_rule_for_reused_keys() {
        let fp = fingerprint("POST", "/v1/orders", b"{}");
        let other = fingerprint("POST", "/v1/orders", b"{\"x\":1}");
        let running = rec(
            fp,
            IdemState::InProgress {
                started_ms: 1_000,
                order: None,
            },
        );
        assert_eq!(judge(None, &fp, 0), Claim::New);
        assert_eq!(judge(Some(&running), &other, 1_001), Claim::Mismatch);
        assert_eq!(judge(Some(&running), &fp, 1_001), Claim::InProgress);
        assert_eq!(
            judge(Some(&running), &fp, 1_000 + LEASE_MS + 1),
            Claim::New,
            "abandoned"
        );
        let done = rec(
            fp,
            IdemState::Order {
                order: OrderId::new(),
            },
        );
        assert!(matches!(
            judge(Some(&done), &fp, 5),
            Claim::Replay(IdemState::Order { .. })
        ));
    }

    #[test]
    fn keys_are_printable_and_bounded() {
        assert!(valid_key("order-2026-11-22-0001"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(256)));
    }
}
