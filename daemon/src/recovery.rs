//! Start-up recovery of issuances a stop interrupted.
//!
//! An issuance makes three things durable, in this order: the intent (in
//! the ledger), the `issued` audit entry carrying the signed certificate,
//! and the certificate in the ledger. A crash can leave an intent with or
//! without its `issued` entry. With it, the certificate was signed and
//! audited (and perhaps even answered, if only the ledger write was lost),
//! so the ledger is completed from the audit entry; without it, nothing was
//! ever released, and the serial is burned. Either way the ledger and the
//! audit log agree afterwards, and no serial is ever used twice.

use crate::audit::{self, AuditEvent, AuditLog, AuditRecord};
use crate::ledger::{Ledger, LedgerRecord, Serial};
use base64::Engine;
use der::{Decode, Encode};
use serde_json::json;
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use x509_cert::Certificate;

/// Why interrupted work cannot be settled: the ledger or the audit log
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Intents completed from their `issued` audit entry.
    pub completed: Vec<Serial>,
    /// Intents burned: never signed, or signed but never audited.
    pub abandoned: Vec<Serial>,
}

/// The kind of entry every start writes first; the intents a start finds
/// were all made after the previous start wrote it, so the search of the
/// audit log stops there.
pub const START_KIND: &str = "config_loaded";

/// Resolves every intent left pending by the last stop. Runs before the
/// start writes its own [`START_KIND`] entry.
pub fn recover_interrupted(
    ledger: &dyn Ledger,
    log: &AuditLog,
) -> Result<Recovered, RecoveryError> {
    let pending = ledger.pending_intents()?;
    resolve(ledger, log, pending, true)
}

/// While running: completes intents older than `min_age_secs` whose
/// `issued` entry is in the audit log — issuances whose last ledger write
/// failed (a full disk, say) after the certificate was signed and audited,
/// so that a retry of the same `request_id` gets the certificate. Never
/// abandons anything (a slow issuance may still be under way); what it
/// cannot complete goes into `skip`, and start-up recovery settles it.
/// `now` is the time in Unix seconds.
pub fn complete_stale(
    ledger: &dyn Ledger,
    log: &AuditLog,
    now: i64,
    min_age_secs: i64,
    skip: &mut HashSet<Serial>,
) -> Result<Recovered, RecoveryError> {
    let stale: Vec<(Serial, LedgerRecord)> = ledger
        .pending_intents()?
        .into_iter()
        .filter(|(s, r)| r.intent.created <= now - min_age_secs && !skip.contains(s))
        .collect();
    if stale.is_empty() {
        return Ok(Recovered::default());
    }
    let all: Vec<Serial> = stale.iter().map(|(s, _)| *s).collect();
    let done = resolve(ledger, log, stale, false)?;
    skip.extend(all.into_iter().filter(|s| !done.completed.contains(s)));
    Ok(done)
}

