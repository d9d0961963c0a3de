//! Revocation: an RA whose grant allows it revokes a certificate it may
//! see, with an RFC 5280 reason. The ledger records it (and who did it)
//! with its audit entry, in one durable write, and the certifier's CRL is
//! remade.

use crate::audit::AuditEvent;
use crate::clock::Clock;
use crate::crl::CrlService;
use crate::journal::{Done, Ledger, KIND_REVOKED};
use crate::ledger::index::{Applied, Change};
use crate::ledger::{LedgerError, RecordState};
use crate::lookup::{self, certificate_info};
use crate::policy::Grant;
use certd_api::{ApiError, CertificateInfo, ErrorCode, RevokeRequest};
use serde_json::json;
use std::sync::Arc;

/// Revokes certificates. Built once by the daemon.
pub struct Revoker {
    ledger: Arc<dyn Ledger>,
    crl: Arc<CrlService>,
    clock: Arc<dyn Clock>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Revoker {
    /// Revocations recorded in `ledger` at `clock`'s time, each asking
    /// `crl` for a new CRL.
    pub fn new(
        ledger: Arc<dyn Ledger>,
        crl: Arc<CrlService>,
        clock: Arc<dyn Clock>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Revoker {
        Revoker {
            ledger,
            crl,
            clock,
            metrics,
        }
    }

    /// Revokes the certificate with `serial` for RA `grant`; the answer is
    /// the certificate as it stands afterwards.
    pub fn revoke(
        &self,
        grant: &Grant,
        serial: &str,
        req: &RevokeRequest,
    ) -> Result<CertificateInfo, ApiError> {
        if !grant.config.may_revoke {
            return Err(ApiError::new(
                ErrorCode::NotAuthorized,
                format!("RA {:?} may not revoke certificates", grant.name()),
            ));
        }
        let code = certd_api::reason_code(&req.reason).ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "unknown revocation reason {:?}; use one of: {}",
                    req.reason,
                    certd_api::REVOCATION_REASONS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let (serial, record) = lookup::find(self.ledger.as_ref(), grant, serial)?;
        // `read_all` lets an RA read outside its grant, never revoke there:
        // besides its own certificates, only those of a certifier and a
        // profile it is granted.
        let own = record.intent.ra == grant.name();
        let granted = grant.config.certifiers.contains(&record.intent.certifier)
            && grant.config.profiles.contains(&record.intent.profile);
        if !own && !granted {
            return Err(ApiError::new(
                ErrorCode::NotAuthorized,
                format!(
                    "RA {:?} may read {} but not revoke it: it was issued by certifier {:?} under profile {:?}, outside this RA's grant",
                    grant.name(),
                    serial.to_hex(),
                    record.intent.certifier,
                    record.intent.profile
                ),
            ));
        }
        if record.state == RecordState::Revoked {
            return Err(ApiError::new(
                ErrorCode::AlreadyRevoked,
                format!("{} is already revoked", serial.to_hex()),
            ));
        }
        let change = Change::Revoked {
            serial,
            reason: code,
            at: self.clock.unix(),
            by: grant.name().to_string(),
        };
        let event = AuditEvent::new(KIND_REVOKED, grant.name())
            .certifier(record.intent.certifier.clone())
            .detail(json!({}));
        let already = || {
            ApiError::new(
                ErrorCode::AlreadyRevoked,
                format!("{} is already revoked", serial.to_hex()),
            )
        };
        match self
            .ledger
            .change(change, event)
            .map_err(|e| e.api_error())?
        {
            Done::Change(Applied::Done, _) => {}
            Done::Change(Applied::Refused(LedgerError::InvalidState { .. }), _) => {
                return Err(already())
            }
            Done::Change(Applied::Refused(e), _) => return Err(e.api_error()),
            other => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("unexpected answer of the ledger: {other:?}"),
                ))
            }
        }
        // In effect from here on: the CRL is remade.
        self.metrics
            .revocation(&record.intent.certifier, &req.reason);
        self.crl.trigger(&record.intent.certifier);
        let record = self
            .ledger
            .get(&serial)
            .map_err(|e| e.api_error())?
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "record vanished"))?;
        certificate_info(&serial, &record)
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "stored certificate does not decode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;
    use crate::testing::{csr, TestCa};
    use certd_api::{CertStatus, IssueRequest};
    use std::time::Duration;

    const TLS_SERVER: &str =
        "[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n";
    const GRANT: &str =
        "profiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]\nmay_revoke = true";

    fn key_compromise() -> RevokeRequest {
        RevokeRequest {
            reason: "keyCompromise".into(),
        }
    }

    /// The revocation time is the daemon's clock's; the revocation is
    /// audited, and a second one is refused.
    #[test]
    fn a_revocation_is_timed_by_the_clock_audited_and_done_once() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let req = IssueRequest::new("r1", "tls-server", csr(0x22, "www.example.com"));
        let issued = ca
            .services
            .issuer
            .issue_blocking(&ca.grant(), &req)
            .expect("issued");
        ca.clock.advance(Duration::from_secs(3_600));
        let revoker = &ca.services.revoker;
        let info = revoker
            .revoke(&ca.grant(), &issued.serial, &key_compromise())
            .expect("revoked");
        assert_eq!(info.status, CertStatus::Revoked);
        assert_eq!(info.revoked_at, Some(rfc3339(ca.clock.unix())));
        assert_eq!(info.revocation_reason.as_deref(), Some("keyCompromise"));
        assert_eq!(ca.audit_kinds(), ["issuance_intent", "issued", "revoked"]);
        let again = revoker
            .revoke(&ca.grant(), &issued.serial, &key_compromise())
            .expect_err("revoked already");
        assert_eq!(again.code, ErrorCode::AlreadyRevoked);
    }
}
