//! The TLS door of the API, on a CA set up by the real `./demo
//! --setup-only`: client certificates that must not get in (none, an
//! unknown issuer, expired, not yet valid, not on the allowlist) are
//! refused in the handshake and audited; HTTP/1.1, HTTP/2, TLS 1.3 and
//! TLS 1.2 with ECDHE + AEAD work, older protocols and other suites do
//! not; RAs are added and removed by `certd reload` and SIGHUP without a
//! restart, while open connections carry on.
#![forbid(unsafe_code)]

use certd_e2e::api::{ra_toml, ApiCa, ApiDaemon, CurlReply, TlsInfra, API_DEADLINE};
use certd_e2e::{poll_until, run};
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

/// The grant the demo gives its RAs.
const DEMO_GRANT: &str = r#"
certifiers = ["demo-root"]
profiles = ["tls-server", "tls-client", "smime-mailbox"]
dns_subtrees = ["example.com"]
email_subtrees = ["example.com"]
ip_networks = ["192.0.2.0/24"]
may_revoke = true
"#;

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

fn demo(dir: &Path) -> ApiCa {
    ApiCa::from_demo(dir, Path::new(CERTD))
}

fn health_ok(reply: &CurlReply) -> bool {
    reply.status == 200 && reply.json()["certifiers"][0]["name"] == "demo-root"
}

fn refused(reply: &CurlReply) -> bool {
    reply.exit != Some(0) && reply.status == 0
}

