//! The decoded view of a CSR that RA staff see after uploading or pasting
//! one, before anything is sent to certd.
//!
//! [`decode_csr`] accepts what people actually hand over (PEM, raw DER or
//! bare base64, with any line endings) and either refuses it with a typed
//! [`DecodeError`] or returns a [`CsrView`]: everything the CSR says, plus
//! the [`Problem`]s staff should know about before they submit it. The view
//! never decides anything: certd checks the CSR again with its own rules.
//!
//! Decoding works on untrusted bytes, so it must never panic; the
//! `ra_web_csr_decode` cargo-fuzz target (`fuzz/`) holds it to that.

mod extensions;
mod input;
mod key;
mod names;
#[cfg(test)]
mod tests;

use der::{Decode, Encode, Reader, SliceReader};
use serde::Serialize;
use std::borrow::Cow;
use x509_cert::request::CertReq;

/// The largest input [`decode_csr`] looks at, in bytes. Real CSRs are a few
/// KiB; anything larger is a bundle, an archive or an attack.
pub const MAX_INPUT: usize = 64 * 1024;

/// Why an input could not be decoded as a CSR at all. Each variant has a
/// stable machine code ([`DecodeError::code`]); its message says what was
/// wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than [`MAX_INPUT`].
    #[error(
        "the input is {len} bytes; a CSR is never larger than 64 KiB: upload the CSR file itself, not a bundle or an archive"
    )]
    TooLarge {
        /// The size of the input in bytes.
        len: usize,
    },
    /// The input is empty or only whitespace.
    #[error(
        "nothing was uploaded or pasted: paste the CSR (the text from -----BEGIN CERTIFICATE REQUEST----- to -----END CERTIFICATE REQUEST-----) or upload the CSR file"
    )]
    Empty,
    /// The input is neither PEM, DER nor base64 of DER.
    #[error(
        "the input is neither PEM, DER nor base64: upload the CSR file as the subscriber's tool wrote it, or paste its PEM text"
    )]
    NotPemOrDer,
    /// The input is PEM, but no block in it is a certificate request.
    #[error("{}", wrong_label_message(.label))]
    WrongPemLabel {
        /// The label of the first PEM block (printable ASCII only, shortened).
        label: String,
    },
    /// A PEM block is incomplete or malformed.
    #[error(
        "the PEM text is incomplete ({detail}): paste the whole block, from the -----BEGIN CERTIFICATE REQUEST----- line to the -----END CERTIFICATE REQUEST----- line"
    )]
    BadPem {
        /// What is missing.
        detail: String,
    },
    /// The base64 inside a PEM block does not decode.
    #[error(
        "the base64 text inside the PEM block is damaged ({detail}): paste the block again exactly as the subscriber's tool wrote it"
    )]
    BadBase64 {
        /// Where decoding stopped.
        detail: String,
    },
    /// The bytes are not one well-formed DER value (truncated or damaged).
    #[error(
        "the data is not valid DER ({detail}); the file is probably truncated or damaged: ask the subscriber for the CSR file again"
    )]
    BadDer {
        /// The DER decoder's complaint.
        detail: String,
    },
    /// The bytes are DER, but not a PKCS#10 certificate signing request.
    #[error(
        "the data is DER but not a PKCS#10 certificate signing request ({detail}): ask the subscriber for the CSR their tool generated with the key (a certificate, key or PKCS#12 file is not a CSR)"
    )]
    NotACsr {
        /// What the data is, or why it is not a CSR.
        detail: String,
    },
}

fn wrong_label_message(label: &str) -> String {
    let hint = if label.contains("PRIVATE KEY") {
        "this is a private key, which must never be sent to the RA: tell the subscriber to keep it secret (and to make a new key if it was shared), and ask for the CSR instead"
    } else if label == "CERTIFICATE"
        || label == "X509 CERTIFICATE"
        || label == "TRUSTED CERTIFICATE"
    {
        "this is a certificate, not a request: ask the subscriber for the CSR"
    } else {
        "not a certificate request: ask the subscriber for the CSR"
    };
    format!(
        "the PEM block is labelled {label:?}, a CSR is labelled \"CERTIFICATE REQUEST\"; {hint}"
    )
}

