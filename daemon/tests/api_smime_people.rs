//! S/MIME certificates for named people through the real `certd` over
//! mutual TLS: sponsor-validated (a person of an organization the RA is
//! granted), individual-validated (a name or a pseudonym) and
//! organization-validated, strict and multipurpose, each with the mailbox
//! validation and (for a person) the officer's identity attestation certd
//! requires; linted by pkilint's
//! S/MIME linter at warning level, and used to sign a CMS message that
//! `openssl cms -verify -purpose smimesign` accepts. The evidence each
//! needs is refused when missing.
#![forbid(unsafe_code)]

use certd_e2e::api::{
    lint_errors, make_csr, make_key, openssl, ApiCaBuilder, ApiDaemon, KeyAlg, Lint,
};
use serde_json::{json, Value};
use std::path::Path;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

/// Every kind that names more than a mailbox, in both generations.
const PROFILES: &str = r#"
[[profile]]
name = "smime-sponsor"
kind = "smime-sponsor"
smime_generation = "strict"
max_validity_days = 730
validation_methods = { email = ["email_token", "officer_attestation"] }
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-sponsor-mp"
kind = "smime-sponsor"
smime_generation = "multipurpose"
max_validity_days = 730
validation_methods = { email = ["email_token"] }
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-individual"
kind = "smime-individual"
smime_generation = "multipurpose"
max_validity_days = 730
validation_methods = { email = ["email_token"] }
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-individual-strict"
kind = "smime-individual"
smime_generation = "strict"
max_validity_days = 730
validation_methods = { email = ["email_token"] }
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-organization"
kind = "smime-organization"
smime_generation = "strict"
max_validity_days = 730
validation_methods = { email = ["email_token"] }
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-organization-mp"
kind = "smime-organization"
smime_generation = "multipurpose"
max_validity_days = 730
validation_methods = { email = ["email_token"] }
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"

[[profile]]
name = "smime-mailbox"
kind = "smime-mailbox"
smime_generation = "strict"
max_validity_days = 730
"#;

const GRANT: &str = r#"
certifiers = ["ca"]
profiles = ["smime-sponsor", "smime-sponsor-mp", "smime-individual", "smime-individual-strict", "smime-organization", "smime-organization-mp", "smime-mailbox"]
email_subtrees = ["example.com"]
organizations = [{ name = "Example Corp", organization_identifier = "VATDE-123456789", countries = ["DE"] }]
"#;

fn time_from_now(secs: i64) -> String {
    certd::clock::rfc3339(certd::clock::unix_seconds(std::time::SystemTime::now()) + secs)
}

fn evidence(mail: &str) -> Value {
    json!({
        "requested_by": "officer-1",
        "identity": {
            "attested_by": "officer-2",
            "method": "officer_attestation",
            "checked_at": time_from_now(-86_400),
            "detail": "passport checked in person",
        },
        "validations": [{"name": mail, "method": "email_token", "checked_at": time_from_now(-3_600)}],
    })
}

fn post(d: &ApiDaemon, body: &Value) -> certd_e2e::api::CurlReply {
    d.curl("ra-main", "POST", "/v1/certificates")
        .json(body)
        .send()
}

