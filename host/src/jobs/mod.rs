//! The job worker: claims the durable jobs that are due (`domain::jobs`), runs each with
//! its handler, and records the outcome in one write: done (removed), again later (a
//! periodic job rescheduled), or failed (retried on the schedule, or kept dead with its
//! error). Jobs run concurrently, each as its own task, up to a batch at once. It stops
//! at the shutdown signal, after the jobs in hand.
//!
//! Which jobs exist and what they do is [`GatewayJobs`]: each unfinished order's next
//! fulfilment step, the catalog refresh and the idempotency sweep (singletons
//! re-scheduling themselves).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::domain::clock::Clock;
use crate::domain::gateway::Gateway;
use crate::domain::jobs::{Alarm, Job, JobKind, RetrySchedule, random_fraction};
use crate::domain::store::{Store, StoreResult};
use crate::domain::supplier::BoxFuture;
use crate::domain::webhooks::NextTry;

/// What a run decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done for good: the job is removed.
    Done,
    /// Run again after this long (periodic work).
    Again(Duration),
    /// Run again after this long, as this kind (a step that counts its tries).
    AgainAs(Duration, JobKind),
}

/// Runs jobs of each kind.
pub trait JobHandler: Send + Sync {
    /// Run `job` once. An `Err` is retried on the worker's schedule.
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Outcome, String>>;
}

/// How the worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct WorkerTuning {
    /// How often the worker looks for due jobs.
    pub poll: Duration,
    /// How long a claim holds a job: longer than any run.
    pub lease: Duration,
    /// Jobs claimed per round.
    pub batch: usize,
    /// Retries of a failing job.
    pub retry: RetrySchedule,
}

/// This process's run of its node (`domain::nodes`): the jobs it claims name it.
pub type Run = Arc<str>;

impl Default for WorkerTuning {
    fn default() -> Self {
        WorkerTuning {
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(600),
            // Each job holds a task, not a thread: a batch as large as fulfilment's
            // concurrency keeps slow suppliers and receivers from queueing the rest.
            batch: 64,
            retry: RetrySchedule::default(),
        }
    }
}

/// The job worker.
pub struct Worker {
    run: Run,
    /// The jobs running, by their task: a task that panics still names its job.
    in_hand: std::sync::Mutex<HashMap<tokio::task::Id, Job>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    handler: Arc<dyn JobHandler>,
    tuning: WorkerTuning,
    alarm: Arc<Alarm>,
    rng: ring::rand::SystemRandom,
}

/// Tries to record a job's outcome before leaving it to its lease (about 30 s of waits).
const RECORD_TRIES: u32 = 10;

/// A job run that ended, by its task (or panicked: the task's id names the job).
type Ran = Result<(tokio::task::Id, (Job, Result<Outcome, String>)), tokio::task::JoinError>;

