//! A wholesale eSIM supplier for black-box tests, modelled on eSIM Access's open API: a real
//! HTTP/1.1 server on a loopback port that keeps connections alive (so a benchmark can tell
//! pooled from unpooled egress; [`SimCore::connections`] counts them).
//!
//! Every `POST /api/v1/open/...` call must carry `RT-AccessCode`, `RT-RequestID`,
//! `RT-Timestamp` (ms since the epoch, at most 5 minutes off) and `RT-Signature`: hex (either
//! case) HMAC-SHA256 under the secret key of `timestamp + requestId + accessCode + body`.
//! As that API does, errors are HTTP `200` with `success: false` and an `errorCode`;
//! success is `{"success": true, "errorCode": "0", "errorMsg": null, "obj": {...}}`.
//!
//! | route | does |
//! |---|---|
//! | `package/list` | `obj.packageList` (filter `locationCode`, `packageCode`, `slug`) |
//! | `esim/order` | `obj.orderNo`; idempotent on `transactionId`; eSIMs are allocated later |
//! | `esim/query` | by `orderNo`, `iccid` or `esimTranNo` (else all), paged by `pager` |
//! | `esim/cancel` | an unused eSIM (`esimTranNo` or `iccid`) becomes `CANCEL` |
//! | `esim/usage/query` | `obj.esimUsageList` for `esimTranNoList` |
//!
//! The error codes (the first three and `200010` are the API's own; the others are this
//! simulator's choice):
//!
//! | `errorCode` | HTTP | when |
//! |---|---|---|
//! | `100001` | 200 (400 for [`Fault::BadRequest`]) | the body is no JSON object, or a field is missing or wrong |
//! | `101001` | 200 | `RT-Timestamp` unparseable or more than 5 minutes off |
//! | `101003` | 200 | a signature header missing, a wrong signature or access code |
//! | `101009` | 429 | [`Fault::RateLimited`] (with `Retry-After`) |
//! | `200002` | 200 | an unknown `packageCode`/`slug` |
//! | `200005` | 200 | a `price` or `amount` that does not match the package prices |
//! | `200007` | 200 | [`Fault::OutOfStock`] on an order: "insufficient stock" |
//! | `200010` | 200 | the order's eSIMs are not allocated yet |
//! | `200011` | 200 | no such order or eSIM |
//! | `200012` | 200 | the eSIM is not in a state that can be cancelled |
//! | `999999` | 500 | [`Fault::ServerError`] |
//!
//! [`Fault::Unavailable`] answers `503` with an HTML page, as a load balancer would. A
//! route outside the table answers HTTP `404`, a method other than `POST` `405`, both with
//! the same `success: false` body (`errorCode` `"404"` / `"405"`).
//!
//! Orders are asynchronous: with the default allocation delay of zero the eSIMs exist by
//! the time the order call is answered (but must still be queried); with
//! [`EsimAccessSim::set_allocation_delay`] they appear later, and with
//! [`EsimAccessSim::set_manual_allocation`] only on [`EsimAccessSim::allocate`]. On
//! allocation an `ORDER_STATUS` webhook (`GOT_RESOURCE`) goes to the webhook URL, if one is
//! set, after the order call was answered. Webhooks are unsigned: that API protects them by
//! source IP only. The test helpers ([`EsimAccessSim::smdp_event`],
//! [`EsimAccessSim::esim_status`], [`EsimAccessSim::data_usage`]) change an eSIM's state
//! and post the matching webhook; the `*_body` builders give the exact bytes to replay or
//! tamper with.
//!
//! The server never panics on bad input: a request it cannot read is answered with an
//! error status and the connection closed. Only the test-side helpers panic, on misuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http1::{self, Reply};
use crate::sim::{self, Fault, MAX_BODY, SMDP_ADDRESS, SimCore, lock};

/// The first ten digits of every ICCID this simulator allocates.
const ICCID_PREFIX: &str = "8948010000";
/// How far `RT-Timestamp` may be from the server's clock.
const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// The most eSIMs one order line may ask for.
const MAX_COUNT: u64 = 100;
/// The page size of `esim/query` when the pager names none.
const DEFAULT_PAGE_SIZE: u64 = 20;
/// One GiB, in bytes (package volumes).
const GIB: u64 = 1024 * 1024 * 1024;

const ROUTES: [&str; 5] = [
    "package/list",
    "esim/order",
    "esim/query",
    "esim/cancel",
    "esim/usage/query",
];

/// One data package in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsimAccessPackage {
    /// `packageCode`, what orders name.
    pub package_code: String,
    /// `slug`, which orders may name instead.
    pub slug: String,
    /// `name`.
    pub name: String,
    /// `price`, in units of 1/10000 USD.
    pub price: i64,
    /// `volume`, in bytes.
    pub volume: u64,
    /// `duration`, in days.
    pub duration: u32,
    /// `location`: one country code, or several joined by commas (`"FR,DE,IT"`).
    pub location: String,
    /// `supportTopUpType` (1 = no top-up, 2 = top-up possible).
    pub support_top_up_type: u8,
}

impl EsimAccessPackage {
    /// The catalogue a simulator starts with: two Japan packages, one United States
    /// package and one covering France, Germany and Italy.
    pub fn defaults() -> Vec<EsimAccessPackage> {
        let package = |code: &str, slug: &str, name: &str, price, gib, days, location: &str| {
            EsimAccessPackage {
                package_code: code.into(),
                slug: slug.into(),
                name: name.into(),
                price,
                volume: gib * GIB,
                duration: days,
                location: location.into(),
                support_top_up_type: 2,
            }
        };
        vec![
            package("PJP1G7D", "JP_1_7", "Japan 1GB 7Days", 18_000, 1, 7, "JP"),
            package(
                "PJP5G30D",
                "JP_5_30",
                "Japan 5GB 30Days",
                65_000,
                5,
                30,
                "JP",
            ),
            package(
                "PUS3G15D",
                "US_3_15",
                "United States 3GB 15Days",
                42_000,
                3,
                15,
                "US",
            ),
            package(
                "PEU10G30D",
                "EU-3_10_30",
                "Europe (3 areas) 10GB 30Days",
                120_000,
                10,
                30,
                "FR,DE,IT",
            ),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "packageCode": self.package_code,
            "slug": self.slug,
            "name": self.name,
            "price": self.price,
            "currencyCode": "USD",
            "volume": self.volume,
            "smsStatus": 0,
            "dataType": 1,
            "unusedValidTime": 180,
            "duration": self.duration,
            "durationUnit": "DAY",
            "location": self.location,
            "description": self.name,
            "activeType": 1,
            "speed": "3G/4G/5G",
            "supportTopUpType": self.support_top_up_type,
        })
    }

    fn covers(&self, location: &str) -> bool {
        self.location
            .split(',')
            .any(|l| l.trim().eq_ignore_ascii_case(location))
    }
}

