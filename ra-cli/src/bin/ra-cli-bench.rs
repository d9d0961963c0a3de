//! `ra-cli-bench`: in one run, against one real certd (SoftHSM token,
//! mutual TLS, durable ledger and audit log):
//!
//! 1. certd's end-to-end issuance rate at concurrency N, measured as
//!    `certd-bench` does (pre-made P-256 CSRs, `tls-server` profile,
//!    persistent connections), with ra-cli's credential;
//! 2. `ra-cli batch issue` of people lists (locally generated P-256 keys,
//!    PKCS#12 output, journal) with `--jobs N`, for each list size;
//!
//! and prints rows/s, the ratio to certd's rate, and ra-cli's peak RSS.
//!
//! ```sh
//! cargo build --release -p ra-cli
//! cargo run --release -p ra-cli --bin ra-cli-bench -- --rows 1000,10000 --jobs 16
//! ```
//!
//! It needs `target/release/certd` (and builds nothing else): the CA is set
//! up with `./demo --setup-only --debug-build` when only the debug `certd`
//! is fresh, else with `./demo --setup-only`.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use certd_api::{CertdClient, IssueRequest};
use clap::Parser;
use ra_cli::keys::{KeyType, SubscriberKey};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "ra-cli batch issuance rate vs certd end-to-end rate, in one run")]
struct Args {
    /// Batch sizes (rows).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rows: Vec<usize>,
    /// Concurrency of both measurements.
    #[arg(long, default_value_t = 16)]
    jobs: usize,
    /// Seconds of the certd end-to-end measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Port of the benchmark's certd.
    #[arg(long, default_value_t = 18743)]
    port: u16,
    /// Keep the CA and outputs here instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Set the CA up with the debug binaries (`./demo --debug-build`)
    /// instead of building the workspace in release mode.
    #[arg(long)]
    setup_debug: bool,
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

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// certd's end-to-end rate: `concurrency` tasks issuing for `dur`.
async fn certd_e2e(
    client: Arc<CertdClient>,
    csrs: Arc<Vec<String>>,
    concurrency: usize,
    dur: Duration,
    tag: &str,
) -> (f64, usize) {
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (client, csrs, tag) = (client.clone(), csrs.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut i) = (0usize, 0usize, t);
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
                match client.issue(&req).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("bench: request failed: {e}");
                        }
                    }
                }
                i += concurrency;
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((o, e)) = t.await {
            ok += o;
            errors += e;
        }
    }
    (ok as f64 / start.elapsed().as_secs_f64(), errors)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let me = std::env::current_exe()?;
    let bin_dir = me.parent().context("binary directory")?.to_path_buf();
    let ra_cli = bin_dir.join("ra-cli");
    let certd = repo_root().join("target/release/certd");
    for b in [&ra_cli, &certd] {
        if !b.is_file() {
            bail!(
                "{} is missing: cargo build --release -p ra-cli -p certd",
                b.display()
            );
        }
    }
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let ca = dir.join("ca");
    eprintln!("bench: setting up a CA in {}", ca.display());
    let mut demo = Command::new(repo_root().join("demo"));
    demo.args(["--setup-only", "--dir"])
        .arg(&ca)
        .args(["--port", &args.port.to_string()]);
    if args.setup_debug {
        demo.arg("--debug-build");
    }
    if !demo.stdout(Stdio::null()).status()?.success() {
        bail!("./demo --setup-only failed");
    }
    let env = read_env(&ca.join("demo.env"))?;
    let log = std::fs::File::create(dir.join("certd.log"))?;
    let child = Command::new(&certd)
        .args(["run", "--config", &env["CERTD_CONFIG"]])
        .env("SOFTHSM2_CONF", &env["SOFTHSM2_CONF"])
        .env("CERTD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let _daemon = Daemon(child);
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
    let ok = Command::new(&certd)
        .args(["activate", "--socket"])
        .arg(&socket)
        .args(["--pin-file", &env["PIN_FILE"]])
        .stdout(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("activation failed");
    }

    let config_path = PathBuf::from(&env["RA_CLI_CONFIG"]);
    let config = ra_cli::config::Config::load(&config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = Arc::new(config.client()?);
    let csrs: Vec<String> = (0..512)
        .map(|i| {
            SubscriberKey::generate(KeyType::P256)
                .and_then(|k| k.csr_pem(Some(&format!("host{i}.bench.example.com"))))
        })
        .collect::<Result<_, _>>()?;
    let csrs = Arc::new(csrs);
    let mut run_id = [0u8; 6];
    getrandom::fill(&mut run_id).map_err(|e| anyhow::anyhow!("rng: {e}"))?;
    let run_id = hex::encode(run_id);
    rt.block_on(certd_e2e(
        client.clone(),
        csrs.clone(),
        4,
        Duration::from_millis(500),
        &format!("{run_id}-warm"),
    ));
    eprintln!(
        "bench: certd end-to-end, concurrency {}, {}s",
        args.jobs, args.seconds
    );
    let (certd_rate, certd_errors) = rt.block_on(certd_e2e(
        client.clone(),
        csrs,
        args.jobs,
        Duration::from_secs(args.seconds),
        &format!("{run_id}-e2e"),
    ));

    let mut results = Vec::new();
    for &rows in &args.rows {
        let input = dir.join(format!("people-{rows}.csv"));
        let mut text = String::from("email,common_name\n");
        for i in 0..rows {
            text.push_str(&format!("person{i:06}.{run_id}@example.com,\n"));
        }
        std::fs::write(&input, text)?;
        let out = dir.join(format!("out-{rows}"));
        eprintln!(
            "bench: ra-cli batch issue, {rows} rows, --jobs {}",
            args.jobs
        );
        let t0 = Instant::now();
        let o = Command::new(&ra_cli)
            .arg("--config")
            .arg(&config_path)
            .args(["--json", "batch", "issue", "--input"])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .args(["--jobs", &args.jobs.to_string(), "--progress", "off"])
            .stderr(Stdio::inherit())
            .output()?;
        let wall = t0.elapsed().as_secs_f64();
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout)
            .with_context(|| format!("ra-cli printed no summary (exit {})", o.status))?;
        let issued = summary["issued"].as_u64().unwrap_or(0);
        if issued != rows as u64 {
            bail!("only {issued} of {rows} rows issued: {summary}");
        }
        results.push((
            rows,
            summary["rows_per_second"].as_f64().unwrap_or(0.0),
            rows as f64 / wall,
            summary["peak_rss_kib"].as_u64().unwrap_or(0),
        ));
    }

    println!();
    println!(
        "ra-cli benchmark: P-256 keys generated by ra-cli, PKCS#12 output, smime-mailbox profile, --jobs {}",
        args.jobs
    );
    println!(
        "  certd end-to-end (tls-server, pre-made CSRs) at concurrency {}: {:.0} certs/s ({} errors)",
        args.jobs, certd_rate, certd_errors
    );
    println!(
        "  {:>8} {:>14} {:>16} {:>10} {:>14}",
        "rows", "rows/s (issue)", "rows/s (process)", "vs certd", "peak RSS MiB"
    );
    for (rows, rate, whole, rss) in results {
        println!(
            "  {:>8} {:>14.0} {:>16.0} {:>9.2}x {:>14.1}",
            rows,
            rate,
            whole,
            rate / certd_rate,
            rss as f64 / 1024.0
        );
    }
    Ok(())
}
