//! Configuration: TOML parsed into typed structs that refuse unknown keys.
//!
//! Relative paths are resolved against the directory of the configuration
//! file, so a configuration directory can be moved as a whole.

use certd_api::evidence::{NameKind, ValidationMethod};
use serde::Deserialize;
use std::net::IpAddr;
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
    /// The mutual-TLS API; absent: the daemon serves only its control socket.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// CRL timing.
    #[serde(default)]
    pub crl: CrlConfig,
    /// Prometheus metrics; absent: none are served.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Issuance profiles.
    #[serde(default, rename = "profile")]
    pub profiles: Vec<ProfileConfig>,
    /// The registration authorities allowed to call the API, with their grants.
    #[serde(default, rename = "ra")]
    pub ras: Vec<RaConfig>,
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
    /// Issuance pauses (`storage_full`) while the file system holding
    /// `state_dir` has less than this many MiB free, so that the ledger and
    /// the audit log never run out of space mid-write and revocations
    /// (which this does not stop) still have room.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
    /// This certd's name among instances that may one day share a ledger:
    /// recorded in every intent it makes, and start-up recovery settles only
    /// its own instance's intents. Default: the host name. Letters, digits,
    /// `.`, `-` and `_`, at most 64.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// While entries are being written, the audit log's end is anchored by
    /// a signed checkpoint at least this often (besides one after every
    /// CRL and one at shutdown); 0: only after CRLs and at shutdown.
    #[serde(default = "default_audit_checkpoint_secs")]
    pub audit_checkpoint_secs: u64,
}

fn default_audit_checkpoint_secs() -> u64 {
    300
}

/// The host name (`/proc/sys/kernel/hostname`), or `certd` without one.
fn default_instance() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| valid_instance(h))
        .unwrap_or_else(|| "certd".to_string())
}

/// Whether `id` has the organizationIdentifier form of the S/MIME
/// Baseline Requirements 7.1.4.2.2: a 3-letter registration scheme, a
/// 2-letter country, an optional `+` and state code, `-`, a reference.
pub fn valid_organization_identifier(id: &str) -> bool {
    let Some((head, reference)) = id.split_once('-') else {
        return false;
    };
    let (scheme_country, state) = match head.split_once('+') {
        Some((sc, st)) => (sc, Some(st)),
        None => (head, None),
    };
    scheme_country.len() == 5
        && scheme_country.bytes().all(|b| b.is_ascii_uppercase())
        && state.is_none_or(|s| {
            (1..=3).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        && !reference.is_empty()
        && reference.len() <= 64
        && reference.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `name` may name an instance.
pub fn valid_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn default_socket_mode() -> u32 {
    0o600
}

fn default_min_free_mib() -> u64 {
    64
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
    /// Profiles this certifier issues under; empty means every profile.
    #[serde(default)]
    pub profiles: Vec<String>,
}

/// The metrics listener (`GET /metrics`, OpenMetrics text).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve them: a loopback address (port 0: any free port,
    /// shown by `certd status`).
    pub listen: std::net::SocketAddr,
}

/// The mutual-TLS API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on (ignored when systemd passes a socket).
    pub listen: std::net::SocketAddr,
    /// PEM file with certd's TLS server certificate (and chain).
    pub tls_certificate: PathBuf,
    /// PEM file with its private key.
    pub tls_key: PathBuf,
    /// PEM file with the CA certificate(s) RA client certificates must chain to.
    pub ra_trust_anchor: PathBuf,
    /// Largest request body, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most connections served at once; further ones wait in the backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client has to finish the TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Seconds a client has to send a request's headers.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a request may take as a whole (body included).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
}

fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_header_timeout() -> u64 {
    10
}
fn default_request_timeout() -> u64 {
    30
}
fn default_idle_timeout() -> u64 {
    120
}

/// CRL timing, for every certifier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// Hours between a CRL's thisUpdate and nextUpdate.
    #[serde(default = "default_crl_validity")]
    pub validity_hours: u32,
    /// A new CRL is made when less than this many hours remain before nextUpdate.
    #[serde(default = "default_crl_refresh")]
    pub refresh_hours: u32,
    /// Seconds to wait after a revocation so a burst of them makes one CRL.
    #[serde(default = "default_crl_coalesce")]
    pub coalesce_seconds: u64,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
            validity_hours: default_crl_validity(),
            refresh_hours: default_crl_refresh(),
            coalesce_seconds: default_crl_coalesce(),
        }
    }
}

