//! The embedded ledger on sled: one writer thread that applies every
//! waiting change in one transaction and one flush, and a wrapper that
//! reopens the store after sled has failed on an I/O error.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{
    CertifierStats, IdempotencyEntry, Intent, IntentOutcome, LedgerError, LedgerRecord,
    LegacyLedger, RecordState, RevokedEntry, Serial, SERIAL_LEN,
};
use crate::clock::Clock;

impl From<sled::Error> for LedgerError {
    fn from(error: sled::Error) -> Self {
        // sled wraps the OS error in text of its own Debug output.
        match error {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                Self::Storage("no space left on device".into())
            }
            other => Self::Storage(other.to_string()),
        }
    }
}

impl From<TransactionError<LedgerError>> for LedgerError {
    fn from(error: TransactionError<LedgerError>) -> Self {
        match error {
            TransactionError::Abort(error) => error,
            TransactionError::Storage(error) => Self::from(error),
        }
    }
}

const CERTIFICATES_TREE: &str = "certificates";
const IDEMPOTENCY_TREE: &str = "idempotency";
const META_TREE: &str = "meta";
const REVOKED_TREE: &str = "revoked";

fn revoked_key(certifier: &str, serial: &Serial) -> Vec<u8> {
    [certifier.as_bytes(), &[0u8], serial.as_bytes()].concat()
}

/// One open sled database with its writer thread.
///
/// Trees: `certificates` (serial bytes → [`LedgerRecord`] JSON),
/// `idempotency` (RA + request id → [`IdempotencyEntry`] JSON) and `meta`
/// (per-certifier counters, CRL numbers, the pending-intent index).
struct Store {
    revoked: sled::Tree,
    certificates: sled::Tree,
    idempotency: sled::Tree,
    meta: sled::Tree,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set after a storage error: sled refuses everything from then on.
    failed: AtomicBool,
    /// Times the records.
    clock: Arc<dyn Clock>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the writer; joining it releases its
        // handles on the database, so the ledger can be opened again.
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The largest number of changes one writer round applies and flushes.
const MAX_BATCH: usize = 512;

/// A change to the ledger, applied by the writer thread.
enum Op {
    Intent {
        serial: Serial,
        value: Vec<u8>,
        claim: Option<(Vec<u8>, Vec<u8>)>,
    },
    Transition {
        serial: Serial,
        expected: RecordState,
        change: Change,
    },
    NextCrl {
        certifier: String,
    },
    /// The revocation of `serial` is in the audit log.
    RevocationAudited {
        serial: Serial,
    },
}

enum Change {
    Issued {
        der: Vec<u8>,
        not_after: i64,
        at: i64,
    },
    Abandoned {
        reason: String,
    },
    Revoked {
        reason: u8,
        at: i64,
        by: String,
    },
}

/// What a change came to; refusals (wrong state, unknown serial) are
/// results of their own change only, never of the whole round.
enum Outcome {
    Intent(IntentOutcome),
    Transition(Result<(), LedgerError>),
    Crl(u64),
}

struct Job {
    op: Op,
    reply: mpsc::SyncSender<Result<Outcome, LedgerError>>,
}

struct Trees {
    db: sled::Db,
    certificates: sled::Tree,
    idempotency: sled::Tree,
    meta: sled::Tree,
    revoked: sled::Tree,
}

type Tx<'a> = &'a sled::transaction::TransactionalTree;
type Abortable<T> = Result<T, ConflictableTransactionError<LedgerError>>;

impl Trees {
    /// Builds the pending-intent index of a ledger written before it
    /// existed: one full read, once.
    fn build_pending_index(&self) -> Result<(), LedgerError> {
        if self.meta.get(PENDING_INDEX_KEY)?.is_some() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in self.certificates.iter() {
            let (key, value) = item?;
            let serial = serial_of_key(&key)?;
            if decode_record(&serial, &value)?.state == RecordState::Intent {
                batch.insert(pending_key(&serial), &[][..]);
            }
        }
        batch.insert(PENDING_INDEX_KEY, &[1u8][..]);
        self.meta.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The writer thread: takes every change waiting, applies them in one
    /// transaction (counters updated once per round), flushes once, and
    /// answers each. Concurrent issuances thus share both the transaction
    /// and the fsync, and never conflict with each other.
    fn run(self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut round = vec![first];
            while round.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(j) => round.push(j),
                    Err(_) => break,
                }
            }
            let applied = (
                &self.certificates,
                &self.idempotency,
                &self.meta,
                &self.revoked,
            )
                .transaction(|(c, i, m, r)| {
                    let mut stats: HashMap<String, CertifierStats> = HashMap::new();
                    let mut outcomes = Vec::with_capacity(round.len());
                    for job in &round {
                        outcomes.push(apply(&job.op, c, i, m, r, &mut stats)?);
                    }
                    for (certifier, st) in &stats {
                        m.insert(
                            stats_key(certifier),
                            encode(st).map_err(ConflictableTransactionError::Abort)?,
                        )?;
                    }
                    Ok(outcomes)
                });
            match applied {
                Ok(outcomes) => match self.db.flush() {
                    Ok(_) => {
                        for (job, outcome) in round.into_iter().zip(outcomes) {
                            let _ = job.reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        for job in round {
                            let _ = job.reply.send(Err(LedgerError::from(e.clone())));
                        }
                    }
                },
                Err(e) => {
                    let e = LedgerError::from(e);
                    let message = e.to_string();
                    let storage = match e {
                        LedgerError::Storage(s) => Some(s),
                        _ => None,
                    };
                    for job in round {
                        let err = match &storage {
                            Some(s) => LedgerError::Storage(s.clone()),
                            None => LedgerError::Corrupt(message.clone()),
                        };
                        let _ = job.reply.send(Err(err));
                    }
                }
            }
        }
    }
}

