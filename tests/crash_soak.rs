//! Crash soak: cycle after cycle of load, `kill -9` at a random moment, restart on the same
//! data directory, and a strict audit of everything the gateway ever acknowledged.
//!
//! `tests/crash_recovery.rs` proves that one crash is survived. The soak proves the
//! recovery holds wherever the crash lands, again and again, on a data directory that keeps
//! growing: what earlier cycles wrote, recovered or checkpointed is read back and audited by
//! every later one. Each cycle:
//!
//! 1. client threads, for several resellers, place orders (delivered at once, delivered
//!    later, sold out), cancel delivered orders (one cancel in three twice at once, under
//!    two keys, as a client retrying with a fresh key would), top up delivered eSIMs,
//!    while the operator posts credits; every write carries an `Idempotency-Key`, and
//!    every 2xx is recorded;
//! 2. the gateway gets SIGKILL after a delay drawn from a seeded generator;
//! 3. it restarts on the same data directory, and every write that got no answer is sent
//!    again with its key: it must be replayed or run once, never twice;
//! 4. the audit: every acknowledged write is there, every order reaches a final state,
//!    each order has exactly the ledger entries its state implies, and every balance is
//!    what its ledger entries add up to.
//!
//! `SIMGATE_SOAK_CYCLES` sets the number of cycles (default 3, short enough for CI) and
//! `SIMGATE_SOAK_SEED` replays a run: the seed (printed) fixes the kill delays and each
//! client's mix of requests, not how the threads interleave. RELIABILITY.md has the long
//! run and its results.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use simgate_test_support::{Gateway, GatewayBuilder, Resp, Value, json};

/// Orders answer at once (no waiting for fulfilment), so many are unfinished when the
/// process dies; the async product is polled every second, so recovery settles it quickly;
/// rate limits are out of the way of six busy clients.
const CONFIG: &str = "[orders]\nsync_wait_ms = 0\npoll_interval_ms = 1000\n\
                      [http]\nrate_limit_per_second = 100000.0\nrate_limit_burst = 100000.0\n";

/// Client threads per cycle.
const CLIENTS: usize = 6;
/// Resellers the clients share (client `i` acts for reseller `i % RESELLERS`).
const RESELLERS: usize = 3;
/// Each reseller's first credit (to the test account its test key spends): enough that no
/// order is ever refused for money.
const FIRST_CREDIT: i64 = 1_000_000_000;
/// The kill lands this long after the clients start (drawn uniformly), in ms.
const KILL_AFTER_MS: (u64, u64) = (200, 2500);
/// A client pauses up to this long (drawn uniformly) before each request, in ms. Without
/// it a cycle writes ~800 records a second and the audit, which reads the whole books
/// every cycle, grows too slow for a 100-cycle run; the crash still lands mid-request.
const THINK_MS: u64 = 40;

/// Products the clients order: delivered at once (most of them top-up-able), delivered
/// later by a poll, and never (sold out: the order fails and its hold is released).
const PRODUCTS: [&str; 6] = [
    "sandbox:SBX-US-5GB-30D",
    "sandbox:SBX-JP-5GB-30D",
    "sandbox:SBX-DE-10GB-30D",
    "sandbox:SBX-FR-3GB-15D",
    "sandbox:SBX-ASYNC-1GB-7D",
    "sandbox:SBX-XX-OOS",
];
/// What a delivered eSIM is topped up with (any top-up-able sandbox product will do).
const TOP_UP_PRODUCT: &str = "sandbox:SBX-EU-10GB-30D";

/// How long a (re)started gateway may take to be ready before the soak gives up on it.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How long an order found unfinished after a restart may take to reach a final state:
/// recovery resubmits what was never sent and polls what is pending every
/// `poll_interval_ms`, so a few seconds are plenty; longer is a stuck order.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// States an order leaves only by settling.
const UNFINISHED: [&str; 3] = ["accepted", "awaiting_kyc", "submitted"];

