//! The keyring: the API-key pepper, the master key for sealing activation data and
//! wrapping subjects' data keys, and the audit key that signs the audit log's checkpoints.
//! Each is 32 random bytes in a file of its own (mode 0600) beside the database, never
//! inside it, so a copy of the database alone neither verifies keys nor opens activation
//! codes or personal fields, and whoever can write the database cannot forge a checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::domain::accounts::KeyHash;
use crate::domain::ids::ResellerId;
use crate::domain::keyring::Keyring;
use crate::domain::personal::SubjectLookup;

/// Version byte in front of sealed data, so the format can change.
const SEALED_V1: u8 = 1;

/// A key file could not be read or created.
#[derive(Debug, thiserror::Error)]
#[error("key file {path}: {message}")]
pub struct KeyFileError {
    path: PathBuf,
    message: String,
}

/// The keyring backed by three key files.
pub struct FileKeyring {
    pepper: hmac::Key,
    /// Derived from the pepper for subject lookups, so a subject's hash can never be
    /// confused with an API key's.
    subjects: hmac::Key,
    master: LessSafeKey,
    /// Signs audit checkpoints; a key of its own, so no other signature can pass as one.
    audit: hmac::Key,
    /// Names the three keys without revealing them (see [`FileKeyring::fingerprint`]).
    fingerprint: String,
    rng: SystemRandom,
}

impl FileKeyring {
    /// Open (or create on first start) `pepper.key`, `master.key` and `audit.key` in `dir`.
    pub fn open(dir: &Path) -> Result<FileKeyring, KeyFileError> {
        let rng = SystemRandom::new();
        let pepper = load_or_create(&dir.join("pepper.key"), &rng)?;
        let master = load_or_create(&dir.join("master.key"), &rng)?;
        let audit = load_or_create(&dir.join("audit.key"), &rng)?;
        let fingerprint = fingerprint_of(&[&pepper, &master, &audit]);
        let pepper = hmac::Key::new(hmac::HMAC_SHA256, &pepper);
        let subjects = hmac::sign(&pepper, b"simgate subject lookup v1");
        Ok(FileKeyring {
            subjects: hmac::Key::new(hmac::HMAC_SHA256, subjects.as_ref()),
            pepper,
            master: aes_key(&master),
            audit: hmac::Key::new(hmac::HMAC_SHA256, &audit),
            fingerprint,
            rng,
        })
    }

    /// What the three keys are known by: the same on every node that shares them, and
    /// different for any other keys, without revealing anything of them (each key
    /// signs a fixed label; the signatures are hashed together). Nodes sharing one
    /// database check it at start: keys that differ could neither find API keys nor open
    /// what another node sealed.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// SHA-256 over an HMAC of a fixed label under each of `keys`, hex.
fn fingerprint_of(keys: &[&[u8; 32]]) -> String {
    let mut all = ring::digest::Context::new(&ring::digest::SHA256);
    for key in keys {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key[..]);
        all.update(hmac::sign(&key, b"simgate key fingerprint v1").as_ref());
    }
    hex::encode(all.finish())
}

fn aes_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"))
}

/// `plaintext` sealed under `key`: version byte, random nonce, ciphertext and tag.
fn seal_with(key: &LessSafeKey, rng: &SystemRandom, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).expect("system randomness");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
    out.push(SEALED_V1);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(context),
        &mut body,
    )
    .expect("AES-GCM sealing of a small record cannot fail");
    out.extend_from_slice(&body);
    out
}

/// Reverse [`seal_with`]; `None` if tampered with, bound elsewhere or sealed under another key.
fn open_with(key: &LessSafeKey, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (&version, rest) = sealed.split_first()?;
    if version != SEALED_V1 || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(context), &mut body)
        .ok()?;
    Some(plain.to_vec())
}

impl FileKeyring {
    /// A subject's data key, unwrapped.
    fn subject_key(&self, lookup: &SubjectLookup, wrapped: &[u8]) -> Option<LessSafeKey> {
        let raw: [u8; 32] = open_with(&self.master, &lookup.0, wrapped)?
            .try_into()
            .ok()?;
        Some(aes_key(&raw))
    }
}

