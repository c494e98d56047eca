//! The store conformance suite: what any [`Store`] backend must do, written once against
//! the trait and run against every backend (sled and the in-memory store today; a SQL
//! backend passes by running it too). Each check is a function over a [`Backend`], and
//! [`store_conformance!`](crate::store_conformance) turns the whole list into one
//! `#[tokio::test]` per check in the module that invokes it.
//!
//! What it covers: records round-trip; holds the balance cannot cover write nothing;
//! settling moves money and closes the order atomically; an ICCID belongs to one order;
//! pages come newest first with working cursors and filters; idempotency claims follow
//! `idempotency::judge`, including a creation that outlived its request; the ledger
//! invariant holds through a random walk of operations; everything acknowledged is
//! there again after the store is closed and reopened; and the audit log is one gap-free
//! hash chain, paged and filtered, that stays verifiable from its checkpoint when purged.

use std::sync::Arc;

use ulid::Ulid;

use crate::domain::accounts::{ApiKey, KeyHash, KeyMode, Reseller, Role};
use crate::domain::catalog::CachedCatalog;
use crate::domain::events::{Event, EventData, EventType};
use crate::domain::idempotency::{Claim, IdemKey, IdemState, LEASE_MS};
use crate::domain::ids::{AttemptId, EndpointId, EventId, KeyId, OrderId, ResellerId};
use crate::domain::jobs::{Job, JobKind};
use crate::domain::ledger::{Balance, EntryKind, LedgerEntry, Refused, replay};
use crate::domain::orders::{EsimRecord, Order, OrderKind, OrderSpec, OrderStatus};
use crate::domain::personal::SubjectLookup;
use crate::domain::store::{Commit, IccidTaken, Rejected, Store};
use crate::domain::supplier::{Money, PlanState, ProfileState};
use crate::domain::webhooks::{Attempt, AttemptOutcome, Endpoint};

/// A backend under test: a place where a store's data lives.
pub trait Backend {
    /// Open the store on this backend's data: the same data every time. A check closes
    /// and drops the store it had before opening it again.
    fn open(&self) -> Arc<dyn Store>;
}

/// One `#[tokio::test]` per conformance check, each on a fresh backend from `$backend`
/// (an expression evaluated per test).
#[macro_export]
macro_rules! store_conformance {
    ($backend:expr) => {
        $crate::store_conformance!(@checks $backend;
            records_round_trip,
            a_hold_the_balance_cannot_cover_writes_nothing,
            settling_moves_money_and_closes_the_order,
            an_iccid_belongs_to_one_order_for_good,
            order_pages_come_newest_first_with_cursor_and_filter,
            ledger_pages_come_newest_first_and_entries_are_found_by_id,
            idempotency_claims_follow_the_rule,
            finished_idempotency_records_expire,
            a_subject_keeps_its_first_data_key,
            amounts_out_of_range_are_refused_not_wrapped,
            the_ledger_invariant_holds_through_a_random_walk,
            what_was_acknowledged_is_there_after_reopening,
            jobs_are_claimed_once_while_leased_and_only_when_due,
            events_are_committed_with_their_change_and_listed_newest_first,
            webhook_endpoints_and_attempts_belong_to_their_reseller,
            a_change_that_moves_no_money_writes_its_records_and_events_together,
            a_hold_that_crosses_the_alert_threshold_raises_balance_low_with_it,
            a_job_is_brought_forward_unless_a_worker_holds_it,
            consent_events_are_kept_in_order_per_reseller_and_subject,
            request_records_are_paged_newest_first_and_expire_oldest_first,
            old_final_orders_are_purged_and_their_ledger_amounts_kept,
            a_forgotten_account_leaves_its_orders_readable_and_nothing_else,
            audit_entries_are_numbered_without_gaps_and_each_links_to_the_one_before,
            audit_pages_come_newest_first_with_cursor_and_filters,
            a_purged_audit_log_stays_verifiable_from_its_checkpoint,
            node_records_are_kept_by_id_and_a_job_names_the_run_that_claimed_it,
            the_first_value_of_a_meta_key_is_kept,
        );
    };
    (@checks $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::store::conformance::$check(&$backend).await;
            }
        )*
    };
}

pub(crate) fn reseller() -> Reseller {
    Reseller {
        id: ResellerId::new(),
        name: "Conformance Travel".into(),
        markup_bps: 250,
        created_at_ms: 1,
        low_balance_alerts: Default::default(),
        test_low_balance_alerts: Default::default(),
        closed_at_ms: None,
    }
}

pub(crate) async fn credit(store: &dyn Store, reseller: ResellerId, amount: i64) -> Balance {
    let entry = LedgerEntry::new(reseller, EntryKind::Credit, amount, "USD", None, 1);
    post(store, entry).await.unwrap()
}

/// Two resellers, each credited `amount` USD.
async fn two_funded(store: &dyn Store, amount: i64) -> (ResellerId, ResellerId) {
    let (a, b) = (reseller().id, reseller().id);
    credit(store, a, amount).await;
    credit(store, b, amount).await;
    (a, b)
}

/// Post an entry that belongs to no order.
async fn post(store: &dyn Store, entry: LedgerEntry) -> Result<Balance, Rejected> {
    let posted = store.commit(&Commit::credit(entry)).await.unwrap();
    posted.map(|b| b.expect("a credit moves money"))
}

pub(crate) fn order_for(reseller: ResellerId, price: i64, quantity: u32) -> Order {
    let spec = OrderSpec {
        reseller,
        product_id: "p:SKU".into(),
        plugin: "p".into(),
        sku: "SKU".into(),
        quantity,
        unit_price: Money {
            minor: price,
            currency: "USD".into(),
        },
        kind: OrderKind::Esim,
    };
    Order::accepted(spec, OrderId::new(), None, 10)
}

async fn accept(store: &dyn Store, order: &Order) -> Result<Balance, Rejected> {
    let accepted = store
        .commit(&Commit::accept(order.clone()).unwrap())
        .await
        .unwrap();
    accepted.map(|b| b.expect("a hold moves money"))
}

pub(crate) fn esim(order: &Order, iccid: &str) -> EsimRecord {
    EsimRecord {
        iccid: iccid.into(),
        order: order.id,
        reseller: order.reseller,
        plugin: order.plugin.clone(),
        sealed_activation: vec![7; 24],
        confirmation_code_required: false,
        luhn_valid: true,
        profile: ProfileState::Released,
        plan: PlanState::Ready,
        raw_status: String::new(),
        created_at_ms: 11,
        usage_told_pct: 0,
    }
}

/// Settle `order` as fulfilled with eSIMs `iccids` (capture) or as failed (release).
async fn settle(
    store: &dyn Store,
    order: &Order,
    iccids: &[&str],
) -> Result<Order, crate::domain::store::IccidTaken> {
    let mut settled = order.clone();
    let (status, kind) = if iccids.is_empty() {
        (OrderStatus::Failed, EntryKind::Release)
    } else {
        (OrderStatus::Fulfilled, EntryKind::Capture)
    };
    settled.transition(OrderStatus::Submitted, 11).unwrap();
    settled.transition(status, 12).unwrap();
    let esims: Vec<EsimRecord> = iccids.iter().map(|i| esim(order, i)).collect();
    settled.iccids = esims.iter().map(|e| e.iccid.clone()).collect();
    let commit = Commit::settle(settled.clone(), kind, esims).unwrap();
    match store.commit(&commit).await.unwrap() {
        Ok(_) => Ok(settled),
        Err(Rejected::IccidTaken(taken)) => Err(taken),
        Err(refused) => panic!("settling {} was refused: {refused}", order.id),
    }
}

