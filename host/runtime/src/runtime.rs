//! A loaded plugin and the way every call into it runs:
//!
//! 1. wait for a concurrency slot (back-pressure; give up after `queue_timeout_ms`);
//! 2. a fresh store and instance from the pre-linked [`SupplierPre`] (no state survives a
//!    call, so nothing leaks between orders or resellers);
//! 3. run under the memory cap, the epoch-driven wall-clock budget and an outer timeout
//!    that also covers time spent waiting on egress;
//! 4. classify any failure ([`FaultKind`]) and check the output's size and shape before it
//!    reaches the domain.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Store, UpdateDeadline};

use crate::ekyc::{EkycRedirect, EkycRequest, EkycStatus, EkycUpdate, Inbound};
use crate::limits::PluginLimits;
use crate::supplier::*;

use super::bindings::v0_2::host;
use super::bindings::{Contract, v0_1, v0_2};
use super::egress::{EgressPolicy, EgressTransport, OutboundRule};
use super::engine::PluginEngine;
use super::error::{CallError, LoadError};
use super::kv::{PluginKv, PluginKvs};
use super::manifest::{Capabilities, Grants, Manifest, sha256_hex};
use super::oauth::{OAuthClients, TokenCaches};
use super::secrets::{Scrubber, SecretStore};
use super::state::PluginState;
use super::stats::PluginStats;

/// Extra time the outer timeout allows beyond the budget, so the epoch interrupt (which
/// reports a precise "deadline" fault) normally fires first.
const OUTER_TIMEOUT_GRACE: Duration = Duration::from_millis(250);

/// What every call of one plugin generation shares: identity, grants, limits.
#[derive(Debug)]
pub struct PluginShared {
    /// Plugin id.
    pub id: String,
    /// Plugin version.
    pub version: String,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// Effective limits.
    pub limits: PluginLimits,
    /// Effective capabilities.
    pub capabilities: Capabilities,
    /// Egress policy (rules and secret values).
    pub egress: Arc<EgressPolicy>,
    /// The contract version the component was built against.
    pub contract: Contract,
    /// The plugin's `state` store (0.2), shared by every generation of the plugin id.
    pub kv: Arc<PluginKv>,
}

/// The pre-linked component, of either contract version.
enum Pre {
    V0_1(v0_1::SupplierPre<PluginState>),
    V0_2(v0_2::SupplierPre<PluginState>),
}

/// One instance of the component, for one call.
pub(crate) enum Instance {
    V0_1(v0_1::Supplier),
    V0_2(v0_2::Supplier),
}

/// Call export `$iface.$f` on an instance of either version: a 0.2 instance gets `$arg`
/// as it is; a 0.1 instance gets it converted to the 0.1 type (`into`), or `as is` where
/// the type is the same in both (`$arg` prefixed with `same`), and its answer is converted
/// up to the 0.2 types with [`up`].
macro_rules! call_either {
    ($i:expr, $s:expr, $iface:ident . $f:ident ( $($arg:tt)* )) => {
        Box::pin(async move {
            match $i {
                Instance::V0_1(b) => up(b.$iface().$f($s, call_either!(@old $($arg)*)).await),
                Instance::V0_2(b) => b.$iface().$f($s, call_either!(@new $($arg)*)).await,
            }
        })
    };
    (@old same $arg:expr) => { &$arg };
    (@old $arg:expr) => { &$arg.into() };
    (@new same $arg:expr) => { &$arg };
    (@new $arg:expr) => { &$arg };
}

/// An inbound request as the contract's record.
fn wit_inbound(req: Inbound) -> host::types::Inbound {
    host::types::Inbound {
        method: req.method,
        path_and_query: req.path_and_query,
        headers: req.headers,
        body: req.body,
        source_address: req.source_address,
    }
}

/// A 0.1 export's answer as the 0.2 types the checks are written for.
fn up<T: Into<U>, U, E: Into<host::types::SupplierError>>(
    r: wasmtime::Result<Result<T, E>>,
) -> wasmtime::Result<Result<U, host::types::SupplierError>> {
    r.map(|r| r.map(Into::into).map_err(Into::into))
}

/// A plugin ready to be called.
pub struct LoadedPlugin {
    shared: Arc<PluginShared>,
    pre: Pre,
    /// Where the plugin's webhooks may come from (empty: anywhere).
    webhook_sources: Vec<ipnet::IpNet>,
    slots: Semaphore,
    info: SupplierInfo,
    /// Call counters for status and metrics, shared by every generation of the plugin id
    /// (see [`LoadedPlugin::count_into`]).
    pub stats: Arc<PluginStats>,
}

/// Everything needed to load a plugin besides its folder.
pub struct LoadContext<'a> {
    /// The engine.
    pub engine: &'a PluginEngine,
    /// The operator's grants.
    pub grants: &'a Grants,
    /// Secret values.
    pub secrets: &'a SecretStore,
    /// Host default limits.
    pub limits: PluginLimits,
    /// Refuse manifests without a `sha256` (true for the watched folder).
    pub require_digest: bool,
    /// Where allowed egress goes instead of the network: `None` in the gateway; the SDK
    /// test harness sets one to answer egress from a route table (policy checks still run).
    pub transport: Option<Arc<dyn EgressTransport>>,
    /// Every plugin's `state` store; a reload keeps the plugin's.
    pub kv: &'a PluginKvs,
    /// Every plugin's cached OAuth tokens; a reload keeps the plugin's.
    pub tokens: &'a TokenCaches,
}

impl LoadedPlugin {
    /// Load the plugin in `dir`: manifest, digest, compile (or cache), link against the
    /// effective grants, and a `describe` smoke test. Blocking: run it off the async runtime.
    pub fn load(dir: &Path, cx: &LoadContext<'_>) -> Result<LoadedPlugin, LoadError> {
        let manifest = Manifest::read(dir)?;
        if let Some(folder) = dir.file_name().and_then(|f| f.to_str())
            && folder != manifest.id
        {
            return Err(LoadError::FolderMismatch {
                folder: folder.to_string(),
                id: manifest.id.clone(),
            });
        }
        let wasm_path = manifest.wasm_path(dir);
        let wasm = std::fs::read(&wasm_path).map_err(|source| LoadError::Io {
            path: wasm_path.clone(),
            source,
        })?;
        let sha256 = sha256_hex(&wasm);
        manifest.check_digest(&wasm_path, &sha256, cx.require_digest)?;
        Self::from_parts(manifest, &wasm, sha256, cx)
    }

