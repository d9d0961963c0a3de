//! `ra-web-bench`: in one run, against the real ra-web beside one real
//! certd (SoftHSM token, mutual TLS, durable ledger and audit log):
//!
//! 1. fills ra-web's store with `--requests` requests (default 100,000)
//!    before ra-web starts, as one enterprise's history;
//! 2. signed in as an officer over HTTPS, measures p50/p99 latency of the
//!    request list (first page, and filtered by state), a search by DNS
//!    name and a request's detail page;
//! 3. measures certificates/s through ra-web's approve-and-issue path
//!    (`POST /requests/N/approve` by a second officer: dual control, certd
//!    called with the evidence) at `--concurrency`, against certd's own
//!    end-to-end rate at the same concurrency with ra-web's credential.
//!
//! ```sh
//! cargo run --release -p certd-bench --bin ra-web-bench
//! ```
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use certd_bench::{e2e, hex_id, make_csrs, warm_up};
use certd_e2e::web::{WebCa, CERTIFIER};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use ra_web::model::{ApprovalRecord, Request, Role, State, Transition};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "ra-web page latency with a large store, and issuance through ra-web vs certd, in one run"
)]
struct Args {
    /// Requests in ra-web's store.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
    /// Samples per page measured.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Requests approved (and issued) through ra-web.
    #[arg(long, default_value_t = 400)]
    issue: usize,
    /// Concurrency of both issuance measurements.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

const PASSWORD: &str = "bench passphrase 1";

type Https = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A signed-in officer's session.
#[derive(Clone)]
struct Session {
    http: Https,
    base: String,
    cookie: String,
    csrf: String,
}

fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")?;
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

fn cookie_of(res: &http::Response<hyper::body::Incoming>) -> Option<String> {
    res.headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .filter(|c| c.starts_with("__Host-ra-web="))
        })
        .map(str::to_string)
}

impl Session {
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        form: Option<String>,
    ) -> Result<(http::StatusCode, String, Option<String>)> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if !self.cookie.is_empty() {
            b = b.header(http::header::COOKIE, &self.cookie);
        }
        let body = match form {
            Some(f) => {
                b = b.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
                Full::new(Bytes::from(f))
            }
            None => Full::new(Bytes::new()),
        };
        let res = self.http.request(b.body(body)?).await?;
        let status = res.status();
        let cookie = cookie_of(&res);
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned(), cookie))
    }

    async fn sign_in(http: Https, base: &str, user: &str) -> Result<Session> {
        let mut s = Session {
            http,
            base: base.to_string(),
            cookie: String::new(),
            csrf: String::new(),
        };
        let (_, page, cookie) = s.send(http::Method::GET, "/login", None).await?;
        s.cookie = cookie.context("a session cookie")?;
        s.csrf = csrf_of(&page).context("a CSRF token on the sign-in page")?;
        let form = serde_html_form::to_string([
            ("username", user),
            ("password", PASSWORD),
            ("csrf", &s.csrf),
        ])?;
        let (status, _, cookie) = s.send(http::Method::POST, "/login", Some(form)).await?;
        if status != http::StatusCode::SEE_OTHER {
            bail!("signing in as {user}: HTTP {status}");
        }
        s.cookie = cookie.context("a new session cookie at sign-in")?;
        let (_, page, _) = s.send(http::Method::GET, "/", None).await?;
        s.csrf = csrf_of(&page).context("a CSRF token on the dashboard")?;
        Ok(s)
    }
}

fn https(ca: &WebCa) -> Result<Https> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(ca.tls_ca())?;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

fn user(name: &str, enterprise: u64) -> Result<ra_web::model::User> {
    let mut u = ra_web::accounts::new_user(name, name, None, Role::Officer, PASSWORD, 0)?;
    u.enterprises = vec![enterprise];
    Ok(u)
}

