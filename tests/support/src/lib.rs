//! Black-box test support: the built plugin components, deployable plugin folders made with
//! the real `simgate plugin pack`, and a running `simgate serve` on a free loopback port
//! with its own data directory.
//!
//! Nothing here mocks a simgate component: tests talk HTTP to the real binary, which loads
//! real `.wasm` plugins and writes to a real sled database on disk.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use serde_json::{Value, json};

mod airalo;
mod esim_access;
mod http1;
mod kyc_provider;
mod receiver;
mod reflector;
mod sim;
pub use airalo::{AiraloPackage, AiraloSim};
pub use esim_access::{EsimAccessEsim, EsimAccessOrder, EsimAccessPackage, EsimAccessSim};
pub use kyc_provider::{Decision, KycProvider, ProviderSession};
pub use receiver::{Received, Receiver, standardwebhooks_python, verify_with_standardwebhooks};
pub use reflector::Reflector;
pub use sim::{Delivery, Fault, Recorded, SMDP_ADDRESS, SimCore};

/// Every file under `dir`, read whole, with its path (to search a data directory for
/// values that must not be there).
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("reading a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// What a load thread ([`Gateway::keep_ordering`]) accepts besides `201`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusals {
    /// Nothing else.
    Never,
    /// `5xx` while the database is down (paced, and not counted).
    WhileDown,
}

/// The name [`stored_under`] gives a PostgreSQL gateway's database, dumped.
pub const PG_DUMP: &str = "postgresql-dump";

/// Everything a gateway stored, to search for values that must not be there: every file
/// under its data directory and, for a gateway on PostgreSQL (the data directory names
/// its database), the whole database dumped as text, each `bytea` value decoded beside
/// its hex, as one more file named [`PG_DUMP`]. Panics unless the store's own records
/// (sled's `db` files, or the dump) are among them.
pub fn stored_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = files_under(dir);
    if let Ok(url) = std::fs::read_to_string(dir.join(STORE_URL_FILE)) {
        let out = Command::new(pg_program("pg_dump"))
            .args(["--data-only", "--no-owner", "-d", url.trim()])
            .output()
            .expect("running pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut dump = out.stdout.clone();
        dump.extend(decoded_bytea(&out.stdout));
        files.push((dir.join(PG_DUMP), dump));
    }
    assert!(
        files
            .iter()
            .any(|(p, _)| p.ends_with("db") || p.ends_with(PG_DUMP)),
        "the store's records were read"
    );
    files
}

/// Every `\x...` hex run in a dump, decoded, one after another.
fn decoded_bytea(dump: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(dump);
    let mut out = Vec::new();
    for run in text.split("\\x").skip(1) {
        let hex: String = run.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        if let Ok(bytes) = hex::decode(&hex[..hex.len() - hex.len() % 2]) {
            out.extend(bytes);
            out.push(b'\n');
        }
    }
    out
}

/// Whether the black-box tests run on PostgreSQL (`SIMGATE_TEST_STORE_URL` is set): the
/// few that need sled itself (its files, the offline commands) say so and skip.
pub fn on_postgres(test: &str) -> bool {
    let set = std::env::var(TEST_STORE_URL_VAR).is_ok_and(|u| !u.is_empty());
    if set {
        eprintln!("skipping {test} on PostgreSQL: it needs a sled data directory");
    }
    set
}

/// Where the plugins' `.wasm` files were built.
pub fn wasm_dir() -> PathBuf {
    PathBuf::from(env!("SIMGATE_WASM_DIR"))
}

