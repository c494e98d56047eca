//! A wholesale eSIM supplier for black-box tests, modelled on the Airalo Partner API v2: a
//! real HTTP/1.1 server on a loopback port that keeps connections alive (so a benchmark can
//! tell pooled from unpooled egress; [`SimCore::connections`] counts them).
//!
//! | route | does |
//! |---|---|
//! | `POST /v2/token` | form fields `client_id`, `client_secret`, `grant_type=client_credentials` (multipart, urlencoded or JSON) -> `data.access_token` |
//! | `GET /v2/packages` | countries -> operators -> packages (`filter[type]`, `filter[country]`, `limit`, `page`) |
//! | `POST /v2/orders` | `quantity`, `package_id`, `type=sim`, `description` -> the order with its sims |
//! | `POST /v2/orders-async` | the same plus `webhook_url` -> `202` with a `request_id`; the order follows by webhook |
//! | `GET /v2/sims/{iccid}/usage` | remaining and total data (MB), `expired_at`, `status` |
//!
//! Every route but the token one needs `Authorization: Bearer <live token>` (`401` without)
//! and `Accept: application/json` (`406` without). Tokens really expire
//! ([`AiraloSim::set_token_lifetime`], [`AiraloSim::expire_tokens`]). `HEAD` anywhere, and
//! `GET` outside `/v2/`, answer `200` harmlessly (webhook URL and health probes).
//!
//! Answers are `{"data": ..., "meta": {"message": ...}}`. Failures:
//!
//! | status | when | body |
//! |---|---|---|
//! | 401 | wrong client credentials; a missing, unknown or expired bearer | `{"data": [], "meta": {"message": ...}}` |
//! | 404 | an unknown ICCID or route | `{"data": [], "meta": {"message": "Not found"}}` |
//! | 406 | no `Accept: application/json` | as 401 |
//! | 422 | a field missing or invalid (`data` maps each to its complaint) | `meta.message` `"the parameter is invalid"` |
//! | 422 | [`Fault::OutOfStock`] on an order | `meta.message` `"insufficient stock"`, `meta.code` 53 ([`AiraloSim::OUT_OF_STOCK_CODE`], this simulator's choice) |
//! | 429 | [`Fault::RateLimited`] | `Retry-After` header, `"Too Many Attempts."` |
//! | 400 / 500 | [`Fault::BadRequest`] / [`Fault::ServerError`] | as 401 |
//! | 503 | [`Fault::Unavailable`] | an HTML page |
//!
//! An order's `price` and `net_price` are totals (the package's price times `quantity`, in
//! USD); package `amount` and usage `total`/`remaining` are in MB.
//!
//! Webhooks (the async order result `{"request_id", "data": <order>}` and low-data
//! notices) are serialised compactly with serde_json and signed with `airalo-signature`:
//! hex HMAC-SHA512 keyed with the client secret over the exact bytes sent. An async
//! order's webhook goes to its `webhook_url`, else to the one the test set.
//!
//! The server never panics on bad input: a request it cannot read is answered with an
//! error status and the connection closed. Only the test-side helpers panic, on misuse.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::http1::{self, Reply};
use crate::sim::{self, Fault, MAX_BODY, SMDP_ADDRESS, SimCore, lock};

/// The first ten digits of every ICCID this simulator hands out.
const ICCID_PREFIX: &str = "8944470000";
/// Airalo's tokens live about a year.
const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 365 * 24 * 60 * 60;
/// The most sims one order may ask for.
const MAX_QUANTITY: u64 = 50;

/// One package in the catalogue, with the country and operator it is listed under.
#[derive(Debug, Clone, PartialEq)]
pub struct AiraloPackage {
    /// The package id (`moshi-moshi-7days-1gb`), what orders name.
    pub id: String,
    /// The country's ISO code (`JP`).
    pub country_code: String,
    /// The country's slug (`japan`).
    pub country_slug: String,
    /// The country's name (`Japan`).
    pub country_title: String,
    /// The operator's numeric id.
    pub operator_id: u64,
    /// The operator's name.
    pub operator_title: String,
    /// The retail price, USD.
    pub price: f64,
    /// The partner's price, USD.
    pub net_price: f64,
    /// The data allowance, MB.
    pub amount_mb: u64,
    /// The validity, days.
    pub days: u32,
    /// `1 GB - 7 Days`.
    pub title: String,
    /// `1 GB`.
    pub data: String,
}

impl AiraloPackage {
    /// The catalogue a simulator starts with: four local packages over Japan, France and
    /// the United States.
    pub fn defaults() -> Vec<AiraloPackage> {
        let package = |id: &str,
                       country: (&str, &str, &str),
                       operator: (u64, &str),
                       (price, net_price): (f64, f64),
                       gb: u64,
                       days: u32| AiraloPackage {
            id: id.into(),
            country_code: country.0.into(),
            country_slug: country.1.into(),
            country_title: country.2.into(),
            operator_id: operator.0,
            operator_title: operator.1.into(),
            price,
            net_price,
            amount_mb: gb * 1024,
            days,
            title: format!("{gb} GB - {days} Days"),
            data: format!("{gb} GB"),
        };
        let japan = ("JP", "japan", "Japan");
        let moshi = (1, "Moshi Moshi");
        vec![
            package("moshi-moshi-7days-1gb", japan, moshi, (4.5, 3.6), 1, 7),
            package("moshi-moshi-30days-3gb", japan, moshi, (9.5, 7.6), 3, 30),
            package(
                "bonjour-talk-7days-1gb",
                ("FR", "france", "France"),
                (2, "Bonjour Talk"),
                (5.0, 4.0),
                1,
                7,
            ),
            package(
                "change-15days-2gb",
                ("US", "united-states", "United States"),
                (3, "Change"),
                (8.0, 6.4),
                2,
                15,
            ),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "sim",
            "price": self.price,
            "net_price": self.net_price,
            "amount": self.amount_mb,
            "day": self.days,
            "is_unlimited": false,
            "title": self.title,
            "data": self.data,
            "short_info": null,
            "voice": null,
            "text": null,
        })
    }
}