fn default_crl_validity() -> u32 {
    24
}
fn default_crl_refresh() -> u32 {
    12
}
fn default_crl_coalesce() -> u64 {
    1
}

/// What a profile issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileKind {
    /// TLS server certificates (CA/Browser Forum TLS Baseline Requirements shape).
    TlsServer,
    /// TLS client certificates.
    TlsClient,
    /// Mailbox-validated S/MIME certificates (CA/Browser Forum S/MIME BR).
    SmimeMailbox,
    /// Organization-validated S/MIME: the organization (from the RA's
    /// grant, with its organizationIdentifier) and its mailboxes.
    SmimeOrganization,
    /// Sponsor-validated S/MIME: a named person (or pseudonym) of an
    /// organization from the RA's grant.
    SmimeSponsor,
    /// Individual-validated S/MIME: a named person (or pseudonym).
    SmimeIndividual,
}

impl ProfileKind {
    /// The name used in configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::TlsServer => "tls-server",
            ProfileKind::TlsClient => "tls-client",
            ProfileKind::SmimeMailbox => "smime-mailbox",
            ProfileKind::SmimeOrganization => "smime-organization",
            ProfileKind::SmimeSponsor => "smime-sponsor",
            ProfileKind::SmimeIndividual => "smime-individual",
        }
    }

    /// Whether it issues S/MIME certificates.
    pub fn is_smime(self) -> bool {
        !matches!(self, ProfileKind::TlsServer | ProfileKind::TlsClient)
    }

    /// Whether its subjects name a person (givenName and surname, or a
    /// pseudonym), whose identity an officer attests.
    pub fn names_a_person(self) -> bool {
        matches!(
            self,
            ProfileKind::SmimeSponsor | ProfileKind::SmimeIndividual
        )
    }
}

/// S/MIME BR certificate generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmimeGeneration {
    /// emailProtection only.
    Strict,
    /// emailProtection, and clientAuth allowed.
    Multipurpose,
}

/// An issuance profile: everything about a certificate that is not the
/// subscriber's names and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Name used in requests.
    pub name: String,
    /// What it issues.
    pub kind: ProfileKind,
    /// Subscriber key types allowed (default: p256, p384, rsa2048, rsa3072, rsa4096).
    #[serde(default = "default_key_types")]
    pub key_types: Vec<crate::hsm::KeyType>,
    /// Longest validity in days.
    pub max_validity_days: u32,
    /// certificatePolicies OIDs (the CA/B Forum reserved OID is added by kind).
    #[serde(default)]
    pub policy_oids: Vec<String>,
    /// cRLDistributionPoints URL (http).
    #[serde(default)]
    pub crl_url: Option<String>,
    /// authorityInfoAccess caIssuers URL (http).
    #[serde(default)]
    pub ca_issuers_url: Option<String>,
    /// How many distinct officers, none of them the requester, must have
    /// approved a request (0: no approval needed).
    #[serde(default)]
    pub approvals_required: u32,
    /// Which validation methods count, per kind of name; a kind with
    /// methods needs a fresh validation for every name of that kind.
    #[serde(default)]
    pub validation_methods: ValidationMethods,
    /// How old a validation may be, in days, per kind of name (at most
    /// what the Baseline Requirements allow; that is also the default).
    #[serde(default)]
    pub validation_reuse_days: ReuseDays,
    /// When the RA sends SANs but no subject: repeat the first SAN as
    /// commonName (default: no commonName, an empty subject, as the TLS
    /// Baseline Requirements prefer).
    #[serde(default)]
    pub common_name_from_san: bool,
    /// tls-server/tls-client: whether iPAddress SANs are allowed.
    #[serde(default)]
    pub allow_ip: bool,
    /// tls-server: whether `*.` wildcard names are allowed.
    #[serde(default)]
    pub allow_wildcard: bool,
    /// smime-mailbox: strict or multipurpose.
    #[serde(default)]
    pub smime_generation: Option<SmimeGeneration>,
}

/// Validation methods accepted per kind of name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationMethods {
    /// For dNSName SANs.
    #[serde(default)]
    pub dns: Vec<ValidationMethod>,
    /// For mailboxes (rfc822Name SANs and emailAddress).
    #[serde(default)]
    pub email: Vec<ValidationMethod>,
}

