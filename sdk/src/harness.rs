//! Test a built plugin from `cargo test`, in the gateway's own runtime.
//!
//! The harness loads a `.wasm` component exactly as the gateway does — same engine
//! settings, same linker, same grants logic, same limits and fault classification, same
//! `describe` smoke test — and lets a test call every export synchronously. Nothing of the
//! host is mocked; only the network can be replaced, by a [`RecordingEgress`] that answers
//! outbound requests from a route table *after* the host's egress policy allowed them and
//! filled in their `${secret:NAME}` placeholders. A request the policy refuses never
//! reaches it.
//!
//! ```no_run
//! use simgate_sdk::harness::{Harness, ProvisionOutcome, RecordingEgress};
//!
//! let wasm = Harness::build_crate(".").expect("plugin builds");
//! let egress = RecordingEgress::new()
//!     .respond_json("POST", "https://api.acme.test/v1/orders", 200, &serde_json::json!({"iccid": "8999..."}));
//! let acme = Harness::new("plugin.toml", wasm)
//!     .grant_all_requested()
//!     .secret("ACME_TOKEN", "test-token")
//!     .egress(egress.clone())
//!     .load()
//!     .expect("plugin loads");
//! let outcome = acme.provision("ord_1", "ACME-JP-5GB", 1).unwrap();
//! assert!(matches!(outcome, ProvisionOutcome::Delivered(_)));
//! assert_eq!(egress.requests()[0].header("authorization"), Some("Bearer test-token"));
//! ```
//!
//! The types here are the *host's* view of a call ([`SupplierError`], [`ProvisionOutcome`],
//! ...), after the host has converted and checked the plugin's answer: they are what the
//! gateway would act on. They share names with the WIT types at the crate root, so import
//! them from this module.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use simgate_runtime::egress::EgressTransport;
use simgate_runtime::manifest::sha256_hex;
use simgate_runtime::{LoadContext, LoadedPlugin, Manifest, PluginEngine, SecretStore};

pub use simgate_runtime::egress::{EgressRequest, EgressResponse};
pub use simgate_runtime::limits::{LimitOverrides, PluginLimits};
pub use simgate_runtime::supplier::{
    DataAllowance, EsimProfile, FaultKind, Feature, Money, PlanState, ProfileState,
    ProvisionOutcome, ProvisionRequest, Supplier, SupplierError, SupplierInfo, SupplierProduct,
    SupplierResult, Usage,
};
pub use simgate_runtime::{Grant, Grants, LoadError};

/// How to load one plugin: its manifest, its component, and what the operator grants it.
#[derive(Debug, Clone)]
pub struct Harness {
    manifest_dir: PathBuf,
    wasm: PathBuf,
    grant_all_requested: bool,
    grant: Grant,
    secrets: Vec<(String, String)>,
    egress: Option<RecordingEgress>,
}