    /// Load from an already-read manifest and component.
    pub fn from_parts(
        manifest: Manifest,
        wasm: &[u8],
        sha256: String,
        cx: &LoadContext<'_>,
    ) -> Result<LoadedPlugin, LoadError> {
        let id = manifest.id.clone();
        let version = manifest.version.clone();
        let grant = cx.grants.plugins.get(&id);
        let capabilities = Capabilities::effective(&manifest.requests, grant);
        let limits = cx
            .limits
            .lowered_by(&manifest.limits)
            .lowered_by(&grant.map(|g| g.limits).unwrap_or_default());

        let component = cx
            .engine
            .compile(wasm, &sha256)
            .map_err(|e| LoadError::Compile {
                id: id.clone(),
                version: version.clone(),
                message: format!("{e:#}"),
            })?;
        let link_err = |message: String| LoadError::Link {
            id: id.clone(),
            version: version.clone(),
            message,
        };
        // Egress is linked for a plugin that requests outbound hosts, granted or not: the
        // policy refuses every destination not granted, so a plugin whose outbound requests
        // the operator did not grant still loads, and only calls that reach out fail
        // (`egress_denied`), as with an ungranted secret or config key.
        let requests_egress = !manifest.requests.outbound.is_empty();
        let contract = {
            let ty = component.component_type();
            let names: Vec<String> = ty
                .exports(cx.engine.engine())
                .map(|(name, _)| name.to_string())
                .collect();
            Contract::of_exports(names.iter().map(String::as_str)).ok_or_else(|| {
                link_err(
                    "the component exports neither the simgate:supplier@0.1.0 nor the \
                     simgate:supplier@0.2.0 world"
                        .to_string(),
                )
            })?
        };
        check_imports_granted(cx.engine, &component, requests_egress).map_err(link_err)?;
        let linker = build_linker(cx.engine, contract, requests_egress)
            .map_err(|e| link_err(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| link_err(format!("{e:#}")))?;
        let not_world = |e: wasmtime::Error| {
            link_err(format!(
                "the component does not export the simgate:supplier@{contract} world: {e:#}"
            ))
        };
        let pre = match contract {
            Contract::V0_1 => Pre::V0_1(v0_1::SupplierPre::new(instance_pre).map_err(not_world)?),
            Contract::V0_2 => Pre::V0_2(v0_2::SupplierPre::new(instance_pre).map_err(not_world)?),
        };

        let secrets = cx.secrets.for_plugin(&id, &capabilities.secrets);
        let rules = |list: &[String]| -> Vec<OutboundRule> {
            list.iter()
                .filter_map(|r| OutboundRule::parse(r).ok())
                .collect()
        };
        let egress = Arc::new(EgressPolicy {
            plugin: id.clone(),
            rules: rules(&capabilities.outbound),
            secret_hosts: capabilities
                .secret_hosts
                .iter()
                .map(|(name, hosts)| (name.clone(), rules(hosts)))
                .collect(),
            scrubber: Scrubber::new(secrets.values()),
            secrets,
            client: super::pool::client(
                capabilities.allow_private_addresses,
                Duration::from_millis(limits.egress_connect_timeout_ms),
                limits.egress_idle_per_host,
            ),
            max_response_bytes: limits.max_egress_response_bytes,
            transport: cx.transport.clone(),
            oauth: Arc::new(OAuthClients::new(&id, &capabilities.oauth, cx.tokens)),
            fill_bodies: contract >= Contract::V0_2,
        });
        let shared = Arc::new(PluginShared {
            id: id.clone(),
            version: version.clone(),
            sha256,
            limits,
            capabilities,
            egress,
            contract,
            kv: cx.kv.for_plugin(&id),
        });
        let webhook_sources = shared
            .capabilities
            .webhook_sources
            .iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        link_err(format!(
                            "webhook_sources: {} is not an IP address or CIDR block",
                            quote(s)
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut plugin = LoadedPlugin {
            webhook_sources,
            slots: Semaphore::new(limits.max_concurrency as usize),
            shared,
            pre,
            info: SupplierInfo {
                id: id.clone(),
                version: version.clone(),
                supplier: String::new(),
                features: Vec::new(),
            },
            stats: Arc::default(),
        };
        let smoke = |message: String| LoadError::SmokeTest {
            id: id.clone(),
            version: version.clone(),
            message,
        };
        let info = block_on_describe(&plugin).map_err(|e| smoke(e.to_string()))?;
        if info.id != id || info.version != version {
            return Err(smoke(format!(
                "describe() says {} {} but plugin.toml says {id} {version}",
                info.id, info.version
            )));
        }
        plugin.info = info;
        Ok(plugin)
    }

    /// Count this generation's calls into `stats` (the plugin id's counters, which outlive
    /// any one generation) instead of its own. The load's smoke test stays uncounted.
    pub fn count_into(mut self, stats: Arc<PluginStats>) -> LoadedPlugin {
        self.stats = stats;
        self
    }

    /// Identity, grants and limits.
    pub fn shared(&self) -> &Arc<PluginShared> {
        &self.shared
    }

    /// The budget one call's result is converted under.
    fn output_budget(&self) -> OutputBudget {
        OutputBudget::new(
            self.shared.limits.max_output_bytes,
            self.shared.egress.scrubber.clone(),
        )
    }

    /// Run one export in a fresh instance under all limits.
    async fn call<T: Send>(
        &self,
        operation: &'static str,
        f: impl for<'a> FnOnce(
            &'a Instance,
            &'a mut Store<PluginState>,
        )
            -> Pin<Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>>
        + Send,
    ) -> Result<(T, Arc<std::sync::Mutex<super::egress::EgressReport>>), CallError> {
        let fault = |kind: FaultKind, detail: String| CallError {
            plugin: self.shared.id.clone(),
            version: self.shared.version.clone(),
            operation,
            kind,
            detail,
        };
        let queue = Duration::from_millis(self.shared.limits.queue_timeout_ms);
        let _slot = match tokio::time::timeout(queue, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                let e = fault(
                    FaultKind::Overloaded,
                    format!("no free slot within {} ms", queue.as_millis()),
                );
                self.stats.record(Err(e.kind), Duration::ZERO);
                return Err(e);
            }
        };
        let _in_flight = self.stats.enter();
        let started = Instant::now();
        let budget = self.shared.limits.timeout();
        let engine = match &self.pre {
            Pre::V0_1(pre) => pre.engine(),
            Pre::V0_2(pre) => pre.engine(),
        };
        let mut store = Store::new(
            engine,
            PluginState::new(self.shared.clone(), started + budget),
        );
        store.limiter(|s| &mut s.limiter);
        // Yield to the executor every tick; interrupt once the budget is spent. A deadline
        // of 1 tick can fire at once (the ticker may be about to tick), hence the `+ 1`.
        store.set_epoch_deadline(1 + 1);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if Instant::now() >= state.deadline {
                state.deadline_hit = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let run = async {
            let instance = match &self.pre {
                Pre::V0_1(pre) => Instance::V0_1(pre.instantiate_async(&mut store).await?),
                Pre::V0_2(pre) => Instance::V0_2(pre.instantiate_async(&mut store).await?),
            };
            f(&instance, &mut store).await
        };
        let outcome = tokio::time::timeout(budget + OUTER_TIMEOUT_GRACE, run).await;
        let elapsed = started.elapsed();
        let result = match outcome {
            Err(_) => Err(fault(
                FaultKind::Deadline,
                format!("no answer within {} ms", budget.as_millis()),
            )),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let state = store.data();
                let (kind, detail) = if state.deadline_hit {
                    (
                        FaultKind::Deadline,
                        format!("interrupted after {} ms", budget.as_millis()),
                    )
                } else if error
                    .chain()
                    .any(|e| e.is::<wasmtime::component::ResourceTableError>())
                {
                    (
                        FaultKind::HostLimit,
                        format!(
                            "held more than {} host resources (HTTP fields, bodies, streams) at once",
                            self.shared.limits.max_host_resources
                        ),
                    )
                } else if state.limiter.memory_denied {
                    (
                        FaultKind::Memory,
                        format!(
                            "exceeded the {} MiB memory limit",
                            self.shared.limits.memory_mib
                        ),
                    )
                } else {
                    let stderr = state.stderr.contents();
                    let stderr = String::from_utf8_lossy(&stderr);
                    let stderr = stderr.trim();
                    // The trap itself, not wasmtime's multi-line backtrace.
                    let mut detail = match error.downcast_ref::<wasmtime::Trap>() {
                        Some(trap) => trap.to_string(),
                        None => error
                            .root_cause()
                            .to_string()
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    };
                    if !stderr.is_empty() {
                        detail.push_str(" | plugin stderr: ");
                        detail.push_str(&quote(&self.shared.egress.scrubber.text(stderr)));
                    }
                    (FaultKind::Trap, detail)
                };
                Err(fault(kind, detail))
            }
        };
        let egress = store.data().egress.clone();
        self.stats
            .record(result.as_ref().map(|_| ()).map_err(|e| e.kind), elapsed);
        if let Err(e) = &result {
            tracing::warn!(plugin = %e.plugin, version = %e.version, operation, kind = %e.kind, detail = %e.detail, "plugin call failed");
        }
        result.map(|v| (v, egress))
    }

    /// Run an export that returns `result<T, supplier-error>` and convert both sides.
    async fn call_supplier<W: Send, T>(
        &self,
        operation: &'static str,
        f: impl for<'a> FnOnce(
            &'a Instance,
            &'a mut Store<PluginState>,
        ) -> Pin<
            Box<
                dyn Future<Output = wasmtime::Result<Result<W, host::types::SupplierError>>>
                    + Send
                    + 'a,
            >,
        > + Send,
        convert: impl FnOnce(W, &mut OutputBudget) -> Result<T, String>,
    ) -> SupplierResult<T> {
        let (result, egress) = self.call(operation, f).await.map_err(into_fault)?;
        let denied = egress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .denied
            .first()
            .cloned();
        let bad_output = |detail: String| {
            let e = CallError {
                plugin: self.shared.id.clone(),
                version: self.shared.version.clone(),
                operation,
                kind: FaultKind::BadOutput,
                detail,
            };
            self.stats.reclassify(FaultKind::BadOutput);
            tracing::warn!(plugin = %e.plugin, operation, detail = %e.detail, "plugin returned bad output");
            into_fault(e)
        };
        let mut budget = self.output_budget();
        match result {
            Ok(value) => convert(value, &mut budget).map_err(bad_output),
            Err(_) if denied.is_some() => {
                self.stats.reclassify(FaultKind::EgressDenied);
                Err(into_fault(CallError {
                    plugin: self.shared.id.clone(),
                    version: self.shared.version.clone(),
                    operation,
                    kind: FaultKind::EgressDenied,
                    detail: denied.unwrap_or_default(),
                }))
            }
            Err(e) => Err(convert_supplier_error(e, &mut budget).map_err(bad_output)?),
        }
    }

