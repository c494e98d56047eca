//! The supplier's records as the contract's, kept free of host calls so they are unit
//! tested natively.

use std::collections::BTreeMap;

use serde_json::Value;
use simgate_sdk::{
    DataAllowance, Esim, Money, OrderReady, PlanState, Product, ProfileState, StateChange,
    SupplierError, SupplierEvent, UsageChange, Webhook,
};

/// The error code of "not yet allocated", which a poll reads as still pending.
pub const NOT_YET_ALLOCATED: &str = "200010";

/// The host's error for a supplier error code. `unavailable` reasons start with the code.
pub fn supplier_error(code: &str, message: &str) -> SupplierError {
    let reason = format!("{code}: {message}");
    match code {
        "200007" => SupplierError::OutOfStock,
        "101009" => SupplierError::RateLimited(30),
        "100001" | "200002" | "200005" | "200011" => SupplierError::InvalidRequest(reason),
        // Timestamp and signature: a clock or configuration problem, retried.
        "101001" | "101003" | NOT_YET_ALLOCATED | "999999" => SupplierError::Unavailable(reason),
        _ => SupplierError::Rejected(reason),
    }
}

/// Products (and prices by package code, in 1/10000 USD) from a package list.
pub fn products_of(obj: &Value) -> (Vec<Product>, BTreeMap<String, i64>) {
    let mut products = Vec::new();
    let mut prices = BTreeMap::new();
    for p in obj["packageList"].as_array().into_iter().flatten() {
        let (Some(code), Some(price)) = (p["packageCode"].as_str(), p["price"].as_i64()) else {
            continue;
        };
        let countries: Vec<String> = p["location"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| c.len() == 2)
            .collect();
        prices.insert(code.to_string(), price);
        products.push(Product {
            sku: code.to_string(),
            title: p["name"].as_str().unwrap_or(code).to_string(),
            region: (countries.len() > 1).then(|| "multi-country".to_string()),
            countries,
            data: DataAllowance::Bytes(p["volume"].as_u64().unwrap_or(0)),
            validity_days: p["duration"].as_u64().unwrap_or(0).min(u32::MAX.into()) as u32,
            // 1/10000 of the currency unit to minor units (cents), rounded down.
            wholesale: Money {
                minor: price / 100,
                currency: p["currencyCode"].as_str().unwrap_or("USD").to_string(),
            },
            needs_kyc: false,
            top_up_able: false,
        });
    }
    (products, prices)
}

/// An eSIM from a query's `esimList` entry: `ac` is `LPA:1$smdp$matching`.
pub fn esim_of(e: &Value) -> Result<Esim, SupplierError> {
    let bad = |why: &str| SupplierError::Unavailable(format!("unexpected eSIM record: {why}"));
    let iccid = e["iccid"].as_str().ok_or_else(|| bad("no iccid"))?;
    let ac = e["ac"].as_str().ok_or_else(|| bad("no ac"))?;
    let mut parts = ac.split('$');
    let (Some("LPA:1"), Some(smdp), Some(matching)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("ac is not LPA:1$smdp$matching"));
    };
    Ok(Esim {
        iccid: iccid.to_string(),
        smdp_address: smdp.to_string(),
        matching_id: matching.to_string(),
        confirmation_code_required: false,
    })
}

/// `smdpStatus` as a profile state.
pub fn profile_of(s: &str) -> Option<ProfileState> {
    Some(match s {
        "RELEASED" => ProfileState::Released,
        "DOWNLOAD" => ProfileState::Downloaded,
        "INSTALLATION" => ProfileState::Installed,
        "ENABLED" => ProfileState::Enabled,
        "DISABLED" => ProfileState::Disabled,
        "DELETED" => ProfileState::Deleted,
        _ => return None,
    })
}

/// `esimStatus` as a plan state.
pub fn plan_of(s: &str) -> Option<PlanState> {
    Some(match s {
        "GOT_RESOURCE" => PlanState::Ready,
        "IN_USE" => PlanState::Active,
        "USED_UP" => PlanState::Depleted,
        "USED_EXPIRED" | "CANCEL" | "REVOKED" => PlanState::Expired,
        "UNUSED_EXPIRED" => PlanState::ExpiredUnused,
        _ => return None,
    })
}

