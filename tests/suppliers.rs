//! Real supplier APIs through the real gateway: the `esim-access` adapter (contract 0.2)
//! against a loopback simulator of an eSIM Access-style API: host-signed requests, an
//! async order finished by the supplier's webhook, eSIM states from webhooks, the source
//! allow-list, deduplication, and how supplier errors are acted on.

use std::time::{Duration, Instant};

use simgate_test_support::{EsimAccessSim, Fault, Gateway, GatewayBuilder, Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");
const ACCESS_CODE: &str = "acc-5d1f0a";
const SECRET: &str = "esim-access-signing-secret-b7e2";
const PRODUCT: &str = "esim-access:PJP1G7D";

struct Setup {
    gw: Gateway,
    sim: EsimAccessSim,
    key: String,
}

/// The adapter's grant against `sim`, with `extra` lines.
fn grants(sim: &EsimAccessSim, extra: &str) -> String {
    format!(
        r#"
[plugins.esim-access]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["ESIM_ACCESS_SECRET"]
config = {{ base_url = "{}", access_code = "{ACCESS_CODE}" }}
{extra}
"#,
        sim.base()
    )
}

/// A gateway with the adapter granted, webhooks allowed from `sources`. Polls are slow
/// (10 min), so an order that completes promptly was completed by its webhook.
fn setup(sources: &str) -> Setup {
    let sim = EsimAccessSim::start(ACCESS_CODE, SECRET);
    sim.set_manual_allocation(true);
    let grants = grants(&sim, &format!("webhook_sources = [{sources}]"));
    let gw = GatewayBuilder::new(BIN)
        .plugins(&["esim-access"])
        .grants(&grants)
        .secrets(&format!(
            "[esim-access]\nESIM_ACCESS_SECRET = \"{SECRET}\"\n"
        ))
        .config("[orders]\nsync_wait_ms = 300\npoll_interval_ms = 600000\nbase_backoff_ms = 200\n")
        .capture_log()
        .start();
    sim.set_webhook_url(&format!("{}/v1/inbound/esim-access/webhook", gw.base));
    let (_, key) = gw.new_reseller(0, Some(100_000));
    Setup { gw, sim, key }
}

impl Setup {
    fn place(&self) -> String {
        self.gw
            .place_order_as(&self.key, &json!({"product_id": PRODUCT, "quantity": 1}))
    }

    fn order(&self, id: &str) -> Value {
        self.gw.order_as(&self.key, id)
    }

    fn wait_order(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.gw.wait_order_as(&self.key, id, done)
    }

    /// The supplier's order for gateway order `id`, once placed.
    fn supplier_order_no(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(o) = self
                .sim
                .orders()
                .into_iter()
                .find(|o| o.transaction_id == id)
            {
                return o.order_no;
            }
            assert!(
                Instant::now() < deadline,
                "the supplier never got order {id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn esim(&self, iccid: &str) -> Value {
        let r = self
            .gw
            .call("GET", &format!("/v1/esims/{iccid}"), Some(&self.key), None);
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json
    }
}

#[test]
fn an_order_completes_by_the_suppliers_webhook_with_requests_signed_by_the_host() {
    let s = setup(r#""127.0.0.1/32""#);
    let id = s.place();
    let order_no = s.supplier_order_no(&id);
    let pending = s.wait_order(&id, |o| o["status"] == "submitted");
    assert_eq!(pending["status"], "submitted");

    // The supplier allocates and says so by webhook; the gateway polls at once.
    assert_eq!(s.sim.allocate(&order_no), Some(200));
    let done = s.wait_order(&id, |o| o["status"] == "fulfilled");
    let iccid = done["esims"][0]["iccid"].as_str().unwrap().to_string();
    assert_eq!(s.esim(&iccid)["iccid"], iccid);

    // Every request reached the simulator signed (it refuses bad signatures), the order
    // carried the gateway's reference as its idempotency key, and the secret itself was
    // never sent anywhere or logged.
    let requests = s.sim.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.header("rt-accesscode"), ACCESS_CODE);
        assert_eq!(r.header("rt-signature").len(), 64);
        let raw = format!("{:?}{}", r.headers, String::from_utf8_lossy(&r.body));
        assert!(!raw.contains(SECRET), "secret sent: {raw}");
    }
    let orders = s.sim.requests_to("/api/v1/open/esim/order");
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].json()["transactionId"], id);
    assert!(!s.gw.log().contains(SECRET));

    // eSIM states and usage from the supplier's webhooks land on the eSIM.
    assert_eq!(s.sim.smdp_event(&iccid, "INSTALLATION"), 200);
    assert_eq!(s.sim.esim_status(&iccid, "IN_USE"), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let esim = s.esim(&iccid);
        if esim["profile_state"] == "installed" && esim["plan_state"] == "active" {
            break;
        }
        assert!(Instant::now() < deadline, "states never arrived: {esim:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_webhook_from_an_address_not_allowed_or_unreadable_changes_nothing() {
    // Only 10.0.0.0/8 may send: the simulator on loopback may not.
    let s = setup(r#""10.0.0.0/8""#);
    let id = s.place();
    let order_no = s.supplier_order_no(&id);
    assert_eq!(
        s.sim.allocate(&order_no),
        Some(400),
        "refused before the plugin"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.order(&id)["status"], "submitted", "nothing changed");
    assert!(s.gw.log().contains("address not allowed"));

    let open = setup(r#""127.0.0.1/32""#);
    for body in [&b"not json"[..], br#"{"content":{}}"#] {
        let r = open.gw.raw(
            "POST",
            "/v1/inbound/esim-access/webhook",
            None,
            &[],
            Some(body.to_vec()),
            Some("application/json"),
        );
        assert_eq!(r.status, 400, "{body:?}");
        assert_eq!(r.json["code"], "inbound_rejected");
    }
    let r = open.gw.raw(
        "POST",
        "/v1/inbound/nobody/webhook",
        None,
        &[],
        Some(b"{}".to_vec()),
        Some("application/json"),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn a_redelivered_webhook_is_applied_once() {
    let s = setup(r#""127.0.0.1/32""#);
    let id = s.place();
    let order_no = s.supplier_order_no(&id);
    assert_eq!(s.sim.allocate(&order_no), Some(200));
    s.wait_order(&id, |o| o["status"] == "fulfilled");
    // The very bytes the supplier sent (its body carries the notification's id).
    let body = s.sim.webhooks().last().unwrap().body.clone();
    let again = s.gw.raw(
        "POST",
        "/v1/inbound/esim-access/webhook",
        None,
        &[],
        Some(body),
        Some("application/json"),
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.json["duplicate"], true, "{:?}", again.json);
}

#[test]
fn a_429_retry_after_is_honoured_and_a_400_is_not_retried() {
    let s = setup(r#""127.0.0.1/32""#);
    s.sim.fail_next(
        1,
        Fault::RateLimited {
            retry_after_secs: 2,
        },
    );
    let before = Instant::now();
    let id = s.place();
    s.supplier_order_no(&id);
    // The first call came after `before`; the second at least Retry-After later.
    let waited = before.elapsed();
    let calls = s.sim.requests_to("/api/v1/open/esim/order");
    assert_eq!(calls.len(), 2, "refused once, then placed");
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, before the supplier's Retry-After"
    );

    s.sim.fail_next(1, Fault::BadRequest);
    let bad = s.place();
    let failed = s.wait_order(&bad, |o| o["status"] == "failed");
    assert_eq!(
        failed["failure"]["code"], "supplier_invalid_request",
        "{failed:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let tries = s
        .sim
        .requests_to("/api/v1/open/esim/order")
        .into_iter()
        .filter(|r| r.json()["transactionId"] == bad.as_str())
        .count();
    assert_eq!(tries, 1, "a 400 is final");
}

#[test]
fn calls_to_a_supplier_reuse_keep_alive_connections() {
    let s = setup(r#""127.0.0.1/32""#);
    for _ in 0..3 {
        let id = s.place();
        let order_no = s.supplier_order_no(&id);
        assert_eq!(s.sim.allocate(&order_no), Some(200));
        s.wait_order(&id, |o| o["status"] == "fulfilled");
    }
    let requests = s.sim.requests().len();
    assert!(requests >= 6, "catalog, orders and queries: {requests}");
    // Sequential calls share a connection; a new one is opened only when none is idle.
    assert!(
        s.sim.connections() < requests as u64 / 2,
        "{} connections for {requests} requests",
        s.sim.connections()
    );
}

#[test]
fn a_routed_order_fails_over_when_the_first_supplier_is_out_of_stock_with_one_hold_and_one_capture()
{
    let sim = EsimAccessSim::start(ACCESS_CODE, SECRET);
    let grants = grants(&sim, "");
    let gw = GatewayBuilder::new(BIN)
        .plugins(&["esim-access", "sandbox"])
        .grants(&grants)
        .secrets(&format!(
            "[esim-access]\nESIM_ACCESS_SECRET = \"{SECRET}\"\n"
        ))
        .config(
            "[orders]\nsync_wait_ms = 3000\n\
             [routing.products]\njp-5gb = [\"esim-access:PJP5G30D\", \"sandbox:SBX-JP-5GB-30D\"]\n",
        )
        .start();
    let (_, key) = gw.new_reseller(0, Some(100_000));

    // Listed under its own name, priced at the dearer of its offers (eSIM Access's
    // 65000/10000 USD = 650 cents against the sandbox's 1100: 1100).
    let products = gw.call("GET", "/v1/products", Some(&key), None);
    let routed = products.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "jp-5gb")
        .cloned()
        .expect("the routed product is listed");
    assert_eq!(routed["price"]["minor"], 1100);

    sim.fail_next(1, Fault::OutOfStock);
    let id = gw.place_order_as(&key, &json!({"product_id": "jp-5gb", "quantity": 1}));
    let order = gw.wait_order_as(&key, &id, |o| o["status"] != "submitted");
    assert_eq!(order["status"], "fulfilled", "{order:?}");
    // Supplier A was asked and said out of stock; B served it, and the order says so.
    assert_eq!(sim.requests_to("/api/v1/open/esim/order").len(), 1);
    assert!(sim.orders().is_empty(), "A took no order");
    assert_eq!(order["supplier"], "sandbox");
    assert_eq!(order["product_id"], "jp-5gb");
    assert_eq!(order["esims"].as_array().unwrap().len(), 1);

    // Exactly one hold and one capture for this order, at the routed price.
    let ledger = gw.call(
        "GET",
        "/v1/balance/transactions?limit=100",
        Some(&key),
        None,
    );
    let mine: Vec<&Value> = ledger.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["order_id"] == id.as_str())
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "hold").count(),
        1,
        "{mine:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "capture").count(),
        1,
        "{mine:?}"
    );
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(gw.balance_of(&key), (100_000 - 1100, 0));
}
