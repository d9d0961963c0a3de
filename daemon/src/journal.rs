//! The journal: the audit log as certd's write-ahead log.
//!
//! Every fact certd records goes through one writer thread that owns the
//! audit log file: plain audit entries (refusals, activations, ...) and the
//! entries that change the ledger (an intent before signing, an issued
//! certificate, an abandoned serial, a revocation, a CRL number). A round of
//! the writer takes every submission waiting, checks each ledger change
//! against the [`Index`] (and the changes before it in the round), builds
//! the hash-chained entries, writes them with one `write` and makes them
//! durable with one `fsync`, and only then commits the round's index
//! changes (without a sync of their own) and answers every submitter. So an
//! issuance waits for exactly two durable writes, the intent and the
//! certificate, both shared with whatever else was submitted meanwhile;
//! and the ledger and the audit log cannot disagree, because they are one
//! record.
//!
//! The index is committed durably every so often with the journal position
//! it reflects (its checkpoint). At open, and after the index failed and was
//! reopened, the journal's entries after the checkpoint are applied again:
//! only the tail, so start-up does not grow with the ledger.
//!
//! What a ledger entry carries, in `detail` (besides free text for readers):
//!
//! | kind | ledger fields |
//! |---|---|
//! | `issuance_intent` | `serial`, `ra`, `request_id`, `body_sha256`, `tbs_sha256`, `profile`, `created`, `approval`, `instance`, `spki_sha256` |
//! | `issued` | `serial`, `certificate` (base64 DER), `not_after` (RFC 3339), `issued_at` |
//! | `issuance_failed`, `intent_abandoned` | `serial`, `reason` |
//! | `revoked` | `serial`, `reason` (name), `reason_code`, `revoked_at` (RFC 3339), `at` |
//! | `crl_number_reserved` | `crl_number` |
//!
//! plus the entry's `certifier` (all but `revoked`'s, which the index knows
//! from the serial).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::audit::{self, AuditError, AuditEvent, AuditRecord, GENESIS_PREV, KIND_RECOVERED};
use crate::clock::{self, Clock};
use crate::ledger::index::{Applied, Change, Checkpoint, Claim, Index, IndexWrite};
use crate::ledger::{Intent, LedgerError, Serial};

/// Kind of the entry that records an intent.
pub const KIND_INTENT: &str = "issuance_intent";
/// Kind of the entry that carries an issued certificate.
pub const KIND_ISSUED: &str = "issued";
/// Kind of the entry of a signing that failed.
pub const KIND_FAILED: &str = "issuance_failed";
/// Kind of the entry of an intent abandoned at start-up.
pub const KIND_ABANDONED: &str = "intent_abandoned";
/// Kind of the entry of a revocation.
pub const KIND_REVOKED: &str = "revoked";
/// Kind of the entry that takes a CRL number before the CRL is signed.
pub const KIND_CRL_NUMBER: &str = "crl_number_reserved";

/// The most submissions one round takes.
const MAX_ROUND: usize = 1024;
/// The index is committed durably at least this often...
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// ...and after at most this many journal entries.
const CHECKPOINT_ENTRIES: u64 = 8192;
/// Entries applied per index transaction when the journal is replayed.
const REPLAY_BATCH: u64 = 20_000;
/// Time between attempts at reopening a failed index.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// Free bytes the index's file system needs before a failed index is
/// reopened (a replay writes to it).
const REOPEN_MIN_FREE: u64 = 1 << 20;
/// How long a reopening waits for readers still using the failed index.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Why a submission to the journal failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The entry could not be written or made durable.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The index could not take the change (the entry, if written, is
    /// applied when the index is back).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Checks a certificate restored from the journal: `Ok` when certifier
/// (first argument) signed the DER certificate (second).
pub type IssuedCheck<'a> = &'a dyn Fn(&str, &[u8]) -> Result<(), String>;

/// What a submission came to.
#[derive(Debug)]
pub enum Done {
    /// A plain entry, durable.
    Entry(AuditRecord),
    /// A ledger change: what applying it came to, and its entry when it
    /// changed anything (a refusal writes no entry).
    Change(Applied, Option<AuditRecord>),
}

enum Work {
    Audit(AuditEvent),
    Change(Box<Change>, AuditEvent),
}

enum Reply {
    Blocking(mpsc::SyncSender<Result<Done, JournalError>>),
    Async(tokio::sync::oneshot::Sender<Result<Done, JournalError>>),
}

impl Reply {
    fn send(self, result: Result<Done, JournalError>) {
        // A submitter that went away no longer needs the answer.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

struct Job {
    work: Work,
    reply: Reply,
}

/// The ledger as the pipeline sees it: the state of every serial, and
/// changes recorded together with their audit entries, durable when the
/// call returns; plus plain audit entries. [`Journal`] is the embedded
/// implementation (the audit log as write-ahead log, a redb index); a
/// database shared by several certd instances would implement the same
/// calls, writing a change and its audit entry in one transaction.
pub trait Ledger: Send + Sync {
    /// Appends a plain audit entry; returns it once it is durable.
    fn audit(&self, event: AuditEvent) -> Result<AuditRecord, AuditError>;

    /// Writes `event` as the last entry and closes: whatever is submitted
    /// after it (a CRL being made, a request still in flight at shutdown)
    /// is refused, so nothing follows the entry that says certd stopped.
    fn finish(&self, event: AuditEvent) -> Result<AuditRecord, AuditError>;

    /// [`Ledger::audit`] for callers that go on either way: a failure is
    /// logged (and returned).
    fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.audit(event).map(|_| ()).inspect_err(|e| {
            tracing::error!(error = %e, "cannot write the audit log");
        })
    }

    /// [`Ledger::audit`] for async callers: the task waits, no thread.
    fn audit_async<'a>(
        &'a self,
        event: AuditEvent,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<AuditRecord, AuditError>> + Send + 'a>,
    >;

    /// Records a ledger change with its audit entry; see
    /// [`Journal::change`].
    fn change(&self, change: Change, event: AuditEvent) -> Result<Done, JournalError>;

    /// [`Ledger::change`] for async callers.
    fn change_async<'a>(
        &'a self,
        change: Change,
        event: AuditEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, JournalError>> + Send + 'a>>;

    /// One serial's record, with its certificate.
    fn get(&self, serial: &Serial) -> Result<Option<crate::ledger::LedgerRecord>, LedgerError>;

    /// A certificate, by serial.
    fn certificate(&self, serial: &Serial) -> Result<Option<Vec<u8>>, LedgerError>;

    /// An RA's idempotency key.
    fn idempotency_get(
        &self,
        ra: &str,
        request_id: &str,
    ) -> Result<Option<crate::ledger::IdempotencyEntry>, LedgerError>;

    /// The revocation that blocked the key with this SPKI SHA-256, if any.
    fn blocked_key(
        &self,
        spki_sha256: &[u8; 32],
    ) -> Result<Option<crate::ledger::BlockedKey>, LedgerError>;

    /// `seq` and `hash` of the last entry written.
    fn last_entry(&self) -> (u64, String);

    /// How long the journal's rounds take to become durable (one `write`
    /// and one `fsync` each), for the metrics; `None` for ledgers that
    /// keep no such figure.
    fn commit_latency(&self) -> Option<crate::metrics::Histogram> {
        None
    }

    /// Counters of one certifier.
    fn stats(&self, certifier: &str) -> Result<crate::ledger::CertifierStats, LedgerError>;

    /// The last CRL number a certifier took.
    fn current_crl_number(&self, certifier: &str) -> Result<Option<u64>, LedgerError>;

    /// Every revoked certificate of a certifier, in serial order.
    fn visit_revoked(
        &self,
        certifier: &str,
        visit: &mut dyn FnMut(crate::ledger::RevokedEntry),
    ) -> Result<(), LedgerError>;

    /// The records still in state `Intent`.
    fn pending_intents(&self) -> Result<Vec<(Serial, crate::ledger::LedgerRecord)>, LedgerError>;

    /// Records after `after` in serial order, of RA `ra` when given,
    /// without their certificates; see [`Index::visit_records`].
    fn visit_records(
        &self,
        after: Option<&Serial>,
        ra: Option<&str>,
        visit: &mut dyn FnMut(Serial, crate::ledger::LedgerRecord) -> std::ops::ControlFlow<()>,
    ) -> Result<(), LedgerError>;
}

impl Ledger for Journal {
    fn audit(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        Journal::audit(self, event)
    }

    fn finish(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        Journal::finish(self, event)
    }

    fn audit_async<'a>(
        &'a self,
        event: AuditEvent,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<AuditRecord, AuditError>> + Send + 'a>,
    > {
        Box::pin(Journal::audit_async(self, event))
    }

    fn change(&self, change: Change, event: AuditEvent) -> Result<Done, JournalError> {
        Journal::change(self, change, event)
    }

