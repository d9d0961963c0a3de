//! End-to-end tests of ra-cli's single commands against a real certd
//! (real SoftHSM token, real mutual TLS): health, profiles, issue in every
//! format, show, list, revoke, crl, and the errors an operator meets
//! (locked certifier, refusals, certd down, credential not on the
//! allowlist, bad configuration).
#![forbid(unsafe_code)]

mod common;

use common::{openssl, openssl_csr, Ca};
use std::collections::HashSet;

#[test]
fn single_commands_against_a_real_certd() {
    let ca = Ca::start(false);
    let work = ca.scratch("work");
    let w = |name: &str| work.join(name).display().to_string();

    // Locked: health says so (exit 1), issuance shows certd's code.
    let h = ca.ra(&["health"]);
    h.code(1);
    assert!(
        h.stdout.contains("demo-root") && h.stdout.contains("locked"),
        "{h}"
    );
    let csr = openssl_csr(&work, "web", "/CN=www.example.com", None);
    let csr_s = csr.display().to_string();
    ca.ra(&[
        "issue",
        "--profile",
        "tls-server",
        "--csr",
        &csr_s,
        "--out",
        &w("locked.pem"),
    ])
    .code(1)
    .stderr_has("certifier_locked");
    assert!(!work.join("locked.pem").exists());

    ca.activate();
    let h = ca.ra(&["--json", "health"]);
    h.ok();
    assert_eq!(h.json()["status"], "ok");
    let h = ca.ra(&["health"]);
    assert!(h.stdout.contains("client certificate SHA-256"), "{h}");

    let p = ca.ra(&["profiles", "--json"]);
    p.ok();
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
    ca.ra(&["profiles"]).ok();

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
        r.ok();
        serials.push(r.json()["serial"].as_str().expect("serial").to_string());
    }
    openssl(&["verify", "-CAfile", &ca.ca_cert(), &w("web.pem")]).ok();
    let der = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        &w("web.der"),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    der.ok();
    assert!(der.stdout.contains("www.example.com"), "{der}");
    let p7 = openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        &w("web.p7b"),
        "-print_certs",
        "-noout",
    ]);
    p7.ok();
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
    r.ok();
    let issued = r.json();
    assert_eq!(issued["not_after_clamped"], false);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(work.join("alice.p12"))
            .expect("p12")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let info = openssl(&[
        "pkcs12",
        "-info",
        "-noout",
        "-in",
        &w("alice.p12"),
        "-passin",
        &format!("file:{}", w("pw")),
    ]);
    info.ok();
    assert!(
        info.stderr.contains("AES-256-CBC") && info.stderr.contains("hmacWithSHA256"),
        "{info}"
    );
    let dump = openssl(&[
        "pkcs12",
        "-in",
        &w("alice.p12"),
        "-passin",
        &format!("file:{}", w("pw")),
        "-nodes",
    ]);
    dump.ok();
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
    r.ok();
    assert_eq!(r.json()["not_after_clamped"], true, "{r}");
    openssl(&[
        "pkcs12",
        "-in",
        &w("bob.p12"),
        "-passin",
        &format!("file:{}", w("bob.p12.password")),
        "-nodes",
        "-nocerts",
    ])
    .ok();

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

    // show, list.
    let s = ca.ra(&["--json", "show", &alice]);
    s.ok();
    assert_eq!(s.json()["status"], "valid");
    let s = ca.ra(&["show", &alice]);
    assert!(s.stdout.contains("alice@example.com"), "{s}");
    let pem = ca.ra(&["show", "--pem", &alice]);
    assert!(
        pem.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{pem}"
    );
    let l = ca.ra(&["--json", "list"]);
    l.ok();
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
    ca.ra(&["revoke", &alice, "--reason", "keyCompromise"]).ok();
    assert_eq!(
        ca.ra(&["--json", "show", &alice]).json()["status"],
        "revoked"
    );
    ca.ra(&["revoke", &alice, "--reason", "keyCompromise"])
        .code(1)
        .stderr_has("already_revoked");
    ca.ra(&["revoke", &alice, "--reason", "certificateHold"])
        .code(2)
        .stderr_has("possible values: unspecified, keyCompromise");
    // certd makes a new CRL `crl.coalesce_seconds` after a revocation:
    // fetch until it lists alice (the bound only catches a hang).
    let mut fetches = 0;
    loop {
        let c = ca.ra(&["--json", "crl", "--out", &w("root.crl")]);
        c.ok();
        assert!(c.json()["revoked"].as_u64() >= Some(1), "{c}");
        let text = openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            &w("root.crl"),
            "-noout",
            "-text",
        ]);
        text.ok();
        if text
            .stdout
            .to_ascii_lowercase()
            .contains(&alice.to_ascii_lowercase())
        {
            break;
        }
        fetches += 1;
        assert!(fetches < 600, "the CRL never listed {alice}\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ca.ra(&[
        "crl",
        "--pem",
        "--certifier",
        "demo-root",
        "--out",
        &w("root.crl.pem"),
    ])
    .ok();
    openssl(&["crl", "-in", &w("root.crl.pem"), "-noout"]).ok();

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
    .code(2)
    .stderr_has("does not exist");
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
    .code(2)
    .stderr_has("--p12-iterations");
    assert_eq!(count(), before, "nothing issued");

    // Refusals show certd's code and message.
    ca.ra(&["show", "00112233445566778899"])
        .code(1)
        .stderr_has("not_found");
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
    .code(1)
    .stderr_has("name_not_permitted");
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
    .code(2);
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
    .code(2)
    .stderr_has("PKCS#12");
    ca.ra(&["issue", "--san", "uri:x", "--out", &w("x.pem")])
        .code(2);
    ca.ra(&["crl", "--certifier", "nope", "--out", &w("nope.crl")])
        .code(1)
        .stderr_has("unknown_certifier");

    // A credential that chains to the trust anchor but is on no allowlist.
    let (cert, key) = ca.stranger_credential();
    let text = std::fs::read_to_string(&ca.config).expect("config");
    let tls_dir = std::path::Path::new(&ca.env["CERTD_TLS_CA"])
        .parent()
        .expect("tls")
        .display()
        .to_string();
    let stranger = ca.dir.path().join("stranger.toml");
    std::fs::write(
        &stranger,
        text.replace(
            &format!("{tls_dir}/ra-cli.pem"),
            &cert.display().to_string(),
        )
        .replace(&format!("{tls_dir}/ra-cli.key"), &key.display().to_string()),
    )
    .expect("write");
    ca.ra_with(&stranger, &["health"])
        .code(1)
        .stderr_has("allowlist");

    // certd down: nothing listens on port 1 (below 1024, so no test's
    // socket is ever given it, and none binds it).
    let down = ca.config_variant("down.toml", &ca.env["CERTD_URL"], "https://127.0.0.1:1");
    ca.ra_with(&down, &["health"])
        .code(1)
        .stderr_has("cannot reach certd");

    // Configuration errors: exit 2.
    let junk = ca.config_variant("junk.toml", "[defaults]", "[defaults]\ncolour = \"blue\"");
    ca.ra_with(&junk, &["health"]).code(2).stderr_has("colour");
    let missing = ca.dir.path().join("missing.toml");
    ca.ra_with(&missing, &["health"]).code(2);
    let r = common::run(
        std::process::Command::new(common::RA_CLI)
            .arg("health")
            .env_remove("RA_CLI_CONFIG"),
    );
    r.code(2).stderr_has("RA_CLI_CONFIG");
}
