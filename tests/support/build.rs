//! Build every guest plugin (plugins/ is its own workspace) for wasm32-wasip2 and tell the
//! tests where the components are.
//!
//! The nested cargo gets its own target dir under the shared `target/` (`target/wasm`) and
//! none of the outer build's target/flags variables: sharing the outer dir and profile
//! deadlocks on cargo's build lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let plugins = root.join("plugins");
    let shared_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"));
    let target_dir = shared_target.join("wasm");
    for watched in ["plugins", "sdk/src", "sdk/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .status()
        .expect("running cargo for the plugins");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed; if the target is missing, run \
             `rustup target add wasm32-wasip2` (./dev test does this for you)"
        );
    }
    let out = target_dir.join("wasm32-wasip2/release");
    println!("cargo:rustc-env=SIMGATE_WASM_DIR={}", out.display());
    println!("cargo:rustc-env=SIMGATE_PLUGINS_SRC={}", plugins.display());
    // Where test tools that are no Rust crate (a Python virtualenv) are installed.
    println!(
        "cargo:rustc-env=SIMGATE_TARGET_DIR={}",
        shared_target.display()
    );
}
