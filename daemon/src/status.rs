//! The daemon's state as others see it: what `certd status` shows (the
//! first thing an operator runs), and the API's health report.

use crate::certifier::{Certifier, Certifiers, State};
use crate::journal::Ledger;
use certd_api::{CertifierHealth, Health};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::time::Duration;

/// The daemon's status: this process, up for `uptime`, and every
/// certifier with its counters from `ledger`.
pub fn report(certifiers: &Certifiers, ledger: &dyn Ledger, uptime: Duration) -> DaemonStatus {
    DaemonStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: uptime.as_secs(),
        pid: std::process::id(),
        certifiers: certifiers
            .all()
            .iter()
            .map(|c| certifier_status(c, ledger))
            .collect(),
        metrics: None,
    }
}

fn certifier_status(c: &Certifier, ledger: &dyn Ledger) -> CertifierStatus {
    let state = c.state();
    let stats = ledger.stats(c.name()).unwrap_or_default();
    let not_after = c.certificate.tbs_certificate().validity().not_after;
    CertifierStatus {
        number: c.number,
        name: c.name().to_string(),
        subject: c.subject(),
        key_type: c.key_type.to_string(),
        token_label: c.config.token_label.clone(),
        key_label: c.config.key_label.clone(),
        state: state.name().to_string(),
        reason: match state {
            State::Unavailable(r) => Some(r),
            _ => None,
        },
        not_after: not_after.to_string(),
        certificates_issued: stats.issued,
        certificates_revoked: stats.revoked,
        last_serial: stats.last_serial.map(|s| s.to_hex()),
        crl_number: ledger.current_crl_number(c.name()).ok().flatten(),
    }
}

/// Every certifier's state on one line, for `systemctl status`.
pub fn summary(certifiers: &Certifiers) -> String {
    let parts: Vec<String> = certifiers
        .all()
        .iter()
        .map(|c| format!("{}: {}", c.name(), c.state().name()))
        .collect();
    if parts.is_empty() {
        "no certifiers configured".into()
    } else {
        parts.join(", ")
    }
}

/// Every certifier's state, as `GET /v1/health` reports it: `ok` while all
/// are active, `degraded` otherwise.
pub fn health(certifiers: &Certifiers) -> Health {
    let certifiers: Vec<CertifierHealth> = certifiers
        .all()
        .iter()
        .map(|c| {
            let state = c.state();
            CertifierHealth {
                name: c.name().to_string(),
                state: state.name().to_string(),
                reason: match state {
                    State::Unavailable(r) => Some(r),
                    _ => None,
                },
                certificate: c.chain_pems.first().cloned(),
            }
        })
        .collect();
    let status = if certifiers.iter().all(|c| c.state == "active") {
        "ok"
    } else {
        "degraded"
    };
    Health {
        status: status.into(),
        certifiers,
    }
}

/// The daemon's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonStatus {
    /// certd version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// Process id.
    pub pid: u32,
    /// Every certifier, in number order.
    pub certifiers: Vec<CertifierStatus>,
    /// Where the metrics are served (`[metrics]`), once bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// One certifier's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifierStatus {
    /// Stable 1-based number.
    pub number: usize,
    /// Name.
    pub name: String,
    /// Subject of the certifier's certificate.
    pub subject: String,
    /// Key type.
    pub key_type: String,
    /// Token label.
    pub token_label: String,
    /// Key label in the token.
    pub key_label: String,
    /// `locked`, `active` or `unavailable`.
    pub state: String,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// notAfter of the certifier's certificate (RFC 3339).
    pub not_after: String,
    /// Certificates issued.
    pub certificates_issued: u64,
    /// Certificates revoked.
    pub certificates_revoked: u64,
    /// Serial of the last certificate issued (hex).
    pub last_serial: Option<String>,
    /// Number of the last CRL issued.
    pub crl_number: Option<u64>,
}

impl DaemonStatus {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let up = self.uptime_seconds;
        let _ = writeln!(
            out,
            "certd {} (pid {}), up {}d {:02}h {:02}m {:02}s, {} certifier{}",
            self.version,
            self.pid,
            up / 86_400,
            up % 86_400 / 3_600,
            up % 3_600 / 60,
            up % 60,
            self.certifiers.len(),
            if self.certifiers.len() == 1 { "" } else { "s" }
        );
        for c in &self.certifiers {
            let _ = writeln!(out);
            let state = match &c.reason {
                Some(r) => format!("{} ({r})", c.state.to_uppercase()),
                None => c.state.to_uppercase(),
            };
            let _ = writeln!(out, "  #{} {}  {}", c.number, c.name, state);
            let _ = writeln!(out, "     subject       {}", c.subject);
            let _ = writeln!(
                out,
                "     key           {} {:?} in token {:?}",
                c.key_type, c.key_label, c.token_label
            );
            let _ = writeln!(out, "     valid until   {}", c.not_after);
            let _ = writeln!(
                out,
                "     issued        {} ({} revoked), last serial {}",
                c.certificates_issued,
                c.certificates_revoked,
                c.last_serial.as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                out,
                "     CRL number    {}",
                c.crl_number.map_or("-".to_string(), |n| n.to_string())
            );
        }
        out
    }
}
