//! Decoding CSRs made by `openssl req` (as subscribers make them), damaged
//! CSRs, and inputs that are not CSRs.

use super::*;
use std::process::Command;

/// A temporary directory to run openssl in.
struct Openssl {
    dir: tempfile::TempDir,
}

const MIN_CONFIG: &str = "[req]\ndistinguished_name = dn\n[dn]\n";

impl Openssl {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("req.cnf"), MIN_CONFIG).expect("write req.cnf");
        std::fs::write(
            dir.path().join("password.cnf"),
            "[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n\
             [dn]\nCN = pw.example.org\n[attrs]\nchallengePassword = s3cret-Passw0rd\n",
        )
        .expect("write password.cnf");
        Openssl { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs (it is installed by ./test)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read openssl output")
    }

    /// `openssl req -new` with a new key; returns the PEM. An empty
    /// `subject` leaves it to the configuration.
    fn csr(&self, name: &str, newkey: &[&str], subject: &str, extra: &[&str]) -> Vec<u8> {
        let out = format!("{name}.pem");
        let key = format!("{name}.key");
        let mut args = vec![
            "req", "-new", "-nodes", "-utf8", "-keyout", &key, "-out", &out,
        ];
        args.extend_from_slice(newkey);
        if !subject.is_empty() {
            args.extend_from_slice(&["-subj", subject]);
        }
        if !extra.contains(&"-config") {
            args.extend_from_slice(&["-config", "req.cnf"]);
        }
        args.extend_from_slice(extra);
        self.run(&args);
        self.read(&out)
    }

    /// The DER of `name.pem`.
    fn der(&self, name: &str) -> Vec<u8> {
        let pem = format!("{name}.pem");
        let der = format!("{name}.der");
        self.run(&["req", "-in", &pem, "-outform", "DER", "-out", &der]);
        self.read(&der)
    }
}

const RSA2048: &[&str] = &["-newkey", "rsa:2048"];
const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
const P384: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"];
const P521: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"];
const ED25519: &[&str] = &["-newkey", "ed25519"];

fn decode(input: &[u8]) -> CsrView {
    decode_csr(input).unwrap_or_else(|e| panic!("decode failed: {} ({e})", e.code()))
}

fn codes(view: &CsrView) -> Vec<(ProblemCode, Severity)> {
    view.problems.iter().map(|p| (p.code, p.severity)).collect()
}

fn attr(name: &str, oid: &str, value: &str) -> NameAttribute {
    NameAttribute {
        name: name.into(),
        oid: oid.into(),
        value: value.into(),
    }
}

fn san(kind: SanKind, value: &str) -> San {
    San {
        kind,
        value: value.into(),
    }
}

fn ext(oid: &str, name: Option<&str>, critical: bool, summary: &str) -> ExtensionView {
    ExtensionView {
        oid: oid.into(),
        name: name.map(Into::into),
        critical,
        summary: summary.into(),
    }
}

fn error_code(input: &[u8]) -> &'static str {
    match decode_csr(input) {
        Ok(v) => panic!("decoded, expected an error: {v:?}"),
        Err(e) => e.code(),
    }
}

