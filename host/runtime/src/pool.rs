//! Pooled egress: one keep-alive connection pool per plugin generation, so a plugin that
//! calls its supplier for every order does not pay a TCP (and TLS) handshake each time.
//!
//! The pool is hyper-util's client; what is ours is its connector, which gives every *new*
//! connection the same treatment as before pooling: the host name is resolved and every
//! address checked ([`crate::net::resolve_vetted`]: no loopback, private, link-local or
//! metadata address unless the operator granted it), the connection goes to the checked
//! address (no second lookup), connect time is capped, and `https` is wrapped in the
//! gateway's TLS client. A pooled connection was checked when it was opened and stays
//! connected to that address, so reuse cannot be steered elsewhere by DNS.
//!
//! Pools are per plugin generation (never shared between plugins: one plugin's grant to
//! reach a private address must not lend another plugin a connection there) and idle
//! connections close after [`IDLE_TIMEOUT`]. `egress_idle_per_host = 0` turns reuse off.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use crate::net::AddressError;

/// How long an idle pooled connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a new connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The address check refused the destination (reported to the plugin as denied).
    Denied(String),
    /// The network or TLS failed.
    Http(HttpError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Denied(why) => write!(f, "denied: {why}"),
            ConnectError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Opens checked connections for the pool.
#[derive(Clone)]
pub struct CheckedConnector {
    allow_private_addresses: bool,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for CheckedConnector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tls = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .ok_or_else(|| ConnectError::Denied("request has no host".into()))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let addr = vetted(&host, port, this.allow_private_addresses).await?;
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| ConnectError::Http(HttpError::ConnectionTimeout))?
                .map_err(|e| {
                    ConnectError::Http(match e.kind() {
                        io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                        _ => HttpError::Connect(e),
                    })
                })?;
            let _ = tcp.set_nodelay(true);
            let conn = if tls {
                Conn::Tls(Box::new(
                    super::tls::connect(&host, tcp)
                        .await
                        .map_err(ConnectError::Http)?,
                ))
            } else {
                Conn::Plain(tcp)
            };
            Ok(TokioIo::new(conn))
        })
    }
}

/// The first address of `host` if every one it resolves to may be reached.
async fn vetted(host: &str, port: u16, allow_private: bool) -> Result<SocketAddr, ConnectError> {
    let addrs = crate::net::resolve_vetted(host, port, allow_private)
        .await
        .map_err(|e| {
            ConnectError::Denied(match e {
                AddressError::NonPublic { .. } => {
                    format!("{e}; grant allow_private_addresses to permit")
                }
                e => e.to_string(),
            })
        })?;
    addrs
        .first()
        .copied()
        .ok_or_else(|| ConnectError::Denied(format!("{host} resolves to no address")))
}

/// A pooled connection: plain TCP or TLS over it.
pub enum Conn {
    /// `http`.
    Plain(TcpStream),
    /// `https`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One plugin generation's pooled client.
pub type EgressClient = Client<CheckedConnector, WasiBody>;

/// A client whose new connections are checked with `allow_private_addresses` and made
/// within `connect_timeout`, keeping at most `idle_per_host` idle connections per
/// destination (0: none, a connection per request).
pub fn client(
    allow_private_addresses: bool,
    connect_timeout: Duration,
    idle_per_host: usize,
) -> EgressClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(idle_per_host)
        .build(CheckedConnector {
            allow_private_addresses,
            connect_timeout,
        })
}

/// A pool error as what the plugin is told: `Err(reason)` for a denial (recorded as
/// `egress_denied`), else the `wasi:http` error code.
pub fn classify(error: hyper_util::client::legacy::Error) -> Result<HttpError, String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Denied(why) => Err(why.clone()),
                ConnectError::Http(e) => Ok(copy(e)),
            };
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return Ok(if h.is_timeout() {
                HttpError::HttpResponseTimeout
            } else if h.is_incomplete_message() {
                HttpError::HttpResponseIncomplete
            } else {
                HttpError::HttpProtocolError
            });
        }
        source = e.source();
    }
    Ok(if error.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::HttpProtocolError
    })
}

/// The guest-visible code of a connect error (the error itself stays in the pool's).
fn copy(e: &HttpError) -> HttpError {
    match e {
        HttpError::ConnectionTimeout => HttpError::ConnectionTimeout,
        HttpError::ConnectionRefused | HttpError::Connect(_) => HttpError::ConnectionRefused,
        HttpError::Tls(_) | HttpError::TlsProtocolError => HttpError::TlsProtocolError,
        _ => HttpError::InternalError(None),
    }
}
