//! Fulfilment: the steps that take accepted orders to a final state.
//!
//! ```text
//! accepted --provision--> submitted --delivered--> fulfilled  (capture the hold)
//!                             |  \--pending--> poll later ----^
//!                             \--final error or retries spent--> failed (release the hold)
//! ```
//!
//! The first step runs in the request that accepted the order ([`Fulfilment::run`]), so a
//! fast supplier settles it at once. Every later step (a retry, a poll) is a durable job
//! (`domain::jobs`, one per order) that the job worker hands to [`Fulfilment::step`].
//! Every step is persisted before the next supplier call, so after a crash
//! [`Fulfilment::recover`] makes sure each unfinished order has its job again. Provisioning is
//! idempotent on the order reference (the WIT contract demands it), so a call repeated
//! after a crash cannot buy twice. Money moves only in a `store::Commit`, atomically
//! with the status change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use super::clock::Clock;
use super::ekyc::EkycStatus;
use super::esim;
use super::events::Event;
use super::ids::OrderId;
use super::jobs::{Alarm, Job};
use super::keyring::Keyring;
use super::ledger::EntryKind;
use super::orders::{
    ActivationData, EsimRecord, IllegalTransition, Order, OrderFailure, OrderKind, OrderStatus,
};
use super::store::{Commit, HeldLock, Rejected, Store, StoreError};
use super::supplier::{
    EsimProfile, FaultKind, PlanState, ProfileState, ProvisionOutcome, ProvisionRequest,
    SupplierError, Suppliers,
};

/// How hard fulfilment tries. Defaults suit real suppliers; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Failed supplier calls in a row before an order fails. A poll that finds the order
    /// still pending is not a failure.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Delay between polls of a pending order.
    pub poll_interval: Duration,
    /// How long, from acceptance, an order may stay pending at its supplier before it fails
    /// `supplier_timeout`. Suppliers that finish by webhook can take hours.
    pub pending_timeout: Duration,
    /// Orders processed at once.
    pub concurrency: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            pending_timeout: Duration::from_secs(24 * 3600),
            concurrency: 64,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Orders that reached each status since the process started, and deliveries refused
/// because their ICCID belonged to another order (aggregate counts only).
#[derive(Debug, Default)]
pub struct OrderCounters {
    reached: [std::sync::atomic::AtomicU64; 6],
    iccid_conflicts: std::sync::atomic::AtomicU64,
}

impl OrderCounters {
    const STATUSES: [OrderStatus; 6] = [
        OrderStatus::Accepted,
        OrderStatus::AwaitingKyc,
        OrderStatus::Submitted,
        OrderStatus::Fulfilled,
        OrderStatus::Failed,
        OrderStatus::Cancelled,
    ];

