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
//! | nothing, though files changed (the event was lost) | within `[watch] resync_ms`: as if the event had come |
//!
//! Why this is safe against partial writes, whatever order a writer uses (wasm then
//! manifest, manifest then wasm, temp file then rename, delete and recreate the folder):
//! the manifest names the component's sha256 and the registry refuses a component whose
//! digest differs, so a half-written package fails its reload, the serving generation keeps
//! serving, the failure shows on the admin API and in metrics, and the watcher tries again
//! once the files change. The debounce only saves compile runs on packages still being
//! written.
//!
//! Why a change is never missed, even when its events are: events are only the fast path.
//! Before each reload the watcher takes a `Stamp` of what the reload will read; if the
//! files differ once the reload is done, it reloads again, and every `resync_ms` it
//! stamps every plugin folder and settings file and reloads whatever differs from what its
//! last reload started from. Events do get lost: files written into a freshly created
//! folder before notify has added its watch there (notify reports none of them), a watch
//! the OS refused (inotify's limit), a file written through a hard link from outside the
//! watched tree. Without the resync, a reload that read such a package half-written stayed
//! the last word until someone touched the folder again. The resync never reloads a folder
//! unchanged since its last reload, so a broken package is refused once, not every second.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::WatchSettings;

use super::registry::{Registry, plugin_folders};

/// Manifests and settings files up to this size are stamped by content as well, so one
/// rewritten to the same size within a filesystem timestamp tick still changes its stamp.
/// Components are stamped by size, times and inode only (no hashing megabytes every
/// second): a new package has a new manifest anyway, since the manifest names the
/// component's digest. A real manifest is well under 4 KiB.
const STAMP_CONTENT_BYTES: u64 = 64 * 1024;

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

/// What a reload of one target would read, digested cheaply: equal stamps mean no file the
/// reload reads has changed (for components, as far as size, times and inode tell, see
/// [`STAMP_CONTENT_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(u64);

/// Stamp a plugin folder's entries (names, metadata, the manifest's content); `None` if
/// `dir` is not a folder (anymore).
fn stamp_folder(dir: &Path) -> Option<Stamp> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut h = DefaultHasher::new();
    for name in names {
        name.hash(&mut h);
        let with_content = name == "plugin.toml";
        hash_file(&mut h, &dir.join(&name), with_content);
    }
    Some(Stamp(h.finish()))
}

/// Feed one file's state into `h`: whether it exists, size, times, inode and, `with_content`,
/// its bytes if it is a regular file of at most [`STAMP_CONTENT_BYTES`]. Follows symlinks,
/// as the reload does (and as a ConfigMap swap needs).
fn hash_file(h: &mut DefaultHasher, path: &Path, with_content: bool) {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return e.kind().hash(h),
    };
    (meta.is_dir(), meta.len(), meta.modified().ok()).hash(h);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()).hash(h);
    }
    if with_content && meta.is_file() && meta.len() <= STAMP_CONTENT_BYTES {
        std::fs::read(path).ok().hash(h);
    }
}

impl WatchedPaths {
    /// The stamp of what reloading `target` reads now; `None` for a plugin folder that
    /// does not exist.
    fn stamp(&self, target: &Target) -> Option<Stamp> {
        match target {
            Target::Everything => {
                let mut h = DefaultHasher::new();
                for file in &self.settings {
                    hash_file(&mut h, file, true);
                }
                Some(Stamp(h.finish()))
            }
            Target::Plugin(name) => stamp_folder(&self.plugins.join(name)),
        }
    }

    /// The stamps of everything a full reload reads: the settings files (as
    /// [`Target::Everything`]) and each plugin folder, by the same rules as
    /// [`Registry::load_all`].
    fn snapshot(&self) -> BTreeMap<Target, Stamp> {
        let mut stamps = BTreeMap::new();
        if let Some(settings) = self.stamp(&Target::Everything) {
            stamps.insert(Target::Everything, settings);
        }
        for name in plugin_folders(&self.plugins).unwrap_or_default() {
            if let Some(stamp) = stamp_folder(&self.plugins.join(&name)) {
                stamps.insert(Target::Plugin(name), stamp);
            }
        }
        stamps
    }
}

