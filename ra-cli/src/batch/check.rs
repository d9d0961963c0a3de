//! What is checked before the first request of a batch, so that a problem
//! is found while nothing is issued yet, never after a certificate exists:
//! every row, the output paths, the rows of an edited input against the
//! journal, and the keys kept by an earlier run with their passwords.

use super::journal::{self, KeyRef, PasswordMode, State};
use super::keystore::{Found, KeyStore};
use super::request_id;
use crate::error::Error;
use crate::input::{check_row, Duplicates, Input, RowError, Rules};
use crate::keys::SubscriberKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// What an existing output directory says, for the checks of each row.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// The output directory.
    pub out_dir: &'a Path,
    /// Its journal.
    pub journal: &'a State,
    /// The batch id the rows are compared under: `--batch-id`, else the
    /// journal's own (a derived id that differs refuses the run anyway).
    pub batch_id: Option<&'a str>,
}

/// A row whose values changed since certd may have issued a certificate
/// for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRow {
    /// Line in the input.
    pub line: u64,
    /// The row's email.
    pub email: String,
    /// What the journal holds for it.
    pub why: String,
}

/// The result of the validation pass.
#[derive(Debug, Default)]
pub struct Validation {
    /// Data rows.
    pub rows: u64,
    /// Valid rows.
    pub valid: u64,
    /// Invalid rows.
    pub invalid: Vec<RowError>,
    /// SHA-256 of the input.
    pub input_sha256: [u8; 32],
    /// Whether some valid row has no CSR (ra-cli generates its key).
    pub needs_keys: bool,
    /// Digest of the header line.
    pub header_digest: u128,
    /// Digest of every record, in order: the rows read again for issuing
    /// must be these.
    pub digests: Vec<u128>,
    /// Output paths that cannot be written, or hold files this batch did
    /// not write.
    pub obstacles: Vec<String>,
    /// Rows changed under the same batch id (see [`ChangedRow`]).
    pub changed: Vec<ChangedRow>,
}

/// Reads the whole input once and checks every row; with `known`, also
/// its output paths and whether it changed since the journal recorded it.
pub fn validate(
    path: &Path,
    rules: &Rules,
    ignore_unknown: bool,
    known: Option<Known<'_>>,
) -> Result<Validation, Error> {
    let mut input = Input::open(path, ignore_unknown)?;
    let mut dups = Duplicates::default();
    let mut v = Validation {
        header_digest: input.header_digest(),
        ..Validation::default()
    };
    while let Some(next) = input.next_row() {
        v.rows += 1;
        v.digests.push(input.last_digest());
        let checked = next.and_then(|raw| {
            let (row, csr) = check_row(&raw, rules)?;
            dups.check(&row).map_err(|message| RowError {
                line: raw.line,
                email: raw.email.clone(),
                common_name: raw.common_name.clone(),
                message,
            })?;
            Ok((row, csr))
        });
        match checked {
            Ok((row, csr)) => {
                v.valid += 1;
                v.needs_keys |= row.csr.is_none();
                if let Some(k) = known {
                    let stem = row.file_stem();
                    obstacles_of(k, &stem, row.line, row.csr.is_none(), &mut v.obstacles);
                    if let Some(batch_id) = k.batch_id {
                        let id = request_id(batch_id, &row);
                        if let Some(why) =
                            changed(k.journal, &stem, &id, csr.as_ref().map(|c| c.pem.as_str()))
                        {
                            v.changed.push(ChangedRow {
                                line: row.line,
                                email: row.email.clone(),
                                why,
                            });
                        }
                    }
                }
            }
            Err(e) => v.invalid.push(e),
        }
    }
    if v.rows == 0 {
        return Err(Error::Input(format!(
            "input {} has a header but no rows",
            path.display()
        )));
    }
    v.input_sha256 = input.sha256();
    Ok(v)
}

/// Why a row's files cannot be written where they go, if they cannot.
fn obstacles_of(k: Known<'_>, stem: &str, line: u64, p12: bool, out: &mut Vec<String>) {
    let ours = k.journal.by_file.contains_key(stem);
    let exts: &[&str] = if p12 { &["pem", "p12"] } else { &["pem"] };
    for ext in exts {
        let p = k.out_dir.join(format!("{stem}.{ext}"));
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.is_file() => out.push(format!(
                "{} (line {line}) is {}, not a file: remove it",
                p.display(),
                if m.is_dir() {
                    "a directory"
                } else if m.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "something else"
                }
            )),
            Ok(_) if !ours => out.push(format!(
                "{} (line {line}) exists and this batch did not write it: move it away, or use \
                 another --out directory",
                p.display()
            )),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.push(format!("{} (line {line}): {e}", p.display())),
        }
    }
}

