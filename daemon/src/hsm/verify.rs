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
