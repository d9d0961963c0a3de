//! End-to-end tests of certd's offline commands: the key ceremony
//! (`init-ca`, `import-ca-cert`) against a real SoftHSM token, read back
//! through PKCS#11, and `check-config`.
#![forbid(unsafe_code)]

use certd_e2e::pkcs11::{self, Contents};
use certd_e2e::{clean_env, run, write_secret, CmdOutput, Token, SOFTHSM_MODULE};
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

const CERTD: &str = env!("CARGO_BIN_EXE_certd");

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// `openssl ARGS…`, whatever its outcome (the callers check it).
fn openssl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> CmdOutput {
    let mut cmd = certd_e2e::tool("openssl");
    for a in args {
        cmd.arg(a);
    }
    run(&mut cmd)
}

/// `certd init-ca` for `key_label` on `token`, writing a root with
/// `--cert-out` or a CSR with `--csr-out`.
fn init_ca(
    token: &Token,
    key_label: &str,
    key_type: &str,
    out_flag: &str,
    out: &Path,
) -> CmdOutput {
    init_ca_with_pin(token, &token.pin_file, key_label, key_type, out_flag, out)
}

fn init_ca_with_pin(
    token: &Token,
    pin_file: &Path,
    key_label: &str,
    key_type: &str,
    out_flag: &str,
    out: &Path,
) -> CmdOutput {
    run(token
        .command(CERTD)
        .args(["init-ca", "--token-label", &token.label])
        .args(["--key-label", key_label, "--key-type", key_type])
        .arg("--pin-file")
        .arg(pin_file)
        .args(["--cn", &format!("e2e {key_label}"), "--o", "certd e2e"])
        .arg(out_flag)
        .arg(out))
}

/// `certd import-ca-cert` of `cert` (and optionally its `chain`) for the
/// key `key_label`, written to `out_dir/imported.pem` (and `chain.pem`).
fn import(
    token: &Token,
    key_label: &str,
    cert: &Path,
    chain: Option<&Path>,
    out_dir: &Path,
) -> CmdOutput {
    let mut cmd = token.command(CERTD);
    cmd.args(["import-ca-cert", "--token-label", &token.label])
        .args(["--key-label", key_label])
        .arg("--pin-file")
        .arg(&token.pin_file)
        .arg("--cert")
        .arg(cert)
        .arg("--cert-out")
        .arg(out_dir.join("imported.pem"));
    if let Some(chain) = chain {
        cmd.arg("--chain")
            .arg(chain)
            .arg("--chain-out")
            .arg(out_dir.join("chain.pem"));
    }
    run(&mut cmd)
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// An openssl-made CA (key and self-signed certificate) named `name`.
fn openssl_ca(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    certd_e2e::api::openssl_ca(dir, name, cn, None)
}

/// Signs `csr` with the openssl CA (`ca_cert`, `ca_key`) using the given
/// extension lines; returns the certificate's path.
fn openssl_sign(dir: &Path, csr: &Path, ca: &(PathBuf, PathBuf), ext: &str, out: &str) -> PathBuf {
    certd_e2e::api::openssl_sign_csr(dir, csr, (&ca.0, &ca.1), ext, out, 20)
}

const SUB_CA_EXT: &str = "basicConstraints=critical,CA:TRUE\n\
                          keyUsage=critical,keyCertSign,cRLSign\n\
                          subjectKeyIdentifier=hash\n\
                          authorityKeyIdentifier=keyid\n";

fn fingerprint(cert: &Path) -> String {
    certd_e2e::api::fingerprint(cert)
}

/// The line after the one containing `heading` in `openssl x509 -text`.
fn text_after<'a>(text: &'a str, heading: &str) -> &'a str {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.contains(heading))
        .unwrap_or_else(|| panic!("no {heading:?} in\n{text}"));
    lines.next().map_or("", str::trim)
}

