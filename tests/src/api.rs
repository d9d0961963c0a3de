//! The certd API from the outside.
//!
//! A CA with an `[api]` section ([`ApiCa`]) is either set up by the real
//! `./demo --setup-only` ([`ApiCa::from_demo`]) or written here
//! ([`ApiCaBuilder`]) when a test needs other certifier key types, several
//! RAs with different grants, rate limits or approval rules. Transport
//! identities come from a small `openssl` CA of their own ([`TlsInfra`]),
//! as in the demo. A started CA ([`ApiDaemon`]) is reached three ways: the
//! RAs' own client ([`certd_api::CertdClient`]), `curl` for raw bodies,
//! headers, methods and protocol versions ([`Curl`]), and one explicit
//! keep-alive connection ([`KeepAlive`]). Subscriber keys and CSRs are made
//! with `openssl` ([`make_key`], [`make_csr`]), issued certificates are
//! read back with `x509-cert` ([`CertView`]) and linted with pkilint
//! ([`lint_errors`]).

use crate::certd::{CertdConfig, CertdInstance};
pub use crate::process::tool;
use crate::process::{run, CmdOutput};
use crate::ready::ApiSocket;
use crate::token::Token;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the API may take to answer after a start, a reload or a
/// revocation (CRLs are coalesced for about a second).
pub const API_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `openssl ARGS…` and panics, with its output, unless it succeeds.
pub fn openssl(args: &[&dyn AsRef<OsStr>]) -> CmdOutput {
    let mut cmd = tool("openssl");
    for a in args {
        cmd.arg(a);
    }
    let out = run(&mut cmd);
    out.assert_success();
    out
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The lower-case hex SHA-256 fingerprint of a PEM certificate, as certd's
/// `[[ra]] fingerprints` want it.
pub fn fingerprint(cert: &Path) -> String {
    let out = openssl(&[
        &"x509",
        &"-in",
        &cert,
        &"-noout",
        &"-fingerprint",
        &"-sha256",
    ]);
    let hex: String = out
        .stdout
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| *c != ':')
        .collect();
    assert_eq!(hex.len(), 64, "no SHA-256 fingerprint in {out}");
    hex.to_ascii_lowercase()
}

