//! Events: what happened to a reseller's records, as the reseller hears of it (webhooks,
//! `GET /v1/events`). An event is written in the same [`Commit`](super::store::Commit)
//! as the state change that causes it, never after it: no change goes without its event
//! and no event is told of a change that did not happen. Payloads are thin (ids and
//! states; never personal data or activation codes): a receiver reads the record itself
//! with its API key.

use serde::{Deserialize, Serialize};

use super::ekyc::EkycStatus;
use super::ids::{EkycSessionId, EndpointId, EventId, OrderId, ResellerId};
use super::ledger::{Balance, LedgerEntry};
use super::orders::{EsimRecord, Order, OrderStatus};
use super::supplier::{PlanState, ProfileState};

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum EventType {
    /// An order is waiting for its supplier (raised when its first step did not settle it).
    #[serde(rename = "order.submitted")]
    OrderSubmitted,
    /// An order's eSIMs were delivered (its hold captured).
    #[serde(rename = "order.fulfilled")]
    OrderFulfilled,
    /// An order failed (its hold released).
    #[serde(rename = "order.failed")]
    OrderFailed,
    /// A fulfilled order was cancelled and refunded.
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
    /// An eSIM's profile changed state (downloaded, installed, enabled, deleted, ...).
    #[serde(rename = "esim.profile_state_changed")]
    EsimProfileStateChanged,
    /// An eSIM's plan changed state (active, depleted, expired, ...).
    #[serde(rename = "esim.plan_state_changed")]
    EsimPlanStateChanged,
    /// An eSIM used 80% (then 100%) of its plan's data.
    #[serde(rename = "esim.usage_threshold")]
    EsimUsageThreshold,
    /// An order's hold took the prepaid balance below the reseller's alert threshold.
    #[serde(rename = "balance.low")]
    BalanceLow,
    /// The gateway disabled one of the reseller's webhook endpoints (it answered 410, or
    /// failed for days): told to its other endpoints and listed by `GET /v1/events`.
    #[serde(rename = "webhook_endpoint.disabled")]
    WebhookEndpointDisabled,
    /// An order's identity verification was decided: approved, rejected or expired.
    #[serde(rename = "ekyc_session.status_changed")]
    EkycSessionStatusChanged,
}

impl EventType {
    /// Every type, for validating a subscription or a filter.
    pub const ALL: [EventType; 10] = [
        EventType::OrderSubmitted,
        EventType::OrderFulfilled,
        EventType::OrderFailed,
        EventType::OrderCancelled,
        EventType::EsimProfileStateChanged,
        EventType::EsimPlanStateChanged,
        EventType::EsimUsageThreshold,
        EventType::BalanceLow,
        EventType::WebhookEndpointDisabled,
        EventType::EkycSessionStatusChanged,
    ];

    /// The type's wire name, e.g. `order.fulfilled`.
    pub fn name(self) -> &'static str {
        match self {
            EventType::OrderSubmitted => "order.submitted",
            EventType::OrderFulfilled => "order.fulfilled",
            EventType::OrderFailed => "order.failed",
            EventType::OrderCancelled => "order.cancelled",
            EventType::EsimProfileStateChanged => "esim.profile_state_changed",
            EventType::EsimPlanStateChanged => "esim.plan_state_changed",
            EventType::EsimUsageThreshold => "esim.usage_threshold",
            EventType::BalanceLow => "balance.low",
            EventType::WebhookEndpointDisabled => "webhook_endpoint.disabled",
            EventType::EkycSessionStatusChanged => "ekyc_session.status_changed",
        }
    }

    /// The type named `name`.
    pub fn named(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The event an order's move to `status` raises, if any.
    fn of_order_status(status: OrderStatus) -> Option<EventType> {
        match status {
            OrderStatus::Submitted => Some(EventType::OrderSubmitted),
            OrderStatus::Fulfilled => Some(EventType::OrderFulfilled),
            OrderStatus::Failed => Some(EventType::OrderFailed),
            OrderStatus::Cancelled => Some(EventType::OrderCancelled),
            OrderStatus::Accepted | OrderStatus::AwaitingKyc => None,
        }
    }
}

