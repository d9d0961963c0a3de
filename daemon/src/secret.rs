//! Secrets (token PINs) from files or the terminal, held in wiping types.

use secrecy::SecretString;
use std::path::Path;
use zeroize::Zeroizing;

/// Errors reading a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read PIN file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is empty or not UTF-8.
    #[error("PIN file {0} is empty or not UTF-8 text")]
    Empty(String),
    /// No terminal to ask on.
    #[error("no PIN given: pass --pin-file FILE, or run on a terminal to be asked")]
    NoTerminal,
    /// Other users may read or change the file.
    #[error(
        "PIN file {path} is open to other users (mode {mode:04o}): restrict it with \
         `chmod o-rwx {path}` (0600, or 0640 for a group of operators); it was not read"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

/// Reads a PIN from a file that other users cannot access; one trailing
/// newline is removed. The buffer is wiped after use.
///
/// The mode is checked on the opened file, so the file read is the file
/// checked: a token PIN anyone on the host can read is no secret.
pub fn read_pin_file(path: &Path) -> Result<SecretString, SecretError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let read_error = |source| SecretError::Read {
        path: path.display().to_string(),
        source,
    };
    if path == Path::new("-") {
        // Standard input (a pipe from a secret store, or a root-only file
        // redirected by root for a command run as a service user), read
        // up to a bound: no growing buffer leaves copies behind.
        let mut bytes = Zeroizing::new(vec![0u8; MAX_STDIN_PIN + 1]);
        let mut len = 0;
        let mut stdin = std::io::stdin().lock();
        loop {
            let n = stdin.read(&mut bytes[len..]).map_err(read_error)?;
            if n == 0 {
                break;
            }
            len += n;
            if len > MAX_STDIN_PIN {
                return Err(SecretError::Read {
                    path: "standard input".into(),
                    source: std::io::Error::other(format!(
                        "more than {MAX_STDIN_PIN} bytes: give the PIN alone"
                    )),
                });
            }
        }
        return pin_of(&bytes[..len], "standard input");
    }
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(SecretError::Exposed {
            path: path.display().to_string(),
            mode,
        });
    }
    // Sized up front: a growing buffer would leave unwiped copies behind.
    let size = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(size));
    file.read_to_end(&mut bytes).map_err(read_error)?;
    pin_of(&bytes, &path.display().to_string())
}

/// The most a PIN read from standard input may take.
const MAX_STDIN_PIN: usize = 4096;

/// The PIN in `bytes` (one trailing newline ignored), read from `source`.
fn pin_of(bytes: &[u8], source: &str) -> Result<SecretString, SecretError> {
    let mut text: &[u8] = bytes;
    if let Some(rest) = text.strip_suffix(b"\n") {
        text = rest;
    }
    if let Some(rest) = text.strip_suffix(b"\r") {
        text = rest;
    }
    let s = std::str::from_utf8(text).map_err(|_| SecretError::Empty(source.to_string()))?;
    if s.is_empty() {
        return Err(SecretError::Empty(source.to_string()));
    }
    Ok(SecretString::from(s.to_string()))
}

/// Asks for a PIN on the terminal without echo.
pub fn prompt_pin(prompt: &str) -> Result<SecretString, SecretError> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(SecretError::NoTerminal);
    }
    let pin =
        Zeroizing::new(
            rpassword::prompt_password(prompt).map_err(|source| SecretError::Read {
                path: "terminal".into(),
                source,
            })?,
        );
    if pin.is_empty() {
        return Err(SecretError::NoTerminal);
    }
    Ok(SecretString::from(pin.to_string()))
}

/// A PIN from `--pin-file` if given, else from the terminal.
pub fn pin_from(file: Option<&Path>, prompt: &str) -> Result<SecretString, SecretError> {
    match file {
        Some(f) => read_pin_file(f),
        None => prompt_pin(prompt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    fn pin_file(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join(format!("pin-{mode:o}"));
        std::fs::write(&path, "1234\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn pin_files_open_to_other_users_are_refused_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o600, 0o400, 0o640, 0o660] {
            let pin = read_pin_file(&pin_file(dir.path(), mode)).expect("private PIN file");
            assert_eq!(pin.expose_secret(), "1234");
        }
        for mode in [0o644, 0o604, 0o602, 0o601, 0o666] {
            let path = pin_file(dir.path(), mode);
            let err = read_pin_file(&path).expect_err("a PIN file others can access");
            assert!(matches!(err, SecretError::Exposed { mode: m, .. } if m == mode));
            assert!(err.to_string().contains("chmod o-rwx"), "{err}");
        }
    }
}
