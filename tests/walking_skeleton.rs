//! The first order end to end: a fresh gateway on an empty data directory lists the
//! sandbox catalog and sells an eSIM over HTTP.

use simgate_test_support::{GatewayBuilder, json, luhn};

fn gateway() -> simgate_test_support::Gateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate")).start()
}

#[test]
fn first_start_prints_an_admin_key_and_a_demo_key_once() {
    let gw = gateway();
    assert!(gw.admin_key.starts_with("sgk_live_"), "{:?}", gw.stdout);
    assert!(gw.demo_key.starts_with("sgk_test_"), "{:?}", gw.stdout);
    let dir = gw.kill();
    let again = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .data_dir(dir)
        .start();
    assert!(
        again.demo_key.is_empty() && again.admin_key.is_empty(),
        "keys are shown only on first start: {:?}",
        again.stdout
    );
}

#[test]
fn an_esim_is_ordered_over_http_and_delivered_with_a_valid_iccid_and_activation_code() {
    let gw = gateway();
    let products = gw.get("/v1/products");
    assert_eq!(products.status, 200, "{:?}", products.json);
    let list = products.json["data"].as_array().unwrap();
    assert!(list.len() >= 12, "sandbox lists a dozen products");
    let japan = list
        .iter()
        .find(|p| p["countries"] == json!(["JP"]) && p["needs_kyc"] == false)
        .expect("a Japan product");
    let product_id = japan["id"].as_str().unwrap();
    assert!(product_id.starts_with("sandbox:"));

    let order = gw.order(&json!({"product_id": product_id, "quantity": 2}));
    assert_eq!(order.status, 201, "{:?}", order.json);
    assert_eq!(order.json["status"], "fulfilled");
    let esims = order.json["esims"].as_array().unwrap();
    assert_eq!(esims.len(), 2);
    for e in esims {
        let iccid = e["iccid"].as_str().unwrap();
        assert!(luhn(iccid), "ICCID {iccid} passes Luhn");
        assert!(
            iccid.starts_with("8999"),
            "sandbox ICCIDs are in the test range"
        );
        let code = e["activation_code"].as_str().unwrap();
        assert_eq!(
            code,
            format!(
                "LPA:1${}${}",
                e["smdp_address"].as_str().unwrap(),
                e["matching_id"].as_str().unwrap()
            )
        );
        assert!(code.starts_with("LPA:1$"));
    }

    // The order and its eSIMs read back.
    let id = order.json["id"].as_str().unwrap();
    let read = gw.get(&format!("/v1/orders/{id}"));
    assert_eq!(read.status, 200);
    assert_eq!(read.json["esims"], order.json["esims"]);
    let iccid = esims[0]["iccid"].as_str().unwrap();
    let esim = gw.get(&format!("/v1/esims/{iccid}"));
    assert_eq!(esim.status, 200);
    assert_eq!(esim.json["activation_code"], esims[0]["activation_code"]);
}

#[test]
fn requests_without_a_valid_key_get_a_401_problem() {
    let gw = gateway();
    for key in [
        None,
        Some("sgk_test_nope"),
        Some("sgk_test_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA_AAAAAA"),
    ] {
        let r = gw.call("GET", "/v1/products", key, None);
        assert_eq!(r.status, 401);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.json["code"], "unauthenticated");
        assert!(r.json["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
}

#[test]
fn out_of_stock_and_unknown_products_are_clear() {
    let gw = gateway();
    let oos = gw.order(&json!({"product_id": "sandbox:SBX-XX-OOS"}));
    assert_eq!(oos.status, 201, "{:?}", oos.json);
    assert_eq!(oos.json["status"], "failed");
    assert_eq!(oos.json["failure"]["code"], "out_of_stock");
    let unknown = gw.order(&json!({"product_id": "sandbox:NOPE"}));
    assert_eq!(unknown.status, 404);
    // A plugin that was never deployed is the client's mistake: no such product.
    let no_plugin = gw.order(&json!({"product_id": "gone:SKU"}));
    assert_eq!(no_plugin.status, 404, "{:?}", no_plugin.json);
    assert_eq!(no_plugin.json["code"], "not_found");
    let bad = gw.order(&json!({"product_id": "sandbox:SBX-US-5GB-30D", "quantity": "two"}));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["code"], "malformed_json");
    assert_eq!(bad.json["pointer"], "/quantity");
}
