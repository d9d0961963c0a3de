//! The append-only, hash-chained audit log: one JSON object per line.
//!
//! Each entry carries the SHA-256 of its own content and the hash of the
//! entry before it, so deleting, reordering or editing any line breaks the
//! chain at a point [`verify`] can name. An append returns only once its
//! line is on disk; concurrent appenders share `fsync`s (group commit).
//!
//! Entry format, fields in this order (`certifier` only when present):
//!
//! ```text
//! {"seq":1,"time":"2025-01-01T00:00:00.000000Z","kind":"...","actor":"...",
//!  "certifier":"...","detail":{...},"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! `hash` is the SHA-256 of the compact JSON serialization of the entry
//! without the `hash` field; the first entry's `prev` is 64 zeros.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the first entry.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Kind of the entry appended after a torn final line was cut off at open.
pub const KIND_RECOVERED: &str = "audit_recovered";

/// Kind of a signed checkpoint: an entry whose `detail` holds a token
/// signature over an earlier entry's `seq` and `hash` (`signed_seq`,
/// `signed_hash`, `signature` in base64, made by the entry's `certifier`).
pub const KIND_CHECKPOINT: &str = "audit_checkpoint";

/// How far back a checkpoint may sign (entries written between reading
/// the last entry and writing the checkpoint); [`verify_anchored`] keeps
/// that many hashes.
pub const CHECKPOINT_REACH: u64 = 4096;

/// The audit log of a state directory.
pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("audit.log")
}

/// The bytes a checkpoint signs for entry `seq` with `hash`.
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("certd audit checkpoint v1\nseq {seq}\nhash {hash}\n").into_bytes()
}

/// The newest checkpoint, kept beside the log (`audit.anchor`) and
/// written after the checkpoint entry is durable: a log that ends before
/// it was cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// `seq` of the checkpoint entry.
    pub seq: u64,
    /// Its `hash`.
    pub hash: String,
}

impl Anchor {
    /// Reads the anchor at `path` (`None` when there is none).
    pub fn read(path: &Path) -> Result<Option<Anchor>, AuditError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AuditError::Read {
                    path: path.to_owned(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuditError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the anchor to `path`: a new file of its own, synced, renamed
    /// over the old one, the directory synced.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        replace_file(
            path,
            &path.with_extension(format!("tmp-{}", self.seq)),
            &bytes,
            0o600,
        )
    }
}

/// Replaces `path` with `bytes`, never leaving it torn: written to `tmp`
/// (created new, with `mode` under the umask), synced, renamed over
/// `path`, the directory synced. `tmp` is removed if anything fails.
pub fn replace_file(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Checks a checkpoint's signature: `Ok` when `signature` over `message`
/// verifies under certifier `certifier`'s key, `Err` saying why not.
pub type CheckpointVerifier<'a> = &'a dyn Fn(&str, &[u8], &[u8]) -> Result<(), String>;

/// Actor recorded for entries certd writes on its own behalf.
pub(crate) const SELF_ACTOR: &str = "certd";

/// How much of the tail is read at a time when looking for the last entry;
/// doubled until an entry is found, so a healthy log costs one small read.
const TAIL_WINDOW: u64 = 64 * 1024;

/// How much of a dropped torn line is kept, as text, in the recovery entry:
/// enough to show an investigator what was lost, bounded against junk.
const RECOVERED_TEXT_LIMIT: usize = 4096;

/// An event to be recorded; build with [`AuditEvent::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub(crate) kind: String,
    pub(crate) actor: String,
    pub(crate) certifier: Option<String>,
    pub(crate) detail: Value,
}

