//! The little HTTP/1.1 the loopback test servers speak, read with caps on the head and the
//! body (bad input is an `Err`, never a panic).
//!
//! Two ways to serve:
//! - [`read_request`] + [`respond`]: one request per connection, answered with
//!   `connection: close` (the webhook receiver and the eKYC provider).
//! - [`spawn_keep_alive`]: a thread per connection that keeps reading requests on it, with
//!   one persistent buffered reader, until the client closes, asks for `connection: close`
//!   or stays idle for [`IDLE`] (the supplier simulators, so a benchmark can tell pooled
//!   from unpooled egress). Every answer carries a `content-length`, never chunks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The request line and headers together may take at most this many bytes.
const MAX_HEAD: u64 = 32 * 1024;
/// How much of a refused, oversized body is read and dropped before answering.
const MAX_DRAIN: u64 = 1024 * 1024;
/// How long a kept-alive connection may wait for its next request before the server closes
/// it: long enough for a pooled connection to survive a benchmark's pauses, short enough
/// that abandoned connections do not pile up threads.
const IDLE: Duration = Duration::from_secs(30);
/// How long a request, once its first byte arrived, may take to arrive in full.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One request, read in full.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target (path and query), as sent.
    pub target: String,
    /// The protocol version from the request line (`HTTP/1.1`), `""` when absent.
    pub version: String,
    /// Header names lowercased, with their values (the last of repeated headers).
    pub headers: BTreeMap<String, String>,
    /// Every header line in arrival order, names lowercased, repeated ones included.
    pub header_list: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Request {
    /// The path, without the query; from an absolute-form target
    /// (`http://host:port/path`, which servers must accept and the gateway's egress
    /// sends) too.
    pub fn path(&self) -> &str {
        let target = self.target.as_str();
        let origin_form = ["http://", "https://"]
            .iter()
            .find_map(|scheme| {
                let rest = target.get(..scheme.len())?;
                rest.eq_ignore_ascii_case(scheme)
                    .then(|| &target[scheme.len()..])
            })
            .map(|rest| rest.find('/').map(|i| &rest[i..]).unwrap_or("/"))
            .unwrap_or(target);
        origin_form.split('?').next().unwrap_or_default()
    }

    /// The raw query string (after `?`, before any `#`), `""` when there is none.
    pub fn query(&self) -> &str {
        let Some((_, query)) = self.target.split_once('?') else {
            return "";
        };
        query.split('#').next().unwrap_or_default()
    }

    /// Whether the client wants the connection closed after this request: it said
    /// `connection: close`, or speaks HTTP/1.0 without asking for keep-alive.
    pub fn wants_close(&self) -> bool {
        let connection = self
            .headers
            .get("connection")
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default();
        let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
        if self.version.eq_ignore_ascii_case("HTTP/1.0") {
            !has("keep-alive")
        } else {
            has("close")
        }
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection closed or timed out: nobody to answer.
    Gone,
    /// The request is unacceptable: answer this status, with this message.
    Bad(u16, &'static str),
}

/// Read one request from `stream`, refusing a body over `max_body` bytes (`413`).
pub(crate) fn read_request(stream: &TcpStream, max_body: usize) -> Result<Request, ReadError> {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut reader = BufReader::new(stream.try_clone().map_err(|_| ReadError::Gone)?);
    read_from(&mut reader, stream, max_body)
}

/// Read one request from `reader` (answering `expect: 100-continue` on `stream`), refusing
/// a body over `max_body` bytes (`413`). Whatever `reader` buffered past this request stays
/// there for the next one.
fn read_from(
    reader: &mut impl BufRead,
    mut stream: &TcpStream,
    max_body: usize,
) -> Result<Request, ReadError> {
    let mut head = (&mut *reader).take(MAX_HEAD);
    let request_line = next_line(&mut head)?.ok_or(ReadError::Gone)?;
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(ReadError::Bad(400, "malformed request line"));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let version = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    let mut header_list = Vec::new();
    loop {
        let line = next_line(&mut head)?.ok_or(ReadError::Gone)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header line"));
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        header_list.push((name.clone(), value.clone()));
        headers.insert(name, value);
    }
    if headers.contains_key("transfer-encoding") {
        return Err(ReadError::Bad(
            411,
            "send a content-length, not a transfer-encoding",
        ));
    }
    let len = match headers.get("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Bad(400, "malformed content-length"))?,
    };
    let expects_continue = headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if len > max_body {
        // Read (a bounded amount of) what was sent before answering: closing on unread
        // data resets the connection, and the client might never see the 413. A client
        // waiting for `100 Continue` sends nothing to read.
        if !expects_continue {
            let _ = std::io::copy(
                &mut reader.take((len as u64).min(MAX_DRAIN)),
                &mut std::io::sink(),
            );
        }
        return Err(ReadError::Bad(413, "request body too large"));
    }
    if expects_continue && len > 0 {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).map_err(|_| ReadError::Gone)?;
    Ok(Request {
        method,
        target,
        version,
        headers,
        header_list,
        body,
    })
}

/// The next line of the head without its line ending; `None` at the end of the stream.
fn next_line(head: &mut impl BufRead) -> Result<Option<String>, ReadError> {
    let mut line = String::new();
    match head.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) if !line.ends_with('\n') => Err(ReadError::Bad(431, "request head too large")),
        Ok(_) => Ok(Some(line.trim_end_matches(['\r', '\n']).to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(ReadError::Bad(400, "request head is not UTF-8"))
        }
        Err(_) => Err(ReadError::Gone),
    }
}

/// Answer `status` with `body` (and `content-type`, if given), then close.
pub(crate) fn respond(stream: &TcpStream, status: u16, content_type: Option<&str>, body: &[u8]) {
    let reply = Reply {
        status,
        headers: Vec::new(),
        content_type: content_type.map(str::to_string),
        body: body.to_vec(),
        then: None,
    };
    write_reply(stream, &reply, false, true);
}

/// The reason phrase for `status`.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// An answer to one request on a kept-alive connection.
pub(crate) struct Reply {
    /// The status.
    pub status: u16,
    /// Extra headers (`content-type`, `content-length` and `connection` are written
    /// from the other fields).
    pub headers: Vec<(String, String)>,
    /// The `content-type`, if any.
    pub content_type: Option<String>,
    /// The body (not sent to a `HEAD` request; its length is).
    pub body: Vec<u8>,
    /// Run once the answer is written (to post a webhook only after the client has the
    /// answer it describes); it should be quick, spawning a thread for anything slow.
    pub then: Option<Box<dyn FnOnce() + Send>>,
}

impl Reply {
    /// `status` with `body` as `application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            content_type: Some("application/json".into()),
            body: body.to_string().into_bytes(),
            then: None,
        }
    }

    /// `status` with a `text/plain` `body`.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            content_type: Some("text/plain".into()),
            body: body.as_bytes().to_vec(),
            then: None,
        }
    }

    /// The same answer with header `name: value` added.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The same answer, running `then` once it is written.
    pub fn then(mut self, then: impl FnOnce() + Send + 'static) -> Reply {
        self.then = Some(Box::new(then));
        self
    }
}

