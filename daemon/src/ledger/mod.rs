//! The certificate ledger: the source of truth for every serial certd has
//! ever handed out.
//!
//! A serial is recorded durably as an *intent* before the HSM signs, and the
//! certificate is stored after. Because a serial only ever moves forward
//! through [`RecordState`] and records are never deleted, a crash between
//! intent and issuance can burn a serial but never lets it be reused.
//!
//! The ledger is recorded in the journal (the audit log as write-ahead
//! log, `crate::journal`, whose `Ledger` trait is what the pipeline asks of
//! it) and its state kept in the [`index`] (redb) applied from it. This
//! module holds the data model (`serial` the serial type, `record` the
//! records), the errors and outcomes, the index, and the sled store of
//! certd before 0.2 behind [`LegacyLedger`], which only
//! `certd migrate-ledger` still opens.

pub mod index;
mod record;
mod serial;
mod sled;

use std::ops::ControlFlow;

use certd_api::{ApiError, ErrorCode};

pub use self::sled::SledLedger;
pub use record::{
    spki_sha256_of_certificate, BlockedKey, CertifierStats, IdempotencyEntry, Intent, LedgerRecord,
    RecordState, RevokedEntry, Summary,
};
pub use serial::{Serial, SerialError, SERIAL_LEN};

/// Result of [`Ledger::record_intent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentOutcome {
    /// The intent is durable; signing may proceed.
    Recorded,
    /// The serial exists already; draw another.
    SerialTaken,
    /// The idempotency key belongs to this earlier request.
    KeyTaken(IdempotencyEntry),
}

/// Errors from the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The storage engine failed (I/O error, full disk, lock held by another
    /// process, on-disk corruption detected by sled).
    #[error(
        "ledger storage failed: {0}; check free disk space and the permissions \
         of the certd state directory"
    )]
    Storage(String),
    /// No record exists for this serial (hex).
    #[error("no ledger record for serial {0}")]
    NotFound(String),
    /// The record exists but is not in the state the operation requires.
    #[error("serial {serial} is {found}, but this operation needs it to be {expected}")]
    InvalidState {
        /// The serial, in hex.
        serial: String,
        /// The state the operation requires.
        expected: RecordState,
        /// The state the record is in.
        found: RecordState,
    },
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Rng(getrandom::Error),
    /// The subscriber key was revoked for keyCompromise and is blocked.
    #[error(
        "the public key (SPKI SHA-256 {key}) was revoked for keyCompromise with certificate {serial} of certifier {certifier:?} and is never certified again: generate a new key pair and a new CSR"
    )]
    KeyBlocked {
        /// SHA-256 of the SubjectPublicKeyInfo, hex.
        key: String,
        /// The revoked certificate that blocked it, hex.
        serial: String,
        /// Its certifier.
        certifier: String,
    },
    /// A stored value could not be decoded; the ledger needs inspection.
    #[error("ledger data is corrupt: {0}; restore the state directory from backup")]
    Corrupt(String),
}

impl LedgerError {
    /// Stable machine-readable code for the API and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Storage(_) => "ledger_unavailable",
            Self::NotFound(_) => "not_found",
            Self::InvalidState { .. } => "invalid_state",
            Self::Rng(_) => "internal",
            Self::Corrupt(_) => "ledger_corrupt",
            Self::KeyBlocked { .. } => "key_blocked",
        }
    }

    /// The API's answer to this error: `ledger_unavailable` while the
    /// storage fails (clients retry), `key_blocked` for a blocked key,
    /// `internal` for everything else.
    pub fn api_error(&self) -> ApiError {
        match self {
            Self::Storage(_) => ApiError::new(ErrorCode::LedgerUnavailable, self.to_string()),
            Self::KeyBlocked { .. } => ApiError::new(ErrorCode::KeyBlocked, self.to_string()),
            other => ApiError::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

/// The ledger of certd before 0.2 (the sled store), as `certd
/// migrate-ledger` reads it. Every mutating method returns only once its
/// change is durable.
pub trait LegacyLedger: Send + Sync {
    /// Records the intent to sign `serial` (chosen by the caller, who has
    /// built the TBSCertificate around it) and, when given, claims the RA's
    /// idempotency key for it, in one durable transaction.
    ///
    /// An existing serial is never overwritten ([`IntentOutcome::SerialTaken`]).
    /// An idempotency key already claimed for a serial that was not
    /// abandoned is left alone ([`IntentOutcome::KeyTaken`]); one whose
    /// serial was abandoned (signing failed) is taken over, so a client's
    /// retry after a transient failure can succeed.
    fn record_intent(
        &self,
        serial: &Serial,
        intent: Intent,
        idempotency: Option<(&str, &str, [u8; 32])>,
    ) -> Result<IntentOutcome, LedgerError>;

    /// Stores the signed certificate: `Intent → Issued`.
    fn record_issued(
        &self,
        serial: &Serial,
        certificate_der: &[u8],
        not_after: i64,
    ) -> Result<(), LedgerError>;

    /// Burns a serial whose signing failed: `Intent → Abandoned`.
    fn record_abandoned(&self, serial: &Serial, reason: &str) -> Result<(), LedgerError>;

    /// Revokes an issued certificate: `Issued → Revoked`, on behalf of RA
    /// `by`. The reason code is stored as given; checking it is the
    /// caller's policy.
    fn record_revoked(
        &self,
        serial: &Serial,
        reason_code: u8,
        revoked_at: i64,
        by: &str,
    ) -> Result<(), LedgerError>;

    /// Looks up one serial.
    fn get(&self, serial: &Serial) -> Result<Option<LedgerRecord>, LedgerError>;

    /// Records still in state `Intent`, i.e. signings interrupted by a crash
    /// (when called at start-up).
    fn pending_intents(&self) -> Result<Vec<(Serial, LedgerRecord)>, LedgerError>;

    /// Looks up an RA's idempotency key.
    fn idempotency_get(
        &self,
        ra: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyEntry>, LedgerError>;

    /// Counters for one certifier (zero for an unknown one).
    fn stats(&self, certifier: &str) -> Result<CertifierStats, LedgerError>;

    /// The next CRL number for a certifier: starts at 1, strictly increasing,
    /// durable before it is returned.
    fn next_crl_number(&self, certifier: &str) -> Result<u64, LedgerError>;

    /// The last CRL number handed out by [`Ledger::next_crl_number`], or
    /// `None` if the certifier has never had one (for status displays).
    fn current_crl_number(&self, certifier: &str) -> Result<Option<u64>, LedgerError>;

    /// Every revoked certificate of a certifier, in serial order (the CRL).
    fn revoked_entries(&self, certifier: &str) -> Result<Vec<RevokedEntry>, LedgerError>;

    /// Revoked certificates whose `revoked` audit entry is not known to be
    /// durable yet.
    fn unaudited_revocations(&self) -> Result<Vec<(Serial, LedgerRecord)>, LedgerError>;

    /// Notes that the revocation of `serial` is in the audit log.
    fn mark_revocation_audited(&self, serial: &Serial) -> Result<(), LedgerError>;

    /// Hands every record with a serial above `after` (all when `None`) to
    /// `visit`, in serial order, until it answers `Break`. A page of a
    /// listing thus reads only what it shows and what it skips.
    fn visit_records(
        &self,
        after: Option<&Serial>,
        visit: &mut dyn FnMut(Serial, LedgerRecord) -> ControlFlow<()>,
    ) -> Result<(), LedgerError>;
}
