//! ra-web in end-to-end tests: the real `ra-web` binary beside a demo CA
//! ([`WebCa`]), on sockets the test binds and passes the way systemd does
//! (ready at its `READY=1`); a cookie-keeping `curl` session for checks on
//! status codes and headers ([`WebSession`]); and a real headless Chromium
//! driven over WebDriver ([`Browser`]), which trusts the demo's TLS
//! infrastructure CA through an NSS database of its own.

pub use fantoccini;

use crate::api::{ApiCa, ApiDaemon, Curl, CurlReply};
use crate::ready::{Notified, START_LIMIT};
use crate::{clean_env, run, tool, ApiSocket, ChildGuard, DemoEnv, NotifySocket};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The demo's certifier.
pub const CERTIFIER: &str = "demo-root";

/// A demo CA with certd running and its certifier active, and ra-web
/// started beside it on its https and http sockets. Dropping it stops
/// ra-web, then certd, then removes the files.
pub struct WebCa {
    /// ra-web's process.
    pub ra_web: ChildGuard,
    /// certd.
    pub certd: ApiDaemon,
    /// The demo's `demo.env`.
    pub env: DemoEnv,
    /// ra-web's staff application, `https://127.0.0.1:PORT`.
    pub url: String,
    /// ra-web's publication listener, `http://127.0.0.1:PORT`.
    pub publication: String,
    /// ra-web's metrics, `http://127.0.0.1:PORT/metrics` (a socket named
    /// `metrics` is passed to it).
    pub metrics_url: String,
    /// ra-web's log.
    pub log: PathBuf,
    https: ApiSocket,
    http: ApiSocket,
    metrics: ApiSocket,
    /// Everything of this CA.
    pub dir: tempfile::TempDir,
}

/// ra-web's state directory in the demo (`state` beside its configuration).
pub fn state_dir(env: &DemoEnv) -> PathBuf {
    env.path("RA_WEB_CONFIG")
        .parent()
        .map(|d| d.join("state"))
        .expect("ra-web's configuration is in a directory")
}

