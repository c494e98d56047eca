//! Inbound requests: eKYC callbacks and supplier webhooks, both signed with
//! `x-sandbox-signature` (hex HMAC-SHA256 of the body under `SANDBOX_WEBHOOK_SECRET`).
//!
//! Parsing is kept apart from the signature check so that it can be unit tested natively;
//! the check calls the host.

use serde::Deserialize;
use simgate_sdk::v0_1::secrets::{self, HmacAlgorithm, SecretError};
use simgate_sdk::v0_1::{
    EkycStatus, EkycUpdate, Inbound, OrderDelivered, OrderFailed, PlanState, ProfileState,
    StateChange, SupplierError, SupplierEvent, UsageThreshold, log,
};

use crate::derive::{esims, hex_decode, require_quantity};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-sandbox-signature";
/// The secret the signature is made with.
pub const SIGNING_SECRET: &str = "SANDBOX_WEBHOOK_SECRET";

/// What to do with a request when the operator did not grant the signing secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsigned {
    /// Accept it, with a warning: unsigned callbacks are a sandbox convenience.
    AcceptWithWarning,
    /// Refuse it (eKYC callbacks while a real provider is configured).
    Refuse,
}

/// Accept `req` if its signature is valid, or, as `unsigned` says, if the operator did not
/// grant the signing secret.
pub fn check_signature(req: &Inbound, unsigned: Unsigned) -> Result<(), SupplierError> {
    let header = req.header(SIGNATURE_HEADER);
    let signature = match header {
        Some(hex) => hex_decode(hex.trim()).ok_or_else(|| {
            SupplierError::InvalidRequest(format!("{SIGNATURE_HEADER} is not hex"))
        })?,
        None => Vec::new(),
    };
    match secrets::verify_hmac(SIGNING_SECRET, HmacAlgorithm::Sha256, &req.body, &signature) {
        Ok(true) => Ok(()),
        Ok(false) if header.is_none() => Err(SupplierError::InvalidRequest(format!(
            "missing {SIGNATURE_HEADER} header"
        ))),
        Ok(false) => Err(SupplierError::InvalidRequest(format!(
            "{SIGNATURE_HEADER} does not match the body"
        ))),
        Err(SecretError::NotGranted(_)) if unsigned == Unsigned::Refuse => {
            Err(SupplierError::InvalidRequest(format!(
                "{SIGNING_SECRET} is not granted: with an eKYC provider configured, \
                 sandbox-format callbacks must be signed"
            )))
        }
        Err(SecretError::NotGranted(_)) => {
            log::warn(&format!(
                "{SIGNING_SECRET} is not granted: accepting an unverified request \
                 (sandbox only; grant the secret to check signatures)"
            ));
            Ok(())
        }
    }
}

fn bad_json(err: serde_json::Error) -> SupplierError {
    SupplierError::InvalidRequest(format!("malformed body: {err}"))
}

/// `{"session_ref": "...", "status": "approved" | "rejected" | "pending"}`
pub fn parse_callback(body: &[u8]) -> Result<EkycUpdate, SupplierError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Status {
        Pending,
        Approved,
        Rejected,
    }
    #[derive(Deserialize)]
    struct Callback {
        session_ref: String,
        status: Status,
    }
    let callback: Callback = serde_json::from_slice(body).map_err(bad_json)?;
    Ok(EkycUpdate {
        session_ref: callback.session_ref,
        status: match callback.status {
            Status::Pending => EkycStatus::Pending,
            Status::Approved => EkycStatus::Approved,
            Status::Rejected => EkycStatus::Rejected,
        },
    })
}

