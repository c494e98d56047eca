//! Airalo's records as the contract's, kept free of host calls so they are unit tested
//! natively: the package listing, sims, usage, webhook bodies, error answers, and the
//! bounded list of async requests the adapter keeps in `state`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use simgate_sdk::{
    DataAllowance, Esim, Money, PlanState, Product, ProfileState, SupplierError, Usage,
};

/// Airalo counts data in MB of 2^20 bytes (a "1 GB" package has `amount` 1024).
pub const MB: u64 = 1024 * 1024;

/// The most sims one Airalo order may ask for.
pub const MAX_QUANTITY: u32 = 50;

/// How many async requests the adapter remembers (oldest forgotten first): enough for the
/// orders in flight at once, small enough for the host's 64 KiB `state` cap (an entry is
/// about 80 bytes).
pub const PENDING_CAP: usize = 256;

/// Products from the `data` of a `GET /v2/packages` page: countries (or regions), their
/// operators, and the operators' packages. The SKU is the package id; the price is the
/// partner's `net_price` in USD. Entries without an id or a usable price are skipped.
pub fn products_of(listing: &Value) -> Vec<Product> {
    let mut products = Vec::new();
    for place in listing.as_array().into_iter().flatten() {
        let place_code = place["country_code"].as_str().unwrap_or("");
        let place_title = place["title"].as_str().unwrap_or("");
        for operator in place["operators"].as_array().into_iter().flatten() {
            // A regional or global operator lists every country it covers.
            let mut countries: Vec<String> = operator["countries"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["country_code"].as_str())
                .chain(std::iter::once(place_code))
                .filter_map(country_code)
                .collect();
            countries.sort();
            countries.dedup();
            let region = (countries.len() > 1 || place_code.is_empty())
                .then(|| place["slug"].as_str().unwrap_or("global").to_string());
            for package in operator["packages"].as_array().into_iter().flatten() {
                // Top-up packages are sold for an existing sim, not as a new eSIM.
                if package["type"].as_str().is_some_and(|t| t != "sim") {
                    continue;
                }
                let (Some(id), Some(minor)) =
                    (package["id"].as_str(), cents_of(&package["net_price"]))
                else {
                    continue;
                };
                let title = package["title"].as_str().unwrap_or(id);
                let data = if package["is_unlimited"].as_bool() == Some(true) {
                    DataAllowance::Unlimited
                } else {
                    let mb = package["amount"].as_u64().unwrap_or(0);
                    DataAllowance::Bytes(mb.saturating_mul(MB))
                };
                products.push(Product {
                    sku: id.to_string(),
                    title: format!("{place_title} {title}").trim().to_string(),
                    countries: countries.clone(),
                    region: region.clone(),
                    data,
                    validity_days: package["day"]
                        .as_u64()
                        .unwrap_or(0)
                        .min(u64::from(u32::MAX)) as u32,
                    wholesale: Money {
                        minor,
                        currency: "USD".into(),
                    },
                    needs_kyc: false,
                    top_up_able: false,
                });
            }
        }
    }
    products
}

/// An ISO 3166-1 alpha-2 code, upper case, or `None` when `code` is not one.
fn country_code(code: &str) -> Option<String> {
    (code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| code.to_ascii_uppercase())
}

