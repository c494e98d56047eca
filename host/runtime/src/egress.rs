//! Egress: the only way a plugin reaches the network is `wasi:http/outgoing-handler`, and
//! every request passes through [`EgressHooks::send_request`]:
//!
//! 1. the URL must match an effective outbound rule (scheme, host, port);
//! 2. `${secret:NAME}` placeholders in header values (and, for contract 0.2, in the body)
//!    are filled in here, after the request has left plugin memory, only for granted
//!    names, and only when the operator bound that secret to this destination: secret
//!    values never enter the guest, and never reach a granted host they were not meant
//!    for. `${oauth:NAME}` in a header value becomes the OAuth client's current token
//!    ([`super::oauth`]), under the same binding rule;
//! 3. the request goes out on the plugin's keep-alive pool ([`super::pool`]); a new
//!    connection resolves the host name and checks every address again with the guard
//!    webhook delivery shares ([`crate::net`]), so a granted name that resolves to
//!    loopback, a private range or a cloud metadata address is refused (DNS rebinding),
//!    and connects to the checked address, not to a second lookup;
//! 4. connect time, total time and response size are capped;
//! 5. the response is read whole (within the cap and the call's deadline) and every secret
//!    value of the plugin, in its common encodings, is scrubbed from its headers and body
//!    before the plugin reads a byte (and so is every token this request carried): a
//!    destination that reflects the request hands back `[REDACTED]`, not the secret.
//!
//! Errors reach the plugin as `wasi:http` error codes without host detail (no messages,
//! paths or backtraces of the gateway's own errors).
//!
//! An [`EgressTransport`] may stand in for steps 3 and 4's network (the SDK test harness
//! answers egress from a route table): steps 1 and 2 still run, so a test sees exactly the
//! request that would have gone on the wire, secrets filled in, and exactly the denials.
//!
//! A denial is returned to the plugin as `HTTP-request-denied` and recorded in the call's
//! [`EgressReport`] so the runtime can report the call as `egress_denied`.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::oauth::OAuthClients;
use super::secrets::{Scrubber, Secret, SecretValues};
use crate::supplier::BoxFuture;

/// The largest request body handed to an [`EgressTransport`]; supplier API requests are
/// small, and the body is buffered whole.
pub const MAX_TRANSPORT_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Answers a plugin's outbound requests instead of the network, after the policy allowed
/// them and filled in their secrets. Used by the SDK test harness; the gateway itself
/// never sets one.
pub trait EgressTransport: Send + Sync {
    /// Answer one request. `Err` reaches the plugin as a transport failure.
    fn send(&self, req: EgressRequest) -> BoxFuture<'static, Result<EgressResponse, String>>;
}

/// A request as it would go on the wire: allowed by the policy, secrets filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The absolute URL, `scheme://host[:port]/path?query`.
    pub url: String,
    /// Header names (lower-case) and values, in order, including `host`.
    pub headers: Vec<(String, String)>,
    /// The body, at most [`MAX_TRANSPORT_REQUEST_BYTES`].
    pub body: Vec<u8>,
}

impl EgressRequest {
    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The answer an [`EgressTransport`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body; the plugin reads at most the plugin's `max_egress_response_bytes` of it.
    pub body: Vec<u8>,
}

/// An answered egress request: the response, and a future that finishes the connection.
type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

/// One allowed destination: `scheme://host:port`, where port may be `*` and host may start
/// with `*.` to allow every subdomain (not the bare domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    scheme: String,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl OutboundRule {
    /// Parse a rule such as `https://api.example.com:443` or `http://127.0.0.1:*`.
    pub fn parse(rule: &str) -> Result<OutboundRule, String> {
        let (scheme, rest) = rule
            .split_once("://")
            .ok_or("expected scheme://host:port")?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {scheme:?} is not http or https"));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or("expected an explicit port or ':*'")?;
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?),
        };
        // An IPv6 literal is written in brackets; requests name it without them.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(format!("bad host {host:?}"));
        }
        let host = match host.strip_prefix("*.") {
            Some(base) if !base.is_empty() && !base.contains('*') => {
                HostPattern::Subdomains(base.to_string())
            }
            _ if host.contains('*') => return Err("'*' is only allowed as '*.' prefix".into()),
            _ => HostPattern::Exact(host),
        };
        Ok(OutboundRule {
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    /// Whether a request to `scheme://host:port` matches.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(base) => host
                .strip_suffix(base.as_str())
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1),
        };
        self.scheme == scheme && host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// The egress rules of one plugin, shared by all its calls.
