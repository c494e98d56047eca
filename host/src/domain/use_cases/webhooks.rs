//! Webhook endpoints and deliveries (see `domain::webhooks` for the design): a reseller
//! registers, lists, rotates, tests and deletes its endpoints and reads every attempt; the
//! job worker runs [`Gateway::dispatch_events`] and [`Gateway::deliver`].

use std::time::Duration;

use crate::domain::clock::rfc3339;
use crate::domain::events::{Event, EventType};
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::ids::{AttemptId, EndpointId, EventId, ResellerId};
use crate::domain::jobs::{Job, random_fraction};
use crate::domain::store::{Commit, Page, StoreError};
use crate::domain::webhooks::{
    Attempt, AttemptOutcome, DeliveryBook, Endpoint, NextTry, Outbound, Payload, PreviousSecret,
    Sent, WebhookStats,
};

/// Longest endpoint URL accepted.
pub const MAX_URL: usize = 2048;
/// Longest endpoint description accepted.
pub const MAX_DESCRIPTION: usize = 256;
/// Outbox events read at once.
const DISPATCH_BATCH: usize = 256;
/// Outbox events one dispatch run turns into deliveries at most.
const DISPATCH_RUN: usize = 16 * DISPATCH_BATCH;

/// What a reseller asks for when registering an endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Where deliveries go.
    pub url: String,
    /// The event types wanted; every type when not given.
    pub event_types: Option<Vec<EventType>>,
    /// The reseller's note.
    pub description: Option<String>,
}

/// What a reseller changes on an endpoint; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    /// A new URL.
    pub url: Option<String>,
    /// New event types.
    pub event_types: Option<Vec<EventType>>,
    /// A new description.
    pub description: Option<String>,
    /// Enable or disable it.
    pub enabled: Option<bool>,
}

/// The event types asked for, sorted and without repeats; every type when not given.
fn event_types(asked: Option<Vec<EventType>>) -> Result<Vec<EventType>, DomainError> {
    let mut types = asked.unwrap_or_else(|| EventType::ALL.to_vec());
    types.sort_by_key(|t| t.name());
    types.dedup();
    if types.is_empty() {
        return Err(DomainError::Invalid {
            field: "/event_types",
            message: "name at least one event type, or leave it out for all".into(),
        });
    }
    Ok(types)
}

fn check_description(description: &str) -> Result<(), DomainError> {
    if description.len() > MAX_DESCRIPTION {
        return Err(DomainError::Invalid {
            field: "/description",
            message: format!("at most {MAX_DESCRIPTION} bytes"),
        });
    }
    Ok(())
}

impl Gateway {
    /// Register an endpoint; returns it with its signing secret, shown this once.
    pub async fn create_endpoint(
        &self,
        who: &Principal,
        new: NewEndpoint,
    ) -> Result<(Endpoint, String), DomainError> {
        let reseller = self.writer_of(who).await?;
        if let Some(description) = &new.description {
            check_description(description)?;
        }
        let event_types = event_types(new.event_types)?;
        self.check_endpoint_url(&new.url).await?;
        if self.store.endpoints(reseller).await?.len() >= self.tuning.webhooks.max_endpoints {
            return Err(DomainError::Conflict {
                code: "too_many_endpoints",
                message: format!(
                    "a reseller may have {} webhook endpoints; delete one first",
                    self.tuning.webhooks.max_endpoints
                ),
            });
        }
        let id = EndpointId::new();
        let secret = self.new_secret()?;
        let endpoint = Endpoint {
            id,
            reseller,
            url: new.url,
            event_types,
            description: new.description,
            enabled: true,
            disabled_reason: None,
            sealed_secret: self.keyring.seal(&id.to_bytes(), secret.as_bytes()),
            previous: None,
            failing_since_ms: None,
            created_at_ms: self.clock.now_ms(),
        };
        self.store.put_endpoint(&endpoint).await?;
        Ok((endpoint, secret))
    }

    /// The caller's endpoints, oldest first.
    pub async fn endpoints(&self, who: &Principal) -> Result<Vec<Endpoint>, DomainError> {
        let reseller = self.reseller_of(who).await?;
        Ok(self.store.endpoints(reseller.id).await?)
    }

