//! The audit log over HTTP: what the API records (authentication failures, a key used
//! from a new network, and the admin, checkout, consent and eKYC actions it serves), and
//! `GET /v1/admin/audit` for admin keys.
//!
//! The client address is known here and nowhere below, so entries are written here, once
//! the use case has succeeded. That makes an entry a write of its own, not part of the
//! change it records: a crash between the two loses the entry (never the change, and never
//! the chain's integrity: the log keeps a valid prefix). Handlers that wait for
//! durability before answering write their entry first, so it is durable with the answer;
//! the others (whose use case waits for durability itself) have the entry flushed right
//! after. Carrying the entry in the use case's own `Commit` would close the gap, once the
//! use cases take the caller's address.
//!
//! Two floods are bounded: failed authentications are recorded at most once per address
//! prefix per minute (the rest are counted in that prefix's next entry), and at most
//! [`MAX_FAILURE_ENTRIES_PER_WINDOW`] a minute in all (the rest are counted in the next
//! entry too); which networks a key was used from is remembered in memory, per process,
//! for a bounded number of keys and networks, so a restart records each key's first use
//! again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};

use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Serialize;

use crate::domain::audit::{
    Actor, AddressPrefix, AuditAction, AuditEntry, AuditFilter, NewAuditEntry,
};
use crate::domain::gateway::Principal;
use crate::domain::ids::{KeyId, ResellerId};

use super::problem::{Problem, problems};
use super::routes::{json, paging, query_pairs};
use super::views::Page;
use super::{AppState, Response};

/// At most one `auth.failed` entry per address prefix per window.
const FAILURE_WINDOW_MS: u64 = 60_000;
/// At most this many `auth.failed` entries per window in all: a flood from many networks
/// is counted, not written out entry by entry.
const MAX_FAILURE_ENTRIES_PER_WINDOW: u32 = 120;
/// Address prefixes whose failures are counted at once; past it, failures from new
/// prefixes are counted together until windows expire.
const MAX_FAILING_PREFIXES: usize = 4096;
/// Keys whose networks are remembered (forgotten all at once past it: their next uses
/// are recorded again, which errs on the side of recording).
const MAX_KEYS_TRACKED: usize = 10_000;
/// Networks remembered per key, the oldest forgotten first.
const MAX_PREFIXES_PER_KEY: usize = 16;

/// What the API remembers to bound its audit entries.
#[derive(Default)]
pub struct AuditWatch {
    failures: Mutex<Failures>,
    networks: RwLock<HashMap<KeyId, VecDeque<AddressPrefix>>>,
}

#[derive(Default)]
struct Failures {
    by_prefix: HashMap<AddressPrefix, Window>,
    window_start_ms: u64,
    entries_in_window: u32,
    /// Failures in no entry yet, from prefixes over the caps.
    uncounted: u64,
}

struct Window {
    start_ms: u64,
    /// Failures since the window's entry, not in any entry yet.
    suppressed: u64,
}

impl Failures {
    /// Count a failure from `prefix` at `now_ms`; `Some(details)` when it gets an entry.
    fn count(&mut self, prefix: &AddressPrefix, now_ms: u64) -> Option<Option<String>> {
        let live = |start: u64| now_ms.saturating_sub(start) < FAILURE_WINDOW_MS;
        if !live(self.window_start_ms) {
            self.window_start_ms = now_ms;
            self.entries_in_window = 0;
        }
        if let Some(w) = self.by_prefix.get_mut(prefix)
            && live(w.start_ms)
        {
            w.suppressed += 1;
            return None;
        }
        if !self.by_prefix.contains_key(prefix) && self.by_prefix.len() >= MAX_FAILING_PREFIXES {
            let mut dropped = 0;
            self.by_prefix.retain(|_, w| {
                let keep = live(w.start_ms);
                if !keep {
                    dropped += w.suppressed;
                }
                keep
            });
            self.uncounted += dropped;
            if self.by_prefix.len() >= MAX_FAILING_PREFIXES {
                self.uncounted += 1;
                return None;
            }
        }
        if self.entries_in_window >= MAX_FAILURE_ENTRIES_PER_WINDOW {
            self.uncounted += 1;
            return None;
        }
        self.entries_in_window += 1;
        let here = self
            .by_prefix
            .insert(
                prefix.clone(),
                Window {
                    start_ms: now_ms,
                    suppressed: 0,
                },
            )
            .map_or(0, |w| w.suppressed);
        let elsewhere = std::mem::take(&mut self.uncounted);
        Some(match (here, elsewhere) {
            (0, 0) => None,
            (n, 0) => Some(format!(
                "{n} more failures from this network since its last entry"
            )),
            (0, m) => Some(format!("{m} more failures over the recording limits")),
            (n, m) => Some(format!(
                "{n} more failures from this network since its last entry; {m} more over the recording limits"
            )),
        })
    }
}

