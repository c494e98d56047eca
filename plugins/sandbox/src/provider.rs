//! Provider mode: eKYC through an external verification provider with a hosted flow like
//! Veriff's, reached through egress the operator granted.
//!
//! - `ekyc.start` opens a session with `POST {kyc_provider_url}/v1/sessions`, authenticated
//!   by `x-auth-client: ${secret:KYC_PROVIDER_API_KEY}` (a placeholder the host fills in at
//!   egress: the plugin never holds the key), sending only
//!   `{"verification": {"callback": <return-url>, "vendorData": <session-ref>}}`. The
//!   provider's session id becomes the supplier session reference, and its URL is where the
//!   end user goes.
//! - The provider posts its decision to the gateway's eKYC callback, signed with
//!   `x-hmac-signature` (hex HMAC-SHA256 of the raw body under `KYC_PROVIDER_SECRET`).
//!   Decisions are never accepted unsigned. The body carries the person's identity data;
//!   only `verification.vendorData` and `verification.status` are read (serde skips every
//!   other field without keeping it), and only the status is ever logged.
//!
//! Everything but the two host calls (egress and the HMAC check) is plain functions over
//! bytes and strings, unit tested natively.

use serde::{Deserialize, Serialize};
use simgate_sdk::v0_1::secrets::{self, HmacAlgorithm, SecretError};
use simgate_sdk::v0_1::{
    EkycRedirect, EkycRequest, EkycStatus, EkycUpdate, Inbound, SupplierError, config, http,
    secret_ref,
};

use crate::derive::hex_decode;

/// Config: the provider's base URL (`https://host[:port][/prefix]`). Unset: the built-in
/// redirect, no network.
pub const URL_CONFIG: &str = "kyc_provider_url";
/// Config: how long a provider session stays usable, in seconds.
pub const SESSION_SECONDS_CONFIG: &str = "kyc_session_seconds";
/// Veriff sessions last 7 days.
pub const DEFAULT_SESSION_SECONDS: u64 = 7 * 24 * 60 * 60;
/// Secret: the provider API key, sent as [`API_KEY_HEADER`].
pub const API_KEY_SECRET: &str = "KYC_PROVIDER_API_KEY";
/// Secret: the key the provider signs its decisions with.
pub const CALLBACK_SECRET: &str = "KYC_PROVIDER_SECRET";
/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "x-auth-client";
/// The header carrying a decision's signature; its presence marks a provider decision.
pub const SIGNATURE_HEADER: &str = "x-hmac-signature";
/// The longest URL accepted, from the operator or the provider.
pub const MAX_URL_LEN: usize = 2048;
/// The longest provider session id accepted.
pub const MAX_ID_LEN: usize = 128;
/// A session answer larger than this is no session answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// What `rate-limited` asks for when the provider names no `retry-after`.
const DEFAULT_RETRY_SECONDS: u32 = 30;

/// Provider mode's settings, from the operator's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The provider's base URL, without a trailing `/`.
    pub base_url: String,
    /// How long a session stays usable, in milliseconds.
    pub session_ms: u64,
}

impl Settings {
    /// The settings from the plugin's config: `None` when no provider is configured.
    pub fn from_config() -> Result<Option<Settings>, SupplierError> {
        Settings::parse(
            config::get(URL_CONFIG).as_deref(),
            config::get(SESSION_SECONDS_CONFIG).as_deref(),
        )
    }

