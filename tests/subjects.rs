//! P11: data-subject rights through the real gateway: export (machine-readable), rectify,
//! erase (crypto-shredding, legal retention kept), restrict and lift, object.

use base64::Engine as _;
use simgate_test_support::{Gateway, GatewayBuilder, Resp, Value, json, stored_under, unique_key};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");
const PRODUCT: &str = "sandbox:SBX-US-5GB-30D";

fn order(gw: &Gateway, key: &str, body: Value) -> Resp {
    let r = gw.post_idem_as(key, "/v1/orders", &body, &unique_key());
    assert_eq!(r.status, 201, "{:?}", r.json);
    r
}

fn subject_call(gw: &Gateway, key: &str, method: &str, subject: &str, action: &str) -> Resp {
    gw.call(
        method,
        &format!("/v1/subjects/{subject}/{action}"),
        Some(key),
        (method == "POST").then(|| json!({})).as_ref(),
    )
}

fn consent(gw: &Gateway, key: &str, subject: &str, purpose: &str, action: &str) {
    let r = gw.call(
        "POST",
        "/v1/consents",
        Some(key),
        Some(&json!({
            "subject_ref": subject, "purpose": purpose, "action": action,
            "notice_version": "v1", "notice_hash": "ab".repeat(32), "collection_method": "in_app",
        })),
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
}

/// `value` as the store could hold it: in clear, JSON-escaped, base64, hex.
fn encodings(value: &str) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        value.as_bytes().to_vec(),
        serde_json::to_string(value).unwrap().into_bytes(),
        b64.encode(value).into_bytes(),
        hex::encode(value).into_bytes(),
        hex::encode_upper(value).into_bytes(),
    ]
}

