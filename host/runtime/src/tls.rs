//! TLS for egress: the gateway's one TLS client ([`crate::net::tls_connector`]: rustls on
//! ring with the Mozilla root set), its errors as `wasi:http` error codes.

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use wasmtime_wasi_http::Error as HttpError;

/// Wrap an already-connected (and address-checked) TCP stream in TLS for `host`.
pub async fn connect(host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HttpError> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| HttpError::TlsProtocolError)?;
    crate::net::tls_connector()
        .connect(name, tcp)
        .await
        .map_err(HttpError::Tls)
}