/// The built component of plugin crate `name` (e.g. `sandbox`, `spin`).
pub fn wasm(name: &str) -> PathBuf {
    wasm_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// The source folder of plugin `name` (holding its source `plugin.toml`).
pub fn plugin_source(name: &str) -> PathBuf {
    let src = PathBuf::from(env!("SIMGATE_PLUGINS_SRC"));
    let direct = src.join(name);
    if direct.join("plugin.toml").exists() {
        direct
    } else {
        src.join("testing").join(name)
    }
}

/// Pack plugin `name` into `plugins_dir` with the real CLI (fills in the sha256).
pub fn pack(bin: &Path, name: &str, plugins_dir: &Path) {
    let status = Command::new(bin)
        .args(["plugin", "pack", "--manifest"])
        .arg(plugin_source(name).join("plugin.toml"))
        .arg("--wasm")
        .arg(wasm(name))
        .arg("--out")
        .arg(plugins_dir)
        .stdout(Stdio::null())
        .status()
        .expect("running simgate plugin pack");
    assert!(status.success(), "simgate plugin pack {name} failed");
}

/// How to start a gateway.
pub struct GatewayBuilder {
    bin: PathBuf,
    plugins: Vec<String>,
    grants: Option<String>,
    secrets: Option<String>,
    config: Option<String>,
    env: Vec<(String, String)>,
    data_dir: Option<tempfile::TempDir>,
    capture_log: bool,
    demo: bool,
    /// Where the gateway keeps its records (sled in its data directory unless told).
    store: StoreChoice,
}

/// Which store a built gateway runs on.
#[derive(Clone)]
enum StoreChoice {
    /// sled in the data directory (the gateway's default).
    Sled,
    /// A fresh database of its own on the PostgreSQL server this URL reaches (the URL
    /// names a maintenance database, used for `CREATE DATABASE`).
    FreshPostgres(String),
    /// This PostgreSQL database as it is, shared with another gateway started on it.
    SharedPostgres(String),
}

/// Environment variable naming a PostgreSQL server: when set, every gateway the builder
/// starts runs on a fresh database of its own there (see [`GatewayBuilder::postgres`]).
pub const TEST_STORE_URL_VAR: &str = "SIMGATE_TEST_STORE_URL";

/// Environment variable naming a PostgreSQL server for the tests that need one (the
/// multi-node tests); they are skipped, with a notice, when it is not set.
pub const TEST_PG_URL_VAR: &str = "SIMGATE_TEST_PG_URL";

/// In a data directory, the PostgreSQL database its gateway runs on: a restart on the
/// directory reuses it.
const STORE_URL_FILE: &str = "test-store-url";

/// What `simgate serve` prints on the first start of a data directory: where the admin key
/// is, then (with `--demo`) the demo reseller's key.
const ADMIN_KEY_LINE: &str = "admin API key written to ";
const DEMO_KEY_LINE: &str = "demo reseller ";

/// A running `simgate serve`. Killed when dropped.
pub struct Gateway {
    child: std::sync::Mutex<Option<Child>>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin key, read from the file named on stdout on first start (empty on a
    /// restart).
    pub admin_key: String,
    /// The demo reseller's key printed on first start (empty on a restart or without the
    /// demo reseller).
    pub demo_key: String,
    /// The data directory (removed when the gateway is dropped).
    pub data_dir: tempfile::TempDir,
    /// Everything the process printed to stdout.
    pub stdout: Vec<String>,
    /// Where its log (stderr) goes, when captured (see [`GatewayBuilder::capture_log`]).
    log: Option<(tempfile::TempDir, PathBuf)>,
    /// The gateway's `/openapi.json`, read on first use; every response is checked
    /// against it.
    spec: std::sync::OnceLock<SpecCheck>,
    agent: ureq::Agent,
    bin: PathBuf,
    /// The PostgreSQL database it runs on (`None`: sled in its data directory); another
    /// node joins it with [`GatewayBuilder::postgres_database`].
    pub store_url: Option<String>,
}

impl GatewayBuilder {
    /// A gateway running binary `bin` (pass `env!("CARGO_BIN_EXE_simgate")`).
    pub fn new(bin: &str) -> GatewayBuilder {
        GatewayBuilder {
            bin: PathBuf::from(bin),
            plugins: vec!["sandbox".into()],
            grants: None,
            secrets: None,
            config: None,
            env: Vec::new(),
            data_dir: None,
            capture_log: false,
            demo: true,
            store: match std::env::var(TEST_STORE_URL_VAR) {
                Ok(url) if !url.is_empty() => StoreChoice::FreshPostgres(url),
                _ => StoreChoice::Sled,
            },
        }
    }

    /// Run on a fresh PostgreSQL database of its own, created on the server `url` reaches
    /// (a `postgresql://` URL naming a database to connect to for `CREATE DATABASE`).
    pub fn postgres(mut self, url: &str) -> Self {
        self.store = StoreChoice::FreshPostgres(url.into());
        self
    }

    /// Run on PostgreSQL database `url` as it is, which another gateway has started on
    /// (its first start is done: no first-start lines are waited for, and the admin and
    /// demo keys are the other gateway's). Nodes sharing a database must share its key
    /// files too: see [`GatewayBuilder::keys_from`].
    pub fn postgres_database(mut self, url: &str) -> Self {
        self.store = StoreChoice::SharedPostgres(url.into());
        self
    }

    /// Use the key files (`*.key`: API key pepper, master key, audit key) of `other`'s
    /// data directory, as every node on one database must.
    pub fn keys_from(mut self, other: &Gateway) -> Self {
        let dir = self
            .data_dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        for name in ["pepper.key", "master.key", "audit.key"] {
            let from = other.data_dir.path().join(name);
            let to = dir.path().join(name);
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {from:?}: {e}"));
        }
        self.data_dir = Some(dir);
        self
    }

    /// Start without `--demo`: no demo reseller on first start (the gateway's default;
    /// most tests use the demo reseller, so the builder asks for it unless told not to).
    pub fn no_demo(mut self) -> Self {
        self.demo = false;
        self
    }

    /// Load these plugins instead of just the sandbox.
    pub fn plugins(mut self, names: &[&str]) -> Self {
        self.plugins = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Contents of the grants file.
    pub fn grants(mut self, toml: &str) -> Self {
        self.grants = Some(toml.into());
        self
    }

    /// Contents of the secrets file.
    pub fn secrets(mut self, toml: &str) -> Self {
        self.secrets = Some(toml.into());
        self
    }

    /// Contents of a config file passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.into());
        self
    }

    /// An extra environment variable for the process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Write the process's log (stderr) to a file, outside the data directory, for
    /// [`Gateway::log`], instead of passing it through.
    pub fn capture_log(mut self) -> Self {
        self.capture_log = true;
        self
    }

    /// Reuse an existing data directory (restart tests).
    pub fn data_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Start the process and wait until it is ready (`/readyz` answers 200) and, on a
    /// fresh data directory, has printed its first-start lines.
    pub fn start(self) -> Gateway {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        // A data directory with a database is taken for a restart: no first-start lines
        // are waited for.
        let (store_url, first_start) = choose_store(&self.store, data_dir.path());
        let plugins_dir = data_dir.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        for p in &self.plugins {
            if !plugins_dir.join(p).exists() {
                pack(&self.bin, p, &plugins_dir);
            }
        }
        if let Some(g) = &self.grants {
            std::fs::write(data_dir.path().join("grants.toml"), g).unwrap();
        }
        if let Some(s) = &self.secrets {
            std::fs::write(data_dir.path().join("secrets.toml"), s).unwrap();
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path());
        if self.demo {
            cmd.arg("--demo");
        }
        // The harness's resellers use test keys: unless a test says otherwise, every
        // plugin it loads is a sandbox they may order from.
        let mut config = self.config.clone().unwrap_or_default();
        if !config.contains("[test_mode]") {
            config.push_str("\n[test_mode]\nsandbox_plugins = [\"*\"]\n");
        }
        if let Some(url) = &store_url {
            assert!(
                !config.contains("[store]"),
                "a PostgreSQL gateway's config has [store]"
            );
            config.push_str(&format!(
                "\n[store]\nbackend = \"postgres\"\nurl = {}\n",
                Value::from(url.as_str())
            ));
        }
        let path = data_dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        cmd.arg("--config").arg(path);
        let log = self.capture_log.then(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("simgate.log");
            (dir, path)
        });
        let stderr = match &log {
            Some((_, path)) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        };
        cmd.env(
            "SIMGATE_LOG",
            std::env::var("SIMGATE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(stderr);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting simgate serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .strip_prefix("simgate listening on ")
                        .map(str::to_string);
                    lines.push(line);
                    if let Some(b) = found {
                        break b;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("simgate did not start listening; stdout so far: {lines:?}");
                }
            }
        };
        let agent = sim::agent(Duration::from_secs(60));
        // The port is bound before the store opens: wait for readiness, and for the
        // first-start lines, which are printed before the gateway becomes ready.
        let expected: &[&str] = match (first_start, self.demo) {
            (false, _) => &[],
            (true, false) => &[ADMIN_KEY_LINE],
            (true, true) => &[ADMIN_KEY_LINE, DEMO_KEY_LINE],
        };
        let mut ready = false;
        loop {
            while let Ok(line) = rx.try_recv() {
                lines.push(line);
            }
            let printed = expected
                .iter()
                .all(|prefix| lines.iter().any(|l| l.starts_with(prefix)));
            ready = ready || is_ready(&agent, &base);
            if ready && printed {
                break;
            }
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                panic!("simgate did not become ready; stdout so far: {lines:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let key_after = |prefix: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_default()
                .to_string()
        };
        let admin_key = admin_key_file(&lines)
            .map(|path| {
                std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading the admin key from {path:?}: {e}"))
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        Gateway {
            admin_key,
            demo_key: key_after(DEMO_KEY_LINE),
            child: std::sync::Mutex::new(Some(child)),
            base,
            data_dir,
            stdout: lines,
            log,
            spec: std::sync::OnceLock::new(),
            agent,
            bin: self.bin,
            store_url,
        }
    }
}

/// The PostgreSQL database a gateway on `data_dir` runs on (`None`: sled), and whether
/// this is the first start of its store (the gateway then prints its first-start lines).
fn choose_store(choice: &StoreChoice, data_dir: &Path) -> (Option<String>, bool) {
    let remembered = data_dir.join(STORE_URL_FILE);
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return (Some(url), false);
    }
    let (url, first_start) = match choice {
        StoreChoice::Sled => return (None, !data_dir.join("db").exists()),
        StoreChoice::SharedPostgres(url) => (url.clone(), false),
        StoreChoice::FreshPostgres(server) => (create_database(server), true),
    };
    std::fs::write(&remembered, &url).unwrap();
    (Some(url), first_start)
}

/// Create a fresh database on the server `server_url` reaches; its URL.
pub fn create_database(server_url: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!(
        "simgate_test_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    psql(server_url, &format!("CREATE DATABASE {name}"));
    with_database(server_url, &name)
}

/// Run one SQL statement with `psql` against `url` (panics, with psql's words, if it fails).
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new(psql_program())
        .args([
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `psql`.
fn psql_program() -> PathBuf {
    pg_program("psql")
}

/// PostgreSQL's program `name` on the PATH, or the newest installed server's (Debian
/// keeps those off the PATH).
fn pg_program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if on_path {
        return PathBuf::from(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// `url` (a `postgresql://` URL) naming database `name` instead of its own.
pub fn with_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").expect("a postgresql:// URL") + 3;
    let (head, rest) = url.split_at(scheme_end);
    let query_at = rest.find('?').unwrap_or(rest.len());
    let (path, query) = rest.split_at(query_at);
    let authority = path.split('/').next().unwrap_or_default();
    format!("{head}{authority}/{name}{query}")
}

/// The PostgreSQL server named by `SIMGATE_TEST_PG_URL`, or `None` after printing why a
/// test that needs one is skipped.
pub fn test_pg_url(test: &str) -> Option<String> {
    match std::env::var(TEST_PG_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipping {test}: {TEST_PG_URL_VAR} is not set (tests/pg/cluster.sh starts a server)"
            );
            None
        }
    }
}

/// Whether the gateway at `base` answers `/readyz` with 200 (read without the spec check:
/// the spec itself is not served before the gateway is ready).
fn is_ready(agent: &ureq::Agent, base: &str) -> bool {
    agent
        .get(format!("{base}/readyz"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}

/// The admin key file named on a first start's stdout, if it was.
pub fn admin_key_file(stdout: &[String]) -> Option<PathBuf> {
    stdout.iter().find_map(|l| {
        let rest = l.strip_prefix(ADMIN_KEY_LINE)?;
        let end = rest.rfind(" (readable only by you")?;
        Some(PathBuf::from(&rest[..end]))
    })
}

/// A response: status, headers, parsed JSON body (or `Value::Null`), raw bytes.
#[derive(Debug, Clone)]
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body as JSON, or `Null` when not JSON.
    pub json: Value,
    /// Raw body.
    pub bytes: Vec<u8>,
}

impl Resp {
    /// The raw body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Gateway {
    /// The binary this gateway runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().as_ref().expect("running").id()
    }

    /// Resident memory of the process, in bytes (Linux `/proc`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status")
            * 1024
    }

    /// The log written so far (needs [`GatewayBuilder::capture_log`]).
    pub fn log(&self) -> String {
        let (_, path) = self.log.as_ref().expect("start with .capture_log()");
        String::from_utf8_lossy(&std::fs::read(path).expect("reading the log")).into_owned()
    }

    /// The plugins folder.
    pub fn plugins_dir(&self) -> PathBuf {
        self.data_dir.path().join("plugins")
    }

    /// Send a request. `key` is the bearer key (or `None`); `body` is sent as JSON.
    pub fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Resp {
        self.raw(
            method,
            path,
            key,
            &[],
            body.map(|b| b.to_string().into_bytes()),
            Some("application/json"),
        )
    }

    /// Send a request with full control over headers and body bytes.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Resp {
        self.try_raw(method, path, key, headers, body, content_type)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like [`Gateway::raw`], but a transport failure (the server died) is an `Err`.
    pub fn try_raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<Resp, String> {
        let url = format!("{}{}", self.base, path);
        let mut req = http::Request::builder().method(method).uri(&url);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let (Some(ct), Some(_)) = (content_type, &body) {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let result = match body {
            Some(b) => self.agent.run(req.body(b).unwrap()),
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = result.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let resp = Resp {
            status,
            headers,
            json,
            bytes,
        };
        if path != "/openapi.json" {
            let spec = self.spec.get_or_init(|| {
                let doc = self
                    .try_raw("GET", "/openapi.json", None, &[], None, None)
                    .expect("reading /openapi.json");
                SpecCheck::new(doc.json)
            });
            if let Err(e) = spec.check(method, path, &resp) {
                panic!("{method} {path} answered {status} off its spec: {e}");
            }
        }
        Ok(resp)
    }

    /// A new reseller with a test-mode key and (optionally) USD credit, through the admin
    /// API; returns (reseller id, key).
    pub fn new_reseller(&self, markup_bps: u32, credit: Option<i64>) -> (String, String) {
        let admin = |path: &str, body: Value| {
            let r = self.call("POST", path, Some(&self.admin_key), Some(&body));
            assert_eq!(r.status, 201, "POST {path}: {:?}", r.json);
            r
        };
        let r = admin(
            "/v1/admin/resellers",
            json!({"name": "Acme Travel", "markup_bps": markup_bps}),
        );
        let id = r.json["id"].as_str().unwrap().to_string();
        let k = admin(
            &format!("/v1/admin/resellers/{id}/keys"),
            json!({"role": "reseller", "mode": "test"}),
        );
        if let Some(amount) = credit {
            let c = self.credit(&id, &json!({"amount": amount, "currency": "USD"}));
            assert_eq!(c.status, 201, "credit: {:?}", c.json);
        }
        (id, k.json["key"].as_str().unwrap().to_string())
    }

    /// Credit reseller `id`'s test balance (unless `body` names a `mode`) as the admin,
    /// with a fresh `Idempotency-Key`.
    pub fn credit(&self, id: &str, body: &Value) -> Resp {
        // The harness's resellers order with test keys, which spend the test balance.
        let mut body = body.clone();
        if let Some(fields) = body.as_object_mut() {
            fields.entry("mode").or_insert_with(|| json!("test"));
        }
        let body = &body;
        self.post_idem_as(
            &self.admin_key,
            &format!("/v1/admin/resellers/{id}/credits"),
            body,
            &unique_key(),
        )
    }

    /// Every item of the list at `path` (orders, ledger entries ...) as `key` sees it,
    /// following `starting_after` page by page.
    pub fn all_pages(&self, key: &str, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let url = match &after {
                Some(a) => format!("{path}?limit=100&starting_after={a}"),
                None => format!("{path}?limit=100"),
            };
            let page = self.call("GET", &url, Some(key), None);
            assert_eq!(page.status, 200, "GET {url}: {:?}", page.json);
            let items = page.json["data"].as_array().unwrap().clone();
            after = items.last().map(|i| i["id"].as_str().unwrap().to_string());
            out.extend(items);
            if page.json["has_more"] != true {
                return out;
            }
        }
    }

    /// Place orders as `key` (`products` in turn from `first`, each under a new
    /// `Idempotency-Key`) until `stop`, handing each acknowledged order's id to
    /// `acknowledged`; returns whether the gateway stopped answering (killed under load).
    pub fn keep_ordering(
        &self,
        key: &str,
        products: &[&str],
        first: usize,
        stop: &std::sync::atomic::AtomicBool,
        refusals: Refusals,
        mut acknowledged: impl FnMut(String),
    ) -> bool {
        let mut i = first;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let body = json!({"product_id": products[i % products.len()]});
            i += 1;
            match self.try_raw(
                "POST",
                "/v1/orders",
                Some(key),
                &[("idempotency-key", &unique_key())],
                Some(body.to_string().into_bytes()),
                Some("application/json"),
            ) {
                Ok(r) if r.status == 201 => {
                    acknowledged(r.json["id"].as_str().unwrap().to_string())
                }
                Ok(r) if r.status >= 500 && refusals == Refusals::WhileDown => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(r) => panic!("unexpected {} {:?}", r.status, r.json),
                Err(_) => return true,
            }
        }
        false
    }

    /// Every order of `key`, once each is final (fulfilled or failed); panics, naming the
    /// ones still open, if that takes longer than `within`.
    pub fn settle_all(&self, key: &str, within: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let orders = self.all_pages(key, "/v1/orders");
            let open: Vec<_> = orders
                .iter()
                .filter(|o| o["status"] != "fulfilled" && o["status"] != "failed")
                .map(|o| (o["id"].clone(), o["status"].clone()))
                .collect();
            if open.is_empty() {
                return orders;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "orders still unfinished: {open:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// After `what` (a crash, a node killed...): every order in `acknowledged` is there,
    /// every order of `key` settles within `within`, and the ledger adds up
    /// ([`Gateway::assert_ledger_settles`]). Returns the orders.
    pub fn assert_acknowledged_kept_and_settled<'a>(
        &self,
        key: &str,
        acknowledged: impl IntoIterator<Item = &'a String>,
        what: &str,
        within: Duration,
    ) -> Vec<Value> {
        let mut count = 0;
        for id in acknowledged {
            let r = self.call("GET", &format!("/v1/orders/{id}"), Some(key), None);
            assert_eq!(
                r.status, 200,
                "acknowledged order {id} is missing after {what}"
            );
            count += 1;
        }
        let orders = self.settle_all(key, within);
        assert!(orders.len() >= count);
        self.assert_ledger_settles(key, &orders);
        orders
    }

    /// The ledger of `key`'s account after every one of `orders` is final: per order one
    /// hold and exactly one capture (fulfilled, with its eSIMs) or release (failed), no
    /// hold left open, and the balance equal to the sum of the entries.
    pub fn assert_ledger_settles(&self, key: &str, orders: &[Value]) {
        let entries = self.all_pages(key, "/v1/balance/transactions");
        let count = |kind: &str, order: &Value| {
            entries
                .iter()
                .filter(|e| e["type"] == kind && &e["order_id"] == order)
                .count()
        };
        for o in orders {
            let id = &o["id"];
            assert_eq!(count("hold", id), 1, "order {id}: one hold");
            let settled = (count("capture", id), count("release", id));
            match o["status"].as_str().unwrap() {
                "fulfilled" => {
                    assert_eq!(settled, (1, 0), "order {id}: captured once");
                    assert!(!o["esims"].as_array().unwrap().is_empty(), "order {id}");
                }
                _ => assert_eq!(settled, (0, 1), "order {id}: released once"),
            }
        }
        let sum = |kind: &str| {
            entries
                .iter()
                .filter(|e| e["type"] == kind)
                .map(|e| e["amount"].as_i64().unwrap())
                .sum::<i64>()
        };
        let open_holds = sum("hold") - sum("capture") - sum("release");
        assert_eq!(
            open_holds, 0,
            "no hold is left open once every order settled"
        );
        let (available, held) = self.balance_of(key);
        assert_eq!(held, 0);
        assert_eq!(
            available,
            sum("credit") - sum("capture") + sum("refund"),
            "the balance is the sum of the entries"
        );
    }

    /// Place an order as `key` (a fresh `Idempotency-Key`); its id. Panics unless accepted.
    pub fn place_order_as(&self, key: &str, body: &Value) -> String {
        let r = self.post_idem_as(key, "/v1/orders", body, &unique_key());
        assert!([200, 201, 202].contains(&r.status), "{:?}", r.json);
        r.json["id"].as_str().expect("an order id").to_string()
    }

    /// Order `id` as `key` sees it.
    pub fn order_as(&self, key: &str, id: &str) -> Value {
        let r = self.call("GET", &format!("/v1/orders/{id}"), Some(key), None);
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json
    }

    /// Order `id` as `key` sees it, once `done` holds of it (within 20 s).
    pub fn wait_order_as(&self, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("order {id}"), || {
            Some(self.order_as(key, id)).filter(|o| done(o))
        })
    }

    /// The USD balance `key` sees: (available, held).
    pub fn balance_of(&self, key: &str) -> (i64, i64) {
        let b = self.call("GET", "/v1/balance", Some(key), None);
        assert_eq!(b.status, 200, "{:?}", b.json);
        let usd = b.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["currency"] == "USD")
            .cloned()
            .unwrap_or(json!({"available": 0, "held": 0}));
        (
            usd["available"].as_i64().unwrap(),
            usd["held"].as_i64().unwrap(),
        )
    }

    /// `GET` as the demo reseller.
    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, Some(&self.demo_key), None)
    }

    /// `POST` JSON as the demo reseller.
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.call("POST", path, Some(&self.demo_key), Some(body))
    }

    /// `POST` JSON as the demo reseller with an `Idempotency-Key`.
    pub fn post_idem(&self, path: &str, body: &Value, idempotency_key: &str) -> Resp {
        self.post_idem_as(&self.demo_key, path, body, idempotency_key)
    }

    /// `POST` JSON with `key` and an `Idempotency-Key`.
    pub fn post_idem_as(&self, key: &str, path: &str, body: &Value, idempotency_key: &str) -> Resp {
        self.raw(
            "POST",
            path,
            Some(key),
            &[("idempotency-key", idempotency_key)],
            Some(body.to_string().into_bytes()),
            Some("application/json"),
        )
    }

    /// Place an order as the demo reseller with a fresh `Idempotency-Key`.
    pub fn order(&self, body: &Value) -> Resp {
        self.post_idem("/v1/orders", body, &unique_key())
    }

    /// Send SIGKILL (no flush, no graceful shutdown) and wait for the process to die.
    pub fn sigkill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then hand over the data directory for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        self.sigkill();
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap())
    }

    /// Send SIGTERM and wait for the process to exit; returns its exit status and the
    /// data directory (to start again on).
    pub fn terminate(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let mut c = self.child.lock().unwrap().take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let status = c.wait().expect("waiting for simgate");
        let dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        (status, dir)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Checks responses against an OpenAPI 3.1 document: the body of every JSON response must
/// validate against the schema the document declares for its route and status (problem
/// details for any error), or the document is wrong.
pub struct SpecCheck {
    doc: Value,
    validators:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

impl SpecCheck {
    /// Checks against `doc`.
    pub fn new(doc: Value) -> SpecCheck {
        SpecCheck {
            doc,
            validators: Default::default(),
        }
    }

    /// The path template of the document that `path` (query stripped) falls under.
    fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        self.doc["paths"].as_object()?.keys().find_map(|t| {
            let pattern: Vec<&str> = t.split('/').collect();
            (pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p.starts_with('{') || p == s))
            .then(|| t.clone())
        })
    }

    /// Check one response to `method path`.
    pub fn check(&self, method: &str, path: &str, resp: &Resp) -> Result<(), String> {
        let content_type = resp.header("content-type").unwrap_or("");
        let is_json = content_type.starts_with("application/json")
            || content_type.starts_with("application/problem+json");
        let schema = if resp.status >= 400 {
            if content_type != "application/problem+json" {
                return Err(format!("an error answered as {content_type:?}"));
            }
            "#/components/schemas/Problem".to_string()
        } else {
            let template = self
                .template(path)
                .ok_or_else(|| "the path is not in the document".to_string())?;
            let op = &self.doc["paths"][&template][method.to_lowercase()];
            let declared = &op["responses"][resp.status.to_string()];
            if !declared.is_object() {
                return Err(format!("status {} is not documented", resp.status));
            }
            let Some(content) = declared["content"].as_object() else {
                return Ok(());
            };
            if !content.keys().any(|k| content_type.starts_with(k.as_str())) {
                return Err(format!(
                    "content type {content_type:?} is not among {:?}",
                    content.keys().collect::<Vec<_>>()
                ));
            }
            if !is_json {
                return Ok(());
            }
            let ct = content
                .keys()
                .find(|k| content_type.starts_with(k.as_str()))
                .expect("found above");
            content[ct]["schema"]["$ref"]
                .as_str()
                .ok_or("the response schema is not a reference")?
                .to_string()
        };
        let validator = self.validator(&schema)?;
        let errors: Vec<String> = validator
            .iter_errors(&resp.json)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{schema}: {}; body {}",
                errors.join("; "),
                resp.json
            ))
        }
    }

    fn validator(&self, reference: &str) -> Result<std::sync::Arc<jsonschema::Validator>, String> {
        let mut validators = self.validators.lock().unwrap();
        if let Some(v) = validators.get(reference) {
            return Ok(v.clone());
        }
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"].clone(),
            "$ref": reference,
        });
        let validator = std::sync::Arc::new(
            jsonschema::validator_for(&root).map_err(|e| format!("schema {reference}: {e}"))?,
        );
        validators.insert(reference.to_string(), validator.clone());
        Ok(validator)
    }
}

