//! The HTTP API: routing, authentication, JSON in and out, problem+json. No business
//! rules live here: each handler parses, calls one `Gateway` use case, and renders.

pub mod audit;
mod body;
mod ekyc;
mod inbound;
pub mod metrics;
mod openapi;
pub mod problem;
mod qr;
pub mod ratelimit;
pub mod request_log;
pub mod routes;
pub mod startup;
mod subjects;
mod views;
mod webhooks;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::HttpLimits;
use crate::domain::audit::AddressPrefix;
use crate::domain::gateway::Gateway;
use crate::domain::request_log::RequestRecord;
use crate::plugins::Registry;

pub use startup::Startup;

/// What every handler can reach.
pub struct AppState {
    /// The use cases.
    pub gateway: Arc<Gateway>,
    /// Plugin registry, for the admin status endpoint.
    pub registry: Arc<Registry>,
    /// HTTP limits.
    pub limits: HttpLimits,
    /// Per-key rate limiter.
    pub limiter: ratelimit::RateLimiter,
    /// Per-plugin rate limiter of the unauthenticated inbound routes.
    pub inbound_limiter: ratelimit::RateLimiter<String>,
    /// Request counters for `/metrics`.
    pub http_metrics: metrics::HttpMetrics,
    /// What bounds the audit entries the API writes (failed sign-ins, new networks).
    pub audit: audit::AuditWatch,
    /// Flushes audit entries written after their change's own flush, many at once.
    pub flush_soon: Arc<audit::FlushSoon>,
    /// The API request log's writer.
    pub request_log: Arc<request_log::RequestLog>,
    /// Where `POST /v1/admin/backups` writes its copies (`DATA_DIR/backups`).
    pub backups: std::path::PathBuf,
    /// This node, among those sharing the store (`GET /v1/admin/nodes`).
    pub node: Arc<crate::node::ThisNode>,
}

/// The response type of every handler.
pub type Response = http::Response<Full<Bytes>>;

/// Accept connections until `shutdown` flips to true, then stop accepting and give
/// in-flight requests `shutdown_grace_ms` to finish. Until `startup` is ready, requests
/// are answered by [`startup::answer`] (alive, not ready); the connection limits apply
/// from the first connection on.
pub async fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    startup: Startup,
    mut shutdown: watch::Receiver<bool>,
) {
    let (conn_done_tx, mut conn_done_rx) = watch::channel(());
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tokio::spawn(refuse_connection(tcp));
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let startup = startup.clone();
                let mut shutdown = shutdown.clone();
                let alive = conn_done_tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let startup = startup.clone();
                        async move {
                            match startup.state() {
                                Some(state) => handle(state.clone(), peer, req).await,
                                None => Ok(startup::answer(req, &limits).await),
                            }
                        }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(tcp), service);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    drop(alive);
                    drop(slot);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(conn_done_tx);
    // Wait for connections to drain (every clone of the sender dropped), within the grace.
    let _ = tokio::time::timeout(grace, async {
        while conn_done_rx.changed().await.is_ok() {}
    })
    .await;
}

/// Answer a connection over the cap with a 503 and close it, without reading from it
/// (a bounded write: a client that does not read is dropped).
async fn refuse_connection(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut problem = problem::Problem::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "Too many connections",
        "the gateway is at its connection limit; retry shortly",
    );
    problem.retry_after = Some(1);
    let body = serde_json::to_vec(&problem).expect("problem serialises");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&body).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// The address a request came from, as a request extension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub std::net::IpAddr);

async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: http::Request<Incoming>,
) -> Result<Response, Infallible> {
    let request_id = ulid::Ulid::new().to_string().to_lowercase();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    // The client's network: all that the request and audit logs keep of its address.
    let client = AddressPrefix::of(peer.ip());
    let mut req = req;
    // The whole address, for the one route that must check it (inbound supplier webhooks
    // against the operator's allow-list); logs keep only the prefix above.
    req.extensions_mut().insert(PeerAddr(peer.ip()));
    let mut caller = None;
    let mut resp = match routes::route(&state, &client, req, &mut caller).await {
        Ok(r) => r,
        Err(mut problem) => {
            problem.request_id = request_id.as_str().into();
            problem.into_response()
        }
    };
    resp.headers_mut().insert(
        "x-request-id",
        http::HeaderValue::from_str(&request_id).expect("ulid is a valid header value"),
    );
    let route = routes::route_label(&method, &path);
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    state.http_metrics.record(route, &method, status, elapsed);
    let micros = elapsed.as_micros() as u64;
    tracing::info!(request_id, %method, route, status, micros, "request");
    // The route template, never the path: a path can name a subject.
    state.request_log.record(RequestRecord {
        id: ulid::Ulid::new(),
        method: method.as_str().to_string(),
        route: route.to_string(),
        status,
        key: caller,
        client: client.to_string(),
        micros,
    });
    Ok(resp)
}
