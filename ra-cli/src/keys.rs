//! Subscriber keys that ra-cli generates for people who bring no CSR: the
//! key, its CSR (signed in software, proof of possession for certd), and
//! the password-encrypted PKCS#8 form (PBES2: PBKDF2-HMAC-SHA256 and
//! AES-256-CBC) in which a key is kept between the request and delivery.
//!
//! Private keys are never written unencrypted: the plain PKCS#8 DER exists
//! only in memory, in zeroizing buffers.

use crate::error::Error;
use der::asn1::{SetOfVec, Utf8StringRef};
use der::{Any, Encode};
use pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::{Builder, RequestBuilder};
use x509_cert::der::EncodePem;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use zeroize::Zeroizing;

/// Key types ra-cli can generate (`--key-type`; `--help` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// RSA, 2048-bit modulus, e = 65537.
    Rsa2048,
    /// RSA, 3072-bit modulus, e = 65537 (generation takes seconds).
    Rsa3072,
}

impl KeyType {
    /// Every generatable type.
    pub const ALL: [KeyType; 4] = [
        KeyType::P256,
        KeyType::P384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
    ];

    /// The name certd and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::P256 => "p256",
            KeyType::P384 => "p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown key type {s:?}: use p256, p384, rsa2048 or rsa3072"))
    }
}

type RsaSigner = rsa::pkcs1v15::SigningKey<sha2::Sha256>;

/// A subscriber private key held in memory (each variant zeroizes itself
/// when dropped).
pub enum SubscriberKey {
    /// P-256.
    P256(p256::ecdsa::SigningKey),
    /// P-384.
    P384(p384::ecdsa::SigningKey),
    /// RSA with PKCS#1 v1.5 / SHA-256 signatures.
    Rsa(Box<RsaSigner>),
}

impl fmt::Debug for SubscriberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubscriberKey({})", self.describe())
    }
}

fn crypto(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Crypto(format!("{what}: {e}"))
}

fn random_scalar<T>(
    len: usize,
    from: impl Fn(&[u8]) -> Result<T, ecdsa_error::Error>,
) -> Result<T, Error> {
    // A uniformly random scalar: retry the (astronomically rare) values
    // outside 1..n instead of reducing, which would bias the key.
    loop {
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut bytes).map_err(|e| Error::Crypto(format!("random: {e}")))?;
        if let Ok(k) = from(&bytes) {
            return Ok(k);
        }
    }
}

mod ecdsa_error {
    pub use p256::ecdsa::Error;
}

impl SubscriberKey {
    /// Generates a key of `kind` from the operating system's CSPRNG.
    pub fn generate(kind: KeyType) -> Result<SubscriberKey, Error> {
        Ok(match kind {
            KeyType::P256 => SubscriberKey::P256(random_scalar(32, |b| {
                p256::ecdsa::SigningKey::from_slice(b)
            })?),
            KeyType::P384 => SubscriberKey::P384(random_scalar(48, |b| {
                p384::ecdsa::SigningKey::from_slice(b)
            })?),
            KeyType::Rsa2048 | KeyType::Rsa3072 => {
                let bits = if kind == KeyType::Rsa2048 { 2048 } else { 3072 };
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits)
                    .map_err(|e| Error::Crypto(format!("RSA key generation: {e}")))?;
                SubscriberKey::Rsa(Box::new(RsaSigner::new(key)))
            }
        })
    }

    /// What kind of key this is, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            SubscriberKey::P256(_) => "p256",
            SubscriberKey::P384(_) => "p384",
            SubscriberKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts;
                let key: &rsa::PrivateKey = k.as_ref().as_ref();
                if key.size() * 8 > 2048 {
                    "rsa3072"
                } else {
                    "rsa2048"
                }
            }
        }
    }

    /// A PKCS#10 request for this key, PEM; the subject holds only
    /// `common_name` (certd takes the names from the RA's request anyway).
    pub fn csr_pem(&self, common_name: Option<&str>) -> Result<String, Error> {
        let subject = subject_cn(common_name)?;
        let err = crypto("building the CSR");
        let builder = RequestBuilder::new(subject).map_err(|e| err(e.to_string()))?;
        let csr = match self {
            SubscriberKey::P256(k) => builder.build::<_, p256::ecdsa::DerSignature>(k),
            SubscriberKey::P384(k) => builder.build::<_, p384::ecdsa::DerSignature>(k),
            SubscriberKey::Rsa(k) => builder.build::<_, rsa::pkcs1v15::Signature>(k.as_ref()),
        }
        .map_err(|e| err(e.to_string()))?;
        csr.to_pem(der::pem::LineEnding::LF)
            .map_err(|e| err(e.to_string()))
    }

    /// The unencrypted PKCS#8 DER, in a buffer wiped when dropped. Only
    /// ever handed to encryption.
    pub fn pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let doc = match self {
            SubscriberKey::P256(k) => k.to_pkcs8_der(),
            SubscriberKey::P384(k) => k.to_pkcs8_der(),
            SubscriberKey::Rsa(k) => k.as_ref().to_pkcs8_der(),
        }
        .map_err(|e| Error::Crypto(format!("encoding the private key: {e}")))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// Parses a PKCS#8 DER private key of a supported type.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SubscriberKey, Error> {
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(SubscriberKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(SubscriberKey::P384(k));
        }
        RsaSigner::from_pkcs8_der(der)
            .map(|k| SubscriberKey::Rsa(Box::new(k)))
            .map_err(|e| Error::Crypto(format!("private key: {e}")))
    }

    /// The key as an `ENCRYPTED PRIVATE KEY` PEM (PBES2 with
    /// PBKDF2-HMAC-SHA256, `iterations` rounds, and AES-256-CBC).
    pub fn to_encrypted_pem(&self, password: &[u8], iterations: u32) -> Result<String, Error> {
        let plain = self.pkcs8_der()?;
        encrypt_pkcs8(&plain, password, iterations)
    }

    /// Reads back what [`SubscriberKey::to_encrypted_pem`] wrote.
    pub fn from_encrypted_pem(pem: &str, password: &[u8]) -> Result<SubscriberKey, Error> {
        let (label, der) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|e| Error::Crypto(format!("encrypted key: {e}")))?;
        if label != "ENCRYPTED PRIVATE KEY" {
            return Err(Error::Crypto(format!(
                "encrypted key: PEM label {label:?}, expected ENCRYPTED PRIVATE KEY"
            )));
        }
        let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
            .map_err(|e| Error::Crypto(format!("encrypted key: {e}")))?;
        let plain = info
            .decrypt(password)
            .map_err(|e| Error::Crypto(format!("encrypted key (wrong password?): {e}")))?;
        SubscriberKey::from_pkcs8_der(plain.as_bytes())
    }
}

