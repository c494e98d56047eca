//! `simgate serve`: run the gateway.
//!
//! Start-up binds the port first and prints `simgate listening on http://ADDR`, so a
//! supervisor sees the process alive at once; then it opens the store, loads the plugins,
//! mints the first keys (first start only) and recovers unfinished orders. Until that is
//! done the API answers `/healthz` 200 and everything else 503 `starting`
//! (`simgate::api::startup`); then it serves. SIGTERM or Ctrl-C stops accepting, drains
//! in-flight requests and lets the job worker finish what it holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use simgate::api::{self, AppState, Startup};
use simgate::config::{Config, LogFormat, StoreBackend};
use simgate::domain::clock::{Clock, SystemClock};
use simgate::domain::fulfilment::RetryPolicy;
use simgate::domain::gateway::{Gateway, GatewayTuning};
use simgate::domain::store::Store;
use simgate::jobs::{GatewayJobs, Worker};
use simgate::node::ThisNode;
use simgate::plugins::{PluginEngine, PluginWatcher, Registry};
use simgate::privacy::FileKeyring;
use simgate::store::{PgStore, SledStore};

use super::first_start;

/// `simgate serve` flags; each overrides the config file.
#[derive(clap::Args)]
pub struct ServeArgs {
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
    /// On first start, also create a demo reseller with a test key and credit (for a
    /// trial; a production gateway starts with no account).
    #[arg(long, env = "SIMGATE_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    demo: bool,
    /// Log lines as `text` (default) or `json` (one object a line, for a log collector).
    #[arg(long, env = "SIMGATE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The configuration: the file (or the defaults), then the flags over it.
    fn config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if let Some(d) = self.data_dir {
            config.data_dir = d;
        }
        if self.plugins_dir.is_some() {
            config.plugins_dir = self.plugins_dir;
        }
        if self.grants.is_some() {
            config.grants_file = self.grants;
        }
        config.demo |= self.demo;
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        // Read here rather than as a flag: a URL with a password must not show in `ps`.
        if let Some(url) = std::env::var_os("SIMGATE_STORE_URL") {
            let url = url
                .into_string()
                .map_err(|_| anyhow::anyhow!("SIMGATE_STORE_URL is not valid UTF-8"))?;
            config.store.url = Some(url);
        }
        Ok(config)
    }
}

/// Run the gateway until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    super::logging::init(config.log.format);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = match config.http.workers {
        0 => cores,
        n => n,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve(config))
}

/// Bind, start up behind the listener, serve, and shut down cleanly.
async fn serve(config: Config) -> anyhow::Result<()> {
    let began = Instant::now();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    // Tests and scripts read the port from this line: keep its prefix.
    println!("simgate listening on http://{address}");
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = shutdown_tx.send(true);
    });
    let startup = Startup::new();
    let server = tokio::spawn(api::serve(
        listener,
        config.http,
        startup.clone(),
        shutdown.clone(),
    ));
    // The watcher is held to the end: hot reload lasts as long as the gateway runs.
    let Running {
        state,
        store,
        worker,
        heartbeat,
        _watcher,
    } = start(&config, address.to_string(), shutdown).await?;
    startup.ready(state.clone());
    let ms = began.elapsed().as_millis();
    tracing::info!("ready in {ms} ms");
    let _ = server.await;
    // The worker finishes the jobs in hand, then stops.
    let _ = worker.await;
    // Holding no job now: the other nodes may count this one gone at once.
    let (stop_beating, beating) = heartbeat;
    let _ = stop_beating.send(true);
    let _ = beating.await;
    let stopped = state
        .node
        .stopped(store.as_ref(), &state.registry, SystemClock.now_ms())
        .await;
    if let Err(e) = stopped {
        tracing::warn!(error = %e, "could not record this node's stop; peers see it gone after its heartbeats run out");
    }
    // Orders still with a supplier stay unfinished; the next start resumes them.
    Store::close(store.as_ref())
        .await
        .context("closing the store")?;
    Ok(())
}

/// A started gateway: what the API serves, and what shutdown waits for.
struct Running {
    /// Handed to the API once ready.
    state: Arc<AppState>,
    /// Closed last, after the server and the worker.
    store: Arc<dyn Store>,
    /// The job worker, stopping when `shutdown` flips.
    worker: tokio::task::JoinHandle<()>,
    /// This node's heartbeat, and what stops it: it beats until the worker has stopped.
    heartbeat: (watch::Sender<bool>, tokio::task::JoinHandle<()>),
    /// Hot reload, for as long as the gateway runs (`None` when off or refused).
    _watcher: Option<PluginWatcher>,
}

