//! Use cases on the in-memory store with a fixed clock and a native supplier: the
//! time-based rules (key rotation grace, catalog back-off, idempotency retention) tested
//! at times the tests choose.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::domain::accounts::{KeyMode, Role};
use crate::domain::clock::FixedClock;
use crate::domain::fulfilment::RetryPolicy;
use crate::domain::gateway::{DomainError, Gateway, GatewayTuning};
use crate::domain::idempotency::{Claim, IdemState};
use crate::domain::ids::OrderId;
use crate::domain::supplier::{
    DataAllowance, FakeSupplier, Money, OnlySupplier, Supplier, SupplierError, SupplierProduct,
};
use crate::store::MemoryStore;

/// A supplier with one product whose catalog fails while `failing` is set; counts its
/// catalog calls.
struct Native {
    supplier: Arc<FakeSupplier>,
    failing: Arc<AtomicBool>,
    catalog_calls: Arc<AtomicU32>,
}

fn native() -> Native {
    let failing = Arc::new(AtomicBool::new(false));
    let catalog_calls = Arc::new(AtomicU32::new(0));
    let mut supplier = FakeSupplier::new("native");
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
        failing,
        catalog_calls,
    }
}

const START: u64 = 1_800_000_000_000;

struct Fixture {
    gateway: Gateway,
    clock: Arc<FixedClock>,
    native: Native,
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
    let gateway = Gateway::new(
        Arc::new(MemoryStore::new()),
        Arc::new(OnlySupplier(native.supplier.clone())),
        Arc::new(crate::privacy::FileKeyring::open(keys.path()).unwrap()),
        clock.clone(),
        RetryPolicy::default(),
        tuning,
    );
    Fixture {
        gateway,
        clock,
        native,
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
