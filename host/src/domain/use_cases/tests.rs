//! Use cases on the in-memory store with a fixed clock and a native supplier: the
//! time-based rules (key rotation grace, catalog back-off, idempotency retention) tested
//! at times the tests choose.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::domain::accounts::{KeyMode, Role};
use crate::domain::clock::FixedClock;
use crate::domain::consent::{CollectionMethod, ConsentAction};
use crate::domain::ekyc::{EkycRedirect, EkycRequest, EkycStatus, EkycUpdate, Inbound};
use crate::domain::events::EventType;
use crate::domain::fulfilment::RetryPolicy;
use crate::domain::gateway::{DomainError, Gateway, GatewayTuning};
use crate::domain::idempotency::{Claim, IdemState};
use crate::domain::ids::EkycSessionId;
use crate::domain::ids::{OrderId, ResellerId};
use crate::domain::ledger::{EntryKind, LedgerEntry};
use crate::domain::orders::{Order, OrderKind, OrderSpec, OrderStatus};
use crate::domain::store::Commit;
use crate::domain::supplier::{
    DataAllowance, FakeSupplier, Money, OnlySupplier, PlanState, ProfileState, Supplier,
    SupplierError, SupplierProduct, Usage,
};
use crate::domain::use_cases::consents::NewConsent;
use crate::domain::use_cases::ekyc::CallbackOutcome;
use crate::domain::use_cases::webhooks::NewEndpoint;
use crate::domain::webhooks::{AttemptOutcome, FakeWebhooks, NextTry};
use crate::store::MemoryStore;

/// A supplier with one product whose catalog fails while `failing` is set; counts its
/// catalog calls.
struct Native {
    supplier: Arc<FakeSupplier>,
    /// The profile and plan states its `usage` reports.
    states: Arc<std::sync::Mutex<(ProfileState, PlanState)>>,
    /// The bytes its `usage` reports used, of 1000.
    used: Arc<std::sync::atomic::AtomicU64>,
    failing: Arc<AtomicBool>,
    catalog_calls: Arc<AtomicU32>,
}

fn native() -> Native {
    let failing = Arc::new(AtomicBool::new(false));
    let catalog_calls = Arc::new(AtomicU32::new(0));
    let mut supplier = FakeSupplier::new("native");
    let states = Arc::new(std::sync::Mutex::new((
        ProfileState::Released,
        PlanState::Ready,
    )));
    let reported = states.clone();
    let used = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let used_reported = used.clone();
    supplier.usage = Box::new(move |_| {
        let (profile, plan) = *reported.lock().unwrap();
        Ok(Usage {
            used_bytes: used_reported.load(Ordering::SeqCst),
            total_bytes: Some(1_000),
            profile,
            plan,
            raw_status: format!("{profile:?}/{plan:?}"),
            expires_at_ms: None,
        })
    });
    let (fails, calls) = (failing.clone(), catalog_calls.clone());
    supplier.catalog = Box::new(move || {
        calls.fetch_add(1, Ordering::SeqCst);
        if fails.load(Ordering::SeqCst) {
            return Err(SupplierError::Unavailable("down".into()));
        }
        Ok(vec![SupplierProduct {
            sku: "SKU-1".into(),
            title: "One".into(),
            countries: vec!["US".into()],
            region: None,
            data: DataAllowance::Bytes(1),
            validity_days: 1,
            wholesale: Money {
                minor: 100,
                currency: "USD".into(),
            },
            needs_kyc: false,
            top_up_able: false,
        }])
    });
    Native {
        supplier: Arc::new(supplier),
        states,
        used,
        failing,
        catalog_calls,
    }
}

const START: u64 = 1_800_000_000_000;

