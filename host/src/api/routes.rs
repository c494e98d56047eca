//! The route table and the handlers. [`ROUTES`] is the one list of what the API serves:
//! dispatch, metrics labels and `/openapi.json` are all derived from it, so a route cannot
//! exist without being documented. Each handler: authenticate, parse, call one `Gateway`
//! use case, render.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::domain::accounts::{KeyMode, Role};
use crate::domain::audit::{AddressPrefix, AuditAction, LedgerEntryId};
use crate::domain::catalog::ProductFilter;
use crate::domain::events::EventType;
use crate::domain::gateway::{DomainError, Principal};
use crate::domain::idempotency::{self, Claim, IdemKey, IdemState};
use crate::domain::ids::{KeyId, OrderId, ResellerId};
use crate::domain::orders::OrderStatus;
use crate::domain::use_cases::orders::{MAX_QUANTITY, MAX_SUBJECT_REF, NewOrder};

use super::body::{drain, parse_json, read_capped, require_json};
use super::problem::{Problem, problems};
use super::views::{
    All, BackupView, BalanceAlertView, BalanceView, EventView, Health, KeyView, Live, NewKeyView,
    NodeView, Page, Readiness, Ready, RequestView, ResellerView, TransactionView,
};
use super::{AppState, Response, audit, ekyc, inbound, qr, subjects, webhooks};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (health, spec).
    Public,
    /// Any valid key (reseller data is scoped to the key's reseller).
    Key,
    /// Admin keys only; others get 404.
    Admin,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path pattern; `{name}` segments are parameters.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// One-line summary for the spec.
    pub summary: &'static str,
    /// Whether it requires `Idempotency-Key`.
    pub idempotent: bool,
    /// Request body schema name, if any (a component of `/openapi.json`).
    pub request: Option<&'static str>,
    /// Success status and response schema name (likewise).
    pub response: (u16, &'static str),
    /// Another success status with the same body (200 for a POST that found what it
    /// would have created).
    pub also: Option<u16>,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
}

const PAGING: &[(&str, &str)] = &[
    ("limit", "page size, 1 to 100 (default 20)"),
    ("starting_after", "id of the last item of the previous page"),
];

macro_rules! route {
    ($m:ident $p:literal, $a:ident, $s:literal, idem=$i:literal, req=$req:expr, resp=($st:literal, $rs:literal), query=$q:expr) => {
        route!($m $p, $a, $s, idem=$i, req=$req, resp=($st, $rs), also=None, query=$q)
    };
    ($m:ident $p:literal, $a:ident, $s:literal, idem=$i:literal, req=$req:expr, resp=($st:literal, $rs:literal), also=$also:expr, query=$q:expr) => {
        Route {
            method: Method::$m,
            path: $p,
            access: Access::$a,
            summary: $s,
            idempotent: $i,
            request: $req,
            response: ($st, $rs),
            also: $also,
            query: $q,
        }
    };
}

