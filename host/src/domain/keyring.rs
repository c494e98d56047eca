//! The keyring port: keyed operations the rules need, implemented by
//! `privacy::FileKeyring` with keys kept outside the database.

use super::accounts::KeyHash;
use super::ids::ResellerId;
use super::personal::SubjectLookup;

/// Keyed operations the domain needs: API-key hashing, sealing of activation data and
/// personal fields, and signing the audit log's checkpoints.
/// Implemented by `privacy::Keyring` with keys kept outside the database.
pub trait Keyring: Send + Sync {
    /// HMAC-SHA256 of an API key under the server pepper.
    fn hash_key(&self, key: &str) -> KeyHash;
    /// Encrypt and authenticate `plaintext`, bound to `context` (e.g. the ICCID).
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8>;
    /// Reverse [`Keyring::seal`]; `None` if tampered with or sealed under another key.
    fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>>;
    /// The keyed hash a reseller's subject is found by (never the subject ref itself).
    /// Subjects are per reseller: two resellers' `user-1` are two people.
    fn subject_lookup(&self, reseller: ResellerId, subject_ref: &str) -> SubjectLookup;
    /// A new random data key for a subject, wrapped by the master key (bound to `lookup`).
    fn new_subject_key(&self, lookup: &SubjectLookup) -> Vec<u8>;
    /// Seal `plaintext` under the subject key `wrapped`, bound to `context`; `None` when
    /// the wrapped key does not open (tampered with, or from another keyring).
    fn seal_for_subject(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
        context: &[u8],
        plaintext: &[u8],
    ) -> Option<Vec<u8>>;
    /// Reverse [`Keyring::seal_for_subject`].
    fn open_for_subject(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
        context: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>>;
    /// HMAC-SHA256 of `message` under the audit key (audit checkpoints).
    fn sign_audit(&self, message: &[u8]) -> [u8; 32];
    /// Whether `tag` is [`Keyring::sign_audit`]'s tag of `message` (compared in constant
    /// time).
    fn verify_audit(&self, message: &[u8], tag: &[u8]) -> bool;
}
