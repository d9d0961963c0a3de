//! ra-web killed between approval and issuance: certd is held inside
//! `C_Sign` (fault-injecting PKCS#11 module) while ra-web waits for it,
//! ra-web is SIGKILLed, certd finishes, and ra-web restarts. The request is
//! then issued once: certd answers ra-web's retry with the certificate it
//! signed for the same `request_id`, never a second one.

use certd_e2e::api::{make_csr, make_key, KeyAlg};
use certd_e2e::fault::{injected_fault_log, FaultMode};
use certd_e2e::web::{file_in, WebCa, CERTIFIER};
use certd_e2e::{poll_until, ready::START_LIMIT};

#[test]
fn a_kill_between_approval_and_issuance_issues_one_certificate() {
    let (mut ca, control, count) = WebCa::start_through_fault_module();
    let scratch = ca.dir.path().to_path_buf();
    let mut adm = ca.admin_session();
    adm.add_enterprise("Example Corp");
    adm.add_user("olivia", "officer", Some("1"));
    adm.add_user("oscar", "officer", Some("1"));
    let mut olivia = ca.officer("olivia");
    let mut oscar = ca.officer("oscar");
    let key = make_key(&scratch, "www", KeyAlg::P256);
    let csr = make_csr(
        &scratch,
        "www",
        &key,
        "/CN=www.example.com",
        &["DNS:www.example.com"],
    );
    let id = olivia.create_request(&file_in(&scratch, "www.csr", csr.pem.as_bytes()), "");
    olivia.get(&format!("/requests/{id}"));
    assert_eq!(
        olivia
            .post(&format!("/requests/{id}/validate"), &[("attest", "yes")])
            .status,
        303
    );
    let issued_before = ca.certd.issued(CERTIFIER);

    // Oscar approves; certd's signature is held; ra-web waits for certd.
    control.set(FaultMode::Stall);
    oscar.get(&format!("/requests/{id}"));
    let click = std::thread::spawn(move || oscar.post(&format!("/requests/{id}/approve"), &[]));
    poll_until(
        START_LIMIT,
        "certd's C_Sign to be held",
        || {
            injected_fault_log(&count)
                .iter()
                .any(|l| l == "stall C_Sign")
                .then_some(())
        },
        || ca.certd.log(),
    );

    // ra-web dies with the approval stored and the answer not received.
    ca.kill_ra_web();
    let answer = click.join().expect("the approving request ends");
    assert_ne!(
        answer.status, 303,
        "ra-web answered before it was killed: {answer}"
    );
    control.set(FaultMode::Pass);
    // certd finishes the certificate it was signing.
    poll_until(
        START_LIMIT,
        "certd to finish the held issuance",
        || (ca.certd.issued(CERTIFIER) == issued_before + 1).then_some(()),
        || ca.certd.log(),
    );

    // ra-web restarts: its worker retries the approved request, certd
    // answers with the certificate it issued.
    ca.start_ra_web();
    let mut oscar = ca.session();
    oscar.sign_in("oscar", certd_e2e::web::OWN_PASSWORD);

    poll_until(
        START_LIMIT,
        "the request to be issued after the restart",
        || (oscar.request_state(id) == "Issued").then_some(()),
        || certd_e2e::web::read_log(&ca.log),
    );
    assert_eq!(
        ca.certd.issued(CERTIFIER),
        issued_before + 1,
        "one certificate, not two"
    );
    let page = String::from_utf8_lossy(&oscar.get(&format!("/requests/{id}")).body).into_owned();
    assert!(
        page.contains("certd had issued it already"),
        "the timeline says it was a replay:\n{page}"
    );
}