    /// The settings from config values; `invalid-request` for a value that makes no sense
    /// (the operator's mistake: retrying would not help).
    pub fn parse(
        url: Option<&str>,
        session_seconds: Option<&str>,
    ) -> Result<Option<Settings>, SupplierError> {
        let Some(url) = url else {
            return Ok(None);
        };
        let url = url.trim();
        if !is_http_url(url) || url.contains(['?', '#']) {
            return Err(SupplierError::InvalidRequest(format!(
                "config {URL_CONFIG} must be an http(s) URL of at most {MAX_URL_LEN} \
                 characters, without query or fragment"
            )));
        }
        let seconds = match session_seconds {
            None => DEFAULT_SESSION_SECONDS,
            Some(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    SupplierError::InvalidRequest(format!(
                        "config {SESSION_SECONDS_CONFIG} must be a positive whole number of seconds"
                    ))
                })?,
        };
        let session_ms = seconds.checked_mul(1000).ok_or_else(|| {
            SupplierError::InvalidRequest(format!("config {SESSION_SECONDS_CONFIG} is too large"))
        })?;
        Ok(Some(Settings {
            base_url: url.trim_end_matches('/').to_string(),
            session_ms,
        }))
    }

    /// Where sessions are opened.
    pub fn sessions_url(&self) -> String {
        format!("{}/v1/sessions", self.base_url)
    }
}

/// Whether `url` is an `http(s)` URL with something after the scheme, of at most
/// [`MAX_URL_LEN`] bytes, all visible ASCII (no spaces or control characters that could
/// split a header or a page it is put in).
pub fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return false;
    };
    url.len() <= MAX_URL_LEN
        && !rest.is_empty()
        && !rest.starts_with('/')
        && url.bytes().all(|b| b.is_ascii_graphic())
}

/// The session request body: the return URL and the host's session reference, nothing
/// else (there is no person data in an `ekyc-request` to send anyway).
pub fn session_body(req: &EkycRequest) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        verification: NewVerification<'a>,
    }
    #[derive(Serialize)]
    struct NewVerification<'a> {
        callback: &'a str,
        #[serde(rename = "vendorData")]
        vendor_data: &'a str,
    }
    serde_json::to_vec(&Body {
        verification: NewVerification {
            callback: &req.return_url,
            vendor_data: &req.session_ref,
        },
    })
    .expect("two strings always serialize")
}

/// The session request's headers: the API key as a placeholder, and the content type.
pub fn session_headers() -> [(&'static str, String); 2] {
    [
        (API_KEY_HEADER, secret_ref(API_KEY_SECRET)),
        ("content-type", "application/json".into()),
    ]
}

/// Open a session at the provider (egress) and say where to send the end user.
pub fn start(
    settings: &Settings,
    req: &EkycRequest,
    now_ms: u64,
) -> Result<EkycRedirect, SupplierError> {
    let mut request = http::Request::post(settings.sessions_url())
        .max_body(MAX_ANSWER_BYTES)
        .body(session_body(req));
    for (name, value) in session_headers() {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .map_err(|err| SupplierError::Unavailable(format!("eKYC provider: {err}")))?;
    redirect_from(
        response.status,
        response.header("retry-after"),
        &response.body,
        now_ms,
        settings.session_ms,
    )
}

/// The redirect from the provider's answer to a session request, or the error it means.
pub fn redirect_from(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: u64,
    session_ms: u64,
) -> Result<EkycRedirect, SupplierError> {
    match status {
        200..=299 => {
            let (url, id) = parse_session(body)?;
            Ok(EkycRedirect {
                url,
                supplier_session_ref: id,
                expires_at_ms: now_ms.saturating_add(session_ms),
            })
        }
        401 | 403 => Err(SupplierError::Rejected(
            "provider refused the API key".into(),
        )),
        429 => Err(SupplierError::RateLimited(
            retry_after
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(DEFAULT_RETRY_SECONDS)
                .clamp(1, 3600),
        )),
        400..=499 => Err(SupplierError::InvalidRequest(format!(
            "provider refused the session request: HTTP {status}{}",
            provider_code(body)
                .map(|code| format!(", code {code}"))
                .unwrap_or_default()
        ))),
        _ => Err(SupplierError::Unavailable(format!(
            "eKYC provider answered HTTP {status}"
        ))),
    }
}

/// The provider's numeric error `code` in a failure body, if any (never its free text).
fn provider_code(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Failure {
        code: u64,
    }
    serde_json::from_slice::<Failure>(body).ok().map(|f| f.code)
}

/// `verification.url` and `verification.id` from a session answer, checked: the provider
/// is not trusted to answer sensibly. A bad answer is `unavailable` (a broken provider,
/// not a bad request).
pub fn parse_session(body: &[u8]) -> Result<(String, String), SupplierError> {
    #[derive(Deserialize)]
    struct Answer {
        verification: Created,
    }
    #[derive(Deserialize)]
    struct Created {
        id: String,
        url: String,
    }
    let bad = |what: &str| SupplierError::Unavailable(format!("eKYC provider answered {what}"));
    let answer: Answer =
        serde_json::from_slice(body).map_err(|_| bad("a malformed session body"))?;
    let Created { id, url } = answer.verification;
    if !is_http_url(&url) {
        return Err(bad(&format!(
            "a session URL that is not http(s), or longer than {MAX_URL_LEN} characters"
        )));
    }
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(&format!(
            "a session id that is empty, longer than {MAX_ID_LEN} characters or not printable"
        )));
    }
    Ok((url, id))
}

