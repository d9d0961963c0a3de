//! Signature verification in software, against a SubjectPublicKeyInfo.
//!
//! Used to check every signature the token returns before it is released,
//! and to check proof of possession on requests.

use super::KeyType;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;

/// Verifies `signature` (as it appears in an X.509 signature BIT STRING)
/// over `message` with `key`, for the signature algorithm of `key_type`.
pub fn verify(
    key: &SubjectPublicKeyInfoOwned,
    key_type: KeyType,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let point = key
        .subject_public_key
        .as_bytes()
        .ok_or("public key bit string has unused bits")?;
    match key_type {
        KeyType::P256 => {
            use p256::ecdsa::signature::Verifier;
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|e| format!("P-256 public key: {e}"))?;
            let sig = p256::ecdsa::DerSignature::from_bytes(signature)
                .map_err(|e| format!("ECDSA signature encoding: {e}"))?;
            vk.verify(message, &sig)
                .map_err(|_| "signature does not verify".to_string())
        }
        KeyType::P384 => {
            use p384::ecdsa::signature::Verifier;
            let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|e| format!("P-384 public key: {e}"))?;
            let sig = p384::ecdsa::DerSignature::from_bytes(signature)
                .map_err(|e| format!("ECDSA signature encoding: {e}"))?;
            vk.verify(message, &sig)
                .map_err(|_| "signature does not verify".to_string())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            use rsa::pkcs8::DecodePublicKey;
            use rsa::signature::Verifier;
            let der = key.to_der().map_err(|e| format!("RSA public key: {e}"))?;
            let pk = rsa::PublicKey::from_public_key_der(&der)
                .map_err(|e| format!("RSA public key: {e}"))?;
            let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk);
            let sig = rsa::pkcs1v15::Signature::try_from(signature)
                .map_err(|e| format!("RSA signature: {e}"))?;
            vk.verify(message, &sig)
                .map_err(|_| "signature does not verify".to_string())
        }
        KeyType::Ed25519 => {
            let bytes: [u8; 32] = point
                .try_into()
                .map_err(|_| "Ed25519 public key must be 32 bytes")?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|e| format!("Ed25519 public key: {e}"))?;
            let sig = ed25519_dalek::Signature::from_slice(signature)
                .map_err(|e| format!("Ed25519 signature: {e}"))?;
            vk.verify_strict(message, &sig)
                .map_err(|_| "signature does not verify".to_string())
        }
    }
}

/// The size in bits of an RSA public key's modulus.
pub fn rsa_modulus_bits(key: &SubjectPublicKeyInfoOwned) -> Result<usize, String> {
    let bytes = key
        .subject_public_key
        .as_bytes()
        .ok_or("public key bit string has unused bits")?;
    let pk = pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(bytes)
        .map_err(|e| format!("RSA public key: {e}"))?;
    let n = pk.modulus.as_bytes();
    let lead = n.first().copied().unwrap_or(0);
    Ok(n.len() * 8 - lead.leading_zeros() as usize)
}

/// Verifies a signature made with an explicitly named algorithm (as in a
/// CSR, where the subscriber chose it). Supported: ECDSA P-256 with SHA-256,
/// ECDSA P-384 with SHA-384, RSA PKCS#1 v1.5 with SHA-256/384/512, Ed25519.
pub fn verify_with_algorithm(
    key: &SubjectPublicKeyInfoOwned,
    key_type: KeyType,
    algorithm: &spki::AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use const_oid::db::{rfc5912, rfc8410};
    let oid = algorithm.oid;
    let is_rsa = key_type.rsa_bits().is_some();
    if is_rsa && oid != rfc5912::SHA_256_WITH_RSA_ENCRYPTION {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier;
        let der = key.to_der().map_err(|e| format!("RSA public key: {e}"))?;
        let pk = rsa::PublicKey::from_public_key_der(&der)
            .map_err(|e| format!("RSA public key: {e}"))?;
        let sig = rsa::pkcs1v15::Signature::try_from(signature)
            .map_err(|e| format!("RSA signature: {e}"))?;
        let bad = |_| "signature does not verify".to_string();
        return if oid == rfc5912::SHA_384_WITH_RSA_ENCRYPTION {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(pk)
                .verify(message, &sig)
                .map_err(bad)
        } else if oid == rfc5912::SHA_512_WITH_RSA_ENCRYPTION {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(pk)
                .verify(message, &sig)
                .map_err(bad)
        } else {
            Err(format!(
                "signature algorithm {oid} is not supported for RSA keys"
            ))
        };
    }
    let expected = match key_type {
        KeyType::P256 => rfc5912::ECDSA_WITH_SHA_256,
        KeyType::P384 => rfc5912::ECDSA_WITH_SHA_384,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            rfc5912::SHA_256_WITH_RSA_ENCRYPTION
        }
        KeyType::Ed25519 => rfc8410::ID_ED_25519,
    };
    if oid != expected {
        return Err(format!(
            "signature algorithm {oid} does not go with a {key_type} key (expected {expected})"
        ));
    }
    verify(key, key_type, message, signature)
}
