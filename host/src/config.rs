//! One typed configuration for the whole gateway.
//!
//! Every knob has a default that works with no file at all, so `simgate serve` runs on an
//! empty machine. A TOML file (`--config`) overrides defaults; command-line flags and
//! `SIMGATE_*` environment variables override the file. Each limit carries a one-line
//! reason: change a number here, nowhere else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use simgate_runtime::limits::{LimitOverrides, PluginLimits};

use serde::Deserialize;

/// The gateway's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on. Loopback by default: TLS is terminated in front.
    pub listen: SocketAddr,
    /// The data directory: the sled database, key files and the compiled-plugin cache.
    pub data_dir: PathBuf,
    /// The watched plugins folder; one sub-folder per plugin. Defaults to `DATA_DIR/plugins`.
    pub plugins_dir: Option<PathBuf>,
    /// The operator's grants file. Defaults to `DATA_DIR/grants.toml`; absent means
    /// "grant nothing beyond the always-safe imports".
    pub grants_file: Option<PathBuf>,
    /// Secret values for plugins, by plugin and name. Defaults to `DATA_DIR/secrets.toml`.
    pub secrets_file: Option<PathBuf>,
    /// Whether to create a demo reseller with a test key and credit on first start. Off
    /// by default: a production gateway must not start with an account nobody asked for
    /// (`--demo`, `SIMGATE_DEMO=true` or `./dev serve` turn it on for a trial).
    pub demo: bool,
    /// How the process logs.
    pub log: LogSettings,
    /// Limits for plugin calls (operator grants may lower them per plugin, never raise).
    pub plugin_limits: PluginLimits,
    /// Limits for the HTTP API.
    pub http: HttpLimits,
    /// How the store acknowledges writes.
    pub store: StoreTuning,
    /// Order fulfilment and catalog behaviour.
    pub orders: OrderTuning,
    /// Hot reload of the plugins folder.
    pub watch: WatchSettings,
    /// The durable job worker.
    pub jobs: JobSettings,
    /// Outbound webhooks to resellers.
    pub webhooks: WebhookSettings,
    /// How long each class of record is kept.
    pub retention: RetentionSettings,
    /// Gateway products offered by several suppliers, with failover.
    pub routing: crate::domain::catalog::Routes,
    /// Test mode: which plugins are sandboxes (`[test_mode] sandbox_plugins`, default
    /// `["sandbox"]`). Test-mode keys order only from them; live keys never do.
    pub test_mode: crate::domain::catalog::Sandboxes,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid literal address"),
            data_dir: PathBuf::from("simgate-data"),
            plugins_dir: None,
            grants_file: None,
            secrets_file: None,
            demo: false,
            log: LogSettings::default(),
            plugin_limits: PluginLimits::default(),
            http: HttpLimits::default(),
            store: StoreTuning::default(),
            orders: OrderTuning::default(),
            watch: WatchSettings::default(),
            jobs: JobSettings::default(),
            webhooks: WebhookSettings::default(),
            retention: RetentionSettings::default(),
            routing: Default::default(),
            test_mode: Default::default(),
        }
    }
}

impl Config {
    /// Read a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The watched plugins folder.
    pub fn plugins_dir(&self) -> PathBuf {
        self.plugins_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// The operator's grants file.
    pub fn grants_file(&self) -> PathBuf {
        self.grants_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("grants.toml"))
    }

    /// The plugin secrets file.
    pub fn secrets_file(&self) -> PathBuf {
        self.secrets_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets.toml"))
    }
}

/// Limits on the HTTP API.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Largest request body. Orders are a few hundred bytes; 64 KiB leaves room for metadata.
    pub max_body_bytes: usize,
    /// Time to read a request's headers; slow-loris connections are closed after it.
    pub header_read_timeout_ms: u64,
    /// Time to read a request's body once its headers are in (and the caller is
    /// authenticated). API bodies are small: a client still sending after this is stalling.
    pub body_read_timeout_ms: u64,
    /// How long a request refused before its body was read (401, 404, 413, ...) may keep
    /// sending it, so a client that writes its whole body before reading still gets the
    /// problem; past it the connection is closed.
    pub drain_timeout_ms: u64,
    /// How much of such a body is read and thrown away before the connection is closed.
    /// 4 MiB covers any client's honest mistake at loopback or LAN speed.
    pub max_drain_bytes: usize,
    /// Connections open at once. Beyond it a new connection is answered 503 and closed,
    /// so idle or stalling clients cannot exhaust file descriptors and memory.
    pub max_connections: usize,
    /// Graceful shutdown: how long in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// Requests per second one API key may make, sustained.
    pub rate_limit_per_second: f64,
    /// Requests one API key may make in a burst.
    pub rate_limit_burst: f64,
    /// Unauthenticated inbound requests (provider callbacks, supplier webhooks) per second
    /// per plugin, sustained: each runs the plugin, so a flood of forged ones must not
    /// take every plugin slot from the orders.
    pub inbound_rate_per_second: f64,
    /// Inbound requests per plugin in a burst.
    pub inbound_rate_burst: f64,
    /// Runtime worker threads; 0 means one per CPU core (measured best: requests, plugin
    /// calls and store writes all run on the workers, and more threads than cores only
    /// add switching).
    pub workers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            drain_timeout_ms: 2_000,
            max_drain_bytes: 4 * 1024 * 1024,
            max_connections: 1024,
            shutdown_grace_ms: 10_000,
            // Generous for an integration, tight enough that one runaway client cannot
            // starve the others or the suppliers.
            rate_limit_per_second: 200.0,
            rate_limit_burst: 400.0,
            inbound_rate_per_second: 50.0,
            inbound_rate_burst: 100.0,
            workers: 0,
        }
    }
}

