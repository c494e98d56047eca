//! Backups of a sled store: every tree, key and value, copied to one file while writes
//! wait, and read back into a new database.
//!
//! Writes to the store go through [`Tree`], which holds a shared *pause* lock for the one
//! sled operation it makes; [`export`] holds that lock alone while it reads. The copy is
//! therefore the database as it stood between two writes: exactly what a crash at that
//! moment would have left, which opening the restored store repairs like any crash (see
//! `sled_store`'s notes on commit records, the journal and checkpoints). Writes wait while
//! the copy is read, not while it is sent anywhere: the file is written to local disk.
//!
//! The file is ours, not sled's on-disk layout (which sled may rewrite while we copy):
//!
//! ```text
//! "SIMGATE-BACKUP-1\n"
//! then records:  1 u32:len name          a tree; the entries that follow are in it
//!                2 u32:len key u32:len value
//!                0 [32 bytes]            end: SHA-256 of every byte before the 0
//! ```
//!
//! Lengths are big-endian. A file cut short, or changed anywhere, fails the digest and is
//! refused before anything is written.

use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::domain::store::{BackupSummary, StoreError, StoreResult};

const MAGIC: &[u8] = b"SIMGATE-BACKUP-1\n";
const END: u8 = 0;
const TREE: u8 = 1;
const ENTRY: u8 = 2;

/// A sled tree whose writes wait while a backup is read. Reads go straight to sled.
#[derive(Clone)]
pub(super) struct Tree {
    inner: sled::Tree,
    pause: Arc<RwLock<()>>,
}

impl Deref for Tree {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.inner
    }
}

impl Tree {
    /// `tree`, pausing its writes on `pause`.
    pub(super) fn new(inner: sled::Tree, pause: Arc<RwLock<()>>) -> Tree {
        Tree { inner, pause }
    }

    fn writing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.pause.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn insert<K: AsRef<[u8]>, V: Into<sled::IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<sled::IVec>> {
        let _w = self.writing();
        self.inner.insert(key, value)
    }

    pub(super) fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<sled::IVec>> {
        let _w = self.writing();
        self.inner.remove(key)
    }

    pub(super) fn compare_and_swap<K, OV, NV>(
        &self,
        key: K,
        old: Option<OV>,
        new: Option<NV>,
    ) -> sled::Result<Result<(), sled::CompareAndSwapError>>
    where
        K: AsRef<[u8]>,
        OV: AsRef<[u8]>,
        NV: Into<sled::IVec>,
    {
        let _w = self.writing();
        self.inner.compare_and_swap(key, old, new)
    }

