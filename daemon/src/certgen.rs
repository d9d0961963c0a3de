//! Building subscriber certificates from the profile only.
//!
//! The to-be-signed certificate takes its extensions from the profile and
//! its names from the checked request; nothing is copied from the CSR but
//! the public key. Pure functions: time and serial come in as arguments.

use crate::config::{ProfileConfig, ProfileKind, SmimeGeneration};
use crate::hsm::KeyType;
use crate::policy::Names;
use crate::x509::{self, X509Error};
use const_oid::db::{rfc2985, rfc4519, rfc5280};
use const_oid::ObjectIdentifier;
use der::asn1::{Ia5String, OctetString};
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::CertificateBuilder;
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CertificatePolicies, CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

/// CA/Browser Forum reserved policy OIDs.
pub mod cabf {
    use const_oid::ObjectIdentifier;
    /// TLS BR domain validated.
    pub const TLS_DV: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.140.1.2.1");
    /// TLS BR organization validated.
    pub const TLS_OV: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.140.1.2.2");
    /// S/MIME BR mailbox-validated, multipurpose.
    pub const SMIME_MAILBOX_MULTIPURPOSE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.1.2");
    /// S/MIME BR mailbox-validated, strict.
    pub const SMIME_MAILBOX_STRICT: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.1.3");
    /// S/MIME BR organization-validated, multipurpose.
    pub const SMIME_ORGANIZATION_MULTIPURPOSE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.2.2");
    /// S/MIME BR organization-validated, strict.
    pub const SMIME_ORGANIZATION_STRICT: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.2.3");
    /// S/MIME BR sponsor-validated, multipurpose.
    pub const SMIME_SPONSOR_MULTIPURPOSE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.3.2");
    /// S/MIME BR sponsor-validated, strict.
    pub const SMIME_SPONSOR_STRICT: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.3.3");
    /// S/MIME BR individual-validated, multipurpose.
    pub const SMIME_INDIVIDUAL_MULTIPURPOSE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.4.2");
    /// S/MIME BR individual-validated, strict.
    pub const SMIME_INDIVIDUAL_STRICT: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.23.140.1.5.4.3");
}

/// The issuer side of a certificate: the certifier's certificate.
#[derive(Debug, Clone)]
pub struct IssuerInfo {
    /// Issuer name, exactly as in the certifier's certificate.
    pub name: Name,
    /// The certifier's key identifier (its SKI, or computed from its key).
    pub key_id: Vec<u8>,
    /// The certifier's notAfter, Unix seconds.
    pub not_after: i64,
}

impl IssuerInfo {
    /// From the certifier's certificate.
    pub fn of(cert: &Certificate) -> IssuerInfo {
        let tbs = cert.tbs_certificate();
        let key_id = match tbs.get_extension::<SubjectKeyIdentifier>() {
            Ok(Some((_, ski))) => ski.0.as_bytes().to_vec(),
            _ => x509::key_identifier(tbs.subject_public_key_info()),
        };
        IssuerInfo {
            name: tbs.subject().clone(),
            key_id,
            not_after: x509::unix_of(&tbs.validity().not_after),
        }
    }
}

/// The validity a certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidityChoice {
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds (inclusive, RFC 5280).
    pub not_after: i64,
    /// Whether a requested notAfter was reduced.
    pub clamped: bool,
}

/// Chooses the validity: from `now`, at most `max_days` (RFC 5280 validity
/// is inclusive, so the last second is `now + days·86400 − 1`), never past
/// the issuer's own notAfter; a requested notAfter is honoured when shorter.
pub fn choose_validity(
    now: i64,
    requested_not_after: Option<i64>,
    max_days: u32,
    issuer_not_after: i64,
) -> Result<ValidityChoice, String> {
    let limit = (now + i64::from(max_days) * 86_400 - 1).min(issuer_not_after);
    if limit <= now {
        return Err("the certifier's own certificate expires too soon to issue anything".into());
    }
    match requested_not_after {
        Some(r) if r <= now => Err("the requested not_after is not in the future".into()),
        Some(r) if r > limit => Ok(ValidityChoice {
            not_before: now,
            not_after: limit,
            clamped: true,
        }),
        Some(r) => Ok(ValidityChoice {
            not_before: now,
            not_after: r,
            clamped: false,
        }),
        None => Ok(ValidityChoice {
            not_before: now,
            not_after: limit,
            clamped: false,
        }),
    }
}

/// The subject Name of `names`, in the order C, ST, L, O, OU, CN, emailAddress.
pub fn subject_name(names: &Names) -> Result<Name, X509Error> {
    let s = &names.subject;
    let mut attrs: Vec<(ObjectIdentifier, &str)> = Vec::new();
    for (oid, v) in [
        (rfc4519::C, &s.c),
        (rfc4519::ST, &s.st),
        (rfc4519::L, &s.l),
        (rfc4519::O, &s.o),
        (ORGANIZATION_IDENTIFIER, &s.org_id),
        (rfc4519::OU, &s.ou),
        (rfc4519::GIVEN_NAME, &s.given_name),
        (rfc4519::SN, &s.surname),
        (PSEUDONYM, &s.pseudonym),
        (rfc4519::CN, &s.cn),
        (rfc2985::PKCS_9_AT_EMAIL_ADDRESS, &s.email),
    ] {
        if let Some(v) = v {
            attrs.push((oid, v.as_str()));
        }
    }
    x509::name_from(&attrs)
}