#[test]
fn acknowledged_writes_survive_repeated_kill_9_and_the_books_balance_after_each() {
    let cycles: u64 = env_number("SIMGATE_SOAK_CYCLES").unwrap_or(3);
    let seed = env_number("SIMGATE_SOAK_SEED").unwrap_or_else(clock_seed);
    println!("crash soak: {cycles} cycles, seed {seed} (replay: SIMGATE_SOAK_SEED={seed})");
    let started = Instant::now();

    let bin = PinnedBinary::copy();
    let mut gw = start(&bin, None);
    let world = World::new(&gw);
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::new(i, seed.wrapping_add(1 + i as u64)))
        .collect();
    let mut totals = Tally::default();
    for cycle in 1..=cycles {
        let mut rng = Rng(seed ^ cycle.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let cx = format!("seed {seed}, cycle {cycle}");
        let (report, next) = soak_cycle(&bin, gw, &world, &mut clients, &mut rng, &cx);
        gw = next;
        println!("cycle {cycle}/{cycles}: {report}");
        totals.add(&report);
    }
    let acked = world.acked.lock().unwrap();
    println!(
        "crash soak done: {cycles} cycles in {:.1} s, seed {seed}; {} acknowledged writes \
         ({} orders, {} cancels, {} top-ups, {} credits), {} orders in the books, \
         {} writes retried after a crash, nothing lost",
        started.elapsed().as_secs_f64(),
        acked.len(),
        acked.orders.len(),
        acked.cancels.len(),
        acked.top_ups.len(),
        acked.credits.len(),
        totals.orders,
        totals.retried,
    );
}

/// One cycle on a running gateway: load, kill, restart, retry, audit. Returns what it
/// measured and the restarted gateway, for the next cycle.
fn soak_cycle(
    bin: &PinnedBinary,
    gw: Gateway,
    world: &World,
    clients: &mut [Client],
    rng: &mut Rng,
    cx: &str,
) -> (Report, Gateway) {
    let kill_after = Duration::from_millis(rng.between(KILL_AFTER_MS.0, KILL_AFTER_MS.1));
    let (acked_before, orders_before) = {
        let acked = world.acked.lock().unwrap();
        (acked.len(), acked.orders.len())
    };
    let post_mortem = PostMortem {
        gw: &gw,
        before: None,
        cx,
    };
    let unanswered = load_then_kill(&gw, world, clients, kill_after, cx);
    drop(post_mortem);
    let log_before = gw.log();
    let dir = gw.kill();

    let restarting = Instant::now();
    let gw = start(bin, Some(dir));
    let ready = restarting.elapsed();
    // Anything that fails from here on keeps both lives' logs.
    let post_mortem = PostMortem {
        gw: &gw,
        before: Some(log_before),
        cx,
    };
    let retries = retry_unanswered(&gw, world, &unanswered, cx);
    let acked_this_cycle = world.acked.lock().unwrap().len() - acked_before;
    wait_until_settled(&gw, world, cx);
    let settled = restarting.elapsed();
    let audited = Instant::now();
    let orders = audit(&gw, world, orders_before, cx);
    let report = Report {
        kill_after,
        acked: acked_this_cycle,
        unanswered: unanswered.len(),
        retries,
        orders,
        ready,
        settled,
        audit: audited.elapsed(),
    };
    drop(post_mortem);
    (report, gw)
}

/// Run the clients until the gateway is killed, `kill_after` from now; returns the writes
/// that got no answer (sent when the process died).
fn load_then_kill(
    gw: &Gateway,
    world: &World,
    clients: &mut [Client],
    kill_after: Duration,
    cx: &str,
) -> Vec<Write> {
    let stop = AtomicBool::new(false);
    let unanswered = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for client in clients.iter_mut() {
            let (stop, unanswered) = (&stop, &unanswered);
            s.spawn(move || {
                let lost = client.run(gw, world, stop, cx);
                unanswered.lock().unwrap().extend(lost);
            });
        }
        std::thread::sleep(kill_after);
        // Killed first, stopped after: the clients are mid-request when the process dies.
        gw.sigkill();
        stop.store(true, Ordering::Relaxed);
    });
    unanswered.into_inner().unwrap()
}

/// Send every unanswered write again with its key, now that the gateway is back. Each is
/// either answered as the first attempt's outcome (or run now, if that left nothing), or
/// refused as still leased by the attempt the crash cut short (the lease outlives a
/// restart), or, for a cancel, refused because its twin cancelled the order. Never twice:
/// the audit counts every write's effects.
fn retry_unanswered(gw: &Gateway, world: &World, unanswered: &[Write], cx: &str) -> Retries {
    let mut retries = Retries::default();
    for w in unanswered {
        let r = w
            .send(gw, world)
            .unwrap_or_else(|e| panic!("{cx}: retrying {w:?} after the restart: {e}"));
        if r.status == w.success() {
            world.acked.lock().unwrap().record(w, &r);
            match r.header("idempotent-replayed") {
                Some("true") => retries.replayed += 1,
                _ => retries.ran += 1,
            }
        } else if r.status == 409 && r.json["code"] == "idempotency_in_progress" {
            retries.leased += 1;
        } else if matches!(w.what, What::Cancel { .. }) && is_not_cancellable(&r) {
            // Its twin cancelled the order (the audit checks it is cancelled once).
            retries.cancelled_by_twin += 1;
        } else {
            panic!(
                "{cx}: a retry of an unanswered write answered {}: {w:?} -> {}",
                r.status, r.json
            );
        }
    }
    retries
}