/// One order the simulator filled (synchronously, or by an async request's webhook).
#[derive(Debug, Clone, PartialEq)]
pub struct AiraloOrder {
    /// `data.id`.
    pub id: u64,
    /// `data.code` (`YYYYMMDD-NNNNNN`).
    pub code: String,
    /// The package ordered.
    pub package_id: String,
    /// How many sims.
    pub quantity: u32,
    /// The `description` sent (`""` when none).
    pub description: String,
    /// The sims' ICCIDs (20 digits, Luhn-valid).
    pub iccids: Vec<String>,
    /// The async request it fills (`None` for a synchronous order).
    pub request_id: Option<String>,
    /// The order as answered (`data`).
    pub data: Value,
}

/// A sim's usage, as `GET /v2/sims/{iccid}/usage` reports it.
#[derive(Debug, Clone)]
struct Usage {
    package_id: String,
    status: String,
    total_mb: u64,
    remaining_mb: u64,
    expired_at: String,
}

/// An async order accepted and not yet filled.
#[derive(Debug, Clone)]
struct Pending {
    request_id: String,
    order: OrderRequest,
    webhook_url: Option<String>,
}

#[derive(Debug, Clone)]
struct OrderRequest {
    package: AiraloPackage,
    quantity: u32,
    description: String,
}

struct State {
    /// Live tokens and when each expires.
    tokens: HashMap<String, Instant>,
    token_lifetime_secs: u64,
    token_requests: u64,
    packages: Vec<AiraloPackage>,
    orders: Vec<AiraloOrder>,
    usage: BTreeMap<String, Usage>,
    pending: Vec<Pending>,
    async_delay: Duration,
    async_manual: bool,
    next_order: u64,
    next_sim: u64,
}

struct Shared {
    core: SimCore,
    client_id: String,
    client_secret: String,
    state: Mutex<State>,
}

/// The handler the connection threads run (an `Arc`, so answers can schedule work).
struct Server(Arc<Shared>);

/// A loopback Airalo-style supplier; stops with the test process.
pub struct AiraloSim {
    shared: Arc<Shared>,
}

/// What every simulator offers (port, base URL, recorded requests, faults, webhooks).
impl std::ops::Deref for AiraloSim {
    type Target = SimCore;

    fn deref(&self) -> &SimCore {
        &self.shared.core
    }
}

impl AiraloSim {
    /// `meta.code` of the out-of-stock answer ([`Fault::OutOfStock`]).
    pub const OUT_OF_STOCK_CODE: u64 = 53;

    /// Start one accepting `client_id` / `client_secret`, which also keys its webhook
    /// signatures.
    pub fn start(client_id: &str, client_secret: &str) -> AiraloSim {
        let (listener, port) = http1::bind_loopback();
        let shared = Arc::new(Shared {
            core: SimCore::new(port),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            state: Mutex::new(State {
                tokens: HashMap::new(),
                token_lifetime_secs: DEFAULT_TOKEN_LIFETIME_SECS,
                token_requests: 0,
                packages: AiraloPackage::defaults(),
                orders: Vec::new(),
                usage: BTreeMap::new(),
                pending: Vec::new(),
                async_delay: Duration::ZERO,
                async_manual: false,
                next_order: 0,
                next_sim: 0,
            }),
        });
        http1::spawn_keep_alive(listener, MAX_BODY, Arc::new(Server(shared.clone())));
        AiraloSim { shared }
    }

    /// Tokens issued from now on live `secs` seconds (`expires_in`).
    pub fn set_token_lifetime(&self, secs: u64) {
        lock(&self.shared.state).token_lifetime_secs = secs;
    }

    /// How many `POST /v2/token` calls arrived (failed ones included).
    pub fn token_requests(&self) -> u64 {
        lock(&self.shared.state).token_requests
    }

    /// Expire every token issued so far.
    pub fn expire_tokens(&self) {
        lock(&self.shared.state).tokens.clear();
    }

    /// Replace the catalogue.
    pub fn set_packages(&self, packages: Vec<AiraloPackage>) {
        lock(&self.shared.state).packages = packages;
    }

    /// The catalogue.
    pub fn packages(&self) -> Vec<AiraloPackage> {
        lock(&self.shared.state).packages.clone()
    }

    /// Every order filled, oldest first.
    pub fn orders(&self) -> Vec<AiraloOrder> {
        lock(&self.shared.state).orders.clone()
    }

    /// Fill async orders accepted from now on `delay` after accepting them (zero, the
    /// default: right after the `202`, on a background thread).
    pub fn set_async_delay(&self, delay: Duration) {
        lock(&self.shared.state).async_delay = delay;
    }

    /// When `manual`, async orders accepted from now on wait for
    /// [`AiraloSim::complete_async`].
    pub fn set_async_manual(&self, manual: bool) {
        lock(&self.shared.state).async_manual = manual;
    }

    /// The request ids of async orders accepted and not yet filled.
    pub fn pending_async(&self) -> Vec<String> {
        lock(&self.shared.state)
            .pending
            .iter()
            .map(|p| p.request_id.clone())
            .collect()
    }

    /// Fill async order `request_id` now and post its signed webhook; returns what the
    /// receiver answered (`None` when the request is unknown or filled already, no webhook
    /// URL applies, or the receiver was unreachable).
    pub fn complete_async(&self, request_id: &str) -> Option<u16> {
        complete_async(&self.shared, request_id)
    }

    /// Set sim `iccid`'s usage: `remaining_mb` left, `status` one of `NOT_ACTIVE`,
    /// `ACTIVE`, `FINISHED`, `UNKNOWN`, `EXPIRED`.
    pub fn set_usage(&self, iccid: &str, remaining_mb: u64, status: &str) {
        let mut state = lock(&self.shared.state);
        let usage = state
            .usage
            .get_mut(iccid)
            .unwrap_or_else(|| panic!("the supplier sold no sim {iccid:?}"));
        usage.remaining_mb = remaining_mb;
        usage.status = status.to_string();
    }

