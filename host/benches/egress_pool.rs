//! An order through a real adapter and its supplier: the `esim-access` plugin's
//! `provision` (a host-signed POST to an eSIM Access-style simulator on loopback, answered
//! `pending`), with keep-alive egress and with a new connection per request, measured side
//! by side in one run.
//!
//! ```sh
//! cargo bench -p simgate --bench egress_pool               # 2000 calls per row
//! EGRESS_ITERATIONS=5000 cargo bench -p simgate --bench egress_pool
//! ```
//!
//! Both rows load the same component with the same grants; only the plugin limit
//! `egress_idle_per_host` differs (16, the default, against 0). Calls run one at a time
//! on a two-worker runtime; the simulator (a thread per connection) runs in-process.
//! The rows alternate in rounds so drift on the machine falls on both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use simgate::config::PluginLimits;
use simgate::domain::supplier::{ProvisionOutcome, ProvisionRequest, Supplier};
use simgate::plugins::manifest::sha256_hex;
use simgate::plugins::{Grants, LoadContext, LoadedPlugin, Manifest, PluginEngine, SecretStore};
use simgate_test_support::EsimAccessSim;

const ACCESS: &str = "bench-access";
const SECRET: &str = "bench-signing-secret-4f1a";
const ROUNDS: usize = 10;

fn main() {
    let iterations: usize = std::env::var("EGRESS_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let per_round = (iterations / ROUNDS).max(1);

    let sim = EsimAccessSim::start(ACCESS, SECRET);
    sim.set_manual_allocation(true);
    let engine = PluginEngine::new(None).expect("engine");
    let pooled = load(&engine, &sim, 16);
    let unpooled = load(&engine, &sim, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Warm up both (the first call also fetches the package prices into `state`).
    for (n, plugin) in [&pooled, &unpooled].into_iter().enumerate() {
        for i in 0..50 {
            rt.block_on(provision(plugin, &format!("warm-{n}-{i}")));
        }
    }

    let mut rows = [(Vec::new(), 0u64), (Vec::new(), 0u64)];
    for round in 0..ROUNDS {
        for (n, plugin) in [&pooled, &unpooled].into_iter().enumerate() {
            let before = sim.connections();
            for i in 0..per_round {
                let begun = Instant::now();
                rt.block_on(provision(plugin, &format!("ord-{n}-{round}-{i}")));
                rows[n].0.push(begun.elapsed());
            }
            rows[n].1 += sim.connections() - before;
        }
    }

    println!("| egress | calls | median | p99 | mean | connections opened |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (name, (samples, connections)) in ["keep-alive pool", "new connection per request"]
        .into_iter()
        .zip(rows.iter_mut())
    {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        println!(
            "| {name} | {} | {} | {} | {} | {connections} |",
            samples.len(),
            micros(at(0.5)),
            micros(at(0.99)),
            micros(mean),
        );
        medians.push(at(0.5));
    }
    println!();
    println!(
        "pooled/unpooled, median: {:.2} ({} vs {})",
        medians[0].as_secs_f64() / medians[1].as_secs_f64(),
        micros(medians[0]),
        micros(medians[1]),
    );
}

async fn provision(plugin: &Arc<LoadedPlugin>, order_ref: &str) {
    let outcome = plugin
        .provision(ProvisionRequest {
            order_ref: order_ref.to_string(),
            sku: "PJP1G7D".into(),
            quantity: 1,
        })
        .await
        .expect("the simulator takes the order");
    assert!(matches!(outcome, ProvisionOutcome::Pending(_)));
}

/// The adapter as the gateway loads it, granted the simulator, with `idle_per_host`
/// keep-alive connections per destination.
fn load(engine: &PluginEngine, sim: &EsimAccessSim, idle_per_host: usize) -> Arc<LoadedPlugin> {
    let dir = simgate_test_support::plugin_source("esim-access");
    let manifest = Manifest::read(&dir).expect("esim-access plugin.toml");
    let wasm = std::fs::read(simgate_test_support::wasm("esim-access")).expect("esim-access.wasm");
    let sha256 = sha256_hex(&wasm);
    let grants: Grants = toml::from_str(&format!(
        r#"
[plugins.esim-access]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["ESIM_ACCESS_SECRET"]
config = {{ base_url = "{}", access_code = "{ACCESS}" }}
"#,
        sim.base()
    ))
    .expect("grants");
    let mut secrets = SecretStore::default();
    secrets.insert("esim-access", "ESIM_ACCESS_SECRET", SECRET);
    let cx = LoadContext {
        engine,
        grants: &grants,
        secrets: &secrets,
        limits: PluginLimits {
            egress_idle_per_host: idle_per_host,
            ..PluginLimits::default()
        },
        require_digest: false,
        transport: None,
        kv: &Default::default(),
        tokens: &Default::default(),
    };
    Arc::new(LoadedPlugin::from_parts(manifest, &wasm, sha256, &cx).expect("esim-access loads"))
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
