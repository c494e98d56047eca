//! The plugin runtime: supplier adapters as sandboxed WebAssembly components.
//!
//! What lives here, and nowhere else, is wasmtime: the engine and its compiled cache
//! ([`engine`]), what a plugin asks for and is granted ([`manifest`]), the per-call store
//! ([`state`]), limits and fault classification ([`runtime`]), egress ([`egress`], [`tls`]),
//! secrets by name ([`secrets`]), the registry of serving generations ([`registry`]), its
//! counters ([`stats`]) and hot reload of the plugins folder ([`watcher`]).
//! The rest of the gateway sees plugins only through `domain::Supplier`.

pub mod bindings;
pub mod egress;
pub mod engine;
pub mod error;
pub mod kv;
pub mod manifest;
pub mod oauth;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod stats;
mod tls;
pub mod watcher;

pub use engine::PluginEngine;
pub use error::{CallError, LoadError};
pub use manifest::{Capabilities, Grant, Grants, Manifest};
pub use registry::{PluginStatus, Registry};
pub use runtime::{LoadContext, LoadedPlugin};
pub use secrets::SecretStore;
pub use watcher::PluginWatcher;
