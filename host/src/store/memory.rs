//! An in-memory [`Store`]: every record in maps behind one lock, so each method is
//! trivially atomic. It holds nothing across processes; "reopening" it (a clone) shares
//! the same records, as a clean restart would find them. It exists so the domain's rules
//! can be tested without a disk, and as the simplest reference for the store conformance
//! suite (`store::conformance`), which it passes beside sled.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use ulid::Ulid;

use crate::domain::accounts::{ApiKey, KeyHash, KeyMode, Reseller};
use crate::domain::audit::{AuditCheckpoint, AuditEntry, AuditFilter, GENESIS, NewAuditEntry};
use crate::domain::catalog::CachedCatalog;
use crate::domain::consent::ConsentEvent;
use crate::domain::events::{Event, EventType};
use crate::domain::idempotency::{self, Claim, IdemKey, IdemRecord, IdemState};
use crate::domain::ids::{AttemptId, ConsentId, EndpointId, EventId, KeyId, OrderId, ResellerId};
use crate::domain::jobs::Job;
use crate::domain::ledger::{Balance, Books, LedgerEntry, Refused};
use crate::domain::nodes::{NodeRecord, live_runs};
use crate::domain::orders::{EsimRecord, Order, OrderStatus};
use crate::domain::personal::{Restriction, SubjectLookup};
use crate::domain::request_log::RequestRecord;
use crate::domain::store::{Commit, IccidTaken, Page, Rejected, Store, StoreError, StoreResult};
use crate::domain::webhooks::{Attempt, Endpoint};

/// The entries of `map` filed under one reseller's subject, in key order from `first`.
fn of_subject<'a, K: Ord + Copy, V>(
    map: &'a BTreeMap<(ResellerId, SubjectLookup, K), V>,
    reseller: ResellerId,
    subject: &SubjectLookup,
    first: K,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    let subject = *subject;
    map.range((reseller, subject, first)..)
        .take_while(move |((r, s, _), _)| *r == reseller && *s == subject)
        .map(|((_, _, k), v)| (k, v))
}

/// The in-memory store. Clones share the same records.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl State {
    /// How many records of the kinds an account's deletion removes (to count them).
    fn account_records(&self) -> usize {
        self.api_keys.len()
            + self.endpoints.len()
            + self.attempts.len()
            + self.consents.len()
            + self.restrictions.len()
            + self.subject_orders.len()
            + self.events.len()
            + self.ledger.len()
            + self.resellers.len()
    }
}

#[derive(Default)]
struct State {
    resellers: BTreeMap<ResellerId, Reseller>,
    api_keys: HashMap<[u8; 32], ApiKey>,
    api_key_ids: HashMap<KeyId, [u8; 32]>,
    orders: BTreeMap<OrderId, Order>,
    esims: HashMap<String, EsimRecord>,
    ledger: BTreeMap<(ResellerId, Ulid), LedgerEntry>,
    books: Books,
    idempotency: HashMap<Vec<u8>, IdemRecord>,
    subject_keys: HashMap<SubjectLookup, Vec<u8>>,
    consents: BTreeMap<(ResellerId, SubjectLookup, ConsentId), ConsentEvent>,
    subject_orders: BTreeMap<(ResellerId, SubjectLookup, OrderId), ()>,
    requests: BTreeMap<Ulid, RequestRecord>,
    restrictions: HashMap<(ResellerId, SubjectLookup), Restriction>,
    catalogs: HashMap<String, CachedCatalog>,
    jobs: BTreeMap<String, Job>,
    nodes: BTreeMap<String, NodeRecord>,
    events: BTreeMap<(ResellerId, EventId), Event>,
    outbox: BTreeMap<EventId, ResellerId>,
    endpoints: BTreeMap<(ResellerId, EndpointId), Endpoint>,
    attempts: BTreeMap<(EndpointId, AttemptId), Attempt>,
    meta: HashMap<String, Vec<u8>>,
    audit: BTreeMap<u64, AuditEntry>,
    audit_checkpoint: Option<AuditCheckpoint>,
    closed: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the stored audit log behind the store's back, as someone with write access
    /// to the database could (tamper-evidence tests).
    #[cfg(test)]
    pub(crate) fn tamper_with_audit_log(&self, f: impl FnOnce(&mut BTreeMap<u64, AuditEntry>)) {
        f(&mut self.lock().audit)
    }
}

