//! `simgate plugin check DIR [--grants FILE]`: load a plugin folder exactly as the watcher
//! would (manifest, digest, compile, link against the effective grants, `describe` smoke
//! test) and say what it asks for, what it gets and whether it links. Exits non-zero with
//! the reason when the gateway would refuse it.

use std::path::Path;

use anyhow::Context;

use simgate::config::Config;
use simgate::domain::supplier::Supplier;
use simgate::plugins::{self, Grant, Grants, LoadContext, LoadedPlugin, Manifest, PluginEngine};

/// Run the check, printing a report to stdout.
pub fn run(dir: &Path, grants_file: Option<&Path>) -> anyhow::Result<()> {
    let grants = match grants_file {
        Some(p) => Grants::read(p)?,
        None => Grants::default(),
    };
    let manifest = Manifest::read(dir)?;
    println!("plugin {} {}", manifest.id, manifest.version);
    println!("  folder:    {}", dir.display());
    println!(
        "  component: {} (sha256 in plugin.toml: {})",
        manifest.wasm,
        manifest.sha256.as_deref().unwrap_or("missing")
    );

    println!("requests (plugin.toml):");
    print_list("outbound", &manifest.requests.outbound);
    print_list("secrets", &manifest.requests.secrets);
    print_list("config", &manifest.requests.config);

    match grants_file {
        Some(p) => println!("granted ({}):", p.display()),
        None => println!("granted (no --grants FILE given: nothing):"),
    }
    let empty = Grant::default();
    let grant = grants.plugins.get(&manifest.id).unwrap_or(&empty);
    print_list("outbound", &grant.outbound);
    print_list("secrets", &grant.secrets);
    let config: Vec<String> = grant.config.keys().cloned().collect();
    print_list("config", &config);
    if grant.allow_private_addresses {
        println!("  allow_private_addresses: true (egress may reach private addresses)");
    }

    let engine = PluginEngine::new(None).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let cx = LoadContext {
        kv: &Default::default(),
        tokens: &Default::default(),
        engine: &engine,
        grants: &grants,
        secrets: &plugins::SecretStore::default(),
        limits: Config::default().plugin_limits,
        require_digest: true,
        transport: None,
    };
    let plugin = match LoadedPlugin::load(dir, &cx) {
        Ok(p) => p,
        Err(e) => {
            println!("links: no");
            return Err(e).context(format!(
                "the gateway would refuse {} {}",
                manifest.id, manifest.version
            ));
        }
    };
    let shared = plugin.shared();
    println!("effective (requested and granted):");
    print_list("outbound", &shared.capabilities.outbound);
    let secrets: Vec<String> = shared.capabilities.secrets.iter().cloned().collect();
    print_list("secrets", &secrets);
    let config: Vec<String> = shared.capabilities.config.keys().cloned().collect();
    print_list("config", &config);
    if !shared.capabilities.denied.is_empty() {
        println!(
            "  not granted: {} (the plugin loads without them; calls that need them fail)",
            shared.capabilities.denied.join(", ")
        );
    }
    let l = &shared.limits;
    println!(
        "limits: {} MiB memory, {} ms per call, {} calls at once, {} output bytes",
        l.memory_mib, l.timeout_ms, l.max_concurrency, l.max_output_bytes
    );
    let info = plugin.info();
    let features: Vec<String> = info
        .features
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    println!(
        "links: yes; describe() smoke test passed: supplier {:?}, features [{}]",
        info.supplier,
        features.join(", ")
    );
    println!(
        "ok: {} {} loads as the gateway would load it",
        info.id, info.version
    );
    Ok(())
}

fn print_list(what: &str, items: &[String]) {
    let shown = if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    };
    println!("  {what:<9} {shown}");
}
