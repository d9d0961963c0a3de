//! ra-web's configuration: one TOML file, parsed into typed structs that
//! refuse unknown keys, with relative paths resolved against the file's
//! directory. `ra-web check-config` loads it and checks every file it names.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, TLS and where ra-web keeps its store.
    pub server: ServerConfig,
    /// How ra-web reaches certd.
    pub certd: CertdConfig,
    /// Sign-in and session rules.
    #[serde(default)]
    pub security: SecurityConfig,
    /// How notifications are delivered.
    #[serde(default)]
    pub mail: MailConfig,
    /// Prometheus metrics; absent: none (unless systemd passes a socket
    /// named `metrics`).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// The metrics listener (`GET /metrics`, OpenMetrics text).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback address.
    pub listen: SocketAddr,
}

/// Listeners, TLS and the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The staff application's HTTPS listener (a socket passed by systemd,
    /// named `https`, takes precedence).
    pub listen: SocketAddr,
    /// The plain-HTTP listener that publishes CA certificates and CRLs
    /// without sign-in (socket name `http`); none when absent.
    pub public_listen: Option<SocketAddr>,
    /// PEM certificate chain of ra-web's HTTPS server.
    pub tls_certificate: PathBuf,
    /// PEM private key of ra-web's HTTPS server.
    pub tls_key: PathBuf,
    /// The address staff and subscribers use to reach the application,
    /// used in links sent by mail (e.g. `https://ra.example.com`).
    pub public_url: url::Url,
    /// Where ra-web keeps its store (created when missing).
    pub state_dir: PathBuf,
    /// The largest request body accepted, in KiB (CSR uploads are a few KiB).
    #[serde(default = "default_max_body_kib")]
    pub max_body_kib: usize,
}

fn default_max_body_kib() -> usize {
    128
}

/// How ra-web talks to certd: as one RA, over mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertdConfig {
    /// certd's API, e.g. `https://127.0.0.1:8443`.
    pub url: url::Url,
    /// PEM client certificate of ra-web's RA identity.
    pub client_certificate: PathBuf,
    /// PEM private key of that certificate.
    pub client_key: PathBuf,
    /// PEM CA certificate(s) that verify certd's server certificate.
    pub server_ca: PathBuf,
    /// Per-call timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    30
}

/// Sign-in and session rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// A session unused this long ends.
    #[serde(default = "default_idle")]
    pub session_idle_minutes: u32,
    /// A session ends this long after sign-in, used or not.
    #[serde(default = "default_absolute")]
    pub session_absolute_hours: u32,
    /// Failed sign-ins in a row that lock an account.
    #[serde(default = "default_failures")]
    pub lockout_failures: u32,
    /// How long a locked account stays locked.
    #[serde(default = "default_lockout")]
    pub lockout_minutes: u32,
}

fn default_idle() -> u32 {
    30
}
fn default_absolute() -> u32 {
    12
}
fn default_failures() -> u32 {
    5
}
fn default_lockout() -> u32 {
    15
}

impl Default for SecurityConfig {
    fn default() -> SecurityConfig {
        SecurityConfig {
            session_idle_minutes: default_idle(),
            session_absolute_hours: default_absolute(),
            lockout_failures: default_failures(),
            lockout_minutes: default_lockout(),
        }
    }
}

impl SecurityConfig {
    /// The idle expiry.
    pub fn idle(&self) -> Duration {
        Duration::from_secs(u64::from(self.session_idle_minutes) * 60)
    }
    /// The absolute expiry.
    pub fn absolute(&self) -> Duration {
        Duration::from_secs(u64::from(self.session_absolute_hours) * 3600)
    }
    /// The lockout period.
    pub fn lockout(&self) -> Duration {
        Duration::from_secs(u64::from(self.lockout_minutes) * 60)
    }
}

/// How notifications leave ra-web.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// The sender address; without it no mail is sent (and none queued).
    pub from: Option<String>,
    /// An SMTP relay.
    pub smtp: Option<SmtpConfig>,
    /// A directory that receives each mail as an `.eml` file instead of
    /// SMTP (the demo's outbox).
    pub outbox_dir: Option<PathBuf>,
    /// Attach the certificate to the "issued" mail instead of sending a
    /// pickup link.
    #[serde(default)]
    pub attach_certificate: bool,
    /// How long a pickup link works, in hours.
    #[serde(default = "default_pickup_hours")]
    pub pickup_link_hours: u32,
    /// The first retry of a mail that could not be delivered waits this
    /// long, each further one twice as long (at most an hour).
    #[serde(default = "default_retry_base")]
    pub retry_base_seconds: u32,
}