#[test]
fn client_certificates_that_may_not_enter_are_refused_in_the_handshake_and_audited() {
    let tmp = tempdir();
    let dir = tmp.path();
    let ca = demo(dir);
    let infra = ca.tls.clone();
    let stranger_ca = TlsInfra::create(&dir.join("stranger"), "stranger CA");
    let stranger = stranger_ca.client("stranger");
    let expired = infra.client_valid_between("expired", "20240101000000Z", "20250101000000Z");
    // Valid from ten years from now on, whenever the test runs.
    let year = time::OffsetDateTime::now_utc().year();
    let future = infra.client_valid_between(
        "future",
        &format!("{}0101000000Z", year + 10),
        &format!("{}0101000000Z", year + 11),
    );
    let unlisted = infra.client("unlisted");
    // All but `unlisted` are on the allowlist: each is refused for its own flaw.
    for cred in [&stranger, &expired, &future] {
        ca.append_config(&ra_toml(cred, DEMO_GRANT));
    }
    ca.check_config();
    let d = ca.start();

    let ok = d.curl("ra-demo", "GET", "/v1/health").send();
    assert!(health_ok(&ok), "{ok}");
    // The harness waits for READY=1, not for a port that connects, so no
    // handshake was refused before these.
    let before = d.audit_of("tls_refused").len();
    assert_eq!(before, 0, "{:#?}", d.audit_of("tls_refused"));
    let attempts = [
        (
            "no client certificate",
            d.curl_anonymous("GET", "/v1/health"),
            &["no certificates"][..],
        ),
        (
            "unknown issuer",
            d.curl_as(&stranger, "GET", "/v1/health"),
            &["unknownissuer", "unknown issuer"],
        ),
        (
            "expired",
            d.curl_as(&expired, "GET", "/v1/health"),
            &["expired"],
        ),
        (
            "not yet valid",
            d.curl_as(&future, "GET", "/v1/health"),
            &["notvalidyet", "not valid yet"],
        ),
        (
            "not on the allowlist",
            d.curl_as(&unlisted, "GET", "/v1/health"),
            &["applicationverificationfailure"],
        ),
    ];
    for (what, curl, _) in &attempts {
        let reply = curl.send();
        assert!(refused(&reply), "{what}: {reply}");
    }
    let entries = poll_until(
        API_DEADLINE,
        "a tls_refused audit entry per refused handshake",
        || {
            let all = d.audit_of("tls_refused");
            (all.len() >= before + attempts.len()).then_some(all)
        },
        || d.log(),
    );
    assert_eq!(entries.len(), before + attempts.len(), "{entries:#?}");
    // The reason names the flaw (rustls' words, lower-cased).
    for (entry, (what, _, reasons)) in entries[before..].iter().zip(&attempts) {
        assert!(
            entry["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("peer:127.0.0.1:")),
            "{what}: {entry:#}"
        );
        let reason = entry["detail"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            reasons.iter().any(|r| reason.contains(r)),
            "{what}: the reason should mention one of {reasons:?}: {entry:#}"
        );
    }

    // The RA client sees a transport error naming certd's alert, when it
    // connects (it waits for certd's verdict after a TLS 1.3 handshake),
    // and an explicit connection fails at its first request.
    for cred in [&stranger, &expired, &future, &unlisted] {
        let client = d.client_for(cred);
        match d.block_on(client.health()) {
            Err(certd_api::ClientError::Transport(m)) if m.contains("alert") => {}
            other => panic!(
                "{}: expected a transport error naming the alert, got {other:?}",
                cred.name
            ),
        }
        let answer = d
            .keep_alive(cred)
            .and_then(|mut c| c.request("GET", "/v1/health", None));
        assert!(answer.is_err(), "{}: {answer:?}", cred.name);
    }
    let ok = d.curl("ra-demo", "GET", "/v1/health").send();
    assert!(health_ok(&ok), "still serving: {ok}");
    assert!(d.audit_of("refused").is_empty(), "no request got through");
    d.verify_audit();
}

#[test]
fn http1_http2_tls13_and_tls12_aead_work_and_older_protocols_do_not() {
    let tmp = tempdir();
    let d = demo(tmp.path()).start();
    let health = |args: &[&str]| {
        let mut curl = d.curl("ra-demo", "GET", "/v1/health").arg("-v");
        for a in args {
            curl = curl.arg(a);
        }
        curl.send()
    };
    let h1 = health(&["--http1.1"]);
    assert!(health_ok(&h1), "{h1}");
    assert_eq!(h1.http_version, "1.1");
    let h2 = health(&["--http2"]);
    assert!(health_ok(&h2), "{h2}");
    assert_eq!(h2.http_version, "2");
    let tls13 = health(&["--tlsv1.3"]);
    assert!(health_ok(&tls13), "{tls13}");
    assert!(tls13.stderr.contains("TLSv1.3"), "{tls13}");
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let r = health(&["--tlsv1.2", "--tls-max", "1.2", "--ciphers", suite]);
        assert!(health_ok(&r), "{suite}: {r}");
        assert!(r.stderr.contains(&format!("TLSv1.2 / {suite}")), "{r}");
    }
    // CBC suites and suites without ECDHE are refused by certd: the client
    // offers them, the server answers with an alert.
    for suite in [
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES128-SHA",
        "AES128-GCM-SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
    ] {
        let r = health(&["--tlsv1.2", "--tls-max", "1.2", "--ciphers", suite]);
        assert!(refused(&r), "{suite}: {r}");
        assert!(r.stderr.contains("alert"), "{suite}: refused by certd: {r}");
    }
    // TLS 1.0 and 1.1, offered for real (security level 0 lets OpenSSL 3
    // send them), are refused by certd.
    for (min, max) in [("--tlsv1.0", "1.0"), ("--tlsv1.1", "1.1")] {
        let r = health(&[min, "--tls-max", max, "--ciphers", "DEFAULT@SECLEVEL=0"]);
        assert!(refused(&r), "TLS {max}: {r}");
        assert!(
            r.stderr.contains("alert"),
            "TLS {max}: refused by certd: {r}"
        );
    }
    // The RA client negotiates on its own (ALPN).
    let client = d.client("ra-demo");
    let h = d.block_on(client.health()).expect("health via the client");
    assert_eq!(h.certifiers[0].name, "demo-root");
}

fn sighup(d: &ApiDaemon) {
    run(Command::new("kill")
        .arg("-HUP")
        .arg(d.instance.pid().to_string()))
    .assert_success();
}

