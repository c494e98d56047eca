//! Delivery: one HTTP POST of one signed message to one receiver, and what came of it.
//!
//! A webhook URL is chosen by a reseller, so delivering to it is making a request on
//! someone else's behalf from inside the operator's network. Hence, at every attempt:
//!
//! - only `https://` and `http://` URLs, and none with a user name or password;
//! - the host is resolved and every address checked by the guard plugin egress uses
//!   ([`crate::net::resolve_vetted`]): a name that resolved to a public address yesterday
//!   may resolve to `169.254.169.254` today. The connection goes to a checked address,
//!   never to a second lookup of the name;
//! - redirects are not followed: a 3xx would send the signed body to a URL nobody checked,
//!   so it is just a failed attempt;
//! - the whole attempt (resolve, connect, TLS, send, answer headers, the kept part of the
//!   answer) runs under one [`DeliveryPolicy::timeout`], and at most
//!   [`DeliveryPolicy::max_answer_bytes`] of the answer are read: a receiver cannot hold a
//!   worker by answering slowly or at length.
//!
//! Failures are values ([`Attempt::error`]), never panics; their text names the host and
//! what to do, never the signature. Retries, backoff and disabling an endpoint are the
//! caller's: this module reports [`Outcome`] and `Retry-After`, and decides nothing.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

use super::signing::{WebhookSecret, signature_header};
use crate::net::{self, AddressError};

/// The `user-agent` of every delivery, so receivers can tell simgate's requests in logs.
pub const USER_AGENT: &str = concat!("simgate-webhooks/", env!("CARGO_PKG_VERSION"));

/// Receivers are expected to answer at once and process later; 15 s is what the common
/// webhook senders allow, long enough for a cold start, short enough to free the worker.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Enough of an answer to show the operator and reseller why a receiver refused.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 1024;

/// hyper's read buffer cap: the answer's headers must fit (receivers send a few hundred
/// bytes), and it bounds how far past `max_answer_bytes` a read can go.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// One message to one endpoint, signed.
#[derive(Clone)]
pub struct Delivery {
    /// The endpoint URL, `https://...` (or `http://...`).
    pub url: String,
    /// The message id (`webhook-id`): the same on every attempt, receivers deduplicate on it.
    pub msg_id: String,
    /// When this attempt was signed (`webhook-timestamp`), Unix seconds. Sign each attempt
    /// afresh: receivers refuse timestamps more than five minutes old.
    pub timestamp_secs: u64,
    /// The JSON body, sent byte for byte as signed.
    pub body: Bytes,
    /// The `webhook-signature` header value, from [`signature_header`].
    pub signature: String,
}

impl Delivery {
    /// A delivery of `body` signed with `secrets` (current first, then the previous one
    /// during a rotation's grace period) at `timestamp_secs`.
    pub fn signed(
        url: impl Into<String>,
        msg_id: impl Into<String>,
        timestamp_secs: u64,
        body: Bytes,
        secrets: &[&WebhookSecret],
    ) -> Delivery {
        let msg_id = msg_id.into();
        let signature = signature_header(secrets, &msg_id, timestamp_secs, &body);
        Delivery {
            url: url.into(),
            msg_id,
            timestamp_secs,
            body,
            signature,
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("url", &self.url)
            .field("msg_id", &self.msg_id)
            .field("timestamp_secs", &self.timestamp_secs)
            .field("body_bytes", &self.body.len())
            .field("signature", &"***")
            .finish()
    }
}

/// How an attempt may go: the operator's settings for every delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// The whole attempt, from resolving the host to the last byte of the answer kept.
    pub timeout: Duration,
    /// Whether receivers on loopback, private, link-local (cloud metadata) and other
    /// non-public addresses may be reached. Off: a reseller's URL must not reach the
    /// operator's own network. On only for receivers the operator runs itself (and tests).
    pub allow_private_addresses: bool,
    /// How much of the answer body is read and kept in [`Attempt::answer`].
    pub max_answer_bytes: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: DEFAULT_TIMEOUT,
            allow_private_addresses: false,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// What the receiver's answer means for the message and the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: the receiver has the message.
    Delivered,
    /// A 410 Gone: the receiver asks for no more deliveries; disable the endpoint.
    Gone,
    /// Anything else (another status, a refusal, a network error, the timeout): retry later.
    Failed,
}

