//! The daemon: start-up, the control socket, health probing, systemd
//! notification and shutdown.

use crate::audit::{AuditEvent, AuditLog};
use crate::certifier::{Certifier, Certifiers, State, PROBE_INTERVAL};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::control::{Request, Response, MAX_REQUEST};
use crate::crl::CrlService;
use crate::issue::Issuer;
use crate::ledger::{Ledger, SledLedger};
use crate::lookup::Lookup;
use crate::policy::{LivePolicy, Policy};
use crate::revoke::Revoker;
use crate::status::{CertifierStatus, DaemonStatus};
use crate::systemd;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

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

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Path of the audit log inside the state directory.
pub fn audit_path(state_dir: &Path) -> PathBuf {
    state_dir.join("audit.log")
}

/// Path of the ledger inside the state directory.
pub fn ledger_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger")
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

/// Everything the running daemon shares between tasks.
pub struct Shared {
    /// Configuration as loaded.
    pub config: Config,
    /// The certifiers.
    pub certifiers: Arc<Certifiers>,
    /// The ledger.
    pub ledger: Arc<dyn Ledger>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// CRLs.
    pub crl: Arc<CrlService>,
    /// The policy in force.
    pub policy: Arc<LivePolicy>,
    /// The issuance pipeline.
    pub issuer: Issuer,
    /// Revocation.
    pub revoker: Revoker,
    /// Look-ups and listings.
    pub lookup: Lookup,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Held for the daemon's lifetime: one daemon per state directory.
    _lock: std::fs::File,
    started: Instant,
}