    /// Count an order reaching `status`.
    pub fn reached(&self, status: OrderStatus) {
        if let Some(i) = Self::STATUSES.iter().position(|s| *s == status) {
            self.reached[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Count a delivery refused because its ICCID belonged to another order.
    pub fn iccid_conflict(&self) {
        self.iccid_conflicts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Deliveries refused because their ICCID belonged to another order.
    pub fn iccid_conflicts(&self) -> u64 {
        self.iccid_conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `(status name, count)` for every status.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Self::STATUSES
            .iter()
            .zip(&self.reached)
            .map(|(s, n)| {
                (
                    status_name(*s),
                    n.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// The API name of a status.
pub fn status_name(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Accepted => "accepted",
        OrderStatus::AwaitingKyc => "awaiting_kyc",
        OrderStatus::Submitted => "submitted",
        OrderStatus::Fulfilled => "fulfilled",
        OrderStatus::Failed => "failed",
        OrderStatus::Cancelled => "cancelled",
    }
}

/// An order a step settled, with the eSIMs it delivered.
pub struct Settled {
    /// The order in its final state.
    pub order: Order,
    /// Its eSIMs as stored.
    pub esims: Vec<EsimRecord>,
}

/// A settlement the store refused although its order holds the money it moves: the
/// records disagree with each other, so the step is not taken.
fn unbalanced(order: OrderId, rejected: Rejected) -> StoreError {
    StoreError::Backend(format!("settling order {order} was refused: {rejected}"))
}

/// The fulfilment worker.
pub struct Fulfilment {
    store: Arc<dyn Store>,
    suppliers: Arc<dyn Suppliers>,
    keyring: Arc<dyn Keyring>,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
    alarm: Arc<Alarm>,
    slots: Semaphore,
    waiters: Mutex<HashMap<OrderId, Vec<oneshot::Sender<()>>>>,
    /// Serialises the changes one order can meet at once: a fulfilment step, a supplier's
    /// webhook settling it, its eKYC session opening, a provider's callback, its wait
    /// running out, a rectification.
    order_locks: OrderLocks,
    /// Status counts for metrics.
    pub counters: OrderCounters,
}

/// One lock per order, held only while in use: the map keeps an entry no longer than some
/// task holds or waits for it.
#[derive(Default)]
pub(crate) struct OrderLocks(Mutex<HashMap<OrderId, Arc<tokio::sync::Mutex<()>>>>);

/// Holds an order's lock; the entry goes when the last holder or waiter drops it.
pub(crate) struct OrderGuard<'a> {
    locks: &'a OrderLocks,
    id: OrderId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The order's lock across processes, when the store is shared (`Store::lock_order`).
    shared: Option<HeldLock>,
}

impl OrderLocks {
    /// Wait for order `id`'s lock: this process's first (so that tasks here queue without
    /// each holding a database connection), then the store's, across nodes.
    pub(crate) async fn lock(
        &self,
        id: OrderId,
        store: &dyn Store,
    ) -> Result<OrderGuard<'_>, StoreError> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let mut guard = OrderGuard {
            locks: self,
            id,
            guard: Some(lock.lock_owned().await),
            shared: None,
        };
        guard.shared = store.lock_order(id).await?;
        Ok(guard)
    }
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        drop(self.shared.take());
        drop(self.guard.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map's own handle left: nobody holds or waits for it.
        if map.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&self.id);
        }
    }
}

/// Why a step could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The store failed: the step is tried again later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The order's total does not fit the ledger (a record this gateway did not write).
    #[error(transparent)]
    Total(#[from] super::orders::TotalOutOfRange),
    /// The order is in a state this step may not change (a bug, or a race with another
    /// change): it is left as it is.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// What a supplier's webhook says of one of its orders.
pub(crate) enum SupplierNews {
    /// The eSIMs are ready: these.
    Delivered(Vec<EsimProfile>),
    /// The order failed at the supplier, for this reason.
    Failed(String),
    /// The order is ready at the supplier: poll it.
    Ready,
}

/// What a verification outcome did to its order.
pub(crate) enum KycDecided {
    /// Nothing (the order is not waiting for this, or the status changes nothing).
    Unchanged,
    /// Approved: the order is on its way to the supplier.
    Submitted,
    /// Rejected or expired: the order failed and its hold was released.
    Settled(Option<Box<Settled>>),
    /// Not expired yet: the wait ends at this time.
    Waiting(u64),
}

/// What one processing step decided.
enum Step {
    /// Final and durable; with the records when this step settled it.
    Settled(Option<Box<Settled>>),
    /// Call again after this delay.
    Again(Duration),
}

impl Fulfilment {
    /// Fulfilment over the store and suppliers; `alarm` wakes the job worker.
    pub fn new(
        store: Arc<dyn Store>,
        suppliers: Arc<dyn Suppliers>,
        keyring: Arc<dyn Keyring>,
        clock: Arc<dyn Clock>,
        policy: RetryPolicy,
        alarm: Arc<Alarm>,
    ) -> Arc<Fulfilment> {
        Arc::new(Fulfilment {
            store,
            suppliers,
            keyring,
            clock,
            alarm,
            slots: Semaphore::new(policy.concurrency),
            policy,
            waiters: Mutex::new(HashMap::new()),
            order_locks: OrderLocks::default(),
            counters: OrderCounters::default(),
        })
    }

    /// Make sure every unfinished order has its fulfilment job (after a restart: a crash
    /// may have come between accepting an order and scheduling its next step). Returns
    /// how many orders are unfinished.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let open = self.store.open_orders().await?;
        for order in &open {
            self.schedule(order.id, order.next_attempt_ms).await?;
        }
        if !open.is_empty() {
            tracing::info!(orders = open.len(), "resuming unfinished orders");
        }
        Ok(open.len())
    }

    /// Give each unfinished order without a fulfilment job one, due now: a node killed
    /// during an order's first step (taken in the request, before any job) leaves it
    /// so. On one node the restart's [`Fulfilment::recover`] does this; with several, a
    /// live node must. Orders changed within `grace` are left alone, their first step
    /// perhaps still running (were one taken meanwhile, it would wait for the order's
    /// lock and find the order further along). Returns how many were adopted.
    pub async fn adopt(&self, grace: Duration) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let before = now.saturating_sub(grace.as_millis() as u64);
        let mut adopted = 0;
        for order in self.store.open_orders().await? {
            if order.updated_at_ms < before
                && self.store.add_job(&Job::fulfil(order.id, now)).await?
            {
                adopted += 1;
            }
        }
        if adopted > 0 {
            self.alarm.set(now);
            tracing::info!(
                orders = adopted,
                "took up unfinished orders left without a next step"
            );
        }
        Ok(adopted)
    }

    /// Register interest in an order reaching a final state. Call before `run`.
    pub fn watch(&self, id: OrderId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .push(tx);
        rx
    }

    fn notify(&self, id: OrderId) {
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Make order `id`'s next step a durable job due at `due_ms` (a job in hand is kept).
    pub(crate) async fn schedule(&self, id: OrderId, due_ms: u64) -> Result<(), StoreError> {
        self.store.add_job(&Job::fulfil(id, due_ms)).await?;
        self.alarm.set(due_ms);
        Ok(())
    }

    /// Take the first step on an order just accepted, in the caller's task: a fast
    /// supplier then settles it without a hand-off. Any later step is a job. Dropping the
    /// future before it ends would abandon the supplier call: callers that stop waiting
    /// hand it to `tokio::spawn` instead. Returns the settled order and its eSIMs when
    /// this first step settled it.
    pub async fn run(self: Arc<Self>, order: Order) -> Option<Box<Settled>> {
        let id = order.id;
        let step = {
            let _slot = self.slots.acquire().await.expect("semaphore never closed");
            match self.order_locks.lock(id, self.store.as_ref()).await {
                // The order as just written: no supplier can name it before this step's
                // own call, which happens under the lock, so nothing can have changed it.
                Ok(_lock) => self.advance(order).await,
                Err(e) => Err(e.into()),
            }
        };
        let again = match step {
            Ok(Step::Settled(settled)) => {
                self.notify(id);
                return settled;
            }
            Ok(Step::Again(delay)) => delay,
            Err(StepError::Store(e)) => {
                // The store failed; try again later rather than lose the order.
                tracing::error!(order = %id, error = %e, "fulfilment step failed; retrying");
                self.policy.max_backoff
            }
            Err(refused) => {
                self.left_as_is(id, &refused);
                return None;
            }
        };
        let due = self.clock.now_ms().saturating_add(again.as_millis() as u64);
        if let Err(e) = self.schedule(id, due).await {
            tracing::error!(order = %id, error = %e, "could not schedule the next fulfilment step; the adopt-orders job (or a restart) takes the order up");
        }
        None
    }

    /// The fulfilment job of order `id`: take its next step. `Ok(None)`: the order is
    /// final (or gone); `Ok(Some(delay))`: step again after `delay`; `Err`: the store
    /// failed, and the job is retried on the worker's schedule.
    pub async fn step(&self, id: OrderId) -> Result<Option<Duration>, String> {
        let step = {
            let _slot = self.slots.acquire().await.expect("semaphore never closed");
            let locked = self.order_locks.lock(id, self.store.as_ref()).await;
            match locked {
                Ok(_lock) => match self.store.order(id).await {
                    Ok(Some(order)) => self.advance(order).await,
                    Ok(None) => Ok(Step::Settled(None)),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            }
        };
        match step {
            Ok(Step::Settled(_)) => {
                self.notify(id);
                Ok(None)
            }
            Ok(Step::Again(delay)) => Ok(Some(delay)),
            Err(StepError::Store(e)) => Err(e.to_string()),
            Err(refused) => {
                self.left_as_is(id, &refused);
                Ok(None)
            }
        }
    }

    /// A step refused to change an order (a total out of range, an illegal transition):
    /// the order stays as it is for the operator, and nobody waits for it any longer.
    fn left_as_is(&self, id: OrderId, refused: &StepError) {
        tracing::error!(order = %id, error = %refused, "fulfilment step refused; order left as it is");
        self.notify(id);
    }

    /// Take one step on an order.
    async fn advance(&self, mut order: Order) -> Result<Step, StepError> {
        if order.status.is_final() {
            return Ok(Step::Settled(None));
        }
        let now = self.clock.now_ms();
        if order.status == OrderStatus::AwaitingKyc {
            // Nothing to ask the supplier yet: the step only ends a wait that ran out.
            if now < order.next_attempt_ms {
                return Ok(Step::Again(Duration::from_millis(
                    order.next_attempt_ms - now,
                )));
            }
            return match self
                .decide_kyc_locked(order.id, EkycStatus::Expired)
                .await?
            {
                KycDecided::Settled(settled) => Ok(Step::Settled(settled)),
                KycDecided::Waiting(next_ms) => Ok(Step::Again(Duration::from_millis(
                    next_ms.saturating_sub(now).max(1),
                ))),
                // Approved meanwhile (or otherwise moved on): carry on with the order now.
                KycDecided::Submitted | KycDecided::Unchanged => Ok(Step::Again(Duration::ZERO)),
            };
        }
        let first_call = order.status == OrderStatus::Accepted;
        if first_call {
            order.transition(OrderStatus::Submitted, now)?;
            self.counters.reached(OrderStatus::Submitted);
        }
        order.attempts = order.attempts.saturating_add(1);
        order.updated_at_ms = now;
        // Count a repeated attempt before calling out, so a crash loop still ends. The
        // first call needs no write of its own: the accepted order is already durable,
        // recovery treats accepted like submitted, and provisioning is idempotent on the
        // order reference.
        if !first_call {
            self.store.put_order(&order).await?;
        }

        let result = match self.suppliers.get(&order.plugin) {
            None => Err(SupplierError::Fault {
                kind: FaultKind::NotLoaded,
                message: format!("plugin {} is not loaded", order.plugin),
            }),
            Some(supplier) => match order.kind.clone() {
                OrderKind::Esim => match order.supplier_ref.clone() {
                    Some(sref) => supplier.poll(order.id.to_string(), sref).await,
                    None => {
                        // Only the order reference, SKU and quantity cross to the supplier (P3).
                        let request = ProvisionRequest {
                            order_ref: order.id.to_string(),
                            sku: order.sku.clone(),
                            quantity: order.quantity,
                        };
                        supplier.provision(request).await
                    }
                },
                OrderKind::TopUp { iccid } => supplier
                    .top_up(order.id.to_string(), iccid, order.sku.clone())
                    .await
                    .map(|sref| {
                        order.supplier_ref = Some(sref);
                        ProvisionOutcome::Delivered(Vec::new())
                    }),
            },
        };

        match result {
            Ok(ProvisionOutcome::Delivered(profiles)) => self.delivered(order, profiles).await,
            Ok(ProvisionOutcome::Pending(sref)) => {
                order.supplier_ref = Some(sref);
                if now.saturating_sub(order.created_at_ms)
                    >= self.policy.pending_timeout.as_millis() as u64
                {
                    let failure = OrderFailure {
                        code: "supplier_timeout".into(),
                        message: "the supplier did not deliver in time".into(),
                    };
                    return self.fail(order, failure).await;
                }
                // The supplier is working on it: progress, not a failure. Failures after
                // this get their full run of attempts again.
                order.attempts = 0;
                self.again(order, self.policy.poll_interval, None, first_call)
                    .await
            }
            Err(e) if self.fails_over(&order, &e) => self.fail_over(order, e, first_call).await,
            Err(e)
                if e.is_retryable()
                    || matches!(
                        &e,
                        SupplierError::Fault {
                            kind: FaultKind::NotLoaded,
                            ..
                        }
                    ) =>
            {
                let delay = match e {
                    SupplierError::RateLimited(secs) => {
                        Duration::from_secs(secs.into()).max(self.policy.backoff(order.attempts))
                    }
                    _ => self.policy.backoff(order.attempts),
                };
                self.again(order, delay, Some(e), first_call).await
            }
            Err(e) => {
                let failure = OrderFailure::of(&e);
                self.fail(order, failure).await
            }
        }
    }

    /// Whether `order` goes to its next offer after `e`: a routed order that no supplier
    /// has taken yet (no pending reference), on out of stock, or once retries of a
    /// supplier that is unavailable, rate limited or not loaded are spent.
    fn fails_over(&self, order: &Order, e: &SupplierError) -> bool {
        let spent = order.attempts >= self.policy.max_attempts
            && (e.is_retryable()
                || matches!(
                    e,
                    SupplierError::Fault {
                        kind: FaultKind::NotLoaded,
                        ..
                    }
                ));
        !order.fallbacks.is_empty()
            && order.supplier_ref.is_none()
            && matches!(order.kind, OrderKind::Esim)
            && (matches!(e, SupplierError::OutOfStock) || spent)
    }

    /// Send `order` to its next offer, at once. Its hold stays as it is: one hold, one
    /// capture (or release), whichever supplier serves it.
    async fn fail_over(
        &self,
        mut order: Order,
        e: SupplierError,
        first_step: bool,
    ) -> Result<Step, StepError> {
        // An offer that is not `<plugin>:<sku>` (a config mistake) is passed over.
        let next = loop {
            if order.fallbacks.is_empty() {
                return self.fail(order, OrderFailure::of(&e)).await;
            }
            let offer = order.fallbacks.remove(0);
            if let Some((plugin, sku)) = super::catalog::split_product_id(&offer) {
                break (plugin.to_string(), sku.to_string());
            }
        };
        let (plugin, sku) = next;
        tracing::warn!(order = %order.id, from = %order.plugin, to = %plugin, error = %e, "supplier failed; order goes to the next offer");
        order.plugin = plugin;
        order.sku = sku;
        order.attempts = 0;
        self.again(order, Duration::ZERO, None, first_step).await
    }

    /// Settle `order` with the eSIMs its supplier delivered, if they are as many as ordered.
    async fn delivered(&self, order: Order, profiles: Vec<EsimProfile>) -> Result<Step, StepError> {
        let expected = match order.kind {
            OrderKind::Esim => order.quantity as usize,
            OrderKind::TopUp { .. } => 0,
        };
        if profiles.len() != expected {
            let failure = bad_output(format!(
                "supplier delivered {} eSIMs for a quantity of {}",
                profiles.len(),
                expected
            ));
            return self.fail(order, failure).await;
        }
        self.fulfil(order, profiles).await
    }

    /// What a supplier's webhook says of order `id`, applied under the order's lock (so a
    /// fulfilment step cannot settle it a second time): only an order of `plugin` that is
    /// with its supplier changes. `Ready` makes its next step (a poll) due now.
    pub(crate) async fn supplier_news(
        &self,
        plugin: &str,
        id: OrderId,
        news: SupplierNews,
    ) -> Result<bool, StoreError> {
        let _lock = self.order_locks.lock(id, self.store.as_ref()).await?;
        let Some(order) = self.store.order(id).await? else {
            return Ok(false);
        };
        if order.plugin != plugin || order.status != OrderStatus::Submitted {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        let step = match news {
            SupplierNews::Ready => {
                self.store.hasten_job(&Job::fulfil(id, now)).await?;
                self.alarm.set(now);
                return Ok(true);
            }
            SupplierNews::Delivered(profiles) => self.delivered(order, profiles).await,
            SupplierNews::Failed(reason) => {
                let failure = OrderFailure {
                    code: "supplier_rejected".into(),
                    message: reason,
                };
                self.fail(order, failure).await
            }
        };
        match step {
            Ok(_) => {
                self.notify(id);
                Ok(true)
            }
            Err(StepError::Store(e)) => Err(e),
            Err(refused) => {
                self.left_as_is(id, &refused);
                Ok(false)
            }
        }
    }

    /// Schedule another attempt, or fail the order when its attempts are spent.
    /// `first_step`: this was the order's first call to its supplier.
    async fn again(
        &self,
        mut order: Order,
        delay: Duration,
        error: Option<SupplierError>,
        first_step: bool,
    ) -> Result<Step, StepError> {
        if order.attempts >= self.policy.max_attempts {
            let failure = match &error {
                Some(e) => OrderFailure::of(e),
                None => OrderFailure {
                    code: "supplier_timeout".into(),
                    message: "the supplier did not deliver in time".into(),
                },
            };
            return self.fail(order, failure).await;
        }
        if let Some(e) = &error {
            tracing::warn!(order = %order.id, plugin = %order.plugin, attempt = order.attempts, error = %e, "supplier call failed; will retry");
        }
        let now = self.clock.now_ms();
        order.next_attempt_ms = now.saturating_add(delay.as_millis() as u64);
        order.updated_at_ms = now;
        if first_step {
            // Its first step did not settle it: the reseller hears it is with the supplier.
            let submitted = Commit::change(
                Some(order.clone()),
                Vec::new(),
                Event::of_order(&order).into_iter().collect(),
            );
            if let Err(rejected) = self.store.commit(&submitted).await? {
                return Err(unbalanced(order.id, rejected).into());
            }
        } else {
            self.store.put_order(&order).await?;
        }
        Ok(Step::Again(delay))
    }

    async fn fulfil(
        &self,
        mut order: Order,
        profiles: Vec<EsimProfile>,
    ) -> Result<Step, StepError> {
        if let Some(iccid) = repeated_iccid(&profiles) {
            let failure = bad_output(format!(
                "the supplier delivered ICCID {iccid} more than once in one order"
            ));
            return self.fail(order, failure).await;
        }
        let submitted = order.clone();
        order.transition(OrderStatus::Fulfilled, self.clock.now_ms())?;
        let esims: Vec<EsimRecord> = profiles
            .into_iter()
            .map(|profile| self.seal_esim(&order, profile))
            .collect();
        order.iccids = esims.iter().map(|e| e.iccid.clone()).collect();
        let commit = Commit::settle(order, EntryKind::Capture, esims)?;
        match self.store.commit(&commit).await? {
            Ok(_) => {}
            Err(Rejected::IccidTaken(taken)) => {
                // A plugin handed out an ICCID that another order owns: a plugin bug at
                // best, an attempt to take over another reseller's eSIM at worst. Nothing
                // was written; the order fails and its hold is released. The owner is
                // named to the operator only.
                tracing::error!(
                    target: "simgate::security",
                    order = %submitted.id,
                    plugin = %submitted.plugin,
                    iccid = %taken.iccid,
                    owner = %taken.owner,
                    "plugin delivered an ICCID that belongs to another order; order failed"
                );
                self.counters.iccid_conflict();
                let failure = bad_output(
                    "the supplier delivered an eSIM that belongs to another order".to_string(),
                );
                return self.fail(submitted, failure).await;
            }
            Err(refused) => return Err(unbalanced(submitted.id, refused).into()),
        }
        self.store.durable().await?;
        self.counters.reached(OrderStatus::Fulfilled);
        let (_, order, esims) = commit.into_parts();
        let order = order.expect("a settlement carries its order");
        Ok(Step::Settled(Some(Box::new(Settled { order, esims }))))
    }

    async fn fail(&self, order: Order, failure: OrderFailure) -> Result<Step, StepError> {
        self.fail_raising(order, failure, Vec::new()).await
    }

    /// Fail `order`, releasing its hold, and raise `events` with `order.failed`.
    async fn fail_raising(
        &self,
        mut order: Order,
        failure: OrderFailure,
        events: Vec<Event>,
    ) -> Result<Step, StepError> {
        tracing::info!(order = %order.id, plugin = %order.plugin, code = %failure.code, "order failed; hold released");
        order.transition(OrderStatus::Failed, self.clock.now_ms())?;
        order.failure = Some(failure);
        let id = order.id;
        // A release delivers no eSIM, so it claims no ICCID and cannot conflict.
        let commit = Commit::settle(order, EntryKind::Release, Vec::new())?.raise(events);
        if let Err(rejected) = self.store.commit(&commit).await? {
            return Err(unbalanced(id, rejected).into());
        }
        self.store.durable().await?;
        let (_, order, _) = commit.into_parts();
        let order = order.expect("a settlement carries its order");
        self.counters.reached(OrderStatus::Failed);
        Ok(Step::Settled(Some(Box::new(Settled {
            order,
            esims: Vec::new(),
        }))))
    }

    /// Wait for order `id`'s lock: whoever changes an order outside its fulfilment step
    /// holds it, and reads the order afresh under it.
    pub(crate) async fn lock_order(&self, id: OrderId) -> Result<OrderGuard<'_>, StoreError> {
        self.order_locks.lock(id, self.store.as_ref()).await
    }

    /// Apply a verification outcome to order `id`, under its eKYC lock. `Approved` sends
    /// the order on to its supplier (a job due now); `Rejected` and `Expired` fail it and
    /// release its hold; `Pending` changes nothing. Only an order awaiting eKYC with a
    /// pending session changes, except that `Expired` also ends the wait of an order
    /// whose session never opened. A decision that comes before the session's wait ran
    /// out is only taken for `Expired` once that time has come.
    pub(crate) async fn decide_kyc(
        &self,
        id: OrderId,
        status: EkycStatus,
    ) -> Result<KycDecided, StepError> {
        let _lock = self.lock_order(id).await?;
        self.decide_kyc_locked(id, status).await
    }

    /// [`Fulfilment::decide_kyc`] for a caller that holds the order's lock.
    async fn decide_kyc_locked(
        &self,
        id: OrderId,
        status: EkycStatus,
    ) -> Result<KycDecided, StepError> {
        let Some(mut order) = self.store.order(id).await? else {
            return Ok(KycDecided::Unchanged);
        };
        let now = self.clock.now_ms();
        let open = order.status == OrderStatus::AwaitingKyc
            && order.ekyc.as_ref().is_none_or(|s| !s.status.is_final());
        if !open || status == EkycStatus::Pending {
            return Ok(KycDecided::Unchanged);
        }
        if status == EkycStatus::Expired && now < order.next_attempt_ms {
            // The session was opened (and the wait moved) since this step was due.
            return Ok(KycDecided::Waiting(order.next_attempt_ms));
        }
        if status == EkycStatus::Approved && order.ekyc.is_none() {
            return Ok(KycDecided::Unchanged);
        }
        if let Some(session) = &mut order.ekyc {
            session.status = status;
            session.redirect_url = None;
            session.updated_at_ms = now;
        }
        let told = order.ekyc.as_ref().map(|_| Event::of_ekyc(&order, now));
        if status == EkycStatus::Approved {
            order.transition(OrderStatus::Submitted, now)?;
            self.counters.reached(OrderStatus::Submitted);
            order.next_attempt_ms = now;
            // `order.submitted` is raised by the first supplier step if it does not
            // settle the order, as for any order.
            let commit = Commit::change(Some(order), Vec::new(), told.into_iter().collect());
            if let Err(rejected) = self.store.commit(&commit).await? {
                return Err(unbalanced(id, rejected).into());
            }
            self.store.durable().await?;
            // Its job waits for the end of the eKYC wait: make it due now.
            self.store.hasten_job(&Job::fulfil(id, now)).await?;
            self.alarm.set(now);
            return Ok(KycDecided::Submitted);
        }
        let failure = match status {
            EkycStatus::Rejected => OrderFailure {
                code: "ekyc_rejected".into(),
                message: "the end user's identity verification was rejected".into(),
            },
            _ => OrderFailure {
                code: "ekyc_expired".into(),
                message: "the end user's identity verification was not completed in time".into(),
            },
        };
        match self
            .fail_raising(order, failure, told.into_iter().collect())
            .await?
        {
            Step::Settled(settled) => {
                self.notify(id);
                Ok(KycDecided::Settled(settled))
            }
            Step::Again(_) => unreachable!("failing settles"),
        }
    }

    fn seal_esim(&self, order: &Order, profile: EsimProfile) -> EsimRecord {
        let luhn_valid = esim::luhn_valid(&profile.iccid);
        if !luhn_valid {
            tracing::warn!(order = %order.id, plugin = %order.plugin, "delivered ICCID fails the Luhn check");
        }
        let activation = ActivationData {
            smdp_address: profile.smdp_address,
            matching_id: profile.matching_id,
        };
        let plaintext = serde_json::to_vec(&activation).expect("plain struct serialises");
        EsimRecord {
            sealed_activation: self.keyring.seal(profile.iccid.as_bytes(), &plaintext),
            iccid: profile.iccid,
            order: order.id,
            reseller: order.reseller,
            plugin: order.plugin.clone(),
            confirmation_code_required: profile.confirmation_code_required,
            luhn_valid,
            profile: ProfileState::Released,
            plan: PlanState::Ready,
            raw_status: String::new(),
            created_at_ms: order.updated_at_ms,
            usage_told_pct: 0,
        }
    }
}

/// The failure of an order whose supplier returned something unusable.
fn bad_output(message: String) -> OrderFailure {
    OrderFailure {
        code: "plugin_bad_output".into(),
        message,
    }
}

/// The first ICCID that appears twice in one delivery, if any.
fn repeated_iccid(profiles: &[EsimProfile]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(profiles.len());
    profiles
        .iter()
        .map(|p| p.iccid.as_str())
        .find(|iccid| !seen.insert(*iccid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::accounts::Reseller;
    use crate::domain::ids::ResellerId;
    use crate::domain::ledger::LedgerEntry;
    use crate::domain::supplier::{FakeSupplier, Money, OnlySupplier};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A supplier that answers `unavailable` `failures` times, then delivers; counts its
    /// provisioning calls.
    fn flaky(failures: u32) -> (FakeSupplier, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let failures_left = AtomicU32::new(failures);
        let counted = calls.clone();
        let mut supplier = FakeSupplier::new("flaky");
        supplier.provision = Box::new(move |req| {
            counted.fetch_add(1, Ordering::SeqCst);
            if failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(SupplierError::Unavailable("try later".into()));
            }
            Ok(ProvisionOutcome::Delivered(vec![EsimProfile {
                iccid: "8999000000000000005".into(),
                smdp_address: "smdp.test".into(),
                matching_id: format!("M-{}", req.order_ref),
                confirmation_code_required: false,
            }]))
        });
        (supplier, calls)
    }

    /// Where the tests' fixed clock stands.
    const CLOCK_START: u64 = 1_800_000_000_000;

    /// Accept an order for `flaky` against a funded reseller; returns the store and order.
    async fn setup(
        failures: u32,
        max_attempts: u32,
    ) -> (
        Arc<Fulfilment>,
        Arc<crate::store::MemoryStore>,
        Arc<AtomicU32>,
        Order,
        tempfile::TempDir,
    ) {
        let (flaky, calls) = flaky(failures);
        let (f, store, order, dir, _) = setup_with(flaky, max_attempts).await;
        (f, store, calls, order, dir)
    }

    /// Accept an order for `supplier` against a funded reseller.
    async fn setup_with(
        flaky: FakeSupplier,
        max_attempts: u32,
    ) -> (
        Arc<Fulfilment>,
        Arc<crate::store::MemoryStore>,
        Order,
        tempfile::TempDir,
        Arc<crate::domain::clock::FixedClock>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        // The rules run on the in-memory store: the store's own behaviour is the
        // conformance suite's to prove.
        let store = Arc::new(crate::store::MemoryStore::new());
        let keyring = Arc::new(crate::privacy::FileKeyring::open(dir.path()).unwrap());
        let policy = RetryPolicy {
            max_attempts,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..Default::default()
        };
        let clock = Arc::new(crate::domain::clock::FixedClock::at(CLOCK_START));
        let f = Fulfilment::new(
            store.clone(),
            Arc::new(OnlySupplier(Arc::new(flaky))),
            keyring,
            clock.clone(),
            policy,
            Arc::default(),
        );
        let reseller = Reseller {
            id: ResellerId::new(),
            name: "R".into(),
            markup_bps: 0,
            created_at_ms: 0,
            low_balance_alerts: Default::default(),
            test_low_balance_alerts: Default::default(),
            closed_at_ms: None,
        };
        store.put_reseller(&reseller).await.unwrap();
        let credit = LedgerEntry::new(reseller.id, EntryKind::Credit, 1000, "USD", None, 0);
        store
            .commit(&Commit::credit(credit))
            .await
            .unwrap()
            .unwrap();
        let order = Order {
            id: OrderId::new(),
            reseller: reseller.id,
            product_id: "flaky:SKU".into(),
            plugin: "flaky".into(),
            sku: "SKU".into(),
            quantity: 1,
            status: OrderStatus::Accepted,
            unit_price: Money {
                minor: 300,
                currency: "USD".into(),
            },
            personal: None,
            supplier_ref: None,
            iccids: vec![],
            failure: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            kind: OrderKind::Esim,
            attempts: 0,
            next_attempt_ms: 0,
            ekyc: None,
            fallbacks: Vec::new(),
        };
        store
            .commit(&Commit::accept(order.clone()).unwrap())
            .await
            .unwrap()
            .unwrap();
        (f, store, order, dir, clock)
    }

    /// The due time of `order`'s fulfilment job, if it has one.
    async fn job_due(store: &crate::store::MemoryStore, order: &Order) -> Option<u64> {
        let job = store.job(&Job::fulfil(order.id, 0).id).await.unwrap()?;
        assert_eq!(
            job.kind,
            crate::domain::jobs::JobKind::Fulfil { order: order.id }
        );
        Some(job.due_ms)
    }

    #[tokio::test]
    async fn an_unavailable_supplier_is_retried_as_a_job_until_it_delivers() {
        let (f, store, calls, order, _dir) = setup(2, 5).await;
        let done = f.watch(order.id);
        assert!(
            f.clone().run(order.clone()).await.is_none(),
            "not delivered yet"
        );
        // The next step is a durable job, due after the first backoff.
        assert_eq!(job_due(&store, &order).await, Some(CLOCK_START + 5));
        assert_eq!(f.step(order.id).await, Ok(Some(Duration::from_millis(10))));
        assert_eq!(
            f.step(order.id).await,
            Ok(None),
            "delivered: the job is done"
        );
        done.await.expect("the waiter hears of it");
        let o = store.order(order.id).await.unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Fulfilled);
        assert_eq!(o.attempts, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let b = store.balance(order.reseller, "USD").await.unwrap();
        assert_eq!((b.available, b.held), (700, 0), "captured once");
        // Every time the step wrote is the clock's, not the wall clock's.
        assert_eq!(o.updated_at_ms, CLOCK_START);
        let ledger = store
            .ledger_page(order.reseller, None, 10)
            .await
            .unwrap()
            .items;
        let capture = ledger
            .iter()
            .find(|e| e.kind == EntryKind::Capture)
            .expect("one capture");
        assert_eq!(capture.created_at_ms, CLOCK_START);
        let esim = store.esim(&o.iccids[0]).await.unwrap().unwrap();
        assert_eq!(esim.created_at_ms, CLOCK_START);
        // A step on a final order changes nothing and calls no supplier.
        assert_eq!(f.step(order.id).await, Ok(None));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_order_fails_and_releases_its_hold_when_retries_are_spent() {
        let (f, store, calls, order, _dir) = setup(10, 3).await;
        assert!(f.clone().run(order.clone()).await.is_none());
        assert!(f.step(order.id).await.unwrap().is_some());
        assert_eq!(f.step(order.id).await, Ok(None));
        let o = store.order(order.id).await.unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Failed);
        assert_eq!(o.failure.unwrap().code, "supplier_unavailable");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let b = store.balance(order.reseller, "USD").await.unwrap();
        assert_eq!((b.available, b.held), (1000, 0), "hold released");
    }

    #[tokio::test]
    async fn recovery_gives_every_unfinished_order_its_job_and_keeps_one_in_hand() {
        let (f, store, _calls, order, _dir) = setup(0, 3).await;
        // A crash came between accepting the order and its first step.
        assert_eq!(job_due(&store, &order).await, None);
        assert_eq!(f.recover().await.unwrap(), 1);
        assert_eq!(job_due(&store, &order).await, Some(order.next_attempt_ms));
        // A job in hand (perhaps leased by a worker) is left as it is.
        let leased = store
            .claim_jobs("run-1", CLOCK_START, 60_000, 10)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(f.recover().await.unwrap(), 1);
        let job = store.job(&leased[0].id).await.unwrap().unwrap();
        assert_eq!(job.lease_until_ms, CLOCK_START + 60_000);
        // Once the order is final, recovery has nothing to resume.
        assert_eq!(f.step(order.id).await, Ok(None));
        assert_eq!(f.recover().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn polls_of_a_pending_order_spend_no_attempts_and_its_wait_is_bounded_in_time() {
        let mut pending = FakeSupplier::new("flaky");
        pending.provision = Box::new(|_| Ok(ProvisionOutcome::Pending("S-1".into())));
        pending.poll = Box::new(|_, _| Ok(ProvisionOutcome::Pending("S-1".into())));
        let (f, store, order, _dir, clock) = setup_with(pending, 2).await;
        // Accepted now, by the test clock.
        let mut order = order;
        order.created_at_ms = CLOCK_START;
        store.put_order(&order).await.unwrap();
        assert!(f.clone().run(order.clone()).await.is_none());
        // Far more polls than `max_attempts` (2): still waiting for its supplier.
        for _ in 0..10 {
            assert!(matches!(f.step(order.id).await, Ok(Some(_))));
        }
        let o = store.order(order.id).await.unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Submitted);
        assert_eq!(o.supplier_ref.as_deref(), Some("S-1"));
        // Past the pending timeout, it fails and its hold is released.
        clock.advance(RetryPolicy::default().pending_timeout.as_millis() as u64);
        assert_eq!(f.step(order.id).await, Ok(None));
        let o = store.order(order.id).await.unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Failed);
        assert_eq!(o.failure.unwrap().code, "supplier_timeout");
        let b = store.balance(order.reseller, "USD").await.unwrap();
        assert_eq!((b.available, b.held), (1000, 0), "released");
    }

    #[tokio::test]
    async fn a_routed_order_fails_over_once_retries_are_spent_and_is_captured_once() {
        let mut two_offers = FakeSupplier::new("flaky");
        two_offers.provision = Box::new(|req| match req.sku.as_str() {
            "SKU" => Err(SupplierError::Unavailable("down".into())),
            _ => Ok(ProvisionOutcome::Delivered(vec![EsimProfile {
                iccid: "8999000000000000005".into(),
                smdp_address: "smdp.test".into(),
                matching_id: format!("M-{}", req.sku),
                confirmation_code_required: false,
            }])),
        });
        let (f, store, order, _dir, _clock) = setup_with(two_offers, 2).await;
        let mut order = order;
        order.fallbacks = vec!["not-an-offer".into(), "flaky:OTHER".into()];
        store.put_order(&order).await.unwrap();
        assert!(
            f.clone().run(order.clone()).await.is_none(),
            "retried first"
        );
        // The second failure spends the attempts: on to the next offer, at once.
        assert_eq!(f.step(order.id).await, Ok(Some(Duration::ZERO)));
        let moved = store.order(order.id).await.unwrap().unwrap();
        assert_eq!(
            (moved.plugin.as_str(), moved.sku.as_str()),
            ("flaky", "OTHER")
        );
        assert!(
            moved.fallbacks.is_empty(),
            "the malformed offer was passed over"
        );
        assert_eq!(f.step(order.id).await, Ok(None));
        let done = store.order(order.id).await.unwrap().unwrap();
        assert_eq!(done.status, OrderStatus::Fulfilled);
        let b = store.balance(order.reseller, "USD").await.unwrap();
        assert_eq!((b.available, b.held), (700, 0), "one hold, captured once");
        let entries = store
            .ledger_page(order.reseller, None, 10)
            .await
            .unwrap()
            .items;
        assert_eq!(
            entries.iter().filter(|e| e.order == Some(order.id)).count(),
            2,
            "a hold and a capture: {entries:?}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..Default::default()
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(4), Duration::from_millis(500));
        assert_eq!(p.backoff(40), Duration::from_millis(500));
    }
}