impl ValidationMethods {
    /// The methods for names of `kind`.
    pub fn for_kind(&self, kind: NameKind) -> &[ValidationMethod] {
        match kind {
            NameKind::Dns => &self.dns,
            NameKind::Email => &self.email,
        }
    }
}

/// The longest a domain validation may be reused: TLS Baseline
/// Requirements 4.2.1 (200 days for certificates issued from 15 March 2026).
pub const MAX_DNS_REUSE_DAYS: u32 = 200;
/// The longest a mailbox validation may be reused: S/MIME Baseline
/// Requirements 3.2.2 (30 days).
pub const MAX_EMAIL_REUSE_DAYS: u32 = 30;

/// Validation reuse periods per kind of name, in days.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseDays {
    /// For DNS names (default and ceiling [`MAX_DNS_REUSE_DAYS`]).
    #[serde(default)]
    pub dns: Option<u32>,
    /// For mailboxes (default and ceiling [`MAX_EMAIL_REUSE_DAYS`]).
    #[serde(default)]
    pub email: Option<u32>,
}

impl ReuseDays {
    /// The reuse period for names of `kind`.
    pub fn for_kind(&self, kind: NameKind) -> u32 {
        match kind {
            NameKind::Dns => self.dns.unwrap_or(MAX_DNS_REUSE_DAYS),
            NameKind::Email => self.email.unwrap_or(MAX_EMAIL_REUSE_DAYS),
        }
    }
}

impl ProfileConfig {
    /// Whether requests under this profile must carry approval evidence
    /// (approvals, validations or both).
    pub fn requires_evidence(&self) -> bool {
        self.approvals_required > 0
            || self.kind.names_a_person()
            || !self.validation_methods.dns.is_empty()
            || !self.validation_methods.email.is_empty()
    }
}

fn default_key_types() -> Vec<crate::hsm::KeyType> {
    use crate::hsm::KeyType::*;
    vec![P256, P384, Rsa2048, Rsa3072, Rsa4096]
}

/// A registration authority and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaConfig {
    /// Name, recorded in the ledger and audit log.
    pub name: String,
    /// SHA-256 fingerprints (hex, colons allowed) of its client certificates.
    pub fingerprints: Vec<String>,
    /// Certifiers it may use.
    pub certifiers: Vec<String>,
    /// Profiles it may use.
    pub profiles: Vec<String>,
    /// DNS names it may request exactly.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// DNS domains under which (and at which) it may request any name.
    #[serde(default)]
    pub dns_subtrees: Vec<String>,
    /// Email domains it may request addresses at exactly.
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Email domains at which, or under which, it may request addresses.
    #[serde(default)]
    pub email_subtrees: Vec<String>,
    /// IP networks (CIDR) it may request addresses in.
    #[serde(default)]
    pub ip_networks: Vec<String>,
    /// Longest validity in days for this RA (the profile's applies too).
    #[serde(default)]
    pub max_validity_days: Option<u32>,
    /// Requests per minute; absent or 0: unlimited.
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
    /// Whether it may revoke (the certificates it may see).
    #[serde(default)]
    pub may_revoke: bool,
    /// Whether it may see every certificate, not only its own.
    #[serde(default)]
    pub read_all: bool,
    /// The organization identities it may put in subjects: a subject's
    /// organizationName, organizationalUnitName, localityName,
    /// stateOrProvinceName and countryName must all come from one of them.
    #[serde(default)]
    pub organizations: Vec<OrganizationGrant>,
    /// Patterns (`*` matches any run of characters) a tls-client
    /// commonName may match instead of repeating one of the SANs.
    #[serde(default)]
    pub client_common_names: Vec<String>,
}