#[test]
fn p11_erasure_leaves_no_personal_value_on_disk_keeps_transactions_and_spares_other_subjects() {
    let gw = GatewayBuilder::new(BIN).start();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let tag = unique_key();
    let erased = format!("ERASE-ME-{tag}");
    let kept = format!("KEEP-ME-{tag}");
    let erased_meta = format!("ERASED-META-{tag}");
    let kept_meta = format!("KEPT-META-{tag}");
    let mut spent = 0;
    let mut erased_orders = Vec::new();
    for (subject, meta) in [
        (&erased, &erased_meta),
        (&erased, &erased_meta),
        (&kept, &kept_meta),
    ] {
        let r = order(
            &gw,
            &key,
            json!({"product_id": PRODUCT, "subject_ref": subject, "metadata": {"note": meta}}),
        );
        assert_eq!(r.json["status"], "fulfilled");
        spent += r.json["total"]["minor"].as_i64().unwrap();
        if subject == &erased {
            erased_orders.push(r.json["id"].as_str().unwrap().to_string());
        }
    }
    consent(&gw, &key, &erased, "marketing", "granted");

    let before = subject_call(&gw, &key, "GET", &erased, "export");
    assert_eq!(before.json["orders"].as_array().unwrap().len(), 2);
    assert_eq!(
        before.json["orders"][0]["metadata"]["note"],
        erased_meta.as_str()
    );

    let erase = subject_call(&gw, &key, "POST", &erased, "erase");
    assert_eq!(erase.status, 200, "{:?}", erase.json);
    assert_eq!(erase.json["erased_now"], true);
    let kept_records: Vec<&str> = erase.json["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["records"].as_str().unwrap())
        .collect();
    assert!(
        kept_records.iter().any(|r| r.contains("orders")),
        "{:?}",
        erase.json
    );
    assert!(
        erase.json["kept"][0]["why"]
            .as_str()
            .unwrap()
            .contains("7 years")
    );
    // Idempotent: erasing again says the key was gone already.
    let again = subject_call(&gw, &key, "POST", &erased, "erase");
    assert_eq!(again.status, 200);
    assert_eq!(again.json["erased_now"], false);

    // The export is empty of personal fields; amounts, ids and times stay.
    let after = subject_call(&gw, &key, "GET", &erased, "export");
    assert_eq!(after.json["erased"], true, "{:?}", after.json);
    assert!(after.json["subject_ref"].is_null());
    for o in after.json["orders"].as_array().unwrap() {
        assert!(
            o["subject_ref"].is_null() && o["metadata"].is_null(),
            "{o:?}"
        );
        assert!(o["total"]["minor"].as_i64().unwrap() > 0);
    }
    let read = gw.call(
        "GET",
        &format!("/v1/orders/{}", erased_orders[0]),
        Some(&key),
        None,
    );
    assert_eq!(read.status, 200);
    assert!(read.json["subject_ref"].is_null() && read.json["metadata"].is_null());
    // Other subjects are untouched.
    let other = subject_call(&gw, &key, "GET", &kept, "export");
    assert_eq!(
        other.json["orders"][0]["metadata"]["note"],
        kept_meta.as_str()
    );
    // The ledger still balances: every hold captured, nothing lost or doubled.
    assert_eq!(gw.balance_of(&key), (100_000 - spent, 0));

    let (status, dir) = gw.terminate();
    assert!(status.success());
    let files = stored_under(dir.path());
    for value in [&erased, &erased_meta] {
        for encoded in encodings(value) {
            for (path, bytes) in &files {
                assert!(
                    !bytes
                        .windows(encoded.len())
                        .any(|w| w == encoded.as_slice()),
                    "{value} found in {}",
                    path.display()
                );
            }
        }
    }
    // After a restart the erased fields stay unreadable and the others open.
    let gw = GatewayBuilder::new(BIN).data_dir(dir).start();
    let read = gw.call(
        "GET",
        &format!("/v1/orders/{}", erased_orders[1]),
        Some(&key),
        None,
    );
    assert!(read.json["metadata"].is_null(), "{:?}", read.json);
    let other = subject_call(&gw, &key, "GET", &kept, "export");
    assert_eq!(other.json["orders"][0]["subject_ref"], kept.as_str());
}

#[test]
fn p11_restriction_refuses_new_orders_and_ekyc_sessions_until_lifted() {
    let gw = GatewayBuilder::new(BIN).start();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let kyc_order = order(
        &gw,
        &key,
        json!({"product_id": "sandbox:SBX-CN-3GB-15D", "subject_ref": "held-back"}),
    );
    consent(&gw, &key, "held-back", "ekyc", "granted");
    let r = subject_call(&gw, &key, "POST", "held-back", "restrict");
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["restricted"], true);
    assert_eq!(
        subject_call(&gw, &key, "POST", "held-back", "restrict").status,
        200,
        "idempotent"
    );

    let refused = gw.post_idem_as(
        &key,
        "/v1/orders",
        &json!({"product_id": PRODUCT, "subject_ref": "held-back"}),
        &unique_key(),
    );
    assert_eq!(refused.status, 409, "{:?}", refused.json);
    assert_eq!(refused.json["code"], "subject_restricted");
    let session = gw.call(
        "POST",
        "/v1/ekyc/sessions",
        Some(&key),
        Some(&json!({"order_id": kyc_order.json["id"], "return_url": "https://r.example/"})),
    );
    assert_eq!(
        session.json["code"], "subject_restricted",
        "{:?}",
        session.json
    );
    // Other subjects and orders without one are not held back.
    order(
        &gw,
        &key,
        json!({"product_id": PRODUCT, "subject_ref": "someone-else"}),
    );
    order(&gw, &key, json!({"product_id": PRODUCT}));
    let export = subject_call(&gw, &key, "GET", "held-back", "export");
    assert!(export.json["restricted_since_ms"].as_u64().is_some());

    let lifted = subject_call(&gw, &key, "POST", "held-back", "unrestrict");
    assert_eq!(lifted.json["restricted"], false);
    let allowed = order(
        &gw,
        &key,
        json!({"product_id": PRODUCT, "subject_ref": "held-back"}),
    );
    assert_eq!(allowed.json["status"], "fulfilled");
    let session = gw.call(
        "POST",
        "/v1/ekyc/sessions",
        Some(&key),
        Some(&json!({"order_id": kyc_order.json["id"], "return_url": "https://r.example/"})),
    );
    assert_eq!(session.status, 201, "{:?}", session.json);
}

