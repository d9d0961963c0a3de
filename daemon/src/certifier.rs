//! The certifiers a daemon holds and their lifecycle:
//! `locked` → (activate) → `active` → (deactivate) → `locked`, and
//! `unavailable` whenever the token stops answering, from which the
//! certifier returns by itself once the token is back.

use crate::config::{CertifierConfig, Config};
use crate::hsm::pkcs11::{Module, Pkcs11Signer};
use crate::hsm::{HsmError, KeyType, Signer, TokenSigner};
use crate::x509;
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use x509_cert::Certificate;

/// How often certifier tokens are probed (and unavailable ones retried),
/// and how soon work that waits for an active certifier looks again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The state of a certifier, as shown by `certd status` and the health API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum State {
    /// No PIN given yet; nothing can be signed.
    Locked,
    /// Logged in and signing.
    Active,
    /// The token or module is not usable; the reason says why.
    Unavailable(String),
}

impl State {
    /// The short name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            State::Locked => "locked",
            State::Active => "active",
            State::Unavailable(_) => "unavailable",
        }
    }
}

/// Errors loading certifiers at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertifierError {
    /// The certifier's certificate cannot be used.
    #[error("certifier {name:?}: {message}")]
    Certificate {
        /// Certifier name.
        name: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// No such certifier.
    #[error("no certifier {0:?}; `certd status` lists them by name and number")]
    Unknown(String),
    /// Several certifiers and none named.
    #[error("this daemon has {0} certifiers: name the one to use (by name or number)")]
    Ambiguous(usize),
}

impl CertifierError {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            CertifierError::Certificate { .. } => "bad_certificate",
            CertifierError::Unknown(_) => "unknown_certifier",
            CertifierError::Ambiguous(_) => "certifier_required",
        }
    }
}

struct Live {
    state: State,
    signer: Option<Arc<dyn TokenSigner + Send + Sync>>,
    /// Kept while active so the daemon can log in again on its own after
    /// the token went away and came back; wiped on deactivation.
    pin: Option<SecretString>,
}

/// One certifier: configuration, certificate, and live state.
pub struct Certifier {
    /// 1-based number, stable for a given configuration order.
    pub number: usize,
    /// Its configuration.
    pub config: CertifierConfig,
    /// Its own certificate.
    pub certificate: Certificate,
    /// The chain above it (may be empty for a root).
    pub chain: Vec<Certificate>,
    /// Key type, from the certificate.
    pub key_type: KeyType,
    /// The issuer side of the certificates it signs, from its certificate.
    pub issuer: crate::certgen::IssuerInfo,
    /// PEM of its certificate, then of the chain above it: what is
    /// returned with every certificate it issues.
    pub chain_pems: Vec<String>,
    /// Why its certificate cannot certify (not a CA certificate, a chain
    /// that does not link up): it stays out of service, and says so.
    pub defect: Option<String>,
    module: PathBuf,
    sessions: usize,
    live: RwLock<Live>,
    /// Told each time the certifier becomes active (activation, the token
    /// coming back): the CRL task waits on it while locked.
    became_active: tokio::sync::Notify,
}

