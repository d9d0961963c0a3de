//! The mutual-TLS client RAs use to talk to certd.
//!
//! One client holds a pool of persistent HTTP/1.1 or HTTP/2 connections and
//! may be shared by many tasks.

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::{
    CertificateInfo, CertificateList, Health, IssueRequest, IssueResponse, ProfileInfo,
    RevokeRequest,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where certd is and which credential to present.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://127.0.0.1:8443`.
    pub url: String,
    /// PEM file with the RA's client certificate (and optionally its chain).
    pub client_cert: PathBuf,
    /// PEM file with the RA's private key.
    pub client_key: PathBuf,
    /// PEM file with the CA certificate(s) that verify certd's server certificate.
    pub server_ca: PathBuf,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// certd answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The client's own configuration is unusable.
    #[error("client configuration: {0}")]
    Config(String),
    /// The connection failed or timed out (certd down, TLS refused, reset).
    #[error("cannot reach certd: {0}")]
    Transport(String),
    /// certd answered something that is not the API.
    #[error("unexpected answer from certd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Api(e) => e.code.is_transient(),
            ClientError::Transport(_) => true,
            ClientError::Config(_) | ClientError::Protocol(_) => false,
        }
    }

    /// The stable code, for reports.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Api(e) => e.code.as_str(),
            ClientError::Config(_) => "client_config",
            ClientError::Transport(_) => "unreachable",
            ClientError::Protocol(_) => "protocol",
        }
    }
}

type HttpsClient = Client<VerdictConnector, Full<Bytes>>;

/// certd's connector: TCP, TLS, then, on TLS 1.3, certd's verdict on the
/// client certificate before the connection is used.
///
/// In TLS 1.3 the client's handshake ends before the server has checked
/// the client certificate: a refused RA learns it only from an alert that
/// arrives after it has sent its request, racing the reset of a socket
/// certd already closed, and the HTTP/2 client may then wait for an
/// answer that never comes rather than fail. So a new connection is handed
/// to HTTP only once certd has spoken after the handshake: a session
/// ticket (certd sends them only after the client's Finished, so after the
/// certificate passed; certd's `tls_config` keeps them on) or the alert
/// that refuses it, which then fails the connect with its reason.
#[derive(Clone)]
struct VerdictConnector(hyper_rustls::HttpsConnector<HttpConnector>);

type Conn = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for VerdictConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let mut conn = connecting.await?;
            if let hyper_rustls::MaybeHttpsStream::Https(tls) = &mut conn {
                certd_verdict(tls.inner_mut()).await?;
            }
            Ok(conn)
        })
    }
}

