//! The audit log: security events (P13) in a hash chain, read by administrators only (P7).
//!
//! Every entry has a gap-free sequence number (1, 2, 3, ...) and carries the hash of the
//! entry before it (`prev_hash`) and its own (`hash`: SHA-256 over `prev_hash` and a
//! canonical encoding of its other fields, see [`AuditEntry::computed_hash`]). The store
//! assigns the number and links the hashes under one lock, so the chain is one line.
//! Editing an entry breaks its hash; inserting or deleting one breaks the numbering or the
//! link of the entry after it; [`ChainCheck`] walks the chain and names the first entry
//! where it breaks.
//!
//! | action | when | actor | target |
//! |---|---|---|---|
//! | `auth.failed` | a request with a missing, unknown or revoked key (at most one entry per address prefix per minute; the rest are counted in the next one's `details`) | `anonymous` | - |
//! | `key.new_address` | a key is used from an address prefix it was not seen from since the gateway started | the key | - |
//! | `key.created`, `key.rotated`, `key.revoked` | admin API, `POST /v1/keys/rotate` | the key that did it | the key made or revoked |
//! | `reseller.created`, `reseller.closed`, `credit.posted` | admin API | the admin key | reseller, ledger entry |
//! | `plugin.loaded`, `plugin.removed` | the registry swapped a plugin in or out | `system` | plugin id |
//! | `order.accepted`, `order.cancelled` | checkout (balance held), cancel with refund | the key | order |
//! | `consent.recorded`, `ekyc.session_opened` | `POST /v1/consents`, `POST /v1/ekyc/sessions` | the key | consent, session |
//! | `subject.*` | data-subject rights | the key | a prefix of the subject's keyed lookup, never its ref |
//!
//! What an entry never holds: a subject ref, metadata, a key's secret or any other
//! personal value. Client addresses are cut to their network ([`AddressPrefix`]: /24 for
//! IPv4, /48 for IPv6), and targets are typed ids ([`AuditId`]), so a free string cannot
//! be passed where an id belongs.
//!
//! Retention purges the oldest entries. What is left stays verifiable from a checkpoint
//! ([`AuditCheckpoint`]): the first kept sequence number, the hash it links to, and the
//! newest entry when the checkpoint was made, signed (HMAC-SHA256) with the audit key
//! kept outside the database. Deleting old entries and forging a checkpoint for what is
//! left needs that key; so does cutting entries off the end of the log that a checkpoint
//! has seen, or rewriting them.
//!
//! What the chain alone cannot show: entries removed from the end after the newest
//! checkpoint (a crash leaves such a valid prefix too), or a whole tail rewritten after
//! it by someone who can compute SHA-256. Each purge run signs a new checkpoint, so that
//! window is at most one retention run long.

use std::fmt;
use std::net::IpAddr;

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{ConsentId, EkycSessionId, EndpointId, KeyId, OrderId, ResellerId};
use super::keyring::Keyring;
use super::personal::SubjectLookup;
use super::store::{Store, StoreError};

/// The `prev_hash` of entry 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest `details` kept; longer ones are cut (they are counts and codes, never prose).
pub const MAX_DETAILS: usize = 200;

macro_rules! actions {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// What happened. The wire names are stable: filters and SIEM rules match them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        pub enum AuditAction {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl AuditAction {
            /// Every action.
            pub const ALL: &[AuditAction] = &[$(AuditAction::$variant,)*];

            /// The stable dotted name, e.g. `auth.failed`.
            pub fn name(self) -> &'static str {
                match self {
                    $(AuditAction::$variant => $name,)*
                }
            }
        }
    };
}

