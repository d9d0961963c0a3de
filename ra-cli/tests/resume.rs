//! End-to-end tests of `ra-cli batch issue` failing part-way and being
//! resumed to completion against a real certd (real SoftHSM token, real
//! mutual TLS): certifier locked mid-batch, retries exhausted, an output
//! file that cannot be written, SIGKILL, a torn journal, and an input
//! edited under an explicit `--batch-id`.
//!
//! The tests that act while a run is under way (lock the certifier, put
//! something in the way of a row's file, edit the input) do so while
//! certd's token holds a signature: certd signs through the
//! fault-injecting PKCS#11 module ([`Ca::start_through_fault_module`]),
//! set to stall every `C_Sign` before the run starts ([`hold`]). Its count
//! file then says when the first rows' signatures are held, which pins
//! where the run is (nothing delivered, nothing read beyond a few rows)
//! while the test acts; releasing the token lets the run go on. None of
//! them depends on how fast anything runs.
//!
//! Every resume ends in the same final state, checked by
//! [`assert_complete`]: every row delivered exactly once, the serial certd
//! issued first kept, no certificate in certd's ledger that the report
//! does not name, a password for every PKCS#12 that opens it, no key left
//! anywhere but in the delivered files, and secret files 0600 in a 0700
//! directory.
#![forbid(unsafe_code)]

mod common;

use certd_e2e::api::openssl;
use certd_e2e::fault::{injected_fault_log, FaultMode};
use certd_e2e::{poll_until, ChildGuard};
use common::{finish, read_csv, Ca, FaultyToken, CERTIFIER};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Only catches hangs; nothing here measures speed.
const HANG: Duration = Duration::from_secs(120);

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An input with only the `email` column (an S/MIME profile needs no
/// other) and `n` rows; returns the emails in order.
fn people(path: &Path, n: usize) -> Vec<String> {
    let emails: Vec<String> = (0..n).map(|i| format!("user{i:04}@example.com")).collect();
    let mut text = String::from("email\n");
    for e in &emails {
        text.push_str(e);
        text.push('\n');
    }
    std::fs::write(path, text).expect("csv");
    emails
}

fn batch<'a>(input: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut a: Vec<String> = ["--json", "batch", "issue", "--input"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.push(s(input));
    a.push("--out".into());
    a.push(s(out));
    a.extend(["--progress", "off"].iter().map(|x| x.to_string()));
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn spawn(ca: &Ca, args: &[String]) -> ChildGuard {
    ca.spawn_ra(&refs(args))
}

/// `ra-cli ARGS` in the background, with a request timeout as long as
/// [`HANG`]: its first requests wait in certd while the token holds their
/// signatures, for as long as the test takes to act.
fn spawn_patient(ca: &Ca, args: &[String]) -> ChildGuard {
    let config = ca.config_variant(
        "ra-cli-patient.toml",
        "\n[defaults]\n",
        &format!("timeout_seconds = {}\n\n[defaults]\n", HANG.as_secs()),
    );
    ChildGuard::spawn(
        ca.ra_command_with(&config, &refs(args))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// certd's token holding every signature (`C_Sign` stalls in the fault
/// module) until [`Held::release`], or until dropped (a failing test does
/// not leave certd waiting on its token).
struct Held<'a> {
    token: &'a FaultyToken,
}

/// Holds every signature certd starts from now on.
fn hold(token: &FaultyToken) -> Held<'_> {
    assert!(
        injected_fault_log(&token.count).is_empty(),
        "no signature was held before"
    );
    token.control.set(FaultMode::Stall);
    Held { token }
}

impl Held<'_> {
    /// Waits until `n` signatures are held: the count file's `stall
    /// C_Sign` lines, one written as each starts to wait. A held signature
    /// is certd signing a certificate: its ledger has the intent, the
    /// requester waits for the answer. (cryptoki's `C_Sign` asks for the
    /// length first; that first call is the one held, and the second comes
    /// only after the release, in `pass` mode, so each line is one
    /// certificate.)
    fn wait_for(&self, n: usize, out: &Path) {
        let lines = poll_until(
            HANG,
            &format!("{n} signatures held by the token"),
            || Some(injected_fault_log(&self.token.count)).filter(|l| l.len() >= n),
            || {
                format!(
                    "faults: {:?}\njournal:\n{}",
                    injected_fault_log(&self.token.count),
                    std::fs::read_to_string(out.join("journal.jsonl")).unwrap_or_default()
                )
            },
        );
        assert_eq!(lines, vec!["stall C_Sign"; n], "exactly {n} held");
    }

    /// Lets the held signatures, and every one after them, through.
    fn release(self) {
        drop(self);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // No second panic: an empty or partly written file is `pass`
            // to the module as well.
            let _ = std::fs::write(self.token.control.path(), "pass\n");
        } else {
            self.token.control.set(FaultMode::Pass);
        }
    }
}