fn load_stats<'s>(
    meta: Tx<'_>,
    stats: &'s mut HashMap<String, CertifierStats>,
    certifier: &str,
) -> Abortable<&'s mut CertifierStats> {
    if !stats.contains_key(certifier) {
        let current = match meta.get(stats_key(certifier))? {
            Some(bytes) => decode_stats(&bytes).map_err(ConflictableTransactionError::Abort)?,
            None => CertifierStats::default(),
        };
        stats.insert(certifier.to_string(), current);
    }
    stats
        .get_mut(certifier)
        .ok_or(ConflictableTransactionError::Abort(LedgerError::Corrupt(
            "counter vanished".into(),
        )))
}

fn apply(
    op: &Op,
    certificates: Tx<'_>,
    idempotency: Tx<'_>,
    meta: Tx<'_>,
    revoked: Tx<'_>,
    stats: &mut HashMap<String, CertifierStats>,
) -> Abortable<Outcome> {
    let abort = ConflictableTransactionError::Abort;
    match op {
        Op::Intent {
            serial,
            value,
            claim,
        } => {
            if certificates.get(serial.as_bytes())?.is_some() {
                return Ok(Outcome::Intent(IntentOutcome::SerialTaken));
            }
            if let Some((key, entry)) = claim {
                if let Some(existing) = idempotency.get(key)? {
                    let existing = decode_idempotency(&existing).map_err(abort)?;
                    let abandoned = match certificates.get(existing.serial.as_bytes())? {
                        Some(bytes) => {
                            decode_record(&existing.serial, &bytes)
                                .map_err(abort)?
                                .state
                                == RecordState::Abandoned
                        }
                        None => false,
                    };
                    if !abandoned {
                        return Ok(Outcome::Intent(IntentOutcome::KeyTaken(existing)));
                    }
                }
                idempotency.insert(key.as_slice(), entry.as_slice())?;
            }
            certificates.insert(&serial.as_bytes()[..], value.as_slice())?;
            meta.insert(pending_key(serial), &[][..])?;
            Ok(Outcome::Intent(IntentOutcome::Recorded))
        }
        Op::Transition {
            serial,
            expected,
            change,
        } => {
            let Some(bytes) = certificates.get(serial.as_bytes())? else {
                return Ok(Outcome::Transition(Err(LedgerError::NotFound(
                    serial.to_hex(),
                ))));
            };
            let mut record = decode_record(serial, &bytes).map_err(abort)?;
            if record.state != *expected {
                return Ok(Outcome::Transition(Err(LedgerError::InvalidState {
                    serial: serial.to_hex(),
                    expected: *expected,
                    found: record.state,
                })));
            }
            let certifier = record.intent.certifier.clone();
            if record.state == RecordState::Intent {
                meta.remove(pending_key(serial))?;
            }
            match change {
                Change::Issued { der, not_after, at } => {
                    record.state = RecordState::Issued;
                    record.certificate_der = Some(der.clone());
                    record.not_after = Some(*not_after);
                    record.issued_at = Some(*at);
                    let st = load_stats(meta, stats, &certifier)?;
                    st.issued += 1;
                    st.last_serial = Some(*serial);
                }
                Change::Abandoned { reason } => {
                    record.state = RecordState::Abandoned;
                    record.abandoned_reason = Some(reason.clone());
                }
                Change::Revoked { reason, at, by } => {
                    record.state = RecordState::Revoked;
                    record.revoked_at = Some(*at);
                    record.revocation_reason = Some(*reason);
                    record.revoked_by = Some(by.clone());
                    load_stats(meta, stats, &certifier)?.revoked += 1;
                    // The per-certifier index the CRL is built from, so a CRL
                    // costs the number of revocations, not of certificates.
                    let entry = RevokedEntry {
                        serial: *serial,
                        revoked_at: *at,
                        reason: *reason,
                    };
                    revoked.insert(
                        revoked_key(&certifier, serial),
                        encode(&entry).map_err(abort)?,
                    )?;
                    meta.insert(unaudited_key(serial), &[][..])?;
                }
            }
            certificates.insert(&serial.as_bytes()[..], encode(&record).map_err(abort)?)?;
            Ok(Outcome::Transition(Ok(())))
        }
        Op::NextCrl { certifier } => {
            let key = crl_number_key(certifier);
            let current = match meta.get(&key)? {
                Some(bytes) => decode_crl_number(certifier, &bytes).map_err(abort)?,
                None => 0,
            };
            let next = current.checked_add(1).ok_or_else(|| {
                abort(LedgerError::Corrupt(format!(
                    "CRL number of certifier {certifier:?} is exhausted"
                )))
            })?;
            meta.insert(&key[..], &next.to_be_bytes()[..])?;
            Ok(Outcome::Crl(next))
        }
        Op::RevocationAudited { serial } => {
            meta.remove(unaudited_key(serial))?;
            Ok(Outcome::Transition(Ok(())))
        }
    }
}

