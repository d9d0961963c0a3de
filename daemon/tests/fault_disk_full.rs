//! A full disk: certd's state directory (ledger, audit log, CRLs) sits on a
//! small tmpfs that the test fills up. Issuance is refused up front with
//! `storage_full` (507, the free-space guard `daemon.min_free_mib`);
//! revocation goes on until writes really fail, and is then refused with
//! `ledger_unavailable` or `audit_unavailable` (503, naming the cause). The
//! daemon keeps answering, nothing is corrupted (the ledger, refused every
//! write by sled after an I/O error, is reopened), and issuance and
//! revocation resume by themselves once space is freed. Afterwards every certificate a client received is
//! in the ledger, the audit chain verifies, and a restart finds the same.
//! A second test turns the guard off, so that issuance itself runs into
//! ENOSPC in the ledger or the audit log.
//!
//! Mounting a tmpfs needs root (as `./test` runs in CI); without it the
//! test fails and says so rather than pretending.
#![forbid(unsafe_code)]

use certd_api::{ClientError, IssueRequest};
use certd_e2e::api::{make_csr, make_key, normalize_serial, ApiCaBuilder, ApiDaemon, KeyAlg};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CERTD: &str = env!("CARGO_BIN_EXE_certd");
const TMPFS_SIZE: &str = "8m";
/// A bound that only catches a hang: certd retries storage about once a
/// second and settles unaudited revocations within seconds.
const RESUME_LIMIT: Duration = Duration::from_secs(120);

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE},mode=0700")])
            .arg("tmpfs")
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test needs root, as ./test has in CI): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until writes fail; returns the
/// bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // Small writes, to take the last partial block too.
    while f.write(&block[..512]).is_ok_and(|n| n > 0) {
        written += 512;
    }
    written
}

fn request(csr: &str, id: &str) -> IssueRequest {
    IssueRequest::new(id, "tls-server", csr)
}

/// A CA whose state directory is a fresh tmpfs, with the free-space
/// guard at `min_free_mib`, started.
fn ca_on_tmpfs(dir: &Path, min_free_mib: u64) -> (ApiDaemon, Tmpfs) {
    let ca = ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml("[[profile]]\nname = \"tls-server\"\nkind = \"tls-server\"\nmax_validity_days = 90\n")
        .ra(
            "ra-main",
            "certifiers = [\"ca\"]\nprofiles = [\"tls-server\"]\ndns_subtrees = [\"example.com\"]\nmay_revoke = true",
        )
        .build();
    ca.edit_config(
        "[daemon]\n",
        &format!("[daemon]\nmin_free_mib = {min_free_mib}\n"),
    );
    let tmpfs = Tmpfs::mount(&ca.config.state_dir);
    (ca.start(), tmpfs)
}

