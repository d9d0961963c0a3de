//! A real `certd run` in a temporary directory: its configuration, the
//! process, its log, and the `certd` console commands that talk to it.

use crate::process::{clean_env, run, ChildGuard, CmdOutput};
use crate::ready::{ApiSocket, Notified, NotifySocket, START_LIMIT};
use crate::token::Token;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// An upper bound on how long a daemon may take to stop: it only catches
/// hangs.
pub const DAEMON_DEADLINE: Duration = Duration::from_secs(60);

/// One `[[certifier]]` of a generated configuration.
#[derive(Debug, Clone)]
pub struct CertifierSpec {
    /// `name`.
    pub name: String,
    /// `token_label`.
    pub token_label: String,
    /// `key_label`.
    pub key_label: String,
    /// `certificate`.
    pub certificate: PathBuf,
    /// `chain`, if any.
    pub chain: Option<PathBuf>,
    /// `pin_file`, if any (the certifier then activates at start).
    pub pin_file: Option<PathBuf>,
}

impl CertifierSpec {
    /// A certifier on `token` with no chain and no PIN file (starts locked).
    pub fn new(name: &str, token: &Token, key_label: &str, certificate: &Path) -> CertifierSpec {
        CertifierSpec {
            name: name.to_string(),
            token_label: token.label.clone(),
            key_label: key_label.to_string(),
            certificate: certificate.to_path_buf(),
            chain: None,
            pin_file: None,
        }
    }

    /// The same certifier, activated at start from `pin_file`.
    pub fn with_pin_file(mut self, pin_file: &Path) -> CertifierSpec {
        self.pin_file = Some(pin_file.to_path_buf());
        self
    }
}

/// A configuration file written for a test, and the paths it names.
#[derive(Debug, Clone)]
pub struct CertdConfig {
    /// Directory holding everything of this daemon.
    pub dir: PathBuf,
    /// The configuration file.
    pub path: PathBuf,
    /// `daemon.state_dir`.
    pub state_dir: PathBuf,
    /// `daemon.control_socket`.
    pub control_socket: PathBuf,
    /// Where the daemon's stdout and stderr go (appended across restarts).
    pub log: PathBuf,
}

fn toml_str(p: &Path) -> String {
    // Debug formatting of a str is a valid TOML basic string for the
    // plain paths tests use.
    format!("{:?}", p.display().to_string())
}

impl CertdConfig {
    /// Writes `dir/certd.toml` for `certifiers`, with the state directory,
    /// control socket and log inside `dir`.
    pub fn write(dir: &Path, module: &Path, certifiers: &[CertifierSpec]) -> CertdConfig {
        let state_dir = dir.join("state");
        let control_socket = dir.join("run").join("control.sock");
        let mut text = format!(
            "[daemon]\nstate_dir = {}\ncontrol_socket = {}\n\n[hsm]\nmodule = {}\nsessions = 2\n",
            toml_str(&state_dir),
            toml_str(&control_socket),
            toml_str(module)
        );
        for c in certifiers {
            text.push_str(&format!(
                "\n[[certifier]]\nname = {:?}\ntoken_label = {:?}\nkey_label = {:?}\ncertificate = {}\n",
                c.name,
                c.token_label,
                c.key_label,
                toml_str(&c.certificate)
            ));
            if let Some(p) = &c.chain {
                text.push_str(&format!("chain = {}\n", toml_str(p)));
            }
            if let Some(p) = &c.pin_file {
                text.push_str(&format!("pin_file = {}\n", toml_str(p)));
            }
        }
        let path = dir.join("certd.toml");
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        CertdConfig {
            dir: dir.to_path_buf(),
            path,
            state_dir,
            control_socket,
            log: dir.join("certd.log"),
        }
    }

    /// The audit log in the state directory.
    pub fn audit_log(&self) -> PathBuf {
        self.state_dir.join("audit.log")
    }
}

/// How to start a `certd run`: binary, configuration, token, extra
/// environment and the API socket to hand over. Kept by the instance so
/// [`CertdInstance::restart`] starts the same daemon again.
#[derive(Debug, Clone)]
struct Launch {
    certd: PathBuf,
    config: CertdConfig,
    softhsm_conf: PathBuf,
    env: Vec<(String, OsString)>,
    api_socket: Option<ApiSocket>,
}

/// A running `certd run`. Dropping it kills the process and waits for it.
#[derive(Debug)]
pub struct CertdInstance {
    /// The `certd` binary.
    pub certd: PathBuf,
    /// Its configuration.
    pub config: CertdConfig,
    /// `SOFTHSM2_CONF` of the daemon and of the console commands.
    pub softhsm_conf: PathBuf,
    launch: Launch,
    child: ChildGuard,
    notify: NotifySocket,
    notifications: Vec<String>,
    ready_after: Duration,
}

impl CertdInstance {
    /// Starts `certd run --config …` with `SOFTHSM2_CONF` of `token` and the
    /// extra environment `env`, and waits for its `READY=1` notification.
    /// Panics, with the daemon's log, if it exits first (or hangs).
    pub fn start(
        certd: &Path,
        config: &CertdConfig,
        token: &Token,
        env: &[(&str, &OsStr)],
    ) -> CertdInstance {
        Self::start_on(certd, config, token, env, None)
    }