pub struct EgressPolicy {
    /// Plugin id, for log lines.
    pub plugin: String,
    /// Effective rules.
    pub rules: Vec<OutboundRule>,
    /// Effective secret names with their values.
    pub secrets: SecretValues,
    /// Per secret name, the destinations it may be sent to.
    pub secret_hosts: std::collections::BTreeMap<String, Vec<OutboundRule>>,
    /// Finds the secret values in what the plugin reads back or hands out.
    pub scrubber: Scrubber,
    /// Cap on a response body.
    pub max_response_bytes: usize,
    /// Where allowed requests go instead of the network (tests); `None` in the gateway.
    pub transport: Option<Arc<dyn EgressTransport>>,
    /// The plugin's OAuth clients.
    pub oauth: Arc<OAuthClients>,
    /// Fill `${secret:NAME}` in request bodies too (contract 0.2; 0.1 promised headers).
    pub fill_bodies: bool,
    /// Keep-alive connections of this plugin generation ([`super::pool`]).
    pub client: super::pool::EgressClient,
}

impl std::fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressPolicy")
            .field("plugin", &self.plugin)
            .field("rules", &self.rules)
            .field("secrets", &self.secrets)
            .field("secret_hosts", &self.secret_hosts)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("transport", &self.transport.as_ref().map(|_| "custom"))
            .field("oauth", &self.oauth)
            .field("fill_bodies", &self.fill_bodies)
            .finish()
    }
}

/// What happened to one call's egress, read by the runtime after the call.
#[derive(Debug, Default)]
pub struct EgressReport {
    /// Requests refused, with the reason (never containing secret values).
    pub denied: Vec<String>,
    /// Requests sent.
    pub sent: u32,
}

