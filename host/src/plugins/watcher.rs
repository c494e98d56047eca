//! Hot reload: a `notify` watcher on the plugins folder, the grants file and the secrets
//! file, debounced per plugin folder, driving [`Registry::reload`] and [`Registry::remove`]
//! on a dedicated thread (compiling is blocking work; it never runs on the async runtime).
//!
//! What an event means:
//!
//! | change | action |
//! |---|---|
//! | anything under `PLUGINS/NAME/` (or the folder itself) | after NAME has been quiet for the debounce period: reload NAME if the folder exists, else unregister it |
//! | the grants file or the secrets file | after the same quiet period: reload every plugin folder, unregister vanished ones |
//! | names starting with `.` directly in `PLUGINS/` | ignored: staging folders (`cp -r acme .acme && mv .acme acme`) |
//! | reads (open, close without write) | ignored: the reload itself reads the files |
//!
//! Why this is safe against partial writes, whatever order a writer uses (wasm then
//! manifest, manifest then wasm, temp file then rename, delete and recreate the folder):
//! the manifest names the component's sha256 and the registry refuses a component whose
//! digest differs, so a half-written package fails its reload, the serving generation keeps
//! serving, the failure shows on the admin API and in metrics, and the writer's next event
//! retries. The debounce only saves compile runs on packages still being written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::WatchSettings;

use super::registry::Registry;

/// The running watcher. Dropping it stops watching and ends its thread.
pub struct PluginWatcher {
    _watcher: RecommendedWatcher,
}

/// What a change asks to reload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// The grants or secrets changed (or events were lost): every plugin.
    Everything,
    /// One plugin folder, by name.
    Plugin(String),
}

/// The watched paths, canonical so that event paths compare equal.
#[derive(Debug, Clone)]
struct WatchedPaths {
    plugins: PathBuf,
    /// The grants file and the secrets file.
    settings: Vec<PathBuf>,
}

/// Whether `path` is a Kubernetes-style atomic update next to a settings file: a mounted
/// ConfigMap or Secret changes by swapping a `..data` symlink, never touching the file's
/// own name.
fn is_mount_swap(settings: &[PathBuf], path: &Path) -> bool {
    let name_is_dotdot = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".."));
    name_is_dotdot && settings.iter().any(|s| s.parent() == path.parent())
}

impl WatchedPaths {
    fn new(registry: &Registry) -> std::io::Result<WatchedPaths> {
        let plugins = registry.dir().canonicalize()?;
        let settings = [registry.grants_file(), registry.secrets_file()]
            .into_iter()
            .filter_map(|file| {
                let parent = match file.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                Some(parent.canonicalize().ok()?.join(file.file_name()?))
            })
            .collect();
        Ok(WatchedPaths { plugins, settings })
    }

    /// Which reload an event on `path` asks for, if any.
    fn classify(&self, path: &Path) -> Option<Target> {
        if self.settings.iter().any(|s| s == path) || is_mount_swap(&self.settings, path) {
            return Some(Target::Everything);
        }
        let rest = path.strip_prefix(&self.plugins).ok()?;
        match rest.components().next() {
            // The plugins folder itself (moved, deleted, recreated): look at everything.
            None => Some(Target::Everything),
            Some(Component::Normal(name)) => {
                let name = name.to_str()?;
                (!name.starts_with('.')).then(|| Target::Plugin(name.to_string()))
            }
            Some(_) => None,
        }
    }
}

/// Whether an event kind can mean new content. Reads are not: notify reports opens, and
/// the reload opens the very files it watches.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

/// Per-target quiet periods: a target is due once no event touched it for `quiet`.
#[derive(Debug)]
struct Debouncer {
    quiet: Duration,
    last_event: BTreeMap<Target, Instant>,
}

impl Debouncer {
    fn new(quiet: Duration) -> Debouncer {
        Debouncer {
            quiet,
            last_event: BTreeMap::new(),
        }
    }

    /// An event touched `target` at `now`: (re)start its quiet period.
    fn touch(&mut self, target: Target, now: Instant) {
        self.last_event.insert(target, now);
    }

    /// When the next target falls due.
    fn next_due(&self) -> Option<Instant> {
        self.last_event.values().min().map(|t| *t + self.quiet)
    }

    /// Remove and return the targets quiet since `now - quiet`, `Everything` first.
    fn take_due(&mut self, now: Instant) -> Vec<Target> {
        let due: Vec<Target> = self
            .last_event
            .iter()
            .filter(|(_, t)| **t + self.quiet <= now)
            .map(|(target, _)| target.clone())
            .collect();
        for target in &due {
            self.last_event.remove(target);
        }
        due
    }
}

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A watched folder could not be resolved.
    #[error("cannot resolve the plugins folder: {0}")]
    Io(#[from] std::io::Error),
    /// The OS refused the watch (e.g. the inotify watch limit).
    #[error("cannot watch for plugin changes: {0}")]
    Notify(#[from] notify::Error),
}

impl PluginWatcher {
    /// Start watching the registry's plugins folder, grants file and secrets file. Events
    /// that arrive while the caller is still loading are queued and applied afterwards, so
    /// start the watcher before the initial [`Registry::load_all`] to miss nothing.
    pub fn start(
        registry: Arc<Registry>,
        settings: WatchSettings,
    ) -> Result<PluginWatcher, WatchError> {
        let paths = WatchedPaths::new(&registry)?;
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })?;
        watcher.watch(&paths.plugins, RecursiveMode::Recursive)?;
        let parents: BTreeSet<&Path> = paths
            .settings
            .iter()
            .filter_map(|s| s.parent())
            .filter(|p| !p.starts_with(&paths.plugins))
            .collect();
        for parent in parents {
            // Non-recursive: only the files directly in it (the store lives in a subfolder).
            watcher.watch(parent, RecursiveMode::NonRecursive)?;
        }
        let quiet = settings.debounce();
        tracing::info!(dir = %registry.dir().display(), debounce_ms = settings.debounce_ms, "watching plugins for hot reload");
        std::thread::Builder::new()
            .name("simgate-watcher".into())
            .spawn(move || run(&registry, &paths, quiet, &rx))?;
        Ok(PluginWatcher { _watcher: watcher })
    }
}

