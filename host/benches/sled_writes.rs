//! Why the store writes one key at a time: sled write patterns under group commit.
//!
//! `cargo bench -p simgate --bench sled_writes` runs, side by side on fresh databases,
//! the writes one order makes in three shapes, with 64 writer threads that each wait
//! for a shared flush after every step (group commit, as the gateway does):
//!
//! - `transaction`: two multi-tree sled transactions per order (accept, settle);
//! - `batch`: two `apply_batch` calls on one tree with prefixed keys;
//! - `single-key`: the same records as single-key inserts (what `SledStore` does).
//!
//! Transactions and batches take sled's process-wide write lock, which waits for every
//! flush in progress; single-key inserts do not. Environment: `BENCH_SECONDS` (3).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

const THREADS: usize = 64;

/// Record sizes of one order, roughly as the gateway stores them (JSON).
const ORDER: usize = 450;
const ENTRY: usize = 250;
const ESIM: usize = 450;
const CLAIM: usize = 200;

/// Flushes shared by every writer waiting at the time (group commit).
struct GroupFlush {
    requested: AtomicU64,
    done: Mutex<u64>,
    changed: Condvar,
}

impl GroupFlush {
    fn wait(&self) {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut done = self.done.lock().unwrap();
        while *done < ticket {
            done = self.changed.wait(done).unwrap();
        }
    }
}

fn run(shape: &str, seconds: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .unwrap(),
    );
    let names = ["orders", "ledger", "esims", "claims"];
    let trees: Arc<Vec<sled::Tree>> =
        Arc::new(names.iter().map(|n| db.open_tree(n).unwrap()).collect());
    let one = db.open_tree("one").unwrap();
    let flush = Arc::new(GroupFlush {
        requested: AtomicU64::new(0),
        done: Mutex::new(0),
        changed: Condvar::new(),
    });
    let (stop, writers_done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let flusher = {
        let (db, flush, writers_done) = (db.clone(), flush.clone(), writers_done.clone());
        std::thread::spawn(move || {
            let mut flushed = 0;
            while !writers_done.load(Ordering::Relaxed) {
                let target = flush.requested.load(Ordering::Acquire);
                if target == flushed {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                db.flush().unwrap();
                flushed = target;
                *flush.done.lock().unwrap() = target;
                flush.changed.notify_all();
            }
        })
    };
    let (orders, next_id) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let writers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (trees, one, flush, stop, orders, next_id) = (
                trees.clone(),
                one.clone(),
                flush.clone(),
                stop.clone(),
                orders.clone(),
                next_id.clone(),
            );
            let shape = shape.to_string();
            std::thread::spawn(move || {
                let (order, entry, esim, claim) = (
                    vec![1u8; ORDER],
                    vec![2u8; ENTRY],
                    vec![3u8; ESIM],
                    vec![4u8; CLAIM],
                );
                while !stop.load(Ordering::Relaxed) {
                    let id = |n: u64| (n | 1 << 62).to_be_bytes();
                    let [o, hold, capture, c] =
                        [0; 4].map(|_| id(next_id.fetch_add(1, Ordering::Relaxed)));
                    match shape.as_str() {
                        "transaction" => {
                            let t: Vec<&sled::Tree> = trees.iter().collect();
                            t[..]
                                .transaction(|t| {
                                    t[3].insert(&c, claim.clone())?;
                                    t[1].insert(&hold, entry.clone())?;
                                    t[0].insert(&o, order.clone())?;
                                    Ok::<_, ConflictableTransactionError<()>>(())
                                })
                                .unwrap();
                            flush.wait();
                            t[..]
                                .transaction(|t| {
                                    t[1].insert(&capture, entry.clone())?;
                                    t[2].insert(&capture, esim.clone())?;
                                    t[0].insert(&o, order.clone())?;
                                    Ok::<_, ConflictableTransactionError<()>>(())
                                })
                                .unwrap();
                            flush.wait();
                        }
                        "batch" => {
                            let k = |prefix: u8, key: &[u8; 8]| [&[prefix][..], key].concat();
                            let mut b = sled::Batch::default();
                            b.insert(k(3, &c), claim.clone());
                            b.insert(k(1, &hold), entry.clone());
                            b.insert(k(0, &o), order.clone());
                            one.apply_batch(b).unwrap();
                            flush.wait();
                            let mut b = sled::Batch::default();
                            b.insert(k(1, &capture), entry.clone());
                            b.insert(k(2, &capture), esim.clone());
                            b.insert(k(0, &o), order.clone());
                            one.apply_batch(b).unwrap();
                            flush.wait();
                        }
                        _ => {
                            trees[3].insert(c, claim.clone()).unwrap();
                            let mut commit = entry.clone();
                            commit.extend_from_slice(&order);
                            trees[1].insert(hold, commit).unwrap();
                            flush.wait();
                            let mut commit = entry.clone();
                            commit.extend_from_slice(&order);
                            commit.extend_from_slice(&esim);
                            trees[1].insert(capture, commit).unwrap();
                            trees[2].insert(capture, esim.clone()).unwrap();
                            trees[0].insert(o, order.clone()).unwrap();
                            flush.wait();
                        }
                    }
                    orders.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let n = orders.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for w in writers {
        w.join().unwrap();
    }
    writers_done.store(true, Ordering::Relaxed);
    flusher.join().unwrap();
    n as f64 / elapsed.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` probes bench binaries; nothing to list or test here.
        return;
    }
    let seconds = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "sled write shapes: {THREADS} writers, group flush after every step, {seconds} s each"
    );
    println!("| shape | orders/s | vs single-key |");
    println!("|---|---:|---:|");
    let results: Vec<(&str, f64)> = ["single-key", "transaction", "batch"]
        .into_iter()
        .map(|shape| (shape, run(shape, seconds)))
        .collect();
    let base = results[0].1;
    for (shape, rate) in results {
        println!("| {shape} | {rate:.0} | {:.2} |", rate / base);
    }
}
