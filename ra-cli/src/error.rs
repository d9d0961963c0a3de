//! ra-cli's errors: what went wrong, what to do, the stable code a script
//! can match (`--json` prints it), and the exit status that goes with it.

use certd_api::ClientError;
use std::path::PathBuf;

/// Everything that can stop a command.
///
/// Every variant has a stable machine code ([`Error::code`]); the codes are
/// part of ra-cli's interface (`--json` prints them) and only ever grow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line asks for something impossible (`usage`, exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration file is missing, unreadable or invalid (`config`,
    /// exit 2).
    #[error("configuration {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The input file cannot be used at all: unreadable, empty, no header,
    /// unknown columns (`input`, exit 2).
    #[error("{0}")]
    Input(String),
    /// The input file differs from what the batch was started with, or
    /// changed while this run read it (`input_changed`, exit 2).
    #[error("{0}")]
    InputChanged(String),
    /// The output cannot be written (`output`, exit 2 before anything was
    /// issued).
    #[error("{path}: {message}")]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The batch journal cannot be used: a line that is not a journal
    /// entry other than a torn last one, or a key file it names that is
    /// not as written or is gone with its key (`journal_corrupt`, exit 2).
    #[error("{path}: {message}")]
    Journal {
        /// The journal.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The output directory holds another batch, or the options differ
    /// from the ones the batch was started with (`batch_mismatch`, exit 2).
    #[error("{0}")]
    BatchMismatch(String),
    /// A PKCS#12 password is missing or does not open the key it is meant
    /// for (`password_missing` / `password_mismatch`, exit 2).
    #[error("{message}")]
    Password {
        /// `password_missing` or `password_mismatch`.
        code: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// certd says this RA may not use the profile, key type or certifier
    /// asked for (certd's code: `profile_not_permitted`,
    /// `key_not_permitted`, `certifier_not_permitted`; exit 2).
    #[error("{message}")]
    NotPermitted {
        /// certd's code for the refusal.
        code: &'static str,
        /// What is not permitted and what is.
        message: String,
    },
    /// certd refused or could not be reached (certd's code, or
    /// `unreachable`; exit 1).
    #[error("{}", certd_message(.source, .hint))]
    Certd {
        /// The client's error.
        source: ClientError,
        /// What the operator may do about it, if known.
        hint: Option<String>,
    },
    /// A file could not be read or written (`io`, exit 1).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Key generation, CSR or PKCS#12 encoding failed (`crypto`, exit 1).
    #[error("{0}")]
    Crypto(String),
    /// The request_id was answered with a certificate revoked since: it
    /// is not delivered (`revoked`, exit 1).
    #[error("{0}")]
    Revoked(String),
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

impl From<ra_core::formats::FormatError> for Error {
    fn from(e: ra_core::formats::FormatError) -> Error {
        Error::Crypto(e.0)
    }
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Certd { .. } | Error::Io { .. } | Error::Crypto(_) | Error::Revoked(_) => {
                crate::EXIT_FAILED
            }
            _ => crate::EXIT_USAGE,
        }
    }

    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::Config { .. } => "config",
            Error::Input(_) => "input",
            Error::InputChanged(_) => "input_changed",
            Error::Output { .. } => "output",
            Error::Journal { .. } => "journal_corrupt",
            Error::BatchMismatch(_) => "batch_mismatch",
            Error::Password { code, .. } | Error::NotPermitted { code, .. } => code,
            Error::Certd { source, .. } => source.code(),
            Error::Io { .. } => "io",
            Error::Crypto(_) => "crypto",
            Error::Revoked(_) => "revoked",
        }
    }

    /// The error as `--json` prints it:
    /// `{"error": {"code", "message", "exit_code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.to_string(),
                "exit_code": self.exit_code(),
            }
        })
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An output error on `path`.
    pub fn output(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Error {
        Error::Output {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// The refusal to deliver a replayed certificate that was revoked.
    pub fn revoked(request_id: &str, resp: &certd_api::IssueResponse) -> Option<Error> {
        let at = resp.revoked_at.as_deref()?;
        Some(Error::Revoked(format!(
            "certd issued {} for request_id {request_id:?} before, and it was revoked at {at} ({}): \
             it is not delivered; issue again under a new request_id",
            resp.serial,
            resp.revocation_reason.as_deref().unwrap_or("no reason given")
        )))
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
                // A connection certd closed (refusing the certificate)
                // before the client had sent on it.
                || m.contains("connection was not ready")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_exit_statuses_are_stable() {
        let cases: Vec<(Error, &str, i32)> = vec![
            (Error::Usage("x".into()), "usage", 2),
            (Error::Input("x".into()), "input", 2),
            (Error::InputChanged("x".into()), "input_changed", 2),
            (Error::output("/o", "x"), "output", 2),
            (
                Error::Journal {
                    path: "/j".into(),
                    message: "x".into(),
                },
                "journal_corrupt",
                2,
            ),
            (Error::BatchMismatch("x".into()), "batch_mismatch", 2),
            (Error::Revoked("x".into()), "revoked", 1),
            (
                Error::Password {
                    code: "password_mismatch",
                    message: "x".into(),
                },
                "password_mismatch",
                2,
            ),
            (
                Error::NotPermitted {
                    code: "key_not_permitted",
                    message: "x".into(),
                },
                "key_not_permitted",
                2,
            ),
            (
                Error::certd(ClientError::Transport("connection refused".into())),
                "unreachable",
                1,
            ),
            (Error::Crypto("x".into()), "crypto", 1),
        ];
        for (e, code, exit) in cases {
            assert_eq!((e.code(), e.exit_code()), (code, exit), "{e:?}");
            let j = e.to_json();
            assert_eq!(j["error"]["code"], code);
            assert_eq!(j["error"]["exit_code"], exit);
        }
    }

    #[test]
    fn a_refused_client_certificate_gets_the_allowlist_hint_however_it_shows() {
        // What the client reports for certd refusing its certificate
        // depends on where the connection was when certd closed it.
        for m in [
            "client error (SendRequest): connection error: received fatal alert: AccessDenied",
            "client error (Canceled): operation was canceled: connection closed",
            "client error (Canceled): operation was canceled: connection was not ready",
            "client error (SendRequest): channel closed",
            "client error (SendRequest): connection error: stream closed because of a broken pipe",
        ] {
            let hint = hint_for(&ClientError::Transport(m.into())).unwrap_or_default();
            assert!(hint.contains("allowlist"), "{m}");
        }
        assert!(hint_for(&ClientError::Transport("dns error".into())).is_none());
    }
}
