//! Webhooks: the mechanics of telling a reseller's receiver that something happened, in
//! the [Standard Webhooks](https://www.standardwebhooks.com/) format, so a receiver can use
//! an existing library instead of our documentation.
//!
//! What lives here, and what does not:
//!
//! | module | holds | does not hold |
//! |---|---|---|
//! | [`signing`] | endpoint secrets, signatures, the receiver-side [`Verifier`] | where secrets are stored |
//! | [`delivery`] | one HTTP attempt: URL rules, the address guard, timeout, capped answer | which events, retries, backoff, disabling endpoints |
//! | [`http`] | the domain's `Webhooks` port over the two above | anything the domain decides |
//!
//! Which events are sent, the outbox they wait in and the retry schedule are the domain's
//! and the jobs worker's: [`signing`] and [`delivery`] are handed a body, an id, a
//! timestamp and secrets, and report an [`Attempt`]; they do not know what an order is.
//!
//! Why each attempt is signed afresh and resolved afresh: receivers refuse a timestamp more
//! than five minutes off (it is the replay protection), so a retry an hour later carries a
//! new `webhook-timestamp` and signature but the same `webhook-id`; and an endpoint's name
//! may point somewhere else by the next attempt, so the address guard (shared with plugin
//! egress, [`crate::net`]) runs every time.
//!
//! Why a space-separated signature list: when a reseller rotates its secret, deliveries
//! carry a signature with the new secret and, for a grace period, one with the old, so the
//! receiver can switch secrets whenever it likes without dropping a message.
//!
//! # For receivers
//!
//! Every delivery is a `POST` with a JSON body and three headers: `webhook-id` (the same on
//! every retry of a message: ignore ids you have already processed), `webhook-timestamp`
//! (Unix seconds) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of your
//! `whsec_...` secret; one or more, space-separated). Verify the raw body bytes before
//! parsing them, reject timestamps more than five minutes from your clock, and answer 2xx
//! at once (process afterwards): anything else, or no answer within 15 seconds, is retried
//! later. Answer 410 Gone to stop deliveries to that URL for good. Redirects are not
//! followed.
//!
//! Any Standard Webhooks library verifies these deliveries. In Python
//! (`pip install standardwebhooks`):
//!
//! ```python
//! from standardwebhooks.webhooks import Webhook
//!
//! payload = Webhook("whsec_...").verify(request_body_bytes, request_headers)
//! ```
//!
//! In Rust, [`Verifier`] does the same: `Verifier::new(secret)?.verify(headers, body, now)`.

pub mod delivery;
pub mod http;
pub mod signing;

pub use delivery::{Attempt, Delivery, DeliveryPolicy, Outcome, check_url, deliver};
pub use http::HttpWebhooks;
pub use signing::{
    SecretError, Verifier, VerifyError, WebhookHeaders, WebhookSecret, sign, signature_header,
};
