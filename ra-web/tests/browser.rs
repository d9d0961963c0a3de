//! RA staff at work in a real browser: headless Chromium drives the real
//! ra-web beside the demo CA (real certd, SoftHSM token, TLS both ways).
//! An admin sets up an enterprise and staff; one officer creates a request
//! from an uploaded CSR and validates it, a second approves it (dual
//! control) and certd issues; the requester picks the certificate up from
//! the mailed link; the published CA certificate and CRL make the
//! certificate verify with openssl until an officer revokes it; an auditor
//! reads the event log.

use certd_e2e::api::{make_csr, make_key, KeyAlg};
use certd_e2e::web::fantoccini::{Client, Locator};
use certd_e2e::web::{file_in, openssl, wait_for_text, Browser, WebCa, CERTIFIER};
use certd_e2e::{poll_until, ready::START_LIMIT};

const PASSWORD: &str = "initial password 1";
/// What each new account chooses at its first sign-in.
const OWN_PASSWORD: &str = "my second passphrase";

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
    sign_in(c, base, user, PASSWORD).await;
    wait_for_text(c, "Choose a new password before you go on.").await;
    fill(c, "current", PASSWORD).await;
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
    fill(c, "new-password", PASSWORD).await;
    click(c, "#add-user").await;
    wait_for_text(c, &format!("User {user} added.")).await;
}

