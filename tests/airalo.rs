//! The `airalo` adapter (contract 0.2) through the real gateway, against a loopback
//! simulator of the Airalo Partner API v2: orders finished by Airalo's signed async
//! webhook, unsigned or forged webhooks refused, the OAuth token the host fetches once,
//! reuses and replaces, and neither the client's credentials nor the token ever reaching
//! the log or anything a reseller reads.

use std::time::Duration;

use simgate_test_support::{
    AiraloSim, Gateway, GatewayBuilder, Reflector, Value, assert_nowhere, json, wait_for,
};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");
const CLIENT_ID: &str = "airalo-client-id-3f8a";
const CLIENT_SECRET: &str = "airalo-client-secret-c41d9e";
const PRODUCT: &str = "airalo:moshi-moshi-7days-1gb";
const ORDERS_ASYNC: &str = "/v2/orders-async";

struct Setup {
    gw: Gateway,
    sim: AiraloSim,
    key: String,
}

/// A gateway with the adapter granted and its OAuth client configured against `sim`.
/// Polls are slow (10 min), so an order that completes promptly was completed by its
/// webhook. The log is captured at `debug`, the level most likely to leak a value.
fn setup(sim: AiraloSim) -> Setup {
    let base = sim.base();
    let grants = format!(
        r#"
[plugins.airalo]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["AIRALO_CLIENT_ID", "AIRALO_CLIENT_SECRET"]
config = {{ base_url = "{base}" }}

[plugins.airalo.oauth.partner]
token_url = "{base}/v2/token"
client_id = "AIRALO_CLIENT_ID"
client_secret = "AIRALO_CLIENT_SECRET"
form = "multipart"
hosts = ["http://127.0.0.1:{port}"]
"#,
        port = sim.port()
    );
    let gw = GatewayBuilder::new(BIN)
        .plugins(&["airalo"])
        .grants(&grants)
        .secrets(&format!(
            "[airalo]\nAIRALO_CLIENT_ID = \"{CLIENT_ID}\"\nAIRALO_CLIENT_SECRET = \"{CLIENT_SECRET}\"\n"
        ))
        .config("[orders]\nsync_wait_ms = 300\npoll_interval_ms = 600000\nbase_backoff_ms = 200\n")
        .env("SIMGATE_LOG", "debug")
        .capture_log()
        .start();
    sim.set_webhook_url(&webhook_url(&gw));
    let (_, key) = gw.new_reseller(0, Some(100_000));
    Setup { gw, sim, key }
}

fn webhook_url(gw: &Gateway) -> String {
    format!("{}/v1/inbound/airalo/webhook", gw.base)
}

impl Setup {
    /// Place an order for `quantity` eSIMs; its id.
    fn place(&self, quantity: u32) -> String {
        self.gw.place_order_as(
            &self.key,
            &json!({"product_id": PRODUCT, "quantity": quantity}),
        )
    }

    fn order(&self, id: &str) -> Value {
        self.gw.order_as(&self.key, id)
    }

    fn wait_status(&self, id: &str, status: &str) -> Value {
        wait_for(&format!("order {id} {status}"), || {
            Some(self.order(id)).filter(|o| o["status"] == status)
        })
    }

    /// The async request Airalo accepted for gateway order `id` (its `description`).
    fn request_of(&self, id: &str) -> String {
        wait_for(&format!("Airalo got order {id}"), || {
            self.sim
                .requests_to(ORDERS_ASYNC)
                .iter()
                .any(|r| r.json()["description"] == id)
                .then(|| self.sim.pending_async().pop())
                .flatten()
        })
    }

    /// The bearer of every request to `path`, in order.
    fn bearers(&self, path: &str) -> Vec<String> {
        self.sim
            .requests_to(path)
            .iter()
            .map(|r| r.header("authorization").to_string())
            .collect()
    }

    /// POST `body` to the gateway's Airalo webhook route with `airalo-signature`.
    fn webhook(&self, body: &[u8], signature: Option<&str>) -> simgate_test_support::Resp {
        let headers: Vec<(&str, &str)> = signature
            .map(|s| vec![("airalo-signature", s)])
            .unwrap_or_default();
        self.gw.raw(
            "POST",
            "/v1/inbound/airalo/webhook",
            None,
            &headers,
            Some(body.to_vec()),
            Some("application/json"),
        )
    }
}

