//! A real `certd run` in a temporary directory: its configuration, the
//! process, its log, and the `certd` console commands that talk to it.

use crate::process::{clean_env, run, CmdOutput};
use crate::token::Token;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long a daemon may take to open its control socket or to stop.
pub const DAEMON_DEADLINE: Duration = Duration::from_secs(10);

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

/// A running `certd run`. Dropping it kills the process and waits for it.
#[derive(Debug)]
pub struct CertdInstance {
    /// The `certd` binary.
    pub certd: PathBuf,
    /// Its configuration.
    pub config: CertdConfig,
    /// `SOFTHSM2_CONF` of the daemon and of the console commands.
    pub softhsm_conf: PathBuf,
    child: Option<Child>,
}

impl CertdInstance {
    /// Starts `certd run --config …` with `SOFTHSM2_CONF` of `token` and the
    /// extra environment `env`, and waits until its control socket accepts
    /// connections. Panics, with the daemon's log, if it exits or does not
    /// get there within [`DAEMON_DEADLINE`]. Ready means: a status request
    /// on the control socket is answered.
    pub fn start(
        certd: &Path,
        config: &CertdConfig,
        token: &Token,
        env: &[(&str, &OsStr)],
    ) -> CertdInstance {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&config.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", config.log.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share {}: {e}", config.log.display()));
        let mut cmd = Command::new(certd);
        clean_env(&mut cmd)
            .arg("run")
            .arg("--config")
            .arg(&config.path)
            .env("SOFTHSM2_CONF", &token.conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", certd.display()));
        let mut instance = CertdInstance {
            certd: certd.to_path_buf(),
            config: config.clone(),
            softhsm_conf: token.conf.clone(),
            child: Some(child),
        };
        instance.wait_ready();
        instance
    }

    fn wait_ready(&mut self) {
        let socket = self.config.control_socket.clone();
        let log = self.config.log.clone();
        let mut exited = None;
        let child = self.child.as_mut().expect("a started daemon has a child");
        crate::poll_until(
            DAEMON_DEADLINE,
            "certd's control socket to accept connections",
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return Some(());
                }
                answers_status(&socket).then_some(())
            },
            || read_log(&log),
        );
        if let Some(status) = exited {
            self.child = None;
            panic!(
                "certd exited ({status}) before its control socket {} was ready\n{}",
                socket.display(),
                read_log(&log)
            );
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the daemon's process has not exited (nor been reaped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON: {e}\n{out}"))
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

    /// Sends SIGTERM (with the `kill` command) and waits for the daemon to
    /// exit, at most [`DAEMON_DEADLINE`]; returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        let log = self.config.log.clone();
        let child = self.child.as_mut().expect("the daemon is running");
        run(Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string()))
        .assert_success();
        let status = crate::poll_until(
            DAEMON_DEADLINE,
            "certd to exit after SIGTERM",
            || child.try_wait().ok().flatten(),
            || read_log(&log),
        );
        self.child = None;
        status
    }
}

impl Drop for CertdInstance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a daemon on `socket` answers a status request (the control
/// protocol: one JSON line each way).
fn answers_status(socket: &Path) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    if stream.set_read_timeout(Some(DAEMON_DEADLINE)).is_err()
        || stream.write_all(b"{\"op\":\"status\"}\n").is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.contains("\"ok\":true")
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    format!("--- {} ---\n{text}", path.display())
}
