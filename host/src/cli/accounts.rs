//! `simgate reseller ...` and `simgate keys ...`: account commands run offline, on the data
//! directory of a stopped gateway (sled locks its directory while a gateway runs). While
//! the gateway runs, `simgate admin` does the same through the admin API.

use std::path::PathBuf;
use std::sync::Arc;

use simgate::config::Config;
use simgate::domain::accounts::{KeyMode, Role};
use simgate::domain::audit::{Actor, AuditAction, LedgerEntryId, NewAuditEntry};
use simgate::domain::gateway::Gateway;
use simgate::domain::store::Store;
use simgate::privacy::FileKeyring;
use simgate::store::SledStore;

/// The data directory of a stopped gateway.
#[derive(clap::Args)]
pub struct DataDirArg {
    /// Data directory of the gateway.
    #[arg(long, env = "SIMGATE_DATA_DIR", default_value = "simgate-data")]
    pub data_dir: PathBuf,
}

/// `simgate reseller ...`.
#[derive(clap::Subcommand)]
pub enum ResellerCommand {
    /// Create a reseller; prints its id.
    Create {
        #[command(flatten)]
        data: DataDirArg,
        /// Company name.
        #[arg(long)]
        name: String,
        /// Markup over wholesale in basis points (1500 = 15%).
        #[arg(long, default_value_t = 0)]
        markup_bps: u32,
    },
    /// Credit a reseller's prepaid balance.
    Credit {
        #[command(flatten)]
        data: DataDirArg,
        /// Reseller id (rsl_...).
        #[arg(long)]
        reseller: String,
        /// Amount in minor units (cents).
        #[arg(long)]
        amount: i64,
        /// ISO 4217 currency.
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Which balance: live, or test (the one test-mode keys spend).
        #[arg(long, default_value = "live")]
        mode: String,
    },
}

/// `simgate keys ...`.
#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create an API key; prints it once.
    Create {
        #[command(flatten)]
        data: DataDirArg,
        /// Reseller id (rsl_...); omit with --role admin.
        #[arg(long)]
        reseller: Option<String>,
        /// admin, reseller or reseller_readonly.
        #[arg(long, default_value = "reseller")]
        role: String,
        /// live or test.
        #[arg(long, default_value = "live")]
        mode: String,
    },
    /// Revoke an API key by id (key_...).
    Revoke {
        #[command(flatten)]
        data: DataDirArg,
        /// Key id.
        id: String,
    },
}

/// Run a reseller command on its data directory.
pub fn reseller(cmd: ResellerCommand) -> anyhow::Result<()> {
    let data_dir = match &cmd {
        ResellerCommand::Create { data, .. } | ResellerCommand::Credit { data, .. } => {
            data.data_dir.clone()
        }
    };
    offline(data_dir, async |gw| reseller_cmd(gw, cmd).await)
}

/// Run a keys command on its data directory.
pub fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let data_dir = match &cmd {
        KeysCommand::Create { data, .. } | KeysCommand::Revoke { data, .. } => {
            data.data_dir.clone()
        }
    };
    offline(data_dir, async |gw| keys_cmd(gw, cmd).await)
}

/// No plugins: account commands never reach a supplier.
struct NoSuppliers;

impl simgate::domain::Suppliers for NoSuppliers {
    fn get(&self, _: &str) -> Option<Arc<dyn simgate::domain::Supplier>> {
        None
    }
    fn all(&self) -> Vec<Arc<dyn simgate::domain::Supplier>> {
        Vec::new()
    }
}