    fn change_async<'a>(
        &'a self,
        change: Change,
        event: AuditEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, JournalError>> + Send + 'a>>
    {
        Box::pin(Journal::change_async(self, change, event))
    }

    fn get(&self, serial: &Serial) -> Result<Option<crate::ledger::LedgerRecord>, LedgerError> {
        self.index.get(serial)
    }

    fn certificate(&self, serial: &Serial) -> Result<Option<Vec<u8>>, LedgerError> {
        self.index.certificate(serial)
    }

    fn idempotency_get(
        &self,
        ra: &str,
        request_id: &str,
    ) -> Result<Option<crate::ledger::IdempotencyEntry>, LedgerError> {
        self.index.idempotency_get(ra, request_id)
    }

    fn blocked_key(
        &self,
        spki_sha256: &[u8; 32],
    ) -> Result<Option<crate::ledger::BlockedKey>, LedgerError> {
        self.index.blocked_key(spki_sha256)
    }

    fn last_entry(&self) -> (u64, String) {
        Journal::last_entry(self)
    }

    fn commit_latency(&self) -> Option<crate::metrics::Histogram> {
        Some(self.commit_latency.clone())
    }

    fn stats(&self, certifier: &str) -> Result<crate::ledger::CertifierStats, LedgerError> {
        self.index.stats(certifier)
    }

    fn current_crl_number(&self, certifier: &str) -> Result<Option<u64>, LedgerError> {
        self.index.current_crl_number(certifier)
    }

    fn visit_revoked(
        &self,
        certifier: &str,
        visit: &mut dyn FnMut(crate::ledger::RevokedEntry),
    ) -> Result<(), LedgerError> {
        self.index.visit_revoked(certifier, visit)
    }

    fn pending_intents(&self) -> Result<Vec<(Serial, crate::ledger::LedgerRecord)>, LedgerError> {
        self.index.pending_intents()
    }

    fn visit_records(
        &self,
        after: Option<&Serial>,
        ra: Option<&str>,
        visit: &mut dyn FnMut(Serial, crate::ledger::LedgerRecord) -> std::ops::ControlFlow<()>,
    ) -> Result<(), LedgerError> {
        self.index.visit_records(after, ra, visit)
    }
}

impl JournalError {
    /// The API's error for a submission that failed: the journal's own
    /// failures are `audit_unavailable`, the index's `ledger_unavailable`.
    pub fn api_error(&self) -> certd_api::ApiError {
        match self {
            JournalError::Audit(e) => {
                certd_api::ApiError::new(certd_api::ErrorCode::AuditUnavailable, e.to_string())
            }
            JournalError::Ledger(e) => e.api_error(),
        }
    }
}

/// What opening the journal found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// Entries applied to the index again (those after its checkpoint).
    pub replayed: u64,
    /// Bytes of a torn final line that were cut off.
    pub torn_bytes: Option<u64>,
}

/// The journal: the audit log file and the index applied from it.
pub struct Journal {
    path: PathBuf,
    index: Arc<Index>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    last_seq: Arc<AtomicU64>,
    /// `seq` and `hash` of the last entry written.
    last: Arc<Mutex<(u64, String)>>,
    durable_seq: Arc<AtomicU64>,
    /// Seconds per round from `write` to the end of its `fsync`.
    commit_latency: crate::metrics::Histogram,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn open_error(path: &Path) -> impl Fn(io::Error) -> AuditError + '_ {
    move |source| AuditError::Open {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// Opens the journal at `path` (creating it, mode 0600) and the index at
    /// `index_path`, cuts off a torn final line (and records what was cut),
    /// and applies the entries after the index's checkpoint. Entries are
    /// timed by `clock`.
    pub fn open(
        path: &Path,
        index_path: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<(Journal, Opened), JournalError> {
        Self::open_checked(path, index_path, clock, None)
    }

    /// [`Journal::open`], with every certificate the replay restores to the
    /// index checked first by `check` (its certifier's signature).
    pub fn open_checked(
        path: &Path,
        index_path: &Path,
        clock: Arc<dyn Clock>,
        check: Option<IssuedCheck<'_>>,
    ) -> Result<(Journal, Opened), JournalError> {
        let file = audit::open_or_create(path).map_err(open_error(path))?;
        let len = file.metadata().map_err(open_error(path))?.len();
        let complete = audit::complete_len(&file, len).map_err(open_error(path))?;
        let torn = if complete < len {
            let dropped = audit::read_dropped(&file, complete, len).map_err(open_error(path))?;
            file.set_len(complete).map_err(open_error(path))?;
            file.sync_data().map_err(open_error(path))?;
            tracing::warn!(path = %path.display(), bytes = dropped.bytes, "journal ended in a torn line; cut it off");
            Some(dropped)
        } else {
            None
        };
        let (seq, hash) = match audit::last_entry(&file, complete).map_err(open_error(path))? {
            Some(record) => (record.seq, record.hash),
            None => (0, GENESIS_PREV.to_owned()),
        };
        let index = Arc::new(Index::open(index_path)?);
        let replayed = replay(&index, path, complete, seq, check)?;
        let last_seq = Arc::new(AtomicU64::new(seq));
        let last = Arc::new(Mutex::new((seq, hash.clone())));
        let durable_seq = Arc::new(AtomicU64::new(seq));
        let commit_latency = crate::metrics::latency_histogram();
        let writer = Writer {
            clock,
            file,
            path: path.to_owned(),
            seq,
            hash,
            len: complete,
            failed: None,
            index: index.clone(),
            index_failed: None,
            last_reopen: None,
            checkpoint_seq: seq,
            checkpoint_at: Instant::now(),
            last_seq: last_seq.clone(),
            last: last.clone(),
            durable_seq: durable_seq.clone(),
            commit_latency: commit_latency.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Open {
                path: path.to_owned(),
                source: e,
            })?;
        let journal = Journal {
            path: path.to_owned(),
            index,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            last_seq,
            last,
            durable_seq,
            commit_latency,
        };
        let torn_bytes = torn.as_ref().map(|d| d.bytes);
        if let Some(dropped) = torn {
            journal.audit(
                AuditEvent::new(KIND_RECOVERED, audit::SELF_ACTOR).detail(json!({
                    "bytes_dropped": dropped.bytes,
                    "dropped_sha256": dropped.sha256,
                    "dropped_text": dropped.text,
                })),
            )?;
        }
        Ok((
            journal,
            Opened {
                replayed,
                torn_bytes,
            },
        ))
    }

    /// The journal's file (the audit log).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index, for reads.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// `seq` of the last entry written (0 for an empty journal).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// `seq` and `hash` of the last entry written ((0, the genesis `prev`)
    /// for an empty journal).
    pub fn last_entry(&self) -> (u64, String) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `seq` of the last entry the index holds durably (its last durable
    /// commit's checkpoint): where a reopen after a power loss starts.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    fn submit(&self, work: Work, reply: Reply) -> Result<(), JournalError> {
        let guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let stopped = || AuditError::Unusable("the journal has stopped".into());
        guard
            .as_ref()
            .ok_or_else(stopped)?
            .send(Job { work, reply })
            .map_err(|_| stopped().into())
    }

    fn wait(&self, work: Work) -> Result<Done, JournalError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(work, Reply::Blocking(tx))?;
        rx.recv()
            .map_err(|_| AuditError::Unusable("the journal has stopped".into()))?
    }

    async fn wait_async(&self, work: Work) -> Result<Done, JournalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(work, Reply::Async(tx))?;
        rx.await
            .map_err(|_| AuditError::Unusable("the journal has stopped".into()))?
    }

    /// Appends a plain audit entry; returns it once it is durable.
    pub fn audit(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        if !event.detail.is_object() {
            return Err(AuditError::DetailNotObject);
        }
        match self.wait(Work::Audit(event)) {
            Ok(Done::Entry(record)) => Ok(record),
            Ok(Done::Change(..)) => Err(AuditError::Encode("unexpected journal answer".into())),
            Err(JournalError::Audit(e)) => Err(e),
            Err(JournalError::Ledger(e)) => Err(AuditError::Unusable(e.to_string())),
        }
    }

    /// [`Journal::audit`] for async callers: the task waits, no thread.
    pub async fn audit_async(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        if !event.detail.is_object() {
            return Err(AuditError::DetailNotObject);
        }
        match self.wait_async(Work::Audit(event)).await {
            Ok(Done::Entry(record)) => Ok(record),
            Ok(Done::Change(..)) => Err(AuditError::Encode("unexpected journal answer".into())),
            Err(JournalError::Audit(e)) => Err(e),
            Err(JournalError::Ledger(e)) => Err(AuditError::Unusable(e.to_string())),
        }
    }

    /// Records a ledger change with its audit entry (`event`: kind, actor
    /// and free-text detail; the ledger fields are filled in here). Returns
    /// once the entry is durable and the index shows the change; a change
    /// that does not apply is answered without an entry.
    pub fn change(&self, change: Change, event: AuditEvent) -> Result<Done, JournalError> {
        if !event.detail.is_object() {
            return Err(AuditError::DetailNotObject.into());
        }
        self.wait(Work::Change(Box::new(change), event))
    }

