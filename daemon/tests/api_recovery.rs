//! A token that goes away and comes back: requests fail fast with
//! `certifier_unavailable` while it is gone, health says why, and the
//! daemon recovers by itself (no restart, no re-activation) when it is back;
//! the same `request_id` then succeeds, and nothing was half-recorded.
#![forbid(unsafe_code)]

use certd_e2e::api::{make_csr, make_key, ApiCa, ApiDaemon, KeyAlg, API_DEADLINE};
use certd_e2e::poll_until;
use serde_json::Value;
use std::path::Path;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

/// Waits (a bound that only catches hangs) until `/v1/health` reports the
/// demo certifier in `state`; returns that health answer.
fn wait_for_state(d: &ApiDaemon, want: &str) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    poll_until(
        API_DEADLINE * 2,
        &format!("the certifier to become {want}"),
        || {
            let health = d.curl("ra-demo", "GET", "/v1/health").send().json();
            let done = health["certifiers"][0]["state"] == want;
            *last.borrow_mut() = health.clone();
            done.then_some(health)
        },
        || format!("last health: {:#}\n{}", last.borrow(), d.log()),
    )
}

#[test]
fn a_token_that_comes_back_is_used_again_without_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ca");
    let d = ApiCa::from_demo(&dir, Path::new(CERTD)).start();
    let certifier = d.ca.certifiers[0].name.clone();
    d.activate(&certifier);

    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/CN=back.example.com", &[]);
    let request = serde_json::json!({
        "request_id": "recovery-1",
        "profile": "tls-server",
        "csr": csr.pem,
    });
    let issue = || {
        d.curl("ra-demo", "POST", "/v1/certificates")
            .json(&request)
            .send()
    };

    // The token goes away.
    let tokens = dir.join("hsm/tokens");
    let away = dir.join("hsm/tokens.away");
    std::fs::rename(&tokens, &away).expect("move the token away");
    let reply = issue();
    assert_eq!(
        (reply.status, reply.error_code().as_deref()),
        (503, Some("certifier_unavailable")),
        "{reply}"
    );
    let health = wait_for_state(&d, "unavailable");
    assert_eq!(health["status"], "degraded", "{health:#}");
    assert!(
        health["certifiers"][0]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "health names why: {health:#}"
    );
    let reply = issue();
    assert_eq!(
        (reply.status, reply.error_code().as_deref()),
        (503, Some("certifier_unavailable")),
        "{reply}"
    );
    assert_eq!(d.issued(&certifier), 0, "nothing was recorded as issued");

    // It comes back: the daemon logs in again by itself.
    std::fs::rename(&away, &tokens).expect("bring the token back");
    wait_for_state(&d, "active");
    let reply = issue();
    assert_eq!(reply.status, 201, "{reply}");
    let serial = reply.json()["serial"]
        .as_str()
        .expect("a serial")
        .to_string();
    // The same request again is a replay of that certificate.
    let again = issue();
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(again.json()["serial"], serial.as_str(), "{again}");

    let st = d.certifier_status(&certifier);
    assert_eq!(st["certificates_issued"], 1, "{st:#}");
    assert_eq!(st["last_serial"], serial.as_str(), "{st:#}");
    d.verify_audit();
}
