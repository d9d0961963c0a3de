//! `ra-cli batch issue`: issuance for a list of people or hosts.
//!
//! 1. **Validate** the whole file first (streamed): every bad row is
//!    reported with its line; by default nothing is issued if any row is
//!    invalid. `--dry-run` stops here.
//! 2. **Issue** with `jobs` concurrent requests. Each row's `request_id` is
//!    derived from the batch id and the row's identity, so a re-run sends
//!    the same ids and certd answers repeats with the certificates it
//!    already issued. The [`journal`] records progress; rows it lists as
//!    issued are not sent again, rows in flight are simply re-sent.
//! 3. **Report**: `report.csv` and a summary.

pub mod journal;
pub mod progress;
pub mod report;

use crate::csr::CsrInfo;
use crate::error::Error;
use crate::input::{check_row, Duplicates, Input, ProfileKind, Row, RowError, Rules};
use crate::keys::{KeyType, SubscriberKey};
use crate::output;
use crate::retry::{retry, RetryPolicy};
use certd_api::{
    ApiError, CertdClient, ClientError, ErrorCode, IssueRequest, Subject, SubjectAltNames,
};
use journal::{BatchHeader, Entry};
use progress::{Counts, Progress, ProgressMode};
use report::{ReportLine, Status};
use serde::Serialize;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Options of `ra-cli batch issue`.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// The CSV file.
    pub input: PathBuf,
    /// Output directory (not needed for a dry run).
    pub out_dir: Option<PathBuf>,
    /// Profile.
    pub profile: String,
    /// Certifier.
    pub certifier: Option<String>,
    /// `--expires YYYY-MM-DD`.
    pub expires: Option<String>,
    /// `--days N`.
    pub days: Option<u32>,
    /// Type of generated keys.
    pub key_type: KeyType,
    /// One PKCS#12 password for every row; else one is generated per row.
    pub p12_password_file: Option<PathBuf>,
    /// PBKDF2/MAC iterations of PKCS#12 files and journaled keys.
    pub p12_iterations: u32,
    /// Ignore columns ra-cli does not know.
    pub ignore_unknown_columns: bool,
    /// Only validate.
    pub dry_run: bool,
    /// Issue the valid rows even if some are invalid.
    pub skip_invalid: bool,
    /// Concurrent requests.
    pub jobs: usize,
    /// Batch id (default: derived from input, profile, certifier, expiry).
    pub batch_id: Option<String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Progress display.
    pub progress: ProgressMode,
    /// Stop dispatching on Ctrl-C (the binary sets this).
    pub handle_ctrl_c: bool,
}

/// An invalid row, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidRow {
    /// Line in the input.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// What a batch did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The batch id (absent for a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Only validated.
    pub dry_run: bool,
    /// Whether the profile's rules were known (certd answered).
    pub profile_checked: bool,
    /// Data rows in the input.
    pub rows: u64,
    /// Rows that passed validation.
    pub valid: u64,
    /// Rows that did not.
    pub invalid: Vec<InvalidRow>,
    /// Rows issued in this run.
    pub issued: u64,
    /// Rows issued by earlier runs of the same batch.
    pub already_issued: u64,
    /// Rows that failed.
    pub failed: u64,
    /// Invalid rows left out.
    pub skipped: u64,
    /// Retries made.
    pub retries: u64,
    /// Seconds.
    pub elapsed_seconds: f64,
    /// Rows sent to certd per second in this run.
    pub rows_per_second: f64,
    /// The output directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_dir: Option<PathBuf>,
    /// The report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<PathBuf>,
    /// Ctrl-C stopped the run early.
    pub interrupted: bool,
    /// Nothing was issued because rows were invalid.
    pub refused_invalid: bool,
    /// Peak resident memory of this process, KiB (Linux `VmHWM`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
}

impl Summary {
    /// 0 when every row was issued (or, for a dry run, is valid); 1
    /// otherwise.
    pub fn exit_code(&self) -> i32 {
        let bad = if self.dry_run {
            !self.invalid.is_empty()
        } else {
            self.refused_invalid || self.interrupted || self.failed > 0 || self.skipped > 0
        };
        if bad {
            crate::EXIT_FAILED
        } else {
            crate::EXIT_OK
        }
    }

