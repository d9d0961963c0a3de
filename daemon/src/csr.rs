//! Certificate signing requests: strict parsing, proof of possession, key
//! checks, and the names they ask for. Only the subject and the
//! subjectAltName are ever read from a CSR; its other requested extensions
//! are ignored, never copied.

use crate::hsm::{verify, KeyType};
use crate::policy::{Names, SubjectFields};
use certd_api::{ApiError, ErrorCode};
use const_oid::db::{rfc2985, rfc4519, rfc5280, rfc5912};
use der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use std::net::IpAddr;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::{CertReq, ExtensionReq};

/// The largest CSR accepted, in bytes of DER.
pub const MAX_CSR_DER: usize = 16 * 1024;

/// A CSR that parsed, whose signature verified, and whose key is acceptable.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The subscriber's public key.
    pub spki: SubjectPublicKeyInfoOwned,
    /// Its type.
    pub key_type: KeyType,
    /// The subject and SANs it asks for.
    pub names: Names,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadCsr, message)
}

fn weak(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::WeakKey, message)
}

/// Decodes a PEM CSR, checks its structure and self-signature, and checks
/// the key against `allowed` key types and the certifier's own key.
pub fn check_csr(
    pem: &str,
    allowed: &[KeyType],
    certifier_key: &SubjectPublicKeyInfoOwned,
) -> Result<CheckedCsr, ApiError> {
    let der = decode_pem(pem)?;
    let csr = CertReq::from_der(&der)
        .map_err(|e| bad(format!("the CSR is not valid DER PKCS#10: {e}")))?;
    // Strict DER: re-encoding must give the same bytes.
    match csr.to_der() {
        Ok(re) if re == der => {}
        _ => return Err(bad("the CSR is not in canonical DER")),
    }
    if csr.info.version != x509_cert::request::Version::V1 {
        return Err(bad("the CSR version must be v1 (0)"));
    }
    let spki = csr.info.public_key.clone();
    let key_type = check_key(&spki, certifier_key)?;
    let info = csr
        .info
        .to_der()
        .map_err(|e| bad(format!("re-encoding the CSR: {e}")))?;
    let sig = csr
        .signature
        .as_bytes()
        .ok_or_else(|| bad("the CSR signature has unused bits"))?;
    certd_api::keys::check_csr_signature_algorithm(&csr.algorithm.oid.to_string()).map_err(bad)?;
    verify::verify_with_algorithm(&spki, key_type, &csr.algorithm, &info, sig).map_err(|e| {
        bad(format!(
            "the CSR's self-signature (proof of possession) failed: {e}"
        ))
    })?;
    if !allowed.contains(&key_type) {
        return Err(ApiError::new(
            ErrorCode::KeyNotPermitted,
            format!(
                "{key_type} keys are not allowed by this profile; allowed: {}",
                allowed
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let names = Names {
        subject: subject_fields(&csr.info.subject)?,
        ..requested_sans(&csr)?
    };
    Ok(CheckedCsr {
        spki,
        key_type,
        names,
    })
}

fn decode_pem(pem: &str) -> Result<Vec<u8>, ApiError> {
    let trimmed = pem.trim();
    if trimmed.len() > MAX_CSR_DER * 2 {
        return Err(bad("the CSR is too large"));
    }
    let (label, der) = der::pem::decode_vec(trimmed.as_bytes())
        .map_err(|e| bad(format!("the CSR is not PEM: {e}")))?;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(bad(format!(
            "the PEM label is {label:?}; a CSR is labelled \"CERTIFICATE REQUEST\""
        )));
    }
    if der.len() > MAX_CSR_DER {
        return Err(bad("the CSR is too large"));
    }
    Ok(der)
}

/// Checks a subscriber key: type supported, RSA of at least 2048 bits with
/// exponent 65537, points on the curve, and not the certifier's own key.
pub fn check_key(
    spki: &SubjectPublicKeyInfoOwned,
    certifier_key: &SubjectPublicKeyInfoOwned,
) -> Result<KeyType, ApiError> {
    if spki == certifier_key {
        return Err(weak("the CSR carries the certifier's own public key"));
    }
    let oid = spki.algorithm.oid;
    if oid == rfc5912::RSA_ENCRYPTION {
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| bad("public key bit string has unused bits"))?;
        let pk = pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(bits)
            .map_err(|e| bad(format!("RSA public key: {e}")))?;
        // The rules RAs apply too (certd_api::keys), so they cannot drift.
        certd_api::keys::check_rsa(pk.modulus.as_bytes(), pk.public_exponent.as_bytes()).map_err(
            |r| match r {
                certd_api::keys::KeyRefusal::Weak(m) => weak(m),
                certd_api::keys::KeyRefusal::NotPermitted(m) => {
                    ApiError::new(ErrorCode::KeyNotPermitted, m)
                }
            },
        )?;
    }
    let key_type = KeyType::of_spki(spki).map_err(|e| {
        if oid == rfc5912::RSA_ENCRYPTION {
            ApiError::new(ErrorCode::KeyNotPermitted, e)
        } else {
            weak(e)
        }
    })?;
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("public key bit string has unused bits"))?;
    let on_curve = match key_type {
        KeyType::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(point).is_ok(),
        KeyType::P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(point).is_ok(),
        KeyType::Ed25519 => <[u8; 32]>::try_from(point)
            .ok()
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .is_some_and(|k| !k.is_weak()),
        _ => true,
    };
    if !on_curve {
        return Err(weak("the public key is not a valid point of its curve"));
    }
    Ok(key_type)
}

fn attribute_text(value: &der::Any) -> Option<String> {
    if let Ok(s) = value.decode_as::<Utf8StringRef<'_>>() {
        return Some(s.as_str().to_string());
    }
    if let Ok(s) = value.decode_as::<PrintableStringRef<'_>>() {
        return Some(s.as_str().to_string());
    }
    if let Ok(s) = value.decode_as::<Ia5StringRef<'_>>() {
        return Some(s.as_str().to_string());
    }
    None
}

