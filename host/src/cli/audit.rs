//! `simgate audit verify --data-dir DIR`: check the audit log offline. The retention
//! checkpoint's signature is checked with the audit key beside the database, then the
//! chain from where the checkpoint says the kept log starts to its end (see
//! `simgate::domain::audit`).
//!
//! Exit status: 0 when the log holds (`ok: N entries from seq S`), 1 when it is broken
//! (`audit log broken at seq N: why`, naming the first bad entry), 2 when it could not be
//! checked (no data, or the gateway still running: sled locks its directory).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use simgate::domain::audit::{Broken, Verified, verify_log};
use simgate::domain::store::Store;
use simgate::privacy::FileKeyring;
use simgate::store::SledStore;

/// Check the audit log in `data_dir`, printing the verdict to stdout.
pub fn verify(data_dir: &Path) -> ExitCode {
    match check(data_dir) {
        Ok(Ok(v)) => {
            println!("ok: {} entries from seq {}", v.entries, v.first_seq);
            ExitCode::SUCCESS
        }
        Ok(Err(broken)) => {
            println!("{broken}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(data_dir: &Path) -> anyhow::Result<Result<Verified, Broken>> {
    let db = data_dir.join("db");
    if !db.exists() {
        anyhow::bail!(
            "{} holds no gateway data (no {} folder)",
            data_dir.display(),
            db.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = SledStore::open(&db, 8).map_err(|e| {
            anyhow::anyhow!(
                "{e}: the gateway must be stopped first (it holds a lock on its database while it runs)"
            )
        })?;
        let keyring = FileKeyring::open(data_dir).context("opening the audit key")?;
        let verdict = verify_log(&store, &keyring)
            .await
            .context("reading the audit log")?;
        store.close().await.context("closing the store")?;
        Ok(verdict)
    })
}