/// One order the simulator took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsimAccessOrder {
    /// `orderNo` (`B` and 14 digits).
    pub order_no: String,
    /// The partner's `transactionId`.
    pub transaction_id: String,
    /// The package of the first order line.
    pub package_code: String,
    /// How many eSIMs the order asked for, over all lines.
    pub count: u32,
    /// Every order line: package code and count.
    pub items: Vec<(String, u32)>,
    /// The order's total, in units of 1/10000 USD.
    pub amount: i64,
    /// Whether its eSIMs are allocated.
    pub allocated: bool,
    /// The allocated eSIMs' ICCIDs.
    pub iccids: Vec<String>,
}

/// One allocated eSIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsimAccessEsim {
    /// `esimTranNo`.
    pub esim_tran_no: String,
    /// The ICCID (20 digits, Luhn-valid).
    pub iccid: String,
    /// The order it belongs to.
    pub order_no: String,
    /// That order's `transactionId`.
    pub transaction_id: String,
    /// Its package.
    pub package: EsimAccessPackage,
    /// The matching id (random hex).
    pub matching_id: String,
    /// `ac`: `LPA:1$<SM-DP+ address>$<matching id>`.
    pub ac: String,
    /// `smdpStatus` (`RELEASED` until an [`EsimAccessSim::smdp_event`]).
    pub smdp_status: String,
    /// `esimStatus` (`GOT_RESOURCE` until used, cancelled or an
    /// [`EsimAccessSim::esim_status`]).
    pub esim_status: String,
    /// The EID of the device it was installed on (`""` before).
    pub eid: String,
    /// `totalVolume`, in bytes.
    pub total_volume: u64,
    /// `orderUsage`, in bytes.
    pub order_usage: u64,
    /// `expiredTime` (RFC 3339).
    pub expired_time: String,
}

struct State {
    packages: Vec<EsimAccessPackage>,
    orders: Vec<EsimAccessOrder>,
    /// The packages of each order's lines, by `orderNo`, as they were when it was taken.
    lines: HashMap<String, Vec<(EsimAccessPackage, u32)>>,
    esims: Vec<EsimAccessEsim>,
    next_order: u64,
    next_esim: u64,
    allocation_delay: Duration,
    manual_allocation: bool,
}

struct Shared {
    core: SimCore,
    access_code: String,
    secret_key: String,
    state: Mutex<State>,
}

/// The handler the connection threads run (an `Arc`, so answers can schedule work).
struct Server(Arc<Shared>);

/// A loopback eSIM Access-style supplier; stops with the test process.
pub struct EsimAccessSim {
    shared: Arc<Shared>,
}

/// What every simulator offers (port, base URL, recorded requests, faults, webhooks).
impl std::ops::Deref for EsimAccessSim {
    type Target = SimCore;

    fn deref(&self) -> &SimCore {
        &self.shared.core
    }
}

impl EsimAccessSim {
    /// `errorCode`: a malformed body or a missing or wrong field.
    pub const INVALID_PARAMETERS: &str = "100001";
    /// `errorCode`: `RT-Timestamp` unparseable or more than 5 minutes off.
    pub const TIMESTAMP_EXPIRED: &str = "101001";
    /// `errorCode`: a missing or wrong signature, or a wrong access code.
    pub const SIGNATURE_MISMATCH: &str = "101003";
    /// `errorCode`: rate limited (HTTP 429).
    pub const TOO_MANY_REQUESTS: &str = "101009";
    /// `errorCode`: an unknown package.
    pub const PACKAGE_NOT_FOUND: &str = "200002";
    /// `errorCode`: a price or amount that does not match the catalogue.
    pub const PRICE_MISMATCH: &str = "200005";
    /// `errorCode`: out of stock.
    pub const INSUFFICIENT_STOCK: &str = "200007";
    /// `errorCode`: the order's eSIMs are not allocated yet.
    pub const NOT_YET_ALLOCATED: &str = "200010";
    /// `errorCode`: no such order or eSIM.
    pub const NOT_FOUND: &str = "200011";
    /// `errorCode`: the eSIM cannot be cancelled.
    pub const CANNOT_CANCEL: &str = "200012";
    /// `errorCode`: an internal error (HTTP 500).
    pub const INTERNAL_ERROR: &str = "999999";

    /// Start one accepting `access_code` with signatures under `secret_key`.
    pub fn start(access_code: &str, secret_key: &str) -> EsimAccessSim {
        let (listener, port) = http1::bind_loopback();
        let shared = Arc::new(Shared {
            core: SimCore::new(port),
            access_code: access_code.to_string(),
            secret_key: secret_key.to_string(),
            state: Mutex::new(State {
                packages: EsimAccessPackage::defaults(),
                orders: Vec::new(),
                lines: HashMap::new(),
                esims: Vec::new(),
                next_order: 0,
                next_esim: 0,
                allocation_delay: Duration::ZERO,
                manual_allocation: false,
            }),
        });
        http1::spawn_keep_alive(listener, MAX_BODY, Arc::new(Server(shared.clone())));
        EsimAccessSim { shared }
    }

    /// Replace the catalogue.
    pub fn set_packages(&self, packages: Vec<EsimAccessPackage>) {
        lock(&self.shared.state).packages = packages;
    }

    /// The catalogue.
    pub fn packages(&self) -> Vec<EsimAccessPackage> {
        lock(&self.shared.state).packages.clone()
    }

    /// Allocate the eSIMs of orders taken from now on `delay` after the order call (zero,
    /// the default: before the order call is answered).
    pub fn set_allocation_delay(&self, delay: Duration) {
        lock(&self.shared.state).allocation_delay = delay;
    }

    /// When `manual`, orders taken from now on wait for [`EsimAccessSim::allocate`].
    pub fn set_manual_allocation(&self, manual: bool) {
        lock(&self.shared.state).manual_allocation = manual;
    }

    /// Allocate order `order_no`'s eSIMs now and post its `ORDER_STATUS` webhook; returns
    /// what the receiver answered (`None` when no webhook URL is set, the receiver was
    /// unreachable, or the order is unknown or was allocated already).
    pub fn allocate(&self, order_no: &str) -> Option<u16> {
        allocate_and_notify(&self.shared, order_no)
    }