actions! {
    /// A request with a missing, malformed, unknown or revoked API key.
    AuthFailed = "auth.failed",
    /// A key used from an address prefix it was not seen from before.
    KeyNewAddress = "key.new_address",
    /// An API key was created.
    KeyCreated = "key.created",
    /// A key was replaced by a new one (the old one works for a grace period).
    KeyRotated = "key.rotated",
    /// A key was revoked.
    KeyRevoked = "key.revoked",
    /// A reseller account was created.
    ResellerCreated = "reseller.created",
    /// A reseller account was closed (its keys stop at once).
    ResellerClosed = "reseller.closed",
    /// A prepaid balance was credited.
    CreditPosted = "credit.posted",
    /// A plugin version was loaded and serves.
    PluginLoaded = "plugin.loaded",
    /// A plugin was unregistered.
    PluginRemoved = "plugin.removed",
    /// An order was accepted and its total held (checkout).
    OrderAccepted = "order.accepted",
    /// An order was cancelled and refunded.
    OrderCancelled = "order.cancelled",
    /// A consent grant or withdrawal was recorded.
    ConsentRecorded = "consent.recorded",
    /// An identity verification session was opened.
    EkycSessionOpened = "ekyc.session_opened",
    /// A subject's data was exported.
    SubjectExported = "subject.exported",
    /// A subject's records were rectified.
    SubjectRectified = "subject.rectified",
    /// A subject's personal fields were erased.
    SubjectErased = "subject.erased",
    /// Processing for a subject was restricted.
    SubjectRestricted = "subject.restricted",
    /// A restriction was lifted.
    SubjectUnrestricted = "subject.unrestricted",
    /// A subject objected: every non-essential purpose withdrawn.
    SubjectObjected = "subject.objected",
    /// A copy of the database was taken (a backup).
    BackupTaken = "backup.taken",
}

impl AuditAction {
    /// The action of a wire name.
    pub fn named(name: &str) -> Option<AuditAction> {
        AuditAction::ALL.iter().copied().find(|a| a.name() == name)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key, by its public id.
    Key(KeyId),
    /// The gateway itself (plugin changes, retention).
    System,
    /// A plugin, for what an inbound request made it do.
    Plugin(String),
    /// A caller without a valid key.
    Anonymous,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Key(id) => write!(f, "{id}"),
            Actor::System => f.write_str("system"),
            Actor::Plugin(id) => write!(f, "plugin:{id}"),
            Actor::Anonymous => f.write_str("anonymous"),
        }
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "system" => Actor::System,
            "anonymous" => Actor::Anonymous,
            _ => match s.strip_prefix("plugin:") {
                Some(id) => Actor::Plugin(id.to_string()),
                None => Actor::Key(s.parse().map_err(serde::de::Error::custom)?),
            },
        })
    }
}

/// A client address cut to its network: IPv4 to /24 (`203.0.113.0/24`), IPv6 to /48
/// (`2001:db8:1::/48`); an IPv4-mapped IPv6 address counts as the IPv4 address it maps.
/// Enough to tell networks apart and spot a key used from somewhere new; not enough to
/// single out a subscriber line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AddressPrefix(String);

impl AddressPrefix {
    /// The network of `ip` (as the request log cuts it: one rule for both logs).
    pub fn of(ip: IpAddr) -> AddressPrefix {
        AddressPrefix(super::request_log::truncated(ip))
    }

    /// As written, e.g. `203.0.113.0/24`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AddressPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What may name an entry's target: ids, never a personal value. Sealed: only the id
/// types below implement it.
pub trait AuditId: fmt::Display + private::Sealed {}

mod private {
    pub trait Sealed {}
}

macro_rules! audit_ids {
    ($($t:ty),*) => {
        $(impl private::Sealed for $t {} impl AuditId for $t {})*
    };
}
audit_ids!(
    OrderId,
    KeyId,
    ResellerId,
    ConsentId,
    EkycSessionId,
    EndpointId
);

/// A ledger entry's id, as the transaction list shows it (a lowercase ULID).
#[derive(Debug, Clone, Copy)]
pub struct LedgerEntryId(pub ulid::Ulid);

impl fmt::Display for LedgerEntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_string().to_lowercase())
    }
}

/// A plugin, by its id.
#[derive(Debug, Clone, Copy)]
pub struct PluginId<'a>(pub &'a str);

impl fmt::Display for PluginId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A subject, by the first 8 bytes of its keyed lookup in hex (`subject:3f9a...`): enough
/// to find its entries, never its ref, and it names nobody once the subject key is gone.
#[derive(Debug, Clone, Copy)]
pub struct SubjectPrefix<'a>(pub &'a SubjectLookup);

impl fmt::Display for SubjectPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subject:{}", hex::encode(&self.0.0[..8]))
    }
}

audit_ids!(LedgerEntryId, PluginId<'_>, SubjectPrefix<'_>);

/// An entry as a caller hands it in; the gateway stamps the time and the store numbers
/// and chains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// Who did it.
    pub actor: Actor,
    /// What happened.
    pub action: AuditAction,
    /// The reseller it concerns.
    pub reseller: Option<ResellerId>,
    /// What it was done to: an id (see [`AuditId`]).
    pub target: Option<String>,
    /// Where the request came from, cut to its network.
    pub address: Option<AddressPrefix>,
    /// Counts and codes (e.g. `role reseller, mode test`); never personal values.
    pub details: Option<String>,
}

