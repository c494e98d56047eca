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
