//! Running ra-web: the store, certd's client, the HTTPS listener for staff
//! and the plain-HTTP publication listener (sockets passed by systemd, or
//! bound from the configuration), the workers, and readiness.

use crate::config::Config;
use crate::store::Store;
use crate::web::{self, App, AppState, Clock};
use axum::Router;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A failure to start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn err(what: impl std::fmt::Display) -> StartError {
    StartError(what.to_string())
}

/// ra-web's TLS server configuration: its certificate and key, TLS 1.3 and
/// 1.2 (rustls' safe defaults), HTTP/2 and HTTP/1.1.
pub fn tls_config(config: &Config) -> Result<rustls::ServerConfig, StartError> {
    let s = &config.server;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&s.tls_certificate)
        .and_then(|i| i.collect())
        .map_err(|e| {
            err(format!(
                "[server] tls_certificate {}: {e}",
                s.tls_certificate.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(err(format!(
            "[server] tls_certificate {} holds no certificate",
            s.tls_certificate.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&s.tls_key)
        .map_err(|e| err(format!("[server] tls_key {}: {e}", s.tls_key.display())))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(err)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        err(format!(
            "[server] tls_certificate and tls_key do not go together: {e}"
        ))
    })?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// The listeners ra-web serves on.
struct Listeners {
    https: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
}

/// The listeners: sockets passed by systemd (`LISTEN_FDS`, named `https`,
/// `http` and `metrics` in `LISTEN_FDNAMES`; unnamed, the first is HTTPS),
/// else bound from the configuration.
fn listeners(config: &Config) -> Result<Listeners, StartError> {
    let mut fds = listenfd::ListenFd::from_env();
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let index =
        |name: &str, default: usize| names.iter().position(|n| n == name).unwrap_or(default);
    let passed = fds.len();
    let metrics = match names.iter().position(|n| n == "metrics") {
        Some(i) => fds
            .take_tcp_listener(i)
            .map_err(|e| err(format!("the metrics socket passed by systemd: {e}")))?,
        None => match &config.metrics {
            Some(m) => Some(
                std::net::TcpListener::bind(m.listen)
                    .map_err(|e| err(format!("binding [metrics] listen {}: {e}", m.listen)))?,
            ),
            None => None,
        },
    };
    let (https, http) = if passed > 0 {
        let https = fds
            .take_tcp_listener(index("https", 0))
            .map_err(|e| err(format!("the https socket passed by systemd: {e}")))?
            .ok_or_else(|| err("systemd passed no https socket"))?;
        let http = if passed > 1 {
            fds.take_tcp_listener(index("http", 1))
                .map_err(|e| err(format!("the http socket passed by systemd: {e}")))?
        } else {
            None
        };
        (https, http)
    } else {
        let https = std::net::TcpListener::bind(config.server.listen).map_err(|e| {
            err(format!(
                "binding [server] listen {}: {e}",
                config.server.listen
            ))
        })?;
        let http = match config.server.public_listen {
            Some(a) => Some(
                std::net::TcpListener::bind(a)
                    .map_err(|e| err(format!("binding [server] public_listen {a}: {e}")))?,
            ),
            None => None,
        };
        (https, http)
    };
    for l in std::iter::once(&https).chain(&http).chain(&metrics) {
        l.set_nonblocking(true).map_err(err)?;
    }
    Ok(Listeners {
        https,
        http,
        metrics,
    })
}

/// Builds the application state.
pub fn app(config: Config, store: Arc<Store>, clock: Clock) -> Result<AppState, StartError> {
    let certd = certd_api::CertdClient::new(&config.client_config())
        .map_err(|e| err(format!("[certd]: {e}")))?;
    Ok(Arc::new(App {
        config,
        store,
        certd,
        clock,
        publication: Default::default(),
        in_flight: Default::default(),
        profiles: Default::default(),
        issue_wake: Default::default(),
        mail_wake: Default::default(),
        throttle: Default::default(),
        metrics: Default::default(),
    }))
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(1024));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            serve_connection(stream, addr, router).await;
        });
    }
}

async fn serve_plain(listener: tokio::net::TcpListener, router: Router) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(serve_connection(tcp, addr, router));
    }
}

async fn serve_connection<S>(stream: S, addr: SocketAddr, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = router.layer(axum::Extension(axum::extract::ConnectInfo(addr)));
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(100);
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper_util::service::TowerToHyperService::new(svc);
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}

fn notify(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }
}

/// Runs ra-web until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    let tls = Arc::new(tls_config(&config)?);
    let store = Arc::new(Store::open(&config.server.state_dir).map_err(err)?);
    let Listeners {
        https,
        http,
        metrics,
    } = listeners(&config)?;
    let https = tokio::net::TcpListener::from_std(https).map_err(err)?;
    let http = match http {
        Some(h) => Some(tokio::net::TcpListener::from_std(h).map_err(err)?),
        None => None,
    };
    let metrics = match metrics {
        Some(m) => Some(tokio::net::TcpListener::from_std(m).map_err(err)?),
        None => None,
    };
    let app = app(config, store.clone(), web::system_clock())?;
    let https_addr = https.local_addr().map_err(err)?;
    let http_addr = http.as_ref().and_then(|h| h.local_addr().ok());
    tokio::spawn(serve_tls(https, tls, web::router(app.clone())));
    if let Some(h) = http {
        tokio::spawn(serve_plain(h, web::public::router(app.clone())));
    }
    let metrics_addr = metrics.as_ref().and_then(|m| m.local_addr().ok());
    if let Some(m) = metrics {
        tokio::spawn(crate::metrics::serve(app.clone(), m));
    }
    tokio::spawn(crate::issuer::worker(app.clone(), Duration::from_secs(60)));
    tokio::spawn(crate::notify::worker(app.clone(), Duration::from_secs(30)));
    let sweeper = app.clone();
    tokio::spawn(async move {
        loop {
            let now = sweeper.now();
            let s = sweeper.store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || {
                s.sweep_sessions(|v| crate::sessions::expired(v, now))
            })
            .await
            {
                tracing::warn!(error = %e, "cannot sweep expired sessions");
            }
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    });
    tracing::info!(https = %https_addr, http = ?http_addr, metrics = ?metrics_addr, "ra-web is serving");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving on https://{https_addr}")),
    ]);
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(err)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("ra-web stops");
    Ok(())
}