    /// The human form: invalid rows, then one summary line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for r in &self.invalid {
            s.push_str(&format!("line {}: {}\n", r.line, r.message));
        }
        if self.dry_run {
            s.push_str(&format!(
                "dry run: {} row(s), {} valid, {} invalid{}\n",
                self.rows,
                self.valid,
                self.invalid.len(),
                if self.profile_checked {
                    ""
                } else {
                    " (syntax only: certd did not answer, so the profile's rules were not checked)"
                }
            ));
            return s;
        }
        if self.refused_invalid {
            s.push_str(&format!(
                "{} invalid row(s) of {}: nothing was issued (fix them, or pass --skip-invalid to issue the {} valid row(s))\n",
                self.invalid.len(),
                self.rows,
                self.valid
            ));
            return s;
        }
        s.push_str(&format!(
            "batch {}: {} row(s): issued {} ({} by earlier runs), failed {}, skipped {}; {:.1} s, {:.1} rows/s{}\n",
            self.batch_id.as_deref().unwrap_or("-"),
            self.rows,
            self.issued + self.already_issued,
            self.already_issued,
            self.failed,
            self.skipped,
            self.elapsed_seconds,
            self.rows_per_second,
            if self.retries > 0 {
                format!(", {} retries", self.retries)
            } else {
                String::new()
            }
        ));
        if self.interrupted {
            s.push_str("interrupted: re-run the same command to finish the batch\n");
        }
        if let Some(r) = &self.report {
            s.push_str(&format!("report: {}\n", r.display()));
        }
        s
    }
}

/// Peak resident memory of this process in KiB, from `/proc/self/status`
/// (`None` where there is no such file).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The batch id derived from what defines a batch.
pub fn derive_batch_id(
    input_sha256: &[u8; 32],
    profile: &str,
    certifier: Option<&str>,
    expiry: &str,
    key_type: KeyType,
) -> String {
    let text = format!(
        "ra-cli batch v1\ninput={}\nprofile={profile}\ncertifier={}\nexpiry={expiry}\nkey_type={key_type}\n",
        hex::encode(input_sha256),
        certifier.unwrap_or("")
    );
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..12])
}

/// A row's request id: `batch-` and 32 hex digits of
/// SHA-256(batch id, row identity).
pub fn request_id(batch_id: &str, row: &Row) -> String {
    let mut h = sha2::Sha256::new();
    h.update(batch_id.as_bytes());
    h.update(b"\n");
    h.update(row.identity().as_bytes());
    format!("batch-{}", &hex::encode(h.finalize())[..32])
}

fn expiry_spec(opts: &BatchOptions) -> String {
    match (&opts.expires, opts.days) {
        (Some(d), _) => format!("expires:{d}"),
        (None, Some(n)) => format!("days:{n}"),
        (None, None) => "default".into(),
    }
}

/// The request certd gets for a row.
pub fn build_request(
    row: &Row,
    kind: Option<ProfileKind>,
    profile: &str,
    certifier: Option<&str>,
    not_after: Option<&str>,
    csr: String,
    request_id: String,
) -> IssueRequest {
    let common_name = row.common_name.clone().or_else(|| match kind {
        Some(ProfileKind::SmimeMailbox) => Some(row.email.clone()),
        _ => None,
    });
    let subject = Subject {
        common_name,
        organizational_unit: row.organizational_unit.clone(),
        ..Subject::default()
    };
    let san = SubjectAltNames {
        dns: row.dns.clone(),
        // A TLS server certificate carries no email: the column is the
        // host's contact.
        email: if kind == Some(ProfileKind::TlsServer) {
            Vec::new()
        } else {
            vec![row.email.clone()]
        },
        ip: Vec::new(),
    };
    IssueRequest {
        request_id,
        certifier: certifier.map(str::to_string),
        profile: profile.to_string(),
        csr,
        subject: (subject != Subject::default()).then_some(subject),
        san: Some(san),
        not_after: not_after.map(str::to_string),
        approval: None,
    }
}

/// The result of the validation pass.
#[derive(Debug)]
pub struct Validation {
    /// Data rows.
    pub rows: u64,
    /// Valid rows.
    pub valid: u64,
    /// Invalid rows.
    pub invalid: Vec<RowError>,
    /// SHA-256 of the input.
    pub input_sha256: [u8; 32],
    /// Whether some valid row has no CSR (ra-cli generates its key).
    pub needs_keys: bool,
}

/// Reads the whole input once and checks every row.
pub fn validate(path: &Path, rules: &Rules, ignore_unknown: bool) -> Result<Validation, Error> {
    let mut input = Input::open(path, ignore_unknown)?;
    let mut dups = Duplicates::default();
    let mut v = Validation {
        rows: 0,
        valid: 0,
        invalid: Vec::new(),
        input_sha256: [0; 32],
        needs_keys: false,
    };
    while let Some(next) = input.next_row() {
        v.rows += 1;
        let checked = next.and_then(|raw| {
            let (row, _) = check_row(&raw, rules)?;
            dups.check(&row).map_err(|message| RowError {
                line: raw.line,
                email: raw.email.clone(),
                common_name: raw.common_name.clone(),
                message,
            })?;
            Ok(row)
        });
        match checked {
            Ok(row) => {
                v.valid += 1;
                v.needs_keys |= row.csr.is_none();
            }
            Err(e) => v.invalid.push(e),
        }
    }
    if v.rows == 0 {
        return Err(Error::Input(format!(
            "input {} has a header but no rows",
            path.display()
        )));
    }
    v.input_sha256 = input.sha256();
    Ok(v)
}

