//! The per-call store data: everything one plugin call may touch, created fresh for every
//! call and dropped with it, so nothing leaks between orders or resellers.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::host;
use super::egress::{EgressHooks, EgressReport};
use super::runtime::{PluginShared, one_line};
use super::secrets;

/// How much of a plugin's stderr (panic messages) is kept for the error report.
const STDERR_CAPTURE_BYTES: usize = 4096;

/// Store data of one call.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: EgressHooks,
    /// The plugin this call belongs to (identity, grants, limits).
    pub shared: Arc<PluginShared>,
    /// Memory and table caps, and whether one was hit.
    pub limiter: CallLimiter,
    /// When the wall-clock budget runs out.
    pub deadline: Instant,
    /// Set by the epoch callback when it interrupts the call.
    pub deadline_hit: bool,
    /// Log bytes this call has emitted.
    log_bytes: usize,
    /// Log lines dropped for exceeding the budget.
    pub log_dropped: u32,
    /// What the plugin wrote to stderr (a panic message), capped.
    pub stderr: MemoryOutputPipe,
    /// This call's egress report.
    pub egress: Arc<Mutex<EgressReport>>,
}

impl PluginState {
    /// Fresh state for one call of `shared`'s plugin.
    pub fn new(shared: Arc<PluginShared>, deadline: Instant) -> PluginState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        // No environment, arguments, files, sockets or stdin: WASI is linked only because
        // guests built with std import it for panics and formatting.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .build();
        let egress = Arc::new(Mutex::new(EgressReport::default()));
        let tokio_deadline = tokio::time::Instant::from_std(deadline);
        // Host-side resources live in gateway memory, outside the plugin's memory cap:
        // count them per call (see `PluginLimits::max_host_resources`).
        let mut table = ResourceTable::new();
        table.set_max_capacity(shared.limits.max_host_resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(shared.limits.max_header_bytes);
        PluginState {
            wasi,
            table,
            http,
            hooks: EgressHooks {
                policy: shared.egress.clone(),
                report: egress.clone(),
                deadline: tokio_deadline,
            },
            limiter: CallLimiter {
                memory_cap: shared.limits.memory_bytes(),
                memory_denied: false,
            },
            shared,
            deadline,
            deadline_hit: false,
            log_bytes: 0,
            log_dropped: 0,
            stderr,
            egress,
        }
    }
}

/// Caps memory and table growth of one instance and remembers whether a cap was hit, so the
/// runtime can tell "out of memory" from any other trap.
pub struct CallLimiter {
    memory_cap: usize,
    /// Whether a growth request was refused.
    pub memory_denied: bool,
}

/// Table elements per instance; generous for function tables of real guests.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} MiB exceeded",
                self.memory_cap / (1024 * 1024)
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl PluginState {
    /// What `wasi:io/error.to-debug-string` tells the plugin about a stream error: the
    /// `wasi:http` error code when there is one, else a fixed text. Never the host error's
    /// own `Debug` form, which carries its message chain and, with `RUST_BACKTRACE` set,
    /// a backtrace of the gateway (a plugin could hand either to resellers).
    pub fn describe_io_error(
        &self,
        err: &wasmtime::component::Resource<wasmtime::Error>,
    ) -> wasmtime::Result<String> {
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
        let error = self.table.get(err)?;
        if let Some(code) = error.downcast_ref::<ErrorCode>() {
            return Ok(format!("{code:?}"));
        }
        Ok(match error.downcast_ref::<wasmtime_wasi_http::Error>() {
            Some(e) => super::egress::guest_text(e),
            None => "I/O error".to_string(),
        })
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl host::log::Host for PluginState {
    fn emit(
        &mut self,
        level: host::log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.log_bytes = self.log_bytes.saturating_add(size);
        if self.log_bytes > self.shared.limits.max_log_bytes_per_call {
            self.log_dropped += 1;
            return Ok(());
        }
        let plugin = &self.shared.id;
        let version = &self.shared.version;
        // A plugin never holds a secret value, but it may hold what a reflecting bound
        // host sent back in some encoding the egress scrubber missed: scrub again here.
        let scrubber = &self.shared.egress.scrubber;
        // One line each, so a plugin cannot forge log lines with breaks or escapes.
        let message = one_line(&scrubber.text(&message), usize::MAX);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|(k, v)| (one_line(&scrubber.owned(k), 64), scrubber.owned(v)))
            .collect();
        let fields = FieldsDisplay(&fields);
        use host::log::Level;
        match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
        }
        Ok(())
    }
}

struct FieldsDisplay<'a>(&'a [(String, String)]);

impl std::fmt::Display for FieldsDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        Ok(())
    }
}

impl host::config::Host for PluginState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.shared.capabilities.config.get(&key).cloned())
    }
}

impl host::secrets::Host for PluginState {
    fn verify_hmac(
        &mut self,
        secret_name: String,
        algorithm: host::secrets::HmacAlgorithm,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, host::secrets::SecretError>> {
        let Some(secret) = self.shared.egress.secrets.get(&secret_name) else {
            return Ok(Err(host::secrets::SecretError::NotGranted(secret_name)));
        };
        let sha512 = matches!(algorithm, host::secrets::HmacAlgorithm::Sha512);
        Ok(Ok(secrets::verify_hmac(
            secret, sha512, &message, &signature,
        )))
    }
}

impl host::clock::Host for PluginState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }
}

impl host::types::Host for PluginState {}
