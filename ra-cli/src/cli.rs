//! The `ra-cli` command line: parses arguments and calls the library; see
//! `ra-cli --help`. `main.rs` calls [`main`]; [`command`] gives the same
//! definition to the generators of man pages and shell completions.

use crate::batch::progress::ProgressMode;
use crate::batch::{BatchOptions, Vouching};
use crate::commands::{self, render, IssueOptions, ListFilter};
use crate::config::{self, Config};
use crate::keys::KeyType;
use crate::output::Format;
use crate::retry::RetryPolicy;
use crate::Error;
use clap::{Args, CommandFactory, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ra-cli",
    version,
    about = "Batch and scripted certificate issuance through certd",
    after_help = "Exit status: 0 done, 1 failed (refusals, failed rows, certd unreachable), 2 usage, configuration, input or output error.\n\
                  With --json, standard output carries exactly one JSON document: the result, or {\"error\": {\"code\", \"message\", \"exit_code\"}}."
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "RA_CLI_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Machine-readable JSON on standard output: the result, or the error
    /// with its stable code.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Issue certificates for the rows of a CSV file.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Issue one certificate (from a CSR, or with a key generated here).
    Issue(IssueArgs),
    /// Show one certificate.
    Show {
        /// Serial number (hex).
        serial: String,
        /// Print only the certificate, PEM.
        #[arg(long)]
        pem: bool,
    },
    /// List certificates this RA may see.
    List(ListArgs),
    /// Revoke a certificate.
    Revoke {
        /// Serial number (hex).
        serial: String,
        /// Revocation reason (RFC 5280 name).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
            certd_api::REVOCATION_REASONS.map(|(name, _)| name)
        ))]
        reason: String,
    },
    /// Download a certifier's CRL.
    Crl {
        /// Certifier (default: from the configuration).
        #[arg(long)]
        certifier: Option<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Write PEM instead of DER.
        #[arg(long)]
        pem: bool,
    },
    /// The profiles this RA may use.
    Profiles,
    /// certd's per-certifier state (exit 1 unless every certifier is active).
    Health,
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Validate, then issue, with a journal that makes re-runs resume.
    Issue(BatchArgs),
}

#[derive(Args)]
struct Common {
    /// Profile (default: from the configuration).
    #[arg(long)]
    profile: Option<String>,
    /// Certifier (default: from the configuration).
    #[arg(long)]
    certifier: Option<String>,
    /// Requested expiry date, YYYY-MM-DD (end of day, UTC); clamped by policy.
    #[arg(long, conflicts_with = "days", value_name = "DATE")]
    expires: Option<String>,
    /// Requested validity in days from now; clamped by policy.
    #[arg(long)]
    days: Option<u32>,
    /// Key type of keys generated here (default: from the configuration, else p256).
    #[arg(long, value_enum, value_name = "TYPE")]
    key_type: Option<KeyType>,
    /// File holding the PKCS#12 password (first line); default: generated.
    #[arg(long, value_name = "FILE")]
    p12_password_file: Option<PathBuf>,
    /// PBKDF2 and MAC iterations of PKCS#12 files.
    #[arg(
        long,
        default_value_t = crate::p12::DEFAULT_ITERATIONS,
        value_parser = clap::value_parser!(u32).range(
            i64::from(crate::p12::MIN_ITERATIONS)..=i64::from(crate::p12::MAX_ITERATIONS)
        )
    )]
    p12_iterations: u32,
    /// Attempts for transient failures (503, rate limit, connection reset).
    #[arg(long, default_value_t = 6)]
    attempts: u32,
}

