//! `ra-cli batch issue`: issuance for a list of people or hosts.
//!
//! 1. **Check** everything before the first request ([`check`]): option
//!    values, the profile, key type and certifier against what certd says
//!    this RA may use, every row of the file (streamed; every bad row is
//!    reported with its line, and by default nothing is issued if any row
//!    is invalid), the output paths, and on a resume the rows and
//!    passwords against the journal. `--dry-run` stops here.
//! 2. **Issue** ([`issue`]) with `jobs` concurrent requests. Each row's
//!    `request_id` is derived from the batch id and the row's values, so a
//!    re-run sends the same ids with the same CSRs, and certd answers
//!    repeats with the certificates it already issued. The [`journal`]
//!    records each request before it is sent and each delivery once its
//!    files are durable; rows it lists as delivered are not sent again,
//!    every other row is sent (again) with its journaled request. A key
//!    generated here waits in a file of its own in `keys/` ([`keystore`])
//!    and leaves it in the rename that delivers its PKCS#12.
//! 3. **Report**: `report.csv` and a summary.

pub mod check;
pub mod issue;
pub mod journal;
pub mod keystore;
pub mod progress;
pub mod report;

use crate::error::Error;
use crate::input::{ProfileKind, Row, Rules};
use crate::keys::KeyType;
use crate::retry::RetryPolicy;
use certd_api::{
    ApiError, CertdClient, ClientError, ErrorCode, IssueRequest, Subject, SubjectAltNames,
};
use issue::{Ctx, Kind, Outcome, Source, Stopped, Work};
use journal::{BatchHeader, Entry, PasswordMode};
use progress::{Counts, Progress, ProgressMode};
use serde::Serialize;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use time::OffsetDateTime;

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
    /// Where generated passwords go (default `DIR/passwords.csv`).
    pub passwords_out: Option<PathBuf>,
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
    /// The organization and the officer's attestation every request
    /// carries.
    pub vouching: Vouching,
}

/// What a batch adds to every row's request: the organization a
/// sponsor-validated subject names, and the officer who vouches for the
/// list (the mailboxes and, for a person, the identity) and when they
/// checked it. The time is given, not taken, so a resumed batch sends the
/// very same requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vouching {
    /// organizationName (`--organization`).
    pub organization: Option<String>,
    /// organizationIdentifier (`--organization-identifier`).
    pub organization_identifier: Option<String>,
    /// countryName (`--country`).
    pub country: Option<String>,
    /// The officer (`--attested-by`).
    pub attested_by: Option<String>,
    /// When they checked, RFC 3339 (`--attested-at`).
    pub attested_at: Option<String>,
}

