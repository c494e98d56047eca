//! Egress: the only way a plugin reaches the network is `wasi:http/outgoing-handler`, and
//! every request passes through [`EgressHooks::send_request`]:
//!
//! 1. the URL must match an effective outbound rule (scheme, host, port);
//! 2. `${secret:NAME}` placeholders in header values are filled in here, after the request
//!    has left plugin memory, and only for granted names: secret values never enter the guest;
//! 3. the host name is resolved and every address is checked again, so a granted name that
//!    resolves to loopback, a private range or a cloud metadata address is refused (DNS
//!    rebinding); the connection then goes to the checked address, not to a second lookup;
//! 4. connect time, total time and response size are capped.
//!
//! A denial is returned to the plugin as `HTTP-request-denied` and recorded in the call's
//! [`EgressReport`] so the runtime can report the call as `egress_denied`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::secrets::SecretValues;

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
        let host = host.to_ascii_lowercase();
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

/// Whether an address is on the public internet. Loopback, private, link-local (which
/// includes cloud metadata at 169.254.169.254), shared, unspecified, multicast,
/// documentation and unique-local addresses are not.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// The egress rules of one plugin, shared by all its calls.
#[derive(Debug)]
pub struct EgressPolicy {
    /// Plugin id, for log lines.
    pub plugin: String,
    /// Effective rules.
    pub rules: Vec<OutboundRule>,
    /// Effective secret names with their values.
    pub secrets: SecretValues,
    /// Whether non-public addresses may be reached.
    pub allow_private_addresses: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Cap on a response body.
    pub max_response_bytes: usize,
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
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let policy = self.policy.clone();
        let report = self.report.clone();
        let deadline = self.deadline;
        Box::new(async move {
            match send_checked(&policy, request, options, deadline).await {
                Err(Denied(reason)) => {
                    tracing::warn!(plugin = %policy.plugin, %reason, "egress denied");
                    lock(&report).denied.push(reason);
                    Err(HttpError::HttpRequestDenied)
                }
                Ok(sent) => {
                    lock(&report).sent += 1;
                    sent
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
    options: Option<RequestOptions>,
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
    let uri = request.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("").to_string();
    let host = uri
        .host()
        .ok_or_else(|| Denied("request has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = scheme == "https";
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if !policy.rules.iter().any(|r| r.matches(&scheme, &host, port)) {
        return Err(Denied(format!(
            "{scheme}://{host}:{port} is not among the granted outbound hosts"
        )));
    }
    fill_secrets(policy, request.headers_mut())?;

    let addr = resolve_checked(policy, &host, port).await?;
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(policy.connect_timeout)
        .min(policy.connect_timeout);
    Ok(send_to(
        addr,
        &host,
        tls,
        request,
        connect_timeout,
        deadline,
        policy.max_response_bytes,
    )
    .await)
}

/// Replace `${secret:NAME}` in header values with granted secret values.
fn fill_secrets(policy: &EgressPolicy, headers: &mut http::HeaderMap) -> Result<(), Denied> {
    for value in headers.values_mut() {
        let Ok(text) = value.to_str() else { continue };
        if !text.contains("${secret:") {
            continue;
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${secret:") {
            out.push_str(&rest[..start]);
            let after = &rest[start + "${secret:".len()..];
            let end = after
                .find('}')
                .ok_or_else(|| Denied("unterminated ${secret:...} placeholder".into()))?;
            let name = &after[..end];
            let secret = policy
                .secrets
                .get(name)
                .ok_or_else(|| Denied(format!("secret {name:?} is not granted to this plugin")))?;
            out.push_str(secret.expose());
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        let mut filled = http::HeaderValue::from_str(&out)
            .map_err(|_| Denied("a secret value is not a valid header value".into()))?;
        filled.set_sensitive(true);
        *value = filled;
    }
    Ok(())
}

/// Resolve `host` and return the first address the policy allows; refuse if any resolved
/// address is not allowed (a mixed answer is a rebinding attempt or a misconfiguration).
async fn resolve_checked(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
) -> Result<SocketAddr, Denied> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Denied(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Denied(format!("{host} resolves to no address")));
    }
    if !policy.allow_private_addresses
        && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
    {
        return Err(Denied(format!(
            "{host} resolves to non-public address {}; grant allow_private_addresses to permit",
            bad.ip()
        )));
    }
    Ok(addrs[0])
}

async fn send_to(
    addr: SocketAddr,
    host: &str,
    tls: bool,
    request: http::Request<WasiBody>,
    connect_timeout: Duration,
    deadline: tokio::time::Instant,
    max_response_bytes: usize,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
> {
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
            _ => HttpError::Connect(e),
        })?;
    let _ = tcp.set_nodelay(true);

    let (mut sender, worker) = if tls {
        handshake(super::tls::connect(host, tcp).await?).await?
    } else {
        handshake(tcp).await?
    };
    let resp = tokio::time::timeout_at(deadline, sender.send_request(request))
        .await
        .map_err(|_| HttpError::HttpResponseTimeout)?;
    let resp = resp.map_err(HttpError::Hyper)?;
    let (parts, body) = resp.into_parts();
    // Cap the body: the plugin reads at most `max_response_bytes`, then gets an error.
    let body = Limited::new(body, max_response_bytes)
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
        .boxed_unsync();
    let io = async move {
        match worker.await {
            Ok(r) => r,
            Err(e) => Err(HttpError::InternalError(Some(e.to_string()))),
        }
    };
    Ok((http::Response::from_parts(parts, body), Box::new(io)))
}

/// HTTP/1 handshake over a connected stream; the connection is driven by a spawned task.
async fn handshake<S>(
    io: S,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<WasiBody>,
        tokio::task::JoinHandle<Result<(), HttpError>>,
    ),
    HttpError,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(HttpError::Hyper)?;
    let worker = tokio::spawn(async move { conn.await.map_err(HttpError::Hyper) });
    Ok((sender, worker))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