    /// `plugin.describe`.
    pub async fn describe(&self) -> SupplierResult<SupplierInfo> {
        let (info, _) = self
            .call("describe", |i, s| {
                Box::pin(async move {
                    match i {
                        Instance::V0_1(b) => {
                            Ok(b.simgate_supplier_plugin().call_describe(s).await?.into())
                        }
                        Instance::V0_2(b) => b.simgate_supplier_plugin().call_describe(s).await,
                    }
                })
            })
            .await
            .map_err(into_fault)?;
        let mut budget = self.output_budget();
        convert_info(info, &mut budget).map_err(|detail| {
            into_fault(CallError {
                plugin: self.shared.id.clone(),
                version: self.shared.version.clone(),
                operation: "describe",
                kind: FaultKind::BadOutput,
                detail,
            })
        })
    }
}

fn into_fault(e: CallError) -> SupplierError {
    SupplierError::Fault {
        kind: e.kind,
        message: e.to_string(),
    }
}

/// Run `describe` to completion from blocking code (plugin loading runs off the runtime).
fn block_on_describe(plugin: &LoadedPlugin) -> SupplierResult<SupplierInfo> {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SupplierError::Fault {
                kind: FaultKind::Internal,
                message: e.to_string(),
            })?
            .block_on(plugin.describe())
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        // Called from a runtime thread (tests): do the blocking work on a plain thread.
        std::thread::scope(|s| s.spawn(run).join().expect("describe thread panicked"))
    } else {
        run()
    }
}

impl Supplier for LoadedPlugin {
    fn info(&self) -> &SupplierInfo {
        &self.info
    }

