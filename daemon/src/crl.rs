//! Certificate revocation lists: one per certifier, signed in the token,
//! with a monotonic CRL number (durable before signing), made on a schedule
//! before nextUpdate and shortly after revocations (a burst of revocations
//! makes one CRL).

use crate::anchor::Checkpointer;
use crate::audit::AuditEvent;
use crate::certifier::{Certifier, Certifiers};
use crate::clock::{rfc3339, Clock};
use crate::config::CrlConfig;
use crate::journal::{Done, Ledger, KIND_CRL_NUMBER};
use crate::ledger::index::{Applied, Change};
use certd_api::{ApiError, ErrorCode};
use der::asn1::{BitString, OctetString, Uint};
use der::{Decode, Encode};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::CrlReason;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

/// A CRL as issued.
#[derive(Debug, Clone)]
pub struct CrlState {
    /// DER of the CertificateList, shared by everyone who serves it.
    pub der: bytes::Bytes,
    /// Its CRL number.
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
}

/// The current CRL of every certifier, on disk and in memory, and the
/// triggers for new ones.
struct CrlStore {
    dir: PathBuf,
    current: Mutex<HashMap<String, CrlState>>,
    triggers: HashMap<String, Arc<tokio::sync::Notify>>,
    /// One writer per certifier: taking a number, signing and installing
    /// a CRL happen under it, so the API's stale-CRL path and the refresh
    /// loop never make two at once.
    writers: HashMap<String, Arc<Mutex<()>>>,
}

