//! The per-call store data: everything one plugin call may touch, created fresh for every
//! call and dropped with it, so nothing leaks between orders or resellers.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

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

/// The shared half of the host imports; each contract version's `Host` impls below only
/// convert their types and call these.
impl PluginState {
    /// `log.emit`: one line, scrubbed, one line long, within the per-call log budget.
    fn emit(&mut self, level: tracing::Level, message: String, fields: Vec<(String, String)>) {
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.log_bytes = self.log_bytes.saturating_add(size);
        if self.log_bytes > self.shared.limits.max_log_bytes_per_call {
            self.log_dropped += 1;
            return;
        }
        let plugin = &self.shared.id;
        let version = &self.shared.version;
        let scrubber = &self.shared.egress.scrubber;
        let message = one_line(&scrubber.text(&message), usize::MAX);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|(k, v)| (one_line(&scrubber.owned(k), 64), scrubber.owned(v)))
            .collect();
        let fields = FieldsDisplay(&fields);
        match level {
            tracing::Level::TRACE => {
                tracing::trace!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
            tracing::Level::ERROR => {
                tracing::error!(target: "plugin", %plugin, %version, %fields, "{message}")
            }
        }
    }

    /// `config.get`.
    fn config_value(&self, key: &str) -> Option<String> {
        self.shared.capabilities.config.get(key).cloned()
    }

    /// `secrets.verify-hmac`; `Err(name)` when the secret is not granted.
    fn verify(
        &self,
        name: String,
        sha512: bool,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        match self.shared.egress.secrets.get(&name) {
            Some(secret) => Ok(secrets::verify_hmac(secret, sha512, message, signature)),
            None => Err(name),
        }
    }
}

/// The longest message `secrets.sign` signs: a request body and a few header values.
const MAX_SIGNED_BYTES: usize = 4 * 1024 * 1024;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The imports both contract versions share: `log`, `config`, `clock`, `types`, and
/// `secrets.verify-hmac` (the rest of a version's `secrets` comes in as `$secrets`).
macro_rules! shared_imports {
    ($host:ident; { $($secrets:tt)* }) => {
        impl $host::log::Host for PluginState {
            fn emit(
                &mut self,
                level: $host::log::Level,
                message: String,
                fields: Vec<(String, String)>,
            ) -> wasmtime::Result<()> {
                use $host::log::Level as L;
                let level = match level {
                    L::Trace => tracing::Level::TRACE,
                    L::Debug => tracing::Level::DEBUG,
                    L::Info => tracing::Level::INFO,
                    L::Warn => tracing::Level::WARN,
                    L::Error => tracing::Level::ERROR,
                };
                PluginState::emit(self, level, message, fields);
                Ok(())
            }
        }

        impl $host::config::Host for PluginState {
            fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
                Ok(self.config_value(&key))
            }
        }

        impl $host::secrets::Host for PluginState {
            fn verify_hmac(
                &mut self,
                secret_name: String,
                algorithm: $host::secrets::HmacAlgorithm,
                message: Vec<u8>,
                signature: Vec<u8>,
            ) -> wasmtime::Result<Result<bool, $host::secrets::SecretError>> {
                let sha512 = matches!(algorithm, $host::secrets::HmacAlgorithm::Sha512);
                Ok(self
                    .verify(secret_name, sha512, &message, &signature)
                    .map_err($host::secrets::SecretError::NotGranted))
            }

            $($secrets)*
        }

        impl $host::clock::Host for PluginState {
            fn now_ms(&mut self) -> wasmtime::Result<u64> {
                Ok(super::now_ms())
            }
        }

        impl $host::types::Host for PluginState {}
    };
}

mod v0_1_imports {
    use super::super::bindings::v0_1::host;
    use super::PluginState;

    shared_imports!(host; {});
}

mod v0_2_imports {
    use base64::Engine as _;

    use super::super::bindings::v0_2::host;
    use super::PluginState;

    shared_imports!(host; {
        fn sign(
            &mut self,
            secret_name: String,
            algorithm: host::secrets::HmacAlgorithm,
            message: Vec<u8>,
            encoding: host::secrets::Encoding,
        ) -> wasmtime::Result<Result<String, host::secrets::SecretError>> {
            let Some(secret) = self.shared.egress.secrets.get(&secret_name) else {
                return Ok(Err(host::secrets::SecretError::NotGranted(secret_name)));
            };
            if message.len() > super::MAX_SIGNED_BYTES {
                // A guest error, not a refusal the plugin could misread as "not granted".
                wasmtime::bail!(
                    "secrets.sign: message over {} bytes",
                    super::MAX_SIGNED_BYTES
                );
            }
            let alg = match algorithm {
                host::secrets::HmacAlgorithm::Sha256 => ring::hmac::HMAC_SHA256,
                host::secrets::HmacAlgorithm::Sha512 => ring::hmac::HMAC_SHA512,
            };
            let key = ring::hmac::Key::new(alg, secret.expose().as_bytes());
            let tag = ring::hmac::sign(&key, &message);
            Ok(Ok(match encoding {
                host::secrets::Encoding::Hex => hex::encode(tag.as_ref()),
                host::secrets::Encoding::Base64 => {
                    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
                }
            }))
        }

        fn invalidate_token(
            &mut self,
            client: String,
        ) -> wasmtime::Result<Result<(), host::secrets::SecretError>> {
            Ok(if self.shared.egress.oauth.invalidate(&client) {
                Ok(())
            } else {
                Err(host::secrets::SecretError::NotGranted(client))
            })
        }
    });

    impl host::state::Host for PluginState {
        fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
            Ok(self.shared.kv.get(&key))
        }

        fn set(
            &mut self,
            key: String,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), host::state::StateError>> {
            Ok(self
                .shared
                .kv
                .set(key, value)
                .map_err(host::state::StateError::TooLarge))
        }

        fn remove(&mut self, key: String) -> wasmtime::Result<()> {
            self.shared.kv.remove(&key);
            Ok(())
        }
    }
}
