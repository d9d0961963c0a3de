//! ra-web's store: one redb database (the embedded database certd's ledger
//! index uses) in ra-web's own state directory, never certd's files.
//!
//! Records are JSON values in plain tables. Lists are served from index
//! tables keyed `(key, id)`, so a page of requests is a range read of one
//! key per enterprise in scope, newest first, never a scan of the store:
//! every request is indexed under each combination of its enterprise (or
//! `*`), state and profile that a list can ask for, and under each search
//! term. Every change is one write transaction, committed durably before
//! the caller sees it.

use crate::model::{
    Enterprise, Event, Mail, MailState, Request, Settings, State, Token, Unix, User,
};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const ENTERPRISES: TableDefinition<u64, &[u8]> = TableDefinition::new("enterprises");
const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("requests");
const REQUEST_INDEX: TableDefinition<(&str, u64), ()> = TableDefinition::new("request_index");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const EVENT_INDEX: TableDefinition<(&str, u64), ()> = TableDefinition::new("event_index");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const MAIL: TableDefinition<u64, &[u8]> = TableDefinition::new("mail");
const MAIL_QUEUE: TableDefinition<(i64, u64), ()> = TableDefinition::new("mail_queue");
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");

const SCHEMA: &str = "ra-web store 1";

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (disk full, corruption, another ra-web has it
    /// open).
    #[error("store: {0}")]
    Storage(String),
    /// A record could not be encoded or decoded.
    #[error("store record: {0}")]
    Record(String),
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// It exists already.
    #[error("{0} exists already")]
    Exists(String),
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Record(e.to_string()))
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Record(e.to_string()))
}

/// What a request list asks for.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only these enterprises (none: all).
    pub enterprises: Option<Vec<u64>>,
    /// Only this state.
    pub state: Option<State>,
    /// Only this profile.
    pub profile: Option<String>,
    /// Only requests found by this search term.
    pub search: Option<String>,
    /// Only requests numbered below this (the next page).
    pub before: Option<u64>,
}

/// A page of results, newest first.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The cursor of the next page, when there is one.
    pub next: Option<u64>,
}

/// What an event list asks for.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this request.
    pub request: Option<u64>,
    /// Only these enterprises.
    pub enterprise: Option<u64>,
    /// Only events numbered below this.
    pub before: Option<u64>,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

/// The index keys of a request: every list that can ask for it.
fn request_keys(r: &Request) -> Vec<String> {
    let mut keys = Vec::with_capacity(10);
    for scope in ["*".to_string(), r.enterprise.to_string()] {
        keys.push(format!("e{scope}"));
        keys.push(format!("e{scope}|s{}", r.state.as_str()));
        keys.push(format!("e{scope}|p{}", r.profile));
        keys.push(format!("e{scope}|s{}|p{}", r.state.as_str(), r.profile));
    }
    for t in r.search_terms() {
        keys.push(format!("t{t}"));
    }
    keys
}

fn list_key(scope: &str, state: Option<State>, profile: Option<&str>) -> String {
    match (state, profile) {
        (None, None) => format!("e{scope}"),
        (Some(s), None) => format!("e{scope}|s{}", s.as_str()),
        (None, Some(p)) => format!("e{scope}|p{p}"),
        (Some(s), Some(p)) => format!("e{scope}|s{}|p{p}", s.as_str()),
    }
}

fn event_keys(e: &Event) -> Vec<String> {
    let mut keys = vec![format!("a{}", e.actor), format!("k{}", e.kind)];
    if let Some(r) = e.request {
        keys.push(format!("r{r}"));
    }
    if let Some(en) = e.enterprise {
        keys.push(format!("e{en}"));
    }
    keys
}