impl Worker {
    /// A worker of node run `run` over the store's jobs; `alarm` wakes it for jobs due
    /// before its next look.
    pub fn new(
        run: Run,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        handler: Arc<dyn JobHandler>,
        tuning: WorkerTuning,
        alarm: Arc<Alarm>,
    ) -> Worker {
        Worker {
            run,
            in_hand: Default::default(),
            store,
            clock,
            handler,
            tuning,
            alarm,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// Run jobs until `shutdown` turns true, then finish the ones in hand. Up to `batch`
    /// run at once; a slow one holds only its own slot. The worker looks for due jobs
    /// every `poll`, when one of its own ends, and when the alarm rings.
    pub async fn run_until(&self, mut shutdown: watch::Receiver<bool>) {
        let mut running = JoinSet::new();
        while !*shutdown.borrow() {
            let free = self.tuning.batch.saturating_sub(running.len());
            if free > 0 {
                match self.claim(free).await {
                    Ok(jobs) => jobs
                        .into_iter()
                        .for_each(|job| self.start(&mut running, job)),
                    Err(e) => tracing::error!(error = %e, "claiming jobs failed; trying again"),
                }
            }
            let sleep = self.alarm.sleep_for(self.clock.now_ms(), self.tuning.poll);
            tokio::select! {
                Some(ran) = running.join_next_with_id(), if !running.is_empty() => self.ended(ran).await,
                _ = self.alarm.rung() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
        while let Some(ran) = running.join_next_with_id().await {
            self.ended(ran).await;
        }
    }

    /// Claim the jobs that are due, run them all at once and record how each ended;
    /// returns how many ran.
    pub async fn round(&self) -> StoreResult<usize> {
        let mut running = JoinSet::new();
        for job in self.claim(self.tuning.batch).await? {
            self.start(&mut running, job);
        }
        let ran = running.len();
        while let Some(ran) = running.join_next_with_id().await {
            self.ended(ran).await;
        }
        Ok(ran)
    }

    /// Claim up to `limit` due jobs.
    async fn claim(&self, limit: usize) -> StoreResult<Vec<Job>> {
        let lease_ms = self.tuning.lease.as_millis() as u64;
        self.store
            .claim_jobs(&self.run, self.clock.now_ms(), lease_ms, limit)
            .await
    }

    /// Run `job` as a task of its own.
    fn start(&self, running: &mut JoinSet<(Job, Result<Outcome, String>)>, job: Job) {
        let handler = self.handler.clone();
        let kept = job.clone();
        let task = running.spawn(async move {
            let outcome = handler.run(&job).await;
            (job, outcome)
        });
        self.hand().insert(task.id(), kept);
    }

    fn hand(&self) -> std::sync::MutexGuard<'_, HashMap<tokio::task::Id, Job>> {
        self.in_hand.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record how a run ended.
    async fn ended(&self, ran: Ran) {
        let (job, outcome) = match ran {
            Ok((task, ran)) => {
                self.hand().remove(&task);
                ran
            }
            Err(e) => {
                // A panic fails the run like an error: retried on the schedule, and given
                // up after it, rather than left leased to this run until the lease ends.
                let Some(job) = self.hand().remove(&e.id()) else {
                    return;
                };
                let why = if e.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                };
                tracing::error!(job = %job.id, "a job {why}; it is retried on its schedule");
                (job, Err(format!("the job {why}")))
            }
        };
        self.record_outcome(job, outcome).await
    }

    /// Record `outcome`, trying again while the store fails.
    async fn record_outcome(&self, job: Job, outcome: Result<Outcome, String>) {
        // The job stays leased to this run until its outcome is recorded, and no other
        // node takes it while this one lives: a store that failed for a moment (a
        // database restarting) must not leave it so for the whole lease. Tried again for
        // about half a minute, then left to the lease.
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=RECORD_TRIES {
            match self.record(job.clone(), outcome.clone()).await {
                Ok(()) => return,
                Err(e) if attempt == RECORD_TRIES => {
                    tracing::error!(job = %job.id, error = %e, "recording a job's outcome failed; it runs again when its lease ends");
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "recording a job's outcome failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Store what a run decided.
    async fn record(&self, mut job: Job, outcome: Result<Outcome, String>) -> StoreResult<()> {
        let now = self.clock.now_ms();
        job.lease_until_ms = 0;
        job.owner = None;
        match outcome {
            Ok(Outcome::Done) => return self.store.finish_job(&job.id).await,
            Ok(Outcome::AgainAs(after, kind)) => {
                job.kind = kind;
                job.attempts = 0;
                job.last_error = None;
                job.due_ms = now.saturating_add(after.as_millis() as u64);
                self.alarm.set(job.due_ms);
            }
            Ok(Outcome::Again(after)) => {
                job.attempts = 0;
                job.last_error = None;
                job.due_ms = now.saturating_add(after.as_millis() as u64);
                self.alarm.set(job.due_ms);
            }
            Err(error) => {
                job.attempts = job.attempts.saturating_add(1);
                match self
                    .tuning
                    .retry
                    .wait(job.attempts, random_fraction(&self.rng))
                {
                    Some(wait) => {
                        tracing::warn!(job = %job.id, attempt = job.attempts, %error, "job failed; will retry");
                        job.due_ms = now.saturating_add(wait.as_millis() as u64);
                        self.alarm.set(job.due_ms);
                    }
                    None => {
                        tracing::error!(job = %job.id, attempts = job.attempts, %error, "job failed for good; kept for the operator");
                        job.dead = true;
                    }
                }
                job.last_error = Some(error);
            }
        }
        self.store.put_job(&job).await
    }
}

/// The gateway's own housekeeping jobs.
pub struct GatewayJobs {
    /// The use cases the jobs call.
    pub gateway: Arc<Gateway>,
    /// How often catalogs are refreshed.
    pub catalog_every: Duration,
    /// How often idempotency keys and delivery attempts past their retention are swept.
    pub sweep_every: Duration,
    /// How often unfinished orders left without a next step are looked for; also how
    /// long an order must have been left alone to count.
    pub adopt_every: Duration,
}

impl GatewayJobs {
    /// Make the housekeeping jobs due now, as every start should refresh catalogs and
    /// sweep keys at once. One that another node has in hand is left to it; one that a
    /// killed process had in hand is claimable anyway (its run is gone; on sled, opening
    /// the store voided every lease); one given up after its retries comes back.
    pub async fn schedule(store: &dyn Store, now_ms: u64) -> StoreResult<()> {
        let housekeeping = [
            ("refresh-catalogs", JobKind::RefreshCatalogs),
            ("expire-idempotency", JobKind::ExpireIdempotency),
            ("dispatch-events", JobKind::DispatchEvents),
            ("sweep-retention", JobKind::SweepRetention),
            ("adopt-orders", JobKind::AdoptOrders),
        ];
        for (id, kind) in housekeeping {
            let due_now = Job::new(id, kind, now_ms);
            match store.job(id).await? {
                // Given up after its retries: a start brings it back.
                Some(job) if job.dead => store.put_job(&due_now).await?,
                _ => store.hasten_job(&due_now).await?,
            }
        }
        Ok(())
    }
}

impl JobHandler for GatewayJobs {
    fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Outcome, String>> {
        Box::pin(async move {
            match job.kind.clone() {
                JobKind::RefreshCatalogs => {
                    self.gateway.refresh_catalogs().await;
                    Ok(Outcome::Again(self.catalog_every))
                }
                JobKind::Fulfil { order } => Ok(match self.gateway.fulfil(order).await? {
                    Some(delay) => Outcome::Again(delay),
                    None => Outcome::Done,
                }),
                JobKind::DispatchEvents => {
                    self.gateway
                        .dispatch_events()
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Outcome::Again(self.gateway.dispatch_every()))
                }
                JobKind::Deliver {
                    event,
                    reseller,
                    endpoint,
                    number,
                } => {
                    let next = self
                        .gateway
                        .deliver(reseller, endpoint, event, number)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(match next {
                        NextTry::Done => Outcome::Done,
                        NextTry::Busy(wait) => Outcome::Again(wait),
                        NextTry::After(wait) => Outcome::AgainAs(
                            wait,
                            JobKind::Deliver {
                                event,
                                reseller,
                                endpoint,
                                number: number + 1,
                            },
                        ),
                    })
                }
                JobKind::ExpireAttempts => Ok(Outcome::Done),
                JobKind::AdoptOrders => {
                    self.gateway
                        .adopt_orders(self.adopt_every)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Outcome::Again(self.adopt_every))
                }
                JobKind::SupplierEvents {
                    plugin,
                    key,
                    events,
                } => {
                    self.gateway
                        .apply_supplier_events(&plugin, &key, events)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Outcome::Done)
                }
                JobKind::SweepRetention => {
                    let swept = self
                        .gateway
                        .sweep_retention()
                        .await
                        .map_err(|e| e.to_string())?;
                    if swept.total() > 0 {
                        tracing::info!(
                            requests = swept.requests,
                            webhook_attempts = swept.webhook_attempts,
                            ledger_entries_looked_at = swept.transactions,
                            account_records = swept.accounts,
                            audit_entries = swept.audit,
                            "records past their retention deleted"
                        );
                    }
                    // A full batch: more may be due; come back soon rather than in an hour.
                    Ok(Outcome::Again(if swept.more() {
                        std::time::Duration::from_secs(1)
                    } else {
                        self.sweep_every
                    }))
                }
                JobKind::ExpireIdempotency => {
                    let n = self
                        .gateway
                        .expire_idempotency_keys()
                        .await
                        .map_err(|e| e.to_string())?;
                    if n > 0 {
                        tracing::info!(expired = n, "idempotency keys expired");
                    }
                    Ok(Outcome::Again(self.sweep_every))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::FixedClock;
    use crate::store::MemoryStore;
    use std::sync::Mutex;

    /// Fails its first `failures` runs, then answers `outcome`; records each run.
    struct Scripted {
        failures: Mutex<u32>,
        outcome: Outcome,
        runs: Mutex<Vec<String>>,
    }

    impl JobHandler for Scripted {
        fn run<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Outcome, String>> {
            self.runs.lock().unwrap().push(job.id.clone());
            let mut failures = self.failures.lock().unwrap();
            let result = if *failures > 0 {
                *failures -= 1;
                Err("supplier down".to_string())
            } else {
                Ok(self.outcome.clone())
            };
            Box::pin(async move { result })
        }
    }

    fn worker(
        failures: u32,
        outcome: Outcome,
    ) -> (Worker, Arc<MemoryStore>, Arc<FixedClock>, Arc<Scripted>) {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(FixedClock::at(1_000_000));
        let handler = Arc::new(Scripted {
            failures: Mutex::new(failures),
            outcome,
            runs: Mutex::new(Vec::new()),
        });
        let tuning = WorkerTuning {
            retry: RetrySchedule {
                first: Duration::from_secs(10),
                longest: Duration::from_secs(60),
                attempts: 3,
            },
            ..Default::default()
        };
        let w = Worker::new(
            "run-1".into(),
            store.clone(),
            clock.clone(),
            handler.clone(),
            tuning,
            Arc::default(),
        );
        (w, store, clock, handler)
    }

    /// Panics on every run.
    struct Panics;

    impl JobHandler for Panics {
        fn run<'a>(&'a self, _job: &'a Job) -> BoxFuture<'a, Result<Outcome, String>> {
            Box::pin(async { panic!("a bug in a handler") })
        }
    }

    #[tokio::test]
    async fn a_job_that_panics_is_retried_on_its_schedule_not_left_leased() {
        let (_, store, clock, _) = worker(0, Outcome::Done);
        let w = Worker::new(
            "run-1".into(),
            store.clone(),
            clock.clone(),
            Arc::new(Panics),
            WorkerTuning::default(),
            Arc::default(),
        );
        store
            .put_job(&Job::new("boom", JobKind::RefreshCatalogs, 0))
            .await
            .unwrap();
        assert_eq!(w.round().await.unwrap(), 1);
        let job = store.job("boom").await.unwrap().unwrap();
        assert_eq!(job.lease_until_ms, 0, "not left leased to this run");
        assert_eq!(job.attempts, 1);
        assert!(job.last_error.unwrap().contains("panicked"));
        assert!(job.due_ms > clock.now_ms(), "retried after a wait");
        assert!(w.hand().is_empty());
    }

    #[tokio::test]
    async fn a_periodic_job_runs_when_due_and_comes_back_after_its_period() {
        let (w, store, clock, handler) = worker(0, Outcome::Again(Duration::from_secs(60)));
        store
            .put_job(&Job::new("tick", JobKind::RefreshCatalogs, 1_005_000))
            .await
            .unwrap();
        assert_eq!(w.round().await.unwrap(), 0, "not due yet");
        clock.advance(5_000);
        assert_eq!(w.round().await.unwrap(), 1);
        let job = store.job("tick").await.unwrap().unwrap();
        assert_eq!((job.due_ms, job.lease_until_ms), (1_065_000, 0));
        assert_eq!(w.round().await.unwrap(), 0, "not again before its period");
        clock.advance(60_000);
        assert_eq!(w.round().await.unwrap(), 1);
        assert_eq!(handler.runs.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failing_job_is_retried_on_the_schedule_then_kept_dead_with_its_error() {
        let (w, store, clock, handler) = worker(10, Outcome::Done);
        store
            .put_job(&Job::new("flaky", JobKind::ExpireIdempotency, 0))
            .await
            .unwrap();
        for (failure, full_wait_ms) in [(1u32, 10_000u64), (2, 20_000)] {
            assert_eq!(w.round().await.unwrap(), 1);
            let job = store.job("flaky").await.unwrap().unwrap();
            assert_eq!(job.attempts, failure);
            let wait = job.due_ms - clock.now_ms();
            assert!(
                (full_wait_ms / 2..=full_wait_ms).contains(&wait),
                "retry {failure} waits {wait} ms"
            );
            assert_eq!(w.round().await.unwrap(), 0, "not before its wait");
            clock.advance(full_wait_ms);
        }
        assert_eq!(w.round().await.unwrap(), 1);
        let job = store.job("flaky").await.unwrap().unwrap();
        assert!(job.dead && job.attempts == 3);
        assert_eq!(job.last_error.as_deref(), Some("supplier down"));
        clock.advance(3_600_000);
        assert_eq!(w.round().await.unwrap(), 0, "a dead job no longer runs");
        assert_eq!(handler.runs.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_job_that_is_done_is_removed_and_the_worker_stops_at_shutdown() {
        let (w, store, _clock, handler) = worker(0, Outcome::Done);
        store
            .put_job(&Job::new("once", JobKind::RefreshCatalogs, 0))
            .await
            .unwrap();
        let (tx, rx) = watch::channel(false);
        let w = Arc::new(w);
        let running = tokio::spawn({
            let w = w.clone();
            async move { w.run_until(rx).await }
        });
        while handler.runs.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the worker stops at shutdown")
            .unwrap();
        assert_eq!(store.job("once").await.unwrap(), None);
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_start_makes_housekeeping_due_now_even_if_a_killed_process_leased_it_or_it_was_given_up()
     {
        let store = MemoryStore::new();
        GatewayJobs::schedule(&store, 1_000).await.unwrap();
        // The previous process claimed them all (10-minute leases) and was killed.
        assert_eq!(
            store
                .claim_jobs("run-old", 1_000, 600_000, 10)
                .await
                .unwrap()
                .len(),
            5
        );
        assert!(
            store
                .claim_jobs("run-old", 2_000, 600_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // One of them had been given up after its retries.
        let mut dead = store.job("sweep-retention").await.unwrap().unwrap();
        dead.dead = true;
        store.put_job(&dead).await.unwrap();
        GatewayJobs::schedule(&store, 2_000).await.unwrap();
        let due: Vec<String> = store
            .claim_jobs("run-new", 2_000, 600_000, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(
            due,
            [
                "adopt-orders",
                "dispatch-events",
                "expire-idempotency",
                "refresh-catalogs",
                "sweep-retention"
            ]
        );
    }
}
