//! What one supplier call costs through the plugin runtime, next to the same work done by
//! native Rust behind the same `Supplier` trait.
//!
//! ```sh
//! cargo bench -p simgate --bench dispatch            # 20k calls per row after warm-up
//! DISPATCH_ITERATIONS=100000 cargo bench -p simgate --bench dispatch
//! ```
//!
//! Rows:
//! - `wasm describe`: the cheapest export; a fresh store and instance from the pre-linked
//!   component, the call, the result's conversion. The floor of any plugin call.
//! - `wasm provision`: the sandbox supplier's `provision` (catalog lookup, one eSIM derived
//!   by FNV-1a, SplitMix64 and Luhn), with everything `describe` pays plus the host's output
//!   checks.
//! - `native provision`: the same derivation in Rust, called through `Arc<dyn Supplier>`.
//! - `per-call store data only`: `PluginState::new` (WASI context, stderr pipe, resource
//!   table, egress report), the part of a wasm call that is not wasmtime's.
//!
//! Each row runs on a current-thread runtime, one call at a time, timing every call with
//! `Instant`; the `2 tasks` rows run two tasks on a two-worker runtime to show how calls
//! scale over both cores. Results are printed as a Markdown table (see BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use simgate::config::PluginLimits;
use simgate::domain::supplier::*;
use simgate::plugins::manifest::sha256_hex;
use simgate::plugins::state::PluginState;
use simgate::plugins::{Grants, LoadContext, LoadedPlugin, Manifest, PluginEngine, SecretStore};

const WARM_UP: usize = 2_000;

fn main() {
    let iterations: usize = std::env::var("DISPATCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);

    let engine = PluginEngine::new(None).expect("engine");
    let wasm_plugin: Arc<LoadedPlugin> = Arc::new(load_sandbox(&engine));
    let wasm: Arc<dyn Supplier> = wasm_plugin.clone();
    let native: Arc<dyn Supplier> = Arc::new(NativeSandbox::new());

    // Both must do the same work, or the comparison means nothing.
    let current = current_thread();
    let req = request(7);
    assert_eq!(
        current.block_on(wasm.provision(req.clone())).unwrap(),
        current.block_on(native.provision(req)).unwrap(),
        "the native equivalent must answer exactly as the sandbox plugin"
    );

    println!("| call | runtime | median | p99 | calls/s |");
    println!("|---|---|---:|---:|---:|");
    let plugin = wasm_plugin.clone();
    let describe = measure(&current, iterations, 1, move |_| {
        let plugin = plugin.clone();
        async move {
            plugin.describe().await.unwrap();
        }
    });
    row("wasm describe", "1 task", &describe);
    let wasm_provision = measure(&current, iterations, 1, provision_with(&wasm));
    row("wasm provision", "1 task", &wasm_provision);
    let native_provision = measure(&current, iterations, 1, provision_with(&native));
    row("native provision", "1 task", &native_provision);
    // Part of every wasm call: the per-call WASI context, stderr pipe, resource table and
    // egress report. Measured apart to show whether reusing them would be worth it.
    let shared = wasm_plugin.shared().clone();
    let state = measure(&current, iterations, 1, move |_| {
        let shared = shared.clone();
        async move {
            std::hint::black_box(PluginState::new(shared, Instant::now()));
        }
    });
    row("per-call store data only", "1 task", &state);

    let two = multi_thread(2);
    let wasm_two = measure(&two, iterations, 2, provision_with(&wasm));
    row("wasm provision", "2 tasks, 2 workers", &wasm_two);
    let native_two = measure(&two, iterations, 2, provision_with(&native));
    row("native provision", "2 tasks, 2 workers", &native_two);

    println!();
    println!(
        "wasm/native provision, median: {:.0}x ({} vs {})",
        wasm_provision.median.as_secs_f64() / native_provision.median.as_secs_f64(),
        micros(wasm_provision.median),
        micros(native_provision.median),
    );
}

/// Load the sandbox plugin as the gateway would, minus the folder and digest checks.
fn load_sandbox(engine: &PluginEngine) -> LoadedPlugin {
    let dir = simgate_test_support::plugin_source("sandbox");
    let manifest = Manifest::read(&dir).expect("sandbox plugin.toml");
    let wasm = std::fs::read(simgate_test_support::wasm("sandbox")).expect("sandbox.wasm");
    let sha256 = sha256_hex(&wasm);
    let cx = LoadContext {
        kv: &Default::default(),
        tokens: &Default::default(),
        engine,
        grants: &Grants::default(),
        secrets: &SecretStore::default(),
        limits: PluginLimits::default(),
        require_digest: false,
        transport: None,
    };
    LoadedPlugin::from_parts(manifest, &wasm, sha256, &cx).expect("sandbox loads")
}

fn request(i: usize) -> ProvisionRequest {
    ProvisionRequest {
        order_ref: format!("ord_bench_{i}"),
        sku: "SBX-JP-5GB-30D".into(),
        quantity: 1,
    }
}

/// A call that provisions one eSIM from `supplier` for iteration `i`.
fn provision_with(
    supplier: &Arc<dyn Supplier>,
) -> impl Fn(usize) -> BoxFuture<'static, ()> + Clone + Send + Sync + 'static {
    let supplier = supplier.clone();
    move |i| {
        let supplier = supplier.clone();
        let req = request(i);
        Box::pin(async move {
            let outcome = supplier.provision(req).await.unwrap();
            std::hint::black_box(outcome);
        })
    }
}

/// Latency percentiles of one row.
struct Stats {
    median: Duration,
    p99: Duration,
    calls_per_sec: f64,
}

/// Run `call` `iterations` times after a warm-up, spread over `tasks` tasks, timing each
/// call on its own.
fn measure<F, Fut>(rt: &tokio::runtime::Runtime, iterations: usize, tasks: usize, call: F) -> Stats
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    rt.block_on(async {
        for i in 0..WARM_UP {
            call(i).await;
        }
    });
    let per_task = iterations / tasks;
    let started = Instant::now();
    let mut samples: Vec<Duration> = rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let call = call.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_task);
                    for i in 0..per_task {
                        let n = t * per_task + i;
                        let begun = Instant::now();
                        call(n).await;
                        samples.push(begun.elapsed());
                    }
                    samples
                })
            })
            .collect();
        let mut all = Vec::with_capacity(iterations);
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    let wall = started.elapsed();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats {
        median: at(0.5),
        p99: at(0.99),
        calls_per_sec: samples.len() as f64 / wall.as_secs_f64(),
    }
}

