//! End-to-end tests of revocation and CRLs through the real `certd` over
//! mutual TLS: reasons, status and time, the refusals, and the CRL as
//! `openssl` and pkilint see it: signed by the certifier, listing every
//! revoked serial with its reason, its number growing, and a burst of
//! revocations coalesced into few CRLs.
#![forbid(unsafe_code)]

use certd_api::{CertStatus, CertdClient, ErrorCode, IssueRequest};
use certd_e2e::api::{
    error_code, lint_errors, make_csr, make_key, openssl, ApiCaBuilder, ApiDaemon, CrlView, KeyAlg,
    Lint, SubscriberKey, API_DEADLINE,
};
use certd_e2e::api::{tls_server_grant, TLS_SERVER_PROFILE};
use certd_e2e::poll_until;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

const CONFIG: &str = TLS_SERVER_PROFILE;

fn grant(extra: &str) -> String {
    tls_server_grant(extra)
}

/// A p256 certifier `ca` and the RAs `ra-main` (may revoke) and
/// `ra-noright` (may not).
fn start(dir: &Path) -> ApiDaemon {
    ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml(CONFIG)
        .ra("ra-main", &grant("may_revoke = true"))
        .ra("ra-noright", &grant(""))
        .build()
        .start()
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// Issues `n` tls-server certificates as `ra`; returns their serials and
/// PEM files.
fn issue_many(
    d: &ApiDaemon,
    dir: &Path,
    key: &SubscriberKey,
    ra: &str,
    n: usize,
) -> Vec<(String, PathBuf)> {
    let client = d.client(ra);
    let csr = make_csr(dir, "csr", key, "/", &[]);
    (0..n)
        .map(|i| {
            let host = format!("{ra}-{i}.example.com");
            let req = IssueRequest {
                request_id: host.clone(),
                certifier: None,
                profile: "tls-server".into(),
                csr: csr.pem.clone(),
                subject: None,
                san: Some(certd_api::SubjectAltNames {
                    dns: vec![host.clone()],
                    ..Default::default()
                }),
                not_after: None,
                approval: None,
            };
            let resp = d
                .block_on(client.issue(&req))
                .unwrap_or_else(|e| panic!("issue {host}: {e}\n{}", d.log()));
            let pem = dir.join(format!("{host}.pem"));
            std::fs::write(&pem, &resp.certificate).expect("write the certificate");
            (resp.serial, pem)
        })
        .collect()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not RFC 3339: {e}"))
        .unix_timestamp()
}

fn crl_of(d: &ApiDaemon, client: &CertdClient, path: &Path) -> CrlView {
    let der = d
        .block_on(client.crl("ca"))
        .unwrap_or_else(|e| panic!("GET the CRL: {e}\n{}", d.log()));
    CrlView::from_der(path, &der)
}

/// Polls the CRL until `ok` holds (CRLs follow revocations after about
/// `coalesce_seconds`).
fn crl_until(
    d: &ApiDaemon,
    client: &CertdClient,
    path: &Path,
    what: &str,
    ok: impl Fn(&CrlView) -> bool,
) -> CrlView {
    let last = std::cell::RefCell::new(String::new());
    poll_until(
        API_DEADLINE,
        what,
        || {
            let crl = crl_of(d, client, path);
            if ok(&crl) {
                Some(crl)
            } else {
                *last.borrow_mut() = crl.text;
                None
            }
        },
        || format!("last CRL:\n{}\n{}", last.borrow(), d.log()),
    )
}

fn crl_number_in_status(d: &ApiDaemon) -> Option<u64> {
    d.certifier_status("ca")["crl_number"].as_u64()
}

#[test]
fn revocation_records_reason_and_time_and_refuses_what_it_must() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = start(dir);
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let certs = issue_many(&d, dir, &key, "ra-main", 7);
    let own = issue_many(&d, dir, &key, "ra-noright", 1);
    let main = d.client("ra-main");
    let reasons = [
        "keyCompromise",
        "superseded",
        "unspecified",
        "cessationOfOperation",
        "affiliationChanged",
        "privilegeWithdrawn",
    ];
    for ((serial, _), reason) in certs.iter().zip(reasons) {
        let before = now();
        let info = d
            .block_on(main.revoke(serial, reason))
            .unwrap_or_else(|e| panic!("revoke {serial} ({reason}): {e}"));
        let after = now();
        assert_eq!(info.serial, *serial);
        assert_eq!(info.status, CertStatus::Revoked);
        assert_eq!(info.revocation_reason.as_deref(), Some(reason));
        let at = unix(info.revoked_at.as_deref().expect("revoked_at"));
        assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
        let looked_up = d.block_on(main.get(serial)).expect("get");
        assert_eq!(looked_up, info);
    }

    // A second revocation is refused and changes nothing.
    let (first, _) = &certs[0];
    let again = d
        .curl(
            "ra-main",
            "POST",
            &format!("/v1/certificates/{first}/revoke"),
        )
        .json(&serde_json::json!({"reason": "superseded"}))
        .send();
    assert_eq!(again.status, 409, "{again}");
    assert_eq!(again.error_code().as_deref(), Some("already_revoked"));
    assert_eq!(
        error_code(d.block_on(main.revoke(first, "keyCompromise"))),
        ErrorCode::AlreadyRevoked
    );
    assert_eq!(
        d.block_on(main.get(first))
            .expect("get")
            .revocation_reason
            .as_deref(),
        Some("keyCompromise")
    );

    // Unknown serials, an RA without the right, an unknown reason.
    let unknown = d
        .curl(
            "ra-main",
            "POST",
            "/v1/certificates/0123456789abcdef0123456789abcdef/revoke",
        )
        .json(&serde_json::json!({"reason": "keyCompromise"}))
        .send();
    assert_eq!(unknown.status, 404, "{unknown}");
    assert_eq!(unknown.error_code().as_deref(), Some("not_found"));
    assert_eq!(
        error_code(d.block_on(main.revoke("not-a-serial", "keyCompromise"))),
        ErrorCode::NotFound
    );
    let noright = d
        .curl(
            "ra-noright",
            "POST",
            &format!("/v1/certificates/{}/revoke", own[0].0),
        )
        .json(&serde_json::json!({"reason": "keyCompromise"}))
        .send();
    assert_eq!(noright.status, 403, "{noright}");
    assert_eq!(noright.error_code().as_deref(), Some("not_authorized"));
    let (last, _) = &certs[6];
    assert_eq!(
        error_code(d.block_on(main.revoke(last, "certificateHold"))),
        ErrorCode::BadRequest
    );
    assert_eq!(
        error_code(d.block_on(main.revoke(last, "removeFromCRL"))),
        ErrorCode::BadRequest
    );
    assert_eq!(
        d.block_on(main.get(last)).expect("get").status,
        CertStatus::Valid
    );
    assert_eq!(
        d.block_on(d.client("ra-noright").get(&own[0].0))
            .expect("get")
            .status,
        CertStatus::Valid
    );

    let status = d.certifier_status("ca");
    assert_eq!(status["certificates_revoked"], 6, "{status:#}");
    assert_eq!(status["certificates_issued"], 8, "{status:#}");
    let revoked = d.audit_of("revoked");
    assert_eq!(revoked.len(), 6);
    for (entry, ((serial, _), reason)) in revoked.iter().zip(certs.iter().zip(reasons)) {
        assert_eq!(entry["actor"], "ra-main", "{entry:#}");
        assert_eq!(entry["detail"]["serial"], serial.as_str(), "{entry:#}");
        assert_eq!(entry["detail"]["reason"], reason, "{entry:#}");
    }
    d.verify_audit();
}