    /// `airalo-signature` for `body`: lowercase hex HMAC-SHA512 keyed with the client
    /// secret.
    pub fn sign(&self, body: &[u8]) -> String {
        sim::hmac_hex(ring::hmac::HMAC_SHA512, &self.shared.client_secret, body)
    }

    /// The webhook body of filled async order `request_id`, byte for byte as it was sent.
    pub fn async_order_body(&self, request_id: &str) -> Vec<u8> {
        let data = lock(&self.shared.state)
            .orders
            .iter()
            .find(|o| o.request_id.as_deref() == Some(request_id))
            .map(|o| o.data.clone())
            .unwrap_or_else(|| panic!("the supplier filled no async order {request_id:?}"));
        async_body(request_id, data)
    }

    /// The low-data webhook body for sim `iccid` at `level` (`"75%"`, `"90%"`, `"1days"`,
    /// `"3days"`); `package_name` is the package id; `remaining_percentage` follows a
    /// percentage level, else the sim's usage.
    pub fn low_data_body(&self, iccid: &str, level: &str) -> Vec<u8> {
        let usage = lock(&self.shared.state)
            .usage
            .get(iccid)
            .cloned()
            .unwrap_or_else(|| panic!("the supplier sold no sim {iccid:?}"));
        let remaining_percentage = match level.strip_suffix('%').and_then(|p| p.parse::<u64>().ok())
        {
            Some(used) => 100u64.saturating_sub(used),
            None if usage.total_mb == 0 => 0,
            None => usage.remaining_mb.saturating_mul(100) / usage.total_mb,
        };
        let body = json!({
            "level": level,
            "package_name": usage.package_id,
            "remaining_percentage": remaining_percentage,
            "iccid": iccid,
        });
        serde_json::to_vec(&body).expect("serialising JSON")
    }

    /// Post a signed low-data webhook for sim `iccid` at `level` to the webhook URL;
    /// returns the status the receiver answered.
    pub fn low_data(&self, iccid: &str, level: &str) -> u16 {
        let body = self.low_data_body(iccid, level);
        let signature = self.sign(&body);
        self.post_webhook(&body, Some(&signature))
    }

    /// POST `body` to the webhook URL as the supplier would, with `airalo-signature:
    /// signature` when given; returns the status the receiver answered. Panics when no URL
    /// is set or it cannot be reached.
    pub fn post_webhook(&self, body: &[u8], signature: Option<&str>) -> u16 {
        let headers: Vec<(&str, &str)> = signature
            .map(|s| vec![("airalo-signature", s)])
            .unwrap_or_default();
        self.shared.core.post_to_webhook_url(&headers, body)
    }
}

fn async_body(request_id: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"request_id": request_id, "data": data})).expect("serialising JSON")
}

fn answer(status: u16, data: Value, message: &str) -> Reply {
    Reply::json(status, &json!({"data": data, "meta": {"message": message}}))
}

/// A failure with empty `data`, as Airalo answers auth and server errors.
fn failure(status: u16, message: &str) -> Reply {
    answer(status, json!([]), message)
}

/// A `422` naming each invalid field.
fn invalid(errors: Map<String, Value>) -> Reply {
    answer(422, Value::Object(errors), "the parameter is invalid")
}

fn fault_reply(fault: &Fault) -> Option<Reply> {
    Some(match fault {
        Fault::RateLimited { retry_after_secs } => {
            failure(429, "Too Many Attempts.").header("retry-after", &retry_after_secs.to_string())
        }
        Fault::ServerError => failure(500, "Server Error"),
        Fault::Unavailable => sim::unavailable(),
        Fault::BadRequest => failure(400, "Bad request"),
        Fault::OutOfStock => Reply::json(
            422,
            &json!({
                "data": {"package_id": "The selected package is out of stock."},
                "meta": {"message": "insufficient stock", "code": AiraloSim::OUT_OF_STOCK_CODE},
            }),
        ),
        Fault::Slow(_) => return None,
    })
}

/// An operator in the package listing (named by its first package), with its packages.
type OperatorListing<'a> = (&'a AiraloPackage, Vec<Value>);
/// A country in the package listing (named by its first package), with its operators.
type CountryListing<'a> = (&'a AiraloPackage, Vec<OperatorListing<'a>>);

/// The routes behind a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Packages,
    Order,
    OrderAsync,
    Usage(&'a str),
}

fn route<'a>(method: &str, path: &'a str) -> Option<Result<Route<'a>, ()>> {
    let route = match path {
        "/v2/packages" => Route::Packages,
        "/v2/orders" => Route::Order,
        "/v2/orders-async" => Route::OrderAsync,
        p => {
            let iccid = p.strip_prefix("/v2/sims/")?.strip_suffix("/usage")?;
            if iccid.is_empty() || iccid.contains('/') {
                return None;
            }
            Route::Usage(iccid)
        }
    };
    let allowed = match route {
        Route::Packages | Route::Usage(_) => "GET",
        Route::Order | Route::OrderAsync => "POST",
    };
    Some(if method == allowed {
        Ok(route)
    } else {
        Err(())
    })
}