/// The targets whose stamps differ between `a` and `b` (present in one only counts).
fn differing(a: &BTreeMap<Target, Stamp>, b: &BTreeMap<Target, Stamp>) -> Vec<Target> {
    let targets: BTreeSet<&Target> = a.keys().chain(b.keys()).collect();
    targets
        .into_iter()
        .filter(|t| a.get(*t) != b.get(*t))
        .cloned()
        .collect()
}

/// What each target looked like just before its last reload started reading it. A target
/// whose files differ from this has changes no reload has seen yet, whether or not an
/// event said so.
#[derive(Debug, Default)]
struct Seen(BTreeMap<Target, Stamp>);

impl Seen {
    /// A reload of `target` started from `before` (for [`Target::Everything`]: every
    /// target, as [`WatchedPaths::snapshot`] stamped them).
    fn record(&mut self, target: &Target, before: BTreeMap<Target, Stamp>) {
        match target {
            Target::Everything => self.0 = before,
            Target::Plugin(_) => match before.get(target) {
                Some(stamp) => {
                    self.0.insert(target.clone(), *stamp);
                }
                None => {
                    self.0.remove(target);
                }
            },
        }
    }

    /// The targets whose files now (`current`, a full snapshot) differ from what their
    /// last reload read.
    fn changed(&self, current: &BTreeMap<Target, Stamp>) -> Vec<Target> {
        differing(&self.0, current)
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

    /// Make sure `target` is due after a quiet period from `now`, without postponing it if
    /// it already waits (a change found by stamps rather than by an event).
    fn nudge(&mut self, target: Target, now: Instant) {
        self.last_event.entry(target).or_insert(now);
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
        let resync = settings.resync();
        // Stamped once the watches are in place and before the caller's first load reads
        // anything: a change after this shows up as an event, a differing stamp, or both.
        let seen = Seen(paths.snapshot());
        tracing::info!(dir = %registry.dir().display(), debounce_ms = settings.debounce_ms, "watching plugins for hot reload");
        std::thread::Builder::new()
            .name("simgate-watcher".into())
            .spawn(move || run(&registry, &paths, quiet, resync, &rx, seen))?;
        Ok(PluginWatcher { _watcher: watcher })
    }
}

/// The watcher thread: collect events into per-target quiet periods, resync stamps, apply
/// due targets. Ends when the [`PluginWatcher`] (and with it the event sender) is dropped.
fn run(
    registry: &Registry,
    paths: &WatchedPaths,
    quiet: Duration,
    resync: Duration,
    rx: &mpsc::Receiver<notify::Result<Event>>,
    mut seen: Seen,
) {
    let mut debouncer = Debouncer::new(quiet);
    let mut next_resync = Instant::now() + resync;
    loop {
        let wake = debouncer
            .next_due()
            .map_or(next_resync, |due| due.min(next_resync));
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
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
        let now = Instant::now();
        if now >= next_resync {
            for target in seen.changed(&paths.snapshot()) {
                tracing::debug!(?target, "files differ from what the last reload read");
                debouncer.nudge(target, now);
            }
            next_resync = now + resync;
        }
        for target in debouncer.take_due(now) {
            for again in reload(registry, paths, &target, &mut seen) {
                tracing::debug!(target = ?again, "files changed during the reload; reloading again");
                debouncer.touch(again, Instant::now());
            }
        }
    }
}

/// Apply `target`, remembering in `seen` what the reload started from. Returns the targets
/// whose files changed while it ran: what it read may be half old, half new, and the
/// events saying so may never come.
fn reload(
    registry: &Registry,
    paths: &WatchedPaths,
    target: &Target,
    seen: &mut Seen,
) -> Vec<Target> {
    let stamp_all = || match target {
        Target::Everything => paths.snapshot(),
        Target::Plugin(_) => paths
            .stamp(target)
            .map(|stamp| (target.clone(), stamp))
            .into_iter()
            .collect(),
    };
    let before = stamp_all();
    // A bug in one reload must not end hot reload for the life of the process.
    let applied =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(registry, target)));
    if applied.is_err() {
        tracing::error!(?target, "plugin reload panicked; the watcher goes on");
    }
    let changed = differing(&before, &stamp_all());
    seen.record(target, before);
    changed
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

    fn stamps(entries: &[(&str, u64)]) -> BTreeMap<Target, Stamp> {
        entries
            .iter()
            .map(|(name, stamp)| (Target::Plugin(name.to_string()), Stamp(*stamp)))
            .collect()
    }

    #[test]
    fn a_change_whose_events_never_come_is_reloaded_at_the_next_resync() {
        // A lost event, replayed: one reload ran on the writer's first events and caught
        // the folder half-written (stamp 1); the rest of the write (stamp 2) produced no
        // event that reached the watcher (e.g. written into a recreated folder before
        // notify watched it). Events alone leave the half-written package as the last word.
        let quiet = Duration::from_millis(200);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let sandbox = Target::Plugin("sandbox".into());
        let mut d = Debouncer::new(quiet);
        let mut seen = Seen(stamps(&[("sandbox", 0)]));
        d.touch(sandbox.clone(), ms(0));
        assert_eq!(d.take_due(ms(200)), vec![sandbox.clone()]);
        seen.record(&sandbox, stamps(&[("sandbox", 1)]));
        assert_eq!(d.next_due(), None, "no event left to retry on");

        // The resync finds the folder differing from what the reload read.
        let changed = seen.changed(&stamps(&[("sandbox", 2)]));
        assert_eq!(changed, vec![sandbox.clone()]);
        for target in changed {
            d.nudge(target, ms(1000));
        }
        assert_eq!(d.take_due(ms(1200)), vec![sandbox.clone()]);
        seen.record(&sandbox, stamps(&[("sandbox", 2)]));
        assert_eq!(seen.changed(&stamps(&[("sandbox", 2)])), vec![], "settled");
    }

    #[test]
    fn a_refused_package_is_not_retried_until_its_folder_changes() {
        let sandbox = Target::Plugin("sandbox".into());
        let mut seen = Seen::default();
        seen.record(&sandbox, stamps(&[("sandbox", 7)]));
        assert_eq!(seen.changed(&stamps(&[("sandbox", 7)])), vec![]);
        assert_eq!(seen.changed(&stamps(&[("sandbox", 8)])), vec![sandbox]);
    }

    #[test]
    fn resync_finds_new_and_vanished_folders_and_settings_changes() {
        let mut before = stamps(&[("gone", 1), ("same", 2)]);
        before.insert(Target::Everything, Stamp(10));
        let seen = Seen(before);
        let mut now = stamps(&[("same", 2), ("new", 3)]);
        now.insert(Target::Everything, Stamp(11));
        assert_eq!(
            seen.changed(&now),
            vec![
                Target::Everything,
                Target::Plugin("gone".into()),
                Target::Plugin("new".into())
            ]
        );
    }

    #[test]
    fn a_found_change_does_not_postpone_a_reload_already_waiting() {
        let quiet = Duration::from_millis(200);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debouncer::new(quiet);
        d.touch(Target::Plugin("a".into()), ms(0));
        d.nudge(Target::Plugin("a".into()), ms(150));
        assert_eq!(d.next_due(), Some(ms(200)));
        d.nudge(Target::Plugin("b".into()), ms(150));
        assert_eq!(d.take_due(ms(350)).len(), 2);
    }

    #[test]
    fn a_folder_stamp_changes_with_any_file_and_is_none_without_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let paths = WatchedPaths {
            plugins: dir.path().to_owned(),
            settings: vec![dir.path().join("grants.toml")],
        };
        let acme = Target::Plugin("acme".into());
        assert_eq!(paths.stamp(&acme), None);
        std::fs::create_dir(dir.path().join("acme")).unwrap();
        let empty = paths.stamp(&acme).unwrap();
        std::fs::write(dir.path().join("acme/plugin.toml"), "id = 1").unwrap();
        let one = paths.stamp(&acme).unwrap();
        assert_ne!(one, empty);
        // Same size, same second: only the content tells.
        std::fs::write(dir.path().join("acme/plugin.toml"), "id = 2").unwrap();
        let two = paths.stamp(&acme).unwrap();
        assert_ne!(two, one);
        assert_eq!(paths.stamp(&acme), Some(two), "reading does not change it");

        let settings = paths.stamp(&Target::Everything);
        std::fs::write(dir.path().join("grants.toml"), "").unwrap();
        assert_ne!(paths.stamp(&Target::Everything), settings);
        std::fs::create_dir(dir.path().join(".staging")).unwrap();
        let all: Vec<Target> = paths.snapshot().into_keys().collect();
        assert_eq!(
            all,
            vec![Target::Everything, acme],
            "staging folders are not plugins"
        );
    }

    /// A deployable folder for test plugin `crate_name`, as `simgate plugin pack` makes it:
    /// (manifest text, component bytes).
    fn package(crate_name: &str) -> (String, Vec<u8>) {
        let source = simgate_test_support::plugin_source(crate_name).join("plugin.toml");
        let mut manifest: crate::plugins::Manifest =
            toml::from_str(&std::fs::read_to_string(source).unwrap()).unwrap();
        let wasm = std::fs::read(simgate_test_support::wasm(crate_name)).unwrap();
        manifest.sha256 = Some(crate::plugins::manifest::sha256_hex(&wasm));
        (toml::to_string(&manifest).unwrap(), wasm)
    }

    /// Overwrite `path` in place (truncate and write, same inode), as `cp` over a file does.
    fn overwrite(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.write_all(bytes).unwrap();
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_package_rewritten_without_a_single_event_still_takes_over() {
        use crate::config::PluginLimits;
        use crate::plugins::PluginEngine;
        // Writing through hard links kept outside the watched tree changes the plugin's
        // files while inotify reports nothing (events go to the folder of the path used):
        // a deterministic stand-in for every way events get lost.
        let data = tempfile::tempdir().unwrap();
        let plugins = data.path().join("plugins");
        let folder = plugins.join("sandbox");
        std::fs::create_dir_all(&folder).unwrap();
        let (v1_manifest, v1_wasm) = package("sandbox");
        std::fs::write(folder.join("sandbox.wasm"), v1_wasm).unwrap();
        std::fs::write(folder.join("plugin.toml"), v1_manifest).unwrap();
        let outside = data.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        for file in ["sandbox.wasm", "plugin.toml"] {
            std::fs::hard_link(folder.join(file), outside.join(file)).unwrap();
        }
        let registry = Arc::new(Registry::new(
            PluginEngine::new(None).unwrap(),
            plugins,
            data.path().join("grants.toml"),
            data.path().join("secrets.toml"),
            PluginLimits::default(),
        ));
        let _watcher = PluginWatcher::start(registry.clone(), WatchSettings::default()).unwrap();
        registry.load_all();
        let version = || {
            registry
                .generation("sandbox")
                .map(|g| g.plugin.shared().version.clone())
        };
        assert_eq!(version().as_deref(), Some("0.1.0"));

        // Manifest first, in place, as in the CI run's sixth replacement.
        let (v2_manifest, v2_wasm) = package("sandbox-next");
        overwrite(&outside.join("plugin.toml"), v2_manifest.as_bytes());
        overwrite(&outside.join("sandbox.wasm"), &v2_wasm);

        let started = Instant::now();
        while version().as_deref() != Some("0.2.0") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the rewritten package was never loaded; status: {:?}",
                registry
                    .status()
                    .first()
                    .map(|s| (&s.version, &s.last_error))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            registry.status()[0].state,
            crate::plugins::registry::PluginState::Serving
        );
    }
}
