//! The SDK traits a plugin implements, and the adapter that plugs them into the generated
//! `Guest` traits.
//!
//! The generated traits must all be implemented in full; the SDK traits give every optional
//! operation a `NotSupported` default, so a plugin writes only what its supplier offers.
//! The same traits exist for each contract version (the crate root for 0.2, [`crate::v0_1`]
//! for 0.1): [`contract_traits!`] writes them over whichever generated types are in scope
//! where it is invoked, which differ only in what `Webhooks::parse` returns.

/// Writes the SDK traits and the `Adapter` for the bindings at `$b` (the types of that
/// contract version must be in scope); `$webhook` is what `webhooks.parse` returns.
macro_rules! contract_traits {
    ($($b:ident)::+ ; $webhook:ty) => {
use core::marker::PhantomData;

use $($b)::+::exports::simgate::supplier as exports;

/// Identity of the plugin (WIT `plugin`). Required.
pub trait Plugin {
    /// Describe the plugin. `id` and `version` must equal those in `plugin.toml`, and
    /// `features` must list every optional operation implemented. Called once at load as a
    /// smoke test: no I/O.
    fn describe() -> Info;
}

/// The supplier's catalog (WIT `catalog`). Required.
pub trait Catalog {
    /// Every product the supplier sells now. The host caches the answer.
    fn list_products() -> Result<Vec<Product>, SupplierError>;
}

/// Buying and managing eSIMs (WIT `provisioning`). Only `provision` is required; declare
/// the matching `Feature` in `describe` for each other method you implement.
pub trait Provisioning {
    /// Order eSIMs. Must be idempotent on `req.order_ref`: the host may retry after a timeout.
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError>;

    /// Check on an order that `provision` answered with `Pending` (`async-provisioning`).
    fn poll(_req: PollRequest) -> Result<ProvisionOutcome, SupplierError> {
        Err(SupplierError::NotSupported)
    }

    /// Add a plan to an existing eSIM; returns the supplier's reference (`top-up`).
    fn top_up(_req: TopUpRequest) -> Result<String, SupplierError> {
        Err(SupplierError::NotSupported)
    }

    /// Cancel an eSIM that was never installed (`cancel`).
    fn cancel(_req: CancelRequest) -> Result<(), SupplierError> {
        Err(SupplierError::NotSupported)
    }

    /// Current usage and states of an eSIM (`usage`).
    fn usage(_iccid: String) -> Result<Usage, SupplierError> {
        Err(SupplierError::NotSupported)
    }
}

/// Identity verification by redirect (WIT `ekyc`). Everything defaults to `NotSupported`.
pub trait Ekyc {
    /// Open a verification session and say where to send the end user.
    fn start(_req: EkycRequest) -> Result<EkycRedirect, SupplierError> {
        Err(SupplierError::NotSupported)
    }

    /// Read a provider callback; verify its signature with
    /// `secrets::verify_hmac`.
    fn parse_callback(_req: Inbound) -> Result<EkycUpdate, SupplierError> {
        Err(SupplierError::NotSupported)
    }
}

/// Inbound supplier webhooks (WIT `webhooks`). Defaults to `NotSupported`.
pub trait Webhooks {
    /// Verify (with `secrets::verify_hmac`) and parse a
    /// supplier webhook into events.
    fn parse(_req: Inbound) -> Result<$webhook, SupplierError> {
        Err(SupplierError::NotSupported)
    }
}

/// Implements every generated `Guest` trait for `T` by delegating to its SDK traits.
/// Used by `export!`; not meant to be named by plugins.
pub struct Adapter<T>(PhantomData<T>);

impl<T: Plugin + Catalog + Provisioning + Ekyc + Webhooks> Adapter<T> {
    /// Compiles only when `T` implements every SDK trait; `export!` names
    /// it where it cannot export (native builds).
    pub fn implements_the_contract() {}
}

impl<T: Plugin> exports::plugin::Guest for Adapter<T> {
    fn describe() -> Info {
        T::describe()
    }
}

impl<T: Catalog> exports::catalog::Guest for Adapter<T> {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        T::list_products()
    }
}

impl<T: Provisioning> exports::provisioning::Guest for Adapter<T> {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        T::provision(req)
    }

    fn poll(req: PollRequest) -> Result<ProvisionOutcome, SupplierError> {
        T::poll(req)
    }

    fn top_up(req: TopUpRequest) -> Result<String, SupplierError> {
        T::top_up(req)
    }

    fn cancel(req: CancelRequest) -> Result<(), SupplierError> {
        T::cancel(req)
    }

    fn usage(iccid: String) -> Result<Usage, SupplierError> {
        T::usage(iccid)
    }
}

impl<T: Ekyc> exports::ekyc::Guest for Adapter<T> {
    fn start(req: EkycRequest) -> Result<EkycRedirect, SupplierError> {
        T::start(req)
    }

    fn parse_callback(req: Inbound) -> Result<EkycUpdate, SupplierError> {
        T::parse_callback(req)
    }
}

impl<T: Webhooks> exports::webhooks::Guest for Adapter<T> {
    fn parse(req: Inbound) -> Result<$webhook, SupplierError> {
        T::parse(req)
    }
}

    };
}

pub(crate) use contract_traits;

use crate::{
    CancelRequest, EkycRedirect, EkycRequest, EkycUpdate, Inbound, Info, PollRequest, Product,
    ProvisionOutcome, ProvisionRequest, SupplierError, TopUpRequest, Usage, Webhook,
};

contract_traits!(crate::bindings; Webhook);