fn assert_sealed_key(contents: &Contents, key_label: &str, ck_key_type: &str, secret: &str) {
    let labelled = contents.labelled(key_label);
    let mut classes: Vec<&str> = labelled.iter().map(|o| o.class.as_str()).collect();
    classes.sort_unstable();
    assert_eq!(
        classes,
        ["CKO_PRIVATE_KEY", "CKO_PUBLIC_KEY"],
        "the ceremony leaves exactly one key pair labelled {key_label:?}: {contents:#?}"
    );
    let (key, facts) = contents.private_key(key_label);
    assert_eq!(key.key_type.as_deref(), Some(ck_key_type), "{key:#?}");
    assert_eq!(facts.token, Some(true), "CKA_TOKEN: {facts:#?}");
    assert_eq!(facts.private, Some(true), "CKA_PRIVATE: {facts:#?}");
    assert_eq!(facts.sensitive, Some(true), "CKA_SENSITIVE: {facts:#?}");
    assert_eq!(
        facts.extractable,
        Some(false),
        "CKA_EXTRACTABLE: {facts:#?}"
    );
    assert_eq!(
        facts.always_sensitive,
        Some(true),
        "CKA_ALWAYS_SENSITIVE: {facts:#?}"
    );
    assert_eq!(
        facts.never_extractable,
        Some(true),
        "CKA_NEVER_EXTRACTABLE: {facts:#?}"
    );
    assert_eq!(facts.sign, Some(true), "CKA_SIGN: {facts:#?}");
    assert!(
        key.secret(secret).withheld(),
        "{secret} must exist and be withheld: {key:#?}"
    );
    for s in &key.secrets {
        assert_eq!(s.bytes_returned, 0, "{} leaked: {key:#?}", s.attribute);
    }
    let public = labelled
        .iter()
        .find(|o| o.class == "CKO_PUBLIC_KEY")
        .expect("a public key");
    assert_eq!(public.id, key.id, "the pair shares its CKA_ID");
}

/// The whole ceremony for one key type: a strict, self-signed CA
/// certificate and a private key sealed in the token.
fn root_ceremony(key_type: &str, ck_key_type: &str, secret: &str) {
    let dir = tempdir();
    let token = Token::create(dir.path(), "ceremony");
    let cert = dir.path().join("root.pem");
    let out = init_ca(&token, "root", key_type, "--cert-out", &cert);
    out.assert_success();
    assert!(out.stdout.contains("SPKI SHA-256"), "{out}");

    let verify = openssl(&[&"verify", &"-x509_strict", &"-CAfile", &cert, &cert]);
    verify.assert_success();
    assert!(verify.stdout.contains(": OK"), "{verify}");

    let text = openssl(&[&"x509", &"-in", &cert, &"-noout", &"-text"]);
    text.assert_success();
    let text = &text.stdout;
    assert!(text.contains("CN = e2e root"), "{text}");
    assert_eq!(
        text_after(text, "X509v3 Basic Constraints: critical"),
        "CA:TRUE",
        "{text}"
    );
    let usage = text_after(text, "X509v3 Key Usage: critical");
    assert!(
        usage.contains("Certificate Sign") && usage.contains("CRL Sign"),
        "{text}"
    );

    assert_sealed_key(&pkcs11::inspect(&token), "root", ck_key_type, secret);
}

#[test]
fn init_ca_p256_makes_a_strict_root_with_a_sealed_key() {
    root_ceremony("p256", "CKK_EC", "CKA_VALUE");
}

#[test]
fn init_ca_p384_makes_a_strict_root_with_a_sealed_key() {
    root_ceremony("p384", "CKK_EC", "CKA_VALUE");
}

#[test]
fn init_ca_ed25519_makes_a_strict_root_with_a_sealed_key() {
    root_ceremony("ed25519", "CKK_EC_EDWARDS", "CKA_VALUE");
}

#[test]
fn init_ca_rsa2048_makes_a_strict_root_with_a_sealed_key() {
    root_ceremony("rsa2048", "CKK_RSA", "CKA_PRIVATE_EXPONENT");
}

#[test]
fn init_ca_rsa3072_makes_a_strict_root_with_a_sealed_key() {
    root_ceremony("rsa3072", "CKK_RSA", "CKA_PRIVATE_EXPONENT");
}

#[test]
fn init_ca_rsa4096_makes_a_strict_root_with_a_sealed_key() {
    root_ceremony("rsa4096", "CKK_RSA", "CKA_PRIVATE_EXPONENT");
}

