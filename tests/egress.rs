//! Egress: a granted host is reached with the secret filled in by the host, an ungranted
//! host is denied, a granted name resolving to a private address is denied unless the
//! operator allows it, and the plugin never sees the secret value.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use simgate_test_support::{GatewayBuilder, Value, assert_nowhere, json};

const SECRET: &str = "s3cr3t-probe-token-7f1c";

/// A loopback HTTP server that records each request's Authorization header and answers
/// what `answer` makes of it (a whole HTTP response). Serves `n` requests, then stops.
fn auth_server(n: usize, answer: fn(&str) -> Vec<u8>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = line[line.len() - v.len()..].trim().to_string();
                }
            }
            record.lock().unwrap().push(auth.clone());
            let _ = stream.write_all(&answer(&auth));
        }
    });
    (port, seen)
}

/// Records each request's Authorization header and answers `pong`.
fn recording_server(n: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    auth_server(n, |_| {
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong".to_vec()
    })
}

fn grants(port: u16, allow_private: bool) -> String {
    format!(
        r#"
[plugins.egress]
outbound = ["http://127.0.0.1:*"]
secrets = ["PROBE_TOKEN"]
secret_hosts = {{ PROBE_TOKEN = ["http://127.0.0.1:*"] }}
allow_private_addresses = {allow_private}
config = {{ target_url = "http://127.0.0.1:{port}/probe", forbidden_url = "http://localhost:{port}/other" }}
"#
    )
}

fn report(order: &Value) -> Value {
    assert_eq!(order["failure"]["code"], "supplier_rejected", "{order:?}");
    serde_json::from_str(order["failure"]["message"].as_str().unwrap()).unwrap()
}

#[test]
fn a_granted_host_is_reached_with_the_secret_filled_in_by_the_host() {
    let (port, seen) = recording_server(1);
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "egress"])
        .grants(&grants(port, true))
        .secrets(&format!("[egress]\nPROBE_TOKEN = \"{SECRET}\"\n"))
        .start();
    let order = gw.order(&json!({"product_id": "egress:egress-1"}));
    assert_eq!(order.status, 201, "{:?}", order.json);
    let report = report(&order.json);
    assert_eq!(report["status"], 200);
    assert_eq!(report["body"], "pong");
    // The server got the secret; the plugin only ever held the placeholder.
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [format!("Bearer {SECRET}")]
    );
    assert_eq!(report["sent_authorization"], "Bearer ${secret:PROBE_TOKEN}");
    assert!(!String::from_utf8_lossy(&order.bytes).contains(SECRET));
}

#[test]
fn an_ungranted_host_is_denied_and_reported_as_egress_denied() {
    let (port, seen) = recording_server(1);
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "egress"])
        .grants(&grants(port, true))
        .secrets(&format!("[egress]\nPROBE_TOKEN = \"{SECRET}\"\n"))
        .start();
    let order = gw.order(&json!({"product_id": "egress:egress-forbidden"}));
    assert_eq!(order.status, 201, "{:?}", order.json);
    assert_eq!(
        order.json["failure"]["code"], "plugin_egress_denied",
        "{:?}",
        order.json
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the server"
    );
}

#[test]
fn a_granted_rule_resolving_to_loopback_is_denied_without_the_private_address_grant() {
    let (port, seen) = recording_server(1);
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "egress"])
        .grants(&grants(port, false))
        .secrets(&format!("[egress]\nPROBE_TOKEN = \"{SECRET}\"\n"))
        .start();
    let order = gw.order(&json!({"product_id": "egress:egress-1"}));
    assert_eq!(
        order.json["failure"]["code"], "plugin_egress_denied",
        "{:?}",
        order.json
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn an_ungranted_secret_is_never_filled_in() {
    let (port, seen) = recording_server(1);
    // The grant omits PROBE_TOKEN: the placeholder cannot be resolved, so the request is refused.
    let grants = grants(port, true).replace("secrets = [\"PROBE_TOKEN\"]", "secrets = []");
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "egress"])
        .grants(&grants)
        .secrets(&format!("[egress]\nPROBE_TOKEN = \"{SECRET}\"\n"))
        .start();
    let order = gw.order(&json!({"product_id": "egress:egress-1"}));
    assert_eq!(
        order.json["failure"]["code"], "plugin_egress_denied",
        "{:?}",
        order.json
    );
    assert!(seen.lock().unwrap().is_empty());
}

/// Reflects each request's `authorization` header back: in its body (as sent, base64
/// and hex) and in a response header. Records what it saw.
fn reflecting_server(n: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    auth_server(n, |auth| {
        use base64::Engine as _;
        let body = format!(
            "you sent {auth} | {} | {}",
            base64::engine::general_purpose::STANDARD.encode(auth),
            hex::encode(auth)
        );
        format!(
            "HTTP/1.1 200 OK\r\nx-echo: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

#[test]
fn a_secret_reaches_only_its_bound_host_and_never_comes_back_to_the_plugin_the_reseller_or_the_log()
{
    let (bound, bound_saw) = reflecting_server(1);
    let (other, other_saw) = reflecting_server(1);
    let grants = format!(
        r#"
[plugins.egress]
outbound = ["http://127.0.0.1:*"]
secrets = ["PROBE_TOKEN"]
secret_hosts = {{ PROBE_TOKEN = ["http://127.0.0.1:{bound}"] }}
allow_private_addresses = true
config = {{ target_url = "http://127.0.0.1:{bound}/probe", forbidden_url = "http://127.0.0.1:{other}/other" }}
"#
    );
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "egress"])
        .grants(&grants)
        .secrets(&format!("[egress]\nPROBE_TOKEN = \"{SECRET}\"\n"))
        .env("SIMGATE_LOG", "debug")
        .capture_log()
        .start();

    // The bound host gets the secret and reflects it; the plugin reads it scrubbed.
    let order = gw.order(&json!({"product_id": "egress:egress-1"}));
    assert_eq!(
        bound_saw.lock().unwrap().as_slice(),
        [format!("Bearer {SECRET}")]
    );
    let report = report(&order.json);
    assert_eq!(report["status"], 200);
    let body = report["body"].as_str().unwrap();
    assert_eq!(body.matches("[REDACTED]").count(), 3, "{body}");

    // Another granted host, not bound to the secret: the request is refused before it
    // leaves, so that host never sees the value.
    let refused = gw.order(&json!({"product_id": "egress:egress-forbidden"}));
    assert_eq!(refused.json["failure"]["code"], "plugin_egress_denied");
    assert!(
        other_saw.lock().unwrap().is_empty(),
        "the unbound host was reached"
    );
    let _ = other;

    // Nothing the reseller reads, and no log line, holds the value in any common form.
    let orders = gw.get("/v1/orders");
    let log = gw.log();
    assert_nowhere(
        SECRET,
        &[
            ("order", order.text()),
            ("refused order", refused.text()),
            ("order list", orders.text()),
            ("log", log.clone()),
        ],
    );
    assert!(
        log.contains("not bound"),
        "the denial is logged for the operator"
    );
}