/// Whether the journal holds, for this row's output file, a request that
/// certd may have answered with a certificate and that differs from the
/// row now (its values, or its CSR).
fn changed(journal: &State, stem: &str, id: &str, csr_pem: Option<&str>) -> Option<String> {
    for other in journal.by_file.get(stem).into_iter().flatten() {
        let Some(r) = journal.rows.get(other) else {
            continue;
        };
        if other == id {
            // Same values; a subscriber CSR replaced since it was sent is
            // a change certd would refuse as a conflict.
            if let (Some(sent), Some(now), true) = (&r.csr, csr_pem, r.pending()) {
                if sent.trim() != now.trim() {
                    return Some(format!(
                        "its CSR file changed since line {} was sent to certd",
                        r.line
                    ));
                }
            }
            continue;
        }
        if let Some(d) = &r.done {
            return Some(format!(
                "issued as serial {} from other values (then on line {})",
                d.serial, r.line
            ));
        }
        if r.certificate_may_exist {
            return Some(format!(
                "sent to certd with other values (then on line {}), which may have issued it",
                r.line
            ));
        }
    }
    None
}

/// The refusal for rows of an edited input that changed.
pub fn changed_error(input: &Path, batch_id: &str, changed: &[ChangedRow]) -> Error {
    let mut m = format!(
        "{} differs from the input batch {batch_id} was started with, and {} row(s) changed \
         after certd was asked for their certificates:\n",
        input.display(),
        changed.len()
    );
    for c in changed {
        m.push_str(&format!("  line {} ({}): {}\n", c.line, c.email, c.why));
    }
    m.push_str(
        "Nothing was issued. Restore these rows as they were and re-run; to give them new \
         certificates, issue them in a new batch (another --out directory), revoking the old \
         ones if they are to be replaced. Rows only added or removed do not stop a resume.",
    );
    Error::InputChanged(m)
}

/// The refusal for output paths that cannot be written.
pub fn obstacles_error(out_dir: &Path, obstacles: &[String]) -> Error {
    const SHOWN: usize = 20;
    let mut m = format!(
        "nothing was issued: {} output path(s) cannot be written:\n",
        obstacles.len()
    );
    for o in obstacles.iter().take(SHOWN) {
        m.push_str(&format!("  {o}\n"));
    }
    if obstacles.len() > SHOWN {
        m.push_str(&format!("  ... and {} more\n", obstacles.len() - SHOWN));
    }
    Error::output(out_dir, m.trim_end())
}

/// Checks `--batch-id`'s syntax.
pub fn check_batch_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Usage(
            "--batch-id must be 1 to 64 printable characters without spaces".into(),
        ));
    }
    Ok(())
}

/// Where the generated passwords of this batch go: `--passwords-out`, the
/// file the batch started with, or `DIR/passwords.csv`. A resumed batch
/// keeps its file (the passwords of journaled keys are there).
pub fn passwords_path(
    out_dir: &Path,
    given: Option<&Path>,
    header: Option<&journal::BatchHeader>,
) -> Result<PathBuf, Error> {
    let default = out_dir.join(journal::PASSWORDS);
    let absolute = |p: &Path| std::path::absolute(p).map_err(|e| Error::output(p, e));
    let recorded = header.map(|h| match &h.passwords_file {
        Some(f) => PathBuf::from(f),
        None => default.clone(),
    });
    match (given, recorded) {
        (Some(g), Some(r)) if absolute(g)? != absolute(&r)? => Err(Error::BatchMismatch(format!(
            "this batch writes its generated passwords to {} (the passwords of keys not yet \
             delivered are there): pass --passwords-out {} or leave the option out",
            r.display(),
            r.display()
        ))),
        (Some(g), _) => absolute(g),
        (None, Some(r)) => Ok(r),
        (None, None) => Ok(default),
    }
}