#[test]
fn the_crl_lists_revocations_with_reasons_verifies_and_lints() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = start(dir);
    let root = d.ca.certifier_pem("ca").to_path_buf();
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let certs = issue_many(&d, dir, &key, "ra-main", 4);
    let main = d.client("ra-main");
    let crl_path = dir.join("ca.crl");

    let first = crl_of(&d, &main, &crl_path);
    first.assert_verifies(&root);
    assert!(first.entries.is_empty(), "{}", first.text);
    let raw = d
        .curl("ra-main", "GET", "/v1/certifiers/ca/crl")
        .arg("--http1.1")
        .send();
    assert_eq!(raw.status, 200, "{raw}");
    assert_eq!(raw.content_type, "application/pkix-crl");

    let revocations = [
        ("keyCompromise", Some("Key Compromise")),
        ("superseded", Some("Superseded")),
        // RFC 5280 / BR: unspecified is expressed by leaving the reason out.
        ("unspecified", None),
    ];
    for ((serial, _), (reason, _)) in certs.iter().zip(revocations) {
        d.block_on(main.revoke(serial, reason))
            .unwrap_or_else(|e| panic!("revoke {serial}: {e}"));
    }
    let wanted: Vec<String> = certs[..3]
        .iter()
        .map(|(s, _)| certd_e2e::api::normalize_serial(s))
        .collect();
    let crl = crl_until(
        &d,
        &main,
        &crl_path,
        "the three revocations on the CRL",
        |c| wanted.iter().all(|s| c.entries.contains_key(s)),
    );
    assert!(
        crl.number > first.number,
        "{} > {}",
        crl.number,
        first.number
    );
    crl.assert_verifies(&root);
    assert_eq!(crl.entries.len(), 3, "{}", crl.text);
    for (serial, (_, text)) in wanted.iter().zip(revocations) {
        assert_eq!(
            crl.entries[serial].as_deref(),
            text,
            "{serial}\n{}",
            crl.text
        );
    }
    assert!(
        !crl.entries
            .contains_key(&certd_e2e::api::normalize_serial(&certs[3].0)),
        "{}",
        crl.text
    );

    // Relying parties see the revocation: openssl verify with the CRL.
    let crl_pem = dir.join("ca.crl.pem");
    openssl(&[
        &"crl", &"-inform", &"DER", &"-in", &crl_path, &"-out", &crl_pem,
    ]);
    let verify = |leaf: &Path| {
        let mut cmd = certd_e2e::api::tool("openssl");
        cmd.args(["verify", "-x509_strict", "-crl_check", "-CAfile"])
            .arg(&root)
            .arg("-CRLfile")
            .arg(&crl_pem)
            .arg(leaf);
        certd_e2e::run(&mut cmd)
    };
    let revoked = verify(&certs[0].1);
    assert!(
        !revoked.status.success() && revoked.stderr.contains("certificate revoked"),
        "{revoked}"
    );
    verify(&certs[3].1).assert_success();

    let problems = lint_errors(&[(Lint::CrlBr, &crl_path), (Lint::CrlPkix, &crl_path)]);
    assert!(
        problems.is_empty(),
        "pkilint found errors:\n{}",
        problems.join("\n")
    );

    // certd status shows the number of the CRL it serves.
    poll_until(
        API_DEADLINE,
        "status crl_number to match the served CRL",
        || {
            let served = crl_of(&d, &main, &crl_path).number;
            (crl_number_in_status(&d) == Some(served)).then_some(())
        },
        || format!("{:#}", d.status()),
    );

    // A new revocation makes a new CRL with a higher number.
    let before = crl_of(&d, &main, &crl_path).number;
    d.block_on(main.revoke(&certs[3].0, "cessationOfOperation"))
        .expect("revoke the fourth");
    let fourth = certd_e2e::api::normalize_serial(&certs[3].0);
    let crl = crl_until(&d, &main, &crl_path, "the fourth revocation", |c| {
        c.entries.contains_key(&fourth)
    });
    assert!(crl.number > before, "{} > {before}", crl.number);
    assert_eq!(
        crl.entries[&fourth].as_deref(),
        Some("Cessation Of Operation")
    );
    assert_eq!(crl.entries.len(), 4);
    crl.assert_verifies(&root);
    assert_eq!(d.certifier_status("ca")["certificates_revoked"], 4);
    let issued = d.audit_of("crl_issued");
    assert!(
        issued
            .iter()
            .any(|e| e["detail"]["crl_number"] == crl.number && e["detail"]["entries"] == 4),
        "{issued:#?}"
    );
}

