//! `certd backup` while certd issues from several connections at once, and
//! `certd restore` into a fresh state directory: every certificate
//! acknowledged before the backup was asked for is served again by the
//! restored daemon, byte for byte, and its audit chain verifies. Restore
//! refuses a running daemon's state, a state directory that holds
//! anything, a damaged archive and a rewritten journal, and leaves the
//! state directory as it found it.
#![forbid(unsafe_code)]

use certd_e2e::api::{
    make_csr, make_key, tls_server_grant, tls_server_request, ApiCaBuilder, ApiDaemon, KeyAlg,
    API_DEADLINE, TLS_SERVER_PROFILE,
};
use certd_e2e::poll_until;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

/// Certificates acknowledged to the issuing tasks: (serial, PEM), in the
/// order the answers arrived.
type Acked = Arc<Mutex<Vec<(String, String)>>>;

fn start(dir: &Path) -> ApiDaemon {
    std::fs::create_dir_all(dir).expect("the CA's directory");
    let d = ApiCaBuilder::new(dir, Path::new(CERTD))
        .certifier("ca", "p256")
        .toml(TLS_SERVER_PROFILE)
        .ra("ra-main", &tls_server_grant("may_revoke = true"))
        .build()
        .start();
    d.activate("ca");
    d
}

/// Waits for a signed checkpoint that covers the last revocation (certd
/// writes one after the CRL a revocation brings).
fn wait_for_checkpoint(d: &ApiDaemon) {
    let revoked = d.audit_of("revoked");
    let last = revoked.last().expect("a revocation")["seq"]
        .as_u64()
        .expect("seq");
    poll_until(
        API_DEADLINE,
        "a signed audit checkpoint after the revocation",
        || {
            d.audit_of("audit_checkpoint")
                .iter()
                .any(|c| c["detail"]["signed_seq"].as_u64() >= Some(last))
                .then_some(())
        },
        || format!("{:#?}\n{}", d.audit_of("audit_checkpoint"), d.log()),
    );
}

fn acked_len(acked: &Acked) -> usize {
    acked.lock().expect("acked").len()
}

/// A copy of `d`'s configuration with another state directory.
fn config_with_state(d: &ApiDaemon, state: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&d.ca.config.path).expect("config");
    let old = d.ca.config.state_dir.display().to_string();
    assert!(text.contains(&old), "the state_dir is in the config");
    let path = d.ca.config.dir.join(name);
    std::fs::write(&path, text.replace(&old, &state.display().to_string())).expect("write config");
    path
}

fn certd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> certd_e2e::process::CmdOutput {
    let mut command = std::process::Command::new(CERTD);
    for a in args {
        command.arg(a);
    }
    certd_e2e::process::run(&mut command)
}