    fn list_products(&self) -> BoxFuture<'_, SupplierResult<Vec<SupplierProduct>>> {
        let plugin = self.shared.id.clone();
        Box::pin(self.call_supplier(
            "list-products",
            |i, s| {
                Box::pin(async move {
                    match i {
                        Instance::V0_1(b) => b
                            .simgate_supplier_catalog()
                            .call_list_products(s)
                            .await
                            .map(|r| {
                                r.map(|list| list.into_iter().map(Into::into).collect())
                                    .map_err(Into::into)
                            }),
                        Instance::V0_2(b) => {
                            b.simgate_supplier_catalog().call_list_products(s).await
                        }
                    }
                })
            },
            move |products, budget| convert_products(&plugin, products, budget),
        ))
    }

    fn provision(&self, req: ProvisionRequest) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>> {
        let wit = host::types::ProvisionRequest {
            order_ref: req.order_ref,
            sku: req.sku,
            quantity: req.quantity,
        };
        Box::pin(self.call_supplier(
            "provision",
            move |i, s| call_either!(i, s, simgate_supplier_provisioning.call_provision(wit)),
            convert_outcome,
        ))
    }

    fn poll(
        &self,
        order_ref: String,
        supplier_ref: String,
    ) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>> {
        let wit = host::types::PollRequest {
            order_ref,
            supplier_ref,
        };
        Box::pin(self.call_supplier(
            "poll",
            move |i, s| call_either!(i, s, simgate_supplier_provisioning.call_poll(wit)),
            convert_outcome,
        ))
    }

    fn usage(&self, iccid: String) -> BoxFuture<'_, SupplierResult<Usage>> {
        Box::pin(self.call_supplier(
            "usage",
            move |i, s| call_either!(i, s, simgate_supplier_provisioning.call_usage(same iccid)),
            |u, budget| {
                let raw_status = budget.short("raw status", u.raw_status)?;
                Ok(Usage {
                    used_bytes: u.used_bytes,
                    total_bytes: u.total_bytes,
                    profile: convert_profile(u.profile),
                    plan: convert_plan(u.plan),
                    raw_status,
                    expires_at_ms: u.expires_at_ms,
                })
            },
        ))
    }

    fn top_up(
        &self,
        order_ref: String,
        iccid: String,
        sku: String,
    ) -> BoxFuture<'_, SupplierResult<String>> {
        let wit = host::types::TopUpRequest {
            order_ref,
            iccid,
            sku,
        };
        Box::pin(self.call_supplier(
            "top-up",
            move |i, s| call_either!(i, s, simgate_supplier_provisioning.call_top_up(wit)),
            |r, budget| budget.short("supplier reference", r),
        ))
    }

    fn ekyc_start(&self, req: EkycRequest) -> BoxFuture<'_, SupplierResult<EkycRedirect>> {
        self.call_ekyc_start(req)
    }

    fn ekyc_callback(&self, req: Inbound) -> BoxFuture<'_, SupplierResult<EkycUpdate>> {
        self.call_ekyc_callback(req)
    }

    fn accepts_webhook_from(&self, addr: &str) -> bool {
        let allowed = &self.webhook_sources;
        allowed.is_empty()
            || addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| allowed.iter().any(|net| net.contains(&ip)))
    }

    fn parse_webhook(&self, req: Inbound) -> BoxFuture<'_, SupplierResult<ParsedWebhook>> {
        self.call_webhook_parse(req)
    }

    fn cancel(&self, order_ref: String, iccid: String) -> BoxFuture<'_, SupplierResult<()>> {
        let wit = host::types::CancelRequest { order_ref, iccid };
        Box::pin(self.call_supplier(
            "cancel",
            move |i, s| call_either!(i, s, simgate_supplier_provisioning.call_cancel(wit)),
            |(), _| Ok(()),
        ))
    }
}

impl LoadedPlugin {
    /// `webhooks.parse`: 0.1 plugins have no event id (the host uses the body's digest).
    fn call_webhook_parse(&self, req: Inbound) -> BoxFuture<'_, SupplierResult<ParsedWebhook>> {
        let wit = wit_inbound(req);
        Box::pin(self.call_supplier(
            "webhooks-parse",
            move |i, s| {
                Box::pin(async move {
                    match i {
                        Instance::V0_1(b) => b
                            .simgate_supplier_webhooks()
                            .call_parse(s, &wit.into())
                            .await
                            .map(|r| {
                                r.map(|events| host::types::Webhook {
                                    event_id: None,
                                    events: events.into_iter().map(Into::into).collect(),
                                })
                                .map_err(Into::into)
                            }),
                        Instance::V0_2(b) => {
                            b.simgate_supplier_webhooks().call_parse(s, &wit).await
                        }
                    }
                })
            },
            convert_webhook,
        ))
    }

    /// `ekyc.start`.
    fn call_ekyc_start(&self, req: EkycRequest) -> BoxFuture<'_, SupplierResult<EkycRedirect>> {
        let wit = host::types::EkycRequest {
            session_ref: req.session_ref,
            sku: req.sku,
            return_url: req.return_url,
        };
        Box::pin(self.call_supplier(
            "ekyc-start",
            move |i, s| call_either!(i, s, simgate_supplier_ekyc.call_start(wit)),
            |r, budget| {
                Ok(EkycRedirect {
                    url: budget.string(r.url)?,
                    supplier_ref: budget.string(r.supplier_session_ref)?,
                    expires_at_ms: r.expires_at_ms,
                })
            },
        ))
    }

    /// `ekyc.parse-callback`.
    fn call_ekyc_callback(&self, req: Inbound) -> BoxFuture<'_, SupplierResult<EkycUpdate>> {
        let wit = wit_inbound(req);
        Box::pin(self.call_supplier(
            "ekyc-parse-callback",
            move |i, s| call_either!(i, s, simgate_supplier_ekyc.call_parse_callback(wit)),
            |u, budget| {
                use host::types::EkycStatus as S;
                Ok(EkycUpdate {
                    session_ref: budget.short("session reference", u.session_ref)?,
                    status: match u.status {
                        S::Pending => EkycStatus::Pending,
                        S::Approved => EkycStatus::Approved,
                        S::Rejected => EkycStatus::Rejected,
                        S::Expired => EkycStatus::Expired,
                    },
                })
            },
        ))
    }
}

/// Counts the bytes of a plugin's result as it is converted (past the cap the result is
/// refused as bad output) and scrubs the plugin's secret values from every string in it.
pub struct OutputBudget {
    left: usize,
    cap: usize,
    scrubber: Scrubber,
}

impl OutputBudget {
    fn new(cap: usize, scrubber: Scrubber) -> OutputBudget {
        OutputBudget {
            left: cap,
            cap,
            scrubber,
        }
    }

    fn take(&mut self, n: usize) -> Result<(), String> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or_else(|| format!("result larger than the {} byte output limit", self.cap))?;
        Ok(())
    }

    fn string(&mut self, s: String) -> Result<String, String> {
        self.counted(s).map(|s| self.scrubber.owned(s))
    }

    /// `s` counted against the budget as it is (already scrubbed).
    fn counted(&mut self, s: String) -> Result<String, String> {
        self.take(s.len() + 8)?;
        Ok(s)
    }

    /// A value the gateway stores on a record and returns with it (a supplier reference,
    /// a raw status): at most [`MAX_SHORT_BYTES`] printable characters.
    fn short(&mut self, what: &str, s: String) -> Result<String, String> {
        // Checked as stored, secrets scrubbed (scrubbing can lengthen a value).
        let s = self.string(s)?;
        if s.len() > MAX_SHORT_BYTES || s.chars().any(char::is_control) {
            return Err(format!(
                "{what} {} must be at most {MAX_SHORT_BYTES} printable bytes",
                quote(&s)
            ));
        }
        Ok(s)
    }
}

