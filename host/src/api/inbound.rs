//! Inbound requests from outside parties that hold no API key: verification providers'
//! callbacks (see [`super::ekyc`]) and supplier webhooks. Both are capped the same way
//! (body by the API's limit, at most 64 headers / 16 KiB), rate limited per plugin, and
//! handed only to a loaded plugin, which verifies and reads them.

use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Serialize;

use crate::domain::ekyc::Inbound;
use crate::domain::gateway::DomainError;
use crate::domain::use_cases::supplier_webhooks::WebhookAccepted;

use super::problem::Problem;
use super::routes::json;
use super::{AppState, Response};

/// What an inbound request gets back: that it was received. Nothing about the session
/// or its order goes to an unauthenticated caller.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "InboundAck")]
pub struct InboundAck {
    /// Always `true`.
    pub received: bool,
    /// A supplier webhook that was accepted before (a redelivery): nothing more happens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// Most headers passed on to a plugin.
const MAX_INBOUND_HEADERS: usize = 64;
/// Most header bytes (names and values) passed on to a plugin.
const MAX_INBOUND_HEADER_BYTES: usize = 16 * 1024;

/// Read an inbound request for `plugin`: refused (404) unless the plugin is loaded, rate
/// limited per plugin, headers capped.
pub(super) fn read(
    state: &AppState,
    req: http::Request<Bytes>,
    plugin: &str,
) -> Result<Inbound, Problem> {
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
        source_address: parts
            .extensions
            .get::<super::PeerAddr>()
            .map(|p| p.0.to_string())
            .unwrap_or_default(),
    };
    Ok(inbound)
}

/// `POST /v1/inbound/{plugin}/webhook`: a supplier's webhook, accepted once its events are
/// durable (see [`crate::domain::use_cases::supplier_webhooks`]).
pub(super) async fn supplier_webhook(
    state: &AppState,
    req: http::Request<Bytes>,
    plugin: &str,
) -> Result<Response, Problem> {
    let inbound = read(state, req, plugin)?;
    let accepted = state.gateway.supplier_webhook(plugin, inbound).await?;
    Ok(json(
        StatusCode::OK,
        &InboundAck {
            received: true,
            duplicate: (accepted == WebhookAccepted::Duplicate).then_some(true),
        },
    ))
}