/// Writes the audit entry of every revocation (older than `min_age_secs`)
/// that is in the ledger but whose `revoked` entry never became durable —
/// the audit write failed (a full disk) or the daemon stopped in between.
/// A revocation thus always ends up in the audit log. `now` is the time in
/// Unix seconds.
pub fn settle_revocations(
    ledger: &dyn Ledger,
    log: &AuditLog,
    now: i64,
    min_age_secs: i64,
) -> Result<usize, RecoveryError> {
    let unaudited: Vec<(Serial, LedgerRecord)> = ledger
        .unaudited_revocations()?
        .into_iter()
        .filter(|(_, r)| r.revoked_at.is_some_and(|t| t <= now - min_age_secs))
        .collect();
    if unaudited.is_empty() {
        return Ok(0);
    }
    let mut open: HashSet<String> = unaudited.iter().map(|(s, _)| s.to_hex()).collect();
    let mut audited: HashSet<String> = HashSet::new();
    audit::scan_back(log.path(), |entry| {
        if entry.kind == START_KIND {
            return ControlFlow::Break(());
        }
        if entry.kind == "revoked" {
            if let Some(serial) = entry.detail["serial"].as_str() {
                if open.remove(serial) {
                    audited.insert(serial.to_string());
                }
            }
        }
        if open.is_empty() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let mut written = 0;
    for (serial, record) in &unaudited {
        if !audited.contains(&serial.to_hex()) {
            let reason = certd_api::REVOCATION_REASONS
                .iter()
                .find(|(_, c)| Some(*c) == record.revocation_reason)
                .map_or("unspecified", |(n, _)| *n);
            // Under the RA that asked for it; "certd" only for records
            // written before the ledger kept that.
            let actor = record.revoked_by.as_deref().unwrap_or("certd");
            log.append(
                AuditEvent::new("revoked", actor)
                    .certifier(record.intent.certifier.clone())
                    .detail(json!({
                        "serial": serial.to_hex(),
                        "reason": reason,
                        "revoked_at": crate::clock::rfc3339(record.revoked_at.unwrap_or_default()),
                        "ra": record.intent.ra,
                        "recovered": "the revocation is in the ledger but its audit entry could not be written at the time",
                    })),
            )?;
            tracing::warn!(serial = %serial.to_hex(), "wrote the missing audit entry of a revocation");
            written += 1;
        }
        ledger.mark_revocation_audited(serial)?;
    }
    Ok(written)
}

/// Completes each of `pending` from its `issued` audit entry (looking back
/// no further than the last [`START_KIND`] entry) and, when `abandon_rest`,
/// burns the others.
fn resolve(
    ledger: &dyn Ledger,
    log: &AuditLog,
    pending: Vec<(Serial, LedgerRecord)>,
    abandon_rest: bool,
) -> Result<Recovered, RecoveryError> {
    let mut done = Recovered::default();
    if pending.is_empty() {
        return Ok(done);
    }
    let mut open: HashMap<String, LedgerRecord> = pending
        .iter()
        .map(|(s, r)| (s.to_hex(), r.clone()))
        .collect();
    let mut signed: HashMap<String, Vec<u8>> = HashMap::new();
    audit::scan_back(log.path(), |entry| {
        if entry.kind == START_KIND {
            return ControlFlow::Break(());
        }
        let Some(serial) = entry.detail["serial"].as_str() else {
            return ControlFlow::Continue(());
        };
        let Some(record) = open.get(serial) else {
            return ControlFlow::Continue(());
        };
        match entry.kind.as_str() {
            "issued" => {
                if let Some(der) = certificate_of(&entry, record) {
                    signed.insert(serial.to_string(), der);
                    open.remove(serial);
                }
            }
            // Written before signing: nothing older can be about it.
            "issuance_intent" => {
                open.remove(serial);
            }
            _ => {}
        }
        if open.is_empty() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;

    let mut last_ticket = None;
    for (serial, record) in pending {
        let event = match signed.remove(&serial.to_hex()) {
            Some(der) => {
                let not_after = Certificate::from_der(&der)
                    .map(|c| crate::x509::unix_of(&c.tbs_certificate().validity().not_after))
                    .unwrap_or_default();
                ledger.record_issued(&serial, &der, not_after)?;
                tracing::warn!(serial = %serial.to_hex(), "completed an interrupted issuance from its audit entry");
                done.completed.push(serial);
                AuditEvent::new("issuance_completed", "certd")
                    .certifier(record.intent.certifier.clone())
                    .detail(json!({
                        "serial": serial.to_hex(),
                        "ra": record.intent.ra,
                        "reason": "signed and audited, but not stored; stored from the audit log",
                    }))
            }
            None if abandon_rest => {
                ledger.record_abandoned(
                    &serial,
                    "interrupted: the daemon stopped before signing completed",
                )?;
                tracing::warn!(serial = %serial.to_hex(), "abandoned a serial reserved before the last stop");
                done.abandoned.push(serial);
                AuditEvent::new("intent_abandoned", "certd")
                    .certifier(record.intent.certifier.clone())
                    .detail(json!({
                        "serial": serial.to_hex(),
                        "ra": record.intent.ra,
                        "reason": "recovered after restart",
                    }))
            }
            None => continue,
        };
        last_ticket = Some(log.append_deferred(event)?.1);
    }
    if let Some(ticket) = last_ticket {
        log.make_durable(ticket)?;
    }
    Ok(done)
}

/// The certificate an `issued` entry carries, if it is the one `record`
/// intended (same TBSCertificate, so same serial, names, key and validity).
fn certificate_of(entry: &AuditRecord, record: &LedgerRecord) -> Option<Vec<u8>> {
    let text = entry.detail["certificate"].as_str()?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    let cert = Certificate::from_der(&der).ok()?;
    let tbs = cert.tbs_certificate().to_der().ok()?;
    let digest: [u8; 32] = sha2::Sha256::digest(&tbs).into();
    (digest == record.intent.tbs_sha256).then_some(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::ledger::{Intent, IntentOutcome, RecordState, SledLedger};
    use std::sync::Arc;

    /// A self-signed certificate made by openssl, as DER.
    fn some_certificate(dir: &std::path::Path) -> Vec<u8> {
        let out = dir.join("c.der");
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=t"])
            .args(["-days", "1", "-outform", "DER", "-keyout"])
            .arg(dir.join("k.pem"))
            .arg("-out")
            .arg(&out)
            .output()
            .expect("run openssl");
        assert!(status.status.success(), "{status:?}");
        std::fs::read(out).expect("read certificate")
    }

    fn intent(tbs_sha256: [u8; 32]) -> Intent {
        Intent {
            certifier: "ca1".into(),
            ra: "ra1".into(),
            request_id: None,
            tbs_sha256,
            profile: "p".into(),
            created: 0,
            approval: None,
        }
    }

    /// Records the intent for serial `n`, as issuance does before signing.
    fn recorded(ledger: &SledLedger, n: u8, intent: Intent) -> Serial {
        let mut bytes = [0u8; crate::ledger::SERIAL_LEN];
        bytes[15] = n;
        let serial = Serial::from_bytes(bytes).expect("serial");
        assert_eq!(
            ledger.record_intent(&serial, intent, None).expect("intent"),
            IntentOutcome::Recorded
        );
        serial
    }

    fn event(kind: &str, serial: &Serial, certificate: Option<&[u8]>) -> AuditEvent {
        let mut detail = json!({ "serial": serial.to_hex() });
        if let Some(der) = certificate {
            detail["certificate"] = base64::engine::general_purpose::STANDARD.encode(der).into();
        }
        AuditEvent::new(kind, "ra1").detail(detail)
    }

    #[test]
    fn revocations_missing_from_the_audit_log_are_written_under_the_ra() {
        let dir = tempfile::tempdir().expect("tempdir");
        let der = some_certificate(dir.path());
        let ledger =
            SledLedger::open(&dir.path().join("ledger"), Arc::new(SystemClock)).expect("ledger");
        let log =
            AuditLog::open(&dir.path().join("audit.log"), Arc::new(SystemClock)).expect("audit");
        log.append(AuditEvent::new(START_KIND, "certd"))
            .expect("append");
        let mut serials = Vec::new();
        for n in 1..=2 {
            let serial = recorded(&ledger, n, intent([1; 32]));
            ledger.record_issued(&serial, &der, 10).expect("issue");
            ledger
                .record_revoked(&serial, 1, 20, "ra-revoker")
                .expect("revoke");
            serials.push(serial);
        }
        // The first one's entry was written; the second one's was not.
        log.append(
            AuditEvent::new("revoked", "ra-revoker")
                .detail(json!({ "serial": serials[0].to_hex(), "reason": "keyCompromise" })),
        )
        .expect("append");

        assert_eq!(
            settle_revocations(&ledger, &log, SystemClock.unix(), 0).expect("settle"),
            1
        );
        let text = std::fs::read_to_string(log.path()).expect("audit");
        let written: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .filter(|e: &serde_json::Value| e["kind"] == "revoked")
            .collect();
        assert_eq!(written.len(), 2, "{written:#?}");
        let late = &written[1];
        assert_eq!(late["detail"]["serial"], serials[1].to_hex());
        assert_eq!(late["actor"], "ra-revoker");
        assert_eq!(late["detail"]["reason"], "keyCompromise");
        assert!(ledger.unaudited_revocations().expect("list").is_empty());
        assert!(audit::verify(log.path()).expect("verify").is_ok());
        // Settled once: nothing the second time.
        assert_eq!(
            settle_revocations(&ledger, &log, SystemClock.unix(), 0).expect("settle"),
            0
        );
    }

    #[test]
    fn audited_intents_are_completed_and_the_rest_abandoned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let der = some_certificate(dir.path());
        let tbs = Certificate::from_der(&der)
            .expect("parse")
            .tbs_certificate()
            .to_der()
            .expect("tbs");
        let digest: [u8; 32] = sha2::Sha256::digest(&tbs).into();
        let ledger =
            SledLedger::open(&dir.path().join("ledger"), Arc::new(SystemClock)).expect("ledger");
        let log =
            AuditLog::open(&dir.path().join("audit.log"), Arc::new(SystemClock)).expect("audit");
        // Before the previous start: must not be looked at.
        let stale = recorded(&ledger, 1, intent(digest));
        log.append(event("issued", &stale, Some(&der)))
            .expect("append");
        log.append(AuditEvent::new(START_KIND, "certd"))
            .expect("append");
        // Signed and audited, ledger write lost.
        let audited = recorded(&ledger, 2, intent(digest));
        log.append(event("issuance_intent", &audited, None))
            .expect("append");
        // Intent only.
        let unsigned = recorded(&ledger, 3, intent(digest));
        log.append(event("issuance_intent", &unsigned, None))
            .expect("append");
        // An `issued` entry whose certificate is not the intended one.
        let mismatch = recorded(&ledger, 4, intent([7; 32]));
        log.append(event("issuance_intent", &mismatch, None))
            .expect("append");
        log.append(event("issued", &mismatch, Some(&der)))
            .expect("append");
        log.append(event("issued", &audited, Some(&der)))
            .expect("append");

        let done = recover_interrupted(&ledger, &log).expect("recover");
        assert_eq!(done.completed, vec![audited]);
        let mut abandoned = done.abandoned.clone();
        abandoned.sort();
        let mut want = vec![stale, unsigned, mismatch];
        want.sort();
        assert_eq!(abandoned, want);
        let record = ledger.get(&audited).expect("get").expect("present");
        assert_eq!(record.state, RecordState::Issued);
        assert_eq!(record.certificate_der.as_deref(), Some(der.as_slice()));
        assert!(ledger.pending_intents().expect("pending").is_empty());
        assert!(audit::verify(log.path()).expect("verify").is_ok());
        // Nothing left to do the second time.
        assert_eq!(
            recover_interrupted(&ledger, &log).expect("recover"),
            Recovered::default()
        );
    }
}
