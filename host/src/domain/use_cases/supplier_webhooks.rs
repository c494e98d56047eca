//! Inbound supplier webhooks: accept what a plugin verified, durably, then apply it on a
//! job.
//!
//! 1. The operator's source allow-list for the plugin, if any, is checked first (for
//!    suppliers that do not sign); then the plugin's `webhooks.parse` verifies the
//!    signature and reads the body into normalised events. A refusal keeps nothing.
//! 2. The webhook is known by the supplier's event id, or else the SHA-256 of its body. One
//!    already accepted (a supplier's retry) is answered as a duplicate and not applied
//!    again.
//! 3. Its events are written as one durable job before the 2xx: nothing acknowledged is
//!    lost in a crash, and the supplier's request does not wait for the work.
//! 4. The job applies each event, only to orders and eSIMs of the same plugin: order
//!    delivered or failed (settled under the order's lock, so a fulfilment step cannot
//!    settle it twice), order ready (its poll made due now), profile and plan states and
//!    usage kept on the eSIM with the events they raise. An event naming something unknown
//!    (or another plugin's) is logged and skipped.

use crate::domain::ekyc::Inbound;
use crate::domain::fulfilment::SupplierNews;
use crate::domain::gateway::{DomainError, Gateway};
use crate::domain::ids::OrderId;
use crate::domain::jobs::{Job, JobKind};
use crate::domain::supplier::{MAX_WEBHOOK_EVENTS, SupplierError, SupplierEvent};

use super::esims::Observation;

/// What the gateway did with a supplier webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAccepted {
    /// Accepted; its events are applied shortly.
    Queued,
    /// Accepted before (a redelivery); nothing more happens.
    Duplicate,
}

/// A value from a supplier, for a log line: quoted, at most 64 characters.
fn short(value: &str) -> String {
    format!("{:?}", value.chars().take(64).collect::<String>())
}

/// The meta key that marks webhook `key` of `plugin` as applied.
fn seen_key(plugin: &str, key: &str) -> String {
    format!("inbound-seen/{plugin}/{key}")
}

