//! The `Store` trait on sled: typed trees, JSON-encoded records, big-endian keys where
//! order matters, and group commit for durability.

mod group_commit;
mod sled_store;

pub use sled_store::SledStore;
