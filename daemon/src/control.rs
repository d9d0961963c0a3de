//! The local control socket: activation, deactivation and status.
//!
//! One JSON request line, one JSON response line per connection. The socket
//! file's mode and group decide who may connect; the daemon additionally
//! checks the peer's credentials (root, the daemon's own user, or — when
//! `control_group` is set — whoever the socket's permissions let in).

use crate::status::DaemonStatus;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use zeroize::Zeroizing;

/// The largest request line accepted.
pub const MAX_REQUEST: usize = 16 * 1024;

/// A request to the daemon.
pub enum Request {
    /// Log a certifier in.
    Activate {
        /// Name or number; `None` when the daemon has one certifier.
        certifier: Option<String>,
        /// The token user PIN.
        pin: SecretString,
    },
    /// Log a certifier out.
    Deactivate {
        /// Name or number.
        certifier: Option<String>,
    },
    /// Report state.
    Status,
    /// Reload profiles, RAs and grants from the configuration file.
    Reload,
}

/// The wire form of a request; the PIN field wipes itself when dropped.
#[derive(Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Wire {
    Activate {
        #[serde(default)]
        certifier: Option<String>,
        pin: Zeroizing<String>,
    },
    Deactivate {
        #[serde(default)]
        certifier: Option<String>,
    },
    Status {},
    Reload {},
}

impl Request {
    /// Encodes the request as one line; the buffer wipes itself on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        use secrecy::ExposeSecret;
        let wire = match self {
            Request::Activate { certifier, pin } => Wire::Activate {
                certifier: certifier.clone(),
                pin: Zeroizing::new(pin.expose_secret().to_string()),
            },
            Request::Deactivate { certifier } => Wire::Deactivate {
                certifier: certifier.clone(),
            },
            Request::Status => Wire::Status {},
            Request::Reload => Wire::Reload {},
        };
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        // Serialising these plain structs into memory cannot fail.
        let _ = serde_json::to_writer(&mut *out, &wire);
        out.push(b'\n');
        out
    }

    /// Decodes one request line.
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        let wire: Wire = serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
        Ok(match wire {
            Wire::Activate { certifier, pin } => Request::Activate {
                certifier,
                pin: SecretString::from(pin.as_str().to_string()),
            },
            Wire::Deactivate { certifier } => Request::Deactivate { certifier },
            Wire::Status {} => Request::Status,
            Wire::Reload {} => Request::Reload,
        })
    }
}

/// The error part of a response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine code.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// A response from the daemon.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// A human-readable outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The status, for status requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
    /// The error, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A success with a message.
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }

    /// A refusal with a code.
    pub fn error(code: &str, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(ErrorBody {
                code: code.to_string(),
                message: message.into(),
            }),
            ..Default::default()
        }
    }
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket could not be reached.
    #[error("cannot reach certd at {path}: {source}; is the daemon running, and may this user use its control socket?")]
    Connect {
        /// Socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered something unreadable.
    #[error("unreadable reply from certd: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("{message} [{code}]")]
    Refused {
        /// Stable machine code.
        code: String,
        /// The daemon's message.
        message: String,
    },
}

/// Sends one request and returns the daemon's successful response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ControlError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ControlError::Connect {
            path: socket.display().to_string(),
            source,
        }
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    stream.write_all(&request.encode())?;
    stream.flush()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let resp: Response =
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if resp.ok {
        Ok(resp)
    } else {
        let e = resp.error.unwrap_or(ErrorBody {
            code: "internal".into(),
            message: "refused without a reason".into(),
        });
        Err(ControlError::Refused {
            code: e.code,
            message: e.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn activate_round_trips_and_unknown_fields_are_refused() {
        let req = Request::Activate {
            certifier: Some("root".into()),
            pin: SecretString::from("1234".to_string()),
        };
        let line = req.encode();
        match Request::decode(&line).expect("decodes") {
            Request::Activate { certifier, pin } => {
                assert_eq!(certifier.as_deref(), Some("root"));
                assert_eq!(pin.expose_secret(), "1234");
            }
            _ => panic!("wrong request"),
        }
        assert!(Request::decode(br#"{"op":"status","x":1}"#).is_err());
        assert!(Request::decode(br#"{"op":"explode"}"#).is_err());
    }
}
