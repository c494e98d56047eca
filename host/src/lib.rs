//! simgate: a self-hosted gateway through which eSIM resellers buy and deliver eSIMs from
//! many suppliers over one HTTP API.
//!
//! # Layout
//!
//! Data flows one way: `api -> domain -> (store, plugins, webhooks)`.
//!
//! - [`api`]: HTTP only: routing, authentication, JSON, problem+json. No business rules.
//! - [`domain`]: the rules. Declares the traits it needs from outside.
//! - [`store`]: the `Store` trait's sled and in-memory implementations, and the
//!   conformance suite both pass.
//! - [`jobs`]: the worker that runs durable background jobs.
//! - [`node`]: this process as one node of those sharing a store (id, run, heartbeat).
//! - [`plugins`]: wasmtime: supplier plugins as sandboxed components.
//! - [`webhooks`]: Standard Webhooks signing and delivery: the domain's `Webhooks` port.
//! - [`net`]: the address guard and TLS client shared by plugin egress and webhooks.
//! - [`config`]: one typed configuration with working defaults.

#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod domain;
pub mod jobs;
pub mod node;
pub mod plugins;
pub mod privacy;
pub mod store;
pub mod webhooks;

/// The address guard and TLS client, from the plugin runtime (shared with webhooks).
pub use simgate_runtime::net;
