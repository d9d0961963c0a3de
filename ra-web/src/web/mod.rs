//! The staff application: routes, the signed-in staff member, CSRF, error
//! pages and security headers. One module per area of pages.

mod admin;
mod auth;
mod events;
pub mod public;
mod requests;

use crate::config::Config;
use crate::model::{Event, Role, Unix, User};
use crate::store::{Store, StoreError};
use askama::Template;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tower_sessions::Session;

/// A clock (seconds since the epoch): injected so tests control time.
pub type Clock = Arc<dyn Fn() -> Unix + Send + Sync>;

/// The system clock.
///
/// Debug builds (the ones the end-to-end tests run) honour
/// `RA_WEB_TEST_CLOCK_OFFSET_FILE`: seconds read from that file on every
/// reading are added to the time, so a test moves ra-web's clock (expiring
/// a pickup link, a lockout) without sleeping. Release builds never look.
pub fn system_clock() -> Clock {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("RA_WEB_TEST_CLOCK_OFFSET_FILE") {
        let path = std::path::PathBuf::from(path);
        return Arc::new(move || {
            let offset = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0);
            time::OffsetDateTime::now_utc().unix_timestamp() + offset
        });
    }
    Arc::new(|| time::OffsetDateTime::now_utc().unix_timestamp())
}

/// What every handler shares.
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The store.
    pub store: Arc<Store>,
    /// certd, as this RA.
    pub certd: certd_api::CertdClient,
    /// The clock.
    pub clock: Clock,
    /// CA certificates and CRLs fetched from certd.
    pub publication: crate::publication::Publication,
    /// Requests being issued right now.
    pub in_flight: crate::issuer::InFlight,
    /// certd's profiles for this RA, and when they were fetched.
    pub profiles: tokio::sync::Mutex<Option<(Unix, Vec<certd_api::ProfileInfo>)>>,
    /// Wakes the issuance worker.
    pub issue_wake: tokio::sync::Notify,
    /// Wakes the mail worker.
    pub mail_wake: tokio::sync::Notify,
    /// Failed sign-ins per client address (throttling).
    pub throttle: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, Unix)>>,
    /// Counters for `[metrics]`.
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// Shared application state.
pub type AppState = Arc<App>;

impl App {
    /// Now, by the injected clock.
    pub fn now(&self) -> Unix {
        (self.clock)()
    }

    /// The profiles certd grants this RA (fetched at most once a minute; the
    /// last good answer when certd cannot be reached).
    pub async fn profiles(&self) -> Result<Vec<certd_api::ProfileInfo>, String> {
        let mut cache = self.profiles.lock().await;
        let now = self.now();
        if let Some((at, list)) = cache.as_ref() {
            if now - at < 60 {
                return Ok(list.clone());
            }
        }
        match self.certd.profiles().await {
            Ok(list) => {
                *cache = Some((now, list.clone()));
                Ok(list)
            }
            Err(e) => match cache.as_ref() {
                Some((_, list)) => Ok(list.clone()),
                None => Err(e.to_string()),
            },
        }
    }

    /// Whether `user` must have a second factor (the admin's setting, for
    /// officers and admins).
    pub async fn totp_required(&self, user: &User) -> Result<bool, AppError> {
        if user.role == Role::Auditor {
            return Ok(false);
        }
        let store = self.store.clone();
        Ok(blocking(move || store.settings()).await?.require_totp)
    }

    /// Records the event-log copy of a request transition the request
    /// already holds durably (no fsync of its own; see
    /// [`Store::append_event_lazily`]).
    pub async fn request_event(
        &self,
        actor: &str,
        kind: &str,
        enterprise: Option<u64>,
        request: Option<u64>,
        source: Option<String>,
        detail: impl Into<String>,
    ) {
        let e = self.new_event(actor, kind, enterprise, request, source, detail.into());
        self.record(e, false).await;
    }

    /// Records an event; a store failure is logged, never hidden.
    pub async fn event(
        &self,
        actor: &str,
        kind: &str,
        enterprise: Option<u64>,
        request: Option<u64>,
        source: Option<String>,
        detail: impl Into<String>,
    ) {
        let e = self.new_event(actor, kind, enterprise, request, source, detail.into());
        self.record(e, true).await;
    }

    fn new_event(
        &self,
        actor: &str,
        kind: &str,
        enterprise: Option<u64>,
        request: Option<u64>,
        source: Option<String>,
        detail: String,
    ) -> Event {
        Event {
            id: 0,
            at: self.now(),
            actor: actor.to_string(),
            kind: kind.to_string(),
            enterprise,
            request,
            source,
            detail,
        }
    }