impl std::fmt::Debug for Certifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certifier")
            .field("number", &self.number)
            .field("name", &self.config.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Certifier {
    /// The certifier's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The subject of its certificate, as text.
    pub fn subject(&self) -> String {
        self.certificate.tbs_certificate().subject().to_string()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .state
            .clone()
    }

    /// The signer, if active.
    pub fn signer(&self) -> Result<Arc<dyn Signer + Send + Sync>, HsmError> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        match (&live.state, &live.signer) {
            (State::Active, Some(s)) => {
                let signer: Arc<dyn Signer + Send + Sync> = s.clone();
                Ok(signer)
            }
            (State::Unavailable(r), _) => Err(HsmError::Unavailable(r.clone())),
            _ => Err(HsmError::Locked),
        }
    }

    fn open_signer(&self, pin: &SecretString, fresh_login: bool) -> Result<Pkcs11Signer, HsmError> {
        let module = Module::open(&self.module)?;
        let signer = Pkcs11Signer::open(
            module,
            &self.config.token_label,
            &self.config.key_label,
            pin,
            self.sessions,
            fresh_login,
        )?;
        if signer.public_key() != self.certificate.tbs_certificate().subject_public_key_info() {
            return Err(HsmError::KeyMismatch {
                token: self.config.token_label.clone(),
                label: self.config.key_label.clone(),
                certificate: self.config.certificate.display().to_string(),
            });
        }
        Ok(signer)
    }

    /// Makes the certifier active with `signer` instead of a token login,
    /// for unit tests of what happens behind the token.
    #[cfg(test)]
    pub(crate) fn activate_with(&self, signer: Arc<dyn TokenSigner + Send + Sync>) {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        live.signer = Some(signer);
        live.state = State::Active;
        self.became_active.notify_one();
    }

    /// Resolves once the certifier has become active since the last call
    /// (at once if it did in between): for tasks that wait while it is not.
    pub async fn activated(&self) {
        self.became_active.notified().await;
    }

    /// Whether `pin` equals the PIN this certifier is logged in with
    /// (constant time).
    fn pin_matches(&self, pin: &SecretString) -> Option<bool> {
        use secrecy::ExposeSecret;
        use subtle::ConstantTimeEq;
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        let held = live.pin.as_ref()?;
        Some(
            held.expose_secret()
                .as_bytes()
                .ct_eq(pin.expose_secret().as_bytes())
                .into(),
        )
    }

    /// Logs in with `pin` and becomes active. The PIN is tried exactly
    /// once; see [`Certifiers::activate`] for `fresh_login`.
    fn activate(&self, pin: SecretString, fresh_login: bool) -> Result<(), HsmError> {
        if let Some(defect) = &self.defect {
            return Err(HsmError::Unavailable(self.defect_reason(defect)));
        }
        let signer = self.open_signer(&pin, fresh_login)?;
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        live.signer = Some(Arc::new(signer));
        live.pin = Some(pin);
        live.state = State::Active;
        self.became_active.notify_one();
        Ok(())
    }

    /// Locked, or out of service when its certificate is defective.
    fn initial_state(&self) -> State {
        match &self.defect {
            Some(d) => State::Unavailable(self.defect_reason(d)),
            None => State::Locked,
        }
    }

    fn defect_reason(&self, defect: &str) -> String {
        format!(
            "certificate {} cannot certify: {defect}; fix it (or the chain) and restart certd",
            self.config.certificate.display()
        )
    }

    /// Drops the signer and the PIN; `logout` also logs the token out.
    fn lock(&self, logout: bool) -> Result<(), HsmError> {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        let signer = live.signer.take();
        live.pin = None;
        live.state = self.initial_state();
        drop(live);
        if let (Some(s), true) = (signer, logout) {
            s.logout()?;
        }
        Ok(())
    }

    /// Marks the certifier unavailable after a token fault seen while
    /// signing; the recovery probe brings it back.
    pub fn report_fault(&self, reason: &str) {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.state == State::Active {
            live.state = State::Unavailable(reason.to_string());
            live.signer = None;
        }
    }

    /// Checks an active certifier's token and tries to bring an unavailable
    /// one back. Returns the new state if it changed.
    pub fn probe(&self) -> Option<State> {
        let (state, signer, pin) = {
            let live = self.live.read().unwrap_or_else(|p| p.into_inner());
            (live.state.clone(), live.signer.clone(), live.pin.clone())
        };
        match state {
            State::Active => {
                let signer = signer?;
                if let Err(e) = signer.probe() {
                    let reason =
                        format!("token {:?} stopped answering: {e}", self.config.token_label);
                    self.report_fault(&reason);
                    return Some(State::Unavailable(reason));
                }
                None
            }
            State::Unavailable(old) => {
                let pin = pin?;
                // The PIN was checked by the token when it was first given.
                match self.open_signer(&pin, false) {
                    Ok(s) => {
                        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
                        if live.state == State::Unavailable(old) {
                            live.signer = Some(Arc::new(s));
                            live.state = State::Active;
                            self.became_active.notify_one();
                            return Some(State::Active);
                        }
                        None
                    }
                    Err(HsmError::PinIncorrect(_) | HsmError::PinLocked(_)) => {
                        // The PIN changed behind our back: never retry it.
                        let _ = self.lock(false);
                        Some(State::Locked)
                    }
                    Err(e) => {
                        // Health names the token whatever the call that failed.
                        let reason =
                            format!("token {:?} still unavailable: {e}", self.config.token_label);
                        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
                        if live.state == State::Unavailable(old.clone()) && old != reason {
                            live.state = State::Unavailable(reason.clone());
                            return Some(State::Unavailable(reason));
                        }
                        None
                    }
                }
            }
            State::Locked => None,
        }
    }
}

