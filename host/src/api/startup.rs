//! The API before the gateway is ready.
//!
//! `simgate serve` binds its port first, then opens the store, loads the plugins and
//! recovers unfinished work, which can take a while on a large data directory. Meanwhile a
//! supervisor or load balancer must be able to tell "starting" from "dead": `/healthz`
//! answers 200 (the process is alive), `/readyz` and every other route 503 `starting` with
//! a `Retry-After`. [`Startup::ready`] hands the finished [`AppState`] over once; from then
//! on every request is routed as usual. The check is one atomic load per request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::problem::Problem;
use super::views::{Health, Live};
use super::{AppState, Response, body};
use crate::config::HttpLimits;

/// Seconds a client is told to wait before asking again while the gateway starts.
const RETRY_AFTER_SECS: u32 = 1;

/// The application state, once start-up has made it. Cloned into every connection.
#[derive(Clone, Default)]
pub struct Startup(Arc<OnceLock<Arc<AppState>>>);

impl Startup {
    /// A gateway that is not ready yet.
    pub fn new() -> Startup {
        Startup::default()
    }

    /// Serve the API with `state` from now on (after recovery and the first plugin load).
    /// Only the first call counts: readiness is never withdrawn.
    pub fn ready(&self, state: Arc<AppState>) {
        let _ = self.0.set(state);
    }

    /// The state, once ready.
    pub fn state(&self) -> Option<&Arc<AppState>> {
        self.0.get()
    }
}

/// The answer to `req` while the gateway starts: alive on `GET /healthz`, 503 `starting`
/// for the rest. A request body is drained within the usual budget so a client that
/// writes it before reading still gets the answer; past the budget the connection closes.
pub(super) async fn answer(req: http::Request<Incoming>, limits: &HttpLimits) -> Response {
    let request_id = ulid::Ulid::new().to_string().to_lowercase();
    let mut resp = if req.method() == http::Method::GET && req.uri().path() == "/healthz" {
        alive()
    } else {
        let mut body = req.into_body();
        let deadline = Instant::now() + Duration::from_millis(limits.drain_timeout_ms);
        let drained = body::drain(&mut body, limits.max_drain_bytes, deadline).await;
        let mut problem = starting();
        problem.close = !drained;
        problem.request_id = request_id.as_str().into();
        problem.into_response()
    };
    tracing::debug!(
        request_id,
        status = resp.status().as_u16(),
        "request while starting"
    );
    resp.headers_mut().insert(
        "x-request-id",
        http::HeaderValue::from_str(&request_id).expect("ulid is a valid header value"),
    );
    resp
}

/// 200 `{"status":"ok"}`, as `/healthz` answers once ready.
fn alive() -> Response {
    let body = serde_json::to_vec(&Health { status: Live::Ok }).expect("health serialises");
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// 503 `starting`.
pub(super) fn starting() -> Problem {
    let mut problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "starting",
        "Starting",
        "the gateway is opening its store, loading plugins and recovering unfinished orders; retry shortly",
    );
    problem.retry_after = Some(RETRY_AFTER_SECS);
    problem
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;

    /// Send one request to `addr`: status, `Retry-After`, body as JSON.
    async fn call(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: &'static str,
    ) -> (u16, Option<String>, serde_json::Value) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_starting_gateway_is_alive_but_not_ready() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(super::super::serve(
            listener,
            HttpLimits::default(),
            Startup::new(),
            shutdown,
        ));
        let (status, _, body) = call(addr, "GET", "/healthz", "").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        for (method, path, body) in [
            ("GET", "/readyz", ""),
            ("GET", "/v1/products", ""),
            ("POST", "/v1/orders", r#"{"product_id":"x","quantity":1}"#),
        ] {
            let (status, retry, problem) = call(addr, method, path, body).await;
            assert_eq!(status, 503, "{method} {path}");
            assert_eq!(retry.as_deref(), Some("1"), "{method} {path}");
            assert_eq!(problem["code"], "starting", "{method} {path}");
            assert!(
                problem["request_id"]
                    .as_str()
                    .is_some_and(|id| !id.is_empty())
            );
        }
        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