impl State {
    /// Apply `entry` to its balance and the open orders, or refuse it (nothing changes).
    /// Returns the balance before and after the entry.
    fn post(&mut self, entry: &LedgerEntry) -> StoreResult<Result<(Balance, Balance), Refused>> {
        if self.closed {
            return Err(StoreError::Backend("the store is closed".into()));
        }
        let (before, after) = match self.books.post(entry) {
            Ok(counted) => counted,
            Err(refused) => return Ok(Err(refused)),
        };
        self.ledger
            .insert((entry.reseller, entry.id), entry.clone());
        Ok(Ok((before, after)))
    }

    /// An order with the stored eSIMs of its ICCIDs.
    fn order_and_esims(&self, id: OrderId) -> Option<(Order, Vec<EsimRecord>)> {
        let order = self.orders.get(&id)?.clone();
        let esims = order
            .iccids
            .iter()
            .filter_map(|iccid| self.esims.get(iccid).cloned())
            .collect();
        Some((order, esims))
    }

    /// Whether what a request of `reseller` creates under `id` exists (an order, or a
    /// ledger entry of that id in either of its accounts: an admin's credit under the
    /// reseller's key may go to its test account).
    fn created(&self, reseller: ResellerId, id: OrderId) -> bool {
        self.orders.contains_key(&id)
            || [KeyMode::Live, KeyMode::Test]
                .iter()
                .any(|m| self.ledger.contains_key(&(m.account(reseller), id.0)))
    }
}