/// Re-entry point of the PKCS#11 inspector (see `certd_e2e::pkcs11`);
/// run normally, it shows that the inspector really logs in and would see
/// a key that is not sealed.
#[test]
fn pkcs11_inspector() {
    if pkcs11::serve_if_child() {
        return;
    }
    let dir = tempdir();
    let token = Token::create(dir.path(), "inspector");
    assert_eq!(pkcs11::inspect(&token).objects, []);

    let wrong = dir.path().join("wrong.pin");
    write_secret(&wrong, "not-the-pin");
    let err = pkcs11::inspect_with_pin_file(&token, &wrong).expect_err("a wrong PIN is refused");
    assert!(err.contains("PinIncorrect"), "{err}");

    // Objects another PKCS#11 client made with the protections the
    // ceremony must set switched off: the inspector must report them so.
    let tool = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut cmd = token.command("pkcs11-tool");
        cmd.arg("--module")
            .arg(&token.module)
            .args([
                "--token-label",
                &token.label,
                "--login",
                "--pin",
                "env:E2E_PIN",
            ])
            .env("E2E_PIN", &token.pin);
        for a in args {
            cmd.arg(a);
        }
        run(&mut cmd).assert_success();
    };
    let ec = ["--key-type", "EC:prime256v1"];
    tool(&[
        &"--keypairgen",
        &ec[0],
        &ec[1],
        &"--label",
        &"extractable",
        &"--extractable",
    ]);
    tool(&[
        &"--keypairgen",
        &ec[0],
        &ec[1],
        &"--label",
        &"sealed",
        &"--sensitive",
    ]);
    let der = dir.path().join("imported.der");
    openssl(&[
        &"genpkey",
        &"-algorithm",
        &"EC",
        &"-pkeyopt",
        &"ec_paramgen_curve:P-256",
        &"-outform",
        &"DER",
        &"-out",
        &der,
    ])
    .assert_success();
    tool(&[
        &"--write-object",
        &der,
        &"--type",
        &"privkey",
        &"--label",
        &"imported",
    ]);
    let data = dir.path().join("data.bin");
    write_file(&data, "readable");
    tool(&[
        &"--write-object",
        &data,
        &"--type",
        &"data",
        &"--label",
        &"data",
    ]);

    let contents = pkcs11::inspect(&token);
    let (_, extractable) = contents.private_key("extractable");
    assert_eq!(extractable.extractable, Some(true), "{extractable:#?}");
    assert_eq!(
        extractable.never_extractable,
        Some(false),
        "{extractable:#?}"
    );
    let (_, imported) = contents.private_key("imported");
    assert_eq!(imported.always_sensitive, Some(false), "{imported:#?}");
    assert_eq!(imported.never_extractable, Some(false), "{imported:#?}");
    let (sealed, facts) = contents.private_key("sealed");
    assert_eq!(facts.sensitive, Some(true), "{facts:#?}");
    assert!(sealed.secret("CKA_VALUE").withheld(), "{sealed:#?}");
    // The same reading returns a value that is there to be read.
    let data = contents.labelled("data");
    assert_eq!(data.len(), 1, "{contents:#?}");
    let value = data[0].secret("CKA_VALUE");
    assert_eq!(value.bytes_returned, "readable".len(), "{value:#?}");
    assert!(!value.withheld(), "{value:#?}");
    assert_eq!(contents.labelled("extractable").len(), 2, "{contents:#?}");
}

#[test]
fn csr_signed_by_an_external_parent_is_imported_with_its_chain() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "sub");
    let csr = d.join("sub.csr");
    init_ca(&token, "sub", "p256", "--csr-out", &csr).assert_success();
    let verify = openssl(&[&"req", &"-in", &csr, &"-noout", &"-verify", &"-subject"]);
    verify.assert_success();
    assert!(
        format!("{}{}", verify.stdout, verify.stderr).contains("verify OK"),
        "{verify}"
    );
    assert!(verify.stdout.contains("CN = e2e sub"), "{verify}");

    let parent = openssl_ca(d, "parent", "e2e parent");
    let sub = openssl_sign(d, &csr, &parent, SUB_CA_EXT, "sub.pem");
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).expect("out dir");
    let out = import(&token, "sub", &sub, Some(&parent.0), &out_dir);
    out.assert_success();

    let imported = out_dir.join("imported.pem");
    let chain = out_dir.join("chain.pem");
    assert_eq!(fingerprint(&imported), fingerprint(&sub));
    assert_eq!(fingerprint(&chain), fingerprint(&parent.0));
    let verify = openssl(&[&"verify", &"-x509_strict", &"-CAfile", &chain, &imported]);
    verify.assert_success();
    // Importing touches no key.
    assert_sealed_key(&pkcs11::inspect(&token), "sub", "CKK_EC", "CKA_VALUE");
}