#[test]
fn rsa_2048_with_sans_and_extensions() {
    let ossl = Openssl::new();
    let pem = ossl.csr(
        "rsa",
        RSA2048,
        "/C=DE/L=München/O=Example, Inc./CN=www.example.com",
        &[
            "-addext",
            "subjectAltName=DNS:www.example.com,DNS:*.example.com,IP:192.0.2.1,IP:2001:db8::1,\
             email:admin@example.com,URI:https://example.com/x,\
             otherName:1.3.6.1.4.1.311.20.2.3;UTF8:user@example.com",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth,1.3.6.1.4.1.99999.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "nsComment=hello",
        ],
    );
    let view = decode(&pem);
    assert_eq!(view.input_format, InputFormat::Pem);
    assert_eq!(
        view.subject,
        "CN=www.example.com,O=Example\\, Inc.,L=München,C=DE"
    );
    assert_eq!(
        view.subject_attributes,
        vec![
            attr("C", "2.5.4.6", "DE"),
            attr("L", "2.5.4.7", "München"),
            attr("O", "2.5.4.10", "Example, Inc."),
            attr("CN", "2.5.4.3", "www.example.com"),
        ]
    );
    assert_eq!(
        view.sans,
        vec![
            san(SanKind::Dns, "www.example.com"),
            san(SanKind::Dns, "*.example.com"),
            san(SanKind::Ip, "192.0.2.1"),
            san(SanKind::Ip, "2001:db8::1"),
            san(SanKind::Email, "admin@example.com"),
            san(SanKind::Uri, "https://example.com/x"),
            san(SanKind::OtherName, "1.3.6.1.4.1.311.20.2.3"),
        ]
    );
    assert_eq!(
        view.public_key,
        PublicKeyView {
            algorithm: KeyAlgorithm::Rsa,
            name: "RSA".into(),
            oid: "1.2.840.113549.1.1.1".into(),
            curve_oid: None,
            bits: Some(2048),
            rsa_exponent: Some(65537),
        }
    );
    assert_eq!(view.signature_algorithm, "RSA PKCS#1 v1.5 with SHA-256");
    assert_eq!(view.signature_algorithm_oid, "1.2.840.113549.1.1.11");
    assert_eq!(
        view.extensions,
        vec![
            ext(
                "2.5.29.17",
                Some("subjectAltName"),
                false,
                "DNS:www.example.com, DNS:*.example.com, IP:192.0.2.1, IP:2001:db8::1, \
                 email:admin@example.com, URI:https://example.com/x, \
                 otherName:1.3.6.1.4.1.311.20.2.3"
            ),
            ext(
                "2.5.29.15",
                Some("keyUsage"),
                true,
                "digitalSignature, keyEncipherment"
            ),
            ext(
                "2.5.29.37",
                Some("extendedKeyUsage"),
                false,
                "serverAuth, clientAuth, 1.3.6.1.4.1.99999.1"
            ),
            ext("2.5.29.19", Some("basicConstraints"), true, "CA:FALSE"),
            ext(
                "2.16.840.1.113730.1.13",
                Some("nsComment"),
                false,
                "unparsed"
            ),
        ]
    );
    assert_eq!(view.attributes, vec![]);
    assert_eq!(view.problems, vec![]);
    assert!(!view.has_errors());
}

#[test]
fn the_same_csr_as_der_base64_and_untidy_pem() {
    let ossl = Openssl::new();
    let pem = ossl.csr(
        "p256",
        P256,
        "/CN=host.example.org",
        &["-addext", "subjectAltName=DNS:host.example.org"],
    );
    let der = ossl.der("p256");
    let view = decode(&pem);
    let text = String::from_utf8(pem.clone()).expect("PEM is text");
    let same_as = |input: &[u8], format: InputFormat| {
        let other = decode(input);
        assert_eq!(other.input_format, format);
        assert_eq!(
            CsrView {
                input_format: view.input_format,
                ..other
            },
            view
        );
    };
    same_as(&der, InputFormat::Der);
    // Bare base64, wrapped differently.
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    same_as(b64.as_bytes(), InputFormat::Base64);
    let rewrapped: Vec<String> = b64
        .as_bytes()
        .chunks(50)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    same_as(rewrapped.join("\r\n").as_bytes(), InputFormat::Base64);
    // CRLF, indentation, trailing blanks, a BOM and text around the block.
    let untidy = format!(
        "\u{feff}Certificate request for host.example.org:\r\n\r\n{}\r\nthanks\r\n",
        text.lines()
            .map(|l| format!("   {l}  \t"))
            .collect::<Vec<_>>()
            .join("\r\n")
    );
    same_as(untidy.as_bytes(), InputFormat::Pem);
    // The label older tools write.
    let new_label = text.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
    same_as(new_label.as_bytes(), InputFormat::Pem);
    // A key pasted before the CSR does not hide it.
    let key = String::from_utf8(ossl.read("p256.key")).expect("key is text");
    let both = format!("{key}{text}");
    same_as(both.as_bytes(), InputFormat::Pem);
}

