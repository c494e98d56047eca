//! Durable jobs: background work kept as records in the store, so it survives restarts
//! and, with several nodes, runs once. A worker claims the jobs that are due by leasing
//! them (`Store::claim_jobs`: on PostgreSQL, `SELECT ... FOR UPDATE SKIP LOCKED`); a
//! worker that dies lets its lease run out and another takes the job. A job that fails is
//! tried again on a [`RetrySchedule`]; one whose schedule is spent is kept, marked dead,
//! with its last error, for the operator.
//!
//! Fulfilment (each unfinished order's next step), the catalog refresh and the
//! idempotency sweep run as jobs; the webhook outbox and the retention sweeps are to
//! follow. A worker looks for due jobs every so often; an [`Alarm`] wakes it sooner when
//! this process makes a job due before then.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::events::Event;
use super::ids::{EndpointId, EventId, OrderId, ResellerId};

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum JobKind {
    /// Fetch every loaded plugin's catalog.
    RefreshCatalogs,
    /// Forget idempotency keys past their retention.
    ExpireIdempotency,
    /// Take an unfinished order's next step (a retry, or a poll of a pending supplier).
    Fulfil {
        /// The order.
        order: OrderId,
    },
    /// Turn the events waiting in the outbox into deliveries.
    DispatchEvents,
    /// The retention sweep's former name (webhook attempts only); a job of this kind
    /// left in a store is retired.
    ExpireAttempts,
    /// Delete one bounded batch of each class of record past its retention.
    SweepRetention,
    /// Give each unfinished order left without a next step (its node died during its
    /// first step) a fulfilment job, on whichever node runs this.
    AdoptOrders,
    /// Deliver an event to one webhook endpoint.
    Deliver {
        /// The event.
        event: EventId,
        /// Its reseller.
        reseller: ResellerId,
        /// The endpoint.
        endpoint: EndpointId,
        /// Which try this is, from 1.
        number: u32,
    },
    /// Apply the events of one accepted supplier webhook.
    SupplierEvents {
        /// The plugin that read it.
        plugin: String,
        /// What the webhook is known by for deduplication (the supplier's event id, or
        /// the SHA-256 of its body), hashed.
        key: String,
        /// The events, normalised.
        events: Vec<crate::domain::supplier::SupplierEvent>,
    },
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
    /// The node run that claimed it (`NodeRecord::run`): when that run is no longer
    /// alive, the job is claimable before its lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
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
            owner: None,
            last_error: None,
            dead: false,
        }
    }

    /// The job that takes `order`'s next step at `due_ms`; one per order.
    pub fn fulfil(order: OrderId, due_ms: u64) -> Job {
        Job::new(format!("fulfil/{order}"), JobKind::Fulfil { order }, due_ms)
    }

    /// What the id of every delivery job starts with.
    pub const DELIVER_PREFIX: &'static str = "deliver/";

    /// The job that delivers `event` to `endpoint` (try `number`) at `due_ms`; one per
    /// event and endpoint.
    pub fn deliver(event: &Event, endpoint: EndpointId, number: u32, due_ms: u64) -> Job {
        Job::new(
            format!("{}{}/{endpoint}", Job::DELIVER_PREFIX, event.id),
            JobKind::Deliver {
                event: event.id,
                reseller: event.reseller,
                endpoint,
                number,
            },
            due_ms,
        )
    }

    /// Whether a worker may claim it at `now_ms`, when the node runs `alive` says are
    /// alive (the claimer's own run always is: a job in its hand is not claimable by
    /// it): a job leased by a run that is gone is claimable before its lease ends.
    pub fn claimable(&self, now_ms: u64, alive: impl Fn(&str) -> bool) -> bool {
        let leased = self.lease_until_ms > now_ms && self.owner.as_deref().is_none_or(alive);
        !self.dead && self.due_ms <= now_ms && !leased
    }

    /// This job leased by run `owner` until `until_ms`.
    pub fn leased(self, owner: &str, until_ms: u64) -> Job {
        Job {
            lease_until_ms: until_ms,
            owner: Some(owner.to_string()),
            ..self
        }
    }
}