struct Fixture {
    gateway: Gateway,
    clock: Arc<FixedClock>,
    native: Native,
    webhooks: Arc<FakeWebhooks>,
    _keys: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let keys = tempfile::tempdir().unwrap();
    let clock = Arc::new(FixedClock::at(START));
    let native = native();
    let tuning = GatewayTuning {
        rotation_grace: Duration::from_secs(3600),
        catalog_ttl: Duration::from_secs(600),
        idempotency_retention: Duration::from_secs(24 * 3600),
        ..Default::default()
    };
    let webhooks = Arc::new(FakeWebhooks::default());
    let gateway = Gateway::new(
        Arc::new(MemoryStore::new()),
        Arc::new(OnlySupplier(native.supplier.clone())),
        Arc::new(crate::privacy::FileKeyring::open(keys.path()).unwrap()),
        clock.clone(),
        RetryPolicy::default(),
        tuning,
        webhooks.clone(),
    );
    Fixture {
        gateway,
        clock,
        native,
        webhooks,
        _keys: keys,
    }
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_and_not_after() {
    let f = fixture();
    let reseller = f.gateway.create_reseller("R", 0).await.unwrap();
    let (old, _) = f
        .gateway
        .create_key(Some(reseller.id), Role::Reseller, KeyMode::Test)
        .await
        .unwrap();
    let who = f.gateway.authenticate(&old).await.unwrap();
    let (new, _) = f.gateway.rotate_key(&who).await.unwrap();
    f.clock.advance(3_600_000 - 1);
    assert!(
        f.gateway.authenticate(&old).await.is_ok(),
        "still in its grace"
    );
    f.clock.advance(1);
    assert!(matches!(
        f.gateway.authenticate(&old).await,
        Err(DomainError::Unauthenticated)
    ));
    assert!(f.gateway.authenticate(&new).await.is_ok());
}

#[tokio::test]
async fn a_failing_catalog_is_asked_again_only_after_its_back_off_and_a_fresh_one_not_before_its_ttl()
 {
    let f = fixture();
    let supplier: Arc<dyn Supplier> = f.native.supplier.clone();
    f.native.failing.store(true, Ordering::SeqCst);
    let calls = || f.native.catalog_calls.load(Ordering::SeqCst);
    assert!(f.gateway.plugin_catalog(&supplier).await.unwrap().is_none());
    assert!(f.gateway.plugin_catalog(&supplier).await.unwrap().is_none());
    assert_eq!(calls(), 1, "backing off");
    f.clock.advance(5_000);
    f.native.failing.store(false, Ordering::SeqCst);
    let catalog = f.gateway.plugin_catalog(&supplier).await.unwrap().unwrap();
    assert_eq!(
        (calls(), catalog.products.len()),
        (2, 1),
        "asked again after 5 s"
    );
    f.clock.advance(599_999);
    f.gateway.plugin_catalog(&supplier).await.unwrap();
    assert_eq!(calls(), 2, "fresh until its TTL");
    f.clock.advance(1);
    f.gateway.plugin_catalog(&supplier).await.unwrap();
    assert_eq!(calls(), 3, "stale at its TTL");
}

#[tokio::test]
async fn idempotency_keys_are_kept_for_their_retention_and_then_forgotten() {
    let f = fixture();
    let reseller = f.gateway.create_reseller("R", 0).await.unwrap();
    let fingerprint = [1u8; 32];
    let (key, claim) = f
        .gateway
        .claim_idempotency(reseller.id, "k-1", &fingerprint)
        .await
        .unwrap();
    assert_eq!(claim, Claim::New);
    let done = IdemState::Order {
        order: OrderId::new(),
    };
    f.gateway.finish_idempotency(&key, &done).await.unwrap();
    f.clock.advance(24 * 3_600_000);
    assert_eq!(
        f.gateway.expire_idempotency_keys().await.unwrap(),
        0,
        "not before"
    );
    f.clock.advance(1);
    assert_eq!(f.gateway.expire_idempotency_keys().await.unwrap(), 1);
    let (_, again) = f
        .gateway
        .claim_idempotency(reseller.id, "k-1", &[2u8; 32])
        .await
        .unwrap();
    assert_eq!(again, Claim::New, "the key is free again");
}

/// A new order of one `native:SKU-1` for `reseller`, accepted (its price held).
async fn accepted_order(store: &dyn crate::domain::store::Store, reseller: ResellerId) -> Order {
    let spec = OrderSpec {
        reseller,
        product_id: "native:SKU-1".into(),
        plugin: "native".into(),
        sku: "SKU-1".into(),
        quantity: 1,
        unit_price: Money {
            minor: 100,
            currency: "USD".into(),
        },
        kind: OrderKind::Esim,
    };
    let order = Order::accepted(spec, OrderId::new(), None, START);
    store
        .commit(&Commit::accept(order.clone()).unwrap())
        .await
        .unwrap()
        .unwrap();
    order
}

/// A reseller's key, an endpoint of it, and one failed order's event in the outbox.
async fn subscribed_with_an_event(
    f: &Fixture,
) -> (
    crate::domain::gateway::Principal,
    crate::domain::webhooks::Endpoint,
    crate::domain::events::Event,
) {
    let reseller = f.gateway.create_reseller("R", 0).await.unwrap();
    let (key, _) = f
        .gateway
        .create_key(Some(reseller.id), Role::Reseller, KeyMode::Live)
        .await
        .unwrap();
    let who = f.gateway.authenticate(&key).await.unwrap();
    let new = NewEndpoint {
        url: "https://hooks.example.com/simgate".into(),
        event_types: None,
        description: None,
    };
    let (endpoint, _) = f.gateway.create_endpoint(&who, new).await.unwrap();
    let store = f.gateway.store();
    let credit = LedgerEntry::new(reseller.id, EntryKind::Credit, 1_000, "USD", None, START);
    store
        .commit(&Commit::credit(credit))
        .await
        .unwrap()
        .unwrap();
    let mut order = accepted_order(store.as_ref(), reseller.id).await;
    order.transition(OrderStatus::Submitted, START).unwrap();
    order.transition(OrderStatus::Failed, START).unwrap();
    let settle = Commit::settle(order, EntryKind::Release, Vec::new()).unwrap();
    store.commit(&settle).await.unwrap().unwrap();
    let event = settle.events()[0].clone();
    (who, endpoint, event)
}

#[tokio::test]
async fn an_endpoint_failing_for_the_limit_is_disabled_and_a_delivery_in_between_clears_the_mark() {
    let f = fixture();
    let (who, endpoint, event) = subscribed_with_an_event(&f).await;
    assert_eq!(f.gateway.dispatch_events().await.unwrap(), 1);
    assert_eq!(f.gateway.dispatch_events().await.unwrap(), 0, "taken out");
    let due = f
        .gateway
        .store()
        .claim_jobs("run-1", START, 1, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "one delivery job for one endpoint");
    let deliver = |n| f.gateway.deliver(event.reseller, endpoint.id, event.id, n);
    let state = || f.gateway.endpoint(&who, endpoint.id);

    *f.webhooks.outcome.lock().unwrap() = AttemptOutcome::Failed;
    let NextTry::After(wait) = deliver(1).await.unwrap() else {
        panic!("tried again")
    };
    assert!(
        (5_000..5_500).contains(&wait.as_millis()),
        "the schedule's 5 s: {wait:?}"
    );
    assert_eq!(state().await.unwrap().failing_since_ms, Some(START));
    // A success in between clears the mark.
    *f.webhooks.outcome.lock().unwrap() = AttemptOutcome::Delivered;
    f.clock.advance(5_000);
    assert_eq!(deliver(2).await.unwrap(), NextTry::Done);
    assert_eq!(state().await.unwrap().failing_since_ms, None);

    // Failing from now on: still enabled a moment before five days, disabled at five.
    *f.webhooks.outcome.lock().unwrap() = AttemptOutcome::Failed;
    let since = START + 5_000;
    assert!(matches!(deliver(1).await.unwrap(), NextTry::After(_)));
    f.clock.advance(5 * 24 * 3_600_000 - 1);
    assert!(matches!(deliver(2).await.unwrap(), NextTry::After(_)));
    assert!(state().await.unwrap().enabled);
    f.clock.advance(1);
    assert_eq!(deliver(3).await.unwrap(), NextTry::Done, "given up");
    let disabled = state().await.unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.failing_since_ms, Some(since));
    assert!(disabled.disabled_reason.unwrap().contains("120 hours"));
    let sent = f.webhooks.sent.lock().unwrap().len();
    assert_eq!(
        deliver(4).await.unwrap(),
        NextTry::Done,
        "a disabled endpoint gets nothing"
    );
    assert_eq!(f.webhooks.sent.lock().unwrap().len(), sent);
    // Every try was logged, with the event's id each time.
    let log = f
        .gateway
        .attempts(&who, endpoint.id, None, 10)
        .await
        .unwrap();
    assert_eq!(log.items.len(), 5);
    assert!(log.items.iter().all(|a| a.event == event.id));
    // The log keeps each attempt 30 days.
    f.clock.advance(30 * 24 * 3_600_000);
    assert_eq!(
        f.gateway.sweep_retention().await.unwrap().webhook_attempts,
        4,
        "the older four"
    );
    f.clock.advance(1);
    assert_eq!(
        f.gateway.sweep_retention().await.unwrap().webhook_attempts,
        1
    );
    let log = f.gateway.attempts(&who, endpoint.id, None, 10).await;
    assert!(log.unwrap().items.is_empty());
}

