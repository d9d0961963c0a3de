//! The daemon: start-up wiring (state directory, ledger, audit log, crash
//! recovery, certifiers and every service built once over them), the run
//! loop (API server, control socket, token probes, CRL schedules, systemd
//! notification, signals) and shutdown.

use crate::anchor::{Checkpoint, Checkpointer};
use crate::audit::AuditEvent;
use crate::certifier::{Certifiers, State, PROBE_INTERVAL};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::control::{self, Controller, SocketError};
use crate::crl::CrlService;
use crate::hsm::pool::SigningPool;
use crate::issue::Issuer;
use crate::journal::{Journal, JournalError, Ledger};
use crate::lookup::Lookup;
use crate::policy::{LivePolicy, Policy};
use crate::rate_limit::RateLimiter;
use crate::revoke::Revoker;
use crate::server::{self, Api, TlsSetupError};
use crate::status;
use crate::systemd;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A certifier cannot be loaded.
    #[error(transparent)]
    Certifier(#[from] crate::certifier::CertifierError),
    /// The ledger cannot be opened.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// Interrupted issuances or revocations cannot be settled.
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    /// The audit log cannot be opened or written.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The journal (the audit log and the ledger applied from it) cannot
    /// be opened or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A file or socket problem.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file named by the configuration is missing or unusable.
    #[error("{0}")]
    Missing(String),
}

impl From<SocketError> for DaemonError {
    fn from(e: SocketError) -> Self {
        match e {
            SocketError::Io { what, source } => DaemonError::Io { what, source },
            SocketError::Refused(message) => DaemonError::Missing(message),
        }
    }
}

impl From<TlsSetupError> for DaemonError {
    fn from(e: TlsSetupError) -> Self {
        DaemonError::Missing(e.to_string())
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Path of the audit log inside the state directory.
pub fn audit_path(state_dir: &Path) -> PathBuf {
    crate::audit::log_path(state_dir)
}

/// Path of the ledger of certd before 0.2 (a sled database) inside the
/// state directory: `certd migrate-ledger` moves it to the index.
pub fn ledger_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger")
}

/// Path of the ledger index (a redb database, applied from the audit log)
/// inside the state directory.
pub fn index_path(state_dir: &Path) -> PathBuf {
    crate::ledger::index::path_in(state_dir)
}

/// Takes the state directory's lock: one daemon (or one `migrate-ledger`)
/// per ledger. Held as long as the returned file is.
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, DaemonError> {
    let lock_path = state_dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(DaemonError::Missing(format!(
            "another certd is running with state_dir {}: stop it first (one daemon per ledger)",
            state_dir.display()
        )));
    }
    Ok(lock)
}

