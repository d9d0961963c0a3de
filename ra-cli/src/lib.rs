//! ra-cli: the operator's command-line registration authority for certd.
//!
//! It is an RA of its own: it talks to certd over mutual TLS with its own
//! client credential through [`certd_api::CertdClient`]. The binary
//! (`src/main.rs`) only parses arguments; everything it does lives here:
//!
//! - [`config`]: the TOML configuration (certd URL, credential, defaults);
//! - [`input`]: the batch CSV, streamed and validated row by row;
//! - [`csr`]: what a subscriber's own CSR holds (names, key type);
//! - [`keys`]: subscriber keys generated here, their CSRs, and the
//!   password-encrypted form in which they are kept until delivered;
//! - [`p12`]: PKCS#12 files (AES-256-CBC, PBKDF2-SHA256, HMAC-SHA256 MAC);
//! - [`output`]: certificate formats and atomic file writes;
//! - [`batch`]: batch issuance (journal, request ids, concurrency, retries,
//!   report, progress);
//! - [`commands`]: the single commands (`issue`, `show`, `list`, `revoke`,
//!   `crl`, `profiles`, `health`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod cli;
pub mod commands;
pub mod config;
pub mod csr;
pub mod error;
pub mod input;
pub mod keys;
pub mod output;
pub mod p12;
pub mod retry;

pub use error::Error;

/// Exit status: everything done.
pub const EXIT_OK: i32 = 0;
/// Exit status: something failed (a row, a refusal, certd unreachable).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: usage or configuration error; nothing was done.
pub const EXIT_USAGE: i32 = 2;