#[test]
fn reload_and_sighup_add_and_remove_ras_while_open_connections_carry_on() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = demo(dir).start();
    let demo_cred = d.ca.ra("ra-demo").clone();
    let web_cred = d.ca.ra("ra-web").clone();
    let newcomer = d.ca.tls.client("ra-new");

    let mut demo_conn = d.keep_alive(&demo_cred).expect("connect as ra-demo");
    let (status, _) = demo_conn
        .request("GET", "/v1/health", None)
        .expect("health on the kept connection");
    assert_eq!(status, 200);
    let mut web_conn = d.keep_alive(&web_cred).expect("connect as ra-web");
    assert_eq!(
        web_conn
            .request("GET", "/v1/profiles", None)
            .expect("profiles")
            .0,
        200
    );
    let before = d.curl_as(&newcomer, "GET", "/v1/health").send();
    assert!(refused(&before), "not configured yet: {before}");

    // Add an RA and `certd reload`.
    d.ca.append_config(&ra_toml(&newcomer, DEMO_GRANT));
    let out = d.ctl(&["reload"]);
    out.assert_success();
    assert!(out.stdout.contains("4 RAs"), "{out}");
    let now_in = d.curl_as(&newcomer, "GET", "/v1/profiles").send();
    assert_eq!(now_in.status, 200, "{now_in}");
    assert_eq!(now_in.json().as_array().map(Vec::len), Some(3), "{now_in}");
    let profiles = d
        .block_on(d.client_for(&newcomer).profiles())
        .expect("the new RA's client");
    assert_eq!(profiles.len(), 3);
    let (status, _) = demo_conn
        .request("GET", "/v1/health", None)
        .expect("the kept connection survives the reload");
    assert_eq!(status, 200);

    // A configuration that does not load is refused; nothing changes.
    let good = std::fs::read_to_string(&d.ca.config.path).expect("the configuration");
    std::fs::write(&d.ca.config.path, format!("{good}\n[[ra]]\nname = ")).expect("break it");
    // Through the socket: with --config the console itself would refuse
    // to read the broken file before certd saw the request.
    let out = run(d
        .instance
        .command()
        .arg("reload")
        .arg("--socket")
        .arg(&d.ca.config.control_socket));
    assert!(!out.status.success(), "{out}");
    std::fs::write(&d.ca.config.path, &good).expect("restore it");
    let still = d.curl_as(&newcomer, "GET", "/v1/health").send();
    assert!(health_ok(&still), "{still}");
    assert_eq!(d.audit_of("reload_refused").len(), 1);

    // Remove ra-web and send SIGHUP.
    let web_table = ra_toml(&web_cred, DEMO_GRANT);
    let text = std::fs::read_to_string(&d.ca.config.path).expect("the configuration");
    let start = text
        .find("name = \"ra-web\"")
        .and_then(|i| text[..i].rfind("[[ra]]"))
        .unwrap_or_else(|| panic!("no ra-web table in\n{text}"));
    let end = text[start + 6..]
        .find("[[ra]]")
        .map_or(text.len(), |i| start + 6 + i);
    assert!(
        text[start..end].contains(&web_cred.fingerprint),
        "{web_table}"
    );
    std::fs::write(
        &d.ca.config.path,
        format!("{}{}", &text[..start], &text[end..]),
    )
    .expect("write the configuration");
    sighup(&d);
    let (status, body) = poll_until(
        API_DEADLINE,
        "ra-web's open connection to be refused after SIGHUP",
        || {
            let answer = web_conn
                .request("GET", "/v1/profiles", None)
                .expect("the kept connection stays open");
            (answer.0 != 200).then_some(answer)
        },
        || d.log(),
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let err: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
    assert_eq!(err["error"]["code"], "not_authorized", "{err:#}");
    let gone = d.curl_as(&web_cred, "GET", "/v1/health").send();
    assert!(refused(&gone), "a removed RA's new connection: {gone}");
    let (status, _) = demo_conn
        .request("GET", "/v1/health", None)
        .expect("ra-demo's connection carries on");
    assert_eq!(status, 200);
    let still = d.curl_as(&newcomer, "GET", "/v1/health").send();
    assert!(health_ok(&still), "{still}");
    // The policy is swapped before its audit entry is written: wait for it.
    poll_until(
        API_DEADLINE,
        "the second config_reloaded audit entry",
        || (d.audit_of("config_reloaded").len() == 2).then_some(()),
        || format!("{:#?}", d.audit_of("config_reloaded")),
    );
    d.verify_audit();
}