/// What an event is about: ids and states only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum EventData {
    /// An order changed state.
    Order(OrderEvent),
    /// An eSIM changed state.
    Esim(EsimEvent),
    /// A webhook endpoint was disabled.
    Endpoint(EndpointEvent),
    /// A balance fell below its alert threshold.
    Balance(BalanceEvent),
    /// An eSIM reached a share of its plan's data.
    Usage(UsageEvent),
    /// An identity verification was decided.
    Ekyc(EkycEvent),
}

/// An identity verification's new status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EkycEvent {
    /// The session.
    pub session_id: EkycSessionId,
    /// The order it verifies.
    pub order_id: OrderId,
    /// Its status now.
    pub status: EkycStatus,
}

/// An eSIM that used a share of its plan's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    /// The eSIM.
    pub iccid: String,
    /// The order that delivered it.
    pub order_id: OrderId,
    /// The threshold reached: 80 or 100 (percent).
    pub percent: u8,
    /// Bytes used when it was seen.
    pub used_bytes: u64,
    /// Bytes the plan includes.
    pub total_bytes: u64,
}

/// The usage thresholds told, in percent of a plan's data.
pub const USAGE_THRESHOLDS: [u8; 2] = [80, 100];

/// A prepaid balance below its alert threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceEvent {
    /// ISO 4217 currency.
    pub currency: String,
    /// Available now, minor units.
    pub available_minor: i64,
    /// The threshold it fell below, minor units.
    pub threshold_minor: i64,
}

/// A webhook endpoint the gateway disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointEvent {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Why.
    pub reason: String,
}

/// An eSIM's change of state: both axes as they are now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EsimEvent {
    /// The eSIM.
    pub iccid: String,
    /// The order that delivered it.
    pub order_id: OrderId,
    /// Its profile's state now.
    pub profile_state: ProfileState,
    /// Its plan's state now.
    pub plan_state: PlanState,
}

/// An order's change of state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderEvent {
    /// The order.
    pub order_id: OrderId,
    /// Its status now.
    pub status: OrderStatus,
    /// Why it failed (`order.failed` only): the code its `failure` carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
}

/// One event, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Stable id: every delivery of this event carries it (`webhook-id`).
    pub id: EventId,
    /// The reseller it concerns.
    pub reseller: ResellerId,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When, ms since the epoch.
    pub created_at_ms: u64,
    /// About what.
    pub data: EventData,
}

impl Event {
    /// The event of `esim` having used `used` of `total` bytes, if that reaches a
    /// threshold above the one it was last told of; with the threshold reached.
    pub fn of_usage(esim: &EsimRecord, used: u64, total: u64, at_ms: u64) -> Option<(u8, Event)> {
        if total == 0 {
            return None;
        }
        let percent = (u128::from(used) * 100 / u128::from(total)).min(100) as u8;
        let reached = USAGE_THRESHOLDS
            .into_iter()
            .filter(|t| *t <= percent && *t > esim.usage_told_pct)
            .max()?;
        Some((
            reached,
            Event {
                id: EventId::new(),
                reseller: esim.reseller,
                kind: EventType::EsimUsageThreshold,
                created_at_ms: at_ms,
                data: EventData::Usage(UsageEvent {
                    iccid: esim.iccid.clone(),
                    order_id: esim.order,
                    percent: reached,
                    used_bytes: used,
                    total_bytes: total,
                }),
            },
        ))
    }

    /// The event of `entry` leaving its balance at `after`, below `threshold`.
    pub fn balance_low(entry: &LedgerEntry, after: Balance, threshold: i64) -> Event {
        Event {
            id: EventId::new(),
            reseller: entry.reseller,
            kind: EventType::BalanceLow,
            created_at_ms: entry.created_at_ms,
            data: EventData::Balance(BalanceEvent {
                currency: entry.currency.clone(),
                available_minor: after.available,
                threshold_minor: threshold,
            }),
        }
    }

    /// The event of a reseller's endpoint `endpoint` having been disabled for `reason`.
    pub fn endpoint_disabled(
        reseller: ResellerId,
        endpoint: EndpointId,
        reason: String,
        at_ms: u64,
    ) -> Event {
        Event {
            id: EventId::new(),
            reseller,
            kind: EventType::WebhookEndpointDisabled,
            created_at_ms: at_ms,
            data: EventData::Endpoint(EndpointEvent {
                endpoint_id: endpoint,
                reason,
            }),
        }
    }