/// `certd migrate-ledger`: moves the sled ledger of an earlier certd in
/// the configured state directory to the ledger index (see
/// [`crate::journal::migrate_from_sled`]), with the daemon stopped, and
/// records it in the audit log.
pub fn migrate_ledger(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<crate::journal::Migrated, DaemonError> {
    let state_dir = &config.daemon.state_dir;
    let _lock = lock_state_dir(state_dir)?;
    let legacy = ledger_path(state_dir);
    if !legacy.is_dir() {
        return Err(DaemonError::Missing(format!(
            "{} holds no earlier ledger: nothing to migrate",
            legacy.display()
        )));
    }
    let names: Vec<String> = config.certifiers.iter().map(|c| c.name.clone()).collect();
    let done = crate::journal::migrate_from_sled(
        &legacy,
        &index_path(state_dir),
        &audit_path(state_dir),
        &names,
        clock.clone(),
    )?;
    let (journal, _) = Journal::open(&audit_path(state_dir), &index_path(state_dir), clock)?;
    journal.audit(AuditEvent::new("ledger_migrated", "certd").detail(json!({
        "from": legacy.display().to_string(),
        "kept_at": done.kept_at.display().to_string(),
        "records": done.records,
        "idempotency_keys": done.idempotency_keys,
        "certifiers": done.certifiers,
        "after_entry": done.checkpoint_seq,
    })))?;
    Ok(done)
}

/// Checks that every file the configuration names is there, so that
/// `certd check-config` catches what `certd run` would trip over.
pub fn check_files(config: &Config) -> Result<(), DaemonError> {
    if !config.hsm.module.is_file() {
        return Err(DaemonError::Missing(format!(
            "hsm.module {} does not exist; install the PKCS#11 library (e.g. apt-get install softhsm2) or fix the path",
            config.hsm.module.display()
        )));
    }
    Certifiers::load(config)?;
    for c in &config.certifiers {
        if let Some(p) = &c.pin_file {
            std::fs::metadata(p).map_err(|e| {
                DaemonError::Missing(format!(
                    "certifier {:?}: pin_file {}: {e}",
                    c.name,
                    p.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// Sets up logging to stderr (journald under systemd).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CERTD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = if under_journal {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// What the running daemon is made of: the pipeline's services, each built
/// once here, and what the API server, the control socket and the probes
/// are given of them.
pub struct Services {
    /// Configuration as loaded.
    pub config: Config,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// The policy in force.
    pub policy: Arc<LivePolicy>,
    /// The certifiers.
    pub certifiers: Arc<Certifiers>,
    /// The ledger, with the audit log it writes through (one object:
    /// the journal).
    pub ledger: Arc<dyn Ledger>,
    /// The audit log: the same journal, for plain entries.
    pub audit: Arc<dyn Ledger>,
    /// CRLs.
    pub crl: Arc<CrlService>,
    /// Issuance.
    pub issuer: Arc<Issuer>,
    /// Revocation.
    pub revoker: Arc<Revoker>,
    /// Look-ups and listings.
    pub lookup: Arc<Lookup>,
    /// The RAs' rate budgets.
    pub limiter: Arc<RateLimiter>,
    /// Signed checkpoints of the audit log.
    pub checkpoints: Arc<Checkpointer>,
    /// Counters and histograms for `[metrics]`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When the daemon started, on `clock`'s monotonic time.
    started: Instant,
    /// Held for the daemon's lifetime: one daemon per state directory.
    _lock: std::fs::File,
}

impl Services {
    /// Builds the services over what [`start`] has opened and checked;
    /// `lock` is the held lock file of the state directory.
    pub(crate) fn new(
        config: Config,
        certifiers: Arc<Certifiers>,
        ledger: Arc<dyn Ledger>,
        lock: std::fs::File,
        clock: Arc<dyn Clock>,
    ) -> Result<Services, DaemonError> {
        let audit = ledger.clone();
        let state_dir = &config.daemon.state_dir;
        let metrics = Arc::new(crate::metrics::Metrics::new(clock.unix()));
        let checkpoints = Arc::new(Checkpointer::new(
            certifiers.clone(),
            ledger.clone(),
            state_dir,
            metrics.clone(),
            clock.clone(),
        ));
        let crl = Arc::new(
            CrlService::open(
                state_dir,
                config.crl.clone(),
                certifiers.clone(),
                ledger.clone(),
                clock.clone(),
                checkpoints.clone(),
            )
            .map_err(io(format!(
                "opening the CRL store in {}",
                state_dir.display()
            )))?,
        );
        let policy = Arc::new(LivePolicy::new(Policy::from_config(&config)));
        // As many signing threads as the token has sessions for a certifier.
        let signing = Arc::new(
            SigningPool::new(config.hsm.sessions).map_err(io("starting the signing threads"))?,
        );
        // One budget per RA and operation, shared by the services.
        let limiter = Arc::new(RateLimiter::default());
        let issuer = Arc::new(Issuer::new(
            policy.clone(),
            certifiers.clone(),
            ledger.clone(),
            signing,
            clock.clone(),
            limiter.clone(),
            &config.daemon,
            metrics.clone(),
        ));
        let revoker = Arc::new(Revoker::new(
            ledger.clone(),
            crl.clone(),
            clock.clone(),
            metrics.clone(),
        ));
        let lookup = Arc::new(Lookup::new(ledger.clone()));
        Ok(Services {
            started: clock.instant(),
            config,
            clock,
            policy,
            certifiers,
            ledger,
            audit,
            crl,
            issuer,
            revoker,
            lookup,
            limiter,
            checkpoints,
            metrics,
            _lock: lock,
        })
    }

    /// What the API server is given, when the configuration has an API.
    pub fn api(&self) -> Option<Api> {
        Some(Api {
            settings: self.config.api.clone()?,
            policy: self.policy.clone(),
            certifiers: self.certifiers.clone(),
            audit: self.audit.clone(),
            clock: self.clock.clone(),
            issuer: self.issuer.clone(),
            revoker: self.revoker.clone(),
            lookup: self.lookup.clone(),
            limiter: self.limiter.clone(),
            crl: self.crl.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// What the control socket is given.
    pub fn controller(&self) -> Controller {
        Controller {
            config_source: self.config.source.clone(),
            control_gid: self
                .config
                .daemon
                .control_group
                .as_deref()
                .and_then(control::group_id),
            policy: self.policy.clone(),
            certifiers: self.certifiers.clone(),
            ledger: self.ledger.clone(),
            audit: self.audit.clone(),
            clock: self.clock.clone(),
            started: self.started,
            metrics: self.metrics.clone(),
        }
    }
}

/// Prepares the daemon: state directory, ledger and audit log, crash
/// recovery, certifiers, PIN-file activation; everything reads the time
/// from `clock`.
pub fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Services>, DaemonError> {
    let state_dir = config.daemon.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .map_err(io(format!("creating state_dir {}", state_dir.display())))?;
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("securing state_dir {}", state_dir.display())))?;
    let lock = lock_state_dir(&state_dir)?;
    let legacy = ledger_path(&state_dir);
    let index = index_path(&state_dir);
    if legacy.is_dir() && !index.exists() {
        return Err(DaemonError::Missing(format!(
            "{} holds a ledger of an earlier certd (sled); move it to this certd's ledger \
             with `certd migrate-ledger --config {}` (the daemon stopped), then start again",
            legacy.display(),
            config.source.display()
        )));
    }
    // The certifiers' certificates first: a certificate the journal's
    // replay restores must be one of theirs.
    let certifiers = Arc::new(Certifiers::load(&config)?);
    let check = |name: &str, der: &[u8]| certifiers.verify_issued(name, der);
    let (journal, opened) =
        Journal::open_checked(&audit_path(&state_dir), &index, clock.clone(), Some(&check))?;
    if opened.replayed > 0 {
        tracing::info!(
            entries = opened.replayed,
            "applied the journal's tail to the ledger index"
        );
    }
    let ledger: Arc<dyn Ledger> = Arc::new(journal);
    crate::recovery::recover_interrupted(ledger.as_ref(), &config.daemon.instance)?;
    let config_sha256 = std::fs::read(&config.source)
        .map(|b| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b))
        })
        .unwrap_or_default();
    ledger.audit(
        AuditEvent::new(crate::recovery::START_KIND, "certd").detail(json!({
            "path": config.source.display().to_string(),
            "sha256": config_sha256,
            "certifiers": config.certifiers.iter().map(|c| &c.name).collect::<Vec<_>>(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )?;
    let services = Arc::new(Services::new(config, certifiers, ledger, lock, clock)?);
    for c in services.certifiers.all() {
        let Some(pin_path) = c.config.pin_source() else {
            tracing::info!(
                certifier = c.name(),
                "locked: activate with `certd activate {}`",
                c.name()
            );
            continue;
        };
        let result = crate::secret::read_pin_file(&pin_path)
            .map_err(|e| (String::from("pin_unreadable"), e.to_string()))
            .and_then(|pin| {
                services
                    .certifiers
                    .activate(c, pin)
                    .map_err(|e| (e.code().to_string(), e.to_string()))
            });
        match result {
            Ok(_) => {
                tracing::info!(certifier = c.name(), "activated from PIN file");
                services.audit.record(
                    AuditEvent::new("activated", "certd")
                        .certifier(c.name().to_string())
                        .detail(json!({"source": pin_path.display().to_string()})),
                )?;
            }
            Err((code, message)) => {
                tracing::error!(certifier = c.name(), %message, "activation from PIN file failed; certifier stays locked");
                services.audit.record(
                    AuditEvent::new("activation_refused", "certd")
                        .certifier(c.name().to_string())
                        .detail(json!({"source": pin_path.display().to_string(), "code": code, "message": message})),
                )?;
            }
        }
    }
    Ok(services)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let config = Config::load(config_path)?;
    check_files(&config)?;
    let services = start(config, Arc::new(SystemClock))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    rt.block_on(serve(services))
}

/// The API listener: the socket systemd passed (`LISTEN_FDS`), else a
/// fresh one on `api.listen`.
fn api_listener(api: &crate::config::ApiConfig) -> Result<tokio::net::TcpListener, DaemonError> {
    let mut fds = listenfd::ListenFd::from_env();
    let std_listener = match fds
        .take_tcp_listener(0)
        .map_err(io("taking the socket passed by systemd"))?
    {
        Some(l) => l,
        None => std::net::TcpListener::bind(api.listen)
            .map_err(io(format!("binding the API to {}", api.listen)))?,
    };
    std_listener
        .set_nonblocking(true)
        .map_err(io("configuring the API socket"))?;
    tokio::net::TcpListener::from_std(std_listener).map_err(io("registering the API socket"))
}

/// What the metrics' gauges show now.
pub fn metrics_snapshot(services: &Services) -> crate::metrics::Snapshot {
    use crate::metrics::{CertifierSnapshot, CrlSnapshot, Snapshot};
    Snapshot {
        certifiers: services
            .certifiers
            .all()
            .iter()
            .map(|c| CertifierSnapshot {
                name: c.name().to_string(),
                state: c.state().name(),
                crl: services.crl.current(c.name()).map(|crl| CrlSnapshot {
                    number: crl.number,
                    this_update: crl.this_update,
                    next_update: crl.next_update,
                }),
            })
            .collect(),
        crl_refresh_seconds: i64::from(services.config.crl.refresh_hours) * 3600,
        audit_entries: services.ledger.last_entry().0,
        checkpoint_interval_seconds: i64::try_from(services.config.daemon.audit_checkpoint_secs)
            .unwrap_or(i64::MAX),
    }
}

/// Serves `GET /metrics` (OpenMetrics text) on `listener` until the
/// process ends.
async fn serve_metrics(services: Arc<Services>, listener: tokio::net::TcpListener) {
    use axum::routing::get;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics listening");
    }
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(s): axum::extract::State<Arc<Services>>| async move {
                    let body = tokio::task::spawn_blocking(move || {
                        s.metrics
                            .render(s.ledger.commit_latency(), &metrics_snapshot(&s))
                    })
                    .await
                    .unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            crate::metrics::CONTENT_TYPE,
                        )],
                        body,
                    )
                },
            ),
        )
        .with_state(services);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

async fn serve(services: Arc<Services>) -> Result<(), DaemonError> {
    // Signal handlers before READY: a SIGTERM that follows READY at once
    // stops certd cleanly instead of killing it.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("installing the SIGINT handler"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(io("installing the SIGHUP handler"))?;
    let socket_path = services.config.daemon.control_socket.clone();
    let listener = control::bind(&services.config.daemon)?;
    if let Some(api) = services.api() {
        let tls = server::tls_config(
            services.policy.clone(),
            services.clock.clone(),
            &api.settings,
        )?;
        let tcp = api_listener(&api.settings)?;
        tracing::info!(address = %tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(), "API listening");
        tokio::spawn(server::serve(Arc::new(api), tcp, tls));
    }
    if let Some(metrics) = &services.config.metrics {
        let tcp = tokio::net::TcpListener::bind(metrics.listen)
            .await
            .map_err(io(format!(
                "binding the metrics listener to {}",
                metrics.listen
            )))?;
        // Bound before READY, so `certd status` shows it from then on.
        if let Ok(address) = tcp.local_addr() {
            services.metrics.bound(address);
        }
        tokio::spawn(serve_metrics(services.clone(), tcp));
    }
    systemd::notify_ready(&status::summary(&services.certifiers));
    tracing::info!(socket = %socket_path.display(), "certd ready");
    if let Some(interval) = systemd::watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                systemd::notify_watchdog();
            }
        });
    }
    tokio::spawn(probe_loop(services.clone()));
    for c in services.certifiers.all() {
        tokio::spawn(services.crl.clone().keep_fresh(c.clone()));
    }
    if services.config.daemon.audit_checkpoint_secs > 0 {
        tokio::spawn(checkpoint_loop(
            services.checkpoints.clone(),
            Duration::from_secs(services.config.daemon.audit_checkpoint_secs),
        ));
    }

    let controller = Arc::new(services.controller());
    // Polled in the loop below rather than spawned, so that nothing is
    // answered on the control socket once a signal has stopped the loop.
    let control = control::serve(controller.clone(), listener);
    tokio::pin!(control);
    loop {
        tokio::select! {
            never = &mut control => match never {},
            _ = term.recv() => break,
            _ = hup.recv() => {
                let c = controller.clone();
                let _ = tokio::task::spawn_blocking(move || c.reload()).await;
            }
            _ = int.recv() => break,
        }
    }
    systemd::notify_stopping();
    tracing::info!("stopping");
    // The log's end anchored before the last entry.
    let c = services.checkpoints.clone();
    match tokio::task::spawn_blocking(move || c.checkpoint("shutdown")).await {
        Ok(Ok(Checkpoint::NoSigner)) => {
            tracing::warn!("no active certifier: the audit log's end is not anchored at shutdown")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint at shutdown failed"),
        Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
    }
    // The last entry: a CRL still being made, or a request still in
    // flight, is refused rather than recorded after it.
    if let Err(e) = services.audit.finish(AuditEvent::new("stopped", "certd")) {
        tracing::error!(error = %e, "cannot write the audit log");
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Anchors the audit log's end every `every` while entries are written
/// (a checkpoint with nothing new since the last is skipped).
async fn checkpoint_loop(checkpoints: Arc<Checkpointer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = checkpoints.clone();
        match tokio::task::spawn_blocking(move || c.checkpoint("periodic")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "periodic audit checkpoint failed"),
            Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
        }
    }
}

/// How often at most the PKCS#11 module is re-initialised to find a
/// token that went away.
pub const REINIT_INTERVAL: Duration = Duration::from_secs(5);

/// Re-initialises the PKCS#11 module while a token is away, and probes
/// every certifier's token, every [`PROBE_INTERVAL`].
async fn probe_loop(services: Arc<Services>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    let mut last_reinit: Option<Instant> = None;
    loop {
        tick.tick().await;
        let now = services.clock.instant();
        if services.certifiers.awaiting_token()
            && last_reinit.is_none_or(|t| now.saturating_duration_since(t) >= REINIT_INTERVAL)
        {
            last_reinit = Some(now);
            let s2 = services.clone();
            match tokio::task::spawn_blocking(move || s2.certifiers.reinitialize_module()).await {
                Ok(Ok(states)) => {
                    for (name, state) in states {
                        if state == State::Active {
                            tracing::info!(certifier = %name, "token is back: certifier active again");
                            let _ = services.audit.record(
                                AuditEvent::new("certifier_state", "certd")
                                    .certifier(name)
                                    .detail(json!({"state": "active", "reason": "token available again"})),
                            );
                        }
                    }
                    systemd::notify_status(&status::summary(&services.certifiers));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "re-initialising the PKCS#11 module failed")
                }
                Err(e) => tracing::warn!(error = %e, "re-initialisation task failed"),
            }
            continue;
        }
        for c in services.certifiers.all() {
            let c2 = c.clone();
            let changed = match tokio::task::spawn_blocking(move || c2.probe()).await {
                Ok(changed) => changed,
                Err(_) => continue,
            };
            if let Some(state) = changed {
                let detail = match &state {
                    State::Unavailable(r) => json!({"state": "unavailable", "reason": r}),
                    s => json!({"state": s.name()}),
                };
                tracing::warn!(
                    certifier = c.name(),
                    state = state.name(),
                    "certifier state changed"
                );
                let _ = services.audit.record(
                    AuditEvent::new("certifier_state", "certd")
                        .certifier(c.name().to_string())
                        .detail(detail),
                );
                systemd::notify_status(&status::summary(&services.certifiers));
            }
        }
    }
}
