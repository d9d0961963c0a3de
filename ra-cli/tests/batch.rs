//! End-to-end tests of `ra-cli batch issue` against a real certd (real
//! SoftHSM token, real mutual TLS): mixed rows with a bad one (dry run,
//! refusal, `--skip-invalid`), PKCS#12 files opened by `openssl pkcs12`,
//! every kind of bad input, and the checks made before the first request.
//! Failures part-way and resumes are in `resume.rs`.
#![forbid(unsafe_code)]

mod common;

use certd_e2e::api::{make_csr, make_key, openssl, KeyAlg};
use certd_e2e::{run, tool, CmdOutput};
use common::{read_csv, Ca, CERTIFIER};
use std::collections::HashSet;
use std::path::Path;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn serials(ca: &Ca) -> Vec<String> {
    let l = ca.ra(&["--json", "list"]);
    l.assert_success();
    l.json()
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["serial"].as_str().expect("serial").to_string())
        .collect()
}

fn files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn mixed_rows_dry_run_skip_invalid_and_pkcs12() {
    let ca = Ca::start(true);
    let work = ca.scratch("work");
    let carol = make_key(&work, "carol", KeyAlg::P256);
    make_csr(
        &work,
        "carol",
        &carol,
        "/CN=carol@example.com",
        &["email:carol@example.com"],
    );
    let input = work.join("people.csv");
    std::fs::write(
        &input,
        "email,common_name,organizational_unit,dns,csr\n\
         alice@example.com,,,,\n\
         Bob@Example.com,bob@example.com,,,\n\
         not-an-address,,,,\n\
         carol@example.com,,,,carol.csr\n\
         dave@example.com,dave@example.com,,,\n",
    )
    .expect("csv");
    let out = work.join("out");

    // Dry run: the bad row by its line, nothing written, exit 1.
    let d = ca.ra(&["batch", "issue", "--input", &s(&input), "--dry-run"]);
    // The summary, invalid rows included, is on standard output whatever
    // the outcome.
    d.assert_code(1)
        .assert_stdout_has("line 4:")
        .assert_stdout_has("not-an-address");
    assert!(d.stdout.contains("5 row(s), 4 valid, 1 invalid"), "{d}");
    let j = ca.ra(&[
        "--json",
        "batch",
        "issue",
        "--input",
        &s(&input),
        "--dry-run",
    ]);
    assert_eq!(j.json()["invalid"][0]["line"], 4, "{j}");

    // Without --skip-invalid nothing is issued.
    ca.ra(&["batch", "issue", "--input", &s(&input), "--out", &s(&out)])
        .assert_code(1)
        .assert_stdout_has("nothing was issued");
    assert!(serials(&ca).is_empty());
    assert!(!out.join("alice@example.com.pem").exists());

    // --skip-invalid issues the rest; the bad row is reported as skipped.
    let r = ca.ra(&[
        "--json",
        "batch",
        "issue",
        "--input",
        &s(&input),
        "--out",
        &s(&out),
        "--skip-invalid",
        "--jobs",
        "3",
    ]);
    r.assert_code(1);
    let sum = r.json();
    assert_eq!(
        (
            sum["issued"].as_u64(),
            sum["skipped"].as_u64(),
            sum["failed"].as_u64()
        ),
        (Some(4), Some(1), Some(0)),
        "{r}"
    );
    let report = read_csv(&out.join("report.csv"));
    let status: Vec<(&str, &str)> = report
        .iter()
        .map(|l| (l["line"].as_str(), l["status"].as_str()))
        .collect();
    assert_eq!(
        status,
        vec![
            ("2", "issued"),
            ("3", "issued"),
            ("4", "skipped"),
            ("5", "issued"),
            ("6", "issued")
        ]
    );
    assert_eq!(report[2]["error_code"], "invalid_row");
    assert_eq!(report[1]["email"], "Bob@example.com");
    let ledger: HashSet<String> = serials(&ca).into_iter().collect();
    assert_eq!(ledger.len(), 4);
    for l in report.iter().filter(|l| l["status"] == "issued") {
        assert!(ledger.contains(&l["serial"]), "{:?}", l);
    }

    // Certificates verify; the CSR row has no PKCS#12; the others open
    // with their generated passwords and hold key + chain.
    for e in [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ] {
        openssl(&[
            &"verify",
            &"-CAfile",
            &ca.env.get("CA_CERT"),
            &out.join(format!("{e}.pem")),
        ]);
    }
    assert!(!out.join("carol@example.com.p12").exists());
    let pw_path = out.join("passwords.csv");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&pw_path).expect("pw").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let passwords = read_csv(&pw_path);
    assert_eq!(passwords.len(), 3, "{passwords:?}");
    for p in &passwords {
        let pw = work.join("one.pw");
        std::fs::write(&pw, &p["password"]).expect("pw");
        let p12 = s(&out.join(&p["file"]));
        let pass = format!("file:{}", s(&pw));
        openssl(&[
            &"pkcs12", &"-info", &"-noout", &"-in", &p12, &"-passin", &pass,
        ])
        .assert_stderr_has("AES-256-CBC");
        let dump = openssl(&[&"pkcs12", &"-in", &p12, &"-passin", &pass, &"-nodes"]);
        assert!(dump.stdout.contains("BEGIN PRIVATE KEY"), "{dump}");
        assert_eq!(
            dump.stdout.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf + root\n{dump}"
        );
        assert!(
            dump.stdout.to_ascii_lowercase().contains(&format!(
                "friendlyname: {}",
                p["email"].to_ascii_lowercase()
            )),
            "{dump}"
        );
        // The key in the file belongs to the certificate in it.
        let key = openssl(&[
            &"pkcs12",
            &"-in",
            &p12,
            &"-passin",
            &pass,
            &"-nodes",
            &"-nocerts",
        ]);
        let cert = openssl(&[
            &"pkcs12",
            &"-in",
            &p12,
            &"-passin",
            &pass,
            &"-nokeys",
            &"-clcerts",
        ]);
        std::fs::write(work.join("k.pem"), &key.stdout).expect("k");
        std::fs::write(work.join("c.pem"), &cert.stdout).expect("c");
        let kp = openssl(&[&"pkey", &"-in", &s(&work.join("k.pem")), &"-pubout"]);
        let cp = openssl(&[
            &"x509",
            &"-in",
            &s(&work.join("c.pem")),
            &"-noout",
            &"-pubkey",
        ]);
        assert_eq!(kp.stdout, cp.stdout);
    }
    // Nothing unencrypted: no private key PEM anywhere in the output.
    for e in std::fs::read_dir(&out).expect("out").flatten() {
        let bytes = std::fs::read(e.path()).expect("read");
        assert!(
            !String::from_utf8_lossy(&bytes).contains("BEGIN PRIVATE KEY"),
            "{:?}",
            e.path()
        );
    }

    // Re-running issues nothing new.
    let again = ca.ra(&[
        "--json",
        "batch",
        "issue",
        "--input",
        &s(&input),
        "--out",
        &s(&out),
        "--skip-invalid",
    ]);
    assert_eq!(again.json()["already_issued"], 4, "{again}");
    assert_eq!(again.json()["issued"], 0);
    assert_eq!(serials(&ca).len(), 4);

    // A TLS client batch with names and one password for all; the
    // validity is clamped and the report says so.
    let clients = work.join("clients.csv");
    std::fs::write(
        &clients,
        "email,common_name,organizational_unit,dns,phone\n\
         erin@example.com,Erin Example,Finance,,123\n\
         frank@example.com,Frank Example,,frank.example.com,456\n",
    )
    .expect("csv");
    std::fs::write(work.join("batch.pw"), "s3cret batch\n").expect("pw");
    let out2 = work.join("out2");
    ca.ra(&[
        "batch",
        "issue",
        "--input",
        &s(&clients),
        "--out",
        &s(&out2),
        "--profile",
        "tls-client",
    ])
    .assert_code(2)
    .assert_stderr_has("phone");
    let r = ca.ra(&[
        "batch",
        "issue",
        "--input",
        &s(&clients),
        "--out",
        &s(&out2),
        "--profile",
        "tls-client",
        "--ignore-unknown-columns",
        "--p12-password-file",
        &s(&work.join("batch.pw")),
        "--days",
        "3000",
        "--key-type",
        "p384",
        "--progress",
        "plain",
    ]);
    r.assert_success();
    assert!(r.stdout.contains("issued 2"), "{r}");
    let report = read_csv(&out2.join("report.csv"));
    assert!(
        report.iter().all(|l| l["not_after_clamped"] == "true"),
        "{report:?}"
    );
    assert!(!out2.join("passwords.csv").exists());
    let pass = format!("file:{}", s(&work.join("batch.pw")));
    let dump = openssl(&[
        &"pkcs12",
        &"-in",
        &s(&out2.join("erin@example.com.p12")),
        &"-passin",
        &pass,
        &"-nokeys",
        &"-clcerts",
    ]);
    assert!(
        dump.stdout.contains("CN=Erin Example") || dump.stdout.contains("CN = Erin Example"),
        "{dump}"
    );
    assert!(dump.stdout.contains("Finance"), "{dump}");
}