/// The `wasi:http` hooks of one call.
pub struct EgressHooks {
    /// The plugin's policy.
    pub policy: Arc<EgressPolicy>,
    /// This call's report.
    pub report: Arc<Mutex<EgressReport>>,
    /// When the call's budget runs out; no response is awaited past it.
    pub deadline: tokio::time::Instant,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for EgressHooks {
    fn set_host_header(&mut self) -> bool {
        true
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        // A plugin's own connect timeout is not taken: the pool's connector has the
        // operator's, and the call's deadline bounds everything.
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let policy = self.policy.clone();
        let report = self.report.clone();
        let deadline = self.deadline;
        Box::new(async move {
            match send_checked(&policy, request, deadline).await {
                Err(Denied(reason)) => {
                    tracing::warn!(plugin = %policy.plugin, %reason, "egress denied");
                    lock(&report).denied.push(reason);
                    Err(HttpError::HttpRequestDenied)
                }
                Ok(sent) => {
                    lock(&report).sent += 1;
                    sent.map_err(for_guest)
                }
            }
        })
    }
}

fn lock(report: &Mutex<EgressReport>) -> std::sync::MutexGuard<'_, EgressReport> {
    report.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request the policy refuses.
struct Denied(String);

async fn send_checked(
    policy: &EgressPolicy,
    mut request: http::Request<WasiBody>,
    deadline: tokio::time::Instant,
) -> Result<
    Result<
        (
            http::Response<WasiBody>,
            Box<dyn Future<Output = Result<(), HttpError>> + Send>,
        ),
        HttpError,
    >,
    Denied,
> {
    let (scheme, host, port) = destination(request.uri())?;
    if !policy.rules.iter().any(|r| r.matches(&scheme, &host, port)) {
        return Err(Denied(format!(
            "{scheme}://{host}:{port} is not among the granted outbound hosts"
        )));
    }
    let dest = (scheme.as_str(), host.as_str(), port);
    fill_secrets(policy, request.headers_mut(), dest)?;
    let tokens = fill_tokens(policy, request.headers_mut(), dest, deadline).await?;
    if policy.fill_bodies {
        let (mut parts, body) = request.into_parts();
        let body = match collect_capped(body, MAX_TRANSPORT_REQUEST_BYTES, deadline).await {
            Ok(body) => body,
            Err(e) => return Ok(Err(e)),
        };
        let body = match fill_placeholders(policy, &body, dest)? {
            Some(filled) => {
                // The length changed: hyper writes the new one from the body.
                parts.headers.remove(http::header::CONTENT_LENGTH);
                Bytes::from(filled)
            }
            None => body,
        };
        request = http::Request::from_parts(parts, full(body));
    }
    let sent = send_allowed(policy, request, deadline).await?;
    let scrubber = if tokens.is_empty() {
        policy.scrubber.clone()
    } else {
        policy.scrubber.with(&tokens)
    };
    Ok(match sent {
        Ok((response, io)) => scrubbed(response, &scrubber, policy.max_response_bytes, deadline)
            .await
            .map(|response| (response, io)),
        Err(e) => Err(e),
    })
}

/// Scheme, host (without IPv6 brackets) and port of a request URL.
fn destination(uri: &http::Uri) -> Result<(String, String, u16), Denied> {
    let scheme = uri.scheme_str().unwrap_or("").to_string();
    let host = uri
        .host()
        .ok_or_else(|| Denied("request has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok((scheme, host, port))
}

/// Send a request the policy allowed: to the test transport, or to the checked address.
async fn send_allowed(
    policy: &EgressPolicy,
    request: http::Request<WasiBody>,
    deadline: tokio::time::Instant,
) -> Result<Sent, Denied> {
    if let Some(transport) = &policy.transport {
        return Ok(send_via(
            transport.as_ref(),
            request,
            deadline,
            policy.max_response_bytes,
        )
        .await);
    }
    let mut request = request;
    // The pool speaks origin-form to the destination and sets `host` itself.
    request.headers_mut().remove(http::header::HOST);
    let response = match tokio::time::timeout_at(deadline, policy.client.request(request)).await {
        Err(_) => return Ok(Err(HttpError::HttpResponseTimeout)),
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return match super::pool::classify(e) {
                Err(denied) => Err(Denied(denied)),
                Ok(code) => Ok(Err(code)),
            };
        }
    };
    let (parts, body) = response.into_parts();
    let body = capped(body, policy.max_response_bytes);
    Ok(Ok((
        http::Response::from_parts(parts, body),
        Box::new(async { Ok(()) }),
    )))
}

/// The largest answer the host reads for itself (an OAuth token response).
const MAX_EXCHANGE_RESPONSE_BYTES: usize = 64 * 1024;

/// A request the host itself makes for a plugin (an OAuth token request): same address
/// checks and deadline as the plugin's own egress, the answer read whole (capped).
pub(super) async fn exchange(
    policy: &EgressPolicy,
    request: http::Request<Bytes>,
    deadline: tokio::time::Instant,
) -> Result<(http::StatusCode, Bytes), String> {
    let request = request.map(full);
    let (response, _io) = send_allowed(policy, request, deadline)
        .await
        .map_err(|Denied(why)| why)?
        .map_err(|e| format!("the request failed ({})", guest_text(&e)))?;
    let status = response.status();
    let body = collect_capped(response.into_body(), MAX_EXCHANGE_RESPONSE_BYTES, deadline)
        .await
        .map_err(|e| format!("the answer could not be read ({})", guest_text(&e)))?;
    Ok((status, body))
}

/// A body held in memory, as the `wasi:http` body type.
fn full(bytes: Bytes) -> WasiBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Read a body whole, at most `cap` bytes, within the deadline.
async fn collect_capped(
    body: WasiBody,
    cap: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, HttpError> {
    Ok(
        tokio::time::timeout_at(deadline, Limited::new(body, cap).collect())
            .await
            .map_err(|_| HttpError::ConnectionWriteTimeout)?
            .map_err(|e| match e.downcast::<HttpError>() {
                Ok(e) => *e,
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    HttpError::HttpRequestBodySize(Some(cap as u64))
                }
                Err(e) => HttpError::InternalError(Some(e.to_string())),
            })?
            .to_bytes(),
    )
}

/// The response with every secret form scrubbed from its headers and body. The body is
/// read whole first: at most `max_response_bytes` (one byte more tells the plugin it was
/// cut: it reads the cap, then a body-size error), within the call's deadline.
async fn scrubbed(
    response: http::Response<WasiBody>,
    scrubber: &Scrubber,
    max_response_bytes: usize,
    deadline: tokio::time::Instant,
) -> Result<http::Response<WasiBody>, HttpError> {
    let (mut parts, mut body) = response.into_parts();
    for value in parts.headers.values_mut() {
        let clean = scrubber.bytes(value.as_bytes());
        if let std::borrow::Cow::Owned(clean) = clean {
            *value = http::HeaderValue::from_bytes(&clean)
                .unwrap_or_else(|_| http::HeaderValue::from_static("[REDACTED]"));
        }
    }
    let mut buf = bytes::BytesMut::new();
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| HttpError::HttpResponseTimeout)?;
        match frame {
            None => break,
            Some(Err(HttpError::HttpResponseBodySize(_))) => {
                // Over the cap: what is handed on is over it too, so the plugin gets the
                // same body-size error reading it.
                buf.resize(max_response_bytes + 1, 0);
                break;
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    let clean = Bytes::from(scrubber.bytes(&buf).into_owned());
    Ok(http::Response::from_parts(
        parts,
        capped(Full::new(clean), max_response_bytes),
    ))
}

/// The text a plugin may read for an egress error: its kind, and for the variants that
/// carry only values from the wire (sizes, header names), those values; never a host
/// error's message.
pub(crate) fn guest_text(e: &HttpError) -> String {
    match e {
        HttpError::InternalError(_) => "InternalError".into(),
        HttpError::Hyper(_) => "HttpProtocolError".into(),
        HttpError::Connect(_) => "ConnectionRefused".into(),
        HttpError::Tls(_) | HttpError::TlsAlertReceived { .. } => "TlsProtocolError".into(),
        HttpError::DnsError { .. } => "DnsError".into(),
        other => format!("{other:?}"),
    }
}

/// An error as the plugin may see it: the `wasi:http` code, without the host's messages,
/// paths or backtraces (which name gateway internals and, through a plugin's error
/// reason, would reach resellers).
fn for_guest(e: HttpError) -> HttpError {
    match e {
        HttpError::InternalError(_) => HttpError::InternalError(None),
        HttpError::Hyper(h) if h.is_timeout() => HttpError::HttpResponseTimeout,
        HttpError::Hyper(h) if h.is_incomplete_message() => HttpError::HttpResponseIncomplete,
        HttpError::Hyper(_) => HttpError::HttpProtocolError,
        HttpError::Connect(_) => HttpError::ConnectionRefused,
        HttpError::Tls(_) => HttpError::TlsProtocolError,
        HttpError::TlsAlertReceived { alert_id, .. } => HttpError::TlsAlertReceived {
            alert_id,
            alert_message: None,
        },
        HttpError::DnsError { info_code, .. } => HttpError::DnsError {
            rcode: None,
            info_code,
        },
        other => other,
    }
}

/// Replace `${secret:NAME}` in header values with granted secret values, each only if the
/// operator bound it to `destination` (`scheme`, `host`, `port`).
fn fill_secrets(
    policy: &EgressPolicy,
    headers: &mut http::HeaderMap,
    dest: (&str, &str, u16),
) -> Result<(), Denied> {
    for value in headers.values_mut() {
        if let Some(out) = fill_placeholders(policy, value.as_bytes(), dest)? {
            let mut filled = http::HeaderValue::from_bytes(&out)
                .map_err(|_| Denied("a secret value is not a valid header value".into()))?;
            filled.set_sensitive(true);
            *value = filled;
        }
    }
    Ok(())
}

/// `text` with every `${secret:NAME}` replaced (granted, and bound to `dest`), or `None`
/// when it holds no placeholder.
fn fill_placeholders(
    policy: &EgressPolicy,
    text: &[u8],
    (scheme, host, port): (&str, &str, u16),
) -> Result<Option<Vec<u8>>, Denied> {
    const OPEN: &[u8] = b"${secret:";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    if find(text, OPEN).is_none() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find(rest, OPEN) {
        out.extend_from_slice(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after
            .iter()
            .position(|&b| b == b'}')
            .ok_or_else(|| Denied("unterminated ${secret:...} placeholder".into()))?;
        let name = String::from_utf8_lossy(&after[..end]);
        let named = super::runtime::quote(&name);
        let secret = policy
            .secrets
            .get(&name)
            .ok_or_else(|| Denied(format!("secret {named} is not granted to this plugin")))?;
        let bound = policy
            .secret_hosts
            .get(name.as_ref())
            .is_some_and(|rules| rules.iter().any(|r| r.matches(scheme, host, port)));
        if !bound {
            return Err(Denied(format!(
                "secret {named} is not bound to {scheme}://{host}:{port}; bind it in the \
                 grants file under [plugins.{}.secret_hosts]",
                policy.plugin
            )));
        }
        out.extend_from_slice(secret.expose().as_bytes());
        rest = &after[end + 1..];
    }
    out.extend_from_slice(rest);
    Ok(Some(out))
}

/// Replace every `${oauth:NAME}` in header values with the client's current token (fetched when
/// none is cached), each only if the client is bound to `dest`. Returns the tokens sent,
/// to be scrubbed from the answer.
async fn fill_tokens(
    policy: &EgressPolicy,
    headers: &mut http::HeaderMap,
    dest: (&str, &str, u16),
    deadline: tokio::time::Instant,
) -> Result<Vec<Secret>, Denied> {
    const OPEN: &str = "${oauth:";
    let mut sent = Vec::new();
    for value in headers.values_mut() {
        let Ok(text) = value.to_str() else { continue };
        if !text.contains(OPEN) {
            continue;
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            out.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len()..];
            let end = after
                .find('}')
                .ok_or_else(|| Denied("unterminated ${oauth:...} placeholder".into()))?;
            let token = policy
                .oauth
                .token_for(policy, &after[..end], dest, deadline)
                .await
                .map_err(Denied)?;
            out.push_str(token.expose());
            sent.push(token);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        let mut filled = http::HeaderValue::from_str(&out)
            .map_err(|_| Denied("a token is not a valid header value".into()))?;
        filled.set_sensitive(true);
        *value = filled;
    }
    Ok(sent)
}

/// Cap a response body: the plugin reads at most `max_response_bytes`, then gets an error.
fn capped<B>(body: B, max_response_bytes: usize) -> WasiBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Limited::new(body, max_response_bytes)
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::HttpResponseBodySize(Some(max_response_bytes as u64))
            } else {
                match e.downcast::<hyper::Error>() {
                    Ok(h) => HttpError::Hyper(*h),
                    Err(other) => HttpError::InternalError(Some(other.to_string())),
                }
            }
        })
        .boxed_unsync()
}