/// One attempt's result, for the delivery log and the retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The answer's status code; `None` if no answer came.
    pub status: Option<u16>,
    /// From the start of the attempt to its end (answer read, or failure).
    pub latency: Duration,
    /// The start of the answer body, lossy UTF-8, at most `max_answer_bytes` bytes.
    pub answer: String,
    /// Why the attempt did not deliver; `None` when it did. Never holds the signature.
    pub error: Option<String>,
    /// The receiver's `Retry-After` in seconds, read on 429, 502 and 504 only.
    pub retry_after: Option<Duration>,
    /// What the attempt means.
    pub outcome: Outcome,
}

/// POST `delivery` to its URL under `policy`. Every failure is an [`Attempt`] with
/// [`Outcome::Failed`] and an [`Attempt::error`].
pub async fn deliver(delivery: &Delivery, policy: &DeliveryPolicy) -> Attempt {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + policy.timeout;
    let answered = match Target::parse(&delivery.url) {
        Ok(target) => exchange(&target, delivery, policy, deadline).await,
        Err(refused) => Err(refused),
    };
    let latency = started.elapsed();
    match answered {
        Ok(answer) => judge(answer, latency, policy.max_answer_bytes),
        Err(error) => Attempt {
            status: None,
            latency,
            answer: String::new(),
            error: Some(error),
            retry_after: None,
            outcome: Outcome::Failed,
        },
    }
}

/// Whether deliveries may go to `url` under `policy`: the URL rules and the address guard
/// of [`deliver`], without connecting. For registering an endpoint, so a reseller hears at
/// once that `http://10.0.0.5/` will never be reached; every delivery checks again, since a
/// name may move. `Err` says why, in words for the reseller.
pub async fn check_url(url: &str, policy: &DeliveryPolicy) -> Result<(), String> {
    let target = Target::parse(url)?;
    let deadline = tokio::time::Instant::now() + policy.timeout;
    vetted_addresses(&target, policy, deadline).await.map(drop)
}

