//! certd's metrics listener, scraped after issuances, a replay, refusals
//! and a revocation: the counters match what was done, the refusals match
//! the audit log's, the gauges match `certd status` and the audit log, and
//! the whole exposition passes the Prometheus project's OpenMetrics parser.
#![forbid(unsafe_code)]

use certd_e2e::api::{
    make_csr, make_key, tls_server_grant, tls_server_request, ApiCaBuilder, KeyAlg, API_DEADLINE,
    TLS_SERVER_PROFILE,
};
use certd_e2e::metrics::{scrape, Scrape};
use certd_e2e::poll_until;
use std::collections::BTreeMap;
use std::path::Path;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

/// Metrics on any free port of the loopback (`certd status` names it).
const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// A CA with the p256 certifier `ca`, metrics on, and `ra-main`.
fn ca_in(tmp: &Path, name: &str) -> certd_e2e::api::ApiCa {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    ApiCaBuilder::new(&dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml(METRICS)
        .toml(TLS_SERVER_PROFILE)
        .ra("ra-main", &tls_server_grant("may_revoke = true"))
        .build()
}

fn issuances(m: &Scrape, certifier: &str, profile: &str, result: &str) -> f64 {
    m.value(
        "certd_issuances_total",
        &[
            ("certifier", certifier),
            ("profile", profile),
            ("result", result),
        ],
    )
    .unwrap_or(0.0)
}

#[test]
fn the_metrics_count_what_was_done() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = ca_in(tmp.path(), "ca").start();
    let address = d.status()["metrics"]
        .as_str()
        .expect("certd status names the metrics address")
        .to_string();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let url = format!("http://{address}/metrics");

    // Active from its PIN file; locked once deactivated; active again.
    let m = scrape(&url);
    assert_eq!(
        m.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(
        m.get(
            "certd_certifier_state",
            &[("certifier", "ca"), ("state", "active")]
        ),
        1.0
    );
    d.deactivate("ca");
    let m = scrape(&url);
    assert_eq!(
        m.get(
            "certd_certifier_state",
            &[("certifier", "ca"), ("state", "locked")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "certd_certifier_state",
            &[("certifier", "ca"), ("state", "active")]
        ),
        0.0
    );
    d.activate("ca");

    let client = d.client("ra-main");
    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/", &[]).pem;
    let mut serials = Vec::new();
    for i in 0..3 {
        let resp = d
            .block_on(client.issue(&tls_server_request(&csr, &format!("m{i}.example.com"))))
            .expect("issue");
        serials.push(resp.serial);
    }
    // The same request again: a replay, no new signature.
    let replay = d
        .block_on(client.issue(&tls_server_request(&csr, "m0.example.com")))
        .expect("replay");
    assert!(replay.replayed);
    // Refused before a profile is known (not granted), after (not a CSR),
    // and a lookup of a serial that does not exist.
    let mut other = tls_server_request(&csr, "x.example.com");
    other.profile = "code-signing".into();
    d.block_on(client.issue(&other))
        .expect_err("a profile not granted");
    let mut garbage = tls_server_request("not a CSR", "y.example.com");
    garbage.csr =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    d.block_on(client.issue(&garbage)).expect_err("not a CSR");
    d.block_on(client.get("0123456789abcdef0123456789abcdef"))
        .expect_err("no such serial");
    d.block_on(client.revoke(&serials[1], "superseded"))
        .expect("revoke");

    // The revocation's CRL is made in the background: wait for the gauge
    // to reach the number `certd status` shows, then compare the rest.
    let status_crl = || d.certifier_status("ca")["crl_number"].as_f64();
    let m = poll_until(
        API_DEADLINE,
        "the CRL after the revocation in the metrics",
        || {
            let m = scrape(&url);
            let audit = d.audit();
            let last_seq = audit.last().and_then(|e| e["seq"].as_f64());
            let settled = m.value("certd_crl_number", &[("certifier", "ca")]) == status_crl()
                && status_crl() >= Some(2.0)
                && m.value("certd_audit_entries", &[]) == last_seq;
            settled.then_some(m)
        },
        || d.log(),
    );
    println!("{}", m.text);

    // Issuances by certifier, profile and result.
    assert_eq!(
        issuances(&m, "ca", "tls-server", "issued"),
        3.0,
        "{}",
        m.text
    );
    assert_eq!(
        issuances(&m, "ca", "tls-server", "replayed"),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        issuances(&m, "ca", "tls-server", "refused"),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(issuances(&m, "none", "none", "refused"), 1.0, "{}", m.text);
    assert_eq!(
        issuances(&m, "ca", "tls-server", "failed"),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(m.kind("certd_issuances"), Some("counter"));

    // Refusals by code: exactly the audit log's refusals.
    let mut audited: BTreeMap<String, f64> = BTreeMap::new();
    for e in d.audit_of("refused") {
        *audited
            .entry(e["detail"]["code"].as_str().expect("code").to_string())
            .or_default() += 1.0;
    }
    let counted: BTreeMap<String, f64> = m
        .all("certd_refusals_total")
        .into_iter()
        .map(|s| (s.labels["code"].clone(), s.value))
        .collect();
    assert_eq!(counted, audited);
    assert_eq!(counted.values().sum::<f64>(), 3.0, "{counted:?}");

    // The revocation.
    assert_eq!(
        m.get(
            "certd_revocations_total",
            &[("certifier", "ca"), ("reason", "superseded")]
        ),
        1.0
    );
    assert_eq!(m.all("certd_revocations_total").len(), 1);

    // The token signed three certificates; the journal committed rounds.
    assert_eq!(m.kind("certd_hsm_sign_seconds"), Some("histogram"));
    assert_eq!(
        m.get("certd_hsm_sign_seconds_count", &[("certifier", "ca")]),
        3.0
    );
    assert!(m.get("certd_hsm_sign_seconds_sum", &[("certifier", "ca")]) > 0.0);
    assert_eq!(
        m.get(
            "certd_hsm_sign_seconds_bucket",
            &[("certifier", "ca"), ("le", "+Inf")]
        ),
        3.0
    );
    assert!(
        m.get("certd_journal_commit_seconds_count", &[]) >= 5.0,
        "{}",
        m.text
    );

    // Gauges as certd status and the audit log have them.
    assert_eq!(
        m.get(
            "certd_certifier_state",
            &[("certifier", "ca"), ("state", "active")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "certd_certifier_state",
            &[("certifier", "ca"), ("state", "locked")]
        ),
        0.0
    );
    assert_eq!(
        m.get(
            "certd_certifier_state",
            &[("certifier", "ca"), ("state", "unavailable")]
        ),
        0.0
    );
    let this_update = m.get(
        "certd_crl_this_update_timestamp_seconds",
        &[("certifier", "ca")],
    );
    let next_update = m.get(
        "certd_crl_next_update_timestamp_seconds",
        &[("certifier", "ca")],
    );
    assert_eq!(
        next_update - this_update,
        24.0 * 3600.0,
        "the default CRL validity"
    );
    assert_eq!(
        m.get("certd_crl_refresh_before_next_update_seconds", &[]),
        12.0 * 3600.0
    );
    let checkpoint = m.get("certd_audit_checkpoint_timestamp_seconds", &[]);
    assert!(
        checkpoint >= this_update - 5.0 && checkpoint > 0.0,
        "{}",
        m.text
    );
    assert_eq!(m.get("certd_audit_checkpoint_interval_seconds", &[]), 300.0);
    assert_eq!(
        m.get(
            "certd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // Every certd metric the example alert rules use is served.
    let rules =
        std::fs::read_to_string(certd_e2e::repo_root().join("packaging/examples/certd-alerts.yml"))
            .expect("the alert rules");
    let mut used = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("certd_") {
            used += 1;
            assert!(
                m.samples.iter().any(|s| s.name == word || s.family == word),
                "the alert rules use {word}, which certd does not serve"
            );
        }
    }
    assert!(used >= 6, "the rules use {used} certd metrics");

    // Only /metrics, and no TLS or client certificate on this listener.
    let other = certd_e2e::run(
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{address}/v1/health")),
    );
    assert_eq!(other.stdout, "404");
}

#[test]
fn metrics_are_served_on_loopback_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = ca_in(tmp.path(), "ca");
    ca.edit_config("127.0.0.1:0", "0.0.0.0:9464");
    let out = certd_e2e::run(
        std::process::Command::new(CERTD)
            .arg("check-config")
            .arg("--config")
            .arg(&ca.config.path),
    );
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr
            .contains("metrics.listen = 0.0.0.0:9464 is not a loopback address"),
        "{}",
        out.stderr
    );
}

/// Under journald (`JOURNAL_STREAM` set, as systemd sets it for a unit's
/// output) certd's log lines carry no time stamp of their own (journald
/// stamps each line); elsewhere they do. Either way no PIN reaches the log,
/// neither the one activation used nor a wrong one tried.
#[test]
fn logs_are_journald_friendly_and_hold_no_pin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for journald in [true, false] {
        let ca = ca_in(tmp.path(), if journald { "journald" } else { "plain" });
        let dir = ca.config.dir.clone();
        let pin = ca.token.pin.clone();
        let env: Vec<(&str, &std::ffi::OsStr)> = if journald {
            vec![("JOURNAL_STREAM", std::ffi::OsStr::new("8:12345"))]
        } else {
            Vec::new()
        };
        let d = ca.start_with_env(&env);
        d.deactivate("ca");
        let wrong = dir.join("wrong.pin");
        certd_e2e::write_secret(&wrong, "wrong-pin-4711");
        let refused = d.ctl(&["activate", "ca", "--pin-file", &wrong.display().to_string()]);
        assert_ne!(refused.code(), Some(0), "{refused:?}");
        d.activate("ca");
        let log = d.log();
        // (The harness heads the file's text with "--- PATH ---".)
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("--- "))
            .collect();
        assert!(lines.len() >= 3, "{log}");
        for line in &lines {
            // tracing's fmt lines: "2026-12-02T15:00:00.000000Z  INFO ..." or,
            // without time, " INFO ..." / "INFO ...".
            let stamped =
                line.len() > 20 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b'T';
            assert_eq!(stamped, !journald, "journald={journald}: {line}");
        }
        assert!(!log.contains(&pin), "the PIN is in the log:\n{log}");
        assert!(
            !log.contains("wrong-pin-4711"),
            "a tried PIN is in the log:\n{log}"
        );
        assert!(log.contains("INFO"), "{log}");
    }
}
