//! The batch journal: `journal.jsonl` in the output directory (mode 0600),
//! one JSON object per line, appended and flushed to disk before anything
//! depends on it.
//!
//! - `batch`: the first line; what the batch is (id, input hash, profile,
//!   certifier, expiry, key type, where generated passwords go). A re-run
//!   must match it.
//! - `run`: a run started, with the SHA-256 of the input it read.
//! - `requested`: written before a row's request is sent (again): the CSR
//!   and, for a key generated here, the key file in `keys/` that holds it
//!   (encrypted under the row's PKCS#12 password) with the file's SHA-256,
//!   so a re-run repeats the very same request (certd then answers with
//!   the certificate it already issued, never a second one). A repeat of
//!   a journaled key's request names no key. Journals of ra-cli before
//!   version 3 hold the key in the line itself ([`KeyRef::Inline`]).
//! - `issued`: a row's outcome, after its files are durably in place
//!   (file and directory flushed) and its key has left `keys/`.
//! - `failed`: a row failed; whether certd may hold a certificate for it
//!   (it answered with one, or the answer was lost) is recorded.
//!
//! The journal holds no key: each waits in a file of its own
//! ([`super::keystore`]), which goes as soon as its PKCS#12 is delivered.
//! [`compact`] rewrites the journal atomically with only what a re-run
//! needs (a finished row keeps its `issued` line; a row not finished keeps
//! its request and its last failure); every run compacts when it starts.
//!
//! A crash or a full disk can leave the last line torn (no line end): it
//! was never acknowledged, so nothing depends on it; readers ignore it and
//! [`Writer::open`] cuts it off before appending. Any other line that is
//! not an entry is corruption and an error.
//!
//! Writes go through one thread that groups whatever is waiting into a
//! single write and `fsync` (group commit), so many concurrent rows share
//! one flush; directory flushes a line depends on ([`Flush`]) are grouped
//! the same way. Generated passwords are appended to the password file in
//! the same group, flushed before the journal line that needs them. A
//! failed write is cut back off, so the next append starts on a line of
//! its own.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use zeroize::Zeroizing;

/// Journal file name.
pub const JOURNAL: &str = "journal.jsonl";
/// Default generated passwords file name (in the output directory).
pub const PASSWORDS: &str = "passwords.csv";
/// Journal format version written by this ra-cli (3: keys in `keys/`).
pub const VERSION: u32 = 3;
/// Header of the passwords file.
pub const PASSWORDS_HEADER: &str = "line,email,file,password\n";

fn yes() -> bool {
    true
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// What the batch is.
    Batch(BatchHeader),
    /// A run started.
    Run {
        /// When, RFC 3339.
        started: String,
        /// SHA-256 of the input this run validated, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_sha256: Option<String>,
    },
    /// A row's request is about to be sent.
    Requested {
        /// Line in the input.
        line: u64,
        /// The row's request id.
        request_id: String,
        /// Base name of the row's files.
        #[serde(default)]
        file: String,
        /// The CSR sent, PEM.
        csr: String,
        /// A key generated here, in the line itself: `ENCRYPTED PRIVATE
        /// KEY` PEM under the row's password. Only in journals of ra-cli
        /// before version 3.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// A key generated here: its file, `keys/REQUEST_ID.key`. Absent
        /// for a subscriber's CSR, and when the request of a key journaled
        /// earlier is sent again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_file: Option<String>,
        /// SHA-256 of that file, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_sha256: Option<String>,
    },
    /// A row was issued and its files are durably in place.
    Issued {
        /// Line in the input.
        line: u64,
        /// The row's request id.
        request_id: String,
        /// Serial, hex.
        serial: String,
        /// notAfter, RFC 3339.
        not_after: String,
        /// Whether the validity was shortened by policy.
        clamped: bool,
        /// Base name of the row's files (`NAME.pem`, `NAME.p12`).
        file: String,
        /// Whether a PKCS#12 was written.
        p12: bool,
    },
    /// A row failed.
    Failed {
        /// Line in the input.
        line: u64,
        /// The row's request id.
        request_id: String,
        /// Base name of the row's files.
        #[serde(default)]
        file: String,
        /// Error code.
        code: String,
        /// Error message.
        message: String,
        /// The serial certd issued, when it answered before the row
        /// failed (its files could not be written).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        /// Whether certd may hold a certificate for this request id:
        /// false only when its last answer proves there is none (or the
        /// attempt failed before sending, and no earlier one was sent).
        #[serde(default = "yes")]
        certificate_may_exist: bool,
    },
}