impl http1::Handler for Server {
    fn handle(&self, request: &http1::Request, connection: u64) -> Reply {
        let shared = &self.0;
        shared.core.record(request, connection);
        let path = request.path();
        let method = request.method.to_ascii_uppercase();
        if method == "HEAD" {
            return answer(200, json!([]), "success");
        }
        if !path.starts_with("/v2/") {
            return if method == "GET" {
                answer(200, json!([]), "Airalo partner API simulator")
            } else {
                failure(404, "Not found")
            };
        }
        if path == "/v2/token" {
            return if method == "POST" {
                shared.token(request)
            } else {
                failure(405, "Method not allowed").header("allow", "POST")
            };
        }
        let route = match route(&method, path) {
            None => return failure(404, "Not found"),
            Some(Err(())) => return failure(405, "Method not allowed"),
            Some(Ok(route)) => route,
        };
        if !shared.bearer_is_live(request) {
            return failure(401, "Unauthenticated.");
        }
        let accepts_json = request
            .headers
            .get("accept")
            .is_some_and(|a| a.to_ascii_lowercase().contains("application/json"));
        if !accepts_json {
            return failure(406, "Send Accept: application/json.");
        }
        let is_order = matches!(route, Route::Order | Route::OrderAsync);
        if let Some(fault) = shared.core.take_fault(is_order) {
            if let Fault::Slow(delay) = fault {
                std::thread::sleep(delay);
            }
            if let Some(reply) = fault_reply(&fault) {
                return reply;
            }
        }
        match route {
            Route::Packages => shared.packages(request),
            Route::Order => shared.order(request),
            Route::OrderAsync => order_async(shared, request),
            Route::Usage(iccid) => shared.usage(iccid),
        }
    }

    fn unreadable(&self, status: u16, message: &str) -> Reply {
        failure(status, message)
    }

    fn accepted(&self) -> u64 {
        self.0.core.accepted()
    }
}

