//! The bad-input corpus: malformed and hostile requests sent to the real
//! `certd` over mutual TLS, each expecting the exact error code and HTTP
//! status of the README's table. Afterwards the daemon still serves, only
//! the good requests were signed, every refusal is in the audit log, and
//! the log's hash chain verifies.
#![forbid(unsafe_code)]

use certd_api::ErrorCode;
use certd_e2e::api::{make_csr, make_key, pem_encode, ApiCaBuilder, ApiDaemon, Csr, KeyAlg};
use serde_json::{json, Value};
use std::path::Path;
use tempfile::TempDir;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

const CONFIG: &str = r#"
[[profile]]
name = "tls-server"
kind = "tls-server"
max_validity_days = 90

[[profile]]
name = "tls-server-ip"
kind = "tls-server"
max_validity_days = 90
allow_ip = true

[[profile]]
name = "tls-p256"
kind = "tls-server"
max_validity_days = 90
key_types = ["p256"]

[[profile]]
name = "tls-client"
kind = "tls-client"
max_validity_days = 365

[[profile]]
name = "smime"
kind = "smime-mailbox"
smime_generation = "strict"
max_validity_days = 365

[[profile]]
name = "tls-approved"
kind = "tls-server"
max_validity_days = 90
allow_wildcard = true
approvals_required = 2
validation_methods = { dns = ["dns_txt", "http_file"] }
validation_reuse_days = { dns = 30 }

[[profile]]
name = "tls-secret"
kind = "tls-server"
max_validity_days = 90
"#;

const MAIN: &str = r#"
organizations = [{ name = "Example Corp", localities = ["Berlin"], countries = ["DE"] }]
certifiers = ["ca"]
profiles = ["tls-server", "tls-server-ip", "tls-p256", "tls-client", "smime", "tls-approved"]
dns_subtrees = ["example.com"]
email_subtrees = ["example.com"]
ip_networks = ["192.0.2.0/24"]
may_revoke = true
"#;

const LIMITED: &str = r#"
certifiers = ["ca"]
profiles = ["tls-server"]
dns_subtrees = ["example.com"]
rate_limit_per_minute = 1
"#;

const READONLY: &str = r#"
certifiers = ["ca"]
profiles = ["tls-server"]
dns_subtrees = ["example.com"]
"#;

/// Reads everything, may revoke, but is granted only `tls-p256`.
const READER: &str = r#"
certifiers = ["ca"]
profiles = ["tls-p256"]
dns_subtrees = ["example.com"]
read_all = true
may_revoke = true
"#;

/// Two p256 certifiers (`ca-other` granted to nobody), seven profiles
/// and three RAs: `ra-main`, `ra-limited` (1 request a minute) and
/// `ra-readonly` (may not revoke).
fn start(dir: &Path) -> ApiDaemon {
    ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .certifier("ca-other", "p256")
        .toml(CONFIG)
        .ra("ra-main", MAIN)
        .ra("ra-limited", LIMITED)
        .ra("ra-readonly", READONLY)
        .ra("ra-reader", READER)
        .build()
        .start()
}