#[test]
fn named_people_and_organizations_get_certificates_that_lint_and_sign_mail() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let d = ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml(PROFILES)
        .ra("ra-main", GRANT)
        .build()
        .start();
    let root = d.ca.certifier_pem("ca").to_path_buf();
    let sponsored = |given: &str, surname: &str| {
        json!({
            "given_name": given, "surname": surname, "common_name": format!("{given} {surname}"),
            "organization": "Example Corp", "organization_identifier": "VATDE-123456789",
            "country": "DE",
        })
    };
    let organization = json!({
        "organization": "Example Corp", "organization_identifier": "VATDE-123456789",
        "country": "DE", "common_name": "Example Corp",
    });
    let people = [
        (
            "smime-sponsor",
            "alice",
            sponsored("Alice", "Example"),
            KeyAlg::P256,
        ),
        (
            "smime-sponsor-mp",
            "anton",
            sponsored("Anton", "Beispiel"),
            KeyAlg::Rsa2048,
        ),
        (
            "smime-individual",
            "bob",
            json!({"given_name": "Bob", "surname": "Beispiel", "common_name": "Bob Beispiel"}),
            KeyAlg::Rsa2048,
        ),
        (
            "smime-individual-strict",
            "bea",
            json!({"pseudonym": "Nightingale", "common_name": "Nightingale"}),
            KeyAlg::P384,
        ),
        (
            "smime-organization",
            "office",
            organization.clone(),
            KeyAlg::P256,
        ),
        (
            "smime-organization-mp",
            "billing",
            organization,
            KeyAlg::Rsa2048,
        ),
    ];
    let mut lint = Vec::new();
    for (profile, who, subject, alg) in &people {
        let mail = format!("{who}@example.com");
        let key = make_key(dir, who, *alg);
        let csr = make_csr(dir, who, &key, "/", &[]);
        let reply = post(
            &d,
            &json!({
                "request_id": format!("{profile}-{who}"),
                "profile": profile,
                "csr": csr.pem,
                "subject": subject,
                "san": {"email": [mail]},
                "approval": evidence(&mail),
            }),
        );
        assert_eq!(reply.status, 201, "{profile}: {reply}\n{}", d.log());
        let pem = reply.json()["certificate"]
            .as_str()
            .expect("a certificate")
            .to_string();
        let cert = dir.join(format!("{who}.pem"));
        std::fs::write(&cert, &pem).expect("write");
        let text = openssl(&[&"x509", &"-in", &cert, &"-noout", &"-subject"]).stdout;
        let want = subject["given_name"]
            .as_str()
            .or(subject["pseudonym"].as_str())
            .or(subject["organization"].as_str())
            .unwrap_or_default();
        assert!(text.contains(want), "{profile}: {want} in {text}");

        // Sign a message with the person's key; a relying party verifies
        // it against the certifier for S/MIME signing.
        let msg = dir.join(format!("{who}.txt"));
        std::fs::write(&msg, format!("Hello from {who}.\n")).expect("message");
        let signed = dir.join(format!("{who}.p7m"));
        openssl(&[
            &"cms",
            &"-sign",
            &"-nodetach",
            &"-binary",
            &"-in",
            &msg,
            &"-signer",
            &cert,
            &"-inkey",
            &key.path,
            &"-out",
            &signed,
            &"-outform",
            &"PEM",
        ]);
        let out = dir.join(format!("{who}.verified.txt"));
        let verified = openssl(&[
            &"cms",
            &"-verify",
            &"-in",
            &signed,
            &"-inform",
            &"PEM",
            &"-CAfile",
            &root,
            &"-purpose",
            &"smimesign",
            &"-out",
            &out,
        ]);
        assert!(
            verified.stderr.contains("Verification successful"),
            "{verified}"
        );
        assert_eq!(
            std::fs::read_to_string(&out).expect("content"),
            format!("Hello from {who}.\n")
        );
        lint.push((Lint::Smime, cert));
    }
    let jobs: Vec<(Lint, &Path)> = lint.iter().map(|(l, p)| (*l, p.as_path())).collect();
    let problems = lint_errors(&jobs);
    assert!(
        problems.is_empty(),
        "pkilint found:\n{}",
        problems.join("\n")
    );

    // What certd refuses for a person: no identity attestation, a stale
    // one, the organization of another identifier, a person on the
    // mailbox profile, an organization on the individual profile.
    let key = make_key(dir, "carol", KeyAlg::P256);
    let csr = make_csr(dir, "carol", &key, "/", &[]);
    let person = json!({"given_name": "Carol", "surname": "Example"});
    let mut no_identity = evidence("carol@example.com");
    if let Some(o) = no_identity.as_object_mut() {
        o.remove("identity");
    }
    let mut stale = evidence("carol@example.com");
    stale["identity"]["checked_at"] = json!(time_from_now(-826 * 86_400));
    let cases = [
        (
            "no identity attestation",
            "smime-individual",
            person.clone(),
            no_identity,
            "approval_insufficient",
        ),
        (
            "identity older than 825 days",
            "smime-individual",
            person.clone(),
            stale,
            "approval_insufficient",
        ),
        (
            "another organizationIdentifier",
            "smime-sponsor",
            json!({"given_name": "Carol", "surname": "Example", "organization": "Example Corp", "organization_identifier": "VATDE-999999999"}),
            evidence("carol@example.com"),
            "name_not_permitted",
        ),
        (
            "a personal name on the mailbox profile",
            "smime-mailbox",
            person.clone(),
            evidence("carol@example.com"),
            "name_not_permitted",
        ),
        (
            "an organization on the individual profile",
            "smime-individual",
            json!({"given_name": "Carol", "surname": "Example", "organization": "Example Corp"}),
            evidence("carol@example.com"),
            "name_not_permitted",
        ),
        (
            "a givenName without surname",
            "smime-individual",
            json!({"given_name": "Carol"}),
            evidence("carol@example.com"),
            "name_not_permitted",
        ),
    ];
    for (i, (what, profile, subject, approval, code)) in cases.iter().enumerate() {
        let reply = post(
            &d,
            &json!({
                "request_id": format!("refused-{i}"),
                "profile": profile,
                "csr": csr.pem,
                "subject": subject,
                "san": {"email": ["carol@example.com"]},
                "approval": approval,
            }),
        );
        assert_eq!(
            (reply.status, reply.error_code().as_deref()),
            (403, Some(*code)),
            "{what}: {reply}"
        );
    }
    assert_eq!(
        d.issued("ca"),
        people.len() as u64,
        "only the good requests were certified"
    );
    assert_eq!(d.audit_of("refused").len(), cases.len());
    d.verify_audit();
}
