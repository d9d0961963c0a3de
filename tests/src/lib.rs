//! certd-e2e: the harness the end-to-end tests of every certd binary share.
//!
//! It starts real things and nothing else: a SoftHSM2 token in a temporary
//! directory ([`Token`]), the real binaries of the workspace ([`bin`],
//! [`CertdInstance`]), a PKCS#11 inspector that reads a token back
//! through `cryptoki` ([`pkcs11`]), and a CA with its mutual-TLS API seen
//! from the outside ([`api`]: RA credentials, the RA client, `curl`, CSRs,
//! pkilint).
//!
//! SoftHSM finds its tokens through `SOFTHSM2_CONF`. Tests never set it on
//! their own process (the environment is shared by every test thread);
//! they set it on the child processes they spawn, which is also why the
//! PKCS#11 inspector runs in a child process of its own.
#![forbid(unsafe_code)]

pub mod api;
pub mod certd;
pub mod demo;
pub mod fault;
pub mod metrics;
pub mod pkcs11;
pub mod process;
pub mod ready;
pub mod token;
pub mod web;

pub use certd::{CertdConfig, CertdInstance, CertifierSpec};
pub use demo::DemoEnv;
pub use process::{bin, clean_env, run, tool, ChildGuard, CmdOutput};
pub use ready::{ApiSocket, NotifySocket};
pub use token::{write_secret, Token, SOFTHSM_MODULE};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The root of the repository (the workspace), found from this crate's
/// manifest directory.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Polls `condition` every few milliseconds until it returns `Some`, or
/// panics with `what` (and whatever `context` says then) once `timeout`
/// has passed.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = condition() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
