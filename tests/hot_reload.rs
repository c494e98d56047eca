//! Hot reload, black box: the real binary watches its plugins folder while client threads
//! keep ordering, and the test rewrites the folder the ways operators and deploy tools do
//! (copy in place in either order, temp file + rename, delete and recreate the folder),
//! sometimes with a broken package. No request may fail; good versions must take over,
//! broken ones must be refused and shown, and the previous version must keep serving.
//!
//! Two good builds are told apart by version: `sandbox` (0.1.0) and `sandbox-next` (the
//! same source as 0.2.0, see plugins/testing/README.md); the generation number on the
//! status endpoint tells reloads of the same version apart.
//!
//! The benchmark behind BENCHMARKS.md ("Hot reload") is the ignored test at the end:
//! `cargo test -p simgate --test hot_reload -- --ignored --nocapture`.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use simgate_test_support::{Gateway, GatewayBuilder, Resp, Value, json, pack};

/// The product the load orders (instant delivery in both versions).
const PRODUCT: &str = "sandbox:SBX-US-5GB-30D";
/// Client threads ordering during the reloads.
const CLIENTS: usize = 4;
/// How long a test waits for the watcher before giving up (not a performance bound:
/// debug builds on a busy machine are slow; measured times are printed instead).
const PATIENCE: Duration = Duration::from_secs(60);

/// A deployable package: the plugin folder's two files.
#[derive(Clone)]
struct Package {
    wasm: Vec<u8>,
    manifest: String,
}

impl Package {
    /// Pack plugin crate `name` with the real CLI into a scratch folder and read it back.
    fn build(bin: &Path, name: &str) -> Package {
        let scratch = tempfile::tempdir().unwrap();
        pack(bin, name, scratch.path());
        let dir = scratch.path().join("sandbox");
        Package {
            wasm: std::fs::read(dir.join("sandbox.wasm")).unwrap(),
            manifest: std::fs::read_to_string(dir.join("plugin.toml")).unwrap(),
        }
    }

