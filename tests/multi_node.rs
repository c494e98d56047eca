//! Two gateway nodes on one PostgreSQL database: what one node accepts the other serves,
//! an `Idempotency-Key` sent to both at once makes one order, every job runs once with
//! both workers running, `kill -9` of one node loses nothing acknowledged while the other
//! keeps serving and finishes the killed node's work on its own, the admin status shows
//! each node and the plugin versions it serves, and a node with other key files is
//! refused.
//!
//! Each node is a real `simgate serve` with its own data directory and plugins folder
//! (both with the sandbox plugin) and the same key files, as nodes sharing a database
//! must. Skipped, with a notice, unless `SIMGATE_TEST_PG_URL` names a PostgreSQL server
//! (`tests/pg/cluster.sh` starts one; `./dev test` does it for you).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use simgate_test_support::{
    Gateway, GatewayBuilder, Refusals, Value, json, test_pg_url, unique_key,
};

/// Orders answer at once (no waiting for fulfilment), pending orders are polled often (so
/// both workers have jobs to race for), and nothing is rate limited. Nodes beat every
/// 300 ms (gone after four missed beats), and orders left without a next step are taken
/// up after a second; job leases keep their default of ten minutes, so a killed node's
/// jobs are taken up because its node is gone, not because a lease ran out.
const CONFIG: &str = "[orders]\nsync_wait_ms = 0\npoll_interval_ms = 300\ndemo_credit_minor = 100000000\n[http]\nrate_limit_per_second = 100000.0\nrate_limit_burst = 100000.0\n[jobs]\nheartbeat_ms = 300\nadopt_after_secs = 1\n";

const BIN: &str = env!("CARGO_BIN_EXE_simgate");

/// Node A on a fresh database, and node B joining it (with A's keys); `None` when no
/// PostgreSQL server is configured.
fn two_nodes(test: &str) -> Option<(Gateway, Gateway)> {
    let server = test_pg_url(test)?;
    let a = GatewayBuilder::new(BIN)
        .config(CONFIG)
        .postgres(&server)
        .start();
    let b = join(&a, None);
    Some((a, b))
}

/// A node on `other`'s database (on `dir` when restarting one), knowing its keys.
fn join(other: &Gateway, dir: Option<tempfile::TempDir>) -> Gateway {
    let url = other.store_url.clone().expect("a PostgreSQL node");
    let builder = GatewayBuilder::new(BIN)
        .config(CONFIG)
        .postgres_database(&url);
    let builder = match dir {
        Some(dir) => builder.data_dir(dir),
        None => builder.keys_from(other),
    };
    let mut node = builder.start();
    node.admin_key = other.admin_key.clone();
    node.demo_key = other.demo_key.clone();
    node
}

/// How long the orders of a test may take to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

/// The products the load threads order, in turn.
const PRODUCTS: [&str; 2] = ["sandbox:SBX-ASYNC-1GB-7D", "sandbox:SBX-US-5GB-30D"];

#[test]
fn an_order_made_on_one_node_is_read_on_the_other() {
    let Some((a, b)) = two_nodes("an_order_made_on_one_node_is_read_on_the_other") else {
        return;
    };
    let id = a.place_order_as(
        &a.demo_key,
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
    );
    let seen = b.wait_order_as(&b.demo_key, &id, |o| o["status"] == "fulfilled");
    assert_eq!(seen["id"], id.as_str());
    assert!(!seen["esims"].as_array().unwrap().is_empty());
    assert_eq!(a.balance_of(&a.demo_key), b.balance_of(&b.demo_key));
}

