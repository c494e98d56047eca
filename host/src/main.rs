//! The `simgate` command line: `serve` runs the gateway; `plugin` packages and checks
//! plugin folders exactly as the watcher would load them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use simgate::api::{self, AppState};
use simgate::config::Config;
use simgate::domain::gateway::Gateway;
use simgate::plugins::{self, PluginEngine, Registry};
use simgate::privacy::FileKeyring;
use simgate::store::SledStore;

#[derive(Parser)]
#[command(name = "simgate", version, about = "Self-hosted eSIM supplier gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Work with plugin packages.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (every setting has a working default).
    #[arg(long, env = "SIMGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, env = "SIMGATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory (database, key files, compiled-plugin cache).
    #[arg(long, env = "SIMGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Watched plugins folder (default: DATA_DIR/plugins).
    #[arg(long, env = "SIMGATE_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Operator grants file (default: DATA_DIR/grants.toml).
    #[arg(long, env = "SIMGATE_GRANTS")]
    grants: Option<PathBuf>,
    /// Do not create the demo reseller on first start.
    #[arg(long)]
    no_demo: bool,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Make a deployable plugin folder: copy the component and write plugin.toml with its sha256.
    Pack {
        /// The plugin's source manifest (plugin.toml).
        #[arg(long)]
        manifest: PathBuf,
        /// The built component (.wasm).
        #[arg(long)]
        wasm: PathBuf,
        /// The plugins folder to place it in (creates OUT/<id>/).
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate a plugin folder as the gateway would load it; exit non-zero with the reason.
    Check {
        /// The plugin folder (holding plugin.toml).
        dir: PathBuf,
        /// Grants file to check against (default: grant nothing).
        #[arg(long)]
        grants: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIMGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Plugin(PluginCommand::Pack {
            manifest,
            wasm,
            out,
        }) => pack(&manifest, &wasm, &out),
        Command::Plugin(PluginCommand::Check { dir, grants }) => check(&dir, grants),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if args.plugins_dir.is_some() {
        config.plugins_dir = args.plugins_dir;
    }
    if args.grants.is_some() {
        config.grants_file = args.grants;
    }
    if args.no_demo {
        config.demo = false;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    std::fs::create_dir_all(config.plugins_dir())?;
    let keyring = Arc::new(FileKeyring::open(&config.data_dir)?);
    let store = Arc::new(
        SledStore::open(&config.data_dir.join("db"), config.store.cache_mib)
            .context("opening the store")?,
    );
    let engine = PluginEngine::new(Some(config.data_dir.join("compiled")))
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("creating the wasm engine")?;
    let registry = Arc::new(Registry::new(
        engine,
        config.plugins_dir(),
        config.grants_file(),
        config.secrets_file(),
        config.plugin_limits,
    ));
    {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.load_all()).await?;
    }
    let gateway = Gateway::new(store, registry.clone(), keyring);
    if let Some(keys) = gateway.bootstrap(config.demo).await? {
        println!("admin API key (shown once): {}", keys.admin);
        if let Some((reseller, key)) = keys.demo {
            println!("demo reseller {reseller} API key (shown once): {key}");
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    println!("simgate listening on http://{}", listener.local_addr()?);
    let state = Arc::new(AppState {
        gateway,
        registry,
        limits: config.http,
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = shutdown_tx.send(true);
    });
    api::serve(listener, state, shutdown_rx).await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn pack(
    manifest: &std::path::Path,
    wasm: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut m: plugins::Manifest =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    m.sha256 = Some(plugins::manifest::sha256_hex(&bytes));
    let dir = out.join(&m.id);
    std::fs::create_dir_all(&dir)?;
    // Component first, manifest last: the watcher sees a complete package once the
    // manifest names the new digest.
    plugins::engine::write_atomically(&dir.join(&m.wasm), &bytes)?;
    plugins::engine::write_atomically(&dir.join("plugin.toml"), toml::to_string(&m)?.as_bytes())?;
    println!("packed {} {} into {}", m.id, m.version, dir.display());
    Ok(())
}

fn check(dir: &std::path::Path, grants: Option<PathBuf>) -> anyhow::Result<()> {
    let grants = match grants {
        Some(p) => plugins::Grants::read(&p)?,
        None => plugins::Grants::default(),
    };
    let manifest = plugins::Manifest::read(dir)?;
    println!("plugin {} {}", manifest.id, manifest.version);
    println!(
        "requests: outbound {:?}, secrets {:?}, config {:?}",
        manifest.requests.outbound, manifest.requests.secrets, manifest.requests.config
    );
    let engine = PluginEngine::new(None).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let cx = plugins::LoadContext {
        engine: &engine,
        grants: &grants,
        secrets: &plugins::SecretStore::default(),
        limits: Config::default().plugin_limits,
        require_digest: true,
        transport: None,
    };
    let plugin = plugins::LoadedPlugin::load(dir, &cx)?;
    let caps = &plugin.shared().capabilities;
    if !caps.denied.is_empty() {
        println!("not granted: {}", caps.denied.join(", "));
    }
    println!("ok: links and passes the describe() smoke test");
    Ok(())
}