/// Where the PKCS#12 passwords of a batch come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordMode {
    /// One generated per row, written to the passwords file.
    Generated,
    /// One for all rows, from `--p12-password-file`.
    File,
}

impl PasswordMode {
    /// For messages.
    pub fn describe(self) -> &'static str {
        match self {
            PasswordMode::Generated => "generated passwords",
            PasswordMode::File => "--p12-password-file",
        }
    }
}

/// The first line of a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    /// Format version.
    pub version: u32,
    /// Batch id.
    pub batch_id: String,
    /// Input file as given.
    pub input: String,
    /// SHA-256 of the input the batch was started with, hex.
    pub input_sha256: String,
    /// Profile.
    pub profile: String,
    /// Certifier, if chosen.
    pub certifier: Option<String>,
    /// `--expires`/`--days` as given (`expires:DATE`, `days:N`, `default`).
    pub expiry: String,
    /// The notAfter requested for every row (fixed at the first run, so
    /// `--days` gives the same requests when resumed).
    pub not_after: Option<String>,
    /// Key type of generated keys.
    pub key_type: String,
    /// When the batch started, RFC 3339.
    pub created: String,
    /// Where the passwords of generated keys come from (absent in journals
    /// of ra-cli before version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_mode: Option<PasswordMode>,
    /// The generated passwords file, absolute (absent: the default
    /// `DIR/passwords.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passwords_file: Option<String>,
}

/// A row issued and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Serial, hex.
    pub serial: String,
    /// notAfter.
    pub not_after: String,
    /// Clamped by policy.
    pub clamped: bool,
    /// Base name of the row's files.
    pub file: String,
    /// Whether a PKCS#12 belongs to it.
    pub p12: bool,
}

impl Done {
    /// The row's files that are not in `dir` (or empty).
    pub fn missing_files(&self, dir: &Path) -> Vec<String> {
        let mut names = vec![format!("{}.pem", self.file)];
        if self.p12 {
            names.push(format!("{}.p12", self.file));
        }
        names
            .into_iter()
            .filter(|n| {
                !std::fs::metadata(dir.join(n))
                    .map(|m| m.is_file() && m.len() > 0)
                    .unwrap_or(false)
            })
            .collect()
    }
}

/// The last failure of a row not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Error code.
    pub code: String,
    /// Error message.
    pub message: String,
    /// Serial certd answered with, if it did.
    pub serial: Option<String>,
    /// Whether certd may hold a certificate.
    pub certificate_may_exist: bool,
}

/// Where the journal says a key generated for a row is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// In the `requested` line itself (ra-cli before journal version 3);
    /// moved to a key file when the next run starts.
    Inline(String),
    /// In `keys/REQUEST_ID.key`, whose bytes have this SHA-256 (hex).
    File {
        /// SHA-256 of the file, hex.
        sha256: String,
    },
}

/// What the journal knows of one request id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowRecord {
    /// Line in the input when last journaled.
    pub line: u64,
    /// Base name of the row's files.
    pub file: String,
    /// The CSR last sent (while the row is not finished).
    pub csr: Option<String>,
    /// The key generated for it (while the row is not finished).
    pub key: Option<KeyRef>,
    /// Set once it is issued and delivered.
    pub done: Option<Done>,
    /// The last failure since the last request.
    pub failure: Option<Failure>,
    /// Whether certd may hold a certificate for this request id: it was
    /// sent and not answered by a refusal.
    pub certificate_may_exist: bool,
}

impl RowRecord {
    /// Whether the journal holds a request of this row not finished.
    pub fn pending(&self) -> bool {
        self.done.is_none() && self.csr.is_some()
    }
}

/// What a journal says.
#[derive(Debug, Default)]
pub struct State {
    /// Its header.
    pub header: Option<BatchHeader>,
    /// The runs, as recorded (kept by compaction).
    pub runs: Vec<(String, Option<String>)>,
    /// Every request id it knows.
    pub rows: HashMap<String, RowRecord>,
    /// Request ids by file base name (a row edited after certd refused it
    /// has two).
    pub by_file: HashMap<String, Vec<String>>,
    /// Bytes up to the end of the last complete line.
    pub good_len: u64,
    /// Whether a torn last line follows them.
    pub torn_tail: bool,
}

