//! This process as one node among those sharing a store (`domain::nodes`): its id, kept
//! in the data directory (`node-id`) so a restart is the same node; its run, new at
//! every start, which the jobs it claims name; and the heartbeat that keeps its record
//! — address, version, plugins — alive in the store.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::domain::clock::Clock;
use crate::domain::nodes::{FORGET_AFTER, Heartbeat, NodePlugin, NodeRecord};
use crate::domain::store::{Store, StoreResult};
use crate::plugins::Registry;
use crate::plugins::registry::PluginState;

/// The file in the data directory that names the node.
const NODE_ID_FILE: &str = "node-id";

/// This node, as its peers see it.
pub struct ThisNode {
    /// Stable across restarts.
    pub id: String,
    /// This run (a new ULID at every start): the jobs it claims name it.
    pub run: Arc<str>,
    /// The address it listens on.
    pub address: String,
    /// When this run started, ms since the epoch.
    pub started_ms: u64,
}

impl ThisNode {
    /// The node of `data_dir` (its id is created on first start), starting a new run.
    pub fn open(data_dir: &Path, address: String, started_ms: u64) -> anyhow::Result<ThisNode> {
        Ok(ThisNode {
            id: node_id(data_dir)?,
            run: ulid::Ulid::new().to_string().to_lowercase().into(),
            address,
            started_ms,
        })
    }

    /// The node's record as of `now_ms`, with the plugins `registry` serves.
    pub fn record(&self, registry: &Registry, beat: Heartbeat, now_ms: u64) -> NodeRecord {
        let plugins = registry
            .status()
            .into_iter()
            .map(|p| NodePlugin {
                state: match p.state {
                    PluginState::Serving => "serving",
                    PluginState::FailedReload => "failed_reload",
                    PluginState::Failed => "failed",
                }
                .to_string(),
                id: p.id,
                version: p.version,
                sha256: p.sha256,
            })
            .collect();
        NodeRecord {
            id: self.id.clone(),
            run: self.run.to_string(),
            address: self.address.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: self.started_ms,
            heartbeat_ms: now_ms,
            alive_until_ms: beat.alive_until(now_ms),
            stopped: false,
            plugins,
        }
    }

    /// Write the record now, drop records of nodes not heard from for a week, then
    /// renew the record every beat until `stop` turns true, between two beats (a beat
    /// that fails is logged; the next one tries again). A stopping node beats on until
    /// its worker has let go of every job, then stops the beat, waits for the task and
    /// writes [`ThisNode::stopped`]: were it silent while draining, its peers could take
    /// jobs it still runs; and no beat is in flight to overwrite the stop.
    pub async fn start_heartbeat(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        beat: Heartbeat,
        mut stop: watch::Receiver<bool>,
    ) -> StoreResult<tokio::task::JoinHandle<()>> {
        let now = clock.now_ms();
        store.put_node(&self.record(&registry, beat, now)).await?;
        let forget_before = now.saturating_sub(FORGET_AFTER.as_millis() as u64);
        for old in store.nodes().await? {
            if old.heartbeat_ms < forget_before {
                store.delete_node(&old.id).await?;
            }
        }
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(beat.every) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                let record = self.record(&registry, beat, clock.now_ms());
                if let Err(e) = store.put_node(&record).await {
                    tracing::error!(error = %e, "node heartbeat failed; peers take over this node's jobs if it keeps failing");
                }
            }
        }))
    }

    /// Record that this run stopped cleanly (after its worker let go of every job), so
    /// its peers count it gone at once.
    pub async fn stopped(
        &self,
        store: &dyn Store,
        registry: &Registry,
        now_ms: u64,
    ) -> StoreResult<()> {
        let beat = Heartbeat {
            every: std::time::Duration::ZERO,
        };
        let mut record = self.record(registry, beat, now_ms);
        record.stopped = true;
        store.put_node(&record).await
    }
}

/// The node id kept in `data_dir`, created on first start.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            anyhow::ensure!(
                valid_node_id(id),
                "{} does not hold a node id (node_ and 26 letters and digits)",
                path.display()
            );
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node_{}", ulid::Ulid::new().to_string().to_lowercase());
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            writeln!(file, "{id}")?;
            file.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// `node_` and a ULID.
fn valid_node_id(id: &str) -> bool {
    id.strip_prefix("node_")
        .is_some_and(|u| u.len() == 26 && u.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_its_id_across_restarts_and_refuses_a_file_that_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = ThisNode::open(dir.path(), "a".into(), 1).unwrap();
        let again = ThisNode::open(dir.path(), "a".into(), 2).unwrap();
        assert_eq!(first.id, again.id);
        assert_ne!(first.run, again.run, "every start is a new run");
        assert!(valid_node_id(&first.id));
        std::fs::write(dir.path().join(NODE_ID_FILE), "../../etc/passwd\n").unwrap();
        assert!(ThisNode::open(dir.path(), "a".into(), 3).is_err());
    }
}