/// Waits, on a TLS 1.3 connection, for certd's first record after the
/// handshake: a session ticket (the certificate was accepted) or an alert
/// or close (it was not). TLS 1.2 decides within the handshake.
async fn certd_verdict<S>(tls: &mut tokio_rustls::client::TlsStream<S>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::io::{Error, ErrorKind};
    use std::task::Poll;
    if tls.get_ref().1.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Ok(());
    }
    std::future::poll_fn(|cx| {
        if tls.get_ref().1.tls13_tickets_received() > 0 {
            return Poll::Ready(Ok(()));
        }
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut *tls), cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Err(Error::new(
                ErrorKind::ConnectionAborted,
                "certd closed the connection after the TLS handshake: it refused this client certificate",
            ))),
            Poll::Ready(Ok(())) => Poll::Ready(Err(Error::new(
                ErrorKind::InvalidData,
                "the server spoke before the request: it is not certd",
            ))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if tls.get_ref().1.tls13_tickets_received() > 0 => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A client for one certd.
#[derive(Clone)]
pub struct CertdClient {
    base: url::Url,
    http: HttpsClient,
    timeout: Duration,
}

impl std::fmt::Debug for CertdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertdClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The TLS client configuration of an RA: certd's server CA as the only
/// root, the RA's certificate chain and key as the client credential,
/// rustls' safe defaults (TLS 1.3 and 1.2) on the `ring` provider. No ALPN
/// protocols are set; callers add what they speak.
pub fn tls_config(config: &ClientConfig) -> Result<rustls::ClientConfig, ClientError> {
    let cfg_err = |what: &str, path: &PathBuf, e: String| {
        ClientError::Config(format!("{what} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&config.server_ca)
        .map_err(|e| cfg_err("server CA", &config.server_ca, e.to_string()))?;
    for ca in cas {
        let ca = ca.map_err(|e| cfg_err("server CA", &config.server_ca, e.to_string()))?;
        roots
            .add(ca)
            .map_err(|e| cfg_err("server CA", &config.server_ca, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(cfg_err(
            "server CA",
            &config.server_ca,
            "holds no certificate".into(),
        ));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.client_cert)
        .map_err(|e| cfg_err("client certificate", &config.client_cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cfg_err("client certificate", &config.client_cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(cfg_err(
            "client certificate",
            &config.client_cert,
            "holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.client_key)
        .map_err(|e| cfg_err("client key", &config.client_key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            ClientError::Config(format!(
                "client certificate {} and key {} do not fit together: {e}",
                config.client_cert.display(),
                config.client_key.display()
            ))
        })
}

/// The TCP and TLS connector of an RA's client: HTTPS only, HTTP/1.1 and
/// HTTP/2 by ALPN, no Nagle delay (requests are small and latency-bound),
/// `timeout` to connect. [`CertdClient`] adds certd's verdict on top.
pub fn https_connector(
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

impl CertdClient {
    /// Builds a client; reads and checks the credential files.
    pub fn new(config: &ClientConfig) -> Result<CertdClient, ClientError> {
        let base = url::Url::parse(&config.url)
            .map_err(|e| ClientError::Config(format!("certd URL {:?}: {e}", config.url)))?;
        if base.scheme() != "https" {
            return Err(ClientError::Config(format!(
                "certd URL {:?} must start with https://",
                config.url
            )));
        }
        let connector = https_connector(tls_config(config)?, config.timeout);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(VerdictConnector(connector));
        Ok(CertdClient {
            base,
            http,
            timeout: config.timeout,
        })
    }

    fn url(&self, path: &str) -> Result<http::Uri, ClientError> {
        let u = self
            .base
            .join(path)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        u.as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::Config(e.to_string()))
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(http::StatusCode, Bytes), ClientError> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(self.url(path)?)
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Transport(error_chain(&e)))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Transport(format!("no answer within {:?}", self.timeout)))?
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// Issues a certificate.
    pub async fn issue(&self, req: &IssueRequest) -> Result<IssueResponse, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Config(e.to_string()))?;
        self.json(http::Method::POST, "v1/certificates", Some(body))
            .await
    }

    /// Looks up a certificate by serial (hex).
    pub async fn get(&self, serial: &str) -> Result<CertificateInfo, ClientError> {
        self.json(
            http::Method::GET,
            &format!("v1/certificates/{}", path_segment(serial)),
            None,
        )
        .await
    }

    /// Lists certificates; `query` is the URL query without `?`.
    pub async fn list(&self, query: &str) -> Result<CertificateList, ClientError> {
        let path = if query.is_empty() {
            "v1/certificates".to_string()
        } else {
            format!("v1/certificates?{query}")
        };
        self.json(http::Method::GET, &path, None).await
    }

    /// Revokes a certificate.
    pub async fn revoke(&self, serial: &str, reason: &str) -> Result<CertificateInfo, ClientError> {
        let body = serde_json::to_vec(&RevokeRequest {
            reason: reason.to_string(),
        })
        .map_err(|e| ClientError::Config(e.to_string()))?;
        self.json(
            http::Method::POST,
            &format!("v1/certificates/{}/revoke", path_segment(serial)),
            Some(body),
        )
        .await
    }

    /// Downloads a certifier's current CRL (DER).
    pub async fn crl(&self, certifier: &str) -> Result<Vec<u8>, ClientError> {
        let (status, bytes) = self
            .send(
                http::Method::GET,
                &format!("v1/certifiers/{}/crl", path_segment(certifier)),
                None,
            )
            .await?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// The profiles this RA may use.
    pub async fn profiles(&self) -> Result<Vec<ProfileInfo>, ClientError> {
        self.json(http::Method::GET, "v1/profiles", None).await
    }

    /// Per-certifier health.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(http::Method::GET, "v1/health", None).await
    }
}

/// Keeps only characters that cannot change the path's meaning.
fn path_segment(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

fn api_error(status: http::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => match ErrorCode::parse(&body.error.code) {
            Some(code) => ClientError::Api(ApiError::new(code, body.error.message)),
            None => ClientError::Protocol(format!(
                "HTTP {status} with unknown error code {:?}: {}",
                body.error.code, body.error.message
            )),
        },
        Err(_) => ClientError::Protocol(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )),
    }
}

/// The error and its sources, joined, so TLS alerts show up in messages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
