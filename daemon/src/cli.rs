//! The `certd` command line: the daemon, its key ceremony and its console.
//! `main.rs` calls [`main`]; [`command`] gives the same definition to the
//! generators of man pages and shell completions.

use crate::ceremony::{self, CeremonyOutput, ImportCaCert, InitCa};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::control::{self, Request};
use crate::hsm::KeyType;
use crate::secret;
use crate::x509::SubjectSpec;
use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[derive(Parser)]
#[command(
    name = "certd",
    version,
    about = "HSM-backed certificate authority signing daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the systemd unit's ExecStart).
    Run(ConfigArg),
    /// Check a configuration file without starting anything.
    CheckConfig(ConfigArg),
    /// Key ceremony: generate a certifier key inside the token and
    /// self-sign a root certificate or write a CSR for a parent CA.
    InitCa(InitCaArgs),
    /// Bind a parent-signed certificate (and chain) to a key in the token.
    ImportCaCert(ImportArgs),
    /// Unlock a certifier by sending the token PIN to the running daemon.
    Activate(ActivateArgs),
    /// Lock a certifier again (logs out of the token).
    Deactivate(CertifierArg),
    /// Show the daemon's and every certifier's state.
    Status(StatusArgs),
    /// Reload profiles, RAs and grants without dropping requests (like SIGHUP).
    Reload(SocketArgs),
    /// Check the hash chain of the audit log.
    VerifyAudit(VerifyAuditArgs),
    /// Write a consistent backup of the ledger and audit log (while the
    /// daemon runs and issues, or while it is stopped). The token's keys
    /// are not in it: back them up the token's own way.
    Backup(BackupArgs),
    /// Restore a backup into an empty state directory, after checking the
    /// audit chain, its signed checkpoints and the ledger against each
    /// other; with the daemon stopped.
    Restore(RestoreArgs),
    /// Move the ledger of a certd before 0.2 (a sled database in the state
    /// directory) to the ledger index; run once, with the daemon stopped.
    MigrateLedger(ConfigArg),
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "CERTD_CONFIG")]
    config: PathBuf,
}

#[derive(Args)]
struct SocketArgs {
    /// Control socket of the running daemon.
    #[arg(long, env = "CERTD_CONTROL_SOCKET")]
    socket: Option<PathBuf>,
    /// Configuration file (to find the control socket).
    #[arg(long, env = "CERTD_CONFIG")]
    config: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match &self.config {
            Some(c) => Ok(Config::load(c)?.daemon.control_socket),
            None => bail!("no control socket: pass --socket PATH or --config FILE (or set CERTD_CONTROL_SOCKET)"),
        }
    }
}

#[derive(Args)]
struct TokenArgs {
    /// PKCS#11 module.
    #[arg(long, env = "CERTD_PKCS11_MODULE", default_value = DEFAULT_MODULE)]
    module: PathBuf,
    /// Label of the token.
    #[arg(long)]
    token_label: String,
    /// Label of the certifier key pair.
    #[arg(long)]
    key_label: String,
    /// File holding the token user PIN (`-`: standard input; asked on the
    /// terminal if absent).
    #[arg(long)]
    pin_file: Option<PathBuf>,
}

#[derive(Args)]
struct InitCaArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// Key type to generate inside the token.
    #[arg(long, default_value = "p256", value_parser = parse_key_type)]
    key_type: KeyType,
    /// commonName of the certifier.
    #[arg(long)]
    cn: String,
    /// organizationName.
    #[arg(long)]
    o: Option<String>,
    /// organizationalUnitName.
    #[arg(long)]
    ou: Option<String>,
    /// localityName.
    #[arg(long)]
    l: Option<String>,
    /// stateOrProvinceName.
    #[arg(long)]
    st: Option<String>,
    /// countryName (two letters).
    #[arg(long)]
    c: Option<String>,
    /// Validity of a self-signed root, in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// basicConstraints path length (absent: unlimited).
    #[arg(long)]
    path_len: Option<u8>,
    /// Write the self-signed root certificate here.
    #[arg(long, conflicts_with = "csr_out", required_unless_present = "csr_out")]
    cert_out: Option<PathBuf>,
    /// Write a CSR for an external parent here instead of self-signing.
    #[arg(long)]
    csr_out: Option<PathBuf>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// The certificate the parent CA issued for the key.
    #[arg(long)]
    cert: PathBuf,
    /// The chain above it, issuer first.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Where to write the certificate (the certifier's `certificate`).
    #[arg(long)]
    cert_out: PathBuf,
    /// Where to write the chain (the certifier's `chain`).
    #[arg(long, requires = "chain")]
    chain_out: Option<PathBuf>,
}

