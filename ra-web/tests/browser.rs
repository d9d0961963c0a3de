//! RA staff at work in a real browser: headless Chromium drives the real
//! ra-web beside the demo CA (real certd, SoftHSM token, TLS both ways).
//!
//! An admin requires two approvals for TLS server certificates and sets up
//! an enterprise and staff. Olivia sets up TOTP and signs in with it,
//! creates a request by pasting a CSR, reads the decoded view, adds a SAN
//! and validates; she cannot approve her own request. Oscar approves and
//! then cannot give the second approval; an auditor cannot approve at all;
//! Otto's approval issues. The certificate, downloaded with the browser's
//! session, verifies against the published CA certificate and the CRL at
//! the URL the certificate names, until Otto revokes it. The requester's
//! pickup link works with its token and not after it expires (ra-web's
//! clock moved, nothing slept). Every main page passes axe-core without
//! serious or critical findings and is saved as a screenshot at laptop and
//! phone sizes under `target/test-artifacts/ra-web/`.

use certd_e2e::api::{make_csr, make_key, Curl, KeyAlg};
use certd_e2e::web::fantoccini::{Client, Locator};
use certd_e2e::web::{file_in, openssl, wait_for_text, Browser, WebCa, CERTIFIER};
use certd_e2e::web::{INITIAL_PASSWORD, OWN_PASSWORD};
use certd_e2e::{poll_until, ready::START_LIMIT};
use std::path::Path;

async fn fill(c: &Client, id: &str, text: &str) {
    let el = c
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"));
    el.clear()
        .await
        .unwrap_or_else(|e| panic!("clearing #{id}: {e}"));
    el.send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("typing into #{id}: {e}"));
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn select(c: &Client, id: &str, value: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .select_by_value(value)
        .await
        .unwrap_or_else(|e| panic!("choosing {value} in #{id}: {e}"));
}

async fn text_of(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("text of #{id}: {e}"))
}

async fn absent(c: &Client, id: &str) -> bool {
    c.find(Locator::Id(id)).await.is_err()
}

async fn sign_in(c: &Client, base: &str, user: &str, password: &str) {
    c.goto(&format!("{base}/login"))
        .await
        .expect("the sign-in page");
    fill(c, "username", user).await;
    fill(c, "password", password).await;
    click(c, "#sign-in").await;
}

async fn sign_out(c: &Client) {
    click(c, "form[action='/logout'] button").await;
    wait_for_text(c, "id=\"sign-in\"").await;
}

/// Signs in for the first time with the admin-set password and chooses a
/// new one, as ra-web requires.
async fn first_sign_in(c: &Client, base: &str, user: &str) {
    sign_in(c, base, user, INITIAL_PASSWORD).await;
    wait_for_text(c, "Choose a new password before you go on.").await;
    fill(c, "current", INITIAL_PASSWORD).await;
    fill(c, "new", OWN_PASSWORD).await;
    fill(c, "repeat", OWN_PASSWORD).await;
    click(c, "#change-password").await;
    wait_for_text(c, "Your password was changed.").await;
}

async fn add_user(c: &Client, base: &str, user: &str, role: &str, enterprise: Option<&str>) {
    c.goto(&format!("{base}/admin/users"))
        .await
        .expect("users page");
    fill(c, "new-username", user).await;
    fill(c, "new-display", &format!("{user} (test)")).await;
    fill(c, "new-email", &format!("{user}@example.com")).await;
    select(c, "new-role", role).await;
    if let Some(e) = enterprise {
        click(c, &format!("input[name='enterprise'][value='{e}']")).await;
    }
    fill(c, "new-password", INITIAL_PASSWORD).await;
    click(c, "#add-user").await;
    wait_for_text(c, &format!("User {user} added.")).await;
}

fn totp(secret: &str) -> totp_rs::Totp {
    totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).expect("a base32 secret"))
        .build()
        .expect("a TOTP")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// axe-core (tests/tools, installed by ./test) run in the page: no serious
/// or critical violations.
async fn accessible(c: &Client, page: &str) {
    let path = certd_e2e::repo_root().join("tests/tools/node_modules/axe-core/axe.min.js");
    let axe = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: ./test installs axe-core (npm ci --prefix tests/tools)",
            path.display()
        )
    });
    c.execute(&axe, vec![])
        .await
        .expect("axe-core loads into the page");
    let found = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at '
                   + v.nodes.map(n => n.target.join(' ')).join('; '))))
               .catch(e => done(['axe-core failed: ' + e]));",
            vec![],
        )
        .await
        .expect("axe-core runs");
    let list = found.as_array().cloned().unwrap_or_default();
    assert!(
        list.is_empty(),
        "accessibility of the {page} page: {list:#?}"
    );
}

