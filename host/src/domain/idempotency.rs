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

impl IdemRecord {
    /// A new claim of `key` at `now_ms` by a request with `fingerprint`: in progress, for
    /// the id its creation will have.
    pub fn claim(key: &IdemKey, fingerprint: &[u8; 32], now_ms: u64) -> IdemRecord {
        IdemRecord {
            fingerprint: *fingerprint,
            state: IdemState::InProgress {
                started_ms: now_ms,
                order: Some(key.order),
            },
            created_at_ms: now_ms,
        }
    }
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

/// Properties of the idempotency rule over generated requests and sequences of them: the
/// same request replays what the first created, another request under the key is refused
/// (422), and a running first request holds the key (409) until its lease runs out.
#[cfg(test)]
mod proptests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn state() -> impl Strategy<Value = IdemState> {
        prop_oneof![
            (any::<u64>(), any::<Option<u128>>()).prop_map(|(started_ms, order)| {
                IdemState::InProgress {
                    started_ms,
                    order: order.map(|n| OrderId(ulid::Ulid(n))),
                }
            }),
            any::<u128>().prop_map(|n| IdemState::Order {
                order: OrderId(ulid::Ulid(n))
            }),
        ]
    }

    /// Arbitrary JSON values, for fingerprints.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::btree_map(any::<String>(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `value` as JSON with every object's keys in reverse order and spaces between
    /// tokens: the same request as another client would write it.
    fn written_otherwise(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let entries: Vec<_> = map.iter().rev().collect();
                out.push_str("{ ");
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\n");
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(" : ");
                    written_otherwise(v, out);
                }
                out.push_str(" }");
            }
            Value::Array(items) => {
                out.push_str("[ ");
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    written_otherwise(v, out);
                }
                out.push_str(" ]");
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }

    /// One step of a client's (or several clients') use of keys.
    #[derive(Debug, Clone)]
    enum Step {
        /// A request under key `key` with body number `body`, `after_ms` after the last step.
        Request { key: u8, body: u8, after_ms: u64 },
        /// The running request under `key` created what it was for.
        Finish { key: u8 },
        /// The running request under `key` failed: the key is freed.
        Fail { key: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..3, 0u8..3, prop_oneof![0u64..1_000, LEASE_MS - 10..LEASE_MS + 10])
                .prop_map(|(key, body, after_ms)| Step::Request { key, body, after_ms }),
            1 => (0u8..3).prop_map(|key| Step::Finish { key }),
            1 => (0u8..3).prop_map(|key| Step::Fail { key }),
        ]
    }

    proptest! {
        #[test]
        fn the_rule_for_any_record(record_state in state(), same in any::<bool>(), fp in any::<[u8; 32]>(), other in any::<[u8; 32]>(), now in any::<u64>()) {
            prop_assume!(fp != other);
            let record = IdemRecord { fingerprint: fp, state: record_state.clone(), created_at_ms: 0 };
            let presented = if same { fp } else { other };
            let expected = match (&record_state, same) {
                (_, false) => Claim::Mismatch,
                (IdemState::InProgress { started_ms, .. }, true) if now.saturating_sub(*started_ms) > LEASE_MS => Claim::New,
                (IdemState::InProgress { .. }, true) => Claim::InProgress,
                (done, true) => Claim::Replay(done.clone()),
            };
            prop_assert_eq!(judge(None, &presented, now), Claim::New);
            prop_assert_eq!(judge(Some(&record), &presented, now), expected);
        }

        #[test]
        fn any_sequence_of_requests_follows_the_rule(steps in proptest::collection::vec(step(), 1..40)) {
            // The store as the gateway keeps it, driven by `judge` alone; beside it what each
            // key's first request was and created.
            let mut store: HashMap<u8, IdemRecord> = HashMap::new();
            let mut created: HashMap<u8, (u8, OrderId)> = HashMap::new();
            let fp = |body: u8| fingerprint("POST", "/v1/orders", format!("{{\"n\":{body}}}").as_bytes());
            let mut now = 1_000_000u64;
            for step in steps {
                match step {
                    Step::Request { key, body, after_ms } => {
                        now += after_ms;
                        let claim = judge(store.get(&key), &fp(body), now);
                        match (&claim, store.get(&key), created.get(&key)) {
                            (Claim::New, None, _) => {}
                            (Claim::New, Some(r), _) => {
                                // Only a first request that died may be taken over.
                                let IdemState::InProgress { started_ms, .. } = r.state else {
                                    panic!("a finished key was claimed anew");
                                };
                                prop_assert!(now - started_ms > LEASE_MS);
                                prop_assert_eq!(r.fingerprint, fp(body));
                            }
                            (Claim::Mismatch, Some(r), _) => prop_assert_ne!(r.fingerprint, fp(body)),
                            (Claim::InProgress, Some(r), _) => {
                                prop_assert_eq!(r.fingerprint, fp(body));
                                let running = matches!(r.state, IdemState::InProgress { .. });
                                prop_assert!(running, "409 for a finished request");
                            }
                            (Claim::Replay(IdemState::Order { order }), Some(_), Some((first, made))) => {
                                // The same request, and what its first run created.
                                prop_assert_eq!(*first, body);
                                prop_assert_eq!(order, made);
                            }
                            other => panic!("{other:?} for {step:?}"),
                        }
                        if claim == Claim::New {
                            store.insert(key, IdemRecord {
                                fingerprint: fp(body),
                                state: IdemState::InProgress { started_ms: now, order: None },
                                created_at_ms: now,
                            });
                        }
                    }
                    Step::Finish { key } => {
                        if let Some(r) = store.get_mut(&key)
                            && matches!(r.state, IdemState::InProgress { .. })
                        {
                            let order = OrderId::new();
                            r.state = IdemState::Order { order };
                            let body = (0..3).find(|b| fp(*b) == r.fingerprint).unwrap();
                            created.insert(key, (body, order));
                        }
                    }
                    Step::Fail { key } => {
                        if store.get(&key).is_some_and(|r| matches!(r.state, IdemState::InProgress { .. })) {
                            store.remove(&key);
                        }
                    }
                }
            }
        }

        #[test]
        fn a_request_fingerprints_by_its_meaning(body in json(), path in "/v1/[a-z/]{0,20}") {
            let compact = serde_json::to_vec(&body).unwrap();
            let mut other = String::new();
            written_otherwise(&body, &mut other);
            prop_assert_eq!(
                fingerprint("POST", &path, &compact),
                fingerprint("POST", &path, other.as_bytes())
            );
            // The same body to another route, or by another method, is another request.
            prop_assert_ne!(fingerprint("POST", &path, &compact), fingerprint("PUT", &path, &compact));
            prop_assert_ne!(
                fingerprint("POST", &path, &compact),
                fingerprint("POST", &format!("{path}x"), &compact)
            );
        }

        #[test]
        fn any_bytes_fingerprint_and_any_key_is_judged_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..256), key in "\\PC{0,300}") {
            let _ = fingerprint("POST", "/v1/orders", &body);
            let valid = valid_key(&key);
            prop_assert_eq!(
                valid,
                !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
            );
        }
    }
}
