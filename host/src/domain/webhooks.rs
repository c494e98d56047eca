//! Webhook endpoints and deliveries: how a reseller hears of its events without polling.
//!
//! A reseller registers endpoints (a URL, the event types it wants). Every event a
//! [`Commit`](super::store::Commit) raises lands in the store's outbox with it; a dispatch
//! job turns each outbox event into one delivery job per subscribed, enabled endpoint, and
//! each delivery job POSTs the event through the [`Webhooks`] port (signed per the
//! Standard Webhooks spec, the event id as `webhook-id`) until the endpoint answers 2xx,
//! answers 410 (the endpoint is disabled), has failed for [`WebhookTuning::disable_after`]
//! (disabled too), or the retry schedule is spent. Every attempt is recorded for the
//! reseller to read. Delivery is at least once: a receiver dedupes on `webhook-id`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::events::{Event, EventType};
use super::ids::{AttemptId, EndpointId, EventId, ResellerId};
use super::supplier::BoxFuture;

/// A reseller's webhook endpoint, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its id.
    pub id: EndpointId,
    /// Owner.
    pub reseller: ResellerId,
    /// Where deliveries go (`https://` or `http://`), checked at every delivery.
    pub url: String,
    /// The event types it receives.
    pub event_types: Vec<EventType>,
    /// The reseller's note.
    pub description: Option<String>,
    /// Deliveries are made only while it is enabled.
    pub enabled: bool,
    /// Why the gateway disabled it (410, or failing too long).
    pub disabled_reason: Option<String>,
    /// The signing secret (`whsec_...`), sealed under the master key, bound to the id.
    #[serde(with = "super::personal::b64")]
    pub sealed_secret: Vec<u8>,
    /// The secret before the last rotation, while it still signs beside the new one.
    #[serde(default)]
    pub previous: Option<PreviousSecret>,
    /// Since when every delivery has failed (none has succeeded since), if so.
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
}

/// A rotated-out secret during its grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// Sealed like [`Endpoint::sealed_secret`].
    #[serde(with = "super::personal::b64")]
    pub sealed: Vec<u8>,
    /// When it stops signing, ms since the epoch.
    pub until_ms: u64,
}

impl Endpoint {
    /// Whether it receives events of `kind`.
    pub fn wants(&self, kind: EventType) -> bool {
        self.enabled && self.event_types.contains(&kind)
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// The endpoint answered 410 Gone: it is disabled.
    Gone,
    /// Anything else: refused address, no answer in time, a non-2xx status.
    Failed,
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its id (sorts by time).
    pub id: AttemptId,
    /// The endpoint tried.
    pub endpoint: EndpointId,
    /// Its owner.
    pub reseller: ResellerId,
    /// The event delivered.
    pub event: EventId,
    /// Which try this was for this event and endpoint, from 1.
    pub number: u32,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The HTTP status, if the endpoint answered.
    pub status: Option<u16>,
    /// How long it took.
    pub latency_ms: u64,
    /// The first bytes of the answer.
    pub answer: String,
    /// Why it failed, when no status tells.
    pub error: Option<String>,
    /// The outcome.
    pub outcome: AttemptOutcome,
}

/// One webhook to send.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The endpoint's URL.
    pub url: String,
    /// `webhook-id`: the event's id.
    pub msg_id: String,
    /// `webhook-timestamp`, unix seconds.
    pub timestamp_secs: u64,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Signing secrets (`whsec_...`), the current one first.
    pub secrets: Vec<String>,
}

/// What sending a webhook came to.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The HTTP status, if the endpoint answered.
    pub status: Option<u16>,
    /// How long it took.
    pub latency: Duration,
    /// The first bytes of the answer.
    pub answer: String,
    /// Why it failed, when no status tells.
    pub error: Option<String>,
    /// How long the endpoint asked us to wait (`Retry-After` on 429, 502, 504).
    pub retry_after: Option<Duration>,
    /// The outcome.
    pub outcome: AttemptOutcome,
}

/// What the domain needs to deliver webhooks; `webhooks::HttpWebhooks` implements it.
pub trait Webhooks: Send + Sync {
    /// A new signing secret, `whsec_` + base64 of random bytes (an error only if the
    /// system's random source fails).
    fn new_secret(&self) -> Result<String, String>;
    /// Whether `url` is one deliveries may go to: `http(s)`, no credentials, and not at
    /// a loopback, private, link-local or metadata address (unless the operator allowed
    /// those). Names are resolved, as they are again at every delivery.
    fn check_url<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Sign and POST one webhook; never fails: a failure is a [`Sent`] that says so.
    fn send(&self, outbound: Outbound) -> BoxFuture<'_, Sent>;
}

