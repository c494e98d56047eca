//! `simgate admin ...`: account and status commands through the admin API of a running
//! gateway (the offline `simgate reseller`/`keys` commands need it stopped).
//!
//! The admin key comes from a file (`--key-file`, e.g. the `admin-key.txt` of the first
//! start) or from `SIMGATE_ADMIN_KEY`, never from a flag: command lines are visible to
//! every user of the machine. Answers are printed as short summaries, or as the API's own
//! JSON with `--json`; an error answer is `error: <title>: <detail>` and exit status 1.

pub(crate) mod client;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

use simgate::domain::clock::rfc3339;
use simgate::domain::ids::{KeyId, ResellerId};

use client::{AdminClient, Answer};

/// The longest key file read: a key is under a hundred bytes.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// `simgate admin` flags and command.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// The gateway's address.
    #[arg(
        long,
        global = true,
        env = "SIMGATE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// File holding an admin API key (the first start writes DATA_DIR/admin-key.txt).
    /// Without it, the key is read from the environment variable SIMGATE_ADMIN_KEY.
    #[arg(long, global = true, env = "SIMGATE_ADMIN_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

/// What to do.
#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Reseller accounts.
    #[command(subcommand)]
    Reseller(ResellerAdmin),
    /// Resellers' API keys.
    #[command(subcommand)]
    Keys(KeysAdmin),
    /// Plugin status: what serves, which version, the last load error.
    Plugins,
    /// The audit log of security events, newest first.
    Audit {
        /// Entries to show, 1 to 100.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only this action, e.g. auth.failed.
        #[arg(long)]
        action: Option<String>,
        /// Only entries about this reseller (rsl_...).
        #[arg(long)]
        reseller: Option<ResellerId>,
        /// Entries older than this seq (the next page).
        #[arg(long)]
        starting_after: Option<u64>,
    },
}

/// `simgate admin reseller ...`.
#[derive(clap::Subcommand)]
enum ResellerAdmin {
    /// Create a reseller.
    Create {
        /// Company name.
        #[arg(long)]
        name: String,
        /// Markup over wholesale in basis points (1500 = 15%).
        #[arg(long, default_value_t = 0)]
        markup_bps: u32,
    },
    /// Credit a reseller's prepaid balance. Safe to retry with the same
    /// --idempotency-key: a credit is posted once.
    Credit {
        /// Reseller id (rsl_...).
        #[arg(long)]
        reseller: ResellerId,
        /// Amount in minor units (cents).
        #[arg(long)]
        amount: i64,
        /// ISO 4217 currency.
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Your reference, shown on the reseller's transaction.
        #[arg(long)]
        note: Option<String>,
        /// Which balance: live, or test (the one test-mode keys spend).
        #[arg(long, default_value = "live")]
        mode: String,
        /// The key of an earlier attempt, to retry it (default: a new one, printed).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List every reseller.
    List,
}

/// `simgate admin keys ...`.
#[derive(clap::Subcommand)]
enum KeysAdmin {
    /// Create an API key for a reseller; the key is shown once.
    Create {
        /// Reseller id (rsl_...).
        #[arg(long)]
        reseller: ResellerId,
        /// reseller or reseller_readonly.
        #[arg(long, default_value = "reseller")]
        role: String,
        /// live or test.
        #[arg(long, default_value = "live")]
        mode: String,
        /// Write the key to this new file (readable only by you) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke an API key now.
    Revoke {
        /// Key id (key_...).
        id: KeyId,
    },
}

/// Run an admin command against the gateway.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let key = admin_key(args.key_file.as_deref())?;
    let client = AdminClient::new(&args.url, &key)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = Output { json: args.json };
    rt.block_on(async {
        match args.command {
            AdminCommand::Reseller(cmd) => reseller(&client, &out, cmd).await,
            AdminCommand::Keys(cmd) => keys(&client, &out, cmd).await,
            AdminCommand::Plugins => plugins(&client, &out).await,
            AdminCommand::Audit {
                limit,
                action,
                reseller,
                starting_after,
            } => {
                let mut query = vec![("limit", limit.to_string())];
                query.extend(action.map(|a| ("action", a)));
                query.extend(reseller.map(|r| ("reseller", r.to_string())));
                query.extend(starting_after.map(|s| ("starting_after", s.to_string())));
                audit(&client, &out, &query).await
            }
        }
    })
}

/// The admin key: from `key_file`, else from `SIMGATE_ADMIN_KEY`.
pub(crate) fn admin_key(key_file: Option<&Path>) -> anyhow::Result<String> {
    let key = match key_file {
        Some(path) => read_key_file(path)?,
        None => std::env::var("SIMGATE_ADMIN_KEY").map_err(|_| {
            anyhow::anyhow!(
                "no admin key: pass --key-file PATH (the first start wrote \
                 DATA_DIR/admin-key.txt) or set SIMGATE_ADMIN_KEY"
            )
        })?,
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        anyhow::bail!("the admin key is empty");
    }
    Ok(key)
}

/// Read a key file, warning when others may read it too.
fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the admin key from {}", path.display()))?;
    #[cfg(unix)]
    if let Ok(meta) = file.metadata() {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} is readable by others (mode {mode:o}); `chmod 600` it",
                path.display()
            );
        }
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .with_context(|| format!("{} does not hold a key", path.display()))?;
    Ok(text)
}

