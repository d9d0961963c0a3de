//! From what was uploaded or pasted to DER: PEM (any line endings and
//! wrapping, text around the block allowed), raw DER, or bare base64.
//!
//! PEM is read here rather than with `pem-rfc7468`, which insists on one
//! line width throughout: pasted CSRs are often re-wrapped, indented or
//! carry trailing spaces, and refusing them would only send staff back to
//! the subscriber for nothing.

use super::{DecodeError, InputFormat};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use std::borrow::Cow;

/// The PEM labels of a PKCS#10 request (RFC 7468 section 7, and the one
/// older Microsoft and Netscape tools write).
const CSR_LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// Standard alphabet; padding optional, since hand-edited pastes lose it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The DER SEQUENCE tag every CSR starts with.
const SEQUENCE: u8 = 0x30;

/// Finds the CSR's DER in `input`.
pub(super) fn unwrap(input: &[u8]) -> Result<(InputFormat, Cow<'_, [u8]>), DecodeError> {
    // Raw DER is taken as it is: its last bytes may well look like
    // whitespace, and trimming them would hide trailing data. (No text form
    // of a CSR starts with '0'.)
    if input.first() == Some(&SEQUENCE) {
        return Ok((InputFormat::Der, Cow::Borrowed(input)));
    }
    let text = input
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(input)
        .trim_ascii();
    if text.is_empty() {
        return Err(DecodeError::Empty);
    }
    if find(text, b"-----BEGIN").is_some() {
        return pem(text).map(|der| (InputFormat::Pem, Cow::Owned(der)));
    }
    // Bare base64 only counts when it decodes to something that starts like
    // a CSR; other text is simply not a CSR.
    if text.iter().all(|&b| is_base64(b) || is_space(b)) {
        if let Ok(der) = decode_base64(text) {
            if der.first() == Some(&SEQUENCE) {
                return Ok((InputFormat::Base64, Cow::Owned(der)));
            }
        }
    }
    Err(DecodeError::NotPemOrDer)
}

/// The DER of the first PEM block labelled as a CSR.
fn pem(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    let mut first_label: Option<&[u8]> = None;
    let mut rest = text;
    while let Some(at) = find(rest, BEGIN) {
        let after = rest.get(at + BEGIN.len()..).unwrap_or_default();
        let Some(close) = find(after, DASHES) else {
            return Err(bad_pem("a -----BEGIN line is not closed by -----"));
        };
        let label = after.get(..close).unwrap_or_default();
        let body = after.get(close + DASHES.len()..).unwrap_or_default();
        if label.iter().any(|b| b.is_ascii_control()) {
            return Err(bad_pem("a -----BEGIN line is broken across lines"));
        }
        if let Some(csr_label) = CSR_LABELS.iter().find(|l| l.as_bytes() == label) {
            let end = format!("-----END {csr_label}-----");
            let Some(stop) = find(body, end.as_bytes()) else {
                return Err(bad_pem(format!("the {end} line is missing")));
            };
            let body = body.get(..stop).unwrap_or_default();
            if body.contains(&b':') {
                return Err(DecodeError::BadBase64 {
                    detail: "it has header lines (\"Name: value\"), which a CSR never has"
                        .to_string(),
                });
            }
            let der = decode_base64(body)?;
            if der.is_empty() {
                return Err(bad_pem("the block is empty"));
            }
            return Ok(der);
        }
        first_label.get_or_insert(label);
        rest = body;
    }
    match first_label {
        Some(label) => Err(DecodeError::WrongPemLabel {
            label: printable(label),
        }),
        None => Err(bad_pem(
            "there is no -----BEGIN CERTIFICATE REQUEST----- line",
        )),
    }
}

fn bad_pem(detail: impl Into<String>) -> DecodeError {
    DecodeError::BadPem {
        detail: detail.into(),
    }
}

/// Base64 with all ASCII whitespace (line breaks, CR, indentation)
/// ignored.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let compact: Vec<u8> = text.iter().copied().filter(|&b| !is_space(b)).collect();
    if let Some(pos) = compact.iter().position(|&b| !is_base64(b)) {
        return Err(DecodeError::BadBase64 {
            detail: format!("a character that is not base64 at position {pos}"),
        });
    }
    BASE64.decode(&compact).map_err(|e| DecodeError::BadBase64 {
        detail: e.to_string(),
    })
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c')
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A label from the input, fit to quote in a message: printable ASCII only,
/// at most 40 characters.
fn printable(label: &[u8]) -> String {
    let mut s: String = label
        .iter()
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .take(40)
        .map(|&b| char::from(b))
        .collect();
    if label.len() > 40 {
        s.push('…');
    }
    s
}
