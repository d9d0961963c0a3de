//! `certd-bench`: in one run, against the real daemon and a SoftHSM token,
//! measures the raw PKCS#11 signing rate of the certifier key (C_Sign only,
//! 1 and 2 sessions) and end-to-end issuance over mutual TLS at several
//! concurrencies, and prints the ratio between them.
//!
//! Run it as `cargo run --release -p certd-bench` (see the README).
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use certd_api::{CertdClient, ClientConfig, IssueRequest};
use clap::Parser;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use secrecy::SecretString;
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Raw C_Sign rate vs end-to-end issuance over mTLS, in one run")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrencies for end-to-end issuance.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Port for the benchmark's certd.
    #[arg(long, default_value_t = 18643)]
    port: u16,
    /// Keep the benchmark's CA directory here instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The certd binary to measure (default: target/release/certd). Given
    /// more than once, each is measured in turn against the same CA and
    /// token, in the same run (e.g. a baseline build beside a change).
    #[arg(long = "certd", value_name = "PATH")]
    certds: Vec<PathBuf>,
    /// Internal: measure raw signing with this many sessions, using the
    /// demo.env given here (run as a child with SOFTHSM2_CONF set).
    #[arg(long, hide = true, requires = "dir")]
    raw_sign: Option<usize>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn read_env(path: &Path) -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect())
}

