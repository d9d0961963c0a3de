//! Key types certd can hold as certifier keys, and their signature algorithms.

use const_oid::db::{rfc5912, rfc8410};
use const_oid::ObjectIdentifier;
use der::asn1::Null;
use der::Any;
use spki::AlgorithmIdentifierOwned;
use std::fmt;
use std::str::FromStr;

/// A certifier key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA on NIST P-256, signing with SHA-256.
    P256,
    /// ECDSA on NIST P-384, signing with SHA-384.
    P384,
    /// RSA 2048, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA 3072, PKCS#1 v1.5 with SHA-256.
    Rsa3072,
    /// RSA 4096, PKCS#1 v1.5 with SHA-256.
    Rsa4096,
    /// Ed25519 (pure EdDSA).
    Ed25519,
}

impl KeyType {
    /// All key types, in the order shown to users.
    pub const ALL: [KeyType; 6] = [
        KeyType::P256,
        KeyType::P384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::Ed25519,
    ];

    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::P256 => "p256",
            KeyType::P384 => "p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// RSA modulus size in bits, if RSA.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyType::Rsa2048 => Some(2048),
            KeyType::Rsa3072 => Some(3072),
            KeyType::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// The named curve OID for EC keys.
    pub fn curve_oid(self) -> Option<ObjectIdentifier> {
        match self {
            KeyType::P256 => Some(rfc5912::SECP_256_R_1),
            KeyType::P384 => Some(rfc5912::SECP_384_R_1),
            _ => None,
        }
    }

    /// The signatureAlgorithm this key signs certificates with.
    pub fn signature_algorithm(self) -> AlgorithmIdentifierOwned {
        match self {
            KeyType::P256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            KeyType::P384 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_384,
                parameters: None,
            },
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => AlgorithmIdentifierOwned {
                oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                // RFC 4055: the parameters MUST be NULL for sha256WithRSAEncryption.
                parameters: Some(Any::from(Null)),
            },
            KeyType::Ed25519 => AlgorithmIdentifierOwned {
                oid: rfc8410::ID_ED_25519,
                parameters: None,
            },
        }
    }

    /// Determines the key type of a SubjectPublicKeyInfo.
    pub fn of_spki(spki: &spki::SubjectPublicKeyInfoOwned) -> Result<KeyType, String> {
        let oid = spki.algorithm.oid;
        if oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .as_ref()
                .ok_or("EC key without curve parameters")?
                .decode_as()
                .map_err(|e| format!("EC curve parameters: {e}"))?;
            match curve {
                c if c == rfc5912::SECP_256_R_1 => Ok(KeyType::P256),
                c if c == rfc5912::SECP_384_R_1 => Ok(KeyType::P384),
                c => Err(format!("EC curve {c} is not supported")),
            }
        } else if oid == rfc5912::RSA_ENCRYPTION {
            let bits = verify::rsa_modulus_bits(spki)?;
            match bits {
                2048 => Ok(KeyType::Rsa2048),
                3072 => Ok(KeyType::Rsa3072),
                4096 => Ok(KeyType::Rsa4096),
                b => Err(format!("RSA modulus of {b} bits is not supported")),
            }
        } else if oid == rfc8410::ID_ED_25519 {
            Ok(KeyType::Ed25519)
        } else {
            Err(format!("public key algorithm {oid} is not supported"))
        }
    }
}

use super::verify;

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
            .ok_or_else(|| {
                format!("unknown key type {s:?}: use one of p256, p384, rsa2048, rsa3072, rsa4096, ed25519")
            })
    }
}
