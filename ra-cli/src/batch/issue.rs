//! Issuing the rows of a batch: a producer reads the input again (checking
//! that every row is the one validated) and hands rows to `jobs` workers;
//! each row's key is put in `keys/`, the row is journaled, requested,
//! delivered durably (its key leaving `keys/` in the rename of its
//! PKCS#12), then journaled as issued.
//!
//! A failure that is not about the row itself (certd locked, unreachable,
//! over its rate limit, a file or the journal that cannot be written) stops
//! the dispatch of further rows: they would fail the same way, and each
//! would leave a request behind. Such rows are reported `not_attempted`.

use super::journal::{self, Entry, Flush, KeyRef, RowRecord};
use super::keystore::{Found, KeyStore};
use super::report::{ReportLine, Status};
use super::{build_request, request_id};
use crate::csr::CsrInfo;
use crate::error::Error;
use crate::input::{check_row, Duplicates, Input, ProfileKind, Row, RowError, Rules};
use crate::keys::{KeyType, SubscriberKey};
use crate::output;
use crate::retry::{retry, RetryPolicy};
use certd_api::{CertdClient, ClientError, ErrorCode};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Why dispatching stopped before the end of the input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stopped {
    /// The code of the failure that stopped it (`certifier_locked`,
    /// `rate_limited`, `unreachable`, `output`, `interrupted`, ...).
    pub code: String,
    /// Its message.
    pub message: String,
}

pub(super) struct Work {
    pub seq: u64,
    pub row: Row,
    pub csr: Option<CsrInfo>,
    pub request_id: String,
}

pub(super) enum Kind {
    Issued,
    Already,
    Failed,
    Skipped,
    NotAttempted,
}

pub(super) struct Outcome {
    pub seq: u64,
    pub line: ReportLine,
    pub kind: Kind,
}

/// What every worker shares.
pub(super) struct Ctx {
    pub client: CertdClient,
    pub kind: Option<ProfileKind>,
    pub vouching: super::Vouching,
    pub profile: String,
    pub certifier: Option<String>,
    pub not_after: Option<String>,
    pub key_type: KeyType,
    pub iterations: u32,
    pub out_dir: PathBuf,
    /// `keys/` of the output directory.
    pub keys: KeyStore,
    pub retry: RetryPolicy,
    /// `--p12-password-file`; else passwords are generated.
    pub fixed_password: Option<Zeroizing<String>>,
    /// Generated passwords of journaled keys, by PKCS#12 file name.
    pub passwords: Mutex<HashMap<String, Zeroizing<String>>>,
    /// Rows the journal holds a request of, not finished, by request id.
    pub pending: Mutex<HashMap<String, RowRecord>>,
    pub journal: journal::Writer,
    pub stop: AtomicBool,
    pub stopped: Mutex<Option<Stopped>>,
    pub retries: AtomicU64,
}