impl AuditEvent {
    /// An event of `kind` (e.g. `"certificate_issued"`) caused by `actor`
    /// (an RA identity, an operator, or `"certd"`), with empty detail.
    pub fn new(kind: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            actor: actor.into(),
            certifier: None,
            detail: Value::Object(serde_json::Map::new()),
        }
    }

    /// The certifier (CA) the event concerns.
    pub fn certifier(mut self, certifier: impl Into<String>) -> Self {
        self.certifier = Some(certifier.into());
        self
    }

    /// Event-specific detail; must be a JSON object or the append fails
    /// with [`AuditError::DetailNotObject`].
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// One entry of the log, as written and as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the log, starting at 1, without gaps.
    pub seq: u64,
    /// When the entry was written: RFC 3339, UTC, microseconds.
    pub time: String,
    /// What happened.
    pub kind: String,
    /// Who caused it.
    pub actor: String,
    /// The certifier concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certifier: Option<String>,
    /// Event-specific data (a JSON object).
    pub detail: Value,
    /// `hash` of the previous entry, or [`GENESIS_PREV`].
    pub prev: String,
    /// SHA-256 (lowercase hex) of this entry without this field.
    pub hash: String,
}

/// The hashed part of an entry. Field order and skipping must stay exactly
/// as in [`AuditRecord`]: the hash covers these bytes.
#[derive(Serialize)]
struct RecordBody<'a> {
    seq: u64,
    time: &'a str,
    kind: &'a str,
    actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    certifier: Option<&'a str>,
    detail: &'a Value,
    prev: &'a str,
}

impl AuditRecord {
    /// Recomputes the hash of this entry's content (everything but `hash`).
    pub fn compute_hash(&self) -> Result<String, AuditError> {
        let body = RecordBody {
            seq: self.seq,
            time: &self.time,
            kind: &self.kind,
            actor: &self.actor,
            certifier: self.certifier.as_deref(),
            detail: &self.detail,
            prev: &self.prev,
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| AuditError::Encode(e.to_string()))?;
        Ok(hex::encode(Sha256::digest(&bytes)))
    }
}

/// Errors from the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log file could not be opened, created, read or repaired at open.
    #[error(
        "cannot open audit log {path}: {source}; check that its directory exists \
         and is writable by certd"
    )]
    Open {
        /// The log file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Reading the log failed during verification.
    #[error("cannot read audit log {path}: {source}")]
    Read {
        /// The log file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Writing an entry failed (e.g. disk full); the entry was not recorded.
    #[error("writing to the audit log failed: {0}; check free disk space")]
    Write(#[source] io::Error),
    /// Making an entry durable failed; the entry may be lost. The log
    /// refuses further appends until certd is restarted.
    #[error(
        "syncing the audit log to disk failed: {0}; check the disk, then restart \
         certd and run verify-audit"
    )]
    Sync(#[source] Arc<io::Error>),
    /// An earlier write or sync failure left the log in an unknown state, so
    /// appends are refused rather than building on entries that may be lost.
    #[error(
        "the audit log is refusing appends after an earlier failure ({0}); \
         fix the disk, then restart certd and run verify-audit"
    )]
    Unusable(String),
    /// The event's detail was not a JSON object.
    #[error("audit event detail must be a JSON object")]
    DetailNotObject,
    /// An entry could not be encoded (an internal error).
    #[error("cannot encode audit entry: {0}")]
    Encode(String),
}

/// Outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries checked and found sound (before the first broken one).
    pub entries: u64,
    /// The first entry that breaks the chain, if any.
    pub first_broken: Option<BrokenEntry>,
    /// Signed checkpoints verified ([`verify_anchored`] only).
    pub checkpoints: u64,
    /// `seq` of the last verified checkpoint.
    pub last_checkpoint: Option<u64>,
}

impl VerifyReport {
    /// Whether the whole log verified.
    pub fn is_ok(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenEntry {
    /// Line number, 1-based.
    pub line: u64,
    /// The entry's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// Machine-readable class of the break.
    pub kind: BreakKind,
    /// Human-readable explanation.
    pub reason: String,
}

/// The ways an entry can break the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// The line is not JSON of the entry schema.
    InvalidJson,
    /// `seq` is not the previous entry's plus one (deleted, inserted or
    /// reordered lines).
    SequenceGap,
    /// `prev` is not the previous entry's `hash`.
    PrevMismatch,
    /// `hash` does not match the entry's content.
    HashMismatch,
    /// A checkpoint's signature does not verify, or it signs a hash the
    /// log does not hold (the log was rewritten).
    BadCheckpoint,
    /// The log ends before the anchored checkpoint, or holds another entry
    /// where the anchor points (entries were cut off or replaced).
    Truncated,
}

/// Checks the whole log at `path`: every line valid, `seq` contiguous from 1,
/// `prev` linking to the previous `hash`, and every `hash` matching its
/// entry. Stops at the first break.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_inner(path, None, None)
}

