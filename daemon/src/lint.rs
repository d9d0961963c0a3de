//! Pre-issuance lint of the exact to-be-signed certificate.
//!
//! The lint decodes the TBSCertificate bytes that are about to go to the
//! token and checks them against RFC 5280 and the profile, independently of
//! the code that built them: a bug in building must not become a signed
//! certificate. Any finding refuses the request with `lint_failed`.

use crate::certgen::{self, IssuerInfo};
use crate::config::{ProfileConfig, ProfileKind};
use crate::hsm::KeyType;
use crate::policy;
use crate::x509;
use const_oid::db::rfc5280;
use const_oid::AssociatedOid;
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use std::collections::HashSet;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::name::DistributionPointName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies,
    CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};

/// What the lint needs besides the TBS itself.
pub struct LintContext<'a> {
    /// The profile the certificate claims to follow.
    pub profile: &'a ProfileConfig,
    /// The issuer.
    pub issuer: &'a IssuerInfo,
    /// The signing key's type (for the signature algorithm).
    pub certifier_key: KeyType,
    /// The signing key's public half, which no subscriber may have.
    pub certifier_public_key: &'a SubjectPublicKeyInfoOwned,
}

/// Lints TBS bytes; returns every finding (empty: clean).
pub fn lint_tbs_der(tbs_der: &[u8], ctx: &LintContext<'_>) -> Vec<String> {
    match TbsCertificate::from_der(tbs_der) {
        Ok(tbs) => lint(&tbs, ctx),
        Err(e) => vec![format!("the TBSCertificate does not decode: {e}")],
    }
}

/// An extension the lint looks for.
enum Ext<T> {
    /// Not in the certificate.
    Missing,
    /// Present once: its criticality and value.
    Found(bool, T),
    /// Present twice, or undecodable: already reported.
    Unusable,
}

fn extension<'a, T: Decode<'a> + AssociatedOid>(
    tbs: &'a TbsCertificate,
    findings: &mut Vec<String>,
    name: &str,
) -> Ext<T> {
    match tbs.get_extension::<T>() {
        Ok(Some((critical, value))) => Ext::Found(critical, value),
        Ok(None) => Ext::Missing,
        // The scan of all extensions has reported the duplicate.
        Err(_) if tbs.filter_extensions::<T>().nth(1).is_some() => Ext::Unusable,
        Err(e) => {
            findings.push(format!("{name} does not decode: {e}"));
            Ext::Unusable
        }
    }
}

