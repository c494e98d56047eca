//! Reading request bodies: size-capped, time-capped, JSON-only, and errors that point at
//! the field.
//!
//! A body is read only after the request is routed and authenticated, so an anonymous
//! client cannot make the gateway wait on (or buffer) a body at all. A request answered
//! before its body was read (an error) has the rest *drained*, a bounded number of bytes
//! within a bounded time: a client that writes its whole body before reading (Python's
//! `urllib`, `requests`, curl without `Expect`) then reads the problem instead of a reset
//! connection. What does not fit the drain budget is cut off by closing the connection.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::problem::{Problem, problems};

/// Read at most `limit` bytes of body before `deadline`. More is a 413, a declared
/// `Content-Length` above the limit is a 413 before anything is read, and a body still
/// arriving at the deadline is a 408. The body stays with the caller, to be drained.
pub async fn read_capped(
    body: &mut Incoming,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, Problem> {
    if body.size_hint().lower() > limit as u64 {
        return Err(problems::too_large(limit));
    }
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(problems::body_timeout()),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(problems::malformed_json(
                    format!("could not read the body: {e}"),
                    String::new(),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(problems::too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// Read and discard what is left of a body: at most `max_bytes`, until `deadline`.
/// Returns whether the body ended (the connection can then be kept alive).
pub async fn drain(body: &mut Incoming, max_bytes: usize, deadline: Instant) -> bool {
    if body.is_end_stream() {
        return true;
    }
    if body.size_hint().lower() > max_bytes as u64 {
        return false;
    }
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen = seen.saturating_add(data.len());
                    if seen > max_bytes {
                        return false;
                    }
                }
            }
            Err(_) | Ok(Some(Err(_))) => return false,
        }
    }
}

/// Parse JSON into `T`, naming the offending field as a JSON pointer.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let pointer = json_pointer(e.path());
        problems::malformed_json(e.inner().to_string(), pointer)
    })
}

fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                out.push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1")))
            }
            Segment::Enum { variant } => out.push_str(&format!("/{variant}")),
            Segment::Unknown => {}
        }
    }
    out
}

/// Require `Content-Type: application/json` (with or without parameters).
pub fn require_json(headers: &http::HeaderMap) -> Result<(), Problem> {
    let ok = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if ok {
        Ok(())
    } else {
        Err(problems::unsupported_media())
    }
}