impl AuditWatch {
    /// Whether `key` is used from `prefix` for the first time (that this process knows).
    fn first_use_from(&self, key: KeyId, prefix: &AddressPrefix) -> bool {
        let known = |map: &HashMap<KeyId, VecDeque<AddressPrefix>>| {
            map.get(&key).is_some_and(|seen| seen.contains(prefix))
        };
        if known(&self.networks.read().unwrap_or_else(|p| p.into_inner())) {
            return false;
        }
        let mut map = self.networks.write().unwrap_or_else(|p| p.into_inner());
        if known(&map) {
            return false;
        }
        if !map.contains_key(&key) && map.len() >= MAX_KEYS_TRACKED {
            map.clear();
        }
        let seen = map.entry(key).or_default();
        if seen.len() == MAX_PREFIXES_PER_KEY {
            seen.pop_front();
        }
        seen.push_back(prefix.clone());
        true
    }
}

/// Write `entry`; a failure is logged, not answered: the action it records is done.
pub(super) async fn record(state: &AppState, entry: NewAuditEntry) {
    let action = entry.action;
    if let Err(e) = state.gateway.audit(entry).await {
        tracing::error!(%action, error = %e, "could not write an audit log entry");
    }
}

/// Write `entry` and have it flushed soon, without waiting: for handlers whose use case
/// already waited for its own durability.
pub(super) async fn record_then_flush(state: &AppState, entry: NewAuditEntry) {
    record(state, entry).await;
    state.flush_soon.request();
}

/// Flushes the store shortly after it is asked to, once for all the asks that came in
/// meanwhile: entries written after their change's own flush become durable within
/// [`FLUSH_DELAY`] at the cost of one flush for many, not one each.
pub struct FlushSoon {
    wanted: tokio::sync::Notify,
}

/// How long a flush waits for more asks to join it.
pub const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

impl FlushSoon {
    /// Start the flusher over `store`.
    pub fn start(
        store: std::sync::Arc<dyn crate::domain::store::Store>,
    ) -> std::sync::Arc<FlushSoon> {
        let flusher = std::sync::Arc::new(FlushSoon {
            wanted: tokio::sync::Notify::new(),
        });
        let weak = std::sync::Arc::downgrade(&flusher);
        tokio::spawn(async move {
            loop {
                let Some(flusher) = weak.upgrade() else {
                    return;
                };
                flusher.wanted.notified().await;
                drop(flusher);
                tokio::time::sleep(FLUSH_DELAY).await;
                if let Err(e) = store.durable().await {
                    tracing::error!(error = %e, "could not flush the audit log");
                }
            }
        });
        flusher
    }

    /// Ask for a flush soon.
    pub fn request(&self) {
        self.wanted.notify_one();
    }
}

/// An entry of `who`'s doing, from `address`.
pub(super) fn by(who: &Principal, action: AuditAction, address: &AddressPrefix) -> NewAuditEntry {
    NewAuditEntry::new(Actor::Key(who.key), action)
        .reseller(who.reseller_id())
        .from(Some(address.clone()))
}

/// A request from `address` failed to authenticate.
pub(super) async fn authentication_failed(state: &AppState, address: &AddressPrefix) {
    let now_ms = state.gateway.clock.now_ms();
    let counted = state
        .audit
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .count(address, now_ms);
    if let Some(details) = counted {
        let mut entry = NewAuditEntry::new(Actor::Anonymous, AuditAction::AuthFailed)
            .from(Some(address.clone()));
        if let Some(details) = details {
            entry = entry.details(details);
        }
        record_then_flush(state, entry).await;
    }
}

/// `who` authenticated from `address`: recorded the first time from that network.
pub(super) async fn key_used(state: &AppState, who: &Principal, address: &AddressPrefix) {
    if state.audit.first_use_from(who.key, address) {
        record_then_flush(state, by(who, AuditAction::KeyNewAddress, address)).await;
    }
}

