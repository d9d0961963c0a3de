//! The batch input: a CSV file with a header, read as a stream (one row in
//! memory at a time), and the checks each row must pass before anything is
//! sent to certd.
//!
//! Columns: `email` (required), and any of `common_name`,
//! `organizational_unit`, `dns` (`;`-separated DNS names) and `csr` (path
//! of a PEM or DER CSR, relative to the CSV file); a column left out of the
//! header is empty in every row. Header names are case-insensitive.

use crate::csr::CsrInfo;
use crate::error::Error;
use sha2::Digest;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Columns ra-cli understands.
pub const KNOWN_COLUMNS: [&str; 7] = [
    "email",
    "common_name",
    "organizational_unit",
    "dns",
    "csr",
    "given_name",
    "surname",
];

/// The kinds of profile certd has, which decide what a row may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// TLS server: DNS names; the email is the contact and is not certified.
    TlsServer,
    /// TLS client: any of commonName, email, DNS names.
    TlsClient,
    /// Mailbox-validated S/MIME: the email address only.
    SmimeMailbox,
    /// Sponsor- or individual-validated S/MIME: a named person
    /// (`given_name` and `surname`) and the email address.
    SmimePerson,
}

impl ProfileKind {
    /// From certd's `kind` (`tls-server`, `tls-client`, `smime-mailbox`,
    /// `smime-sponsor`, `smime-individual`).
    pub fn parse(s: &str) -> Option<ProfileKind> {
        match s {
            "tls-server" => Some(ProfileKind::TlsServer),
            "tls-client" => Some(ProfileKind::TlsClient),
            "smime-mailbox" => Some(ProfileKind::SmimeMailbox),
            "smime-sponsor" | "smime-individual" => Some(ProfileKind::SmimePerson),
            _ => None,
        }
    }
}

/// What a row is checked against.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The profile's name, for messages.
    pub profile: String,
    /// The profile's kind, when certd told it.
    pub kind: Option<ProfileKind>,
    /// Key types the profile allows, when certd told them.
    pub key_types: Option<Vec<String>>,
    /// Directory CSR paths are relative to.
    pub base_dir: PathBuf,
}

/// A row as read, before checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRow {
    /// Line of the record in the file (1 is the header).
    pub line: u64,
    /// `email`.
    pub email: String,
    /// `common_name`.
    pub common_name: String,
    /// `organizational_unit`.
    pub organizational_unit: String,
    /// `dns`.
    pub dns: String,
    /// `csr`.
    pub csr: String,
    /// `given_name`.
    pub given_name: String,
    /// `surname`.
    pub surname: String,
}

/// A row that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Line of the record in the file.
    pub line: u64,
    /// Email address, domain in lower case.
    pub email: String,
    /// commonName, if given.
    pub common_name: Option<String>,
    /// organizationalUnitName, if given.
    pub organizational_unit: Option<String>,
    /// DNS names, lower case.
    pub dns: Vec<String>,
    /// The `csr` column as written.
    pub csr: Option<String>,
    /// The CSR file, resolved.
    pub csr_path: Option<PathBuf>,
    /// givenName and surname, for profiles that name a person.
    pub person: Option<(String, String)>,
}

impl Row {
    /// The row's identity for its request id: every value that goes into
    /// the request, normalised.
    pub fn identity(&self) -> String {
        let mut id = format!(
            "email={}\ncn={}\nou={}\ndns={}\ncsr={}",
            self.email.to_ascii_lowercase(),
            self.common_name.as_deref().unwrap_or(""),
            self.organizational_unit.as_deref().unwrap_or(""),
            self.dns.join(";"),
            self.csr.as_deref().unwrap_or("")
        );
        if let Some((given, surname)) = &self.person {
            id.push_str(&format!("\ngiven_name={given}\nsurname={surname}"));
        }
        id
    }

    /// The base name of the row's output files (the email address, with
    /// anything unsafe in a file name replaced).
    pub fn file_stem(&self) -> String {
        file_stem(&self.email)
    }
}

