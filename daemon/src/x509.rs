//! X.509 around a token key: certificate and request assembly, names and
//! extensions, times, and certificates in files and PEM.
//!
//! The `x509-cert` builders expect a software key pair; [`TokenKeyRef`]
//! stands in for one by carrying only the public half and the signature
//! algorithm, so the builders produce the to-be-signed bytes, the token
//! signs them, and the builders assemble the result.

use crate::clock;
use crate::hsm::{self, HsmError, KeyType, Signer};
use certd_api::{ApiError, ErrorCode};
use const_oid::db::rfc4519;
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, OctetString, PrintableStringRef, Utf8StringRef};
use der::{Any, Decode, Encode, EncodePem};
use sha2::Digest;
use spki::{AlgorithmIdentifierOwned, Document, EncodePublicKey, SubjectPublicKeyInfoOwned};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::Builder;
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::time::Time;
use x509_cert::Certificate;

/// The public half of a token key, as the `x509-cert` builders need it.
#[derive(Clone, Debug)]
pub struct TokenKeyRef {
    spki: SubjectPublicKeyInfoOwned,
    algorithm: AlgorithmIdentifierOwned,
}

impl TokenKeyRef {
    /// The public key and signature algorithm of `signer`.
    pub fn of(signer: &dyn Signer) -> Self {
        TokenKeyRef {
            spki: signer.public_key().clone(),
            algorithm: signer.key_type().signature_algorithm(),
        }
    }
}

/// The verifying half of [`TokenKeyRef`].
#[derive(Clone, Debug)]
pub struct PublicKeyRef(SubjectPublicKeyInfoOwned);

impl EncodePublicKey for PublicKeyRef {
    fn to_public_key_der(&self) -> spki::Result<Document> {
        Ok(Document::encode_msg(&self.0)?)
    }
}

impl signature::Keypair for TokenKeyRef {
    type VerifyingKey = PublicKeyRef;
    fn verifying_key(&self) -> PublicKeyRef {
        PublicKeyRef(self.spki.clone())
    }
}

impl spki::DynSignatureAlgorithmIdentifier for TokenKeyRef {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.algorithm.clone())
    }
}

/// Errors assembling certificates and requests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// An input value cannot be encoded (too long, wrong characters).
    #[error("{0}")]
    Invalid(String),
    /// The token failed to sign.
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

impl X509Error {
    /// The API's answer to this error: the token's for a signing failure,
    /// `bad_request` for a value that cannot be encoded.
    pub fn api_error(&self) -> ApiError {
        match self {
            X509Error::Hsm(h) => h.api_error(),
            X509Error::Invalid(m) => ApiError::new(ErrorCode::BadRequest, m.clone()),
        }
    }
}

fn enc(e: impl std::fmt::Display) -> X509Error {
    X509Error::Invalid(e.to_string())
}

/// Runs a builder through the token: finalize, sign, verify, assemble.
pub fn build_signed<B: Builder>(
    mut builder: B,
    signer: &dyn Signer,
) -> Result<B::Output, X509Error> {
    let key = TokenKeyRef::of(signer);
    let tbs = builder.finalize(&key).map_err(enc)?;
    let sig = hsm::sign_checked(signer, &tbs)?;
    let bits = BitString::from_bytes(&sig).map_err(enc)?;
    builder.assemble(bits, &key).map_err(enc)
}

/// Subject attributes of a certifier, as given at the key ceremony.
#[derive(Debug, Clone, Default)]
pub struct SubjectSpec {
    /// commonName (required).
    pub cn: String,
    /// organizationName.
    pub o: Option<String>,
    /// organizationalUnitName.
    pub ou: Option<String>,
    /// localityName.
    pub l: Option<String>,
    /// stateOrProvinceName.
    pub st: Option<String>,
    /// countryName: two upper-case letters (ISO 3166).
    pub c: Option<String>,
}

impl SubjectSpec {
    /// Checks the values and builds the Name, in the conventional order
    /// C, ST, L, O, OU, CN.
    pub fn to_name(&self) -> Result<Name, X509Error> {
        let mut attrs: Vec<(ObjectIdentifier, &str)> = Vec::new();
        if let Some(c) = &self.c {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(X509Error::Invalid(format!(
                    "country {c:?} must be two upper-case letters (ISO 3166-1 alpha-2), e.g. DE"
                )));
            }
            attrs.push((rfc4519::COUNTRY_NAME, c));
        }
        let optional = [
            (rfc4519::ST, &self.st, "state"),
            (rfc4519::LOCALITY_NAME, &self.l, "locality"),
            (rfc4519::ORGANIZATION_NAME, &self.o, "organization"),
            (
                rfc4519::ORGANIZATIONAL_UNIT_NAME,
                &self.ou,
                "organizational unit",
            ),
        ];
        for (oid, value, what) in optional {
            if let Some(v) = value {
                check_len(v, what)?;
                attrs.push((oid, v));
            }
        }
        check_len(&self.cn, "common name")?;
        attrs.push((rfc4519::COMMON_NAME, &self.cn));
        name_from(&attrs)
    }
}