#[test]
fn one_idempotency_key_sent_to_both_nodes_at_once_makes_one_order() {
    let Some((a, b)) = two_nodes("one_idempotency_key_sent_to_both_nodes_at_once_makes_one_order")
    else {
        return;
    };
    let rounds = 25;
    let body = json!({"product_id": "sandbox:SBX-US-5GB-30D"});
    let barrier = Barrier::new(2);
    for _ in 0..rounds {
        let idem = unique_key();
        let send = |node: &Gateway| {
            barrier.wait();
            let r = node.post_idem_as(&node.demo_key, "/v1/orders", &body, &idem);
            match r.status {
                200..=202 => Some(r.json["id"].as_str().unwrap().to_string()),
                // The other node holds the key's claim until its request ends.
                409 => None,
                s => panic!("unexpected {s} {:?}", r.json),
            }
        };
        let (send, a, b) = (&send, &a, &b);
        let ids: Vec<Option<String>> = std::thread::scope(|s| {
            let on_a = s.spawn(move || send(a));
            let on_b = s.spawn(move || send(b));
            vec![on_a.join().unwrap(), on_b.join().unwrap()]
        });
        let named: BTreeSet<_> = ids.into_iter().flatten().collect();
        assert_eq!(named.len(), 1, "both answers name one order: {named:?}");
    }
    let orders = b.settle_all(&b.demo_key, SETTLE_WITHIN);
    assert_eq!(orders.len(), rounds, "one order per key");
    a.assert_ledger_settles(&a.demo_key, &orders);
}

#[test]
fn each_job_runs_once_with_both_nodes_running_workers() {
    let Some((a, b)) = two_nodes("each_job_runs_once_with_both_nodes_running_workers") else {
        return;
    };
    // The async product is polled until it delivers: each poll is a job either node's
    // worker may claim.
    let body = json!({"product_id": "sandbox:SBX-ASYNC-1GB-7D"});
    let placed: Vec<String> = (0..30)
        .map(|_| a.place_order_as(&a.demo_key, &body))
        .collect();
    let orders = b.settle_all(&b.demo_key, SETTLE_WITHIN);
    assert_eq!(orders.len(), placed.len());
    b.assert_ledger_settles(&b.demo_key, &orders);
}

