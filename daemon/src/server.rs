//! The API: HTTPS with mandatory client certificates (rustls), HTTP/1.1
//! and HTTP/2 (hyper), routes (axum).
//!
//! A client certificate must chain to the RA trust anchor **and** have its
//! SHA-256 fingerprint on the allowlist; anything else fails the handshake.
//! The RA identity is looked up again for every request, so a reload that
//! removes an RA takes effect on open connections too.
//!
//! This layer only translates HTTP: it parses a request, finds the RA's
//! grant, calls the pipeline's service (issue, revoke, lookup, crl,
//! policy, status) on the blocking pool, and renders the answer or the
//! refusal, which it audits.

use crate::audit::AuditEvent;
use crate::certifier::Certifiers;
use crate::clock::Clock;
use crate::config::ApiConfig;
use crate::crl::CrlService;
use crate::issue::Issuer;
use crate::journal::Ledger;
use crate::lookup::{ListQuery, Lookup};
use crate::policy::{Grant, LivePolicy};
use crate::rate_limit::{Operation, RateLimiter};
use crate::revoke::Revoker;
use crate::status;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use certd_api::{ApiError, ErrorCode, IssueRequest, RevokeRequest};
use http_body_util::BodyExt;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::Digest;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the API works with: its settings, the policy in force (for the
/// allowlist and grants), the audit log (for refusals), the clock, and the
/// pipeline's services it translates HTTP into. Built once by the daemon.
pub struct Api {
    /// The `[api]` settings.
    pub settings: ApiConfig,
    /// The policy in force.
    pub policy: Arc<LivePolicy>,
    /// The certifiers (for health).
    pub certifiers: Arc<Certifiers>,
    /// The audit log.
    pub audit: Arc<dyn Ledger>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Issuance.
    pub issuer: Arc<Issuer>,
    /// Revocation.
    pub revoker: Arc<Revoker>,
    /// Look-ups and listings.
    pub lookup: Arc<Lookup>,
    /// The RAs' rate budgets (for revocation and listing; issuance
    /// spends its own in the pipeline).
    pub limiter: Arc<RateLimiter>,
    /// CRLs.
    pub crl: Arc<CrlService>,
    /// Counters for `[metrics]`.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Checks the chain with webpki, then the fingerprint against the
/// allowlist in the current policy.
struct AllowlistVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: Arc<LivePolicy>,
}

impl std::fmt::Debug for AllowlistVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AllowlistVerifier")
    }
}

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

impl ClientCertVerifier for AllowlistVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self
            .policy
            .current()
            .knows_fingerprint(&fingerprint(end_entity))
        {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The API's TLS settings cannot be used: what is wrong and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(String);

fn missing(what: String) -> TlsSetupError {
    TlsSetupError(what)
}

/// Tells rustls the time of the daemon's clock, against which client
/// certificates are checked.
struct ClockTime(Arc<dyn Clock>);

impl std::fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockTime")
    }
}

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        let since_epoch = self.0.now().duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(UnixTime::since_unix_epoch(since_epoch))
    }
}

/// The TLS configuration of the API: client certificates checked against
/// `api.ra_trust_anchor` at `clock`'s time, then against the allowlist of
/// the policy in force.
pub fn tls_config(
    policy: Arc<LivePolicy>,
    clock: Arc<dyn Clock>,
    api: &ApiConfig,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let read_certs = |path: &std::path::Path,
                      what: &str|
     -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| missing(format!("api.{what} {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(missing(format!(
                "api.{what} {} holds no certificate",
                path.display()
            )));
        }
        Ok(certs)
    };
    let chain = read_certs(&api.tls_certificate, "tls_certificate")?;
    let key = PrivateKeyDer::from_pem_file(&api.tls_key)
        .map_err(|e| missing(format!("api.tls_key {}: {e}", api.tls_key.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&api.ra_trust_anchor, "ra_trust_anchor")? {
        roots
            .add(ca)
            .map_err(|e| missing(format!("api.ra_trust_anchor: {e}")))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| missing(format!("api.ra_trust_anchor: {e}")))?;
    let verifier = Arc::new(AllowlistVerifier { inner, policy });
    // TLS 1.3, and TLS 1.2 only with the provider's ECDHE + AEAD suites.
    let mut config =
        rustls::ServerConfig::builder_with_details(provider, Arc::new(ClockTime(clock)))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| missing(format!("TLS: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                missing(format!(
                    "api.tls_certificate and api.tls_key do not fit together: {e}"
                ))
            })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // After a TLS 1.3 handshake, session tickets are certd's first word and
    // are sent only once the client's certificate passed: RA clients
    // (certd-api) wait for one before using a connection, so that a refused
    // RA hears the alert at connect instead of after its request.
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}

