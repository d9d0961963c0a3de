//! A request's lifecycle: who may do what in which state, as pure
//! functions over the request, and issuance through certd.
//!
//! `pending_validation → pending_approval → approved → issued`, or
//! `rejected` / `cancelled`; `issued → revoked`. Every transition appends
//! to the request's timeline. Issuance sends certd the request's fixed
//! `request_id`, so a retry, a double click or a crash between approval and
//! issuance returns the certificate already issued instead of a second one.

use crate::model::{ApprovalRecord, Request, Role, State, Transition, Unix, User};
use crate::web::{rfc3339, AppError};
use certd_api::{
    Approval, IdentityValidation, IssueRequest, IssueResponse, ProfileInfo, Validation,
};

/// The one validation method until mailbox and domain validation land: an
/// officer attests, under their own name, to having validated the name.
pub const OFFICER_ATTESTATION: &str = "officer_attestation";

/// Profile kinds whose certificates name a person whose identity an
/// officer must attest (S/MIME sponsor- and individual-validated).
pub fn needs_identity(kind: &str) -> bool {
    kind.starts_with("smime-sponsor") || kind.starts_with("smime-individual")
}

fn officer_in(user: &User, r: &Request) -> Result<(), AppError> {
    if user.role != Role::Officer {
        return Err(AppError::Forbidden(format!(
            "only officers act on requests; you are {}",
            user.role.as_str()
        )));
    }
    if !user.in_enterprise(r.enterprise) {
        return Err(AppError::NotFound(format!("request {} not found", r.id)));
    }
    Ok(())
}

fn step(r: &mut Request, actor: &str, action: &str, to: State, note: Option<String>, now: Unix) {
    r.history.push(Transition {
        at: now,
        actor: actor.to_string(),
        action: action.to_string(),
        from: Some(r.state),
        to,
        note,
    });
    r.state = to;
    r.updated_at = now;
}

/// Approvals a request of `profile` needs: what the admin set (at least one
/// when approval is manual), never fewer than certd requires.
pub fn approvals_needed(
    setting: &crate::model::ProfileSetting,
    certd: Option<&ProfileInfo>,
) -> u32 {
    let certd_needs = certd.map_or(0, |p| p.approvals_required);
    let ours = if setting.auto_approve {
        0
    } else {
        setting.approvals_required.max(1)
    };
    ours.max(certd_needs)
}

/// An officer attests that every name (and, for profiles naming a person,
/// the identity) was validated. Returns whether the request is approved
/// now (no approvals needed).
pub fn validate(
    r: &mut Request,
    user: &User,
    profile_kind: &str,
    approvals_required: u32,
    now: Unix,
) -> Result<bool, AppError> {
    officer_in(user, r)?;
    if r.state != State::PendingValidation {
        return Err(AppError::Conflict(format!(
            "request {} is {}, not pending validation",
            r.id,
            r.state.label().to_lowercase()
        )));
    }
    let at = rfc3339(now);
    let detail = Some(format!("attested by {}", user.username));
    r.validations = r
        .san
        .dns
        .iter()
        .chain(&r.san.email)
        .chain(r.subject.email.iter())
        .map(|name| Validation {
            name: name.clone(),
            method: OFFICER_ATTESTATION.into(),
            checked_at: at.clone(),
            detail: detail.clone(),
        })
        .collect();
    r.validations.dedup_by(|a, b| a.name == b.name);
    r.identity = needs_identity(profile_kind).then(|| IdentityValidation {
        attested_by: user.username.clone(),
        method: OFFICER_ATTESTATION.into(),
        checked_at: at.clone(),
        detail: None,
    });
    r.approvals_required = approvals_required;
    let names = r.validations.len();
    let note = Some(format!(
        "{names} name(s){} attested by {}",
        if r.identity.is_some() {
            " and the identity"
        } else {
            ""
        },
        user.username
    ));
    if approvals_required == 0 {
        step(
            r,
            &user.username,
            "validated",
            State::PendingApproval,
            note,
            now,
        );
        step(
            r,
            "ra-web",
            "approved automatically",
            State::Approved,
            None,
            now,
        );
        Ok(true)
    } else {
        step(
            r,
            &user.username,
            "validated",
            State::PendingApproval,
            note,
            now,
        );
        Ok(false)
    }
}