#[test]
fn a_backup_taken_during_issuance_restores_every_acknowledged_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ca");
    let mut d = start(&dir);
    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/", &[]).pem;

    // A revocation (and the CRL and signed checkpoint it brings) before.
    let client = d.client("ra-main");
    let first = d
        .block_on(client.issue(&tls_server_request(&csr, "first.example.com")))
        .expect("first issuance");
    d.block_on(client.revoke(&first.serial, "superseded"))
        .expect("revoke the first");
    wait_for_checkpoint(&d);

    // Four connections issue until told to stop.
    let acked: Acked = Arc::new(Mutex::new(vec![(first.serial.clone(), first.certificate)]));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (client, acked, stop, csr) = (
                d.client("ra-main"),
                acked.clone(),
                stop.clone(),
                csr.clone(),
            );
            rt.spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    let host = format!("t{t}-{i}.example.com");
                    let resp = client
                        .issue(&tls_server_request(&csr, &host))
                        .await
                        .unwrap_or_else(|e| panic!("issue {host}: {e}"));
                    acked
                        .lock()
                        .expect("acked")
                        .push((resp.serial, resp.certificate));
                    i += 1;
                }
            })
        })
        .collect();
    poll_until(
        API_DEADLINE,
        "20 certificates issued",
        || (acked_len(&acked) >= 20).then_some(()),
        || d.log(),
    );

    // Everything acknowledged so far must be in the backup; issuance goes on.
    let before: Vec<(String, String)> = acked.lock().expect("acked").clone();
    let backup = tmp.path().join("backups/certd.tar");
    std::fs::create_dir_all(backup.parent().expect("parent")).expect("mkdir");
    let out = d.ctl(&["backup", "--out", &backup.display().to_string()]);
    out.assert_success();
    let during = acked_len(&acked) - before.len();
    poll_until(
        API_DEADLINE,
        "10 more certificates issued after the backup",
        || (acked_len(&acked) >= before.len() + during + 10).then_some(()),
        || d.log(),
    );
    stop.store(true, Ordering::Release);
    for task in tasks {
        rt.block_on(task).expect("an issuing task");
    }
    let total = acked_len(&acked);
    println!(
        "backup: {} acknowledged before, {during} while it ran, {} after; {}",
        before.len(),
        total - before.len() - during,
        out.stdout.trim()
    );
    assert!(
        out.stdout.contains("the running daemon's backup point"),
        "{}",
        out.stdout
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&backup)
            .expect("backup")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // Never overwritten.
    let again = d.ctl(&["backup", "--out", &backup.display().to_string()]);
    assert_ne!(again.code(), Some(0), "{again:?}");
    assert!(
        again.stderr.contains("never overwritten"),
        "{}",
        again.stderr
    );
    let points = d.audit_of("backup_point");
    assert_eq!(points.len(), 1, "one backup point: {points:#?}");

    // The disaster: the state directory is gone. Restore into a new one.
    assert!(d.instance.terminate().success());
    let state = d.ca.config.state_dir.clone();
    std::fs::rename(&state, dir.join("state.lost")).expect("move the state aside");
    let restored = certd(&[
        &"restore",
        &"--config",
        &d.ca.config.path,
        &"--from",
        &backup,
    ]);
    restored.assert_success();
    println!("restore: {}", restored.stdout.trim());
    d.instance.restart();
    d.activate("ca");
    let verify = d.verify_audit();
    assert!(verify.stdout.contains("chain intact"), "{}", verify.stdout);
    let restored_entries = d.audit_of("state_restored");
    assert_eq!(restored_entries.len(), 1, "{restored_entries:#?}");
    let count = restored_entries[0]["detail"]["certificates"]
        .as_u64()
        .expect("certificates");
    assert!(
        count as usize >= before.len() && count as usize <= total,
        "the backup holds {count}: at least the {} acknowledged before it, at most all {total}",
        before.len()
    );

    // Every certificate acknowledged before the backup, served again as it was.
    let client = d.client("ra-main");
    for (serial, pem) in &before {
        let info = d
            .block_on(client.get(serial))
            .unwrap_or_else(|e| panic!("{serial} after the restore: {e}\n{}", d.log()));
        assert_eq!(info.certificate.trim(), pem.trim(), "{serial}");
    }
    let revoked = d.block_on(client.get(&first.serial)).expect("first");
    assert_eq!(revoked.revocation_reason.as_deref(), Some("superseded"));
    // And the restored CA issues on.
    let next = d
        .block_on(client.issue(&tls_server_request(&csr, "after-restore.example.com")))
        .expect("issue after the restore");
    assert!(before.iter().all(|(s, _)| *s != next.serial));
}