/// [`verify`], and also: every checkpoint's signature verifies (with
/// `verifier`) over the `seq` and `hash` of the entry it names, which is
/// the entry the log holds there; and the log reaches the `anchor`'s
/// checkpoint with the anchor's hash. So a log cut short, or rewritten
/// with recomputed hashes, fails even though its chain is intact.
pub fn verify_anchored(
    path: &Path,
    verifier: CheckpointVerifier<'_>,
    anchor: Option<&Anchor>,
) -> Result<VerifyReport, AuditError> {
    verify_inner(path, Some(verifier), anchor)
}

fn verify_inner(
    path: &Path,
    verifier: Option<CheckpointVerifier<'_>>,
    anchor: Option<&Anchor>,
) -> Result<VerifyReport, AuditError> {
    let read_error = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(read_error)?);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut previous: Option<(u64, String)> = None;
    // The hashes a checkpoint may sign: the last CHECKPOINT_REACH entries.
    let mut recent: std::collections::VecDeque<(u64, String)> = std::collections::VecDeque::new();
    let (mut checkpoints, mut last_checkpoint) = (0u64, None);
    let mut anchor_seen = false;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
            break;
        }
        line_no += 1;
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let counts = (checkpoints, last_checkpoint);
        let broken = |kind, seq, reason| {
            Ok(VerifyReport {
                entries: line_no - 1,
                first_broken: Some(BrokenEntry {
                    line: line_no,
                    seq,
                    kind,
                    reason,
                }),
                checkpoints: counts.0,
                last_checkpoint: counts.1,
            })
        };

        let record: AuditRecord = match serde_json::from_slice(content) {
            Ok(record) => record,
            Err(error) => {
                return broken(
                    BreakKind::InvalidJson,
                    seq_hint(content),
                    format!("not valid JSON: {error}"),
                )
            }
        };
        let seq = Some(record.seq);
        let (expected_seq, expected_prev) = match &previous {
            Some((seq, hash)) => (seq + 1, hash.as_str()),
            None => (1, GENESIS_PREV),
        };
        if record.seq != expected_seq {
            return broken(
                BreakKind::SequenceGap,
                seq,
                format!(
                    "sequence gap: expected {expected_seq}, found {}",
                    record.seq
                ),
            );
        }
        if record.prev != expected_prev {
            return broken(
                BreakKind::PrevMismatch,
                seq,
                "prev hash does not match previous entry".to_owned(),
            );
        }
        if record.compute_hash()? != record.hash {
            return broken(
                BreakKind::HashMismatch,
                seq,
                "hash does not match content".to_owned(),
            );
        }
        if let Some(verifier) = verifier {
            if record.kind == KIND_CHECKPOINT {
                if let Err(why) = check_checkpoint(&record, &recent, verifier) {
                    return broken(
                        BreakKind::BadCheckpoint,
                        seq,
                        format!(
                            "checkpoint {}: {why}; the log before it is not the one certd signed",
                            record.seq
                        ),
                    );
                }
                checkpoints += 1;
                last_checkpoint = Some(record.seq);
            }
            if let Some(a) = anchor {
                if a.seq == record.seq {
                    if a.hash != record.hash {
                        return broken(
                            BreakKind::Truncated,
                            seq,
                            format!(
                                "the anchor names checkpoint {} with hash {}, the log holds another entry there: entries were replaced",
                                a.seq, a.hash
                            ),
                        );
                    }
                    anchor_seen = true;
                }
            }
            recent.push_back((record.seq, record.hash.clone()));
            if recent.len() as u64 > CHECKPOINT_REACH {
                recent.pop_front();
            }
        }
        previous = Some((record.seq, record.hash));
    }
    if let (Some(a), false) = (anchor, anchor_seen) {
        let last = previous.as_ref().map_or(0, |(s, _)| *s);
        return Ok(VerifyReport {
            entries: line_no,
            first_broken: Some(BrokenEntry {
                line: line_no + 1,
                seq: None,
                kind: BreakKind::Truncated,
                reason: format!(
                    "the log ends at entry {last} (the last good entry), before checkpoint {} that the anchor records: entries were cut off",
                    a.seq
                ),
            }),
            checkpoints,
            last_checkpoint,
        });
    }
    Ok(VerifyReport {
        entries: line_no,
        first_broken: None,
        checkpoints,
        last_checkpoint,
    })
}