/// A USD amount (a JSON number or numeric string) in cents, rounded to the nearest cent;
/// `None` when it is missing, negative or absurd.
pub fn cents_of(usd: &Value) -> Option<i64> {
    let usd = match usd {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    let cents = (usd * 100.0).round();
    // A trillion dollars is no package price: refuse rather than saturate.
    (cents.is_finite() && (0.0..1e14).contains(&cents)).then_some(cents as i64)
}

/// The last page of a paged answer (`meta.last_page`, 1 when absent).
pub fn last_page(answer: &Value) -> u64 {
    answer["meta"]["last_page"].as_u64().unwrap_or(1).max(1)
}

/// The install data of one entry of an order's `sims`: `lpa` is the SM-DP+ address,
/// `matching_id` the activation token; when either is missing, both are read from the
/// `qrcode` string `LPA:1$smdp$matching`.
pub fn esim_of(sim: &Value) -> Result<Esim, String> {
    let text = |key: &str| sim[key].as_str().map(str::trim).filter(|v| !v.is_empty());
    let iccid = text("iccid").ok_or("a sim without iccid")?;
    let (smdp, matching) = match (text("lpa"), text("matching_id")) {
        (Some(smdp), Some(matching)) => (smdp, matching),
        _ => {
            let code = text("qrcode").ok_or("a sim without lpa, matching_id or qrcode")?;
            let mut parts = code.split('$');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("LPA:1"), Some(smdp), Some(matching))
                    if !smdp.is_empty() && !matching.is_empty() =>
                {
                    (smdp, matching)
                }
                _ => return Err("a sim whose qrcode is not LPA:1$smdp$matching".into()),
            }
        }
    };
    Ok(Esim {
        iccid: iccid.to_string(),
        smdp_address: smdp.to_string(),
        matching_id: matching.to_string(),
        confirmation_code_required: text("confirmation_code").is_some(),
    })
}

/// What a verified Airalo webhook says.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The result of an async order (`{"request_id", "data": <order>}`).
    OrderResult {
        /// Airalo's id of the async request.
        request_id: String,
        /// The order's `description`: the gateway's order reference, as sent.
        order_ref: Option<String>,
        /// The eSIMs, or why there are none.
        result: Result<Vec<Esim>, String>,
    },
    /// A low-data notice (`{"level", "package_name", "remaining_percentage", "iccid"}`).
    LowData {
        /// The sim concerned.
        iccid: String,
        /// The data threshold crossed, in percent used; `None` for a days-left notice.
        percent: Option<u8>,
        /// A stable id built from the body's fields (Airalo sends none).
        event_id: String,
    },
    /// Anything else: accepted and ignored.
    Other,
}

/// Read a webhook body (its signature already checked).
pub fn notice_of(body: &[u8]) -> Result<Notice, SupplierError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| SupplierError::InvalidRequest("webhook body is not JSON".into()))?;
    if let Some(request_id) = v["request_id"].as_str().filter(|r| !r.is_empty()) {
        let data = &v["data"];
        let order_ref = data["description"]
            .as_str()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        let sims = data["sims"].as_array().filter(|s| !s.is_empty());
        let result = match sims {
            Some(sims) => Ok(sims
                .iter()
                .map(esim_of)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| {
                    SupplierError::InvalidRequest(format!("async order result with {why}"))
                })?),
            None => Err(v["meta"]["message"]
                .as_str()
                .filter(|m| !m.is_empty())
                .unwrap_or("Airalo's async order result carries no sims")
                .chars()
                .take(200)
                .collect()),
        };
        return Ok(Notice::OrderResult {
            request_id: request_id.to_string(),
            order_ref,
            result,
        });
    }
    if let (Some(level), Some(iccid)) = (v["level"].as_str(), v["iccid"].as_str()) {
        let package = v["package_name"].as_str().unwrap_or("");
        return Ok(Notice::LowData {
            iccid: iccid.to_string(),
            percent: percent_of_level(level),
            event_id: format!("low-data:{iccid}:{package}:{level}"),
        });
    }
    Ok(Notice::Other)
}

/// The data threshold a low-data `level` names, in percent used (`"75%"` -> 75); `None`
/// for the days-left levels (`"1days"`, `"3days"`), which say nothing about data.
pub fn percent_of_level(level: &str) -> Option<u8> {
    level
        .trim()
        .strip_suffix('%')?
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=100).contains(p))
}