/// Everything the API serves.
pub static ROUTES: &[Route] = &[
    route!(GET "/healthz", Public, "Liveness", idem=false, req=None, resp=(200, "Health"), query=&[]),
    route!(GET "/readyz", Public, "Readiness: the store answers and plugins are loaded", idem=false, req=None, resp=(200, "Ready"), query=&[]),
    route!(GET "/openapi.json", Public, "This document", idem=false, req=None, resp=(200, "OpenApi"), query=&[]),
    route!(GET "/v1/products", Key, "Catalog priced for the caller", idem=false, req=None, resp=(200, "ProductList"),
        query=&[("country", "ISO 3166-1 alpha-2 code"), ("region", "region name, e.g. europe")]),
    route!(POST "/v1/orders", Key, "Buy eSIMs; answers once fulfilled or after a short wait", idem=true, req=Some("NewOrder"), resp=(201, "Order"), query=&[]),
    route!(GET "/v1/orders", Key, "The caller's orders, newest first", idem=false, req=None, resp=(200, "OrderList"),
        query=&[("limit", "page size, 1 to 100 (default 20)"), ("starting_after", "id of the last item of the previous page"),
                ("status", "accepted, awaiting_kyc, submitted, fulfilled, failed or cancelled")]),
    route!(GET "/v1/orders/{id}", Key, "One order with its eSIMs", idem=false, req=None, resp=(200, "Order"), query=&[]),
    route!(POST "/v1/orders/{id}/cancel", Key, "Cancel a never-installed order and refund it", idem=true, req=None, resp=(200, "Order"), query=&[]),
    route!(GET "/v1/esims/{iccid}", Key, "One eSIM with activation code and install links", idem=false, req=None, resp=(200, "Esim"), query=&[]),
    route!(GET "/v1/esims/{iccid}/qr", Key, "The activation code as a QR image", idem=false, req=None, resp=(200, "QrImage"),
        query=&[("format", "png (default) or svg")]),
    route!(GET "/v1/esims/{iccid}/usage", Key, "Live usage from the supplier", idem=false, req=None, resp=(200, "Usage"), query=&[]),
    route!(POST "/v1/esims/{iccid}/topups", Key, "Add a plan to an eSIM", idem=true, req=Some("NewTopUp"), resp=(201, "Order"), query=&[]),
    route!(GET "/v1/balance", Key, "Prepaid balances by currency", idem=false, req=None, resp=(200, "BalanceList"), query=&[]),
    route!(GET "/v1/balance/transactions", Key, "Ledger entries, newest first", idem=false, req=None, resp=(200, "TransactionList"), query=PAGING),
    route!(PUT "/v1/balance/alerts/{currency}", Key, "Raise balance.low when an order takes the available balance below this", idem=false, req=Some("NewBalanceAlert"), resp=(200, "BalanceAlert"), query=&[]),
    route!(DELETE "/v1/balance/alerts/{currency}", Key, "Stop raising balance.low in this currency", idem=false, req=None, resp=(204, "NoContent"), query=&[]),
    route!(GET "/v1/events", Key, "Events, newest first: what a webhook receiver that was down missed", idem=false, req=None, resp=(200, "EventList"), query=&[
        ("limit", "page size, 1 to 100 (default 20)"),
        ("starting_after", "id of the last event of the previous page"),
        ("type", "only events of this type, e.g. order.fulfilled"),
    ]),
    route!(POST "/v1/events/{id}/redeliver", Key, "Deliver an event again, with its id, to every endpoint that wants it", idem=false, req=None, resp=(202, "Redelivery"), query=&[]),
    route!(POST "/v1/webhook-endpoints", Key, "Register a webhook endpoint; its signing secret is shown once", idem=false, req=Some("NewWebhookEndpoint"), resp=(201, "WebhookEndpointWithSecret"), query=&[]),
    route!(GET "/v1/webhook-endpoints", Key, "Webhook endpoints, oldest first", idem=false, req=None, resp=(200, "WebhookEndpointList"), query=&[]),
    route!(GET "/v1/webhook-endpoints/{id}", Key, "One webhook endpoint", idem=false, req=None, resp=(200, "WebhookEndpoint"), query=&[]),
    route!(PATCH "/v1/webhook-endpoints/{id}", Key, "Change a webhook endpoint: url, event types, description, enabled", idem=false, req=Some("WebhookEndpointChange"), resp=(200, "WebhookEndpoint"), query=&[]),
    route!(DELETE "/v1/webhook-endpoints/{id}", Key, "Delete a webhook endpoint: nothing more is delivered to it", idem=false, req=None, resp=(204, "NoContent"), query=&[]),
    route!(POST "/v1/webhook-endpoints/{id}/rotate-secret", Key, "A new signing secret, shown once; the old one also signs for 24 h", idem=false, req=None, resp=(200, "WebhookEndpointWithSecret"), query=&[]),
    route!(POST "/v1/webhook-endpoints/{id}/test", Key, "Send a webhook.test message now; answers the attempt", idem=false, req=None, resp=(200, "WebhookAttempt"), query=&[]),
    route!(GET "/v1/webhook-endpoints/{id}/attempts", Key, "Delivery attempts, newest first", idem=false, req=None, resp=(200, "WebhookAttemptList"), query=PAGING),
    route!(POST "/v1/ekyc/sessions", Key, "Open the identity verification (eKYC) of an order awaiting it; 200 with the session it has, if it has one", idem=false, req=Some("NewEkycSession"), resp=(201, "EkycSession"), also=Some(200), query=&[]),
    route!(GET "/v1/ekyc/sessions/{id}", Key, "One eKYC session: status, times, and the redirect URL while pending", idem=false, req=None, resp=(200, "EkycSession"), query=&[]),
    route!(GET "/v1/inbound/{plugin}/ekyc", Public, "A verification provider's callback (or redirect), for the plugin to verify and read", idem=false, req=None, resp=(200, "InboundAck"), query=&[]),
    route!(POST "/v1/inbound/{plugin}/ekyc", Public, "A verification provider's callback, for the plugin to verify and read", idem=false, req=None, resp=(200, "InboundAck"), query=&[]),
    route!(POST "/v1/inbound/{plugin}/webhook", Public, "A supplier's webhook: verified and read by its plugin, accepted once its events are durable, applied on a job", idem=false, req=None, resp=(200, "InboundAck"), query=&[]),
    route!(POST "/v1/consents", Key, "Record a consent grant or withdrawal for a subject (append-only)", idem=false, req=Some("NewConsent"), resp=(201, "Consent"), query=&[]),
    route!(GET "/v1/subjects/{subject_ref}/consents", Key, "A subject's consent per purpose, its history, and a consent receipt", idem=false, req=None, resp=(200, "SubjectConsents"), query=&[]),
    route!(GET "/v1/subjects/{subject_ref}/export", Key, "Everything kept about a subject, as one machine-readable document (access, portability)", idem=false, req=None, resp=(200, "SubjectExport"), query=&[]),
    route!(POST "/v1/subjects/{subject_ref}/rectify", Key, "Replace the subject_ref and/or metadata on every record of a subject", idem=false, req=Some("SubjectRectification"), resp=(200, "SubjectAction"), query=&[]),
    route!(POST "/v1/subjects/{subject_ref}/erase", Key, "Erase a subject's personal fields everywhere (its key is destroyed); says what is kept and why", idem=false, req=None, resp=(200, "SubjectAction"), query=&[]),
    route!(POST "/v1/subjects/{subject_ref}/restrict", Key, "Restrict processing: no new order or eKYC session for the subject", idem=false, req=None, resp=(200, "SubjectAction"), query=&[]),
    route!(POST "/v1/subjects/{subject_ref}/unrestrict", Key, "Lift a restriction", idem=false, req=None, resp=(200, "SubjectAction"), query=&[]),
    route!(POST "/v1/subjects/{subject_ref}/object", Key, "The subject objects: every non-essential purpose it granted is withdrawn", idem=false, req=None, resp=(200, "SubjectAction"), query=&[]),
    route!(POST "/v1/keys/rotate", Key, "Replace the calling key; the old one works for a grace period", idem=false, req=None, resp=(201, "NewKey"), query=&[]),
    route!(GET "/v1/admin/plugins", Admin, "Plugin status", idem=false, req=None, resp=(200, "PluginList"), query=&[]),
    route!(GET "/v1/admin/nodes", Admin, "The gateway nodes sharing this store: which is alive, and which plugin versions each serves", idem=false, req=None, resp=(200, "NodeList"), query=&[]),
    route!(GET "/metrics", Admin, "Prometheus metrics: aggregate counters only", idem=false, req=None, resp=(200, "MetricsText"), query=&[]),
    route!(GET "/v1/admin/resellers", Admin, "All resellers", idem=false, req=None, resp=(200, "ResellerList"), query=&[]),
    route!(POST "/v1/admin/resellers", Admin, "Create a reseller", idem=false, req=Some("NewReseller"), resp=(201, "Reseller"), query=&[]),
    route!(POST "/v1/admin/resellers/{id}/keys", Admin, "Create an API key (shown once)", idem=false, req=Some("NewKeyRequest"), resp=(201, "NewKey"), query=&[]),
    route!(POST "/v1/admin/resellers/{id}/credits", Admin, "Credit a prepaid balance", idem=true, req=Some("NewCredit"), resp=(201, "Balance"), query=&[]),
    route!(GET "/v1/admin/requests", Admin, "The API request log, newest first: route, status, key, client network, latency; no bodies", idem=false, req=None, resp=(200, "RequestLogEntryList"), query=PAGING),
    route!(POST "/v1/admin/resellers/{id}/close", Admin, "Close an account: its keys stop working; its data go after the retention period (409 while orders are open)", idem=false, req=None, resp=(200, "Reseller"), query=&[]),
    route!(POST "/v1/admin/keys/{id}/revoke", Admin, "Revoke an API key now", idem=false, req=None, resp=(200, "Key"), query=&[]),
    route!(POST "/v1/admin/backups", Admin, "Copy the database as it stands between two writes to a new file under DATA_DIR/backups (writes wait while it is read); `simgate backup` collects it with the key files", idem=false, req=None, resp=(201, "Backup"), query=&[]),
    route!(GET "/v1/admin/audit", Admin, "The audit log of security events, newest first", idem=false, req=None, resp=(200, "AuditEntryList"), query=&[
        ("limit", "page size, 1 to 100 (default 20)"),
        ("starting_after", "seq of the last entry of the previous page"),
        ("action", "only entries of this action, e.g. auth.failed"),
        ("reseller", "only entries about this reseller (rsl_...)"),
        ("since_ms", "only entries at or after this time, ms since the epoch"),
        ("until_ms", "only entries at or before this time, ms since the epoch"),
    ]),
];

