//! End-to-end tests of the running daemon: `certd run` against a real
//! SoftHSM token, driven through its control socket with the `certd`
//! console commands; status, activation, the audit log, systemd
//! notification and restarts.
#![forbid(unsafe_code)]

use certd_e2e::certd::DAEMON_DEADLINE;
use certd_e2e::{
    run, write_secret, CertdConfig, CertdInstance, CertifierSpec, ChildGuard, CmdOutput, Token,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

/// A token holding two certifier keys, `root` and `issuing`, each with a
/// self-signed certificate made by `certd init-ca`.
struct Keys {
    dir: TempDir,
    token: Token,
    root_pem: PathBuf,
    issuing_pem: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let token = Token::create(dir.path(), "daemon");
        let mut pems = Vec::new();
        for label in ["root", "issuing"] {
            let pem = dir.path().join(format!("{label}.pem"));
            run(token
                .command(CERTD)
                .args([
                    "init-ca",
                    "--token-label",
                    &token.label,
                    "--key-label",
                    label,
                ])
                .arg("--pin-file")
                .arg(&token.pin_file)
                .args(["--cn", &format!("e2e {label}"), "--cert-out"])
                .arg(&pem))
            .assert_success();
            pems.push(pem);
        }
        let issuing_pem = pems.pop().expect("two certificates");
        let root_pem = pems.pop().expect("two certificates");
        Keys {
            dir,
            token,
            root_pem,
            issuing_pem,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `root` (#1) and `issuing` (#2), both without a PIN file.
    fn specs(&self) -> Vec<CertifierSpec> {
        vec![
            CertifierSpec::new("root", &self.token, "root", &self.root_pem),
            CertifierSpec::new("issuing", &self.token, "issuing", &self.issuing_pem),
        ]
    }

    fn config(&self, specs: &[CertifierSpec]) -> CertdConfig {
        CertdConfig::write(self.path(), &self.token.module, specs)
    }

    fn start(&self, config: &CertdConfig) -> CertdInstance {
        CertdInstance::start(Path::new(CERTD), config, &self.token, &[])
    }

    /// A PIN file holding a wrong PIN.
    fn wrong_pin(&self) -> PathBuf {
        let path = self.path().join("wrong.pin");
        if !path.exists() {
            write_secret(&path, &format!("{}-typo", self.token.pin));
        }
        path
    }
}

fn activate(d: &CertdInstance, certifier: &str, pin_file: &Path) -> CmdOutput {
    let pin = pin_file.to_str().expect("a UTF-8 path");
    d.ctl(&["activate", certifier, "--pin-file", pin])
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}")))
        .collect()
}

#[test]
fn status_json_shows_both_certifiers_locked_with_every_field() {
    let keys = Keys::new();
    let d = keys.start(&keys.config(&keys.specs()));
    let status = d.status();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status:#}");
    assert!(status["uptime_seconds"].is_u64(), "{status:#}");
    assert_eq!(status["pid"], d.pid(), "{status:#}");
    let certifiers = status["certifiers"].as_array().expect("a list");
    assert_eq!(certifiers.len(), 2, "{status:#}");
    for (i, (c, name)) in certifiers.iter().zip(["root", "issuing"]).enumerate() {
        assert_eq!(c["number"], i + 1, "{c:#}");
        assert_eq!(c["name"], name, "{c:#}");
        assert!(
            c["subject"]
                .as_str()
                .is_some_and(|s| s.contains(&format!("CN=e2e {name}"))),
            "{c:#}"
        );
        assert_eq!(c["key_type"], "p256", "{c:#}");
        assert_eq!(c["key_label"], name, "{c:#}");
        assert_eq!(c["token_label"], "daemon", "{c:#}");
        assert_eq!(c["state"], "locked", "{c:#}");
        assert_eq!(c["certificates_issued"], 0, "{c:#}");
        assert!(c["last_serial"].is_null(), "{c:#}");
        // A locked certifier has signed no CRL yet: the field is there, empty.
        assert!(
            c.as_object().is_some_and(|o| o.contains_key("crl_number"))
                && c["crl_number"].is_null(),
            "{c:#}"
        );
        assert!(
            c["not_after"].as_str().is_some_and(|s| !s.is_empty()),
            "{c:#}"
        );
    }
    // Only the daemon's own user (and root) may reach the socket and state.
    assert_eq!(mode(&d.config.control_socket), 0o600);
    assert_eq!(mode(&d.config.state_dir), 0o700);
    assert_eq!(mode(&d.config.audit_log()), 0o600);
    let human = d.ctl(&["status"]);
    human.assert_success();
    assert!(human.stdout.contains("#1 root  LOCKED"), "{human}");
    assert!(human.stdout.contains("#2 issuing  LOCKED"), "{human}");
}

#[test]
fn activation_checks_the_pin_even_when_the_token_is_already_logged_in() {
    let keys = Keys::new();
    let d = keys.start(&keys.config(&keys.specs()));
    let (right, wrong) = (&keys.token.pin_file, &keys.wrong_pin());

    activate(&d, "1", wrong).assert_refused("pin_incorrect");
    assert_eq!(d.state_of("root"), "locked");
    activate(&d, "1", right).assert_success();
    assert_eq!(d.state_of("root"), "active");
    // Activating an active certifier still checks the PIN.
    activate(&d, "1", wrong).assert_refused("pin_incorrect");
    let again = activate(&d, "1", right);
    again.assert_success();
    assert!(again.stdout.contains("already active"), "{again}");
    assert_eq!(d.state_of("root"), "active");

    // The token is logged in now and would take any PIN: certd must still
    // refuse a wrong one for the second certifier on it.
    activate(&d, "2", wrong).assert_refused("pin_incorrect");
    assert_eq!(d.state_of("issuing"), "locked");
    assert_eq!(d.state_of("root"), "active");
    activate(&d, "2", right).assert_success();
    assert_eq!(d.state_of("issuing"), "active");

    d.ctl(&["deactivate", "1"]).assert_success();
    assert_eq!(d.state_of("root"), "locked");
    assert_eq!(d.state_of("issuing"), "active");
    activate(&d, "1", wrong).assert_refused("pin_incorrect");
    assert_eq!(d.state_of("root"), "locked");

    // With no certifier active the token checks the PIN itself again.
    d.ctl(&["deactivate", "2"]).assert_success();
    assert_eq!(d.state_of("issuing"), "locked");
    activate(&d, "2", wrong).assert_refused("pin_incorrect");
    activate(&d, "1", wrong).assert_refused("pin_incorrect");
    assert_eq!(d.state_of("root"), "locked");
    assert_eq!(d.state_of("issuing"), "locked");
}

#[test]
fn certifiers_are_chosen_by_name_or_number_and_unknown_ones_are_refused() {
    let keys = Keys::new();
    let d = keys.start(&keys.config(&keys.specs()));
    let pin = &keys.token.pin_file;

    let out = activate(&d, "issuing", pin);
    out.assert_success();
    assert!(out.stdout.contains("#2 issuing is active"), "{out}");
    assert_eq!(d.state_of("issuing"), "active");
    assert_eq!(d.state_of("root"), "locked");
    d.ctl(&["deactivate", "2"]).assert_success();
    assert_eq!(d.state_of("issuing"), "locked");

    activate(&d, "1", pin).assert_success();
    assert_eq!(d.state_of("root"), "active");
    d.ctl(&["deactivate", "root"]).assert_success();
    assert_eq!(d.state_of("root"), "locked");

    activate(&d, "3", pin).assert_refused("unknown_certifier");
    activate(&d, "no-such", pin).assert_refused("unknown_certifier");
    d.ctl(&["deactivate", "no-such"])
        .assert_refused("unknown_certifier");
    let pin = pin.to_str().expect("a UTF-8 path");
    d.ctl(&["activate", "--pin-file", pin])
        .assert_refused("certifier_required");
    assert_eq!(d.state_of("root"), "locked");
    assert_eq!(d.state_of("issuing"), "locked");
}

#[test]
fn a_certifier_with_a_pin_file_starts_active() {
    let keys = Keys::new();
    let mut specs = keys.specs();
    specs[0] = specs[0].clone().with_pin_file(&keys.token.pin_file);
    // The token is logged in by root when issuing's wrong PIN is tried.
    specs[1] = specs[1].clone().with_pin_file(&keys.wrong_pin());
    let config = keys.config(&specs);
    let d = keys.start(&config);
    assert_eq!(d.state_of("root"), "active");
    assert_eq!(d.state_of("issuing"), "locked");

    let audit = audit_lines(&config.audit_log());
    assert!(
        audit
            .iter()
            .any(|e| e["kind"] == "activated" && e["certifier"] == "root" && e["actor"] == "certd"),
        "{audit:#?}"
    );
    assert!(
        audit.iter().any(|e| e["kind"] == "activation_refused"
            && e["certifier"] == "issuing"
            && e["detail"]["code"] == "pin_incorrect"),
        "{audit:#?}"
    );
}

#[test]
fn a_pin_file_open_to_other_users_is_refused_unread() {
    use std::os::unix::fs::PermissionsExt;
    let keys = Keys::new();
    let exposed = keys.path().join("exposed.pin");
    write_secret(&exposed, &keys.token.pin);
    let chmod = |mode: u32| {
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(0o644);
    let mut specs = keys.specs();
    specs[0] = specs[0].clone().with_pin_file(&exposed);
    let config = keys.config(&specs);
    let d = keys.start(&config);
    // At start: the right PIN, but world-readable: not used.
    assert_eq!(d.state_of("root"), "locked");
    let audit = audit_lines(&config.audit_log());
    assert!(
        audit.iter().any(|e| e["kind"] == "activation_refused"
            && e["certifier"] == "root"
            && e["detail"]["code"] == "pin_unreadable"
            && e["detail"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("open to other users"))),
        "{audit:#?}"
    );
    // By hand: refused before anything is sent to the daemon.
    let out = activate(&d, "root", &exposed);
    out.assert_code(1);
    assert!(
        out.stderr.contains("open to other users") && out.stderr.contains("chmod o-rwx"),
        "{out}"
    );
    assert_eq!(d.state_of("root"), "locked");
    chmod(0o640);
    activate(&d, "root", &exposed).assert_success();
    assert_eq!(d.state_of("root"), "active");
}

#[test]
fn a_certificate_of_another_key_refuses_activation() {
    let keys = Keys::new();
    let mut specs = keys.specs();
    specs[0].certificate = keys.issuing_pem.clone();
    specs[1].certificate = keys.root_pem.clone();
    let d = keys.start(&keys.config(&specs));
    let pin = &keys.token.pin_file;
    activate(&d, "root", pin).assert_refused("key_mismatch");
    activate(&d, "issuing", pin).assert_refused("key_mismatch");
    assert_eq!(d.state_of("root"), "locked");
    assert_eq!(d.state_of("issuing"), "locked");
}

/// The line number `certd verify-audit` names as broken, if any.
fn broken_line(out: &CmdOutput) -> Option<u64> {
    let rest = &out.stdout[out.stdout.find("BROKEN at line ")? + "BROKEN at line ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn verify_file(file: &Path) -> CmdOutput {
    run(certd_e2e::clean_env(&mut std::process::Command::new(CERTD))
        .arg("verify-audit")
        .arg("--file")
        .arg(file))
}

#[test]
fn audit_log_records_control_actions_and_locates_tampering() {
    let keys = Keys::new();
    let config = keys.config(&keys.specs());
    let mut d = keys.start(&config);
    activate(&d, "root", &keys.wrong_pin()).assert_refused("pin_incorrect");
    activate(&d, "root", &keys.token.pin_file).assert_success();
    activate(&d, "issuing", &keys.token.pin_file).assert_success();
    d.ctl(&["deactivate", "issuing"]).assert_success();
    d.ctl(&["deactivate", "root"]).assert_success();
    assert!(d.terminate().success(), "{}", d.log());

    let log = config.audit_log();
    let entries = audit_lines(&log);
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in [
        "config_loaded",
        "activated",
        "activation_refused",
        "deactivated",
        "stopped",
    ] {
        assert!(kinds.contains(&kind), "no {kind} entry in {kinds:?}");
    }
    let out = d.ctl(&["verify-audit"]);
    out.assert_success();
    let n = entries.len();
    assert!(
        out.stdout.contains(&format!("OK, {n} entries")),
        "{n} entries expected\n{out}"
    );

    let text = std::fs::read_to_string(&log).expect("the audit log");
    let lines: Vec<&str> = text.lines().collect();
    let middle = n / 2; // 0-based index of a line with lines on both sides
    assert!(middle >= 1 && middle + 1 < n, "too few entries: {n}");
    let tampered = |name: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let mut copy: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edit(&mut copy);
        let path = keys.path().join(name);
        std::fs::write(&path, copy.join("\n") + "\n").expect("write the copy");
        path
    };

    let edited = tampered("edited.log", &|l| {
        l[middle] = l[middle].replacen("\"actor\":\"", "\"actor\":\"mallory ", 1);
    });
    let deleted = tampered("deleted.log", &|l| {
        l.remove(middle);
    });
    let swapped = tampered("swapped.log", &|l| l.swap(middle, middle + 1));
    for path in [edited, deleted, swapped] {
        let out = verify_file(&path);
        out.assert_code(1);
        assert_eq!(
            broken_line(&out),
            Some(middle as u64 + 1),
            "{}\n{out}",
            path.display()
        );
    }
    // The original is untouched and still verifies.
    verify_file(&log).assert_success();
}

/// `certd verify-audit --config` of a copy of the log, with its anchor.
fn verify_copy(
    keys: &Keys,
    config: &certd_e2e::certd::CertdConfig,
    name: &str,
    records: &[certd::audit::AuditRecord],
) -> CmdOutput {
    let dir = keys.path().join(name);
    std::fs::create_dir_all(&dir).expect("a directory");
    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).expect("json") + "\n")
        .collect();
    std::fs::write(dir.join("audit.log"), text).expect("the copy");
    std::fs::copy(
        config.state_dir.join("audit.anchor"),
        dir.join("audit.anchor"),
    )
    .expect("the anchor");
    run(certd_e2e::clean_env(&mut std::process::Command::new(CERTD))
        .arg("verify-audit")
        .arg("--config")
        .arg(&config.path)
        .arg("--file")
        .arg(dir.join("audit.log")))
}

/// The chain alone cannot tell a log cut short, or one rewritten with
/// recomputed hashes; the signed checkpoints (after each CRL, at shutdown)
/// and the anchor beside the log can, and `verify-audit` names where.
#[test]
fn a_cut_or_rewritten_audit_log_fails_at_its_signed_checkpoints() {
    let keys = Keys::new();
    let config = keys.config(&keys.specs()[..1]);
    let mut d = keys.start(&config);
    activate(&d, "root", &keys.token.pin_file).assert_success();
    // The CRL made at activation is followed by a checkpoint (the bound
    // only catches a hang).
    let log = config.audit_log();
    certd_e2e::poll_until(
        DAEMON_DEADLINE,
        "the checkpoint after the first CRL",
        || {
            audit_lines(&log)
                .iter()
                .any(|e| e["kind"] == "audit_checkpoint" && e["detail"]["reason"] == "crl")
                .then_some(())
        },
        || d.log(),
    );
    // Entries after it, which the shutdown checkpoint signs.
    d.ctl(&["reload"]).assert_success();
    assert!(d.terminate().success(), "{}", d.log());

    let out = d.ctl(&["verify-audit"]);
    out.assert_success();
    assert!(out.stdout.contains("signed checkpoints verified"), "{out}");
    let records: Vec<certd::audit::AuditRecord> = std::fs::read_to_string(config.audit_log())
        .expect("the audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an entry"))
        .collect();
    let checkpoints: Vec<u64> = records
        .iter()
        .filter(|r| r.kind == "audit_checkpoint")
        .map(|r| r.seq)
        .collect();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}\n{}", d.log());
    let reasons: Vec<&str> = records
        .iter()
        .filter(|r| r.kind == "audit_checkpoint")
        .filter_map(|r| r.detail["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"crl") && reasons.last() == Some(&"shutdown"),
        "{reasons:?}"
    );

    // Untouched copy: OK.
    verify_copy(&keys, &config, "untouched", &records).assert_success();

    // Cut after the first checkpoint: intact chain, but the anchor names
    // the last checkpoint; the last good entry is named.
    let first = checkpoints[0];
    let cut = verify_copy(&keys, &config, "cut", &records[..first as usize]);
    cut.assert_code(1);
    assert!(
        cut.stdout.contains("BROKEN") && cut.stdout.contains(&format!("ends at entry {first}")),
        "{cut}"
    );

    // Rewritten from the second entry on, every hash recomputed: the first
    // checkpoint's signature is over the old hashes.
    let mut rewritten = records.clone();
    rewritten[1].actor = "mallory".into();
    for i in 1..rewritten.len() {
        rewritten[i].prev = rewritten[i - 1].hash.clone();
        rewritten[i].hash = rewritten[i].compute_hash().expect("a hash");
    }
    let out = verify_copy(&keys, &config, "rewritten", &rewritten);
    out.assert_code(1);
    assert!(
        out.stdout.contains(&format!("(seq {first})")) && out.stdout.contains("checkpoint"),
        "{out}"
    );
    // The chain alone (no --config) does not see either.
    verify_file(&keys.path().join("rewritten").join("audit.log")).assert_success();
    verify_file(&keys.path().join("cut").join("audit.log")).assert_success();
}

