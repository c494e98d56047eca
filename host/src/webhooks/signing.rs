//! Signing: Standard Webhooks signatures, both ends of them.
//!
//! The sender side is [`WebhookSecret`], [`sign`] and [`signature_header`]; the receiver
//! side is [`Verifier`], which the tests use to check what delivery sends and which is
//! the reference for receivers that write their own check. The signed content is
//! `{webhook-id}.{webhook-timestamp}.{body}`, the signature HMAC-SHA256 with the secret's
//! decoded bytes as the key, written `v1,{standard base64}`; during a secret rotation the
//! header lists one signature per secret, separated by spaces, and a receiver accepts the
//! message if any one of them verifies with the secret it holds.

use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// What a secret's text starts with, so it is recognisable in a config file or a leak scan.
pub const SECRET_PREFIX: &str = "whsec_";

/// The fewest key bytes a secret may hold (the spec's lower bound).
pub const MIN_SECRET_BYTES: usize = 24;

/// The most key bytes a secret may hold (the spec's upper bound).
pub const MAX_SECRET_BYTES: usize = 64;

/// Key bytes in a generated secret: the size of an HMAC-SHA256 output, more gains nothing.
const GENERATED_SECRET_BYTES: usize = 32;

/// How far `webhook-timestamp` may be from the receiver's clock, either way, in seconds.
/// The spec's value, and what the reference libraries enforce: an old message is a replay.
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 5 * 60;

/// Bytes in an HMAC-SHA256 signature.
const SIGNATURE_BYTES: usize = 32;

/// The only signature version this scheme defines (symmetric HMAC-SHA256).
const VERSION: &str = "v1";

/// Standard base64 that accepts a secret with or without its `=` padding, as the reference
/// libraries do (Python's adds padding before decoding).
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A webhook endpoint's signing secret: `whsec_` + standard base64 of 24 to 64 random bytes.
///
/// It cannot be printed: there is no `Display`, and `Debug` shows a placeholder. Its text is
/// available through [`WebhookSecret::expose`], for storing it and for the one time it is
/// shown to the reseller.
#[derive(Clone)]
pub struct WebhookSecret {
    /// Canonical text: prefix, then padded standard base64 of the key bytes.
    text: String,
    /// The HMAC-SHA256 key made from the decoded bytes.
    key: hmac::Key,
}

/// Why a text is not a webhook secret. The messages never contain the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Nothing after the optional prefix.
    #[error(
        "the webhook secret is empty; use the whsec_... value shown when the endpoint was created"
    )]
    Empty,
    /// Not standard base64 after the optional prefix.
    #[error("the webhook secret is not whsec_ followed by standard base64; copy it again whole")]
    NotBase64,
    /// Decodes to too few or too many bytes.
    #[error(
        "the webhook secret holds {len} bytes, not {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}; \
         generate a new one"
    )]
    WrongLength {
        /// How many bytes it decodes to.
        len: usize,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed; check the host's entropy source")]
    RandomUnavailable,
}

impl WebhookSecret {
    /// A new secret of 32 bytes from the operating system's random number generator.
    pub fn generate() -> Result<WebhookSecret, SecretError> {
        let mut bytes = [0u8; GENERATED_SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::RandomUnavailable)?;
        Ok(WebhookSecret::from_bytes(&bytes))
    }

    /// Read a secret: `whsec_` (optional, as in the reference libraries) then standard
    /// base64 (padding optional) of 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<WebhookSecret, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let bytes = SECRET_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(SecretError::WrongLength { len: bytes.len() });
        }
        Ok(WebhookSecret::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8]) -> WebhookSecret {
        WebhookSecret {
            text: format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)),
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The secret's text (`whsec_...`, padded base64 whatever form it was parsed from), for
    /// the store and for the one response that shows it to the reseller. Nowhere else.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_***)")
    }
}

/// The bytes a signature covers: `{msg_id}.{timestamp_secs}.{body}`.
fn signed_content(msg_id: &str, timestamp_secs: u64, body: &[u8]) -> Vec<u8> {
    let timestamp = timestamp_secs.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// `v1,{base64 HMAC-SHA256 of content}`.
fn signature_of(secret: &WebhookSecret, content: &[u8]) -> String {
    let tag = hmac::sign(&secret.key, content);
    format!("{VERSION},{}", STANDARD.encode(tag.as_ref()))
}

/// The signature of one message with one secret: `v1,{base64 HMAC-SHA256}`.
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp_secs: u64, body: &[u8]) -> String {
    signature_of(secret, &signed_content(msg_id, timestamp_secs, body))
}

