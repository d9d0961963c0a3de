//! Access to certifier keys.
//!
//! Everything that touches a private key goes through the small [`Signer`]
//! trait. The production implementation lives in [`pkcs11`] (unit tests
//! use an in-memory key that release builds do not contain); signatures are
//! always checked in software against the certifier's public key
//! ([`verify`]) before anything signed leaves the daemon.

pub mod keytype;
#[cfg(test)]
pub(crate) mod memory;
pub mod pkcs11;
pub mod pool;
pub mod verify;

pub use keytype::KeyType;

use certd_api::{ApiError, ErrorCode};
use spki::SubjectPublicKeyInfoOwned;

/// Errors from the HSM layer. Each has a stable code for the API and the
/// control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialised.
    #[error(
        "cannot load PKCS#11 module {module}: {reason}; check hsm.module in the configuration"
    )]
    Module {
        /// Path of the module.
        module: String,
        /// What went wrong.
        reason: String,
    },
    /// No token with the given label is present.
    #[error("no token labelled {0:?} is present; create it (softhsm-config/init-token) or check token_label")]
    TokenNotFound(String),
    /// The PIN was refused by the token. Never retried automatically, so a
    /// typo does not count down the token's lockout counter more than once.
    #[error("the token refused the PIN for token {0:?}; nothing was retried, try again with the right PIN")]
    PinIncorrect(String),
    /// The token has locked its user PIN.
    #[error("the user PIN of token {0:?} is locked; the security officer must reset it")]
    PinLocked(String),
    /// No key with the given label exists in the token.
    #[error("no private key labelled {label:?} in token {token:?}; create it with `certd init-ca` or check key_label")]
    KeyNotFound {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
    },
    /// A key with the given label already exists (ceremony refuses to overwrite).
    #[error("token {token:?} already holds objects labelled {label:?}; choose another --key-label (existing keys are never replaced)")]
    KeyExists {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
    },
    /// The token's key and the configured certificate do not belong together.
    #[error("the public key of {label:?} in token {token:?} does not match certificate {certificate}; import the certificate issued for this key")]
    KeyMismatch {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
        /// The certificate file.
        certificate: String,
    },
    /// The certifier is locked: no PIN has been given yet.
    #[error("certifier is locked; activate it with `certd activate`")]
    Locked,
    /// The token or its sessions are unusable right now.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    /// The token produced a signature that does not verify with the
    /// certifier's public key. Nothing signed is released.
    #[error("the token returned a signature that does not verify; nothing was released")]
    BadSignature,
    /// A key type the token or certd does not support.
    #[error("unsupported key: {0}")]
    Unsupported(String),
    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {function} failed: {rv}")]
    Pkcs11 {
        /// The PKCS#11 function.
        function: String,
        /// The return value name.
        rv: String,
    },
}

impl HsmError {
    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            HsmError::Locked => "certifier_locked",
            HsmError::PinIncorrect(_) => "pin_incorrect",
            HsmError::PinLocked(_) => "pin_locked",
            HsmError::KeyNotFound { .. } => "key_not_found",
            HsmError::KeyExists { .. } => "key_exists",
            HsmError::KeyMismatch { .. } => "key_mismatch",
            HsmError::BadSignature => "bad_signature",
            HsmError::Unsupported(_) => "unsupported_key",
            HsmError::Module { .. }
            | HsmError::TokenNotFound(_)
            | HsmError::Unavailable(_)
            | HsmError::Pkcs11 { .. } => "certifier_unavailable",
        }
    }

    /// The API's answer to this error: `certifier_locked` (with what the
    /// operator must do), `certifier_fault` for a signature that does not
    /// verify, `certifier_unavailable` for everything else.
    pub fn api_error(&self) -> ApiError {
        let code = match self {
            HsmError::Locked => ErrorCode::CertifierLocked,
            HsmError::BadSignature => ErrorCode::CertifierFault,
            _ => ErrorCode::CertifierUnavailable,
        };
        let message = match self {
            HsmError::Locked => {
                "the certifier is locked: an operator must run `certd activate`".to_string()
            }
            other => other.to_string(),
        };
        ApiError::new(code, message)
    }
}

/// A certifier key that can sign; each call is one complete signing
/// operation. The daemon shares signers as `dyn Signer + Send + Sync`.
pub trait Signer {
    /// The algorithm of the key.
    fn key_type(&self) -> KeyType;
    /// The public key, as it appears in certificates.
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned;
    /// Signs `message` (the DER of a TBSCertificate, TBSCertList or
    /// CertificationRequestInfo) and returns the signature exactly as it
    /// goes into the signature BIT STRING (DER for ECDSA).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError>;
}

/// A certifier key as an active certifier holds it: besides signing, its
/// token can be asked whether it still answers, and logged out.
pub trait TokenSigner: Signer {
    /// Checks that the token still answers (the periodic health probe).
    fn probe(&self) -> Result<(), HsmError>;
    /// Ends the token's login.
    fn logout(&self) -> Result<(), HsmError>;
}

/// Signs and then verifies the signature in software before returning it.
/// This is the only way signatures leave this module for the issuance path.
pub fn sign_checked(signer: &dyn Signer, message: &[u8]) -> Result<Vec<u8>, HsmError> {
    let sig = signer.sign(message)?;
    verify::verify(signer.public_key(), signer.key_type(), message, &sig)
        .map_err(|_| HsmError::BadSignature)?;
    Ok(sig)
}
