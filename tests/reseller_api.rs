//! The reseller API over HTTP: keys and roles, catalog, prepaid ledger, idempotent orders
//! through their life cycle, eSIM delivery, and clear problems for every client mistake.

use std::thread;

use simgate_test_support::{Gateway, GatewayBuilder, Resp, Value, json, on_postgres, unique_key};

fn gateway() -> Gateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .config("[orders]\npoll_interval_ms = 100\n")
        .start()
}

fn admin(gw: &Gateway, method: &str, path: &str, body: Option<&Value>) -> Resp {
    gw.call(method, path, Some(&gw.admin_key), body)
}

fn order_as(gw: &Gateway, key: &str, body: &Value, idem: &str) -> Resp {
    gw.raw(
        "POST",
        "/v1/orders",
        Some(key),
        &[("idempotency-key", idem)],
        Some(body.to_string().into_bytes()),
        Some("application/json"),
    )
}

fn transactions(gw: &Gateway, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/balance/transactions?limit=2&starting_after={a}"),
            None => "/v1/balance/transactions?limit=2".into(),
        };
        let page = gw.call("GET", &path, Some(key), None);
        assert_eq!(page.status, 200, "{:?}", page.json);
        let items = page.json["data"].as_array().unwrap().clone();
        after = items.last().map(|t| t["id"].as_str().unwrap().to_string());
        all.extend(items);
        if page.json["has_more"] != true {
            return all;
        }
    }
}

/// The ledger invariant, recomputed from the transaction list the API shows.
fn assert_ledger_invariant(gw: &Gateway, key: &str) {
    let (mut credits, mut captures, mut holds, mut releases, mut refunds) = (0, 0, 0, 0, 0);
    for t in transactions(gw, key) {
        let a = t["amount"].as_i64().unwrap();
        match t["type"].as_str().unwrap() {
            "credit" => credits += a,
            "capture" => captures += a,
            "hold" => holds += a,
            "release" => releases += a,
            "refund" => refunds += a,
            other => panic!("unknown entry {other}"),
        }
    }
    let open_holds = holds - captures - releases;
    let (available, held) = gw.balance_of(key);
    assert_eq!(held, open_holds, "held = open holds");
    assert_eq!(
        available,
        credits - captures - open_holds + refunds,
        "balance = credits - captures - open holds + refunds"
    );
}

#[test]
fn keys_roles_rotation_and_revocation() {
    let gw = gateway();
    let (id, key) = gw.new_reseller(0, Some(10_000));
    assert!(key.starts_with("sgk_test_"));
    assert_eq!(gw.call("GET", "/v1/products", Some(&key), None).status, 200);

    // A read-only key reads but cannot buy.
    let ro = admin(
        &gw,
        "POST",
        &format!("/v1/admin/resellers/{id}/keys"),
        Some(&json!({"role": "reseller_readonly"})),
    );
    let ro_key = ro.json["key"].as_str().unwrap();
    assert!(ro_key.starts_with("sgk_live_"));
    assert_eq!(
        gw.call("GET", "/v1/balance", Some(ro_key), None).status,
        200
    );
    let denied = order_as(
        &gw,
        ro_key,
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
        &unique_key(),
    );
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json["code"], "forbidden");

    // Resellers never reach admin routes (404, not 403).
    assert_eq!(
        gw.call("GET", "/v1/admin/resellers", Some(&key), None)
            .status,
        404
    );

    // Rotation: the new key works, the old one keeps working during the grace period.
    let rotated = gw.call("POST", "/v1/keys/rotate", Some(&key), None);
    assert_eq!(rotated.status, 201, "{:?}", rotated.json);
    let new_key = rotated.json["key"].as_str().unwrap();
    assert_eq!(
        gw.call("GET", "/v1/balance", Some(new_key), None).status,
        200
    );
    assert_eq!(gw.call("GET", "/v1/balance", Some(&key), None).status, 200);

    // Revocation takes effect at once.
    let key_id = rotated.json["id"].as_str().unwrap();
    assert_eq!(
        admin(
            &gw,
            "POST",
            &format!("/v1/admin/keys/{key_id}/revoke"),
            None
        )
        .status,
        200
    );
    let r = gw.call("GET", "/v1/balance", Some(new_key), None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json["code"], "unauthenticated");
}

