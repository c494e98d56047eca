//! Per-plugin counters: aggregate numbers only, never arguments or results.
//!
//! One [`PluginStats`] lives per plugin id for the life of the process and is shared by
//! every generation of that plugin, so counters stay monotonic across hot reloads (as
//! Prometheus expects of a counter) and the in-flight gauge counts calls still draining
//! on an old generation too.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::supplier::FaultKind;

/// Every fault kind, in a fixed order (index into the counters).
pub const FAULT_KINDS: [FaultKind; 9] = [
    FaultKind::Deadline,
    FaultKind::Memory,
    FaultKind::Trap,
    FaultKind::EgressDenied,
    FaultKind::BadOutput,
    FaultKind::Overloaded,
    FaultKind::NotLoaded,
    FaultKind::HostLimit,
    FaultKind::Internal,
];

/// Upper bounds (seconds) of the latency histogram buckets: from a cached plugin call
/// (~0.1 ms) to the default call budget (5 s).
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// A lock-free latency histogram over [`LATENCY_BUCKETS`]. Used for plugin calls and for
/// HTTP requests, so both render the same way.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistogramSnapshot {
    /// Non-cumulative counts per [`LATENCY_BUCKETS`] bound (slower ones only in `count`).
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Record one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// A consistent-enough copy.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|c| c.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Counters of one plugin id, across its generations.
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: AtomicU64,
    faults: [AtomicU64; FAULT_KINDS.len()],
    in_flight: AtomicU64,
    latency: LatencyHistogram,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
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
        self.latency.observe(elapsed);
    }

    /// A call the sandbox let through was found faulty afterwards (bad output, egress).
    pub fn reclassify(&self, kind: FaultKind) {
        self.faults[index(kind)].fetch_add(1, Relaxed);
    }

    /// A (re)load of this plugin id ended: swapped in (`true`) or refused (`false`).
    pub fn record_reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
    }

    /// A consistent-enough copy for status and metrics.
    pub fn snapshot(&self) -> StatsSnapshot {
        let latency = self.latency.snapshot();
        StatsSnapshot {
            calls: self.calls.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            faults: FAULT_KINDS
                .iter()
                .zip(&self.faults)
                .map(|(k, c)| (k.as_str(), c.load(Relaxed)))
                .collect(),
            latency_buckets: latency.buckets,
            latency_sum_seconds: latency.sum_seconds,
            reloads: ReloadCounts {
                ok: self.reloads_ok.load(Relaxed),
                failed: self.reloads_failed.load(Relaxed),
            },
        }
    }
}

/// A copy of [`PluginStats`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "PluginStats")]
pub struct StatsSnapshot {
    /// Calls made.
    pub calls: u64,
    /// Calls running now (on any generation).
    pub in_flight: u64,
    /// Failures by kind.
    pub faults: Vec<(&'static str, u64)>,
    /// Non-cumulative histogram counts per [`LATENCY_BUCKETS`] bound.
    pub latency_buckets: Vec<u64>,
    /// Total call time.
    pub latency_sum_seconds: f64,
    /// Loads of this plugin id that were swapped in or refused.
    pub reloads: ReloadCounts,
}

/// How many (re)loads of a plugin succeeded and failed since the process started.
#[derive(Debug, Clone, Copy, Default, Serialize, schemars::JsonSchema)]
pub struct ReloadCounts {
    /// Swapped in.
    pub ok: u64,
    /// Refused; the previous generation (if any) kept serving.
    pub failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_every_observation_and_buckets_those_in_range() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[3], 1);
        assert_eq!(
            s.buckets.iter().sum::<u64>(),
            2,
            "9 s is past the last bound"
        );
        assert!((s.sum_seconds - 9.00305).abs() < 1e-9);
    }

    #[test]
    fn counters_survive_across_reloads_and_reloads_are_counted() {
        let stats = PluginStats::default();
        stats.record(Ok(()), Duration::from_millis(1));
        stats.record_reload(true);
        stats.record(Err(FaultKind::Trap), Duration::from_millis(1));
        stats.record_reload(false);
        let s = stats.snapshot();
        assert_eq!(s.calls, 2);
        assert_eq!(s.faults[2], ("trap", 1));
        assert_eq!((s.reloads.ok, s.reloads.failed), (1, 1));
    }
}
