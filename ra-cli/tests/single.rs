//! End-to-end tests of ra-cli's single commands against a real certd
//! (real SoftHSM token, real mutual TLS): health, profiles, issue in every
//! format, show, list, revoke, crl, and the errors an operator meets
//! (locked certifier, refusals, certd down, credential not on the
//! allowlist, bad configuration).
#![forbid(unsafe_code)]

mod common;

use certd_e2e::api::{make_csr, make_key, openssl, KeyAlg, API_DEADLINE};
use certd_e2e::{poll_until, run, tool};
use common::{Ca, CERTIFIER};
use std::collections::HashSet;

#[test]
fn single_commands_against_a_real_certd() {
    let ca = Ca::start(false);
    let work = ca.scratch("work");
    let w = |name: &str| work.join(name).display().to_string();

    // Locked: health says so (exit 1), issuance shows certd's code.
    let h = ca.ra(&["health"]);
    h.assert_code(1);
    assert!(
        h.stdout.contains("demo-root") && h.stdout.contains("locked"),
        "{h}"
    );
    let key = make_key(&work, "web", KeyAlg::P256);
    make_csr(&work, "web", &key, "/CN=www.example.com", &[]);
    let csr_s = w("web.csr");
    ca.ra(&[
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--out",
        &w("locked.pem"),
    ])
    .assert_code(1)
    .assert_stderr_has("certifier_locked");
    assert!(!work.join("locked.pem").exists());

    ca.certd.activate(CERTIFIER);
    let h = ca.ra(&["--json", "health"]);
    h.assert_success();
    assert_eq!(h.json()["status"], "ok");
    let h = ca.ra(&["health"]);
    assert!(h.stdout.contains("client certificate SHA-256"), "{h}");

    let p = ca.ra(&["profiles", "--json"]);
    p.assert_success();
    let names: HashSet<String> = p
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        names.contains("smime-mailbox") && names.contains("tls-server"),
        "{p}"
    );
    ca.ra(&["profiles"]).assert_success();

    // A CSR in, every public format out.
    let mut serials = Vec::new();
    for (fmt, file) in [("pem", "web.pem"), ("der", "web.der"), ("p7b", "web.p7b")] {
        let r = ca.ra(&[
            "--json",
            "issue",
            "--profile",
            "tls-server",
            "--csr",
            &csr_s,
            "--san",
            "dns:www.example.com",
            "--format",
            fmt,
            "--out",
            &w(file),
        ]);
        r.assert_success();
        serials.push(r.json()["serial"].as_str().expect("serial").to_string());
    }
    openssl(&[&"verify", &"-CAfile", &ca.env.get("CA_CERT"), &w("web.pem")]);
    let der = openssl(&[
        &"x509",
        &"-inform",
        &"DER",
        &"-in",
        &w("web.der"),
        &"-noout",
        &"-ext",
        &"subjectAltName",
    ]);
    assert!(der.stdout.contains("www.example.com"), "{der}");
    let p7 = openssl(&[
        &"pkcs7",
        &"-inform",
        &"DER",
        &"-in",
        &w("web.p7b"),
        &"-print_certs",
        &"-noout",
    ]);
    assert_eq!(
        p7.stdout.matches("subject=").count(),
        2,
        "leaf and issuer\n{p7}"
    );

    // A key generated here, delivered as PKCS#12 with the given password.
    std::fs::write(work.join("pw"), "correct horse\n").expect("pw");
    let r = ca.ra(&[
        "--json",
        "issue",
        "--profile",
        "smime-mailbox",
        "--cn",
        "alice@example.com",
        "--san",
        "email:alice@example.com",
        "--p12-password-file",
        &w("pw"),
        "--days",
        "30",
        "--out",
        &w("alice.p12"),
    ]);
    r.assert_success();
    let issued = r.json();
    assert_eq!(issued["not_after_clamped"], false);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(work.join("alice.p12"))
            .expect("p12")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let info = openssl(&[
        &"pkcs12",
        &"-info",
        &"-noout",
        &"-in",
        &w("alice.p12"),
        &"-passin",
        &format!("file:{}", w("pw")),
    ]);
    assert!(
        info.stderr.contains("AES-256-CBC") && info.stderr.contains("hmacWithSHA256"),
        "{info}"
    );
    let dump = openssl(&[
        &"pkcs12",
        &"-in",
        &w("alice.p12"),
        &"-passin",
        &format!("file:{}", w("pw")),
        &"-nodes",
    ]);
    assert!(dump.stdout.contains("BEGIN PRIVATE KEY"), "{dump}");
    assert_eq!(
        dump.stdout.matches("BEGIN CERTIFICATE").count(),
        2,
        "{dump}"
    );
    assert!(
        dump.stdout.contains("friendlyName: alice@example.com"),
        "{dump}"
    );
    let alice = issued["serial"].as_str().expect("serial").to_string();

    // A generated password goes next to the file; a long validity is clamped.
    let r = ca.ra(&[
        "--json",
        "issue",
        "--profile",
        "tls-client",
        "--cn",
        "Bob Builder",
        "--san",
        "email:bob@example.com",
        "--days",
        "5000",
        "--key-type",
        "p384",
        "--out",
        &w("bob.p12"),
    ]);
    r.assert_success();
    assert_eq!(r.json()["not_after_clamped"], true, "{r}");
    openssl(&[
        &"pkcs12",
        &"-in",
        &w("bob.p12"),
        &"-passin",
        &format!("file:{}", w("bob.p12.password")),
        &"-nodes",
        &"-nocerts",
    ]);

    // A request id makes a repeat return the same certificate.
    let a = ca.ra(&[
        "--json",
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--request-id",
        "same-1",
        "--out",
        &w("r1.pem"),
    ]);
    let b = ca.ra(&[
        "--json",
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--request-id",
        "same-1",
        "--out",
        &w("r2.pem"),
    ]);
    assert_eq!(a.json()["serial"], b.json()["serial"], "{a}\n{b}");
    assert_eq!(b.json()["replayed"], true);
    // Revoked since: the repeat is refused, nothing is written.
    let same = a.json()["serial"].as_str().expect("serial").to_string();
    ca.ra(&["revoke", &same, "--reason", "superseded"])
        .assert_success();
    let c = ca.ra(&[
        "--json",
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--request-id",
        "same-1",
        "--out",
        &w("r3.pem"),
    ]);
    c.assert_code(1);
    assert_eq!(c.json()["error"]["code"], "revoked", "{c}");
    assert!(!work.join("r3.pem").exists(), "nothing delivered");

    // show, list.
    let s = ca.ra(&["--json", "show", &alice]);
    s.assert_success();
    assert_eq!(s.json()["status"], "valid");
    let s = ca.ra(&["show", &alice]);
    assert!(s.stdout.contains("alice@example.com"), "{s}");
    let pem = ca.ra(&["show", "--pem", &alice]);
    assert!(
        pem.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{pem}"
    );
    let l = ca.ra(&["--json", "list"]);
    l.assert_success();
    let all = l.json();
    let listed: HashSet<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["serial"].as_str())
        .collect();
    for s in &serials {
        assert!(listed.contains(s.as_str()), "{s} not listed");
    }
    let l = ca.ra(&["--json", "list", "--email", "alice@example.com"]);
    assert_eq!(l.json().as_array().map(Vec::len), Some(1), "{l}");
    let l = ca.ra(&["--json", "list", "--limit", "2"]);
    assert_eq!(l.json().as_array().map(Vec::len), Some(2), "{l}");
    assert!(ca.ra(&["list"]).stdout.contains("certificate(s)"));

    // revoke, then the CRL lists it.
    ca.ra(&["revoke", &alice, "--reason", "keyCompromise"])
        .assert_success();
    assert_eq!(
        ca.ra(&["--json", "show", &alice]).json()["status"],
        "revoked"
    );
    ca.ra(&["revoke", &alice, "--reason", "keyCompromise"])
        .assert_code(1)
        .assert_stderr_has("already_revoked");
    ca.ra(&["revoke", &alice, "--reason", "certificateHold"])
        .assert_code(2)
        .assert_stderr_has("possible values: unspecified, keyCompromise");
    // certd makes a new CRL `crl.coalesce_seconds` after a revocation:
    // fetch until it lists alice (the bound only catches a hang).
    let last = std::cell::RefCell::new(String::new());
    poll_until(
        API_DEADLINE,
        "the CRL to list the revoked certificate",
        || {
            let c = ca.ra(&["--json", "crl", "--out", &w("root.crl")]);
            c.assert_success();
            // The CRL made before the revocation lists none: fetch again.
            if c.json()["revoked"].as_u64() < Some(1) {
                *last.borrow_mut() = c.stdout;
                return None;
            }
            let text = openssl(&[
                &"crl",
                &"-inform",
                &"DER",
                &"-in",
                &w("root.crl"),
                &"-noout",
                &"-text",
            ]);
            let listed = text
                .stdout
                .to_ascii_lowercase()
                .contains(&alice.to_ascii_lowercase());
            *last.borrow_mut() = text.stdout;
            listed.then_some(())
        },
        || format!("{alice} not in the last CRL fetched:\n{}", last.borrow()),
    );
    ca.ra(&[
        "crl",
        "--pem",
        "--certifier",
        "demo-root",
        "--out",
        &w("root.crl.pem"),
    ])
    .assert_success();
    openssl(&[&"crl", &"-in", &w("root.crl.pem"), &"-noout"]);

    // What ra-cli can check is refused before certd is asked: no
    // certificate without its file.
    let count = || {
        ca.ra(&["--json", "list"])
            .json()
            .as_array()
            .map_or(0, Vec::len)
    };
    let before = count();
    std::fs::write(work.join("afile"), "x").expect("file");
    ca.ra(&[
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--out",
        &w("afile/x.pem"),
    ])
    .assert_code(2)
    .assert_stderr_has("does not exist");
    ca.ra(&[
        "issue",
        "--profile",
        "smime-mailbox",
        "--san",
        "email:a@example.com",
        "--p12-iterations",
        "5",
        "--out",
        &w("few.p12"),
    ])
    .assert_code(2)
    .assert_stderr_has("--p12-iterations");
    assert_eq!(count(), before, "nothing issued");

    // Refusals show certd's code and message.
    ca.ra(&["show", "00112233445566778899"])
        .assert_code(1)
        .assert_stderr_has("not_found");
    ca.ra(&[
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--san",
        "dns:www.other.org",
        "--out",
        &w("other.pem"),
    ])
    .assert_code(1)
    .assert_stderr_has("name_not_permitted");
    assert!(
        !work.join("other.pem").exists(),
        "no file for a refused request"
    );
    ca.ra(&[
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--format",
        "p12",
        "--out",
        &w("x.p12"),
    ])
    .assert_code(2);
    ca.ra(&[
        "issue",
        "--profile",
        "smime-mailbox",
        "--san",
        "email:a@example.com",
        "--format",
        "pem",
        "--out",
        &w("x.pem"),
    ])
    .assert_code(2)
    .assert_stderr_has("PKCS#12");
    ca.ra(&["issue", "--san", "uri:x", "--out", &w("x.pem")])
        .assert_code(2);
    ca.ra(&["crl", "--certifier", "nope", "--out", &w("nope.crl")])
        .assert_code(1)
        .assert_stderr_has("unknown_certifier");

    // A credential that chains to the trust anchor but is on no allowlist.
    let stranger = ca.config_presenting("stranger.toml", &ca.certd.ca.tls.client("stranger"));
    ca.ra_with(&stranger, &["health"])
        .assert_code(1)
        .assert_stderr_has("allowlist");

    // certd down: nothing listens on port 1 (below 1024, so no test's
    // socket is ever given it, and none binds it).
    let down = ca.config_variant("down.toml", ca.env.get("CERTD_URL"), "https://127.0.0.1:1");
    ca.ra_with(&down, &["health"])
        .assert_code(1)
        .assert_stderr_has("cannot reach certd");

    // Configuration errors: exit 2.
    let junk = ca.config_variant("junk.toml", "[defaults]", "[defaults]\ncolour = \"blue\"");
    ca.ra_with(&junk, &["health"])
        .assert_code(2)
        .assert_stderr_has("colour");
    let missing = ca.dir.path().join("missing.toml");
    ca.ra_with(&missing, &["health"]).assert_code(2);
    // tool() starts it without the calling environment's RA_CLI_CONFIG.
    let r = run(tool(common::RA_CLI).arg("health"));
    r.assert_code(2).assert_stderr_has("RA_CLI_CONFIG");
}
