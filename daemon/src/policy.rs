//! Policy: profiles, per-RA grants and name rules, as data plus pure
//! functions over it. Nothing here touches the token, the ledger or the
//! network, so every rule is testable on its own.

use crate::config::{Config, ProfileConfig, ProfileKind, RaConfig};
use certd_api::{ApiError, ErrorCode, ProfileInfo};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::config::IpNet;
pub use certd_api::evidence::in_subtree;
pub use certd_api::names::{check_dns_name, check_email};

/// An RA's grant, ready for checks.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The configuration it came from.
    pub config: RaConfig,
    ip_networks: Vec<IpNet>,
}

impl Grant {
    /// The RA's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The longest validity, in days, this RA may ask for under `profile`:
    /// the profile's maximum, lowered by the grant's own.
    pub fn max_validity_days(&self, profile: &ProfileConfig) -> u32 {
        self.config
            .max_validity_days
            .map_or(profile.max_validity_days, |g| {
                g.min(profile.max_validity_days)
            })
    }

    /// Whether the RA may request the DNS name `name` (already syntax-checked).
    pub fn permits_dns(&self, name: &str) -> bool {
        let base = name.strip_prefix("*.");
        if base.is_none() && self.config.dns_names.iter().any(|n| n == name) {
            return true;
        }
        let name = base.unwrap_or(name);
        self.config.dns_subtrees.iter().any(|t| in_subtree(name, t))
    }

    /// Whether the RA may request the mailbox at `domain`.
    pub fn permits_email_domain(&self, domain: &str) -> bool {
        self.config.email_domains.iter().any(|d| d == domain)
            || self
                .config
                .email_subtrees
                .iter()
                .any(|t| in_subtree(domain, t))
    }

    /// Whether a tls-client commonName matches one of the grant's
    /// `client_common_names` patterns.
    pub fn permits_client_cn(&self, cn: &str) -> bool {
        self.config
            .client_common_names
            .iter()
            .any(|p| glob_match(p, cn))
    }