fn ia5(s: &str) -> Result<Ia5String, X509Error> {
    Ia5String::new(s).map_err(|e| X509Error::Invalid(format!("{s:?}: {e}")))
}

/// organizationIdentifier (X.520, 2.5.4.97).
pub const ORGANIZATION_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.97");
/// pseudonym (X.520, 2.5.4.65).
pub const PSEUDONYM: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.65");

/// The key usage a subscriber key gets under a profile: digitalSignature,
/// and for RSA keys in S/MIME certificates keyEncipherment too (mail is
/// encrypted to them). TLS server RSA keys sign only: RSA key transport
/// is gone from TLS 1.3 and deprecated in 1.2 (pkilint warns about it).
pub fn key_usage(kind: ProfileKind, key_type: KeyType) -> KeyUsage {
    let rsa = key_type.rsa_bits().is_some();
    let usage = match (kind, rsa) {
        (k, true) if k.is_smime() => KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment,
        _ => KeyUsages::DigitalSignature.into(),
    };
    KeyUsage(usage)
}

/// Whether a profile's certificates carry a subjectKeyIdentifier: those of
/// tls-client and S/MIME profiles do (RFC 5280 4.2.1.2 SHOULD); TLS server
/// certificates do not (TLS BR 7.1.2.7.6: NOT RECOMMENDED).
pub fn has_subject_key_id(kind: ProfileKind) -> bool {
    kind != ProfileKind::TlsServer
}

/// The extended key usages of a profile.
pub fn extended_key_usage(profile: &ProfileConfig) -> Vec<ObjectIdentifier> {
    match (profile.kind, profile.smime_generation) {
        (ProfileKind::TlsServer, _) => vec![rfc5280::ID_KP_SERVER_AUTH],
        (ProfileKind::TlsClient, _) => vec![rfc5280::ID_KP_CLIENT_AUTH],
        (_, Some(SmimeGeneration::Multipurpose)) => {
            vec![rfc5280::ID_KP_EMAIL_PROTECTION, rfc5280::ID_KP_CLIENT_AUTH]
        }
        (_, _) => vec![rfc5280::ID_KP_EMAIL_PROTECTION],
    }
}

/// The certificate policies of a profile for these names: the CA/B Forum
/// reserved OID that applies, then the profile's own.
pub fn policies(profile: &ProfileConfig, names: &Names) -> Vec<ObjectIdentifier> {
    let mut out = Vec::new();
    match profile.kind {
        ProfileKind::TlsServer if names.subject.o.is_some() => out.push(cabf::TLS_OV),
        ProfileKind::TlsServer => out.push(cabf::TLS_DV),
        ProfileKind::TlsClient => {}
        kind => {
            let multipurpose = profile.smime_generation == Some(SmimeGeneration::Multipurpose);
            out.push(match (kind, multipurpose) {
                (ProfileKind::SmimeOrganization, true) => cabf::SMIME_ORGANIZATION_MULTIPURPOSE,
                (ProfileKind::SmimeOrganization, false) => cabf::SMIME_ORGANIZATION_STRICT,
                (ProfileKind::SmimeSponsor, true) => cabf::SMIME_SPONSOR_MULTIPURPOSE,
                (ProfileKind::SmimeSponsor, false) => cabf::SMIME_SPONSOR_STRICT,
                (ProfileKind::SmimeIndividual, true) => cabf::SMIME_INDIVIDUAL_MULTIPURPOSE,
                (ProfileKind::SmimeIndividual, false) => cabf::SMIME_INDIVIDUAL_STRICT,
                (_, true) => cabf::SMIME_MAILBOX_MULTIPURPOSE,
                (_, false) => cabf::SMIME_MAILBOX_STRICT,
            });
        }
    }
    for p in &profile.policy_oids {
        if let Ok(oid) = p.parse::<ObjectIdentifier>() {
            if !out.contains(&oid) {
                out.push(oid);
            }
        }
    }
    out
}

