//! A token that goes away and comes back: requests fail fast with
//! `certifier_unavailable` while it is gone, health says why, and the
//! daemon recovers by itself (no restart, no re-activation) when it is back;
//! the same `request_id` then succeeds, and nothing was half-recorded.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daemon crate sits in the workspace")
        .to_path_buf()
}

fn env_of(dir: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(dir.join("demo.env"))
        .expect("demo.env")
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(
    env: &std::collections::HashMap<String, String>,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-w",
        "\n%{http_code}",
        "--cacert",
        &env["CERTD_TLS_CA"],
    ])
    .args([
        "--cert",
        &env["RA_CLIENT_CERT"],
        "--key",
        &env["RA_CLIENT_KEY"],
    ]);
    if let Some(b) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            &b.to_string(),
        ]);
    }
    let out = cmd
        .arg(format!("{}{path}", env["CERTD_URL"]))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status"),
        serde_json::from_str(json).unwrap_or(Value::Null),
    )
}

fn wait_for_state(env: &std::collections::HashMap<String, String>, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = curl(env, "/v1/health", None);
        if health["certifiers"][0]["state"] == want {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "certifier never became {want}: {health}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_token_that_comes_back_is_used_again_without_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ca");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let setup = Command::new(repo().join("demo"))
        .args([
            "--setup-only",
            "--debug-build",
            "--port",
            &port.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("demo runs");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let env = env_of(&dir);
    let certd = env!("CARGO_BIN_EXE_certd");
    let log = std::fs::File::create(dir.join("certd.log")).expect("log");
    let _d = Daemon(
        Command::new(certd)
            .args(["run", "--config", &env["CERTD_CONFIG"]])
            .env("SOFTHSM2_CONF", &env["SOFTHSM2_CONF"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("certd starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(&env["CERTD_CONTROL_SOCKET"]).is_err() {
        assert!(Instant::now() < deadline, "certd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let act = Command::new(certd)
        .args([
            "activate",
            "--socket",
            &env["CERTD_CONTROL_SOCKET"],
            "--pin-file",
            &env["PIN_FILE"],
        ])
        .output()
        .expect("activate");
    assert!(
        act.status.success(),
        "{}",
        String::from_utf8_lossy(&act.stderr)
    );

    let key = dir.join("sub.key");
    let csr = dir.join("sub.csr");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=back.example.com",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("openssl");
    assert!(ok.status.success());
    let request = serde_json::json!({
        "request_id": "recovery-1",
        "profile": "tls-server",
        "csr": std::fs::read_to_string(&csr).expect("csr"),
    });

    // The token goes away.
    let tokens = dir.join("hsm/tokens");
    let away = dir.join("hsm/tokens.away");
    std::fs::rename(&tokens, &away).expect("move the token away");
    let (status, body) = curl(&env, "/v1/certificates", Some(&request));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "certifier_unavailable", "{body}");
    let health = wait_for_state(&env, "unavailable");
    assert_eq!(health["status"], "degraded");
    assert!(health["certifiers"][0]["reason"].is_string(), "{health}");
    let (status, body) = curl(&env, "/v1/certificates", Some(&request));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("certifier_unavailable")),
        "{body}"
    );

    // It comes back: the daemon logs in again by itself.
    std::fs::rename(&away, &tokens).expect("bring the token back");
    wait_for_state(&env, "active");
    let (status, body) = curl(&env, "/v1/certificates", Some(&request));
    assert_eq!(status, 201, "{body}");
    let serial = body["serial"].as_str().expect("serial").to_string();
    // The same request again is a replay of that certificate.
    let (status, again) = curl(&env, "/v1/certificates", Some(&request));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["serial"], serial.as_str());

    let st = Command::new(certd)
        .args(["status", "--json", "--socket", &env["CERTD_CONTROL_SOCKET"]])
        .output()
        .expect("status");
    let st: Value = serde_json::from_slice(&st.stdout).expect("status json");
    assert_eq!(st["certificates"].as_array().map(Vec::len), None);
    assert_eq!(st["certifiers"][0]["certificates_issued"], 1, "{st}");
    assert_eq!(st["certifiers"][0]["last_serial"], serial.as_str(), "{st}");
    let verify = Command::new(certd)
        .args(["verify-audit", "--config", &env["CERTD_CONFIG"]])
        .output()
        .expect("verify-audit");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