#[test]
fn p256() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr(
        "p256",
        P256,
        "/CN=host.example.org",
        &["-addext", "subjectAltName=DNS:host.example.org"],
    ));
    assert_eq!(view.subject, "CN=host.example.org");
    assert_eq!(view.sans, vec![san(SanKind::Dns, "host.example.org")]);
    assert_eq!(
        view.public_key,
        PublicKeyView {
            algorithm: KeyAlgorithm::EcP256,
            name: "EC P-256".into(),
            oid: "1.2.840.10045.2.1".into(),
            curve_oid: Some("1.2.840.10045.3.1.7".into()),
            bits: Some(256),
            rsa_exponent: None,
        }
    );
    assert_eq!(view.signature_algorithm, "ECDSA with SHA-256");
    assert_eq!(view.signature_algorithm_oid, "1.2.840.10045.4.3.2");
    assert_eq!(
        view.extensions,
        vec![ext(
            "2.5.29.17",
            Some("subjectAltName"),
            false,
            "DNS:host.example.org"
        )]
    );
    assert_eq!(view.problems, vec![]);
}

#[test]
fn p384_asking_for_a_ca() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr(
        "p384",
        P384,
        "/O=Example/CN=Example Issuing CA",
        &[
            "-sha384",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ));
    assert_eq!(view.subject, "CN=Example Issuing CA,O=Example");
    assert_eq!(view.sans, vec![]);
    assert_eq!(view.public_key.algorithm, KeyAlgorithm::EcP384);
    assert_eq!(view.public_key.name, "EC P-384");
    assert_eq!(view.public_key.curve_oid.as_deref(), Some("1.3.132.0.34"));
    assert_eq!(view.public_key.bits, Some(384));
    assert_eq!(view.signature_algorithm, "ECDSA with SHA-384");
    assert_eq!(view.signature_algorithm_oid, "1.2.840.10045.4.3.3");
    assert_eq!(
        view.extensions,
        vec![
            ext(
                "2.5.29.19",
                Some("basicConstraints"),
                true,
                "CA:TRUE, pathlen:0"
            ),
            ext("2.5.29.15", Some("keyUsage"), true, "keyCertSign, cRLSign"),
        ]
    );
    assert_eq!(
        codes(&view),
        vec![(ProblemCode::CaRequested, Severity::Warning)]
    );
    assert!(!view.has_errors());
}

#[test]
fn p521_is_an_unsupported_curve() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr("p521", P521, "/CN=p521.example.org", &[]));
    assert_eq!(view.public_key.algorithm, KeyAlgorithm::EcP521);
    assert_eq!(view.public_key.name, "EC P-521");
    assert_eq!(view.public_key.curve_oid.as_deref(), Some("1.3.132.0.35"));
    assert_eq!(view.public_key.bits, Some(521));
    assert_eq!(view.signature_algorithm, "ECDSA with SHA-256");
    assert_eq!(
        codes(&view),
        vec![
            (ProblemCode::UnsupportedCurve, Severity::Error),
            (ProblemCode::SignatureNotVerified, Severity::Warning),
        ]
    );
}

#[test]
fn ed25519_with_empty_subject() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr("ed", ED25519, "/", &[]));
    assert_eq!(view.subject, "");
    assert_eq!(view.subject_attributes, vec![]);
    assert_eq!(view.sans, vec![]);
    assert_eq!(
        view.public_key,
        PublicKeyView {
            algorithm: KeyAlgorithm::Ed25519,
            name: "Ed25519".into(),
            oid: "1.3.101.112".into(),
            curve_oid: None,
            bits: Some(256),
            rsa_exponent: None,
        }
    );
    assert_eq!(view.signature_algorithm, "Ed25519");
    assert_eq!(view.signature_algorithm_oid, "1.3.101.112");
    assert_eq!(view.extensions, vec![]);
    assert_eq!(view.attributes, vec![]);
    assert_eq!(
        codes(&view),
        vec![(ProblemCode::NoNames, Severity::Warning)]
    );
}

#[test]
fn challenge_password_is_never_shown() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr("pw", ED25519, "", &["-config", "password.cnf"]));
    assert_eq!(view.subject, "CN=pw.example.org");
    assert_eq!(
        view.attributes,
        vec![AttributeView {
            oid: "1.2.840.113549.1.9.7".into(),
            name: Some("challengePassword".into()),
            summary: "present (value hidden)".into(),
        }]
    );
    assert_eq!(view.problems, vec![]);
    let json = serde_json::to_string(&view).expect("serialises");
    assert!(
        !json.contains("s3cret"),
        "the challengePassword leaked: {json}"
    );
    assert!(!format!("{view:?}").contains("s3cret"));
}