/// With `control_group`, the socket is born with its mode and group (bound
/// in a private directory and renamed into place), and certd itself
/// checks the peer: a member of the group (primary or supplementary) is
/// served; someone the file's permissions let in by mistake is not.
/// Switching users needs root, as `./test` has in CI.
#[test]
fn the_control_group_is_checked_by_certd_itself() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let keys = Keys::new();
    let config = keys.config(&keys.specs()[..1]);
    let text = std::fs::read_to_string(&config.path).expect("config");
    std::fs::write(
        &config.path,
        text.replacen(
            "[daemon]\n",
            "[daemon]\ncontrol_group = \"nogroup\"\ncontrol_socket_mode = 0o660\n",
            1,
        ),
    )
    .expect("config");
    let d = keys.start(&config);
    let socket = &config.control_socket;
    let meta = std::fs::metadata(socket).expect("the socket");
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, 65534),
        "mode and group at birth"
    );
    let leftovers: Vec<_> = std::fs::read_dir(socket.parent().expect("run dir"))
        .expect("run dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "control.sock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Another user reaches the socket and runs a certd of its own.
    for dir in [keys.path().to_path_buf(), keys.path().join("run")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    }
    let certd = keys.path().join("certd-copy");
    std::fs::copy(CERTD, &certd).expect("copy certd");
    std::fs::set_permissions(&certd, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_nobody = |regid: &str, groups: &str| {
        run(
            certd_e2e::clean_env(&mut std::process::Command::new("setpriv"))
                .args(["--reuid=65534", &format!("--regid={regid}"), groups])
                .arg(&certd)
                .arg("status")
                .arg("--socket")
                .arg(socket),
        )
    };
    as_nobody("65534", "--clear-groups").assert_success();
    as_nobody("1", "--groups=65534").assert_success();

    // Opened to everyone by mistake: the kernel lets anyone connect,
    // certd serves only root, its own user and the group's members.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let refused = as_nobody("1", "--clear-groups");
    assert_ne!(refused.code(), Some(0), "{refused}");
    assert!(
        refused.stderr.contains("not_authorized") || refused.stderr.contains("may not control"),
        "{refused}"
    );
    drop(d);
    let refusals = audit_lines(&config.audit_log())
        .into_iter()
        .filter(|e| e["kind"] == "control_refused")
        .count();
    assert_eq!(refusals, 1);
}

/// A certifier whose chain does not link up stays out of service with the
/// reason in `status` (activation refused, saying why); the other
/// certifier is not held back.
#[test]
fn a_certifier_whose_chain_does_not_link_stays_out_of_service_and_says_why() {
    let keys = Keys::new();
    let mut specs = keys.specs();
    // root is self-signed; its "chain" is the issuing CA it certified.
    specs[0].chain = Some(keys.issuing_pem.clone());
    let config = keys.config(&specs);
    let d = keys.start(&config);
    let status = d.status();
    let root = &status["certifiers"][0];
    assert_eq!(root["state"], "unavailable", "{status:#}");
    let reason = root["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot certify") && reason.contains("issued by"),
        "{status:#}"
    );
    let refused = activate(&d, "root", &keys.token.pin_file);
    assert_ne!(refused.code(), Some(0), "{refused}");
    assert!(
        refused.stderr.contains("cannot certify") || refused.stdout.contains("cannot certify"),
        "{refused}"
    );
    activate(&d, "issuing", &keys.token.pin_file).assert_success();
    assert_eq!(d.state_of("issuing"), "active");
    assert_eq!(d.state_of("root"), "unavailable");
    // Deactivating it does not hide why.
    let _ = d.ctl(&["deactivate", "root"]);
    assert_eq!(d.state_of("root"), "unavailable");
}