/// Where the gateway keeps its records, and how the store makes writes durable.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreTuning {
    /// `sled` (default: an embedded database in the data directory, one node) or
    /// `postgres` (a PostgreSQL database at `url`, which several nodes can share).
    pub backend: StoreBackend,
    /// The PostgreSQL URL (`postgresql://user@host/db` or `key=value` pairs); the
    /// `SIMGATE_STORE_URL` environment variable overrides it, so a password need not sit
    /// in the config file. Never logged whole (see [`StoreTuning::url_for_log`]).
    pub url: Option<String>,
    /// PostgreSQL connections a node opens at most. A commit holds one for a few round
    /// trips; sixteen keep a node's workers busy while leaving room for several nodes
    /// within PostgreSQL's default of 100 connections.
    pub pool_size: usize,
    /// PostgreSQL connections a node keeps apart for order locks: each change to an order
    /// (a fulfilment step with its supplier call, a cancel, a supplier's webhook) holds
    /// that order's lock, across every node, on one of them. Changes to more orders at
    /// once than this wait for a free one. A database serving N nodes needs
    /// `max_connections` of at least N × (`pool_size` + `lock_pool_size`): 80 for two
    /// nodes with the defaults.
    pub lock_pool_size: usize,
    /// CA certificates (PEM) that sign the database server's certificate, for a `url`
    /// with `sslmode=require` (a database on another host must have it): a private CA,
    /// as managed databases use. Without it, Mozilla's roots. The certificate and the
    /// host name are always verified.
    pub ca_file: Option<std::path::PathBuf>,
    /// How long connecting to PostgreSQL may take before the call fails (503) instead of
    /// hanging: a local database answers in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long a call waits for a free PostgreSQL connection when all are busy, before
    /// it fails (503): longer than any honest commit, short enough that a client's retry
    /// is not stacked behind a stuck pool.
    pub pool_wait_ms: u64,
    /// sled page cache (an upper bound; it fills as data grows). Lookups by ICCID and by
    /// idempotency key land on random tree nodes; once those trees outgrow the cache every
    /// order reads pages back from disk (measured: 64 MiB -> 512 MiB took order creation
    /// with ~150k orders stored from ~7% to ~9% of hello world, BENCHMARKS.md).
    pub cache_mib: u64,
    /// Write the books down after this many ledger entries, so that opening after a
    /// crash reads at most about this many (plus `checkpoint_every_secs`' worth).
    pub checkpoint_every_entries: usize,
    /// ...and at least this often while entries are written.
    pub checkpoint_every_secs: u64,
}

/// Which store the gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// sled in `DATA_DIR/db`: one node, nothing else to run.
    #[default]
    Sled,
    /// PostgreSQL at `[store] url`: several nodes on one database.
    Postgres,
}

impl StoreTuning {
    /// When the store writes checkpoints.
    pub fn checkpoints(&self) -> crate::store::CheckpointPolicy {
        crate::store::CheckpointPolicy {
            every_entries: self.checkpoint_every_entries.max(1),
            every: std::time::Duration::from_secs(self.checkpoint_every_secs.max(1)),
        }
    }

    /// How to reach PostgreSQL beyond its URL.
    pub fn pg_options(&self) -> crate::store::PgOptions {
        crate::store::PgOptions {
            max_connections: self.pool_size.max(1),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.max(1)),
            pool_wait: Duration::from_millis(self.pool_wait_ms.max(1)),
            lock_connections: self.lock_pool_size.max(1),
            ca_file: self.ca_file.clone(),
            schema: None,
        }
    }

    /// The URL with any password and query left out, for logs and errors.
    pub fn url_for_log(&self) -> String {
        self.url.as_deref().map(redact_url).unwrap_or_default()
    }
}