/// Accept a decision only if its [`SIGNATURE_HEADER`] is the HMAC of the body under
/// [`CALLBACK_SECRET`]. Without that secret granted, nothing is accepted: a provider's
/// decisions are never taken unsigned.
pub fn check_signature(req: &Inbound) -> Result<(), SupplierError> {
    check_signature_with(req, |body, signature| {
        secrets::verify_hmac(CALLBACK_SECRET, HmacAlgorithm::Sha256, body, signature)
    })
}

/// [`check_signature`] with the host's HMAC check passed in (natively testable).
pub fn check_signature_with(
    req: &Inbound,
    verify: impl FnOnce(&[u8], &[u8]) -> Result<bool, SecretError>,
) -> Result<(), SupplierError> {
    let header = req.header(SIGNATURE_HEADER).ok_or_else(|| {
        SupplierError::InvalidRequest(format!("missing {SIGNATURE_HEADER} header"))
    })?;
    let signature = hex_decode(header.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| SupplierError::InvalidRequest(format!("{SIGNATURE_HEADER} is not hex")))?;
    match verify(&req.body, &signature) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SupplierError::InvalidRequest(format!(
            "{SIGNATURE_HEADER} does not match the body"
        ))),
        Err(SecretError::NotGranted(_)) => Err(SupplierError::InvalidRequest(format!(
            "{CALLBACK_SECRET} is not granted: eKYC provider decisions are never accepted \
             unsigned"
        ))),
    }
}

/// A provider's `verification.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderStatus {
    /// `approved`.
    Approved,
    /// `declined`.
    Declined,
    /// `resubmission_requested`: the end user must try again.
    ResubmissionRequested,
    /// `review`: a person at the provider is looking at it.
    Review,
    /// `expired`: the session ran out before a decision.
    Expired,
    /// `abandoned`: the end user never finished.
    Abandoned,
}

impl ProviderStatus {
    /// The status as the provider spells it.
    pub fn parse(status: &str) -> Option<ProviderStatus> {
        Some(match status {
            "approved" => ProviderStatus::Approved,
            "declined" => ProviderStatus::Declined,
            "resubmission_requested" => ProviderStatus::ResubmissionRequested,
            "review" => ProviderStatus::Review,
            "expired" => ProviderStatus::Expired,
            "abandoned" => ProviderStatus::Abandoned,
            _ => return None,
        })
    }

    /// The provider's spelling (safe to log: it says nothing about the person).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderStatus::Approved => "approved",
            ProviderStatus::Declined => "declined",
            ProviderStatus::ResubmissionRequested => "resubmission_requested",
            ProviderStatus::Review => "review",
            ProviderStatus::Expired => "expired",
            ProviderStatus::Abandoned => "abandoned",
        }
    }

    /// What it means under the contract's three statuses: a session that can still end in
    /// a decision is pending, one that cannot (expired, abandoned) is rejected.
    pub fn ekyc_status(self) -> EkycStatus {
        match self {
            ProviderStatus::Approved => EkycStatus::Approved,
            ProviderStatus::ResubmissionRequested | ProviderStatus::Review => EkycStatus::Pending,
            ProviderStatus::Declined | ProviderStatus::Expired | ProviderStatus::Abandoned => {
                EkycStatus::Rejected
            }
        }
    }
}

