//! The subscriber's public key (kind, size, weaknesses) and the CSR's
//! self-signature, the subscriber's proof of possession, verified with
//! `ring` as certd does.

use super::{KeyAlgorithm, Problem, ProblemCode, PublicKeyView};
use certd_api::keys::bit_length;
use const_oid::db::{rfc5912, rfc8410};
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, UintRef};
use der::{Decode, Tag, Tagged};
use ring::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

const fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

const P256: ObjectIdentifier = oid("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = oid("1.3.132.0.34");
const P521: ObjectIdentifier = oid("1.3.132.0.35");

/// Key algorithms certd does not issue for but that turn up in CSRs, so
/// that staff see a name rather than a bare OID.
const OTHER_KEY_NAMES: &[(ObjectIdentifier, &str)] = &[
    (oid("1.2.840.10040.4.1"), "DSA"),
    (oid("1.2.840.113549.1.1.10"), "RSASSA-PSS"),
    (oid("1.3.101.110"), "X25519"),
    (oid("1.3.101.111"), "X448"),
    (oid("1.3.101.113"), "Ed448"),
];

/// What the SubjectPublicKeyInfo holds.
pub(super) struct Key {
    pub(super) view: PublicKeyView,
    pub(super) problems: Vec<Problem>,
    material: Material,
}

/// The key as the signature check needs it.
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        bits: u32,
    },
    Ec {
        algorithm: KeyAlgorithm,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    /// Not readable or not supported; the reason is for "cannot verify".
    None(String),
}

pub(super) fn describe(spki: &SubjectPublicKeyInfoOwned) -> Key {
    let alg = spki.algorithm.oid;
    let mut key = Key {
        view: PublicKeyView {
            algorithm: KeyAlgorithm::Unknown,
            name: "unknown".to_string(),
            oid: alg.to_string(),
            curve_oid: None,
            bits: None,
            rsa_exponent: None,
        },
        problems: Vec::new(),
        material: Material::None("the key is not supported".to_string()),
    };
    let Some(bytes) = spki.subject_public_key.as_bytes() else {
        key.view.name = name_of(alg).to_string();
        key.bad_key("the public key BIT STRING has unused bits");
        return key;
    };
    match alg {
        a if a == rfc5912::RSA_ENCRYPTION => rsa(&mut key, bytes),
        a if a == rfc5912::ID_EC_PUBLIC_KEY => ec(&mut key, spki, bytes),
        a if a == rfc8410::ID_ED_25519 => {
            key.view.algorithm = KeyAlgorithm::Ed25519;
            key.view.name = "Ed25519".to_string();
            key.view.bits = Some(256);
            if bytes.len() == 32 {
                key.material = Material::Ed25519(bytes.to_vec());
            } else {
                key.bad_key(format!(
                    "an Ed25519 public key is 32 bytes, this one is {}",
                    bytes.len()
                ));
            }
        }
        a => {
            key.view.name = name_of(a).to_string();
            key.problems.push(Problem::error(
                ProblemCode::UnsupportedKey,
                format!(
                    "the key algorithm {} ({a}) is not supported: certd issues for RSA, EC P-256 or P-384, and Ed25519 keys; ask for a CSR with one of those",
                    key.view.name
                ),
            ));
        }
    }
    key
}

fn name_of(alg: ObjectIdentifier) -> &'static str {
    match alg {
        a if a == rfc5912::RSA_ENCRYPTION => "RSA",
        a if a == rfc5912::ID_EC_PUBLIC_KEY => "EC",
        a if a == rfc8410::ID_ED_25519 => "Ed25519",
        a => OTHER_KEY_NAMES
            .iter()
            .find(|(o, _)| *o == a)
            .map_or("unknown", |(_, n)| *n),
    }
}

impl Key {
    fn bad_key(&mut self, why: impl std::fmt::Display) {
        self.material = Material::None("the public key cannot be read".to_string());
        self.problems.push(Problem::error(
            ProblemCode::BadPublicKey,
            format!("{why}: this is not a usable public key; ask for a new CSR"),
        ));
    }
}

