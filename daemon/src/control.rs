//! The local control socket: activation, deactivation, status and reload.
//! Both ends: the protocol, the client the `certd` commands use, and the
//! daemon's side (binding the socket, answering its connections).
//!
//! One JSON request line, one JSON response line per connection. The socket
//! file's mode and group decide who may connect; the daemon additionally
//! checks the peer's credentials (root, the daemon's own user, or — when
//! `control_group` is set — whoever the socket's permissions let in).

use crate::audit::AuditEvent;
use crate::certifier::Certifiers;
use crate::clock::Clock;
use crate::config::{Config, DaemonConfig};
use crate::journal::Ledger;
use crate::policy::{LivePolicy, Policy};
use crate::status::{self, DaemonStatus};
use crate::systemd;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

/// The largest request line accepted.
pub const MAX_REQUEST: usize = 16 * 1024;

/// A request to the daemon.
pub enum Request {
    /// Log a certifier in.
    Activate {
        /// Name or number; `None` when the daemon has one certifier.
        certifier: Option<String>,
        /// The token user PIN.
        pin: SecretString,
    },
    /// Log a certifier out.
    Deactivate {
        /// Name or number.
        certifier: Option<String>,
    },
    /// Report state.
    Status,
    /// Reload profiles, RAs and grants from the configuration file.
    Reload,
    /// Mark a backup point: a durable `backup_point` entry, the end of a
    /// consistent backup (`certd backup`).
    Backup,
}

/// The wire form of a request; the PIN field wipes itself when dropped.
#[derive(Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Wire {
    Activate {
        #[serde(default)]
        certifier: Option<String>,
        pin: Zeroizing<String>,
    },
    Deactivate {
        #[serde(default)]
        certifier: Option<String>,
    },
    Status {},
    Reload {},
    Backup {},
}

impl Request {
    /// Encodes the request as one line; the buffer wipes itself on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        use secrecy::ExposeSecret;
        let wire = match self {
            Request::Activate { certifier, pin } => Wire::Activate {
                certifier: certifier.clone(),
                pin: Zeroizing::new(pin.expose_secret().to_string()),
            },
            Request::Deactivate { certifier } => Wire::Deactivate {
                certifier: certifier.clone(),
            },
            Request::Status => Wire::Status {},
            Request::Reload => Wire::Reload {},
            Request::Backup => Wire::Backup {},
        };
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        // Serialising these plain structs into memory cannot fail.
        let _ = serde_json::to_writer(&mut *out, &wire);
        out.push(b'\n');
        out
    }

    /// Decodes one request line.
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        let wire: Wire = serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
        Ok(match wire {
            Wire::Activate { certifier, pin } => Request::Activate {
                certifier,
                pin: SecretString::from(pin.as_str().to_string()),
            },
            Wire::Deactivate { certifier } => Request::Deactivate { certifier },
            Wire::Status {} => Request::Status,
            Wire::Reload {} => Request::Reload,
            Wire::Backup {} => Request::Backup,
        })
    }
}

/// The error part of a response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine code.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// A response from the daemon.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// A human-readable outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The status, for status requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
    /// The backup point, for backup requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_point: Option<crate::backup::BackupPoint>,
    /// The error, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A success with a message.
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }

    /// A refusal with a code.
    pub fn error(code: &str, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(ErrorBody {
                code: code.to_string(),
                message: message.into(),
            }),
            ..Default::default()
        }
    }
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket could not be reached.
    #[error("cannot reach certd at {path}: {source}; is the daemon running, and may this user use its control socket?")]
    Connect {
        /// Socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered something unreadable.
    #[error("unreadable reply from certd: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("{message} [{code}]")]
    Refused {
        /// Stable machine code.
        code: String,
        /// The daemon's message.
        message: String,
    },
}

/// Sends one request and returns the daemon's successful response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ControlError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ControlError::Connect {
            path: socket.display().to_string(),
            source,
        }
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    stream.write_all(&request.encode())?;
    stream.flush()?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    let resp: Response =
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if resp.ok {
        Ok(resp)
    } else {
        let e = resp.error.unwrap_or(ErrorBody {
            code: "internal".into(),
            message: "refused without a reason".into(),
        });
        Err(ControlError::Refused {
            code: e.code,
            message: e.message,
        })
    }
}

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The socket cannot be set up as configured.
    #[error("{0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SocketError {
    let what = what.into();
    move |source| SocketError::Io { what, source }
}