#[test]
fn bad_input_is_reported_clearly() {
    let ca = Ca::start(true);
    let work = ca.scratch("work");
    let csv = |name: &str, text: &str| {
        let p = work.join(name);
        std::fs::write(&p, text).expect("csv");
        s(&p)
    };
    let out = s(&work.join("out"));
    let batch = |input: &str, extra: &[&str]| {
        let mut a = vec!["batch", "issue", "--input", input, "--out", &out];
        a.extend_from_slice(extra);
        ca.ra(&a)
    };

    // File-level problems: exit 2.
    batch(&csv("empty.csv", ""), &[])
        .assert_code(2)
        .assert_stderr_has("is empty");
    batch(
        &csv("noheader.csv", "alice@example.com,alice@example.com\n"),
        &[],
    )
    .assert_code(2)
    .assert_stderr_has("not a header");
    batch(
        &csv("noemail.csv", "name,common_name\nA,a@example.com\n"),
        &["--ignore-unknown-columns"],
    )
    .assert_code(2)
    .assert_stderr_has("no email column");
    batch(&csv("onlyheader.csv", "email,common_name\n"), &[])
        .assert_code(2)
        .assert_stderr_has("no rows");
    batch(&s(&work.join("nonexistent.csv")), &[])
        .assert_code(2)
        .assert_stderr_has("nonexistent.csv");

    // Row problems, each with its line: exit 1, nothing issued.
    for (name, subject) in [
        ("good", "/CN=gina@example.com"),
        ("mismatch", "/CN=someone-else@example.com"),
    ] {
        make_csr(
            &work,
            name,
            &make_key(&work, name, KeyAlg::P256),
            subject,
            &[],
        );
    }
    std::fs::create_dir_all(work.join("adir.csr")).expect("dir");
    let rows = csv(
        "rows.csv",
        "email,common_name,csr\n\
         gina@example.com,,good.csr\n\
         GINA@example.com,,\n\
         hal@@example.com,,\n\
         ivy@exa mple.com,,\n\
         jo@example.com,,missing.csr\n\
         kim@example.com,,adir.csr\n\
         lee@example.com,,mismatch.csr\n\
         mo@example.com,Mo Person,\n\
         ok@example.com,,\n",
    );
    let d = ca.ra(&["batch", "issue", "--input", &rows, "--dry-run"]);
    d.assert_code(1);
    for (line, what) in [
        (3, "duplicate email GINA@example.com: already on line 2"),
        (4, "hal@@example.com"),
        (5, "ivy@exa mple.com"),
        (6, "does not exist"),
        (7, "cannot be read"),
        (8, "does not match this row"),
        (9, "only the email"),
    ] {
        assert!(
            d.stdout.contains(&format!("line {line}: ")),
            "line {line}\n{d}"
        );
        let l = d
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("line {line}: ")))
            .unwrap_or_default();
        assert!(l.contains(what), "line {line} should say {what:?}: {l}");
    }
    assert!(
        !d.stdout.contains("line 2:") && !d.stdout.contains("line 10:"),
        "{d}"
    );
    batch(&rows, &[])
        .assert_code(1)
        .assert_stdout_has("nothing was issued");
    assert!(!work.join("out").exists());

    // DNS names are checked for host profiles.
    let hosts = csv(
        "hosts.csv",
        "email,common_name,dns\nops@example.com,www.example.com,www.example.com;api.example.com\nops2@example.com,,bad_name.example.com\nops3@example.com,,\n",
    );
    let d = ca.ra(&[
        "batch",
        "issue",
        "--input",
        &hosts,
        "--profile",
        "tls-server",
        "--dry-run",
    ]);
    d.assert_code(1)
        .assert_stdout_has("line 3: DNS name \"bad_name.example.com\"")
        .assert_stdout_has("line 4: ");

    // Output directory not writable (a file is in the way).
    let good = csv("good.csv", "email,common_name\nok@example.com,\n");
    std::fs::write(work.join("blocker"), "x").expect("file");
    ca.ra(&[
        "batch",
        "issue",
        "--input",
        &good,
        "--out",
        &s(&work.join("blocker/out")),
    ])
    .assert_code(2)
    .assert_stderr_has("cannot create the output directory");

    // Unknown profile, key type the run cannot use: usage errors.
    batch(&good, &["--profile", "nope"])
        .assert_code(2)
        .assert_stderr_has("not one this RA may use");
    batch(&good, &["--expires", "2001-01-01"])
        .assert_code(2)
        .assert_stderr_has("past");

    // certd down: nothing listens on port 1 (below 1024, so no test's
    // socket is ever given it, and none binds it).
    let down = ca.config_variant("down.toml", ca.env.get("CERTD_URL"), "https://127.0.0.1:1");
    ca.ra_with(&down, &["batch", "issue", "--input", &good, "--out", &out])
        .assert_code(1)
        .assert_stderr_has("cannot reach certd");
    // A dry run still checks the syntax without certd.
    ca.ra_with(&down, &["batch", "issue", "--input", &rows, "--dry-run"])
        .assert_code(1)
        .assert_stdout_has("line 4: ")
        .assert_stdout_has("syntax only");

    // Credential not on the allowlist.
    let stranger = ca.config_presenting("stranger.toml", &ca.certd.ca.tls.client("stranger"));
    ca.ra_with(
        &stranger,
        &["batch", "issue", "--input", &good, "--out", &out],
    )
    .assert_code(1)
    .assert_stderr_has("allowlist");

    // certd locked: refused before anything is sent.
    ca.certd.deactivate(CERTIFIER);
    ca.ra(&["batch", "issue", "--input", &good, "--out", &out])
        .assert_code(1)
        .assert_stderr_has("certifier_locked");
    assert_eq!(files(&work.join("out"), ".pem"), 0);
    ca.certd.activate(CERTIFIER);
    assert!(
        serials(&ca).is_empty(),
        "nothing was issued by any of the above"
    );

    // A journal of another batch is not mixed up with this one.
    ca.ra(&["batch", "issue", "--input", &good, "--out", &out])
        .assert_success();
    let other = csv(
        "other.csv",
        "email,common_name\nok@example.com,\nnew@example.com,\n",
    );
    ca.ra(&["batch", "issue", "--input", &other, "--out", &out])
        .assert_code(2)
        .assert_stderr_has("holds another batch");
    assert_eq!(serials(&ca).len(), 1);
}

