//! Approval and validation evidence, checked rather than taken on the RA's
//! word: enough distinct approvers, none of them the requester, every
//! identifier and time well-formed, and every name in the certificate
//! covered by a fresh validation of a method the profile accepts.
//!
//! This cannot tell invented evidence from real (see `docs/security.md`);
//! what it stops is an RA that skips evidence, reuses stale evidence, lets
//! a requester approve their own request, or validates one name and
//! certifies another.

use crate::config::ProfileConfig;
use crate::policy::Names;
use certd_api::evidence::{check_person_id, person_key, NameKind, ValidationMethod};
use certd_api::{ApiError, Approval, ErrorCode};
use std::collections::HashSet;

/// How far in the future a `checked_at` may lie: the RA's clock and
/// certd's may differ by this much.
pub const CLOCK_SKEW_SECS: i64 = 300;

const DAY: i64 = 86_400;

/// The longest an identity validation may be reused: S/MIME Baseline
/// Requirements 4.2.1 (825 days for an individual's identity).
pub const IDENTITY_REUSE_DAYS: i64 = 825;

fn insufficient(message: String) -> ApiError {
    ApiError::new(ErrorCode::ApprovalInsufficient, message)
}

/// Checks the request's evidence against the profile for the names the
/// certificate will carry, at `now` (Unix seconds). Evidence sent to a
/// profile that needs none is checked all the same: what certd records,
/// it has checked.
pub fn check(
    profile: &ProfileConfig,
    names: &Names,
    approval: Option<&Approval>,
    now: i64,
) -> Result<(), ApiError> {
    let Some(a) = approval else {
        if profile.requires_evidence() {
            return Err(ApiError::new(
                ErrorCode::ApprovalRequired,
                format!(
                    "profile {:?} requires approval evidence ({}); send it in \"approval\"",
                    profile.name,
                    what_is_required(profile)
                ),
            ));
        }
        return Ok(());
    };
    check_people(profile, a)?;
    check_identity(profile, a, now)?;
    let times = check_times(a, now)?;
    for (kind, list) in [
        (NameKind::Dns, names.dns.iter().collect::<Vec<_>>()),
        (
            NameKind::Email,
            names
                .emails
                .iter()
                .chain(names.subject.email.iter())
                .collect(),
        ),
    ] {
        let accepted = profile.validation_methods.for_kind(kind);
        if accepted.is_empty() {
            continue;
        }
        let max_age = i64::from(profile.validation_reuse_days.for_kind(kind)) * DAY;
        for name in list {
            covered(profile, a, &times, kind, accepted, max_age, name, now)?;
        }
    }
    Ok(())
}

fn what_is_required(profile: &ProfileConfig) -> String {
    let mut parts = Vec::new();
    if profile.approvals_required > 0 {
        parts.push(format!(
            "requested_by and {} approver(s) in approved_by",
            profile.approvals_required
        ));
    }
    for kind in [NameKind::Dns, NameKind::Email] {
        let m = profile.validation_methods.for_kind(kind);
        if !m.is_empty() {
            parts.push(format!(
                "a validation of every one of its {} by {}",
                kind.plural(),
                list(m)
            ));
        }
    }
    parts.join("; ")
}