/// A CA made with `openssl`: a P-256 key `dir/NAME.key` and a self-signed
/// certificate `dir/NAME.pem` (subject `/O=certd e2e/CN=<cn>`, 30 days,
/// `basicConstraints` CA with `pathlen` when given). Returns (cert, key).
pub fn openssl_ca(dir: &Path, name: &str, cn: &str, pathlen: Option<u32>) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let subj = format!("/O=certd e2e/CN={cn}");
    let bc = match pathlen {
        Some(n) => format!("basicConstraints=critical,CA:TRUE,pathlen:{n}"),
        None => "basicConstraints=critical,CA:TRUE".to_string(),
    };
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"req", &"-x509", &"-new"];
    for a in &EC_P256 {
        args.push(a);
    }
    args.extend_from_slice(&[
        &"-nodes",
        &"-keyout",
        &key,
        &"-out",
        &cert,
        &"-days",
        &"30",
        &"-subj",
        &subj,
        &"-addext",
        &bc,
        &"-addext",
        &"keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&args);
    (cert, key)
}

/// Signs the CSR `csr` with the CA (`ca_cert`, `ca_key`) for `days`, with
/// the extension lines `ext` (openssl `-extfile` syntax), into
/// `dir/<out>`; returns its path. Panics unless openssl succeeds.
pub fn openssl_sign_csr(
    dir: &Path,
    csr: &Path,
    (ca_cert, ca_key): (&Path, &Path),
    ext: &str,
    out: &str,
    days: u32,
) -> PathBuf {
    let extfile = dir.join(format!("{out}.ext"));
    write(&extfile, ext);
    let cert = dir.join(out);
    let days = days.to_string();
    openssl(&[
        &"x509",
        &"-req",
        &"-in",
        &csr,
        &"-CA",
        &ca_cert,
        &"-CAkey",
        &ca_key,
        &"-CAcreateserial",
        &"-days",
        &days,
        &"-extfile",
        &extfile,
        &"-out",
        &cert,
    ]);
    cert
}

/// An RA's client credential: certificate and key files.
#[derive(Debug, Clone)]
pub struct RaCredential {
    /// The name it is known by (the `[[ra]] name` it is configured for).
    pub name: String,
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SHA-256 fingerprint of the certificate, lower-case hex.
    pub fingerprint: String,
}

impl RaCredential {
    /// A credential from existing files.
    pub fn load(name: &str, cert: &Path, key: &Path) -> RaCredential {
        RaCredential {
            name: name.to_string(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            fingerprint: fingerprint(cert),
        }
    }
}

/// A small openssl CA for transport identities: certd's TLS server
/// certificate and the RAs' client certificates (kept apart from the
/// certificates certd issues, as in the demo).
#[derive(Debug, Clone)]
pub struct TlsInfra {
    /// Directory of its files.
    pub dir: PathBuf,
    /// The CA certificate (certd's `api.ra_trust_anchor`, and what
    /// clients verify certd's server certificate with).
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// certd's server certificate (localhost, 127.0.0.1).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
}

const EC_P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

impl TlsInfra {
    /// Creates the CA (named `cn`) and a server certificate in `dir`.
    pub fn create(dir: &Path, cn: &str) -> TlsInfra {
        let (ca_cert, ca_key) = openssl_ca(dir, "infra-ca", cn, Some(0));
        let mut infra = TlsInfra {
            dir: dir.to_path_buf(),
            ca_cert,
            ca_key,
            server_cert: dir.join("certd-server.pem"),
            server_key: dir.join("certd-server.key"),
        };
        let (cert, key) = infra.sign(
            "certd-server",
            "serverAuth",
            "DNS:localhost,IP:127.0.0.1",
            None,
        );
        infra.server_cert = cert;
        infra.server_key = key;
        infra
    }

    /// The infrastructure CA `./demo` made in `demo_dir/tls`.
    pub fn of_demo(demo_dir: &Path) -> TlsInfra {
        let dir = demo_dir.join("tls");
        TlsInfra {
            ca_cert: dir.join("infra-ca.pem"),
            ca_key: dir.join("infra-ca.key"),
            server_cert: dir.join("certd-server.pem"),
            server_key: dir.join("certd-server.key"),
            dir,
        }
    }

    /// Makes a key and a certificate for `name` with the given extended
    /// key usage and SAN; valid for 30 days from now, or, with `dates`,
    /// from the first to the second `YYYYMMDDHHMMSSZ` time (made with
    /// `openssl ca`, which can date certificates in the past).
    fn sign(
        &self,
        name: &str,
        eku: &str,
        san: &str,
        dates: Option<(&str, &str)>,
    ) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.pem"));
        let ext = self.dir.join(format!("{name}.ext"));
        let subj = format!("/O=certd e2e/CN={name}");
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"req", &"-new"];
        for a in &EC_P256 {
            args.push(a);
        }
        args.extend_from_slice(&[&"-nodes", &"-keyout", &key, &"-out", &csr, &"-subj", &subj]);
        openssl(&args);
        let ext_lines = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={eku}\nsubjectAltName={san}\n"
        );
        match dates {
            None => {
                openssl_sign_csr(
                    &self.dir,
                    &csr,
                    (&self.ca_cert, &self.ca_key),
                    &ext_lines,
                    &format!("{name}.pem"),
                    30,
                );
            }
            Some((start, end)) => {
                let db = self.dir.join(format!("{name}.ca"));
                std::fs::create_dir_all(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
                write(&db.join("index.txt"), "");
                write(&db.join("serial"), "1000\n");
                let cnf = format!(
                    "[ca]\ndefault_ca = dated\n\n[dated]\ndir = {dir}\ndatabase = $dir/index.txt\n\
                     new_certs_dir = $dir\nserial = $dir/serial\ndefault_md = sha256\n\
                     policy = anything\nx509_extensions = leaf\nunique_subject = no\n\
                     copy_extensions = none\n\n[anything]\norganizationName = optional\n\
                     commonName = supplied\n\n[leaf]\n{ext_lines}",
                    dir = db.display()
                );
                write(&ext, cnf);
                openssl(&[
                    &"ca",
                    &"-batch",
                    &"-notext",
                    &"-config",
                    &ext,
                    &"-cert",
                    &self.ca_cert,
                    &"-keyfile",
                    &self.ca_key,
                    &"-in",
                    &csr,
                    &"-out",
                    &cert,
                    &"-startdate",
                    &start,
                    &"-enddate",
                    &end,
                ]);
            }
        }
        (cert, key)
    }

    /// A client certificate (clientAuth) for an RA called `name`, valid now.
    pub fn client(&self, name: &str) -> RaCredential {
        let (cert, key) = self.sign(
            name,
            "clientAuth",
            &format!("DNS:{name}.ra.certd.invalid"),
            None,
        );
        RaCredential::load(name, &cert, &key)
    }

    /// A client certificate for `name` valid only between two
    /// `YYYYMMDDHHMMSSZ` times (e.g. one that expired last year).
    pub fn client_valid_between(&self, name: &str, start: &str, end: &str) -> RaCredential {
        let (cert, key) = self.sign(
            name,
            "clientAuth",
            &format!("DNS:{name}.ra.certd.invalid"),
            Some((start, end)),
        );
        RaCredential::load(name, &cert, &key)
    }
}

/// Subscriber key algorithms, good and bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384 (CSRs signed with SHA-384).
    P384,
    /// RSA 2048, e = 65537.
    Rsa2048,
    /// RSA 1024 (weak).
    Rsa1024,
    /// RSA 2048 with public exponent 3 (weak).
    RsaExponent3,
    /// ECDSA secp256k1 (unsupported curve).
    Secp256k1,
    /// ECDSA brainpoolP256r1 (unsupported curve).
    BrainpoolP256r1,
    /// Ed25519.
    Ed25519,
}

impl KeyAlg {
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            KeyAlg::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyAlg::P384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            KeyAlg::Secp256k1 => &[
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ],
            KeyAlg::BrainpoolP256r1 => &[
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:brainpoolP256r1",
            ],
            KeyAlg::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            KeyAlg::Rsa1024 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
            KeyAlg::RsaExponent3 => &[
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-pkeyopt",
                "rsa_keygen_pubexp:3",
            ],
            KeyAlg::Ed25519 => &["-algorithm", "ED25519"],
        }
    }

    /// The digest option `openssl req` should sign a CSR with.
    fn digest(self) -> Option<&'static str> {
        match self {
            KeyAlg::P384 => Some("-sha384"),
            KeyAlg::Ed25519 => None,
            _ => Some("-sha256"),
        }
    }
}

/// A subscriber's private key.
#[derive(Debug, Clone)]
pub struct SubscriberKey {
    /// PEM private key file.
    pub path: PathBuf,
    /// Its algorithm.
    pub alg: KeyAlg,
}

impl SubscriberKey {
    /// The DER SubjectPublicKeyInfo of the key.
    pub fn spki_der(&self) -> Vec<u8> {
        let out = self.path.with_extension("spki.der");
        openssl(&[
            &"pkey",
            &"-in",
            &self.path,
            &"-pubout",
            &"-outform",
            &"DER",
            &"-out",
            &out,
        ]);
        std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
    }
}