impl Store {
    fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        let db = sled::Config::new().path(dir).open()?;
        let trees = Trees {
            certificates: db.open_tree(CERTIFICATES_TREE)?,
            idempotency: db.open_tree(IDEMPOTENCY_TREE)?,
            meta: db.open_tree(META_TREE)?,
            revoked: db.open_tree(REVOKED_TREE)?,
            db: db.clone(),
        };
        trees.build_pending_index()?;
        let (tx, rx) = mpsc::channel();
        let ledger = Self {
            certificates: trees.certificates.clone(),
            idempotency: trees.idempotency.clone(),
            meta: trees.meta.clone(),
            revoked: trees.revoked.clone(),
            writer: Some(tx),
            thread: Some(
                std::thread::Builder::new()
                    .name("ledger-writer".into())
                    .spawn(move || trees.run(rx))
                    .map_err(|e| LedgerError::Storage(e.to_string()))?,
            ),
            failed: AtomicBool::new(false),
            clock,
        };
        Ok(ledger)
    }

    /// Hands a change to the writer thread and waits until it is durable.
    fn submit(&self, op: Op) -> Result<Outcome, LedgerError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let stopped = || LedgerError::Corrupt("the ledger writer has stopped".into());
        self.writer
            .as_ref()
            .ok_or_else(stopped)?
            .send(Job { op, reply })
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    fn transition(
        &self,
        serial: &Serial,
        expected: RecordState,
        change: Change,
    ) -> Result<(), LedgerError> {
        match self.submit(Op::Transition {
            serial: *serial,
            expected,
            change,
        })? {
            Outcome::Transition(r) => r,
            _ => Err(LedgerError::Corrupt("unexpected writer answer".into())),
        }
    }
}