#[test]
fn twenty_revocations_while_locked_land_in_the_one_crl_made_at_activation() {
    // Revocation needs no signature, so it goes on while the certifier is
    // locked; the CRL cannot be signed then. At activation certd makes one
    // CRL that holds every revocation made meanwhile. (How revocations
    // made while active are coalesced depends on time, which an end-to-end
    // test cannot hold still; here nothing does.)
    let tmp = tempdir();
    let dir = tmp.path();
    let d = start(dir);
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let certs = issue_many(&d, dir, &key, "ra-main", 20);
    let main = d.client("ra-main");
    let crl_path = dir.join("ca.crl");

    // The CRL made at start is in place and certd reports its number.
    let start_number = poll_until(
        API_DEADLINE,
        "the first CRL",
        || {
            let served = crl_of(&d, &main, &crl_path).number;
            (crl_number_in_status(&d) == Some(served)).then_some(served)
        },
        || format!("{:#}", d.status()),
    );
    d.deactivate("ca");
    let crls_before = d.audit_of("crl_issued").len();

    let serials: Vec<String> = certs.iter().map(|(s, _)| s.clone()).collect();
    let results = d.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for serial in serials.clone() {
            let client = main.clone();
            set.spawn(async move { (client.revoke(&serial, "keyCompromise").await, serial) });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            out.push(done.expect("a revocation task"));
        }
        out
    });
    for (result, serial) in &results {
        assert!(result.is_ok(), "revoke {serial}: {result:?}");
    }
    assert_eq!(d.certifier_status("ca")["certificates_revoked"], 20);
    assert_eq!(
        d.audit_of("crl_issued").len(),
        crls_before,
        "no CRL is signed while the certifier is locked"
    );
    assert_eq!(
        crl_of(&d, &main, &crl_path).number,
        start_number,
        "the CRL from before is still served"
    );

    d.activate("ca");
    let wanted: Vec<String> = serials
        .iter()
        .map(|s| certd_e2e::api::normalize_serial(s))
        .collect();
    let crl = crl_until(&d, &main, &crl_path, "all twenty revocations", |c| {
        wanted.iter().all(|s| c.entries.contains_key(s))
    });
    crl.assert_verifies(d.ca.certifier_pem("ca"));
    assert_eq!(crl.entries.len(), 20);
    // The first CRL after activation already holds all twenty.
    let first_after = d
        .audit_of("crl_issued")
        .into_iter()
        .nth(crls_before)
        .expect("a crl_issued entry after activation");
    assert_eq!(
        (
            first_after["detail"]["crl_number"].as_u64(),
            first_after["detail"]["entries"].as_u64()
        ),
        (Some(start_number + 1), Some(20)),
        "{first_after:#}"
    );
}

