//! The limits every plugin call runs under. The operator sets them for the host; a
//! plugin's manifest and its grant can only lower them.

use std::time::Duration;

use serde::Deserialize;

/// Limits applied to every plugin call. A plugin's manifest and the operator's grants can
/// only lower these.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Linear memory per instance. 32 MiB holds a catalog of thousands of products; a
    /// runaway allocation stops in ~20 ms.
    pub memory_mib: u32,
    /// Wall-clock budget per call, including time waiting on egress. Supplier APIs answer
    /// in seconds; anything slower is better retried than waited on.
    pub timeout_ms: u64,
    /// Largest result a plugin may hand back (sum of its strings and lists). A catalog of
    /// 10k products is ~2 MiB.
    pub max_output_bytes: usize,
    /// Largest inbound webhook or callback body passed to a plugin.
    pub max_input_bytes: usize,
    /// Log bytes a single call may emit before further lines are dropped (and counted).
    pub max_log_bytes_per_call: usize,
    /// Calls into one plugin that may run at once; more wait (back-pressure).
    pub max_concurrency: u32,
    /// How long a call waits for a concurrency slot before failing as overloaded.
    pub queue_timeout_ms: u64,
    /// Largest egress response body a plugin may read.
    pub max_egress_response_bytes: usize,
    /// Connect timeout for egress.
    pub egress_connect_timeout_ms: u64,
    /// Idle keep-alive connections kept per destination for a plugin's egress (0: a new
    /// connection for every request).
    pub egress_idle_per_host: usize,
    /// Host-side resources (HTTP fields, requests, bodies, streams, pollables) one call may
    /// hold at once. They live in gateway memory, outside the plugin's memory cap; a real
    /// adapter holds a few dozen while it makes one request. Past the cap the call fails
    /// with a `host_limit` fault, which is not retried.
    pub max_host_resources: usize,
    /// In-memory size of one set of HTTP headers a plugin builds. With
    /// `max_host_resources` it bounds what a call can make the host allocate
    /// (256 x 16 KiB = 4 MiB); real supplier requests carry well under 2 KiB of headers.
    pub max_header_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_mib: 32,
            timeout_ms: 5_000,
            max_output_bytes: 4 * 1024 * 1024,
            max_input_bytes: 256 * 1024,
            max_log_bytes_per_call: 16 * 1024,
            max_concurrency: 64,
            queue_timeout_ms: 2_000,
            max_egress_response_bytes: 4 * 1024 * 1024,
            egress_connect_timeout_ms: 3_000,
            egress_idle_per_host: 16,
            max_host_resources: 256,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl PluginLimits {
    /// The per-call wall-clock budget.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory_mib as usize * 1024 * 1024
    }

    /// Apply lower values from `other` (a manifest or grant), field by field.
    pub fn lowered_by(self, other: &LimitOverrides) -> PluginLimits {
        fn low<T: Ord + Copy>(base: T, over: Option<T>) -> T {
            over.map_or(base, |o| o.min(base))
        }
        PluginLimits {
            memory_mib: low(self.memory_mib, other.memory_mib),
            timeout_ms: low(self.timeout_ms, other.timeout_ms),
            max_concurrency: low(self.max_concurrency, other.max_concurrency),
            max_output_bytes: low(self.max_output_bytes, other.max_output_bytes),
            ..self
        }
    }
}

/// Per-plugin limit overrides from a manifest or a grant. Absent means "the default".
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    /// See [`PluginLimits::memory_mib`].
    pub memory_mib: Option<u32>,
    /// See [`PluginLimits::timeout_ms`].
    pub timeout_ms: Option<u64>,
    /// See [`PluginLimits::max_concurrency`].
    pub max_concurrency: Option<u32>,
    /// See [`PluginLimits::max_output_bytes`].
    pub max_output_bytes: Option<usize>,
}
