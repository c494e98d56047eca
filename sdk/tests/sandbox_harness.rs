//! The SDK harness drives real built plugins through the gateway's own runtime: the sandbox
//! supplier's whole contract, and the egress probe's secret filling and denials answered by
//! a `RecordingEgress` instead of the network.

use simgate_sdk::harness::{
    EsimProfile, FaultKind, Grant, Harness, LimitOverrides, Loaded, ProfileState, ProvisionOutcome,
    RecordingEgress, SupplierError,
};
use simgate_test_support::{luhn, plugin_source, wasm};

fn sandbox() -> Loaded {
    Harness::new(
        plugin_source("sandbox").join("plugin.toml"),
        wasm("sandbox"),
    )
    .grant_all_requested()
    .load()
    .expect("the sandbox loads")
}

fn delivered(outcome: ProvisionOutcome) -> Vec<EsimProfile> {
    match outcome {
        ProvisionOutcome::Delivered(esims) => esims,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

fn is_sandbox_iccid(iccid: &str) -> bool {
    iccid.len() == 19 && iccid.starts_with("8999") && luhn(iccid)
}

#[test]
fn the_sandbox_describes_itself_as_its_manifest_says() {
    let sandbox = sandbox();
    let info = sandbox.describe().unwrap();
    assert_eq!(&info, sandbox.info());
    assert_eq!(info.id, "sandbox");
    let manifest = std::fs::read_to_string(plugin_source("sandbox").join("plugin.toml")).unwrap();
    assert!(manifest.contains(&format!("version = \"{}\"", info.version)));
}

#[test]
fn the_catalog_has_a_kyc_product_and_a_sold_out_one() {
    let sandbox = sandbox();
    let products = sandbox.list_products().unwrap();
    assert!(products.len() >= 12, "{} products", products.len());
    assert_eq!(products.iter().filter(|p| p.needs_kyc).count(), 1);
    let sold_out: Vec<&str> = products
        .iter()
        .filter(|p| sandbox.provision("ord_stock", &p.sku, 1) == Err(SupplierError::OutOfStock))
        .map(|p| p.sku.as_str())
        .collect();
    assert_eq!(sold_out.len(), 1, "{sold_out:?}");
}

#[test]
fn provisioning_delivers_luhn_valid_iccids_and_is_idempotent_on_order_ref() {
    let sandbox = sandbox();
    let esims = delivered(sandbox.provision("ord_h1", "SBX-JP-5GB-30D", 3).unwrap());
    assert_eq!(esims.len(), 3);
    for esim in &esims {
        assert!(is_sandbox_iccid(&esim.iccid), "{}", esim.iccid);
    }
    // Every call runs in a fresh instance: the same order_ref must still give the same eSIMs.
    let again = delivered(sandbox.provision("ord_h1", "SBX-JP-5GB-30D", 3).unwrap());
    assert_eq!(again, esims);
    let other = delivered(sandbox.provision("ord_h2", "SBX-JP-5GB-30D", 3).unwrap());
    assert_ne!(other, esims);
}

#[test]
fn an_async_order_is_pending_until_polled() {
    let sandbox = sandbox();
    let Ok(ProvisionOutcome::Pending(supplier_ref)) =
        sandbox.provision("ord_async", "SBX-ASYNC-1GB-7D", 2)
    else {
        panic!("expected pending")
    };
    let esims = delivered(sandbox.poll("ord_async", &supplier_ref).unwrap());
    assert_eq!(esims.len(), 2);
    assert!(esims.iter().all(|e| is_sandbox_iccid(&e.iccid)));
    assert!(matches!(
        sandbox.poll("ord_other", &supplier_ref),
        Err(SupplierError::InvalidRequest(_))
    ));
}

#[test]
fn usage_top_up_and_cancel_work_on_sandbox_iccids_only() {
    let sandbox = sandbox();
    let iccid = delivered(sandbox.provision("ord_life", "SBX-US-5GB-30D", 1).unwrap())
        .remove(0)
        .iccid;

    let usage = sandbox.usage(&iccid).unwrap();
    assert_eq!(usage.used_bytes, 0);
    assert!(usage.total_bytes.is_some());
    assert_eq!(usage.profile, ProfileState::Released);

    let top_up = sandbox.top_up("ord_tu", &iccid, "SBX-US-5GB-30D").unwrap();
    assert!(top_up.starts_with("TU-"), "{top_up}");
    assert_eq!(
        sandbox.top_up("ord_tu", &iccid, "SBX-US-5GB-30D").unwrap(),
        top_up
    );
    assert!(matches!(
        sandbox.top_up("ord_tu", &iccid, "SBX-FR-3GB-15D"),
        Err(SupplierError::InvalidRequest(_))
    ));

    assert_eq!(sandbox.cancel("ord_life", &iccid), Ok(()));
    let foreign = "8944000000000000000";
    assert!(matches!(
        sandbox.usage(foreign),
        Err(SupplierError::InvalidRequest(_))
    ));
    assert!(matches!(
        sandbox.cancel("ord_life", foreign),
        Err(SupplierError::InvalidRequest(_))
    ));
}

#[test]
fn an_unknown_sku_is_an_invalid_request() {
    assert!(matches!(
        sandbox().provision("ord_x", "SBX-NOPE", 1),
        Err(SupplierError::InvalidRequest(_))
    ));
}

const SECRET: &str = "s3cr3t-harness-token-41d9";
const TARGET: &str = "http://127.0.0.1:9/probe";

/// The egress probe with its requests granted, its secret set, and `egress` for a network.
fn egress_probe(egress: &RecordingEgress) -> Harness {
    Harness::new(plugin_source("egress"), wasm("egress"))
        .grant_all_requested()
        .secret("PROBE_TOKEN", SECRET)
        .config("target_url", TARGET)
        // Not granted: the plugin requests only http://127.0.0.1:*.
        .config("forbidden_url", "http://localhost:9/other")
        .egress(egress.clone())
}

/// The probe always fails with `rejected` carrying a JSON report of what it saw.
fn report(result: Result<ProvisionOutcome, SupplierError>) -> serde_json::Value {
    match result {
        Err(SupplierError::Rejected(json)) => serde_json::from_str(&json).unwrap(),
        other => panic!("expected the probe's report, got {other:?}"),
    }
}

#[test]
fn the_host_fills_in_the_secret_the_plugin_only_names() {
    let egress = RecordingEgress::new().respond("GET", TARGET, 200, "pong");
    let probe = egress_probe(&egress).load().unwrap();

    let report = report(probe.provision("ord_e1", "egress-1", 1));
    assert_eq!(report["status"], 200);
    assert_eq!(report["body"], "pong");
    // The plugin held only the placeholder...
    assert_eq!(report["sent_authorization"], "Bearer ${secret:PROBE_TOKEN}");
    assert!(!report.to_string().contains(SECRET));
    // ...and what went on the wire carried the value.
    let requests = egress.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].url, TARGET);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
}