    /// Every order taken, oldest first.
    pub fn orders(&self) -> Vec<EsimAccessOrder> {
        lock(&self.shared.state).orders.clone()
    }

    /// Every eSIM allocated, oldest first.
    pub fn esims(&self) -> Vec<EsimAccessEsim> {
        lock(&self.shared.state).esims.clone()
    }

    /// The eSIM with this ICCID.
    pub fn esim(&self, iccid: &str) -> Option<EsimAccessEsim> {
        lock(&self.shared.state)
            .esims
            .iter()
            .find(|e| e.iccid == iccid)
            .cloned()
    }

    /// `RT-Signature` for a call: lowercase hex HMAC-SHA256 under the secret key of
    /// `timestamp + request_id + access code + body`.
    pub fn sign(&self, timestamp: &str, request_id: &str, body: &[u8]) -> String {
        sim::hmac_hex(
            ring::hmac::HMAC_SHA256,
            &self.shared.secret_key,
            &signed_message(timestamp, request_id, &self.shared.access_code, body),
        )
    }

    /// The four `RT-*` headers a correct client sends with `body` now.
    pub fn signed_headers(&self, body: &[u8]) -> Vec<(String, String)> {
        let timestamp = sim::now_ms().to_string();
        let request_id = sim::random_hex(16);
        let signature = self.sign(&timestamp, &request_id, body);
        vec![
            ("RT-AccessCode".into(), self.shared.access_code.clone()),
            ("RT-RequestID".into(), request_id),
            ("RT-Timestamp".into(), timestamp),
            ("RT-Signature".into(), signature),
        ]
    }

    /// POST `body` to the webhook URL as the supplier would (unsigned); returns the status
    /// the receiver answered. Panics when no URL is set or it cannot be reached.
    pub fn post_webhook(&self, body: &[u8]) -> u16 {
        self.shared.core.post_to_webhook_url(&[], body)
    }

    /// The `ORDER_STATUS` (`GOT_RESOURCE`) webhook body for order `order_no`.
    pub fn order_status_body(&self, order_no: &str) -> Vec<u8> {
        let order = lock(&self.shared.state)
            .orders
            .iter()
            .find(|o| o.order_no == order_no)
            .cloned()
            .unwrap_or_else(|| panic!("the supplier took no order {order_no:?}"));
        order_status_body(&order.order_no, &order.transaction_id)
    }

    /// The `SMDP_EVENT` webhook body for eSIM `iccid` reaching `smdp_status`
    /// (`DOWNLOAD`, `INSTALLATION`, `ENABLED`, `DISABLED`, `DELETED`).
    pub fn smdp_event_body(&self, iccid: &str, smdp_status: &str) -> Vec<u8> {
        let esim = self.known_esim(iccid);
        notification(
            "SMDP_EVENT",
            json!({
                "eid": esim.eid,
                "iccid": esim.iccid,
                "smdpStatus": smdp_status,
                "esimTranNo": esim.esim_tran_no,
                "orderNo": esim.order_no,
                "transactionId": esim.transaction_id,
            }),
        )
    }

    /// The `ESIM_STATUS` webhook body for eSIM `iccid` reaching `esim_status` (`IN_USE`,
    /// `USED_UP`, `USED_EXPIRED`, `UNUSED_EXPIRED`, `CANCEL`, `REVOKED`).
    pub fn esim_status_body(&self, iccid: &str, esim_status: &str) -> Vec<u8> {
        let esim = self.known_esim(iccid);
        notification(
            "ESIM_STATUS",
            json!({
                "orderNo": esim.order_no,
                "transactionId": esim.transaction_id,
                "esimTranNo": esim.esim_tran_no,
                "iccid": esim.iccid,
                "esimStatus": esim_status,
                "smdpStatus": esim.smdp_status,
            }),
        )
    }

    /// The `DATA_USAGE` webhook body for eSIM `iccid` having used `used` of `total` bytes.
    /// `remainThreshold` is the smallest of 0.1, 0.2, 0.5 and 1 at or above the share
    /// remaining.
    pub fn data_usage_body(&self, iccid: &str, used: u64, total: u64) -> Vec<u8> {
        let esim = self.known_esim(iccid);
        let remain = total.saturating_sub(used);
        let share = if total == 0 {
            0.0
        } else {
            remain as f64 / total as f64
        };
        let threshold = [0.1, 0.2, 0.5, 1.0]
            .into_iter()
            .find(|t| share <= *t)
            .unwrap_or(1.0);
        notification(
            "DATA_USAGE",
            json!({
                "orderNo": esim.order_no,
                "transactionId": esim.transaction_id,
                "esimTranNo": esim.esim_tran_no,
                "iccid": esim.iccid,
                "totalVolume": total,
                "orderUsage": used,
                "remain": remain,
                "remainThreshold": threshold,
                "lastUpdateTime": sim::now_rfc3339(),
            }),
        )
    }

    /// The `CHECK_HEALTH` webhook body the supplier sends to test a webhook URL.
    pub fn check_health_body(&self) -> Vec<u8> {
        notification("CHECK_HEALTH", json!({"msg": "check health"}))
    }

    /// Post a `CHECK_HEALTH` webhook; returns the status the receiver answered.
    pub fn check_health(&self) -> u16 {
        self.post_webhook(&self.check_health_body())
    }

    /// Set eSIM `iccid`'s `smdpStatus` (giving it an EID once installed somewhere) and post
    /// the `SMDP_EVENT` webhook; returns the status the receiver answered.
    pub fn smdp_event(&self, iccid: &str, smdp_status: &str) -> u16 {
        self.update_esim(iccid, |e| {
            e.smdp_status = smdp_status.to_string();
            if e.eid.is_empty() && smdp_status != "RELEASED" {
                e.eid = format!("89049032{:024}", u64_digits(&e.iccid));
            }
        });
        self.post_webhook(&self.smdp_event_body(iccid, smdp_status))
    }

    /// Set eSIM `iccid`'s `esimStatus` and post the `ESIM_STATUS` webhook; returns the
    /// status the receiver answered.
    pub fn esim_status(&self, iccid: &str, esim_status: &str) -> u16 {
        self.update_esim(iccid, |e| e.esim_status = esim_status.to_string());
        self.post_webhook(&self.esim_status_body(iccid, esim_status))
    }