    /// One of the caller's endpoints.
    pub async fn endpoint(&self, who: &Principal, id: EndpointId) -> Result<Endpoint, DomainError> {
        let reseller = self.reseller_of(who).await?;
        self.store
            .endpoint(reseller.id, id)
            .await?
            .ok_or(DomainError::NotFound("webhook endpoint"))
    }

    /// Change one of the caller's endpoints: its URL (checked like a new one), event types,
    /// description, or whether it is enabled. Enabling one the gateway disabled clears why
    /// and its failing mark: deliveries resume with the next event (redeliver the missed
    /// ones from `GET /v1/events`).
    pub async fn update_endpoint(
        &self,
        who: &Principal,
        id: EndpointId,
        change: EndpointChange,
    ) -> Result<Endpoint, DomainError> {
        self.writer_of(who).await?;
        let mut endpoint = self.endpoint(who, id).await?;
        if let Some(url) = change.url {
            self.check_endpoint_url(&url).await?;
            endpoint.url = url;
        }
        if let Some(types) = change.event_types {
            endpoint.event_types = event_types(Some(types))?;
        }
        if let Some(description) = change.description {
            check_description(&description)?;
            endpoint.description = Some(description);
        }
        if let Some(enabled) = change.enabled {
            endpoint.enabled = enabled;
            if enabled {
                endpoint.disabled_reason = None;
                endpoint.failing_since_ms = None;
            }
        }
        self.store.put_endpoint(&endpoint).await?;
        Ok(endpoint)
    }

    /// Remove one of the caller's endpoints: nothing more is delivered to it.
    pub async fn delete_endpoint(
        &self,
        who: &Principal,
        id: EndpointId,
    ) -> Result<(), DomainError> {
        let reseller = self.writer_of(who).await?;
        if self.store.delete_endpoint(reseller, id).await? {
            Ok(())
        } else {
            Err(DomainError::NotFound("webhook endpoint"))
        }
    }

    /// Give an endpoint a new secret, shown this once. Until the grace period ends,
    /// deliveries carry a signature by each, so the receiver can switch at leisure.
    pub async fn rotate_endpoint_secret(
        &self,
        who: &Principal,
        id: EndpointId,
    ) -> Result<(Endpoint, String), DomainError> {
        self.writer_of(who).await?;
        let mut endpoint = self.endpoint(who, id).await?;
        let secret = self.new_secret()?;
        let grace = self.tuning.webhooks.rotation_grace.as_millis() as u64;
        endpoint.previous = Some(PreviousSecret {
            sealed: std::mem::replace(
                &mut endpoint.sealed_secret,
                self.keyring.seal(&id.to_bytes(), secret.as_bytes()),
            ),
            until_ms: self.clock.now_ms().saturating_add(grace),
        });
        self.store.put_endpoint(&endpoint).await?;
        Ok((endpoint, secret))
    }

    /// Send the endpoint a `webhook.test` message now and record the attempt; the
    /// endpoint's state is not changed by how it went.
    pub async fn test_endpoint(
        &self,
        who: &Principal,
        id: EndpointId,
    ) -> Result<Attempt, DomainError> {
        self.writer_of(who).await?;
        let endpoint = self.endpoint(who, id).await?;
        let message = EventId::new();
        let now = self.clock.now_ms();
        let body = serde_json::json!({
            "type": "webhook.test",
            "timestamp": rfc3339(now),
            "data": {"endpoint_id": endpoint.id},
        });
        let sent = self
            .send(&endpoint, message, serde_json::to_vec(&body).expect("JSON"))
            .await?;
        self.record_attempt(&endpoint, message, 1, sent).await
    }

    /// The attempts at one of the caller's endpoints, newest first.
    pub async fn attempts(
        &self,
        who: &Principal,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: usize,
    ) -> Result<Page<Attempt>, DomainError> {
        let endpoint = self.endpoint(who, endpoint).await?;
        Ok(self
            .store
            .attempts_page(endpoint.reseller, endpoint.id, before, limit)
            .await?)
    }

    /// Deliver one of the caller's events again, with its original id, to every enabled
    /// endpoint that wants it; returns how many deliveries were scheduled (one already
    /// scheduled is left to run).
    pub async fn redeliver(&self, who: &Principal, id: EventId) -> Result<usize, DomainError> {
        let reseller = self.writer_of(who).await?;
        let event = self
            .store
            .event(reseller, id)
            .await?
            .ok_or(DomainError::NotFound("event"))?;
        self.schedule_deliveries(&event).await
    }