impl Shared {
    fn token(&self, request: &http1::Request) -> Reply {
        let mut state = lock(&self.state);
        state.token_requests += 1;
        let Some(fields) = form_fields(request) else {
            return failure(422, "the body could not be parsed");
        };
        let mut errors = Map::new();
        for field in ["client_id", "client_secret", "grant_type"] {
            if fields.get(field).is_none_or(String::is_empty) {
                errors.insert(
                    field.into(),
                    format!("The {} field is required.", field.replace('_', " ")).into(),
                );
            }
        }
        if !errors.is_empty() {
            return invalid(errors);
        }
        if fields.get("grant_type").map(String::as_str) != Some("client_credentials") {
            errors.insert(
                "grant_type".into(),
                "The selected grant type is invalid.".into(),
            );
            return invalid(errors);
        }
        let matches = fields.get("client_id") == Some(&self.client_id)
            && fields.get("client_secret") == Some(&self.client_secret);
        if !matches {
            return failure(401, "The client credentials are invalid.");
        }
        let token = sim::random_hex(32);
        let lifetime = state.token_lifetime_secs;
        // A lifetime too long to add to a clock reading is as good as forever.
        let expires = Instant::now()
            .checked_add(Duration::from_secs(lifetime))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(DEFAULT_TOKEN_LIFETIME_SECS));
        let now = Instant::now();
        state.tokens.retain(|_, expires| *expires > now);
        state.tokens.insert(token.clone(), expires);
        answer(
            200,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime}),
            "success",
        )
    }

    fn bearer_is_live(&self, request: &http1::Request) -> bool {
        let Some(token) = request.headers.get("authorization").and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }) else {
            return false;
        };
        lock(&self.state)
            .tokens
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }

    fn packages(&self, request: &http1::Request) -> Reply {
        let query: HashMap<String, String> = sim::urlencoded(request.query().as_bytes())
            .into_iter()
            .collect();
        let param = |name: &str| {
            query
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let kind = param("filter[type]");
        let country = param("filter[country]");
        let state = lock(&self.state);
        // Countries in catalogue order, each with its operators in catalogue order.
        let mut countries: Vec<CountryListing> = Vec::new();
        let listed = state
            .packages
            .iter()
            .filter(|_| kind.is_none_or(|k| k == "local"))
            .filter(|p| country.is_none_or(|c| p.country_code.eq_ignore_ascii_case(c)));
        for package in listed {
            let index = match countries
                .iter()
                .position(|(c, _)| c.country_slug == package.country_slug)
            {
                Some(i) => i,
                None => {
                    countries.push((package, Vec::new()));
                    countries.len() - 1
                }
            };
            let operators = &mut countries[index].1;
            match operators
                .iter_mut()
                .find(|(o, _)| o.operator_id == package.operator_id)
            {
                Some((_, packages)) => packages.push(package.json()),
                None => operators.push((package, vec![package.json()])),
            }
        }
        let total = countries.len();
        let per_page = param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l >= 1)
            .unwrap_or(total.max(1));
        let last_page = total.div_ceil(per_page).max(1);
        let page = param("page")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1);
        let from = (page - 1).saturating_mul(per_page);
        let data: Vec<Value> = countries
            .iter()
            .skip(from)
            .take(per_page)
            .map(|(c, operators)| {
                let operators: Vec<Value> = operators
                    .iter()
                    .map(|(o, packages)| {
                        json!({
                            "id": o.operator_id,
                            "title": o.operator_title,
                            "type": "local",
                            "esim_type": "Prepaid",
                            "apn_type": "automatic",
                            "is_prepaid": true,
                            "is_roaming": true,
                            "rechargeability": true,
                            "countries": [{"country_code": c.country_code, "title": c.country_title}],
                            "packages": packages,
                        })
                    })
                    .collect();
                json!({
                    "slug": c.country_slug,
                    "country_code": c.country_code,
                    "title": c.country_title,
                    "operators": operators,
                })
            })
            .collect();
        let path = format!("{}/v2/packages", self.core.base());
        let page_url = |p: usize| Value::from(format!("{path}?page={p}"));
        let shown = data.len();
        Reply::json(
            200,
            &json!({
                "data": data,
                "links": {
                    "first": page_url(1),
                    "last": page_url(last_page),
                    "prev": if page > 1 { page_url(page - 1) } else { Value::Null },
                    "next": if page < last_page { page_url(page + 1) } else { Value::Null },
                },
                "meta": {
                    "message": "success",
                    "current_page": page,
                    "from": if shown == 0 { Value::Null } else { Value::from(from + 1) },
                    "last_page": last_page,
                    "path": path,
                    "per_page": per_page,
                    "to": if shown == 0 { Value::Null } else { Value::from(from + shown) },
                    "total": total,
                },
            }),
        )
    }

    /// The order a request's fields describe, or the `422` that says what is wrong.
    fn order_request(&self, fields: &BTreeMap<String, String>) -> Result<OrderRequest, Reply> {
        let mut errors = Map::new();
        let quantity = match fields.get("quantity") {
            None => {
                errors.insert("quantity".into(), "The quantity field is required.".into());
                None
            }
            Some(q) => {
                let q = q.trim().parse::<u64>().ok();
                let q = q.filter(|q| (1..=MAX_QUANTITY).contains(q));
                if q.is_none() {
                    errors.insert(
                        "quantity".into(),
                        format!("The quantity must be between 1 and {MAX_QUANTITY}.").into(),
                    );
                }
                q
            }
        };
        let package = match fields.get("package_id").filter(|p| !p.is_empty()) {
            None => {
                errors.insert(
                    "package_id".into(),
                    "The package id field is required.".into(),
                );
                None
            }
            Some(id) => {
                let package = lock(&self.state)
                    .packages
                    .iter()
                    .find(|p| &p.id == id)
                    .cloned();
                if package.is_none() {
                    errors.insert(
                        "package_id".into(),
                        "The selected package is invalid.".into(),
                    );
                }
                package
            }
        };
        if fields.get("type").is_some_and(|t| t != "sim") {
            errors.insert("type".into(), "The selected type is invalid.".into());
        }
        match (quantity, package) {
            (Some(quantity), Some(package)) if errors.is_empty() => Ok(OrderRequest {
                package,
                quantity: quantity as u32,
                description: fields.get("description").cloned().unwrap_or_default(),
            }),
            _ => Err(invalid(errors)),
        }
    }

    fn order(&self, request: &http1::Request) -> Reply {
        let Some(fields) = form_fields(request) else {
            return failure(422, "the body could not be parsed");
        };
        match self.order_request(&fields) {
            Ok(order) => answer(200, self.fill(&order, None), "success"),
            Err(reply) => reply,
        }
    }

    /// Fill an order: make its sims and record it; returns its `data`.
    fn fill(&self, order: &OrderRequest, request_id: Option<&str>) -> Value {
        let mut state = lock(&self.state);
        let now = time::OffsetDateTime::now_utc();
        let created_at = sim::sql_datetime(now);
        let expired_at =
            sim::sql_datetime(now + time::Duration::days(i64::from(order.package.days)));
        let mut sims = Vec::new();
        let mut iccids = Vec::new();
        for _ in 0..order.quantity {
            state.next_sim += 1;
            let n = state.next_sim;
            let iccid = sim::iccid(ICCID_PREFIX, n);
            let matching_id = sim::random_hex(12).to_uppercase();
            sims.push(json!({
                "id": n,
                "created_at": created_at,
                "iccid": iccid,
                "lpa": SMDP_ADDRESS,
                "imsis": null,
                "matching_id": matching_id,
                "qrcode": format!("LPA:1${SMDP_ADDRESS}${matching_id}"),
                "qrcode_url": format!("{}/qr/{iccid}.png", self.core.base()),
                "airalo_code": null,
                "apn_type": "automatic",
                "apn_value": null,
                "is_roaming": true,
                "confirmation_code": null,
            }));
            state.usage.insert(
                iccid.clone(),
                Usage {
                    package_id: order.package.id.clone(),
                    status: "NOT_ACTIVE".into(),
                    total_mb: order.package.amount_mb,
                    remaining_mb: order.package.amount_mb,
                    expired_at: expired_at.clone(),
                },
            );
            iccids.push(iccid);
        }
        state.next_order += 1;
        let id = state.next_order;
        let code = format!(
            "{:04}{:02}{:02}-{:06}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            id
        );
        let cents = |usd: f64| (usd * f64::from(order.quantity) * 100.0).round() / 100.0;
        let data = json!({
            "id": id,
            "code": code,
            "currency": "USD",
            "package_id": order.package.id,
            "quantity": order.quantity,
            "type": "sim",
            "description": order.description,
            "esim_type": "Prepaid",
            "validity": order.package.days,
            "package": format!("{} - {}", order.package.operator_title, order.package.title),
            "data": order.package.data,
            "price": cents(order.package.price),
            "net_price": cents(order.package.net_price),
            "created_at": created_at,
            "sims": sims,
        });
        state.orders.push(AiraloOrder {
            id,
            code,
            package_id: order.package.id.clone(),
            quantity: order.quantity,
            description: order.description.clone(),
            iccids,
            request_id: request_id.map(str::to_string),
            data: data.clone(),
        });
        data
    }

    fn usage(&self, iccid: &str) -> Reply {
        let state = lock(&self.state);
        let Some(usage) = state.usage.get(iccid) else {
            return failure(404, "Not found");
        };
        answer(
            200,
            json!({
                "remaining": usage.remaining_mb,
                "total": usage.total_mb,
                "expired_at": usage.expired_at,
                "is_unlimited": false,
                "status": usage.status,
                "remaining_voice": 0,
                "remaining_text": 0,
                "total_voice": 0,
                "total_text": 0,
            }),
            "success",
        )
    }
}

/// Accept an async order (`202`) and schedule filling it.
fn order_async(shared: &Arc<Shared>, request: &http1::Request) -> Reply {
    let Some(fields) = form_fields(request) else {
        return failure(422, "the body could not be parsed");
    };
    let order = match shared.order_request(&fields) {
        Ok(order) => order,
        Err(reply) => return reply,
    };
    let request_id = sim::random_hex(16);
    let accepted = answer(
        202,
        json!({
            "request_id": request_id,
            "accepted_at": sim::sql_datetime(time::OffsetDateTime::now_utc()),
        }),
        "success",
    );
    let mut state = lock(&shared.state);
    state.pending.push(Pending {
        request_id: request_id.clone(),
        order,
        webhook_url: fields.get("webhook_url").filter(|u| !u.is_empty()).cloned(),
    });
    if state.async_manual {
        return accepted;
    }
    let delay = state.async_delay;
    let shared = shared.clone();
    accepted.then(move || {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            complete_async(&shared, &request_id);
        });
    })
}

