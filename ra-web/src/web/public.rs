//! What is served without sign-in: the CA certificates and CRLs on the
//! plain-HTTP publication listener (relying parties fetch them from the
//! URLs in certificates), and pickup links on the HTTPS listener.

use super::{blocking, render, AppError, AppState, Ctx};
use crate::model::State;
use crate::notify::{token_hash, PICKUP};
use crate::publication::PublishError;
use askama::Template;
use axum::extract::{ConnectInfo, Path, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

#[derive(Template)]
#[template(path = "public_index.html")]
struct Index {
    certifiers: Vec<String>,
    error: Option<String>,
}

fn publish_error(e: PublishError) -> Response {
    match e {
        PublishError::Unknown(n) => {
            (StatusCode::NOT_FOUND, format!("no certifier {n}\n")).into_response()
        }
        PublishError::Unavailable(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "60")],
            format!("{m}\n"),
        )
            .into_response(),
    }
}

async fn index(AxState(app): AxState<AppState>) -> Response {
    let (certifiers, error) = match app.publication.certificates(&app.certd, app.now()).await {
        Ok(list) => (list.into_iter().map(|c| c.name).collect(), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    render(&Index { certifiers, error })
}

fn http_date(t: i64) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_default()
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..16]))
}

/// Answers `304 Not Modified` when the client has this version.
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
}

async fn crl(
    AxState(app): AxState<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(name) = file.strip_suffix(".crl") else {
        return (StatusCode::NOT_FOUND, "CRLs are at /crl/NAME.crl\n").into_response();
    };
    let now = app.now();
    let c = match app.publication.crl(&app.certd, name, now).await {
        Ok(c) => c,
        Err(e) => return publish_error(e),
    };
    let tag = etag(&c.der);
    let max_age = (c.fresh_until() - now).max(0);
    let mut res = if not_modified(&headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/pkix-crl")],
            c.der.clone(),
        )
            .into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(c.this_update)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(c.next_update)) {
        h.insert(header::EXPIRES, v);
    }
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    res
}

async fn ca(
    AxState(app): AxState<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (name, der) = match (file.strip_suffix(".crt"), file.strip_suffix(".pem")) {
        (Some(n), _) => (n, true),
        (_, Some(n)) => (n, false),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                "CA certificates are at /ca/NAME.crt (DER) or /ca/NAME.pem\n",
            )
                .into_response()
        }
    };
    let list = match app.publication.certificates(&app.certd, app.now()).await {
        Ok(l) => l,
        Err(e) => return publish_error(e),
    };
    let Some(c) = list.into_iter().find(|c| c.name == name) else {
        return publish_error(PublishError::Unknown(name.to_string()));
    };
    let (body, ctype) = if der {
        match ra_core::formats::pem_to_der(&c.pem) {
            Ok(d) => (d, "application/pkix-cert"),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        }
    } else {
        (c.pem.into_bytes(), "application/x-pem-file")
    };
    let tag = etag(&body);
    if not_modified(&headers, &tag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (header::CACHE_CONTROL, "public, max-age=86400".to_string()),
            (header::ETAG, tag),
        ],
        body,
    )
        .into_response()
}

/// The publication listener's router (plain HTTP, no sign-in, GET only).
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/crl/{file}", get(crl))
        .route("/ca/{file}", get(ca))
        .route("/static/app.css", get(super::stylesheet))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn(
            |req, next: axum::middleware::Next| async move {
                let mut res = next.run(req).await;
                res.headers_mut().insert(
                    "x-content-type-options",
                    HeaderValue::from_static("nosniff"),
                );
                res
            },
        ))
        .with_state(app)
}

// --- pickup ------------------------------------------------------------------

#[derive(Template)]
#[template(path = "pickup.html")]
struct PickupPage {
    ctx: Ctx,
    token: String,
    title: String,
    serial: String,
    not_after: String,
}

async fn pickup_request(
    app: &AppState,
    token: &str,
    source: String,
) -> Result<crate::model::Request, AppError> {
    let store = app.store.clone();
    let hash = token_hash(token);
    let t = blocking(move || store.token(&hash)).await?;
    let now = app.now();
    let gone = || {
        AppError::NotFound("this pickup link is not valid: it may have expired; ask the registration authority for a new one".into())
    };
    let Some(t) = t.filter(|t| t.purpose == PICKUP && t.expires_at > now) else {
        app.event(
            "-",
            "pickup_refused",
            None,
            None,
            Some(source),
            "unknown or expired pickup token",
        )
        .await;
        return Err(gone());
    };
    let store = app.store.clone();
    let id = t.request;
    let r = blocking(move || store.request(id))
        .await?
        .ok_or_else(gone)?;
    if r.state != State::Issued || r.certificate_pem.is_none() {
        return Err(AppError::NotFound(
            "this certificate is no longer available (it was revoked): contact the registration authority".into(),
        ));
    }
    Ok(r)
}

/// The pickup page of a token from an "issued" mail.
pub async fn pickup(
    AxState(app): AxState<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
) -> Result<Response, AppError> {
    let r = pickup_request(&app, &token, peer.ip().to_string()).await?;
    Ok(render(&PickupPage {
        ctx: Ctx::default(),
        token,
        title: r.title(),
        serial: r.serial.clone().unwrap_or_default(),
        not_after: r.not_after.clone().unwrap_or_default(),
    }))
}

/// A certificate file through a pickup token.
pub async fn pickup_file(
    AxState(app): AxState<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((token, file)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let r = pickup_request(&app, &token, peer.ip().to_string()).await?;
    app.event(
        "-",
        "certificate_picked_up",
        Some(r.enterprise),
        Some(r.id),
        Some(peer.ip().to_string()),
        file.clone(),
    )
    .await;
    super::requests::certificate_file(&r, &file)
}