/// The extensions of a subscriber certificate.
pub fn extensions(
    profile: &ProfileConfig,
    issuer: &IssuerInfo,
    spki: &SubjectPublicKeyInfoOwned,
    key_type: KeyType,
    names: &Names,
) -> Result<Vec<Extension>, X509Error> {
    let inv = |e: der::Error| X509Error::Invalid(e.to_string());
    let mut exts = vec![
        x509::extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer.key_id.clone()).map_err(inv)?),
                ..Default::default()
            },
            false,
        )?,
        x509::extension(
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
            true,
        )?,
        x509::extension(&key_usage(profile.kind, key_type), true)?,
        x509::extension(&ExtendedKeyUsage(extended_key_usage(profile)), false)?,
    ];
    if has_subject_key_id(profile.kind) {
        exts.push(x509::extension(
            &SubjectKeyIdentifier(OctetString::new(x509::key_identifier(spki)).map_err(inv)?),
            false,
        )?);
    }
    let mut san = Vec::new();
    for d in &names.dns {
        san.push(GeneralName::DnsName(ia5(d)?));
    }
    for ip in &names.ips {
        san.push(GeneralName::from(*ip));
    }
    for e in &names.emails {
        san.push(GeneralName::Rfc822Name(ia5(e)?));
    }
    if !san.is_empty() {
        // RFC 5280 4.2.1.6: critical when the subject is empty.
        exts.push(x509::extension(
            &SubjectAltName(san),
            names.subject.is_empty(),
        )?);
    }
    let pols = policies(profile, names);
    if !pols.is_empty() {
        exts.push(x509::extension(
            &CertificatePolicies(
                pols.into_iter()
                    .map(|policy_identifier| PolicyInformation {
                        policy_identifier,
                        policy_qualifiers: None,
                    })
                    .collect(),
            ),
            false,
        )?);
    }
    if let Some(url) = &profile.crl_url {
        exts.push(x509::extension(
            &CrlDistributionPoints(vec![DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![
                    GeneralName::UniformResourceIdentifier(ia5(url)?),
                ])),
                reasons: None,
                crl_issuer: None,
            }]),
            false,
        )?);
    }
    if let Some(url) = &profile.ca_issuers_url {
        exts.push(x509::extension(
            &AuthorityInfoAccessSyntax(vec![AccessDescription {
                access_method: rfc5280::ID_AD_CA_ISSUERS,
                access_location: GeneralName::UniformResourceIdentifier(ia5(url)?),
            }]),
            false,
        )?);
    }
    Ok(exts)
}

/// A fixed set of names and extensions, as the builder wants them.
pub struct FixedProfile {
    subject: Name,
    issuer: Name,
    extensions: Vec<Extension>,
}

impl FixedProfile {
    /// A profile that always yields these names and extensions.
    pub fn new(subject: Name, issuer: Name, extensions: Vec<Extension>) -> Self {
        FixedProfile {
            subject,
            issuer,
            extensions,
        }
    }
}

impl BuilderProfile for FixedProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: spki::SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// Everything that goes into one subscriber certificate.
pub struct LeafSpec<'a> {
    /// The profile.
    pub profile: &'a ProfileConfig,
    /// The issuer.
    pub issuer: &'a IssuerInfo,
    /// The subscriber key.
    pub spki: &'a SubjectPublicKeyInfoOwned,
    /// Its type.
    pub key_type: KeyType,
    /// Checked names.
    pub names: &'a Names,
    /// Validity.
    pub validity: ValidityChoice,
    /// Serial bytes (positive).
    pub serial: &'a [u8],
}

/// A certificate builder loaded with a subscriber certificate.
pub fn leaf_builder(spec: &LeafSpec<'_>) -> Result<CertificateBuilder<FixedProfile>, X509Error> {
    let subject = subject_name(spec.names)?;
    let profile = FixedProfile::new(
        subject,
        spec.issuer.name.clone(),
        extensions(
            spec.profile,
            spec.issuer,
            spec.spki,
            spec.key_type,
            spec.names,
        )?,
    );
    let validity = Validity::new(
        x509::time_at(spec.validity.not_before)?,
        x509::time_at(spec.validity.not_after)?,
    );
    let serial = SerialNumber::new(spec.serial).map_err(|e| X509Error::Invalid(e.to_string()))?;
    CertificateBuilder::new(profile, serial, validity, spec.spki.clone())
        .map_err(|e| X509Error::Invalid(e.to_string()))
}

/// Decodes TBS bytes back (for lint and hashing).
pub fn decode_tbs(bytes: &[u8]) -> Result<TbsCertificate, X509Error> {
    TbsCertificate::from_der(bytes).map_err(|e| X509Error::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_clamped_inclusive_and_bounded_by_issuer() {
        let now = 1_000_000;
        let v = choose_validity(now, None, 10, i64::MAX).expect("ok");
        assert_eq!(v.not_after - v.not_before + 1, 10 * 86_400);
        assert!(!v.clamped);
        let v = choose_validity(now, Some(now + 100 * 86_400), 10, i64::MAX).expect("ok");
        assert!(v.clamped);
        assert_eq!(v.not_after, now + 10 * 86_400 - 1);
        let v = choose_validity(now, Some(now + 3600), 10, i64::MAX).expect("ok");
        assert_eq!(v.not_after, now + 3600);
        let v = choose_validity(now, None, 10, now + 50).expect("ok");
        assert_eq!(v.not_after, now + 50);
        assert!(choose_validity(now, Some(now - 1), 10, i64::MAX).is_err());
        assert!(choose_validity(now, None, 10, now).is_err());
    }
}