impl NewAuditEntry {
    /// `actor` did `action`.
    pub fn new(actor: Actor, action: AuditAction) -> NewAuditEntry {
        NewAuditEntry {
            actor,
            action,
            reseller: None,
            target: None,
            address: None,
            details: None,
        }
    }

    /// ... concerning `reseller`.
    pub fn reseller(mut self, reseller: Option<ResellerId>) -> NewAuditEntry {
        self.reseller = reseller;
        self
    }

    /// ... to `target`.
    pub fn target(mut self, target: impl AuditId) -> NewAuditEntry {
        self.target = Some(target.to_string());
        self
    }

    /// ... from `address`.
    pub fn from(mut self, address: Option<AddressPrefix>) -> NewAuditEntry {
        self.address = address;
        self
    }

    /// ... with `details` (cut to [`MAX_DETAILS`] bytes).
    pub fn details(mut self, details: impl Into<String>) -> NewAuditEntry {
        let mut details = details.into();
        if details.len() > MAX_DETAILS {
            let mut end = MAX_DETAILS;
            while !details.is_char_boundary(end) {
                end -= 1;
            }
            details.truncate(end);
        }
        self.details = Some(details);
        self
    }
}

/// One entry of the log, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the log: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// When, ms since the epoch; never earlier than the entry before.
    pub at_ms: u64,
    /// Who did it.
    pub actor: Actor,
    /// What happened.
    pub action: AuditAction,
    /// The reseller it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseller: Option<ResellerId>,
    /// What it was done to (an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Where the request came from, cut to its network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<AddressPrefix>,
    /// Counts and codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// The hash of the entry before (hex SHA-256; [`GENESIS`] for entry 1).
    pub prev_hash: String,
    /// This entry's hash (see [`AuditEntry::computed_hash`]).
    pub hash: String,
}

impl AuditEntry {
    /// Entry `seq` at `at_ms`, linked to `prev_hash`, hashed.
    pub fn chain(seq: u64, at_ms: u64, new: NewAuditEntry, prev_hash: String) -> AuditEntry {
        let mut entry = AuditEntry {
            seq,
            at_ms,
            actor: new.actor,
            action: new.action,
            reseller: new.reseller,
            target: new.target,
            address: new.address,
            details: new.details,
            prev_hash,
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        entry
    }

    /// Hex SHA-256 of a version tag, `prev_hash` and every other field but `hash`, each
    /// field length-prefixed (and optional ones tagged present or absent), so no two
    /// different entries encode alike.
    pub fn computed_hash(&self) -> String {
        fn field(out: &mut Vec<u8>, bytes: &[u8]) {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        fn optional(out: &mut Vec<u8>, value: Option<&str>) {
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    field(out, v.as_bytes());
                }
            }
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"simgate audit v1\0");
        field(&mut out, self.prev_hash.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        field(&mut out, self.actor.to_string().as_bytes());
        field(&mut out, self.action.name().as_bytes());
        optional(&mut out, self.reseller.map(|r| r.to_string()).as_deref());
        optional(&mut out, self.target.as_deref());
        optional(&mut out, self.address.as_ref().map(AddressPrefix::as_str));
        optional(&mut out, self.details.as_deref());
        hex::encode(digest(&SHA256, &out))
    }
}

/// Which entries a page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Only entries concerning this reseller.
    pub reseller: Option<ResellerId>,
    /// Only entries at or after this time (ms).
    pub since_ms: Option<u64>,
    /// Only entries at or before this time (ms).
    pub until_ms: Option<u64>,
}

impl AuditFilter {
    /// Whether `entry` passes.
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.action.is_none_or(|a| a == entry.action)
            && self.reseller.is_none_or(|r| Some(r) == entry.reseller)
            && self.since_ms.is_none_or(|t| entry.at_ms >= t)
            && self.until_ms.is_none_or(|t| entry.at_ms <= t)
    }

    /// Whether no entry at or before `at_ms` can pass (entry times never go back, so a
    /// newest-first walk may stop there).
    pub fn done_before(&self, at_ms: u64) -> bool {
        self.since_ms.is_some_and(|t| at_ms < t)
    }
}