impl Harness {
    /// A plugin whose manifest is `manifest` (a `plugin.toml`, or the folder holding one)
    /// and whose component is `wasm`. By default nothing is granted, as in a fresh gateway.
    ///
    /// The manifest need not carry a `sha256` (a source `plugin.toml` does not); if it does,
    /// it must match `wasm`, as the gateway checks.
    pub fn new(manifest: impl AsRef<Path>, wasm: impl AsRef<Path>) -> Harness {
        let manifest = manifest.as_ref();
        let manifest_dir = if manifest.is_dir() {
            manifest.to_owned()
        } else {
            let parent = manifest.parent().unwrap_or(Path::new(""));
            if parent.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                parent.to_owned()
            }
        };
        Harness {
            manifest_dir,
            wasm: wasm.as_ref().to_owned(),
            grant_all_requested: false,
            grant: Grant::default(),
            secrets: Vec::new(),
            egress: None,
        }
    }

    /// Build the plugin crate in `crate_dir` for `wasm32-wasip2` in release mode and return
    /// the path of its component. Blocking; cargo's progress goes to stderr.
    ///
    /// The build uses its own target directory, `<crate_dir>/target/harness`, and none of
    /// the calling cargo's target or flag variables: a nested cargo sharing the outer build's
    /// target directory waits forever on its lock.
    pub fn build_crate(crate_dir: impl AsRef<Path>) -> std::io::Result<PathBuf> {
        let crate_dir = crate_dir.as_ref();
        let manifest = crate_dir.join("Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .args(["--message-format", "json-render-diagnostics"])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(crate_dir.join("target/harness"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_PRIMARY_PACKAGE")
            .stderr(Stdio::inherit())
            .output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "cargo build of {} for wasm32-wasip2 failed (see the output above); if the \
                 target is missing, run `rustup target add wasm32-wasip2`",
                manifest.display()
            )));
        }
        // The component is the `.wasm` artifact of the crate itself (not of a dependency).
        let manifest = manifest.canonicalize()?;
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
            .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f.as_str().map(PathBuf::from))
            .find(|f| f.extension().is_some_and(|e| e == "wasm"))
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "cargo built no .wasm for {}: is it a `crate-type = [\"cdylib\"]` library?",
                    manifest.display()
                ))
            })
    }

    /// Grant exactly what `plugin.toml` requests under `[requests]`: its outbound hosts and
    /// its secret names, each secret bound to every requested host. (Config values come
    /// from [`config`](Self::config).)
    pub fn grant_all_requested(mut self) -> Harness {
        self.grant_all_requested = true;
        self
    }

    /// Use `grant` as the operator's grant, as if written under `[plugins.ID]` in
    /// `grants.toml`: to test what the plugin does when something is not granted. Replaces
    /// everything granted so far, [`grant_all_requested`](Self::grant_all_requested) included.
    pub fn grant(mut self, grant: Grant) -> Harness {
        self.grant = grant;
        self.grant_all_requested = false;
        self
    }

    /// Set secret `name` to `value`, as in the operator's `secrets.toml`. The plugin can use
    /// it only if the secret is also granted.
    pub fn secret(mut self, name: &str, value: &str) -> Harness {
        self.secrets.push((name.into(), value.into()));
        self
    }

    /// Grant config `key` with `value`. The plugin sees it only if its `plugin.toml`
    /// requests the key under `[requests] config`.
    pub fn config(mut self, key: &str, value: &str) -> Harness {
        self.grant.config.insert(key.into(), value.into());
        self
    }

    /// Lower the host's limits for this plugin, as an operator's `[plugins.ID.limits]` does.
    pub fn limits(mut self, limits: LimitOverrides) -> Harness {
        self.grant.limits = limits;
        self
    }

    /// Answer allowed outbound requests from `egress` instead of the network. Without it,
    /// allowed requests go to the network, under the same checks as in the gateway.
    pub fn egress(mut self, egress: RecordingEgress) -> Harness {
        self.egress = Some(egress);
        self
    }

    /// Load the plugin: read the manifest and component, compile, link against the
    /// effective grants, and run the `describe` smoke test, as the gateway does.
    pub fn load(&self) -> Result<Loaded, LoadError> {
        let manifest = Manifest::read(&self.manifest_dir)?;
        let wasm = std::fs::read(&self.wasm).map_err(|source| LoadError::Io {
            path: self.wasm.clone(),
            source,
        })?;
        let sha256 = sha256_hex(&wasm);
        manifest.check_digest(&self.wasm, &sha256, false)?;

        let mut grant = self.grant.clone();
        if self.grant_all_requested {
            grant.outbound = manifest.requests.outbound.clone();
            grant.secrets = manifest.requests.secrets.clone();
            // As an operator who trusts every requested host with every requested secret.
            grant.secret_hosts = manifest
                .requests
                .secrets
                .iter()
                .map(|name| (name.clone(), manifest.requests.outbound.clone()))
                .collect();
        }
        let mut grants = Grants::default();
        grants.plugins.insert(manifest.id.clone(), grant);
        let mut secrets = SecretStore::default();
        for (name, value) in &self.secrets {
            secrets.insert(&manifest.id, name, value);
        }
        let cx = LoadContext {
            kv: &Default::default(),
            tokens: &Default::default(),
            engine: engine(),
            grants: &grants,
            secrets: &secrets,
            limits: PluginLimits::default(),
            require_digest: false,
            transport: self
                .egress
                .clone()
                .map(|e| Arc::new(e) as Arc<dyn EgressTransport>),
        };
        let plugin = LoadedPlugin::from_parts(manifest, &wasm, sha256, &cx)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime for the harness");
        Ok(Loaded {
            plugin: Arc::new(plugin),
            runtime,
        })
    }
}

/// One wasmtime engine for every harness in the process, as the gateway has one: engines
/// are expensive (each reserves the pooling allocator's address space and a ticker thread).
fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new(None).expect("creating the wasmtime engine"))
}

/// A loaded plugin. Each method runs one call to completion in a fresh instance, under all
/// the host's limits, exactly as the gateway would make it.
pub struct Loaded {
    plugin: Arc<LoadedPlugin>,
    runtime: tokio::runtime::Runtime,
}

impl Loaded {
    /// What `describe` answered at load (the smoke test).
    pub fn info(&self) -> &SupplierInfo {
        self.plugin.info()
    }

    /// Call `describe` again.
    pub fn describe(&self) -> SupplierResult<SupplierInfo> {
        self.block_on(self.plugin.describe())
    }

    /// Call `list-products`.
    pub fn list_products(&self) -> SupplierResult<Vec<SupplierProduct>> {
        self.block_on(self.plugin.list_products())
    }