/// Lints a decoded TBSCertificate.
pub fn lint(tbs: &TbsCertificate, ctx: &LintContext<'_>) -> Vec<String> {
    let mut f = Vec::new();
    let profile = ctx.profile;
    if tbs.version() != Version::V3 {
        f.push("version must be v3".into());
    }
    let serial = tbs.serial_number().as_bytes();
    if serial.is_empty() || serial.len() > 20 || serial[0] & 0x80 != 0 {
        f.push("serial must be positive and at most 20 octets".into());
    }
    if serial.iter().skip_while(|b| **b == 0).count() < 9 {
        f.push("serial must carry at least 64 random bits".into());
    }
    if tbs.signature() != &ctx.certifier_key.signature_algorithm() {
        f.push("signature algorithm does not match the certifier key".into());
    }
    if tbs.issuer() != &ctx.issuer.name {
        f.push("issuer is not the certifier's subject".into());
    }
    let nb = x509::unix_of(&tbs.validity().not_before);
    let na = x509::unix_of(&tbs.validity().not_after);
    if na <= nb {
        f.push("notAfter is not after notBefore".into());
    }
    if na - nb + 1 > i64::from(profile.max_validity_days) * 86_400 {
        f.push(format!(
            "validity exceeds the profile maximum of {} days",
            profile.max_validity_days
        ));
    }
    if na > ctx.issuer.not_after {
        f.push("notAfter is past the certifier's own notAfter".into());
    }
    if tbs.issuer_unique_id().is_some() || tbs.subject_unique_id().is_some() {
        f.push("unique identifiers must not be present (RFC 5280 4.1.2.8)".into());
    }
    if tbs.subject_public_key_info() == ctx.certifier_public_key {
        f.push("the subscriber key is the certifier's own key".into());
    }
    match KeyType::of_spki(tbs.subject_public_key_info()) {
        Ok(k) if profile.key_types.contains(&k) => {}
        Ok(k) => f.push(format!(
            "{k} subscriber keys are not allowed by the profile"
        )),
        Err(e) => f.push(format!("subscriber key: {e}")),
    }

    let exts = tbs.extensions().map(|e| e.as_slice()).unwrap_or(&[]);
    let mut seen = HashSet::new();
    let allowed = [
        rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
        rfc5280::ID_CE_BASIC_CONSTRAINTS,
        rfc5280::ID_CE_KEY_USAGE,
        rfc5280::ID_CE_EXT_KEY_USAGE,
        rfc5280::ID_CE_SUBJECT_ALT_NAME,
        rfc5280::ID_CE_CERTIFICATE_POLICIES,
        rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS,
        rfc5280::ID_PE_AUTHORITY_INFO_ACCESS,
        rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
    ];
    for e in exts {
        if !seen.insert(e.extn_id) {
            f.push(format!("extension {} appears twice", e.extn_id));
        } else if !allowed.contains(&e.extn_id) {
            f.push(format!(
                "extension {} is not part of any profile",
                e.extn_id
            ));
        }
    }

    match extension::<AuthorityKeyIdentifier>(tbs, &mut f, "authorityKeyIdentifier") {
        Ext::Found(false, aki)
            if aki.key_identifier.as_ref().map(|k| k.as_bytes())
                == Some(ctx.issuer.key_id.as_slice())
                && aki.authority_cert_issuer.is_none() => {}
        Ext::Found(..) => f.push(
            "authorityKeyIdentifier must be non-critical and hold the certifier's key id only"
                .into(),
        ),
        Ext::Missing => f.push("authorityKeyIdentifier is missing".into()),
        Ext::Unusable => {}
    }
    match extension::<BasicConstraints>(tbs, &mut f, "basicConstraints") {
        Ext::Found(true, bc) if !bc.ca && bc.path_len_constraint.is_none() => {}
        Ext::Found(..) => f.push("basicConstraints must be critical with cA false".into()),
        Ext::Missing => f.push("basicConstraints is missing".into()),
        Ext::Unusable => {}
    }
    let rsa = KeyType::of_spki(tbs.subject_public_key_info())
        .map(|k| k.rsa_bits().is_some())
        .unwrap_or(false);
    match extension::<KeyUsage>(tbs, &mut f, "keyUsage") {
        Ext::Found(true, ku) => {
            if !ku.digital_signature() {
                f.push("keyUsage must include digitalSignature".into());
            }
            if ku.key_cert_sign() || ku.crl_sign() {
                f.push("keyUsage must not include keyCertSign or cRLSign".into());
            }
            if !rsa && ku.0.contains(KeyUsages::KeyEncipherment) {
                f.push("keyEncipherment is only for RSA keys".into());
            }
            if rsa
                && matches!(
                    profile.kind,
                    ProfileKind::TlsClient | ProfileKind::TlsServer
                )
                && ku.0.contains(KeyUsages::KeyEncipherment)
            {
                f.push(format!("{} certificates sign only", profile.kind.as_str()));
            }
        }
        Ext::Found(false, _) => f.push("keyUsage must be critical".into()),
        Ext::Missing => f.push("keyUsage is missing".into()),
        Ext::Unusable => {}
    }
    match (
        extension::<SubjectKeyIdentifier>(tbs, &mut f, "subjectKeyIdentifier"),
        certgen::has_subject_key_id(profile.kind),
    ) {
        (Ext::Found(false, ski), true)
            if ski.0.as_bytes()
                == x509::key_identifier(tbs.subject_public_key_info()).as_slice() => {}
        (Ext::Found(..), true) => f.push(
            "subjectKeyIdentifier must be non-critical and identify the subscriber key".into(),
        ),
        (Ext::Missing, true) => f.push("subjectKeyIdentifier is missing".into()),
        (Ext::Found(..), false) => f.push(format!(
            "{} certificates carry no subjectKeyIdentifier",
            profile.kind.as_str()
        )),
        (Ext::Missing | Ext::Unusable, false) | (Ext::Unusable, true) => {}
    }
    match extension::<ExtendedKeyUsage>(tbs, &mut f, "extKeyUsage") {
        Ext::Found(false, eku) => {
            let want = certgen::extended_key_usage(profile);
            if eku.0 != want {
                f.push(format!(
                    "extKeyUsage {:?} is not the profile's {:?}",
                    eku.0, want
                ));
            }
        }
        Ext::Found(true, _) => f.push("extKeyUsage must not be critical".into()),
        Ext::Missing => f.push("extKeyUsage is missing".into()),
        Ext::Unusable => {}
    }

    let subject_empty = tbs.subject().is_empty();
    let mut dns = Vec::new();
    let mut emails = Vec::new();
    let mut ips = 0;
    match extension::<SubjectAltName>(tbs, &mut f, "subjectAltName") {
        Ext::Found(critical, san) => {
            if san.0.is_empty() {
                f.push("subjectAltName is empty".into());
            }
            if critical != subject_empty {
                f.push("subjectAltName must be critical exactly when the subject is empty".into());
            }
            for gn in &san.0 {
                match gn {
                    GeneralName::DnsName(d) => {
                        if let Err(e) = policy::check_dns_name(d.as_str(), profile.allow_wildcard) {
                            f.push(e);
                        }
                        dns.push(d.as_str().to_string());
                    }
                    GeneralName::Rfc822Name(m) => {
                        if let Err(e) = policy::check_email(m.as_str()) {
                            f.push(e);
                        }
                        emails.push(m.as_str().to_ascii_lowercase());
                    }
                    GeneralName::IpAddress(o) => {
                        ips += 1;
                        let b = o.as_bytes();
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
                            _ => None,
                        };
                        match ip {
                            None => f.push("iPAddress SAN must be 4 or 16 octets".into()),
                            Some(ip)
                                if profile.kind == ProfileKind::TlsServer
                                    && policy::is_reserved_ip(&ip) =>
                            {
                                f.push(format!("iPAddress {ip} is reserved"));
                            }
                            Some(_) => {}
                        }
                    }
                    _ => f.push("subjectAltName holds a name type no profile issues".into()),
                }
            }
        }
        Ext::Missing if subject_empty => {
            f.push("an empty subject requires a subjectAltName".into())
        }
        Ext::Missing | Ext::Unusable => {}
    }
    match profile.kind {
        ProfileKind::TlsServer => {
            if dns.is_empty() && ips == 0 {
                f.push("tls-server needs DNS or IP SANs".into());
            }
            if !emails.is_empty() {
                f.push("tls-server carries no email SANs".into());
            }
        }
        ProfileKind::TlsClient => {}
        _ => {
            if emails.is_empty() {
                f.push("S/MIME needs email SANs".into());
            }
            if !dns.is_empty() || ips > 0 {
                f.push("S/MIME certificates carry only email SANs".into());
            }
        }
    }
    if let Ok(Some(cn)) = tbs.subject().common_name() {
        let cn = cn.value().to_string();
        let ok = match profile.kind {
            ProfileKind::TlsServer => dns.contains(&cn) || ips > 0,
            ProfileKind::SmimeMailbox => emails.contains(&cn.to_ascii_lowercase()),
            ProfileKind::TlsClient => true,
            // A personal name, pseudonym or organization name, checked
            // against the other attributes by the name rules.
            _ => true,
        };
        if !ok {
            f.push(format!("commonName {cn:?} does not repeat a SAN"));
        }
    }

    let want_policies = profile.kind != ProfileKind::TlsClient || !profile.policy_oids.is_empty();
    match extension::<CertificatePolicies>(tbs, &mut f, "certificatePolicies") {
        Ext::Found(false, p) if !p.0.is_empty() => {}
        Ext::Found(..) => f.push("certificatePolicies must be non-critical and non-empty".into()),
        Ext::Missing if want_policies => f.push("certificatePolicies is missing".into()),
        Ext::Missing | Ext::Unusable => {}
    }
    match extension::<CrlDistributionPoints>(tbs, &mut f, "cRLDistributionPoints") {
        Ext::Found(false, dps) => {
            for dp in &dps.0 {
                let ok = matches!(&dp.distribution_point,
                    Some(DistributionPointName::FullName(names)) if names.iter().all(|n|
                        matches!(n, GeneralName::UniformResourceIdentifier(u) if u.as_str().starts_with("http://"))));
                if !ok || dp.reasons.is_some() || dp.crl_issuer.is_some() {
                    f.push("cRLDistributionPoints must hold plain http:// URLs only".into());
                }
            }
        }
        Ext::Found(true, _) => f.push("cRLDistributionPoints must not be critical".into()),
        Ext::Missing if profile.crl_url.is_some() => {
            f.push("cRLDistributionPoints is missing".into())
        }
        Ext::Missing | Ext::Unusable => {}
    }
    match extension::<AuthorityInfoAccessSyntax>(tbs, &mut f, "authorityInfoAccess") {
        Ext::Found(false, aia) => {
            for ad in &aia.0 {
                let ok = matches!(&ad.access_location,
                    GeneralName::UniformResourceIdentifier(u) if u.as_str().starts_with("http://"));
                if !ok {
                    f.push("authorityInfoAccess must hold plain http:// URLs".into());
                }
            }
        }
        Ext::Found(true, _) => f.push("authorityInfoAccess must not be critical".into()),
        Ext::Missing if profile.ca_issuers_url.is_some() => {
            f.push("authorityInfoAccess is missing".into())
        }
        Ext::Missing | Ext::Unusable => {}
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SmimeGeneration;
    use crate::hsm::memory::MemoryKey;
    use crate::hsm::Signer;
    use crate::policy::{Names, SubjectFields};
    use crate::x509::{self, TokenKeyRef};
    use const_oid::db::{rfc2985, rfc4519, rfc5912};
    use der::asn1::{BitString, Ia5String, Int, OctetString};
    use der::{Any, DecodePem, Encode, Sequence};
    use spki::AlgorithmIdentifierOwned;
    use std::net::IpAddr;
    use std::time::{Duration, UNIX_EPOCH};
    use x509_cert::builder::Builder;
    use x509_cert::ext::pkix::crl::dp::{DistributionPoint, Reasons};
    use x509_cert::ext::pkix::{AccessDescription, SubjectKeyIdentifier};
    use x509_cert::ext::Extension;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::time::{Time, Validity};

    /// A TBSCertificate with every field open to change: the ASN.1 of
    /// x509-cert's, whose fields are private.
    #[derive(Clone, Debug, Sequence)]
    struct Tbs {
        #[asn1(context_specific = "0", default = "Default::default")]
        version: Version,
        serial_number: Int,
        signature: AlgorithmIdentifierOwned,
        issuer: Name,
        validity: Validity,
        subject: Name,
        subject_public_key_info: SubjectPublicKeyInfoOwned,
        #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
        issuer_unique_id: Option<BitString>,
        #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
        subject_unique_id: Option<BitString>,
        #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
        extensions: Option<Vec<Extension>>,
    }

    /// When the test certificates begin (the lint reads no clock).
    const NOW: i64 = 1_750_000_000;
    const DAY: i64 = 86_400;

    /// An RSA-2048 subscriber key (made with openssl; only its public half
    /// is needed).
    const RSA_2048: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtP0/ApMiOvsDj0L1d+Kt
yEhmqLQggE42hDOOw9ZY9zRh81vmbHY2HtjmCuHG5WlD1NB4MVQWA6V+WvYyp4no
TiJ7ip9LqxRimTmkuCqZyN9cfqmxCiP0WVqNf+m3He/CQqW5Xfkj96ZhSsgzMXhA
HnH0eqlePUnSdwJNcVNJggtnHr/bu8hFPMta30jU966DBnTLvb0W9MRlSCSeJ5oX
80AE3Nrg7HZvujp7R5S/UTuSV676fQFPtEINbtaBojDyqmI1lZzTw13/CaPE832h
mkI1V3nAnerK+dcWdlE9q+S4CcDZgKfKq2KFBURztGd4Su5CUQBx2L0CLsMrE/fy
oQIDAQAB
-----END PUBLIC KEY-----
";

    /// The certifier: its key (in memory) and what certificates name of it.
    struct Certifier {
        key: MemoryKey,
        issuer: IssuerInfo,
    }

    fn certifier() -> Certifier {
        let key = MemoryKey::p256([0x11; 32]);
        let issuer = IssuerInfo {
            name: name(&[(rfc4519::CN, "certd lint test CA")]),
            key_id: x509::key_identifier(key.public_key()),
            not_after: NOW + 3650 * DAY,
        };
        Certifier { key, issuer }
    }

    fn name(attrs: &[(const_oid::ObjectIdentifier, &str)]) -> Name {
        x509::name_from(attrs).expect("a name")
    }

    fn time(secs: i64) -> Time {
        let secs = u64::try_from(secs).expect("after 1970");
        Time::try_from(UNIX_EPOCH + Duration::from_secs(secs)).expect("a time")
    }

    fn p256_subscriber() -> SubjectPublicKeyInfoOwned {
        MemoryKey::p256([0x22; 32]).public_key().clone()
    }

    fn rsa_subscriber() -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned::from_pem(RSA_2048).expect("the RSA key")
    }

    fn profile(kind: ProfileKind) -> ProfileConfig {
        ProfileConfig {
            name: kind.as_str().into(),
            kind,
            key_types: vec![KeyType::P256, KeyType::Rsa2048],
            max_validity_days: 90,
            policy_oids: Vec::new(),
            crl_url: None,
            ca_issuers_url: None,
            approvals_required: 0,
            validation_methods: Default::default(),
            validation_reuse_days: Default::default(),
            common_name_from_san: false,
            allow_ip: kind != ProfileKind::SmimeMailbox,
            allow_wildcard: false,
            smime_generation: (kind == ProfileKind::SmimeMailbox)
                .then_some(SmimeGeneration::Strict),
        }
    }

    /// One certificate to lint: under a profile, for a key and names.
    struct Case {
        profile: ProfileConfig,
        spki: SubjectPublicKeyInfoOwned,
        names: Names,
    }

    impl Case {
        /// The TBSCertificate issuance builds for this case, as the lint
        /// gets it: the longest validity the profile allows, from NOW.
        fn tbs(&self, ca: &Certifier) -> Tbs {
            let validity = certgen::choose_validity(
                NOW,
                None,
                self.profile.max_validity_days,
                ca.issuer.not_after,
            )
            .expect("a validity");
            let mut builder = certgen::leaf_builder(&certgen::LeafSpec {
                profile: &self.profile,
                issuer: &ca.issuer,
                spki: &self.spki,
                key_type: KeyType::of_spki(&self.spki).expect("a supported key"),
                names: &self.names,
                validity,
                serial: &[0x5a; 16],
            })
            .expect("a builder");
            let der = builder
                .finalize(&TokenKeyRef::of(&ca.key))
                .expect("the TBSCertificate");
            Tbs::from_der(&der).expect("it decodes")
        }

        fn lint(&self, ca: &Certifier, tbs: &Tbs) -> Vec<String> {
            let ctx = LintContext {
                profile: &self.profile,
                issuer: &ca.issuer,
                certifier_key: ca.key.key_type(),
                certifier_public_key: ca.key.public_key(),
            };
            lint_tbs_der(&tbs.to_der().expect("it encodes"), &ctx)
        }
    }

    fn tls_server() -> Case {
        Case {
            profile: ProfileConfig {
                policy_oids: vec!["1.3.6.1.4.1.55555.1".into()],
                crl_url: Some("http://crl.example.com/ca.crl".into()),
                ca_issuers_url: Some("http://ca.example.com/ca.crt".into()),
                ..profile(ProfileKind::TlsServer)
            },
            spki: p256_subscriber(),
            names: Names {
                subject: SubjectFields {
                    cn: Some("www.example.com".into()),
                    ..Default::default()
                },
                dns: vec!["www.example.com".into(), "example.com".into()],
                ..Default::default()
            },
        }
    }

    fn tls_client() -> Case {
        Case {
            profile: profile(ProfileKind::TlsClient),
            spki: p256_subscriber(),
            names: Names {
                subject: SubjectFields {
                    cn: Some("device 1".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    fn smime(generation: SmimeGeneration) -> Case {
        Case {
            profile: ProfileConfig {
                smime_generation: Some(generation),
                ..profile(ProfileKind::SmimeMailbox)
            },
            spki: p256_subscriber(),
            names: Names {
                subject: SubjectFields {
                    cn: Some("alice@example.com".into()),
                    ..Default::default()
                },
                emails: vec!["alice@example.com".into()],
                ..Default::default()
            },
        }
    }

    fn ext<T: Encode + AssociatedOid>(value: &T, critical: bool) -> Extension {
        x509::extension(value, critical).expect("an extension")
    }

    fn exts(tbs: &mut Tbs) -> &mut Vec<Extension> {
        tbs.extensions.as_mut().expect("extensions")
    }

    fn replace(tbs: &mut Tbs, e: Extension) {
        let all = exts(tbs);
        let i = all
            .iter()
            .position(|x| x.extn_id == e.extn_id)
            .expect("the extension is there");
        all[i] = e;
    }

    fn remove(tbs: &mut Tbs, oid: const_oid::ObjectIdentifier) {
        let all = exts(tbs);
        let before = all.len();
        all.retain(|x| x.extn_id != oid);
        assert_eq!(all.len(), before - 1, "{oid} was there once");
    }

    fn flip_critical(tbs: &mut Tbs, oid: const_oid::ObjectIdentifier) {
        let e = exts(tbs)
            .iter_mut()
            .find(|x| x.extn_id == oid)
            .expect("the extension is there");
        e.critical = !e.critical;
    }

    fn dns(d: &str) -> GeneralName {
        GeneralName::DnsName(Ia5String::new(d).expect("IA5"))
    }

    fn email(m: &str) -> GeneralName {
        GeneralName::Rfc822Name(Ia5String::new(m).expect("IA5"))
    }

    fn uri(u: &str) -> GeneralName {
        GeneralName::UniformResourceIdentifier(Ia5String::new(u).expect("IA5"))
    }

    fn ip(octets: &[u8]) -> GeneralName {
        GeneralName::IpAddress(OctetString::new(octets).expect("octets"))
    }

    fn san(names: Vec<GeneralName>) -> Extension {
        ext(&SubjectAltName(names), false)
    }

    fn key_usage(usages: KeyUsage) -> Extension {
        ext(&usages, true)
    }

    fn crl_dp(dp: DistributionPoint) -> Extension {
        ext(&CrlDistributionPoints(vec![dp]), false)
    }

    fn http_dp() -> DistributionPoint {
        DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![uri(
                "http://crl.example.com/ca.crl",
            )])),
            reasons: None,
            crl_issuer: None,
        }
    }

    fn owned(findings: &[&str]) -> Vec<String> {
        findings.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn what_issuance_builds_lints_clean() {
        let ca = certifier();
        let with_ip = {
            let mut c = tls_server();
            c.names.ips = vec!["93.184.215.14".parse().expect("an address")];
            c
        };
        let rsa_server = Case {
            spki: rsa_subscriber(),
            ..tls_server()
        };
        let rsa_client = Case {
            spki: rsa_subscriber(),
            ..tls_client()
        };
        let client_without_subject = {
            let mut c = tls_client();
            c.names.subject = SubjectFields::default();
            c.names.dns = vec!["device1.example.com".into()];
            c
        };
        let client_with_policy = {
            let mut c = tls_client();
            c.profile.policy_oids = vec!["1.3.6.1.4.1.55555.2".into()];
            c
        };
        let cases = [
            ("tls-server", tls_server()),
            ("tls-server with an IP address", with_ip),
            ("tls-server, RSA key", rsa_server),
            ("tls-client", tls_client()),
            ("tls-client, RSA key", rsa_client),
            ("tls-client without subject", client_without_subject),
            ("tls-client with a policy", client_with_policy),
            ("smime strict", smime(SmimeGeneration::Strict)),
            ("smime multipurpose", smime(SmimeGeneration::Multipurpose)),
        ];
        for (what, case) in cases {
            let tbs = case.tbs(&ca);
            assert_eq!(case.lint(&ca, &tbs), Vec::<String>::new(), "{what}");
        }
        // A subject-less certificate's SAN is critical, as RFC 5280 wants.
        let mut c = tls_client();
        c.names.subject = SubjectFields::default();
        c.names.dns = vec!["device1.example.com".into()];
        let mut tbs = c.tbs(&ca);
        let found = exts(&mut tbs)
            .iter()
            .find(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME)
            .map(|e| e.critical);
        assert_eq!(found, Some(true));
    }

    type Mutation = fn(&mut Tbs, &Certifier);

    /// Each change of a clean tls-server certificate and exactly the
    /// findings it must cause.
    #[test]
    fn each_defect_of_a_tls_server_certificate_is_found() {
        let ca = certifier();
        let case = tls_server();
        let eku_mismatch = format!(
            "extKeyUsage {:?} is not the profile's {:?}",
            vec![rfc5280::ID_KP_CLIENT_AUTH],
            vec![rfc5280::ID_KP_SERVER_AUTH]
        );
        let bad_dns = policy::check_dns_name("bad_name.example.com", false)
            .expect_err("an underscore is refused");
        let wildcard = policy::check_dns_name("*.example.com", false)
            .expect_err("no wildcards in this profile");
        let undecodable = format!(
            "keyUsage does not decode: {}",
            KeyUsage::from_der(&[0x05, 0x00]).expect_err("NULL is no BIT STRING")
        );
        let table: Vec<(&str, Mutation, Vec<String>)> = vec![
            (
                "version 1",
                |t, _| t.version = Version::V1,
                owned(&["version must be v3"]),
            ),
            (
                "version 2",
                |t, _| t.version = Version::V2,
                owned(&["version must be v3"]),
            ),
            (
                "serial of 8 octets",
                |t, _| t.serial_number = Int::new(&[0x01; 8]).expect("int"),
                owned(&["serial must carry at least 64 random bits"]),
            ),
            (
                "serial of 21 octets",
                |t, _| t.serial_number = Int::new(&[0x01; 21]).expect("int"),
                owned(&["serial must be positive and at most 20 octets"]),
            ),
            (
                "negative serial",
                |t, _| t.serial_number = Int::new(&[0x80; 16]).expect("int"),
                owned(&["serial must be positive and at most 20 octets"]),
            ),
            (
                "signature algorithm of another key type",
                |t, _| t.signature = KeyType::P384.signature_algorithm(),
                owned(&["signature algorithm does not match the certifier key"]),
            ),
            (
                "another issuer name",
                |t, _| t.issuer = name(&[(rfc4519::CN, "someone else")]),
                owned(&["issuer is not the certifier's subject"]),
            ),
            (
                "notAfter before notBefore",
                |t, _| t.validity.not_after = time(NOW - 1),
                owned(&["notAfter is not after notBefore"]),
            ),
            (
                "one second beyond the profile's maximum",
                |t, _| t.validity.not_after = time(NOW + 90 * DAY),
                owned(&["validity exceeds the profile maximum of 90 days"]),
            ),
            (
                "notAfter past the certifier's",
                |t, ca| {
                    t.validity.not_before = time(ca.issuer.not_after - DAY);
                    t.validity.not_after = time(ca.issuer.not_after + 1);
                },
                owned(&["notAfter is past the certifier's own notAfter"]),
            ),
            (
                "issuerUniqueID",
                |t, _| t.issuer_unique_id = Some(BitString::from_bytes(&[1]).expect("bits")),
                owned(&["unique identifiers must not be present (RFC 5280 4.1.2.8)"]),
            ),
            (
                "subjectUniqueID",
                |t, _| t.subject_unique_id = Some(BitString::from_bytes(&[1]).expect("bits")),
                owned(&["unique identifiers must not be present (RFC 5280 4.1.2.8)"]),
            ),
            (
                "a key type the profile does not allow",
                |t, _| {
                    t.subject_public_key_info = MemoryKey::p384([0x33; 48]).public_key().clone()
                },
                owned(&["p384 subscriber keys are not allowed by the profile"]),
            ),
            (
                "the certifier's own key",
                |t, ca| t.subject_public_key_info = ca.key.public_key().clone(),
                owned(&["the subscriber key is the certifier's own key"]),
            ),
            (
                "a key certd does not know",
                |t, _| {
                    let curve = Any::encode_from(&rfc5912::SECP_521_R_1).expect("an OID");
                    t.subject_public_key_info.algorithm.parameters = Some(curve);
                },
                owned(&["subscriber key: EC curve 1.3.132.0.35 is not supported"]),
            ),
            (
                "a subjectKeyIdentifier in a tls-server certificate",
                |t, _| {
                    let ski = SubjectKeyIdentifier(OctetString::new([7u8; 20]).expect("octets"));
                    exts(t).push(ext(&ski, false));
                },
                owned(&["tls-server certificates carry no subjectKeyIdentifier"]),
            ),
            (
                "an extension no profile has",
                |t, _| {
                    exts(t).push(ext(&x509_cert::ext::pkix::InhibitAnyPolicy(0), true));
                },
                owned(&["extension 2.5.29.54 is not part of any profile"]),
            ),
            (
                "an extension twice",
                |t, _| {
                    let eku = ext(&ExtendedKeyUsage(vec![rfc5280::ID_KP_SERVER_AUTH]), false);
                    exts(t).push(eku);
                },
                owned(&["extension 2.5.29.37 appears twice"]),
            ),
            (
                "an extension that does not decode",
                |t, _| {
                    let mut ku = key_usage(KeyUsage(KeyUsages::DigitalSignature.into()));
                    ku.extn_value = OctetString::new([0x05, 0x00]).expect("octets");
                    replace(t, ku);
                },
                vec![undecodable],
            ),
            (
                "authorityKeyIdentifier of another key",
                |t, _| {
                    let aki = AuthorityKeyIdentifier {
                        key_identifier: Some(OctetString::new([9u8; 20]).expect("octets")),
                        ..Default::default()
                    };
                    replace(t, ext(&aki, false));
                },
                owned(&["authorityKeyIdentifier must be non-critical and hold the certifier's key id only"]),
            ),
            (
                "authorityKeyIdentifier critical",
                |t, _| flip_critical(t, rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER),
                owned(&["authorityKeyIdentifier must be non-critical and hold the certifier's key id only"]),
            ),
            (
                "authorityKeyIdentifier naming the issuer too",
                |t, ca| {
                    let aki = AuthorityKeyIdentifier {
                        key_identifier: Some(OctetString::new(ca.issuer.key_id.clone()).expect("octets")),
                        authority_cert_issuer: Some(vec![GeneralName::DirectoryName(ca.issuer.name.clone())]),
                        authority_cert_serial_number: Some(SerialNumber::new(&[1]).expect("serial")),
                    };
                    replace(t, ext(&aki, false));
                },
                owned(&["authorityKeyIdentifier must be non-critical and hold the certifier's key id only"]),
            ),
            (
                "no authorityKeyIdentifier",
                |t, _| remove(t, rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER),
                owned(&["authorityKeyIdentifier is missing"]),
            ),
            (
                "cA true",
                |t, _| {
                    let bc = BasicConstraints { ca: true, path_len_constraint: None };
                    replace(t, ext(&bc, true));
                },
                owned(&["basicConstraints must be critical with cA false"]),
            ),
            (
                "basicConstraints with a path length",
                |t, _| {
                    let bc = BasicConstraints { ca: false, path_len_constraint: Some(0) };
                    replace(t, ext(&bc, true));
                },
                owned(&["basicConstraints must be critical with cA false"]),
            ),
            (
                "basicConstraints not critical",
                |t, _| flip_critical(t, rfc5280::ID_CE_BASIC_CONSTRAINTS),
                owned(&["basicConstraints must be critical with cA false"]),
            ),
            (
                "no basicConstraints",
                |t, _| remove(t, rfc5280::ID_CE_BASIC_CONSTRAINTS),
                owned(&["basicConstraints is missing"]),
            ),
            (
                "keyUsage without digitalSignature",
                |t, _| replace(t, key_usage(KeyUsage(KeyUsages::KeyAgreement.into()))),
                owned(&["keyUsage must include digitalSignature"]),
            ),
            (
                "keyUsage with keyCertSign",
                |t, _| replace(t, key_usage(KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyCertSign))),
                owned(&["keyUsage must not include keyCertSign or cRLSign"]),
            ),
            (
                "keyUsage with cRLSign",
                |t, _| replace(t, key_usage(KeyUsage(KeyUsages::DigitalSignature | KeyUsages::CRLSign))),
                owned(&["keyUsage must not include keyCertSign or cRLSign"]),
            ),
            (
                "keyEncipherment for an EC key",
                |t, _| {
                    let ku = KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment;
                    replace(t, key_usage(KeyUsage(ku)));
                },
                owned(&["keyEncipherment is only for RSA keys"]),
            ),
            (
                "keyUsage not critical",
                |t, _| flip_critical(t, rfc5280::ID_CE_KEY_USAGE),
                owned(&["keyUsage must be critical"]),
            ),
            (
                "no keyUsage",
                |t, _| remove(t, rfc5280::ID_CE_KEY_USAGE),
                owned(&["keyUsage is missing"]),
            ),
            (
                "another extKeyUsage",
                |t, _| {
                    let eku = ExtendedKeyUsage(vec![rfc5280::ID_KP_CLIENT_AUTH]);
                    replace(t, ext(&eku, false));
                },
                vec![eku_mismatch],
            ),
            (
                "extKeyUsage critical",
                |t, _| flip_critical(t, rfc5280::ID_CE_EXT_KEY_USAGE),
                owned(&["extKeyUsage must not be critical"]),
            ),
            (
                "no extKeyUsage",
                |t, _| remove(t, rfc5280::ID_CE_EXT_KEY_USAGE),
                owned(&["extKeyUsage is missing"]),
            ),
            (
                "subjectAltName critical beside a subject",
                |t, _| flip_critical(t, rfc5280::ID_CE_SUBJECT_ALT_NAME),
                owned(&["subjectAltName must be critical exactly when the subject is empty"]),
            ),
            (
                "a DNS name that is not one",
                |t, _| {
                    let names = vec![dns("www.example.com"), dns("bad_name.example.com")];
                    replace(t, san(names));
                },
                vec![bad_dns],
            ),
            (
                "a wildcard the profile does not allow",
                |t, _| replace(t, san(vec![dns("www.example.com"), dns("*.example.com")])),
                vec![wildcard],
            ),
            (
                "an iPAddress of 5 octets",
                |t, _| replace(t, san(vec![dns("www.example.com"), ip(&[93, 184, 215, 14, 1])])),
                owned(&["iPAddress SAN must be 4 or 16 octets"]),
            ),
            (
                "a reserved iPAddress",
                |t, _| replace(t, san(vec![dns("www.example.com"), ip(&[10, 0, 0, 1])])),
                owned(&["iPAddress 10.0.0.1 is reserved"]),
            ),
            (
                "a URI in subjectAltName",
                |t, _| {
                    let names = vec![dns("www.example.com"), uri("http://www.example.com/")];
                    replace(t, san(names));
                },
                owned(&["subjectAltName holds a name type no profile issues"]),
            ),
            (
                "an email address in a TLS server certificate",
                |t, _| replace(t, san(vec![dns("www.example.com"), email("hostmaster@example.com")])),
                owned(&["tls-server carries no email SANs"]),
            ),
            (
                "neither DNS names nor addresses",
                |t, _| {
                    t.subject = name(&[(rfc4519::O, "Example")]);
                    remove(t, rfc5280::ID_CE_SUBJECT_ALT_NAME);
                },
                owned(&["tls-server needs DNS or IP SANs"]),
            ),
            (
                "a commonName that is no SAN",
                |t, _| t.subject = name(&[(rfc4519::CN, "other.example.com")]),
                owned(&["commonName \"other.example.com\" does not repeat a SAN"]),
            ),
            (
                "certificatePolicies critical",
                |t, _| flip_critical(t, rfc5280::ID_CE_CERTIFICATE_POLICIES),
                owned(&["certificatePolicies must be non-critical and non-empty"]),
            ),
            (
                "certificatePolicies empty",
                |t, _| replace(t, ext(&CertificatePolicies(Vec::new()), false)),
                owned(&["certificatePolicies must be non-critical and non-empty"]),
            ),
            (
                "no certificatePolicies",
                |t, _| remove(t, rfc5280::ID_CE_CERTIFICATE_POLICIES),
                owned(&["certificatePolicies is missing"]),
            ),
            (
                "an https CRL",
                |t, _| {
                    let dp = DistributionPoint {
                        distribution_point: Some(DistributionPointName::FullName(vec![uri(
                            "https://crl.example.com/ca.crl",
                        )])),
                        ..http_dp()
                    };
                    replace(t, crl_dp(dp));
                },
                owned(&["cRLDistributionPoints must hold plain http:// URLs only"]),
            ),
            (
                "a CRL distribution point for some reasons",
                |t, _| {
                    let dp = DistributionPoint {
                        reasons: Some(Reasons::KeyCompromise.into()),
                        ..http_dp()
                    };
                    replace(t, crl_dp(dp));
                },
                owned(&["cRLDistributionPoints must hold plain http:// URLs only"]),
            ),
            (
                "a CRL distribution point of another CRL issuer",
                |t, ca| {
                    let dp = DistributionPoint {
                        crl_issuer: Some(vec![GeneralName::DirectoryName(ca.issuer.name.clone())]),
                        ..http_dp()
                    };
                    replace(t, crl_dp(dp));
                },
                owned(&["cRLDistributionPoints must hold plain http:// URLs only"]),
            ),
            (
                "a CRL distribution point without a name",
                |t, _| {
                    let dp = DistributionPoint {
                        distribution_point: None,
                        ..http_dp()
                    };
                    replace(t, crl_dp(dp));
                },
                owned(&["cRLDistributionPoints must hold plain http:// URLs only"]),
            ),
            (
                "cRLDistributionPoints critical",
                |t, _| flip_critical(t, rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS),
                owned(&["cRLDistributionPoints must not be critical"]),
            ),
            (
                "no cRLDistributionPoints",
                |t, _| remove(t, rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS),
                owned(&["cRLDistributionPoints is missing"]),
            ),
            (
                "an https caIssuers",
                |t, _| {
                    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
                        access_method: rfc5280::ID_AD_CA_ISSUERS,
                        access_location: uri("https://ca.example.com/ca.crt"),
                    }]);
                    replace(t, ext(&aia, false));
                },
                owned(&["authorityInfoAccess must hold plain http:// URLs"]),
            ),
            (
                "authorityInfoAccess critical",
                |t, _| flip_critical(t, rfc5280::ID_PE_AUTHORITY_INFO_ACCESS),
                owned(&["authorityInfoAccess must not be critical"]),
            ),
            (
                "no authorityInfoAccess",
                |t, _| remove(t, rfc5280::ID_PE_AUTHORITY_INFO_ACCESS),
                owned(&["authorityInfoAccess is missing"]),
            ),
        ];
        let clean = case.tbs(&ca);
        assert_eq!(case.lint(&ca, &clean), Vec::<String>::new());
        for (what, mutate, expected) in table {
            let mut tbs = clean.clone();
            mutate(&mut tbs, &ca);
            assert_eq!(case.lint(&ca, &tbs), expected, "{what}");
        }
    }

    /// What only the other profile kinds can get wrong.
    #[test]
    fn each_defect_of_client_and_smime_certificates_is_found() {
        let ca = certifier();
        let no_subject = {
            let mut c = tls_client();
            c.names.subject = SubjectFields::default();
            c.names.dns = vec!["device1.example.com".into()];
            c
        };
        let with_policy = {
            let mut c = tls_client();
            c.profile.policy_oids = vec!["1.3.6.1.4.1.55555.2".into()];
            c
        };
        let rsa_client = Case {
            spki: rsa_subscriber(),
            ..tls_client()
        };
        let rsa_server = Case {
            spki: rsa_subscriber(),
            ..tls_server()
        };
        let strict = smime(SmimeGeneration::Strict);
        let multipurpose = smime(SmimeGeneration::Multipurpose);
        let bad_email = policy::check_email("alice@@example.com").expect_err("two @ are refused");
        let eku_mismatch = format!(
            "extKeyUsage {:?} is not the profile's {:?}",
            vec![rfc5280::ID_KP_EMAIL_PROTECTION],
            vec![rfc5280::ID_KP_EMAIL_PROTECTION, rfc5280::ID_KP_CLIENT_AUTH]
        );
        let table: Vec<(&str, &Case, Mutation, Vec<String>)> = vec![
            (
                "keyEncipherment for a tls-client RSA key",
                &rsa_client,
                |t, _| {
                    let ku = KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment;
                    replace(t, key_usage(KeyUsage(ku)));
                },
                owned(&["tls-client certificates sign only"]),
            ),
            (
                "keyEncipherment for a tls-server RSA key",
                &rsa_server,
                |t, _| {
                    let ku = KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment;
                    replace(t, key_usage(KeyUsage(ku)));
                },
                owned(&["tls-server certificates sign only"]),
            ),
            (
                "no subjectKeyIdentifier in a tls-client certificate",
                &with_policy,
                |t, _| remove(t, rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER),
                owned(&["subjectKeyIdentifier is missing"]),
            ),
            (
                "another key's identifier",
                &with_policy,
                |t, _| {
                    let ski = SubjectKeyIdentifier(OctetString::new([7u8; 20]).expect("octets"));
                    replace(t, ext(&ski, false));
                },
                owned(&[
                    "subjectKeyIdentifier must be non-critical and identify the subscriber key",
                ]),
            ),
            (
                "an empty subjectAltName",
                &with_policy,
                |t, _| exts(t).push(san(Vec::new())),
                owned(&["subjectAltName is empty"]),
            ),
            (
                "a subjectAltName not critical without a subject",
                &no_subject,
                |t, _| flip_critical(t, rfc5280::ID_CE_SUBJECT_ALT_NAME),
                owned(&["subjectAltName must be critical exactly when the subject is empty"]),
            ),
            (
                "neither subject nor subjectAltName",
                &no_subject,
                |t, _| remove(t, rfc5280::ID_CE_SUBJECT_ALT_NAME),
                owned(&["an empty subject requires a subjectAltName"]),
            ),
            (
                "the profile's policy left out",
                &with_policy,
                |t, _| remove(t, rfc5280::ID_CE_CERTIFICATE_POLICIES),
                owned(&["certificatePolicies is missing"]),
            ),
            (
                "an email address that is not one",
                &strict,
                |t, _| {
                    let names = vec![email("alice@example.com"), email("alice@@example.com")];
                    replace(t, san(names));
                },
                vec![bad_email],
            ),
            (
                "no email address",
                &strict,
                |t, _| {
                    t.subject = name(&[(rfc2985::PKCS_9_AT_EMAIL_ADDRESS, "alice@example.com")]);
                    remove(t, rfc5280::ID_CE_SUBJECT_ALT_NAME);
                },
                owned(&["S/MIME needs email SANs"]),
            ),
            (
                "a DNS name in a mailbox certificate",
                &strict,
                |t, _| replace(t, san(vec![email("alice@example.com"), dns("example.com")])),
                owned(&["S/MIME certificates carry only email SANs"]),
            ),
            (
                "an address in a mailbox certificate",
                &strict,
                |t, _| {
                    replace(
                        t,
                        san(vec![email("alice@example.com"), ip(&[93, 184, 215, 14])]),
                    )
                },
                owned(&["S/MIME certificates carry only email SANs"]),
            ),
            (
                "a commonName that is no email SAN",
                &strict,
                |t, _| t.subject = name(&[(rfc4519::CN, "bob@example.com")]),
                owned(&["commonName \"bob@example.com\" does not repeat a SAN"]),
            ),
            (
                "the strict extKeyUsage in a multipurpose certificate",
                &multipurpose,
                |t, _| {
                    let eku = ExtendedKeyUsage(vec![rfc5280::ID_KP_EMAIL_PROTECTION]);
                    replace(t, ext(&eku, false));
                },
                vec![eku_mismatch],
            ),
        ];
        for (what, case, mutate, expected) in table {
            let mut tbs = case.tbs(&ca);
            assert_eq!(case.lint(&ca, &tbs), Vec::<String>::new(), "{what}: clean");
            mutate(&mut tbs, &ca);
            assert_eq!(case.lint(&ca, &tbs), expected, "{what}");
        }
    }

    #[test]
    fn bytes_that_are_no_tbs_certificate_are_refused() {
        let ca = certifier();
        let case = tls_server();
        let ctx = LintContext {
            profile: &case.profile,
            issuer: &ca.issuer,
            certifier_key: ca.key.key_type(),
            certifier_public_key: ca.key.public_key(),
        };
        let garbage = [0x30, 0x03, 0x02, 0x01, 0x01];
        let error = TbsCertificate::from_der(&garbage).expect_err("not a TBSCertificate");
        assert_eq!(
            lint_tbs_der(&garbage, &ctx),
            vec![format!("the TBSCertificate does not decode: {error}")]
        );
    }

    #[test]
    fn addresses_of_both_families_are_read() {
        let ca = certifier();
        let mut case = tls_server();
        case.names.ips = vec![
            "93.184.215.14".parse::<IpAddr>().expect("v4"),
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
                .parse()
                .expect("v6"),
        ];
        let mut tbs = case.tbs(&ca);
        assert_eq!(case.lint(&ca, &tbs), Vec::<String>::new());
        // A reserved IPv6 address is found as such.
        let v6: IpAddr = "fd00::1".parse().expect("v6");
        let IpAddr::V6(octets) = v6 else {
            unreachable!("parsed as IPv6")
        };
        replace(
            &mut tbs,
            san(vec![dns("www.example.com"), ip(&octets.octets())]),
        );
        assert_eq!(
            case.lint(&ca, &tbs),
            owned(&["iPAddress fd00::1 is reserved"])
        );
    }
}