/// `{"events": [{"type": "order.delivered", "order_ref": "...", "quantity": 1}, ...]}`.
///
/// Event types: `order.delivered` (`quantity` defaults to 1), `order.failed` (`reason`),
/// `profile.changed` and `plan.changed` (`iccid`, `state` as named in the WIT, e.g.
/// `installed` or `expired-unused`), `usage.threshold` (`iccid`, `used_bytes`, `percent`).
/// Unknown types are skipped, as a real supplier adding event types must not break
/// the gateway; the second value counts them.
pub fn parse_events(body: &[u8]) -> Result<(Vec<SupplierEvent>, usize), SupplierError> {
    #[derive(Deserialize)]
    #[serde(tag = "type")]
    enum Event {
        #[serde(rename = "order.delivered")]
        OrderDelivered {
            order_ref: String,
            #[serde(default = "one")]
            quantity: u32,
        },
        #[serde(rename = "order.failed")]
        OrderFailed { order_ref: String, reason: String },
        #[serde(rename = "profile.changed")]
        ProfileChanged { iccid: String, state: String },
        #[serde(rename = "plan.changed")]
        PlanChanged { iccid: String, state: String },
        #[serde(rename = "usage.threshold")]
        UsageThreshold {
            iccid: String,
            used_bytes: u64,
            percent: u8,
        },
        #[serde(other)]
        Unknown,
    }
    #[derive(Deserialize)]
    struct Envelope {
        events: Vec<Event>,
    }
    fn one() -> u32 {
        1
    }

    let envelope: Envelope = serde_json::from_slice(body).map_err(bad_json)?;
    let mut events = Vec::with_capacity(envelope.events.len());
    let mut skipped = 0;
    for event in envelope.events {
        events.push(match event {
            Event::OrderDelivered {
                order_ref,
                quantity,
            } => {
                require_quantity(quantity)?;
                SupplierEvent::OrderDelivered(OrderDelivered {
                    esims: esims(&order_ref, quantity),
                    order_ref,
                })
            }
            Event::OrderFailed { order_ref, reason } => {
                SupplierEvent::OrderFailed(OrderFailed { order_ref, reason })
            }
            Event::ProfileChanged { iccid, state } => SupplierEvent::ProfileChanged(StateChange {
                iccid,
                profile: Some(profile_state(&state)?),
                plan: None,
                raw_status: raw_status(&state),
            }),
            Event::PlanChanged { iccid, state } => SupplierEvent::PlanChanged(StateChange {
                iccid,
                profile: None,
                plan: Some(plan_state(&state)?),
                raw_status: raw_status(&state),
            }),
            Event::UsageThreshold {
                iccid,
                used_bytes,
                percent,
            } => SupplierEvent::UsageThreshold(UsageThreshold {
                iccid,
                used_bytes,
                percent,
            }),
            Event::Unknown => {
                skipped += 1;
                continue;
            }
        });
    }
    Ok((events, skipped))
}

/// The supplier-style status string: `expired-unused` → `EXPIRED_UNUSED`.
fn raw_status(state: &str) -> String {
    state.to_ascii_uppercase().replace('-', "_")
}

fn unknown_state(kind: &str, state: &str) -> SupplierError {
    SupplierError::InvalidRequest(format!("unknown {kind} state {state:?}"))
}

fn profile_state(state: &str) -> Result<ProfileState, SupplierError> {
    Ok(match state {
        "released" => ProfileState::Released,
        "downloaded" => ProfileState::Downloaded,
        "installed" => ProfileState::Installed,
        "enabled" => ProfileState::Enabled,
        "disabled" => ProfileState::Disabled,
        "deleted" => ProfileState::Deleted,
        "error" => ProfileState::Error,
        _ => return Err(unknown_state("profile", state)),
    })
}

fn plan_state(state: &str) -> Result<PlanState, SupplierError> {
    Ok(match state {
        "allocating" => PlanState::Allocating,
        "ready" => PlanState::Ready,
        "active" => PlanState::Active,
        "depleted" => PlanState::Depleted,
        "expired" => PlanState::Expired,
        "expired-unused" => PlanState::ExpiredUnused,
        _ => return Err(unknown_state("plan", state)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_carry_session_and_status() {
        let update = parse_callback(br#"{"session_ref":"ks_1","status":"approved"}"#).unwrap();
        assert_eq!(update.session_ref, "ks_1");
        assert_eq!(update.status, EkycStatus::Approved);
        for bad in [
            &b"nope"[..],
            br#"{"session_ref":"ks_1","status":"maybe"}"#,
            b"{}",
        ] {
            assert!(matches!(
                parse_callback(bad),
                Err(SupplierError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn webhook_events_are_normalised() {
        let body = br#"{"events":[
            {"type":"order.delivered","order_ref":"ord_9","quantity":2},
            {"type":"profile.changed","iccid":"8999","state":"installed"},
            {"type":"plan.changed","iccid":"8999","state":"expired-unused"},
            {"type":"usage.threshold","iccid":"8999","used_bytes":5,"percent":80},
            {"type":"order.failed","order_ref":"ord_8","reason":"no"},
            {"type":"something.new","x":1}
        ]}"#;
        let (events, skipped) = parse_events(body).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(events.len(), 5);
        assert_eq!(
            events[0],
            SupplierEvent::OrderDelivered(OrderDelivered {
                order_ref: "ord_9".into(),
                esims: esims("ord_9", 2),
            })
        );
        assert_eq!(
            events[1],
            SupplierEvent::ProfileChanged(StateChange {
                iccid: "8999".into(),
                profile: Some(ProfileState::Installed),
                plan: None,
                raw_status: "INSTALLED".into(),
            })
        );
        assert!(matches!(
            &events[2],
            SupplierEvent::PlanChanged(StateChange { plan: Some(PlanState::ExpiredUnused), raw_status, .. })
                if raw_status == "EXPIRED_UNUSED"
        ));
    }

    #[test]
    fn bad_webhooks_are_invalid_requests() {
        for bad in [
            &b"{"[..],
            br#"{"events":[{"type":"profile.changed","iccid":"1","state":"lost"}]}"#,
            br#"{"events":[{"type":"order.delivered","order_ref":"o","quantity":0}]}"#,
            br#"{"events":[{"type":"order.delivered"}]}"#,
        ] {
            assert!(matches!(
                parse_events(bad),
                Err(SupplierError::InvalidRequest(_))
            ));
        }
    }
}
