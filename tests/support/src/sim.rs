//! What the supplier simulators ([`crate::EsimAccessSim`], [`crate::AiraloSim`]) share:
//! the faults a test injects, the record of every request they got, the webhooks they
//! posted, and the small helpers (random ids, times, ICCIDs, form decoding) both need.
//!
//! A simulator's [`Core`] is what its connection threads and the test's thread both touch;
//! everything in it sits behind a mutex or an atomic, and a poisoned mutex is simply used
//! again (a panicking test thread must not hide the record from the next assertion).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use crate::http1;

/// The largest request body a simulator reads (larger ones get `413`).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How long a simulator waits for a webhook receiver to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The SM-DP+ address in every activation code the simulators hand out.
pub const SMDP_ADDRESS: &str = "smdp.sim.test";

/// A failure a simulator answers instead of serving an API call (see each simulator's
/// module docs for the exact bodies). Token calls are never faulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP `429` with `Retry-After: retry_after_secs`.
    RateLimited {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// HTTP `500` with the supplier's error body.
    ServerError,
    /// HTTP `503` with a load balancer's HTML page (no JSON at all).
    Unavailable,
    /// Sleep this long, then answer normally.
    Slow(Duration),
    /// The supplier's own out-of-stock error. Only order calls take it: while it is first in
    /// line, other calls are served normally and leave it queued.
    OutOfStock,
    /// HTTP `400` with the supplier's error body.
    BadRequest,
}

/// One request a simulator got, in full.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent (absolute-form included).
    pub target: String,
    /// The path, without the query or any scheme and authority.
    pub path: String,
    /// The raw query string (`""` when none).
    pub query: String,
    /// Header names lowercased, with their values (the last of repeated headers).
    pub headers: BTreeMap<String, String>,
    /// Every header in arrival order, names lowercased, repeated ones included.
    pub header_list: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The number of the accepted connection it came on (1 for the first).
    pub connection: u64,
}

impl Recorded {
    pub(crate) fn new(request: &http1::Request, connection: u64) -> Recorded {
        Recorded {
            method: request.method.clone(),
            target: request.target.clone(),
            path: request.path().to_string(),
            query: request.query().to_string(),
            headers: request.headers.clone(),
            header_list: request.header_list.clone(),
            body: request.body.clone(),
            connection,
        }
    }

    /// A header's value (`""` when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A query parameter's decoded value (the first, when repeated).
    pub fn query_param(&self, name: &str) -> Option<String> {
        urlencoded(self.query.as_bytes())
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// One webhook a simulator posted, and what the receiver answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Where it was posted.
    pub url: String,
    /// The headers sent besides ureq's own.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes sent.
    pub body: Vec<u8>,
    /// The status the receiver answered; `None` when it could not be reached.
    pub status: Option<u16>,
    /// Why it could not be reached.
    pub error: Option<String>,
}

impl Delivery {
    /// A header sent (`""` when none).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The state every simulator has: its port, its connections, injected faults, recorded
/// requests, the webhook URL and the webhooks posted.
pub struct SimCore {
    port: u16,
    connections: AtomicU64,
    faults: Mutex<VecDeque<Fault>>,
    requests: Mutex<Vec<Recorded>>,
    webhook_url: Mutex<Option<String>>,
    deliveries: Mutex<Vec<Delivery>>,
    agent: ureq::Agent,
}

impl SimCore {
    pub(crate) fn new(port: u16) -> SimCore {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(WEBHOOK_TIMEOUT))
            .build()
            .into();
        SimCore {
            port,
            connections: AtomicU64::new(0),
            faults: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            webhook_url: Mutex::new(None),
            deliveries: Mutex::new(Vec::new()),
            agent,
        }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the base URL to configure as the supplier's.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Count an accepted connection; returns its number.
    pub(crate) fn accepted(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Record `request`.
    pub(crate) fn record(&self, request: &http1::Request, connection: u64) {
        lock(&self.requests).push(Recorded::new(request, connection));
    }

    /// Every request it got, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.requests).clone()
    }

    /// The requests to `path` (e.g. `/api/v1/open/esim/order`), oldest first.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        let mut requests = self.requests();
        requests.retain(|r| r.path == path);
        requests
    }

    /// Answer the next `n` API calls with `fault` (see [`Fault`]; `OutOfStock` waits for
    /// an order call). Faults hit authenticated calls only, never token calls.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut faults = lock(&self.faults);
        faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Take the first queued fault if it applies to this call (`OutOfStock` only to
    /// order calls).
    pub(crate) fn take_fault(&self, is_order: bool) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        match faults.front() {
            Some(Fault::OutOfStock) if !is_order => None,
            Some(_) => faults.pop_front(),
            None => None,
        }
    }

    /// Where webhooks go (the gateway's inbound URL for this supplier) unless a request
    /// named another URL.
    pub fn set_webhook_url(&self, url: &str) {
        *lock(&self.webhook_url) = Some(url.to_string());
    }