/// Checks one checkpoint entry against the hashes before it.
fn check_checkpoint(
    record: &AuditRecord,
    recent: &std::collections::VecDeque<(u64, String)>,
    verifier: CheckpointVerifier<'_>,
) -> Result<(), String> {
    use base64::Engine;
    let d = &record.detail;
    let signed_seq = d["signed_seq"].as_u64().ok_or("no signed_seq")?;
    let signed_hash = d["signed_hash"].as_str().ok_or("no signed_hash")?;
    let signature = d["signature"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or("no base64 signature")?;
    let certifier = record.certifier.as_deref().ok_or("no certifier")?;
    verifier(
        certifier,
        &checkpoint_message(signed_seq, signed_hash),
        &signature,
    )
    .map_err(|e| format!("signature by certifier {certifier:?}: {e}"))?;
    match recent.iter().find(|(s, _)| *s == signed_seq) {
        Some((_, h)) if h == signed_hash => Ok(()),
        Some((_, h)) => Err(format!(
            "it signs entry {signed_seq} with hash {signed_hash}, the log holds hash {h} there"
        )),
        None => Err(format!(
            "it signs entry {signed_seq}, which is not among the {CHECKPOINT_REACH} entries before it"
        )),
    }
}

/// Hands the entries of the log at `path` to `visit`, newest first, until it
/// answers `Break`. Reads the file backwards in blocks, so looking at the
/// last entries costs what they weigh, not what the log weighs. Lines that
/// are not entries are passed over ([`verify`] reports them).
pub fn scan_back(
    path: &Path,
    mut visit: impl FnMut(AuditRecord) -> ControlFlow<()>,
) -> Result<(), AuditError> {
    const BLOCK: u64 = 256 * 1024;
    let read_error = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut end = file.metadata().map_err(read_error)?.len();
    // The start of the line that begins in an earlier block.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        file.read_exact_at(&mut block, start).map_err(read_error)?;
        block.extend_from_slice(&carry);
        let mut lines: Vec<&[u8]> = block.split(|b| *b == b'\n').collect();
        // Unless the block starts the file, its first line is incomplete.
        let first = if start > 0 {
            lines.remove(0).to_vec()
        } else {
            Vec::new()
        };
        for line in lines.into_iter().rev() {
            if let Ok(record) = serde_json::from_slice::<AuditRecord>(line) {
                if visit(record).is_break() {
                    return Ok(());
                }
            }
        }
        if start == 0 {
            return Ok(());
        }
        carry = first;
        end = start;
    }
}

/// The `seq` of a line that is JSON but not a valid entry, to help the
/// operator find it.
fn seq_hint(content: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(content)
        .ok()?
        .get("seq")?
        .as_u64()
}

