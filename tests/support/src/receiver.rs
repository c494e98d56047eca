//! A webhook receiver for black-box tests: a real HTTP/1.1 server on a loopback port that
//! records every request it gets and answers with a status the test sets (and, for the
//! Standard Webhooks check, the project-independent `standardwebhooks` Python library,
//! installed into a virtualenv under the target directory on first use).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::http1;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lowercased, with their values.
    pub headers: BTreeMap<String, String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A loopback webhook receiver; stops with the test process.
pub struct Receiver {
    port: u16,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Start one answering 204.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(204));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (status.clone(), got.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, g) = (s.clone(), g.clone());
                std::thread::spawn(move || serve(stream, &s, &g));
            }
        });
        Receiver { port, status, got }
    }

    /// Its URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer every request from now on with `status`.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `n` requests arrived (panics after `within`).
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} deliveries expected within {within:?}, got {}: {got:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Webhook deliveries are small; this only keeps a runaway sender from exhausting memory.
const MAX_BODY: usize = 16 * 1024 * 1024;

fn serve(stream: TcpStream, status: &AtomicU16, got: &Mutex<Vec<Received>>) {
    let request = match http1::read_request(&stream, MAX_BODY) {
        Ok(request) => request,
        Err(http1::ReadError::Gone) => return,
        Err(http1::ReadError::Bad(code, message)) => {
            return http1::respond(&stream, code, Some("text/plain"), message.as_bytes());
        }
    };
    let answered = status.load(Ordering::SeqCst);
    got.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Received {
            headers: request.headers,
            body: request.body,
            answered,
        });
    http1::respond(&stream, answered, None, b"ok");
}

/// A Python with the `standardwebhooks` library (PyPI), in a virtualenv under the target
/// directory, made on first use.
pub fn standardwebhooks_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = PathBuf::from(env!("SIMGATE_TARGET_DIR")).join("pyenv-standardwebhooks");
            let python = venv.join("bin").join("python");
            let ready = venv.join("ready");
            if !ready.exists() {
                let run = |cmd: &mut Command| {
                    let out = cmd.output().expect("running python3");
                    assert!(
                        out.status.success(),
                        "{cmd:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                };
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
                run(Command::new(&python).args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "standardwebhooks>=1.1,<2",
                ]));
                std::fs::write(&ready, b"").unwrap();
            }
            python
        })
        .clone()
}

/// Verify every delivery in `received` with the `standardwebhooks` library and `secret`;
/// returns each delivery's verified payload (panics on the first it rejects).
pub fn verify_with_standardwebhooks(secret: &str, received: &[Received]) -> Vec<serde_json::Value> {
    let deliveries: Vec<serde_json::Value> = received
        .iter()
        .map(|r| {
            serde_json::json!({
                "headers": {
                    "webhook-id": r.header("webhook-id"),
                    "webhook-timestamp": r.header("webhook-timestamp"),
                    "webhook-signature": r.header("webhook-signature"),
                },
                "body": String::from_utf8(r.body.clone()).expect("UTF-8 body"),
            })
        })
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, deliveries = sys.argv[1], json.load(sys.stdin)
hook = Webhook(secret)
print(json.dumps([hook.verify(d["body"], d["headers"]) for d in deliveries]))
"#;
    let mut child = Command::new(standardwebhooks_python())
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the verifier");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&deliveries).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "standardwebhooks rejected a delivery: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the verifier's JSON")
}