/// How webhooks are delivered; tests shrink the times.
#[derive(Debug, Clone)]
pub struct WebhookTuning {
    /// Waits before each try, the first usually zero (Standard Webhooks' example).
    pub schedule: Vec<Duration>,
    /// An endpoint failing for this long is disabled (and its reseller told).
    pub disable_after: Duration,
    /// How often the outbox is turned into deliveries.
    pub dispatch_every: Duration,
    /// How long a rotated secret keeps signing beside the new one.
    pub rotation_grace: Duration,
    /// Endpoints a reseller may have.
    pub max_endpoints: usize,
}

impl Default for WebhookTuning {
    fn default() -> Self {
        let m = |minutes: u64| Duration::from_secs(minutes * 60);
        WebhookTuning {
            // Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
            schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                m(5),
                m(30),
                m(120),
                m(300),
                m(600),
                m(840),
                m(1200),
                m(1440),
            ],
            disable_after: Duration::from_secs(5 * 24 * 3600),
            dispatch_every: Duration::from_secs(1),
            rotation_grace: Duration::from_secs(24 * 3600),
            max_endpoints: 16,
        }
    }
}

impl WebhookTuning {
    /// The wait before try `number` (from 1), stretched by up to a tenth by `fraction`
    /// in [0, 1) so endpoints that failed together are not retried together, and never
    /// shorter than the endpoint asked for; `None` once the schedule is spent.
    pub fn wait_before(
        &self,
        number: u32,
        fraction: f64,
        asked: Option<Duration>,
    ) -> Option<Duration> {
        let base = *self.schedule.get(number.checked_sub(1)? as usize)?;
        let jittered = base + base.mul_f64(fraction.clamp(0.0, 1.0) / 10.0);
        Some(asked.map_or(jittered, |a| a.max(jittered)))
    }
}

/// What a delivery job does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextTry {
    /// Nothing: delivered, or given up (endpoint gone or disabled, schedule spent).
    Done,
    /// Try again after this wait (the try counts).
    After(Duration),
    /// The endpoint has its share of deliveries in flight: run this one a little later
    /// (no try was made, none is counted).
    Busy(Duration),
}

/// Deliveries in flight per endpoint, and counts of how attempts ended, for fairness and
/// metrics. A slow or dead endpoint holds at most [`DeliveryBook::PER_ENDPOINT`] of the
/// worker's slots, so it never delays other resellers' deliveries.
#[derive(Debug, Default)]
pub struct DeliveryBook {
    in_flight: std::sync::Mutex<std::collections::HashMap<EndpointId, usize>>,
    delivered: std::sync::atomic::AtomicU64,
    gone: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    deferred: std::sync::atomic::AtomicU64,
}

/// A delivery slot of one endpoint, given back when dropped.
pub struct Slot<'a> {
    book: &'a DeliveryBook,
    endpoint: EndpointId,
}

impl DeliveryBook {
    /// Deliveries one endpoint may have in flight at once: a quarter of the job worker's
    /// 64 slots. At two, one busy endpoint took ~500 deliveries/s at most (BENCHMARKS.md).
    pub const PER_ENDPOINT: usize = 16;
    /// How long a delivery waits for a busy endpoint before it is run again.
    pub const BUSY_WAIT: Duration = Duration::from_secs(1);

    /// A slot for a delivery to `endpoint`, unless it has its share in flight.
    pub fn slot(&self, endpoint: EndpointId) -> Option<Slot<'_>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = in_flight.entry(endpoint).or_default();
        if *n >= Self::PER_ENDPOINT {
            self.deferred
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(Slot {
            book: self,
            endpoint,
        })
    }

    /// Count how an attempt ended.
    pub fn ended(&self, outcome: AttemptOutcome) {
        let counter = match outcome {
            AttemptOutcome::Delivered => &self.delivered,
            AttemptOutcome::Gone => &self.gone,
            AttemptOutcome::Failed => &self.failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `(outcome, attempts)` since start, and deliveries deferred for a busy endpoint.
    pub fn counts(&self) -> ([(&'static str, u64); 3], u64) {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        (
            [
                ("delivered", get(&self.delivered)),
                ("gone", get(&self.gone)),
                ("failed", get(&self.failed)),
            ],
            get(&self.deferred),
        )
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .book
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.endpoint) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.endpoint);
            }
        }
    }
}

