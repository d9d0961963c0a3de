//! What ra-cli's end-to-end tests share: a real CA set up by `./demo
//! --setup-only` (SoftHSM token, certifier key generated in it, mTLS
//! credentials), a real `certd run` on a free 127.0.0.1 port, and running
//! the real `ra-cli` binary against it. Small helpers are copied from the
//! `certd-e2e` harness rather than depending on it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The ra-cli binary under test.
pub const RA_CLI: &str = env!("CARGO_BIN_EXE_ra-cli");

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("ra-cli lives in the workspace")
}

/// `target/debug/certd`, next to ra-cli's binary.
pub fn certd_bin() -> PathBuf {
    let p = Path::new(RA_CLI)
        .parent()
        .expect("binary directory")
        .join("certd");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Variables that would change how children behave.
const NOISE: &[&str] = &[
    "SOFTHSM2_CONF",
    "CERTD_CONFIG",
    "CERTD_CONTROL_SOCKET",
    "CERTD_LOG",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "RA_CLI_CONFIG",
];

fn clean(cmd: &mut Command) -> &mut Command {
    for v in NOISE {
        cmd.env_remove(v);
    }
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line.
    pub command: String,
}

impl Run {
    fn from(command: String, out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command,
        }
    }

    /// Panics unless the exit code is `code`.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "{self}");
        self
    }

    /// Panics unless it succeeded.
    #[track_caller]
    pub fn ok(&self) -> &Run {
        self.code(0)
    }

    /// Panics unless standard error contains `needle`.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr should contain {needle:?}\n{self}"
        );
        self
    }

    /// Panics unless standard output contains `needle`.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout should contain {needle:?}\n{self}"
        );
        self
    }

    /// Standard output as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e})\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with no standard input.
pub fn run(cmd: &mut Command) -> Run {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    Run::from(command, out)
}

/// `openssl ARGS`.
pub fn openssl(args: &[&str]) -> Run {
    run(Command::new("openssl").args(args))
}

/// A demo CA with a running certd. Dropping it stops certd.
pub struct Ca {
    /// Everything of this CA.
    pub dir: tempfile::TempDir,
    /// `demo.env`.
    pub env: HashMap<String, String>,
    /// ra-cli's configuration written by the demo.
    pub config: PathBuf,
    child: Option<Child>,
}

