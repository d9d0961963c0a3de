//! What the ledger holds: records of serials and the intents behind them,
//! their states, idempotency entries, revocation entries and counters.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Serial;

/// Hashes and DER are stored as hex so the ledger stays readable with
/// generic tools when an operator has to investigate.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }

    pub(super) mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            bytes: &Option<[u8; 32]>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(bytes) => s.serialize_some(&hex::encode(bytes)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<[u8; 32]>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
                    Ok(out)
                })
                .transpose()
        }
    }

    pub(super) mod option_vec {
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            bytes: &Option<Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(bytes) => s.serialize_some(&hex::encode(bytes)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| hex::decode(text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// What the issuance pipeline is about to sign, recorded before the HSM is
/// asked to sign it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Name of the certifier (CA) that will sign.
    pub certifier: String,
    /// Identity of the registration authority that asked.
    pub ra: String,
    /// The RA's idempotency key, when it sent one.
    pub request_id: Option<String>,
    /// SHA-256 of the TBSCertificate to be signed.
    #[serde(with = "hex_bytes")]
    pub tbs_sha256: [u8; 32],
    /// Issuance profile the certificate is built from.
    pub profile: String,
    /// When the intent was formed, in Unix seconds.
    pub created: i64,
    /// Approval and validation evidence the RA sent with the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<serde_json::Value>,
    /// The certd instance that made it (`daemon.instance`): start-up
    /// recovery settles only its own instance's intents. Empty in intents
    /// written before instances were recorded, which are the local one's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// SHA-256 of the subscriber's SubjectPublicKeyInfo (DER): the intent
    /// is refused if that key is blocked, and a keyCompromise revocation
    /// blocks it. Absent in intents written before keys were blocked.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "hex_bytes::option"
    )]
    pub spki_sha256: Option<[u8; 32]>,
}

/// A public key that certd never certifies again: revoked for
/// keyCompromise (RFC 5280 reason 1), with the revocation that blocked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockedKey {
    /// The certificate whose revocation blocked the key.
    pub serial: Serial,
    /// Its certifier.
    pub certifier: String,
    /// When it was revoked, in Unix seconds.
    pub revoked_at: i64,
}

/// Where a serial is in its life. It only ever moves forward:
/// `Intent → Issued → Revoked`, or `Intent → Abandoned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Reserved before signing; the certificate may or may not exist.
    Intent,
    /// Signed and stored.
    Issued,
    /// Signing failed or was interrupted; the serial is burned forever.
    Abandoned,
    /// Issued and later revoked.
    Revoked,
}

impl fmt::Display for RecordState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Intent => "intent",
            Self::Issued => "issued",
            Self::Abandoned => "abandoned",
            Self::Revoked => "revoked",
        })
    }
}

/// Everything the ledger knows about one serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRecord {
    /// Current state.
    pub state: RecordState,
    /// What was about to be signed when the serial was reserved.
    pub intent: Intent,
    /// The issued certificate, once signed (kept after revocation).
    #[serde(with = "hex_bytes::option_vec")]
    pub certificate_der: Option<Vec<u8>>,
    /// The certificate's notAfter, in Unix seconds.
    pub not_after: Option<i64>,
    /// When the certificate was stored, in Unix seconds.
    pub issued_at: Option<i64>,
    /// When the certificate was revoked, in Unix seconds.
    pub revoked_at: Option<i64>,
    /// RFC 5280 CRLReason code of the revocation.
    pub revocation_reason: Option<u8>,
    /// The RA that revoked it (absent in records written before it was
    /// kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// Why issuance was abandoned.
    pub abandoned_reason: Option<String>,
    /// What the issued certificate names, for listings that filter
    /// without decoding certificates (absent before issuance, and in
    /// records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// What an issued certificate says about itself, kept with its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// dNSName SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// rfc822Name SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
    /// notBefore, Unix seconds.
    pub not_before: i64,
}

impl Summary {
    /// The summary of a DER certificate (`None` if it does not decode,
    /// which a certificate certd signed always does).
    pub fn of_certificate(der: &[u8]) -> Option<Summary> {
        use der::Decode;
        use x509_cert::ext::pkix::name::GeneralName;
        use x509_cert::ext::pkix::SubjectAltName;
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = cert.tbs_certificate();
        let (mut dns, mut emails) = (Vec::new(), Vec::new());
        if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
            for gn in san.0 {
                match gn {
                    GeneralName::DnsName(d) => dns.push(d.as_str().to_string()),
                    GeneralName::Rfc822Name(e) => emails.push(e.as_str().to_string()),
                    _ => {}
                }
            }
        }
        Some(Summary {
            subject: tbs.subject().to_string(),
            dns,
            emails,
            not_before: crate::clock::unix_seconds(tbs.validity().not_before.to_system_time()),
        })
    }
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo (`None` if it does
/// not decode).
pub fn spki_sha256_of_certificate(der: &[u8]) -> Option<[u8; 32]> {
    use der::{Decode, Encode};
    use sha2::Digest;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .ok()?;
    Some(sha2::Sha256::digest(spki).into())
}

impl LedgerRecord {
    /// A fresh record in state [`RecordState::Intent`].
    pub(crate) fn new_intent(intent: Intent) -> Self {
        Self {
            state: RecordState::Intent,
            intent,
            certificate_der: None,
            not_after: None,
            issued_at: None,
            revoked_at: None,
            revocation_reason: None,
            revoked_by: None,
            abandoned_reason: None,
            summary: None,
        }
    }
}

/// The stored answer to an RA's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyEntry {
    /// SHA-256 of the request body, to tell a replay from a conflicting reuse
    /// of the same key.
    #[serde(with = "hex_bytes")]
    pub body_sha256: [u8; 32],
    /// The serial reserved for the original request.
    pub serial: Serial,
}

/// One revoked certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedEntry {
    /// Its serial.
    pub serial: Serial,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
    /// RFC 5280 CRLReason code.
    pub reason: u8,
}

/// Per-certifier counters, updated atomically with the records they count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifierStats {
    /// Certificates ever issued (revoked ones included).
    pub issued: u64,
    /// Certificates revoked.
    pub revoked: u64,
    /// Serial of the most recently issued certificate.
    pub last_serial: Option<Serial>,
}