    /// Checks the subject's organization attributes (O, OU, L, ST, C) come
    /// from one organization identity of the grant; names the attribute
    /// that does not.
    pub fn check_organization(&self, s: &SubjectFields) -> Result<(), ApiError> {
        let attrs: [(&str, &Option<String>); 6] = [
            ("organizationName", &s.o),
            ("organizationIdentifier", &s.org_id),
            ("organizationalUnitName", &s.ou),
            ("localityName", &s.l),
            ("stateOrProvinceName", &s.st),
            ("countryName", &s.c),
        ];
        if attrs.iter().all(|(_, v)| v.is_none()) {
            return Ok(());
        }
        let allows = |o: &crate::config::OrganizationGrant, what: &str, v: &str| match what {
            "organizationName" => o.name == v,
            "organizationalUnitName" => o.organizational_units.iter().any(|x| x == v),
            "localityName" => o.localities.iter().any(|x| x == v),
            "stateOrProvinceName" => o.states.iter().any(|x| x == v),
            "organizationIdentifier" => o.organization_identifier.as_deref() == Some(v),
            _ => o.countries.iter().any(|x| x == v),
        };
        let orgs = &self.config.organizations;
        if orgs.iter().any(|o| {
            attrs
                .iter()
                .all(|(what, v)| v.as_deref().is_none_or(|v| allows(o, what, v)))
        }) {
            return Ok(());
        }
        // Say which attribute: against the organization named, if any.
        let named: Vec<&crate::config::OrganizationGrant> = match &s.o {
            Some(name) => orgs.iter().filter(|o| o.name == *name).collect(),
            None => orgs.iter().collect(),
        };
        if let (Some(name), true) = (&s.o, named.is_empty()) {
            return Err(refuse(format!(
                "organizationName {name:?} is not an organization RA {:?} may certify{}",
                self.name(),
                if orgs.is_empty() {
                    " (its grant names none)".to_string()
                } else {
                    format!(
                        " (it may certify: {})",
                        orgs.iter()
                            .map(|o| format!("{:?}", o.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )));
        }
        let (what, value) = attrs
            .iter()
            .find_map(|(what, v)| {
                let v = v.as_deref()?;
                (!named.iter().any(|o| allows(o, what, v))).then_some((*what, v))
            })
            .unwrap_or(("organization attributes", "this combination"));
        Err(refuse(format!(
            "subject {what} {value:?} is not permitted for {} of RA {:?}: its grant's organizations list the values allowed",
            s.o.as_deref().map_or("any organization".to_string(), |o| format!("organization {o:?}")),
            self.name()
        )))
    }

    /// Whether the RA may request the IP address.
    pub fn permits_ip(&self, ip: &IpAddr) -> bool {
        self.ip_networks.iter().any(|n| n.contains(ip))
    }
}

/// IANA special-purpose and reserved ranges (RFC 6890 and successors),
/// which publicly-trusted TLS certificates must not name.
pub fn is_reserved_ip(ip: &IpAddr) -> bool {
    const RESERVED: &[&str] = &[
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ];
    RESERVED
        .iter()
        .filter_map(|n| IpNet::parse(n))
        .any(|n| n.contains(ip))
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (also none) and everything else for itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The policy in force. A request reads it once and finishes under what it
/// read; a reload replaces it whole.
pub struct LivePolicy(arc_swap::ArcSwap<Policy>);

impl LivePolicy {
    /// Puts `policy` in force.
    pub fn new(policy: Policy) -> LivePolicy {
        LivePolicy(arc_swap::ArcSwap::from_pointee(policy))
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.0.load_full()
    }

    /// Puts `policy` in force instead (on reload).
    pub fn replace(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }
}

/// Profiles and grants, rebuilt on reload.
#[derive(Debug, Clone)]
pub struct Policy {
    profiles: HashMap<String, ProfileConfig>,
    grants: Vec<Grant>,
    by_fingerprint: HashMap<String, usize>,
    certifier_profiles: HashMap<String, Vec<String>>,
}

impl Policy {
    /// Builds the policy from a checked configuration.
    pub fn from_config(config: &Config) -> Policy {
        let mut by_fingerprint = HashMap::new();
        let grants = config
            .ras
            .iter()
            .enumerate()
            .map(|(i, ra)| {
                for f in &ra.fingerprints {
                    if let Some(f) = crate::config::normalize_fingerprint(f) {
                        by_fingerprint.insert(f, i);
                    }
                }
                Grant {
                    config: ra.clone(),
                    ip_networks: ra
                        .ip_networks
                        .iter()
                        .filter_map(|n| IpNet::parse(n))
                        .collect(),
                }
            })
            .collect();
        Policy {
            profiles: config
                .profiles
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            grants,
            by_fingerprint,
            certifier_profiles: config
                .certifiers
                .iter()
                .map(|c| (c.name.clone(), c.profiles.clone()))
                .collect(),
        }
    }

    /// The RA whose client certificate has this SHA-256 fingerprint.
    pub fn grant_for_fingerprint(&self, fingerprint_hex: &str) -> Option<&Grant> {
        self.by_fingerprint
            .get(fingerprint_hex)
            .and_then(|i| self.grants.get(*i))
    }

    /// Whether any RA has this fingerprint.
    pub fn knows_fingerprint(&self, fingerprint_hex: &str) -> bool {
        self.by_fingerprint.contains_key(fingerprint_hex)
    }

    /// A profile by name.
    pub fn profile(&self, name: &str) -> Option<&ProfileConfig> {
        self.profiles.get(name)
    }

    /// Whether `certifier` issues under `profile`.
    pub fn certifier_offers(&self, certifier: &str, profile: &str) -> bool {
        match self.certifier_profiles.get(certifier) {
            Some(list) => list.is_empty() || list.iter().any(|p| p == profile),
            None => false,
        }
    }

    /// Picks and authorises the certifier and profile of a request.
    pub fn authorize<'a>(
        &'a self,
        grant: &Grant,
        certifier: Option<&str>,
        profile: &str,
    ) -> Result<(String, &'a ProfileConfig), ApiError> {
        let p = self
            .profiles
            .get(profile)
            .filter(|_| grant.config.profiles.iter().any(|g| g == profile))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ProfileNotPermitted,
                    format!(
                        "RA {:?} may not use profile {profile:?}; GET /v1/profiles lists the ones it may",
                        grant.name()
                    ),
                )
            })?;
        let certifier = match certifier {
            Some(c) => {
                if !self.certifier_profiles.contains_key(c) {
                    return Err(ApiError::new(
                        ErrorCode::UnknownCertifier,
                        format!("there is no certifier {c:?}"),
                    ));
                }
                if !grant.config.certifiers.iter().any(|g| g == c) {
                    return Err(ApiError::new(
                        ErrorCode::CertifierNotPermitted,
                        format!("RA {:?} may not use certifier {c:?}", grant.name()),
                    ));
                }
                c.to_string()
            }
            None => {
                let usable: Vec<&String> = grant
                    .config
                    .certifiers
                    .iter()
                    .filter(|c| self.certifier_offers(c, profile))
                    .collect();
                match usable.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(ApiError::new(
                            ErrorCode::CertifierNotPermitted,
                            format!(
                                "none of the certifiers RA {:?} may use issues profile {profile:?}",
                                grant.name()
                            ),
                        ))
                    }
                    _ => {
                        return Err(ApiError::new(
                            ErrorCode::BadRequest,
                            format!(
                                "several certifiers issue profile {profile:?}: name one in \"certifier\""
                            ),
                        ))
                    }
                }
            }
        };
        if !self.certifier_offers(&certifier, profile) {
            return Err(ApiError::new(
                ErrorCode::ProfileNotPermitted,
                format!("certifier {certifier:?} does not issue profile {profile:?}"),
            ));
        }
        Ok((certifier, p))
    }

    /// The profiles an RA may use, with their certifiers.
    pub fn profiles_for(&self, grant: &Grant) -> Vec<(&ProfileConfig, Vec<String>)> {
        let mut out: Vec<_> = grant
            .config
            .profiles
            .iter()
            .filter_map(|name| self.profiles.get(name))
            .map(|p| {
                let certifiers = grant
                    .config
                    .certifiers
                    .iter()
                    .filter(|c| self.certifier_offers(c, &p.name))
                    .cloned()
                    .collect();
                (p, certifiers)
            })
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }

    /// The profiles an RA may use, as `GET /v1/profiles` shows them.
    pub fn profile_infos(&self, grant: &Grant) -> Vec<ProfileInfo> {
        self.profiles_for(grant)
            .into_iter()
            .map(|(p, certifiers)| ProfileInfo {
                name: p.name.clone(),
                kind: p.kind.as_str().to_string(),
                certifiers,
                key_types: p.key_types.iter().map(|k| k.to_string()).collect(),
                max_validity_days: grant.max_validity_days(p),
                requires_approval: p.requires_evidence(),
                approvals_required: p.approvals_required,
                dns_validation_methods: p.validation_methods.dns.clone(),
                email_validation_methods: p.validation_methods.email.clone(),
            })
            .collect()
    }
}