    /// The events of `esim` having changed from `before` (profile, plan) to its states
    /// now: one per axis that moved.
    pub fn of_esim(esim: &EsimRecord, before: (ProfileState, PlanState), at_ms: u64) -> Vec<Event> {
        let data = EventData::Esim(EsimEvent {
            iccid: esim.iccid.clone(),
            order_id: esim.order,
            profile_state: esim.profile,
            plan_state: esim.plan,
        });
        let moved = [
            (before.0 != esim.profile, EventType::EsimProfileStateChanged),
            (before.1 != esim.plan, EventType::EsimPlanStateChanged),
        ];
        moved
            .into_iter()
            .filter(|(changed, _)| *changed)
            .map(|(_, kind)| Event {
                id: EventId::new(),
                reseller: esim.reseller,
                kind,
                created_at_ms: at_ms,
                data: data.clone(),
            })
            .collect()
    }

    /// The event of `order`'s verification session changing status at `at_ms`.
    pub fn of_ekyc(order: &Order, at_ms: u64) -> Event {
        let status = order
            .ekyc
            .as_ref()
            .map_or(EkycStatus::Expired, |session| session.status);
        Event {
            id: EventId::new(),
            reseller: order.reseller,
            kind: EventType::EkycSessionStatusChanged,
            created_at_ms: at_ms,
            data: EventData::Ekyc(EkycEvent {
                session_id: EkycSessionId::of(order.id),
                order_id: order.id,
                status,
            }),
        }
    }

    /// The event of `order` having just moved to its current status, if that move raises
    /// one.
    pub fn of_order(order: &Order) -> Option<Event> {
        let kind = EventType::of_order_status(order.status)?;
        Some(Event {
            id: EventId::new(),
            reseller: order.reseller,
            kind,
            created_at_ms: order.updated_at_ms,
            data: EventData::Order(OrderEvent {
                order_id: order.id,
                status: order.status,
                failure_code: order.failure.as_ref().map(|f| f.code.clone()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip_through_the_wire_form() {
        for t in EventType::ALL {
            let wire = serde_json::to_value(t).unwrap();
            assert_eq!(wire, t.name());
            assert_eq!(EventType::named(t.name()), Some(t));
        }
        assert_eq!(EventType::named("order.exploded"), None);
    }

    #[test]
    fn usage_is_told_at_80_then_100_percent_and_each_once() {
        let mut esim = EsimRecord {
            iccid: "8999000000000000102".into(),
            order: OrderId::new(),
            reseller: ResellerId::new(),
            plugin: "p".into(),
            sealed_activation: Vec::new(),
            confirmation_code_required: false,
            luhn_valid: true,
            profile: ProfileState::Enabled,
            plan: PlanState::Active,
            raw_status: String::new(),
            created_at_ms: 0,
            usage_told_pct: 0,
        };
        let told = |esim: &EsimRecord, used| Event::of_usage(esim, used, 1_000, 5).map(|(p, _)| p);
        assert_eq!(told(&esim, 799), None);
        assert_eq!(told(&esim, 800), Some(80));
        assert_eq!(
            told(&esim, 1_000),
            Some(100),
            "a jump past both tells the higher"
        );
        esim.usage_told_pct = 80;
        assert_eq!(told(&esim, 950), None, "80 was told already");
        assert_eq!(told(&esim, 5_000), Some(100), "over the plan counts as 100");
        esim.usage_told_pct = 100;
        assert_eq!(told(&esim, 5_000), None);
        assert_eq!(
            Event::of_usage(&esim, 5, 0, 5).map(|(p, _)| p),
            None,
            "no plan size"
        );
        let (_, event) = Event::of_usage(
            &EsimRecord {
                usage_told_pct: 0,
                ..esim.clone()
            },
            900,
            1_000,
            7,
        )
        .unwrap();
        assert_eq!(event.kind, EventType::EsimUsageThreshold);
        assert_eq!(event.created_at_ms, 7);
    }

    #[test]
    fn stored_events_read_back_as_written() {
        let event = Event {
            id: EventId::new(),
            reseller: ResellerId::new(),
            kind: EventType::OrderFailed,
            created_at_ms: 5,
            data: EventData::Order(OrderEvent {
                order_id: OrderId::new(),
                status: OrderStatus::Failed,
                failure_code: Some("out_of_stock".into()),
            }),
        };
        let bytes = serde_json::to_vec(&event).unwrap();
        assert_eq!(serde_json::from_slice::<Event>(&bytes).unwrap(), event);
    }
}
