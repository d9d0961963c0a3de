//! Distinguished names as RFC 4514 strings, subjectAltNames, and the name
//! syntax checks certd makes (`certd_api::names`).

use super::{NameAttribute, Problem, ProblemCode, San, SanKind};
use const_oid::ObjectIdentifier;
use der::asn1::{
    Any, BmpString, Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef,
};
use der::{Encode, Tag, Tagged};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;

/// Short names: those of RFC 4514 section 3, and the other descriptors
/// registered for LDAP that CSR tools use (emailAddress as OpenSSL
/// writes it).
const SHORT_NAMES: &[(ObjectIdentifier, &str)] = &[
    (ObjectIdentifier::new_unwrap("2.5.4.3"), "CN"),
    (ObjectIdentifier::new_unwrap("2.5.4.4"), "SN"),
    (ObjectIdentifier::new_unwrap("2.5.4.5"), "serialNumber"),
    (ObjectIdentifier::new_unwrap("2.5.4.6"), "C"),
    (ObjectIdentifier::new_unwrap("2.5.4.7"), "L"),
    (ObjectIdentifier::new_unwrap("2.5.4.8"), "ST"),
    (ObjectIdentifier::new_unwrap("2.5.4.9"), "STREET"),
    (ObjectIdentifier::new_unwrap("2.5.4.10"), "O"),
    (ObjectIdentifier::new_unwrap("2.5.4.11"), "OU"),
    (ObjectIdentifier::new_unwrap("2.5.4.12"), "title"),
    (ObjectIdentifier::new_unwrap("2.5.4.15"), "businessCategory"),
    (ObjectIdentifier::new_unwrap("2.5.4.17"), "postalCode"),
    (ObjectIdentifier::new_unwrap("2.5.4.42"), "GN"),
    (ObjectIdentifier::new_unwrap("2.5.4.43"), "initials"),
    (
        ObjectIdentifier::new_unwrap("2.5.4.44"),
        "generationQualifier",
    ),
    (ObjectIdentifier::new_unwrap("2.5.4.46"), "dnQualifier"),
    (ObjectIdentifier::new_unwrap("2.5.4.65"), "pseudonym"),
    (
        ObjectIdentifier::new_unwrap("2.5.4.97"),
        "organizationIdentifier",
    ),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1"),
        "UID",
    ),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25"),
        "DC",
    ),
    (
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1"),
        "emailAddress",
    ),
];

fn short_name(oid: &ObjectIdentifier) -> Option<&'static str> {
    SHORT_NAMES
        .iter()
        .find(|(o, _)| o == oid)
        .map(|(_, name)| *name)
}

/// The text of a directory string value, for the string types CSRs use.
pub(super) fn string_value(value: &Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::Ia5String => value
            .decode_as::<Ia5StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::TeletexString => value
            .decode_as::<TeletexStringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        Tag::BmpString => value.decode_as::<BmpString>().ok().map(|s| s.to_string()),
        _ => None,
    }
}

/// The RFC 4514 string of `name` and its attributes in encoding order.
pub(super) fn describe_name(name: &Name) -> (String, Vec<NameAttribute>) {
    let mut attributes = Vec::new();
    let mut rdns = Vec::new();
    for rdn in name.iter_rdn() {
        let mut parts = Vec::new();
        for atv in rdn.iter() {
            let label = short_name(&atv.oid)
                .map(str::to_string)
                .unwrap_or_else(|| atv.oid.to_string());
            let text = string_value(&atv.value);
            let shown = match &text {
                Some(t) => escape_value(t),
                None => format!("#{}", hex(&atv.value.to_der().unwrap_or_default())),
            };
            parts.push(format!("{label}={shown}"));
            attributes.push(NameAttribute {
                name: label,
                oid: atv.oid.to_string(),
                value: text.unwrap_or(shown),
            });
        }
        rdns.push(parts.join("+"));
    }
    // RFC 4514 section 2.1: the last RDN of the sequence comes first.
    rdns.reverse();
    (rdns.join(","), attributes)
}

/// Escapes an attribute value as RFC 4514 section 2.4 requires, and also
/// every control and bidirectional-formatting character (as hex pairs of
/// its UTF-8), so that what staff read is what the CSR says.
pub(super) fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() || is_format_char(c) => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Invisible characters that change how text around them is displayed.
fn is_format_char(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

pub(super) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A subjectAltName for display.
pub(super) fn general_name(gn: &GeneralName) -> San {
    let (kind, value) = match gn {
        GeneralName::DnsName(s) => (SanKind::Dns, s.as_str().to_string()),
        GeneralName::Rfc822Name(s) => (SanKind::Email, s.as_str().to_string()),
        GeneralName::UniformResourceIdentifier(s) => (SanKind::Uri, s.as_str().to_string()),
        GeneralName::IpAddress(o) => (SanKind::Ip, ip_text(o.as_bytes())),
        GeneralName::OtherName(o) => (SanKind::OtherName, o.type_id.to_string()),
        GeneralName::DirectoryName(n) => (SanKind::DirectoryName, describe_name(n).0),
        GeneralName::RegisteredId(oid) => (SanKind::RegisteredId, oid.to_string()),
        GeneralName::EdiPartyName(_) => (SanKind::EdiPartyName, String::new()),
    };
    San { kind, value }
}

/// An IPv4 or IPv6 address, or the hex of anything else (which
/// [`check_sans`] reports).
fn ip_text(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ipv4Addr::from(v4).to_string();
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ipv6Addr::from(v6).to_string();
    }
    hex(bytes)
}

/// openssl-style text of one name, for the subjectAltName summary.
pub(super) fn san_summary(san: &San) -> String {
    let prefix = match san.kind {
        SanKind::Dns => "DNS",
        SanKind::Email => "email",
        SanKind::Ip => "IP",
        SanKind::Uri => "URI",
        SanKind::OtherName => "otherName",
        SanKind::DirectoryName => "dirName",
        SanKind::RegisteredId => "RID",
        SanKind::EdiPartyName => return "ediPartyName".to_string(),
    };
    format!("{prefix}:{}", san.value)
}

/// DNS names and mailboxes in certd's syntax (wildcards allowed: whether a
/// profile takes them is for certd to say), IP addresses of 4 or 16 bytes.
pub(super) fn check_sans(sans: &[San]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for san in sans {
        let result = match san.kind {
            SanKind::Dns => certd_api::names::check_dns_name(&san.value, true),
            SanKind::Email => certd_api::names::check_email(&san.value).map(|_| ()),
            SanKind::Ip if san.value.parse::<IpAddr>().is_err() => Err(format!(
                "the IP address SAN {} is not 4 or 16 bytes long",
                san.value
            )),
            _ => Ok(()),
        };
        if let Err(e) = result {
            problems.push(Problem::error(
                ProblemCode::InvalidSan,
                format!("{e}; correct the name in the request (or ask for a new CSR)"),
            ));
        }
    }
    problems
}
