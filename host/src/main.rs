//! The `simgate` command line: `serve` runs the gateway; `admin` talks to a running one;
//! `reseller` and `keys` manage accounts on a stopped one; `plugin` packages and checks
//! plugin folders exactly as the watcher would load them, and scaffolds new plugin
//! crates; `audit verify` checks the audit log offline. Each command lives in `cli/`;
//! this file parses and dispatches.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::accounts::{DataDirArg, KeysCommand, ResellerCommand};
use simgate::config::LogFormat;

// sled copies and frees small buffers on every write from many threads at once, which
// glibc's allocator serves poorly (malloc was a fifth of the order path's profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "simgate", version, about = "Self-hosted eSIM supplier gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(cli::serve::ServeArgs),
    /// Manage a running gateway through its admin API: resellers, keys, plugins, audit.
    Admin(cli::admin::AdminArgs),
    /// Work with plugin packages.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Manage resellers offline (stop the gateway first; while it runs, use `simgate admin`).
    #[command(subcommand)]
    Reseller(ResellerCommand),
    /// Manage API keys offline (stop the gateway first; while it runs, use `simgate admin`).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check the audit log (offline: stop the gateway first).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Copy a gateway's database and key files into a new folder, while it runs (through
    /// its admin API) or stopped.
    Backup {
        /// The folder to create.
        dir: PathBuf,
        #[command(flatten)]
        data: DataDirArg,
        /// The running gateway's address.
        #[arg(long, env = "SIMGATE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// File holding an admin key (default: DATA_DIR/admin-key.txt).
        #[arg(long, env = "SIMGATE_ADMIN_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// Bring a backup folder back as a new data directory (then `simgate serve` on it).
    Restore {
        /// The backup folder.
        dir: PathBuf,
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the signed retention checkpoint and the hash chain. Prints `ok: N entries
    /// from seq S` and exits 0, or `audit log broken at seq N: why` (the first edited,
    /// inserted or deleted entry) and exits 1; exits 2 if it cannot check.
    Verify {
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Make a deployable plugin folder: copy the component and write plugin.toml with its sha256.
    Pack {
        /// The plugin's source manifest (plugin.toml).
        #[arg(long)]
        manifest: PathBuf,
        /// The built component (.wasm).
        #[arg(long)]
        wasm: PathBuf,
        /// The plugins folder to place it in (creates OUT/<id>/).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a plugin crate for wasm32-wasip2 (release) and pack it into a plugins folder.
    Build {
        /// The plugin crate (holding Cargo.toml and plugin.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The plugins folder to place it in (creates OUT/<id>/).
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate a plugin folder as the gateway would load it: print what it requests, what
    /// is granted and whether it links; exit non-zero with the reason.
    Check {
        /// The plugin folder (holding plugin.toml).
        dir: PathBuf,
        /// Grants file to check against (default: grant nothing).
        #[arg(long)]
        grants: Option<PathBuf>,
    },
    /// Create a plugin crate that builds and passes its tests, to fill in.
    New {
        /// Plugin id, folder and crate name (a-z, 0-9, '-').
        name: String,
        /// Folder to create (default: ./NAME).
        #[arg(long)]
        path: Option<PathBuf>,
        /// The simgate SDK to depend on (default: the SDK this binary was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up its log once its configuration is read (it may ask for JSON).
    if !matches!(cli.command, Command::Serve(_)) {
        cli::logging::init(LogFormat::Text);
    }
    let result = match cli.command {
        Command::Audit(AuditCommand::Verify { data }) => return cli::audit::verify(&data.data_dir),
        Command::Serve(args) => cli::serve::run(args),
        Command::Admin(args) => cli::admin::run(args),
        Command::Backup {
            dir,
            data,
            url,
            key_file,
        } => cli::backup::backup(&data.data_dir, &dir, cli::backup::Online { url, key_file }),
        Command::Restore { dir, data } => cli::backup::restore(&dir, &data.data_dir),
        Command::Plugin(PluginCommand::Pack {
            manifest,
            wasm,
            out,
        }) => cli::pack::run(&manifest, &wasm, &out),
        Command::Reseller(cmd) => cli::accounts::reseller(cmd),
        Command::Keys(cmd) => cli::accounts::keys(cmd),
        Command::Plugin(PluginCommand::Build { dir, out }) => cli::build::run(&dir, &out),
        Command::Plugin(PluginCommand::Check { dir, grants }) => {
            cli::check::run(&dir, grants.as_deref())
        }
        Command::Plugin(PluginCommand::New { name, path, sdk }) => {
            cli::scaffold::run(&name, path.as_deref(), sdk.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
