//! Configuration: TOML parsed into typed structs that refuse unknown keys.
//!
//! Relative paths are resolved against the directory of the configuration
//! file, so a configuration directory can be moved as a whole.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Errors from loading or checking a configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but its values are inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The whole configuration of one certd instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    pub daemon: DaemonConfig,
    /// The PKCS#11 module shared by all certifiers.
    pub hsm: HsmConfig,
    /// The certifiers (CA keys) this daemon signs with.
    #[serde(default, rename = "certifier")]
    pub certifiers: Vec<CertifierConfig>,
    /// Where the file was loaded from (not part of the TOML).
    #[serde(skip)]
    pub source: PathBuf,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Directory holding the ledger and the audit log.
    pub state_dir: PathBuf,
    /// Path of the local control socket (activation, status).
    pub control_socket: PathBuf,
    /// Permission bits of the control socket.
    #[serde(default = "default_socket_mode")]
    pub control_socket_mode: u32,
    /// Group allowed to use the control socket besides the daemon's user and root.
    #[serde(default)]
    pub control_group: Option<String>,
}

fn default_socket_mode() -> u32 {
    0o600
}

/// The PKCS#11 module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 shared library.
    pub module: PathBuf,
    /// Signing sessions opened per certifier.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
}

fn default_sessions() -> usize {
    4
}

/// One certifier: a CA key in a token and its certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifierConfig {
    /// Short name used in the API and on the command line.
    pub name: String,
    /// Label of the PKCS#11 token holding the key.
    pub token_label: String,
    /// Label (`CKA_LABEL`) of the key pair inside the token.
    pub key_label: String,
    /// PEM file with the certifier's own certificate.
    pub certificate: PathBuf,
    /// Optional PEM file with the chain above the certifier's certificate.
    #[serde(default)]
    pub chain: Option<PathBuf>,
    /// File holding the token user PIN; the certifier activates at start.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Name of a systemd credential (under `$CREDENTIALS_DIRECTORY`) holding the PIN.
    #[serde(default)]
    pub pin_credential: Option<String>,
}

impl CertifierConfig {
    /// Where the PIN comes from at start, if anywhere.
    pub fn pin_source(&self) -> Option<PathBuf> {
        if let Some(p) = &self.pin_file {
            return Some(p.clone());
        }
        let name = self.pin_credential.as_ref()?;
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        Some(Path::new(&dir).join(name))
    }
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks configuration text; `path` names it in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        config.source = path.to_path_buf();
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve_paths(&base);
        config.check()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.daemon.state_dir);
        fix(&mut self.daemon.control_socket);
        fix(&mut self.hsm.module);
        for c in &mut self.certifiers {
            fix(&mut c.certificate);
            if let Some(p) = c.chain.as_mut() {
                fix(p);
            }
            if let Some(p) = c.pin_file.as_mut() {
                fix(p);
            }
        }
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            message,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.hsm.sessions == 0 || self.hsm.sessions > 64 {
            return Err(self.invalid(format!(
                "hsm.sessions = {} is out of range: use 1 to 64",
                self.hsm.sessions
            )));
        }
        if self.daemon.control_socket_mode & !0o777 != 0
            || self.daemon.control_socket_mode & 0o007 != 0
        {
            return Err(self.invalid(format!(
                "daemon.control_socket_mode = {:o} must not grant access to others: use 0o600 or 0o660",
                self.daemon.control_socket_mode
            )));
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.certifiers {
            if !valid_name(&c.name) {
                return Err(self.invalid(format!(
                    "certifier name {:?} is not valid: use 1-64 characters a-z, 0-9, '-' or '_'",
                    c.name
                )));
            }
            if !names.insert(c.name.as_str()) {
                return Err(self.invalid(format!(
                    "certifier {:?} is defined twice: certifier names must be unique",
                    c.name
                )));
            }
            if c.pin_file.is_some() && c.pin_credential.is_some() {
                return Err(self.invalid(format!(
                    "certifier {:?} sets both pin_file and pin_credential: keep one",
                    c.name
                )));
            }
            if c.key_label.is_empty() || c.token_label.is_empty() {
                return Err(self.invalid(format!(
                    "certifier {:?}: token_label and key_label must not be empty",
                    c.name
                )));
            }
        }
        Ok(())
    }

    /// Finds a certifier by name or by its 1-based number.
    pub fn find_certifier(&self, name_or_number: &str) -> Option<(usize, &CertifierConfig)> {
        if let Ok(n) = name_or_number.parse::<usize>() {
            if n >= 1 && n <= self.certifiers.len() {
                return Some((n, &self.certifiers[n - 1]));
            }
        }
        self.certifiers
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name_or_number)
            .map(|(i, c)| (i + 1, c))
    }
}

/// Names used on the wire and in paths: short, lower-case, no surprises.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.bytes().all(|b| b.is_ascii_digit())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
state_dir = "state"
control_socket = "/run/certd/control.sock"

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"

[[certifier]]
name = "root"
token_label = "t"
key_label = "k"
certificate = "root.pem"
"#;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/certd/certd.toml")).expect("parses");
        assert_eq!(c.daemon.state_dir, Path::new("/etc/certd/state"));
        assert_eq!(
            c.certifiers[0].certificate,
            Path::new("/etc/certd/root.pem")
        );
        assert_eq!(c.hsm.sessions, 4);
        assert_eq!(c.daemon.control_socket_mode, 0o600);
        assert_eq!(c.find_certifier("1").map(|(n, _)| n), Some(1));
        assert_eq!(c.find_certifier("root").map(|(n, _)| n), Some(1));
        assert!(c.find_certifier("2").is_none());
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = GOOD.replace("key_label = \"k\"", "key_label = \"k\"\nkey_lable = \"x\"");
        let err = Config::parse(&text, Path::new("c.toml")).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("c.toml:13:1:"), "{msg}");
        assert!(msg.contains("key_lable"), "{msg}");
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let dup = format!(
            "{GOOD}\n[[certifier]]\nname = \"root\"\ntoken_label = \"t\"\nkey_label = \"k2\"\ncertificate = \"x.pem\"\n"
        );
        let err = Config::parse(&dup, Path::new("c.toml")).expect_err("dup");
        assert!(err.to_string().contains("defined twice"), "{err}");
        let bad_mode = GOOD.replace(
            "control_socket = \"/run/certd/control.sock\"",
            "control_socket = \"/run/certd/control.sock\"\ncontrol_socket_mode = 0o666",
        );
        let err = Config::parse(&bad_mode, Path::new("c.toml")).expect_err("mode");
        assert!(err.to_string().contains("others"), "{err}");
        let bad_name = GOOD.replace("name = \"root\"", "name = \"Root CA\"");
        assert!(Config::parse(&bad_name, Path::new("c.toml")).is_err());
    }
}
