//! What ra-web keeps: accounts, enterprises, requests with their timeline,
//! the event log, queued mail and settings. Plain data; the rules that
//! change it live in [`crate::workflow`] and [`crate::accounts`].

use certd_api::{IdentityValidation, Subject, SubjectAltNames, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Seconds since the Unix epoch.
pub type Unix = i64;

/// What a staff account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Users, enterprises, which profiles are offered, settings.
    Admin,
    /// Create, edit, validate, approve, reject, issue and revoke within
    /// their enterprises.
    Officer,
    /// Read everything, including the event log; change nothing.
    Auditor,
}

impl Role {
    /// Every role, for forms.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Officer, Role::Auditor];

    /// Its name in forms, URLs and the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Officer => "officer",
            Role::Auditor => "auditor",
        }
    }

    /// Parses [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A second factor (RFC 6238 TOTP).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totp {
    /// The shared secret, base32.
    pub secret: String,
    /// Whether its holder has proven a code (until then it is not asked).
    pub confirmed: bool,
    /// The last time step accepted: a code is good once.
    pub last_step: u64,
}

/// A staff account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// The sign-in name, also the identifier certd sees in approvals.
    pub username: String,
    /// How pages and mails name them.
    pub display_name: String,
    /// Where their notifications go.
    pub email: Option<String>,
    /// What they may do.
    pub role: Role,
    /// The enterprises an officer works in (admins and auditors see all).
    pub enterprises: Vec<u64>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Their second factor, once enrolled.
    pub totp: Option<Totp>,
    /// Failed sign-ins since the last success.
    pub failed_logins: u32,
    /// Locked until then.
    pub locked_until: Option<Unix>,
    /// A disabled account cannot sign in.
    pub disabled: bool,
    /// Set by an admin's reset: the next sign-in must choose a new password.
    pub must_change_password: bool,
    /// When it was created.
    pub created_at: Unix,
    /// Bumped when the password changes: sessions of older generations end.
    pub generation: u32,
}

impl User {
    /// Whether they may see and act on requests of `enterprise`.
    pub fn in_enterprise(&self, enterprise: u64) -> bool {
        self.role != Role::Officer || self.enterprises.contains(&enterprise)
    }
}

/// A tenant: its own officers, requests and settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enterprise {
    /// Its number.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The certd profiles its requests may use (empty: every offered one).
    pub profiles: Vec<String>,
    /// When it was created.
    pub created_at: Unix,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its names are not all validated yet.
    PendingValidation,
    /// Validated; waiting for officers' approvals.
    PendingApproval,
    /// Approved; to be (or being) issued by certd.
    Approved,
    /// certd issued it.
    Issued,
    /// An officer refused it.
    Rejected,
    /// Withdrawn before issuance.
    Cancelled,
    /// Its certificate was revoked.
    Revoked,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 7] = [
        State::PendingValidation,
        State::PendingApproval,
        State::Approved,
        State::Issued,
        State::Rejected,
        State::Cancelled,
        State::Revoked,
    ];

    /// Its name in URLs and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            State::PendingValidation => "pending_validation",
            State::PendingApproval => "pending_approval",
            State::Approved => "approved",
            State::Issued => "issued",
            State::Rejected => "rejected",
            State::Cancelled => "cancelled",
            State::Revoked => "revoked",
        }
    }

    /// Its name for people.
    pub fn label(self) -> &'static str {
        match self {
            State::PendingValidation => "Pending validation",
            State::PendingApproval => "Pending approval",
            State::Approved => "Approved",
            State::Issued => "Issued",
            State::Rejected => "Rejected",
            State::Cancelled => "Cancelled",
            State::Revoked => "Revoked",
        }
    }

    /// Parses [`State::as_str`].
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the request can still change before issuance.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            State::PendingValidation | State::PendingApproval | State::Approved
        )
    }
}

/// One approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// The approving officer.
    pub by: String,
    /// When.
    pub at: Unix,
}

/// One step of a request's timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    /// When.
    pub at: Unix,
    /// Who (a username, or `ra-web` for its own steps).
    pub actor: String,
    /// What was done, e.g. `created`, `edited`, `approved`.
    pub action: String,
    /// The state before.
    pub from: Option<State>,
    /// The state after.
    pub to: State,
    /// What changed, or why.
    pub note: Option<String>,
}

