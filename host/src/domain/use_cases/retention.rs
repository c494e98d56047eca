//! Retention (P10): each class of record is deleted once its period is over, by a
//! durable job that does a bounded batch per class per run and runs again soon while a
//! class has more to delete. Every class is read oldest first from an index ordered by
//! time, so a run never scans what it keeps.

use std::time::Duration;

use crate::domain::accounts::KeyMode;
use crate::domain::gateway::{DomainError, Gateway};

/// How long each class of record is kept. Defaults from the privacy policies served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The API request log: 30 days.
    pub requests: Duration,
    /// Webhook delivery attempts: 30 days.
    pub webhook_attempts: Duration,
    /// Transaction records (orders, their eSIMs, the copies their ledger entries carry):
    /// 7 years after the order's last change.
    pub transactions: Duration,
    /// A closed account's data (keys, endpoints, consents, ledger...): 2 years after
    /// closure.
    pub closed_accounts: Duration,
    /// The audit log of security events: 90 days.
    pub audit: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            requests: Duration::from_secs(30 * 24 * 3600),
            webhook_attempts: Duration::from_secs(30 * 24 * 3600),
            transactions: Duration::from_secs(SEVEN_YEARS_DAYS * 24 * 3600),
            closed_accounts: Duration::from_secs(TWO_YEARS_DAYS * 24 * 3600),
            audit: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Seven years in days, leap days included.
pub const SEVEN_YEARS_DAYS: u64 = 7 * 365 + 2;

/// Two years in days, a leap day included.
pub const TWO_YEARS_DAYS: u64 = 2 * 365 + 1;

/// Records deleted per class in one run, at most.
pub const SWEEP_BATCH: usize = 1000;

/// What one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// API request records.
    pub requests: usize,
    /// Webhook delivery attempts.
    pub webhook_attempts: usize,
    /// Ledger entries looked at for transaction records to purge.
    pub transactions: usize,
    /// Records of closed accounts deleted.
    pub accounts: usize,
    /// Audit log entries deleted.
    pub audit: usize,
}

impl Swept {
    /// Whether a class filled its batch: more may be due, so run again soon.
    pub fn more(&self) -> bool {
        [
            self.requests,
            self.webhook_attempts,
            self.transactions,
            self.accounts,
            self.audit,
        ]
        .contains(&SWEEP_BATCH)
    }

    /// Records deleted in all.
    pub fn total(&self) -> usize {
        self.requests + self.webhook_attempts + self.transactions + self.accounts + self.audit
    }
}

impl Gateway {
    /// Delete one bounded batch of each class of record past its retention.
    pub async fn sweep_retention(&self) -> Result<Swept, DomainError> {
        let now = self.clock.now_ms();
        let cutoff = |keep: Duration| now.saturating_sub(keep.as_millis() as u64);
        let policy = self.tuning.retention;
        Ok(Swept {
            requests: self
                .store
                .expire_requests(cutoff(policy.requests), SWEEP_BATCH)
                .await?,
            webhook_attempts: self
                .store
                .expire_attempts(cutoff(policy.webhook_attempts), SWEEP_BATCH)
                .await?,
            transactions: self
                .store
                .purge_transactions(cutoff(policy.transactions), SWEEP_BATCH)
                .await?,
            accounts: self
                .forget_closed_accounts(cutoff(policy.closed_accounts))
                .await?,
            audit: self.sweep_audit(now).await?,
        })
    }

    /// The audit log's batch (see [`Gateway::purge_audit`]). A broken chain stops only
    /// the audit log's purge, loudly: the other classes keep their schedule.
    async fn sweep_audit(&self, now_ms: u64) -> Result<usize, DomainError> {
        match self.purge_audit(now_ms).await {
            Err(DomainError::Conflict {
                code: "audit_log_broken",
                message,
            }) => {
                tracing::error!(%message, "the audit log was not purged");
                Ok(0)
            }
            purged => purged,
        }
    }

    /// Delete a batch of the data of accounts closed before `cutoff_ms`.
    async fn forget_closed_accounts(&self, cutoff_ms: u64) -> Result<usize, DomainError> {
        let mut deleted = 0;
        for reseller in self.store.resellers().await? {
            if reseller.closed_at_ms.is_none_or(|at| at >= cutoff_ms) {
                continue;
            }
            // The test account first: the reseller record, which lists the account for
            // this sweep, goes last with the live one.
            for mode in [KeyMode::Test, KeyMode::Live] {
                deleted += self
                    .store
                    .forget_account(mode.account(reseller.id), SWEEP_BATCH - deleted)
                    .await?;
                if deleted == SWEEP_BATCH {
                    return Ok(deleted);
                }
            }
        }
        Ok(deleted)
    }
}