    /// Turn what waits in the outbox into one delivery job per subscribed endpoint, then
    /// take it out, batch by batch until the outbox is empty (or a run's share is done,
    /// so other jobs get the slot). A crash in between schedules again: delivery is at
    /// least once. Returns how many events were dispatched.
    pub async fn dispatch_events(&self) -> Result<usize, DomainError> {
        let mut dispatched = 0;
        while dispatched < DISPATCH_RUN {
            let events = self.store.outbox(DISPATCH_BATCH).await?;
            if events.is_empty() {
                break;
            }
            for event in &events {
                self.schedule_deliveries(event).await?;
            }
            self.store.dispatched(&events).await?;
            dispatched += events.len();
        }
        Ok(dispatched)
    }

    /// Schedule `event`'s delivery to each of its reseller's endpoints that wants it.
    async fn schedule_deliveries(&self, event: &Event) -> Result<usize, DomainError> {
        let now = self.clock.now_ms();
        let first = self
            .tuning
            .webhooks
            .wait_before(1, 0.0, None)
            .unwrap_or_default();
        let due = now.saturating_add(first.as_millis() as u64);
        let mut scheduled = 0;
        for endpoint in self.store.endpoints(event.reseller).await? {
            if endpoint.wants(event.kind)
                && self
                    .store
                    .add_job(&Job::deliver(event, endpoint.id, 1, due))
                    .await?
            {
                scheduled += 1;
            }
        }
        if scheduled > 0 {
            self.alarm.set(due);
        }
        Ok(scheduled)
    }

    /// Try number `number` of delivering event `event` to endpoint `endpoint`, and what
    /// follows it.
    pub async fn deliver(
        &self,
        reseller: ResellerId,
        endpoint: EndpointId,
        event: EventId,
        number: u32,
    ) -> Result<NextTry, DomainError> {
        let Some(_slot) = self.deliveries.slot(endpoint) else {
            return Ok(NextTry::Busy(DeliveryBook::BUSY_WAIT));
        };
        let Some(mut endpoint) = self.store.endpoint(reseller, endpoint).await? else {
            return Ok(NextTry::Done);
        };
        let Some(event) = self.store.event(reseller, event).await? else {
            return Ok(NextTry::Done);
        };
        if !endpoint.wants(event.kind) {
            return Ok(NextTry::Done);
        }
        let body = Payload::of(&event, rfc3339(event.created_at_ms));
        let body = serde_json::to_vec(&body).expect("payloads serialise");
        let sent = self.send(&endpoint, event.id, body).await?;
        let retry_after = sent.retry_after;
        let attempt = self
            .record_attempt(&endpoint, event.id, number, sent)
            .await?;
        self.deliveries.ended(attempt.outcome);
        let now = attempt.at_ms;
        let next = match attempt.outcome {
            AttemptOutcome::Delivered => {
                if endpoint.failing_since_ms.take().is_some() {
                    self.store.put_endpoint(&endpoint).await?;
                }
                return Ok(NextTry::Done);
            }
            AttemptOutcome::Gone => {
                self.disable(&mut endpoint, "the endpoint answered 410 Gone".into())
                    .await?;
                return Ok(NextTry::Done);
            }
            AttemptOutcome::Failed => {
                let fraction = random_fraction(&self.rng);
                self.tuning
                    .webhooks
                    .wait_before(number + 1, fraction, retry_after)
            }
        };
        let since = *endpoint.failing_since_ms.get_or_insert(now);
        let failing_for = Duration::from_millis(now.saturating_sub(since));
        if failing_for >= self.tuning.webhooks.disable_after {
            let why = format!(
                "every delivery failed for {} hours",
                failing_for.as_secs() / 3600
            );
            self.disable(&mut endpoint, why).await?;
            return Ok(NextTry::Done);
        }
        if since == now {
            self.store.put_endpoint(&endpoint).await?;
        }
        Ok(next.map_or(NextTry::Done, NextTry::After))
    }