fn default_retry_base() -> u32 {
    30
}

fn default_pickup_hours() -> u32 {
    72
}

impl Default for MailConfig {
    fn default() -> MailConfig {
        MailConfig {
            from: None,
            smtp: None,
            outbox_dir: None,
            attach_certificate: false,
            pickup_link_hours: default_pickup_hours(),
            retry_base_seconds: default_retry_base(),
        }
    }
}

/// An SMTP relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name (also the name its TLS certificate must carry).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `starttls` (the default), `tls` (implicit TLS) or `none` (only for
    /// a relay on the same host).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// A PEM CA file to verify the relay with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// User name for SMTP AUTH.
    pub username: Option<String>,
    /// File holding the SMTP password (never in this file).
    pub password_file: Option<PathBuf>,
    /// How long delivering one mail may take, in seconds (connection,
    /// STARTTLS and the whole exchange).
    #[serde(default = "default_smtp_timeout")]
    pub timeout_seconds: u64,
}

fn default_smtp_timeout() -> u64 {
    30
}

/// Transport security towards the SMTP relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// STARTTLS, required.
    #[default]
    Starttls,
    /// TLS from the first byte.
    Tls,
    /// Plain text: only for a relay on the same host.
    None,
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or missing keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (names the key and line).
        message: String,
    },
    /// A value is out of range or a named file is unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Config {
    /// Reads and parses `path`, resolving relative paths against its
    /// directory, and checks the values.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve(&base);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Parses TOML text (no path resolution, no checks).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.server.tls_certificate);
        abs(&mut self.server.tls_key);
        abs(&mut self.server.state_dir);
        abs(&mut self.certd.client_certificate);
        abs(&mut self.certd.client_key);
        abs(&mut self.certd.server_ca);
        if let Some(d) = &mut self.mail.outbox_dir {
            abs(d);
        }
        if let Some(s) = &mut self.mail.smtp {
            if let Some(p) = &mut s.ca_file {
                abs(p);
            }
            if let Some(p) = &mut s.password_file {
                abs(p);
            }
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = &self.metrics {
            if !m.listen.ip().is_loopback() {
                return Err(format!(
                    "[metrics] listen = {} is not a loopback address: metrics are served to this \
                     machine only (127.0.0.1 or ::1)",
                    m.listen
                ));
            }
        }
        let s = &self.security;
        if s.session_idle_minutes == 0 || s.session_absolute_hours == 0 {
            return Err(
                "[security] session_idle_minutes and session_absolute_hours must be at least 1"
                    .into(),
            );
        }
        if u64::from(s.session_idle_minutes) > u64::from(s.session_absolute_hours) * 60 {
            return Err(
                "[security] session_idle_minutes is longer than session_absolute_hours: lower it"
                    .into(),
            );
        }
        if s.lockout_failures == 0 || s.lockout_minutes == 0 {
            return Err(
                "[security] lockout_failures and lockout_minutes must be at least 1".into(),
            );
        }
        if !(1..=10 * 1024).contains(&self.server.max_body_kib) {
            return Err("[server] max_body_kib must be between 1 and 10240".into());
        }
        if self.server.public_url.scheme() != "https" {
            return Err(format!(
                "[server] public_url {} must be https: the application is only served over TLS",
                self.server.public_url
            ));
        }
        if self.certd.url.scheme() != "https" {
            return Err(format!(
                "[certd] url {} must be https: certd speaks only mutual TLS",
                self.certd.url
            ));
        }
        if self.certd.timeout_seconds == 0 {
            return Err("[certd] timeout_seconds must be at least 1".into());
        }
        let m = &self.mail;
        if m.from.is_some() && m.smtp.is_none() && m.outbox_dir.is_none() {
            return Err(
                "[mail] from is set but neither smtp nor outbox_dir: say where mail goes".into(),
            );
        }
        if m.smtp.is_some() && m.outbox_dir.is_some() {
            return Err("[mail] smtp and outbox_dir are both set: choose one".into());
        }
        if (m.smtp.is_some() || m.outbox_dir.is_some()) && m.from.is_none() {
            return Err("[mail] needs from = \"ra@your.domain\" to send mail".into());
        }
        if let Some(from) = &m.from {
            if certd_api::names::check_email(from).is_err() {
                return Err(format!("[mail] from {from:?} is not a mail address"));
            }
        }
        if let Some(smtp) = &m.smtp {
            if smtp.username.is_some() != smtp.password_file.is_some() {
                return Err("[mail.smtp] username and password_file go together".into());
            }
        }
        if m.retry_base_seconds == 0 || m.retry_base_seconds > 3600 {
            return Err("[mail] retry_base_seconds must be between 1 and 3600".into());
        }
        if m.smtp.as_ref().is_some_and(|s| s.timeout_seconds == 0) {
            return Err("[mail.smtp] timeout_seconds must be at least 1".into());
        }
        if m.pickup_link_hours == 0 || m.pickup_link_hours > 24 * 30 {
            return Err("[mail] pickup_link_hours must be between 1 and 720".into());
        }
        Ok(())
    }

    /// Checks that every file the configuration names can be read, as
    /// `check-config` does before anything is started.
    pub fn check_files(&self) -> Result<(), String> {
        let mut files = vec![
            ("[server] tls_certificate", &self.server.tls_certificate),
            ("[server] tls_key", &self.server.tls_key),
            ("[certd] client_certificate", &self.certd.client_certificate),
            ("[certd] client_key", &self.certd.client_key),
            ("[certd] server_ca", &self.certd.server_ca),
        ];
        if let Some(smtp) = &self.mail.smtp {
            if let Some(p) = &smtp.ca_file {
                files.push(("[mail.smtp] ca_file", p));
            }
            if let Some(p) = &smtp.password_file {
                files.push(("[mail.smtp] password_file", p));
            }
        }
        for (what, path) in files {
            std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// The certd client's configuration.
    pub fn client_config(&self) -> certd_api::ClientConfig {
        certd_api::ClientConfig {
            url: self.certd.url.as_str().trim_end_matches('/').to_string(),
            client_cert: self.certd.client_certificate.clone(),
            client_key: self.certd.client_key.clone(),
            server_ca: self.certd.server_ca.clone(),
            timeout: Duration::from_secs(self.certd.timeout_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8444"
public_listen = "127.0.0.1:8080"
tls_certificate = "tls/ra-web.pem"
tls_key = "tls/ra-web.key"
public_url = "https://ra.example.com"
state_dir = "state"

[certd]
url = "https://127.0.0.1:8443"
client_certificate = "tls/ra-web-client.pem"
client_key = "tls/ra-web-client.key"
server_ca = "tls/ca.pem"
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::parse(MINIMAL).expect("parses");
        assert_eq!(c.security.lockout_failures, 5);
        assert_eq!(c.server.max_body_kib, 128);
        c.validate().expect("valid");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let text = MINIMAL.replace("[certd]", "[certd]\ncolour = \"blue\"");
        let e = Config::parse(&text).expect_err("unknown key");
        assert!(e.contains("colour"), "{e}");
        let text = format!("{MINIMAL}\n[extra]\nx = 1\n");
        let e = Config::parse(&text).expect_err("unknown table");
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn values_that_cannot_work_are_refused() {
        for (from, to, says) in [
            (
                "https://ra.example.com",
                "http://ra.example.com",
                "must be https",
            ),
            (
                "[certd]",
                "[security]\nsession_idle_minutes = 0\n[certd]",
                "at least 1",
            ),
            (
                "[certd]",
                "[mail]\nfrom = \"ra@example.com\"\n[certd]",
                "neither smtp nor outbox_dir",
            ),
            (
                "[certd]",
                "[mail]\nfrom = \"not an address\"\noutbox_dir = \"out\"\n[certd]",
                "not a mail address",
            ),
        ] {
            let c = Config::parse(&MINIMAL.replacen(from, to, 1)).expect("parses");
            let e = c.validate().expect_err(to);
            assert!(e.contains(says), "{to}: {e}");
        }
    }

    #[test]
    fn relative_paths_are_resolved_against_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ra-web.toml");
        std::fs::write(&path, MINIMAL).expect("write");
        let c = Config::load(&path).expect("loads");
        assert_eq!(c.server.state_dir, dir.path().join("state"));
        assert_eq!(c.certd.server_ca, dir.path().join("tls/ca.pem"));
        let e = c.check_files().expect_err("files are missing");
        assert!(e.contains("tls_certificate"), "{e}");
    }

    #[test]
    fn the_packaged_example_config_parses() {
        let text = include_str!("../examples/ra-web.toml");
        let c = Config::parse(text).expect("example parses");
        c.validate().expect("example is valid");
    }
}