#[test]
fn restore_refuses_live_or_filled_state_and_damaged_or_rewritten_backups() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ca");
    let mut d = start(&dir);
    let key = make_key(tmp.path(), "sub", KeyAlg::P256);
    let csr = make_csr(tmp.path(), "sub", &key, "/", &[]).pem;
    let client = d.client("ra-main");
    for i in 0..3 {
        let host = format!("h{i}.example.com");
        d.block_on(client.issue(&tls_server_request(&csr, &host)))
            .expect("issue");
    }
    let issued = d
        .block_on(client.issue(&tls_server_request(&csr, "revoked.example.com")))
        .expect("issue");
    d.block_on(client.revoke(&issued.serial, "superseded"))
        .expect("revoke");
    wait_for_checkpoint(&d);
    let backup = tmp.path().join("certd.tar");
    d.ctl(&["backup", "--out", &backup.display().to_string()])
        .assert_success();

    // Into the running daemon's own state directory.
    let live = certd(&[
        &"restore",
        &"--config",
        &d.ca.config.path,
        &"--from",
        &backup,
    ]);
    assert_ne!(live.code(), Some(0));
    assert!(live.stderr.contains("state_in_use"), "{}", live.stderr);

    // Into a state directory that holds something (a stopped daemon's).
    assert!(d.instance.terminate().success());
    let filled = certd(&[
        &"restore",
        &"--config",
        &d.ca.config.path,
        &"--from",
        &backup,
    ]);
    assert_ne!(filled.code(), Some(0));
    assert!(
        filled.stderr.contains("state_not_empty"),
        "{}",
        filled.stderr
    );
    // A backup of the stopped daemon is taken too (from the whole journal).
    let stopped = tmp.path().join("stopped.tar");
    let out = d.ctl(&["backup", "--out", &stopped.display().to_string()]);
    out.assert_success();
    assert!(
        out.stdout.contains("the daemon was stopped"),
        "{}",
        out.stdout
    );

    let fresh = tmp.path().join("fresh-state");
    let config = config_with_state(&d, &fresh, "fresh.toml");
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    certd_e2e::process::run(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(&backup)
            .arg("-C")
            .arg(&unpacked),
    )
    .assert_success();
    let repack = |name: &str| -> PathBuf {
        let path = tmp.path().join(name);
        certd_e2e::process::run(
            std::process::Command::new("tar")
                .arg("-cf")
                .arg(&path)
                .arg("-C")
                .arg(&unpacked)
                .args(["manifest.json", "audit.log", "audit.anchor"]),
        )
        .assert_success();
        path
    };
    let log_path = unpacked.join("audit.log");
    let original_log = std::fs::read_to_string(&log_path).expect("log");
    let manifest_path = unpacked.join("manifest.json");
    let original_manifest = std::fs::read_to_string(&manifest_path).expect("manifest");

    // Damaged: one entry's text changed, the manifest not.
    let damaged_log = original_log.replacen("revoked.example.com", "revokeX.example.com", 1);
    assert_ne!(damaged_log, original_log);
    std::fs::write(&log_path, &damaged_log).expect("write");
    let damaged = repack("damaged.tar");
    let out = certd(&[&"restore", &"--config", &config, &"--from", &damaged]);
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("backup_invalid"), "{}", out.stderr);
    assert!(out.stderr.contains("SHA-256"), "{}", out.stderr);

    // Rewritten: a revocation removed, the chain and the manifest computed
    // again (what an attacker with the file but not the key could do): the
    // signed checkpoint gives it away.
    let mut records: Vec<certd::audit::AuditRecord> = original_log
        .lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .collect();
    let at = records
        .iter()
        .position(|r| r.kind == "revoked")
        .expect("a revocation");
    records.remove(at);
    let mut prev = certd::audit::GENESIS_PREV.to_string();
    let mut text = String::new();
    for (i, r) in records.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
        r.prev = prev.clone();
        r.hash = r.compute_hash().expect("hash");
        prev = r.hash.clone();
        text.push_str(&serde_json::to_string(r).expect("json"));
        text.push('\n');
    }
    std::fs::write(&log_path, &text).expect("write");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&original_manifest).expect("manifest");
    use sha2::Digest;
    manifest["audit_bytes"] = text.len().into();
    manifest["audit_sha256"] = hex::encode(sha2::Sha256::digest(text.as_bytes())).into();
    manifest["last_seq"] = records.len().into();
    manifest["last_hash"] = prev.into();
    manifest["revocations"] = (manifest["revocations"].as_u64().expect("revocations") - 1).into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).expect("json")).expect("write");
    let rewritten = repack("rewritten.tar");
    let out = certd(&[&"restore", &"--config", &config, &"--from", &rewritten]);
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("backup_unverified"), "{}", out.stderr);

    // Nothing was left behind by the refusals.
    let left: Vec<_> = std::fs::read_dir(&fresh)
        .expect("fresh state exists")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left in the state directory: {left:?}");
    let staging: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".certd-restore-"))
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");

    // The untouched backups restore.
    let good = certd(&[&"restore", &"--config", &config, &"--from", &backup]);
    good.assert_success();
    assert!(
        good.stdout.contains("4 certificates checked"),
        "{}",
        good.stdout
    );
    let verify = certd(&[&"verify-audit", &"--config", &config]);
    verify.assert_success();
}
