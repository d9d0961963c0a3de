//! Notifications through a real SMTP server: ra-web delivers to an aiosmtpd
//! sink over STARTTLS (verified against the demo's TLS CA); when the relay
//! does not answer, the mail stays queued with the reason on the request's
//! page, and is delivered once the relay is back. Nothing is lost.

use certd_e2e::api::{make_csr, make_key, KeyAlg};
use certd_e2e::web::{file_in, SmtpSink, WebCa};
use certd_e2e::{poll_until, ready::START_LIMIT};

fn page(s: &mut certd_e2e::web::WebSession, path: &str) -> String {
    String::from_utf8_lossy(&s.get(path).body).into_owned()
}

#[test]
fn mail_goes_by_smtp_with_starttls_and_waits_out_a_dead_relay() {
    let sink_dir = tempfile::tempdir().expect("tempdir");
    let mut sink: Option<SmtpSink> = None;
    let ca = WebCa::start_with(|env| {
        let tls = env
            .path("CERTD_TLS_CA")
            .parent()
            .expect("the tls directory")
            .to_path_buf();
        // The relay's certificate: the demo's, for 127.0.0.1, by its TLS CA.
        let s = SmtpSink::start(
            sink_dir.path(),
            Some((tls.join("ra-web-server.pem"), tls.join("ra-web-server.key"))),
        );
        let config = env.path("RA_WEB_CONFIG");
        let text = std::fs::read_to_string(&config).expect("ra-web's configuration");
        let outbox = "outbox_dir = \"outbox\"\n";
        assert!(text.contains(outbox), "{text}");
        let smtp = format!(
            "retry_base_seconds = 1\n\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"starttls\"\nca_file = {:?}\ntimeout_seconds = 3\n",
            s.port(),
            env.path("CERTD_TLS_CA").display().to_string()
        );
        std::fs::write(&config, text.replace(outbox, &smtp)).expect("configuration written");
        sink = Some(s);
    });
    let mut sink = sink.expect("the sink started");
    let scratch = ca.dir.path().to_path_buf();
    let mut adm = ca.admin_session();
    adm.add_enterprise("Example Corp");
    adm.add_user("olivia", "officer", Some("1"));
    let mut olivia = ca.officer("olivia");

    // Delivered over STARTTLS (the sink takes no mail before it).
    let key = make_key(&scratch, "a", KeyAlg::P256);
    let csr = make_csr(
        &scratch,
        "a",
        &key,
        "/CN=a.example.com",
        &["DNS:a.example.com"],
    );
    let first = olivia.create_request(
        &file_in(&scratch, "a.csr", csr.pem.as_bytes()),
        "alice@example.com",
    );
    let mails = poll_until(
        START_LIMIT,
        "the first mail at the relay",
        || {
            let m = sink.messages();
            (!m.is_empty()).then_some(m)
        },
        String::new,
    );
    assert!(
        mails[0].contains("X-Envelope-To: alice@example.com"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("received"), "{}", mails[0]);
    poll_until(
        START_LIMIT,
        "the first mail shown as sent",
        || {
            page(&mut olivia, &format!("/requests/{first}"))
                .contains(">sent<")
                .then_some(())
        },
        || page(&mut adm, &format!("/requests/{first}")),
    );

    // The relay stops answering: the mail waits, the page says why.
    sink.stop();
    let key = make_key(&scratch, "b", KeyAlg::P256);
    let csr = make_csr(
        &scratch,
        "b",
        &key,
        "/CN=b.example.com",
        &["DNS:b.example.com"],
    );
    let second = olivia.create_request(
        &file_in(&scratch, "b.csr", csr.pem.as_bytes()),
        "bob@example.com",
    );
    let shown = poll_until(
        START_LIMIT,
        "the second mail shown as retrying",
        || {
            let p = page(&mut olivia, &format!("/requests/{second}"));
            p.contains("queued, retrying").then_some(p)
        },
        || page(&mut adm, &format!("/requests/{second}")),
    );
    assert!(shown.contains("bob@example.com"), "{shown}");
    assert_eq!(sink.messages().len(), 1);

    // Back: the queued mail is delivered by the retry, once.
    sink.resume();
    let mails = poll_until(
        START_LIMIT,
        "the second mail at the relay",
        || {
            let m = sink.messages();
            (m.len() >= 2).then_some(m)
        },
        || page(&mut adm, &format!("/requests/{second}")),
    );
    assert!(
        mails[1].contains("X-Envelope-To: bob@example.com"),
        "{}",
        mails[1]
    );
    poll_until(
        START_LIMIT,
        "the second mail shown as sent",
        || {
            page(&mut olivia, &format!("/requests/{second}"))
                .contains(">sent<")
                .then_some(())
        },
        || page(&mut adm, &format!("/requests/{second}")),
    );
    assert_eq!(sink.messages().len(), 2, "delivered once");
    // The event log has the deferral and the delivery.
    let events = page(&mut adm, "/events?kind=mail_deferred");
    assert!(events.contains("mail_deferred"), "{events}");
}