/// Generates a key of `alg` as `dir/NAME.key`.
pub fn make_key(dir: &Path, name: &str, alg: KeyAlg) -> SubscriberKey {
    let path = dir.join(format!("{name}.key"));
    let mut cmd = tool("openssl");
    cmd.arg("genpkey")
        .args(alg.genpkey_args())
        .arg("-out")
        .arg(&path);
    run(&mut cmd).assert_success();
    SubscriberKey { path, alg }
}

/// A PKCS#10 request, as PEM text and DER bytes.
#[derive(Debug, Clone)]
pub struct Csr {
    /// The PEM text (`CERTIFICATE REQUEST`).
    pub pem: String,
    /// The DER bytes.
    pub der: Vec<u8>,
}

/// Makes a CSR for `key` with an openssl-style `subject` (`/CN=a/O=b`, or
/// `/` for an empty one) and optional subjectAltName entries in openssl
/// form (`DNS:a.example.com`, `IP:192.0.2.1`, `email:a@example.com`).
pub fn make_csr(dir: &Path, name: &str, key: &SubscriberKey, subject: &str, sans: &[&str]) -> Csr {
    let pem_path = dir.join(format!("{name}.csr"));
    let der_path = dir.join(format!("{name}.csr.der"));
    let mut cmd = tool("openssl");
    cmd.args(["req", "-new", "-key"])
        .arg(&key.path)
        .args(["-subj", subject])
        .arg("-out")
        .arg(&pem_path);
    if let Some(d) = key.alg.digest() {
        cmd.arg(d);
    }
    if !sans.is_empty() {
        cmd.arg("-addext")
            .arg(format!("subjectAltName={}", sans.join(",")));
    }
    run(&mut cmd).assert_success();
    openssl(&[
        &"req",
        &"-in",
        &pem_path,
        &"-outform",
        &"DER",
        &"-out",
        &der_path,
    ]);
    Csr {
        pem: read_text(&pem_path),
        der: std::fs::read(&der_path).unwrap_or_else(|e| panic!("{}: {e}", der_path.display())),
    }
}

/// PEM text of `der` under `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What a test wants to know about an issued certificate.
#[derive(Debug, Clone)]
pub struct CertView {
    /// DER.
    pub der: Vec<u8>,
    /// Serial, lower-case hex without leading zeros.
    pub serial: String,
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// dNSName SANs.
    pub dns: Vec<String>,
    /// rfc822Name SANs.
    pub emails: Vec<String>,
    /// iPAddress SANs.
    pub ips: Vec<IpAddr>,
    /// Whether the subjectAltName extension is critical.
    pub san_critical: bool,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Extended key usages, dotted OIDs.
    pub eku: Vec<String>,
    /// Certificate policies, dotted OIDs.
    pub policies: Vec<String>,
    /// Signature algorithm, dotted OID.
    pub signature_algorithm: String,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

fn unix(t: &x509_cert::time::Time) -> i64 {
    t.to_system_time()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A serial in hex, lower-case and without leading zeros, for comparisons.
pub fn normalize_serial(hex: &str) -> String {
    hex.trim_start_matches('0').to_ascii_lowercase()
}

impl CertView {
    /// Decodes a PEM certificate; panics with the text if it does not decode.
    pub fn from_pem(pem: &str) -> CertView {
        use der::{DecodePem, Encode};
        use x509_cert::ext::pkix::name::GeneralName;
        use x509_cert::ext::pkix::{CertificatePolicies, ExtendedKeyUsage, SubjectAltName};
        let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
            .unwrap_or_else(|e| panic!("not a PEM certificate: {e}\n{pem}"));
        let der = cert.to_der().expect("a decoded certificate encodes");
        let tbs = cert.tbs_certificate();
        let (mut dns, mut emails, mut ips, mut san_critical) = (vec![], vec![], vec![], false);
        if let Ok(Some((critical, san))) = tbs.get_extension::<SubjectAltName>() {
            san_critical = critical;
            for gn in san.0 {
                match gn {
                    GeneralName::DnsName(d) => dns.push(d.as_str().to_string()),
                    GeneralName::Rfc822Name(e) => emails.push(e.as_str().to_string()),
                    GeneralName::IpAddress(o) => {
                        let b = o.as_bytes();
                        if let Ok(v4) = <[u8; 4]>::try_from(b) {
                            ips.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
                            ips.push(IpAddr::from(v6));
                        }
                    }
                    other => panic!("unexpected SAN {other:?}"),
                }
            }
        }
        let eku = match tbs.get_extension::<ExtendedKeyUsage>() {
            Ok(Some((_, e))) => e.0.iter().map(|o| o.to_string()).collect(),
            _ => vec![],
        };
        let policies = match tbs.get_extension::<CertificatePolicies>() {
            Ok(Some((_, p))) => {
                p.0.iter()
                    .map(|i| i.policy_identifier.to_string())
                    .collect()
            }
            _ => vec![],
        };
        CertView {
            serial: normalize_serial(&hex::encode(tbs.serial_number().as_bytes())),
            subject: tbs.subject().to_string(),
            dns,
            emails,
            ips,
            san_critical,
            not_before: unix(&tbs.validity().not_before),
            not_after: unix(&tbs.validity().not_after),
            eku,
            policies,
            signature_algorithm: cert.signature_algorithm().oid.to_string(),
            spki_der: tbs
                .subject_public_key_info()
                .to_der()
                .expect("an SPKI encodes"),
            der,
        }
    }
}

/// The pkilint linters the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lint {
    /// `lint_cabf_serverauth_cert lint -d` (TLS Baseline Requirements).
    ServerAuth,
    /// `lint_cabf_smime_cert lint -d` (S/MIME Baseline Requirements).
    Smime,
    /// `lint_pkix_cert lint` (RFC 5280).
    Pkix,
    /// `lint_crl lint -t CRL -p BR`.
    CrlBr,
    /// `lint_crl lint -t CRL -p PKIX`.
    CrlPkix,
}

impl Lint {
    fn command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Lint::ServerAuth => ("lint_cabf_serverauth_cert", &["lint", "-d"]),
            Lint::Smime => ("lint_cabf_smime_cert", &["lint", "-d"]),
            Lint::Pkix => ("lint_pkix_cert", &["lint"]),
            Lint::CrlBr => ("lint_crl", &["lint", "-t", "CRL", "-p", "BR"]),
            Lint::CrlPkix => ("lint_crl", &["lint", "-t", "CRL", "-p", "PKIX"]),
        }
    }
}