/// `url` with what may be secret left out: the user info's password, the query (which
/// can carry `password=`), or all of a `key=value` string but its host and database.
fn redact_url(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    {
        let rest = rest.split('?').next().unwrap_or_default();
        let (user, host) = match rest.rsplit_once('@') {
            Some((user, host)) => (user.split(':').next().unwrap_or_default(), host),
            None => ("", rest),
        };
        let at = if user.is_empty() { "" } else { "@" };
        return format!("postgresql://{user}{at}{host}");
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| {
            ["host=", "port=", "dbname=", "user="]
                .iter()
                .any(|k| pair.starts_with(k))
        })
        .collect();
    kept.join(" ")
}

impl Default for StoreTuning {
    fn default() -> Self {
        let checkpoints = crate::store::CheckpointPolicy::default();
        StoreTuning {
            backend: StoreBackend::Sled,
            url: None,
            pool_size: 16,
            lock_pool_size: 24,
            ca_file: None,
            connect_timeout_ms: 5_000,
            pool_wait_ms: 10_000,
            cache_mib: 512,
            checkpoint_every_entries: checkpoints.every_entries,
            checkpoint_every_secs: checkpoints.every.as_secs(),
        }
    }
}

/// Order fulfilment, catalog and key settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderTuning {
    /// How long `POST /v1/orders` waits for fulfilment before answering with the order as
    /// it stands. Most suppliers deliver in well under a second.
    pub sync_wait_ms: u64,
    /// Failed supplier calls in a row before an order fails (a poll that finds the order
    /// still pending is not a failure).
    pub max_attempts: u32,
    /// First retry delay after `unavailable`/`rate-limited`; doubles per attempt.
    pub base_backoff_ms: u64,
    /// Longest retry delay.
    pub max_backoff_ms: u64,
    /// Delay between polls of a pending supplier order.
    pub poll_interval_ms: u64,
    /// How long an order may stay pending at its supplier (from acceptance) before it
    /// fails `supplier_timeout`; polls of a pending order do not count as attempts.
    pub pending_timeout_secs: u64,
    /// Orders fulfilled at once (each holds at most one plugin call).
    pub concurrency: usize,
    /// Catalogs older than this are refreshed; also the period of the background refresh.
    pub catalog_ttl_secs: u64,
    /// How long a rotated API key keeps working: time to roll out the new one.
    pub key_rotation_grace_secs: u64,
    /// Prepaid credit given to the demo reseller, in US cents.
    pub demo_credit_minor: i64,
    /// How long an Idempotency-Key is honoured (and its record kept). 24 h covers any
    /// sane client retry schedule; older keys are swept hourly.
    pub idempotency_retention_secs: u64,
    /// How long an order for a product that needs eKYC waits for its verification
    /// session to open before it fails and its hold is released (7 days).
    pub ekyc_wait_secs: u64,
}

impl Default for OrderTuning {
    fn default() -> Self {
        OrderTuning {
            sync_wait_ms: 5_000,
            max_attempts: 8,
            base_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            poll_interval_ms: 2_000,
            pending_timeout_secs: 24 * 3600,
            concurrency: 64,
            catalog_ttl_secs: 600,
            key_rotation_grace_secs: 24 * 3600,
            demo_credit_minor: 100_000,
            idempotency_retention_secs: 24 * 3600,
            ekyc_wait_secs: 7 * 24 * 3600,
        }
    }
}

/// Logging (`[log]`). The level is `SIMGATE_LOG` (an env-filter, default `info`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (the default, for a terminal or journal) or `json` (one JSON object a line,
    /// for a log collector). `--log-format` and `SIMGATE_LOG_FORMAT` override it.
    pub format: LogFormat,
}

/// The shape of log lines on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: text or json")),
        }
    }
}

