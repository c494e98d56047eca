//! Write a simgate supplier plugin in Rust.
//!
//! A plugin adapts one eSIM supplier's API to the contract in `wit/v0.2/supplier.wit`
//! (`simgate:supplier@0.2.0`). It is built as a WebAssembly component (`wasm32-wasip2`)
//! and the gateway runs every call in a fresh instance: keep what must outlive a call in
//! [`state`], and derive everything else from the request.
//!
//! Plugins written against contract 0.1.0 keep building with [`v0_1`] (the same traits and
//! helpers over the 0.1 types, exported with [`export_v0_1!`]); the gateway serves both.
//!
//! # Layout
//!
//! - The contract's records and variants ([`Product`], [`Esim`], [`SupplierError`], ...) are
//!   re-exported at the crate root, exactly as generated from the WIT.
//! - One trait per exported interface: [`Plugin`] and [`Catalog`] are required,
//!   [`Provisioning`] needs only `provision`, and every method of [`Ekyc`] and [`Webhooks`]
//!   defaults to [`SupplierError::NotSupported`]. Their functions are associated functions
//!   (no `self`), like the traits `wit-bindgen` generates.
//! - [`export!`] turns a type implementing all five traits into the component's exports.
//! - What a plugin may call back into the host: [`log`], [`config`], [`secrets`] (with
//!   host-side signing and OAuth tokens), [`clock`], [`state`] and, when the operator
//!   granted outbound hosts, the blocking [`http`] client, whose errors map to the
//!   [`SupplierError`] the host acts on (429 with `Retry-After`, 4xx final, 5xx retried).
//! - [`bindings`] is the raw `wit-bindgen` output, for anything the wrappers leave out.
//!
//! # A plugin in one screen
//!
//! ```ignore
//! use simgate_sdk::*;
//!
//! struct Acme;
//!
//! impl Plugin for Acme {
//!     fn describe() -> Info {
//!         Info {
//!             id: "acme".into(), // must equal `id` in plugin.toml
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             supplier: "Acme Mobile".into(),
//!             features: vec![],
//!         }
//!     }
//! }
//!
//! impl Catalog for Acme {
//!     fn list_products() -> Result<Vec<Product>, SupplierError> {
//!         let page: Vec<AcmePlan> = http::Request::get("https://api.acme.test/plans")
//!             .header("authorization", format!("Bearer {}", secret_ref("ACME_TOKEN")))
//!             .send()?
//!             .json()?;
//!         Ok(page.into_iter().map(AcmePlan::into_product).collect())
//!     }
//! }
//!
//! impl Provisioning for Acme {
//!     fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
//!         // Use req.order_ref as the supplier's idempotency key: the host may retry.
//!         todo!()
//!     }
//! }
//!
//! impl Ekyc for Acme {}
//! impl Webhooks for Acme {}
//!
//! simgate_sdk::export!(Acme);
//! ```
//!
//! Secrets never enter plugin memory: put [`secret_ref`]`("NAME")` in an outbound header and
//! the host substitutes the value at egress, if the operator granted `NAME` to the plugin.
//!
//! The crate also compiles natively, so a plugin's pure logic can be unit tested with plain
//! `cargo test`; calling a host import outside a component panics.
//!
//! # Testing the built component
//!
//! With the `harness` feature (native only; enable it in `[dev-dependencies]`), [`harness`]
//! loads the built `.wasm` into the gateway's real runtime — grants, secrets, limits,
//! egress policy and all — and calls its exports from an ordinary `#[test]`. A
//! [`harness::RecordingEgress`] answers the plugin's outbound requests instead of the
//! supplier and records them, secrets filled in by the host. See `sdk/README.md` for a
//! complete example.

#![deny(missing_docs)]

mod adapter;
#[cfg(all(feature = "harness", not(target_arch = "wasm32")))]
pub mod harness;
mod host;
pub mod http;
pub mod v0_1;