    pub(super) fn clear(&self) -> sled::Result<()> {
        let _w = self.writing();
        self.inner.clear()
    }
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    out: W,
    digest: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.digest.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn put_len(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| std::io::Error::other("a record is larger than 4 GiB"))?;
        self.put(&len.to_be_bytes())?;
        self.put(bytes)
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("backup file: {e}"))
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Copy every tree of `db` to a new file `to` (readable only by its owner), with writes
/// paused on `pause` while it reads.
pub(super) fn export(db: &sled::Db, pause: &RwLock<()>, to: &Path) -> StoreResult<BackupSummary> {
    let file = create_private(to)?;
    let mut out = Hashing {
        out: BufWriter::with_capacity(1 << 20, file),
        digest: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    let mut summary = BackupSummary::default();
    out.put(MAGIC).map_err(io)?;
    {
        let _paused = pause.write().unwrap_or_else(|p| p.into_inner());
        for name in db.tree_names() {
            let tree = db.open_tree(&name).map_err(backend)?;
            out.put(&[TREE]).map_err(io)?;
            out.put_len(&name).map_err(io)?;
            summary.trees += 1;
            for kv in tree.iter() {
                let (k, v) = kv.map_err(backend)?;
                out.put(&[ENTRY]).map_err(io)?;
                out.put_len(&k).map_err(io)?;
                out.put_len(&v).map_err(io)?;
                summary.entries += 1;
            }
        }
    }
    out.put(&[END]).map_err(io)?;
    let digest = out.digest.clone().finish();
    // The summary names the whole file's digest, as `sha256sum` prints it.
    let mut whole = out.digest;
    whole.update(digest.as_ref());
    let mut file = out.out.into_inner().map_err(|e| io(e.into_error()))?;
    file.write_all(digest.as_ref()).map_err(io)?;
    file.sync_all().map_err(io)?;
    summary.bytes = out.bytes + digest.as_ref().len() as u64;
    summary.sha256 = hex(whole.finish().as_ref());
    Ok(summary)
}

/// Read a backup into a new database at `db_dir` (which must not exist). The whole file
/// is checked against its digest first.
pub fn import(from: &Path, db_dir: &Path) -> StoreResult<BackupSummary> {
    let sha256 = verify(from)?;
    if db_dir.exists() {
        return Err(StoreError::Backend(format!(
            "{} exists: restore into a new data directory",
            db_dir.display()
        )));
    }
    let db = sled::Config::new()
        .path(db_dir)
        .flush_every_ms(None)
        .open()
        .map_err(backend)?;
    let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(from).map_err(io)?);
    let mut magic = vec![0; MAGIC.len()];
    input.read_exact(&mut magic).map_err(io)?;
    let mut summary = BackupSummary {
        sha256,
        bytes: std::fs::metadata(from).map_err(io)?.len(),
        ..Default::default()
    };
    let mut tree: Option<sled::Tree> = None;
    loop {
        match read_u8(&mut input)? {
            END => break,
            TREE => {
                let name = read_len(&mut input)?;
                tree = Some(db.open_tree(name).map_err(backend)?);
                summary.trees += 1;
            }
            ENTRY => {
                let (k, v) = (read_len(&mut input)?, read_len(&mut input)?);
                let Some(tree) = &tree else {
                    return Err(malformed("an entry before any tree"));
                };
                tree.insert(k, v).map_err(backend)?;
                summary.entries += 1;
            }
            _ => return Err(malformed("an unknown record")),
        }
    }
    db.flush().map_err(backend)?;
    Ok(summary)
}

/// Check a backup file's framing and digest; returns the file's SHA-256 (hex).
pub fn verify(from: &Path) -> StoreResult<String> {
    let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(from).map_err(io)?);
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
    let mut magic = vec![0; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| malformed("too short"))?;
    if magic != MAGIC {
        return Err(malformed("not a simgate backup (or of another version)"));
    }
    digest.update(&magic);
    whole.update(&magic);
    let mut feed = |bytes: &[u8]| {
        digest.update(bytes);
        whole.update(bytes);
    };
    loop {
        let tag = read_u8(&mut input)?;
        feed(&[tag]);
        match tag {
            END => break,
            TREE => skip_len(&mut input, &mut feed)?,
            ENTRY => {
                skip_len(&mut input, &mut feed)?;
                skip_len(&mut input, &mut feed)?;
            }
            _ => return Err(malformed("an unknown record")),
        }
    }
    let mut stored = [0u8; 32];
    input
        .read_exact(&mut stored)
        .map_err(|_| malformed("cut short before its digest"))?;
    let mut rest = [0u8; 1];
    if input.read(&mut rest).map_err(io)? != 0 {
        return Err(malformed("bytes after its digest"));
    }
    let computed = digest.finish();
    // An integrity check, not a secret: a plain comparison is fine.
    if computed.as_ref() != stored {
        return Err(malformed(
            "its digest does not match: the file was changed or cut",
        ));
    }
    whole.update(&stored);
    Ok(hex(whole.finish().as_ref()))
}

fn malformed(why: &str) -> StoreError {
    StoreError::Decode(format!("backup file: {why}"))
}

fn read_u8(input: &mut impl Read) -> StoreResult<u8> {
    let mut b = [0u8; 1];
    input
        .read_exact(&mut b)
        .map_err(|_| malformed("cut short"))?;
    Ok(b[0])
}

fn read_u32(input: &mut impl Read) -> StoreResult<u32> {
    let mut b = [0u8; 4];
    input
        .read_exact(&mut b)
        .map_err(|_| malformed("cut short"))?;
    Ok(u32::from_be_bytes(b))
}

/// A length-prefixed field.
fn read_len(input: &mut impl Read) -> StoreResult<Vec<u8>> {
    let len = read_u32(input)? as u64;
    let mut out = Vec::new();
    // Read through `take`: a forged length cannot make us allocate more than the file has.
    input.take(len).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 != len {
        return Err(malformed("cut short"));
    }
    Ok(out)
}