#[tokio::test]
async fn a_410_disables_at_once_and_the_payload_is_thin() {
    let f = fixture();
    let (who, endpoint, event) = subscribed_with_an_event(&f).await;
    *f.webhooks.outcome.lock().unwrap() = AttemptOutcome::Gone;
    assert_eq!(
        f.gateway
            .deliver(event.reseller, endpoint.id, event.id, 1)
            .await
            .unwrap(),
        NextTry::Done
    );
    let state = f.gateway.endpoint(&who, endpoint.id).await.unwrap();
    assert!(!state.enabled);
    // Disabled and told in one commit: the event waits in the outbox.
    let told: Vec<EventType> = f
        .gateway
        .store()
        .outbox(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        told.contains(&EventType::WebhookEndpointDisabled),
        "{told:?}"
    );
    let sent = f.webhooks.sent.lock().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["type"], "order.failed");
    assert_eq!(
        body["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["order_id", "status"],
        "ids and states only"
    );
    assert_eq!(sent[0].msg_id, event.id.to_string());
    assert_eq!(sent[0].secrets.len(), 1);
}

#[tokio::test]
async fn an_esims_new_states_are_kept_with_one_event_per_axis_that_moved() {
    let f = fixture();
    let (who, _, _) = subscribed_with_an_event(&f).await;
    let reseller = who.reseller.unwrap();
    let store = f.gateway.store();
    store
        .dispatched(&store.outbox(10).await.unwrap())
        .await
        .unwrap();
    // An eSIM of a fulfilled order of this reseller.
    let mut order = accepted_order(store.as_ref(), reseller).await;
    let esim = crate::domain::orders::EsimRecord {
        iccid: "8999000000000000094".into(),
        order: order.id,
        reseller,
        plugin: "native".into(),
        sealed_activation: vec![1; 24],
        confirmation_code_required: false,
        luhn_valid: true,
        profile: ProfileState::Released,
        plan: PlanState::Ready,
        raw_status: String::new(),
        created_at_ms: START,
        usage_told_pct: 0,
    };
    order.transition(OrderStatus::Submitted, START).unwrap();
    order.transition(OrderStatus::Fulfilled, START).unwrap();
    order.iccids = vec![esim.iccid.clone()];
    let settle = Commit::settle(order, EntryKind::Capture, vec![esim.clone()]).unwrap();
    store.commit(&settle).await.unwrap().unwrap();
    store
        .dispatched(&store.outbox(10).await.unwrap())
        .await
        .unwrap();
    let kinds = || async {
        let waiting = store.outbox(10).await.unwrap();
        store.dispatched(&waiting).await.unwrap();
        waiting.into_iter().map(|e| e.kind).collect::<Vec<_>>()
    };

    *f.native.states.lock().unwrap() = (ProfileState::Installed, PlanState::Active);
    f.gateway.usage(&who, &esim.iccid).await.unwrap();
    assert_eq!(
        kinds().await,
        [
            EventType::EsimProfileStateChanged,
            EventType::EsimPlanStateChanged
        ]
    );
    let kept = store.esim(&esim.iccid).await.unwrap().unwrap();
    assert_eq!(
        (kept.profile, kept.plan),
        (ProfileState::Installed, PlanState::Active)
    );
    f.gateway.usage(&who, &esim.iccid).await.unwrap();
    assert!(kinds().await.is_empty(), "nothing moved, nothing raised");
    // Two observations made from copies read before either was kept (two webhooks'
    // jobs at once): each is applied to the record as stored, so neither is lost.
    let (mut stale_a, mut stale_b) = (esim.clone(), esim.clone());
    let seen = |profile, plan| super::esims::Observation {
        profile,
        plan,
        ..Default::default()
    };
    f.gateway
        .observe_esim(&mut stale_a, seen(Some(ProfileState::Enabled), None))
        .await
        .unwrap();
    f.gateway
        .observe_esim(&mut stale_b, seen(None, Some(PlanState::Depleted)))
        .await
        .unwrap();
    let kept = store.esim(&esim.iccid).await.unwrap().unwrap();
    assert_eq!(
        (kept.profile, kept.plan),
        (ProfileState::Enabled, PlanState::Depleted)
    );
    let _ = kinds().await;
    *f.native.states.lock().unwrap() = (ProfileState::Installed, PlanState::Active);
    f.gateway.usage(&who, &esim.iccid).await.unwrap();
    let _ = kinds().await;
    // 85% of the data: told once, with the record.
    f.native.used.store(850, Ordering::SeqCst);
    f.gateway.usage(&who, &esim.iccid).await.unwrap();
    assert_eq!(kinds().await, [EventType::EsimUsageThreshold]);
    f.gateway.usage(&who, &esim.iccid).await.unwrap();
    assert!(kinds().await.is_empty(), "80% is not told twice");
    assert_eq!(
        store
            .esim(&esim.iccid)
            .await
            .unwrap()
            .unwrap()
            .usage_told_pct,
        80
    );
    f.native.used.store(1_000, Ordering::SeqCst);
    *f.native.states.lock().unwrap() = (ProfileState::Installed, PlanState::Depleted);
    f.gateway.usage(&who, &esim.iccid).await.unwrap();
    let mut both = kinds().await;
    both.sort_by_key(|k| k.name());
    assert_eq!(
        both,
        [
            EventType::EsimPlanStateChanged,
            EventType::EsimUsageThreshold
        ]
    );
    let page = f.gateway.events(&who, None, None, 1).await.unwrap();
    let crate::domain::events::EventData::Esim(data) = &page.items[0].data else {
        panic!("an eSIM's event")
    };
    assert_eq!(
        (data.iccid.as_str(), data.plan_state),
        (esim.iccid.as_str(), PlanState::Depleted)
    );
}

