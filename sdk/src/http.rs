//! A small blocking HTTP client over the `wasi:http/outgoing-handler` import.
//!
//! ```ignore
//! use simgate_sdk::{http, secret_ref};
//!
//! let plans: Vec<Plan> = http::Request::get("https://api.acme.test/v1/plans")
//!     .header("authorization", format!("Bearer {}", secret_ref("ACME_TOKEN")))
//!     .send()?           // HttpError converts into SupplierError::Unavailable
//!     .error_for_status()?
//!     .json()?;
//! ```
//!
//! The host links `wasi:http` only when the operator granted the plugin at least one
//! outbound destination (`[requests] outbound` in `plugin.toml`), and refuses any request to
//! a destination outside the grant: that surfaces here as [`HttpError::Denied`]. Time limits
//! are the host's (the whole call runs under its deadline), so the client sets none.
//!
//! Each call blocks the plugin until the response body is read in full, up to
//! [`DEFAULT_MAX_BODY`] unless raised with [`Request::max_body`].

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::SupplierError;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, OutgoingBody, OutgoingRequest, Scheme, http_error_code,
};
use crate::bindings::wasi::io::streams::StreamError;

pub use crate::bindings::wasi::http::types::Method;

/// Responses larger than this fail with [`HttpError::BodyTooLarge`]: a supplier answer
/// that big is a bug, and the plugin's memory is capped by the host anyway.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// `wasi:io` output streams accept at most 4096 bytes per blocking write.
const WRITE_CHUNK: usize = 4096;
/// How much to ask for per read of the response body.
const READ_CHUNK: u64 = 64 * 1024;

/// An outbound HTTP request under construction.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    max_body: usize,
    /// A failure while building (e.g. JSON encoding), reported by `send` so that the
    /// builder methods can chain.
    deferred: Option<HttpError>,
}

impl Request {
    /// A request with `method` to `url` (`http://` or `https://`).
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            deferred: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }

    /// A `PUT` request.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::Put, url)
    }

    /// A `DELETE` request.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new(Method::Delete, url)
    }

    /// Add a header (repeatable). A value may contain `${secret:NAME}` placeholders.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the raw request body.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = bytes.into();
        self
    }

    /// Append `key=value` pairs to the URL's query, percent-encoded.
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        if !encoded.is_empty() {
            self.url
                .push(if self.url.contains('?') { '&' } else { '?' });
            self.url.push_str(&encoded);
        }
        self
    }

    /// Send, map a non-2xx status to the [`SupplierError`] the host acts on, and decode
    /// the JSON body: the whole of a typical supplier call.
    pub fn send_json<T: DeserializeOwned>(self) -> Result<T, SupplierError> {
        Ok(self.send()?.error_for_supplier()?.json()?)
    }

    /// Set a JSON body and `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.body = bytes,
            Err(err) => self.deferred = Some(HttpError::Encode(err.to_string())),
        }
        self.header("content-type", "application/json")
    }

    /// Raise or lower the response body cap (default [`DEFAULT_MAX_BODY`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Send the request and read the whole response, blocking until done.
    ///
    /// Any status is a successful response here; see [`Response::error_for_status`].
    pub fn send(self) -> Result<Response, HttpError> {
        if let Some(err) = self.deferred {
            return Err(err);
        }
        let target = Target::parse(&self.url)?;

        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|err| HttpError::InvalidHeader(format!("{name}: {err:?}")))?;
        }
        // A known length, not chunked encoding: many supplier APIs refuse chunked bodies.
        let has_length = self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        if !self.body.is_empty() && !has_length {
            headers
                .append("content-length", self.body.len().to_string().as_bytes())
                .map_err(|err| HttpError::InvalidHeader(format!("content-length: {err:?}")))?;
        }
        let request = OutgoingRequest::new(headers);
        let invalid = |what: &str| HttpError::InvalidUrl(format!("{what} in {}", self.url));
        request
            .set_method(&self.method)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&target.scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(&target.authority))
            .map_err(|()| invalid("authority"))?;
        request
            .set_path_with_query(Some(&target.path_and_query))
            .map_err(|()| invalid("path"))?;
        let outgoing_body = request
            .body()
            .map_err(|()| HttpError::Protocol("request body already taken".into()))?;

        // Hand the request over before writing the body: the host streams the body, and a
        // body larger than its buffer would block forever if nobody were reading it yet.
        let future = outgoing_handler::handle(request, None)
            .map_err(|code| HttpError::from_code(code, &target))?;
        write_body(&outgoing_body, &self.body, &target)?;
        OutgoingBody::finish(outgoing_body, None)
            .map_err(|code| HttpError::from_code(code, &target))?;

        let response = loop {
            match future.get() {
                Some(Ok(Ok(response))) => break response,
                Some(Ok(Err(code))) => return Err(HttpError::from_code(code, &target)),
                Some(Err(())) => {
                    return Err(HttpError::Protocol("response already taken".into()));
                }
                None => future.subscribe().block(),
            }
        };

        let status = response.status();
        let headers = {
            // The headers are a child resource: drop them before the response.
            let fields = response.headers();
            fields
                .entries()
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                .collect()
        };
        let incoming_body = response
            .consume()
            .map_err(|()| HttpError::Protocol("response body already taken".into()))?;
        let body = read_body(&incoming_body, self.max_body, &target)?;
        drop(incoming_body);

        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Write `bytes` to the request body in the chunks `wasi:io` accepts.