fn rsa(key: &mut Key, bytes: &[u8]) {
    key.view.algorithm = KeyAlgorithm::Rsa;
    key.view.name = "RSA".to_string();
    let pk = match pkcs1::RsaPublicKey::<UintRef<'_>>::from_der(bytes) {
        Ok(pk) => pk,
        Err(e) => return key.bad_key(format!("the RSA public key cannot be decoded ({e})")),
    };
    let n = pk.modulus.as_bytes();
    let e = pk.public_exponent.as_bytes();
    let bits = bit_length(n);
    key.view.bits = Some(bits);
    let exponent = u64_of(e);
    key.view.rsa_exponent = exponent;

    let n_odd = n.last().is_some_and(|b| b & 1 == 1);
    let e_odd = e.last().is_some_and(|b| b & 1 == 1);
    // certd's own rules (certd_api::keys), so this view and certd agree.
    if let Err(refusal) = certd_api::keys::check_rsa(n, e) {
        let code = match &refusal {
            certd_api::keys::KeyRefusal::NotPermitted(_) => ProblemCode::UnsupportedKey,
            _ if bits >= 2048 && n_odd && exponent != Some(certd_api::keys::RSA_EXPONENT) => {
                if exponent.is_some_and(|x| x > certd_api::keys::RSA_EXPONENT) {
                    ProblemCode::UnusualRsaExponent
                } else {
                    ProblemCode::WeakRsaExponent
                }
            }
            _ => ProblemCode::WeakRsaKey,
        };
        key.problems.push(Problem::error(
            code,
            format!("{}; certd refuses this key", refusal.message()),
        ));
    }

    // ring checks proof of possession for keys of 1024 to 8192 bits with an
    // odd exponent of 3 to 2^33 - 1, and refuses other keys exactly as it
    // refuses a bad signature; say "cannot verify" for those instead.
    let e_ok = e_odd && exponent.is_some_and(|x| (3..(1 << 33)).contains(&x));
    key.material = if !(1024..=8192).contains(&bits) {
        Material::None(format!("RSA keys of {bits} bits cannot be checked"))
    } else if !e_ok || !n_odd {
        Material::None("the RSA key is malformed".to_string())
    } else {
        Material::Rsa {
            n: n.to_vec(),
            e: e.to_vec(),
            bits,
        }
    };
}

fn u64_of(be: &[u8]) -> Option<u64> {
    let skip = be.iter().take_while(|&&b| b == 0).count();
    let rest = be.get(skip..).unwrap_or_default();
    if rest.len() > 8 {
        return None;
    }
    Some(rest.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

fn ec(key: &mut Key, spki: &SubjectPublicKeyInfoOwned, point: &[u8]) {
    key.view.algorithm = KeyAlgorithm::EcOther;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .filter(|p| p.tag() == Tag::ObjectIdentifier)
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let Some(curve) = curve else {
        key.view.name = "EC (explicit parameters)".to_string();
        key.material = Material::None("the curve is not named".to_string());
        key.problems.push(Problem::error(
            ProblemCode::UnsupportedCurve,
            "the EC key does not name its curve (explicit parameters are not supported): ask for a CSR with a P-256 or P-384 key",
        ));
        return;
    };
    key.view.curve_oid = Some(curve.to_string());
    let (algorithm, name, bits) = match curve {
        c if c == P256 => (KeyAlgorithm::EcP256, "EC P-256", 256),
        c if c == P384 => (KeyAlgorithm::EcP384, "EC P-384", 384),
        c if c == P521 => (KeyAlgorithm::EcP521, "EC P-521", 521),
        c => {
            key.view.name = format!("EC (curve {c})");
            key.material = Material::None("the curve is not supported".to_string());
            key.problems.push(Problem::error(
                ProblemCode::UnsupportedCurve,
                format!(
                    "the EC key is on curve {c}, which certd does not support: ask for a CSR with a P-256 or P-384 key"
                ),
            ));
            return;
        }
    };
    key.view.algorithm = algorithm;
    key.view.name = name.to_string();
    key.view.bits = Some(bits);
    let size = (bits as usize).div_ceil(8);
    let uncompressed = point.first() == Some(&0x04) && point.len() == 1 + 2 * size;
    let compressed = matches!(point.first(), Some(0x02 | 0x03)) && point.len() == 1 + size;
    if !uncompressed && !compressed {
        return key.bad_key(format!(
            "the {name} public key is not a valid point encoding"
        ));
    }
    if algorithm == KeyAlgorithm::EcP521 {
        key.material = Material::None("P-521 signatures cannot be checked".to_string());
        key.problems.push(Problem::error(
            ProblemCode::UnsupportedCurve,
            "the key is on P-521, which certd does not support: ask for a CSR with a P-256 or P-384 key",
        ));
    } else if compressed {
        key.material = Material::None("the EC point is compressed".to_string());
    } else {
        key.material = Material::Ec {
            algorithm,
            point: point.to_vec(),
        };
    }
}

/// Hash functions named by signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hash {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn name(self) -> &'static str {
        match self {
            Hash::Md5 => "MD5",
            Hash::Sha1 => "SHA-1",
            Hash::Sha224 => "SHA-224",
            Hash::Sha256 => "SHA-256",
            Hash::Sha384 => "SHA-384",
            Hash::Sha512 => "SHA-512",
        }
    }
}