/// A file name for an email address: lower case, and anything but
/// `a-z 0-9 @ . _ + -` replaced by `_`.
pub fn file_stem(email: &str) -> String {
    email
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A row that failed a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Line in the file.
    pub line: u64,
    /// The row's email column (may be empty or malformed).
    pub email: String,
    /// The row's common_name column.
    pub common_name: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A reader that hashes what passes through it and notes where lines end,
/// so a record's byte offset gives its line number (the CSV parser does
/// not count the blank lines it skips). Only the line ends of the parser's
/// read-ahead are kept.
struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
    offset: u64,
    last_was_cr: bool,
    /// Offsets of '\n', and whether a '\r' came just before.
    newlines: std::collections::VecDeque<(u64, bool)>,
    lines_before: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                self.newlines
                    .push_back((self.offset + i as u64, self.last_was_cr));
            }
            self.last_was_cr = *b == b'\r';
        }
        self.offset += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    /// The 1-based line of the record the parser places at byte `at`
    /// (offsets never go backwards). The parser places a record after
    /// blank lines at the first blank line, so those are stepped over.
    fn line_of(&mut self, mut at: u64) -> u64 {
        loop {
            while self.newlines.front().is_some_and(|nl| nl.0 < at) {
                self.newlines.pop_front();
                self.lines_before += 1;
            }
            match self.newlines.front() {
                Some(&(nl, _)) if nl == at => at += 1,
                Some(&(nl, true)) if nl == at + 1 => at += 2,
                _ => return self.lines_before + 1,
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Columns {
    email: usize,
    common_name: Option<usize>,
    organizational_unit: Option<usize>,
    dns: Option<usize>,
    csr: Option<usize>,
    given_name: Option<usize>,
    surname: Option<usize>,
}

/// The CSV input, read row by row.
pub struct Input {
    path: PathBuf,
    reader: csv::Reader<Hashing<File>>,
    columns: Columns,
    record: csv::StringRecord,
    header_digest: u128,
    last_digest: u128,
    /// Columns ra-cli does not know (allowed with `--ignore-unknown-columns`).
    pub unknown_columns: Vec<String>,
}

/// A 128-bit digest of a record's fields and line, to tell whether a row
/// read again is the row that was validated.
fn record_digest<'a>(line: u64, fields: impl Iterator<Item = &'a [u8]>) -> u128 {
    let mut h = sha2::Sha256::new();
    h.update(line.to_le_bytes());
    for f in fields {
        // Length-prefixed, so field boundaries count.
        h.update((f.len() as u64).to_le_bytes());
        h.update(f);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_le_bytes(b)
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Input {
    /// Opens `path` and reads its header. File-level problems (unreadable,
    /// empty, no header, unknown or missing columns) are errors here.
    pub fn open(path: &Path, ignore_unknown_columns: bool) -> Result<Input, Error> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| Error::Input(format!("input {shown}: {e}")))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::Input(format!("input {shown} is a directory")));
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(Hashing {
                inner: file,
                hash: sha2::Sha256::new(),
                offset: 0,
                last_was_cr: false,
                newlines: std::collections::VecDeque::new(),
                lines_before: 0,
            });
        let headers = reader
            .headers()
            .map_err(|e| Error::Input(format!("input {shown}: {e}")))?
            .clone();
        let names: Vec<String> = headers
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase())
            .collect();
        if names.iter().all(|n| n.is_empty()) {
            return Err(Error::Input(format!(
                "input {shown} is empty: it needs a header line naming the columns \
                 (email[,common_name,organizational_unit,dns,csr]) and one line per certificate"
            )));
        }
        let find = |c: &str| names.iter().position(|n| n == c);
        let Some(email) = find("email") else {
            if names.iter().any(|n| n.contains('@')) {
                return Err(Error::Input(format!(
                    "input {shown}: line 1 is not a header (it looks like data): the first line \
                     must name the columns, e.g. email,common_name,organizational_unit,dns,csr"
                )));
            }
            return Err(Error::Input(format!(
                "input {shown}: the header (line 1) has no email column (columns: email, and \
                 any of {})",
                KNOWN_COLUMNS[1..].join(", ")
            )));
        };
        let mut seen = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if let Some(first) = seen.insert(n.as_str(), i) {
                return Err(Error::Input(format!(
                    "input {shown}: column {n:?} appears twice in the header (columns {} and {})",
                    first + 1,
                    i + 1
                )));
            }
        }
        let unknown_columns: Vec<String> = names
            .iter()
            .filter(|n| !KNOWN_COLUMNS.contains(&n.as_str()))
            .cloned()
            .collect();
        if !unknown_columns.is_empty() && !ignore_unknown_columns {
            return Err(Error::Input(format!(
                "input {shown}: unknown column(s) {} in the header; known: {} \
                 (--ignore-unknown-columns ignores them)",
                unknown_columns.join(", "),
                KNOWN_COLUMNS.join(", ")
            )));
        }
        let header_digest = record_digest(1, headers.as_byte_record().iter());
        Ok(Input {
            path: path.to_path_buf(),
            header_digest,
            last_digest: 0,
            reader,
            columns: Columns {
                email,
                common_name: find("common_name"),
                organizational_unit: find("organizational_unit"),
                dns: find("dns"),
                csr: find("csr"),
                given_name: find("given_name"),
                surname: find("surname"),
            },
            record: csv::StringRecord::new(),
            unknown_columns,
        })
    }

    /// The next row, `None` at the end. A record the CSV parser refuses
    /// (wrong number of fields, bad quoting, not UTF-8) is a row error.
    pub fn next_row(&mut self) -> Option<Result<RawRow, RowError>> {
        loop {
            match self.reader.read_record(&mut self.record) {
                Ok(false) => return None,
                Ok(true) => {
                    let at = self.record.position().map_or(0, |p| p.byte());
                    let line = self.reader.get_mut().line_of(at);
                    // Blank lines carry no row.
                    if self.record.iter().all(|f| f.trim().is_empty()) {
                        continue;
                    }
                    self.last_digest = record_digest(line, self.record.as_byte_record().iter());
                    let get = |i: Option<usize>| {
                        i.and_then(|i| self.record.get(i))
                            .map(|s| s.trim().to_string())
                            .unwrap_or_default()
                    };
                    return Some(Ok(RawRow {
                        line,
                        email: get(Some(self.columns.email)),
                        common_name: get(self.columns.common_name),
                        organizational_unit: get(self.columns.organizational_unit),
                        dns: get(self.columns.dns),
                        csr: get(self.columns.csr),
                        given_name: get(self.columns.given_name),
                        surname: get(self.columns.surname),
                    }));
                }
                Err(e) => {
                    let at = e.position().map_or(0, |p| p.byte());
                    let line = self.reader.get_mut().line_of(at);
                    let message = match e.kind() {
                        csv::ErrorKind::UnequalLengths {
                            expected_len, len, ..
                        } => format!("{len} fields, but the header has {expected_len}"),
                        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
                        _ => e.to_string(),
                    };
                    // The parser moves past a bad record; an I/O error ends the file.
                    let fatal = matches!(e.kind(), csv::ErrorKind::Io(_));
                    self.last_digest = record_digest(line, std::iter::once(message.as_bytes()));
                    let err = RowError {
                        line,
                        email: String::new(),
                        common_name: String::new(),
                        message,
                    };
                    if fatal {
                        self.record.clear();
                    }
                    return Some(Err(err));
                }
            }
        }
    }

    /// SHA-256 of everything read so far (the whole file once
    /// [`Input::next_row`] returned `None`).
    pub fn sha256(&self) -> [u8; 32] {
        self.reader.get_ref().hash.clone().finalize().into()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Digest of the header line.
    pub fn header_digest(&self) -> u128 {
        self.header_digest
    }

    /// Digest of the record [`Input::next_row`] returned last (its fields
    /// and line, or its error): equal when the same row is read again.
    pub fn last_digest(&self) -> u128 {
        self.last_digest
    }
}

