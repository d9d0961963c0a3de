//! Sign-in, sign-out and the user's own password.

use super::{
    blocking, csrf_token, flash, render, start_session, AppError, AppState, CsrfForm, Ctx, Staff,
};
use crate::accounts::{self, SignIn};
use askama::Template;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use std::net::SocketAddr;
use tower_sessions::Session;
use zeroize::Zeroizing;

/// Failed sign-ins one client address may make in [`THROTTLE_WINDOW`]
/// before it is slowed down, whatever accounts it tries.
const THROTTLE_FAILURES: u32 = 20;
const THROTTLE_WINDOW: i64 = 15 * 60;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    ctx: Ctx,
    error: Option<String>,
    username: String,
}

pub async fn login_page(session: Session) -> Result<Response, AppError> {
    let csrf = csrf_token(&session).await?;
    Ok(render(&LoginPage {
        ctx: Ctx {
            csrf,
            ..Ctx::default()
        },
        error: None,
        username: String::new(),
    }))
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    username: String,
    password: Zeroizing<String>,
}

fn throttled(app: &AppState, ip: std::net::IpAddr, now: i64) -> bool {
    let mut t = app.throttle.lock().unwrap_or_else(|p| p.into_inner());
    match t.get(&ip) {
        Some((n, since)) if now - since < THROTTLE_WINDOW => *n >= THROTTLE_FAILURES,
        Some(_) => {
            t.remove(&ip);
            false
        }
        None => false,
    }
}

fn count_failure(app: &AppState, ip: std::net::IpAddr, now: i64) {
    let mut t = app.throttle.lock().unwrap_or_else(|p| p.into_inner());
    let e = t.entry(ip).or_insert((0, now));
    if now - e.1 >= THROTTLE_WINDOW {
        *e = (0, now);
    }
    e.0 += 1;
}

pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    session: Session,
    CsrfForm(form): CsrfForm<LoginForm>,
) -> Result<Response, AppError> {
    let now = app.now();
    let source = Some(peer.ip().to_string());
    let username = form.username.trim().to_string();
    let page = |error: String, status: StatusCode, csrf: String| {
        (
            status,
            render(&LoginPage {
                ctx: Ctx {
                    csrf,
                    ..Ctx::default()
                },
                error: Some(error),
                username: username.clone(),
            }),
        )
            .into_response()
    };
    if throttled(&app, peer.ip(), now) {
        app.event(
            &username,
            "sign_in_throttled",
            None,
            None,
            source,
            "too many failed sign-ins from this address",
        )
        .await;
        let csrf = csrf_token(&session).await?;
        return Ok(page(
            "Too many failed sign-ins from your address: wait 15 minutes and try again.".into(),
            StatusCode::TOO_MANY_REQUESTS,
            csrf,
        ));
    }
    let store = app.store.clone();
    let sec = app.config.security.clone();
    let name = username.clone();
    let password = form.password;
    let outcome = blocking(move || {
        accounts::sign_in(
            &store,
            &name,
            &password,
            now,
            sec.lockout_failures,
            sec.lockout().as_secs() as i64,
        )
    })
    .await?;
    let actor = if username.is_empty() {
        "-"
    } else {
        username.as_str()
    };
    match outcome {
        SignIn::Ok(user) if totp_enrolled(&user) => {
            // The password was right; the second factor decides.
            let err = |e: tower_sessions::session::Error| {
                AppError::Unavailable(format!("session store: {e}"))
            };
            session.cycle_id().await.map_err(err)?;
            session
                .insert(PENDING_USER, &user.username)
                .await
                .map_err(err)?;
            session.insert(PENDING_AT, now).await.map_err(err)?;
            Ok(Redirect::to("/login/totp").into_response())
        }
        SignIn::Ok(user) => {
            start_session(&session, &user, now).await?;
            app.event(&user.username, "sign_in", None, None, source, "signed in")
                .await;
            if user.must_change_password {
                flash(&session, "Choose a new password before you go on.").await;
                return Ok(Redirect::to("/account").into_response());
            }
            Ok(Redirect::to("/").into_response())
        }
        SignIn::Wrong | SignIn::Disabled => {
            count_failure(&app, peer.ip(), now);
            let detail = if matches!(outcome, SignIn::Disabled) {
                "account disabled"
            } else {
                "wrong user name or password"
            };
            app.event(actor, "sign_in_failed", None, None, source, detail)
                .await;
            let csrf = csrf_token(&session).await?;
            Ok(page(
                "Wrong user name or password.".into(),
                StatusCode::UNAUTHORIZED,
                csrf,
            ))
        }
        SignIn::LockedNow(until) | SignIn::Locked(until) => {
            count_failure(&app, peer.ip(), now);
            let kind = if matches!(outcome, SignIn::LockedNow(_)) {
                "account_locked"
            } else {
                "sign_in_failed"
            };
            app.event(
                actor,
                kind,
                None,
                None,
                source,
                format!("locked until {}", super::rfc3339(until)),
            )
            .await;
            let csrf = csrf_token(&session).await?;
            Ok(page(
                format!(
                    "This account is locked after too many failed sign-ins, until {}. An admin can unlock it.",
                    super::show_time(until)
                ),
                StatusCode::FORBIDDEN,
                csrf,
            ))
        }
    }
}

