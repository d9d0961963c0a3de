//! Certificates as an RA sees them: one by its serial, or a filtered page
//! of them. An RA sees the certificates it asked for, or all of them when
//! its grant says `read_all`.

use crate::clock::{self, rfc3339};
use crate::journal::Ledger;
use crate::ledger::{LedgerRecord, RecordState, Serial, Summary};
use crate::policy::Grant;
use crate::x509;
use certd_api::{ApiError, CertStatus, CertificateInfo, CertificateList, ErrorCode};
use der::Decode;
use std::ops::ControlFlow;
use std::sync::Arc;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// Filters of a listing, as the query string of `GET /v1/certificates`
/// carries them. Unknown filters are refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `valid` or `revoked`.
    pub status: Option<String>,
    /// The profile issued under.
    pub profile: Option<String>,
    /// The certifier that signed.
    pub certifier: Option<String>,
    /// Text the subject contains.
    pub subject: Option<String>,
    /// An email SAN (any case).
    pub email: Option<String>,
    /// A DNS SAN.
    pub dns: Option<String>,
    /// The RA that asked for it.
    pub ra: Option<String>,
    /// notAfter before this RFC 3339 time.
    pub expires_before: Option<String>,
    /// notAfter after this RFC 3339 time.
    pub expires_after: Option<String>,
    /// Serial the page starts after (the `next` of the previous page).
    pub after: Option<String>,
    /// Page size: 100 unless given, 1 to 1000.
    pub limit: Option<usize>,
}

/// Look-ups and listings over the ledger. Built once by the daemon.
pub struct Lookup {
    ledger: Arc<dyn Ledger>,
}

impl Lookup {
    /// Look-ups in `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>) -> Lookup {
        Lookup { ledger }
    }

    /// The certificate with `serial`, if RA `grant` may see it.
    pub fn get(&self, grant: &Grant, serial: &str) -> Result<CertificateInfo, ApiError> {
        let (serial, record) = find(self.ledger.as_ref(), grant, serial)?;
        certificate_info(&serial, &record)
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "stored certificate does not decode"))
    }

    /// One page of the certificates RA `grant` may see that pass the
    /// filters of `q`, in serial order.
    pub fn list(&self, grant: &Grant, q: &ListQuery) -> Result<CertificateList, ApiError> {
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        let status = match q.status.as_deref() {
            None => None,
            Some("valid") => Some(CertStatus::Valid),
            Some("revoked") => Some(CertStatus::Revoked),
            Some(other) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("status {other:?}: use valid or revoked"),
                ))
            }
        };
        let parse_time = |v: &Option<String>| -> Result<Option<i64>, ApiError> {
            v.as_ref()
                .map(|t| {
                    clock::parse_rfc3339(t)
                        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("{t:?}: {e}")))
                })
                .transpose()
        };
        let (before, after_t) = (
            parse_time(&q.expires_before)?,
            parse_time(&q.expires_after)?,
        );
        let cursor = q.after.as_deref().map(parse_serial).transpose()?;
        // An RA that sees only its own certificates pages through the
        // per-RA index: its page costs its own records, not everyone's.
        let scope = if grant.config.read_all {
            q.ra.as_deref()
        } else {
            Some(grant.name())
        };
        let mut chosen: Vec<(Serial, LedgerRecord)> = Vec::new();
        let mut next = None;
        let mut failed = None;
        let mut visit = |serial: Serial, mut record: LedgerRecord| {
            let status_of = match record.state {
                RecordState::Issued => CertStatus::Valid,
                RecordState::Revoked => CertStatus::Revoked,
                _ => return ControlFlow::Continue(()),
            };
            if !visible(grant, &record)
                || q.certifier
                    .as_ref()
                    .is_some_and(|c| *c != record.intent.certifier)
                || q.profile
                    .as_ref()
                    .is_some_and(|p| *p != record.intent.profile)
                || q.ra.as_ref().is_some_and(|r| *r != record.intent.ra)
                || status.is_some_and(|st| st != status_of)
            {
                return ControlFlow::Continue(());
            }
            // Records written before summaries were kept get one from their
            // certificate.
            if record.summary.is_none() {
                match self.ledger.certificate(&serial) {
                    Ok(Some(der)) => record.summary = Summary::of_certificate(&der),
                    Ok(None) => {}
                    Err(e) => {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            let Some(summary) = record.summary.as_ref() else {
                return ControlFlow::Continue(());
            };
            let not_after = record.not_after.unwrap_or_default();
            let keep = q
                .subject
                .as_ref()
                .is_none_or(|t| summary.subject.contains(t.as_str()))
                && q.email
                    .as_ref()
                    .is_none_or(|e| summary.emails.iter().any(|x| x.eq_ignore_ascii_case(e)))
                && q.dns
                    .as_ref()
                    .is_none_or(|d| summary.dns.iter().any(|x| x == d))
                && before.is_none_or(|b| not_after < b)
                && after_t.is_none_or(|a| not_after > a);
            if !keep {
                return ControlFlow::Continue(());
            }
            if chosen.len() == limit {
                next = chosen.last().map(|(s, _)| s.to_hex());
                return ControlFlow::Break(());
            }
            chosen.push((serial, record));
            ControlFlow::Continue(())
        };
        self.ledger
            .visit_records(cursor.as_ref(), scope, &mut visit)
            .map_err(|e| e.api_error())?;
        if let Some(e) = failed {
            return Err(e.api_error());
        }
        // Certificates are read for the page only.
        let mut items = Vec::with_capacity(chosen.len());
        for (serial, mut record) in chosen {
            record.certificate_der = self
                .ledger
                .certificate(&serial)
                .map_err(|e| e.api_error())?;
            if let Some(info) = certificate_info(&serial, &record) {
                items.push(info);
            }
        }
        Ok(CertificateList { items, next })
    }
}

/// A serial as hex: the API's 32 digits, or the integer as tools print it
/// (leading zeros dropped, or colon-separated bytes as `openssl x509 -text`
/// shows them).
pub fn parse_serial(s: &str) -> Result<Serial, ApiError> {
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    let padded = if !digits.is_empty() && digits.len() < 32 {
        format!("{digits:0>32}")
    } else {
        digits
    };
    Serial::from_hex(&padded.to_ascii_lowercase()).map_err(|_| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no certificate with serial {s:?}"),
        )
    })
}