#[test]
fn ed25519_with_sans() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr(
        "ed",
        ED25519,
        "/CN=alice@example.com",
        &["-addext", "subjectAltName=email:alice@example.com"],
    ));
    assert_eq!(view.subject, "CN=alice@example.com");
    assert_eq!(view.sans, vec![san(SanKind::Email, "alice@example.com")]);
    assert_eq!(view.public_key.algorithm, KeyAlgorithm::Ed25519);
    assert_eq!(view.problems, vec![]);
}

#[test]
fn ed448_is_an_unsupported_key() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr("ed448", &["-newkey", "ed448"], "/CN=ed448.example.org", &[]));
    assert_eq!(view.public_key.algorithm, KeyAlgorithm::Unknown);
    assert_eq!(view.public_key.name, "Ed448");
    assert_eq!(view.public_key.oid, "1.3.101.113");
    assert_eq!(view.public_key.bits, None);
    assert_eq!(view.signature_algorithm, "Ed448");
    assert_eq!(
        codes(&view),
        vec![
            (ProblemCode::UnsupportedKey, Severity::Error),
            (ProblemCode::SignatureAlgorithmRefused, Severity::Error),
        ]
    );
}

/// The view applies certd's own rules (certd_api::keys): what certd would
/// refuse is an error here, not a warning.
#[test]
fn what_certd_refuses_is_an_error_in_the_view() {
    let ossl = Openssl::new();
    let sha1 = decode(&ossl.csr(
        "sha1",
        &[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-sha1",
        ],
        "/CN=sha1.example.org",
        &[],
    ));
    assert_eq!(
        codes(&sha1),
        vec![(ProblemCode::SignatureAlgorithmRefused, Severity::Error)]
    );
    assert!(
        sha1.problems[0].message.contains("SHA-1"),
        "{:?}",
        sha1.problems
    );
    let odd_size = decode(&ossl.csr(
        "rsa2560",
        &["-newkey", "rsa:2560"],
        "/CN=odd.example.org",
        &[],
    ));
    assert_eq!(
        codes(&odd_size),
        vec![(ProblemCode::UnsupportedKey, Severity::Error)]
    );
    assert!(odd_size.problems[0].message.contains("2560 bits"));
    let big_exponent = decode(&ossl.csr(
        "rsa-e",
        &["-newkey", "rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:65539"],
        "/CN=e.example.org",
        &[],
    ));
    assert_eq!(
        codes(&big_exponent),
        vec![(ProblemCode::UnusualRsaExponent, Severity::Error)]
    );
}

#[test]
fn rsa_1024_is_weak() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr(
        "rsa1024",
        &["-newkey", "rsa:1024"],
        "/CN=old.example.org",
        &[],
    ));
    assert_eq!(view.public_key.bits, Some(1024));
    assert_eq!(view.public_key.rsa_exponent, Some(65537));
    // The signature is still checked (and good): only the size is reported.
    assert_eq!(
        codes(&view),
        vec![(ProblemCode::WeakRsaKey, Severity::Error)]
    );
    assert!(view.problems[0].message.contains("1024 bits"));
}

#[test]
fn rsa_exponent_3_is_weak() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr(
        "rsa3",
        &["-newkey", "rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:3"],
        "/CN=e3.example.org",
        &[],
    ));
    assert_eq!(view.public_key.bits, Some(2048));
    assert_eq!(view.public_key.rsa_exponent, Some(3));
    assert_eq!(
        codes(&view),
        vec![(ProblemCode::WeakRsaExponent, Severity::Error)]
    );
}

#[test]
fn flipped_bytes_break_the_signature() {
    let ossl = Openssl::new();
    ossl.csr("rsa", RSA2048, "/CN=www.example.com", &[]);
    ossl.csr("ed", ED25519, "/CN=www.example.com", &[]);
    ossl.csr("p256", P256, "/CN=www.example.com", &[]);
    for name in ["rsa", "ed", "p256"] {
        let der = ossl.der(name);
        assert_eq!(decode(&der).problems, vec![], "{name}");
        // A byte of the signature.
        let mut sig = der.clone();
        if let Some(last) = sig.last_mut() {
            *last ^= 0x01;
        }
        assert_eq!(
            codes(&decode(&sig)),
            vec![(ProblemCode::BadSignature, Severity::Error)],
            "{name}: signature byte"
        );
        // A byte of the subject: "www" becomes "vww".
        let at = der
            .windows(3)
            .position(|w| w == b"www")
            .expect("the CN is in the DER");
        let mut subject = der.clone();
        subject[at] ^= 0x01;
        let view = decode(&subject);
        assert_eq!(view.subject, "CN=vww.example.com");
        assert_eq!(
            codes(&view),
            vec![(ProblemCode::BadSignature, Severity::Error)],
            "{name}: subject byte"
        );
    }
}