    /// [`CertdInstance::start`], handing `api_socket` over as the API's
    /// listening socket (`LISTEN_FDS`).
    pub fn start_on(
        certd: &Path,
        config: &CertdConfig,
        token: &Token,
        env: &[(&str, &OsStr)],
        api_socket: Option<&ApiSocket>,
    ) -> CertdInstance {
        let launch = Launch {
            certd: certd.to_path_buf(),
            config: config.clone(),
            softhsm_conf: token.conf.clone(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_os_string()))
                .collect(),
            api_socket: api_socket.cloned(),
        };
        match Self::try_start(launch) {
            Ok(instance) => instance,
            Err((status, log)) => panic!("certd exited ({status}) before it was ready\n{log}"),
        }
    }

    /// Starts the daemon described by `launch`; `Err` (its exit status and
    /// log) when it exits before `READY=1`.
    fn try_start(launch: Launch) -> Result<CertdInstance, (ExitStatus, String)> {
        let config = &launch.config;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&config.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", config.log.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share {}: {e}", config.log.display()));
        let notify = NotifySocket::bind(&config.dir.join("notify.sock"));
        let mut cmd = Command::new(&launch.certd);
        clean_env(&mut cmd)
            .arg("run")
            .arg("--config")
            .arg(&config.path)
            .env("SOFTHSM2_CONF", &launch.softhsm_conf)
            .env("NOTIFY_SOCKET", notify.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        if let Some(s) = &launch.api_socket {
            s.pass_to(&mut cmd);
        }
        let mut child = ChildGuard::spawn(&mut cmd);
        let mut notifications = Vec::new();
        let log_path = config.log.clone();
        match notify.wait_for(
            "READY=1",
            &mut child,
            START_LIMIT,
            &mut notifications,
            || read_log(&log_path),
        ) {
            Notified::Sent(after) => Ok(CertdInstance {
                certd: launch.certd.clone(),
                config: launch.config.clone(),
                softhsm_conf: launch.softhsm_conf.clone(),
                launch,
                child,
                notify,
                notifications,
                ready_after: after,
            }),
            Notified::Exited(status) => Err((status, read_log(&log_path))),
        }
    }

    /// Starts the same daemon again (same configuration, environment and
    /// API socket) after it has exited or been killed, and waits for its
    /// `READY=1`.
    pub fn restart(&mut self) {
        self.child.kill();
        *self = match Self::try_start(self.launch.clone()) {
            Ok(instance) => instance,
            Err((status, log)) => panic!("certd exited ({status}) on restart\n{log}"),
        };
    }

    /// How long the last start took from spawn to `READY=1` (for reports;
    /// tests do not bound it).
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Every notification the daemon has sent so far (`READY=1`,
    /// `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`), the `READY=1` of this start
    /// among them.
    pub fn notifications(&mut self) -> &[String] {
        let more = self.notify.drain();
        self.notifications.extend(more);
        &self.notifications
    }

    /// Waits for a notification that satisfies `want` (described by
    /// `what`), among those not seen before this call; returns it. Panics
    /// if the daemon exits first or after [`START_LIMIT`] (a hang).
    pub fn wait_notification(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut fresh = Vec::new();
        let log = self.config.log.clone();
        let outcome =
            self.notify
                .wait_until(what, want, &mut self.child, START_LIMIT, &mut fresh, || {
                    read_log(&log)
                });
        let found = fresh.last().cloned().unwrap_or_default();
        self.notifications.extend(fresh);
        match outcome {
            Notified::Sent(_) => found,
            Notified::Exited(status) => panic!(
                "certd exited ({status}) before it sent {what}\nnotifications: {:?}\n{}",
                self.notifications,
                self.log()
            ),
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the daemon's process has not exited (nor been reaped).
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGKILL, as a crash would; returns once the process is reaped.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Everything the daemon has logged so far (across restarts).
    pub fn log(&self) -> String {
        read_log(&self.config.log)
    }

    /// A `certd` command with this daemon's environment; add the
    /// subcommand and arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.certd);
        clean_env(&mut cmd).env("SOFTHSM2_CONF", &self.softhsm_conf);
        cmd
    }

    /// Runs `certd ARGS… --config CONFIG` and returns what it did.
    pub fn ctl(&self, args: &[&str]) -> CmdOutput {
        run(self
            .command()
            .args(args)
            .arg("--config")
            .arg(&self.config.path))
    }

    /// `certd status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]);
        out.assert_success();
        out.json()
    }

    /// The `state` of certifier `name` in `certd status --json`.
    pub fn state_of(&self, name: &str) -> String {
        let status = self.status();
        status["certifiers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .and_then(|c| c["state"].as_str())
            .unwrap_or_else(|| panic!("no certifier {name:?} in status {status:#}"))
            .to_string()
    }

    /// Sends SIGTERM and waits for the daemon to exit (a bound that only
    /// catches hangs); returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        self.child.signal(rustix::process::Signal::TERM);
        let log = self.config.log.clone();
        self.child.wait_exit(DAEMON_DEADLINE, || read_log(&log))
    }
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    format!("--- {} ---\n{text}", path.display())
}
