//! `simgate plugin build`: build a plugin crate for `wasm32-wasip2` and pack it into a
//! plugins folder in one step, so an integrator never copies a `.wasm` path by hand.
//!
//! Cargo is run with `--message-format=json-render-diagnostics`: its diagnostics reach the
//! terminal as usual, and the component it wrote is read from its `compiler-artifact`
//! messages, wherever the target directory is (a workspace's, `CARGO_TARGET_DIR`...).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Build the crate in `dir` (holding `Cargo.toml` and `plugin.toml`) in release mode for
/// `wasm32-wasip2`, then pack the component into `out` as `simgate plugin pack` does.
pub fn run(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let manifest = dir.join("plugin.toml");
    let cargo_toml = dir.join("Cargo.toml");
    for file in [&manifest, &cargo_toml] {
        if !file.is_file() {
            bail!(
                "{} is missing: is {} a plugin crate?",
                file.display(),
                dir.display()
            );
        }
    }
    let wasm = build(&cargo_toml)?;
    super::pack::run(&manifest, &wasm, out)
}

/// `cargo build --release --target wasm32-wasip2` of `cargo_toml`'s package; the `.wasm`
/// of its `cdylib`.
fn build(cargo_toml: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(cargo_toml)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo (is a Rust toolchain installed?)")?;
    let wanted = cargo_toml
        .canonicalize()
        .with_context(|| format!("reading {}", cargo_toml.display()))?;
    let mut found = None;
    let stdout = child.stdout.take().context("cargo's output")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        if let Some(wasm) = component_of(&line, &wanted) {
            found = Some(wasm);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!(
            "cargo build failed ({status}); if the target is missing, run \
             `rustup target add wasm32-wasip2`"
        );
    }
    found.with_context(|| {
        format!(
            "cargo built no .wasm for {}: the crate needs `crate-type = [\"cdylib\"]` under [lib]",
            cargo_toml.display()
        )
    })
}

/// The `.wasm` a `compiler-artifact` message reports for the package at `cargo_toml`.
fn component_of(line: &str, cargo_toml: &Path) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" {
        return None;
    }
    let manifest = Path::new(msg["manifest_path"].as_str()?)
        .canonicalize()
        .ok()?;
    if manifest != cargo_toml {
        return None;
    }
    let is_cdylib = msg["target"]["kind"]
        .as_array()?
        .iter()
        .any(|k| k == "cdylib");
    if !is_cdylib {
        return None;
    }
    msg["filenames"]
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_is_read_from_the_packages_cdylib_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let cargo_toml = dir.path().join("Cargo.toml");
        std::fs::write(&cargo_toml, "").unwrap();
        let cargo_toml = cargo_toml.canonicalize().unwrap();
        let line = |manifest: &Path, kind: &str, file: &str| {
            serde_json::json!({
                "reason": "compiler-artifact",
                "manifest_path": manifest,
                "target": {"kind": [kind]},
                "filenames": [file],
            })
            .to_string()
        };
        assert_eq!(
            component_of(&line(&cargo_toml, "cdylib", "/t/x.wasm"), &cargo_toml),
            Some(PathBuf::from("/t/x.wasm"))
        );
        assert_eq!(
            component_of(&line(&cargo_toml, "lib", "/t/libx.rlib"), &cargo_toml),
            None,
            "not the component"
        );
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "").unwrap();
        assert_eq!(
            component_of(&line(&other, "cdylib", "/t/dep.wasm"), &cargo_toml),
            None,
            "a dependency's"
        );
        assert_eq!(component_of("not json", &cargo_toml), None);
    }
}
