//! Fuzz harnesses for certd's input boundaries, one function per cargo-fuzz
//! target (`fuzz_targets/`). Each feeds arbitrary bytes to code that runs on
//! untrusted input before any key is used, and asserts properties that must
//! hold for every input; a panic is a finding.
#![forbid(unsafe_code)]

use certd::config::Config;
use certd::hsm::KeyType;
use certd::policy::{self, Names, Policy};
use certd::{certgen, csr, issue};
use certd_api::IssueRequest;
use der::Decode;
use ra_web::csr_view::{self, DecodeError, InputFormat, KeyAlgorithm};
use spki::SubjectPublicKeyInfoOwned;
use std::path::Path;
use std::sync::OnceLock;

/// A P-256 public key standing in for the certifier's own key (a CSR must
/// not carry it).
const CERTIFIER_SPKI: &[u8] = include_bytes!("../certifier-spki.der");

/// The fingerprint of the one RA of [`POLICY`].
const RA_FINGERPRINT: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// A policy with every profile kind and one RA with every kind of grant.
const POLICY: &str = r#"
[daemon]
state_dir = "state"
control_socket = "/run/certd/control.sock"

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"

[[certifier]]
name = "root"
token_label = "t"
key_label = "k"
certificate = "root.pem"

[api]
listen = "127.0.0.1:8443"
tls_certificate = "tls.pem"
tls_key = "tls.key"
ra_trust_anchor = "ra-ca.pem"

[[profile]]
name = "tls-server"
kind = "tls-server"
max_validity_days = 199
allow_ip = true
allow_wildcard = true
key_types = ["p256", "p384", "rsa2048", "rsa3072", "rsa4096", "ed25519"]

[[profile]]
name = "tls-client"
kind = "tls-client"
max_validity_days = 397
allow_ip = true

[[profile]]
name = "smime-mailbox"
kind = "smime-mailbox"
smime_generation = "strict"
max_validity_days = 825
approvals_required = 2
validation_methods = { email = ["email_token", "officer_attestation"] }

[[ra]]
name = "ra"
fingerprints = ["0101010101010101010101010101010101010101010101010101010101010101"]
certifiers = ["root"]
profiles = ["tls-server", "tls-client", "smime-mailbox"]
dns_names = ["exact.example.org"]
dns_subtrees = ["example.com"]
email_domains = ["mail.example.net"]
email_subtrees = ["example.com"]
ip_networks = ["192.0.2.0/24", "2001:db8::/32"]
max_validity_days = 100
"#;

fn certifier_key() -> &'static SubjectPublicKeyInfoOwned {
    static KEY: OnceLock<SubjectPublicKeyInfoOwned> = OnceLock::new();
    KEY.get_or_init(|| {
        SubjectPublicKeyInfoOwned::from_der(CERTIFIER_SPKI)
            .expect("certifier-spki.der is a DER SubjectPublicKeyInfo")
    })
}

fn policy() -> &'static Policy {
    static POLICY_CELL: OnceLock<Policy> = OnceLock::new();
    POLICY_CELL.get_or_init(|| {
        let config = Config::parse(POLICY, Path::new("/etc/certd/certd.toml"))
            .expect("the fuzzing policy parses");
        Policy::from_config(&config)
    })
}

/// `csr::check_csr` on the input as PEM text, and on the input as DER
/// wrapped in a `CERTIFICATE REQUEST` PEM block (so the fuzzer works on the
/// DER structure directly).
pub fn csr_parse(data: &[u8]) {
    let key = certifier_key();
    if let Ok(text) = std::str::from_utf8(data) {
        check_one(text, key);
    }
    if let Ok(pem) = der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, data)
    {
        check_one(&pem, key);
    }
}

fn check_one(pem: &str, key: &SubjectPublicKeyInfoOwned) {
    if let Ok(checked) = csr::check_csr(pem, &KeyType::ALL, key) {
        // What passed must be usable as it is: a key certd supports and
        // that is not the certifier's own.
        assert!(KeyType::ALL.contains(&checked.key_type));
        assert_ne!(&checked.spki, key, "the certifier's own key passed");
    }
}

