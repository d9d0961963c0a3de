//! `certd backup` and `certd restore`: a consistent copy of what certd
//! records, taken while it runs and issues, and put back only once it is
//! proven whole.
//!
//! What certd records lives in one file: the journal (the audit log), of
//! which the ledger index is a view rebuilt from it. So a backup is a
//! prefix of the journal, cut at an entry boundary, with a manifest: no
//! second database to keep consistent with it. The running daemon is asked
//! over the control socket for a *backup point*: it appends a `backup_point`
//! entry and answers once that entry is durable. Every certificate certd
//! acknowledged before that moment had its `issued` entry made durable
//! before its answer, so it lies before the point, and the prefix ending
//! with the point holds it. With the daemon stopped, the backup takes the
//! state directory's lock and the journal as it is.
//!
//! The archive is a tar file (readable with `tar tf`) of `manifest.json`,
//! `audit.log` (the prefix) and `audit.anchor` (the newest signed
//! checkpoint inside the prefix). Restoring checks, before anything is put
//! in place: the manifest and the archive agree (size, SHA-256, last entry);
//! the hash chain is whole; every signed checkpoint verifies under its
//! certifier's certificate; the ledger rebuilt from the journal holds
//! exactly the certificates the journal's entries carry, each one signed by
//! its certifier; and the counts agree with the manifest. Only then are the
//! files moved into the (empty) state directory, with a `state_restored`
//! entry appended. The token's keys are never in a backup: each HSM backs
//! up its own keys (see the operator guide).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{self, Anchor, AuditEvent, AuditRecord, KIND_CHECKPOINT};
use crate::certifier::Certifiers;
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::journal::{change_of, Journal, KIND_ISSUED, KIND_REVOKED};
use crate::ledger::index::Change;
use crate::ledger::RecordState;

/// The archive format this certd writes and reads.
pub const FORMAT: &str = "certd-backup-1";
/// Kind of the entry the daemon appends for a backup.
pub const KIND_BACKUP_POINT: &str = "backup_point";
/// Kind of the entry a restore appends.
pub const KIND_RESTORED: &str = "state_restored";

const MANIFEST: &str = "manifest.json";
const LOG: &str = "audit.log";
const ANCHOR: &str = "audit.anchor";
/// The most a manifest or an anchor may take in an archive.
const SMALL_FILE: u64 = 1 << 20;

/// Where a backup ends: the durable entry the daemon wrote for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupPoint {
    /// Its `seq`.
    pub seq: u64,
    /// Its `hash`.
    pub hash: String,
}

/// What a backup holds, as `manifest.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// When the backup was taken (RFC 3339).
    pub created: String,
    /// The certd that took it.
    pub certd_version: String,
    /// The configured certifiers at the time.
    pub certifiers: Vec<String>,
    /// `seq` of the journal's last entry in the backup.
    pub last_seq: u64,
    /// Its `hash`.
    pub last_hash: String,
    /// Whether the daemon was running (the backup ends at its
    /// `backup_point` entry) or stopped.
    pub daemon_running: bool,
    /// Size of `audit.log`, bytes.
    pub audit_bytes: u64,
    /// SHA-256 of `audit.log`, hex.
    pub audit_sha256: String,
    /// `issued` entries (certificates) in the journal.
    pub certificates: u64,
    /// `revoked` entries in the journal.
    pub revocations: u64,
}