#[test]
fn ca_compromise_is_not_a_revocation_reason_for_subscriber_certificates() {
    // TLS BR 7.2.2: a CRL entry for a subscriber certificate may not carry
    // cACompromise, and the API documents the reasons it takes
    // (certd_api::RevokeRequest) without it.
    let tmp = tempdir();
    let dir = tmp.path();
    let d = start(dir);
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let certs = issue_many(&d, dir, &key, "ra-main", 1);
    let main = d.client("ra-main");
    let result = d.block_on(main.revoke(&certs[0].0, "caCompromise"));
    if result.is_ok() {
        let crl_path = dir.join("ca.crl");
        let serial = certd_e2e::api::normalize_serial(&certs[0].0);
        let crl = crl_until(&d, &main, &crl_path, "the revocation on the CRL", |c| {
            c.entries.contains_key(&serial)
        });
        let problems = lint_errors(&[(Lint::CrlBr, &crl.path)]);
        panic!(
            "certd revoked a subscriber certificate for caCompromise (expected bad_request); \
             the CRL now holds {:?}; pkilint -p BR:\n{}",
            crl.entries[&serial],
            problems.join("\n")
        );
    }
    assert_eq!(error_code(result), ErrorCode::BadRequest);
}

/// A key revoked for keyCompromise is never certified again: refused with
/// `key_blocked` at the certifier that revoked it and at another, also
/// after certd is killed and started again (the block is replayed from the
/// journal); a revocation for another reason blocks nothing, and a new key
/// is certified.
#[test]
fn a_key_revoked_for_key_compromise_is_refused_everywhere_and_after_a_restart() {
    let tmp = tempdir();
    let dir = tmp.path();
    let grant = "certifiers = [\"ca\", \"ca2\"]\nprofiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]\nmay_revoke = true\n";
    let mut d = ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .certifier("ca2", "p256")
        .toml(CONFIG)
        .ra("ra-main", grant)
        .build()
        .start();
    let client = d.client("ra-main");
    let compromised = make_key(dir, "compromised", KeyAlg::P256);
    let superseded = make_key(dir, "superseded", KeyAlg::P256);
    let request = |id: &str, certifier: &str, key: &SubscriberKey| {
        let csr = make_csr(dir, id, key, "/", &[]);
        let mut req = IssueRequest::new(id, "tls-server", csr.pem);
        req.certifier = Some(certifier.into());
        req.san = Some(certd_api::SubjectAltNames {
            dns: vec!["www.example.com".into()],
            ..Default::default()
        });
        req
    };
    let issue = |d: &ApiDaemon, req: &IssueRequest| {
        d.block_on(d.client("ra-main").issue(req))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", req.request_id, d.log()))
            .serial
    };
    let a = issue(&d, &request("a", "ca", &compromised));
    let b = issue(&d, &request("b", "ca", &superseded));
    d.block_on(client.revoke(&a, "keyCompromise"))
        .expect("revoke a");
    d.block_on(client.revoke(&b, "superseded"))
        .expect("revoke b");

    let check = |d: &ApiDaemon, round: &str| {
        for certifier in ["ca", "ca2"] {
            let id = format!("{round}-{certifier}");
            // A client of this daemon's life (the last one's connections
            // died with it).
            let client = d.client("ra-main");
            let refused = d.block_on(client.issue(&request(&id, certifier, &compromised)));
            match refused {
                Err(certd_api::ClientError::Api(e)) => {
                    assert_eq!(
                        (e.code, e.code.http_status()),
                        (ErrorCode::KeyBlocked, 403),
                        "{id}: {e:?}"
                    );
                    assert!(
                        e.message.contains(&a),
                        "{id}: names the revocation: {}",
                        e.message
                    );
                }
                other => panic!("{id}: expected key_blocked, got {other:?}"),
            }
            // Superseded blocks nothing; a new key is fine.
            issue(
                d,
                &request(&format!("{id}-superseded"), certifier, &superseded),
            );
            let fresh = make_key(dir, &format!("{id}-fresh"), KeyAlg::P256);
            issue(d, &request(&format!("{id}-fresh"), certifier, &fresh));
        }
    };
    check(&d, "before");
    let refusals_before = d.audit_of("refused").len();
    assert_eq!(refusals_before, 2, "each refusal audited");

    // Killed and started again: the certifiers activate from their PIN
    // files before READY.
    d.instance.restart();
    check(&d, "after");
    let refused = d.audit_of("refused");
    assert_eq!(refused.len(), 4);
    assert!(
        refused.iter().all(|e| e["detail"]["code"] == "key_blocked"),
        "{refused:#?}"
    );
    assert_eq!(
        d.issued("ca") + d.issued("ca2"),
        2 + 8,
        "nothing signed for the blocked key"
    );
    d.verify_audit();
}