/// Who is on the other end of a connection.
#[derive(Clone)]
struct Peer {
    fingerprint: String,
    addr: SocketAddr,
}

/// Audits handshake refusals, at most this many a minute (then one summary),
/// so unauthenticated clients cannot fill the disk through the audit log.
const MAX_TLS_REFUSALS_AUDITED_PER_MINUTE: u64 = 60;

struct RefusalBudget {
    window: AtomicU64,
    count: AtomicU64,
}

impl RefusalBudget {
    /// Whether a refusal at `now` (Unix seconds) is audited, and how many
    /// went unaudited in the minute before, if this one starts a new minute.
    fn allow(&self, now: i64) -> (bool, u64) {
        let minute = now as u64 / 60;
        if self.window.swap(minute, Ordering::Relaxed) != minute {
            let dropped = self
                .count
                .swap(0, Ordering::Relaxed)
                .saturating_sub(MAX_TLS_REFUSALS_AUDITED_PER_MINUTE);
            self.count.fetch_add(1, Ordering::Relaxed);
            return (true, dropped);
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        (n < MAX_TLS_REFUSALS_AUDITED_PER_MINUTE, 0)
    }
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let settings = api.settings.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = router(
        api.clone(),
        BodyLimit {
            bytes: settings.max_body_bytes,
            within: Duration::from_secs(settings.request_timeout_secs),
        },
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let budget = Arc::new(RefusalBudget {
        window: AtomicU64::new(0),
        count: AtomicU64::new(0),
    });
    let handshake_timeout = Duration::from_secs(settings.handshake_timeout_secs);
    let header_timeout = Duration::from_secs(settings.header_timeout_secs);
    let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router, api, budget) = (
            acceptor.clone(),
            router.clone(),
            api.clone(),
            budget.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return refuse_handshake(&api, &budget, addr, &e.to_string()).await,
                Err(_) => {
                    return refuse_handshake(&api, &budget, addr, "handshake timed out").await
                }
            };
            let fingerprint = match stream.get_ref().1.peer_certificates() {
                Some([leaf, ..]) => fingerprint(leaf),
                _ => return refuse_handshake(&api, &budget, addr, "no client certificate").await,
            };
            let svc = router.layer(Extension(Peer { fingerprint, addr }));
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(64)
                .keep_alive_interval(Some(Duration::from_secs(30)));
            let activity = Arc::new(Activity::new());
            let svc = svc.layer(Extension(activity.clone()));
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper_util::service::TowerToHyperService::new(svc);
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let ended = supervise(conn, &activity, idle_timeout, |conn| {
                tracing::debug!(peer = %addr, "closing an idle connection");
                conn.graceful_shutdown();
            })
            .await;
            match ended {
                Ended::Closed(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                }
                Ended::Closed(Ok(())) => {}
                Ended::Cut => {
                    tracing::debug!(peer = %addr, "cut an idle connection that did not close");
                }
            }
        });
    }
}

/// How often a connection's idleness is looked at.
const ACTIVITY_CHECK: Duration = Duration::from_millis(250);
/// How long an idle connection asked to close may take before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a connection's watchdog decides at one of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Keep,
    /// Idle too long: ask it to close after what is in flight.
    AskToClose,
    /// Asked to close and did not within [`CLOSE_GRACE`].
    Cut,
}

/// Closes a connection that holds a slot without using it.
struct Watchdog {
    idle_timeout: Duration,
    /// When it was asked to close.
    closing: Option<tokio::time::Instant>,
}

