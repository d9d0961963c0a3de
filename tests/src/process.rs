//! Running the workspace's binaries and other tools, and what they print.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Variables a test's environment might carry that would change how certd,
/// the RAs or SoftHSM behave; children start without them unless a test
/// sets them. One list for every harness user, so a variable added for one
/// binary is cleaned for all.
const INHERITED_NOISE: &[&str] = &[
    // SoftHSM and certd.
    "SOFTHSM2_CONF",
    "CERTD_CONFIG",
    "CERTD_CONTROL_SOCKET",
    "CERTD_PKCS11_MODULE",
    "CERTD_LOG",
    "CERTD_URL",
    "CERTD_FAULT_REAL_MODULE",
    "CERTD_FAULT_CONTROL",
    "CERTD_FAULT_COUNT",
    // The RAs.
    "RA_CLI_CONFIG",
    "RA_WEB_CONFIG",
    "RA_WEB_URL",
    // systemd's protocols: a test that wants them sets them itself.
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "CREDENTIALS_DIRECTORY",
    "JOURNAL_STREAM",
    // Traffic stays on 127.0.0.1: curl and other clients must not route it
    // through a proxy the calling environment names.
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "no_proxy",
    "NO_PROXY",
];

/// Removes the variables of the calling environment that would leak into a
/// child's behaviour (an outer `SOFTHSM2_CONF`, `NOTIFY_SOCKET`, ...).
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for v in INHERITED_NOISE {
        cmd.env_remove(v);
    }
    cmd
}

/// A command for `program` with the calling test's environment cleaned.
pub fn tool(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd
}

/// The cargo profile directory the running test executable was built into
/// (`target/<profile>/deps/<test>` → `target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let dir = exe
        .parent()
        .expect("the test executable lives in a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The path of the workspace binary `name` (`certd`, `ra-cli`, ...) of the
/// running test's profile, built first if needed.
///
/// Tests of every package use the binaries of the others, so `cargo test -p
/// ra-cli` on a clean tree must not depend on another package having been
/// built: the first call per binary and process runs `cargo build --bin
/// NAME` with the test's own profile and target directory (a no-op when the
/// binary is up to date, and what also keeps it from being stale after an
/// edit of another crate).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let profile_dir = profile_dir();
    let path = profile_dir.join(name);
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.contains(name) {
        return path;
    }
    let target_dir = profile_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("debug");
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.current_dir(crate::repo_root())
        .args(["build", "--quiet", "--bin", name, "--target-dir"])
        .arg(&target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success() && path.is_file(),
        "cannot build the {name} binary for the tests\n{out}"
    );
    built.insert(name.to_string());
    path
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct CmdOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output, as text.
    pub stdout: String,
    /// Its standard error, as text.
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl CmdOutput {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing everything the command printed, unless it succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "{} failed\n{}", self.command, self);
        self
    }

    /// Panics unless the command exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "{} should have exited with {code}\n{}",
            self.command,
            self
        );
        self
    }

    /// Panics unless the command failed with exit code 1 and its standard
    /// error contains `needle`.
    #[track_caller]
    pub fn assert_refused(&self, needle: &str) -> &Self {
        self.assert_code(1);
        self.assert_stderr_has(needle)
    }

    /// Panics unless standard error contains `needle`.
    #[track_caller]
    pub fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "{}: stderr should contain {needle:?}\n{}",
            self.command,
            self
        );
        self
    }

    /// Panics unless standard output contains `needle`.
    #[track_caller]
    pub fn assert_stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "{}: stdout should contain {needle:?}\n{}",
            self.command,
            self
        );
        self
    }

    /// Standard output as JSON; panics, with the output, if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e})\n{self}", self.command))
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion with no standard input and captures its output.
/// Panics if it cannot be started at all.
pub fn run(cmd: &mut Command) -> CmdOutput {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    CmdOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command,
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a
/// failing test never leaves a daemon behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd`; panics, naming the program, if it cannot start.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildGuard { child: Some(child) }
    }

    /// The process id (0 once it has been reaped).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// How it exited, if it has (without waiting). Once reaped, the status
    /// is kept: later calls return it again.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Sends `signal` (unless it has exited already).
    pub fn signal(&mut self, signal: rustix::process::Signal) {
        if !self.is_running() {
            return;
        }
        let pid = i32::try_from(self.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("a running child has a valid pid");
        // ESRCH: it exited between the check and the signal, which is fine.
        let _ = rustix::process::kill_process(pid, signal);
    }

    /// Waits for the process to exit, at most `limit` (a bound that only
    /// catches hangs); panics with `context()` when it does not.
    pub fn wait_exit(&mut self, limit: Duration, context: impl FnOnce() -> String) -> ExitStatus {
        let status = crate::poll_until(limit, "the process to exit", || self.try_wait(), context);
        self.child = None;
        status
    }

    /// SIGKILL, then reap; returns how it ended.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Its piped standard output, taken (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// Gives up ownership: the caller now reaps the process.
    pub fn into_inner(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