/// The `webhook-signature` header: one signature per secret, space-separated. Pass the
/// current secret first, then, during a rotation's grace period, the previous one, so
/// receivers that have not switched yet keep verifying.
pub fn signature_header(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp_secs: u64,
    body: &[u8],
) -> String {
    let content = signed_content(msg_id, timestamp_secs, body);
    secrets
        .iter()
        .map(|secret| signature_of(secret, &content))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three Standard Webhooks headers of a received message, as text; an absent header is
/// the empty string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookHeaders<'a> {
    /// `webhook-id`: the message id, the same on every retry (deduplicate on it).
    pub id: &'a str,
    /// `webhook-timestamp`: when this attempt was signed, Unix seconds.
    pub timestamp: &'a str,
    /// `webhook-signature`: space-separated `v1,{base64}` signatures.
    pub signature: &'a str,
}

impl<'a> WebhookHeaders<'a> {
    /// The headers from a request's header map; a missing or non-UTF-8 one is empty.
    pub fn from_map(headers: &'a http::HeaderMap) -> WebhookHeaders<'a> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        WebhookHeaders {
            id: get("webhook-id"),
            timestamp: get("webhook-timestamp"),
            signature: get("webhook-signature"),
        }
    }
}

/// Why a received message is not accepted. The messages never contain the secret or a
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The verifier was given an empty secret.
    #[error(
        "the webhook secret is empty; use the whsec_... value shown when the endpoint was created"
    )]
    EmptySecret,
    /// The verifier was given a text that is not a webhook secret.
    #[error("{0}")]
    Secret(SecretError),
    /// A required header is absent or empty.
    #[error("the {0} header is missing or empty")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a whole number of seconds.
    #[error("webhook-timestamp is not a whole number of seconds since the Unix epoch")]
    BadTimestamp,
    /// `webhook-timestamp` is too far in the past.
    #[error(
        "webhook-timestamp is {age_secs} s old, more than the {TIMESTAMP_TOLERANCE_SECS} s \
         allowed: a replayed message, or a wrong clock on this receiver"
    )]
    TooOld {
        /// How far in the past.
        age_secs: u64,
    },
    /// `webhook-timestamp` is too far in the future.
    #[error(
        "webhook-timestamp is {ahead_secs} s in the future, more than the \
         {TIMESTAMP_TOLERANCE_SECS} s allowed: check this receiver's clock (NTP)"
    )]
    TooNew {
        /// How far in the future.
        ahead_secs: u64,
    },
    /// `webhook-signature` has no `v1,` entry.
    #[error("webhook-signature holds no v1 signature")]
    NoV1Signature,
    /// A `v1,` entry with nothing after the comma.
    #[error("webhook-signature holds an empty v1 signature")]
    EmptySignature,
    /// A `v1,` entry that is not standard base64.
    #[error("webhook-signature holds a v1 signature that is not standard base64")]
    SignatureNotBase64,
    /// A `v1,` entry that decodes to other than 32 bytes.
    #[error("webhook-signature holds a v1 signature of {len} bytes, not {SIGNATURE_BYTES}")]
    SignatureLength {
        /// How many bytes it decodes to.
        len: usize,
    },
    /// Well-formed signatures, none made with this secret over this message.
    #[error(
        "no signature in webhook-signature matches: verify the raw body bytes as received \
         (not re-serialized JSON), with this endpoint's current secret"
    )]
    NoMatch,
}

/// Checks received messages against one endpoint secret, as a receiver does.
///
/// Verify the raw body bytes as received, before parsing them, and use
/// [`WebhookHeaders::id`] to drop duplicates: a message may be delivered more than once.
#[derive(Debug, Clone)]
pub struct Verifier {
    secret: WebhookSecret,
}

impl Verifier {
    /// A verifier for the secret text (`whsec_...`; the prefix is optional).
    pub fn new(secret: &str) -> Result<Verifier, VerifyError> {
        match WebhookSecret::parse(secret) {
            Ok(secret) => Ok(Verifier { secret }),
            Err(SecretError::Empty) => Err(VerifyError::EmptySecret),
            Err(e) => Err(VerifyError::Secret(e)),
        }
    }