impl Watchdog {
    fn new(idle_timeout: Duration) -> Self {
        Self {
            idle_timeout,
            closing: None,
        }
    }

    fn check(&mut self, activity: &Activity) -> Watch {
        match self.closing {
            Some(since) if since.elapsed() > CLOSE_GRACE => Watch::Cut,
            Some(_) => Watch::Keep,
            None if activity.idle_for() > self.idle_timeout => {
                self.closing = Some(tokio::time::Instant::now());
                Watch::AskToClose
            }
            None => Watch::Keep,
        }
    }
}

/// How a supervised connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended<T> {
    /// It finished by itself (perhaps after being asked to), with this.
    Closed(T),
    /// It was cut after ignoring the request to close.
    Cut,
}

/// Drives `conn` to its end, every [`ACTIVITY_CHECK`] checking `activity`:
/// idle for longer than `idle_timeout`, the connection is asked to close
/// (`ask_to_close`, a graceful shutdown), and cut if it has not closed
/// [`CLOSE_GRACE`] later.
async fn supervise<C: std::future::Future>(
    mut conn: std::pin::Pin<&mut C>,
    activity: &Activity,
    idle_timeout: Duration,
    mut ask_to_close: impl FnMut(std::pin::Pin<&mut C>),
) -> Ended<C::Output> {
    let mut tick = tokio::time::interval(ACTIVITY_CHECK);
    let mut watchdog = Watchdog::new(idle_timeout);
    loop {
        tokio::select! {
            ended = conn.as_mut() => return Ended::Closed(ended),
            _ = tick.tick() => match watchdog.check(activity) {
                Watch::Keep => {}
                Watch::AskToClose => ask_to_close(conn.as_mut()),
                Watch::Cut => return Ended::Cut,
            },
        }
    }
}

/// One connection's requests in flight and when it last did something, so
/// that a connection holding a slot without using it is closed after
/// `api.idle_timeout_secs` — whether it never sent a byte, trickles its
/// headers, or sits between requests.
///
/// Times are tokio's, so tests can run the watchdog on a paused clock.
struct Activity {
    in_flight: AtomicU64,
    /// Milliseconds after `epoch` of the last request start or end.
    last: AtomicU64,
    epoch: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            last: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long nothing has been in flight (zero while a request is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Counts a request in flight from its start until its answer is ready
/// (or it is dropped).
async fn track_activity(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let _in_flight = req
        .extensions()
        .get::<Arc<Activity>>()
        .cloned()
        .map(InFlight::new);
    next.run(req).await
}

struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Appends `events` to the audit log on the blocking pool: an append
/// waits for its fsync, which must not hold up the reactor.
async fn audit_off_reactor(api: &Arc<Api>, events: Vec<AuditEvent>) {
    if events.is_empty() {
        return;
    }
    let api = api.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for event in events {
            let _ = api.audit.record(event);
        }
    })
    .await;
}

async fn refuse_handshake(api: &Arc<Api>, budget: &RefusalBudget, addr: SocketAddr, reason: &str) {
    tracing::info!(peer = %addr, reason, "TLS handshake refused");
    api.metrics.refusal("tls_handshake");
    let (audit, dropped) = budget.allow(api.clock.unix());
    let mut events = Vec::new();
    if dropped > 0 {
        events.push(
            AuditEvent::new("tls_refused_suppressed", "certd")
                .detail(json!({"count": dropped, "note": "handshake refusals over the per-minute audit budget"})),
        );
    }
    if audit {
        events.push(
            AuditEvent::new("tls_refused", format!("peer:{addr}"))
                .detail(json!({"reason": reason})),
        );
    }
    audit_off_reactor(api, events).await;
}

fn router(api: Arc<Api>, limit: BodyLimit) -> Router {
    Router::new()
        .route("/v1/certificates", post(issue_handler).get(list_handler))
        .route("/v1/certificates/{serial}", get(get_handler))
        .route("/v1/certificates/{serial}/revoke", post(revoke_handler))
        .route("/v1/certifiers/{name}/crl", get(crl_handler))
        .route("/v1/profiles", get(profiles_handler))
        .route("/v1/health", get(health_handler))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(limit))
        .layer(axum::middleware::from_fn(track_activity))
        .with_state(api)
}

