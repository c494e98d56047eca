//! Hostile plugins against the real gateway: a plugin written by an attacker may return
//! anything its contract allows. Each test gives the `hostile` test plugin one attack and
//! proves what the host does about it, through the HTTP API.

use simgate_test_support::{Gateway, GatewayBuilder, Value, json};

/// The ICCID the `hostile` plugin hands to every `hostile-fixed` order.
const FIXED_ICCID: &str = "8999100000000000006";

fn grants(catalog: &str) -> String {
    format!(
        r#"
[plugins.hostile]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
config = {{ catalog = "{catalog}" }}
"#
    )
}

fn hostile(catalog: &str) -> Gateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "hostile"])
        .grants(&grants(catalog))
        .capture_log()
        .start()
}

fn order_as(gw: &Gateway, key: &str, body: Value) -> Value {
    let r = gw.post_idem_as(
        key,
        "/v1/orders",
        &body,
        &simgate_test_support::unique_key(),
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
    r.json
}

/// A metric's value from `/metrics` (a sample without labels).
fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw.call("GET", "/metrics", Some(&gw.admin_key), None);
    String::from_utf8_lossy(&text.bytes)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[test]
fn a_plugin_cannot_hand_one_resellers_esim_to_another() {
    let gw = hostile("");
    // Reseller A buys first and gets the eSIM.
    let a = gw.demo_key.clone();
    let a_order = order_as(&gw, &a, json!({"product_id": "hostile:hostile-fixed"}));
    assert_eq!(a_order["status"], "fulfilled", "{a_order:?}");
    assert_eq!(a_order["esims"][0]["iccid"], FIXED_ICCID);
    let a_esim = gw.call("GET", &format!("/v1/esims/{FIXED_ICCID}"), Some(&a), None);
    assert_eq!(a_esim.status, 200);

    // Reseller B's order gets the same ICCID from the plugin: refused, hold released.
    let (_, b) = gw.new_reseller(0, Some(10_000));
    let b_order = order_as(&gw, &b, json!({"product_id": "hostile:hostile-fixed"}));
    assert_eq!(b_order["status"], "failed", "{b_order:?}");
    assert_eq!(b_order["failure"]["code"], "plugin_bad_output");
    assert_eq!(b_order["esims"], json!([]));
    assert!(
        !b_order
            .to_string()
            .contains(a_order["id"].as_str().unwrap())
    );
    assert_eq!(
        gw.balance_of(&b),
        (10_000, 0),
        "B paid nothing and holds nothing"
    );
    let b_tx = gw.call("GET", "/v1/balance/transactions", Some(&b), None);
    let kinds: Vec<&str> = b_tx.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["release", "hold", "credit"]);

    // A's eSIM and order are exactly as they were; B cannot see or touch the eSIM.
    let a_esim_after = gw.call("GET", &format!("/v1/esims/{FIXED_ICCID}"), Some(&a), None);
    assert_eq!(a_esim_after.json, a_esim.json);
    let a_order_after = gw.call(
        "GET",
        &format!("/v1/orders/{}", a_order["id"].as_str().unwrap()),
        Some(&a),
        None,
    );
    assert_eq!(a_order_after.json, a_order);
    for path in ["", "/usage", "/qr"] {
        let r = gw.call(
            "GET",
            &format!("/v1/esims/{FIXED_ICCID}{path}"),
            Some(&b),
            None,
        );
        assert_eq!(r.status, 404, "B reads {path}: {:?}", r.json);
    }

    // The operator is told.
    assert_eq!(metric(&gw, "simgate_iccid_conflicts_total"), 1.0);
    let log = gw.log();
    assert!(
        log.contains("belongs to another order") && log.contains(FIXED_ICCID),
        "{log}"
    );
}

