//! The CSR's attributes: the requested extensions (from extensionRequest)
//! with short summaries, the subjectAltNames among them, and the other
//! attributes (a challengePassword is noted, never shown).

use super::names::{general_name, san_summary, string_value};
use super::{AttributeView, ExtensionView, Problem, ProblemCode, San};
use const_oid::db::{rfc5280, rfc5912};
use const_oid::ObjectIdentifier;
use der::Decode;
use x509_cert::attr::Attributes;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::request::ExtensionReq;

const fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

const EXTENSION_NAMES: &[(ObjectIdentifier, &str)] = &[
    (
        rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
        "subjectKeyIdentifier",
    ),
    (rfc5280::ID_CE_KEY_USAGE, "keyUsage"),
    (rfc5280::ID_CE_SUBJECT_ALT_NAME, "subjectAltName"),
    (rfc5280::ID_CE_BASIC_CONSTRAINTS, "basicConstraints"),
    (rfc5280::ID_CE_NAME_CONSTRAINTS, "nameConstraints"),
    (
        rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS,
        "cRLDistributionPoints",
    ),
    (rfc5280::ID_CE_CERTIFICATE_POLICIES, "certificatePolicies"),
    (
        rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
        "authorityKeyIdentifier",
    ),
    (rfc5280::ID_CE_EXT_KEY_USAGE, "extendedKeyUsage"),
    (
        rfc5280::ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES,
        "subjectDirectoryAttributes",
    ),
    (rfc5280::ID_PE_AUTHORITY_INFO_ACCESS, "authorityInfoAccess"),
    (oid("1.3.6.1.5.5.7.1.24"), "tlsFeature"),
    (oid("1.3.6.1.4.1.11129.2.4.3"), "ctPrecertificatePoison"),
    (oid("1.3.6.1.4.1.311.20.2"), "msCertificateTemplateName"),
    (oid("1.3.6.1.4.1.311.21.7"), "msCertificateTemplate"),
    (oid("2.16.840.1.113730.1.1"), "nsCertType"),
    (oid("2.16.840.1.113730.1.13"), "nsComment"),
];

const EKU_NAMES: &[(ObjectIdentifier, &str)] = &[
    (oid("1.3.6.1.5.5.7.3.1"), "serverAuth"),
    (oid("1.3.6.1.5.5.7.3.2"), "clientAuth"),
    (oid("1.3.6.1.5.5.7.3.3"), "codeSigning"),
    (oid("1.3.6.1.5.5.7.3.4"), "emailProtection"),
    (oid("1.3.6.1.5.5.7.3.8"), "timeStamping"),
    (oid("1.3.6.1.5.5.7.3.9"), "OCSPSigning"),
    (oid("2.5.29.37.0"), "anyExtendedKeyUsage"),
];

const CHALLENGE_PASSWORD: ObjectIdentifier = oid("1.2.840.113549.1.9.7");

/// Attributes whose values are text meant to be read.
const TEXT_ATTRIBUTES: &[(ObjectIdentifier, &str)] = &[
    (oid("1.2.840.113549.1.9.2"), "unstructuredName"),
    (oid("1.2.840.113549.1.9.8"), "unstructuredAddress"),
];

/// Known attributes shown by name only.
const OTHER_ATTRIBUTES: &[(ObjectIdentifier, &str)] = &[
    (oid("1.3.6.1.4.1.311.13.2.3"), "msOsVersion"),
    (oid("1.3.6.1.4.1.311.13.2.2"), "msEnrollmentCspProvider"),
    (oid("1.3.6.1.4.1.311.21.20"), "msRequestClientInfo"),
];

