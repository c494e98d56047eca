//! eKYC sessions and provider callbacks over HTTP: parse, call the use case, answer with a
//! view.

use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::domain::audit::{AddressPrefix, AuditAction};
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
    let mut inbound = super::inbound::read(state, req, plugin)?;
    // A redirect back comes from the end user's browser: their address is personal data
    // the plugin does not need (only supplier webhooks are checked by address).
    inbound.source_address.clear();
    state.gateway.ekyc_callback(plugin, inbound).await?;
    Ok(json(
        StatusCode::OK,
        &super::inbound::InboundAck {
            received: true,
            duplicate: None,
        },
    ))
}