    /// Record that eSIM `iccid` used `used` of `total` bytes and post the `DATA_USAGE`
    /// webhook; returns the status the receiver answered.
    pub fn data_usage(&self, iccid: &str, used: u64, total: u64) -> u16 {
        self.update_esim(iccid, |e| {
            e.order_usage = used;
            e.total_volume = total;
        });
        self.post_webhook(&self.data_usage_body(iccid, used, total))
    }

    fn known_esim(&self, iccid: &str) -> EsimAccessEsim {
        self.esim(iccid)
            .unwrap_or_else(|| panic!("the supplier allocated no eSIM {iccid:?}"))
    }

    fn update_esim(&self, iccid: &str, change: impl FnOnce(&mut EsimAccessEsim)) {
        let mut state = lock(&self.shared.state);
        let esim = state
            .esims
            .iter_mut()
            .find(|e| e.iccid == iccid)
            .unwrap_or_else(|| panic!("the supplier allocated no eSIM {iccid:?}"));
        change(esim);
    }
}

/// The last digits of `iccid` as a number (for a deterministic EID).
fn u64_digits(iccid: &str) -> u64 {
    let tail = &iccid[iccid.len().saturating_sub(18)..];
    tail.parse().unwrap_or(0)
}

fn signed_message(timestamp: &str, request_id: &str, access_code: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}{request_id}{access_code}").into_bytes();
    message.extend_from_slice(body);
    message
}

/// A webhook body: `notifyType`, a fresh `notifyId`, `eventGenerateTime` and `content`.
fn notification(notify_type: &str, content: Value) -> Vec<u8> {
    json!({
        "notifyType": notify_type,
        "notifyId": sim::random_hex(16),
        "eventGenerateTime": sim::now_rfc3339(),
        "content": content,
    })
    .to_string()
    .into_bytes()
}

fn order_status_body(order_no: &str, transaction_id: &str) -> Vec<u8> {
    notification(
        "ORDER_STATUS",
        json!({
            "orderNo": order_no,
            "transactionId": transaction_id,
            "orderStatus": "GOT_RESOURCE",
        }),
    )
}

fn success(obj: Value) -> Reply {
    Reply::json(
        200,
        &json!({"success": true, "errorCode": "0", "errorMsg": null, "obj": obj}),
    )
}

fn failure_body(code: &str, message: &str) -> Value {
    json!({"success": false, "errorCode": code, "errorMsg": message})
}

/// An API error, answered as that API does: HTTP 200.
fn failure(code: &str, message: &str) -> Reply {
    Reply::json(200, &failure_body(code, message))
}

fn fault_reply(fault: &Fault) -> Option<Reply> {
    Some(match fault {
        Fault::RateLimited { retry_after_secs } => Reply::json(
            429,
            &failure_body(EsimAccessSim::TOO_MANY_REQUESTS, "too many requests"),
        )
        .header("retry-after", &retry_after_secs.to_string()),
        Fault::ServerError => Reply::json(
            500,
            &failure_body(EsimAccessSim::INTERNAL_ERROR, "internal error"),
        ),
        Fault::Unavailable => sim::unavailable(),
        Fault::BadRequest => Reply::json(
            400,
            &failure_body(EsimAccessSim::INVALID_PARAMETERS, "invalid request"),
        ),
        Fault::OutOfStock => failure(EsimAccessSim::INSUFFICIENT_STOCK, "insufficient stock"),
        Fault::Slow(_) => return None,
    })
}

/// A number that may be sent as a JSON number or a string of digits.
fn lenient_u64(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

fn lenient_i64(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

fn non_empty_str<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl http1::Handler for Server {
    fn handle(&self, request: &http1::Request, connection: u64) -> Reply {
        let shared = &self.0;
        shared.core.record(request, connection);
        let path = request.path();
        let method = request.method.to_ascii_uppercase();
        let Some(route) = path.strip_prefix("/api/v1/open/") else {
            return match (method.as_str(), path) {
                ("GET" | "HEAD", "/") => Reply::text(200, "eSIM Access simulator"),
                ("GET" | "HEAD", p) if p.starts_with("/qr/") => qr_code(shared, p),
                _ => Reply::json(404, &failure_body("404", "not found")),
            };
        };
        if !ROUTES.contains(&route) {
            return Reply::json(404, &failure_body("404", "not found"));
        }
        if method != "POST" {
            return Reply::json(405, &failure_body("405", "method not allowed"))
                .header("allow", "POST");
        }
        if let Err((code, message)) = shared.authenticate(request) {
            return failure(code, message);
        }
        if let Some(fault) = shared.core.take_fault(route == "esim/order") {
            if let Fault::Slow(delay) = fault {
                std::thread::sleep(delay);
            }
            if let Some(reply) = fault_reply(&fault) {
                return reply;
            }
        }
        let body = if request.body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice::<Value>(&request.body) {
                Ok(body) if body.is_object() => body,
                _ => {
                    return failure(
                        EsimAccessSim::INVALID_PARAMETERS,
                        "the body is not a JSON object",
                    );
                }
            }
        };
        match route {
            "package/list" => shared.package_list(&body),
            "esim/order" => order(shared, &body),
            "esim/query" => shared.query(&body),
            "esim/cancel" => shared.cancel(&body),
            _ => shared.usage(&body),
        }
    }

    fn unreadable(&self, status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            &failure_body(EsimAccessSim::INVALID_PARAMETERS, message),
        )
    }

    fn accepted(&self) -> u64 {
        self.0.core.accepted()
    }
}

fn qr_code(shared: &Shared, path: &str) -> Reply {
    let tran_no = path
        .trim_start_matches("/qr/")
        .trim_end_matches(".png")
        .to_string();
    if lock(&shared.state)
        .esims
        .iter()
        .any(|e| e.esim_tran_no == tran_no)
    {
        // A placeholder: the PNG signature, no picture.
        Reply {
            status: 200,
            headers: Vec::new(),
            content_type: Some("image/png".into()),
            body: b"\x89PNG\r\n\x1a\n".to_vec(),
            then: None,
        }
    } else {
        Reply::json(404, &failure_body("404", "not found"))
    }
}