/// Where the kept log starts after a purge, and the newest entry it had then, signed with
/// the audit key (outside the database). Without the key nobody can move the start (to
/// hide deleted entries) or forget the entries it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The first entry kept: every one before it was purged.
    pub first_seq: u64,
    /// The hash entry `first_seq` links to (the last purged entry's).
    pub prev_hash: String,
    /// The newest entry when the checkpoint was made (`first_seq - 1` when none was kept).
    pub head_seq: u64,
    /// Its hash.
    pub head_hash: String,
    /// When it was made, ms since the epoch.
    pub made_at_ms: u64,
    /// Hex HMAC-SHA256 of the fields above under the audit key.
    pub signature: String,
}

impl AuditCheckpoint {
    /// A checkpoint of these fields, signed with `keyring`'s audit key.
    pub fn signed(
        keyring: &dyn Keyring,
        (first_seq, prev_hash): (u64, String),
        (head_seq, head_hash): (u64, String),
        made_at_ms: u64,
    ) -> AuditCheckpoint {
        let mut checkpoint = AuditCheckpoint {
            first_seq,
            prev_hash,
            head_seq,
            head_hash,
            made_at_ms,
            signature: String::new(),
        };
        checkpoint.signature = hex::encode(keyring.sign_audit(&checkpoint.message()));
        checkpoint
    }

    /// Whether the signature is `keyring`'s audit key's over these fields.
    pub fn is_genuine(&self, keyring: &dyn Keyring) -> bool {
        hex::decode(&self.signature).is_ok_and(|tag| keyring.verify_audit(&self.message(), &tag))
    }

    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(200);
        m.extend_from_slice(b"simgate audit checkpoint v1\0");
        m.extend_from_slice(&self.first_seq.to_be_bytes());
        m.extend_from_slice(self.prev_hash.as_bytes());
        m.push(0);
        m.extend_from_slice(&self.head_seq.to_be_bytes());
        m.extend_from_slice(self.head_hash.as_bytes());
        m.push(0);
        m.extend_from_slice(&self.made_at_ms.to_be_bytes());
        m
    }
}

/// Where the chain breaks: the first bad entry and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at seq {seq}: {why}")]
pub struct Broken {
    /// The first entry that is wrong (or missing).
    pub seq: u64,
    /// What is wrong with it.
    pub why: String,
}

/// A chain that held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Where it starts.
    pub first_seq: u64,
    /// How many entries it has.
    pub entries: u64,
}

/// Walks a chain entry by entry from a known start (seq 1 and [`GENESIS`], or a
/// checkpoint), so a log of any length is checked a page at a time.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    first_seq: u64,
    expected: u64,
    prev_hash: String,
    entries: u64,
    /// A hash the chain must show at a seq (a checkpoint's head), and whether it did.
    must_show: Option<(u64, String, bool)>,
}

impl ChainCheck {
    /// A chain whose first entry is `first_seq`, linked to `prev_hash`.
    pub fn from(first_seq: u64, prev_hash: &str) -> ChainCheck {
        ChainCheck {
            first_seq,
            expected: first_seq,
            prev_hash: prev_hash.to_string(),
            entries: 0,
            must_show: None,
        }
    }

    /// Require that entry `seq`, if it is past the start, is in the chain with `hash`.
    pub fn must_reach(mut self, seq: u64, hash: &str) -> ChainCheck {
        if seq >= self.first_seq {
            self.must_show = Some((seq, hash.to_string(), false));
        }
        self
    }

    /// The seq the next entry must have.
    pub fn next_seq(&self) -> u64 {
        self.expected
    }