/// Find the route for a method and path, with its parameters.
fn find<'p>(method: &Method, path: &'p str) -> Result<(&'static Route, Vec<&'p str>), Problem> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let mut pattern_found = None;
    for route in ROUTES {
        let pattern: Vec<&str> = route.path.split('/').skip(1).collect();
        if pattern.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        let fits = pattern.iter().zip(&segments).all(|(p, s)| {
            if p.starts_with('{') {
                params.push(*s);
                !s.is_empty()
            } else {
                p == s
            }
        });
        if fits {
            if route.method == *method {
                return Ok((route, params));
            }
            pattern_found = Some(route.path);
        }
    }
    Err(match pattern_found {
        Some(pattern) => problems::method_not_allowed(method, allowed_methods(pattern)),
        None => problems::no_route(path),
    })
}

/// The `Allow` value of a path pattern: its routes' methods, in table order. Computed once
/// per pattern (a bounded set: the route table's).
fn allowed_methods(pattern: &'static str) -> &'static str {
    static ALLOW: std::sync::OnceLock<std::collections::HashMap<&'static str, &'static str>> =
        std::sync::OnceLock::new();
    let table = ALLOW.get_or_init(|| {
        let mut by_path: std::collections::HashMap<&'static str, Vec<&'static str>> =
            Default::default();
        for route in ROUTES {
            by_path
                .entry(route.path)
                .or_default()
                .push(route.method.as_str());
        }
        by_path
            .into_iter()
            .map(|(path, methods)| (path, &*Box::leak(methods.join(", ").into_boxed_str())))
            .collect()
    });
    table.get(pattern).copied().unwrap_or("")
}

/// A low-cardinality label for a path (the route pattern), for logs and metrics.
pub fn route_label(method: &Method, path: &str) -> &'static str {
    find(method, path).map(|(r, _)| r.path).unwrap_or("other")
}

/// Route a request from the client network `at`: find its route and authenticate from the
/// headers alone, then read the body (capped in size and time), then dispatch. A request
/// refused before its body was read has the body drained within a budget (see `body`), and
/// its connection closed when that budget runs out first.
/// `caller` is set to the key that authenticated, for the request log.
pub async fn route(
    state: &AppState,
    at: &AddressPrefix,
    req: http::Request<Incoming>,
    caller: &mut Option<KeyId>,
) -> Result<Response, Problem> {
    let path = req.uri().path().to_string();
    let (parts, mut body) = req.into_parts();
    let limits = &state.limits;
    let read = match admit(state, &parts, &path, at).await {
        Ok(admitted) => {
            let deadline = Instant::now() + Duration::from_millis(limits.body_read_timeout_ms);
            read_capped(&mut body, limits.max_body_bytes, deadline)
                .await
                .map(|bytes| (admitted, bytes))
        }
        Err(problem) => Err(problem),
    };
    let ((route, params, who), bytes) = match read {
        Ok(read) => read,
        Err(mut problem) => {
            let deadline = Instant::now() + Duration::from_millis(limits.drain_timeout_ms);
            problem.close = !drain(&mut body, limits.max_drain_bytes, deadline).await;
            return Err(problem);
        }
    };
    *caller = who.as_ref().map(|w| w.key);
    let req = http::Request::from_parts(parts, bytes);
    let p = |i: usize| params.get(i).copied().unwrap_or_default();
    let who_ref = who.as_ref();
    let who = || who_ref.ok_or_else(problems::unauthenticated);
    match (route.method.as_str(), route.path) {
        ("GET", "/healthz") => Ok(json(StatusCode::OK, &Health { status: Live::Ok })),
        ("GET", "/readyz") => readyz(state).await,
        ("GET", "/openapi.json") => Ok(json(StatusCode::OK, &super::openapi::document())),
        ("GET", "/v1/products") => list_products(state, who()?, &req).await,
        ("POST", "/v1/orders") => create_order(state, who()?, req, at).await,
        ("GET", "/v1/orders") => list_orders(state, who()?, &req).await,
        ("GET", "/v1/orders/{id}") => Ok(json(
            StatusCode::OK,
            &state.gateway.order(who()?, order_id(p(0))?).await?,
        )),
        ("POST", "/v1/orders/{id}/cancel") => cancel_order(state, who()?, req, p(0), at).await,
        ("GET", "/v1/esims/{iccid}") => Ok(json(
            StatusCode::OK,
            &state.gateway.esim(who()?, p(0)).await?,
        )),
        ("GET", "/v1/esims/{iccid}/qr") => esim_qr(state, who()?, &req, p(0)).await,
        ("GET", "/v1/esims/{iccid}/usage") => Ok(json(
            StatusCode::OK,
            &state.gateway.usage(who()?, p(0)).await?,
        )),
        ("POST", "/v1/esims/{iccid}/topups") => create_top_up(state, who()?, req, p(0), at).await,
        ("GET", "/v1/balance") => balance(state, who()?).await,
        ("GET", "/v1/balance/transactions") => transactions(state, who()?, &req).await,
        ("PUT", "/v1/balance/alerts/{currency}") => {
            set_balance_alert(state, who()?, req, p(0)).await
        }
        ("DELETE", "/v1/balance/alerts/{currency}") => {
            remove_balance_alert(state, who()?, p(0)).await
        }
        ("GET", "/v1/events") => events(state, who()?, &req).await,
        ("POST", "/v1/events/{id}/redeliver") => webhooks::redeliver(state, who()?, p(0)).await,
        ("POST", "/v1/webhook-endpoints") => webhooks::create(state, who()?, req).await,
        ("GET", "/v1/webhook-endpoints") => webhooks::list(state, who()?).await,
        ("GET", "/v1/webhook-endpoints/{id}") => webhooks::get(state, who()?, p(0)).await,
        ("PATCH", "/v1/webhook-endpoints/{id}") => webhooks::update(state, who()?, req, p(0)).await,
        ("DELETE", "/v1/webhook-endpoints/{id}") => webhooks::delete(state, who()?, p(0)).await,
        ("POST", "/v1/webhook-endpoints/{id}/rotate-secret") => {
            webhooks::rotate_secret(state, who()?, p(0)).await
        }
        ("POST", "/v1/webhook-endpoints/{id}/test") => webhooks::test(state, who()?, p(0)).await,
        ("GET", "/v1/webhook-endpoints/{id}/attempts") => {
            webhooks::attempts(state, who()?, &req, p(0)).await
        }
        ("POST", "/v1/ekyc/sessions") => ekyc::start(state, who()?, req, at).await,
        ("GET", "/v1/ekyc/sessions/{id}") => ekyc::get(state, who()?, p(0)).await,
        ("GET" | "POST", "/v1/inbound/{plugin}/ekyc") => ekyc::callback(state, req, p(0)).await,
        ("POST", "/v1/inbound/{plugin}/webhook") => {
            inbound::supplier_webhook(state, req, p(0)).await
        }
        ("POST", "/v1/consents") => subjects::record_consent(state, who()?, req, at).await,
        ("GET", "/v1/subjects/{subject_ref}/consents") => {
            subjects::subject_consents(state, who()?, p(0)).await
        }
        ("GET", "/v1/subjects/{subject_ref}/export") => {
            subjects::export(state, who()?, p(0), at).await
        }
        ("POST", "/v1/subjects/{subject_ref}/rectify") => {
            subjects::rectify(state, who()?, req, p(0), at).await
        }
        (
            "POST",
            path @ ("/v1/subjects/{subject_ref}/erase"
            | "/v1/subjects/{subject_ref}/restrict"
            | "/v1/subjects/{subject_ref}/unrestrict"
            | "/v1/subjects/{subject_ref}/object"),
        ) => {
            let action = path.rsplit('/').next().unwrap_or_default();
            subjects::act(state, who()?, p(0), action, at).await
        }
        ("POST", "/v1/keys/rotate") => rotate_key(state, who()?, at).await,
        ("GET", "/metrics") => metrics(state).await,
        ("GET", "/v1/admin/plugins") => Ok(json(
            StatusCode::OK,
            &All {
                data: state.registry.status(),
            },
        )),
        ("GET", "/v1/admin/nodes") => nodes(state).await,
        ("GET", "/v1/admin/resellers") => resellers(state).await,
        ("POST", "/v1/admin/resellers") => create_reseller(state, who()?, req, at).await,
        ("POST", "/v1/admin/resellers/{id}/keys") => create_key(state, who()?, req, p(0), at).await,
        ("POST", "/v1/admin/resellers/{id}/credits") => credit(state, who()?, req, p(0), at).await,
        ("POST", "/v1/admin/keys/{id}/revoke") => revoke_key(state, who()?, p(0), at).await,
        ("POST", "/v1/admin/backups") => backup(state, who()?, at).await,
        ("POST", "/v1/admin/resellers/{id}/close") => close_reseller(state, who()?, p(0), at).await,
        ("GET", "/v1/admin/requests") => request_log(state, &req).await,
        ("GET", "/v1/admin/audit") => audit::list(state, who()?, &req).await,
        _ => Err(problems::no_route(&path)),
    }
}