/// Raw signing: `sessions` threads, each with its own session, signing
/// SHA-256 digests with the certifier key for `dur`.
fn raw_sign_rate(
    env: &HashMap<String, String>,
    key_label: &str,
    sessions: usize,
    dur: Duration,
) -> Result<f64> {
    let module = "/usr/lib/softhsm/libsofthsm2.so";
    let ctx = Pkcs11::new(module)?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = ctx
        .get_slots_with_initialized_token()?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == "certd-demo")
                .unwrap_or(false)
        })
        .context("demo token not found")?;
    let pin = std::fs::read_to_string(&env["PIN_FILE"])?;
    let login = ctx.open_rw_session(slot)?;
    login.login(
        UserType::User,
        Some(&SecretString::from(pin.trim().to_string())),
    )?;
    let key = *login
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ])?
        .first()
        .context("certifier key not found")?;
    let digest = sha2::Sha256::digest(b"certd benchmark tbs");
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..sessions)
            .map(|_| {
                let ctx = &ctx;
                scope.spawn(move || -> u64 {
                    let Ok(session) = ctx.open_rw_session(slot) else {
                        return 0;
                    };
                    let mut n = 0;
                    while Instant::now() < deadline {
                        if session.sign(&Mechanism::Ecdsa, key, &digest).is_err() {
                            break;
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(login);
    ctx.finalize()?;
    Ok(rate)
}

/// A P-256 CSR for `cn`, signed in software.
fn make_csr(cn: &str) -> Result<String> {
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

struct Stats {
    count: usize,
    errors: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn e2e(
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
                let req = IssueRequest {
                    request_id: format!("{tag}-{t}-{i}"),
                    certifier: None,
                    profile: "tls-server".into(),
                    csr: csrs[i % csrs.len()].clone(),
                    subject: None,
                    san: None,
                    not_after: None,
                    approval: None,
                };
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

/// CPU time (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let (Some(sessions), Some(dir)) = (args.raw_sign, &args.dir) {
        let env = read_env(&dir.join("demo.env"))?;
        let rate = raw_sign_rate(
            &env,
            &env["CERTIFIER"],
            sessions,
            Duration::from_secs(args.seconds),
        )?;
        println!("{rate}");
        return Ok(());
    }
    // Taken before ./demo builds the workspace, which may replace this binary.
    let me = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("ca"));
    let root = repo_root();
    eprintln!("bench: setting up a CA in {}", dir.display());
    let status = Command::new(root.join("demo"))
        .args(["--setup-only", "--dir"])
        .arg(&dir)
        .args(["--port", &args.port.to_string()])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("./demo --setup-only failed");
    }
    let env = read_env(&dir.join("demo.env"))?;
    let certds = if args.certds.is_empty() {
        vec![root.join("target/release/certd")]
    } else {
        args.certds.clone()
    };
    let dur = Duration::from_secs(args.seconds);

    let mut raw = Vec::new();
    for sessions in [1, 2] {
        // SoftHSM finds its tokens through SOFTHSM2_CONF at C_Initialize, so
        // the raw measurement runs in a child that has it in its environment.
        let out = Command::new(&me)
            .args([
                "--raw-sign",
                &sessions.to_string(),
                "--seconds",
                &args.seconds.to_string(),
                "--dir",
            ])
            .arg(&dir)
            .env("SOFTHSM2_CONF", &env["SOFTHSM2_CONF"])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("raw signing measurement failed");
        }
        let rate: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        raw.push((sessions, rate));
        eprintln!("bench: raw C_Sign, {sessions} session(s): {rate:.0}/s");
    }

    eprintln!("bench: generating CSRs");
    let csrs: Vec<String> = (0..512)
        .map(|i| make_csr(&format!("host{i}.bench.example.com")))
        .collect::<Result<_>>()?;
    let csrs = Arc::new(csrs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let best_raw = raw.iter().map(|r| r.1).fold(0.0, f64::max);
    let one_raw = raw.first().map_or(0.0, |r| r.1);
    println!();
    println!(
        "certd benchmark: P-256 certifier in SoftHSM, tls-server profile, {}s per measurement",
        args.seconds
    );
    for (s, r) in &raw {
        println!("  raw C_Sign            {s} session(s)    {r:>9.0} signatures/s");
    }
    for certd in &certds {
        println!(
            "  end-to-end issuance over mTLS (durable ledger and audit log, every check on), {}:",
            certd.display()
        );
        let _daemon = start_certd(certd, &dir, &env)?;
        let client = Arc::new(CertdClient::new(&ClientConfig {
            url: env["CERTD_URL"].clone(),
            client_cert: env["RA_CLIENT_CERT"].clone().into(),
            client_key: env["RA_CLIENT_KEY"].clone().into(),
            server_ca: env["CERTD_TLS_CA"].clone().into(),
            timeout: Duration::from_secs(30),
        })?);
        let run_id = hex_id();
        // Warm-up: connections, caches.
        rt.block_on(e2e(
            client.clone(),
            csrs.clone(),
            4,
            Duration::from_millis(500),
            &format!("{run_id}-warm"),
        ));
        println!(
            "  {:>11} {:>10} {:>10} {:>10} {:>8} {:>14} {:>14} {:>14} {:>14}",
            "concurrency",
            "certs/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "vs raw 1 sess",
            "vs raw best",
            "certd CPU/cert",
            "client CPU/cert"
        );
        let certd_pid = _daemon.0.id().to_string();
        for c in &args.concurrency {
            let (d0, b0) = (cpu_seconds(&certd_pid), cpu_seconds("self"));
            let st = rt.block_on(e2e(
                client.clone(),
                csrs.clone(),
                *c,
                dur,
                &format!("{run_id}-c{c}"),
            ));
            let (d1, b1) = (cpu_seconds(&certd_pid), cpu_seconds("self"));
            let per = |cpu: f64| cpu / st.count.max(1) as f64 * 1e6;
            println!(
                "  {:>11} {:>10.0} {:>10.2} {:>10.2} {:>8} {:>13.2}x {:>13.2}x {:>12.0}us {:>12.0}us",
                c,
                st.rate,
                st.p50.as_secs_f64() * 1e3,
                st.p99.as_secs_f64() * 1e3,
                st.errors,
                st.rate / one_raw,
                st.rate / best_raw,
                per(d1 - d0),
                per(b1 - b0)
            );
        }
    }
    Ok(())
}

/// Starts `certd` on the benchmark's CA and activates its certifier; the
/// daemon stops when the returned guard is dropped.
fn start_certd(certd: &Path, dir: &Path, env: &HashMap<String, String>) -> Result<Daemon> {
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

fn hex_id() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