    /// Check the next entry.
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), Broken> {
        let expected = self.expected;
        if e.seq > expected {
            return Err(Broken {
                seq: expected,
                why: format!(
                    "entry {expected} is missing (the next entry found is {}): entries were deleted",
                    e.seq
                ),
            });
        }
        if e.seq < expected {
            return Err(Broken {
                seq: e.seq,
                why: format!(
                    "a second entry numbered {} follows entry {}: an entry was inserted",
                    e.seq,
                    expected - 1
                ),
            });
        }
        if e.prev_hash != self.prev_hash {
            return Err(Broken {
                seq: e.seq,
                why: format!(
                    "it does not link to the entry before it (prev_hash differs): entry {} was changed, or an entry was inserted or deleted before it",
                    e.seq.saturating_sub(1)
                ),
            });
        }
        if e.computed_hash() != e.hash {
            return Err(Broken {
                seq: e.seq,
                why: "its contents do not match its hash: the entry was edited".into(),
            });
        }
        if let Some((seq, hash, seen)) = &mut self.must_show
            && *seq == e.seq
        {
            if *hash != e.hash {
                return Err(Broken {
                    seq: e.seq,
                    why: "it differs from the signed checkpoint's record of it: the log was rewritten up to here".into(),
                });
            }
            *seen = true;
        }
        self.prev_hash = e.hash.clone();
        self.expected += 1;
        self.entries += 1;
        Ok(())
    }

    /// The end of the chain: it held, unless it stops short of an entry it must reach.
    pub fn finish(self) -> Result<Verified, Broken> {
        if let Some((seq, _, false)) = self.must_show {
            return Err(Broken {
                seq: self.expected,
                why: format!(
                    "the log ends before entry {seq}, which the signed checkpoint recorded: entries were deleted from the end"
                ),
            });
        }
        Ok(Verified {
            first_seq: self.first_seq,
            entries: self.entries,
        })
    }
}

/// Check `entries` (oldest first) as a chain from `first_seq`, linked to `prev_hash`.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    first_seq: u64,
    prev_hash: &str,
) -> Result<Verified, Broken> {
    let mut check = ChainCheck::from(first_seq, prev_hash);
    for e in entries {
        check.push(e)?;
    }
    check.finish()
}

/// Entries read per page when a whole log is checked.
const VERIFY_PAGE: usize = 1000;