/// What went wrong, with what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The state directory is in use by a running certd.
    #[error(
        "a certd is running on state_dir {0}: stop it before restoring (systemctl stop certd)"
    )]
    Live(PathBuf),
    /// The state directory already holds something.
    #[error(
        "state_dir {dir} is not empty (it holds {found}): restore only into an empty state \
         directory; move the current one aside first if it is to be replaced"
    )]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
        /// Some of what it holds.
        found: String,
    },
    /// The backup is not a certd backup, or not a whole one.
    #[error("{file} is not a usable certd backup: {reason}")]
    Invalid {
        /// The archive.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The journal or the ledger disagree with themselves or each other.
    #[error("the backup does not verify: {0}; nothing was restored")]
    Verify(String),
    /// The journal in the state directory cannot be read for a backup.
    #[error("cannot back up {path}: {reason}")]
    Source {
        /// The journal.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl BackupError {
    /// Stable code, as the API's error codes.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::Live(_) => "state_in_use",
            BackupError::NotEmpty { .. } => "state_not_empty",
            BackupError::Invalid { .. } => "backup_invalid",
            BackupError::Verify(_) => "backup_unverified",
            BackupError::Source { .. } => "journal_unreadable",
            BackupError::Io { .. } => "io",
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// What [`backup`] read from the journal.
struct Prefix {
    bytes: u64,
    sha256: String,
    last: Option<(u64, String)>,
    anchor: Option<Anchor>,
    certificates: u64,
    revocations: u64,
}

/// Copies the journal at `log` into `out` up to the entry `until` (through
/// the end of its line), or to its last complete line when `until` is
/// `None`, checking the chain on the way.
fn copy_prefix(
    log: &Path,
    until: Option<&BackupPoint>,
    out: &mut impl Write,
) -> Result<Prefix, BackupError> {
    let source = |reason: String| BackupError::Source {
        path: log.to_owned(),
        reason,
    };
    let file = File::open(log).map_err(|e| source(e.to_string()))?;
    let mut reader = BufReader::new(file);
    let mut hasher = Sha256::new();
    let mut prefix = Prefix {
        bytes: 0,
        sha256: String::new(),
        last: None,
        anchor: None,
        certificates: 0,
        revocations: 0,
    };
    let mut line = Vec::new();
    let mut prev = audit::GENESIS_PREV.to_owned();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| source(e.to_string()))?;
        if n == 0 || line.last() != Some(&b'\n') {
            // The end, or a line still being written: not part of it.
            break;
        }
        let record: AuditRecord = serde_json::from_slice(&line).map_err(|e| {
            source(format!(
                "entry after seq {}: {e}",
                prefix.last.as_ref().map_or(0, |l| l.0)
            ))
        })?;
        let expected_seq = prefix.last.as_ref().map_or(1, |l| l.0 + 1);
        let hash_ok = record.compute_hash().is_ok_and(|h| h == record.hash);
        if record.seq != expected_seq || record.prev != prev || !hash_ok {
            return Err(source(format!(
                "the hash chain breaks at seq {} (run certd verify-audit)",
                record.seq
            )));
        }
        match record.kind.as_str() {
            KIND_ISSUED => prefix.certificates += 1,
            KIND_REVOKED => prefix.revocations += 1,
            KIND_CHECKPOINT => {
                prefix.anchor = Some(Anchor {
                    seq: record.seq,
                    hash: record.hash.clone(),
                })
            }
            _ => {}
        }
        hasher.update(&line);
        out.write_all(&line).map_err(io_err("writing the backup"))?;
        prefix.bytes += line.len() as u64;
        prev = record.hash.clone();
        prefix.last = Some((record.seq, record.hash));
        if let Some(point) = until {
            if record.seq == point.seq {
                if prev != point.hash {
                    return Err(source(format!(
                        "entry {} is not the backup point the daemon named",
                        point.seq
                    )));
                }
                prefix.sha256 = hex::encode(hasher.finalize());
                return Ok(prefix);
            }
        }
    }
    if let Some(point) = until {
        return Err(source(format!(
            "the journal ends before the backup point (seq {}); is state_dir the running daemon's?",
            point.seq
        )));
    }
    prefix.sha256 = hex::encode(hasher.finalize());
    Ok(prefix)
}

