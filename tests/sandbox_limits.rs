//! Hostile plugins are contained: each is stopped with its typed error while the gateway
//! and the sandbox plugin keep serving, and an ungranted import fails at load time.

use std::thread;

use simgate_test_support::{Gateway, GatewayBuilder, json};

const GRANTS: &str = r#"
[plugins.spin.limits]
timeout_ms = 1000
"#;

fn gateway() -> Gateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "spin", "hog", "trap", "oversized", "undeclared"])
        .grants(GRANTS)
        // One retry, quickly: a deadline is retried once, then the order fails.
        .config("[orders]\nmax_attempts = 2\nbase_backoff_ms = 50\n")
        .start()
}

/// Order `product` while a sandbox order runs concurrently; the sandbox order must succeed.
fn order_beside_sandbox(gw: &Gateway, product: &str) -> simgate_test_support::Resp {
    thread::scope(|s| {
        let hostile = s.spawn(|| gw.order(&json!({"product_id": product})));
        // Several healthy orders while the hostile call runs.
        for _ in 0..3 {
            let ok = gw.order(&json!({"product_id": "sandbox:SBX-US-5GB-30D"}));
            assert_eq!(ok.status, 201, "{:?}", ok.json);
            assert_eq!(
                ok.json["status"], "fulfilled",
                "sandbox keeps serving beside {product}"
            );
        }
        hostile.join().unwrap()
    })
}

fn assert_failed_with(resp: &simgate_test_support::Resp, code: &str) {
    assert_eq!(resp.status, 201, "{:?}", resp.json);
    assert_eq!(resp.json["status"], "failed", "{:?}", resp.json);
    assert_eq!(resp.json["failure"]["code"], code, "{:?}", resp.json);
}

#[test]
fn each_hostile_plugin_is_stopped_with_its_typed_error_while_the_sandbox_serves() {
    let gw = gateway();
    assert_failed_with(&order_beside_sandbox(&gw, "spin:spin-1"), "plugin_deadline");
    assert_failed_with(&order_beside_sandbox(&gw, "hog:hog-1"), "plugin_memory");
    assert_failed_with(&order_beside_sandbox(&gw, "trap:trap-1"), "plugin_trap");
    assert_failed_with(
        &order_beside_sandbox(&gw, "oversized:oversized-1"),
        "plugin_bad_output",
    );

    // The operator sees which plugin failed how, with its identity.
    let status = gw.call("GET", "/v1/admin/plugins", Some(&gw.admin_key), None);
    assert_eq!(status.status, 200);
    let plugins = status.json["data"].as_array().unwrap();
    let faults = |id: &str, kind: &str| -> u64 {
        let p = plugins.iter().find(|p| p["id"] == id).unwrap();
        p["stats"]["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f[0] == kind)
            .unwrap()[1]
            .as_u64()
            .unwrap()
    };
    // A deadline is retryable: the configured one retry also hit it, then the order failed.
    assert_eq!(faults("spin", "deadline"), 2);
    assert_eq!(faults("hog", "memory"), 1);
    assert_eq!(faults("trap", "trap"), 1);
    assert_eq!(faults("oversized", "bad_output"), 1);
    assert_eq!(faults("sandbox", "trap"), 0);
}

#[test]
fn a_plugin_importing_ungranted_egress_fails_to_load_with_a_clear_error() {
    let gw = gateway();
    let status = gw.call("GET", "/v1/admin/plugins", Some(&gw.admin_key), None);
    let undeclared = status.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "undeclared")
        .unwrap()
        .clone();
    assert_eq!(undeclared["state"], "failed");
    let error = undeclared["last_error"].as_str().unwrap();
    assert!(error.contains("wasi:http/outgoing-handler"), "{error}");
    assert!(error.contains("no outbound host is granted"), "{error}");
    // Its products are not offered, and ordering one says the supplier is unavailable.
    let r = gw.order(&json!({"product_id": "undeclared:undeclared-1"}));
    assert_eq!(r.status, 503);
    assert_eq!(r.json["code"], "supplier_not_loaded");
}

#[test]
fn reseller_keys_cannot_see_the_plugin_status() {
    let gw = gateway();
    let r = gw.call("GET", "/v1/admin/plugins", Some(&gw.demo_key), None);
    assert_eq!(r.status, 404);
}