/// Outbound webhooks: how deliveries to resellers' endpoints are made and retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Whether endpoints may be at loopback, private, link-local (cloud metadata) or other
    /// non-public addresses. Off: a reseller's URL must never reach the operator's own
    /// network. On only for receivers the operator runs itself (and tests).
    pub allow_private_addresses: bool,
    /// One attempt, from resolving the host to the last byte kept (Standard Webhooks: 15 s).
    pub timeout_ms: u64,
    /// Waits before each try; the default is Standard Webhooks' example schedule
    /// (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h), +0-10% jitter.
    pub schedule_ms: Vec<u64>,
    /// An endpoint whose every delivery failed for this long is disabled (5 days, as Svix).
    pub disable_after_secs: u64,
    /// How often committed events are turned into deliveries: the delay before the first
    /// try, at most.
    pub dispatch_ms: u64,
    /// How long a rotated secret keeps signing beside the new one.
    pub rotation_grace_secs: u64,
    /// Endpoints a reseller may register.
    pub max_endpoints: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let tuning = crate::domain::webhooks::WebhookTuning::default();
        WebhookSettings {
            allow_private_addresses: false,
            timeout_ms: 15_000,
            schedule_ms: tuning
                .schedule
                .iter()
                .map(|d| d.as_millis() as u64)
                .collect(),
            disable_after_secs: tuning.disable_after.as_secs(),
            dispatch_ms: tuning.dispatch_every.as_millis() as u64,
            rotation_grace_secs: tuning.rotation_grace.as_secs(),
            max_endpoints: tuning.max_endpoints,
        }
    }
}

impl WebhookSettings {
    /// The domain's tuning.
    pub fn tuning(&self) -> crate::domain::webhooks::WebhookTuning {
        use std::time::Duration;
        crate::domain::webhooks::WebhookTuning {
            schedule: self
                .schedule_ms
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
            disable_after: Duration::from_secs(self.disable_after_secs),
            dispatch_every: Duration::from_millis(self.dispatch_ms.max(1)),
            rotation_grace: Duration::from_secs(self.rotation_grace_secs),
            max_endpoints: self.max_endpoints,
        }
    }
}

/// Retention periods (P10), in days. Records past theirs are deleted by a background
/// sweep, a bounded batch at a time.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// The API request log (30 days).
    pub requests_days: u64,
    /// Webhook delivery attempts (30 days).
    pub webhook_attempts_days: u64,
    /// Transaction records: orders and their eSIMs, after the order's last change
    /// (7 years, 2557 days).
    pub transactions_days: u64,
    /// A closed account's data, after closure (2 years, 731 days).
    pub closed_accounts_days: u64,
    /// The audit log of security events (90 days); older entries are purged under a
    /// signed checkpoint, so what is left still verifies.
    pub audit_days: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let policy = crate::domain::use_cases::retention::RetentionPolicy::default();
        RetentionSettings {
            requests_days: policy.requests.as_secs() / DAY,
            webhook_attempts_days: policy.webhook_attempts.as_secs() / DAY,
            transactions_days: policy.transactions.as_secs() / DAY,
            closed_accounts_days: policy.closed_accounts.as_secs() / DAY,
            audit_days: policy.audit.as_secs() / DAY,
        }
    }
}

const DAY: u64 = 24 * 3600;

impl RetentionSettings {
    /// The domain's policy.
    pub fn policy(&self) -> crate::domain::use_cases::retention::RetentionPolicy {
        use std::time::Duration;
        crate::domain::use_cases::retention::RetentionPolicy {
            requests: Duration::from_secs(self.requests_days * DAY),
            webhook_attempts: Duration::from_secs(self.webhook_attempts_days * DAY),
            transactions: Duration::from_secs(self.transactions_days * DAY),
            closed_accounts: Duration::from_secs(self.closed_accounts_days * DAY),
            audit: Duration::from_secs(self.audit_days.saturating_mul(DAY)),
        }
    }
}

/// The durable job worker (fulfilment steps, webhook deliveries, housekeeping).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// How long a claim holds a job: longer than any run, or another node (or the next
    /// round) runs it again meanwhile (10 minutes). A job whose node is gone (killed, or
    /// restarted) is taken up sooner, once the node misses its heartbeats.
    pub lease_secs: u64,
    /// How often a node renews its record in the store (`GET /v1/admin/nodes`). A node
    /// that misses four beats counts as gone, and the others take up the jobs it had in
    /// hand (5 s: a killed node's jobs wait about 20 s).
    pub heartbeat_ms: u64,
    /// How often a node looks for unfinished orders left without a next step (their
    /// node died during the first step, which runs in the request), and how long such an
    /// order must have been left alone to be taken up (60 s).
    pub adopt_after_secs: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            lease_secs: 600,
            heartbeat_ms: 5_000,
            adopt_after_secs: 60,
        }
    }
}

impl JobSettings {
    /// How this node beats.
    pub fn heartbeat(&self) -> crate::domain::nodes::Heartbeat {
        crate::domain::nodes::Heartbeat {
            every: Duration::from_millis(self.heartbeat_ms.max(10)),
        }
    }

    /// How often orders left without a next step are looked for.
    pub fn adopt_every(&self) -> Duration {
        Duration::from_secs(self.adopt_after_secs.max(1))
    }