#[test]
fn an_order_completes_by_airalos_signed_async_webhook() {
    let s = setup(AiraloSim::start(CLIENT_ID, CLIENT_SECRET));
    s.sim.set_async_manual(true);
    let id = s.place(2);
    let request_id = s.request_of(&id);
    assert_eq!(s.wait_status(&id, "submitted")["status"], "submitted");

    // The async order named the gateway's order, with the partner token and JSON asked for.
    let sent = &s.sim.requests_to(ORDERS_ASYNC)[0];
    assert_eq!(
        sent.json(),
        json!({"quantity": 2, "package_id": "moshi-moshi-7days-1gb", "type": "sim",
               "description": id})
    );
    assert_eq!(sent.header("accept"), "application/json");
    assert!(sent.header("authorization").starts_with("Bearer "));

    // Airalo fills it and posts the signed result; the webhook alone settles the order.
    assert_eq!(s.sim.complete_async(&request_id), Some(200));
    let done = s.wait_status(&id, "fulfilled");
    let airalo = &s.sim.orders()[0];
    let delivered: Vec<&str> = done["esims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["iccid"].as_str().unwrap())
        .collect();
    assert_eq!(delivered, airalo.iccids);
    let webhook = s.sim.webhooks().pop().unwrap();
    assert_eq!(webhook.json()["data"]["description"], id.as_str());
    assert_eq!(webhook.json()["request_id"], request_id.as_str());

    // The install data is Airalo's: SM-DP+ address and matching id of the first sim.
    let esim = s.gw.call(
        "GET",
        &format!("/v1/esims/{}", delivered[0]),
        Some(&s.key),
        None,
    );
    assert_eq!(esim.status, 200, "{:?}", esim.json);
    let matching_id = airalo.data["sims"][0]["matching_id"].as_str().unwrap();
    let text = esim.json.to_string();
    assert!(
        text.contains(&format!("LPA:1$smdp.sim.test${matching_id}")),
        "{text}"
    );

    // Redelivered (Airalo retries), it is recognised by its request id and applied once.
    let again = s.webhook(&webhook.body, Some(webhook.header("airalo-signature")));
    assert_eq!(again.status, 200, "{:?}", again.json);
    assert_eq!(again.json["duplicate"], true);
}

#[test]
fn a_webhook_with_a_bad_signature_or_none_changes_nothing() {
    let s = setup(AiraloSim::start(CLIENT_ID, CLIENT_SECRET));
    s.sim.set_async_manual(true);
    let id = s.place(1);
    let request_id = s.request_of(&id);
    s.wait_status(&id, "submitted");

    // Airalo fills the order but its webhook goes elsewhere: the test holds the body.
    let elsewhere = Reflector::start();
    s.sim.set_webhook_url(&elsewhere.url("/elsewhere"));
    assert_eq!(s.sim.complete_async(&request_id), Some(200));
    let body = s.sim.async_order_body(&request_id);
    let signature = s.sim.sign(&body);
    let mut tampered = body.clone();
    tampered.push(b' ');
    let forged_key = "0".repeat(128);

    for (what, body, signature) in [
        ("no signature", &body, None),
        ("an empty signature", &body, Some("")),
        ("a signature that is not hex", &body, Some("zz")),
        (
            "a signature of other bytes",
            &tampered,
            Some(signature.as_str()),
        ),
        (
            "a signature under another key",
            &body,
            Some(forged_key.as_str()),
        ),
        ("half a signature", &body, Some(&signature[..64])),
    ] {
        let r = s.webhook(body, signature);
        assert_eq!(r.status, 400, "{what}: {:?}", r.json);
        assert_eq!(r.json["code"], "inbound_rejected", "{what}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.order(&id)["status"], "submitted", "nothing changed");

    // The same body, truly signed (hex in upper case is the same signature), settles it.
    let r = s.webhook(&body, Some(&signature.to_uppercase()));
    assert_eq!(r.status, 200, "{:?}", r.json);
    s.wait_status(&id, "fulfilled");
}

#[test]
fn the_oauth_token_is_fetched_once_and_reused_across_the_catalog_and_several_orders() {
    let s = setup(AiraloSim::start(CLIENT_ID, CLIENT_SECRET));
    let products = s.gw.call("GET", "/v1/products", Some(&s.key), None);
    assert_eq!(products.status, 200, "{:?}", products.json);
    let moshi = products.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == PRODUCT)
        .cloned()
        .unwrap_or_else(|| panic!("no {PRODUCT}: {:?}", products.json));
    assert_eq!(moshi["price"]["minor"], 360, "the partner's net price");

    let ids: Vec<String> = (0..3).map(|_| s.place(1)).collect();
    for id in &ids {
        s.wait_status(id, "fulfilled");
    }
    assert_eq!(s.sim.token_requests(), 1, "one token for every call");
    let bearers = [s.bearers("/v2/packages"), s.bearers(ORDERS_ASYNC)].concat();
    assert_eq!(bearers.len(), 4, "{bearers:?}");
    assert!(bearers.iter().all(|b| *b == bearers[0]), "{bearers:?}");

    // The token request carried the client credentials as multipart form fields.
    let token = &s.sim.requests_to("/v2/token")[0];
    assert!(
        token
            .header("content-type")
            .starts_with("multipart/form-data")
    );
}

#[test]
fn a_token_airalo_refuses_is_dropped_and_fetched_again_and_the_order_still_completes() {
    let s = setup(AiraloSim::start(CLIENT_ID, CLIENT_SECRET));
    let first = s.place(1);
    s.wait_status(&first, "fulfilled");
    assert_eq!(s.sim.token_requests(), 1);

    // Airalo stops honouring the cached token before its stated expiry.
    s.sim.expire_tokens();
    let second = s.place(1);
    s.wait_status(&second, "fulfilled");
    assert_eq!(s.sim.token_requests(), 2, "fetched again once");
    let tries: Vec<String> = s
        .sim
        .requests_to(ORDERS_ASYNC)
        .iter()
        .filter(|r| r.json()["description"] == second.as_str())
        .map(|r| r.header("authorization").to_string())
        .collect();
    assert_eq!(tries.len(), 2, "refused with 401, then placed: {tries:?}");
    assert_ne!(tries[0], tries[1], "the retry carried the new token");
    assert_eq!(s.sim.orders().len(), 2, "bought once per order");
}

#[test]
fn a_short_lived_token_is_replaced_before_it_expires() {
    let sim = AiraloSim::start(CLIENT_ID, CLIENT_SECRET);
    sim.set_token_lifetime(2);
    let s = setup(sim);
    let first = s.place(1);
    s.wait_status(&first, "fulfilled");
    let before = s.sim.token_requests();

    std::thread::sleep(Duration::from_millis(2200));
    let second = s.place(1);
    s.wait_status(&second, "fulfilled");
    assert_eq!(s.sim.token_requests(), before + 1);
    assert_eq!(
        s.sim.requests_to(ORDERS_ASYNC).len(),
        2,
        "no call was refused: the host replaced the token before Airalo would"
    );
}

#[test]
fn a_low_data_notice_raises_the_usage_threshold_event() {
    let s = setup(AiraloSim::start(CLIENT_ID, CLIENT_SECRET));
    let id = s.place(1);
    let done = s.wait_status(&id, "fulfilled");
    let iccid = done["esims"][0]["iccid"].as_str().unwrap().to_string();

    // 924 of 1024 MB used: Airalo says 90 %, and the gateway tells the reseller 80 %.
    s.sim.set_usage(&iccid, 100, "ACTIVE");
    assert_eq!(s.sim.low_data(&iccid, "90%"), 200);
    let event = wait_for("a usage threshold event", || {
        let r = s.gw.call(
            "GET",
            "/v1/events?type=esim.usage_threshold",
            Some(&s.key),
            None,
        );
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json["data"].as_array().unwrap().first().cloned()
    });
    assert_eq!(event["data"]["iccid"], iccid.as_str());
    assert_eq!(event["data"]["percent"], 80);
    assert_eq!(event["data"]["used_bytes"], 924u64 * 1024 * 1024);

    // A days-left notice has no data threshold: accepted, nothing raised; a redelivery is
    // known by the notice's own fields.
    assert_eq!(s.sim.low_data(&iccid, "1days"), 200);
    let again = s.sim.low_data_body(&iccid, "90%");
    let r = s.webhook(&again, Some(&s.sim.sign(&again)));
    assert_eq!(r.json["duplicate"], true, "{:?}", r.json);
}

#[test]
fn the_client_credentials_and_the_token_never_reach_the_log_or_the_reseller() {
    let s = setup(AiraloSim::start(CLIENT_ID, CLIENT_SECRET));
    let id = s.place(1);
    let done = s.wait_status(&id, "fulfilled");
    let iccid = done["esims"][0]["iccid"].as_str().unwrap();
    // A forged webhook, so its refusal is logged too.
    assert_eq!(s.webhook(b"{}", Some(&"ab".repeat(64))).status, 400);

    let bearer = s.bearers(ORDERS_ASYNC).pop().unwrap();
    let token = bearer.strip_prefix("Bearer ").unwrap().to_string();
    assert_eq!(token.len(), 64, "a real token was sent: {bearer}");
    let seen = [
        ("order", s.order(&id).to_string()),
        (
            "reseller's orders",
            s.gw.call("GET", "/v1/orders", Some(&s.key), None)
                .json
                .to_string(),
        ),
        (
            "eSIM",
            s.gw.call("GET", &format!("/v1/esims/{iccid}"), Some(&s.key), None)
                .json
                .to_string(),
        ),
        (
            "products",
            s.gw.call("GET", "/v1/products", Some(&s.key), None)
                .json
                .to_string(),
        ),
        (
            "events",
            s.gw.call("GET", "/v1/events", Some(&s.key), None)
                .json
                .to_string(),
        ),
        ("log", s.gw.log()),
    ];
    assert!(s.gw.log().contains("airalo"), "the log was captured");
    for value in [CLIENT_ID, CLIENT_SECRET, token.as_str()] {
        assert_nowhere(value, &seen);
    }
}