#[test]
fn catalog_filters_and_prices_with_the_resellers_markup() {
    let gw = gateway();
    let (_, plain) = gw.new_reseller(0, None);
    let (_, marked) = gw.new_reseller(2500, None);
    let jp = gw.call("GET", "/v1/products?country=jp", Some(&plain), None);
    assert_eq!(jp.status, 200);
    let jp = jp.json["data"].as_array().unwrap();
    assert!(!jp.is_empty());
    assert!(
        jp.iter()
            .all(|p| p["countries"].as_array().unwrap().iter().any(|c| c == "JP"))
    );
    let europe = gw.call("GET", "/v1/products?region=europe", Some(&plain), None);
    assert!(
        europe.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["region"] == "europe")
    );
    let price = |key: &str, id: &str| -> i64 {
        let all = gw.call("GET", "/v1/products", Some(key), None);
        all.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()["price"]["minor"]
            .as_i64()
            .unwrap()
    };
    let id = "sandbox:SBX-JP-5GB-30D";
    let wholesale = price(&plain, id);
    assert_eq!(price(&marked, id), (wholesale * 12_500 + 9_999) / 10_000);
    let bad = gw.call("GET", "/v1/products?country=Japan", Some(&plain), None);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["code"], "invalid_query");
}

#[test]
fn an_order_the_balance_cannot_cover_is_refused_and_nothing_is_held() {
    let gw = gateway();
    let (_, key) = gw.new_reseller(0, Some(100));
    let r = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-JP-5GB-30D"}),
        &unique_key(),
    );
    assert_eq!(r.status, 402, "{:?}", r.json);
    assert_eq!(r.json["code"], "insufficient_balance");
    assert_eq!(gw.balance_of(&key), (100, 0));
    assert_eq!(transactions(&gw, &key).len(), 1, "only the credit");
    assert_eq!(
        gw.call("GET", "/v1/orders", Some(&key), None).json["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn idempotency_keys_replay_refuse_and_require() {
    let gw = gateway();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let body = json!({"product_id": "sandbox:SBX-US-5GB-30D", "quantity": 1});
    let first = order_as(&gw, &key, &body, "k-1");
    assert_eq!(first.status, 201, "{:?}", first.json);
    let again = order_as(&gw, &key, &body, "k-1");
    assert_eq!(again.status, 201);
    assert_eq!(again.json["id"], first.json["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-US-5GB-30D", "quantity": 2}),
        "k-1",
    );
    assert_eq!(other.status, 422);
    assert_eq!(other.json["code"], "idempotency_key_reused");
    let missing = gw.raw(
        "POST",
        "/v1/orders",
        Some(&key),
        &[],
        Some(body.to_string().into_bytes()),
        Some("application/json"),
    );
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json["code"], "idempotency_key_missing");
    // Keys are per reseller: another reseller's identical key is independent.
    let (_, key2) = gw.new_reseller(0, Some(100_000));
    let theirs = order_as(&gw, &key2, &body, "k-1");
    assert_eq!(theirs.status, 201);
    assert_ne!(theirs.json["id"], first.json["id"]);
}