/// The `data` of `GET /v2/sims/{iccid}/usage` as the contract's usage: `total` and
/// `remaining` in MB, `status` one of `NOT_ACTIVE`, `ACTIVE`, `FINISHED`, `EXPIRED`,
/// `UNKNOWN`. The API says nothing of the profile itself: a sim that used data (or is
/// active) was installed and enabled; any other is reported as released.
pub fn usage_of(data: &Value) -> Usage {
    let total_mb = data["total"].as_u64().unwrap_or(0);
    let remaining_mb = data["remaining"].as_u64().unwrap_or(0).min(total_mb);
    let used_bytes = (total_mb - remaining_mb).saturating_mul(MB);
    let unlimited = data["is_unlimited"].as_bool() == Some(true);
    let status = data["status"].as_str().unwrap_or("UNKNOWN");
    let plan = match status {
        "ACTIVE" => PlanState::Active,
        "FINISHED" => PlanState::Depleted,
        "EXPIRED" if used_bytes == 0 => PlanState::ExpiredUnused,
        "EXPIRED" => PlanState::Expired,
        _ => PlanState::Ready,
    };
    let profile = if status == "ACTIVE" || used_bytes > 0 {
        ProfileState::Enabled
    } else {
        ProfileState::Released
    };
    Usage {
        used_bytes,
        total_bytes: (!unlimited).then(|| total_mb.saturating_mul(MB)),
        profile,
        plan,
        raw_status: status.chars().take(64).collect(),
        expires_at_ms: data["expired_at"].as_str().and_then(datetime_ms),
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC, as Airalo writes times) in milliseconds since the epoch.
pub fn datetime_ms(text: &str) -> Option<u64> {
    let (date, time) = text.trim().split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next().flatten().unwrap_or(0));
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..=60).contains(&second);
    if !valid {
        return None;
    }
    // Days from the civil date (the proleptic Gregorian calendar), March-based years.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs).ok()?.checked_mul(1000)
}

/// The bytes of a hex string (either case), or `None` when it is not hex.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |b: u8| (b as char).to_digit(16);
    digits
        .chunks(2)
        .map(|pair| Some((value(pair[0])? * 16 + value(pair[1])?) as u8))
        .collect()
}

/// Airalo's own word for an error answer, where it says more than the status: a `422`
/// about stock is out of stock (the SDK's default would call it an invalid request).
pub fn refusal(status: u16, body: &[u8]) -> Option<SupplierError> {
    if status != 422 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let message = v["meta"]["message"].as_str()?.to_ascii_lowercase();
    message
        .contains("stock")
        .then_some(SupplierError::OutOfStock)
}

/// Async requests the adapter placed, newest last: to answer a repeated `provision` of
/// the same order with the same request (Airalo has no idempotency key), and to name the
/// order of a webhook whose `description` is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOrders(Vec<(String, String)>);

impl PendingOrders {
    /// Remember that order `order_ref` is Airalo's request `request_id`; the oldest entry
    /// goes when there are [`PENDING_CAP`].
    pub fn remember(&mut self, order_ref: &str, request_id: &str) {
        self.0.retain(|(order, _)| order != order_ref);
        self.0.push((order_ref.to_string(), request_id.to_string()));
        let excess = self.0.len().saturating_sub(PENDING_CAP);
        self.0.drain(..excess);
    }

