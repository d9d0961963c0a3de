//! The `keys/` directory of a batch's output directory (mode 0700): where a
//! key generated for a row waits, encrypted under the row's PKCS#12
//! password, from before its request is sent until its PKCS#12 is
//! delivered. One file per key, so a key leaves in one unlink and one
//! directory flush, whatever the size of the batch.
//!
//! A row's key moves through three places, each step durable before the
//! next one starts:
//!
//! 1. `keys/ID.key` (mode 0600, the `ENCRYPTED PRIVATE KEY` PEM), written
//!    and flushed (file, then directory) before the journal's `requested`
//!    line names it with its SHA-256, which comes before the request;
//! 2. `keys/ID.p12`, the row's PKCS#12, written and flushed (file, then
//!    directory) before `ID.key` is removed;
//! 3. `NAME.p12` in the output directory: `ID.p12` renamed there, which
//!    takes it out of `keys/` in the same step.
//!
//! So at no instant is there a delivered PKCS#12 and a copy of its key in
//! `keys/`, and at every instant the key is somewhere ([`KeyStore::find`]
//! says where). A key file is written under its final name and only named
//! by the journal once complete: a torn write is a file no journal line
//! names, never relied on, and removed by [`KeyStore::clean`] when the next
//! run starts, as a torn journal line is cut off. A named file whose
//! SHA-256 differs is damage, refused like a damaged journal line.

use super::journal::{KeyRef, State};
use crate::error::Error;
use crate::output;
use sha2::Digest;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The directory's name in the output directory.
pub const DIR: &str = "keys";

/// Mode of the directory.
pub const MODE_DIR: u32 = 0o700;

/// Whether `id` can name files in `keys/`: ra-cli's request ids are
/// `batch-` and hex digits; anything else in a journal is damage.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key file of request `id`, relative to the output directory, as the
/// journal names it.
pub fn file_name(id: &str) -> String {
    format!("{DIR}/{id}.key")
}