fn qp_decode(s: &str) -> String {
    s.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
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
    let csr_file = file_in(&scratch, "www.csr", csr.pem.as_bytes());
    let (admin, admin_password) = ca.admin();
    let base = ca.url.clone();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let serial = rt.block_on(async {
        let browser = Browser::start(&ca.tls_ca()).await;
        let c = &browser.client;

        // A wrong password is refused with a message next to the form.
        sign_in(c, &base, &admin, "not the password").await;
        wait_for_text(c, "Wrong user name or password.").await;

        // The admin: an enterprise, two officers and an auditor.
        sign_in(c, &base, &admin, &admin_password).await;
        wait_for_text(c, CERTIFIER).await;
        assert!(
            text_of(c, "certifiers").await.contains("active"),
            "certd's health on the dashboard"
        );
        c.goto(&format!("{base}/admin/enterprises"))
            .await
            .expect("enterprises page");
        fill(c, "ent-name", "Example Corp").await;
        click(c, "#add-enterprise").await;
        wait_for_text(c, "Enterprise Example Corp added.").await;
        add_user(c, &base, "olivia", "officer", Some("1")).await;
        add_user(c, &base, "oscar", "officer", Some("1")).await;
        add_user(c, &base, "audrey", "auditor", None).await;
        sign_out(c).await;

        // Olivia creates the request from the CSR file, checks the decoded
        // view, and attests the name.
        first_sign_in(c, &base, "olivia").await;
        c.goto(&format!("{base}/requests/new"))
            .await
            .expect("new request page");
        select(c, "profile", "tls-server").await;
        c.find(Locator::Id("csr_file"))
            .await
            .expect("the file input")
            .send_keys(&csr_file.display().to_string())
            .await
            .expect("choosing the CSR file");
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
        click(c, "#submit").await;
        wait_for_text(c, "validate its names next").await;
        assert_eq!(text_of(c, "request-state").await, "Pending validation");
        let request_url = c.current_url().await.expect("url").to_string();
        click(c, "#attest").await;
        click(c, "#do-validate").await;
        wait_for_text(c, "Validation recorded.").await;
        assert_eq!(text_of(c, "request-state").await, "Pending approval");
        // Dual control: the requester is offered no approval.
        assert!(
            c.find(Locator::Id("do-approve")).await.is_err(),
            "the requester must not see Approve"
        );
        sign_out(c).await;

        // Oscar approves: certd issues.
        first_sign_in(c, &base, "oscar").await;
        wait_for_text(c, "Waiting for you").await;
        c.goto(&request_url).await.expect("the request");
        click(c, "#do-approve").await;
        wait_for_text(c, "Approved and issued.").await;
        assert_eq!(text_of(c, "request-state").await, "Issued");
        let serial = text_of(c, "serial").await;
        let timeline = text_of(c, "timeline").await;
        for step in [
            "olivia created",
            "olivia validated",
            "oscar approved",
            "oscar issued",
        ] {
            assert!(
                timeline.contains(step),
                "{step:?} in the timeline:\n{timeline}"
            );
        }

        // The requester's mails: received, then issued with a pickup link.
        let mails = poll_until(
            START_LIMIT,
            "the issued mail",
            || {
                let m = ca.outbox();
                (m.len() >= 2).then_some(m)
            },
            || format!("{:?}", ca.outbox()),
        );
        assert!(mails[0].contains("received"), "{}", mails[0]);
        let issued = qp_decode(&mails[1]);
        let link = issued
            .split_whitespace()
            .find(|w| w.starts_with(&format!("{base}/pickup/")))
            .unwrap_or_else(|| panic!("a pickup link in\n{issued}"))
            .to_string();
        c.goto(&link).await.expect("the pickup page");
        wait_for_text(c, "id=\"pickup-title\"").await;
        assert_eq!(text_of(c, "pickup-title").await, "www.example.com");
        browser.close().await;
        serial
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
    assert_eq!(approval.approved_by, vec!["oscar".to_string()]);
    assert_eq!(approval.validations.len(), 1);
    assert_eq!(approval.validations[0].name, "www.example.com");
    assert_eq!(approval.validations[0].method, "officer_attestation");

    // The published CA certificate and CRL: the certificate verifies.
    let ca_der = ca.publication_get(&format!("/ca/{CERTIFIER}.crt"));
    assert_eq!(ca_der.status, 200, "{ca_der}");
    assert_eq!(ca_der.content_type, "application/pkix-cert");
    let ca_file = file_in(&scratch, "ca.der", &ca_der.body);
    let crl = ca.publication_get(&format!("/crl/{CERTIFIER}.crl"));
    assert_eq!(crl.status, 200, "{crl}");
    assert_eq!(crl.content_type, "application/pkix-crl");
    assert!(
        crl.header("cache-control")
            .is_some_and(|v| v.starts_with("public, max-age=")),
        "{}",
        crl.headers
    );
    let crl_file = file_in(&scratch, "crl.der", &crl.body);
    let cert_file = file_in(&scratch, "cert.pem", info.certificate.as_bytes());
    let ca_pem = scratch.join("ca.pem");
    let crl_pem = scratch.join("crl.pem");
    openssl(&[
        &"x509", &"-inform", &"DER", &"-in", &ca_file, &"-out", &ca_pem,
    ])
    .assert_success();
    openssl(&[
        &"crl", &"-inform", &"DER", &"-in", &crl_file, &"-out", &crl_pem,
    ])
    .assert_success();
    let verify = |crl: &std::path::Path| {
        openssl(&[
            &"verify",
            &"-CAfile",
            &ca_pem,
            &"-crl_check",
            &"-CRLfile",
            &crl,
            &cert_file,
        ])
    };
    verify(&crl_pem).assert_success();
    // The certificate names where they are published.
    let text = openssl(&[&"x509", &"-in", &cert_file, &"-noout", &"-text"]);
    assert!(
        text.stdout
            .contains(&format!("{}/crl/{CERTIFIER}.crl", ca.publication)),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("{}/ca/{CERTIFIER}.crt", ca.publication)),
        "{}",
        text.stdout
    );

    // Revoke in the browser; the published CRL lists it at once.
    rt.block_on(async {
        let browser = Browser::start(&ca.tls_ca()).await;
        let c = &browser.client;
        sign_in(c, &base, "oscar", OWN_PASSWORD).await;
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
        first_sign_in(c, &base, "audrey").await;
        c.goto(&format!("{base}/events"))
            .await
            .expect("the event log");
        let log = text_of(c, "events").await;
        for kind in [
            "request_created",
            "request_validated",
            "request_approved",
            "request_issued",
            "certificate_revoked",
            "sign_in_failed",
            "user_created",
        ] {
            assert!(log.contains(kind), "{kind} in the event log:\n{log}");
        }
        browser.close().await;
    });
    let crl = ca.publication_get(&format!("/crl/{CERTIFIER}.crl"));
    assert_eq!(crl.status, 200, "{crl}");
    let crl_file = file_in(&scratch, "crl2.der", &crl.body);
    openssl(&[
        &"crl", &"-inform", &"DER", &"-in", &crl_file, &"-out", &crl_pem,
    ])
    .assert_success();
    let out = verify(&crl_pem);
    let says_revoked =
        out.stdout.contains("certificate revoked") || out.stderr.contains("certificate revoked");
    assert!(!out.status.success() && says_revoked, "{out}");
}