/// Hand an allowed, secret-filled request to `transport` instead of the network, under the
/// same deadline and response cap as a real exchange.
async fn send_via(
    transport: &dyn EgressTransport,
    request: http::Request<WasiBody>,
    deadline: tokio::time::Instant,
    max_response_bytes: usize,
) -> Sent {
    let (parts, body) = request.into_parts();
    let body = collect_capped(body, MAX_TRANSPORT_REQUEST_BYTES, deadline).await?;
    let req = EgressRequest {
        method: parts.method.to_string(),
        url: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect(),
        body: body.to_vec(),
    };
    let answer = tokio::time::timeout_at(deadline, transport.send(req))
        .await
        .map_err(|_| HttpError::HttpResponseTimeout)?
        .map_err(|e| HttpError::InternalError(Some(e)))?;
    let mut response = http::Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        response = response.header(name, value);
    }
    let response = response
        .body(capped(
            Full::new(Bytes::from(answer.body)),
            max_response_bytes,
        ))
        .map_err(|e| HttpError::InternalError(Some(format!("transport response: {e}"))))?;
    Ok((response, Box::new(async { Ok(()) })))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rules_match_scheme_host_and_port() {
        let r = OutboundRule::parse("https://api.example.com:443").unwrap();
        assert!(r.matches("https", "api.example.com", 443));
        assert!(r.matches("https", "API.example.com", 443));
        assert!(!r.matches("http", "api.example.com", 443));
        assert!(!r.matches("https", "api.example.com", 8443));
        assert!(!r.matches("https", "evil.com", 443));
        assert!(!r.matches("https", "api.example.com.evil.com", 443));
    }

    #[test]
    fn ipv6_literal_rules_match_requests_to_that_address() {
        let r = OutboundRule::parse("http://[64:FF9B::1]:*").unwrap();
        assert!(r.matches("http", "64:ff9b::1", 80));
    }

    #[test]
    fn subdomain_rules_do_not_match_lookalikes() {
        let r = OutboundRule::parse("https://*.example.com:*").unwrap();
        assert!(r.matches("https", "a.example.com", 1));
        assert!(!r.matches("https", "example.com", 443));
        assert!(!r.matches("https", "evilexample.com", 443));
    }

    #[test]
    fn malformed_rules_are_refused() {
        for bad in [
            "api.example.com:443",
            "ftp://x:1",
            "https://x",
            "https://a*b.com:1",
            "https://u@x:1",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }

    /// Records what reaches it and answers `pong`, padded to `len` bytes.
    struct Recorder {
        seen: Mutex<Vec<EgressRequest>>,
        len: usize,
    }

    impl EgressTransport for Recorder {
        fn send(&self, req: EgressRequest) -> BoxFuture<'static, Result<EgressResponse, String>> {
            self.seen.lock().unwrap().push(req);
            let mut body = b"pong".to_vec();
            body.resize(self.len.max(4), b'.');
            Box::pin(async move {
                Ok(EgressResponse {
                    status: 201,
                    headers: vec![("x-answer".into(), "yes".into())],
                    body,
                })
            })
        }
    }

    fn recorder(len: usize) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            len,
        })
    }

    /// A policy for `https://api.example.com:443` with secret `TOKEN`, a response cap of
    /// 8 bytes, and `transport` instead of the network.
    fn policy_with(transport: Arc<Recorder>) -> EgressPolicy {
        let mut store = super::super::SecretStore::default();
        store.insert("p", "TOKEN", "hunter2");
        let secrets = store.for_plugin("p", &["TOKEN".to_string()].into());
        let rule = OutboundRule::parse("https://api.example.com:443").unwrap();
        EgressPolicy {
            plugin: "p".into(),
            rules: vec![
                rule.clone(),
                OutboundRule::parse("https://other.example.com:443").unwrap(),
            ],
            scrubber: Scrubber::new(secrets.values()),
            secret_hosts: [("TOKEN".to_string(), vec![rule])].into(),
            secrets,
            max_response_bytes: 8,
            transport: Some(transport),
            oauth: Default::default(),
            fill_bodies: false,
            client: super::super::pool::client(false, Duration::from_secs(1), 0),
        }
    }

    fn post(url: &str) -> http::Request<WasiBody> {
        let body = Full::new(Bytes::from_static(b"{\"q\":1}"))
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::post(url)
            .header("authorization", "Bearer ${secret:TOKEN}")
            .body(body)
            .unwrap()
    }

    fn in_five_seconds() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    /// [`post`] `url` through `policy`, within five seconds.
    async fn send_post(policy: &EgressPolicy, url: &str) -> Result<Sent, Denied> {
        send_checked(policy, post(url), in_five_seconds()).await
    }

    #[tokio::test]
    async fn a_transport_gets_the_allowed_request_with_its_secret_filled_in() {
        let transport = recorder(4);
        let policy = policy_with(transport.clone());
        // api.example.com is never resolved: the transport replaces DNS and the socket.
        let sent = send_post(&policy, "https://api.example.com/v1/x?y=1").await;
        let Ok(Ok((response, _io))) = sent else {
            panic!("the request was refused")
        };
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["x-answer"], "yes");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"pong");
        let seen = transport.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].url, "https://api.example.com/v1/x?y=1");
        assert!(
            seen[0]
                .headers
                .contains(&("authorization".into(), "Bearer hunter2".into()))
        );
        assert_eq!(seen[0].body, b"{\"q\":1}");
    }

    #[tokio::test]
    async fn a_secret_is_never_sent_to_a_granted_host_it_is_not_bound_to() {
        let transport = recorder(4);
        let policy = policy_with(transport.clone());
        let sent = send_post(&policy, "https://other.example.com/").await;
        let Err(Denied(reason)) = sent else {
            panic!("an unbound destination got the secret")
        };
        assert!(reason.contains("not bound"), "{reason}");
        assert!(transport.seen.lock().unwrap().is_empty());
    }

    /// Answers with the request's `authorization` header in its body and headers.
    struct Reflector;

    impl EgressTransport for Reflector {
        fn send(&self, req: EgressRequest) -> BoxFuture<'static, Result<EgressResponse, String>> {
            use base64::Engine as _;
            let auth = req.header("authorization").unwrap_or_default().to_string();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&auth);
            Box::pin(async move {
                Ok(EgressResponse {
                    status: 200,
                    headers: vec![("x-echo".into(), auth.clone())],
                    body: format!("you sent {auth} ({b64})").into_bytes(),
                })
            })
        }
    }

    #[tokio::test]
    async fn a_reflected_secret_is_scrubbed_before_the_plugin_reads_it() {
        let mut policy = policy_with(recorder(4));
        policy.transport = Some(Arc::new(Reflector));
        policy.max_response_bytes = 1024;
        let sent = send_post(&policy, "https://api.example.com/").await;
        let Ok(Ok((response, _io))) = sent else {
            panic!("the request was refused")
        };
        let echoed = response.headers()["x-echo"].to_str().unwrap().to_string();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(!echoed.contains("hunter2") && echoed.contains("[REDACTED]"));
        assert!(!body.contains("hunter2"), "{body}");
        assert!(body.contains("[REDACTED]"), "{body}");
    }

    #[test]
    fn guests_get_error_codes_without_host_detail() {
        let e = for_guest(HttpError::InternalError(Some(
            "at /home/build/simgate/host/src/x.rs:10".into(),
        )));
        assert!(matches!(e, HttpError::InternalError(None)));
        let e = for_guest(HttpError::Connect(std::io::Error::other("secret detail")));
        assert!(matches!(e, HttpError::ConnectionRefused));
    }

    #[tokio::test]
    async fn a_transport_answer_is_capped_like_a_network_one() {
        let policy = policy_with(recorder(64));
        let sent = send_post(&policy, "https://api.example.com/").await;
        let Ok(Ok((response, _io))) = sent else {
            panic!("the request was refused")
        };
        let read = response.into_body().collect().await;
        assert!(matches!(
            read,
            Err(HttpError::HttpResponseBodySize(Some(8)))
        ));
    }

    #[tokio::test]
    async fn a_transport_never_sees_a_request_the_policy_refuses() {
        let transport = recorder(4);
        let policy = policy_with(transport.clone());
        for url in ["https://evil.example.com/", "http://api.example.com:443/"] {
            let sent = send_checked(&policy, post(url), in_five_seconds()).await;
            assert!(matches!(sent, Err(Denied(_))), "{url}");
        }
        let mut ungranted = post("https://api.example.com/");
        ungranted
            .headers_mut()
            .insert("x-other", "${secret:OTHER}".parse().unwrap());
        let sent = send_checked(&policy, ungranted, in_five_seconds()).await;
        assert!(matches!(sent, Err(Denied(_))));
        assert!(transport.seen.lock().unwrap().is_empty());
    }
}