/// What keeps a certifier's certificate from certifying: not a CA
/// certificate (basicConstraints cA, keyUsage keyCertSign and cRLSign), or
/// a chain whose links (issuer name and signature, up to a self-signed
/// root when the chain ends in one) do not hold.
pub fn certificate_defect(certificate: &Certificate, chain: &[Certificate]) -> Option<String> {
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
    let tbs = certificate.tbs_certificate();
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {}
        _ => return Some("it is not a CA certificate (basicConstraints cA is not true)".into()),
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku)))
            if ku.0.contains(KeyUsages::KeyCertSign) && ku.0.contains(KeyUsages::CRLSign) => {}
        _ => return Some("its keyUsage lacks keyCertSign or cRLSign".into()),
    }
    let links: Vec<&Certificate> = std::iter::once(certificate).chain(chain).collect();
    for (i, cert) in links.iter().enumerate() {
        let issuer = match links.get(i + 1) {
            Some(next) => *next,
            // The last one: checked against itself when self-issued.
            None if cert.tbs_certificate().issuer() == cert.tbs_certificate().subject() => cert,
            None => break,
        };
        let what = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("chain certificate {i}")
        };
        if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
            return Some(format!(
                "{what} is issued by {}, but the next in the chain is {}",
                cert.tbs_certificate().issuer(),
                issuer.tbs_certificate().subject()
            ));
        }
        let spki = issuer.tbs_certificate().subject_public_key_info();
        let verified = der::Encode::to_der(cert.tbs_certificate())
            .map_err(|e| e.to_string())
            .and_then(|tbs| {
                let key_type = KeyType::of_spki(spki)?;
                let sig = cert
                    .signature()
                    .as_bytes()
                    .ok_or("the signature has unused bits")?;
                crate::hsm::verify::verify_with_algorithm(
                    spki,
                    key_type,
                    cert.signature_algorithm(),
                    &tbs,
                    sig,
                )
            });
        if let Err(e) = verified {
            return Some(format!(
                "{what}'s signature does not verify under {}: {e}",
                issuer.tbs_certificate().subject()
            ));
        }
    }
    None
}

/// All certifiers of a daemon.
#[derive(Debug)]
pub struct Certifiers {
    list: Vec<Arc<Certifier>>,
    /// Serialises activations and deactivations: PKCS#11 logins are per
    /// token, so two at once could log a token out under the other.
    transitions: std::sync::Mutex<()>,
}

impl Certifiers {
    /// Loads every certifier's certificate; all start locked.
    pub fn load(config: &Config) -> Result<Certifiers, CertifierError> {
        let mut list = Vec::new();
        for (i, c) in config.certifiers.iter().enumerate() {
            let fail = |message: String| CertifierError::Certificate {
                name: c.name.clone(),
                message,
            };
            let certs = x509::read_certificates(&c.certificate).map_err(|e| {
                fail(format!(
                    "{e}; write it with `certd init-ca --cert-out` or `certd import-ca-cert`"
                ))
            })?;
            let certificate = certs
                .into_iter()
                .next()
                .ok_or_else(|| fail("certificate file holds no certificate".into()))?;
            let chain = match &c.chain {
                Some(p) => x509::read_certificates(p).map_err(|e| fail(e.to_string()))?,
                None => Vec::new(),
            };
            let key_type =
                x509::key_type_of(certificate.tbs_certificate().subject_public_key_info())
                    .map_err(|e| fail(e.to_string()))?;
            let chain_pems = std::iter::once(&certificate)
                .chain(chain.iter())
                .map(|c| der::EncodePem::to_pem(c, der::pem::LineEnding::LF))
                .collect::<Result<_, _>>()
                .map_err(|e| fail(format!("cannot encode the chain as PEM: {e}")))?;
            let defect = certificate_defect(&certificate, &chain);
            let certifier = Certifier {
                number: i + 1,
                config: c.clone(),
                issuer: crate::certgen::IssuerInfo::of(&certificate),
                chain_pems,
                certificate,
                chain,
                key_type,
                defect,
                module: config.hsm.module.clone(),
                sessions: config.hsm.sessions,
                became_active: tokio::sync::Notify::new(),
                live: RwLock::new(Live {
                    state: State::Locked,
                    signer: None,
                    pin: None,
                }),
            };
            if let Some(d) = &certifier.defect {
                tracing::error!(certifier = %c.name, defect = %d, "certifier out of service");
            }
            certifier
                .live
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .state = certifier.initial_state();
            list.push(Arc::new(certifier));
        }
        Ok(Certifiers {
            list,
            transitions: std::sync::Mutex::new(()),
        })
    }

