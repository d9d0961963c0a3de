//! The key ceremony: generating a certifier key inside the token, then
//! either self-signing a root or writing a CSR for an external parent, and
//! binding a parent-signed certificate to the key afterwards.
//!
//! A failed ceremony leaves nothing behind: generated key objects are
//! destroyed and output files are written only at the very end, by rename.

use crate::certgen::FixedProfile;
use crate::clock::Clock;
use crate::hsm::pkcs11::{self, Module};
use crate::hsm::{HsmError, KeyType, Signer};
use crate::x509::{self, read_certificates, CertificateFileError, SubjectSpec, X509Error};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use der::DecodePem;
use secrecy::SecretString;
use spki::SubjectPublicKeyInfoOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;
use x509_cert::builder::{CertificateBuilder, RequestBuilder};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

/// Errors of the key ceremony.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    /// From the token.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// From certificate assembly or bad subject values.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// An output file exists already.
    #[error("{0} exists already; choose another output path (nothing was generated)")]
    OutputExists(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A certificate file is not what was expected.
    #[error("{path}: {message}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl From<CertificateFileError> for CeremonyError {
    fn from(e: CertificateFileError) -> Self {
        match e {
            CertificateFileError::Io { path, source } => CeremonyError::Io { path, source },
            CertificateFileError::Bad { path, message } => {
                CeremonyError::BadCertificate { path, message }
            }
        }
    }
}

/// What the ceremony produces besides the key.
#[derive(Debug, Clone)]
pub enum CeremonyOutput {
    /// A self-signed root certificate written to this path.
    SelfSigned {
        /// Output PEM file.
        cert_out: PathBuf,
        /// Validity in days.
        days: u32,
    },
    /// A PKCS#10 request for an external parent written to this path.
    Csr {
        /// Output PEM file.
        csr_out: PathBuf,
    },
}

/// Parameters of `certd init-ca`.
#[derive(Debug)]
pub struct InitCa {
    /// PKCS#11 module path.
    pub module: PathBuf,
    /// Token label.
    pub token_label: String,
    /// Label for the new key pair.
    pub key_label: String,
    /// Key algorithm.
    pub key_type: KeyType,
    /// Token user PIN.
    pub pin: SecretString,
    /// Subject of the certifier.
    pub subject: SubjectSpec,
    /// basicConstraints pathLenConstraint.
    pub path_len: Option<u8>,
    /// Root or CSR.
    pub output: CeremonyOutput,
}

/// What a successful ceremony made.
#[derive(Debug)]
pub struct InitCaResult {
    /// The key type generated.
    pub key_type: KeyType,
    /// SHA-256 of the SubjectPublicKeyInfo, hex.
    pub spki_sha256: String,
    /// The PEM written (certificate or CSR).
    pub pem: String,
    /// Where it was written.
    pub path: PathBuf,
}

/// Destroys freshly generated key objects unless the ceremony completes.
struct Rollback<'a> {
    session: &'a Session,
    objects: Vec<ObjectHandle>,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        for o in self.objects.drain(..) {
            if let Err(e) = self.session.destroy_object(o) {
                tracing::error!(error = %e, "could not remove a key object of a failed ceremony");
            }
        }
    }
}

/// A signer over one session, for the ceremony's few signatures.
struct CeremonySigner<'a> {
    session: &'a Session,
    key: ObjectHandle,
    key_type: KeyType,
    spki: SubjectPublicKeyInfoOwned,
}

impl Signer for CeremonySigner<'_> {
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        pkcs11::sign_raw(self.session, self.key_type, self.key, message)
            .map_err(|e| pkcs11::ck_err("C_Sign", e))
    }
}