fn convert_info(i: host::types::Info, budget: &mut OutputBudget) -> Result<SupplierInfo, String> {
    use host::types::Feature as F;
    Ok(SupplierInfo {
        id: budget.string(i.id)?,
        version: budget.string(i.version)?,
        supplier: budget.string(i.supplier)?,
        features: i
            .features
            .into_iter()
            .map(|f| match f {
                F::AsyncProvisioning => Feature::AsyncProvisioning,
                F::TopUp => Feature::TopUp,
                F::Cancel => Feature::Cancel,
                F::Usage => Feature::Usage,
                F::Ekyc => Feature::Ekyc,
                F::Webhooks => Feature::Webhooks,
            })
            .collect(),
    })
}

/// The longest value a plugin hands back that is stored on a record and shown with it
/// (supplier references, raw statuses): supplier APIs use ids of a few dozen characters.
const MAX_SHORT_BYTES: usize = 256;

/// The longest product title, and region name.
const MAX_TITLE_BYTES: usize = 256;

/// The longest SKU; gateway product ids are `plugin:sku`.
const MAX_SKU_BYTES: usize = 128;

/// The largest wholesale price, in minor units (10^12: ten billion of a two-decimal
/// currency). Far above any eSIM, and far enough below `i64::MAX` that a markup of up to
/// 1000% and a quantity of up to 100 stay in range.
const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;

/// A plugin's catalog: each product checked on its own. A malformed product is left out
/// (and named, briefly, in the operator's log) while the others serve; only a result over
/// the output cap refuses the whole catalog.
fn convert_products(
    plugin: &str,
    products: Vec<host::types::Product>,
    budget: &mut OutputBudget,
) -> Result<Vec<SupplierProduct>, String> {
    let mut out = Vec::with_capacity(products.len());
    let mut refused = 0usize;
    for mut p in products {
        // Checked as stored, secrets scrubbed (scrubbing can lengthen a value); a refused
        // product costs no output budget, so one huge bad value cannot sink the catalog.
        p.sku = budget.scrubber.owned(p.sku);
        p.title = budget.scrubber.owned(p.title);
        p.region = p.region.map(|r| budget.scrubber.owned(r));
        match check_product(&p) {
            Ok(()) => out.push(convert_product(p, budget)?),
            Err(why) => {
                refused += 1;
                if refused <= MAX_REFUSALS_LOGGED {
                    tracing::warn!(plugin, product = %quote(&p.sku), %why, "catalog product refused");
                }
            }
        }
    }
    if refused > MAX_REFUSALS_LOGGED {
        tracing::warn!(
            plugin,
            refused,
            "catalog products refused (only the first are named)"
        );
    }
    Ok(out)
}

/// Refused products named in the log per catalog fetch.
const MAX_REFUSALS_LOGGED: usize = 5;

/// Why a product cannot be sold, if it cannot. Messages quote plugin values truncated.
fn check_product(p: &host::types::Product) -> Result<(), String> {
    if p.sku.is_empty() || p.sku.len() > MAX_SKU_BYTES || p.sku.chars().any(char::is_control) {
        return Err(format!(
            "sku must be 1-{MAX_SKU_BYTES} printable characters (got {} bytes)",
            p.sku.len()
        ));
    }
    if p.title.len() > MAX_TITLE_BYTES
        || p.region.as_ref().is_some_and(|r| r.len() > MAX_TITLE_BYTES)
    {
        return Err(format!(
            "title and region must be at most {MAX_TITLE_BYTES} bytes"
        ));
    }
    if p.countries.len() > 300 {
        return Err(format!(
            "{} countries is more than exist",
            p.countries.len()
        ));
    }
    if let Some(c) = p
        .countries
        .iter()
        .find(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(format!("country {} is not ISO 3166 alpha-2", quote(c)));
    }
    if !is_currency(&p.wholesale.currency) {
        return Err(format!(
            "currency {} is not ISO 4217",
            quote(&p.wholesale.currency)
        ));
    }
    if !(0..=MAX_PRICE_MINOR).contains(&p.wholesale.minor) {
        return Err(format!(
            "price {} is not 0 to {MAX_PRICE_MINOR} minor units",
            p.wholesale.minor
        ));
    }
    Ok(())
}

/// A checked product (its text already scrubbed), counted against the budget.
fn convert_product(
    p: host::types::Product,
    budget: &mut OutputBudget,
) -> Result<SupplierProduct, String> {
    budget.take(64 + p.countries.len() * 4)?;
    Ok(SupplierProduct {
        sku: budget.counted(p.sku)?,
        title: budget.counted(p.title)?,
        countries: p.countries,
        region: p.region.map(|r| budget.counted(r)).transpose()?,
        data: match p.data {
            host::types::DataAllowance::Bytes(b) => DataAllowance::Bytes(b),
            host::types::DataAllowance::Unlimited => DataAllowance::Unlimited,
        },
        validity_days: p.validity_days,
        wholesale: Money {
            minor: p.wholesale.minor,
            currency: p.wholesale.currency,
        },
        needs_kyc: p.needs_kyc,
        top_up_able: p.top_up_able,
    })
}

/// `text` as one printable line of at most `max` characters: control characters (line
/// breaks, terminal escapes) become spaces.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// How much of a plugin's value an error message quotes: values come from a plugin that
/// may be hostile, and a message is logged and shown to operators.
const QUOTE_CHARS: usize = 64;

