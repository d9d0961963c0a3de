//! The configuration file: where certd is, the RA credential ra-cli
//! presents, the trust anchor for certd's server certificate, and defaults
//! for certifier, profile, key type and concurrency.
//!
//! ```toml
//! [certd]
//! url = "https://127.0.0.1:8443"
//! client_certificate = "tls/ra-cli.pem"
//! client_key = "tls/ra-cli.key"
//! trust_anchor = "tls/infra-ca.pem"
//! timeout_seconds = 30
//!
//! [defaults]
//! certifier = "demo-root"
//! profile = "smime-mailbox"
//! key_type = "p256"
//! jobs = 16
//! ```
//!
//! Unknown keys are refused; relative paths are relative to the file.

use crate::error::Error;
use crate::keys::KeyType;
use certd_api::{CertdClient, ClientConfig};
use serde::Deserialize;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach certd.
    pub certd: CertdSection,
    /// Defaults for options the command line may override.
    #[serde(default)]
    pub defaults: Defaults,
    /// Where the file was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[certd]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertdSection {
    /// Base URL, `https://host:port`.
    pub url: String,
    /// PEM file with ra-cli's client certificate.
    pub client_certificate: PathBuf,
    /// PEM file with its private key.
    pub client_key: PathBuf,
    /// PEM file with the CA certificate(s) that verify certd's server
    /// certificate.
    pub trust_anchor: PathBuf,
    /// Per-request timeout in seconds (default 30).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    30
}

/// `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Certifier to sign with.
    pub certifier: Option<String>,
    /// Issuance profile.
    pub profile: Option<String>,
    /// Key type for keys ra-cli generates.
    pub key_type: Option<KeyType>,
    /// Concurrent requests of a batch.
    pub jobs: Option<usize>,
}

impl Config {
    /// Reads and checks `path`; relative paths in it become relative to
    /// its directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let err = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config = Config::parse(&text).map_err(err)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.certd.client_certificate,
            &mut config.certd.client_key,
            &mut config.certd.trust_anchor,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.path = path.to_path_buf();
        Ok(config)
    }

    /// Parses the text of a configuration file (paths left as written).
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if !config.certd.url.starts_with("https://") {
            return Err(format!(
                "certd.url {:?} must start with https://",
                config.certd.url
            ));
        }
        if config.certd.timeout_seconds == 0 {
            return Err("certd.timeout_seconds must be at least 1".into());
        }
        if config.defaults.jobs == Some(0) {
            return Err("defaults.jobs must be at least 1".into());
        }
        Ok(config)
    }

    /// The client configuration for [`CertdClient`].
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            url: self.certd.url.clone(),
            client_cert: self.certd.client_certificate.clone(),
            client_key: self.certd.client_key.clone(),
            server_ca: self.certd.trust_anchor.clone(),
            timeout: Duration::from_secs(self.certd.timeout_seconds),
        }
    }

    /// A client for certd; reads and checks the credential files.
    pub fn client(&self) -> Result<CertdClient, Error> {
        CertdClient::new(&self.client_config()).map_err(|e| Error::Config {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// SHA-256 fingerprint (lower-case hex) of the client certificate
    /// ra-cli presents: what certd's `[[ra]] fingerprints` must list.
    pub fn client_fingerprint(&self) -> Result<String, Error> {
        let pem = std::fs::read_to_string(&self.certd.client_certificate)
            .map_err(|e| Error::io(&self.certd.client_certificate, e))?;
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).map_err(|e| Error::Config {
            path: self.certd.client_certificate.clone(),
            message: format!("not a PEM certificate: {e}"),
        })?;
        if label != "CERTIFICATE" {
            return Err(Error::Config {
                path: self.certd.client_certificate.clone(),
                message: format!("PEM label {label:?}, expected CERTIFICATE"),
            });
        }
        Ok(hex::encode(sha2::Sha256::digest(&der)))
    }
}

/// Finds the configuration: `--config`, else `RA_CLI_CONFIG` (clap reads
/// both into `given`).
pub fn locate(given: Option<&Path>) -> Result<Config, Error> {
    match given {
        Some(p) => Config::load(p),
        None => Err(Error::Usage(
            "no configuration: pass --config FILE or set RA_CLI_CONFIG \
             (./demo --setup-only writes one and exports it in demo.env)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../ra-cli.example.toml");

    #[test]
    fn example_config_parses() {
        let c = Config::parse(EXAMPLE).expect("the shipped example parses");
        assert_eq!(c.certd.url, "https://certd.example.com:8443");
        assert_eq!(c.certd.timeout_seconds, 30);
        assert_eq!(c.defaults.key_type, Some(KeyType::P256));
    }

    #[test]
    fn junk_keys_are_refused() {
        let bad = EXAMPLE.replace("timeout_seconds", "timeout_secs");
        let e = Config::parse(&bad).expect_err("unknown key");
        assert!(e.contains("timeout_secs"), "{e}");
        let bad = format!("{EXAMPLE}\n[extra]\nx = 1\n");
        assert!(Config::parse(&bad).is_err());
        let bad = EXAMPLE.replace("key_type = \"p256\"", "key_type = \"p521\"");
        assert!(Config::parse(&bad).is_err());
    }

    #[test]
    fn plain_http_is_refused() {
        let bad = EXAMPLE.replace("https://", "http://");
        assert!(Config::parse(&bad).expect_err("http").contains("https"));
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ra-cli.toml");
        std::fs::write(&path, EXAMPLE).expect("write");
        let c = Config::load(&path).expect("load");
        assert_eq!(c.certd.client_key, dir.path().join("tls/ra-cli.key"));
        assert_eq!(
            c.certd.trust_anchor,
            PathBuf::from("/etc/ra-cli/certd-ca.pem")
        );
    }
}