#[test]
fn full_disk_refuses_cleanly_and_service_resumes_when_space_is_freed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, _tmpfs) = ca_on_tmpfs(tmp.path(), 2);
    let state = d.ca.config.state_dir.clone();
    let client = d.client("ra-main");
    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/CN=www.example.com", &[]).pem;
    let mut received: BTreeMap<String, String> = BTreeMap::new();
    let issue = |received: &mut BTreeMap<String, String>, id: &str| -> Result<(), ClientError> {
        let r = d.block_on(client.issue(&request(&csr, id)))?;
        received.insert(normalize_serial(&r.serial), r.certificate);
        Ok(())
    };
    for i in 0..20 {
        issue(&mut received, &format!("before-{i}")).expect("issue before the disk fills");
    }

    let filler = state.join("filler");
    let filled = fill(&filler);
    // Issuance is refused by the free-space guard, before any write.
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut message = String::new();
    for i in 0..50 {
        match issue(&mut received, &format!("full-{i}")) {
            Ok(()) => panic!("issued with the disk full"),
            Err(ClientError::Api(e)) => {
                *refusals.entry(e.code.as_str().to_string()).or_default() += 1;
                message = e.message.clone();
            }
            Err(e) => panic!("certd stopped answering while the disk is full: {e}"),
        }
    }
    assert_eq!(
        refusals.get("storage_full").copied(),
        Some(50),
        "issuance with the disk full: {refusals:?}"
    );
    assert!(message.contains("min_free_mib"), "{message}");
    // Revocation is not paused: it goes on until writes really fail, and
    // then is refused cleanly.
    let to_revoke: Vec<String> = received.keys().take(10).cloned().collect();
    let mut revoke_outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut revoked_now = Vec::new();
    for serial in &to_revoke {
        match d.block_on(client.revoke(serial, "superseded")) {
            Ok(_) => {
                revoked_now.push(serial.clone());
                *revoke_outcomes.entry("ok".into()).or_default() += 1;
            }
            Err(ClientError::Api(e)) => {
                *revoke_outcomes
                    .entry(e.code.as_str().to_string())
                    .or_default() += 1
            }
            Err(e) => panic!("certd stopped answering while the disk is full: {e}"),
        }
    }
    for code in revoke_outcomes.keys() {
        assert!(
            ["ok", "ledger_unavailable", "audit_unavailable"].contains(&code.as_str()),
            "revocation with the disk full: {revoke_outcomes:?}"
        );
    }
    // Writes did fail (the disk is full, not just under the guard).
    assert!(
        revoke_outcomes.get("ok").copied().unwrap_or(0) < to_revoke.len(),
        "every revocation went through with the disk full: {revoke_outcomes:?}"
    );
    // The daemon still answers reads while full.
    let health = d.block_on(client.health()).expect("health while full");
    let some = received.keys().next().cloned().expect("a serial");
    d.block_on(client.get(&some)).expect("GET while full");
    println!(
        "fault_disk_full: filled {filled} bytes; 50 issuances refused {refusals:?} ({message}); \
         10 revocations: {revoke_outcomes:?}; health {}",
        health.status
    );

    // Space comes back: issuance resumes without a restart.
    std::fs::remove_file(&filler).expect("free space");
    let freed = Instant::now();
    let mut attempt = 0;
    let resumed = loop {
        attempt += 1;
        match issue(&mut received, &format!("after-{attempt}")) {
            Ok(()) => break freed.elapsed(),
            Err(e) => assert!(
                freed.elapsed() < RESUME_LIMIT,
                "issuance did not resume after space was freed: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for i in 0..20 {
        issue(&mut received, &format!("later-{i}")).expect("issue after the disk was freed");
    }
    println!("fault_disk_full: issuance resumed {resumed:?} after space was freed");
    // Revocations refused while full go through now (or were recorded
    // after all, before their audit entry failed).
    for serial in &to_revoke {
        match d.block_on(client.revoke(serial, "superseded")) {
            Ok(_) => {}
            Err(ClientError::Api(e)) if e.code.as_str() == "already_revoked" => {}
            Err(e) => panic!("revoking {serial} after space was freed: {e}"),
        }
    }

    // Every revocation reaches the audit log, including those whose entry
    // could not be written while the disk was full (certd writes them
    // itself a few seconds later).
    let audit_log = state.join("audit.log");
    let unaudited = |to_revoke: &[String]| -> Vec<String> {
        let text = std::fs::read_to_string(&audit_log).expect("audit log");
        let audited: std::collections::HashSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == "revoked")
            // Also the entries certd writes later: under the RA that
            // revoked, not under certd's own name.
            .inspect(|e| assert_eq!(e["actor"], "ra-main", "{e}"))
            .filter_map(|e| e["detail"]["serial"].as_str().map(normalize_serial))
            .collect();
        to_revoke
            .iter()
            .filter(|s| !audited.contains(*s))
            .cloned()
            .collect()
    };
    certd_e2e::poll_until(
        RESUME_LIMIT,
        "an audit entry for every revocation",
        || unaudited(&to_revoke).is_empty().then_some(()),
        || {
            format!(
                "revocations without an audit entry: {:?}",
                unaudited(&to_revoke)
            )
        },
    );
    println!(
        "fault_disk_full: every revocation audited ({:?} after space was freed)",
        freed.elapsed()
    );

    // Nothing lost or corrupted, now and after a restart.
    let check = |d: &certd_e2e::api::ApiDaemon| {
        let client = d.client("ra-main");
        for (serial, pem) in &received {
            let info = d
                .block_on(client.get(serial))
                .unwrap_or_else(|e| panic!("received {serial} is not in the ledger: {e}"));
            assert_eq!(&info.certificate, pem, "{serial} changed in the ledger");
            let revoked = info.status == certd_api::CertStatus::Revoked;
            assert_eq!(
                revoked,
                to_revoke.contains(serial),
                "{serial}: {:?}",
                info.status
            );
        }
        let listed = d
            .block_on(client.list("limit=1000"))
            .expect("list")
            .items
            .len();
        assert_eq!(
            listed,
            received.len(),
            "the ledger holds exactly what was answered"
        );
        d.instance.ctl(&["verify-audit"]).assert_success();
    };
    check(&d);
    let mut d = d;
    let stopped = d.instance.terminate();
    assert!(
        stopped.success(),
        "certd stops cleanly after a full disk: {stopped}\n{}",
        d.log()
    );
    let ca = d.ca;
    let d = ca.start();
    check(&d);
    println!(
        "fault_disk_full: {} certificates, all in the ledger before and after a restart; audit verifies",
        received.len()
    );
}