fn complete_async(shared: &Shared, request_id: &str) -> Option<u16> {
    let pending = {
        let mut state = lock(&shared.state);
        let index = state
            .pending
            .iter()
            .position(|p| p.request_id == request_id)?;
        state.pending.remove(index)
    };
    let data = shared.fill(&pending.order, Some(request_id));
    let url = pending.webhook_url.or_else(|| shared.core.webhook_url())?;
    let body = async_body(request_id, data);
    let signature = sim::hmac_hex(ring::hmac::HMAC_SHA512, &shared.client_secret, &body);
    shared
        .core
        .deliver(&url, &[("airalo-signature", &signature)], &body)
        .status
}

/// The fields of a form body: `multipart/form-data`, `application/x-www-form-urlencoded`
/// or a flat JSON object (numbers and booleans as their text); `None` when it cannot be
/// read as any of them. An empty body has no fields.
fn form_fields(request: &http1::Request) -> Option<BTreeMap<String, String>> {
    let body = &request.body;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(BTreeMap::new());
    }
    let content_type = request
        .headers
        .get("content-type")
        .map(|c| c.to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.starts_with("multipart/form-data") {
        let boundary = request
            .headers
            .get("content-type")?
            .split(';')
            .find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                k.eq_ignore_ascii_case("boundary")
                    .then(|| v.trim().trim_matches('"'))
            })?;
        return multipart(body, boundary).map(|parts| parts.into_iter().collect());
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Some(sim::urlencoded(body).into_iter().collect());
    }
    let Value::Object(object) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    object
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k, v))
        })
        .collect()
}