/// A supplier whose one product needs eKYC: its sessions open at a provider URL for
/// `session_ms`, and its callbacks are `session_ref=status` bodies.
fn kyc_fixture(session_ms: u64) -> (Fixture, Arc<std::sync::Mutex<Vec<EkycRequest>>>) {
    use crate::domain::supplier::{Feature, ProvisionOutcome};
    let mut f = fixture();
    let mut supplier = FakeSupplier::new("kyc");
    supplier.info.features = vec![Feature::Ekyc];
    supplier.catalog = Box::new(|| {
        Ok(vec![SupplierProduct {
            sku: "ID-1".into(),
            title: "Needs an ID check".into(),
            countries: vec!["CN".into()],
            region: None,
            data: DataAllowance::Bytes(1),
            validity_days: 1,
            wholesale: Money {
                minor: 500,
                currency: "USD".into(),
            },
            needs_kyc: true,
            top_up_able: false,
        }])
    });
    supplier.provision = Box::new(|req| {
        Ok(ProvisionOutcome::Delivered(vec![
            crate::domain::supplier::EsimProfile {
                iccid: format!("8988{:016}", req.order_ref.len() as u64 * 7919),
                smdp_address: "smdp.example".into(),
                matching_id: "M-1".into(),
                confirmation_code_required: false,
            },
        ]))
    });
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let clock = f.clock.clone();
    supplier.ekyc_start = Box::new(move |req: EkycRequest| {
        seen.lock().unwrap().push(req.clone());
        Ok(EkycRedirect {
            url: format!("https://verify.example/s/{}", req.session_ref),
            supplier_ref: format!("prov-{}", req.session_ref),
            expires_at_ms: crate::domain::clock::Clock::now_ms(&*clock) + session_ms,
        })
    });
    supplier.ekyc_callback = Box::new(|inbound: Inbound| {
        let body = String::from_utf8(inbound.body).unwrap();
        let (session_ref, status) = body.split_once('=').unwrap();
        let status = match status {
            "approved" => EkycStatus::Approved,
            "rejected" => EkycStatus::Rejected,
            "pending" => EkycStatus::Pending,
            _ => return Err(SupplierError::InvalidRequest("bad signature".into())),
        };
        Ok(EkycUpdate {
            session_ref: session_ref.into(),
            status,
        })
    });
    f.gateway = Gateway::new(
        f.gateway.store.clone(),
        Arc::new(OnlySupplier(Arc::new(supplier))),
        f.gateway.keyring.clone(),
        f.clock.clone(),
        RetryPolicy::default(),
        GatewayTuning {
            ekyc_wait: Duration::from_secs(3600),
            ..Default::default()
        },
        f.webhooks.clone(),
    );
    (f, asked)
}