impl Shared {
    /// Puts together what [`start`] has opened and checked; `lock` is the
    /// held lock file of the state directory.
    pub(crate) fn new(
        config: Config,
        certifiers: Arc<Certifiers>,
        ledger: Arc<dyn Ledger>,
        audit: Arc<AuditLog>,
        lock: std::fs::File,
        clock: Arc<dyn Clock>,
    ) -> Result<Shared, DaemonError> {
        let state_dir = &config.daemon.state_dir;
        let crl = Arc::new(
            CrlService::open(
                state_dir,
                config.crl.clone(),
                certifiers.clone(),
                ledger.clone(),
                audit.clone(),
                clock.clone(),
            )
            .map_err(io(format!(
                "opening the CRL store in {}",
                state_dir.display()
            )))?,
        );
        let policy = Arc::new(LivePolicy::new(Policy::from_config(&config)));
        let issuer = Issuer::new(
            policy.clone(),
            certifiers.clone(),
            ledger.clone(),
            audit.clone(),
            clock.clone(),
            &config.daemon,
        );
        let revoker = Revoker::new(ledger.clone(), audit.clone(), crl.clone(), clock.clone());
        let lookup = Lookup::new(ledger.clone());
        Ok(Shared {
            _lock: lock,
            crl,
            policy,
            issuer,
            revoker,
            lookup,
            config,
            certifiers,
            ledger,
            audit,
            started: clock.instant(),
            clock,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// The daemon's status.
    pub fn status(&self) -> DaemonStatus {
        let certifiers = self
            .certifiers
            .all()
            .iter()
            .map(|c| self.certifier_status(c))
            .collect();
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self
                .clock
                .instant()
                .saturating_duration_since(self.started)
                .as_secs(),
            pid: std::process::id(),
            certifiers,
        }
    }

    fn certifier_status(&self, c: &Certifier) -> CertifierStatus {
        let state = c.state();
        let stats = self.ledger.stats(c.name()).unwrap_or_default();
        let not_after = c.certificate.tbs_certificate().validity().not_after;
        CertifierStatus {
            number: c.number,
            name: c.name().to_string(),
            subject: c.subject(),
            key_type: c.key_type.to_string(),
            token_label: c.config.token_label.clone(),
            key_label: c.config.key_label.clone(),
            state: state.name().to_string(),
            reason: match state {
                State::Unavailable(r) => Some(r),
                _ => None,
            },
            not_after: not_after.to_string(),
            certificates_issued: stats.issued,
            certificates_revoked: stats.revoked,
            last_serial: stats.last_serial.map(|s| s.to_hex()),
            crl_number: self.ledger.current_crl_number(c.name()).ok().flatten(),
        }
    }

    fn systemd_status(&self) -> String {
        let parts: Vec<String> = self
            .certifiers
            .all()
            .iter()
            .map(|c| format!("{}: {}", c.name(), c.state().name()))
            .collect();
        if parts.is_empty() {
            "no certifiers configured".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Prepares the daemon: state directory, ledger and audit log, crash
/// recovery, certifiers, PIN-file activation; everything reads the time
/// from `clock`.
pub fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Shared>, DaemonError> {
    let state_dir = config.daemon.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .map_err(io(format!("creating state_dir {}", state_dir.display())))?;
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("securing state_dir {}", state_dir.display())))?;
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
    let ledger: Arc<dyn Ledger> =
        Arc::new(SledLedger::open(&ledger_path(&state_dir), clock.clone())?);
    let audit = Arc::new(AuditLog::open(&audit_path(&state_dir), clock.clone())?);
    // Before this start's own `config_loaded` entry: recovery looks back
    // to the previous one.
    crate::recovery::recover_interrupted(ledger.as_ref(), &audit)?;
    crate::recovery::settle_revocations(ledger.as_ref(), &audit, clock.unix(), 0)?;
    let certifiers = Arc::new(Certifiers::load(&config)?);
    let config_sha256 = std::fs::read(&config.source)
        .map(|b| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b))
        })
        .unwrap_or_default();
    audit.append(
        AuditEvent::new(crate::recovery::START_KIND, "certd").detail(json!({
            "path": config.source.display().to_string(),
            "sha256": config_sha256,
            "certifiers": config.certifiers.iter().map(|c| &c.name).collect::<Vec<_>>(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )?;
    let shared = Arc::new(Shared::new(config, certifiers, ledger, audit, lock, clock)?);
    for c in shared.certifiers.all() {
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
                shared
                    .certifiers
                    .activate(c, pin)
                    .map_err(|e| (e.code().to_string(), e.to_string()))
            });
        match result {
            Ok(_) => {
                tracing::info!(certifier = c.name(), "activated from PIN file");
                shared.audit.record(
                    AuditEvent::new("activated", "certd")
                        .certifier(c.name().to_string())
                        .detail(json!({"source": pin_path.display().to_string()})),
                )?;
            }
            Err((code, message)) => {
                tracing::error!(certifier = c.name(), %message, "activation from PIN file failed; certifier stays locked");
                shared.audit.record(
                    AuditEvent::new("activation_refused", "certd")
                        .certifier(c.name().to_string())
                        .detail(json!({"source": pin_path.display().to_string(), "code": code, "message": message})),
                )?;
            }
        }
    }
    Ok(shared)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let config = Config::load(config_path)?;
    check_files(&config)?;
    let shared = start(config, Arc::new(SystemClock))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    rt.block_on(serve(shared))
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

/// Re-reads the configuration and swaps in its profiles, RAs and grants.
/// Other sections take effect at the next start. In-flight requests finish
/// under the policy they started with.
pub fn reload(shared: &Shared) -> Result<String, String> {
    let result = Config::load(&shared.config.source).map_err(|e| e.to_string());
    match result {
        Ok(new) => {
            let policy = Policy::from_config(&new);
            shared.policy.replace(policy);
            let _ = shared
                .audit
                .record(AuditEvent::new("config_reloaded", "certd").detail(json!({
                    "path": new.source.display().to_string(),
                    "ras": new.ras.iter().map(|r| &r.name).collect::<Vec<_>>(),
                    "profiles": new.profiles.iter().map(|p| &p.name).collect::<Vec<_>>(),
                })));
            tracing::info!("configuration reloaded: profiles, RAs and grants updated");
            Ok(format!(
                "reloaded {}: {} profiles, {} RAs (daemon, hsm, api and certifier settings apply at the next start)",
                new.source.display(),
                new.profiles.len(),
                new.ras.len()
            ))
        }
        Err(e) => {
            let _ = shared
                .audit
                .record(AuditEvent::new("reload_refused", "certd").detail(json!({"error": e})));
            tracing::error!(error = %e, "reload refused; the previous configuration stays in force");
            Err(e)
        }
    }
}

async fn serve(shared: Arc<Shared>) -> Result<(), DaemonError> {
    let socket_path = shared.config.daemon.control_socket.clone();
    let listener = bind_control_socket(&shared)?;
    if let Some(api) = shared.config.api.clone() {
        let tls = crate::server::tls_config(&shared, &api)?;
        let tcp = api_listener(&api)?;
        tracing::info!(address = %tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(), "API listening");
        tokio::spawn(crate::server::serve(shared.clone(), tcp, tls));
    }
    systemd::notify_ready(&shared.systemd_status());
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
    tokio::spawn(probe_loop(shared.clone()));
    for c in shared.certifiers.all() {
        tokio::spawn(shared.crl.clone().keep_fresh(c.clone()));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("installing the SIGTERM handler"))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(io("installing the SIGHUP handler"))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle_control(shared, stream).await {
                            tracing::warn!(error = %e, "control connection failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting on the control socket failed"),
            },
            _ = term.recv() => break,
            _ = hup.recv() => {
                let s2 = shared.clone();
                let _ = tokio::task::spawn_blocking(move || reload(&s2)).await;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    systemd::notify_stopping();
    tracing::info!("stopping");
    let _ = shared.audit.record(AuditEvent::new("stopped", "certd"));
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

fn bind_control_socket(shared: &Shared) -> Result<UnixListener, DaemonError> {
    let d = &shared.config.daemon;
    let path = &d.control_socket;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Missing(format!(
                "control socket {} is in use: another certd is running with this configuration",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(io(format!("removing stale {}", path.display())))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(io(format!("binding control socket {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(d.control_socket_mode))
        .map_err(io(format!("setting the mode of {}", path.display())))?;
    if let Some(group) = &d.control_group {
        let gid = group_id(group).ok_or_else(|| {
            DaemonError::Missing(format!("daemon.control_group {group:?} does not exist"))
        })?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(io(format!("giving {} to group {group}", path.display())))?;
    }
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The effective uid of this process, read without libc.
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

async fn handle_control(shared: Arc<Shared>, stream: UnixStream) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let uid = peer.uid();
    let actor = format!("control:uid={uid}");
    let (read, mut write) = stream.into_split();
    let allowed =
        uid == 0 || Some(uid) == own_uid() || shared.config.daemon.control_group.is_some();
    let response = if !allowed {
        let _ = shared.audit.record(
            AuditEvent::new("control_refused", &actor)
                .detail(json!({"reason": "peer not permitted"})),
        );
        Response::error(
            "not_authorized",
            "this user may not control certd: run as root or as the certd user",
        )
    } else {
        let mut line = Zeroizing::new(Vec::with_capacity(512));
        let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
        tokio::time::timeout(Duration::from_secs(30), reader.read_until(b'\n', &mut line))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out")
            })??;
        if line.len() > MAX_REQUEST {
            Response::error("too_large", "request too large")
        } else {
            match Request::decode(&line) {
                Ok(req) => dispatch(&shared, &actor, req).await,
                Err(e) => Response::error("bad_request", e),
            }
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

use tokio::io::AsyncReadExt;

async fn dispatch(shared: &Arc<Shared>, actor: &str, req: Request) -> Response {
    match req {
        Request::Reload => {
            let s2 = shared.clone();
            match tokio::task::spawn_blocking(move || reload(&s2)).await {
                Ok(Ok(msg)) => Response::ok(msg),
                Ok(Err(e)) => Response::error("bad_config", e),
                Err(e) => Response::error("internal", e.to_string()),
            }
        }
        Request::Status => Response {
            ok: true,
            status: Some(shared.status()),
            ..Default::default()
        },
        Request::Activate { certifier, pin } => {
            let c = match shared.certifiers.find(certifier.as_deref()) {
                Ok(c) => c,
                Err(e) => return Response::error(e.code(), e.to_string()),
            };
            let (shared2, c2) = (shared.clone(), c.clone());
            let result =
                tokio::task::spawn_blocking(move || shared2.certifiers.activate(&c2, pin)).await;
            let result = match result {
                Ok(r) => r,
                Err(e) => {
                    return Response::error("internal", format!("activation task failed: {e}"))
                }
            };
            if let Ok(false) = result {
                return Response::ok(format!(
                    "certifier #{} {} is already active",
                    c.number,
                    c.name()
                ));
            }
            let event = match &result {
                Ok(_) => AuditEvent::new("activated", actor).certifier(c.name().to_string()),
                Err(e) => AuditEvent::new("activation_refused", actor)
                    .certifier(c.name().to_string())
                    .detail(json!({"code": e.code(), "message": e.to_string()})),
            };
            if let Err(e) = shared.audit.record(event) {
                // Nothing may be done without its audit record.
                if result.is_ok() {
                    let _ = shared.certifiers.deactivate(&c);
                }
                return Response::error(
                    "audit_unavailable",
                    format!("cannot write the audit log: {e}"),
                );
            }
            systemd::notify_status(&shared.systemd_status());
            match result {
                Ok(_) => {
                    tracing::info!(certifier = c.name(), %actor, "activated");
                    Response::ok(format!("certifier #{} {} is active", c.number, c.name()))
                }
                Err(e) => {
                    tracing::warn!(certifier = c.name(), %actor, error = %e, "activation refused");
                    Response::error(e.code(), e.to_string())
                }
            }
        }
        Request::Deactivate { certifier } => {
            let c = match shared.certifiers.find(certifier.as_deref()) {
                Ok(c) => c,
                Err(e) => return Response::error(e.code(), e.to_string()),
            };
            let shared2 = shared.clone();
            let c2 = c.clone();
            let result =
                tokio::task::spawn_blocking(move || shared2.certifiers.deactivate(&c2)).await;
            let _ = shared
                .audit
                .record(AuditEvent::new("deactivated", actor).certifier(c.name().to_string()));
            systemd::notify_status(&shared.systemd_status());
            match result {
                Ok(Ok(())) => {
                    Response::ok(format!("certifier #{} {} is locked", c.number, c.name()))
                }
                Ok(Err(e)) => Response::error(e.code(), format!("locked, but logout failed: {e}")),
                Err(e) => Response::error("internal", format!("deactivation task failed: {e}")),
            }
        }
    }
}

/// How often at most the PKCS#11 module is re-initialised to find a
/// token that went away.
pub const REINIT_INTERVAL: Duration = Duration::from_secs(5);

/// Age after which a pending intent whose certificate is in the audit log
/// is completed while running (see `recovery::complete_stale`).
const STALE_INTENT_SECS: i64 = 30;
/// Age after which a revocation without its audit entry gets one written
/// while running (see `recovery::settle_revocations`).
const UNAUDITED_REVOCATION_SECS: i64 = 5;

async fn probe_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    let mut last_reinit: Option<Instant> = None;
    let mut unsettled = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        let s2 = shared.clone();
        let mut skip = std::mem::take(&mut unsettled);
        let settled = tokio::task::spawn_blocking(move || {
            let done = crate::recovery::complete_stale(
                s2.ledger.as_ref(),
                &s2.audit,
                s2.clock.unix(),
                STALE_INTENT_SECS,
                &mut skip,
            )
            .and_then(|_| {
                crate::recovery::settle_revocations(
                    s2.ledger.as_ref(),
                    &s2.audit,
                    s2.clock.unix(),
                    UNAUDITED_REVOCATION_SECS,
                )
            });
            (done, skip)
        })
        .await;
        if let Ok((done, skip)) = settled {
            unsettled = skip;
            if let Err(e) = done {
                tracing::debug!(error = %e, "cannot settle stale intents yet");
            }
        }
        let now = shared.clock.instant();
        if shared.certifiers.awaiting_token()
            && last_reinit.is_none_or(|t| now.saturating_duration_since(t) >= REINIT_INTERVAL)
        {
            last_reinit = Some(now);
            let s2 = shared.clone();
            match tokio::task::spawn_blocking(move || s2.certifiers.reinitialize_module()).await {
                Ok(Ok(states)) => {
                    for (name, state) in states {
                        if state == State::Active {
                            tracing::info!(certifier = %name, "token is back: certifier active again");
                            let _ = shared.audit.record(
                                AuditEvent::new("certifier_state", "certd")
                                    .certifier(name)
                                    .detail(json!({"state": "active", "reason": "token available again"})),
                            );
                        }
                    }
                    systemd::notify_status(&shared.systemd_status());
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "re-initialising the PKCS#11 module failed")
                }
                Err(e) => tracing::warn!(error = %e, "re-initialisation task failed"),
            }
            continue;
        }
        for c in shared.certifiers.all() {
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
                let _ = shared.audit.record(
                    AuditEvent::new("certifier_state", "certd")
                        .certifier(c.name().to_string())
                        .detail(detail),
                );
                systemd::notify_status(&shared.systemd_status());
            }
        }
    }
}