#[test]
fn invalid_san_syntax() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr(
        "bad",
        P256,
        "/CN=bad.example.org",
        &[
            "-addext",
            "subjectAltName=DNS:Bad_Name.example.com,DNS:localhost,DNS:ok.example.org,\
             email:no-at-sign,email:bob@example.org",
        ],
    ));
    assert_eq!(view.sans.len(), 5);
    assert_eq!(
        codes(&view),
        vec![
            (ProblemCode::InvalidSan, Severity::Error),
            (ProblemCode::InvalidSan, Severity::Error),
            (ProblemCode::InvalidSan, Severity::Error),
        ]
    );
    assert!(view.problems[0].message.contains("Bad_Name.example.com"));
    assert!(view.problems[1].message.contains("localhost"));
    assert!(view.problems[2].message.contains("no-at-sign"));
}

#[test]
fn trailing_data_after_der() {
    let ossl = Openssl::new();
    ossl.csr("p256", P256, "/CN=host.example.org", &[]);
    let der = ossl.der("p256");
    let clean = decode(&der);
    let mut padded = der.clone();
    padded.extend_from_slice(b"\0\0junk\n");
    let view = decode(&padded);
    assert_eq!(
        codes(&view),
        vec![(ProblemCode::TrailingData, Severity::Error)]
    );
    assert!(view.problems[0].message.starts_with("7 byte(s)"));
    assert_eq!(
        CsrView {
            problems: vec![],
            ..view
        },
        clean
    );
}

/// A CSR whose two attributes are in the wrong order for DER (a SET OF must
/// be sorted), correctly signed over those bytes, as a BER encoder might
/// make it.
#[test]
fn unsorted_attributes_are_not_der() {
    let ossl = Openssl::new();
    ossl.csr(
        "ed",
        ED25519,
        "",
        &[
            "-config",
            "password.cnf",
            "-addext",
            "subjectAltName=DNS:ber.example.org",
        ],
    );
    let der = ossl.der("ed");
    assert_eq!(decode(&der).problems, vec![]);
    let info = signed_info(&der).expect("the CSR has an info").to_vec();
    // info = SEQUENCE { version, subject, spki, [0] { attr, attr } }
    let mut reader = SliceReader::new(&info).expect("reader");
    let header = der::Header::decode(&mut reader).expect("info header");
    let mut parts = Vec::new();
    while !reader.is_finished() {
        parts.push(reader.tlv_bytes().expect("info element").to_vec());
    }
    assert_eq!(parts.len(), 4);
    let attrs = &parts[3];
    let mut inner = SliceReader::new(attrs).expect("reader");
    let attrs_header = der::Header::decode(&mut inner).expect("[0] header");
    let first = inner.tlv_bytes().expect("first attribute").to_vec();
    let second = inner.tlv_bytes().expect("second attribute").to_vec();
    let mut swapped_attrs = attrs_header.to_der().expect("header");
    swapped_attrs.extend_from_slice(&second);
    swapped_attrs.extend_from_slice(&first);
    let mut tbs = header.to_der().expect("header");
    for part in &parts[..3] {
        tbs.extend_from_slice(part);
    }
    tbs.extend_from_slice(&swapped_attrs);
    assert_eq!(tbs.len(), info.len());
    std::fs::write(ossl.path("tbs"), &tbs).expect("write tbs");
    ossl.run(&[
        "pkeyutl", "-sign", "-rawin", "-inkey", "ed.key", "-in", "tbs", "-out", "sig",
    ]);
    let sig = ossl.read("sig");
    // CertificationRequest: SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING }
    let mut body = tbs.clone();
    body.extend_from_slice(&[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70]);
    body.extend_from_slice(&[0x03, 0x41, 0x00]);
    body.extend_from_slice(&sig);
    let len = der::Length::try_from(body.len()).expect("length");
    let mut csr = der::Header::new(der::Tag::Sequence, len)
        .to_der()
        .expect("header");
    csr.extend_from_slice(&body);

    let view = decode(&csr);
    assert_eq!(codes(&view), vec![(ProblemCode::NotDer, Severity::Error)]);
    assert_eq!(view.sans, vec![san(SanKind::Dns, "ber.example.org")]);
    assert_eq!(view.attributes.len(), 1);
}

