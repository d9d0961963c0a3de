//! certd with a large ledger: the time to READY with a million certificates
//! in the ledger index, and a CRL with a million entries, made, served and
//! checked.
//!
//! The ledger is synthetic but shaped as certd writes it: records of the
//! benchmark CA's certifier in state issued or revoked, with distinct random
//! serials, their intent (RA, request id, TBS hash, profile), one real
//! certificate (issued by certd through the API) as every record's DER, a
//! summary, and the RA's idempotency key; imported through the index's
//! own import (as `certd migrate-ledger` does) in write transactions of
//! [`BATCH`] records. The audit log starts empty, so the index's checkpoint
//! is the log's start: nothing to replay, as after a clean stop. The built
//! state directory is kept beside the CA (under `--dir`, across runs).

use crate::procfs::status_kib;
use crate::{client, Csr, PROFILE};
use anyhow::{anyhow, bail, Context, Result};
use certd::audit::GENESIS_PREV;
use certd::daemon::{audit_path, index_path};
use certd::ledger::index::{Checkpoint, Index};
use certd::ledger::{IdempotencyEntry, Intent, LedgerRecord, RecordState, Serial, Summary};
use certd_api::IssueRequest;
use certd_e2e::api::ApiCa;
use certd_e2e::{run, tool, CertdConfig, CertdInstance};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use x509_cert::der::Decode;

/// Records per write transaction of the import: large enough that commits
/// do not dominate, small enough that a transaction's dirty pages stay
/// modest.
pub const BATCH: u64 = 50_000;

/// The RAs the records are spread over (the demo's).
const RAS: [&str; 3] = ["ra-demo", "ra-web", "ra-cli"];

/// Revocation reasons, in turn: unspecified (a CRL entry without a reason
/// extension), superseded, cessationOfOperation, keyCompromise.
const REASONS: [u8; 4] = [0, 4, 5, 1];

/// Starts per time to READY: the best of them is reported, so a cold page
/// cache or a busy moment does not count.
const STARTS: usize = 3;

/// An upper bound on waiting for a CRL: only a hang reaches it.
const CRL_LIMIT: Duration = Duration::from_secs(1800);

/// Layout of the cached state directory; a cache of another layout is
/// built again.
const CACHE_LAYOUT: u64 = 1;

/// The ledger to build: `records` records, `revoked` of them revoked.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Records in the index.
    pub records: u64,
    /// Of which revoked (the CRL's entries).
    pub revoked: u64,
}

/// A state directory holding a built ledger.
pub struct Built {
    /// The directory holding `state/` (and the daemon's log).
    pub dir: PathBuf,
    /// How long building it took (on this run or the one that built it).
    pub build: Duration,
    /// Whether it was built by an earlier run.
    pub cached: bool,
}

impl Built {
    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// A serial of the synthetic ledger: random-looking (certd's are random,
/// and the index's B-trees grow differently under random keys), the same
/// on every run, positive.
fn serial(i: u64) -> Result<Serial> {
    let h = Sha256::digest([b"certd-bench serial ".as_slice(), &i.to_be_bytes()].concat());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h[..16]);
    bytes[0] &= 0x7f;
    Serial::from_bytes(bytes).map_err(|e| anyhow!("serial {i}: {e}"))
}

fn sha256_of(what: &str, i: u64) -> [u8; 32] {
    Sha256::digest(format!("certd-bench {what} {i}")).into()
}

/// Whether record `i` is revoked: `plan.revoked` of them, spread evenly.
fn is_revoked(plan: &Plan, i: u64) -> bool {
    let at = |k: u64| u128::from(k) * u128::from(plan.revoked) / u128::from(plan.records);
    at(i + 1) != at(i)
}

/// Record `i` of the synthetic ledger, created at `created` (Unix seconds).
fn record(plan: &Plan, certifier: &str, der: &[u8], i: u64, created: i64) -> LedgerRecord {
    let ra = RAS[(i % RAS.len() as u64) as usize];
    let host = format!("host{i}.ledger.bench.example.com");
    let revoked = is_revoked(plan, i);
    LedgerRecord {
        state: if revoked {
            RecordState::Revoked
        } else {
            RecordState::Issued
        },
        intent: Intent {
            certifier: certifier.to_string(),
            ra: ra.to_string(),
            request_id: Some(format!("ledger-{i}")),
            tbs_sha256: sha256_of("tbs", i),
            profile: PROFILE.to_string(),
            created,
            approval: None,
            instance: String::new(),
            // One key per certificate, as subscribers would have it.
            spki_sha256: Some(sha256_of("spki", i)),
        },
        certificate_der: Some(der.to_vec()),
        // The profile's 199 days.
        not_after: Some(created + 199 * 86_400),
        issued_at: Some(created),
        revoked_at: revoked.then_some(created + 3_600),
        revocation_reason: revoked.then_some(REASONS[(i % REASONS.len() as u64) as usize]),
        revoked_by: revoked.then(|| ra.to_string()),
        abandoned_reason: None,
        summary: Some(Summary {
            subject: format!("CN={host}"),
            dns: vec![host],
            emails: Vec::new(),
            not_before: created,
        }),
    }
}

