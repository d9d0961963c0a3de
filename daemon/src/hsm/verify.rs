//! Signature verification in software, against a SubjectPublicKeyInfo.
//!
//! Used to check every signature the token returns before it is released,
//! and to check proof of possession on requests. Verification is done with
//! `ring` (the same primitives rustls uses): it is constant-time where it
//! matters and several times faster than the pure-Rust curves, which counts
//! because every certificate needs two verifications.

use super::KeyType;
use der::{Decode, Tagged};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use spki::SubjectPublicKeyInfoOwned;

fn key_bytes(key: &SubjectPublicKeyInfoOwned) -> Result<&[u8], String> {
    key.subject_public_key
        .as_bytes()
        .ok_or_else(|| "public key bit string has unused bits".to_string())
}

fn check(
    alg: &'static dyn VerificationAlgorithm,
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    UnparsedPublicKey::new(alg, key)
        .verify(message, signature)
        .map_err(|_| "signature does not verify".to_string())
}

/// Verifies `signature` (as it appears in an X.509 signature BIT STRING)
/// over `message` with `key`, for the signature algorithm certd uses with
/// `key_type` (ECDSA with SHA-256/384, RSA PKCS#1 v1.5 with SHA-256, Ed25519).
pub fn verify(
    key: &SubjectPublicKeyInfoOwned,
    key_type: KeyType,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let alg: &'static dyn VerificationAlgorithm = match key_type {
        KeyType::P256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyType::P384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        KeyType::Ed25519 => &signature::ED25519,
    };
    check(alg, key_bytes(key)?, message, signature)
}

/// The size in bits of an RSA public key's modulus.
pub fn rsa_modulus_bits(key: &SubjectPublicKeyInfoOwned) -> Result<usize, String> {
    let pk = pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(key_bytes(key)?)
        .map_err(|e| format!("RSA public key: {e}"))?;
    let n = pk.modulus.as_bytes();
    let lead = n.first().copied().unwrap_or(0);
    Ok(n.len() * 8 - lead.leading_zeros() as usize)
}

/// Verifies a signature made with an explicitly named algorithm (as in a
/// CSR, where the subscriber chose it). Supported: ECDSA P-256 with SHA-256
/// or SHA-384, ECDSA P-384 with SHA-384 or SHA-256, RSA PKCS#1 v1.5 with
/// SHA-256/384/512, Ed25519.
pub fn verify_with_algorithm(
    key: &SubjectPublicKeyInfoOwned,
    key_type: KeyType,
    algorithm: &spki::AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use const_oid::db::{rfc5912, rfc8410};
    let oid = algorithm.oid;
    let alg: &'static dyn VerificationAlgorithm = match key_type {
        KeyType::P256 if oid == rfc5912::ECDSA_WITH_SHA_256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyType::P256 if oid == rfc5912::ECDSA_WITH_SHA_384 => &signature::ECDSA_P256_SHA384_ASN1,
        KeyType::P384 if oid == rfc5912::ECDSA_WITH_SHA_384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyType::P384 if oid == rfc5912::ECDSA_WITH_SHA_256 => &signature::ECDSA_P384_SHA256_ASN1,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            if algorithm
                .parameters
                .as_ref()
                .is_some_and(|p| p.tag() != der::Tag::Null)
            {
                return Err(format!(
                    "signature algorithm {oid} must have NULL parameters"
                ));
            }
            match oid {
                o if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                }
                o if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => {
                    &signature::RSA_PKCS1_2048_8192_SHA384
                }
                o if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => {
                    &signature::RSA_PKCS1_2048_8192_SHA512
                }
                _ => {
                    return Err(format!(
                        "signature algorithm {oid} is not supported for RSA keys"
                    ))
                }
            }
        }
        KeyType::Ed25519 if oid == rfc8410::ID_ED_25519 => &signature::ED25519,
        _ => {
            return Err(format!(
                "signature algorithm {oid} is not supported with a {key_type} key"
            ))
        }
    };
    check(alg, key_bytes(key)?, message, signature)
}
