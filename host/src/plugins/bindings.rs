//! Host-side bindings of the `simgate:supplier@0.1.0` world, generated from `wit/v0`.
//!
//! One module per major WIT version (as Zed's extension host does): a future `v1` world
//! gets a sibling module and the runtime dispatches on what the component exports.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "supplier",
    path: "../wit/v0",
    imports: { default: trappable },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
    },
});

// `self::`: where the crate itself is in scope as `simgate` (rustdoc's doctest build), the
// generated module of the same name would otherwise be ambiguous.
pub use self::exports::simgate::supplier as guest;
pub use self::simgate::supplier as host;
