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
//! cargo build --release -p ra-cli -p certd
//! cargo run --release -p certd-bench --bin ra-cli-bench -- --rows 1000,10000 --jobs 16
//! ```
//!
//! It needs `target/release/certd` and `target/release/ra-cli` (and builds
//! nothing else): the CA is set up with `./demo --setup-only`, or with
//! `--debug-build` when `--setup-debug` is given.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use certd_bench::{e2e, hex_id, make_csrs, repo_root, setup_demo, start_certd};
use clap::Parser;
use std::path::PathBuf;
use std::process::{Command, Stdio};
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

fn main() -> Result<()> {
    let args = Args::parse();
    let ra_cli = repo_root().join("target/release/ra-cli");
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
    let env = setup_demo(&ca, args.port, args.setup_debug)?;
    let _daemon = start_certd(&certd, &ca, &env)?;

    let config_path = PathBuf::from(&env["RA_CLI_CONFIG"]);
    let config = ra_cli::config::Config::load(&config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = Arc::new(config.client()?);
    let csrs = make_csrs(512)?;
    let run_id = hex_id();
    rt.block_on(e2e(
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
    let certd_e2e = rt.block_on(e2e(
        client.clone(),
        csrs,
        args.jobs,
        Duration::from_secs(args.seconds),
        &format!("{run_id}-e2e"),
    ));
    let (certd_rate, certd_errors) = (certd_e2e.rate, certd_e2e.errors);

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