/// Take an order and schedule its allocation (and webhook).
fn order(shared: &Arc<Shared>, body: &Value) -> Reply {
    let Some(transaction_id) = non_empty_str(body, "transactionId") else {
        return failure(
            EsimAccessSim::INVALID_PARAMETERS,
            "transactionId is required",
        );
    };
    let Some(lines) = body
        .get("packageInfoList")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
    else {
        return failure(
            EsimAccessSim::INVALID_PARAMETERS,
            "packageInfoList is required",
        );
    };
    let mut state = lock(&shared.state);
    if let Some(existing) = state
        .orders
        .iter()
        .find(|o| o.transaction_id == transaction_id)
    {
        return success(json!({"orderNo": existing.order_no, "transactionId": transaction_id}));
    }
    let mut resolved = Vec::new();
    for line in lines {
        let code = non_empty_str(line, "packageCode").or_else(|| non_empty_str(line, "slug"));
        let count = line.get("count").and_then(lenient_u64);
        let (Some(code), Some(count)) = (code, count.filter(|c| (1..=MAX_COUNT).contains(c)))
        else {
            return failure(
                EsimAccessSim::INVALID_PARAMETERS,
                "every packageInfoList entry needs a packageCode and a count from 1 to 100",
            );
        };
        let Some(package) = state
            .packages
            .iter()
            .find(|p| p.package_code == code || p.slug == code)
            .cloned()
        else {
            return failure(
                EsimAccessSim::PACKAGE_NOT_FOUND,
                &format!("package {code} not found"),
            );
        };
        match line.get("price").filter(|p| !p.is_null()) {
            Some(price) if lenient_i64(price) != Some(package.price) => {
                return failure(
                    EsimAccessSim::PRICE_MISMATCH,
                    &format!("price of {code} mismatch"),
                );
            }
            _ => {}
        }
        resolved.push((package, count as u32));
    }
    let total = resolved.iter().fold(0i64, |sum, (p, count)| {
        sum.saturating_add(p.price.saturating_mul(i64::from(*count)))
    });
    match body.get("amount").filter(|a| !a.is_null()) {
        Some(amount) if lenient_i64(amount) != Some(total) => {
            return failure(EsimAccessSim::PRICE_MISMATCH, "amount mismatch");
        }
        _ => {}
    }
    state.next_order += 1;
    let order_no = format!("B250101{:08}", state.next_order);
    state.orders.push(EsimAccessOrder {
        order_no: order_no.clone(),
        transaction_id: transaction_id.to_string(),
        package_code: resolved[0].0.package_code.clone(),
        count: resolved.iter().map(|(_, c)| c).sum(),
        items: resolved
            .iter()
            .map(|(p, c)| (p.package_code.clone(), *c))
            .collect(),
        amount: total,
        allocated: false,
        iccids: Vec::new(),
    });
    state.lines.insert(order_no.clone(), resolved);
    let answer = success(json!({"orderNo": order_no, "transactionId": transaction_id}));
    if state.manual_allocation {
        return answer;
    }
    let delay = state.allocation_delay;
    let shared = shared.clone();
    if delay.is_zero() {
        let allocated = allocate_locked(&mut state, &order_no);
        drop(state);
        answer.then(move || {
            if let Some((order_no, transaction_id)) = allocated {
                std::thread::spawn(move || notify_allocated(&shared, &order_no, &transaction_id));
            }
        })
    } else {
        answer.then(move || {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                allocate_and_notify(&shared, &order_no);
            });
        })
    }
}

/// Allocate order `order_no`'s eSIMs; its number and transaction id when it was not
/// allocated before.
fn allocate_locked(state: &mut State, order_no: &str) -> Option<(String, String)> {
    let index = state
        .orders
        .iter()
        .position(|o| o.order_no == order_no && !o.allocated)?;
    let lines = state.lines.get(order_no).cloned().unwrap_or_default();
    let transaction_id = state.orders[index].transaction_id.clone();
    let mut iccids = Vec::new();
    for (package, count) in lines {
        for _ in 0..count {
            state.next_esim += 1;
            let n = state.next_esim;
            let iccid = sim::iccid(ICCID_PREFIX, n);
            let matching_id = sim::random_hex(16).to_uppercase();
            let expires =
                time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(package.duration));
            iccids.push(iccid.clone());
            state.esims.push(EsimAccessEsim {
                esim_tran_no: format!("25010100{:08}", n),
                iccid,
                order_no: order_no.to_string(),
                transaction_id: transaction_id.clone(),
                ac: format!("LPA:1${SMDP_ADDRESS}${matching_id}"),
                matching_id,
                smdp_status: "RELEASED".into(),
                esim_status: "GOT_RESOURCE".into(),
                eid: String::new(),
                total_volume: package.volume,
                order_usage: 0,
                expired_time: sim::rfc3339(expires),
                package: package.clone(),
            });
        }
    }
    let order = &mut state.orders[index];
    order.allocated = true;
    order.iccids = iccids;
    Some((order_no.to_string(), transaction_id))
}

fn allocate_and_notify(shared: &Shared, order_no: &str) -> Option<u16> {
    let allocated = allocate_locked(&mut lock(&shared.state), order_no);
    let (order_no, transaction_id) = allocated?;
    notify_allocated(shared, &order_no, &transaction_id)
}

/// Post `ORDER_STATUS` for an allocated order, if a webhook URL is set.
fn notify_allocated(shared: &Shared, order_no: &str, transaction_id: &str) -> Option<u16> {
    let url = shared.core.webhook_url()?;
    let body = order_status_body(order_no, transaction_id);
    shared.core.deliver(&url, &[], &body).status
}

impl Shared {
    /// Check the `RT-*` headers; the error code and message when they do not hold.
    fn authenticate(&self, request: &http1::Request) -> Result<(), (&'static str, &'static str)> {
        let header = |name: &str| request.headers.get(name).map(String::as_str);
        let mismatch = (EsimAccessSim::SIGNATURE_MISMATCH, "signature mismatch");
        let (Some(access_code), Some(request_id), Some(timestamp), Some(signature)) = (
            header("rt-accesscode"),
            header("rt-requestid"),
            header("rt-timestamp"),
            header("rt-signature"),
        ) else {
            return Err(mismatch);
        };
        let fresh = timestamp
            .parse::<i64>()
            .is_ok_and(|ts| sim::now_ms().abs_diff(ts) <= MAX_CLOCK_SKEW_MS);
        if !fresh {
            return Err((EsimAccessSim::TIMESTAMP_EXPIRED, "timestamp expired"));
        }
        if access_code != self.access_code {
            return Err(mismatch);
        }
        let Ok(signature) = hex::decode(signature) else {
            return Err(mismatch);
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret_key.as_bytes());
        let message = signed_message(timestamp, request_id, access_code, &request.body);
        ring::hmac::verify(&key, &message, &signature).map_err(|_| mismatch)
    }

