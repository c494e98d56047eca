//! Personal fields: what a reseller attaches to an order about its end user
//! (`subject_ref`, `metadata`). They are never sent to a supplier, and never stored in
//! clear: before they enter any record (ledger commit records included) they are sealed
//! (AES-256-GCM) under a data key of their own subject, which is wrapped by the master key
//! and found by a keyed hash of the subject ref. Destroying that one key later makes the
//! subject's fields unreadable everywhere they were copied, while amounts, ids and times
//! stay readable for the legal retention period (crypto-shredding).
//!
//! Metadata without a subject is sealed under the master key, bound to its order.

use serde::{Deserialize, Serialize};

/// The keyed hash (HMAC-SHA256 under a key kept outside the database) that names a
/// subject in the store. The subject ref itself is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubjectLookup(#[serde(with = "hex_32")] pub [u8; 32]);

/// The personal fields of one order, in clear (only ever in memory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Personal {
    /// The reseller's opaque reference for its end user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_ref: Option<String>,
    /// The reseller's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl Personal {
    /// Whether there is anything to keep.
    pub fn is_empty(&self) -> bool {
        self.subject_ref.is_none() && self.metadata.is_none()
    }
}

/// A subject's processing restricted (P11): while it is in force, no new order or eKYC
/// session is made for the subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    /// Since when, ms since the epoch.
    pub since_ms: u64,
    /// The API key that asked for it.
    pub by: crate::domain::ids::KeyId,
}

/// Personal fields as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPersonal {
    /// The subject whose data key sealed them; `None`: sealed under the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectLookup>,
    /// The sealed JSON of [`Personal`], bound to the order id.
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
}

mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let bytes = hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

pub(crate) mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        STANDARD
            .decode(String::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}
