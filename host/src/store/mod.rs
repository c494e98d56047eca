//! Implementations of the domain's `Store`: on sled (typed trees, big-endian keys where
//! order matters, single-key commit records, group commit for durability), on PostgreSQL
//! (several nodes on one database), in memory (for tests of the rules), and the
//! conformance suite every implementation must pass.

pub mod backup;
mod checkpoint;
pub mod conformance;
mod group_commit;
mod memory;
mod postgres;
mod sled_store;

pub use memory::MemoryStore;
pub use postgres::{PgOptions, PgStore};
pub use sled_store::{CheckpointPolicy, Recovery, SledStore};
