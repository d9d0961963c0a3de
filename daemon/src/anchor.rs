//! Signed checkpoints of the audit log: the end of the log anchored with
//! a token signature, so that `verify-audit` notices a log cut short or
//! rewritten with recomputed hashes, which the hash chain alone cannot.
//!
//! A checkpoint is an `audit_checkpoint` entry holding a certifier key's
//! signature over the `seq` and `hash` of the newest entry before it. After
//! it is durable, `audit.anchor` in the state directory is replaced with
//! the checkpoint's own `seq` and `hash`, and the same is logged (so
//! journald keeps a copy outside the state directory). certd makes one
//! after every CRL, every `daemon.audit_checkpoint_secs` while entries are
//! being written, and before it stops.

use crate::audit::{Anchor, AuditEvent, KIND_CHECKPOINT};
use crate::certifier::Certifiers;
use crate::journal::Ledger;
use base64::Engine;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The anchor file of a state directory.
pub fn anchor_path(state_dir: &Path) -> PathBuf {
    state_dir.join("audit.anchor")
}

/// Writes checkpoints. Built once by the daemon.
pub struct Checkpointer {
    certifiers: Arc<Certifiers>,
    ledger: Arc<dyn Ledger>,
    anchor: PathBuf,
    /// `seq` of the entry the last checkpoint signed, and of that
    /// checkpoint; one checkpoint at a time.
    last: Mutex<(u64, u64)>,
    /// Told when the log's end is covered by a checkpoint.
    metrics: Arc<crate::metrics::Metrics>,
    clock: Arc<dyn crate::clock::Clock>,
}

/// What a checkpoint came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Written: the checkpoint entry's `seq` and `hash` (now the anchor).
    Written(Anchor),
    /// Nothing was written since the last checkpoint.
    Unchanged,
    /// No certifier is active to sign it.
    NoSigner,
}

impl Checkpointer {
    /// Checkpoints of `ledger`'s audit log, signed by the first active of
    /// `certifiers`, anchored in `state_dir`.
    pub fn new(
        certifiers: Arc<Certifiers>,
        ledger: Arc<dyn Ledger>,
        state_dir: &Path,
        metrics: Arc<crate::metrics::Metrics>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Self {
        Checkpointer {
            certifiers,
            ledger,
            anchor: anchor_path(state_dir),
            last: Mutex::new((0, 0)),
            metrics,
            clock,
        }
    }

    /// Signs the newest entry and records the checkpoint (blocking: the
    /// token signs, the journal syncs). `reason` is recorded with it.
    pub fn checkpoint(&self, reason: &str) -> Result<Checkpoint, String> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let (seq, hash) = self.ledger.last_entry();
        if seq == 0 || seq == last.0 || seq == last.1 {
            // Nothing since the last checkpoint: the end is still covered.
            self.metrics.checkpoint_current(self.clock.unix());
            return Ok(Checkpoint::Unchanged);
        }
        let Some((certifier, signer)) = self
            .certifiers
            .all()
            .iter()
            .find_map(|c| c.signer().ok().map(|s| (c.clone(), s)))
        else {
            return Ok(Checkpoint::NoSigner);
        };
        let message = crate::audit::checkpoint_message(seq, &hash);
        let signature = crate::hsm::sign_checked(signer.as_ref(), &message).map_err(|e| {
            format!(
                "certifier {:?} could not sign the audit checkpoint: {e}",
                certifier.name()
            )
        })?;
        let record = self
            .ledger
            .audit(
                AuditEvent::new(KIND_CHECKPOINT, "certd")
                    .certifier(certifier.name().to_string())
                    .detail(json!({
                        "signed_seq": seq,
                        "signed_hash": hash,
                        "signature": base64::engine::general_purpose::STANDARD.encode(&signature),
                        "reason": reason,
                    })),
            )
            .map_err(|e| format!("cannot write the audit checkpoint: {e}"))?;
        let anchor = Anchor {
            seq: record.seq,
            hash: record.hash,
        };
        anchor
            .write(&self.anchor)
            .map_err(|e| format!("cannot write {}: {e}", self.anchor.display()))?;
        *last = (seq, anchor.seq);
        self.metrics.checkpoint_current(self.clock.unix());
        tracing::info!(
            seq = anchor.seq,
            hash = %anchor.hash,
            signed_seq = seq,
            certifier = certifier.name(),
            reason,
            "audit checkpoint"
        );
        Ok(Checkpoint::Written(anchor))
    }
}

