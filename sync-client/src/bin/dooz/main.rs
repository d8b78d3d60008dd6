//! `dooz`: the Dooz Sync command-line client.
//!
//! ```text
//! dooz [--home DIR] [--json] <command>
//!   init [--name NAME]                     make this device's keys, print its id
//!   enroll <CODE> [--name NAME]            enrol on the server named in the code
//!   vault create <NAME> [--folder DIR]     create a vault, keep its key, optionally bind DIR
//!   vault list
//!   vault invite <NAME>                    print a secret vault code for another device
//!   vault join <CODE> --folder DIR [--name NAME]
//!   pair invite                            show a pairing code, hand every vault to the new device
//!   pair join <CODE>                       receive every vault from the device showing CODE
//!   recovery setup                         wrap every vault to the recovery secret (words shown once)
//!   recover <WORDS>...                     regain every vault with the 12 recovery words
//!   add <VAULT> <DIR>                      bind a folder to a vault
//!   sync [VAULT] [--watch]                 sync once, or keep watching
//!   status [VAULT]
//! ```
//!
//! State lives in the home directory (`--home`, else `$DOOZ_HOME`, else `$XDG_DATA_HOME/dooz`,
//! else `~/.local/share/dooz`): the local index (`index/`, sled) with the device's keys, vault
//! keys, vault names and the per-vault sync state. Exit code 0 on success, 1 on error (the
//! message says what went wrong and what to do), 2 on usage errors. With `--json` every command
//! prints JSON lines on stdout.

mod device;
mod history;
mod home;
mod output;
mod pair;
mod progress;
mod recovery;
mod sync;
mod vault;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::home::Home;
use crate::output::Out;

#[derive(Debug, Parser)]
#[command(
    name = "dooz",
    version,
    about = "Dooz Sync: end-to-end encrypted folder sync",
    after_help = "Start: `dooz enroll <code>` (a code from `dooz-server admin enrol-code`), then \
                  `dooz vault create NAME --folder DIR` and `dooz sync`."
)]
struct Cli {
    /// Home directory of this device's state [default: $XDG_DATA_HOME/dooz or ~/.local/share/dooz]
    #[arg(long, global = true, env = "DOOZ_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print JSON lines on stdout instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make this device's keys (idempotent) and print its device id
    Init {
        /// A name for this device, shown to the account's other devices [default: the host name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Enrol this device on the server named in an enrolment code (runs `init` if needed)
    Enroll {
        /// The enrolment code, `dooz1-...` (from `dooz-server admin enrol-code`)
        code: String,
        /// A name for this device [default: the host name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Create, list, share and join vaults
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Pair a new device of this account: it receives every vault key, checked end to end
    Pair {
        #[command(subcommand)]
        command: PairCommand,
    },
    /// The account's recovery secret (12 words that regain every vault)
    Recovery {
        #[command(subcommand)]
        command: RecoveryCommand,
    },
    /// Regain every vault of the account with its 12 recovery words (on an enrolled device)
    Recover {
        /// The 12 recovery words
        #[arg(required = true, num_args = 12)]
        words: Vec<String>,
    },
    /// Bind a folder to a vault
    Add {
        /// The vault's name on this device
        vault: String,
        /// The folder to sync (created if missing)
        dir: PathBuf,
    },
    /// Sync every bound vault (or one) once, or keep watching
    Sync {
        /// Only this vault
        vault: Option<String>,
        /// Keep running: sync again whenever the folder or the server changes
        #[arg(long)]
        watch: bool,
    },
    /// Show this device, its vaults and their sync state
    Status {
        /// Only this vault
        vault: Option<String>,
    },
    /// List the versions the server keeps of a file or directory, newest first
    History {
        /// The file, inside a folder bound to a vault
        path: PathBuf,
    },
    /// Bring back an earlier version of a file: it becomes the newest version, on every device
    Restore {
        /// The file, inside a folder bound to a vault
        path: PathBuf,
        /// The version to restore (from `dooz history PATH`)
        #[arg(long)]
        version: String,
    },
}

#[derive(Debug, Subcommand)]
enum VaultCommand {
    /// Create a vault on the server and keep its key on this device
    Create {
        /// A name for the vault on this device (the server sees only its id)
        name: String,
        /// Bind this folder to it (created if missing)
        #[arg(long, value_name = "DIR")]
        folder: Option<PathBuf>,
    },
    /// List the vaults this device knows
    List,
    /// Print a secret vault code that gives another device of your account this vault
    Invite {
        /// The vault's name
        name: String,
    },
    /// Join a vault with a code from `dooz vault invite`, syncing it into a folder
    Join {
        /// The vault code, `dooz-vault1-...`
        code: String,
        /// The folder to sync it into (created if missing)
        #[arg(long, value_name = "DIR")]
        folder: PathBuf,
        /// A name for the vault on this device [default: its name on the inviting device]
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PairCommand {
    /// Show a one-time pairing code and hand every vault to the device that answers it
    Invite,
    /// Answer a pairing code shown by `dooz pair invite` on another device of this account
    Join {
        /// The pairing code, `dooz-pair1-...`
        code: String,
    },
}

#[derive(Debug, Subcommand)]
enum RecoveryCommand {
    /// Make the recovery secret if this device has none (its words are shown once) and wrap
    /// every vault key this device holds to it
    Setup,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The library logs each retry; the CLI says what matters itself, once (see `watch.rs`).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,dooz_client=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let out = Out::new(cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, out: &Out) -> anyhow::Result<()> {
    let home = Home::resolve(cli.home)?;
    match cli.command {
        Command::Init { name } => device::init(&home.open()?, name, out),
        Command::Enroll { code, name } => device::enroll(&home.open()?, &code, name, out).await,
        Command::Vault { command } => {
            let home = home.open()?;
            match command {
                VaultCommand::Create { name, folder } => {
                    vault::create(&home, &name, folder.as_deref(), out).await
                }
                VaultCommand::List => vault::list(&home, out),
                VaultCommand::Invite { name } => vault::invite(&home, &name, out),
                VaultCommand::Join { code, folder, name } => {
                    vault::join(&home, &code, &folder, name, out).await
                }
            }
        }
        Command::Pair { command } => {
            let home = home.open()?;
            match command {
                PairCommand::Invite => pair::invite(&home, out).await,
                PairCommand::Join { code } => pair::join(&home, &code, out).await,
            }
        }
        Command::Recovery {
            command: RecoveryCommand::Setup,
        } => recovery::setup(&home.open()?, out).await,
        Command::Recover { words } => recovery::recover(&home.open()?, &words, out).await,
        Command::Add { vault, dir } => vault::add(&home.open()?, &vault, &dir, out),
        Command::Sync { vault, watch } => {
            sync::sync(&home.open()?, vault.as_deref(), watch, out).await
        }
        Command::Status { vault } => sync::status(&home.open()?, vault.as_deref(), out),
        Command::History { path } => history::history(&home.open()?, &path, out).await,
        Command::Restore { path, version } => {
            history::restore(&home.open()?, &path, &version, out).await
        }
    }
}