/// A funded reseller's writing principal.
async fn funded_reseller(f: &Fixture) -> crate::domain::gateway::Principal {
    let reseller = f.gateway.create_reseller("R", 0).await.unwrap();
    f.gateway
        .credit(
            reseller.id,
            KeyMode::Live,
            10_000,
            "USD",
            None,
            ulid::Ulid::new(),
        )
        .await
        .unwrap();
    let (key, _) = f
        .gateway
        .create_key(Some(reseller.id), Role::Reseller, KeyMode::Live)
        .await
        .unwrap();
    f.gateway.authenticate(&key).await.unwrap()
}

async fn kyc_order(
    f: &Fixture,
    who: &crate::domain::gateway::Principal,
    subject: &str,
) -> crate::domain::use_cases::orders::OrderView {
    let new = crate::domain::use_cases::orders::NewOrder {
        product_id: "kyc:ID-1".into(),
        quantity: 1,
        subject_ref: Some(subject.into()),
        metadata: None,
    };
    f.gateway.place_order(who, new, None).await.unwrap()
}

async fn consent(
    f: &Fixture,
    who: &crate::domain::gateway::Principal,
    subject: &str,
    action: ConsentAction,
) {
    let new = NewConsent {
        subject_ref: subject.into(),
        purpose: "ekyc".into(),
        action,
        notice_version: "2026-01".into(),
        notice_hash: "ab".repeat(32),
        policy_url: None,
        collection_method: CollectionMethod::WebForm,
        language: None,
        jurisdiction: None,
        collected_at_ms: None,
    };
    f.gateway.record_consent(who, new).await.unwrap();
}