/// Properties of the body parsers over generated (and hostile) input: nothing panics, every
/// refusal is the one documented problem, and what a client serialises parses back.
#[cfg(test)]
mod proptests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::api::routes::{
        CreateBalanceAlert, CreateCredit, CreateKey, CreateOrder, CreateReseller, CreateTopUp,
    };

    /// A body shaped like the API's: nested, optional and defaulted fields, no unknown ones.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        count: u32,
        #[serde(default)]
        note: Option<String>,
        tags: Vec<String>,
        extra: BTreeMap<String, i64>,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            any::<String>(),
            any::<u32>(),
            proptest::option::of(any::<String>()),
            proptest::collection::vec(any::<String>(), 0..4),
            proptest::collection::btree_map(any::<String>(), any::<i64>(), 0..4),
        )
            .prop_map(|(name, count, note, tags, extra)| Sample {
                name,
                count,
                note,
                tags,
                extra,
            })
    }

    /// What a refusal of `parse_json` must be: a 400 `malformed_json` whose pointer is
    /// empty (the document) or a JSON pointer.
    fn assert_malformed(p: &Problem) {
        assert_eq!((p.status, p.code), (400, "malformed_json"));
        let pointer = p.pointer.as_deref().unwrap_or_default();
        assert!(
            pointer.is_empty() || pointer.starts_with('/'),
            "{pointer:?}"
        );
    }

    /// Undo RFC 6901 escaping of one pointer segment.
    fn unescape(segment: &str) -> String {
        segment.replace("~1", "/").replace("~0", "~")
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_malformed_json(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(p) = parse_json::<Sample>(&bytes) {
                assert_malformed(&p);
            }
            if let Err(p) = parse_json::<serde_json::Value>(&bytes) {
                assert_malformed(&p);
            }
        }

        #[test]
        fn any_json_fits_the_request_types_or_is_malformed_json(text in json_text()) {
            let bytes = text.as_bytes();
            for result in [
                parse_json::<CreateOrder>(bytes).err(),
                parse_json::<CreateTopUp>(bytes).err(),
                parse_json::<CreateReseller>(bytes).err(),
                parse_json::<CreateKey>(bytes).err(),
                parse_json::<CreateCredit>(bytes).err(),
                parse_json::<CreateBalanceAlert>(bytes).err(),
            ]
            .into_iter()
            .flatten()
            {
                assert_malformed(&result);
            }
        }

        #[test]
        fn what_a_client_serialises_parses_back(value in sample(), pretty in any::<bool>()) {
            let bytes = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            prop_assert_eq!(parse_json::<Sample>(&bytes).unwrap(), value);
        }

        #[test]
        fn the_pointer_names_the_offending_field(outer in any::<String>(), inner in any::<String>()) {
            // A string where a number belongs, two levels down.
            let body = serde_json::json!({ outer.clone(): { inner.clone(): "not a number" } });
            let p = parse_json::<BTreeMap<String, BTreeMap<String, u32>>>(
                &serde_json::to_vec(&body).unwrap(),
            )
            .unwrap_err();
            assert_malformed(&p);
            let pointer = p.pointer.as_deref().unwrap();
            let segments: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
            prop_assert_eq!(segments, vec![outer, inner]);
        }

        #[test]
        fn an_unknown_field_is_refused_by_name(field in "[a-z_]{1,12}") {
            prop_assume!(!["name", "count", "note", "tags", "extra"].contains(&field.as_str()));
            let body = serde_json::json!({"name": "x", "count": 1, "tags": [], "extra": {}, field.clone(): 1});
            let p = parse_json::<Sample>(&serde_json::to_vec(&body).unwrap()).unwrap_err();
            assert_malformed(&p);
            prop_assert!(p.detail.contains(&field), "{}", p.detail);
        }

        #[test]
        fn only_json_media_types_are_accepted(
            value in prop_oneof!["[ -~]{0,40}", " ?(application|APPLICATION|text)/(json|JSON|problem\\+json|plain) ?"],
            params in "(;[ -~]{0,20})?",
            raw in proptest::collection::vec(any::<u8>(), 0..40),
            use_raw in proptest::bool::weighted(0.2),
        ) {
            let full = if use_raw { raw } else { format!("{value}{params}").into_bytes() };
            let Ok(v) = http::HeaderValue::from_bytes(&full) else {
                return Ok(());
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, v);
            // Header values that are not visible ASCII are no media type at all.
            let expected = std::str::from_utf8(&full).is_ok_and(|text| {
                text.is_ascii()
                    && text
                        .split(';')
                        .next()
                        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
            match require_json(&headers) {
                Ok(()) => prop_assert!(expected, "{full:?} accepted"),
                Err(p) => {
                    prop_assert!(!expected, "{full:?} refused");
                    prop_assert_eq!((p.status, p.code), (415, "unsupported_media_type"));
                }
            }
        }

        #[test]
        fn json_with_any_case_and_parameters_is_json(upper in proptest::collection::vec(any::<bool>(), 16), params in "(; ?[a-z]+=[a-z0-9-]+){0,2}") {
            let media: String = "application/json"
                .chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_str(&format!("{media}{params}")).unwrap(),
            );
            prop_assert!(require_json(&headers).is_ok());
        }
    }

    /// JSON documents, mostly objects with the API's field names (so the request types'
    /// own checks run, not only the syntax error path), sometimes cut short.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
            prop_oneof![
                Just("USD"),
                Just("usd"),
                Just("reseller"),
                Just("admin"),
                Just("test")
            ]
            .prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(field_name(), inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        let object = proptest::collection::btree_map(field_name(), value, 0..6)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()));
        (object, any::<prop::sample::Index>(), any::<bool>()).prop_map(|(v, cut, truncate)| {
            let text = v.to_string();
            if truncate {
                let at = cut.index(text.len() + 1);
                text.char_indices()
                    .map(|(i, _)| i)
                    .take_while(|i| *i <= at)
                    .last()
                    .map_or(text.clone(), |i| text[..i].to_string())
            } else {
                text
            }
        })
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop_oneof![
                Just("product_id"),
                Just("quantity"),
                Just("subject_ref"),
                Just("metadata"),
                Just("name"),
                Just("markup_bps"),
                Just("role"),
                Just("mode"),
                Just("amount"),
                Just("currency"),
                Just("note"),
                Just("below_minor"),
            ]
            .prop_map(String::from),
            any::<String>(),
        ]
    }
}
