//! A small HTTP/1.1 client for the admin API: one request per connection (an operator
//! runs one command at a time), explicit timeouts, a cap on what it reads, and problem
//! details turned into `title: detail` errors.
//!
//! Plain `http://` only: the gateway listens on loopback with TLS terminated in front, so
//! `simgate admin` runs on the gateway's host against its listener.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Time to open the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the whole answer. A credit waits for the store to flush; nothing the admin
/// API does takes near this long.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read: a page of the audit log is far below it.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Where the gateway is, and the key to call it with.
pub struct AdminClient {
    /// `host:port`, to connect to.
    address: String,
    /// The `Host` header.
    authority: String,
    /// A path the gateway is mounted under (empty for none), without a trailing `/`.
    prefix: String,
    /// `Bearer <admin key>`.
    authorization: HeaderValue,
}

/// A successful answer.
pub struct Answer {
    /// Whether the gateway replayed an earlier result (`idempotent-replayed: true`).
    pub replayed: bool,
    /// The JSON body (`Null` when empty).
    pub body: Value,
}

impl AdminClient {
    /// A client for the gateway at `url` (`http://host:port`) with admin key `key`.
    pub fn new(url: &str, key: &str) -> anyhow::Result<AdminClient> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL like http://127.0.0.1:8080"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => anyhow::bail!(
                "https is not supported: run `simgate admin` on the gateway's host against \
                 its own listener (http://127.0.0.1:PORT); TLS is terminated in front of it"
            ),
            _ => anyhow::bail!("{url:?} is not a URL like http://127.0.0.1:8080"),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} names no host"))?;
        let address = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let mut authorization = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| anyhow::anyhow!("the admin key holds characters a key cannot have"))?;
        authorization.set_sensitive(true);
        Ok(AdminClient {
            address,
            authority: authority.to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
            authorization,
        })
    }

    /// `GET path` (with its query).
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(Method::GET, path, None, None).await
    }

    /// `POST path` with a JSON body, and an `Idempotency-Key` when given.
    pub async fn post(
        &self,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let body = body.map(|b| serde_json::to_vec(b).expect("a JSON value serialises"));
        self.send(Method::POST, path, body, idempotency_key).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(http::header::HOST, &self.authority)
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        let (status, replayed, bytes) = tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(req))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "http://{} did not answer within {} s",
                    self.authority,
                    ANSWER_TIMEOUT.as_secs()
                )
            })??;
        if !status.is_success() {
            return Err(problem(status, &bytes));
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).context("the gateway's answer is not JSON")?
        };
        Ok(Answer { replayed, body })
    }

    /// Connect, send, read the answer (capped).
    async fn exchange(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, bool, Bytes)> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.address))?
        .with_context(|| {
            format!(
                "cannot reach http://{} (is the gateway running?)",
                self.authority
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("opening the HTTP connection")?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status();
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, replayed, bytes))
    }
}

/// An error answer as `title: detail` (problem details), or its status when it is none.
fn problem(status: StatusCode, bytes: &[u8]) -> anyhow::Error {
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|p| p[name].as_str())
            .map(str::to_string)
    };
    match (field("title"), field("detail")) {
        (Some(title), Some(detail)) => {
            // Admin routes answer 404 to any key that is not an admin key.
            let hint = if field("code").as_deref() == Some("not_found")
                && detail.starts_with("no resource at")
            {
                " (is the key an admin key?)"
            } else {
                ""
            };
            anyhow::anyhow!("{title}: {detail}{hint}")
        }
        _ => anyhow::anyhow!("the gateway answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_as_title_and_detail() {
        let body = br#"{"type":"x","title":"Not found","status":404,"code":"not_found","detail":"no such reseller","request_id":"r"}"#;
        let e = problem(StatusCode::NOT_FOUND, body).to_string();
        assert_eq!(e, "Not found: no such reseller");
        let e = problem(StatusCode::BAD_GATEWAY, b"<html>").to_string();
        assert_eq!(e, "the gateway answered 502 Bad Gateway");
    }

    #[test]
    fn only_plain_http_urls_are_taken() {
        let c = AdminClient::new("http://127.0.0.1:8080/", "sgk_live_x").unwrap();
        assert_eq!(
            (c.address.as_str(), c.prefix.as_str()),
            ("127.0.0.1:8080", "")
        );
        let c = AdminClient::new("http://[::1]/gw", "sgk_live_x").unwrap();
        assert_eq!((c.address.as_str(), c.prefix.as_str()), ("[::1]:80", "/gw"));
        for bad in [
            "https://example.test",
            "127.0.0.1:8080",
            "ftp://x",
            "not a url",
        ] {
            assert!(AdminClient::new(bad, "sgk_live_x").is_err(), "{bad}");
        }
        assert!(AdminClient::new("http://127.0.0.1", "bad\nkey").is_err());
    }
}
