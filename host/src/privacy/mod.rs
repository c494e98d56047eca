//! Privacy mechanics: keys kept outside the database, field encryption.

mod keyring;

pub use keyring::{FileKeyring, KeyFileError};
