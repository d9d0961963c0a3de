//! A certifier daemon's services for unit tests: real configuration,
//! ledger, audit log and CRL store in a temporary directory, with the
//! certifier's key in memory instead of a token and a clock that moves only
//! when the test moves it. Compiled into tests only.

use crate::certgen::FixedProfile;
use crate::certifier::Certifiers;
use crate::clock::{Clock, ManualClock};
use crate::config::Config;
use crate::daemon::Services;
use crate::hsm::memory::MemoryKey;
use crate::hsm::Signer;
use crate::journal::{Done, Journal, JournalError, Ledger, KIND_INTENT};
use crate::ledger::index::{Applied, Change, Claim};
use crate::ledger::{Intent, IntentOutcome, LedgerRecord, Serial};
use crate::policy::Grant;
use crate::x509;
use const_oid::db::rfc4519;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_cert::builder::{CertificateBuilder, RequestBuilder};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

/// The one RA of a [`TestCa`].
pub(crate) const RA: &str = "ra1";
/// Its client certificate's fingerprint.
pub(crate) const RA_FINGERPRINT: &str =
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A daemon's services with one active certifier `ca` (a P-256 key in
/// memory, certificate valid for ten years) and one RA, [`RA`].
pub(crate) struct TestCa {
    pub(crate) services: Arc<Services>,
    /// The time everything reads: the real time when the CA was made, until
    /// the test moves it.
    pub(crate) clock: Arc<ManualClock>,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs a future to completion on a runtime of its own, for tests that are
/// not async themselves.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// Records an intent the way issuance does (with the RA's idempotency
/// claim `(ra, request_id, body_sha256)` when given), for tests that set
/// up what a concurrent request would have left.
pub(crate) fn record_intent(
    ledger: &dyn Ledger,
    serial: &Serial,
    intent: Intent,
    claim: Option<(&str, &str, [u8; 32])>,
) -> Result<IntentOutcome, JournalError> {
    let claim = claim.map(|(ra, request_id, body_sha256)| Claim {
        ra: ra.to_string(),
        request_id: request_id.to_string(),
        body_sha256,
    });
    let actor = intent.ra.clone();
    let change = Change::Intent {
        serial: *serial,
        intent,
        claim,
    };
    match ledger.change(change, crate::audit::AuditEvent::new(KIND_INTENT, actor))? {
        Done::Change(Applied::Intent(outcome), _) => Ok(outcome),
        other => panic!("an intent answered {other:?}"),
    }
}

/// Writes a self-signed certifier certificate for `key` to `path`.
fn write_certifier_certificate(key: &MemoryKey, path: &Path, now: SystemTime) {
    let subject = x509::name_from(&[(rfc4519::CN, "certd unit-test CA")]).expect("a name");
    let validity = Validity::new(
        Time::try_from(now).expect("now"),
        Time::try_from(now + Duration::from_secs(3650 * 86_400)).expect("in ten years"),
    );
    let serial = SerialNumber::new(&x509::random_serial(16).expect("rng")).expect("a serial");
    let extensions = crate::ceremony::ca_extensions(key.public_key(), None).expect("CA extensions");
    let profile = FixedProfile::new(subject.clone(), subject, extensions);
    let builder = CertificateBuilder::new(profile, serial, validity, key.public_key().clone())
        .expect("a certificate builder");
    let cert = x509::build_signed(builder, key).expect("self-signed");
    std::fs::write(path, x509::to_pem(&cert).expect("PEM")).expect("write the certificate");
}

/// The DER of a self-signed certificate (a P-256 key made here), for
/// tests that need any real certificate.
pub(crate) fn certificate_der() -> Vec<u8> {
    use der::Encode;
    let key = MemoryKey::p256([0x33; 32]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cert.pem");
    write_certifier_certificate(&key, &path, SystemTime::now());
    let pem = std::fs::read_to_string(&path).expect("read");
    <x509_cert::Certificate as der::DecodePem>::from_pem(pem.as_bytes())
        .expect("a certificate")
        .to_der()
        .expect("DER")
}

impl TestCa {
    /// A CA with `profiles` (`[[profile]]` tables) and the RA's grant lines
    /// `grant` (besides its name, fingerprint and certifier).
    pub(crate) fn new(profiles: &str, grant: &str) -> TestCa {
        Self::adjusted(profiles, grant, |_| {})
    }

    /// [`TestCa::new`], with the parsed configuration changed by `adjust`
    /// before anything uses it (to build what the configuration check
    /// would refuse).
    pub(crate) fn adjusted(
        profiles: &str,
        grant: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::at(SystemTime::now()));
        let key = Arc::new(MemoryKey::p256([0x11; 32]));
        write_certifier_certificate(&key, &dir.path().join("ca.pem"), clock.now());
        let text = format!(
            r#"
[daemon]
state_dir = "state"
control_socket = "control.sock"
min_free_mib = 0

[hsm]
# Never loaded: the certifier's key is in memory.
module = "no-such-module.so"

[[certifier]]
name = "ca"
token_label = "t"
key_label = "ca"
certificate = "ca.pem"

[api]
# Never bound or read.
listen = "127.0.0.1:0"
tls_certificate = "tls.pem"
tls_key = "tls.key"
ra_trust_anchor = "ras.pem"

{profiles}

[[ra]]
name = "{RA}"
fingerprints = ["{RA_FINGERPRINT}"]
certifiers = ["ca"]
{grant}
"#
        );
        let mut config =
            Config::parse(&text, &dir.path().join("certd.toml")).expect("the configuration");
        adjust(&mut config);
        let state_dir = config.daemon.state_dir.clone();
        std::fs::create_dir_all(&state_dir).expect("the state directory");
        let lock = std::fs::File::create(state_dir.join("lock")).expect("the lock file");
        let (journal, _) = Journal::open(
            &crate::daemon::audit_path(&state_dir),
            &crate::daemon::index_path(&state_dir),
            clock.clone(),
        )
        .expect("the journal");
        let ledger: Arc<dyn Ledger> = Arc::new(journal);
        let certifiers = Arc::new(Certifiers::load(&config).expect("the certifier"));
        certifiers
            .find(Some("ca"))
            .expect("certifier ca")
            .activate_with(key);
        let services =
            Services::new(config, certifiers, ledger, lock, clock.clone()).expect("the services");
        TestCa {
            services: Arc::new(services),
            clock,
            audit_path: crate::daemon::audit_path(&state_dir),
            _dir: dir,
        }
    }

    /// The state directory (the audit log's).
    pub(crate) fn state_dir(&self) -> &std::path::Path {
        self.audit_path.parent().expect("the state directory")
    }

    /// The RA's grant, as the API finds it.
    pub(crate) fn grant(&self) -> Grant {
        self.services
            .policy
            .current()
            .grant_for_fingerprint(RA_FINGERPRINT)
            .cloned()
            .expect("the RA's grant")
    }

    /// Every ledger record, in serial order.
    pub(crate) fn records(&self) -> Vec<(Serial, LedgerRecord)> {
        let mut all = Vec::new();
        self.services
            .ledger
            .visit_records(None, None, &mut |serial, record| {
                all.push((serial, record));
                ControlFlow::Continue(())
            })
            .expect("the ledger reads");
        all
    }

    /// The kinds of the audit log's entries, oldest first.
    pub(crate) fn audit_kinds(&self) -> Vec<String> {
        self.audit_entries()
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The audit log's entries, oldest first.
    pub(crate) fn audit_entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_path)
            .expect("the audit log reads")
            .lines()
            .map(|l| serde_json::from_str(l).expect("an audit entry is JSON"))
            .collect()
    }
}

/// A PEM CSR with subject `CN=cn`, signed by the subscriber P-256 key
/// with secret scalar `[secret; 32]`.
pub(crate) fn csr(secret: u8, cn: &str) -> String {
    let key = MemoryKey::p256([secret; 32]);
    let subject = x509::name_from(&[(rfc4519::CN, cn)]).expect("a name");
    let builder = RequestBuilder::new(subject).expect("a request builder");
    let csr = x509::build_signed(builder, &key).expect("a signed CSR");
    x509::to_pem(&csr).expect("PEM")
}
