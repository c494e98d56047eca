//! The `simgate` command line: `serve` runs the gateway; `plugin` packages and checks
//! plugin folders exactly as the watcher would load them, and scaffolds new plugin crates;
//! `audit verify` checks the audit log offline.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use simgate::api::{self, AppState};
use simgate::config::Config;
use simgate::domain::fulfilment::RetryPolicy;
use simgate::domain::gateway::{Gateway, GatewayTuning};
use simgate::jobs::{GatewayJobs, Worker, WorkerTuning};
use simgate::plugins::{self, PluginEngine, PluginWatcher, Registry};
use simgate::privacy::FileKeyring;
use simgate::store::SledStore;

// sled copies and frees small buffers on every write from many threads at once, which
// glibc's allocator serves poorly (malloc was a fifth of the order path's profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Manage resellers (offline: stop the gateway first, or use the admin API).
    #[command(subcommand)]
    Reseller(ResellerCommand),
    /// Manage API keys (offline: stop the gateway first, or use the admin API).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check the audit log (offline: stop the gateway first).
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the signed retention checkpoint and the hash chain. Prints `ok: N entries
    /// from seq S` and exits 0, or `audit log broken at seq N: why` (the first edited,
    /// inserted or deleted entry) and exits 1; exits 2 if it cannot check.
    Verify {
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(clap::Args)]
struct DataDirArg {
    /// Data directory of the gateway.
    #[arg(long, env = "SIMGATE_DATA_DIR", default_value = "simgate-data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum ResellerCommand {
    /// Create a reseller; prints its id.
    Create {
        #[command(flatten)]
        data: DataDirArg,
        /// Company name.
        #[arg(long)]
        name: String,
        /// Markup over wholesale in basis points (1500 = 15%).
        #[arg(long, default_value_t = 0)]
        markup_bps: u32,
    },
    /// Credit a reseller's prepaid balance.
    Credit {
        #[command(flatten)]
        data: DataDirArg,
        /// Reseller id (rsl_...).
        #[arg(long)]
        reseller: String,
        /// Amount in minor units (cents).
        #[arg(long)]
        amount: i64,
        /// ISO 4217 currency.
        #[arg(long, default_value = "USD")]
        currency: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key; prints it once.
    Create {
        #[command(flatten)]
        data: DataDirArg,
        /// Reseller id (rsl_...); omit with --role admin.
        #[arg(long)]
        reseller: Option<String>,
        /// admin, reseller or reseller_readonly.
        #[arg(long, default_value = "reseller")]
        role: String,
        /// live or test.
        #[arg(long, default_value = "live")]
        mode: String,
    },
    /// Revoke an API key by id (key_...).
    Revoke {
        #[command(flatten)]
        data: DataDirArg,
        /// Key id.
        id: String,
    },
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
    /// Build a plugin crate for wasm32-wasip2 (release) and pack it into a plugins folder.
    Build {
        /// The plugin crate (holding Cargo.toml and plugin.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The plugins folder to place it in (creates OUT/<id>/).
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate a plugin folder as the gateway would load it: print what it requests, what
    /// is granted and whether it links; exit non-zero with the reason.
    Check {
        /// The plugin folder (holding plugin.toml).
        dir: PathBuf,
        /// Grants file to check against (default: grant nothing).
        #[arg(long)]
        grants: Option<PathBuf>,
    },
    /// Create a plugin crate that builds and passes its tests, to fill in.
    New {
        /// Plugin id, folder and crate name (a-z, 0-9, '-').
        name: String,
        /// Folder to create (default: ./NAME).
        #[arg(long)]
        path: Option<PathBuf>,
        /// The simgate SDK to depend on (default: the SDK this binary was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIMGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(AuditCommand::Verify { data }) => return cli::audit::verify(&data.data_dir),
        Command::Serve(args) => serve(args),
        Command::Plugin(PluginCommand::Pack {
            manifest,
            wasm,
            out,
        }) => cli::pack::run(&manifest, &wasm, &out),
        Command::Reseller(cmd) => offline(cmd.data_dir(), async |gw| reseller_cmd(gw, cmd).await),
        Command::Keys(cmd) => offline(cmd.data_dir(), async |gw| keys_cmd(gw, cmd).await),
        Command::Plugin(PluginCommand::Build { dir, out }) => cli::build::run(&dir, &out),
        Command::Plugin(PluginCommand::Check { dir, grants }) => {
            cli::check::run(&dir, grants.as_deref())
        }
        Command::Plugin(PluginCommand::New { name, path, sdk }) => {
            cli::scaffold::run(&name, path.as_deref(), sdk.as_deref())
        }
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
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = match config.http.workers {
        0 => cores,
        n => n,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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
    let gateway = Arc::new(gateway(&config, store.clone(), registry.clone(), keyring));
    // Plugin changes go to the audit log in the order they happen, from the first load on.
    let (plugin_changes, mut changes) = tokio::sync::mpsc::unbounded_channel();
    registry.audit_changes_to(plugin_changes);
    {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            while let Some(entry) = changes.recv().await {
                let written = match gateway.audit(entry).await {
                    Ok(_) => gateway.store().durable().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = written {
                    tracing::error!(error = %e, "could not write a plugin change to the audit log");
                }
            }
        });
    }
    // Watch before the first load, so a change made while loading is not missed (its
    // event waits in the watcher's queue and is applied after).
    let _watcher = if config.watch.enabled {
        PluginWatcher::start(registry.clone(), config.watch)
            .inspect_err(|e| tracing::error!(error = %e, "hot reload is off; restart to pick up plugin changes"))
            .ok()
    } else {
        None
    };
    {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.load_all()).await?;
    }
    if let Some(keys) = gateway.bootstrap(config.demo).await? {
        println!("admin API key (shown once): {}", keys.admin);
        if let Some((reseller, key)) = keys.demo {
            println!("demo reseller {reseller} API key (shown once): {key}");
        }
    }
    // Unfinished orders' next steps, and housekeeping, run as durable jobs: the catalog
    // refresh (so reads never wait on a supplier) and the idempotency sweep, each
    // rescheduling itself.
    gateway.recover().await?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let clock: Arc<dyn simgate::domain::clock::Clock> =
        Arc::new(simgate::domain::clock::SystemClock);
    GatewayJobs::schedule(store.as_ref(), clock.now_ms())
        .await
        .context("scheduling jobs")?;
    let worker = {
        let handler = Arc::new(GatewayJobs {
            gateway: gateway.clone(),
            catalog_every: std::time::Duration::from_secs(config.orders.catalog_ttl_secs.max(1)),
            sweep_every: std::time::Duration::from_secs(3600),
        });
        let alarm = gateway.alarm();
        let worker = Worker::new(
            store.clone(),
            clock,
            handler,
            WorkerTuning::default(),
            alarm,
        );
        let shutdown = shutdown_rx.clone();
        tokio::spawn(async move { worker.run_until(shutdown).await })
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    println!("simgate listening on http://{}", listener.local_addr()?);
    let state = Arc::new(AppState {
        gateway,
        registry,
        limits: config.http,
        limiter: simgate::api::ratelimit::RateLimiter::new(
            config.http.rate_limit_per_second,
            config.http.rate_limit_burst,
            "API key",
        ),
        inbound_limiter: simgate::api::ratelimit::RateLimiter::new(
            config.http.inbound_rate_per_second,
            config.http.inbound_rate_burst,
            "plugin's inbound route",
        ),
        http_metrics: Default::default(),
        request_log: simgate::api::request_log::RequestLog::start(store.clone()),
        flush_soon: simgate::api::audit::FlushSoon::start(store.clone()),
        audit: Default::default(),
    });
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = shutdown_tx.send(true);
    });
    api::serve(listener, state, shutdown_rx).await;
    // The worker finishes the jobs in hand, then stops.
    let _ = worker.await;
    // Orders still with a supplier stay unfinished; the next start resumes them.
    simgate::domain::store::Store::close(store.as_ref())
        .await
        .context("closing the store")?;
    Ok(())
}

/// The use cases, tuned from the configuration.
fn gateway(
    config: &Config,
    store: Arc<SledStore>,
    suppliers: Arc<dyn simgate::domain::Suppliers>,
    keyring: Arc<FileKeyring>,
) -> Gateway {
    use std::time::Duration;
    let o = config.orders;
    let policy = RetryPolicy {
        max_attempts: o.max_attempts,
        base_backoff: Duration::from_millis(o.base_backoff_ms),
        max_backoff: Duration::from_millis(o.max_backoff_ms),
        poll_interval: Duration::from_millis(o.poll_interval_ms),
        pending_timeout: Duration::from_secs(o.pending_timeout_secs),
        concurrency: o.concurrency,
    };
    let tuning = GatewayTuning {
        sync_wait: Duration::from_millis(o.sync_wait_ms),
        catalog_ttl: Duration::from_secs(o.catalog_ttl_secs),
        rotation_grace: Duration::from_secs(o.key_rotation_grace_secs),
        demo_credit_minor: o.demo_credit_minor,
        idempotency_retention: Duration::from_secs(o.idempotency_retention_secs),
        webhooks: config.webhooks.tuning(),
        ekyc_wait: Duration::from_secs(o.ekyc_wait_secs),
        retention: config.retention.policy(),
        routes: config.routing.clone(),
    };
    let webhooks = simgate::webhooks::HttpWebhooks::new(simgate::webhooks::DeliveryPolicy {
        timeout: Duration::from_millis(config.webhooks.timeout_ms),
        allow_private_addresses: config.webhooks.allow_private_addresses,
        ..Default::default()
    });
    Gateway::new(
        store,
        suppliers,
        keyring,
        Arc::new(simgate::domain::clock::SystemClock),
        policy,
        tuning,
        Arc::new(webhooks),
    )
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

impl ResellerCommand {
    fn data_dir(&self) -> PathBuf {
        match self {
            ResellerCommand::Create { data, .. } | ResellerCommand::Credit { data, .. } => {
                data.data_dir.clone()
            }
        }
    }
}

impl KeysCommand {
    fn data_dir(&self) -> PathBuf {
        match self {
            KeysCommand::Create { data, .. } | KeysCommand::Revoke { data, .. } => {
                data.data_dir.clone()
            }
        }
    }
}

/// No plugins: account commands never reach a supplier.
struct NoSuppliers;

impl simgate::domain::Suppliers for NoSuppliers {
    fn get(&self, _: &str) -> Option<Arc<dyn simgate::domain::Supplier>> {
        None
    }
    fn all(&self) -> Vec<Arc<dyn simgate::domain::Supplier>> {
        Vec::new()
    }
}

/// Run an account command against the data directory, then make it durable.
fn offline(
    data_dir: PathBuf,
    f: impl AsyncFnOnce(&Gateway) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let db = data_dir.join("db");
        if !db.exists() {
            anyhow::bail!(
                "{} holds no gateway data; run `simgate serve --data-dir {}` once first",
                data_dir.display(),
                data_dir.display()
            );
        }
        let store = SledStore::open(&db, 8).map_err(|e| {
            anyhow::anyhow!(
                "{e}: the data directory is probably in use by a running gateway; stop it, or use the admin API (/v1/admin/...)"
            )
        })?;
        let store = Arc::new(store);
        let keyring = Arc::new(FileKeyring::open(&data_dir)?);
        let gateway = gateway(&Config::default(), store.clone(), Arc::new(NoSuppliers), keyring);
        f(&gateway).await?;
        simgate::domain::store::Store::close(store.as_ref()).await?;
        Ok(())
    })
}

/// An audit entry for what an operator did from the command line (as `system`: the CLI
/// holds no API key).
fn by_cli(action: simgate::domain::audit::AuditAction) -> simgate::domain::audit::NewAuditEntry {
    simgate::domain::audit::NewAuditEntry::new(simgate::domain::audit::Actor::System, action)
        .details("from the command line")
}

async fn reseller_cmd(gw: &Gateway, cmd: ResellerCommand) -> anyhow::Result<()> {
    use simgate::domain::audit::{AuditAction, LedgerEntryId};
    match cmd {
        ResellerCommand::Create {
            name, markup_bps, ..
        } => {
            let r = gw.create_reseller(&name, markup_bps).await?;
            gw.audit(
                by_cli(AuditAction::ResellerCreated)
                    .reseller(Some(r.id))
                    .target(r.id),
            )
            .await?;
            println!("{}", r.id);
        }
        ResellerCommand::Credit {
            reseller,
            amount,
            currency,
            ..
        } => {
            let id = reseller
                .parse()
                .map_err(|_| anyhow::anyhow!("{reseller:?} is not a reseller id (rsl_...)"))?;
            let entry = ulid::Ulid::new();
            let b = gw
                .credit(
                    id,
                    amount,
                    &currency,
                    Some("credited from the CLI".into()),
                    entry,
                )
                .await?;
            gw.audit(
                by_cli(AuditAction::CreditPosted)
                    .reseller(Some(id))
                    .target(LedgerEntryId(entry)),
            )
            .await?;
            println!("available {} {currency}, held {}", b.available, b.held);
        }
    }
    Ok(())
}

async fn keys_cmd(gw: &Gateway, cmd: KeysCommand) -> anyhow::Result<()> {
    use simgate::domain::accounts::{KeyMode, Role};
    use simgate::domain::audit::AuditAction;
    match cmd {
        KeysCommand::Create {
            reseller,
            role,
            mode,
            ..
        } => {
            let role = match role.as_str() {
                "admin" => Role::Admin,
                "reseller" => Role::Reseller,
                "reseller_readonly" => Role::ResellerReadonly,
                other => {
                    anyhow::bail!("unknown role {other:?}: admin, reseller or reseller_readonly")
                }
            };
            let mode = match mode.as_str() {
                "live" => KeyMode::Live,
                "test" => KeyMode::Test,
                other => anyhow::bail!("unknown mode {other:?}: live or test"),
            };
            let reseller = reseller
                .map(|r| {
                    r.parse()
                        .map_err(|_| anyhow::anyhow!("{r:?} is not a reseller id (rsl_...)"))
                })
                .transpose()?;
            let (key, record) = gw.create_key(reseller, role, mode).await?;
            gw.audit(
                by_cli(AuditAction::KeyCreated)
                    .reseller(record.reseller)
                    .target(record.id),
            )
            .await?;
            println!("{key}");
            eprintln!("key id {} (shown once: store the key now)", record.id);
        }
        KeysCommand::Revoke { id, .. } => {
            let id = id
                .parse()
                .map_err(|_| anyhow::anyhow!("{id:?} is not a key id (key_...)"))?;
            let key = gw.revoke_key(id).await?;
            gw.audit(
                by_cli(AuditAction::KeyRevoked)
                    .reseller(key.reseller)
                    .target(key.id),
            )
            .await?;
            println!("revoked {}", key.id);
        }
    }
    Ok(())
}