#[test]
fn inputs_that_are_not_csrs() {
    let ossl = Openssl::new();
    let pem = ossl.csr("p256", P256, "/CN=host.example.org", &[]);
    let der = ossl.der("p256");

    assert_eq!(error_code(b""), "empty");
    assert_eq!(error_code(b" \r\n\t "), "empty");
    assert_eq!(error_code(b"this is not a CSR!"), "not_pem_or_der");
    assert_eq!(error_code(b"hello world"), "not_pem_or_der");
    assert_eq!(error_code(&[0xff, 0x00, 0x13, 0x37]), "not_pem_or_der");
    assert_eq!(error_code(&[0x30, 0x82, 0xff]), "bad_der");
    assert_eq!(error_code(&[0x30, 0x03, 0x02, 0x01, 0x00]), "not_a_csr");

    // Truncated: DER cut short, PEM without its end, PEM of a cut DER.
    assert_eq!(error_code(&der[..der.len() / 2]), "bad_der");
    assert_eq!(error_code(&der[..der.len() - 1]), "bad_der");
    let text = String::from_utf8(pem.clone()).expect("text");
    let no_end = text
        .lines()
        .filter(|l| !l.starts_with("-----END"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(error_code(no_end.as_bytes()), "bad_pem");
    let cut = der::pem::encode_string(
        "CERTIFICATE REQUEST",
        der::pem::LineEnding::LF,
        &der[..der.len() / 2],
    )
    .expect("PEM");
    assert_eq!(error_code(cut.as_bytes()), "bad_der");
    let damaged = text.replacen("MI", "M!", 1);
    assert_eq!(error_code(damaged.as_bytes()), "bad_base64");

    // Oversized, and just small enough.
    let mut big = pem.clone();
    big.resize(MAX_INPUT, b'\n');
    assert_eq!(decode(&big).subject, "CN=host.example.org");
    big.push(b'\n');
    match decode_csr(&big) {
        Err(DecodeError::TooLarge { len }) => assert_eq!(len, MAX_INPUT + 1),
        other => panic!("expected too_large, got {other:?}"),
    }

    // Other PEM blocks: a certificate, a key.
    ossl.run(&[
        "req", "-x509", "-in", "p256.pem", "-key", "p256.key", "-days", "1", "-out", "cert.pem",
    ]);
    let cert = decode_csr(&ossl.read("cert.pem")).expect_err("a certificate");
    assert_eq!(cert.code(), "wrong_pem_label");
    assert_eq!(
        cert,
        DecodeError::WrongPemLabel {
            label: "CERTIFICATE".into()
        }
    );
    assert!(cert.to_string().contains("a certificate, not a request"));
    let key = decode_csr(&ossl.read("p256.key")).expect_err("a key");
    assert_eq!(key.code(), "wrong_pem_label");
    assert!(key.to_string().contains("private key"));
    ossl.run(&[
        "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
    ]);
    assert_eq!(
        decode_csr(&ossl.read("cert.der")),
        Err(DecodeError::NotACsr {
            detail: "it is an X.509 certificate".into()
        })
    );
}

#[test]
fn error_codes_and_json_are_stable() {
    let errors = [
        (DecodeError::TooLarge { len: 1 }, "too_large"),
        (DecodeError::Empty, "empty"),
        (DecodeError::NotPemOrDer, "not_pem_or_der"),
        (
            DecodeError::WrongPemLabel { label: "X".into() },
            "wrong_pem_label",
        ),
        (DecodeError::BadPem { detail: "x".into() }, "bad_pem"),
        (DecodeError::BadBase64 { detail: "x".into() }, "bad_base64"),
        (DecodeError::BadDer { detail: "x".into() }, "bad_der"),
        (DecodeError::NotACsr { detail: "x".into() }, "not_a_csr"),
    ];
    for (e, code) in errors {
        assert_eq!(e.code(), code);
        let json = serde_json::to_value(&e).expect("serialises");
        assert_eq!(json["code"], code);
        assert_eq!(json["message"], e.to_string());
    }

    let problem = Problem::error(ProblemCode::WeakRsaKey, "m");
    assert_eq!(
        serde_json::to_value(&problem).expect("serialises"),
        serde_json::json!({"code": "weak_rsa_key", "severity": "error", "message": "m"})
    );
    let all = [
        (ProblemCode::NotDer, "not_der"),
        (ProblemCode::TrailingData, "trailing_data"),
        (ProblemCode::BadPublicKey, "bad_public_key"),
        (ProblemCode::UnsupportedKey, "unsupported_key"),
        (ProblemCode::UnsupportedCurve, "unsupported_curve"),
        (ProblemCode::WeakRsaKey, "weak_rsa_key"),
        (ProblemCode::WeakRsaExponent, "weak_rsa_exponent"),
        (ProblemCode::UnusualRsaExponent, "unusual_rsa_exponent"),
        (ProblemCode::BadSignature, "bad_signature"),
        (ProblemCode::SignatureNotVerified, "signature_not_verified"),
        (
            ProblemCode::SignatureAlgorithmRefused,
            "signature_algorithm_refused",
        ),
        (ProblemCode::BadExtension, "bad_extension"),
        (ProblemCode::CaRequested, "ca_requested"),
        (ProblemCode::InvalidSan, "invalid_san"),
        (ProblemCode::NoNames, "no_names"),
    ];
    for (code, text) in all {
        assert_eq!(serde_json::to_value(code).expect("serialises"), text);
    }
}

#[test]
fn view_serialises_to_json() {
    let ossl = Openssl::new();
    let view = decode(&ossl.csr(
        "p256",
        P256,
        "/CN=host.example.org",
        &[
            "-addext",
            "subjectAltName=DNS:host.example.org,IP:192.0.2.7",
        ],
    ));
    let json = serde_json::to_value(&view).expect("serialises");
    assert_eq!(json["input_format"], "pem");
    assert_eq!(json["subject"], "CN=host.example.org");
    assert_eq!(
        json["subject_attributes"],
        serde_json::json!([{"name": "CN", "oid": "2.5.4.3", "value": "host.example.org"}])
    );
    assert_eq!(
        json["sans"],
        serde_json::json!([
            {"kind": "dns", "value": "host.example.org"},
            {"kind": "ip", "value": "192.0.2.7"}
        ])
    );
    assert_eq!(json["public_key"]["algorithm"], "ec_p256");
    assert_eq!(json["public_key"]["bits"], 256);
    assert_eq!(json["public_key"]["rsa_exponent"], serde_json::Value::Null);
    assert_eq!(json["extensions"][0]["critical"], false);
    assert_eq!(json["problems"], serde_json::json!([]));
}

#[test]
fn rfc4514_escaping() {
    assert_eq!(names::escape_value("a,b+c"), "a\\,b\\+c");
    assert_eq!(names::escape_value("#x "), "\\#x\\ ");
    assert_eq!(names::escape_value(" x"), "\\ x");
    assert_eq!(names::escape_value("a\"<>;\\"), "a\\\"\\<\\>\\;\\\\");
    assert_eq!(names::escape_value("a\nb\0"), "a\\0ab\\00");
    // A right-to-left override would make the name read differently.
    assert_eq!(names::escape_value("ab\u{202e}c"), "ab\\e2\\80\\aec");
}

/// Every single-byte change and every truncation of real CSRs decodes
/// without panicking (the fuzz target explores further).
#[test]
fn damaged_csrs_never_panic() {
    let ossl = Openssl::new();
    ossl.csr(
        "p256",
        P256,
        "/C=DE/CN=host.example.org",
        &[
            "-addext",
            "subjectAltName=DNS:host.example.org,IP:192.0.2.1,email:a@example.org",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-addext",
            "basicConstraints=CA:TRUE,pathlen:1",
        ],
    );
    ossl.csr("ed", ED25519, "", &["-config", "password.cnf"]);
    for name in ["p256", "ed"] {
        let der = ossl.der(name);
        for i in 0..der.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut d = der.clone();
                d[i] ^= flip;
                let _ = decode_csr(&d);
            }
            let _ = decode_csr(&der[..i]);
        }
    }
}

#[test]
fn openssl_is_available() {
    // The tests above rely on it; fail clearly rather than obscurely.
    Openssl::new().run(&["version"]);
}
