//! Durable jobs: background work kept as records in the store, so it survives restarts
//! and, with several nodes, runs once. A worker claims the jobs that are due by leasing
//! them (`Store::claim_jobs`: on PostgreSQL, `SELECT ... FOR UPDATE SKIP LOCKED`); a
//! worker that dies lets its lease run out and another takes the job. A job that fails is
//! tried again on a [`RetrySchedule`]; one whose schedule is spent is kept, marked dead,
//! with its last error, for the operator.
//!
//! The catalog refresh and the idempotency sweep run as jobs; fulfilment, the webhook
//! outbox and the retention sweeps are to follow.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum JobKind {
    /// Fetch every loaded plugin's catalog.
    RefreshCatalogs,
    /// Forget idempotency keys past their retention.
    ExpireIdempotency,
}

/// One job, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Stable id: a name for a singleton (`refresh-catalogs`), or one per subject later
    /// (`fulfil/ord_...`).
    pub id: String,
    /// What to do.
    pub kind: JobKind,
    /// Not before this time, ms since the epoch.
    pub due_ms: u64,
    /// Failed runs in a row.
    pub attempts: u32,
    /// Claimed by a worker until this time (0: not claimed).
    pub lease_until_ms: u64,
    /// Why the last run failed.
    pub last_error: Option<String>,
    /// The retry schedule is spent: the job no longer runs.
    pub dead: bool,
}

impl Job {
    /// A job `id` of `kind`, due at `due_ms`.
    pub fn new(id: impl Into<String>, kind: JobKind, due_ms: u64) -> Job {
        Job {
            id: id.into(),
            kind,
            due_ms,
            attempts: 0,
            lease_until_ms: 0,
            last_error: None,
            dead: false,
        }
    }

    /// Whether a worker may claim it at `now_ms`.
    pub fn claimable(&self, now_ms: u64) -> bool {
        !self.dead && self.due_ms <= now_ms && self.lease_until_ms <= now_ms
    }
}

/// How long to wait before each retry of a failed job: doubling from `first` up to
/// `longest`, each wait drawn between half of it and all of it (jitter, so that jobs that
/// failed together do not retry together), for at most `attempts` failures.
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub longest: Duration,
    /// Runs that may fail in a row: the job is given up at this failure.
    pub attempts: u32,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            first: Duration::from_secs(1),
            longest: Duration::from_secs(600),
            attempts: 12,
        }
    }
}

impl RetrySchedule {
    /// The wait after failure number `failures` (1 for the first), given a random
    /// `fraction` in [0, 1); `None` once the schedule is spent.
    pub fn wait(&self, failures: u32, fraction: f64) -> Option<Duration> {
        if failures == 0 || failures >= self.attempts {
            return None;
        }
        let full = self
            .first
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(self.longest);
        Some(full / 2 + full.mul_f64(fraction.clamp(0.0, 1.0) / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_with_jitter_up_to_the_longest_wait_then_stop() {
        let s = RetrySchedule {
            first: Duration::from_secs(2),
            longest: Duration::from_secs(10),
            attempts: 6,
        };
        assert_eq!(s.wait(1, 0.0), Some(Duration::from_secs(1)));
        assert_eq!(s.wait(1, 0.999_999).map(|d| d.as_secs()), Some(1));
        assert_eq!(s.wait(2, 0.0), Some(Duration::from_secs(2)));
        assert_eq!(s.wait(3, 0.5), Some(Duration::from_secs(6)));
        assert_eq!(
            s.wait(4, 0.0),
            Some(Duration::from_secs(5)),
            "capped at 10 s"
        );
        assert_eq!(s.wait(5, 1.0), Some(Duration::from_secs(10)));
        assert_eq!(s.wait(6, 0.0), None, "spent");
    }

    #[test]
    fn only_due_unleased_live_jobs_are_claimable() {
        let mut j = Job::new("j", JobKind::RefreshCatalogs, 100);
        assert!(!j.claimable(99));
        assert!(j.claimable(100));
        j.lease_until_ms = 200;
        assert!(!j.claimable(150));
        assert!(j.claimable(200));
        j.dead = true;
        assert!(!j.claimable(300));
    }
}