#[test]
fn concurrent_requests_with_one_key_create_exactly_one_order_and_one_hold() {
    let gw = gateway();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let body = json!({"product_id": "sandbox:SBX-DE-10GB-30D", "quantity": 1});
    let responses: Vec<Resp> = thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| s.spawn(|| order_as(&gw, &key, &body, "same-key")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&Resp> = responses.iter().filter(|r| r.status == 201).collect();
    for r in &responses {
        assert!(
            r.status == 201 || (r.status == 409 && r.json["code"] == "idempotency_in_progress"),
            "{} {:?}",
            r.status,
            r.json
        );
    }
    assert!(!created.is_empty());
    let id = &created[0].json["id"];
    assert!(
        created.iter().all(|r| &r.json["id"] == id),
        "every success names the same order"
    );
    let orders = gw.call("GET", "/v1/orders", Some(&key), None);
    assert_eq!(orders.json["data"].as_array().unwrap().len(), 1);
    let holds = transactions(&gw, &key)
        .into_iter()
        .filter(|t| t["type"] == "hold")
        .count();
    assert_eq!(holds, 1);
    assert_ledger_invariant(&gw, &key);
}

#[test]
fn a_reseller_never_sees_another_resellers_records() {
    let gw = gateway();
    let (_, a) = gw.new_reseller(0, Some(100_000));
    let (_, b) = gw.new_reseller(0, Some(100_000));
    let order = order_as(
        &gw,
        &a,
        &json!({"product_id": "sandbox:SBX-FR-3GB-15D"}),
        &unique_key(),
    );
    assert_eq!(order.json["status"], "fulfilled", "{:?}", order.json);
    let id = order.json["id"].as_str().unwrap();
    let iccid = order.json["esims"][0]["iccid"].as_str().unwrap();
    for path in [
        format!("/v1/orders/{id}"),
        format!("/v1/esims/{iccid}"),
        format!("/v1/esims/{iccid}/qr"),
        format!("/v1/esims/{iccid}/usage"),
    ] {
        let r = gw.call("GET", &path, Some(&b), None);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json["code"], "not_found");
        assert_eq!(gw.call("GET", &path, Some(&a), None).status, 200, "{path}");
    }
    let cancel = gw.raw(
        "POST",
        &format!("/v1/orders/{id}/cancel"),
        Some(&b),
        &[("idempotency-key", "c")],
        None,
        None,
    );
    assert_eq!(cancel.status, 404);
    assert_eq!(
        gw.call("GET", "/v1/orders", Some(&b), None).json["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn an_order_runs_its_life_cycle_and_the_ledger_follows() {
    let gw = gateway();
    let (_, key) = gw.new_reseller(1000, Some(100_000));
    let order = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-EU-10GB-30D", "quantity": 2, "subject_ref": "cust-8841", "metadata": {"booking": "B-1"}}),
        &unique_key(),
    );
    assert_eq!(order.status, 201, "{:?}", order.json);
    assert_eq!(order.json["status"], "fulfilled");
    assert_eq!(order.json["subject_ref"], "cust-8841");
    let total = order.json["total"]["minor"].as_i64().unwrap();
    assert_eq!(
        total,
        order.json["unit_price"]["minor"].as_i64().unwrap() * 2
    );
    assert_eq!(gw.balance_of(&key), (100_000 - total, 0));
    let kinds: Vec<String> = transactions(&gw, &key)
        .iter()
        .map(|t| t["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["capture", "hold", "credit"], "newest first");

    // A failed order releases its hold.
    let oos = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-XX-OOS"}),
        &unique_key(),
    );
    assert_eq!(oos.json["status"], "failed");
    assert_eq!(gw.balance_of(&key), (100_000 - total, 0));

    // An async supplier order completes by polling.
    let pending = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-ASYNC-1GB-7D"}),
        &unique_key(),
    );
    assert_eq!(pending.status, 201);
    let id = pending.json["id"].as_str().unwrap();
    let done = gw.call("GET", &format!("/v1/orders/{id}"), Some(&key), None);
    assert_eq!(done.json["status"], "fulfilled", "{:?}", done.json);
    assert_eq!(done.json["esims"].as_array().unwrap().len(), 1);

    // Listing with status filter and cursor pagination.
    let fulfilled = gw.call(
        "GET",
        "/v1/orders?status=fulfilled&limit=1",
        Some(&key),
        None,
    );
    assert_eq!(fulfilled.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(fulfilled.json["has_more"], true);
    let last = fulfilled.json["data"][0]["id"].as_str().unwrap();
    let next = gw.call(
        "GET",
        &format!("/v1/orders?status=fulfilled&limit=1&starting_after={last}"),
        Some(&key),
        None,
    );
    assert_eq!(next.json["data"].as_array().unwrap().len(), 1);
    assert_ne!(next.json["data"][0]["id"], fulfilled.json["data"][0]["id"]);
    let failed = gw.call("GET", "/v1/orders?status=failed", Some(&key), None);
    assert_eq!(failed.json["data"].as_array().unwrap().len(), 1);
    assert_ledger_invariant(&gw, &key);
}

#[test]
fn cancel_refunds_a_never_installed_order_once() {
    let gw = gateway();
    let (_, key) = gw.new_reseller(0, Some(50_000));
    let order = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-GB-1GB-7D"}),
        &unique_key(),
    );
    let id = order.json["id"].as_str().unwrap();
    let total = order.json["total"]["minor"].as_i64().unwrap();
    assert_eq!(gw.balance_of(&key).0, 50_000 - total);
    let cancel = |idem: &str| {
        gw.raw(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(&key),
            &[("idempotency-key", idem)],
            None,
            None,
        )
    };
    let c = cancel("cancel-1");
    assert_eq!(c.status, 200, "{:?}", c.json);
    assert_eq!(c.json["status"], "cancelled");
    assert_eq!(gw.balance_of(&key), (50_000, 0), "refunded");
    assert_eq!(cancel("cancel-1").status, 200, "replayed");
    let twice = cancel("cancel-2");
    assert_eq!(twice.status, 409);
    assert_eq!(twice.json["code"], "order_not_cancellable");
    assert_eq!(gw.balance_of(&key), (50_000, 0), "refunded once");
    let refunds = transactions(&gw, &key)
        .into_iter()
        .filter(|t| t["type"] == "refund")
        .count();
    assert_eq!(refunds, 1);
    assert_ledger_invariant(&gw, &key);
}

#[test]
fn esims_are_delivered_with_qr_usage_and_top_ups() {
    let gw = gateway();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let order = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
        &unique_key(),
    );
    let esim = &order.json["esims"][0];
    let iccid = esim["iccid"].as_str().unwrap();
    let code = esim["activation_code"].as_str().unwrap();
    let view = gw.call("GET", &format!("/v1/esims/{iccid}"), Some(&key), None);
    assert_eq!(view.json["profile_state"], "released");
    assert_eq!(view.json["plan_state"], "ready");
    assert!(
        view.json["apple_install_link"]
            .as_str()
            .unwrap()
            .starts_with(
                "https://esimsetup.apple.com/esim_qrcode_provisioning?carddata=LPA%3A1%24"
            )
    );

    // The PNG decodes back to the activation code.
    let png = gw.call("GET", &format!("/v1/esims/{iccid}/qr"), Some(&key), None);
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert_eq!(decode_qr(&png.bytes), code);
    let svg = gw.call(
        "GET",
        &format!("/v1/esims/{iccid}/qr?format=svg"),
        Some(&key),
        None,
    );
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(String::from_utf8_lossy(&svg.bytes).contains("<svg"));

    let usage = gw.call("GET", &format!("/v1/esims/{iccid}/usage"), Some(&key), None);
    assert_eq!(usage.status, 200, "{:?}", usage.json);
    assert_eq!(usage.json["profile_state"], "released");
    assert!(usage.json["observed_at_ms"].as_u64().unwrap() > 1_700_000_000_000);

    let before = gw.balance_of(&key).0;
    let top_up = gw.post_idem_as(
        &key,
        &format!("/v1/esims/{iccid}/topups"),
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
        "topup-1",
    );
    assert_eq!(top_up.status, 201, "{:?}", top_up.json);
    assert_eq!(top_up.json["status"], "fulfilled");
    assert_eq!(top_up.json["kind"]["type"], "top_up");
    let price = top_up.json["total"]["minor"].as_i64().unwrap();
    assert_eq!(gw.balance_of(&key).0, before - price);
    let replay = gw.post_idem_as(
        &key,
        &format!("/v1/esims/{iccid}/topups"),
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
        "topup-1",
    );
    assert_eq!(replay.json["id"], top_up.json["id"]);
    assert_eq!(gw.balance_of(&key).0, before - price, "charged once");
    let not_top_up_able = gw.post_idem_as(
        &key,
        &format!("/v1/esims/{iccid}/topups"),
        &json!({"product_id": "sandbox:SBX-JP-UNL-7D"}),
        "topup-2",
    );
    assert_eq!(not_top_up_able.status, 422);
    assert_ledger_invariant(&gw, &key);
}

