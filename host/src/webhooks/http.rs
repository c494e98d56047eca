//! The domain's [`Webhooks`] port over this module's signing and delivery: secrets become
//! [`WebhookSecret`]s only here, and a delivery's outcome is told back in the domain's
//! terms.

use bytes::Bytes;

use crate::domain::supplier::BoxFuture;
use crate::domain::webhooks::{AttemptOutcome, Outbound, Sent, Webhooks};

use super::delivery::{self, Delivery, DeliveryPolicy, Outcome};
use super::signing::WebhookSecret;

/// Webhooks over HTTP, under the operator's delivery policy.
#[derive(Debug, Clone)]
pub struct HttpWebhooks {
    policy: DeliveryPolicy,
}

impl HttpWebhooks {
    /// Deliveries under `policy`.
    pub fn new(policy: DeliveryPolicy) -> HttpWebhooks {
        HttpWebhooks { policy }
    }
}

impl Webhooks for HttpWebhooks {
    fn new_secret(&self) -> Result<String, String> {
        WebhookSecret::generate()
            .map(|s| s.expose().to_string())
            .map_err(|e| e.to_string())
    }

    fn check_url<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(delivery::check_url(url, &self.policy))
    }

    fn send(&self, outbound: Outbound) -> BoxFuture<'_, Sent> {
        Box::pin(async move {
            let secrets: Result<Vec<WebhookSecret>, _> = outbound
                .secrets
                .iter()
                .map(|s| WebhookSecret::parse(s))
                .collect();
            let secrets = match secrets {
                Ok(secrets) => secrets,
                Err(e) => return refused(format!("the endpoint's secret is unusable: {e}")),
            };
            let delivery = Delivery::signed(
                outbound.url,
                outbound.msg_id,
                outbound.timestamp_secs,
                Bytes::from(outbound.body),
                &secrets.iter().collect::<Vec<_>>(),
            );
            let attempt = delivery::deliver(&delivery, &self.policy).await;
            Sent {
                status: attempt.status,
                latency: attempt.latency,
                answer: attempt.answer,
                error: attempt.error,
                retry_after: attempt.retry_after,
                outcome: match attempt.outcome {
                    Outcome::Delivered => AttemptOutcome::Delivered,
                    Outcome::Gone => AttemptOutcome::Gone,
                    Outcome::Failed => AttemptOutcome::Failed,
                },
            }
        })
    }
}

/// A delivery that could not be attempted.
fn refused(error: String) -> Sent {
    Sent {
        status: None,
        latency: std::time::Duration::ZERO,
        answer: String::new(),
        error: Some(error),
        retry_after: None,
        outcome: AttemptOutcome::Failed,
    }
}