/// A routed, authenticated request: its route, path parameters and caller.
type Admitted<'p> = (&'static Route, Vec<&'p str>, Option<Principal>);

/// Route a request and authenticate its caller, from the request line and headers alone.
/// A failed authentication, and a key's first use from a network, go to the audit log.
async fn admit<'p>(
    state: &AppState,
    parts: &http::request::Parts,
    path: &'p str,
    at: &AddressPrefix,
) -> Result<Admitted<'p>, Problem> {
    let (route, params) = find(&parts.method, path)?;
    let who = match route.access {
        Access::Public => None,
        Access::Key | Access::Admin => {
            let who = match authenticate(state, &parts.headers).await {
                Ok(who) => who,
                Err(problem) => {
                    if problem.status == StatusCode::UNAUTHORIZED.as_u16() {
                        audit::authentication_failed(state, at).await;
                    }
                    return Err(problem);
                }
            };
            audit::key_used(state, &who, at).await;
            if route.access == Access::Admin && who.role != Role::Admin {
                // Not even the existence of admin routes is confirmed to resellers.
                return Err(problems::no_route(path));
            }
            state.limiter.check(&who.key)?;
            Some(who)
        }
    };
    Ok((route, params, who))
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("response types serialise");
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn authenticate(state: &AppState, headers: &http::HeaderMap) -> Result<Principal, Problem> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(problems::unauthenticated)?;
    let key = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(problems::unauthenticated)?;
    Ok(state.gateway.authenticate(key.trim()).await?)
}

pub(super) fn query_pairs<B>(req: &http::Request<B>) -> Vec<(String, String)> {
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

/// A path segment, percent-decoded (`+` stays `+` in a path).
pub(super) fn path_segment(s: &str) -> String {
    percent_decode(&s.replace('+', "%2B"))
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

/// Paging parameters shared by list endpoints.
pub(super) struct Paging {
    pub(super) limit: usize,
    pub(super) starting_after: Option<String>,
}

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

impl Paging {
    /// The cursor, parsed as the id of a `what` (a bad one is the client's mistake).
    pub(super) fn cursor<T: std::str::FromStr>(&self, what: &str) -> Result<Option<T>, Problem> {
        self.starting_after
            .as_deref()
            .map(|s| {
                s.parse().map_err(|_| {
                    problems::invalid_query(format!("starting_after must be {what} id"))
                })
            })
            .transpose()
    }
}

/// Parse `limit` and `starting_after`, handing every other parameter to `other`.
pub(super) fn paging(
    pairs: Vec<(String, String)>,
    mut other: impl FnMut(&str, String) -> Result<(), Problem>,
) -> Result<Paging, Problem> {
    let mut paging = Paging {
        limit: DEFAULT_PAGE,
        starting_after: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                paging.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        problems::invalid_query(format!("limit must be 1 to {MAX_PAGE}"))
                    })?
            }
            "starting_after" => paging.starting_after = Some(v),
            _ => other(&k, v)?,
        }
    }
    Ok(paging)
}

fn order_id(s: &str) -> Result<OrderId, Problem> {
    // A malformed id cannot name anything the caller owns: same 404 as a missing one.
    s.parse()
        .map_err(|_| Problem::from(DomainError::NotFound("order")))
}

async fn readyz(state: &AppState) -> Result<Response, Problem> {
    state
        .gateway
        .store()
        .meta("bootstrapped")
        .await
        .map_err(DomainError::from)?;
    let serving = state
        .registry
        .status()
        .iter()
        .filter(|p| p.version.is_some())
        .count();
    Ok(json(
        StatusCode::OK,
        &Ready {
            status: Readiness::Ready,
            plugins_serving: serving,
        },
    ))
}