    /// Accept the message if its headers are present, its timestamp is within
    /// [`TIMESTAMP_TOLERANCE_SECS`] of `now_secs` and at least one `v1` signature verifies
    /// (compared in constant time). Entries of other versions are skipped, as the spec asks.
    pub fn verify(
        &self,
        headers: WebhookHeaders<'_>,
        body: &[u8],
        now_secs: u64,
    ) -> Result<(), VerifyError> {
        let signatures = headers.signature.trim();
        for (name, value) in [
            ("webhook-id", headers.id),
            ("webhook-timestamp", headers.timestamp),
            ("webhook-signature", signatures),
        ] {
            if value.is_empty() {
                return Err(VerifyError::MissingHeader(name));
            }
        }
        let timestamp = parse_timestamp(headers.timestamp)?;
        if timestamp < now_secs.saturating_sub(TIMESTAMP_TOLERANCE_SECS) {
            return Err(VerifyError::TooOld {
                age_secs: now_secs - timestamp,
            });
        }
        if timestamp > now_secs.saturating_add(TIMESTAMP_TOLERANCE_SECS) {
            return Err(VerifyError::TooNew {
                ahead_secs: timestamp - now_secs,
            });
        }

        let content = signed_content(headers.id, timestamp, body);
        // The first malformed entry is reported only if nothing else was worth comparing:
        // a list may carry entries this verifier does not understand next to a good one.
        let mut malformed = None;
        let mut compared = false;
        for entry in signatures.split(' ').filter(|e| !e.is_empty()) {
            let Some((VERSION, encoded)) = entry.split_once(',') else {
                continue;
            };
            let signature = match decode_signature(encoded) {
                Ok(signature) => signature,
                Err(e) => {
                    malformed.get_or_insert(e);
                    continue;
                }
            };
            compared = true;
            if hmac::verify(&self.secret.key, &content, &signature).is_ok() {
                return Ok(());
            }
        }
        Err(match (compared, malformed) {
            (true, _) => VerifyError::NoMatch,
            (false, Some(e)) => e,
            (false, None) => VerifyError::NoV1Signature,
        })
    }
}

impl From<WebhookSecret> for Verifier {
    fn from(secret: WebhookSecret) -> Verifier {
        Verifier { secret }
    }
}

/// Digits only: `u64::from_str` would also take a leading `+`, which no sender writes.
fn parse_timestamp(text: &str) -> Result<u64, VerifyError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    text.parse().map_err(|_| VerifyError::BadTimestamp)
}

