//! Typed identifiers. Every id is a ULID (sortable by creation time) shown with a short
//! prefix, so a reseller pasting an id into a ticket also says what it is.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// A new ULID, later than every one this process made before (ids made in one
/// millisecond sort in the order they were made, so newest-first lists hold to it).
fn next_ulid() -> Ulid {
    static IDS: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    let generated = IDS.lock().unwrap_or_else(|p| p.into_inner()).generate();
    // Only 2^80 ids in one millisecond exhaust it; a random one is then good enough.
    generated.unwrap_or_else(|_| Ulid::new())
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Ulid);

        impl $name {
            /// A new id for now, later than every id this process made before.
            pub fn new() -> $name {
                $name(next_ulid())
            }

            /// The 16 big-endian bytes; they sort like the ids.
            pub fn to_bytes(self) -> [u8; 16] {
                self.0.to_bytes()
            }

            /// The id whose [`to_bytes`](Self::to_bytes) these are.
            pub fn from_bytes(bytes: [u8; 16]) -> $name {
                $name(Ulid::from_bytes(bytes))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "_{}"), self.0.to_string().to_lowercase())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                let rest = s
                    .strip_prefix(concat!($prefix, "_"))
                    .ok_or(InvalidId)?;
                // 26 base32 digits hold 130 bits; the ulid crate drops the top two, so a
                // first digit above 7 would make a second text for an existing id.
                if !rest.starts_with(|c: char| ('0'..='7').contains(&c)) {
                    return Err(InvalidId);
                }
                Ulid::from_string(rest).map($name).map_err(|_| InvalidId)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                // The prefix, then the ULID in Crockford base32, lowercase (as `Display` writes it).
                schemars::json_schema!({
                    "type": "string",
                    "pattern": concat!("^", $prefix, "_[0-9a-hjkmnp-tv-z]{26}$"),
                })
            }
        }
    };
}

prefixed_id!(
    /// A reseller account.
    ResellerId, "rsl"
);
prefixed_id!(
    /// An order.
    OrderId, "ord"
);
prefixed_id!(
    /// An API key (not the secret: its public identifier).
    KeyId, "key"
);
prefixed_id!(
    /// An event told to a reseller (a webhook delivery's `webhook-id`).
    EventId, "evt"
);
prefixed_id!(
    /// A reseller's webhook endpoint.
    EndpointId, "we"
);
prefixed_id!(
    /// One attempt to deliver an event to an endpoint.
    AttemptId, "wa"
);

prefixed_id!(
    /// An order's identity verification (eKYC) session: one per order, so it shares the
    /// order's ULID.
    EkycSessionId, "eks"
);
prefixed_id!(
    /// One event in the consent ledger.
    ConsentId, "csn"
);

impl EkycSessionId {
    /// The session of order `order`.
    pub fn of(order: OrderId) -> EkycSessionId {
        EkycSessionId(order.0)
    }

    /// The order this session verifies.
    pub fn order(self) -> OrderId {
        OrderId(self.0)
    }
}

/// A string is not an id of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id")]
pub struct InvalidId;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_in_one_millisecond_keep_their_order() {
        let ids: Vec<OrderId> = (0..1000).map(|_| OrderId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ids_round_trip_with_their_prefix() {
        let id = OrderId::new();
        let text = id.to_string();
        assert!(text.starts_with("ord_"));
        assert_eq!(text.parse::<OrderId>().unwrap(), id);
        assert!(text.replace("ord_", "rsl_").parse::<OrderId>().is_err());
        assert!("ord_nope".parse::<OrderId>().is_err());
    }
}

/// Properties of ids as the API shows them and takes them back (path parameters and
/// `starting_after` cursors): they round-trip, sort as they are made, and nothing else
/// parses as one.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_id_round_trips_through_its_text_and_bytes(n in any::<u128>()) {
            let id = OrderId(Ulid(n));
            let text = id.to_string();
            prop_assert_eq!(text.parse::<OrderId>(), Ok(id));
            prop_assert_eq!(OrderId::from_bytes(id.to_bytes()), id);
            // The schema's pattern: prefix, then 26 lowercase Crockford base32 characters.
            let rest = text.strip_prefix("ord_").unwrap();
            prop_assert_eq!(rest.len(), 26);
            prop_assert!(rest.bytes().all(|b| b"0123456789abcdefghjkmnpqrstvwxyz".contains(&b)));
            // A client that upper-cases the id still names the same one.
            prop_assert_eq!(format!("ord_{}", rest.to_uppercase()).parse::<OrderId>(), Ok(id));
            // Every kind reads its own text back.
            prop_assert_eq!(ResellerId(Ulid(n)).to_string().parse::<ResellerId>(), Ok(ResellerId(Ulid(n))));
            prop_assert_eq!(KeyId(Ulid(n)).to_string().parse::<KeyId>(), Ok(KeyId(Ulid(n))));
            prop_assert_eq!(EventId(Ulid(n)).to_string().parse::<EventId>(), Ok(EventId(Ulid(n))));
            prop_assert_eq!(EndpointId(Ulid(n)).to_string().parse::<EndpointId>(), Ok(EndpointId(Ulid(n))));
            prop_assert_eq!(AttemptId(Ulid(n)).to_string().parse::<AttemptId>(), Ok(AttemptId(Ulid(n))));
            prop_assert_eq!(EkycSessionId(Ulid(n)).to_string().parse::<EkycSessionId>(), Ok(EkycSessionId(Ulid(n))));
            prop_assert_eq!(ConsentId(Ulid(n)).to_string().parse::<ConsentId>(), Ok(ConsentId(Ulid(n))));
        }

        #[test]
        fn ids_sort_alike_as_values_text_and_bytes(a in any::<u128>(), b in any::<u128>()) {
            let (a, b) = (EventId(Ulid(a)), EventId(Ulid(b)));
            // Cursors page by comparing ids: text, bytes and value must agree.
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
            prop_assert_eq!(a.cmp(&b), a.to_bytes().cmp(&b.to_bytes()));
        }

        #[test]
        fn another_kinds_id_is_not_an_id(n in any::<u128>()) {
            prop_assert_eq!(ResellerId(Ulid(n)).to_string().parse::<OrderId>(), Err(InvalidId));
            prop_assert_eq!(OrderId(Ulid(n)).to_string().parse::<EkycSessionId>(), Err(InvalidId));
            prop_assert_eq!(Ulid(n).to_string().parse::<OrderId>(), Err(InvalidId), "no prefix");
        }

        #[test]
        fn any_text_parses_as_an_id_or_not_without_panicking(
            s in "\\PC{0,40}",
            ulidish in "ord_[0-9A-Za-z]{24,28}",
        ) {
            for s in [s, ulidish] {
                if let Ok(id) = s.parse::<OrderId>() {
                    // What parses is what the id prints, up to case.
                    prop_assert_eq!(id.to_string(), s.to_lowercase());
                }
            }
        }

        #[test]
        fn ids_made_later_sort_later(count in 2usize..200) {
            let ids: Vec<OrderId> = (0..count).map(|_| OrderId::new()).collect();
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1] && w[0].to_string() < w[1].to_string()));
        }
    }
}
