//! The admin's pages: users, enterprises and settings.

use super::{blocking, flash, render, AppError, AppState, CsrfForm, Ctx, Staff};
use crate::accounts;
use crate::model::{ProfileSetting, Role, Settings};
use askama::Template;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::{BTreeMap, HashMap};
use zeroize::Zeroizing;

/// A user as the list shows them.
pub struct UserRow {
    username: String,
    display_name: String,
    role: &'static str,
    enterprises: String,
    totp: &'static str,
    state: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    ctx: Ctx,
    users: Vec<UserRow>,
    roles: Vec<&'static str>,
    enterprises: Vec<(u64, String)>,
    error: Option<String>,
}

async fn users_page(
    app: &AppState,
    staff: &Staff,
    error: Option<String>,
) -> Result<UsersPage, AppError> {
    let store = app.store.clone();
    let (users, enterprises) = blocking(move || Ok((store.users()?, store.enterprises()?))).await?;
    let names: HashMap<u64, String> = enterprises.iter().map(|e| (e.id, e.name.clone())).collect();
    let now = app.now();
    Ok(UsersPage {
        ctx: staff.ctx.clone(),
        users: users
            .into_iter()
            .map(|u| UserRow {
                enterprises: u
                    .enterprises
                    .iter()
                    .filter_map(|e| names.get(e).cloned())
                    .collect::<Vec<_>>()
                    .join(", "),
                totp: match &u.totp {
                    Some(t) if t.confirmed => "enrolled",
                    _ => "none",
                },
                state: if u.disabled {
                    "disabled".into()
                } else if u.locked_until.is_some_and(|t| t > now) {
                    "locked".into()
                } else {
                    "active".into()
                },
                username: u.username,
                display_name: u.display_name,
                role: u.role.as_str(),
            })
            .collect(),
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        enterprises: enterprises.into_iter().map(|e| (e.id, e.name)).collect(),
        error,
    })
}

pub async fn users(AxState(app): AxState<AppState>, staff: Staff) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    Ok(render(&users_page(&app, &staff, None).await?))
}

#[derive(serde::Deserialize)]
pub struct NewUserForm {
    username: String,
    display_name: String,
    #[serde(default)]
    email: String,
    role: String,
    #[serde(default)]
    enterprise: Vec<u64>,
    password: Zeroizing<String>,
}

