//! Prometheus metrics, in the OpenMetrics text format, on a listener of
//! their own (`[metrics] listen`, loopback only, off by default): never on
//! the API's port, so scraping needs no RA certificate and grants nothing.
//!
//! Counted as things happen: issuances by certifier, profile and result;
//! refusals by their stable code; revocations by certifier and reason; the
//! token's signing latency per certifier; the journal's commit (write and
//! fsync) latency. Read at each scrape: every certifier's state, each CRL's
//! number, thisUpdate and nextUpdate, the journal's last entry and the time
//! the audit log's end was last covered by a signed checkpoint. Times are
//! exported as Unix timestamps (the Prometheus convention: alerts compute
//! ages with `time()`), with the configured intervals beside them so alert
//! rules need no copy of the configuration (packaging/certd-alerts.yml).
//!
//! Label values come from the configuration (certifier and profile names)
//! or fixed sets (results, error codes, reasons), never from what an RA
//! sends: a profile that does not exist is counted as `profile="none"`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use prometheus_client::metrics::histogram::Histogram;

/// The Content-Type of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A latency histogram: 50 µs to about 26 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 20,
    ))
}

/// How an issuance request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new certificate.
    Issued,
    /// The same request again: the earlier certificate.
    Replayed,
    /// Refused by policy or as malformed (a 4xx).
    Refused,
    /// Failed on certd's side (token, ledger, disk: a 5xx).
    Failed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Replayed => "replayed",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuanceLabels {
    certifier: String,
    profile: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationLabels {
    certifier: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertifierLabels {
    certifier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    certifier: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type HistogramFamily = Family<CertifierLabels, Histogram, fn() -> Histogram>;

/// The counters and histograms certd keeps while it runs.
pub struct Metrics {
    issuances: Family<IssuanceLabels, Counter>,
    refusals: Family<CodeLabels, Counter>,
    revocations: Family<RevocationLabels, Counter>,
    hsm_sign: HistogramFamily,
    /// Unix time at which the audit log's end was last known covered by a
    /// signed checkpoint.
    checkpoint_current_at: AtomicI64,
    /// Where the metrics are served, once bound.
    address: OnceLock<SocketAddr>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Empty counters; `started` (Unix seconds) stands for the last
    /// checkpoint until the first one.
    pub fn new(started: i64) -> Metrics {
        Metrics {
            issuances: Family::default(),
            refusals: Family::default(),
            revocations: Family::default(),
            hsm_sign: Family::new_with_constructor(latency_histogram),
            checkpoint_current_at: AtomicI64::new(started),
            address: OnceLock::new(),
        }
    }

    /// Counts an issuance request's end. `certifier` and `profile` are
    /// the configured ones the request resolved to, `None` when it was
    /// refused before they were known.
    pub fn issuance(&self, certifier: Option<&str>, profile: Option<&str>, outcome: Outcome) {
        self.issuances
            .get_or_create(&IssuanceLabels {
                certifier: certifier.unwrap_or("none").to_string(),
                profile: profile.unwrap_or("none").to_string(),
                result: outcome.name(),
            })
            .inc();
    }

    /// Counts a refusal (every audited `refused` entry) by its code.
    pub fn refusal(&self, code: &str) {
        self.refusals
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
    }

    /// Counts a revocation.
    pub fn revocation(&self, certifier: &str, reason: &str) {
        self.revocations
            .get_or_create(&RevocationLabels {
                certifier: certifier.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records how long the token took to sign for `certifier` (queueing
    /// for a session included).
    pub fn sign_latency(&self, certifier: &str, seconds: f64) {
        self.hsm_sign
            .get_or_create(&CertifierLabels {
                certifier: certifier.to_string(),
            })
            .observe(seconds);
    }

    /// The audit log's end was covered by a signed checkpoint at `unix`.
    pub fn checkpoint_current(&self, unix: i64) {
        self.checkpoint_current_at.fetch_max(unix, Ordering::AcqRel);
    }

    /// Records where the metrics listener is bound.
    pub fn bound(&self, address: SocketAddr) {
        let _ = self.address.set(address);
    }

    /// Where the metrics listener is bound, once it is.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address.get().copied()
    }

    /// The whole exposition: these counters, the journal's `commit`
    /// latency, and the gauges of `now`.
    pub fn render(&self, commit: Option<Histogram>, now: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("certd");
        registry.register(
            "issuances",
            "Issuance requests by certifier, profile and result (issued, replayed, refused, failed)",
            self.issuances.clone(),
        );
        registry.register(
            "refusals",
            "Refused API requests by error code (each one is in the audit log)",
            self.refusals.clone(),
        );
        registry.register(
            "revocations",
            "Certificates revoked, by certifier and reason",
            self.revocations.clone(),
        );
        registry.register_with_unit(
            "hsm_sign",
            "Time for the token to sign a certificate, waiting for a session included",
            Unit::Seconds,
            self.hsm_sign.clone(),
        );
        if let Some(commit) = commit {
            registry.register_with_unit(
                "journal_commit",
                "Time for a journal round (write and fsync) to become durable",
                Unit::Seconds,
                commit,
            );
        }

        let info = Family::<VersionLabels, Gauge>::default();
        info.get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        registry.register("build_info", "The running certd's version", info);

        let state = Family::<StateLabels, Gauge>::default();
        let crl_number = Family::<CertifierLabels, Gauge>::default();
        let crl_this = Family::<CertifierLabels, Gauge>::default();
        let crl_next = Family::<CertifierLabels, Gauge>::default();
        for c in &now.certifiers {
            for name in ["active", "locked", "unavailable"] {
                state
                    .get_or_create(&StateLabels {
                        certifier: c.name.clone(),
                        state: name,
                    })
                    .set(i64::from(name == c.state));
            }
            if let Some(crl) = &c.crl {
                let labels = CertifierLabels {
                    certifier: c.name.clone(),
                };
                crl_number
                    .get_or_create(&labels)
                    .set(i64::try_from(crl.number).unwrap_or(i64::MAX));
                crl_this.get_or_create(&labels).set(crl.this_update);
                crl_next.get_or_create(&labels).set(crl.next_update);
            }
        }
        registry.register(
            "certifier_state",
            "1 for each certifier's current state (active, locked, unavailable), else 0",
            state,
        );
        registry.register(
            "crl_number",
            "Number of each certifier's current CRL",
            crl_number,
        );
        registry.register(
            "crl_this_update_timestamp_seconds",
            "thisUpdate of each certifier's current CRL, Unix time",
            crl_this,
        );
        registry.register(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of each certifier's current CRL, Unix time",
            crl_next,
        );
        registry.register(
            "crl_refresh_before_next_update_seconds",
            "certd makes a new CRL when less than this remains before nextUpdate",
            gauge(now.crl_refresh_seconds),
        );
        registry.register(
            "audit_entries",
            "seq of the audit log's last entry",
            gauge(i64::try_from(now.audit_entries).unwrap_or(i64::MAX)),
        );
        registry.register(
            "audit_checkpoint_timestamp_seconds",
            "When the audit log's end was last covered by a signed checkpoint, Unix time",
            gauge(self.checkpoint_current_at.load(Ordering::Acquire)),
        );
        registry.register(
            "audit_checkpoint_interval_seconds",
            "How often certd signs the audit log's end (audit_checkpoint_secs)",
            gauge(now.checkpoint_interval_seconds),
        );

        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

fn gauge(value: i64) -> Gauge<i64, AtomicI64> {
    let g = Gauge::<i64, AtomicI64>::default();
    g.set(value);
    g
}

/// What the gauges show, read at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every certifier.
    pub certifiers: Vec<CertifierSnapshot>,
    /// `crl.refresh_hours`, in seconds.
    pub crl_refresh_seconds: i64,
    /// `seq` of the audit log's last entry.
    pub audit_entries: u64,
    /// `daemon.audit_checkpoint_secs`.
    pub checkpoint_interval_seconds: i64,
}

/// One certifier at a scrape.
#[derive(Debug, Clone)]
pub struct CertifierSnapshot {
    /// Its name.
    pub name: String,
    /// `active`, `locked` or `unavailable`.
    pub state: &'static str,
    /// Its current CRL, if it has made one.
    pub crl: Option<CrlSnapshot>,
}

/// A CRL at a scrape.
#[derive(Debug, Clone)]
pub struct CrlSnapshot {
    /// Its number.
    pub number: u64,
    /// thisUpdate, Unix time.
    pub this_update: i64,
    /// nextUpdate, Unix time.
    pub next_update: i64,
}