    /// [`Journal::change`] for async callers: the task waits, no thread.
    pub async fn change_async(
        &self,
        change: Change,
        event: AuditEvent,
    ) -> Result<Done, JournalError> {
        if !event.detail.is_object() {
            return Err(AuditError::DetailNotObject.into());
        }
        self.wait_async(Work::Change(Box::new(change), event)).await
    }

    /// Appends `event` as the journal's last entry, then closes it: the
    /// submissions queued before are written first, any after are refused.
    pub fn finish(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        if !event.detail.is_object() {
            return Err(AuditError::DetailNotObject);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
            let stopped = || AuditError::Unusable("the journal has stopped".into());
            let sender = guard.take().ok_or_else(stopped)?;
            sender
                .send(Job {
                    work: Work::Audit(event),
                    reply: Reply::Blocking(tx),
                })
                .map_err(|_| stopped())?;
            // Dropping the last sender here ends the writer after this job.
        }
        let answer = rx
            .recv()
            .map_err(|_| AuditError::Unusable("the journal has stopped".into()));
        self.close();
        match answer? {
            Ok(Done::Entry(record)) => Ok(record),
            Ok(Done::Change(..)) => Err(AuditError::Encode("unexpected journal answer".into())),
            Err(JournalError::Audit(e)) => Err(e),
            Err(JournalError::Ledger(e)) => Err(AuditError::Unusable(e.to_string())),
        }
    }

