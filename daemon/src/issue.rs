//! The issuance pipeline, in the order of the design document:
//! authorise, idempotency, CSR, names, build from the profile, lint,
//! durable intent, sign and verify, store, audit, respond.
//!
//! Everything here is blocking (token and ledger I/O); the HTTP layer runs
//! it on the blocking pool. The ledger records the intent before the token
//! signs and the certificate before the answer: two durable writes, each
//! carrying its own audit entry (see `journal`).

use crate::approval;
use crate::audit::AuditEvent;
use crate::certgen::{self, LeafSpec};
use crate::certifier::{Certifier, Certifiers};
use crate::clock::{self, rfc3339, Clock};
use crate::config::DaemonConfig;
use crate::csr;
use crate::hsm::pool::SigningPool;
use crate::hsm::HsmError;
use crate::journal::{Done, JournalError, Ledger, KIND_FAILED, KIND_INTENT, KIND_ISSUED};
use crate::ledger::index::{Applied, Change, Claim};
use crate::ledger::{Intent, IntentOutcome, LedgerError, LedgerRecord, RecordState, Serial};
use crate::lint::{self, LintContext};
use crate::policy::{self, Grant, LivePolicy, Names, SubjectFields};
use crate::rate_limit::RateLimiter;
use crate::x509;
use certd_api::{ApiError, ErrorCode, IssueRequest, IssueResponse};
use der::{Decode, Encode};
use serde_json::json;
use sha2::Digest;
use std::path::PathBuf;
use std::sync::Arc;
use x509_cert::builder::Builder;
use x509_cert::Certificate;

/// How many fresh serials one request draws before giving up. With 127
/// random bits even one collision means the random number generator is
/// broken, so a few draws are plenty.
const SERIAL_DRAWS: usize = 4;

