//! Contract `simgate:supplier@0.1.0`, for plugins written against it: the same traits,
//! helpers and [`export_v0_1!`](crate::export_v0_1) as the crate root, over the 0.1 types.
//! The gateway serves 0.1 and 0.2 plugins side by side; a 0.1 plugin moves to 0.2 by
//! importing from the crate root instead (its `Webhooks::parse` then returns a
//! [`crate::Webhook`], and it gains signing, OAuth tokens and `state`).
//!
//! ```ignore
//! use simgate_sdk::v0_1::*;
//! // ... impl Plugin, Catalog, Provisioning, Ekyc, Webhooks for Acme ...
//! simgate_sdk::export_v0_1!(Acme);
//! ```

#![allow(missing_docs)]

/// The raw `wit-bindgen` output for the 0.1 world. The `wasi:*` interfaces are the crate
/// root's, so [`crate::http`] serves both versions.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0",
        world: "simgate:supplier/supplier@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_v0_1_impl",
        default_bindings_module: "simgate_sdk::v0_1::bindings",
        with: {
            "wasi:http/types@0.2.12": crate::bindings::wasi::http::types,
            "wasi:http/outgoing-handler@0.2.12": crate::bindings::wasi::http::outgoing_handler,
            "wasi:io/error@0.2.12": crate::bindings::wasi::io::error,
            "wasi:io/poll@0.2.12": crate::bindings::wasi::io::poll,
            "wasi:io/streams@0.2.12": crate::bindings::wasi::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": crate::bindings::wasi::clocks::monotonic_clock,
        },
        additional_type_attributes: {
            "simgate:supplier/types@0.1.0/product": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/money": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/data-allowance": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/supplier-error": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/info": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/esim": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/provision-outcome": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/usage": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/ekyc-redirect": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/ekyc-update": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/supplier-event": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/order-delivered": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/order-failed": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/state-change": [#[derive(PartialEq)]],
            "simgate:supplier/types@0.1.0/usage-threshold": [#[derive(PartialEq)]],
        },
    });
}

pub use self::bindings::simgate::supplier::types::{
    CancelRequest, DataAllowance, EkycRedirect, EkycRequest, EkycStatus, EkycUpdate, Esim, Feature,
    Inbound, Info, Money, OrderDelivered, OrderFailed, PlanState, PollRequest, Product,
    ProfileState, ProvisionOutcome, ProvisionRequest, StateChange, SupplierError, SupplierEvent,
    TopUpRequest, Usage, UsageThreshold,
};
pub use crate::http;

mod traits {
    use super::{
        CancelRequest, EkycRedirect, EkycRequest, EkycUpdate, Inbound, Info, PollRequest, Product,
        ProvisionOutcome, ProvisionRequest, SupplierError, SupplierEvent, TopUpRequest, Usage,
    };
    crate::adapter::contract_traits!(crate::v0_1::bindings; Vec<SupplierEvent>);
}

#[doc(hidden)]
pub use traits::Adapter;
pub use traits::{Catalog, Ekyc, Plugin, Provisioning, Webhooks};

mod imports {
    crate::host::host_wrappers!(crate::v0_1::bindings; {});
}

pub use imports::{clock, config, log, secret_ref, secrets};

impl Inbound {
    /// The first value of header `name` (compared case-insensitively), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::first_header(&self.headers, name)
    }
}

/// An HTTP failure as the 0.1 error the host acts on (as for 0.2, see [`crate::http`]).
impl From<crate::http::HttpError> for SupplierError {
    fn from(err: crate::http::HttpError) -> Self {
        match crate::SupplierError::from(err) {
            crate::SupplierError::OutOfStock => SupplierError::OutOfStock,
            crate::SupplierError::RateLimited(s) => SupplierError::RateLimited(s),
            crate::SupplierError::Unavailable(r) => SupplierError::Unavailable(r),
            crate::SupplierError::Rejected(r) => SupplierError::Rejected(r),
            crate::SupplierError::InvalidRequest(r) => SupplierError::InvalidRequest(r),
            crate::SupplierError::NotSupported => SupplierError::NotSupported,
        }
    }
}

/// [`export!`](crate::export) for a plugin built against contract 0.1.0.
#[macro_export]
macro_rules! export_v0_1 {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __SimgateSdkExports = $crate::v0_1::Adapter<$plugin>;
    $crate::v0_1::bindings::export_v0_1_impl!(__SimgateSdkExports with_types_in $crate::v0_1::bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = $crate::v0_1::Adapter::<$plugin>::implements_the_contract;
    };
}