#[test]
fn everything_is_checked_before_the_first_request() {
    let ca = Ca::start(true);
    let work = ca.scratch("work");
    let input = work.join("people.csv");
    // Only the email column: enough for an S/MIME profile.
    std::fs::write(&input, "email\nann@example.com\nben@example.com\n").expect("csv");
    let out = work.join("out");
    let batch = |extra: &[&str]| {
        let mut a = vec!["batch", "issue", "--input", input.to_str().expect("utf-8")];
        a.extend(["--out", out.to_str().expect("utf-8")]);
        a.extend_from_slice(extra);
        ca.ra(&a)
    };
    let nothing_done = |r: &CmdOutput| {
        assert!(serials(&ca).is_empty(), "nothing issued: {r}");
        assert!(!out.exists(), "no output directory: {r}");
    };

    // Option values, each refused with its code; with --json the error is
    // one JSON document on standard output and standard error stays empty.
    let r = batch(&["--json", "--p12-iterations", "10"]);
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "usage", "{r}");
    assert!(r.stderr.is_empty(), "{r}");
    nothing_done(&r);
    let r = batch(&["--json", "--key-type", "ed25519"]);
    r.assert_code(2);
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("p256, p384, rsa2048, rsa3072"), "{r}");
    let missing = s(&work.join("missing.pw"));
    let r = batch(&["--json", "--p12-password-file", &missing]);
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "usage", "{r}");
    assert!(r.stdout.contains("missing.pw"), "{r}");
    nothing_done(&r);
    batch(&["--profile", "nope"])
        .assert_code(2)
        .assert_stderr_has("not one this RA may use");
    let r = batch(&["--json", "--profile", "nope"]);
    assert_eq!(r.json()["error"]["code"], "profile_not_permitted", "{r}");
    let r = batch(&["--json", "--certifier", "other-root"]);
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "certifier_not_permitted", "{r}");
    nothing_done(&r);
    // Without --json the error is text on standard error.
    let r = batch(&["--certifier", "other-root"]);
    r.assert_code(2).assert_stderr_has("other-root");
    assert!(r.stdout.is_empty(), "{r}");

    // A key type the profile does not allow (as certd says).
    ca.certd.ca.edit_config(
        "name = \"smime-mailbox\"\nkind = \"smime-mailbox\"\n",
        "name = \"smime-mailbox\"\nkind = \"smime-mailbox\"\nkey_types = [\"p384\"]\n",
    );
    ca.certd.ctl(&["reload"]).assert_success();
    let r = batch(&["--json"]);
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "key_not_permitted", "{r}");
    assert!(r.stdout.contains("allowed: p384"), "{r}");
    nothing_done(&r);

    // Passwords elsewhere: mode 0600, none in the output directory; a
    // resume keeps that file.
    let secrets = ca.scratch("secrets");
    let pw = secrets.join("batch-pw.csv");
    let r = batch(&["--key-type", "p384", "--passwords-out", &s(&pw)]);
    r.assert_success()
        .assert_stdout_has(&format!("passwords: {}", s(&pw)));
    assert!(!out.join("passwords.csv").exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&pw).expect("pw").permissions())
            & 0o777;
    assert_eq!(mode, 0o600);
    let lines = read_csv(&pw);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let one = work.join("one.pw");
        std::fs::write(&one, &l["password"]).expect("pw");
        openssl(&[
            &"pkcs12",
            &"-in",
            &s(&out.join(&l["file"])),
            &"-passin",
            &format!("file:{}", s(&one)),
            &"-nokeys",
        ]);
    }
    let other = s(&secrets.join("other.csv"));
    let r = batch(&["--json", "--key-type", "p384", "--passwords-out", &other]);
    r.assert_code(2);
    assert_eq!(r.json()["error"]["code"], "batch_mismatch", "{r}");
    let r = batch(&["--json", "--key-type", "p384"]);
    r.assert_success();
    assert_eq!(r.json()["already_issued"], 2, "{r}");
    assert_eq!(r.json()["passwords"], s(&pw).as_str());
    assert_eq!(serials(&ca).len(), 2);
}

