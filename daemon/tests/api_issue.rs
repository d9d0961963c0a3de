//! End-to-end tests of issuance through the real `certd` over real mutual
//! TLS: every profile with certifier keys p256, p384 and rsa2048 and
//! subscriber keys p256, p384 and rsa2048, each certificate verified with
//! `openssl verify -x509_strict` and linted with pkilint; names from the
//! CSR or from the RA, validity clamping, idempotent replays, and lookup
//! and listing scoped to the RA.
#![forbid(unsafe_code)]

use certd_api::{CertStatus, ErrorCode, IssueRequest, IssueResponse, Subject, SubjectAltNames};
use certd_e2e::api::{
    error_code, lint_errors, make_csr, make_key, normalize_serial, openssl, ApiCaBuilder,
    ApiDaemon, CertView, Csr, KeyAlg, Lint, SubscriberKey,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

const EKU_SERVER: &str = "1.3.6.1.5.5.7.3.1";
const EKU_CLIENT: &str = "1.3.6.1.5.5.7.3.2";
const EKU_EMAIL: &str = "1.3.6.1.5.5.7.3.4";
const POLICY_DV: &str = "2.23.140.1.2.1";
const POLICY_OV: &str = "2.23.140.1.2.2";
const POLICY_SMIME_STRICT: &str = "2.23.140.1.5.1.3";
const POLICY_SMIME_MULTIPURPOSE: &str = "2.23.140.1.5.1.2";

/// The four kinds of profile certd issues, as an operator would configure
/// them (BR-sized validity, CRL and caIssuers URLs).
const PROFILES: &str = r#"
[[profile]]
name = "tls-server"
kind = "tls-server"
max_validity_days = 90
allow_ip = true
allow_wildcard = true
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "tls-client"
kind = "tls-client"
max_validity_days = 365
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-strict"
kind = "smime-mailbox"
smime_generation = "strict"
max_validity_days = 365
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-multipurpose"
kind = "smime-mailbox"
smime_generation = "multipurpose"
max_validity_days = 365
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"
"#;

/// What an RA of these tests may ask for (besides certifiers).
const NAMESPACES: &str = r#"
profiles = ["tls-server", "tls-client", "smime-strict", "smime-multipurpose"]
dns_subtrees = ["example.com"]
email_subtrees = ["example.com"]
ip_networks = ["192.0.2.0/24", "93.184.215.0/24", "2606:2800:21f::/48"]
organizations = [{ name = "Example Org", localities = ["Berlin"], countries = ["DE"] }]
client_common_names = ["client *", "*.example.com"]
"#;

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// A CA with one p256 certifier `ca` and the RAs `ra-main` (may revoke),
/// `ra-other` (may revoke, sees only its own), `ra-audit` (sees all, may
/// not revoke) and `ra-short` (30 days at most).
fn p256_ca(dir: &Path) -> ApiDaemon {
    let grant = |extra: &str| format!("certifiers = [\"ca\"]\n{NAMESPACES}\n{extra}");
    ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml(PROFILES)
        .ra("ra-main", &grant("may_revoke = true"))
        .ra("ra-other", &grant("may_revoke = true"))
        .ra("ra-audit", &grant("read_all = true"))
        .ra("ra-short", &grant("max_validity_days = 30"))
        .build()
        .start()
}

fn request(id: &str, certifier: Option<&str>, profile: &str, csr: &Csr) -> IssueRequest {
    IssueRequest {
        certifier: certifier.map(str::to_string),
        ..IssueRequest::new(id, profile, csr.pem.clone())
    }
}

fn cn(name: &str) -> Option<Subject> {
    Some(Subject {
        common_name: Some(name.to_string()),
        ..Default::default()
    })
}

fn dns(names: &[&str]) -> Option<SubjectAltNames> {
    Some(SubjectAltNames {
        dns: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

fn issue(d: &ApiDaemon, ra: &str, req: &IssueRequest) -> IssueResponse {
    let client = d.client(ra);
    d.block_on(client.issue(req))
        .unwrap_or_else(|e| panic!("{ra} could not issue {req:#?}: {e}\n{}", d.log()))
}

fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not RFC 3339: {e}"))
        .unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .expect("a valid time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// `openssl verify -x509_strict -purpose PURPOSE -CAfile ROOT LEAF`.
fn assert_verifies(root: &Path, leaf: &Path, purpose: &str) {
    let out = openssl(&[
        &"verify",
        &"-x509_strict",
        &"-purpose",
        &purpose,
        &"-CAfile",
        &root,
        &leaf,
    ]);
    assert!(out.stdout.trim().ends_with(": OK"), "{out}");
}

/// Checks a fresh issuance answer against the certificate it carries.
fn check_response(resp: &IssueResponse, root_pem: &Path) -> CertView {
    assert!(!resp.replayed, "{resp:#?}");
    let cert = CertView::from_pem(&resp.certificate);
    assert_eq!(cert.serial, normalize_serial(&resp.serial), "{resp:#?}");
    // The wire form of a serial: 16 bytes (a positive 127-bit random
    // number) in lower-case hex.
    assert!(
        resp.serial.len() == 32
            && resp
                .serial
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "a serial is 32 lower-case hex digits: {}",
        resp.serial
    );
    assert_eq!(cert.not_before, unix(&resp.not_before), "{resp:#?}");
    assert_eq!(cert.not_after, unix(&resp.not_after), "{resp:#?}");
    let root = std::fs::read_to_string(root_pem).expect("the certifier's certificate");
    assert_eq!(resp.chain.len(), 1, "{resp:#?}");
    assert_eq!(
        resp.chain[0].trim(),
        root.trim(),
        "chain[0] is the certifier"
    );
    cert
}

struct Kind {
    profile: &'static str,
    purpose: &'static str,
    lint: Lint,
    eku: &'static [&'static str],
    policies: &'static [&'static str],
}

const KINDS: [Kind; 4] = [
    Kind {
        profile: "tls-server",
        purpose: "sslserver",
        lint: Lint::ServerAuth,
        eku: &[EKU_SERVER],
        policies: &[POLICY_DV],
    },
    Kind {
        profile: "tls-client",
        purpose: "sslclient",
        lint: Lint::Pkix,
        eku: &[EKU_CLIENT],
        policies: &[],
    },
    Kind {
        profile: "smime-strict",
        purpose: "smimesign",
        lint: Lint::Smime,
        eku: &[EKU_EMAIL],
        policies: &[POLICY_SMIME_STRICT],
    },
    Kind {
        profile: "smime-multipurpose",
        purpose: "smimesign",
        lint: Lint::Smime,
        eku: &[EKU_EMAIL, EKU_CLIENT],
        policies: &[POLICY_SMIME_MULTIPURPOSE],
    },
];

#[test]
fn every_profile_with_every_certifier_key_and_subscriber_key_verifies_and_lints() {
    let tmp = tempdir();
    let dir = tmp.path();
    let certifiers = [
        ("ca-p256", "p256", "1.2.840.10045.4.3.2"),
        ("ca-p384", "p384", "1.2.840.10045.4.3.3"),
        ("ca-rsa", "rsa2048", "1.2.840.113549.1.1.11"),
    ];
    let mut builder = ApiCaBuilder::new(dir, Path::new(CERTD)).toml(PROFILES);
    for (name, key_type, _) in certifiers {
        builder = builder.certifier(name, key_type);
    }
    let d = builder
        .ra(
            "ra-main",
            &format!("certifiers = [\"ca-p256\", \"ca-p384\", \"ca-rsa\"]\n{NAMESPACES}"),
        )
        .build()
        .start();
    let keys: Vec<SubscriberKey> = [KeyAlg::P256, KeyAlg::P384, KeyAlg::Rsa2048]
        .iter()
        .enumerate()
        .map(|(i, alg)| make_key(dir, &format!("subscriber-{i}"), *alg))
        .collect();
    let spkis: Vec<Vec<u8>> = keys.iter().map(SubscriberKey::spki_der).collect();

    // With three certifiers offering the profile, the RA must name one.
    let csr = make_csr(
        dir,
        "unnamed",
        &keys[0],
        "/CN=x.example.com",
        &["DNS:x.example.com"],
    );
    let client = d.client("ra-main");
    assert_eq!(
        error_code(d.block_on(client.issue(&request("unnamed", None, "tls-server", &csr)))),
        ErrorCode::BadRequest
    );

    let mut lints: Vec<(Lint, PathBuf)> = Vec::new();
    for (pi, kind) in KINDS.iter().enumerate() {
        for (ci, (certifier, _, sig_alg)) in certifiers.iter().enumerate() {
            // Latin square: every profile meets every subscriber key type,
            // and so does every certifier.
            let ki = (pi + ci) % keys.len();
            let tag = format!("{}-{certifier}-{ki}", kind.profile);
            let mut req;
            let (want_subject, want_dns, want_ips, want_emails): (
                String,
                Vec<String>,
                Vec<String>,
                Vec<String>,
            );
            match kind.profile {
                "tls-server" => {
                    let host = format!("h{pi}{ci}.example.com");
                    let csr = make_csr(dir, &tag, &keys[ki], &format!("/CN={host}"), &[]);
                    req = request(&tag, Some(certifier), kind.profile, &csr);
                    let wildcard = format!("*.{host}");
                    req.subject = cn(&host);
                    req.san = Some(SubjectAltNames {
                        dns: vec![host.clone(), wildcard.clone()],
                        ip: vec!["93.184.215.14".into(), "2606:2800:21f:cb07::7".into()],
                        ..Default::default()
                    });
                    want_subject = format!("CN={host}");
                    want_dns = vec![host, wildcard];
                    want_ips = vec!["93.184.215.14".into(), "2606:2800:21f:cb07::7".into()];
                    want_emails = vec![];
                }
                "tls-client" => {
                    let name = format!("client {pi}{ci}");
                    let csr = make_csr(dir, &tag, &keys[ki], &format!("/CN={name}"), &[]);
                    req = request(&tag, Some(certifier), kind.profile, &csr);
                    want_subject = format!("CN={name}");
                    (want_dns, want_ips, want_emails) = (vec![], vec![], vec![]);
                }
                _ => {
                    let mail = format!("user{pi}{ci}@example.com");
                    let csr = make_csr(dir, &tag, &keys[ki], "/CN=ignored", &[]);
                    req = request(&tag, Some(certifier), kind.profile, &csr);
                    req.subject = cn(&mail);
                    req.san = Some(SubjectAltNames {
                        email: vec![mail.clone()],
                        ..Default::default()
                    });
                    want_subject = format!("CN={mail}");
                    want_emails = vec![mail];
                    (want_dns, want_ips) = (vec![], vec![]);
                }
            }
            let resp = issue(&d, "ra-main", &req);
            let root = d.ca.certifier_pem(certifier);
            let cert = check_response(&resp, root);
            assert_eq!(cert.subject, want_subject, "{tag}");
            assert_eq!(cert.dns, want_dns, "{tag}");
            let ips: Vec<String> = cert.ips.iter().map(|i| i.to_string()).collect();
            assert_eq!(ips, want_ips, "{tag}");
            assert_eq!(cert.emails, want_emails, "{tag}");
            assert_eq!(cert.eku, kind.eku, "{tag}");
            assert_eq!(cert.policies, kind.policies, "{tag}");
            assert_eq!(cert.signature_algorithm, *sig_alg, "{tag}");
            assert_eq!(cert.spki_der, spkis[ki], "{tag}: the CSR's key");
            let leaf = write_pem(dir, &tag, &resp.certificate);
            assert_verifies(root, &leaf, kind.purpose);
            lints.push((kind.lint, leaf));
        }
    }
    for (certifier, _, _) in certifiers {
        assert_eq!(d.issued(certifier), KINDS.len() as u64, "{certifier}");
    }
    let jobs: Vec<(Lint, &Path)> = lints.iter().map(|(l, p)| (*l, p.as_path())).collect();
    let problems = lint_errors(&jobs);
    assert!(
        problems.is_empty(),
        "pkilint found errors:\n{}",
        problems.join("\n")
    );
}

#[test]
fn names_come_from_the_csr_unless_the_ra_overrides_them_and_validity_is_clamped() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = p256_ca(dir);
    let root = d.ca.certifier_pem("ca").to_path_buf();
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let mut lints: Vec<(Lint, PathBuf)> = Vec::new();

    // No subject or SAN in the request: the CSR's are used.
    let csr = make_csr(
        dir,
        "from-csr",
        &key,
        "/CN=a.example.com",
        &["DNS:a.example.com", "DNS:b.example.com", "IP:93.184.215.5"],
    );
    let resp = issue(
        &d,
        "ra-main",
        &request("from-csr", None, "tls-server", &csr),
    );
    let cert = check_response(&resp, &root);
    assert_eq!(cert.subject, "CN=a.example.com");
    assert_eq!(cert.dns, ["a.example.com", "b.example.com"]);
    assert_eq!(
        cert.ips,
        ["93.184.215.5".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert!(!resp.not_after_clamped);
    // Without a requested not_after: the profile's maximum, inclusive.
    assert_eq!(cert.not_after - cert.not_before + 1, 90 * 86_400);

    // A tls-server CSR naming its host only in the commonName gets it as SAN.
    let csr = make_csr(dir, "cn-only", &key, "/CN=only-cn.example.com", &[]);
    let cert = check_response(
        &issue(&d, "ra-main", &request("cn-only", None, "tls-server", &csr)),
        &root,
    );
    assert_eq!(cert.dns, ["only-cn.example.com"]);
    assert_eq!(cert.subject, "CN=only-cn.example.com");

    // The RA's subject and SANs replace the CSR's entirely.
    let csr = make_csr(
        dir,
        "override",
        &key,
        "/C=US/O=CSR Org/CN=csr.example.com",
        &["DNS:csr.example.com", "DNS:other.example.com"],
    );
    let mut req = request("override", None, "tls-server", &csr);
    req.subject = Some(Subject {
        common_name: Some("ra.example.com".into()),
        organization: Some("Example Org".into()),
        locality: Some("Berlin".into()),
        country: Some("DE".into()),
        ..Default::default()
    });
    req.san = dns(&["ra.example.com", "www.ra.example.com"]);
    let resp = issue(&d, "ra-main", &req);
    let cert = check_response(&resp, &root);
    assert_eq!(
        cert.subject,
        "CN=ra.example.com,O=Example Org,L=Berlin,C=DE"
    );
    assert_eq!(cert.dns, ["ra.example.com", "www.ra.example.com"]);
    assert!(cert.ips.is_empty());
    assert_eq!(cert.policies, [POLICY_OV], "an organization makes it OV");
    lints.push((
        Lint::ServerAuth,
        write_pem(dir, "override", &resp.certificate),
    ));

    // The RA's SANs without a subject: the CSR's subject is not copied;
    // the profile (no common_name_from_san) makes it empty.
    let csr = make_csr(dir, "san-only", &key, "/O=CSR Org/CN=x.example.com", &[]);
    let mut req = request("san-only", None, "tls-server", &csr);
    req.san = dns(&["x.example.com", "y.example.com"]);
    let cert = check_response(&issue(&d, "ra-main", &req), &root);
    assert_eq!(cert.subject, "");
    assert!(cert.san_critical);
    assert_eq!(cert.dns, ["x.example.com", "y.example.com"]);

    // An empty subject: the SAN carries the names and is critical.
    let csr = make_csr(dir, "empty-subject", &key, "/", &[]);
    let mut req = request("empty-subject", None, "tls-server", &csr);
    req.san = dns(&["nosubject.example.com"]);
    let resp = issue(&d, "ra-main", &req);
    let cert = check_response(&resp, &root);
    assert_eq!(cert.subject, "");
    assert!(cert.san_critical, "RFC 5280 4.2.1.6: critical SAN");
    assert_eq!(cert.dns, ["nosubject.example.com"]);
    lints.push((
        Lint::ServerAuth,
        write_pem(dir, "empty-subject", &resp.certificate),
    ));

    // An S/MIME CSR with only an emailAddress gets it as SAN.
    let csr = make_csr(
        dir,
        "smime-csr",
        &key,
        "/emailAddress=carol@example.com",
        &[],
    );
    let resp = issue(
        &d,
        "ra-main",
        &request("smime-csr", None, "smime-strict", &csr),
    );
    let cert = check_response(&resp, &root);
    assert_eq!(cert.emails, ["carol@example.com"]);
    assert!(
        cert.subject.contains("carol@example.com"),
        "{}",
        cert.subject
    );
    lints.push((Lint::Smime, write_pem(dir, "smime-csr", &resp.certificate)));

    // Past the profile's maximum: clamped, and the answer says so.
    let csr = make_csr(dir, "long", &key, "/CN=long.example.com", &[]);
    let mut req = request("long", None, "tls-server", &csr);
    req.not_after = Some(rfc3339(now() + 400 * 86_400));
    let resp = issue(&d, "ra-main", &req);
    let cert = check_response(&resp, &root);
    assert!(resp.not_after_clamped, "{resp:#?}");
    assert_eq!(cert.not_after - cert.not_before + 1, 90 * 86_400);

    // Shorter than the maximum: exactly as asked.
    let wanted = now() + 10 * 86_400;
    let mut req = request("short", None, "tls-server", &csr);
    req.not_after = Some(rfc3339(wanted));
    let resp = issue(&d, "ra-main", &req);
    let cert = check_response(&resp, &root);
    assert!(!resp.not_after_clamped, "{resp:#?}");
    assert_eq!(cert.not_after, wanted);

    // The grant's maximum applies too, and GET /v1/profiles shows it.
    let resp = issue(
        &d,
        "ra-short",
        &request("grant-default", None, "tls-server", &csr),
    );
    let cert = check_response(&resp, &root);
    assert!(!resp.not_after_clamped);
    assert_eq!(cert.not_after - cert.not_before + 1, 30 * 86_400);
    let mut req = request("grant-long", None, "tls-server", &csr);
    req.not_after = Some(rfc3339(now() + 60 * 86_400));
    let resp = issue(&d, "ra-short", &req);
    let cert = check_response(&resp, &root);
    assert!(resp.not_after_clamped);
    assert_eq!(cert.not_after - cert.not_before + 1, 30 * 86_400);
    let profiles = d
        .block_on(d.client("ra-short").profiles())
        .expect("profiles");
    let tls = profiles
        .iter()
        .find(|p| p.name == "tls-server")
        .unwrap_or_else(|| panic!("{profiles:#?}"));
    assert_eq!(tls.max_validity_days, 30);
    assert_eq!(tls.kind, "tls-server");
    assert_eq!(tls.certifiers, ["ca"]);
    assert_eq!(profiles.len(), 4, "{profiles:#?}");

    assert_eq!(d.issued("ca"), 10);
    let jobs: Vec<(Lint, &Path)> = lints.iter().map(|(l, p)| (*l, p.as_path())).collect();
    let problems = lint_errors(&jobs);
    assert!(
        problems.is_empty(),
        "pkilint found errors:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_certificate_outlives_its_certifier() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier_for_days("ca-brief", "p256", 2)
        .toml(PROFILES)
        .ra(
            "ra-main",
            &format!("certifiers = [\"ca-brief\"]\n{NAMESPACES}"),
        )
        .build()
        .start();
    let root = d.ca.certifier_pem("ca-brief").to_path_buf();
    let issuer = CertView::from_pem(&std::fs::read_to_string(&root).expect("the root"));
    assert!(
        issuer.not_after < now() + 3 * 86_400,
        "{}",
        issuer.not_after
    );
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let csr = make_csr(dir, "brief", &key, "/CN=brief.example.com", &[]);
    let resp = issue(&d, "ra-main", &request("default", None, "tls-server", &csr));
    let cert = check_response(&resp, &root);
    assert_eq!(
        cert.not_after, issuer.not_after,
        "the profile's 90 days end with the issuer"
    );
    let mut req = request("asked", None, "tls-client", &csr);
    req.not_after = Some(rfc3339(now() + 30 * 86_400));
    let resp = issue(&d, "ra-main", &req);
    let cert = check_response(&resp, &root);
    assert!(resp.not_after_clamped, "{resp:#?}");
    assert_eq!(cert.not_after, issuer.not_after);
    assert_verifies(
        &root,
        &write_pem(dir, "brief", &resp.certificate),
        "sslclient",
    );
}

#[test]
fn tls_server_certificates_never_carry_reserved_ip_addresses() {
    // The RA's networks include documentation space (as the demo's do);
    // a BR tls-server certificate must still not name it (TLS BR
    // 7.1.2.7.12: no reserved IP addresses), whatever the grant says.
    let tmp = tempdir();
    let dir = tmp.path();
    let d = p256_ca(dir);
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let csr = make_csr(dir, "reserved", &key, "/CN=www.example.com", &[]);
    let mut req = request("reserved-ip", None, "tls-server", &csr);
    req.san = Some(SubjectAltNames {
        dns: vec!["www.example.com".into()],
        ip: vec!["192.0.2.7".into()],
        ..Default::default()
    });
    let result = d.block_on(d.client("ra-main").issue(&req));
    if let Ok(resp) = &result {
        let leaf = write_pem(dir, "reserved", &resp.certificate);
        let problems = lint_errors(&[(Lint::ServerAuth, &leaf)]);
        panic!(
            "certd issued a tls-server certificate for the reserved address 192.0.2.7 \
             (expected name_not_permitted); pkilint:\n{}",
            problems.join("\n")
        );
    }
    assert_eq!(error_code(result), ErrorCode::NameNotPermitted);
    assert_eq!(d.issued("ca"), 0);
}

#[test]
fn a_replayed_request_returns_the_same_certificate_and_a_changed_one_conflicts() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = p256_ca(dir);
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let csr = make_csr(dir, "replay", &key, "/CN=replay.example.com", &[]);
    let mut req = request("order-4711", None, "tls-server", &csr);
    req.san = dns(&["replay.example.com"]);
    let body = serde_json::to_value(&req).expect("serialises");

    let first = d
        .curl("ra-main", "POST", "/v1/certificates")
        .json(&body)
        .send();
    assert_eq!(first.status, 201, "{first}");
    let first = first.json();
    let serial = first["serial"].as_str().expect("a serial").to_string();
    assert!(first.get("replayed").is_none(), "{first:#}");
    assert_eq!(d.issued("ca"), 1);

    let again = d
        .curl("ra-main", "POST", "/v1/certificates")
        .json(&body)
        .send();
    assert_eq!(again.status, 200, "{again}");
    let again = again.json();
    assert_eq!(again["serial"], serial.as_str());
    assert_eq!(again["replayed"], true, "{again:#}");
    assert_eq!(again["certificate"], first["certificate"]);
    assert_eq!(again["not_after"], first["not_after"]);

    // Formatting and field order do not make it another request.
    let pretty = serde_json::to_vec_pretty(&body).expect("serialises");
    let reformatted = d
        .curl("ra-main", "POST", "/v1/certificates")
        .body(Some("application/json; charset=utf-8"), &pretty)
        .send();
    assert_eq!(reformatted.status, 200, "{reformatted}");
    assert_eq!(reformatted.json()["serial"], serial.as_str());

    let via_client = issue(&d, "ra-main", &req);
    assert!(via_client.replayed);
    assert_eq!(via_client.serial, serial);
    assert_eq!(d.issued("ca"), 1, "nothing was signed twice");
    assert_eq!(d.audit_of("issued").len(), 1);

    // The same id for another request is a conflict.
    let mut changed = req.clone();
    changed.san = dns(&["replay.example.com", "www.replay.example.com"]);
    let conflict = d
        .curl("ra-main", "POST", "/v1/certificates")
        .json(&serde_json::to_value(&changed).expect("serialises"))
        .send();
    assert_eq!(conflict.status, 409, "{conflict}");
    assert_eq!(
        conflict.error_code().as_deref(),
        Some("conflict"),
        "{conflict}"
    );
    assert!(
        conflict.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{conflict}"
    );
    let client = d.client("ra-main");
    assert_eq!(
        error_code(d.block_on(client.issue(&changed))),
        ErrorCode::Conflict
    );
    assert_eq!(d.issued("ca"), 1);

    // Request ids belong to their RA: another RA's "order-4711" is new.
    let other = issue(&d, "ra-other", &req);
    assert!(!other.replayed);
    assert_ne!(other.serial, serial);
    assert_eq!(d.issued("ca"), 2);
    assert_eq!(d.audit_of("issued").len(), 2);

    // A replay after the certificate was revoked says so.
    assert!(via_client.revoked_at.is_none() && via_client.revocation_reason.is_none());
    let revoked = d
        .block_on(client.revoke(&serial, "superseded"))
        .expect("revoked");
    let replay = issue(&d, "ra-main", &req);
    assert!(replay.replayed);
    assert_eq!(replay.serial, serial);
    assert_eq!(replay.revoked_at, revoked.revoked_at);
    assert_eq!(replay.revocation_reason.as_deref(), Some("superseded"));
    assert_eq!(d.issued("ca"), 2, "nothing new signed");
}

#[test]
fn lookup_and_listing_are_scoped_to_the_ra() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = p256_ca(dir);
    let key = make_key(dir, "subscriber", KeyAlg::P256);
    let main = d.client("ra-main");
    let other = d.client("ra-other");
    let audit = d.client("ra-audit");

    let mut mine: Vec<(String, IssueResponse)> = Vec::new();
    for host in ["a", "b", "c"] {
        let name = format!("{host}.example.com");
        let csr = make_csr(dir, host, &key, &format!("/CN={name}"), &[]);
        mine.push((
            name,
            issue(&d, "ra-main", &request(host, None, "tls-server", &csr)),
        ));
    }
    for user in ["alice", "bob"] {
        let mail = format!("{user}@example.com");
        let csr = make_csr(dir, user, &key, &format!("/CN={mail}"), &[]);
        let mut req = request(user, None, "smime-strict", &csr);
        req.san = Some(SubjectAltNames {
            email: vec![mail.clone()],
            ..Default::default()
        });
        mine.push((mail, issue(&d, "ra-main", &req)));
    }
    let csr = make_csr(dir, "theirs", &key, "/CN=theirs.example.com", &[]);
    let theirs = issue(&d, "ra-other", &request("x", None, "tls-server", &csr));

    for (name, resp) in &mine {
        let info = d.block_on(main.get(&resp.serial)).expect("own certificate");
        assert_eq!(info.serial, resp.serial);
        assert_eq!(info.status, CertStatus::Valid);
        assert_eq!(info.ra, "ra-main");
        assert_eq!(info.certifier, "ca");
        assert_eq!(info.certificate.trim(), resp.certificate.trim());
        assert_eq!(info.not_after, resp.not_after);
        assert!(info.revoked_at.is_none() && info.revocation_reason.is_none());
        if name.contains('@') {
            assert_eq!(info.profile, "smime-strict");
            assert_eq!(info.emails, std::slice::from_ref(name));
        } else {
            assert_eq!(info.profile, "tls-server");
            assert_eq!(info.dns, std::slice::from_ref(name));
        }
        // Another RA can neither see nor revoke it; one with read_all can see it.
        assert_eq!(
            error_code(d.block_on(other.get(&resp.serial))),
            ErrorCode::NotFound
        );
        assert_eq!(
            d.block_on(audit.get(&resp.serial)).expect("read_all").ra,
            "ra-main"
        );
    }
    let a = &mine[0].1.serial;
    assert_eq!(
        error_code(d.block_on(other.revoke(a, "keyCompromise"))),
        ErrorCode::NotFound
    );
    assert_eq!(
        d.block_on(main.get(a)).expect("still there").status,
        CertStatus::Valid
    );
    assert_eq!(
        error_code(d.block_on(main.get("00112233445566778899aabbccddeeff"))),
        ErrorCode::NotFound
    );

    let list = |client: &certd_api::CertdClient, query: &str| {
        d.block_on(client.list(query))
            .unwrap_or_else(|e| panic!("list {query:?}: {e}"))
    };
    let serials = |l: &certd_api::CertificateList| -> BTreeSet<String> {
        l.items.iter().map(|i| i.serial.clone()).collect()
    };
    let all_mine: BTreeSet<String> = mine.iter().map(|(_, r)| r.serial.clone()).collect();
    let l = list(&main, "");
    assert_eq!(serials(&l), all_mine);
    assert!(l.next.is_none());
    assert!(l.items.iter().all(|i| i.ra == "ra-main"));
    assert_eq!(
        serials(&list(&other, "")),
        BTreeSet::from([theirs.serial.clone()])
    );
    let everything = list(&audit, "");
    assert_eq!(everything.items.len(), 6);
    assert_eq!(
        serials(&list(&audit, "ra=ra-other")),
        BTreeSet::from([theirs.serial.clone()])
    );

    // Filters.
    let smime: BTreeSet<String> = mine[3..].iter().map(|(_, r)| r.serial.clone()).collect();
    assert_eq!(serials(&list(&main, "profile=smime-strict")), smime);
    assert_eq!(
        serials(&list(&main, "email=alice@example.com")),
        BTreeSet::from([mine[3].1.serial.clone()])
    );
    assert_eq!(
        serials(&list(&main, "dns=b.example.com")),
        BTreeSet::from([mine[1].1.serial.clone()])
    );
    assert!(list(&main, "email=carol@example.com").items.is_empty());
    let revoked = d
        .block_on(main.revoke(&mine[1].1.serial, "superseded"))
        .expect("revoke b");
    assert_eq!(revoked.status, CertStatus::Revoked);
    assert_eq!(
        serials(&list(&main, "status=revoked")),
        BTreeSet::from([mine[1].1.serial.clone()])
    );
    let valid = list(&main, "status=valid");
    assert_eq!(valid.items.len(), 4);
    assert!(valid.items.iter().all(|i| i.status == CertStatus::Valid));
    assert_eq!(
        serials(&list(&main, "status=revoked&profile=smime-strict")),
        BTreeSet::new()
    );

    // Paging: limit and after walk every certificate exactly once.
    let mut seen = Vec::new();
    let mut query = "limit=2".to_string();
    let mut pages = 0;
    loop {
        let page = list(&main, &query);
        pages += 1;
        assert!(page.items.len() <= 2, "{page:#?}");
        seen.extend(page.items.iter().map(|i| i.serial.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), page.items.last().map(|i| &i.serial));
                query = format!("limit=2&after={next}");
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
    }
    assert_eq!(pages, 3, "{seen:?}");
    assert_eq!(seen.len(), 5, "no duplicates: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), all_mine);
    let exact = list(&main, "limit=5");
    assert_eq!(exact.items.len(), 5);
    assert!(exact.next.is_none(), "{exact:#?}");
    let filtered = list(&main, "limit=1&profile=smime-strict");
    assert_eq!(filtered.items.len(), 1);
    let rest = list(
        &main,
        &format!(
            "limit=1&profile=smime-strict&after={}",
            filtered.next.as_deref().expect("a second S/MIME page")
        ),
    );
    assert_eq!(rest.items.len(), 1);
    assert!(rest.next.is_none());
    assert_ne!(rest.items[0].serial, filtered.items[0].serial);

    // The listing answers the same over raw HTTP.
    let raw = d
        .curl("ra-main", "GET", "/v1/certificates?status=revoked")
        .send();
    assert_eq!(raw.status, 200, "{raw}");
    assert_eq!(raw.content_type, "application/json");
    let items: Vec<Value> = raw.json()["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{raw}");
    assert_eq!(items[0]["revocation_reason"], json!("superseded"));
}
