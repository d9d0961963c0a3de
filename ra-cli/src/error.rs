//! ra-cli's errors: what went wrong, what to do, and the exit status that
//! goes with it.

use certd_api::ClientError;
use std::path::PathBuf;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line asks for something impossible (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration file is missing, unreadable or invalid (exit 2).
    #[error("configuration {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The input file cannot be used at all: unreadable, empty, no header,
    /// unknown columns (exit 2).
    #[error("{0}")]
    Input(String),
    /// The output cannot be written (exit 2 before anything was issued).
    #[error("{path}: {message}")]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// certd refused or could not be reached (exit 1).
    #[error("{}", certd_message(.source, .hint))]
    Certd {
        /// The client's error.
        source: ClientError,
        /// What the operator may do about it, if known.
        hint: Option<String>,
    },
    /// A file could not be read or written (exit 1).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Key generation, CSR or PKCS#12 encoding failed (exit 1).
    #[error("{0}")]
    Crypto(String),
}

fn certd_message(source: &ClientError, hint: &Option<String>) -> String {
    let base = match source {
        ClientError::Api(e) => format!("certd refused: {} [{}]", e.message, e.code),
        other => other.to_string(),
    };
    match hint {
        Some(h) => format!("{base}\n  hint: {h}"),
        None => base,
    }
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } | Error::Input(_) | Error::Output { .. } => {
                crate::EXIT_USAGE
            }
            _ => crate::EXIT_FAILED,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// certd's error, with a hint for the cases an operator can fix.
    pub fn certd(source: ClientError) -> Error {
        let hint = hint_for(&source);
        Error::Certd { source, hint }
    }

    /// The stable code of a certd error (`certifier_locked`, `unreachable`,
    /// ...), or `None` for errors of ra-cli itself.
    pub fn certd_code(&self) -> Option<&'static str> {
        match self {
            Error::Certd { source, .. } => Some(source.code()),
            _ => None,
        }
    }
}

/// What to do about the errors an operator can fix.
pub fn hint_for(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Api(_) => None,
        ClientError::Transport(msg) => {
            let m = msg.to_ascii_lowercase();
            if m.contains("connection refused") {
                Some("is certd running and listening at the configured url?".into())
            } else if m.contains("alert")
                || m.contains("handshake")
                || m.contains("certificate")
                || m.contains("connection reset")
                || m.contains("unexpected eof")
                || m.contains("broken pipe")
                || m.contains("connection closed")
                || m.contains("channel closed")
            {
                Some(
                    "certd refused the TLS handshake: is this RA's client certificate on certd's \
                     allowlist ([[ra]] fingerprints), and does trust_anchor verify certd's server \
                     certificate? `ra-cli health` shows the fingerprint ra-cli presents"
                        .into(),
                )
            } else {
                None
            }
        }
        _ => None,
    }
}
