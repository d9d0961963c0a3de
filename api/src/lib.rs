//! The certd wire contract: JSON request and response types, the stable
//! error codes, and the mutual-TLS client registration authorities use.
//!
//! Request types refuse unknown fields, so a typo in a client is an error,
//! not a silently ignored option. Response types accept fields they do not
//! know, so an older RA keeps working against a newer certd.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod evidence;
pub mod keys;
pub mod names;

pub use client::{CertdClient, ClientConfig, ClientError};
pub use error::{ApiError, ErrorCode};

use serde::{Deserialize, Serialize};

/// `POST /v1/certificates`: a request to issue one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The RA's idempotency key: repeating a request with the same id
    /// returns the original certificate; reusing it for another body is a
    /// conflict. 1 to 128 printable ASCII characters.
    pub request_id: String,
    /// Certifier to sign with; optional when the RA may use only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certifier: Option<String>,
    /// Issuance profile.
    pub profile: String,
    /// The PKCS#10 request, PEM (`CERTIFICATE REQUEST`).
    pub csr: String,
    /// Subject to use instead of the CSR's (the RA's validated view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    /// SANs to use instead of the CSR's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<SubjectAltNames>,
    /// Requested notAfter (RFC 3339); clamped to what policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Approval and validation evidence gathered by the RA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

impl IssueRequest {
    /// A request for `profile` with `csr` (PEM) under idempotency key
    /// `request_id`, taking the names from the CSR, the certifier the RA
    /// may use, and the longest validity policy allows.
    pub fn new(
        request_id: impl Into<String>,
        profile: impl Into<String>,
        csr: impl Into<String>,
    ) -> Self {
        IssueRequest {
            request_id: request_id.into(),
            certifier: None,
            profile: profile.into(),
            csr: csr.into(),
            subject: None,
            san: None,
            not_after: None,
            approval: None,
        }
    }
}

/// Subject attributes an RA may set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// commonName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// organizationName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// organizationalUnitName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_unit: Option<String>,
    /// localityName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// stateOrProvinceName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// countryName (two letters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// emailAddress (S/MIME profiles only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// organizationIdentifier (S/MIME organization- and sponsor-validated),
    /// e.g. `VATDE-123456789`: the granted organization's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_identifier: Option<String>,
    /// givenName (S/MIME sponsor- and individual-validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// surname (S/MIME sponsor- and individual-validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    /// pseudonym (S/MIME sponsor- and individual-validated), instead of
    /// givenName and surname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonym: Option<String>,
}

/// subjectAltName entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAltNames {
    /// dNSName entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// rfc822Name entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    /// iPAddress entries (IPv4 or IPv6 text form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<String>,
}

/// Approval evidence: who asked, who approved, and what was validated.
/// certd checks it against the profile (`approvals_required`,
/// `validation_methods`, `validation_reuse_days`), stores it with the
/// certificate and writes it into the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The person who asked for the certificate; never one of the approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Who verified the identity of the person the certificate names, how
    /// and when (S/MIME sponsor- and individual-validated profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityValidation>,
    /// Officers who approved the request.
    #[serde(default)]
    pub approved_by: Vec<String>,
    /// What was validated, how and when.
    #[serde(default)]
    pub validations: Vec<Validation>,
}

/// The verification of a person's identity (their name or pseudonym).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityValidation {
    /// The officer who verified it.
    pub attested_by: String,
    /// How: `officer_attestation` (the officer checked an identity
    /// document or the organization's own records).
    pub method: String,
    /// When, RFC 3339.
    pub checked_at: String,
    /// Free-form details (document type, directory entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One piece of validation evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// The name validated (a DNS name or email address).
    pub name: String,
    /// How: `email_token`, `dns_txt`, `http_file`, `enterprise_domain`, ...
    pub method: String,
    /// When, RFC 3339.
    pub checked_at: String,
    /// Free-form details (token id, resolver, DNSSEC state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `201` answer to an issuance request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueResponse {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// The chain from the certifier up, PEM each.
    pub chain: Vec<String>,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Set when the requested notAfter was reduced to what policy allows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_after_clamped: bool,
    /// True when this answers a repeated `request_id` (nothing new signed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// On a replay of a certificate revoked since: when, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// On a replay of a certificate revoked since: the RFC 5280 reason name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
}

/// Certificate status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// Issued and not revoked (it may have expired).
    Valid,
    /// Revoked.
    Revoked,
}