    /// Stops the writer after the submissions already queued and commits
    /// the index durably, so the next start replays nothing.
    pub fn close(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's state: the file, the chain, and the index.
struct Writer {
    clock: Arc<dyn Clock>,
    file: File,
    path: PathBuf,
    seq: u64,
    hash: String,
    /// Length of the file up to the last complete entry.
    len: u64,
    /// Why appends are refused (a sync failed: the tail is unknown).
    failed: Option<String>,
    index: Arc<Index>,
    /// Why ledger changes are refused until the index is reopened.
    index_failed: Option<String>,
    last_reopen: Option<Instant>,
    /// `seq` of the last durable index commit.
    checkpoint_seq: u64,
    checkpoint_at: Instant,
    last_seq: Arc<AtomicU64>,
    /// For [`Journal::last_entry`].
    last: Arc<Mutex<(u64, String)>>,
    /// `checkpoint_seq`, for [`Journal::durable_seq`].
    durable_seq: Arc<AtomicU64>,
    /// [`Journal::commit_latency`].
    commit_latency: crate::metrics::Histogram,
}

/// A submission of a round, with what it came to so far.
struct Pending {
    reply: Reply,
    /// `None`: the entry is written in this round; its record is `entry`.
    outcome: Option<Result<Done, JournalError>>,
    applied: Option<Applied>,
    entry: Option<AuditRecord>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            // Idle with rounds not yet durable in the index: make them so
            // after CHECKPOINT_INTERVAL, so that a crash while idle reopens
            // the index at once (a durable commit also saves redb's
            // allocator state) and replays nothing.
            let first = if self.index_failed.is_none() && self.checkpoint_seq < self.seq {
                match rx.recv_timeout(CHECKPOINT_INTERVAL) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.durable_checkpoint() {
                            self.fail_index(&e);
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_ROUND {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.round(jobs);
        }
        // The channel is closed: make the index durable where it stands.
        if self.index_failed.is_none() && self.checkpoint_seq < self.seq {
            if let Err(e) = self.durable_checkpoint() {
                tracing::warn!(error = %e, "cannot commit the index at shutdown; the next start replays the journal's tail");
            }
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.seq,
            hash: self.hash.clone(),
            offset: self.len,
        }
    }

    fn durable_checkpoint(&mut self) -> Result<(), LedgerError> {
        let mut w = self.index.write()?;
        w.set_checkpoint(&self.checkpoint())?;
        w.commit(true)?;
        self.checkpoint_seq = self.seq;
        self.durable_seq.store(self.seq, Ordering::Release);
        self.checkpoint_at = Instant::now();
        Ok(())
    }

    /// Reopens a failed index and applies the journal to it again, at most
    /// every [`REOPEN_INTERVAL`] and only once the disk has room.
    fn heal_index(&mut self) {
        if self.index_failed.is_none()
            || self
                .last_reopen
                .is_some_and(|t| t.elapsed() < REOPEN_INTERVAL)
        {
            return;
        }
        self.last_reopen = Some(Instant::now());
        let dir = self
            .index
            .path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let room = rustix::fs::statvfs(&dir)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .unwrap_or(0);
        if room < REOPEN_MIN_FREE {
            return;
        }
        let healed = self.index.reopen(DRAIN_LIMIT).and_then(|()| {
            replay(&self.index, &self.path, self.len, self.seq, None).map_err(|e| match e {
                JournalError::Ledger(l) => l,
                JournalError::Audit(a) => LedgerError::Storage(a.to_string()),
            })
        });
        match healed {
            Ok(n) => {
                tracing::warn!(
                    replayed = n,
                    "reopened the ledger index after a storage failure"
                );
                self.index_failed = None;
                self.checkpoint_seq = self.seq;
                self.durable_seq.store(self.seq, Ordering::Release);
                self.checkpoint_at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "the ledger index is still unavailable");
            }
        }
    }

    fn next_record(&mut self, event: AuditEvent) -> Result<(AuditRecord, Vec<u8>), AuditError> {
        let mut record = AuditRecord {
            seq: self.seq + 1,
            time: clock::rfc3339_micros(self.clock.now())
                .map_err(|e| AuditError::Encode(e.to_string()))?,
            kind: event.kind,
            actor: event.actor,
            certifier: event.certifier,
            detail: event.detail,
            prev: self.hash.clone(),
            hash: String::new(),
        };
        record.hash = record.compute_hash()?;
        let mut line =
            serde_json::to_vec(&record).map_err(|e| AuditError::Encode(e.to_string()))?;
        line.push(b'\n');
        self.seq = record.seq;
        self.hash.clone_from(&record.hash);
        Ok((record, line))
    }

    fn round(&mut self, jobs: Vec<Job>) {
        if let Some(why) = &self.failed {
            for job in jobs {
                job.reply
                    .send(Err(AuditError::Unusable(why.clone()).into()));
            }
            return;
        }
        self.heal_index();
        let has_changes = jobs.iter().any(|j| matches!(j.work, Work::Change(..)));
        let mut write = match (&self.index_failed, has_changes) {
            (None, true) => match self.index.write() {
                Ok(w) => Some(w),
                Err(e) => {
                    self.fail_index(&e);
                    None
                }
            },
            _ => None,
        };
        let (seq0, hash0) = (self.seq, self.hash.clone());
        let mut lines = Vec::new();
        let mut pending: Vec<Pending> = Vec::with_capacity(jobs.len());
        let mut retry = None;
        let mut queue = jobs.into_iter();
        for job in queue.by_ref() {
            match job.work {
                Work::Audit(event) => match self.next_record(event) {
                    Ok((record, line)) => {
                        lines.extend_from_slice(&line);
                        pending.push(Pending {
                            reply: job.reply,
                            outcome: None,
                            applied: None,
                            entry: Some(record),
                        });
                    }
                    Err(e) => pending.push(Pending {
                        reply: job.reply,
                        outcome: Some(Err(e.into())),
                        applied: None,
                        entry: None,
                    }),
                },
                Work::Change(change, event) => {
                    let Some(w) = write.as_mut() else {
                        let why = self
                            .index_failed
                            .clone()
                            .unwrap_or_else(|| "the ledger index is unavailable".into());
                        pending.push(Pending {
                            reply: job.reply,
                            outcome: Some(Err(LedgerError::Storage(why).into())),
                            applied: None,
                            entry: None,
                        });
                        continue;
                    };
                    match w.apply(&change) {
                        Err(e) => {
                            // The round's index transaction is unusable:
                            // start the round again with the index marked
                            // failed (nothing is written yet).
                            self.fail_index(&e);
                            retry = Some(Job {
                                work: Work::Change(change, event),
                                reply: job.reply,
                            });
                            break;
                        }
                        Ok(applied) if applied.changed() => {
                            let event = ledger_event(&change, &applied, event);
                            match self.next_record(event) {
                                Ok((record, line)) => {
                                    lines.extend_from_slice(&line);
                                    pending.push(Pending {
                                        reply: job.reply,
                                        outcome: None,
                                        applied: Some(applied),
                                        entry: Some(record),
                                    });
                                }
                                Err(e) => {
                                    // The change is in the transaction but
                                    // cannot be journaled: drop the round's
                                    // index changes, answer the rest again.
                                    self.fail_index(&LedgerError::Corrupt(e.to_string()));
                                    job.reply.send(Err(e.into()));
                                    retry = None;
                                    let _ = change;
                                    break;
                                }
                            }
                        }
                        Ok(applied) => pending.push(Pending {
                            reply: job.reply,
                            outcome: Some(Ok(Done::Change(applied, None))),
                            applied: None,
                            entry: None,
                        }),
                    }
                }
            }
        }
        if write.is_some() && self.index_failed.is_some() {
            // Rare: the index failed in the middle of a round. Nothing was
            // written; undo the chain, answer what was staged with the
            // failure, and take the rest again without the index.
            self.seq = seq0;
            self.hash = hash0;
            if let Some(w) = write.take() {
                let _ = w.abort();
            }
            let mut again = Vec::new();
            for p in pending {
                if let Some(outcome) = p.outcome {
                    p.reply.send(outcome);
                } else {
                    p.reply.send(Err(LedgerError::Storage(
                        self.index_failed.clone().unwrap_or_default(),
                    )
                    .into()));
                }
            }
            again.extend(retry);
            again.extend(queue);
            if !again.is_empty() {
                self.round(again);
            }
            return;
        }
        if lines.is_empty() {
            if let Some(w) = write {
                let _ = w.abort();
            }
            for p in pending {
                p.reply.send(p.outcome.unwrap_or_else(|| {
                    Err(AuditError::Encode("nothing was written".into()).into())
                }));
            }
            return;
        }
        // One write per round: a crash leaves at worst one torn line at
        // the end, which `open` cuts off.
        let commit_started = Instant::now();
        if let Err(error) = self.file.write_all(&lines) {
            if let Err(truncate) = self.file.set_len(self.len) {
                self.failed = Some(format!(
                    "a failed write ({error}) left partial entries that could not be removed ({truncate})"
                ));
            }
            self.seq = seq0;
            self.hash = hash0;
            if let Some(w) = write {
                let _ = w.abort();
            }
            let message = error.to_string();
            let kind = error.kind();
            for p in pending {
                p.reply.send(p.outcome.unwrap_or_else(|| {
                    Err(AuditError::Write(io::Error::new(kind, message.clone())).into())
                }));
            }
            return;
        }
        if let Err(error) = self.file.sync_data() {
            // After a failed fsync the kernel may have dropped our pages;
            // nothing more may be chained onto entries that may be lost.
            let error = Arc::new(error);
            self.failed = Some(format!("sync failed: {error}"));
            if let Some(w) = write {
                let _ = w.abort();
            }
            for p in pending {
                p.reply.send(
                    p.outcome
                        .unwrap_or_else(|| Err(AuditError::Sync(error.clone()).into())),
                );
            }
            return;
        }
        self.commit_latency
            .observe(commit_started.elapsed().as_secs_f64());
        self.len += lines.len() as u64;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = (self.seq, self.hash.clone());
        self.last_seq.store(self.seq, Ordering::Release);
        // The entries are durable. The index shows them once committed.
        let index_error = match write {
            Some(mut w) => {
                let due = self.seq - self.checkpoint_seq >= CHECKPOINT_ENTRIES
                    || self.checkpoint_at.elapsed() >= CHECKPOINT_INTERVAL;
                let committed = w
                    .set_checkpoint(&self.checkpoint())
                    .and_then(|()| w.commit(due));
                match committed {
                    Ok(()) => {
                        if due {
                            self.checkpoint_seq = self.seq;
                            self.durable_seq.store(self.seq, Ordering::Release);
                            self.checkpoint_at = Instant::now();
                        }
                        None
                    }
                    Err(e) => {
                        self.fail_index(&e);
                        Some(e.to_string())
                    }
                }
            }
            None => None,
        };
        for p in pending {
            let result = match (p.outcome, p.entry, p.applied) {
                (Some(outcome), _, _) => outcome,
                (None, Some(entry), None) => Ok(Done::Entry(entry)),
                (None, Some(entry), Some(applied)) => match &index_error {
                    None => Ok(Done::Change(applied, Some(entry))),
                    // Durable in the journal; the index gets it when it is
                    // back. Until then the change is not visible, so the
                    // caller must not answer as if it were.
                    Some(why) => Err(LedgerError::Storage(format!(
                        "{why}; the change is in the journal and reaches the ledger index when it is back"
                    ))
                    .into()),
                },
                (None, None, _) => Err(AuditError::Encode("lost a submission".into()).into()),
            };
            p.reply.send(result);
        }
    }

    fn fail_index(&mut self, e: &LedgerError) {
        if self.index_failed.is_none() {
            tracing::error!(error = %e, "ledger index failed; it is reopened and caught up from the journal once it can be");
        }
        let cause = e.to_string();
        self.index_failed = Some(cause);
        self.last_reopen = Some(Instant::now());
    }
}

/// The entry of a ledger change: the caller's event (kind, actor, free
/// text) with the change's own fields set in `detail`, which replay reads.
fn ledger_event(change: &Change, applied: &Applied, event: AuditEvent) -> AuditEvent {
    let AuditEvent {
        kind,
        actor,
        certifier,
        detail,
    } = event;
    let mut fields = match detail {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let (kind, certifier) = match change {
        Change::Intent {
            serial,
            intent,
            claim,
        } => {
            fields.insert("serial".into(), json!(serial.to_hex()));
            fields.insert("ra".into(), json!(intent.ra));
            fields.insert("request_id".into(), json!(intent.request_id));
            fields.insert(
                "body_sha256".into(),
                json!(claim.as_ref().map(|c| hex::encode(c.body_sha256))),
            );
            fields.insert("tbs_sha256".into(), json!(hex::encode(intent.tbs_sha256)));
            fields.insert("profile".into(), json!(intent.profile));
            fields.insert("created".into(), json!(intent.created));
            if let Some(a) = &intent.approval {
                fields.insert("approval".into(), a.clone());
            }
            if !intent.instance.is_empty() {
                fields.insert("instance".into(), json!(intent.instance));
            }
            if let Some(spki) = &intent.spki_sha256 {
                fields.insert("spki_sha256".into(), json!(hex::encode(spki)));
            }
            (KIND_INTENT.to_string(), Some(intent.certifier.clone()))
        }
        Change::Issued {
            serial,
            der,
            not_after,
            at,
        } => {
            fields.insert("serial".into(), json!(serial.to_hex()));
            fields.insert(
                "certificate".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(der)),
            );
            fields.insert("not_after".into(), json!(clock::rfc3339(*not_after)));
            fields.insert("issued_at".into(), json!(at));
            (KIND_ISSUED.to_string(), certifier)
        }
        Change::Abandoned { serial, reason } => {
            fields.insert("serial".into(), json!(serial.to_hex()));
            fields.insert("reason".into(), json!(reason));
            let kind = if kind == KIND_ABANDONED {
                KIND_ABANDONED
            } else {
                KIND_FAILED
            };
            (kind.to_string(), certifier)
        }
        Change::Revoked {
            serial,
            reason,
            at,
            by: _,
        } => {
            fields.insert("serial".into(), json!(serial.to_hex()));
            fields.insert(
                "reason".into(),
                json!(certd_api::reason_name(*reason).unwrap_or("unspecified")),
            );
            fields.insert("reason_code".into(), json!(reason));
            fields.insert("revoked_at".into(), json!(clock::rfc3339(*at)));
            fields.insert("at".into(), json!(at));
            (KIND_REVOKED.to_string(), certifier)
        }
        Change::CrlNumber { certifier } => {
            if let Applied::Crl(n) = applied {
                fields.insert("crl_number".into(), json!(n));
            }
            (KIND_CRL_NUMBER.to_string(), Some(certifier.clone()))
        }
    };
    let actor = match change {
        Change::Revoked { by, .. } => by.clone(),
        _ => actor,
    };
    AuditEvent {
        kind,
        actor,
        certifier,
        detail: Value::Object(fields),
    }
}

fn field<'a>(record: &'a AuditRecord, name: &str) -> Result<&'a Value, LedgerError> {
    record.detail.get(name).ok_or_else(|| {
        LedgerError::Corrupt(format!(
            "journal entry {} ({}) lacks {name}",
            record.seq, record.kind
        ))
    })
}

fn text<'a>(record: &'a AuditRecord, name: &str) -> Result<&'a str, LedgerError> {
    field(record, name)?.as_str().ok_or_else(|| {
        LedgerError::Corrupt(format!(
            "journal entry {} ({}): {name} is not text",
            record.seq, record.kind
        ))
    })
}

fn int(record: &AuditRecord, name: &str) -> Result<i64, LedgerError> {
    field(record, name)?.as_i64().ok_or_else(|| {
        LedgerError::Corrupt(format!(
            "journal entry {} ({}): {name} is not an integer",
            record.seq, record.kind
        ))
    })
}