/// Resellers, keys, orders, eSIMs, catalogs and meta values read back as written.
pub async fn records_round_trip(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller();
    store.put_reseller(&r).await.unwrap();
    assert_eq!(store.reseller(r.id).await.unwrap(), Some(r.clone()));
    assert!(store.resellers().await.unwrap().contains(&r));
    let key = ApiKey {
        id: KeyId::new(),
        reseller: Some(r.id),
        role: Role::Reseller,
        mode: KeyMode::Test,
        hash: KeyHash([3; 32]),
        hint: "sgk_test_...abcd".into(),
        created_at_ms: 1,
        expires_at_ms: None,
    };
    store.put_api_key(&key).await.unwrap();
    assert_eq!(store.api_key(&key.hash).await.unwrap(), Some(key.clone()));
    assert_eq!(
        store.api_key_by_id(key.id).await.unwrap(),
        Some(key.clone())
    );
    let revoked = ApiKey {
        expires_at_ms: Some(5),
        ..key.clone()
    };
    store.put_api_key(&revoked).await.unwrap();
    assert_eq!(store.api_key(&key.hash).await.unwrap(), Some(revoked));
    assert_eq!(store.api_key(&KeyHash([4; 32])).await.unwrap(), None);

    credit(&*store, r.id, 1_000).await;
    let order = order_for(r.id, 100, 1);
    accept(&*store, &order).await.unwrap();
    assert_eq!(store.order(order.id).await.unwrap(), Some(order.clone()));
    let mut submitted = order.clone();
    submitted.transition(OrderStatus::Submitted, 20).unwrap();
    store.put_order(&submitted).await.unwrap();
    assert_eq!(store.order(order.id).await.unwrap(), Some(submitted));
    let settled = settle(&*store, &order, &["8999000000000000011"])
        .await
        .unwrap();
    let (read, esims) = store.order_and_esims(order.id).await.unwrap().unwrap();
    assert_eq!(read, settled);
    assert_eq!(esims, vec![esim(&order, "8999000000000000011")]);
    let mut refreshed = esims[0].clone();
    refreshed.profile = ProfileState::Installed;
    store
        .commit(&Commit::change(None, vec![refreshed.clone()], Vec::new()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.esim("8999000000000000011").await.unwrap(),
        Some(refreshed.clone())
    );
    assert_eq!(
        store.order_and_esims(order.id).await.unwrap().unwrap().1,
        vec![refreshed]
    );
    assert_eq!(store.order(OrderId::new()).await.unwrap(), None);
    assert_eq!(store.order_and_esims(OrderId::new()).await.unwrap(), None);
    assert_eq!(store.esim("8999000000000000029").await.unwrap(), None);
    // Several eSIMs come back in the order's own order of ICCIDs.
    let three = order_for(r.id, 100, 3);
    accept(&*store, &three).await.unwrap();
    let unsorted = [
        "8999000000000000052",
        "8999000000000000037",
        "8999000000000000045",
    ];
    settle(&*store, &three, &unsorted).await.unwrap();
    let (_, esims) = store.order_and_esims(three.id).await.unwrap().unwrap();
    let read: Vec<&str> = esims.iter().map(|e| e.iccid.as_str()).collect();
    assert_eq!(read, unsorted);

    let catalog = CachedCatalog {
        plugin: "p".into(),
        version: "1.0.0".into(),
        fetched_at_ms: 3,
        products: Vec::new(),
    };
    store.put_catalog(&catalog).await.unwrap();
    assert_eq!(store.catalog("p").await.unwrap(), Some(catalog));
    assert_eq!(store.catalog("q").await.unwrap(), None);
    store.put_meta("k", b"v").await.unwrap();
    assert_eq!(store.meta("k").await.unwrap(), Some(b"v".to_vec()));
    store.durable().await.unwrap();
}

/// A hold the available balance cannot cover is refused, and neither the order nor any
/// entry is written.
pub async fn a_hold_the_balance_cannot_cover_writes_nothing(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller().id;
    credit(&*store, r, 250).await;
    let order = order_for(r, 100, 3);
    assert_eq!(
        accept(&*store, &order).await,
        Err(Rejected::Refused(Refused::Insufficient {
            available: 250,
            needed: 300
        }))
    );
    assert_eq!(store.order(order.id).await.unwrap(), None);
    assert_eq!(store.ledger_page(r, None, 10).await.unwrap().items.len(), 1);
    assert_eq!(
        store.balance(r, "USD").await.unwrap(),
        Balance {
            available: 250,
            held: 0
        }
    );
    assert!(store.open_orders().await.unwrap().is_empty());
}

/// An accepted order holds its price and is open; capturing charges it, releasing gives
/// it back; either way the order is closed, in one step with its new state and eSIMs.
pub async fn settling_moves_money_and_closes_the_order(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller().id;
    credit(&*store, r, 1_000).await;
    let kept = order_for(r, 200, 1);
    let dropped = order_for(r, 300, 1);
    accept(&*store, &kept).await.unwrap();
    assert_eq!(
        accept(&*store, &dropped).await.unwrap(),
        Balance {
            available: 500,
            held: 500
        }
    );
    let mut open: Vec<OrderId> = store
        .open_orders()
        .await
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    open.sort();
    let mut expected = vec![kept.id, dropped.id];
    expected.sort();
    assert_eq!(open, expected);
    settle(&*store, &kept, &["8999000000000000037"])
        .await
        .unwrap();
    settle(&*store, &dropped, &[]).await.unwrap();
    assert_eq!(
        store.balance(r, "USD").await.unwrap(),
        Balance {
            available: 800,
            held: 0
        }
    );
    assert!(store.open_orders().await.unwrap().is_empty());
    assert_eq!(
        store.order(kept.id).await.unwrap().unwrap().status,
        OrderStatus::Fulfilled
    );
    assert_eq!(
        store
            .esim("8999000000000000037")
            .await
            .unwrap()
            .unwrap()
            .order,
        kept.id
    );
    assert_eq!(
        store.order(dropped.id).await.unwrap().unwrap().status,
        OrderStatus::Failed
    );
}

/// An ICCID one order settled with is refused to any other order, and the refused
/// settlement writes nothing; the owner may settle its own eSIM again (a cancel).
pub async fn an_iccid_belongs_to_one_order_for_good(backend: &dyn Backend) {
    let store = backend.open();
    let (a, b) = two_funded(&*store, 1_000).await;
    let first = order_for(a, 100, 1);
    accept(&*store, &first).await.unwrap();
    let first_settled = settle(&*store, &first, &["8999000000000000045"])
        .await
        .unwrap();
    let second = order_for(b, 100, 1);
    accept(&*store, &second).await.unwrap();
    let taken = settle(&*store, &second, &["8999000000000000045"])
        .await
        .unwrap_err();
    assert_eq!(
        (taken.iccid.as_str(), taken.owner),
        ("8999000000000000045", first.id)
    );
    assert_eq!(
        store
            .esim("8999000000000000045")
            .await
            .unwrap()
            .unwrap()
            .reseller,
        a
    );
    assert_eq!(store.order(second.id).await.unwrap(), Some(second.clone()));
    assert_eq!(
        store.balance(b, "USD").await.unwrap(),
        Balance {
            available: 900,
            held: 100
        }
    );
    let mut cancelled = first_settled.clone();
    cancelled.transition(OrderStatus::Cancelled, 30).unwrap();
    let mut deleted = esim(&first, "8999000000000000045");
    deleted.profile = ProfileState::Deleted;
    assert_eq!(
        store
            .commit(&Commit::settle(cancelled, EntryKind::Refund, vec![deleted]).unwrap())
            .await
            .unwrap(),
        Ok(Some(Balance {
            available: 1_000,
            held: 0
        }))
    );
    assert_eq!(
        store
            .esim("8999000000000000045")
            .await
            .unwrap()
            .unwrap()
            .profile,
        ProfileState::Deleted
    );
}

/// A reseller's orders come newest first, only its own, `before` continues a page,
/// a status filter applies, and `has_more` says whether older ones follow.
pub async fn order_pages_come_newest_first_with_cursor_and_filter(backend: &dyn Backend) {
    let store = backend.open();
    let (r, other) = two_funded(&*store, 10_000).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let o = order_for(r, 10, 1);
        accept(&*store, &o).await.unwrap();
        if i % 2 == 0 {
            settle(&*store, &o, &[]).await.unwrap();
        }
        ids.push(o.id);
        accept(&*store, &order_for(other, 10, 1)).await.unwrap();
    }
    // Newest first is by id, which sorts by time (to the millisecond).
    ids.sort_by(|a, b| b.cmp(a));
    let first = store.orders_page(r, None, None, 2).await.unwrap();
    assert!(first.has_more);
    let got: Vec<OrderId> = first.items.iter().map(|(o, _)| o.id).collect();
    assert_eq!(got, ids[..2]);
    let rest = store.orders_page(r, Some(ids[1]), None, 10).await.unwrap();
    assert!(!rest.has_more);
    let got: Vec<OrderId> = rest.items.iter().map(|(o, _)| o.id).collect();
    assert_eq!(got, ids[2..]);
    let failed = store
        .orders_page(r, None, Some(OrderStatus::Failed), 10)
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 3);
    assert!(
        failed
            .items
            .iter()
            .all(|(o, _)| o.status == OrderStatus::Failed && o.reseller == r)
    );
}

