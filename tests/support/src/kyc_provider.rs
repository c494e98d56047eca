//! An identity-verification provider for black-box tests, modelled on a hosted flow like
//! Veriff's: a real HTTP/1.1 server on a loopback port.
//!
//! - `POST /v1/sessions` (header `x-auth-client: <api key>`, body
//!   `{"verification": {"callback": "<return url>", "vendorData": "<reference>"}}`) opens a
//!   session and answers `201` with its id and the URL to send the end user to; every
//!   session is recorded with the raw request, so a test can assert what was (not) sent.
//! - `GET /v/<id>` is the page the end user would verify on.
//! - [`KycProvider::decide`] plays the provider's decision webhook: a Veriff-style body
//!   carrying the person's identity data (a canary the test picks, which the gateway must
//!   never store or log), posted to the callback URL the test set, signed with
//!   `x-hmac-signature` (hex HMAC-SHA256 of the raw body under the callback secret).
//!
//! The server never panics on bad input: a request it cannot read is answered with an
//! error status, or dropped.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http1;

/// The largest request body the provider reads.
const MAX_BODY: usize = 64 * 1024;

/// A decision the provider can post, with Veriff's code and status for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `9001 approved`.
    Approved,
    /// `9102 declined`.
    Declined,
    /// `9103 resubmission_requested`.
    ResubmissionRequested,
    /// `9104 expired`.
    Expired,
    /// `9104 abandoned` (the end user never finished).
    Abandoned,
}

impl Decision {
    /// Veriff's decision code.
    pub fn code(self) -> u16 {
        match self {
            Decision::Approved => 9001,
            Decision::Declined => 9102,
            Decision::ResubmissionRequested => 9103,
            Decision::Expired | Decision::Abandoned => 9104,
        }
    }

    /// Veriff's `verification.status`.
    pub fn status(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Declined => "declined",
            Decision::ResubmissionRequested => "resubmission_requested",
            Decision::Expired => "expired",
            Decision::Abandoned => "abandoned",
        }
    }

    fn reason(self) -> Option<&'static str> {
        match self {
            Decision::Approved => None,
            Decision::Declined => Some("Physical document not used"),
            Decision::ResubmissionRequested => Some("Video and/or photos missing"),
            Decision::Expired | Decision::Abandoned => None,
        }
    }
}

/// One verification session the provider opened.
#[derive(Debug, Clone)]
pub struct ProviderSession {
    /// The provider's session id (`verification.id`).
    pub id: String,
    /// `verification.vendorData` as sent: the gateway's session reference.
    pub vendor_data: String,
    /// `verification.callback` as sent: where the end user goes back to.
    pub return_url: String,
    /// The URL the provider answered to send the end user to.
    pub url: String,
    /// When it was opened (RFC 3339).
    pub created_at: String,
    /// The raw request body.
    pub body: Vec<u8>,
    /// The request's headers, names lowercased.
    pub headers: BTreeMap<String, String>,
}