fn check_text(value: &str, what: &str, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n > max || value.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be at most {max} characters, without control characters"
        ));
    }
    Ok(())
}

/// Checks DNS name syntax exactly as certd does (the rules live in
/// `certd_api::names`); a leading `*.` passes here and is left to the
/// profile, which certd checks.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    certd_api::names::check_dns_name(name, true)
}

/// Checks an email address (RFC 5321 dot-atom local part, DNS domain) and
/// returns it with the domain in lower case.
pub fn normalize_email(addr: &str) -> Result<String, String> {
    let (local, domain) = addr
        .rsplit_once('@')
        .ok_or_else(|| format!("email {addr:?} is not an email address (no '@')"))?;
    let normalized = format!("{local}@{}", domain.to_ascii_lowercase());
    certd_api::names::check_email(&normalized)?;
    Ok(normalized)
}

/// Checks one row against the rules; returns the row and, when it names
/// a CSR, what the CSR holds.
pub fn check_row(raw: &RawRow, rules: &Rules) -> Result<(Row, Option<CsrInfo>), RowError> {
    let fail = |message: String| RowError {
        line: raw.line,
        email: raw.email.clone(),
        common_name: raw.common_name.clone(),
        message,
    };
    if raw.email.is_empty() {
        return Err(fail("email is empty".into()));
    }
    let email = normalize_email(&raw.email).map_err(&fail)?;
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let common_name = opt(&raw.common_name);
    let organizational_unit = opt(&raw.organizational_unit);
    if let Some(cn) = &common_name {
        check_text(cn, "common_name", 64).map_err(&fail)?;
    }
    if let Some(ou) = &organizational_unit {
        check_text(ou, "organizational_unit", 64).map_err(&fail)?;
    }
    let mut dns = Vec::new();
    for d in raw.dns.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        let d = d.to_ascii_lowercase();
        check_dns_name(&d).map_err(&fail)?;
        if dns.contains(&d) {
            return Err(fail(format!("DNS name {d:?} is listed twice")));
        }
        dns.push(d);
    }
    let given_name = opt(&raw.given_name);
    let surname = opt(&raw.surname);
    for (v, what) in [(&given_name, "given_name"), (&surname, "surname")] {
        if let Some(v) = v {
            check_text(v, what, 64).map_err(&fail)?;
        }
    }
    let profile = &rules.profile;
    let mut person = None;
    match rules.kind {
        Some(ProfileKind::SmimePerson) => {
            let (Some(given), Some(sur)) = (&given_name, &surname) else {
                return Err(fail(format!(
                    "profile {profile} names a person: given_name and surname are both needed"
                )));
            };
            if !dns.is_empty() || organizational_unit.is_some() {
                return Err(fail(format!(
                    "profile {profile} (S/MIME for a person) certifies the person and the email \
                     address only: leave dns and organizational_unit empty"
                )));
            }
            let full = format!("{given} {sur}");
            if let Some(cn) = &common_name {
                if *cn != full && !cn.eq_ignore_ascii_case(&email) {
                    return Err(fail(format!(
                        "profile {profile}: common_name {cn:?} must be the person's name \
                         ({full:?}) or the email address, or empty (the name is used)"
                    )));
                }
            }
            person = Some((given.clone(), sur.clone()));
        }
        _ if given_name.is_some() || surname.is_some() => {
            return Err(fail(format!(
                "profile {profile} carries no personal names: leave given_name and surname \
                 empty, or use a sponsor- or individual-validated S/MIME profile"
            )));
        }
        _ => {}
    }
    match rules.kind {
        Some(ProfileKind::SmimeMailbox) => {
            if !dns.is_empty() {
                return Err(fail(format!(
                    "profile {profile} (mailbox-validated S/MIME) certifies only the email \
                     address: leave dns empty, or use a TLS profile"
                )));
            }
            if organizational_unit.is_some() {
                return Err(fail(format!(
                    "profile {profile} (mailbox-validated S/MIME) allows no organizational_unit"
                )));
            }
            if let Some(cn) = &common_name {
                if !cn.eq_ignore_ascii_case(&email) {
                    return Err(fail(format!(
                        "profile {profile} (mailbox-validated S/MIME) allows only the email \
                         address as commonName, not {cn:?}: leave common_name empty (the \
                         email is used) or use a profile that permits personal names"
                    )));
                }
            }
        }
        Some(ProfileKind::TlsServer) => {
            if dns.is_empty() {
                return Err(fail(format!(
                    "profile {profile} (TLS server) needs at least one DNS name in dns"
                )));
            }
            if organizational_unit.is_some() {
                return Err(fail(format!(
                    "profile {profile} (TLS server) allows no organizational_unit"
                )));
            }
            if let Some(cn) = &common_name {
                if !dns.iter().any(|d| d.eq_ignore_ascii_case(cn)) {
                    return Err(fail(format!(
                        "profile {profile} (TLS server): common_name {cn:?} must be one of the \
                         DNS names, or empty"
                    )));
                }
            }
        }
        Some(ProfileKind::TlsClient | ProfileKind::SmimePerson) | None => {}
    }
    let csr = opt(&raw.csr);
    let mut csr_path = None;
    let mut info = None;
    if let Some(c) = &csr {
        let path = rules.base_dir.join(c);
        let bytes = std::fs::read(&path).map_err(|e| {
            fail(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("CSR file {} does not exist", path.display())
                }
                _ => format!("CSR file {} cannot be read: {e}", path.display()),
            })
        })?;
        let parsed = CsrInfo::from_bytes(&bytes)
            .map_err(|e| fail(format!("CSR file {}: {e}", path.display())))?;
        let mut row_names: Vec<String> = vec![email.to_ascii_lowercase()];
        row_names.extend(common_name.iter().map(|c| c.to_ascii_lowercase()));
        row_names.extend(dns.iter().cloned());
        for (what, name) in parsed.names() {
            if !row_names.contains(&name.to_ascii_lowercase()) {
                return Err(fail(format!(
                    "CSR file {} does not match this row: its {what} {name:?} is not among the \
                     row's names ({})",
                    path.display(),
                    row_names.join(", ")
                )));
            }
        }
        if parsed.ips > 0 {
            return Err(fail(format!(
                "CSR file {} asks for IP addresses, which a batch row cannot hold",
                path.display()
            )));
        }
        if let (Some(allowed), Some(kt)) = (&rules.key_types, &parsed.key_type) {
            if !allowed.contains(kt) {
                return Err(fail(format!(
                    "CSR file {}: key type {kt} is not allowed by profile {profile} (allowed: {})",
                    path.display(),
                    allowed.join(", ")
                )));
            }
        }
        csr_path = Some(path);
        info = Some(parsed);
    }
    Ok((
        Row {
            line: raw.line,
            email,
            common_name,
            organizational_unit,
            dns,
            csr,
            csr_path,
            person,
        },
        info,
    ))
}