async fn held(f: &Fixture, who: &crate::domain::gateway::Principal) -> (i64, i64) {
    let balances = f.gateway.balances(who).await.unwrap();
    let usd = &balances.iter().find(|(c, _)| c == "USD").unwrap().1;
    (usd.available, usd.held)
}

#[tokio::test]
async fn an_ekyc_order_waits_with_its_price_held_and_needs_the_subjects_consent() {
    let (f, asked) = kyc_fixture(600_000);
    let who = funded_reseller(&f).await;
    let order = kyc_order(&f, &who, "user-1").await;
    assert_eq!(order.status, OrderStatus::AwaitingKyc);
    assert_eq!(held(&f, &who).await, (10_000 - 500, 500));

    let refused = f
        .gateway
        .start_ekyc(&who, order.id, "https://shop.example/back")
        .await;
    assert!(
        matches!(
            refused,
            Err(DomainError::Conflict {
                code: "consent_required",
                ..
            })
        ),
        "{refused:?}"
    );
    consent(&f, &who, "user-1", ConsentAction::Granted).await;
    let (session, created) = f
        .gateway
        .start_ekyc(&who, order.id, "https://shop.example/back")
        .await
        .unwrap();
    assert!(created);
    assert_eq!(session.status, EkycStatus::Pending);
    assert!(
        session
            .redirect_url
            .unwrap()
            .starts_with("https://verify.example/s/eks_")
    );
    let (again, created) = f
        .gateway
        .start_ekyc(&who, order.id, "https://shop.example/back")
        .await
        .unwrap();
    assert!(!created, "one session per order");
    assert_eq!(again.id, session.id);
    assert_eq!(
        asked.lock().unwrap().len(),
        1,
        "the supplier was asked once"
    );
    // Only the session's id, the SKU and the way back reach the supplier.
    assert_eq!(
        asked.lock().unwrap()[0],
        EkycRequest {
            session_ref: session.id.to_string(),
            sku: "ID-1".into(),
            return_url: "https://shop.example/back".into(),
        }
    );

    // Withdrawn: a new order's session is refused again.
    consent(&f, &who, "user-1", ConsentAction::Withdrawn).await;
    let second = kyc_order(&f, &who, "user-1").await;
    let refused = f
        .gateway
        .start_ekyc(&who, second.id, "https://shop.example/back")
        .await;
    assert!(matches!(
        refused,
        Err(DomainError::Conflict {
            code: "consent_required",
            ..
        })
    ));
}

#[tokio::test]
async fn an_ekyc_session_expires_at_its_time_and_not_before_and_releases_the_hold() {
    let (f, _) = kyc_fixture(600_000);
    let who = funded_reseller(&f).await;
    consent(&f, &who, "user-2", ConsentAction::Granted).await;
    let order = kyc_order(&f, &who, "user-2").await;
    f.gateway
        .start_ekyc(&who, order.id, "https://shop.example/back")
        .await
        .unwrap();
    f.clock.advance(600_000 - 1);
    let again = f.gateway.fulfilment.step(order.id).await.unwrap();
    assert_eq!(again, Some(Duration::from_millis(1)), "not before");
    assert_eq!(
        f.gateway.order(&who, order.id).await.unwrap().status,
        OrderStatus::AwaitingKyc
    );
    f.clock.advance(1);
    assert_eq!(f.gateway.fulfilment.step(order.id).await.unwrap(), None);
    let failed = f.gateway.order(&who, order.id).await.unwrap();
    assert_eq!(failed.status, OrderStatus::Failed);
    assert_eq!(failed.failure.unwrap().code, "ekyc_expired");
    assert_eq!(failed.ekyc.unwrap().status, EkycStatus::Expired);
    assert_eq!(held(&f, &who).await, (10_000, 0), "hold released");
    let events = f.gateway.events(&who, None, None, 10).await.unwrap().items;
    let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&EventType::EkycSessionStatusChanged),
        "{kinds:?}"
    );
    assert!(kinds.contains(&EventType::OrderFailed), "{kinds:?}");
    // A late approval changes nothing.
    let late = Inbound {
        method: "POST".into(),
        path_and_query: "/".into(),
        headers: Vec::new(),
        body: format!("{}=approved", EkycSessionId::of(order.id)).into_bytes(),
        source_address: "127.0.0.1".into(),
    };
    assert_eq!(
        f.gateway.ekyc_callback("kyc", late).await.unwrap(),
        CallbackOutcome::Unchanged
    );
    assert_eq!(held(&f, &who).await, (10_000, 0));
}