/// The issuance pipeline with everything it works with: the policy in
/// force, the certifiers, the ledger (with its audit log), the clock, the
/// RAs' rate budgets and the free-space guard. Built once by the daemon.
pub struct Issuer {
    policy: Arc<LivePolicy>,
    certifiers: Arc<Certifiers>,
    ledger: Arc<dyn Ledger>,
    signing: Arc<SigningPool>,
    clock: Arc<dyn Clock>,
    limiter: Arc<RateLimiter>,
    free_space: FreeSpaceGuard,
    /// This certd's `daemon.instance`, recorded in its intents.
    instance: String,
    /// Issuance outcomes and signing latency.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Issuer {
    /// The pipeline over these parts; `daemon` gives the state directory
    /// whose free space is guarded and the minimum.
    #[allow(clippy::too_many_arguments)] // one per service the pipeline uses
    pub fn new(
        policy: Arc<LivePolicy>,
        certifiers: Arc<Certifiers>,
        ledger: Arc<dyn Ledger>,
        signing: Arc<SigningPool>,
        clock: Arc<dyn Clock>,
        limiter: Arc<RateLimiter>,
        daemon: &DaemonConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Issuer {
        Issuer {
            policy,
            certifiers,
            ledger,
            signing,
            clock,
            limiter,
            instance: daemon.instance.clone(),
            metrics,
            free_space: FreeSpaceGuard {
                dir: daemon.state_dir.clone(),
                min_free_mib: daemon.min_free_mib,
            },
        }
    }

    /// Runs the whole pipeline for one request from RA `grant`. The checks
    /// and the building run on the calling task; the ledger's writes and
    /// the token's signature are awaited, holding no thread.
    pub async fn issue(
        &self,
        grant: &Grant,
        req: &IssueRequest,
    ) -> Result<IssueResponse, ApiError> {
        self.issue_drawing(grant, req, &mut Serial::random).await
    }

    /// [`Issuer::issue_drawing`] for tests that are not async themselves.
    #[cfg(test)]
    pub(crate) fn issue_drawing_blocking(
        &self,
        grant: &Grant,
        req: &IssueRequest,
        draw_serial: &mut (dyn FnMut() -> Result<Serial, LedgerError> + Send),
    ) -> Result<IssueResponse, ApiError> {
        crate::testing::block_on(self.issue_drawing(grant, req, draw_serial))
    }

    /// [`Issuer::issue`] for tests that are not async themselves.
    #[cfg(test)]
    pub(crate) fn issue_blocking(
        &self,
        grant: &Grant,
        req: &IssueRequest,
    ) -> Result<IssueResponse, ApiError> {
        crate::testing::block_on(self.issue(grant, req))
    }

    /// [`issue`] with serials drawn by `draw_serial`: the OS CSPRNG in
    /// production, a scripted sequence in tests of what a collision does.
    async fn issue_drawing(
        &self,
        grant: &Grant,
        req: &IssueRequest,
        draw_serial: &mut (dyn FnMut() -> Result<Serial, LedgerError> + Send),
    ) -> Result<IssueResponse, ApiError> {
        use crate::metrics::Outcome;
        let mut resolved = None;
        let result = self
            .issue_resolving(grant, req, draw_serial, &mut resolved)
            .await;
        let outcome = match &result {
            Ok(resp) if resp.replayed => Outcome::Replayed,
            Ok(_) => Outcome::Issued,
            Err(e) if e.code.http_status() >= 500 => Outcome::Failed,
            Err(_) => Outcome::Refused,
        };
        let (certifier, profile) = match &resolved {
            Some((c, p)) => (Some(c.as_str()), Some(p.as_str())),
            None => (None, None),
        };
        self.metrics.issuance(certifier, profile, outcome);
        result
    }

    /// The pipeline; sets `resolved` to the configured certifier and
    /// profile once the request is authorized for them (the metrics' labels).
    async fn issue_resolving(
        &self,
        grant: &Grant,
        req: &IssueRequest,
        draw_serial: &mut (dyn FnMut() -> Result<Serial, LedgerError> + Send),
        resolved: &mut Option<(String, String)>,
    ) -> Result<IssueResponse, ApiError> {
        check_request_id(&req.request_id)?;
        check_ip_syntax(req)?;
        let policy = self.policy.current();
        let (certifier_name, profile) =
            policy.authorize(grant, req.certifier.as_deref(), &req.profile)?;
        *resolved = Some((certifier_name.clone(), req.profile.clone()));
        self.limiter.check(grant, self.clock.instant())?;
        let digest = request_digest(req);
        if let Some(entry) = self
            .ledger
            .idempotency_get(grant.name(), &req.request_id)
            .map_err(|e| e.api_error())?
        {
            if let Some(resp) = self.replay(&entry, &digest, req)? {
                return Ok(resp);
            }
        }
        let certifier = self
            .certifiers
            .find(Some(&certifier_name))
            .map_err(|e| ApiError::new(ErrorCode::UnknownCertifier, e.to_string()))?;
        // Fail fast while locked; checked again when signing.
        certifier.signer().map_err(|e| e.api_error())?;
        self.free_space.check()?;
        let checked = csr::check_csr(
            &req.csr,
            &profile.key_types,
            certifier
                .certificate
                .tbs_certificate()
                .subject_public_key_info(),
        )?;
        let spki_sha256: [u8; 32] = sha2::Sha256::digest(
            checked
                .spki
                .to_der()
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?,
        )
        .into();
        // Checked again, atomically, when the intent is recorded.
        if let Some(b) = self
            .ledger
            .blocked_key(&spki_sha256)
            .map_err(|e| e.api_error())?
        {
            return Err(LedgerError::KeyBlocked {
                key: hex::encode(spki_sha256),
                serial: b.serial.to_hex(),
                certifier: b.certifier,
            }
            .api_error());
        }
        let names = requested_names(req, &checked.names, profile);
        policy::check_names(profile, grant, &names)?;
        approval::check(profile, &names, req.approval.as_ref(), self.clock.unix())?;

        let issuer = &certifier.issuer;
        let requested = req.not_after.as_deref().map(parse_not_after).transpose()?;
        let max_days = grant.max_validity_days(profile);
        let now = self.clock.unix();
        let validity = certgen::choose_validity(now, requested, max_days, issuer.not_after)
            .map_err(|m| ApiError::new(ErrorCode::BadValidity, m))?;

        let signer = certifier.signer().map_err(|e| e.api_error())?;
        let lint_ctx = LintContext {
            profile,
            issuer,
            certifier_key: certifier.key_type,
            certifier_public_key: certifier
                .certificate
                .tbs_certificate()
                .subject_public_key_info(),
        };
        let approval = req
            .approval
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok());
        // A 127-bit random serial collides with essentially zero probability;
        // the ledger still checks, and a collision just draws again.
        for _ in 0..SERIAL_DRAWS {
            let serial = draw_serial().map_err(|e| e.api_error())?;
            let mut builder = certgen::leaf_builder(&LeafSpec {
                profile,
                issuer,
                spki: &checked.spki,
                key_type: checked.key_type,
                names: &names,
                validity,
                serial: serial.as_bytes(),
            })
            .map_err(|e| e.api_error())?;
            let key = x509::TokenKeyRef::of(signer.as_ref());
            let tbs = builder
                .finalize(&key)
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            let findings = lint::lint_tbs_der(&tbs, &lint_ctx);
            if !findings.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::LintFailed,
                    format!(
                        "pre-issuance lint refused the certificate: {}",
                        findings.join("; ")
                    ),
                ));
            }
            let tbs_sha256: [u8; 32] = sha2::Sha256::digest(&tbs).into();
            let intent = Intent {
                certifier: certifier_name.clone(),
                ra: grant.name().to_string(),
                request_id: Some(req.request_id.clone()),
                tbs_sha256,
                profile: profile.name.clone(),
                created: now,
                approval: approval.clone(),
                instance: self.instance.clone(),
                spki_sha256: Some(spki_sha256),
            };
            // Durable (with its audit entry) before the token signs.
            let claim = Claim {
                ra: grant.name().to_string(),
                request_id: req.request_id.clone(),
                body_sha256: digest,
            };
            let done = self
                .ledger
                .change_async(
                    Change::Intent {
                        serial,
                        intent,
                        claim: Some(claim),
                    },
                    AuditEvent::new(KIND_INTENT, grant.name()),
                )
                .await
                .map_err(|e| e.api_error())?;
            let outcome = match done {
                Done::Change(Applied::Intent(outcome), _) => outcome,
                Done::Change(Applied::Refused(e), _) => return Err(e.api_error()),
                other => return Err(unexpected(&other)),
            };
            match outcome {
                IntentOutcome::Recorded => {}
                IntentOutcome::SerialTaken => {
                    tracing::warn!(serial = %serial, "a freshly drawn serial is already in the ledger; drawing another (is the OS random number generator sound?)");
                    continue;
                }
                IntentOutcome::KeyTaken(entry) => {
                    return match self.replay(&entry, &digest, req)? {
                        Some(resp) => Ok(resp),
                        None => Err(ApiError::new(
                            ErrorCode::InProgress,
                            "a concurrent request with this request_id is being processed; retry shortly",
                        )),
                    };
                }
            }
            return self
                .sign_and_store(
                    grant, req, &certifier, signer, builder, tbs, serial, validity,
                )
                .await;
        }
        Err(ApiError::new(
            ErrorCode::Internal,
            "could not draw an unused serial number",
        ))
    }

    /// Answers a repeated request_id: the original certificate, a conflict,
    /// or "in progress".
    fn replay(
        &self,
        entry: &crate::ledger::IdempotencyEntry,
        digest: &[u8; 32],
        req: &IssueRequest,
    ) -> Result<Option<IssueResponse>, ApiError> {
        if &entry.body_sha256 != digest {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this request_id was used before with a different request; use a new request_id",
            ));
        }
        let record = self.ledger.get(&entry.serial).map_err(|e| e.api_error())?;
        match record {
            Some(r) if matches!(r.state, RecordState::Issued | RecordState::Revoked) => {
                let requested = req
                    .not_after
                    .as_deref()
                    .and_then(|t| parse_not_after(t).ok());
                self.response_from_record(&entry.serial, &r, requested)
                    .map(Some)
            }
            Some(r) if r.state == RecordState::Intent => Err(ApiError::new(
                ErrorCode::InProgress,
                "the original request with this request_id is still being signed; retry shortly",
            )),
            // Abandoned (signing failed): go on and try again.
            _ => Ok(None),
        }
    }

    fn response_from_record(
        &self,
        serial: &Serial,
        record: &LedgerRecord,
        requested_not_after: Option<i64>,
    ) -> Result<IssueResponse, ApiError> {
        let der = record.certificate_der.as_deref().ok_or_else(|| {
            ApiError::new(ErrorCode::Internal, "ledger record has no certificate")
        })?;
        let cert = Certificate::from_der(der)
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("stored certificate: {e}")))?;
        let validity = cert.tbs_certificate().validity();
        let not_after = x509::unix_of(&validity.not_after);
        let chain = self
            .certifiers
            .find(Some(&record.intent.certifier))
            .map(|c| c.chain_pems.clone())
            .unwrap_or_default();
        Ok(IssueResponse {
            serial: serial.to_hex(),
            certificate: x509::cert_pem(der),
            chain,
            not_before: rfc3339(x509::unix_of(&validity.not_before)),
            not_after: rfc3339(not_after),
            // The same request asked for the same not_after the first time.
            not_after_clamped: requested_not_after.is_some_and(|r| r > not_after),
            replayed: true,
            // A certificate revoked since says so: the RA must not hand it
            // out as good.
            revoked_at: record.revoked_at.map(rfc3339),
            revocation_reason: record
                .revocation_reason
                .and_then(certd_api::reason_name)
                .map(str::to_string),
        })
    }

    /// Burns the serial after a failure between intent and signature, with
    /// an `issuance_failed` entry naming the failure.
    async fn abandon(
        &self,
        grant: &Grant,
        certifier: &Certifier,
        serial: &Serial,
        err: ApiError,
    ) -> ApiError {
        let event = AuditEvent::new(KIND_FAILED, grant.name())
            .certifier(certifier.name().to_string())
            .detail(json!({"code": err.code.as_str(), "message": err.message}));
        let change = Change::Abandoned {
            serial: *serial,
            reason: err.message.clone(),
        };
        if let Err(e) = self.ledger.change_async(change, event).await {
            tracing::error!(serial = %serial.to_hex(), error = %e, "cannot mark the serial abandoned; it stays an intent and is abandoned at the next start");
        }
        err
    }

    /// Signs on the signing pool (checked against the certifier's key),
    /// assembles the certificate and records it: durable, with its audit
    /// entry, before the answer.
    #[allow(clippy::too_many_arguments)]
    async fn sign_and_store(
        &self,
        grant: &Grant,
        req: &IssueRequest,
        certifier: &Arc<Certifier>,
        signer: Arc<dyn crate::hsm::Signer + Send + Sync>,
        builder: x509_cert::builder::CertificateBuilder<certgen::FixedProfile>,
        tbs: Vec<u8>,
        serial: Serial,
        validity: certgen::ValidityChoice,
    ) -> Result<IssueResponse, ApiError> {
        let sign_started = self.clock.instant();
        let signed = self.signing.sign(signer.clone(), tbs).await;
        self.metrics.sign_latency(
            certifier.name(),
            self.clock
                .instant()
                .saturating_duration_since(sign_started)
                .as_secs_f64(),
        );
        let signature = match signed {
            Ok(s) => s,
            Err(e) => {
                if matches!(e, HsmError::Unavailable(_) | HsmError::Pkcs11 { .. }) {
                    certifier.report_fault(&e.to_string());
                }
                return Err(self.abandon(grant, certifier, &serial, e.api_error()).await);
            }
        };
        let assembled = {
            let key = x509::TokenKeyRef::of(signer.as_ref());
            der::asn1::BitString::from_bytes(&signature)
                .map_err(|e| e.to_string())
                .and_then(|bits| builder.assemble(bits, &key).map_err(|e| e.to_string()))
                .and_then(|cert| {
                    let der = cert.to_der().map_err(|e| e.to_string())?;
                    Ok((cert.tbs_certificate().subject().to_string(), der))
                })
        };
        let (subject, der) = match assembled {
            Ok(done) => done,
            Err(e) => {
                let err = ApiError::new(ErrorCode::Internal, e);
                return Err(self.abandon(grant, certifier, &serial, err).await);
            }
        };
        // The certificate is durable in the ledger, with its audit entry,
        // before anyone sees it.
        let event = AuditEvent::new(KIND_ISSUED, grant.name())
            .certifier(certifier.name().to_string())
            .detail(json!({
                "request_id": req.request_id,
                "profile": req.profile,
                "subject": subject,
                "approval": req.approval,
            }));
        let change = Change::Issued {
            serial,
            der: der.clone(),
            not_after: validity.not_after,
            at: self.clock.unix(),
        };
        match self.ledger.change_async(change, event).await {
            Ok(Done::Change(Applied::Done, _)) => {}
            Ok(Done::Change(Applied::Refused(e), _)) => return Err(e.api_error()),
            Ok(other) => return Err(unexpected(&other)),
            // Not written: the certificate is never released; the serial
            // is burned (now, or at the next start if this fails too).
            Err(e @ JournalError::Audit(_)) => {
                return Err(self.abandon(grant, certifier, &serial, e.api_error()).await)
            }
            // Written, but the index could not show it yet: it reaches the
            // index from the journal, and a retry with the same request_id
            // then gets it.
            Err(e @ JournalError::Ledger(_)) => return Err(e.api_error()),
        }
        Ok(IssueResponse {
            serial: serial.to_hex(),
            certificate: x509::cert_pem(&der),
            chain: certifier.chain_pems.clone(),
            not_before: rfc3339(validity.not_before),
            not_after: rfc3339(validity.not_after),
            not_after_clamped: validity.clamped,
            replayed: false,
            revoked_at: None,
            revocation_reason: None,
        })
    }
}