fn write_body(body: &OutgoingBody, bytes: &[u8], target: &Target) -> Result<(), HttpError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let stream = body
        .write()
        .map_err(|()| HttpError::Protocol("request body stream already taken".into()))?;
    for chunk in bytes.chunks(WRITE_CHUNK) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|err| HttpError::from_stream(err, target))?;
    }
    // The stream is a child of the body: dropped here, before `finish` consumes the body.
    Ok(())
}

/// Read the whole response body, failing once it exceeds `max` bytes.
fn read_body(body: &IncomingBody, max: usize, target: &Target) -> Result<Vec<u8>, HttpError> {
    let stream = body
        .stream()
        .map_err(|()| HttpError::Protocol("response body stream already taken".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > max {
                    return Err(HttpError::BodyTooLarge { limit: max });
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(err) => return Err(HttpError::from_stream(err, target)),
        }
    }
}

/// A response read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Header names (as the host reports them, normally lower case) and values (invalid
    /// UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `Ok(self)` for a 2xx status, else [`HttpError::Status`] with the start of the body.
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if self.is_success() {
            return Ok(self);
        }
        let excerpt: String = self.text().chars().take(200).collect();
        Err(HttpError::Status {
            status: self.status,
            body: excerpt,
            retry_after: self
                .header("retry-after")
                .and_then(|v| v.trim().parse().ok()),
        })
    }

    /// `Ok(self)` for a 2xx status, else the [`SupplierError`] the host should act on (see
    /// [`HttpError::Status`]'s conversion): a 429 keeps its `Retry-After`, a 4xx is not
    /// retried, a 5xx is.
    pub fn error_for_supplier(self) -> Result<Self, SupplierError> {
        self.error_for_status().map_err(SupplierError::from)
    }

    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body decoded as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|err| HttpError::Decode(err.to_string()))
    }
}

/// Why an HTTP exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not `http(s)://authority/path`.
    InvalidUrl(String),
    /// A header name or value was refused (syntax, or a header the host forbids).
    InvalidHeader(String),
    /// The host refused the destination: it is not among the operator's outbound grants
    /// (`wasi:http` error-code `HTTP-request-denied`). Holds `scheme://authority`.
    Denied(String),
    /// The exchange failed on the way (DNS, connection, TLS, timeout...): the
    /// `wasi:http` error code, and the destination.
    Transport {
        /// `scheme://authority` of the request.
        target: String,
        /// The `wasi:http` error code, as debug text.
        code: String,
    },
    /// The response body was larger than the cap.
    BodyTooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// The response status was not 2xx (from [`Response::error_for_status`]).
    Status {
        /// The status code.
        status: u16,
        /// The first 200 characters of the body.
        body: String,
        /// `Retry-After` in seconds, when the response had one.
        retry_after: Option<u32>,
    },
    /// The request body could not be encoded as JSON.
    Encode(String),
    /// The response body was not the JSON expected.
    Decode(String),
    /// A `wasi:http` resource was used out of order (a bug in this client).
    Protocol(String),
}