/// Remembers what earlier rows used, to refuse duplicates within a batch.
///
/// Keeps a 128-bit hash per row, not the names, so memory stays small for
/// long lists.
#[derive(Debug, Default)]
pub struct Duplicates {
    emails: HashMap<u128, u64>,
    stems: HashMap<u128, u64>,
}

fn key128(s: &str) -> u128 {
    let d = sha2::Sha256::digest(s.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_le_bytes(b)
}

impl Duplicates {
    /// Records `row`; an error names the earlier line with the same email
    /// address (or the same output file name).
    pub fn check(&mut self, row: &Row) -> Result<(), String> {
        let key = key128(&row.email.to_ascii_lowercase());
        if let Some(first) = self.emails.get(&key) {
            return Err(format!(
                "duplicate email {}: already on line {first}",
                row.email
            ));
        }
        let stem = row.file_stem();
        if let Some(first) = self.stems.get(&key128(&stem)) {
            return Err(format!(
                "email {} gives the same output file name ({stem}) as line {first}",
                row.email
            ));
        }
        self.emails.insert(key, row.line);
        self.stems.insert(key128(&stem), row.line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(kind: Option<ProfileKind>) -> Rules {
        Rules {
            profile: "p".into(),
            kind,
            key_types: None,
            base_dir: PathBuf::from("."),
        }
    }

    fn raw(email: &str, cn: &str, ou: &str, dns: &str) -> RawRow {
        RawRow {
            line: 2,
            email: email.into(),
            common_name: cn.into(),
            organizational_unit: ou.into(),
            dns: dns.into(),
            csr: String::new(),
            given_name: String::new(),
            surname: String::new(),
        }
    }

    #[test]
    fn emails_are_checked_and_normalised() {
        assert_eq!(
            normalize_email("Alice.B@Example.COM").as_deref(),
            Ok("Alice.B@example.com")
        );
        for bad in [
            "alice",
            "@example.com",
            "a b@example.com",
            "a@b",
            "a..b@example.com",
            "a@-x.com",
            "ä@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_names_are_checked() {
        for ok in ["www.example.com", "*.example.com", "xn--bcher-kva.example"] {
            assert!(check_dns_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "localhost",
            "a..example.com",
            "-a.example.com",
            "a_b.example.com",
            "1.2.3.4",
            "example.com.",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profile_kinds_shape_rows() {
        let smime = rules(Some(ProfileKind::SmimeMailbox));
        assert!(check_row(&raw("a@example.com", "", "", ""), &smime).is_ok());
        assert!(check_row(&raw("a@example.com", "A@example.com", "", ""), &smime).is_ok());
        let e = check_row(&raw("a@example.com", "Alice", "", ""), &smime).expect_err("cn");
        assert!(e.message.contains("only the email"), "{e}");
        assert!(check_row(&raw("a@example.com", "", "", "a.example.com"), &smime).is_err());
        let server = rules(Some(ProfileKind::TlsServer));
        assert!(check_row(
            &raw(
                "ops@example.com",
                "www.example.com",
                "",
                "www.example.com;Example.com"
            ),
            &server
        )
        .is_ok());
        assert!(check_row(&raw("ops@example.com", "", "", ""), &server).is_err());
        assert!(check_row(
            &raw(
                "ops@example.com",
                "other.example.com",
                "",
                "www.example.com"
            ),
            &server
        )
        .is_err());
        let client = rules(Some(ProfileKind::TlsClient));
        let (row, _) =
            check_row(&raw("b@Example.com", "Bob", "IT", "b.example.com"), &client).expect("ok");
        assert_eq!(row.email, "b@example.com");
        assert_eq!(row.organizational_unit.as_deref(), Some("IT"));
    }

    #[test]
    fn duplicates_name_the_first_line() {
        let mut d = Duplicates::default();
        let (mut row, _) = check_row(&raw("a@example.com", "", "", ""), &rules(None)).expect("ok");
        d.check(&row).expect("first");
        row.line = 7;
        row.email = "A@example.com".into();
        let e = d.check(&row).expect_err("dup");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn headers_and_rows_are_read_with_line_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.csv");
        std::fs::write(&p, "Email,common_name,dns\na@example.com,A,\n\r\n\nb@example.com,B,b.example.com\nc@example.com\n").expect("write");
        let mut input = Input::open(&p, false).expect("open");
        let r1 = input.next_row().expect("row").expect("ok");
        assert_eq!((r1.line, r1.email.as_str()), (2, "a@example.com"));
        let r2 = input.next_row().expect("row").expect("ok");
        assert_eq!((r2.line, r2.dns.as_str()), (5, "b.example.com"));
        let r3 = input.next_row().expect("row").expect_err("short");
        assert_eq!(r3.line, 6);
        assert!(input.next_row().is_none());
        let whole: [u8; 32] = sha2::Sha256::digest(std::fs::read(&p).expect("read")).into();
        assert_eq!(input.sha256(), whole);

        std::fs::write(&p, "").expect("write");
        assert!(Input::open(&p, false)
            .expect_err("empty")
            .to_string()
            .contains("empty"));
        std::fs::write(&p, "a@example.com,Alice\n").expect("write");
        assert!(Input::open(&p, false)
            .expect_err("no header")
            .to_string()
            .contains("not a header"));
        std::fs::write(&p, "email,common_name,phone\n").expect("write");
        assert!(Input::open(&p, false)
            .expect_err("unknown")
            .to_string()
            .contains("phone"));
        assert!(Input::open(&p, true).is_ok());
    }

    #[test]
    fn optional_columns_may_be_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("in.csv");
        std::fs::write(&p, "email\nalice@example.com\n").expect("write");
        let mut input = Input::open(&p, false).expect("email alone is a header");
        let raw = input.next_row().expect("row").expect("ok");
        assert_eq!(raw.email, "alice@example.com");
        assert!(raw.common_name.is_empty() && raw.dns.is_empty() && raw.csr.is_empty());
        let (row, _) =
            check_row(&raw, &rules(Some(ProfileKind::SmimeMailbox))).expect("valid for S/MIME");
        assert_eq!(row.common_name, None);

        std::fs::write(&p, "common_name,dns\nA,a.example.com\n").expect("write");
        let e = Input::open(&p, false).expect_err("no email").to_string();
        assert!(e.contains("no email column"), "{e}");
    }
}