/// An officer approves. Dual control: never the requester, never twice by
/// the same officer. Returns whether the request is approved now.
pub fn approve(r: &mut Request, user: &User, now: Unix) -> Result<bool, AppError> {
    officer_in(user, r)?;
    if r.state != State::PendingApproval {
        return Err(AppError::Conflict(format!(
            "request {} is {}, not pending approval",
            r.id,
            r.state.label().to_lowercase()
        )));
    }
    let me = user.username.to_ascii_lowercase();
    if r.requester.to_ascii_lowercase() == me {
        return Err(AppError::Forbidden(
            "you created this request: another officer must approve it (dual control)".into(),
        ));
    }
    if r.approvals.iter().any(|a| a.by.to_ascii_lowercase() == me) {
        return Err(AppError::Conflict(
            "you approved this request already: another officer must approve it (dual control)"
                .into(),
        ));
    }
    r.approvals.push(ApprovalRecord {
        by: user.username.clone(),
        at: now,
    });
    let have = r.approvals.len() as u32;
    let note = Some(format!("approval {have} of {}", r.approvals_required));
    if have >= r.approvals_required {
        step(r, &user.username, "approved", State::Approved, note, now);
        Ok(true)
    } else {
        // Still pending: record the approval without a state change.
        r.history.push(Transition {
            at: now,
            actor: user.username.clone(),
            action: "approved".into(),
            from: Some(r.state),
            to: r.state,
            note,
        });
        r.updated_at = now;
        Ok(false)
    }
}

/// An officer rejects an open request, with a reason for the requester.
pub fn reject(r: &mut Request, user: &User, reason: &str, now: Unix) -> Result<(), AppError> {
    officer_in(user, r)?;
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(AppError::BadRequest(
            "give a reason for rejecting (1 to 500 characters): the requester receives it".into(),
        ));
    }
    if !r.state.is_open() {
        return Err(AppError::Conflict(format!(
            "request {} is {} and can no longer be rejected",
            r.id,
            r.state.label().to_lowercase()
        )));
    }
    r.reject_reason = Some(reason.to_string());
    step(
        r,
        &user.username,
        "rejected",
        State::Rejected,
        Some(reason.to_string()),
        now,
    );
    Ok(())
}

/// An officer withdraws an open request.
pub fn cancel(r: &mut Request, user: &User, now: Unix) -> Result<(), AppError> {
    officer_in(user, r)?;
    if !r.state.is_open() {
        return Err(AppError::Conflict(format!(
            "request {} is {} and can no longer be cancelled",
            r.id,
            r.state.label().to_lowercase()
        )));
    }
    step(r, &user.username, "cancelled", State::Cancelled, None, now);
    Ok(())
}

/// An officer changes what is to be certified: validations and approvals
/// start over.
pub fn edit(
    r: &mut Request,
    user: &User,
    subject: certd_api::Subject,
    san: certd_api::SubjectAltNames,
    validity_days: Option<u32>,
    now: Unix,
) -> Result<(), AppError> {
    officer_in(user, r)?;
    if !matches!(r.state, State::PendingValidation | State::PendingApproval) {
        return Err(AppError::Conflict(format!(
            "request {} is {}: only requests not yet approved can be edited",
            r.id,
            r.state.label().to_lowercase()
        )));
    }
    let mut changes = Vec::new();
    if subject != r.subject {
        changes.push("subject");
    }
    if san != r.san {
        changes.push("names");
    }
    if validity_days != r.validity_days {
        changes.push("validity");
    }
    if changes.is_empty() {
        return Err(AppError::BadRequest("nothing was changed".into()));
    }
    r.subject = subject;
    r.san = san;
    r.validity_days = validity_days;
    r.validations.clear();
    r.identity = None;
    r.approvals.clear();
    step(
        r,
        &user.username,
        "edited",
        State::PendingValidation,
        Some(format!(
            "changed {}; validation and approvals start over",
            changes.join(", ")
        )),
        now,
    );
    Ok(())
}