fn decode_signature(encoded: &str) -> Result<Vec<u8>, VerifyError> {
    if encoded.is_empty() {
        return Err(VerifyError::EmptySignature);
    }
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| VerifyError::SignatureNotBase64)?;
    if bytes.len() != SIGNATURE_BYTES {
        return Err(VerifyError::SignatureLength { len: bytes.len() });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its reference libraries.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn spec_secret() -> WebhookSecret {
        WebhookSecret::parse(SPEC_SECRET).unwrap()
    }

    fn spec_verifier() -> Verifier {
        Verifier::new(SPEC_SECRET).unwrap()
    }

    fn headers<'a>(timestamp: &'a str, signature: &'a str) -> WebhookHeaders<'a> {
        WebhookHeaders {
            id: SPEC_ID,
            timestamp,
            signature,
        }
    }

    /// Verify the spec's message with `signature` at the spec's own time.
    fn verify_spec_with(signature: &str) -> Result<(), VerifyError> {
        spec_verifier().verify(headers("1614265330", signature), SPEC_BODY, SPEC_TIMESTAMP)
    }

    /// `n` bytes of key, base64 with the prefix.
    fn secret_of(n: usize) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(vec![7u8; n]))
    }

    #[test]
    fn the_specification_example_signs_to_the_published_signature() {
        let signed = sign(&spec_secret(), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        assert_eq!(signed, SPEC_SIGNATURE);
    }

    #[test]
    fn the_specification_example_verifies() {
        assert_eq!(verify_spec_with(SPEC_SIGNATURE), Ok(()));
    }

    #[test]
    fn a_generated_secret_signs_what_its_verifier_accepts() {
        let secret = WebhookSecret::generate().unwrap();
        assert!(secret.expose().starts_with(SECRET_PREFIX));
        let header = signature_header(&[&secret], "msg_1", 1_700_000_000, b"{}");
        let verifier = Verifier::new(secret.expose()).unwrap();
        let received = WebhookHeaders {
            id: "msg_1",
            timestamp: "1700000000",
            signature: &header,
        };
        assert_eq!(verifier.verify(received, b"{}", 1_700_000_000), Ok(()));
        assert_eq!(
            verifier.verify(received, b"{ }", 1_700_000_000),
            Err(VerifyError::NoMatch),
            "a changed body must not verify"
        );
    }

    #[test]
    fn generated_secrets_hold_32_random_bytes() {
        let a = WebhookSecret::generate().unwrap();
        let b = WebhookSecret::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        let decoded = STANDARD.decode(&a.expose()[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(decoded.len(), 32);
    }

    #[test]
    fn either_secret_verifies_a_header_signed_during_a_rotation() {
        let current = WebhookSecret::generate().unwrap();
        let previous = WebhookSecret::generate().unwrap();
        let header = signature_header(&[&current, &previous], "msg_1", 1_700_000_000, b"{}");
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], sign(&current, "msg_1", 1_700_000_000, b"{}"));
        let received = WebhookHeaders {
            id: "msg_1",
            timestamp: "1700000000",
            signature: &header,
        };
        for secret in [current, previous] {
            let verifier = Verifier::from(secret);
            assert_eq!(verifier.verify(received, b"{}", 1_700_000_000), Ok(()));
        }
        let stranger = Verifier::from(WebhookSecret::generate().unwrap());
        assert_eq!(
            stranger.verify(received, b"{}", 1_700_000_000),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_secret_without_its_prefix_or_padding_is_the_same_secret() {
        let bare = SPEC_SECRET.strip_prefix(SECRET_PREFIX).unwrap();
        let secret = WebhookSecret::parse(bare).unwrap();
        assert_eq!(secret.expose(), SPEC_SECRET);
        assert_eq!(
            sign(&secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        let padded = secret_of(32);
        let unpadded = padded.trim_end_matches('=');
        assert_ne!(padded, unpadded);
        assert_eq!(WebhookSecret::parse(unpadded).unwrap().expose(), padded);
    }

    #[test]
    fn secrets_of_24_to_64_bytes_are_accepted_and_others_refused() {
        assert!(WebhookSecret::parse(&secret_of(24)).is_ok());
        assert!(WebhookSecret::parse(&secret_of(64)).is_ok());
        assert_eq!(
            WebhookSecret::parse(&secret_of(23)).unwrap_err(),
            SecretError::WrongLength { len: 23 }
        );
        assert_eq!(
            WebhookSecret::parse(&secret_of(65)).unwrap_err(),
            SecretError::WrongLength { len: 65 }
        );
        assert_eq!(
            WebhookSecret::parse("whsec_").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::NotBase64
        );
    }

    #[test]
    fn a_secret_never_shows_in_debug_output_or_error_text() {
        let secret = spec_secret();
        let bare = SPEC_SECRET.strip_prefix(SECRET_PREFIX).unwrap();
        let debug = format!("{secret:?} {:?}", spec_verifier());
        assert!(!debug.contains(bare), "{debug}");
        let refused = format!("{}", WebhookSecret::parse(&format!("{bare}A")).unwrap_err());
        assert!(!refused.contains(bare), "{refused}");
    }

    #[test]
    fn an_empty_secret_is_refused() {
        assert_eq!(Verifier::new("").unwrap_err(), VerifyError::EmptySecret);
        assert_eq!(
            Verifier::new("whsec_").unwrap_err(),
            VerifyError::EmptySecret
        );
        assert_eq!(
            Verifier::new("whsec_c2hvcnQ=").unwrap_err(),
            VerifyError::Secret(SecretError::WrongLength { len: 5 })
        );
    }

    #[test]
    fn a_message_missing_a_header_is_refused() {
        let verifier = spec_verifier();
        let full = headers("1614265330", SPEC_SIGNATURE);
        for (missing, received) in [
            ("webhook-id", WebhookHeaders { id: "", ..full }),
            (
                "webhook-timestamp",
                WebhookHeaders {
                    timestamp: "",
                    ..full
                },
            ),
            (
                "webhook-signature",
                WebhookHeaders {
                    signature: "",
                    ..full
                },
            ),
            (
                "webhook-signature",
                WebhookHeaders {
                    signature: "  ",
                    ..full
                },
            ),
        ] {
            assert_eq!(
                verifier.verify(received, SPEC_BODY, SPEC_TIMESTAMP),
                Err(VerifyError::MissingHeader(missing))
            );
        }
    }

    #[test]
    fn headers_are_read_from_a_header_map_and_absent_ones_are_empty() {
        let mut map = http::HeaderMap::new();
        map.insert("webhook-id", SPEC_ID.parse().unwrap());
        map.insert("webhook-signature", SPEC_SIGNATURE.parse().unwrap());
        let read = WebhookHeaders::from_map(&map);
        assert_eq!(read, headers("", SPEC_SIGNATURE));
        assert_eq!(
            spec_verifier().verify(read, SPEC_BODY, SPEC_TIMESTAMP),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
    }

    #[test]
    fn a_signature_list_where_no_v1_entry_verifies_is_refused() {
        let other = sign(
            &WebhookSecret::generate().unwrap(),
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
        );
        let forged = SPEC_SIGNATURE.replace("g0hM", "g0hN");
        for list in [
            other.clone(),
            format!("{other} {forged}"),
            format!("{other} v1,"),
        ] {
            assert_eq!(verify_spec_with(&list), Err(VerifyError::NoMatch), "{list}");
        }
    }

    #[test]
    fn a_list_with_only_other_versions_is_refused() {
        let v1a = SPEC_SIGNATURE.replacen("v1,", "v1a,", 1);
        assert_eq!(verify_spec_with(&v1a), Err(VerifyError::NoV1Signature));
        assert_eq!(verify_spec_with("garbage"), Err(VerifyError::NoV1Signature));
    }

    #[test]
    fn entries_of_other_versions_do_not_hide_a_good_v1_signature() {
        let list = format!("v1a,whatever v1, {SPEC_SIGNATURE}");
        assert_eq!(verify_spec_with(&list), Ok(()));
    }

    #[test]
    fn an_empty_signature_is_refused() {
        assert_eq!(verify_spec_with("v1,"), Err(VerifyError::EmptySignature));
    }

    #[test]
    fn a_signature_of_the_wrong_length_is_refused() {
        let short = format!("v1,{}", STANDARD.encode([1u8; 31]));
        assert_eq!(
            verify_spec_with(&short),
            Err(VerifyError::SignatureLength { len: 31 })
        );
        let long = format!("v1,{}", STANDARD.encode([1u8; 33]));
        assert_eq!(
            verify_spec_with(&long),
            Err(VerifyError::SignatureLength { len: 33 })
        );
    }

    #[test]
    fn a_signature_that_is_not_base64_is_refused() {
        assert_eq!(
            verify_spec_with("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE*"),
            Err(VerifyError::SignatureNotBase64)
        );
        let url_safe = SPEC_SIGNATURE.replace('+', "-").replace('/', "_");
        assert_eq!(
            verify_spec_with(&url_safe),
            Err(VerifyError::SignatureNotBase64)
        );
    }

    #[test]
    fn a_timestamp_more_than_five_minutes_old_is_refused() {
        let verifier = spec_verifier();
        let received = headers("1614265330", SPEC_SIGNATURE);
        assert_eq!(
            verifier.verify(received, SPEC_BODY, SPEC_TIMESTAMP + 300),
            Ok(())
        );
        assert_eq!(
            verifier.verify(received, SPEC_BODY, SPEC_TIMESTAMP + 301),
            Err(VerifyError::TooOld { age_secs: 301 })
        );
    }

    #[test]
    fn a_timestamp_more_than_five_minutes_ahead_is_refused() {
        let verifier = spec_verifier();
        let received = headers("1614265330", SPEC_SIGNATURE);
        assert_eq!(
            verifier.verify(received, SPEC_BODY, SPEC_TIMESTAMP - 300),
            Ok(())
        );
        assert_eq!(
            verifier.verify(received, SPEC_BODY, SPEC_TIMESTAMP - 301),
            Err(VerifyError::TooNew { ahead_secs: 301 })
        );
    }

    #[test]
    fn a_timestamp_that_is_not_a_whole_number_is_refused() {
        let verifier = spec_verifier();
        for timestamp in [
            "soon",
            "1614265330.5",
            "+1614265330",
            "-1",
            " 1614265330",
            "99999999999999999999",
        ] {
            assert_eq!(
                verifier.verify(
                    headers(timestamp, SPEC_SIGNATURE),
                    SPEC_BODY,
                    SPEC_TIMESTAMP
                ),
                Err(VerifyError::BadTimestamp),
                "{timestamp}"
            );
        }
    }

    #[test]
    fn refusals_never_repeat_a_signature() {
        let refusals = [
            verify_spec_with(&SPEC_SIGNATURE.replace("g0hM", "g0hN")),
            verify_spec_with(&SPEC_SIGNATURE.replace('=', "*")),
        ];
        for refusal in refusals {
            let text = refusal.unwrap_err().to_string();
            assert!(!text.contains("g0hM") && !text.contains("g0hN"), "{text}");
        }
    }
}
