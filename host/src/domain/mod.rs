//! The rules: orders, catalog, eSIMs, accounts. No HTTP, no wasmtime, no sled: `domain`
//! declares the small traits it needs ([`supplier::Supplier`], [`store::Store`]) and the
//! binary wires real implementations in, so every rule here is testable with fakes.

pub mod accounts;
pub mod audit;
pub mod catalog;
pub mod clock;
pub mod consent;
pub mod ekyc;
pub mod esim;
pub mod events;
pub mod fulfilment;
pub mod gateway;
pub mod idempotency;
pub mod ids;
pub mod jobs;
pub mod keyring;
pub mod ledger;
pub mod nodes;
pub mod orders;
pub mod personal;
pub mod request_log;
pub mod store;
pub mod supplier;
pub mod use_cases;
pub mod webhooks;

pub use supplier::{FaultKind, Supplier, SupplierError, Suppliers};