/// The error for a ledger answer that does not fit the submission (a bug).
fn unexpected(done: &Done) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected answer of the ledger: {done:?}"),
    )
}

/// Pauses issuance while the file system of the state directory runs
/// short of space, before the ledger or the audit log run into ENOSPC.
struct FreeSpaceGuard {
    dir: PathBuf,
    min_free_mib: u64,
}

impl FreeSpaceGuard {
    /// Refuses while the file system has less than `min_free_mib` free.
    fn check(&self) -> Result<(), ApiError> {
        let dir = &self.dir;
        let min = self.min_free_mib.saturating_mul(1 << 20);
        let free = match rustix::fs::statvfs(dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::LedgerUnavailable,
                    format!("cannot tell the free space of {}: {e}", dir.display()),
                ))
            }
        };
        if free < min {
            return Err(ApiError::new(
                ErrorCode::StorageFull,
                format!(
                    "the disk holding {} has {} KiB free, under daemon.min_free_mib = {}: \
                     issuance is paused until space is freed (revocation goes on)",
                    dir.display(),
                    free >> 10,
                    self.min_free_mib
                ),
            ));
        }
        Ok(())
    }
}

fn parse_not_after(s: &str) -> Result<i64, ApiError> {
    clock::parse_rfc3339(s).map_err(|e| {
        ApiError::new(
            ErrorCode::BadValidity,
            format!("not_after {s:?} is not an RFC 3339 time: {e}"),
        )
    })
}