/// `value` for an error message: debug-quoted, at most [`QUOTE_CHARS`] characters, with
/// its full length when cut.
pub(crate) fn quote(value: &str) -> String {
    let mut chars = value.char_indices();
    match chars.nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

fn convert_outcome(
    o: host::types::ProvisionOutcome,
    budget: &mut OutputBudget,
) -> Result<ProvisionOutcome, String> {
    Ok(match o {
        host::types::ProvisionOutcome::Pending(r) => {
            ProvisionOutcome::Pending(budget.short("supplier reference", r)?)
        }
        host::types::ProvisionOutcome::Delivered(esims) => ProvisionOutcome::Delivered(
            esims
                .into_iter()
                .map(|e| convert_esim(e, budget))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Structural checks on delivery data: the host builds `LPA:1$smdp$matching` from it, so a
/// `$` or a control character would corrupt the activation code.
pub(crate) fn convert_esim(
    e: host::types::Esim,
    budget: &mut OutputBudget,
) -> Result<EsimProfile, String> {
    budget.take(e.iccid.len() + e.smdp_address.len() + e.matching_id.len() + 16)?;
    if !(18..=22).contains(&e.iccid.len()) || !e.iccid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("iccid {} is not 18-22 digits", quote(&e.iccid)));
    }
    // Checked as stored, secrets scrubbed (scrubbing can lengthen a value).
    let smdp_address = budget.scrubber.owned(e.smdp_address);
    let matching_id = budget.scrubber.owned(e.matching_id);
    let clean = |s: &str| {
        !s.is_empty()
            && s.len() <= 255
            && !s.contains('$')
            && !s.chars().any(|c| c.is_control() || c.is_whitespace())
    };
    if !clean(&smdp_address) || !clean(&matching_id) {
        return Err(format!(
            "eSIM {}: SM-DP+ address or matching id is empty or malformed",
            quote(&e.iccid)
        ));
    }
    Ok(EsimProfile {
        iccid: e.iccid,
        smdp_address,
        matching_id,
        confirmation_code_required: e.confirmation_code_required,
    })
}

fn convert_supplier_error(
    e: host::types::SupplierError,
    budget: &mut OutputBudget,
) -> Result<SupplierError, String> {
    use host::types::SupplierError as E;
    let mut reason = |s: String| -> Result<String, String> {
        // Reasons are shown to resellers and logged for operators: one line of at most
        // 512 characters, no control characters (a newline would forge a log line).
        budget.string(one_line(&s, 512))
    };
    Ok(match e {
        E::OutOfStock => SupplierError::OutOfStock,
        E::RateLimited(s) => SupplierError::RateLimited(s),
        E::Unavailable(r) => SupplierError::Unavailable(reason(r)?),
        E::Rejected(r) => SupplierError::Rejected(reason(r)?),
        E::InvalidRequest(r) => SupplierError::InvalidRequest(reason(r)?),
        E::NotSupported => SupplierError::NotSupported,
    })
}

fn convert_profile(p: host::types::ProfileState) -> ProfileState {
    use host::types::ProfileState as P;
    match p {
        P::Released => ProfileState::Released,
        P::Downloaded => ProfileState::Downloaded,
        P::Installed => ProfileState::Installed,
        P::Enabled => ProfileState::Enabled,
        P::Disabled => ProfileState::Disabled,
        P::Deleted => ProfileState::Deleted,
        P::Error => ProfileState::Error,
    }
}

fn convert_plan(p: host::types::PlanState) -> PlanState {
    use host::types::PlanState as P;
    match p {
        P::Allocating => PlanState::Allocating,
        P::Ready => PlanState::Ready,
        P::Active => PlanState::Active,
        P::Depleted => PlanState::Depleted,
        P::Expired => PlanState::Expired,
        P::ExpiredUnused => PlanState::ExpiredUnused,
    }
}

/// Check the component's imports against the effective capabilities before linking, so an
/// ungranted import fails with a message that says what to grant.
fn check_imports_granted(
    engine: &PluginEngine,
    component: &wasmtime::component::Component,
    requests_egress: bool,
) -> Result<(), String> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine.engine())
        .map(|(name, _)| name.to_string())
        .collect();
    let http: Vec<&str> = imports
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("wasi:http/"))
        .collect();
    if !http.is_empty() && !requests_egress {
        return Err(format!(
            "the component imports {} (egress), but plugin.toml requests no outbound host, so \
             no outbound host is granted; request hosts under [requests] outbound in \
             plugin.toml and grant them in the grants file",
            http.join(", ")
        ));
    }
    const OFFERED: [&str; 8] = [
        "simgate:supplier/",
        "wasi:http/",
        "wasi:io/",
        "wasi:cli/",
        "wasi:clocks/",
        "wasi:random/",
        "wasi:filesystem/",
        "wasi:sockets/",
    ];
    if let Some(name) = imports
        .iter()
        .find(|n| !OFFERED.iter().any(|p| n.starts_with(p)))
    {
        return Err(format!(
            "the component imports {name}, which simgate does not offer to plugins"
        ));
    }
    Ok(())
}

/// The `wasi:io/error` interface as wasmtime-wasi links it (guests importing any 0.2.x
/// are served by it).
const WASI_IO_ERROR: &str = "wasi:io/error@0.2.12";

/// The linker for one plugin: the simgate imports, WASI with an empty context, and
/// `wasi:http` only when the manifest requests egress (the policy refuses what is not granted).
fn build_linker(
    engine: &PluginEngine,
    contract: Contract,
    requests_egress: bool,
) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // WASI's own `to-debug-string` formats the host error with `Debug`: its whole chain,
    // and a backtrace when RUST_BACKTRACE is set. Plugins get an error code instead.
    linker.allow_shadowing(true);
    linker.instance(WASI_IO_ERROR)?.func_wrap(
        "[method]error.to-debug-string",
        |store: wasmtime::StoreContextMut<'_, PluginState>,
         (err,): (wasmtime::component::Resource<wasmtime::Error>,)| {
            Ok((store.data().describe_io_error(&err)?,))
        },
    )?;
    linker.allow_shadowing(false);
    match contract {
        Contract::V0_1 => {
            use v0_1::host;
            host::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::config::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::secrets::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::clock::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        }
        Contract::V0_2 => {
            host::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::config::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::secrets::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::clock::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::state::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            host::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        }
    }
    if requests_egress {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    Ok(linker)
}

/// A parsed webhook: at most [`MAX_WEBHOOK_EVENTS`] events, each checked like the results
/// of the calls they stand for (eSIMs as delivered ones, references as short values).
fn convert_webhook(
    w: host::types::Webhook,
    budget: &mut OutputBudget,
) -> Result<ParsedWebhook, String> {
    use host::types::SupplierEvent as E;
    if w.events.len() > MAX_WEBHOOK_EVENTS {
        return Err(format!(
            "{} events in one webhook; at most {MAX_WEBHOOK_EVENTS}",
            w.events.len()
        ));
    }
    let event_id = w
        .event_id
        .map(|id| budget.short("event id", id))
        .transpose()?;
    let iccid = |s: String, budget: &mut OutputBudget| budget.short("ICCID", s);
    let mut events = Vec::with_capacity(w.events.len());
    for event in w.events {
        events.push(match event {
            E::OrderDelivered(d) => SupplierEvent::OrderDelivered {
                order_ref: budget.short("order reference", d.order_ref)?,
                esims: d
                    .esims
                    .into_iter()
                    .map(|e| convert_esim(e, budget))
                    .collect::<Result<_, _>>()?,
            },
            E::OrderFailed(f) => SupplierEvent::OrderFailed {
                order_ref: budget.short("order reference", f.order_ref)?,
                reason: budget.string(one_line(&f.reason, 512))?,
            },
            E::OrderReady(r) => SupplierEvent::OrderReady {
                order_ref: budget.short("order reference", r.order_ref)?,
            },
            E::ProfileChanged(c) => SupplierEvent::ProfileChanged {
                profile: convert_profile(
                    c.profile.ok_or("profile-changed without a profile state")?,
                ),
                raw_status: budget.short("raw status", c.raw_status)?,
                iccid: iccid(c.iccid, budget)?,
            },
            E::PlanChanged(c) => SupplierEvent::PlanChanged {
                plan: convert_plan(c.plan.ok_or("plan-changed without a plan state")?),
                raw_status: budget.short("raw status", c.raw_status)?,
                iccid: iccid(c.iccid, budget)?,
            },
            E::UsageChanged(u) => SupplierEvent::UsageChanged {
                iccid: iccid(u.iccid, budget)?,
                used_bytes: u.used_bytes,
                total_bytes: u.total_bytes,
            },
            E::UsageThreshold(t) => SupplierEvent::UsageThreshold {
                iccid: iccid(t.iccid, budget)?,
                used_bytes: t.used_bytes,
                percent: t.percent.min(100),
            },
        });
    }
    Ok(ParsedWebhook { event_id, events })
}

