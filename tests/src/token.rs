//! A SoftHSM2 token of its own for each test.

use crate::process::{clean_env, run};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The SoftHSM2 PKCS#11 module on Debian.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The user PIN of every test token.
const USER_PIN: &str = "e2e-user-4711";
/// The security officer PIN of every test token.
const SO_PIN: &str = "e2e-so-0815";

/// Writes `text` to a new file readable by its owner only (mode 0600), as
/// PIN files must be.
pub fn write_secret(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A SoftHSM2 token directory with one initialised token, made by the
/// project's own `softhsm-config/init-token`.
#[derive(Debug, Clone)]
pub struct Token {
    /// The `softhsm2.conf` that finds the token: set it as `SOFTHSM2_CONF`
    /// on the processes that use the token.
    pub conf: PathBuf,
    /// File holding the user PIN (mode 0600).
    pub pin_file: PathBuf,
    /// File holding the security officer PIN (mode 0600).
    pub so_pin_file: PathBuf,
    /// The user PIN itself, for tests that need a variation of it.
    pub pin: String,
    /// The token label.
    pub label: String,
    /// The PKCS#11 module.
    pub module: PathBuf,
}

impl Token {
    /// Creates a token labelled `label` in `dir/hsm`, with its PIN files in
    /// `dir`. Several tokens may share one `dir` if their labels differ;
    /// they then share one `conf`.
    pub fn create(dir: &Path, label: &str) -> Token {
        assert!(
            Path::new(SOFTHSM_MODULE).is_file()
                && on_path("softhsm2-util")
                && on_path("pkcs11-tool"),
            "SoftHSM2 is missing ({SOFTHSM_MODULE}, softhsm2-util, pkcs11-tool): \
             run ./test, which installs it (apt-get install softhsm2 opensc)"
        );
        let pin_file = dir.join(format!("{label}.user.pin"));
        let so_pin_file = dir.join(format!("{label}.so.pin"));
        write_secret(&pin_file, USER_PIN);
        write_secret(&so_pin_file, SO_PIN);
        let script = crate::repo_root().join("softhsm-config/init-token");
        let out = run(clean_env(
            Command::new(&script)
                .arg("--dir")
                .arg(dir.join("hsm"))
                .arg("--label")
                .arg(label)
                .arg("--so-pin-file")
                .arg(&so_pin_file)
                .arg("--pin-file")
                .arg(&pin_file)
                .arg("--quiet"),
        ));
        out.assert_success();
        let conf = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SOFTHSM2_CONF="))
            .unwrap_or_else(|| panic!("init-token printed no SOFTHSM2_CONF line\n{out}"));
        // init-token quotes with printf %q; temp paths need no quoting.
        let conf = PathBuf::from(conf.trim());
        assert!(
            conf.is_file(),
            "init-token named {} which does not exist",
            conf.display()
        );
        Token {
            conf,
            pin_file,
            so_pin_file,
            pin: USER_PIN.to_string(),
            label: label.to_string(),
            module: PathBuf::from(SOFTHSM_MODULE),
        }
    }

    /// A command for `program` that finds this token: a clean environment
    /// plus `SOFTHSM2_CONF`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        clean_env(&mut cmd);
        cmd.env("SOFTHSM2_CONF", &self.conf);
        cmd
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}