#[test]
fn an_iccid_delivered_twice_in_one_order_is_refused_and_charged_nothing() {
    let gw = hostile("");
    let key = gw.demo_key.clone();
    let before = gw.balance_of(&key);
    let order = order_as(
        &gw,
        &key,
        json!({"product_id": "hostile:hostile-twice", "quantity": 2}),
    );
    assert_eq!(order["status"], "failed", "{order:?}");
    assert_eq!(order["failure"]["code"], "plugin_bad_output");
    assert!(
        order["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );
    assert_eq!(gw.balance_of(&key), before);
}

#[test]
fn a_plugin_that_clones_http_fields_without_end_is_stopped_and_host_memory_stays_bounded() {
    let gw = hostile("");
    let key = gw.demo_key.clone();
    // Warm up: the first call compiles nothing new but allocates the runtime's pools.
    let warm = order_as(&gw, &key, json!({"product_id": "hostile:hostile-fixed"}));
    assert_eq!(warm["status"], "fulfilled");
    let before = gw.rss_bytes();
    const CALLS: u64 = 4;
    for _ in 0..CALLS {
        let calls = plugin_calls(&gw, "hostile");
        let order = order_as(&gw, &key, json!({"product_id": "hostile:hostile-fields"}));
        assert_eq!(order["status"], "failed", "{order:?}");
        assert_eq!(order["failure"]["code"], "plugin_host_limit");
        assert_eq!(
            plugin_calls(&gw, "hostile"),
            calls + 1,
            "a host-limit fault is not retried"
        );
    }
    let grown = gw.rss_bytes().saturating_sub(before);
    eprintln!(
        "gateway RSS {} KiB before, grew by {} KiB over {CALLS} fields-cloning calls",
        before / 1024,
        grown / 1024
    );
    // Unbounded, each call grew the gateway by hundreds of MiB.
    assert!(
        grown < CALLS * 8 * 1024 * 1024,
        "the gateway grew by {} MiB over {CALLS} calls",
        grown / (1024 * 1024)
    );
}

#[test]
fn a_plugins_huge_values_are_quoted_truncated_and_bad_products_are_left_out_alone() {
    let gw = hostile("huge-sku");
    let key = gw.demo_key.clone();
    for _ in 0..5 {
        let products = gw.get("/v1/products?country=US");
        assert_eq!(products.status, 200);
        let ids: Vec<&str> = products.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .filter(|id| id.starts_with("hostile:"))
            .collect();
        // The good products serve; the one with currency ZZZ, the negative price and the
        // 8 MB SKU are left out.
        assert_eq!(
            ids,
            [
                "hostile:hostile-debug",
                "hostile:hostile-fields",
                "hostile:hostile-fixed",
                "hostile:hostile-forge",
                "hostile:hostile-long-iccid",
                "hostile:hostile-pending",
                "hostile:hostile-twice",
            ]
        );
    }
    let order = order_as(
        &gw,
        &key,
        json!({"product_id": "hostile:hostile-long-iccid"}),
    );
    assert_eq!(order["failure"]["code"], "plugin_bad_output");
    assert!(order.to_string().len() < 4096, "{order:?}");
    let log = gw.log();
    assert!(log.contains("catalog product refused"), "{log}");
    // 9 MB of catalog values, 3 MB of ICCID and 1 MB of reference reached the host; a
    // few KiB of log came out.
    eprintln!(
        "log after 5 catalog reads and 2 huge deliveries: {} bytes",
        log.len()
    );
    assert!(log.len() < 64 * 1024, "the log holds {} bytes", log.len());
}

/// Calls made into plugin `id` so far, from the admin status.
fn plugin_calls(gw: &Gateway, id: &str) -> u64 {
    let status = gw.call("GET", "/v1/admin/plugins", Some(&gw.admin_key), None);
    status.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap()["stats"]["calls"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_catalog_that_fails_is_asked_again_after_a_pause_not_on_every_read() {
    let gw = hostile("too-big");
    let calls = || plugin_calls(&gw, "hostile");
    let _ = gw.get("/v1/products");
    let first = calls();
    for _ in 0..20 {
        let products = gw.get("/v1/products");
        assert_eq!(products.status, 200);
        assert!(!products.bytes.windows(8).any(|w| w == b"hostile:"));
    }
    assert_eq!(calls(), first, "20 reads asked the failing plugin again");
}

#[test]
fn plugins_get_error_codes_never_the_hosts_error_chain_or_backtrace() {
    use std::io::{Read, Write};
    // A loopback server answering 4 KiB, over the gateway's 1 KiB egress cap.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = "b".repeat(4096);
            let _ = stream.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-length: 4096\r\n\r\n{body}").as_bytes(),
            );
        }
    });
    let grants = format!(
        "{}\n[plugins.hostile.config]\ntarget_url = \"http://127.0.0.1:{port}/big\"\n",
        grants("").replace("config = { catalog = \"\" }\n", "")
    );
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "hostile"])
        .grants(&grants)
        .config("[plugin_limits]\nmax_egress_response_bytes = 1024\n")
        .env("RUST_BACKTRACE", "1")
        .start();
    let order = order_as(
        &gw,
        &gw.demo_key.clone(),
        json!({"product_id": "hostile:hostile-debug"}),
    );
    let message = order["failure"]["message"].as_str().unwrap();
    assert_eq!(order["failure"]["code"], "supplier_rejected", "{order:?}");
    assert!(message.contains("HttpResponseBodySize"), "{message}");
    for leak in ["backtrace", ".rs:", "wasmtime", "simgate"] {
        assert!(!message.contains(leak), "{leak} in {message}");
    }
}

#[test]
fn addresses_that_are_not_public_in_disguise_are_refused_at_egress() {
    for url in [
        "http://198.18.0.1:9/x",
        "http://192.0.0.8:9/x",
        "http://[64:ff9b::a9fe:a9fe]:9/x",
        "http://[2002:7f00:1::1]:9/x",
        "http://[::ffff:169.254.169.254]:9/x",
        "http://[::127.0.0.1]:9/x",
    ] {
        let grants = r#"
[plugins.hostile]
outbound = ["http://127.0.0.1:*", "http://198.18.0.1:*", "http://192.0.0.8:*", "http://[64:ff9b::a9fe:a9fe]:*", "http://[2002:7f00:1::1]:*", "http://[::ffff:169.254.169.254]:*", "http://[::127.0.0.1]:*"]
"#;
        let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
            .plugins(&["sandbox", "hostile"])
            .grants(&format!(
                "{grants}[plugins.hostile.config]\ntarget_url = \"{url}\"\n"
            ))
            .capture_log()
            .start();
        let order = order_as(
            &gw,
            &gw.demo_key.clone(),
            json!({"product_id": "hostile:hostile-debug"}),
        );
        assert_eq!(
            order["failure"]["code"], "plugin_egress_denied",
            "{url}: {order:?}"
        );
        assert!(gw.log().contains("non-public address"), "{url}");
    }
}

#[test]
fn a_plugin_cannot_forge_log_lines() {
    let gw = hostile("");
    let order = order_as(
        &gw,
        &gw.demo_key.clone(),
        json!({"product_id": "hostile:hostile-forge"}),
    );
    let reason = order["failure"]["message"].as_str().unwrap();
    assert!(
        reason.contains("FORGED-REASON-LINE") && !reason.contains('\n'),
        "{reason}"
    );
    let log = gw.log();
    assert!(
        log.contains("FORGED-LOG-LINE"),
        "the plugin's line was logged: {log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with("2030-01-01"), "a forged line: {line}");
    }
    assert!(!log.contains('\u{1b}'), "a terminal escape reached the log");
}