#[derive(Args)]
struct CertifierArg {
    /// Certifier name or number (as shown by `certd status`); may be left
    /// out when the daemon has one certifier.
    certifier: Option<String>,
    #[command(flatten)]
    socket: SocketArgs,
}

#[derive(Args)]
struct ActivateArgs {
    #[command(flatten)]
    target: CertifierArg,
    /// File holding the token user PIN (`-`: standard input; asked on the
    /// terminal if absent).
    #[arg(long)]
    pin_file: Option<PathBuf>,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyAuditArgs {
    /// The audit log file (default: audit.log in the configured state_dir);
    /// without --config only its hash chain is checked.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Configuration file.
    #[arg(long, env = "CERTD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct BackupArgs {
    /// Configuration file (its state_dir and control socket).
    #[arg(long, env = "CERTD_CONFIG")]
    config: PathBuf,
    /// The backup file to write (a tar archive, mode 0600); never
    /// overwritten.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct RestoreArgs {
    /// Configuration file (its state_dir receives the backup, and its
    /// certifiers' certificates verify it).
    #[arg(long, env = "CERTD_CONFIG")]
    config: PathBuf,
    /// The backup file written by `certd backup`.
    #[arg(long)]
    from: PathBuf,
}

fn parse_key_type(s: &str) -> Result<KeyType, String> {
    s.parse()
}

/// The command's definition, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(a) => {
            crate::daemon::init_logging();
            crate::daemon::run(&a.config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MigrateLedger(a) => {
            let config = Config::load(&a.config)?;
            let done = crate::daemon::migrate_ledger(
                &config,
                std::sync::Arc::new(crate::clock::SystemClock),
            )?;
            println!(
                "migrated {} records and {} idempotency keys (certifiers: {}) into {}; the earlier ledger is kept at {}",
                done.records,
                done.idempotency_keys,
                done.certifiers.join(", "),
                crate::daemon::index_path(&config.daemon.state_dir).display(),
                done.kept_at.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(a) => {
            let config = Config::load(&a.config)?;
            crate::daemon::check_files(&config)?;
            println!(
                "{}: OK ({} certifier{})",
                a.config.display(),
                config.certifiers.len(),
                if config.certifiers.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::InitCa(a) => init_ca(a),
        Command::ImportCaCert(a) => {
            let pin = secret::pin_from(a.token.pin_file.as_deref(), "Token user PIN: ")?;
            ceremony::import_ca_cert(&ImportCaCert {
                module: a.token.module,
                token_label: a.token.token_label,
                key_label: a.token.key_label.clone(),
                pin,
                certificate: a.cert,
                chain: a.chain,
                cert_out: a.cert_out.clone(),
                chain_out: a.chain_out,
            })?;
            println!(
                "certificate for key {:?} written to {}",
                a.token.key_label,
                a.cert_out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Activate(a) => {
            let socket = a.target.socket.path()?;
            let pin = secret::pin_from(a.pin_file.as_deref(), "Token user PIN: ")?;
            let reply = control::call(
                &socket,
                &Request::Activate {
                    certifier: a.target.certifier,
                    pin,
                },
            )?;
            println!("{}", reply.message.unwrap_or_else(|| "activated".into()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Deactivate(a) => {
            let socket = a.socket.path()?;
            let reply = control::call(
                &socket,
                &Request::Deactivate {
                    certifier: a.certifier,
                },
            )?;
            println!("{}", reply.message.unwrap_or_else(|| "deactivated".into()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(a) => {
            let socket = a.socket.path()?;
            let reply = control::call(&socket, &Request::Status)?;
            let status = reply
                .status
                .context("the daemon sent no status in its reply")?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload(a) => {
            let reply = control::call(&a.path()?, &Request::Reload)?;
            println!("{}", reply.message.unwrap_or_else(|| "reloaded".into()));
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyAudit(a) => verify_audit(a),
        Command::Backup(a) => backup(a),
        Command::Restore(a) => restore(a),
    }
}

fn backup(a: BackupArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    if a.out.exists() {
        bail!(
            "{} exists already (a backup is never overwritten): choose another name",
            a.out.display()
        );
    }
    let socket = &config.daemon.control_socket;
    // A running daemon names the backup point; a stopped one has none, and
    // the backup takes its journal as it is (holding its lock).
    let point = match control::call(socket, &Request::Backup) {
        Ok(reply) => Some(
            reply
                .backup_point
                .context("the daemon sent no backup point in its reply")?,
        ),
        Err(control::ControlError::Connect { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let manifest = crate::backup::backup(&config, point.as_ref(), &a.out, &SystemClock)
        .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
    println!(
        "{}: the journal to entry {} ({}), {} certificates, {} revocations; audit.log SHA-256 {}",
        a.out.display(),
        manifest.last_seq,
        if manifest.daemon_running {
            "the running daemon's backup point"
        } else {
            "the daemon was stopped"
        },
        manifest.certificates,
        manifest.revocations,
        manifest.audit_sha256
    );
    Ok(ExitCode::SUCCESS)
}

fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let restored = crate::backup::restore(&config, &a.from, std::sync::Arc::new(SystemClock))
        .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
    println!(
        "restored {} into {}: {} journal entries with the chain intact, {} signed checkpoints verified, {} certificates checked against their certifiers; start certd (and activate its certifiers) to serve",
        a.from.display(),
        config.daemon.state_dir.display(),
        restored.manifest.last_seq,
        restored.checkpoints,
        restored.certificates
    );
    Ok(ExitCode::SUCCESS)
}

fn init_ca(a: InitCaArgs) -> Result<ExitCode> {
    let output = match (a.cert_out, a.csr_out) {
        (Some(cert_out), None) => CeremonyOutput::SelfSigned {
            cert_out,
            days: a.days,
        },
        (None, Some(csr_out)) => CeremonyOutput::Csr { csr_out },
        _ => bail!(
            "give exactly one of --cert-out (self-signed root) or --csr-out (CSR for a parent CA)"
        ),
    };
    let pin = secret::pin_from(a.token.pin_file.as_deref(), "Token user PIN: ")?;
    let request = InitCa {
        module: a.token.module,
        token_label: a.token.token_label.clone(),
        key_label: a.token.key_label.clone(),
        key_type: a.key_type,
        pin,
        subject: SubjectSpec {
            cn: a.cn,
            o: a.o,
            ou: a.ou,
            l: a.l,
            st: a.st,
            c: a.c,
        },
        path_len: a.path_len,
        output,
    };
    let result = ceremony::init_ca(&request, &SystemClock)?;
    println!(
        "generated {} key {:?} in token {:?} (SPKI SHA-256 {})",
        result.key_type, a.token.key_label, a.token.token_label, result.spki_sha256
    );
    println!("wrote {}", result.path.display());
    Ok(ExitCode::SUCCESS)
}

fn verify_audit(a: VerifyAuditArgs) -> Result<ExitCode> {
    let (file, report, signed) = match (a.file, a.config) {
        (file, Some(c)) => {
            let config = Config::load(&c)?;
            let (file, report) =
                crate::anchor::verify_log(&config, file.as_deref()).map_err(anyhow::Error::msg)?;
            (file, report, true)
        }
        (Some(f), None) => {
            let report = crate::audit::verify(&f)
                .with_context(|| format!("cannot verify {}", f.display()))?;
            (f, report, false)
        }
        (None, None) => bail!("pass --config FILE (or --file AUDIT_LOG for the chain alone)"),
    };
    match report.first_broken {
        None => {
            let anchoring = match (signed, report.last_checkpoint) {
                (false, _) => {
                    "checkpoint signatures and anchor not checked (pass --config)".to_string()
                }
                (true, None) => "no signed checkpoint yet".to_string(),
                (true, Some(seq)) => format!(
                    "{} signed checkpoints verified, the last at entry {seq}{}",
                    report.checkpoints,
                    match report.entries.saturating_sub(seq) {
                        0 => String::new(),
                        n => format!(" ({n} entries after it)"),
                    }
                ),
            };
            println!(
                "{}: OK, {} entries, chain intact, {anchoring}",
                file.display(),
                report.entries,
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!(
                "{}: BROKEN at line {}{}: {}",
                file.display(),
                b.line,
                b.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
                b.reason
            );
            Ok(ExitCode::from(1))
        }
    }
}