impl Vouching {
    /// Checks the options before anything is sent: a well-formed officer
    /// and an RFC 3339 time that is not in the future.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(by) = &self.attested_by {
            certd_api::evidence::check_person_id(by)
                .map_err(|e| Error::Usage(format!("--attested-by: {e}")))?;
        }
        if let Some(at) = &self.attested_at {
            let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    Error::Usage(format!(
                        "--attested-at {at:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z: {e}"
                    ))
                })?;
            if t > time::OffsetDateTime::now_utc() + time::Duration::minutes(5) {
                return Err(Error::Usage(format!(
                    "--attested-at {at} is in the future: give the time the officer checked the list"
                )));
            }
        }
        Ok(())
    }

    /// What it adds to the batch id (nothing when empty, so earlier batch
    /// ids stay as they were).
    fn spec(&self) -> String {
        if *self == Vouching::default() {
            return String::new();
        }
        format!(
            "\norganization={}\norganization_identifier={}\ncountry={}\nattested_by={}\nattested_at={}",
            self.organization.as_deref().unwrap_or(""),
            self.organization_identifier.as_deref().unwrap_or(""),
            self.country.as_deref().unwrap_or(""),
            self.attested_by.as_deref().unwrap_or(""),
            self.attested_at.as_deref().unwrap_or("")
        )
    }

    /// The approval evidence for a row: the officer as requester, their
    /// attestation of the mailbox and (for a person) the identity.
    fn approval(&self, row: &Row) -> Option<certd_api::Approval> {
        let (by, at) = (self.attested_by.as_ref()?, self.attested_at.as_ref()?);
        Some(certd_api::Approval {
            requested_by: Some(by.clone()),
            identity: row.person.as_ref().map(|_| certd_api::IdentityValidation {
                attested_by: by.clone(),
                method: "officer_attestation".into(),
                checked_at: at.clone(),
                detail: None,
            }),
            approved_by: Vec::new(),
            validations: vec![certd_api::Validation {
                name: row.email.clone(),
                method: "officer_attestation".into(),
                checked_at: at.clone(),
                detail: None,
            }],
        })
    }
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
    /// Rows not sent because the run stopped first.
    pub not_attempted: u64,
    /// What stopped the run before the end of the input, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
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
    /// The generated passwords, if this batch has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passwords: Option<PathBuf>,
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
            self.refused_invalid
                || self.interrupted
                || self.stopped.is_some()
                || self.failed > 0
                || self.skipped > 0
                || self.not_attempted > 0
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
            "batch {}: {} row(s): issued {} ({} by earlier runs), failed {}, skipped {}, not attempted {}; {:.1} s, {:.1} rows/s{}\n",
            self.batch_id.as_deref().unwrap_or("-"),
            self.rows,
            self.issued + self.already_issued,
            self.already_issued,
            self.failed,
            self.skipped,
            self.not_attempted,
            self.elapsed_seconds,
            self.rows_per_second,
            if self.retries > 0 {
                format!(", {} retries", self.retries)
            } else {
                String::new()
            }
        ));
        let again = "re-run the same command to finish the batch: delivered rows are not \
                     issued again, and a row certd already issued gets that certificate";
        match &self.stopped {
            Some(st) if st.code == "interrupted" => {
                s.push_str(&format!("interrupted: {again}\n"));
            }
            Some(st) => {
                s.push_str(&format!("stopped: {} [{}]\n", st.message, st.code));
                let first = match st.code.as_str() {
                    "certifier_locked" => "activate the certifier (certd activate)",
                    "rate_limited" => "wait for certd's rate limit, or run with fewer --jobs",
                    "unreachable" => "make certd reachable",
                    _ => "fix the cause above",
                };
                s.push_str(&format!("{first}, then {again}\n"));
            }
            None if self.failed > 0 => {
                s.push_str(&format!("failed rows: see the report; {again}\n"));
            }
            None => {}
        }
        if let Some(r) = &self.report {
            s.push_str(&format!("report: {}\n", r.display()));
        }
        if let Some(p) = &self.passwords {
            s.push_str(&format!("passwords: {}\n", p.display()));
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
#[allow(clippy::too_many_arguments)] // each is one part of the request; a struct would only rename them
pub fn build_request(
    row: &Row,
    kind: Option<ProfileKind>,
    profile: &str,
    certifier: Option<&str>,
    not_after: Option<&str>,
    csr: String,
    request_id: String,
    vouching: &Vouching,
) -> IssueRequest {
    let common_name = row.common_name.clone().or_else(|| match kind {
        Some(ProfileKind::SmimeMailbox) => Some(row.email.clone()),
        Some(ProfileKind::SmimePerson) => row.person.as_ref().map(|(g, s)| format!("{g} {s}")),
        _ => None,
    });
    let person = kind == Some(ProfileKind::SmimePerson);
    let subject = Subject {
        common_name,
        organizational_unit: row.organizational_unit.clone(),
        given_name: row.person.as_ref().map(|(g, _)| g.clone()),
        surname: row.person.as_ref().map(|(_, s)| s.clone()),
        organization: vouching.organization.clone().filter(|_| person),
        organization_identifier: vouching.organization_identifier.clone().filter(|_| person),
        country: vouching.country.clone().filter(|_| person),
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
        approval: vouching.approval(row),
    }
}

/// The profile's rules as certd states them for this RA, and the
/// certifiers it may use with it.
pub async fn profile_rules(
    client: &CertdClient,
    profile: &str,
    base_dir: &Path,
    vouching: &Vouching,
) -> Result<(Rules, Vec<String>), Error> {
    let profiles = client.profiles().await.map_err(Error::certd)?;
    let Some(p) = profiles.iter().find(|p| p.name == profile) else {
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::NotPermitted {
            code: ErrorCode::ProfileNotPermitted.as_str(),
            message: format!(
                "profile {profile:?} is not one this RA may use (it may use: {}): pass --profile",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        });
    };
    check_evidence(p, vouching)?;
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

/// Refuses, before anything is sent, a batch whose requests could not carry
/// the evidence the profile requires: approvals by other officers (a batch
/// has none), validation methods other than the officer's attestation, or
/// no officer at all.
pub fn check_evidence(p: &certd_api::ProfileInfo, vouching: &Vouching) -> Result<(), Error> {
    use certd_api::evidence::ValidationMethod;
    let name = &p.name;
    if p.approvals_required > 0 {
        return Err(Error::Usage(format!(
            "profile {name} needs {} approval(s) by officers other than the requester; a batch \
             carries none: approve these requests in ra-web, or use a profile without approvals",
            p.approvals_required
        )));
    }
    for (methods, what) in [
        (&p.dns_validation_methods, "DNS names"),
        (&p.email_validation_methods, "email addresses"),
    ] {
        if !methods.is_empty() && !methods.contains(&ValidationMethod::OfficerAttestation) {
            return Err(Error::Usage(format!(
                "profile {name} accepts validations of {what} by {} only; a batch can carry an \
                 officer's attestation (officer_attestation) and nothing else",
                methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if p.requires_approval && vouching.attested_by.is_none() {
        return Err(Error::Usage(format!(
            "profile {name} requires evidence for every request: pass --attested-by OFFICER \
             --attested-at TIME, the officer who checked this list and when"
        )));
    }
    Ok(())
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

/// Creates the output directory (mode 0700: it will hold keys and
/// passwords) unless it exists, locks it against a second run, and checks
/// that it can be written.
fn open_out_dir(dir: &Path, create: bool) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let out_err = |message: String| Error::output(dir, message);
    if create {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| out_err(format!("cannot create the output directory: {e}")))?;
    }
    if !dir.is_dir() {
        return Err(out_err("is not a directory".into()));
    }
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
        .prefix(crate::output::TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| out_err(format!("the output directory is not writable: {e}")))?;
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
    if let (Some(had), Some(now)) = (h.password_mode, want.password_mode) {
        if had != now {
            return Some(format!("{} there, {} now", had.describe(), now.describe()));
        }
    }
    None
}

/// The PKCS#12 files the passwords file keeps lines for: those delivered,
/// and those whose key is journaled and not yet delivered.
fn password_files_to_keep(state: &journal::State) -> std::collections::HashSet<String> {
    state
        .rows
        .values()
        .filter(|r| r.done.as_ref().is_some_and(|d| d.p12) || (r.done.is_none() && r.key.is_some()))
        .map(|r| format!("{}.p12", r.file))
        .collect()
}

/// Runs `ra-cli batch issue`. `client` may be `None` only for a dry run
/// when certd cannot be reached (syntax checks only).
pub async fn run(client: Option<CertdClient>, opts: &BatchOptions) -> Result<Summary, Error> {
    let t0 = Instant::now();
    let now = OffsetDateTime::now_utc();
    let rfc = &time::format_description::well_known::Rfc3339;

    // Option values first: nobody else needs to be asked about them.
    if opts.jobs == 0 {
        return Err(Error::Usage("--jobs must be at least 1".into()));
    }
    crate::p12::check_iterations(opts.p12_iterations)?;
    if let Some(b) = &opts.batch_id {
        check::check_batch_id(b)?;
    }
    opts.vouching.check()?;
    let requested_not_after = crate::commands::not_after(opts.expires.as_deref(), opts.days, now)?;
    let fixed_password = opts
        .p12_password_file
        .as_deref()
        .map(crate::output::read_secret_file)
        .transpose()?;
    let mode = if fixed_password.is_some() {
        PasswordMode::File
    } else {
        PasswordMode::Generated
    };
    if !opts.dry_run && opts.out_dir.is_none() {
        return Err(Error::Usage("batch issue needs --out DIR".into()));
    }

    // What certd lets this RA use.
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
        match profile_rules(c, &opts.profile, &base_dir, &opts.vouching).await {
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
    if let (Some(c), true) = (&opts.certifier, profile_checked) {
        if !profile_certifiers.contains(c) {
            return Err(Error::NotPermitted {
                code: ErrorCode::CertifierNotPermitted.as_str(),
                message: format!(
                    "certifier {c:?} is not one this RA may use with profile {} (it may use: {}): \
                     pass --certifier",
                    opts.profile,
                    profile_certifiers.join(", ")
                ),
            });
        }
    }

    // The output directory as it is: locked while this run reads it.
    let existing = match &opts.out_dir {
        Some(d) if std::fs::symlink_metadata(d).is_ok() => {
            let lock = open_out_dir(d, false)?;
            Some((lock, journal::read(d)?))
        }
        _ => None,
    };
    let empty = journal::State::default();
    let state = existing.as_ref().map_or(&empty, |(_, s)| s);
    let check_id = opts
        .batch_id
        .clone()
        .or_else(|| state.header.as_ref().map(|h| h.batch_id.clone()));
    let known = match (&opts.out_dir, &existing) {
        (Some(d), Some(_)) => Some(check::Known {
            out_dir: d,
            journal: state,
            batch_id: check_id.as_deref(),
        }),
        _ => None,
    };

    // Every row.
    let validation = check::validate(&opts.input, &rules, opts.ignore_unknown_columns, known)?;
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
        not_attempted: 0,
        stopped: None,
        retries: 0,
        elapsed_seconds: 0.0,
        rows_per_second: 0.0,
        out_dir: opts.out_dir.clone(),
        report: None,
        passwords: None,
        interrupted: false,
        refused_invalid: false,
        peak_rss_kib: None,
    };
    if validation.needs_keys {
        if let Some(allowed) = &rules.key_types {
            if !allowed.iter().any(|k| k == opts.key_type.as_str()) {
                return Err(Error::NotPermitted {
                    code: ErrorCode::KeyNotPermitted.as_str(),
                    message: format!(
                        "profile {} does not allow key type {} for generated keys (allowed: {}): \
                         use --key-type",
                        opts.profile,
                        opts.key_type,
                        allowed.join(", ")
                    ),
                });
            }
        }
    }
    // The batch: a new one, or the one the directory holds (checked
    // before the rows, since another batch makes their changes moot).
    let expiry = expiry_spec(opts);
    let batch_id = match &opts.batch_id {
        Some(b) => b.clone(),
        None => derive_batch_id(
            &validation.input_sha256,
            &opts.profile,
            opts.certifier.as_deref(),
            &format!("{expiry}{}", opts.vouching.spec()),
            opts.key_type,
        ),
    };
    let has_pending_keys = state.pending_keys().next().is_some();
    let keys_involved = validation.needs_keys || has_pending_keys;
    let mut header = BatchHeader {
        version: journal::VERSION,
        batch_id: batch_id.clone(),
        input: opts.input.display().to_string(),
        input_sha256: hex::encode(validation.input_sha256),
        profile: opts.profile.clone(),
        certifier: opts.certifier.clone(),
        expiry,
        not_after: match &state.header {
            Some(h) => h.not_after.clone(),
            None => requested_not_after,
        },
        key_type: opts.key_type.as_str().to_string(),
        created: now.format(rfc).unwrap_or_default(),
        password_mode: keys_involved.then_some(mode),
        passwords_file: None,
    };
    if let Some(h) = &state.header {
        if let Some(diff) = header_mismatch(h, &header) {
            return Err(Error::BatchMismatch(format!(
                "{} holds another batch ({diff}): the input or the options changed since it was \
                 started. Use a new --out directory, or repeat the original command (pass \
                 --batch-id {} to continue that batch with an edited input)",
                opts.out_dir.as_deref().unwrap_or(Path::new("-")).display(),
                h.batch_id
            )));
        }
    }

    if !validation.changed.is_empty() {
        return Err(check::changed_error(
            &opts.input,
            check_id.as_deref().unwrap_or("-"),
            &validation.changed,
        ));
    }
    if let (Some(d), false) = (&opts.out_dir, validation.obstacles.is_empty()) {
        return Err(check::obstacles_error(d, &validation.obstacles));
    }
    if opts.dry_run {
        summary.elapsed_seconds = t0.elapsed().as_secs_f64();
        return Ok(summary);
    }
    if !validation.invalid.is_empty() && !opts.skip_invalid {
        summary.refused_invalid = true;
        return Ok(summary);
    }
    let (Some(client), Some(out_dir)) = (client, opts.out_dir.clone()) else {
        return Err(Error::Usage("batch issue needs certd and --out DIR".into()));
    };

    let (_lock, mut state) = match existing {
        Some(e) => e,
        None => {
            let lock = open_out_dir(&out_dir, true)?;
            let st = journal::read(&out_dir)?;
            if st.header.is_some() {
                return Err(Error::BatchMismatch(format!(
                    "another run started a batch in {} while this one was checking it: re-run \
                     the command",
                    out_dir.display()
                )));
            }
            (lock, st)
        }
    };
    // Passwords: where generated ones go, and that each journaled key
    // opens with the password it is to be delivered under.
    let pw_path = match mode {
        PasswordMode::Generated if keys_involved => Some(check::passwords_path(
            &out_dir,
            opts.passwords_out.as_deref(),
            state.header.as_ref(),
        )?),
        _ => None,
    };
    if let (Some(_), Some(p)) = (&opts.passwords_out, &pw_path) {
        header.passwords_file = Some(p.display().to_string());
    }
    let passwords = match &pw_path {
        Some(p) => {
            crate::output::check_writable(p, "the passwords file")?;
            let pws = journal::read_passwords(p)?;
            if state.header.is_none() && !pws.is_empty() {
                return Err(Error::output(
                    p,
                    "already holds passwords (of another batch?): a batch needs a passwords file \
                     of its own; pass another --passwords-out, or move that file away",
                ));
            }
            pws
        }
        None => HashMap::new(),
    };
    let keys = keystore::KeyStore::new(&out_dir);
    check::check_pending_keys(
        &state,
        &keys,
        mode,
        fixed_password.as_ref(),
        &passwords,
        pw_path
            .as_deref()
            .unwrap_or(&out_dir.join(journal::PASSWORDS)),
        opts.p12_password_file.as_deref(),
    )?;

    // certd can sign now.
    check_certifier(&client, opts.certifier.as_deref(), &profile_certifiers).await?;

    // Start: leftovers of a killed run go (temporaries, torn or delivered
    // key files), keys an older journal held move to key files, and the
    // journal is rewritten without superseded and torn lines, then
    // appended to.
    crate::output::remove_stale_temps(&out_dir)?;
    if keys_involved {
        keys.create()?;
    }
    keys.clean(&state)?;
    keys.take_inline_keys(&mut state)?;
    journal::compact(&out_dir, &state)?;
    if let Some(p) = &pw_path {
        let keep = password_files_to_keep(&state);
        journal::compact_passwords(p, |f| keep.contains(f))?;
    }
    // Fixed at the first run, so `--days` gives the same requests resumed.
    let not_after = header.not_after.clone();
    let writer = journal::Writer::open(&out_dir, pw_path.as_deref())?;
    if state.header.is_none() {
        writer
            .append(&Entry::Batch(header), None, journal::Flush::OUT)
            .await?;
    }
    writer
        .append(
            &Entry::Run {
                started: now.format(rfc).unwrap_or_default(),
                input_sha256: Some(hex::encode(validation.input_sha256)),
            },
            None,
            journal::Flush::NONE,
        )
        .await?;
    summary.batch_id = Some(batch_id.clone());

    let done: HashMap<String, journal::Done> = state
        .rows
        .iter()
        .filter_map(|(id, r)| r.done.clone().map(|d| (id.clone(), d)))
        .collect();
    let pending: HashMap<String, journal::RowRecord> = state
        .rows
        .into_iter()
        .filter(|(_, r)| r.pending())
        .collect();
    let ctx = Arc::new(Ctx {
        client,
        kind: rules.kind,
        vouching: opts.vouching.clone(),
        profile: opts.profile.clone(),
        certifier: opts.certifier.clone(),
        not_after,
        key_type: opts.key_type,
        iterations: opts.p12_iterations,
        out_dir: out_dir.clone(),
        keys: keys.clone(),
        retry: opts.retry,
        fixed_password,
        passwords: Mutex::new(passwords),
        pending: Mutex::new(pending),
        journal: writer,
        stop: AtomicBool::new(false),
        stopped: Mutex::new(None),
        retries: AtomicU64::new(0),
    });
    let ctrl_c = opts.handle_ctrl_c.then(|| {
        let c = ctx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.stop_with("interrupted", "Ctrl-C");
                eprintln!("\nra-cli: stopping after the rows in flight (Ctrl-C again aborts; re-running resumes)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    // The journal is consistent at every instant: a re-run
                    // resumes from here exactly as after a crash.
                    std::process::exit(130);
                }
            }
        })
    });

    let (work_tx, work_rx) = tokio::sync::mpsc::channel::<Work>(opts.jobs * 2);
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let total_rows = validation.rows;
    let producer = {
        let src = Source {
            input: opts.input.clone(),
            rules: rules.clone(),
            ignore_unknown: opts.ignore_unknown_columns,
            batch_id: batch_id.clone(),
            done,
            validation,
        };
        let (ctx, tx, res) = (ctx.clone(), work_tx, res_tx.clone());
        tokio::task::spawn_blocking(move || issue::produce(src, ctx, tx, res))
    };
    let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
    let mut workers = Vec::new();
    for _ in 0..opts.jobs {
        workers.push(tokio::spawn(issue::worker(
            ctx.clone(),
            work_rx.clone(),
            res_tx.clone(),
        )));
    }
    drop(res_tx);

    let mut progress = Progress::new(opts.progress, total_rows);
    let mut counts = Counts::default();
    let mut report = report::Writer::new(&out_dir)?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let run_start = Instant::now();
    let mut report_error = None;
    loop {
        tokio::select! {
            o = res_rx.recv() => {
                let Some(o) = o else { break };
                match o.kind {
                    Kind::Issued => counts.issued += 1,
                    Kind::Already => counts.already += 1,
                    Kind::Failed => counts.failed += 1,
                    Kind::Skipped => counts.skipped += 1,
                    Kind::NotAttempted => counts.not_attempted += 1,
                }
                if let Err(e) = report.push(o.seq, o.line) {
                    // Keep draining: the rows in flight still finish and
                    // are journaled.
                    ctx.stop_with(e.code(), &e.to_string());
                    report_error.get_or_insert(e);
                }
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
    if let Some(t) = ctrl_c {
        t.abort();
        let _ = t.await;
    }
    let stopped = issue::lock(&ctx.stopped).clone();
    let elapsed = run_start.elapsed().as_secs_f64();
    // The last reference: the journal writer flushes and stops.
    drop(ctx);

    let report_path = report.finish()?;
    // With nothing waiting in it, `keys/` goes as well.
    keys.remove_if_empty()?;
    produced?;
    if let Some(e) = report_error {
        return Err(e);
    }
    summary.issued = counts.issued;
    summary.already_issued = counts.already;
    summary.failed = counts.failed;
    summary.skipped = counts.skipped;
    summary.not_attempted = counts.not_attempted;
    summary.retries = counts.retries;
    summary.interrupted = stopped.as_ref().is_some_and(|s| s.code == "interrupted");
    summary.stopped = stopped;
    summary.elapsed_seconds = t0.elapsed().as_secs_f64();
    summary.rows_per_second = (counts.issued + counts.failed) as f64 / elapsed.max(1e-3);
    summary.report = Some(report_path);
    summary.passwords = pw_path.filter(|p| p.exists());
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
            person: None,
        }
    }

    #[test]
    fn evidence_a_batch_cannot_carry_is_refused_before_anything_is_sent() {
        use certd_api::evidence::ValidationMethod::*;
        let info = |approvals: u32, email: Vec<certd_api::evidence::ValidationMethod>| {
            certd_api::ProfileInfo {
                name: "p".into(),
                kind: "smime-sponsor".into(),
                certifiers: vec![],
                key_types: vec![],
                max_validity_days: 1,
                requires_approval: approvals > 0 || !email.is_empty(),
                approvals_required: approvals,
                dns_validation_methods: vec![],
                email_validation_methods: email,
            }
        };
        let officer = Vouching {
            attested_by: Some("officer-1".into()),
            attested_at: Some("2026-12-01T09:00:00Z".into()),
            ..Vouching::default()
        };
        let none = Vouching::default();
        assert!(check_evidence(&info(0, vec![]), &none).is_ok());
        assert!(check_evidence(&info(0, vec![EmailToken, OfficerAttestation]), &officer).is_ok());
        for (p, v, says) in [
            (info(1, vec![]), &officer, "approval"),
            (info(0, vec![EmailToken]), &officer, "email_token only"),
            (info(0, vec![OfficerAttestation]), &none, "--attested-by"),
        ] {
            match check_evidence(&p, v) {
                Err(Error::Usage(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{says}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_person_gets_their_names_the_organization_and_the_officers_evidence() {
        let mut r = row("alice@example.com", None, &[]);
        r.person = Some(("Alice".into(), "Example".into()));
        let vouching = Vouching {
            organization: Some("Example Corp".into()),
            organization_identifier: Some("VATDE-123456789".into()),
            country: Some("DE".into()),
            attested_by: Some("officer-1".into()),
            attested_at: Some("2026-12-01T09:00:00Z".into()),
        };
        let req = build_request(
            &r,
            Some(ProfileKind::SmimePerson),
            "p",
            None,
            None,
            "csr".into(),
            "id".into(),
            &vouching,
        );
        let s = req.subject.expect("subject");
        assert_eq!(s.common_name.as_deref(), Some("Alice Example"));
        assert_eq!(
            (s.given_name.as_deref(), s.surname.as_deref()),
            (Some("Alice"), Some("Example"))
        );
        assert_eq!(
            s.organization_identifier.as_deref(),
            Some("VATDE-123456789")
        );
        let a = req.approval.expect("evidence");
        assert_eq!(a.requested_by.as_deref(), Some("officer-1"));
        assert_eq!(
            a.identity.expect("identity").checked_at,
            "2026-12-01T09:00:00Z"
        );
        assert_eq!(a.validations[0].name, "alice@example.com");
        assert_eq!(a.validations[0].method, "officer_attestation");
        // A batch with other vouching is another batch; none keeps the id.
        assert_eq!(Vouching::default().spec(), "");
        assert_ne!(vouching.spec(), "");
        assert!(Vouching {
            attested_at: Some("tomorrow".into()),
            ..vouching.clone()
        }
        .check()
        .is_err());
        assert!(vouching.check().is_ok());
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
            &Vouching::default(),
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
            &Vouching::default(),
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
            not_attempted: 0,
            stopped: None,
            retries: 0,
            elapsed_seconds: 1.0,
            rows_per_second: 2.0,
            out_dir: None,
            report: None,
            passwords: None,
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
