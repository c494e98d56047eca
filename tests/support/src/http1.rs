//! The little HTTP/1.1 the loopback test servers speak: one request per connection, read
//! with caps on the head and the body (bad input is an `Err`, never a panic), answered with
//! `connection: close`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The request line and headers together may take at most this many bytes.
const MAX_HEAD: u64 = 32 * 1024;
/// How much of a refused, oversized body is read and dropped before answering.
const MAX_DRAIN: u64 = 1024 * 1024;

/// One request, read in full.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target (path and query), as sent.
    pub target: String,
    /// Header names lowercased, with their values (the last of repeated headers).
    pub headers: BTreeMap<String, String>,
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
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().map_err(|_| ReadError::Gone)?);
    let mut head = (&mut reader).take(MAX_HEAD);
    let request_line = next_line(&mut head)?.ok_or(ReadError::Gone)?;
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(ReadError::Bad(400, "malformed request line"));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let line = next_line(&mut head)?.ok_or(ReadError::Gone)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header line"));
        };
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
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
    if len > max_body {
        // Read (a bounded amount of) what was sent before answering: closing on unread
        // data resets the connection, and the client might never see the 413.
        let _ = std::io::copy(
            &mut reader.take((len as u64).min(MAX_DRAIN)),
            &mut std::io::sink(),
        );
        return Err(ReadError::Bad(413, "request body too large"));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).map_err(|_| ReadError::Gone)?;
    Ok(Request {
        method,
        target,
        headers,
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
pub(crate) fn respond(
    mut stream: &TcpStream,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}