#[tokio::test]
async fn an_order_whose_session_never_opens_fails_when_its_wait_ends() {
    let (f, _) = kyc_fixture(600_000);
    let who = funded_reseller(&f).await;
    let order = kyc_order(&f, &who, "user-3").await;
    f.clock.advance(3_600_000);
    assert_eq!(f.gateway.fulfilment.step(order.id).await.unwrap(), None);
    let failed = f.gateway.order(&who, order.id).await.unwrap();
    assert_eq!(failed.failure.unwrap().code, "ekyc_expired");
    assert!(failed.ekyc.is_none());
    assert_eq!(held(&f, &who).await, (10_000, 0));
}

#[tokio::test]
async fn an_approved_session_sends_the_order_to_its_supplier_and_a_rejected_one_fails_it() {
    let (f, _) = kyc_fixture(600_000);
    let who = funded_reseller(&f).await;
    consent(&f, &who, "user-4", ConsentAction::Granted).await;
    let callback = |order: OrderId, status: &str| Inbound {
        method: "POST".into(),
        path_and_query: "/v1/inbound/kyc/ekyc".into(),
        headers: Vec::new(),
        body: format!("{}={status}", EkycSessionId::of(order)).into_bytes(),
        source_address: "127.0.0.1".into(),
    };
    let approved = kyc_order(&f, &who, "user-4").await;
    let rejected = kyc_order(&f, &who, "user-4").await;
    for o in [&approved, &rejected] {
        f.gateway
            .start_ekyc(&who, o.id, "https://shop.example/back")
            .await
            .unwrap();
    }
    // A callback the plugin refuses (a bad signature) changes nothing.
    let forged = f
        .gateway
        .ekyc_callback("kyc", callback(approved.id, "forged"))
        .await;
    assert!(
        matches!(forged, Err(DomainError::InboundRefused(_))),
        "{forged:?}"
    );
    assert_eq!(
        f.gateway
            .ekyc_callback("kyc", callback(approved.id, "pending"))
            .await
            .unwrap(),
        CallbackOutcome::Unchanged
    );
    assert_eq!(
        f.gateway
            .ekyc_callback("kyc", callback(approved.id, "approved"))
            .await
            .unwrap(),
        CallbackOutcome::Applied(EkycStatus::Approved)
    );
    let submitted = f.gateway.order(&who, approved.id).await.unwrap();
    assert_eq!(submitted.status, OrderStatus::Submitted);
    assert_eq!(
        submitted.ekyc.as_ref().unwrap().status,
        EkycStatus::Approved
    );
    assert!(
        submitted.ekyc.unwrap().redirect_url.is_none(),
        "dropped once decided"
    );
    // Its job is due now, not at the end of the wait.
    let job = f
        .gateway
        .store
        .job(&crate::domain::jobs::Job::fulfil(approved.id, 0).id)
        .await
        .unwrap()
        .unwrap();
    assert!(job.due_ms <= START, "due now: {}", job.due_ms);
    assert_eq!(f.gateway.fulfilment.step(approved.id).await.unwrap(), None);
    let fulfilled = f.gateway.order(&who, approved.id).await.unwrap();
    assert_eq!(fulfilled.status, OrderStatus::Fulfilled);
    assert_eq!(fulfilled.esims.len(), 1);

    assert_eq!(
        f.gateway
            .ekyc_callback("kyc", callback(rejected.id, "rejected"))
            .await
            .unwrap(),
        CallbackOutcome::Applied(EkycStatus::Rejected)
    );
    let failed = f.gateway.order(&who, rejected.id).await.unwrap();
    assert_eq!(failed.failure.unwrap().code, "ekyc_rejected");
    // One order captured, the other released.
    assert_eq!(held(&f, &who).await, (10_000 - 500, 0));
    // Another plugin cannot speak for these sessions.
    assert!(matches!(
        f.gateway
            .ekyc_callback("other", callback(rejected.id, "approved"))
            .await,
        Err(DomainError::NotFound(_))
    ));
}