fn check_len(v: &str, what: &str) -> Result<(), X509Error> {
    let n = v.chars().count();
    if n == 0 || n > 64 {
        return Err(X509Error::Invalid(format!(
            "{what} must be 1 to 64 characters, got {n}"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(X509Error::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Builds a Name with one attribute per RDN, countryName as
/// PrintableString, emailAddress as IA5String and everything else as
/// UTF8String (RFC 5280 4.1.2.4).
pub fn name_from(attrs: &[(ObjectIdentifier, &str)]) -> Result<Name, X509Error> {
    let mut seq = RdnSequence::default();
    for (oid, value) in attrs {
        let value = if *oid == rfc4519::COUNTRY_NAME {
            Any::encode_from(&PrintableStringRef::new(value).map_err(enc)?).map_err(enc)?
        } else if *oid == const_oid::db::rfc2985::PKCS_9_AT_EMAIL_ADDRESS {
            // PKCS #9: emailAddress is an IA5String.
            Any::encode_from(&der::asn1::Ia5StringRef::new(value).map_err(enc)?).map_err(enc)?
        } else {
            Any::encode_from(&Utf8StringRef::new(value).map_err(enc)?).map_err(enc)?
        };
        let rdn =
            RelativeDistinguishedName::try_from(vec![AttributeTypeAndValue { oid: *oid, value }])
                .map_err(enc)?;
        seq.push(rdn);
    }
    Name::from_der(&seq.to_der().map_err(enc)?).map_err(enc)
}

/// The subjectKeyIdentifier of a public key: the leftmost 160 bits of the
/// SHA-256 of the subjectPublicKey bits (RFC 7093, section 2, method 1).
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let digest = sha2::Sha256::digest(spki.subject_public_key.raw_bytes());
    digest[..20].to_vec()
}

/// Wraps an extension value with its OID and criticality.
pub fn extension<T: Encode + const_oid::AssociatedOid>(
    value: &T,
    critical: bool,
) -> Result<Extension, X509Error> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(enc)?).map_err(enc)?,
    })
}

/// PEM-encodes a DER object with its label.
pub fn to_pem<T: EncodePem>(value: &T) -> Result<String, X509Error> {
    value.to_pem(der::pem::LineEnding::LF).map_err(enc)
}

/// PEM of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap_or_default()
}

/// Errors reading a certificate file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file holds no certificate, or something else.
    #[error("{path}: {message}")]
    Bad {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Reads one or more certificates from a file: PEM, or one DER certificate.
pub fn read_certificates(path: &std::path::Path) -> Result<Vec<Certificate>, CertificateFileError> {
    let bytes = std::fs::read(path).map_err(|source| CertificateFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| CertificateFileError::Bad {
        path: path.to_path_buf(),
        message,
    };
    if bytes.starts_with(&[0x30]) {
        return Certificate::from_der(&bytes)
            .map(|c| vec![c])
            .map_err(|e| bad(format!("not a DER certificate: {e}")));
    }
    let certs = Certificate::load_pem_chain(&bytes)
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(certs)
}

/// Unix seconds of an X.509 time.
pub fn unix_of(t: &Time) -> i64 {
    clock::unix_seconds(t.to_system_time())
}

/// The X.509 time of Unix seconds (a time before 1970 as 1970).
pub fn time_at(secs: i64) -> Result<Time, X509Error> {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Time::try_from(t).map_err(enc)
}

/// A positive serial number of `bytes` random bytes from the OS CSPRNG.
pub fn random_serial(bytes: usize) -> Result<Vec<u8>, X509Error> {
    let mut s = vec![0u8; bytes.clamp(9, 20)];
    getrandom::fill(&mut s).map_err(|e| X509Error::Invalid(format!("OS RNG: {e}")))?;
    Ok(positive_serial(s))
}

/// Random bytes made a serial: positive, and with a non-zero first octet
/// so the full entropy survives DER's minimal encoding.
fn positive_serial(mut s: Vec<u8>) -> Vec<u8> {
    if let Some(first) = s.first_mut() {
        *first = (*first & 0x7f) | 0x01;
    }
    s
}

/// The key type of `spki`, if certd supports it.
pub fn key_type_of(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyType, X509Error> {
    KeyType::of_spki(spki).map_err(X509Error::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_checks_country_and_lengths() {
        let mut s = SubjectSpec {
            cn: "Test Root".into(),
            c: Some("DE".into()),
            o: Some("Example".into()),
            ..Default::default()
        };
        let name = s.to_name().expect("valid");
        assert_eq!(name.to_string(), "CN=Test Root,O=Example,C=DE");
        s.c = Some("Germany".into());
        assert!(s.to_name().is_err());
        s.c = Some("de".into());
        assert!(s.to_name().is_err());
        s.c = None;
        s.cn = "x".repeat(65);
        assert!(s.to_name().is_err());
        s.cn = String::new();
        assert!(s.to_name().is_err());
    }

    #[test]
    fn serials_are_positive_and_keep_every_octet_in_der() {
        use x509_cert::serial_number::SerialNumber;
        // The draws that DER would shorten or make negative.
        for (drawn, first) in [(0x00, 0x01), (0x80, 0x01), (0xff, 0x7f), (0x42, 0x43)] {
            let serial = positive_serial(vec![drawn; 16]);
            assert_eq!(serial[0], first, "first octet drawn as {drawn:#04x}");
            assert_eq!(serial[1..], [drawn; 15]);
            let der = SerialNumber::<x509_cert::certificate::Rfc5280>::new(&serial)
                .expect("a serial")
                .to_der()
                .expect("DER");
            // INTEGER tag, length 16, then the 16 octets unchanged.
            assert_eq!(der[..2], [0x02, 16]);
            assert_eq!(der[2..], serial[..]);
        }
        // RFC 5280 caps serials at 20 octets; 64 random bits need at least 9.
        for (asked, got) in [(1, 9), (9, 9), (16, 16), (20, 20), (64, 20)] {
            assert_eq!(random_serial(asked).expect("rng").len(), got, "{asked}");
        }
    }
}