/// A CSR's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SignatureAlgorithm {
    RsaPkcs1(Hash),
    RsaPss,
    Ecdsa(Hash),
    Ed25519,
    Ed448,
    Dsa(Hash),
    Unknown,
}

/// Key families, to tell a mismatched signature from one that cannot be
/// checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed25519,
    Ed448,
    Dsa,
}

impl SignatureAlgorithm {
    pub(super) fn of(id: &ObjectIdentifier) -> Self {
        const TABLE: &[(ObjectIdentifier, SignatureAlgorithm)] = &[
            (
                oid("1.2.840.113549.1.1.4"),
                SignatureAlgorithm::RsaPkcs1(Hash::Md5),
            ),
            (
                oid("1.2.840.113549.1.1.5"),
                SignatureAlgorithm::RsaPkcs1(Hash::Sha1),
            ),
            (
                oid("1.2.840.113549.1.1.14"),
                SignatureAlgorithm::RsaPkcs1(Hash::Sha224),
            ),
            (
                oid("1.2.840.113549.1.1.11"),
                SignatureAlgorithm::RsaPkcs1(Hash::Sha256),
            ),
            (
                oid("1.2.840.113549.1.1.12"),
                SignatureAlgorithm::RsaPkcs1(Hash::Sha384),
            ),
            (
                oid("1.2.840.113549.1.1.13"),
                SignatureAlgorithm::RsaPkcs1(Hash::Sha512),
            ),
            (oid("1.2.840.113549.1.1.10"), SignatureAlgorithm::RsaPss),
            (
                oid("1.2.840.10045.4.1"),
                SignatureAlgorithm::Ecdsa(Hash::Sha1),
            ),
            (
                oid("1.2.840.10045.4.3.1"),
                SignatureAlgorithm::Ecdsa(Hash::Sha224),
            ),
            (
                oid("1.2.840.10045.4.3.2"),
                SignatureAlgorithm::Ecdsa(Hash::Sha256),
            ),
            (
                oid("1.2.840.10045.4.3.3"),
                SignatureAlgorithm::Ecdsa(Hash::Sha384),
            ),
            (
                oid("1.2.840.10045.4.3.4"),
                SignatureAlgorithm::Ecdsa(Hash::Sha512),
            ),
            (oid("1.3.101.112"), SignatureAlgorithm::Ed25519),
            (oid("1.3.101.113"), SignatureAlgorithm::Ed448),
            (
                oid("1.2.840.10040.4.3"),
                SignatureAlgorithm::Dsa(Hash::Sha1),
            ),
            (
                oid("2.16.840.1.101.3.4.3.1"),
                SignatureAlgorithm::Dsa(Hash::Sha224),
            ),
            (
                oid("2.16.840.1.101.3.4.3.2"),
                SignatureAlgorithm::Dsa(Hash::Sha256),
            ),
        ];
        TABLE
            .iter()
            .find(|(o, _)| o == id)
            .map_or(SignatureAlgorithm::Unknown, |(_, a)| *a)
    }

    pub(super) fn name(self) -> String {
        match self {
            SignatureAlgorithm::RsaPkcs1(h) => format!("RSA PKCS#1 v1.5 with {}", h.name()),
            SignatureAlgorithm::RsaPss => "RSASSA-PSS".to_string(),
            SignatureAlgorithm::Ecdsa(h) => format!("ECDSA with {}", h.name()),
            SignatureAlgorithm::Ed25519 => "Ed25519".to_string(),
            SignatureAlgorithm::Ed448 => "Ed448".to_string(),
            SignatureAlgorithm::Dsa(h) => format!("DSA with {}", h.name()),
            SignatureAlgorithm::Unknown => "unknown".to_string(),
        }
    }

    fn family(self) -> Option<Family> {
        match self {
            SignatureAlgorithm::RsaPkcs1(_) | SignatureAlgorithm::RsaPss => Some(Family::Rsa),
            SignatureAlgorithm::Ecdsa(_) => Some(Family::Ec),
            SignatureAlgorithm::Ed25519 => Some(Family::Ed25519),
            SignatureAlgorithm::Ed448 => Some(Family::Ed448),
            SignatureAlgorithm::Dsa(_) => Some(Family::Dsa),
            SignatureAlgorithm::Unknown => None,
        }
    }
}

fn key_family(view: &PublicKeyView) -> Option<Family> {
    match view.algorithm {
        KeyAlgorithm::Rsa => Some(Family::Rsa),
        KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 | KeyAlgorithm::EcP521 => Some(Family::Ec),
        KeyAlgorithm::EcOther => Some(Family::Ec),
        KeyAlgorithm::Ed25519 => Some(Family::Ed25519),
        KeyAlgorithm::Unknown => match view.name.as_str() {
            "Ed448" => Some(Family::Ed448),
            "DSA" => Some(Family::Dsa),
            _ => None,
        },
    }
}