async fn list_products(
    state: &AppState,
    who: &Principal,
    req: &http::Request<Bytes>,
) -> Result<Response, Problem> {
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
    let products = state.gateway.catalog(who, &filter).await?;
    // The catalog is answered whole, as one last page.
    Ok(json(
        StatusCode::OK,
        &Page {
            data: products,
            has_more: false,
        },
    ))
}

/// Run an idempotent POST in the key space of `scope`: claim the key, replay or refuse as
/// the rule says, else run `create` (which binds the key to what it creates, under the id
/// the claim reserved) and free the key if it failed. A replay renders what the first
/// request created (`replay`, given its id), marked `idempotent-replayed: true`.
#[allow(clippy::too_many_arguments)]
async fn idempotent<T, F, Fut, R, RFut>(
    state: &AppState,
    scope: ResellerId,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    success: StatusCode,
    create: F,
    replay: R,
) -> Result<Response, Problem>
where
    T: Serialize,
    F: FnOnce(IdemKey) -> Fut,
    Fut: Future<Output = Result<T, DomainError>>,
    R: FnOnce(OrderId) -> RFut,
    RFut: Future<Output = Result<T, DomainError>>,
{
    let key = headers.get("idempotency-key").ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_missing",
            "Idempotency-Key required",
            "send an Idempotency-Key header (a unique string per intended operation, e.g. a UUID)",
        )
    })?;
    // Present but not visible ASCII: the same answer as any other malformed key.
    let key = key.to_str().unwrap_or("\u{0}");
    // Every idempotent route is a POST.
    let fingerprint = idempotency::fingerprint("POST", path, body);
    let (idem, claim) = state
        .gateway
        .claim_idempotency(scope, key, &fingerprint)
        .await?;
    match claim {
        Claim::New => {}
        Claim::Mismatch => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
                "this Idempotency-Key was used with a different request",
            ));
        }
        Claim::InProgress => {
            let mut p = Problem::new(
                StatusCode::CONFLICT,
                "idempotency_in_progress",
                "Request in progress",
                "the first request with this Idempotency-Key is still running; retry shortly",
            );
            p.retry_after = Some(1);
            return Err(p);
        }
        Claim::Replay(IdemState::Order { order }) => {
            let mut resp = json(success, &replay(order).await?);
            resp.headers_mut().insert(
                "idempotent-replayed",
                http::HeaderValue::from_static("true"),
            );
            return Ok(resp);
        }
        Claim::Replay(IdemState::InProgress { .. }) => {
            unreachable!("judge never replays a running request")
        }
    }
    match create(idem.clone()).await {
        Ok(created) => Ok(json(success, &created)),
        Err(e) => {
            // Nothing was created: free the key so a corrected or later retry can run.
            state.gateway.release_idempotency(&idem).await?;
            Err(e.into())
        }
    }
}

/// The key space of a reseller key's idempotent requests.
fn own_scope(who: &Principal) -> Result<ResellerId, Problem> {
    who.reseller.ok_or_else(|| DomainError::Forbidden.into())
}

/// `POST /v1/orders` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewOrder")]
pub(super) struct CreateOrder {
    /// Gateway product id, from `GET /v1/products`.
    product_id: String,
    /// eSIMs to order.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = MAX_QUANTITY))]
    quantity: u32,
    /// Opaque reference to your end user; never personal data; never sent to suppliers.
    #[serde(default)]
    #[schemars(length(min = 1, max = MAX_SUBJECT_REF))]
    subject_ref: Option<String>,
    /// Yours; never sent to suppliers.
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

fn one() -> u32 {
    1
}

pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    req: http::Request<Bytes>,
) -> Result<(http::HeaderMap, Bytes, T), Problem> {
    require_json(req.headers())?;
    let (parts, bytes) = req.into_parts();
    let value = parse_json(&bytes)?;
    Ok((parts.headers, bytes, value))
}

async fn create_order(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let path = req.uri().path().to_string();
    let (headers, bytes, body): (_, _, CreateOrder) = json_body(req)?;
    idempotent(
        state,
        own_scope(who)?,
        &path,
        &headers,
        &bytes,
        StatusCode::CREATED,
        |idem| async move {
            let new = NewOrder {
                product_id: body.product_id,
                quantity: body.quantity,
                subject_ref: body.subject_ref,
                metadata: body.metadata.map(serde_json::Value::Object),
            };
            let view = state.gateway.place_order(who, new, Some(&idem)).await?;
            let accepted = audit::by(who, AuditAction::OrderAccepted, at).target(view.id);
            audit::record_then_flush(state, accepted).await;
            Ok(view)
        },
        |order| state.gateway.order(who, order),
    )
    .await
}

async fn list_orders(
    state: &AppState,
    who: &Principal,
    req: &http::Request<Bytes>,
) -> Result<Response, Problem> {
    let mut status = None;
    let paging = paging(query_pairs(req), |k, v| match k {
        "status" => {
            status = Some(
                serde_json::from_value::<OrderStatus>(serde_json::Value::String(v)).map_err(
                    |_| {
                        problems::invalid_query(
                            "status must be accepted, awaiting_kyc, submitted, fulfilled, failed or cancelled"
                                .into(),
                        )
                    },
                )?,
            );
            Ok(())
        }
        other => Err(problems::invalid_query(format!(
            "unknown parameter {other:?}"
        ))),
    })?;
    let before: Option<OrderId> = paging.cursor("an order")?;
    let page = state
        .gateway
        .orders(who, before, status, paging.limit)
        .await?;
    Ok(json(
        StatusCode::OK,
        &Page {
            data: page.items,
            has_more: page.has_more,
        },
    ))
}

async fn cancel_order(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    id: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let id = order_id(id)?;
    let path = req.uri().path().to_string();
    let (parts, bytes) = req.into_parts();
    idempotent(
        state,
        own_scope(who)?,
        &path,
        &parts.headers,
        &bytes,
        StatusCode::OK,
        |idem| async move {
            let view = state.gateway.cancel(who, id).await?;
            let cancelled = audit::by(who, AuditAction::OrderCancelled, at)
                .target(id)
                .details("refunded");
            audit::record_then_flush(state, cancelled).await;
            state
                .gateway
                .finish_idempotency(&idem, &IdemState::Order { order: id })
                .await?;
            Ok(view)
        },
        |order| state.gateway.order(who, order),
    )
    .await
}