/// Wakes this process's worker when a job falls due before the worker would look again.
/// (Other nodes find the job at their next look.)
#[derive(Debug, Default)]
pub struct Alarm {
    /// Due times set and not yet reached, ms since the epoch (one per job made due here).
    due: Mutex<BTreeSet<u64>>,
    bell: tokio::sync::Notify,
}

impl Alarm {
    /// A job falls due at `due_ms`.
    pub fn set(&self, due_ms: u64) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = due.first().is_none_or(|&t| due_ms < t);
        due.insert(due_ms);
        if earliest {
            self.bell.notify_one();
        }
    }

    /// How long a worker that looks every `poll` may sleep at `now_ms`: until the
    /// earliest due time set, if that comes sooner. Due times reached are forgotten.
    pub fn sleep_for(&self, now_ms: u64, poll: Duration) -> Duration {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let mut reached = false;
        while due.first().is_some_and(|&t| t <= now_ms) {
            due.pop_first();
            reached = true;
        }
        match due.first() {
            _ if reached => Duration::ZERO,
            Some(&t) => poll.min(Duration::from_millis(t - now_ms)),
            None => poll,
        }
    }

    /// Resolves when a due time is set (or was set since the last call).
    pub async fn rung(&self) {
        self.bell.notified().await;
    }
}

/// A random fraction in [0, 1), for jitter.
pub fn random_fraction(rng: &ring::rand::SystemRandom) -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    rng.fill(&mut b).map_or(0.5, |()| {
        f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
    })
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
    fn the_alarm_shortens_a_sleep_to_the_earliest_due_time_then_forgets_it() {
        let alarm = Alarm::default();
        let poll = Duration::from_secs(1);
        assert_eq!(alarm.sleep_for(1_000, poll), poll);
        alarm.set(1_300);
        alarm.set(1_900);
        assert_eq!(alarm.sleep_for(1_000, poll), Duration::from_millis(300));
        alarm.set(1_100);
        assert_eq!(alarm.sleep_for(1_000, poll), Duration::from_millis(100));
        assert_eq!(alarm.sleep_for(1_100, poll), Duration::ZERO);
        assert_eq!(
            alarm.sleep_for(1_100, poll),
            Duration::from_millis(200),
            "reached, then forgotten"
        );
        assert_eq!(alarm.sleep_for(1_950, poll), Duration::ZERO);
        assert_eq!(alarm.sleep_for(1_950, poll), poll);
    }

    #[test]
    fn each_order_has_one_fulfilment_job() {
        let order = OrderId::new();
        let job = Job::fulfil(order, 7);
        assert_eq!(job.id, format!("fulfil/{order}"));
        assert_eq!(Job::fulfil(order, 9).id, job.id);
        assert_eq!(job.kind, JobKind::Fulfil { order });
    }

    #[test]
    fn only_due_unleased_live_jobs_are_claimable() {
        let all_alive = |_: &str| true;
        let mut j = Job::new("j", JobKind::RefreshCatalogs, 100);
        assert!(!j.claimable(99, all_alive));
        assert!(j.claimable(100, all_alive));
        j.lease_until_ms = 200;
        assert!(!j.claimable(150, all_alive));
        assert!(j.claimable(200, all_alive));
        j.dead = true;
        assert!(!j.claimable(300, all_alive));
    }

    #[test]
    fn a_job_leased_by_a_run_that_is_gone_is_claimable_before_its_lease_ends() {
        let j = Job::new("j", JobKind::RefreshCatalogs, 100).leased("run-a", 1_000);
        assert!(!j.claimable(150, |run| run == "run-a"));
        assert!(j.claimable(150, |run| run == "run-b"));
        assert!(!j.claimable(99, |_| false), "not before it is due");
        let unowned = Job {
            owner: None,
            ..j.clone()
        };
        assert!(
            !unowned.claimable(150, |_| false),
            "no owner: the lease decides"
        );
    }
}