    /// All certifiers in number order.
    pub fn all(&self) -> &[Arc<Certifier>] {
        &self.list
    }

    /// Whether certifier `name` signed the DER certificate `der`: its
    /// issuer is the certifier's subject and its signature verifies under
    /// the certifier's key (from its certificate: no token needed).
    pub fn verify_issued(&self, name: &str, der: &[u8]) -> Result<(), String> {
        use der::{Decode, Encode};
        let certifier = self
            .list
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| format!("there is no certifier {name:?} in the configuration"))?;
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
        if cert.tbs_certificate().issuer() != certifier.certificate.tbs_certificate().subject() {
            return Err("its issuer is not the certifier's subject".into());
        }
        let tbs = cert.tbs_certificate().to_der().map_err(|e| e.to_string())?;
        let signature = cert
            .signature()
            .as_bytes()
            .ok_or("the signature has unused bits")?;
        crate::hsm::verify::verify(
            certifier
                .certificate
                .tbs_certificate()
                .subject_public_key_info(),
            certifier.key_type,
            &tbs,
            signature,
        )
    }

    /// Finds a certifier by name or number; `None` picks the only one.
    pub fn find(&self, which: Option<&str>) -> Result<Arc<Certifier>, CertifierError> {
        match which {
            None if self.list.len() == 1 => Ok(self.list[0].clone()),
            None => Err(CertifierError::Ambiguous(self.list.len())),
            Some(w) => {
                if let Ok(n) = w.parse::<usize>() {
                    if let Some(c) = n.checked_sub(1).and_then(|i| self.list.get(i)) {
                        return Ok(c.clone());
                    }
                }
                self.list
                    .iter()
                    .find(|c| c.name() == w)
                    .cloned()
                    .ok_or_else(|| CertifierError::Unknown(w.to_string()))
            }
        }
    }

    /// Activates `certifier` with `pin`.
    ///
    /// When another certifier on the same token is active, the token is
    /// already logged in and would accept any PIN, so the PIN is compared
    /// with the one that logged it in instead; otherwise the token checks it.
    ///
    /// Returns `false` when the certifier was already active (the PIN is
    /// still checked, against the one it is logged in with).
    pub fn activate(&self, certifier: &Certifier, pin: SecretString) -> Result<bool, HsmError> {
        let _serial = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let wrong = || HsmError::PinIncorrect(certifier.config.token_label.clone());
        if certifier.state() == State::Active {
            return match certifier.pin_matches(&pin) {
                Some(true) => Ok(false),
                _ => Err(wrong()),
            };
        }
        let sibling = self.list.iter().find(|c| {
            c.number != certifier.number
                && c.config.token_label == certifier.config.token_label
                && c.state() == State::Active
        });
        match sibling.and_then(|s| s.pin_matches(&pin)) {
            Some(true) => certifier.activate(pin, false).map(|()| true),
            Some(false) => Err(wrong()),
            None => certifier.activate(pin, true).map(|()| true),
        }
    }

    /// Whether any certifier is unavailable but holds a PIN, i.e. would come
    /// back by itself once the token answers again.
    pub fn awaiting_token(&self) -> bool {
        self.list.iter().any(|c| {
            let live = c.live.read().unwrap_or_else(|p| p.into_inner());
            matches!(live.state, State::Unavailable(_)) && live.pin.is_some()
        })
    }

    /// Re-initialises the PKCS#11 module (so it rescans its slots) and logs
    /// every certifier that holds a PIN back in. Signers are taken out of
    /// service first, and in-flight operations are given a few seconds to
    /// finish, so no session of the old generation is used afterwards.
    /// Returns each certifier's new state.
    pub fn reinitialize_module(&self) -> Result<Vec<(String, State)>, HsmError> {
        let _serial = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first) = self.list.first() else {
            return Ok(Vec::new());
        };
        let mut held = Vec::new();
        for c in &self.list {
            let mut live = c.live.write().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = live.signer.take() {
                held.push(s);
            }
            if live.state == State::Active {
                live.state = State::Unavailable(format!(
                    "token {:?}: the PKCS#11 module is being re-initialised",
                    c.config.token_label
                ));
            }
        }
        // About 5 s, counted in pauses: a bound that reads no clock.
        for _ in 0..500 {
            if held.iter().all(|s| Arc::strong_count(s) == 1) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(held);
        Module::open(&first.module)?.reinitialize()?;
        let mut out = Vec::new();
        for c in &self.list {
            let pin = c.live.read().unwrap_or_else(|p| p.into_inner()).pin.clone();
            let Some(pin) = pin else { continue };
            let state = match c.open_signer(&pin, false) {
                Ok(s) => {
                    let mut live = c.live.write().unwrap_or_else(|p| p.into_inner());
                    live.signer = Some(Arc::new(s));
                    live.state = State::Active;
                    c.became_active.notify_one();
                    State::Active
                }
                Err(HsmError::PinIncorrect(_) | HsmError::PinLocked(_)) => {
                    let _ = c.lock(false);
                    State::Locked
                }
                Err(e) => {
                    let reason = format!("token {:?} still unavailable: {e}", c.config.token_label);
                    c.live.write().unwrap_or_else(|p| p.into_inner()).state =
                        State::Unavailable(reason.clone());
                    State::Unavailable(reason)
                }
            };
            out.push((c.name().to_string(), state));
        }
        Ok(out)
    }

    /// Locks `certifier`; logs its token out only when no other active
    /// certifier shares the token (PKCS#11 logins are per token).
    pub fn deactivate(&self, certifier: &Certifier) -> Result<(), HsmError> {
        let _serial = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let shared = self.list.iter().any(|c| {
            c.number != certifier.number
                && c.config.token_label == certifier.config.token_label
                && c.state() == State::Active
        });
        certifier.lock(!shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    fn ca_certificate() -> Certificate {
        Certificate::from_der(&crate::testing::certificate_der()).expect("a certificate")
    }

    #[test]
    fn a_certificate_that_cannot_certify_is_named() {
        let ca = ca_certificate();
        assert_eq!(certificate_defect(&ca, &[]), None, "a self-signed CA");
        // A subscriber certificate of a test CA is no CA certificate.
        let test_ca = crate::testing::TestCa::new(
            "[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n",
            "profiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]",
        );
        let req = certd_api::IssueRequest::new(
            "r1",
            "tls-server",
            crate::testing::csr(0x42, "www.example.com"),
        );
        let leaf = test_ca
            .services
            .issuer
            .issue_blocking(&test_ca.grant(), &req)
            .expect("issued");
        let leaf: Certificate =
            der::DecodePem::from_pem(leaf.certificate.as_bytes()).expect("leaf");
        let d = certificate_defect(&leaf, &[]).expect("a leaf cannot certify");
        assert!(d.contains("not a CA certificate"), "{d}");
        // A chain that is not the certificate's issuer.
        let other = test_ca.services.certifiers.all()[0].certificate.clone();
        // Both are named "certd unit-test CA": the link's name holds, its
        // signature does not.
        let d = certificate_defect(&other, std::slice::from_ref(&ca)).expect("wrong chain");
        assert!(d.contains("signature does not verify"), "{d}");
        // A self-signed certificate whose signature was damaged.
        let mut der = der::Encode::to_der(&ca).expect("der");
        let last = der.len() - 1;
        der[last] ^= 1;
        let damaged = Certificate::from_der(&der).expect("still DER");
        let d = certificate_defect(&damaged, &[]).expect("damaged");
        assert!(d.contains("signature does not verify"), "{d}");
    }
}