/// A webhook body as normalised events; `notifyId` is the event id.
pub fn webhook_of(body: &[u8]) -> Result<Webhook, SupplierError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| SupplierError::InvalidRequest("webhook body is not JSON".into()))?;
    let kind = v["notifyType"]
        .as_str()
        .ok_or_else(|| SupplierError::InvalidRequest("webhook without notifyType".into()))?;
    let c = &v["content"];
    let text = |k: &str| c[k].as_str().unwrap_or("").to_string();
    let iccid = text("iccid");
    let mut events = Vec::new();
    match kind {
        "ORDER_STATUS" if c["orderStatus"] == "GOT_RESOURCE" => {
            events.push(SupplierEvent::OrderReady(OrderReady {
                order_ref: text("transactionId"),
            }));
        }
        "SMDP_EVENT" => {
            if let Some(profile) = profile_of(&text("smdpStatus")) {
                events.push(SupplierEvent::ProfileChanged(StateChange {
                    iccid,
                    profile: Some(profile),
                    plan: None,
                    raw_status: text("smdpStatus"),
                }));
            }
        }
        "ESIM_STATUS" => {
            if let Some(plan) = plan_of(&text("esimStatus")) {
                events.push(SupplierEvent::PlanChanged(StateChange {
                    iccid,
                    profile: None,
                    plan: Some(plan),
                    raw_status: text("esimStatus"),
                }));
            }
        }
        "DATA_USAGE" => events.push(SupplierEvent::UsageChanged(UsageChange {
            iccid,
            used_bytes: c["orderUsage"].as_u64().unwrap_or(0),
            total_bytes: c["totalVolume"].as_u64(),
        })),
        // CHECK_HEALTH, VALIDITY_USAGE and types this adapter does not use.
        _ => {}
    }
    Ok(Webhook {
        event_id: v["notifyId"].as_str().map(str::to_string),
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn packages_become_products_with_cent_prices() {
        let (products, prices) = products_of(&json!({"packageList": [
            {"packageCode": "PJP1G7D", "name": "Japan 1GB 7Days", "price": 18000,
             "currencyCode": "USD", "volume": 1073741824u64, "duration": 7, "location": "JP"},
            {"packageCode": "PEU", "name": "Europe", "price": 99999, "currencyCode": "USD",
             "volume": 1, "duration": 30, "location": "FR,DE,IT"},
            {"name": "no code"}
        ]}));
        assert_eq!(products.len(), 2);
        assert_eq!(products[0].wholesale.minor, 180);
        assert_eq!(products[1].countries, ["FR", "DE", "IT"]);
        assert_eq!(products[1].wholesale.minor, 999, "rounded down");
        assert_eq!(prices["PJP1G7D"], 18000);
    }

    #[test]
    fn an_lpa_string_becomes_install_data() {
        let esim =
            esim_of(&json!({"iccid": "8948010000000000017", "ac": "LPA:1$smdp.sim.test$ABC"}))
                .unwrap();
        assert_eq!(
            (esim.smdp_address.as_str(), esim.matching_id.as_str()),
            ("smdp.sim.test", "ABC")
        );
        assert!(esim_of(&json!({"iccid": "1", "ac": "nonsense"})).is_err());
    }

    #[test]
    fn webhooks_become_events_with_their_notify_id() {
        let w = webhook_of(br#"{"notifyType":"ORDER_STATUS","notifyId":"n1","content":{"orderNo":"B1","transactionId":"ord_1","orderStatus":"GOT_RESOURCE"}}"#).unwrap();
        assert_eq!(w.event_id.as_deref(), Some("n1"));
        assert_eq!(
            w.events,
            [SupplierEvent::OrderReady(OrderReady {
                order_ref: "ord_1".into()
            })]
        );
        let w = webhook_of(br#"{"notifyType":"CHECK_HEALTH","content":{}}"#).unwrap();
        assert!(w.events.is_empty());
        assert!(webhook_of(b"not json").is_err());
    }

    #[test]
    fn error_codes_map_to_what_the_host_does() {
        assert_eq!(supplier_error("200007", "x"), SupplierError::OutOfStock);
        assert!(matches!(
            supplier_error("101003", "x"),
            SupplierError::Unavailable(_)
        ));
        assert!(matches!(
            supplier_error("200002", "x"),
            SupplierError::InvalidRequest(_)
        ));
        assert!(matches!(
            supplier_error("300000", "x"),
            SupplierError::Rejected(_)
        ));
    }
}