/// Whether `grant` lets its RA see `record`: its own, or all with `read_all`.
fn visible(grant: &Grant, record: &LedgerRecord) -> bool {
    grant.config.read_all || record.intent.ra == grant.name()
}

/// The API's view of a ledger record (issued or revoked only).
pub fn certificate_info(serial: &Serial, record: &LedgerRecord) -> Option<CertificateInfo> {
    let status = match record.state {
        RecordState::Issued => CertStatus::Valid,
        RecordState::Revoked => CertStatus::Revoked,
        _ => return None,
    };
    let der = record.certificate_der.as_deref()?;
    let cert = Certificate::from_der(der).ok()?;
    let tbs = cert.tbs_certificate();
    let mut emails = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
        for gn in san.0 {
            match gn {
                GeneralName::Rfc822Name(e) => emails.push(e.as_str().to_string()),
                GeneralName::DnsName(d) => dns.push(d.as_str().to_string()),
                _ => {}
            }
        }
    }
    Some(CertificateInfo {
        serial: serial.to_hex(),
        status,
        certifier: record.intent.certifier.clone(),
        profile: record.intent.profile.clone(),
        ra: record.intent.ra.clone(),
        subject: tbs.subject().to_string(),
        emails,
        dns,
        not_before: rfc3339(x509::unix_of(&tbs.validity().not_before)),
        not_after: rfc3339(x509::unix_of(&tbs.validity().not_after)),
        certificate: x509::cert_pem(der),
        revoked_at: record.revoked_at.map(rfc3339),
        revocation_reason: record
            .revocation_reason
            .and_then(certd_api::reason_name)
            .map(str::to_string),
        approval: record
            .intent
            .approval
            .as_ref()
            .and_then(|a| serde_json::from_value(a.clone()).ok()),
    })
}

/// The record of `serial` (as [`parse_serial`] reads it), if it was issued
/// and RA `grant` may see it; `not_found` otherwise, whether or not it
/// exists, so an RA learns nothing of certificates it may not see.
pub fn find(
    ledger: &dyn Ledger,
    grant: &Grant,
    serial: &str,
) -> Result<(Serial, LedgerRecord), ApiError> {
    let serial = parse_serial(serial)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no certificate with serial {}", serial.to_hex()),
        )
    };
    let record = ledger
        .get(&serial)
        .map_err(|e| e.api_error())?
        .ok_or_else(not_found)?;
    if !visible(grant, &record)
        || !matches!(record.state, RecordState::Issued | RecordState::Revoked)
    {
        return Err(not_found());
    }
    Ok((serial, record))
}
