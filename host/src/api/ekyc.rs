//! eKYC sessions and provider callbacks over HTTP: parse, call the use case, answer with a
//! view.

use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::audit::{AddressPrefix, AuditAction};
use crate::domain::ekyc::Inbound;
use crate::domain::gateway::{DomainError, Principal};
use crate::domain::ids::{EkycSessionId, OrderId};

use super::problem::Problem;
use super::routes::{json, json_body};
use super::{AppState, Response, audit};

/// `POST /v1/ekyc/sessions` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewEkycSession")]
pub(super) struct CreateSession {
    /// The order awaiting verification.
    order_id: OrderId,
    /// Where the provider sends the end user back when done: an absolute http(s) URL.
    return_url: String,
}

/// What an inbound request gets back: that it was received. Nothing about the session
/// or its order goes to an unauthenticated caller.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "InboundAck")]
pub struct InboundAck {
    /// Always `true`.
    pub received: bool,
}

/// Most headers passed on to a plugin.
const MAX_INBOUND_HEADERS: usize = 64;
/// Most header bytes (names and values) passed on to a plugin.
const MAX_INBOUND_HEADER_BYTES: usize = 16 * 1024;

pub(super) async fn start(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let (_, _, body): (_, _, CreateSession) = json_body(req)?;
    let (view, created) = state
        .gateway
        .start_ekyc(who, body.order_id, &body.return_url)
        .await?;
    let status = if created {
        let opened = audit::by(who, AuditAction::EkycSessionOpened, at)
            .target(view.id)
            .details(format!("for order {}", body.order_id));
        audit::record_then_flush(state, opened).await;
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &view))
}

pub(super) async fn get(state: &AppState, who: &Principal, id: &str) -> Result<Response, Problem> {
    // A malformed id names nothing the caller owns: the same 404 as a missing one.
    let id: EkycSessionId = id
        .parse()
        .map_err(|_| Problem::from(DomainError::NotFound("ekyc session")))?;
    Ok(json(
        StatusCode::OK,
        &state.gateway.ekyc_session(who, id).await?,
    ))
}

/// A provider's callback: method, path and query, headers (capped) and the raw body
/// (capped by the API's body limit) go to the plugin, which verifies and reads it.
pub(super) async fn callback(
    state: &AppState,
    req: http::Request<Bytes>,
    plugin: &str,
) -> Result<Response, Problem> {
    // Only a loaded plugin gets a bucket: the path is the caller's to choose.
    if state.gateway.suppliers.get(plugin).is_none() {
        return Err(DomainError::NotFound("plugin").into());
    }
    state.inbound_limiter.check(&plugin.to_string())?;
    let (parts, body) = req.into_parts();
    let mut headers = Vec::new();
    let mut header_bytes = 0;
    for (name, value) in &parts.headers {
        let Ok(value) = value.to_str() else { continue };
        header_bytes += name.as_str().len() + value.len();
        if headers.len() == MAX_INBOUND_HEADERS || header_bytes > MAX_INBOUND_HEADER_BYTES {
            return Err(Problem::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "Too many headers",
                format!(
                    "at most {MAX_INBOUND_HEADERS} headers of {MAX_INBOUND_HEADER_BYTES} bytes in all"
                ),
            ));
        }
        headers.push((name.as_str().to_string(), value.to_string()));
    }
    let inbound = Inbound {
        method: parts.method.as_str().to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers,
        body: body.to_vec(),
    };
    state.gateway.ekyc_callback(plugin, inbound).await?;
    Ok(json(StatusCode::OK, &InboundAck { received: true }))
}
