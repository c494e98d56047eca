//! Operating the gateway, black box: Prometheus metrics, graceful shutdown on SIGTERM,
//! and the operator / integrator commands (`simgate plugin check`, `simgate plugin new`).

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use simgate_test_support::{Gateway, GatewayBuilder, Resp, json, pack, wasm_dir};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");

/// Place one order as the demo reseller with Idempotency-Key `key`.
fn order(gw: &Gateway, key: &str, product: &str) -> Resp {
    gw.post_idem("/v1/orders", &json!({ "product_id": product }), key)
}

fn plugin_status(gw: &Gateway, id: &str) -> simgate_test_support::Value {
    let r = gw.call("GET", "/v1/admin/plugins", Some(&gw.admin_key), None);
    r.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Metrics

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse Prometheus text format 0.0.4 strictly enough to catch what a scraper would
/// reject: names, label syntax and escapes, values, one TYPE per family before its
/// samples, no duplicate series, and histograms with cumulative buckets ending in `+Inf`
/// that equals `_count`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut series = HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(is_name(name, true), "bad metric name in {line:?}");
            if keyword == "TYPE" {
                let kind = parts.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line:?}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE of {name} given twice"
                );
            } else {
                assert_eq!(keyword, "HELP", "{line:?}");
            }
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "{line:?}");
        let (series_part, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series_part.split_once('{') {
            None => (series_part, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(is_name(&key, false), "bad label name {key:?} in {line:?}");
                    assert_eq!(chars.next(), Some('"'), "{line:?}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("unterminated label value") {
                            '"' => break,
                            '\\' => match chars.next() {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            '\n' => panic!("raw newline in {line:?}"),
                            c => value.push(c),
                        }
                    }
                    assert!(labels.insert(key, value).is_none(), "{line:?}");
                    match chars.next() {
                        None => {}
                        Some(',') => {}
                        other => panic!("unexpected {other:?} in {line:?}"),
                    }
                }
                (name, labels)
            }
        };
        assert!(is_name(name, true), "bad metric name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "{name} has no TYPE line before its samples"
        );
        assert!(
            series.insert(format!("{name}{labels:?}")),
            "duplicate series {line:?}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: per label set, cumulative buckets ending in +Inf == _count.
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut rest = s.labels.clone();
            let le = rest.remove("le").expect("bucket has le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            by_series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((le, s.value));
        }
        for (labels, buckets) in by_series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{labels}: buckets not cumulative: {buckets:?}"
            );
            let (le, inf) = *buckets.last().unwrap();
            assert!(le.is_infinite(), "{family}{labels}: no +Inf bucket");
            let count = samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                })
                .unwrap_or_else(|| panic!("{family}{labels}: no _count"));
            assert_eq!(inf, count.value, "{family}{labels}: +Inf != _count");
        }
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