/// How answers are printed.
struct Output {
    /// The API's JSON as is.
    json: bool,
}

impl Output {
    /// Print `answer`: its JSON, or the summary `human` makes of it.
    fn print(&self, answer: &Answer, human: impl FnOnce(&Value)) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer.body).expect("a JSON value serialises")
            );
        } else {
            human(&answer.body);
        }
    }
}

async fn reseller(client: &AdminClient, out: &Output, cmd: ResellerAdmin) -> anyhow::Result<()> {
    match cmd {
        ResellerAdmin::Create { name, markup_bps } => {
            let body = json!({"name": name, "markup_bps": markup_bps});
            let answer = client
                .post("/v1/admin/resellers", Some(&body), None)
                .await?;
            out.print(&answer, |r| {
                println!(
                    "created reseller {} ({}, markup {} bps)",
                    text(&r["id"]),
                    text(&r["name"]),
                    r["markup_bps"]
                )
            });
        }
        ResellerAdmin::Credit {
            reseller,
            amount,
            currency,
            note,
            mode,
            idempotency_key,
        } => {
            let key = idempotency_key
                .unwrap_or_else(|| format!("cli-{}", ulid::Ulid::new().to_string().to_lowercase()));
            // Before sending: if the answer is lost, the retry needs this key.
            eprintln!("idempotency key {key} (to retry this credit: --idempotency-key {key})");
            let mut body = json!({"amount": amount, "currency": currency, "mode": mode});
            if let Some(note) = note {
                body["note"] = json!(note);
            }
            let path = format!("/v1/admin/resellers/{reseller}/credits");
            let answer = client.post(&path, Some(&body), Some(&key)).await?;
            out.print(&answer, |b| {
                let again = if answer.replayed {
                    " (already posted by an earlier attempt with this key: not credited again)"
                } else {
                    ""
                };
                println!(
                    "credited {reseller}'s {mode} balance{again}: available {} {cur}, held {} {cur} (minor units)",
                    b["available"],
                    b["held"],
                    cur = text(&b["currency"]),
                )
            });
        }
        ResellerAdmin::List => {
            let answer = client.get("/v1/admin/resellers").await?;
            out.print(&answer, |page| {
                let rows = page["data"].as_array().cloned().unwrap_or_default();
                if rows.is_empty() {
                    println!("no resellers");
                    return;
                }
                println!(
                    "{:<30} {:<10} {:<24} {:<7} NAME",
                    "ID", "MARKUP", "CREATED", "STATUS"
                );
                for r in rows {
                    let status = if r["closed_at_ms"].is_u64() {
                        "closed"
                    } else {
                        "open"
                    };
                    println!(
                        "{:<30} {:<10} {:<24} {:<7} {}",
                        text(&r["id"]),
                        format!("{} bps", r["markup_bps"]),
                        time(&r["created_at_ms"]),
                        status,
                        text(&r["name"]),
                    );
                }
            });
        }
    }
    Ok(())
}