/// Read past a length-prefixed field, hashing it.
fn skip_len(input: &mut impl Read, feed: &mut impl FnMut(&[u8])) -> StoreResult<()> {
    let len = read_u32(input)?;
    feed(&len.to_be_bytes());
    let mut left = len as usize;
    let mut buf = [0u8; 8192];
    while left > 0 {
        let want = left.min(buf.len());
        let n = input.read(&mut buf[..want]).map_err(io)?;
        if n == 0 {
            return Err(malformed("cut short"));
        }
        feed(&buf[..n]);
        left -= n;
    }
    Ok(())
}

/// A new file only its owner can read; an existing one is never overwritten.
fn create_private(path: &Path) -> StoreResult<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| StoreError::Backend(format!("creating {}: {e}", path.display())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entries<'a> = &'a [(&'a [u8], &'a [u8])];

    fn db_with(dir: &Path, trees: &[(&str, Entries<'_>)]) -> sled::Db {
        let db = sled::open(dir).unwrap();
        for (name, entries) in trees {
            let t = db.open_tree(name).unwrap();
            for (k, v) in *entries {
                t.insert(k, *v).unwrap();
            }
        }
        db
    }

    #[test]
    fn a_backup_reads_back_every_tree_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with(
            &dir.path().join("db"),
            &[
                ("ledger", &[(b"a", b"1"), (b"b", b"")]),
                ("orders", &[(b"\x00\xff", &[7u8; 5000])]),
                ("empty", &[]),
            ],
        );
        let file = dir.path().join("backup");
        let made = export(&db, &RwLock::new(()), &file).unwrap();
        assert_eq!(made.entries, 3);
        let restored = dir.path().join("restored");
        let read = import(&file, &restored).unwrap();
        assert_eq!(read, made);
        let back = sled::open(&restored).unwrap();
        for name in db.tree_names() {
            let (a, b) = (db.open_tree(&name).unwrap(), back.open_tree(&name).unwrap());
            let a: Vec<_> = a.iter().map(Result::unwrap).collect();
            let b: Vec<_> = b.iter().map(Result::unwrap).collect();
            assert_eq!(a, b, "tree {}", String::from_utf8_lossy(&name));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable only by its owner");
        }
        assert!(
            export(&db, &RwLock::new(()), &file).is_err(),
            "an existing file is not overwritten"
        );
    }

    #[test]
    fn a_changed_or_cut_backup_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with(&dir.path().join("db"), &[("t", &[(b"k", b"value")])]);
        let file = dir.path().join("backup");
        export(&db, &RwLock::new(()), &file).unwrap();
        let good = std::fs::read(&file).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![
            good[..good.len() - 1].to_vec(),
            good[..MAGIC.len() + 3].to_vec(),
            [good.clone(), vec![0]].concat(),
            Vec::new(),
        ];
        for i in [MAGIC.len() + 1, good.len() - 40, good.len() - 1] {
            let mut changed = good.clone();
            changed[i] ^= 1;
            cases.push(changed);
        }
        // A forged length far past the end of the file.
        let mut huge = good.clone();
        huge[MAGIC.len() + 1..MAGIC.len() + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(huge);
        for (n, bad) in cases.iter().enumerate() {
            let path = dir.path().join(format!("bad{n}"));
            std::fs::write(&path, bad).unwrap();
            let target = dir.path().join(format!("restored{n}"));
            assert!(import(&path, &target).is_err(), "case {n} was accepted");
            assert!(!target.exists(), "case {n} wrote a database");
        }
    }

    #[test]
    fn writes_wait_while_a_backup_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let pause = Arc::new(RwLock::new(()));
        let tree = Tree::new(db.open_tree("t").unwrap(), pause.clone());
        let held = pause.write().unwrap();
        let writer = {
            let tree = tree.clone();
            std::thread::spawn(move || tree.insert(b"k", b"v".to_vec()).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(tree.get(b"k").unwrap().is_none(), "the write waited");
        drop(held);
        writer.join().unwrap();
        assert!(tree.get(b"k").unwrap().is_some());
    }
}
