//! The webhook endpoints' HTTP handlers: parse, call the use case, answer with a view.

use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::events::EventType;
use crate::domain::gateway::{DomainError, Principal};
use crate::domain::ids::{EndpointId, EventId};
use crate::domain::use_cases::webhooks::{EndpointChange, NewEndpoint};
use crate::domain::webhooks::{Attempt, AttemptOutcome, Endpoint};

use super::problem::{Problem, problems};
use super::routes::{durable, json, json_body, no_content, paging, query_pairs};
use super::views::{All, Page};
use super::{AppState, Response};

/// `POST /v1/webhook-endpoints` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewWebhookEndpoint")]
pub(super) struct CreateEndpoint {
    /// Where deliveries go: `https://...` (or `http://...`); never a private address.
    url: String,
    /// The event types to receive; every type when left out.
    #[serde(default)]
    event_types: Option<Vec<EventType>>,
    /// Your note.
    #[serde(default)]
    description: Option<String>,
}

/// `PATCH /v1/webhook-endpoints/{id}` body: what to change; the rest stays.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "WebhookEndpointChange")]
pub(super) struct ChangeEndpoint {
    /// A new URL (checked like a new endpoint's).
    #[serde(default)]
    url: Option<String>,
    /// New event types.
    #[serde(default)]
    event_types: Option<Vec<EventType>>,
    /// A new note.
    #[serde(default)]
    description: Option<String>,
    /// `true` enables it again after the gateway disabled it (and clears why).
    #[serde(default)]
    enabled: Option<bool>,
}

/// A webhook endpoint (never its secret).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "WebhookEndpoint")]
pub struct EndpointView {
    /// Its id.
    pub id: EndpointId,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub event_types: Vec<EventType>,
    /// Your note.
    pub description: Option<String>,
    /// Whether deliveries are made to it.
    pub enabled: bool,
    /// Why the gateway disabled it (it answered 410, or failed for days).
    pub disabled_reason: Option<String>,
    /// Since when every delivery to it has failed, ms since the epoch.
    pub failing_since_ms: Option<u64>,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
}

impl From<Endpoint> for EndpointView {
    fn from(e: Endpoint) -> EndpointView {
        EndpointView {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            description: e.description,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            failing_since_ms: e.failing_since_ms,
            created_at_ms: e.created_at_ms,
        }
    }
}

/// A webhook endpoint with its signing secret, the one time the secret is shown.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "WebhookEndpointWithSecret")]
pub struct EndpointWithSecret {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_...`: verify deliveries with it (any Standard Webhooks library). Shown once.
    pub secret: String,
}

/// One delivery attempt.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "WebhookAttempt")]
pub struct AttemptView {
    /// Its id.
    pub id: String,
    /// The message delivered: its `webhook-id`.
    pub event_id: EventId,
    /// Which try for this message and endpoint, from 1.
    pub number: u32,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The endpoint's HTTP status, if it answered.
    pub status: Option<u16>,
    /// How long the attempt took.
    pub latency_ms: u64,
    /// The first bytes of the endpoint's answer.
    pub answer: String,
    /// Why it failed, when no status tells.
    pub error: Option<String>,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> AttemptView {
        AttemptView {
            id: a.id.to_string(),
            event_id: a.event,
            number: a.number,
            at_ms: a.at_ms,
            status: a.status,
            latency_ms: a.latency_ms,
            answer: a.answer,
            error: a.error,
            outcome: a.outcome,
        }
    }
}

/// `POST /v1/events/{id}/redeliver`: how many deliveries were scheduled.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Redelivery")]
pub struct RedeliveryView {
    /// Endpoints the event goes to again (one still retrying it is left to do so).
    pub scheduled: usize,
}

fn endpoint_id(s: &str) -> Result<EndpointId, Problem> {
    // A malformed id names nothing the caller owns: the same 404 as a missing one.
    s.parse()
        .map_err(|_| Problem::from(DomainError::NotFound("webhook endpoint")))
}

fn with_secret((endpoint, secret): (Endpoint, String)) -> EndpointWithSecret {
    EndpointWithSecret {
        endpoint: endpoint.into(),
        secret,
    }
}

pub(super) async fn create(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
) -> Result<Response, Problem> {
    let (_, _, body): (_, _, CreateEndpoint) = json_body(req)?;
    let new = NewEndpoint {
        url: body.url,
        event_types: body.event_types,
        description: body.description,
    };
    let created = state.gateway.create_endpoint(who, new).await?;
    durable(state).await?;
    Ok(json(StatusCode::CREATED, &with_secret(created)))
}

pub(super) async fn list(state: &AppState, who: &Principal) -> Result<Response, Problem> {
    let data = state.gateway.endpoints(who).await?;
    Ok(json(
        StatusCode::OK,
        &All {
            data: data.into_iter().map(EndpointView::from).collect(),
        },
    ))
}

pub(super) async fn get(state: &AppState, who: &Principal, id: &str) -> Result<Response, Problem> {
    let endpoint = state.gateway.endpoint(who, endpoint_id(id)?).await?;
    Ok(json(StatusCode::OK, &EndpointView::from(endpoint)))
}

pub(super) async fn update(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    id: &str,
) -> Result<Response, Problem> {
    let id = endpoint_id(id)?;
    let (_, _, body): (_, _, ChangeEndpoint) = json_body(req)?;
    let change = EndpointChange {
        url: body.url,
        event_types: body.event_types,
        description: body.description,
        enabled: body.enabled,
    };
    let endpoint = state.gateway.update_endpoint(who, id, change).await?;
    durable(state).await?;
    Ok(json(StatusCode::OK, &EndpointView::from(endpoint)))
}

pub(super) async fn delete(
    state: &AppState,
    who: &Principal,
    id: &str,
) -> Result<Response, Problem> {
    state.gateway.delete_endpoint(who, endpoint_id(id)?).await?;
    durable(state).await?;
    Ok(no_content())
}

pub(super) async fn rotate_secret(
    state: &AppState,
    who: &Principal,
    id: &str,
) -> Result<Response, Problem> {
    let rotated = state
        .gateway
        .rotate_endpoint_secret(who, endpoint_id(id)?)
        .await?;
    durable(state).await?;
    Ok(json(StatusCode::OK, &with_secret(rotated)))
}

pub(super) async fn test(state: &AppState, who: &Principal, id: &str) -> Result<Response, Problem> {
    let attempt = state.gateway.test_endpoint(who, endpoint_id(id)?).await?;
    Ok(json(StatusCode::OK, &AttemptView::from(attempt)))
}

pub(super) async fn attempts(
    state: &AppState,
    who: &Principal,
    req: &http::Request<Bytes>,
    id: &str,
) -> Result<Response, Problem> {
    let id = endpoint_id(id)?;
    let paging = paging(query_pairs(req), |k, _| {
        Err(problems::invalid_query(format!("unknown parameter {k:?}")))
    })?;
    let before = paging.cursor("an attempt")?;
    let page = state
        .gateway
        .attempts(who, id, before, paging.limit)
        .await?;
    Ok(json(
        StatusCode::OK,
        &Page {
            data: page.items.into_iter().map(AttemptView::from).collect(),
            has_more: page.has_more,
        },
    ))
}

pub(super) async fn redeliver(
    state: &AppState,
    who: &Principal,
    id: &str,
) -> Result<Response, Problem> {
    let id: EventId = id
        .parse()
        .map_err(|_| Problem::from(DomainError::NotFound("event")))?;
    let scheduled = state.gateway.redeliver(who, id).await?;
    durable(state).await?;
    Ok(json(StatusCode::ACCEPTED, &RedeliveryView { scheduled }))
}