    fn package_list(&self, body: &Value) -> Reply {
        let location = non_empty_str(body, "locationCode");
        let code = non_empty_str(body, "packageCode");
        let slug = non_empty_str(body, "slug");
        let state = lock(&self.state);
        let list: Vec<Value> = state
            .packages
            .iter()
            .filter(|p| location.is_none_or(|l| p.covers(l)))
            .filter(|p| code.is_none_or(|c| p.package_code == c))
            .filter(|p| slug.is_none_or(|s| p.slug == s))
            .map(EsimAccessPackage::json)
            .collect();
        success(json!({"packageList": list}))
    }

    fn esim_json(&self, esim: &EsimAccessEsim) -> Value {
        let package = &esim.package;
        json!({
            "esimTranNo": esim.esim_tran_no,
            "orderNo": esim.order_no,
            "transactionId": esim.transaction_id,
            "imsi": "",
            "iccid": esim.iccid,
            "msisdn": "",
            "ac": esim.ac,
            "qrCodeUrl": format!("{}/qr/{}.png", self.core.base(), esim.esim_tran_no),
            "smdpStatus": esim.smdp_status,
            "eid": esim.eid,
            "activeType": 1,
            "dataType": 1,
            "activateTime": null,
            "expiredTime": esim.expired_time,
            "totalVolume": esim.total_volume,
            "totalDuration": package.duration,
            "durationUnit": "DAY",
            "orderUsage": esim.order_usage,
            "esimStatus": esim.esim_status,
            "packageList": [{
                "packageName": package.name,
                "packageCode": package.package_code,
                "slug": package.slug,
                "duration": package.duration,
                "volume": package.volume,
                "locationCode": package.location,
            }],
        })
    }

