//! Thin wrappers over the host imports every plugin gets: logging, settings, secrets and
//! the clock. (Outbound HTTP lives in [`crate::http`].)

/// Structured logging. The host tags each line with the plugin's identity and drops lines
/// over the per-call budget, so log what helps an operator, not every step.
pub mod log {
    use crate::bindings::simgate::supplier::log as wit;
    pub use crate::bindings::simgate::supplier::log::Level;

    /// Write one line at `level` with `key = value` fields.
    pub fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        wit::emit(level, message, &fields);
    }

    /// Log at `trace`.
    pub fn trace(message: &str) {
        emit(Level::Trace, message, &[]);
    }

    /// Log at `debug`.
    pub fn debug(message: &str) {
        emit(Level::Debug, message, &[]);
    }

    /// Log at `info`.
    pub fn info(message: &str) {
        emit(Level::Info, message, &[]);
    }

    /// Log at `warn`.
    pub fn warn(message: &str) {
        emit(Level::Warn, message, &[]);
    }

    /// Log at `error`.
    pub fn error(message: &str) {
        emit(Level::Error, message, &[]);
    }
}

/// The plugin's own non-secret settings, from the operator's grants file.
pub mod config {
    /// The value of setting `key`, or `None` when it is not set or the plugin's
    /// `plugin.toml` did not request it under `[requests] config`.
    pub fn get(key: &str) -> Option<String> {
        crate::bindings::simgate::supplier::config::get(key)
    }
}

/// Secrets by name. Values never enter plugin memory: reference them with
/// [`secret_ref`](crate::secret_ref) in outbound headers, and check inbound signatures
/// with [`verify_hmac`](crate::secrets::verify_hmac).
pub mod secrets {
    pub use crate::bindings::simgate::supplier::secrets::{HmacAlgorithm, SecretError};

    /// Whether `signature` (raw bytes, not hex) is the HMAC of `message` under the secret
    /// `name`, compared in constant time by the host. `Err(NotGranted)` when the plugin was
    /// not granted that secret or it is not configured.
    pub fn verify_hmac(
        name: &str,
        algorithm: HmacAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, SecretError> {
        crate::bindings::simgate::supplier::secrets::verify_hmac(
            name, algorithm, message, signature,
        )
    }

    /// The placeholder `${secret:NAME}` for use in an outbound header value; the host
    /// replaces it with the secret at egress when the plugin was granted `NAME`.
    pub fn secret_ref(name: &str) -> String {
        format!("${{secret:{name}}}")
    }
}

pub use secrets::secret_ref;

/// Wall-clock time, as the host sees it.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        crate::bindings::simgate::supplier::clock::now_ms()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_ref_is_the_placeholder_the_host_substitutes() {
        assert_eq!(super::secret_ref("API_TOKEN"), "${secret:API_TOKEN}");
    }
}