#[derive(Args)]
struct BatchArgs {
    /// CSV with a header naming its columns: email, and any of common_name,
    /// organizational_unit, dns, csr.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Output directory: certificates, PKCS#12 files, report.csv, journal.
    #[arg(long, value_name = "DIR", required_unless_present = "dry_run")]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
    /// Where generated PKCS#12 passwords go (default: DIR/passwords.csv;
    /// mode 0600). A resumed batch keeps the file it started with.
    #[arg(long, value_name = "FILE", conflicts_with = "p12_password_file")]
    passwords_out: Option<PathBuf>,
    /// Ignore columns ra-cli does not know instead of refusing the file.
    #[arg(long)]
    ignore_unknown_columns: bool,
    /// Only validate the file; issue nothing.
    #[arg(long)]
    dry_run: bool,
    /// Issue the valid rows even if some rows are invalid.
    #[arg(long)]
    skip_invalid: bool,
    /// Concurrent requests (default: from the configuration, else 8 per CPU, at most 32).
    #[arg(long)]
    jobs: Option<usize>,
    /// Batch id (default: derived from the input's SHA-256 and the options).
    #[arg(long)]
    batch_id: Option<String>,
    /// The officer who vouches for the list: sent as the requester and as
    /// the attestation of every mailbox (and, for profiles that name a
    /// person, of their identity). Needs --attested-at.
    #[arg(long, requires = "attested_at")]
    attested_by: Option<String>,
    /// When the officer checked the list (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, requires = "attested_by")]
    attested_at: Option<String>,
    /// organizationName of sponsor-validated S/MIME subjects (one the RA is granted).
    #[arg(long)]
    organization: Option<String>,
    /// organizationIdentifier of sponsor-validated S/MIME subjects (e.g. VATDE-123456789).
    #[arg(long)]
    organization_identifier: Option<String>,
    /// countryName of sponsor-validated S/MIME subjects.
    #[arg(long)]
    country: Option<String>,
    /// Progress display on standard error.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

#[derive(Args)]
struct IssueArgs {
    /// The subscriber's CSR (PEM or DER); without it a key is generated.
    #[arg(long, value_name = "FILE")]
    csr: Option<PathBuf>,
    /// commonName to certify.
    #[arg(long)]
    cn: Option<String>,
    /// organizationalUnitName to certify.
    #[arg(long)]
    ou: Option<String>,
    /// SANs: dns:NAME, email:ADDRESS, ip:ADDRESS (comma-separated, repeatable).
    #[arg(long)]
    san: Vec<String>,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Output format (default: p12 for a generated key, else pem).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Idempotency key: repeating it returns the same certificate.
    #[arg(long)]
    request_id: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// `--status` of `ra-cli list`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusArg {
    Valid,
    Revoked,
}

#[derive(Args)]
struct ListArgs {
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    #[arg(long)]
    profile: Option<String>,
    #[arg(long)]
    certifier: Option<String>,
    /// Substring of the subject.
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    email: Option<String>,
    #[arg(long)]
    dns: Option<String>,
    /// Requesting RA.
    #[arg(long)]
    ra: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    expires_before: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    expires_after: Option<String>,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

fn print_json<T: Serialize>(v: &T) -> Result<(), Error> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Crypto(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn profile_of(c: &Common, cfg: &Config) -> Result<String, Error> {
    c.profile
        .clone()
        .or_else(|| cfg.defaults.profile.clone())
        .ok_or_else(|| Error::Usage("no profile: pass --profile or set defaults.profile".into()))
}

fn retry_of(c: &Common) -> RetryPolicy {
    RetryPolicy {
        attempts: c.attempts.max(1),
        ..RetryPolicy::default()
    }
}

fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 8).clamp(4, 32)
}

async fn run(cli: Cli) -> Result<i32, Error> {
    let cfg = config::locate(cli.config.as_deref())?;
    let json = cli.json;
    match cli.command {
        Command::Batch(BatchCommand::Issue(a)) => {
            let client = match cfg.client() {
                Ok(c) => Some(c),
                Err(e) => return Err(e),
            };
            let opts = BatchOptions {
                input: a.input,
                out_dir: a.out,
                profile: profile_of(&a.common, &cfg)?,
                certifier: a
                    .common
                    .certifier
                    .clone()
                    .or(cfg.defaults.certifier.clone()),
                expires: a.common.expires.clone(),
                days: a.common.days,
                key_type: a
                    .common
                    .key_type
                    .or(cfg.defaults.key_type)
                    .unwrap_or(KeyType::P256),
                p12_password_file: a.common.p12_password_file.clone(),
                p12_iterations: a.common.p12_iterations,
                passwords_out: a.passwords_out,
                ignore_unknown_columns: a.ignore_unknown_columns,
                dry_run: a.dry_run,
                skip_invalid: a.skip_invalid,
                jobs: a.jobs.or(cfg.defaults.jobs).unwrap_or_else(default_jobs),
                batch_id: a.batch_id,
                retry: retry_of(&a.common),
                progress: if json { ProgressMode::Off } else { a.progress },
                handle_ctrl_c: true,
                vouching: Vouching {
                    organization: a.organization,
                    organization_identifier: a.organization_identifier,
                    country: a.country,
                    attested_by: a.attested_by,
                    attested_at: a.attested_at,
                },
            };
            let summary = crate::batch::run(client, &opts).await?;
            // The summary goes to standard output whatever the outcome, so
            // a script finds it in one place; progress and warnings go to
            // standard error.
            if json {
                print_json(&summary)?;
            } else {
                print!("{}", summary.render());
            }
            Ok(summary.exit_code())
        }
        Command::Issue(a) => {
            let client = cfg.client()?;
            let format = a.format.unwrap_or(if a.csr.is_some() {
                Format::Pem
            } else {
                Format::P12
            });
            let not_after = commands::not_after(
                a.common.expires.as_deref(),
                a.common.days,
                time::OffsetDateTime::now_utc(),
            )?;
            let opts = IssueOptions {
                profile: profile_of(&a.common, &cfg)?,
                certifier: a
                    .common
                    .certifier
                    .clone()
                    .or(cfg.defaults.certifier.clone()),
                csr: a.csr,
                key_type: a
                    .common
                    .key_type
                    .or(cfg.defaults.key_type)
                    .unwrap_or(KeyType::P256),
                common_name: a.cn,
                organizational_unit: a.ou,
                san: commands::parse_sans(&a.san)?,
                not_after,
                out: a.out,
                format,
                p12_password_file: a.common.p12_password_file.clone(),
                p12_iterations: a.common.p12_iterations,
                request_id: a.request_id,
                retry: retry_of(&a.common),
            };
            let o = commands::issue(&client, &opts).await?;
            if json {
                print_json(&o)?;
            } else {
                print!("{}", render::issued(&o));
            }
            Ok(0)
        }
        Command::Show { serial, pem } => {
            let c = cfg.client()?;
            let info = c.get(&serial).await.map_err(Error::certd)?;
            if json {
                print_json(&info)?;
            } else if pem {
                print!("{}", info.certificate);
            } else {
                print!("{}", render::certificate(&info));
            }
            Ok(0)
        }
        Command::List(a) => {
            let c = cfg.client()?;
            let filter = ListFilter {
                status: a.status.map(|s| {
                    match s {
                        StatusArg::Valid => "valid",
                        StatusArg::Revoked => "revoked",
                    }
                    .to_string()
                }),
                profile: a.profile,
                certifier: a.certifier,
                subject: a.subject,
                email: a.email,
                dns: a.dns,
                ra: a.ra,
                expires_before: a.expires_before,
                expires_after: a.expires_after,
                limit: a.limit,
            };
            let items = commands::list(&c, &filter).await?;
            if json {
                print_json(&items)?;
            } else {
                print!("{}", render::list(&items));
            }
            Ok(0)
        }
        Command::Revoke { serial, reason } => {
            let c = cfg.client()?;
            let info = commands::revoke(&c, &serial, &reason).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("revoked {} ({reason})", info.serial);
            }
            Ok(0)
        }
        Command::Crl {
            certifier,
            out,
            pem,
        } => {
            let c = cfg.client()?;
            let name = certifier
                .or(cfg.defaults.certifier.clone())
                .ok_or_else(|| {
                    Error::Usage("no certifier: pass --certifier or set defaults.certifier".into())
                })?;
            let o = commands::crl(&c, &name, &out, pem).await?;
            if json {
                print_json(&o)?;
            } else {
                print!("{}", render::crl(&o));
            }
            Ok(0)
        }
        Command::Profiles => {
            let c = cfg.client()?;
            let p = c.profiles().await.map_err(Error::certd)?;
            if json {
                print_json(&p)?;
            } else {
                print!("{}", render::profiles(&p));
            }
            Ok(0)
        }
        Command::Health => {
            let c = cfg.client()?;
            let fp = cfg.client_fingerprint().ok();
            let h = c.health().await.map_err(Error::certd)?;
            if json {
                print_json(&h)?;
            } else {
                print!("{}", render::health(&h, &cfg.certd.url, fp.as_deref()));
            }
            Ok(if h.status == "ok" { 0 } else { 1 })
        }
    }
}

/// Reports `e` as `--json` asks (one JSON document on standard output) or
/// as text on standard error; returns the exit status.
fn report_error(e: &Error, json: bool) -> i32 {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e.to_json()).unwrap_or_default()
        );
    } else {
        eprintln!("ra-cli: {e}");
    }
    e.exit_code()
}

/// The command's definition, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // A usage error comes before clap knows whether --json was
            // given, so look for it: a script asking for JSON gets JSON.
            if std::env::args_os().skip(1).any(|a| a == "--json") {
                let message = e.render().to_string();
                let err = Error::Usage(message.trim_end().to_string());
                return ExitCode::from(u8::try_from(report_error(&err, true)).unwrap_or(2));
            }
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::from(0);
        }
    };
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ra-cli: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => report_error(&e, json),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