/// How large a request body may be, and how long it may take to arrive.
#[derive(Clone, Copy)]
struct BodyLimit {
    bytes: usize,
    within: Duration,
}

/// An API answer: JSON body or error; errors are audited.
struct Reply(Result<(StatusCode, Bytes, &'static str), ApiError>);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self.0 {
            Ok((status, body, content_type)) => {
                (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
            }
            Err(e) => error_response(&e),
        }
    }
}

fn error_response(e: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&e.body()).unwrap_or_default();
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if e.code.is_transient() && status.as_u16() >= 500 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

fn json_ok<T: serde::Serialize>(
    status: StatusCode,
    v: &T,
) -> Result<(StatusCode, Bytes, &'static str), ApiError> {
    serde_json::to_vec(v)
        .map(|b| (status, Bytes::from(b), "application/json"))
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// Looks up the RA for this request and audits refusals.
fn grant_of(api: &Api, peer: &Peer) -> Result<Grant, ApiError> {
    api.policy
        .current()
        .grant_for_fingerprint(&peer.fingerprint)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotAuthorized,
                "this client certificate is no longer on certd's allowlist",
            )
        })
}

/// The audit entry of a refusal, counted in the metrics as it is made
/// (every refusal is audited, so the two agree).
fn refusal_event(api: &Api, actor: &str, method: &Method, uri: &Uri, e: &ApiError) -> AuditEvent {
    api.metrics.refusal(e.code.as_str());
    AuditEvent::new("refused", actor).detail(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "code": e.code.as_str(),
        "message": e.message,
    }))
}

/// Refuses a request before it reaches its handler (bad body or query):
/// audited under the RA's name, or the peer address if it has none.
async fn refuse(call: Call, e: ApiError) -> Reply {
    let actor = grant_of(&call.api, &call.peer)
        .map(|g| g.name().to_string())
        .unwrap_or_else(|_| format!("peer:{}", call.peer.addr));
    let event = refusal_event(&call.api, &actor, &call.method, &call.uri, &e);
    audit_off_reactor(&call.api, vec![event]).await;
    Reply(Err(e))
}

/// Runs `f` with the request's RA on the blocking pool and audits a refusal.
async fn with_grant<F>(call: Call, f: F) -> Reply
where
    F: FnOnce(&Api, &Grant) -> Result<(StatusCode, Bytes, &'static str), ApiError> + Send + 'static,
{
    let Call {
        api,
        peer,
        method,
        uri,
    } = call;
    let result = tokio::task::spawn_blocking(move || {
        let outcome = match grant_of(&api, &peer) {
            Ok(grant) => f(&api, &grant).map_err(|e| (grant.name().to_string(), e)),
            Err(e) => Err((format!("peer:{}", peer.addr), e)),
        };
        outcome.map_err(|(actor, e)| {
            let _ = api
                .audit
                .record(refusal_event(&api, &actor, &method, &uri, &e));
            e
        })
    })
    .await;
    match result {
        Ok(outcome) => Reply(outcome),
        Err(e) => Reply(Err(ApiError::new(
            ErrorCode::Internal,
            format!("request task failed: {e}"),
        ))),
    }
}

async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as application/json",
        ));
    }
    // A declared length over the limit is refused before the body is
    // touched: polling it would answer `Expect: 100-continue`, and the
    // client would start sending what certd will not read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.bytes as u64) {
        return Err(ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the body is larger than {} bytes", limit.bytes),
        ));
    }
    let limited = http_body_util::Limited::new(body, limit.bytes);
    let Ok(collected) = tokio::time::timeout(limit.within, limited.collect()).await else {
        return Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} s (api.request_timeout_secs); send it again",
                limit.within.as_secs()
            ),
        ));
    };
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("the body is larger than {} bytes", limit.bytes),
            ))
        }
        Err(e) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("reading the body: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid request body: {e}")))
}

