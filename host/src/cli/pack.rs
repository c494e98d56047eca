//! `simgate plugin pack`: make a deployable plugin folder from a built component: copy it
//! and write `plugin.toml` with its SHA-256, which the watcher requires.

use std::path::Path;

use anyhow::Context;

/// Pack `wasm` with the manifest at `manifest` into `out/<id>/`.
pub fn run(manifest: &Path, wasm: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut m: simgate::plugins::Manifest =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    m.sha256 = Some(simgate::plugins::manifest::sha256_hex(&bytes));
    let dir = out.join(&m.id);
    std::fs::create_dir_all(&dir)?;
    // Component first, manifest last: the watcher sees a complete package once the
    // manifest names the new digest.
    simgate::plugins::engine::write_atomically(&dir.join(&m.wasm), &bytes)?;
    simgate::plugins::engine::write_atomically(
        &dir.join("plugin.toml"),
        toml::to_string(&m)?.as_bytes(),
    )?;
    println!("packed {} {} into {}", m.id, m.version, dir.display());
    Ok(())
}