/// What the control socket works with: the configuration file (read again
/// on reload), the policy it replaces, the certifiers it activates, the
/// ledger and clock of the status report, and the audit log. Built once by
/// the daemon.
pub struct Controller {
    /// The configuration file.
    pub config_source: PathBuf,
    /// The gid of `daemon.control_group`: its members may use the socket
    /// too (besides root and certd's own user).
    pub control_gid: Option<u32>,
    /// The policy in force.
    pub policy: Arc<LivePolicy>,
    /// The certifiers.
    pub certifiers: Arc<Certifiers>,
    /// The ledger (for the certifiers' counters).
    pub ledger: Arc<dyn Ledger>,
    /// The audit log.
    pub audit: Arc<dyn Ledger>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// When the daemon started, on `clock`'s monotonic time.
    pub started: Instant,
    /// The metrics (for their listener's address).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Binds the control socket at `daemon.control_socket` with its mode and
/// group. A stale socket file is replaced; one a running certd answers on
/// is refused.
pub fn bind(d: &DaemonConfig) -> Result<UnixListener, SocketError> {
    let path = &d.control_socket;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::Refused(format!(
                "control socket {} is in use: another certd is running with this configuration",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(io(format!("removing stale {}", path.display())))?;
    }
    // Bound in a private directory, given its mode and group there, and
    // renamed into place: nobody can connect between bind and chmod.
    let staging = path.with_file_name(format!(
        ".{}.{}.bind",
        path.file_name()
            .map_or_else(|| "control".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&staging)
        .map_err(io(format!("creating {}", staging.display())))?;
    let placed = (|| {
        let tmp = staging.join("socket");
        let listener = UnixListener::bind(&tmp)
            .map_err(io(format!("binding control socket {}", path.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(d.control_socket_mode))
            .map_err(io(format!("setting the mode of {}", path.display())))?;
        if let Some(group) = &d.control_group {
            let gid = group_id(group).ok_or_else(|| {
                SocketError::Refused(format!("daemon.control_group {group:?} does not exist"))
            })?;
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .map_err(io(format!("giving {} to group {group}", path.display())))?;
        }
        std::fs::rename(&tmp, path).map_err(io(format!("placing {}", path.display())))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    placed
}

/// The id of group `name` in `/etc/group`.
pub fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Whether process `pid` (a peer with primary group `gid`) is in group
/// `group`: its primary group, or one of its supplementary groups as
/// `/proc/PID/status` lists them.
fn peer_in_group(pid: Option<i32>, gid: u32, group: u32) -> bool {
    if gid == group {
        return true;
    }
    let Some(pid) = pid else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(group)))
        })
        .unwrap_or(false)
}

/// The effective uid of this process, read without libc.
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Answers every connection to `listener`, each in a task of its own, until
/// the daemon stops (it never returns by itself).
pub async fn serve(controller: Arc<Controller>, listener: UnixListener) -> Infallible {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let controller = controller.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(controller, stream).await {
                        tracing::warn!(error = %e, "control connection failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "accepting on the control socket failed"),
        }
    }
}

async fn handle(controller: Arc<Controller>, stream: UnixStream) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let uid = peer.uid();
    let actor = format!("control:uid={uid}");
    let (read, mut write) = stream.into_split();
    let in_group = controller
        .control_gid
        .is_some_and(|g| peer_in_group(peer.pid(), peer.gid(), g));
    let allowed = uid == 0 || Some(uid) == own_uid() || in_group;
    // The request is read before anything is answered, refused peers'
    // included: answering and closing while the client still writes would
    // hand it a broken pipe instead of the reason. Read straight into a
    // buffer that is wiped when dropped (it may hold a PIN): no reader's
    // buffer keeps a copy.
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_REQUEST + 1));
    let mut read = read;
    tokio::time::timeout(Duration::from_secs(30), read_line(&mut read, &mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let response = if !allowed {
        let _ = controller.audit.record(
            AuditEvent::new("control_refused", &actor)
                .detail(json!({"reason": "peer not permitted"})),
        );
        Response::error(
            "not_authorized",
            "this user may not control certd: run as root, as the certd user, or as a member of daemon.control_group",
        )
    } else if line.len() > MAX_REQUEST {
        Response::error("too_large", "request too large")
    } else {
        match Request::decode(&line) {
            Ok(req) => controller.dispatch(&actor, req).await,
            Err(e) => Response::error("bad_request", e),
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Reads up to and including the first newline (or `MAX_REQUEST + 1`
/// bytes, or the end) into `line`, through a small buffer that is wiped.
async fn read_line(
    read: &mut (impl tokio::io::AsyncRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut chunk = Zeroizing::new([0u8; 512]);
    loop {
        let n = read.read(&mut chunk[..]).await?;
        if n == 0 {
            return Ok(());
        }
        let end = chunk[..n]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(n, |i| i + 1);
        line.extend_from_slice(&chunk[..end]);
        if end < n || chunk[end - 1] == b'\n' || line.len() > MAX_REQUEST {
            return Ok(());
        }
    }
}

impl Controller {
    /// The daemon's status.
    pub fn status(&self) -> DaemonStatus {
        let uptime = self.clock.instant().saturating_duration_since(self.started);
        let mut status = status::report(&self.certifiers, self.ledger.as_ref(), uptime);
        status.metrics = self.metrics.address().map(|a| a.to_string());
        status
    }

    /// Re-reads the configuration and swaps in its profiles, RAs and grants.
    /// Other sections take effect at the next start. In-flight requests finish
    /// under the policy they started with.
    pub fn reload(&self) -> Result<String, String> {
        let result = Config::load(&self.config_source).map_err(|e| e.to_string());
        match result {
            Ok(new) => {
                let policy = Policy::from_config(&new);
                self.policy.replace(policy);
                let _ = self
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
                let _ = self
                    .audit
                    .record(AuditEvent::new("reload_refused", "certd").detail(json!({"error": e})));
                tracing::error!(error = %e, "reload refused; the previous configuration stays in force");
                Err(e)
            }
        }
    }

    async fn dispatch(self: &Arc<Self>, actor: &str, req: Request) -> Response {
        match req {
            Request::Reload => {
                let controller = self.clone();
                match tokio::task::spawn_blocking(move || controller.reload()).await {
                    Ok(Ok(msg)) => Response::ok(msg),
                    Ok(Err(e)) => Response::error("bad_config", e),
                    Err(e) => Response::error("internal", e.to_string()),
                }
            }
            Request::Status => Response {
                ok: true,
                status: Some(self.status()),
                ..Default::default()
            },
            Request::Backup => {
                let event = AuditEvent::new(crate::backup::KIND_BACKUP_POINT, actor);
                match self.audit.audit_async(event).await {
                    Ok(record) => Response {
                        ok: true,
                        message: Some(format!("backup point at journal entry {}", record.seq)),
                        backup_point: Some(crate::backup::BackupPoint {
                            seq: record.seq,
                            hash: record.hash,
                        }),
                        ..Default::default()
                    },
                    Err(e) => Response::error(
                        "audit_unavailable",
                        format!("cannot write the backup point to the audit log: {e}"),
                    ),
                }
            }
            Request::Activate { certifier, pin } => {
                let c = match self.certifiers.find(certifier.as_deref()) {
                    Ok(c) => c,
                    Err(e) => return Response::error(e.code(), e.to_string()),
                };
                let (certifiers, c2) = (self.certifiers.clone(), c.clone());
                let result =
                    tokio::task::spawn_blocking(move || certifiers.activate(&c2, pin)).await;
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
                if let Err(e) = self.audit.record(event) {
                    // Nothing may be done without its audit record.
                    if result.is_ok() {
                        let _ = self.certifiers.deactivate(&c);
                    }
                    return Response::error(
                        "audit_unavailable",
                        format!("cannot write the audit log: {e}"),
                    );
                }
                systemd::notify_status(&status::summary(&self.certifiers));
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
                let c = match self.certifiers.find(certifier.as_deref()) {
                    Ok(c) => c,
                    Err(e) => return Response::error(e.code(), e.to_string()),
                };
                let (certifiers, c2) = (self.certifiers.clone(), c.clone());
                let result = tokio::task::spawn_blocking(move || certifiers.deactivate(&c2)).await;
                let _ = self
                    .audit
                    .record(AuditEvent::new("deactivated", actor).certifier(c.name().to_string()));
                systemd::notify_status(&status::summary(&self.certifiers));
                match result {
                    Ok(Ok(())) => {
                        Response::ok(format!("certifier #{} {} is locked", c.number, c.name()))
                    }
                    Ok(Err(e)) => {
                        Response::error(e.code(), format!("locked, but logout failed: {e}"))
                    }
                    Err(e) => Response::error("internal", format!("deactivation task failed: {e}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn activate_round_trips_and_unknown_fields_are_refused() {
        let req = Request::Activate {
            certifier: Some("root".into()),
            pin: SecretString::from("1234".to_string()),
        };
        let line = req.encode();
        match Request::decode(&line).expect("decodes") {
            Request::Activate { certifier, pin } => {
                assert_eq!(certifier.as_deref(), Some("root"));
                assert_eq!(pin.expose_secret(), "1234");
            }
            _ => panic!("wrong request"),
        }
        assert!(Request::decode(br#"{"op":"status","x":1}"#).is_err());
        assert!(Request::decode(br#"{"op":"explode"}"#).is_err());
    }
}