#[test]
fn metrics_show_plugin_counters_and_reloads_in_prometheus_text() {
    let gw = GatewayBuilder::new(BIN)
        .plugins(&["sandbox", "trap"])
        .start();
    for i in 0..3 {
        let r = order(&gw, &format!("m-{i}"), "sandbox:SBX-US-5GB-30D");
        assert_eq!(r.status, 201, "{:?}", r.json);
    }
    let _ = order(&gw, "m-trap", "trap:trap-1");
    // A reload: the same package written again is a new generation.
    let before = plugin_status(&gw, "sandbox")["generation"]
        .as_u64()
        .unwrap();
    pack(gw.bin(), "sandbox", &gw.plugins_dir());
    let started = Instant::now();
    while plugin_status(&gw, "sandbox")["generation"]
        .as_u64()
        .unwrap()
        == before
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no reload");
        thread::sleep(Duration::from_millis(10));
    }
    // One more call after the reload counts into the same series.
    assert_eq!(order(&gw, "m-after", "sandbox:SBX-US-5GB-30D").status, 201);

    let r = gw.call("GET", "/metrics", Some(&gw.admin_key), None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.bytes.clone()).unwrap();
    let samples = parse_exposition(&text);
    let sandbox = [("plugin", "sandbox")];
    // Each order made at least a provision call; the counters span both generations.
    let calls = value(&samples, "simgate_plugin_calls_total", &sandbox);
    assert!(calls >= 4.0, "{calls}");
    assert_eq!(
        value(
            &samples,
            "simgate_plugin_call_duration_seconds_count",
            &sandbox
        ),
        calls
    );
    assert_eq!(
        value(
            &samples,
            "simgate_plugin_reloads_total",
            &[("plugin", "sandbox"), ("result", "ok")]
        ),
        2.0,
        "the first load and the reload"
    );
    assert_eq!(
        value(
            &samples,
            "simgate_plugin_reloads_total",
            &[("plugin", "sandbox"), ("result", "failed")]
        ),
        0.0
    );
    assert!(value(&samples, "simgate_plugin_generation", &sandbox) >= 2.0);
    assert_eq!(value(&samples, "simgate_plugin_serving", &sandbox), 1.0);
    assert_eq!(value(&samples, "simgate_plugin_in_flight", &sandbox), 0.0);
    assert_eq!(
        value(
            &samples,
            "simgate_plugin_info",
            &[("plugin", "sandbox"), ("version", "0.1.0")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "simgate_plugin_faults_total",
            &[("plugin", "trap"), ("kind", "trap")]
        ),
        1.0
    );
    assert!(
        value(
            &samples,
            "simgate_http_requests_total",
            &[
                ("route", "/v1/orders"),
                ("method", "POST"),
                ("status", "201")
            ]
        ) >= 4.0
    );
    // Order states: the three sandbox orders and the one after the reload were fulfilled,
    // the trap order failed.
    assert_eq!(
        value(&samples, "simgate_orders_total", &[("status", "fulfilled")]),
        4.0
    );
    assert_eq!(
        value(&samples, "simgate_orders_total", &[("status", "failed")]),
        1.0
    );
    assert_eq!(
        value(&samples, "simgate_orders_total", &[("status", "accepted")]),
        5.0
    );
    // Nothing identifying in any label: no keys, order ids or ICCIDs.
    for s in &samples {
        for v in s.labels.values() {
            assert!(
                !v.starts_with("sgk_") && !v.starts_with("ord_") && !v.starts_with("8999"),
                "{s:?}"
            );
        }
    }
}

