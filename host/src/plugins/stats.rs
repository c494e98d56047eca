//! Per-plugin call counters: aggregate numbers only, never arguments or results.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::domain::FaultKind;

/// Every fault kind, in a fixed order (index into the counters).
pub const FAULT_KINDS: [FaultKind; 8] = [
    FaultKind::Deadline,
    FaultKind::Memory,
    FaultKind::Trap,
    FaultKind::EgressDenied,
    FaultKind::BadOutput,
    FaultKind::Overloaded,
    FaultKind::NotLoaded,
    FaultKind::Internal,
];

/// Upper bounds (seconds) of the call-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Counters of one plugin generation.
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: AtomicU64,
    faults: [AtomicU64; FAULT_KINDS.len()],
    in_flight: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_us: AtomicU64,
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn index(kind: FaultKind) -> usize {
    FAULT_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(FAULT_KINDS.len() - 1)
}

impl PluginStats {
    /// A call starts running.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(&self.in_flight)
    }

    /// A call ended.
    pub fn record(&self, outcome: Result<(), FaultKind>, elapsed: Duration) {
        self.calls.fetch_add(1, Relaxed);
        if let Err(kind) = outcome {
            self.faults[index(kind)].fetch_add(1, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// A call the sandbox let through was found faulty afterwards (bad output, egress).
    pub fn reclassify(&self, kind: FaultKind) {
        self.faults[index(kind)].fetch_add(1, Relaxed);
    }

    /// A consistent-enough copy for status and metrics.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            calls: self.calls.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            faults: FAULT_KINDS
                .iter()
                .zip(&self.faults)
                .map(|(k, c)| (k.as_str(), c.load(Relaxed)))
                .collect(),
            latency_buckets: self
                .latency_buckets
                .iter()
                .map(|c| c.load(Relaxed))
                .collect(),
            latency_sum_seconds: self.latency_sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A copy of [`PluginStats`].
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// Calls made.
    pub calls: u64,
    /// Calls running now.
    pub in_flight: u64,
    /// Failures by kind.
    pub faults: Vec<(&'static str, u64)>,
    /// Non-cumulative histogram counts per [`LATENCY_BUCKETS`] bound.
    pub latency_buckets: Vec<u64>,
    /// Total call time.
    pub latency_sum_seconds: f64,
}