/// Properties of the checks on what a plugin hands back, over generated (and hostile)
/// outputs: nothing panics, and whatever is accepted keeps the documented limits.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::secrets::Secret;

    /// Text from a plugin: often plausible, sometimes anything at all (long, control
    /// characters, `$`, white space, multi-byte).
    fn text(plausible: &'static str) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => plausible,
            1 => any::<String>(),
            1 => "[ -~]{0,300}",
            1 => "[a-z$\\n\\t ]{0,8}",
            // The plugin's secret (six characters, the shortest scrubbed), over and over.
            1 => "(s3cr3t|[a-z0-9]){1,60}",
        ]
    }

    /// The plugin's secret value in these tests.
    const SECRET: &str = "s3cr3t";

    fn budget(cap: usize, secret: bool) -> OutputBudget {
        let secrets = [Secret::new(SECRET)];
        let scrubber = if secret {
            Scrubber::new(secrets.iter())
        } else {
            Scrubber::default()
        };
        OutputBudget::new(cap, scrubber)
    }

    fn product() -> impl Strategy<Value = host::types::Product> {
        (
            (
                text("[A-Za-z0-9_-]{1,130}"),
                text("[A-Za-z0-9 /]{0,260}"),
                proptest::collection::vec(prop_oneof![4 => "[A-Z]{2}", 1 => "\\PC{0,3}"], 0..6),
                proptest::option::of(text("[a-z]{1,260}")),
            ),
            (
                prop_oneof![
                    any::<u64>().prop_map(host::types::DataAllowance::Bytes),
                    Just(host::types::DataAllowance::Unlimited),
                ],
                any::<u32>(),
                prop_oneof![
                    3 => -10i64..=MAX_PRICE_MINOR + 10,
                    1 => any::<i64>(),
                ],
                prop_oneof![
                    Just("USD".to_string()),
                    Just("EUR".to_string()),
                    Just("XXX".to_string()),
                    "[A-Za-z]{3}",
                    any::<String>(),
                ],
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (sku, title, countries, region),
                    (data, validity_days, minor, currency, needs_kyc, top_up_able),
                )| {
                    host::types::Product {
                        sku,
                        title,
                        countries,
                        region,
                        data,
                        validity_days,
                        wholesale: host::types::Money { minor, currency },
                        needs_kyc,
                        top_up_able,
                    }
                },
            )
    }

    fn esim() -> impl Strategy<Value = host::types::Esim> {
        (
            prop_oneof![3 => "[0-9]{17,23}", 1 => "[0-9a-f ]{0,24}", 1 => any::<String>()],
            text("[a-z0-9.-]{1,256}"),
            text("[A-Z0-9-]{1,256}"),
            any::<bool>(),
        )
            .prop_map(
                |(iccid, smdp_address, matching_id, confirmation_code_required)| {
                    host::types::Esim {
                        iccid,
                        smdp_address,
                        matching_id,
                        confirmation_code_required,
                    }
                },
            )
    }

    fn event() -> impl Strategy<Value = host::types::SupplierEvent> {
        use host::types as t;
        let short = || text("[A-Za-z0-9_-]{0,260}");
        prop_oneof![
            (short(), proptest::collection::vec(esim(), 0..3)).prop_map(|(order_ref, esims)| {
                t::SupplierEvent::OrderDelivered(t::OrderDelivered { order_ref, esims })
            }),
            (short(), any::<String>()).prop_map(|(order_ref, reason)| {
                t::SupplierEvent::OrderFailed(t::OrderFailed { order_ref, reason })
            }),
            short().prop_map(|order_ref| t::SupplierEvent::OrderReady(t::OrderReady { order_ref })),
            (short(), short(), any::<bool>(), any::<bool>()).prop_map(
                |(iccid, raw_status, profile, plan)| {
                    let change = t::StateChange {
                        iccid,
                        profile: profile.then_some(t::ProfileState::Enabled),
                        plan: plan.then_some(t::PlanState::Active),
                        raw_status,
                    };
                    if profile {
                        t::SupplierEvent::ProfileChanged(change)
                    } else {
                        t::SupplierEvent::PlanChanged(change)
                    }
                }
            ),
            (short(), any::<u64>(), any::<u8>()).prop_map(|(iccid, used_bytes, percent)| {
                t::SupplierEvent::UsageThreshold(t::UsageThreshold {
                    iccid,
                    used_bytes,
                    percent,
                })
            }),
            (short(), any::<u64>(), any::<Option<u64>>()).prop_map(
                |(iccid, used_bytes, total_bytes)| {
                    t::SupplierEvent::UsageChanged(t::UsageChange {
                        iccid,
                        used_bytes,
                        total_bytes,
                    })
                }
            ),
        ]
    }

    /// What every accepted eSIM must be: an ICCID of 18 to 22 digits, and an activation
    /// code `LPA:1$<address>$<matching id>` that splits back into exactly those parts.
    fn assert_installable(e: &EsimProfile) {
        assert!((18..=22).contains(&e.iccid.len()), "{:?}", e.iccid);
        assert!(e.iccid.bytes().all(|b| b.is_ascii_digit()), "{:?}", e.iccid);
        for part in [&e.smdp_address, &e.matching_id] {
            assert!(!part.is_empty() && part.len() <= 255, "{part:?}");
            assert!(
                !part.chars().any(|c| c.is_control() || c.is_whitespace()),
                "{part:?}"
            );
        }
        let code = format!("LPA:1${}${}", e.smdp_address, e.matching_id);
        let parts: Vec<&str> = code.split('$').collect();
        assert_eq!(
            parts,
            ["LPA:1", e.smdp_address.as_str(), e.matching_id.as_str()]
        );
    }

    /// A short value the gateway stores and shows: bounded and printable.
    fn assert_short(s: &str) {
        assert!(s.len() <= MAX_SHORT_BYTES, "{} bytes", s.len());
        assert!(!s.chars().any(char::is_control), "{s:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn an_accepted_product_keeps_the_catalog_limits(p in product(), secret in any::<bool>()) {
            let sellable = |p: &host::types::Product| {
                !p.sku.is_empty()
                    && p.sku.len() <= MAX_SKU_BYTES
                    && !p.sku.chars().any(char::is_control)
                    && p.title.len() <= MAX_TITLE_BYTES
                    && p.region.as_ref().is_none_or(|r| r.len() <= MAX_TITLE_BYTES)
                    && p.countries.len() <= 300
                    && p.countries.iter().all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
                    && is_currency(&p.wholesale.currency)
                    && (0..=MAX_PRICE_MINOR).contains(&p.wholesale.minor)
            };
            let verdict = check_product(&p);
            prop_assert_eq!(verdict.is_ok(), sellable(&p), "{:?}", verdict);
            if let Err(why) = verdict {
                // The reason quotes the plugin's values cut short: it is logged.
                prop_assert!(why.len() <= 400, "{} bytes", why.len());
            }
            // Through the catalog, with the plugin's secret scrubbed out: what is kept is
            // within the limits as stored.
            let out = convert_products("fuzz", vec![p], &mut budget(usize::MAX / 2, secret)).unwrap();
            for p in &out {
                prop_assert!(!p.sku.is_empty() && p.sku.len() <= MAX_SKU_BYTES);
                prop_assert!(!p.sku.chars().any(char::is_control));
                prop_assert!(p.title.len() <= MAX_TITLE_BYTES);
                prop_assert!(p.region.as_ref().is_none_or(|r| r.len() <= MAX_TITLE_BYTES));
                if secret {
                    prop_assert!(!p.sku.contains(SECRET) && !p.title.contains(SECRET));
                }
            }
        }

        #[test]
        fn a_catalog_keeps_its_good_products_and_its_cap(
            products in proptest::collection::vec(product(), 0..12),
            cap in prop_oneof![Just(usize::MAX / 2), 0usize..4096],
            secret in any::<bool>(),
        ) {
            let good = convert_products("fuzz", products.clone(), &mut budget(usize::MAX / 2, secret))
                .unwrap()
                .len();
            match convert_products("fuzz", products, &mut budget(cap, secret)) {
                Ok(out) => {
                    prop_assert_eq!(out.len(), good);
                    for p in &out {
                        prop_assert!(!p.sku.is_empty() && p.sku.len() <= MAX_SKU_BYTES);
                        prop_assert!(p.countries.len() <= 300);
                        prop_assert!(is_currency(&p.wholesale.currency));
                        prop_assert!((0..=MAX_PRICE_MINOR).contains(&p.wholesale.minor));
                        if secret {
                            prop_assert!(!p.sku.contains(SECRET) && !p.title.contains(SECRET));
                        }
                    }
                }
                Err(why) => prop_assert!(why.contains("output limit"), "{}", why),
            }
        }

        #[test]
        fn an_accepted_esim_is_installable(e in esim(), secret in any::<bool>()) {
            if let Ok(profile) = convert_esim(e, &mut budget(usize::MAX / 2, secret)) {
                assert_installable(&profile);
            }
        }

        #[test]
        fn a_delivery_is_all_installable_or_refused(
            esims in proptest::collection::vec(esim(), 0..5),
            reference in text("[A-Za-z0-9_-]{0,260}"),
            pending in any::<bool>(),
        ) {
            let outcome = if pending {
                host::types::ProvisionOutcome::Pending(reference)
            } else {
                host::types::ProvisionOutcome::Delivered(esims)
            };
            match convert_outcome(outcome, &mut budget(usize::MAX / 2, false)) {
                Ok(ProvisionOutcome::Delivered(esims)) => esims.iter().for_each(assert_installable),
                Ok(ProvisionOutcome::Pending(r)) => assert_short(&r),
                Err(_) => {}
            }
        }

        #[test]
        fn an_accepted_webhook_is_bounded_and_its_esims_installable(
            events in proptest::collection::vec(event(), 0..8),
            many in proptest::bool::weighted(0.05),
            event_id in proptest::option::of(text("[A-Za-z0-9-]{1,260}")),
        ) {
            let events = if many {
                events.iter().cycle().take(MAX_WEBHOOK_EVENTS + 1).cloned().collect()
            } else {
                events
            };
            let Ok(parsed) = convert_webhook(
                host::types::Webhook { event_id, events },
                &mut budget(usize::MAX / 2, false),
            ) else {
                return Ok(());
            };
            prop_assert!(parsed.events.len() <= MAX_WEBHOOK_EVENTS);
            if let Some(id) = &parsed.event_id {
                assert_short(id);
            }
            for event in &parsed.events {
                match event {
                    SupplierEvent::OrderDelivered { order_ref, esims } => {
                        assert_short(order_ref);
                        esims.iter().for_each(assert_installable);
                    }
                    SupplierEvent::OrderFailed { order_ref, reason } => {
                        assert_short(order_ref);
                        prop_assert!(reason.chars().count() <= 512);
                        prop_assert!(!reason.chars().any(char::is_control));
                    }
                    SupplierEvent::OrderReady { order_ref } => assert_short(order_ref),
                    SupplierEvent::ProfileChanged { iccid, raw_status, .. }
                    | SupplierEvent::PlanChanged { iccid, raw_status, .. } => {
                        assert_short(iccid);
                        assert_short(raw_status);
                    }
                    SupplierEvent::UsageChanged { iccid, .. } => assert_short(iccid),
                    SupplierEvent::UsageThreshold { iccid, percent, .. } => {
                        assert_short(iccid);
                        prop_assert!(*percent <= 100);
                    }
                }
            }
        }

        #[test]
        fn the_budget_refuses_what_does_not_fit(strings in proptest::collection::vec(any::<String>(), 0..8), cap in 0usize..512) {
            let mut b = budget(cap, false);
            let mut taken = 0usize;
            for s in strings {
                let need = s.len() + 8;
                match b.string(s) {
                    Ok(_) => {
                        taken += need;
                        prop_assert!(taken <= cap);
                    }
                    Err(why) => {
                        prop_assert!(taken + need > cap);
                        prop_assert!(why.contains("output limit"));
                    }
                }
            }
        }

        #[test]
        fn quoting_a_plugin_value_is_bounded(value in any::<String>(), max in 0usize..600) {
            let line = one_line(&value, max);
            prop_assert!(line.chars().count() <= max);
            prop_assert!(!line.chars().any(char::is_control));
            let quoted = quote(&value);
            prop_assert!(quoted.chars().count() <= QUOTE_CHARS * 10 + 40, "{}", quoted);
        }
    }
}