/// Takes a backup of `config`'s state directory into `out`: up to `point`
/// (the running daemon's backup point) or, with `None`, the whole journal
/// of a stopped daemon (whose lock it holds meanwhile). `out` is written
/// new (mode 0600) and appears only complete.
pub fn backup(
    config: &Config,
    point: Option<&BackupPoint>,
    out: &Path,
    now: &dyn Clock,
) -> Result<Manifest, BackupError> {
    let state_dir = &config.daemon.state_dir;
    let _lock = match point {
        Some(_) => None,
        None => Some(lock_stopped(state_dir)?),
    };
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut log_copy =
        tempfile::tempfile_in(dir).map_err(io_err(format!("cannot write in {}", dir.display())))?;
    let prefix = copy_prefix(&audit::log_path(state_dir), point, &mut log_copy)?;
    let Some((last_seq, last_hash)) = prefix.last.clone() else {
        return Err(BackupError::Source {
            path: audit::log_path(state_dir),
            reason: "the journal is empty: there is nothing to back up".into(),
        });
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        created: clock::rfc3339(clock::unix_seconds(now.now())),
        certd_version: env!("CARGO_PKG_VERSION").into(),
        certifiers: config.certifiers.iter().map(|c| c.name.clone()).collect(),
        last_seq,
        last_hash,
        daemon_running: point.is_some(),
        audit_bytes: prefix.bytes,
        audit_sha256: prefix.sha256.clone(),
        certificates: prefix.certificates,
        revocations: prefix.revocations,
    };

    let mut tmp = tempfile::Builder::new()
        .prefix(".certd-backup-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_err(format!("cannot write in {}", dir.display())))?;
    {
        let mut archive = tar::Builder::new(tmp.as_file_mut());
        let manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| io_err("encoding the manifest")(io::Error::other(e)))?;
        append(
            &mut archive,
            MANIFEST,
            manifest.last_seq,
            &mut &manifest_bytes[..],
            manifest_bytes.len() as u64,
        )?;
        use std::io::Seek;
        log_copy
            .seek(io::SeekFrom::Start(0))
            .map_err(io_err("reading the journal copy"))?;
        append(
            &mut archive,
            LOG,
            manifest.last_seq,
            &mut log_copy,
            prefix.bytes,
        )?;
        if let Some(anchor) = &prefix.anchor {
            let bytes = serde_json::to_vec(anchor)
                .map_err(|e| io_err("encoding the anchor")(io::Error::other(e)))?;
            append(
                &mut archive,
                ANCHOR,
                manifest.last_seq,
                &mut &bytes[..],
                bytes.len() as u64,
            )?;
        }
        archive.finish().map_err(io_err("writing the backup"))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(io_err(format!("syncing {}", out.display())))?;
    tmp.persist_noclobber(out).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            BackupError::Io {
                what: format!(
                    "{} exists already (a backup is never overwritten): choose another name",
                    out.display()
                ),
                source: e.error,
            }
        } else {
            io_err(format!("writing {}", out.display()))(e.error)
        }
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))?;
    Ok(manifest)
}

fn append(
    archive: &mut tar::Builder<&mut File>,
    name: &str,
    mtime: u64,
    data: &mut impl Read,
    size: u64,
) -> Result<(), BackupError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    archive
        .append_data(&mut header, name, data)
        .map_err(io_err(format!("writing {name} into the backup")))
}

/// The lock of a stopped daemon's state directory, held while its journal
/// is read or written by a command.
fn lock_stopped(state_dir: &Path) -> Result<File, BackupError> {
    let path = state_dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    if lock.try_lock().is_err() {
        return Err(BackupError::Live(state_dir.to_owned()));
    }
    // Made by root for a stopped daemon, the lock file must stay the
    // daemon's to open: give it to the state directory's owner.
    use std::os::unix::fs::MetadataExt;
    let dir =
        std::fs::metadata(state_dir).map_err(io_err(format!("reading {}", state_dir.display())))?;
    let file = lock
        .metadata()
        .map_err(io_err(format!("reading {}", path.display())))?;
    if file.uid() != dir.uid() {
        std::os::unix::fs::chown(&path, Some(dir.uid()), Some(dir.gid())).map_err(io_err(
            format!(
                "giving {} to the owner of {}",
                path.display(),
                state_dir.display()
            ),
        ))?;
    }
    Ok(lock)
}

