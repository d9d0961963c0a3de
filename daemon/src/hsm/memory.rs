//! A certifier key held in memory, so that unit tests can run what sits
//! behind the token (issuance, linting, CRLs) without one.
//!
//! Compiled into tests only: certd itself never holds a private key.

use super::{HsmError, KeyType, Signer, TokenSigner};
use der::Decode;
use signature::Signer as _;
use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};

enum Secret {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

/// An ECDSA key whose secret scalar the test chooses, so every run signs
/// with the same key.
pub(crate) struct MemoryKey {
    secret: Secret,
    spki: SubjectPublicKeyInfoOwned,
}

fn spki_of(key: &impl EncodePublicKey) -> SubjectPublicKeyInfoOwned {
    let der = key.to_public_key_der().expect("an EC public key encodes");
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).expect("and decodes")
}

impl MemoryKey {
    /// The P-256 key with secret scalar `secret` (non-zero, below the
    /// group order: any small repeated byte will do).
    pub(crate) fn p256(secret: [u8; 32]) -> MemoryKey {
        let key = p256::ecdsa::SigningKey::from_slice(&secret).expect("a valid P-256 scalar");
        let spki = spki_of(&p256::PublicKey::from(key.verifying_key()));
        MemoryKey {
            secret: Secret::P256(key),
            spki,
        }
    }

    /// The P-384 key with secret scalar `secret`.
    pub(crate) fn p384(secret: [u8; 48]) -> MemoryKey {
        let key = p384::ecdsa::SigningKey::from_slice(&secret).expect("a valid P-384 scalar");
        let spki = spki_of(&p384::PublicKey::from(key.verifying_key()));
        MemoryKey {
            secret: Secret::P384(key),
            spki,
        }
    }
}

impl Signer for MemoryKey {
    fn key_type(&self) -> KeyType {
        match self.secret {
            Secret::P256(_) => KeyType::P256,
            Secret::P384(_) => KeyType::P384,
        }
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        // DER, as certd converts the token's raw r || s.
        Ok(match &self.secret {
            Secret::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                sig.to_der().as_bytes().to_vec()
            }
            Secret::P384(k) => {
                let sig: p384::ecdsa::Signature = k.sign(message);
                sig.to_der().as_bytes().to_vec()
            }
        })
    }
}

impl TokenSigner for MemoryKey {
    fn probe(&self) -> Result<(), HsmError> {
        Ok(())
    }

    fn logout(&self) -> Result<(), HsmError> {
        Ok(())
    }
}