/// A reseller's ledger comes newest first with a working cursor; an entry is found by id.
pub async fn ledger_pages_come_newest_first_and_entries_are_found_by_id(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller().id;
    let mut ids = Vec::new();
    for amount in 1..=5 {
        let e = LedgerEntry::new(r, EntryKind::Credit, amount, "USD", None, 1);
        post(&*store, e.clone()).await.unwrap();
        ids.push(e.id);
        credit(&*store, reseller().id, 1).await;
    }
    // Newest first is by id, which sorts by time (to the millisecond).
    ids.sort_by(|a, b| b.cmp(a));
    let page = store.ledger_page(r, None, 3).await.unwrap();
    assert!(page.has_more);
    assert_eq!(
        page.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..3]
    );
    let rest = store.ledger_page(r, Some(ids[2]), 3).await.unwrap();
    assert!(!rest.has_more);
    assert_eq!(
        rest.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[3..]
    );
    let found = store.ledger_entry(r, ids[4]).await.unwrap().unwrap();
    assert_eq!((found.id, found.reseller), (ids[4], r));
    assert_eq!(store.ledger_entry(r, Ulid::new()).await.unwrap(), None);
    assert_eq!(
        store.ledger_entry(reseller().id, ids[4]).await.unwrap(),
        None
    );
}

fn idem(reseller: ResellerId, key: &str) -> IdemKey {
    IdemKey {
        reseller,
        key: key.into(),
        order: OrderId::new(),
    }
}

/// Claims follow `idempotency::judge`: new, in progress, mismatch, taken over after the
/// lease; a claim whose order (or credit) exists answers as done, however old; keys are
/// per reseller; a released key is free again.
pub async fn idempotency_claims_follow_the_rule(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller().id;
    credit(&*store, r, 1_000).await;
    let (fp, other) = ([1u8; 32], [2u8; 32]);
    let key = idem(r, "k");
    assert_eq!(
        store.claim_idempotency(&key, &fp, 1_000).await.unwrap(),
        Claim::New
    );
    assert_eq!(
        store
            .claim_idempotency(&idem(r, "k"), &fp, 1_001)
            .await
            .unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store
            .claim_idempotency(&idem(r, "k"), &other, 1_001)
            .await
            .unwrap(),
        Claim::Mismatch
    );
    assert_eq!(
        store
            .claim_idempotency(&idem(reseller().id, "k"), &fp, 1_001)
            .await
            .unwrap(),
        Claim::New,
        "keys are per reseller"
    );
    // The first request created its order: answered as that order, even long after.
    let mut order = order_for(r, 100, 1);
    order.id = key.order;
    accept(&*store, &order).await.unwrap();
    for now in [1_002, 1_000 + LEASE_MS * 10] {
        assert_eq!(
            store
                .claim_idempotency(&idem(r, "k"), &fp, now)
                .await
                .unwrap(),
            Claim::Replay(IdemState::Order { order: order.id })
        );
    }
    // A credit posted under its claim's id counts the same way.
    let credit_key = idem(r, "c");
    store
        .claim_idempotency(&credit_key, &fp, 5_000)
        .await
        .unwrap();
    let mut entry = LedgerEntry::new(r, EntryKind::Credit, 5, "USD", None, 5_000);
    entry.id = credit_key.order.0;
    post(&*store, entry).await.unwrap();
    assert_eq!(
        store
            .claim_idempotency(&idem(r, "c"), &fp, 5_000 + LEASE_MS + 1)
            .await
            .unwrap(),
        Claim::Replay(IdemState::Order {
            order: credit_key.order
        })
    );
    // A request that created nothing and died: its key is free after the lease.
    let dead = idem(r, "dead");
    store.claim_idempotency(&dead, &fp, 1_000).await.unwrap();
    assert_eq!(
        store
            .claim_idempotency(&idem(r, "dead"), &fp, 1_000 + LEASE_MS + 1)
            .await
            .unwrap(),
        Claim::New
    );
    // A released key is free at once; a finished one replays.
    let released = idem(r, "released");
    store
        .claim_idempotency(&released, &fp, 1_000)
        .await
        .unwrap();
    store.release_idempotency(&released).await.unwrap();
    assert_eq!(
        store
            .claim_idempotency(&idem(r, "released"), &other, 1_001)
            .await
            .unwrap(),
        Claim::New
    );
    let finished = idem(r, "finished");
    store
        .claim_idempotency(&finished, &fp, 1_000)
        .await
        .unwrap();
    let done = IdemState::Order {
        order: OrderId::new(),
    };
    store.finish_idempotency(&finished, &done).await.unwrap();
    assert_eq!(
        store
            .claim_idempotency(&idem(r, "finished"), &fp, 1_001)
            .await
            .unwrap(),
        Claim::Replay(done)
    );
}