    /// The webhook URL the test set.
    pub(crate) fn webhook_url(&self) -> Option<String> {
        lock(&self.webhook_url).clone()
    }

    /// Every webhook posted, with what the receiver answered, oldest first.
    pub fn webhooks(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    /// POST `body` as JSON with `headers` to `url`, record the delivery and return it.
    pub(crate) fn deliver(&self, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Delivery {
        let mut request = self
            .agent
            .post(url)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (status, error) = match request.send(body) {
            Ok(mut response) => {
                let _ = response.body_mut().read_to_vec();
                (Some(response.status().as_u16()), None)
            }
            Err(e) => (None, Some(e.to_string())),
        };
        let delivery = Delivery {
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            status,
            error,
        };
        lock(&self.deliveries).push(delivery.clone());
        delivery
    }

    /// POST `body` to the webhook URL the test set; the status the receiver answered.
    /// Panics when no URL is set or the receiver cannot be reached (test helpers only).
    pub(crate) fn post_to_webhook_url(&self, headers: &[(&str, &str)], body: &[u8]) -> u16 {
        let url = self
            .webhook_url()
            .expect("set_webhook_url before posting webhooks");
        let delivery = self.deliver(&url, headers, body);
        delivery.status.unwrap_or_else(|| {
            panic!(
                "posting a webhook to {url}: {}",
                delivery.error.unwrap_or_default()
            )
        })
    }
}

/// What [`Fault::Unavailable`] answers: a load balancer's `503` page, no JSON.
pub(crate) fn unavailable() -> http1::Reply {
    http1::Reply {
        status: 503,
        headers: Vec::new(),
        content_type: Some("text/html".into()),
        body: b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>".to_vec(),
        then: None,
    }
}

/// Lock `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source");
    hex::encode(bytes)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `at` as RFC 3339.
pub(crate) fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("formatting a time")
}

/// Now, as RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `at` as `YYYY-MM-DD HH:MM:SS` (UTC), as Laravel-style APIs write times.
pub(crate) fn sql_datetime(at: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The 20-digit ICCID numbered `n` under `prefix` (10 digits): the prefix, `n` in 9 digits
/// and a Luhn check digit, so it passes the check real ICCIDs pass.
pub(crate) fn iccid(prefix: &str, n: u64) -> String {
    let payload = format!("{prefix}{:09}", n % 1_000_000_000);
    let sum: u32 = payload
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = c.to_digit(10).unwrap_or(0);
            match (i % 2 == 0, d * 2) {
                (true, doubled) if doubled > 9 => doubled - 9,
                (true, doubled) => doubled,
                (false, _) => d,
            }
        })
        .sum();
    format!("{payload}{}", (10 - sum % 10) % 10)
}

/// An HTTP client that takes any status as an answer (tests assert on it), within `timeout`.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Hex HMAC of `body` keyed with `key`.
pub(crate) fn hmac_hex(algorithm: ring::hmac::Algorithm, key: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(algorithm, key.as_bytes());
    hex::encode(ring::hmac::sign(&key, body).as_ref())
}

/// The pairs of an `application/x-www-form-urlencoded` string (a query string too),
/// decoded (`+` is a space, bad escapes are kept as written, bad UTF-8 replaced).
pub(crate) fn urlencoded(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut kv = pair.splitn(2, |&b| b == b'=');
            let k = kv.next().unwrap_or_default();
            let v = kv.next().unwrap_or_default();
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> String {
    let hex_value = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).copied().and_then(hex_value);
                let lo = input.get(i + 2).copied().and_then(hex_value);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iccids_are_twenty_digits_and_pass_luhn() {
        for n in [0, 1, 7, 42, 999_999_999] {
            let id = iccid("8948010000", n);
            assert_eq!(id.len(), 20, "{id}");
            assert!(crate::luhn(&id), "{id}");
        }
        assert_ne!(iccid("8948010000", 1), iccid("8948010000", 2));
    }

    #[test]
    fn form_decoding_survives_junk() {
        assert_eq!(
            urlencoded(b"filter%5Btype%5D=local&a=b+c&bad=%zz%4&&empty&x=%E2%82%AC"),
            vec![
                ("filter[type]".into(), "local".into()),
                ("a".into(), "b c".into()),
                ("bad".into(), "%zz%4".into()),
                ("empty".into(), "".into()),
                ("x".into(), "€".into()),
            ]
        );
    }

    #[test]
    fn out_of_stock_waits_for_an_order_call() {
        let core = SimCore::new(0);
        core.fail_next(1, Fault::OutOfStock);
        core.fail_next(1, Fault::ServerError);
        assert_eq!(core.take_fault(false), None);
        assert_eq!(core.take_fault(true), Some(Fault::OutOfStock));
        assert_eq!(core.take_fault(false), Some(Fault::ServerError));
        assert_eq!(core.take_fault(true), None);
    }
}