/// Subject attributes of the certificate to issue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectFields {
    /// commonName.
    pub cn: Option<String>,
    /// organizationName.
    pub o: Option<String>,
    /// organizationalUnitName.
    pub ou: Option<String>,
    /// localityName.
    pub l: Option<String>,
    /// stateOrProvinceName.
    pub st: Option<String>,
    /// countryName.
    pub c: Option<String>,
    /// emailAddress.
    pub email: Option<String>,
    /// organizationIdentifier.
    pub org_id: Option<String>,
    /// givenName.
    pub given_name: Option<String>,
    /// surname.
    pub surname: Option<String>,
    /// pseudonym.
    pub pseudonym: Option<String>,
}

impl SubjectFields {
    /// From the API's subject.
    pub fn from_api(s: &certd_api::Subject) -> SubjectFields {
        SubjectFields {
            cn: s.common_name.clone(),
            o: s.organization.clone(),
            ou: s.organizational_unit.clone(),
            l: s.locality.clone(),
            st: s.state.clone(),
            c: s.country.clone(),
            email: s.email.clone(),
            org_id: s.organization_identifier.clone(),
            given_name: s.given_name.clone(),
            surname: s.surname.clone(),
            pseudonym: s.pseudonym.clone(),
        }
    }

    /// Whether no attribute is set.
    pub fn is_empty(&self) -> bool {
        *self == SubjectFields::default()
    }
}