impl ProviderSession {
    /// A request header's value (`""` when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The request body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

struct Shared {
    port: u16,
    api_key: String,
    callback_url: Mutex<Option<String>>,
    sessions: Mutex<Vec<ProviderSession>>,
    /// What `POST /v1/sessions` answers; `201` is normal operation.
    session_status: AtomicU16,
}

/// A loopback verification provider; stops with the test process.
pub struct KycProvider {
    shared: Arc<Shared>,
    callback_secret: String,
    agent: ureq::Agent,
}

impl KycProvider {
    /// Start one that accepts `api_key` in `x-auth-client` and signs its decisions with
    /// `callback_secret`.
    pub fn start(api_key: &str, callback_secret: &str) -> KycProvider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let shared = Arc::new(Shared {
            port,
            api_key: api_key.to_string(),
            callback_url: Mutex::new(None),
            sessions: Mutex::new(Vec::new()),
            session_status: AtomicU16::new(201),
        });
        let server = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = server.clone();
                std::thread::spawn(move || serve(&stream, &shared));
            }
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        KycProvider {
            shared,
            callback_secret: callback_secret.to_string(),
            agent,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `http://127.0.0.1:PORT`, the base URL to configure as the provider's.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    /// Where decisions are posted: the gateway's eKYC callback URL
    /// (`http://127.0.0.1:GW/v1/inbound/<plugin>/ekyc`).
    pub fn set_callback_url(&self, url: &str) {
        *lock(&self.shared.callback_url) = Some(url.to_string());
    }

    /// Answer `POST /v1/sessions` with `status` from now on (`201`, the default, opens
    /// sessions; anything else answers a Veriff-style failure body and opens none).
    pub fn answer_sessions_with(&self, status: u16) {
        self.shared.session_status.store(status, Ordering::SeqCst);
    }

    /// Every session opened so far, oldest first.
    pub fn sessions(&self) -> Vec<ProviderSession> {
        lock(&self.shared.sessions).clone()
    }

    /// The session with this id.
    pub fn session(&self, id: &str) -> Option<ProviderSession> {
        lock(&self.shared.sessions)
            .iter()
            .find(|s| s.id == id)
            .cloned()
    }

    /// The decision webhook body for session `session_id`, its person and document data
    /// all `canary` (identity data the gateway must never keep).
    pub fn decision_body(&self, session_id: &str, decision: Decision, canary: &str) -> Vec<u8> {
        let session = self
            .session(session_id)
            .unwrap_or_else(|| panic!("the provider opened no session {session_id:?}"));
        json!({
            "status": "success",
            "verification": {
                "id": session.id,
                "code": decision.code(),
                "status": decision.status(),
                "vendorData": session.vendor_data,
                "reason": decision.reason(),
                "person": {
                    "firstName": canary,
                    "lastName": canary,
                    "dateOfBirth": "1990-01-01",
                    "idNumber": canary,
                },
                "document": {
                    "number": canary,
                    "type": "PASSPORT",
                    "country": "EE",
                    "validUntil": "2030-01-01",
                },
                "decisionTime": now_rfc3339(),
                "acceptanceTime": session.created_at,
            },
            "technicalData": {"ip": "203.0.113.9"},
        })
        .to_string()
        .into_bytes()
    }

    /// The `x-hmac-signature` of `body`: lowercase hex HMAC-SHA256 under the callback secret.
    pub fn sign(&self, body: &[u8]) -> String {
        crate::sim::hmac_hex(ring::hmac::HMAC_SHA256, &self.callback_secret, body)
    }

    /// Post decision `decision` for session `session_id` to the callback URL, signed;
    /// returns the status the gateway answered.
    pub fn decide(&self, session_id: &str, decision: Decision, canary: &str) -> u16 {
        let body = self.decision_body(session_id, decision, canary);
        let signature = self.sign(&body);
        self.post_callback(&body, Some(&signature))
    }

    /// Like [`KycProvider::decide`], but signed with a wrong secret.
    pub fn decide_with_bad_signature(
        &self,
        session_id: &str,
        decision: Decision,
        canary: &str,
    ) -> u16 {
        let body = self.decision_body(session_id, decision, canary);
        let signature = crate::sim::hmac_hex(
            ring::hmac::HMAC_SHA256,
            &format!("not-{}", self.callback_secret),
            &body,
        );
        self.post_callback(&body, Some(&signature))
    }

    /// Post `body` to the callback URL as the provider would (`content-type`,
    /// `x-auth-client`), with `x-hmac-signature: signature` when given; returns the status
    /// the gateway answered. Panics when no callback URL is set or the gateway is
    /// unreachable.
    pub fn post_callback(&self, body: &[u8], signature: Option<&str>) -> u16 {
        let url = lock(&self.shared.callback_url)
            .clone()
            .expect("set_callback_url before posting decisions");
        let mut request = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .header("x-auth-client", &self.shared.api_key);
        if let Some(signature) = signature {
            request = request.header("x-hmac-signature", signature);
        }
        let mut response = request
            .send(body)
            .unwrap_or_else(|e| panic!("posting a decision to {url}: {e}"));
        let _ = response.body_mut().read_to_vec();
        response.status().as_u16()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn json_response(stream: &TcpStream, status: u16, body: &Value) {
    http1::respond(
        stream,
        status,
        Some("application/json"),
        body.to_string().as_bytes(),
    );
}

fn failure(code: u16, message: &str) -> Value {
    json!({"status": "fail", "code": code, "message": message})
}

fn serve(stream: &TcpStream, shared: &Shared) {
    let request = match http1::read_request(stream, MAX_BODY) {
        Ok(request) => request,
        Err(http1::ReadError::Gone) => return,
        Err(http1::ReadError::Bad(status, message)) => {
            return json_response(stream, status, &failure(1102, message));
        }
    };
    let path = request.path().to_string();
    match (request.method.as_str(), path.as_str()) {
        ("POST", "/v1/sessions") => {
            let (status, body) = create_session(shared, request);
            json_response(stream, status, &body);
        }
        ("GET", p) if p.starts_with("/v/") => {
            let id = &p["/v/".len()..];
            if lock(&shared.sessions).iter().any(|s| s.id == id) {
                let page = format!(
                    "<!doctype html><title>Verify your identity</title>\
                     <p>Verification session {id}</p>"
                );
                http1::respond(stream, 200, Some("text/html"), page.as_bytes());
            } else {
                json_response(stream, 404, &failure(1104, "Session not found"));
            }
        }
        _ => json_response(stream, 404, &failure(1104, "Not found")),
    }
}

fn create_session(shared: &Shared, request: http1::Request) -> (u16, Value) {
    let simulated = shared.session_status.load(Ordering::SeqCst);
    if simulated != 201 {
        return (simulated, failure(simulated, "Simulated failure"));
    }
    if request.headers.get("x-auth-client") != Some(&shared.api_key) {
        return (
            401,
            failure(
                1801,
                "Mandatory X-AUTH-CLIENT header containing the API key is missing or invalid",
            ),
        );
    }
    let parsed: Option<(String, String)> = serde_json::from_slice::<Value>(&request.body)
        .ok()
        .and_then(|v| {
            let verification = v.get("verification")?;
            let callback = verification.get("callback")?.as_str()?.to_string();
            let vendor_data = verification.get("vendorData")?.as_str()?.to_string();
            Some((callback, vendor_data))
        });
    let Some((return_url, vendor_data)) = parsed.filter(|(_, v)| !v.is_empty()) else {
        return (
            400,
            failure(1102, "Mandatory parameters are missing from the request."),
        );
    };
    let id = random_uuid();
    let host = format!("http://127.0.0.1:{}", shared.port);
    let url = format!("{host}/v/{id}");
    let answer = json!({
        "status": "success",
        "verification": {
            "id": id,
            "url": url,
            "vendorData": vendor_data,
            "host": host,
            "status": "created",
            "sessionToken": hex::encode(random_bytes::<24>()),
        }
    });
    lock(&shared.sessions).push(ProviderSession {
        id,
        vendor_data,
        return_url,
        url,
        created_at: now_rfc3339(),
        body: request.body,
        headers: request.headers,
    });
    (201, answer)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source");
    bytes
}

/// A random (version 4) UUID, as Veriff's session ids are.
fn random_uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formatting the time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Receiver;

    const KEY: &str = "test-api-key-3b1e";
    const SECRET: &str = "test-callback-secret-9c2a";

    fn agent() -> ureq::Agent {
        crate::sim::agent(Duration::from_secs(10))
    }

    fn open(provider: &KycProvider, key: Option<&str>, body: &[u8]) -> (u16, Value) {
        let mut request = agent()
            .post(format!("{}/v1/sessions", provider.base()))
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("x-auth-client", key);
        }
        let mut response = request.send(body).expect("the provider answers");
        let status = response.status().as_u16();
        let bytes = response.body_mut().read_to_vec().unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn session_body(vendor_data: &str) -> Vec<u8> {
        json!({"verification": {"callback": "https://shop.test/back", "vendorData": vendor_data}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_session_opens_with_the_right_key_and_is_recorded() {
        let provider = KycProvider::start(KEY, SECRET);
        let (status, body) = open(&provider, Some(KEY), &session_body("ks_1"));
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "success");
        let v = &body["verification"];
        let id = v["id"].as_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(v["url"], format!("{}/v/{id}", provider.base()));
        assert_eq!(v["vendorData"], "ks_1");
        assert_eq!(v["host"], provider.base());
        assert_eq!(v["status"], "created");
        assert!(!v["sessionToken"].as_str().unwrap().is_empty());

        let sessions = provider.sessions();
        assert_eq!(sessions.len(), 1);
        let s = &sessions[0];
        assert_eq!((s.id.as_str(), s.vendor_data.as_str()), (id, "ks_1"));
        assert_eq!(s.return_url, "https://shop.test/back");
        assert_eq!(s.header("x-auth-client"), KEY);
        assert_eq!(
            s.json(),
            serde_json::from_slice::<Value>(&session_body("ks_1")).unwrap()
        );

        let page = agent().get(&s.url).call().unwrap();
        assert_eq!(page.status().as_u16(), 200);
        let (other, _) = open(&provider, Some(KEY), &session_body("ks_2"));
        assert_eq!(other, 201);
        assert_ne!(provider.sessions()[1].id, s.id, "ids are random");
    }

    #[test]
    fn a_wrong_or_missing_key_is_refused_and_bad_bodies_are_bad_requests() {
        let provider = KycProvider::start(KEY, SECRET);
        for key in [Some("wrong"), None] {
            let (status, body) = open(&provider, key, &session_body("ks_1"));
            assert_eq!(status, 401);
            assert_eq!(body["status"], "fail");
            assert_eq!(body["code"], 1801);
        }
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"verification":{"callback":"https://x.test"}}"#,
            br#"{"verification":{"callback":1,"vendorData":"ks"}}"#,
        ] {
            let (status, body) = open(&provider, Some(KEY), bad);
            assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
            assert_eq!(body["code"], 1102);
        }
        let (status, _) = open(&provider, Some(KEY), &vec![b' '; MAX_BODY + 1]);
        assert_eq!(status, 413);
        provider.answer_sessions_with(503);
        assert_eq!(open(&provider, Some(KEY), &session_body("ks_1")).0, 503);
        assert!(provider.sessions().is_empty());
    }

    #[test]
    fn decisions_are_signed_over_the_raw_body_and_carry_the_canary() {
        let provider = KycProvider::start(KEY, SECRET);
        let receiver = Receiver::start();
        provider.set_callback_url(&receiver.url("/v1/inbound/sandbox/ekyc"));
        assert_eq!(open(&provider, Some(KEY), &session_body("ks_7")).0, 201);
        let id = provider.sessions()[0].id.clone();

        assert_eq!(provider.decide(&id, Decision::Declined, "CANARY-1"), 204);
        receiver.answer(401);
        assert_eq!(
            provider.decide_with_bad_signature(&id, Decision::Approved, "CANARY-2"),
            401
        );
        let got = receiver.wait_for(2, Duration::from_secs(5));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let verifies = |r: &crate::Received| {
            let signature = hex::decode(r.header("x-hmac-signature")).unwrap();
            ring::hmac::verify(&key, &r.body, &signature).is_ok()
        };
        assert!(verifies(&got[0]), "a good signature");
        assert!(!verifies(&got[1]), "a bad signature");
        assert_eq!(
            got[0].header("x-hmac-signature"),
            provider.sign(&got[0].body)
        );
        assert_eq!(got[0].header("x-auth-client"), KEY);
        assert_eq!(got[0].header("content-type"), "application/json");

        let body = got[0].json();
        let v = &body["verification"];
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["vendorData"], "ks_7");
        assert_eq!(
            (v["code"].as_u64(), v["status"].as_str()),
            (Some(9102), Some("declined"))
        );
        assert_eq!(v["person"]["firstName"], "CANARY-1");
        assert_eq!(v["document"]["number"], "CANARY-1");
        assert!(v["decisionTime"].as_str().unwrap().ends_with('Z'));
        assert_eq!(got[1].json()["verification"]["status"], "approved");
        assert_eq!(got[1].json()["verification"]["reason"], Value::Null);
    }

    #[test]
    fn absolute_form_targets_are_served_as_the_gateway_egress_sends_them() {
        use std::io::{Read, Write};
        let provider = KycProvider::start(KEY, SECRET);
        let body = session_body("ks_abs");
        let mut s = TcpStream::connect(("127.0.0.1", provider.port())).unwrap();
        write!(
            s,
            "POST {}/v1/sessions?x=1 HTTP/1.1\r\nhost: 127.0.0.1\r\nx-auth-client: {KEY}\r\n\
             content-length: {}\r\n\r\n",
            provider.base(),
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
        assert_eq!(provider.sessions()[0].vendor_data, "ks_abs");
    }

    #[test]
    fn garbage_never_takes_the_server_down() {
        use std::io::Write;
        let provider = KycProvider::start(KEY, SECRET);
        for junk in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"POST /v1/sessions HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
            b"POST /v1/sessions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"\xff\xfe /v1 HTTP/1.1\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(("127.0.0.1", provider.port())).unwrap();
            let _ = s.write_all(junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
        }
        assert_eq!(open(&provider, Some(KEY), &session_body("ks_1")).0, 201);
    }
}