/// `GET /v1/certificates/{serial}` and list items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// Serial, lower-case hex.
    pub serial: String,
    /// `valid` or `revoked`.
    pub status: CertStatus,
    /// Certifier that signed it.
    pub certifier: String,
    /// Profile it was issued under.
    pub profile: String,
    /// RA that requested it.
    pub ra: String,
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// Email addresses in the SAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
    /// DNS names in the SAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// When it was revoked, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// RFC 5280 reason name (e.g. `keyCompromise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
    /// The approval evidence the certificate was issued on, as certd
    /// checked and recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// `GET /v1/certificates?...` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateList {
    /// This page.
    pub items: Vec<CertificateInfo>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /v1/certificates/{serial}/revoke` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// RFC 5280 reason name: `unspecified`, `keyCompromise`,
    /// `affiliationChanged`, `superseded`, `cessationOfOperation`,
    /// `certificateHold` is not supported, `privilegeWithdrawn`.
    pub reason: String,
}

/// `GET /v1/profiles` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Name.
    pub name: String,
    /// `tls-server`, `tls-client`, `smime-mailbox`, `smime-organization`,
    /// `smime-sponsor` or `smime-individual`.
    pub kind: String,
    /// Certifiers this RA may use with it.
    pub certifiers: Vec<String>,
    /// Subscriber key types allowed.
    pub key_types: Vec<String>,
    /// Longest validity, in days (the smaller of profile and grant).
    pub max_validity_days: u32,
    /// Whether approval evidence is required (approvals or validations).
    pub requires_approval: bool,
    /// How many distinct officers, other than the requester, must approve.
    #[serde(default)]
    pub approvals_required: u32,
    /// Validation methods accepted for DNS names (empty: none required).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_validation_methods: Vec<evidence::ValidationMethod>,
    /// Validation methods accepted for email addresses (empty: none required).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_validation_methods: Vec<evidence::ValidationMethod>,
}

/// `GET /v1/health` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` when every certifier is active, else `degraded`.
    pub status: String,
    /// Per certifier.
    pub certifiers: Vec<CertifierHealth>,
}

/// One certifier's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifierHealth {
    /// Name.
    pub name: String,
    /// `active`, `locked` or `unavailable`.
    pub state: String,
    /// Why, when unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The certifier's own certificate, PEM: what RAs publish as the CA
    /// certificate (caIssuers) and chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// RFC 5280 CRLReason names and codes accepted for revocation.
/// `caCompromise` and `certificateHold` are not accepted: they do not
/// apply to subscriber certificates (TLS BR 7.2.2, RFC 5280 5.3.1).
pub const REVOCATION_REASONS: [(&str, u8); 6] = [
    ("unspecified", 0),
    ("keyCompromise", 1),
    ("affiliationChanged", 3),
    ("superseded", 4),
    ("cessationOfOperation", 5),
    ("privilegeWithdrawn", 9),
];

/// The code of a reason name.
pub fn reason_code(name: &str) -> Option<u8> {
    REVOCATION_REASONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
}

/// The name of a reason code.
pub fn reason_name(code: u8) -> Option<&'static str> {
    REVOCATION_REASONS
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let ok = r#"{"request_id":"a","profile":"tls-server","csr":"x"}"#;
        assert!(serde_json::from_str::<IssueRequest>(ok).is_ok());
        let bad = r#"{"request_id":"a","profile":"tls-server","csr":"x","validity":1}"#;
        assert!(serde_json::from_str::<IssueRequest>(bad).is_err());
        let bad_san = r#"{"request_id":"a","profile":"p","csr":"x","san":{"uri":["x"]}}"#;
        assert!(serde_json::from_str::<IssueRequest>(bad_san).is_err());
        let bad_approval =
            r#"{"request_id":"a","profile":"p","csr":"x","approval":{"approvers":["o"]}}"#;
        assert!(serde_json::from_str::<IssueRequest>(bad_approval).is_err());
    }

    /// An RA built against this version reads what a newer certd adds.
    #[test]
    fn responses_accept_fields_added_later() {
        let info = r#"{"serial":"01","status":"valid","certifier":"c","profile":"p","ra":"r",
            "subject":"CN=x","not_before":"2026-01-01T00:00:00Z","not_after":"2026-02-01T00:00:00Z",
            "certificate":"pem","added_in_a_later_version":{"x":1}}"#;
        let parsed: CertificateInfo = serde_json::from_str(info).expect("newer CertificateInfo");
        assert_eq!(parsed.serial, "01");
        let issued = r#"{"serial":"01","certificate":"c","chain":[],"not_before":"a","not_after":"b","new":true}"#;
        assert!(serde_json::from_str::<IssueResponse>(issued).is_ok());
        let profile = r#"{"name":"p","kind":"tls-server","certifiers":[],"key_types":[],
            "max_validity_days":1,"requires_approval":false,"new":1}"#;
        assert!(serde_json::from_str::<ProfileInfo>(profile).is_ok());
        let health =
            r#"{"status":"ok","certifiers":[{"name":"c","state":"active","new":1}],"new":2}"#;
        assert!(serde_json::from_str::<Health>(health).is_ok());
        let error = r#"{"error":{"code":"internal","message":"m","hint":"h"},"trace":"t"}"#;
        assert!(serde_json::from_str::<error::ErrorBody>(error).is_ok());
        let list = r#"{"items":[],"cursor":"x"}"#;
        assert!(serde_json::from_str::<CertificateList>(list).is_ok());
    }

    #[test]
    fn reasons_round_trip() {
        for (name, code) in REVOCATION_REASONS {
            assert_eq!(reason_code(name), Some(code));
            assert_eq!(reason_name(code), Some(name));
        }
        assert_eq!(reason_code("certificateHold"), None);
        assert_eq!(reason_code("caCompromise"), None);
        assert_eq!(reason_code("removeFromCRL"), None);
    }
}