/// Writes the ledger of `plan` into a new index at `path`.
fn build_index(path: &Path, certifier: &str, der: &[u8], plan: &Plan) -> Result<()> {
    let index = Index::open(path)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // One record a second, ending a day ago, so every revocation (an hour
    // after issuance) is in the past.
    let first = i64::try_from(now - plan.records - 86_400)?;
    let mut i = 0;
    while i < plan.records {
        let end = (i + BATCH).min(plan.records);
        let mut w = index.write()?;
        for k in i..end {
            let rec = record(plan, certifier, der, k, first + k as i64);
            let serial = serial(k)?;
            w.import_record(&serial, &rec)?;
            let entry = IdempotencyEntry {
                body_sha256: sha256_of("body", k),
                serial,
            };
            let request_id = rec.intent.request_id.as_deref().unwrap_or_default();
            w.import_idempotency(&rec.intent.ra, request_id, &entry)?;
        }
        if end == plan.records {
            // The audit log does not exist yet: the index reflects none of
            // it, and certd replays nothing.
            w.set_checkpoint(&Checkpoint {
                seq: 0,
                hash: GENESIS_PREV.to_string(),
                offset: 0,
            })?;
        }
        // Durable per batch, so a page written once is never rewritten by a
        // later batch only to be freed (and the file stays compact).
        w.commit(true)?;
        i = end;
        if i % (BATCH * 5) == 0 || i == plan.records {
            eprintln!("bench: ledger: {i}/{} records", plan.records);
        }
    }
    Ok(())
}