/// A request as the handlers see it: the daemon, the authenticated peer
/// (set by the connection's layer), and what to name in an audit entry.
struct Call {
    api: Arc<Api>,
    peer: Peer,
    method: Method,
    uri: Uri,
}

impl FromRequestParts<Arc<Api>> for Call {
    type Rejection = Reply;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<Api>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<Peer>().cloned().ok_or_else(|| {
            Reply(Err(ApiError::new(
                ErrorCode::Internal,
                "a request arrived without its TLS peer",
            )))
        })?;
        Ok(Call {
            api: api.clone(),
            peer,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
        })
    }
}

/// Reads the body, then runs `f`; a body error is audited like any refusal.
async fn with_body<T, F>(
    call: Call,
    headers: HeaderMap,
    body: Body,
    limit: BodyLimit,
    f: F,
) -> Reply
where
    T: DeserializeOwned + Send + 'static,
    F: FnOnce(&Api, &Grant, T) -> Result<(StatusCode, Bytes, &'static str), ApiError>
        + Send
        + 'static,
{
    match read_json::<T>(&headers, body, limit).await {
        Ok(v) => with_grant(call, move |s, g| f(s, g, v)).await,
        Err(e) => refuse(call, e).await,
    }
}

/// Issuance runs on the request's own task: the pipeline awaits the
/// ledger's writes and the signing threads instead of holding a thread of
/// the blocking pool, so a request costs no hand-off but those.
async fn issue_handler(
    call: Call,
    Extension(limit): Extension<BodyLimit>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let req: IssueRequest = match read_json(&headers, body, limit).await {
        Ok(req) => req,
        Err(e) => return refuse(call, e).await,
    };
    // The issuance runs in a task of its own, to its end (certificate
    // recorded or intent abandoned, refusal audited), even when the client
    // goes away: a dropped connection must not leave an intent half-way
    // and its request_id `in_progress` until the next start.
    let Call {
        api,
        peer,
        method,
        uri,
    } = call;
    let issuance = tokio::spawn(async move {
        let (actor, result) = match grant_of(&api, &peer) {
            Ok(grant) => {
                let result = api.issuer.issue(&grant, &req).await.and_then(|resp| {
                    let status = if resp.replayed {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    };
                    json_ok(status, &resp)
                });
                (grant.name().to_string(), result)
            }
            Err(e) => (format!("peer:{}", peer.addr), Err(e)),
        };
        if let Err(e) = &result {
            let event = refusal_event(&api, &actor, &method, &uri, e);
            if let Err(audit) = api.audit.audit_async(event).await {
                tracing::error!(error = %audit, "cannot write the audit log");
            }
        }
        result
    });
    match issuance.await {
        Ok(result) => Reply(result),
        Err(e) => Reply(Err(ApiError::new(
            ErrorCode::Internal,
            format!("issuance task failed: {e}"),
        ))),
    }
}

async fn get_handler(call: Call, Path(serial): Path<String>) -> Reply {
    with_grant(call, move |s, g| {
        json_ok(StatusCode::OK, &s.lookup.get(g, &serial)?)
    })
    .await
}

async fn revoke_handler(
    call: Call,
    Extension(limit): Extension<BodyLimit>,
    Path(serial): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    with_body(
        call,
        headers,
        body,
        limit,
        move |s, g, req: RevokeRequest| {
            s.limiter
                .check_op(g, Operation::Revoke, s.clock.instant())?;
            json_ok(StatusCode::OK, &s.revoker.revoke(g, &serial, &req)?)
        },
    )
    .await
}

async fn list_handler(
    call: Call,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            let err = ApiError::new(ErrorCode::BadRequest, format!("query: {e}"));
            return refuse(call, err).await;
        }
    };
    with_grant(call, move |s, g| {
        s.limiter.check_op(g, Operation::List, s.clock.instant())?;
        json_ok(StatusCode::OK, &s.lookup.list(g, &q)?)
    })
    .await
}

