//! Sessions: tower-sessions' session layer over ra-web's store.
//!
//! The store keeps a session under the SHA-256 of its id, never the id
//! itself, so a copy of the store does not hand out live sessions. Expired
//! sessions are refused on load and swept periodically.

use crate::store::Store;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, Result, SessionStore};

/// The session store.
#[derive(Debug, Clone)]
pub struct StoreSessions {
    store: Arc<Store>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    data: HashMap<String, serde_json::Value>,
    expires: i64,
}

fn key(id: &Id) -> [u8; 32] {
    Sha256::digest(id.to_string().as_bytes()).into()
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(&Stored {
        data: record.data.clone(),
        expires: record.expiry_date.unix_timestamp(),
    })
    .map_err(|e| Error::Encode(e.to_string()))
}

/// Whether a stored session has expired at `now`.
pub fn expired(value: &[u8], now: i64) -> bool {
    serde_json::from_slice::<Stored>(value).map_or(true, |s| s.expires <= now)
}

impl StoreSessions {
    /// Sessions in `store`.
    pub fn new(store: Arc<Store>) -> StoreSessions {
        StoreSessions { store }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(backend)?
}

#[async_trait]
impl SessionStore for StoreSessions {
    async fn create(&self, record: &mut Record) -> Result<()> {
        let store = self.store.clone();
        let mut r = record.clone();
        let r = blocking(move || {
            // A colliding id (128 random bits: never in practice) gets a
            // fresh one instead of someone else's session.
            loop {
                if store
                    .create_session(&key(&r.id), &encode(&r)?)
                    .map_err(backend)?
                {
                    return Ok(r);
                }
                r.id = Id::default();
            }
        })
        .await?;
        *record = r;
        Ok(())
    }

    async fn save(&self, record: &Record) -> Result<()> {
        let store = self.store.clone();
        let bytes = encode(record)?;
        let k = key(&record.id);
        blocking(move || store.put_session(&k, &bytes).map_err(backend)).await
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        let store = self.store.clone();
        let k = key(id);
        let Some(bytes) = blocking(move || store.session(&k).map_err(backend)).await? else {
            return Ok(None);
        };
        let s: Stored = serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))?;
        let expiry_date = OffsetDateTime::from_unix_timestamp(s.expires)
            .map_err(|e| Error::Decode(e.to_string()))?;
        if expiry_date <= OffsetDateTime::now_utc() {
            return Ok(None);
        }
        Ok(Some(Record {
            id: *id,
            data: s.data,
            expiry_date,
        }))
    }

    async fn delete(&self, id: &Id) -> Result<()> {
        let store = self.store.clone();
        let k = key(id);
        blocking(move || store.delete_session(&k).map_err(backend)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_round_trip_under_a_hash_and_expire() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let sessions = StoreSessions::new(store.clone());
        let mut r = Record {
            id: Id::default(),
            data: HashMap::from([("user".to_string(), serde_json::json!("alice"))]),
            expiry_date: OffsetDateTime::now_utc() + time::Duration::minutes(5),
        };
        sessions.create(&mut r).await.expect("create");
        assert!(store
            .session(r.id.to_string().as_bytes())
            .expect("read")
            .is_none());
        let back = sessions.load(&r.id).await.expect("load").expect("found");
        assert_eq!(back.data["user"], "alice");
        r.expiry_date = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        sessions.save(&r).await.expect("save");
        assert!(sessions.load(&r.id).await.expect("load").is_none());
        sessions.delete(&r.id).await.expect("delete");
        assert!(store.session(&key(&r.id)).expect("read").is_none());
    }
}