/// Screenshots of the page at laptop and phone sizes, saved as artifacts.
async fn screenshots(c: &Client, name: &str) {
    let dir = certd_e2e::repo_root().join("target/test-artifacts/ra-web");
    std::fs::create_dir_all(&dir).expect("the artifacts directory");
    for (size, w, h) in [("laptop", 1280, 900), ("phone", 390, 844)] {
        c.set_window_size(w, h).await.expect("resizing the window");
        let png = c.screenshot().await.expect("a screenshot");
        std::fs::write(dir.join(format!("{name}-{size}.png")), png).expect("screenshot saved");
    }
    c.set_window_size(1280, 900)
        .await
        .expect("resizing the window");
}

async fn check_page(c: &Client, name: &str) {
    accessible(c, name).await;
    screenshots(c, name).await;
}

fn qp_decode(s: &str) -> String {
    s.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// The URL after `label` (e.g. "URI:") on the line of `section` in
/// `openssl x509 -text`.
fn uri_after(text: &str, section: &str) -> String {
    let at = text
        .find(section)
        .unwrap_or_else(|| panic!("{section} in\n{text}"));
    let rest = &text[at..];
    let uri = rest.find("URI:").map(|i| &rest[i + 4..]).expect("a URI");
    uri.split_whitespace().next().expect("a URI").to_string()
}

fn curl_get(
    url: &str,
    ca: &Path,
    scratch: &Path,
    cookie: Option<&str>,
) -> certd_e2e::api::CurlReply {
    let mut c = Curl::new("GET", url, ca, scratch);
    if let Some(cookie) = cookie {
        c = c.arg("-H").arg(format!("Cookie: {cookie}"));
    }
    c.send()
}

#[test]
fn staff_issue_pick_up_publish_and_revoke_in_chromium() {
    let ca = WebCa::start();
    let scratch = ca.dir.path().to_path_buf();
    let key = make_key(&scratch, "www", KeyAlg::P256);
    let csr = make_csr(
        &scratch,
        "www",
        &key,
        "/CN=www.example.com",
        &["DNS:www.example.com"],
    );
    let (admin, admin_password) = ca.admin();
    let base = ca.url.clone();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let (serial, cookie, request_url) = rt.block_on(async {
        let browser = Browser::start(&ca.tls_ca()).await;
        let c = &browser.client;

        // A wrong password is refused with a message next to the form.
        sign_in(c, &base, &admin, "not the password").await;
        wait_for_text(c, "Wrong user name or password.").await;
        check_page(c, "sign-in").await;

        // The admin: two approvals for TLS server certificates, an
        // enterprise, three officers and an auditor.
        sign_in(c, &base, &admin, &admin_password).await;
        wait_for_text(c, CERTIFIER).await;
        assert!(
            text_of(c, "certifiers").await.contains("active"),
            "certd's health on the dashboard"
        );
        c.goto(&format!("{base}/admin/settings"))
            .await
            .expect("settings page");
        let approvals = c
            .find(Locator::Css("input[name='approvals.tls-server']"))
            .await
            .expect("the approvals field of tls-server");
        approvals.clear().await.expect("cleared");
        approvals.send_keys("2").await.expect("typed");
        click(c, "#save-settings").await;
        wait_for_text(c, "Settings saved.").await;
        check_page(c, "settings").await;
        c.goto(&format!("{base}/admin/enterprises"))
            .await
            .expect("enterprises page");
        fill(c, "ent-name", "Example Corp").await;
        click(c, "#add-enterprise").await;
        wait_for_text(c, "Enterprise Example Corp added.").await;
        for officer in ["olivia", "oscar", "otto"] {
            add_user(c, &base, officer, "officer", Some("1")).await;
        }
        add_user(c, &base, "audrey", "auditor", None).await;
        check_page(c, "users").await;
        sign_out(c).await;

        // Olivia sets up a second factor, then signs in with it.
        first_sign_in(c, &base, "olivia").await;
        c.goto(&format!("{base}/account"))
            .await
            .expect("account page");
        click(c, "#setup-totp").await;
        let secret = text_of(c, "totp-secret").await;
        check_page(c, "totp-enrolment").await;
        fill(c, "code", &totp(&secret).generate(unix_now()).to_string()).await;
        click(c, "#confirm-totp").await;
        wait_for_text(c, "Your second factor is set up").await;
        sign_out(c).await;
        sign_in(c, &base, "olivia", OWN_PASSWORD).await;
        wait_for_text(c, "id=\"verify\"").await;
        check_page(c, "totp-sign-in").await;
        // The next step's code: the current one was spent on enrolment.
        fill(
            c,
            "code",
            &totp(&secret).generate(unix_now() + 30).to_string(),
        )
        .await;
        click(c, "#verify").await;
        wait_for_text(c, "Waiting for you").await;

        // A request from a pasted CSR; the decoded view before creating it.
        c.goto(&format!("{base}/requests/new"))
            .await
            .expect("new request page");
        select(c, "profile", "tls-server").await;
        fill(c, "csr", &csr.pem).await;
        fill(c, "notify_email", "requester@example.com").await;
        click(c, "#preview").await;
        wait_for_text(c, "id=\"csr-view\"").await;
        assert!(text_of(c, "csr-subject")
            .await
            .contains("CN=www.example.com"));
        assert!(
            text_of(c, "csr-key").await.contains("P-256"),
            "{}",
            text_of(c, "csr-key").await
        );
        assert!(text_of(c, "csr-sans").await.contains("www.example.com"));
        check_page(c, "new-request").await;
        click(c, "#submit").await;
        wait_for_text(c, "validate its names next").await;
        assert_eq!(text_of(c, "request-state").await, "Pending validation");
        let request_url = c.current_url().await.expect("url").to_string();
        // A SAN added before approval.
        fill(c, "dns-edit", "www.example.com\napi.example.com").await;
        click(c, "#do-edit").await;
        wait_for_text(c, "Changes saved").await;
        assert_eq!(text_of(c, "dns").await, "www.example.com, api.example.com");
        click(c, "#attest").await;
        click(c, "#do-validate").await;
        wait_for_text(c, "Validation recorded.").await;
        assert_eq!(text_of(c, "request-state").await, "Pending approval");
        assert!(
            absent(c, "do-approve").await,
            "the requester must not be offered Approve"
        );
        check_page(c, "request").await;
        sign_out(c).await;

        // Oscar gives the first approval, and cannot give the second.
        first_sign_in(c, &base, "oscar").await;
        c.goto(&request_url).await.expect("the request");
        click(c, "#do-approve").await;
        wait_for_text(c, "more approvals are needed").await;
        assert_eq!(text_of(c, "request-state").await, "Pending approval");
        assert!(text_of(c, "approvals").await.starts_with("1 of 2"));
        assert!(
            absent(c, "do-approve").await,
            "the first approver must not be offered Approve again"
        );
        sign_out(c).await;

        // An auditor reads, cannot approve.
        first_sign_in(c, &base, "audrey").await;
        c.goto(&request_url).await.expect("the request");
        wait_for_text(c, "id=\"request-state\"").await;
        assert!(
            absent(c, "do-approve").await && absent(c, "actions").await,
            "no actions for an auditor"
        );
        sign_out(c).await;

        // Otto's approval is the second: certd issues.
        first_sign_in(c, &base, "otto").await;
        wait_for_text(c, "Waiting for you").await;
        check_page(c, "dashboard").await;
        c.goto(&request_url).await.expect("the request");
        click(c, "#do-approve").await;
        wait_for_text(c, "Approved and issued.").await;
        assert_eq!(text_of(c, "request-state").await, "Issued");
        let serial = text_of(c, "serial").await;
        let timeline = text_of(c, "timeline").await;
        for step in [
            "olivia created",
            "olivia edited",
            "olivia validated",
            "oscar approved",
            "otto approved",
            "otto issued",
        ] {
            assert!(
                timeline.contains(step),
                "{step:?} in the timeline:\n{timeline}"
            );
        }
        c.goto(&format!("{base}/requests"))
            .await
            .expect("the request list");
        check_page(c, "requests").await;
        let cookie = c
            .get_named_cookie("__Host-ra-web")
            .await
            .expect("the session cookie");
        let cookie = format!("{}={}", cookie.name(), cookie.value());
        browser.close().await;
        (serial, cookie, request_url)
    });

    // certd has the certificate with the evidence ra-web sent.
    let client = ca.certd.client("ra-web");
    let info = ca
        .certd
        .block_on(client.get(&serial))
        .expect("certd knows the serial");
    let approval = info
        .approval
        .expect("the evidence is stored with the certificate");
    assert_eq!(approval.requested_by.as_deref(), Some("olivia"));
    assert_eq!(
        approval.approved_by,
        vec!["oscar".to_string(), "otto".to_string()]
    );
    let names: Vec<&str> = approval
        .validations
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["www.example.com", "api.example.com"]);
    assert!(approval
        .validations
        .iter()
        .all(|v| v.method == "officer_attestation"));

    // The certificate downloaded with the browser's session verifies
    // against the published CA certificate and the CRL the certificate
    // names.
    let id = request_url.rsplit('/').next().expect("a request number");
    let pem = curl_get(
        &format!("{base}/requests/{id}/certificate.pem"),
        &ca.tls_ca(),
        &scratch,
        Some(&cookie),
    );
    assert_eq!(pem.status, 200, "{pem}");
    let cert_file = file_in(&scratch, "cert.pem", &pem.body);
    let text = openssl(&[&"x509", &"-in", &cert_file, &"-noout", &"-text"]).stdout;
    let crl_url = uri_after(&text, "CRL Distribution Points");
    let ca_url = uri_after(&text, "CA Issuers");
    assert_eq!(crl_url, format!("{}/crl/{CERTIFIER}.crl", ca.publication));
    let ca_der = curl_get(&ca_url, &ca.tls_ca(), &scratch, None);
    assert_eq!(
        (ca_der.status, ca_der.content_type.as_str()),
        (200, "application/pkix-cert"),
        "{ca_der}"
    );
    let ca_pem = scratch.join("ca.pem");
    openssl(&[
        &"x509",
        &"-inform",
        &"DER",
        &"-in",
        &file_in(&scratch, "ca.der", &ca_der.body),
        &"-out",
        &ca_pem,
    ])
    .assert_success();
    let verify_with_crl = |name: &str| {
        let crl = curl_get(&crl_url, &ca.tls_ca(), &scratch, None);
        assert_eq!(
            (crl.status, crl.content_type.as_str()),
            (200, "application/pkix-crl"),
            "{crl}"
        );
        assert!(
            crl.header("cache-control")
                .is_some_and(|v| v.starts_with("public, max-age=")),
            "{}",
            crl.headers
        );
        let crl_pem = scratch.join(format!("{name}.pem"));
        openssl(&[
            &"crl",
            &"-inform",
            &"DER",
            &"-in",
            &file_in(&scratch, name, &crl.body),
            &"-out",
            &crl_pem,
        ])
        .assert_success();
        openssl(&[
            &"verify",
            &"-CAfile",
            &ca_pem,
            &"-crl_check",
            &"-CRLfile",
            &crl_pem,
            &cert_file,
        ])
    };
    verify_with_crl("crl-before").assert_success();

    // The requester's pickup link: right token works, a wrong one and an
    // expired one do not.
    let mails = poll_until(
        START_LIMIT,
        "the issued mail",
        || {
            let m = ca.outbox();
            m.iter()
                .any(|m| qp_decode(m).contains("/pickup/"))
                .then_some(m)
        },
        || format!("{:?}", ca.outbox()),
    );
    let issued = mails
        .iter()
        .map(|m| qp_decode(m))
        .find(|m| m.contains("/pickup/"))
        .expect("the issued mail");
    let link = issued
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{base}/pickup/")))
        .unwrap_or_else(|| panic!("a pickup link in\n{issued}"))
        .to_string();
    rt.block_on(async {
        let browser = Browser::start(&ca.tls_ca()).await;
        let c = &browser.client;
        c.goto(&link).await.expect("the pickup page");
        wait_for_text(c, "id=\"pickup-title\"").await;
        assert_eq!(text_of(c, "pickup-title").await, "www.example.com");
        check_page(c, "pickup").await;
        let mut wrong = link.clone();
        wrong.pop();
        wrong.push(if link.ends_with('A') { 'B' } else { 'A' });
        c.goto(&wrong).await.expect("a wrong pickup link");
        wait_for_text(c, "this pickup link is not valid").await;
        // 73 hours later the 72-hour link has expired.
        ca.set_clock_offset(73 * 3600);
        c.goto(&link).await.expect("the expired pickup link");
        wait_for_text(c, "this pickup link is not valid").await;
        ca.set_clock_offset(0);

        // Otto revokes it.
        sign_in(c, &base, "otto", OWN_PASSWORD).await;
        wait_for_text(c, "Dashboard").await;
        c.goto(&format!("{base}/requests?q={serial}"))
            .await
            .expect("search by serial");
        click(c, "#request-list tbody a").await;
        wait_for_text(c, "id=\"do-revoke\"").await;
        select(c, "revoke-reason", "keyCompromise").await;
        click(c, "#do-revoke").await;
        wait_for_text(c, "Certificate revoked.").await;
        assert_eq!(text_of(c, "request-state").await, "Revoked");
        sign_out(c).await;

        // The auditor reads what happened.
        sign_in(c, &base, "audrey", OWN_PASSWORD).await;
        c.goto(&format!("{base}/events"))
            .await
            .expect("the event log");
        let log = text_of(c, "events").await;
        for kind in [
            "request_created",
            "request_edited",
            "request_validated",
            "request_approved",
            "request_issued",
            "certificate_revoked",
            "sign_in_failed",
            "user_created",
            "totp_enrolled",
            "settings_changed",
            "pickup_refused",
        ] {
            assert!(log.contains(kind), "{kind} in the event log:\n{log}");
        }
        check_page(c, "events").await;
        browser.close().await;
    });
    let out = verify_with_crl("crl-after");
    let says_revoked =
        out.stdout.contains("certificate revoked") || out.stderr.contains("certificate revoked");
    assert!(!out.status.success() && says_revoked, "{out}");
}
