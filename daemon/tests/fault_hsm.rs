//! HSM faults under load, injected by a real PKCS#11 module that wraps
//! SoftHSM (`tests/pkcs11-fault/fault.c`, loaded by certd as `hsm.module`):
//!
//! - the token dies in the middle of concurrent issuance (`CKR_DEVICE_ERROR`
//!   from every call): once health reports the certifier `unavailable`,
//!   requests are refused with `certifier_unavailable` by certd's fast path
//!   without reaching the token (the module's count file gains no
//!   `C_SignInit`/`C_Sign` line from them), health says why, and when the
//!   token answers again certd resumes by itself — same process, no
//!   re-activation;
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
//!
//! The phases follow events, not the clock: each lasts until the answers
//! (or health states, or count-file lines) that make it meaningful have
//! arrived. No wait and no request is bounded but by [`HANG`], which only
//! catches hangs.
#![forbid(unsafe_code)]

use certd_api::{CertdClient, ErrorCode, IssueRequest, IssueResponse};
use certd_e2e::api::{make_csr, make_key, normalize_serial, ApiCaBuilder, ApiDaemon, KeyAlg};
use certd_e2e::fault::{self, FaultControl, FaultMode};
use certd_e2e::poll_until;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CERTD: &str = env!("CARGO_BIN_EXE_certd");
/// Concurrent issuing clients.
const CLIENTS: usize = 4;
/// An upper bound on every wait (health, answers, recovery) and on each
/// request (the clients' timeout): it only catches hangs.
const HANG: Duration = Duration::from_secs(120);
/// Certificates issued before the token dies.
const BEFORE_OKS: usize = 8;
/// `certifier_unavailable` answers to requests started after health said
/// `unavailable`, all of which must be refused without the token.
const DEAD_REFUSALS: usize = 40;
/// Wrong signatures the token returns (and certd catches) before it signs
/// correctly again.
const CORRUPT_CAUGHT: usize = 4;

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

/// The clients' shared state: the current phase, the requests in flight
/// per phase they started in, and every outcome.
struct Load {
    phases: Mutex<Phases>,
    outcomes: Mutex<Vec<Outcome>>,
    stop: AtomicBool,
}

struct Phases {
    current: &'static str,
    in_flight: BTreeMap<&'static str, usize>,
}

impl Load {
    fn new(first: &'static str) -> Load {
        Load {
            phases: Mutex::new(Phases {
                current: first,
                in_flight: BTreeMap::new(),
            }),
            outcomes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }
    }

    /// A request starts: its phase, counted in flight.
    fn start(&self) -> &'static str {
        let mut p = self.phases.lock().expect("phases");
        let phase = p.current;
        *p.in_flight.entry(phase).or_default() += 1;
        phase
    }

    /// A request ended: recorded, then no longer in flight.
    fn finish(&self, outcome: Outcome) {
        let phase = outcome.phase;
        self.outcomes.lock().expect("outcomes").push(outcome);
        let mut p = self.phases.lock().expect("phases");
        *p.in_flight.entry(phase).or_default() -= 1;
    }

    /// Requests from now on start in `phase`.
    fn enter(&self, phase: &'static str) {
        self.phases.lock().expect("phases").current = phase;
    }

    /// Requests in flight that started in another phase than `phase`.
    fn in_flight_outside(&self, phase: &str) -> usize {
        let p = self.phases.lock().expect("phases");
        p.in_flight
            .iter()
            .filter(|(k, _)| **k != phase)
            .map(|(_, n)| n)
            .sum()
    }

    /// Answers with `code` (`"ok"` for a certificate) to requests started
    /// in `phase`, or in any phase.
    fn count(&self, phase: Option<&str>, code: &str) -> usize {
        self.outcomes
            .lock()
            .expect("outcomes")
            .iter()
            .filter(|o| phase.is_none_or(|p| o.phase == p) && o.code() == code)
            .count()
    }

    /// Outcomes by phase and code.
    fn tally(&self) -> BTreeMap<&'static str, BTreeMap<String, usize>> {
        let mut by_phase: BTreeMap<&'static str, BTreeMap<String, usize>> = BTreeMap::new();
        for o in self.outcomes.lock().expect("outcomes").iter() {
            *by_phase
                .entry(o.phase)
                .or_default()
                .entry(o.code().to_string())
                .or_default() += 1;
        }
        by_phase
    }
}

