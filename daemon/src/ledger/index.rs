//! The ledger's index: the state of every serial certd has handed out, kept
//! in a redb database and applied from the journal.
//!
//! The index is not where durability comes from: every change reaches the
//! journal (the audit log) and its `fsync` first, and is then applied here
//! in one write transaction per journal round, committed without a sync of
//! its own. Every so often a round is committed durably together with a
//! [`Checkpoint`]: the journal position it reflects. After a crash the
//! index opens at its last checkpoint and the journal's entries after it are
//! applied again, so the index ends exactly where the journal does.
//!
//! Tables (keys are bytes; values JSON, DER as bytes):
//!
//! - `records`: serial → [`LedgerRecord`] without its certificate;
//! - `certificates`: serial → DER;
//! - `idempotency`: RA `\0` request id → [`IdempotencyEntry`];
//! - `revoked`: certifier `\0` serial → [`RevokedEntry`], what a CRL lists;
//! - `pending`: serial → (), the intents not yet issued or abandoned;
//! - `by_ra`: RA `\0` serial → (), an RA's certificates in serial order;
//! - `blocked_keys`: SHA-256 of a SubjectPublicKeyInfo → [`BlockedKey`],
//!   the keys revoked for keyCompromise, never certified again;
//! - `meta`: per-certifier [`CertifierStats`] and CRL numbers, and the
//!   checkpoint.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    spki_sha256_of_certificate, BlockedKey, CertifierStats, IdempotencyEntry, Intent,
    IntentOutcome, LedgerError, LedgerRecord, RecordState, RevokedEntry, Serial, Summary,
    SERIAL_LEN,
};

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const CERTIFICATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("certificates");
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
const REVOKED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("revoked");
const PENDING: TableDefinition<&[u8], ()> = TableDefinition::new("pending");
const BY_RA: TableDefinition<&[u8], ()> = TableDefinition::new("by_ra");
const BLOCKED_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocked_keys");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const CHECKPOINT_KEY: &str = "checkpoint";
/// The index's layout version, so a later layout can tell an old index.
const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"2";
/// Layout 1 had no `blocked_keys`; opening it fills the table from the
/// keyCompromise revocations it holds.
const FORMAT_1: &[u8] = b"1";
/// RFC 5280 CRLReason keyCompromise.
const KEY_COMPROMISE: u8 = 1;

/// The index's file in a state directory.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger.redb")
}

/// Where in the journal the durable index stands: the last entry applied,
/// its hash (so the continuation can be checked) and the byte offset just
/// after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// `seq` of the last journal entry the index reflects (0: none).
    pub seq: u64,
    /// `hash` of that entry (the genesis `prev` when `seq` is 0).
    pub hash: String,
    /// Byte offset in the journal just after that entry.
    pub offset: u64,
}

/// An RA's claim on an idempotency key, made with an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The RA.
    pub ra: String,
    /// Its request id.
    pub request_id: String,
    /// SHA-256 of the request, to tell a replay from a conflicting reuse.
    pub body_sha256: [u8; 32],
}

/// One change to the ledger, as the journal records it and the index
/// applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per submission
pub enum Change {
    /// Reserve `serial` for `intent`, and claim the idempotency key.
    Intent {
        /// The serial, drawn by the caller.
        serial: Serial,
        /// What is about to be signed.
        intent: Intent,
        /// The RA's idempotency key, if it sent one.
        claim: Option<Claim>,
    },
    /// Store the signed certificate: `Intent → Issued`.
    Issued {
        /// The serial.
        serial: Serial,
        /// The certificate.
        der: Vec<u8>,
        /// Its notAfter, Unix seconds.
        not_after: i64,
        /// When it was stored, Unix seconds.
        at: i64,
    },
    /// Burn a serial whose signing failed: `Intent → Abandoned`.
    Abandoned {
        /// The serial.
        serial: Serial,
        /// Why.
        reason: String,
    },
    /// Revoke: `Issued → Revoked`.
    Revoked {
        /// The serial.
        serial: Serial,
        /// RFC 5280 CRLReason code.
        reason: u8,
        /// When, Unix seconds.
        at: i64,
        /// The RA that revoked.
        by: String,
    },
    /// Take the next CRL number of a certifier.
    CrlNumber {
        /// The certifier.
        certifier: String,
    },
}