#[test]
fn p11_export_rectify_and_object_act_on_every_record_of_the_subject() {
    let gw = GatewayBuilder::new(BIN).start();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let first = order(
        &gw,
        &key,
        json!({"product_id": PRODUCT, "subject_ref": "old-name", "metadata": {"tier": "gold"}}),
    );
    let kyc = order(
        &gw,
        &key,
        json!({"product_id": "sandbox:SBX-CN-3GB-15D", "subject_ref": "old-name"}),
    );
    consent(&gw, &key, "old-name", "ekyc", "granted");
    consent(&gw, &key, "old-name", "marketing", "granted");

    // Export: one document with orders, eSIMs, eKYC status and consents.
    let export = subject_call(&gw, &key, "GET", "old-name", "export");
    assert_eq!(export.status, 200, "{:?}", export.json);
    assert_eq!(export.json["format"], "simgate.subject-export.v1");
    let orders = export.json["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().any(|o| o["esims"][0]["iccid"].is_string()));
    assert!(orders.iter().any(|o| o["status"] == "awaiting_kyc"));
    assert_eq!(export.json["consents"].as_array().unwrap().len(), 2);

    // Rectify metadata, then the reference itself.
    let r = gw.call(
        "POST",
        "/v1/subjects/old-name/rectify",
        Some(&key),
        Some(&json!({"metadata": {"tier": "silver"}})),
    );
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["orders_changed"], 2);
    let read = gw.call(
        "GET",
        &format!("/v1/orders/{}", first.json["id"].as_str().unwrap()),
        Some(&key),
        None,
    );
    assert_eq!(read.json["metadata"]["tier"], "silver");
    let r = gw.call(
        "POST",
        "/v1/subjects/old-name/rectify",
        Some(&key),
        Some(&json!({"subject_ref": "new name/ü"})),
    );
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["consents_written"], 2);
    let renamed = subject_call(&gw, &key, "GET", "new%20name%2F%C3%BC", "export");
    assert_eq!(
        renamed.json["subject_ref"], "new name/ü",
        "{:?}",
        renamed.json
    );
    assert_eq!(renamed.json["orders"].as_array().unwrap().len(), 2);
    assert_eq!(renamed.json["orders"][0]["subject_ref"], "new name/ü");
    assert_eq!(renamed.json["consents"].as_array().unwrap().len(), 2);
    let old = subject_call(&gw, &key, "GET", "old-name", "export");
    assert!(
        old.json["orders"].as_array().unwrap().is_empty(),
        "{:?}",
        old.json
    );

    // Object: marketing is withdrawn, eKYC (needed by the order) is not; twice is once.
    let r = subject_call(&gw, &key, "POST", "new%20name%2F%C3%BC", "object");
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["consents_written"], 1);
    let r = subject_call(&gw, &key, "POST", "new%20name%2F%C3%BC", "object");
    assert_eq!(r.json["consents_written"], 0);
    let consents = subject_call(&gw, &key, "GET", "new%20name%2F%C3%BC", "consents");
    let state = |purpose: &str| {
        consents.json["purposes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["purpose"] == purpose)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state("marketing"), "withdrawn");
    assert_eq!(state("ekyc"), "granted");
    let _ = kyc;
}

#[test]
fn a_reseller_acts_only_on_its_own_subjects() {
    let gw = GatewayBuilder::new(BIN).start();
    let (_, a) = gw.new_reseller(0, Some(100_000));
    let (_, b) = gw.new_reseller(0, Some(100_000));
    order(
        &gw,
        &a,
        json!({"product_id": PRODUCT, "subject_ref": "same-ref", "metadata": {"who": "a"}}),
    );
    // B's subject of the same name is another person: erasing it leaves A's intact.
    let r = subject_call(&gw, &b, "POST", "same-ref", "erase");
    assert_eq!(r.status, 200);
    assert_eq!(r.json["erased_now"], false, "B has no such subject");
    let export = subject_call(&gw, &a, "GET", "same-ref", "export");
    assert_eq!(export.json["orders"][0]["metadata"]["who"], "a");
    assert!(
        subject_call(&gw, &b, "GET", "same-ref", "export").json["orders"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Admin keys act for no reseller; bad references are the client's mistake.
    assert_eq!(
        subject_call(&gw, &gw.admin_key, "GET", "same-ref", "export").status,
        403
    );
    let long = "x".repeat(200);
    assert_eq!(subject_call(&gw, &a, "POST", &long, "erase").status, 422);
}

#[test]
fn p10_the_api_request_log_keeps_route_templates_and_networks_never_paths_or_bodies() {
    let gw = GatewayBuilder::new(BIN).start();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let subject = format!("LOGGED-NOWHERE-{}", unique_key());
    order(
        &gw,
        &key,
        json!({"product_id": PRODUCT, "subject_ref": subject, "metadata": {"n": subject}}),
    );
    subject_call(&gw, &key, "GET", &subject, "export");
    gw.call(
        "GET",
        "/v1/orders?status=fulfilled&limit=3",
        Some(&key),
        None,
    );
    let key_id = gw.call("GET", "/v1/admin/resellers", Some(&gw.admin_key), None);
    assert_eq!(key_id.status, 200);
    // Records are written in batches off the request path: wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let log = loop {
        let r = gw.call(
            "GET",
            "/v1/admin/requests?limit=100",
            Some(&gw.admin_key),
            None,
        );
        assert_eq!(r.status, 200, "{:?}", r.json);
        let routes: Vec<String> = r.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["route"].as_str().unwrap().to_string())
            .collect();
        if routes
            .iter()
            .any(|r| r == "/v1/subjects/{subject_ref}/export")
            && routes.iter().any(|r| r == "/v1/orders")
        {
            break r.json;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not logged: {routes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = log.to_string();
    assert!(
        !text.contains(&subject),
        "a subject reached the request log: {text}"
    );
    assert!(
        !text.contains("fulfilled"),
        "a query value reached the request log"
    );
    let export = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["route"] == "/v1/subjects/{subject_ref}/export")
        .unwrap();
    assert_eq!(export["method"], "GET");
    assert_eq!(export["status"], 200);
    assert_eq!(export["client"], "127.0.0.0/24");
    assert!(export["key_id"].as_str().unwrap().starts_with("key_"));
    assert!(export["latency_us"].as_u64().is_some());
    // Only administrators read it.
    assert_eq!(
        gw.call("GET", "/v1/admin/requests", Some(&key), None)
            .status,
        404
    );
}

#[test]
fn p10_a_closed_account_stops_at_once_and_is_refused_while_orders_are_open() {
    let gw = GatewayBuilder::new(BIN).start();
    let (id, key) = gw.new_reseller(0, Some(100_000));
    // An order waiting for eKYC is open: the account cannot close under it.
    let waiting = order(
        &gw,
        &key,
        json!({"product_id": "sandbox:SBX-CN-3GB-15D", "subject_ref": "s"}),
    );
    assert_eq!(waiting.json["status"], "awaiting_kyc");
    let close = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{id}/close"),
        Some(&gw.admin_key),
        None,
    );
    assert_eq!(close.status, 409, "{:?}", close.json);
    assert_eq!(close.json["code"], "reseller_has_open_orders");

    let (id, key) = gw.new_reseller(0, Some(100_000));
    order(&gw, &key, json!({"product_id": PRODUCT}));
    let close = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{id}/close"),
        Some(&gw.admin_key),
        None,
    );
    assert_eq!(close.status, 200, "{:?}", close.json);
    assert!(close.json["closed_at_ms"].as_u64().is_some());
    assert_eq!(gw.call("GET", "/v1/balance", Some(&key), None).status, 401);
    // Resellers cannot close accounts.
    let (other, other_key) = gw.new_reseller(0, None);
    let r = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{other}/close"),
        Some(&other_key),
        None,
    );
    assert_eq!(r.status, 404);
}