/// SHA-256 of a key file's bytes, hex.
fn digest(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Where the key of a row not delivered (per the journal) is now.
#[derive(Debug)]
pub enum Found {
    /// In its key file, as written: the encrypted PEM.
    Key(Zeroizing<String>),
    /// In the PKCS#12 staged in `keys/` (the key file is gone).
    Staged(PathBuf),
    /// In the delivered PKCS#12 (nothing of it is left in `keys/`); the
    /// run stopped before journaling the delivery.
    Delivered(PathBuf),
}

/// The `keys/` directory of one output directory.
#[derive(Debug, Clone)]
pub struct KeyStore {
    out_dir: PathBuf,
    dir: PathBuf,
}

impl KeyStore {
    /// The key store of `out_dir` (nothing is created yet).
    pub fn new(out_dir: &Path) -> KeyStore {
        KeyStore {
            out_dir: out_dir.to_path_buf(),
            dir: out_dir.join(DIR),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    fn staged_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.p12"))
    }

    fn checked(id: &str) -> Result<&str, Error> {
        if valid_id(id) {
            Ok(id)
        } else {
            Err(Error::Crypto(format!(
                "request id {id:?} cannot name a key file"
            )))
        }
    }

    /// Creates the directory (mode 0700) unless it exists, durably.
    pub fn create(&self) -> Result<(), Error> {
        if self.dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .mode(MODE_DIR)
            .create(&self.dir)
            .map_err(|e| Error::output(&self.dir, e))?;
        output::sync_dir(&self.out_dir)
    }

    /// Writes the key of request `id` (the encrypted PEM) to a new file,
    /// mode 0600, flushed to disk; returns the file's SHA-256 (hex). The
    /// caller flushes the directory before a journal line names the file.
    pub fn write(&self, id: &str, pem: &str) -> Result<String, Error> {
        let path = self.key_path(Self::checked(id)?);
        let err = |e: std::io::Error| Error::output(&path, e);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(output::MODE_SECRET)
            .open(&path)
            .map_err(err)?;
        if let Err(e) = f.write_all(pem.as_bytes()).and_then(|_| f.sync_all()) {
            let _ = std::fs::remove_file(&path);
            return Err(err(e));
        }
        Ok(digest(pem.as_bytes()))
    }

    /// Where the key of request `id` is, whose key file the journal names
    /// with `sha256` and whose files are `NAME.*` (`stem`). A key file
    /// that differs from what was journaled, or a key found nowhere, is an
    /// error: the output directory was damaged or edited.
    pub fn find(&self, id: &str, sha256: &str, stem: &str, line: u64) -> Result<Found, Error> {
        let path = self.key_path(Self::checked(id)?);
        let damaged = |what: String| {
            Error::Journal {
            path: path.clone(),
            message: format!(
                "{what}. This key file belongs to line {line} ({stem}.p12), whose request certd may \
                 have answered: restore the output directory from a backup; else revoke the \
                 certificate of that line, if it has one, and issue it anew in another batch"
            ),
        }
        };
        let mut bytes = Zeroizing::new(Vec::new());
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
                if digest(&bytes) != sha256 {
                    return Err(damaged(
                        "is not the key file the journal recorded (its SHA-256 differs)".into(),
                    ));
                }
                let pem = String::from_utf8(std::mem::take(&mut *bytes))
                    .map_err(|_| damaged("is not text".into()))?;
                return Ok(Found::Key(Zeroizing::new(pem)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        let staged = self.staged_path(id);
        if staged.is_file() {
            return Ok(Found::Staged(staged));
        }
        let delivered = self.out_dir.join(format!("{stem}.p12"));
        if delivered.is_file() {
            return Ok(Found::Delivered(delivered));
        }
        Err(damaged(format!(
            "is missing, and neither {} nor {} holds the key",
            staged.display(),
            delivered.display()
        )))
    }

    /// Writes the PKCS#12 of request `id` to `keys/ID.p12` (atomically,
    /// mode 0600, flushed); returns its path. The caller flushes the
    /// directory before removing the key file.
    pub fn stage(&self, id: &str, p12: &[u8]) -> Result<PathBuf, Error> {
        let path = self.staged_path(Self::checked(id)?);
        output::write_atomic(&path, p12, output::MODE_SECRET, true)?;
        Ok(path)
    }

    /// Removes the key file of request `id` (absent: nothing to do).
    pub fn remove_key(&self, id: &str) -> Result<(), Error> {
        let path = self.key_path(Self::checked(id)?);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::output(&path, e)),
        }
    }

    /// Moves the staged PKCS#12 `staged` to `dest` in the output directory:
    /// one rename, which delivers it and takes it out of `keys/` at once.
    pub fn deliver(&self, staged: &Path, dest: &Path) -> Result<(), Error> {
        std::fs::rename(staged, dest).map_err(|e| Error::output(dest, e))
    }

    /// Removes what no run will use, before a run uses the directory: key
    /// files of rows delivered or never journaled (torn writes among
    /// them), staged files whose key file is still there (the key file
    /// wins; the PKCS#12 is built again), and temporary files. Keeps the
    /// key (or staged PKCS#12) of every row `state` has not delivered.
    /// Returns how many files went.
    pub fn clean(&self, state: &State) -> Result<usize, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let waiting = |id: &str| {
            state
                .rows
                .get(id)
                .is_some_and(|r| r.done.is_none() && matches!(r.key, Some(KeyRef::File { .. })))
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = if let Some(id) = name.strip_suffix(".key") {
                waiting(id)
            } else if let Some(id) = name.strip_suffix(".p12") {
                waiting(id) && !self.key_path(id).exists()
            } else {
                // Not a name of ra-cli's but temporaries: left alone.
                !name.starts_with(output::TEMP_PREFIX)
            };
            if !keep {
                std::fs::remove_file(entry.path()).map_err(|e| Error::output(entry.path(), e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            output::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Moves the keys a journal of ra-cli before version 3 holds in its
    /// lines (of rows not delivered) to key files, flushed; `state` then
    /// names the files, and the journal rewritten from it holds no key.
    pub fn take_inline_keys(&self, state: &mut State) -> Result<usize, Error> {
        let mut moved = 0;
        for (id, r) in state.rows.iter_mut() {
            if r.done.is_some() {
                continue;
            }
            if let Some(KeyRef::Inline(pem)) = &r.key {
                r.key = Some(KeyRef::File {
                    sha256: self.write(id, pem)?,
                });
                moved += 1;
            }
        }
        if moved > 0 {
            output::sync_dir(&self.dir)?;
        }
        Ok(moved)
    }

    /// Removes the directory if it is empty (nothing waits in it).
    pub fn remove_if_empty(&self) -> Result<(), Error> {
        let empty = match std::fs::read_dir(&self.dir) {
            Ok(mut d) => d.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        if empty {
            std::fs::remove_dir(&self.dir).map_err(|e| Error::output(&self.dir, e))?;
            output::sync_dir(&self.out_dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::journal::Entry;
    use std::os::unix::fs::PermissionsExt;

    const ID: &str = "batch-0123456789abcdef0123456789abcdef";
    const PEM: &str =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    fn sha(k: &KeyRef) -> &str {
        match k {
            KeyRef::File { sha256 } => sha256,
            KeyRef::Inline(_) => panic!("a file reference"),
        }
    }

    fn file_ref(sha256: String) -> KeyRef {
        KeyRef::File { sha256 }
    }

    fn state_with(id: &str, key: Option<KeyRef>, done: bool) -> State {
        let mut s = State::default();
        s.apply_for_test(
            Entry::Requested {
                line: 2,
                request_id: id.into(),
                file: "a@example.com".into(),
                csr: "CSR".into(),
                key: None,
                key_file: None,
                key_sha256: None,
            },
            2,
        );
        let r = s.rows.get_mut(id).expect("row");
        r.key = key;
        if done {
            s.apply_for_test(
                Entry::Issued {
                    line: 2,
                    request_id: id.into(),
                    serial: "0a".into(),
                    not_after: "t".into(),
                    clamped: false,
                    file: "a@example.com".into(),
                    p12: true,
                },
                3,
            );
        }
        s
    }

    #[test]
    fn files_are_private_and_found_where_the_key_is() {
        let out = tempfile::tempdir().expect("tempdir");
        let ks = KeyStore::new(out.path());
        ks.create().expect("create");
        assert_eq!(mode(ks.dir()), MODE_DIR);
        let k = file_ref(ks.write(ID, PEM).expect("write"));
        let key_path = out.path().join(file_name(ID));
        assert_eq!(mode(&key_path), output::MODE_SECRET);
        // A key is never overwritten.
        assert!(ks.write(ID, "other").is_err());
        assert_eq!(std::fs::read_to_string(&key_path).expect("read"), PEM);

        let find = || ks.find(ID, sha(&k), "a@example.com", 2);
        assert!(matches!(find().expect("found"), Found::Key(p) if p.as_str() == PEM));
        // Staged: the key file still wins until it is removed.
        let staged = ks.stage(ID, b"P12").expect("stage");
        assert_eq!(mode(&staged), output::MODE_SECRET);
        assert!(matches!(find().expect("found"), Found::Key(_)));
        ks.remove_key(ID).expect("remove");
        ks.remove_key(ID).expect("removing twice is fine");
        assert!(matches!(find().expect("found"), Found::Staged(p) if p == staged));
        let dest = out.path().join("a@example.com.p12");
        ks.deliver(&staged, &dest).expect("deliver");
        assert!(!staged.exists());
        assert!(matches!(find().expect("found"), Found::Delivered(p) if p == dest));
        // Nowhere: refused, naming the row.
        std::fs::remove_file(&dest).expect("rm");
        let e = find().expect_err("lost");
        assert_eq!(e.code(), "journal_corrupt");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn a_changed_or_torn_key_file_is_detected() {
        let out = tempfile::tempdir().expect("tempdir");
        let ks = KeyStore::new(out.path());
        ks.create().expect("create");
        let k = file_ref(ks.write(ID, PEM).expect("write"));
        let key_path = out.path().join(file_name(ID));
        // Torn: only part of it reached the disk.
        std::fs::write(&key_path, &PEM[..20]).expect("tear");
        let e = ks
            .find(ID, sha(&k), "a@example.com", 2)
            .expect_err("a torn file is not the journaled one");
        assert_eq!(e.code(), "journal_corrupt");
        assert!(e.to_string().contains("SHA-256 differs"), "{e}");
        // Ids that could leave the directory never name a file.
        assert!(!valid_id("../x") && !valid_id("") && !valid_id("a/b"));
        assert!(ks.write("../escape", PEM).is_err());
        assert!(!out.path().join("escape.key").exists());
    }

    #[test]
    fn cleaning_keeps_exactly_what_rows_not_delivered_need() {
        let out = tempfile::tempdir().expect("tempdir");
        let ks = KeyStore::new(out.path());
        ks.create().expect("create");
        let other = "batch-ffffffffffffffffffffffffffffffff";
        let k = file_ref(ks.write(ID, PEM).expect("write"));
        // A torn write no journal line names, and a staged file beside its
        // key file, and a temporary.
        std::fs::write(ks.key_path(other), "torn").expect("torn");
        ks.stage(ID, b"P12").expect("stage");
        std::fs::write(ks.dir().join(".tmp-x"), "t").expect("tmp");
        std::fs::write(ks.dir().join("README"), "not ours").expect("other");
        let pending = state_with(ID, Some(k.clone()), false);
        assert_eq!(ks.clean(&pending).expect("clean"), 3);
        let left = |ks: &KeyStore| {
            let mut v: Vec<String> = std::fs::read_dir(ks.dir())
                .expect("dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(left(&ks), vec!["README".to_string(), format!("{ID}.key")]);
        // Staged with its key file gone: the staged file holds the key.
        ks.stage(ID, b"P12").expect("stage");
        ks.remove_key(ID).expect("rm");
        assert_eq!(ks.clean(&pending).expect("clean"), 0);
        assert_eq!(left(&ks), vec!["README".to_string(), format!("{ID}.p12")]);
        // Delivered: nothing of it stays.
        let done = state_with(ID, Some(k), true);
        assert_eq!(ks.clean(&done).expect("clean"), 1);
        std::fs::remove_file(ks.dir().join("README")).expect("rm");
        ks.remove_if_empty().expect("rmdir");
        assert!(!ks.dir().exists());
        ks.remove_if_empty().expect("absent is fine");
    }

    #[test]
    fn inline_keys_of_old_journals_move_to_files() {
        let out = tempfile::tempdir().expect("tempdir");
        let ks = KeyStore::new(out.path());
        ks.create().expect("create");
        let mut s = state_with(ID, Some(KeyRef::Inline(PEM.into())), false);
        assert_eq!(ks.take_inline_keys(&mut s).expect("move"), 1);
        let k = s.rows[ID].key.clone().expect("key");
        assert!(matches!(
            ks.find(ID, sha(&k), "a@example.com", 2).expect("found"),
            Found::Key(p) if p.as_str() == PEM
        ));
        // Delivered rows' inline keys are not moved (they are dropped).
        let other = "batch-ffffffffffffffffffffffffffffffff";
        let mut d = state_with(other, Some(KeyRef::Inline(PEM.into())), true);
        assert_eq!(ks.take_inline_keys(&mut d).expect("move"), 0);
        assert!(!ks.key_path(other).exists());
    }
}
