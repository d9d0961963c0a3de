//! The dashboard and the request pages: list and search, create with the
//! decoded CSR, detail with timeline, and every action on a request.

use super::{
    blocking, check_csrf, flash, render, show_time, AppError, AppState, CsrfForm, Ctx, Staff,
};
use crate::csr_view::{self, CsrView, SanKind, Severity};
use crate::model::{Enterprise, MailState, Request, Role, State, User};
use crate::store::RequestFilter;
use crate::workflow;
use askama::Template;
use axum::extract::{Multipart, Path, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use certd_api::{ProfileInfo, Subject, SubjectAltNames};
use std::collections::HashMap;

const PAGE: usize = 50;

/// A request as lists show it.
pub struct RowView {
    id: u64,
    title: String,
    profile: String,
    enterprise: String,
    state: &'static str,
    state_label: &'static str,
    pickup_id: String,
    updated: String,
    error: String,
}

fn row(r: &Request, names: &HashMap<u64, String>) -> RowView {
    RowView {
        id: r.id,
        title: r.title(),
        profile: r.profile.clone(),
        enterprise: names
            .get(&r.enterprise)
            .cloned()
            .unwrap_or_else(|| r.enterprise.to_string()),
        state: r.state.as_str(),
        state_label: r.state.label(),
        pickup_id: r.pickup_id.clone(),
        updated: show_time(r.updated_at),
        error: r.last_error.clone().unwrap_or_default(),
    }
}

async fn enterprise_names(app: &AppState) -> Result<HashMap<u64, String>, AppError> {
    let store = app.store.clone();
    let list = blocking(move || store.enterprises()).await?;
    Ok(list.into_iter().map(|e| (e.id, e.name)).collect())
}

/// The enterprises `user` works in (all for admins and auditors).
async fn visible_enterprises(app: &AppState, user: &User) -> Result<Vec<Enterprise>, AppError> {
    let store = app.store.clone();
    let all = blocking(move || store.enterprises()).await?;
    Ok(all
        .into_iter()
        .filter(|e| user.in_enterprise(e.id))
        .collect())
}

fn scope(user: &User) -> Option<Vec<u64>> {
    (user.role == Role::Officer).then(|| user.enterprises.clone())
}

// --- dashboard ---------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    ctx: Ctx,
    waiting: Vec<RowView>,
    stuck: Vec<RowView>,
    failed_mail: usize,
    certd_error: Option<String>,
    certifiers: Vec<(String, String, Option<String>)>,
}

pub async fn dashboard(
    AxState(app): AxState<AppState>,
    staff: Staff,
) -> Result<Response, AppError> {
    let names = enterprise_names(&app).await?;
    let user = staff.user.clone();
    let store = app.store.clone();
    let (pending, approved, failed_mail) = blocking(move || {
        let f = |state| RequestFilter {
            enterprises: scope(&user),
            state: Some(state),
            ..Default::default()
        };
        let pending = store.requests(&f(State::PendingApproval), 200)?.items;
        let approved = store.requests(&f(State::Approved), 200)?.items;
        let failed = store.mails(|m| m.state == MailState::Failed)?.len();
        Ok((pending, approved, failed))
    })
    .await?;
    let me = staff.user.username.to_ascii_lowercase();
    let waiting = if staff.user.role == Role::Officer {
        pending
            .iter()
            .filter(|r| {
                r.requester.to_ascii_lowercase() != me
                    && !r.approvals.iter().any(|a| a.by.to_ascii_lowercase() == me)
            })
            .map(|r| row(r, &names))
            .collect()
    } else {
        Vec::new()
    };
    let stuck = approved
        .iter()
        .filter(|r| r.last_error.is_some())
        .map(|r| row(r, &names))
        .collect();
    let (certifiers, certd_error) = match app.certd.health().await {
        Ok(h) => (
            h.certifiers
                .into_iter()
                .map(|c| (c.name, c.state, c.reason))
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(render(&Dashboard {
        ctx: staff.ctx,
        waiting,
        stuck,
        failed_mail,
        certd_error,
        certifiers,
    }))
}

// --- list --------------------------------------------------------------------

#[derive(Template)]
#[template(path = "requests.html")]
struct ListPage {
    ctx: Ctx,
    rows: Vec<RowView>,
    q: String,
    state: String,
    profile: String,
    enterprise: String,
    states: Vec<(&'static str, &'static str)>,
    profiles: Vec<String>,
    enterprises: Vec<(u64, String)>,
    next: Option<String>,
}

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    profile: String,
    #[serde(default)]
    enterprise: String,
    before: Option<u64>,
}

pub async fn list(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Query(q): Query<ListQuery>,
) -> Result<Response, AppError> {
    let state = match q.state.as_str() {
        "" => None,
        s => Some(
            State::parse(s).ok_or_else(|| AppError::BadRequest(format!("unknown state {s:?}")))?,
        ),
    };
    let enterprises = visible_enterprises(&app, &staff.user).await?;
    let mut scope_ids = scope(&staff.user);
    if !q.enterprise.is_empty() {
        let e: u64 = q
            .enterprise
            .parse()
            .map_err(|_| AppError::BadRequest(format!("unknown enterprise {:?}", q.enterprise)))?;
        if !staff.user.in_enterprise(e) {
            return Err(AppError::NotFound(format!("enterprise {e} not found")));
        }
        scope_ids = Some(vec![e]);
    }
    let filter = RequestFilter {
        enterprises: scope_ids,
        state,
        profile: (!q.profile.is_empty()).then(|| q.profile.clone()),
        search: (!q.q.trim().is_empty()).then(|| q.q.trim().to_string()),
        before: q.before,
    };
    let store = app.store.clone();
    let page = blocking(move || store.requests(&filter, PAGE)).await?;
    let names: HashMap<u64, String> = enterprises.iter().map(|e| (e.id, e.name.clone())).collect();
    let next = page.next.map(|before| {
        let qs = serde_html_form::to_string([
            ("q", q.q.as_str()),
            ("state", q.state.as_str()),
            ("profile", q.profile.as_str()),
            ("enterprise", q.enterprise.as_str()),
            ("before", &before.to_string()),
        ])
        .unwrap_or_default();
        format!("/requests?{qs}")
    });
    let mut profiles: Vec<String> = app
        .profiles()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.name)
        .collect();
    if !q.profile.is_empty() && !profiles.contains(&q.profile) {
        profiles.push(q.profile.clone());
    }
    Ok(render(&ListPage {
        ctx: staff.ctx,
        rows: page.items.iter().map(|r| row(r, &names)).collect(),
        q: q.q,
        state: q.state,
        profile: q.profile,
        enterprise: q.enterprise,
        states: State::ALL.iter().map(|s| (s.as_str(), s.label())).collect(),
        profiles,
        enterprises: enterprises.into_iter().map(|e| (e.id, e.name)).collect(),
        next,
    }))
}

