//! The batch journal: `journal.jsonl` in the output directory, one JSON
//! object per line, appended and flushed to disk before anything depends
//! on it.
//!
//! - `batch`: the first line; what the batch is (id, input hash, profile,
//!   certifier, expiry, key type). A re-run must match it.
//! - `requested`: written before a row with a generated key is sent: its
//!   CSR and its key, encrypted with the row's PKCS#12 password, so a
//!   re-run repeats the very same request (certd then answers with the
//!   certificate it already issued, never a second one).
//! - `issued` / `failed`: a row's outcome, after its files are in place.
//!
//! Row files are renamed into place but not flushed one by one: a re-run
//! checks that the files of every row the journal calls issued are there
//! and not empty, and redoes the rows whose files a crash of the machine
//! lost (certd replays the certificate; the journaled key rebuilds the
//! PKCS#12). So one journal flush per group is all the I/O waiting.
//!
//! Writes go through one thread that groups whatever is waiting into a
//! single write and `fsync` (group commit), so many concurrent rows share
//! one flush. Generated passwords are appended to `passwords.csv` in the
//! same group, flushed before the journal line that needs them.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Journal file name.
pub const JOURNAL: &str = "journal.jsonl";
/// Generated passwords file name.
pub const PASSWORDS: &str = "passwords.csv";

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// What the batch is.
    Batch(BatchHeader),
    /// A run started (for the record).
    Run {
        /// When, RFC 3339.
        started: String,
    },
    /// A generated-key row is about to be sent.
    Requested {
        /// Line in the input.
        line: u64,
        /// The row's request id.
        request_id: String,
        /// The CSR sent, PEM.
        csr: String,
        /// The key, `ENCRYPTED PRIVATE KEY` PEM under the row's password.
        key: String,
    },
    /// A row was issued and its files are in place.
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
        /// Error code.
        code: String,
        /// Error message.
        message: String,
    },
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
    /// SHA-256 of the input, hex.
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
}

/// A row issued by an earlier run.
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
    /// Whether the row's files are in `dir` and not empty.
    pub fn files_present(&self, dir: &Path) -> bool {
        let ok = |ext: &str| {
            std::fs::metadata(dir.join(format!("{}.{ext}", self.file)))
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        };
        ok("pem") && (!self.p12 || ok("p12"))
    }
}

/// A generated-key row that was sent (or about to be) when an earlier run
/// stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The CSR.
    pub csr: String,
    /// The encrypted key.
    pub key: String,
}

/// What a journal says.
#[derive(Debug, Default)]
pub struct State {
    /// Its header.
    pub header: Option<BatchHeader>,
    /// Rows issued, by request id.
    pub done: HashMap<String, Done>,
    /// Rows requested but not finished, by request id.
    pub pending: HashMap<String, Pending>,
}

/// Reads the journal of output directory `dir`. A last line cut short by a
/// crash is ignored; anything else unreadable is an error. Rows whose files
/// are missing are not counted as done (their journaled request, if any,
/// is pending again).
pub fn read(dir: &Path) -> Result<State, Error> {
    let path = &dir.join(JOURNAL);
    let mut state = read_entries(path, None)?;
    let lost: std::collections::HashSet<String> = state
        .done
        .iter()
        .filter(|(_, d)| !d.files_present(dir))
        .map(|(id, _)| id.clone())
        .collect();
    if !lost.is_empty() {
        for id in &lost {
            state.done.remove(id);
        }
        let again = read_entries(path, Some(&lost))?;
        state.pending.extend(again.pending);
    }
    Ok(state)
}

/// One pass over the journal; with `only`, collects just the requests of
/// those ids (as pending, whatever followed them).
fn read_entries(
    path: &Path,
    only: Option<&std::collections::HashSet<String>>,
) -> Result<State, Error> {
    let mut state = State::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut buf = String::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let read = reader.read_line(&mut buf).map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let complete = buf.ends_with('\n');
        let entry: Entry = match serde_json::from_str(buf.trim_end()) {
            Ok(e) => e,
            Err(_) if !complete => break,
            Err(e) => {
                return Err(Error::Output {
                    path: path.to_path_buf(),
                    message: format!("line {n} is not a journal entry: {e}"),
                })
            }
        };
        match entry {
            Entry::Batch(h) => {
                if state.header.is_some() {
                    return Err(Error::Output {
                        path: path.to_path_buf(),
                        message: format!("line {n}: a second batch header"),
                    });
                }
                state.header = Some(h);
            }
            Entry::Run { .. } => {}
            Entry::Requested {
                request_id,
                csr,
                key,
                ..
            } => {
                let wanted = only.is_none_or(|o| o.contains(&request_id));
                if wanted && !state.done.contains_key(&request_id) {
                    state.pending.insert(request_id, Pending { csr, key });
                }
            }
            Entry::Issued { .. } if only.is_some() => {}
            Entry::Issued {
                request_id,
                serial,
                not_after,
                clamped,
                file,
                p12,
                ..
            } => {
                state.pending.remove(&request_id);
                state.done.insert(
                    request_id,
                    Done {
                        serial,
                        not_after,
                        clamped,
                        file,
                        p12,
                    },
                );
            }
            Entry::Failed { .. } => {}
        }
    }
    Ok(state)
}