#[test]
fn an_unrouted_request_gets_a_404() {
    let egress = RecordingEgress::new();
    let probe = egress_probe(&egress).load().unwrap();
    let report = report(probe.provision("ord_e2", "egress-1", 1));
    assert_eq!(report["status"], 404);
    assert_eq!(egress.requests().len(), 1);
}

#[test]
fn an_ungranted_host_is_denied_and_never_reaches_the_network() {
    let egress = RecordingEgress::new().respond("GET", "http://", 200, "pong");
    let probe = egress_probe(&egress).load().unwrap();
    match probe.provision("ord_e3", "egress-forbidden", 1) {
        Err(SupplierError::Fault { kind, message }) => {
            assert_eq!(kind, FaultKind::EgressDenied, "{message}");
            assert!(message.contains("localhost"), "{message}");
        }
        other => panic!("expected an egress_denied fault, got {other:?}"),
    }
    assert!(egress.requests().is_empty());
}

#[test]
fn an_ungranted_secret_is_never_filled_in() {
    let egress = RecordingEgress::new().respond("GET", TARGET, 200, "pong");
    let probe = egress_probe(&egress)
        .grant(Grant {
            outbound: vec!["http://127.0.0.1:*".into()],
            config: [("target_url".to_string(), TARGET.to_string())].into(),
            ..Grant::default()
        })
        .load()
        .unwrap();
    assert!(probe.plugin().shared().capabilities.secrets.is_empty());
    let result = probe.provision("ord_e4", "egress-1", 1);
    assert!(
        matches!(
            &result,
            Err(SupplierError::Fault {
                kind: FaultKind::EgressDenied,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(egress.requests().is_empty());
}

#[test]
fn a_plugin_that_loops_is_stopped_at_the_granted_deadline() {
    let spin = Harness::new(plugin_source("spin"), wasm("spin"))
        .limits(LimitOverrides {
            timeout_ms: Some(200),
            ..LimitOverrides::default()
        })
        .load()
        .unwrap();
    let result = spin.provision("ord_spin", "spin-1", 1);
    assert!(
        matches!(
            &result,
            Err(SupplierError::Fault {
                kind: FaultKind::Deadline,
                ..
            })
        ),
        "{result:?}"
    );
}
