//! The command line: `ra-web run`, `check-config`, `create-admin`.

use crate::accounts;
use crate::config::Config;
use crate::model::Role;
use crate::store::{Store, StoreError};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// ra-web: the web registration authority for certd.
#[derive(Debug, Parser)]
#[command(name = "ra-web", version, about)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "RA_WEB_CONFIG",
        default_value = "/etc/ra-web/ra-web.toml"
    )]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the staff application (HTTPS) and the publication listener
    /// (HTTP) until SIGTERM.
    Run,
    /// Check the configuration and the files it names, then exit.
    CheckConfig,
    /// Create an admin account (ra-web must not be running: the store is
    /// opened by one process at a time).
    CreateAdmin {
        /// The user name.
        #[arg(long)]
        username: String,
        /// A file holding the password (at least 12 characters; `-`:
        /// standard input); it is never taken from the command line.
        #[arg(long)]
        password_file: PathBuf,
        /// The name pages show (default: the user name).
        #[arg(long)]
        display_name: Option<String>,
        /// Succeed without change when the account exists already.
        #[arg(long)]
        exists_ok: bool,
    },
}

fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RA_WEB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

fn read_password(path: &Path) -> Result<zeroize::Zeroizing<String>, String> {
    let read = || -> std::io::Result<String> {
        if path == Path::new("-") {
            let mut text = String::with_capacity(1024);
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)?;
            Ok(text)
        } else {
            std::fs::read_to_string(path)
        }
    };
    let mut text = zeroize::Zeroizing::new(
        read().map_err(|e| format!("--password-file {}: {e}", path.display()))?,
    );
    let trimmed = zeroize::Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    zeroize::Zeroize::zeroize(&mut *text);
    Ok(trimmed)
}

fn create_admin(
    config: &Config,
    username: &str,
    password_file: &Path,
    display_name: Option<&str>,
    exists_ok: bool,
) -> Result<String, String> {
    let password = read_password(password_file)?;
    let store = Store::open(&config.server.state_dir).map_err(|e| e.to_string())?;
    if exists_ok && store.user(username).map_err(|e| e.to_string())?.is_some() {
        return Ok(format!("user {username} exists already; nothing changed"));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let user = accounts::new_user(
        username,
        display_name.unwrap_or(username),
        None,
        Role::Admin,
        &password,
        now,
    )
    .map_err(|e| e.to_string())?;
    match store.create_user(&user) {
        Ok(()) => {}
        Err(StoreError::Exists(_)) => {
            return Err(format!(
                "user {username} exists already (use --exists-ok to accept that)"
            ))
        }
        Err(e) => return Err(e.to_string()),
    }
    let event = crate::model::Event {
        id: 0,
        at: now,
        actor: "ra-web create-admin".into(),
        kind: "user_created".into(),
        enterprise: None,
        request: None,
        source: None,
        detail: format!("{username} as admin"),
    };
    store.append_event(event).map_err(|e| e.to_string())?;
    Ok(format!("admin {username} created"))
}

/// The command's definition, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Run => {
            logging();
            load(&cli.config).and_then(|config| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the runtime: {e}"))?;
                rt.block_on(crate::server::run(config))
                    .map_err(|e| e.to_string())?;
                Ok(String::new())
            })
        }
        Command::CheckConfig => load(&cli.config).and_then(|c| {
            c.check_files()?;
            crate::server::tls_config(&c).map_err(|e| e.to_string())?;
            certd_api::CertdClient::new(&c.client_config()).map_err(|e| format!("[certd]: {e}"))?;
            Ok(format!("{}: OK", cli.config.display()))
        }),
        Command::CreateAdmin {
            username,
            password_file,
            display_name,
            exists_ok,
        } => load(&cli.config).and_then(|c| {
            create_admin(
                &c,
                username,
                password_file,
                display_name.as_deref(),
                *exists_ok,
            )
        }),
    };
    match outcome {
        Ok(msg) => {
            if !msg.is_empty() {
                println!("{msg}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ra-web: {e}");
            ExitCode::FAILURE
        }
    }
}
