//! The one wasmtime [`Engine`] of the process, its epoch ticker, and the on-disk cache of
//! compiled components.
//!
//! Tuning, each with its reason:
//!
//! | knob | value | why |
//! |---|---|---|
//! | allocator | pooling | a fresh instance per call costs ~25 µs instead of ~45 µs |
//! | `decommit_batch_size` | 64 | batching madvise calls; batch size 1 costs ~35% throughput |
//! | reset by copy | 1 MiB per memory, 64 KiB per table | only where Linux has `PAGEMAP_SCAN` (6.7+): the pages a call dirtied are restored by `memcpy` and stay resident, instead of `madvise` now and page faults next call; halves the median call and removes ~100 µs decommit stalls from the tail (BENCHMARKS.md). Without the ioctl it would `memset` the first 1 MiB of every memory on every call, dirty or not, so it stays off |
//! | `total_component_instances` | 1000 | instances alive at once across all plugins (each call holds one) |
//! | `max_memory_size` | 256 MiB | the largest per-plugin memory cap an operator may grant |
//! | epoch tick | 10 ms | granularity of the wall-clock budget; the check itself is free |
//! | `max_wasm_stack` | 1 MiB | deep enough for serde on large catalogs, small enough to fail fast |

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; see the module table.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest linear memory any plugin may be granted.
pub const MAX_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Dirty bytes of a linear memory reset by copying, kept resident, rather than by `madvise`
/// (see the module table). A call touches a few dozen pages of stack, data and heap; a call
/// that dirties more gets the rest decommitted as before.
const RESET_BY_COPY_MEMORY_BYTES: usize = 1024 * 1024;

/// The same for tables (function references: a few KiB in a real guest).
const RESET_BY_COPY_TABLE_BYTES: usize = 64 * 1024;

/// The process-wide engine plus its ticker thread and compiled cache.
pub struct PluginEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
}

impl PluginEngine {
    /// Build the engine. `cache_dir` holds compiled components (`None`: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> wasmtime::Result<PluginEngine> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(4000)
            .total_memories(2000)
            .total_tables(4000)
            .max_memory_size(MAX_MEMORY_BYTES)
            .decommit_batch_size(64);
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(RESET_BY_COPY_MEMORY_BYTES)
                .table_keep_resident(RESET_BY_COPY_TABLE_BYTES);
        }
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .max_wasm_stack(1024 * 1024)
            .wasm_component_model(true);
        let engine = Engine::new(&config)?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop_ticker.clone());
        Ok(PluginEngine {
            engine,
            cache_dir,
            stop_ticker,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compile `wasm` (whose hex SHA-256 is `sha256`), or load it from the cache. Blocking:
    /// call it off the async runtime.
    pub fn compile(&self, wasm: &[u8], sha256: &str) -> wasmtime::Result<Component> {
        let cached = self.cache_dir.as_ref().map(|d| self.cache_path(d, sha256));
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the cache directory is written only by this process (below), from
            // components it compiled itself with an engine of identical settings (the file
            // name includes the engine's compatibility hash). wasmtime additionally checks
            // the header and refuses artifacts of other versions or settings; on any error
            // we fall back to compiling.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled cache entry")
                }
            }
        }
        let component = Component::new(&self.engine, wasm)?;
        if let Some(path) = &cached
            && let Err(e) = write_atomically(path, &component.serialize()?)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compiled cache entry");
        }
        Ok(component)
    }

    fn cache_path(&self, dir: &Path, sha256: &str) -> PathBuf {
        let mut h = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until told to stop.
fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("simgate-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// Write a file so readers never see a partial one: temp file, fsync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_loads_the_compiled_component_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = std::fs::read(simgate_test_support::wasm("sandbox")).unwrap();
        let sha = crate::manifest::sha256_hex(&wasm);
        {
            let engine = PluginEngine::new(Some(dir.path().to_owned())).unwrap();
            engine.compile(&wasm, &sha).unwrap();
        }
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "one artifact, keyed by digest and engine");
        assert!(entries[0].file_name().to_string_lossy().starts_with(&sha));
        // A new engine (a restart) gets the component from the cache: it is not even
        // handed bytes that would compile.
        let engine = PluginEngine::new(Some(dir.path().to_owned())).unwrap();
        assert!(engine.compile(b"not wasm", &sha).is_ok());
        assert!(
            engine.compile(b"not wasm", &"0".repeat(64)).is_err(),
            "no cache entry, so it compiles, and fails"
        );
    }

    #[test]
    fn a_corrupt_cache_entry_is_ignored_and_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = std::fs::read(simgate_test_support::wasm("sandbox")).unwrap();
        let sha = crate::manifest::sha256_hex(&wasm);
        let engine = PluginEngine::new(Some(dir.path().to_owned())).unwrap();
        engine.compile(&wasm, &sha).unwrap();
        let entry = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        std::fs::write(&entry, b"garbage").unwrap();
        assert!(engine.compile(&wasm, &sha).is_ok());
    }
}