/// The profile's rules as certd states them for this RA; `None` (with the
/// reason) when certd cannot be asked.
pub async fn profile_rules(
    client: &CertdClient,
    profile: &str,
    base_dir: &Path,
) -> Result<(Rules, Vec<String>), Error> {
    let profiles = client.profiles().await.map_err(Error::certd)?;
    let Some(p) = profiles.iter().find(|p| p.name == profile) else {
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::Usage(format!(
            "profile {profile:?} is not one this RA may use (it may use: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    Ok((
        Rules {
            profile: profile.to_string(),
            kind: ProfileKind::parse(&p.kind),
            key_types: Some(p.key_types.clone()),
            base_dir: base_dir.to_path_buf(),
        },
        p.certifiers.clone(),
    ))
}

/// Refuses to start when the certifier that would sign is not active.
async fn check_certifier(
    client: &CertdClient,
    certifier: Option<&str>,
    profile_certifiers: &[String],
) -> Result<(), Error> {
    let health = client.health().await.map_err(Error::certd)?;
    let wanted: Vec<&str> = match certifier {
        Some(c) => vec![c],
        None => profile_certifiers.iter().map(String::as_str).collect(),
    };
    let states: Vec<(&str, &str)> = wanted
        .iter()
        .filter_map(|w| {
            health
                .certifiers
                .iter()
                .find(|c| c.name == *w)
                .map(|c| (*w, c.state.as_str()))
        })
        .collect();
    if states.is_empty() || states.iter().any(|(_, s)| *s == "active") {
        return Ok(());
    }
    let (name, state) = states[0];
    let code = if state == "locked" {
        ErrorCode::CertifierLocked
    } else {
        ErrorCode::CertifierUnavailable
    };
    Err(Error::certd(ClientError::Api(ApiError::new(
        code,
        format!("certifier {name} is {state}; nothing was issued"),
    ))))
}

struct Work {
    seq: u64,
    row: Row,
    csr: Option<CsrInfo>,
    request_id: String,
}

enum Kind {
    Issued,
    Already,
    Failed,
    Skipped,
}

struct Outcome {
    seq: u64,
    line: ReportLine,
    kind: Kind,
}

struct Ctx {
    client: CertdClient,
    kind: Option<ProfileKind>,
    profile: String,
    certifier: Option<String>,
    not_after: Option<String>,
    key_type: KeyType,
    iterations: u32,
    out_dir: PathBuf,
    retry: RetryPolicy,
    fixed_password: Option<Zeroizing<String>>,
    passwords: Mutex<HashMap<String, Zeroizing<String>>>,
    pending: Mutex<HashMap<String, journal::Pending>>,
    journal: journal::Writer,
    stop: AtomicBool,
    retries: AtomicU64,
}

struct RowFailure {
    code: String,
    message: String,
}

impl From<Error> for RowFailure {
    fn from(e: Error) -> Self {
        RowFailure {
            code: e.certd_code().unwrap_or("ra_cli").to_string(),
            message: match &e {
                Error::Certd {
                    source: ClientError::Api(api),
                    ..
                } => api.message.clone(),
                other => other.to_string(),
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking worker cannot leave these maps half-updated (single
    // insert/remove calls), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum KeyHandle {
    None,
    /// PKCS#8 DER of a key generated in this run (wiped when dropped).
    Plain(Zeroizing<Vec<u8>>),
    /// A key from the journal, encrypted under the row's password.
    Encrypted(String),
}

/// PBKDF2 iterations for a journaled key whose password was generated:
/// ~137 random bits need no stretching (iterations only slow down guessing
/// of weak passwords), so one round keeps the format standard at no cost.
/// Operator-chosen passwords get the full PKCS#12 count.
const GENERATED_PASSWORD_ITERATIONS: u32 = 1;

fn later_than(a: &str, b: &str) -> bool {
    let rfc = &time::format_description::well_known::Rfc3339;
    match (OffsetDateTime::parse(a, rfc), OffsetDateTime::parse(b, rfc)) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}

async fn process(ctx: &Ctx, work: &Work) -> Result<(String, String, bool), RowFailure> {
    let row = &work.row;
    let stem = row.file_stem();
    let generated = work.csr.is_none();
    let mut password: Option<Zeroizing<String>> = None;
    let (csr, key) = match &work.csr {
        Some(info) => (info.pem.clone(), KeyHandle::None),
        None => {
            let pending = lock(&ctx.pending).remove(&work.request_id);
            match pending {
                Some(p) => {
                    let pw = match &ctx.fixed_password {
                        Some(pw) => pw.clone(),
                        None => lock(&ctx.passwords)
                            .get(&row.email)
                            .cloned()
                            .ok_or_else(|| RowFailure {
                                code: "ra_cli".into(),
                                message: format!(
                                "the journal holds this row's key but {} has no password for {}",
                                journal::PASSWORDS,
                                row.email
                            ),
                            })?,
                    };
                    password = Some(pw);
                    (p.csr, KeyHandle::Encrypted(p.key))
                }
                None => {
                    let (pw, new_pw) = match &ctx.fixed_password {
                        Some(pw) => (pw.clone(), false),
                        None => (crate::keys::random_password()?, true),
                    };
                    let kt = ctx.key_type;
                    let cn = row.common_name.clone().unwrap_or_else(|| row.email.clone());
                    let iterations = if new_pw {
                        GENERATED_PASSWORD_ITERATIONS
                    } else {
                        ctx.iterations
                    };
                    let pw2 = pw.clone();
                    let (key, csr, enc) = tokio::task::spawn_blocking(move || {
                        let key = SubscriberKey::generate(kt)?;
                        let csr = key.csr_pem(Some(&cn))?;
                        let der = key.pkcs8_der()?;
                        let enc = crate::keys::encrypt_pkcs8(&der, pw2.as_bytes(), iterations)?;
                        Ok::<_, Error>((der, csr, enc))
                    })
                    .await
                    .map_err(|e| Error::Crypto(e.to_string()))??;
                    let pw_line = new_pw.then(|| {
                        Zeroizing::new(journal::password_line(
                            row.line,
                            &row.email,
                            &format!("{stem}.p12"),
                            &pw,
                        ))
                    });
                    ctx.journal
                        .append(
                            &Entry::Requested {
                                line: row.line,
                                request_id: work.request_id.clone(),
                                csr: csr.clone(),
                                key: enc,
                            },
                            pw_line,
                            false,
                        )
                        .await?;
                    password = Some(pw);
                    (csr, KeyHandle::Plain(key))
                }
            }
        }
    };
    let req = build_request(
        row,
        ctx.kind,
        &ctx.profile,
        ctx.certifier.as_deref(),
        ctx.not_after.as_deref(),
        csr,
        work.request_id.clone(),
    );
    let (result, _) = retry(
        ctx.retry,
        || ctx.client.issue(&req),
        |_, _, _| {
            ctx.retries.fetch_add(1, Ordering::Relaxed);
        },
    )
    .await;
    let resp = result.map_err(|e| RowFailure::from(Error::certd(e)))?;
    let clamped = resp.not_after_clamped
        || ctx
            .not_after
            .as_deref()
            .is_some_and(|want| later_than(want, &resp.not_after));

    // Files: PKCS#12 (generated keys) and PEM, each atomically.
    let out_dir = ctx.out_dir.clone();
    let iterations = ctx.iterations;
    let friendly = row.common_name.clone().unwrap_or_else(|| row.email.clone());
    let cert_pem = resp.certificate.clone();
    let chain_pem = resp.chain.clone();
    let stem2 = stem.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let pem_path = out_dir.join(format!("{stem2}.pem"));
        let p12_path = out_dir.join(format!("{stem2}.p12"));
        let result = (|| {
            if generated {
                let pw = password
                    .as_ref()
                    .ok_or_else(|| Error::Crypto("no password for the PKCS#12".into()))?;
                let der = match key {
                    KeyHandle::Plain(der) => der,
                    KeyHandle::Encrypted(pem) => {
                        SubscriberKey::from_encrypted_pem(&pem, pw.as_bytes())?.pkcs8_der()?
                    }
                    KeyHandle::None => return Err(Error::Crypto("no key for the PKCS#12".into())),
                };
                let leaf = output::pem_to_der(&cert_pem)?;
                let chain: Vec<Vec<u8>> = chain_pem
                    .iter()
                    .map(|c| output::pem_to_der(c))
                    .collect::<Result<_, _>>()?;
                let p12 = crate::p12::build(&der, &leaf, &chain, &friendly, pw, iterations)?;
                // Not flushed one by one: see the journal's module docs.
                output::write_atomic(&p12_path, &p12, output::MODE_SECRET, false)?;
            }
            output::write_atomic(
                &pem_path,
                output::pem_bundle(&cert_pem, &chain_pem).as_bytes(),
                output::MODE_PUBLIC,
                false,
            )
        })();
        if result.is_err() {
            // Nothing partial stays behind for a failed row.
            let _ = std::fs::remove_file(&p12_path);
            let _ = std::fs::remove_file(&pem_path);
        }
        result
    })
    .await
    .map_err(|e| Error::Crypto(e.to_string()))?;
    written?;
    ctx.journal
        .append(
            &Entry::Issued {
                line: row.line,
                request_id: work.request_id.clone(),
                serial: resp.serial.clone(),
                not_after: resp.not_after.clone(),
                clamped,
                file: stem.clone(),
                p12: generated,
            },
            None,
            false,
        )
        .await?;
    Ok((resp.serial, resp.not_after, clamped))
}

async fn worker(
    ctx: Arc<Ctx>,
    work_rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Work>>>,
    results: tokio::sync::mpsc::UnboundedSender<Outcome>,
) {
    loop {
        let next = work_rx.lock().await.recv().await;
        let Some(work) = next else { break };
        if ctx.stop.load(Ordering::Relaxed) {
            continue;
        }
        let base = ReportLine {
            line: work.row.line,
            email: work.row.email.clone(),
            common_name: work.row.common_name.clone().unwrap_or_default(),
            serial: String::new(),
            not_after: String::new(),
            not_after_clamped: false,
            status: Status::Issued,
            error_code: String::new(),
            error_message: String::new(),
        };
        let outcome = match process(&ctx, &work).await {
            Ok((serial, not_after, clamped)) => Outcome {
                seq: work.seq,
                line: ReportLine {
                    serial,
                    not_after,
                    not_after_clamped: clamped,
                    ..base
                },
                kind: Kind::Issued,
            },
            Err(f) => {
                let _ = ctx
                    .journal
                    .append(
                        &Entry::Failed {
                            line: work.row.line,
                            request_id: work.request_id.clone(),
                            code: f.code.clone(),
                            message: f.message.clone(),
                        },
                        None,
                        false,
                    )
                    .await;
                Outcome {
                    seq: work.seq,
                    line: ReportLine {
                        status: Status::Failed,
                        error_code: f.code,
                        error_message: f.message,
                        ..base
                    },
                    kind: Kind::Failed,
                }
            }
        };
        if results.send(outcome).is_err() {
            break;
        }
    }
}

fn skipped_line(e: &RowError) -> ReportLine {
    ReportLine {
        line: e.line,
        email: e.email.clone(),
        common_name: e.common_name.clone(),
        serial: String::new(),
        not_after: String::new(),
        not_after_clamped: false,
        status: Status::Skipped,
        error_code: "invalid_row".into(),
        error_message: e.message.clone(),
    }
}

/// Streams the input a second time and hands valid rows to the workers.
#[allow(clippy::too_many_arguments)]
fn produce(
    input: PathBuf,
    rules: Rules,
    ignore_unknown: bool,
    batch_id: String,
    done: HashMap<String, journal::Done>,
    stop: Arc<Ctx>,
    work_tx: tokio::sync::mpsc::Sender<Work>,
    results: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> Result<(), Error> {
    let mut input = Input::open(&input, ignore_unknown)?;
    let mut dups = Duplicates::default();
    let mut seq = 0u64;
    while let Some(next) = input.next_row() {
        if stop.stop.load(Ordering::Relaxed) {
            break;
        }
        seq += 1;
        let seq = seq - 1;
        let checked = next.and_then(|raw| {
            let (row, csr) = check_row(&raw, &rules)?;
            dups.check(&row).map_err(|message| RowError {
                line: raw.line,
                email: raw.email.clone(),
                common_name: raw.common_name.clone(),
                message,
            })?;
            Ok((row, csr))
        });
        let outcome = match checked {
            Err(e) => Outcome {
                seq,
                line: skipped_line(&e),
                kind: Kind::Skipped,
            },
            Ok((row, csr)) => {
                let request_id = request_id(&batch_id, &row);
                match done.get(&request_id) {
                    Some(d) => Outcome {
                        seq,
                        line: ReportLine {
                            line: row.line,
                            email: row.email.clone(),
                            common_name: row.common_name.clone().unwrap_or_default(),
                            serial: d.serial.clone(),
                            not_after: d.not_after.clone(),
                            not_after_clamped: d.clamped,
                            status: Status::Issued,
                            error_code: String::new(),
                            error_message: String::new(),
                        },
                        kind: Kind::Already,
                    },
                    None => {
                        if work_tx
                            .blocking_send(Work {
                                seq,
                                row,
                                csr,
                                request_id,
                            })
                            .is_err()
                        {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        if results.send(outcome).is_err() {
            break;
        }
    }
    Ok(())
}

fn open_out_dir(dir: &Path) -> Result<std::fs::File, Error> {
    let out_err = |message: String| Error::Output {
        path: dir.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| out_err(format!("cannot create the output directory: {e}")))?;
    let lock_path = dir.join(".ra-cli.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| out_err(format!("the output directory is not writable: {e}")))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(out_err(
                "another ra-cli run is working in this directory".into(),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(out_err(format!("cannot lock: {e}"))),
    }
    // Probe: the lock file may exist from a run as another user.
    tempfile::Builder::new()
        .prefix(output::TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| out_err(format!("the output directory is not writable: {e}")))?;
    output::remove_stale_temps(dir)?;
    Ok(lock)
}

fn header_mismatch(h: &BatchHeader, want: &BatchHeader) -> Option<String> {
    let pairs = [
        ("batch id", &h.batch_id, &want.batch_id),
        ("profile", &h.profile, &want.profile),
        ("expiry", &h.expiry, &want.expiry),
        ("key type", &h.key_type, &want.key_type),
    ];
    for (what, had, now) in pairs {
        if had != now {
            return Some(format!("{what} {had:?} there, {now:?} now"));
        }
    }
    if h.certifier != want.certifier {
        return Some(format!(
            "certifier {:?} there, {:?} now",
            h.certifier, want.certifier
        ));
    }
    None
}

/// Runs `ra-cli batch issue`. `client` may be `None` only for a dry run
/// when certd cannot be reached (syntax checks only).
pub async fn run(client: Option<CertdClient>, opts: &BatchOptions) -> Result<Summary, Error> {
    let t0 = Instant::now();
    if opts.jobs == 0 {
        return Err(Error::Usage("--jobs must be at least 1".into()));
    }
    let base_dir = opts
        .input
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut rules = Rules {
        profile: opts.profile.clone(),
        kind: None,
        key_types: None,
        base_dir: base_dir.clone(),
    };
    let mut profile_certifiers = Vec::new();
    let mut profile_checked = false;
    if let Some(c) = &client {
        match profile_rules(c, &opts.profile, &base_dir).await {
            Ok((r, certs)) => {
                rules = r;
                profile_certifiers = certs;
                profile_checked = true;
            }
            Err(e @ Error::Certd { .. }) if opts.dry_run => {
                eprintln!("ra-cli: warning: {e}\nra-cli: checking the input's syntax only");
            }
            Err(e) => return Err(e),
        }
    }
    let client = match client {
        Some(c) => Some(c),
        None if opts.dry_run => None,
        None => return Err(Error::Usage("no certd client".into())),
    };
    let validation = validate(&opts.input, &rules, opts.ignore_unknown_columns)?;
    let mut summary = Summary {
        batch_id: None,
        dry_run: opts.dry_run,
        profile_checked,
        rows: validation.rows,
        valid: validation.valid,
        invalid: validation
            .invalid
            .iter()
            .map(|e| InvalidRow {
                line: e.line,
                message: e.message.clone(),
            })
            .collect(),
        issued: 0,
        already_issued: 0,
        failed: 0,
        skipped: 0,
        retries: 0,
        elapsed_seconds: 0.0,
        rows_per_second: 0.0,
        out_dir: opts.out_dir.clone(),
        report: None,
        interrupted: false,
        refused_invalid: false,
        peak_rss_kib: None,
    };
    if validation.needs_keys {
        if let Some(allowed) = &rules.key_types {
            if !allowed.iter().any(|k| k == opts.key_type.as_str()) {
                return Err(Error::Usage(format!(
                    "profile {} does not allow key type {} for generated keys (allowed: {}): use --key-type",
                    opts.profile,
                    opts.key_type,
                    allowed.join(", ")
                )));
            }
        }
    }
    if opts.dry_run {
        summary.elapsed_seconds = t0.elapsed().as_secs_f64();
        return Ok(summary);
    }
    if !validation.invalid.is_empty() && !opts.skip_invalid {
        summary.refused_invalid = true;
        return Ok(summary);
    }
    let Some(client) = client else {
        return Err(Error::Usage("no certd client".into()));
    };
    let Some(out_dir) = opts.out_dir.clone() else {
        return Err(Error::Usage("batch issue needs --out DIR".into()));
    };
    let fixed_password = match &opts.p12_password_file {
        Some(p) if validation.needs_keys => Some(output::read_secret_file(p)?),
        _ => None,
    };
    check_certifier(&client, opts.certifier.as_deref(), &profile_certifiers).await?;
    let _lock = open_out_dir(&out_dir)?;

    let state = journal::read(&out_dir)?;
    let expiry = expiry_spec(opts);
    let batch_id = match (&opts.batch_id, &state.header) {
        (Some(b), _) => b.clone(),
        (None, _) => derive_batch_id(
            &validation.input_sha256,
            &opts.profile,
            opts.certifier.as_deref(),
            &expiry,
            opts.key_type,
        ),
    };
    if batch_id.is_empty() || batch_id.len() > 64 || !batch_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::Usage(
            "--batch-id must be 1 to 64 printable characters without spaces".into(),
        ));
    }
    let now = OffsetDateTime::now_utc();
    let rfc = &time::format_description::well_known::Rfc3339;
    let not_after = match &state.header {
        Some(h) => h.not_after.clone(),
        None => crate::commands::not_after(opts.expires.as_deref(), opts.days, now)?,
    };
    let header = BatchHeader {
        version: 1,
        batch_id: batch_id.clone(),
        input: opts.input.display().to_string(),
        input_sha256: hex::encode(validation.input_sha256),
        profile: opts.profile.clone(),
        certifier: opts.certifier.clone(),
        expiry,
        not_after: not_after.clone(),
        key_type: opts.key_type.as_str().to_string(),
        created: now.format(rfc).unwrap_or_default(),
    };
    if let Some(h) = &state.header {
        if let Some(diff) = header_mismatch(h, &header) {
            return Err(Error::Usage(format!(
                "{} holds another batch ({diff}): the input or the options changed since it was \
                 started. Use a new --out directory, or repeat the original command (pass \
                 --batch-id {} to continue that batch with an edited input)",
                out_dir.display(),
                h.batch_id
            )));
        }
    }
    let passwords = if validation.needs_keys && fixed_password.is_none() {
        journal::read_passwords(&out_dir.join(journal::PASSWORDS))?
    } else {
        HashMap::new()
    };
    let writer =
        journal::Writer::open(&out_dir, validation.needs_keys && fixed_password.is_none())?;
    if state.header.is_none() {
        writer.append(&Entry::Batch(header), None, true).await?;
    }
    writer
        .append(
            &Entry::Run {
                started: now.format(rfc).unwrap_or_default(),
            },
            None,
            false,
        )
        .await?;
    summary.batch_id = Some(batch_id.clone());

    let ctx = Arc::new(Ctx {
        client,
        kind: rules.kind,
        profile: opts.profile.clone(),
        certifier: opts.certifier.clone(),
        not_after,
        key_type: opts.key_type,
        iterations: opts.p12_iterations,
        out_dir: out_dir.clone(),
        retry: opts.retry,
        fixed_password,
        passwords: Mutex::new(passwords),
        pending: Mutex::new(state.pending),
        journal: writer,
        stop: AtomicBool::new(false),
        retries: AtomicU64::new(0),
    });
    if opts.handle_ctrl_c {
        let c = ctx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.stop.store(true, Ordering::Relaxed);
                eprintln!("\nra-cli: stopping after the rows in flight (Ctrl-C again aborts; re-running resumes)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    // The journal is consistent at every instant: a re-run
                    // resumes from here exactly as after a crash.
                    std::process::exit(130);
                }
            }
        });
    }

    let (work_tx, work_rx) = tokio::sync::mpsc::channel::<Work>(opts.jobs * 2);
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let producer = {
        let (input, rules, ignore, bid, done, ctx, tx, res) = (
            opts.input.clone(),
            rules.clone(),
            opts.ignore_unknown_columns,
            batch_id.clone(),
            state.done,
            ctx.clone(),
            work_tx,
            res_tx.clone(),
        );
        tokio::task::spawn_blocking(move || produce(input, rules, ignore, bid, done, ctx, tx, res))
    };
    let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
    let mut workers = Vec::new();
    for _ in 0..opts.jobs {
        workers.push(tokio::spawn(worker(
            ctx.clone(),
            work_rx.clone(),
            res_tx.clone(),
        )));
    }
    drop(res_tx);

    let mut progress = Progress::new(opts.progress, validation.rows);
    let mut counts = Counts::default();
    let mut report = report::Writer::new(&out_dir)?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let run_start = Instant::now();
    loop {
        tokio::select! {
            o = res_rx.recv() => {
                let Some(o) = o else { break };
                match o.kind {
                    Kind::Issued => counts.issued += 1,
                    Kind::Already => counts.already += 1,
                    Kind::Failed => counts.failed += 1,
                    Kind::Skipped => counts.skipped += 1,
                }
                report.push(o.seq, o.line)?;
                counts.retries = ctx.retries.load(Ordering::Relaxed);
                progress.update(&counts);
            }
            _ = tick.tick() => {
                counts.retries = ctx.retries.load(Ordering::Relaxed);
                progress.update(&counts);
            }
        }
    }
    progress.finish();
    let produced = producer
        .await
        .map_err(|e| Error::Crypto(format!("input reader: {e}")))?;
    for w in workers {
        let _ = w.await;
    }
    produced?;
    let interrupted = ctx.stop.load(Ordering::Relaxed);
    let elapsed = run_start.elapsed().as_secs_f64();
    drop(ctx);
    journal::compact_passwords(&out_dir)?;
    let report_path = report.finish()?;
    summary.issued = counts.issued;
    summary.already_issued = counts.already;
    summary.failed = counts.failed;
    summary.skipped = counts.skipped;
    summary.retries = counts.retries;
    summary.elapsed_seconds = t0.elapsed().as_secs_f64();
    summary.rows_per_second = (counts.issued + counts.failed) as f64 / elapsed.max(1e-3);
    summary.report = Some(report_path);
    summary.interrupted = interrupted;
    summary.peak_rss_kib = peak_rss_kib();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(email: &str, cn: Option<&str>, dns: &[&str]) -> Row {
        Row {
            line: 2,
            email: email.into(),
            common_name: cn.map(str::to_string),
            organizational_unit: None,
            dns: dns.iter().map(|s| s.to_string()).collect(),
            csr: None,
            csr_path: None,
        }
    }

    #[test]
    fn request_ids_are_stable_and_distinct() {
        let a = row("a@example.com", None, &[]);
        let id = request_id("b1", &a);
        assert!(id.starts_with("batch-") && id.len() == 38, "{id}");
        assert_eq!(id, request_id("b1", &a));
        assert_ne!(id, request_id("b2", &a));
        let mut moved = a.clone();
        moved.line = 99;
        assert_eq!(id, request_id("b1", &moved), "the line is not identity");
        assert_ne!(id, request_id("b1", &row("b@example.com", None, &[])));
        let sha = [7u8; 32];
        let b = derive_batch_id(&sha, "p", None, "days:30", KeyType::P256);
        assert_eq!(b.len(), 24);
        assert_ne!(
            b,
            derive_batch_id(&sha, "p", None, "days:31", KeyType::P256)
        );
        assert_ne!(
            b,
            derive_batch_id(&sha, "q", None, "days:30", KeyType::P256)
        );
    }

    #[test]
    fn requests_follow_the_profile_kind() {
        let r = row("a@example.com", None, &[]);
        let req = build_request(
            &r,
            Some(ProfileKind::SmimeMailbox),
            "s",
            None,
            None,
            "csr".into(),
            "id".into(),
        );
        assert_eq!(
            req.subject.and_then(|s| s.common_name).as_deref(),
            Some("a@example.com")
        );
        assert_eq!(
            req.san.map(|s| s.email),
            Some(vec!["a@example.com".to_string()])
        );
        let h = row(
            "ops@example.com",
            Some("www.example.com"),
            &["www.example.com"],
        );
        let req = build_request(
            &h,
            Some(ProfileKind::TlsServer),
            "t",
            Some("c"),
            Some("2030-01-01T00:00:00Z"),
            "csr".into(),
            "id".into(),
        );
        let san = req.san.expect("san");
        assert!(san.email.is_empty());
        assert_eq!(san.dns, vec!["www.example.com"]);
        assert_eq!(req.certifier.as_deref(), Some("c"));
    }

    #[test]
    fn exit_codes() {
        let mut s = Summary {
            batch_id: None,
            dry_run: false,
            profile_checked: true,
            rows: 2,
            valid: 2,
            invalid: vec![],
            issued: 2,
            already_issued: 0,
            failed: 0,
            skipped: 0,
            retries: 0,
            elapsed_seconds: 1.0,
            rows_per_second: 2.0,
            out_dir: None,
            report: None,
            interrupted: false,
            refused_invalid: false,
            peak_rss_kib: peak_rss_kib(),
        };
        assert!(s.peak_rss_kib.is_some_and(|k| k > 0));
        assert_eq!(s.exit_code(), 0);
        s.failed = 1;
        assert_eq!(s.exit_code(), 1);
        s.failed = 0;
        s.dry_run = true;
        s.invalid.push(InvalidRow {
            line: 3,
            message: "x".into(),
        });
        assert_eq!(s.exit_code(), 1);
        assert!(s.render().contains("line 3: x"));
    }
}