// --- the decoded CSR -----------------------------------------------------------

/// The decoded CSR as pages show it.
pub struct CsrShow {
    subject: String,
    sans: Vec<String>,
    key: String,
    signature: String,
    extensions: Vec<String>,
    problems: Vec<(&'static str, String, String)>,
}

fn show_csr(v: &CsrView) -> CsrShow {
    CsrShow {
        subject: if v.subject.is_empty() {
            "(empty)".into()
        } else {
            v.subject.clone()
        },
        sans: v
            .sans
            .iter()
            .map(|s| format!("{}: {}", serde_plain(&s.kind), s.value))
            .collect(),
        key: match (v.public_key.bits, v.public_key.rsa_exponent) {
            (Some(b), Some(e)) => format!("{} {b} bits, exponent {e}", v.public_key.name),
            (Some(b), None) => format!("{} ({b} bits)", v.public_key.name),
            _ => v.public_key.name.clone(),
        },
        signature: v.signature_algorithm.clone(),
        extensions: v
            .extensions
            .iter()
            .map(|e| {
                format!(
                    "{}{}: {}",
                    e.name.clone().unwrap_or_else(|| e.oid.clone()),
                    if e.critical { " (critical)" } else { "" },
                    e.summary
                )
            })
            .collect(),
        problems: v
            .problems
            .iter()
            .map(|p| {
                (
                    if p.severity == Severity::Error {
                        "error"
                    } else {
                        "warning"
                    },
                    serde_plain(&p.code),
                    p.message.clone(),
                )
            })
            .collect(),
    }
}

fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The subject and names a request starts with: the CSR's.
fn names_of(v: &CsrView) -> (Subject, SubjectAltNames) {
    let mut s = Subject::default();
    for a in &v.subject_attributes {
        let slot = match a.name.as_str() {
            "CN" => &mut s.common_name,
            "O" => &mut s.organization,
            "OU" => &mut s.organizational_unit,
            "L" => &mut s.locality,
            "ST" => &mut s.state,
            "C" => &mut s.country,
            "emailAddress" => &mut s.email,
            "GN" => &mut s.given_name,
            "SN" => &mut s.surname,
            "pseudonym" => &mut s.pseudonym,
            "organizationIdentifier" => &mut s.organization_identifier,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(a.value.clone());
        }
    }
    let mut san = SubjectAltNames::default();
    for n in &v.sans {
        match n.kind {
            SanKind::Dns => san.dns.push(n.value.to_ascii_lowercase()),
            SanKind::Email => san.email.push(n.value.clone()),
            SanKind::Ip => san.ip.push(n.value.clone()),
            _ => {}
        }
    }
    (s, san)
}

// --- create ------------------------------------------------------------------

#[derive(Default, Clone)]
pub struct NewForm {
    enterprise: String,
    profile: String,
    csr: String,
    notify_email: String,
    validity_days: String,
}

#[derive(Template)]
#[template(path = "request_new.html")]
struct NewPage {
    ctx: Ctx,
    form: NewForm,
    enterprises: Vec<(u64, String)>,
    profiles: Vec<(String, String)>,
    view: Option<CsrShow>,
    error: Option<String>,
    csr_error: Option<String>,
    email_error: Option<String>,
    validity_error: Option<String>,
}

/// The profiles an officer may choose for `enterprise`: granted by certd,
/// offered by the admin, allowed for the enterprise.
async fn offered(
    app: &AppState,
    enterprise: Option<&Enterprise>,
) -> Result<Vec<ProfileInfo>, AppError> {
    let granted = app.profiles().await.map_err(|e| {
        AppError::Unavailable(format!("certd cannot be reached to list its profiles: {e}"))
    })?;
    let store = app.store.clone();
    let settings = blocking(move || store.settings()).await?;
    Ok(granted
        .into_iter()
        .filter(|p| settings.profile(&p.name).offered)
        .filter(|p| {
            enterprise.is_none_or(|e| e.profiles.is_empty() || e.profiles.contains(&p.name))
        })
        .collect())
}

async fn new_page_with(
    app: &AppState,
    staff: &Staff,
    form: NewForm,
    mut page: impl FnMut(&mut NewPage),
) -> Result<NewPage, AppError> {
    let enterprises = visible_enterprises(app, &staff.user).await?;
    if enterprises.is_empty() {
        return Err(AppError::Forbidden(
            "you are in no enterprise yet: ask an admin to add you to one".into(),
        ));
    }
    let profiles = offered(app, None).await?;
    let mut p = NewPage {
        ctx: staff.ctx.clone(),
        form,
        enterprises: enterprises.into_iter().map(|e| (e.id, e.name)).collect(),
        profiles: profiles.into_iter().map(|p| (p.name, p.kind)).collect(),
        view: None,
        error: None,
        csr_error: None,
        email_error: None,
        validity_error: None,
    };
    page(&mut p);
    Ok(p)
}

pub async fn new_page(AxState(app): AxState<AppState>, staff: Staff) -> Result<Response, AppError> {
    staff.require(Role::Officer)?;
    let page = new_page_with(&app, &staff, NewForm::default(), |_| {}).await?;
    Ok(render(&page))
}

/// Reads the multipart form of a new request (checking its CSRF token).
async fn read_new_form(
    staff: &Staff,
    mut mp: Multipart,
) -> Result<(NewForm, String, Vec<u8>), AppError> {
    let mut form = NewForm::default();
    let mut action = String::new();
    let mut file = Vec::new();
    let mut csrf = None;
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(format!(
                "the upload is larger than {} KiB: a CSR is a few KiB; upload the CSR file itself",
                csr_view::MAX_INPUT / 1024
            ))
        } else {
            AppError::BadRequest(format!("the form could not be read: {e}"))
        }
    };
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "csr_file" {
            file = field.bytes().await.map_err(bad)?.to_vec();
            continue;
        }
        let text = field.text().await.map_err(bad)?;
        match name.as_str() {
            "csrf" => csrf = Some(text),
            "enterprise" => form.enterprise = text,
            "profile" => form.profile = text,
            "csr" => form.csr = text,
            "notify_email" => form.notify_email = text.trim().to_string(),
            "validity_days" => form.validity_days = text.trim().to_string(),
            "action" => action = text,
            _ => {}
        }
    }
    check_csrf(&staff.session, csrf.as_deref().unwrap_or_default()).await?;
    Ok((form, action, file))
}

