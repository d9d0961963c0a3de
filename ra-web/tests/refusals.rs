//! Bad input and forbidden actions against the real ra-web (beside the
//! demo CA, real certd and SoftHSM), each answered with a clear message and
//! the right HTTP status, nothing lost: a request stays in its state and can
//! be retried. Driven with curl, which shows statuses and headers.

use certd_e2e::api::{make_csr, make_key, CurlReply, KeyAlg};
use certd_e2e::web::{file_in, WebCa, WebSession, CERTIFIER};
use certd_e2e::{poll_until, ready::START_LIMIT};

use certd_e2e::web::{INITIAL_PASSWORD as INITIAL, OWN_PASSWORD as OWN};

fn body(r: &CurlReply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn location(r: &CurlReply) -> String {
    r.header("location").unwrap_or_default()
}

fn expect(r: &CurlReply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{r}");
    assert!(body(r).contains(needle), "{needle:?} in\n{}", body(r));
}

fn admin(ca: &WebCa) -> WebSession {
    ca.admin_session()
}

fn add_user(admin: &mut WebSession, user: &str, role: &str, enterprise: Option<&str>) {
    admin.add_user(user, role, enterprise)
}

fn officer(ca: &WebCa, user: &str) -> WebSession {
    ca.officer(user)
}

fn create(s: &mut WebSession, csr: &std::path::Path, notify: &str) -> u64 {
    s.create_request(csr, notify)
}

fn state(s: &mut WebSession, id: u64) -> String {
    s.request_state(id)
}

fn validate(s: &mut WebSession, id: u64) {
    s.get(&format!("/requests/{id}"));
    let r = s.post(&format!("/requests/{id}/validate"), &[("attest", "yes")]);
    assert_eq!(r.status, 303, "{r}");
}

#[test]
fn sign_in_sessions_and_headers_are_guarded() {
    let ca = WebCa::start();
    // Security headers and the session cookie's attributes.
    let mut anon = ca.session();
    let page = anon.get("/login");
    assert_eq!(page.status, 200, "{page}");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("frame-ancestors 'none'")
            && csp.contains("default-src 'none'")
            && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(page
        .header("strict-transport-security")
        .is_some_and(|v| v.contains("max-age=")));
    assert_eq!(
        page.header("referrer-policy").as_deref(),
        Some("no-referrer")
    );
    let cookie = page.header("set-cookie").unwrap_or_default();
    for attr in [
        "__Host-ra-web=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    // Pages need a session.
    let r = anon.get("/requests");
    assert_eq!((r.status, location(&r).as_str()), (303, "/login"), "{r}");

    // A form without its CSRF token, or with another one, does nothing.
    let (user, password) = ca.admin();
    let r = anon.post(
        "/login",
        &[
            ("username", &user),
            ("password", &password),
            ("csrf", "forged"),
        ],
    );
    expect(&r, 403, "did not come from this application");
    let mut other = ca.session();
    other.get("/login");
    let r = anon.post(
        "/login",
        &[
            ("username", &user),
            ("password", &password),
            ("csrf", &other.csrf.clone()),
        ],
    );
    assert_eq!(r.status, 403, "another session's token: {r}");
    assert_eq!(anon.get("/requests").status, 303, "still signed out");
    // A cross-site form post is refused before anything else.
    let r = certd_e2e::api::Curl::new(
        "POST",
        &format!("{}/login", ca.url),
        &ca.tls_ca(),
        ca.dir.path(),
    )
    .arg("-H")
    .arg("Sec-Fetch-Site: cross-site")
    .arg("--data")
    .arg("username=x")
    .send();
    assert_eq!(r.status, 403, "{r}");

    // Roles: an officer does not reach the admin's pages; an auditor reads
    // the event log but changes nothing.
    let mut adm = admin(&ca);
    adm.get("/admin/enterprises");
    assert_eq!(
        adm.post("/admin/enterprises", &[("name", "Example Corp")])
            .status,
        303
    );
    let dup = adm.post("/admin/enterprises", &[("name", "example corp")]);
    expect(&dup, 422, "exists already");
    add_user(&mut adm, "eve", "officer", Some("1"));
    add_user(&mut adm, "audrey", "auditor", None);
    adm.get("/admin/users");
    let weak = adm.post(
        "/admin/users",
        &[
            ("username", "bob"),
            ("display_name", "Bob"),
            ("role", "officer"),
            ("password", "short"),
        ],
    );
    expect(&weak, 422, "at least 12 characters");
    let mut eve = officer(&ca, "eve");
    expect(&eve.get("/admin/users"), 403, "needs the admin role");
    expect(&eve.get("/events"), 403, "for auditors and admins");
    let mut audrey = officer(&ca, "audrey");
    assert_eq!(audrey.get("/events").status, 200);
    audrey.get("/requests");
    expect(&audrey.get("/requests/new"), 403, "needs the officer role");

    // Lockout: five failures lock the account, even for the right password,
    // until an admin unlocks it.
    let mut s = ca.session();
    for i in 1..=5 {
        let r = s.sign_in("eve", "wrong wrong wrong");
        if i < 5 {
            expect(&r, 401, "Wrong user name or password.");
        } else {
            expect(&r, 403, "locked");
        }
    }
    expect(&s.sign_in("eve", OWN), 403, "locked");
    adm.get("/admin/users/eve");
    let r = adm.post(
        "/admin/users/eve",
        &[
            ("display_name", "eve"),
            ("role", "officer"),
            ("enterprise", "1"),
            ("unlock", "yes"),
        ],
    );
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(location(&s.sign_in("eve", OWN)), "/");
    // The sessions of a disabled account end at once.
    adm.get("/admin/users/eve");
    adm.post(
        "/admin/users/eve",
        &[
            ("display_name", "eve"),
            ("role", "officer"),
            ("enterprise", "1"),
            ("disabled", "yes"),
        ],
    );
    assert_eq!(location(&eve.get("/requests")), "/login");
    // The admin cannot lock themselves out.
    let (admin_user, _) = ca.admin();
    adm.get(&format!("/admin/users/{admin_user}"));
    let r = adm.post(
        &format!("/admin/users/{admin_user}"),
        &[("display_name", "x"), ("role", "officer")],
    );
    expect(&r, 422, "cannot take the admin role from yourself");

    // Each of these is in the event log, with the source address.
    let csv = audrey.get("/events.csv");
    assert_eq!(csv.status, 200);
    assert!(csv.content_type.starts_with("text/csv"), "{csv}");
    let text = body(&csv);
    for kind in [
        "sign_in_failed",
        "account_locked",
        "user_changed",
        "user_created",
        "enterprise_created",
        "sign_in,",
    ] {
        assert!(text.contains(kind), "{kind} in\n{text}");
    }
    assert!(text.contains("127.0.0.1"), "source addresses in\n{text}");

    // A second factor required by the admin: enrolment is forced, then
    // every sign-in asks for a code, each code good once.
    adm.get("/admin/settings");
    let r = adm.post(
        "/admin/settings",
        &[("require_totp", "yes"), ("offered.tls-server", "yes")],
    );
    assert_eq!(r.status, 303, "{r}");
    let r = adm.get("/requests");
    assert_eq!(location(&r), "/account/totp", "the admin too: {r}");
    add_user_after_totp(&ca, "tom");
    let mut tom = ca.session();
    tom.sign_in("tom", INITIAL);
    tom.get("/account");
    tom.post(
        "/account/password",
        &[("current", INITIAL), ("new", OWN), ("repeat", OWN)],
    );
    assert_eq!(location(&tom.get("/requests")), "/account/totp");
    let totp = totp_of_enrolment_page(&mut tom);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    expect(
        &tom.post("/account/totp", &[("code", "123456x")]),
        422,
        "not right",
    );
    let r = tom.post(
        "/account/totp",
        &[("code", &totp.generate(now()).to_string())],
    );
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(tom.get("/requests").status, 200, "enrolled");
    let mut tom2 = ca.session();
    let r = tom2.sign_in("tom", OWN);
    assert_eq!(location(&r), "/login/totp", "{r}");
    assert_eq!(
        location(&tom2.get("/requests")),
        "/login",
        "no session before the code"
    );
    tom2.get("/login/totp");
    expect(
        &tom2.post("/login/totp", &[("code", "000000")]),
        401,
        "Wrong or already used code",
    );
    // The next step's code (the current one was spent on enrolment).
    let code = totp.generate(now() + 30).to_string();
    assert_eq!(location(&tom2.post("/login/totp", &[("code", &code)])), "/");
    assert_eq!(tom2.get("/requests").status, 200);
    let mut tom3 = ca.session();
    tom3.sign_in("tom", OWN);
    tom3.get("/login/totp");
    expect(
        &tom3.post("/login/totp", &[("code", &code)]),
        401,
        "already used",
    );
}

/// The TOTP generator of the secret that `/account/totp` shows.
fn totp_of_enrolment_page(s: &mut WebSession) -> totp_rs::Totp {
    let page = body(&s.get("/account/totp"));
    let secret = page
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("the secret on the page")
        .to_string();
    totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(&secret).expect("base32"))
        .build()
        .expect("a TOTP")
}

/// An officer created by a second admin session (the first must enrol a
/// second factor first).
fn add_user_after_totp(ca: &WebCa, user: &str) {
    let (admin_user, password) = ca.admin();
    let mut s = ca.session();
    s.sign_in(&admin_user, &password);
    let totp = totp_of_enrolment_page(&mut s);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert_eq!(
        s.post(
            "/account/totp",
            &[("code", &totp.generate(now).to_string())]
        )
        .status,
        303
    );
    add_user(&mut s, user, "officer", Some("1"));
}

#[test]
fn requests_refuse_bad_input_and_keep_dual_control() {
    let mut ca = WebCa::start();
    let scratch = ca.dir.path().to_path_buf();
    let mut adm = admin(&ca);
    adm.get("/admin/enterprises");
    adm.post("/admin/enterprises", &[("name", "Example Corp")]);
    adm.post("/admin/enterprises", &[("name", "Other Inc")]);
    for (u, e) in [("olivia", "1"), ("oscar", "1"), ("otto", "1"), ("eve", "2")] {
        add_user(&mut adm, u, "officer", Some(e));
    }
    let mut olivia = officer(&ca, "olivia");
    let mut oscar = officer(&ca, "oscar");
    let mut otto = officer(&ca, "otto");
    let mut eve = officer(&ca, "eve");

    // What is not a usable CSR is refused with the reason, nothing created.
    olivia.get("/requests/new");
    let not_csr = file_in(&scratch, "notes.txt", b"hello, this is not a CSR");
    let r = olivia.post_multipart(
        "/requests/new",
        &[
            ("enterprise", "1"),
            ("profile", "tls-server"),
            ("action", "submit"),
        ],
        Some(("csr_file", &not_csr)),
    );
    expect(&r, 422, "id=\"csr-error\"");
    let big = file_in(&scratch, "big.csr", &vec![b'A'; 300 * 1024]);
    let r = olivia.post_multipart(
        "/requests/new",
        &[
            ("enterprise", "1"),
            ("profile", "tls-server"),
            ("action", "submit"),
        ],
        Some(("csr_file", &big)),
    );
    assert_eq!(r.status, 413, "{r}");
    let weak_key = make_key(&scratch, "weak", KeyAlg::Rsa1024);
    let weak = make_csr(
        &scratch,
        "weak",
        &weak_key,
        "/CN=weak.example.com",
        &["DNS:weak.example.com"],
    );
    let weak_file = file_in(&scratch, "weak.csr", weak.pem.as_bytes());
    olivia.get("/requests/new");
    let r = olivia.post_multipart(
        "/requests/new",
        &[
            ("enterprise", "1"),
            ("profile", "tls-server"),
            ("action", "submit"),
        ],
        Some(("csr_file", &weak_file)),
    );
    expect(&r, 422, "certd would refuse this CSR");
    assert!(body(&r).contains("weak_rsa_key"), "{}", body(&r));
    let key = make_key(&scratch, "www", KeyAlg::P256);
    let good = make_csr(
        &scratch,
        "www",
        &key,
        "/CN=www.example.com",
        &["DNS:www.example.com"],
    );
    let mut bad_sig = good.der.clone();
    let last = bad_sig.len() - 3;
    bad_sig[last] ^= 0x55;
    let bad_sig_file = file_in(&scratch, "badsig.der", &bad_sig);
    olivia.get("/requests/new");
    let r = olivia.post_multipart(
        "/requests/new",
        &[
            ("enterprise", "1"),
            ("profile", "tls-server"),
            ("action", "submit"),
        ],
        Some(("csr_file", &bad_sig_file)),
    );
    assert_eq!(r.status, 422, "{r}");
    let good_file = file_in(&scratch, "www.csr", good.pem.as_bytes());
    olivia.get("/requests/new");
    let r = olivia.post_multipart(
        "/requests/new",
        &[
            ("enterprise", "1"),
            ("profile", "tls-server"),
            ("notify_email", "not an address"),
            ("action", "submit"),
        ],
        Some(("csr_file", &good_file)),
    );
    expect(&r, 422, "correct the address");
    olivia.get("/requests/new");
    let r = olivia.post_multipart(
        "/requests/new",
        &[
            ("enterprise", "2"),
            ("profile", "tls-server"),
            ("action", "submit"),
        ],
        Some(("csr_file", &good_file)),
    );
    assert_eq!(r.status, 404, "another enterprise: {r}");
    assert!(
        !body(&olivia.get("/requests")).contains("/requests/1\""),
        "nothing was created"
    );

    // A request; edits are checked against certd's name rules.
    let id = create(&mut olivia, &good_file, "requester@example.com");
    assert_eq!(state(&mut olivia, id), "Pending validation");
    let r = olivia.post(
        &format!("/requests/{id}/edit"),
        &[
            ("common_name", "www.example.com"),
            ("dns", "www..example.com"),
        ],
    );
    expect(&r, 422, "id=\"edit-error\"");
    let r = olivia.post(
        &format!("/requests/{id}/edit"),
        &[("dns", "www.example.com"), ("email", "x@elsewhere.org")],
    );
    expect(&r, 422, "is not among the DNS names");
    let r = olivia.post(
        &format!("/requests/{id}/edit"),
        &[
            ("common_name", "www.example.com"),
            ("dns", "www.example.com\napi.example.com"),
            ("validity_days", "90"),
        ],
    );
    assert_eq!(r.status, 303, "{r}");
    // Another enterprise's officer does not see it.
    expect(&eve.get(&format!("/requests/{id}")), 404, "not found");
    eve.get("/requests");
    expect(
        &eve.post(&format!("/requests/{id}/validate"), &[("attest", "yes")]),
        404,
        "not found",
    );
    // Validation must be attested explicitly.
    olivia.get(&format!("/requests/{id}"));
    expect(
        &olivia.post(&format!("/requests/{id}/validate"), &[]),
        400,
        "tick the statement",
    );
    validate(&mut olivia, id);
    assert_eq!(state(&mut olivia, id), "Pending approval");

    // Dual control: the requester cannot approve; a forged form changes
    // nothing; the approver cannot approve twice.
    expect(
        &olivia.post(&format!("/requests/{id}/approve"), &[]),
        403,
        "another officer must approve",
    );
    oscar.get(&format!("/requests/{id}"));
    expect(
        &oscar.post(&format!("/requests/{id}/approve"), &[("csrf", "forged")]),
        403,
        "form has expired",
    );
    assert_eq!(state(&mut oscar, id), "Pending approval");

    // certd locked: the approval stands, issuance waits with the reason.
    ca.certd.deactivate(CERTIFIER);
    let r = oscar.post(&format!("/requests/{id}/approve"), &[]);
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(state(&mut oscar, id), "Approved");
    let page = body(&oscar.get(&format!("/requests/{id}")));
    assert!(
        page.contains("certifier_locked"),
        "the reason is shown:\n{page}"
    );
    expect(
        &oscar.post(&format!("/requests/{id}/approve"), &[]),
        409,
        "not pending approval",
    );
    // ra-web restarts meanwhile: nothing is lost, sessions included.
    ca.restart_ra_web();
    assert_eq!(state(&mut oscar, id), "Approved");
    ca.certd.activate(CERTIFIER);
    let issued_before = ca.certd.issued(CERTIFIER);
    oscar.get(&format!("/requests/{id}"));
    let r = oscar.post(&format!("/requests/{id}/issue"), &[]);
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(state(&mut oscar, id), "Issued");
    // A second click issues nothing more.
    assert_eq!(
        oscar.post(&format!("/requests/{id}/issue"), &[]).status,
        303
    );
    assert_eq!(state(&mut oscar, id), "Issued");
    assert_eq!(ca.certd.issued(CERTIFIER), issued_before + 1);
    let page = body(&oscar.get(&format!("/requests/{id}")));
    for dl in ["certificate.pem", "certificate.der", "certificate.p7b"] {
        let r = oscar.get(&format!("/requests/{id}/{dl}"));
        assert_eq!(r.status, 200, "{dl}: {r}");
        assert!(
            r.header("content-disposition")
                .is_some_and(|v| v.contains("attachment")),
            "{dl}"
        );
        assert!(page.contains(dl));
    }
    let der = oscar.get(&format!("/requests/{id}/certificate.der"));
    assert_eq!(der.content_type, "application/pkix-cert");
    let p7b = oscar.get(&format!("/requests/{id}/certificate.p7b"));
    let p7b_file = file_in(&scratch, "c.p7b", &p7b.body);
    let certs = certd_e2e::web::openssl(&[
        &"pkcs7",
        &"-inform",
        &"DER",
        &"-in",
        &p7b_file,
        &"-print_certs",
    ]);
    certs.assert_success();
    assert_eq!(
        certs.stdout.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and CA: {}",
        certs.stdout
    );

    // Two approvals required by the admin's setting: distinct officers.
    adm.get("/admin/settings");
    let r = adm.post(
        "/admin/settings",
        &[
            ("offered.tls-server", "yes"),
            ("approval.tls-server", "manual"),
            ("approvals.tls-server", "2"),
            ("offered.tls-client", "yes"),
            ("offered.smime-mailbox", "yes"),
            ("offered.smime-sponsor", "yes"),
        ],
    );
    assert_eq!(r.status, 303, "{r}");
    let key2 = make_key(&scratch, "api", KeyAlg::P256);
    let csr2 = make_csr(
        &scratch,
        "api",
        &key2,
        "/CN=api.example.com",
        &["DNS:api.example.com"],
    );
    let file2 = file_in(&scratch, "api.csr", csr2.pem.as_bytes());
    let id2 = create(&mut olivia, &file2, "requester@example.com");
    validate(&mut olivia, id2);
    oscar.get(&format!("/requests/{id2}"));
    assert_eq!(
        oscar.post(&format!("/requests/{id2}/approve"), &[]).status,
        303
    );
    assert_eq!(state(&mut oscar, id2), "Pending approval");
    expect(
        &oscar.post(&format!("/requests/{id2}/approve"), &[]),
        409,
        "approved this request already",
    );
    otto.get(&format!("/requests/{id2}"));
    assert_eq!(
        otto.post(&format!("/requests/{id2}/approve"), &[]).status,
        303
    );
    assert_eq!(state(&mut otto, id2), "Issued");

    // Rejection needs a reason, which is mailed to the requester.
    let key3 = make_key(&scratch, "old", KeyAlg::P256);
    let csr3 = make_csr(
        &scratch,
        "old",
        &key3,
        "/CN=old.example.com",
        &["DNS:old.example.com"],
    );
    let file3 = file_in(&scratch, "old.csr", csr3.pem.as_bytes());
    let id3 = create(&mut olivia, &file3, "someone@example.com");
    oscar.get(&format!("/requests/{id3}"));
    expect(
        &oscar.post(&format!("/requests/{id3}/reject"), &[("reason", " ")]),
        400,
        "give a reason",
    );
    assert_eq!(
        oscar
            .post(
                &format!("/requests/{id3}/reject"),
                &[("reason", "host is retired")]
            )
            .status,
        303
    );
    assert_eq!(state(&mut oscar, id3), "Rejected");
    expect(
        &oscar.post(&format!("/requests/{id3}/cancel"), &[]),
        409,
        "can no longer be cancelled",
    );
    poll_until(
        START_LIMIT,
        "the rejection mail",
        || {
            ca.outbox()
                .iter()
                .any(|m| m.contains("host is retired"))
                .then_some(())
        },
        || format!("{:?}", ca.outbox()),
    );

    // A guessed pickup token shows nothing.
    let mut anon = ca.session();
    expect(
        &anon.get("/pickup/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        404,
        "not valid",
    );

    // Search by pickup ID and by name, within the officer's enterprises.
    let page = body(&olivia.get(&format!("/requests/{id2}")));
    let pickup = page
        .split("id=\"pickup-id\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("a pickup ID")
        .to_string();
    let found = body(&olivia.get(&format!("/requests?q={pickup}")));
    assert!(
        found.contains(&format!("/requests/{id2}\""))
            && !found.contains(&format!("/requests/{id}\"")),
        "{found}"
    );
    let found = body(&olivia.get("/requests?q=api.example.com"));
    assert!(
        found.contains(&format!("/requests/{id2}\""))
            && found.contains(&format!("/requests/{id}\"")),
        "{found}"
    );
    let found = body(&eve.get("/requests?q=api.example.com"));
    assert!(found.contains("No requests match."), "{found}");
    let issued = body(&olivia.get("/requests?state=issued"));
    assert!(
        issued.contains(&format!("/requests/{id2}\""))
            && !issued.contains(&format!("/requests/{id3}\"")),
        "{issued}"
    );
}
