//! Time to ready after a crash, with many orders in the store: this build beside another.
//!
//! `cargo bench -p simgate --bench recovery` fills a sled data directory through the
//! store itself with `RECOVERY_ORDERS` orders (default 1,000,000), each accepted and
//! settled with one eSIM as fulfilment does it (a hold, a capture, the order, the eSIM,
//! its event), taking checkpoints as the gateway does (every 20,000 entries) and leaving
//! the worst case after the last one: 19,998 entries written since. It then drops the
//! store without closing it, as a crash would, and starts the real `simgate serve` on the
//! directory, timing from the spawn to the first `200` from `/readyz`.
//!
//! `BENCH_BASE_BIN=/path/to/simgate` starts that build first, on the same directory, the
//! same way (a build from before checkpoints reads the whole ledger; it writes no ledger
//! entry, so the directory it leaves is the one this build then opens).
//!
//! `RECOVERY_DIR` keeps the filled directory there (and reuses it if it holds the same
//! number of orders); by default it is a temporary directory under `target/`, removed at
//! the end. Expect a few GB of disk per million orders.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use simgate::domain::ids::OrderId;
use simgate::domain::ids::ResellerId;
use simgate::domain::ledger::{EntryKind, LedgerEntry};
use simgate::domain::orders::{EsimRecord, Order, OrderKind, OrderSpec, OrderStatus};
use simgate::domain::store::{Commit, Store};
use simgate::domain::supplier::{Money, PlanState, ProfileState};
use simgate::store::SledStore;

/// Entries between checkpoints, as `[store] checkpoint_every_entries` defaults to.
const CHECKPOINT_EVERY: usize = 20_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let orders: usize = env_or("RECOVERY_ORDERS", 1_000_000);
    let (dir, _temp) = match std::env::var_os("RECOVERY_DIR") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("recovery-bench")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("a temporary directory");
            (t.path().to_path_buf(), Some(t))
        }
    };
    let marker = dir.join("filled-orders");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(&orders.to_string()) {
        let started = Instant::now();
        fill(&dir, orders);
        std::fs::write(&marker, orders.to_string()).expect("writing the marker");
        eprintln!(
            "filled {orders} orders in {:.0} s ({})",
            started.elapsed().as_secs_f64(),
            size_of_dir(&dir.join("db"))
        );
    }
    let mut rows = Vec::new();
    if let Some(base) = std::env::var_os("BENCH_BASE_BIN") {
        rows.push(("base", time_to_ready(Path::new(&base), &dir)));
    }
    rows.push((
        "this build",
        time_to_ready(Path::new(env!("CARGO_BIN_EXE_simgate")), &dir),
    ));
    println!("\n| build | orders | time to ready after a crash |");
    println!("|---|---|---|");
    for (name, t) in &rows {
        println!("| {name} | {orders} | {:.2} s |", t.as_secs_f64());
    }
    if let [(_, base), (_, this)] = rows.as_slice() {
        println!(
            "\nthis build / base: {:.3}",
            this.as_secs_f64() / base.as_secs_f64()
        );
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fill `dir` with `orders` settled orders over 50 resellers, then drop the store
/// without closing it.
fn fill(dir: &Path, orders: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let store = Arc::new(SledStore::open(&dir.join("db"), 512).expect("opening the store"));
        let resellers: Vec<ResellerId> = (0..50).map(|_| ResellerId::new()).collect();
        for r in &resellers {
            let credit = LedgerEntry::new(*r, EntryKind::Credit, i64::MAX / 4, "USD", None, 1);
            store
                .commit(&Commit::credit(credit))
                .await
                .unwrap()
                .unwrap();
        }
        // Two entries per order, a checkpoint every 10,000 orders, and the most entries
        // after the last one that the gateway would leave: one short of the next.
        let per_checkpoint = CHECKPOINT_EVERY / 2;
        let tail = (per_checkpoint - 1).min(orders);
        let mut done = 0usize;
        while done < orders {
            let phase_end = if done < orders - tail {
                orders - tail
            } else {
                orders
            };
            let n = 2_000.min(phase_end - done);
            fill_batch(&store, &resellers, done, n).await;
            done += n;
            if done <= orders - tail
                && (done.is_multiple_of(per_checkpoint) || done == orders - tail)
            {
                store.checkpoint().expect("a checkpoint");
            }
            if done.is_multiple_of(100_000) {
                eprintln!("{done} orders");
            }
        }
        store.durable().await.expect("durable");
        // Dropped without `close`: the state a crash leaves.
    });
}