impl State {
    /// Rows with a key journaled and not delivered.
    pub fn pending_keys(&self) -> impl Iterator<Item = (&String, &RowRecord)> {
        self.rows
            .iter()
            .filter(|(_, r)| r.done.is_none() && r.key.is_some())
    }

    /// Applies entries directly, for tests elsewhere in the crate.
    #[cfg(test)]
    pub(crate) fn apply_for_test(&mut self, entry: Entry, n: u64) {
        self.apply(entry, n, Path::new("test"))
            .expect("entry applies");
    }

    fn apply(&mut self, entry: Entry, n: u64, path: &Path) -> Result<(), Error> {
        let mut index = |file: &str, request_id: &str| {
            let ids = self.by_file.entry(file.to_string()).or_default();
            if !ids.iter().any(|i| i == request_id) {
                ids.push(request_id.to_string());
            }
        };
        match entry {
            Entry::Batch(h) => {
                if self.header.is_some() {
                    return Err(corrupt(path, format!("line {n}: a second batch header")));
                }
                self.header = Some(h);
            }
            Entry::Run {
                started,
                input_sha256,
            } => self.runs.push((started, input_sha256)),
            Entry::Requested {
                line,
                request_id,
                file,
                csr,
                key,
                key_file,
                key_sha256,
            } => {
                let key = match (key, key_file, key_sha256) {
                    (key, None, None) => key.map(KeyRef::Inline),
                    (None, Some(f), Some(sha256))
                        if super::keystore::valid_id(&request_id)
                            && f == super::keystore::file_name(&request_id) =>
                    {
                        Some(KeyRef::File { sha256 })
                    }
                    _ => {
                        return Err(corrupt(
                            path,
                            format!("line {n}: a key reference ra-cli does not write"),
                        ))
                    }
                };
                index(&file, &request_id);
                let r = self.rows.entry(request_id).or_default();
                r.line = line;
                r.file = file;
                r.csr = Some(csr);
                // A repeat of an earlier request carries no key: the
                // journaled one still belongs to it.
                if key.is_some() {
                    r.key = key;
                }
                r.done = None;
                r.failure = None;
                r.certificate_may_exist = true;
            }
            Entry::Issued {
                line,
                request_id,
                serial,
                not_after,
                clamped,
                file,
                p12,
            } => {
                index(&file, &request_id);
                let r = self.rows.entry(request_id).or_default();
                r.line = line;
                r.file = file.clone();
                // Delivered: the key is in the PKCS#12.
                r.key = None;
                r.csr = None;
                r.failure = None;
                r.certificate_may_exist = true;
                r.done = Some(Done {
                    serial,
                    not_after,
                    clamped,
                    file,
                    p12,
                });
            }
            Entry::Failed {
                line,
                request_id,
                file,
                code,
                message,
                serial,
                certificate_may_exist,
            } => {
                index(&file, &request_id);
                let r = self.rows.entry(request_id).or_default();
                if r.done.is_some() {
                    // A later run's failure (e.g. its files went missing)
                    // does not undo a delivery.
                    return Ok(());
                }
                r.line = line;
                r.file = file;
                r.certificate_may_exist = certificate_may_exist || serial.is_some();
                r.failure = Some(Failure {
                    code,
                    message,
                    serial,
                    certificate_may_exist,
                });
            }
        }
        Ok(())
    }

    /// The entries a compacted journal holds: the header, the runs, then
    /// per row (in input order) what re-creates its record.
    fn compacted(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        if let Some(h) = &self.header {
            out.push(Entry::Batch(h.clone()));
        }
        for (started, sha) in &self.runs {
            out.push(Entry::Run {
                started: started.clone(),
                input_sha256: sha.clone(),
            });
        }
        let mut ids: Vec<(&String, &RowRecord)> = self.rows.iter().collect();
        ids.sort_by(|a, b| (a.1.line, a.0).cmp(&(b.1.line, b.0)));
        for (id, r) in ids {
            if let Some(d) = &r.done {
                out.push(Entry::Issued {
                    line: r.line,
                    request_id: id.clone(),
                    serial: d.serial.clone(),
                    not_after: d.not_after.clone(),
                    clamped: d.clamped,
                    file: d.file.clone(),
                    p12: d.p12,
                });
                continue;
            }
            if let Some(csr) = &r.csr {
                let (key, key_file, key_sha256) = match &r.key {
                    None => (None, None, None),
                    Some(KeyRef::Inline(pem)) => (Some(pem.clone()), None, None),
                    Some(KeyRef::File { sha256 }) => (
                        None,
                        Some(super::keystore::file_name(id)),
                        Some(sha256.clone()),
                    ),
                };
                out.push(Entry::Requested {
                    line: r.line,
                    request_id: id.clone(),
                    file: r.file.clone(),
                    csr: csr.clone(),
                    key,
                    key_file,
                    key_sha256,
                });
            }
            if let Some(f) = &r.failure {
                out.push(Entry::Failed {
                    line: r.line,
                    request_id: id.clone(),
                    file: r.file.clone(),
                    code: f.code.clone(),
                    message: f.message.clone(),
                    serial: f.serial.clone(),
                    certificate_may_exist: f.certificate_may_exist,
                });
            }
        }
        out
    }
}