    async fn record(&self, e: Event, durable: bool) {
        self.metrics.event(&e.kind);
        let kind = e.kind.clone();
        let store = self.store.clone();
        let stored = blocking(move || {
            if durable {
                store.append_event(e)
            } else {
                store.append_event_lazily(e)
            }
        })
        .await;
        if let Err(err) = stored {
            tracing::error!(error = %err, kind, "cannot record an event");
        }
    }
}

/// Runs store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(AppError::from)
}

/// Why a page could not be served: each a status and a message people can
/// act on.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Signed in, but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// A state-changing form without a valid CSRF token (403).
    #[error("this form has expired or did not come from this application: reload the page and try again")]
    Csrf,
    /// Nothing there, or not visible to this user (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is not in a state that allows this (409).
    #[error("{0}")]
    Conflict(String),
    /// Too large (413).
    #[error("{0}")]
    TooLarge(String),
    /// Too many attempts (429).
    #[error("{0}")]
    TooMany(String),
    /// certd or the store is unavailable (503).
    #[error("{0}")]
    Unavailable(String),
    /// A fault of ra-web (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        match e {
            StoreError::NotFound(what) => AppError::NotFound(what),
            StoreError::Exists(what) => AppError::Conflict(what),
            other => AppError::Unavailable(format!("{other}; nothing was changed, try again")),
        }
    }
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Forbidden(_) | AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn heading(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "That did not work",
            AppError::Forbidden(_) => "Not allowed",
            AppError::Csrf => "Form expired",
            AppError::NotFound(_) => "Not found",
            AppError::Conflict(_) => "Not possible now",
            AppError::TooLarge(_) => "Too large",
            AppError::TooMany(_) => "Too many attempts",
            AppError::Unavailable(_) => "Temporarily unavailable",
            AppError::Internal(_) => "Something went wrong",
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    ctx: Ctx,
    heading: &'static str,
    message: String,
    back: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(m) = &self {
            tracing::error!(error = %m, "internal error");
        }
        let page = ErrorPage {
            ctx: Ctx::default(),
            heading: self.heading(),
            message: self.to_string(),
            back: "/".into(),
        };
        (self.status(), render(&page)).into_response()
    }
}

/// Renders a template (a template error is a fault, shown as such).
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: a page could not be rendered",
            )
                .into_response()
        }
    }
}

/// What the layout needs.
#[derive(Debug, Default, Clone)]
pub struct Ctx {
    /// The signed-in user.
    pub user: Option<UserCtx>,
    /// The session's CSRF token, for forms.
    pub csrf: String,
    /// A one-time message.
    pub flash: Option<String>,
}

/// The signed-in user as the layout shows them.
#[derive(Debug, Clone)]
pub struct UserCtx {
    /// Their display name.
    pub display_name: String,
    /// Their role's name.
    pub role: &'static str,
    /// Officer menu.
    pub officer: bool,
    /// Admin menu.
    pub admin: bool,
    /// Event log menu.
    pub reads_events: bool,
}

const CSRF_KEY: &str = "csrf";
const USER_KEY: &str = "user";
const GEN_KEY: &str = "gen";
const AUTH_AT_KEY: &str = "auth_at";
const FLASH_KEY: &str = "flash";
const SEEN_KEY: &str = "seen";

/// The session's CSRF token, created when missing.
pub async fn csrf_token(session: &Session) -> Result<String, AppError> {
    let err =
        |e: tower_sessions::session::Error| AppError::Unavailable(format!("session store: {e}"));
    if let Some(t) = session.get::<String>(CSRF_KEY).await.map_err(err)? {
        return Ok(t);
    }
    let t = random_token(32);
    session.insert(CSRF_KEY, &t).await.map_err(err)?;
    Ok(t)
}

/// `n` random bytes, URL-safe base64.
pub fn random_token(n: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; n];
    // The OS CSPRNG failing is not something to serve pages through.
    getrandom::fill(&mut b).expect("the OS random number generator");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Checks a submitted CSRF token against the session's, in constant time.
pub async fn check_csrf(session: &Session, submitted: &str) -> Result<(), AppError> {
    let expected = session
        .get::<String>(CSRF_KEY)
        .await
        .map_err(|e| AppError::Unavailable(format!("session store: {e}")))?
        .ok_or(AppError::Csrf)?;
    if expected.len() == submitted.len()
        && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
    {
        Ok(())
    } else {
        Err(AppError::Csrf)
    }
}

/// Sets the one-time message shown on the next page.
pub async fn flash(session: &Session, message: impl Into<String>) {
    let _ = session.insert(FLASH_KEY, message.into()).await;
}