fn reason(code: u8) -> Option<CrlReason> {
    Some(match code {
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        9 => CrlReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

fn time(secs: i64) -> Result<Time, ApiError> {
    crate::x509::time_at(secs).map_err(internal)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// Reads number and times back from a CRL's DER without decoding its
/// list of revoked certificates, which it steps over whole: at start-up
/// certd reads its CRLs back, and one of a million revocations is tens of
/// megabytes. (The CRL is certd's own, written by it; its signature was
/// verified when it was made.)
pub fn describe(der: bytes::Bytes) -> Option<CrlState> {
    use der::asn1::AnyRef;
    use der::{Reader, SliceReader, Tag, TagNumber, Tagged};
    use x509_cert::ext::Extensions;
    use x509_cert::time::Time;
    // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signature }
    let list = AnyRef::from_der(&der).ok()?;
    let tbs = AnyRef::decode(&mut SliceReader::new(list.value()).ok()?).ok()?;
    let mut r = SliceReader::new(tbs.value()).ok()?;
    // TBSCertList ::= SEQUENCE { version OPTIONAL, signature, issuer,
    //   thisUpdate, nextUpdate OPTIONAL, revokedCertificates OPTIONAL,
    //   crlExtensions [0] EXPLICIT OPTIONAL }
    if Tag::peek(&r).ok()? == Tag::Integer {
        AnyRef::decode(&mut r).ok()?;
    }
    AnyRef::decode(&mut r).ok()?; // signature
    AnyRef::decode(&mut r).ok()?; // issuer
    let this_update = Time::decode(&mut r).ok()?;
    let next_update = match Tag::peek(&r).ok()? {
        Tag::UtcTime | Tag::GeneralizedTime => Time::decode(&mut r).ok()?,
        _ => return None,
    };
    let mut number = None;
    while !r.is_finished() {
        let field = AnyRef::decode(&mut r).ok()?;
        if field.tag()
            == (Tag::ContextSpecific {
                constructed: true,
                number: TagNumber(0),
            })
        {
            let extensions = Extensions::from_der(field.value()).ok()?;
            number = extensions
                .iter()
                .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
                .and_then(|e| CrlNumber::from_der(e.extn_value.as_bytes()).ok())
                .and_then(|n| {
                    let b = n.0.as_bytes();
                    (b.len() <= 8).then(|| b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
                });
        }
    }
    Some(CrlState {
        number: number?,
        this_update: crate::x509::unix_of(&this_update),
        next_update: crate::x509::unix_of(&next_update),
        der,
    })
}

impl CrlStore {
    /// Loads the CRLs kept in `state_dir/crl` for these certifiers.
    fn open(state_dir: &Path, certifiers: &[Arc<Certifier>]) -> std::io::Result<CrlStore> {
        let dir = state_dir.join("crl");
        std::fs::create_dir_all(&dir)?;
        let mut current = HashMap::new();
        let mut triggers = HashMap::new();
        let mut writers = HashMap::new();
        for c in certifiers {
            triggers.insert(c.name().to_string(), Arc::new(tokio::sync::Notify::new()));
            writers.insert(c.name().to_string(), Arc::new(Mutex::new(())));
            if let Ok(der) = std::fs::read(dir.join(format!("{}.crl", c.name()))) {
                if let Some(state) = describe(der.into()) {
                    current.insert(c.name().to_string(), state);
                }
            }
        }
        Ok(CrlStore {
            dir,
            current: Mutex::new(current),
            triggers,
            writers,
        })
    }

    fn writer_of(&self, certifier: &str) -> Option<Arc<Mutex<()>>> {
        self.writers.get(certifier).cloned()
    }

    fn current(&self, certifier: &str) -> Option<CrlState> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(certifier)
            .cloned()
    }

    fn trigger(&self, certifier: &str) {
        if let Some(n) = self.triggers.get(certifier) {
            n.notify_one();
        }
    }

    fn trigger_of(&self, certifier: &str) -> Option<Arc<tokio::sync::Notify>> {
        self.triggers.get(certifier).cloned()
    }

    /// Installs `state` as the certifier's CRL: written to a temporary
    /// file of its own (named by its number, created new), synced, and
    /// renamed over the current one; refused unless its number is higher
    /// than the one in place. Called under the certifier's writer lock.
    fn install(&self, certifier: &str, state: CrlState) -> std::io::Result<()> {
        if let Some(installed) = self.current(certifier) {
            if installed.number >= state.number {
                return Err(std::io::Error::other(format!(
                    "CRL number {} of certifier {certifier:?} is not above the installed {}; not installed",
                    state.number, installed.number
                )));
            }
        }
        let path = self.dir.join(format!("{certifier}.crl"));
        let tmp = self
            .dir
            .join(format!(".{certifier}.{}.crl.tmp", state.number));
        crate::audit::replace_file(&path, &tmp, &state.der, 0o644)?;
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(certifier.to_string(), state);
        Ok(())
    }
}

/// The CRLs of every certifier: made, signed, stored, audited, served, and
/// kept fresh. Built once by the daemon.
pub struct CrlService {
    store: CrlStore,
    certifiers: Arc<Certifiers>,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
    settings: CrlConfig,
    checkpoints: Arc<Checkpointer>,
}

impl CrlService {
    /// Loads the CRLs kept in `state_dir/crl` for `certifiers`, to be made
    /// from the revocations in `ledger` with the timing of `settings`.
    pub fn open(
        state_dir: &Path,
        settings: CrlConfig,
        certifiers: Arc<Certifiers>,
        ledger: Arc<dyn Ledger>,
        clock: Arc<dyn Clock>,
        checkpoints: Arc<Checkpointer>,
    ) -> std::io::Result<CrlService> {
        Ok(CrlService {
            store: CrlStore::open(state_dir, certifiers.all())?,
            certifiers,
            ledger,
            clock,
            settings,
            checkpoints,
        })
    }

    /// The current CRL of a certifier.
    pub fn current(&self, certifier: &str) -> Option<CrlState> {
        self.store.current(certifier)
    }

    /// Asks for a new CRL soon (after a revocation).
    pub fn trigger(&self, certifier: &str) {
        self.store.trigger(certifier);
    }

    /// The CRL of the certifier named `name` as it is served: the current
    /// one until its nextUpdate, else a new one.
    pub fn latest(&self, name: &str) -> Result<CrlState, ApiError> {
        let certifier = self.certifiers.find(Some(name)).map_err(|_| {
            ApiError::new(
                ErrorCode::UnknownCertifier,
                format!("there is no certifier {name:?}"),
            )
        })?;
        let fresh = |st: &CrlState| st.next_update > self.clock.unix();
        match self.current(certifier.name()) {
            Some(st) if fresh(&st) => Ok(st),
            _ => self.make(&certifier, Some(&fresh)),
        }
    }

    /// Makes, signs, verifies, stores and audits a new CRL for `certifier`.
    pub fn generate(&self, certifier: &Certifier) -> Result<CrlState, ApiError> {
        self.make(certifier, None)
    }

    /// [`CrlService::generate`], under the certifier's writer lock; with
    /// `enough`, the CRL another writer installed while this one waited
    /// for the lock is taken instead when it satisfies `enough`.
    fn make(
        &self,
        certifier: &Certifier,
        enough: Option<&dyn Fn(&CrlState) -> bool>,
    ) -> Result<CrlState, ApiError> {
        let name = certifier.name();
        let writer = self
            .store
            .writer_of(name)
            .ok_or_else(|| internal(format!("certifier {name:?} has no CRL writer")))?;
        let _writing = writer.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(enough), Some(st)) = (enough, self.current(name)) {
            if enough(&st) {
                return Ok(st);
            }
        }
        let signer = certifier.signer().map_err(|e| e.api_error())?;
        let mut entries = Vec::new();
        self.ledger
            .visit_revoked(name, &mut |e| entries.push(e))
            .map_err(|e| e.api_error())?;
        // Durable before signing: a crash after this never reuses the number.
        let taken = self
            .ledger
            .change(
                Change::CrlNumber {
                    certifier: name.to_string(),
                },
                AuditEvent::new(KIND_CRL_NUMBER, "certd").certifier(name.to_string()),
            )
            .map_err(|e| e.api_error())?;
        let number = match taken {
            Done::Change(Applied::Crl(n), _) => n,
            Done::Change(Applied::Refused(e), _) => return Err(e.api_error()),
            other => {
                return Err(internal(format!(
                    "unexpected answer of the ledger: {other:?}"
                )))
            }
        };
        let issuer = &certifier.issuer;
        let now = self.clock.unix();
        let next = now + i64::from(self.settings.validity_hours) * 3600;
        let mut revoked: Vec<RevokedCert> = Vec::with_capacity(entries.len());
        for e in &entries {
            let crl_entry_extensions = match reason(e.reason) {
                Some(r) => Some(vec![crate::x509::extension(&r, false).map_err(internal)?]),
                None => None,
            };
            revoked.push(RevokedCert {
                serial_number: SerialNumber::new(e.serial.as_bytes()).map_err(internal)?,
                revocation_date: time(e.revoked_at)?,
                crl_entry_extensions,
            });
        }
        let tbs = TbsCertList {
            version: x509_cert::Version::V2,
            signature: certifier.key_type.signature_algorithm(),
            issuer: issuer.name.clone(),
            this_update: time(now)?,
            next_update: Some(time(next)?),
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: Some(vec![
                crate::x509::extension(
                    &AuthorityKeyIdentifier {
                        key_identifier: Some(
                            OctetString::new(issuer.key_id.clone()).map_err(internal)?,
                        ),
                        ..Default::default()
                    },
                    false,
                )
                .map_err(internal)?,
                crate::x509::extension(
                    &CrlNumber(Uint::new(&number.to_be_bytes()).map_err(internal)?),
                    false,
                )
                .map_err(internal)?,
            ]),
        };
        let tbs_der = tbs.to_der().map_err(internal)?;
        let signature = crate::hsm::sign_checked(signer.as_ref(), &tbs_der).map_err(|e| {
            if matches!(e, crate::hsm::HsmError::Unavailable(_)) {
                certifier.report_fault(&e.to_string());
            }
            e.api_error()
        })?;
        let crl = CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: certifier.key_type.signature_algorithm(),
            signature: BitString::from_bytes(&signature).map_err(internal)?,
        };
        let der = crl.to_der().map_err(internal)?;
        let state = CrlState {
            der: bytes::Bytes::from(der),
            number,
            this_update: now,
            next_update: next,
        };
        self.store.install(name, state.clone()).map_err(|e| {
            ApiError::new(
                ErrorCode::LedgerUnavailable,
                format!("storing the CRL: {e}"),
            )
        })?;
        self.ledger
            .audit(
                AuditEvent::new("crl_issued", "certd")
                    .certifier(name.to_string())
                    .detail(json!({"crl_number": number, "entries": entries.len(), "next_update": rfc3339(next)})),
            )
            .inspect_err(|e| tracing::error!(error = %e, "cannot write the audit log"))
            .map_err(|e| ApiError::new(ErrorCode::AuditUnavailable, e.to_string()))?;
        // Every CRL anchors the audit log's end; a failure to do so is
        // logged, and the CRL stands.
        if let Err(e) = self.checkpoints.checkpoint("crl") {
            tracing::error!(error = %e, "audit checkpoint after the CRL failed");
        }
        Ok(state)
    }

    /// Keeps one certifier's CRL fresh: regenerates `refresh_hours` before
    /// nextUpdate, and `coalesce_seconds` after the first of a burst of
    /// revocations. Waits while the certifier is locked.
    pub async fn keep_fresh(self: Arc<Self>, certifier: Arc<Certifier>) {
        let Some(trigger) = self.store.trigger_of(certifier.name()) else {
            return;
        };
        let refresh = i64::from(self.settings.refresh_hours) * 3600;
        let coalesce = Duration::from_secs(self.settings.coalesce_seconds);
        // A CRL saved before a restart may lack revocations acknowledged just
        // before it stopped: make a fresh one as soon as the certifier is active.
        let mut pending = true;
        loop {
            let due_in = match self.store.current(certifier.name()) {
                Some(s) if !pending => Duration::from_secs(
                    u64::try_from(s.next_update - refresh - self.clock.unix()).unwrap_or(0),
                ),
                _ => Duration::ZERO,
            };
            if !due_in.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(due_in) => {}
                    _ = trigger.notified() => {
                        pending = true;
                        tokio::time::sleep(coalesce).await;
                    }
                }
            }
            if certifier.signer().is_err() {
                // Locked or unavailable: go on once it is active again (or
                // look again shortly, in case the state changed otherwise).
                tokio::select! {
                    _ = certifier.activated() => {}
                    _ = tokio::time::sleep(crate::certifier::PROBE_INTERVAL) => {}
                    _ = trigger.notified() => { pending = true; }
                }
                continue;
            }
            let (service, c2) = (self.clone(), certifier.clone());
            match tokio::task::spawn_blocking(move || service.generate(&c2)).await {
                Ok(Ok(state)) => {
                    pending = false;
                    tracing::info!(
                        certifier = certifier.name(),
                        number = state.number,
                        "CRL issued"
                    );
                }
                Ok(Err(e)) => {
                    tracing::error!(certifier = certifier.name(), error = %e, "CRL generation failed; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "CRL task failed");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::clock::Clock;
    use crate::testing::TestCa;
    use std::time::Duration;

    const PROFILE: &str =
        "[[profile]]\nname = \"tls-client\"\nkind = \"tls-client\"\nmax_validity_days = 30\n";

    /// The served CRL runs from the clock's now for `crl.validity_hours`,
    /// and is served until the clock passes its nextUpdate.
    #[test]
    fn the_served_crl_is_remade_once_the_clock_passes_its_next_update() {
        let ca = TestCa::new(PROFILE, "profiles = [\"tls-client\"]");
        let crl = &ca.services.crl;
        let start = ca.clock.unix();
        let first = crl.latest("ca").expect("a CRL");
        assert_eq!(first.number, 1);
        assert_eq!(first.this_update, start);
        assert_eq!(first.next_update, start + 24 * 3_600);
        assert_eq!(
            crate::crl::describe(first.der.clone()).map(|d| d.number),
            Some(1)
        );
        ca.clock.advance(Duration::from_secs(24 * 3_600 - 1));
        assert_eq!(crl.latest("ca").expect("a CRL").number, 1);
        ca.clock.advance(Duration::from_secs(1));
        let second = crl.latest("ca").expect("a CRL");
        assert_eq!(second.number, 2);
        assert_eq!(second.this_update, start + 24 * 3_600);
        assert_eq!(
            ca.audit_kinds(),
            [
                "crl_number_reserved",
                "crl_issued",
                "audit_checkpoint",
                "crl_number_reserved",
                "crl_issued",
                "audit_checkpoint"
            ],
            "per CRL made: its number, durable before signing, then the CRL, then a signed checkpoint"
        );
    }

    /// At start-up certd reads number and dates back from its CRL files
    /// without decoding their revoked lists: the same as a full decode
    /// says, on a CRL with entries; and nothing from a damaged one.
    #[test]
    fn a_crl_read_back_gives_number_and_dates_without_decoding_its_entries() {
        use der::Decode;
        use x509_cert::crl::CertificateList;
        let ca = TestCa::new(
            "[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n",
            "profiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]\nmay_revoke = true",
        );
        for n in 0..3u8 {
            let req = certd_api::IssueRequest::new(
                format!("r{n}"),
                "tls-server",
                crate::testing::csr(0x30 + n, "www.example.com"),
            );
            let issued = ca
                .services
                .issuer
                .issue_blocking(&ca.grant(), &req)
                .expect("issued");
            ca.services
                .revoker
                .revoke(
                    &ca.grant(),
                    &issued.serial,
                    &certd_api::RevokeRequest {
                        reason: "keyCompromise".into(),
                    },
                )
                .expect("revoked");
        }
        ca.clock.advance(Duration::from_secs(60));
        let state = ca
            .services
            .crl
            .generate(&ca.services.certifiers.all()[0])
            .expect("CRL");
        let full = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&state.der)
            .expect("decodes");
        let entries = full
            .tbs_cert_list
            .revoked_certificates
            .as_ref()
            .map(Vec::len);
        assert_eq!(entries, Some(3));
        let read = crate::crl::describe(state.der.clone()).expect("read back");
        assert_eq!(
            (read.number, read.this_update, read.next_update),
            (state.number, state.this_update, state.next_update)
        );
        assert_eq!(
            read.this_update,
            crate::x509::unix_of(&full.tbs_cert_list.this_update)
        );
        assert_eq!(read.der, state.der);
        for cut in [1, state.der.len() / 2, state.der.len() - 1] {
            assert!(
                crate::crl::describe(state.der.slice(..cut)).is_none(),
                "cut at {cut}"
            );
        }
    }

    /// CRLs asked for by the API (stale-CRL path) and made by the refresh
    /// loop's path at once, while certificates are revoked and the clock
    /// moves past nextUpdate: one writer at a time, so the numbers each
    /// caller sees only grow, the audit log's CRLs are in number order,
    /// the installed CRL is the newest, no temporary file is left, and
    /// every CRL verifies under the certifier's key.
    #[test]
    fn one_writer_at_a_time_numbers_only_grow_and_every_crl_verifies() {
        use der::{Decode, Encode};
        use x509_cert::crl::CertificateList;
        let ca = TestCa::new(
            "[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n",
            "profiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]\nmay_revoke = true",
        );
        let serials: Vec<String> = (0..12u8)
            .map(|n| {
                let req = certd_api::IssueRequest::new(
                    format!("r{n}"),
                    "tls-server",
                    crate::testing::csr(0x40 + n, "www.example.com"),
                );
                ca.services
                    .issuer
                    .issue_blocking(&ca.grant(), &req)
                    .expect("issued")
                    .serial
            })
            .collect();
        let crl = &ca.services.crl;
        let certifier = ca.services.certifiers.all()[0].clone();
        let seen: Vec<Vec<super::CrlState>> = std::thread::scope(|scope| {
            let revoker = scope.spawn(|| {
                for serial in &serials {
                    ca.services
                        .revoker
                        .revoke(
                            &ca.grant(),
                            serial,
                            &certd_api::RevokeRequest {
                                reason: "superseded".into(),
                            },
                        )
                        .expect("revoked");
                    // Every CRL so far is stale now.
                    ca.clock.advance(Duration::from_secs(25 * 3_600));
                }
                Vec::new()
            });
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..15)
                            .map(|_| crl.latest("ca").expect("a CRL"))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let refreshers: Vec<_> = (0..2)
                .map(|_| {
                    let c = certifier.clone();
                    scope.spawn(move || {
                        (0..15)
                            .map(|_| crl.generate(&c).expect("a CRL"))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            std::iter::once(revoker)
                .chain(readers)
                .chain(refreshers)
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        let key = certifier
            .certificate
            .tbs_certificate()
            .subject_public_key_info();
        let mut max = 0;
        for (i, states) in seen.iter().enumerate() {
            let numbers: Vec<u64> = states.iter().map(|s| s.number).collect();
            assert!(
                numbers.windows(2).all(|w| w[0] <= w[1]),
                "caller {i} saw numbers go back: {numbers:?}"
            );
            for st in states {
                let list = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&st.der)
                    .expect("decodes");
                let tbs = list.tbs_cert_list.to_der().expect("tbs");
                crate::hsm::verify::verify(
                    key,
                    certifier.key_type,
                    &tbs,
                    list.signature.raw_bytes(),
                )
                .unwrap_or_else(|e| panic!("CRL {}: {e}", st.number));
                max = max.max(st.number);
            }
        }
        let installed = crl.current("ca").expect("installed");
        assert_eq!(installed.number, max, "the installed CRL is the newest");
        let dir = ca.state_dir().join("crl");
        let on_disk = std::fs::read(dir.join("ca.crl")).expect("CRL file");
        assert_eq!(on_disk, installed.der.as_ref());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("crl dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "ca.crl")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let issued: Vec<u64> = ca
            .audit_entries()
            .iter()
            .filter(|e| e["kind"] == "crl_issued")
            .filter_map(|e| e["detail"]["crl_number"].as_u64())
            .collect();
        assert!(
            issued.windows(2).all(|w| w[0] < w[1]),
            "CRLs in the audit log out of number order: {issued:?}"
        );
        assert_eq!(issued.last(), Some(&max));
        // The last CRL lists every revocation.
        let last = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(
            &crl.generate(&certifier).expect("CRL").der,
        )
        .expect("decodes");
        assert_eq!(
            last.tbs_cert_list.revoked_certificates.map(|r| r.len()),
            Some(serials.len())
        );
    }
}