pub async fn create_user(
    AxState(app): AxState<AppState>,
    staff: Staff,
    CsrfForm(form): CsrfForm<NewUserForm>,
) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    let invalid = |app: AppState, staff: Staff, msg: String| async move {
        let page = users_page(&app, &staff, Some(msg)).await?;
        Ok::<_, AppError>((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
    };
    let Some(role) = Role::parse(&form.role) else {
        return invalid(app, staff, format!("unknown role {:?}", form.role)).await;
    };
    let email = Some(form.email.trim().to_string()).filter(|e| !e.is_empty());
    let now = app.now();
    let mut user = match accounts::new_user(
        form.username.trim(),
        &form.display_name,
        email,
        role,
        &form.password,
        now,
    ) {
        Ok(u) => u,
        Err(e) => return invalid(app, staff, format!("{e}.")).await,
    };
    user.must_change_password = true;
    user.enterprises = form.enterprise;
    let name = user.username.clone();
    let store = app.store.clone();
    let known: Vec<u64> = blocking(move || store.enterprises())
        .await?
        .iter()
        .map(|e| e.id)
        .collect();
    if user.enterprises.iter().any(|e| !known.contains(e)) {
        return invalid(app, staff, "unknown enterprise".into()).await;
    }
    let store = app.store.clone();
    match blocking(move || store.create_user(&user)).await {
        Ok(()) => {}
        Err(AppError::Conflict(_)) => {
            return invalid(app, staff, format!("the user name {name} is taken")).await;
        }
        Err(e) => return Err(e),
    }
    app.event(
        &staff.user.username,
        "user_created",
        None,
        None,
        staff.source.clone(),
        format!("{name} as {}", role.as_str()),
    )
    .await;
    flash(&staff.session, format!("User {name} added.")).await;
    Ok(Redirect::to("/admin/users").into_response())
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    ctx: Ctx,
    username: String,
    display_name: String,
    email: String,
    role: &'static str,
    roles: Vec<&'static str>,
    enterprises: Vec<(u64, String, bool)>,
    disabled: bool,
    locked: Option<String>,
    error: Option<String>,
}

async fn user_page(
    app: &AppState,
    staff: &Staff,
    name: &str,
    error: Option<String>,
) -> Result<UserPage, AppError> {
    let store = app.store.clone();
    let n = name.to_string();
    let (user, enterprises) = blocking(move || Ok((store.user(&n)?, store.enterprises()?))).await?;
    let u = user.ok_or_else(|| AppError::NotFound(format!("user {name} not found")))?;
    let now = app.now();
    Ok(UserPage {
        ctx: staff.ctx.clone(),
        display_name: u.display_name.clone(),
        email: u.email.clone().unwrap_or_default(),
        role: u.role.as_str(),
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        enterprises: enterprises
            .into_iter()
            .map(|e| {
                let member = u.enterprises.contains(&e.id);
                (e.id, e.name, member)
            })
            .collect(),
        disabled: u.disabled,
        locked: u.locked_until.filter(|t| *t > now).map(super::show_time),
        username: u.username,
        error,
    })
}

pub async fn user(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    Ok(render(&user_page(&app, &staff, &name, None).await?))
}

#[derive(serde::Deserialize)]
pub struct UserForm {
    display_name: String,
    #[serde(default)]
    email: String,
    role: String,
    #[serde(default)]
    enterprise: Vec<u64>,
    #[serde(default)]
    disabled: Option<String>,
    #[serde(default)]
    unlock: Option<String>,
    #[serde(default)]
    reset_totp: Option<String>,
    #[serde(default)]
    password: Zeroizing<String>,
}

pub async fn update_user(
    AxState(app): AxState<AppState>,
    staff: Staff,
    Path(name): Path<String>,
    CsrfForm(form): CsrfForm<UserForm>,
) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    let check = || -> Result<(Role, Option<String>, Option<String>), String> {
        let role =
            Role::parse(&form.role).ok_or_else(|| format!("unknown role {:?}", form.role))?;
        let email = Some(form.email.trim().to_string()).filter(|e| !e.is_empty());
        if let Some(e) = &email {
            certd_api::names::check_email(e)?;
        }
        let display = form.display_name.trim();
        if display.is_empty() || display.len() > 128 {
            return Err("the display name must have 1 to 128 characters".into());
        }
        let hash = if form.password.is_empty() {
            None
        } else {
            accounts::check_password(&name, &form.password).map_err(|e| e.to_string())?;
            Some(accounts::hash_password(&form.password).map_err(|e| e.to_string())?)
        };
        Ok((role, email, hash))
    };
    let (role, email, hash) = match check() {
        Ok(x) => x,
        Err(msg) => {
            let page = user_page(&app, &staff, &name, Some(format!("{msg}."))).await?;
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response());
        }
    };
    if name.eq_ignore_ascii_case(&staff.user.username)
        && (role != Role::Admin || form.disabled.is_some())
    {
        let page = user_page(&app, &staff, &name, Some("You cannot take the admin role from yourself or disable yourself: ask another admin.".into())).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response());
    }
    let display = form.display_name.trim().to_string();
    let store = app.store.clone();
    let n = name.clone();
    let enterprises = form.enterprise.clone();
    let disabled = form.disabled.is_some();
    let unlock = form.unlock.is_some();
    let reset_totp = form.reset_totp.is_some();
    let (u, changes) = blocking(move || {
        store.update_user(&n, |u| {
            let mut changes = Vec::new();
            if u.role != role {
                changes.push(format!("role {} → {}", u.role.as_str(), role.as_str()));
                u.role = role;
            }
            if u.enterprises != enterprises {
                changes.push(format!(
                    "enterprises {:?} → {:?}",
                    u.enterprises, enterprises
                ));
                u.enterprises = enterprises;
            }
            if u.display_name != display {
                changes.push("display name".to_string());
                u.display_name = display;
            }
            if u.email != email {
                changes.push("mail address".to_string());
                u.email = email;
            }
            if u.disabled != disabled {
                changes.push(if disabled { "disabled" } else { "enabled" }.to_string());
                u.disabled = disabled;
                u.generation += 1;
            }
            if unlock && (u.locked_until.is_some() || u.failed_logins > 0) {
                changes.push("unlocked".to_string());
                u.locked_until = None;
                u.failed_logins = 0;
            }
            if reset_totp && u.totp.is_some() {
                changes.push("second factor removed".to_string());
                u.totp = None;
            }
            if let Some(h) = hash {
                changes.push("password reset".to_string());
                u.password_hash = h;
                u.must_change_password = true;
                u.generation += 1;
            }
            changes
        })
    })
    .await?;
    if !changes.is_empty() {
        app.event(
            &staff.user.username,
            "user_changed",
            None,
            None,
            staff.source.clone(),
            format!("{}: {}", u.username, changes.join("; ")),
        )
        .await;
    }
    flash(&staff.session, format!("User {} saved.", u.username)).await;
    Ok(Redirect::to("/admin/users").into_response())
}

#[derive(Template)]
#[template(path = "enterprises.html")]
struct EnterprisesPage {
    ctx: Ctx,
    enterprises: Vec<(u64, String, String)>,
    profiles: Vec<String>,
    error: Option<String>,
}

async fn enterprises_page(
    app: &AppState,
    staff: &Staff,
    error: Option<String>,
) -> Result<EnterprisesPage, AppError> {
    let store = app.store.clone();
    let list = blocking(move || store.enterprises()).await?;
    let profiles = app
        .profiles()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.name)
        .collect();
    Ok(EnterprisesPage {
        ctx: staff.ctx.clone(),
        enterprises: list
            .into_iter()
            .map(|e| {
                let p = if e.profiles.is_empty() {
                    "every offered profile".into()
                } else {
                    e.profiles.join(", ")
                };
                (e.id, e.name, p)
            })
            .collect(),
        profiles,
        error,
    })
}

