//! The API request log (P10: kept 30 days): one record per request with its time, route
//! template, method, status, API key id, client address truncated to its network (/24
//! for IPv4, /48 for IPv6) and latency. Never a body, a query value or a path parameter:
//! the route template names what was called without naming whom it concerned.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::ids::KeyId;

/// One request, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Id; its time is when the request ended.
    pub id: Ulid,
    /// Method.
    pub method: String,
    /// The route template, e.g. `/v1/orders/{id}` (`other` for no route).
    pub route: String,
    /// Status answered.
    pub status: u16,
    /// The API key, once authenticated. (Never skipped when serialising: records are
    /// stored in postcard, which has no field names to skip by.)
    pub key: Option<KeyId>,
    /// The client's network, e.g. `203.0.113.0/24`.
    pub client: String,
    /// Time to answer, µs.
    pub micros: u64,
}

/// `addr` cut to its network: /24 for IPv4 (and IPv4-mapped IPv6), /48 for IPv6, written
/// with the prefix length. What the logs keep of a client address.
pub fn truncated(addr: IpAddr) -> String {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            format!("{net}/48")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_cut_to_their_network() {
        assert_eq!(truncated("203.0.113.77".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(
            truncated("2001:db8:abcd:12:1:2:3:4".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
        assert_eq!(
            truncated("::ffff:198.51.100.9".parse().unwrap()),
            "198.51.100.0/24"
        );
    }
}
