//! The peer: CFSSL's `cfssl serve`, issuing from the same pre-made CSRs
//! over mutual TLS, measured with the same loop as certd.
//!
//! It signs with a P-256 key in a file (software, as cfssl is usually run)
//! and keeps no certificate database; certd signs in SoftHSM through
//! PKCS#11 and writes its ledger and audit log durably before it answers.
//! The numbers compare the two products as they are, not the same work.
//!
//! Its listener is reached like certd's: a server certificate and the
//! client CA from the benchmark CA's transport infrastructure (the demo's
//! `tls/`), and the `ra-demo` client credential.

use crate::{Csr, Issuer, PROFILE};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use certd_api::ClientConfig;
use certd_e2e::api::{openssl, openssl_sign_csr, ApiCa, CertView, RaCredential};
use certd_e2e::{tool, ChildGuard};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How to get cfssl when it is missing.
pub const INSTALL_HINT: &str = "apt-get install golang-cfssl";

/// The validity of the demo's `tls-server` profile (`max_validity_days`),
/// which certd gives a certificate when the request names no `not_after`.
pub const VALIDITY_DAYS: i64 = 199;

/// Upper bound on waits for cfssl to listen and to answer. Only a hang
/// reaches it; a cfssl that exits is noticed at once.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The CRL URL of the peer's profile. The default profile has none, so
/// finding it in an issued certificate shows the named profile was used:
/// cfssl 1.2 silently signs with its default profile when the requested
/// one does not exist.
const CRL_URL: &str = "http://pki.example.com/crl/cfssl-peer.crl";

/// serverAuth.
const EKU_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
/// ecdsa-with-SHA256.
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";

