//! Certificate output formats: PEM bundles, DER and PKCS#7 certs-only.

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::SetOfVec;
use der::{Decode, Encode};

/// A certificate that could not be put into the asked format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// DER of a PEM certificate (label `CERTIFICATE`).
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, FormatError> {
    let (label, der) = der::pem::decode_vec(pem.trim().as_bytes())
        .map_err(|e| FormatError(format!("certificate from certd: {e}")))?;
    if label != "CERTIFICATE" {
        return Err(FormatError(format!(
            "certificate from certd has PEM label {label:?}"
        )));
    }
    Ok(der)
}

/// The certificate followed by its chain, PEM, each ending in a newline.
pub fn pem_bundle(leaf: &str, chain: &[String]) -> String {
    let mut out = String::new();
    for c in std::iter::once(leaf).chain(chain.iter().map(String::as_str)) {
        out.push_str(c.trim_end());
        out.push('\n');
    }
    out
}

/// A degenerate PKCS#7 / CMS SignedData holding only certificates (RFC
/// 5652 §5; what `openssl crl2pkcs7 -nocrl` writes), DER.
pub fn p7b(certs: &[Vec<u8>]) -> Result<Vec<u8>, FormatError> {
    let err = |e: der::Error| FormatError(format!("PKCS#7: {e}"));
    let mut set = SetOfVec::new();
    for c in certs {
        let cert = x509_cert::Certificate::from_der(c).map_err(err)?;
        set.insert(CertificateChoices::Certificate(cert))
            .map_err(err)?;
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: const_oid::db::rfc5911::ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let info = ContentInfo {
        content_type: const_oid::db::rfc5911::ID_SIGNED_DATA,
        content: der::Any::encode_from(&signed).map_err(err)?,
    };
    info.to_der().map_err(err)
}

/// DER of every certificate in a PEM leaf and its PEM chain, leaf first.
pub fn chain_der(leaf: &str, chain: &[String]) -> Result<Vec<Vec<u8>>, FormatError> {
    std::iter::once(leaf)
        .chain(chain.iter().map(String::as_str))
        .map(pem_to_der)
        .collect()
}