async fn crl_handler(call: Call, Path(name): Path<String>) -> Reply {
    with_grant(call, move |s, _g| {
        let state = s.crl.latest(&name)?;
        // The CRL's bytes are shared, not copied: a CRL of a million
        // revocations is tens of megabytes.
        Ok((StatusCode::OK, state.der, "application/pkix-crl"))
    })
    .await
}

async fn profiles_handler(call: Call) -> Reply {
    with_grant(call, |s, g| {
        json_ok(StatusCode::OK, &s.policy.current().profile_infos(g))
    })
    .await
}

async fn health_handler(call: Call) -> Reply {
    with_grant(call, |s, _g| {
        json_ok(StatusCode::OK, &status::health(&s.certifiers))
    })
    .await
}

async fn no_such_endpoint(call: Call) -> Reply {
    let message = format!("no endpoint {}; see the API reference", call.uri.path());
    refuse_known(call, ApiError::new(ErrorCode::NoSuchEndpoint, message)).await
}

async fn method_not_allowed(call: Call) -> Reply {
    let message = format!("{} is not allowed here", call.method);
    refuse_known(call, ApiError::new(ErrorCode::MethodNotAllowed, message)).await
}

/// Refuses a request of a known RA (an unknown one gets `not_authorized`
/// instead), audited like every refusal.
async fn refuse_known(call: Call, e: ApiError) -> Reply {
    with_grant(call, move |_, _| Err(e)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Intent, IntentOutcome, Serial};
    use crate::testing::{csr, TestCa, RA, RA_FINGERPRINT};
    use serde_json::Value;
    use std::cell::Cell;
    use std::pin::Pin;
    use tokio::time::{Instant, Sleep};
    use tower::ServiceExt;

    const TLS_SERVER: &str =
        "[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n";
    const GRANT: &str = "profiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]";

    /// POSTs `req` to the router as the RA, past TLS; the status and body.
    async fn post_issue(ca: &TestCa, req: &IssueRequest) -> (StatusCode, Value) {
        let limit = BodyLimit {
            bytes: 64 * 1024,
            within: Duration::from_secs(30),
        };
        let peer = Peer {
            fingerprint: RA_FINGERPRINT.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 40_000)),
        };
        let api = ca.services.api().expect("the API's services");
        let app = router(Arc::new(api), limit).layer(Extension(peer));
        let body = serde_json::to_vec(req).expect("JSON");
        let http = axum::http::Request::post("/v1/certificates")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("a request");
        let resp = app.oneshot(http).await.expect("the router answers");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }

    /// The one audit entry a refusal leaves: `refused`, by the RA, naming
    /// the request, the code and the message.
    fn assert_refusal_audited(ca: &TestCa, code: &str, message: &str) {
        let audit = ca.audit_entries();
        let refused: Vec<&Value> = audit.iter().filter(|e| e["kind"] == "refused").collect();
        assert_eq!(refused.len(), 1, "{audit:#?}");
        let e = refused[0];
        assert_eq!(e["actor"], RA);
        assert_eq!(
            e["detail"],
            serde_json::json!({
                "method": "POST",
                "path": "/v1/certificates",
                "code": code,
                "message": message,
            })
        );
    }

    #[tokio::test]
    async fn a_lint_refusal_is_answered_422_and_audited() {
        let ca = TestCa::adjusted(TLS_SERVER, GRANT, |c| {
            c.profiles[0].crl_url = Some("https://crl.example.com/ca.crl".into());
        });
        let req = IssueRequest::new("r1", "tls-server", csr(0x22, "www.example.com"));
        let (status, body) = post_issue(&ca, &req).await;
        let message = "pre-issuance lint refused the certificate: \
                       cRLDistributionPoints must hold plain http:// URLs only";
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "lint_failed");
        assert_eq!(body["error"]["message"], message);
        assert_refusal_audited(&ca, "lint_failed", message);
        assert_eq!(ca.audit_entries().len(), 1);
        assert!(ca.records().is_empty(), "{:?}", ca.records());
    }

    #[tokio::test]
    async fn a_replay_of_a_request_being_signed_is_answered_409_and_audited() {
        let ca = TestCa::new(TLS_SERVER, GRANT);
        let req = IssueRequest::new("r1", "tls-server", csr(0x22, "www.example.com"));
        // What the original request recorded before it went to the token.
        let intent = Intent {
            certifier: "ca".into(),
            ra: RA.into(),
            request_id: Some("r1".into()),
            tbs_sha256: [0; 32],
            profile: "tls-server".into(),
            created: 0,
            approval: None,
            instance: String::new(),
            spki_sha256: None,
        };
        let serial = Serial::from_hex(&"01".repeat(16)).expect("a serial");
        let claim = Some((RA, "r1", crate::issue::request_digest(&req)));
        let outcome =
            crate::testing::record_intent(ca.services.ledger.as_ref(), &serial, intent, claim);
        assert_eq!(outcome.expect("intent"), IntentOutcome::Recorded);

        let (status, body) = post_issue(&ca, &req).await;
        let message =
            "the original request with this request_id is still being signed; retry shortly";
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "in_progress");
        assert_eq!(body["error"]["message"], message);
        assert_refusal_audited(&ca, "in_progress", message);
        assert_eq!(ca.records().len(), 1);
    }

    const IDLE: Duration = Duration::from_secs(10);

    /// A connection that does not end by itself: a sleep of a day.
    fn connection() -> Pin<Box<Sleep>> {
        Box::pin(tokio::time::sleep(Duration::from_secs(86_400)))
    }

    /// Asks counted and timed.
    struct Asks {
        count: Cell<u32>,
        last: Cell<Option<Instant>>,
    }

    impl Asks {
        fn new() -> Self {
            Self {
                count: Cell::new(0),
                last: Cell::new(None),
            }
        }

        fn note(&self) {
            self.count.set(self.count.get() + 1);
            self.last.set(Some(Instant::now()));
        }

        /// The one ask there was, as time since `start`.
        fn once_after(&self, start: Instant) -> Duration {
            assert_eq!(self.count.get(), 1, "asked to close once");
            self.last.get().expect("asked") - start
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_asked_to_close_then_cut() {
        let start = Instant::now();
        let activity = Activity::new();
        let mut conn = connection();
        let asks = Asks::new();
        let ended = supervise(conn.as_mut(), &activity, IDLE, |_| asks.note()).await;
        assert_eq!(ended, Ended::Cut);
        let asked = asks.once_after(start);
        // At the first check after the idle timeout, not before.
        assert!(asked > IDLE && asked <= IDLE + ACTIVITY_CHECK, "{asked:?}");
        let cut = Instant::now() - start - asked;
        assert!(
            cut > CLOSE_GRACE && cut <= CLOSE_GRACE + ACTIVITY_CHECK,
            "{cut:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_that_closes_when_asked_is_not_cut() {
        let start = Instant::now();
        let activity = Activity::new();
        let mut conn = connection();
        let asks = Asks::new();
        let reaction = Duration::from_millis(100);
        let ended = supervise(conn.as_mut(), &activity, IDLE, |conn| {
            asks.note();
            conn.reset(Instant::now() + reaction);
        })
        .await;
        assert_eq!(ended, Ended::Closed(()));
        let asked = asks.once_after(start);
        assert!(asked > IDLE && asked <= IDLE + ACTIVITY_CHECK, "{asked:?}");
        assert_eq!(Instant::now() - start, asked + reaction);
    }

    /// A request that takes an hour keeps its connection; the idle time
    /// counts from its end.
    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_connection() {
        let start = Instant::now();
        let activity = Arc::new(Activity::new());
        let request = InFlight::new(activity.clone());
        let hour = Duration::from_secs(3600);
        tokio::spawn(async move {
            tokio::time::sleep(hour).await;
            drop(request);
        });
        let mut conn = connection();
        let asks = Asks::new();
        let ended = supervise(conn.as_mut(), &activity, IDLE, |_| asks.note()).await;
        assert_eq!(ended, Ended::Cut);
        let asked = asks.once_after(start);
        assert!(
            asked > hour + IDLE && asked <= hour + IDLE + ACTIVITY_CHECK,
            "{asked:?}"
        );
    }
}
