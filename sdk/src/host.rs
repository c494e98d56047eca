//! Thin wrappers over the host imports every plugin gets: logging, settings, secrets and
//! the clock (and, from contract 0.2, `state`). Outbound HTTP lives in [`crate::http`].
//! [`host_wrappers!`] writes the modules both contract versions share over the bindings
//! named; [`crate::v0_1`] invokes it for 0.1.

/// Writes `log`, `config`, `clock` and the shared part of `secrets` for the bindings `$b`;
/// `$extra` goes into `secrets` (what that version adds).
macro_rules! host_wrappers {
    ($($b:ident)::+ ; { $($extra:item)* }) => {
/// Structured logging. The host tags each line with the plugin's identity and drops lines
/// over the per-call budget, so log what helps an operator, not every step.
pub mod log {
    use $($b)::+::simgate::supplier::log as wit;
    pub use $($b)::+::simgate::supplier::log::Level;

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
        $($b)::+::simgate::supplier::config::get(key)
    }
}

/// Secrets by name. Values never enter plugin memory: reference them with `secret_ref`
/// in outbound requests, check inbound signatures with `verify_hmac`.
pub mod secrets {
    pub use $($b)::+::simgate::supplier::secrets::{HmacAlgorithm, SecretError};

    /// Whether `signature` (raw bytes, not hex) is the HMAC of `message` under the secret
    /// `name`, compared in constant time by the host. `Err(NotGranted)` when the plugin was
    /// not granted that secret or it is not configured.
    pub fn verify_hmac(
        name: &str,
        algorithm: HmacAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, SecretError> {
        $($b)::+::simgate::supplier::secrets::verify_hmac(
            name, algorithm, message, signature,
        )
    }

    /// The placeholder `${secret:NAME}` for use in an outbound header value; the host
    /// replaces it with the secret at egress when the plugin was granted `NAME`.
    pub fn secret_ref(name: &str) -> String {
        format!("${{secret:{name}}}")
    }

    $($extra)*
}

pub use secrets::secret_ref;

/// Wall-clock time, as the host sees it.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        $($b)::+::simgate::supplier::clock::now_ms()
    }
}

    };
}

pub(crate) use host_wrappers;

host_wrappers!(crate::bindings; {
    /// The HMAC of `message` under the secret `name`, computed by the host and encoded as
    /// asked: for suppliers that sign each request (build the message from the timestamp,
    /// request id and body the supplier's documentation names). `Err(NotGranted)` when
    /// the plugin was not granted `name`.
    pub fn sign(
        name: &str,
        algorithm: HmacAlgorithm,
        message: &[u8],
        encoding: Encoding,
    ) -> Result<String, SecretError> {
        crate::bindings::simgate::supplier::secrets::sign(name, algorithm, message, encoding)
    }

    /// The placeholder `${oauth:CLIENT}` for a header value (`Bearer ${oauth:CLIENT}`): the
    /// host puts the current token of the operator's OAuth client `CLIENT` there, fetching
    /// it when none is cached.
    pub fn oauth_ref(client: &str) -> String {
        format!("${{oauth:{client}}}")
    }

    /// Make the host fetch a new token for `client` at its next use (after the supplier
    /// answered 401).
    pub fn invalidate_token(client: &str) -> Result<(), SecretError> {
        crate::bindings::simgate::supplier::secrets::invalidate_token(client)
    }

    pub use crate::bindings::simgate::supplier::secrets::Encoding;
});

/// A small store that outlives one call (each call runs in a fresh instance): for what an
/// adapter must remember between calls and can fetch again (the host keeps it in memory,
/// across hot reloads, not restarts; at most 64 keys and 64 KiB). Never personal data.
pub mod state {
    pub use crate::bindings::simgate::supplier::state::StateError;

    /// The value under `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        crate::bindings::simgate::supplier::state::get(key)
    }

    /// Store `value` under `key`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
        crate::bindings::simgate::supplier::state::set(key, value)
    }

    /// Remove `key`.
    pub fn remove(key: &str) {
        crate::bindings::simgate::supplier::state::remove(key)
    }

    /// The value under `key` decoded as JSON, if present and decodable.
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Option<T> {
        serde_json::from_slice(&get(key)?).ok()
    }

    /// Store `value` as JSON under `key`.
    pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StateError::TooLarge(format!("cannot encode: {e}")))?;
        set(key, &bytes)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_ref_is_the_placeholder_the_host_substitutes() {
        assert_eq!(super::secret_ref("API_TOKEN"), "${secret:API_TOKEN}");
    }
}
