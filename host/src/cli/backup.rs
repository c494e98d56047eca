//! `simgate backup DIR` and `simgate restore DIR`: a copy of a gateway's data directory
//! that a new gateway can start from, taken while the gateway runs.
//!
//! A backup folder holds the database copy (`db.sgbk`, see `store::backup`), the key files
//! the data cannot be read without (`pepper.key`, `master.key`, `audit.key`) and
//! `backup.json`, which names them with their SHA-256. While a gateway runs it holds the
//! database, so the copy is made by the gateway itself (`POST /v1/admin/backups`, which
//! writes it under `DATA_DIR/backups/`) and moved here; with no gateway running the
//! database is opened and copied directly. The key files never cross the API: they are
//! read from the data directory by this command, on the gateway's host.
//!
//! The folder is as sensitive as the data directory: it is created for its owner alone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use simgate::domain::store::BackupSummary;
use simgate::store::SledStore;

use super::admin::client::AdminClient;

/// The key files a data directory cannot be read without.
const KEY_FILES: [&str; 3] = ["pepper.key", "master.key", "audit.key"];
/// The database copy in a backup folder.
const DB_FILE: &str = "db.sgbk";
/// What the folder holds.
const MANIFEST: &str = "backup.json";

/// `backup.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The format of this folder.
    format: u32,
    /// When the copy was taken, ms since the epoch.
    taken_at_ms: u64,
    /// The database copy.
    db: FileSum,
    /// The key files.
    keys: Vec<FileSum>,
    /// Records in the copy.
    entries: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileSum {
    name: String,
    sha256: String,
}

/// Where the gateway runs, if it does.
pub struct Online {
    /// Its URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// A file holding an admin key (default: `DATA_DIR/admin-key.txt`).
    pub key_file: Option<PathBuf>,
}

/// Back up the gateway whose data directory is `data_dir` into the new folder `to`.
pub fn backup(data_dir: &Path, to: &Path, online: Online) -> anyhow::Result<()> {
    let db = data_dir.join("db");
    if !db.exists() {
        anyhow::bail!("{} holds no gateway data", data_dir.display());
    }
    create_private_dir(to)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let copy = to.join(DB_FILE);
    let summary = rt.block_on(async {
        match SledStore::open(&db, 64) {
            Ok(store) => {
                eprintln!(
                    "no gateway is running on {}: copying it directly",
                    data_dir.display()
                );
                let summary = store.export_to(&copy)?;
                simgate::domain::store::Store::close(&store).await?;
                Ok(summary)
            }
            Err(e) if e.to_string().contains("lock") => {
                ask_the_gateway(data_dir, &copy, online).await
            }
            Err(e) => Err(anyhow::Error::new(e).context("opening the store")),
        }
    })?;
    let mut keys = Vec::new();
    for name in KEY_FILES {
        let bytes = std::fs::read(data_dir.join(name))
            .with_context(|| format!("reading {}", data_dir.join(name).display()))?;
        write_private(&to.join(name), &bytes)?;
        keys.push(FileSum {
            name: name.into(),
            sha256: sha256_hex(&bytes),
        });
    }
    let manifest = Manifest {
        format: 1,
        taken_at_ms: now_ms(),
        db: FileSum {
            name: DB_FILE.into(),
            sha256: summary.sha256.clone(),
        },
        keys,
        entries: summary.entries,
    };
    write_private(
        &to.join(MANIFEST),
        &serde_json::to_vec_pretty(&manifest).expect("the manifest serialises"),
    )?;
    println!(
        "backed up {} records ({} bytes, sha256 {}) and {} key files to {}",
        summary.entries,
        summary.bytes,
        summary.sha256,
        KEY_FILES.len(),
        to.display()
    );
    Ok(())
}