/// Encrypts PKCS#8 DER with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC, random
/// 16-byte salt and IV); returns the `ENCRYPTED PRIVATE KEY` PEM.
pub fn encrypt_pkcs8(plain: &[u8], password: &[u8], iterations: u32) -> Result<String, Error> {
    let err = crypto("encrypting the private key");
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| err(e.to_string()))?;
    getrandom::fill(&mut iv).map_err(|e| err(e.to_string()))?;
    let params =
        pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(iterations, &salt, iv)
            .map_err(|e| err(e.to_string()))?;
    let info = pkcs8::PrivateKeyInfoRef::try_from(plain).map_err(|e| err(e.to_string()))?;
    let doc = info
        .encrypt_with_params(params, password)
        .map_err(|e| err(e.to_string()))?;
    let pem = doc
        .to_pem("ENCRYPTED PRIVATE KEY", der::pem::LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    Ok(pem.to_string())
}

/// A subject holding one commonName (UTF8String), or an empty subject.
fn subject_cn(common_name: Option<&str>) -> Result<Name, Error> {
    let Some(cn) = common_name else {
        return Ok(Name::default());
    };
    let err = crypto("subject");
    let value = Any::encode_from(&Utf8StringRef::new(cn).map_err(|e| err(e.to_string()))?)
        .map_err(|e| err(e.to_string()))?;
    let atv = AttributeTypeAndValue {
        oid: const_oid::db::rfc4519::CN,
        value,
    };
    let rdn = RelativeDistinguishedName::from(
        SetOfVec::try_from(vec![atv]).map_err(|e| err(e.to_string()))?,
    );
    let seq = RdnSequence::from(vec![rdn]);
    // Round-trip through DER so the Name is exactly what will be encoded.
    let der = seq.to_der().map_err(|e| err(e.to_string()))?;
    <Name as der::Decode>::from_der(&der).map_err(|e| err(e.to_string()))
}

/// A random password: 24 characters from an alphabet without look-alikes
/// (about 137 bits).
pub fn random_password() -> Result<Zeroizing<String>, Error> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = Zeroizing::new(String::with_capacity(24));
    let mut buf = Zeroizing::new([0u8; 64]);
    while out.len() < 24 {
        getrandom::fill(buf.as_mut()).map_err(|e| Error::Crypto(format!("random: {e}")))?;
        for b in buf.iter() {
            // Rejection sampling: 57 * 4 = 228, so values ≥ 228 are dropped.
            if (*b as usize) < ALPHABET.len() * 4 && out.len() < 24 {
                out.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_parse_and_print() {
        for k in KeyType::ALL {
            assert_eq!(k.as_str().parse::<KeyType>(), Ok(k));
        }
        assert!("ed25519".parse::<KeyType>().is_err());
    }

    #[test]
    fn ec_keys_round_trip_through_encryption() {
        for kind in [KeyType::P256, KeyType::P384] {
            let key = SubscriberKey::generate(kind).expect("generate");
            let pem = key.to_encrypted_pem(b"secret", 1000).expect("encrypt");
            assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
            let back = SubscriberKey::from_encrypted_pem(&pem, b"secret").expect("decrypt");
            assert_eq!(
                *back.pkcs8_der().expect("der"),
                *key.pkcs8_der().expect("der")
            );
            assert!(SubscriberKey::from_encrypted_pem(&pem, b"wrong").is_err());
            assert_eq!(back.describe(), kind.as_str());
        }
    }

    #[test]
    fn csr_is_deterministic_for_ecdsa() {
        // RFC 6979: the same key and subject give the same CSR, which is
        // what lets a resumed batch repeat a request byte for byte.
        let key = SubscriberKey::generate(KeyType::P256).expect("generate");
        let a = key.csr_pem(Some("Alice Example")).expect("csr");
        let b = key.csr_pem(Some("Alice Example")).expect("csr");
        assert_eq!(a, b);
        let info = crate::csr::CsrInfo::from_pem(&a).expect("parse");
        assert_eq!(info.common_name.as_deref(), Some("Alice Example"));
        assert_eq!(info.key_type.as_deref(), Some("p256"));
    }

    #[test]
    fn passwords_are_random_and_long() {
        let a = random_password().expect("pw");
        let b = random_password().expect("pw");
        assert_eq!(a.len(), 24);
        assert_ne!(*a, *b);
    }
}
