//! Certificate output formats and atomic file writes.
//!
//! Every file ra-cli writes goes to a temporary file in the same directory
//! first and is renamed into place only when complete, so an interrupted
//! write leaves nothing under the final name. Leftover temporaries
//! (`.tmp-*`) of a killed run are removed by the next one.

use crate::error::Error;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

/// Prefix of temporary files.
pub const TEMP_PREFIX: &str = ".tmp-";

/// File mode of certificates and reports.
pub const MODE_PUBLIC: u32 = 0o644;
/// File mode of PKCS#12 files, encrypted keys and password lists.
pub const MODE_SECRET: u32 = 0o600;

/// Output format of `ra-cli issue` (`--format`; `--help` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lowercase")]
pub enum Format {
    /// PEM: the certificate, then its chain.
    Pem,
    /// DER: the certificate alone.
    Der,
    /// PKCS#7 certs-only (`.p7b`, DER): the certificate and its chain.
    P7b,
    /// PKCS#12 with the generated key, the certificate and its chain.
    P12,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pem" => Ok(Format::Pem),
            "der" => Ok(Format::Der),
            "p7b" => Ok(Format::P7b),
            "p12" => Ok(Format::P12),
            _ => Err(format!("unknown format {s:?}: use pem, der, p7b or p12")),
        }
    }
}

pub use ra_core::formats::{p7b, pem_bundle, pem_to_der};

/// Writes `bytes` to `path` atomically (temporary file created with
/// permissions `mode`, then rename). With `durable`, the data is flushed to
/// disk before the rename (the caller flushes the directory).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let out_err = |e: std::io::Error| Error::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    // Created with its final mode (never readable by others, not even
    // for a moment, when it is a secret).
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(out_err)?;
    tmp.write_all(bytes).map_err(out_err)?;
    if durable {
        tmp.as_file().sync_data().map_err(out_err)?;
    }
    tmp.persist(path).map_err(|e| out_err(e.error))?;
    Ok(())
}

/// Checks that a file can be created at `path` (its directory exists and
/// is writable, nothing but a file is there), without leaving anything.
pub fn check_writable(path: &Path, what: &str) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(Error::output(
                path,
                format!("{what}: there is something other than a file: remove it"),
            ))
        }
        _ => {}
    }
    if !dir.is_dir() {
        return Err(Error::output(
            path,
            format!("{what}: the directory {} does not exist", dir.display()),
        ));
    }
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| Error::output(path, format!("{what}: cannot write there: {e}")))
}

/// Removes temporary files a killed run left in `dir`.
pub fn remove_stale_temps(dir: &Path) -> Result<usize, Error> {
    let mut n = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Flushes a directory's entries (renames) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Reads a secret (password) from a file: the first line, without its line
/// ending. Refuses empty secrets.
pub fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<String>, Error> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?,
    );
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(Error::Usage(format!(
            "{}: the password file is empty",
            path.display()
        )));
    }
    Ok(zeroize::Zeroizing::new(line.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.pem");
        write_atomic(&p, b"one", MODE_PUBLIC, false).expect("write");
        write_atomic(&p, b"two", MODE_SECRET, true).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, MODE_SECRET);
        std::fs::write(dir.path().join(".tmp-abc"), b"partial").expect("write");
        assert_eq!(remove_stale_temps(dir.path()).expect("clean"), 1);
        assert!(p.exists());
    }

    #[test]
    fn writable_paths_are_checked_without_leaving_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_writable(&dir.path().join("x.pem"), "out").expect("writable");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        std::fs::create_dir(dir.path().join("d")).expect("dir");
        let e = check_writable(&dir.path().join("d"), "out").expect_err("a directory");
        assert_eq!(e.code(), "output");
        std::fs::write(dir.path().join("f"), "x").expect("file");
        let e = check_writable(&dir.path().join("f/x.pem"), "out").expect_err("no dir");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("p7b".parse::<Format>(), Ok(Format::P7b));
        assert!("pfx".parse::<Format>().is_err());
    }
}
