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
}

/// Reads a PIN from a file; one trailing newline is removed. The buffer is
/// wiped after use.
pub fn read_pin_file(path: &Path) -> Result<SecretString, SecretError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.display().to_string(),
        source,
    })?);
    let mut text: &[u8] = &bytes;
    if let Some(rest) = text.strip_suffix(b"\n") {
        text = rest;
    }
    if let Some(rest) = text.strip_suffix(b"\r") {
        text = rest;
    }
    let s =
        std::str::from_utf8(text).map_err(|_| SecretError::Empty(path.display().to_string()))?;
    if s.is_empty() {
        return Err(SecretError::Empty(path.display().to_string()));
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