/// What [`restore`] put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Signed checkpoints verified.
    pub checkpoints: u64,
    /// Certificates in the rebuilt ledger, each checked against its
    /// certifier's signature.
    pub certificates: u64,
}

/// Restores the backup `from` into `config`'s state directory, which must
/// be empty and not in use; created (mode 0700) when missing. Nothing is
/// put in place unless every check passes (see the module's doc).
pub fn restore(
    config: &Config,
    from: &Path,
    clock: Arc<dyn Clock>,
) -> Result<Restored, BackupError> {
    let state_dir = config.daemon.state_dir.clone();
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .map_err(io_err(format!("creating {}", state_dir.display())))?;
    }
    check_empty(&state_dir)?;
    // Holding the lock keeps a certd from starting on it meanwhile.
    let lock = lock_stopped(&state_dir)?;
    let result = restore_locked(config, from, &state_dir, clock);
    drop(lock);
    if result.is_err() {
        // The lock file was the only thing there before.
        let _ = std::fs::remove_file(state_dir.join("lock"));
    }
    result
}

fn check_empty(state_dir: &Path) -> Result<(), BackupError> {
    // A lock file another process holds: a running certd.
    if File::options()
        .write(true)
        .open(state_dir.join("lock"))
        .is_ok_and(|l| l.try_lock().is_err())
    {
        return Err(BackupError::Live(state_dir.to_owned()));
    }
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(state_dir).map_err(io_err(format!("reading {}", state_dir.display())))?
    {
        let entry = entry.map_err(io_err(format!("reading {}", state_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A lock file alone (nobody holds it) leaves the directory empty.
        if name != "lock" {
            found.push(name);
        }
    }
    if !found.is_empty() {
        found.sort();
        found.truncate(5);
        return Err(BackupError::NotEmpty {
            dir: state_dir.to_owned(),
            found: found.join(", "),
        });
    }
    Ok(())
}

fn restore_locked(
    config: &Config,
    from: &Path,
    state_dir: &Path,
    clock: Arc<dyn Clock>,
) -> Result<Restored, BackupError> {
    let invalid = |reason: String| BackupError::Invalid {
        file: from.to_owned(),
        reason,
    };
    // Staging beside the state directory (same file system, so the files
    // move in by rename), removed whatever happens.
    let parent = state_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".certd-restore-")
        .tempdir_in(parent)
        .map_err(io_err(format!("cannot write in {}", parent.display())))?;
    let manifest = unpack(from, staging.path()).map_err(|e| match e {
        BackupError::Invalid { .. } | BackupError::Io { .. } => e,
        other => invalid(other.to_string()),
    })?;
    if manifest.format != FORMAT {
        return Err(invalid(format!(
            "format {:?}, this certd reads {FORMAT:?}",
            manifest.format
        )));
    }
    let log = staging.path().join(LOG);
    let bytes = std::fs::read(&log).map_err(io_err(format!("reading {}", log.display())))?;
    if bytes.len() as u64 != manifest.audit_bytes
        || hex::encode(Sha256::digest(&bytes)) != manifest.audit_sha256
    {
        return Err(invalid(
            "audit.log does not match the manifest's size and SHA-256 (damaged or altered)".into(),
        ));
    }
    drop(bytes);

    // The chain, every signed checkpoint, and the anchor.
    let (_, report) = crate::anchor::verify_log(config, Some(&log)).map_err(BackupError::Verify)?;
    if let Some(b) = &report.first_broken {
        return Err(BackupError::Verify(format!(
            "the audit chain breaks at line {}: {}",
            b.line, b.reason
        )));
    }
    if report.entries != manifest.last_seq {
        return Err(BackupError::Verify(format!(
            "the journal holds {} entries, the manifest says {}",
            report.entries, manifest.last_seq
        )));
    }

    // The ledger, rebuilt from the journal, every certificate checked
    // against its certifier's signature.
    let certifiers = Certifiers::load(config).map_err(|e| BackupError::Verify(e.to_string()))?;
    let check = |name: &str, der: &[u8]| certifiers.verify_issued(name, der);
    let index_file = crate::ledger::index::path_in(staging.path());
    let (journal, _) = Journal::open_checked(&log, &index_file, clock, Some(&check))
        .map_err(|e| BackupError::Verify(format!("rebuilding the ledger: {e}")))?;
    let outcome = cross_check(&journal, &log, &manifest).and_then(|certificates| {
        journal
            .audit(
                AuditEvent::new(KIND_RESTORED, audit::SELF_ACTOR).detail(json!({
                    "backup": from.display().to_string(),
                    "backup_created": manifest.created,
                    "backup_last_seq": manifest.last_seq,
                    "backup_last_hash": manifest.last_hash,
                    "audit_sha256": manifest.audit_sha256,
                    "certificates": certificates,
                    "checkpoints": report.checkpoints,
                })),
            )
            .map_err(|e| BackupError::Verify(format!("recording the restore: {e}")))?;
        Ok(certificates)
    });
    journal.close();
    let certificates = outcome?;

    // Into place: owned like the state directory (certd's), then renamed.
    let owner =
        std::fs::metadata(state_dir).map_err(io_err(format!("reading {}", state_dir.display())))?;
    let mut names = vec![LOG, "ledger.redb"];
    if staging.path().join(ANCHOR).exists() {
        names.push(ANCHOR);
    }
    use std::os::unix::fs::MetadataExt;
    for path in names.iter().map(|n| staging.path().join(n)) {
        let meta =
            std::fs::metadata(&path).map_err(io_err(format!("reading {}", path.display())))?;
        if meta.uid() != owner.uid() {
            // Run as root for a state directory that is certd's.
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).map_err(
                io_err(format!(
                    "giving {} to the owner of {} (run certd restore as root or as that user)",
                    path.display(),
                    state_dir.display()
                )),
            )?;
        }
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(format!("syncing {}", path.display())))?;
    }
    for name in &names {
        std::fs::rename(staging.path().join(name), state_dir.join(name)).map_err(io_err(
            format!("moving {name} into {}", state_dir.display()),
        ))?;
    }
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", state_dir.display())))?;
    Ok(Restored {
        manifest,
        checkpoints: report.checkpoints,
        certificates,
    })
}