#[test]
fn import_refuses_a_certificate_for_another_key() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "sub");
    let (sub_csr, other_csr) = (d.join("sub.csr"), d.join("other.csr"));
    init_ca(&token, "sub", "p256", "--csr-out", &sub_csr).assert_success();
    init_ca(&token, "other", "p256", "--csr-out", &other_csr).assert_success();
    let parent = openssl_ca(d, "parent", "e2e parent");
    let other = openssl_sign(d, &other_csr, &parent, SUB_CA_EXT, "other.pem");
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).expect("out dir");

    // A CA certificate, properly chained, but for the other key.
    import(&token, "sub", &other, Some(&parent.0), &out_dir).assert_refused("does not match");
    // The parent itself.
    import(&token, "sub", &parent.0, None, &out_dir).assert_refused("does not match");
    assert_eq!(
        std::fs::read_dir(&out_dir).expect("out dir").count(),
        0,
        "a refused import writes nothing"
    );
    // The right key takes it.
    import(&token, "other", &other, Some(&parent.0), &out_dir).assert_success();
}

#[test]
fn import_refuses_a_certificate_that_is_not_a_ca() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "sub");
    let csr = d.join("sub.csr");
    init_ca(&token, "sub", "p256", "--csr-out", &csr).assert_success();
    let parent = openssl_ca(d, "parent", "e2e parent");
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).expect("out dir");

    let leaf = openssl_sign(
        d,
        &csr,
        &parent,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        "leaf.pem",
    );
    import(&token, "sub", &leaf, Some(&parent.0), &out_dir).assert_refused("not a CA certificate");
    let bare = openssl_sign(
        d,
        &csr,
        &parent,
        "keyUsage=critical,digitalSignature\n",
        "bare.pem",
    );
    import(&token, "sub", &bare, Some(&parent.0), &out_dir).assert_refused("not a CA certificate");
    assert_eq!(std::fs::read_dir(&out_dir).expect("out dir").count(), 0);
}

#[test]
fn import_refuses_a_chain_that_did_not_sign_the_certificate() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "sub");
    let csr = d.join("sub.csr");
    init_ca(&token, "sub", "p256", "--csr-out", &csr).assert_success();
    let parent = openssl_ca(d, "parent", "e2e parent");
    // Same name, different key: only the signature tells them apart.
    let impostor = openssl_ca(d, "impostor", "e2e parent");
    let sub = openssl_sign(d, &csr, &parent, SUB_CA_EXT, "sub.pem");
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).expect("out dir");
    import(&token, "sub", &sub, Some(&impostor.0), &out_dir).assert_refused("does not verify");
    assert_eq!(std::fs::read_dir(&out_dir).expect("out dir").count(), 0);
}

#[test]
fn init_ca_refuses_an_existing_key_label_and_leaves_the_token_as_it_was() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "ceremony");
    init_ca(&token, "root", "p256", "--cert-out", &d.join("root.pem")).assert_success();
    init_ca(&token, "other", "p384", "--csr-out", &d.join("other.csr")).assert_success();
    let before = pkcs11::inspect(&token);
    assert_eq!(before.objects.len(), 4, "{before:#?}");

    let again = d.join("again.pem");
    init_ca(&token, "root", "p256", "--cert-out", &again)
        .assert_refused("already holds objects labelled");
    // A different key type under the same label is refused just the same.
    init_ca(
        &token,
        "other",
        "ed25519",
        "--csr-out",
        &d.join("again.csr"),
    )
    .assert_refused("already holds objects labelled");
    assert_eq!(pkcs11::inspect(&token), before);
    assert!(!again.exists() && !d.join("again.csr").exists());
}

#[test]
fn init_ca_with_a_wrong_pin_creates_nothing() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "ceremony");
    let wrong = d.join("wrong.pin");
    write_secret(&wrong, &format!("{}-typo", token.pin));
    let cert = d.join("root.pem");
    init_ca_with_pin(&token, &wrong, "root", "p256", "--cert-out", &cert)
        .assert_refused("refused the PIN");
    assert!(!cert.exists(), "no output file after a refused PIN");
    assert_eq!(pkcs11::inspect(&token).objects, []);
}

