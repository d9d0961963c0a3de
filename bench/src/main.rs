//! `certd-bench`: in one run, against the real daemon and a SoftHSM token,
//! measures the raw PKCS#11 signing rate of the certifier key (C_Sign only,
//! 1 and 2 sessions) and end-to-end issuance over mutual TLS at several
//! concurrencies, and prints the ratio between them; then the same
//! issuance from a peer, `cfssl serve` over mutual TLS, and the ratio
//! certd / cfssl per concurrency; certd's context switches per certificate
//! and idle memory; and certd with a large ledger: its time to READY and a
//! CRL of every revocation in it.
//!
//! Run it as `cargo run --release -p certd-bench` (see the README).
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use certd_api::IssueRequest;
use certd_bench::cfssl::{self, CfsslClient, PeerFiles};
use certd_bench::procfs::{status_kib, CtxSampler};
use certd_bench::scale::{self, log_len, wait_entry};
use certd_bench::{
    client, cpu_seconds, e2e, hex_id, make_csrs, setup_ca, start_certd, warm_up, Csr, PROFILE,
};
use certd_e2e::DemoEnv;
use clap::Parser;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use secrecy::SecretString;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "Raw C_Sign rate vs end-to-end issuance over mTLS, and certd vs cfssl, in one run"
)]
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
    /// Measure the peer, `cfssl serve`, too (the default).
    // Read only through `no_peer`: the later of the two flags wins, so a
    // `--peer` can undo a `--no-peer` given earlier (in a wrapper script).
    #[arg(long, overrides_with = "no_peer")]
    peer: bool,
    /// Measure certd only.
    #[arg(long, overrides_with = "peer")]
    no_peer: bool,
    /// The peer's cfssl binary (Debian: `apt-get install golang-cfssl`).
    #[arg(long, value_name = "PATH", default_value = "cfssl")]
    cfssl: PathBuf,
    /// Certificates in the large ledger certd is started on (time to
    /// READY); 0 skips the large-ledger measurements. Kept under --dir
    /// for the next run.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    ledger_records: u64,
    /// Of those, revoked: the entries of the CRL measured (at most
    /// --ledger-records; 0 skips the CRL).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    crl_entries: u64,
    /// Internal: measure raw signing with this many sessions, using the
    /// demo.env given here (run as a child with SOFTHSM2_CONF set).
    #[arg(long, hide = true, requires = "dir")]
    raw_sign: Option<usize>,
}

/// The RA whose client credential both servers are reached with.
const RA: &str = "ra-demo";

/// Whether the peer is measured in this run.
enum Peer {
    /// cfssl (its version) on its files.
    Ready(String, Box<PeerFiles>),
    /// Not measured, as asked (`--no-peer`).
    Off,
    /// Not measured, and why.
    Skipped(String),
}

