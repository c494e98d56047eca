//! The operator and integrator commands of the `simgate` binary, one file each; `main.rs`
//! only parses arguments and dispatches.

pub mod audit;
pub mod build;
pub mod check;
pub mod pack;
pub mod scaffold;
