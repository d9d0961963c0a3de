//! Start-up recovery of issuances a stop interrupted.
//!
//! An issuance makes two things durable, in the journal: the intent before
//! the token signs, and the certificate before anyone sees it. Opening the
//! journal has applied every entry to the ledger index, so an intent still
//! pending at start-up had no certificate recorded: whether or not the
//! token signed it, nothing was ever released. Its serial is burned (never
//! reused), with an `intent_abandoned` entry. While running nothing needs
//! settling: a ledger change and its audit entry are one record.

use crate::audit::AuditEvent;
use crate::journal::{Done, JournalError, Ledger, KIND_ABANDONED};
use crate::ledger::index::{Applied, Change};
use crate::ledger::Serial;
use serde_json::json;

/// Why interrupted work cannot be settled: the ledger (or its journal)
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The ledger index failed.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Intents burned: signed or not, never released.
    pub abandoned: Vec<Serial>,
    /// Pending intents of other instances, left to them.
    pub others_pending: usize,
}

/// The kind of entry every start writes first.
pub const START_KIND: &str = "config_loaded";

/// Burns every intent `instance` left pending when it last stopped (and
/// those written before intents named their instance). Another instance's
/// pending intents are its own to settle: they are counted, not touched.
pub fn recover_interrupted(
    ledger: &dyn Ledger,
    instance: &str,
) -> Result<Recovered, RecoveryError> {
    let mut done = Recovered::default();
    for (serial, record) in ledger.pending_intents()? {
        if !record.intent.instance.is_empty() && record.intent.instance != instance {
            done.others_pending += 1;
            continue;
        }
        let change = Change::Abandoned {
            serial,
            reason: "interrupted: the daemon stopped before the certificate was recorded".into(),
        };
        let event = AuditEvent::new(KIND_ABANDONED, "certd")
            .certifier(record.intent.certifier.clone())
            .detail(json!({ "ra": record.intent.ra }));
        match ledger.change(change, event)? {
            Done::Change(Applied::Done, _) => {}
            Done::Change(Applied::Refused(e), _) => return Err(e.into()),
            other => {
                return Err(crate::ledger::LedgerError::Corrupt(format!(
                    "unexpected answer of the ledger: {other:?}"
                ))
                .into())
            }
        }
        tracing::warn!(serial = %serial.to_hex(), "abandoned a serial reserved before the last stop");
        done.abandoned.push(serial);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::journal::{Journal, KIND_INTENT, KIND_ISSUED};
    use crate::ledger::{Intent, RecordState, SERIAL_LEN};
    use std::sync::Arc;

    fn serial(n: u8) -> Serial {
        let mut bytes = [0u8; SERIAL_LEN];
        bytes[15] = n;
        Serial::from_bytes(bytes).expect("serial")
    }

    fn intent() -> Intent {
        Intent {
            certifier: "ca1".into(),
            ra: "ra1".into(),
            request_id: None,
            tbs_sha256: [1; 32],
            profile: "p".into(),
            created: 0,
            approval: None,
            instance: String::new(),
            spki_sha256: None,
        }
    }

    #[test]
    fn pending_intents_are_burned_and_issued_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || {
            Journal::open(
                &dir.path().join("audit.log"),
                &dir.path().join("index.redb"),
                Arc::new(SystemClock),
            )
            .expect("journal")
            .0
        };
        let j = open();
        for n in [1, 2] {
            j.change(
                Change::Intent {
                    serial: serial(n),
                    intent: intent(),
                    claim: None,
                },
                AuditEvent::new(KIND_INTENT, "ra1"),
            )
            .expect("intent");
        }
        j.change(
            Change::Issued {
                serial: serial(1),
                der: crate::testing::certificate_der(),
                not_after: 2_000_000_000,
                at: 1,
            },
            AuditEvent::new(KIND_ISSUED, "ra1").certifier("ca1"),
        )
        .expect("issued");
        drop(j);

        let j = open();
        let done = recover_interrupted(&j, "here").expect("recover");
        assert_eq!(done.abandoned, vec![serial(2)]);
        let state = |n| j.get(&serial(n)).expect("get").map(|r| r.state);
        assert_eq!(state(1), Some(RecordState::Issued));
        assert_eq!(state(2), Some(RecordState::Abandoned));
        assert!(j.pending_intents().expect("pending").is_empty());
        // Nothing left for the next start.
        assert!(recover_interrupted(&j, "here")
            .expect("again")
            .abandoned
            .is_empty());
        let text = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit");
        let abandoned: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .filter(|e: &serde_json::Value| e["kind"] == KIND_ABANDONED)
            .collect();
        assert_eq!(abandoned.len(), 1, "{abandoned:#?}");
        assert_eq!(abandoned[0]["detail"]["serial"], serial(2).to_hex());
        assert_eq!(abandoned[0]["detail"]["ra"], "ra1");
    }

    /// Several instances may share a ledger one day: each start settles
    /// its own instance's intents (and those from before instances were
    /// recorded), never another's.
    #[test]
    fn only_this_instances_intents_are_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, _) = Journal::open(
            &dir.path().join("audit.log"),
            &dir.path().join("index.redb"),
            Arc::new(SystemClock),
        )
        .expect("journal");
        for (n, instance) in [(1, "here"), (2, "there"), (3, "")] {
            j.change(
                Change::Intent {
                    serial: serial(n),
                    intent: Intent {
                        instance: instance.into(),
                        ..intent()
                    },
                    claim: None,
                },
                AuditEvent::new(KIND_INTENT, "ra1"),
            )
            .expect("intent");
        }
        let done = recover_interrupted(&j, "here").expect("recover");
        assert_eq!(done.abandoned, vec![serial(1), serial(3)]);
        assert_eq!(done.others_pending, 1);
        let pending: Vec<_> = j.pending_intents().expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].0, serial(2));
        assert_eq!(pending[0].1.intent.instance, "there");
        // The instance is in the intent's audit entry, from which the
        // journal rebuilds the index.
        let text = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit");
        let instances: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
            .filter(|e| e["kind"] == KIND_INTENT)
            .map(|e| e["detail"]["instance"].clone())
            .collect();
        assert_eq!(
            instances,
            [
                serde_json::json!("here"),
                serde_json::json!("there"),
                serde_json::Value::Null
            ]
        );
    }
}