#[test]
fn enumerated_options_list_their_values() {
    let help = run(tool(common::RA_CLI).args(["batch", "issue", "--help"]));
    help.assert_success();
    for v in [
        "p256", "p384", "rsa2048", "rsa3072", "auto", "bar", "plain", "off",
    ] {
        assert!(help.stdout.contains(v), "{v}\n{help}");
    }
    let help = run(tool(common::RA_CLI).args(["issue", "--help"]));
    for v in ["pem", "der", "p7b", "p12"] {
        assert!(help.stdout.contains(v), "{v}\n{help}");
    }
    let help = run(tool(common::RA_CLI).args(["list", "--help"]));
    assert!(
        help.stdout.contains("valid") && help.stdout.contains("revoked"),
        "{help}"
    );
    let r = run(tool(common::RA_CLI).args(["--json", "list", "--status", "expired"]));
    r.assert_code(2);
    let j = r.json();
    assert_eq!(j["error"]["code"], "usage", "{r}");
    assert!(j["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("revoked"));
}

/// Twenty named people of Example Corp on the demo's sponsor-validated
/// S/MIME profile, vouched for by an officer: every one issued, each
/// certificate naming the person and the organization, every PKCS#12
/// opened with its password.
#[test]
fn twenty_named_people_get_sponsor_validated_certificates() {
    let ca = Ca::start(true);
    let work = ca.scratch("work");
    let given = [
        "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Klara",
        "Leon", "Mia", "Noah", "Olga", "Paul", "Rosa", "Simon", "Tara", "Umar",
    ];
    let mut csv = String::from("email,given_name,surname\n");
    for (i, g) in given.iter().enumerate() {
        csv.push_str(&format!(
            "{}@example.com,{g},Muster{i}\n",
            g.to_ascii_lowercase()
        ));
    }
    let input = work.join("staff.csv");
    std::fs::write(&input, csv).expect("csv");
    let out = work.join("out");
    let at = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a time");
    let args = |extra: &[&str]| -> Vec<String> {
        ["--json", "batch", "issue", "--input"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let ra = |a: Vec<String>| ca.ra(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let input_s = s(&input);
    let out_s = s(&out);
    // Without the officer's word nothing is sent: the profile requires
    // evidence, and ra-cli says so before the first request.
    let refused = ra(args(&[
        &input_s,
        "--out",
        &s(&work.join("refused")),
        "--profile",
        "smime-sponsor",
        "--organization",
        "Example Corp",
        "--organization-identifier",
        "VATDE-123456789",
    ]));
    refused.assert_code(2);
    assert!(refused.stdout.contains("--attested-by"), "{refused}");
    assert!(serials(&ca).is_empty(), "nothing issued without evidence");
    assert!(!work.join("refused").join("report.csv").exists());

    let r = ra(args(&[
        &input_s,
        "--out",
        &out_s,
        "--profile",
        "smime-sponsor",
        "--organization",
        "Example Corp",
        "--organization-identifier",
        "VATDE-123456789",
        "--country",
        "DE",
        "--attested-by",
        "officer-1",
        "--attested-at",
        &at,
    ]));
    r.assert_success();
    assert_eq!(r.json()["issued"], 20, "{r}");
    assert_eq!(serials(&ca).len(), 20);
    assert_eq!(files(&out, ".p12"), 20);
    let passwords: std::collections::HashMap<String, String> = read_csv(&out.join("passwords.csv"))
        .into_iter()
        .map(|l| (l["file"].clone(), l["password"].clone()))
        .collect();
    for (i, g) in given.iter().enumerate() {
        let file = format!("{}@example.com.p12", g.to_ascii_lowercase());
        let pw = work.join(format!("{i}.pw"));
        std::fs::write(
            &pw,
            passwords
                .get(&file)
                .unwrap_or_else(|| panic!("{file}: {passwords:?}")),
        )
        .expect("pw");
        let dump = openssl(&[
            &"pkcs12",
            &"-in",
            &s(&out.join(&file)),
            &"-passin",
            &format!("file:{}", s(&pw)),
            &"-nokeys",
            &"-clcerts",
        ]);
        let surname = format!("Muster{i}");
        for want in [*g, surname.as_str(), "Example Corp", "VATDE-123456789"] {
            assert!(dump.stdout.contains(want), "{file}: {want} in\n{dump}");
        }
    }
}
