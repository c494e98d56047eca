//! Test mode, as resellers know it from payment APIs: `sgk_test_` keys see only test-mode
//! data and order only from the plugins the operator marks as sandboxes; live keys never
//! reach a sandbox. One gateway, one reseller with a key of each mode, the sandbox plugin
//! (marked) beside the `esim-access` adapter against its simulator (a live supplier).

use simgate_test_support::{EsimAccessSim, Gateway, GatewayBuilder, Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");
const ACCESS_CODE: &str = "acc-5d1f0a";
const SECRET: &str = "esim-access-signing-secret-b7e2";
const ORDER_PATH: &str = "/api/v1/open/esim/order";

struct Setup {
    gw: Gateway,
    sim: EsimAccessSim,
    test_key: String,
    live_key: String,
}

fn setup() -> Setup {
    let sim = EsimAccessSim::start(ACCESS_CODE, SECRET);
    let grants = format!(
        r#"
[plugins.esim-access]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["ESIM_ACCESS_SECRET"]
config = {{ base_url = "{}", access_code = "{ACCESS_CODE}" }}
"#,
        sim.base()
    );
    let gw = GatewayBuilder::new(BIN)
        .plugins(&["esim-access", "sandbox"])
        .grants(&grants)
        .secrets(&format!(
            "[esim-access]\nESIM_ACCESS_SECRET = \"{SECRET}\"\n"
        ))
        .config(
            "[orders]\nsync_wait_ms = 3000\n\
             [test_mode]\nsandbox_plugins = [\"sandbox\"]\n\
             [routing.products]\njp-5gb = [\"esim-access:PJP5G30D\", \"sandbox:SBX-JP-5GB-30D\"]\n",
        )
        .start();
    let (id, test_key) = gw.new_reseller(0, Some(100_000));
    let live = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{id}/keys"),
        Some(&gw.admin_key),
        Some(&json!({"role": "reseller", "mode": "live"})),
    );
    assert_eq!(live.status, 201, "{:?}", live.json);
    let credited = gw.credit(
        &id,
        &json!({"amount": 50_000, "currency": "USD", "mode": "live"}),
    );
    assert_eq!(credited.status, 201, "{:?}", credited.json);
    Setup {
        gw,
        sim,
        test_key,
        live_key: live.json["key"].as_str().unwrap().to_string(),
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn test_keys_cannot_reach_a_live_plugin_and_live_keys_cannot_reach_a_sandbox() {
    let s = setup();
    let (gw, test, live) = (&s.gw, s.test_key.as_str(), s.live_key.as_str());

    // Each mode's catalog lists its own suppliers only; the routed product is offered
    // from each mode's own supplier, at that supplier's price.
    let test_products = gw.call("GET", "/v1/products", Some(test), None);
    let live_products = gw.call("GET", "/v1/products", Some(live), None);
    let (test_ids, live_ids) = (ids(&test_products.json), ids(&live_products.json));
    assert!(test_ids.iter().any(|p| p.starts_with("sandbox:")));
    assert!(
        !test_ids.iter().any(|p| p.starts_with("esim-access:")),
        "{test_ids:?}"
    );
    assert!(live_ids.iter().any(|p| p.starts_with("esim-access:")));
    assert!(
        !live_ids.iter().any(|p| p.starts_with("sandbox:")),
        "{live_ids:?}"
    );
    let price = |list: &Value| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "jp-5gb")
            .unwrap()["price"]["minor"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(price(&test_products.json), 1100, "the sandbox's price");
    assert_eq!(price(&live_products.json), 650, "the live supplier's price");

    // A test key naming a live product finds nothing, and the supplier hears nothing.
    for product in ["esim-access:PJP5G30D", "esim-access:PJP1G7D"] {
        let r = gw.post_idem_as(
            test,
            "/v1/orders",
            &json!({"product_id": product, "quantity": 1}),
            &simgate_test_support::unique_key(),
        );
        assert_eq!(r.status, 404, "{product}: {:?}", r.json);
    }
    assert!(
        s.sim.requests_to(ORDER_PATH).is_empty(),
        "no live order was placed"
    );
    // A live key naming a sandbox product finds nothing either.
    let r = gw.post_idem_as(
        live,
        "/v1/orders",
        &json!({"product_id": "sandbox:SBX-JP-5GB-30D", "quantity": 1}),
        &simgate_test_support::unique_key(),
    );
    assert_eq!(r.status, 404, "{:?}", r.json);

    // The routed product goes to each mode's own supplier.
    let test_order = gw.place_order_as(test, &json!({"product_id": "jp-5gb", "quantity": 1}));
    let test_order = gw.wait_order_as(test, &test_order, |o| o["status"] == "fulfilled");
    assert_eq!(test_order["supplier"], "sandbox");
    assert!(
        s.sim.requests_to(ORDER_PATH).is_empty(),
        "still no live order"
    );
    let live_order = gw.place_order_as(live, &json!({"product_id": "jp-5gb", "quantity": 1}));
    simgate_test_support::wait_for("the live supplier to be asked", || {
        (!s.sim.requests_to(ORDER_PATH).is_empty()).then_some(())
    });
    let live_order = gw.order_as(live, &live_order);
    assert_eq!(live_order["product_id"], "jp-5gb");
}

#[test]
fn test_keys_see_no_live_data_and_live_keys_no_test_data() {
    let s = setup();
    let (gw, test, live) = (&s.gw, s.test_key.as_str(), s.live_key.as_str());
    let test_order = gw.place_order_as(
        test,
        &json!({"product_id": "sandbox:SBX-JP-5GB-30D", "quantity": 1}),
    );
    let test_order = gw.wait_order_as(test, &test_order, |o| o["status"] == "fulfilled");
    let test_id = test_order["id"].as_str().unwrap();
    let iccid = test_order["esims"][0]["iccid"].as_str().unwrap();
    let live_order = gw.place_order_as(
        live,
        &json!({"product_id": "esim-access:PJP1G7D", "quantity": 1}),
    );

    // Orders: each key reads and lists its own mode's only.
    assert_eq!(
        gw.call("GET", &format!("/v1/orders/{test_id}"), Some(live), None)
            .status,
        404
    );
    assert_eq!(
        gw.call("GET", &format!("/v1/orders/{live_order}"), Some(test), None)
            .status,
        404
    );
    assert_eq!(
        ids(&gw.call("GET", "/v1/orders", Some(test), None).json),
        vec![test_id]
    );
    assert_eq!(
        ids(&gw.call("GET", "/v1/orders", Some(live), None).json),
        vec![live_order.clone()]
    );
    // eSIMs: the test eSIM is not there for the live key.
    assert_eq!(
        gw.call("GET", &format!("/v1/esims/{iccid}"), Some(test), None)
            .status,
        200
    );
    assert_eq!(
        gw.call("GET", &format!("/v1/esims/{iccid}"), Some(live), None)
            .status,
        404
    );
    assert_eq!(
        gw.call("GET", &format!("/v1/esims/{iccid}/qr"), Some(live), None)
            .status,
        404
    );

    // Money: each mode spends its own balance; neither ledger shows the other's entries.
    assert_eq!(gw.balance_of(test), (100_000 - 1100, 0));
    // The live order (180 cents at eSIM Access's price) is held or captured from the live
    // balance; the test order's 1100 is not.
    let (available, held) = gw.balance_of(live);
    assert_eq!(
        available + held,
        50_000 - 180 * i64::from(held == 0),
        "{available} {held}"
    );
    let entries = |key: &str| -> Vec<Value> {
        gw.call("GET", "/v1/balance/transactions?limit=100", Some(key), None)
            .json["data"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (test_entries, live_entries) = (entries(test), entries(live));
    assert!(
        test_entries
            .iter()
            .all(|e| e["order_id"].is_null() || e["order_id"] == test_id)
    );
    assert!(
        test_entries
            .iter()
            .any(|e| e["type"] == "credit" && e["amount"] == 100_000)
    );
    assert!(
        !test_entries.iter().any(|e| e["amount"] == 50_000),
        "no live credit"
    );
    assert!(
        live_entries
            .iter()
            .all(|e| e["order_id"].is_null() || e["order_id"] == live_order.as_str())
    );
    assert!(
        !live_entries.iter().any(|e| e["amount"] == 100_000),
        "no test credit"
    );

    // Events: the test order's are the test key's only.
    let events = |key: &str| gw.call("GET", "/v1/events?limit=100", Some(key), None).json;
    let test_events = events(test).to_string();
    let live_events = events(live).to_string();
    assert!(test_events.contains(test_id));
    assert!(!live_events.contains(test_id), "{live_events}");
    assert!(!test_events.contains(live_order.as_str()), "{test_events}");
}
