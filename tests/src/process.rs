//! Running the workspace's binaries and other tools, and what they print.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

/// Variables a test's environment might carry that would change how certd
/// or SoftHSM behave; children start without them unless a test sets them.
const INHERITED_NOISE: &[&str] = &[
    "SOFTHSM2_CONF",
    "CERTD_CONFIG",
    "CERTD_CONTROL_SOCKET",
    "CERTD_PKCS11_MODULE",
    "CERTD_LOG",
    "CERTD_FAULT_REAL_MODULE",
    "CERTD_FAULT_CONTROL",
    "CERTD_FAULT_COUNT",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "CREDENTIALS_DIRECTORY",
    "JOURNAL_STREAM",
];

/// Removes the variables of the calling environment that would leak into a
/// child's behaviour (an outer `SOFTHSM2_CONF`, `NOTIFY_SOCKET`, ...).
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for v in INHERITED_NOISE {
        cmd.env_remove(v);
    }
    cmd
}

/// The path of the workspace binary `name`, next to the running test
/// executable (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
///
/// Tests of the package that owns the binary should prefer
/// `env!("CARGO_BIN_EXE_<name>")`, which makes cargo build it first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let deps = exe
        .parent()
        .expect("the test executable lives in a directory");
    let profile_dir = if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first: cargo build --workspace",
        path.display()
    );
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
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "{} failed\n{}", self.command, self);
        self
    }

    /// Panics unless the command exited with `code`.
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
    pub fn assert_refused(&self, needle: &str) -> &Self {
        self.assert_code(1);
        assert!(
            self.stderr.contains(needle),
            "{}: stderr should contain {needle:?}\n{}",
            self.command,
            self
        );
        self
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