/// Orders `first..first + n`, from four tasks at once.
async fn fill_batch(store: &Arc<SledStore>, resellers: &[ResellerId], first: usize, n: usize) {
    let workers = 4;
    let share = n.div_ceil(workers);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (store, resellers) = (store.clone(), resellers.to_vec());
        let range = (first + w * share)..(first + ((w + 1) * share).min(n));
        tasks.push(tokio::spawn(async move {
            for i in range {
                settle_one(store.as_ref(), resellers[i % resellers.len()], i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a filling task");
    }
}

/// Accept and settle order number `i` with one eSIM.
async fn settle_one(store: &SledStore, reseller: ResellerId, i: usize) {
    let spec = OrderSpec {
        reseller,
        product_id: "sandbox:SBX-JP-5GB-30D".into(),
        plugin: "sandbox".into(),
        sku: "SBX-JP-5GB-30D".into(),
        quantity: 1,
        unit_price: Money {
            minor: 450,
            currency: "USD".into(),
        },
        kind: OrderKind::Esim,
    };
    let accepted = Order::accepted(spec, OrderId::new(), None, 1_795_000_000_000);
    store
        .commit(&Commit::accept(accepted.clone()).expect("in range"))
        .await
        .expect("the store")
        .expect("covered");
    let iccid = format!("89990{i:014}");
    let esim = EsimRecord {
        iccid: iccid.clone(),
        order: accepted.id,
        reseller,
        plugin: "sandbox".into(),
        sealed_activation: vec![7; 120],
        confirmation_code_required: false,
        luhn_valid: true,
        profile: ProfileState::Released,
        plan: PlanState::Ready,
        raw_status: "GOT_RESOURCE".into(),
        created_at_ms: 1_795_000_000_500,
        usage_told_pct: 0,
    };
    let mut fulfilled = accepted;
    fulfilled.status = OrderStatus::Fulfilled;
    fulfilled.iccids = vec![iccid];
    store
        .commit(&Commit::settle(fulfilled, EntryKind::Capture, vec![esim]).expect("in range"))
        .await
        .expect("the store")
        .expect("settled");
}

/// Start `bin` on `dir` and time until `/readyz` answers 200; then stop it with `kill -9`.
fn time_to_ready(bin: &Path, dir: &Path) -> Duration {
    let help = Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .expect("running the gateway's help");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("SIMGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A build that makes a demo reseller unless told not to would post its credit.
    if String::from_utf8_lossy(&help.stdout).contains("--no-demo") {
        cmd.arg("--no-demo");
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("starting the gateway");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut all);
        all
    });
    let mut addr = None;
    for line in stdout.lines() {
        let line = line.expect("the gateway's stdout");
        if let Some(a) = line.strip_prefix("simgate listening on http://") {
            addr = Some(a.trim().to_string());
            break;
        }
    }
    let addr = addr.expect("the gateway printed its address");
    loop {
        if ready(&addr) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "not ready after 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join().unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("store open") || l.contains("ledger") || l.contains("ready"))
    {
        eprintln!("  {}: {line}", bin.display());
    }
    took
}

/// Whether `GET /readyz` answers 200.
fn ready(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut status = String::new();
    let _ = BufReader::new(s).read_line(&mut status);
    status.starts_with("HTTP/1.1 200")
}

fn size_of_dir(dir: &Path) -> String {
    let bytes: u64 = walk(dir);
    format!("{:.1} GB of sled files", bytes as f64 / 1e9)
}

fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