/// Where a URL points, once it passed the URL rules.
struct Target {
    tls: bool,
    /// Host name or IP literal, IPv6 without brackets.
    host: String,
    port: u16,
    /// The `Host` header: the URL's authority as written.
    authority: HeaderValue,
    path: PathAndQuery,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| "the endpoint URL is not an absolute URL such as https://host/path")?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err("the endpoint URL must start with https:// (or http://)".into()),
        };
        let authority = uri.authority().ok_or("the endpoint URL names no host")?;
        if authority.as_str().contains('@') {
            return Err(
                "the endpoint URL holds a user name or password; remove them: \
                        receivers authenticate a delivery by its signature"
                    .into(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("the endpoint URL names no host".into());
        }
        Ok(Target {
            tls,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|_| "the endpoint URL's host is not a valid Host header")?,
            path: uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What came back: the status, `Retry-After`, and the start of the body.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

async fn exchange(
    target: &Target,
    delivery: &Delivery,
    policy: &DeliveryPolicy,
    deadline: tokio::time::Instant,
) -> Result<Answer, String> {
    let request = request(target, delivery)?;
    let addrs = vetted_addresses(target, policy, deadline).await?;
    let late = |step: &str| late(step, target, policy);
    let tcp = connect(&addrs, deadline)
        .await
        .map_err(|e| e.unwrap_or_else(|| late("connecting to")))?;
    let _ = tcp.set_nodelay(true);
    if target.tls {
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| format!("{} is not a valid TLS server name", target.host))?;
        let tls = tokio::time::timeout_at(deadline, net::tls_connector().connect(name, tcp))
            .await
            .map_err(|_| late("the TLS handshake with"))?
            .map_err(|e| format!("the TLS handshake with {target} failed: {e}"))?;
        exchange_over(tls, request, target, policy, deadline).await
    } else {
        exchange_over(tcp, request, target, policy, deadline).await
    }
}

/// The addresses of `target` that the shared guard allows under `policy`.
async fn vetted_addresses(
    target: &Target,
    policy: &DeliveryPolicy,
    deadline: tokio::time::Instant,
) -> Result<Vec<SocketAddr>, String> {
    tokio::time::timeout_at(
        deadline,
        net::resolve_vetted(&target.host, target.port, policy.allow_private_addresses),
    )
    .await
    .map_err(|_| late("resolving", target, policy))?
    .map_err(refusal)
}

/// The text of a step cut short by the timeout.
fn late(step: &str, target: &Target, policy: &DeliveryPolicy) -> String {
    format!(
        "{step} {target} took longer than the {:?} delivery timeout",
        policy.timeout
    )
}

/// The text of a refused destination, with what can be done about it.
fn refusal(e: AddressError) -> String {
    match e {
        AddressError::NonPublic { .. } => format!(
            "{e}: webhook receivers must be on the public internet (an operator may allow \
             private addresses for receivers on its own network)"
        ),
        e => e.to_string(),
    }
}

/// Connect to the first of `addrs` that accepts. `Err(None)`: the deadline passed.
async fn connect(
    addrs: &[SocketAddr],
    deadline: tokio::time::Instant,
) -> Result<TcpStream, Option<String>> {
    let mut failure = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(None),
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => failure = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    Err(failure)
}

fn request(target: &Target, delivery: &Delivery) -> Result<http::Request<Full<Bytes>>, String> {
    let value = |what: &str, text: &str| {
        HeaderValue::from_str(text).map_err(|_| format!("the {what} is not a valid header value"))
    };
    let mut signature = value("signature", &delivery.signature)?;
    signature.set_sensitive(true);
    let headers = [
        (header::HOST, target.authority.clone()),
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (header::USER_AGENT, HeaderValue::from_static(USER_AGENT)),
        // One attempt, one connection: nothing is pooled between deliveries, so an
        // address checked once is never reused after its name moved.
        (header::CONNECTION, HeaderValue::from_static("close")),
        (
            HeaderName::from_static("webhook-id"),
            value("message id", &delivery.msg_id)?,
        ),
        (
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(delivery.timestamp_secs),
        ),
        (HeaderName::from_static("webhook-signature"), signature),
    ];
    let mut request = http::Request::new(Full::new(delivery.body.clone()));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from(target.path.clone());
    request.headers_mut().extend(headers);
    Ok(request)
}

/// Aborts the task driving a connection when the attempt is over, whatever state the
/// connection is in (a receiver still sending a long answer, say).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Send over a connected stream (plain or TLS), read the status and the start of the
/// answer, and close.
async fn exchange_over<S>(
    io: S,
    request: http::Request<Full<Bytes>>,
    target: &Target,
    policy: &DeliveryPolicy,
    deadline: tokio::time::Instant,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(READ_BUFFER_BYTES)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("cannot start HTTP with {target}: {e}"))?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = tokio::time::timeout_at(deadline, sender.send_request(request))
        .await
        .map_err(|_| {
            format!(
                "{target} did not answer within the {:?} delivery timeout; a receiver should \
                 answer 2xx at once and process the message afterwards",
                policy.timeout
            )
        })?
        .map_err(|e| format!("the exchange with {target} failed: {e}"))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(status, response.headers());
    let body = read_capped(response.into_body(), policy.max_answer_bytes, deadline).await;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// `Retry-After` in seconds, on the statuses that ask to slow down: 429 Too Many Requests,
/// 502 and 504 (a receiver's gateway). The HTTP-date form is not read.
fn retry_after(status: u16, headers: &http::HeaderMap) -> Option<Duration> {
    if !matches!(status, 429 | 502 | 504) {
        return None;
    }
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Duration::from_secs)
}

/// Up to `cap` bytes of the body. Reading stops at the cap, at the end, on an error or at
/// the deadline, keeping what arrived: once the status is in, the receiver has decided,
/// and the body is only kept for people to read.
async fn read_capped(mut body: Incoming, cap: usize, deadline: tokio::time::Instant) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < cap {
        let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            let room = cap - kept.len();
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    kept
}

/// The attempt an answer makes.
fn judge(answer: Answer, latency: Duration, max_answer_bytes: usize) -> Attempt {
    let status = answer.status;
    let (outcome, error) = match status {
        200..=299 => (Outcome::Delivered, None),
        410 => (
            Outcome::Gone,
            Some("410 Gone: the receiver asks for no more deliveries to this endpoint".into()),
        ),
        300..=399 => (
            Outcome::Failed,
            Some(format!(
                "the receiver answered {status}, a redirect; redirects are not followed: \
                 set the endpoint to the final URL"
            )),
        ),
        _ => (
            Outcome::Failed,
            Some(format!(
                "the receiver answered {status}; it must answer 2xx to acknowledge a delivery"
            )),
        ),
    };
    Attempt {
        status: Some(status),
        latency,
        answer: lossy_prefix(&answer.body, max_answer_bytes),
        error,
        retry_after: answer.retry_after,
        outcome,
    }
}

/// At most `max` bytes of `bytes` as text; a replacement character for an invalid
/// sequence never pushes it over `max`.
fn lossy_prefix(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{SystemTime, UNIX_EPOCH};

    use hyper::service::service_fn;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::webhooks::signing::{Verifier, WebhookHeaders};

    /// What a test receiver saw: each request's head and body.
    type Seen = Arc<Mutex<Vec<(http::request::Parts, Bytes)>>>;

    /// A receiver on 127.0.0.1 that records every request and answers with `answer()`.
    async fn receiver(
        answer: impl Fn() -> http::Response<Full<Bytes>> + Copy + Send + Sync + 'static,
    ) -> (u16, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Seen::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let record = record.clone();
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        record.lock().unwrap().push((parts, body));
                        Ok::<_, hyper::Error>(answer())
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        (port, seen)
    }

    /// A receiver that accepts connections and reads, but never answers.
    async fn silent_receiver() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                open.push(tcp);
            }
        });
        port
    }

    fn answer(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: Bytes,
    ) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(Full::new(body)).unwrap()
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn secret() -> WebhookSecret {
        WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
    }

    fn delivery_to(url: &str) -> Delivery {
        Delivery::signed(
            url,
            "evt_01J0000000000000000000000",
            now_secs(),
            Bytes::from_static(br#"{"type":"order.fulfilled","data":{"order_id":"ord_1"}}"#),
            &[&secret()],
        )
    }

    /// The policy for receivers on loopback, with a short timeout.
    fn loopback() -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: Duration::from_secs(5),
            allow_private_addresses: true,
            ..DeliveryPolicy::default()
        }
    }

    fn public_only() -> DeliveryPolicy {
        DeliveryPolicy {
            allow_private_addresses: false,
            ..loopback()
        }
    }

    #[tokio::test]
    async fn a_2xx_delivers_a_signed_message_the_verifier_accepts() {
        let (port, seen) = receiver(|| answer(204, &[], Bytes::new())).await;
        let delivery = delivery_to(&format!("http://127.0.0.1:{port}/hooks/simgate?tenant=7"));
        let attempt = deliver(&delivery, &loopback()).await;
        assert_eq!(attempt.outcome, Outcome::Delivered, "{attempt:?}");
        assert_eq!(attempt.status, Some(204));
        assert_eq!(attempt.error, None);

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (head, body) = &seen[0];
        assert_eq!(head.method, http::Method::POST);
        assert_eq!(head.uri, "/hooks/simgate?tenant=7");
        assert_eq!(head.headers["host"], format!("127.0.0.1:{port}"));
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers["user-agent"], USER_AGENT);
        assert!(USER_AGENT.starts_with("simgate-webhooks/"));
        assert_eq!(head.headers["webhook-id"], "evt_01J0000000000000000000000");
        assert_eq!(
            head.headers["webhook-timestamp"],
            delivery.timestamp_secs.to_string()
        );
        assert_eq!(head.headers["content-length"], body.len().to_string());
        assert_eq!(body, &delivery.body);
        let verifier = Verifier::from(secret());
        let received = WebhookHeaders::from_map(&head.headers);
        assert_eq!(verifier.verify(received, body, now_secs()), Ok(()));
    }

    #[tokio::test]
    async fn a_410_means_the_endpoint_is_gone() {
        let (port, _) = receiver(|| answer(410, &[], Bytes::new())).await;
        let attempt = deliver(
            &delivery_to(&format!("http://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.outcome, Outcome::Gone);
        assert_eq!(attempt.status, Some(410));
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_fails_the_attempt() {
        let (target, target_saw) = receiver(|| answer(200, &[], Bytes::new())).await;
        let (port, _) = receiver(move || {
            let location = format!("http://127.0.0.1:{target}/moved");
            let mut moved = answer(302, &[], Bytes::new());
            moved
                .headers_mut()
                .insert("location", location.parse().unwrap());
            moved
        })
        .await;
        let attempt = deliver(
            &delivery_to(&format!("http://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.outcome, Outcome::Failed);
        assert_eq!(attempt.status, Some(302));
        assert!(
            attempt.error.as_deref().unwrap().contains("redirect"),
            "{attempt:?}"
        );
        assert!(
            target_saw.lock().unwrap().is_empty(),
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn a_429_with_retry_after_reports_how_long_to_wait() {
        let (port, _) = receiver(|| {
            answer(
                429,
                &[("retry-after", "7")],
                Bytes::from_static(b"slow down"),
            )
        })
        .await;
        let attempt = deliver(
            &delivery_to(&format!("http://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.outcome, Outcome::Failed);
        assert_eq!(attempt.status, Some(429));
        assert_eq!(attempt.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(attempt.answer, "slow down");
    }

    #[tokio::test]
    async fn retry_after_is_read_only_on_429_502_and_504() {
        let (port, _) = receiver(|| answer(500, &[("retry-after", "7")], Bytes::new())).await;
        let attempt = deliver(
            &delivery_to(&format!("http://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!((attempt.status, attempt.retry_after), (Some(500), None));
        let (port, _) = receiver(|| answer(502, &[("retry-after", "30")], Bytes::new())).await;
        let attempt = deliver(
            &delivery_to(&format!("http://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.retry_after, Some(Duration::from_secs(30)));
        let (port, _) = receiver(|| {
            answer(
                504,
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
                Bytes::new(),
            )
        })
        .await;
        let attempt = deliver(
            &delivery_to(&format!("http://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.retry_after, None);
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_fails_at_the_timeout() {
        let port = silent_receiver().await;
        let policy = DeliveryPolicy {
            timeout: Duration::from_millis(300),
            ..loopback()
        };
        let delivery = delivery_to(&format!("http://127.0.0.1:{port}/"));
        let attempt = deliver(&delivery, &policy).await;
        assert_eq!(attempt.outcome, Outcome::Failed);
        assert_eq!(attempt.status, None);
        let error = attempt.error.unwrap();
        assert!(error.contains("did not answer within"), "{error}");
        assert!(!error.contains(&delivery.signature[3..]), "{error}");
        assert!(attempt.latency >= Duration::from_millis(300));
        assert!(
            attempt.latency < Duration::from_secs(2),
            "{:?}",
            attempt.latency
        );
    }

    #[tokio::test]
    async fn a_huge_answer_is_cut_to_the_kept_size() {
        let (port, _) =
            receiver(|| answer(200, &[], Bytes::from(vec![b'x'; 8 * 1024 * 1024]))).await;
        let policy = DeliveryPolicy {
            max_answer_bytes: 100,
            ..loopback()
        };
        let attempt = deliver(&delivery_to(&format!("http://127.0.0.1:{port}/")), &policy).await;
        assert_eq!(attempt.outcome, Outcome::Delivered);
        assert_eq!(attempt.answer, "x".repeat(100));
    }

    #[tokio::test]
    async fn the_rest_of_a_long_answer_is_not_waited_for() {
        // Promises 10 MB, sends 4 KiB, then stalls: the kept part is in after 4 KiB.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n".to_vec();
            head.extend_from_slice(&[b'y'; 4096]);
            tcp.write_all(&head).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let attempt = deliver(
            &delivery_to(&format!("http://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.outcome, Outcome::Delivered);
        assert_eq!(attempt.answer.len(), DEFAULT_MAX_ANSWER_BYTES);
        assert!(
            attempt.latency < Duration::from_secs(2),
            "{:?}",
            attempt.latency
        );
    }

    #[test]
    fn a_kept_answer_is_never_longer_than_the_cap_even_with_a_cut_character() {
        let euro = "€€".as_bytes();
        assert_eq!(lossy_prefix(euro, 4), "€");
        assert_eq!(lossy_prefix(&[0xff, b'a'], 2), "");
        assert_eq!(lossy_prefix(&[0xff, b'a', b'b', b'c'], 4), "\u{fffd}a");
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_private_addresses_are_allowed() {
        let (port, seen) = receiver(|| answer(200, &[], Bytes::new())).await;
        let delivery = delivery_to(&format!("http://127.0.0.1:{port}/"));
        let refused = deliver(&delivery, &public_only()).await;
        assert_eq!(refused.outcome, Outcome::Failed);
        assert_eq!(refused.status, None);
        let error = refused.error.unwrap();
        assert!(error.contains("non-public address 127.0.0.1"), "{error}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "the refused request was sent"
        );

        let allowed = deliver(&delivery, &loopback()).await;
        assert_eq!(allowed.outcome, Outcome::Delivered);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn non_public_destinations_are_refused_by_address_or_name() {
        let (port, seen) = receiver(|| answer(200, &[], Bytes::new())).await;
        for url in [
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "http://10.0.0.1/".to_string(),
            "http://[::ffff:127.0.0.1]/".to_string(),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("http://localhost:{port}/"),
        ] {
            let attempt = deliver(&delivery_to(&url), &public_only()).await;
            assert_eq!(attempt.outcome, Outcome::Failed, "{url}");
            let error = attempt.error.unwrap();
            assert!(error.contains("non-public address"), "{url}: {error}");
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_name_is_connected_to_at_its_checked_addresses_when_allowed() {
        // localhost may resolve to ::1 first, where nothing listens: the next checked
        // address is tried.
        let (port, seen) = receiver(|| answer(200, &[], Bytes::new())).await;
        let attempt = deliver(
            &delivery_to(&format!("http://localhost:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.outcome, Outcome::Delivered, "{attempt:?}");
        assert_eq!(
            seen.lock().unwrap()[0].0.headers["host"],
            format!("localhost:{port}")
        );
    }

    #[tokio::test]
    async fn urls_with_userinfo_or_another_scheme_are_refused() {
        let (port, seen) = receiver(|| answer(200, &[], Bytes::new())).await;
        for (url, says) in [
            (
                format!("http://user:pass@127.0.0.1:{port}/"),
                "user name or password",
            ),
            (
                format!("http://user@127.0.0.1:{port}/"),
                "user name or password",
            ),
            (format!("ftp://127.0.0.1:{port}/"), "https://"),
            ("/relative/path".to_string(), "https://"),
            ("not a url".to_string(), "absolute URL"),
        ] {
            let attempt = deliver(&delivery_to(&url), &loopback()).await;
            assert_eq!(attempt.outcome, Outcome::Failed, "{url}");
            let error = attempt.error.unwrap();
            assert!(error.contains(says), "{url}: {error}");
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_failed_attempt() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let delivery = delivery_to(&format!("http://127.0.0.1:{port}/"));
        let attempt = deliver(&delivery, &loopback()).await;
        assert_eq!(attempt.outcome, Outcome::Failed);
        let error = attempt.error.unwrap();
        assert!(error.contains("cannot connect to 127.0.0.1"), "{error}");
        assert!(!error.contains(&delivery.signature[3..]), "{error}");
    }

    #[tokio::test]
    async fn https_to_a_receiver_without_tls_fails_in_the_handshake() {
        let (port, seen) = receiver(|| answer(200, &[], Bytes::new())).await;
        let attempt = deliver(
            &delivery_to(&format!("https://127.0.0.1:{port}/")),
            &loopback(),
        )
        .await;
        assert_eq!(attempt.outcome, Outcome::Failed);
        let error = attempt.error.unwrap();
        assert!(error.contains("TLS handshake"), "{error}");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_url_is_checked_by_the_same_rules_without_connecting() {
        // Nothing listens on port 9 of loopback: the check passes without connecting.
        assert_eq!(
            check_url("http://127.0.0.1:9/hooks", &loopback()).await,
            Ok(())
        );
        for (url, says) in [
            ("http://127.0.0.1:9/hooks", "non-public address"),
            ("http://169.254.169.254/", "non-public address"),
            (
                "https://user:pass@hooks.example.com/",
                "user name or password",
            ),
            ("ftp://hooks.example.com/", "https://"),
        ] {
            let refused = check_url(url, &public_only()).await.unwrap_err();
            assert!(refused.contains(says), "{url}: {refused}");
        }
    }

    #[test]
    fn a_delivery_never_shows_its_signature_in_debug_output() {
        let delivery = delivery_to("https://hooks.example.com/");
        let debug = format!("{delivery:?}");
        assert!(!debug.contains(&delivery.signature[3..]), "{debug}");
    }
}