fn hash32(record: &AuditRecord, name: &str) -> Result<[u8; 32], LedgerError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text(record, name)?, &mut out).map_err(|_| {
        LedgerError::Corrupt(format!(
            "journal entry {} ({}): {name} is not a SHA-256",
            record.seq, record.kind
        ))
    })?;
    Ok(out)
}

fn serial_field(record: &AuditRecord) -> Result<Serial, LedgerError> {
    Serial::from_hex(text(record, "serial")?).map_err(|e| {
        LedgerError::Corrupt(format!(
            "journal entry {} ({}): {e}",
            record.seq, record.kind
        ))
    })
}

fn certifier_of(record: &AuditRecord) -> Result<String, LedgerError> {
    record.certifier.clone().ok_or_else(|| {
        LedgerError::Corrupt(format!(
            "journal entry {} ({}) names no certifier",
            record.seq, record.kind
        ))
    })
}

/// The ledger change a journal entry records, if any: what replay applies.
pub fn change_of(record: &AuditRecord) -> Result<Option<Change>, LedgerError> {
    let change = match record.kind.as_str() {
        KIND_INTENT => {
            let request_id = match field(record, "request_id")? {
                Value::Null => None,
                v => Some(
                    v.as_str()
                        .ok_or_else(|| {
                            LedgerError::Corrupt(format!(
                                "journal entry {}: request_id",
                                record.seq
                            ))
                        })?
                        .to_string(),
                ),
            };
            let ra = text(record, "ra")?.to_string();
            let claim = match (request_id.as_ref(), record.detail.get("body_sha256")) {
                (Some(id), Some(Value::String(_))) => Some(Claim {
                    ra: ra.clone(),
                    request_id: id.clone(),
                    body_sha256: hash32(record, "body_sha256")?,
                }),
                _ => None,
            };
            Change::Intent {
                serial: serial_field(record)?,
                intent: Intent {
                    certifier: certifier_of(record)?,
                    ra,
                    request_id,
                    tbs_sha256: hash32(record, "tbs_sha256")?,
                    profile: text(record, "profile")?.to_string(),
                    created: int(record, "created")?,
                    approval: record.detail.get("approval").cloned(),
                    instance: text(record, "instance")
                        .map(str::to_string)
                        .unwrap_or_default(),
                    spki_sha256: match record.detail.get("spki_sha256") {
                        Some(Value::String(_)) => Some(hash32(record, "spki_sha256")?),
                        _ => None,
                    },
                },
                claim,
            }
        }
        KIND_ISSUED => {
            let der = base64::engine::general_purpose::STANDARD
                .decode(text(record, "certificate")?)
                .map_err(|e| {
                    LedgerError::Corrupt(format!("journal entry {}: certificate: {e}", record.seq))
                })?;
            let not_after = time::OffsetDateTime::parse(
                text(record, "not_after")?,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|e| {
                LedgerError::Corrupt(format!("journal entry {}: not_after: {e}", record.seq))
            })?
            .unix_timestamp();
            Change::Issued {
                serial: serial_field(record)?,
                der,
                not_after,
                at: int(record, "issued_at")?,
            }
        }
        KIND_FAILED | KIND_ABANDONED => Change::Abandoned {
            serial: serial_field(record)?,
            reason: text(record, "reason")?.to_string(),
        },
        KIND_REVOKED => Change::Revoked {
            serial: serial_field(record)?,
            reason: u8::try_from(int(record, "reason_code")?).map_err(|_| {
                LedgerError::Corrupt(format!("journal entry {}: reason_code", record.seq))
            })?,
            at: int(record, "at")?,
            by: record.actor.clone(),
        },
        KIND_CRL_NUMBER => Change::CrlNumber {
            certifier: certifier_of(record)?,
        },
        _ => return Ok(None),
    };
    Ok(Some(change))
}

/// What moving an earlier certd's ledger to the index did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Records moved (every serial ever handed out).
    pub records: u64,
    /// Idempotency keys moved.
    pub idempotency_keys: u64,
    /// Certifiers whose counters and CRL numbers moved.
    pub certifiers: Vec<String>,
    /// The journal entry the new index starts after.
    pub checkpoint_seq: u64,
    /// Where the earlier ledger was kept, renamed.
    pub kept_at: PathBuf,
}