/// Finds cfssl and makes its files in `dir`, or says loudly why the peer
/// is skipped: a missing or broken cfssl never stops certd's measurement.
fn prepare_peer(args: &Args, dir: &Path, ca: &certd_e2e::api::ApiCa) -> Peer {
    if args.no_peer {
        return Peer::Off;
    }
    let ready = cfssl::version(&args.cfssl).and_then(|v| match v {
        Some(v) => Ok(Some((v, Box::new(cfssl::setup(dir, ca, RA)?)))),
        None => Ok(None),
    });
    let why = match ready {
        Ok(Some((version, files))) => return Peer::Ready(version, files),
        Ok(None) => format!(
            "{} not found; install it with `{}` (or give --cfssl PATH)",
            args.cfssl.display(),
            cfssl::INSTALL_HINT
        ),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("bench: !!! PEER SKIPPED: {why}. certd is measured alone.");
    Peer::Skipped(why)
}

/// Runs cfssl on `files`, checks its first certificate, and measures it
/// at each concurrency as certd was: the same CSRs, client credential,
/// loop and warm-up. Prints its table; returns (concurrency, certs/s).
fn measure_peer(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    version: &str,
    files: &PeerFiles,
    csrs: &Arc<Vec<Csr>>,
) -> Result<Vec<(usize, f64)>> {
    let mut server = cfssl::start(&args.cfssl, files)?;
    let client = Arc::new(CfsslClient::new(files, server.port)?);
    let first = rt.block_on(client.ready(&mut server, files, &csrs[0]))?;
    println!(
        "  peer: cfssl serve {version} over mTLS (client CA = the transport CA, CN ^{RA}$), \
         profile {PROFILE}; signs with a P-256 key in a file (software, no HSM), no certificate database:"
    );
    println!("  first certificate checked: {first}");
    let run_id = hex_id()?;
    rt.block_on(warm_up(client.clone(), csrs.clone(), &run_id));
    println!(
        "  {:>11} {:>10} {:>10} {:>10} {:>8} {:>14} {:>14}",
        "concurrency", "certs/s", "p50 ms", "p99 ms", "errors", "cfssl CPU/cert", "client CPU/cert"
    );
    let pid = server.pid().to_string();
    let mut rates = Vec::new();
    for &c in &args.concurrency {
        let (s0, b0) = (cpu_seconds(&pid), cpu_seconds("self"));
        let st = rt.block_on(e2e(
            client.clone(),
            csrs.clone(),
            c,
            Duration::from_secs(args.seconds),
            &format!("{run_id}-c{c}"),
        ));
        let (s1, b1) = (cpu_seconds(&pid), cpu_seconds("self"));
        let per = |cpu: f64| cpu / st.count.max(1) as f64 * 1e6;
        println!(
            "  {:>11} {:>10.0} {:>10.2} {:>10.2} {:>8} {:>12.0}us {:>12.0}us",
            c,
            st.rate,
            st.p50.as_secs_f64() * 1e3,
            st.p99.as_secs_f64() * 1e3,
            st.errors,
            per(s1 - s0),
            per(b1 - b0)
        );
        rates.push((c, st.rate));
    }
    Ok(rates)
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
    if args.crl_entries > args.ledger_records {
        bail!(
            "--crl-entries ({}) cannot exceed --ledger-records ({}): the revoked \
             certificates are part of the ledger",
            args.crl_entries,
            args.ledger_records
        );
    }
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
    let peer = prepare_peer(&args, &tmp.path().join("cfssl"), &ca);
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
    let mut certd_rates = Vec::new();
    // A certificate certd issued, PEM: every record's certificate in the
    // large ledger.
    let mut sample = None;
    for certd in &certds {
        let mut rates = Vec::new();
        println!(
            "  end-to-end issuance over mTLS (durable ledger and audit log, every check on), {}:",
            certd.display()
        );
        let from = log_len(&ca.config);
        let mut daemon = start_certd(certd, &ca)?;
        // Activation makes a CRL: idle means after it.
        wait_entry(&mut daemon, from, "crl_issued")?;
        let pid = daemon.pid();
        let idle_rss = status_kib(pid, "VmRSS");
        let client = Arc::new(client(&ca, "ra-demo")?);
        let run_id = hex_id()?;
        if sample.is_none() {
            let req = IssueRequest::new(format!("{run_id}-sample"), PROFILE, csrs[0].pem.as_str());
            sample = Some(rt.block_on(client.issue(&req))?.certificate);
        }
        rt.block_on(warm_up(client.clone(), csrs.clone(), &run_id));
        println!(
            "  {:>11} {:>10} {:>10} {:>10} {:>8} {:>14} {:>14} {:>14} {:>14} {:>14}",
            "concurrency",
            "certs/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "vs raw 1 sess",
            "vs raw best",
            "certd CPU/cert",
            "certd cs/cert",
            "client CPU/cert"
        );
        let certd_pid = pid.to_string();
        let mut ended = 0;
        for c in &args.concurrency {
            let (d0, b0) = (cpu_seconds(&certd_pid), cpu_seconds("self"));
            let switches = CtxSampler::start(pid);
            let st = rt.block_on(e2e(
                client.clone(),
                csrs.clone(),
                *c,
                dur,
                &format!("{run_id}-c{c}"),
            ));
            let switches = switches.finish();
            let (d1, b1) = (cpu_seconds(&certd_pid), cpu_seconds("self"));
            ended += switches.threads_ended;
            let n = st.count.max(1) as f64;
            let per = |cpu: f64| cpu / n * 1e6;
            println!(
                "  {:>11} {:>10.0} {:>10.2} {:>10.2} {:>8} {:>13.2}x {:>13.2}x {:>12.0}us {:>14.1} {:>12.0}us",
                c,
                st.rate,
                st.p50.as_secs_f64() * 1e3,
                st.p99.as_secs_f64() * 1e3,
                st.errors,
                st.rate / one_raw,
                st.rate / best_raw,
                per(d1 - d0),
                switches.total as f64 / n,
                per(b1 - b0)
            );
            rates.push((*c, st.rate));
        }
        let kib =
            |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "  certd RSS: idle {} (after READY and activation, before any load); after the load {}, \
             peak {}",
            kib(idle_rss),
            kib(status_kib(pid, "VmRSS")),
            kib(status_kib(pid, "VmHWM"))
        );
        println!(
            "  cs/cert: voluntary + involuntary context switches of every certd thread, read \
             every 100 ms; threads that exited meanwhile: {ended}"
        );
        certd_rates.push((certd, rates));
    }

    // After certd has stopped, so neither server competes for the CPU.
    let peer_rates = match &peer {
        Peer::Ready(version, files) => {
            measure_peer(&args, &rt, version, files, &csrs).map_err(|e| format!("{e:#}"))
        }
        Peer::Off => {
            println!("  peer: not measured (--no-peer)");
            Err("--no-peer".into())
        }
        Peer::Skipped(why) => {
            println!("  !!! PEER SKIPPED: {why}");
            Err(why.clone())
        }
    };
    if let (Peer::Ready(..), Err(e)) = (&peer, &peer_rates) {
        println!("  !!! PEER FAILED: {e}");
    }

    // Last, on its own: building the ledger and making the CRL use both
    // cores.
    let large = if args.ledger_records == 0 {
        println!("  large ledger: not measured (--ledger-records 0)");
        None
    } else {
        let plan = scale::Plan {
            records: args.ledger_records,
            revoked: args.crl_entries,
        };
        println!("  certd with a large ledger ({}):", certds[0].display());
        let der = || -> Result<Vec<u8>> {
            use x509_cert::der::{DecodePem, Encode};
            let pem = sample.as_deref().context("no certificate was issued")?;
            Ok(x509_cert::Certificate::from_pem(pem)?.to_der()?)
        };
        let root = dir.join("bench-ledger");
        Some(scale::measure(
            &certds[0], &ca, &root, &plan, &csrs[1], der, &rt,
        )?)
    };

    println!();
    println!("summary ({PROFILE}, pre-made P-256 CSRs, mTLS, persistent connections):");
    for (certd, rates) in &certd_rates {
        let which = if certd_rates.len() > 1 {
            format!(" ({})", certd.display())
        } else {
            String::new()
        };
        for (c, rate) in rates {
            let cfssl = peer_rates
                .as_ref()
                .ok()
                .and_then(|p| p.iter().find(|(pc, _)| pc == c));
            match cfssl {
                Some((_, peer_rate)) => println!(
                    "  concurrency {c:>3}: certd {rate:.0} certs/s, cfssl {peer_rate:.0} certs/s, ratio {:.2}{which}",
                    rate / peer_rate
                ),
                None => println!(
                    "  concurrency {c:>3}: certd {rate:.0} certs/s, cfssl not measured{which}"
                ),
            }
        }
    }
    if let Some(found) = &large {
        println!(
            "  time to READY: empty ledger {:.3} s, {} certificates {:.3} s",
            found.ready_empty.as_secs_f64(),
            args.ledger_records,
            found.ready_full.as_secs_f64()
        );
        if let Some((secs, entries, bytes)) = found.crl {
            println!(
                "  CRL of {entries} entries: {:.1} MB, made in {secs:.2} s after a revocation",
                bytes as f64 / 1e6
            );
        }
    }
    match (&peer, peer_rates) {
        (Peer::Ready(..), Err(e)) => bail!("the peer (cfssl) failed: {e}"),
        _ => Ok(()),
    }
}