impl Gateway {
    /// Accept a supplier webhook for `plugin` (see the module doc).
    pub async fn supplier_webhook(
        &self,
        plugin: &str,
        inbound: Inbound,
    ) -> Result<WebhookAccepted, DomainError> {
        let supplier = self
            .suppliers
            .get(plugin)
            .ok_or(DomainError::NotFound("plugin"))?;
        if !supplier.accepts_webhook_from(&inbound.source_address) {
            tracing::warn!(target: "simgate::security", plugin, source = %inbound.source_address, "supplier webhook from an address not allowed; refused");
            return Err(DomainError::InboundRefused(
                "source address not allowed".into(),
            ));
        }
        let body_digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &inbound.body));
        let parsed = supplier.parse_webhook(inbound).await.map_err(|e| match e {
            SupplierError::InvalidRequest(reason) | SupplierError::Rejected(reason) => {
                tracing::warn!(target: "simgate::security", plugin, %reason, "supplier webhook refused by its plugin");
                DomainError::InboundRefused(reason)
            }
            SupplierError::NotSupported => DomainError::NotFound("webhook route"),
            other => DomainError::Supplier(other),
        })?;
        if parsed.events.len() > MAX_WEBHOOK_EVENTS {
            return Err(DomainError::InboundRefused(format!(
                "more than {MAX_WEBHOOK_EVENTS} events in one webhook"
            )));
        }
        let identity = match &parsed.event_id {
            Some(id) => format!("id:{id}"),
            None => format!("body:{body_digest}"),
        };
        // Hashed: the id is the supplier's to choose, and becomes part of a key.
        let key = hex::encode(
            &ring::digest::digest(&ring::digest::SHA256, identity.as_bytes()).as_ref()[..16],
        );
        if self.store.meta(&seen_key(plugin, &key)).await?.is_some() {
            return Ok(WebhookAccepted::Duplicate);
        }
        let now = self.clock.now_ms();
        let job = Job::new(
            format!("inbound/{plugin}/{key}"),
            JobKind::SupplierEvents {
                plugin: plugin.to_string(),
                key,
                events: parsed.events,
            },
            now,
        );
        let added = self.store.add_job(&job).await?;
        self.store.durable().await?;
        if !added {
            return Ok(WebhookAccepted::Duplicate);
        }
        self.alarm.set(now);
        Ok(WebhookAccepted::Queued)
    }

    /// Apply the events of an accepted webhook (the `SupplierEvents` job), then mark it
    /// applied. Applying an event twice changes nothing, so a crash between the two only
    /// repeats work.
    pub async fn apply_supplier_events(
        &self,
        plugin: &str,
        key: &str,
        events: Vec<SupplierEvent>,
    ) -> Result<(), DomainError> {
        for event in events {
            self.apply_supplier_event(plugin, event).await?;
        }
        let now = self.clock.now_ms();
        self.store
            .put_meta(&seen_key(plugin, key), &now.to_be_bytes())
            .await?;
        Ok(())
    }

    async fn apply_supplier_event(
        &self,
        plugin: &str,
        event: SupplierEvent,
    ) -> Result<(), DomainError> {
        let (iccid, seen) = match event {
            SupplierEvent::OrderDelivered { order_ref, esims } => {
                return self
                    .order_news(plugin, &order_ref, SupplierNews::Delivered(esims))
                    .await;
            }
            SupplierEvent::OrderFailed { order_ref, reason } => {
                return self
                    .order_news(plugin, &order_ref, SupplierNews::Failed(reason))
                    .await;
            }
            SupplierEvent::OrderReady { order_ref } => {
                return self
                    .order_news(plugin, &order_ref, SupplierNews::Ready)
                    .await;
            }
            SupplierEvent::ProfileChanged {
                iccid,
                profile,
                raw_status,
            } => (
                iccid,
                Observation {
                    profile: Some(profile),
                    raw_status: Some(raw_status),
                    ..Default::default()
                },
            ),
            SupplierEvent::PlanChanged {
                iccid,
                plan,
                raw_status,
            } => (
                iccid,
                Observation {
                    plan: Some(plan),
                    raw_status: Some(raw_status),
                    ..Default::default()
                },
            ),
            SupplierEvent::UsageChanged {
                iccid,
                used_bytes,
                total_bytes,
            } => (
                iccid,
                Observation {
                    usage: total_bytes.map(|total| (used_bytes, total)),
                    ..Default::default()
                },
            ),
            SupplierEvent::UsageThreshold {
                iccid,
                used_bytes,
                percent,
            } => {
                // The plan's size from the threshold: used is `percent` of it.
                let total = (percent > 0)
                    .then(|| u128::from(used_bytes) * 100 / u128::from(percent))
                    .and_then(|t| u64::try_from(t).ok());
                (
                    iccid,
                    Observation {
                        usage: total.map(|total| (used_bytes, total)),
                        ..Default::default()
                    },
                )
            }
        };
        self.observe_plugin_esim(plugin, &iccid, seen).await
    }

    /// Apply `news` to the order `order_ref` names, if it is an open order of `plugin`.
    async fn order_news(
        &self,
        plugin: &str,
        order_ref: &str,
        news: SupplierNews,
    ) -> Result<(), DomainError> {
        let unknown = || {
            tracing::warn!(plugin, reference = %short(order_ref), "supplier event names no open order of this plugin; ignored");
            Ok(())
        };
        let Ok(id) = order_ref.parse::<OrderId>() else {
            return unknown();
        };
        if !self.fulfilment.supplier_news(plugin, id, news).await? {
            return unknown();
        }
        Ok(())
    }

    /// Apply `seen` to eSIM `iccid` if `plugin` serves it.
    async fn observe_plugin_esim(
        &self,
        plugin: &str,
        iccid: &str,
        seen: Observation,
    ) -> Result<(), DomainError> {
        match self.store.esim(iccid).await?.filter(|e| e.plugin == plugin) {
            Some(mut rec) => self.observe_esim(&mut rec, seen).await,
            None => {
                tracing::warn!(plugin, iccid = %short(iccid), "supplier event names no eSIM of this plugin; ignored");
                Ok(())
            }
        }
    }
}