/// Checks the self-signature over `signed` (the CertificationRequestInfo
/// as encoded in the input). Returns the problem, if any.
pub(super) fn check_signature(
    key: &Key,
    algorithm: &AlgorithmIdentifierOwned,
    sig_alg: SignatureAlgorithm,
    signed: Option<&[u8]>,
    signature: &BitString,
) -> Option<Problem> {
    let sig_name = sig_alg.name();
    if let Err(why) = certd_api::keys::check_csr_signature_algorithm(&algorithm.oid.to_string()) {
        return Some(Problem::error(ProblemCode::SignatureAlgorithmRefused, why));
    }
    if let (Some(k), Some(s)) = (key_family(&key.view), sig_alg.family()) {
        if k != s {
            return Some(bad_signature(format!(
                "the CSR is signed with {sig_name} but its key is {}, so the signature cannot be the key's",
                key.view.name
            )));
        }
    }
    if matches!(sig_alg, SignatureAlgorithm::RsaPkcs1(_))
        && algorithm
            .parameters
            .as_ref()
            .is_some_and(|p| p.tag() != Tag::Null)
    {
        return Some(bad_signature(format!(
            "the {sig_name} algorithm identifier has parameters other than NULL, and certd refuses that"
        )));
    }
    let Some(sig) = signature.as_bytes() else {
        return Some(bad_signature("the signature BIT STRING has unused bits"));
    };
    let Some(message) = signed else {
        return Some(cannot_verify(
            "the signed part of the CSR cannot be re-read",
        ));
    };
    let outcome = match (&key.material, sig_alg) {
        (Material::None(why), _) => return Some(cannot_verify(why)),
        (Material::Rsa { n, e, bits }, SignatureAlgorithm::RsaPkcs1(hash)) => {
            let Some(params) = rsa_parameters(*bits, hash) else {
                return Some(cannot_verify(format!(
                    "{sig_name} with a {bits}-bit RSA key is not supported here"
                )));
            };
            RsaPublicKeyComponents { n, e }.verify(params, message, sig)
        }
        (Material::Ec { algorithm, point }, SignatureAlgorithm::Ecdsa(hash)) => {
            let alg = match (algorithm, hash) {
                (KeyAlgorithm::EcP256, Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
                (KeyAlgorithm::EcP256, Hash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
                (KeyAlgorithm::EcP384, Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
                (KeyAlgorithm::EcP384, Hash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
                _ => {
                    return Some(cannot_verify(format!(
                        "{sig_name} with a {} key is not supported here",
                        key.view.name
                    )))
                }
            };
            UnparsedPublicKey::new(alg, point).verify(message, sig)
        }
        (Material::Ed25519(pk), SignatureAlgorithm::Ed25519) => {
            UnparsedPublicKey::new(&signature::ED25519, pk).verify(message, sig)
        }
        _ => {
            return Some(cannot_verify(format!(
                "{sig_name} signatures are not supported here"
            )))
        }
    };
    match outcome {
        Ok(()) => None,
        Err(_) => Some(bad_signature(
            "the signature does not verify with the CSR's own key, so the request was altered after it was signed or was not signed with that key",
        )),
    }
}

fn rsa_parameters(bits: u32, hash: Hash) -> Option<&'static RsaParameters> {
    // Keys under 2048 bits are reported as weak already; their signature
    // is still checked, with ring's legacy parameters, so that a bad one
    // is not mistaken for a short key.
    let p = match (bits >= 2048, hash) {
        (true, Hash::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (true, Hash::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (true, Hash::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (false, Hash::Sha256) => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        (false, Hash::Sha512) => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        _ => return None,
    };
    Some(p)
}

fn bad_signature(why: impl std::fmt::Display) -> Problem {
    Problem::error(
        ProblemCode::BadSignature,
        format!(
            "bad CSR signature (no proof of possession): {why}; ask the subscriber to generate the CSR again with their key"
        ),
    )
}

fn cannot_verify(why: impl std::fmt::Display) -> Problem {
    Problem::warning(
        ProblemCode::SignatureNotVerified,
        format!(
            "cannot verify the CSR signature here ({why}); proof of possession is unchecked until certd checks it"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0]), 0);
        assert_eq!(bit_length(&[0, 0, 1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(u64_of(&[1, 0, 1]), Some(65537));
        assert_eq!(u64_of(&[0; 12]), Some(0));
        assert_eq!(u64_of(&[1; 9]), None);
    }
}