pub async fn enterprises(
    AxState(app): AxState<AppState>,
    staff: Staff,
) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    Ok(render(&enterprises_page(&app, &staff, None).await?))
}

#[derive(serde::Deserialize)]
pub struct EnterpriseForm {
    name: String,
    #[serde(default)]
    profile: Vec<String>,
}

pub async fn create_enterprise(
    AxState(app): AxState<AppState>,
    staff: Staff,
    CsrfForm(form): CsrfForm<EnterpriseForm>,
) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    let name = form.name.trim().to_string();
    if name.is_empty() || name.len() > 128 {
        let page = enterprises_page(
            &app,
            &staff,
            Some("The name must have 1 to 128 characters.".into()),
        )
        .await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response());
    }
    let store = app.store.clone();
    let now = app.now();
    let n = name.clone();
    let e = match blocking(move || store.create_enterprise(&n, form.profile, now)).await {
        Ok(e) => e,
        Err(AppError::Conflict(_)) => {
            let page = enterprises_page(
                &app,
                &staff,
                Some(format!("An enterprise named {name} exists already.")),
            )
            .await?;
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response());
        }
        Err(e) => return Err(e),
    };
    app.event(
        &staff.user.username,
        "enterprise_created",
        Some(e.id),
        None,
        staff.source.clone(),
        e.name.clone(),
    )
    .await;
    flash(&staff.session, format!("Enterprise {} added.", e.name)).await;
    Ok(Redirect::to("/admin/enterprises").into_response())
}

/// A profile's row on the settings page.
pub struct ProfileRow {
    name: String,
    kind: String,
    offered: bool,
    auto_approve: bool,
    approvals_required: u32,
    certd_requires: u32,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    ctx: Ctx,
    require_totp: bool,
    profiles: Vec<ProfileRow>,
    error: Option<String>,
    certd_error: Option<String>,
}

pub async fn settings(AxState(app): AxState<AppState>, staff: Staff) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    let store = app.store.clone();
    let s = blocking(move || store.settings()).await?;
    let (profiles, certd_error) = match app.profiles().await {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Ok(render(&SettingsPage {
        ctx: staff.ctx.clone(),
        require_totp: s.require_totp,
        profiles: profiles
            .into_iter()
            .map(|p| {
                let set = s.profile(&p.name);
                ProfileRow {
                    offered: set.offered,
                    auto_approve: set.auto_approve,
                    approvals_required: set.approvals_required,
                    certd_requires: p.approvals_required,
                    name: p.name,
                    kind: p.kind,
                }
            })
            .collect(),
        error: None,
        certd_error,
    }))
}

pub async fn save_settings(
    AxState(app): AxState<AppState>,
    staff: Staff,
    CsrfForm(form): CsrfForm<HashMap<String, String>>,
) -> Result<Response, AppError> {
    staff.require(Role::Admin)?;
    let profiles = app.profiles().await.map_err(|e| {
        AppError::Unavailable(format!(
            "certd cannot be reached to list its profiles ({e}): try again"
        ))
    })?;
    let mut next = Settings {
        require_totp: form.get("require_totp").is_some_and(|v| v == "yes"),
        profiles: BTreeMap::new(),
    };
    for p in &profiles {
        let approvals = form
            .get(&format!("approvals.{}", p.name))
            .map(String::as_str)
            .unwrap_or("1");
        let Ok(n) = approvals.trim().parse::<u32>() else {
            return Err(AppError::BadRequest(format!(
                "approvals for {}: give a number from 0 to 5",
                p.name
            )));
        };
        if n > 5 {
            return Err(AppError::BadRequest(format!(
                "approvals for {}: at most 5",
                p.name
            )));
        }
        next.profiles.insert(
            p.name.clone(),
            ProfileSetting {
                offered: form
                    .get(&format!("offered.{}", p.name))
                    .is_some_and(|v| v == "yes"),
                auto_approve: form
                    .get(&format!("approval.{}", p.name))
                    .is_some_and(|v| v == "auto"),
                approvals_required: n,
            },
        );
    }
    let store = app.store.clone();
    let before = blocking(move || store.settings()).await?;
    let store = app.store.clone();
    let saved = next.clone();
    blocking(move || store.put_settings(&saved)).await?;
    let mut changes = Vec::new();
    if before.require_totp != next.require_totp {
        changes.push(format!("require_totp = {}", next.require_totp));
    }
    for (name, p) in &next.profiles {
        if before.profile(name) != *p {
            changes.push(format!(
                "{name}: offered = {}, approval = {}, approvals = {}",
                p.offered,
                if p.auto_approve {
                    "automatic"
                } else {
                    "manual"
                },
                p.approvals_required
            ));
        }
    }
    app.event(
        &staff.user.username,
        "settings_changed",
        None,
        None,
        staff.source.clone(),
        changes.join("; "),
    )
    .await;
    flash(&staff.session, "Settings saved.").await;
    Ok(Redirect::to("/admin/settings").into_response())
}