/// Check everything the gateway acknowledged so far, every order and every balance (every
/// order has settled). Orders acknowledged after the first `orders_before` (this
/// cycle's) are also read one by one. Returns how many orders the resellers have.
fn audit(gw: &Gateway, world: &World, orders_before: usize, cx: &str) -> usize {
    let acked = world.acked.lock().unwrap();
    acked.check_readable_since(gw, world, orders_before, cx);
    let mut orders_total = 0;
    for (i, account) in world.accounts.iter().enumerate() {
        let cx = &format!("{cx}, reseller {}", account.id);
        let orders = all_pages(gw, &account.key, "/v1/orders");
        let entries = all_pages(gw, &account.key, "/v1/balance/transactions");
        let orders: HashMap<&str, &Value> = orders
            .iter()
            .map(|o| (o["id"].as_str().expect("an order id"), o))
            .collect();
        acked.check_present(i, &orders, &entries, cx);
        check_each_order_settled_once(&orders, &entries, cx);
        check_no_order_placed_twice(&orders, cx);
        check_balances(gw, &account.key, &entries, cx);
        orders_total += orders.len();
    }
    orders_total
}

/// Wait (bounded) until no reseller has an order in an unfinished state: recovery picks
/// up what the crash cut short, and the async product is polled to delivery. The
/// unfinished orders are listed once (no order is placed meanwhile), then each is read
/// until it is final; one still unfinished at the deadline is stuck, and named.
fn wait_until_settled(gw: &Gateway, world: &World, cx: &str) {
    let mut unfinished: Vec<(&str, Value)> = Vec::new();
    for account in &world.accounts {
        for status in UNFINISHED {
            let listed = all_pages(gw, &account.key, &format!("/v1/orders?status={status}"));
            unfinished.extend(listed.into_iter().map(|o| (account.key.as_str(), o)));
        }
    }
    // Counted from here: listing by status reads every order, which takes seconds on the
    // books of a long run, and is no part of the orders' settling.
    let deadline = Instant::now() + SETTLE_WITHIN;
    while !unfinished.is_empty() {
        for (key, order) in &mut unfinished {
            *order = gw.order_as(key, order["id"].as_str().expect("an order id"));
        }
        unfinished.retain(|(_, o)| UNFINISHED.contains(&o["status"].as_str().unwrap_or("")));
        if unfinished.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = unfinished
                .iter()
                .map(|(key, o)| describe_stuck(gw, key, o))
                .collect();
            panic!(
                "{cx}: orders stuck after the restart, unfinished {SETTLE_WITHIN:?} after \
                 they were listed:\n{}",
                stuck.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stuck order for the failure message: its state, times, and its ledger entries (a
/// settling entry beside an unfinished state says the order record fell behind its
/// ledger).
fn describe_stuck(gw: &Gateway, key: &str, order: &Value) -> String {
    let id = &order["id"];
    let entries: Vec<String> = all_pages(gw, key, "/v1/balance/transactions")
        .iter()
        .filter(|e| &e["order_id"] == id)
        .map(|e| format!("{} {} at {}", e["type"], e["amount"], e["created_at_ms"]))
        .collect();
    format!(
        "{id} {} {} {}, created {} updated {} (ms); ledger: {}",
        order["status"],
        order["product_id"],
        order["kind"],
        order["created_at_ms"],
        order["updated_at_ms"],
        entries.join(", ")
    )
}

/// Each order has exactly one hold (for its total) and the settling entries its final
/// state implies: fulfilled, one capture; failed, one release; cancelled, one capture and
/// one refund. No entry names an order the reseller does not have.
fn check_each_order_settled_once(orders: &HashMap<&str, &Value>, entries: &[Value], cx: &str) {
    let mut by_order: HashMap<&str, BTreeMap<&str, Vec<i64>>> = HashMap::new();
    for e in entries {
        let Some(order) = e["order_id"].as_str() else {
            assert_eq!(e["type"], "credit", "{cx}: only credits name no order: {e}");
            continue;
        };
        assert!(
            orders.contains_key(order),
            "{cx}: ledger entry {e} names an order the reseller does not have"
        );
        by_order
            .entry(order)
            .or_default()
            .entry(e["type"].as_str().expect("an entry type"))
            .or_default()
            .push(e["amount"].as_i64().expect("an amount"));
    }
    for (id, order) in orders {
        let status = order["status"].as_str().expect("a status");
        let total = order["total"]["minor"].as_i64().expect("a total");
        let kinds = by_order.remove(id).unwrap_or_default();
        let expected: &[&str] = match status {
            "fulfilled" => &["capture", "hold"],
            "failed" => &["hold", "release"],
            "cancelled" => &["capture", "hold", "refund"],
            other => panic!("{cx}: order {id} is still {other} after settling"),
        };
        let found: Vec<&str> = kinds.keys().copied().collect();
        assert_eq!(found, expected, "{cx}: {status} order {id} has {kinds:?}");
        for (kind, amounts) in &kinds {
            assert_eq!(
                amounts,
                &[total],
                "{cx}: {status} order {id}: its {kind} entries are not one of its total"
            );
        }
        if status == "fulfilled" && order["kind"]["type"] == "esim" {
            assert!(
                !order["esims"].as_array().expect("esims").is_empty(),
                "{cx}: fulfilled order {id} has no eSIM"
            );
        }
    }
}

/// Every order the clients placed carries its idempotency key in its metadata: a write
/// retried after a crash must have been replayed, not placed a second time.
fn check_no_order_placed_twice(orders: &HashMap<&str, &Value>, cx: &str) {
    let mut seen = HashMap::new();
    for (id, order) in orders {
        if let Some(key) = order["metadata"]["soak_key"].as_str()
            && let Some(other) = seen.insert(key, *id)
        {
            panic!("{cx}: orders {other} and {id} were both placed with key {key}");
        }
    }
}

/// The balance in each currency is what the ledger's entries add up to
/// (`available = credits − captures − open holds + refunds`, `held = open holds`); with
/// every order settled nothing is held, and nothing is ever overdrawn.
fn check_balances(gw: &Gateway, key: &str, entries: &[Value], cx: &str) {
    let mut sums: BTreeMap<&str, HashMap<&str, i64>> = BTreeMap::new();
    for e in entries {
        *sums
            .entry(e["currency"].as_str().expect("a currency"))
            .or_default()
            .entry(e["type"].as_str().expect("an entry type"))
            .or_default() += e["amount"].as_i64().expect("an amount");
    }
    let b = gw.call("GET", "/v1/balance", Some(key), None);
    assert_eq!(b.status, 200, "{cx}: {:?}", b.json);
    let balances: BTreeMap<&str, &Value> = b.json["data"]
        .as_array()
        .expect("balances")
        .iter()
        .map(|x| (x["currency"].as_str().expect("a currency"), x))
        .collect();
    assert_eq!(
        balances.keys().collect::<Vec<_>>(),
        sums.keys().collect::<Vec<_>>(),
        "{cx}: the balances' currencies are not the ledger's"
    );
    for (currency, sum) in &sums {
        let s = |kind: &str| sum.get(kind).copied().unwrap_or(0);
        let open_holds = s("hold") - s("capture") - s("release");
        let available = s("credit") - s("capture") - open_holds + s("refund");
        let shown = (
            balances[currency]["available"].as_i64().expect("available"),
            balances[currency]["held"].as_i64().expect("held"),
        );
        assert_eq!(
            shown,
            (available, open_holds),
            "{cx}: the {currency} balance (available, held) is not what its ledger adds up to"
        );
        assert_eq!(
            open_holds, 0,
            "{cx}: a hold is open with every order settled"
        );
        assert!(available >= 0, "{cx}: {currency} is overdrawn: {available}");
    }
}

/// Every item of a list endpoint (`path` may carry a query), following `starting_after`
/// to the last page.
fn all_pages(gw: &Gateway, key: &str, path: &str) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out: Vec<Value> = Vec::new();
    loop {
        let page_path = match out.last() {
            Some(last) => format!(
                "{path}{sep}limit=100&starting_after={}",
                last["id"].as_str().expect("an id")
            ),
            None => format!("{path}{sep}limit=100"),
        };
        let page = gw.call("GET", &page_path, Some(key), None);
        assert_eq!(page.status, 200, "GET {page_path}: {:?}", page.json);
        out.extend(
            page.json["data"]
                .as_array()
                .expect("a page")
                .iter()
                .cloned(),
        );
        if page.json["has_more"] != true {
            return out;
        }
    }
}

/// A gateway with the soak's configuration, on a fresh data directory or on `dir`, once it
/// is ready (it listens before it has recovered). Its log is captured, to be shown when an
/// audit fails.
fn start(bin: &PinnedBinary, dir: Option<tempfile::TempDir>) -> Gateway {
    let b = GatewayBuilder::new(&bin.path).config(CONFIG).capture_log();
    let gw = match dir {
        Some(d) => b.data_dir(d),
        None => b,
    }
    .start();
    // Longer than `wait_for`'s bound: recovery reads back a data directory that grows
    // with every cycle, and its time is measured, not asserted.
    let deadline = Instant::now() + READY_WITHIN;
    while readyz_status(&gw.base) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready within {READY_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gw
}

/// A copy of the gateway binary that every cycle runs: the target directory is shared, and
/// a build made during a long run must not swap the binary between two cycles.
struct PinnedBinary {
    path: String,
    _dir: tempfile::TempDir,
}

impl PinnedBinary {
    fn copy() -> PinnedBinary {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("simgate");
        std::fs::copy(env!("CARGO_BIN_EXE_simgate"), &path).expect("copying the binary");
        PinnedBinary {
            path: path.to_str().expect("a UTF-8 temp path").to_string(),
            _dir: dir,
        }
    }
}

/// The status `GET /readyz` answers, over a connection of its own: the support's client
/// checks every answer against the OpenAPI document, which a gateway still starting
/// does not serve yet.
fn readyz_status(base: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://")?;
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The resellers the clients act for, the operator's key, and every write acknowledged
/// so far.
struct World {
    /// The admin key, as the first start gave it (a restart does not give it again).
    admin: String,
    accounts: Vec<Account>,
    acked: Mutex<Acked>,
}

/// A reseller and its test key.
struct Account {
    id: String,
    key: String,
}

impl World {
    /// Make the resellers, each with a test key and a first credit on its test account
    /// (the one test keys spend).
    fn new(gw: &Gateway) -> World {
        let accounts = (0..RESELLERS)
            .map(|_| {
                let (id, key) = gw.new_reseller(0, None);
                let credit = gw.credit(
                    &id,
                    &json!({"amount": FIRST_CREDIT, "currency": "USD", "mode": "test"}),
                );
                assert_eq!(credit.status, 201, "first credit: {:?}", credit.json);
                Account { id, key }
            })
            .collect();
        World {
            admin: gw.admin_key.clone(),
            accounts,
            acked: Mutex::default(),
        }
    }
}

/// One write a client sends: what it is (to audit later), where, with which body and key.
#[derive(Debug, Clone)]
struct Write {
    account: usize,
    what: What,
    path: String,
    body: Value,
    idempotency_key: String,
}

/// What a write does.
#[derive(Debug, Clone)]
enum What {
    Order,
    Cancel { order: String },
    TopUp { iccid: String },
    Credit { note: String, amount: i64 },
}

impl Write {
    /// Send it (a credit as the operator, anything else as its reseller); `Err` when the
    /// connection broke (the process died).
    fn send(&self, gw: &Gateway, world: &World) -> Result<Resp, String> {
        let key = match self.what {
            What::Credit { .. } => &world.admin,
            _ => &world.accounts[self.account].key,
        };
        gw.try_raw(
            "POST",
            &self.path,
            Some(key),
            &[("idempotency-key", &self.idempotency_key)],
            Some(self.body.to_string().into_bytes()),
            Some("application/json"),
        )
    }

    /// The status that acknowledges it.
    fn success(&self) -> u16 {
        match self.what {
            What::Cancel { .. } => 200,
            _ => 201,
        }
    }
}

/// Every write the gateway acknowledged with a 2xx, by reseller index.
#[derive(Default)]
struct Acked {
    /// Orders and top-ups: (reseller, order id).
    orders: Vec<(usize, String)>,
    /// (reseller, the cancelled order).
    cancels: Vec<(usize, String)>,
    /// (reseller, top-up order id, the eSIM topped up).
    top_ups: Vec<(usize, String, String)>,
    /// (reseller, the credit's note, its amount).
    credits: Vec<(usize, String, i64)>,
}

impl Acked {
    fn len(&self) -> usize {
        self.orders.len() + self.cancels.len() + self.credits.len()
    }

    /// Record acknowledged write `w`, answered `r`.
    fn record(&mut self, w: &Write, r: &Resp) {
        let id = || r.json["id"].as_str().expect("an order id").to_string();
        match &w.what {
            What::Order => self.orders.push((w.account, id())),
            What::TopUp { iccid } => {
                self.orders.push((w.account, id()));
                self.top_ups.push((w.account, id(), iccid.clone()));
            }
            What::Cancel { order } => self.cancels.push((w.account, order.clone())),
            What::Credit { note, amount } => self.credits.push((w.account, note.clone(), *amount)),
        }
    }

    /// Orders (and top-ups) acknowledged after the first `since`, read back one by one,
    /// each as its reseller (the rest are found in the lists).
    fn check_readable_since(&self, gw: &Gateway, world: &World, since: usize, cx: &str) {
        for (account, id) in &self.orders[since..] {
            let key = &world.accounts[*account].key;
            let r = gw.call("GET", &format!("/v1/orders/{id}"), Some(key), None);
            assert_eq!(
                r.status, 200,
                "{cx}: acknowledged order {id} is not readable"
            );
        }
    }

    /// Everything reseller `account` was acknowledged is in its orders and ledger: each
    /// order; each cancel as a cancelled order (whose refund the ledger check demands);
    /// each top-up as an order topping up its eSIM; each credit exactly once, for its
    /// amount.
    fn check_present(
        &self,
        account: usize,
        orders: &HashMap<&str, &Value>,
        entries: &[Value],
        cx: &str,
    ) {
        for (_, id) in self.orders.iter().filter(|(a, _)| *a == account) {
            assert!(
                orders.contains_key(id.as_str()),
                "{cx}: acknowledged order {id} is missing"
            );
        }
        for (_, id) in self.cancels.iter().filter(|(a, _)| *a == account) {
            assert_eq!(
                orders[id.as_str()]["status"],
                "cancelled",
                "{cx}: acknowledged cancel of order {id} is lost"
            );
        }
        for (_, id, iccid) in self.top_ups.iter().filter(|(a, ..)| *a == account) {
            assert_eq!(
                orders[id.as_str()]["kind"],
                json!({"type": "top_up", "iccid": iccid}),
                "{cx}: acknowledged top-up {id}"
            );
        }
        let mut credits: HashMap<&str, Vec<i64>> = HashMap::new();
        for e in entries.iter().filter(|e| e["type"] == "credit") {
            if let Some(note) = e["note"].as_str() {
                credits
                    .entry(note)
                    .or_default()
                    .push(e["amount"].as_i64().unwrap());
            }
        }
        for (_, note, amount) in self.credits.iter().filter(|(a, ..)| *a == account) {
            assert_eq!(
                credits.get(note.as_str()),
                Some(&vec![*amount]),
                "{cx}: acknowledged credit {note:?} is not in the ledger exactly once"
            );
        }
        for (note, amounts) in &credits {
            assert_eq!(amounts.len(), 1, "{cx}: credit {note:?} was posted twice");
        }
    }
}

/// Send `writes` at the same time, one thread each; their answers in order.
fn send_together(gw: &Gateway, world: &World, writes: &[Write]) -> Vec<Result<Resp, String>> {
    if let [write] = writes {
        return vec![write.send(gw, world)];
    }
    std::thread::scope(|s| {
        let sending: Vec<_> = writes
            .iter()
            .map(|w| s.spawn(move || w.send(gw, world)))
            .collect();
        sending
            .into_iter()
            .map(|h| h.join().expect("a sending thread"))
            .collect()
    })
}

/// A cancel refused because the order is no longer fulfilled.
fn is_not_cancellable(r: &Resp) -> bool {
    r.status == 409 && r.json["code"] == "order_not_cancellable"
}

/// One client thread's state, kept across cycles: its generator and the orders it may
/// follow up on.
struct Client {
    index: usize,
    account: usize,
    rng: Rng,
    /// Acknowledged eSIM orders of a product delivered at once, not yet seen delivered.
    placed: Vec<String>,
    /// eSIMs delivered by its orders and not cancelled: candidates for a top-up.
    delivered: Vec<String>,
    /// Writes sent so far (numbers its idempotency keys).
    sent: u64,
}

impl Client {
    fn new(index: usize, seed: u64) -> Client {
        Client {
            index,
            account: index % RESELLERS,
            rng: Rng(seed),
            placed: Vec::new(),
            delivered: Vec::new(),
            sent: 0,
        }
    }

    /// Send writes until told to stop or the gateway dies; returns the writes that got no
    /// answer, if the process died under them.
    fn run(&mut self, gw: &Gateway, world: &World, stop: &AtomicBool, cx: &str) -> Vec<Write> {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(self.rng.below(THINK_MS + 1)));
            let write = match self.next_write(gw, world, cx) {
                Ok(Some(w)) => w,
                Ok(None) => continue,
                Err(_) => return Vec::new(), // died under a read: nothing unanswered
            };
            let writes = self.with_twin(write);
            let answers = send_together(gw, world, &writes);
            let mut unanswered = Vec::new();
            let mut succeeded = 0;
            for (w, answer) in writes.iter().zip(answers) {
                match answer {
                    Ok(r) if r.status == w.success() => {
                        succeeded += 1;
                        self.acknowledged(w, &r);
                        world.acked.lock().unwrap().record(w, &r);
                    }
                    // The twin that lost the race finds the order cancelled already.
                    Ok(r) if writes.len() == 2 && is_not_cancellable(&r) => {}
                    Ok(r) => panic!("{cx}: {w:?} answered {} {}", r.status, r.json),
                    Err(_) => unanswered.push(w.clone()),
                }
            }
            assert!(
                succeeded <= 1,
                "{cx}: both cancels of one order succeeded (refunded twice): {writes:?}"
            );
            if !unanswered.is_empty() {
                return unanswered;
            }
        }
        Vec::new()
    }

    /// `write`, and for one cancel in three a twin under another key, sent at the same
    /// time: a client that gave up waiting and retried with a fresh key. Exactly one of
    /// the two may cancel (and refund) the order.
    fn with_twin(&mut self, write: Write) -> Vec<Write> {
        if !matches!(write.what, What::Cancel { .. }) || self.rng.below(3) != 0 {
            return vec![write];
        }
        let twin = Write {
            idempotency_key: self.key(),
            ..write.clone()
        };
        vec![write, twin]
    }

    /// The next write: mostly orders, then cancels and top-ups of delivered orders, and
    /// credits. `Err` when the gateway died under the read a follow-up needs.
    fn next_write(
        &mut self,
        gw: &Gateway,
        world: &World,
        cx: &str,
    ) -> Result<Option<Write>, String> {
        Ok(match self.rng.below(100) {
            0..55 => Some(self.order()),
            55..75 => self.follow_up(gw, world, cx)?,
            75..90 if !self.delivered.is_empty() => Some(self.top_up()),
            75..90 => Some(self.order()),
            _ => Some(self.credit(world)),
        })
    }

    /// A fresh idempotency key, unique to this run, client and write.
    fn key(&mut self) -> String {
        self.sent += 1;
        format!("soak-{}-{}-{}", std::process::id(), self.index, self.sent)
    }

    fn order(&mut self) -> Write {
        let product = PRODUCTS[self.rng.below(PRODUCTS.len() as u64) as usize];
        let key = self.key();
        Write {
            account: self.account,
            what: What::Order,
            path: "/v1/orders".into(),
            body: json!({
                "product_id": product,
                "quantity": 1 + self.rng.below(2),
                "metadata": {"soak_key": key},
            }),
            idempotency_key: key,
        }
    }

    /// Look at one order this client placed: once delivered, cancel it (half the time) or
    /// keep its eSIMs for top-ups.
    fn follow_up(
        &mut self,
        gw: &Gateway,
        world: &World,
        cx: &str,
    ) -> Result<Option<Write>, String> {
        if self.placed.is_empty() {
            return Ok(Some(self.order()));
        }
        let id = self
            .placed
            .swap_remove(self.rng.below(self.placed.len() as u64) as usize);
        let key = &world.accounts[self.account].key;
        let r = gw.try_raw(
            "GET",
            &format!("/v1/orders/{id}"),
            Some(key),
            &[],
            None,
            None,
        )?;
        assert_eq!(
            r.status, 200,
            "{cx}: acknowledged order {id} is not readable: {:?}",
            r.json
        );
        match r.json["status"].as_str() {
            Some("fulfilled") => {}
            Some("failed") => return Ok(None),
            _ => {
                self.placed.push(id);
                return Ok(None);
            }
        }
        if self.rng.below(2) == 0 {
            let key = self.key();
            return Ok(Some(Write {
                account: self.account,
                path: format!("/v1/orders/{id}/cancel"),
                what: What::Cancel { order: id },
                body: json!({}),
                idempotency_key: key,
            }));
        }
        for esim in r.json["esims"].as_array().expect("esims") {
            self.delivered
                .push(esim["iccid"].as_str().expect("an ICCID").to_string());
        }
        Ok(None)
    }

    fn top_up(&mut self) -> Write {
        let iccid = self.delivered[self.rng.below(self.delivered.len() as u64) as usize].clone();
        let key = self.key();
        Write {
            account: self.account,
            path: format!("/v1/esims/{iccid}/topups"),
            what: What::TopUp { iccid },
            body: json!({"product_id": TOP_UP_PRODUCT}),
            idempotency_key: key,
        }
    }

    fn credit(&mut self, world: &World) -> Write {
        let key = self.key();
        let amount = 1 + self.rng.below(50_000) as i64;
        let note = format!("soak credit {key}");
        Write {
            account: self.account,
            path: format!(
                "/v1/admin/resellers/{}/credits",
                world.accounts[self.account].id
            ),
            what: What::Credit {
                note: note.clone(),
                amount,
            },
            body: json!({"amount": amount, "currency": "USD", "note": note, "mode": "test"}),
            idempotency_key: key,
        }
    }

    /// Remember what an acknowledged write makes possible next.
    fn acknowledged(&mut self, w: &Write, r: &Resp) {
        let delivered_at_once = !["sandbox:SBX-ASYNC-1GB-7D", "sandbox:SBX-XX-OOS"]
            .contains(&w.body["product_id"].as_str().unwrap_or_default());
        if matches!(w.what, What::Order) && delivered_at_once {
            self.placed
                .push(r.json["id"].as_str().expect("an order id").to_string());
        }
    }
}

/// What a cycle measured.
struct Report {
    kill_after: Duration,
    acked: usize,
    unanswered: usize,
    retries: Retries,
    orders: usize,
    /// From the restart to `/readyz` answering 200.
    ready: Duration,
    /// From the restart to every order in a final state.
    settled: Duration,
    audit: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "killed after {} ms; {} writes acknowledged; {} unanswered, retried after the \
             restart: {} replayed, {} run anew, {} still leased, {} cancelled by a twin; \
             {} orders in the books; ready {} ms after the restart, every order settled \
             after {} ms; audit {} ms",
            self.kill_after.as_millis(),
            self.acked,
            self.unanswered,
            self.retries.replayed,
            self.retries.ran,
            self.retries.leased,
            self.retries.cancelled_by_twin,
            self.orders,
            self.ready.as_millis(),
            self.settled.as_millis(),
            self.audit.as_millis(),
        )
    }
}

/// What the run adds up to.
#[derive(Default)]
struct Tally {
    /// Orders in the books after the last cycle.
    orders: usize,
    /// Writes that got no answer and were sent again.
    retried: usize,
}

impl Tally {
    fn add(&mut self, r: &Report) {
        self.orders = r.orders;
        self.retried += r.unanswered;
    }
}

/// What retrying the unanswered writes found.
#[derive(Default)]
struct Retries {
    /// Answered with the first attempt's outcome (it was durable).
    replayed: usize,
    /// Run now (the first attempt left nothing durable).
    ran: usize,
    /// Refused as still running: the crashed attempt's claim holds its key for a lease.
    leased: usize,
    /// A cancel refused because its twin (sent with another key) cancelled the order.
    cancelled_by_twin: usize,
}

/// When a check fails, keeps what a bug report needs: the gateway is killed and its data
/// directory copied (start `simgate serve --data-dir` on the copy to see the state the
/// audit saw), its logs are written beside it (that of the killed process too, after a
/// restart), and the tail of the log, without the request log, is shown.
struct PostMortem<'a> {
    gw: &'a Gateway,
    /// The log of the process that was killed, once restarted.
    before: Option<String>,
    /// Seed and cycle, which name the folder.
    cx: &'a str,
}