fn corrupt(path: &Path, message: String) -> Error {
    Error::Journal {
        path: path.to_path_buf(),
        message: format!(
            "{message}. The journal is damaged in the middle (not just a torn last line): \
             restore it from a backup, or move the output directory aside and start the batch \
             in a new one (rows issued already will be issued again)"
        ),
    }
}

/// Reads the journal of output directory `dir` (an absent journal is an
/// empty state). A last line without a line end is a torn write and is
/// ignored; any other line that is not an entry is an error.
pub fn read(dir: &Path) -> Result<State, Error> {
    let path = &dir.join(JOURNAL);
    let mut state = State::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            // Torn: never acknowledged, so nothing depends on it.
            state.torn_tail = true;
            break;
        }
        n += 1;
        let text = std::str::from_utf8(&buf)
            .map_err(|_| corrupt(path, format!("line {n} is not UTF-8")))?;
        let entry: Entry = serde_json::from_str(text.trim_end())
            .map_err(|e| corrupt(path, format!("line {n} is not a journal entry: {e}")))?;
        if n == 1 && !matches!(entry, Entry::Batch(_)) {
            return Err(corrupt(path, "line 1 is not the batch header".into()));
        }
        state.apply(entry, n, path)?;
        state.good_len += read as u64;
    }
    Ok(state)
}

/// Rewrites the journal of `dir` atomically (temporary file, flush,
/// rename, directory flush) from `state`: superseded and torn lines go,
/// and keys a journal of an earlier version held (moved to key files
/// first, [`super::keystore::KeyStore::take_inline_keys`]).
pub fn compact(dir: &Path, state: &State) -> Result<(), Error> {
    if state.header.is_none() {
        return Ok(());
    }
    let path = dir.join(JOURNAL);
    let out_err = |e: std::io::Error| Error::output(&path, e);
    let tmp = tempfile::Builder::new()
        .prefix(crate::output::TEMP_PREFIX)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(
            crate::output::MODE_SECRET,
        ))
        .tempfile_in(dir)
        .map_err(out_err)?;
    let mut w = std::io::BufWriter::new(tmp);
    for entry in state.compacted() {
        let line = serde_json::to_string(&entry).map_err(|e| Error::Crypto(e.to_string()))?;
        w.write_all(line.as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .map_err(out_err)?;
    }
    let tmp = w.into_inner().map_err(|e| out_err(e.into_error()))?;
    tmp.as_file().sync_data().map_err(out_err)?;
    tmp.persist(&path).map_err(|e| out_err(e.error))?;
    crate::output::sync_dir(dir)
}

/// Splits one CSV record (RFC 4180 quoting) into `fields`, reusing them.
fn split_record(line: &str, fields: &mut Vec<Zeroizing<String>>) {
    fields.clear();
    let mut cur = Zeroizing::new(String::new());
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', q) => quoted = !q,
            (',', false) => fields.push(std::mem::replace(&mut cur, Zeroizing::new(String::new()))),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
}

/// One field, quoted when it holds a comma, a quote or a line end.
fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// A password line of the passwords file (`line,email,file,password`),
/// built in a buffer that is wiped when dropped.
pub fn password_line(line: u64, email: &str, file: &str, password: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(64 + password.len()));
    out.push_str(&line.to_string());
    out.push(',');
    csv_field(&mut out, email);
    out.push(',');
    csv_field(&mut out, file);
    out.push(',');
    csv_field(&mut out, password);
    out.push('\n');
    out
}

/// A line of the passwords file.
struct PasswordEntry {
    line: u64,
    email: String,
    file: String,
    password: Zeroizing<String>,
}

