//! What the benchmarks share: the CA they set up with `./demo
//! --setup-only` (through the `certd-e2e` harness the tests use), the
//! `certd` they start on it, and the end-to-end
//! issuance measurement over mutual TLS (pre-made P-256 CSRs, `tls-server`
//! profile, persistent connections, every check on).
//!
//! The same loop measures a peer, `cfssl serve` ([`cfssl`]), through the
//! [`Issuer`] trait. [`procfs`] reads the server's memory and context
//! switches; [`scale`] builds a large ledger and measures certd's start and
//! CRL on it.
//!
//! Binaries: `certd-bench` (raw `C_Sign` vs end-to-end issuance, and
//! certd vs cfssl) and `ra-cli-bench` (ra-cli batch issuance vs end-to-end
//! issuance).
#![forbid(unsafe_code)]

pub mod cfssl;
pub mod procfs;
pub mod scale;

use anyhow::{Context, Result};
use certd_api::{CertdClient, ClientConfig, IssueRequest};
use certd_e2e::api::ApiCa;
use certd_e2e::CertdInstance;
use ra_cli::keys::{KeyType, SubscriberKey};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The profile every measurement issues under: certd's `tls-server`, and
/// the peer's profile of the same name.
pub const PROFILE: &str = "tls-server";

/// A server the end-to-end loop issues from: one certificate for one CSR.
pub trait Issuer: Send + Sync + 'static {
    /// Issues a certificate for `csr` under [`PROFILE`]; `request_id` is
    /// unique to this request (for servers that take one).
    fn issue_one(&self, request_id: String, csr: &Csr) -> impl Future<Output = Result<()>> + Send;
}

impl Issuer for CertdClient {
    async fn issue_one(&self, request_id: String, csr: &Csr) -> Result<()> {
        // certd takes the host from the CSR's commonName, as a SAN too.
        let req = IssueRequest::new(request_id, PROFILE, csr.pem.as_str());
        self.issue(&req).await?;
        Ok(())
    }
}

/// Sets up a CA in `dir` with the real `./demo --setup-only`, on an API
/// socket this process binds and hands to every certd it starts (so no
/// port is chosen or raced for). Uses, and builds when needed, the
/// binaries of this benchmark's own profile.
pub fn setup_ca(dir: &Path) -> ApiCa {
    eprintln!("bench: setting up a CA in {}", dir.display());
    ApiCa::from_demo(dir, &certd_e2e::bin("certd"))
}

/// Starts the `certd` binary at `certd` on the benchmark's CA, waits for
/// its READY=1 and activates its certifier; the daemon is killed when the
/// returned instance is dropped.
pub fn start_certd(certd: &Path, ca: &ApiCa) -> Result<CertdInstance> {
    let instance = CertdInstance::start_on(
        certd,
        &ca.config,
        &ca.token,
        &[("CERTD_LOG", "warn".as_ref())],
        Some(&ca.api_socket),
    );
    let pin = ca.token.pin_file.to_string_lossy().into_owned();
    let certifier = &ca.certifiers[0].name;
    let out = instance.ctl(&["activate", certifier, "--pin-file", &pin]);
    if !out.status.success() {
        anyhow::bail!("activating {certifier} failed\n{out}");
    }
    Ok(instance)
}

/// The RA client of the CA's RA `ra` (`ra-demo`, `ra-cli`, ...).
pub fn client(ca: &ApiCa, ra: &str) -> Result<CertdClient> {
    let cred = ca.ra(ra);
    Ok(CertdClient::new(&ClientConfig {
        url: ca.url(),
        client_cert: cred.cert.clone(),
        client_key: cred.key.clone(),
        server_ca: ca.tls.ca_cert.clone(),
        timeout: Duration::from_secs(30),
    })?)
}

/// A pre-made certificate request.
#[derive(Debug, Clone)]
pub struct Csr {
    /// The PKCS#10 request, PEM; its subject is only the host's CN.
    pub pem: String,
    /// The host it is for (for servers that want the names beside the CSR).
    pub host: String,
}

/// `n` P-256 CSRs for hosts under bench.example.com, made with ra-cli's
/// own key generation (keys in software, signed CSRs).
pub fn make_csrs(n: usize) -> Result<Arc<Vec<Csr>>> {
    eprintln!("bench: generating CSRs");
    let csrs = (0..n)
        .map(|i| {
            let key = SubscriberKey::generate(KeyType::P256)?;
            let host = format!("host{i}.bench.example.com");
            let pem = key.csr_pem(Some(&host))?;
            Ok::<_, ra_cli::Error>(Csr { pem, host })
        })
        .collect::<Result<_, _>>()
        .context("generating a CSR")?;
    Ok(Arc::new(csrs))
}

/// What one end-to-end measurement saw.
pub struct Stats {
    /// Certificates issued.
    pub count: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Certificates per second.
    pub rate: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

/// End-to-end issuance: `concurrency` tasks issuing from `client` for
/// `dur`, each request with a fresh `request_id` under `tag`.
pub async fn e2e<I: Issuer>(
    client: Arc<I>,
    csrs: Arc<Vec<Csr>>,
    concurrency: usize,
    dur: Duration,
    tag: &str,
) -> Stats {
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (client, csrs, tag) = (client.clone(), csrs.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = t;
            while Instant::now() < deadline {
                let id = format!("{tag}-{t}-{i}");
                let t0 = Instant::now();
                match client.issue_one(id, &csrs[i % csrs.len()]).await {
                    Ok(()) => lat.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("bench: request failed: {e:#}");
                        }
                    }
                }
                i += concurrency;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        // A task that panicked measured nothing: count it as failed, never
        // as silently absent.
        match t.await {
            Ok((lat, e)) => {
                all.extend(lat);
                errors += e;
            }
            Err(e) => {
                eprintln!("bench: a client task failed: {e}");
                errors += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        count: all.len(),
        errors,
        rate: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// A short run at concurrency 4 before measuring: connections opened,
/// caches and the server's thread pools warm.
pub async fn warm_up<I: Issuer>(client: Arc<I>, csrs: Arc<Vec<Csr>>, run_id: &str) {
    e2e(
        client,
        csrs,
        4,
        Duration::from_millis(500),
        &format!("{run_id}-warm"),
    )
    .await;
}

/// CPU time (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// A random tag for this run's request ids.
pub fn hex_id() -> Result<String> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
