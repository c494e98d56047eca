//! What the plugin contract says of identity verification (eKYC): the request to open a
//! session, where to send the end user, and a status back. No record here can carry a
//! name, a document, a date of birth or an image. The gateway's rules for sessions live
//! in the gateway's domain.

use serde::{Deserialize, Serialize};

/// Where a verification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EkycStatus {
    /// Open: the end user has not finished, or the provider has not decided.
    Pending,
    /// Verified: the order goes on to its supplier.
    Approved,
    /// Refused by the provider: the order fails and its hold is released.
    Rejected,
    /// Not decided in time: the order fails and its hold is released.
    Expired,
}

impl EkycStatus {
    /// Whether the session is decided for good.
    pub fn is_final(self) -> bool {
        self != EkycStatus::Pending
    }
}

/// Ask a supplier to open a verification session. Only what the provider needs to send
/// the end user back: no person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkycRequest {
    /// The session's id, as the provider will name it in its callback.
    pub session_ref: String,
    /// The supplier SKU that needs verification.
    pub sku: String,
    /// Where the provider sends the end user when done.
    pub return_url: String,
}

/// Where a supplier says to send the end user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkycRedirect {
    /// The provider's URL (the gateway checks it: http or https, of bounded length).
    pub url: String,
    /// The provider's reference for the session.
    pub supplier_ref: String,
    /// When the redirect stops working, ms since the epoch.
    pub expires_at_ms: u64,
}

/// What a provider's callback says, as the plugin read it: a session and a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkycUpdate {
    /// The session the callback is about (the `session_ref` the plugin was given).
    pub session_ref: String,
    /// Its status now (a plugin reports pending, approved or rejected).
    pub status: EkycStatus,
}

/// An HTTP request received for a plugin (a provider callback, a supplier webhook), as
/// the plugin sees it: capped in size before it gets there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Method, upper case.
    pub method: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The address the request came from (IP, no port).
    pub source_address: String,
}
