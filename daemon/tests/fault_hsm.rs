//! HSM faults under load, injected by a real PKCS#11 module that wraps
//! SoftHSM (`tests/pkcs11-fault/fault.c`, loaded by certd as `hsm.module`):
//!
//! - the token dies in the middle of concurrent issuance (`CKR_DEVICE_ERROR`
//!   from every call): requests fail fast with `certifier_unavailable`,
//!   health says why, and when the token answers again certd resumes by
//!   itself — same process, no re-activation;
//! - the token returns wrong signatures: the post-sign verification catches
//!   every one (`certifier_fault`), nothing wrongly signed is released or
//!   stored, and the serial is burned;
//! - afterwards every certificate any client received and every one in the
//!   ledger verifies under the certifier (`openssl verify`), the ledger
//!   holds exactly the certificates that were answered, and the audit chain
//!   verifies with one `issuance_failed` entry per refused signature;
//! - the token takes its time over a signature: a repeat of that request
//!   is told `in_progress` without signing anything, and once the token
//!   answers the original gets its certificate and the repeat replays it.
#![forbid(unsafe_code)]

use certd_api::{CertdClient, ErrorCode, IssueRequest, IssueResponse};
use certd_e2e::api::{make_csr, make_key, normalize_serial, ApiCaBuilder, ApiDaemon, KeyAlg};
use certd_e2e::fault::{self, FaultControl, FaultMode};
use certd_e2e::poll_until;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CERTD: &str = env!("CARGO_BIN_EXE_certd");
/// Concurrent issuing clients.
const CLIENTS: usize = 4;
/// A failed request must fail at least this fast while the token is dead.
const FAIL_FAST: Duration = Duration::from_secs(2);
/// certd retries an unavailable token every few seconds; allow for a
/// loaded 2-core machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// What one request came to.
#[derive(Debug, Clone)]
struct Outcome {
    phase: &'static str,
    took: Duration,
    result: Result<(String, String), String>,
}

fn ca(dir: &Path) -> (ApiDaemon, FaultControl, std::path::PathBuf) {
    let ca = ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml("[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n")
        .ra(
            "ra-main",
            "certifiers = [\"ca\"]\nprofiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]",
        )
        .build();
    // The keys were made with SoftHSM itself; certd now goes through the
    // fault module, which forwards to the same token.
    let module = fault::fault_module();
    ca.edit_config(
        &format!("module = {:?}", ca.token.module.display().to_string()),
        &format!("module = {:?}", module.display().to_string()),
    );
    ca.check_config();
    let control = FaultControl::new(dir);
    let count = dir.join("faults.log");
    let env = fault::env_for(&control, &count);
    let env: Vec<(&str, &OsStr)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), OsStr::new(v.as_str())))
        .collect();
    (ca.start_with_env(&env), control, count)
}

fn request(csr: &str, id: &str) -> IssueRequest {
    IssueRequest::new(id, "tls-server", csr)
}

fn health_of(d: &ApiDaemon, client: &CertdClient) -> (String, String) {
    match d.block_on(client.health()) {
        Ok(h) => {
            let c = h.certifiers.first().cloned();
            (
                c.as_ref().map(|c| c.state.clone()).unwrap_or_default(),
                c.and_then(|c| c.reason).unwrap_or_default(),
            )
        }
        Err(e) => ("health failed".into(), e.to_string()),
    }
}

/// Every certificate in the ledger, serial → PEM.
fn ledger(d: &ApiDaemon, client: &CertdClient) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(a) => format!("limit=1000&after={a}"),
            None => "limit=1000".to_string(),
        };
        let page = d.block_on(client.list(&query)).expect("list the ledger");
        for item in page.items {
            all.insert(normalize_serial(&item.serial), item.certificate);
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return all,
        }
    }
}

