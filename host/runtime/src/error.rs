//! Errors of the plugin runtime. Two kinds: a plugin package could not be loaded
//! ([`LoadError`]), or a call into a loaded plugin failed in the sandbox ([`CallError`]).
//! Both carry the plugin's identity so an operator reading a log line knows which plugin
//! and which version to look at.

use std::path::PathBuf;

use crate::supplier::FaultKind;

/// A plugin package could not be loaded. The previous version (if any) keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `plugin.toml` is missing fields or malformed.
    #[error("invalid manifest {path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The grants file is malformed.
    #[error("invalid grants file {path}: {message}")]
    Grants {
        /// The grants file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The component's digest differs from the manifest's `sha256`.
    #[error(
        "plugin {id}: {path} has sha256 {actual} but plugin.toml says {expected}; \
         the file is incomplete or not the one the manifest was made for"
    )]
    Digest {
        /// Plugin id.
        id: String,
        /// The component file.
        path: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the file.
        actual: String,
    },
    /// The manifest has no digest and the loader requires one.
    #[error("plugin {id}: plugin.toml has no sha256; package it with `simgate plugin pack`")]
    MissingDigest {
        /// Plugin id.
        id: String,
    },
    /// The folder name and the manifest id differ.
    #[error("plugin folder {folder:?} holds a manifest with id {id:?}; they must match")]
    FolderMismatch {
        /// The folder name.
        folder: String,
        /// The manifest id.
        id: String,
    },
    /// wasmtime could not compile the component (not a component, or invalid).
    #[error("plugin {id} {version}: not a valid WebAssembly component: {message}")]
    Compile {
        /// Plugin id.
        id: String,
        /// Plugin version.
        version: String,
        /// wasmtime's message.
        message: String,
    },
    /// The component imports something it was not granted or that the host does not offer.
    #[error("plugin {id} {version}: cannot link: {message}")]
    Link {
        /// Plugin id.
        id: String,
        /// Plugin version.
        version: String,
        /// What is missing and what to grant.
        message: String,
    },
    /// The smoke test (`describe`) failed or disagreed with the manifest.
    #[error("plugin {id} {version}: smoke test failed: {message}")]
    SmokeTest {
        /// Plugin id.
        id: String,
        /// Plugin version.
        version: String,
        /// What failed.
        message: String,
    },
}

/// A call into a loaded plugin failed in the sandbox: the plugin misbehaved, or the host
/// stopped it. The supplier's own answers (`supplier-error`) are not `CallError`s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin} {version}: {operation}: {kind}: {detail}")]
pub struct CallError {
    /// Plugin id.
    pub plugin: String,
    /// Plugin version.
    pub version: String,
    /// The export that was called, e.g. `provision`.
    pub operation: &'static str,
    /// What went wrong, for metrics, problem codes and retry decisions.
    pub kind: FaultKind,
    /// A human explanation (never contains secret values or personal data).
    pub detail: String,
}