fn lookup(
    table: &[(ObjectIdentifier, &'static str)],
    oid: &ObjectIdentifier,
) -> Option<&'static str> {
    table.iter().find(|(o, _)| o == oid).map(|(_, n)| *n)
}

/// What the attributes of a CSR request.
pub(super) struct Requested {
    pub(super) extensions: Vec<ExtensionView>,
    pub(super) sans: Vec<San>,
    pub(super) attributes: Vec<AttributeView>,
    pub(super) problems: Vec<Problem>,
}

pub(super) fn describe(attributes: &Attributes) -> Requested {
    let mut out = Requested {
        extensions: Vec::new(),
        sans: Vec::new(),
        attributes: Vec::new(),
        problems: Vec::new(),
    };
    let mut seen: Vec<ObjectIdentifier> = Vec::new();
    for attr in attributes.iter() {
        if attr.oid != rfc5912::ID_EXTENSION_REQ {
            out.attributes.push(other_attribute(attr));
            continue;
        }
        for value in attr.values.iter() {
            let req: ExtensionReq = match value.decode_as() {
                Ok(r) => r,
                Err(e) => {
                    out.problems.push(Problem::error(
                        ProblemCode::BadExtension,
                        format!(
                            "the extensionRequest attribute cannot be decoded ({e}): ask the subscriber to generate the CSR again"
                        ),
                    ));
                    continue;
                }
            };
            for ext in &req.0 {
                if seen.contains(&ext.extn_id) {
                    out.problems.push(Problem::error(
                        ProblemCode::BadExtension,
                        format!(
                            "extension {} is requested twice: ask the subscriber to generate the CSR again",
                            name_or_oid(&ext.extn_id)
                        ),
                    ));
                } else {
                    seen.push(ext.extn_id);
                }
                let summary = summarise(ext, &mut out);
                out.extensions.push(ExtensionView {
                    oid: ext.extn_id.to_string(),
                    name: lookup(EXTENSION_NAMES, &ext.extn_id).map(str::to_string),
                    critical: ext.critical,
                    summary,
                });
            }
        }
    }
    out
}

fn name_or_oid(oid: &ObjectIdentifier) -> String {
    lookup(EXTENSION_NAMES, oid)
        .map(str::to_string)
        .unwrap_or_else(|| oid.to_string())
}

/// The summary of one extension; records its SANs and problems in `out`.
fn summarise(ext: &Extension, out: &mut Requested) -> String {
    let bytes = ext.extn_value.as_bytes();
    let decoded = match ext.extn_id {
        id if id == rfc5280::ID_CE_KEY_USAGE => KeyUsage::from_der(bytes).map(key_usage),
        id if id == rfc5280::ID_CE_EXT_KEY_USAGE => {
            ExtendedKeyUsage::from_der(bytes).map(|eku| {
                eku.0
                    .iter()
                    .map(|o| lookup(EKU_NAMES, o).map_or_else(|| o.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        }
        id if id == rfc5280::ID_CE_BASIC_CONSTRAINTS => {
            BasicConstraints::from_der(bytes).map(|bc| {
                if bc.ca {
                    out.problems.push(Problem::warning(
                        ProblemCode::CaRequested,
                        "the CSR asks for a CA certificate (basicConstraints CA:TRUE); certd never issues one from a CSR, so check that the request is what the subscriber meant",
                    ));
                }
                match (bc.ca, bc.path_len_constraint) {
                    (true, Some(n)) => format!("CA:TRUE, pathlen:{n}"),
                    (true, None) => "CA:TRUE".to_string(),
                    (false, Some(n)) => format!("CA:FALSE, pathlen:{n}"),
                    (false, None) => "CA:FALSE".to_string(),
                }
            })
        }
        id if id == rfc5280::ID_CE_SUBJECT_ALT_NAME => {
            SubjectAltName::from_der(bytes).map(|san| {
                let names: Vec<San> = san.0.iter().map(general_name).collect();
                let text = names.iter().map(san_summary).collect::<Vec<_>>().join(", ");
                out.sans.extend(names);
                text
            })
        }
        _ => return "unparsed".to_string(),
    };
    decoded.unwrap_or_else(|e| {
        out.problems.push(Problem::error(
            ProblemCode::BadExtension,
            format!(
                "the requested {} extension cannot be decoded ({e}): ask the subscriber to generate the CSR again",
                name_or_oid(&ext.extn_id)
            ),
        ));
        format!("cannot be decoded: {e}")
    })
}

fn key_usage(ku: KeyUsage) -> String {
    let bits = [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
        (ku.encipher_only(), "encipherOnly"),
        (ku.decipher_only(), "decipherOnly"),
    ];
    let names: Vec<&str> = bits.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

fn other_attribute(attr: &x509_cert::attr::Attribute) -> AttributeView {
    let (name, summary) = if attr.oid == CHALLENGE_PASSWORD {
        // Shared secrets do not belong on a review screen.
        (
            Some("challengePassword"),
            "present (value hidden)".to_string(),
        )
    } else if let Some(name) = lookup(TEXT_ATTRIBUTES, &attr.oid) {
        let texts: Vec<String> = attr
            .values
            .iter()
            .map(|v| string_value(v).unwrap_or_else(|| "(not text)".to_string()))
            .collect();
        (Some(name), texts.join("; "))
    } else {
        (lookup(OTHER_ATTRIBUTES, &attr.oid), "unparsed".to_string())
    };
    AttributeView {
        oid: attr.oid.to_string(),
        name: name.map(str::to_string),
        summary,
    }
}
