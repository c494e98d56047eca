//! The keyring port: keyed operations the rules need, implemented by
//! `privacy::FileKeyring` with keys kept outside the database.

use super::accounts::KeyHash;

/// Keyed operations the domain needs: API-key hashing and sealing of activation data.
/// Implemented by `privacy::Keyring` with keys kept outside the database.
pub trait Keyring: Send + Sync {
    /// HMAC-SHA256 of an API key under the server pepper.
    fn hash_key(&self, key: &str) -> KeyHash;
    /// Encrypt and authenticate `plaintext`, bound to `context` (e.g. the ICCID).
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8>;
    /// Reverse [`Keyring::seal`]; `None` if tampered with or sealed under another key.
    fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>>;
}