fn decode_qr(png_bytes: &[u8]) -> String {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1);
    grids[0].decode().unwrap().1
}

#[test]
fn client_mistakes_get_problem_codes_and_never_a_5xx() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .config(
            "[http]\nmax_body_bytes = 1024\nrate_limit_per_second = 1.0\nrate_limit_burst = 40.0\n",
        )
        .start();
    let key = gw.demo_key.clone();
    let post = |body: Vec<u8>, ct: Option<&str>| {
        gw.raw(
            "POST",
            "/v1/orders",
            Some(&key),
            &[("idempotency-key", &unique_key())],
            Some(body),
            ct,
        )
    };
    let cases: Vec<(Resp, u16, &str)> = vec![
        (
            post(b"{".to_vec(), Some("application/json")),
            400,
            "malformed_json",
        ),
        (
            post(b"{\"product_id\": 5}".to_vec(), Some("application/json")),
            400,
            "malformed_json",
        ),
        (
            post(
                b"{\"product_id\": \"x\", \"extra\": 1}".to_vec(),
                Some("application/json"),
            ),
            400,
            "malformed_json",
        ),
        (
            post(vec![b' '; 4096], Some("application/json")),
            413,
            "body_too_large",
        ),
        (
            post(b"{}".to_vec(), Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        (
            post(
                json!({"product_id": "sandbox:SBX-US-5GB-30D", "quantity": 0})
                    .to_string()
                    .into_bytes(),
                Some("application/json"),
            ),
            422,
            "invalid_field",
        ),
        (
            post(
                json!({"product_id": "no-colon"}).to_string().into_bytes(),
                Some("application/json"),
            ),
            422,
            "invalid_field",
        ),
        (
            post(
                json!({"product_id": "sandbox:SBX-US-5GB-30D", "subject_ref": "a\nb"})
                    .to_string()
                    .into_bytes(),
                Some("application/json"),
            ),
            422,
            "invalid_field",
        ),
        (
            gw.call("GET", "/v1/orders/ord_nope", Some(&key), None),
            404,
            "not_found",
        ),
        (
            gw.call("GET", "/v1/orders?limit=0", Some(&key), None),
            400,
            "invalid_query",
        ),
        (
            gw.call("GET", "/v1/orders?status=lost", Some(&key), None),
            400,
            "invalid_query",
        ),
        (
            gw.call("DELETE", "/v1/orders", Some(&key), None),
            405,
            "method_not_allowed",
        ),
        (
            gw.call("GET", "/v2/anything", Some(&key), None),
            404,
            "not_found",
        ),
        (
            gw.call("GET", "/v1/orders", None, None),
            401,
            "unauthenticated",
        ),
        (
            gw.call("GET", "/v1/orders", Some("Basic abc"), None),
            401,
            "unauthenticated",
        ),
    ];
    for (resp, status, code) in &cases {
        assert_eq!(resp.status, *status, "{code}: {:?}", resp.json);
        assert_eq!(resp.json["code"], *code, "{:?}", resp.json);
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
    }
    let pointer = &cases[1].0.json["pointer"];
    assert_eq!(pointer, "/product_id");

    // Over the per-key rate: 429 with Retry-After.
    let mut limited = None;
    for _ in 0..60 {
        let r = gw.call("GET", "/v1/balance", Some(&key), None);
        assert!(r.status < 500);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the rate limit is reached");
    assert_eq!(limited.json["code"], "rate_limited");
    assert!(limited.header("retry-after").is_some());
    // A POST over the rate gets the same problem (the server reads the capped body before
    // deciding, so the connection stays usable).
    let body =
        json!({"product_id": "sandbox:SBX-US-5GB-30D", "metadata": {"pad": "x".repeat(900)}});
    for _ in 0..5 {
        let r = gw.try_raw(
            "POST",
            "/v1/orders",
            Some(&key),
            &[("idempotency-key", &unique_key())],
            Some(body.to_string().into_bytes()),
            Some("application/json"),
        );
        let r = r.expect("a response, not a reset connection");
        assert_eq!(r.status, 429);
    }
}

#[test]
fn the_openapi_document_lists_every_route_and_health_endpoints_answer() {
    let gw = gateway();
    let spec = gw.call("GET", "/openapi.json", None, None);
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/orders", "post"),
        ("/v1/orders/{id}/cancel", "post"),
        ("/v1/esims/{iccid}/qr", "get"),
        ("/v1/balance/transactions", "get"),
        ("/v1/admin/resellers/{id}/credits", "post"),
    ] {
        assert!(
            spec.json["paths"][path][method].is_object(),
            "{method} {path}"
        );
    }
    assert_eq!(gw.call("GET", "/healthz", None, None).status, 200);
    assert_eq!(
        gw.call("GET", "/readyz", None, None).json["plugins_serving"],
        1
    );
    let r = gw.call("GET", "/v1/products", Some(&gw.demo_key), None);
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
}

#[test]
fn operators_manage_resellers_and_keys_from_the_cli() {
    if on_postgres("operators_manage_resellers_and_keys_from_the_cli") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_simgate");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let dir = GatewayBuilder::new(bin).start().kill();
    let d = dir.path().to_str().unwrap().to_string();
    let (ok, reseller, err) = run(&[
        "reseller",
        "create",
        "--data-dir",
        &d,
        "--name",
        "CLI Travel",
        "--markup-bps",
        "100",
    ]);
    assert!(ok, "{err}");
    assert!(reseller.starts_with("rsl_"));
    let (ok, _, err) = run(&[
        "reseller",
        "credit",
        "--data-dir",
        &d,
        "--reseller",
        &reseller,
        "--amount",
        "5000",
        "--mode",
        "test",
    ]);
    assert!(ok, "{err}");
    let (ok, key, err) = run(&[
        "keys",
        "create",
        "--data-dir",
        &d,
        "--reseller",
        &reseller,
        "--mode",
        "test",
    ]);
    assert!(ok, "{err}");
    let key_id = err
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_string();

    let gw = GatewayBuilder::new(bin).data_dir(dir).start();
    let b = gw.call("GET", "/v1/balance", Some(&key), None);
    assert_eq!(b.status, 200);
    assert_eq!(b.json["data"][0]["available"], 5000);
    // While the gateway runs, the offline commands refuse with a clear reason.
    let (ok, _, err) = run(&["keys", "revoke", "--data-dir", &d, &key_id]);
    assert!(!ok);
    assert!(err.contains("in use by a running gateway"), "{err}");

    let dir = gw.kill();
    let (ok, _, err) = run(&["keys", "revoke", "--data-dir", &d, &key_id]);
    assert!(ok, "{err}");
    let gw = GatewayBuilder::new(bin).data_dir(dir).start();
    assert_eq!(gw.call("GET", "/v1/balance", Some(&key), None).status, 401);
}

#[test]
fn a_product_that_needs_ekyc_is_accepted_with_its_price_held_and_waits_for_verification() {
    let gw = gateway();
    let (_, key) = gw.new_reseller(0, Some(10_000));
    let r = order_as(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-CN-3GB-15D", "subject_ref": "traveller"}),
        &unique_key(),
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "awaiting_kyc");
    assert!(r.json["ekyc"].is_null(), "no session until one is opened");
    let total = r.json["total"]["minor"].as_i64().unwrap();
    assert_eq!(gw.balance_of(&key), (10_000 - total, total));
}