impl LegacyLedger for Store {
    fn revoked_entries(&self, certifier: &str) -> Result<Vec<RevokedEntry>, LedgerError> {
        let prefix = [certifier.as_bytes(), &[0u8]].concat();
        self.revoked
            .scan_prefix(prefix)
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| LedgerError::Corrupt(e.to_string()))
            })
            .collect()
    }

    fn record_intent(
        &self,
        serial: &Serial,
        intent: Intent,
        idempotency: Option<(&str, &str, [u8; 32])>,
    ) -> Result<IntentOutcome, LedgerError> {
        let value = encode(&LedgerRecord::new_intent(intent))?;
        let claim = match idempotency {
            Some((ra, request_id, body_sha256)) => Some((
                idempotency_key(ra, request_id),
                encode(&IdempotencyEntry {
                    body_sha256,
                    serial: *serial,
                })?,
            )),
            None => None,
        };
        match self.submit(Op::Intent {
            serial: *serial,
            value,
            claim,
        })? {
            Outcome::Intent(o) => Ok(o),
            _ => Err(LedgerError::Corrupt("unexpected writer answer".into())),
        }
    }

    fn record_issued(
        &self,
        serial: &Serial,
        certificate_der: &[u8],
        not_after: i64,
    ) -> Result<(), LedgerError> {
        self.transition(
            serial,
            RecordState::Intent,
            Change::Issued {
                der: certificate_der.to_vec(),
                not_after,
                at: self.clock.unix(),
            },
        )
    }

    fn record_abandoned(&self, serial: &Serial, reason: &str) -> Result<(), LedgerError> {
        self.transition(
            serial,
            RecordState::Intent,
            Change::Abandoned {
                reason: reason.to_owned(),
            },
        )
    }

    fn record_revoked(
        &self,
        serial: &Serial,
        reason_code: u8,
        revoked_at: i64,
        by: &str,
    ) -> Result<(), LedgerError> {
        self.transition(
            serial,
            RecordState::Issued,
            Change::Revoked {
                reason: reason_code,
                at: revoked_at,
                by: by.to_owned(),
            },
        )
    }

    fn get(&self, serial: &Serial) -> Result<Option<LedgerRecord>, LedgerError> {
        self.certificates
            .get(serial.as_bytes())?
            .map(|bytes| decode_record(serial, &bytes))
            .transpose()
    }

    fn unaudited_revocations(&self) -> Result<Vec<(Serial, LedgerRecord)>, LedgerError> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(UNAUDITED_PREFIX) {
            let (key, _) = item?;
            let serial = serial_of_key(&key[UNAUDITED_PREFIX.len()..])?;
            if let Some(record) = self.get(&serial)? {
                out.push((serial, record));
            }
        }
        Ok(out)
    }

    fn mark_revocation_audited(&self, serial: &Serial) -> Result<(), LedgerError> {
        match self.submit(Op::RevocationAudited { serial: *serial })? {
            Outcome::Transition(r) => r,
            _ => Err(LedgerError::Corrupt("unexpected writer answer".into())),
        }
    }

    fn pending_intents(&self) -> Result<Vec<(Serial, LedgerRecord)>, LedgerError> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(PENDING_PREFIX) {
            let (key, _) = item?;
            let serial = serial_of_key(&key[PENDING_PREFIX.len()..])?;
            match self.get(&serial)? {
                Some(record) if record.state == RecordState::Intent => out.push((serial, record)),
                // The index and the record change in one transaction, so
                // this cannot happen short of damage.
                other => {
                    return Err(LedgerError::Corrupt(format!(
                        "pending index lists {serial} but its record is {:?}",
                        other.map(|r| r.state)
                    )))
                }
            }
        }
        Ok(out)
    }

    fn idempotency_get(
        &self,
        ra: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyEntry>, LedgerError> {
        self.idempotency
            .get(idempotency_key(ra, request_id))?
            .map(|bytes| decode_idempotency(&bytes))
            .transpose()
    }

    fn stats(&self, certifier: &str) -> Result<CertifierStats, LedgerError> {
        match self.meta.get(stats_key(certifier))? {
            Some(bytes) => decode_stats(&bytes),
            None => Ok(CertifierStats::default()),
        }
    }

    fn next_crl_number(&self, certifier: &str) -> Result<u64, LedgerError> {
        match self.submit(Op::NextCrl {
            certifier: certifier.to_string(),
        })? {
            Outcome::Crl(n) => Ok(n),
            _ => Err(LedgerError::Corrupt("unexpected writer answer".into())),
        }
    }

    fn current_crl_number(&self, certifier: &str) -> Result<Option<u64>, LedgerError> {
        self.meta
            .get(crl_number_key(certifier))?
            .map(|bytes| decode_crl_number(certifier, &bytes))
            .transpose()
    }

    fn visit_records(
        &self,
        after: Option<&Serial>,
        visit: &mut dyn FnMut(Serial, LedgerRecord) -> ControlFlow<()>,
    ) -> Result<(), LedgerError> {
        let range = match after {
            Some(s) => self.certificates.range((
                std::ops::Bound::Excluded(s.as_bytes().to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => self.certificates.iter(),
        };
        for item in range {
            let (key, value) = item?;
            let serial = serial_of_key(&key)?;
            let record = decode_record(&serial, &value)?;
            if visit(serial, record).is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// The embedded ledger on sled, reopened after a storage failure.
///
/// sled refuses every operation after one I/O error (a full disk, say),
/// so a failed store is closed and opened again — sled's recovery then
/// reads back exactly what was durable — once the cause may be gone. Until
/// then calls fail with [`LedgerError::Storage`], fast.
pub struct SledLedger {
    dir: PathBuf,
    /// `None` while closed after a failure.
    store: RwLock<Option<Arc<Store>>>,
    /// When the store last failed or was last tried again.
    retry: Mutex<Option<Instant>>,
    /// What made the store fail, told to callers while it is closed.
    cause: Mutex<String>,
    clock: Arc<dyn Clock>,
}

/// Time between attempts at reopening a failed store.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// Free bytes the ledger's file system needs before a failed store is
/// reopened (opening writes to it).
const REOPEN_MIN_FREE: u64 = 1 << 20;
/// How long a reopening waits for calls still using the failed store: this
/// many pauses of [`DRAIN_PAUSE`] (about 5 s). A bound counted in pauses
/// reads no clock, so it also ends under a clock that tests hold still.
const DRAIN_PAUSES: u32 = 1_000;
const DRAIN_PAUSE: Duration = Duration::from_millis(5);

impl SledLedger {
    /// Opens (or creates) the ledger in `dir`, its records timed by
    /// `clock`. sled locks the directory, so a second process opening it
    /// gets [`LedgerError::Storage`].
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, LedgerError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            store: RwLock::new(Some(Arc::new(Store::open(dir, clock.clone())?))),
            retry: Mutex::new(None),
            cause: Mutex::new(String::new()),
            clock,
        })
    }

    /// Hands every idempotency key to `visit` (RA, request id, entry):
    /// what `certd migrate-ledger` moves to the ledger index along with
    /// the records and counters the [`Ledger`] calls give.
    pub fn visit_idempotency(
        &self,
        visit: &mut dyn FnMut(&str, &str, IdempotencyEntry),
    ) -> Result<(), LedgerError> {
        let store = self.store(false)?;
        for item in store.idempotency.iter() {
            let (key, value) = item?;
            let (ra, request_id) = split_idempotency_key(&key)?;
            visit(ra, request_id, decode_idempotency(&value)?);
        }
        Ok(())
    }

    /// Whether the store is open and has not failed.
    pub fn is_healthy(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|s| !s.failed.load(Ordering::Relaxed))
    }

    /// The store to use. After a failure, reads go on with the failed
    /// store (sled still answers them) while writes reopen it, at most every
    /// [`REOPEN_INTERVAL`] and only once the disk has room again.
    fn store(&self, write: bool) -> Result<Arc<Store>, LedgerError> {
        let usable = |s: &Arc<Store>| !write || !s.failed.load(Ordering::Relaxed);
        if let Some(s) = self
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|s| usable(s))
        {
            return Ok(s.clone());
        }
        let mut retry = self.retry.lock().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have reopened it meanwhile.
        if let Some(s) = self
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|s| usable(s))
        {
            return Ok(s.clone());
        }
        let now = self.clock.instant();
        if retry.is_some_and(|t| now.saturating_duration_since(t) < REOPEN_INTERVAL) {
            return Err(self.closed());
        }
        let room = rustix::fs::statvfs(&self.dir)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .unwrap_or(0);
        if room < REOPEN_MIN_FREE {
            *retry = Some(now);
            return Err(self.closed());
        }
        *retry = Some(now);
        let old = self
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            // sled locks its directory: every handle on the failed store
            // must be gone before it can be opened again.
            for _ in 0..DRAIN_PAUSES {
                if Arc::strong_count(&old) == 1 {
                    break;
                }
                std::thread::sleep(DRAIN_PAUSE);
            }
            if Arc::strong_count(&old) > 1 {
                *self.store.write().unwrap_or_else(PoisonError::into_inner) = Some(old);
                return Err(self.closed());
            }
            drop(old);
        }
        let store = Arc::new(Store::open(&self.dir, self.clock.clone()).inspect_err(|e| {
            tracing::warn!(error = %e, "the ledger cannot be reopened yet");
        })?);
        tracing::warn!(dir = %self.dir.display(), "reopened the ledger after a storage failure");
        *self.store.write().unwrap_or_else(PoisonError::into_inner) = Some(store.clone());
        Ok(store)
    }

    /// The error while the store is closed after a failure, naming its
    /// cause.
    fn closed(&self) -> LedgerError {
        let cause = self.cause.lock().unwrap_or_else(PoisonError::into_inner);
        LedgerError::Storage(format!(
            "the ledger is closed after a storage failure ({cause}) and is reopened when it can be"
        ))
    }

    /// Runs `f` on the store; a storage failure marks it for reopening.
    fn with<T>(
        &self,
        write: bool,
        f: impl FnOnce(&Store) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let store = self.store(write)?;
        let result = f(&store);
        if let Err(LedgerError::Storage(e)) = &result {
            if !store.failed.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, "ledger storage failed; it is reopened once writes can succeed");
                *self.cause.lock().unwrap_or_else(PoisonError::into_inner) = e.clone();
            }
        }
        result
    }
}