/// A request's identity in the idempotency store: SHA-256 of its
/// canonical JSON (so formatting differences are not conflicts).
pub fn request_digest(req: &IssueRequest) -> [u8; 32] {
    let canonical = serde_json::to_vec(req).unwrap_or_default();
    sha2::Sha256::digest(canonical).into()
}

fn check_request_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "request_id must be 1 to 128 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

/// The names to certify. SANs and subject the RA sends are taken as sent.
/// SANs without a subject get a subject built from the profile, not the
/// CSR's: empty (the SAN extension then critical), or the first SAN
/// repeated as commonName where the profile sets `common_name_from_san`.
/// With neither, the CSR's names are used, and a tls-server CSR that names
/// its host only in the commonName gets it as a SAN (an S/MIME CSR with
/// only emailAddress, that mailbox).
pub fn requested_names(
    req: &IssueRequest,
    from_csr: &Names,
    profile: &crate::config::ProfileConfig,
) -> Names {
    use crate::config::ProfileKind;
    let mut names = match &req.san {
        Some(san) => Names {
            subject: SubjectFields::default(),
            dns: san.dns.clone(),
            emails: san.email.clone(),
            ips: san.ip.iter().filter_map(|s| s.parse().ok()).collect(),
        },
        None => from_csr.clone(),
    };
    match &req.subject {
        Some(s) => names.subject = SubjectFields::from_api(s),
        None if req.san.is_some() && profile.common_name_from_san => {
            names.subject.cn = match profile.kind {
                k if k.is_smime() => names.emails.first().cloned(),
                _ => names
                    .dns
                    .first()
                    .cloned()
                    .or_else(|| names.ips.first().map(|ip| ip.to_string())),
            };
        }
        None => {}
    }
    if names.dns.is_empty() && names.ips.is_empty() && names.emails.is_empty() {
        match (profile.kind, &names.subject.cn, &names.subject.email) {
            (ProfileKind::TlsServer, Some(cn), _) => names.dns.push(cn.clone()),
            (k, _, Some(e)) if k.is_smime() => names.emails.push(e.clone()),
            _ => {}
        }
    }
    names
}