/// What applying a [`Change`] came to.
#[derive(Debug)]
pub enum Applied {
    /// An intent's outcome (only `Recorded` changed anything).
    Intent(IntentOutcome),
    /// A transition was made.
    Done,
    /// The CRL number taken.
    Crl(u64),
    /// The change does not apply (unknown serial, wrong state); nothing
    /// was changed.
    Refused(LedgerError),
}

impl Applied {
    /// Whether the change was made (and so belongs in the journal).
    pub fn changed(&self) -> bool {
        matches!(
            self,
            Applied::Intent(IntentOutcome::Recorded) | Applied::Done | Applied::Crl(_)
        )
    }
}

fn storage(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(value).map_err(corrupt)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(format!("{what}: {e}")))
}

fn joined(a: &str, b: &[u8]) -> Vec<u8> {
    [a.as_bytes(), &[0u8], b].concat()
}

fn stats_key(certifier: &str) -> String {
    format!("stats/{certifier}")
}

fn crl_key(certifier: &str) -> String {
    format!("crl/{certifier}")
}

fn serial_of(bytes: &[u8]) -> Result<Serial, LedgerError> {
    let array: [u8; SERIAL_LEN] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("a key of {} bytes is no serial", bytes.len())))?;
    Serial::from_bytes(array).map_err(corrupt)
}