    /// The request placed for order `order_ref`.
    pub fn request_of(&self, order_ref: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(order, _)| order == order_ref)
            .map(|(_, request)| request.as_str())
    }

    /// The order request `request_id` was placed for.
    pub fn order_of(&self, request_id: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, request)| request == request_id)
            .map(|(order, _)| order.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listing() -> Value {
        json!([
            {"slug": "japan", "country_code": "JP", "title": "Japan", "operators": [
                {"id": 1, "title": "Moshi Moshi", "countries": [{"country_code": "JP"}],
                 "packages": [
                    {"id": "moshi-moshi-7days-1gb", "type": "sim", "price": 4.5,
                     "net_price": 3.6, "amount": 1024, "day": 7, "is_unlimited": false,
                     "title": "1 GB - 7 Days"},
                    {"id": "moshi-unlimited", "type": "sim", "net_price": "12.345",
                     "amount": 0, "day": 10, "is_unlimited": true, "title": "Unlimited"},
                    {"id": "moshi-topup", "type": "topup", "net_price": 1.0, "amount": 1024,
                     "day": 7},
                    {"id": "no-price", "type": "sim", "amount": 1024, "day": 7},
                    {"id": "negative", "type": "sim", "net_price": -1, "day": 7},
                    {"type": "sim", "net_price": 1.0}
                 ]}
            ]},
            {"slug": "europe", "country_code": "", "title": "Europe", "operators": [
                {"id": 9, "title": "Eurolink", "countries": [
                    {"country_code": "fr"}, {"country_code": "DE"}, {"country_code": "bad"}],
                 "packages": [{"id": "eurolink-30days-5gb", "net_price": 10, "amount": 5120,
                               "day": 30, "title": "5 GB - 30 Days"}]}
            ]},
            "junk"
        ])
    }

    #[test]
    fn packages_become_products_at_the_partners_net_price_in_cents() {
        let products = products_of(&listing());
        let skus: Vec<&str> = products.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(
            skus,
            [
                "moshi-moshi-7days-1gb",
                "moshi-unlimited",
                "eurolink-30days-5gb"
            ]
        );
        let japan = &products[0];
        assert_eq!(japan.title, "Japan 1 GB - 7 Days");
        assert_eq!(japan.countries, ["JP"]);
        assert_eq!(japan.region, None);
        assert_eq!(japan.data, DataAllowance::Bytes(1024 * MB));
        assert_eq!(japan.validity_days, 7);
        assert_eq!(
            japan.wholesale,
            Money {
                minor: 360,
                currency: "USD".into()
            },
            "net_price, not the retail price"
        );
        assert_eq!(products[1].data, DataAllowance::Unlimited);
        assert_eq!(products[1].wholesale.minor, 1235, "rounded to the cent");
        let europe = &products[2];
        assert_eq!(europe.countries, ["DE", "FR"]);
        assert_eq!(europe.region.as_deref(), Some("europe"));
        assert!(products_of(&json!({"not": "a list"})).is_empty());
    }

    #[test]
    fn prices_are_read_in_cents_and_nonsense_is_refused() {
        assert_eq!(cents_of(&json!(3.6)), Some(360));
        assert_eq!(cents_of(&json!(0.015)), Some(2));
        assert_eq!(cents_of(&json!("7.60")), Some(760));
        for bad in [
            json!(-0.5),
            json!("x"),
            json!(null),
            json!(1e300),
            json!([]),
        ] {
            assert_eq!(cents_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_sim_becomes_install_data_from_lpa_and_matching_id_or_its_qrcode() {
        let esim = esim_of(
            &json!({"iccid": "89444700000000000017", "lpa": "smdp.sim.test",
                                    "matching_id": "ABC", "confirmation_code": null}),
        )
        .unwrap();
        assert_eq!(
            (esim.smdp_address.as_str(), esim.matching_id.as_str()),
            ("smdp.sim.test", "ABC")
        );
        assert!(!esim.confirmation_code_required);
        let from_qr =
            esim_of(&json!({"iccid": "1", "qrcode": "LPA:1$smdp.x$M1", "confirmation_code": "9"}))
                .unwrap();
        assert_eq!(from_qr.matching_id, "M1");
        assert!(from_qr.confirmation_code_required);
        assert!(esim_of(&json!({"iccid": "1", "qrcode": "LPA:1$$"})).is_err());
        assert!(esim_of(&json!({"lpa": "x", "matching_id": "y"})).is_err());
        assert!(esim_of(&json!("junk")).is_err());
    }

    #[test]
    fn an_async_order_result_names_its_order_by_description() {
        let body = json!({"request_id": "r1", "data": {"description": "ord_1", "sims": [
            {"iccid": "8944", "lpa": "smdp.sim.test", "matching_id": "M"}]}});
        let notice = notice_of(body.to_string().as_bytes()).unwrap();
        let Notice::OrderResult {
            request_id,
            order_ref,
            result,
        } = notice
        else {
            panic!("{notice:?}")
        };
        assert_eq!(
            (request_id.as_str(), order_ref.as_deref()),
            ("r1", Some("ord_1"))
        );
        assert_eq!(result.unwrap()[0].iccid, "8944");

        let failed = notice_of(br#"{"request_id":"r2","data":[],"meta":{"message":"no"}}"#);
        assert_eq!(
            failed.unwrap(),
            Notice::OrderResult {
                request_id: "r2".into(),
                order_ref: None,
                result: Err("no".into())
            }
        );
        let broken = br#"{"request_id":"r3","data":{"sims":[{"lpa":"x"}]}}"#;
        assert!(matches!(
            notice_of(broken),
            Err(SupplierError::InvalidRequest(_))
        ));
    }

    #[test]
    fn a_low_data_notice_keeps_its_percent_and_a_stable_id() {
        let body =
            br#"{"level":"90%","package_name":"p1","remaining_percentage":10,"iccid":"8944"}"#;
        assert_eq!(
            notice_of(body).unwrap(),
            Notice::LowData {
                iccid: "8944".into(),
                percent: Some(90),
                event_id: "low-data:8944:p1:90%".into()
            }
        );
        assert_eq!(percent_of_level("75%"), Some(75));
        assert_eq!(percent_of_level("1days"), None);
        assert_eq!(percent_of_level("3days"), None);
        assert_eq!(percent_of_level("0%"), None);
        assert_eq!(percent_of_level("300%"), None);
        assert_eq!(notice_of(br#"{"hello":1}"#).unwrap(), Notice::Other);
        assert!(notice_of(b"not json").is_err());
    }

    #[test]
    fn usage_is_read_in_mb_with_plan_states_from_the_status() {
        let u = usage_of(
            &json!({"remaining": 100, "total": 1024, "is_unlimited": false,
                                 "status": "ACTIVE", "expired_at": "2026-12-01 10:00:00"}),
        );
        assert_eq!(u.used_bytes, 924 * MB);
        assert_eq!(u.total_bytes, Some(1024 * MB));
        assert_eq!(
            (u.profile, u.plan),
            (ProfileState::Enabled, PlanState::Active)
        );
        assert_eq!(u.expires_at_ms, Some(1_796_119_200_000));
        let fresh = usage_of(&json!({"remaining": 1024, "total": 1024, "status": "NOT_ACTIVE"}));
        assert_eq!(
            (fresh.used_bytes, fresh.profile, fresh.plan),
            (0, ProfileState::Released, PlanState::Ready)
        );
        let unused = usage_of(&json!({"remaining": 5, "total": 5, "status": "EXPIRED"}));
        assert_eq!(unused.plan, PlanState::ExpiredUnused);
        let odd = usage_of(&json!({"remaining": 9, "total": 5, "is_unlimited": true}));
        assert_eq!((odd.used_bytes, odd.total_bytes), (0, None));
    }

    #[test]
    fn airalo_times_are_read_as_utc() {
        assert_eq!(datetime_ms("1970-01-01 00:00:00"), Some(0));
        assert_eq!(datetime_ms("2000-03-01 00:00:01"), Some(951_868_801_000));
        assert_eq!(datetime_ms("2024-02-29T12:30:00Z"), Some(1_709_209_800_000));
        for bad in [
            "",
            "2024-13-01 00:00:00",
            "yesterday",
            "2024-01-01",
            "1969-12-31 23:59:59",
        ] {
            assert_eq!(datetime_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_is_decoded_in_either_case_and_junk_refused() {
        assert_eq!(hex_decode("00fFa1"), Some(vec![0, 255, 161]));
        assert_eq!(hex_decode(""), Some(vec![]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("é1"), None);
    }

    #[test]
    fn a_422_about_stock_is_out_of_stock() {
        let stock = br#"{"data":{},"meta":{"message":"insufficient stock","code":53}}"#;
        assert_eq!(refusal(422, stock), Some(SupplierError::OutOfStock));
        let invalid = br#"{"data":{},"meta":{"message":"the parameter is invalid"}}"#;
        assert_eq!(refusal(422, invalid), None);
        assert_eq!(refusal(500, stock), None);
        assert_eq!(refusal(422, b"<html>"), None);
    }

    #[test]
    fn pending_orders_are_found_both_ways_and_bounded() {
        let mut pending = PendingOrders::default();
        pending.remember("ord_1", "r1");
        pending.remember("ord_1", "r1");
        assert_eq!(pending.request_of("ord_1"), Some("r1"));
        assert_eq!(pending.order_of("r1"), Some("ord_1"));
        for n in 0..PENDING_CAP {
            pending.remember(&format!("ord_x{n}"), &format!("rx{n}"));
        }
        assert_eq!(pending.0.len(), PENDING_CAP);
        assert_eq!(pending.request_of("ord_1"), None, "the oldest went first");
        assert_eq!(pending.order_of("rx0"), Some("ord_x0"));
    }
}