/// Checks that every IP SAN in the request parses (done before names are
/// built, so a bad address is a clear error rather than silently dropped).
pub fn check_ip_syntax(req: &IssueRequest) -> Result<(), ApiError> {
    if let Some(san) = &req.san {
        for ip in &san.ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ApiError::new(
                    ErrorCode::NameNotPermitted,
                    format!("{ip:?} is not an IPv4 or IPv6 address"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::ledger::{IdempotencyEntry, SERIAL_LEN};
    use crate::testing::{csr, TestCa, RA};
    /// A cell the scripted serial sources can share with the pipeline's
    /// future, which must be `Send` (a `std::cell::Cell` is not).
    struct Cell<T>(std::sync::Mutex<T>);

    impl<T> Cell<T> {
        fn new(value: T) -> Cell<T> {
            Cell(std::sync::Mutex::new(value))
        }
        fn set(&self, value: T) {
            *self.0.lock().expect("a cell") = value;
        }
        fn take(&self) -> T
        where
            T: Default,
        {
            std::mem::take(&mut *self.0.lock().expect("a cell"))
        }
    }

    impl<T: Copy> Cell<T> {
        fn get(&self) -> T {
            *self.0.lock().expect("a cell")
        }
    }

    const TLS_SERVER: &str =
        "[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n";
    const GRANT: &str = "profiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]";

    fn serial(n: u8) -> Serial {
        let mut bytes = [0x5a; SERIAL_LEN];
        bytes[SERIAL_LEN - 1] = n;
        Serial::from_bytes(bytes).expect("a serial")
    }

    fn request(id: &str) -> IssueRequest {
        IssueRequest::new(id, "tls-server", csr(0x22, "www.example.com"))
    }

    #[test]
    fn sans_without_a_subject_get_the_profiles_subject_not_the_csrs() {
        let profile = |extra: &str| -> crate::config::ProfileConfig {
            toml::from_str(&format!(
                "name = \"p\"\nkind = \"tls-server\"\nmax_validity_days = 90\n{extra}"
            ))
            .expect("a profile")
        };
        let csr_names = Names {
            subject: SubjectFields {
                cn: Some("csr.example.com".into()),
                o: Some("CSR Org".into()),
                ..Default::default()
            },
            dns: vec!["csr.example.com".into()],
            ..Default::default()
        };
        let mut req = request("r");
        let plain = &profile("");
        let with_cn = &profile("common_name_from_san = true");
        // Neither: the CSR's names.
        assert_eq!(requested_names(&req, &csr_names, plain), csr_names);
        req.san = Some(certd_api::SubjectAltNames {
            dns: vec!["a.example.com".into(), "b.example.com".into()],
            ..Default::default()
        });
        let n = requested_names(&req, &csr_names, plain);
        assert_eq!(
            n.subject,
            SubjectFields::default(),
            "nothing of the CSR's subject"
        );
        assert_eq!(n.dns, ["a.example.com", "b.example.com"]);
        let n = requested_names(&req, &csr_names, with_cn);
        assert_eq!(n.subject.cn.as_deref(), Some("a.example.com"));
        assert_eq!(n.subject.o, None);
        // The RA's subject is taken as sent.
        req.subject = Some(certd_api::Subject {
            common_name: Some("b.example.com".into()),
            ..Default::default()
        });
        assert_eq!(
            requested_names(&req, &csr_names, with_cn)
                .subject
                .cn
                .as_deref(),
            Some("b.example.com")
        );
    }

    /// The intent a concurrent request with `req` records before it signs.
    fn intent_of(req: &IssueRequest) -> Intent {
        Intent {
            certifier: "ca".into(),
            ra: RA.into(),
            request_id: Some(req.request_id.clone()),
            tbs_sha256: [0; 32],
            profile: req.profile.clone(),
            created: SystemClock.unix(),
            approval: None,
            instance: String::new(),
            spki_sha256: None,
        }
    }

    /// Hands out `serials` in order, counting the draws.
    fn scripted<'a>(
        serials: &[Serial],
        draws: &'a Cell<usize>,
    ) -> impl FnMut() -> Result<Serial, LedgerError> + 'a {
        let serials = serials.to_vec();
        move || {
            let n = draws.get();
            draws.set(n + 1);
            Ok(serials[n.min(serials.len() - 1)])
        }
    }

    fn state_of(ca: &TestCa, s: &Serial) -> Option<RecordState> {
        ca.services.ledger.get(s).expect("get").map(|r| r.state)
    }

    #[test]
    fn issues_once_and_replays_after() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let req = request("r1");
        let first = ca
            .services
            .issuer
            .issue_blocking(&ca.grant(), &req)
            .expect("issued");
        assert!(!first.replayed);
        let again = ca
            .services
            .issuer
            .issue_blocking(&ca.grant(), &req)
            .expect("replayed");
        assert!(again.replayed);
        assert_eq!(
            (&again.serial, &again.certificate),
            (&first.serial, &first.certificate)
        );
        let records = ca.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0.to_hex(), first.serial);
        assert_eq!(records[0].1.state, RecordState::Issued);
        assert_eq!(ca.audit_kinds(), ["issuance_intent", "issued"]);
    }

    /// Validity counts from the daemon's clock, to the profile's maximum.
    #[test]
    fn validity_counts_from_the_clock() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let start = ca.clock.unix();
        let first = ca
            .services
            .issuer
            .issue_blocking(&ca.grant(), &request("r1"))
            .expect("issued");
        ca.clock.advance(std::time::Duration::from_secs(86_400));
        let second = ca
            .services
            .issuer
            .issue_blocking(&ca.grant(), &request("r2"))
            .expect("issued");
        assert_eq!(first.not_before, rfc3339(start));
        assert_eq!(second.not_before, rfc3339(start + 86_400));
        assert_eq!(second.not_after, rfc3339(start + 86_400 + 90 * 86_400 - 1));
    }

    /// Requests spend the RA's rate budget; the daemon's clock refills it.
    #[test]
    fn the_rate_budget_refills_with_the_clock() {
        let ca = TestCa::new(TLS_SERVER, &format!("{GRANT}\nrate_limit_per_minute = 1"));
        let issuer = &ca.services.issuer;
        issuer
            .issue_blocking(&ca.grant(), &request("r1"))
            .expect("issued");
        let err = issuer
            .issue_blocking(&ca.grant(), &request("r2"))
            .expect_err("over the budget");
        assert_eq!(err.code, ErrorCode::RateLimited);
        ca.clock.advance(std::time::Duration::from_secs(60));
        issuer
            .issue_blocking(&ca.grant(), &request("r2"))
            .expect("issued a minute later");
    }

    /// A serial that is already in the ledger is never used again: the
    /// request draws another and is issued under that one.
    #[test]
    fn a_drawn_serial_already_in_the_ledger_is_drawn_again() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let (taken, fresh) = (serial(1), serial(2));
        let other = intent_of(&request("someone-else"));
        let outcome =
            crate::testing::record_intent(ca.services.ledger.as_ref(), &taken, other, None);
        assert_eq!(outcome.expect("intent"), IntentOutcome::Recorded);
        let before = ca.services.ledger.get(&taken).expect("get");

        let draws = Cell::new(0);
        let resp = ca
            .services
            .issuer
            .issue_drawing_blocking(
                &ca.grant(),
                &request("r1"),
                &mut scripted(&[taken, fresh], &draws),
            )
            .expect("issued");
        assert_eq!(draws.get(), 2);
        assert_eq!(resp.serial, fresh.to_hex());
        assert_eq!(state_of(&ca, &fresh), Some(RecordState::Issued));
        assert_eq!(ca.services.ledger.get(&taken).expect("get"), before);
    }

    #[test]
    fn issuance_gives_up_when_every_draw_is_taken() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let taken = serial(1);
        let other = intent_of(&request("someone-else"));
        let outcome =
            crate::testing::record_intent(ca.services.ledger.as_ref(), &taken, other, None);
        assert_eq!(outcome.expect("intent"), IntentOutcome::Recorded);

        let draws = Cell::new(0);
        let err = ca
            .services
            .issuer
            .issue_drawing_blocking(&ca.grant(), &request("r1"), &mut scripted(&[taken], &draws))
            .expect_err("no unused serial");
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(err.message, "could not draw an unused serial number");
        assert_eq!(draws.get(), SERIAL_DRAWS);
        assert_eq!(ca.records().len(), 1);
        let claim = ca.services.ledger.idempotency_get(RA, "r1");
        assert_eq!(claim.expect("get"), None);
    }

    /// The lint refuses before the intent is recorded: the answer names the
    /// finding, and neither the serial nor the request_id is used up.
    #[test]
    fn a_lint_finding_refuses_before_anything_is_recorded() {
        // What the configuration check refuses, as if it had let it through.
        let ca = TestCa::adjusted(TLS_SERVER, GRANT, |c| {
            c.profiles[0].crl_url = Some("https://crl.example.com/ca.crl".into());
        });
        let draws = Cell::new(0);
        let err = ca
            .services
            .issuer
            .issue_drawing_blocking(
                &ca.grant(),
                &request("r1"),
                &mut scripted(&[serial(1)], &draws),
            )
            .expect_err("the lint refuses");
        assert_eq!(err.code, ErrorCode::LintFailed);
        assert_eq!(err.code.http_status(), 422);
        assert_eq!(
            err.message,
            "pre-issuance lint refused the certificate: \
             cRLDistributionPoints must hold plain http:// URLs only"
        );
        assert_eq!(draws.get(), 1);
        assert!(ca.records().is_empty(), "{:?}", ca.records());
        let claim = ca.services.ledger.idempotency_get(RA, "r1");
        assert_eq!(claim.expect("get"), None);
        // The refusal is audited by the API layer, not here.
        assert!(ca.audit_kinds().is_empty(), "{:?}", ca.audit_kinds());
    }

    /// A repeat of a request whose certificate is still being signed.
    #[test]
    fn a_replay_while_the_original_is_signed_is_in_progress() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let req = request("r1");
        let claim = Some((RA, "r1", request_digest(&req)));
        let outcome = crate::testing::record_intent(
            ca.services.ledger.as_ref(),
            &serial(1),
            intent_of(&req),
            claim,
        );
        assert_eq!(outcome.expect("intent"), IntentOutcome::Recorded);

        let draws = Cell::new(0);
        let err = ca
            .services
            .issuer
            .issue_drawing_blocking(&ca.grant(), &req, &mut scripted(&[serial(2)], &draws))
            .expect_err("in progress");
        assert_eq!(err.code, ErrorCode::InProgress);
        assert_eq!(
            err.message,
            "the original request with this request_id is still being signed; retry shortly"
        );
        assert_eq!(draws.get(), 0, "nothing is built for a replay");
        assert_eq!(state_of(&ca, &serial(1)), Some(RecordState::Intent));
        assert_eq!(ca.records().len(), 1);
    }

    /// Two requests with one request_id, the other one claiming it between
    /// this one's look-up and its intent: while the other is being signed
    /// this one is told so, and its own serial is not used.
    #[test]
    fn losing_the_claim_to_a_request_being_signed_is_in_progress() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let req = request("r1");
        let (theirs, ours) = (serial(1), serial(2));
        let mut race = || {
            let claim = Some((RA, "r1", request_digest(&req)));
            let outcome = crate::testing::record_intent(
                ca.services.ledger.as_ref(),
                &theirs,
                intent_of(&req),
                claim,
            )
            .expect("the other request's intent");
            assert_eq!(outcome, IntentOutcome::Recorded);
            Ok(ours)
        };
        let err = ca
            .services
            .issuer
            .issue_drawing_blocking(&ca.grant(), &req, &mut race)
            .expect_err("in progress");
        assert_eq!(err.code, ErrorCode::InProgress);
        assert_eq!(err.code.http_status(), 409);
        assert_eq!(
            err.message,
            "the original request with this request_id is still being signed; retry shortly"
        );
        assert_eq!(state_of(&ca, &ours), None);
        assert_eq!(
            ca.services.ledger.idempotency_get(RA, "r1").expect("get"),
            Some(IdempotencyEntry {
                body_sha256: request_digest(&req),
                serial: theirs
            })
        );
    }

    /// The same race, lost to a request that has finished: its certificate
    /// is the answer.
    #[test]
    fn losing_the_claim_to_a_finished_request_replays_it() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let req = request("r1");
        let theirs = Cell::new(None);
        let mut race = || {
            // The other request runs to its end meanwhile (on a thread of its
            // own: this one is inside the pipeline's future).
            let done = std::thread::scope(|s| {
                s.spawn(|| ca.services.issuer.issue_blocking(&ca.grant(), &req))
                    .join()
                    .expect("the other request's thread")
            })
            .expect("the other request");
            theirs.set(Some(done));
            Ok(serial(2))
        };
        let resp = ca
            .services
            .issuer
            .issue_drawing_blocking(&ca.grant(), &req, &mut race)
            .expect("replayed");
        let theirs = theirs.take().expect("the other request ran");
        assert!(resp.replayed && !theirs.replayed);
        assert_eq!(
            (&resp.serial, &resp.certificate),
            (&theirs.serial, &theirs.certificate)
        );
        assert_eq!(state_of(&ca, &serial(2)), None);
        assert_eq!(ca.records().len(), 1);
    }
}