/// A certificate request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Its number.
    pub id: u64,
    /// The identifier its requester quotes (and finds it by).
    pub pickup_id: String,
    /// The `request_id` certd sees: fixed at creation, so no retry, double
    /// click or crash can issue twice.
    pub certd_request_id: String,
    /// Its enterprise.
    pub enterprise: u64,
    /// The certd profile.
    pub profile: String,
    /// Where it stands.
    pub state: State,
    /// The CSR, PEM.
    pub csr_pem: String,
    /// "P-256", "RSA 3072", ...: for lists.
    pub key_summary: String,
    /// The subject to certify.
    pub subject: Subject,
    /// The names to certify.
    pub san: SubjectAltNames,
    /// Requested validity in days (none: the profile's maximum).
    pub validity_days: Option<u32>,
    /// The officer who created it: never one of its approvers.
    pub requester: String,
    /// Where its notifications go.
    pub notify_email: Option<String>,
    /// When it was created.
    pub created_at: Unix,
    /// When it last changed.
    pub updated_at: Unix,
    /// Validation of each name, as sent to certd.
    pub validations: Vec<Validation>,
    /// The officer's attestation of the subject's identity attributes.
    pub identity: Option<IdentityValidation>,
    /// Approvals so far.
    pub approvals: Vec<ApprovalRecord>,
    /// Approvals this request needs (fixed when it was validated).
    pub approvals_required: u32,
    /// The issued certificate's serial (hex).
    pub serial: Option<String>,
    /// The issued certificate, PEM.
    pub certificate_pem: Option<String>,
    /// Its chain, PEM.
    pub chain: Vec<String>,
    /// Its notAfter, RFC 3339.
    pub not_after: Option<String>,
    /// Why the last attempt to issue failed (the request stays approved).
    pub last_error: Option<String>,
    /// Whether that failure may pass by itself (certd unreachable, locked,
    /// rate-limited): the worker retries such requests.
    #[serde(default)]
    pub retry_automatically: bool,
    /// Why it was rejected.
    pub reject_reason: Option<String>,
    /// RFC 5280 reason and time of revocation.
    pub revocation: Option<(String, String)>,
    /// Every transition.
    pub history: Vec<Transition>,
}

impl Request {
    /// The common name, else the first SAN, else "(no name)": how lists
    /// name it.
    pub fn title(&self) -> String {
        self.subject
            .common_name
            .clone()
            .or_else(|| self.san.dns.first().cloned())
            .or_else(|| self.san.email.first().cloned())
            .or_else(|| self.san.ip.first().cloned())
            .unwrap_or_else(|| "(no name)".into())
    }

    /// The terms a search finds it by, lower-case: serial, pickup ID,
    /// names, and the words of the subject.
    pub fn search_terms(&self) -> Vec<String> {
        let mut terms = vec![
            self.pickup_id.to_ascii_lowercase(),
            format!("#{}", self.id),
            self.id.to_string(),
        ];
        if let Some(s) = &self.serial {
            terms.push(s.to_ascii_lowercase());
        }
        for n in self
            .san
            .dns
            .iter()
            .chain(&self.san.email)
            .chain(&self.san.ip)
        {
            terms.push(n.to_lowercase());
        }
        if let Some(e) = &self.notify_email {
            terms.push(e.to_lowercase());
        }
        let s = &self.subject;
        for v in [
            &s.common_name,
            &s.organization,
            &s.email,
            &s.given_name,
            &s.surname,
            &s.pseudonym,
        ]
        .into_iter()
        .flatten()
        {
            let v = v.to_lowercase();
            for w in v.split_whitespace() {
                terms.push(w.to_string());
            }
            terms.push(v);
        }
        terms.sort();
        terms.dedup();
        terms.retain(|t| !t.is_empty() && t.len() <= 256);
        terms
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Its number.
    pub id: u64,
    /// When.
    pub at: Unix,
    /// Who (a username, `-` when unknown, `ra-web` for its own).
    pub actor: String,
    /// What, e.g. `sign_in`, `sign_in_failed`, `request_approved`.
    pub kind: String,
    /// The enterprise concerned.
    pub enterprise: Option<u64>,
    /// The request concerned.
    pub request: Option<u64>,
    /// The client's address.
    pub source: Option<String>,
    /// Details.
    pub detail: String,
}

/// How a profile is handled by ra-web (certd's own rules apply on top).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProfileSetting {
    /// Offered to officers at all.
    pub offered: bool,
    /// Approved automatically once validated (when no approvals are
    /// required by certd).
    pub auto_approve: bool,
    /// Approvals by distinct officers, never the requester (at least what
    /// certd requires).
    pub approvals_required: u32,
}

impl Default for ProfileSetting {
    fn default() -> ProfileSetting {
        ProfileSetting {
            offered: true,
            auto_approve: false,
            approvals_required: 1,
        }
    }
}

/// Settings an admin changes in the application.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Officers and admins must use a second factor.
    pub require_totp: bool,
    /// Per certd profile.
    pub profiles: BTreeMap<String, ProfileSetting>,
}

impl Settings {
    /// The setting of `profile` (defaults when never set).
    pub fn profile(&self, profile: &str) -> ProfileSetting {
        self.profiles.get(profile).cloned().unwrap_or_default()
    }
}

/// Delivery state of a queued mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailState {
    /// Waiting for (another) attempt.
    Queued,
    /// Delivered to the relay or outbox.
    Sent,
    /// Given up after too many attempts.
    Failed,
}

/// A notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mail {
    /// Its number.
    pub id: u64,
    /// The request it is about.
    pub request: Option<u64>,
    /// The recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Attachments: file name, MIME type, bytes.
    pub attachments: Vec<(String, String, Vec<u8>)>,
    /// Where it stands.
    pub state: MailState,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before then.
    pub next_attempt: Unix,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Unix,
}

/// A single-purpose, expiring token (pickup links).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    /// What it allows, e.g. `pickup`.
    pub purpose: String,
    /// The request.
    pub request: u64,
    /// Good until then.
    pub expires_at: Unix,
}