/// What certd is asked: the fixed request id, the CSR, the names, and the
/// evidence (requester, approvers, validations, identity), which certd
/// checks against its own policy.
pub fn issue_request(r: &Request, now: Unix) -> IssueRequest {
    let not_after = r
        .validity_days
        .map(|d| rfc3339(now + i64::from(d) * 86_400));
    IssueRequest {
        request_id: r.certd_request_id.clone(),
        certifier: None,
        profile: r.profile.clone(),
        csr: r.csr_pem.clone(),
        subject: Some(r.subject.clone()),
        san: Some(r.san.clone()),
        not_after,
        approval: Some(Approval {
            requested_by: Some(r.requester.clone()),
            identity: r.identity.clone(),
            approved_by: r.approvals.iter().map(|a| a.by.clone()).collect(),
            validations: r.validations.clone(),
        }),
    }
}

/// certd issued the certificate.
pub fn issued(r: &mut Request, resp: &IssueResponse, actor: &str, now: Unix) {
    r.serial = Some(resp.serial.clone());
    r.certificate_pem = Some(resp.certificate.clone());
    r.chain = resp.chain.clone();
    r.not_after = Some(resp.not_after.clone());
    r.last_error = None;
    let note = if resp.replayed {
        format!("serial {} (certd had issued it already)", resp.serial)
    } else {
        format!("serial {}", resp.serial)
    };
    step(r, actor, "issued", State::Issued, Some(note), now);
    if let (Some(at), Some(reason)) = (&resp.revoked_at, &resp.revocation_reason) {
        r.revocation = Some((reason.clone(), at.clone()));
        step(
            r,
            "certd",
            "revoked",
            State::Revoked,
            Some(reason.clone()),
            now,
        );
    }
}

/// certd could not issue: the request stays approved, with the reason.
pub fn issue_failed(r: &mut Request, error: &str, actor: &str, now: Unix) {
    r.last_error = Some(error.to_string());
    r.updated_at = now;
    r.history.push(Transition {
        at: now,
        actor: actor.to_string(),
        action: "issuance failed".into(),
        from: Some(r.state),
        to: r.state,
        note: Some(error.to_string()),
    });
}

/// The certificate was revoked at certd.
pub fn revoked(r: &mut Request, user: &str, reason: &str, at: &str, now: Unix) {
    r.revocation = Some((reason.to_string(), at.to_string()));
    step(
        r,
        user,
        "revoked",
        State::Revoked,
        Some(reason.to_string()),
        now,
    );
}