/// The watcher thread: collect events into per-target quiet periods, apply due targets.
/// Ends when the [`PluginWatcher`] (and with it the event sender) is dropped.
fn run(
    registry: &Registry,
    paths: &WatchedPaths,
    quiet: Duration,
    rx: &mpsc::Receiver<notify::Result<Event>>,
) {
    let mut debouncer = Debouncer::new(quiet);
    loop {
        let received = match debouncer.next_due() {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(Ok(event)) => {
                let now = Instant::now();
                if event.need_rescan() {
                    debouncer.touch(Target::Everything, now);
                } else if changes_content(&event.kind) {
                    for target in event.paths.iter().filter_map(|p| paths.classify(p)) {
                        debouncer.touch(target, now);
                    }
                }
            }
            Ok(Err(e)) => {
                // Events may have been lost: look at everything once things are quiet.
                tracing::warn!(error = %e, "plugin watcher error; rescanning the plugins folder");
                debouncer.touch(Target::Everything, Instant::now());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        for target in debouncer.take_due(Instant::now()) {
            // A bug in one reload must not end hot reload for the life of the process.
            let applied =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(registry, &target)));
            if applied.is_err() {
                tracing::error!(?target, "plugin reload panicked; the watcher goes on");
            }
        }
    }
}

/// Bring the registry in line with the folder: reload what exists, unregister what left.
/// Outcomes (generation, version, errors) are logged and recorded by the registry.
fn apply(registry: &Registry, target: &Target) {
    match target {
        Target::Plugin(name) => {
            if registry.dir().join(name).is_dir() {
                tracing::debug!(plugin = %name, "plugin folder changed; reloading");
                let _ = registry.reload(name);
            } else {
                registry.remove(name);
            }
        }
        Target::Everything => {
            tracing::info!("grants, secrets or the plugins folder changed; reloading every plugin");
            registry.load_all();
            for status in registry.status() {
                if !registry.dir().join(&status.id).is_dir() {
                    registry.remove(&status.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> WatchedPaths {
        WatchedPaths {
            plugins: PathBuf::from("/data/plugins"),
            settings: vec![
                PathBuf::from("/data/grants.toml"),
                PathBuf::from("/data/secrets.toml"),
            ],
        }
    }

    #[test]
    fn events_map_to_the_plugin_folder_they_touch() {
        let p = paths();
        let plugin = |n: &str| Some(Target::Plugin(n.into()));
        assert_eq!(
            p.classify(Path::new("/data/plugins/acme/acme.wasm")),
            plugin("acme")
        );
        assert_eq!(
            p.classify(Path::new("/data/plugins/acme/plugin.tmp42")),
            plugin("acme")
        );
        assert_eq!(p.classify(Path::new("/data/plugins/acme")), plugin("acme"));
        assert_eq!(p.classify(Path::new("/data/plugins/.acme/x.wasm")), None);
        assert_eq!(p.classify(Path::new("/data/db/conf")), None);
        assert_eq!(p.classify(Path::new("/data/keys")), None);
    }

    #[test]
    fn grants_and_secrets_reload_everything() {
        let p = paths();
        assert_eq!(
            p.classify(Path::new("/data/grants.toml")),
            Some(Target::Everything)
        );
        assert_eq!(
            p.classify(Path::new("/data/secrets.toml")),
            Some(Target::Everything)
        );
        assert_eq!(
            p.classify(Path::new("/data/plugins")),
            Some(Target::Everything)
        );
        assert_eq!(
            p.classify(Path::new("/data/..data")),
            Some(Target::Everything),
            "a ConfigMap-style symlink swap beside the grants file"
        );
    }

    #[test]
    fn reads_are_not_changes() {
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes_content(&EventKind::Remove(
            notify::event::RemoveKind::Folder
        )));
    }

    #[test]
    fn each_folder_waits_for_its_own_quiet_period() {
        let quiet = Duration::from_millis(200);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debouncer::new(quiet);
        d.touch(Target::Plugin("a".into()), ms(0));
        d.touch(Target::Plugin("b".into()), ms(50));
        // A steady stream of writes into `a` keeps postponing it, not `b`.
        d.touch(Target::Plugin("a".into()), ms(150));
        assert_eq!(d.next_due(), Some(ms(250)));
        assert_eq!(d.take_due(ms(249)), vec![]);
        assert_eq!(d.take_due(ms(250)), vec![Target::Plugin("b".into())]);
        assert_eq!(d.next_due(), Some(ms(350)));
        assert_eq!(d.take_due(ms(400)), vec![Target::Plugin("a".into())]);
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn everything_comes_first_when_due_together() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::ZERO);
        d.touch(Target::Plugin("a".into()), t0);
        d.touch(Target::Everything, t0);
        assert_eq!(
            d.take_due(t0),
            vec![Target::Everything, Target::Plugin("a".into())]
        );
    }
}