const PENDING_USER: &str = "pending_user";
const PENDING_AT: &str = "pending_at";
/// How long the second-factor step may take after the password.
const PENDING_SECS: i64 = 300;

#[derive(Template)]
#[template(path = "totp.html")]
struct TotpPage {
    ctx: Ctx,
    error: Option<String>,
}

pub async fn totp_page(session: Session) -> Result<Response, AppError> {
    if session
        .get::<String>(PENDING_USER)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        return Ok(Redirect::to("/login").into_response());
    }
    let csrf = csrf_token(&session).await?;
    Ok(render(&TotpPage {
        ctx: Ctx {
            csrf,
            ..Ctx::default()
        },
        error: None,
    }))
}

#[derive(serde::Deserialize)]
pub struct CodeForm {
    code: String,
}

pub async fn totp(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    session: Session,
    CsrfForm(form): CsrfForm<CodeForm>,
) -> Result<Response, AppError> {
    let now = app.now();
    let source = Some(peer.ip().to_string());
    let pending = session.get::<String>(PENDING_USER).await.ok().flatten();
    let at = session
        .get::<i64>(PENDING_AT)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let Some(username) = pending.filter(|_| now - at < PENDING_SECS) else {
        return Ok(Redirect::to("/login").into_response());
    };
    let store = app.store.clone();
    let sec = app.config.security.clone();
    let code = form.code;
    let name = username.clone();
    let outcome = blocking(move || {
        store.update_user(&name, |u| {
            if u.disabled || u.locked_until.is_some_and(|t| t > now) {
                return Err("This account is locked or disabled.".to_string());
            }
            let Some(t) = u.totp.as_mut().filter(|t| t.confirmed) else {
                return Err("No second factor is set up for this account.".to_string());
            };
            match accounts::check_totp(&t.secret, &code, now, t.last_step) {
                Some(step) => {
                    t.last_step = step;
                    u.failed_logins = 0;
                    Ok(())
                }
                None => {
                    u.failed_logins += 1;
                    if u.failed_logins >= sec.lockout_failures {
                        u.locked_until = Some(now + sec.lockout().as_secs() as i64);
                    }
                    Err(
                        "Wrong or already used code: enter the code your app shows now."
                            .to_string(),
                    )
                }
            }
        })
    })
    .await?;
    match outcome {
        (user, Ok(())) => {
            start_session(&session, &user, now).await?;
            app.event(
                &user.username,
                "sign_in",
                None,
                None,
                source,
                "signed in with a second factor",
            )
            .await;
            if user.must_change_password {
                flash(&session, "Choose a new password before you go on.").await;
                return Ok(Redirect::to("/account").into_response());
            }
            Ok(Redirect::to("/").into_response())
        }
        (user, Err(msg)) => {
            count_failure(&app, peer.ip(), now);
            let kind = if user.locked_until.is_some_and(|t| t > now) {
                "account_locked"
            } else {
                "sign_in_failed"
            };
            app.event(
                &user.username,
                kind,
                None,
                None,
                source,
                "wrong second-factor code",
            )
            .await;
            let csrf = csrf_token(&session).await?;
            Ok((
                StatusCode::UNAUTHORIZED,
                render(&TotpPage {
                    ctx: Ctx {
                        csrf,
                        ..Ctx::default()
                    },
                    error: Some(msg),
                }),
            )
                .into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "totp_enroll.html")]
struct EnrollPage {
    ctx: Ctx,
    required: bool,
    secret: String,
    uri: String,
    error: Option<String>,
}

/// Shows the (new, unconfirmed) secret to enrol.
pub async fn enroll_page(State(app): State<AppState>, staff: Staff) -> Result<Response, AppError> {
    if totp_enrolled(&staff.user) {
        flash(&staff.session, "Your second factor is set up already.").await;
        return Ok(Redirect::to("/account").into_response());
    }
    let store = app.store.clone();
    let name = staff.user.username.clone();
    let (user, ()) = blocking(move || {
        store.update_user(&name, |u| {
            if u.totp.is_none() {
                u.totp = Some(crate::model::Totp {
                    secret: accounts::new_totp_secret(),
                    confirmed: false,
                    last_step: 0,
                });
            }
        })
    })
    .await?;
    let secret = user.totp.map(|t| t.secret).unwrap_or_default();
    let required = app.totp_required(&staff.user).await?;
    Ok(render(&EnrollPage {
        uri: accounts::otpauth_uri(&secret, &staff.user.username),
        secret,
        required,
        ctx: staff.ctx,
        error: None,
    }))
}

/// Confirms the enrolment with a first code.
pub async fn enroll(
    State(app): State<AppState>,
    staff: Staff,
    CsrfForm(form): CsrfForm<CodeForm>,
) -> Result<Response, AppError> {
    let now = app.now();
    let store = app.store.clone();
    let name = staff.user.username.clone();
    let code = form.code;
    let (user, ok) = blocking(move || {
        store.update_user(&name, |u| match u.totp.as_mut() {
            Some(t) if !t.confirmed => {
                match accounts::check_totp(&t.secret, &code, now, t.last_step) {
                    Some(step) => {
                        t.confirmed = true;
                        t.last_step = step;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        })
    })
    .await?;
    if !ok {
        let secret = user.totp.map(|t| t.secret).unwrap_or_default();
        let required = app.totp_required(&staff.user).await?;
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&EnrollPage {
                uri: accounts::otpauth_uri(&secret, &staff.user.username),
                secret,
                required,
                ctx: staff.ctx.clone(),
                error: Some(
                    "That code is not right: enter the code the app shows now for this key.".into(),
                ),
            }),
        )
            .into_response());
    }
    app.event(
        &user.username,
        "totp_enrolled",
        None,
        None,
        staff.source.clone(),
        "second factor set up",
    )
    .await;
    flash(
        &staff.session,
        "Your second factor is set up: sign-ins ask for a code from now on.",
    )
    .await;
    Ok(Redirect::to("/").into_response())
}

/// A form with nothing but its CSRF token.
#[derive(serde::Deserialize)]
pub struct NoFields {}

pub async fn logout(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    session: Session,
    CsrfForm(NoFields {}): CsrfForm<NoFields>,
) -> Result<Response, AppError> {
    if let Ok(Some(user)) = session.get::<String>("user").await {
        app.event(
            &user,
            "sign_out",
            None,
            None,
            Some(peer.ip().to_string()),
            "signed out",
        )
        .await;
    }
    let _ = session.flush().await;
    Ok(Redirect::to("/login").into_response())
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    ctx: Ctx,
    must_change: bool,
    totp_enrolled: bool,
    error: Option<String>,
}

fn totp_enrolled(u: &crate::model::User) -> bool {
    u.totp.as_ref().is_some_and(|t| t.confirmed)
}

pub async fn account_page(staff: Staff) -> Response {
    render(&AccountPage {
        must_change: staff.user.must_change_password,
        totp_enrolled: totp_enrolled(&staff.user),
        ctx: staff.ctx,
        error: None,
    })
}

#[derive(serde::Deserialize)]
pub struct PasswordForm {
    current: Zeroizing<String>,
    new: Zeroizing<String>,
    repeat: Zeroizing<String>,
}

pub async fn change_password(
    State(app): State<AppState>,
    staff: Staff,
    CsrfForm(form): CsrfForm<PasswordForm>,
) -> Result<Response, AppError> {
    let fail = |staff: &Staff, msg: &str| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&AccountPage {
                ctx: staff.ctx.clone(),
                must_change: staff.user.must_change_password,
                totp_enrolled: totp_enrolled(&staff.user),
                error: Some(msg.to_string()),
            }),
        )
            .into_response()
    };
    if !accounts::verify_password(&form.current, &staff.user.password_hash) {
        app.event(
            &staff.user.username,
            "password_change_failed",
            None,
            None,
            staff.source.clone(),
            "wrong current password",
        )
        .await;
        return Ok(fail(&staff, "The current password is wrong."));
    }
    if *form.new != *form.repeat {
        return Ok(fail(&staff, "The two new passwords differ."));
    }
    if *form.new == *form.current {
        return Ok(fail(
            &staff,
            "The new password must differ from the current one.",
        ));
    }
    if let Err(e) = accounts::check_password(&staff.user.username, &form.new) {
        return Ok(fail(&staff, &format!("{e}.")));
    }
    let hash = accounts::hash_password(&form.new).map_err(|e| AppError::Internal(e.to_string()))?;
    let store = app.store.clone();
    let name = staff.user.username.clone();
    let (user, ()) = blocking(move || {
        store.update_user(&name, |u| {
            u.password_hash = hash;
            u.must_change_password = false;
            u.generation += 1;
        })
    })
    .await?;
    // Other sessions of this account end (their generation is older);
    // this one continues under a new id.
    start_session(&staff.session, &user, app.now()).await?;
    app.event(
        &user.username,
        "password_changed",
        None,
        None,
        staff.source.clone(),
        "changed their password",
    )
    .await;
    flash(&staff.session, "Your password was changed.").await;
    Ok(Redirect::to("/").into_response())
}