pub async fn create(
    AxState(app): AxState<AppState>,
    staff: Staff,
    mp: Multipart,
) -> Result<Response, AppError> {
    staff.require(Role::Officer)?;
    let (mut form, action, file) = read_new_form(&staff, mp).await?;
    let input: Vec<u8> = if !file.is_empty() {
        file
    } else {
        form.csr.trim().as_bytes().to_vec()
    };
    let invalid = |page: NewPage| (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response();
    let enterprise_id: u64 = form.enterprise.parse().unwrap_or(0);
    let store = app.store.clone();
    let enterprise = blocking(move || store.enterprise(enterprise_id))
        .await?
        .filter(|e| staff.user.in_enterprise(e.id))
        .ok_or_else(|| AppError::NotFound("choose one of your enterprises".into()))?;
    let profiles = offered(&app, Some(&enterprise)).await?;
    let Some(profile) = profiles.iter().find(|p| p.name == form.profile).cloned() else {
        let msg = format!(
            "profile {:?} is not offered to {}: choose one of the list",
            form.profile, enterprise.name
        );
        return Ok(invalid(
            new_page_with(&app, &staff, form, |p| p.error = Some(msg.clone())).await?,
        ));
    };
    if input.is_empty() {
        return Ok(invalid(
            new_page_with(&app, &staff, form, |p| {
                p.csr_error = Some("paste the CSR or choose its file".into())
            })
            .await?,
        ));
    }
    let (view, pem) =
        match csr_view::decode_csr(&input).and_then(|v| Ok((v, csr_view::csr_pem(&input)?))) {
            Ok(x) => x,
            Err(e) => {
                let msg = e.to_string();
                return Ok(invalid(
                    new_page_with(&app, &staff, form, |p| p.csr_error = Some(msg.clone())).await?,
                ));
            }
        };
    form.csr = pem.clone();
    let shown = show_csr(&view);
    let email_error = if form.notify_email.is_empty() {
        None
    } else {
        certd_api::names::check_email(&form.notify_email)
            .err()
            .map(|e| format!("{e}: correct the address or leave it empty"))
    };
    let validity = match form.validity_days.as_str() {
        "" => Ok(None),
        v => match v.parse::<u32>() {
            Ok(d) if (1..=profile.max_validity_days).contains(&d) => Ok(Some(d)),
            _ => Err(format!(
                "give a number of days from 1 to {} (the profile's maximum), or leave it empty",
                profile.max_validity_days
            )),
        },
    };
    let validity_error = validity.as_ref().err().cloned();
    if action != "submit" || view.has_errors() || email_error.is_some() || validity_error.is_some()
    {
        let status = if action == "submit" {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        let has_errors = view.has_errors();
        let page = new_page_with(&app, &staff, form, |p| {
            p.view = Some(CsrShow { ..show_csr(&view) });
            p.email_error = email_error.clone();
            p.validity_error = validity_error.clone();
            if has_errors {
                p.csr_error = Some("certd would refuse this CSR: see the problems below".into());
            }
        })
        .await?;
        let _ = shown;
        return Ok((status, render(&page)).into_response());
    }
    let (subject, san) = names_of(&view);
    let now = app.now();
    let user = staff.user.clone();
    let key_summary = show_csr(&view).key;
    let notify = (!form.notify_email.is_empty()).then(|| form.notify_email.clone());
    let store = app.store.clone();
    let created = blocking(move || {
        store.create_request(|id| Request {
            id,
            pickup_id: pickup_id(),
            certd_request_id: format!("ra-web-{}", super::random_token(16)),
            enterprise: enterprise.id,
            profile: profile.name.clone(),
            state: State::PendingValidation,
            csr_pem: pem,
            key_summary,
            subject,
            san,
            validity_days: validity.ok().flatten(),
            requester: user.username.clone(),
            notify_email: notify,
            created_at: now,
            updated_at: now,
            validations: Vec::new(),
            identity: None,
            approvals: Vec::new(),
            approvals_required: 0,
            serial: None,
            certificate_pem: None,
            chain: Vec::new(),
            not_after: None,
            last_error: None,
            retry_automatically: false,
            reject_reason: None,
            revocation: None,
            history: vec![crate::model::Transition {
                at: now,
                actor: user.username.clone(),
                action: "created".into(),
                from: None,
                to: State::PendingValidation,
                note: None,
            }],
        })
    })
    .await?;
    app.event(
        &staff.user.username,
        "request_created",
        Some(created.enterprise),
        Some(created.id),
        staff.source.clone(),
        format!("{} for {}", created.profile, created.title()),
    )
    .await;
    crate::notify::request_received(&app, &created).await;
    flash(
        &staff.session,
        format!("Request #{} created: validate its names next.", created.id),
    )
    .await;
    Ok(Redirect::to(&format!("/requests/{}", created.id)).into_response())
}

/// A pickup ID: 10 characters of Crockford base32 (50 bits), grouped.
fn pickup_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut b = [0u8; 10];
    getrandom::fill(&mut b).expect("the OS random number generator");
    let s: String = b
        .iter()
        .map(|x| ALPHABET[usize::from(x & 31)] as char)
        .collect();
    format!("{}-{}", &s[..5], &s[5..])
}

// --- detail ------------------------------------------------------------------

/// A request as its page shows it.
pub struct DetailView {
    id: u64,
    title: String,
    state: &'static str,
    state_label: &'static str,
    pickup_id: String,
    enterprise: String,
    profile: String,
    last_error: Option<String>,
    reject_reason: Option<String>,
    subject: String,
    dns: String,
    emails: String,
    ips: String,
    key: String,
    validity: String,
    requester: String,
    notify: String,
    approvals: String,
    validations: Vec<String>,
}

/// The issued certificate.
pub struct CertShow {
    serial: String,
    not_after: String,
    revoked: Option<String>,
}

/// What the signed-in user may do here.
#[derive(Default)]
pub struct Actions {
    validate: bool,
    identity: bool,
    approve: bool,
    retry: bool,
    reject: bool,
    revoke: bool,
    edit: bool,
}

impl Actions {
    fn any(&self) -> bool {
        self.validate || self.approve || self.retry || self.reject || self.revoke
    }
}

/// The edit form's values.
#[derive(Default, serde::Deserialize)]
pub struct EditForm {
    #[serde(default)]
    common_name: String,
    #[serde(default)]
    organization: String,
    #[serde(default)]
    organizational_unit: String,
    #[serde(default)]
    locality: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    given_name: String,
    #[serde(default)]
    surname: String,
    #[serde(default)]
    dns: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    validity_days: String,
}

/// One timeline line.
pub struct TimelineRow {
    at: String,
    actor: String,
    action: String,
    change: Option<String>,
    note: Option<String>,
}

#[derive(Template)]
#[template(path = "request.html")]
struct DetailPage {
    ctx: Ctx,
    ctx_name: String,
    r: DetailView,
    cert: Option<CertShow>,
    actions: Actions,
    revocation_reasons: Vec<&'static str>,
    edit: EditForm,
    edit_error: Option<String>,
    max_validity: String,
    mails: Vec<(String, String, String)>,
    timeline: Vec<TimelineRow>,
    v: CsrShow,
}

fn join(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn subject_text(s: &Subject) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("CN", &s.common_name),
        ("GN", &s.given_name),
        ("SN", &s.surname),
        ("pseudonym", &s.pseudonym),
        ("emailAddress", &s.email),
        ("OU", &s.organizational_unit),
        ("O", &s.organization),
        ("organizationIdentifier", &s.organization_identifier),
        ("L", &s.locality),
        ("ST", &s.state),
        ("C", &s.country),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    if parts.is_empty() {
        "(empty: names only in the SANs)".into()
    } else {
        parts.join(", ")
    }
}

async fn load_visible(app: &AppState, user: &User, id: u64) -> Result<Request, AppError> {
    let store = app.store.clone();
    blocking(move || store.request(id))
        .await?
        .filter(|r| user.in_enterprise(r.enterprise))
        .ok_or_else(|| AppError::NotFound(format!("request {id} not found")))
}

fn edit_form_of(r: &Request) -> EditForm {
    let s = &r.subject;
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    EditForm {
        common_name: o(&s.common_name),
        organization: o(&s.organization),
        organizational_unit: o(&s.organizational_unit),
        locality: o(&s.locality),
        state: o(&s.state),
        country: o(&s.country),
        given_name: o(&s.given_name),
        surname: o(&s.surname),
        dns: r.san.dns.join("\n"),
        email: r.san.email.join("\n"),
        ip: r.san.ip.join("\n"),
        validity_days: r.validity_days.map(|d| d.to_string()).unwrap_or_default(),
    }
}

async fn detail_page(
    app: &AppState,
    staff: &Staff,
    r: Request,
    edit: Option<(EditForm, String)>,
) -> Result<DetailPage, AppError> {
    let names = enterprise_names(app).await?;
    let profiles = app.profiles().await.unwrap_or_default();
    let profile = profiles.iter().find(|p| p.name == r.profile);
    let kind = profile.map(|p| p.kind.clone()).unwrap_or_default();
    let store = app.store.clone();
    let id = r.id;
    let mails = blocking(move || store.mail_for_request(id)).await?;
    let me = staff.user.username.to_ascii_lowercase();
    let officer = staff.user.role == Role::Officer;
    let actions = Actions {
        validate: officer && r.state == State::PendingValidation,
        identity: workflow::needs_identity(&kind),
        approve: officer
            && r.state == State::PendingApproval
            && r.requester.to_ascii_lowercase() != me
            && !r.approvals.iter().any(|a| a.by.to_ascii_lowercase() == me),
        retry: officer && r.state == State::Approved,
        reject: officer && r.state.is_open(),
        revoke: officer && r.state == State::Issued,
        edit: officer && matches!(r.state, State::PendingValidation | State::PendingApproval),
    };
    let view = csr_view::decode_csr(r.csr_pem.as_bytes())
        .map(|v| show_csr(&v))
        .map_err(|e| AppError::Internal(format!("stored CSR of request {}: {e}", r.id)))?;
    let cert = r.serial.as_ref().map(|serial| CertShow {
        serial: serial.clone(),
        not_after: r.not_after.clone().unwrap_or_default(),
        revoked: r
            .revocation
            .as_ref()
            .map(|(reason, at)| format!("{at} ({reason})")),
    });
    let (edit, edit_error) = match edit {
        Some((f, e)) => (f, Some(e)),
        None => (edit_form_of(&r), None),
    };
    Ok(DetailPage {
        ctx: staff.ctx.clone(),
        ctx_name: staff.user.display_name.clone(),
        r: DetailView {
            id: r.id,
            title: r.title(),
            state: r.state.as_str(),
            state_label: r.state.label(),
            pickup_id: r.pickup_id.clone(),
            enterprise: names.get(&r.enterprise).cloned().unwrap_or_default(),
            profile: r.profile.clone(),
            last_error: r.last_error.clone(),
            reject_reason: r.reject_reason.clone(),
            subject: subject_text(&r.subject),
            dns: join(&r.san.dns),
            emails: join(&r.san.email),
            ips: join(&r.san.ip),
            key: r.key_summary.clone(),
            validity: r
                .validity_days
                .map(|d| format!("{d} days"))
                .unwrap_or_else(|| "the profile's maximum".into()),
            requester: r.requester.clone(),
            notify: r.notify_email.clone().unwrap_or_else(|| "nobody".into()),
            approvals: format!(
                "{} of {}{}",
                r.approvals.len(),
                r.approvals_required,
                if r.approvals.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        r.approvals
                            .iter()
                            .map(|a| a.by.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
            validations: r
                .validations
                .iter()
                .map(|v| format!("{}: {} at {}", v.name, v.method, v.checked_at))
                .chain(r.identity.iter().map(|i| {
                    format!(
                        "identity: {} by {} at {}",
                        i.method, i.attested_by, i.checked_at
                    )
                }))
                .collect(),
        },
        cert,
        actions,
        revocation_reasons: workflow::revocation_reasons(),
        edit,
        edit_error,
        max_validity: profile
            .map(|p| format!("{} days", p.max_validity_days))
            .unwrap_or_default(),
        mails: mails
            .into_iter()
            .map(|m| {
                let state = match m.state {
                    MailState::Sent => "sent".to_string(),
                    MailState::Queued => match &m.last_error {
                        Some(e) => format!("queued, retrying ({} attempts): {e}", m.attempts),
                        None => "queued".into(),
                    },
                    MailState::Failed => format!("failed: {}", m.last_error.unwrap_or_default()),
                };
                (m.to, m.subject, state)
            })
            .collect(),
        timeline: r
            .history
            .iter()
            .map(|t| TimelineRow {
                at: show_time(t.at),
                actor: t.actor.clone(),
                action: t.action.clone(),
                change: match t.from {
                    Some(f) if f != t.to => Some(format!("{} → {}", f.label(), t.to.label())),
                    None => Some(t.to.label().to_string()),
                    _ => None,
                },
                note: t.note.clone(),
            })
            .collect(),
        v: view,
    })
}

pub async fn detail(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
) -> Result<Response, AppError> {
    let r = load_visible(&app, &staff.user, id).await?;
    Ok(render(&detail_page(&app, &staff, r, None).await?))
}

// --- actions -----------------------------------------------------------------

/// Applies `f` to request `id` as `staff`, records the event, and returns
/// the request as stored.
async fn act<T: Send + 'static>(
    app: &AppState,
    staff: &Staff,
    id: u64,
    kind: &'static str,
    f: impl FnOnce(&mut Request, &User, i64) -> Result<T, AppError> + Send + 'static,
) -> Result<(Request, T), AppError> {
    let now = app.now();
    let user = staff.user.clone();
    let store = app.store.clone();
    let out = tokio::task::spawn_blocking(move || {
        store.update_request_then(
            id,
            |r| {
                if !user.in_enterprise(r.enterprise) {
                    return Err(AppError::NotFound(format!("request {id} not found")));
                }
                f(r, &user, now)
            },
            |_| true,
        )
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?;
    match out {
        Ok((r, t)) => {
            let note = r
                .history
                .last()
                .and_then(|t| t.note.clone())
                .unwrap_or_default();
            app.request_event(
                &staff.user.username,
                kind,
                Some(r.enterprise),
                Some(r.id),
                staff.source.clone(),
                note,
            )
            .await;
            Ok((r, t))
        }
        Err(e) => {
            app.event(
                &staff.user.username,
                "action_refused",
                None,
                Some(id),
                staff.source.clone(),
                format!("{kind}: {e}"),
            )
            .await;
            Err(e)
        }
    }
}

fn to_detail(id: u64) -> Response {
    Redirect::to(&format!("/requests/{id}")).into_response()
}

pub async fn validate(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
    CsrfForm(form): CsrfForm<HashMap<String, String>>,
) -> Result<Response, AppError> {
    if form.get("attest").map(String::as_str) != Some("yes") {
        return Err(AppError::BadRequest(
            "tick the statement that you validated the names: it is recorded under your name"
                .into(),
        ));
    }
    let r = load_visible(&app, &staff.user, id).await?;
    let profiles = app.profiles().await.map_err(|e| {
        AppError::Unavailable(format!(
            "certd cannot be reached to read the profile's rules: {e}"
        ))
    })?;
    let info = profiles.iter().find(|p| p.name == r.profile).cloned();
    let Some(info) = info else {
        return Err(AppError::Conflict(format!(
            "certd no longer grants profile {:?} to this RA: reject or cancel the request",
            r.profile
        )));
    };
    let store = app.store.clone();
    let settings = blocking(move || store.settings()).await?;
    let needed = workflow::approvals_needed(&settings.profile(&r.profile), Some(&info));
    let (r, approved) = act(&app, &staff, id, "request_validated", move |r, u, now| {
        workflow::validate(r, u, &info.kind, needed, now)
    })
    .await?;
    if approved {
        app.event(
            "ra-web",
            "request_approved",
            Some(r.enterprise),
            Some(r.id),
            None,
            "approved automatically",
        )
        .await;
        crate::issuer::issue(&app, r.id, "ra-web").await;
    }
    flash(&staff.session, "Validation recorded.").await;
    Ok(to_detail(id))
}

pub async fn approve(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
    CsrfForm(_): CsrfForm<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let (r, approved) = act(&app, &staff, id, "request_approved", workflow::approve).await?;
    if approved {
        let r = crate::issuer::issue(&app, r.id, &staff.user.username).await;
        match r.map(|r| r.state) {
            Some(State::Issued) => flash(&staff.session, "Approved and issued.").await,
            _ => {
                flash(
                    &staff.session,
                    "Approved; issuance did not succeed yet (see the reason).",
                )
                .await
            }
        }
    } else {
        flash(
            &staff.session,
            "Approval recorded; more approvals are needed.",
        )
        .await;
    }
    Ok(to_detail(id))
}

pub async fn issue_now(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
    CsrfForm(_): CsrfForm<HashMap<String, String>>,
) -> Result<Response, AppError> {
    staff.require(Role::Officer)?;
    let r = load_visible(&app, &staff.user, id).await?;
    if r.state == State::Issued {
        // A second click, or the retry worker was quicker: nothing to do.
        flash(&staff.session, "Issued already.").await;
        return Ok(to_detail(id));
    }
    if r.state != State::Approved {
        return Err(AppError::Conflict(format!(
            "request {id} is {}, not approved",
            r.state.label().to_lowercase()
        )));
    }
    match crate::issuer::issue(&app, id, &staff.user.username)
        .await
        .map(|r| r.state)
    {
        Some(State::Issued) => flash(&staff.session, "Issued.").await,
        _ => {
            flash(
                &staff.session,
                "Issuance did not succeed (see the reason); the request stays approved.",
            )
            .await
        }
    }
    Ok(to_detail(id))
}

pub async fn reject(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
    CsrfForm(form): CsrfForm<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let reason = form.get("reason").cloned().unwrap_or_default();
    let (r, ()) = act(&app, &staff, id, "request_rejected", move |r, u, now| {
        workflow::reject(r, u, &reason, now)
    })
    .await?;
    crate::notify::rejected(&app, &r).await;
    flash(&staff.session, "Request rejected.").await;
    Ok(to_detail(id))
}

pub async fn cancel(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
    CsrfForm(_): CsrfForm<HashMap<String, String>>,
) -> Result<Response, AppError> {
    act(&app, &staff, id, "request_cancelled", workflow::cancel).await?;
    flash(&staff.session, "Request cancelled.").await;
    Ok(to_detail(id))
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Checks the edit form against certd's name syntax and the profile's
/// maximum validity.
fn parse_edit(
    f: &EditForm,
    max_validity: u32,
) -> Result<(Subject, SubjectAltNames, Option<u32>), String> {
    let dns: Vec<String> = lines(&f.dns)
        .into_iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    for d in &dns {
        certd_api::names::check_dns_name(d, true)?;
    }
    let email = lines(&f.email);
    for e in &email {
        certd_api::names::check_email(e)?;
    }
    let ip = lines(&f.ip);
    for i in &ip {
        i.parse::<std::net::IpAddr>()
            .map_err(|_| format!("{i:?} is not an IP address"))?;
    }
    // S/MIME: a mailbox's domain must be one of the DNS names when both
    // are given.
    if !dns.is_empty() {
        for e in &email {
            let domain = e
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            if !dns.contains(&domain) {
                return Err(format!(
                    "the domain of {e} is not among the DNS names: add it, or remove the DNS names"
                ));
            }
        }
    }
    let country = opt(&f.country).map(|c| c.to_ascii_uppercase());
    if let Some(c) = &country {
        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "country {c:?} must be a two-letter ISO 3166 code, e.g. DE"
            ));
        }
    }
    let subject = Subject {
        common_name: opt(&f.common_name),
        organization: opt(&f.organization),
        organizational_unit: opt(&f.organizational_unit),
        locality: opt(&f.locality),
        state: opt(&f.state),
        country,
        given_name: opt(&f.given_name),
        surname: opt(&f.surname),
        ..Subject::default()
    };
    for v in [
        &subject.common_name,
        &subject.organization,
        &subject.organizational_unit,
        &subject.locality,
        &subject.state,
        &subject.given_name,
        &subject.surname,
    ]
    .into_iter()
    .flatten()
    {
        if v.chars().count() > 64 {
            return Err(format!(
                "{v:?} is longer than the 64 characters a subject attribute may have"
            ));
        }
    }
    if dns.is_empty() && email.is_empty() && ip.is_empty() && subject.common_name.is_none() {
        return Err(
            "give at least one name: a DNS name, mail address, IP address or common name".into(),
        );
    }
    let validity = match f.validity_days.trim() {
        "" => None,
        v => match v.parse::<u32>() {
            Ok(d) if (1..=max_validity).contains(&d) => Some(d),
            _ => {
                return Err(format!(
                    "validity: give 1 to {max_validity} days, or leave it empty"
                ))
            }
        },
    };
    Ok((subject, SubjectAltNames { dns, email, ip }, validity))
}

pub async fn edit(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
    CsrfForm(form): CsrfForm<EditForm>,
) -> Result<Response, AppError> {
    staff.require(Role::Officer)?;
    let r = load_visible(&app, &staff.user, id).await?;
    let max = app
        .profiles()
        .await
        .ok()
        .and_then(|ps| ps.into_iter().find(|p| p.name == r.profile))
        .map_or(397, |p| p.max_validity_days);
    // Keep attributes the form does not edit (pseudonym, organization
    // identifier, email in the subject).
    let keep = r.subject.clone();
    match parse_edit(&form, max) {
        Err(msg) => {
            let page = detail_page(&app, &staff, r, Some((form, msg))).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Ok((mut subject, san, validity)) => {
            subject.pseudonym = keep.pseudonym;
            subject.organization_identifier = keep.organization_identifier;
            subject.email = keep.email;
            act(&app, &staff, id, "request_edited", move |r, u, now| {
                workflow::edit(r, u, subject, san, validity, now)
            })
            .await?;
            flash(&staff.session, "Changes saved; validate the request again.").await;
            Ok(to_detail(id))
        }
    }
}

pub async fn revoke(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(id): Path<u64>,
    CsrfForm(form): CsrfForm<HashMap<String, String>>,
) -> Result<Response, AppError> {
    staff.require(Role::Officer)?;
    let reason = form.get("reason").cloned().unwrap_or_default();
    if certd_api::reason_code(&reason).is_none() {
        return Err(AppError::BadRequest(format!(
            "{reason:?} is not a revocation reason: choose one of the list"
        )));
    }
    let r = load_visible(&app, &staff.user, id).await?;
    let (State::Issued, Some(serial)) = (r.state, r.serial.clone()) else {
        return Err(AppError::Conflict(format!(
            "request {id} has no valid certificate to revoke"
        )));
    };
    // certd is the source of truth: revoke there first, then record.
    let info = match app.certd.revoke(&serial, &reason).await {
        Ok(info) => info,
        Err(e) => {
            app.event(
                &staff.user.username,
                "revocation_failed",
                Some(r.enterprise),
                Some(id),
                staff.source.clone(),
                e.to_string(),
            )
            .await;
            return Err(if e.is_transient() {
                AppError::Unavailable(format!(
                    "certd could not revoke the certificate now ({e}): try again"
                ))
            } else {
                AppError::Conflict(format!("certd refused the revocation: {e}"))
            });
        }
    };
    app.publication.invalidate(&info.certifier).await;
    let at = info.revoked_at.clone().unwrap_or_default();
    let reason2 = info.revocation_reason.clone().unwrap_or(reason);
    act(&app, &staff, id, "certificate_revoked", move |r, u, now| {
        if r.state != State::Issued {
            return Err(AppError::Conflict("the request changed meanwhile".into()));
        }
        workflow::revoked(r, &u.username, &reason2, &at, now);
        Ok(())
    })
    .await?;
    flash(&staff.session, "Certificate revoked.").await;
    Ok(to_detail(id))
}

/// `certificate.pem` (with chain), `certificate.der`, `certificate.p7b`.
pub async fn download(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path((id, file)): Path<(u64, String)>,
) -> Result<Response, AppError> {
    let r = load_visible(&app, &staff.user, id).await?;
    certificate_file(&r, &file)
}

/// The certificate of `r` as `certificate.pem` (with chain),
/// `certificate.der` or `certificate.p7b` (with chain).
pub fn certificate_file(r: &Request, file: &str) -> Result<Response, AppError> {
    let id = r.id;
    let Some(pem) = r.certificate_pem.as_deref() else {
        return Err(AppError::NotFound(format!(
            "request {id} has no certificate yet"
        )));
    };
    let fmt = |e: ra_core::formats::FormatError| AppError::Internal(e.to_string());
    let name = format!("request-{id}");
    let (body, ctype, ext) = match file {
        "certificate.pem" => (
            ra_core::formats::pem_bundle(pem, &r.chain).into_bytes(),
            "application/pem-certificate-chain",
            "pem",
        ),
        "certificate.der" => (
            ra_core::formats::pem_to_der(pem).map_err(fmt)?,
            "application/pkix-cert",
            "cer",
        ),
        "certificate.p7b" => (
            ra_core::formats::p7b(&ra_core::formats::chain_der(pem, &r.chain).map_err(fmt)?)
                .map_err(fmt)?,
            "application/pkcs7-mime",
            "p7b",
        ),
        _ => return Err(AppError::NotFound(format!("no file {file:?}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}