/// Check the whole log in `store`: the checkpoint's signature (if a purge made one), then
/// the chain from where it says the log starts to its end.
pub async fn verify_log(
    store: &dyn Store,
    keyring: &dyn Keyring,
) -> Result<Result<Verified, Broken>, StoreError> {
    let mut check = match store.audit_checkpoint().await? {
        None => ChainCheck::from(1, GENESIS),
        Some(c) if !c.is_genuine(keyring) => {
            return Ok(Err(Broken {
                seq: c.first_seq,
                why: "the retention checkpoint's signature does not verify: it was forged or altered (or the audit key was replaced)".into(),
            }));
        }
        Some(c) => ChainCheck::from(c.first_seq, &c.prev_hash).must_reach(c.head_seq, &c.head_hash),
    };
    loop {
        let page = store.audit_entries(check.next_seq(), VERIFY_PAGE).await?;
        for e in &page {
            if let Err(broken) = check.push(e) {
                return Ok(Err(broken));
            }
        }
        if page.len() < VERIFY_PAGE {
            return Ok(check.finish());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let e = AuditEntry::chain(
                    seq,
                    1_000 + seq,
                    NewAuditEntry::new(Actor::Key(KeyId::new()), AuditAction::OrderAccepted)
                        .reseller(Some(ResellerId::new()))
                        .target(OrderId::new())
                        .from(Some(AddressPrefix::of("203.0.113.9".parse().unwrap()))),
                    prev.clone(),
                );
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let entries = log(5);
        assert_eq!(
            verify(&entries, 1, GENESIS),
            Ok(Verified {
                first_seq: 1,
                entries: 5
            })
        );
        // From a later start, as after a purge.
        assert_eq!(
            verify(&entries[2..], 3, &entries[1].hash).unwrap().entries,
            3
        );
        assert_eq!(verify(&[], 1, GENESIS).unwrap().entries, 0);
    }

    #[test]
    fn an_edited_entry_is_named() {
        let mut entries = log(5);
        entries[2].details = Some("nothing happened".into());
        let broken = verify(&entries, 1, GENESIS).unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(broken.why.contains("edited"), "{}", broken.why);
        // Rehashed to hide the edit: the next entry no longer links to it.
        entries[2].hash = entries[2].computed_hash();
        let broken = verify(&entries, 1, GENESIS).unwrap_err();
        assert_eq!(broken.seq, 4);
        assert!(broken.why.contains("entry 3 was changed"), "{}", broken.why);
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let e = &log(1)[0];
        let edits: [fn(&mut AuditEntry); 8] = [
            |e| e.seq += 1,
            |e| e.at_ms += 1,
            |e| e.actor = Actor::System,
            |e| e.action = AuditAction::OrderCancelled,
            |e| e.reseller = None,
            |e| e.target = Some("ord_other".into()),
            |e| e.address = None,
            |e| e.details = Some(String::new()),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut edited = e.clone();
            edit(&mut edited);
            assert_ne!(edited.computed_hash(), e.hash, "edit {i}");
        }
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let mut entries = log(5);
        entries.remove(1);
        let broken = verify(&entries, 1, GENESIS).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.why.contains("missing"), "{}", broken.why);
        // The first one.
        let entries = log(3);
        assert_eq!(verify(&entries[1..], 1, GENESIS).unwrap_err().seq, 1);
    }

    #[test]
    fn an_inserted_entry_is_named() {
        let entries = log(5);
        // A forged entry 3, chained correctly onto entry 2, placed before the real one.
        let forged = AuditEntry::chain(
            3,
            1_003,
            NewAuditEntry::new(Actor::System, AuditAction::PluginRemoved),
            entries[1].hash.clone(),
        );
        let mut tampered = entries.clone();
        tampered.insert(2, forged.clone());
        let broken = verify(&tampered, 1, GENESIS).unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(broken.why.contains("inserted"), "{}", broken.why);
        // Inserted and the rest renumbered (not rehashed): the renumbered entry breaks.
        let mut renumbered = entries.clone();
        for e in &mut renumbered[2..] {
            e.seq += 1;
        }
        renumbered.insert(2, forged);
        let broken = verify(&renumbered, 1, GENESIS).unwrap_err();
        assert_eq!(broken.seq, 4);
    }

    #[test]
    fn a_checkpoint_head_must_be_reached_unchanged() {
        let entries = log(5);
        let check = || ChainCheck::from(1, GENESIS).must_reach(4, &entries[3].hash);
        let mut c = check();
        for e in &entries {
            c.push(e).unwrap();
        }
        assert!(c.finish().is_ok());
        // Cut off after entry 2.
        let mut c = check();
        for e in &entries[..2] {
            c.push(e).unwrap();
        }
        let broken = c.finish().unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(
            broken.why.contains("deleted from the end"),
            "{}",
            broken.why
        );
        // The whole log rewritten consistently from entry 3 on.
        let mut rewritten = entries[..2].to_vec();
        let mut prev = entries[1].hash.clone();
        for seq in 3..=5 {
            let e = AuditEntry::chain(
                seq,
                2_000,
                NewAuditEntry::new(Actor::System, AuditAction::PluginLoaded),
                prev,
            );
            prev = e.hash.clone();
            rewritten.push(e);
        }
        let mut c = check();
        let broken = rewritten.iter().find_map(|e| c.push(e).err()).unwrap();
        assert_eq!(broken.seq, 4);
    }

    #[test]
    fn addresses_are_cut_to_their_network() {
        let of = |s: &str| AddressPrefix::of(s.parse().unwrap()).to_string();
        assert_eq!(of("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(of("10.1.2.255"), "10.1.2.0/24");
        assert_eq!(of("2001:db8:abcd:12:34::1"), "2001:db8:abcd::/48");
        assert_eq!(of("2001:db8::1"), "2001:db8::/48");
        assert_eq!(of("::ffff:198.51.100.23"), "198.51.100.0/24", "v4-mapped");
        assert_eq!(of("::1"), "::/48");
    }

    #[test]
    fn action_names_are_stable_and_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::named(a.name()), Some(*a));
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::Value::String(a.name().into())
            );
        }
        assert_eq!(AuditAction::AuthFailed.name(), "auth.failed");
        assert_eq!(AuditAction::EkycSessionOpened.name(), "ekyc.session_opened");
        assert_eq!(AuditAction::named("order.teleported"), None);
    }

    #[test]
    fn actors_and_targets_are_ids_on_the_wire() {
        let key = KeyId::new();
        for actor in [
            Actor::Key(key),
            Actor::System,
            Actor::Anonymous,
            Actor::Plugin("sandbox".into()),
        ] {
            let json = serde_json::to_string(&actor).unwrap();
            assert_eq!(serde_json::from_str::<Actor>(&json).unwrap(), actor);
        }
        let lookup = SubjectLookup([0xab; 32]);
        let e = NewAuditEntry::new(Actor::System, AuditAction::SubjectErased)
            .target(SubjectPrefix(&lookup));
        assert_eq!(e.target.as_deref(), Some("subject:abababababababab"));
        let long = NewAuditEntry::new(Actor::System, AuditAction::AuthFailed)
            .details("é".repeat(MAX_DETAILS));
        assert!(long.details.unwrap().len() <= MAX_DETAILS);
    }
}