/// Without the free-space guard (`min_free_mib = 0`) issuance runs into
/// the full disk itself: sled's flush or the audit log's append fails with
/// ENOSPC in the middle of the pipeline. Each such request is refused with
/// `ledger_unavailable` or `audit_unavailable`; a certificate that was
/// signed and audited but could not be stored is never released, and is
/// completed into the ledger later from its audit entry. Nothing handed out
/// is lost, no serial is used twice, and issuance resumes once space is
/// freed.
#[test]
fn issuance_running_into_enospc_is_refused_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, _tmpfs) = ca_on_tmpfs(tmp.path(), 0);
    let state = d.ca.config.state_dir.clone();
    let client = d.client("ra-main");
    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/CN=www.example.com", &[]).pem;
    let mut received: BTreeMap<String, String> = BTreeMap::new();
    let mut issue = |id: &str| -> Result<(), ClientError> {
        let r = d.block_on(client.issue(&request(&csr, id)))?;
        let serial = normalize_serial(&r.serial);
        assert!(
            received.insert(serial.clone(), r.certificate).is_none(),
            "serial {serial} handed out twice"
        );
        Ok(())
    };
    for i in 0..20 {
        issue(&format!("before-{i}")).expect("issue before the disk fills");
    }

    let filler = state.join("filler");
    let filled = fill(&filler);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut messages = BTreeMap::new();
    for i in 0..50 {
        let code = match issue(&format!("full-{i}")) {
            Ok(()) => "ok".to_string(),
            Err(ClientError::Api(e)) => {
                messages.insert(e.code.as_str().to_string(), e.message.clone());
                e.code.as_str().to_string()
            }
            Err(e) => panic!("certd stopped answering while the disk is full: {e}"),
        };
        *outcomes.entry(code).or_default() += 1;
    }
    println!(
        "fault_disk_full (no guard): filled {filled} bytes; 50 issuances: {outcomes:?}; {messages:?}"
    );
    for code in outcomes.keys() {
        assert!(
            ["ok", "ledger_unavailable", "audit_unavailable"].contains(&code.as_str()),
            "issuance into a full disk: {outcomes:?}"
        );
    }
    assert!(
        outcomes.get("ok").copied().unwrap_or(0) < 50,
        "issuance never ran into the full disk: {outcomes:?}"
    );
    for message in messages.values() {
        assert!(
            message.to_lowercase().contains("no space left on device"),
            "the refusal names the cause: {message}"
        );
    }
    d.block_on(client.health()).expect("health while full");

    std::fs::remove_file(&filler).expect("free space");
    let freed = Instant::now();
    let mut attempt = 0;
    let resumed = loop {
        attempt += 1;
        if issue(&format!("after-{attempt}")).is_ok() {
            break freed.elapsed();
        }
        assert!(
            freed.elapsed() < RESUME_LIMIT,
            "issuance did not resume after space was freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for i in 0..20 {
        issue(&format!("later-{i}")).expect("issue after the disk was freed");
    }

    // Every certificate handed out is in the ledger unchanged; the ledger
    // holds nothing else but certificates that were audited and never
    // released; all verify against the certifier; the chain verifies.
    let audited: std::collections::HashSet<String> =
        std::fs::read_to_string(state.join("audit.log"))
            .expect("audit log")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == "issued")
            .filter_map(|e| e["detail"]["serial"].as_str().map(normalize_serial))
            .collect();
    let check = |d: &ApiDaemon| -> std::collections::BTreeSet<String> {
        let client = d.client("ra-main");
        for (serial, pem) in &received {
            let info = d
                .block_on(client.get(serial))
                .unwrap_or_else(|e| panic!("received {serial} is not in the ledger: {e}"));
            assert_eq!(&info.certificate, pem, "{serial} changed in the ledger");
        }
        let listed = d.block_on(client.list("limit=1000")).expect("list").items;
        let ca_pem = d.ca.certifier_pem("ca").to_path_buf();
        for item in &listed {
            let serial = normalize_serial(&item.serial);
            assert!(
                received.contains_key(&serial) || audited.contains(&serial),
                "{serial} is in the ledger but was neither answered nor audited"
            );
            let pem_file = tmp.path().join("check.pem");
            std::fs::write(&pem_file, &item.certificate).expect("write");
            certd_e2e::api::openssl(&[&"verify", &"-CAfile", &ca_pem, &pem_file]).assert_success();
        }
        d.instance.ctl(&["verify-audit"]).assert_success();
        listed
            .iter()
            .map(|item| normalize_serial(&item.serial))
            .collect()
    };
    let before_restart = check(&d);
    let mut d = d;
    let stopped = d.instance.terminate();
    assert!(
        stopped.success(),
        "certd stops cleanly after a full disk: {stopped}\n{}",
        d.log()
    );
    let ca = d.ca;
    let d = ca.start();
    let after_restart = check(&d);
    // A restart completes every issuance that was audited but not stored:
    // the ledger is then exactly what the audit log says was issued, which
    // holds every certificate answered.
    assert!(
        before_restart.is_subset(&after_restart),
        "a restart lost {:?}",
        before_restart
            .difference(&after_restart)
            .collect::<Vec<_>>()
    );
    let audited_set: std::collections::BTreeSet<String> = audited.iter().cloned().collect();
    assert_eq!(
        after_restart, audited_set,
        "the ledger after a restart is what was audited as issued"
    );
    assert!(received.keys().all(|s| audited_set.contains(s)));
    println!(
        "fault_disk_full (no guard): issuance resumed {resumed:?} after space was freed; {} \
         certificates answered, {} in the ledger after a restart (the rest audited, never \
         released); audit verifies",
        received.len(),
        after_restart.len()
    );
}
