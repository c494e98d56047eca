//! The use cases, one family per file, as methods on [`super::gateway::Gateway`]: what a
//! caller may do and the rules it goes through. No HTTP, wasmtime or sled here; a new
//! family (eKYC, consent, subjects, webhook endpoints) gets a file of its own.

pub mod accounts;
pub mod audit;
pub mod catalog;
pub mod consents;
pub mod ekyc;
pub mod esims;
pub mod events;
pub mod orders;
pub mod retention;
pub mod subjects;
pub mod supplier_webhooks;
pub mod webhooks;

#[cfg(test)]
mod tests;
