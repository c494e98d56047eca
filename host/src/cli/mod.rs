//! The operator and integrator commands of the `simgate` binary, one file each; `main.rs`
//! only parses arguments and dispatches.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod backup;
pub mod build;
pub mod check;
pub mod first_start;
pub mod logging;
pub mod pack;
pub mod scaffold;
pub mod secret_file;
pub mod serve;
