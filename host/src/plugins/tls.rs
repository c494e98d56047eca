//! TLS for egress: rustls on ring with the Mozilla root set, so supplier APIs are reached
//! over verified HTTPS without a system OpenSSL.

use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use wasmtime_wasi_http::Error as HttpError;

fn connector() -> TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    TlsConnector::from(config.clone())
}

/// Wrap an already-connected (and address-checked) TCP stream in TLS for `host`.
pub async fn connect(host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HttpError> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| HttpError::TlsProtocolError)?;
    connector().connect(name, tcp).await.map_err(HttpError::Tls)
}