/// pkilint warnings kept on purpose, each a decision in `docs/decisions.md`.
pub const DOCUMENTED_WARNINGS: &[(&str, &str)] = &[
    (
        "cabf.serverauth.dv.common_name_attribute_present",
        "a TLS certificate carries a commonName only when the RA asks for one (\"Names\")",
    ),
    (
        "cabf.serverauth.ov.common_name_attribute_present",
        "a TLS certificate carries a commonName only when the RA asks for one (\"Names\")",
    ),
];

/// Runs pkilint on every `(linter, file)`, two at a time, and returns one line per
/// file with WARNING, ERROR or FATAL findings (`-s WARNING`; NOTICE and INFO
/// are not reported), leaving out the [`DOCUMENTED_WARNINGS`]. Empty: all
/// clean. The linters exit with the number of findings; a non-zero exit
/// without findings (a crash) is reported too.
pub fn lint_errors(jobs: &[(Lint, &Path)]) -> Vec<String> {
    // Two linters at a time (each a Python process): more would only
    // starve the daemons of the tests running beside on a small machine.
    let mut problems = Vec::new();
    for pair in jobs.chunks(2) {
        let children: Vec<_> = pair
            .iter()
            .map(|(lint, file)| {
                let (program, args) = lint.command();
                let child = tool(program)
                    .args(args)
                    .args(["-s", "WARNING"])
                    .arg(file)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot run {program} ({e}): pkilint is missing; run ./test, which \
                             installs it (python3 -m pip install pkilint)"
                        )
                    });
                (program, *file, child)
            })
            .collect();
        for (program, file, child) in children {
            let out = child
                .wait_with_output()
                .unwrap_or_else(|e| panic!("{program} {}: {e}", file.display()));
            let stdout = String::from_utf8_lossy(&out.stdout);
            // Findings are lines "    code (SEVERITY)" under a validator's.
            let findings: Vec<&str> = stdout
                .lines()
                .filter(|l| l.starts_with("    ") && l.trim_end().ends_with(')'))
                .map(str::trim)
                .collect();
            let documented = |f: &&str| {
                DOCUMENTED_WARNINGS
                    .iter()
                    .any(|(code, _)| *f == format!("{code} (WARNING)"))
            };
            let undocumented = findings.iter().filter(|f| !documented(f)).count();
            let crashed = !out.status.success() && findings.is_empty();
            if undocumented > 0 || crashed || (findings.is_empty() && !stdout.trim().is_empty()) {
                problems.push(format!(
                    "{program} {}: {}\n{}{}",
                    file.display(),
                    out.status,
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    problems
}

/// An answer `curl` got (or did not get).
#[derive(Debug, Clone)]
pub struct CurlReply {
    /// curl's exit code (0: an HTTP answer arrived).
    pub exit: Option<i32>,
    /// HTTP status (0 when none arrived).
    pub status: u16,
    /// HTTP version of the answer (`1.1`, `2`).
    pub http_version: String,
    /// Content-Type of the answer.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
    /// The response headers as received (status line included).
    pub headers: String,
    /// What curl printed on standard error.
    pub stderr: String,
}

impl CurlReply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code` of an error body.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }

    /// The value of response header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// Whether an HTTP answer arrived at all.
    pub fn answered(&self) -> bool {
        self.exit == Some(0) && self.status != 0
    }
}

impl std::fmt::Display for CurlReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "curl exit {:?}, HTTP {} (HTTP/{}, {}): {}\n{}",
            self.exit,
            self.status,
            self.http_version,
            self.content_type,
            String::from_utf8_lossy(&self.body[..self.body.len().min(600)]),
            self.stderr
        )
    }
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// One `curl` call to certd; build it, then [`Curl::send`].
#[derive(Debug, Clone)]
pub struct Curl {
    url: String,
    scratch: PathBuf,
    args: Vec<OsString>,
}

impl Curl {
    /// `METHOD url`, trusting `server_ca`, with scratch files in `scratch`.
    pub fn new(method: &str, url: &str, server_ca: &Path, scratch: &Path) -> Curl {
        // -q first: no ~/.curlrc; no proxy, whatever the environment says.
        let mut args: Vec<OsString> = [
            "-q",
            "--noproxy",
            "*",
            "-sS",
            "--max-time",
            "60",
            "-X",
            method,
            "--cacert",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(server_ca.into());
        Curl {
            url: url.to_string(),
            scratch: scratch.to_path_buf(),
            args,
        }
    }

    /// Presents `cred` as the client certificate.
    pub fn credential(self, cred: &RaCredential) -> Curl {
        self.arg("--cert")
            .arg(&cred.cert)
            .arg("--key")
            .arg(&cred.key)
    }

    /// Adds a curl argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Curl {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// Sends `body` with `Content-Type: content_type` (`None`: no
    /// Content-Type header at all).
    pub fn body(self, content_type: Option<&str>, body: &[u8]) -> Curl {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let file = self
            .scratch
            .join(format!("body-{}-{n}", std::process::id()));
        write(&file, body);
        let mut data = OsString::from("@");
        data.push(&file);
        let header = match content_type {
            Some(ct) => format!("Content-Type: {ct}"),
            None => "Content-Type:".to_string(),
        };
        self.arg("-H").arg(header).arg("--data-binary").arg(data)
    }

    /// Sends `value` as `application/json`.
    pub fn json(self, value: &Value) -> Curl {
        let bytes = serde_json::to_vec(value).expect("JSON serialises");
        self.body(Some("application/json"), &bytes)
    }

    /// Runs curl.
    pub fn send(&self) -> CurlReply {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let out_file = self
            .scratch
            .join(format!("reply-{}-{n}", std::process::id()));
        let header_file = out_file.with_extension("headers");
        let _ = std::fs::remove_file(&out_file);
        let _ = std::fs::remove_file(&header_file);
        let mut cmd = tool("curl");
        cmd.args(&self.args)
            .arg("-o")
            .arg(&out_file)
            .arg("-D")
            .arg(&header_file)
            .arg("-w")
            .arg("%{http_code} %{http_version} %{content_type}")
            .arg(&self.url);
        let out = run(&mut cmd);
        let mut w = out.stdout.splitn(3, ' ');
        let status = w.next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let http_version = w.next().unwrap_or_default().to_string();
        let content_type = w.next().unwrap_or_default().trim().to_string();
        CurlReply {
            exit: out.code(),
            status,
            http_version,
            content_type,
            body: std::fs::read(&out_file).unwrap_or_default(),
            headers: std::fs::read_to_string(&header_file).unwrap_or_default(),
            stderr: out.stderr,
        }
    }
}

/// The rustls client configuration RAs use (`certd_api`'s own), presenting
/// `cred` and trusting `server_ca`, offering the ALPN protocols `alpn`.
/// Panics if the files do not make a credential.
pub fn tls_client_config(
    server_ca: &Path,
    cred: &RaCredential,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut config = certd_api::client::tls_config(&certd_api::ClientConfig {
        url: String::new(),
        client_cert: cred.cert.clone(),
        client_key: cred.key.clone(),
        server_ca: server_ca.to_path_buf(),
        timeout: API_DEADLINE,
    })
    .unwrap_or_else(|e| panic!("TLS client for {}: {e}", cred.name));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One explicit TLS connection to certd speaking HTTP/1.1 with
/// keep-alive, to show what happens to an open connection across a reload.
pub struct KeepAlive {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepAlive")
    }
}

impl KeepAlive {
    /// Connects to 127.0.0.1:`port` with `cred` and finishes the handshake
    /// (with TLS 1.3 a refused client certificate shows only at the first
    /// request).
    pub fn open(port: u16, server_ca: &Path, cred: &RaCredential) -> std::io::Result<KeepAlive> {
        let other = |e: String| std::io::Error::other(e);
        let config = tls_client_config(server_ca, cred, &[b"http/1.1"]);
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")
            .map_err(|e| other(e.to_string()))?;
        let mut conn =
            rustls::ClientConnection::new(config, name).map_err(|e| other(e.to_string()))?;
        let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(API_DEADLINE))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(KeepAlive {
            stream: rustls::StreamOwned::new(conn, tcp),
        })
    }

    /// Sends one request on this connection and reads the answer:
    /// status and body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        json: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let body = json.unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\nConnection: keep-alive\r\n");
        if json.is_some() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        self.stream.flush()?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "certd closed the connection",
                ));
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head:?}")))?;
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, body))
    }
}

/// One `[[certifier]]` of an [`ApiCa`]: its name and certificate.
#[derive(Debug, Clone)]
pub struct CertifierFiles {
    /// Name (and key label).
    pub name: String,
    /// Its self-signed certificate (the root to verify issued certificates with).
    pub certificate: PathBuf,
}

/// A CA with an API, set up but not (necessarily) running.
#[derive(Debug, Clone)]
pub struct ApiCa {
    /// The `certd` binary.
    pub certd: PathBuf,
    /// The token of the certifiers.
    pub token: Token,
    /// The transport CA, server and client credentials.
    pub tls: TlsInfra,
    /// The configuration file and the paths it names.
    pub config: CertdConfig,
    /// `api.listen` port on 127.0.0.1.
    pub port: u16,
    /// The API's listening socket, bound by the test and handed to every
    /// `certd run` of this CA.
    pub api_socket: ApiSocket,
    /// The certifiers.
    pub certifiers: Vec<CertifierFiles>,
    /// The configured RAs' credentials.
    pub ras: Vec<RaCredential>,
}

/// A certifier to generate: key, validity of its root, activation.
#[derive(Debug)]
struct CertifierPlan {
    name: String,
    key_type: String,
    days: u32,
    active: bool,
    extra: String,
}

/// A generated CA configuration: certifiers (generated in the token by
/// `certd init-ca`), raw TOML for `[[profile]]`, `[crl]` and `[api]`
/// limits, and RAs, each of which gets a client credential.
#[derive(Debug)]
pub struct ApiCaBuilder {
    dir: PathBuf,
    certd: PathBuf,
    certifiers: Vec<CertifierPlan>,
    sections: String,
    api_extra: String,
    ras: Vec<(String, String)>,
}

impl ApiCaBuilder {
    /// A CA in `dir` run by the `certd` binary.
    pub fn new(dir: &Path, certd: &Path) -> ApiCaBuilder {
        ApiCaBuilder {
            dir: dir.to_path_buf(),
            certd: certd.to_path_buf(),
            certifiers: Vec::new(),
            sections: String::new(),
            api_extra: String::new(),
            ras: Vec::new(),
        }
    }

    /// A certifier `name` with a `key_type` key (`p256`, `p384`,
    /// `rsa2048`, ...), activated at start from the token's PIN file.
    pub fn certifier(self, name: &str, key_type: &str) -> ApiCaBuilder {
        self.certifier_for_days(name, key_type, 3650)
    }

    /// A certifier like [`ApiCaBuilder::certifier`] whose self-signed
    /// certificate is valid for `days` only.
    pub fn certifier_for_days(mut self, name: &str, key_type: &str, days: u32) -> ApiCaBuilder {
        self.certifiers.push(CertifierPlan {
            name: name.into(),
            key_type: key_type.into(),
            days,
            active: true,
            extra: String::new(),
        });
        self
    }

    /// A certifier that starts locked (no PIN file), issuing under
    /// `extra` (extra TOML lines such as `profiles = [...]`).
    pub fn locked_certifier(mut self, name: &str, key_type: &str, extra: &str) -> ApiCaBuilder {
        self.certifiers.push(CertifierPlan {
            name: name.into(),
            key_type: key_type.into(),
            days: 3650,
            active: false,
            extra: extra.into(),
        });
        self
    }

    /// Appends raw TOML (`[[profile]]` tables, a `[crl]` section).
    pub fn toml(mut self, text: &str) -> ApiCaBuilder {
        self.sections.push_str(text);
        self.sections.push('\n');
        self
    }

    /// Appends lines to the `[api]` table (limits, timeouts).
    pub fn api(mut self, lines: &str) -> ApiCaBuilder {
        self.api_extra.push_str(lines);
        self.api_extra.push('\n');
        self
    }

    /// An RA `name` with the grant lines `grant` (`certifiers = [...]`,
    /// `profiles = [...]`, ...); `name` and `fingerprints` are added.
    pub fn ra(mut self, name: &str, grant: &str) -> ApiCaBuilder {
        self.ras.push((name.into(), grant.into()));
        self
    }

    /// Makes the token, the certifier keys and certificates, the TLS
    /// credentials and the configuration file (checked with
    /// `certd check-config`).
    pub fn build(self) -> ApiCa {
        let dir = &self.dir;
        let token = Token::create(dir, "api");
        let tls = TlsInfra::create(&dir.join("tls"), "certd e2e TLS infrastructure CA");
        let state_dir = dir.join("state");
        let control_socket = dir.join("run").join("control.sock");
        let api_socket = ApiSocket::bind();
        let port = api_socket.port();
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut text = format!(
            "[daemon]\nstate_dir = {}\ncontrol_socket = {}\n\n[hsm]\nmodule = {}\nsessions = 2\n",
            q(&state_dir),
            q(&control_socket),
            q(&token.module)
        );
        let mut certifiers = Vec::new();
        for c in &self.certifiers {
            let (name, key_type) = (&c.name, &c.key_type);
            let pem = dir.join(format!("{name}.pem"));
            run(token
                .command(&self.certd)
                .args(["init-ca", "--token-label", &token.label])
                .args(["--key-label", name, "--key-type", key_type])
                .arg("--pin-file")
                .arg(&token.pin_file)
                .args(["--cn", &format!("certd e2e {name}"), "--o", "certd e2e"])
                .args(["--c", "DE", "--days", &c.days.to_string(), "--cert-out"])
                .arg(&pem))
            .assert_success();
            text.push_str(&format!(
                "\n[[certifier]]\nname = {name:?}\ntoken_label = {:?}\nkey_label = {name:?}\ncertificate = {}\n",
                token.label,
                q(&pem)
            ));
            if c.active {
                text.push_str(&format!("pin_file = {}\n", q(&token.pin_file)));
            }
            text.push_str(&c.extra);
            text.push('\n');
            certifiers.push(CertifierFiles {
                name: name.clone(),
                certificate: pem,
            });
        }
        text.push_str(&format!(
            "\n[api]\nlisten = \"127.0.0.1:{port}\"\ntls_certificate = {}\ntls_key = {}\nra_trust_anchor = {}\n{}\n",
            q(&tls.server_cert),
            q(&tls.server_key),
            q(&tls.ca_cert),
            self.api_extra
        ));
        text.push_str(&self.sections);
        let mut ras = Vec::new();
        for (name, grant) in &self.ras {
            let cred = tls.client(name);
            text.push_str(&ra_toml(&cred, grant));
            ras.push(cred);
        }
        let path = dir.join("certd.toml");
        write(&path, &text);
        let ca = ApiCa {
            certd: self.certd.clone(),
            token,
            tls,
            config: CertdConfig {
                dir: dir.clone(),
                path,
                state_dir,
                control_socket,
                log: dir.join("certd.log"),
            },
            port,
            api_socket,
            certifiers,
            ras,
        };
        ca.check_config();
        ca
    }
}

/// The `[[ra]]` table of `cred` with the grant lines `grant`.
pub fn ra_toml(cred: &RaCredential, grant: &str) -> String {
    format!(
        "\n[[ra]]\nname = {:?}\nfingerprints = [{:?}]\n{}\n",
        cred.name,
        cred.fingerprint,
        grant.trim()
    )
}

impl ApiCa {
    /// Runs the real `./demo --setup-only` ([`crate::demo::setup`]) on a
    /// socket bound here (the demo certifier stays locked) and reads what
    /// it set up from `DIR/demo.env`.
    pub fn from_demo(dir: &Path, certd: &Path) -> ApiCa {
        ApiCa::from_demo_with(dir, certd, &[])
    }

    /// [`ApiCa::from_demo`] with more options for `./demo`.
    pub fn from_demo_with(dir: &Path, certd: &Path, extra: &[&str]) -> ApiCa {
        let api_socket = ApiSocket::bind();
        let port = api_socket.port();
        let env = crate::demo::setup_with(dir, port, extra);
        let pin_file = env.path("PIN_FILE");
        let config_path = env.path("CERTD_CONFIG");
        assert_eq!(env.get("CERTD_URL"), api_socket.url());
        let token = Token {
            conf: env.path("SOFTHSM2_CONF"),
            pin: read_text(&pin_file).trim().to_string(),
            pin_file,
            so_pin_file: dir.join("secrets").join("so-pin"),
            label: "certd-demo".into(),
            module: PathBuf::from(crate::token::SOFTHSM_MODULE),
        };
        let tls = TlsInfra::of_demo(dir);
        assert_eq!(env.path("CERTD_TLS_CA"), tls.ca_cert);
        let ras = ["ra-demo", "ra-web", "ra-cli"]
            .iter()
            .map(|n| {
                RaCredential::load(
                    n,
                    &tls.dir.join(format!("{n}.pem")),
                    &tls.dir.join(format!("{n}.key")),
                )
            })
            .collect::<Vec<_>>();
        assert_eq!(env.path("RA_CLIENT_CERT"), ras[0].cert);
        let config_dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.to_path_buf());
        ApiCa {
            certd: certd.to_path_buf(),
            token,
            tls,
            config: CertdConfig {
                dir: dir.to_path_buf(),
                path: config_path,
                state_dir: config_dir.join("state"),
                control_socket: env.path("CERTD_CONTROL_SOCKET"),
                log: dir.join("certd.log"),
            },
            port,
            api_socket,
            certifiers: vec![CertifierFiles {
                name: env.get("CERTIFIER").to_string(),
                certificate: env.path("CA_CERT"),
            }],
            ras,
        }
    }

    /// `certd check-config` of the configuration file; panics unless OK.
    pub fn check_config(&self) {
        run(self
            .token
            .command(&self.certd)
            .arg("check-config")
            .arg("--config")
            .arg(&self.config.path))
        .assert_success();
    }

    /// The base URL of the API.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The credential of the RA `name`.
    pub fn ra(&self, name: &str) -> &RaCredential {
        self.ras
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no RA {name:?}"))
    }

    /// The certificate of certifier `name`.
    pub fn certifier_pem(&self, name: &str) -> &Path {
        &self
            .certifiers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no certifier {name:?}"))
            .certificate
    }

    /// Appends `text` to the configuration file (takes effect at the next
    /// reload or start).
    pub fn append_config(&self, text: &str) {
        let mut t = read_text(&self.config.path);
        t.push_str(text);
        write(&self.config.path, t);
    }

    /// Replaces `from` by `to` in the configuration file (exactly once).
    pub fn edit_config(&self, from: &str, to: &str) {
        let t = read_text(&self.config.path);
        assert_eq!(t.matches(from).count(), 1, "{from:?} in\n{t}");
        write(&self.config.path, t.replace(from, to));
    }

    /// Starts `certd run` on the CA's API socket and waits for its
    /// `READY=1` (by then the API is being served).
    pub fn start(self) -> ApiDaemon {
        self.start_with_env(&[])
    }

    /// [`ApiCa::start`] with extra environment variables for certd.
    pub fn start_with_env(self, env: &[(&str, &OsStr)]) -> ApiDaemon {
        let instance = CertdInstance::start_on(
            &self.certd,
            &self.config,
            &self.token,
            env,
            Some(&self.api_socket),
        );
        let scratch = self.config.dir.join("scratch");
        std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("{}: {e}", scratch.display()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        ApiDaemon {
            ca: self,
            instance,
            scratch,
            rt,
        }
    }
}

/// A running CA with an API.
#[derive(Debug)]
pub struct ApiDaemon {
    /// What it was set up with.
    pub ca: ApiCa,
    /// The `certd run` process and its console commands.
    pub instance: CertdInstance,
    scratch: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl ApiDaemon {
    /// Runs a future of the client to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A `certd-api` client presenting `cred`.
    pub fn client_for(&self, cred: &RaCredential) -> certd_api::CertdClient {
        certd_api::CertdClient::new(&certd_api::ClientConfig {
            url: self.ca.url(),
            client_cert: cred.cert.clone(),
            client_key: cred.key.clone(),
            server_ca: self.ca.tls.ca_cert.clone(),
            timeout: Duration::from_secs(30),
        })
        .unwrap_or_else(|e| panic!("client for {}: {e}", cred.name))
    }

    /// A `certd-api` client of the configured RA `ra`.
    pub fn client(&self, ra: &str) -> certd_api::CertdClient {
        self.client_for(self.ca.ra(ra))
    }

    /// A `curl` call `METHOD path` without a client certificate.
    pub fn curl_anonymous(&self, method: &str, path: &str) -> Curl {
        Curl::new(
            method,
            &format!("{}{path}", self.ca.url()),
            &self.ca.tls.ca_cert,
            &self.scratch,
        )
    }

    /// A `curl` call `METHOD path` presenting `cred`.
    pub fn curl_as(&self, cred: &RaCredential, method: &str, path: &str) -> Curl {
        self.curl_anonymous(method, path).credential(cred)
    }

    /// A `curl` call `METHOD path` as the configured RA `ra`.
    pub fn curl(&self, ra: &str, method: &str, path: &str) -> Curl {
        self.curl_as(self.ca.ra(ra), method, path)
    }

    /// A keep-alive connection presenting `cred`.
    pub fn keep_alive(&self, cred: &RaCredential) -> std::io::Result<KeepAlive> {
        KeepAlive::open(self.ca.port, &self.ca.tls.ca_cert, cred)
    }

    /// Runs `certd ARGS… --config CONFIG`.
    pub fn ctl(&self, args: &[&str]) -> CmdOutput {
        self.instance.ctl(args)
    }

    /// `certd activate NAME --pin-file …`; panics unless it succeeds.
    pub fn activate(&self, certifier: &str) {
        let pin = self.ca.token.pin_file.to_string_lossy().into_owned();
        self.ctl(&["activate", certifier, "--pin-file", &pin])
            .assert_success();
    }

    /// `certd deactivate NAME`; panics unless it succeeds.
    pub fn deactivate(&self, certifier: &str) {
        self.ctl(&["deactivate", certifier]).assert_success();
    }

    /// `certd status --json`, parsed.
    pub fn status(&self) -> Value {
        self.instance.status()
    }

    /// The status entry of certifier `name`.
    pub fn certifier_status(&self, name: &str) -> Value {
        let status = self.status();
        status["certifiers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no certifier {name:?} in {status:#}"))
    }

    /// `certificates_issued` of certifier `name`.
    pub fn issued(&self, name: &str) -> u64 {
        let c = self.certifier_status(name);
        c["certificates_issued"]
            .as_u64()
            .unwrap_or_else(|| panic!("no certificates_issued in {c:#}"))
    }

    /// Every entry of the audit log, parsed.
    pub fn audit(&self) -> Vec<Value> {
        read_text(&self.ca.config.audit_log())
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l}: {e}")))
            .collect()
    }

    /// The audit entries of `kind`.
    pub fn audit_of(&self, kind: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// `certd verify-audit`; panics unless the chain verifies.
    pub fn verify_audit(&self) -> CmdOutput {
        let out = self.ctl(&["verify-audit"]);
        out.assert_success();
        out
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.instance.log()
    }
}

/// The `ApiError` code of a failed client call, or a panic describing
/// what came back instead.
pub fn error_code<T: std::fmt::Debug>(
    result: Result<T, certd_api::ClientError>,
) -> certd_api::ErrorCode {
    match result {
        Err(certd_api::ClientError::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A CRL as `openssl crl -text` shows it.
#[derive(Debug, Clone)]
pub struct CrlView {
    /// The DER file.
    pub path: PathBuf,
    /// Its CRL number.
    pub number: u64,
    /// Revoked serials (lower-case hex without leading zeros) and the
    /// reason openssl names for each (`None`: no reasonCode extension).
    pub entries: std::collections::BTreeMap<String, Option<String>>,
    /// The whole `openssl crl -text` output.
    pub text: String,
}

impl CrlView {
    /// Writes `der` to `path` and reads it back with `openssl crl -text`.
    pub fn from_der(path: &Path, der: &[u8]) -> CrlView {
        write(path, der);
        let text = openssl(&[
            &"crl", &"-inform", &"DER", &"-in", &path, &"-noout", &"-text",
        ])
        .stdout;
        let mut number = None;
        let mut entries = std::collections::BTreeMap::new();
        let mut current: Option<String> = None;
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line.starts_with("X509v3 CRL Number:") {
                let v = lines.next().unwrap_or_default();
                number = match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => v.parse().ok(),
                };
            } else if let Some(s) = line.strip_prefix("Serial Number:") {
                let s = normalize_serial(s.trim());
                entries.insert(s.clone(), None);
                current = Some(s);
            } else if line.starts_with("X509v3 CRL Reason Code:") {
                let reason = lines.next().unwrap_or_default().to_string();
                if let Some(s) = &current {
                    entries.insert(s.clone(), Some(reason));
                }
            }
        }
        CrlView {
            path: path.to_path_buf(),
            number: number.unwrap_or_else(|| panic!("no CRL number in\n{text}")),
            entries,
            text,
        }
    }

    /// `openssl crl -inform DER -CAfile ROOT -verify -noout`; panics
    /// unless the signature verifies.
    pub fn assert_verifies(&self, root: &Path) {
        let out = openssl(&[
            &"crl", &"-inform", &"DER", &"-in", &self.path, &"-CAfile", &root, &"-verify",
            &"-noout",
        ]);
        assert!(
            format!("{}{}", out.stdout, out.stderr).contains("verify OK"),
            "{out}"
        );
    }
}

/// A `tls-server` request for `host` (its one DNS name) with the CSR `csr`
/// (PEM), `request_id` the host name.
pub fn tls_server_request(csr: &str, host: &str) -> certd_api::IssueRequest {
    certd_api::IssueRequest {
        request_id: host.to_string(),
        certifier: None,
        profile: "tls-server".into(),
        csr: csr.to_string(),
        subject: None,
        san: Some(certd_api::SubjectAltNames {
            dns: vec![host.to_string()],
            ..Default::default()
        }),
        not_after: None,
        approval: None,
    }
}

/// A `tls-server` profile (90 days, with CRL and caIssuers URLs) for
/// the API tests' configurations.
pub const TLS_SERVER_PROFILE: &str = r#"
[[profile]]
name = "tls-server"
kind = "tls-server"
max_validity_days = 90
crl_url = "http://pki.example.com/e2e.crl"
ca_issuers_url = "http://pki.example.com/e2e.crt"
"#;

/// A grant on certifier `ca` and [`TLS_SERVER_PROFILE`] for names under
/// example.com, with the lines `extra` (e.g. `may_revoke = true`).
pub fn tls_server_grant(extra: &str) -> String {
    format!(
        "certifiers = [\"ca\"]\nprofiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]\n{extra}"
    )
}
