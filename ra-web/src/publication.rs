//! CA certificates and CRLs as fetched from certd (the source of truth),
//! cached for the public listener.
//!
//! A CRL is kept until shortly before its nextUpdate (a quarter of its
//! validity, at most an hour), and at most five minutes, so revocations
//! made through other RAs appear soon; a revocation made through ra-web
//! drops the cached CRL at once. When certd cannot be reached, a cached CRL
//! is served until its nextUpdate, never after.

use crate::model::Unix;
use bytes::Bytes;
use der::Decode;
use std::collections::HashMap;
use tokio::sync::Mutex;

/// How long a fetched CRL or certificate list is used at most.
pub const MAX_CACHE_SECS: i64 = 300;

/// A CRL as served.
#[derive(Debug, Clone)]
pub struct Crl {
    /// DER.
    pub der: Bytes,
    /// Its thisUpdate.
    pub this_update: Unix,
    /// Its nextUpdate.
    pub next_update: Unix,
    /// When ra-web fetched it.
    pub fetched_at: Unix,
}

impl Crl {
    /// Until when the cached copy is served without asking certd.
    pub fn fresh_until(&self) -> Unix {
        let margin = ((self.next_update - self.this_update) / 4).clamp(0, 3600);
        (self.next_update - margin).min(self.fetched_at + MAX_CACHE_SECS)
    }
}

/// A certifier's certificate and chain, PEM.
#[derive(Debug, Clone)]
pub struct CaCert {
    /// The certifier's name.
    pub name: String,
    /// Its certificate, PEM.
    pub pem: String,
}

/// The cache.
#[derive(Debug, Default)]
pub struct Publication {
    crls: Mutex<HashMap<String, Crl>>,
    cas: Mutex<Option<(Unix, Vec<CaCert>)>>,
}

/// Parses thisUpdate and nextUpdate of a DER CRL.
pub fn crl_times(der: &[u8]) -> Result<(Unix, Unix), String> {
    let crl = <x509_cert::crl::CertificateList>::from_der(der)
        .map_err(|e| format!("CRL from certd: {e}"))?;
    let this = crl.tbs_cert_list.this_update.to_unix_duration().as_secs() as i64;
    let next = crl
        .tbs_cert_list
        .next_update
        .map(|t| t.to_unix_duration().as_secs() as i64)
        .ok_or("CRL from certd has no nextUpdate")?;
    Ok((this, next))
}

/// Why something could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No such certifier.
    #[error("no certifier {0}")]
    Unknown(String),
    /// certd cannot be reached and nothing usable is cached.
    #[error("{0}")]
    Unavailable(String),
}

impl Publication {
    /// The CRL of certifier `name`.
    pub async fn crl(
        &self,
        certd: &certd_api::CertdClient,
        name: &str,
        now: Unix,
    ) -> Result<Crl, PublishError> {
        let mut crls = self.crls.lock().await;
        if let Some(c) = crls.get(name) {
            if now < c.fresh_until() {
                return Ok(c.clone());
            }
        }
        match certd.crl(name).await {
            Ok(der) => {
                let (this_update, next_update) =
                    crl_times(&der).map_err(PublishError::Unavailable)?;
                let c = Crl {
                    der: Bytes::from(der),
                    this_update,
                    next_update,
                    fetched_at: now,
                };
                crls.insert(name.to_string(), c.clone());
                Ok(c)
            }
            Err(certd_api::ClientError::Api(e)) if e.code.as_str() == "unknown_certifier" => {
                Err(PublishError::Unknown(name.to_string()))
            }
            Err(e) => match crls.get(name) {
                Some(c) if now < c.next_update => Ok(c.clone()),
                _ => Err(PublishError::Unavailable(format!(
                    "certd cannot be reached for the CRL of {name}: {e}"
                ))),
            },
        }
    }

    /// Forgets the cached CRL of `name` (after a revocation).
    pub async fn invalidate(&self, name: &str) {
        self.crls.lock().await.remove(name);
    }

    /// Forgets every cached CRL.
    pub async fn invalidate_all(&self) {
        self.crls.lock().await.clear();
    }

    /// The certifiers' certificates.
    pub async fn certificates(
        &self,
        certd: &certd_api::CertdClient,
        now: Unix,
    ) -> Result<Vec<CaCert>, PublishError> {
        let mut cas = self.cas.lock().await;
        if let Some((at, list)) = cas.as_ref() {
            if now - at < MAX_CACHE_SECS {
                return Ok(list.clone());
            }
        }
        match certd.health().await {
            Ok(h) => {
                let list: Vec<CaCert> = h
                    .certifiers
                    .into_iter()
                    .filter_map(|c| c.certificate.map(|pem| CaCert { name: c.name, pem }))
                    .collect();
                *cas = Some((now, list.clone()));
                Ok(list)
            }
            Err(e) => match cas.as_ref() {
                Some((_, list)) => Ok(list.clone()),
                None => Err(PublishError::Unavailable(format!(
                    "certd cannot be reached: {e}"
                ))),
            },
        }
    }
}