/// Moves the ledger of an earlier certd (a sled database at `legacy`) into
/// a new index at `index_path`, which starts at the end of the journal at
/// `journal`: the earlier certd kept its ledger and its audit log in step,
/// so with it stopped, everything the log says is in the ledger. Records,
/// certificates, revocations, idempotency keys, counters and the CRL
/// numbers of `certifiers` (and of every certifier a record names) move;
/// the earlier directory is kept, renamed to `<legacy>.migrated`. The index
/// is built beside its final name and renamed into place last, so an
/// interrupted migration leaves nothing half-made in the way of a retry.
pub fn migrate_from_sled(
    legacy: &Path,
    index_path: &Path,
    journal: &Path,
    certifiers: &[String],
    clock: Arc<dyn Clock>,
) -> Result<Migrated, JournalError> {
    use crate::ledger::LegacyLedger as _;
    if index_path.exists() {
        return Err(LedgerError::Corrupt(format!(
            "{} exists already: the ledger was migrated before",
            index_path.display()
        ))
        .into());
    }
    let old = crate::ledger::SledLedger::open(legacy, clock)?;
    // Where the journal stands: its complete entries (a torn tail is cut
    // when the journal is next opened, after this point).
    let file = File::open(journal).map_err(open_error(journal))?;
    let len = file.metadata().map_err(open_error(journal))?.len();
    let end = audit::complete_len(&file, len).map_err(open_error(journal))?;
    let (seq, hash) = match audit::last_entry(&file, end).map_err(open_error(journal))? {
        Some(record) => (record.seq, record.hash),
        None => (0, GENESIS_PREV.to_owned()),
    };
    let building = index_path.with_extension("redb.migrating");
    let _ = std::fs::remove_file(&building);
    let index = Index::open(&building)?;
    let mut w = index.write()?;
    let mut names: std::collections::BTreeSet<String> = certifiers.iter().cloned().collect();
    let mut records = 0u64;
    let mut failure = None;
    old.visit_records(None, &mut |serial, record| {
        names.insert(record.intent.certifier.clone());
        match w.import_record(&serial, &record) {
            Ok(()) => {
                records += 1;
                std::ops::ControlFlow::Continue(())
            }
            Err(e) => {
                failure = Some(e);
                std::ops::ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let mut keys = 0u64;
    let mut failure = None;
    old.visit_idempotency(&mut |ra, request_id, entry| {
        if failure.is_none() {
            match w.import_idempotency(ra, request_id, &entry) {
                Ok(()) => keys += 1,
                Err(e) => failure = Some(e),
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    for name in &names {
        w.import_stats(name, &old.stats(name)?)?;
        if let Some(n) = old.current_crl_number(name)? {
            w.import_crl_number(name, n)?;
        }
    }
    w.set_checkpoint(&Checkpoint {
        seq,
        hash,
        offset: end,
    })?;
    w.commit(true)?;
    drop(index);
    drop(old);
    let io_error = |what: &str, e: io::Error| LedgerError::Storage(format!("{what}: {e}"));
    std::fs::rename(&building, index_path).map_err(|e| io_error("placing the new index", e))?;
    let kept_at = legacy.with_extension("migrated");
    std::fs::rename(legacy, &kept_at).map_err(|e| io_error("keeping the earlier ledger", e))?;
    if let Some(dir) = index_path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing the state directory", e))?;
    }
    Ok(Migrated {
        records,
        idempotency_keys: keys,
        certifiers: names.into_iter().collect(),
        checkpoint_seq: seq,
        kept_at,
    })
}

/// Applies the journal's entries after the index's checkpoint, up to
/// `end` (the length of its complete entries), whose last entry is
/// `last_seq`. Returns how many entries were applied.
fn replay(
    index: &Index,
    path: &Path,
    end: u64,
    last_seq: u64,
    check: Option<IssuedCheck<'_>>,
) -> Result<u64, JournalError> {
    let checkpoint = index.checkpoint()?;
    if checkpoint.seq == last_seq && checkpoint.offset == end {
        return Ok(0);
    }
    let behind = |what: String| {
        LedgerError::Corrupt(format!(
            "the ledger index ({}) and the journal ({}) disagree: {what}; restore both from \
             the same backup, or rebuild the index from the journal (certd rebuild-index)",
            index.path().display(),
            path.display()
        ))
    };
    if checkpoint.offset > end || checkpoint.seq > last_seq {
        return Err(behind(format!(
            "the index reflects entry {} at byte {}, the journal ends at entry {last_seq}, byte {end}",
            checkpoint.seq, checkpoint.offset
        ))
        .into());
    }
    let read_error = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    file.seek(SeekFrom::Start(checkpoint.offset))
        .map_err(read_error)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut prev = if checkpoint.seq == 0 {
        GENESIS_PREV.to_string()
    } else {
        checkpoint.hash.clone()
    };
    let mut offset = checkpoint.offset;
    let mut seq = checkpoint.seq;
    let mut applied = 0u64;
    let mut write: Option<IndexWrite> = None;
    let mut in_batch = 0u64;
    let mut line = Vec::new();
    while offset < end {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(read_error)?;
        if n == 0 {
            break;
        }
        let record: AuditRecord = serde_json::from_slice(&line).map_err(|e| {
            behind(format!(
                "the line at byte {offset} is not an entry ({e}); run certd verify-audit"
            ))
        })?;
        if record.seq != seq + 1 || record.prev != prev {
            return Err(behind(format!(
                "entry {} at byte {offset} does not continue entry {seq}",
                record.seq
            ))
            .into());
        }
        if let Some(change) = change_of(&record)? {
            // A certificate restored from the journal is the certifier's,
            // or certd does not start on it.
            if let (Some(check), Change::Issued { serial, der, .. }) = (check, &change) {
                let certifier = record.certifier.as_deref().unwrap_or_default();
                check(certifier, der).map_err(|why| {
                    LedgerError::Corrupt(format!(
                        "journal entry {} carries certificate {serial} that certifier {certifier:?} did not sign ({why}): \
                         the audit log was tampered with; run certd verify-audit and restore the state directory from backup",
                        record.seq
                    ))
                })?;
            }
            let w = match write.as_mut() {
                Some(w) => w,
                None => write.insert(index.write()?),
            };
            let outcome = w.apply(&change)?;
            if !outcome.changed() {
                return Err(behind(format!(
                    "entry {} ({}) does not apply to the index: {outcome:?}",
                    record.seq, record.kind
                ))
                .into());
            }
            in_batch += 1;
        }
        offset += n as u64;
        seq = record.seq;
        prev = record.hash;
        applied += 1;
        if in_batch >= REPLAY_BATCH {
            if let Some(mut w) = write.take() {
                w.set_checkpoint(&Checkpoint {
                    seq,
                    hash: prev.clone(),
                    offset,
                })?;
                w.commit(true)?;
            }
            in_batch = 0;
        }
    }
    if seq != last_seq {
        return Err(behind(format!(
            "the journal's entries end at {seq}, not {last_seq}"
        ))
        .into());
    }
    let mut w = match write.take() {
        Some(w) => w,
        None => index.write()?,
    };
    w.set_checkpoint(&Checkpoint {
        seq,
        hash: prev,
        offset,
    })?;
    w.commit(true)?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{IntentOutcome, RecordState, SERIAL_LEN};
    use std::ops::ControlFlow;

    fn serial(n: u8) -> Serial {
        let mut b = [0x21; SERIAL_LEN];
        b[SERIAL_LEN - 1] = n;
        Serial::from_bytes(b).expect("a serial")
    }

    fn intent(ra: &str, request_id: Option<&str>) -> Intent {
        Intent {
            certifier: "ca".into(),
            ra: ra.into(),
            request_id: request_id.map(str::to_string),
            tbs_sha256: [7; 32],
            profile: "tls-server".into(),
            created: 1_800_000_000,
            approval: None,
            instance: String::new(),
            spki_sha256: None,
        }
    }

    fn claim(ra: &str, id: &str, body: u8) -> Option<Claim> {
        Some(Claim {
            ra: ra.into(),
            request_id: id.into(),
            body_sha256: [body; 32],
        })
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
        fn log(&self) -> PathBuf {
            self.dir.path().join("audit.log")
        }
        fn open(&self) -> (Journal, Opened) {
            Journal::open(
                &self.log(),
                &self.dir.path().join("index.redb"),
                Arc::new(crate::clock::SystemClock),
            )
            .expect("open")
        }
    }

    fn change(j: &Journal, c: Change, kind: &str, actor: &str) -> Applied {
        match j.change(c, AuditEvent::new(kind, actor)).expect("journal") {
            Done::Change(applied, _) => applied,
            other => panic!("{other:?}"),
        }
    }

    /// A certificate certd could have made: any DER works for the index,
    /// but the summary is read from a real one.
    fn der() -> Vec<u8> {
        static DER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        DER.get_or_init(crate::testing::certificate_der).clone()
    }

    fn issue(j: &Journal, s: Serial, ra: &str, id: &str) {
        let a = change(
            j,
            Change::Intent {
                serial: s,
                intent: intent(ra, Some(id)),
                claim: claim(ra, id, 1),
            },
            KIND_INTENT,
            ra,
        );
        assert!(
            matches!(a, Applied::Intent(IntentOutcome::Recorded)),
            "{a:?}"
        );
        // As the pipeline records it: with the certifier.
        let done = j
            .change(
                Change::Issued {
                    serial: s,
                    der: der(),
                    not_after: 1_900_000_000,
                    at: 1_800_000_001,
                },
                AuditEvent::new(KIND_ISSUED, ra).certifier("ca"),
            )
            .expect("journal");
        assert!(matches!(done, Done::Change(Applied::Done, _)), "{done:?}");
    }

    /// Rounds commit the index without a sync; once the journal goes idle
    /// it commits durably, so a power loss while idle replays nothing.
    #[test]
    fn an_idle_journal_makes_its_index_durable() {
        let f = Fixture::new();
        let (j, _) = f.open();
        // The first rounds of a fresh writer are within CHECKPOINT_INTERVAL
        // of its start, so not durable when they are answered.
        issue(&j, serial(1), "ra-a", "r1");
        let written = j.last_seq();
        assert_eq!(written, 2);
        // Then nothing is submitted: the writer commits on its own (the
        // bound only catches a hang).
        let deadline = Instant::now() + Duration::from_secs(60);
        while j.durable_seq() < written {
            assert!(
                Instant::now() < deadline,
                "the idle journal never committed durably"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(j.durable_seq(), written);
        assert_eq!(j.last_seq(), written, "the durable commit writes no entry");
    }

    #[test]
    fn changes_are_journaled_and_shown_by_the_index() {
        let f = Fixture::new();
        let (j, _) = f.open();
        issue(&j, serial(1), "ra-a", "r1");
        j.audit(AuditEvent::new("refused", "ra-b")).expect("audit");
        let a = change(
            &j,
            Change::Revoked {
                serial: serial(1),
                reason: 1,
                at: 1_800_000_100,
                by: "ra-a".into(),
            },
            KIND_REVOKED,
            "ra-a",
        );
        assert!(matches!(a, Applied::Done));
        let crl = change(
            &j,
            Change::CrlNumber {
                certifier: "ca".into(),
            },
            "",
            "certd",
        );
        assert!(matches!(crl, Applied::Crl(1)), "{crl:?}");
        let record = j.index().get(&serial(1)).expect("get").expect("record");
        assert_eq!(record.state, RecordState::Revoked);
        assert_eq!(record.certificate_der, Some(der()));
        assert_eq!(record.revoked_by.as_deref(), Some("ra-a"));
        assert!(record.summary.is_some_and(|s| !s.subject.is_empty()));
        let stats = j.index().stats("ca").expect("stats");
        assert_eq!((stats.issued, stats.revoked), (1, 1));
        assert_eq!(j.index().current_crl_number("ca").expect("crl"), Some(1));
        let mut revoked = Vec::new();
        j.index()
            .visit_revoked("ca", &mut |e| revoked.push(e.serial))
            .expect("revoked");
        assert_eq!(revoked, vec![serial(1)]);
        assert!(j.index().pending_intents().expect("pending").is_empty());
        // Five entries, one chain.
        assert_eq!(j.last_seq(), 5);
        drop(j);
        let report = audit::verify(&f.log()).expect("verify");
        assert!(report.is_ok() && report.entries == 5, "{report:?}");
    }

    #[test]
    fn refusals_write_no_entry_and_change_nothing() {
        let f = Fixture::new();
        let (j, _) = f.open();
        issue(&j, serial(1), "ra-a", "r1");
        let before = j.last_seq();
        // The same serial again.
        let a = change(
            &j,
            Change::Intent {
                serial: serial(1),
                intent: intent("ra-a", None),
                claim: None,
            },
            KIND_INTENT,
            "ra-a",
        );
        assert!(matches!(a, Applied::Intent(IntentOutcome::SerialTaken)));
        // The same request id, another serial: the earlier claim stands.
        let a = change(
            &j,
            Change::Intent {
                serial: serial(2),
                intent: intent("ra-a", Some("r1")),
                claim: claim("ra-a", "r1", 2),
            },
            KIND_INTENT,
            "ra-a",
        );
        match a {
            Applied::Intent(IntentOutcome::KeyTaken(e)) => assert_eq!(e.serial, serial(1)),
            other => panic!("{other:?}"),
        }
        // Wrong state, unknown serial.
        assert!(matches!(
            change(
                &j,
                Change::Abandoned {
                    serial: serial(1),
                    reason: "x".into()
                },
                KIND_FAILED,
                "ra-a"
            ),
            Applied::Refused(LedgerError::InvalidState { .. })
        ));
        assert!(matches!(
            change(
                &j,
                Change::Revoked {
                    serial: serial(9),
                    reason: 0,
                    at: 1,
                    by: "ra-a".into()
                },
                KIND_REVOKED,
                "ra-a"
            ),
            Applied::Refused(LedgerError::NotFound(_))
        ));
        assert_eq!(j.last_seq(), before, "no entry for a refusal");
        assert!(j.index().get(&serial(2)).expect("get").is_none());
    }

    #[test]
    fn an_abandoned_serials_key_is_taken_over() {
        let f = Fixture::new();
        let (j, _) = f.open();
        let first = Change::Intent {
            serial: serial(1),
            intent: intent("ra-a", Some("r1")),
            claim: claim("ra-a", "r1", 1),
        };
        assert!(matches!(
            change(&j, first, KIND_INTENT, "ra-a"),
            Applied::Intent(IntentOutcome::Recorded)
        ));
        assert!(matches!(
            change(
                &j,
                Change::Abandoned {
                    serial: serial(1),
                    reason: "token away".into()
                },
                KIND_FAILED,
                "ra-a"
            ),
            Applied::Done
        ));
        let again = Change::Intent {
            serial: serial(2),
            intent: intent("ra-a", Some("r1")),
            claim: claim("ra-a", "r1", 1),
        };
        assert!(matches!(
            change(&j, again, KIND_INTENT, "ra-a"),
            Applied::Intent(IntentOutcome::Recorded)
        ));
        assert_eq!(
            j.index()
                .idempotency_get("ra-a", "r1")
                .expect("idem")
                .map(|e| e.serial),
            Some(serial(2))
        );
    }

    /// A certificate the replay restores is checked first: one its
    /// certifier did not sign stops the opening, naming the entry.
    #[test]
    fn a_replayed_certificate_must_be_its_certifiers() {
        let f = Fixture::new();
        let (j, _) = f.open();
        issue(&j, serial(1), "ra-a", "r1");
        // A crash: the index as it was at open (nothing of the issuance).
        let index = f.dir.path().join("index.redb");
        let crashed = f.dir.path().join("crashed.redb");
        std::fs::copy(&index, &crashed).expect("copy");
        drop(j);
        std::fs::rename(&crashed, &index).expect("restore");
        let copy = f.dir.path().join("index-copy.redb");
        std::fs::copy(&index, &copy).expect("copy");
        let refuse = |_: &str, _: &[u8]| Err("not its signature".to_string());
        let err = Journal::open_checked(
            &f.log(),
            &index,
            Arc::new(crate::clock::SystemClock),
            Some(&refuse),
        )
        .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("entry 2") && text.contains("did not sign"),
            "{text}"
        );
        // Checked and accepted: opens, the certificate restored.
        std::fs::rename(&copy, &index).expect("restore");
        let seen = std::sync::Mutex::new(Vec::new());
        let accept = |c: &str, _: &[u8]| {
            seen.lock().expect("seen").push(c.to_string());
            Ok(())
        };
        let (j, opened) = Journal::open_checked(
            &f.log(),
            &index,
            Arc::new(crate::clock::SystemClock),
            Some(&accept),
        )
        .expect("opens");
        assert!(opened.replayed >= 2);
        assert_eq!(*seen.lock().expect("seen"), ["ca"]);
        assert!(j.index().certificate(&serial(1)).expect("read").is_some());
    }

    #[test]
    fn after_a_crash_the_journal_tail_is_applied_again_exactly() {
        let f = Fixture::new();
        let (j, _) = f.open();
        for n in 1..=20 {
            issue(
                &j,
                serial(n),
                if n % 2 == 0 { "ra-a" } else { "ra-b" },
                &format!("r{n}"),
            );
        }
        let pending = Change::Intent {
            serial: serial(99),
            intent: intent("ra-a", None),
            claim: None,
        };
        change(&j, pending, KIND_INTENT, "ra-a");
        let seq = j.last_seq();
        // A crash now leaves the index file as it is on disk: at its last
        // durable commit (made at open; a second has not passed since, nor
        // 8192 entries). Copy it, close cleanly, and put the copy back.
        let index = f.dir.path().join("index.redb");
        let crashed = f.dir.path().join("crashed.redb");
        std::fs::copy(&index, &crashed).expect("copy");
        drop(j);
        std::fs::rename(&crashed, &index).expect("restore");
        let (j, opened) = f.open();
        assert_eq!(opened.replayed, seq);
        assert_eq!(j.index().stats("ca").expect("stats").issued, 20);
        assert_eq!(
            j.index()
                .pending_intents()
                .expect("pending")
                .into_iter()
                .map(|(s, _)| s)
                .collect::<Vec<_>>(),
            vec![serial(99)]
        );
        let mut mine = Vec::new();
        j.index()
            .visit_records(None, Some("ra-a"), &mut |s, _| {
                mine.push(s);
                ControlFlow::Continue(())
            })
            .expect("visit");
        assert_eq!(mine.len(), 11, "ten issued and one pending of ra-a");
        // A clean close commits: the next open replays nothing.
        drop(j);
        let (_j, opened) = f.open();
        assert_eq!(opened.replayed, 0);
    }

    #[test]
    fn nothing_is_recorded_after_the_last_entry() {
        let f = Fixture::new();
        let (j, _) = f.open();
        issue(&j, serial(1), "ra-a", "r1");
        let last = j
            .finish(AuditEvent::new("stopped", "certd"))
            .expect("finish");
        assert_eq!(last.seq, 3);
        assert!(j.audit(AuditEvent::new("late", "certd")).is_err());
        let late = Change::CrlNumber {
            certifier: "ca".into(),
        };
        assert!(j.change(late, AuditEvent::new("", "certd")).is_err());
        drop(j);
        let text = std::fs::read_to_string(f.log()).expect("log");
        assert!(text
            .lines()
            .last()
            .is_some_and(|l| l.contains("\"stopped\"")));
        let (_j, opened) = f.open();
        assert_eq!(opened.replayed, 0, "closed with a durable index");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_recorded() {
        let f = Fixture::new();
        let (j, _) = f.open();
        issue(&j, serial(1), "ra-a", "r1");
        drop(j);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(f.log())
            .expect("open");
        file.write_all(b"{\"seq\":3,\"time\":\"half")
            .expect("write");
        drop(file);
        let (j, opened) = f.open();
        assert_eq!(opened.torn_bytes, Some(21));
        assert_eq!(j.last_seq(), 3, "the recovery entry follows");
        assert_eq!(
            j.index().get(&serial(1)).expect("get").map(|r| r.state),
            Some(RecordState::Issued)
        );
        drop(j);
        assert!(audit::verify(&f.log()).expect("verify").is_ok());
    }

    #[test]
    fn an_index_ahead_of_the_journal_is_refused() {
        let f = Fixture::new();
        let (j, _) = f.open();
        issue(&j, serial(1), "ra-a", "r1");
        drop(j);
        // The journal is replaced by an older copy (say, restored alone).
        std::fs::write(f.log(), "").expect("truncate");
        let err = Journal::open(
            &f.log(),
            &f.dir.path().join("index.redb"),
            Arc::new(crate::clock::SystemClock),
        )
        .expect_err("refused");
        assert!(err.to_string().contains("disagree"), "{err}");
    }

    #[test]
    fn every_ledger_entry_reads_back_as_its_change() {
        let changes = vec![
            Change::Intent {
                serial: serial(1),
                intent: Intent {
                    approval: Some(json!({"approved_by": ["o1"]})),
                    instance: String::new(),
                    ..intent("ra-a", Some("r1"))
                },
                claim: claim("ra-a", "r1", 3),
            },
            Change::Intent {
                serial: serial(2),
                intent: intent("ra-a", None),
                claim: None,
            },
            Change::Issued {
                serial: serial(1),
                der: der(),
                not_after: 1_900_000_000,
                at: 1_800_000_001,
            },
            Change::Abandoned {
                serial: serial(2),
                reason: "token away".into(),
            },
            Change::Revoked {
                serial: serial(1),
                reason: 4,
                at: 1_800_000_009,
                by: "ra-a".into(),
            },
            Change::CrlNumber {
                certifier: "ca".into(),
            },
        ];
        for (i, c) in changes.into_iter().enumerate() {
            let applied = match &c {
                Change::CrlNumber { .. } => Applied::Crl(7),
                _ => Applied::Done,
            };
            let event = ledger_event(
                &c,
                &applied,
                AuditEvent::new("issuance_failed", "ra-a").certifier("ca"),
            );
            let record = AuditRecord {
                seq: i as u64 + 1,
                time: String::new(),
                kind: event.kind,
                actor: event.actor,
                certifier: event.certifier,
                detail: event.detail,
                prev: String::new(),
                hash: String::new(),
            };
            assert_eq!(change_of(&record).expect("parses"), Some(c));
        }
    }
}

/// Throughput of the journal alone: `cargo test --release -p certd --lib
/// journal::throughput -- --ignored --nocapture`.
#[cfg(test)]
mod throughput {
    use super::*;
    use crate::ledger::SERIAL_LEN;

    #[test]
    #[ignore = "a measurement, not a test"]
    fn intent_and_issued_pairs_per_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, _) = Journal::open(
            &dir.path().join("audit.log"),
            &dir.path().join("index.redb"),
            Arc::new(crate::clock::SystemClock),
        )
        .expect("open");
        let j = Arc::new(j);
        let der = crate::testing::certificate_der();
        let threads = 16;
        let per = 2000;
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (j, der) = (j.clone(), der.clone());
                s.spawn(move || {
                    for i in 0..per {
                        let mut b = [0u8; SERIAL_LEN];
                        b[0] = 1;
                        b[1] = t as u8;
                        b[2..6].copy_from_slice(&(i as u32).to_be_bytes());
                        let serial = Serial::from_bytes(b).expect("serial");
                        let intent = Intent {
                            certifier: "ca".into(),
                            ra: "ra".into(),
                            request_id: Some(format!("r-{t}-{i}")),
                            tbs_sha256: [1; 32],
                            profile: "tls-server".into(),
                            created: 0,
                            approval: None,
                            instance: String::new(),
                            spki_sha256: None,
                        };
                        let claim = Some(Claim {
                            ra: "ra".into(),
                            request_id: format!("r-{t}-{i}"),
                            body_sha256: [2; 32],
                        });
                        j.change(
                            Change::Intent {
                                serial,
                                intent,
                                claim,
                            },
                            AuditEvent::new(KIND_INTENT, "ra"),
                        )
                        .expect("intent");
                        j.change(
                            Change::Issued {
                                serial,
                                der: der.clone(),
                                not_after: 0,
                                at: 0,
                            },
                            AuditEvent::new(KIND_ISSUED, "ra").certifier("ca"),
                        )
                        .expect("issued");
                    }
                });
            }
        });
        let pairs = threads * per;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{pairs} intent+issued pairs in {secs:.2} s: {:.0} pairs/s",
            pairs as f64 / secs
        );
    }
}

#[cfg(test)]
mod costs {
    use super::*;

    #[test]
    #[ignore = "a measurement, not a test"]
    fn fsync_and_index_commit_costs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("f"))
            .expect("f");
        let t = Instant::now();
        for _ in 0..500 {
            f.write_all(&[b'x'; 2000]).expect("w");
            f.sync_data().expect("s");
        }
        println!(
            "write+fdatasync: {:.0} us each",
            t.elapsed().as_secs_f64() / 500.0 * 1e6
        );
        let index = Index::open(&dir.path().join("i.redb")).expect("index");
        let t = Instant::now();
        for n in 0..500u32 {
            let mut w = index.write().expect("w");
            for k in 0..8u32 {
                let mut b = [0u8; 16];
                b[0] = 1;
                b[1..5].copy_from_slice(&n.to_be_bytes());
                b[5..9].copy_from_slice(&k.to_be_bytes());
                let s = Serial::from_bytes(b).expect("s");
                w.apply(&Change::Intent {
                    serial: s,
                    intent: Intent {
                        certifier: "ca".into(),
                        ra: "ra".into(),
                        request_id: None,
                        tbs_sha256: [0; 32],
                        profile: "p".into(),
                        created: 0,
                        approval: None,
                        instance: String::new(),
                        spki_sha256: None,
                    },
                    claim: None,
                })
                .expect("apply");
            }
            w.commit(false).expect("commit");
        }
        println!(
            "index round of 8 intents, non-durable: {:.0} us each",
            t.elapsed().as_secs_f64() / 500.0 * 1e6
        );
        let t = Instant::now();
        for _ in 0..50 {
            let w = index.write().expect("w");
            w.commit(true).expect("commit");
        }
        println!(
            "durable empty commit: {:.0} us each",
            t.elapsed().as_secs_f64() / 50.0 * 1e6
        );
    }
}

#[cfg(test)]
mod migration {
    use super::*;
    use crate::clock::SystemClock;
    use crate::ledger::{LegacyLedger as _, RecordState, SledLedger, SERIAL_LEN};

    fn serial(n: u8) -> Serial {
        let mut b = [0x44; SERIAL_LEN];
        b[SERIAL_LEN - 1] = n;
        Serial::from_bytes(b).expect("a serial")
    }

    fn intent(ra: &str, id: Option<&str>) -> Intent {
        Intent {
            certifier: "ca".into(),
            ra: ra.into(),
            request_id: id.map(str::to_string),
            tbs_sha256: [9; 32],
            profile: "tls-server".into(),
            created: 1_700_000_000,
            approval: None,
            instance: String::new(),
            spki_sha256: None,
        }
    }

    #[test]
    fn an_earlier_sled_ledger_moves_to_the_index_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = dir.path().join("ledger");
        let index = dir.path().join("ledger.redb");
        let log = dir.path().join("audit.log");
        let der = crate::testing::certificate_der();
        {
            let old = SledLedger::open(&legacy, Arc::new(SystemClock)).expect("sled");
            // Issued, revoked, abandoned and pending records, two RAs, keys.
            for n in 1..=4 {
                old.record_intent(
                    &serial(n),
                    intent("ra-a", Some(&format!("r{n}"))),
                    Some(("ra-a", &format!("r{n}"), [n; 32])),
                )
                .expect("intent");
            }
            old.record_intent(&serial(5), intent("ra-b", None), None)
                .expect("intent");
            for n in [1, 2, 5] {
                old.record_issued(&serial(n), &der, 1_900_000_000)
                    .expect("issued");
            }
            old.record_revoked(&serial(2), 1, 1_800_000_000, "ra-a")
                .expect("revoked");
            old.record_abandoned(&serial(3), "token away")
                .expect("abandoned");
            old.next_crl_number("ca").expect("crl");
            old.next_crl_number("ca").expect("crl");
            // Its audit log (written as the journal writes it; the index
            // beside it is the scratch of this set-up, not the migration's).
            let (audit, _) = Journal::open(
                &log,
                &dir.path().join("scratch.redb"),
                Arc::new(SystemClock),
            )
            .expect("audit");
            audit
                .audit(AuditEvent::new("config_loaded", "certd"))
                .expect("entry");
            audit
                .audit(AuditEvent::new("stopped", "certd"))
                .expect("entry");
        }
        let done = migrate_from_sled(
            &legacy,
            &index,
            &log,
            &["ca".into(), "idle".into()],
            Arc::new(SystemClock),
        )
        .expect("migrate");
        assert_eq!(
            (done.records, done.idempotency_keys, done.checkpoint_seq),
            (5, 4, 2)
        );
        assert_eq!(done.certifiers, ["ca", "idle"]);
        assert!(!legacy.exists() && done.kept_at.is_dir());
        let (j, opened) = Journal::open(&log, &index, Arc::new(SystemClock)).expect("open");
        assert_eq!(opened.replayed, 0, "the index starts at the journal's end");
        let state = |n| j.get(&serial(n)).expect("get").map(|r| r.state);
        assert_eq!(
            (1..=5).map(state).collect::<Vec<_>>(),
            [
                Some(RecordState::Issued),
                Some(RecordState::Revoked),
                Some(RecordState::Abandoned),
                Some(RecordState::Intent),
                Some(RecordState::Issued)
            ]
        );
        assert_eq!(j.certificate(&serial(2)).expect("der"), Some(der.clone()));
        let stats = j.stats("ca").expect("stats");
        assert_eq!(
            (stats.issued, stats.revoked, stats.last_serial),
            (3, 1, Some(serial(5)))
        );
        assert_eq!(j.current_crl_number("ca").expect("crl"), Some(2));
        assert_eq!(
            j.idempotency_get("ra-a", "r2")
                .expect("key")
                .map(|e| e.serial),
            Some(serial(2))
        );
        let mut revoked = Vec::new();
        j.visit_revoked("ca", &mut |e| revoked.push((e.serial, e.reason)))
            .expect("revoked");
        assert_eq!(revoked, [(serial(2), 1)]);
        assert_eq!(j.pending_intents().expect("pending").len(), 1);
        // The next issuance carries on: a CRL number after the old ones.
        let next = j
            .change(
                Change::CrlNumber {
                    certifier: "ca".into(),
                },
                AuditEvent::new(KIND_CRL_NUMBER, "certd"),
            )
            .expect("crl");
        assert!(matches!(next, Done::Change(Applied::Crl(3), _)), "{next:?}");
        drop(j);
        // Once is enough.
        std::fs::create_dir(&legacy).expect("a stray directory");
        let again = migrate_from_sled(&legacy, &index, &log, &[], Arc::new(SystemClock));
        assert!(again.is_err_and(|e| e.to_string().contains("migrated before")));
        assert!(audit::verify(&log).expect("verify").is_ok());
    }
}
