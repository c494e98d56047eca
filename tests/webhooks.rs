//! P8 (webhook signature verification for data integrity; webhook delivery logs), over
//! HTTP to a real receiver on loopback: every settled order's
//! event arrives signed per the Standard Webhooks spec (checked with the spec's own Python
//! library), failures are retried on the schedule, 410 disables an endpoint, a receiver
//! that was down catches up with the same ids, and endpoint URLs may not reach private
//! addresses unless the operator allows them.

use std::time::Duration;

use simgate_test_support::{
    Gateway, GatewayBuilder, Receiver, Value, json, unique_key, verify_with_standardwebhooks,
};

/// Deliveries to loopback allowed, the schedule shrunk to milliseconds.
const CONFIG: &str = "[orders]\npoll_interval_ms = 100\n\
    [webhooks]\nallow_private_addresses = true\ndispatch_ms = 50\nschedule_ms = [0, 150, 300]\n";

fn gateway(config: &str) -> Gateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .config(config)
        .start()
}

/// A reseller with credit and an endpoint at `url`; returns (key, endpoint, secret).
fn subscribed(gw: &Gateway, url: &str) -> (String, Value, String) {
    let (_, key) = gw.new_reseller(0, Some(100_000));
    let created = gw.call(
        "POST",
        "/v1/webhook-endpoints",
        Some(&key),
        Some(&json!({"url": url, "description": "ops"})),
    );
    assert_eq!(created.status, 201, "{:?}", created.json);
    let secret = created.json["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    (key, created.json, secret)
}

fn order(gw: &Gateway, key: &str, product: &str) -> String {
    let r = gw.post_idem_as(
        key,
        "/v1/orders",
        &json!({"product_id": product}),
        &unique_key(),
    );
    assert_eq!(r.status, 201, "{:?}", r.json);
    r.json["id"].as_str().unwrap().to_string()
}

fn attempts(gw: &Gateway, key: &str, endpoint: &str) -> Vec<Value> {
    let r = gw.call(
        "GET",
        &format!("/v1/webhook-endpoints/{endpoint}/attempts"),
        Some(key),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json["data"].as_array().unwrap().clone()
}

#[test]
fn p8_an_orders_events_arrive_signed_and_the_standard_webhooks_library_verifies_every_delivery() {
    let gw = gateway(CONFIG);
    let receiver = Receiver::start();
    let (key, _, secret) = subscribed(&gw, &receiver.url("/hooks"));
    let fulfilled = order(&gw, &key, "sandbox:SBX-US-5GB-30D");
    let failed = order(&gw, &key, "sandbox:SBX-XX-OOS");
    let got = receiver.wait_for(2, Duration::from_secs(20));
    let payloads = verify_with_standardwebhooks(&secret, &got);

    let mut seen: Vec<(String, String)> = payloads
        .iter()
        .map(|p| {
            (
                p["type"].as_str().unwrap().to_string(),
                p["data"]["order_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("order.failed".to_string(), failed),
            ("order.fulfilled".to_string(), fulfilled)
        ]
    );
    // The webhook-id is the event's id, as GET /v1/events shows it.
    let events = gw.call("GET", "/v1/events", Some(&key), None).json;
    let mut ids: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let mut delivered: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    delivered.sort();
    assert_eq!(ids, delivered);
    for r in &got {
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("webhook-signature").starts_with("v1,"));
        assert!(r.json()["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    // Operators see the deliveries in the metrics.
    let metrics = gw.call("GET", "/metrics", Some(&gw.admin_key), None);
    let text = String::from_utf8_lossy(&metrics.bytes);
    assert!(
        text.contains("simgate_webhook_attempts_total{outcome=\"delivered\"} 2"),
        "{text}"
    );
    assert!(text.contains("simgate_webhook_queue{stage=\"outbox\"} 0"));
    // A wrong secret is refused by the same library.
    let wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let refused = std::panic::catch_unwind(|| verify_with_standardwebhooks(wrong, &got[..1]));
    assert!(refused.is_err(), "a delivery verified under another secret");
}

#[test]
fn p8_every_attempt_is_logged_retries_follow_the_schedule_and_a_receiver_that_was_down_catches_up()
{
    let gw = gateway(CONFIG);
    let receiver = Receiver::start();
    receiver.answer(503);
    let (key, endpoint, secret) = subscribed(&gw, &receiver.url("/down"));
    let endpoint = endpoint["id"].as_str().unwrap();
    let id = order(&gw, &key, "sandbox:SBX-US-5GB-30D");
    // Three tries (0, 150 ms, 300 ms later), all refused; then the schedule is spent.
    let got = receiver.wait_for(3, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.received().len(), 3, "no try beyond the schedule");
    let webhook_id = got[0].header("webhook-id").to_string();
    assert!(got.iter().all(|r| r.header("webhook-id") == webhook_id));
    let log = attempts(&gw, &key, endpoint);
    let numbers: Vec<(i64, i64, &str)> = log
        .iter()
        .map(|a| {
            (
                a["number"].as_i64().unwrap(),
                a["status"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        numbers,
        [(3, 503, "failed"), (2, 503, "failed"), (1, 503, "failed")],
        "every attempt logged, newest first"
    );
    let at = |i: usize| log[i]["at_ms"].as_i64().unwrap();
    assert!(
        at(1) - at(2) >= 150 && at(0) - at(1) >= 300,
        "the schedule's waits: {log:?}"
    );
    let state = gw.call(
        "GET",
        &format!("/v1/webhook-endpoints/{endpoint}"),
        Some(&key),
        None,
    );
    assert!(state.json["failing_since_ms"].is_i64(), "{:?}", state.json);
    assert_eq!(state.json["enabled"], true);

    // Back up: the reseller catches up from /v1/events and redelivers, same id.
    receiver.answer(200);
    let events = gw.call("GET", "/v1/events?type=order.fulfilled", Some(&key), None);
    let event = &events.json["data"][0];
    assert_eq!(event["data"]["order_id"], id.as_str());
    assert_eq!(event["id"], webhook_id.as_str());
    let again = gw.call(
        "POST",
        &format!("/v1/events/{webhook_id}/redeliver"),
        Some(&key),
        None,
    );
    assert_eq!(again.status, 202, "{:?}", again.json);
    assert_eq!(again.json["scheduled"], 1);
    let got = receiver.wait_for(4, Duration::from_secs(20));
    assert_eq!(got[3].header("webhook-id"), webhook_id);
    verify_with_standardwebhooks(&secret, &got[3..]);
    let state = gw.call(
        "GET",
        &format!("/v1/webhook-endpoints/{endpoint}"),
        Some(&key),
        None,
    );
    assert_eq!(
        state.json["failing_since_ms"],
        Value::Null,
        "delivered again"
    );
}

#[test]
fn an_endpoint_that_answers_410_is_disabled_and_gets_nothing_more() {
    let gw = gateway(CONFIG);
    let receiver = Receiver::start();
    receiver.answer(410);
    let (key, endpoint, _) = subscribed(&gw, &receiver.url("/gone"));
    let endpoint = endpoint["id"].as_str().unwrap();
    order(&gw, &key, "sandbox:SBX-US-5GB-30D");
    receiver.wait_for(1, Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let state = loop {
        let s = gw.call(
            "GET",
            &format!("/v1/webhook-endpoints/{endpoint}"),
            Some(&key),
            None,
        );
        if s.json["enabled"] == false || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(state.json["enabled"], false, "{:?}", state.json);
    assert!(
        state.json["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    // The reseller is told, in its events.
    let told = gw.call(
        "GET",
        "/v1/events?type=webhook_endpoint.disabled",
        Some(&key),
        None,
    );
    assert_eq!(told.json["data"][0]["data"]["endpoint_id"], endpoint);
    let reason = told.json["data"][0]["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("410"), "{reason}");
    order(&gw, &key, "sandbox:SBX-US-5GB-30D");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(receiver.received().len(), 1, "nothing more after 410");

    // The reseller fixes its receiver and enables the endpoint again.
    receiver.answer(204);
    let path = format!("/v1/webhook-endpoints/{endpoint}");
    let enabled = gw.call("PATCH", &path, Some(&key), Some(&json!({"enabled": true})));
    assert_eq!(enabled.status, 200, "{:?}", enabled.json);
    assert_eq!(
        (&enabled.json["enabled"], &enabled.json["disabled_reason"]),
        (&json!(true), &Value::Null)
    );
    let bad = gw.call(
        "PATCH",
        &path,
        Some(&key),
        Some(&json!({"url": "https://user:pw@hooks.example.com/"})),
    );
    assert_eq!((bad.status, &bad.json["pointer"]), (422, &json!("/url")));
    order(&gw, &key, "sandbox:SBX-US-5GB-30D");
    receiver.wait_for(2, Duration::from_secs(20));
}

#[test]
fn endpoints_at_private_addresses_are_refused_unless_the_operator_allows_them() {
    let gw = gateway("[webhooks]\ndispatch_ms = 50\n");
    let (_, key) = gw.new_reseller(0, None);
    for url in [
        "http://127.0.0.1:9/hooks",
        "http://10.0.0.1/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://localhost:9/hooks",
        "https://user:pass@hooks.example.com/",
        "ftp://hooks.example.com/",
        "not a url",
    ] {
        let r = gw.call(
            "POST",
            "/v1/webhook-endpoints",
            Some(&key),
            Some(&json!({"url": url})),
        );
        assert_eq!(r.status, 422, "{url}: {:?}", r.json);
        assert_eq!(r.json["pointer"], "/url", "{url}");
    }
    let listed = gw.call("GET", "/v1/webhook-endpoints", Some(&key), None);
    assert_eq!(listed.json["data"], json!([]));
}

#[test]
fn endpoints_are_their_resellers_own_secrets_are_shown_once_and_rotation_signs_with_both() {
    let gw = gateway(CONFIG);
    let receiver = Receiver::start();
    let (key, endpoint, old_secret) = subscribed(&gw, &receiver.url("/mine"));
    let id = endpoint["id"].as_str().unwrap().to_string();
    let path = format!("/v1/webhook-endpoints/{id}");
    let listed = gw.call("GET", "/v1/webhook-endpoints", Some(&key), None);
    assert_eq!(listed.json["data"][0]["id"], id.as_str());
    assert!(
        !String::from_utf8_lossy(&listed.bytes).contains(&old_secret),
        "shown once"
    );
    let one = gw.call("GET", &path, Some(&key), None);
    assert!(!String::from_utf8_lossy(&one.bytes).contains(&old_secret));

    let (_, other) = gw.new_reseller(0, Some(10_000));
    for (method, p) in [
        ("GET", path.clone()),
        ("DELETE", path.clone()),
        ("POST", format!("{path}/rotate-secret")),
        ("POST", format!("{path}/test")),
        ("GET", format!("{path}/attempts")),
    ] {
        let r = gw.call(method, &p, Some(&other), None);
        assert_eq!(r.status, 404, "{method} {p}: {:?}", r.json);
    }
    let patch = gw.call(
        "PATCH",
        &path,
        Some(&other),
        Some(&json!({"url": receiver.url("/stolen")})),
    );
    assert_eq!(patch.status, 404, "{:?}", patch.json);

    let rotated = gw.call("POST", &format!("{path}/rotate-secret"), Some(&key), None);
    assert_eq!(rotated.status, 200, "{:?}", rotated.json);
    let new_secret = rotated.json["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, old_secret);
    let test = gw.call("POST", &format!("{path}/test"), Some(&key), None);
    assert_eq!(test.status, 200, "{:?}", test.json);
    assert_eq!(test.json["outcome"], "delivered");
    let got = receiver.wait_for(1, Duration::from_secs(5));
    assert_eq!(got[0].json()["type"], "webhook.test");
    let signatures = got[0].header("webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    // Either secret verifies during the grace period.
    verify_with_standardwebhooks(&new_secret, &got);
    verify_with_standardwebhooks(&old_secret, &got);

    let deleted = gw.call("DELETE", &path, Some(&key), None);
    assert_eq!(deleted.status, 204);
    assert_eq!(gw.call("GET", &path, Some(&key), None).status, 404);
    // Nor can another reseller have this reseller's events redelivered anywhere.
    order(&gw, &key, "sandbox:SBX-US-5GB-30D");
    let mine = gw.call("GET", "/v1/events", Some(&key), None).json;
    let event = mine["data"][0]["id"].as_str().unwrap();
    let r = gw.call(
        "POST",
        &format!("/v1/events/{event}/redeliver"),
        Some(&other),
        None,
    );
    assert_eq!(r.status, 404, "{:?}", r.json);
}

#[test]
fn no_event_is_lost_when_the_gateway_is_killed_between_the_state_change_and_the_delivery() {
    // The outbox is looked at when the gateway starts, then only once a minute: every
    // order below is killed before its event could leave, so only the restart delivers it.
    let config = "[webhooks]\nallow_private_addresses = true\ndispatch_ms = 60000\n\
        schedule_ms = [0, 100]\n";
    let receiver = Receiver::start();
    let mut gw = gateway(config);
    let (key, _, secret) = subscribed(&gw, &receiver.url("/crash"));
    let mut orders = Vec::new();
    for cycle in 0..20 {
        orders.push(order(&gw, &key, "sandbox:SBX-US-5GB-30D"));
        assert_eq!(
            receiver.received().len(),
            cycle,
            "not delivered before the kill"
        );
        let data = gw.kill();
        gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
            .config(config)
            .data_dir(data)
            .start();
        receiver.wait_for(cycle + 1, Duration::from_secs(20));
    }
    let got = receiver.received();
    let payloads = verify_with_standardwebhooks(&secret, &got);
    let mut delivered: Vec<&str> = payloads
        .iter()
        .map(|p| p["data"]["order_id"].as_str().unwrap())
        .collect();
    delivered.sort();
    delivered.dedup();
    orders.sort();
    assert_eq!(delivered, orders, "every order's event, at least once");
    // Each delivery carries the id its event has for good.
    let events = gw
        .call("GET", "/v1/events?limit=100", Some(&key), None)
        .json;
    let ids: std::collections::BTreeSet<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
    assert!(got.iter().all(|r| ids.contains(r.header("webhook-id"))));
}

#[test]
fn a_dead_endpoint_never_delays_another_resellers_deliveries() {
    // A receiver that takes connections and never answers: each delivery to it holds on
    // until the timeout, a minute: longer than the other delivery may take even on a
    // loaded machine, so the assertions below do not race the clock.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/dead", dead.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in dead.incoming().flatten() {
            held.push(stream);
        }
    });
    let config = "[webhooks]\nallow_private_addresses = true\ndispatch_ms = 50\n\
        timeout_ms = 60000\nschedule_ms = [0]\n";
    let gw = gateway(config);
    let (slow_key, slow_endpoint, _) = subscribed(&gw, &dead_url);
    // More deliveries than the job worker runs at once (64): without a per-endpoint
    // share they would take every slot.
    for _ in 0..80 {
        order(&gw, &slow_key, "sandbox:SBX-US-5GB-30D");
    }
    let receiver = Receiver::start();
    let (key, _, secret) = subscribed(&gw, &receiver.url("/alive"));
    order(&gw, &key, "sandbox:SBX-US-5GB-30D");
    let got = receiver.wait_for(1, Duration::from_secs(20));
    verify_with_standardwebhooks(&secret, &got);
    // Every delivery to the dead endpoint was still hanging when the other arrived.
    let slow = attempts(&gw, &slow_key, slow_endpoint["id"].as_str().unwrap());
    assert_eq!(
        slow.len(),
        0,
        "none of the dead endpoint's tries has ended yet"
    );
}

#[test]
fn hostile_endpoint_registrations_get_clear_problems_and_change_nothing() {
    let gw = gateway(CONFIG);
    let (_, key) = gw.new_reseller(0, None);
    let create = |body: Value| gw.call("POST", "/v1/webhook-endpoints", Some(&key), Some(&body));
    let long_url = format!("https://hooks.example.com/{}", "a".repeat(3_000));
    for (body, status, pointer) in [
        (json!({"url": long_url}), 422, "/url"),
        (
            json!({"url": "https://hooks.example.com/", "description": "d".repeat(300)}),
            422,
            "/description",
        ),
        (
            json!({"url": "https://hooks.example.com/", "event_types": []}),
            422,
            "/event_types",
        ),
        (
            json!({"url": "https://hooks.example.com/", "event_types": ["order.exploded"]}),
            400,
            "/event_types/0",
        ),
        (
            json!({"url": "https://hooks.example.com/", "secret": "mine"}),
            400,
            "",
        ),
    ] {
        let r = create(body.clone());
        assert_eq!(r.status, status, "{body}: {:?}", r.json);
        if !pointer.is_empty() {
            assert_eq!(r.json["pointer"], pointer, "{body}");
        }
    }
    assert_eq!(
        gw.call("GET", "/v1/webhook-endpoints", Some(&key), None)
            .json["data"],
        json!([])
    );
    // At most 16 endpoints a reseller.
    for n in 0..16 {
        let r = create(json!({"url": format!("http://127.0.0.1:9/{n}")}));
        assert_eq!(r.status, 201, "{n}: {:?}", r.json);
    }
    let r = create(json!({"url": "http://127.0.0.1:9/17"}));
    assert_eq!(
        (r.status, &r.json["code"]),
        (409, &json!("too_many_endpoints"))
    );
    // A read-only key reads but changes nothing.
    let (id, _) = gw.new_reseller(0, None);
    let readonly = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{id}/keys"),
        Some(&gw.admin_key),
        Some(&json!({"role": "reseller_readonly", "mode": "test"})),
    );
    let readonly = readonly.json["key"].as_str().unwrap();
    let r = gw.call(
        "POST",
        "/v1/webhook-endpoints",
        Some(readonly),
        Some(&json!({"url": "http://127.0.0.1:9/ro"})),
    );
    assert_eq!(r.status, 403, "{:?}", r.json);
}