/// The state directory with the ledger of `plan` for `certifier`, under
/// `root`: taken from an earlier run when one built it, else built (with
/// `der()` as every record's certificate).
pub fn state_for(
    root: &Path,
    certifier: &str,
    plan: &Plan,
    der: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Built> {
    let name = format!("ledger-{}-{}", plan.records, plan.revoked);
    let dir = root.join(&name);
    let marker = dir.join("built.json");
    let want = json!({"layout": CACHE_LAYOUT, "certifier": certifier, "records": plan.records, "revoked": plan.revoked});
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let found: Value = serde_json::from_str(&text).unwrap_or_default();
        let same = ["layout", "certifier", "records", "revoked"]
            .iter()
            .all(|k| found[k] == want[k]);
        if same && index_path(&dir.join("state")).is_file() {
            let build = Duration::from_secs_f64(found["build_seconds"].as_f64().unwrap_or(0.0));
            return Ok(Built {
                dir,
                build,
                cached: true,
            });
        }
    }
    // Built aside and renamed when complete: an interrupted build is never
    // taken for a cache.
    let building = root.join(format!("{name}.building"));
    for d in [&building, &dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    let state = building.join("state");
    std::fs::create_dir_all(&state)?;
    let der = der()?;
    eprintln!(
        "bench: building a ledger of {} records ({} revoked) in {}",
        plan.records,
        plan.revoked,
        dir.display()
    );
    let start = Instant::now();
    build_index(&index_path(&state), certifier, &der, plan)?;
    let build = start.elapsed();
    let mut done = want;
    done["build_seconds"] = json!(build.as_secs_f64());
    std::fs::write(building.join("built.json"), done.to_string())?;
    std::fs::rename(&building, &dir)?;
    Ok(Built {
        dir,
        build,
        cached: false,
    })
}

/// A certd configuration for the CA's certifier on `state_dir`, in `dir`:
/// the demo's, with its state directory replaced, and a CRL made at once
/// after a revocation (`coalesce_seconds = 0`), so that the time from a
/// revocation to its CRL is the time to make the CRL.
pub fn config_for(ca: &ApiCa, dir: &Path, state_dir: &Path, name: &str) -> Result<CertdConfig> {
    let demo = std::fs::read_to_string(&ca.config.path)?;
    let mut replaced = (false, false);
    let text: Vec<String> = demo
        .lines()
        .map(|l| {
            if l.starts_with("state_dir =") {
                replaced.0 = true;
                format!("state_dir = {:?}", state_dir.display().to_string())
            } else if l == "[crl]" {
                replaced.1 = true;
                "[crl]\ncoalesce_seconds = 0".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    if replaced != (true, true) {
        bail!(
            "{} has no state_dir line or no [crl] table to adapt",
            ca.config.path.display()
        );
    }
    // Beside the demo's configuration: the certifier's certificate is
    // named relative to it.
    let parent = ca.config.path.parent().unwrap_or(Path::new("."));
    let path = parent.join(format!("certd-bench-{name}.toml"));
    std::fs::write(&path, text.join("\n") + "\n")?;
    std::fs::create_dir_all(dir)?;
    Ok(CertdConfig {
        dir: dir.to_path_buf(),
        path,
        state_dir: state_dir.to_path_buf(),
        control_socket: ca.config.control_socket.clone(),
        log: dir.join("certd.log"),
    })
}

/// Starts certd on `config`, waiting for READY=1.
fn start(certd: &Path, config: &CertdConfig, ca: &ApiCa) -> CertdInstance {
    CertdInstance::start_on(
        certd,
        config,
        &ca.token,
        &[("CERTD_LOG", "warn".as_ref())],
        Some(&ca.api_socket),
    )
}

/// Starts certd [`STARTS`] times on `config`, stopping it in between;
/// returns the best time to READY and the last start, still running.
fn best_ready(certd: &Path, config: &CertdConfig, ca: &ApiCa) -> Result<(Duration, CertdInstance)> {
    let mut best = Duration::MAX;
    for n in 1..=STARTS {
        let mut instance = start(certd, config, ca);
        best = best.min(instance.ready_after());
        if n == STARTS {
            return Ok((best, instance));
        }
        stop(&mut instance)?;
    }
    unreachable!("STARTS is at least 1")
}

/// Stops certd with SIGTERM; an exit other than 0 is an error.
fn stop(instance: &mut CertdInstance) -> Result<()> {
    // certd sends READY=1 before it handles SIGTERM (a SIGTERM right after
    // READY kills it): the control socket answers only once it does.
    instance.status();
    let status = instance.terminate();
    if !status.success() {
        bail!("certd exited with {status} on SIGTERM\n{}", instance.log());
    }
    Ok(())
}

/// The audit log's length now, so entries written after it can be found.
pub fn log_len(config: &CertdConfig) -> u64 {
    std::fs::metadata(audit_path(&config.state_dir)).map_or(0, |m| m.len())
}

/// Waits for the first entry of kind `kind` at or after byte `from` of
/// the audit log; returns it and when it was seen. Fails if certd exits.
pub fn wait_entry(instance: &mut CertdInstance, from: u64, kind: &str) -> Result<(Value, Instant)> {
    let path = audit_path(&instance.config.state_dir);
    let deadline = Instant::now() + CRL_LIMIT;
    loop {
        let mut text = String::new();
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(from))?;
        f.read_to_string(&mut text)?;
        let seen = Instant::now();
        // Only complete lines: the last may be being written.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            let entry: Value = serde_json::from_str(line)
                .with_context(|| format!("an audit entry of {}", path.display()))?;
            if entry["kind"] == kind {
                return Ok((entry, seen));
            }
        }
        if !instance.is_running() {
            bail!("certd exited before it wrote {kind}\n{}", instance.log());
        }
        if Instant::now() > deadline {
            bail!("no {kind} in {} after {CRL_LIMIT:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The time of an audit entry (RFC 3339, by the daemon's clock).
fn entry_time(entry: &Value) -> Result<time::OffsetDateTime> {
    let text = entry["time"]
        .as_str()
        .context("an audit entry without time")?;
    Ok(time::OffsetDateTime::parse(
        text,
        &time::format_description::well_known::Rfc3339,
    )?)
}

/// Seconds from entry `a` to entry `b` by the daemon's clock.
fn between(a: &Value, b: &Value) -> Result<f64> {
    Ok((entry_time(b)? - entry_time(a)?).as_seconds_f64())
}

/// What a CRL, read back, holds.
struct CrlSeen {
    entries: usize,
    number: u64,
}

/// Decodes a CRL: its entries and its CRL number.
fn read_crl(der: &[u8]) -> Result<CrlSeen> {
    use x509_cert::crl::CertificateList;
    let crl = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
        .map_err(|e| anyhow!("the CRL does not decode: {e}"))?;
    let tbs = &crl.tbs_cert_list;
    let number = tbs
        .crl_extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
        .and_then(|e| x509_cert::ext::pkix::CrlNumber::from_der(e.extn_value.as_bytes()).ok())
        .map(|n| {
            n.0.as_bytes()
                .iter()
                .fold(0u64, |a, b| (a << 8) | u64::from(*b))
        })
        .context("the CRL has no CRL number")?;
    Ok(CrlSeen {
        entries: tbs.revoked_certificates.as_ref().map_or(0, Vec::len),
        number,
    })
}

/// Checks the CRL's signature with `openssl crl -CAfile` (the certifier's
/// certificate): an independent decoder and verifier.
fn openssl_verifies(crl: &Path, issuer: &Path) -> Result<()> {
    let out = run(tool("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(crl)
        .arg("-CAfile")
        .arg(issuer));
    let said = format!("{}{}", out.stdout, out.stderr);
    if !out.status.success() || !said.contains("verify OK") {
        bail!("openssl does not verify the CRL: {said}");
    }
    Ok(())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// What the large-ledger measurement found, for the summary.
pub struct Found {
    /// Best time to READY on an empty ledger.
    pub ready_empty: Duration,
    /// Best time to READY with the built ledger.
    pub ready_full: Duration,
    /// Seconds from a revocation to its CRL, and the CRL's entries and
    /// bytes.
    pub crl: Option<(f64, usize, usize)>,
}

/// Measures the certd at `certd` with the ledger of `plan` under `root`:
/// the time to READY next to that on an empty ledger, then (when the plan
/// revokes any) a CRL of every revocation: made, served over mTLS and read
/// back. Prints its section.
pub fn measure(
    certd: &Path,
    ca: &ApiCa,
    root: &Path,
    plan: &Plan,
    csr: &Csr,
    der: impl FnOnce() -> Result<Vec<u8>>,
    rt: &tokio::runtime::Runtime,
) -> Result<Found> {
    let certifier = &ca.certifiers[0].name;
    let built = state_for(root, certifier, plan, der)?;
    let state_dir = built.state_dir();
    let index_bytes = std::fs::metadata(index_path(&state_dir))?.len();
    let how = if built.cached {
        format!(
            "built in {:.1} s by an earlier run, kept in {}",
            built.build.as_secs_f64(),
            built.dir.display()
        )
    } else {
        format!(
            "built in {:.1} s ({:.0} records/s, {BATCH} per transaction)",
            built.build.as_secs_f64(),
            plan.records as f64 / built.build.as_secs_f64()
        )
    };
    println!(
        "  ledger of {} certificates ({} revoked) over {} RAs: index {:.0} MB on disk \
         ({:.0} bytes per record), {how}",
        plan.records,
        plan.revoked,
        RAS.len(),
        mb(index_bytes),
        index_bytes as f64 / plan.records as f64
    );

    let empty_dir = root.join("empty");
    if empty_dir.exists() {
        std::fs::remove_dir_all(&empty_dir)?;
    }
    let empty = config_for(ca, &empty_dir, &empty_dir.join("state"), "empty")?;
    let (ready_empty, mut instance) = best_ready(certd, &empty, ca)?;
    stop(&mut instance)?;
    drop(instance);

    let full = config_for(ca, &built.dir, &state_dir, "ledger")?;
    // The CRL a previous run left is read at start-up: without it, the
    // start measures the ledger alone (certd makes a new CRL at activation).
    let old_crl = state_dir.join("crl").join(format!("{certifier}.crl"));
    if old_crl.exists() {
        std::fs::remove_file(&old_crl)?;
    }
    let (ready_full, mut instance) = best_ready(certd, &full, ca)?;
    let pid = instance.pid();
    println!(
        "  time to READY (best of {STARTS}): empty ledger {:.3} s, {} certificates {:.3} s; \
         idle RSS with them {} (certifier locked)",
        ready_empty.as_secs_f64(),
        plan.records,
        ready_full.as_secs_f64(),
        mib(status_kib(pid, "VmRSS"))
    );
    let mut found = Found {
        ready_empty,
        ready_full,
        crl: None,
    };
    if plan.revoked == 0 {
        stop(&mut instance)?;
        return Ok(found);
    }

    // The first CRL: certd's CRL task makes one once the certifier is active.
    let from = log_len(&full);
    let pin = ca.token.pin_file.to_string_lossy().into_owned();
    let out = instance.ctl(&["activate", certifier, "--pin-file", &pin]);
    if !out.status.success() {
        bail!("activating {certifier} failed\n{out}");
    }
    let activated = Instant::now();
    let (first, first_seen) = wait_entry(&mut instance, from, "crl_issued")?;
    let first_wall = first_seen - activated;
    let hwm_first = status_kib(pid, "VmHWM");

    // A revocation's CRL, timed by certd's own entries: from the
    // revocation to the CRL, with nothing waited for in between.
    let api = client(ca, "ra-demo")?;
    let run_id = crate::hex_id()?;
    let issued = rt.block_on(api.issue(&IssueRequest::new(
        format!("{run_id}-crl"),
        PROFILE,
        csr.pem.as_str(),
    )))?;
    let from = log_len(&full);
    rt.block_on(api.revoke(&issued.serial, "superseded"))?;
    let (revoked, _) = wait_entry(&mut instance, from, "revoked")?;
    let (numbered, _) = wait_entry(&mut instance, from, "crl_number_reserved")?;
    let (made, _) = wait_entry(&mut instance, from, "crl_issued")?;
    let generation = between(&revoked, &made)?;
    let reading = between(&revoked, &numbered)?;
    let signing = between(&numbered, &made)?;
    let hwm = status_kib(pid, "VmHWM");

    // Served: the CRL just made, as a relying party's fetch gets it.
    let mut fetches = Vec::new();
    let mut der = Vec::new();
    for _ in 0..STARTS {
        let t0 = Instant::now();
        der = rt.block_on(api.crl(certifier))?;
        fetches.push(t0.elapsed());
    }
    let best_fetch = fetches.iter().min().copied().unwrap_or_default();
    let seen = read_crl(&der)?;
    let status = instance.status();
    let revoked_count = status["certifiers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == certifier.as_str()))
        .and_then(|c| c["certificates_revoked"].as_u64())
        .context("certd status shows no revocation count")?;
    let crl_file = built.dir.join("served.crl");
    std::fs::write(&crl_file, &der)?;
    openssl_verifies(&crl_file, &ca.certifiers[0].certificate)?;
    if seen.entries as u64 != revoked_count
        || Some(seen.number) != made["detail"]["crl_number"].as_u64()
    {
        bail!(
            "the served CRL (number {}, {} entries) is not the one made (number {}) of every \
             revocation ({revoked_count})",
            seen.number,
            seen.entries,
            made["detail"]["crl_number"]
        );
    }
    let bytes = der.len();
    println!(
        "  CRL of {} entries ({} of them revoked through the API, by this run and any earlier \
         one on this ledger), {:.1} MB ({:.1} bytes/entry), number {}; decoded and counted, \
         signature verified by openssl:",
        seen.entries,
        seen.entries as u64 - plan.revoked,
        mb(bytes as u64),
        bytes as f64 / seen.entries as f64,
        seen.number
    );
    println!(
        "    made after a revocation   {generation:>8.2} s  (certd's clock: reading the \
         revocations {reading:.2} s, numbering, encoding, signing, storing {signing:.2} s)"
    );
    println!(
        "    first after activation    {:>8.2} s  (wall, from the activation's answer; the CRL \
         task is woken by the activation; a cold index), {} entries",
        first_wall.as_secs_f64(),
        first["detail"]["entries"]
    );
    println!(
        "    served over mTLS          {:>8.3} s  best of {STARTS} ({:.0} MB/s; first {:.3} s)",
        best_fetch.as_secs_f64(),
        mb(bytes as u64) / best_fetch.as_secs_f64(),
        fetches[0].as_secs_f64()
    );
    println!(
        "    certd peak RSS (VmHWM)    {:>10}  after the first CRL; {} after the second",
        mib(hwm_first),
        mib(hwm)
    );
    // A line for judging when one CRL is too big to fetch: the entries
    // that fit in 10 MB at this entry size.
    println!(
        "    entries per 10 MB of CRL  {:>10.0}",
        10e6 / (bytes as f64 / seen.entries as f64)
    );
    found.crl = Some((generation, seen.entries, bytes));

    // Starting again with the CRL on disk (certd reads it back at start),
    // and after a crash (the index was not closed).
    stop(&mut instance)?;
    drop(instance);
    let mut instance = start(certd, &full, ca);
    let with_crl = instance.ready_after();
    instance.kill();
    instance.restart();
    let after_crash = instance.ready_after();
    stop(&mut instance)?;
    println!(
        "  time to READY with {} certificates and that CRL on disk {:.3} s; after a crash \
         (SIGKILL, the index not closed) {:.3} s",
        plan.records,
        with_crl.as_secs_f64(),
        after_crash.as_secs_f64()
    );
    Ok(found)
}
