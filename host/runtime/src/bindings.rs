//! Host-side bindings of the `simgate:supplier` worlds, one module per contract version
//! (as Zed's extension host does): `v0_1` from `wit/v0` (`simgate:supplier@0.1.0`) and
//! `v0_2` from `wit/v0.2` (`simgate:supplier@0.2.0`). The runtime looks at what a component
//! exports, links the matching version's imports, and converts 0.1 results into the 0.2
//! types (a superset) before checking them, so every check exists once.

#![allow(missing_docs)]

/// `simgate:supplier@0.1.0`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "supplier",
        path: "../../wit/v0",
        imports: { default: trappable },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
        },
    });

    pub use self::exports::simgate::supplier as guest;
    pub use self::simgate::supplier as host;
}

/// `simgate:supplier@0.2.0`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "adapter",
        path: "../../wit/v0.2",
        imports: { default: trappable },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
        },
    });

    pub use self::exports::simgate::supplier as guest;
    pub use self::simgate::supplier as host;
    pub use self::{Adapter as Supplier, AdapterPre as SupplierPre};
}

/// The contract version a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Contract {
    /// `simgate:supplier@0.1.0`.
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `simgate:supplier@0.2.0`.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl Contract {
    /// The version from a component's export names (`simgate:supplier/plugin@0.2.0`).
    pub fn of_exports<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Contract> {
        names.into_iter().find_map(|name| {
            let version = name.strip_prefix("simgate:supplier/plugin@")?;
            match version {
                "0.1.0" => Some(Contract::V0_1),
                "0.2.0" => Some(Contract::V0_2),
                _ => None,
            }
        })
    }

    /// `0.1.0` or `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 0.1 values as 0.2 values: the 0.2 records are a superset, so this only copies fields.
mod compat {
    use super::v0_1::host::types as old;
    use super::v0_2::host::types as new;

    macro_rules! same_record {
        ($from:ident => $to:ident: $t:ident { $($f:ident),* $(,)? }) => {
            impl From<$from::$t> for $to::$t {
                fn from(x: $from::$t) -> Self {
                    $to::$t { $($f: x.$f.into()),* }
                }
            }
        };
    }
    macro_rules! same_enum {
        ($from:ident => $to:ident: $t:ident { $($v:ident),* $(,)? }) => {
            impl From<$from::$t> for $to::$t {
                fn from(x: $from::$t) -> Self {
                    match x { $($from::$t::$v => $to::$t::$v),* }
                }
            }
        };
    }

    // Results: 0.1 -> 0.2.
    same_record!(old => new: Money { minor, currency });
    same_record!(old => new: Esim { iccid, smdp_address, matching_id, confirmation_code_required });
    same_record!(old => new: Usage { used_bytes, total_bytes, profile, plan, raw_status, expires_at_ms });
    same_record!(old => new: EkycRedirect { url, supplier_session_ref, expires_at_ms });
    same_record!(old => new: EkycUpdate { session_ref, status });
    same_record!(old => new: OrderFailed { order_ref, reason });

    impl From<old::StateChange> for new::StateChange {
        fn from(x: old::StateChange) -> Self {
            new::StateChange {
                iccid: x.iccid,
                profile: x.profile.map(Into::into),
                plan: x.plan.map(Into::into),
                raw_status: x.raw_status,
            }
        }
    }
    same_record!(old => new: UsageThreshold { iccid, used_bytes, percent });
    same_enum!(old => new: Feature { AsyncProvisioning, TopUp, Cancel, Usage, Ekyc, Webhooks });
    same_enum!(old => new: ProfileState { Released, Downloaded, Installed, Enabled, Disabled, Deleted, Error });
    same_enum!(old => new: PlanState { Allocating, Ready, Active, Depleted, Expired, ExpiredUnused });
    same_enum!(old => new: EkycStatus { Pending, Approved, Rejected });

    // Requests: 0.2 -> 0.1 (the same fields; `inbound` loses its source address below).
    same_record!(new => old: ProvisionRequest { order_ref, sku, quantity });
    same_record!(new => old: PollRequest { order_ref, supplier_ref });
    same_record!(new => old: TopUpRequest { order_ref, iccid, sku });
    same_record!(new => old: CancelRequest { order_ref, iccid });
    same_record!(new => old: EkycRequest { session_ref, sku, return_url });

    impl From<new::Inbound> for old::Inbound {
        fn from(x: new::Inbound) -> Self {
            old::Inbound {
                method: x.method,
                path_and_query: x.path_and_query,
                headers: x.headers,
                body: x.body,
            }
        }
    }

    impl From<old::Info> for new::Info {
        fn from(x: old::Info) -> Self {
            new::Info {
                id: x.id,
                version: x.version,
                supplier: x.supplier,
                features: x.features.into_iter().map(Into::into).collect(),
            }
        }
    }

    impl From<old::DataAllowance> for new::DataAllowance {
        fn from(x: old::DataAllowance) -> Self {
            match x {
                old::DataAllowance::Bytes(b) => new::DataAllowance::Bytes(b),
                old::DataAllowance::Unlimited => new::DataAllowance::Unlimited,
            }
        }
    }

    impl From<old::Product> for new::Product {
        fn from(x: old::Product) -> Self {
            new::Product {
                sku: x.sku,
                title: x.title,
                countries: x.countries,
                region: x.region,
                data: x.data.into(),
                validity_days: x.validity_days,
                wholesale: x.wholesale.into(),
                needs_kyc: x.needs_kyc,
                top_up_able: x.top_up_able,
            }
        }
    }

    impl From<old::SupplierError> for new::SupplierError {
        fn from(x: old::SupplierError) -> Self {
            use new::SupplierError as N;
            use old::SupplierError as O;
            match x {
                O::OutOfStock => N::OutOfStock,
                O::RateLimited(s) => N::RateLimited(s),
                O::Unavailable(r) => N::Unavailable(r),
                O::Rejected(r) => N::Rejected(r),
                O::InvalidRequest(r) => N::InvalidRequest(r),
                O::NotSupported => N::NotSupported,
            }
        }
    }

    impl From<old::ProvisionOutcome> for new::ProvisionOutcome {
        fn from(x: old::ProvisionOutcome) -> Self {
            match x {
                old::ProvisionOutcome::Delivered(esims) => {
                    new::ProvisionOutcome::Delivered(esims.into_iter().map(Into::into).collect())
                }
                old::ProvisionOutcome::Pending(r) => new::ProvisionOutcome::Pending(r),
            }
        }
    }

    impl From<old::SupplierEvent> for new::SupplierEvent {
        fn from(x: old::SupplierEvent) -> Self {
            use new::SupplierEvent as N;
            use old::SupplierEvent as O;
            match x {
                O::OrderDelivered(d) => N::OrderDelivered(new::OrderDelivered {
                    order_ref: d.order_ref,
                    esims: d.esims.into_iter().map(Into::into).collect(),
                }),
                O::OrderFailed(f) => N::OrderFailed(f.into()),
                O::ProfileChanged(c) => N::ProfileChanged(c.into()),
                O::PlanChanged(c) => N::PlanChanged(c.into()),
                O::UsageThreshold(t) => N::UsageThreshold(t.into()),
            }
        }
    }
}