/// An urlencoded form whose `csrf` field was checked against the session
/// before the handler runs: a handler that takes it cannot forget.
pub struct CsrfForm<T>(pub T);

#[derive(serde::Deserialize)]
struct CsrfField {
    csrf: String,
}

impl<S, T> FromRequest<S> for CsrfForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| AppError::Internal("no session layer".into()))?;
        // Bytes honours the router's DefaultBodyLimit.
        let bytes = axum::body::Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| AppError::TooLarge(format!("the form is too large: {e}")))?;
        let field: CsrfField = serde_html_form::from_bytes(&bytes).map_err(|_| AppError::Csrf)?;
        check_csrf(&session, &field.csrf).await?;
        let value = serde_html_form::from_bytes(&bytes)
            .map_err(|e| AppError::BadRequest(format!("the form is incomplete: {e}")))?;
        Ok(CsrfForm(value))
    }
}

/// The signed-in staff member. Extracting it checks the session (idle
/// expiry is the session's own; absolute expiry, password changes and
/// disabled accounts here); without one, the page redirects to sign-in.
pub struct Staff {
    /// Their account, as stored now.
    pub user: User,
    /// The session.
    pub session: Session,
    /// The client's address.
    pub source: Option<String>,
    /// The layout's context.
    pub ctx: Ctx,
}

/// Not signed in: go to the sign-in page.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        Redirect::to("/login").into_response()
    }
}

/// Either a redirect to sign in or an error page.
pub enum StaffRejection {
    /// Not signed in.
    SignIn,
    /// Must change their password first.
    ChangePassword,
    /// Must set up a second factor first.
    EnrollTotp,
    /// An error.
    Error(AppError),
}

impl IntoResponse for StaffRejection {
    fn into_response(self) -> Response {
        match self {
            StaffRejection::SignIn => SignInFirst.into_response(),
            StaffRejection::ChangePassword => Redirect::to("/account").into_response(),
            StaffRejection::EnrollTotp => Redirect::to("/account/totp").into_response(),
            StaffRejection::Error(e) => e.into_response(),
        }
    }
}

impl From<AppError> for StaffRejection {
    fn from(e: AppError) -> StaffRejection {
        StaffRejection::Error(e)
    }
}

/// The client's address, as the listener saw it.
pub fn source_of(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = StaffRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, app)
            .await
            .map_err(|_| AppError::Internal("no session layer".into()))?;
        let err = |e: tower_sessions::session::Error| {
            StaffRejection::Error(AppError::Unavailable(format!("session store: {e}")))
        };
        let Some(username) = session.get::<String>(USER_KEY).await.map_err(err)? else {
            return Err(StaffRejection::SignIn);
        };
        let auth_at = session
            .get::<Unix>(AUTH_AT_KEY)
            .await
            .map_err(err)?
            .unwrap_or(0);
        let generation = session.get::<u32>(GEN_KEY).await.map_err(err)?;
        let absolute = app.config.security.absolute().as_secs() as i64;
        if app.now() >= auth_at + absolute {
            let _ = session.flush().await;
            return Err(StaffRejection::SignIn);
        }
        let store = app.store.clone();
        let name = username.clone();
        let user = blocking(move || store.user(&name)).await?;
        let Some(user) = user.filter(|u| !u.disabled && Some(u.generation) == generation) else {
            let _ = session.flush().await;
            return Err(StaffRejection::SignIn);
        };
        let path = parts.uri.path();
        let account_pages = ["/account", "/account/password", "/account/totp", "/logout"];
        if user.must_change_password && !account_pages.contains(&path) {
            return Err(StaffRejection::ChangePassword);
        }
        let enrolled = user.totp.as_ref().is_some_and(|t| t.confirmed);
        if !enrolled && !account_pages.contains(&path) && app.totp_required(&user).await? {
            return Err(StaffRejection::EnrollTotp);
        }
        let csrf = csrf_token(&session).await?;
        // Reading the session does not write it back: a flash message is
        // removed only when there is one, and the idle expiry is extended
        // (the session saved) at most once a minute.
        let flash = match session.get::<String>(FLASH_KEY).await.map_err(err)? {
            Some(f) => {
                session.remove::<String>(FLASH_KEY).await.map_err(err)?;
                Some(f)
            }
            None => None,
        };
        let now = app.now();
        let seen = session
            .get::<Unix>(SEEN_KEY)
            .await
            .map_err(err)?
            .unwrap_or(0);
        if now - seen >= 60 {
            session.insert(SEEN_KEY, now).await.map_err(err)?;
        }
        let ctx = Ctx {
            user: Some(UserCtx {
                display_name: user.display_name.clone(),
                role: user.role.as_str(),
                officer: user.role == Role::Officer,
                admin: user.role == Role::Admin,
                reads_events: user.role != Role::Officer,
            }),
            csrf,
            flash,
        };
        Ok(Staff {
            user,
            session,
            source: source_of(parts),
            ctx,
        })
    }
}