impl HttpError {
    fn from_code(code: ErrorCode, target: &Target) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied(target.to_string()),
            code => HttpError::Transport {
                target: target.to_string(),
                code: format!("{code:?}"),
            },
        }
    }

    fn from_stream(err: StreamError, target: &Target) -> Self {
        match err {
            StreamError::Closed => HttpError::Transport {
                target: target.to_string(),
                code: "stream closed".into(),
            },
            StreamError::LastOperationFailed(io) => match http_error_code(&io) {
                Some(code) => HttpError::from_code(code, target),
                None => HttpError::Transport {
                    target: target.to_string(),
                    code: io.to_debug_string(),
                },
            },
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            HttpError::InvalidHeader(why) => write!(f, "invalid header {why}"),
            HttpError::Denied(target) => write!(
                f,
                "request to {target} denied by the host: not a granted outbound destination \
                 (request it under [requests] outbound in plugin.toml)"
            ),
            HttpError::Transport { target, code } => {
                write!(f, "request to {target} failed: {code}")
            }
            HttpError::BodyTooLarge { limit } => {
                write!(f, "response body larger than {limit} bytes")
            }
            HttpError::Status { status, body, .. } => write!(f, "HTTP status {status}: {body}"),
            HttpError::Encode(why) => write!(f, "cannot encode request body: {why}"),
            HttpError::Decode(why) => write!(f, "unexpected response body: {why}"),
            HttpError::Protocol(why) => write!(f, "wasi:http misuse: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// What the host should do about an HTTP failure:
///
/// - 429: `rate-limited`, after `Retry-After` seconds (delta-seconds; 30 when absent or a
///   date), so the host waits at least that long;
/// - 401 and 408: `unavailable` (a token to refresh, a slow moment: worth a retry);
/// - 403: `rejected` (this account may not do this: final);
/// - any other 4xx: `invalid-request` (the request is wrong: retrying cannot help);
/// - 5xx, and failures on the way (DNS, connection, TLS, timeout): `unavailable`, which the
///   host retries or fails over;
/// - a request the plugin could not build, or a body it could not read: `invalid-request`
///   and `unavailable` respectively.
impl From<HttpError> for SupplierError {
    fn from(err: HttpError) -> Self {
        match &err {
            HttpError::Status {
                status: 429,
                retry_after,
                ..
            } => SupplierError::RateLimited(retry_after.unwrap_or(DEFAULT_RETRY_AFTER_SECS)),
            HttpError::Status {
                status: 401 | 408, ..
            } => SupplierError::Unavailable(err.to_string()),
            HttpError::Status { status: 403, .. } => SupplierError::Rejected(err.to_string()),
            HttpError::Status {
                status: 400..=499, ..
            } => SupplierError::InvalidRequest(err.to_string()),
            HttpError::InvalidUrl(_) | HttpError::InvalidHeader(_) | HttpError::Encode(_) => {
                SupplierError::InvalidRequest(err.to_string())
            }
            _ => SupplierError::Unavailable(err.to_string()),
        }
    }
}

/// The wait a 429 without a usable `Retry-After` asks for.
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 30;

/// The parts of a URL `wasi:http` wants separately.
#[derive(Debug, Clone)]
struct Target {
    scheme: Scheme,
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let invalid = |why: &str| HttpError::InvalidUrl(format!("{why}: {url}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid("scheme is not http or https")),
        };
        // A fragment never goes on the wire.
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(split);
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the URL (use a header and secret_ref)",
            ));
        }
        let path_and_query = match path_and_query {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Target {
            scheme,
            authority: authority.to_string(),
            path_and_query,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match &self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Other(other) => other,
        };
        write!(f, "{scheme}://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, String) {
        let target = Target::parse(url).unwrap();
        (target.to_string(), target.path_and_query)
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            parts("https://api.acme.test/v1/plans?page=2#top"),
            ("https://api.acme.test".into(), "/v1/plans?page=2".into())
        );
        assert_eq!(
            parts("http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080".into(), "/".into())
        );
        assert_eq!(
            parts("HTTP://h:1?x=1"),
            ("http://h:1".into(), "/?x=1".into())
        );
    }

    #[test]
    fn urls_without_http_scheme_or_with_credentials_are_refused() {
        for url in ["ftp://x/", "no-scheme", "http:///path", "https://u:p@x/"] {
            assert!(
                matches!(Target::parse(url), Err(HttpError::InvalidUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn http_errors_become_unavailable() {
        let err = SupplierError::from(HttpError::Denied("http://x:1".into()));
        assert!(matches!(err, SupplierError::Unavailable(msg) if msg.contains("denied")));
    }
}