/// The ledger index, shared by the journal's writer (which alone changes
/// it) and every reader.
pub struct Index {
    path: PathBuf,
    /// Replaced when the database is reopened after a storage failure.
    db: RwLock<Arc<Database>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

impl Index {
    /// Opens the index at `path`, creating an empty one (checkpoint 0) if
    /// the file does not exist.
    pub fn open(path: &Path) -> Result<Index, LedgerError> {
        let db = open_db(path)?;
        Ok(Index {
            path: path.to_path_buf(),
            db: RwLock::new(Arc::new(db)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Arc<Database> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Closes and opens the database again, after a storage failure left it
    /// refusing work: it comes back at its last durable commit. Waits for
    /// readers still using the old handle (they are short), at most
    /// `drain`; gives up with an error after that.
    pub fn reopen(&self, drain: std::time::Duration) -> Result<(), LedgerError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let started = std::time::Instant::now();
        // Only the last handle may be dropped before the file is opened
        // again (redb locks the file while a handle is open).
        while Arc::strong_count(&slot) > 1 {
            if started.elapsed() > drain {
                return Err(storage("readers still hold the failed index"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let placeholder = Arc::new(
            Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(storage)?,
        );
        let old = std::mem::replace(&mut *slot, placeholder);
        drop(old);
        *slot = Arc::new(open_db(&self.path)?);
        Ok(())
    }

    /// The durable journal position (what the index reflects after a
    /// reopen, before the journal is applied again).
    pub fn checkpoint(&self) -> Result<Checkpoint, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        match meta.get(CHECKPOINT_KEY).map_err(storage)? {
            Some(v) => decode("checkpoint", v.value()),
            None => Ok(Checkpoint::default()),
        }
    }

    /// Starts the write transaction of one journal round.
    pub fn write(&self) -> Result<IndexWrite, LedgerError> {
        let db = self.db();
        let mut txn = db.begin_write().map_err(storage)?;
        // Durability comes from the journal; see the module documentation.
        txn.set_durability(redb::Durability::None)
            .map_err(storage)?;
        Ok(IndexWrite { txn })
    }

    /// One serial's record, with its certificate.
    pub fn get(&self, serial: &Serial) -> Result<Option<LedgerRecord>, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let records = txn.open_table(RECORDS).map_err(storage)?;
        let Some(bytes) = records.get(&serial.as_bytes()[..]).map_err(storage)? else {
            return Ok(None);
        };
        let mut record: LedgerRecord = decode("record", bytes.value())?;
        if matches!(record.state, RecordState::Issued | RecordState::Revoked) {
            let certs = txn.open_table(CERTIFICATES).map_err(storage)?;
            record.certificate_der = certs
                .get(&serial.as_bytes()[..])
                .map_err(storage)?
                .map(|v| v.value().to_vec());
        }
        Ok(Some(record))
    }

    /// An RA's idempotency key.
    pub fn idempotency_get(
        &self,
        ra: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyEntry>, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(IDEMPOTENCY).map_err(storage)?;
        table
            .get(&joined(ra, request_id.as_bytes())[..])
            .map_err(storage)?
            .map(|v| decode("idempotency entry", v.value()))
            .transpose()
    }

    /// Counters of one certifier.
    pub fn stats(&self, certifier: &str) -> Result<CertifierStats, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        match meta.get(stats_key(certifier).as_str()).map_err(storage)? {
            Some(v) => decode("stats", v.value()),
            None => Ok(CertifierStats::default()),
        }
    }

    /// The last CRL number taken by a certifier.
    pub fn current_crl_number(&self, certifier: &str) -> Result<Option<u64>, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        meta.get(crl_key(certifier).as_str())
            .map_err(storage)?
            .map(|v| crl_number(v.value()))
            .transpose()
    }

    /// Hands every revoked certificate of a certifier to `visit`, in serial
    /// order (a CRL costs the number of revocations, not of certificates).
    pub fn visit_revoked(
        &self,
        certifier: &str,
        visit: &mut dyn FnMut(RevokedEntry),
    ) -> Result<(), LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(REVOKED).map_err(storage)?;
        let start = joined(certifier, &[]);
        let end = [certifier.as_bytes(), &[1u8]].concat();
        for item in table.range(&start[..]..&end[..]).map_err(storage)? {
            let (_, v) = item.map_err(storage)?;
            visit(decode("revoked entry", v.value())?);
        }
        Ok(())
    }

    /// The records still in state `Intent`.
    pub fn pending_intents(&self) -> Result<Vec<(Serial, LedgerRecord)>, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let pending = txn.open_table(PENDING).map_err(storage)?;
        let records = txn.open_table(RECORDS).map_err(storage)?;
        let mut out = Vec::new();
        for item in pending.iter().map_err(storage)? {
            let (k, _) = item.map_err(storage)?;
            let serial = serial_of(k.value())?;
            let record: LedgerRecord = match records.get(k.value()).map_err(storage)? {
                Some(v) => decode("record", v.value())?,
                None => {
                    return Err(corrupt(format!(
                        "the pending index lists {serial}, which has no record"
                    )))
                }
            };
            out.push((serial, record));
        }
        Ok(out)
    }

    /// A certificate, by serial.
    pub fn certificate(&self, serial: &Serial) -> Result<Option<Vec<u8>>, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let certs = txn.open_table(CERTIFICATES).map_err(storage)?;
        Ok(certs
            .get(&serial.as_bytes()[..])
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    /// Whether the key with this SPKI SHA-256 is blocked, and by which
    /// revocation.
    pub fn blocked_key(&self, spki_sha256: &[u8; 32]) -> Result<Option<BlockedKey>, LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let blocked = txn.open_table(BLOCKED_KEYS).map_err(storage)?;
        blocked
            .get(&spki_sha256[..])
            .map_err(storage)?
            .map(|v| decode("blocked key", v.value()))
            .transpose()
    }

    /// Hands the records with a serial above `after` (all when `None`) to
    /// `visit` in serial order, until it answers `Break`: only those of RA
    /// `ra` when given (read through the per-RA index, so an RA's page costs
    /// its own records only). Records come without their certificate
    /// (`certificate_der` is `None`; [`Index::certificate`] has it) but with
    /// their [`Summary`], so a listing filters without decoding certificates.
    pub fn visit_records(
        &self,
        after: Option<&Serial>,
        ra: Option<&str>,
        visit: &mut dyn FnMut(Serial, LedgerRecord) -> ControlFlow<()>,
    ) -> Result<(), LedgerError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let records = txn.open_table(RECORDS).map_err(storage)?;
        match ra {
            Some(ra) => {
                let by_ra = txn.open_table(BY_RA).map_err(storage)?;
                let start = match after {
                    // Just past `after`: its key followed by a zero byte.
                    Some(s) => [joined(ra, s.as_bytes()), vec![0u8]].concat(),
                    None => joined(ra, &[]),
                };
                let end = [ra.as_bytes(), &[1u8]].concat();
                for item in by_ra.range(&start[..]..&end[..]).map_err(storage)? {
                    let (k, _) = item.map_err(storage)?;
                    let serial = serial_of(&k.value()[ra.len() + 1..])?;
                    let Some(v) = records.get(&serial.as_bytes()[..]).map_err(storage)? else {
                        return Err(corrupt(format!(
                            "the RA index lists {serial}, which has no record"
                        )));
                    };
                    let record = decode("record", v.value())?;
                    if visit(serial, record).is_break() {
                        break;
                    }
                }
            }
            None => {
                let range = match after {
                    Some(s) => records.range::<&[u8]>((
                        std::ops::Bound::Excluded(&s.as_bytes()[..]),
                        std::ops::Bound::Unbounded,
                    )),
                    None => records.iter(),
                }
                .map_err(storage)?;
                for item in range {
                    let (k, v) = item.map_err(storage)?;
                    let record = decode("record", v.value())?;
                    if visit(serial_of(k.value())?, record).is_break() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

fn crl_number(bytes: &[u8]) -> Result<u64, LedgerError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt("a CRL number is not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

fn open_db(path: &Path) -> Result<Database, LedgerError> {
    let db = Database::create(path).map_err(storage)?;
    // Every table exists from the start, so readers never meet a missing one.
    let mut txn = db.begin_write().map_err(storage)?;
    // Durable, and with redb's allocator state: until the journal's first
    // durable checkpoint it is what a reopen after a crash starts from, and
    // without it redb would walk the whole index to rebuild that state.
    txn.set_quick_repair(true);
    {
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(CERTIFICATES).map_err(storage)?;
        txn.open_table(IDEMPOTENCY).map_err(storage)?;
        txn.open_table(REVOKED).map_err(storage)?;
        txn.open_table(PENDING).map_err(storage)?;
        txn.open_table(BY_RA).map_err(storage)?;
        txn.open_table(BLOCKED_KEYS).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        let format = meta
            .get(FORMAT_KEY)
            .map_err(storage)?
            .map(|v| v.value().to_vec());
        match format {
            Some(v) if v == FORMAT => {}
            Some(v) if v == FORMAT_1 => {
                drop(meta);
                let blocked = backfill_blocked_keys(&txn)?;
                tracing::info!(
                    index = %path.display(),
                    blocked,
                    "index layout 1 upgraded to 2: keys revoked for keyCompromise are now blocked"
                );
                let mut meta = txn.open_table(META).map_err(storage)?;
                meta.insert(FORMAT_KEY, FORMAT).map_err(storage)?;
            }
            Some(v) => {
                return Err(corrupt(format!(
                    "index {} has layout {:?}; this certd reads layout {:?}",
                    path.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT).map_err(storage)?;
            }
        }
    }
    txn.commit().map_err(storage)?;
    Ok(db)
}

/// Fills `blocked_keys` from the keyCompromise revocations of an index
/// written before keys were blocked; returns how many keys it blocked.
fn backfill_blocked_keys(txn: &WriteTransaction) -> Result<usize, LedgerError> {
    let mut found = Vec::new();
    {
        let revoked = txn.open_table(REVOKED).map_err(storage)?;
        let records = txn.open_table(RECORDS).map_err(storage)?;
        let certs = txn.open_table(CERTIFICATES).map_err(storage)?;
        for item in revoked.iter().map_err(storage)? {
            let (_, v) = item.map_err(storage)?;
            let entry: RevokedEntry = decode("revoked entry", v.value())?;
            if entry.reason != KEY_COMPROMISE {
                continue;
            }
            let key = &entry.serial.as_bytes()[..];
            let Some(r) = records.get(key).map_err(storage)? else {
                continue;
            };
            let record: LedgerRecord = decode("record", r.value())?;
            let spki = match record.intent.spki_sha256 {
                Some(h) => Some(h),
                None => certs
                    .get(key)
                    .map_err(storage)?
                    .and_then(|der| spki_sha256_of_certificate(der.value())),
            };
            if let Some(spki) = spki {
                found.push((
                    spki,
                    BlockedKey {
                        serial: entry.serial,
                        certifier: record.intent.certifier,
                        revoked_at: entry.revoked_at,
                    },
                ));
            }
        }
    }
    let mut blocked = txn.open_table(BLOCKED_KEYS).map_err(storage)?;
    let mut n = 0;
    for (spki, b) in found {
        if blocked.get(&spki[..]).map_err(storage)?.is_none() {
            blocked
                .insert(&spki[..], encode(&b)?.as_slice())
                .map_err(storage)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The write transaction of one journal round.
pub struct IndexWrite {
    txn: WriteTransaction,
}

impl IndexWrite {
    /// Checks `change` against the index as this round has left it so far,
    /// and applies it when it applies. Storage errors abort the round.
    pub fn apply(&mut self, change: &Change) -> Result<Applied, LedgerError> {
        match change {
            Change::Intent {
                serial,
                intent,
                claim,
            } => self.intent(serial, intent, claim.as_ref()),
            Change::Issued {
                serial,
                der,
                not_after,
                at,
            } => self.transition(serial, RecordState::Intent, |w, record| {
                record.state = RecordState::Issued;
                record.not_after = Some(*not_after);
                record.issued_at = Some(*at);
                record.summary = Summary::of_certificate(der);
                let mut certs = w.txn.open_table(CERTIFICATES).map_err(storage)?;
                certs
                    .insert(&serial.as_bytes()[..], der.as_slice())
                    .map_err(storage)?;
                drop(certs);
                w.update_stats(&record.intent.certifier, |st| {
                    st.issued += 1;
                    st.last_serial = Some(*serial);
                })
            }),
            Change::Abandoned { serial, reason } => {
                self.transition(serial, RecordState::Intent, |_, record| {
                    record.state = RecordState::Abandoned;
                    record.abandoned_reason = Some(reason.clone());
                    Ok(())
                })
            }
            Change::Revoked {
                serial,
                reason,
                at,
                by,
            } => self.transition(serial, RecordState::Issued, |w, record| {
                record.state = RecordState::Revoked;
                record.revoked_at = Some(*at);
                record.revocation_reason = Some(*reason);
                record.revoked_by = Some(by.clone());
                let entry = RevokedEntry {
                    serial: *serial,
                    revoked_at: *at,
                    reason: *reason,
                };
                let mut revoked = w.txn.open_table(REVOKED).map_err(storage)?;
                revoked
                    .insert(
                        &joined(&record.intent.certifier, serial.as_bytes())[..],
                        encode(&entry)?.as_slice(),
                    )
                    .map_err(storage)?;
                drop(revoked);
                if *reason == KEY_COMPROMISE {
                    w.block_key(serial, record)?;
                }
                w.update_stats(&record.intent.certifier, |st| st.revoked += 1)
            }),
            Change::CrlNumber { certifier } => {
                let mut meta = self.txn.open_table(META).map_err(storage)?;
                let key = crl_key(certifier);
                let current = match meta.get(key.as_str()).map_err(storage)? {
                    Some(v) => crl_number(v.value())?,
                    None => 0,
                };
                let Some(next) = current.checked_add(1) else {
                    return Ok(Applied::Refused(corrupt(format!(
                        "the CRL numbers of certifier {certifier:?} are exhausted"
                    ))));
                };
                meta.insert(key.as_str(), &next.to_be_bytes()[..])
                    .map_err(storage)?;
                Ok(Applied::Crl(next))
            }
        }
    }

    /// Blocks the key of `record` (revoked for keyCompromise), unless an
    /// earlier revocation blocked it already.
    fn block_key(&mut self, serial: &Serial, record: &LedgerRecord) -> Result<(), LedgerError> {
        let spki = match record.intent.spki_sha256 {
            Some(h) => Some(h),
            None => {
                let certs = self.txn.open_table(CERTIFICATES).map_err(storage)?;
                let der = certs.get(&serial.as_bytes()[..]).map_err(storage)?;
                der.and_then(|d| spki_sha256_of_certificate(d.value()))
            }
        };
        let Some(spki) = spki else {
            return Err(corrupt(format!(
                "revoked certificate {serial} has no readable public key to block"
            )));
        };
        let mut blocked = self.txn.open_table(BLOCKED_KEYS).map_err(storage)?;
        if blocked.get(&spki[..]).map_err(storage)?.is_none() {
            let entry = BlockedKey {
                serial: *serial,
                certifier: record.intent.certifier.clone(),
                revoked_at: record.revoked_at.unwrap_or_default(),
            };
            blocked
                .insert(&spki[..], encode(&entry)?.as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }

    fn intent(
        &mut self,
        serial: &Serial,
        intent: &Intent,
        claim: Option<&Claim>,
    ) -> Result<Applied, LedgerError> {
        let key = &serial.as_bytes()[..];
        let mut records = self.txn.open_table(RECORDS).map_err(storage)?;
        if records.get(key).map_err(storage)?.is_some() {
            return Ok(Applied::Intent(IntentOutcome::SerialTaken));
        }
        if let Some(spki) = &intent.spki_sha256 {
            let blocked = self.txn.open_table(BLOCKED_KEYS).map_err(storage)?;
            let found: Option<BlockedKey> = blocked
                .get(&spki[..])
                .map_err(storage)?
                .map(|b| decode("blocked key", b.value()))
                .transpose()?;
            drop(blocked);
            if let Some(b) = found {
                return Ok(Applied::Refused(LedgerError::KeyBlocked {
                    key: hex::encode(spki),
                    serial: b.serial.to_hex(),
                    certifier: b.certifier,
                }));
            }
        }
        if let Some(claim) = claim {
            let mut idem = self.txn.open_table(IDEMPOTENCY).map_err(storage)?;
            let idem_key = joined(&claim.ra, claim.request_id.as_bytes());
            if let Some(existing) = idem.get(&idem_key[..]).map_err(storage)? {
                let existing: IdempotencyEntry = decode("idempotency entry", existing.value())?;
                // A key whose serial was abandoned (signing failed) is taken
                // over, so a retry after a transient failure can succeed.
                let abandoned = match records
                    .get(&existing.serial.as_bytes()[..])
                    .map_err(storage)?
                {
                    Some(v) => {
                        decode::<LedgerRecord>("record", v.value())?.state == RecordState::Abandoned
                    }
                    None => false,
                };
                if !abandoned {
                    return Ok(Applied::Intent(IntentOutcome::KeyTaken(existing)));
                }
            }
            let entry = IdempotencyEntry {
                body_sha256: claim.body_sha256,
                serial: *serial,
            };
            idem.insert(&idem_key[..], encode(&entry)?.as_slice())
                .map_err(storage)?;
        }
        let record = LedgerRecord::new_intent(intent.clone());
        records
            .insert(key, encode(&record)?.as_slice())
            .map_err(storage)?;
        drop(records);
        let mut pending = self.txn.open_table(PENDING).map_err(storage)?;
        pending.insert(key, ()).map_err(storage)?;
        drop(pending);
        let mut by_ra = self.txn.open_table(BY_RA).map_err(storage)?;
        by_ra
            .insert(&joined(&intent.ra, key)[..], ())
            .map_err(storage)?;
        Ok(Applied::Intent(IntentOutcome::Recorded))
    }

    fn transition(
        &mut self,
        serial: &Serial,
        expected: RecordState,
        change: impl FnOnce(&mut IndexWrite, &mut LedgerRecord) -> Result<(), LedgerError>,
    ) -> Result<Applied, LedgerError> {
        let key = &serial.as_bytes()[..];
        let records = self.txn.open_table(RECORDS).map_err(storage)?;
        let Some(bytes) = records.get(key).map_err(storage)? else {
            return Ok(Applied::Refused(LedgerError::NotFound(serial.to_hex())));
        };
        let mut record: LedgerRecord = decode("record", bytes.value())?;
        drop(bytes);
        drop(records);
        if record.state != expected {
            return Ok(Applied::Refused(LedgerError::InvalidState {
                serial: serial.to_hex(),
                expected,
                found: record.state,
            }));
        }
        if expected == RecordState::Intent {
            let mut pending = self.txn.open_table(PENDING).map_err(storage)?;
            pending.remove(key).map_err(storage)?;
        }
        change(self, &mut record)?;
        record.certificate_der = None;
        let mut records = self.txn.open_table(RECORDS).map_err(storage)?;
        records
            .insert(key, encode(&record)?.as_slice())
            .map_err(storage)?;
        Ok(Applied::Done)
    }

    fn update_stats(
        &mut self,
        certifier: &str,
        change: impl FnOnce(&mut CertifierStats),
    ) -> Result<(), LedgerError> {
        let mut meta = self.txn.open_table(META).map_err(storage)?;
        let key = stats_key(certifier);
        let mut stats = match meta.get(key.as_str()).map_err(storage)? {
            Some(v) => decode("stats", v.value())?,
            None => CertifierStats::default(),
        };
        change(&mut stats);
        meta.insert(key.as_str(), encode(&stats)?.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Writes `record` as it is (from another ledger being migrated), with
    /// its certificate, revocation, pending and per-RA entries and the
    /// counters it adds to. Replaces nothing: a serial already here is
    /// refused.
    pub fn import_record(
        &mut self,
        serial: &Serial,
        record: &LedgerRecord,
    ) -> Result<(), LedgerError> {
        let key = &serial.as_bytes()[..];
        let mut stored = record.clone();
        let der = stored.certificate_der.take();
        if stored.summary.is_none() {
            stored.summary = der.as_deref().and_then(Summary::of_certificate);
        }
        let mut records = self.txn.open_table(RECORDS).map_err(storage)?;
        if records.get(key).map_err(storage)?.is_some() {
            return Err(corrupt(format!("serial {serial} is imported twice")));
        }
        records
            .insert(key, encode(&stored)?.as_slice())
            .map_err(storage)?;
        drop(records);
        if let Some(der) = &der {
            let mut certs = self.txn.open_table(CERTIFICATES).map_err(storage)?;
            certs.insert(key, der.as_slice()).map_err(storage)?;
        }
        let mut by_ra = self.txn.open_table(BY_RA).map_err(storage)?;
        by_ra
            .insert(&joined(&record.intent.ra, key)[..], ())
            .map_err(storage)?;
        drop(by_ra);
        match record.state {
            RecordState::Intent => {
                let mut pending = self.txn.open_table(PENDING).map_err(storage)?;
                pending.insert(key, ()).map_err(storage)?;
            }
            RecordState::Issued => self.update_stats(&record.intent.certifier, |st| {
                st.issued += 1;
                st.last_serial = Some(*serial);
            })?,
            RecordState::Revoked => {
                let entry = RevokedEntry {
                    serial: *serial,
                    revoked_at: record.revoked_at.unwrap_or_default(),
                    reason: record.revocation_reason.unwrap_or_default(),
                };
                let mut revoked = self.txn.open_table(REVOKED).map_err(storage)?;
                revoked
                    .insert(
                        &joined(&record.intent.certifier, key)[..],
                        encode(&entry)?.as_slice(),
                    )
                    .map_err(storage)?;
                drop(revoked);
                if record.revocation_reason == Some(KEY_COMPROMISE) {
                    let mut with_der = stored.clone();
                    with_der.certificate_der = None;
                    if let Some(der) = &der {
                        with_der.intent.spki_sha256 = with_der
                            .intent
                            .spki_sha256
                            .or_else(|| spki_sha256_of_certificate(der));
                    }
                    self.block_key(serial, &with_der)?;
                }
                self.update_stats(&record.intent.certifier, |st| {
                    st.issued += 1;
                    st.revoked += 1;
                })?
            }
            RecordState::Abandoned => {}
        }
        Ok(())
    }

    /// Writes an idempotency key as it is (from a ledger being migrated).
    pub fn import_idempotency(
        &mut self,
        ra: &str,
        request_id: &str,
        entry: &IdempotencyEntry,
    ) -> Result<(), LedgerError> {
        let mut idem = self.txn.open_table(IDEMPOTENCY).map_err(storage)?;
        idem.insert(
            &joined(ra, request_id.as_bytes())[..],
            encode(entry)?.as_slice(),
        )
        .map_err(storage)?;
        Ok(())
    }

    /// Sets a certifier's counters (from a ledger being migrated, whose
    /// counters are the record of what it issued; the `last_serial` the
    /// records cannot tell).
    pub fn import_stats(
        &mut self,
        certifier: &str,
        stats: &CertifierStats,
    ) -> Result<(), LedgerError> {
        let mut meta = self.txn.open_table(META).map_err(storage)?;
        meta.insert(stats_key(certifier).as_str(), encode(stats)?.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Sets a certifier's last CRL number (from a ledger being migrated).
    pub fn import_crl_number(&mut self, certifier: &str, number: u64) -> Result<(), LedgerError> {
        let mut meta = self.txn.open_table(META).map_err(storage)?;
        meta.insert(crl_key(certifier).as_str(), &number.to_be_bytes()[..])
            .map_err(storage)?;
        Ok(())
    }

    /// Records the journal position this round brings the index to; commit
    /// durably to make it the new starting point after a crash.
    pub fn set_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), LedgerError> {
        let mut meta = self.txn.open_table(META).map_err(storage)?;
        meta.insert(CHECKPOINT_KEY, encode(checkpoint)?.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Commits the round: visible to readers at once; on disk only when
    /// `durable` (see the module documentation).
    pub fn commit(mut self, durable: bool) -> Result<(), LedgerError> {
        if durable {
            self.txn
                .set_durability(redb::Durability::Immediate)
                .map_err(storage)?;
            // The durable commits (one a second at most, and one when the
            // journal goes idle) also save redb's allocator state, which a
            // reopen after a crash can load instead of rebuilding it.
            self.txn.set_quick_repair(true);
        }
        self.txn.commit().map_err(storage)
    }

    /// Drops the round's changes.
    pub fn abort(self) -> Result<(), LedgerError> {
        self.txn.abort().map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(n: u8) -> Serial {
        let mut b = [0x31; SERIAL_LEN];
        b[SERIAL_LEN - 1] = n;
        Serial::from_bytes(b).expect("a serial")
    }

    fn intent(certifier: &str, spki: Option<[u8; 32]>) -> Intent {
        Intent {
            certifier: certifier.into(),
            ra: "ra".into(),
            request_id: None,
            tbs_sha256: [7; 32],
            profile: "tls-server".into(),
            created: 1_800_000_000,
            approval: None,
            instance: String::new(),
            spki_sha256: spki,
        }
    }

    fn issue_and_revoke(index: &Index, s: Serial, spki: Option<[u8; 32]>, reason: u8) {
        let der = crate::testing::certificate_der();
        let mut w = index.write().expect("write");
        for change in [
            Change::Intent {
                serial: s,
                intent: intent("ca", spki),
                claim: None,
            },
            Change::Issued {
                serial: s,
                der,
                not_after: 1_900_000_000,
                at: 1_800_000_001,
            },
            Change::Revoked {
                serial: s,
                reason,
                at: 1_800_000_002,
                by: "ra".into(),
            },
        ] {
            let applied = w.apply(&change).expect("apply");
            assert!(
                matches!(
                    applied,
                    Applied::Intent(IntentOutcome::Recorded) | Applied::Done
                ),
                "{applied:?}"
            );
        }
        w.commit(true).expect("commit");
    }

    fn try_intent(index: &Index, s: Serial, certifier: &str, spki: [u8; 32]) -> Applied {
        let mut w = index.write().expect("write");
        let applied = w
            .apply(&Change::Intent {
                serial: s,
                intent: intent(certifier, Some(spki)),
                claim: None,
            })
            .expect("apply");
        w.commit(true).expect("commit");
        applied
    }

    /// A keyCompromise revocation blocks the key for every certifier; other
    /// reasons do not; a record without the key's hash (written before keys
    /// were blocked) has it read from its certificate.
    #[test]
    fn key_compromise_blocks_the_key_at_every_certifier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Index::open(&dir.path().join("index.redb")).expect("open");
        let spki = spki_sha256_of_certificate(&crate::testing::certificate_der()).expect("spki");
        issue_and_revoke(&index, serial(1), Some(spki), 4);
        assert_eq!(
            index.blocked_key(&spki).expect("read"),
            None,
            "superseded blocks nothing"
        );
        assert!(matches!(
            try_intent(&index, serial(2), "ca", spki),
            Applied::Intent(IntentOutcome::Recorded)
        ));
        issue_and_revoke(&index, serial(3), None, KEY_COMPROMISE);
        let blocked = index.blocked_key(&spki).expect("read").expect("blocked");
        assert_eq!(
            (blocked.serial, blocked.certifier.as_str()),
            (serial(3), "ca")
        );
        for (n, certifier) in [(4, "ca"), (5, "another-ca")] {
            match try_intent(&index, serial(n), certifier, spki) {
                Applied::Refused(e @ LedgerError::KeyBlocked { .. }) => {
                    assert_eq!(e.api_error().code, certd_api::ErrorCode::KeyBlocked);
                    assert!(e.to_string().contains(&serial(3).to_hex()), "{e}");
                }
                other => panic!("{certifier}: {other:?}"),
            }
            assert!(
                index.get(&serial(n)).expect("get").is_none(),
                "nothing recorded"
            );
        }
    }

    /// An index of layout 1 (before `blocked_keys`) gets the table filled
    /// from its keyCompromise revocations when it is opened.
    #[test]
    fn a_layout_1_index_is_backfilled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.redb");
        let spki = spki_sha256_of_certificate(&crate::testing::certificate_der()).expect("spki");
        {
            let index = Index::open(&path).expect("open");
            issue_and_revoke(&index, serial(1), None, KEY_COMPROMISE);
        }
        // Make it look like layout 1.
        {
            let db = Database::create(&path).expect("db");
            let txn = db.begin_write().expect("txn");
            assert!(txn.delete_table(BLOCKED_KEYS).expect("delete"));
            txn.open_table(META)
                .expect("meta")
                .insert(FORMAT_KEY, FORMAT_1)
                .expect("format");
            txn.commit().expect("commit");
        }
        let index = Index::open(&path).expect("reopen");
        let blocked = index.blocked_key(&spki).expect("read").expect("backfilled");
        assert_eq!(blocked.serial, serial(1));
        assert!(matches!(
            try_intent(&index, serial(2), "ca", spki),
            Applied::Refused(LedgerError::KeyBlocked { .. })
        ));
        drop(index);
        let db = Database::create(&path).expect("db");
        let txn = db.begin_read().expect("txn");
        let meta = txn.open_table(META).expect("meta");
        let format = meta.get(FORMAT_KEY).expect("get").expect("format");
        assert_eq!(format.value(), FORMAT);
    }
}