    /// Call `provision` for `quantity` eSIMs of `sku` on order `order_ref`.
    pub fn provision(
        &self,
        order_ref: &str,
        sku: &str,
        quantity: u32,
    ) -> SupplierResult<ProvisionOutcome> {
        self.block_on(self.plugin.provision(ProvisionRequest {
            order_ref: order_ref.into(),
            sku: sku.into(),
            quantity,
        }))
    }

    /// Call `poll` for an order `provision` answered with `Pending(supplier_ref)`.
    pub fn poll(&self, order_ref: &str, supplier_ref: &str) -> SupplierResult<ProvisionOutcome> {
        self.block_on(self.plugin.poll(order_ref.into(), supplier_ref.into()))
    }

    /// Call `usage` for `iccid`.
    pub fn usage(&self, iccid: &str) -> SupplierResult<Usage> {
        self.block_on(self.plugin.usage(iccid.into()))
    }

    /// Call `top-up`: add a plan of `sku` to `iccid`.
    pub fn top_up(&self, order_ref: &str, iccid: &str, sku: &str) -> SupplierResult<String> {
        self.block_on(
            self.plugin
                .top_up(order_ref.into(), iccid.into(), sku.into()),
        )
    }

    /// Call `cancel` for `iccid`.
    pub fn cancel(&self, order_ref: &str, iccid: &str) -> SupplierResult<()> {
        self.block_on(self.plugin.cancel(order_ref.into(), iccid.into()))
    }

    /// The plugin as the gateway's domain sees it, for async tests.
    pub fn supplier(&self) -> Arc<dyn Supplier> {
        self.plugin.clone()
    }

    /// The loaded plugin itself: effective capabilities and limits (`shared()`), call
    /// counters (`stats`).
    pub fn plugin(&self) -> &LoadedPlugin {
        &self.plugin
    }

    /// Run a call on the harness's runtime. Inside another runtime (a `#[tokio::test]`)
    /// blocking it would panic, so the call then runs on a plain thread.
    fn block_on<T: Send>(&self, call: impl Future<Output = T> + Send) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.runtime.block_on(call))
                    .join()
                    .expect("harness call panicked")
            })
        } else {
            self.runtime.block_on(call)
        }
    }
}

/// Answers a plugin's allowed outbound requests from a route table and records each one,
/// as it would have gone on the wire (secrets filled in). Cheap to clone: clones share the
/// table and the record, so keep one to read [`requests`](Self::requests) after the calls.
#[derive(Debug, Clone, Default)]
pub struct RecordingEgress {
    inner: Arc<Mutex<Recording>>,
}

#[derive(Debug, Default)]
struct Recording {
    routes: Vec<Route>,
    requests: Vec<EgressRequest>,
}

#[derive(Debug)]
struct Route {
    method: String,
    url_prefix: String,
    response: EgressResponse,
}

impl RecordingEgress {
    /// An empty table: every request is answered `404 Not Found` with an empty body.
    pub fn new() -> RecordingEgress {
        RecordingEgress::default()
    }

    /// Answer `method` (case-insensitive) requests whose URL starts with `url_prefix` with
    /// `status` and `body`. When several routes match, the first added wins.
    pub fn respond(
        self,
        method: &str,
        url_prefix: &str,
        status: u16,
        body: impl Into<Vec<u8>>,
    ) -> RecordingEgress {
        self.route(method, url_prefix, status, Vec::new(), body.into())
    }

    /// Like [`respond`](Self::respond), with `value` as a JSON body and
    /// `content-type: application/json`.
    pub fn respond_json<T: serde::Serialize + ?Sized>(
        self,
        method: &str,
        url_prefix: &str,
        status: u16,
        value: &T,
    ) -> RecordingEgress {
        let body = serde_json::to_vec(value).expect("serialising a route's JSON body");
        let headers = vec![("content-type".into(), "application/json".into())];
        self.route(method, url_prefix, status, headers, body)
    }

    fn route(
        self,
        method: &str,
        url_prefix: &str,
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> RecordingEgress {
        self.lock().routes.push(Route {
            method: method.to_ascii_uppercase(),
            url_prefix: url_prefix.into(),
            response: EgressResponse {
                status,
                headers,
                body,
            },
        });
        self
    }

    /// Every request that reached the table so far, in order.
    pub fn requests(&self) -> Vec<EgressRequest> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EgressTransport for RecordingEgress {
    fn send(
        &self,
        req: EgressRequest,
    ) -> simgate_runtime::supplier::BoxFuture<'static, Result<EgressResponse, String>> {
        let mut recording = self.lock();
        let response = recording
            .routes
            .iter()
            .find(|r| {
                r.method.eq_ignore_ascii_case(&req.method) && req.url.starts_with(&r.url_prefix)
            })
            .map(|r| r.response.clone())
            .unwrap_or(EgressResponse {
                status: 404,
                headers: Vec::new(),
                body: Vec::new(),
            });
        recording.requests.push(req);
        Box::pin(async move { Ok(response) })
    }
}
