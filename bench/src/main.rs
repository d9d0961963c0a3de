//! `certd-bench`: in one run, against the real daemon and a SoftHSM token,
//! measures the raw PKCS#11 signing rate of the certifier key (C_Sign only,
//! 1 and 2 sessions) and end-to-end issuance over mutual TLS at several
//! concurrencies, and prints the ratio between them.
//!
//! Run it as `cargo run --release -p certd-bench` (see the README).
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use certd_bench::{client, cpu_seconds, e2e, hex_id, make_csrs, setup_ca, start_certd, warm_up};
use certd_e2e::DemoEnv;
use clap::Parser;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use secrecy::SecretString;
use sha2::Digest;
use std::path::PathBuf;
use std::process::{Command, Stdio};
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
    /// Keep the benchmark's CA directory here instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The certd binary to measure (default: this profile's certd, built
    /// when needed). Given
    /// more than once, each is measured in turn against the same CA and
    /// token, in the same run (e.g. a baseline build beside a change).
    #[arg(long = "certd", value_name = "PATH")]
    certds: Vec<PathBuf>,
    /// Internal: measure raw signing with this many sessions, using the
    /// demo.env given here (run as a child with SOFTHSM2_CONF set).
    #[arg(long, hide = true, requires = "dir")]
    raw_sign: Option<usize>,
}

/// Raw signing: `sessions` threads, each with its own session, signing
/// SHA-256 digests with the certifier key for `dur`.
fn raw_sign_rate(env: &DemoEnv, key_label: &str, sessions: usize, dur: Duration) -> Result<f64> {
    let ctx = Pkcs11::new(certd_e2e::SOFTHSM_MODULE)?;
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
    let pin = std::fs::read_to_string(env.path("PIN_FILE"))?;
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

fn main() -> Result<()> {
    let args = Args::parse();
    if let (Some(sessions), Some(dir)) = (args.raw_sign, &args.dir) {
        let env = DemoEnv::read(&dir.join("demo.env"));
        let rate = raw_sign_rate(
            &env,
            env.get("CERTIFIER"),
            sessions,
            Duration::from_secs(args.seconds),
        )?;
        println!("{rate}");
        return Ok(());
    }
    let me = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("ca"));
    let ca = setup_ca(&dir);
    let certds = if args.certds.is_empty() {
        vec![certd_e2e::bin("certd")]
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
            .env("SOFTHSM2_CONF", &ca.token.conf)
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("raw signing measurement failed");
        }
        let rate: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        raw.push((sessions, rate));
        eprintln!("bench: raw C_Sign, {sessions} session(s): {rate:.0}/s");
    }

    let csrs = make_csrs(512)?;
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
        let daemon = start_certd(certd, &ca)?;
        let client = Arc::new(client(&ca, "ra-demo")?);
        let run_id = hex_id()?;
        rt.block_on(warm_up(client.clone(), csrs.clone(), &run_id));
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
        let certd_pid = daemon.pid().to_string();
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