#[test]
fn kill_9_of_one_node_loses_no_acknowledged_order_and_the_other_keeps_serving() {
    let Some((a, b)) =
        two_nodes("kill_9_of_one_node_loses_no_acknowledged_order_and_the_other_keeps_serving")
    else {
        return;
    };
    let key = a.demo_key.clone();
    let acknowledged = Mutex::new(BTreeSet::new());
    let after_kill = AtomicUsize::new(0);
    let (killed, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        for t in 0..6 {
            let node = if t % 2 == 0 { &a } else { &b };
            let (key, acknowledged, after_kill, killed, stop) =
                (&key, &acknowledged, &after_kill, &killed, &stop);
            s.spawn(move || {
                node.keep_ordering(key, &PRODUCTS, t, stop, Refusals::Never, |id| {
                    acknowledged.lock().unwrap().insert(id);
                    if killed.load(Ordering::Relaxed) {
                        after_kill.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        a.sigkill();
        killed.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        acknowledged.len() >= 20,
        "orders were in flight: {}",
        acknowledged.len()
    );
    assert!(
        after_kill.load(Ordering::Relaxed) > 0,
        "the surviving node kept taking orders"
    );
    // Every acknowledged order is on the survivor, which alone finishes everything: the
    // jobs the killed node had in hand (its heartbeats stopped) and the orders whose
    // first step died with it (no job yet).
    let orders = b.assert_acknowledged_kept_and_settled(
        &key,
        &acknowledged,
        "a node was killed",
        SETTLE_WITHIN,
    );
    let status = b.call("GET", "/v1/admin/nodes", Some(&b.admin_key), None);
    let gone: Vec<_> = status.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "gone")
        .collect();
    assert_eq!(gone.len(), 1, "the killed node is gone: {:?}", status.json);
    // The killed node restarts on its data directory and finds nothing left to do.
    let a = join(&b, Some(a.kill()));
    let again = a.settle_all(&key, SETTLE_WITHIN);
    assert_eq!(again.len(), orders.len());
    a.assert_ledger_settles(&key, &again);
}

#[test]
fn the_admin_status_shows_each_node_and_the_plugin_version_it_serves() {
    let Some((a, b)) =
        two_nodes("the_admin_status_shows_each_node_and_the_plugin_version_it_serves")
    else {
        return;
    };
    let nodes = |gw: &Gateway| {
        let r = gw.call("GET", "/v1/admin/nodes", Some(&gw.admin_key), None);
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json["data"].as_array().unwrap().clone()
    };
    let seen = nodes(&a);
    assert_eq!(seen.len(), 2, "{seen:?}");
    let plugins_of_a = a.call("GET", "/v1/admin/plugins", Some(&a.admin_key), None);
    let version = plugins_of_a.json["data"][0]["version"].clone();
    assert!(version.is_string());
    for node in &seen {
        assert_eq!(node["status"], "alive");
        assert_eq!(node["plugins"][0]["id"], "sandbox");
        assert_eq!(node["plugins"][0]["state"], "serving");
        assert_eq!(node["plugins"][0]["version"], version);
    }
    let this = |list: &[Value]| {
        list.iter()
            .filter(|n| n["this_node"] == true)
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (from_a, from_b) = (this(&seen), this(&nodes(&b)));
    assert_eq!((from_a.len(), from_b.len()), (1, 1));
    assert_ne!(from_a, from_b, "each answers as itself");
    // Resellers never reach admin routes (404, not 403).
    let r = a.call("GET", "/v1/admin/nodes", Some(&a.demo_key), None);
    assert_eq!(r.status, 404);
    // b stops cleanly: a sees it stopped at once, not gone after its beats run out.
    let b_id = from_b[0].clone();
    let (status, _dir) = b.terminate();
    assert!(status.success());
    let b_now = nodes(&a)
        .into_iter()
        .find(|n| n["id"] == b_id.as_str())
        .unwrap();
    assert_eq!(b_now["status"], "stopped");
}

#[test]
fn a_node_with_other_key_files_is_refused() {
    let Some(server) = test_pg_url("a_node_with_other_key_files_is_refused") else {
        return;
    };
    let a = GatewayBuilder::new(BIN)
        .config(CONFIG)
        .postgres(&server)
        .start();
    let url = a.store_url.clone().unwrap();
    // A second node that was not given a's key files makes keys of its own.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nbackend = \"postgres\"\nurl = {}\n",
            Value::from(url.as_str())
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a node with other keys must not serve"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pepper.key, master.key and audit.key"),
        "says why: {stderr}"
    );
    // The first node is unharmed.
    let r = a.call("GET", "/v1/orders", Some(&a.demo_key), None);
    assert_eq!(r.status, 200);
}

/// `tests/pg/cluster.sh` with `args`; its last line of output.
fn cluster(args: &[&std::ffi::OsStr]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/pg/cluster.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_database_crash_under_load_loses_no_acknowledged_order() {
    // A server of its own, since this test crashes it.
    if test_pg_url("a_database_crash_under_load_loses_no_acknowledged_order").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("pg");
    let url = cluster(&[cluster_dir.as_os_str()]);
    let gw = GatewayBuilder::new(BIN)
        .config(CONFIG)
        .postgres(&url)
        .start();
    let key = gw.demo_key.clone();
    let acknowledged = Mutex::new(BTreeSet::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (gw, key, acknowledged, stop) = (&gw, &key, &acknowledged, &stop);
            s.spawn(move || {
                // While the database is down, orders are refused, never acknowledged; the
                // gateway itself must not die.
                let died = gw.keep_ordering(key, &PRODUCTS, t, stop, Refusals::WhileDown, |id| {
                    acknowledged.lock().unwrap().insert(id);
                });
                assert!(!died, "the gateway died with its database");
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        // No checkpoint, and whatever WAL was not yet written is gone.
        cluster(&["crash".as_ref(), cluster_dir.as_os_str()]);
        std::thread::sleep(Duration::from_millis(500));
        cluster(&[cluster_dir.as_os_str()]);
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        acknowledged.len() >= 20,
        "orders were in flight: {}",
        acknowledged.len()
    );
    gw.assert_acknowledged_kept_and_settled(
        &key,
        &acknowledged,
        "the database crashed",
        SETTLE_WITHIN,
    );
    drop(gw);
    cluster(&["stop".as_ref(), cluster_dir.as_os_str()]);
}