impl Drop for PostMortem<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.gw.sigkill();
        let name: String = self
            .cx
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let kept = std::env::temp_dir().join(format!("simgate-soak-{name}"));
        let log = self.gw.log();
        let _ = std::fs::create_dir_all(&kept);
        let _ = std::fs::write(kept.join("simgate.log"), &log);
        if let Some(before) = &self.before {
            let _ = std::fs::write(kept.join("simgate-before-the-kill.log"), before);
            eprintln!(
                "--- log of the killed process (tail, no request log) ---\n{}",
                tail(before, 40)
            );
        }
        eprintln!(
            "--- gateway log (tail, no request log) ---\n{}",
            tail(&log, 40)
        );
        match copy_dir(self.gw.data_dir.path(), &kept.join("data")) {
            Ok(()) => eprintln!("data directory and logs kept in {}", kept.display()),
            Err(e) => eprintln!(
                "logs kept in {}; copying the data failed: {e}",
                kept.display()
            ),
        }
    }
}

/// The last `n` lines of `text` that are not the per-request log.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("simgate::api: request "))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Copy directory `from` to `to`, recursively.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A small seeded generator (SplitMix64): the soak needs replayable draws, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

/// A number from the environment, if set; a value that is not one is a mistake to stop on.
fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// A seed from the clock, for runs that do not ask for one.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos() as u64
}