/// The refresh loop (woken by every revocation, no coalescing) and CRL
/// requests from several clients run while 24 certificates are revoked
/// from 3 more: every CRL any client gets verifies under the certifier's
/// certificate (`openssl crl -CAfile`), the numbers each client sees only
/// grow, the audit log's CRLs are in number order, and the last CRL lists
/// every revocation.
#[test]
fn crls_made_while_revocations_race_only_grow_and_all_verify() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml(CONFIG)
        .toml("[crl]\ncoalesce_seconds = 0\n")
        .ra("ra-main", &grant("may_revoke = true"))
        .build()
        .start();
    let key = make_key(dir, "k", KeyAlg::P256);
    let certs = issue_many(&d, dir, &key, "ra-main", 24);
    let ca = d.ca.certifier_pem("ca").to_path_buf();
    let seen: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let revokers: Vec<_> = certs
            .chunks(8)
            .map(|chunk| {
                let d = &d;
                scope.spawn(move || {
                    let client = d.client("ra-main");
                    for (serial, _) in chunk {
                        d.block_on(client.revoke(serial, "superseded"))
                            .unwrap_or_else(|e| panic!("revoke {serial}: {e}"));
                    }
                    Vec::new()
                })
            })
            .collect();
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let (d, ca) = (&d, &ca);
                scope.spawn(move || {
                    let client = d.client("ra-main");
                    (0..20)
                        .map(|i| {
                            let path = dir.join(format!("crl-{r}-{i}.der"));
                            let crl = crl_of(d, &client, &path);
                            let verified = openssl(&[
                                &"crl", &"-inform", &"DER", &"-in", &path, &"-CAfile", ca,
                                &"-noout",
                            ]);
                            assert!(
                                verified.stderr.contains("verify OK"),
                                "CRL {} does not verify: {verified}",
                                crl.number
                            );
                            crl.number
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        revokers
            .into_iter()
            .chain(readers)
            .map(|t| t.join().expect("thread"))
            .collect()
    });
    for numbers in &seen {
        assert!(
            numbers.windows(2).all(|w| w[0] <= w[1]),
            "a client saw CRL numbers go back: {numbers:?}"
        );
    }
    let issued: Vec<u64> = d
        .audit_of("crl_issued")
        .iter()
        .filter_map(|e| e["detail"]["crl_number"].as_u64())
        .collect();
    assert!(
        issued.windows(2).all(|w| w[0] < w[1]),
        "CRLs in the audit log out of number order: {issued:?}"
    );
    let client = d.client("ra-main");
    let last = crl_until(
        &d,
        &client,
        &dir.join("last.der"),
        "a CRL with all 24",
        |c| c.entries.len() == 24,
    );
    assert!(last.number >= *issued.last().unwrap_or(&0));
    d.verify_audit();
}
