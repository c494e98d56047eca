//! Order API throughput beside a hyper hello-world server, measured in one run.
//!
//! `cargo bench -p simgate --bench http_load` starts two servers on loopback, each in its
//! own process: a minimal hyper server (this same binary re-executed as `hello`) and the
//! real `simgate serve` (release build, sandbox plugin, fresh sled data dir). In rounds,
//! the same load generator (one thread, 64 keep-alive connections, like `wrk -t1 -c64`)
//! drives `GET /` on the first, then `POST /v1/orders` and `GET /v1/orders/{id}` on the
//! second; the report gives throughput and latency percentiles as ratios to that round's
//! hello world, and the median ratio over the rounds.
//!
//! Environment: `BENCH_SECONDS` (default 5) per scenario, `BENCH_CONNECTIONS` (64),
//! `BENCH_ROUNDS` (3; the report gives every round and the median ratio).
//!
//! `BENCH_BASE_BIN=/path/to/simgate` adds a second gateway, another build (an earlier
//! commit's release binary, say), measured in the same rounds right after this build:
//! before and after a change, side by side, under the same machine conditions.
//!
//! `BENCH_STORE_URL=postgresql://...` (a PostgreSQL server the bench may create databases
//! on: `tests/pg/cluster.sh target/pg` prints one) measures instead this build on sled
//! beside this build on PostgreSQL with one node, and with two nodes sharing one database
//! (the load's connections split between them, their CPU added up), each on a fresh
//! database; PostgreSQL's own CPU is not in the gateway's figures.
//!
//! `BENCH_WEBHOOKS=1` adds instead a second gateway of this build whose reseller has one
//! webhook endpoint (another hello-world process on loopback as the receiver): the cost
//! of the outbox beside the same build without one, and the deliveries per second it then
//! makes (every order's event, from the start of the load to the last delivery).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hello") {
        return hello_server();
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` probes bench binaries; nothing to list or test here.
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let connections: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let duration = Duration::from_secs(seconds);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);

    // Both servers run side by side, each in its own process; every round measures hello
    // world and then the gateway right after it, so each round's ratios compare numbers
    // taken under the same machine conditions (a shared VM drifts by ±15% over minutes).
    let mut hello = Command::new(std::env::current_exe().unwrap())
        .arg("hello")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the hello-world server");
    let hello_addr = read_addr(hello.stdout.take().unwrap(), "listening on http://");

    // BENCH_SYNC_WAIT_MS=0 answers orders on acceptance (fulfilment continues in the
    // background worker); unset keeps the default, answering once fulfilled.
    let sync_wait = std::env::var("BENCH_SYNC_WAIT_MS")
        .ok()
        .filter(|v| !v.is_empty());
    let this_build = env!("CARGO_BIN_EXE_simgate").to_string();
    let mut builds = vec![("this build", this_build.clone(), None, Store::Sled)];
    let mut receiver = None;
    if let Some(server) = std::env::var("BENCH_STORE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        builds = vec![
            ("sled, one node", this_build.clone(), None, Store::Sled),
            (
                "PostgreSQL, one node",
                this_build.clone(),
                None,
                Store::Postgres {
                    url: simgate_test_support::create_database(&server),
                    nodes: 1,
                },
            ),
            (
                "PostgreSQL, two nodes",
                this_build.clone(),
                None,
                Store::Postgres {
                    url: simgate_test_support::create_database(&server),
                    nodes: 2,
                },
            ),
        ];
    } else if std::env::var("BENCH_WEBHOOKS").is_ok_and(|v| v == "1") {
        let mut hooks = Command::new(std::env::current_exe().unwrap())
            .arg("hello")
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the webhook receiver");
        let addr = read_addr(hooks.stdout.take().unwrap(), "listening on http://");
        receiver = Some(hooks);
        builds.push((
            "this build, one webhook endpoint",
            this_build.clone(),
            Some(addr),
            Store::Sled,
        ));
    } else if let Some(base) = std::env::var("BENCH_BASE_BIN")
        .ok()
        .filter(|b| !b.is_empty())
    {
        builds.push(("baseline", base, None, Store::Sled));
    }
    let gateways: Vec<Gateway> = builds
        .into_iter()
        .map(|(label, bin, hooks, store)| {
            Gateway::start(
                label,
                &bin,
                &this_build,
                sync_wait.as_deref(),
                hooks,
                &store,
            )
        })
        .collect();
    let mut deliveries: Vec<(u64, Duration)> = Vec::new();
    let body = Bytes::from_static(br#"{"product_id":"sandbox:SBX-US-5GB-30D","quantity":1}"#);

    // Per round: hello world, then per gateway its POST run and GET run.
    let mut table: Vec<(Run, Vec<(Run, Run)>)> = Vec::new();
    let (mut drain, mut accepted, mut settled) = (Duration::ZERO, 0, 0);
    for round in 0..rounds {
        let hello_run = load(&[(hello_addr, hello.id())], connections, duration, |_| {
            Req::get("/".into(), None)
        });
        let mut runs = Vec::new();
        for gw in &gateways {
            let post_auth = gw.auth.clone();
            let body = body.clone();
            // An idempotency key is printable ASCII without spaces.
            let label = gw.label.replace(' ', "-");
            let post_started = Instant::now();
            let delivered_before = gw.metrics().delivered;
            let post_run = load(&gw.targets(), connections, duration, move |n| {
                Req::post(
                    "/v1/orders".into(),
                    post_auth.clone(),
                    format!("bench-{label}-{round}-{n}"),
                    body.clone(),
                )
            });
            let ids = post_run.order_ids.clone();
            assert!(!ids.is_empty(), "no order was created");
            // How long the fulfilment worker needs to finish every accepted order after
            // the load stops (zero when orders are answered only once fulfilled).
            let drain_started = Instant::now();
            (accepted, settled) = loop {
                let m = gw.metrics();
                if m.settled >= m.accepted || drain_started.elapsed() > Duration::from_secs(300) {
                    break (m.accepted, m.settled);
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            drain = drain.max(drain_started.elapsed());
            if gw.webhooks {
                // Every settled order raised one event: wait for each to be delivered.
                let delivered = loop {
                    let m = gw.metrics();
                    if m.delivered >= m.settled || post_started.elapsed() > Duration::from_secs(600)
                    {
                        break m.delivered - delivered_before;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                deliveries.push((delivered, post_started.elapsed()));
            }
            let get_auth = gw.auth.clone();
            let get_run = load(&gw.targets(), connections, duration, move |n| {
                Req::get(
                    format!("/v1/orders/{}", ids[n % ids.len()]),
                    Some(get_auth.clone()),
                )
            });
            runs.push((post_run, get_run));
        }
        table.push((hello_run, runs));
    }
    let labels: Vec<&str> = gateways.iter().map(|g| g.label).collect();
    drop(gateways);
    let _ = hello.kill();
    let _ = hello.wait();
    if let Some(mut hooks) = receiver {
        let _ = hooks.kill();
        let _ = hooks.wait();
    }

    let mode = match sync_wait.as_deref() {
        Some("0") => "answered on acceptance",
        _ => "answered once fulfilled",
    };
    println!(
        "\nsimgate HTTP load: {connections} connections, {seconds} s per scenario, {rounds} rounds, loopback, one load thread"
    );
    println!(
        "| round | scenario | requests/s | p50 ms | p99 ms | errors | server CPU µs/request | vs hello world |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let named = |label: &str, what: &str| {
        if labels.len() > 1 {
            format!("{what}, {label}")
        } else {
            what.to_string()
        }
    };
    for (i, (hello_run, runs)) in table.iter().enumerate() {
        let mut rows = vec![("hyper hello world `GET /`".to_string(), hello_run)];
        for (label, (post_run, get_run)) in labels.iter().zip(runs) {
            rows.push((
                named(
                    label,
                    &format!("`POST /v1/orders` (sandbox plugin, {mode})"),
                ),
                post_run,
            ));
            rows.push((named(label, "`GET /v1/orders/{id}`"), get_run));
        }
        for (name, run) in rows {
            println!(
                "| {} | {name} | {:.0} | {:.2} | {:.2} | {} | {} | {:.1}% |",
                i + 1,
                run.rate(),
                run.percentile(0.50),
                run.percentile(0.99),
                run.errors,
                run.cpu_per_request()
                    .map(|us| format!("{us:.0}"))
                    .unwrap_or_else(|| "n/a".into()),
                100.0 * run.rate() / hello_run.rate()
            );
        }
    }
    let median = |mut r: Vec<f64>| -> f64 {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    println!();
    for (g, label) in labels.iter().enumerate() {
        let ratio = |pick: &dyn Fn(&(Run, Run)) -> &Run| {
            median(
                table
                    .iter()
                    .map(|(h, runs)| 100.0 * pick(&runs[g]).rate() / h.rate())
                    .collect(),
            )
        };
        let cpu = |pick: &dyn Fn(&(Run, Run)) -> &Run| {
            let per_round: Vec<f64> = table
                .iter()
                .filter_map(|(_, runs)| pick(&runs[g]).cpu_per_request())
                .collect();
            if per_round.is_empty() {
                f64::NAN
            } else {
                median(per_round)
            }
        };
        println!(
            "median over rounds, {label}: POST /v1/orders {:.1}% of hello world ({:.0} µs CPU/order), GET /v1/orders/{{id}} {:.1}% ({:.0} µs CPU/read)",
            ratio(&|r| &r.0),
            cpu(&|r| &r.0),
            ratio(&|r| &r.1),
            cpu(&|r| &r.1),
        );
    }
    println!(
        "fulfilment: {settled} of {accepted} accepted orders settled (last gateway); the worker needed at most {:.1} s after a round's load stopped",
        drain.as_secs_f64(),
    );
    for (round, (delivered, took)) in deliveries.iter().enumerate() {
        println!(
            "webhooks, round {}: {delivered} events delivered {:.1} s after the load began: {:.0} deliveries/s",
            round + 1,
            took.as_secs_f64(),
            *delivered as f64 / took.as_secs_f64()
        );
    }
}

/// Where a gateway under test keeps its records.
enum Store {
    /// sled in its data directory.
    Sled,
    /// The PostgreSQL database at `url`, shared by `nodes` gateway processes.
    Postgres { url: String, nodes: usize },
}

/// One gateway under test: its processes (one per node) and their data directories,
/// killed when dropped.
struct Gateway {
    label: &'static str,
    nodes: Vec<(std::process::Child, SocketAddr)>,
    auth: String,
    admin: String,
    /// Whether its reseller has a webhook endpoint.
    webhooks: bool,
    _dirs: Vec<tempfile::TempDir>,
}

impl Gateway {
    /// Start `bin` on fresh data dirs with the sandbox plugin (packed by `packer`), one
    /// node (or, on PostgreSQL, as many as `store` says: each with its own data dir and
    /// the first node's key files). With `hooks`, the demo reseller gets a webhook
    /// endpoint at that receiver.
    fn start(
        label: &'static str,
        bin: &str,
        packer: &str,
        sync_wait: Option<&str>,
        hooks: Option<SocketAddr>,
        store: &Store,
    ) -> Gateway {
        let (url, count) = match store {
            Store::Sled => (None, 1),
            Store::Postgres { url, nodes } => (Some(url.as_str()), (*nodes).max(1)),
        };
        let mut gw = Gateway {
            label,
            nodes: Vec::new(),
            auth: String::new(),
            admin: String::new(),
            webhooks: hooks.is_some(),
            _dirs: Vec::new(),
        };
        for n in 0..count {
            let dir = tempfile::tempdir().unwrap();
            if let Some(first) = gw._dirs.first() {
                for key in ["pepper.key", "master.key", "audit.key"] {
                    std::fs::copy(first.path().join(key), dir.path().join(key)).unwrap();
                }
            }
            let (process, addr, keys) = start_node(bin, packer, sync_wait, hooks, url, dir.path());
            if n == 0 {
                let (key, admin) = keys.expect("the first node prints the demo keys");
                gw.auth = format!("Bearer {key}");
                gw.admin = admin;
            }
            gw.nodes.push((process, addr));
            gw._dirs.push(dir);
        }
        // The port answers before the gateway is ready (builds since the port is bound
        // first).
        for node in 0..gw.nodes.len() {
            while gw.call_node(node, "GET", "/readyz", "", String::new()).0 != 200 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        if let Some(hooks) = hooks {
            let body = format!(r#"{{"url":"http://{hooks}/hooks"}}"#);
            let (status, _) = gw.call("POST", "/v1/webhook-endpoints", &gw.auth, body);
            assert_eq!(status, 201, "registering the webhook endpoint");
        }
        gw
    }

    /// Every node's address and process id: where the load goes and whose CPU counts.
    fn targets(&self) -> Vec<(SocketAddr, u32)> {
        self.nodes.iter().map(|(p, a)| (*a, p.id())).collect()
    }

    /// Send one request to the first node; returns its status and body.
    fn call(&self, method: &str, path: &str, auth: &str, body: String) -> (u16, String) {
        self.call_node(0, method, path, auth, body)
    }

    /// Send one request to node `node`; returns its status and body.
    fn call_node(
        &self,
        node: usize,
        method: &str,
        path: &str,
        auth: &str,
        body: String,
    ) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(self.nodes[node].1)
                .await
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "bench")
                .header("authorization", auth)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }

    /// Orders accepted and settled, and webhooks delivered, so far (from every node's
    /// `/metrics`, added up: each node counts what it did).
    fn metrics(&self) -> Counts {
        let texts: Vec<String> = (0..self.nodes.len())
            .map(|node| {
                let auth = format!("Bearer {}", self.admin);
                self.call_node(node, "GET", "/metrics", &auth, String::new())
                    .1
            })
            .collect();
        let value = |series: &str| -> u64 {
            texts
                .iter()
                .map(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(series))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                })
                .sum()
        };
        let orders = |status: &str| value(&format!("simgate_orders_total{{status=\"{status}\"}} "));
        Counts {
            accepted: orders("accepted"),
            settled: orders("fulfilled") + orders("failed"),
            delivered: value("simgate_webhook_attempts_total{outcome=\"delivered\"} "),
        }
    }
}

/// Start one node of `bin` on data dir `dir` with the sandbox plugin (packed by
/// `packer`), on sled or on the PostgreSQL database at `url`; returns the process, its
/// address and, when it printed them (a first start), the demo and admin keys.
fn start_node(
    bin: &str,
    packer: &str,
    sync_wait: Option<&str>,
    hooks: Option<SocketAddr>,
    url: Option<&str>,
    dir: &std::path::Path,
) -> (std::process::Child, SocketAddr, Option<(String, String)>) {
    simgate_test_support::pack(
        std::path::Path::new(packer),
        "sandbox",
        &dir.join("plugins"),
    );
    // The sandbox requests an outbound rule for its optional eKYC provider mode; builds
    // before 034f112 link egress only when it is granted, so grant it to both builds
    // alike (without `kyc_provider_url` the sandbox makes no request).
    std::fs::write(
        dir.join("grants.toml"),
        "[plugins.sandbox]\noutbound = [\"http://127.0.0.1:*\"]\n",
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[orders]\ndemo_credit_minor = 1000000000000\n{}[http]\nrate_limit_per_second = 1000000.0\nrate_limit_burst = 1000000.0\n{}{}",
            sync_wait.map(|ms| format!("sync_wait_ms = {ms}\n")).unwrap_or_default(),
            if hooks.is_some() { "[webhooks]\nallow_private_addresses = true\n" } else { "" },
            url.map(|u| format!("[store]\nbackend = \"postgres\"\nurl = \"{u}\"\n"))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    // A node joining a database another node set up (given its key files) prints no keys.
    let first = !dir.join("pepper.key").exists();
    let mut process = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir)
        .env("SIMGATE_LOG", "error")
        // The demo reseller places the orders (an environment variable, which builds
        // before `--demo` ignore: they made it by default).
        .env("SIMGATE_DEMO", "true")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let (addr, keys) = read_gateway(process.stdout.take().unwrap(), first);
    (process, addr, keys)
}

/// Figures read from a gateway's `/metrics`.
struct Counts {
    accepted: u64,
    settled: u64,
    delivered: u64,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for (process, _) in &mut self.nodes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// One request to send.
struct Req {
    method: &'static str,
    path: String,
    auth: Option<String>,
    idempotency_key: Option<String>,
    body: Bytes,
}

impl Req {
    fn get(path: String, auth: Option<String>) -> Req {
        Req {
            method: "GET",
            path,
            auth,
            idempotency_key: None,
            body: Bytes::new(),
        }
    }

    fn post(path: String, auth: String, key: String, body: Bytes) -> Req {
        Req {
            method: "POST",
            path,
            auth: Some(auth),
            idempotency_key: Some(key),
            body,
        }
    }
}

struct Run {
    latencies_us: Vec<u64>,
    errors: u64,
    elapsed: Duration,
    order_ids: Vec<String>,
    /// CPU time the server process used during the measured part, if the OS tells.
    server_cpu: Option<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU time per answered request, in µs: what a request costs, apart from how
    /// busy the machine was.
    fn cpu_per_request(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (!self.latencies_us.is_empty())
            .then(|| cpu.as_secs_f64() * 1e6 / self.latencies_us.len() as f64)
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// CPU time (user + system) process `pid` has used so far, from `/proc` (Linux only).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Drive `targets` (addresses, each served by its process) with `connections`
/// keep-alive connections, spread over them in turn, for `duration`; the server CPU is
/// every target process's, added up.
fn load(
    targets: &[(SocketAddr, u32)],
    connections: usize,
    duration: Duration,
    make: impl Fn(usize) -> Req + Send + Sync + 'static,
) -> Run {
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.0).collect();
    let cpu = {
        let pids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        move || -> Option<Duration> { pids.iter().map(|&pid| cpu_time(pid)).sum() }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let make = Arc::new(make);
    rt.block_on(async move {
        // Warm-up: a second of load, results discarded.
        let _ = drive(
            &addrs,
            connections,
            Duration::from_secs(1),
            make.clone(),
            1_000_000_000,
        )
        .await;
        let cpu_before = cpu();
        let mut run = drive(&addrs, connections, duration, make, 0).await;
        run.server_cpu = cpu_before
            .zip(cpu())
            .map(|(before, after)| after.saturating_sub(before));
        run
    })
}

async fn drive(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    make: Arc<impl Fn(usize) -> Req + Send + Sync + 'static>,
    offset: usize,
) -> Run {
    let started = Instant::now();
    let end = started + duration;
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(offset));
    let local = tokio::task::LocalSet::new();
    let mut handles = Vec::new();
    for connection in 0..connections {
        let addr = addrs[connection % addrs.len()];
        let make = make.clone();
        let counter = counter.clone();
        handles.push(local.spawn_local(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut ids = Vec::new();
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::task::spawn_local(conn);
            while Instant::now() < end {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let r = make(n);
                let mut b = http::Request::builder()
                    .method(r.method)
                    .uri(&r.path)
                    .header("host", "bench");
                if let Some(a) = &r.auth {
                    b = b.header("authorization", a);
                }
                if let Some(k) = &r.idempotency_key {
                    b = b
                        .header("idempotency-key", k)
                        .header("content-type", "application/json");
                }
                let req = b.body(Full::new(r.body)).unwrap();
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let body = resp
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        lat.push(t.elapsed().as_micros() as u64);
                        if !ok {
                            errors += 1;
                        } else if r.method == "POST"
                            && ids.len() < 100
                            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                            && let Some(id) = v["id"].as_str()
                        {
                            ids.push(id.to_string());
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors, ids)
        }));
    }
    local
        .run_until(async move {
            let mut run = Run {
                latencies_us: Vec::new(),
                errors: 0,
                elapsed: Duration::ZERO,
                order_ids: Vec::new(),
                server_cpu: None,
            };
            for h in handles {
                let (lat, errors, ids) = h.await.unwrap();
                run.latencies_us.extend(lat);
                run.errors += errors;
                run.order_ids.extend(ids);
            }
            run.elapsed = started.elapsed();
            run.latencies_us.sort_unstable();
            run
        })
        .await
}

fn read_addr(stdout: std::process::ChildStdout, prefix: &str) -> SocketAddr {
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.split(prefix).nth(1) {
            return rest.trim().parse().unwrap();
        }
    }
    panic!("server did not print its address");
}

fn read_gateway(
    stdout: std::process::ChildStdout,
    expect_keys: bool,
) -> (SocketAddr, Option<(String, String)>) {
    let mut key = String::new();
    let mut admin = String::new();
    let mut addr = None;
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    // Builds before the admin key file print the keys before the address, later ones
    // after it; a node joining a database already set up prints none.
    for line in lines.by_ref() {
        if line.starts_with("demo reseller") {
            key = line.rsplit(' ').next().unwrap().to_string();
        }
        if let Some(rest) = line.strip_prefix("admin API key written to ") {
            let path = &rest[..rest.rfind(" (readable").unwrap()];
            admin = std::fs::read_to_string(path).unwrap().trim().to_string();
        } else if line.starts_with("admin API key") {
            admin = line.rsplit(' ').next().unwrap().to_string();
        }
        if let Some(rest) = line.strip_prefix("simgate listening on http://") {
            addr = Some(rest.trim().parse().unwrap());
        }
        let keys = !key.is_empty() && !admin.is_empty();
        if let Some(addr) = addr.filter(|_| keys || !expect_keys) {
            // Keep draining stdout in the background.
            std::thread::spawn(move || for _ in lines {});
            return (addr, keys.then_some((key, admin)));
        }
    }
    panic!("simgate did not start");
}

/// The baseline: the smallest useful hyper server, configured like simgate's listener.
fn hello_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on http://{}", listener.local_addr().unwrap());
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"hello world",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}