pub(crate) fn open_or_create(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    match options.clone().create_new(true).mode(0o600).open(path) {
        Ok(file) => {
            // The new directory entry must survive a crash too, or the
            // first entries could vanish with the file itself.
            let parent = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            File::open(parent)?.sync_all()?;
            Ok(file)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => options.open(path),
        Err(error) => Err(error),
    }
}

/// Length of the file up to and including its last newline: everything
/// after it is a torn append.
pub(crate) fn complete_len(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; TAIL_WINDOW as usize];
    while end > 0 {
        let start = end.saturating_sub(TAIL_WINDOW);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(pos) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + pos as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

pub(crate) struct Dropped {
    pub(crate) bytes: u64,
    pub(crate) sha256: String,
    pub(crate) text: String,
}

pub(crate) fn read_dropped(file: &File, from: u64, to: u64) -> io::Result<Dropped> {
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut buf = vec![0u8; TAIL_WINDOW as usize];
    let mut offset = from;
    while offset < to {
        let n = (to - offset).min(TAIL_WINDOW) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        let room = RECOVERED_TEXT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        offset += n as u64;
    }
    Ok(Dropped {
        bytes: to - from,
        sha256: hex::encode(hasher.finalize()),
        text: String::from_utf8_lossy(&kept).into_owned(),
    })
}

/// The last line in `[0, end)` that parses as an entry. `end` must be 0 or
/// just after a newline.
pub(crate) fn last_entry(file: &File, end: u64) -> io::Result<Option<AuditRecord>> {
    let mut window = TAIL_WINDOW;
    let mut skipped: u64;
    loop {
        let start = end.saturating_sub(window);
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start)?;
        let mut lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').collect();
        // The piece after the final newline is empty; the first piece may be
        // the cut-off end of a longer line unless the window reaches byte 0.
        lines.pop();
        if start > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        skipped = 0;
        for line in lines.iter().rev() {
            if let Ok(record) = serde_json::from_slice::<AuditRecord>(line) {
                if skipped > 0 {
                    tracing::warn!(
                        skipped,
                        seq = record.seq,
                        "audit log ends in unreadable entries; continuing after the last \
                         readable one, run verify-audit"
                    );
                }
                return Ok(Some(record));
            }
            skipped += 1;
        }
        if start == 0 {
            break;
        }
        window = window.saturating_mul(2);
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "audit log holds no readable entry; starting a new chain, run verify-audit"
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use serde_json::json;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// The audit log as certd writes it: through the journal (its index
    /// in a file of its own beside the log).
    struct TestLog(crate::journal::Journal);

    impl TestLog {
        fn open_with(
            path: &Path,
            clock: Arc<dyn crate::clock::Clock>,
        ) -> Result<TestLog, AuditError> {
            crate::journal::Journal::open(path, &path.with_extension("redb"), clock)
                .map(|(j, _)| TestLog(j))
                .map_err(|e| AuditError::Unusable(e.to_string()))
        }

        fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
            self.0.audit(event)
        }

        fn last_seq(&self) -> u64 {
            self.0.last_seq()
        }
    }

    fn open(path: &Path) -> Result<TestLog, AuditError> {
        TestLog::open_with(path, Arc::new(SystemClock))
    }

    fn new_log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        (dir, path)
    }

    /// A log of `n` entries with actor "alice".
    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let (dir, path) = new_log();
        let log = open(&path).expect("open");
        for i in 0..n {
            log.append(
                AuditEvent::new("certificate_issued", "alice")
                    .certifier("ca1")
                    .detail(json!({ "i": i })),
            )
            .expect("append");
        }
        (dir, path)
    }

    fn read_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).expect("write");
    }

    fn broken(path: &Path) -> BrokenEntry {
        verify(path)
            .expect("verify")
            .first_broken
            .expect("tampering must be detected")
    }

    #[test]
    fn the_journal_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::journal::Journal>();
    }

    #[test]
    fn entry_format_is_stable() {
        let (_dir, path) = new_log();
        let log = open(&path).expect("open");
        let first = log
            .append(AuditEvent::new("started", "certd"))
            .expect("append");
        let second = log
            .append(
                AuditEvent::new("certificate_issued", "ra-web")
                    .certifier("ca1")
                    .detail(json!({"serial": "01"})),
            )
            .expect("append");
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev, GENESIS_PREV);
        assert_eq!(second.prev, first.hash);

        let lines = read_lines(&path);
        let expected_first = format!(
            r#"{{"seq":1,"time":"{}","kind":"started","actor":"certd","detail":{{}},"prev":"{}","hash":"{}"}}"#,
            first.time, GENESIS_PREV, first.hash
        );
        assert_eq!(lines[0], expected_first);
        assert!(lines[1].contains(r#""actor":"ra-web","certifier":"ca1","detail":{"serial":"01"}"#));
        // RFC 3339 UTC with microseconds: 2025-01-01T00:00:00.000000Z
        assert_eq!(first.time.len(), 27);
        assert!(first.time.ends_with('Z') && first.time.as_bytes()[19] == b'.');
        let hashed = lines[0].replace(&format!(r#","hash":"{}""#, first.hash), "");
        assert_eq!(hex::encode(Sha256::digest(hashed.as_bytes())), first.hash);

        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            log.append(AuditEvent::new("x", "y").detail(json!([1]))),
            Err(AuditError::DetailNotObject)
        ));
    }

    #[test]
    fn entries_are_timed_by_the_log_clock() {
        let (_dir, path) = new_log();
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let clock = Arc::new(ManualClock::at(start));
        let log = TestLog::open_with(&path, clock.clone()).expect("open");
        let first = log.append(AuditEvent::new("a", "certd")).expect("append");
        clock.advance(std::time::Duration::from_micros(2_500_001));
        let second = log.append(AuditEvent::new("b", "certd")).expect("append");
        assert_eq!(first.time, "2023-11-14T22:13:20.000000Z");
        assert_eq!(second.time, "2023-11-14T22:13:22.500001Z");
    }

    #[test]
    fn concurrent_appends_form_a_gapless_chain() {
        let (_dir, path) = new_log();
        let log = Arc::new(open(&path).expect("open"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            log.append(
                                AuditEvent::new("test", format!("thread-{t}"))
                                    .detail(json!({ "i": i })),
                            )
                            .expect("append")
                            .seq
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
        assert_eq!(log.last_seq(), 400);
        let report = verify(&path).expect("verify");
        assert_eq!(
            report,
            VerifyReport {
                entries: 400,
                first_broken: None,
                checkpoints: 0,
                last_checkpoint: None,
            }
        );
    }

    #[test]
    fn reopen_continues_the_chain() {
        let (_dir, path) = log_with(3);
        let log = open(&path).expect("reopen");
        assert_eq!(log.last_seq(), 3);
        let last = read_lines(&path).pop().expect("line");
        let last: AuditRecord = serde_json::from_str(&last).expect("parse");
        let next = log.append(AuditEvent::new("more", "bob")).expect("append");
        assert_eq!(next.seq, 4);
        assert_eq!(next.prev, last.hash);
        assert!(verify(&path).expect("verify").is_ok());
        assert_eq!(verify(&path).expect("verify").entries, 4);
    }

    #[test]
    fn scan_back_reads_newest_first_across_blocks() {
        // About 250 bytes per entry: several read blocks.
        let (_dir, path) = log_with(3_000);
        let mut seqs = Vec::new();
        scan_back(&path, |r| {
            seqs.push(r.seq);
            ControlFlow::Continue(())
        })
        .expect("scan");
        assert_eq!(seqs, (1..=3_000).rev().collect::<Vec<u64>>());
        let mut few = Vec::new();
        scan_back(&path, |r| {
            few.push(r.seq);
            if few.len() == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("scan");
        assert_eq!(few, vec![3_000, 2_999, 2_998, 2_997, 2_996]);
    }

    #[test]
    fn empty_log_verifies() {
        let (_dir, path) = new_log();
        drop(open(&path).expect("open"));
        let report = verify(&path).expect("verify");
        assert_eq!(report.entries, 0);
        assert!(report.is_ok());
    }

    #[test]
    fn edited_field_is_a_hash_mismatch() {
        let (_dir, path) = log_with(9);
        let mut lines = read_lines(&path);
        lines[4] = lines[4].replace(r#""actor":"alice""#, r#""actor":"mallory""#);
        write_lines(&path, &lines);
        let broken = broken(&path);
        assert_eq!((broken.line, broken.seq), (5, Some(5)));
        assert_eq!(broken.kind, BreakKind::HashMismatch);
        assert_eq!(broken.reason, "hash does not match content");
        assert_eq!(verify(&path).expect("verify").entries, 4);
    }

    #[test]
    fn deleted_line_is_a_sequence_gap() {
        let (_dir, path) = log_with(9);
        let mut lines = read_lines(&path);
        lines.remove(4);
        write_lines(&path, &lines);
        let broken = broken(&path);
        assert_eq!((broken.line, broken.seq), (5, Some(6)));
        assert_eq!(broken.kind, BreakKind::SequenceGap);
        assert_eq!(broken.reason, "sequence gap: expected 5, found 6");
    }

    #[test]
    fn swapped_lines_are_caught() {
        let (_dir, path) = log_with(9);
        let mut lines = read_lines(&path);
        lines.swap(3, 4);
        write_lines(&path, &lines);
        let broken = broken(&path);
        assert_eq!((broken.line, broken.seq), (4, Some(5)));
        assert_eq!(broken.kind, BreakKind::SequenceGap);
        assert_eq!(broken.reason, "sequence gap: expected 4, found 5");
    }

    #[test]
    fn rehashed_edit_is_caught_at_the_next_line() {
        let (_dir, path) = log_with(9);
        let mut lines = read_lines(&path);
        let mut record: AuditRecord = serde_json::from_str(&lines[4]).expect("parse");
        record.actor = "mallory".to_owned();
        record.hash = record.compute_hash().expect("hash");
        lines[4] = serde_json::to_string(&record).expect("encode");
        write_lines(&path, &lines);
        let broken = broken(&path);
        assert_eq!((broken.line, broken.seq), (6, Some(6)));
        assert_eq!(broken.kind, BreakKind::PrevMismatch);
        assert_eq!(broken.reason, "prev hash does not match previous entry");
    }

    #[test]
    fn garbage_line_is_invalid_json() {
        let (_dir, path) = log_with(5);
        let mut lines = read_lines(&path);
        lines[2] = "not json".to_owned();
        lines[3] = lines[3].replace(r#""seq":4"#, r#""seq":4,"extra":1"#);
        write_lines(&path, &lines);
        let first = broken(&path);
        assert_eq!((first.line, first.seq), (3, None));
        assert_eq!(first.kind, BreakKind::InvalidJson);
        assert!(first.reason.starts_with("not valid JSON"));

        // Unknown fields are refused too, and the seq is still reported.
        lines.remove(2);
        write_lines(&path, &lines);
        let second = broken(&path);
        assert_eq!((second.line, second.seq), (3, Some(4)));
        assert_eq!(second.kind, BreakKind::InvalidJson);
    }

    #[test]
    fn torn_last_line_is_cut_off_and_recorded() {
        let (_dir, path) = log_with(3);
        let fragment = br#"{"seq":4,"time":"2025-01-01T00:00"#;
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(fragment).expect("write");
        drop(file);

        let log = open(&path).expect("open repairs");
        assert_eq!(log.last_seq(), 4);
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 4);
        let recovered: AuditRecord = serde_json::from_str(&lines[3]).expect("parse");
        assert_eq!(recovered.kind, KIND_RECOVERED);
        assert_eq!(recovered.detail["bytes_dropped"], json!(fragment.len()));
        assert_eq!(
            recovered.detail["dropped_text"],
            json!(String::from_utf8_lossy(fragment))
        );
        assert!(std::fs::read(&path).expect("read").ends_with(b"\n"));
        assert_eq!(
            verify(&path).expect("verify"),
            VerifyReport {
                entries: 4,
                first_broken: None,
                checkpoints: 0,
                last_checkpoint: None,
            }
        );
        log.append(AuditEvent::new("after", "bob")).expect("append");
        assert!(verify(&path).expect("verify").is_ok());
    }

    #[test]
    fn other_damage_after_the_index_refuses_the_open() {
        // A complete line that is no entry is not what a crash leaves (it
        // leaves a torn last line): the log was damaged, and the ledger
        // applied from it cannot be trusted until an operator has looked.
        let (_dir, path) = log_with(3);
        let mut lines = read_lines(&path);
        lines.push("garbage but complete".to_owned());
        write_lines(&path, &lines);
        let refused = open(&path).err().expect("refused");
        assert!(refused.to_string().contains("verify-audit"), "{refused}");
        assert_eq!(
            read_lines(&path)[3],
            "garbage but complete",
            "left as found"
        );
        assert_eq!(broken(&path).line, 4);
    }
}