/// Write `reply` in one piece (head and body together, so no small write waits on a
/// delayed ACK), without the body when `head_only`, saying `connection: close` when `close`.
fn write_reply(mut stream: &TcpStream, reply: &Reply, head_only: bool, close: bool) {
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if let Some(ct) = &reply.content_type {
        out.push_str(&format!("content-type: {ct}\r\n"));
    }
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
    out.push_str(if close {
        "connection: close\r\n\r\n"
    } else {
        "connection: keep-alive\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&reply.body);
    }
    let _ = stream.write_all(&bytes);
    let _ = stream.flush();
}

/// What a kept-alive server does with its connections and requests.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answer one request, which arrived on accepted connection number `connection`.
    fn handle(&self, request: &Request, connection: u64) -> Reply;

    /// Answer a request that could not be read (the connection is closed after it).
    fn unreadable(&self, status: u16, message: &str) -> Reply {
        Reply::text(status, message)
    }

    /// A connection was accepted: its number (to count them and tell them apart).
    fn accepted(&self) -> u64 {
        0
    }
}

/// A loopback listener on a free port, and that port.
pub(crate) fn bind_loopback() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("a bound address").port();
    (listener, port)
}

/// Accept connections on `listener` for as long as the process lives, each on its own
/// thread, serving every request on it with `handler` (bodies over `max_body` get `413`).
pub(crate) fn spawn_keep_alive<H: Handler>(
    listener: TcpListener,
    max_body: usize,
    handler: Arc<H>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let connection = handler.accepted();
            let handler = handler.clone();
            std::thread::spawn(move || serve_keep_alive(&stream, connection, max_body, &*handler));
        }
    });
}

/// Serve requests on `stream` (accepted connection number `connection`) one after another
/// until the client closes, asks to close, sends something unreadable, or stays idle for
/// [`IDLE`].
pub(crate) fn serve_keep_alive(
    stream: &TcpStream,
    connection: u64,
    max_body: usize,
    handler: &impl Handler,
) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    loop {
        let _ = stream.set_read_timeout(Some(IDLE));
        match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let request = match read_from(&mut reader, stream, max_body) {
            Ok(request) => request,
            Err(ReadError::Gone) => return,
            Err(ReadError::Bad(status, message)) => {
                return write_reply(stream, &handler.unreadable(status, message), false, true);
            }
        };
        let close = request.wants_close();
        let mut reply = handler.handle(&request, connection);
        write_reply(
            stream,
            &reply,
            request.method.eq_ignore_ascii_case("HEAD"),
            close,
        );
        if let Some(then) = reply.then.take() {
            then();
        }
        if close {
            return;
        }
    }
}