/// The first `limit` items and whether more follow.
fn page<T>(items: impl Iterator<Item = T>, limit: usize) -> Page<T> {
    let mut items: Vec<T> = items.take(limit + 1).collect();
    let has_more = items.len() > limit;
    items.truncate(limit);
    Page { items, has_more }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>> {
        Ok(self.lock().resellers.get(&id).cloned())
    }

    async fn resellers(&self) -> StoreResult<Vec<Reseller>> {
        Ok(self.lock().resellers.values().cloned().collect())
    }

    async fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()> {
        self.lock().resellers.insert(reseller.id, reseller.clone());
        Ok(())
    }

    async fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>> {
        Ok(self.lock().api_keys.get(&hash.0).cloned())
    }

    async fn api_key_by_id(&self, id: KeyId) -> StoreResult<Option<ApiKey>> {
        let state = self.lock();
        Ok(state
            .api_key_ids
            .get(&id)
            .and_then(|hash| state.api_keys.get(hash))
            .cloned())
    }

    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let mut state = self.lock();
        state.api_keys.insert(key.hash.0, key.clone());
        state.api_key_ids.insert(key.id, key.hash.0);
        Ok(())
    }

    async fn order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        Ok(self.lock().orders.get(&id).cloned())
    }

    async fn order_and_esims(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<EsimRecord>)>> {
        Ok(self.lock().order_and_esims(id))
    }

    async fn orders_page(
        &self,
        reseller: ResellerId,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> StoreResult<Page<(Order, Vec<EsimRecord>)>> {
        let state = self.lock();
        let upper = before.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let orders = state
            .orders
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .map(|(_, o)| o)
            .filter(|o| o.reseller == reseller && status.is_none_or(|s| s == o.status))
            .filter_map(|o| state.order_and_esims(o.id));
        Ok(page(orders, limit))
    }

    async fn open_orders(&self) -> StoreResult<Vec<Order>> {
        let state = self.lock();
        Ok(state
            .books
            .open_orders()
            .filter_map(|id| state.orders.get(&id))
            .filter(|o| !o.status.is_final())
            .cloned()
            .collect())
    }

    async fn put_order(&self, order: &Order) -> StoreResult<()> {
        self.lock().orders.insert(order.id, order.clone());
        Ok(())
    }

    async fn commit(&self, commit: &Commit) -> StoreResult<Result<Option<Balance>, Rejected>> {
        let mut state = self.lock();
        if state.closed {
            return Err(StoreError::Backend("the store is closed".into()));
        }
        let order = commit.order();
        for e in commit.esims() {
            let owner = match state.esims.get(&e.iccid) {
                Some(held) => held.order,
                // A change delivers nothing: its eSIMs must exist.
                None if commit.entry().is_none() => {
                    return Err(StoreError::Backend(format!(
                        "a change may only update an eSIM already delivered; {} is not",
                        e.iccid
                    )));
                }
                None => continue,
            };
            let claimant = order.map_or(e.order, |o| o.id);
            if owner != claimant || owner != e.order {
                return Ok(Err(IccidTaken {
                    iccid: e.iccid.clone(),
                    owner,
                }
                .into()));
            }
        }
        let (balance, events) = match commit.entry() {
            Some(entry) => match state.post(entry)? {
                Ok((before, after)) => (Some(after), commit.events_posted(before, after)),
                Err(refused) => return Ok(Err(refused.into())),
            },
            None => (None, commit.events().to_vec()),
        };
        if let Some(order) = order {
            state.orders.insert(order.id, order.clone());
        }
        for esim in commit.esims() {
            state.esims.insert(esim.iccid.clone(), esim.clone());
        }
        for endpoint in commit.endpoints() {
            state
                .endpoints
                .insert((endpoint.reseller, endpoint.id), endpoint.clone());
        }
        for event in &events {
            state
                .events
                .insert((event.reseller, event.id), event.clone());
            state.outbox.insert(event.id, event.reseller);
        }
        Ok(Ok(balance))
    }

    async fn events_page(
        &self,
        reseller: ResellerId,
        before: Option<EventId>,
        kind: Option<EventType>,
        limit: usize,
    ) -> StoreResult<Page<Event>> {
        let state = self.lock();
        let end = before.unwrap_or(EventId(Ulid::from_bytes([0xff; 16])));
        let events = state
            .events
            .range((reseller, EventId(Ulid::nil()))..(reseller, end))
            .rev()
            .map(|(_, e)| e)
            .filter(|e| kind.is_none_or(|t| t == e.kind))
            .cloned();
        Ok(page(events, limit))
    }

    async fn event(&self, reseller: ResellerId, id: EventId) -> StoreResult<Option<Event>> {
        Ok(self.lock().events.get(&(reseller, id)).cloned())
    }

    async fn outbox(&self, limit: usize) -> StoreResult<Vec<Event>> {
        let state = self.lock();
        Ok(state
            .outbox
            .iter()
            .filter_map(|(id, reseller)| state.events.get(&(*reseller, *id)).cloned())
            .take(limit)
            .collect())
    }

    async fn dispatched(&self, events: &[Event]) -> StoreResult<()> {
        let mut state = self.lock();
        for event in events {
            state.outbox.remove(&event.id);
        }
        Ok(())
    }

    async fn put_endpoint(&self, endpoint: &Endpoint) -> StoreResult<()> {
        self.lock()
            .endpoints
            .insert((endpoint.reseller, endpoint.id), endpoint.clone());
        Ok(())
    }

    async fn endpoint(
        &self,
        reseller: ResellerId,
        id: EndpointId,
    ) -> StoreResult<Option<Endpoint>> {
        Ok(self.lock().endpoints.get(&(reseller, id)).cloned())
    }

    async fn endpoints(&self, reseller: ResellerId) -> StoreResult<Vec<Endpoint>> {
        Ok(self
            .lock()
            .endpoints
            .values()
            .filter(|e| e.reseller == reseller)
            .cloned()
            .collect())
    }

    async fn delete_endpoint(&self, reseller: ResellerId, id: EndpointId) -> StoreResult<bool> {
        Ok(self.lock().endpoints.remove(&(reseller, id)).is_some())
    }

    async fn put_attempt(&self, attempt: &Attempt) -> StoreResult<()> {
        self.lock()
            .attempts
            .insert((attempt.endpoint, attempt.id), attempt.clone());
        Ok(())
    }

    async fn expire_attempts(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize> {
        let mut state = self.lock();
        let mut old: Vec<_> = state
            .attempts
            .iter()
            .filter(|(_, a)| a.at_ms < cutoff_ms)
            .map(|(k, a)| (a.at_ms, *k))
            .collect();
        old.sort();
        old.truncate(limit);
        for (_, k) in &old {
            state.attempts.remove(k);
        }
        Ok(old.len())
    }

    async fn attempts_page(
        &self,
        reseller: ResellerId,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: usize,
    ) -> StoreResult<Page<Attempt>> {
        let state = self.lock();
        let end = before.unwrap_or(AttemptId(Ulid::from_bytes([0xff; 16])));
        let attempts = state
            .attempts
            .range((endpoint, AttemptId(Ulid::nil()))..(endpoint, end))
            .rev()
            .map(|(_, a)| a)
            .filter(|a| a.reseller == reseller)
            .cloned();
        Ok(page(attempts, limit))
    }

    async fn balance(&self, reseller: ResellerId, currency: &str) -> StoreResult<Balance> {
        Ok(self.lock().books.balance(reseller, currency))
    }

    async fn balances(&self, reseller: ResellerId) -> StoreResult<Vec<(String, Balance)>> {
        Ok(self.lock().books.balances_of(reseller))
    }

    async fn ledger_entry(
        &self,
        reseller: ResellerId,
        id: Ulid,
    ) -> StoreResult<Option<LedgerEntry>> {
        Ok(self.lock().ledger.get(&(reseller, id)).cloned())
    }

    async fn ledger_page(
        &self,
        reseller: ResellerId,
        before: Option<Ulid>,
        limit: usize,
    ) -> StoreResult<Page<LedgerEntry>> {
        let state = self.lock();
        let upper = before.unwrap_or(Ulid::from_parts(u64::MAX, u128::MAX));
        let entries = state
            .ledger
            .range((reseller, Ulid::nil())..(reseller, upper))
            .rev()
            .map(|(_, e)| e.clone());
        Ok(page(entries, limit))
    }

    async fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>> {
        Ok(self.lock().esims.get(iccid).cloned())
    }

    async fn claim_idempotency(
        &self,
        key: &IdemKey,
        fingerprint: &[u8; 32],
        now_ms: u64,
    ) -> StoreResult<Claim> {
        let mut state = self.lock();
        let k = key.storage_key();
        let mut existing = state.idempotency.get(&k).cloned();
        if let Some(rec) = &mut existing
            && let IdemState::InProgress {
                order: Some(order), ..
            } = rec.state
            && state.created(key.reseller, order)
        {
            rec.state = IdemState::Order { order };
        }
        let claim = idempotency::judge(existing.as_ref(), fingerprint, now_ms);
        if claim == Claim::New {
            state
                .idempotency
                .insert(k, IdemRecord::claim(key, fingerprint, now_ms));
        }
        Ok(claim)
    }

    async fn finish_idempotency(&self, key: &IdemKey, state: &IdemState) -> StoreResult<()> {
        if let Some(rec) = self.lock().idempotency.get_mut(&key.storage_key()) {
            rec.state = state.clone();
        }
        Ok(())
    }

    async fn release_idempotency(&self, key: &IdemKey) -> StoreResult<()> {
        self.lock().idempotency.remove(&key.storage_key());
        Ok(())
    }

    async fn expire_idempotency(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let mut state = self.lock();
        let expired: Vec<Vec<u8>> = state
            .idempotency
            .iter()
            .filter(|(k, rec)| {
                let finished = match rec.state {
                    IdemState::InProgress { order, .. } => order.is_some_and(|id| {
                        let reseller = ResellerId::from_bytes(
                            k[..16].try_into().expect("keys start with the reseller"),
                        );
                        state.created(reseller, id)
                    }),
                    IdemState::Order { .. } => true,
                };
                finished && rec.created_at_ms < cutoff_ms
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            state.idempotency.remove(k);
        }
        Ok(expired.len())
    }

    async fn subject_key(&self, lookup: &SubjectLookup) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.lock().subject_keys.get(lookup).cloned())
    }

    async fn create_subject_key(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
    ) -> StoreResult<Vec<u8>> {
        Ok(self
            .lock()
            .subject_keys
            .entry(*lookup)
            .or_insert_with(|| wrapped.to_vec())
            .clone())
    }

    async fn index_subject_order(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        order: OrderId,
    ) -> StoreResult<()> {
        self.lock()
            .subject_orders
            .insert((reseller, *subject, order), ());
        Ok(())
    }

    async fn subject_orders(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        limit: usize,
    ) -> StoreResult<Vec<OrderId>> {
        let state = self.lock();
        Ok(of_subject(
            &state.subject_orders,
            reseller,
            subject,
            OrderId(Ulid::nil()),
        )
        .take(limit)
        .map(|(o, _)| *o)
        .collect())
    }

    async fn destroy_subject_key(&self, lookup: &SubjectLookup) -> StoreResult<bool> {
        Ok(self.lock().subject_keys.remove(lookup).is_some())
    }

    async fn restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
    ) -> StoreResult<Option<Restriction>> {
        Ok(self.lock().restrictions.get(&(reseller, *subject)).cloned())
    }

    async fn set_restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        restriction: Option<&Restriction>,
    ) -> StoreResult<()> {
        let mut state = self.lock();
        match restriction {
            Some(r) => state.restrictions.insert((reseller, *subject), r.clone()),
            None => state.restrictions.remove(&(reseller, *subject)),
        };
        Ok(())
    }

    async fn purge_transactions(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize> {
        let mut state = self.lock();
        let due: Vec<Order> = state
            .orders
            .values()
            .filter(|o| o.status.is_final() && o.updated_at_ms < cutoff_ms)
            .take(limit)
            .cloned()
            .collect();
        for order in &due {
            state.orders.remove(&order.id);
            for iccid in &order.iccids {
                if state.esims.get(iccid).is_some_and(|e| e.order == order.id) {
                    state.esims.remove(iccid);
                }
            }
            if let Some(subject) = order.personal.as_ref().and_then(|p| p.subject) {
                state
                    .subject_orders
                    .remove(&(order.reseller, subject, order.id));
            }
        }
        Ok(due.len())
    }

    async fn forget_account(&self, reseller: ResellerId, _limit: usize) -> StoreResult<usize> {
        let mut state = self.lock();
        let state = &mut *state;
        let before = state.account_records();
        let keys: Vec<KeyId> = state
            .api_keys
            .values()
            .filter(|k| k.reseller == Some(reseller))
            .map(|k| k.id)
            .collect();
        state.api_keys.retain(|_, k| k.reseller != Some(reseller));
        for id in keys {
            state.api_key_ids.remove(&id);
        }
        let endpoints: Vec<EndpointId> = state
            .endpoints
            .keys()
            .filter(|(r, _)| *r == reseller)
            .map(|(_, e)| *e)
            .collect();
        state.attempts.retain(|(e, _), _| !endpoints.contains(e));
        state.endpoints.retain(|(r, _), _| *r != reseller);
        state.consents.retain(|(r, _, _), _| *r != reseller);
        state.restrictions.retain(|(r, _), _| *r != reseller);
        state.subject_orders.retain(|(r, _, _), _| *r != reseller);
        state.events.retain(|(r, _), _| *r != reseller);
        state.outbox.retain(|_, r| *r != reseller);
        state.ledger.retain(|(r, _), _| *r != reseller);
        let prefix = reseller.to_bytes();
        state.idempotency.retain(|k, _| !k.starts_with(&prefix));
        state.books.forget(reseller);
        state.resellers.remove(&reseller);
        let after = state.account_records();
        Ok(before - after)
    }

    async fn append_requests(&self, records: &[RequestRecord]) -> StoreResult<()> {
        let mut state = self.lock();
        for r in records {
            state.requests.insert(r.id, r.clone());
        }
        Ok(())
    }

    async fn requests_page(
        &self,
        before: Option<Ulid>,
        limit: usize,
    ) -> StoreResult<Page<RequestRecord>> {
        let state = self.lock();
        let mut older = state
            .requests
            .range(..before.unwrap_or(Ulid::from_bytes([0xff; 16])))
            .rev()
            .map(|(_, r)| r.clone());
        let items: Vec<RequestRecord> = older.by_ref().take(limit).collect();
        let has_more = older.next().is_some();
        Ok(Page { items, has_more })
    }

    async fn expire_requests(&self, cutoff_ms: u64, limit: usize) -> StoreResult<usize> {
        let mut state = self.lock();
        let old: Vec<Ulid> = state
            .requests
            .range(..Ulid::from_parts(cutoff_ms, 0))
            .take(limit)
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            state.requests.remove(k);
        }
        Ok(old.len())
    }

    async fn put_consent(&self, event: &ConsentEvent) -> StoreResult<()> {
        self.lock()
            .consents
            .insert((event.reseller, event.subject, event.id), event.clone());
        Ok(())
    }

    async fn consents(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        limit: usize,
    ) -> StoreResult<Vec<ConsentEvent>> {
        let state = self.lock();
        Ok(
            of_subject(&state.consents, reseller, subject, ConsentId(Ulid::nil()))
                .take(limit)
                .map(|(_, e)| e.clone())
                .collect(),
        )
    }

    async fn put_job(&self, job: &Job) -> StoreResult<()> {
        self.lock().jobs.insert(job.id.clone(), job.clone());
        Ok(())
    }

    async fn add_job(&self, job: &Job) -> StoreResult<bool> {
        let mut state = self.lock();
        if state.jobs.contains_key(&job.id) {
            return Ok(false);
        }
        state.jobs.insert(job.id.clone(), job.clone());
        Ok(true)
    }

    async fn hasten_job(&self, job: &Job) -> StoreResult<()> {
        let mut state = self.lock();
        match state.jobs.get_mut(&job.id) {
            None => {
                state.jobs.insert(job.id.clone(), job.clone());
            }
            Some(stored) => {
                if stored.due_ms > job.due_ms && stored.lease_until_ms <= job.due_ms {
                    stored.due_ms = job.due_ms;
                }
            }
        }
        Ok(())
    }

    async fn jobs_with_prefix(&self, prefix: &str) -> StoreResult<Vec<Job>> {
        Ok(self
            .lock()
            .jobs
            .range(prefix.to_string()..)
            .take_while(|(id, _)| id.starts_with(prefix))
            .map(|(_, j)| j.clone())
            .collect())
    }

    async fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    async fn claim_jobs(
        &self,
        run: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let mut state = self.lock();
        let state = &mut *state;
        let live = live_runs(&state.nodes.values().cloned().collect::<Vec<_>>(), now_ms);
        let mut claimed = Vec::new();
        for job in state.jobs.values_mut() {
            if claimed.len() == limit {
                break;
            }
            if job.claimable(now_ms, |r| r == run || live.contains(r)) {
                *job = job.clone().leased(run, now_ms.saturating_add(lease_ms));
                claimed.push(job.clone());
            }
        }
        Ok(claimed)
    }

    async fn put_node(&self, node: &NodeRecord) -> StoreResult<()> {
        self.lock().nodes.insert(node.id.clone(), node.clone());
        Ok(())
    }

    async fn nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        Ok(self.lock().nodes.values().cloned().collect())
    }

    async fn delete_node(&self, id: &str) -> StoreResult<bool> {
        Ok(self.lock().nodes.remove(id).is_some())
    }

    async fn finish_job(&self, id: &str) -> StoreResult<()> {
        self.lock().jobs.remove(id);
        Ok(())
    }

    async fn catalog(&self, plugin: &str) -> StoreResult<Option<CachedCatalog>> {
        Ok(self.lock().catalogs.get(plugin).cloned())
    }

    async fn put_catalog(&self, catalog: &CachedCatalog) -> StoreResult<()> {
        self.lock()
            .catalogs
            .insert(catalog.plugin.clone(), catalog.clone());
        Ok(())
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.lock().meta.get(key).cloned())
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.lock().meta.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    async fn first_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        let mut state = self.lock();
        Ok(state
            .meta
            .entry(key.to_string())
            .or_insert_with(|| value.to_vec())
            .clone())
    }

    async fn durable(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn close(&self) -> StoreResult<()> {
        self.lock().closed = true;
        Ok(())
    }

    async fn append_audit(&self, at_ms: u64, entry: NewAuditEntry) -> StoreResult<AuditEntry> {
        let mut state = self.lock();
        let (seq, prev_hash, at_ms) = match state.audit.last_key_value() {
            Some((_, last)) => (last.seq + 1, last.hash.clone(), at_ms.max(last.at_ms)),
            None => match &state.audit_checkpoint {
                Some(c) => (c.first_seq, c.prev_hash.clone(), at_ms),
                None => (1, GENESIS.to_string(), at_ms),
            },
        };
        let entry = AuditEntry::chain(seq, at_ms, entry, prev_hash);
        state.audit.insert(seq, entry.clone());
        Ok(entry)
    }

    async fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Page<AuditEntry>> {
        let state = self.lock();
        let entries = state
            .audit
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, e)| e)
            .take_while(|e| !filter.done_before(e.at_ms))
            .filter(|e| filter.matches(e))
            .cloned();
        Ok(page(entries, limit))
    }

    async fn audit_entries(&self, from: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        Ok(self
            .lock()
            .audit
            .range(from..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>> {
        Ok(self.lock().audit_checkpoint.clone())
    }

    async fn purge_audit(&self, checkpoint: &AuditCheckpoint) -> StoreResult<usize> {
        let mut state = self.lock();
        state.audit_checkpoint = Some(checkpoint.clone());
        let kept = state.audit.split_off(&checkpoint.first_seq);
        let purged = std::mem::replace(&mut state.audit, kept).len();
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::Backend;

    /// A fresh in-memory store; opening it again is a clean restart on the same records.
    struct Fresh(MemoryStore);

    impl Backend for Fresh {
        fn open(&self) -> Arc<dyn Store> {
            self.0.lock().closed = false;
            Arc::new(self.0.clone())
        }
    }

    fn fresh() -> Fresh {
        Fresh(MemoryStore::new())
    }

    crate::store_conformance!(fresh());
}