/// Reads the passwords file: for each file name, the last complete line.
/// A torn last line (no line end) is ignored: its key was never journaled.
fn read_password_entries(path: &Path) -> Result<Vec<PasswordEntry>, Error> {
    let mut text = Zeroizing::new(Vec::new());
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut text).map_err(|e| Error::io(path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let complete = match text.iter().rposition(|b| *b == b'\n') {
        Some(i) => &text[..=i],
        None => &text[..0],
    };
    let complete = std::str::from_utf8(complete).map_err(|_| Error::Password {
        code: "password_missing",
        message: format!("{}: not UTF-8 text", path.display()),
    })?;
    let mut out: Vec<PasswordEntry> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut fields = Vec::new();
    for (i, l) in complete.lines().enumerate() {
        if i == 0 || l.is_empty() {
            continue;
        }
        split_record(l, &mut fields);
        let [line, email, file, password] = &fields[..] else {
            continue;
        };
        let e = PasswordEntry {
            line: line.parse().unwrap_or(0),
            email: email.to_string(),
            file: file.to_string(),
            password: password.clone(),
        };
        match index.get(&e.file) {
            Some(i) => out[*i] = e,
            None => {
                index.insert(e.file.clone(), out.len());
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// Reads the passwords file: the last password written for each file name
/// (`NAME.p12`).
pub fn read_passwords(path: &Path) -> Result<HashMap<String, Zeroizing<String>>, Error> {
    Ok(read_password_entries(path)?
        .into_iter()
        .map(|e| (e.file, e.password))
        .collect())
}

/// Rewrites the passwords file atomically keeping, for each file name, the
/// last password, and only for the files `keep` accepts (delivered
/// PKCS#12 files and keys still journaled).
pub fn compact_passwords(path: &Path, keep: impl Fn(&str) -> bool) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    let mut rows = read_password_entries(path)?;
    rows.retain(|r| keep(&r.file));
    rows.sort_by_key(|r| r.line);
    let mut text = Zeroizing::new(String::from(PASSWORDS_HEADER));
    for r in &rows {
        text.push_str(&password_line(r.line, &r.email, &r.file, &r.password));
    }
    crate::output::write_atomic(path, text.as_bytes(), crate::output::MODE_SECRET, true)?;
    crate::output::sync_dir(parent_of(path))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Cuts a torn last line (bytes after the last line end) off `file`;
/// returns the length kept.
pub fn cut_torn_tail(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end != len {
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(end)
}

/// Directories a commit flushes before its journal lines, so that what
/// was created, renamed or removed in them before the call is durable
/// before a line that depends on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flush {
    /// The output directory (a row's delivered files).
    pub out_dir: bool,
    /// `keys/` (a key file written, a PKCS#12 staged, a key removed).
    pub keys_dir: bool,
}

impl Flush {
    /// No directory.
    pub const NONE: Flush = Flush {
        out_dir: false,
        keys_dir: false,
    };
    /// The output directory.
    pub const OUT: Flush = Flush {
        out_dir: true,
        keys_dir: false,
    };
    /// `keys/`.
    pub const KEYS: Flush = Flush {
        out_dir: false,
        keys_dir: true,
    };
    /// Both.
    pub const BOTH: Flush = Flush {
        out_dir: true,
        keys_dir: true,
    };
}

struct Write1 {
    journal: Option<String>,
    password: Option<Zeroizing<String>>,
    flush: Flush,
    ack: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The writer: a thread that appends and flushes in groups.
#[derive(Debug)]
pub struct Writer {
    tx: Option<mpsc::Sender<Write1>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A file appended to, with the length of what is known good.
struct Appended {
    file: File,
    len: u64,
    name: String,
}

impl Appended {
    /// Opens (creating, mode 0600) `path` for appending and cuts a torn
    /// last line off it.
    fn open(path: &Path) -> Result<Appended, Error> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(crate::output::MODE_SECRET)
            .open(path)
            .map_err(|e| Error::output(path, e))?;
        let len = cut_torn_tail(&mut file).map_err(|e| Error::output(path, e))?;
        Ok(Appended {
            file,
            len,
            name: path.display().to_string(),
        })
    }

    /// Appends and flushes `text`; on failure cuts back to the last good
    /// length, so the next append does not continue a torn line.
    fn append(&mut self, text: &[u8]) -> Result<(), String> {
        match self
            .file
            .write_all(text)
            .and_then(|_| self.file.sync_data())
        {
            Ok(()) => {
                self.len += text.len() as u64;
                Ok(())
            }
            Err(e) => {
                let cut = self
                    .file
                    .set_len(self.len)
                    .and_then(|_| self.file.sync_data());
                Err(match cut {
                    Ok(()) => format!("{}: {e}", self.name),
                    Err(e2) => format!("{}: {e} (and cutting the torn write off: {e2})", self.name),
                })
            }
        }
    }
}

impl Writer {
    /// Opens (creating) the journal in `dir` and, when `passwords` is
    /// given, the passwords file there; cuts a torn last line off each.
    pub fn open(dir: &Path, passwords: Option<&Path>) -> Result<Writer, Error> {
        let journal_path = dir.join(JOURNAL);
        let mut journal = Appended::open(&journal_path)?;
        let mut pw_file = None;
        if let Some(path) = passwords {
            let mut f = Appended::open(path)?;
            if f.len == 0 {
                f.append(PASSWORDS_HEADER.as_bytes())
                    .map_err(|m| Error::output(path, m))?;
                crate::output::sync_dir(parent_of(path))?;
            }
            pw_file = Some(f);
        }
        let dir: PathBuf = dir.to_path_buf();
        let (tx, rx) = mpsc::channel::<Write1>();
        let thread = std::thread::Builder::new()
            .name("ra-cli-journal".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        group.push(more);
                    }
                    let result = commit(&dir, &mut journal, pw_file.as_mut(), &group);
                    for w in group {
                        let _ = w.ack.send(result.clone());
                    }
                }
            })
            .map_err(|e| Error::io(&journal_path, e))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Appends `entry` (and a password line before it) durably; returns
    /// once both are on disk. The directories `flush` names are flushed
    /// first, so what was done in them before this call is durable before
    /// the line.
    pub async fn append(
        &self,
        entry: &Entry,
        password: Option<Zeroizing<String>>,
        flush: Flush,
    ) -> Result<(), Error> {
        let mut line =
            serde_json::to_string(entry).map_err(|e| Error::Crypto(format!("journal: {e}")))?;
        line.push('\n');
        self.send(Some(line), password, flush).await
    }

    /// Flushes the directories `flush` names (grouped with other rows'
    /// flushes); returns once they are on disk.
    pub async fn flush(&self, flush: Flush) -> Result<(), Error> {
        self.send(None, None, flush).await
    }

    async fn send(
        &self,
        line: Option<String>,
        password: Option<Zeroizing<String>>,
        flush: Flush,
    ) -> Result<(), Error> {
        let (ack, wait) = tokio::sync::oneshot::channel();
        let gone = || Error::output(JOURNAL, "the journal writer stopped");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Write1 {
                journal: line,
                password,
                flush,
                ack,
            })
            .map_err(|_| gone())?;
        wait.await
            .map_err(|_| gone())?
            .map_err(|message| Error::output(JOURNAL, message))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn commit(
    dir: &Path,
    journal: &mut Appended,
    passwords: Option<&mut Appended>,
    group: &[Write1],
) -> Result<(), String> {
    let mut pw_text = Zeroizing::new(String::new());
    let mut j_text = String::new();
    let mut flush = Flush::NONE;
    for w in group {
        if let Some(p) = &w.password {
            pw_text.push_str(p);
        }
        if let Some(j) = &w.journal {
            j_text.push_str(j);
        }
        flush.out_dir |= w.flush.out_dir;
        flush.keys_dir |= w.flush.keys_dir;
    }
    if !pw_text.is_empty() {
        passwords
            .ok_or("no password file is open")?
            .append(pw_text.as_bytes())?;
    }
    if flush.keys_dir {
        crate::output::sync_dir(&dir.join(super::keystore::DIR)).map_err(|e| e.to_string())?;
    }
    if flush.out_dir {
        crate::output::sync_dir(dir).map_err(|e| e.to_string())?;
    }
    if !j_text.is_empty() {
        journal.append(j_text.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sorted(state: &State) -> BTreeMap<&str, &RowRecord> {
        state.rows.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    fn header() -> BatchHeader {
        BatchHeader {
            version: VERSION,
            batch_id: "b".into(),
            input: "in.csv".into(),
            input_sha256: "00".into(),
            profile: "p".into(),
            certifier: None,
            expiry: "default".into(),
            not_after: None,
            key_type: "p256".into(),
            created: "2026-01-01T00:00:00Z".into(),
            password_mode: Some(PasswordMode::Generated),
            passwords_file: None,
        }
    }

    /// A request line; `key` names a key file by its SHA-256.
    fn requested(id: &str, line: u64, key: Option<&str>) -> Entry {
        Entry::Requested {
            line,
            request_id: id.into(),
            file: format!("{id}@example.com"),
            csr: format!("csr-{id}"),
            key: None,
            key_file: key.map(|_| crate::batch::keystore::file_name(id)),
            key_sha256: key.map(str::to_string),
        }
    }

    fn file_key(sha256: &str) -> Option<KeyRef> {
        Some(KeyRef::File {
            sha256: sha256.into(),
        })
    }

    fn issued(id: &str, line: u64) -> Entry {
        Entry::Issued {
            line,
            request_id: id.into(),
            serial: format!("serial-{id}"),
            not_after: "t".into(),
            clamped: false,
            file: format!("{id}@example.com"),
            p12: true,
        }
    }

    fn failed(id: &str, line: u64, may_exist: bool) -> Entry {
        Entry::Failed {
            line,
            request_id: id.into(),
            file: format!("{id}@example.com"),
            code: "certifier_locked".into(),
            message: "locked".into(),
            serial: None,
            certificate_may_exist: may_exist,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
    }

    fn write_entries(dir: &Path, entries: &[Entry]) {
        let w = Writer::open(dir, Some(&dir.join(PASSWORDS))).expect("open");
        rt().block_on(async {
            for e in entries {
                w.append(e, None, Flush::NONE).await.expect("append");
            }
        });
    }

    #[test]
    fn a_torn_last_line_is_ignored_then_cut_off_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_entries(
            dir.path(),
            &[Entry::Batch(header()), requested("r1", 2, Some("KEY1"))],
        );
        let path = dir.path().join(JOURNAL);
        let whole = std::fs::metadata(&path).expect("meta").len();
        // A torn write that happens to parse is still torn: no line end.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"event\":\"run\",\"started\":\"x\"}")
            .expect("torn");
        let st = read(dir.path()).expect("a torn tail is not an error");
        assert!(st.torn_tail);
        assert_eq!(st.good_len, whole);
        assert!(st.runs.is_empty());
        assert_eq!(st.rows["r1"].key, file_key("KEY1"));

        // Opening for the next append cuts it off; the append lands on a
        // line of its own and everything reads back.
        write_entries(dir.path(), &[issued("r1", 2)]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("\"started\":\"x\""), "{text}");
        let st = read(dir.path()).expect("read");
        assert!(!st.torn_tail);
        assert!(st.rows["r1"].done.is_some());

        // Non-UTF-8 garbage as a torn tail is cut off too.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[0xff, 0x00, 0x7b]).expect("torn");
        assert!(read(dir.path()).expect("read").torn_tail);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        assert_eq!(cut_torn_tail(&mut f).expect("cut"), st.good_len);
        assert_eq!(std::fs::read_to_string(&path).expect("utf-8"), text);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_entries(dir.path(), &[Entry::Batch(header())]);
        let path = dir.path().join(JOURNAL);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"event\":\"issu\n{\"event\":\"run\",\"started\":\"x\"}\n")
            .expect("write");
        let e = read(dir.path()).expect_err("corrupt");
        assert_eq!(e.code(), "journal_corrupt");
        assert!(e.to_string().contains("line 2"), "{e}");
        // A complete last line that is not an entry is corruption as well.
        std::fs::write(&path, "garbage\n").expect("write");
        assert_eq!(
            read(dir.path()).expect_err("corrupt").code(),
            "journal_corrupt"
        );
    }

    #[test]
    fn key_references_are_ra_clis_own_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = "batch-00112233445566778899aabbccddeeff";
        // A line of ra-cli before version 3: the key in the line.
        let old = format!(
            "{{\"event\":\"requested\",\"line\":2,\"request_id\":\"{id}\",\"file\":\"a\",\
             \"csr\":\"C\",\"key\":\"OLD-KEY\"}}\n"
        );
        let with = |line: &str| {
            write_entries(dir.path(), &[Entry::Batch(header())]);
            let path = dir.path().join(JOURNAL);
            let mut f = OpenOptions::new().append(true).open(&path).expect("open");
            f.write_all(line.as_bytes()).expect("write");
            let st = read(dir.path());
            std::fs::remove_file(&path).expect("rm");
            st
        };
        let st = with(&old).expect("an old line reads");
        assert_eq!(st.rows[id].key, Some(KeyRef::Inline("OLD-KEY".into())));
        // A file reference must be the request's own key file, with its
        // digest; a path elsewhere is damage.
        let refers = |file: &str, sha: Option<&str>| {
            let sha = sha.map_or(String::new(), |s| format!(",\"key_sha256\":\"{s}\""));
            format!(
                "{{\"event\":\"requested\",\"line\":2,\"request_id\":\"{id}\",\"file\":\"a\",\
                 \"csr\":\"C\",\"key_file\":\"{file}\"{sha}}}\n"
            )
        };
        let own = crate::batch::keystore::file_name(id);
        let st = with(&refers(&own, Some("ab"))).expect("reads");
        assert_eq!(st.rows[id].key, file_key("ab"));
        for bad in [
            refers("../../etc/passwd", Some("ab")),
            refers("keys/batch-other.key", Some("ab")),
            refers(&own, None),
        ] {
            let e = with(&bad).expect_err("refused");
            assert_eq!(e.code(), "journal_corrupt", "{bad}");
        }
    }

    #[test]
    fn compaction_keeps_what_a_resume_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_entries(
            dir.path(),
            &[
                Entry::Batch(header()),
                Entry::Run {
                    started: "r".into(),
                    input_sha256: Some("aa".into()),
                },
                requested("done", 2, Some("KEY-DONE")),
                requested("pending", 3, Some("KEY-PENDING")),
                requested("refused", 4, None),
                issued("done", 2),
                failed("pending", 3, false),
                failed("refused", 4, false),
                // Sent again in a later run: certd may have issued now.
                requested("pending", 3, None),
                failed("lost", 5, true),
            ],
        );
        let before = read(dir.path()).expect("read");
        assert_eq!(before.rows["pending"].key, file_key("KEY-PENDING"));
        assert!(before.rows["pending"].certificate_may_exist);
        assert!(!before.rows["refused"].certificate_may_exist);
        assert!(before.rows["lost"].certificate_may_exist);
        assert_eq!(before.pending_keys().count(), 1);

        compact(dir.path(), &before).expect("compact");
        let path = dir.path().join(JOURNAL);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains("KEY-DONE"),
            "a delivered key's file is not named: {text}"
        );
        assert!(
            text.contains("KEY-PENDING"),
            "a pending key's file is: {text}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let after = read(dir.path()).expect("read");
        assert_eq!(after.header, before.header);
        assert_eq!(after.runs, before.runs);
        assert_eq!(sorted(&after), sorted(&before));
        assert!(after.rows["done"].key.is_none());
        assert_eq!(
            after.by_file["pending@example.com"],
            vec!["pending".to_string()]
        );
        // Compacting again changes nothing.
        compact(dir.path(), &after).expect("compact");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }

    #[test]
    fn passwords_keep_the_last_line_per_file_and_survive_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(PASSWORDS);
        {
            let w = Writer::open(dir.path(), Some(&path)).expect("open");
            rt().block_on(async {
                for (i, pw) in ["first", "pw,\"x", "third"].iter().enumerate() {
                    let file = if i == 2 { "a.p12" } else { "b.p12" };
                    w.append(
                        &Entry::Run {
                            started: i.to_string(),
                            input_sha256: None,
                        },
                        Some(password_line(i as u64 + 2, "a@example.com", file, pw)),
                        Flush::NONE,
                    )
                    .await
                    .expect("append");
                }
            });
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // A torn password line must not swallow the next one.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"9,c@example.com,c.p12,tor").expect("torn");
        let pws = read_passwords(&path).expect("read");
        assert_eq!(pws["b.p12"].as_str(), "pw,\"x");
        assert_eq!(pws["a.p12"].as_str(), "third");
        assert!(!pws.contains_key("c.p12"));
        {
            let w = Writer::open(dir.path(), Some(&path)).expect("open");
            rt().block_on(async {
                w.append(
                    &Entry::Run {
                        started: "x".into(),
                        input_sha256: None,
                    },
                    Some(password_line(9, "c@example.com", "c.p12", "whole")),
                    Flush::NONE,
                )
                .await
                .expect("append");
            });
        }
        assert_eq!(
            read_passwords(&path).expect("read")["c.p12"].as_str(),
            "whole"
        );

        compact_passwords(&path, |f| f != "a.p12").expect("compact");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "line,email,file,password\n3,a@example.com,b.p12,\"pw,\"\"x\"\n9,c@example.com,c.p12,whole\n"
        );
    }
}