/// Reads `passwords.csv`: the last password written for each email.
pub fn read_passwords(path: &Path) -> Result<HashMap<String, zeroize::Zeroizing<String>>, Error> {
    let mut out = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file);
    for rec in reader.records() {
        // A record cut short by a crash has too few fields: ignore it; its
        // row was not requested yet.
        let Ok(rec) = rec else { continue };
        if let (Some(email), Some(pw)) = (rec.get(1), rec.get(3)) {
            out.insert(email.to_string(), zeroize::Zeroizing::new(pw.to_string()));
        }
    }
    Ok(out)
}

/// A password line of `passwords.csv` (`line,email,file,password`).
pub fn password_line(line: u64, email: &str, file: &str, password: &str) -> String {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let line_s = line.to_string();
    // Writing to a Vec cannot fail.
    let _ = w.write_record([line_s.as_str(), email, file, password]);
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Rewrites `passwords.csv` keeping, for each email, only the last
/// password, and only for rows whose PKCS#12 file exists.
pub fn compact_passwords(out_dir: &Path) -> Result<(), Error> {
    let path = out_dir.join(PASSWORDS);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut rows: Vec<(u64, String, String, zeroize::Zeroizing<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file);
    for rec in reader.records() {
        let Ok(rec) = rec else { continue };
        let (Some(line), Some(email), Some(file), Some(pw)) =
            (rec.get(0), rec.get(1), rec.get(2), rec.get(3))
        else {
            continue;
        };
        let entry = (
            line.parse().unwrap_or(0),
            email.to_string(),
            file.to_string(),
            zeroize::Zeroizing::new(pw.to_string()),
        );
        match index.get(email) {
            Some(i) => rows[*i] = entry,
            None => {
                index.insert(email.to_string(), rows.len());
                rows.push(entry);
            }
        }
    }
    rows.retain(|r| out_dir.join(&r.2).exists());
    rows.sort_by_key(|r| r.0);
    let mut text = zeroize::Zeroizing::new(String::from("line,email,file,password\n"));
    for (line, email, file, pw) in &rows {
        text.push_str(&password_line(*line, email, file, pw));
    }
    crate::output::write_atomic(&path, text.as_bytes(), crate::output::MODE_SECRET, true)
}

struct Write1 {
    journal: Option<String>,
    password: Option<zeroize::Zeroizing<String>>,
    sync_dir: bool,
    ack: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The writer: a thread that appends and flushes in groups.
#[derive(Debug)]
pub struct Writer {
    tx: Option<mpsc::Sender<Write1>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn open_append(path: &Path, mode: u32) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::Output {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

impl Writer {
    /// Opens (creating) the journal and, when `passwords` is set, the
    /// password file in `dir`.
    pub fn open(dir: &Path, passwords: bool) -> Result<Writer, Error> {
        let journal_path = dir.join(JOURNAL);
        let mut journal = open_append(&journal_path, crate::output::MODE_PUBLIC)?;
        let mut pw_file = None;
        if passwords {
            let path = dir.join(PASSWORDS);
            let mut f = open_append(&path, crate::output::MODE_SECRET)?;
            let empty = f.metadata().map(|m| m.len() == 0).unwrap_or(true);
            if empty {
                f.write_all(b"line,email,file,password\n")
                    .and_then(|_| f.sync_data())
                    .map_err(|e| Error::io(&path, e))?;
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
    /// once both are on disk. With `sync_dir`, renames done in the output
    /// directory before this call are made durable first.
    pub async fn append(
        &self,
        entry: &Entry,
        password: Option<zeroize::Zeroizing<String>>,
        sync_dir: bool,
    ) -> Result<(), Error> {
        let mut line =
            serde_json::to_string(entry).map_err(|e| Error::Crypto(format!("journal: {e}")))?;
        line.push('\n');
        self.send(Some(line), password, sync_dir).await
    }

    async fn send(
        &self,
        journal: Option<String>,
        password: Option<zeroize::Zeroizing<String>>,
        sync_dir: bool,
    ) -> Result<(), Error> {
        let (ack, wait) = tokio::sync::oneshot::channel();
        let gone = || Error::Output {
            path: PathBuf::from(JOURNAL),
            message: "the journal writer stopped".into(),
        };
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Write1 {
                journal,
                password,
                sync_dir,
                ack,
            })
            .map_err(|_| gone())?;
        wait.await
            .map_err(|_| gone())?
            .map_err(|message| Error::Output {
                path: PathBuf::from(JOURNAL),
                message,
            })
    }

    /// Appends synchronously (before the runtime's work starts).
    pub fn append_blocking(&self, entry: &Entry) -> Result<(), Error> {
        let mut line =
            serde_json::to_string(entry).map_err(|e| Error::Crypto(format!("journal: {e}")))?;
        line.push('\n');
        let (ack, wait) = tokio::sync::oneshot::channel();
        let gone = || Error::Output {
            path: PathBuf::from(JOURNAL),
            message: "the journal writer stopped".into(),
        };
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Write1 {
                journal: Some(line),
                password: None,
                sync_dir: true,
                ack,
            })
            .map_err(|_| gone())?;
        wait.blocking_recv()
            .map_err(|_| gone())?
            .map_err(|message| Error::Output {
                path: PathBuf::from(JOURNAL),
                message,
            })
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
    journal: &mut File,
    passwords: Option<&mut File>,
    group: &[Write1],
) -> Result<(), String> {
    let mut pw_text = zeroize::Zeroizing::new(String::new());
    let mut j_text = String::new();
    let mut sync_dir = false;
    for w in group {
        if let Some(p) = &w.password {
            pw_text.push_str(p);
        }
        if let Some(j) = &w.journal {
            j_text.push_str(j);
        }
        sync_dir |= w.sync_dir;
    }
    if !pw_text.is_empty() {
        let f = passwords.ok_or("no password file is open")?;
        f.write_all(pw_text.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| format!("{PASSWORDS}: {e}"))?;
    }
    if sync_dir {
        crate::output::sync_dir(dir).map_err(|e| e.to_string())?;
    }
    if !j_text.is_empty() {
        journal
            .write_all(j_text.as_bytes())
            .and_then(|_| journal.sync_data())
            .map_err(|e| format!("{JOURNAL}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_tolerates_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let header = BatchHeader {
            version: 1,
            batch_id: "b".into(),
            input: "in.csv".into(),
            input_sha256: "00".into(),
            profile: "p".into(),
            certifier: None,
            expiry: "default".into(),
            not_after: None,
            key_type: "p256".into(),
            created: "2026-01-01T00:00:00Z".into(),
        };
        {
            let w = Writer::open(dir.path(), true).expect("open");
            w.append_blocking(&Entry::Batch(header.clone()))
                .expect("header");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("rt");
            rt.block_on(async {
                for (i, id) in ["r1", "r2"].iter().enumerate() {
                    w.append(
                        &Entry::Requested {
                            line: i as u64 + 2,
                            request_id: id.to_string(),
                            csr: "csr".into(),
                            key: "key".into(),
                        },
                        Some(zeroize::Zeroizing::new(password_line(
                            i as u64 + 2,
                            &format!("{id}@example.com"),
                            "f.p12",
                            "pw,\"x",
                        ))),
                        false,
                    )
                    .await
                    .expect("requested");
                }
                w.append(
                    &Entry::Issued {
                        line: 2,
                        request_id: "r1".into(),
                        serial: "01".into(),
                        not_after: "t".into(),
                        clamped: true,
                        file: "r1@example.com".into(),
                        p12: true,
                    },
                    None,
                    true,
                )
                .await
                .expect("issued");
            });
        }
        let path = dir.path().join(JOURNAL);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"event\":\"issu").expect("torn");
        // The files of r1 are missing: it is pending again, with its key.
        let st = read(dir.path()).expect("read");
        assert!(st.done.is_empty());
        let mut pending: Vec<&String> = st.pending.keys().collect();
        pending.sort();
        assert_eq!(pending, vec!["r1", "r2"]);
        for ext in ["pem", "p12"] {
            std::fs::write(dir.path().join(format!("r1@example.com.{ext}")), "x").expect("file");
        }
        let st = read(dir.path()).expect("read");
        assert_eq!(st.header, Some(header));
        assert_eq!(st.done.len(), 1);
        assert!(st.done["r1"].clamped);
        assert_eq!(st.pending.keys().collect::<Vec<_>>(), vec!["r2"]);
        let pws = read_passwords(&dir.path().join(PASSWORDS)).expect("pw");
        assert_eq!(pws["r2@example.com"].as_str(), "pw,\"x");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(PASSWORDS))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // A bad line in the middle is an error, not silently skipped.
        f.write_all(b"\n{\"event\":\"run\",\"started\":\"x\"}\n")
            .expect("more");
        assert!(read(&path).is_err());
    }
}
