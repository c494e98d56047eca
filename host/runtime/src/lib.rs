//! The simgate plugin runtime: supplier adapters as sandboxed WebAssembly components.
//!
//! A crate of its own so that what runs a plugin can be used without the gateway: the SDK's
//! test harness loads a plugin into exactly this runtime from an integrator's `cargo test`
//! without compiling the gateway's HTTP server, store or jobs.
//!
//! - The contract as Rust sees it: [`supplier`] (records, errors, the [`supplier::Supplier`]
//!   trait the gateway's domain calls) and [`ekyc`]; [`limits`] every call runs under.
//! - wasmtime: the engine and its compiled cache ([`engine`]), the generated bindings of
//!   each contract version ([`bindings`]), what a plugin asks for and is granted
//!   ([`manifest`]), the per-call store ([`state`]), limits and fault classification
//!   ([`runtime`]), egress ([`egress`], [`pool`], [`net`]), secrets by name ([`secrets`]),
//!   OAuth tokens ([`oauth`]), the per-plugin `state` store ([`kv`]) and call counters
//!   ([`stats`]).
//!
//! The gateway's registry of serving generations and its hot reload build on this crate.

pub mod bindings;
pub mod egress;
pub mod ekyc;
pub mod engine;
pub mod error;
pub mod kv;
pub mod limits;
pub mod manifest;
pub mod net;
pub mod oauth;
pub mod pool;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod stats;
pub mod supplier;
mod tls;

pub use engine::PluginEngine;
pub use error::{CallError, LoadError};
pub use manifest::{Capabilities, Grant, Grants, Manifest};
pub use runtime::{LoadContext, LoadedPlugin};
pub use secrets::SecretStore;