    /// The worker's pacing with this lease.
    pub fn worker(&self) -> crate::jobs::WorkerTuning {
        crate::jobs::WorkerTuning {
            lease: Duration::from_secs(self.lease_secs.max(1)),
            ..Default::default()
        }
    }
}

/// Hot reload: the watcher on the plugins folder, the grants file and the secrets file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSettings {
    /// Watch at all. Off, plugins load once at start (e.g. a read-only image).
    pub enabled: bool,
    /// Quiet period per plugin folder before it is reloaded. Copying a package is a
    /// burst of events within a few ms; 200 ms lets a copy finish (saving compile runs on
    /// half-written files) while a reload still serves well within a second.
    pub debounce_ms: u64,
    /// How often every plugin folder and settings file is compared with what its last
    /// reload read, so that a change whose events were lost (files written into a new
    /// folder before its watch existed, a watch the OS refused) still loads. Stamping a
    /// folder costs a directory listing and a few `stat`s. Below 100 ms counts as 100 ms.
    pub resync_ms: u64,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            enabled: true,
            debounce_ms: 200,
            resync_ms: 1000,
        }
    }
}

impl WatchSettings {
    /// The quiet period.
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }

    /// The resync period (at least 100 ms).
    pub fn resync(&self) -> Duration {
        Duration::from_millis(self.resync_ms.max(100))
    }
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (names the line and the field).
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_sled_unless_postgres_is_asked_for() {
        assert_eq!(Config::default().store.backend, StoreBackend::Sled);
        let c: Config =
            toml::from_str("[store]\nbackend = \"postgres\"\nurl = \"postgresql://a@/b\"\n")
                .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        assert_eq!(c.store.pool_size, 16);
        assert!(toml::from_str::<Config>("[store]\nbackend = \"mysql\"\n").is_err());
    }

    #[test]
    fn a_logged_store_url_leaves_out_the_password() {
        let shown = |url: &str| {
            StoreTuning {
                url: Some(url.into()),
                ..Default::default()
            }
            .url_for_log()
        };
        assert_eq!(
            shown("postgresql://gw:s3cret@db.local:5432/simgate?sslmode=disable&password=x"),
            "postgresql://gw@db.local:5432/simgate"
        );
        assert_eq!(shown("postgres://db/simgate"), "postgresql://db/simgate");
        assert_eq!(
            shown("host=/run/pg dbname=simgate password=s3cret"),
            "host=/run/pg dbname=simgate"
        );
    }

    #[test]
    fn defaults_work_without_a_file() {
        let c = Config::default();
        assert_eq!(c.plugins_dir(), PathBuf::from("simgate-data/plugins"));
        assert_eq!(c.plugin_limits.memory_mib, 32);
    }

    #[test]
    fn overrides_only_lower_limits() {
        let base = PluginLimits::default();
        let over = LimitOverrides {
            memory_mib: Some(1024),
            timeout_ms: Some(100),
            ..Default::default()
        };
        let l = base.lowered_by(&over);
        assert_eq!(l.memory_mib, 32, "a manifest cannot raise the memory cap");
        assert_eq!(l.timeout_ms, 100);
    }

    #[test]
    fn the_watcher_resyncs_every_second_and_never_faster_than_every_100_ms() {
        assert_eq!(Config::default().watch.resync(), Duration::from_secs(1));
        let c: Config = toml::from_str("[watch]\nresync_ms = 0\n").unwrap();
        assert_eq!(c.watch.resync(), Duration::from_millis(100));
        let c: Config = toml::from_str("[watch]\nresync_ms = 250\n").unwrap();
        assert_eq!(c.watch.resync(), Duration::from_millis(250));
    }

    #[test]
    fn audit_entries_are_kept_90_days_unless_configured() {
        assert_eq!(
            Config::default().retention.policy().audit,
            Duration::from_secs(90 * 24 * 3600)
        );
        let c: Config = toml::from_str("[retention]\naudit_days = 30\n").unwrap();
        assert_eq!(
            c.retention.policy().audit,
            Duration::from_secs(30 * 24 * 3600)
        );
    }

    #[test]
    fn no_demo_account_and_text_logs_unless_asked_for() {
        let c = Config::default();
        assert!(!c.demo);
        assert_eq!(c.log.format, LogFormat::Text);
        let c: Config = toml::from_str("demo = true\n[log]\nformat = \"json\"\n").unwrap();
        assert!(c.demo);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(toml::from_str::<Config>("[log]\nformat = \"xml\"\n").is_err());
        assert_eq!("JSON".parse(), Ok(LogFormat::Json));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<Config>("listn = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("listn"));
    }
}
