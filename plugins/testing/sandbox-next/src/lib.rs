//! Test plugin `sandbox-next`: the sandbox supplier compiled from its own, unchanged source
//! as this crate, so `describe()` reports this crate's version (0.2.0) and everything else
//! behaves exactly as the sandbox does. Hot reload tests deploy it over the sandbox (same
//! id, same products) and back, and can tell the two generations apart by version.
//!
//! Its unit tests are the sandbox's own (`cargo test -p sandbox`); compiled here they would
//! compare this version with the sandbox's manifest, so they are left out.

#[cfg(not(test))]
#[path = "../../../sandbox/src/lib.rs"]
mod sandbox;

// The sandbox's modules refer to each other from the crate root (`crate::derive`).
#[cfg(not(test))]
use sandbox::derive;
