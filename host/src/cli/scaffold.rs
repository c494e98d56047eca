//! `simgate plugin new NAME [--path DIR] [--sdk DIR]`: a plugin crate that builds, loads
//! into the gateway and passes its own tests as generated, for an integrator to fill in.
//!
//! The files come from `template/` (placeholders `{{name}}`, `{{crate}}`, `{{Type}}`,
//! `{{SKU}}`, `{{sdk}}`):
//!
//! | file | what |
//! |---|---|
//! | `Cargo.toml` | `cdylib`, `simgate-sdk` by absolute path, the small release profile plugins use |
//! | `src/lib.rs` | the five SDK traits: a two-product catalog and fake, deterministic `provision`, with native unit tests |
//! | `tests/harness.rs` | builds the component and runs it in the real gateway runtime with the SDK's test harness |
//! | `Cargo.lock` | a copy of the simgate tree's lock file, so the scaffold builds with the dependency versions simgate is tested with |
//! | `plugin.toml`, `README.md`, `.gitignore` | manifest (no capabilities requested), one line on build/test/deploy |

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use simgate::plugins::manifest::is_plugin_id;

const FILES: [(&str, &str); 6] = [
    ("Cargo.toml", include_str!("template/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("template/lib.rs.tmpl")),
    ("tests/harness.rs", include_str!("template/harness.rs.tmpl")),
    ("plugin.toml", include_str!("template/plugin.toml.tmpl")),
    ("README.md", include_str!("template/README.md.tmpl")),
    (".gitignore", include_str!("template/gitignore.tmpl")),
];

/// Names cargo refuses for a package, or that would shadow a standard crate.
const RESERVED: [&str; 8] = [
    "self",
    "super",
    "crate",
    "test",
    "std",
    "core",
    "alloc",
    "proc-macro",
];

/// The SDK of the source tree this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

/// Create plugin crate `name` in `path` (default `./NAME`).
pub fn run(name: &str, path: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<()> {
    if !is_plugin_id(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!(
            "plugin name {name:?} must start with a letter and use only a-z, 0-9 and '-' \
             (it is the plugin id, the folder name and the crate name)"
        );
    }
    if RESERVED.contains(&name) {
        bail!("plugin name {name:?} is reserved by cargo or Rust; pick another");
    }
    let dir = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = sdk.map(Path::to_path_buf).unwrap_or_else(default_sdk);
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the simgate SDK is not at {}; pass --sdk PATH/TO/simgate/sdk",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").exists() {
        bail!(
            "{} holds no Cargo.toml; pass --sdk PATH/TO/simgate/sdk",
            sdk.display()
        );
    }
    let sdk = sdk
        .to_str()
        .context("the SDK path is not valid UTF-8")?
        .to_string();
    for (file, template) in FILES {
        let target = dir.join(file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, render(template, name, &sdk))
            .with_context(|| format!("writing {}", target.display()))?;
    }
    // Start from the versions simgate itself is built and tested with (cargo prunes what the
    // plugin does not use); a fresh resolution could pick releases this toolchain cannot build.
    let lock = Path::new(&sdk).join("../Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, dir.join("Cargo.lock"))
            .with_context(|| format!("copying {}", lock.display()))?;
    }
    println!("created plugin {name} in {}", dir.display());
    println!("  cd {} && cargo test", dir.display());
    Ok(())
}

/// Fill in a template's placeholders.
fn render(template: &str, name: &str, sdk: &str) -> String {
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<String>()
        + "Supplier";
    // A TOML basic string (quotes and escapes) for the path.
    let sdk_toml = toml::Value::String(sdk.to_string()).to_string();
    template
        .replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{Type}}", &type_name)
        .replace("{{SKU}}", &name.to_ascii_uppercase())
        .replace("{{sdk}}", &sdk_toml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_names_that_compile() {
        let out = render(
            "{{Type}} {{crate}} {{SKU}} {{name}} {{sdk}}",
            "acme-2",
            "/x/sdk",
        );
        assert_eq!(out, "Acme2Supplier acme_2 ACME-2 acme-2 \"/x/sdk\"");
    }

    #[test]
    fn every_placeholder_in_the_templates_is_known() {
        for (file, template) in FILES {
            let out = render(template, "acme", "/x/sdk");
            assert!(!out.contains("{{"), "{file} has an unknown placeholder");
        }
    }
}
