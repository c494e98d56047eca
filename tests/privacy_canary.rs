//! P3: suppliers get only the order-level data needed to provision. Canary strings planted
//! in everything a reseller can attach to an order (subject reference, metadata) and in the
//! reseller's own identity must never reach a plugin; the `canary` test plugin forwards
//! every input it receives to a recording server, as a supplier that logs everything would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use simgate_test_support::{GatewayBuilder, json, stored_under, unique_key};

/// Records the body of every request it receives; answers 204.
fn recording_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let record = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

#[test]
fn nothing_a_reseller_attaches_to_an_order_reaches_the_supplier() {
    let (port, bodies) = recording_server();
    let grants = format!(
        "[plugins.canary]\noutbound = [\"http://127.0.0.1:*\"]\nallow_private_addresses = true\nconfig = {{ report_url = \"http://127.0.0.1:{port}/log\" }}\n"
    );
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "canary"])
        .grants(&grants)
        .start();
    let tag = unique_key();
    let reseller_name = format!("CANARY-RESELLER-{tag}");
    let subject = format!("CANARY-SUBJECT-{tag}");
    let meta = format!("CANARY-META-{tag}");

    let r = gw.call(
        "POST",
        "/v1/admin/resellers",
        Some(&gw.admin_key),
        Some(&json!({"name": reseller_name})),
    );
    let reseller_id = r.json["id"].as_str().unwrap().to_string();
    let k = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{reseller_id}/keys"),
        Some(&gw.admin_key),
        // The harness marks every plugin a sandbox, which test keys order from.
        Some(&json!({"mode": "test"})),
    );
    let key = k.json["key"].as_str().unwrap().to_string();
    gw.credit(&reseller_id, &json!({"amount": 10_000}));

    let order = gw.post_idem_as(
        &key,
        "/v1/orders",
        &json!({"product_id": "canary:canary-1", "quantity": 2, "subject_ref": subject, "metadata": {"note": meta, "email": "canary@example.com"}}),
        &unique_key(),
    );
    assert_eq!(order.status, 201, "{:?}", order.json);
    assert_eq!(order.json["status"], "fulfilled", "{:?}", order.json);
    let order_id = order.json["id"].as_str().unwrap().to_string();
    let iccid = order.json["esims"][0]["iccid"]
        .as_str()
        .unwrap()
        .to_string();
    // The gateway keeps what the reseller attached...
    assert_eq!(order.json["subject_ref"], subject);
    // ...and a usage lookup reaches the plugin too.
    gw.call("GET", &format!("/v1/esims/{iccid}/usage"), Some(&key), None);

    let bodies = bodies.lock().unwrap().clone();
    assert!(
        bodies.len() >= 2,
        "the plugin reported its inputs: {bodies:?}"
    );
    let all = bodies.join("\n");
    // What the supplier needs is there: the opaque order reference, the SKU, the quantity.
    assert!(
        all.contains(&order_id) && all.contains("canary-1") && all.contains("quantity: 2"),
        "{all}"
    );
    assert!(all.contains(&iccid), "{all}");
    // Nothing else is.
    for canary in [
        reseller_name.as_str(),
        &subject,
        &meta,
        "canary@example.com",
        &reseller_id,
        &key,
    ] {
        assert!(
            !all.contains(canary),
            "{canary} reached the supplier: {all}"
        );
    }
}

#[test]
fn personal_fields_are_sealed_before_they_reach_any_record_the_ledger_included() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate")).start();
    let tag = unique_key();
    let subject = format!("SUBJECT-CANARY-{tag}");
    let meta = format!("META-CANARY-{tag}");
    let lone = format!("LONE-META-CANARY-{tag}");
    let key = gw.demo_key.clone();
    // Two orders for one subject, one without a subject, and a second subject.
    let mut ids = Vec::new();
    for body in [
        json!({"product_id": "sandbox:SBX-US-5GB-30D", "subject_ref": subject, "metadata": {"note": meta}}),
        json!({"product_id": "sandbox:SBX-US-5GB-30D", "subject_ref": subject}),
        json!({"product_id": "sandbox:SBX-US-5GB-30D", "metadata": {"note": lone}}),
        json!({"product_id": "sandbox:SBX-US-5GB-30D", "subject_ref": format!("{subject}-2")}),
    ] {
        let order = gw.post_idem_as(&key, "/v1/orders", &body, &unique_key());
        assert_eq!(order.json["status"], "fulfilled", "{:?}", order.json);
        ids.push(order.json["id"].as_str().unwrap().to_string());
    }
    // The reseller reads them back, opened...
    let first = gw.get(&format!("/v1/orders/{}", ids[0]));
    assert_eq!(first.json["subject_ref"], subject);
    assert_eq!(first.json["metadata"]["note"], meta);
    assert_eq!(
        gw.get(&format!("/v1/orders/{}", ids[2])).json["metadata"]["note"],
        lone
    );
    let (status, dir) = gw.terminate();
    assert!(status.success());
    // ...but no file of the data directory holds any of them in clear: not the orders,
    // not the ledger's commit records, not the idempotency records, not the logs of sled.
    let files = stored_under(dir.path());
    for canary in [&subject, &meta, &lone] {
        for (path, bytes) in &files {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} is in clear in {}",
                path.display()
            );
        }
    }
    // After a restart the fields still open.
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .data_dir(dir)
        .start();
    let again = gw.call("GET", &format!("/v1/orders/{}", ids[0]), Some(&key), None);
    assert_eq!(again.json["metadata"]["note"], meta);
    assert_eq!(again.json["subject_ref"], subject);
}
