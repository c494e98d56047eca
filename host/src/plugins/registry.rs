//! The registry of loaded plugins: an atomically swapped map from plugin id to the
//! generation serving it. Readers take a snapshot (`Arc`) and keep it for the whole call,
//! so a call that started on one generation finishes on it while new calls see the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::PluginLimits;
use crate::domain::audit::{Actor, AuditAction, NewAuditEntry, PluginId};
use crate::domain::supplier::{Supplier, Suppliers};

use super::engine::PluginEngine;
use super::error::LoadError;
use super::manifest::{Capabilities, Grants};
use super::runtime::{LoadContext, LoadedPlugin};
use super::secrets::SecretStore;
use super::stats::{PluginStats, ReloadCounts, StatsSnapshot};

/// One serving generation of a plugin.
pub struct Generation {
    /// Monotonic number across the registry (bumps on every successful load).
    pub number: u64,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// The plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// How long reading, compiling, linking and smoke-testing it took.
    pub load_ms: u64,
}

/// The registry.
pub struct Registry {
    engine: PluginEngine,
    dir: PathBuf,
    grants_file: PathBuf,
    secrets_file: PathBuf,
    limits: PluginLimits,
    serving: ArcSwap<BTreeMap<String, Arc<Generation>>>,
    failures: Mutex<BTreeMap<String, LoadFailure>>,
    next_generation: Mutex<u64>,
    /// Counters per plugin id, kept across generations (and removals) of that id.
    stats: Mutex<BTreeMap<String, Arc<PluginStats>>>,
    /// Held for a whole reload, so generations swap in the order their files were read.
    reloading: Mutex<()>,
    /// Where plugin changes go for the audit log (see [`Registry::audit_changes_to`]).
    audit: OnceLock<tokio::sync::mpsc::UnboundedSender<NewAuditEntry>>,
    /// Each plugin's `state` store, kept across generations.
    kv: super::kv::PluginKvs,
    /// Each plugin's cached OAuth tokens, kept across generations.
    tokens: super::oauth::TokenCaches,
}

/// The last failed load of a plugin id.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The error message.
    pub error: String,
    /// When it happened.
    pub at: SystemTime,
}

/// Status of one plugin, for the admin API and `plugin check`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Plugin")]
pub struct PluginStatus {
    /// Plugin id.
    pub id: String,
    /// Whether it serves.
    pub state: PluginState,
    /// The serving version, if any.
    pub version: Option<String>,
    /// Its digest.
    pub sha256: Option<String>,
    /// Its generation.
    pub generation: Option<u64>,
    /// When it was loaded (seconds since the epoch).
    pub loaded_at: Option<u64>,
    /// Effective capabilities.
    pub capabilities: Option<Capabilities>,
    /// The last load error, if the latest attempt failed.
    pub last_error: Option<String>,
    /// When the latest attempt failed (seconds since the epoch).
    pub last_error_at: Option<u64>,
    /// How long loading the serving generation took, in milliseconds.
    pub load_ms: Option<u64>,
    /// Loads swapped in and refused since the process started.
    pub reloads: ReloadCounts,
    /// Call counters.
    pub stats: Option<StatsSnapshot>,
}

/// Whether a plugin id serves, after its latest load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// The latest load serves.
    Serving,
    /// The latest load failed; an older version still serves.
    FailedReload,
    /// Nothing serves: the latest load failed and no older version is loaded.
    Failed,
}

/// The plugin folders in `dir`, sorted: its subfolders with UTF-8 names, except those
/// starting with `.` (staging folders).
pub(crate) fn plugin_folders(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    ids.sort();
    Ok(ids)
}

impl Registry {
    /// An empty registry over `dir`.
    pub fn new(
        engine: PluginEngine,
        dir: PathBuf,
        grants_file: PathBuf,
        secrets_file: PathBuf,
        limits: PluginLimits,
    ) -> Registry {
        Registry {
            engine,
            dir,
            grants_file,
            secrets_file,
            limits,
            serving: ArcSwap::from_pointee(BTreeMap::new()),
            failures: Mutex::new(BTreeMap::new()),
            next_generation: Mutex::new(1),
            stats: Mutex::new(BTreeMap::new()),
            reloading: Mutex::new(()),
            audit: OnceLock::new(),
            kv: Default::default(),
            tokens: Default::default(),
        }
    }

    /// Send an audit entry (`plugin.loaded`, `plugin.removed`, by `system`) for every
    /// plugin swapped in or out from now on, in order, to `changes`. A channel, because
    /// loads run on blocking threads and the log is written by an async task; unbounded,
    /// because changes are as rare as file changes in the plugins folder (debounced).
    /// Set once: later calls are ignored.
    pub fn audit_changes_to(&self, changes: tokio::sync::mpsc::UnboundedSender<NewAuditEntry>) {
        let _ = self.audit.set(changes);
    }

    fn audit(&self, entry: NewAuditEntry) {
        if let Some(changes) = self.audit.get()
            && changes.send(entry).is_err()
        {
            tracing::warn!("the audit log no longer takes plugin changes");
        }
    }

    /// The watched folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The operator's grants file.
    pub fn grants_file(&self) -> &Path {
        &self.grants_file
    }

    /// The plugin secrets file.
    pub fn secrets_file(&self) -> &Path {
        &self.secrets_file
    }

