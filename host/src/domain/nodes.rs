//! Gateway nodes: the processes serving one store. Each node keeps a record of itself in
//! the store ([`NodeRecord`]) and renews it every heartbeat: which address it serves, which
//! plugin versions it loaded, and until when it counts as alive. Two things read it:
//!
//! - the operator, through `GET /v1/admin/nodes` (which version each node serves);
//! - job claims: a job is leased by one *run* of a node (a process, from start to stop).
//!   A job whose run is no longer alive — the process was killed, or restarted under a
//!   new run — is claimable at once, without waiting for its lease to run out.
//!
//! A node's id is kept in its data directory (`node-id`), so a restart is the same node
//! with a new run. Nodes agree on time only through their clocks: they must be kept in
//! step (NTP) to well within a heartbeat's life.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node: kept in its data directory across restarts.
    pub id: String,
    /// This run of it (new at every start). Jobs it claims name it.
    pub run: String,
    /// The address it listens on, as configured.
    pub address: String,
    /// The simgate version it runs.
    pub version: String,
    /// When this run started, ms since the epoch.
    pub started_ms: u64,
    /// Its last heartbeat, ms since the epoch.
    pub heartbeat_ms: u64,
    /// Alive until this time unless it beats again; a node that stops cleanly sets it to
    /// its stop time, so its peers take over at once.
    pub alive_until_ms: u64,
    /// Whether the run ended cleanly.
    #[serde(default)]
    pub stopped: bool,
    /// The plugins it serves or failed to load, by id.
    pub plugins: Vec<NodePlugin>,
}

/// One plugin as a node has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlugin {
    /// Plugin id.
    pub id: String,
    /// `serving`, `failed_reload` (its latest package failed; an older one serves) or
    /// `failed`.
    pub state: String,
    /// The version it serves, if any.
    pub version: Option<String>,
    /// The package's digest, if serving.
    pub sha256: Option<String>,
}

impl NodeRecord {
    /// Whether the node counts as alive at `now_ms`.
    pub fn alive(&self, now_ms: u64) -> bool {
        !self.stopped && self.alive_until_ms > now_ms
    }
}

/// The runs alive at one moment, among `nodes`.
pub fn live_runs(nodes: &[NodeRecord], now_ms: u64) -> std::collections::HashSet<String> {
    nodes
        .iter()
        .filter(|n| n.alive(now_ms))
        .map(|n| n.run.clone())
        .collect()
}

/// How a node beats.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// Time between beats.
    pub every: Duration,
}

impl Heartbeat {
    /// Beats a node may miss before its peers count it gone: a store that is slow for a
    /// beat or two does not hand a live node's jobs to another.
    pub const MISSED: u32 = 4;

    /// Until when a beat at `now_ms` keeps a node alive.
    pub fn alive_until(&self, now_ms: u64) -> u64 {
        let life = self.every.saturating_mul(Self::MISSED).as_millis();
        now_ms.saturating_add(u64::try_from(life).unwrap_or(u64::MAX))
    }
}

/// Records of nodes not heard from for this long are dropped from the list.
pub const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn node(run: &str, alive_until_ms: u64, stopped: bool) -> NodeRecord {
        NodeRecord {
            id: format!("node-{run}"),
            run: run.into(),
            address: "127.0.0.1:8080".into(),
            version: "0".into(),
            started_ms: 0,
            heartbeat_ms: 0,
            alive_until_ms,
            stopped,
            plugins: Vec::new(),
        }
    }

    #[test]
    fn a_node_is_alive_until_its_time_unless_it_stopped() {
        assert!(node("a", 100, false).alive(99));
        assert!(!node("a", 100, false).alive(100));
        assert!(!node("a", 100, true).alive(0));
        let live = live_runs(
            &[
                node("a", 100, false),
                node("b", 50, false),
                node("c", 100, true),
            ],
            60,
        );
        assert_eq!(live.into_iter().collect::<Vec<_>>(), vec!["a".to_string()]);
    }

    #[test]
    fn a_beat_keeps_a_node_alive_for_the_beats_it_may_miss() {
        let beat = Heartbeat {
            every: Duration::from_millis(500),
        };
        assert_eq!(beat.alive_until(1_000), 3_000);
        let forever = Heartbeat {
            every: Duration::MAX,
        };
        assert_eq!(forever.alive_until(5), u64::MAX);
    }
}