/// The named parts of a `multipart/form-data` body (RFC 7578) with this boundary, their
/// contents as (lossy) UTF-8; `None` when it is malformed.
fn multipart(body: &[u8], boundary: &str) -> Option<Vec<(String, String)>> {
    if boundary.is_empty() || boundary.len() > 70 {
        return None;
    }
    let delimiter = format!("--{boundary}");
    let between = format!("\r\n--{boundary}");
    let start = find(body, delimiter.as_bytes())?;
    let mut rest = &body[start + delimiter.len()..];
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        // Transport padding after a delimiter is allowed before its line break.
        let line_end = find(rest, b"\r\n")?;
        if !rest[..line_end].iter().all(|b| *b == b' ' || *b == b'\t') {
            return None;
        }
        rest = &rest[line_end + 2..];
        let end = find(rest, between.as_bytes())?;
        let part = &rest[..end];
        rest = &rest[end + between.len()..];
        let (head, content) = match find(part, b"\r\n\r\n") {
            Some(i) => (&part[..i], &part[i + 4..]),
            None => (part.strip_suffix(b"\r\n").unwrap_or(part), &b""[..]),
        };
        let head = String::from_utf8_lossy(head);
        let name = head.split("\r\n").find_map(|line| {
            let (header, value) = line.split_once(':')?;
            if !header.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            value.split(';').find_map(|param| {
                let (k, v) = param.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("name")
                    .then(|| v.trim().trim_matches('"').to_string())
            })
        })?;
        parts.push((name, String::from_utf8_lossy(content).into_owned()));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Receiver;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const ID: &str = "test-client-id-5af";
    const SECRET: &str = "test-client-secret-c19";

    fn agent() -> ureq::Agent {
        crate::sim::agent(Duration::from_secs(10))
    }

    fn read(mut response: ureq::http::Response<ureq::Body>) -> (u16, Option<String>, Value) {
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

    fn multipart_body(boundary: &str, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut body = String::new();
        for (name, value) in fields {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str(&format!("--{boundary}--\r\n"));
        body.into_bytes()
    }

    fn token_with(sim: &AiraloSim, id: &str, secret: &str) -> (u16, Value) {
        let body = multipart_body(
            "XyZ123",
            &[
                ("client_id", id),
                ("client_secret", secret),
                ("grant_type", "client_credentials"),
            ],
        );
        let response = agent()
            .post(format!("{}/v2/token", sim.base()))
            .header("content-type", "multipart/form-data; boundary=XyZ123")
            .header("accept", "application/json")
            .send(&body[..])
            .unwrap();
        let (status, _, json) = read(response);
        (status, json)
    }

    fn token(sim: &AiraloSim) -> String {
        let (status, json) = token_with(sim, ID, SECRET);
        assert_eq!(status, 200, "{json}");
        json["data"]["access_token"].as_str().unwrap().to_string()
    }

    fn get(sim: &AiraloSim, token: Option<&str>, path: &str) -> (u16, Option<String>, Value) {
        let mut request = agent()
            .get(format!("{}{path}", sim.base()))
            .header("accept", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        read(request.call().unwrap())
    }

    fn post_form(sim: &AiraloSim, token: &str, path: &str, form: &str) -> (u16, Value) {
        let response = agent()
            .post(format!("{}{path}", sim.base()))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .send(form)
            .unwrap();
        let (status, _, json) = read(response);
        (status, json)
    }

    #[test]
    fn the_token_is_required_and_expires() {
        let sim = AiraloSim::start(ID, SECRET);
        assert_eq!(get(&sim, None, "/v2/packages").0, 401);
        assert_eq!(get(&sim, Some("made-up"), "/v2/packages").0, 401);
        let (status, json) = token_with(&sim, ID, "wrong");
        assert_eq!(status, 401);
        assert_eq!(json["data"], json!([]));
        assert!(json["meta"]["message"].is_string());

        let (status, json) = token_with(&sim, ID, SECRET);
        assert_eq!(status, 200);
        assert_eq!(json["data"]["token_type"], "Bearer");
        assert_eq!(json["data"]["expires_in"], DEFAULT_TOKEN_LIFETIME_SECS);
        assert_eq!(json["meta"]["message"], "success");
        let live = json["data"]["access_token"].as_str().unwrap().to_string();
        let (status, _, packages) = get(&sim, Some(&live), "/v2/packages?filter%5Btype%5D=local");
        assert_eq!(status, 200, "{packages}");
        let countries = packages["data"].as_array().unwrap();
        assert_eq!(countries.len(), 3);
        assert_eq!(countries[0]["country_code"], "JP");
        let japan = &countries[0]["operators"][0]["packages"];
        assert_eq!(japan[0]["id"], "moshi-moshi-7days-1gb");
        assert_eq!(
            (japan[0]["price"].as_f64(), japan[0]["amount"].as_u64()),
            (Some(4.5), Some(1024))
        );
        let paged = get(&sim, Some(&live), "/v2/packages?limit=2&page=2&x=y").2;
        assert_eq!(paged["data"].as_array().unwrap().len(), 1);
        assert_eq!(paged["meta"]["last_page"], 2);
        assert_eq!(
            get(&sim, Some(&live), "/v2/packages?filter%5Btype%5D=global").2["data"],
            json!([])
        );

        // No Accept: application/json.
        let no_accept = agent()
            .get(format!("{}/v2/packages", sim.base()))
            .header("authorization", format!("Bearer {live}"))
            .call()
            .unwrap();
        assert_eq!(no_accept.status().as_u16(), 406);

        sim.expire_tokens();
        assert_eq!(get(&sim, Some(&live), "/v2/packages").0, 401);

        sim.set_token_lifetime(1);
        let (_, short) = {
            let form =
                format!("client_id={ID}&client_secret={SECRET}&grant_type=client_credentials");
            let response = agent()
                .post(format!("{}/v2/token", sim.base()))
                .header("content-type", "application/x-www-form-urlencoded")
                .send(form.as_str())
                .unwrap();
            let (status, _, json) = read(response);
            (status, json)
        };
        assert_eq!(short["data"]["expires_in"], 1);
        let short = short["data"]["access_token"].as_str().unwrap().to_string();
        assert_eq!(get(&sim, Some(&short), "/v2/packages").0, 200);
        std::thread::sleep(Duration::from_millis(1050));
        assert_eq!(get(&sim, Some(&short), "/v2/packages").0, 401);
        assert_eq!(sim.token_requests(), 3);
    }

    #[test]
    fn a_sync_order_answers_its_sims_and_refuses_unknown_packages() {
        let sim = AiraloSim::start(ID, SECRET);
        let token = token(&sim);
        let (status, json) = post_form(
            &sim,
            &token,
            "/v2/orders",
            "quantity=2&package_id=moshi-moshi-7days-1gb&type=sim&description=order+1",
        );
        assert_eq!(status, 200, "{json}");
        let data = &json["data"];
        assert_eq!(data["quantity"], 2);
        assert_eq!(data["price"], 9.0);
        assert_eq!(data["description"], "order 1");
        assert!(data["code"].as_str().unwrap().ends_with("-000001"));
        let sims = data["sims"].as_array().unwrap();
        assert_eq!(sims.len(), 2);
        let iccid = sims[0]["iccid"].as_str().unwrap();
        assert!(crate::luhn(iccid) && iccid.len() == 20);
        assert_eq!(sims[0]["lpa"], "smdp.sim.test");
        assert_eq!(
            sims[0]["qrcode"],
            format!(
                "LPA:1$smdp.sim.test${}",
                sims[0]["matching_id"].as_str().unwrap()
            )
        );
        assert_eq!(sim.orders()[0].iccids[0], iccid);

        let (status, _, usage) = get(&sim, Some(&token), &format!("/v2/sims/{iccid}/usage"));
        assert_eq!(status, 200);
        assert_eq!(
            (
                usage["data"]["total"].as_u64(),
                usage["data"]["status"].as_str()
            ),
            (Some(1024), Some("NOT_ACTIVE"))
        );
        sim.set_usage(iccid, 100, "ACTIVE");
        let (_, _, usage) = get(&sim, Some(&token), &format!("/v2/sims/{iccid}/usage"));
        assert_eq!(usage["data"]["remaining"], 100);
        assert_eq!(
            get(&sim, Some(&token), "/v2/sims/8900000000000000000/usage").0,
            404
        );

        let (status, json) = post_form(&sim, &token, "/v2/orders", "quantity=1&package_id=nope");
        assert_eq!(status, 422);
        assert_eq!(
            json,
            json!({"data": {"package_id": "The selected package is invalid."},
                   "meta": {"message": "the parameter is invalid"}})
        );
        let (status, json) = post_form(&sim, &token, "/v2/orders", "quantity=51&type=esim");
        assert_eq!(status, 422);
        assert_eq!(json["data"].as_object().unwrap().len(), 3, "{json}");

        sim.fail_next(1, Fault::OutOfStock);
        let body = json!({"quantity": 1, "package_id": "change-15days-2gb"}).to_string();
        let response = agent()
            .post(format!("{}/v2/orders", sim.base()))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .send(body.as_str())
            .unwrap();
        let (status, _, json) = read(response);
        assert_eq!(status, 422);
        assert_eq!(json["meta"]["code"], AiraloSim::OUT_OF_STOCK_CODE);
        assert!(
            json["meta"]["message"]
                .as_str()
                .unwrap()
                .contains("insufficient stock")
        );
        assert_eq!(sim.orders().len(), 1);
    }

    #[test]
    fn an_async_order_arrives_by_signed_webhook() {
        let sim = AiraloSim::start(ID, SECRET);
        let receiver = Receiver::start();
        let token = token(&sim);
        let (status, json) = post_form(
            &sim,
            &token,
            "/v2/orders-async",
            &format!(
                "quantity=1&package_id=bonjour-talk-7days-1gb&type=sim&webhook_url={}",
                receiver.url("/v1/inbound/airalo")
            ),
        );
        assert_eq!(status, 202, "{json}");
        let request_id = json["data"]["request_id"].as_str().unwrap().to_string();
        assert!(json["data"]["accepted_at"].is_string());

        let got = receiver.wait_for(1, Duration::from_secs(5));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, SECRET.as_bytes());
        let signature = hex::decode(got[0].header("airalo-signature")).unwrap();
        assert!(ring::hmac::verify(&key, &got[0].body, &signature).is_ok());
        let body = got[0].json();
        assert_eq!(body["request_id"], request_id.as_str());
        assert_eq!(body["data"]["package_id"], "bonjour-talk-7days-1gb");
        assert_eq!(body["data"]["sims"].as_array().unwrap().len(), 1);
        assert_eq!(sim.async_order_body(&request_id), got[0].body);
        assert_eq!(
            sim.orders()[0].request_id.as_deref(),
            Some(request_id.as_str())
        );

        // Held until completed by hand; then to the URL the test set.
        sim.set_async_manual(true);
        sim.set_webhook_url(&receiver.url("/default"));
        receiver.answer(500);
        let (status, json) = post_form(
            &sim,
            &token,
            "/v2/orders-async",
            "quantity=1&package_id=change-15days-2gb",
        );
        assert_eq!(status, 202);
        let second = json["data"]["request_id"].as_str().unwrap().to_string();
        assert_eq!(sim.pending_async(), vec![second.clone()]);
        assert_eq!(sim.complete_async(&second), Some(500));
        assert_eq!(sim.complete_async(&second), None, "filled once");
        let deliveries = sim.webhooks();
        assert_eq!(deliveries.len(), 2);
        assert!(deliveries[1].url.ends_with("/default"));
        assert_eq!(
            deliveries[1].header("airalo-signature"),
            sim.sign(&deliveries[1].body)
        );

        // Low data, signed the same way.
        receiver.answer(200);
        let iccid = sim.orders()[1].iccids[0].clone();
        assert_eq!(sim.low_data(&iccid, "75%"), 200);
        let got = receiver.wait_for(3, Duration::from_secs(5));
        let low = got[2].json();
        assert_eq!(low["remaining_percentage"], 25);
        assert_eq!(low["iccid"], iccid.as_str());
        assert_eq!(got[2].header("airalo-signature"), sim.sign(&got[2].body));
    }

    #[test]
    fn a_fault_answers_429_with_retry_after_but_spares_the_token() {
        let sim = AiraloSim::start(ID, SECRET);
        sim.fail_next(
            1,
            Fault::RateLimited {
                retry_after_secs: 3,
            },
        );
        let token = token(&sim);
        let (status, retry_after, json) = get(&sim, Some(&token), "/v2/packages");
        assert_eq!((status, retry_after.as_deref()), (429, Some("3")));
        assert_eq!(json["meta"]["message"], "Too Many Attempts.");
        sim.fail_next(1, Fault::ServerError);
        assert_eq!(get(&sim, Some(&token), "/v2/packages").0, 500);
        assert_eq!(get(&sim, Some(&token), "/v2/packages").0, 200);
    }

    #[test]
    fn a_kept_alive_connection_serves_several_requests_and_counts_once() {
        let sim = AiraloSim::start(ID, SECRET);
        let token = token(&sim);
        let before = sim.connections();
        let mut stream = TcpStream::connect(("127.0.0.1", sim.port())).unwrap();
        let request = format!(
            "GET /v2/packages HTTP/1.1\r\nhost: x\r\naccept: application/json\r\n\
             authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        // Read the first answer before sending the second: real reuse, not pipelining.
        let mut first = vec![0; 64 * 1024];
        let n = stream.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200 OK"));
        let request = request.replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("HTTP/1.1 200 OK"), "{rest}");
        assert!(rest.contains("connection: close"));
        assert_eq!(sim.connections(), before + 1);
        let packages = sim.requests_to("/v2/packages");
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[0].connection, packages[1].connection);
    }

    #[test]
    fn probes_and_junk_are_answered_harmlessly() {
        let sim = AiraloSim::start(ID, SECRET);
        let head = agent()
            .head(format!("{}/v2/orders", sim.base()))
            .call()
            .unwrap();
        assert_eq!(head.status().as_u16(), 200);
        assert_eq!(get(&sim, None, "/").0, 200);
        assert_eq!(get(&sim, None, "/v2/nothing").0, 404);
        let token = token(&sim);
        for junk in ["quantity=1&package_id", "%%%", "=&=&"] {
            assert_eq!(post_form(&sim, &token, "/v2/orders", junk).0, 422);
        }
        for body in [&b"--b\r\nno-end"[..], b"garbage", b"--b--\r\n"] {
            let response = agent()
                .post(format!("{}/v2/token", sim.base()))
                .header("content-type", "multipart/form-data; boundary=b")
                .send(body)
                .unwrap();
            assert_eq!(read(response).0, 422);
        }
        let mut s = TcpStream::connect(("127.0.0.1", sim.port())).unwrap();
        let _ = s.write_all(b"POST /v2/token HTTP/1.1\r\ncontent-length: 100000\r\n\r\n");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert_eq!(get(&sim, Some(&token), "/v2/packages").0, 200);
    }

    #[test]
    fn multipart_bodies_are_read_by_their_boundary() {
        let body = b"preamble\r\n--a'b\r\nContent-Disposition: form-data; name=\"x\"\r\n\
                     Content-Type: text/plain\r\n\r\nline1\r\nline2\r\n--a'b  \r\n\
                     content-disposition: form-data; name=y\r\n\r\n\r\n--a'b--";
        assert_eq!(
            multipart(body, "a'b"),
            Some(vec![
                ("x".into(), "line1\r\nline2".into()),
                ("y".into(), "".into())
            ])
        );
        assert_eq!(multipart(b"--a\r\nno head", "a"), None);
        assert_eq!(
            multipart(b"--a\r\n\r\nbody\r\n--a--", "a"),
            None,
            "a part needs a name"
        );
        assert_eq!(multipart(b"", ""), None);
    }
}
