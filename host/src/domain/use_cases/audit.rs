//! The audit log's use cases: record an entry, read pages (admins only, P7), and purge by
//! age under a signed checkpoint (P10, P13). The rules of the chain itself live in
//! [`crate::domain::audit`].

use crate::domain::accounts::Role;
use crate::domain::audit::{
    AuditCheckpoint, AuditEntry, AuditFilter, ChainCheck, GENESIS, NewAuditEntry, SubjectPrefix,
};
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::store::Page;

/// Most entries one [`Gateway::purge_audit`] call deletes: a run is a few milliseconds of
/// store work, and the retention sweep runs again soon while it gets a full batch.
pub const PURGE_BATCH: usize = super::retention::SWEEP_BATCH;

/// Most entries past the last checkpoint's head one call verifies before it signs a new
/// head: the log is checked once, incrementally, as it grows.
const VERIFY_BATCH: usize = 10 * PURGE_BATCH;

impl Gateway {
    /// Record `entry`, stamped now. It is durable with the next flush (any acknowledged
    /// write's); a caller that answers for it waits for [`crate::domain::store::Store::durable`].
    /// This is the one way in for every use case (the subject-rights actions included).
    pub async fn audit(&self, entry: NewAuditEntry) -> Result<AuditEntry, DomainError> {
        Ok(self.store.append_audit(self.clock.now_ms(), entry).await?)
    }

    /// `entry`, about one of `who`'s subjects: named by a prefix of its keyed lookup
    /// ([`SubjectPrefix`]), never by its ref.
    pub fn about_subject(
        &self,
        who: &Principal,
        subject_ref: &str,
        entry: NewAuditEntry,
    ) -> NewAuditEntry {
        match who.reseller {
            Some(reseller) => {
                let lookup = self.keyring.subject_lookup(reseller, subject_ref);
                entry.target(SubjectPrefix(&lookup))
            }
            None => entry,
        }
    }