impl Ctx {
    /// Stops dispatching; the first reason is kept.
    pub fn stop_with(&self, code: &str, message: &str) {
        let mut s = lock(&self.stopped);
        if s.is_none() {
            *s = Some(Stopped {
                code: code.to_string(),
                message: message.to_string(),
            });
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

pub(super) struct RowFailure {
    code: String,
    message: String,
    /// The serial certd answered with (the files could not be written).
    serial: Option<String>,
    /// Whether certd may hold a certificate for the request.
    may_exist: bool,
    /// Whether the failure is not about this row and stops the dispatch.
    stops: bool,
}

impl From<Error> for RowFailure {
    fn from(e: Error) -> Self {
        RowFailure {
            code: e.code().to_string(),
            message: match &e {
                Error::Certd {
                    source: ClientError::Api(api),
                    ..
                } => api.message.clone(),
                other => other.to_string(),
            },
            serial: None,
            may_exist: false,
            stops: true,
        }
    }
}

/// What a failed attempt tells about whether certd holds a certificate
/// for the request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    /// certd looked the id up (its answer comes after the idempotency
    /// check, which would have returned the certificate) and refused:
    /// there is none.
    NoCertificate,
    /// certd refused before looking the id up (rate limit, grant, syntax):
    /// nothing beyond what was known before.
    Nothing,
    /// The answer was lost, or certd knows the id already: there may be
    /// one.
    MaybeIssued,
}

fn evidence(e: &ClientError) -> Evidence {
    use ErrorCode::*;
    match e {
        ClientError::Api(a) => match a.code {
            CertifierLocked | CertifierUnavailable | CertifierFault | StorageFull
            | ApprovalRequired | BadCsr | WeakKey | KeyNotPermitted | NameNotPermitted
            | BadValidity | LintFailed => Evidence::NoCertificate,
            Internal | InProgress | Conflict => Evidence::MaybeIssued,
            _ => Evidence::Nothing,
        },
        ClientError::Config(_) => Evidence::Nothing,
        _ => Evidence::MaybeIssued,
    }
}

/// Whether certd refused this row for what it holds (the next row may
/// pass), rather than for a state of certd or of this RA.
fn about_the_row(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api(a) if matches!(
            a.code,
            ErrorCode::BadRequest
                | ErrorCode::BadCsr
                | ErrorCode::WeakKey
                | ErrorCode::KeyNotPermitted
                | ErrorCode::BadValidity
                | ErrorCode::NameNotPermitted
                | ErrorCode::ApprovalRequired
                | ErrorCode::LintFailed
                | ErrorCode::Conflict
        )
    )
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking worker cannot leave these maps half-updated (single
    // insert/remove calls), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum KeyHandle {
    /// A subscriber's CSR: no key here.
    None,
    /// PKCS#8 DER of a key generated in this run (wiped when dropped).
    Plain(Zeroizing<Vec<u8>>),
    /// A key from its key file, encrypted under the row's password.
    Encrypted(Zeroizing<String>),
    /// A key already in its PKCS#12, staged in `keys/` by an earlier run
    /// that stopped before delivering it.
    Staged(PathBuf),
    /// A key already in its delivered PKCS#12; the earlier run stopped
    /// before journaling the delivery.
    Delivered(PathBuf),
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

/// What a delivered row reports.
struct Delivered {
    serial: String,
    not_after: String,
    clamped: bool,
}

/// The key, CSR and password of a row: the journaled ones when an earlier
/// run sent its request (so certd sees the very same request), else new
/// ones: the key in its file in `keys/`, then journaled (with the
/// password, and the directory flushed first) before the request.
async fn key_for(
    ctx: &Ctx,
    work: &Work,
    stem: &str,
) -> Result<(String, KeyHandle, Option<Zeroizing<String>>), RowFailure> {
    let row = &work.row;
    let pending = lock(&ctx.pending).remove(&work.request_id);
    let repeat = |csr: String| Entry::Requested {
        line: row.line,
        request_id: work.request_id.clone(),
        file: stem.to_string(),
        csr,
        key: None,
        key_file: None,
        key_sha256: None,
    };
    if let Some(info) = &work.csr {
        ctx.journal
            .append(&repeat(info.pem.clone()), None, Flush::NONE)
            .await?;
        return Ok((info.pem.clone(), KeyHandle::None, None));
    }
    if let Some(RowRecord {
        csr: Some(csr),
        key: Some(key),
        line,
        ..
    }) = pending
    {
        // Checked before the run: the password is there and opens the key.
        let pw = match &ctx.fixed_password {
            Some(pw) => pw.clone(),
            None => lock(&ctx.passwords)
                .get(&format!("{stem}.p12"))
                .cloned()
                .ok_or_else(|| {
                    RowFailure::from(Error::Password {
                        code: "password_missing",
                        message: format!("no password for the journaled key of {stem}.p12"),
                    })
                })?,
        };
        let handle = match key {
            KeyRef::Inline(pem) => KeyHandle::Encrypted(Zeroizing::new(pem)),
            KeyRef::File { sha256 } => {
                match ctx.keys.find(&work.request_id, &sha256, stem, line)? {
                    Found::Key(pem) => KeyHandle::Encrypted(pem),
                    Found::Staged(p) => KeyHandle::Staged(p),
                    Found::Delivered(p) => KeyHandle::Delivered(p),
                }
            }
        };
        // Journaled again: this run sends it, so certd may issue now.
        ctx.journal
            .append(&repeat(csr.clone()), None, Flush::NONE)
            .await?;
        return Ok((csr, handle, Some(pw)));
    }
    let (pw, generated_pw) = match &ctx.fixed_password {
        Some(pw) => (pw.clone(), false),
        None => (crate::keys::random_password()?, true),
    };
    let kt = ctx.key_type;
    let cn = row.common_name.clone().unwrap_or_else(|| row.email.clone());
    let iterations = if generated_pw {
        GENERATED_PASSWORD_ITERATIONS
    } else {
        ctx.iterations
    };
    let pw2 = pw.clone();
    let keys = ctx.keys.clone();
    let id = work.request_id.clone();
    let (der, csr, sha256) = tokio::task::spawn_blocking(move || {
        let key = SubscriberKey::generate(kt)?;
        let csr = key.csr_pem(Some(&cn))?;
        let der = key.pkcs8_der()?;
        let enc = Zeroizing::new(crate::keys::encrypt_pkcs8(
            &der,
            pw2.as_bytes(),
            iterations,
        )?);
        let sha256 = keys.write(&id, &enc)?;
        Ok::<_, Error>((der, csr, sha256))
    })
    .await
    .map_err(|e| Error::Crypto(e.to_string()))??;
    let pw_line = generated_pw
        .then(|| journal::password_line(row.line, &row.email, &format!("{stem}.p12"), &pw));
    ctx.journal
        .append(
            &Entry::Requested {
                line: row.line,
                request_id: work.request_id.clone(),
                file: stem.to_string(),
                csr: csr.clone(),
                key: None,
                key_file: Some(super::keystore::file_name(&work.request_id)),
                key_sha256: Some(sha256),
            },
            pw_line,
            // The key file's name is durable before the line naming it.
            Flush::KEYS,
        )
        .await?;
    Ok((csr, KeyHandle::Plain(der), Some(pw)))
}

/// A row's files to write.
struct Files {
    out_dir: PathBuf,
    keys: KeyStore,
    request_id: String,
    stem: String,
    password: Option<Zeroizing<String>>,
    friendly: String,
    cert_pem: String,
    chain_pem: Vec<String>,
    iterations: u32,
}

/// Where a row's PKCS#12 is once prepared.
enum P12 {
    /// It has none (a subscriber's CSR).
    None,
    /// In `keys/`; `built` in this run (its directory entry is flushed
    /// before the key file goes).
    Staged { path: PathBuf, built: bool },
    /// Delivered already.
    Delivered,
}

impl Files {
    fn pem_path(&self) -> PathBuf {
        self.out_dir.join(format!("{}.pem", self.stem))
    }

    fn p12_path(&self) -> PathBuf {
        self.out_dir.join(format!("{}.p12", self.stem))
    }

    fn password(&self) -> Result<&str, Error> {
        self.password
            .as_deref()
            .map(String::as_str)
            .ok_or_else(|| Error::Crypto("no password for the PKCS#12".into()))
    }

    /// Builds the row's PKCS#12 from `key` and stages it in `keys/`
    /// (file flushed), or checks the one an earlier run built.
    fn prepare(&self, key: KeyHandle) -> Result<P12, Error> {
        let der = match key {
            KeyHandle::None => return Ok(P12::None),
            KeyHandle::Plain(der) => der,
            KeyHandle::Encrypted(pem) => {
                SubscriberKey::from_encrypted_pem(&pem, self.password()?.as_bytes())?.pkcs8_der()?
            }
            KeyHandle::Staged(path) => {
                self.check_built(&path)?;
                return Ok(P12::Staged { path, built: false });
            }
            KeyHandle::Delivered(path) => {
                self.check_built(&path)?;
                return Ok(P12::Delivered);
            }
        };
        let leaf = output::pem_to_der(&self.cert_pem)?;
        let chain: Vec<Vec<u8>> = self
            .chain_pem
            .iter()
            .map(|c| output::pem_to_der(c))
            .collect::<Result<_, _>>()?;
        let p12 = crate::p12::build(
            &der,
            &leaf,
            &chain,
            &self.friendly,
            self.password()?,
            self.iterations,
        )?;
        let path = self.keys.stage(&self.request_id, &p12)?;
        Ok(P12::Staged { path, built: true })
    }

    /// Checks that a PKCS#12 an earlier run built opens with the row's
    /// password and holds the certificate certd answered with now (certd
    /// answers a repeated request with the certificate it issued).
    fn check_built(&self, path: &Path) -> Result<(), Error> {
        let data = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        let leaf = crate::p12::leaf(&data, self.password()?)?;
        if leaf != output::pem_to_der(&self.cert_pem)? {
            return Err(Error::output(
                path,
                "holds another certificate than the one certd issued for this row's request: \
                 move it away (keep it if it is in use) and re-run",
            ));
        }
        Ok(())
    }

    /// Delivers: the key file goes (its PKCS#12 is durable in `keys/`),
    /// the certificate is written (flushed), and the staged PKCS#12 is
    /// renamed into the output directory, which takes the key out of
    /// `keys/` in the same step. A failure leaves no `.pem` behind; the
    /// key stays in `keys/` for the next run.
    fn deliver(&self, p12: &P12) -> Result<(), Error> {
        if let P12::Staged { .. } = p12 {
            self.keys.remove_key(&self.request_id)?;
        }
        let pem_path = self.pem_path();
        output::write_atomic(
            &pem_path,
            output::pem_bundle(&self.cert_pem, &self.chain_pem).as_bytes(),
            output::MODE_PUBLIC,
            true,
        )?;
        if let P12::Staged { path, .. } = p12 {
            if let Err(e) = self.keys.deliver(path, &self.p12_path()) {
                let _ = std::fs::remove_file(&pem_path);
                return Err(e);
            }
        }
        Ok(())
    }
}

async fn process(ctx: &Ctx, work: &Work) -> Result<Delivered, RowFailure> {
    let row = &work.row;
    let stem = row.file_stem();
    // Whether an earlier run's request may have been answered with a
    // certificate: a failure of this run that proves nothing keeps it.
    let prior = lock(&ctx.pending)
        .get(&work.request_id)
        .is_some_and(|r| r.certificate_may_exist);
    let (csr, key, password) = key_for(ctx, work, &stem).await.map_err(|f| RowFailure {
        may_exist: prior,
        ..f
    })?;
    let req = build_request(
        row,
        ctx.kind,
        &ctx.profile,
        ctx.certifier.as_deref(),
        ctx.not_after.as_deref(),
        csr,
        work.request_id.clone(),
        &ctx.vouching,
    );
    let mut maybe = false;
    let (result, _) = retry(
        ctx.retry,
        || ctx.client.issue(&req),
        |_, e, _| {
            maybe |= evidence(e) == Evidence::MaybeIssued;
            ctx.retries.fetch_add(1, Ordering::Relaxed);
        },
    )
    .await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            let may_exist = match evidence(&e) {
                _ if maybe => true,
                Evidence::MaybeIssued => true,
                Evidence::NoCertificate => false,
                Evidence::Nothing => prior,
            };
            let stops = !about_the_row(&e);
            return Err(RowFailure {
                may_exist,
                stops,
                ..RowFailure::from(Error::certd(e))
            });
        }
    };
    if let Some(e) = Error::revoked(&work.request_id, &resp) {
        // Nothing to deliver, and a re-run would get the same answer.
        return Err(RowFailure {
            serial: Some(resp.serial.clone()),
            may_exist: true,
            ..RowFailure::from(e)
        });
    }
    let clamped = resp.not_after_clamped
        || ctx
            .not_after
            .as_deref()
            .is_some_and(|want| later_than(want, &resp.not_after));
    let issued_failure = |e: Error| RowFailure {
        serial: Some(resp.serial.clone()),
        may_exist: true,
        message: format!(
            "{e} (certd issued serial {}; re-running delivers that certificate)",
            resp.serial
        ),
        ..RowFailure::from(e)
    };
    let blocking = |e: tokio::task::JoinError| issued_failure(Error::Crypto(e.to_string()));

    let files = Arc::new(Files {
        out_dir: ctx.out_dir.clone(),
        keys: ctx.keys.clone(),
        request_id: work.request_id.clone(),
        stem: stem.clone(),
        password,
        friendly: row.common_name.clone().unwrap_or_else(|| row.email.clone()),
        cert_pem: resp.certificate.clone(),
        chain_pem: resp.chain.clone(),
        iterations: ctx.iterations,
    });
    let f = files.clone();
    let p12 = tokio::task::spawn_blocking(move || f.prepare(key))
        .await
        .map_err(blocking)?
        .map_err(issued_failure)?;
    if let P12::Staged { built: true, .. } = p12 {
        // The staged PKCS#12 is durable before the key file goes.
        ctx.journal
            .flush(Flush::KEYS)
            .await
            .map_err(issued_failure)?;
    }
    let f = files.clone();
    tokio::task::spawn_blocking(move || f.deliver(&p12))
        .await
        .map_err(blocking)?
        .map_err(issued_failure)?;
    ctx.journal
        .append(
            &Entry::Issued {
                line: row.line,
                request_id: work.request_id.clone(),
                serial: resp.serial.clone(),
                not_after: resp.not_after.clone(),
                clamped,
                file: stem.clone(),
                p12: work.csr.is_none(),
            },
            None,
            // The row's renames and removals are durable before the line
            // that records its delivery.
            if work.csr.is_none() {
                Flush::BOTH
            } else {
                Flush::OUT
            },
        )
        .await
        .map_err(issued_failure)?;
    Ok(Delivered {
        serial: resp.serial,
        not_after: resp.not_after,
        clamped,
    })
}

fn base_line(row: &Row) -> ReportLine {
    ReportLine {
        line: row.line,
        email: row.email.clone(),
        common_name: row.common_name.clone().unwrap_or_default(),
        serial: String::new(),
        not_after: String::new(),
        not_after_clamped: false,
        status: Status::Issued,
        error_code: String::new(),
        error_message: String::new(),
    }
}

fn not_attempted(ctx: &Ctx, seq: u64, row: &Row) -> Outcome {
    let (code, message) = match &*lock(&ctx.stopped) {
        Some(s) => (
            s.code.clone(),
            format!("not attempted: the run stopped ({})", s.message),
        ),
        None => ("interrupted".into(), "not attempted".into()),
    };
    Outcome {
        seq,
        line: ReportLine {
            status: Status::NotAttempted,
            error_code: code,
            error_message: message,
            ..base_line(row)
        },
        kind: Kind::NotAttempted,
    }
}

pub(super) async fn worker(
    ctx: Arc<Ctx>,
    work_rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Work>>>,
    results: tokio::sync::mpsc::UnboundedSender<Outcome>,
) {
    loop {
        let next = work_rx.lock().await.recv().await;
        let Some(work) = next else { break };
        let outcome = if ctx.stopping() {
            not_attempted(&ctx, work.seq, &work.row)
        } else {
            match process(&ctx, &work).await {
                Ok(d) => Outcome {
                    seq: work.seq,
                    line: ReportLine {
                        serial: d.serial,
                        not_after: d.not_after,
                        not_after_clamped: d.clamped,
                        ..base_line(&work.row)
                    },
                    kind: Kind::Issued,
                },
                Err(f) => {
                    // Best effort: if the journal cannot be written, the
                    // request line before it still makes a re-run repeat
                    // the request.
                    let _ = ctx
                        .journal
                        .append(
                            &Entry::Failed {
                                line: work.row.line,
                                request_id: work.request_id.clone(),
                                file: work.row.file_stem(),
                                code: f.code.clone(),
                                message: f.message.clone(),
                                serial: f.serial.clone(),
                                certificate_may_exist: f.may_exist,
                            },
                            None,
                            Flush::NONE,
                        )
                        .await;
                    if f.stops {
                        ctx.stop_with(&f.code, &f.message);
                    }
                    Outcome {
                        seq: work.seq,
                        line: ReportLine {
                            serial: f.serial.unwrap_or_default(),
                            status: Status::Failed,
                            error_code: f.code,
                            error_message: f.message,
                            ..base_line(&work.row)
                        },
                        kind: Kind::Failed,
                    }
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

/// What the producer needs besides the shared context.
pub(super) struct Source {
    pub input: PathBuf,
    pub rules: Rules,
    pub ignore_unknown: bool,
    pub batch_id: String,
    pub done: HashMap<String, journal::Done>,
    pub validation: super::check::Validation,
}

fn changed_while_running(input: &Path, what: String) -> Error {
    Error::InputChanged(format!(
        "{} changed while this run read it ({what}): no further row was sent. Rows sent before \
         are journaled; restore the file as it was validated and re-run",
        input.display()
    ))
}

/// Streams the input a second time and hands valid rows to the workers.
/// Each record must be the one validated (the same digest): a file edited
/// meanwhile stops the run before a changed row is sent.
pub(super) fn produce(
    src: Source,
    ctx: Arc<Ctx>,
    work_tx: tokio::sync::mpsc::Sender<Work>,
    results: tokio::sync::mpsc::UnboundedSender<Outcome>,
) -> Result<(), Error> {
    let v = &src.validation;
    let mut input = Input::open(&src.input, src.ignore_unknown)?;
    if input.header_digest() != v.header_digest {
        ctx.stop_with("input_changed", "the input's header changed");
        return Err(changed_while_running(
            &src.input,
            "its header line differs".into(),
        ));
    }
    let mut dups = Duplicates::default();
    let mut seq = 0u64;
    while let Some(next) = input.next_row() {
        let this = seq;
        seq += 1;
        if v.digests.get(this as usize) != Some(&input.last_digest()) {
            let line = match &next {
                Ok(r) => r.line,
                Err(e) => e.line,
            };
            ctx.stop_with("input_changed", "the input changed while it was read");
            return Err(changed_while_running(
                &src.input,
                format!("line {line} is not the row validated"),
            ));
        }
        let checked = next.and_then(|raw| {
            let (row, csr) = check_row(&raw, &src.rules)?;
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
                seq: this,
                line: skipped_line(&e),
                kind: Kind::Skipped,
            },
            Ok((row, csr)) => {
                let request_id = request_id(&src.batch_id, &row);
                let done = src.done.get(&request_id);
                let missing = done.map(|d| d.missing_files(&ctx.out_dir));
                match (done, missing) {
                    (Some(d), Some(m)) if m.is_empty() => Outcome {
                        seq: this,
                        line: ReportLine {
                            serial: d.serial.clone(),
                            not_after: d.not_after.clone(),
                            not_after_clamped: d.clamped,
                            ..base_line(&row)
                        },
                        kind: Kind::Already,
                    },
                    // A delivered key left the journal: its PKCS#12
                    // cannot be rebuilt, and a new key would mean a second
                    // certificate.
                    (Some(d), Some(m)) if d.p12 => Outcome {
                        seq: this,
                        line: ReportLine {
                            serial: d.serial.clone(),
                            not_after: d.not_after.clone(),
                            not_after_clamped: d.clamped,
                            status: Status::Failed,
                            error_code: "output_missing".into(),
                            error_message: format!(
                                "{} of serial {} went missing from {} after delivery; its key \
                                 is no longer kept, so ra-cli cannot write it again: restore \
                                 the file from a backup, or revoke {} and issue a new \
                                 certificate in a new batch",
                                m.join(" and "),
                                d.serial,
                                ctx.out_dir.display(),
                                d.serial
                            ),
                            ..base_line(&row)
                        },
                        kind: Kind::Failed,
                    },
                    // Not delivered, or a subscriber CSR's certificate
                    // that went missing: certd answers the request again
                    // with the certificate it issued.
                    _ if ctx.stopping() => not_attempted(&ctx, this, &row),
                    _ => {
                        if work_tx
                            .blocking_send(Work {
                                seq: this,
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
    if (seq as usize) < v.digests.len() {
        ctx.stop_with("input_changed", "the input got shorter");
        return Err(changed_while_running(
            &src.input,
            format!("it has {seq} rows now, {} when validated", v.digests.len()),
        ));
    }
    if input.sha256() != v.input_sha256 {
        return Err(changed_while_running(
            &src.input,
            "its SHA-256 differs from the one validated".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use certd_api::ApiError;

    fn api(code: ErrorCode) -> ClientError {
        ClientError::Api(ApiError::new(code, "x"))
    }

    #[test]
    fn failures_tell_what_certd_may_hold_and_whether_to_stop() {
        // Answered after certd's idempotency check: no certificate.
        for c in [ErrorCode::CertifierLocked, ErrorCode::NameNotPermitted] {
            assert_eq!(evidence(&api(c)), Evidence::NoCertificate, "{c}");
        }
        // Refused before it: says nothing about an earlier request.
        for c in [ErrorCode::RateLimited, ErrorCode::ProfileNotPermitted] {
            assert_eq!(evidence(&api(c)), Evidence::Nothing, "{c}");
        }
        // Lost, or the id is known: maybe.
        assert_eq!(
            evidence(&ClientError::Transport("reset".into())),
            Evidence::MaybeIssued
        );
        assert_eq!(evidence(&api(ErrorCode::Conflict)), Evidence::MaybeIssued);
        // Only refusals of the row itself let the batch go on.
        assert!(about_the_row(&api(ErrorCode::NameNotPermitted)));
        assert!(!about_the_row(&api(ErrorCode::CertifierLocked)));
        assert!(!about_the_row(&api(ErrorCode::RateLimited)));
        assert!(!about_the_row(&ClientError::Transport("refused".into())));
    }
}