/// Run an account command against the data directory, then make it durable.
fn offline(
    data_dir: PathBuf,
    f: impl AsyncFnOnce(&Gateway) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let db = data_dir.join("db");
        if !db.exists() {
            anyhow::bail!(
                "{} holds no gateway data; run `simgate serve --data-dir {}` once first \
                 (a gateway on PostgreSQL is managed through the admin API: `simgate admin`)",
                data_dir.display(),
                data_dir.display()
            );
        }
        let store = SledStore::open(&db, 8).map_err(|e| {
            anyhow::anyhow!(
                "{e}: the data directory is probably in use by a running gateway; stop it, \
                 or use `simgate admin` (the admin API) while it runs"
            )
        })?;
        let store = Arc::new(store);
        let keyring = Arc::new(FileKeyring::open(&data_dir)?);
        let gateway = super::serve::gateway(
            &Config::default(),
            store.clone(),
            Arc::new(NoSuppliers),
            keyring,
        );
        f(&gateway).await?;
        Store::close(store.as_ref()).await?;
        Ok(())
    })
}

/// An audit entry for what an operator did from the command line (as `system`: the CLI
/// holds no API key).
fn by_cli(action: AuditAction) -> NewAuditEntry {
    NewAuditEntry::new(Actor::System, action).details("from the command line")
}

async fn reseller_cmd(gw: &Gateway, cmd: ResellerCommand) -> anyhow::Result<()> {
    match cmd {
        ResellerCommand::Create {
            name, markup_bps, ..
        } => {
            let r = gw.create_reseller(&name, markup_bps).await?;
            gw.audit(
                by_cli(AuditAction::ResellerCreated)
                    .reseller(Some(r.id))
                    .target(r.id),
            )
            .await?;
            println!("{}", r.id);
        }
        ResellerCommand::Credit {
            reseller,
            amount,
            currency,
            mode,
            ..
        } => {
            let id = reseller
                .parse()
                .map_err(|_| anyhow::anyhow!("{reseller:?} is not a reseller id (rsl_...)"))?;
            let entry = ulid::Ulid::new();
            let b = gw
                .credit(
                    id,
                    key_mode(&mode)?,
                    amount,
                    &currency,
                    Some("credited from the CLI".into()),
                    entry,
                )
                .await?;
            gw.audit(
                by_cli(AuditAction::CreditPosted)
                    .reseller(Some(id))
                    .target(LedgerEntryId(entry)),
            )
            .await?;
            println!("available {} {currency}, held {}", b.available, b.held);
        }
    }
    Ok(())
}

fn key_mode(mode: &str) -> anyhow::Result<KeyMode> {
    match mode {
        "live" => Ok(KeyMode::Live),
        "test" => Ok(KeyMode::Test),
        other => anyhow::bail!("unknown mode {other:?}: live or test"),
    }
}

async fn keys_cmd(gw: &Gateway, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            reseller,
            role,
            mode,
            ..
        } => {
            let role = match role.as_str() {
                "admin" => Role::Admin,
                "reseller" => Role::Reseller,
                "reseller_readonly" => Role::ResellerReadonly,
                other => {
                    anyhow::bail!("unknown role {other:?}: admin, reseller or reseller_readonly")
                }
            };
            let mode = key_mode(&mode)?;
            let reseller = reseller
                .map(|r| {
                    r.parse()
                        .map_err(|_| anyhow::anyhow!("{r:?} is not a reseller id (rsl_...)"))
                })
                .transpose()?;
            let (key, record) = gw.create_key(reseller, role, mode).await?;
            gw.audit(
                by_cli(AuditAction::KeyCreated)
                    .reseller(record.reseller)
                    .target(record.id),
            )
            .await?;
            println!("{key}");
            eprintln!("key id {} (shown once: store the key now)", record.id);
        }
        KeysCommand::Revoke { id, .. } => {
            let id = id
                .parse()
                .map_err(|_| anyhow::anyhow!("{id:?} is not a key id (key_...)"))?;
            let key = gw.revoke_key(id).await?;
            gw.audit(
                by_cli(AuditAction::KeyRevoked)
                    .reseller(key.reseller)
                    .target(key.id),
            )
            .await?;
            println!("revoked {}", key.id);
        }
    }
    Ok(())
}