/// The RFC 5280 reasons an officer may choose: certd's list.
pub fn revocation_reasons() -> Vec<&'static str> {
    certd_api::REVOCATION_REASONS
        .iter()
        .map(|(n, _)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProfileSetting;

    fn user(name: &str, role: Role, enterprises: Vec<u64>) -> User {
        User {
            username: name.into(),
            display_name: name.into(),
            email: None,
            role,
            enterprises,
            password_hash: String::new(),
            totp: None,
            failed_logins: 0,
            locked_until: None,
            disabled: false,
            must_change_password: false,
            created_at: 0,
            generation: 0,
        }
    }

    fn request() -> Request {
        let mut r =
            crate::store::tests_support::request(7, 1, State::PendingValidation, "www.example.com");
        r.requester = "olivia".into();
        r
    }

    #[test]
    fn dual_control_needs_distinct_officers_other_than_the_requester() {
        let olivia = user("olivia", Role::Officer, vec![1]);
        let oscar = user("Oscar", Role::Officer, vec![1]);
        let otto = user("otto", Role::Officer, vec![1]);
        let mut r = request();
        assert!(!validate(&mut r, &olivia, "tls-server", 2, 100).expect("validate"));
        assert_eq!(r.state, State::PendingApproval);
        assert_eq!(r.validations.len(), 1);
        assert_eq!(r.validations[0].method, OFFICER_ATTESTATION);
        assert!(matches!(
            approve(&mut r, &olivia, 101),
            Err(AppError::Forbidden(_))
        ));
        assert!(!approve(&mut r, &oscar, 102).expect("first approval"));
        assert!(matches!(
            approve(&mut r, &user("oscar", Role::Officer, vec![1]), 103),
            Err(AppError::Conflict(_))
        ));
        assert!(approve(&mut r, &otto, 104).expect("second approval"));
        assert_eq!(r.state, State::Approved);
        let req = issue_request(&r, 105);
        let a = req.approval.expect("evidence");
        assert_eq!(a.requested_by.as_deref(), Some("olivia"));
        assert_eq!(a.approved_by, vec!["Oscar".to_string(), "otto".to_string()]);
        assert!(matches!(
            approve(&mut r, &otto, 106),
            Err(AppError::Conflict(_))
        ));
    }

    #[test]
    fn roles_and_enterprises_bound_who_acts() {
        let mut r = request();
        let admin = user("ada", Role::Admin, vec![]);
        let auditor = user("aud", Role::Auditor, vec![]);
        let elsewhere = user("eve", Role::Officer, vec![2]);
        assert!(matches!(
            validate(&mut r, &admin, "tls-server", 1, 1),
            Err(AppError::Forbidden(_))
        ));
        assert!(matches!(
            validate(&mut r, &auditor, "tls-server", 1, 1),
            Err(AppError::Forbidden(_))
        ));
        assert!(matches!(
            validate(&mut r, &elsewhere, "tls-server", 1, 1),
            Err(AppError::NotFound(_))
        ));
        assert_eq!(r.state, State::PendingValidation);
        assert!(r.history.is_empty());
    }

    #[test]
    fn automatic_approval_and_identity_attestation() {
        let olivia = user("olivia", Role::Officer, vec![1]);
        let mut r = request();
        r.san.dns.clear();
        r.san.email = vec!["alice@example.com".into()];
        assert!(validate(&mut r, &olivia, "smime-sponsor", 0, 100).expect("validate"));
        assert_eq!(r.state, State::Approved);
        let id = r.identity.as_ref().expect("identity attested");
        assert_eq!(id.attested_by, "olivia");
        let auto = ProfileSetting {
            offered: true,
            auto_approve: true,
            approvals_required: 3,
        };
        assert_eq!(approvals_needed(&auto, None), 0);
        let manual = ProfileSetting {
            auto_approve: false,
            approvals_required: 0,
            ..auto.clone()
        };
        assert_eq!(approvals_needed(&manual, None), 1);
    }

    #[test]
    fn edits_restart_validation_and_closed_requests_stay_closed() {
        let olivia = user("olivia", Role::Officer, vec![1]);
        let oscar = user("oscar", Role::Officer, vec![1]);
        let mut r = request();
        validate(&mut r, &olivia, "tls-server", 1, 1).expect("validate");
        let mut san = r.san.clone();
        san.dns.push("api.example.com".into());
        let subject = r.subject.clone();
        edit(&mut r, &oscar, subject, san, Some(30), 2).expect("edit");
        assert_eq!(r.state, State::PendingValidation);
        assert!(r.validations.is_empty());
        reject(&mut r, &oscar, "wrong host", 3).expect("reject");
        assert!(matches!(
            cancel(&mut r, &oscar, 4),
            Err(AppError::Conflict(_))
        ));
        assert!(matches!(
            reject(&mut r, &oscar, "", 4),
            Err(AppError::BadRequest(_))
        ));
        assert_eq!(r.reject_reason.as_deref(), Some("wrong host"));
    }
}
