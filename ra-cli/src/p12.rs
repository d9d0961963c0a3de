//! PKCS#12 files for subscribers whose key ra-cli generated: the key in a
//! shrouded key bag and the certificate with its full chain, all encrypted
//! with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and protected by an
//! HMAC-SHA256 MAC; what `openssl pkcs12 -export` writes by default since
//! OpenSSL 3. Encoding is done by the `p12-keystore` crate.

use crate::error::Error;
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use sha2::Digest;

/// PBKDF2 and MAC iterations by default: OpenSSL 3's `pkcs12 -export`
/// default. Generated passwords carry ~137 bits, so the count matters only
/// for operator-chosen passwords; `--p12-iterations` raises it.
pub const DEFAULT_ITERATIONS: u32 = 2048;

/// Fewest iterations accepted.
pub const MIN_ITERATIONS: u32 = 1000;

/// Most iterations accepted: far beyond any recommendation, low enough that
/// a typo cannot make every file take minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Checks an iteration count before anything is issued (a count refused
/// only when the first file is built would leave a certificate behind).
pub fn check_iterations(iterations: u32) -> Result<(), Error> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--p12-iterations {iterations}: use {MIN_ITERATIONS} to {MAX_ITERATIONS}"
        )))
    }
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Crypto(format!("PKCS#12: {e}"))
}

/// Builds a PKCS#12 file.
///
/// `key_pkcs8` is the unencrypted PKCS#8 DER (never written as such),
/// `leaf` the certificate (DER), `chain` the issuing chain (DER, issuer
/// first), `friendly_name` the name shown by key stores and mail clients.
pub fn build(
    key_pkcs8: &[u8],
    leaf: &[u8],
    chain: &[Vec<u8>],
    friendly_name: &str,
    password: &str,
    iterations: u32,
) -> Result<Vec<u8>, Error> {
    check_iterations(iterations)?;
    let key = PrivateKey::from_der(key_pkcs8).map_err(err)?;
    let mut certs = vec![Certificate::from_der(leaf).map_err(err)?];
    for c in chain {
        certs.push(Certificate::from_der(c).map_err(err)?);
    }
    // The localKeyId ties the key bag to its certificate bag.
    let key_id = sha2::Sha256::digest(leaf)[..20].to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(key_id, key, certs)),
    );
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(iterations)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(iterations)
        .write()
        .map_err(err)
}

/// The certificate (DER) that goes with the key of a PKCS#12 file, which
/// `password` must open.
pub fn leaf(data: &[u8], password: &str) -> Result<Vec<u8>, Error> {
    let store = KeyStore::from_pkcs12(data, password, p12_keystore::Pkcs12ImportPolicy::Relaxed)
        .map_err(err)?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| err("no private key in the file"))?;
    chain
        .certs()
        .first()
        .map(|c| c.as_der().to_vec())
        .ok_or_else(|| err("no certificate with the key"))
}

/// Reads a PKCS#12 file back: the friendly name of the key, and the number
/// of certificates in its chain (leaf included). For tests and checks.
pub fn inspect(data: &[u8], password: &str) -> Result<(String, usize), Error> {
    let store = KeyStore::from_pkcs12(data, password, p12_keystore::Pkcs12ImportPolicy::Relaxed)
        .map_err(err)?;
    let (alias, chain) = store
        .private_key_chain()
        .ok_or_else(|| err("no private key in the file"))?;
    Ok((alias.to_string(), chain.certs().len()))
}