    /// Webhook figures for metrics: attempts by outcome, what waits, and for how long.
    pub async fn webhook_stats(&self) -> Result<WebhookStats, DomainError> {
        let now = self.clock.now_ms();
        let age = |id: EventId| now.saturating_sub(id.0.timestamp_ms());
        let outbox = self.store.outbox(usize::MAX).await?;
        let queued = self.store.jobs_with_prefix(Job::DELIVER_PREFIX).await?;
        let oldest = outbox
            .iter()
            .map(|e| age(e.id))
            .chain(queued.iter().filter_map(|j| match j.kind {
                crate::domain::jobs::JobKind::Deliver { event, .. } => Some(age(event)),
                _ => None,
            }))
            .max()
            .unwrap_or(0);
        let (attempts, deferred) = self.deliveries.counts();
        Ok(WebhookStats {
            attempts,
            deferred,
            outbox: outbox.len(),
            queued: queued.len(),
            oldest_undelivered_ms: oldest,
        })
    }

    /// Sign with the endpoint's secrets (the previous one too, during its grace period)
    /// and send.
    async fn send(
        &self,
        endpoint: &Endpoint,
        message: EventId,
        body: Vec<u8>,
    ) -> Result<Sent, DomainError> {
        let now = self.clock.now_ms();
        let context = endpoint.id.to_bytes();
        let open = |sealed: &[u8]| {
            self.keyring
                .open(&context, sealed)
                .and_then(|s| String::from_utf8(s).ok())
                .ok_or_else(|| {
                    crate::domain::store::StoreError::Decode(format!(
                        "the secret of webhook endpoint {} does not open",
                        endpoint.id
                    ))
                })
        };
        let mut secrets = vec![open(&endpoint.sealed_secret)?];
        if let Some(previous) = endpoint.previous.as_ref().filter(|p| p.until_ms > now) {
            secrets.push(open(&previous.sealed)?);
        }
        Ok(self
            .webhooks
            .send(Outbound {
                url: endpoint.url.clone(),
                msg_id: message.to_string(),
                timestamp_secs: now / 1000,
                body,
                secrets,
            })
            .await)
    }

    async fn record_attempt(
        &self,
        endpoint: &Endpoint,
        event: EventId,
        number: u32,
        sent: Sent,
    ) -> Result<Attempt, DomainError> {
        let attempt = Attempt {
            id: AttemptId::new(),
            endpoint: endpoint.id,
            reseller: endpoint.reseller,
            event,
            number,
            at_ms: self.clock.now_ms(),
            status: sent.status,
            latency_ms: sent.latency.as_millis() as u64,
            answer: sent.answer,
            error: sent.error,
            outcome: sent.outcome,
        };
        self.store.put_attempt(&attempt).await?;
        Ok(attempt)
    }

    /// Disable `endpoint`, and tell its reseller in the same commit.
    async fn disable(&self, endpoint: &mut Endpoint, why: String) -> Result<(), DomainError> {
        tracing::warn!(endpoint = %endpoint.id, reseller = %endpoint.reseller, reason = %why, "webhook endpoint disabled");
        endpoint.enabled = false;
        endpoint.disabled_reason = Some(why.clone());
        let told =
            Event::endpoint_disabled(endpoint.reseller, endpoint.id, why, self.clock.now_ms());
        let change = Commit::change(None, Vec::new(), vec![told]).with_endpoint(endpoint.clone());
        if let Err(rejected) = self.store.commit(&change).await? {
            return Err(StoreError::Backend(format!(
                "disabling webhook endpoint {} was refused: {rejected}",
                endpoint.id
            ))
            .into());
        }
        Ok(())
    }

    fn new_secret(&self) -> Result<String, DomainError> {
        self.webhooks.new_secret().map_err(|e| {
            DomainError::Store(crate::domain::store::StoreError::Backend(format!(
                "no webhook secret could be made: {e}"
            )))
        })
    }

    /// Whether deliveries may go to `url` (a 422 on `/url` when not).
    async fn check_endpoint_url(&self, url: &str) -> Result<(), DomainError> {
        if url.len() > MAX_URL {
            return Err(DomainError::Invalid {
                field: "/url",
                message: format!("at most {MAX_URL} bytes"),
            });
        }
        self.webhooks
            .check_url(url)
            .await
            .map_err(|message| DomainError::Invalid {
                field: "/url",
                message,
            })
    }

    /// The reseller of a key that may change things.
    async fn writer_of(&self, who: &Principal) -> Result<ResellerId, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        Ok(self.reseller_of(who).await?.id)
    }
}