impl DecodeError {
    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Empty => "empty",
            DecodeError::NotPemOrDer => "not_pem_or_der",
            DecodeError::WrongPemLabel { .. } => "wrong_pem_label",
            DecodeError::BadPem { .. } => "bad_pem",
            DecodeError::BadBase64 { .. } => "bad_base64",
            DecodeError::BadDer { .. } => "bad_der",
            DecodeError::NotACsr { .. } => "not_a_csr",
        }
    }
}

/// Serialises as `{"code": …, "message": …}`, the shape the web UI shows.
impl Serialize for DecodeError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("DecodeError", 2)?;
        s.serialize_field("code", self.code())?;
        s.serialize_field("message", &self.to_string())?;
        s.end()
    }
}

/// How the CSR was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// A PEM block ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST").
    Pem,
    /// Raw DER.
    Der,
    /// Base64 of DER without PEM lines.
    Base64,
}

/// Everything a CSR says, decoded for display, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CsrView {
    /// How the CSR was handed over.
    pub input_format: InputFormat,
    /// The subject as an RFC 4514 string (most significant RDN last).
    pub subject: String,
    /// The subject's attributes in encoding order (most significant first).
    pub subject_attributes: Vec<NameAttribute>,
    /// The subjectAltNames requested in the extensionRequest attribute.
    pub sans: Vec<San>,
    /// The subscriber's public key.
    pub public_key: PublicKeyView,
    /// The signature algorithm's name (e.g. "ECDSA with SHA-256").
    pub signature_algorithm: String,
    /// The signature algorithm's OID.
    pub signature_algorithm_oid: String,
    /// The requested extensions, in the CSR's order.
    pub extensions: Vec<ExtensionView>,
    /// The CSR's attributes other than extensionRequest.
    pub attributes: Vec<AttributeView>,
    /// What staff should know before submitting this CSR.
    pub problems: Vec<Problem>,
}

impl CsrView {
    /// Whether any problem has [`Severity::Error`]: certd would refuse the
    /// CSR, or it must not be used.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

/// One attribute of a distinguished name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameAttribute {
    /// The attribute's short name (e.g. "CN"), or its OID when it has none.
    pub name: String,
    /// The attribute's OID.
    pub oid: String,
    /// The value as text, or `#` and the hex of its DER when it is not a
    /// string.
    pub value: String,
}

/// A subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct San {
    /// Which kind of name it is.
    pub kind: SanKind,
    /// The name: DNS name, mailbox, IP address, URI, the OID of an otherName
    /// or registeredID, the RFC 4514 string of a directoryName (empty for
    /// an ediPartyName). An IP address of the wrong length is shown as hex.
    pub value: String,
}

/// The kinds of [`San`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SanKind {
    /// dNSName.
    Dns,
    /// rfc822Name.
    Email,
    /// iPAddress.
    Ip,
    /// uniformResourceIdentifier.
    Uri,
    /// otherName (value: its type-id OID).
    OtherName,
    /// directoryName.
    DirectoryName,
    /// registeredID (value: the OID).
    RegisteredId,
    /// ediPartyName.
    EdiPartyName,
}

/// The public key of a CSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicKeyView {
    /// What kind of key it is.
    pub algorithm: KeyAlgorithm,
    /// A name for display ("RSA", "EC P-256", "Ed25519", …).
    pub name: String,
    /// The SubjectPublicKeyInfo algorithm OID.
    pub oid: String,
    /// The named curve's OID, for EC keys.
    pub curve_oid: Option<String>,
    /// The key size in bits (RSA modulus size, curve size, 256 for Ed25519).
    pub bits: Option<u32>,
    /// The RSA public exponent (absent when it does not fit 64 bits).
    pub rsa_exponent: Option<u64>,
}

/// The kinds of [`PublicKeyView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAlgorithm {
    /// rsaEncryption.
    Rsa,
    /// EC on P-256.
    EcP256,
    /// EC on P-384.
    EcP384,
    /// EC on P-521.
    EcP521,
    /// EC on another curve, or with explicit parameters.
    EcOther,
    /// Ed25519.
    Ed25519,
    /// Any other algorithm (see [`PublicKeyView::oid`]).
    Unknown,
}