/// An organization identity an RA may certify, with the values its
/// subject attributes may take.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrganizationGrant {
    /// organizationName.
    pub name: String,
    /// organizationIdentifier (S/MIME BR 7.1.4.2.2 form, e.g.
    /// `VATDE-123456789`), where the organization has one.
    #[serde(default)]
    pub organization_identifier: Option<String>,
    /// organizationalUnitName values allowed.
    #[serde(default)]
    pub organizational_units: Vec<String>,
    /// localityName values allowed.
    #[serde(default)]
    pub localities: Vec<String>,
    /// stateOrProvinceName values allowed.
    #[serde(default)]
    pub states: Vec<String>,
    /// countryName values allowed (ISO 3166-1 alpha-2).
    #[serde(default)]
    pub countries: Vec<String>,
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
        if let Some(api) = self.api.as_mut() {
            fix(&mut api.tls_certificate);
            fix(&mut api.tls_key);
            fix(&mut api.ra_trust_anchor);
        }
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
        if let Some(m) = &self.metrics {
            if !m.listen.ip().is_loopback() {
                return Err(self.invalid(format!(
                    "metrics.listen = {} is not a loopback address: metrics are served to this \
                     machine only (127.0.0.1 or ::1); let a local agent or a TLS proxy carry them further",
                    m.listen
                )));
            }
        }
        if !valid_instance(&self.daemon.instance) {
            return Err(self.invalid(format!(
                "daemon.instance = {:?} is not valid: use 1-64 letters, digits, '.', '-' or '_'",
                self.daemon.instance
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
        self.check_policy()
    }

    fn check_policy(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for p in &self.profiles {
            if !valid_name(&p.name) || !names.insert(p.name.as_str()) {
                return Err(self.invalid(format!(
                    "profile name {:?} is invalid or used twice: use unique names of a-z, 0-9, '-', '_'",
                    p.name
                )));
            }
            if p.max_validity_days == 0 {
                return Err(self.invalid(format!(
                    "profile {:?}: max_validity_days must be at least 1",
                    p.name
                )));
            }
            if p.key_types.is_empty() {
                return Err(self.invalid(format!("profile {:?}: key_types is empty", p.name)));
            }
            for oid in &p.policy_oids {
                if oid.parse::<const_oid::ObjectIdentifier>().is_err() {
                    return Err(self.invalid(format!(
                        "profile {:?}: policy OID {oid:?} is not a dotted OID",
                        p.name
                    )));
                }
            }
            for url in [&p.crl_url, &p.ca_issuers_url].into_iter().flatten() {
                if !url.starts_with("http://") {
                    return Err(self.invalid(format!(
                        "profile {:?}: URL {url:?} must be plain http:// (RFC 5280 relying parties fetch it without TLS)",
                        p.name
                    )));
                }
            }
            for (kind, max) in [
                (NameKind::Dns, MAX_DNS_REUSE_DAYS),
                (NameKind::Email, MAX_EMAIL_REUSE_DAYS),
            ] {
                let days = p.validation_reuse_days.for_kind(kind);
                if days == 0 || days > max {
                    return Err(self.invalid(format!(
                        "profile {:?}: validation_reuse_days for {} = {days} is out of range: use 1 to {max} (the Baseline Requirements' limit)",
                        p.name,
                        kind.plural()
                    )));
                }
                let methods = p.validation_methods.for_kind(kind);
                for (i, m) in methods.iter().enumerate() {
                    if !m.applies_to(kind) {
                        return Err(self.invalid(format!(
                            "profile {:?}: validation method {m} cannot validate {}",
                            p.name,
                            kind.plural()
                        )));
                    }
                    if methods[..i].contains(m) {
                        return Err(self.invalid(format!(
                            "profile {:?}: validation method {m} is listed twice for {}",
                            p.name,
                            kind.plural()
                        )));
                    }
                }
            }
            match (p.kind.is_smime(), p.smime_generation) {
                (true, None) => {
                    return Err(self.invalid(format!(
                        "profile {:?}: smime_generation must be \"strict\" or \"multipurpose\"",
                        p.name
                    )))
                }
                (false, Some(_)) => {
                    return Err(self.invalid(format!(
                        "profile {:?}: smime_generation applies only to S/MIME profiles",
                        p.name
                    )))
                }
                _ => {}
            }
            if p.kind.is_smime()
                && p.kind != ProfileKind::SmimeMailbox
                && p.validation_methods.email.is_empty()
            {
                return Err(self.invalid(format!(
                    "profile {:?}: {} certificates need a validation of every mailbox: set validation_methods = {{ email = [...] }}",
                    p.name,
                    p.kind.as_str()
                )));
            }
        }
        for c in &self.certifiers {
            for p in &c.profiles {
                if !names.contains(p.as_str()) {
                    return Err(self.invalid(format!(
                        "certifier {:?} lists profile {p:?}, which is not defined",
                        c.name
                    )));
                }
            }
        }
        let mut ra_names = std::collections::HashSet::new();
        let mut fingerprints = std::collections::HashSet::new();
        for ra in &self.ras {
            if !valid_name(&ra.name) || !ra_names.insert(ra.name.as_str()) {
                return Err(self.invalid(format!("RA name {:?} is invalid or used twice", ra.name)));
            }
            if ra.fingerprints.is_empty() {
                return Err(self.invalid(format!("RA {:?} has no fingerprints", ra.name)));
            }
            for f in &ra.fingerprints {
                let norm = normalize_fingerprint(f).ok_or_else(|| {
                    self.invalid(format!(
                        "RA {:?}: fingerprint {f:?} is not a SHA-256 hex digest (64 hex digits, colons allowed)",
                        ra.name
                    ))
                })?;
                if !fingerprints.insert(norm) {
                    return Err(self.invalid(format!(
                        "RA {:?}: fingerprint {f:?} is listed for two RAs",
                        ra.name
                    )));
                }
            }
            for c in &ra.certifiers {
                if !self.certifiers.iter().any(|x| &x.name == c) {
                    return Err(self.invalid(format!(
                        "RA {:?} is granted certifier {c:?}, which is not defined",
                        ra.name
                    )));
                }
            }
            for p in &ra.profiles {
                if !names.contains(p.as_str()) {
                    return Err(self.invalid(format!(
                        "RA {:?} is granted profile {p:?}, which is not defined",
                        ra.name
                    )));
                }
            }
            for d in ra
                .dns_names
                .iter()
                .chain(&ra.dns_subtrees)
                .chain(&ra.email_domains)
                .chain(&ra.email_subtrees)
            {
                if d.is_empty()
                    || d.starts_with('.')
                    || d.ends_with('.')
                    || d.to_ascii_lowercase() != *d
                {
                    return Err(self.invalid(format!(
                        "RA {:?}: domain {d:?} must be lower-case, without leading or trailing dots",
                        ra.name
                    )));
                }
            }
            for o in &ra.organizations {
                if o.name.is_empty() || o.name.chars().count() > 64 || o.name.trim() != o.name {
                    return Err(self.invalid(format!(
                        "RA {:?}: organization name {:?} must be 1 to 64 characters without surrounding spaces",
                        ra.name, o.name
                    )));
                }
                for c in &o.countries {
                    if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(self.invalid(format!(
                            "RA {:?}: organization {:?}: country {c:?} must be two upper-case letters (ISO 3166-1)",
                            ra.name, o.name
                        )));
                    }
                }
                if let Some(id) = &o.organization_identifier {
                    if !valid_organization_identifier(id) {
                        return Err(self.invalid(format!(
                            "RA {:?}: organization {:?}: organization_identifier {id:?} is not of the form SSSCC-reference \
                             (a scheme of 3 letters such as VAT, NTR, LEI, GOV, INT, PSD, a country code, '-', the reference)",
                            ra.name, o.name
                        )));
                    }
                }
            }
            for n in &ra.ip_networks {
                if IpNet::parse(n).is_none() {
                    return Err(self.invalid(format!(
                        "RA {:?}: {n:?} is not a CIDR network like 10.0.0.0/8",
                        ra.name
                    )));
                }
            }
        }
        if !self.ras.is_empty() && self.api.is_none() {
            return Err(self.invalid("RAs are configured but there is no [api] section".into()));
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

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8` or `2001:db8::/32`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = s.split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` lies inside the network.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        fn bits(a: &IpAddr) -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(*v)), 32),
                IpAddr::V6(v) => (u128::from(*v), 128),
            }
        }
        let (net, width) = bits(&self.addr);
        let (host, host_width) = bits(ip);
        if width != host_width {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
        (net & mask) == (host & mask)
    }
}

/// Lower-case hex without separators, if `f` is a SHA-256 fingerprint.
pub fn normalize_fingerprint(f: &str) -> Option<String> {
    let hex: String = f
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
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

    #[test]
    fn ipnet() {
        let n = IpNet::parse("10.0.0.0/8").expect("net");
        assert!(n.contains(&"10.1.2.3".parse().expect("ip")));
        assert!(!n.contains(&"11.1.2.3".parse().expect("ip")));
        let all = IpNet::parse("0.0.0.0/0").expect("net");
        assert!(all.contains(&"1.2.3.4".parse().expect("ip")));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("10.0.0.0").is_none());
    }
}
