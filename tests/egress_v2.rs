//! Egress under contract 0.2, probed by `egress-next` against a [`Reflector`] that echoes
//! every request: a `${secret:NAME}` in a request body reaches only the host the operator
//! bound the secret to and comes back scrubbed; an OAuth token goes only to the hosts its
//! client is bound to; and a 0.1 plugin keeps 0.1's rule (placeholders in headers only).

use simgate_test_support::{
    AiraloSim, Gateway, GatewayBuilder, Reflector, Value, assert_nowhere, json,
};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");
const SECRET: &str = "s3cr3t-body-token-2b7e";
const CLIENT_ID: &str = "probe-client-9d1c";
const CLIENT_SECRET: &str = "probe-client-secret-64fa";

/// The probe's report from an order's failure: its `rejected` reason is JSON.
fn report(order: &Value) -> Value {
    assert_eq!(order["failure"]["code"], "supplier_rejected", "{order:?}");
    serde_json::from_str(order["failure"]["message"].as_str().unwrap()).unwrap()
}

/// A gateway running the 0.2 probe under `grant` (the body of `[plugins.egress-next]`
/// and anything after it), its log captured at `debug`.
fn gateway(grant: &str) -> Gateway {
    GatewayBuilder::new(BIN)
        .plugins(&["egress-next"])
        .grants(&format!("[plugins.egress-next]\n{grant}"))
        .secrets(&format!(
            "[egress-next]\nPROBE_TOKEN = \"{SECRET}\"\nPROBE_CLIENT_ID = \"{CLIENT_ID}\"\n\
             PROBE_CLIENT_SECRET = \"{CLIENT_SECRET}\"\n"
        ))
        .env("SIMGATE_LOG", "debug")
        .capture_log()
        .start()
}

#[test]
fn a_secret_in_a_body_reaches_only_its_bound_host_and_comes_back_scrubbed() {
    let bound = Reflector::start();
    let other = Reflector::start();
    let gw = gateway(&format!(
        r#"outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["PROBE_TOKEN"]
secret_hosts = {{ PROBE_TOKEN = ["http://127.0.0.1:{}"] }}
config = {{ target_url = "{}", other_url = "{}" }}
"#,
        bound.port(),
        bound.url("/probe"),
        other.url("/probe"),
    ));

    // Bound: the host filled the body (and the header) in; the plugin read both back
    // scrubbed.
    let order = gw.order(&json!({"product_id": "egress-next:egress-next-1"}));
    assert_eq!(order.status, 201, "{:?}", order.json);
    let got = bound.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json(),
        json!({"probe": "egress-next", "token": SECRET})
    );
    assert_eq!(got[0].header("x-key"), SECRET);
    let report = report(&order.json);
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["echo_auth"], "[REDACTED]");
    assert_eq!(
        report["echo_body"],
        r#"{"probe":"egress-next","token":"[REDACTED]"}"#
    );

    // Granted as a destination but not bound to the secret: refused before it leaves.
    let refused = gw.order(&json!({"product_id": "egress-next:egress-next-other"}));
    assert_eq!(refused.status, 201, "{:?}", refused.json);
    assert_eq!(
        refused.json["failure"]["code"], "plugin_egress_denied",
        "{:?}",
        refused.json
    );
    assert!(other.received().is_empty(), "the unbound host was reached");

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
    assert!(log.contains("not bound"), "the denial is logged: {log}");
}

#[test]
fn an_oauth_token_goes_only_to_the_hosts_its_client_is_bound_to() {
    let sim = AiraloSim::start(CLIENT_ID, CLIENT_SECRET);
    let bound = Reflector::start();
    let other = Reflector::start();
    // The body's secret may go to both reflectors: only the token's binding differs.
    let gw = gateway(&format!(
        r#"outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["PROBE_TOKEN", "PROBE_CLIENT_ID", "PROBE_CLIENT_SECRET"]
secret_hosts = {{ PROBE_TOKEN = ["http://127.0.0.1:{bound}", "http://127.0.0.1:{other}"] }}
config = {{ target_url = "{}", other_url = "{}", use_oauth = "1" }}

[plugins.egress-next.oauth.probe]
token_url = "{}/v2/token"
client_id = "PROBE_CLIENT_ID"
client_secret = "PROBE_CLIENT_SECRET"
form = "multipart"
hosts = ["http://127.0.0.1:{bound}"]
"#,
        bound.url("/probe"),
        other.url("/probe"),
        sim.base(),
        bound = bound.port(),
        other = other.port(),
    ));

    // A granted destination outside the client's hosts: refused, and no token was even
    // fetched for it.
    let refused = gw.order(&json!({"product_id": "egress-next:egress-next-other"}));
    assert_eq!(
        refused.json["failure"]["code"], "plugin_egress_denied",
        "{:?}",
        refused.json
    );
    assert!(other.received().is_empty(), "the unbound host was reached");
    assert_eq!(sim.token_requests(), 0);

    // A bound one: the token fetched from the token endpoint arrives; the plugin reads
    // it back scrubbed.
    let order = gw.order(&json!({"product_id": "egress-next:egress-next-1"}));
    let report = report(&order.json);
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["echo_auth"], "Bearer [REDACTED]");
    assert_eq!(sim.token_requests(), 1);
    let got = bound.received();
    assert_eq!(got.len(), 1);
    let token = got[0]
        .header("authorization")
        .strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_string();
    assert_eq!(token.len(), 64, "the token Airalo's endpoint issued");
    assert_eq!(got[0].json()["token"], SECRET, "the body was filled in too");

    let orders = gw.get("/v1/orders");
    let log = gw.log();
    let seen = [
        ("order", order.text()),
        ("refused order", refused.text()),
        ("order list", orders.text()),
        ("log", log.clone()),
    ];
    assert_nowhere(&token, &seen);
    assert_nowhere(CLIENT_SECRET, &seen);
    assert!(!other.saw(&token));
    assert!(log.contains("not bound"), "the denial is logged: {log}");
}

#[test]
fn a_0_1_plugin_keeps_its_0_1_behaviour_and_its_body_is_sent_as_written() {
    let reflector = Reflector::start();
    let gw = GatewayBuilder::new(BIN)
        .plugins(&["egress"])
        .grants(&format!(
            r#"
[plugins.egress]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["PROBE_TOKEN"]
secret_hosts = {{ PROBE_TOKEN = ["http://127.0.0.1:{}"] }}
config = {{ target_url = "{}", forbidden_url = "http://localhost:1/" }}
"#,
            reflector.port(),
            reflector.url("/probe")
        ))
        .secrets(&format!("[egress]\nPROBE_TOKEN = \"{SECRET}\"\n"))
        .start();
    let order = gw.order(&json!({"product_id": "egress:egress-body"}));
    assert_eq!(order.status, 201, "{:?}", order.json);
    assert_eq!(order.json["failure"]["code"], "supplier_rejected");
    let got = reflector.received();
    assert_eq!(got.len(), 1);
    // 0.1 promised placeholders in headers: filled there, left as written in the body.
    assert_eq!(got[0].header("authorization"), format!("Bearer {SECRET}"));
    assert_eq!(got[0].json(), json!({"token": "${secret:PROBE_TOKEN}"}));
}