/// An error code and the HTTP status that goes with it.
type Expect = (&'static str, u16);

// The README's table, for the codes the corpus expects.
const BAD_CSR: Expect = ("bad_csr", 400);
const WEAK_KEY: Expect = ("weak_key", 400);
const KEY_NOT_PERMITTED: Expect = ("key_not_permitted", 400);
const BODY_TOO_LARGE: Expect = ("body_too_large", 413);
const BAD_REQUEST: Expect = ("bad_request", 400);
const UNSUPPORTED_MEDIA_TYPE: Expect = ("unsupported_media_type", 415);
const NAME_NOT_PERMITTED: Expect = ("name_not_permitted", 403);
const BAD_VALIDITY: Expect = ("bad_validity", 400);
const PROFILE_NOT_PERMITTED: Expect = ("profile_not_permitted", 403);
const UNKNOWN_CERTIFIER: Expect = ("unknown_certifier", 404);
const CERTIFIER_NOT_PERMITTED: Expect = ("certifier_not_permitted", 403);
const APPROVAL_REQUIRED: Expect = ("approval_required", 403);
const APPROVAL_INSUFFICIENT: Expect = ("approval_insufficient", 403);
const RATE_LIMITED: Expect = ("rate_limited", 429);
const NOT_FOUND: Expect = ("not_found", 404);
const NOT_AUTHORIZED: Expect = ("not_authorized", 403);
const NO_SUCH_ENDPOINT: Expect = ("no_such_endpoint", 404);
const METHOD_NOT_ALLOWED: Expect = ("method_not_allowed", 405);

/// What one case sends.
enum Call {
    /// `POST /v1/certificates` with this JSON.
    Issue(Value),
    /// Anything else.
    Raw {
        method: &'static str,
        path: String,
        /// `Some((content type or None for no header, body))`.
        body: Option<(Option<&'static str>, Vec<u8>)>,
    },
}

struct Case {
    name: &'static str,
    ra: &'static str,
    call: Call,
    code: &'static str,
    status: u16,
}

/// Subscriber requests of every kind the corpus needs.
struct Fixtures {
    good: Csr,
    p384: Csr,
    rsa1024: Csr,
    rsa_e3: Csr,
    secp256k1: Csr,
    brainpool: Csr,
    ed25519: Csr,
    empty_subject: Csr,
    odd_attribute: Csr,
    root_pem: String,
}

impl Fixtures {
    fn make(dir: &Path, root: &Path) -> Fixtures {
        let csr = |name: &str, alg: KeyAlg, subject: &str| {
            let key = make_key(dir, name, alg);
            make_csr(dir, name, &key, subject, &[])
        };
        let www = "/CN=www.example.com";
        let p256 = make_key(dir, "good", KeyAlg::P256);
        Fixtures {
            good: make_csr(dir, "good", &p256, www, &["DNS:www.example.com"]),
            empty_subject: make_csr(dir, "empty", &p256, "/", &[]),
            odd_attribute: make_csr(
                dir,
                "odd",
                &p256,
                "/CN=www.example.com/serialNumber=42",
                &[],
            ),
            p384: csr("p384", KeyAlg::P384, www),
            rsa1024: csr("rsa1024", KeyAlg::Rsa1024, www),
            rsa_e3: csr("rsa-e3", KeyAlg::RsaExponent3, www),
            secp256k1: csr("secp256k1", KeyAlg::Secp256k1, www),
            brainpool: csr("brainpool", KeyAlg::BrainpoolP256r1, www),
            ed25519: csr("ed25519", KeyAlg::Ed25519, www),
            root_pem: std::fs::read_to_string(root).expect("the certifier's certificate"),
        }
    }
}

/// A good tls-server request for www.example.com, changed by `f`.
fn issue(n: &mut u32, good: &Csr, f: impl FnOnce(&mut Value)) -> Call {
    *n += 1;
    let mut v = json!({
        "request_id": format!("case-{n}"),
        "profile": "tls-server",
        "csr": good.pem,
        "san": {"dns": ["www.example.com"]},
    });
    f(&mut v);
    Call::Issue(v)
}

/// RFC 3339 text of now plus `secs` (negative: in the past).
fn time_from_now(secs: i64) -> String {
    certd::clock::rfc3339(certd::clock::unix_seconds(std::time::SystemTime::now()) + secs)
}

/// Evidence that satisfies `tls-approved` for `name`: a requester, two
/// other officers, and a fresh dns_txt validation of example.com.
fn evidence() -> Value {
    json!({
        "requested_by": "requester",
        "approved_by": ["officer-1", "officer-2"],
        "validations": [{"name": "example.com", "method": "dns_txt", "checked_at": time_from_now(-3600), "detail": "_certd-challenge TXT"}],
    })
}

/// A `tls-approved` request for `name` whose good evidence is changed by `f`.
fn approved_for(n: &mut u32, good: &Csr, name: &str, f: impl FnOnce(&mut Value)) -> Call {
    let mut a = evidence();
    f(&mut a);
    issue(n, good, |v| {
        v["profile"] = json!("tls-approved");
        v["san"]["dns"] = json!([name]);
        v["approval"] = a;
    })
}

/// A `tls-approved` request for www.example.com whose good evidence is changed by `f`.
fn approved(n: &mut u32, good: &Csr, f: impl FnOnce(&mut Value)) -> Call {
    approved_for(n, good, "www.example.com", f)
}

fn raw(method: &'static str, path: &str, body: Option<(Option<&'static str>, Vec<u8>)>) -> Call {
    Call::Raw {
        method,
        path: path.to_string(),
        body,
    }
}

fn json_body(v: Value) -> Option<(Option<&'static str>, Vec<u8>)> {
    Some((Some("application/json"), v.to_string().into_bytes()))
}

#[rustfmt::skip]
fn cases(fx: &Fixtures, serial: &str) -> Vec<Case> {
    let n = &mut 0;
    let good = &fx.good;
    let case = |name, ra, call, (code, status): Expect| Case {
        name,
        ra,
        call,
        code,
        status,
    };
    let main = "ra-main";
    let csr = |pem: String| move |v: &mut Value| v["csr"] = json!(pem);
    let truncated = pem_encode("CERTIFICATE REQUEST", &good.der[..good.der.len() / 2]);
    let mut flipped = good.der.clone();
    if let Some(last) = flipped.last_mut() {
        *last ^= 0x01;
    }
    let bad_signature = pem_encode("CERTIFICATE REQUEST", &flipped);
    let mut trailing = good.der.clone();
    trailing.extend_from_slice(&[0x05, 0x00]);
    let trailing = pem_encode("CERTIFICATE REQUEST", &trailing);
    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nThis is not base64 at all!\n-----END CERTIFICATE REQUEST-----\n";
    let revoke = |s: &str| format!("/v1/certificates/{s}/revoke");
    let reason = |r: &str| json_body(json!({ "reason": r }));
    let mut huge = br#"{"request_id":"huge","profile":"tls-server","csr":""#.to_vec();
    huge.resize(10 * 1024 * 1024, b'A');
    huge.extend_from_slice(br#""}"#);
    let nested = "[".repeat(10_000).into_bytes();
    vec![
        // The CSR.
        case("truncated DER CSR", main, issue(n, good, csr(truncated)), BAD_CSR),
        case("CERTIFICATE PEM label", main, issue(n, good, csr(fx.root_pem.clone())), BAD_CSR),
        case("garbage inside the PEM armour", main, issue(n, good, csr(garbage.into())), BAD_CSR),
        case("not PEM at all", main, issue(n, good, csr("hello".into())), BAD_CSR),
        case("CSR signature with a flipped byte", main, issue(n, good, csr(bad_signature)), BAD_CSR),
        case("trailing bytes after the CSR", main, issue(n, good, csr(trailing)), BAD_CSR),
        case("RSA-1024 key", main, issue(n, good, csr(fx.rsa1024.pem.clone())), WEAK_KEY),
        case("RSA exponent 3", main, issue(n, good, csr(fx.rsa_e3.pem.clone())), WEAK_KEY),
        case("secp256k1 key", main, issue(n, good, csr(fx.secp256k1.pem.clone())), WEAK_KEY),
        case("brainpoolP256r1 key", main, issue(n, good, csr(fx.brainpool.pem.clone())), WEAK_KEY),
        case("Ed25519 key on a profile without it", main, issue(n, good, csr(fx.ed25519.pem.clone())), KEY_NOT_PERMITTED),
        case("P-384 key on a P-256-only profile", main, issue(n, good, |v| { v["csr"] = json!(fx.p384.pem); v["profile"] = json!("tls-p256"); }), KEY_NOT_PERMITTED),
        // The body.
        case("10 MB body", main, raw("POST", "/v1/certificates", Some((Some("application/json"), huge))), BODY_TOO_LARGE),
        case("10000 nested arrays", main, raw("POST", "/v1/certificates", Some((Some("application/json"), nested))), BAD_REQUEST),
        case("not JSON", main, raw("POST", "/v1/certificates", Some((Some("application/json"), b"hello".to_vec()))), BAD_REQUEST),
        case("empty body", main, raw("POST", "/v1/certificates", Some((Some("application/json"), Vec::new()))), BAD_REQUEST),
        case("unknown field", main, issue(n, good, |v| v["validity_days"] = json!(30)), BAD_REQUEST),
        case("unknown SAN type", main, issue(n, good, |v| v["san"]["uri"] = json!(["https://example.com/"])), BAD_REQUEST),
        case("missing csr", main, issue(n, good, |v| { if let Some(o) = v.as_object_mut() { o.remove("csr"); } }), BAD_REQUEST),
        case("request_id of the wrong type", main, issue(n, good, |v| v["request_id"] = json!(5)), BAD_REQUEST),
        case("text/plain body", main, raw("POST", "/v1/certificates", Some((Some("text/plain"), b"{}".to_vec()))), UNSUPPORTED_MEDIA_TYPE),
        case("no Content-Type", main, raw("POST", "/v1/certificates", Some((None, b"{}".to_vec()))), UNSUPPORTED_MEDIA_TYPE),
        case("application/jsonx", main, raw("POST", "/v1/certificates", Some((Some("application/jsonx"), b"{}".to_vec()))), UNSUPPORTED_MEDIA_TYPE),
        // Names.
        case("DNS name outside the namespace", main, issue(n, good, |v| v["san"]["dns"] = json!(["www.example.org"])), NAME_NOT_PERMITTED),
        case("IP SAN on a profile without IPs", main, issue(n, good, |v| v["san"]["ip"] = json!(["192.0.2.10"])), NAME_NOT_PERMITTED),
        case("IP outside the RA's networks", main, issue(n, good, |v| { v["profile"] = json!("tls-server-ip"); v["san"]["ip"] = json!(["198.51.100.7"]); }), NAME_NOT_PERMITTED),
        case("malformed IP", main, issue(n, good, |v| v["san"]["ip"] = json!(["999.0.2.1"])), NAME_NOT_PERMITTED),
        case("wildcard where not allowed", main, issue(n, good, |v| v["san"]["dns"] = json!(["*.example.com"])), NAME_NOT_PERMITTED),
        case("upper-case DNS name", main, issue(n, good, |v| v["san"]["dns"] = json!(["WWW.example.com"])), NAME_NOT_PERMITTED),
        case("U-label IDN", main, issue(n, good, |v| v["san"]["dns"] = json!(["bücher.example.com"])), NAME_NOT_PERMITTED),
        case("trailing dot", main, issue(n, good, |v| v["san"]["dns"] = json!(["www.example.com."])), NAME_NOT_PERMITTED),
        case("empty subject and no SAN", main, issue(n, good, |v| { v["profile"] = json!("tls-client"); v["csr"] = json!(fx.empty_subject.pem); if let Some(o) = v.as_object_mut() { o.remove("san"); } }), NAME_NOT_PERMITTED),
        case("commonName not among the SANs", main, issue(n, good, |v| { v["subject"] = json!({"common_name": "other.example.com"}) }), NAME_NOT_PERMITTED),
        case("email SAN on tls-server", main, issue(n, good, |v| v["san"]["email"] = json!(["a@example.com"])), NAME_NOT_PERMITTED),
        case("organizationName not in the grant", main, issue(n, good, |v| { v["subject"] = json!({"organization": "Other Corp", "locality": "Berlin", "country": "DE"}) }), NAME_NOT_PERMITTED),
        case("locality not listed for the granted organization", main, issue(n, good, |v| { v["subject"] = json!({"organization": "Example Corp", "locality": "Munich", "country": "DE"}) }), NAME_NOT_PERMITTED),
        case("tls-client commonName neither a SAN nor a granted pattern", main, issue(n, good, |v| { v["profile"] = json!("tls-client"); v["subject"] = json!({"common_name": "Mallory"}); }), NAME_NOT_PERMITTED),
        case("OU on tls-server", main, issue(n, good, |v| { v["subject"] = json!({"common_name": "www.example.com", "organizational_unit": "IT"}) }), NAME_NOT_PERMITTED),
        case("DNS SAN on S/MIME", main, issue(n, good, |v| { v["profile"] = json!("smime"); v["san"] = json!({"email": ["alice@example.com"], "dns": ["www.example.com"]}); }), NAME_NOT_PERMITTED),
        case("mailbox outside the email domains", main, issue(n, good, |v| { v["profile"] = json!("smime"); v["san"] = json!({"email": ["alice@example.org"]}); }), NAME_NOT_PERMITTED),
        case("unsupported subject attribute in the CSR", main, issue(n, good, |v| v["csr"] = json!(fx.odd_attribute.pem)), NAME_NOT_PERMITTED),
        // Validity.
        case("not_after in the past", main, issue(n, good, |v| v["not_after"] = json!("2020-01-01T00:00:00Z")), BAD_VALIDITY),
        case("not_after not a time", main, issue(n, good, |v| v["not_after"] = json!("next tuesday")), BAD_VALIDITY),
        case("not_after month 13", main, issue(n, good, |v| v["not_after"] = json!("2027-13-01T00:00:00Z")), BAD_VALIDITY),
        // Grants.
        case("profile not granted", main, issue(n, good, |v| v["profile"] = json!("tls-secret")), PROFILE_NOT_PERMITTED),
        case("unknown profile", main, issue(n, good, |v| v["profile"] = json!("no-such-profile")), PROFILE_NOT_PERMITTED),
        case("unknown certifier", main, issue(n, good, |v| v["certifier"] = json!("no-such-ca")), UNKNOWN_CERTIFIER),
        case("certifier not granted", main, issue(n, good, |v| v["certifier"] = json!("ca-other")), CERTIFIER_NOT_PERMITTED),
        case("empty request_id", main, issue(n, good, |v| v["request_id"] = json!("")), BAD_REQUEST),
        case("200-character request_id", main, issue(n, good, |v| v["request_id"] = json!("x".repeat(200))), BAD_REQUEST),
        case("request_id with spaces", main, issue(n, good, |v| v["request_id"] = json!("order 4711")), BAD_REQUEST),
        case("non-ASCII request_id", main, issue(n, good, |v| v["request_id"] = json!("bestellung-ü")), BAD_REQUEST),
        // Approval evidence (tls-approved: two approvers; dns_txt or http_file
        // validations, reused for at most 30 days).
        case("approval missing", main, issue(n, good, |v| v["profile"] = json!("tls-approved")), APPROVAL_REQUIRED),
        case("approval without validations", main, approved(n, good, |a| a["validations"] = json!([])), APPROVAL_INSUFFICIENT),
        case("one approver of two", main, approved(n, good, |a| a["approved_by"] = json!(["officer-1"])), APPROVAL_INSUFFICIENT),
        case("the same approver twice", main, approved(n, good, |a| a["approved_by"] = json!(["officer-1", "officer-1"])), APPROVAL_INSUFFICIENT),
        case("the same approver in other case", main, approved(n, good, |a| a["approved_by"] = json!(["officer-1", "OFFICER-1"])), APPROVAL_INSUFFICIENT),
        case("the requester among the approvers", main, approved(n, good, |a| a["approved_by"] = json!(["officer-1", "requester"])), APPROVAL_INSUFFICIENT),
        case("an empty approver", main, approved(n, good, |a| a["approved_by"] = json!(["officer-1", ""])), APPROVAL_INSUFFICIENT),
        case("a malformed approver", main, approved(n, good, |a| a["approved_by"] = json!(["officer-1", "officer 2; drop"])), APPROVAL_INSUFFICIENT),
        case("no requester named", main, approved(n, good, |a| { if let Some(o) = a.as_object_mut() { o.remove("requested_by"); } }), APPROVAL_INSUFFICIENT),
        case("a validation of another name", main, approved(n, good, |a| a["validations"][0]["name"] = json!("example.org")), APPROVAL_INSUFFICIENT),
        case("a method the profile does not accept", main, approved(n, good, |a| a["validations"][0]["method"] = json!("officer_attestation")), APPROVAL_INSUFFICIENT),
        case("a method certd does not know", main, approved(n, good, |a| a["validations"][0]["method"] = json!("trust_me")), APPROVAL_INSUFFICIENT),
        case("checked_at a day ahead", main, approved(n, good, |a| a["validations"][0]["checked_at"] = json!(time_from_now(86_400))), APPROVAL_INSUFFICIENT),
        case("checked_at older than the reuse period", main, approved(n, good, |a| a["validations"][0]["checked_at"] = json!(time_from_now(-31 * 86_400))), APPROVAL_INSUFFICIENT),
        case("checked_at not a time", main, approved(n, good, |a| a["validations"][0]["checked_at"] = json!("last week")), APPROVAL_INSUFFICIENT),
        case("http_file for a wildcard", main, approved_for(n, good, "*.example.com", |a| a["validations"] = json!([{"name": "*.example.com", "method": "http_file", "checked_at": time_from_now(-60)}])), APPROVAL_INSUFFICIENT),
        // Other endpoints.
        case("revoke an unknown serial", main, raw("POST", &revoke("0123456789abcdef0123456789abcdef"), reason("keyCompromise")), NOT_FOUND),
        case("revoke without the right", "ra-readonly", raw("POST", &revoke(serial), reason("keyCompromise")), NOT_AUTHORIZED),
        case("revoke outside the grant (read_all reads, never revokes)", "ra-reader", raw("POST", &revoke(serial), reason("superseded")), NOT_AUTHORIZED),
        case("revoke with an unknown reason", main, raw("POST", &revoke(serial), reason("certificateHold")), BAD_REQUEST),
        case("revoke without a reason", main, raw("POST", &revoke(serial), json_body(json!({}))), BAD_REQUEST),
        case("revoke as text/plain", main, raw("POST", &revoke(serial), Some((Some("text/plain"), b"keyCompromise".to_vec()))), UNSUPPORTED_MEDIA_TYPE),
        case("another RA's certificate", "ra-readonly", raw("GET", &format!("/v1/certificates/{serial}"), None), NOT_FOUND),
        case("serial that is not hex", main, raw("GET", "/v1/certificates/zz", None), NOT_FOUND),
        case("unknown list filter", main, raw("GET", "/v1/certificates?colour=red", None), BAD_REQUEST),
        case("unknown status filter", main, raw("GET", "/v1/certificates?status=expired", None), BAD_REQUEST),
        case("CRL of an unknown certifier", main, raw("GET", "/v1/certifiers/no-such-ca/crl", None), UNKNOWN_CERTIFIER),
        case("unknown path", main, raw("GET", "/v1/nothing-here", None), NO_SUCH_ENDPOINT),
        case("root path", main, raw("GET", "/", None), NO_SUCH_ENDPOINT),
        case("DELETE /v1/certificates", main, raw("DELETE", "/v1/certificates", None), METHOD_NOT_ALLOWED),
        case("POST /v1/health", main, raw("POST", "/v1/health", json_body(json!({}))), METHOD_NOT_ALLOWED),
        case("GET on revoke", main, raw("GET", &revoke(serial), None), METHOD_NOT_ALLOWED),
    ]
}

fn good_request(d: &ApiDaemon, ra: &str, id: &str, csr: &Csr) -> String {
    let reply = d
        .curl(ra, "POST", "/v1/certificates")
        .json(&json!({
            "request_id": id,
            "profile": "tls-server",
            "csr": csr.pem,
            "san": {"dns": ["www.example.com"]},
        }))
        .send();
    assert_eq!(reply.status, 201, "{ra} {id}: {reply}\n{}", d.log());
    reply.json()["serial"]
        .as_str()
        .expect("a serial")
        .to_string()
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

#[test]
fn every_hostile_request_gets_its_documented_error_and_nothing_else_changes() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = start(dir);
    let fx = Fixtures::make(dir, d.ca.certifier_pem("ca"));

    // The good requests around the corpus: one certificate to revoke, and
    // the limited RA's whole budget (one a minute), then at once the next
    // request, which is over it: the bucket gives a token back only a
    // minute later, far longer than two requests take.
    let serial = good_request(&d, "ra-main", "good-1", &fx.good);
    good_request(&d, "ra-limited", "budget-0", &fx.good);
    let over = d
        .curl("ra-limited", "POST", "/v1/certificates")
        .json(&json!({"request_id": "over-budget", "profile": "tls-server", "csr": fx.good.pem}))
        .send();
    assert_eq!(
        (over.status, over.error_code().as_deref()),
        (RATE_LIMITED.1, Some(RATE_LIMITED.0)),
        "{over}"
    );
    let good_before = 2;
    assert_eq!(d.issued("ca"), good_before);
    // Listing has a budget of its own: the first listing passes although
    // the issuance budget is spent, the second is over.
    let lists: Vec<(u16, Option<String>)> = (0..2)
        .map(|_| {
            let r = d.curl("ra-limited", "GET", "/v1/certificates").send();
            (r.status, r.error_code())
        })
        .collect();
    assert_eq!(
        lists,
        [
            (200, None),
            (RATE_LIMITED.1, Some(RATE_LIMITED.0.to_string()))
        ],
        "listings of the limited RA"
    );
    // ra-reader may read the certificate it may not revoke.
    let read = d
        .curl("ra-reader", "GET", &format!("/v1/certificates/{serial}"))
        .send();
    assert_eq!(read.status, 200, "{read}");

    let cases = cases(&fx, &serial);
    // Every code a request can be refused with is answered by a case here,
    // or by the test named for it (codes that need a locked certifier, a
    // broken token, a full disk, a slow client or a second request).
    let elsewhere = [
        ("rate_limited", "this test, before the corpus"),
        ("body_too_large", "this test, over HTTP/2 after the corpus"),
        ("conflict", "api_issue"),
        ("already_revoked", "api_revoke_crl"),
        (
            "key_blocked",
            "api_revoke_crl (a key revoked for keyCompromise)",
        ),
        ("in_progress", "fault_hsm (a stalled signature)"),
        ("lint_failed", "the lint unit tests"),
        ("certifier_locked", "api_locked"),
        ("certifier_unavailable", "api_recovery"),
        ("certifier_fault", "fault_hsm"),
        ("ledger_unavailable", "fault_disk_full"),
        ("audit_unavailable", "fault_disk_full"),
        ("storage_full", "fault_disk_full"),
        ("request_timeout", "fault_limits"),
        ("internal", "none: a fault inside certd, not an input"),
    ];
    let missing: Vec<&str> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|code| !cases.iter().any(|c| c.code == *code))
        .filter(|code| !elsewhere.iter().any(|(e, _)| e == code))
        .collect();
    assert!(
        missing.is_empty(),
        "refusal codes no case of the corpus answers: {missing:?}"
    );
    let mut failures = Vec::new();
    for c in &cases {
        let reply = match &c.call {
            Call::Issue(v) => d.curl(c.ra, "POST", "/v1/certificates").json(v).send(),
            Call::Raw { method, path, body } => {
                let mut curl = d.curl(c.ra, method, path);
                if let Some((ct, bytes)) = body {
                    // HTTP/1.1: curl reports an early 413 reliably there.
                    curl = curl.arg("--http1.1").body(*ct, bytes);
                }
                curl.send()
            }
        };
        let code = reply.error_code();
        let message_ok = reply.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty());
        if reply.status != c.status
            || code.as_deref() != Some(c.code)
            || reply.content_type != "application/json"
            || !message_ok
        {
            failures.push(format!(
                "{}: expected {} {}, got {reply}",
                c.name, c.status, c.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases answered wrongly:\n{}\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        d.log()
    );

    // The 10 MB body over HTTP/2, with the RA client (curl 7.88 drops an
    // early HTTP/2 answer to a body it is still sending; hyper does not).
    let huge = certd_api::IssueRequest::new("huge-h2", "tls-server", "A".repeat(10 * 1024 * 1024));
    match d.block_on(d.client("ra-main").issue(&huge)) {
        Err(certd_api::ClientError::Api(e)) if e.code == ErrorCode::BodyTooLarge => {}
        other => panic!("10 MB over HTTP/2: expected body_too_large, got {other:?}"),
    }

    // Still serving, and only the good requests were signed.
    good_request(&d, "ra-main", "good-2", &fx.good);
    assert_eq!(d.issued("ca"), good_before + 1);
    assert_eq!(d.issued("ca-other"), 0);
    assert_eq!(d.audit_of("issued").len() as u64, good_before + 1);
    let info = d
        .block_on(d.client("ra-main").get(&serial))
        .expect("the first certificate");
    assert_eq!(info.status, certd_api::CertStatus::Valid, "nothing revoked");

    // One audit entry per refusal, in order, with its code.
    let refused: Vec<Value> = d.audit_of("refused");
    let got: Vec<&str> = refused
        .iter()
        .map(|e| e["detail"]["code"].as_str().unwrap_or("?"))
        .collect();
    let want: Vec<&str> = ["rate_limited", "rate_limited"]
        .into_iter()
        .chain(cases.iter().map(|c| c.code))
        .chain(["body_too_large"])
        .collect();
    assert_eq!(got, want, "refused audit entries");
    d.verify_audit();
}

#[test]
fn refusals_are_audited_under_the_ra_that_made_them() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = start(dir);
    let requests = [
        ("GET", "/v1/nothing-here", None),
        ("POST", "/v1/certificates", Some("{")),
        ("GET", "/v1/certificates?status=expired", None),
        ("GET", "/v1/certificates?colour=red", None),
    ];
    for (method, path, body) in requests {
        let mut curl = d.curl("ra-main", method, path);
        if let Some(b) = body {
            curl = curl.body(Some("application/json"), b.as_bytes());
        }
        let reply = curl.send();
        assert!(reply.answered() && reply.status >= 400, "{reply}");
    }
    let refused = d.audit_of("refused");
    assert_eq!(refused.len(), requests.len(), "{refused:#?}");
    let wrong: Vec<String> = refused
        .iter()
        .filter(|e| e["actor"] != "ra-main")
        .map(|e| {
            format!(
                "{} {} → actor {}",
                e["detail"]["method"], e["detail"]["path"], e["actor"]
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "refusals of RA ra-main audited under another actor:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn approved_requests_issue_and_their_evidence_is_kept() {
    let tmp = tempdir();
    let dir = tmp.path();
    let d = start(dir);
    let fx = Fixtures::make(dir, d.ca.certifier_pem("ca"));
    let approval = evidence();
    let mut wildcard = evidence();
    // A dns_txt validation of the domain covers a wildcard under it; the
    // approvers' case differs from the requester's but they are others.
    wildcard["approved_by"] = json!(["Officer-3", "officer-4"]);
    for (id, name, a) in [
        ("approved-1", "www.example.com", &approval),
        ("approved-2", "*.example.com", &wildcard),
    ] {
        let reply = d
            .curl("ra-main", "POST", "/v1/certificates")
            .json(&json!({
                "request_id": id,
                "profile": "tls-approved",
                "csr": fx.good.pem,
                "san": {"dns": [name]},
                "approval": a,
            }))
            .send();
        assert_eq!(reply.status, 201, "{id}: {reply}\n{}", d.log());
        let serial = reply.json()["serial"].as_str().expect("serial").to_string();

        // GET gives the evidence back as certd checked and recorded it.
        let info = d
            .block_on(d.client("ra-main").get(&serial))
            .expect("the approved certificate");
        let want: certd_api::Approval = serde_json::from_value(a.clone()).expect("evidence");
        assert_eq!(info.approval.as_ref(), Some(&want), "{id}");

        // And the issued audit entry holds it.
        let issued = d.audit_of("issued");
        let entry = issued
            .iter()
            .find(|e| e["detail"]["serial"] == json!(serial))
            .unwrap_or_else(|| panic!("no issued entry for {serial}: {issued:#?}"));
        assert_eq!(&entry["detail"]["approval"], a, "{id}");
    }
    assert_eq!(d.issued("ca"), 2);
    assert!(d.audit_of("refused").is_empty());
    d.verify_audit();
}