impl Outcome {
    fn code(&self) -> &str {
        match &self.result {
            Ok(_) => "ok",
            Err(code) => code,
        }
    }
}

/// Stops the clients when dropped, also when a wait panics (the scope
/// would otherwise wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The count file's lines of device errors returned to `C_SignInit` or
/// `C_Sign`: calls that only a signature makes (certd's probe opens
/// sessions, logs in, finds keys and asks for session info, and never
/// signs).
fn sign_errors(count: &Path) -> usize {
    fault::injected_fault_log(count)
        .iter()
        .filter(|l| *l == "error C_SignInit" || *l == "error C_Sign")
        .count()
}

/// The count file's lines of wrong signatures returned.
fn corrupt_signs(count: &Path) -> usize {
    fault::injected_fault_log(count)
        .iter()
        .filter(|l| *l == "corrupt C_Sign")
        .count()
}

/// A client of `ra-main` whose timeout is [`HANG`].
fn patient_client(d: &ApiDaemon) -> CertdClient {
    let cred = d.ca.ra("ra-main");
    CertdClient::new(&certd_api::ClientConfig {
        url: d.ca.url(),
        client_cert: cred.cert.clone(),
        client_key: cred.key.clone(),
        server_ca: d.ca.tls.ca_cert.clone(),
        timeout: HANG,
    })
    .expect("client")
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
    let watcher = patient_client(&d);

    let load = Load::new("before");
    let began = Instant::now();
    let mut timeline = Vec::new();
    let mut mark =
        |what: String| timeline.push(format!("{:6.2} s {what}", began.elapsed().as_secs_f64()));
    // C_SignInit/C_Sign device errors in the count file once every request
    // started before health said `unavailable` has been answered.
    let mut sign_errors_when_unavailable = 0;
    let mut recovered_after = Duration::ZERO;

    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (load, csr) = (&load, &csr);
            let client = patient_client(&d);
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let mut n = 0;
                while !load.stop.load(Ordering::Relaxed) {
                    let id = format!("c{c}-{n}");
                    n += 1;
                    let phase = load.start();
                    let t = Instant::now();
                    let result = rt
                        .block_on(client.issue(&request(csr, &id)))
                        .map(|r| (normalize_serial(&r.serial), r.certificate))
                        .map_err(|e| e.code().to_string());
                    let failed = result.is_err();
                    load.finish(Outcome {
                        phase,
                        took: t.elapsed(),
                        result,
                    });
                    if failed {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
        let _stop = StopOnDrop(&load.stop);
        let context = || format!("outcomes so far: {:?}\n{}", load.tally(), d.log());
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            poll_until(HANG, what, || done().then_some(()), context)
        };

        wait_for(&format!("{BEFORE_OKS} certificates issued"), &|| {
            load.count(Some("before"), "ok") >= BEFORE_OKS
        });
        // The token dies.
        load.enter("dying");
        control.set(FaultMode::Error);
        mark("token dead (CKR_DEVICE_ERROR)".into());
        let seen = poll_until(
            HANG,
            "health to report the certifier unavailable",
            || Some(health_of(&d, &watcher)).filter(|h| h.0 == "unavailable"),
            context,
        );
        mark(format!("health: {} ({})", seen.0, seen.1));
        // Health says why: the token, and the device error it returned
        // (to a signature or to the probe, whichever met it first).
        assert!(
            seen.1.contains("token \"api\"")
                && seen.1.contains("problem has occurred with the token"),
            "health's reason while the token is dead: {seen:?}"
        );
        // From here on requests start with the certifier unavailable: once
        // the ones started before are answered, no request may reach the
        // token's signing functions while it stays unavailable (and it
        // stays so while the token is dead: coming back takes a login).
        load.enter("dead");
        wait_for(
            "the requests started before health said unavailable",
            &|| load.in_flight_outside("dead") == 0,
        );
        sign_errors_when_unavailable = sign_errors(&count);
        let faults_when_unavailable = fault::injected_faults(&count);
        mark(format!(
            "earlier requests answered; {sign_errors_when_unavailable} C_SignInit/C_Sign device \
             errors so far"
        ));
        // The dead phase lasts until enough requests were refused, and
        // until certd's recovery probe has met the dead token (a fault
        // line that no request caused), so that coming back below is the
        // probe's doing after a failed attempt.
        wait_for(
            &format!("{DEAD_REFUSALS} certifier_unavailable answers with the token dead"),
            &|| load.count(Some("dead"), ErrorCode::CertifierUnavailable.as_str()) >= DEAD_REFUSALS,
        );
        wait_for("the recovery probe to meet the dead token", &|| {
            fault::injected_faults(&count) > faults_when_unavailable
        });
        let probe_met: Vec<String> =
            fault::injected_fault_log(&count)[faults_when_unavailable..].to_vec();
        mark(format!(
            "{} certifier_unavailable answers, {} C_SignInit/C_Sign device errors; the probe met \
             the dead token: {probe_met:?}",
            load.count(Some("dead"), ErrorCode::CertifierUnavailable.as_str()),
            sign_errors(&count)
        ));
        // It comes back.
        load.enter("back");
        control.set(FaultMode::Pass);
        mark("token back".into());
        let back = Instant::now();
        poll_until(
            HANG,
            "health to report the certifier active again",
            || (health_of(&d, &watcher).0 == "active").then_some(()),
            context,
        );
        recovered_after = back.elapsed();
        mark(format!("health active again after {recovered_after:?}"));
        wait_for("a certificate issued after the token came back", &|| {
            load.count(Some("back"), "ok") >= 1
        });
        mark("issuing again".into());
        // The token signs wrongly.
        load.enter("corrupt");
        control.set(FaultMode::Corrupt);
        mark("token returns wrong signatures".into());
        wait_for(
            &format!("{CORRUPT_CAUGHT} wrong signatures returned and answered certifier_fault"),
            &|| {
                corrupt_signs(&count) >= CORRUPT_CAUGHT
                    && load.count(None, ErrorCode::CertifierFault.as_str()) >= CORRUPT_CAUGHT
            },
        );
        load.enter("after");
        control.set(FaultMode::Pass);
        mark("token signs correctly again".into());
        wait_for("a certificate issued after the wrong signatures", &|| {
            load.count(Some("after"), "ok") >= 1
        });
        mark("issuing again".into());
    });

    let outcomes = load.outcomes.lock().expect("outcomes").clone();
    let by_phase = load.tally();
    let mut received: BTreeMap<String, String> = BTreeMap::new();
    let mut hung = Vec::new();
    for o in &outcomes {
        if let Ok((serial, pem)) = &o.result {
            assert!(
                received.insert(serial.clone(), pem.clone()).is_none(),
                "serial {serial} was answered twice"
            );
        }
        if o.took >= HANG {
            hung.push(format!("{} after {:?} ({})", o.code(), o.took, o.phase));
        }
    }
    let slowest_failure: BTreeMap<&str, Duration> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .fold(BTreeMap::new(), |mut m, o| {
            let t = m.entry(o.phase).or_insert(o.took);
            *t = (*t).max(o.took);
            m
        });
    let injected = fault::injected_fault_log(&count);
    let corrupt_injected = injected.iter().filter(|l| l.starts_with("corrupt")).count();
    let errors_injected = injected.len() - corrupt_injected;
    let sign_errors_at_end = sign_errors(&count);
    let mut by_call: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &injected {
        *by_call.entry(l.as_str()).or_default() += 1;
    }
    println!("fault_hsm timeline:\n  {}", timeline.join("\n  "));
    println!(
        "fault_hsm: {} requests, outcomes by phase {by_phase:?}; {} faults injected \
         ({errors_injected} device errors, {corrupt_injected} wrong signatures): {by_call:?}; \
         C_SignInit/C_Sign device errors when health said unavailable and earlier requests were \
         answered: {sign_errors_when_unavailable}, at the end: {sign_errors_at_end}; recovery \
         took {recovered_after:?}; slowest failure by phase {slowest_failure:?}",
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
    // The fast path: with the certifier unavailable, requests were refused
    // without touching the token. Device errors are injected only while the
    // token is dead, and certd's probe never signs, so a single new
    // C_SignInit/C_Sign line would be a request that reached the token.
    assert_eq!(
        sign_errors_at_end,
        sign_errors_when_unavailable,
        "requests started after health said unavailable reached the token's C_SignInit/C_Sign \
         ({} refused meanwhile): {by_call:?}",
        count_of("dead", ErrorCode::CertifierUnavailable.as_str())
    );
    assert!(
        hung.is_empty(),
        "requests without an answer within {HANG:?}: {hung:?}"
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

/// A CA through the fault module once its start-up CRL is made (the only
/// other signature, so never the one a test stalls), and the body of an
/// issuance request with `request_id`.
fn quiet_ca_and_request(
    dir: &Path,
    request_id: &str,
) -> (
    ApiDaemon,
    FaultControl,
    std::path::PathBuf,
    serde_json::Value,
) {
    let (d, control, count) = ca(dir);
    poll_until(
        EVENT_LIMIT,
        "the start-up CRL",
        || (!d.audit_of("crl_issued").is_empty()).then_some(()),
        || d.log(),
    );
    let key = make_key(dir, "sub", KeyAlg::P256);
    let csr = make_csr(dir, "sub", &key, "/CN=www.example.com", &[]).pem;
    let body = serde_json::to_value(request(&csr, request_id)).expect("JSON");
    (d, control, count, body)
}

#[test]
fn a_repeat_while_the_token_stalls_is_in_progress_then_replays() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, control, count, body) = quiet_ca_and_request(tmp.path(), "stalled-1");
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

#[test]
fn a_client_that_goes_away_while_its_certificate_is_signed_can_collect_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, control, count, body) = quiet_ca_and_request(tmp.path(), "gone-1");
    let post = || d.curl("ra-main", "POST", "/v1/certificates").json(&body);

    // The client gives up (curl's --max-time) while the token holds the
    // signature: its connection closes with the certificate half-made.
    control.set(FaultMode::Stall);
    let gone = post().arg("--max-time").arg("1").send();
    assert_eq!(gone.status, 0, "no answer reached the client: {gone}");
    assert_eq!(fault::injected_fault_log(&count), ["stall C_Sign"]);
    control.set(FaultMode::Pass);

    // certd finishes the issuance without its client...
    poll_until(
        EVENT_LIMIT,
        "the abandoned request's certificate in the ledger",
        || (d.issued("ca") == 1).then_some(()),
        || d.log(),
    );
    // ...and the repeat collects it rather than meeting `in_progress`.
    let replay = post().send();
    assert_eq!(replay.status, 200, "{replay}");
    let replayed: IssueResponse =
        serde_json::from_slice(&replay.body).unwrap_or_else(|e| panic!("{e}: {replay}"));
    assert!(replayed.replayed);
    assert_eq!(d.issued("ca"), 1);
    assert!(
        d.audit_of("refused").is_empty(),
        "{:#?}",
        d.audit_of("refused")
    );
    d.verify_audit();
}