/// The version `cfssl version` reports for `cfssl` (a path or a name on
/// PATH); `Ok(None)` if there is no such program.
pub fn version(cfssl: &Path) -> Result<Option<String>> {
    let out = match tool(cfssl).arg("version").stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("running {} version", cfssl.display())),
    };
    if !out.status.success() {
        bail!(
            "{} version failed: {}",
            cfssl.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Ok(Some(format!(
        "{} ({})",
        field("Version:").unwrap_or_else(|| "unknown version".into()),
        field("Runtime:").unwrap_or_else(|| "unknown runtime".into())
    )))
}

/// The files `cfssl serve` runs on.
#[derive(Debug, Clone)]
pub struct PeerFiles {
    /// Directory of the files and of cfssl's log.
    pub dir: PathBuf,
    /// The signing CA's self-signed certificate.
    pub ca_cert: PathBuf,
    /// Its P-256 key (a file: software signing).
    pub ca_key: PathBuf,
    /// The signing configuration (the profile).
    pub config: PathBuf,
    /// The listener's certificate, from the transport CA.
    pub tls_cert: PathBuf,
    /// Its key.
    pub tls_key: PathBuf,
    /// The CA client certificates must chain to (the transport CA).
    pub client_ca: PathBuf,
    /// The client credential allowed in, and the one the benchmark uses.
    pub client: RaCredential,
    /// The transport CA, which verifies the listener's certificate.
    pub server_ca: PathBuf,
}

/// Makes, in `dir`, the signing CA, the signing configuration and the
/// listener's TLS credential (issued by `ca`'s transport CA), for the
/// client credential of the RA `ra`.
pub fn setup(dir: &Path, ca: &ApiCa, ra: &str) -> Result<PeerFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = dir.join("cfssl-ca.key");
    let ca_cert = dir.join("cfssl-ca.pem");
    // Ten years, like the certifier `./demo` makes, so no certificate
    // outlives its issuer.
    openssl(&[
        &"req",
        &"-x509",
        &"-new",
        &"-newkey",
        &"ec",
        &"-pkeyopt",
        &"ec_paramgen_curve:P-256",
        &"-nodes",
        &"-keyout",
        &ca_key,
        &"-out",
        &ca_cert,
        &"-days",
        &"3650",
        &"-subj",
        &"/O=certd bench/CN=certd bench cfssl peer CA",
        &"-addext",
        &"basicConstraints=critical,CA:TRUE,pathlen:0",
        &"-addext",
        &"keyUsage=critical,keyCertSign,cRLSign",
    ]);

    // The profile as close to certd's `tls-server` as cfssl can say it;
    // `default` is what cfssl falls back to for an unknown profile name,
    // and lacks the CRL URL so such a fallback is detected.
    let usages = ["digital signature", "server auth"];
    let expiry = format!("{}h", VALIDITY_DAYS * 24);
    let config = serde_json::json!({
        "signing": {
            "default": { "expiry": expiry, "usages": usages },
            "profiles": {
                PROFILE: {
                    "expiry": expiry,
                    "usages": usages,
                    "crl_url": CRL_URL,
                    "issuer_urls": ["http://pki.example.com/ca/cfssl-peer.crt"],
                }
            }
        }
    });
    let config_path = dir.join("cfssl-config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;

    // A listener certificate of its own from the transport CA, so the
    // client verifies cfssl exactly as it verifies certd.
    let tls_key = dir.join("cfssl-server.key");
    let tls_csr = dir.join("cfssl-server.csr");
    openssl(&[
        &"req",
        &"-new",
        &"-newkey",
        &"ec",
        &"-pkeyopt",
        &"ec_paramgen_curve:P-256",
        &"-nodes",
        &"-keyout",
        &tls_key,
        &"-out",
        &tls_csr,
        &"-subj",
        &"/O=certd bench/CN=cfssl-server",
    ]);
    let tls_cert = openssl_sign_csr(
        dir,
        &tls_csr,
        (&ca.tls.ca_cert, &ca.tls.ca_key),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        "cfssl-server.pem",
        30,
    );
    Ok(PeerFiles {
        dir: dir.to_path_buf(),
        ca_cert,
        ca_key,
        config: config_path,
        tls_cert,
        tls_key,
        client_ca: ca.tls.ca_cert.clone(),
        client: ca.ra(ra).clone(),
        server_ca: ca.tls.ca_cert.clone(),
    })
}

/// A running `cfssl serve`, killed and reaped when dropped.
#[derive(Debug)]
pub struct Cfssl {
    child: ChildGuard,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
}

impl Cfssl {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Starts `cfssl serve` on `files` and returns once it listens.
///
/// cfssl takes an address and a port and cannot be handed a bound socket.
/// It is given port 0, so its own bind lets the kernel pick a free port:
/// nothing is chosen beforehand, so nothing can take the port in between
/// and no retry on "address already in use" is needed. The port is read
/// back from /proc: the listening TCP socket among cfssl's descriptors.
pub fn start(cfssl: &Path, files: &PeerFiles) -> Result<Cfssl> {
    let log = files.dir.join("cfssl.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = tool(cfssl);
    cmd.arg("serve")
        .args(["-address", "127.0.0.1", "-port", "0"])
        .arg("-ca")
        .arg(&files.ca_cert)
        .arg("-ca-key")
        .arg(&files.ca_key)
        .arg("-config")
        .arg(&files.config)
        .arg("-tls-cert")
        .arg(&files.tls_cert)
        .arg("-tls-key")
        .arg(&files.tls_key)
        .arg("-mutual-tls-ca")
        .arg(&files.client_ca)
        // certd admits RAs by certificate fingerprint; cfssl's nearest
        // equivalent is a regular expression on the client's CN (the demo
        // names its client certificates after the RA).
        .arg("-mutual-tls-cn")
        .arg(format!("^{}$", files.client.name))
        // Warnings only, as certd runs with CERTD_LOG=warn: at its default
        // level cfssl logs three lines per certificate.
        .args(["-loglevel", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file));
    let mut child = ChildGuard::spawn(&mut cmd);
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = child.try_wait() {
            bail!(
                "cfssl serve exited ({status}) before listening:\n{}",
                log_tail(&log)
            );
        }
        if let Some(port) = listening_port(child.id()) {
            return Ok(Cfssl { child, port, log });
        }
        if Instant::now() >= deadline {
            bail!(
                "cfssl serve did not listen within {START_DEADLINE:?}:\n{}",
                log_tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port of a listening TCP socket (IPv4 or IPv6) that process `pid`
/// holds, if it holds one yet.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.ok()?.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        text.lines().skip(1).find_map(|line| {
            // sl, local_address, rem_address, st, ..., inode (10th).
            let f: Vec<&str> = line.split_whitespace().collect();
            const LISTEN: &str = "0A";
            if f.len() > 9 && f[3] == LISTEN && inodes.contains(f[9]) {
                let (_, port) = f[1].rsplit_once(':')?;
                u16::from_str_radix(port, 16).ok()
            } else {
                None
            }
        })
    })
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of cfssl's sign endpoint, built like certd's RA client (the
/// same rustls configuration and client credential, HTTP/2 or HTTP/1.1,
/// no Nagle delay, pooled persistent connections), so both servers are
/// measured through the same transport.
#[derive(Clone)]
pub struct CfsslClient {
    http: HttpsClient,
    sign: http::Uri,
    timeout: Duration,
}

impl std::fmt::Debug for CfsslClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CfsslClient")
            .field("sign", &self.sign)
            .finish_non_exhaustive()
    }
}

/// Why a signing request failed.
#[derive(Debug)]
pub enum SignError {
    /// No answer: the connection or TLS failed, or it timed out.
    Transport(String),
    /// cfssl answered, with something other than a certificate.
    Answer(String),
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::Transport(e) => write!(f, "cannot reach cfssl: {e}"),
            SignError::Answer(e) => write!(f, "cfssl refused: {e}"),
        }
    }
}

impl std::error::Error for SignError {}

impl CfsslClient {
    /// A client of the cfssl at 127.0.0.1:`port` presenting `files.client`.
    pub fn new(files: &PeerFiles, port: u16) -> Result<CfsslClient> {
        let timeout = Duration::from_secs(30);
        let tls = certd_api::client::tls_config(&ClientConfig {
            url: String::new(),
            client_cert: files.client.cert.clone(),
            client_key: files.client.key.clone(),
            server_ca: files.server_ca.clone(),
            timeout,
        })?;
        let connector = certd_api::client::https_connector(tls, timeout);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(CfsslClient {
            http,
            sign: format!("https://127.0.0.1:{port}/api/v1/cfssl/sign").parse()?,
            timeout,
        })
    }