impl Store {
    /// Opens (creating when missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Storage(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("ra-web.redb");
        let db = Database::create(&path).map_err(|e| {
            StoreError::Storage(format!(
                "{}: {e} (is another ra-web running on this state directory?)",
                path.display()
            ))
        })?;
        Store::init(db)
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(storage)?;
        Store::init(db)
    }

    fn init(db: Database) -> Result<Store, StoreError> {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            let schema = meta
                .get("schema")
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            match schema {
                None => {
                    meta.insert("schema", SCHEMA.as_bytes()).map_err(storage)?;
                }
                Some(s) if s == SCHEMA.as_bytes() => {}
                Some(s) => {
                    return Err(StoreError::Storage(format!(
                    "the store is {:?}, this ra-web reads {SCHEMA:?}: use the ra-web that wrote it",
                    String::from_utf8_lossy(&s)
                )))
                }
            }
            txn.open_table(USERS).map_err(storage)?;
            txn.open_table(ENTERPRISES).map_err(storage)?;
            txn.open_table(REQUESTS).map_err(storage)?;
            txn.open_table(REQUEST_INDEX).map_err(storage)?;
            txn.open_table(EVENTS).map_err(storage)?;
            txn.open_table(EVENT_INDEX).map_err(storage)?;
            txn.open_table(SESSIONS).map_err(storage)?;
            txn.open_table(MAIL).map_err(storage)?;
            txn.open_table(MAIL_QUEUE).map_err(storage)?;
            txn.open_table(TOKENS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(Store { db })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let out = f(&txn)?;
        txn.commit().map_err(storage)?;
        Ok(out)
    }

    /// A write transaction committed without its own fsync: it becomes
    /// durable with the next durable commit, and a crash before that loses
    /// it. For what ra-web can lose without harm (sessions; event-log copies
    /// of request transitions already stored durably in the request).
    fn write_lazily<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(redb::Durability::None)
            .map_err(storage)?;
        let out = f(&txn)?;
        txn.commit().map_err(storage)?;
        Ok(out)
    }

    /// Takes the next number of counter `name` inside `txn`.
    fn next_id(txn: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let key = format!("next_{name}");
        let next = match meta.get(key.as_str()).map_err(storage)? {
            Some(v) => {
                let b: [u8; 8] = v
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Record(format!("counter {name}")))?;
                u64::from_be_bytes(b)
            }
            None => 1,
        };
        meta.insert(key.as_str(), &(next + 1).to_be_bytes()[..])
            .map_err(storage)?;
        Ok(next)
    }

    // --- settings ---------------------------------------------------------

    /// The admin's settings.
    pub fn settings(&self) -> Result<Settings, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        match meta.get("settings").map_err(storage)? {
            Some(v) => dec(v.value()),
            None => Ok(Settings::default()),
        }
    }

    /// Replaces the settings.
    pub fn put_settings(&self, s: &Settings) -> Result<(), StoreError> {
        let bytes = enc(s)?;
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("settings", bytes.as_slice()).map_err(storage)?;
            Ok(())
        })
    }

    // --- users ------------------------------------------------------------

    /// The account `username` (case-insensitive).
    pub fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(USERS).map_err(storage)?;
        let key = username.to_ascii_lowercase();
        match t.get(key.as_str()).map_err(storage)? {
            Some(v) => Ok(Some(dec(v.value())?)),
            None => Ok(None),
        }
    }

    /// Creates an account; `Exists` when the name is taken.
    pub fn create_user(&self, u: &User) -> Result<(), StoreError> {
        let bytes = enc(u)?;
        let key = u.username.to_ascii_lowercase();
        self.write(|txn| {
            let mut t = txn.open_table(USERS).map_err(storage)?;
            if t.get(key.as_str()).map_err(storage)?.is_some() {
                return Err(StoreError::Exists(format!("user {}", u.username)));
            }
            t.insert(key.as_str(), bytes.as_slice()).map_err(storage)?;
            Ok(())
        })
    }

    /// Changes an account in one transaction: `f` sees the current record.
    pub fn update_user<T>(
        &self,
        username: &str,
        f: impl FnOnce(&mut User) -> T,
    ) -> Result<(User, T), StoreError> {
        let key = username.to_ascii_lowercase();
        self.write(|txn| {
            let mut t = txn.open_table(USERS).map_err(storage)?;
            let mut u: User = match t.get(key.as_str()).map_err(storage)? {
                Some(v) => dec(v.value())?,
                None => return Err(StoreError::NotFound(format!("user {username}"))),
            };
            let out = f(&mut u);
            t.insert(key.as_str(), enc(&u)?.as_slice())
                .map_err(storage)?;
            Ok((u, out))
        })
    }

    /// Every account, by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(USERS).map_err(storage)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(storage)? {
            let (_, v) = item.map_err(storage)?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    // --- enterprises --------------------------------------------------------

    /// Creates an enterprise and returns it with its number.
    pub fn create_enterprise(
        &self,
        name: &str,
        profiles: Vec<String>,
        now: Unix,
    ) -> Result<Enterprise, StoreError> {
        let existing = self.enterprises()?;
        if existing.iter().any(|e| e.name.eq_ignore_ascii_case(name)) {
            return Err(StoreError::Exists(format!("enterprise {name}")));
        }
        self.write(|txn| {
            let id = Store::next_id(txn, "enterprise")?;
            let e = Enterprise {
                id,
                name: name.to_string(),
                profiles,
                created_at: now,
            };
            let mut t = txn.open_table(ENTERPRISES).map_err(storage)?;
            t.insert(id, enc(&e)?.as_slice()).map_err(storage)?;
            Ok(e)
        })
    }

    /// Replaces an enterprise.
    pub fn put_enterprise(&self, e: &Enterprise) -> Result<(), StoreError> {
        let bytes = enc(e)?;
        self.write(|txn| {
            let mut t = txn.open_table(ENTERPRISES).map_err(storage)?;
            if t.get(e.id).map_err(storage)?.is_none() {
                return Err(StoreError::NotFound(format!("enterprise {}", e.id)));
            }
            t.insert(e.id, bytes.as_slice()).map_err(storage)?;
            Ok(())
        })
    }

    /// Every enterprise, by number.
    pub fn enterprises(&self) -> Result<Vec<Enterprise>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(ENTERPRISES).map_err(storage)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(storage)? {
            let (_, v) = item.map_err(storage)?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    /// Enterprise `id`.
    pub fn enterprise(&self, id: u64) -> Result<Option<Enterprise>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(ENTERPRISES).map_err(storage)?;
        match t.get(id).map_err(storage)? {
            Some(v) => Ok(Some(dec(v.value())?)),
            None => Ok(None),
        }
    }

    // --- requests -----------------------------------------------------------

    /// Stores a new request: `build` receives its number. Returns it.
    pub fn create_request(
        &self,
        build: impl FnOnce(u64) -> Request,
    ) -> Result<Request, StoreError> {
        self.write(|txn| {
            let id = Store::next_id(txn, "request")?;
            let r = build(id);
            Store::put_request_in(txn, None, &r)?;
            Ok(r)
        })
    }

    /// Stores many new requests in one transaction (benchmarks, imports).
    pub fn create_requests(
        &self,
        n: usize,
        mut build: impl FnMut(u64) -> Request,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            for _ in 0..n {
                let id = Store::next_id(txn, "request")?;
                let r = build(id);
                Store::put_request_in(txn, None, &r)?;
            }
            Ok(())
        })
    }

    fn put_request_in(
        txn: &WriteTransaction,
        old: Option<&Request>,
        r: &Request,
    ) -> Result<(), StoreError> {
        let mut t = txn.open_table(REQUESTS).map_err(storage)?;
        t.insert(r.id, enc(r)?.as_slice()).map_err(storage)?;
        let mut idx = txn.open_table(REQUEST_INDEX).map_err(storage)?;
        let new_keys = request_keys(r);
        if let Some(old) = old {
            for k in request_keys(old) {
                if !new_keys.contains(&k) {
                    idx.remove((k.as_str(), r.id)).map_err(storage)?;
                }
            }
        }
        for k in &new_keys {
            idx.insert((k.as_str(), r.id), ()).map_err(storage)?;
        }
        Ok(())
    }

    /// Request `id`.
    pub fn request(&self, id: u64) -> Result<Option<Request>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(REQUESTS).map_err(storage)?;
        match t.get(id).map_err(storage)? {
            Some(v) => Ok(Some(dec(v.value())?)),
            None => Ok(None),
        }
    }

    /// Changes request `id` in one transaction: `f` sees the current record
    /// and may refuse (its error is returned and nothing is written).
    pub fn update_request<T, E: From<StoreError>>(
        &self,
        id: u64,
        f: impl FnOnce(&mut Request) -> Result<T, E>,
    ) -> Result<(Request, T), E> {
        self.update_request_then(id, f, |_| true)
    }

    /// [`Store::update_request`], committed durably only if `durable` says
    /// so of the changed request (otherwise with the next durable commit).
    pub fn update_request_then<T, E: From<StoreError>>(
        &self,
        id: u64,
        f: impl FnOnce(&mut Request) -> Result<T, E>,
        durable: impl FnOnce(&Request) -> bool,
    ) -> Result<(Request, T), E> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        let old: Request = {
            let t = txn.open_table(REQUESTS).map_err(storage)?;
            let v = t.get(id).map_err(storage)?;
            match v {
                Some(v) => dec(v.value())?,
                None => return Err(StoreError::NotFound(format!("request {id}")).into()),
            }
        };
        let mut r = old.clone();
        let out = f(&mut r)?;
        Store::put_request_in(&txn, Some(&old), &r)?;
        if !durable(&r) {
            txn.set_durability(redb::Durability::None)
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok((r, out))
    }

    /// A page of requests, newest first.
    pub fn requests(&self, f: &RequestFilter, limit: usize) -> Result<Page<Request>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let idx = txn.open_table(REQUEST_INDEX).map_err(storage)?;
        let table = txn.open_table(REQUESTS).map_err(storage)?;
        let before = f.before.unwrap_or(u64::MAX);
        let mut ids: Vec<u64> = Vec::new();
        if let Some(term) = &f.search {
            // A term finds few requests: read them all, filter on the record.
            let key = format!("t{}", term.trim().to_lowercase());
            for item in idx
                .range((key.as_str(), 0)..(key.as_str(), before))
                .map_err(storage)?
                .rev()
            {
                let (k, _) = item.map_err(storage)?;
                ids.push(k.value().1);
            }
        } else {
            let scopes: Vec<String> = match &f.enterprises {
                None => vec!["*".into()],
                Some(es) => es.iter().map(u64::to_string).collect(),
            };
            for scope in scopes {
                let key = list_key(&scope, f.state, f.profile.as_deref());
                for item in idx
                    .range((key.as_str(), 0)..(key.as_str(), before))
                    .map_err(storage)?
                    .rev()
                    .take(limit + 1)
                {
                    let (k, _) = item.map_err(storage)?;
                    ids.push(k.value().1);
                }
            }
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        let mut items = Vec::new();
        let mut next = None;
        for id in ids {
            let Some(v) = table.get(id).map_err(storage)? else {
                continue;
            };
            let r: Request = dec(v.value())?;
            if f.search.is_some() {
                let in_scope = f
                    .enterprises
                    .as_ref()
                    .is_none_or(|es| es.contains(&r.enterprise));
                if !in_scope
                    || f.state.is_some_and(|s| s != r.state)
                    || f.profile.as_ref().is_some_and(|p| *p != r.profile)
                {
                    continue;
                }
            }
            if items.len() == limit {
                next = items.last().map(|r: &Request| r.id);
                break;
            }
            items.push(r);
        }
        Ok(Page { items, next })
    }

    /// How many requests there are.
    pub fn request_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(REQUESTS).map_err(storage)?;
        t.len().map_err(storage)
    }

    /// Requests in `state` (all enterprises), oldest first: the issuance
    /// retry loop reads approved requests this way.
    pub fn requests_in_state(
        &self,
        state: State,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let idx = txn.open_table(REQUEST_INDEX).map_err(storage)?;
        let table = txn.open_table(REQUESTS).map_err(storage)?;
        let key = list_key("*", Some(state), None);
        let mut out = Vec::new();
        for item in idx
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (k, _) = item.map_err(storage)?;
            if let Some(v) = table.get(k.value().1).map_err(storage)? {
                out.push(dec(v.value())?);
            }
        }
        Ok(out)
    }

    /// How many requests are in `state` (all enterprises), from the index.
    pub fn count_in_state(&self, state: State) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let idx = txn.open_table(REQUEST_INDEX).map_err(storage)?;
        let key = list_key("*", Some(state), None);
        let mut n = 0;
        for item in idx
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .map_err(storage)?
        {
            item.map_err(storage)?;
            n += 1;
        }
        Ok(n)
    }

    // --- events -------------------------------------------------------------

    /// Appends an event; its number and time are set here.
    pub fn append_event(&self, e: Event) -> Result<Event, StoreError> {
        self.append_event_in(e, true)
    }

    /// Appends an event without an fsync of its own ([`Store::write_lazily`]):
    /// for copies of request transitions the request already holds.
    pub fn append_event_lazily(&self, e: Event) -> Result<Event, StoreError> {
        self.append_event_in(e, false)
    }

    fn append_event_in(&self, mut e: Event, durable: bool) -> Result<Event, StoreError> {
        let f = |txn: &WriteTransaction| {
            e.id = Store::next_id(txn, "event")?;
            let mut t = txn.open_table(EVENTS).map_err(storage)?;
            t.insert(e.id, enc(&e)?.as_slice()).map_err(storage)?;
            let mut idx = txn.open_table(EVENT_INDEX).map_err(storage)?;
            for k in event_keys(&e) {
                idx.insert((k.as_str(), e.id), ()).map_err(storage)?;
            }
            Ok(e.clone())
        };
        if durable {
            self.write(f)
        } else {
            self.write_lazily(f)
        }
    }

    /// A page of events, newest first.
    pub fn events(&self, f: &EventFilter, limit: usize) -> Result<Page<Event>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let idx = txn.open_table(EVENT_INDEX).map_err(storage)?;
        let before = f.before.unwrap_or(u64::MAX);
        let key = f
            .request
            .map(|r| format!("r{r}"))
            .or_else(|| f.actor.as_ref().map(|a| format!("a{a}")))
            .or_else(|| f.kind.as_ref().map(|k| format!("k{k}")))
            .or_else(|| f.enterprise.map(|e| format!("e{e}")));
        let ids: Box<dyn Iterator<Item = Result<u64, StoreError>>> = match &key {
            Some(key) => Box::new(
                idx.range((key.as_str(), 0)..(key.as_str(), before))
                    .map_err(storage)?
                    .rev()
                    .map(|i| i.map(|(k, _)| k.value().1).map_err(storage)),
            ),
            None => Box::new(
                table
                    .range(0..before)
                    .map_err(storage)?
                    .rev()
                    .map(|i| i.map(|(k, _)| k.value()).map_err(storage)),
            ),
        };
        let mut items: Vec<Event> = Vec::new();
        let mut next = None;
        for id in ids {
            let id = id?;
            let Some(v) = table.get(id).map_err(storage)? else {
                continue;
            };
            let e: Event = dec(v.value())?;
            let keep = f.actor.as_ref().is_none_or(|a| *a == e.actor)
                && f.kind.as_ref().is_none_or(|k| *k == e.kind)
                && f.request.is_none_or(|r| Some(r) == e.request)
                && f.enterprise.is_none_or(|en| Some(en) == e.enterprise);
            if !keep {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|e| e.id);
                break;
            }
            items.push(e);
        }
        Ok(Page { items, next })
    }

    // --- sessions -----------------------------------------------------------

    /// The session stored under `key` (a hash of its id).
    pub fn session(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SESSIONS).map_err(storage)?;
        Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Stores a session (without an fsync of its own: a crash may sign
    /// people out, nothing more).
    pub fn put_session(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write_lazily(|txn| {
            let mut t = txn.open_table(SESSIONS).map_err(storage)?;
            t.insert(key, value).map_err(storage)?;
            Ok(())
        })
    }

    /// Stores a session only if `key` is unused; false when it is taken.
    pub fn create_session(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        self.write_lazily(|txn| {
            let mut t = txn.open_table(SESSIONS).map_err(storage)?;
            if t.get(key).map_err(storage)?.is_some() {
                return Ok(false);
            }
            t.insert(key, value).map_err(storage)?;
            Ok(true)
        })
    }

    /// Deletes a session.
    pub fn delete_session(&self, key: &[u8]) -> Result<(), StoreError> {
        // Durable: a sign-out must survive a crash.
        self.write(|txn| {
            let mut t = txn.open_table(SESSIONS).map_err(storage)?;
            t.remove(key).map_err(storage)?;
            Ok(())
        })
    }

    /// Deletes the sessions `expired` says are over.
    pub fn sweep_sessions(&self, expired: impl Fn(&[u8]) -> bool) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(SESSIONS).map_err(storage)?;
            t.retain(|_, v| !expired(v)).map_err(storage)?;
            Ok(())
        })
    }

    // --- mail ---------------------------------------------------------------

    /// Queues a mail; returns its number.
    pub fn queue_mail(&self, mut m: Mail) -> Result<u64, StoreError> {
        self.write(|txn| {
            m.id = Store::next_id(txn, "mail")?;
            let mut t = txn.open_table(MAIL).map_err(storage)?;
            t.insert(m.id, enc(&m)?.as_slice()).map_err(storage)?;
            let mut q = txn.open_table(MAIL_QUEUE).map_err(storage)?;
            q.insert((m.next_attempt, m.id), ()).map_err(storage)?;
            Ok(m.id)
        })
    }

    /// Queued mails due at `now`, oldest first.
    pub fn due_mail(&self, now: Unix, limit: usize) -> Result<Vec<Mail>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let q = txn.open_table(MAIL_QUEUE).map_err(storage)?;
        let t = txn.open_table(MAIL).map_err(storage)?;
        let mut out = Vec::new();
        for item in q
            .range((i64::MIN, 0)..=(now, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (k, _) = item.map_err(storage)?;
            if let Some(v) = t.get(k.value().1).map_err(storage)? {
                out.push(dec(v.value())?);
            }
        }
        Ok(out)
    }

    /// When the next queued mail is due.
    pub fn next_mail_due(&self) -> Result<Option<Unix>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let q = txn.open_table(MAIL_QUEUE).map_err(storage)?;
        let first = q.first().map_err(storage)?;
        Ok(first.map(|(k, _)| k.value().0))
    }

    /// Records the outcome of a delivery attempt.
    pub fn put_mail(&self, m: &Mail) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(MAIL).map_err(storage)?;
            let old: Option<Mail> = match t.get(m.id).map_err(storage)? {
                Some(v) => Some(dec(v.value())?),
                None => None,
            };
            t.insert(m.id, enc(m)?.as_slice()).map_err(storage)?;
            let mut q = txn.open_table(MAIL_QUEUE).map_err(storage)?;
            if let Some(old) = old {
                q.remove((old.next_attempt, old.id)).map_err(storage)?;
            }
            if m.state == MailState::Queued {
                q.insert((m.next_attempt, m.id), ()).map_err(storage)?;
            }
            Ok(())
        })
    }

    /// The mails about request `id`.
    pub fn mail_for_request(&self, id: u64) -> Result<Vec<Mail>, StoreError> {
        self.mails(|m| m.request == Some(id))
    }

    /// Every mail `keep` selects, oldest first.
    pub fn mails(&self, keep: impl Fn(&Mail) -> bool) -> Result<Vec<Mail>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(MAIL).map_err(storage)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(storage)? {
            let (_, v) = item.map_err(storage)?;
            let m: Mail = dec(v.value())?;
            if keep(&m) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// How many mails are queued (waiting for an attempt) and how many
    /// failed for good.
    pub fn mail_counts(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let queued = txn
            .open_table(MAIL_QUEUE)
            .map_err(storage)?
            .len()
            .map_err(storage)?;
        let mut failed = 0;
        let t = txn.open_table(MAIL).map_err(storage)?;
        for item in t.iter().map_err(storage)? {
            let (_, v) = item.map_err(storage)?;
            let m: Mail = dec(v.value())?;
            if m.state == MailState::Failed {
                failed += 1;
            }
        }
        Ok((queued, failed))
    }

    // --- tokens -------------------------------------------------------------

    /// Stores a token under the hash of its secret.
    pub fn put_token(&self, hash: &[u8], t: &Token) -> Result<(), StoreError> {
        let bytes = enc(t)?;
        self.write(|txn| {
            let mut tab = txn.open_table(TOKENS).map_err(storage)?;
            tab.insert(hash, bytes.as_slice()).map_err(storage)?;
            Ok(())
        })
    }

    /// The token stored under `hash`.
    pub fn token(&self, hash: &[u8]) -> Result<Option<Token>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(TOKENS).map_err(storage)?;
        match t.get(hash).map_err(storage)? {
            Some(v) => Ok(Some(dec(v.value())?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::model::{Request, State};

    /// A request of `enterprise` in `state` for `cn`.
    pub(crate) fn request(id: u64, enterprise: u64, state: State, cn: &str) -> Request {
        Request {
            id,
            pickup_id: format!("PK{id:08}"),
            certd_request_id: format!("ra-web-{id}"),
            enterprise,
            profile: "tls-server".into(),
            state,
            csr_pem: String::new(),
            key_summary: "P-256".into(),
            subject: certd_api::Subject {
                common_name: Some(cn.into()),
                ..Default::default()
            },
            san: certd_api::SubjectAltNames {
                dns: vec![cn.into()],
                ..Default::default()
            },
            validity_days: None,
            requester: "olivia".into(),
            notify_email: None,
            created_at: 0,
            updated_at: 0,
            validations: vec![],
            identity: None,
            approvals: vec![],
            approvals_required: 1,
            serial: None,
            certificate_pem: None,
            chain: vec![],
            not_after: None,
            last_error: None,
            retry_automatically: false,
            reject_reason: None,
            revocation: None,
            history: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::request;
    use super::*;
    use crate::model::Role;

    #[test]
    fn lists_follow_state_changes_and_scopes() {
        let s = Store::in_memory().expect("store");
        for i in 0..30u64 {
            s.create_request(|id| {
                request(
                    id,
                    1 + i % 2,
                    State::PendingApproval,
                    &format!("h{i}.example.com"),
                )
            })
            .expect("create");
        }
        let f = RequestFilter {
            enterprises: Some(vec![1]),
            state: Some(State::PendingApproval),
            ..Default::default()
        };
        let page = s.requests(&f, 10).expect("list");
        assert_eq!(page.items.len(), 10);
        assert!(page.items.iter().all(|r| r.enterprise == 1));
        assert!(page.items.windows(2).all(|w| w[0].id > w[1].id));
        let second = s
            .requests(
                &RequestFilter {
                    before: page.next,
                    ..f.clone()
                },
                10,
            )
            .expect("page 2");
        assert_eq!(second.items.len(), 5);
        assert_eq!(second.next, None);

        let first = page.items[0].id;
        s.update_request::<_, StoreError>(first, |r| {
            r.state = State::Approved;
            Ok(())
        })
        .expect("update");
        let pending = s.requests(&f, 100).expect("list");
        assert_eq!(pending.items.len(), 14);
        let approved = s
            .requests(
                &RequestFilter {
                    state: Some(State::Approved),
                    ..Default::default()
                },
                100,
            )
            .expect("list");
        assert_eq!(
            approved.items.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![first]
        );
        // Both enterprises together, merged newest first.
        let both = s
            .requests(
                &RequestFilter {
                    enterprises: Some(vec![1, 2]),
                    ..Default::default()
                },
                7,
            )
            .expect("list");
        assert_eq!(
            both.items.iter().map(|r| r.id).collect::<Vec<_>>(),
            (24..=30).rev().collect::<Vec<_>>()
        );
    }

    #[test]
    fn search_finds_names_words_and_pickup_ids_within_scope() {
        let s = Store::in_memory().expect("store");
        s.create_request(|id| request(id, 1, State::Issued, "www.example.com"))
            .expect("create");
        s.create_request(|id| request(id, 2, State::Issued, "www.example.com"))
            .expect("create");
        let search = |term: &str, scope: Option<Vec<u64>>| {
            s.requests(
                &RequestFilter {
                    search: Some(term.into()),
                    enterprises: scope,
                    ..Default::default()
                },
                10,
            )
            .expect("search")
            .items
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
        };
        assert_eq!(search("WWW.example.com", None), vec![2, 1]);
        assert_eq!(search("www.example.com", Some(vec![1])), vec![1]);
        assert_eq!(search("pk00000002", None), vec![2]);
        assert_eq!(search("nothing", None), Vec::<u64>::new());
    }

    #[test]
    fn a_refused_update_writes_nothing() {
        let s = Store::in_memory().expect("store");
        let r = s
            .create_request(|id| request(id, 1, State::PendingApproval, "a.example.com"))
            .expect("create");
        #[derive(Debug)]
        enum E {
            No,
            S,
        }
        impl From<StoreError> for E {
            fn from(_: StoreError) -> E {
                E::S
            }
        }
        let out = s.update_request(r.id, |r| {
            r.state = State::Issued;
            Err::<(), E>(E::No)
        });
        assert!(matches!(out, Err(E::No)));
        assert!(matches!(
            s.update_request::<(), E>(999, |_| Ok(())),
            Err(E::S)
        ));
        assert_eq!(
            s.request(r.id).expect("read").expect("exists").state,
            State::PendingApproval
        );
    }

    #[test]
    fn users_are_unique_without_regard_to_case() {
        let s = Store::in_memory().expect("store");
        let u = User {
            username: "Alice".into(),
            display_name: "Alice".into(),
            email: None,
            role: Role::Admin,
            enterprises: vec![],
            password_hash: "x".into(),
            totp: None,
            failed_logins: 0,
            locked_until: None,
            disabled: false,
            must_change_password: false,
            created_at: 0,
            generation: 0,
        };
        s.create_user(&u).expect("create");
        assert!(matches!(s.create_user(&u), Err(StoreError::Exists(_))));
        assert_eq!(
            s.user("alice").expect("read").expect("found").username,
            "Alice"
        );
    }

    #[test]
    fn events_filter_by_request_and_page() {
        let s = Store::in_memory().expect("store");
        for i in 0..5u64 {
            s.append_event(Event {
                id: 0,
                at: i as i64,
                actor: if i % 2 == 0 {
                    "alice".into()
                } else {
                    "bob".into()
                },
                kind: "request_changed".into(),
                enterprise: Some(1),
                request: Some(i % 2),
                source: None,
                detail: String::new(),
            })
            .expect("append");
        }
        let page = s
            .events(
                &EventFilter {
                    actor: Some("alice".into()),
                    ..Default::default()
                },
                2,
            )
            .expect("events");
        assert_eq!(
            page.items.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![5, 3]
        );
        assert_eq!(page.next, Some(3));
        let all = s.events(&EventFilter::default(), 10).expect("events");
        assert_eq!(all.items.len(), 5);
    }
}