fn request(id: u64, csr: &str, host: &str, state: State, now: i64) -> Request {
    let validation = certd_api::Validation {
        name: host.to_string(),
        method: "officer_attestation".into(),
        checked_at: ra_web::web::rfc3339(now),
        detail: Some("attested by olivia".into()),
    };
    Request {
        id,
        pickup_id: format!("BENCH-{id:06}"),
        certd_request_id: format!("ra-web-bench-{id}-{}", hex_id().unwrap_or_default()),
        enterprise: 1,
        profile: "tls-server".into(),
        state,
        csr_pem: csr.to_string(),
        key_summary: "EC P-256".into(),
        subject: certd_api::Subject {
            common_name: Some(host.to_string()),
            ..Default::default()
        },
        san: certd_api::SubjectAltNames {
            dns: vec![host.to_string()],
            ..Default::default()
        },
        validity_days: None,
        requester: "olivia".into(),
        notify_email: None,
        created_at: now,
        updated_at: now,
        validations: vec![validation],
        identity: None,
        approvals: if state == State::Issued {
            vec![ApprovalRecord {
                by: "oscar".into(),
                at: now,
            }]
        } else {
            vec![]
        },
        approvals_required: 1,
        serial: (state == State::Issued).then(|| format!("{id:016x}")),
        certificate_pem: None,
        chain: vec![],
        not_after: None,
        last_error: None,
        retry_automatically: false,
        reject_reason: None,
        revocation: None,
        history: vec![
            Transition {
                at: now,
                actor: "olivia".into(),
                action: "created".into(),
                from: None,
                to: State::PendingValidation,
                note: None,
            },
            Transition {
                at: now,
                actor: "olivia".into(),
                action: "validated".into(),
                from: Some(State::PendingValidation),
                to: State::PendingApproval,
                note: None,
            },
        ],
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

async fn latency(s: &Session, paths: &[String]) -> Result<(Duration, Duration)> {
    let mut lat = Vec::with_capacity(paths.len());
    for p in paths {
        let t0 = Instant::now();
        let (status, _, _) = s.send(http::Method::GET, p, None).await?;
        lat.push(t0.elapsed());
        if status != http::StatusCode::OK {
            bail!("GET {p}: HTTP {status}");
        }
    }
    lat.sort();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let csrs = make_csrs(64)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let filler = args.requests;
    let issue = args.issue;
    let pool = csrs.clone();
    let ca = WebCa::start_with(move |env| {
        let t_fill = Instant::now();
        let store =
            ra_web::store::Store::open(&certd_e2e::web::state_dir(env)).expect("ra-web's store");
        store
            .create_enterprise("Bench Corp", vec![], now)
            .expect("an enterprise");
        for name in ["olivia", "oscar"] {
            store
                .create_user(&user(name, 1).expect("a user"))
                .expect("stored");
        }
        let states = [
            State::Issued,
            State::Issued,
            State::Issued,
            State::Rejected,
            State::PendingApproval,
        ];
        let mut made = 0;
        while made < filler {
            let n = (filler - made).min(10_000);
            store
                .create_requests(n, |id| {
                    let c = &pool[id as usize % pool.len()];
                    let host = format!("host{id}.bench.example.com");
                    request(id, &c.pem, &host, states[id as usize % states.len()], now)
                })
                .expect("requests stored");
            made += n;
        }
        store
            .create_requests(issue, |id| {
                let c = &pool[id as usize % pool.len()];
                request(id, &c.pem, &c.host, State::PendingApproval, now)
            })
            .expect("requests to issue stored");
        eprintln!(
            "bench: {} requests stored in {:.1}s",
            filler + issue,
            t_fill.elapsed().as_secs_f64()
        );
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let http = https(&ca)?;
    let officer = rt.block_on(Session::sign_in(http.clone(), &ca.url, "olivia"))?;
    let approver = rt.block_on(Session::sign_in(http.clone(), &ca.url, "oscar"))?;

    // Latency with a full store.
    let n = args.samples;
    let pick = |i: usize| (i * 7919) % filler + 1;
    let list: Vec<String> = (0..n).map(|_| "/requests".to_string()).collect();
    let filtered: Vec<String> = (0..n)
        .map(|_| "/requests?state=issued".to_string())
        .collect();
    let search: Vec<String> = (0..n)
        .map(|i| format!("/requests?q=host{}.bench.example.com", pick(i)))
        .collect();
    let detail: Vec<String> = (0..n).map(|i| format!("/requests/{}", pick(i))).collect();
    rt.block_on(latency(&officer, &list[..20]))?;
    let mut rows = Vec::new();
    for (name, paths) in [
        ("list", &list),
        ("list, state=issued", &filtered),
        ("search by DNS name", &search),
        ("detail", &detail),
    ] {
        let (p50, p99) = rt.block_on(latency(&officer, paths))?;
        println!(
            "ra-web {name}: p50 {} p99 {} ({} requests in the store, {n} samples)",
            ms(p50),
            ms(p99),
            filler + issue
        );
        rows.push((name, p99));
    }

    // Issuance through ra-web's approve path vs certd direct.
    let c = args.concurrency;
    let before = ca.certd.issued(CERTIFIER);
    let first = filler as u64 + 1;
    let t0 = Instant::now();
    let errors = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..c {
            let s = approver.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = 0usize;
                let mut id = first + t as u64;
                while id < first + issue as u64 {
                    let form =
                        serde_html_form::to_string([("csrf", s.csrf.as_str())]).unwrap_or_default();
                    match s
                        .send(
                            http::Method::POST,
                            &format!("/requests/{id}/approve"),
                            Some(form),
                        )
                        .await
                    {
                        Ok((st, _, _)) if st == http::StatusCode::SEE_OTHER => {}
                        Ok((st, body, _)) => {
                            errors += 1;
                            if errors < 3 {
                                eprintln!(
                                    "bench: approve {id}: HTTP {st}: {}",
                                    &body[..body.len().min(300)]
                                );
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            eprintln!("bench: approve {id}: {e:#}");
                        }
                    }
                    id += c as u64;
                }
                errors
            }));
        }
        let mut errors = 0;
        for t in tasks {
            errors += t.await.unwrap_or(1);
        }
        errors
    });
    let elapsed = t0.elapsed();
    let issued = ca.certd.issued(CERTIFIER) - before;
    let web_rate = issued as f64 / elapsed.as_secs_f64();
    if issued as usize != issue {
        eprintln!("bench: {issued} of {issue} approvals issued ({errors} errors)");
    }
    let client = Arc::new(ca.certd.client("ra-web"));
    let run_id = hex_id()?;
    rt.block_on(warm_up(client.clone(), csrs.clone(), &run_id));
    let direct = rt.block_on(e2e(
        client,
        csrs,
        c,
        elapsed.max(Duration::from_secs(3)),
        &format!("{run_id}-direct"),
    ));
    println!(
        "issuance at concurrency {c}: through ra-web {web_rate:.1} certs/s ({issued} approvals in {:.1}s, {errors} errors), certd direct {:.1} certs/s ({} errors), ratio {:.2}",
        elapsed.as_secs_f64(),
        direct.rate,
        direct.errors,
        web_rate / direct.rate
    );
    for (name, p99) in rows {
        if p99 > Duration::from_millis(50) {
            println!("ra-web {name}: p99 {} is above the 50 ms target", ms(p99));
        }
    }
    Ok(())
}
