//! What the benchmarks share: the CA they set up with `./demo
//! --setup-only`, the `certd` they start on it, and the end-to-end
//! issuance measurement over mutual TLS (pre-made P-256 CSRs, `tls-server`
//! profile, persistent connections, every check on).
//!
//! Binaries: `certd-bench` (raw `C_Sign` vs end-to-end issuance) and
//! `ra-cli-bench` (ra-cli batch issuance vs end-to-end issuance).
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use certd_api::{CertdClient, IssueRequest};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The repository's root (where `demo` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The variables of a `demo.env` file.
pub fn read_env(path: &Path) -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect())
}

/// Sets up a CA in `dir` with `./demo --setup-only` (`--debug-build` when
/// `debug`) and returns its `demo.env`.
pub fn setup_demo(dir: &Path, port: u16, debug: bool) -> Result<HashMap<String, String>> {
    eprintln!("bench: setting up a CA in {}", dir.display());
    let mut demo = Command::new(repo_root().join("demo"));
    demo.args(["--setup-only", "--dir"])
        .arg(dir)
        .args(["--port", &port.to_string()]);
    if debug {
        demo.arg("--debug-build");
    }
    if !demo.stdout(Stdio::null()).status()?.success() {
        bail!("./demo --setup-only failed");
    }
    read_env(&dir.join("demo.env"))
}

/// A P-256 CSR for `cn`, signed in software.
pub fn make_csr(cn: &str) -> Result<String> {
    use x509_cert::builder::{Builder, RequestBuilder};
    use x509_cert::der::EncodePem;
    let key = loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("rng: {e}"))?;
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&bytes) {
            break k;
        }
    };
    let subject: x509_cert::name::Name = format!("CN={cn}").parse()?;
    let builder = RequestBuilder::new(subject)?;
    let csr = builder.build::<_, p256::ecdsa::DerSignature>(&key)?;
    Ok(csr.to_pem(x509_cert::der::pem::LineEnding::LF)?)
}

/// `n` P-256 CSRs for hosts under bench.example.com.
pub fn make_csrs(n: usize) -> Result<Arc<Vec<String>>> {
    eprintln!("bench: generating CSRs");
    let csrs = (0..n)
        .map(|i| make_csr(&format!("host{i}.bench.example.com")))
        .collect::<Result<_>>()?;
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

/// End-to-end issuance: `concurrency` tasks issuing for `dur`, each
/// request with a fresh `request_id` under `tag`.
pub async fn e2e(
    client: Arc<CertdClient>,
    csrs: Arc<Vec<String>>,
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
                let req = IssueRequest::new(
                    format!("{tag}-{t}-{i}"),
                    "tls-server",
                    csrs[i % csrs.len()].clone(),
                );
                let t0 = Instant::now();
                match client.issue(&req).await {
                    Ok(_) => lat.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("bench: request failed: {e}");
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
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
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
/// caches and the daemon's thread pools warm.
pub async fn warm_up(client: Arc<CertdClient>, csrs: Arc<Vec<String>>, run_id: &str) {
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

/// A running `certd`, stopped (SIGTERM, then waited for) on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Starts `certd` on the benchmark's CA and activates its certifier; the
/// daemon stops when the returned guard is dropped.
pub fn start_certd(certd: &Path, dir: &Path, env: &HashMap<String, String>) -> Result<Daemon> {
    let log = std::fs::File::create(dir.join("certd.log"))?;
    let child = Command::new(certd)
        .args(["run", "--config", &env["CERTD_CONFIG"]])
        .env("SOFTHSM2_CONF", &env["SOFTHSM2_CONF"])
        .env("CERTD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let daemon = Daemon(child);
    let socket = PathBuf::from(&env["CERTD_CONTROL_SOCKET"]);
    let until = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > until {
            bail!(
                "certd did not start; see {}",
                dir.join("certd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = Command::new(certd)
        .args(["activate", "--socket"])
        .arg(&socket)
        .args(["--pin-file", &env["PIN_FILE"]])
        .stdout(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("activation failed");
    }
    Ok(daemon)
}

/// A random tag for this run's request ids.
pub fn hex_id() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