fn load_or_create(path: &Path, rng: &SystemRandom) -> Result<[u8; 32], KeyFileError> {
    let err = |message: String| KeyFileError {
        path: path.to_owned(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| err("must hold exactly 32 bytes".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rng.fill(&mut key)
                .map_err(|_| err("no system randomness".into()))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
            file.write_all(&key).map_err(|e| err(e.to_string()))?;
            file.sync_all().map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Keyring for FileKeyring {
    fn hash_key(&self, key: &str) -> KeyHash {
        let tag = hmac::sign(&self.pepper, key.as_bytes());
        KeyHash(tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes"))
    }

    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.master, &self.rng, context, plaintext)
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.master, context, sealed)
    }

    fn subject_lookup(&self, reseller: ResellerId, subject_ref: &str) -> SubjectLookup {
        // The reseller's id has a fixed length, so no two (reseller, ref) pairs collide.
        let mut ctx = hmac::Context::with_key(&self.subjects);
        ctx.update(&reseller.to_bytes());
        ctx.update(subject_ref.as_bytes());
        let tag = ctx.sign();
        SubjectLookup(tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes"))
    }

    fn new_subject_key(&self, lookup: &SubjectLookup) -> Vec<u8> {
        let mut key = [0u8; 32];
        self.rng.fill(&mut key).expect("system randomness");
        seal_with(&self.master, &self.rng, &lookup.0, &key)
    }

    fn seal_for_subject(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
        context: &[u8],
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let key = self.subject_key(lookup, wrapped)?;
        Some(seal_with(&key, &self.rng, context, plaintext))
    }

    fn open_for_subject(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
        context: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        open_with(&self.subject_key(lookup, wrapped)?, context, sealed)
    }

    fn sign_audit(&self, message: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.audit, message);
        tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    fn verify_audit(&self, message: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.audit, message, tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_data_opens_only_with_that_subjects_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = FileKeyring::open(dir.path()).unwrap();
        let (r, other) = (ResellerId::new(), ResellerId::new());
        let alice = k.subject_lookup(r, "alice");
        assert_eq!(alice, k.subject_lookup(r, "alice"));
        assert_ne!(alice, k.subject_lookup(r, "bob"));
        assert_ne!(
            alice,
            k.subject_lookup(other, "alice"),
            "two resellers' subjects of one name are two people"
        );
        assert_ne!(
            alice.0,
            k.hash_key("alice").0,
            "lookups are not API key hashes"
        );
        let wrapped = k.new_subject_key(&alice);
        let sealed = k
            .seal_for_subject(&alice, &wrapped, b"ord", b"secret")
            .unwrap();
        assert_eq!(
            k.open_for_subject(&alice, &wrapped, b"ord", &sealed)
                .unwrap(),
            b"secret"
        );
        let bob = k.subject_lookup(r, "bob");
        let bobs = k.new_subject_key(&bob);
        assert!(k.open_for_subject(&bob, &bobs, b"ord", &sealed).is_none());
        assert!(
            k.open_for_subject(&bob, &wrapped, b"ord", &sealed)
                .is_none(),
            "a wrapped key is bound to its subject"
        );
        assert!(
            k.open_for_subject(&alice, &wrapped, b"other", &sealed)
                .is_none()
        );
    }

    #[test]
    fn sealed_data_opens_only_with_its_context_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = FileKeyring::open(dir.path()).unwrap();
        let sealed = k.seal(b"8999", b"LPA:1$x$y");
        assert_eq!(k.open(b"8999", &sealed).unwrap(), b"LPA:1$x$y");
        assert!(k.open(b"8998", &sealed).is_none(), "bound to its context");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open(b"8999", &tampered).is_none());
        let other = FileKeyring::open(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.open(b"8999", &sealed).is_none());
    }

    #[test]
    fn audit_signatures_verify_only_under_the_same_audit_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = FileKeyring::open(dir.path()).unwrap();
        let tag = k.sign_audit(b"checkpoint");
        assert!(k.verify_audit(b"checkpoint", &tag));
        assert!(!k.verify_audit(b"checkpoint!", &tag));
        assert!(!k.verify_audit(b"checkpoint", &tag[..31]));
        assert_ne!(tag, k.hash_key("checkpoint").0, "not the pepper");
        let again = FileKeyring::open(dir.path()).unwrap();
        assert!(
            again.verify_audit(b"checkpoint", &tag),
            "kept across restarts"
        );
        let other = FileKeyring::open(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!other.verify_audit(b"checkpoint", &tag));
    }

    #[test]
    fn keys_persist_across_restarts_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let h1 = FileKeyring::open(dir.path()).unwrap().hash_key("k");
        let h2 = FileKeyring::open(dir.path()).unwrap().hash_key("k");
        assert_eq!(h1, h2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("pepper.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