    /// The audit log, newest first, numbered below `before`: for admin keys only (P7);
    /// anyone else is told there is no such thing.
    pub async fn audit_log(
        &self,
        who: &Principal,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, DomainError> {
        if who.role != Role::Admin {
            return Err(DomainError::NotFound("audit log"));
        }
        Ok(self.store.audit_page(filter, before, limit).await?)
    }

    /// Delete up to [`PURGE_BATCH`] of the oldest audit entries older than the retention
    /// period (`retention.audit`) at `now_ms`; returns how many were deleted.
    ///
    /// Each call first checks the entries added since the last checkpoint's head (up to a
    /// bound) and refuses, naming the first bad entry, if the chain is broken: a purge
    /// never signs off on a tampered log. It then signs a checkpoint with the audit key
    /// (where the kept log starts, and its newest checked entry) and stores it before any
    /// entry is deleted.
    pub async fn purge_audit(&self, now_ms: u64) -> Result<usize, DomainError> {
        let broken = |why: String| DomainError::Conflict {
            code: "audit_log_broken",
            message: format!("{why}; nothing was purged (run `simgate audit verify`)"),
        };
        let previous = self.store.audit_checkpoint().await?;
        if let Some(c) = &previous
            && !c.is_genuine(&*self.keyring)
        {
            return Err(broken(
                "the audit log's checkpoint signature does not verify".into(),
            ));
        }
        // Check what was added since the last head, and move the head past it.
        let (mut head_seq, mut head_hash) = previous.as_ref().map_or_else(
            || (0, GENESIS.to_string()),
            |c| (c.head_seq, c.head_hash.clone()),
        );
        let mut check = ChainCheck::from(head_seq + 1, &head_hash);
        let mut checked = 0;
        while checked < VERIFY_BATCH {
            let page = self
                .store
                .audit_entries(check.next_seq(), PURGE_BATCH)
                .await?;
            for e in &page {
                check.push(e).map_err(|b| broken(b.to_string()))?;
                (head_seq, head_hash) = (e.seq, e.hash.clone());
            }
            checked += page.len();
            if page.len() < PURGE_BATCH {
                break;
            }
        }
        // The oldest entries, up to the first one young enough to keep (times never go
        // back along the log) or past the checked head.
        let (start_seq, start_hash) = previous.as_ref().map_or((1, GENESIS.to_string()), |c| {
            (c.first_seq, c.prev_hash.clone())
        });
        let cutoff = now_ms.saturating_sub(self.tuning.retention.audit.as_millis() as u64);
        let oldest = self.store.audit_entries(start_seq, PURGE_BATCH + 1).await?;
        let purgeable = oldest
            .iter()
            .take(PURGE_BATCH)
            .take_while(|e| e.at_ms < cutoff && e.seq <= head_seq)
            .count();
        // What is deleted must be the start of the chain as the checkpoint has it.
        let mut start = ChainCheck::from(start_seq, &start_hash);
        for e in &oldest[..purgeable] {
            start.push(e).map_err(|b| broken(b.to_string()))?;
        }
        let first_kept = match purgeable.checked_sub(1).map(|i| &oldest[i]) {
            None => (start_seq, start_hash),
            Some(last_purged) => (last_purged.seq + 1, last_purged.hash.clone()),
        };
        if head_seq < first_kept.0 {
            // Nothing kept: the head is where numbering goes on.
            (head_seq, head_hash) = (first_kept.0 - 1, first_kept.1.clone());
        }
        let checkpoint =
            AuditCheckpoint::signed(&*self.keyring, first_kept, (head_seq, head_hash), now_ms);
        Ok(self.store.purge_audit(&checkpoint).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::audit::{Actor, AuditAction, Verified, verify_log};
    use crate::domain::clock::{Clock, FixedClock};
    use crate::domain::fulfilment::RetryPolicy;
    use crate::domain::gateway::GatewayTuning;
    use crate::domain::ids::{KeyId, OrderId, ResellerId};
    use crate::domain::store::Store;
    use crate::domain::supplier::{FakeSupplier, OnlySupplier};
    use crate::domain::webhooks::FakeWebhooks;
    use crate::store::MemoryStore;

    const START: u64 = 1_800_000_000_000;
    const DAY: u64 = 24 * 3600 * 1000;

    struct Fixture {
        gateway: Gateway,
        store: MemoryStore,
        clock: Arc<FixedClock>,
        _keys: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let keys = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let clock = Arc::new(FixedClock::at(START));
        let gateway = Gateway::new(
            Arc::new(store.clone()),
            Arc::new(OnlySupplier(Arc::new(FakeSupplier::new("p")))),
            Arc::new(crate::privacy::FileKeyring::open(keys.path()).unwrap()),
            clock.clone(),
            RetryPolicy::default(),
            GatewayTuning::default(),
            Arc::new(FakeWebhooks::default()),
        );
        Fixture {
            gateway,
            store,
            clock,
            _keys: keys,
        }
    }

    impl Fixture {
        async fn record(&self, n: usize) {
            for _ in 0..n {
                let entry =
                    NewAuditEntry::new(Actor::Key(KeyId::new()), AuditAction::OrderAccepted)
                        .target(OrderId::new());
                self.gateway.audit(entry).await.unwrap();
            }
        }

        async fn verify(&self) -> Result<Verified, crate::domain::audit::Broken> {
            verify_log(&*self.gateway.store, &*self.gateway.keyring)
                .await
                .unwrap()
        }

        async fn purge(&self) -> Result<usize, DomainError> {
            self.gateway.purge_audit(self.clock.now_ms()).await
        }
    }

    fn principal(role: Role) -> Principal {
        Principal {
            key: KeyId::new(),
            role,
            reseller: (role != Role::Admin).then(ResellerId::new),
            mode: crate::domain::accounts::KeyMode::Live,
        }
    }

    #[tokio::test]
    async fn entries_are_stamped_by_the_clock_and_only_admins_read_the_log() {
        let f = fixture();
        f.record(1).await;
        f.clock.advance(5);
        f.record(1).await;
        let page = f
            .gateway
            .audit_log(&principal(Role::Admin), &AuditFilter::default(), None, 10)
            .await
            .unwrap();
        let seen: Vec<(u64, u64)> = page.items.iter().map(|e| (e.seq, e.at_ms)).collect();
        assert_eq!(seen, [(2, START + 5), (1, START)]);
        for role in [Role::Reseller, Role::ResellerReadonly] {
            assert!(matches!(
                f.gateway
                    .audit_log(&principal(role), &AuditFilter::default(), None, 10)
                    .await,
                Err(DomainError::NotFound(_))
            ));
        }
    }

    #[tokio::test]
    async fn entries_are_purged_at_the_retention_period_and_not_before_and_the_rest_verifies() {
        let f = fixture();
        f.record(5).await;
        f.clock.advance(30 * DAY);
        f.record(3).await;
        f.clock.advance(60 * DAY);
        assert_eq!(f.purge().await.unwrap(), 0, "exactly 90 days old: kept");
        assert_eq!(f.verify().await.unwrap().entries, 8);
        f.clock.advance(1);
        assert_eq!(f.purge().await.unwrap(), 5);
        assert_eq!(
            f.verify().await,
            Ok(Verified {
                first_seq: 6,
                entries: 3
            })
        );
        f.clock.advance(30 * DAY);
        assert_eq!(f.purge().await.unwrap(), 3);
        assert_eq!(
            f.verify().await,
            Ok(Verified {
                first_seq: 9,
                entries: 0
            })
        );
        f.record(1).await;
        assert_eq!(
            f.verify().await,
            Ok(Verified {
                first_seq: 9,
                entries: 1
            })
        );
        assert_eq!(f.purge().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_purge_deletes_a_bounded_batch_per_call() {
        let f = fixture();
        f.record(2 * PURGE_BATCH + 500).await;
        f.clock.advance(91 * DAY);
        for expected in [PURGE_BATCH, PURGE_BATCH, 500, 0] {
            assert_eq!(f.purge().await.unwrap(), expected);
            assert!(f.verify().await.is_ok());
        }
    }

    #[tokio::test]
    async fn the_retention_sweep_purges_the_audit_log_and_a_broken_log_stops_only_that() {
        let f = fixture();
        f.record(3).await;
        f.clock.advance(91 * DAY);
        assert_eq!(f.gateway.sweep_retention().await.unwrap().audit, 3);
        f.record(2).await;
        f.store.tamper_with_audit_log(|log| {
            log.get_mut(&5).unwrap().details = Some("edited".into());
        });
        f.clock.advance(91 * DAY);
        let swept = f.gateway.sweep_retention().await.unwrap();
        assert_eq!(swept.audit, 0, "a broken log is left for the operator");
        assert_eq!(f.verify().await.unwrap_err().seq, 5);
    }

    #[tokio::test]
    async fn a_forged_checkpoint_is_detected_and_purging_stops() {
        let f = fixture();
        f.record(10).await;
        f.clock.advance(91 * DAY);
        f.record(2).await;
        assert_eq!(f.purge().await.unwrap(), 10);
        // Someone deletes more than retention allows and writes a checkpoint to match,
        // without the audit key.
        let mut forged = f.store.audit_checkpoint().await.unwrap().unwrap();
        let log = f.store.audit_entries(0, 100).await.unwrap();
        forged.first_seq = log[1].seq;
        forged.prev_hash = log[1].prev_hash.clone();
        f.store.purge_audit(&forged).await.unwrap();
        let broken = f.verify().await.unwrap_err();
        assert_eq!(broken.seq, 12);
        assert!(broken.why.contains("signature"), "{}", broken.why);
        assert!(matches!(
            f.purge().await,
            Err(DomainError::Conflict {
                code: "audit_log_broken",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_purge_refuses_to_sign_off_on_a_tampered_log() {
        let f = fixture();
        f.record(6).await;
        f.store.tamper_with_audit_log(|log| {
            log.get_mut(&4).unwrap().details = Some("edited".into());
        });
        let broken = f.verify().await.unwrap_err();
        assert_eq!(broken.seq, 4);
        let Err(DomainError::Conflict { message, .. }) = f.purge().await else {
            panic!("a purge went ahead on a broken chain");
        };
        assert!(message.contains("seq 4"), "{message}");
        assert!(f.store.audit_checkpoint().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn entries_a_checkpoint_saw_cannot_be_cut_off_or_rewritten() {
        let f = fixture();
        f.record(6).await;
        assert_eq!(f.purge().await.unwrap(), 0, "young: nothing to purge");
        f.record(2).await;
        // Cutting entries the checkpoint saw is found...
        f.store.tamper_with_audit_log(|log| {
            log.split_off(&5);
        });
        let broken = f.verify().await.unwrap_err();
        assert_eq!(broken.seq, 5);
        assert!(
            broken.why.contains("deleted from the end"),
            "{}",
            broken.why
        );
        // ...and so is rewriting them all consistently.
        f.store.tamper_with_audit_log(|log| log.clear());
        let mut prev = GENESIS.to_string();
        for seq in 1..=6 {
            let e = AuditEntry::chain(
                seq,
                START,
                NewAuditEntry::new(Actor::System, AuditAction::PluginLoaded),
                prev,
            );
            prev = e.hash.clone();
            f.store.tamper_with_audit_log(|log| {
                log.insert(seq, e);
            });
        }
        assert_eq!(f.verify().await.unwrap_err().seq, 6);
    }
}