/// Open the store, load the plugins, mint the first keys, recover unfinished work and
/// start the job worker: everything the API needs before it can serve.
async fn start(
    config: &Config,
    address: String,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    std::fs::create_dir_all(config.plugins_dir())?;
    let keyring = Arc::new(FileKeyring::open(&config.data_dir)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let node = Arc::new(ThisNode::open(&config.data_dir, address, clock.now_ms())?);
    let store = open_store(config).await?;
    check_keys(store.as_ref(), &keyring, &config.data_dir).await?;
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
    let gateway = Arc::new(gateway(config, store.clone(), registry.clone(), keyring));
    audit_plugin_changes(&registry, gateway.clone());
    // Watch before the first load, so a change made while loading is not missed (its
    // event waits in the watcher's queue and is applied after).
    let watcher = if config.watch.enabled {
        PluginWatcher::start(registry.clone(), config.watch)
            .inspect_err(|e| tracing::error!(error = %e, "hot reload is off; restart to pick up plugin changes"))
            .ok()
    } else {
        None
    };
    tracing::info!(plugins_dir = %config.plugins_dir().display(), "loading plugins");
    {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.load_all()).await?;
    }
    first_start::bootstrap(&gateway, &config.data_dir, config.demo).await?;
    tracing::info!("recovering unfinished orders");
    // Unfinished orders' next steps, and housekeeping, run as durable jobs: the catalog
    // refresh (so reads never wait on a supplier) and the idempotency sweep, each
    // rescheduling itself.
    gateway.recover().await?;
    // Alive before the first claim: the jobs this run claims name it.
    let (stop_beating, beats_stop) = watch::channel(false);
    let heartbeat = node
        .clone()
        .start_heartbeat(
            store.clone(),
            registry.clone(),
            clock.clone(),
            config.jobs.heartbeat(),
            beats_stop,
        )
        .await
        .context("recording this node in the store")?;
    tracing::info!(node = %node.id, run = %node.run, "node registered");
    GatewayJobs::schedule(store.as_ref(), clock.now_ms())
        .await
        .context("scheduling jobs")?;
    let worker = {
        let handler = Arc::new(GatewayJobs {
            gateway: gateway.clone(),
            catalog_every: Duration::from_secs(config.orders.catalog_ttl_secs.max(1)),
            sweep_every: Duration::from_secs(3600),
            adopt_every: config.jobs.adopt_every(),
        });
        let worker = Worker::new(
            node.run.clone(),
            store.clone(),
            clock,
            handler,
            config.jobs.worker(),
            gateway.alarm(),
        );
        tokio::spawn(async move { worker.run_until(shutdown).await })
    };
    let state = Arc::new(AppState {
        gateway,
        registry,
        limits: config.http,
        limiter: api::ratelimit::RateLimiter::new(
            config.http.rate_limit_per_second,
            config.http.rate_limit_burst,
            "API key",
        ),
        inbound_limiter: api::ratelimit::RateLimiter::new(
            config.http.inbound_rate_per_second,
            config.http.inbound_rate_burst,
            "plugin's inbound route",
        ),
        http_metrics: Default::default(),
        request_log: api::request_log::RequestLog::start(store.clone()),
        flush_soon: api::audit::FlushSoon::start(store.clone()),
        audit: Default::default(),
        backups: config.data_dir.join("backups"),
        node,
    });
    Ok(Running {
        state,
        store,
        worker,
        heartbeat: (stop_beating, heartbeat),
        _watcher: watcher,
    })
}

/// Where the store keeps the fingerprint of the key files it was first used with.
const KEYS_FINGERPRINT: &str = "keys/fingerprint";

/// Refuse to start with key files other than those the store was first used with (the
/// first start records their fingerprint): every node sharing a database needs the same
/// `pepper.key`, `master.key` and `audit.key`, or it could neither recognise API keys
/// nor open what another node sealed.
async fn check_keys(
    store: &dyn Store,
    keyring: &FileKeyring,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let ours = keyring.fingerprint().as_bytes();
    // Two nodes starting at once on a new database with different keys: one wins, the
    // other is refused.
    match store.first_meta(KEYS_FINGERPRINT, ours).await? {
        kept if kept == ours => Ok(()),
        _ => anyhow::bail!(
            "the key files in {} are not those this store was first used with: every node \
             sharing a database needs the same pepper.key, master.key and audit.key (copy \
             them from a node already serving it)",
            data_dir.display()
        ),
    }
}

/// Open the store the configuration names: sled in the data directory (recovering what
/// came after its last checkpoint, then checkpointing in the background), or PostgreSQL
/// at `[store] url` (migrated on open; several nodes may share it).
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.store.backend {
        StoreBackend::Sled => {
            tracing::info!(data_dir = %config.data_dir.display(), "opening the store");
            // Recovery reads what came after the last checkpoint: off the runtime's
            // threads, which answer `/readyz` meanwhile.
            let (db, cache_mib) = (config.data_dir.join("db"), config.store.cache_mib);
            let store = tokio::task::spawn_blocking(move || SledStore::open(&db, cache_mib))
                .await?
                .map(Arc::new)
                .context("opening the store")?;
            let recovery = store.recovery();
            tracing::info!(
                from_checkpoint = recovery.from_checkpoint,
                entries_read = recovery.entries_read,
                repaired = recovery.repaired,
                "store open"
            );
            store.start_checkpoints(config.store.checkpoints());
            Ok(store)
        }
        StoreBackend::Postgres => {
            let Some(url) = config.store.url.as_deref() else {
                anyhow::bail!(
                    "[store] backend = \"postgres\" needs a database: set [store] url or \
                     SIMGATE_STORE_URL (postgresql://USER@HOST/DATABASE)"
                );
            };
            // The URL may carry a password: only its host and database are shown.
            let shown = config.store.url_for_log();
            tracing::info!(url = %shown, "opening the PostgreSQL store");
            let store = PgStore::open(url, config.store.pg_options())
                .await
                .with_context(|| {
                    format!(
                        "opening the PostgreSQL store at {shown} (is the database running, \
                         and the URL right?)"
                    )
                })?;
            tracing::info!("store open");
            Ok(Arc::new(store))
        }
    }
}

/// Write plugin changes to the audit log in the order they happen, from the first load on.
fn audit_plugin_changes(registry: &Registry, gateway: Arc<Gateway>) {
    let (plugin_changes, mut changes) = tokio::sync::mpsc::unbounded_channel();
    registry.audit_changes_to(plugin_changes);
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

/// The use cases, tuned from the configuration (also used by the offline account
/// commands, with no suppliers).
pub fn gateway(
    config: &Config,
    store: Arc<dyn Store>,
    suppliers: Arc<dyn simgate::domain::Suppliers>,
    keyring: Arc<FileKeyring>,
) -> Gateway {
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
        sandboxes: config.test_mode.clone(),
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
        Arc::new(SystemClock),
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