/// Waits until the journal holds `n` whole `issued` lines of a run under
/// way (the bound only catches a hang).
fn wait_for_deliveries(out: &Path, n: usize) {
    poll_until(
        HANG,
        &format!("{n} deliveries in the journal"),
        || (issued_lines(out) >= n).then_some(()),
        || std::fs::read_to_string(out.join("journal.jsonl")).unwrap_or_default(),
    );
}

fn journal_entries(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("journal.jsonl")).expect("journal");
    assert!(text.ends_with('\n'), "the journal ends with a whole line");
    whole_entries(&text)
}

/// The entries of the whole lines of a journal (a process killed while
/// appending may have left a torn last one).
fn whole_entries(text: &str) -> Vec<serde_json::Value> {
    let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The journal's whole `issued` lines (read while a run appends to it).
fn issued_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("journal.jsonl"))
        .map(|t| {
            whole_entries(&t)
                .iter()
                .filter(|e| e["event"] == "issued")
                .count()
        })
        .unwrap_or(0)
}

/// The files in `DIR/keys` (absent: none).
fn key_files(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out.join("keys"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Request id → base name of the row's files, for every key file the
/// journal's whole lines name.
fn journaled_key_files(out: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(out.join("journal.jsonl")).expect("journal");
    whole_entries(&text)
        .iter()
        .filter(|e| e["event"] == "requested" && e["key_file"].is_string())
        .map(|e| {
            let id = e["request_id"].as_str().expect("request_id").to_string();
            assert_eq!(e["key_file"], format!("keys/{id}.key"), "{e}");
            (id, e["file"].as_str().expect("file").to_string())
        })
        .collect()
}

/// Asserts that no key waits in `DIR/keys` for a row whose PKCS#12 is in
/// the output directory, whatever instant the run stopped at; returns the
/// base names of the rows whose keys wait there.
#[track_caller]
fn assert_no_key_beside_its_p12(out: &Path) -> Vec<String> {
    let named = journaled_key_files(out);
    let mut waiting = Vec::new();
    for f in key_files(out) {
        if f.starts_with(".tmp-") {
            // A PKCS#12 being staged: its key file is still there (the
            // next run removes it).
            continue;
        }
        let id = f
            .strip_suffix(".key")
            .or_else(|| f.strip_suffix(".p12"))
            .unwrap_or_else(|| panic!("keys/{f} is not a key file nor a staged PKCS#12"));
        // A key file no whole journal line names was being written when
        // the run stopped: its request was never sent, so it has no
        // PKCS#12 (the next run removes it).
        let Some(stem) = named.get(id) else { continue };
        assert!(
            !out.join(format!("{stem}.p12")).exists(),
            "keys/{f} is still there beside the delivered {stem}.p12"
        );
        waiting.push(stem.clone());
    }
    waiting
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// certd's ledger as this RA sees it: serial → emails.
fn ledger(ca: &Ca) -> HashMap<String, Vec<String>> {
    let l = ca.ra(&["--json", "list"]);
    l.assert_success();
    l.json()
        .as_array()
        .expect("array")
        .iter()
        .map(|i| {
            let emails = i["emails"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (i["serial"].as_str().expect("serial").to_string(), emails)
        })
        .collect()
}

/// email → serial of the rows the report calls issued.
fn issued_serials(out: &Path) -> HashMap<String, String> {
    read_csv(&out.join("report.csv"))
        .into_iter()
        .filter(|l| l["status"] == "issued")
        .map(|l| (l["email"].clone(), l["serial"].clone()))
        .collect()
}

/// The final state of a batch of `emails` (PKCS#12 rows) resumed to
/// completion, where `kept` holds serials certd had issued before.
#[track_caller]
fn assert_complete(
    ca: &Ca,
    out: &Path,
    passwords: &Path,
    emails: &[String],
    kept: &HashMap<String, String>,
) {
    let report = read_csv(&out.join("report.csv"));
    assert_eq!(report.len(), emails.len(), "one report line per row");
    assert!(
        report.iter().all(|l| l["status"] == "issued"),
        "every row issued: {report:?}"
    );
    let serials = issued_serials(out);
    assert_eq!(serials.len(), emails.len());
    for e in emails {
        assert!(serials.contains_key(e), "{e} issued");
    }
    for (e, serial) in kept {
        assert_eq!(
            &serials[e], serial,
            "{e} keeps the serial certd issued first"
        );
    }
    // certd's ledger: exactly one certificate per row, none orphaned.
    let ledger = ledger(ca);
    assert_eq!(
        ledger.len(),
        emails.len(),
        "no row issued twice: {ledger:?}"
    );
    let reported: HashSet<&String> = serials.values().collect();
    for (serial, emails) in &ledger {
        assert!(
            reported.contains(serial),
            "{serial} ({emails:?}) is orphaned"
        );
    }
    for (e, serial) in &serials {
        assert_eq!(ledger[serial], vec![e.clone()], "{serial} certifies {e}");
    }
    // Every PKCS#12 has its password, and that password opens it.
    let pw_lines = read_csv(passwords);
    let pw: HashMap<&str, &str> = pw_lines
        .iter()
        .map(|l| (l["file"].as_str(), l["password"].as_str()))
        .collect();
    assert_eq!(pw_lines.len(), emails.len(), "one password per PKCS#12");
    let pw_file = out.parent().expect("parent").join("one.pw");
    for e in emails {
        let p12 = format!("{e}.p12");
        let password = pw
            .get(p12.as_str())
            .unwrap_or_else(|| panic!("no password for {p12}"));
        std::fs::write(&pw_file, password).expect("pw");
        openssl(&[
            &"pkcs12",
            &"-in",
            &s(&out.join(&p12)),
            &"-passin",
            &format!("file:{}", s(&pw_file)),
            &"-nokeys",
        ]);
        assert_eq!(mode(&out.join(&p12)), 0o600, "{p12}");
        assert_eq!(mode(&out.join(format!("{e}.pem"))), 0o644);
    }
    // No key is kept but in the delivered files: none in the journal,
    // and `keys/` is gone. Secrets are private.
    assert!(
        !out.join("keys").exists(),
        "keys/ is gone: {:?}",
        key_files(out)
    );
    let journal = std::fs::read_to_string(out.join("journal.jsonl")).expect("journal");
    assert!(
        !journal.contains("\"key\"") && !journal.contains("PRIVATE KEY"),
        "no key in the journal (it names key files, now gone):\n{journal}"
    );
    assert_eq!(mode(out), 0o700);
    assert_eq!(mode(&out.join("journal.jsonl")), 0o600);
    assert_eq!(mode(passwords), 0o600);
    assert!(std::fs::read_dir(out)
        .expect("out")
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")));
}

#[test]
fn certifier_locked_mid_batch_then_activated_and_resumed() {
    const ROWS: usize = 120;
    const JOBS: usize = 2;
    let (ca, token) = Ca::start_through_fault_module();
    let work = ca.scratch("work");
    let input = work.join("people.csv");
    let emails = people(&input, ROWS);
    let out = work.join("out");
    let args = batch(&input, &out, &["--jobs", &JOBS.to_string()]);

    // The first rows' signatures are held in the token; the certifier is
    // locked while they are under way (certd does not wait for them), and
    // before any other row reaches certd.
    let held = hold(&token);
    let child = spawn_patient(&ca, &args);
    held.wait_for(JOBS, &out);
    ca.certd.deactivate(CERTIFIER);
    assert_eq!(ca.certd.certifier_status(CERTIFIER)["state"], "locked");
    assert_eq!(issued_lines(&out), 0, "nothing delivered yet");
    held.release();
    let first = finish(child);
    first.assert_code(1);
    let sum = first.json();
    assert_eq!(sum["stopped"]["code"], "certifier_locked", "{first}");
    let failed = sum["failed"].as_u64().expect("failed");
    let issued = sum["issued"].as_u64().expect("issued");
    // Locking stops new signatures, not one already under way: the rows
    // being signed are delivered; the next ones meet the locked certifier.
    assert_eq!(issued, JOBS as u64, "the rows under way: {first}");
    assert!(failed >= 1, "some row met the locked certifier: {first}");
    assert_eq!(
        issued + failed + sum["not_attempted"].as_u64().expect("n"),
        ROWS as u64,
        "{first}"
    );
    assert!(first.stdout.contains("certifier_locked"), "{first}");
    let report = read_csv(&out.join("report.csv"));
    assert_eq!(report.len(), ROWS, "every row is in the report");
    assert!(report
        .iter()
        .filter(|l| l["status"] == "failed")
        .all(|l| l["error_code"] == "certifier_locked"));
    // keys/ keeps exactly the keys of the rows not delivered, each in a
    // private file the journal names, and passwords.csv their passwords
    // beside those of the delivered files.
    let kept = issued_serials(&out);
    let waiting = assert_no_key_beside_its_p12(&out);
    assert_eq!(waiting.len() as u64, failed, "{:?}", key_files(&out));
    assert_eq!(key_files(&out).len() as u64, failed);
    assert_eq!(mode(&out.join("keys")), 0o700);
    for f in key_files(&out) {
        assert!(f.ends_with(".key"), "{f}");
        assert_eq!(mode(&out.join("keys").join(&f)), 0o600, "{f}");
    }
    let passwords = out.join("passwords.csv");
    assert_eq!(read_csv(&passwords).len() as u64, issued + failed);

    ca.certd.activate(CERTIFIER);
    let second = ca.ra(&refs(&args));
    second.assert_success();
    assert_eq!(second.json()["already_issued"], issued, "{second}");
    assert_complete(&ca, &out, &passwords, &emails, &kept);
}

#[test]
fn retries_exhausted_then_resumed_across_a_torn_journal_line() {
    const ROWS: usize = 5;
    let ca = Ca::start(true);
    // One request a minute: the second row finds certd over the limit on
    // every attempt.
    ca.certd.ca.edit_config(
        "name = \"ra-cli\"\n",
        "name = \"ra-cli\"\nrate_limit_per_minute = 1\n",
    );
    ca.certd.ctl(&["reload"]).assert_success();
    let work = ca.scratch("work");
    let input = work.join("people.csv");
    let emails = people(&input, ROWS);
    let out = work.join("out");
    let args = batch(&input, &out, &["--jobs", "1", "--attempts", "3"]);

    let first = ca.ra(&refs(&args));
    first.assert_code(1);
    let sum = first.json();
    assert_eq!(sum["stopped"]["code"], "rate_limited", "{first}");
    assert_eq!(
        (&sum["issued"], &sum["failed"], &sum["not_attempted"]),
        (&1.into(), &1.into(), &3.into()),
        "{first}"
    );
    assert_eq!(sum["retries"], 2, "two retries, then given up: {first}");
    let report = read_csv(&out.join("report.csv"));
    assert_eq!(report[1]["error_code"], "rate_limited");
    assert!(report[2..].iter().all(|l| l["status"] == "not_attempted"));
    let kept = issued_serials(&out);
    assert_eq!(kept.len(), 1);

    // A crash while appending left half a line behind, and half a key
    // file no line names yet.
    let journal = out.join("journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).expect("journal");
    text.push_str("{\"event\":\"requested\",\"line\":4,\"request_id\":\"batch-0");
    std::fs::write(&journal, &text).expect("torn");
    let torn_key = out.join("keys/batch-00000000000000000000000000000000.key");
    std::fs::write(&torn_key, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB").expect("torn key");

    ca.certd.ca.edit_config("rate_limit_per_minute = 1\n", "");
    ca.certd.ctl(&["reload"]).assert_success();
    let second = ca.ra(&refs(&args));
    second.assert_success();
    assert_eq!(second.json()["issued"], 4, "{second}");
    let after = std::fs::read_to_string(&journal).expect("journal");
    assert!(!after.contains("batch-0\n") && !after.contains("\"batch-0\""));
    assert!(!torn_key.exists(), "the torn key file is gone");
    assert_complete(&ca, &out, &out.join("passwords.csv"), &emails, &kept);
}

#[test]
fn an_output_file_that_cannot_be_written_then_resumed_with_the_same_serial() {
    const ROWS: usize = 60;
    let (ca, token) = Ca::start_through_fault_module();
    let work = ca.scratch("work");
    let input = work.join("people.csv");
    let emails = people(&input, ROWS);
    let out = work.join("out");
    let last = emails.last().expect("rows").clone();
    let blocker = out.join(format!("{last}.p12"));
    let args = batch(&input, &out, &["--jobs", "1"]);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&out)
        .expect("out");

    // In the way before the run: refused before anything is issued.
    std::fs::create_dir_all(blocker.join("x")).expect("blocker");
    let r = ca.ra(&refs(&args));
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "output", "{r}");
    assert!(r.stdout.contains(&s(&blocker)), "{r}");
    assert!(ledger(&ca).is_empty(), "nothing issued");
    std::fs::remove_dir_all(&blocker).expect("unblock");

    // In the way once the run is under way (a directory: root cannot
    // write a file over it): put there while the first row's signature is
    // held, so after the check of the output paths and long before the
    // last row (--jobs 1 goes row by row). certd issues the last row, its
    // PKCS#12 cannot be renamed into place.
    let held = hold(&token);
    let child = spawn_patient(&ca, &args);
    held.wait_for(1, &out);
    std::fs::create_dir_all(blocker.join("x")).expect("blocker");
    held.release();
    let first = finish(child);
    first.assert_code(1);
    let sum = first.json();
    assert_eq!(
        (&sum["issued"], &sum["failed"]),
        (&(ROWS - 1).into(), &1.into()),
        "{first}"
    );
    let report = read_csv(&out.join("report.csv"));
    let row = report.last().expect("last row");
    assert_eq!(
        (row["status"].as_str(), row["error_code"].as_str()),
        ("failed", "output"),
        "{row:?}"
    );
    let serial = row["serial"].clone();
    assert!(!serial.is_empty(), "the report names what certd issued");
    assert!(
        !out.join(format!("{last}.pem")).exists(),
        "nothing partial for the failed row"
    );
    assert!(ledger(&ca).contains_key(&serial));

    std::fs::remove_dir_all(&blocker).expect("unblock");
    let second = ca.ra(&refs(&args));
    second.assert_success();
    let mut kept = issued_serials(&out);
    assert_eq!(kept[&last], serial, "certd's first certificate delivered");
    kept.retain(|e, _| e == &last);
    assert_complete(&ca, &out, &out.join("passwords.csv"), &emails, &kept);
}

#[test]
fn killed_batch_resumes_without_duplicates() {
    const ROWS: usize = 200;
    let (ca, token) = Ca::start_through_fault_module();
    let work = ca.scratch("work");
    let input = work.join("many.csv");
    let emails = people(&input, ROWS);
    let out = work.join("out");
    let args = batch(&input, &out, &["--jobs", "4", "--p12-iterations", "1000"]);
    let mut child = spawn(&ca, &args);
    // Killed part-way through, whatever the machine's speed: after 15
    // deliveries the token holds every signature, and the kill comes once
    // one is held, with the other workers wherever they are.
    wait_for_deliveries(&out, 15);
    let held = hold(&token);
    poll_until(
        HANG,
        "a signature held by the token",
        || (!injected_fault_log(&token.count).is_empty()).then_some(()),
        || std::fs::read_to_string(out.join("journal.jsonl")).unwrap_or_default(),
    );
    let status = child.kill().expect("SIGKILL");
    held.release();
    assert!(
        status.code().is_none(),
        "killed by a signal, not finished: {status}"
    );
    let before = issued_lines(&out);
    assert!(before < ROWS, "killed part-way ({before} issued)");
    // Whatever instant the kill came at, a delivered PKCS#12 has no copy
    // of its key left in keys/.
    assert_no_key_beside_its_p12(&out);
    // What certd issued before the kill, whether ra-cli heard of it or not.
    let issued_by_certd: HashMap<String, String> = ledger(&ca)
        .into_iter()
        .map(|(serial, emails)| (emails[0].clone(), serial))
        .collect();
    assert!(issued_by_certd.len() >= before);

    let r = ca.ra(&refs(&args));
    r.assert_success();
    let sum = r.json();
    assert_eq!(sum["already_issued"], before, "{r}");
    assert_eq!(sum["issued"], (ROWS - before) as u64, "{r}");
    assert_complete(
        &ca,
        &out,
        &out.join("passwords.csv"),
        &emails,
        &issued_by_certd,
    );
}

#[test]
fn an_unjournaled_delivery_and_a_torn_last_line_resume_damage_is_refused() {
    let ca = Ca::start(true);
    let work = ca.scratch("work");
    let input = work.join("people.csv");
    let emails = people(&input, 3);
    let out = work.join("out");
    let args = batch(&input, &out, &[]);
    ca.ra(&refs(&args)).assert_success();
    let journal = out.join("journal.jsonl");
    let first = issued_serials(&out);

    // Killed after a row's PKCS#12 was renamed into place and before its
    // delivery was journaled: the key is in that file only. A re-run asks
    // certd again (the same request: the same certificate), keeps the
    // file as it is and journals the delivery.
    let last = &emails[2];
    let text = std::fs::read_to_string(&journal).expect("journal");
    let lost = format!("\"file\":\"{last}\"");
    let cut: String = text
        .lines()
        .filter(|l| !(l.contains("\"event\":\"issued\"") && l.contains(&lost)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(cut.lines().count() + 1, text.lines().count(), "{text}");
    std::fs::write(&journal, cut).expect("cut");
    let p12 = out.join(format!("{last}.p12"));
    let delivered = std::fs::read(&p12).expect("p12");
    let r = ca.ra(&refs(&args));
    r.assert_success();
    assert_eq!(
        (&r.json()["already_issued"], &r.json()["issued"]),
        (&2.into(), &1.into()),
        "{r}"
    );
    assert_eq!(issued_serials(&out), first);
    assert_eq!(
        std::fs::read(&p12).expect("p12"),
        delivered,
        "kept as it is"
    );
    let whole = std::fs::read_to_string(&journal).expect("journal");

    let torn = "{\"event\":\"run\",\"started\":\"torn";
    std::fs::write(&journal, format!("{whole}{torn}")).expect("torn");
    let r = ca.ra(&refs(&args));
    r.assert_success();
    assert_eq!(r.json()["already_issued"], 3, "{r}");
    let after = std::fs::read_to_string(&journal).expect("journal");
    assert!(!after.contains(torn), "the torn line is gone:\n{after}");
    // Compacted when the last run started: the header, the runs before,
    // three deliveries (the requests are superseded), the last run.
    let events: Vec<String> = journal_entries(&out)
        .iter()
        .map(|e| e["event"].as_str().expect("event").to_string())
        .collect();
    assert_eq!(
        events,
        ["batch", "run", "run", "issued", "issued", "issued", "run"],
        "{after}"
    );
    assert_complete(
        &ca,
        &out,
        &out.join("passwords.csv"),
        &emails,
        &HashMap::new(),
    );

    // A damaged line followed by whole ones is not a torn write.
    let mut lines: Vec<&str> = after.lines().collect();
    lines.insert(1, "{\"event\":\"issu");
    std::fs::write(&journal, lines.join("\n") + "\n").expect("damage");
    let r = ca.ra(&refs(&args));
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "journal_corrupt", "{r}");
    assert!(r.stdout.contains("line 2"), "{r}");
    assert!(
        r.stderr.is_empty(),
        "with --json the error is on stdout: {r}"
    );
    assert_eq!(ledger(&ca).len(), 3, "nothing was issued twice");
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write");
    path.to_path_buf()
}

#[test]
fn an_edited_input_under_an_explicit_batch_id() {
    let ca = Ca::start(true);
    let work = ca.scratch("work");
    let out = work.join("out");
    let input = work.join("clients.csv");
    let original = "email,common_name,dns\n\
                    alice@example.com,Alice,\n\
                    bob@example.com,Bob,\n\
                    carol@example.com,Carol,\n\
                    dan@example.com,Dan,dan.other.org\n";
    write(&input, original);
    let args = batch(
        &input,
        &out,
        &["--profile", "tls-client", "--batch-id", "team-2026"],
    );
    // Dan's name is outside this RA's namespace: certd refuses that row
    // before signing anything; the others are issued.
    let first = ca.ra(&refs(&args));
    first.assert_code(1);
    let report = read_csv(&out.join("report.csv"));
    assert_eq!(report[3]["error_code"], "name_not_permitted", "{report:?}");
    let serials = issued_serials(&out);
    assert_eq!(serials.len(), 3);
    let bob_pem = std::fs::read(out.join("bob@example.com.pem")).expect("pem");

    // Bob's and Carol's names changed, a row was added: refused before
    // anything is issued, every changed row named.
    write(
        &input,
        "email,common_name,dns\n\
         alice@example.com,Alice,\n\
         bob@example.com,Robert,\n\
         carol@example.com,Caroline,\n\
         dan@example.com,Dan,dan.other.org\n\
         erin@example.com,Erin,\n",
    );
    let r = ca.ra(&refs(&args));
    r.assert_code(2);
    let err = &r.json()["error"];
    assert_eq!(err["code"], "input_changed", "{r}");
    let msg = err["message"].as_str().expect("message");
    assert!(msg.contains("line 3 (bob@example.com)"), "{msg}");
    assert!(msg.contains("line 4 (carol@example.com)"), "{msg}");
    assert!(
        msg.contains(&format!("serial {}", serials["bob@example.com"])),
        "{msg}"
    );
    assert!(!msg.contains("alice@") && !msg.contains("dan@"), "{msg}");
    assert!(msg.contains("Nothing was issued"), "{msg}");
    assert_eq!(ledger(&ca).len(), 3, "nothing issued");
    assert_eq!(
        std::fs::read(out.join("bob@example.com.pem")).expect("pem"),
        bob_pem,
        "the first certificate's files are untouched"
    );
    // Without --batch-id the edited file is simply another batch.
    let derived = batch(&input, &out, &["--profile", "tls-client"]);
    let r = ca.ra(&refs(&derived));
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "batch_mismatch", "{r}");

    // Rows restored, the refused row fixed (certd refused it before
    // signing, so it may change), a row added: the batch goes on.
    write(
        &input,
        "email,common_name,dns\n\
         alice@example.com,Alice,\n\
         bob@example.com,Bob,\n\
         carol@example.com,Carol,\n\
         dan@example.com,Dan,dan.example.com\n\
         erin@example.com,Erin,\n",
    );
    let r = ca.ra(&refs(&args));
    r.assert_success();
    assert_eq!(
        (&r.json()["already_issued"], &r.json()["issued"]),
        (&3.into(), &2.into()),
        "{r}"
    );
    let now = issued_serials(&out);
    for (e, serial) in &serials {
        assert_eq!(&now[e], serial);
    }
    assert_eq!(ledger(&ca).len(), 5);
    // The journal records the input of every run.
    let hashes: HashSet<String> = journal_entries(&out)
        .iter()
        .filter(|e| e["event"] == "run")
        .filter_map(|e| e["input_sha256"].as_str().map(str::to_string))
        .collect();
    assert_eq!(hashes.len(), 2, "the two inputs that were issued from");
}

#[test]
fn an_input_edited_while_the_batch_runs_stops_before_the_changed_row() {
    const ROWS: usize = 10;
    let (ca, token) = Ca::start_through_fault_module();
    let work = ca.scratch("work");
    let input = work.join("people.csv");
    // Long rows (an ignored column): while the first row's signature is
    // held, ra-cli's second read of the file has read at most four rows
    // (the one being issued, two in the queue of 2 × --jobs rows, one
    // waiting for room in it) and the CSV reader's 8 KiB of read-ahead
    // beyond: less than five rows, and the last row starts nine rows in.
    let notes = "n".repeat(16 * 1024);
    let text = |changed: Option<usize>| {
        let mut t = String::from("email,notes\n");
        for i in 0..ROWS {
            let who = if changed == Some(i) {
                "mallory"
            } else {
                "user"
            };
            t.push_str(&format!("{who}{i:04}@example.com,{notes}\n"));
        }
        t
    };
    std::fs::write(&input, text(None)).expect("csv");
    let emails: Vec<String> = (0..ROWS)
        .map(|i| format!("user{i:04}@example.com"))
        .collect();
    let out = work.join("out");
    let args = batch(&input, &out, &["--jobs", "1", "--ignore-unknown-columns"]);

    let held = hold(&token);
    let child = spawn_patient(&ca, &args);
    held.wait_for(1, &out);
    std::fs::write(&input, text(Some(ROWS - 1))).expect("edit");
    held.release();
    let first = finish(child);
    first.assert_code(2);
    assert_eq!(first.json()["error"]["code"], "input_changed", "{first}");
    let ledger_now = ledger(&ca);
    assert!(
        ledger_now.values().all(|e| !e[0].starts_with("mallory")),
        "the changed row was not sent: {ledger_now:?}"
    );
    assert!(
        !ledger_now.is_empty() && ledger_now.len() < ROWS,
        "the rows before the changed one were issued: {ledger_now:?}"
    );

    std::fs::write(&input, text(None)).expect("restore");
    let second = ca.ra(&refs(&args));
    second.assert_success();
    let kept: HashMap<String, String> = ledger_now
        .into_iter()
        .map(|(serial, e)| (e[0].clone(), serial))
        .collect();
    assert_complete(&ca, &out, &out.join("passwords.csv"), &emails, &kept);
}