/// Reads a log file for a panic message.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl WebCa {
    /// Sets up the demo with ra-web's ports on sockets bound here, starts
    /// certd, activates the demo certifier and starts ra-web.
    pub fn start() -> WebCa {
        WebCa::start_with(|_| {})
    }

    /// [`WebCa::start`], running `before_ra_web` with the demo's
    /// environment before ra-web starts (its store holds the admin account
    /// by then): tests edit ra-web's configuration there, benchmarks fill
    /// its store ([`state_dir`]).
    pub fn start_with(before_ra_web: impl FnOnce(&DemoEnv)) -> WebCa {
        WebCa::start_inner(before_ra_web, false).0
    }

    /// [`WebCa::start`] with certd reaching the token through the
    /// fault-injecting PKCS#11 module (mode `pass`), so a test can hold
    /// certd's `C_Sign` ([`crate::fault::FaultMode::Stall`]). Returns once
    /// the CRL certd signs at activation is signed: the next signature is a
    /// certificate's. Also returns the module's control and its count file.
    pub fn start_through_fault_module() -> (WebCa, crate::fault::FaultControl, PathBuf) {
        let (ca, fault) = WebCa::start_inner(|_| {}, true);
        let (control, count) = fault.expect("the fault module is in use");
        (ca, control, count)
    }

    #[allow(clippy::type_complexity)]
    fn start_inner(
        before_ra_web: impl FnOnce(&DemoEnv),
        faulty: bool,
    ) -> (WebCa, Option<(crate::fault::FaultControl, PathBuf)>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let https = ApiSocket::bind();
        let http = ApiSocket::bind();
        let metrics = ApiSocket::bind();
        let ca_dir = dir.path().join("ca");
        let api = ApiCa::from_demo_with(
            &ca_dir,
            &crate::bin("certd"),
            &[
                "--web-port",
                &https.port().to_string(),
                "--publication-port",
                &http.port().to_string(),
            ],
        );
        let (certd, fault) = if faulty {
            api.edit_config(
                &format!("module = {:?}", api.token.module.display().to_string()),
                &format!(
                    "module = {:?}",
                    crate::fault::fault_module().display().to_string()
                ),
            );
            api.check_config();
            let control = crate::fault::FaultControl::new(&ca_dir);
            let count = ca_dir.join("faults.log");
            let env = crate::fault::env_for(&control, &count);
            let env: Vec<(&str, &std::ffi::OsStr)> = env
                .iter()
                .map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v.as_str())))
                .collect();
            (api.start_with_env(&env), Some((control, count)))
        } else {
            (api.start(), None)
        };
        certd.activate(CERTIFIER);
        if faulty {
            crate::poll_until(
                START_LIMIT,
                "the CRL certd signs at activation",
                || (!certd.audit_of("crl_issued").is_empty()).then_some(()),
                || certd.log(),
            );
        }
        let env = DemoEnv::read(&ca_dir.join("demo.env"));
        let log = dir.path().join("ra-web.log");
        before_ra_web(&env);
        let ra_web = WebCa::spawn(&env, &[&https, &http, &metrics], &log, dir.path());
        let ca = WebCa {
            ra_web,
            certd,
            url: https.url(),
            publication: format!("http://127.0.0.1:{}", http.port()),
            metrics_url: format!("http://127.0.0.1:{}/metrics", metrics.port()),
            env,
            log,
            https,
            http,
            metrics,
            dir,
        };
        (ca, fault)
    }

    /// Kills ra-web (SIGKILL: no shutdown of any kind).
    pub fn kill_ra_web(&mut self) {
        self.ra_web.kill();
    }

    /// Starts ra-web again on the same sockets and store (after
    /// [`WebCa::kill_ra_web`]).
    pub fn start_ra_web(&mut self) {
        self.ra_web = WebCa::spawn(
            &self.env,
            &[&self.https, &self.http, &self.metrics],
            &self.log,
            self.dir.path(),
        );
    }

    /// Starts ra-web on `sockets`: https, http and metrics.
    fn spawn(env: &DemoEnv, sockets: &[&ApiSocket; 3], log_path: &Path, dir: &Path) -> ChildGuard {
        let [https, http, metrics] = *sockets;
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("a second handle on the log");
        let notify = NotifySocket::bind(&dir.join("ra-web-notify.sock"));
        let mut cmd = Command::new(crate::bin("ra-web"));
        clean_env(&mut cmd)
            .arg("run")
            .arg("--config")
            .arg(env.path("RA_WEB_CONFIG"))
            .env("NOTIFY_SOCKET", notify.path())
            .env("RA_WEB_LOG", "info,ra_web=debug")
            .env("RA_WEB_TEST_CLOCK_OFFSET_FILE", dir.join("clock-offset"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        ApiSocket::pass_all(
            &mut cmd,
            &[(https, "https"), (http, "http"), (metrics, "metrics")],
        );
        let mut child = ChildGuard::spawn(&mut cmd);
        let mut seen = Vec::new();
        match notify.wait_for("READY=1", &mut child, START_LIMIT, &mut seen, || {
            read_log(log_path)
        }) {
            Notified::Sent(_) => child,
            Notified::Exited(status) => panic!(
                "ra-web exited ({status}) before it was ready\n{}",
                read_log(log_path)
            ),
        }
    }

    /// Stops ra-web (SIGTERM) and starts it again on the same sockets and
    /// store.
    pub fn restart_ra_web(&mut self) {
        self.ra_web.signal(rustix::process::Signal::TERM);
        self.ra_web.wait_exit(START_LIMIT, || read_log(&self.log));
        self.ra_web = WebCa::spawn(
            &self.env,
            &[&self.https, &self.http, &self.metrics],
            &self.log,
            self.dir.path(),
        );
    }

    /// Moves ra-web's clock `seconds` ahead of the real time (debug builds
    /// of ra-web read the offset on every reading: no restart, no sleep).
    pub fn set_clock_offset(&self, seconds: i64) {
        let p = self.dir.path().join("clock-offset");
        std::fs::write(&p, seconds.to_string()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// The admin's user name and password.
    pub fn admin(&self) -> (String, String) {
        let password = std::fs::read_to_string(self.env.path("RA_WEB_ADMIN_PASSWORD_FILE"))
            .expect("the admin password file");
        (
            self.env.get("RA_WEB_ADMIN_USER").to_string(),
            password.trim().to_string(),
        )
    }

    /// The demo's TLS infrastructure CA (it signed ra-web's certificate).
    pub fn tls_ca(&self) -> PathBuf {
        self.env.path("CERTD_TLS_CA")
    }

    /// A new `curl` session (its own cookie jar) with the staff application.
    pub fn session(&self) -> WebSession {
        WebSession::new(&self.url, &self.tls_ca(), self.dir.path())
    }

    /// `GET` of `path` on the publication listener.
    pub fn publication_get(&self, path: &str) -> CurlReply {
        Curl::new(
            "GET",
            &format!("{}{path}", self.publication),
            &self.tls_ca(),
            self.dir.path(),
        )
        .send()
    }

    /// The mails in the demo's outbox, as text, oldest first.
    pub fn outbox(&self) -> Vec<String> {
        let dir = self.env.path("RA_WEB_OUTBOX");
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                    .map(|p| {
                        (
                            p.metadata()
                                .and_then(|m| m.modified())
                                .unwrap_or(std::time::UNIX_EPOCH),
                            p,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

static JAR: AtomicU64 = AtomicU64::new(0);

/// A browser-like session with curl: a cookie jar, and the CSRF token of
/// the last page that had a form.
pub struct WebSession {
    base: String,
    ca: PathBuf,
    scratch: PathBuf,
    jar: PathBuf,
    /// The CSRF token last seen in a page.
    pub csrf: String,
}

/// The value of the first `name="csrf" value="..."` in `html`.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")?;
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

impl WebSession {
    /// A session with `base`.
    pub fn new(base: &str, ca: &Path, scratch: &Path) -> WebSession {
        let n = JAR.fetch_add(1, Ordering::Relaxed);
        WebSession {
            base: base.to_string(),
            ca: ca.to_path_buf(),
            scratch: scratch.to_path_buf(),
            jar: scratch.join(format!("cookies-{}-{n}", std::process::id())),
            csrf: String::new(),
        }
    }

    fn curl(&self, method: &str, path: &str) -> Curl {
        Curl::new(
            method,
            &format!("{}{path}", self.base),
            &self.ca,
            &self.scratch,
        )
        .arg("-b")
        .arg(&self.jar)
        .arg("-c")
        .arg(&self.jar)
    }

    fn remember(&mut self, reply: CurlReply) -> CurlReply {
        if let Some(t) = csrf_of(&String::from_utf8_lossy(&reply.body)) {
            self.csrf = t;
        }
        reply
    }

    /// `GET path` (redirects not followed).
    pub fn get(&mut self, path: &str) -> CurlReply {
        let r = self.curl("GET", path).send();
        self.remember(r)
    }

    /// `POST path` with the form `fields` (urlencoded), the session's CSRF
    /// token added unless `fields` has one.
    pub fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> CurlReply {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        let csrf = self.csrf.clone();
        if !fields.iter().any(|(k, _)| *k == "csrf") {
            all.push(("csrf", &csrf));
        }
        let mut c = self.curl("POST", path);
        for (k, v) in all {
            c = c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let r = c.send();
        self.remember(r)
    }

    /// `POST path` as multipart/form-data; `file` is `(field, path)`.
    pub fn post_multipart(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        file: Option<(&str, &Path)>,
    ) -> CurlReply {
        let mut c = self
            .curl("POST", path)
            .arg("-F")
            .arg(format!("csrf={}", self.csrf));
        for (k, v) in fields {
            c = c.arg("--form-string").arg(format!("{k}={v}"));
        }
        if let Some((k, p)) = file {
            c = c.arg("-F").arg(format!("{k}=@{}", p.display()));
        }
        let r = c.send();
        self.remember(r)
    }

    /// Signs in (fetching the form's CSRF token first); the reply to the
    /// form.
    pub fn sign_in(&mut self, user: &str, password: &str) -> CurlReply {
        self.get("/login");
        self.post("/login", &[("username", user), ("password", password)])
    }
}

/// A headless Chromium driven by ChromeDriver over WebDriver. ChromeDriver
/// picks its own port and says which (`--port=0`); Chromium runs with a
/// fresh profile and a HOME whose NSS database trusts the demo's TLS CA.
pub struct Browser {
    /// The WebDriver client.
    pub client: fantoccini::Client,
    driver: ChildGuard,
    _home: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a Chromium session trusting `tls_ca`.
    pub async fn start(tls_ca: &Path) -> Browser {
        let home = tempfile::tempdir().expect("tempdir");
        let nssdb = home.path().join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb).expect("the NSS database directory");
        let db = format!("sql:{}", nssdb.display());
        run(tool("certutil").args(["-d", &db, "-N", "--empty-password"])).assert_success();
        run(tool("certutil")
            .args([
                "-d",
                &db,
                "-A",
                "-t",
                "C,,",
                "-n",
                "certd demo TLS CA",
                "-i",
            ])
            .arg(tls_ca))
        .assert_success();
        let mut cmd = tool("chromedriver");
        // Its own process group: Chromium, its child, goes with it even
        // when a test fails before closing the session.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.arg("--port=0")
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut driver = ChildGuard::spawn(&mut cmd);
        let stdout = driver.take_stdout().expect("chromedriver's stdout");
        // ChromeDriver announces its port on one line of its output.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent {
                    if let Some(p) = line.split("started successfully on port ").nth(1) {
                        let _ = tx.send(p.trim_end_matches('.').trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let port = rx
            .recv_timeout(START_LIMIT)
            .unwrap_or_else(|_| panic!("chromedriver did not say it was listening"));
        let profile = home.path().join("chromium-profile");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"));
        Browser {
            client,
            driver,
            _home: home,
        }
    }

    /// Ends the session and stops ChromeDriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // ChromeDriver, Chromium and Chromium's helpers: the whole group.
        if let Some(pid) = i32::try_from(self.driver.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        self.driver.kill();
    }
}

/// Waits for `what` in a page: the page's source must contain `needle`;
/// polls the browser (no fixed sleeps), panics after [`START_LIMIT`] with
/// the page's text.
pub async fn wait_for_text(client: &fantoccini::Client, needle: &str) {
    let deadline = std::time::Instant::now() + START_LIMIT;
    loop {
        let src = client.source().await.unwrap_or_default();
        if src.contains(needle) {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("the page never showed {needle:?}; it shows:\n{src}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `text` to a file `name` in `dir` and returns its path.
pub fn file_in(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// Runs `openssl ARGS`; the output.
pub fn openssl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> crate::CmdOutput {
    let mut cmd = tool("openssl");
    for a in args {
        cmd.arg(a);
    }
    run(&mut cmd)
}

/// A real SMTP server (aiosmtpd, `tests/tools/smtp-sink`) on a socket the
/// test binds and keeps: stopping it leaves the port held (connections
/// wait in the backlog: a relay that does not answer), restarting it serves
/// the same port again.
pub struct SmtpSink {
    socket: ApiSocket,
    child: Option<ChildGuard>,
    /// Where it writes the messages it accepts.
    pub dir: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
}

impl SmtpSink {
    /// Binds a socket and starts the sink on it; with `tls` (certificate,
    /// key) it requires STARTTLS.
    pub fn start(dir: &Path, tls: Option<(PathBuf, PathBuf)>) -> SmtpSink {
        let mut s = SmtpSink {
            socket: ApiSocket::bind(),
            child: None,
            dir: dir.to_path_buf(),
            tls,
        };
        s.resume();
        s
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.socket.port()
    }

    /// Starts the sink again (after [`SmtpSink::stop`]).
    pub fn resume(&mut self) {
        let mut cmd = tool(crate::repo_root().join("tests/tools/smtp-sink"));
        cmd.arg("--dir").arg(&self.dir);
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        ApiSocket::pass_all(&mut cmd, &[(&self.socket, "smtp")]);
        let mut child = ChildGuard::spawn(&mut cmd);
        let stdout = child.take_stdout().expect("the sink's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep reading so that the sink never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(START_LIMIT) {
            Ok(line) if line == "ready" => {}
            other => {
                panic!("the SMTP sink did not start: {other:?} (is python3-aiosmtpd installed?)")
            }
        }
        self.child = Some(child);
    }

    /// Kills the sink; the port stays bound (connections are not answered).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

/// The initial password [`WebSession::add_user`] gives, and the one
/// [`WebCa::officer`] chooses at the first sign-in.
pub const INITIAL_PASSWORD: &str = "initial password 1";
/// See [`INITIAL_PASSWORD`].
pub const OWN_PASSWORD: &str = "my second passphrase";

impl WebCa {
    /// A session signed in as the demo's admin.
    pub fn admin_session(&self) -> WebSession {
        let (user, password) = self.admin();
        let mut s = self.session();
        let r = s.sign_in(&user, &password);
        assert_eq!(
            (r.status, r.header("location").as_deref()),
            (303, Some("/")),
            "{r}"
        );
        s
    }

    /// Signs `user` in for the first time with [`INITIAL_PASSWORD`] and
    /// sets [`OWN_PASSWORD`], as ra-web requires.
    pub fn officer(&self, user: &str) -> WebSession {
        let mut s = self.session();
        let r = s.sign_in(user, INITIAL_PASSWORD);
        assert_eq!(r.header("location").as_deref(), Some("/account"), "{r}");
        s.get("/account");
        let r = s.post(
            "/account/password",
            &[
                ("current", INITIAL_PASSWORD),
                ("new", OWN_PASSWORD),
                ("repeat", OWN_PASSWORD),
            ],
        );
        assert_eq!(r.status, 303, "{r}");
        s
    }
}

impl WebSession {
    /// As an admin: adds `user` with `role` (in `enterprise`), password
    /// [`INITIAL_PASSWORD`].
    pub fn add_user(&mut self, user: &str, role: &str, enterprise: Option<&str>) {
        self.get("/admin/users");
        let mut fields = vec![
            ("username", user),
            ("display_name", user),
            ("role", role),
            ("password", INITIAL_PASSWORD),
        ];
        if let Some(e) = enterprise {
            fields.push(("enterprise", e));
        }
        let r = self.post("/admin/users", &fields);
        assert_eq!(r.status, 303, "adding {user}: {r}");
    }

    /// As an admin: adds an enterprise.
    pub fn add_enterprise(&mut self, name: &str) {
        self.get("/admin/enterprises");
        let r = self.post("/admin/enterprises", &[("name", name)]);
        assert_eq!(r.status, 303, "adding {name}: {r}");
    }

    /// As an officer: creates a `tls-server` request in enterprise 1 from
    /// the CSR file `csr`, notifying `notify`; its number.
    pub fn create_request(&mut self, csr: &Path, notify: &str) -> u64 {
        self.get("/requests/new");
        let r = self.post_multipart(
            "/requests/new",
            &[
                ("enterprise", "1"),
                ("profile", "tls-server"),
                ("notify_email", notify),
                ("action", "submit"),
            ],
            Some(("csr_file", csr)),
        );
        assert_eq!(r.status, 303, "{r}");
        r.header("location")
            .and_then(|l| l.strip_prefix("/requests/").and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("a request number in {r}"))
    }

    /// The state shown on request `id`'s page.
    pub fn request_state(&mut self, id: u64) -> String {
        let r = self.get(&format!("/requests/{id}"));
        let page = String::from_utf8_lossy(&r.body).into_owned();
        let at = page
            .find("id=\"request-state\">")
            .unwrap_or_else(|| panic!("a state in\n{page}"));
        let rest = &page[at + "id=\"request-state\">".len()..];
        rest[..rest.find('<').unwrap_or(0)].to_string()
    }
}