impl Ca {
    /// Sets up a CA with `./demo --setup-only`, starts certd, and activates
    /// the certifier when `activate` is set.
    pub fn start(activate: bool) -> Ca {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let port = free_port();
        run(clean(&mut Command::new(repo_root().join("demo")))
            .args(["--setup-only", "--debug-build", "--dir"])
            .arg(&ca_dir)
            .args(["--port", &port.to_string()]))
        .ok();
        let text = std::fs::read_to_string(ca_dir.join("demo.env")).expect("demo.env");
        let env: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        let config = PathBuf::from(&env["RA_CLI_CONFIG"]);
        let log = std::fs::File::create(dir.path().join("certd.log")).expect("log");
        let log2 = log.try_clone().expect("log");
        let child = clean(&mut Command::new(certd_bin()))
            .args(["run", "--config", &env["CERTD_CONFIG"]])
            .env("SOFTHSM2_CONF", &env["SOFTHSM2_CONF"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("start certd");
        let mut ca = Ca {
            dir,
            env,
            config,
            child: Some(child),
        };
        ca.wait_ready(port);
        if activate {
            ca.activate();
        }
        ca
    }

    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let socket = PathBuf::from(&self.env["CERTD_CONTROL_SOCKET"]);
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("certd exited ({status})\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "certd did not start\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// certd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("certd.log")).unwrap_or_default()
    }

    /// `certd ARGS` against this daemon (control socket).
    pub fn ctl(&self, args: &[&str]) -> Run {
        run(clean(&mut Command::new(certd_bin()))
            .args(args)
            .env("CERTD_CONFIG", &self.env["CERTD_CONFIG"])
            .env("SOFTHSM2_CONF", &self.env["SOFTHSM2_CONF"]))
    }

    /// Unlocks the demo certifier.
    pub fn activate(&self) {
        self.ctl(&["activate", "--pin-file", &self.env["PIN_FILE"]])
            .ok();
    }

    /// Locks it again.
    pub fn deactivate(&self) {
        self.ctl(&["deactivate"]).ok();
    }

    /// A scratch directory inside the CA's temporary directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// `ra-cli --config <demo config> ARGS`.
    pub fn ra(&self, args: &[&str]) -> Run {
        self.ra_with(&self.config, args)
    }

    /// `ra-cli --config <demo config> ARGS`, not started yet (to run it in
    /// the background).
    pub fn ra_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(RA_CLI);
        clean(&mut cmd)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Rewrites certd's configuration with `edit` and has certd reload it
    /// (profiles, RAs and grants).
    pub fn reload_with(&self, edit: impl FnOnce(&str) -> String) {
        let path = PathBuf::from(&self.env["CERTD_CONFIG"]);
        let text = std::fs::read_to_string(&path).expect("certd config");
        let changed = edit(&text);
        assert_ne!(changed, text, "the edit changes nothing");
        std::fs::write(&path, changed).expect("write certd config");
        self.ctl(&["reload"]).ok();
    }

    /// `ra-cli --config CONFIG ARGS`.
    pub fn ra_with(&self, config: &Path, args: &[&str]) -> Run {
        run(clean(&mut Command::new(RA_CLI))
            .arg("--config")
            .arg(config)
            .args(args)
            .current_dir(self.dir.path()))
    }

    /// A copy of the demo's ra-cli configuration with `from` replaced by
    /// `to`.
    pub fn config_variant(&self, name: &str, from: &str, to: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.config).expect("config");
        assert!(text.contains(from), "{from:?} not in\n{text}");
        let p = self.dir.path().join(name);
        std::fs::write(&p, text.replace(from, to)).expect("write config");
        p
    }

    /// The demo certifier's certificate.
    pub fn ca_cert(&self) -> String {
        self.env["CA_CERT"].clone()
    }

    /// A client certificate signed by the demo's TLS infrastructure CA but
    /// on no allowlist; returns (certificate, key).
    pub fn stranger_credential(&self) -> (PathBuf, PathBuf) {
        let tls = Path::new(&self.env["CERTD_TLS_CA"])
            .parent()
            .expect("tls dir")
            .to_path_buf();
        let d = self.scratch("stranger");
        let (key, csr, cert, ext) = (
            d.join("s.key"),
            d.join("s.csr"),
            d.join("s.pem"),
            d.join("ext.cnf"),
        );
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .expect("ext");
        let s = |p: &Path| p.display().to_string();
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=stranger",
        ])
        .ok();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&tls.join("infra-ca.pem")),
            "-CAkey",
            &s(&tls.join("infra-ca.key")),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &s(&cert),
            "-extfile",
            &s(&ext),
        ])
        .ok();
        (cert, key)
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A P-256 key and CSR made by openssl with `subj` and optional SANs
/// (`DNS:x,email:y`); returns the CSR path.
pub fn openssl_csr(dir: &Path, name: &str, subj: &str, sans: Option<&str>) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let (k, c) = (key.display().to_string(), csr.display().to_string());
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &k,
        "-out",
        &c,
        "-subj",
        subj,
    ];
    let ext;
    if let Some(s) = sans {
        ext = format!("subjectAltName={s}");
        args.push("-addext");
        args.push(&ext);
    }
    openssl(&args).ok();
    csr
}

/// Parses a CSV file into header-keyed maps.
pub fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = split_csv_line(lines.next().expect("header"));
    lines
        .filter(|l| !l.is_empty())
        .map(|l| header.iter().cloned().zip(split_csv_line(l)).collect())
        .collect()
}

/// Splits one CSV line (quotes with doubled quotes inside).
fn split_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', q) => quoted = !q,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Polls `cond` until it holds or `timeout` passes (then panics with `what`).
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