/// A requested extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtensionView {
    /// The extension's OID.
    pub oid: String,
    /// Its name, when known.
    pub name: Option<String>,
    /// Whether it is marked critical.
    pub critical: bool,
    /// A short decoded summary for keyUsage, extendedKeyUsage,
    /// basicConstraints and subjectAltName; "unparsed" for the others.
    pub summary: String,
}

/// A CSR attribute other than extensionRequest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttributeView {
    /// The attribute's OID.
    pub oid: String,
    /// Its name, when known.
    pub name: Option<String>,
    /// What it holds. A challengePassword's value is never shown.
    pub summary: String,
}

/// Something staff should know about a CSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The stable machine code.
    pub code: ProblemCode,
    /// Whether it stops the CSR from being used.
    pub severity: Severity,
    /// What is wrong and what to do.
    pub message: String,
}

/// How serious a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// certd would refuse the CSR, or it must not be used.
    Error,
    /// Worth a look; the CSR may still be used.
    Warning,
}

/// The stable codes of [`Problem`]s (serialised in snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemCode {
    /// The encoding is BER or otherwise not canonical DER.
    NotDer,
    /// Bytes follow the CSR.
    TrailingData,
    /// The public key cannot be read.
    BadPublicKey,
    /// The key algorithm is not one certd issues for.
    UnsupportedKey,
    /// The EC curve is not P-256 or P-384.
    UnsupportedCurve,
    /// The RSA key is too short or not an RSA key at all.
    WeakRsaKey,
    /// The RSA public exponent is even or small.
    WeakRsaExponent,
    /// The RSA public exponent is large and not 65537 (certd refuses it).
    UnusualRsaExponent,
    /// The self-signature (proof of possession) does not verify.
    BadSignature,
    /// The self-signature could not be checked here.
    SignatureNotVerified,
    /// The CSR is signed with an algorithm certd refuses (SHA-1, MD5,
    /// SHA-224, RSASSA-PSS, DSA, Ed448).
    SignatureAlgorithmRefused,
    /// An extension cannot be decoded, or is requested twice.
    BadExtension,
    /// The CSR asks for a CA certificate.
    CaRequested,
    /// A subjectAltName is not valid syntax.
    InvalidSan,
    /// Neither subject nor subjectAltNames name anyone.
    NoNames,
}