/// Reads the subject attributes certd understands; any other attribute is
/// refused rather than silently dropped or copied.
pub fn subject_fields(name: &x509_cert::name::Name) -> Result<SubjectFields, ApiError> {
    let mut f = SubjectFields::default();
    for rdn in name.iter_rdn() {
        if rdn.len() != 1 {
            return Err(bad("multi-valued subject RDNs are not supported"));
        }
        for atv in rdn.iter() {
            let text = attribute_text(&atv.value).ok_or_else(|| {
                bad(format!(
                    "subject attribute {} is not a UTF8String, PrintableString or IA5String",
                    atv.oid
                ))
            })?;
            let slot = match atv.oid {
                o if o == rfc4519::CN => &mut f.cn,
                o if o == rfc4519::O => &mut f.o,
                o if o == rfc4519::OU => &mut f.ou,
                o if o == rfc4519::L => &mut f.l,
                o if o == rfc4519::ST => &mut f.st,
                o if o == rfc4519::C => &mut f.c,
                o if o == rfc2985::PKCS_9_AT_EMAIL_ADDRESS => &mut f.email,
                o => {
                    return Err(ApiError::new(
                        ErrorCode::NameNotPermitted,
                        format!(
                            "subject attribute {o} is not supported; send the subject in the request instead"
                        ),
                    ))
                }
            };
            if slot.is_some() {
                return Err(ApiError::new(
                    ErrorCode::NameNotPermitted,
                    format!("subject attribute {} appears twice", atv.oid),
                ));
            }
            *slot = Some(text);
        }
    }
    Ok(f)
}

fn requested_sans(csr: &CertReq) -> Result<Names, ApiError> {
    let mut names = Names::default();
    for attr in csr.info.attributes.iter() {
        if attr.oid != rfc5912::ID_EXTENSION_REQ {
            continue;
        }
        for value in attr.values.iter() {
            let req: ExtensionReq = value
                .decode_as()
                .map_err(|e| bad(format!("extensionRequest attribute: {e}")))?;
            for ext in req.0 {
                if ext.extn_id != rfc5280::ID_CE_SUBJECT_ALT_NAME {
                    continue;
                }
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| bad(format!("subjectAltName in the CSR: {e}")))?;
                add_general_names(&mut names, &san.0)?;
            }
        }
    }
    Ok(names)
}

fn add_general_names(names: &mut Names, list: &[GeneralName]) -> Result<(), ApiError> {
    for gn in list {
        match gn {
            GeneralName::DnsName(d) => names.dns.push(d.as_str().to_string()),
            GeneralName::Rfc822Name(e) => names.emails.push(e.as_str().to_string()),
            GeneralName::IpAddress(o) => {
                let b = o.as_bytes();
                let ip = match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(b).map_err(|_| bad("IP SAN"))?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(b).map_err(|_| bad("IP SAN"))?),
                    _ => return Err(bad("an IP address SAN must be 4 or 16 bytes")),
                };
                names.ips.push(ip);
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::NameNotPermitted,
                    format!(
                        "the CSR asks for a SAN of a kind certd does not issue ({}); send the SANs in the request",
                        general_name_kind(other)
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn general_name_kind(gn: &GeneralName) -> &'static str {
    match gn {
        GeneralName::OtherName(_) => "otherName",
        GeneralName::Rfc822Name(_) => "rfc822Name",
        GeneralName::DnsName(_) => "dNSName",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EdiPartyName(_) => "ediPartyName",
        GeneralName::UniformResourceIdentifier(_) => "uniformResourceIdentifier",
        GeneralName::IpAddress(_) => "iPAddress",
        GeneralName::RegisteredId(_) => "registeredID",
    }
}