/// The extensions of a certifier's own certificate: a CA key, its key
/// identifier, and at most `path_len` CAs below it.
pub(crate) fn ca_extensions(
    spki: &SubjectPublicKeyInfoOwned,
    path_len: Option<u8>,
) -> Result<Vec<Extension>, X509Error> {
    let ski = der::asn1::OctetString::new(x509::key_identifier(spki))
        .map_err(|e| X509Error::Invalid(e.to_string()))?;
    Ok(vec![
        x509::extension(
            &BasicConstraints {
                ca: true,
                path_len_constraint: path_len,
            },
            true,
        )?,
        x509::extension(
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature),
            true,
        )?,
        x509::extension(&SubjectKeyIdentifier(ski.clone()), false)?,
        x509::extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(ski),
                ..Default::default()
            },
            false,
        )?,
    ])
}

fn refuse_existing(path: &Path) -> Result<(), CeremonyError> {
    if path.exists() {
        return Err(CeremonyError::OutputExists(path.to_path_buf()));
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename).
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CeremonyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CeremonyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp-certd");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    let result = f
        .write_all(contents)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

fn open_logged_in(
    module: &Path,
    token_label: &str,
    pin: &SecretString,
) -> Result<Session, CeremonyError> {
    let module = Module::open(module)?;
    let slot = module.find_slot(token_label)?;
    let session = module.open_session(slot)?;
    pkcs11::login(&session, token_label, pin, true)?;
    Ok(session)
}

/// Runs the key ceremony; a self-signed root is valid from `clock`'s now.
pub fn init_ca(req: &InitCa, clock: &dyn Clock) -> Result<InitCaResult, CeremonyError> {
    let subject = req.subject.to_name()?;
    let out_path = match &req.output {
        CeremonyOutput::SelfSigned { cert_out, .. } => cert_out,
        CeremonyOutput::Csr { csr_out } => csr_out,
    };
    refuse_existing(out_path)?;
    let session = open_logged_in(&req.module, &req.token_label, &req.pin)?;
    if !pkcs11::objects_with_label(&session, &req.key_label)?.is_empty() {
        return Err(HsmError::KeyExists {
            token: req.token_label.clone(),
            label: req.key_label.clone(),
        }
        .into());
    }
    let (private, public) = pkcs11::generate_key_pair(&session, req.key_type, &req.key_label)?;
    let mut rollback = Rollback {
        session: &session,
        objects: vec![private, public],
    };
    let (key_type, spki) = pkcs11::public_key_info(&session, public)?;
    let signer = CeremonySigner {
        session: &session,
        key: private,
        key_type,
        spki: spki.clone(),
    };
    let pem = match &req.output {
        CeremonyOutput::SelfSigned { days, .. } => {
            let now = clock.now();
            let not_after = now + Duration::from_secs(u64::from(*days) * 86_400);
            let validity = Validity::new(
                Time::try_from(now).map_err(|e| X509Error::Invalid(e.to_string()))?,
                Time::try_from(not_after).map_err(|e| X509Error::Invalid(e.to_string()))?,
            );
            let serial = SerialNumber::new(&x509::random_serial(16)?)
                .map_err(|e| X509Error::Invalid(e.to_string()))?;
            let profile = FixedProfile::new(
                subject.clone(),
                subject,
                ca_extensions(&spki, req.path_len)?,
            );
            let builder = CertificateBuilder::new(profile, serial, validity, spki.clone())
                .map_err(|e| X509Error::Invalid(e.to_string()))?;
            let cert = x509::build_signed(builder, &signer)?;
            x509::to_pem(&cert)?
        }
        CeremonyOutput::Csr { .. } => {
            let builder =
                RequestBuilder::new(subject).map_err(|e| X509Error::Invalid(e.to_string()))?;
            let csr = x509::build_signed(builder, &signer)?;
            x509::to_pem(&csr)?
        }
    };
    write_new_file(out_path, pem.as_bytes(), 0o644)?;
    rollback.objects.clear();
    Ok(InitCaResult {
        key_type,
        spki_sha256: spki_fingerprint(&spki),
        pem,
        path: out_path.clone(),
    })
}

/// Hex SHA-256 of a DER-encoded SubjectPublicKeyInfo.
pub fn spki_fingerprint(spki: &SubjectPublicKeyInfoOwned) -> String {
    use der::Encode;
    use sha2::Digest;
    spki.to_der()
        .map(|d| hex::encode(sha2::Sha256::digest(d)))
        .unwrap_or_default()
}

/// Parameters of `certd import-ca-cert`.
#[derive(Debug)]
pub struct ImportCaCert {
    /// PKCS#11 module path.
    pub module: PathBuf,
    /// Token label.
    pub token_label: String,
    /// Key label.
    pub key_label: String,
    /// Token user PIN (private key objects are only visible after login).
    pub pin: SecretString,
    /// The parent-signed certificate.
    pub certificate: PathBuf,
    /// The chain above it (issuer first), optional.
    pub chain: Option<PathBuf>,
    /// Where to write the certificate for the configuration.
    pub cert_out: PathBuf,
    /// Where to write the chain, if one was given.
    pub chain_out: Option<PathBuf>,
}

/// Binds a parent-signed certificate to a key in the token, after checking
/// that the certificate carries that key, is a CA certificate, and (with a
/// chain) is signed by the chain's first certificate.
pub fn import_ca_cert(req: &ImportCaCert) -> Result<String, CeremonyError> {
    refuse_existing(&req.cert_out)?;
    if let Some(p) = &req.chain_out {
        refuse_existing(p)?;
    }
    let cert = read_certificates(&req.certificate)?
        .into_iter()
        .next()
        .ok_or_else(|| CeremonyError::BadCertificate {
            path: req.certificate.clone(),
            message: "holds no certificate".into(),
        })?;
    let chain = match &req.chain {
        Some(p) => read_certificates(p)?,
        None => Vec::new(),
    };
    let session = open_logged_in(&req.module, &req.token_label, &req.pin)?;
    let (_, public) = pkcs11::find_key_pair(&session, &req.token_label, &req.key_label)?;
    let (_, spki) = pkcs11::public_key_info(&session, public)?;
    let tbs = cert.tbs_certificate();
    if tbs.subject_public_key_info() != &spki {
        return Err(HsmError::KeyMismatch {
            token: req.token_label.clone(),
            label: req.key_label.clone(),
            certificate: req.certificate.display().to_string(),
        }
        .into());
    }
    let bad = |message: String| CeremonyError::BadCertificate {
        path: req.certificate.clone(),
        message,
    };
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {}
        _ => {
            return Err(bad(
                "is not a CA certificate (basicConstraints cA is not set)".into(),
            ))
        }
    }
    if let Some(parent) = chain.first() {
        verify_issued_by(&cert, parent).map_err(bad)?;
    }
    let pem = x509::to_pem(&cert)?;
    let mut chain_pem = String::new();
    for c in &chain {
        chain_pem.push_str(&x509::to_pem(c)?);
    }
    write_new_file(&req.cert_out, pem.as_bytes(), 0o644)?;
    if let Some(p) = &req.chain_out {
        if let Err(e) = write_new_file(p, chain_pem.as_bytes(), 0o644) {
            let _ = std::fs::remove_file(&req.cert_out);
            return Err(e);
        }
    }
    Ok(pem)
}

/// Checks that `cert` names `parent` as issuer and verifies with its key.
pub fn verify_issued_by(cert: &Certificate, parent: &Certificate) -> Result<(), String> {
    use der::Encode;
    let ptbs = parent.tbs_certificate();
    if cert.tbs_certificate().issuer() != ptbs.subject() {
        return Err(format!(
            "its issuer {} is not the chain's first certificate {}",
            cert.tbs_certificate().issuer(),
            ptbs.subject()
        ));
    }
    let key = ptbs.subject_public_key_info();
    let key_type = crate::hsm::KeyType::of_spki(key)?;
    let tbs_der = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| format!("re-encoding: {e}"))?;
    let sig = cert
        .signature()
        .as_bytes()
        .ok_or("signature has unused bits")?;
    crate::hsm::verify::verify(key, key_type, &tbs_der, sig).map_err(|e| {
        format!("its signature does not verify with the chain's first certificate: {e}")
    })
}

/// Parses a PEM certificate from text (for tests and the daemon).
pub fn parse_pem_certificate(pem: &str) -> Result<Certificate, String> {
    Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())
}