    /// The same manifest naming a component whose bytes are `wasm` (digest matches).
    fn with_wasm(&self, wasm: Vec<u8>) -> Package {
        let digest = sha256_hex(&wasm);
        let manifest = self
            .manifest
            .lines()
            .map(|l| {
                if l.starts_with("sha256 =") {
                    format!("sha256 = \"{digest}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        Package { wasm, manifest }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// How a deploy tool puts a package into the plugin folder.
#[derive(Debug, Clone, Copy)]
enum Writer {
    /// Overwrite both files in place (truncate + write), component first.
    InPlaceWasmFirst,
    /// Overwrite both files in place, manifest first.
    InPlaceManifestFirst,
    /// Write each file to a temp name in the folder, then rename it over the old one.
    TempThenRename,
    /// Remove the whole folder, create it again, write both files.
    DeleteAndRecreate,
    /// Stage a complete folder as `.sandbox.staging`, remove the old one, rename it in.
    StageFolderThenSwap,
}

impl Writer {
    fn write(self, plugins: &Path, p: &Package) {
        let dir = plugins.join("sandbox");
        let wasm = dir.join("sandbox.wasm");
        let manifest = dir.join("plugin.toml");
        match self {
            Writer::InPlaceWasmFirst => {
                std::fs::write(&wasm, &p.wasm).unwrap();
                std::fs::write(&manifest, &p.manifest).unwrap();
            }
            Writer::InPlaceManifestFirst => {
                std::fs::write(&manifest, &p.manifest).unwrap();
                std::fs::write(&wasm, &p.wasm).unwrap();
            }
            Writer::TempThenRename => {
                std::fs::write(dir.join(".sandbox.wasm.partial"), &p.wasm).unwrap();
                std::fs::rename(dir.join(".sandbox.wasm.partial"), &wasm).unwrap();
                std::fs::write(dir.join(".plugin.toml.partial"), &p.manifest).unwrap();
                std::fs::rename(dir.join(".plugin.toml.partial"), &manifest).unwrap();
            }
            Writer::DeleteAndRecreate => {
                std::fs::remove_dir_all(&dir).unwrap();
                std::fs::create_dir(&dir).unwrap();
                std::fs::write(&wasm, &p.wasm).unwrap();
                std::fs::write(&manifest, &p.manifest).unwrap();
            }
            Writer::StageFolderThenSwap => {
                let staging = plugins.join(".sandbox.staging");
                std::fs::create_dir(&staging).unwrap();
                std::fs::write(staging.join("sandbox.wasm"), &p.wasm).unwrap();
                std::fs::write(staging.join("plugin.toml"), &p.manifest).unwrap();
                std::fs::remove_dir_all(&dir).unwrap();
                std::fs::rename(&staging, &dir).unwrap();
            }
        }
    }
}

/// The sandbox's entry on the admin status endpoint.
fn sandbox_status(gw: &Gateway) -> Value {
    let r = gw.call("GET", "/v1/admin/plugins", Some(&gw.admin_key), None);
    assert_eq!(r.status, 200, "{:?}", r.json);
    r.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "sandbox")
        .cloned()
        .unwrap_or(Value::Null)
}

fn generation(s: &Value) -> u64 {
    s["generation"].as_u64().unwrap_or(0)
}

fn failed_reloads(s: &Value) -> u64 {
    s["reloads"]["failed"].as_u64().unwrap_or(0)
}

/// Poll the status endpoint until `done` holds; returns the status and the time waited.
fn wait_for(gw: &Gateway, what: &str, done: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let s = sandbox_status(gw);
        if done(&s) {
            return (s, started.elapsed());
        }
        assert!(
            started.elapsed() < PATIENCE,
            "waited {PATIENCE:?} for {what}; status: {s}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Config for a gateway under sustained order load.
const LOAD_CONFIG: &str = "[http]\nrate_limit_per_second = 100000.0\nrate_limit_burst = 100000.0\n[orders]\ndemo_credit_minor = 1000000000\n";

/// Place one order as the demo reseller with Idempotency-Key `key`.
fn order(gw: &Gateway, key: &str, product: &str) -> Resp {
    gw.post_idem("/v1/orders", &json!({ "product_id": product }), key)
}

/// What the client threads saw.
#[derive(Default)]
struct Load {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

/// Run `CLIENTS` threads ordering `PRODUCT` until `body` returns; returns its result and
/// every order's latency and failure.
fn under_load<T>(gw: &Gateway, body: impl FnOnce() -> T) -> (T, Load) {
    let stop = AtomicBool::new(false);
    let load = Mutex::new(Load::default());
    let result = thread::scope(|s| {
        for client in 0..CLIENTS {
            let (stop, load) = (&stop, &load);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let started = Instant::now();
                    let r = order(gw, &format!("hot-reload-{client}-{n}"), PRODUCT);
                    let elapsed = started.elapsed();
                    let mut load = load.lock().unwrap();
                    load.latencies.push(elapsed);
                    if r.status != 201 || r.json["status"] != "fulfilled" {
                        load.failures.push(format!("{} {}", r.status, r.json));
                    }
                }
            });
        }
        // Stop the clients however `body` ends: if it panics, the scope would otherwise
        // wait for them forever and the test would hang instead of failing.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        body()
    });
    (result, load.into_inner().unwrap())
}

/// The outcome a replacement must have.
enum Expect {
    /// The new version serves, in a new generation.
    Serves(&'static str),
    /// The reload is refused with an error containing this; the old generation serves on.
    Refused(&'static str),
}

struct Step {
    writer: Writer,
    package: Package,
    expect: Expect,
}

/// Apply each step and check its outcome; returns the write-to-serving time of each good
/// version.
fn replace_in_turn(gw: &Gateway, steps: Vec<Step>, on_each: impl Fn(usize)) -> Vec<Duration> {
    let plugins = gw.plugins_dir();
    let mut took = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        on_each(i);
        let before = sandbox_status(gw);
        step.writer.write(&plugins, &step.package);
        match step.expect {
            Expect::Serves(version) => {
                let (s, elapsed) = wait_for(gw, &format!("{version} to serve"), |s| {
                    s["version"] == version && generation(s) > generation(&before)
                });
                assert_eq!(s["state"], "serving", "{s}");
                println!(
                    "replacement {:>2}: {version} ({:?}) serving as generation {} {:>5} ms after \
                     the write (of which loading: {} ms)",
                    i + 1,
                    step.writer,
                    generation(&s),
                    elapsed.as_millis(),
                    s["load_ms"]
                );
                took.push(elapsed);
            }
            Expect::Refused(error) => {
                // Wait for the refusal of the finished write: a reload that caught the
                // write half-way (possible on a stalled machine) fails for another reason.
                let (s, elapsed) = wait_for(gw, "the broken package to be refused", |s| {
                    failed_reloads(s) > failed_reloads(&before)
                        && s["state"] == "failed_reload"
                        && s["last_error"].as_str().unwrap_or_default().contains(error)
                });
                let last_error = s["last_error"].as_str().unwrap_or_default();
                assert_eq!(s["version"], before["version"], "the old version serves on");
                assert_eq!(generation(&s), generation(&before), "no swap happened");
                println!(
                    "replacement {:>2}: broken ({:?}) refused {:>5} ms after the write, {} {} serves on: {}",
                    i + 1,
                    step.writer,
                    elapsed.as_millis(),
                    s["version"],
                    generation(&s),
                    last_error.lines().next().unwrap_or_default()
                );
            }
        }
    }
    took
}

fn gateway() -> Gateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        // The load measures reloads, not the per-key rate limit; the demo reseller needs
        // enough prepaid credit for a few thousand orders.
        .config(LOAD_CONFIG)
        .start()
}

fn millis(d: &[Duration]) -> Vec<u128> {
    d.iter().map(|d| d.as_millis()).collect()
}

#[test]
fn ten_replacements_under_load_fail_no_request_and_broken_packages_never_serve() {
    let gw = gateway();
    let bin = gw.bin().to_path_buf();
    let v1 = Package::build(&bin, "sandbox");
    let v2 = Package::build(&bin, "sandbox-next");
    // Random bytes and a truncated component, each with a manifest naming its digest: the
    // digest check passes, compiling fails.
    let random: Vec<u8> = (0..v2.wasm.len() as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let random = v2.with_wasm(random);
    let truncated = v2.with_wasm(v2.wasm[..v2.wasm.len() / 2].to_vec());
    // A new component with the old manifest: the digest does not match.
    let mismatched = Package {
        wasm: v1.wasm.clone(),
        manifest: v2.manifest.clone(),
    };
    use Expect::*;
    use Writer::*;
    let step = |writer, package: &Package, expect| Step {
        writer,
        package: package.clone(),
        expect,
    };
    let steps = vec![
        step(InPlaceWasmFirst, &v2, Serves("0.2.0")),
        step(TempThenRename, &v1, Serves("0.1.0")),
        step(
            InPlaceWasmFirst,
            &random,
            Refused("not a valid WebAssembly component"),
        ),
        step(DeleteAndRecreate, &v2, Serves("0.2.0")),
        step(InPlaceWasmFirst, &mismatched, Refused("sha256")),
        step(InPlaceManifestFirst, &v1, Serves("0.1.0")),
        step(
            TempThenRename,
            &truncated,
            Refused("not a valid WebAssembly component"),
        ),
        step(TempThenRename, &v2, Serves("0.2.0")),
        step(StageFolderThenSwap, &v1, Serves("0.1.0")),
        step(InPlaceWasmFirst, &v2, Serves("0.2.0")),
    ];
    assert_eq!(sandbox_status(&gw)["version"], "0.1.0");

    let (took, load) = under_load(&gw, || replace_in_turn(&gw, steps, |_| {}));

    println!(
        "{} orders from {CLIENTS} clients during 10 replacements, {} failed; \
         write-to-serving times (ms): {:?}",
        load.latencies.len(),
        load.failures.len(),
        millis(&took)
    );
    assert!(
        load.failures.is_empty(),
        "failed requests: {:?}",
        load.failures
    );
    assert!(load.latencies.len() >= CLIENTS, "the load ran");
    let s = sandbox_status(&gw);
    assert_eq!(s["state"], "serving", "{s}");
    assert_eq!(s["version"], "0.2.0");
    assert!(s["reloads"]["ok"].as_u64().unwrap() >= 8, "{s}");
    assert!(failed_reloads(&s) >= 3, "{s}");
}

/// The `slow` plugin's entry on the status endpoint (`Null` once it is unregistered).
fn slow_status(gw: &Gateway) -> Value {
    let r = gw.call("GET", "/v1/admin/plugins", Some(&gw.admin_key), None);
    r.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "slow")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_call_in_flight_finishes_on_its_generation_while_the_plugin_is_replaced_then_removed() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "slow"])
        .start();
    let first = generation(&slow_status(&gw));
    thread::scope(|s| {
        // slow's provision takes 2 s.
        let in_flight = s.spawn(|| order(&gw, "in-flight", "slow:slow-1"));
        let started = Instant::now();
        // The provision is running once a call has been in flight for 100 ms straight
        // (catalog calls, from the order or the background refresh, take microseconds).
        let mut in_flight_since: Option<Instant> = None;
        loop {
            if slow_status(&gw)["stats"]["in_flight"] == 1 {
                let since = *in_flight_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(100) {
                    break;
                }
            } else {
                in_flight_since = None;
            }
            assert!(started.elapsed() < PATIENCE, "the slow call never started");
            thread::sleep(Duration::from_millis(5));
        }
        // Replace it: a new generation serves while the call runs on the old one.
        pack(gw.bin(), "slow", &gw.plugins_dir());
        while generation(&slow_status(&gw)) == first {
            assert!(started.elapsed() < PATIENCE, "no new generation");
            thread::sleep(Duration::from_millis(5));
        }
        // Then remove it: new orders are refused while the old call still runs.
        std::fs::remove_dir_all(gw.plugins_dir().join("slow")).unwrap();
        while !slow_status(&gw).is_null() {
            assert!(started.elapsed() < PATIENCE, "slow was not unregistered");
            thread::sleep(Duration::from_millis(5));
        }
        let refused = order(&gw, "after-removal", "slow:slow-1");
        assert_eq!(refused.status, 503, "{:?}", refused.json);
        assert!(
            !in_flight.is_finished(),
            "the 2 s call should still be running after a swap and a removal (took {:?}); \
             the machine is too slow for this test to show anything",
            started.elapsed()
        );
        let done = in_flight.join().unwrap();
        assert_eq!(done.status, 201, "{:?}", done.json);
        assert_eq!(done.json["status"], "fulfilled", "{:?}", done.json);
    });
}

#[test]
fn removing_a_plugin_folder_takes_its_products_away_and_orders_get_a_503() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .plugins(&["sandbox", "trap"])
        .start();
    let has_trap = |gw: &Gateway| {
        let r = gw.get("/v1/products");
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"].as_str().unwrap().starts_with("trap:"))
    };
    assert!(has_trap(&gw));

    std::fs::remove_dir_all(gw.plugins_dir().join("trap")).unwrap();
    let started = Instant::now();
    while has_trap(&gw) {
        assert!(
            started.elapsed() < PATIENCE,
            "trap's products are still listed"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let r = order(&gw, "after-removal", "trap:trap-1");
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(r.json["code"], "supplier_not_loaded");
    let status = gw.call("GET", "/v1/admin/plugins", Some(&gw.admin_key), None);
    let ids: Vec<&str> = status.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["sandbox"],
        "the removed plugin leaves the status list"
    );
    // The sandbox was not disturbed.
    assert_eq!(order(&gw, "sandbox-still", PRODUCT).status, 201);

    // Putting the folder back brings it back.
    pack(gw.bin(), "trap", &gw.plugins_dir());
    let started = Instant::now();
    while !has_trap(&gw) {
        assert!(started.elapsed() < PATIENCE, "trap did not come back");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn changing_the_grants_file_reloads_every_plugin_with_the_new_grants() {
    let gw = gateway();
    let before = sandbox_status(&gw);
    assert_eq!(before["capabilities"]["secrets"], json!([]), "{before}");
    std::fs::write(
        gw.data_dir.path().join("grants.toml"),
        "[plugins.sandbox]\nsecrets = [\"SANDBOX_WEBHOOK_SECRET\"]\n",
    )
    .unwrap();
    let (after, _) = wait_for(&gw, "a reload with the new grants", |s| {
        generation(s) > generation(&before)
    });
    assert_eq!(
        after["capabilities"]["secrets"],
        json!(["SANDBOX_WEBHOOK_SECRET"]),
        "{after}"
    );
    assert_eq!(after["version"], before["version"]);
}

/// Median and maximum, and the p-th percentile of a sorted list.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(label: &str, mut d: Vec<Duration>) -> String {
    d.sort();
    format!(
        "{label}: n={}, median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        d.len(),
        percentile(&d, 0.5).as_secs_f64() * 1e3,
        percentile(&d, 0.99).as_secs_f64() * 1e3,
        d.last().unwrap().as_secs_f64() * 1e3
    )
}

/// BENCHMARKS.md "Hot reload": 20 measured reloads under load, alternating versions: 10
/// with the compiled-component cache emptied before each write (each compiles from
/// scratch), then 10 redeploying a version seen before (cache hit; the two unmeasured
/// reloads in between refill the cache), and order latency under the same load with and
/// without reloads.
#[test]
#[ignore = "benchmark: run explicitly, see BENCHMARKS.md"]
fn hot_reload_benchmark() {
    let gw = gateway();
    let bin = gw.bin().to_path_buf();
    let versions = [
        (Package::build(&bin, "sandbox-next"), "0.2.0"),
        (Package::build(&bin, "sandbox"), "0.1.0"),
    ];
    // Warm up (first connections, first catalog calls).
    let _ = under_load(&gw, || thread::sleep(Duration::from_secs(2)));

    let quiet_for = Duration::from_secs(10);
    let ((), quiet) = under_load(&gw, || thread::sleep(quiet_for));
    assert!(quiet.failures.is_empty(), "{:?}", quiet.failures);

    let compiled = gw.data_dir.path().join("compiled");
    let steps: Vec<Step> = (0..22)
        .map(|i| {
            let (package, version) = &versions[i % 2];
            Step {
                writer: Writer::TempThenRename,
                package: package.clone(),
                expect: Expect::Serves(version),
            }
        })
        .collect();
    let started = Instant::now();
    let (took, reloading) = under_load(&gw, || {
        replace_in_turn(&gw, steps, |i| {
            if i < 10 {
                let _ = std::fs::remove_dir_all(&compiled);
                std::fs::create_dir_all(&compiled).unwrap();
            }
            // Let each reload's effect on latency show, and keep reload density realistic.
            thread::sleep(Duration::from_millis(250));
        })
    });
    let reloading_for = started.elapsed();
    assert!(reloading.failures.is_empty(), "{:?}", reloading.failures);

    println!("--- hot reload benchmark ({CLIENTS} ordering clients) ---");
    let (cold, warm) = (took[..10].to_vec(), took[12..].to_vec());
    let all = [&cold[..], &warm[..]].concat();
    println!("{}", summary("write -> serving, all 20", all));
    println!(
        "{}",
        summary("write -> serving, cache emptied (compile)", cold)
    );
    println!("{}", summary("write -> serving, cache hit", warm));
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{} ({:.0} orders/s)",
        summary("order latency without reloads", quiet.latencies.clone()),
        rate(quiet.latencies.len(), quiet_for)
    );
    println!(
        "{} ({:.0} orders/s)",
        summary(
            "order latency during 22 reloads",
            reloading.latencies.clone()
        ),
        rate(reloading.latencies.len(), reloading_for)
    );
}