impl Problem {
    fn error(code: ProblemCode, message: impl Into<String>) -> Self {
        Problem {
            code,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    fn warning(code: ProblemCode, message: impl Into<String>) -> Self {
        Problem {
            code,
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

/// Decodes a CSR given as PEM ("CERTIFICATE REQUEST" or "NEW CERTIFICATE
/// REQUEST"), raw DER or bare base64 of DER, for display.
///
/// Refuses inputs over [`MAX_INPUT`] bytes and anything that is not a
/// PKCS#10 request; everything else comes back as a [`CsrView`] whose
/// `problems` say what is wrong with it. Never panics.
pub fn decode_csr(input: &[u8]) -> Result<CsrView, DecodeError> {
    if input.len() > MAX_INPUT {
        return Err(DecodeError::TooLarge { len: input.len() });
    }
    let (input_format, der) = input::unwrap(input)?;
    let parsed = parse(&der)?;
    Ok(view(input_format, parsed))
}

/// The CSR as PEM ("CERTIFICATE REQUEST"), from any input [`decode_csr`]
/// accepts: what is stored and sent to certd.
pub fn csr_pem(input: &[u8]) -> Result<String, DecodeError> {
    if input.len() > MAX_INPUT {
        return Err(DecodeError::TooLarge { len: input.len() });
    }
    let (_, der) = input::unwrap(input)?;
    der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der).map_err(|e| {
        DecodeError::BadDer {
            detail: e.to_string(),
        }
    })
}

/// A request as decoded, before it is described.
struct Parsed<'a> {
    csr: CertReq,
    /// The CertificationRequestInfo as it was signed: its bytes in the
    /// input, which differ from a re-encoding when the input is not DER.
    signed: Option<Cow<'a, [u8]>>,
    problems: Vec<Problem>,
}

fn parse(der: &[u8]) -> Result<Parsed<'_>, DecodeError> {
    let (csr, consumed) = decode_prefix(der).map_err(|e| classify_failure(der, e))?;
    let body = der.get(..consumed).unwrap_or(der);
    let mut problems = Vec::new();
    // `der` sorts SET OF while decoding and tolerates a few other BER
    // forms; certd compares the re-encoding with the input, so do the same.
    if csr.to_der().ok().as_deref() != Some(body) {
        problems.push(Problem::error(
            ProblemCode::NotDer,
            "the CSR is not in canonical DER (e.g. unsorted SET OF or BER lengths), and certd refuses that: ask the subscriber to generate it again with a standard tool",
        ));
    }
    if consumed < der.len() {
        problems.push(Problem::error(
            ProblemCode::TrailingData,
            format!(
                "{} byte(s) follow the CSR, and certd refuses that: upload the CSR on its own",
                der.len() - consumed
            ),
        ));
    }
    let signed = signed_info(body)
        .map(Cow::Borrowed)
        .or_else(|| csr.info.to_der().ok().map(Cow::Owned));
    Ok(Parsed {
        csr,
        signed,
        problems,
    })
}

/// Decodes a CSR from the start of `der`; returns how many bytes it took.
fn decode_prefix(der: &[u8]) -> der::Result<(CertReq, usize)> {
    let mut reader = SliceReader::new(der)?;
    let csr = CertReq::decode(&mut reader)?;
    let consumed = usize::try_from(reader.position())?;
    Ok((csr, consumed))
}

/// The first element (CertificationRequestInfo) of the outer SEQUENCE, as
/// encoded in the input.
fn signed_info(body: &[u8]) -> Option<&[u8]> {
    let mut reader = SliceReader::new(body).ok()?;
    let outer = der::Header::decode(&mut reader).ok()?;
    if outer.tag() != der::Tag::Sequence {
        return None;
    }
    reader.tlv_bytes().ok()
}

/// Says why `der` is not a CSR: not DER at all, another kind of object,
/// or a damaged request.
fn classify_failure(der: &[u8], err: der::Error) -> DecodeError {
    if der.is_empty() {
        return DecodeError::BadDer {
            detail: "there are no bytes".to_string(),
        };
    }
    let mut reader = match SliceReader::new(der) {
        Ok(r) => r,
        Err(e) => {
            return DecodeError::BadDer {
                detail: e.to_string(),
            }
        }
    };
    if let Err(e) = der::asn1::AnyRef::decode(&mut reader) {
        return DecodeError::BadDer {
            detail: e.to_string(),
        };
    }
    if x509_cert::Certificate::from_der(der).is_ok() {
        return DecodeError::NotACsr {
            detail: "it is an X.509 certificate".to_string(),
        };
    }
    DecodeError::NotACsr {
        detail: err.to_string(),
    }
}

fn view(input_format: InputFormat, parsed: Parsed<'_>) -> CsrView {
    let Parsed {
        csr,
        signed,
        mut problems,
    } = parsed;
    let (subject, subject_attributes) = names::describe_name(&csr.info.subject);

    let key = key::describe(&csr.info.public_key);
    problems.extend(key.problems.iter().cloned());
    let sig = key::SignatureAlgorithm::of(&csr.algorithm.oid);
    problems.extend(key::check_signature(
        &key,
        &csr.algorithm,
        sig,
        signed.as_deref(),
        &csr.signature,
    ));

    let requested = extensions::describe(&csr.info.attributes);
    problems.extend(requested.problems);
    problems.extend(names::check_sans(&requested.sans));
    if subject_attributes.is_empty() && requested.sans.is_empty() {
        problems.push(Problem::warning(
            ProblemCode::NoNames,
            "the CSR names nobody (empty subject, no subjectAltNames): enter the subject and names in the request",
        ));
    }

    CsrView {
        input_format,
        subject,
        subject_attributes,
        sans: requested.sans,
        public_key: key.view,
        signature_algorithm: sig.name(),
        signature_algorithm_oid: csr.algorithm.oid.to_string(),
        extensions: requested.extensions,
        attributes: requested.attributes,
        problems,
    }
}