    /// Has cfssl sign `csr` under the peer's profile; returns the PEM
    /// certificate and the HTTP version the answer came over.
    ///
    /// cfssl 1.2's `sign`: `{"certificate_request": PEM, "hosts": [...],
    /// "profile": NAME}` in, `{"success": true, "result": {"certificate":
    /// PEM}, ...}` out. The host goes in `hosts`: cfssl takes SANs only
    /// from there or the CSR's extension, never from the commonName (as
    /// certd does for `tls-server`), and these CSRs name the host only in
    /// the commonName.
    pub async fn sign(&self, csr: &Csr) -> Result<(String, http::Version), SignError> {
        let body = serde_json::json!({
            "certificate_request": csr.pem,
            "hosts": [csr.host],
            "profile": PROFILE,
        });
        let req = http::Request::post(&self.sign)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| SignError::Transport(e.to_string()))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| SignError::Transport(error_chain(&e)))?;
            let (status, version) = (resp.status(), resp.version());
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| SignError::Transport(e.to_string()))?
                .to_bytes();
            Ok((status, version, bytes))
        };
        let (status, version, bytes) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| SignError::Transport(format!("no answer within {:?}", self.timeout)))??;
        let refused = || {
            SignError::Answer(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ))
        };
        let answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| refused())?;
        match answer["result"]["certificate"].as_str() {
            Some(pem)
                if status.is_success()
                    && answer["success"] == true
                    && pem.starts_with("-----BEGIN CERTIFICATE-----") =>
            {
                Ok((pem.to_string(), version))
            }
            _ => Err(refused()),
        }
    }

    /// Waits until cfssl signs `csr` (its first certificate), checks the
    /// certificate against the profile, and returns a line describing
    /// it. cfssl has no readiness notification: the wait is a real
    /// request, repeated while there is no answer at all, up to a bound
    /// only a hang reaches, and given up at once if cfssl exits.
    pub async fn ready(&self, cfssl: &mut Cfssl, files: &PeerFiles, csr: &Csr) -> Result<String> {
        let deadline = Instant::now() + START_DEADLINE;
        let (pem, version) = loop {
            match self.sign(csr).await {
                Ok(answer) => break answer,
                Err(e @ SignError::Answer(_)) => {
                    bail!("{e}\ncfssl's log:\n{}", cfssl.log_tail())
                }
                Err(e) => {
                    if let Some(status) = cfssl.child.try_wait() {
                        bail!("cfssl serve exited ({status}):\n{}", cfssl.log_tail());
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "cfssl did not answer within {START_DEADLINE:?}: {e}\n{}",
                            cfssl.log_tail()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        check_certificate(&pem, files, csr)?;
        Ok(format!(
            "{version:?}, {VALIDITY_DAYS} days, serverAuth, ecdsa-with-SHA256, \
             the host as DNS SAN, CRL and CA issuers URLs"
        ))
    }
}

/// Checks that cfssl's certificate for `csr` is what the comparison
/// assumes: chains to the peer's CA, serverAuth only, ECDSA with SHA-256,
/// `VALIDITY_DAYS` (cfssl backdates notBefore by up to a few minutes),
/// the host as the only DNS name, and the named profile (its CRL URL).
fn check_certificate(pem: &str, files: &PeerFiles, csr: &Csr) -> Result<()> {
    let cert_path = files.dir.join("first-certificate.pem");
    std::fs::write(&cert_path, pem)?;
    openssl(&[&"verify", &"-CAfile", &files.ca_cert, &cert_path]);
    let view = CertView::from_pem(pem);
    let mut problems = Vec::new();
    if view.eku != [EKU_SERVER_AUTH] {
        problems.push(format!("extended key usages {:?}", view.eku));
    }
    if view.signature_algorithm != ECDSA_SHA256 {
        problems.push(format!("signature algorithm {}", view.signature_algorithm));
    }
    let days = VALIDITY_DAYS * 86_400;
    let validity = view.not_after - view.not_before;
    if !(days..=days + 3600).contains(&validity) {
        problems.push(format!("validity of {validity} s"));
    }
    if view.dns != [csr.host.as_str()] {
        problems.push(format!("DNS names {:?} for {}", view.dns, csr.host));
    }
    // The URL's bytes appear as they are in the DER (an IA5String).
    if !view
        .der
        .windows(CRL_URL.len())
        .any(|w| w == CRL_URL.as_bytes())
    {
        problems.push(format!(
            "no {CRL_URL}: signed with another profile than {PROFILE}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "cfssl's certificate does not match the profile: {}",
            problems.join("; ")
        ))
    }
}

impl Issuer for CfsslClient {
    async fn issue_one(&self, _request_id: String, csr: &Csr) -> Result<()> {
        // cfssl has no request ids: each request signs anew.
        self.sign(csr).await.map(drop).map_err(anyhow::Error::from)
    }
}

/// The error and its sources, joined, so TLS alerts show up in messages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
