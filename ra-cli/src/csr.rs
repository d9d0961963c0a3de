//! What a subscriber's own CSR holds: the names it asks for and its key
//! type, so a batch row can be checked against its CSR before anything is
//! sent. certd checks the CSR again (signature, key strength): this is the
//! operator's early warning, not the policy.

use crate::error::Error;
use der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::CertReq;

const OID_EMAIL_ADDRESS: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");
const OID_EXTENSION_REQUEST: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
const OID_SAN: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("2.5.29.17");
const OID_EC_PUBLIC_KEY: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.101.112");

/// The names and key type of a CSR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrInfo {
    /// The CSR as PEM (normalised: what is sent to certd).
    pub pem: String,
    /// Subject commonName.
    pub common_name: Option<String>,
    /// Subject emailAddress.
    pub email_address: Option<String>,
    /// Other subject attributes, as `OID=value` (for messages).
    pub other_subject: Vec<String>,
    /// dNSName SANs requested.
    pub dns: Vec<String>,
    /// rfc822Name SANs requested.
    pub emails: Vec<String>,
    /// Number of iPAddress SANs requested.
    pub ips: usize,
    /// Key type in certd's names (`p256`, `rsa2048`, ...), or `None` when
    /// ra-cli does not know it.
    pub key_type: Option<String>,
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::Crypto(format!("not a usable CSR: {e}"))
}

impl CsrInfo {
    /// Reads a PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or
    /// DER CSR.
    pub fn from_bytes(bytes: &[u8]) -> Result<CsrInfo, Error> {
        let trimmed = bytes.trim_ascii_start();
        if trimmed.starts_with(b"-----BEGIN") {
            let text = std::str::from_utf8(trimmed).map_err(bad)?;
            CsrInfo::from_pem(text)
        } else {
            CsrInfo::from_der(bytes)
        }
    }

    /// Reads a PEM CSR.
    pub fn from_pem(pem: &str) -> Result<CsrInfo, Error> {
        let (label, der) = der::pem::decode_vec(pem.trim().as_bytes()).map_err(bad)?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(bad(format!(
                "PEM label {label:?}, expected CERTIFICATE REQUEST"
            )));
        }
        CsrInfo::from_der(&der)
    }

    /// Reads a DER CSR.
    pub fn from_der(der: &[u8]) -> Result<CsrInfo, Error> {
        let req = CertReq::from_der(der).map_err(bad)?;
        let mut info = CsrInfo {
            pem: der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, der)
                .map_err(bad)?,
            ..CsrInfo::default()
        };
        for atv in req.info.subject.iter() {
            let text = directory_string(&atv.value);
            if atv.oid == const_oid::db::rfc4519::CN {
                info.common_name = text;
            } else if atv.oid == OID_EMAIL_ADDRESS {
                info.email_address = text;
            } else {
                info.other_subject
                    .push(format!("{}={}", atv.oid, text.unwrap_or_default()));
            }
        }
        for attr in req.info.attributes.iter() {
            if attr.oid != OID_EXTENSION_REQUEST {
                continue;
            }
            for value in attr.values.iter() {
                let exts: Vec<x509_cert::ext::Extension> = value.decode_as().map_err(bad)?;
                for ext in exts.iter().filter(|e| e.extn_id == OID_SAN) {
                    let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(bad)?;
                    for name in san.0 {
                        match name {
                            GeneralName::DnsName(d) => info.dns.push(d.to_string()),
                            GeneralName::Rfc822Name(e) => info.emails.push(e.to_string()),
                            GeneralName::IpAddress(_) => info.ips += 1,
                            _ => {}
                        }
                    }
                }
            }
        }
        info.key_type = key_type(&req.info.public_key);
        Ok(info)
    }

    /// Every name the CSR asks for, for comparison with a row.
    pub fn names(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.common_name
            .iter()
            .map(|v| ("commonName", v.as_str()))
            .chain(
                self.email_address
                    .iter()
                    .map(|v| ("emailAddress", v.as_str())),
            )
            .chain(self.dns.iter().map(|v| ("DNS SAN", v.as_str())))
            .chain(self.emails.iter().map(|v| ("email SAN", v.as_str())))
    }
}

fn directory_string(value: &der::Any) -> Option<String> {
    use der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
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

fn key_type(spki: &spki::SubjectPublicKeyInfoOwned) -> Option<String> {
    let alg = &spki.algorithm;
    if alg.oid == OID_EC_PUBLIC_KEY {
        let curve: der::oid::ObjectIdentifier = alg.parameters.as_ref()?.decode_as().ok()?;
        return match curve {
            c if c == OID_P256 => Some("p256".into()),
            c if c == OID_P384 => Some("p384".into()),
            c => Some(format!("ec:{c}")),
        };
    }
    if alg.oid == OID_ED25519 {
        return Some("ed25519".into());
    }
    if alg.oid == OID_RSA {
        let bytes = spki.subject_public_key.as_bytes()?;
        let key = rsa::pkcs1::RsaPublicKey::<der::asn1::UintRef<'_>>::from_der(bytes).ok()?;
        let modulus = key.modulus.as_bytes();
        let lead = modulus.iter().take_while(|b| **b == 0).count();
        let bits = (modulus.len() - lead) * 8;
        return Some(format!("rsa{bits}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused() {
        assert!(CsrInfo::from_bytes(b"hello").is_err());
        assert!(CsrInfo::from_bytes(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn rsa_key_size_is_read() {
        let key = crate::keys::SubscriberKey::generate(crate::keys::KeyType::Rsa2048).expect("rsa");
        let info = CsrInfo::from_pem(&key.csr_pem(None).expect("csr")).expect("parse");
        assert_eq!(info.key_type.as_deref(), Some("rsa2048"));
        assert_eq!(info.common_name, None);
    }
}
