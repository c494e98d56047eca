//! A reflecting server for black-box tests: a real HTTP/1.1 server on a loopback port that
//! answers every request `200` with a JSON echo of it and records it.
//!
//! The echo is `{"method", "target", "headers": [{"name", "value"}, ...], "body"}`: every
//! header line as it arrived (names lowercased, repeated ones included) and the body as a
//! UTF-8 (lossy) string. It is the "other host" of the secret-binding tests: a plugin
//! pointed here must never send a secret bound to another host, and so can never read one
//! back from the echo either; [`Reflector::received`] lets the test check both.
//!
//! It keeps connections alive like the supplier simulators, and never panics on bad input:
//! a request it cannot read is answered with an error status and the connection closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::http1::{self, Reply};
use crate::sim::{MAX_BODY, Recorded, lock};

struct Shared {
    connections: AtomicU64,
    received: Mutex<Vec<Recorded>>,
}

/// A loopback reflecting server; stops with the test process.
pub struct Reflector {
    port: u16,
    shared: Arc<Shared>,
}

impl Reflector {
    /// Start one.
    pub fn start() -> Reflector {
        let (listener, port) = http1::bind_loopback();
        let shared = Arc::new(Shared {
            connections: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
        });
        http1::spawn_keep_alive(listener, MAX_BODY, shared.clone());
        Reflector { port, shared }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Every request it got, oldest first.
    pub fn received(&self) -> Vec<Recorded> {
        lock(&self.shared.received).clone()
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Whether `needle` appears anywhere in what it received (targets, header values or
    /// bodies).
    pub fn saw(&self, needle: &str) -> bool {
        self.received().iter().any(|r| {
            r.target.contains(needle)
                || r.header_list
                    .iter()
                    .any(|(k, v)| k.contains(needle) || v.contains(needle))
                || String::from_utf8_lossy(&r.body).contains(needle)
        })
    }
}

/// The echo of `request`.
fn echo(request: &http1::Request) -> Value {
    let headers: Vec<Value> = request
        .header_list
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    json!({
        "method": request.method,
        "target": request.target,
        "headers": headers,
        "body": String::from_utf8_lossy(&request.body),
    })
}

impl http1::Handler for Shared {
    fn handle(&self, request: &http1::Request, connection: u64) -> Reply {
        lock(&self.received).push(Recorded::new(request, connection));
        Reply::json(200, &echo(request))
    }

    fn accepted(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::SeqCst) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    #[test]
    fn every_request_is_echoed_and_recorded() {
        let reflector = Reflector::start();
        let agent = crate::sim::agent(Duration::from_secs(10));
        let mut response = agent
            .post(reflector.url("/any/path?q=1"))
            .header("authorization", "Bearer canary-token")
            .header("x-thing", "one")
            .send(&b"hello \xff"[..])
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let echoed: Value =
            serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap();
        assert_eq!(echoed["method"], "POST");
        assert_eq!(echoed["target"], "/any/path?q=1");
        assert_eq!(echoed["body"], "hello \u{fffd}");
        let headers = echoed["headers"].as_array().unwrap();
        assert!(
            headers.contains(&json!({"name": "authorization", "value": "Bearer canary-token"}))
        );
        assert!(headers.contains(&json!({"name": "x-thing", "value": "one"})));

        let got = reflector.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/any/path");
        assert_eq!(got[0].header("Authorization"), "Bearer canary-token");
        assert!(reflector.saw("canary-token"));
        assert!(!reflector.saw("never-sent"));
    }

    #[test]
    fn repeated_headers_and_pipelined_requests_are_all_kept() {
        let reflector = Reflector::start();
        let mut s = TcpStream::connect(("127.0.0.1", reflector.port())).unwrap();
        s.write_all(
            b"GET /a HTTP/1.1\r\nx-secret: one\r\nx-secret: two\r\n\r\n\
              HEAD /b HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        assert!(answer.contains(r#"{"name":"x-secret","value":"one"}"#));
        assert!(answer.contains(r#"{"name":"x-secret","value":"two"}"#));
        assert!(!answer.contains("\"/b\""), "a HEAD answer has no body");
        assert_eq!(reflector.received().len(), 2);
        assert_eq!(reflector.connections(), 1);
    }
}