fn row(call: &str, runtime: &str, s: &Stats) {
    println!(
        "| {call} | {runtime} | {} | {} | {:.0} |",
        micros(s.median),
        micros(s.p99),
        s.calls_per_sec
    );
}

fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// The sandbox supplier's instant-delivery path in native Rust: the same catalog lookup and
/// the same derivation (plugins/sandbox/src/derive.rs), so its answers are identical.
struct NativeSandbox {
    info: SupplierInfo,
}

/// The sandbox catalog's SKUs, in order (plugins/sandbox/src/catalog.rs).
const SKUS: [&str; 14] = [
    "SBX-US-5GB-30D",
    "SBX-JP-5GB-30D",
    "SBX-JP-UNL-7D",
    "SBX-FR-3GB-15D",
    "SBX-DE-10GB-30D",
    "SBX-GB-1GB-7D",
    "SBX-TH-UNL-15D",
    "SBX-BR-2GB-15D",
    "SBX-EU-10GB-30D",
    "SBX-ASIA-5GB-15D",
    "SBX-GLOBAL-3GB-30D",
    "SBX-CN-3GB-15D",
    "SBX-ASYNC-1GB-7D",
    "SBX-XX-OOS",
];

impl NativeSandbox {
    fn new() -> NativeSandbox {
        NativeSandbox {
            info: SupplierInfo {
                id: "sandbox-native".into(),
                version: "0.1.0".into(),
                supplier: "native sandbox".into(),
                features: Vec::new(),
            },
        }
    }
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0x1f]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn luhn_check_digit(payload: &str) -> u8 {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

fn esim(order_ref: &str, index: u32) -> EsimProfile {
    const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let index = index.to_string();
    let body = fnv1a(&["iccid", order_ref, &index]) % 100_000_000_000_000;
    let payload = format!("8999{body:014}");
    let iccid = format!("{payload}{}", luhn_check_digit(&payload));
    let mut state = fnv1a(&["matching-id", order_ref, &index]);
    let matching_id = (0..20)
        .map(|_| ALPHANUMERIC[(splitmix(&mut state) % ALPHANUMERIC.len() as u64) as usize] as char)
        .collect();
    EsimProfile {
        iccid,
        smdp_address: "smdp.sandbox.simgate.test".into(),
        matching_id,
        confirmation_code_required: false,
    }
}

impl Supplier for NativeSandbox {
    fn info(&self) -> &SupplierInfo {
        &self.info
    }

    fn list_products(&self) -> BoxFuture<'_, SupplierResult<Vec<SupplierProduct>>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }

    fn provision(&self, req: ProvisionRequest) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>> {
        Box::pin(async move {
            if !SKUS.contains(&req.sku.as_str()) {
                return Err(SupplierError::InvalidRequest(format!(
                    "unknown sku {:?}",
                    req.sku
                )));
            }
            if !(1..=10).contains(&req.quantity) {
                return Err(SupplierError::InvalidRequest("quantity".into()));
            }
            Ok(ProvisionOutcome::Delivered(
                (0..req.quantity).map(|i| esim(&req.order_ref, i)).collect(),
            ))
        })
    }

    fn poll(&self, _: String, _: String) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }

    fn usage(&self, _: String) -> BoxFuture<'_, SupplierResult<Usage>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }

    fn top_up(&self, _: String, _: String, _: String) -> BoxFuture<'_, SupplierResult<String>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }

    fn cancel(&self, _: String, _: String) -> BoxFuture<'_, SupplierResult<()>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }
}
