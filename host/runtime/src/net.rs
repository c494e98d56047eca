//! Outbound network guard: the one place that decides which addresses the gateway may
//! connect to on someone else's behalf. Plugin egress ([`crate::egress`]) and
//! webhook delivery (the gateway's `webhooks::delivery`) both go through it, so a rule added
//! here (a new reserved range, a new way to embed an IPv4 address in IPv6) protects both.
//!
//! Why a resolver and not just a check of the URL: a host name is a promise about nothing.
//! A plugin's granted supplier or a reseller's webhook endpoint may resolve to a public
//! address today and to `169.254.169.254` (cloud metadata) or `127.0.0.1` tomorrow (DNS
//! rebinding). So the name is resolved at every connection, every address is checked with
//! [`is_public`], and the caller connects to the checked [`SocketAddr`]s, never to the name
//! (a second lookup could answer differently).
//!
//! The TLS client configuration both use lives here too ([`tls_connector`]): rustls on
//! ring with the Mozilla root set, so HTTPS is verified without a system OpenSSL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// Whether an address is on the public internet. Loopback, private, link-local (which
/// includes cloud metadata at 169.254.169.254), shared (100.64/10), benchmarking
/// (198.18/15), IETF protocol assignments (192.0.0/24), unspecified, multicast, broadcast,
/// documentation, reserved and unique-local addresses are not. IPv6 forms that carry an
/// IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`) are judged by that IPv4 address, so none of them is a way around
/// the IPv4 rules.
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
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded_v4 = |hi: u16, lo: u16| {
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible (deprecated, ::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d).
            if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return s[6..] != [0, 0]
                    && s[6..] != [0, 1]
                    && is_public(IpAddr::V4(embedded_v4(s[6], s[7])));
            }
            // 6to4 (2002:a.b.c.d::/48) routes to the embedded IPv4 address.
            if s[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded_v4(s[1], s[2])));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]))
        }
    }
}

/// Why a destination may not be connected to. The texts name the host and address, never
/// anything from the request; callers add what the operator can do about it, since that
/// differs (a plugin grant, a gateway setting).
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// The name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Unresolvable {
        /// The host name as given.
        host: String,
        /// The resolver's message.
        reason: String,
    },
    /// The name resolved to nothing.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host name as given.
        host: String,
    },
    /// At least one address the name resolves to is not public (see [`is_public`]).
    #[error("{host} resolves to non-public address {ip}")]
    NonPublic {
        /// The host name as given.
        host: String,
        /// The first non-public address in the answer.
        ip: IpAddr,
    },
}

/// Resolve `host` (a name or an IP literal, IPv6 without brackets) and return every
/// address it resolves to, in the resolver's order; never empty. Unless
/// `allow_private_addresses` (an operator's explicit override, for suppliers or receivers
/// on the operator's own network), the whole answer is refused if any address is not
/// public: a mixed answer is a rebinding attempt or a misconfiguration, and either way
/// the next lookup could pick the bad one.
///
/// Connect to the returned addresses, not to `host`: a second lookup is not checked.
pub async fn resolve_vetted(
    host: &str,
    port: u16,
    allow_private_addresses: bool,
) -> Result<Vec<SocketAddr>, AddressError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| AddressError::Unresolvable {
            host: host.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(AddressError::NoAddress {
            host: host.to_string(),
        });
    }
    if !allow_private_addresses && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(AddressError::NonPublic {
            host: host.to_string(),
            ip: bad.ip(),
        });
    }
    Ok(addrs)
}

/// The TLS client for outbound HTTPS: rustls on ring, Mozilla's roots (webpki-roots), safe
/// default protocol versions, no client certificate. Built once and shared.
pub fn tls_connector() -> TlsConnector {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.8",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "::127.0.0.1",
            "::169.254.169.254",
            "::ffff:10.0.0.1",
            "fec0::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "198.20.0.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_private_addresses_are_allowed() {
        let refused = resolve_vetted("localhost", 80, false).await;
        assert!(
            matches!(&refused, Err(AddressError::NonPublic { ip, .. }) if ip.is_loopback()),
            "{refused:?}"
        );
        let allowed = resolve_vetted("localhost", 80, true).await.unwrap();
        assert!(!allowed.is_empty());
        assert!(allowed.iter().all(|a| a.port() == 80));
    }

    #[tokio::test]
    async fn an_ip_literal_is_checked_like_a_resolved_name() {
        for literal in ["169.254.169.254", "10.0.0.1", "::ffff:127.0.0.1"] {
            let refused = resolve_vetted(literal, 80, false).await;
            assert!(
                matches!(refused, Err(AddressError::NonPublic { .. })),
                "{literal}"
            );
        }
        let public = resolve_vetted("93.184.216.34", 443, false).await.unwrap();
        assert_eq!(public, ["93.184.216.34:443".parse().unwrap()]);
    }

    #[test]
    fn a_refusal_names_the_host_and_the_address() {
        let e = AddressError::NonPublic {
            host: "hooks.example.com".into(),
            ip: "169.254.169.254".parse().unwrap(),
        };
        assert_eq!(
            e.to_string(),
            "hooks.example.com resolves to non-public address 169.254.169.254"
        );
    }
}