impl LegacyLedger for SledLedger {
    fn record_intent(
        &self,
        serial: &Serial,
        intent: Intent,
        idempotency: Option<(&str, &str, [u8; 32])>,
    ) -> Result<IntentOutcome, LedgerError> {
        self.with(true, |s| s.record_intent(serial, intent, idempotency))
    }
    fn record_issued(
        &self,
        serial: &Serial,
        certificate_der: &[u8],
        not_after: i64,
    ) -> Result<(), LedgerError> {
        self.with(true, |s| {
            s.record_issued(serial, certificate_der, not_after)
        })
    }
    fn record_abandoned(&self, serial: &Serial, reason: &str) -> Result<(), LedgerError> {
        self.with(true, |s| s.record_abandoned(serial, reason))
    }
    fn record_revoked(
        &self,
        serial: &Serial,
        reason_code: u8,
        revoked_at: i64,
        by: &str,
    ) -> Result<(), LedgerError> {
        self.with(true, |s| {
            s.record_revoked(serial, reason_code, revoked_at, by)
        })
    }
    fn get(&self, serial: &Serial) -> Result<Option<LedgerRecord>, LedgerError> {
        self.with(false, |s| s.get(serial))
    }
    fn pending_intents(&self) -> Result<Vec<(Serial, LedgerRecord)>, LedgerError> {
        self.with(false, |s| s.pending_intents())
    }
    fn unaudited_revocations(&self) -> Result<Vec<(Serial, LedgerRecord)>, LedgerError> {
        self.with(false, |s| s.unaudited_revocations())
    }
    fn mark_revocation_audited(&self, serial: &Serial) -> Result<(), LedgerError> {
        self.with(true, |s| s.mark_revocation_audited(serial))
    }
    fn idempotency_get(
        &self,
        ra: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyEntry>, LedgerError> {
        self.with(false, |s| s.idempotency_get(ra, request_id))
    }
    fn stats(&self, certifier: &str) -> Result<CertifierStats, LedgerError> {
        self.with(false, |s| s.stats(certifier))
    }
    fn next_crl_number(&self, certifier: &str) -> Result<u64, LedgerError> {
        self.with(true, |s| s.next_crl_number(certifier))
    }
    fn current_crl_number(&self, certifier: &str) -> Result<Option<u64>, LedgerError> {
        self.with(false, |s| s.current_crl_number(certifier))
    }
    fn revoked_entries(&self, certifier: &str) -> Result<Vec<RevokedEntry>, LedgerError> {
        self.with(false, |s| s.revoked_entries(certifier))
    }
    fn visit_records(
        &self,
        after: Option<&Serial>,
        visit: &mut dyn FnMut(Serial, LedgerRecord) -> ControlFlow<()>,
    ) -> Result<(), LedgerError> {
        self.with(false, |s| s.visit_records(after, visit))
    }
}

fn serial_of_key(key: &[u8]) -> Result<Serial, LedgerError> {
    let bytes: [u8; SERIAL_LEN] = key.try_into().map_err(|_| {
        LedgerError::Corrupt(format!(
            "certificate key {} is not a serial",
            hex::encode(key)
        ))
    })?;
    Serial::from_bytes(bytes)
        .map_err(|e| LedgerError::Corrupt(format!("certificate key {}: {e}", hex::encode(bytes))))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(value).map_err(|e| LedgerError::Corrupt(format!("cannot encode: {e}")))
}

fn decode_record(serial: &Serial, bytes: &[u8]) -> Result<LedgerRecord, LedgerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| LedgerError::Corrupt(format!("record for serial {serial}: {e}")))
}

