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
use const_oid::db::rfc5280;
use const_oid::AssociatedOid;
use der::Decode;
use std::collections::HashSet;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::name::DistributionPointName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies,
    CrlDistributionPoints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};

/// What the lint needs besides the TBS itself.
pub struct LintContext<'a> {
    /// The profile the certificate claims to follow.
    pub profile: &'a ProfileConfig,
    /// The issuer.
    pub issuer: &'a IssuerInfo,
    /// The signing key's type (for the signature algorithm).
    pub certifier_key: KeyType,
}

/// Lints TBS bytes; returns every finding (empty: clean).
pub fn lint_tbs_der(tbs_der: &[u8], ctx: &LintContext<'_>) -> Vec<String> {
    match TbsCertificate::from_der(tbs_der) {
        Ok(tbs) => lint(&tbs, ctx),
        Err(e) => vec![format!("the TBSCertificate does not decode: {e}")],
    }
}

fn extension<'a, T: Decode<'a> + AssociatedOid>(
    tbs: &'a TbsCertificate,
    findings: &mut Vec<String>,
    name: &str,
) -> Option<(bool, T)> {
    match tbs.get_extension::<T>() {
        Ok(v) => v,
        Err(e) => {
            findings.push(format!("{name} does not decode or appears twice: {e}"));
            None
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
    let nb = certgen::unix_of(&tbs.validity().not_before);
    let na = certgen::unix_of(&tbs.validity().not_after);
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
    ];
    for e in exts {
        if !seen.insert(e.extn_id) {
            f.push(format!("extension {} appears twice", e.extn_id));
        }
        if !allowed.contains(&e.extn_id) {
            f.push(format!(
                "extension {} is not part of any profile",
                e.extn_id
            ));
        }
    }

    match extension::<AuthorityKeyIdentifier>(tbs, &mut f, "authorityKeyIdentifier") {
        Some((false, aki))
            if aki.key_identifier.as_ref().map(|k| k.as_bytes())
                == Some(ctx.issuer.key_id.as_slice())
                && aki.authority_cert_issuer.is_none() => {}
        Some(_) => f.push(
            "authorityKeyIdentifier must be non-critical and hold the certifier's key id only"
                .into(),
        ),
        None => f.push("authorityKeyIdentifier is missing".into()),
    }
    match extension::<BasicConstraints>(tbs, &mut f, "basicConstraints") {
        Some((true, bc)) if !bc.ca && bc.path_len_constraint.is_none() => {}
        Some(_) => f.push("basicConstraints must be critical with cA false".into()),
        None => f.push("basicConstraints is missing".into()),
    }
    let rsa = KeyType::of_spki(tbs.subject_public_key_info())
        .map(|k| k.rsa_bits().is_some())
        .unwrap_or(false);
    match extension::<KeyUsage>(tbs, &mut f, "keyUsage") {
        Some((true, ku)) => {
            if !ku.digital_signature() {
                f.push("keyUsage must include digitalSignature".into());
            }
            if ku.key_cert_sign() || ku.crl_sign() {
                f.push("keyUsage must not include keyCertSign or cRLSign".into());
            }
            if !rsa && ku.0.contains(KeyUsages::KeyEncipherment) {
                f.push("keyEncipherment is only for RSA keys".into());
            }
            if profile.kind == ProfileKind::TlsClient && ku.0.contains(KeyUsages::KeyEncipherment) {
                f.push("tls-client certificates sign only".into());
            }
        }
        Some((false, _)) => f.push("keyUsage must be critical".into()),
        None => f.push("keyUsage is missing".into()),
    }
    match extension::<ExtendedKeyUsage>(tbs, &mut f, "extKeyUsage") {
        Some((false, eku)) => {
            let want = certgen::extended_key_usage(profile);
            if eku.0 != want {
                f.push(format!(
                    "extKeyUsage {:?} is not the profile's {:?}",
                    eku.0, want
                ));
            }
        }
        Some((true, _)) => f.push("extKeyUsage must not be critical".into()),
        None => f.push("extKeyUsage is missing".into()),
    }

    let subject_empty = tbs.subject().is_empty();
    let mut dns = Vec::new();
    let mut emails = Vec::new();
    let mut ips = 0;
    match extension::<SubjectAltName>(tbs, &mut f, "subjectAltName") {
        Some((critical, san)) => {
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
        None if subject_empty => f.push("an empty subject requires a subjectAltName".into()),
        None => {}
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
        ProfileKind::SmimeMailbox => {
            if emails.is_empty() {
                f.push("S/MIME needs email SANs".into());
            }
            if !dns.is_empty() || ips > 0 {
                f.push("mailbox-validated S/MIME carries only email SANs".into());
            }
        }
        ProfileKind::TlsClient => {}
    }
    if let Ok(Some(cn)) = tbs.subject().common_name() {
        let cn = cn.value().to_string();
        let ok = match profile.kind {
            ProfileKind::TlsServer => dns.contains(&cn) || ips > 0,
            ProfileKind::SmimeMailbox => emails.contains(&cn.to_ascii_lowercase()),
            ProfileKind::TlsClient => true,
        };
        if !ok {
            f.push(format!("commonName {cn:?} does not repeat a SAN"));
        }
    }

    let want_policies = profile.kind != ProfileKind::TlsClient || !profile.policy_oids.is_empty();
    match extension::<CertificatePolicies>(tbs, &mut f, "certificatePolicies") {
        Some((false, p)) if !p.0.is_empty() => {}
        Some(_) => f.push("certificatePolicies must be non-critical and non-empty".into()),
        None if want_policies => f.push("certificatePolicies is missing".into()),
        None => {}
    }
    match extension::<CrlDistributionPoints>(tbs, &mut f, "cRLDistributionPoints") {
        Some((false, dps)) => {
            for dp in &dps.0 {
                let ok = matches!(&dp.distribution_point,
                    Some(DistributionPointName::FullName(names)) if names.iter().all(|n|
                        matches!(n, GeneralName::UniformResourceIdentifier(u) if u.as_str().starts_with("http://"))));
                if !ok || dp.reasons.is_some() || dp.crl_issuer.is_some() {
                    f.push("cRLDistributionPoints must hold plain http:// URLs only".into());
                }
            }
        }
        Some((true, _)) => f.push("cRLDistributionPoints must not be critical".into()),
        None if profile.crl_url.is_some() => f.push("cRLDistributionPoints is missing".into()),
        None => {}
    }
    match extension::<AuthorityInfoAccessSyntax>(tbs, &mut f, "authorityInfoAccess") {
        Some((false, aia)) => {
            for ad in &aia.0 {
                let ok = matches!(&ad.access_location,
                    GeneralName::UniformResourceIdentifier(u) if u.as_str().starts_with("http://"));
                if !ok {
                    f.push("authorityInfoAccess must hold plain http:// URLs".into());
                }
            }
        }
        Some((true, _)) => f.push("authorityInfoAccess must not be critical".into()),
        None if profile.ca_issuers_url.is_some() => f.push("authorityInfoAccess is missing".into()),
        None => {}
    }
    f
}