/// Finished records older than the cutoff are forgotten; running ones are kept.
pub async fn finished_idempotency_records_expire(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller().id;
    let fp = [9u8; 32];
    let old_done = idem(r, "old-done");
    store
        .claim_idempotency(&old_done, &fp, 1_000)
        .await
        .unwrap();
    store
        .finish_idempotency(
            &old_done,
            &IdemState::Order {
                order: OrderId::new(),
            },
        )
        .await
        .unwrap();
    store
        .claim_idempotency(&idem(r, "old-running"), &fp, 1_000)
        .await
        .unwrap();
    let new_done = idem(r, "new-done");
    store
        .claim_idempotency(&new_done, &fp, 50_000)
        .await
        .unwrap();
    store
        .finish_idempotency(
            &new_done,
            &IdemState::Order {
                order: OrderId::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.expire_idempotency(10_000).await.unwrap(), 1);
    assert_eq!(
        store
            .claim_idempotency(&idem(r, "old-done"), &[8; 32], 60_000)
            .await
            .unwrap(),
        Claim::New
    );
    assert!(matches!(
        store
            .claim_idempotency(&idem(r, "new-done"), &fp, 60_000)
            .await
            .unwrap(),
        Claim::Replay(_)
    ));
}

/// A subject's data key is created once; a second creator gets the first key.
pub async fn a_subject_keeps_its_first_data_key(backend: &dyn Backend) {
    let store = backend.open();
    let lookup = SubjectLookup([5; 32]);
    assert_eq!(store.subject_key(&lookup).await.unwrap(), None);
    assert_eq!(
        store.create_subject_key(&lookup, b"first").await.unwrap(),
        b"first"
    );
    assert_eq!(
        store.create_subject_key(&lookup, b"second").await.unwrap(),
        b"first"
    );
    assert_eq!(
        store.subject_key(&lookup).await.unwrap(),
        Some(b"first".to_vec())
    );
}

/// Amounts that would take a balance out of range are refused, and nothing changes.
pub async fn amounts_out_of_range_are_refused_not_wrapped(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller().id;
    credit(&*store, r, i64::MAX).await;
    let more = LedgerEntry::new(r, EntryKind::Credit, 1, "USD", None, 1);
    assert_eq!(
        post(&*store, more).await,
        Err(Rejected::Refused(Refused::OutOfRange))
    );
    assert_eq!(store.balance(r, "USD").await.unwrap().available, i64::MAX);
    assert_eq!(store.ledger_page(r, None, 10).await.unwrap().items.len(), 1);
}

/// After any sequence of credits, accepted, fulfilled, failed and refused orders, every
/// balance equals what its ledger entries add up to.
pub async fn the_ledger_invariant_holds_through_a_random_walk(backend: &dyn Backend) {
    let store = backend.open();
    let resellers = [reseller().id, reseller().id];
    // A fixed-seed walk: the same operations every run.
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut open: Vec<Order> = Vec::new();
    for step in 0..300u64 {
        let r = resellers[next(2) as usize];
        match next(4) {
            0 => {
                credit(&*store, r, next(500) as i64 + 1).await;
            }
            1 => {
                let order = order_for(r, next(300) as i64, next(3) as u32 + 1);
                if accept(&*store, &order).await.is_ok() {
                    open.push(order);
                }
            }
            _ if !open.is_empty() => {
                let order = open.swap_remove(next(open.len() as u64) as usize);
                let iccid = format!("89990{step:014}");
                let iccids: &[&str] = if next(2) == 0 { &[] } else { &[&iccid] };
                settle(&*store, &order, iccids).await.unwrap();
            }
            _ => {}
        }
    }
    for r in resellers {
        let mut entries = Vec::new();
        let mut before = None;
        loop {
            let page = store.ledger_page(r, before, 50).await.unwrap();
            before = page.items.last().map(|e| e.id);
            entries.extend(page.items);
            if !page.has_more {
                break;
            }
        }
        assert_eq!(
            store.balance(r, "USD").await.unwrap(),
            replay(&entries).unwrap(),
            "balance = credits - captures - open holds + refunds"
        );
    }
    let mut still_open: Vec<OrderId> = store
        .open_orders()
        .await
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    let mut expected: Vec<OrderId> = open.iter().map(|o| o.id).collect();
    still_open.sort();
    expected.sort();
    assert_eq!(still_open, expected);
}

/// Everything written before `durable` resolved is there after the store is closed and
/// opened again: records, balances, open orders, idempotency claims, subject keys.
pub async fn what_was_acknowledged_is_there_after_reopening(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller();
    store.put_reseller(&r).await.unwrap();
    credit(&*store, r.id, 1_000).await;
    let fulfilled = order_for(r.id, 100, 1);
    let open = order_for(r.id, 250, 1);
    accept(&*store, &fulfilled).await.unwrap();
    accept(&*store, &open).await.unwrap();
    let settled = settle(&*store, &fulfilled, &["8999000000000000052"])
        .await
        .unwrap();
    let key = idem(r.id, "reopen");
    store
        .claim_idempotency(&key, &[4; 32], 1_000)
        .await
        .unwrap();
    store
        .create_subject_key(&SubjectLookup([6; 32]), b"wrapped")
        .await
        .unwrap();
    store.durable().await.unwrap();
    let balance = store.balance(r.id, "USD").await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = backend.open();
    assert_eq!(store.reseller(r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(store.balance(r.id, "USD").await.unwrap(), balance);
    assert_eq!(
        balance,
        Balance {
            available: 650,
            held: 250
        }
    );
    assert_eq!(store.order(fulfilled.id).await.unwrap(), Some(settled));
    assert_eq!(
        store
            .open_orders()
            .await
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect::<Vec<_>>(),
        vec![open.id]
    );
    assert_eq!(
        store
            .esim("8999000000000000052")
            .await
            .unwrap()
            .unwrap()
            .order,
        fulfilled.id
    );
    assert_eq!(
        store
            .claim_idempotency(&idem(r.id, "reopen"), &[4; 32], 1_001)
            .await
            .unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store.subject_key(&SubjectLookup([6; 32])).await.unwrap(),
        Some(b"wrapped".to_vec())
    );
    // And it still works: the open order settles.
    settle(&*store, &open, &[]).await.unwrap();
    assert_eq!(
        store.balance(r.id, "USD").await.unwrap(),
        Balance {
            available: 900,
            held: 0
        }
    );
}

/// A job is stored under its id (the last put wins); only due, live, unleased jobs are claimed; a claim leases
/// the job (nobody else claims it) until the lease runs out; a finished job is gone; jobs
/// are there after reopening.
pub async fn jobs_are_claimed_once_while_leased_and_only_when_due(backend: &dyn Backend) {
    let store = backend.open();
    let now = Job::new("now", JobKind::RefreshCatalogs, 1_000);
    let later = Job::new("later", JobKind::ExpireIdempotency, 5_000);
    let mut moved = now.clone();
    moved.due_ms = 9_999;
    store.put_job(&moved).await.unwrap();
    store.put_job(&now).await.unwrap();
    store.put_job(&later).await.unwrap();
    assert_eq!(
        store.job("now").await.unwrap(),
        Some(now.clone()),
        "the last put wins"
    );

    let claimed = store.claim_jobs("run-1", 1_000, 100, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].id.as_str(), claimed[0].lease_until_ms),
        ("now", 1_100)
    );
    assert!(
        store
            .claim_jobs("run-1", 1_050, 100, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // The worker died: the lease runs out and the job is claimed again.
    let again = store.claim_jobs("run-1", 1_100, 100, 10).await.unwrap();
    assert_eq!(
        again.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["now"]
    );
    let mut dead = again[0].clone();
    dead.dead = true;
    store.put_job(&dead).await.unwrap();
    assert!(
        store
            .claim_jobs("run-1", 2_000, 100, 10)
            .await
            .unwrap()
            .is_empty(),
        "dead"
    );
    assert_eq!(
        store
            .claim_jobs("run-1", 5_000, 100, 10)
            .await
            .unwrap()
            .len(),
        1,
        "later is due"
    );
    store.finish_job("later").await.unwrap();
    assert_eq!(store.job("later").await.unwrap(), None);
    // Adding leaves a job in hand (perhaps leased elsewhere) as it is.
    let leased = store.claim_jobs("run-1", 9_999, 100, 10).await.unwrap();
    assert!(leased.is_empty(), "`now` is dead");
    assert!(store.add_job(&later).await.unwrap(), "a new job is added");
    let claimed = store.claim_jobs("run-1", 5_000, 100, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let mut fresh = later.clone();
    fresh.due_ms = 1;
    assert!(!store.add_job(&fresh).await.unwrap(), "one in hand stays");
    assert_eq!(store.job("later").await.unwrap(), Some(claimed[0].clone()));
    store.finish_job("later").await.unwrap();

    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert!(store.job("now").await.unwrap().is_some_and(|j| j.dead));
    assert_eq!(
        store.job("later").await.unwrap(),
        None,
        "a finished job stays gone"
    );
}

/// A settlement's event is written with it (and not when it is refused), found by id by
/// its reseller only, listed newest first with cursor and type filter, and kept across a
/// reopen.
pub async fn events_are_committed_with_their_change_and_listed_newest_first(backend: &dyn Backend) {
    let store = backend.open();
    let (r, other) = two_funded(&*store, 1_000).await;
    let fulfilled = order_for(r, 100, 1);
    let failed = order_for(r, 100, 1);
    let refused = order_for(other, 100, 1);
    for o in [&fulfilled, &failed, &refused] {
        accept(&*store, o).await.unwrap();
    }
    assert!(
        store
            .events_page(r, None, None, 10)
            .await
            .unwrap()
            .items
            .is_empty(),
        "accepting raises no event"
    );
    settle(&*store, &fulfilled, &["8999000000000000060"])
        .await
        .unwrap();
    settle(&*store, &failed, &[]).await.unwrap();
    // Refused: the ICCID is taken. Nothing is written, its event included.
    settle(&*store, &refused, &["8999000000000000060"])
        .await
        .unwrap_err();
    assert!(
        store
            .events_page(other, None, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let page = store.events_page(r, None, None, 10).await.unwrap();
    let kinds: Vec<EventType> = page.items.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::OrderFailed, EventType::OrderFulfilled]);
    assert!(!page.has_more);
    let EventData::Order(data) = &page.items[1].data else {
        panic!("an order's event")
    };
    assert_eq!(
        (data.order_id, data.status),
        (fulfilled.id, OrderStatus::Fulfilled)
    );
    let newest = page.items[0].clone();
    let EventData::Order(data) = &newest.data else {
        panic!("an order's event")
    };
    assert_eq!(data.order_id, failed.id);
    assert_eq!(data.failure_code, None, "settled without a failure record");

    let first = store.events_page(r, None, None, 1).await.unwrap();
    assert_eq!((first.items.len(), first.has_more), (1, true));
    let rest = store
        .events_page(r, Some(first.items[0].id), None, 10)
        .await
        .unwrap();
    assert_eq!(rest.items, page.items[1..]);
    let only = store
        .events_page(r, None, Some(EventType::OrderFulfilled), 10)
        .await
        .unwrap();
    assert_eq!(only.items, page.items[1..]);

    assert_eq!(
        store.event(r, newest.id).await.unwrap(),
        Some(newest.clone())
    );
    assert_eq!(
        store.event(other, newest.id).await.unwrap(),
        None,
        "not another's"
    );

    // Both wait in the outbox, oldest first, until their deliveries are scheduled.
    let oldest_first: Vec<_> = page.items.iter().rev().cloned().collect();
    assert_eq!(store.outbox(10).await.unwrap(), oldest_first);
    assert_eq!(store.outbox(1).await.unwrap(), oldest_first[..1]);
    store.dispatched(&oldest_first[..1]).await.unwrap();
    assert_eq!(store.outbox(10).await.unwrap(), oldest_first[1..]);

    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(
        store.events_page(r, None, None, 10).await.unwrap().items,
        page.items
    );
    assert_eq!(
        store.outbox(10).await.unwrap(),
        oldest_first[1..],
        "what was not dispatched still waits"
    );
}

/// Endpoints and their attempts are a reseller's own; attempts page newest first.
pub async fn webhook_endpoints_and_attempts_belong_to_their_reseller(backend: &dyn Backend) {
    let store = backend.open();
    let (r, other) = (reseller().id, reseller().id);
    let endpoint = |reseller: ResellerId, n: u8| Endpoint {
        id: EndpointId::new(),
        reseller,
        url: format!("https://hooks.example.com/{n}"),
        event_types: EventType::ALL.to_vec(),
        description: Some(format!("endpoint {n}")),
        enabled: true,
        disabled_reason: None,
        sealed_secret: vec![n; 40],
        previous: None,
        failing_since_ms: None,
        created_at_ms: u64::from(n),
    };
    let (a, b, c) = (endpoint(r, 1), endpoint(r, 2), endpoint(other, 3));
    for e in [&a, &b, &c] {
        store.put_endpoint(e).await.unwrap();
    }
    assert_eq!(store.endpoints(r).await.unwrap(), [a.clone(), b.clone()]);
    assert_eq!(store.endpoint(r, a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        store.endpoint(other, a.id).await.unwrap(),
        None,
        "not another's"
    );
    let mut disabled = b.clone();
    disabled.enabled = false;
    disabled.disabled_reason = Some("answered 410 Gone".into());
    store.put_endpoint(&disabled).await.unwrap();
    assert_eq!(store.endpoint(r, b.id).await.unwrap(), Some(disabled));
    assert!(
        !store.delete_endpoint(other, b.id).await.unwrap(),
        "not another's"
    );
    assert!(store.delete_endpoint(r, b.id).await.unwrap());
    assert_eq!(store.endpoints(r).await.unwrap(), std::slice::from_ref(&a));

    let event = EventId::new();
    let attempt = |number: u32, status: u16| Attempt {
        id: AttemptId::new(),
        endpoint: a.id,
        reseller: r,
        event,
        number,
        at_ms: u64::from(number),
        status: Some(status),
        latency_ms: 3,
        answer: "ok".into(),
        error: None,
        outcome: if status == 200 {
            AttemptOutcome::Delivered
        } else {
            AttemptOutcome::Failed
        },
    };
    let tries = [attempt(1, 500), attempt(2, 503), attempt(3, 200)];
    for t in &tries {
        store.put_attempt(t).await.unwrap();
    }
    let newest_first: Vec<Attempt> = tries.iter().rev().cloned().collect();
    let page = store.attempts_page(r, a.id, None, 2).await.unwrap();
    assert_eq!((&page.items[..], page.has_more), (&newest_first[..2], true));
    let rest = store
        .attempts_page(r, a.id, Some(page.items[1].id), 10)
        .await
        .unwrap();
    assert_eq!(rest.items, newest_first[2..]);
    let others = store.attempts_page(other, a.id, None, 10).await.unwrap();
    assert!(others.items.is_empty(), "not another's");
    // Attempts past their retention are forgotten; later ones stay.
    let old = attempt(0, 500);
    let old = Attempt { at_ms: 0, ..old };
    let older = Attempt {
        id: AttemptId::new(),
        at_ms: 0,
        ..old.clone()
    };
    store.put_attempt(&old).await.unwrap();
    store.put_attempt(&older).await.unwrap();
    assert_eq!(store.expire_attempts(1, 1).await.unwrap(), 1, "bounded");
    assert_eq!(store.expire_attempts(1, 100).await.unwrap(), 1);
    assert_eq!(store.expire_attempts(1, 100).await.unwrap(), 0);

    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(store.endpoints(r).await.unwrap(), std::slice::from_ref(&a));
    let kept = store.attempts_page(r, a.id, None, 10).await.unwrap();
    assert_eq!(kept.items, newest_first);
}

/// A change that moves no money stores its order, its eSIMs' new states and its events
/// together; one naming an eSIM of another order writes nothing.
pub async fn a_change_that_moves_no_money_writes_its_records_and_events_together(
    backend: &dyn Backend,
) {
    let store = backend.open();
    let (r, other) = two_funded(&*store, 1_000).await;
    let (mine, theirs) = (order_for(r, 100, 1), order_for(other, 100, 1));
    accept(&*store, &mine).await.unwrap();
    accept(&*store, &theirs).await.unwrap();
    let mine = settle(&*store, &mine, &["8999000000000000078"])
        .await
        .unwrap();
    let theirs = settle(&*store, &theirs, &["8999000000000000086"])
        .await
        .unwrap();
    store
        .dispatched(&store.outbox(10).await.unwrap())
        .await
        .unwrap();

    // An order left waiting raises its event with its new state.
    let mut waiting = order_for(r, 100, 1);
    accept(&*store, &waiting).await.unwrap();
    waiting.transition(OrderStatus::Submitted, 20).unwrap();
    let raised = Event::of_order(&waiting).unwrap();
    let change = Commit::change(Some(waiting.clone()), Vec::new(), vec![raised.clone()]);
    assert_eq!(
        store.commit(&change).await.unwrap(),
        Ok(None),
        "no money moved"
    );
    assert_eq!(
        store.order(waiting.id).await.unwrap(),
        Some(waiting.clone())
    );
    assert_eq!(
        store.event(r, raised.id).await.unwrap(),
        Some(raised.clone())
    );

    // An eSIM's new state, with its event.
    let mut installed = store.esim("8999000000000000078").await.unwrap().unwrap();
    let before = (installed.profile, installed.plan);
    installed.profile = ProfileState::Installed;
    let events = Event::of_esim(&installed, before, 30);
    assert_eq!(events.len(), 1, "one axis moved");
    let change = Commit::change(None, vec![installed.clone()], events.clone());
    assert_eq!(store.commit(&change).await.unwrap(), Ok(None));
    assert_eq!(
        store.esim(&installed.iccid).await.unwrap(),
        Some(installed.clone())
    );
    assert_eq!(
        store.outbox(10).await.unwrap(),
        [raised.clone(), events[0].clone()],
        "both wait to be delivered"
    );

    // Naming another order's eSIM as one's own writes nothing, its event included.
    let mut forged = store.esim("8999000000000000086").await.unwrap().unwrap();
    forged.order = mine.id;
    forged.reseller = r;
    forged.profile = ProfileState::Deleted;
    let sneaky = Event::of_esim(&forged, (ProfileState::Released, PlanState::Ready), 40);
    let change = Commit::change(None, vec![forged], sneaky.clone());
    assert!(matches!(
        store.commit(&change).await.unwrap(),
        Err(Rejected::IccidTaken(IccidTaken { owner, .. })) if owner == theirs.id
    ));
    let kept = store.esim("8999000000000000086").await.unwrap().unwrap();
    assert_eq!(
        (kept.order, kept.profile),
        (theirs.id, ProfileState::Released)
    );
    assert_eq!(store.event(r, sneaky[0].id).await.unwrap(), None);

    // An endpoint changes with the event that tells of it.
    let endpoint = Endpoint {
        id: EndpointId::new(),
        reseller: r,
        url: "https://hooks.example.com/gone".into(),
        event_types: EventType::ALL.to_vec(),
        description: None,
        enabled: false,
        disabled_reason: Some("answered 410 Gone".into()),
        sealed_secret: vec![1; 40],
        previous: None,
        failing_since_ms: None,
        created_at_ms: 50,
    };
    let told = Event::endpoint_disabled(r, endpoint.id, "answered 410 Gone".into(), 50);
    let change =
        Commit::change(None, Vec::new(), vec![told.clone()]).with_endpoint(endpoint.clone());
    assert_eq!(store.commit(&change).await.unwrap(), Ok(None));
    assert_eq!(
        store.endpoint(r, endpoint.id).await.unwrap(),
        Some(endpoint.clone())
    );
    assert_eq!(store.event(r, told.id).await.unwrap(), Some(told));

    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(
        store.endpoint(r, endpoint.id).await.unwrap(),
        Some(endpoint)
    );
    assert_eq!(store.order(waiting.id).await.unwrap(), Some(waiting));
    assert_eq!(store.esim(&installed.iccid).await.unwrap(), Some(installed));
    assert_eq!(
        store.outbox(10).await.unwrap().len(),
        3,
        "all three still wait"
    );
    assert_eq!(store.outbox(2).await.unwrap(), [raised, events[0].clone()]);
}

/// `balance.low` is raised in the commit of the hold that takes the available balance from
/// the threshold or above to below it, and only then.
pub async fn a_hold_that_crosses_the_alert_threshold_raises_balance_low_with_it(
    backend: &dyn Backend,
) {
    let store = backend.open();
    let r = reseller().id;
    credit(&*store, r, 1_000).await;
    let hold = |price: i64| {
        let order = order_for(r, price, 1);
        Commit::accept(order).unwrap().alert_below(Some(800))
    };
    let low = |store: &Arc<dyn Store>| {
        let store = store.clone();
        async move {
            store
                .events_page(r, None, Some(EventType::BalanceLow), 10)
                .await
                .unwrap()
                .items
        }
    };
    // 1000 -> 700: crosses 800.
    let first = hold(300);
    assert!(store.commit(&first).await.unwrap().is_ok());
    let raised = low(&store).await;
    assert_eq!(raised.len(), 1);
    let EventData::Balance(data) = &raised[0].data else {
        panic!("a balance event")
    };
    assert_eq!(
        (
            data.currency.as_str(),
            data.available_minor,
            data.threshold_minor
        ),
        ("USD", 700, 800)
    );
    assert_eq!(
        store.outbox(10).await.unwrap(),
        raised,
        "waiting to be delivered"
    );
    // 700 -> 600: already below, nothing new.
    assert!(store.commit(&hold(100)).await.unwrap().is_ok());
    assert_eq!(low(&store).await.len(), 1);
    // A hold the balance cannot cover raises nothing (and writes nothing).
    assert!(store.commit(&hold(5_000)).await.unwrap().is_err());
    assert_eq!(low(&store).await.len(), 1);
    // Back above, then below again: raised again.
    credit(&*store, r, 600).await;
    assert!(store.commit(&hold(500)).await.unwrap().is_ok());
    assert_eq!(low(&store).await.len(), 2);
    // Without a threshold nothing is raised.
    credit(&*store, r, 10_000).await;
    let plain = Commit::accept(order_for(r, 10_000, 1)).unwrap();
    assert!(store.commit(&plain).await.unwrap().is_ok());
    assert_eq!(low(&store).await.len(), 2);

    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(
        low(&store).await.len(),
        2,
        "kept with the holds that raised them"
    );
}

/// `hasten_job` adds a job or brings it forward, never back, and leaves a leased job to
/// its worker.
pub async fn a_job_is_brought_forward_unless_a_worker_holds_it(backend: &dyn Backend) {
    let store = backend.open();
    let order = OrderId::new();
    store.hasten_job(&Job::fulfil(order, 5_000)).await.unwrap();
    let id = Job::fulfil(order, 0).id;
    assert_eq!(
        store.job(&id).await.unwrap().unwrap().due_ms,
        5_000,
        "added"
    );
    store.hasten_job(&Job::fulfil(order, 9_000)).await.unwrap();
    assert_eq!(
        store.job(&id).await.unwrap().unwrap().due_ms,
        5_000,
        "never pushed back"
    );
    store.hasten_job(&Job::fulfil(order, 2_000)).await.unwrap();
    assert_eq!(store.job(&id).await.unwrap().unwrap().due_ms, 2_000);
    assert!(
        store
            .claim_jobs("run-1", 1_999, 100, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim_jobs("run-1", 2_000, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "found by its new due time");
    // Leased until 3_000: bringing it forward to 2_500 is left to its worker.
    store.hasten_job(&Job::fulfil(order, 2_500)).await.unwrap();
    assert_eq!(store.job(&id).await.unwrap(), Some(claimed[0].clone()));
    assert!(
        store
            .claim_jobs("run-1", 2_600, 100, 10)
            .await
            .unwrap()
            .is_empty(),
        "still leased"
    );
}

/// The consent ledger keeps each reseller's subject's events apart, oldest first, durably.
pub async fn consent_events_are_kept_in_order_per_reseller_and_subject(backend: &dyn Backend) {
    use crate::domain::consent::{CollectionMethod, ConsentAction, ConsentEvent};
    use crate::domain::ids::ConsentId;
    let store = backend.open();
    let (a, b) = (reseller().id, reseller().id);
    let (alice, bob) = (SubjectLookup([1; 32]), SubjectLookup([2; 32]));
    let event = |reseller, subject, purpose: &str, action| ConsentEvent {
        id: ConsentId::new(),
        reseller,
        subject,
        purpose: purpose.into(),
        action,
        notice_version: "v1".into(),
        notice_hash: "0".repeat(64),
        policy_url: None,
        collection_method: CollectionMethod::WebForm,
        language: None,
        jurisdiction: None,
        collected_at_ms: 1,
        recorded_at_ms: 1,
        recorded_by: KeyId::new(),
        sealed_subject_ref: vec![9, 9],
    };
    let history = [
        event(a, alice, "ekyc", ConsentAction::Granted),
        event(a, alice, "marketing", ConsentAction::Granted),
        event(a, alice, "ekyc", ConsentAction::Withdrawn),
    ];
    for e in &history {
        store.put_consent(e).await.unwrap();
    }
    store
        .put_consent(&event(a, bob, "ekyc", ConsentAction::Granted))
        .await
        .unwrap();
    store
        .put_consent(&event(b, alice, "ekyc", ConsentAction::Granted))
        .await
        .unwrap();
    store.durable().await.unwrap();
    assert_eq!(
        store.consents(a, &alice, 100).await.unwrap(),
        history,
        "oldest first"
    );
    assert_eq!(store.consents(a, &alice, 2).await.unwrap(), history[..2]);
    assert_eq!(store.consents(a, &bob, 100).await.unwrap().len(), 1);
    assert_eq!(
        store.consents(b, &alice, 100).await.unwrap().len(),
        1,
        "another reseller's subject of the same lookup is its own"
    );
    assert!(store.consents(b, &bob, 100).await.unwrap().is_empty());
    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(
        store.consents(a, &alice, 100).await.unwrap(),
        history,
        "durable"
    );
}

/// The API request log pages newest first and expires oldest first, a bounded batch at a
/// time.
pub async fn request_records_are_paged_newest_first_and_expire_oldest_first(backend: &dyn Backend) {
    use crate::domain::request_log::RequestRecord;
    let store = backend.open();
    let record = |at_ms: u64| RequestRecord {
        id: Ulid::from_parts(at_ms, rand_part()),
        method: "GET".into(),
        route: "/v1/orders/{id}".into(),
        status: 200,
        key: Some(KeyId::new()),
        client: "203.0.113.0/24".into(),
        micros: 120,
    };
    let mut records: Vec<RequestRecord> = [1_000, 2_000, 3_000, 4_000].map(record).into();
    records[1].key = None; // a request that did not authenticate
    // Written as the writer writes them: a batch at a time (here, one record each).
    for r in &records {
        store
            .append_requests(std::slice::from_ref(r))
            .await
            .unwrap();
    }
    store.durable().await.unwrap();
    let page = store.requests_page(None, 3).await.unwrap();
    assert_eq!(
        page.items,
        [records[3].clone(), records[2].clone(), records[1].clone()]
    );
    assert!(page.has_more);
    let rest = store.requests_page(Some(records[1].id), 3).await.unwrap();
    assert_eq!(
        (rest.items, rest.has_more),
        (vec![records[0].clone()], false)
    );
    assert_eq!(store.expire_requests(3_000, 1).await.unwrap(), 1, "bounded");
    assert_eq!(store.expire_requests(3_000, 10).await.unwrap(), 1);
    assert_eq!(
        store.expire_requests(3_000, 10).await.unwrap(),
        0,
        "not before"
    );
    let left = store.requests_page(None, 10).await.unwrap().items;
    assert_eq!(left, [records[3].clone(), records[2].clone()]);
}

fn rand_part() -> u128 {
    Ulid::new().random()
}

/// Transaction retention: a final order whose last change is older than the cutoff goes
/// with its eSIMs, for good (not written back on reopening); open or younger orders stay;
/// the ledger's amounts and the balance do not move.
pub async fn old_final_orders_are_purged_and_their_ledger_amounts_kept(backend: &dyn Backend) {
    let store = backend.open();
    let r = reseller();
    store.put_reseller(&r).await.unwrap();
    credit(&*store, r.id, 10_000).await;
    let old = order_for(r.id, 100, 1);
    accept(&*store, &old).await.unwrap();
    let old = settle(&*store, &old, &["8900000000000000017"])
        .await
        .unwrap();
    // Ledger entries are walked in id order (ULIDs: time, then random within a
    // millisecond), and an open order's hold stops the walk until it is final. So that
    // `old`'s entries come first, as they would in use, the next ids are minted later.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let open = order_for(r.id, 100, 1);
    accept(&*store, &open).await.unwrap();
    let mut young = order_for(r.id, 100, 1);
    young.created_at_ms = 50_000;
    young.updated_at_ms = 50_000;
    accept(&*store, &young).await.unwrap();
    let mut settled = young.clone();
    settled.transition(OrderStatus::Submitted, 50_001).unwrap();
    settled.transition(OrderStatus::Failed, 50_002).unwrap();
    let commit = Commit::settle(settled, EntryKind::Release, Vec::new()).unwrap();
    store.commit(&commit).await.unwrap().unwrap();
    let balance = store.balance(r.id, "USD").await.unwrap();
    let entries = store.ledger_page(r.id, None, 100).await.unwrap().items;
    store.durable().await.unwrap();

    // `old` changed last at 12: a cut at 12 keeps it, one at 13 takes it; `open` is not
    // final and `young` changed at 50_002, so both stay.
    store.purge_transactions(12, 100).await.unwrap();
    assert!(
        store.order(old.id).await.unwrap().is_some(),
        "not before its time"
    );
    let mut looked = 0;
    for _ in 0..10 {
        looked += store.purge_transactions(13, 100).await.unwrap();
    }
    assert!(looked > 0);
    assert_eq!(store.order(old.id).await.unwrap(), None, "purged");
    assert_eq!(store.esim("8900000000000000017").await.unwrap(), None);
    assert!(
        store.order(open.id).await.unwrap().is_some(),
        "open orders stay"
    );
    assert!(
        store.order(young.id).await.unwrap().is_some(),
        "younger orders stay"
    );
    assert_eq!(
        store.balance(r.id, "USD").await.unwrap(),
        balance,
        "money untouched"
    );
    let after = store.ledger_page(r.id, None, 100).await.unwrap().items;
    assert_eq!(after, entries, "ledger amounts kept");
    store.durable().await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(store.order(old.id).await.unwrap(), None, "not written back");
    assert_eq!(store.balance(r.id, "USD").await.unwrap(), balance);
}

/// A closed account's data go in bounded batches; its orders and eSIMs (transaction
/// records, kept to their own period) stay readable; other accounts are untouched.
pub async fn a_forgotten_account_leaves_its_orders_readable_and_nothing_else(
    backend: &dyn Backend,
) {
    use crate::domain::consent::{CollectionMethod, ConsentAction, ConsentEvent};
    use crate::domain::ids::ConsentId;
    let store = backend.open();
    let (gone, kept) = (reseller(), reseller());
    for r in [&gone, &kept] {
        store.put_reseller(r).await.unwrap();
        credit(&*store, r.id, 10_000).await;
    }
    let key = |r: &Reseller| ApiKey {
        id: KeyId::new(),
        reseller: Some(r.id),
        role: Role::Reseller,
        mode: KeyMode::Live,
        hash: KeyHash([r.id.to_bytes()[15]; 32]),
        hint: "sgk_live_x".into(),
        created_at_ms: 1,
        expires_at_ms: None,
    };
    let (gone_key, kept_key) = (key(&gone), key(&kept));
    store.put_api_key(&gone_key).await.unwrap();
    store.put_api_key(&kept_key).await.unwrap();
    let order = order_for(gone.id, 100, 1);
    accept(&*store, &order).await.unwrap();
    let order = settle(&*store, &order, &["8900000000000000033"])
        .await
        .unwrap();
    let subject = SubjectLookup([3; 32]);
    store
        .put_consent(&ConsentEvent {
            id: ConsentId::new(),
            reseller: gone.id,
            subject,
            purpose: "marketing".into(),
            action: ConsentAction::Granted,
            notice_version: "v1".into(),
            notice_hash: "0".repeat(64),
            policy_url: None,
            collection_method: CollectionMethod::Api,
            language: None,
            jurisdiction: None,
            collected_at_ms: 1,
            recorded_at_ms: 1,
            recorded_by: gone_key.id,
            sealed_subject_ref: vec![1],
        })
        .await
        .unwrap();
    let kept_balance = store.balance(kept.id, "USD").await.unwrap();

    let mut deleted = 0;
    loop {
        let n = store.forget_account(gone.id, 2).await.unwrap();
        deleted += n;
        if n < 2 {
            break;
        }
        assert!(deleted < 100, "the batches end");
    }
    assert!(
        deleted >= 5,
        "keys, ledger, consent and the account: {deleted}"
    );
    assert_eq!(store.reseller(gone.id).await.unwrap(), None);
    assert_eq!(store.api_key(&gone_key.hash).await.unwrap(), None);
    assert_eq!(store.api_key_by_id(gone_key.id).await.unwrap(), None);
    assert!(
        store
            .ledger_page(gone.id, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .consents(gone.id, &subject, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.balances(gone.id).await.unwrap(), vec![]);
    let (read, esims) = store.order_and_esims(order.id).await.unwrap().unwrap();
    assert_eq!(
        (read.status, esims.len()),
        (OrderStatus::Fulfilled, 1),
        "kept in full"
    );
    assert!(store.api_key(&kept_key.hash).await.unwrap().is_some());
    assert_eq!(store.balance(kept.id, "USD").await.unwrap(), kept_balance);

    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(store.reseller(gone.id).await.unwrap(), None);
    assert!(store.order(order.id).await.unwrap().is_some());
    assert_eq!(store.balance(kept.id, "USD").await.unwrap(), kept_balance);
    assert_eq!(store.balances(gone.id).await.unwrap(), vec![]);
}

/// An audit entry by key `key` about `reseller`.
fn audit_entry(
    action: crate::domain::audit::AuditAction,
    reseller: Option<ResellerId>,
) -> crate::domain::audit::NewAuditEntry {
    use crate::domain::audit::{Actor, NewAuditEntry};
    NewAuditEntry::new(Actor::Key(KeyId::new()), action)
        .reseller(reseller)
        .target(OrderId::new())
}

/// The whole audit log, oldest first, as verification reads it.
async fn whole_audit_log(store: &dyn Store) -> Vec<crate::domain::audit::AuditEntry> {
    store.audit_entries(0, usize::MAX).await.unwrap()
}

/// Appends, even from threads at once, are numbered 1, 2, 3, ... without gaps, each
/// linked to the one before; times never go back; a reopened store goes on where it was.
pub async fn audit_entries_are_numbered_without_gaps_and_each_links_to_the_one_before(
    backend: &dyn Backend,
) {
    use crate::domain::audit::{AuditAction, GENESIS, verify};
    let store = backend.open();
    let first = store
        .append_audit(5_000, audit_entry(AuditAction::KeyCreated, None))
        .await
        .unwrap();
    assert_eq!((first.seq, first.prev_hash.as_str()), (1, GENESIS));
    assert_eq!(first.hash, first.computed_hash());
    let earlier = store
        .append_audit(4_000, audit_entry(AuditAction::KeyRevoked, None))
        .await
        .unwrap();
    assert_eq!(
        (earlier.seq, earlier.prev_hash.as_str(), earlier.at_ms),
        (2, first.hash.as_str(), 5_000),
        "linked, and never earlier than the entry before"
    );
    // Eight threads appending at once still make one line.
    let handle = tokio::runtime::Handle::current();
    let writers: Vec<_> = (0..8u64)
        .map(|t| {
            let (store, handle) = (store.clone(), handle.clone());
            tokio::task::spawn_blocking(move || {
                for i in 0..25 {
                    let entry = audit_entry(AuditAction::OrderAccepted, None);
                    handle
                        .block_on(store.append_audit(6_000 + t * 100 + i, entry))
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let log = whole_audit_log(&*store).await;
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=202).collect::<Vec<_>>()
    );
    assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert_eq!(verify(&log, 1, GENESIS).unwrap().entries, 202);
    store.durable().await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(whole_audit_log(&*store).await, log, "durable");
    let next = store
        .append_audit(1, audit_entry(AuditAction::AuthFailed, None))
        .await
        .unwrap();
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (203, log[201].hash.as_str())
    );
    assert_eq!(next.at_ms, log[201].at_ms, "times still never go back");
    assert_eq!(store.audit_entries(200, 2).await.unwrap(), log[199..201]);
}

/// Audit pages come newest first; `before` is a cursor; action, reseller and time
/// filters combine.
pub async fn audit_pages_come_newest_first_with_cursor_and_filters(backend: &dyn Backend) {
    use crate::domain::audit::{AuditAction, AuditFilter};
    let store = backend.open();
    let (a, b) = (reseller().id, reseller().id);
    for i in 0..30u64 {
        let (action, r) = match i % 3 {
            0 => (AuditAction::OrderAccepted, Some(a)),
            1 => (AuditAction::CreditPosted, Some(b)),
            _ => (AuditAction::AuthFailed, None),
        };
        store
            .append_audit(1_000 + i * 10, audit_entry(action, r))
            .await
            .unwrap();
    }
    let seqs = |page: &crate::domain::store::Page<crate::domain::audit::AuditEntry>| {
        page.items.iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    let all = AuditFilter::default();
    let first = store.audit_page(&all, None, 4).await.unwrap();
    assert_eq!(seqs(&first), [30, 29, 28, 27]);
    assert!(first.has_more);
    let next = store.audit_page(&all, Some(27), 4).await.unwrap();
    assert_eq!(seqs(&next), [26, 25, 24, 23]);
    let last = store.audit_page(&all, Some(3), 4).await.unwrap();
    assert_eq!((seqs(&last), last.has_more), (vec![2, 1], false));

    let orders_of_a = AuditFilter {
        action: Some(AuditAction::OrderAccepted),
        reseller: Some(a),
        ..Default::default()
    };
    let page = store.audit_page(&orders_of_a, None, 100).await.unwrap();
    assert_eq!(page.items.len(), 10);
    assert!(
        page.items
            .iter()
            .all(|e| e.action == AuditAction::OrderAccepted && e.reseller == Some(a))
    );
    let credits_to_a = AuditFilter {
        action: Some(AuditAction::CreditPosted),
        reseller: Some(a),
        ..Default::default()
    };
    assert!(
        store
            .audit_page(&credits_to_a, None, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Entries 11 to 20 are at 1_100 to 1_190.
    let window = AuditFilter {
        since_ms: Some(1_100),
        until_ms: Some(1_190),
        ..Default::default()
    };
    let page = store.audit_page(&window, None, 4).await.unwrap();
    assert_eq!((seqs(&page), page.has_more), (vec![20, 19, 18, 17], true));
    let page = store.audit_page(&window, Some(13), 4).await.unwrap();
    assert_eq!((seqs(&page), page.has_more), (vec![12, 11], false));
    let failures_in_window = AuditFilter {
        action: Some(AuditAction::AuthFailed),
        ..window
    };
    assert_eq!(
        seqs(
            &store
                .audit_page(&failures_in_window, None, 100)
                .await
                .unwrap()
        ),
        [18, 15, 12]
    );
}

/// A purge keeps its checkpoint and deletes what comes before it; what is left verifies
/// from the checkpoint, numbering goes on after it (even when nothing was kept), and all
/// of it survives reopening.
pub async fn a_purged_audit_log_stays_verifiable_from_its_checkpoint(backend: &dyn Backend) {
    use crate::domain::audit::{AuditAction, AuditCheckpoint, GENESIS, verify};
    let store = backend.open();
    assert_eq!(store.audit_checkpoint().await.unwrap(), None);
    for i in 0..10 {
        store
            .append_audit(i, audit_entry(AuditAction::OrderAccepted, None))
            .await
            .unwrap();
    }
    let log = whole_audit_log(&*store).await;
    // The store keeps a checkpoint as given; signing it is the domain's affair.
    let checkpoint = |first: &crate::domain::audit::AuditEntry,
                      head: &crate::domain::audit::AuditEntry| {
        AuditCheckpoint {
            first_seq: first.seq,
            prev_hash: first.prev_hash.clone(),
            head_seq: head.seq,
            head_hash: head.hash.clone(),
            made_at_ms: 99,
            signature: "00".repeat(32),
        }
    };
    let kept_from_7 = checkpoint(&log[6], &log[9]);
    assert_eq!(store.purge_audit(&kept_from_7).await.unwrap(), 6);
    assert_eq!(
        store.audit_checkpoint().await.unwrap(),
        Some(kept_from_7.clone())
    );
    let kept = whole_audit_log(&*store).await;
    assert_eq!(kept, log[6..]);
    assert_eq!(store.audit_entries(1, 100).await.unwrap(), log[6..]);
    assert_eq!(
        verify(&kept, kept_from_7.first_seq, &kept_from_7.prev_hash)
            .unwrap()
            .entries,
        4
    );
    assert!(
        verify(&kept, 1, GENESIS).is_err(),
        "not from the start any more"
    );
    // Purging again to the same checkpoint deletes nothing more.
    assert_eq!(store.purge_audit(&kept_from_7).await.unwrap(), 0);
    store.durable().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = backend.open();
    assert_eq!(whole_audit_log(&*store).await, log[6..], "durable");
    // Everything purged: the checkpoint names the entry to come.
    let last = &log[9];
    let nothing_kept = AuditCheckpoint {
        first_seq: 11,
        prev_hash: last.hash.clone(),
        head_seq: 10,
        head_hash: last.hash.clone(),
        made_at_ms: 100,
        signature: "00".repeat(32),
    };
    assert_eq!(store.purge_audit(&nothing_kept).await.unwrap(), 4);
    assert!(whole_audit_log(&*store).await.is_empty());
    store.durable().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = backend.open();
    let next = store
        .append_audit(20, audit_entry(AuditAction::KeyRevoked, None))
        .await
        .unwrap();
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (11, last.hash.as_str()),
        "numbering goes on from the checkpoint"
    );
    let kept = whole_audit_log(&*store).await;
    assert_eq!(verify(&kept, 11, &last.hash).unwrap().entries, 1);
}

/// A node's record is kept under its id (a new run replaces the last), listed by id and
/// forgotten on request; a claimed job names the run that claimed it, and a run does not
/// claim again the jobs it has in hand.
pub async fn node_records_are_kept_by_id_and_a_job_names_the_run_that_claimed_it(
    backend: &dyn Backend,
) {
    use crate::domain::nodes::{NodePlugin, NodeRecord};
    let store = backend.open();
    let node = |id: &str, run: &str| NodeRecord {
        id: id.into(),
        run: run.into(),
        address: "127.0.0.1:8080".into(),
        version: "1.2.3".into(),
        started_ms: 10,
        heartbeat_ms: 20,
        alive_until_ms: 1_000_000,
        stopped: false,
        plugins: vec![NodePlugin {
            id: "sandbox".into(),
            state: "serving".into(),
            version: Some("0.3.0".into()),
            sha256: Some("ab".repeat(32)),
        }],
    };
    store.put_node(&node("node_b", "run-b1")).await.unwrap();
    store.put_node(&node("node_a", "run-a1")).await.unwrap();
    store.put_node(&node("node_b", "run-b2")).await.unwrap();
    let nodes = store.nodes().await.unwrap();
    assert_eq!(
        nodes,
        vec![node("node_a", "run-a1"), node("node_b", "run-b2")]
    );
    assert!(store.delete_node("node_a").await.unwrap());
    assert!(!store.delete_node("node_a").await.unwrap());
    assert_eq!(store.nodes().await.unwrap().len(), 1);

    store
        .put_job(&Job::new("j", JobKind::RefreshCatalogs, 100))
        .await
        .unwrap();
    let claimed = store.claim_jobs("run-b2", 100, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].owner.as_deref(), Some("run-b2"));
    assert_eq!(
        store.job("j").await.unwrap().unwrap().owner.as_deref(),
        Some("run-b2"),
        "the stored job names its run"
    );
    assert!(
        store
            .claim_jobs("run-b2", 200, 1_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "a run does not claim what it has in hand"
    );
    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(store.nodes().await.unwrap(), vec![node("node_b", "run-b2")]);
    store.close().await.unwrap();
}

/// `first_meta` keeps the first value of a key: later callers (racing or not) get it back,
/// and it is there after reopening.
pub async fn the_first_value_of_a_meta_key_is_kept(backend: &dyn Backend) {
    let store = backend.open();
    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.first_meta("keys/probe", &[i; 4]).await.unwrap() })
        })
        .collect();
    let mut kept = Vec::new();
    for racer in racers {
        kept.push(racer.await.unwrap());
    }
    assert!(
        kept.iter().all(|k| *k == kept[0]),
        "one value for all: {kept:?}"
    );
    assert_eq!(
        store.meta("keys/probe").await.unwrap(),
        Some(kept[0].clone())
    );
    assert_eq!(
        store.first_meta("keys/probe", b"later").await.unwrap(),
        kept[0]
    );
    store.close().await.unwrap();
    drop(store);
    let store = backend.open();
    assert_eq!(
        store.first_meta("keys/probe", b"again").await.unwrap(),
        kept[0]
    );
    store.close().await.unwrap();
}