    fn query(&self, body: &Value) -> Reply {
        let state = lock(&self.state);
        let found: Vec<&EsimAccessEsim> = if let Some(order_no) = non_empty_str(body, "orderNo") {
            let Some(order) = state.orders.iter().find(|o| o.order_no == order_no) else {
                return failure(EsimAccessSim::NOT_FOUND, "order not found");
            };
            if !order.allocated {
                return failure(EsimAccessSim::NOT_YET_ALLOCATED, "order not yet allocated");
            }
            state
                .esims
                .iter()
                .filter(|e| e.order_no == order_no)
                .collect()
        } else if let Some(iccid) = non_empty_str(body, "iccid") {
            state.esims.iter().filter(|e| e.iccid == iccid).collect()
        } else if let Some(tran_no) = non_empty_str(body, "esimTranNo") {
            state
                .esims
                .iter()
                .filter(|e| e.esim_tran_no == tran_no)
                .collect()
        } else {
            state.esims.iter().collect()
        };
        let named_one = body.get("iccid").is_some() || body.get("esimTranNo").is_some();
        if found.is_empty() && named_one {
            return failure(EsimAccessSim::NOT_FOUND, "esim not found");
        }
        let pager = body.get("pager").unwrap_or(&Value::Null);
        let page_num = pager
            .get("pageNum")
            .and_then(lenient_u64)
            .filter(|n| *n >= 1)
            .unwrap_or(1);
        let page_size = pager
            .get("pageSize")
            .and_then(lenient_u64)
            .filter(|n| *n >= 1)
            .unwrap_or(DEFAULT_PAGE_SIZE)
            .min(500);
        let skip = usize::try_from((page_num - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
        let page: Vec<Value> = found
            .iter()
            .skip(skip)
            .take(page_size as usize)
            .map(|e| self.esim_json(e))
            .collect();
        success(json!({
            "esimList": page,
            "pager": {"pageNum": page_num, "pageSize": page_size, "total": found.len()},
        }))
    }

    fn cancel(&self, body: &Value) -> Reply {
        let tran_no = non_empty_str(body, "esimTranNo");
        let iccid = non_empty_str(body, "iccid");
        if tran_no.is_none() && iccid.is_none() {
            return failure(
                EsimAccessSim::INVALID_PARAMETERS,
                "esimTranNo or iccid is required",
            );
        }
        let mut state = lock(&self.state);
        let Some(esim) = state
            .esims
            .iter_mut()
            .find(|e| Some(e.esim_tran_no.as_str()) == tran_no || Some(e.iccid.as_str()) == iccid)
        else {
            return failure(EsimAccessSim::NOT_FOUND, "esim not found");
        };
        let unused = esim.esim_status == "GOT_RESOURCE"
            && esim.smdp_status == "RELEASED"
            && esim.order_usage == 0;
        if !unused {
            return failure(
                EsimAccessSim::CANNOT_CANCEL,
                "esim status does not allow cancel",
            );
        }
        esim.esim_status = "CANCEL".into();
        success(Value::Null)
    }

    fn usage(&self, body: &Value) -> Reply {
        let Some(list) = body.get("esimTranNoList").and_then(Value::as_array) else {
            return failure(
                EsimAccessSim::INVALID_PARAMETERS,
                "esimTranNoList is required",
            );
        };
        let state = lock(&self.state);
        let usage: Vec<Value> = list
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|n| state.esims.iter().find(|e| e.esim_tran_no == n))
            .map(|e| {
                json!({
                    "esimTranNo": e.esim_tran_no,
                    "dataUsage": e.order_usage,
                    "totalData": e.total_volume,
                    "lastUpdateTime": sim::now_rfc3339(),
                })
            })
            .collect();
        success(json!({"esimUsageList": usage}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Receiver;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const ACCESS: &str = "test-access-code-71c";
    const SECRET: &str = "test-secret-key-0d4e";

    fn agent() -> ureq::Agent {
        crate::sim::agent(Duration::from_secs(10))
    }

    /// POST `body` to `route` with `headers`; the status, `Retry-After` and JSON answer.
    fn post_with(
        sim: &EsimAccessSim,
        route: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (u16, Option<String>, Value) {
        let mut request = agent()
            .post(format!("{}/api/v1/open/{route}", sim.base()))
            .header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let mut response = request.send(body).expect("the supplier answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.body_mut().read_to_vec().unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, retry_after, json)
    }

    /// A correctly signed call; the JSON answer (status 200 asserted).
    fn call(sim: &EsimAccessSim, route: &str, body: Value) -> Value {
        let body = body.to_string().into_bytes();
        let (status, _, json) = post_with(sim, route, &sim.signed_headers(&body), &body);
        assert_eq!(status, 200, "{json}");
        json
    }

    fn order_body(transaction_id: &str, code: &str, count: u32, price: i64) -> Value {
        json!({
            "transactionId": transaction_id,
            "amount": price * i64::from(count),
            "packageInfoList": [{"packageCode": code, "count": count, "price": price}],
        })
    }

    #[test]
    fn a_correctly_signed_call_succeeds_and_a_bad_signature_gets_101003() {
        let sim = EsimAccessSim::start(ACCESS, SECRET);
        let all = call(&sim, "package/list", json!({}));
        assert_eq!(all["success"], true, "{all}");
        assert_eq!(all["errorCode"], "0");
        let list = all["obj"]["packageList"].as_array().unwrap();
        assert_eq!(list.len(), 4);
        assert!(list.iter().any(|p| p["location"] == "FR,DE,IT"));
        assert!(
            list.iter()
                .all(|p| p["price"].is_i64() && p["currencyCode"] == "USD")
        );
        let de = call(&sim, "package/list", json!({"locationCode": "DE"}));
        assert_eq!(de["obj"]["packageList"][0]["packageCode"], "PEU10G30D");

        // Upper-case hex is accepted too.
        let body = br#"{"locationCode":"JP"}"#;
        let mut headers = sim.signed_headers(body);
        headers[3].1 = headers[3].1.to_uppercase();
        let (_, _, jp) = post_with(&sim, "package/list", &headers, body);
        assert_eq!(
            jp["obj"]["packageList"].as_array().unwrap().len(),
            2,
            "{jp}"
        );

        let mismatch = |headers: &[(String, String)], body: &[u8]| {
            let (status, _, json) = post_with(&sim, "package/list", headers, body);
            assert_eq!(status, 200);
            assert_eq!(json["success"], false);
            json["errorCode"].as_str().unwrap().to_string()
        };
        let body = b"{}";
        let good = sim.signed_headers(body);
        // Signed over another body.
        assert_eq!(mismatch(&good, br#"{"x":1}"#), "101003");
        // A wrong secret.
        let mut wrong = good.clone();
        wrong[3].1 = sim::hmac_hex(ring::hmac::HMAC_SHA256, "nope", b"x");
        assert_eq!(mismatch(&wrong, body), "101003");
        // A wrong access code, a missing signature, junk hex.
        let mut other = good.clone();
        other[0].1 = "someone-else".into();
        assert_eq!(mismatch(&other, body), "101003");
        assert_eq!(mismatch(&good[..3], body), "101003");
        let mut junk = good.clone();
        junk[3].1 = "zz".into();
        assert_eq!(mismatch(&junk, body), "101003");
        // Ten minutes old, correctly signed.
        let old = (sim::now_ms() - 10 * 60 * 1000).to_string();
        let mut stale = good.clone();
        stale[2].1 = old.clone();
        stale[3].1 = sim.sign(&old, &stale[1].1, body);
        assert_eq!(mismatch(&stale, body), "101001");
        assert!(sim.orders().is_empty());
        assert_eq!(sim.requests_to("/api/v1/open/package/list").len(), 9);
    }

    #[test]
    fn orders_are_idempotent_on_transaction_id_and_allocated_separately() {
        let sim = EsimAccessSim::start(ACCESS, SECRET);
        let receiver = Receiver::start();
        sim.set_webhook_url(&receiver.url("/v1/inbound/esim-access"));

        let first = call(&sim, "esim/order", order_body("tx-1", "PJP1G7D", 2, 18_000));
        assert_eq!(first["success"], true, "{first}");
        let order_no = first["obj"]["orderNo"].as_str().unwrap().to_string();
        assert!(order_no.starts_with('B') && order_no[1..].bytes().all(|b| b.is_ascii_digit()));
        let again = call(&sim, "esim/order", order_body("tx-1", "PJP1G7D", 2, 18_000));
        assert_eq!(again["obj"]["orderNo"], order_no.as_str());
        let orders = sim.orders();
        assert_eq!(orders.len(), 1, "no second order");
        assert_eq!((orders[0].count, orders[0].amount), (2, 36_000));

        let got = call(
            &sim,
            "esim/query",
            json!({"orderNo": order_no, "pager": {"pageNum": 1, "pageSize": 20}}),
        );
        let esims = got["obj"]["esimList"].as_array().unwrap();
        assert_eq!(esims.len(), 2, "{got}");
        assert_eq!(got["obj"]["pager"]["total"], 2);
        let iccid = esims[0]["iccid"].as_str().unwrap();
        assert!(crate::luhn(iccid) && iccid.len() == 20, "{iccid}");
        assert!(
            esims[0]["ac"]
                .as_str()
                .unwrap()
                .starts_with("LPA:1$smdp.sim.test$")
        );
        assert_eq!(esims[0]["esimStatus"], "GOT_RESOURCE");
        assert_eq!(esims[0]["transactionId"], "tx-1");
        assert_eq!(sim.orders()[0].iccids.len(), 2);

        let hook = &receiver.wait_for(1, Duration::from_secs(5))[0];
        let hook = hook.json();
        assert_eq!(hook["notifyType"], "ORDER_STATUS");
        assert_eq!(hook["content"]["orderNo"], order_no.as_str());
        assert_eq!(hook["content"]["orderStatus"], "GOT_RESOURCE");

        let unknown = call(&sim, "esim/order", order_body("tx-2", "NOPE", 1, 1));
        assert_eq!(unknown["errorCode"], "200002");
        let cheap = call(&sim, "esim/order", order_body("tx-3", "PJP1G7D", 1, 1));
        assert_eq!(cheap["errorCode"], "200005");
        sim.fail_next(1, Fault::OutOfStock);
        assert_eq!(
            call(&sim, "package/list", json!({}))["success"],
            true,
            "out of stock waits for an order"
        );
        let out = call(&sim, "esim/order", order_body("tx-4", "PJP1G7D", 1, 18_000));
        assert_eq!(out["errorCode"], "200007");
        assert_eq!(sim.orders().len(), 1);
    }

    #[test]
    fn a_manually_allocated_order_is_not_ready_until_allocated_and_cancels_when_unused() {
        let sim = EsimAccessSim::start(ACCESS, SECRET);
        sim.set_manual_allocation(true);
        let placed = call(
            &sim,
            "esim/order",
            order_body("tx-m", "PEU10G30D", 1, 120_000),
        );
        let order_no = placed["obj"]["orderNo"].as_str().unwrap().to_string();
        let early = call(&sim, "esim/query", json!({"orderNo": order_no}));
        assert_eq!(early["errorCode"], "200010");
        assert_eq!(sim.allocate(&order_no), None, "no webhook URL set");
        assert_eq!(sim.allocate(&order_no), None, "allocated once");
        let esim = sim.esims().remove(0);
        let by_iccid = call(&sim, "esim/query", json!({"iccid": esim.iccid}));
        assert_eq!(
            by_iccid["obj"]["esimList"][0]["esimTranNo"],
            esim.esim_tran_no
        );

        let usage = call(
            &sim,
            "esim/usage/query",
            json!({"esimTranNoList": [esim.esim_tran_no, "nope"]}),
        );
        let list = usage["obj"]["esimUsageList"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["totalData"], 10 * GIB);

        let cancelled = call(&sim, "esim/cancel", json!({"iccid": esim.iccid}));
        assert_eq!(cancelled["success"], true, "{cancelled}");
        assert_eq!(sim.esim(&esim.iccid).unwrap().esim_status, "CANCEL");
        let twice = call(
            &sim,
            "esim/cancel",
            json!({"esimTranNo": esim.esim_tran_no}),
        );
        assert_eq!(twice["errorCode"], "200012");
    }

    #[test]
    fn faults_answer_429_with_retry_after_then_500_then_normally() {
        let sim = EsimAccessSim::start(ACCESS, SECRET);
        sim.fail_next(
            1,
            Fault::RateLimited {
                retry_after_secs: 7,
            },
        );
        sim.fail_next(1, Fault::ServerError);
        sim.fail_next(1, Fault::Unavailable);
        sim.fail_next(1, Fault::BadRequest);
        sim.fail_next(1, Fault::Slow(Duration::from_millis(200)));
        let body = b"{}";
        let call = || post_with(&sim, "package/list", &sim.signed_headers(body), body);
        let (status, retry_after, json) = call();
        assert_eq!((status, retry_after.as_deref()), (429, Some("7")));
        assert_eq!(json["errorCode"], "101009");
        assert_eq!(call().0, 500);
        let (status, _, json) = call();
        assert_eq!((status, json), (503, Value::Null));
        assert_eq!(call().0, 400);
        let started = std::time::Instant::now();
        let (status, _, json) = call();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!((status, json["success"].as_bool()), (200, Some(true)));
        assert_eq!(call().0, 200);
    }

    #[test]
    fn webhook_helpers_change_state_and_post_what_the_builders_build() {
        let sim = EsimAccessSim::start(ACCESS, SECRET);
        let receiver = Receiver::start();
        sim.set_webhook_url(&receiver.url("/hook"));
        call(
            &sim,
            "esim/order",
            order_body("tx-w", "PUS3G15D", 1, 42_000),
        );
        let iccid = sim.esims()[0].iccid.clone();
        receiver.wait_for(1, Duration::from_secs(5));

        assert_eq!(sim.smdp_event(&iccid, "INSTALLATION"), 204);
        assert_eq!(sim.esim_status(&iccid, "IN_USE"), 204);
        receiver.answer(500);
        assert_eq!(sim.data_usage(&iccid, 900, 1000), 500);
        let got = receiver.wait_for(4, Duration::from_secs(5));
        let smdp = got[1].json();
        assert_eq!(smdp["notifyType"], "SMDP_EVENT");
        assert_eq!(smdp["content"]["smdpStatus"], "INSTALLATION");
        assert_eq!(smdp["content"]["eid"].as_str().unwrap().len(), 32);
        assert_eq!(got[2].json()["content"]["esimStatus"], "IN_USE");
        let usage = got[3].json();
        assert_eq!(usage["content"]["remain"], 100);
        assert_eq!(usage["content"]["remainThreshold"], 0.1);
        assert_eq!(sim.esim(&iccid).unwrap().order_usage, 900);
        assert_ne!(smdp["notifyId"], usage["notifyId"]);

        let webhooks = sim.webhooks();
        assert_eq!(webhooks.len(), 4);
        assert_eq!(webhooks[3].status, Some(500));
        assert_eq!(webhooks[3].body, got[3].body);
        let replay = sim.esim_status_body(&iccid, "USED_UP");
        assert_eq!(sim.post_webhook(&replay), 500);
        assert_eq!(receiver.wait_for(5, Duration::from_secs(5))[4].body, replay);
    }

    #[test]
    fn a_kept_alive_connection_serves_several_requests_and_counts_once() {
        let sim = EsimAccessSim::start(ACCESS, SECRET);
        let mut stream = TcpStream::connect(("127.0.0.1", sim.port())).unwrap();
        let body = b"{}";
        for close in [false, true] {
            let mut head = format!(
                "POST {}/api/v1/open/package/list HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n",
                sim.base()
            );
            for (k, v) in sim.signed_headers(body) {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            if close {
                head.push_str("connection: close\r\n");
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(body).unwrap();
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        assert_eq!(answer.matches("\"success\":true").count(), 2, "{answer}");
        assert!(answer.contains("connection: keep-alive"));
        assert!(!answer.contains("chunked"));
        assert_eq!(sim.connections(), 1);
        let requests = sim.requests();
        assert_eq!(requests.len(), 2);
        assert!(requests.iter().all(|r| r.connection == 1));
        assert_eq!(requests[0].path, "/api/v1/open/package/list");
    }

    #[test]
    fn garbage_never_takes_the_server_down() {
        let sim = EsimAccessSim::start(ACCESS, SECRET);
        for junk in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"POST /api/v1/open/esim/order HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
            b"POST /api/v1/open/esim/order HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(("127.0.0.1", sim.port())).unwrap();
            let _ = s.write_all(junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.read_to_end(&mut Vec::new());
        }
        for body in [
            &b"[]"[..],
            b"not json",
            br#"{"transactionId":"t","packageInfoList":[{"packageCode":"PJP1G7D","count":-1}]}"#,
            br#"{"transactionId":"t","packageInfoList":[{"packageCode":"PJP1G7D","count":1e300}]}"#,
        ] {
            let (status, _, json) = post_with(&sim, "esim/order", &sim.signed_headers(body), body);
            assert_eq!((status, json["errorCode"].as_str()), (200, Some("100001")));
        }
        assert_eq!(
            call(
                &sim,
                "esim/query",
                json!({"pager": {"pageNum": u64::MAX, "pageSize": "x"}})
            )["success"],
            true
        );
        assert_eq!(call(&sim, "package/list", json!({}))["success"], true);
    }
}