/// Have the running gateway copy its database, then move the copy to `copy`.
async fn ask_the_gateway(
    data_dir: &Path,
    copy: &Path,
    online: Online,
) -> anyhow::Result<BackupSummary> {
    let key_file = online
        .key_file
        .unwrap_or_else(|| data_dir.join("admin-key.txt"));
    let key = super::admin::admin_key(Some(&key_file))?;
    let client = AdminClient::new(&online.url, &key)?;
    eprintln!(
        "a gateway is running on {}: asking it at {} for a copy",
        data_dir.display(),
        online.url
    );
    let answer = client.post("/v1/admin/backups", None, None).await?;
    let made = PathBuf::from(
        answer.body["file"]
            .as_str()
            .context("the gateway's answer names no file")?,
    );
    // Only a copy in this data directory's backups folder is taken: the answer came
    // over the network and must not name any other file to move.
    let backups = data_dir.join("backups").canonicalize()?;
    let made = made
        .canonicalize()
        .with_context(|| format!("finding {}", made.display()))?;
    if made.parent() != Some(backups.as_path()) {
        anyhow::bail!(
            "the gateway at {} wrote its copy to {}, not under {}: is it the gateway of this data directory?",
            online.url,
            made.display(),
            backups.display()
        );
    }
    if std::fs::rename(&made, copy).is_err() {
        std::fs::copy(&made, copy).with_context(|| format!("copying {}", made.display()))?;
        std::fs::remove_file(&made)?;
    }
    let sha256 = simgate::store::backup::verify(copy)?;
    let expected = answer.body["sha256"].as_str().unwrap_or_default();
    if sha256 != expected {
        anyhow::bail!("the copy's SHA-256 is {sha256}, the gateway said {expected}");
    }
    Ok(BackupSummary {
        trees: answer.body["trees"].as_u64().unwrap_or(0) as usize,
        entries: answer.body["entries"].as_u64().unwrap_or(0),
        bytes: answer.body["bytes"].as_u64().unwrap_or(0),
        sha256,
    })
}

/// Restore the backup folder `from` into `data_dir`, which must hold no gateway yet.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(from.join(MANIFEST))
            .with_context(|| format!("reading {}", from.join(MANIFEST).display()))?,
    )
    .with_context(|| format!("{} is not a backup manifest", from.join(MANIFEST).display()))?;
    if manifest.format != 1 {
        anyhow::bail!(
            "backup format {} is not one this gateway reads",
            manifest.format
        );
    }
    for name in KEY_FILES.iter().chain([&"db"]) {
        if data_dir.join(name).exists() {
            anyhow::bail!(
                "{} already holds {name}: restore into a new data directory",
                data_dir.display()
            );
        }
    }
    // Every file is checked before anything is written.
    let mut keys = Vec::new();
    for name in KEY_FILES {
        let sum = manifest
            .keys
            .iter()
            .find(|k| k.name == name)
            .with_context(|| format!("the manifest names no {name}"))?;
        let bytes = std::fs::read(from.join(name))?;
        if sha256_hex(&bytes) != sum.sha256 {
            anyhow::bail!("{name} does not match the manifest: the backup was changed");
        }
        keys.push((name, bytes));
    }
    let db_copy = from.join(DB_FILE);
    if simgate::store::backup::verify(&db_copy)? != manifest.db.sha256 {
        anyhow::bail!("{DB_FILE} does not match the manifest: the backup was changed");
    }
    create_private_dir(data_dir).or_else(|e| if data_dir.is_dir() { Ok(()) } else { Err(e) })?;
    let summary = simgate::store::backup::import(&db_copy, &data_dir.join("db"))?;
    for (name, bytes) in keys {
        write_private(&data_dir.join(name), &bytes)?;
    }
    println!(
        "restored {} records and {} key files into {}; start it with `simgate serve --data-dir {}`",
        summary.entries,
        KEY_FILES.len(),
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

/// A new directory only its owner may enter.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| {
        format!(
            "creating {} (a backup goes into a new folder)",
            dir.display()
        )
    })
}

/// Write a new file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = super::secret_file::create(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