/// The update in a (verified) provider decision, and the provider's status for the log.
///
/// The structs name only `verification.vendorData` and `verification.status`: `person`,
/// `document` and the rest are skipped by serde, never held. Errors never quote the body.
pub fn parse_decision(body: &[u8]) -> Result<(EkycUpdate, ProviderStatus), SupplierError> {
    #[derive(Deserialize)]
    struct Decision {
        verification: Verification,
    }
    #[derive(Deserialize)]
    struct Verification {
        #[serde(rename = "vendorData")]
        vendor_data: Option<String>,
        status: String,
    }
    let decision: Decision = serde_json::from_slice(body).map_err(malformed)?;
    let Verification {
        vendor_data,
        status,
    } = decision.verification;
    let session_ref = vendor_data.filter(|v| !v.is_empty()).ok_or_else(|| {
        SupplierError::InvalidRequest("provider decision without verification.vendorData".into())
    })?;
    let status = ProviderStatus::parse(&status).ok_or_else(|| {
        let shown =
            if status.len() <= 32 && status.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                format!(" {status:?}")
            } else {
                String::new()
            };
        SupplierError::InvalidRequest(format!("unknown verification status{shown}"))
    })?;
    Ok((
        EkycUpdate {
            session_ref,
            status: status.ekyc_status(),
        },
        status,
    ))
}

