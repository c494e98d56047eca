//! Events over HTTP: every settled order raises its event in the same commit, and a
//! reseller reads its own events back (newest first, by type, page by page) to catch up
//! on what its webhook receiver missed, also after a restart.

use simgate_test_support::{Gateway, GatewayBuilder, Value, json, unique_key};

fn start(data: Option<tempfile::TempDir>) -> Gateway {
    let builder = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"));
    match data {
        Some(dir) => builder.data_dir(dir),
        None => builder,
    }
    .start()
}

fn events(gw: &Gateway, key: &str, query: &str) -> Value {
    let r = gw.call("GET", &format!("/v1/events{query}"), Some(key), None);
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json
}

fn types_and_orders(page: &Value) -> Vec<(String, String)> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["data"]["order_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn settled_orders_raise_events_their_reseller_alone_reads_back_even_after_a_restart() {
    let gw = start(None);
    let (_, key) = gw.new_reseller(0, Some(50_000));
    let order = |product: &str| {
        let body = json!({"product_id": product, "subject_ref": "cust-events-7731"});
        let r = gw.post_idem_as(&key, "/v1/orders", &body, &unique_key());
        assert_eq!(r.status, 201, "{:?}", r.json);
        r.json["id"].as_str().unwrap().to_string()
    };
    let fulfilled = order("sandbox:SBX-US-5GB-30D");
    let failed = order("sandbox:SBX-XX-OOS");
    let cancel = gw.raw(
        "POST",
        &format!("/v1/orders/{fulfilled}/cancel"),
        Some(&key),
        &[("idempotency-key", &unique_key())],
        None,
        None,
    );
    assert_eq!(cancel.status, 200, "{:?}", cancel.json);

    let all = events(&gw, &key, "");
    let expected = vec![
        ("order.cancelled".to_string(), fulfilled.clone()),
        ("order.failed".to_string(), failed.clone()),
        ("order.fulfilled".to_string(), fulfilled.clone()),
    ];
    assert_eq!(types_and_orders(&all), expected, "newest first");
    assert_eq!(all["has_more"], false);
    let failure = &all["data"][1]["data"];
    assert_eq!(
        (failure["status"].as_str(), failure["failure_code"].as_str()),
        (Some("failed"), Some("out_of_stock"))
    );
    let timestamp = all["data"][0]["timestamp"].as_str().unwrap();
    assert!(
        timestamp.len() >= 20 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
        "RFC 3339 in UTC: {timestamp}"
    );
    // Thin payloads: nothing personal travels in an event.
    assert!(!all.to_string().contains("cust-events-7731"));

    let fulfilled_only = events(&gw, &key, "?type=order.fulfilled");
    assert_eq!(types_and_orders(&fulfilled_only), expected[2..]);
    let first = events(&gw, &key, "?limit=1");
    assert_eq!(first["has_more"], true);
    let after = first["data"][0]["id"].as_str().unwrap();
    let rest = events(&gw, &key, &format!("?starting_after={after}"));
    assert_eq!(types_and_orders(&rest), expected[1..]);

    // Another reseller sees none of them; a bad filter is the client's mistake.
    let (_, other) = gw.new_reseller(0, None);
    assert_eq!(events(&gw, &other, "")["data"], json!([]));
    for query in [
        "?type=order.exploded",
        "?starting_after=ord_nope",
        "?colour=red",
    ] {
        let r = gw.call("GET", &format!("/v1/events{query}"), Some(&key), None);
        assert_eq!(r.status, 400, "{query}: {:?}", r.json);
        assert_eq!(r.json["code"], "invalid_query");
    }

    let (_, data) = gw.terminate();
    let gw = start(Some(data));
    assert_eq!(
        events(&gw, &key, "")["data"],
        all["data"],
        "kept across a restart"
    );
}

#[test]
fn an_order_left_waiting_for_its_supplier_raises_order_submitted_before_it_is_fulfilled() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .config("[orders]\npoll_interval_ms = 100\nsync_wait_ms = 0\n")
        .start();
    let (_, key) = gw.new_reseller(0, Some(50_000));
    let body = json!({"product_id": "sandbox:SBX-ASYNC-1GB-7D"});
    let r = gw.post_idem_as(&key, "/v1/orders", &body, &unique_key());
    assert_eq!(r.status, 201, "{:?}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let page = loop {
        let page = events(&gw, &key, "");
        if page["data"].as_array().unwrap().len() >= 2 || std::time::Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        types_and_orders(&page),
        [
            ("order.fulfilled".to_string(), id.clone()),
            ("order.submitted".to_string(), id)
        ]
    );
    assert_eq!(page["data"][1]["data"]["status"], "submitted");
}

#[test]
fn a_reseller_is_told_when_an_order_takes_its_balance_below_its_alert() {
    let gw = start(None);
    let (_, key) = gw.new_reseller(0, Some(10_000));
    let alert = |method: &str, path: &str, body: Option<Value>| {
        gw.call(method, path, Some(&key), body.as_ref())
    };
    let set = alert(
        "PUT",
        "/v1/balance/alerts/usd",
        Some(json!({"below_minor": 9_500})),
    );
    assert_eq!(set.status, 200, "{:?}", set.json);
    assert_eq!(set.json, json!({"currency": "USD", "below_minor": 9_500}));
    for (path, body, status) in [
        ("/v1/balance/alerts/XYZ", json!({"below_minor": 1}), 404),
        ("/v1/balance/alerts/USD", json!({"below_minor": 0}), 422),
        ("/v1/balance/alerts/USD", json!({"below": 5}), 400),
    ] {
        let r = alert("PUT", path, Some(body));
        assert_eq!(r.status, status, "{path}: {:?}", r.json);
    }
    let order = gw.post_idem_as(
        &key,
        "/v1/orders",
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
        &unique_key(),
    );
    assert_eq!(order.status, 201, "{:?}", order.json);
    let low = events(&gw, &key, "?type=balance.low");
    let data = &low["data"][0]["data"];
    assert_eq!(data["currency"], "USD");
    assert_eq!(data["threshold_minor"], 9_500);
    assert_eq!(
        data["available_minor"].as_i64().unwrap(),
        gw.balance_of(&key).0,
        "the balance the hold left"
    );
    assert_eq!(alert("DELETE", "/v1/balance/alerts/USD", None).status, 204);
}
