//! Plugins in the gateway: the registry of serving generations ([`registry`]) and hot
//! reload of the plugins folder ([`watcher`]), over the plugin runtime crate
//! (`simgate_runtime`: engine, contract bindings, manifests and grants, limits, egress,
//! secrets, OAuth, state, counters), whose modules are re-exported here under their names.
//! The rest of the gateway sees plugins only through `domain::Supplier`.

pub mod registry;
pub mod watcher;

pub use simgate_runtime::{
    CallError, Capabilities, Grant, Grants, LoadContext, LoadError, LoadedPlugin, Manifest,
    PluginEngine, SecretStore, bindings, egress, engine, error, kv, manifest, oauth, pool, runtime,
    secrets, state, stats,
};

pub use registry::{PluginStatus, Registry};
pub use watcher::PluginWatcher;