/// An API request body: `serde_json` into [`IssueRequest`] (unknown fields
/// refused), a lossless round trip, then every check certd makes before it
/// needs the token: request digest, IP syntax, authorisation, CSR, names,
/// validity.
pub fn issue_request_json(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<IssueRequest>(data) else {
        return;
    };
    let again = serde_json::to_vec(&req).expect("a decoded request encodes");
    let back: IssueRequest = serde_json::from_slice(&again).expect("an encoded request decodes");
    assert_eq!(back, req, "the request does not survive a JSON round trip");
    assert_eq!(issue::request_digest(&back), issue::request_digest(&req));

    let ip_ok = issue::check_ip_syntax(&req).is_ok();
    let policy = policy();
    let grant = policy
        .grant_for_fingerprint(RA_FINGERPRINT)
        .expect("the fuzzing RA exists");
    let Ok((_, profile)) = policy.authorize(grant, req.certifier.as_deref(), &req.profile) else {
        return;
    };
    let from_csr = match csr::check_csr(&req.csr, &profile.key_types, certifier_key()) {
        Ok(c) => c.names,
        Err(_) => Names::default(),
    };
    let names = issue::requested_names(&req, &from_csr, profile);
    // Evidence that passes has what the profile asks for, judged here
    // independently of `approval::check`'s own bookkeeping.
    if certd::approval::check(profile, &names, req.approval.as_ref(), 1_800_000_000).is_ok()
        && profile.approvals_required > 0
    {
        let a = req.approval.as_ref().expect("evidence was required");
        let requester = a
            .requested_by
            .as_deref()
            .expect("a requester was required")
            .to_ascii_lowercase();
        let approvers: std::collections::HashSet<String> = a
            .approved_by
            .iter()
            .map(|o| o.to_ascii_lowercase())
            .collect();
        assert_eq!(
            approvers.len(),
            a.approved_by.len(),
            "an approver counted twice"
        );
        assert!(approvers.len() >= profile.approvals_required as usize);
        assert!(!approvers.contains(&requester), "the requester approved");
    }
    if policy::check_names(profile, grant, &names).is_ok() && ip_ok {
        // Names that pass stay inside the RA's namespaces, judged here
        // independently of `Grant`'s own matching.
        let under = |name: &str, tree: &str| name == tree || name.ends_with(&format!(".{tree}"));
        for d in &names.dns {
            let d = d.to_ascii_lowercase();
            let ok = match d.strip_prefix("*.") {
                Some(bare) => under(bare, "example.com"),
                None => d == "exact.example.org" || under(&d, "example.com"),
            };
            assert!(ok, "DNS name {d} passed outside the grant");
        }
        for e in names.emails.iter().chain(names.subject.email.iter()) {
            let domain = e
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                domain == "mail.example.net" || under(&domain, "example.com"),
                "email {e} passed outside the grant"
            );
        }
        for ip in &names.ips {
            let ok = match ip {
                std::net::IpAddr::V4(a) => a.octets()[..3] == [192, 0, 2],
                std::net::IpAddr::V6(a) => a.segments()[..2] == [0x2001, 0x0db8],
            };
            assert!(ok, "IP {ip} passed outside the grant");
        }
    }
    if let Some(t) = &req.not_after {
        let now = 1_767_225_600; // 2026-01-01
        let issuer_not_after = now + 20 * 365 * 86_400;
        let requested =
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp());
        if let Ok(r) = requested {
            if let Ok(v) =
                certgen::choose_validity(now, Some(r), profile.max_validity_days, issuer_not_after)
            {
                assert!(v.not_before < v.not_after && v.not_after <= issuer_not_after);
                assert!(v.not_after - v.not_before < i64::from(profile.max_validity_days) * 86_400);
            }
        }
    }
}

/// `Config::parse` on the input as TOML text, then the policy built from
/// whatever parsed.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("/etc/certd/certd.toml")) {
        let policy = Policy::from_config(&config);
        for ra in &config.ras {
            for f in &ra.fingerprints {
                let norm = certd::config::normalize_fingerprint(f).expect("checked at parse");
                assert!(policy.knows_fingerprint(&norm));
            }
        }
    }
}

/// `ra_web::csr_view::decode_csr` on the input as it is (PEM, DER or bare
/// base64: the decoder tells them apart), with the result serialised to
/// JSON as ra-web sends it to the browser.
pub fn ra_web_csr_decode(data: &[u8]) {
    let view = match csr_view::decode_csr(data) {
        Ok(view) => view,
        Err(e) => {
            if data.len() > csr_view::MAX_INPUT {
                assert!(matches!(e, DecodeError::TooLarge { .. }));
            }
            let json = serde_json::to_value(&e).expect("a decode error serialises");
            assert_eq!(json["code"], e.code());
            return;
        }
    };
    serde_json::to_string(&view).expect("a CSR view serialises");
    for attr in &view.attributes {
        if attr.oid == "1.2.840.113549.1.9.7" {
            assert_eq!(
                attr.summary, "present (value hidden)",
                "a challengePassword is shown"
            );
        }
    }
    // A CSR without errors has a key certd can issue for.
    if !view.has_errors() {
        let key = &view.public_key;
        match key.algorithm {
            KeyAlgorithm::Rsa => assert!(key.bits.is_some_and(|b| b >= 2048)),
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 | KeyAlgorithm::Ed25519 => {}
            other => panic!("{other:?} key passed without an error"),
        }
    }
    // The same DER as PEM decodes to the same view.
    if view.input_format == InputFormat::Der {
        if let Ok(pem) =
            der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::CRLF, data)
        {
            if pem.len() <= csr_view::MAX_INPUT {
                let again = csr_view::decode_csr(pem.as_bytes()).expect("the PEM form decodes");
                assert_eq!(again.input_format, InputFormat::Pem);
                assert_eq!(again.subject, view.subject);
                assert_eq!(again.subject_attributes, view.subject_attributes);
                assert_eq!(again.sans, view.sans);
                assert_eq!(again.public_key, view.public_key);
                assert_eq!(again.signature_algorithm, view.signature_algorithm);
                assert_eq!(again.extensions, view.extensions);
                assert_eq!(again.attributes, view.attributes);
                assert_eq!(again.problems, view.problems);
            }
        }
    }
}