/// A JSON error without the value it choked on (it could be identity data).
fn malformed(err: serde_json::Error) -> SupplierError {
    let text = err.to_string();
    let what = if text.starts_with("missing field") {
        text
    } else {
        format!(
            "{:?} error at line {}, column {}",
            err.classify(),
            err.line(),
            err.column()
        )
    };
    SupplierError::InvalidRequest(format!("malformed provider decision: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> EkycRequest {
        EkycRequest {
            session_ref: "ks_01J".into(),
            sku: "SBX-CN-3GB-15D".into(),
            return_url: "https://shop.test/back?x=1".into(),
        }
    }

    fn invalid<T: std::fmt::Debug>(result: Result<T, SupplierError>) -> String {
        match result {
            Err(SupplierError::InvalidRequest(message)) => message,
            other => panic!("expected invalid-request, got {other:?}"),
        }
    }

    #[test]
    fn config_selects_provider_mode_and_checks_its_values() {
        assert_eq!(Settings::parse(None, Some("nonsense")), Ok(None));
        let settings = Settings::parse(Some(" http://127.0.0.1:4711/ "), None)
            .unwrap()
            .unwrap();
        assert_eq!(settings.base_url, "http://127.0.0.1:4711");
        assert_eq!(settings.session_ms, 604_800_000);
        assert_eq!(settings.sessions_url(), "http://127.0.0.1:4711/v1/sessions");
        let custom = Settings::parse(Some("https://kyc.example.com/api"), Some("3600"));
        assert_eq!(
            custom,
            Ok(Some(Settings {
                base_url: "https://kyc.example.com/api".into(),
                session_ms: 3_600_000,
            }))
        );
        for seconds in ["0", "-5", "1.5", "", "soon", "18446744073709551615"] {
            invalid(Settings::parse(Some("http://127.0.0.1:1"), Some(seconds)));
        }
        let long = format!("https://x.test/{}", "a".repeat(MAX_URL_LEN));
        for url in [
            "",
            "ftp://x.test",
            "http://",
            "http:///path",
            "https://x.test/a b",
            "https://x.test/?q=1",
            "https://x.test/#f",
            long.as_str(),
        ] {
            invalid(Settings::parse(Some(url), None));
        }
    }

    #[test]
    fn the_session_request_sends_the_return_url_and_reference_only() {
        let body: serde_json::Value = serde_json::from_slice(&session_body(&request())).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"verification": {
                "callback": "https://shop.test/back?x=1",
                "vendorData": "ks_01J",
            }})
        );
        let headers = session_headers();
        assert_eq!(
            headers[0],
            (
                "x-auth-client",
                "${secret:KYC_PROVIDER_API_KEY}".to_string()
            )
        );
        assert_eq!(headers[1].1, "application/json");
    }

    #[test]
    fn a_session_answer_becomes_the_redirect() {
        let body = br#"{"status":"success","verification":{"id":"f04bdb47-d3be-4b28",
            "url":"https://alchemy.veriff.com/v/eyJhbGciOi","vendorData":"ks_01J",
            "host":"https://alchemy.veriff.com","status":"created","sessionToken":"eyJ"}}"#;
        let redirect = redirect_from(201, None, body, 1_000, 604_800_000).unwrap();
        assert_eq!(
            redirect,
            EkycRedirect {
                url: "https://alchemy.veriff.com/v/eyJhbGciOi".into(),
                supplier_session_ref: "f04bdb47-d3be-4b28".into(),
                expires_at_ms: 604_801_000,
            }
        );
        assert_eq!(
            redirect_from(200, None, body, u64::MAX, 5)
                .unwrap()
                .expires_at_ms,
            u64::MAX
        );
    }

    #[test]
    fn untrusted_session_answers_are_checked() {
        let answer = |id: &str, url: &str| {
            serde_json::json!({"verification": {"id": id, "url": url}})
                .to_string()
                .into_bytes()
        };
        let long_url = format!("https://x.test/{}", "v".repeat(MAX_URL_LEN));
        let long_id = "i".repeat(MAX_ID_LEN + 1);
        let ok_url = "http://127.0.0.1:9/v/1";
        for body in [
            b"not json".to_vec(),
            b"{}".to_vec(),
            br#"{"verification":{"id":"x"}}"#.to_vec(),
            answer("", ok_url),
            answer(&long_id, ok_url),
            answer("a\nb", ok_url),
            answer("id", "javascript:alert(1)"),
            answer("id", "https://x.test/\r\nset-cookie: a=b"),
            answer("id", &long_url),
        ] {
            let result = parse_session(&body);
            assert!(
                matches!(result, Err(SupplierError::Unavailable(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(&body)
            );
        }
        let max_id = "i".repeat(MAX_ID_LEN);
        assert!(parse_session(&answer(&max_id, ok_url)).is_ok());
    }

    #[test]
    fn provider_failures_map_to_what_the_host_should_do() {
        let refused = br#"{"status":"fail","code":1801,"message":"Mandatory X-AUTH-CLIENT"}"#;
        for status in [401, 403] {
            assert_eq!(
                redirect_from(status, None, refused, 0, 1),
                Err(SupplierError::Rejected(
                    "provider refused the API key".into()
                ))
            );
        }
        let message = invalid(redirect_from(
            400,
            None,
            br#"{"status":"fail","code":1102,"message":"Mandatory parameters"}"#,
            0,
            1,
        ));
        assert!(message.contains("HTTP 400, code 1102"), "{message}");
        assert!(!message.contains("Mandatory"), "free text is not echoed");
        invalid(redirect_from(404, None, b"<html>", 0, 1));
        assert_eq!(
            redirect_from(429, Some("12"), b"", 0, 1),
            Err(SupplierError::RateLimited(12))
        );
        assert_eq!(
            redirect_from(429, None, b"", 0, 1),
            Err(SupplierError::RateLimited(DEFAULT_RETRY_SECONDS))
        );
        for status in [500, 502, 503, 302, 100] {
            assert!(matches!(
                redirect_from(status, None, b"{}", 0, 1),
                Err(SupplierError::Unavailable(_))
            ));
        }
    }

    fn decision(status: &str, vendor_data: &str) -> Vec<u8> {
        serde_json::json!({
            "status": "success",
            "verification": {
                "id": "f04bdb47", "code": 9001, "status": status, "vendorData": vendor_data,
                "reason": null,
                "person": {"firstName": "CANARY", "lastName": "CANARY",
                           "dateOfBirth": "1990-01-01", "idNumber": "CANARY"},
                "document": {"number": "CANARY", "type": "PASSPORT", "country": "EE",
                             "validUntil": "2030-01-01"},
                "decisionTime": "2026-01-01T00:00:00Z", "acceptanceTime": "2026-01-01T00:00:00Z"
            },
            "technicalData": {"ip": "203.0.113.9"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn decisions_map_to_the_contract_statuses() {
        for (status, expected) in [
            ("approved", EkycStatus::Approved),
            ("declined", EkycStatus::Rejected),
            ("resubmission_requested", EkycStatus::Pending),
            ("review", EkycStatus::Pending),
            ("expired", EkycStatus::Rejected),
            ("abandoned", EkycStatus::Rejected),
        ] {
            let (update, provider) = parse_decision(&decision(status, "ks_01J")).unwrap();
            assert_eq!(
                update,
                EkycUpdate {
                    session_ref: "ks_01J".into(),
                    status: expected,
                }
            );
            assert_eq!(provider.as_str(), status);
        }
    }

    #[test]
    fn bad_decisions_are_invalid_and_never_quote_identity_data() {
        let unknown = invalid(parse_decision(&decision("maybe", "ks_1")));
        assert_eq!(unknown, "unknown verification status \"maybe\"");
        let odd = invalid(parse_decision(&decision("CANARY Smith", "ks_1")));
        assert!(!odd.contains("CANARY"), "{odd}");
        invalid(parse_decision(&decision("approved", "")));
        let no_vendor = br#"{"verification":{"status":"approved","vendorData":null}}"#;
        invalid(parse_decision(no_vendor));
        for body in [
            &b"{"[..],
            b"{}",
            br#"{"verification":"CANARY"}"#,
            br#"{"verification":{"status":"approved","vendorData":["CANARY"]}}"#,
            br#"{"verification":{"status":{"firstName":"CANARY"},"vendorData":"ks"}}"#,
        ] {
            let message = invalid(parse_decision(body));
            assert!(!message.contains("CANARY"), "{message}");
        }
    }

    fn inbound(signature: Option<&str>) -> Inbound {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(s) = signature {
            headers.push(("X-HMAC-Signature".to_string(), s.to_string()));
        }
        Inbound {
            method: "POST".into(),
            path_and_query: "/v1/inbound/sandbox/ekyc".into(),
            headers,
            body: decision("approved", "ks_1"),
        }
    }

    #[test]
    fn decisions_are_accepted_only_signed_with_the_granted_secret() {
        let good = |_: &[u8], sig: &[u8]| Ok(sig == [0xab, 0xcd]);
        assert_eq!(check_signature_with(&inbound(Some("abcd")), good), Ok(()));
        assert_eq!(check_signature_with(&inbound(Some(" ABCD ")), good), Ok(()));
        let body_seen = |body: &[u8], _: &[u8]| Ok(body == decision("approved", "ks_1"));
        assert_eq!(
            check_signature_with(&inbound(Some("00")), body_seen),
            Ok(())
        );
        for (signature, why) in [
            (Some("abce"), "does not match"),
            (Some("xyz"), "is not hex"),
            (Some(""), "is not hex"),
            (None, "missing"),
        ] {
            let message = invalid(check_signature_with(&inbound(signature), good));
            assert!(message.contains(why), "{message}");
        }
        let not_granted = |_: &[u8], _: &[u8]| Err(SecretError::NotGranted(CALLBACK_SECRET.into()));
        let message = invalid(check_signature_with(&inbound(Some("abcd")), not_granted));
        assert!(message.contains("never accepted unsigned"), "{message}");
    }
}
