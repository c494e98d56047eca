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
    /// Whether to create a demo reseller with a test key and credit on first start.
    pub demo: bool,
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
    /// Outbound webhooks to resellers.
    pub webhooks: WebhookSettings,
    /// How long each class of record is kept.
    pub retention: RetentionSettings,
    /// Gateway products offered by several suppliers, with failover.
    pub routing: crate::domain::catalog::Routes,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid literal address"),
            data_dir: PathBuf::from("simgate-data"),
            plugins_dir: None,
            grants_file: None,
            secrets_file: None,
            demo: true,
            plugin_limits: PluginLimits::default(),
            http: HttpLimits::default(),
            store: StoreTuning::default(),
            orders: OrderTuning::default(),
            watch: WatchSettings::default(),
            webhooks: WebhookSettings::default(),
            retention: RetentionSettings::default(),
            routing: Default::default(),
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

/// How the store makes writes durable.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreTuning {
    /// sled page cache (an upper bound; it fills as data grows). Lookups by ICCID and by
    /// idempotency key land on random tree nodes; once those trees outgrow the cache every
    /// order reads pages back from disk (measured: 64 MiB -> 512 MiB took order creation
    /// with ~150k orders stored from ~7% to ~9% of hello world, BENCHMARKS.md).
    pub cache_mib: u64,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning { cache_mib: 512 }
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
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<Config>("listn = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("listn"));
    }
}