/// P10: each class of record is deleted at the end of its period and not before.
#[tokio::test]
async fn p10_each_class_of_record_is_deleted_at_its_period_and_not_before() {
    use crate::domain::request_log::RequestRecord;
    let f = fixture();
    let store = f.gateway.store.clone();
    let day = 24 * 3_600_000u64;
    let record = |at_ms: u64| RequestRecord {
        id: ulid::Ulid::from_parts(at_ms, 7),
        method: "GET".into(),
        route: "/v1/orders".into(),
        status: 200,
        key: None,
        client: "192.0.2.0/24".into(),
        micros: 1,
    };
    store.append_requests(&[record(START)]).await.unwrap();
    // A transaction record: an order the supplier refused, final at START.
    let who = funded_reseller(&f).await;
    let new = crate::domain::use_cases::orders::NewOrder {
        product_id: "native:SKU-1".into(),
        quantity: 1,
        subject_ref: None,
        metadata: None,
    };
    let order = f.gateway.place_order(&who, new, None).await.unwrap();
    assert_eq!(order.status, OrderStatus::Failed);
    // API log: kept 30 days, deleted once older.
    f.clock.advance(30 * day);
    assert_eq!(
        f.gateway.sweep_retention().await.unwrap().requests,
        0,
        "not before"
    );
    f.clock.advance(1);
    assert_eq!(
        f.gateway.sweep_retention().await.unwrap().requests,
        1,
        "past 30 days"
    );
    assert!(
        store
            .requests_page(None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A backlog larger than a batch is worked off a batch per run, and says so.
    let many: Vec<RequestRecord> = (0..(super::retention::SWEEP_BATCH as u64 + 5))
        .map(|i| record(START - 1 - i))
        .collect();
    store.append_requests(&many).await.unwrap();
    let swept = f.gateway.sweep_retention().await.unwrap();
    assert_eq!(swept.requests, super::retention::SWEEP_BATCH);
    assert!(swept.more());
    let swept = f.gateway.sweep_retention().await.unwrap();
    assert_eq!((swept.requests, swept.more()), (5, false));

    // Transaction records: 7 years after the order's last change, and not before.
    let seven_years = super::retention::SEVEN_YEARS_DAYS * day;
    f.clock.advance(seven_years - 30 * day - 1);
    f.gateway.sweep_retention().await.unwrap();
    assert!(
        f.gateway.order(&who, order.id).await.is_ok(),
        "kept 7 years"
    );
    f.clock.advance(1);
    assert_eq!(f.gateway.sweep_retention().await.unwrap().transactions, 1);
    assert!(matches!(
        f.gateway.order(&who, order.id).await,
        Err(DomainError::NotFound(_))
    ));
}

/// P10: a closed account's keys stop at once, and its data go 2 years after closure.
#[tokio::test]
async fn p10_a_closed_account_is_deleted_two_years_after_closure_and_not_before() {
    let f = fixture();
    let who = funded_reseller(&f).await;
    let reseller = who.reseller.unwrap();
    let (key, _) = f
        .gateway
        .create_key(Some(reseller), Role::Reseller, KeyMode::Live)
        .await
        .unwrap();
    let closed = f.gateway.close_reseller(reseller).await.unwrap();
    assert_eq!(closed.closed_at_ms, Some(START));
    assert_eq!(
        f.gateway
            .close_reseller(reseller)
            .await
            .unwrap()
            .closed_at_ms,
        Some(START),
        "idempotent"
    );
    assert!(matches!(
        f.gateway.authenticate(&key).await,
        Err(DomainError::Unauthenticated)
    ));
    let two_years = super::retention::TWO_YEARS_DAYS * 24 * 3_600_000;
    f.clock.advance(two_years);
    assert_eq!(
        f.gateway.sweep_retention().await.unwrap().accounts,
        0,
        "not before"
    );
    assert!(f.gateway.store.reseller(reseller).await.unwrap().is_some());
    f.clock.advance(1);
    assert!(f.gateway.sweep_retention().await.unwrap().accounts > 0);
    assert_eq!(f.gateway.store.reseller(reseller).await.unwrap(), None);
    assert!(f.gateway.store.balances(reseller).await.unwrap().is_empty());
}
