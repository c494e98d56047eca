//! The first start of an empty data directory: the first admin key, and (with `--demo`) a
//! demo reseller to try the API with.
//!
//! The admin key opens every account, so it never goes to stdout, where a terminal's
//! scroll-back, a service manager's journal or a CI log would keep it: it is written to
//! `DATA_DIR/admin-key.txt`, readable only by its owner, and only the path is printed.
//! The file is created *before* the key is minted, so when it cannot be (it already
//! exists) nothing is minted and the next start tries again. The demo reseller's key is a
//! test-mode key (it can spend only the demo credit), and is printed.

use std::path::{Path, PathBuf};

use anyhow::Context;

use simgate::domain::gateway::Gateway;

use super::secret_file;

/// Where the first admin key is written, in the data directory.
pub const ADMIN_KEY_FILE: &str = "admin-key.txt";

/// The store's marker of a finished first start (set by `Gateway::bootstrap`).
const BOOTSTRAPPED: &str = "bootstrapped";

/// On the first start of `data_dir`, mint the admin key into [`ADMIN_KEY_FILE`] and, with
/// `demo`, a demo reseller; print where the key is and the demo key. Later starts do
/// nothing.
pub async fn bootstrap(gateway: &Gateway, data_dir: &Path, demo: bool) -> anyhow::Result<()> {
    if gateway.store().meta(BOOTSTRAPPED).await?.is_some() {
        return Ok(());
    }
    let path = data_dir.join(ADMIN_KEY_FILE);
    let file = secret_file::create(&path).context("writing the first admin key")?;
    let keys = match gateway.bootstrap(demo).await {
        Ok(Some(keys)) => keys,
        Ok(None) => {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        Err(e) => {
            // Empty: nothing was minted into it. The next start creates it again.
            let _ = std::fs::remove_file(&path);
            return Err(e).context("creating the first admin key");
        }
    };
    secret_file::write(file, &path, &keys.admin)?;
    println!(
        "admin API key written to {} (readable only by you; move it somewhere safe)",
        shown(&path).display()
    );
    if let Some((reseller, key)) = keys.demo {
        println!("demo reseller {reseller} API key (shown once): {key}");
    }
    Ok(())
}

/// The absolute path, so the operator finds the file from any directory.
fn shown(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