fn status_line(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

#[test]
fn systemd_hears_ready_status_watchdog_and_stopping() {
    let keys = Keys::new();
    let config = keys.config(&keys.specs()[..1]);
    // The harness listens on NOTIFY_SOCKET and has waited for READY=1.
    let mut d = CertdInstance::start(
        Path::new(CERTD),
        &config,
        &keys.token,
        &[("WATCHDOG_USEC", "200000".as_ref())],
    );
    let ready = d
        .notifications()
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .cloned()
        .expect("the start waited for READY=1");
    assert_eq!(status_line(&ready), Some("root: locked"), "{ready:?}");

    // The watchdog is pinged again and again (every 100 ms for 200 ms).
    for _ in 0..2 {
        d.wait_notification("WATCHDOG=1", |m| m.lines().any(|l| l == "WATCHDOG=1"));
    }

    activate(&d, "root", &keys.token.pin_file).assert_success();
    d.wait_notification("STATUS=root: active", |m| {
        status_line(m).is_some_and(|s| s.contains("root: active"))
    });

    assert!(d.terminate().success(), "{}", d.log());
    assert!(
        d.notifications()
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "STOPPING=1 before exit: {:?}",
        d.notifications()
    );
}

#[test]
fn a_restart_continues_the_audit_chain_and_reopens_the_ledger() {
    let keys = Keys::new();
    let mut specs = keys.specs();
    specs[0] = specs[0].clone().with_pin_file(&keys.token.pin_file);
    let config = keys.config(&specs);
    let pin = &keys.token.pin_file;

    let mut first = keys.start(&config);
    activate(&first, "issuing", pin).assert_success();
    first.ctl(&["deactivate", "issuing"]).assert_success();
    assert!(first.terminate().success(), "{}", first.log());
    let before = audit_lines(&config.audit_log());
    assert_eq!(
        before.last().map(|e| e["kind"].clone()),
        Some("stopped".into())
    );
    drop(first);

    let mut second = keys.start(&config);
    let status = second.status();
    assert_ne!(status["pid"], Value::Null);
    assert_eq!(second.state_of("root"), "active", "{status:#}");
    assert_eq!(second.state_of("issuing"), "locked", "{status:#}");
    assert_eq!(
        status["certifiers"][0]["certificates_issued"], 0,
        "{status:#}"
    );
    activate(&second, "issuing", pin).assert_success();
    assert!(second.terminate().success(), "{}", second.log());

    let after = audit_lines(&config.audit_log());
    assert!(after.len() > before.len() + 1, "{after:#?}");
    assert_eq!(&after[..before.len()], &before[..], "history is kept");
    for (i, e) in after.iter().enumerate() {
        assert_eq!(e["seq"], i + 1, "seq runs on without gaps: {e}");
    }
    let resumed = &after[before.len()];
    assert_eq!(resumed["kind"], "config_loaded", "{resumed}");
    assert_eq!(
        resumed["prev"],
        before[before.len() - 1]["hash"],
        "{resumed}"
    );
    let out = second.ctl(&["verify-audit"]);
    out.assert_success();
    assert!(
        out.stdout.contains(&format!("OK, {} entries", after.len())),
        "{out}"
    );
    assert!(config.state_dir.join("ledger.redb").is_file());

    // A third start still finds everything in order.
    let third = keys.start(&config);
    assert_eq!(third.state_of("root"), "active");
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_to_start_and_breaks_nothing() {
    let keys = Keys::new();
    let config = keys.config(&keys.specs());
    let mut first = keys.start(&config);

    let stderr_path = keys.path().join("second.stderr");
    let stderr_file = std::fs::File::create(&stderr_path).expect("a file for stderr");
    let mut second = ChildGuard::spawn(
        certd_e2e::clean_env(&mut std::process::Command::new(CERTD))
            .arg("run")
            .arg("--config")
            .arg(&config.path)
            .env("SOFTHSM2_CONF", &keys.token.conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr_file),
    );
    let read_stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // It must exit by itself; the bound only catches one that keeps running.
    let status = second.wait_exit(DAEMON_DEADLINE, || {
        format!(
            "a second certd on the same state directory kept running\n{}",
            read_stderr()
        )
    });
    let stderr = read_stderr();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("another certd is running"), "{stderr}");

    // The first daemon still answers, and its audit chain still holds.
    activate(&first, "root", &keys.token.pin_file).assert_success();
    assert_eq!(first.state_of("root"), "active");
    assert!(first.terminate().success(), "{}", first.log());
    first.ctl(&["verify-audit"]).assert_success();
    assert_eq!(
        audit_lines(&config.audit_log())
            .iter()
            .filter(|e| e["kind"] == "config_loaded")
            .count(),
        1,
        "the refused daemon wrote nothing to the audit log"
    );
}

#[test]
fn a_killed_daemon_restarts_over_its_stale_socket() {
    let keys = Keys::new();
    let config = keys.config(&keys.specs());
    let first = keys.start(&config);
    activate(&first, "root", &keys.token.pin_file).assert_success();
    // Dropping kills with SIGKILL: no clean-up, the socket file stays.
    drop(first);
    assert!(config.control_socket.exists(), "the stale socket is left");

    let second = keys.start(&config);
    assert_eq!(second.state_of("root"), "locked", "a restart starts locked");
    activate(&second, "root", &keys.token.pin_file).assert_success();
    second.ctl(&["verify-audit"]).assert_success();
}

#[test]
fn the_ledger_of_an_earlier_certd_is_refused_until_migrated_then_carried_on() {
    use certd::clock::SystemClock;
    use certd::ledger::{Intent, LegacyLedger as _, Serial, SledLedger};
    use std::sync::Arc;
    let keys = Keys::new();
    let config = keys.config(&keys.specs()[..1]);
    // What a certd before the journal left in its state directory: a sled
    // ledger (one certificate issued, one CRL number taken) and its audit
    // log.
    std::fs::create_dir_all(&config.state_dir).expect("state dir");
    let serial = Serial::from_hex("0123456789abcdef0123456789abcdef").expect("serial");
    {
        let old = SledLedger::open(&config.state_dir.join("ledger"), Arc::new(SystemClock))
            .expect("the earlier ledger");
        let intent = Intent {
            certifier: "root".into(),
            ra: "ra-old".into(),
            request_id: Some("old-1".into()),
            tbs_sha256: [1; 32],
            profile: "tls-server".into(),
            created: 1_700_000_000,
            approval: None,
            instance: String::new(),
            spki_sha256: None,
        };
        old.record_intent(&serial, intent, Some(("ra-old", "old-1", [2; 32])))
            .expect("intent");
        let pem = std::fs::read_to_string(&keys.root_pem).expect("a certificate");
        let der = x509_cert::der::pem::decode_vec(pem.as_bytes())
            .expect("PEM")
            .1;
        old.record_issued(&serial, &der, 1_900_000_000)
            .expect("issued");
        old.next_crl_number("root").expect("a CRL number");
        // Its audit log, in the format certd still writes (the index of
        // this writer is scratch, kept out of the state directory).
        let (audit, _) = certd::journal::Journal::open(
            &config.audit_log(),
            &keys.path().join("scratch.redb"),
            Arc::new(SystemClock),
        )
        .expect("the earlier audit log");
        audit
            .audit(certd::audit::AuditEvent::new("config_loaded", "certd"))
            .expect("an entry");
    }

    // certd does not start on it, and says what to run.
    let refused = run(keys
        .token
        .command(CERTD)
        .arg("run")
        .arg("--config")
        .arg(&config.path));
    refused.assert_code(1);
    assert!(refused.stderr.contains("certd migrate-ledger"), "{refused}");

    let migrated = run(keys
        .token
        .command(CERTD)
        .arg("migrate-ledger")
        .arg("--config")
        .arg(&config.path));
    migrated.assert_success();
    assert!(
        migrated
            .stdout
            .contains("migrated 1 records and 1 idempotency keys"),
        "{migrated}"
    );
    assert!(config.state_dir.join("ledger.migrated").is_dir());

    // It starts, with what the earlier ledger held.
    let mut d = keys.start(&config);
    let status = d.status();
    assert_eq!(
        status["certifiers"][0]["certificates_issued"], 1,
        "{status:#}"
    );
    assert_eq!(
        status["certifiers"][0]["last_serial"],
        serial.to_hex(),
        "{status:#}"
    );
    assert_eq!(status["certifiers"][0]["crl_number"], 1, "{status:#}");
    assert!(d.terminate().success(), "{}", d.log());
    d.ctl(&["verify-audit"]).assert_success();
    let kinds: Vec<String> = audit_lines(&config.audit_log())
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds[..3],
        ["config_loaded", "ledger_migrated", "config_loaded"],
        "{kinds:?}"
    );
}