fn decode_stats(bytes: &[u8]) -> Result<CertifierStats, LedgerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| LedgerError::Corrupt(format!("certifier counters: {e}")))
}

fn decode_crl_number(certifier: &str, bytes: &[u8]) -> Result<u64, LedgerError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
        LedgerError::Corrupt(format!(
            "CRL number of certifier {certifier:?} is not 8 bytes"
        ))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode_idempotency(bytes: &[u8]) -> Result<IdempotencyEntry, LedgerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| LedgerError::Corrupt(format!("idempotency entry: {e}")))
}

/// Length-prefixing the RA name keeps `("a", "bc")` and `("ab", "c")` apart
/// whatever characters the names contain.
fn idempotency_key(ra: &str, request_id: &str) -> Vec<u8> {
    let ra_len = u32::try_from(ra.len()).unwrap_or(u32::MAX);
    let mut key = Vec::with_capacity(4 + ra.len() + request_id.len());
    key.extend_from_slice(&ra_len.to_be_bytes());
    key.extend_from_slice(ra.as_bytes());
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// The RA and request id of an [`idempotency_key`].
fn split_idempotency_key(key: &[u8]) -> Result<(&str, &str), LedgerError> {
    let bad = || LedgerError::Corrupt("an idempotency key does not decode".into());
    let len: [u8; 4] = key
        .get(..4)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    let len = usize::try_from(u32::from_be_bytes(len)).map_err(|_| bad())?;
    let ra = key.get(4..4 + len).ok_or_else(bad)?;
    let request_id = key.get(4 + len..).ok_or_else(bad)?;
    Ok((
        std::str::from_utf8(ra).map_err(|_| bad())?,
        std::str::from_utf8(request_id).map_err(|_| bad())?,
    ))
}

fn stats_key(certifier: &str) -> Vec<u8> {
    [b"stats/".as_slice(), certifier.as_bytes()].concat()
}

fn crl_number_key(certifier: &str) -> Vec<u8> {
    [b"crl_number/".as_slice(), certifier.as_bytes()].concat()
}

/// Marks a serial in state [`RecordState::Intent`], so that start-up finds
/// the interrupted ones without reading every record.
const PENDING_PREFIX: &[u8] = b"pending/";

/// Set once the pending index covers every intent (ledgers written before
/// the index existed get it built once, at open).
const PENDING_INDEX_KEY: &[u8] = b"index/pending";

fn pending_key(serial: &Serial) -> Vec<u8> {
    [PENDING_PREFIX, serial.as_bytes().as_slice()].concat()
}

/// Marks a revocation until its audit entry is durable, so that one whose
/// entry could not be written (a full disk, a crash) is audited later.
const UNAUDITED_PREFIX: &[u8] = b"unaudited-revocation/";

fn unaudited_key(serial: &Serial) -> Vec<u8> {
    [UNAUDITED_PREFIX, serial.as_bytes().as_slice()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use std::sync::Arc;

    fn intent(certifier: &str) -> Intent {
        Intent {
            certifier: certifier.to_owned(),
            ra: "ra-web".to_owned(),
            request_id: Some("req-1".to_owned()),
            tbs_sha256: [7; 32],
            profile: "tls-server".to_owned(),
            created: 1_700_000_000,
            approval: None,
            instance: String::new(),
            spki_sha256: None,
        }
    }

    fn open(dir: &tempfile::TempDir) -> SledLedger {
        SledLedger::open(dir.path(), Arc::new(SystemClock)).expect("open ledger")
    }

    /// Serial number `n`: distinct per `n`, in `n`'s order.
    fn serial(n: u64) -> Serial {
        let mut bytes = [0u8; SERIAL_LEN];
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        Serial::from_bytes(bytes).expect("a positive, non-zero serial")
    }

    /// Records the intent for serial `n`, as issuance does before signing.
    fn recorded(ledger: &dyn LegacyLedger, n: u64, intent: Intent) -> Serial {
        let serial = serial(n);
        assert_eq!(
            ledger.record_intent(&serial, intent, None).expect("intent"),
            IntentOutcome::Recorded
        );
        serial
    }

    #[test]
    fn ledger_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SledLedger>();
        assert_send_sync::<Box<dyn LegacyLedger>>();
    }

    #[test]
    fn issuance_is_timed_by_the_ledger_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(ManualClock::at(start));
        let ledger = SledLedger::open(dir.path(), clock.clone()).expect("open ledger");
        let serial = recorded(&ledger, 1, intent("ca1"));
        clock.advance(Duration::from_secs(5));
        ledger
            .record_issued(&serial, b"der", 2_000_000_000)
            .expect("issue");
        let record = ledger.get(&serial).expect("get").expect("present");
        assert_eq!(record.issued_at, Some(1_700_000_005));
    }

    #[test]
    fn lifecycle_and_counters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir);
        let a = recorded(&ledger, 1, intent("ca1"));
        let b = recorded(&ledger, 2, intent("ca1"));
        let other = recorded(&ledger, 3, intent("ca2"));

        ledger.record_issued(&a, b"der-a", 2_000).expect("issue a");
        ledger.record_issued(&b, b"der-b", 3_000).expect("issue b");
        ledger
            .record_revoked(&a, 1, 1_800, "ra1")
            .expect("revoke a");
        let unaudited = ledger.unaudited_revocations().expect("unaudited");
        assert_eq!(unaudited.len(), 1);
        assert_eq!(unaudited[0].0, a);
        ledger.mark_revocation_audited(&a).expect("audited");
        assert!(ledger
            .unaudited_revocations()
            .expect("unaudited")
            .is_empty());

        let record = ledger.get(&a).expect("get").expect("present");
        assert_eq!(record.state, RecordState::Revoked);
        assert_eq!(record.certificate_der.as_deref(), Some(&b"der-a"[..]));
        assert_eq!(record.not_after, Some(2_000));
        assert_eq!(record.revoked_at, Some(1_800));
        assert_eq!(record.revocation_reason, Some(1));
        assert!(record.issued_at.is_some());

        let stats = ledger.stats("ca1").expect("stats");
        assert_eq!(
            stats,
            CertifierStats {
                issued: 2,
                revoked: 1,
                last_serial: Some(b)
            }
        );
        assert_eq!(
            ledger.stats("ca2").expect("stats"),
            CertifierStats::default()
        );

        let mut all = Vec::new();
        ledger
            .visit_records(None, &mut |serial, _| {
                all.push(serial);
                ControlFlow::Continue(())
            })
            .expect("visit");
        let mut sorted = vec![a, b, other];
        sorted.sort();
        assert_eq!(all, sorted, "every record, in serial order");
        let mut rest = Vec::new();
        ledger
            .visit_records(Some(&sorted[0]), &mut |serial, _| {
                rest.push(serial);
                ControlFlow::Break(())
            })
            .expect("visit");
        assert_eq!(
            rest,
            vec![sorted[1]],
            "starts after the cursor, stops on Break"
        );
        let pending = ledger.pending_intents().expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].0, other);

        assert_eq!(ledger.current_crl_number("ca1").expect("crl"), None);
        assert_eq!(ledger.next_crl_number("ca1").expect("crl"), 1);
        assert_eq!(ledger.next_crl_number("ca1").expect("crl"), 2);
        assert_eq!(ledger.next_crl_number("ca2").expect("crl"), 1);
        drop(ledger);
        let ledger = open(&dir);
        assert_eq!(ledger.current_crl_number("ca1").expect("crl"), Some(2));
        assert_eq!(ledger.next_crl_number("ca1").expect("crl"), 3);
        assert_eq!(ledger.stats("ca1").expect("stats").issued, 2);
    }

    #[test]
    fn invalid_transitions_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir);
        let serial = recorded(&ledger, 1, intent("ca1"));

        let err = ledger
            .record_revoked(&serial, 0, 1, "ra1")
            .expect_err("revoke intent");
        assert!(matches!(
            err,
            LedgerError::InvalidState {
                expected: RecordState::Issued,
                found: RecordState::Intent,
                ..
            }
        ));
        assert_eq!(err.code(), "invalid_state");

        ledger.record_issued(&serial, b"der", 10).expect("issue");
        let err = ledger
            .record_issued(&serial, b"other", 10)
            .expect_err("reissue");
        assert_eq!(err.code(), "invalid_state");
        let err = ledger
            .record_abandoned(&serial, "x")
            .expect_err("abandon issued");
        assert_eq!(err.code(), "invalid_state");
        ledger.record_revoked(&serial, 4, 5, "ra1").expect("revoke");
        let record = ledger.get(&serial).expect("get").expect("present");
        assert_eq!(
            (
                record.revocation_reason,
                record.revoked_at,
                record.revoked_by
            ),
            (Some(4), Some(5), Some("ra1".to_string()))
        );
        let err = ledger
            .record_revoked(&serial, 4, 6, "ra2")
            .expect_err("revoke twice");
        assert_eq!(err.code(), "invalid_state");
        // Refused transitions must not have touched the counters.
        let stats = ledger.stats("ca1").expect("stats");
        assert_eq!((stats.issued, stats.revoked), (1, 1));

        let unknown = Serial::from_hex(&format!("{:032x}", 42)).expect("serial");
        let err = ledger
            .record_issued(&unknown, b"der", 1)
            .expect_err("unknown");
        assert!(matches!(err, LedgerError::NotFound(ref s) if *s == unknown.to_hex()));
        assert_eq!(err.code(), "not_found");
        assert_eq!(ledger.get(&unknown).expect("get"), None);
    }

    #[test]
    fn revocations_are_indexed_per_certifier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir);
        let mut revoked = Vec::new();
        for (i, certifier) in ["a", "b", "a", "a"].into_iter().enumerate() {
            let serial = recorded(&ledger, i as u64 + 1, intent(certifier));
            ledger.record_issued(&serial, b"der", 1).expect("issue");
            if i != 3 {
                ledger
                    .record_revoked(&serial, 1, 100 + i as i64, "ra1")
                    .expect("revoke");
                revoked.push((certifier, serial));
            }
        }
        let a = ledger.revoked_entries("a").expect("entries");
        assert_eq!(a.len(), 2);
        for e in &a {
            assert!(revoked.contains(&("a", e.serial)));
            assert_eq!(e.reason, 1);
        }
        assert_eq!(ledger.revoked_entries("b").expect("entries").len(), 1);
        assert!(ledger.revoked_entries("c").expect("entries").is_empty());
    }

    #[test]
    fn record_intent_claims_keys_and_takes_over_abandoned_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir);
        let s1 = Serial::random().expect("rng");
        let s2 = Serial::random().expect("rng");
        let key = Some(("ra", "req-1", [7u8; 32]));
        assert_eq!(
            ledger.record_intent(&s1, intent("c"), key).expect("intent"),
            IntentOutcome::Recorded
        );
        assert_eq!(
            ledger
                .record_intent(&s1, intent("c"), None)
                .expect("intent"),
            IntentOutcome::SerialTaken
        );
        let first = IdempotencyEntry {
            body_sha256: [7; 32],
            serial: s1,
        };
        assert_eq!(
            ledger.record_intent(&s2, intent("c"), key).expect("intent"),
            IntentOutcome::KeyTaken(first)
        );
        // s2 was not recorded by the refused call.
        assert_eq!(ledger.get(&s2).expect("get"), None);
        ledger
            .record_abandoned(&s1, "token fault")
            .expect("abandon");
        assert_eq!(
            ledger.record_intent(&s2, intent("c"), key).expect("intent"),
            IntentOutcome::Recorded
        );
        let entry = ledger.idempotency_get("ra", "req-1").expect("get");
        assert_eq!(entry.map(|e| e.serial), Some(s2));
        assert_eq!(
            ledger.get(&s1).expect("get").map(|r| r.state),
            Some(RecordState::Abandoned)
        );
    }

    #[test]
    fn request_ids_are_scoped_per_ra_and_unambiguous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = open(&dir);
        for (n, (ra, request_id)) in [("ra", "r1"), ("ra2", "r1"), ("r", "ar1")]
            .into_iter()
            .enumerate()
        {
            let n = n as u64 + 1;
            assert_eq!(
                ledger
                    .record_intent(&serial(n), intent("c"), Some((ra, request_id, [1; 32])))
                    .expect("intent"),
                IntentOutcome::Recorded,
                "{ra:?} {request_id:?}"
            );
            assert_eq!(
                ledger.idempotency_get(ra, request_id).expect("get"),
                Some(IdempotencyEntry {
                    body_sha256: [1; 32],
                    serial: serial(n)
                })
            );
        }
        assert_eq!(ledger.idempotency_get("ra", "r2").expect("get"), None);
    }
}