    /// Load every plugin folder; failures are recorded and logged, never fatal.
    /// Blocking: compiles components.
    pub fn load_all(&self) {
        let Ok(ids) = plugin_folders(&self.dir) else {
            tracing::warn!(dir = %self.dir.display(), "plugins folder not readable; serving no plugins");
            return;
        };
        for id in ids {
            let _ = self.reload(&id);
        }
    }

    /// (Re)load one plugin folder by id; on success swap it in, on failure keep what serves.
    pub fn reload(&self, id: &str) -> Result<u64, LoadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let stats = self.stats_of(id);
        let dir = self.dir.join(id);
        let result = Grants::read(&self.grants_file).and_then(|grants| {
            let secrets = SecretStore::load(&self.secrets_file)?;
            let cx = LoadContext {
                engine: &self.engine,
                grants: &grants,
                secrets: &secrets,
                limits: self.limits,
                require_digest: true,
                transport: None,
                kv: &self.kv,
                tokens: &self.tokens,
            };
            LoadedPlugin::load(&dir, &cx)
        });
        let load_ms = started.elapsed().as_millis() as u64;
        stats.record_reload(result.is_ok());
        match result {
            Ok(plugin) => {
                let plugin = plugin.count_into(stats);
                let number = {
                    let mut next = self
                        .next_generation
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let n = *next;
                    *next += 1;
                    n
                };
                let version = plugin.shared().version.clone();
                let generation = Arc::new(Generation {
                    number,
                    loaded_at: SystemTime::now(),
                    plugin: Arc::new(plugin),
                    load_ms,
                });
                self.serving.rcu(|map| {
                    let mut map = BTreeMap::clone(map);
                    map.insert(id.to_string(), generation.clone());
                    map
                });
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
                tracing::info!(plugin = id, %version, generation = number, load_ms, "plugin loaded");
                self.audit(
                    NewAuditEntry::new(Actor::System, AuditAction::PluginLoaded)
                        .target(PluginId(id))
                        .details(format!("version {version}, generation {number}")),
                );
                Ok(number)
            }
            Err(e) => {
                let serving = self.generation(id);
                tracing::error!(
                    plugin = id,
                    error = %e,
                    serving_version = serving.as_ref().map(|g| g.plugin.shared().version.as_str()),
                    serving_generation = serving.as_ref().map(|g| g.number),
                    "plugin load failed; the serving generation (if any) keeps serving"
                );
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        id.to_string(),
                        LoadFailure {
                            error: e.to_string(),
                            at: SystemTime::now(),
                        },
                    );
                Err(e)
            }
        }
    }

    /// Unregister a plugin (its folder is gone). Calls in flight finish on their snapshot.
    pub fn remove(&self, id: &str) -> bool {
        let mut removed = false;
        self.serving.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            removed = map.remove(id).is_some();
            map
        });
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if removed {
            tracing::info!(plugin = id, "plugin removed");
            self.audit(
                NewAuditEntry::new(Actor::System, AuditAction::PluginRemoved).target(PluginId(id)),
            );
        }
        removed
    }

    /// The counters of plugin id `id` (created on first use).
    pub fn stats_of(&self, id: &str) -> Arc<PluginStats> {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// The serving generation of a plugin.
    pub fn generation(&self, id: &str) -> Option<Arc<Generation>> {
        self.serving.load().get(id).cloned()
    }

    /// Status of every plugin seen (serving or failed).
    pub fn status(&self) -> Vec<PluginStatus> {
        let serving = self.serving.load();
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut ids: Vec<&String> = serving.keys().chain(failures.keys()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let g = serving.get(id);
                let failure = failures.get(id);
                let shared = g.map(|g| g.plugin.shared());
                let stats = self.stats_of(id).snapshot();
                let secs = |t: SystemTime| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                };
                PluginStatus {
                    id: id.clone(),
                    state: match (g, failure) {
                        (Some(_), None) => PluginState::Serving,
                        (Some(_), Some(_)) => PluginState::FailedReload,
                        _ => PluginState::Failed,
                    },
                    version: shared.map(|s| s.version.clone()),
                    sha256: shared.map(|s| s.sha256.clone()),
                    generation: g.map(|g| g.number),
                    loaded_at: g.map(|g| secs(g.loaded_at)),
                    capabilities: shared.map(|s| s.capabilities.clone()),
                    last_error: failure.map(|f| f.error.clone()),
                    last_error_at: failure.map(|f| secs(f.at)),
                    load_ms: g.map(|g| g.load_ms),
                    reloads: stats.reloads,
                    stats: Some(stats),
                }
            })
            .collect()
    }
}

impl Suppliers for Registry {
    fn get(&self, plugin_id: &str) -> Option<Arc<dyn Supplier>> {
        self.generation(plugin_id)
            .map(|g| g.plugin.clone() as Arc<dyn Supplier>)
    }

    fn all(&self) -> Vec<Arc<dyn Supplier>> {
        self.serving
            .load()
            .values()
            .map(|g| g.plugin.clone() as Arc<dyn Supplier>)
            .collect()
    }

    fn known(&self, plugin_id: &str) -> bool {
        self.serving.load().contains_key(plugin_id)
            || self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(plugin_id)
    }
}
