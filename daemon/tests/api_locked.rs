//! The API while certifiers are locked, on a CA set up by the real
//! `./demo --setup-only` plus a second certifier: `503 certifier_locked`
//! until `certd activate`, issuance after it, `503` again after
//! `certd deactivate`; everything else keeps working, and the health
//! endpoint reports each certifier's state.
#![forbid(unsafe_code)]

use certd_api::Health;
use certd_e2e::api::{make_csr, make_key, ApiCa, ApiDaemon, CurlReply, KeyAlg};
use certd_e2e::run;
use serde_json::json;
use std::path::Path;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

fn health(d: &ApiDaemon) -> Health {
    d.block_on(d.client("ra-demo").health())
        .unwrap_or_else(|e| panic!("health: {e}\n{}", d.log()))
}

fn states(h: &Health) -> Vec<(String, String)> {
    h.certifiers
        .iter()
        .map(|c| (c.name.clone(), c.state.clone()))
        .collect()
}

fn pair(name: &str, state: &str) -> (String, String) {
    (name.to_string(), state.to_string())
}

fn assert_locked_refusal(reply: &CurlReply) {
    assert_eq!(reply.status, 503, "{reply}");
    assert_eq!(
        reply.error_code().as_deref(),
        Some("certifier_locked"),
        "{reply}"
    );
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"), "{reply}");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("certd activate"), "{reply}");
}

#[test]
fn the_api_answers_certifier_locked_until_activation_and_after_deactivation() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let ca = ApiCa::from_demo(dir, Path::new(CERTD));
    // A second certifier on the demo token, locked as well.
    let second = dir.join("second.pem");
    run(ca
        .token
        .command(CERTD)
        .args(["init-ca", "--token-label", &ca.token.label])
        .args(["--key-label", "second", "--key-type", "p256"])
        .arg("--pin-file")
        .arg(&ca.token.pin_file)
        .args(["--cn", "certd e2e second", "--cert-out"])
        .arg(&second))
    .assert_success();
    ca.append_config(&format!(
        "\n[[certifier]]\nname = \"second\"\ntoken_label = {:?}\nkey_label = \"second\"\ncertificate = {:?}\n",
        ca.token.label,
        second.display().to_string()
    ));
    ca.check_config();
    let d = ca.start();
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let csr = make_csr(
        dir,
        "www",
        &key,
        "/CN=www.example.com",
        &["DNS:www.example.com"],
    );
    let request = |id: &str| {
        d.curl("ra-demo", "POST", "/v1/certificates")
            .json(&json!({"request_id": id, "profile": "tls-server", "csr": csr.pem}))
            .send()
    };

    // Locked: issuing and a fresh CRL are refused; nothing else degrades.
    let h = health(&d);
    assert_eq!(h.status, "degraded");
    assert_eq!(
        states(&h),
        [pair("demo-root", "locked"), pair("second", "locked")]
    );
    assert_locked_refusal(&request("locked-1"));
    assert_locked_refusal(
        &d.curl("ra-demo", "GET", "/v1/certifiers/demo-root/crl")
            .send(),
    );
    let profiles = d.curl("ra-demo", "GET", "/v1/profiles").send();
    assert_eq!(profiles.status, 200, "{profiles}");
    let list = d.curl("ra-demo", "GET", "/v1/certificates").send();
    assert_eq!(list.status, 200, "{list}");
    assert_eq!(d.issued("demo-root"), 0);

    // Activated: issues, and health shows each certifier's own state.
    d.activate("demo-root");
    let h = health(&d);
    assert_eq!(
        states(&h),
        [pair("demo-root", "active"), pair("second", "locked")]
    );
    assert_eq!(h.status, "degraded", "one certifier is still locked");
    let issued = request("active-1");
    assert_eq!(issued.status, 201, "{issued}\n{}", d.log());
    let crl = d
        .curl("ra-demo", "GET", "/v1/certifiers/demo-root/crl")
        .send();
    assert_eq!(crl.status, 200, "{crl}");
    assert_eq!(crl.content_type, "application/pkix-crl");
    d.activate("second");
    let h = health(&d);
    assert_eq!(h.status, "ok");
    assert_eq!(
        states(&h),
        [pair("demo-root", "active"), pair("second", "active")]
    );

    // Deactivated: refused again, while the other certifier stays active.
    d.deactivate("demo-root");
    assert_locked_refusal(&request("locked-2"));
    let h = health(&d);
    assert_eq!(
        states(&h),
        [pair("demo-root", "locked"), pair("second", "active")]
    );
    assert_eq!(d.instance.state_of("demo-root"), "locked");
    assert_eq!(d.instance.state_of("second"), "active");

    // And back.
    d.activate("demo-root");
    let again = request("active-2");
    assert_eq!(again.status, 201, "{again}");
    assert_eq!(d.issued("demo-root"), 2);
    let locked: Vec<_> = d
        .audit_of("refused")
        .into_iter()
        .filter(|e| e["detail"]["code"] == "certifier_locked")
        .collect();
    assert_eq!(locked.len(), 3, "{locked:#?}");
    d.verify_audit();
}
