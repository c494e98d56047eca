//! The route table and the handlers. Each handler: authenticate, parse, call one use case,
//! render JSON.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::domain::accounts::Role;
use crate::domain::catalog::ProductFilter;
use crate::domain::gateway::{NewOrder, Principal};
use crate::domain::ids::OrderId;

use super::body::{parse_json, read_capped, require_json};
use super::problem::{Problem, problems};
use super::{AppState, Response};

/// Route a request.
pub async fn route(state: &AppState, req: http::Request<Incoming>) -> Result<Response, Problem> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["healthz"], &Method::GET) => {
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        (["readyz"], &Method::GET) => readyz(state),
        (["v1", "products"], &Method::GET) => list_products(state, &req).await,
        (["v1", "orders"], &Method::POST) => create_order(state, req).await,
        (["v1", "orders", id], &Method::GET) => get_order(state, &req, id),
        (["v1", "esims", iccid], &Method::GET) => get_esim(state, &req, iccid),
        (["v1", "admin", "plugins"], &Method::GET) => admin_plugins(state, &req),
        (["metrics"], &Method::GET) => metrics(state, &req),
        (
            ["healthz"]
            | ["readyz"]
            | ["v1", "products"]
            | ["v1", "orders"]
            | ["v1", "orders", _]
            | ["v1", "esims", _]
            | ["v1", "admin", "plugins"]
            | ["metrics"],
            _,
        ) => Err(problems::method_not_allowed(&method)),
        _ => Err(problems::no_route(&path)),
    }
}

/// A low-cardinality label for a path (ids replaced), for logs and metrics.
pub fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["v1", "products"] => "/v1/products",
        ["v1", "orders"] => "/v1/orders",
        ["v1", "orders", _] => "/v1/orders/{id}",
        ["v1", "esims", _] => "/v1/esims/{iccid}",
        ["v1", "admin", "plugins"] => "/v1/admin/plugins",
        ["metrics"] => "/metrics",
        _ => "other",
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("response types serialise");
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn authenticate<B>(state: &AppState, req: &http::Request<B>) -> Result<Principal, Problem> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(problems::unauthenticated)?;
    let key = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(problems::unauthenticated)?;
    Ok(state.gateway.authenticate(key.trim())?)
}

fn query_pairs<B>(req: &http::Request<B>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], escaped) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (c, None) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn readyz(state: &AppState) -> Result<Response, Problem> {
    let plugins = state.registry.status();
    let serving = plugins.iter().filter(|p| p.version.is_some()).count();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "plugins_serving": serving}),
    ))
}

async fn list_products(
    state: &AppState,
    req: &http::Request<Incoming>,
) -> Result<Response, Problem> {
    let who = authenticate(state, req)?;
    let mut filter = ProductFilter::default();
    for (k, v) in query_pairs(req) {
        match k.as_str() {
            "country" if v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic()) => {
                filter.country = Some(v.to_uppercase())
            }
            "country" => {
                return Err(problems::invalid_query(
                    "country must be an ISO 3166-1 alpha-2 code".into(),
                ));
            }
            "region" if !v.is_empty() && v.len() <= 64 => filter.region = Some(v),
            "region" => {
                return Err(problems::invalid_query(
                    "region must be 1-64 characters".into(),
                ));
            }
            other => {
                return Err(problems::invalid_query(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    let products = state.gateway.catalog(&who, &filter).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"data": products, "has_more": false}),
    ))
}

/// `POST /v1/orders` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    product_id: String,
    #[serde(default = "one")]
    quantity: u32,
    #[serde(default)]
    subject_ref: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

fn one() -> u32 {
    1
}

async fn create_order(state: &AppState, req: http::Request<Incoming>) -> Result<Response, Problem> {
    let who = authenticate(state, &req)?;
    require_json(req.headers())?;
    let body = read_capped(req.into_body(), state.limits.max_body_bytes).await?;
    let body: CreateOrder = parse_json(&body)?;
    let view = state
        .gateway
        .place_order(
            &who,
            NewOrder {
                product_id: body.product_id,
                quantity: body.quantity,
                subject_ref: body.subject_ref,
                metadata: body.metadata.map(serde_json::Value::Object),
            },
        )
        .await?;
    Ok(json(StatusCode::CREATED, &view))
}

fn get_order(
    state: &AppState,
    req: &http::Request<Incoming>,
    id: &str,
) -> Result<Response, Problem> {
    let who = authenticate(state, req)?;
    // A malformed id cannot name anything the caller owns: same 404 as a missing one.
    let id: OrderId = id
        .parse()
        .map_err(|_| Problem::from(crate::domain::gateway::DomainError::NotFound("order")))?;
    Ok(json(StatusCode::OK, &state.gateway.order(&who, id)?))
}

fn get_esim(
    state: &AppState,
    req: &http::Request<Incoming>,
    iccid: &str,
) -> Result<Response, Problem> {
    let who = authenticate(state, req)?;
    Ok(json(StatusCode::OK, &state.gateway.esim(&who, iccid)?))
}

fn admin_plugins(state: &AppState, req: &http::Request<Incoming>) -> Result<Response, Problem> {
    let who = authenticate(state, req)?;
    if who.role != Role::Admin {
        // Not even the existence of admin routes is confirmed to resellers.
        return Err(problems::no_route(req.uri().path()));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"data": state.registry.status()}),
    ))
}

/// Prometheus metrics; admin keys only (why: see `api::metrics`).
fn metrics(state: &AppState, req: &http::Request<Incoming>) -> Result<Response, Problem> {
    let who = authenticate(state, req)?;
    if who.role != Role::Admin {
        return Err(problems::no_route(req.uri().path()));
    }
    let text = super::metrics::render(&state.registry, &state.http_metrics);
    let mut resp = http::Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(super::metrics::CONTENT_TYPE),
    );
    Ok(resp)
}
