//! Identity verification (eKYC) by redirect. A product that needs eKYC is paid for
//! (its price held) and waits in `awaiting_kyc`; the supplier's plugin opens a session at
//! its external verification provider and says where to send the end user; the
//! provider's callback reaches the plugin, which reports a status and nothing else.
//!
//! What the gateway keeps of a verification, by construction: the session's id (the
//! order's), the provider's session reference, a status, times, and the redirect URL while
//! the session is open. The contract's records have no field that could carry a name, a
//! document, a date of birth or an image back, and neither has [`EkycSession`] (P2).
//!
//! One session per order: a session that is rejected or expires fails its order and
//! releases the hold; an approved one sends the order on to its supplier.

use serde::{Deserialize, Serialize};

use super::ids::{EkycSessionId, OrderId};

pub use simgate_runtime::ekyc::{EkycRedirect, EkycRequest, EkycStatus, EkycUpdate, Inbound};

/// An order's verification session, kept inside the order so that every change of the
/// one is written with the other in a single commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EkycSession {
    /// The provider's reference for the session (opaque, length-checked).
    pub supplier_ref: String,
    /// Where it stands.
    pub status: EkycStatus,
    /// Where to send the end user; dropped once the session is decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// Opened, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change.
    pub updated_at_ms: u64,
    /// Not decided by then: expired.
    pub expires_at_ms: u64,
}

/// A session as a reseller sees it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "EkycSession")]
pub struct EkycSessionView {
    /// Id (`eks_` and the order's ULID).
    pub id: EkycSessionId,
    /// The order it verifies.
    pub order_id: OrderId,
    /// Where it stands.
    pub status: EkycStatus,
    /// Where to send the end user, while the session is pending.
    pub redirect_url: Option<String>,
    /// Opened, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change.
    pub updated_at_ms: u64,
    /// When an undecided session expires.
    pub expires_at_ms: u64,
}

impl EkycSessionView {
    /// The view of order `order`'s session.
    pub fn of(order: OrderId, session: &EkycSession) -> EkycSessionView {
        EkycSessionView {
            id: EkycSessionId::of(order),
            order_id: order,
            status: session.status,
            redirect_url: session.redirect_url.clone(),
            created_at_ms: session.created_at_ms,
            updated_at_ms: session.updated_at_ms,
            expires_at_ms: session.expires_at_ms,
        }
    }
}

/// Longest redirect or return URL.
pub const MAX_URL: usize = 2048;
/// Longest provider session reference.
pub const MAX_SUPPLIER_REF: usize = 128;
/// The longest a provider may keep a session open: a later expiry is cut to this.
pub const MAX_SESSION_MS: u64 = 30 * 24 * 3600 * 1000;

/// Whether `url` is an absolute http(s) URL of sensible length without credentials: what
/// a redirect or return URL must be.
pub fn valid_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("longer than {MAX_URL} bytes"));
    }
    let uri: http::Uri = url.parse().map_err(|_| "not an absolute URL".to_string())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("must be http or https".into());
    }
    let authority = uri.authority().ok_or("must name a host")?;
    if authority.host().is_empty() {
        return Err("must name a host".into());
    }
    if authority.as_str().contains('@') {
        return Err("must not carry credentials".into());
    }
    Ok(())
}

/// Check what a supplier answered to `ekyc.start` at `now_ms`: a plugin may be written by
/// an attacker, so nothing it returns is trusted. An expiry later than
/// [`MAX_SESSION_MS`] from now is cut to it.
pub fn check_redirect(mut redirect: EkycRedirect, now_ms: u64) -> Result<EkycRedirect, String> {
    valid_url(&redirect.url).map_err(|e| format!("redirect URL {e}"))?;
    if redirect.supplier_ref.is_empty()
        || redirect.supplier_ref.len() > MAX_SUPPLIER_REF
        || redirect.supplier_ref.chars().any(char::is_control)
    {
        return Err(format!(
            "session reference must be 1 to {MAX_SUPPLIER_REF} printable bytes"
        ));
    }
    if redirect.expires_at_ms <= now_ms {
        return Err("the session expires before it opens".into());
    }
    redirect.expires_at_ms = redirect
        .expires_at_ms
        .min(now_ms.saturating_add(MAX_SESSION_MS));
    Ok(redirect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(url: &str, reference: &str, expires_at_ms: u64) -> EkycRedirect {
        EkycRedirect {
            url: url.into(),
            supplier_ref: reference.into(),
            expires_at_ms,
        }
    }

    #[test]
    fn a_redirect_must_be_an_http_url_with_a_printable_reference_and_a_future_expiry() {
        let now = 1_000_000;
        assert!(check_redirect(redirect("https://kyc.example/s/1", "abc", now + 1), now).is_ok());
        for bad in [
            redirect("javascript:alert(1)", "abc", now + 1),
            redirect("https://user:pw@kyc.example/", "abc", now + 1),
            redirect(
                &format!("https://kyc.example/{}", "a".repeat(MAX_URL)),
                "abc",
                now + 1,
            ),
            redirect("https://kyc.example/", "", now + 1),
            redirect(
                "https://kyc.example/",
                &"r".repeat(MAX_SUPPLIER_REF + 1),
                now + 1,
            ),
            redirect("https://kyc.example/", "a\nb", now + 1),
            redirect("https://kyc.example/", "abc", now),
        ] {
            assert!(check_redirect(bad.clone(), now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_expiry_too_far_ahead_is_cut_to_the_longest_session() {
        let now = 5;
        let checked = check_redirect(redirect("http://k.example/", "r", u64::MAX), now).unwrap();
        assert_eq!(checked.expires_at_ms, now + MAX_SESSION_MS);
    }

    #[test]
    fn the_session_record_has_no_field_beyond_references_status_times_and_the_open_redirect() {
        let session = EkycSession {
            supplier_ref: "ref".into(),
            status: EkycStatus::Pending,
            redirect_url: Some("https://k.example/".into()),
            created_at_ms: 1,
            updated_at_ms: 2,
            expires_at_ms: 3,
        };
        let json = serde_json::to_value(&session).unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "created_at_ms",
                "expires_at_ms",
                "redirect_url",
                "status",
                "supplier_ref",
                "updated_at_ms"
            ]
        );
        // An unknown field (a name, say) is refused rather than kept.
        let mut with_name = json.clone();
        with_name["name"] = "Jane".into();
        assert!(serde_json::from_value::<EkycSession>(with_name).is_err());
    }
}