fn list(methods: &[ValidationMethod]) -> String {
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The requester and the approvers: well-formed, distinct, enough.
fn check_people(profile: &ProfileConfig, a: &Approval) -> Result<(), ApiError> {
    let requester = match &a.requested_by {
        Some(r) => {
            check_person_id(r).map_err(|e| insufficient(format!("requested_by: {e}")))?;
            Some(person_key(r))
        }
        None if profile.approvals_required > 0 => {
            return Err(insufficient(format!(
                "profile {:?} requires approvals: name the requester in approval.requested_by, so certd can tell that nobody approves their own request",
                profile.name
            )))
        }
        None => None,
    };
    let mut seen = HashSet::new();
    for officer in &a.approved_by {
        check_person_id(officer).map_err(|e| insufficient(format!("approved_by: {e}")))?;
        let key = person_key(officer);
        if requester.as_deref() == Some(key.as_str()) {
            return Err(insufficient(format!(
                "approved_by: {officer:?} is the requester; a request is approved by officers other than the one who asked"
            )));
        }
        if !seen.insert(key) {
            return Err(insufficient(format!(
                "approved_by: {officer:?} is listed twice; each approval must come from a different officer"
            )));
        }
    }
    let needed = profile.approvals_required as usize;
    if seen.len() < needed {
        return Err(insufficient(format!(
            "profile {:?} requires {needed} approval(s) by distinct officers; approved_by has {}",
            profile.name,
            seen.len()
        )));
    }
    Ok(())
}

/// The identity attestation that sponsor- and individual-validated S/MIME
/// certificates need (and any sent is checked).
fn check_identity(profile: &ProfileConfig, a: &Approval, now: i64) -> Result<(), ApiError> {
    let Some(id) = &a.identity else {
        if profile.kind.names_a_person() {
            return Err(insufficient(format!(
                "profile {:?} names a person: approval.identity must say who verified their identity (attested_by), how (officer_attestation) and when (checked_at)",
                profile.name
            )));
        }
        return Ok(());
    };
    check_person_id(&id.attested_by)
        .map_err(|e| insufficient(format!("identity.attested_by: {e}")))?;
    if id.method != ValidationMethod::OfficerAttestation.as_str() {
        return Err(insufficient(format!(
            "identity.method {:?}: the one identity method certd knows is officer_attestation",
            id.method
        )));
    }
    let at = crate::clock::parse_rfc3339(&id.checked_at).map_err(|e| {
        insufficient(format!(
            "identity.checked_at {:?} is not an RFC 3339 time ({e})",
            id.checked_at
        ))
    })?;
    if at > now + CLOCK_SKEW_SECS {
        return Err(insufficient(format!(
            "identity.checked_at {} is in the future",
            id.checked_at
        )));
    }
    if now - at > IDENTITY_REUSE_DAYS * DAY {
        return Err(insufficient(format!(
            "identity.checked_at {} is older than the {IDENTITY_REUSE_DAYS} days an identity validation may be reused (S/MIME BR 4.2.1)",
            id.checked_at
        )));
    }
    Ok(())
}

/// Every validation's method and time, parsed: a malformed entry is
/// refused even where it would not be needed.
fn check_times(a: &Approval, now: i64) -> Result<Vec<(ValidationMethod, i64)>, ApiError> {
    a.validations
        .iter()
        .map(|v| {
            if v.name.is_empty() {
                return Err(insufficient(
                    "a validation has an empty name: name the DNS name, domain or email address validated".into(),
                ));
            }
            let at = crate::clock::parse_rfc3339(&v.checked_at).map_err(|e| {
                insufficient(format!(
                    "validation of {:?}: checked_at {:?} is not an RFC 3339 time ({e})",
                    v.name, v.checked_at
                ))
            })?;
            if at > now + CLOCK_SKEW_SECS {
                return Err(insufficient(format!(
                    "validation of {:?}: checked_at {} is in the future (certd's time is {})",
                    v.name,
                    v.checked_at,
                    crate::clock::rfc3339(now)
                )));
            }
            let method = ValidationMethod::parse(&v.method).ok_or_else(|| {
                insufficient(format!(
                    "validation of {:?}: method {:?} is not one certd knows (it knows {})",
                    v.name,
                    v.method,
                    list(&ValidationMethod::ALL)
                ))
            })?;
            Ok((method, at))
        })
        .collect()
}

/// Finds a validation that covers `name`, or says why none does.
#[allow(clippy::too_many_arguments)]
fn covered(
    profile: &ProfileConfig,
    a: &Approval,
    times: &[(ValidationMethod, i64)],
    kind: NameKind,
    accepted: &[ValidationMethod],
    max_age: i64,
    name: &str,
    now: i64,
) -> Result<(), ApiError> {
    let mut why = None;
    for (v, (method, at)) in a.validations.iter().zip(times) {
        if !method.covers(&v.name, name, kind) {
            if v.name == name {
                why = Some(format!(
                    "a validation by {method} cannot cover it (http_file validates one host name, never a wildcard; email_token one mailbox)"
                ));
            }
            continue;
        }
        if !accepted.contains(method) {
            why = Some(format!(
                "it was validated by {method}, which profile {:?} does not accept for {} (it accepts {})",
                profile.name,
                kind.plural(),
                list(accepted)
            ));
            continue;
        }
        if now - at > max_age {
            why = Some(format!(
                "its validation by {method} at {} is older than the profile's reuse period of {} days",
                v.checked_at,
                max_age / DAY
            ));
            continue;
        }
        return Ok(());
    }
    Err(insufficient(format!(
        "{} {name:?} is not covered by an accepted validation: {}",
        match kind {
            NameKind::Dns => "DNS name",
            NameKind::Email => "email address",
        },
        why.unwrap_or_else(|| format!(
            "no validation names it (accepted methods: {})",
            list(accepted)
        ))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProfileKind, ReuseDays, ValidationMethods};
    use certd_api::Validation;
    use ValidationMethod::*;

    const NOW: i64 = 1_790_000_000;

    fn profile(
        approvals: u32,
        dns: &[ValidationMethod],
        email: &[ValidationMethod],
    ) -> ProfileConfig {
        ProfileConfig {
            name: "p".into(),
            kind: ProfileKind::TlsServer,
            key_types: vec![crate::hsm::KeyType::P256],
            max_validity_days: 90,
            policy_oids: vec![],
            crl_url: None,
            ca_issuers_url: None,
            approvals_required: approvals,
            validation_methods: ValidationMethods {
                dns: dns.to_vec(),
                email: email.to_vec(),
            },
            validation_reuse_days: ReuseDays::default(),
            common_name_from_san: false,
            allow_ip: false,
            allow_wildcard: true,
            smime_generation: None,
        }
    }

    fn names(dns: &[&str]) -> Names {
        Names {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn v(name: &str, method: &str, age_secs: i64) -> Validation {
        Validation {
            name: name.into(),
            method: method.into(),
            checked_at: crate::clock::rfc3339(NOW - age_secs),
            detail: None,
        }
    }

    fn approval(by: &str, approvers: &[&str], validations: Vec<Validation>) -> Approval {
        Approval {
            requested_by: Some(by.into()),
            identity: None,
            approved_by: approvers.iter().map(|s| s.to_string()).collect(),
            validations,
        }
    }

    fn code(r: Result<(), ApiError>) -> Option<&'static str> {
        r.err().map(|e| e.code.as_str())
    }

    #[test]
    fn distinct_approvers_other_than_the_requester() {
        let p = profile(2, &[], &[]);
        let n = names(&["www.example.com"]);
        let ok = approval("req", &["o1", "o2"], vec![]);
        assert_eq!(code(check(&p, &n, Some(&ok), NOW)), None);
        assert_eq!(code(check(&p, &n, None, NOW)), Some("approval_required"));
        for (bad, why) in [
            (approval("req", &["o1"], vec![]), "too few"),
            (approval("req", &["o1", "O1"], vec![]), "duplicate"),
            (
                approval("req", &["o1", "req"], vec![]),
                "requester approves",
            ),
            (
                approval("req", &["o1", "REQ"], vec![]),
                "requester, other case",
            ),
            (approval("req", &["o1", ""], vec![]), "empty approver"),
            (
                approval("req", &["o1", "o 2"], vec![]),
                "malformed approver",
            ),
            (approval("", &["o1", "o2"], vec![]), "empty requester"),
        ] {
            assert_eq!(
                code(check(&p, &n, Some(&bad), NOW)),
                Some("approval_insufficient"),
                "{why}"
            );
        }
        let mut anonymous = ok.clone();
        anonymous.requested_by = None;
        assert_eq!(
            code(check(&p, &n, Some(&anonymous), NOW)),
            Some("approval_insufficient")
        );
    }

    #[test]
    fn every_name_needs_a_fresh_accepted_validation() {
        let p = profile(0, &[DnsTxt, HttpFile], &[]);
        let n = names(&["www.example.com", "*.example.com"]);
        let good = approval("req", &[], vec![v("example.com", "dns_txt", 3600)]);
        assert_eq!(code(check(&p, &n, Some(&good), NOW)), None);
        assert_eq!(code(check(&p, &n, None, NOW)), Some("approval_required"));
        let refused = |validations: Vec<Validation>| {
            let a = approval("req", &[], validations);
            let e = check(&p, &n, Some(&a), NOW).expect_err("refused");
            assert_eq!(e.code, ErrorCode::ApprovalInsufficient);
            e.message
        };
        // http_file covers one host, never a wildcard.
        let m = refused(vec![
            v("www.example.com", "http_file", 60),
            v("*.example.com", "http_file", 60),
        ]);
        assert!(m.contains("\"*.example.com\""), "{m}");
        // Another name.
        let m = refused(vec![v("example.org", "dns_txt", 60)]);
        assert!(m.contains("no validation names it"), "{m}");
        // A method the profile does not accept.
        let m = refused(vec![v("example.com", "enterprise_domain", 60)]);
        assert!(m.contains("does not accept"), "{m}");
        // Stale: the default reuse period is the BR's 200 days.
        let m = refused(vec![v("example.com", "dns_txt", 201 * DAY)]);
        assert!(m.contains("older than"), "{m}");
        assert_eq!(
            code(check(
                &p,
                &n,
                Some(&approval(
                    "r",
                    &[],
                    vec![v("example.com", "dns_txt", 199 * DAY)]
                )),
                NOW
            )),
            None
        );
        // Future beyond the skew; within it is fine.
        refused(vec![v("example.com", "dns_txt", -CLOCK_SKEW_SECS - 1)]);
        assert_eq!(
            code(check(
                &p,
                &n,
                Some(&approval("r", &[], vec![v("example.com", "dns_txt", -60)])),
                NOW
            )),
            None
        );
        // Malformed time, even on an entry not needed.
        let mut bad_time = v("example.com", "dns_txt", 0);
        bad_time.checked_at = "yesterday".into();
        refused(vec![v("example.com", "dns_txt", 60), bad_time]);
        // Unknown method.
        let m = refused(vec![v("example.com", "telepathy", 60)]);
        assert!(m.contains("telepathy"), "{m}");
    }

    #[test]
    fn mailboxes_use_their_own_methods_and_period() {
        let p = profile(0, &[], &[EmailToken]);
        let n = Names {
            emails: vec!["alice@example.com".into()],
            ..Default::default()
        };
        let ok = approval(
            "r",
            &[],
            vec![v("alice@example.com", "email_token", 29 * DAY)],
        );
        assert_eq!(code(check(&p, &n, Some(&ok), NOW)), None);
        let stale = approval(
            "r",
            &[],
            vec![v("alice@example.com", "email_token", 31 * DAY)],
        );
        assert_eq!(
            code(check(&p, &n, Some(&stale), NOW)),
            Some("approval_insufficient")
        );
        let other = approval("r", &[], vec![v("bob@example.com", "email_token", 60)]);
        assert_eq!(
            code(check(&p, &n, Some(&other), NOW)),
            Some("approval_insufficient")
        );
    }

    #[test]
    fn evidence_is_checked_even_where_none_is_required() {
        let p = profile(0, &[], &[]);
        let n = names(&["www.example.com"]);
        assert_eq!(code(check(&p, &n, None, NOW)), None);
        let dup = approval("r", &["o", "o"], vec![]);
        assert_eq!(
            code(check(&p, &n, Some(&dup), NOW)),
            Some("approval_insufficient")
        );
    }
}
