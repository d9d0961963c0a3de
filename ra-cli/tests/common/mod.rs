//! What ra-cli's end-to-end tests add to the shared harness, `certd-e2e`:
//! the real `ra-cli` binary run with the demo's configuration against a
//! demo CA ([`Ca`]), and the CSV files ra-cli writes ([`read_csv`]).
//! Everything else is certd-e2e's: `./demo --setup-only`, certd on a socket
//! the test binds (ready at its `READY=1`), running commands, CSRs,
//! transport credentials, the fault-injecting PKCS#11 module and polling.
#![allow(dead_code)]

use certd_e2e::api::{ApiCa, ApiDaemon, RaCredential};
use certd_e2e::fault::{self, FaultControl};
use certd_e2e::{poll_until, run, tool, ChildGuard, CmdOutput, DemoEnv};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The ra-cli binary under test.
pub const RA_CLI: &str = env!("CARGO_BIN_EXE_ra-cli");

/// The demo's certifier.
pub const CERTIFIER: &str = "demo-root";

/// A demo CA with its certd running, and the ra-cli configuration the
/// demo wrote for it. Dropping it stops certd, then removes its files.
pub struct Ca {
    /// certd serving the demo CA.
    pub certd: ApiDaemon,
    /// The demo's `demo.env`.
    pub env: DemoEnv,
    /// ra-cli's configuration written by the demo.
    pub config: PathBuf,
    /// Everything of this CA; ra-cli runs here.
    pub dir: tempfile::TempDir,
}

/// The fault-injecting PKCS#11 module certd signs through in a CA from
/// [`Ca::start_through_fault_module`]: its control file (the mode) and its
/// count file (one line per injected fault; `stall C_Sign` when a
/// signature starts to be held).
pub struct FaultyToken {
    /// Switches the module's mode.
    pub control: FaultControl,
    /// The count file.
    pub count: PathBuf,
}

impl Ca {
    /// Sets up a CA with the real `./demo --setup-only`, starts certd and,
    /// with `activate`, unlocks the demo certifier.
    pub fn start(activate: bool) -> Ca {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let certd = ApiCa::from_demo(&ca_dir, &certd_e2e::bin("certd")).start();
        Ca::with(dir, certd, activate)
    }

    /// A demo CA ([`Ca::start`], certifier activated) whose certd reaches
    /// the demo token through the fault-injecting PKCS#11 module
    /// (`certd_e2e::fault`), in mode `pass`: the demo's `hsm.module` line
    /// is pointed at the module, which forwards to the same SoftHSM token,
    /// and certd gets the module's variables. Returns once the CRL certd
    /// signs at activation has been signed, so that from then on only
    /// certificates are signed (no CRL is due again within a test, and
    /// nothing is revoked).
    pub fn start_through_fault_module() -> (Ca, FaultyToken) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let api = ApiCa::from_demo(&ca_dir, &certd_e2e::bin("certd"));
        api.edit_config(
            &format!("module = {:?}", api.token.module.display().to_string()),
            &format!("module = {:?}", fault::fault_module().display().to_string()),
        );
        api.check_config();
        let token = FaultyToken {
            control: FaultControl::new(&ca_dir),
            count: ca_dir.join("faults.log"),
        };
        let env = fault::env_for(&token.control, &token.count);
        let env: Vec<(&str, &OsStr)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), OsStr::new(v.as_str())))
            .collect();
        let ca = Ca::with(dir, api.start_with_env(&env), true);
        poll_until(
            Duration::from_secs(120),
            "the CRL certd signs at activation",
            || (!ca.certd.audit_of("crl_issued").is_empty()).then_some(()),
            || ca.certd.log(),
        );
        (ca, token)
    }

    fn with(dir: tempfile::TempDir, certd: ApiDaemon, activate: bool) -> Ca {
        let ca_dir = dir.path().join("ca");
        let env = DemoEnv::read(&ca_dir.join("demo.env"));
        let config = env.path("RA_CLI_CONFIG");
        if activate {
            certd.activate(CERTIFIER);
        }
        Ca {
            certd,
            env,
            config,
            dir,
        }
    }

    /// A scratch directory inside the CA's temporary directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// `ra-cli --config CONFIG ARGS`, not started yet.
    pub fn ra_command_with(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = tool(RA_CLI);
        cmd.arg("--config")
            .arg(config)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// `ra-cli --config <the demo's> ARGS`, run to completion.
    pub fn ra(&self, args: &[&str]) -> CmdOutput {
        self.ra_with(&self.config, args)
    }

    /// `ra-cli --config CONFIG ARGS`, run to completion.
    pub fn ra_with(&self, config: &Path, args: &[&str]) -> CmdOutput {
        run(&mut self.ra_command_with(config, args))
    }

    /// `ra-cli --config <the demo's> ARGS` started in the background
    /// (killed if the test ends first); [`finish`] collects its output.
    pub fn spawn_ra(&self, args: &[&str]) -> ChildGuard {
        ChildGuard::spawn(
            self.ra_command_with(&self.config, args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
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
}

impl Ca {
    /// A copy of the demo's ra-cli configuration presenting `cred` instead
    /// of ra-cli's own credential.
    pub fn config_presenting(&self, name: &str, cred: &RaCredential) -> PathBuf {
        let own = self.certd.ca.ra("ra-cli");
        let text = std::fs::read_to_string(&self.config).expect("config");
        let (cert, key) = (
            own.cert.display().to_string(),
            own.key.display().to_string(),
        );
        assert!(
            text.contains(&cert) && text.contains(&key),
            "{cert} and {key} in\n{text}"
        );
        let p = self.dir.path().join(name);
        std::fs::write(
            &p,
            text.replace(&cert, &cred.cert.display().to_string())
                .replace(&key, &cred.key.display().to_string()),
        )
        .expect("write config");
        p
    }
}

/// Waits for a background ra-cli ([`Ca::spawn_ra`]) to exit and returns
/// what it printed.
pub fn finish(child: ChildGuard) -> CmdOutput {
    let out = child
        .into_inner()
        .expect("ra-cli was not reaped yet")
        .wait_with_output()
        .expect("wait for ra-cli");
    CmdOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command: "ra-cli (in the background)".into(),
    }
}

/// A CSV file ra-cli wrote (`report.csv`, `passwords.csv`), one map from
/// header to value per record.
pub fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader
        .headers()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            header
                .iter()
                .map(str::to_string)
                .zip(r.iter().map(str::to_string))
                .collect()
        })
        .collect()
}