/// Found by the schemathesis run (tests/fuzz): a subject erased and then named on a new
/// order gets a new data key, under which the erased orders' sealed fields do not open;
/// those orders must read as erased, not fail with a 503.
#[test]
fn an_erased_subject_that_orders_again_leaves_its_erased_orders_readable() {
    let gw = GatewayBuilder::new(BIN).start();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let subject = format!("AGAIN-{}", unique_key());
    let body = json!({"product_id": PRODUCT, "subject_ref": subject, "metadata": {"n": 1}});
    let first = order(&gw, &key, body.clone());
    let first_id = first.json["id"].as_str().unwrap();
    assert_eq!(
        subject_call(&gw, &key, "POST", &subject, "erase").status,
        200
    );
    let second = order(&gw, &key, body);

    let erased = gw.call("GET", &format!("/v1/orders/{first_id}"), Some(&key), None);
    assert_eq!(erased.status, 200, "{:?}", erased.json);
    assert_eq!(erased.json["subject_ref"], Value::Null);
    assert_eq!(erased.json["metadata"], Value::Null);
    let list = gw.call("GET", "/v1/orders", Some(&key), None);
    assert_eq!(list.status, 200, "{:?}", list.json);
    let export = subject_call(&gw, &key, "GET", &subject, "export");
    assert_eq!(export.status, 200, "{:?}", export.json);
    // The new order is the subject's, with its fields.
    let again = gw.call(
        "GET",
        &format!("/v1/orders/{}", second.json["id"].as_str().unwrap()),
        Some(&key),
        None,
    );
    assert_eq!(again.json["subject_ref"], subject.as_str());
}