/// `openssl verify` of every PEM against the certifier; returns failures.
fn verify_all(dir: &Path, ca_pem: &Path, pems: &BTreeMap<String, String>) -> Vec<String> {
    let scratch = dir.join("verify");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let mut files = Vec::new();
    for (serial, pem) in pems {
        let f = scratch.join(format!("{serial}.pem"));
        std::fs::write(&f, pem).expect("write certificate");
        files.push(f);
    }
    let mut failures = Vec::new();
    for chunk in files.chunks(500) {
        let out = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(ca_pem)
            .args(chunk)
            .output()
            .expect("run openssl verify");
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = text.lines().filter(|l| l.ends_with(": OK")).count();
        if ok != chunk.len() || !out.status.success() {
            failures.push(format!(
                "openssl verify: {ok} of {} OK\n{text}\n{}",
                chunk.len(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    failures
}

#[test]
fn dead_token_and_wrong_signatures_under_load_lose_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut d, control, count) = ca(tmp.path());
    let pid = d.instance.pid();
    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/CN=www.example.com", &[]).pem;
    let watcher = d.client("ra-main");

    let phase: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("before"));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let began = Instant::now();
    let mut timeline = Vec::new();
    let mut mark =
        |what: String| timeline.push(format!("{:6.2} s {what}", began.elapsed().as_secs_f64()));

    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (phase, stop, sent, outcomes, csr) = (&phase, &stop, &sent, &outcomes, &csr);
            let client = d.client("ra-main");
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("c{c}-{n}");
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let now_phase = *phase.lock().expect("phase");
                    let t = Instant::now();
                    let result = rt
                        .block_on(client.issue(&request(csr, &id)))
                        .map(|r| (normalize_serial(&r.serial), r.certificate))
                        .map_err(|e| e.code().to_string());
                    let failed = result.is_err();
                    outcomes.lock().expect("outcomes").push(Outcome {
                        phase: now_phase,
                        took: t.elapsed(),
                        result,
                    });
                    if failed {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }

        std::thread::sleep(Duration::from_millis(1500));
        // The token dies.
        *phase.lock().expect("phase") = "dead";
        control.set(FaultMode::Error);
        mark("token dead (CKR_DEVICE_ERROR)".into());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = health_of(&d, &watcher);
        while seen.0 != "unavailable" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            seen = health_of(&d, &watcher);
        }
        mark(format!("health: {} ({})", seen.0, seen.1));
        assert_eq!(
            seen.0, "unavailable",
            "health while the token is dead: {seen:?}"
        );
        // Health says why: the token, and the device error it returned
        // (to a signature or to the probe, whichever met it first).
        assert!(
            seen.1.contains("token \"api\"")
                && seen.1.contains("problem has occurred with the token"),
            "health's reason while the token is dead: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(3000));
        // It comes back.
        *phase.lock().expect("phase") = "back";
        control.set(FaultMode::Pass);
        mark("token back".into());
        let back = Instant::now();
        let mut recovered = None;
        while back.elapsed() < RECOVERY_LIMIT {
            if health_of(&d, &watcher).0 == "active" {
                recovered = Some(back.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        mark(format!("health active again after {recovered:?}"));
        assert!(
            recovered.is_some(),
            "certd did not recover within {RECOVERY_LIMIT:?} of the token's return"
        );
        std::thread::sleep(Duration::from_millis(1500));
        // The token signs wrongly.
        *phase.lock().expect("phase") = "corrupt";
        control.set(FaultMode::Corrupt);
        mark("token returns wrong signatures".into());
        std::thread::sleep(Duration::from_millis(1500));
        *phase.lock().expect("phase") = "after";
        control.set(FaultMode::Pass);
        mark("token signs correctly again".into());
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
    });

    let outcomes = outcomes.lock().expect("outcomes").clone();
    let mut by_phase: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut received: BTreeMap<String, String> = BTreeMap::new();
    let mut slow_failures = Vec::new();
    for o in &outcomes {
        let code = match &o.result {
            Ok((serial, pem)) => {
                assert!(
                    received.insert(serial.clone(), pem.clone()).is_none(),
                    "serial {serial} was answered twice"
                );
                "ok".to_string()
            }
            Err(code) => {
                if o.took > FAIL_FAST {
                    slow_failures.push(format!("{code} after {:?} ({})", o.took, o.phase));
                }
                code.clone()
            }
        };
        *by_phase
            .entry(o.phase)
            .or_default()
            .entry(code)
            .or_default() += 1;
    }
    let injected = fault::injected_fault_log(&count);
    let corrupt_injected = injected.iter().filter(|l| l.starts_with("corrupt")).count();
    let errors_injected = injected.len() - corrupt_injected;
    println!("fault_hsm timeline:\n  {}", timeline.join("\n  "));
    println!(
        "fault_hsm: {} requests, outcomes by phase {by_phase:?}; {} faults injected \
         ({errors_injected} device errors, {corrupt_injected} wrong signatures)",
        outcomes.len(),
        injected.len()
    );

    let count_of = |phase: &str, code: &str| {
        by_phase
            .get(phase)
            .and_then(|m| m.get(code))
            .copied()
            .unwrap_or(0)
    };
    assert!(
        count_of("before", "ok") > 0,
        "nothing issued before the faults"
    );
    assert!(
        count_of("dead", ErrorCode::CertifierUnavailable.as_str()) > 0,
        "no request saw certifier_unavailable while the token was dead: {by_phase:?}"
    );
    assert!(
        slow_failures.is_empty(),
        "requests that did not fail fast: {slow_failures:?}"
    );
    // A request is labelled with the phase it started in; the mode may
    // change before it reaches the token, so count across phases.
    let faults: usize = by_phase
        .values()
        .filter_map(|codes| codes.get(ErrorCode::CertifierFault.as_str()))
        .sum();
    assert!(
        faults > 0 && corrupt_injected > 0,
        "no wrong signature was caught: {by_phase:?}, {corrupt_injected} injected"
    );
    // Nothing but issuance signs in this test (no revocation, no CRL
    // refresh falls in it), so every wrong signature the token returned
    // must have been caught and answered as such.
    assert_eq!(
        faults, corrupt_injected,
        "certifier_fault answers vs wrong signatures injected: {by_phase:?}"
    );
    assert!(
        count_of("after", "ok") > 0,
        "nothing issued after the faults"
    );
    // Only the codes a failing token should cause.
    for (phase, codes) in &by_phase {
        for code in codes.keys() {
            assert!(
                ["ok", "certifier_unavailable", "certifier_fault"].contains(&code.as_str()),
                "unexpected {code} in phase {phase}: {by_phase:?}"
            );
        }
    }

    // Same process throughout, still running: recovery needed no restart.
    assert_eq!(d.instance.pid(), pid);
    assert!(
        d.instance.is_running(),
        "certd exited during the faults\n{}",
        d.instance.log()
    );
    let in_ledger = ledger(&d, &watcher);
    let ca_pem = d.ca.certifier_pem("ca").to_path_buf();
    let mut failures = verify_all(tmp.path(), &ca_pem, &received);
    failures.extend(verify_all(tmp.path(), &ca_pem, &in_ledger));
    assert!(failures.is_empty(), "{failures:?}");
    // Exactly the answered certificates are in the ledger, byte for byte.
    let missing: Vec<&String> = received
        .keys()
        .filter(|s| in_ledger.get(*s) != received.get(*s))
        .collect();
    let unanswered: Vec<&String> = in_ledger
        .keys()
        .filter(|s| !received.contains_key(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "answered but not in the ledger: {missing:?}"
    );
    assert!(
        unanswered.is_empty(),
        "in the ledger but never answered: {unanswered:?}"
    );

    // The audit log verifies and records every refused signature.
    d.instance.ctl(&["verify-audit"]).assert_success();
    let audit = std::fs::read_to_string(d.ca.config.state_dir.join("audit.log")).expect("audit");
    let mut failed_codes: HashMap<String, usize> = HashMap::new();
    for line in audit.lines() {
        let e: serde_json::Value = serde_json::from_str(line).expect("audit JSON");
        if e["kind"] == "issuance_failed" {
            *failed_codes
                .entry(e["detail"]["code"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(
        failed_codes.get("certifier_fault").copied().unwrap_or(0),
        faults,
        "one issuance_failed audit entry per caught wrong signature: {failed_codes:?}"
    );
    println!(
        "fault_hsm: {} certificates received, all in the ledger and verified; {faults} wrong \
         signatures caught and never released; recovered without restart",
        received.len()
    );
}

/// Bounds the waits for events of the stall test, so a lost event fails
/// it instead of hanging it.
const EVENT_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_repeat_while_the_token_stalls_is_in_progress_then_replays() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, control, count) = ca(tmp.path());
    // The start-up CRL is the only other signature: it must not be the one
    // that stalls.
    poll_until(
        EVENT_LIMIT,
        "the start-up CRL",
        || (!d.audit_of("crl_issued").is_empty()).then_some(()),
        || d.log(),
    );
    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/CN=www.example.com", &[]).pem;
    let body = serde_json::to_value(request(&csr, "stalled-1")).expect("JSON");
    let post = || d.curl("ra-main", "POST", "/v1/certificates").json(&body);
    let stalled = || fault::injected_fault_log(&count) == ["stall C_Sign"];

    control.set(FaultMode::Stall);
    let (first, repeat) = std::thread::scope(|s| {
        let call = post();
        let first = s.spawn(move || call.send());
        // The intent is recorded before the token is asked to sign.
        poll_until(
            EVENT_LIMIT,
            "the first request's signature to stall",
            || stalled().then_some(()),
            || d.log(),
        );
        let repeat = post().send();
        assert!(
            !first.is_finished(),
            "the first request was answered while its signature stalled"
        );
        control.set(FaultMode::Pass);
        (first.join().expect("the first request"), repeat)
    });
    assert_eq!(repeat.status, 409, "{repeat}");
    assert_eq!(
        repeat.error_code().as_deref(),
        Some("in_progress"),
        "{repeat}"
    );
    assert_eq!(first.status, 201, "{first}");
    let answer = |reply: &certd_e2e::api::CurlReply| -> IssueResponse {
        serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}: {reply}"))
    };
    let issued = answer(&first);
    assert!(!issued.replayed);

    let replay = post().send();
    assert_eq!(replay.status, 200, "{replay}");
    let replayed = answer(&replay);
    assert!(replayed.replayed);
    assert_eq!(
        (&replayed.serial, &replayed.certificate),
        (&issued.serial, &issued.certificate)
    );

    // One signature reached the token, the stalled one: neither repeat
    // signed anything.
    assert!(stalled(), "{:?}", fault::injected_fault_log(&count));
    assert_eq!(d.issued("ca"), 1);
    let refused = d.audit_of("refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["detail"]["code"], "in_progress");
    assert_eq!(refused[0]["actor"], "ra-main");
    d.verify_audit();
}