/// Webhook figures for metrics.
#[derive(Debug, Clone, Default)]
pub struct WebhookStats {
    /// Attempts by outcome since start.
    pub attempts: [(&'static str, u64); 3],
    /// Deliveries put off because their endpoint had its share in flight.
    pub deferred: u64,
    /// Events waiting in the outbox.
    pub outbox: usize,
    /// Deliveries scheduled and not finished.
    pub queued: usize,
    /// Age of the oldest event waiting in the outbox or for a delivery, ms.
    pub oldest_undelivered_ms: u64,
}

/// The body of a delivery: `{type, timestamp, data}` (Standard Webhooks' shape); the id
/// travels as `webhook-id`.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When, RFC 3339.
    pub timestamp: String,
    /// About what.
    pub data: &'a super::events::EventData,
}

impl<'a> Payload<'a> {
    /// The payload of `event`, its time given as RFC 3339 by `rfc3339`.
    pub fn of(event: &'a Event, timestamp: String) -> Payload<'a> {
        Payload {
            kind: event.kind,
            timestamp,
            data: &event.data,
        }
    }
}

/// A [`Webhooks`] port for tests: records what it is asked to send and answers with the
/// outcome set; every URL passes.
#[cfg(test)]
#[derive(Debug)]
pub struct FakeWebhooks {
    /// The outcome every send reports.
    pub outcome: std::sync::Mutex<AttemptOutcome>,
    /// Everything sent.
    pub sent: std::sync::Mutex<Vec<Outbound>>,
}

#[cfg(test)]
impl Default for FakeWebhooks {
    fn default() -> Self {
        FakeWebhooks {
            outcome: std::sync::Mutex::new(AttemptOutcome::Delivered),
            sent: std::sync::Mutex::default(),
        }
    }
}

#[cfg(test)]
impl Webhooks for FakeWebhooks {
    fn new_secret(&self) -> Result<String, String> {
        Ok("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())
    }

    fn check_url<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn send(&self, outbound: Outbound) -> BoxFuture<'_, Sent> {
        self.sent.lock().unwrap().push(outbound);
        let outcome = *self.outcome.lock().unwrap();
        Box::pin(async move {
            Sent {
                status: Some(match outcome {
                    AttemptOutcome::Delivered => 200,
                    AttemptOutcome::Gone => 410,
                    AttemptOutcome::Failed => 500,
                }),
                latency: Duration::from_millis(1),
                answer: String::new(),
                error: None,
                retry_after: None,
                outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_gets_its_share_of_slots_and_no_more_until_one_is_given_back() {
        let book = DeliveryBook::default();
        let (slow, other) = (EndpointId::new(), EndpointId::new());
        let mut held: Vec<Slot<'_>> = (0..DeliveryBook::PER_ENDPOINT)
            .map(|_| book.slot(slow).unwrap())
            .collect();
        assert!(book.slot(slow).is_none(), "its share is in flight");
        assert!(
            book.slot(other).is_some(),
            "another endpoint is not held up"
        );
        held.pop();
        assert!(book.slot(slow).is_some());
        assert_eq!(book.counts().1, 1, "one deferral counted");
    }

    #[test]
    fn the_default_schedule_is_the_standard_webhooks_example_and_then_stops() {
        let t = WebhookTuning::default();
        let secs: Vec<u64> = (1..=10)
            .map(|n| t.wait_before(n, 0.0, None).unwrap().as_secs())
            .collect();
        assert_eq!(
            secs,
            [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
        );
        assert_eq!(t.wait_before(11, 0.0, None), None);
        assert_eq!(t.wait_before(0, 0.0, None), None);
    }

    #[test]
    fn jitter_stretches_a_wait_by_at_most_a_tenth_and_retry_after_is_honoured() {
        let t = WebhookTuning::default();
        let w = t.wait_before(3, 0.999, None).unwrap();
        assert!(w >= Duration::from_secs(300) && w < Duration::from_secs(330));
        let asked = Some(Duration::from_secs(900));
        assert_eq!(t.wait_before(3, 0.0, asked), asked);
        assert_eq!(
            t.wait_before(3, 0.0, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(300))
        );
    }
}