async fn esim_qr(
    state: &AppState,
    who: &Principal,
    req: &http::Request<Bytes>,
    iccid: &str,
) -> Result<Response, Problem> {
    let mut svg = false;
    for (k, v) in query_pairs(req) {
        match (k.as_str(), v.as_str()) {
            ("format", "png") => svg = false,
            ("format", "svg") => svg = true,
            ("format", _) => {
                return Err(problems::invalid_query("format must be png or svg".into()));
            }
            (other, _) => {
                return Err(problems::invalid_query(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    let esim = state.gateway.esim(who, iccid).await?;
    let (bytes, content_type) = if svg {
        (qr::svg(&esim.activation_code).into_bytes(), "image/svg+xml")
    } else {
        (qr::png(&esim.activation_code), "image/png")
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(bytes)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("private, no-store"),
    );
    Ok(resp)
}

/// `POST /v1/esims/{iccid}/topups` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewTopUp")]
pub(super) struct CreateTopUp {
    /// A top-up-able product of the supplier that issued the eSIM.
    product_id: String,
}

async fn create_top_up(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    iccid: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let path = req.uri().path().to_string();
    let (headers, bytes, body): (_, _, CreateTopUp) = json_body(req)?;
    idempotent(
        state,
        own_scope(who)?,
        &path,
        &headers,
        &bytes,
        StatusCode::CREATED,
        |idem| async move {
            let view = state
                .gateway
                .top_up(who, iccid, &body.product_id, Some(&idem))
                .await?;
            let accepted = audit::by(who, AuditAction::OrderAccepted, at)
                .target(view.id)
                .details("top-up");
            audit::record_then_flush(state, accepted).await;
            Ok(view)
        },
        |order| state.gateway.order(who, order),
    )
    .await
}

async fn balance(state: &AppState, who: &Principal) -> Result<Response, Problem> {
    let data = state
        .gateway
        .balances(who)
        .await?
        .into_iter()
        .map(|(currency, b)| BalanceView::new(&currency, b))
        .collect();
    Ok(json(StatusCode::OK, &All { data }))
}

/// `PUT /v1/balance/alerts/{currency}` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewBalanceAlert")]
pub(super) struct CreateBalanceAlert {
    /// Raise `balance.low` when an order's hold takes the available balance below this
    /// many minor units.
    below_minor: i64,
}

async fn set_balance_alert(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    currency: &str,
) -> Result<Response, Problem> {
    let (_, _, body): (_, _, CreateBalanceAlert) = json_body(req)?;
    let currency = currency.to_ascii_uppercase();
    state
        .gateway
        .set_low_balance_alert(who, &currency, Some(body.below_minor))
        .await?;
    durable(state).await?;
    Ok(json(
        StatusCode::OK,
        &BalanceAlertView {
            currency,
            below_minor: body.below_minor,
        },
    ))
}

async fn remove_balance_alert(
    state: &AppState,
    who: &Principal,
    currency: &str,
) -> Result<Response, Problem> {
    let currency = currency.to_ascii_uppercase();
    state
        .gateway
        .set_low_balance_alert(who, &currency, None)
        .await?;
    durable(state).await?;
    Ok(no_content())
}

/// An answer without a body.
pub(super) fn no_content() -> Response {
    let mut resp = http::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

async fn events(
    state: &AppState,
    who: &Principal,
    req: &http::Request<Bytes>,
) -> Result<Response, Problem> {
    let mut kind = None;
    let paging = paging(query_pairs(req), |k, v| match k {
        "type" => {
            kind = Some(EventType::named(&v).ok_or_else(|| {
                problems::invalid_query(format!("type {v:?} is not an event type"))
            })?);
            Ok(())
        }
        _ => Err(problems::invalid_query(format!("unknown parameter {k:?}"))),
    })?;
    let before = paging.cursor("an event")?;
    let page = state
        .gateway
        .events(who, before, kind, paging.limit)
        .await?;
    Ok(json(
        StatusCode::OK,
        &Page {
            data: page.items.into_iter().map(EventView::from).collect(),
            has_more: page.has_more,
        },
    ))
}

async fn transactions(
    state: &AppState,
    who: &Principal,
    req: &http::Request<Bytes>,
) -> Result<Response, Problem> {
    let paging = paging(query_pairs(req), |k, _| {
        Err(problems::invalid_query(format!("unknown parameter {k:?}")))
    })?;
    // Transaction ids are lowercase ULIDs; `Ulid` parses either case.
    let before: Option<ulid::Ulid> = paging.cursor("a transaction")?;
    let page = state
        .gateway
        .transactions(who, before, paging.limit)
        .await?;
    Ok(json(
        StatusCode::OK,
        &Page {
            data: page.items.into_iter().map(TransactionView::from).collect(),
            has_more: page.has_more,
        },
    ))
}

/// Prometheus metrics (admin keys only; why: see `api::metrics`).
async fn metrics(state: &AppState) -> Result<Response, Problem> {
    let webhooks = state.gateway.webhook_stats().await?;
    let text = super::metrics::render(
        &state.registry,
        &state.http_metrics,
        &state.gateway.order_counts(),
        state.gateway.iccid_conflicts(),
        &webhooks,
    );
    let mut resp = http::Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(super::metrics::CONTENT_TYPE),
    );
    Ok(resp)
}

async fn rotate_key(
    state: &AppState,
    who: &Principal,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let (key, record) = state.gateway.rotate_key(who).await?;
    let rotated = audit::by(who, AuditAction::KeyRotated, at)
        .target(record.id)
        .details(format!("replaces {}", who.key));
    audit::record(state, rotated).await;
    durable(state).await?;
    Ok(json(StatusCode::CREATED, &NewKeyView::new(key, &record)))
}

/// Wait until every write made so far is on disk: a 2xx is sent only after it.
async fn request_log(state: &AppState, req: &http::Request<Bytes>) -> Result<Response, Problem> {
    let paging = paging(query_pairs(req), |k, _| {
        Err(problems::invalid_query(format!("unknown parameter {k:?}")))
    })?;
    let before = paging
        .starting_after
        .as_deref()
        .map(|s| {
            ulid::Ulid::from_string(s)
                .map_err(|_| problems::invalid_query("starting_after must be a request id".into()))
        })
        .transpose()?;
    let page = state
        .gateway
        .store()
        .requests_page(before, paging.limit)
        .await
        .map_err(DomainError::from)?;
    Ok(json(
        StatusCode::OK,
        &Page {
            data: page.items.into_iter().map(RequestView::from).collect(),
            has_more: page.has_more,
        },
    ))
}

pub(super) async fn durable(state: &AppState) -> Result<(), Problem> {
    state
        .gateway
        .store()
        .durable()
        .await
        .map_err(|e| DomainError::from(e).into())
}

/// How `value` (a unit enum variant) is named on the wire, e.g. `reseller_readonly`.
pub(super) fn enum_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `POST /v1/admin/resellers` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewReseller")]
pub(super) struct CreateReseller {
    /// Display name (a company name, not a person's).
    name: String,
    /// Markup over wholesale in basis points (1500 = 15%).
    #[serde(default)]
    markup_bps: u32,
}

async fn create_reseller(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let (_, _, body): (_, _, CreateReseller) = json_body(req)?;
    let reseller = state
        .gateway
        .create_reseller(&body.name, body.markup_bps)
        .await?;
    let created = audit::by(who, AuditAction::ResellerCreated, at)
        .reseller(Some(reseller.id))
        .target(reseller.id);
    audit::record(state, created).await;
    durable(state).await?;
    Ok(json(StatusCode::CREATED, &ResellerView::from(reseller)))
}

/// `GET /v1/admin/nodes`: every node's last heartbeat, by id.
async fn nodes(state: &AppState) -> Result<Response, Problem> {
    let nodes = state
        .gateway
        .store()
        .nodes()
        .await
        .map_err(DomainError::from)?;
    let now = state.gateway.clock.now_ms();
    Ok(json(
        StatusCode::OK,
        &All {
            data: nodes
                .into_iter()
                .map(|n| NodeView::of(n, &state.node.id, now))
                .collect(),
        },
    ))
}

async fn resellers(state: &AppState) -> Result<Response, Problem> {
    let resellers = state
        .gateway
        .store()
        .resellers()
        .await
        .map_err(DomainError::from)?;
    Ok(json(
        StatusCode::OK,
        &All {
            data: resellers.into_iter().map(ResellerView::from).collect(),
        },
    ))
}

/// `POST /v1/admin/resellers/{id}/keys` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewKeyRequest")]
pub(super) struct CreateKey {
    /// `reseller` or `reseller_readonly`; `admin` is refused (an admin key has no reseller).
    #[serde(default = "reseller_role")]
    role: Role,
    /// Live or test.
    #[serde(default = "live")]
    mode: KeyMode,
}

fn reseller_role() -> Role {
    Role::Reseller
}

fn live() -> KeyMode {
    KeyMode::Live
}

fn reseller_id(s: &str) -> Result<ResellerId, Problem> {
    s.parse()
        .map_err(|_| Problem::from(DomainError::NotFound("reseller")))
}

async fn create_key(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    id: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let reseller = reseller_id(id)?;
    let (_, _, body): (_, _, CreateKey) = json_body(req)?;
    if body.role == Role::Admin {
        return Err(Problem::from(DomainError::Invalid {
            field: "/role",
            message: "reseller keys are reseller or reseller_readonly".into(),
        }));
    }
    let (key, record) = state
        .gateway
        .create_key(Some(reseller), body.role, body.mode)
        .await?;
    let created = audit::by(who, AuditAction::KeyCreated, at)
        .reseller(Some(reseller))
        .target(record.id)
        .details(format!(
            "role {}, mode {}",
            enum_name(&record.role),
            enum_name(&record.mode)
        ));
    audit::record(state, created).await;
    durable(state).await?;
    Ok(json(StatusCode::CREATED, &NewKeyView::new(key, &record)))
}

/// `POST /v1/admin/resellers/{id}/credits` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewCredit")]
pub(super) struct CreateCredit {
    /// Minor units to add.
    #[schemars(range(min = 1))]
    amount: i64,
    /// ISO 4217 currency.
    #[serde(default = "usd")]
    currency: String,
    /// Your reference, shown on the transaction.
    #[serde(default)]
    note: Option<String>,
    /// Which balance: `live` (default), or `test`, the test account that test-mode keys
    /// spend.
    #[serde(default = "live")]
    mode: KeyMode,
}

fn usd() -> String {
    "USD".into()
}

async fn credit(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    id: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let reseller = reseller_id(id)?;
    let path = req.uri().path().to_string();
    let (headers, bytes, body): (_, _, CreateCredit) = json_body(req)?;
    // Keys are the reseller's, whichever balance a credit goes to: the same key sent
    // again for the other mode is another request (422), not a second credit.
    let account = body.mode.account(reseller);
    idempotent(
        state,
        reseller,
        &path,
        &headers,
        &bytes,
        StatusCode::CREATED,
        |idem| async move {
            // The entry takes the id the key was claimed with: a retry after a crash
            // finds this credit instead of posting it again.
            let balance = state
                .gateway
                .credit(
                    reseller,
                    body.mode,
                    body.amount,
                    &body.currency,
                    body.note,
                    idem.order.0,
                )
                .await?;
            let posted = audit::by(who, AuditAction::CreditPosted, at)
                .reseller(Some(reseller))
                .target(LedgerEntryId(idem.order.0))
                .details(format!("{} {}", body.amount, body.currency));
            audit::record(state, posted).await;
            state.gateway.store().durable().await?;
            Ok(BalanceView::new(&body.currency, balance))
        },
        |entry| async move {
            let (entry, balance) = state.gateway.posted_credit(account, entry.0).await?;
            Ok(BalanceView::new(&entry.currency, balance))
        },
    )
    .await
}

async fn close_reseller(
    state: &AppState,
    who: &Principal,
    id: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let id: ResellerId = id
        .parse()
        .map_err(|_| Problem::from(DomainError::NotFound("reseller")))?;
    let reseller = state.gateway.close_reseller(id).await?;
    let closed = audit::by(who, AuditAction::ResellerClosed, at)
        .reseller(Some(reseller.id))
        .target(reseller.id);
    audit::record_then_flush(state, closed).await;
    Ok(json(StatusCode::OK, &ResellerView::from(reseller)))
}

async fn revoke_key(
    state: &AppState,
    who: &Principal,
    id: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let id: KeyId = id
        .parse()
        .map_err(|_| Problem::from(DomainError::NotFound("key")))?;
    let key = state.gateway.revoke_key(id).await?;
    let revoked = audit::by(who, AuditAction::KeyRevoked, at)
        .reseller(key.reseller)
        .target(key.id);
    audit::record(state, revoked).await;
    durable(state).await?;
    Ok(json(StatusCode::OK, &KeyView::from(key)))
}

/// `POST /v1/admin/backups`: a consistent copy of the database, written next to it.
async fn backup(
    state: &AppState,
    who: &Principal,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    if who.role != Role::Admin {
        return Err(DomainError::Forbidden.into());
    }
    let dir = state.backups.clone();
    let file = dir.join(format!(
        "backup-{}.sgbk",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    create_private_dir(&dir).map_err(|e| {
        Problem::from(DomainError::Store(
            crate::domain::store::StoreError::Backend(format!("creating {}: {e}", dir.display())),
        ))
    })?;
    let summary = state
        .gateway
        .store()
        .backup_to(&file)
        .await
        .map_err(DomainError::from)?
        .ok_or_else(|| {
            Problem::from(DomainError::Conflict {
                code: "backup_unsupported",
                message: "this store is backed up with its own tools".into(),
            })
        })?;
    let taken = audit::by(who, AuditAction::BackupTaken, at).details(format!(
        "{} bytes, sha256 {}",
        summary.bytes, summary.sha256
    ));
    audit::record(state, taken).await;
    durable(state).await?;
    Ok(json(
        StatusCode::CREATED,
        &BackupView {
            file: file.display().to_string(),
            bytes: summary.bytes,
            sha256: summary.sha256,
            trees: summary.trees,
            entries: summary.entries,
        },
    ))
}

/// A directory only its owner may enter (made if missing).
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_unique_and_find_their_parameters() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "duplicate route {} {}",
                    a.method,
                    a.path
                );
            }
        }
        let (r, params) = find(&Method::POST, "/v1/orders/ord_x/cancel").unwrap();
        assert_eq!(r.path, "/v1/orders/{id}/cancel");
        assert_eq!(params, vec!["ord_x"]);
        assert_eq!(
            find(&Method::DELETE, "/v1/orders").unwrap_err().code,
            "method_not_allowed"
        );
        assert_eq!(
            find(&Method::GET, "/v2/nothing").unwrap_err().code,
            "not_found"
        );
    }

    #[test]
    fn percent_decoding_handles_escapes_and_garbage() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}

/// Properties of the query-string parsing over generated (and hostile) input: nothing
/// panics, a refusal is always the 400 `invalid_query`, and what a client encodes decodes
/// back to what it meant.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Percent-encode everything but RFC 3986's unreserved characters, as a strict client
    /// does.
    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    fn request(query: &str) -> Option<http::Request<()>> {
        http::Request::get(format!("/v1/orders?{query}"))
            .body(())
            .ok()
    }

    proptest! {
        #[test]
        fn percent_decoding_never_panics_and_undoes_encoding(s in any::<String>(), junk in any::<String>()) {
            prop_assert_eq!(percent_decode(&encode(&s)), s.clone());
            prop_assert_eq!(path_segment(&encode(&s)), s);
            // Anything else decodes to something, without panicking.
            let _ = percent_decode(&junk);
            let _ = path_segment(&junk);
        }

        #[test]
        fn a_plus_is_a_space_in_a_query_and_a_plus_in_a_path(a in "[a-z]{0,5}", b in "[a-z]{0,5}") {
            let raw = format!("{a}+{b}");
            prop_assert_eq!(percent_decode(&raw), format!("{a} {b}"));
            prop_assert_eq!(path_segment(&raw), raw);
        }

        #[test]
        fn encoded_pairs_come_back_as_sent(pairs in proptest::collection::vec((any::<String>(), any::<String>()), 0..6)) {
            let query: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            let req = request(&query.join("&")).expect("an encoded query is a valid URI");
            // A pair with an empty key and value encodes as `=`, and comes back as such.
            prop_assert_eq!(query_pairs(&req), pairs);
        }

        #[test]
        fn any_query_string_splits_without_panicking(query in "[!-~]{0,80}") {
            if let Some(req) = request(&query) {
                let pairs = query_pairs(&req);
                prop_assert!(pairs.len() <= query.split('&').count());
            }
        }

        #[test]
        fn paging_accepts_exactly_the_documented_limits(limit in prop_oneof![
            (0i64..150).prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            "\\PC{0,8}",
        ], cursor in proptest::option::of(any::<String>())) {
            let mut pairs = vec![("limit".to_string(), limit.clone())];
            if let Some(c) = &cursor {
                pairs.push(("starting_after".into(), c.clone()));
            }
            let valid = limit.parse::<usize>().is_ok_and(|n| (1..=MAX_PAGE).contains(&n));
            match paging(pairs, |_, _| unreachable!("no other parameter")) {
                Ok(p) => {
                    prop_assert!(valid, "limit {limit:?} accepted");
                    prop_assert_eq!(Ok(p.limit), limit.parse::<usize>());
                    prop_assert_eq!(p.starting_after, cursor);
                }
                Err(p) => {
                    prop_assert!(!valid, "limit {limit:?} refused");
                    prop_assert_eq!((p.status, p.code), (400, "invalid_query"));
                }
            }
        }

        #[test]
        fn a_cursor_is_an_id_of_the_listed_kind_or_a_400(id in any::<u128>(), junk in any::<String>()) {
            let order = OrderId(ulid::Ulid(id));
            let at = |cursor: String| Paging { limit: DEFAULT_PAGE, starting_after: Some(cursor) };
            // Every id the API shows is a cursor back to itself, in either case.
            prop_assert_eq!(at(order.to_string()).cursor::<OrderId>("an order").unwrap(), Some(order));
            prop_assert_eq!(
                at(order.to_string().to_uppercase().replacen("ORD_", "ord_", 1)).cursor::<OrderId>("an order").unwrap(),
                Some(order)
            );
            // Another kind's id, or anything else, is the client's mistake.
            let other = at(ResellerId(order.0).to_string()).cursor::<OrderId>("an order").unwrap_err();
            prop_assert_eq!((other.status, other.code), (400, "invalid_query"));
            if let Err(p) = at(junk).cursor::<OrderId>("an order") {
                prop_assert_eq!((p.status, p.code), (400, "invalid_query"));
            }
        }

        #[test]
        fn any_method_and_path_routes_or_is_a_404_or_405(
            method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("PATCH"), Just("DELETE"), Just("HEAD"), Just("OPTIONS")],
            segments in proptest::collection::vec(prop_oneof![
                Just("v1".to_string()), Just("orders".to_string()), Just("esims".to_string()),
                Just("admin".to_string()), Just("subjects".to_string()), Just(String::new()),
                "[ -~]{0,12}",
            ], 0..6),
        ) {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let path = format!("/{}", segments.join("/"));
            match find(&method, &path) {
                Ok((route, params)) => {
                    prop_assert_eq!(&route.method, &method);
                    prop_assert_eq!(params.len(), route.path.matches('{').count());
                    prop_assert!(params.iter().all(|p| !p.is_empty()));
                }
                Err(p) if p.status == 405 => {
                    let allow = p.allow.expect("a 405 names the allowed methods");
                    prop_assert!(!allow.is_empty());
                    prop_assert!(!allow.split(", ").any(|m| m == method.as_str()));
                }
                Err(p) => prop_assert_eq!((p.status, p.code), (404, "not_found")),
            }
        }
    }
}