/// An audit log entry as an administrator reads it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "AuditEntry")]
pub struct AuditEntryView {
    /// Its place in the log: 1, 2, 3, ... without gaps (purged entries aside). Pass it as
    /// `starting_after` for the next page.
    pub seq: u64,
    /// When, ms since the epoch; never earlier than the entry before.
    pub at_ms: u64,
    /// Who: an API key id (`key_...`), `system`, `plugin:<id>`, or `anonymous`.
    pub actor: String,
    /// What happened.
    pub action: AuditAction,
    /// The reseller it concerns.
    pub reseller_id: Option<ResellerId>,
    /// What it was done to: an id (order, key, reseller, plugin, ledger entry, consent,
    /// eKYC session, or `subject:` and a prefix of the subject's keyed lookup).
    pub target: Option<String>,
    /// The client's network: IPv4 /24 or IPv6 /48, never the full address.
    pub address: Option<String>,
    /// Counts and codes.
    pub details: Option<String>,
    /// The hash of the entry before (hex SHA-256).
    pub prev_hash: String,
    /// This entry's hash: SHA-256 over `prev_hash` and the fields above.
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> AuditEntryView {
        AuditEntryView {
            seq: e.seq,
            at_ms: e.at_ms,
            actor: e.actor.to_string(),
            action: e.action,
            reseller_id: e.reseller,
            target: e.target,
            address: e.address.map(|a| a.to_string()),
            details: e.details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// `GET /v1/admin/audit`.
pub(super) async fn list(
    state: &AppState,
    who: &Principal,
    req: &http::Request<Bytes>,
) -> Result<Response, Problem> {
    let mut filter = AuditFilter::default();
    let time = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| problems::invalid_query(format!("{k} must be ms since the epoch")))
    };
    let paging = paging(query_pairs(req), |k, v| {
        match k {
            "action" => {
                filter.action = Some(AuditAction::named(&v).ok_or_else(|| {
                    problems::invalid_query(format!("action {v:?} is not an audit action"))
                })?)
            }
            "reseller" => {
                filter.reseller = Some(v.parse().map_err(|_| {
                    problems::invalid_query("reseller must be a reseller id (rsl_...)".into())
                })?)
            }
            "since_ms" => filter.since_ms = Some(time(k, &v)?),
            "until_ms" => filter.until_ms = Some(time(k, &v)?),
            _ => {
                return Err(problems::invalid_query(format!("unknown parameter {k:?}")));
            }
        }
        Ok(())
    })?;
    let before = paging
        .starting_after
        .as_deref()
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                problems::invalid_query("starting_after must be an audit entry's seq".into())
            })
        })
        .transpose()?;
    let page = state
        .gateway
        .audit_log(who, &filter, before, paging.limit)
        .await?;
    Ok(json(
        StatusCode::OK,
        &Page {
            data: page.items.into_iter().map(AuditEntryView::from).collect(),
            has_more: page.has_more,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> AddressPrefix {
        AddressPrefix::of(s.parse().unwrap())
    }

    #[test]
    fn failures_are_recorded_once_a_minute_per_network_and_the_rest_counted() {
        let mut f = Failures::default();
        let a = net("203.0.113.7");
        assert_eq!(f.count(&a, 1_000), Some(None));
        for t in 0..5 {
            assert_eq!(f.count(&net("203.0.113.200"), 2_000 + t), None, "same /24");
        }
        assert_eq!(
            f.count(&net("198.51.100.1"), 3_000),
            Some(None),
            "another network"
        );
        let next = f.count(&a, 1_000 + FAILURE_WINDOW_MS).unwrap().unwrap();
        assert!(next.starts_with("5 more failures"), "{next}");
        assert_eq!(f.count(&a, 2_000 + FAILURE_WINDOW_MS), None);
    }

    #[test]
    fn a_flood_from_many_networks_writes_a_bounded_number_of_entries() {
        let mut f = Failures::default();
        let mut written = 0;
        for i in 0..10_000u32 {
            let prefix = net(&format!("10.{}.{}.1", i >> 8, i & 0xff));
            written += usize::from(f.count(&prefix, 5_000).is_some());
        }
        assert_eq!(written, MAX_FAILURE_ENTRIES_PER_WINDOW as usize);
        assert!(f.by_prefix.len() <= MAX_FAILING_PREFIXES);
        // The next minute's first entry counts what was not written.
        let details = f
            .count(&net("192.0.2.1"), 5_000 + FAILURE_WINDOW_MS)
            .unwrap()
            .unwrap();
        assert!(details.contains("over the recording limits"), "{details}");
    }

    #[test]
    fn a_key_is_recorded_once_per_new_network_within_bounds() {
        let watch = AuditWatch::default();
        let key = KeyId::new();
        assert!(watch.first_use_from(key, &net("203.0.113.1")));
        assert!(!watch.first_use_from(key, &net("203.0.113.99")));
        assert!(watch.first_use_from(key, &net("2001:db8:1::1")));
        assert!(!watch.first_use_from(key, &net("2001:db8:1:ffff::1")));
        for i in 0..MAX_PREFIXES_PER_KEY as u8 {
            watch.first_use_from(key, &net(&format!("192.0.{i}.1")));
        }
        let networks = watch.networks.read().unwrap();
        assert_eq!(networks[&key].len(), MAX_PREFIXES_PER_KEY);
    }
}