/// Verifies the audit log at `log` (the configured one when `None`) as
/// `certd verify-audit` does: the hash chain, every checkpoint's signature
/// under its certifier's key (from the certificates `config` names), and
/// the anchor beside the log.
pub fn verify_log(
    config: &crate::config::Config,
    log: Option<&Path>,
) -> Result<(PathBuf, crate::audit::VerifyReport), String> {
    use der::DecodePem;
    let log = log.map_or_else(
        || crate::audit::log_path(&config.daemon.state_dir),
        Path::to_path_buf,
    );
    let mut keys = std::collections::HashMap::new();
    for c in &config.certifiers {
        let pem = std::fs::read(&c.certificate)
            .map_err(|e| format!("certifier {:?}: {}: {e}", c.name, c.certificate.display()))?;
        let cert = x509_cert::Certificate::from_pem(&pem)
            .map_err(|e| format!("certifier {:?}: {}: {e}", c.name, c.certificate.display()))?;
        let spki = cert.tbs_certificate().subject_public_key_info().clone();
        let key_type = crate::hsm::KeyType::of_spki(&spki)
            .map_err(|e| format!("certifier {:?}: {e}", c.name))?;
        keys.insert(c.name.clone(), (spki, key_type));
    }
    let verifier = |certifier: &str, message: &[u8], signature: &[u8]| {
        let (spki, key_type) = keys
            .get(certifier)
            .ok_or_else(|| format!("certifier {certifier:?} is not in the configuration"))?;
        crate::hsm::verify::verify(spki, *key_type, message, signature)
    };
    let anchor_file = log
        .parent()
        .map_or_else(|| PathBuf::from("audit.anchor"), anchor_path);
    let anchor = Anchor::read(&anchor_file).map_err(|e| e.to_string())?;
    let report = crate::audit::verify_anchored(&log, &verifier, anchor.as_ref())
        .map_err(|e| format!("cannot verify {}: {e}", log.display()))?;
    Ok((log, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditRecord, BreakKind};
    use crate::testing::{csr, TestCa};

    const PROFILE: &str =
        "[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n";

    fn entries(path: &Path) -> Vec<AuditRecord> {
        std::fs::read_to_string(path)
            .expect("log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("entry"))
            .collect()
    }

    fn write_entries(path: &Path, records: &[AuditRecord]) {
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r).expect("json"));
            text.push('\n');
        }
        std::fs::write(path, text).expect("write");
    }

    /// A copy of the state directory's log and anchor, changed by `f`,
    /// verified as `certd verify-audit` does.
    fn verify_changed(
        ca: &TestCa,
        f: impl FnOnce(&mut Vec<AuditRecord>),
    ) -> crate::audit::VerifyReport {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("audit.log");
        let mut records = entries(&crate::audit::log_path(ca.state_dir()));
        f(&mut records);
        write_entries(&log, &records);
        std::fs::copy(anchor_path(ca.state_dir()), anchor_path(dir.path())).expect("anchor");
        verify_log(&ca.services.config, Some(&log))
            .expect("verifies")
            .1
    }

    #[test]
    fn checkpoints_anchor_the_end_so_a_cut_or_a_rewrite_fails() {
        let ca = TestCa::new(
            PROFILE,
            "profiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]",
        );
        for n in 0..3u8 {
            let req = certd_api::IssueRequest::new(
                format!("r{n}"),
                "tls-server",
                csr(0x50 + n, "www.example.com"),
            );
            ca.services
                .issuer
                .issue_blocking(&ca.grant(), &req)
                .expect("issued");
        }
        let cp = &ca.services.checkpoints;
        let Checkpoint::Written(first) = cp.checkpoint("test").expect("checkpoint") else {
            panic!("no checkpoint written")
        };
        assert_eq!(cp.checkpoint("test"), Ok(Checkpoint::Unchanged));
        let req = certd_api::IssueRequest::new("r9", "tls-server", csr(0x59, "www.example.com"));
        ca.services
            .issuer
            .issue_blocking(&ca.grant(), &req)
            .expect("issued");
        let Checkpoint::Written(anchor) = cp.checkpoint("test").expect("checkpoint") else {
            panic!("no second checkpoint")
        };
        assert!(anchor.seq > first.seq);
        assert_eq!(
            Anchor::read(&anchor_path(ca.state_dir())).expect("read"),
            Some(anchor.clone())
        );

        // Untouched: verifies, both checkpoints checked.
        let (_, report) = verify_log(&ca.services.config, None).expect("verifies");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(
            (report.checkpoints, report.last_checkpoint),
            (2, Some(anchor.seq))
        );

        // Cut off after the first checkpoint: the chain is intact, the
        // anchor says it was longer; the last good entry is named.
        let report = verify_changed(&ca, |r| r.truncate(first.seq as usize));
        let broken = report.first_broken.expect("a cut log fails");
        assert_eq!(broken.kind, BreakKind::Truncated);
        assert!(
            broken
                .reason
                .contains(&format!("ends at entry {}", first.seq)),
            "{}",
            broken.reason
        );

        // Rewritten from entry 2 on with recomputed hashes (an issued
        // certificate's subject changed): the chain is intact, the first
        // checkpoint's signature is over the old hashes.
        let report = verify_changed(&ca, |r| {
            r[1].actor = "someone-else".into();
            for i in 1..r.len() {
                r[i].prev = r[i - 1].hash.clone();
                r[i].hash = r[i].compute_hash().expect("hash");
            }
        });
        let broken = report.first_broken.expect("a rewritten log fails");
        assert_eq!(broken.kind, BreakKind::BadCheckpoint);
        assert_eq!(broken.seq, Some(first.seq));

        // A checkpoint whose signature is not the token's.
        let report = verify_changed(&ca, |r| {
            let i = (first.seq - 1) as usize;
            r[i].detail["signature"] = serde_json::json!("AAAA");
            r[i].hash = r[i].compute_hash().expect("hash");
            for j in i + 1..r.len() {
                r[j].prev = r[j - 1].hash.clone();
                r[j].hash = r[j].compute_hash().expect("hash");
            }
        });
        let broken = report.first_broken.expect("a forged checkpoint fails");
        assert_eq!(broken.kind, BreakKind::BadCheckpoint);
        assert!(broken.reason.contains("signature"), "{}", broken.reason);
    }
}