/// The names a certificate will carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Subject attributes.
    pub subject: SubjectFields,
    /// dNSName SANs.
    pub dns: Vec<String>,
    /// rfc822Name SANs.
    pub emails: Vec<String>,
    /// iPAddress SANs.
    pub ips: Vec<IpAddr>,
}

fn refuse(message: String) -> ApiError {
    ApiError::new(ErrorCode::NameNotPermitted, message)
}

fn check_text(value: &str, what: &str, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n == 0 || n > max || value.chars().any(char::is_control) || value.trim() != value {
        return Err(refuse(format!(
            "subject {what} must be 1 to {max} characters, without control characters or surrounding spaces"
        )));
    }
    Ok(())
}

/// Checks the names against the profile's rules and the RA's namespaces.
pub fn check_names(profile: &ProfileConfig, grant: &Grant, names: &Names) -> Result<(), ApiError> {
    let s = &names.subject;
    for (v, what, max) in [
        (&s.cn, "commonName", 64),
        (&s.o, "organizationName", 64),
        (&s.ou, "organizationalUnitName", 64),
        (&s.l, "localityName", 128),
        (&s.st, "stateOrProvinceName", 128),
        (&s.given_name, "givenName", 64),
        (&s.surname, "surname", 64),
        (&s.pseudonym, "pseudonym", 64),
    ] {
        if let Some(v) = v {
            check_text(v, what, max)?;
        }
    }
    if let Some(c) = &s.c {
        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(refuse(format!(
                "subject countryName {c:?} must be two upper-case letters (ISO 3166-1)"
            )));
        }
    }
    if let Some(id) = &s.org_id {
        if !crate::config::valid_organization_identifier(id) {
            return Err(refuse(format!(
                "subject organizationIdentifier {id:?} is not of the form SSSCC-reference (e.g. VATDE-123456789)"
            )));
        }
    }
    let personal = [
        ("givenName", &s.given_name),
        ("surname", &s.surname),
        ("pseudonym", &s.pseudonym),
    ];
    if !profile.kind.names_a_person() {
        if let Some((what, _)) = personal.iter().find(|(_, v)| v.is_some()) {
            return Err(refuse(format!(
                "subject {what} names a person: {} certificates carry no personal names (use an smime-sponsor or smime-individual profile)",
                profile.kind.as_str()
            )));
        }
    }
    if s.org_id.is_some()
        && !matches!(
            profile.kind,
            ProfileKind::SmimeOrganization | ProfileKind::SmimeSponsor
        )
    {
        return Err(refuse(format!(
            "subject organizationIdentifier is not allowed in {} certificates",
            profile.kind.as_str()
        )));
    }
    grant.check_organization(s)?;
    let mut seen = std::collections::HashSet::new();
    for d in &names.dns {
        check_dns_name(d, profile.allow_wildcard).map_err(refuse)?;
        if !seen.insert(d.as_str()) {
            return Err(refuse(format!("DNS name {d:?} is listed twice")));
        }
        if !grant.permits_dns(d) {
            return Err(refuse(format!(
                "DNS name {d:?} is outside the namespaces of RA {:?}",
                grant.name()
            )));
        }
    }
    for e in names.emails.iter().chain(s.email.iter()) {
        let domain = check_email(e).map_err(refuse)?;
        if !grant.permits_email_domain(domain) {
            return Err(refuse(format!(
                "email address {e:?} is outside the email domains of RA {:?}",
                grant.name()
            )));
        }
    }
    let mut seen_mail = std::collections::HashSet::new();
    for e in &names.emails {
        if !seen_mail.insert(e.to_ascii_lowercase()) {
            return Err(refuse(format!("email address {e:?} is listed twice")));
        }
    }
    for ip in &names.ips {
        if !profile.allow_ip {
            return Err(refuse(format!(
                "profile {:?} does not allow IP address SANs",
                profile.name
            )));
        }
        if !grant.permits_ip(ip) {
            return Err(refuse(format!(
                "IP address {ip} is outside the networks of RA {:?}",
                grant.name()
            )));
        }
        if profile.kind == ProfileKind::TlsServer && is_reserved_ip(ip) {
            return Err(refuse(format!(
                "IP address {ip} is reserved or private (IANA special-purpose); tls-server certificates may not carry it (TLS BR 7.1.2.7.12)"
            )));
        }
    }
    match profile.kind {
        ProfileKind::TlsServer => {
            if !names.emails.is_empty() || s.email.is_some() {
                return Err(refuse(
                    "tls-server certificates carry no email addresses".into(),
                ));
            }
            if names.dns.is_empty() && names.ips.is_empty() {
                return Err(refuse(
                    "a tls-server certificate needs at least one DNS or IP SAN".into(),
                ));
            }
            if let Some(cn) = &s.cn {
                let in_san = names.dns.iter().any(|d| d == cn)
                    || names.ips.iter().any(|ip| ip.to_string() == *cn);
                if !in_san {
                    return Err(refuse(format!(
                        "commonName {cn:?} must repeat one of the SANs (or be left out)"
                    )));
                }
            }
            if s.ou.is_some() {
                return Err(refuse(
                    "organizationalUnitName is not allowed in tls-server certificates (TLS BR 7.1.2.7.2)".into(),
                ));
            }
            if s.o.is_some() && (s.c.is_none() || (s.l.is_none() && s.st.is_none())) {
                return Err(refuse(
                    "with organizationName, countryName and localityName or stateOrProvinceName are required".into(),
                ));
            }
            if s.o.is_none() && (s.l.is_some() || s.st.is_some()) {
                return Err(refuse(
                    "localityName and stateOrProvinceName need organizationName".into(),
                ));
            }
        }
        ProfileKind::TlsClient => {
            if s.cn.is_none()
                && names.dns.is_empty()
                && names.emails.is_empty()
                && names.ips.is_empty()
            {
                return Err(refuse(
                    "a tls-client certificate needs a commonName or at least one SAN".into(),
                ));
            }
            if let Some(cn) = &s.cn {
                let in_san = names.dns.iter().any(|d| d == cn)
                    || names.emails.iter().any(|e| e.eq_ignore_ascii_case(cn))
                    || names.ips.iter().any(|ip| ip.to_string() == *cn);
                if !in_san && !grant.permits_client_cn(cn) {
                    return Err(refuse(format!(
                        "commonName {cn:?} must repeat one of the SANs or match a client_common_names pattern of RA {:?}",
                        grant.name()
                    )));
                }
            }
        }
        ProfileKind::SmimeMailbox => {
            if names.emails.is_empty() {
                return Err(refuse(
                    "an S/MIME certificate needs at least one email SAN".into(),
                ));
            }
            if !names.dns.is_empty() || !names.ips.is_empty() {
                return Err(refuse(
                    "mailbox-validated S/MIME certificates carry only email SANs".into(),
                ));
            }
            if s.o.is_some() || s.ou.is_some() || s.l.is_some() || s.st.is_some() || s.c.is_some() {
                return Err(refuse(
                    "a mailbox-validated S/MIME subject may hold only commonName and emailAddress"
                        .into(),
                ));
            }
            let lower: Vec<String> = names
                .emails
                .iter()
                .map(|e| e.to_ascii_lowercase())
                .collect();
            for (what, v) in [("commonName", &s.cn), ("emailAddress", &s.email)] {
                if let Some(v) = v {
                    if !lower.contains(&v.to_ascii_lowercase()) {
                        return Err(refuse(format!(
                            "subject {what} {v:?} must be one of the certificate's email addresses"
                        )));
                    }
                }
            }
        }
        kind => check_named_smime(kind, names)?,
    }
    Ok(())
}