/// Unpacks the archive's three known files into `dir` (nothing else is
/// accepted: no other names, links or directories); returns the manifest.
fn unpack(from: &Path, dir: &Path) -> Result<Manifest, BackupError> {
    let invalid = |reason: String| BackupError::Invalid {
        file: from.to_owned(),
        reason,
    };
    let file = File::open(from).map_err(io_err(format!("opening {}", from.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut manifest = None;
    let mut seen = Vec::new();
    for entry in archive.entries().map_err(|e| invalid(e.to_string()))? {
        let mut entry = entry.map_err(|e| invalid(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| invalid(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular
            || ![MANIFEST, LOG, ANCHOR].contains(&name.as_str())
        {
            return Err(invalid(format!("unexpected member {name:?}")));
        }
        if seen.contains(&name) {
            return Err(invalid(format!("{name} appears twice")));
        }
        seen.push(name.clone());
        let size = entry.header().size().map_err(|e| invalid(e.to_string()))?;
        if name != LOG && size > SMALL_FILE {
            return Err(invalid(format!("{name} is {size} bytes")));
        }
        if name == MANIFEST {
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| invalid(e.to_string()))?;
            manifest = Some(
                serde_json::from_slice::<Manifest>(&text)
                    .map_err(|e| invalid(format!("manifest.json: {e}")))?,
            );
        } else {
            let path = dir.join(&name);
            let mut out = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(format!("writing {}", path.display())))?;
            io::copy(&mut entry, &mut out).map_err(|e| invalid(format!("{name}: {e}")))?;
            out.sync_all()
                .map_err(io_err(format!("syncing {}", path.display())))?;
        }
    }
    if !seen.iter().any(|n| n == LOG) {
        return Err(invalid("it holds no audit.log".into()));
    }
    if let Some(anchor) = seen.iter().any(|n| n == ANCHOR).then(|| dir.join(ANCHOR)) {
        Anchor::read(&anchor).map_err(|e| invalid(format!("audit.anchor: {e}")))?;
    }
    manifest.ok_or_else(|| invalid("it holds no manifest.json".into()))
}

/// The ledger against the journal it was rebuilt from: every `issued`
/// entry's certificate is in the ledger under its serial, byte for byte,
/// issued or revoked; every `revoked` entry's serial is revoked; the
/// ledger counts no other certificate; and the counts are the
/// manifest's. Returns the number of certificates.
fn cross_check(journal: &Journal, log: &Path, manifest: &Manifest) -> Result<u64, BackupError> {
    let fail = |m: String| BackupError::Verify(m);
    let index = journal.index();
    let reader =
        BufReader::new(File::open(log).map_err(io_err(format!("reading {}", log.display())))?);
    let (mut certificates, mut revocations) = (0u64, 0u64);
    let mut per_certifier: std::collections::BTreeMap<String, u64> = Default::default();
    for line in reader.lines() {
        let line = line.map_err(io_err(format!("reading {}", log.display())))?;
        let record: AuditRecord = serde_json::from_str(&line).map_err(|e| fail(e.to_string()))?;
        if record.seq > manifest.last_seq {
            break;
        }
        match change_of(&record).map_err(|e| fail(e.to_string()))? {
            Some(Change::Issued { serial, der, .. }) => {
                certificates += 1;
                *per_certifier
                    .entry(record.certifier.clone().unwrap_or_default())
                    .or_default() += 1;
                let entry = index.get(&serial).map_err(|e| fail(e.to_string()))?;
                let state = entry.map(|r| r.state);
                if !matches!(state, Some(RecordState::Issued | RecordState::Revoked)) {
                    return Err(fail(format!(
                        "certificate {} of journal entry {} is {} in the ledger",
                        serial.to_hex(),
                        record.seq,
                        state.map_or("missing".to_string(), |s| s.to_string())
                    )));
                }
                if index
                    .certificate(&serial)
                    .map_err(|e| fail(e.to_string()))?
                    .as_deref()
                    != Some(&der[..])
                {
                    return Err(fail(format!(
                        "the ledger's certificate {} differs from journal entry {}",
                        serial.to_hex(),
                        record.seq
                    )));
                }
            }
            Some(Change::Revoked { serial, .. }) => {
                revocations += 1;
                let state = index
                    .get(&serial)
                    .map_err(|e| fail(e.to_string()))?
                    .map(|r| r.state);
                if state != Some(RecordState::Revoked) {
                    return Err(fail(format!(
                        "serial {} revoked by journal entry {} is not revoked in the ledger",
                        serial.to_hex(),
                        record.seq
                    )));
                }
            }
            _ => {}
        }
    }
    for (certifier, count) in &per_certifier {
        let stats = index.stats(certifier).map_err(|e| fail(e.to_string()))?;
        if stats.issued != *count {
            return Err(fail(format!(
                "the ledger counts {} certificates of certifier {certifier:?}, the journal {count}",
                stats.issued
            )));
        }
    }
    if (certificates, revocations) != (manifest.certificates, manifest.revocations) {
        return Err(fail(format!(
            "the journal holds {certificates} certificates and {revocations} revocations, the manifest \
             says {} and {}",
            manifest.certificates, manifest.revocations
        )));
    }
    Ok(certificates)
}