impl Staff {
    /// Refuses unless they have `role`.
    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.user.role == role {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this needs the {} role; you are {}",
                role.as_str(),
                self.user.role.as_str()
            )))
        }
    }
}

/// Starts a signed-in session for `user`: a new session id (no fixation),
/// a new CSRF token.
pub async fn start_session(session: &Session, user: &User, now: Unix) -> Result<(), AppError> {
    let err =
        |e: tower_sessions::session::Error| AppError::Unavailable(format!("session store: {e}"));
    session.cycle_id().await.map_err(err)?;
    session.clear().await;
    session
        .insert(USER_KEY, &user.username)
        .await
        .map_err(err)?;
    session
        .insert(GEN_KEY, user.generation)
        .await
        .map_err(err)?;
    session.insert(AUTH_AT_KEY, now).await.map_err(err)?;
    session
        .insert(CSRF_KEY, random_token(32))
        .await
        .map_err(err)?;
    Ok(())
}

/// Security headers on every answer of the staff application.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "strict-transport-security", "max-age=31536000");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(
        h,
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    res
}

/// Refuses state-changing requests that a browser marks as cross-site
/// (defence in depth beside SameSite=Strict cookies and CSRF tokens).
async fn same_origin(req: Request, next: Next) -> Response {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let cross = req
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site" || v == "same-site");
        if cross {
            return AppError::Csrf.into_response();
        }
    }
    next.run(req).await
}

pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../assets/app.css"),
    )
        .into_response()
}

async fn not_found() -> AppError {
    AppError::NotFound("there is no such page".into())
}

/// The staff application's router.
pub fn router(app: AppState) -> Router {
    let sessions = tower_sessions::SessionManagerLayer::new(crate::sessions::StoreSessions::new(
        app.store.clone(),
    ))
    .with_name("__Host-ra-web")
    .with_secure(true)
    .with_http_only(true)
    .with_path("/")
    .with_same_site(tower_sessions::cookie::SameSite::Strict)
    .with_expiry(tower_sessions::Expiry::OnInactivity(
        time::Duration::seconds(app.config.security.idle().as_secs() as i64),
    ));
    let max_body = app.config.server.max_body_kib * 1024;
    Router::new()
        .route("/", get(requests::dashboard))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/login/totp", get(auth::totp_page).post(auth::totp))
        .route("/logout", post(auth::logout))
        .route("/account/totp", get(auth::enroll_page).post(auth::enroll))
        .route("/account", get(auth::account_page))
        .route("/account/password", post(auth::change_password))
        .route("/requests", get(requests::list))
        .route(
            "/requests/new",
            get(requests::new_page).post(requests::create),
        )
        .route("/requests/{id}", get(requests::detail))
        .route("/requests/{id}/edit", post(requests::edit))
        .route("/requests/{id}/validate", post(requests::validate))
        .route("/requests/{id}/approve", post(requests::approve))
        .route("/requests/{id}/issue", post(requests::issue_now))
        .route("/requests/{id}/reject", post(requests::reject))
        .route("/requests/{id}/cancel", post(requests::cancel))
        .route("/requests/{id}/revoke", post(requests::revoke))
        .route("/requests/{id}/{file}", get(requests::download))
        .route("/admin/users", get(admin::users).post(admin::create_user))
        .route(
            "/admin/users/{name}",
            get(admin::user).post(admin::update_user),
        )
        .route(
            "/admin/enterprises",
            get(admin::enterprises).post(admin::create_enterprise),
        )
        .route(
            "/admin/settings",
            get(admin::settings).post(admin::save_settings),
        )
        .route("/events", get(events::list))
        .route("/events.csv", get(events::csv))
        .route("/static/app.css", get(stylesheet))
        .route("/pickup/{token}", get(public::pickup))
        .route("/pickup/{token}/{file}", get(public::pickup_file))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(same_origin))
        .layer(sessions)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(app)
}

/// A time for pages: `2026-12-02 11:20 UTC`.
pub fn show_time(t: Unix) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_else(|| t.to_string())
}

/// RFC 3339 of `t`.
pub fn rfc3339(t: Unix) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