/// The subject rules of organization-, sponsor- and individual-validated
/// S/MIME (S/MIME BR 7.1.4.2.2); the organization attributes come from the
/// grant, checked before.
fn check_named_smime(kind: ProfileKind, names: &Names) -> Result<(), ApiError> {
    let s = &names.subject;
    let what = kind.as_str();
    if names.emails.is_empty() {
        return Err(refuse(format!(
            "an {what} certificate needs at least one email SAN"
        )));
    }
    if !names.dns.is_empty() || !names.ips.is_empty() {
        return Err(refuse(format!("{what} certificates carry only email SANs")));
    }
    let lower: Vec<String> = names
        .emails
        .iter()
        .map(|e| e.to_ascii_lowercase())
        .collect();
    let is_mailbox = |v: &str| lower.contains(&v.to_ascii_lowercase());
    if let Some(e) = &s.email {
        if !is_mailbox(e) {
            return Err(refuse(format!(
                "subject emailAddress {e:?} must be one of the certificate's email addresses"
            )));
        }
    }
    match kind {
        ProfileKind::SmimeOrganization | ProfileKind::SmimeSponsor => {
            if s.o.is_none() || s.org_id.is_none() {
                return Err(refuse(format!(
                    "{what} certificates need organizationName and organizationIdentifier (from the RA's granted organizations)"
                )));
            }
        }
        _ => {
            if let Some((attr, _)) = [
                ("organizationName", &s.o),
                ("organizationalUnitName", &s.ou),
                ("localityName", &s.l),
                ("stateOrProvinceName", &s.st),
                ("countryName", &s.c),
            ]
            .iter()
            .find(|(_, v)| v.is_some())
            {
                return Err(refuse(format!(
                    "subject {attr} is not allowed in {what} certificates (they name a person, not an organization)"
                )));
            }
        }
    }
    let personal_name = match (&s.given_name, &s.surname, &s.pseudonym) {
        (Some(g), Some(n), None) => Some(format!("{g} {n}")),
        (None, None, Some(_)) | (None, None, None) => None,
        (_, _, Some(_)) => {
            return Err(refuse(
                "subject pseudonym replaces givenName and surname: send one or the other".into(),
            ))
        }
        _ => {
            return Err(refuse(
                "subject givenName and surname go together: send both".into(),
            ))
        }
    };
    if kind.names_a_person() && personal_name.is_none() && s.pseudonym.is_none() {
        return Err(refuse(format!(
            "{what} certificates name a person: send givenName and surname, or pseudonym"
        )));
    }
    if let Some(cn) = &s.cn {
        let ok = is_mailbox(cn)
            || match kind {
                ProfileKind::SmimeOrganization => s.o.as_deref() == Some(cn.as_str()),
                _ => {
                    personal_name.as_deref() == Some(cn.as_str())
                        || s.pseudonym.as_deref() == Some(cn.as_str())
                }
            };
        if !ok {
            return Err(refuse(format!(
                "subject commonName {cn:?} must be {} or one of the certificate's email addresses",
                match kind {
                    ProfileKind::SmimeOrganization => "the organizationName",
                    _ => "the personal name (givenName surname) or the pseudonym",
                }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            config: RaConfig {
                name: "ra".into(),
                fingerprints: vec![],
                certifiers: vec!["c".into()],
                profiles: vec!["web".into()],
                dns_names: vec!["exact.org".into()],
                dns_subtrees: vec!["example.com".into()],
                email_domains: vec!["mail.example.net".into()],
                email_subtrees: vec!["example.com".into()],
                ip_networks: vec!["192.0.2.0/24".into()],
                max_validity_days: None,
                rate_limit_per_minute: None,
                may_revoke: false,
                read_all: false,
                organizations: vec![crate::config::OrganizationGrant {
                    name: "Example Corp".into(),
                    organization_identifier: None,
                    organizational_units: vec!["IT".into()],
                    localities: vec!["Berlin".into()],
                    states: vec![],
                    countries: vec!["DE".into()],
                }],
                client_common_names: vec!["device-*".into()],
            },
            ip_networks: vec![IpNet::parse("192.0.2.0/24").expect("net")],
        }
    }

    fn profile(kind: ProfileKind) -> ProfileConfig {
        ProfileConfig {
            name: "web".into(),
            kind,
            key_types: vec![crate::hsm::KeyType::P256],
            max_validity_days: 90,
            policy_oids: vec![],
            crl_url: None,
            ca_issuers_url: None,
            approvals_required: 0,
            validation_methods: Default::default(),
            validation_reuse_days: Default::default(),
            common_name_from_san: false,
            allow_ip: true,
            allow_wildcard: false,
            smime_generation: None,
        }
    }

    #[test]
    fn namespaces() {
        let g = grant();
        assert!(g.permits_dns("example.com"));
        assert!(g.permits_dns("www.example.com"));
        assert!(!g.permits_dns("badexample.com"));
        assert!(!g.permits_dns("example.com.evil.org"));
        assert!(g.permits_dns("exact.org"));
        assert!(!g.permits_dns("www.exact.org"));
        assert!(!g.permits_dns("*.exact.org"));
        assert!(g.permits_dns("*.example.com"));
        assert!(g.permits_email_domain("mail.example.net"));
        assert!(!g.permits_email_domain("example.net"));
        assert!(g.permits_email_domain("dept.example.com"));
        assert!(g.permits_ip(&"192.0.2.7".parse().expect("ip")));
        assert!(!g.permits_ip(&"192.0.3.7".parse().expect("ip")));
        assert!(!g.permits_ip(&"2001:db8::1".parse().expect("ip")));
    }

    #[test]
    fn dns_syntax() {
        for ok in [
            "a.example.com",
            "xn--bcher-kva.example.com",
            "1-2.example.com",
        ] {
            assert!(check_dns_name(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "Example.com",
            "example.com.",
            "bücher.example.com",
            "-a.example.com",
            "a_b.example.com",
            "localhost",
            "*.example.com",
            "a..example.com",
            "xn--.example.com",
            "ab--c.example.com",
            "192.0.2.1",
        ] {
            assert!(check_dns_name(bad, false).is_err(), "{bad}");
        }
        assert!(check_dns_name("*.example.com", true).is_ok());
        assert!(check_dns_name("a.*.example.com", true).is_err());
    }

    #[test]
    fn email_syntax() {
        assert_eq!(check_email("a.b+c@example.com"), Ok("example.com"));
        for bad in [
            "noat",
            "@example.com",
            "a@",
            "a b@example.com",
            "\"q\"@example.com",
            ".a@example.com",
            "a@Example.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_server_rules() {
        let p = profile(ProfileKind::TlsServer);
        let g = grant();
        let mut n = Names {
            dns: vec!["www.example.com".into()],
            ..Default::default()
        };
        assert!(check_names(&p, &g, &n).is_ok());
        n.subject.cn = Some("other.example.com".into());
        assert_eq!(
            check_names(&p, &g, &n).map_err(|e| e.code),
            Err(ErrorCode::NameNotPermitted)
        );
        n.subject.cn = Some("www.example.com".into());
        assert!(check_names(&p, &g, &n).is_ok());
        n.emails = vec!["a@example.com".into()];
        assert!(check_names(&p, &g, &n).is_err());
        n.emails.clear();
        n.dns.push("www.example.org".into());
        assert!(check_names(&p, &g, &n).is_err());
        n.dns.pop();
        n.dns.push("www.example.com".into());
        assert!(check_names(&p, &g, &n).is_err(), "duplicate");
        let empty = Names::default();
        assert!(check_names(&p, &g, &empty).is_err());
    }

    #[test]
    fn smime_rules() {
        let mut p = profile(ProfileKind::SmimeMailbox);
        p.smime_generation = Some(crate::config::SmimeGeneration::Strict);
        let g = grant();
        let mut n = Names {
            emails: vec!["alice@example.com".into()],
            ..Default::default()
        };
        n.subject.email = Some("alice@example.com".into());
        n.subject.cn = Some("alice@example.com".into());
        assert!(check_names(&p, &g, &n).is_ok());
        n.subject.cn = Some("Alice".into());
        assert!(check_names(&p, &g, &n).is_err());
        n.subject.cn = None;
        n.subject.o = Some("Org".into());
        assert!(check_names(&p, &g, &n).is_err());
        n.subject.o = None;
        n.emails = vec!["alice@example.org".into()];
        n.subject.email = None;
        assert!(check_names(&p, &g, &n).is_err());
    }

    #[test]
    fn subject_organizations_come_from_the_grant() {
        let g = grant();
        let ok = |f: fn(&mut SubjectFields)| {
            let mut s = SubjectFields::default();
            f(&mut s);
            g.check_organization(&s).map_err(|e| e.message)
        };
        assert!(ok(|_| {}).is_ok());
        assert!(ok(|s| {
            s.o = Some("Example Corp".into());
            s.l = Some("Berlin".into());
            s.c = Some("DE".into());
        })
        .is_ok());
        assert!(
            ok(|s| s.ou = Some("IT".into())).is_ok(),
            "OU of a granted organization"
        );
        let m = ok(|s| s.o = Some("Other Corp".into())).expect_err("not granted");
        assert!(
            m.contains("\"Other Corp\"") && m.contains("Example Corp"),
            "{m}"
        );
        let m = ok(|s| {
            s.o = Some("Example Corp".into());
            s.l = Some("Munich".into());
        })
        .expect_err("locality not listed");
        assert!(m.contains("localityName \"Munich\""), "{m}");
        let m = ok(|s| s.c = Some("FR".into())).expect_err("country");
        assert!(m.contains("countryName"), "{m}");
        let m = ok(|s| s.ou = Some("Sales".into())).expect_err("OU");
        assert!(m.contains("organizationalUnitName \"Sales\""), "{m}");
    }

    #[test]
    fn client_common_names_repeat_a_san_or_match_a_pattern() {
        let mut p = profile(ProfileKind::TlsClient);
        p.name = "web".into();
        let g = grant();
        let mut n = Names {
            emails: vec!["alice@example.com".into()],
            ..Default::default()
        };
        n.subject.cn = Some("alice@example.com".into());
        assert!(check_names(&p, &g, &n).is_ok());
        n.subject.cn = Some("device-4711".into());
        assert!(check_names(&p, &g, &n).is_ok(), "pattern");
        n.subject.cn = Some("Alice Example".into());
        assert_eq!(
            check_names(&p, &g, &n).map_err(|e| e.code),
            Err(ErrorCode::NameNotPermitted)
        );
        for (pat, text, want) in [
            ("*", "anything at all", true),
            ("device-*", "device-", true),
            ("device-*", "devices", false),
            ("*.clients.example.com", "a.b.clients.example.com", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(pat, text), want, "{pat} {text}");
        }
    }

    #[test]
    fn reserved_addresses() {
        for r in [
            "10.1.2.3",
            "192.0.2.7",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "2001:db8::5",
            "100.64.1.1",
        ] {
            assert!(is_reserved_ip(&r.parse().expect("ip")), "{r}");
        }
        for p in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_reserved_ip(&p.parse().expect("ip")), "{p}");
        }
    }
}