#[test]
fn init_ca_refuses_an_unknown_token_label() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "ceremony");
    let cert = d.join("root.pem");
    let out = run(token
        .command(CERTD)
        .args([
            "init-ca",
            "--token-label",
            "no-such-token",
            "--key-label",
            "root",
        ])
        .arg("--pin-file")
        .arg(&token.pin_file)
        .args(["--cn", "e2e root", "--cert-out"])
        .arg(&cert));
    out.assert_refused("no token labelled");
    assert!(out.stderr.contains("no-such-token"), "{out}");
    assert!(!cert.exists());
    assert_eq!(pkcs11::inspect(&token).objects, []);
}

#[test]
fn init_ca_refuses_an_existing_output_file_before_generating_a_key() {
    let dir = tempdir();
    let d = dir.path();
    let token = Token::create(d, "ceremony");
    let cert = d.join("root.pem");
    write_file(&cert, "precious\n");
    init_ca(&token, "root", "rsa2048", "--cert-out", &cert).assert_refused("exists already");
    let csr = d.join("root.csr");
    write_file(&csr, "precious too\n");
    init_ca(&token, "root", "p256", "--csr-out", &csr).assert_refused("exists already");
    assert_eq!(pkcs11::inspect(&token).objects, []);
    assert_eq!(std::fs::read_to_string(&cert).expect("kept"), "precious\n");
    assert_eq!(
        std::fs::read_to_string(&csr).expect("kept"),
        "precious too\n"
    );
}

// --- configuration -----------------------------------------------------------

#[test]
fn every_packaged_example_config_parses() {
    let packaging = certd_e2e::repo_root().join("packaging");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&packaging).expect("packaging/ exists") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = certd::config::Config::load(&path)
                .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
            assert!(
                !config.certifiers.is_empty(),
                "{} configures no certifier",
                path.display()
            );
            found.push(path);
        }
    }
    assert!(
        found.len() >= 2,
        "expected at least two example configs in {}, found {found:?}",
        packaging.display()
    );
}

/// A self-signed CA certificate made by openssl (check-config only reads
/// certificates; no token is involved).
fn config_dir_with_certificates() -> TempDir {
    let dir = tempdir();
    for name in ["root", "issuing"] {
        openssl_ca(dir.path(), name, &format!("e2e {name}"));
    }
    dir
}

fn config_text(extra_certifier_line: &str, second_certificate: &str) -> String {
    format!(
        "[daemon]\n\
         state_dir = \"state\"\n\
         control_socket = \"run/control.sock\"\n\
         \n\
         [hsm]\n\
         module = \"{SOFTHSM_MODULE}\"\n\
         \n\
         [[certifier]]\n\
         name = \"root\"\n\
         token_label = \"t\"\n\
         key_label = \"root\"\n\
         certificate = \"root.pem\"\n\
         {extra_certifier_line}\n\
         \n\
         [[certifier]]\n\
         name = \"issuing\"\n\
         token_label = \"t\"\n\
         key_label = \"issuing\"\n\
         certificate = \"{second_certificate}\"\n"
    )
}

fn check_config(path: &Path) -> CmdOutput {
    run(clean_env(&mut Command::new(CERTD))
        .arg("check-config")
        .arg("--config")
        .arg(path))
}

#[test]
fn check_config_accepts_a_good_config() {
    let dir = config_dir_with_certificates();
    let path = dir.path().join("certd.toml");
    write_file(&path, &config_text("", "issuing.pem"));
    let out = check_config(&path);
    out.assert_success();
    assert!(out.stdout.contains("OK (2 certifiers)"), "{out}");
}

#[test]
fn check_config_names_the_line_and_column_of_an_unknown_key() {
    let dir = config_dir_with_certificates();
    let path = dir.path().join("certd.toml");
    let text = config_text("key_lable = \"typo\"", "issuing.pem");
    let line = text
        .lines()
        .position(|l| l.starts_with("key_lable"))
        .expect("the typo is in the text")
        + 1;
    write_file(&path, &text);
    let out = check_config(&path);
    assert!(!out.status.success(), "{out}");
    let location = format!("{}:{line}:1:", path.display());
    assert!(out.stderr.contains(&location), "want {location}\n{out}");
    assert!(out.stderr.contains("key_lable"), "{out}");
}

#[test]
fn check_config_reports_a_missing_certificate_file() {
    let dir = config_dir_with_certificates();
    let path = dir.path().join("certd.toml");
    write_file(&path, &config_text("", "missing.pem"));
    let out = check_config(&path);
    assert!(!out.status.success(), "{out}");
    let missing = dir.path().join("missing.pem");
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "the message names {}\n{out}",
        missing.display()
    );
}