/// Checks, before anything is sent, that the key of every row not
/// delivered is where the journal and `keys/` say (its key file as
/// written, or the PKCS#12 an earlier run built from it), and that the
/// password it is to be delivered under is at hand and opens it: a key is
/// never written under a password that was not meant for it.
pub fn check_pending_keys(
    state: &State,
    keys: &KeyStore,
    mode: PasswordMode,
    fixed: Option<&Zeroizing<String>>,
    passwords: &HashMap<String, Zeroizing<String>>,
    passwords_file: &Path,
    password_file: Option<&Path>,
) -> Result<(), Error> {
    let mut pending: Vec<_> = state.pending_keys().collect();
    pending.sort_by_key(|(_, r)| r.line);
    for (id, r) in pending {
        let p12 = format!("{}.p12", r.file);
        let pw = match (mode, fixed) {
            (PasswordMode::File, Some(pw)) => pw,
            _ => passwords.get(&p12).ok_or_else(|| Error::Password {
                code: "password_missing",
                message: format!(
                    "the key of line {} ({p12}) is kept for delivery, but {} has no password for \
                     it: restore that file as the batch left it (the passwords of keys not yet \
                     delivered are kept there)",
                    r.line,
                    passwords_file.display()
                ),
            })?,
        };
        let opens = match &r.key {
            Some(KeyRef::Inline(pem)) => {
                SubscriberKey::from_encrypted_pem(pem, pw.as_bytes()).is_ok()
            }
            Some(KeyRef::File { sha256 }) => match keys.find(id, sha256, &r.file, r.line)? {
                Found::Key(pem) => SubscriberKey::from_encrypted_pem(&pem, pw.as_bytes()).is_ok(),
                Found::Staged(path) | Found::Delivered(path) => {
                    let data =
                        Zeroizing::new(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
                    crate::p12::leaf(&data, pw).is_ok()
                }
            },
            None => true,
        };
        if !opens {
            return Err(Error::Password {
                code: "password_mismatch",
                message: match (mode, password_file) {
                    (PasswordMode::File, Some(f)) => format!(
                        "{} does not open the key kept for line {} ({p12}): pass the \
                         --p12-password-file this batch was started with",
                        f.display(),
                        r.line
                    ),
                    _ => format!(
                        "the password {} holds for {p12} does not open the key kept for line {}: \
                         restore that file as the batch left it",
                        passwords_file.display(),
                        r.line
                    ),
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::journal::Entry;

    fn state(entries: Vec<Entry>) -> State {
        let mut s = State::default();
        for (i, e) in entries.into_iter().enumerate() {
            s.apply_for_test(e, i as u64 + 1);
        }
        s
    }

    #[test]
    fn a_changed_row_is_one_certd_may_have_answered() {
        let issued = Entry::Issued {
            line: 2,
            request_id: "old".into(),
            serial: "0a".into(),
            not_after: "t".into(),
            clamped: false,
            file: "a@example.com".into(),
            p12: false,
        };
        let s = state(vec![issued]);
        assert!(changed(&s, "a@example.com", "old", None).is_none());
        let why = changed(&s, "a@example.com", "new", None).expect("changed");
        assert!(why.contains("serial 0a"), "{why}");
        assert!(changed(&s, "b@example.com", "new", None).is_none());

        // Refused by certd before signing: the row may be edited.
        let refused = |may: bool| {
            vec![
                Entry::Requested {
                    line: 3,
                    request_id: "old".into(),
                    file: "c@example.com".into(),
                    csr: "CSR".into(),
                    key: None,
                    key_file: None,
                    key_sha256: None,
                },
                Entry::Failed {
                    line: 3,
                    request_id: "old".into(),
                    file: "c@example.com".into(),
                    code: "name_not_permitted".into(),
                    message: "no".into(),
                    serial: None,
                    certificate_may_exist: may,
                },
            ]
        };
        assert!(changed(&state(refused(false)), "c@example.com", "new", None).is_none());
        assert!(changed(&state(refused(true)), "c@example.com", "new", None).is_some());
        // Same values, but the subscriber's CSR file was replaced.
        let s = state(refused(true));
        assert!(changed(&s, "c@example.com", "old", Some("CSR\n")).is_none());
        assert!(changed(&s, "c@example.com", "old", Some("OTHER")).is_some());
    }
}
