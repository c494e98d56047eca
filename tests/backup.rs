//! Backups of a running gateway: `simgate backup DIR` while orders are being placed, then
//! `simgate restore` into a new data directory and a gateway started on it. Every order
//! acknowledged before the backup began is there, nothing is stuck, and the ledger adds up.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use simgate_test_support::{GatewayBuilder, json, on_postgres, unique_key, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");
const CONFIG: &str = "[orders]\nsync_wait_ms = 0\npoll_interval_ms = 500\ndemo_credit_minor = 100000000\n\
                      [http]\nrate_limit_per_second = 100000.0\nrate_limit_burst = 100000.0\n";

fn simgate(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("running simgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
#[test]
fn a_backup_taken_under_load_restores_every_acknowledged_order_and_a_ledger_that_adds_up() {
    if on_postgres(
        "a_backup_taken_under_load_restores_every_acknowledged_order_and_a_ledger_that_adds_up",
    ) {
        return;
    }
    let gw = GatewayBuilder::new(BIN).config(CONFIG).start();
    let key = gw.demo_key.clone();
    let acknowledged: Mutex<Vec<(Instant, String)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let backup_dir = tempfile::tempdir().unwrap();
    let folder = backup_dir.path().join("nightly");
    let backup_began = std::thread::scope(|s| {
        for t in 0..4 {
            let (gw, key, acknowledged, stop) = (&gw, &key, &acknowledged, &stop);
            s.spawn(move || {
                let products = ["sandbox:SBX-US-5GB-30D", "sandbox:SBX-ASYNC-1GB-7D"];
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"product_id": products[i % 2], "quantity": 1});
                    let r = gw.post_idem_as(key, "/v1/orders", &body, &unique_key());
                    if (200..300).contains(&r.status) {
                        let id = r.json["id"].as_str().unwrap().to_string();
                        acknowledged.lock().unwrap().push((Instant::now(), id));
                    }
                    i += 1;
                }
            });
        }
        wait_for("orders under way", || {
            (acknowledged.lock().unwrap().len() > 40).then_some(())
        });
        let began = Instant::now();
        let (ok, out) = simgate(&[
            "backup".as_ref(),
            folder.as_os_str(),
            "--data-dir".as_ref(),
            gw.data_dir.path().as_os_str(),
            "--url".as_ref(),
            gw.base.as_ref(),
        ]);
        assert!(ok, "simgate backup: {out}");
        assert!(
            out.contains("asking it at"),
            "taken from the running gateway: {out}"
        );
        // More orders after the copy: they are not in it, and must not be needed.
        let after = acknowledged.lock().unwrap().len();
        wait_for("orders after the backup", || {
            (acknowledged.lock().unwrap().len() > after + 20).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        began
    });
    let before: Vec<String> = acknowledged
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at < backup_began)
        .map(|(_, id)| id.clone())
        .collect();
    assert!(before.len() > 40);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for name in [
            "db.sgbk",
            "master.key",
            "pepper.key",
            "audit.key",
            "backup.json",
        ] {
            let mode = std::fs::metadata(folder.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} is readable only by its owner");
        }
    }
    assert!(
        std::fs::read_dir(gw.data_dir.path().join("backups"))
            .unwrap()
            .next()
            .is_none(),
        "the gateway's copy was moved into the backup folder"
    );
    drop(gw);

    let restored = tempfile::tempdir().unwrap();
    let (ok, out) = simgate(&[
        "restore".as_ref(),
        folder.as_os_str(),
        "--data-dir".as_ref(),
        restored.path().as_os_str(),
    ]);
    assert!(ok, "simgate restore: {out}");
    let (again, out) = simgate(&[
        "restore".as_ref(),
        folder.as_os_str(),
        "--data-dir".as_ref(),
        restored.path().as_os_str(),
    ]);
    assert!(!again && out.contains("new data directory"), "{out}");
    let gw = GatewayBuilder::new(BIN)
        .config(CONFIG)
        .data_dir(restored)
        .start();

    // Every order acknowledged before the backup began is there, and none stays open.
    let orders = wait_for("every restored order to settle", || {
        let orders = gw.all_pages(&key, "/v1/orders");
        orders
            .iter()
            .all(|o| ["fulfilled", "failed", "cancelled"].contains(&o["status"].as_str().unwrap()))
            .then_some(orders)
    });
    let listed: std::collections::BTreeSet<&str> =
        orders.iter().map(|o| o["id"].as_str().unwrap()).collect();
    for id in &before {
        assert!(
            listed.contains(id.as_str()),
            "acknowledged order {id} is in the backup"
        );
    }

    // The ledger invariant: each order one hold and at most one capture or release, and
    // the balance is what the entries add up to.
    let entries = gw.all_pages(&key, "/v1/balance/transactions");
    let mut per_order: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let (mut available, mut held) = (0i64, 0i64);
    for e in &entries {
        let amount = e["amount"].as_i64().unwrap();
        match e["type"].as_str().unwrap() {
            "credit" | "refund" => available += amount,
            "hold" => {
                available -= amount;
                held += amount;
            }
            "capture" => held -= amount,
            "release" => {
                held -= amount;
                available += amount;
            }
            other => panic!("unknown entry type {other}"),
        }
        if let Some(order) = e["order_id"].as_str() {
            per_order
                .entry(order)
                .or_default()
                .push(e["type"].as_str().unwrap());
        }
    }
    for (order, kinds) in &per_order {
        let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(count("hold"), 1, "{order}: {kinds:?}");
        assert!(
            count("capture") + count("release") <= 1,
            "{order}: {kinds:?}"
        );
    }
    assert_eq!(gw.balance_of(&key), (available, held));
    assert_eq!(held, 0, "nothing is left held once every order settled");
}
