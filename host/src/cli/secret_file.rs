//! Files that hold a secret (an API key): created for their owner alone, never over an
//! existing file.
//!
//! The file is created with mode 0600 in the same `open` call (`O_CREAT|O_EXCL`), so it is
//! never readable by anyone else, not even between creating and `chmod`; an existing file
//! is refused rather than replaced, so a key nobody has copied yet cannot be lost.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Create `path` (which must not exist) readable only by its owner.
pub fn create(path: &Path) -> anyhow::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} already exists; move it somewhere safe (or delete it) and try again: \
             simgate never overwrites a key file",
            path.display()
        ),
        _ => anyhow::Error::new(e).context(format!("creating {}", path.display())),
    })
}

/// Write `secret` and a newline to `file` and make it durable.
pub fn write(mut file: File, path: &Path, secret: &str) -> anyhow::Result<()> {
    file.write_all(secret.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_with(path: &Path, secret: &str) -> anyhow::Result<()> {
        write(create(path)?, path, secret)
    }

    #[test]
    fn a_secret_file_is_for_its_owner_only_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        create_with(&path, "sgk_live_x").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sgk_live_x\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = create_with(&path, "sgk_live_y").unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sgk_live_x\n");
    }
}