/// A fresh idempotency key, unique across threads and processes.
pub fn unique_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a digit string passes the Luhn check (independent of the gateway's own).
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// What `probe` finds, polled every 50 ms for up to 20 s; panics naming `what` if nothing.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `value` in the forms a leak would most likely take: as is, base64 and hex.
pub fn leak_forms(value: &str) -> [String; 3] {
    use base64::Engine as _;
    [
        value.to_string(),
        base64::engine::general_purpose::STANDARD.encode(value),
        hex::encode(value),
    ]
}

/// Assert that no text in `seen` (named, for the message) holds `value` in any of its
/// [`leak_forms`].
pub fn assert_nowhere(value: &str, seen: &[(&str, String)]) {
    for form in leak_forms(value) {
        for (what, text) in seen {
            assert!(!text.contains(form.as_str()), "the {what} holds {form}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, content_type: &str, json: Value) -> Resp {
        Resp {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            bytes: json.to_string().into_bytes(),
            json,
        }
    }

    #[test]
    fn responses_off_the_document_are_caught() {
        let doc = json!({
            "paths": {"/v1/things/{id}": {"get": {"responses": {"200": {"content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}}}}},
            "components": {"schemas": {
                "Thing": {"type": "object", "properties": {"id": {"type": "string"}},
                          "required": ["id"], "additionalProperties": false},
                "Problem": {"type": "object", "required": ["code"]}}}
        });
        let check = SpecCheck::new(doc);
        let ok = resp(200, "application/json", json!({"id": "t1"}));
        assert!(check.check("GET", "/v1/things/t1?x=1", &ok).is_ok());
        for (what, bad) in [
            (
                "an extra field",
                resp(200, "application/json", json!({"id": "t1", "x": 1})),
            ),
            (
                "a wrong type",
                resp(200, "application/json", json!({"id": 5})),
            ),
            (
                "an undocumented status",
                resp(201, "application/json", json!({"id": "t1"})),
            ),
            ("another content type", resp(200, "text/plain", json!(null))),
            (
                "an error that is no problem",
                resp(404, "application/json", json!({})),
            ),
            (
                "a problem without its code",
                resp(404, "application/problem+json", json!({})),
            ),
        ] {
            assert!(check.check("GET", "/v1/things/t1", &bad).is_err(), "{what}");
        }
        assert!(
            check.check("GET", "/v1/other", &ok).is_err(),
            "an undocumented path"
        );
    }
}