#[doc(hidden)]
pub use adapter::Adapter;
pub use adapter::{Catalog, Ekyc, Plugin, Provisioning, Webhooks};
pub use host::{clock, config, log, secret_ref, secrets, state};

/// The raw bindings `wit-bindgen` generates for the `supplier` world, including the
/// `wasi:http` and `wasi:io` interfaces the [`http`] client is built on.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.2",
        world: "simgate:supplier/adapter@0.2.0",
        pub_export_macro: true,
        default_bindings_module: "simgate_sdk::bindings",
        // Bindings for the wasi:http, wasi:io and wasi:clocks interfaces the world imports.
        generate_all,
        // Equality for the contract's plain-data types, so plugin tests can assert on them.
        // (Not `additional_derives`: some WASI types hold resources, which cannot compare.)
        additional_type_attributes: {
            "simgate:supplier/types@0.2.0/money": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/data-allowance": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/product": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/supplier-error": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/info": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/esim": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/provision-request": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/provision-outcome": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/poll-request": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/top-up-request": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/cancel-request": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/usage": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/inbound": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/ekyc-request": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/ekyc-redirect": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/ekyc-update": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/supplier-event": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/order-delivered": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/order-failed": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/state-change": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/usage-threshold": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/order-ready": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/usage-change": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.2.0/webhook": [#[derive(PartialEq)]],
        },
    });
}

pub use bindings::simgate::supplier::types::{
    CancelRequest, DataAllowance, EkycRedirect, EkycRequest, EkycStatus, EkycUpdate, Esim, Feature,
    Inbound, Info, Money, OrderDelivered, OrderFailed, OrderReady, PlanState, PollRequest, Product,
    ProfileState, ProvisionOutcome, ProvisionRequest, StateChange, SupplierError, SupplierEvent,
    TopUpRequest, Usage, UsageChange, UsageThreshold, Webhook,
};

impl Inbound {
    /// The first value of header `name` (compared case-insensitively), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }
}

/// The first value of header `name` in `headers` (names compared case-insensitively).
fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Log a line with `key = value` fields at a level: `log_at!(Level::Info, "order placed",
/// order = req.order_ref, count = 3)`. Each value is written with `Display`; the host
/// tags the line with the plugin's identity, scrubs secret values from it and counts it
/// against the per-call log budget. [`log_info!`] and its siblings name the level.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $message:expr $(, $key:ident = $value:expr)* $(,)?) => {
        $crate::log::emit(
            $level,
            &$message,
            &[$((stringify!($key), ::std::format!("{}", $value).as_str())),*],
        )
    };
}

/// [`log_at!`] at `trace`.
#[macro_export]
macro_rules! log_trace {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Trace, $($arg)+) };
}

/// [`log_at!`] at `debug`.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Debug, $($arg)+) };
}

/// [`log_at!`] at `info`.
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Info, $($arg)+) };
}

/// [`log_at!`] at `warn`.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Warn, $($arg)+) };
}

/// [`log_at!`] at `error`.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Error, $($arg)+) };
}

/// Export a type as the plugin's implementation of the whole contract.
///
/// The type must implement [`Plugin`], [`Catalog`], [`Provisioning`], [`Ekyc`] and
/// [`Webhooks`] (the last two may be empty impls). Invoke it once, at the crate root of a
/// `cdylib` plugin crate:
///
/// ```ignore
/// simgate_sdk::export!(Acme);
/// ```
///
/// On `wasm32` it expands to `wit-bindgen`'s own export macro over an adapter type, whose
/// generated `Guest` impls delegate to the SDK traits (that macro accepts only a plain
/// identifier, hence the type alias). Natively (a plugin's unit tests) there is nothing to
/// export into, and the export symbols' names would not even link into a shared library,
/// so it only checks that the type implements the whole contract.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __SimgateSdkExports = $crate::Adapter<$plugin>;
    $crate::bindings::export!(__SimgateSdkExports with_types_in $crate::bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = $crate::Adapter::<$plugin>::implements_the_contract;
    };
}