async fn keys(client: &AdminClient, out: &Output, cmd: KeysAdmin) -> anyhow::Result<()> {
    match cmd {
        KeysAdmin::Create {
            reseller,
            role,
            mode,
            out: file,
        } => {
            // Created first: a file that exists refuses before a key is minted.
            let target = file
                .as_deref()
                .map(|path| super::secret_file::create(path).map(|f| (f, path)))
                .transpose()?;
            let body = json!({"role": role, "mode": mode});
            let path = format!("/v1/admin/resellers/{reseller}/keys");
            let answer = match client.post(&path, Some(&body), None).await {
                Ok(a) => a,
                Err(e) => {
                    if let Some((_, path)) = target {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            };
            let k = &answer.body;
            let summary = format!(
                "key {} for {} (role {}, mode {})",
                text(&k["id"]),
                text(&k["reseller_id"]),
                text(&k["role"]),
                text(&k["mode"])
            );
            match target {
                Some((f, path)) => {
                    super::secret_file::write(f, path, text(&k["key"]))?;
                    let mut shown = answer.body.clone();
                    if let Some(fields) = shown.as_object_mut() {
                        fields.remove("key");
                    }
                    out.print(
                        &Answer {
                            body: shown,
                            ..answer
                        },
                        |_| {
                            println!(
                                "{summary} written to {} (readable only by you)",
                                path.display()
                            )
                        },
                    );
                }
                None => out.print(&answer, |_| {
                    println!("{}", text(&k["key"]));
                    println!("{summary}: shown once, store it now");
                }),
            }
        }
        KeysAdmin::Revoke { id } => {
            let answer = client
                .post(&format!("/v1/admin/keys/{id}/revoke"), None, None)
                .await?;
            out.print(&answer, |k| println!("revoked {}", text(&k["id"])));
        }
    }
    Ok(())
}

async fn plugins(client: &AdminClient, out: &Output) -> anyhow::Result<()> {
    let answer = client.get("/v1/admin/plugins").await?;
    out.print(&answer, |page| {
        let rows = page["data"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            println!("no plugins (put plugin folders in the gateway's plugins folder)");
            return;
        }
        println!(
            "{:<20} {:<10} {:<10} {:<24} LAST ERROR",
            "ID", "STATE", "VERSION", "LOADED"
        );
        for p in rows {
            println!(
                "{:<20} {:<10} {:<10} {:<24} {}",
                text(&p["id"]),
                text(&p["state"]),
                or_dash(&p["version"]),
                p["loaded_at"]
                    .as_u64()
                    .map_or("-".into(), |s| rfc3339(s.saturating_mul(1000))),
                or_dash(&p["last_error"]),
            );
        }
    });
    Ok(())
}

async fn audit(client: &AdminClient, out: &Output, query: &[(&str, String)]) -> anyhow::Result<()> {
    let query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    let answer = client
        .get(&format!("/v1/admin/audit?{}", query.join("&")))
        .await?;
    out.print(&answer, |page| {
        let rows = page["data"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            println!("no entries");
            return;
        }
        println!(
            "{:>6} {:<24} {:<30} {:<24} {:<30} TARGET / DETAILS",
            "SEQ", "AT", "ACTOR", "ACTION", "RESELLER"
        );
        for e in &rows {
            println!(
                "{:>6} {:<24} {:<30} {:<24} {:<30} {} {}",
                e["seq"].as_u64().unwrap_or_default(),
                time(&e["at_ms"]),
                text(&e["actor"]),
                text(&e["action"]),
                or_dash(&e["reseller_id"]),
                or_dash(&e["target"]),
                e["details"].as_str().unwrap_or_default(),
            );
        }
        if page["has_more"] == true
            && let Some(last) = rows.last()
        {
            println!("more: --starting-after {}", last["seq"]);
        }
    });
    Ok(())
}

/// A string field, or empty.
fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A string field, or `-` when absent.
fn or_dash(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Milliseconds since the epoch as RFC 3339, or `-`.
fn time(v: &Value) -> String {
    v.as_u64().map_or("-".into(), rfc3339)
}

/// `s` safe as a query value: unreserved characters as they are, the rest `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("auth.failed"), "auth.failed");
        assert_eq!(percent_encode("a&b=c d"), "a%26b%3Dc%20d");
    }

    #[test]
    fn the_key_file_is_trimmed_and_must_hold_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "sgk_live_abc\n").unwrap();
        assert_eq!(admin_key(Some(&path)).unwrap(), "sgk_live_abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(admin_key(Some(&path)).is_err());
        assert!(admin_key(Some(&dir.path().join("missing"))).is_err());
    }
}