#[test]
fn metrics_are_for_admin_keys_only() {
    let gw = GatewayBuilder::new(BIN).start();
    assert_eq!(gw.call("GET", "/metrics", None, None).status, 401);
    assert_eq!(
        gw.get("/metrics").status,
        404,
        "a reseller key sees no such route"
    );
    assert_eq!(
        gw.call("POST", "/metrics", Some(&gw.admin_key), None)
            .status,
        405
    );
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown

/// `POST /v1/orders` over a plain socket, so the test keeps no borrow of the gateway
/// while it terminates it. Returns the status code and the body.
fn order_over_socket(base: &str, key: &str, product: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let body = json!({ "product_id": product }).to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/orders HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\nidempotency-key: shutdown-1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn sigterm_lets_a_slow_request_in_flight_finish_then_exits_zero() {
    let gw = GatewayBuilder::new(BIN)
        .plugins(&["sandbox", "slow"])
        .start();
    let (base, key) = (gw.base.clone(), gw.demo_key.clone());
    let in_flight = thread::spawn(move || order_over_socket(&base, &key, "slow:slow-1"));
    // Wait until the slow provision call is running inside the plugin: a call in flight
    // for 200 ms straight (catalog calls, from the order or the background refresh, take
    // microseconds; the provision takes 2 s).
    let started = Instant::now();
    let mut in_flight_since: Option<Instant> = None;
    loop {
        let stats = &plugin_status(&gw, "slow")["stats"];
        if stats["in_flight"] == 1 {
            let since = *in_flight_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(200) {
                break;
            }
        } else {
            in_flight_since = None;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never in flight"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let (exit, _) = gw.terminate();
    let (status, body) = in_flight.join().unwrap();
    assert!(
        (200..300).contains(&status),
        "the request in flight at SIGTERM completes: {status} {body}"
    );
    assert!(!body.contains("\"failed\""), "{body}");
    assert_eq!(exit.code(), Some(0), "drained, then exited cleanly");
}

// ---------------------------------------------------------------------------------------
// plugin check / plugin new

fn simgate(args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("SIMGATE_LOG", "error");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.output().expect("running simgate")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn plugin_check_says_what_is_requested_granted_and_whether_it_links() {
    let plugins = tempfile::tempdir().unwrap();
    pack(Path::new(BIN), "sandbox", plugins.path());
    pack(Path::new(BIN), "undeclared", plugins.path());
    let sandbox = plugins.path().join("sandbox");
    let sandbox = sandbox.to_str().unwrap();

    let out = simgate(&["plugin", "check", sandbox], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("plugin sandbox 0.1.0"), "{stdout}");
    assert!(
        stdout.contains("secrets   SANDBOX_WEBHOOK_SECRET"),
        "{stdout}"
    );
    assert!(
        stdout.contains("granted (no --grants FILE given: nothing)"),
        "{stdout}"
    );
    let not_granted = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with("not granted:"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        not_granted(&stdout).contains("secret SANDBOX_WEBHOOK_SECRET"),
        "{stdout}"
    );
    // Requested egress links even ungranted: the policy refuses every host not granted.
    assert!(
        not_granted(&stdout).contains("outbound http://127.0.0.1:*"),
        "{stdout}"
    );
    assert!(stdout.contains("links: yes"), "{stdout}");

    let grants = plugins.path().join("grants.toml");
    std::fs::write(
        &grants,
        "[plugins.sandbox]\nsecrets = [\"SANDBOX_WEBHOOK_SECRET\"]\n",
    )
    .unwrap();
    let out = simgate(
        &[
            "plugin",
            "check",
            sandbox,
            "--grants",
            grants.to_str().unwrap(),
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        !not_granted(&stdout).contains("SANDBOX_WEBHOOK_SECRET"),
        "{stdout}"
    );
    let effective = stdout.split("effective").nth(1).unwrap();
    assert!(
        effective.contains("secrets   SANDBOX_WEBHOOK_SECRET"),
        "{stdout}"
    );

    // A plugin importing egress it was not granted: refused, with the reason.
    let undeclared = plugins.path().join("undeclared");
    let out = simgate(&["plugin", "check", undeclared.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("links: no"));
    assert!(
        text(&out.stderr).contains("no outbound host is granted"),
        "{}",
        text(&out.stderr)
    );

    // A component that is not the one the manifest names.
    let mut wasm = std::fs::read(plugins.path().join("sandbox/sandbox.wasm")).unwrap();
    wasm.truncate(wasm.len() - 1);
    std::fs::write(plugins.path().join("sandbox/sandbox.wasm"), wasm).unwrap();
    let out = simgate(&["plugin", "check", sandbox], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sha256"),
        "{}",
        text(&out.stderr)
    );
}

/// The workspace's target folder (the plugins are built under `TARGET/wasm`).
fn target_dir() -> PathBuf {
    wasm_dir().ancestors().nth(3).unwrap().to_path_buf()
}

/// `simgate plugin new x && cd x && cargo test`, then the gateway's own check accepts the
/// component that test built. Slow the first time (it builds the SDK natively and for
/// wasm32); later runs reuse `target/scaffold`.
#[test]
fn plugin_new_scaffolds_a_crate_whose_own_tests_pass_and_that_the_gateway_loads() {
    let work = tempfile::tempdir().unwrap();
    let out = simgate(&["plugin", "new", "x"], Some(work.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let crate_dir = work.path().join("x");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "tests/harness.rs",
        "Cargo.lock",
        "plugin.toml",
        "README.md",
    ] {
        assert!(crate_dir.join(file).exists(), "{file}");
    }
    // Refuses to overwrite, and refuses names that are not plugin ids.
    assert!(
        !simgate(&["plugin", "new", "x"], Some(work.path()))
            .status
            .success()
    );
    assert!(
        !simgate(&["plugin", "new", "Bad_Name"], Some(work.path()))
            .status
            .success()
    );

    let scaffold_target = target_dir().join("scaffold");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let out = Command::new(cargo)
        .arg("test")
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &scaffold_target)
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .output()
        .expect("running cargo test in the scaffold");
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "cargo test in the scaffold failed:\n{log}"
    );
    assert!(
        log.contains("describe_matches_the_manifest ... ok"),
        "{log}"
    );
    assert!(
        log.contains("the_plugin_runs_in_the_real_gateway_runtime ... ok"),
        "{log}"
    );

    // `simgate plugin build` builds and packs it in one step (reusing the component its
    // harness test built into the crate's target/harness), and it loads into the
    // gateway's runtime.
    let plugins = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["plugin", "build", "--out"])
        .arg(plugins.path())
        .arg(&crate_dir)
        .env("SIMGATE_LOG", "error")
        .env("CARGO_TARGET_DIR", crate_dir.join("target/harness"))
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .output()
        .expect("running simgate plugin build");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("packed x 0.1.0"),
        "{}",
        text(&out.stdout)
    );
    assert!(plugins.path().join("x/x.wasm").exists());
    let out = simgate(
        &[
            "plugin",
            "check",
            plugins.path().join("x").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("links: yes"));
}
