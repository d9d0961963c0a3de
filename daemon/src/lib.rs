//! certd: an HSM-backed certificate authority signing daemon.
//!
//! The library holds everything; the `certd` binary only parses arguments
//! and calls into it. Modules follow the issuance pipeline described in
//! the project's design document.
#![forbid(unsafe_code)]

pub mod audit;
pub mod ceremony;
pub mod certifier;
pub mod config;
pub mod control;
pub mod daemon;
pub mod hsm;
pub mod ledger;
pub mod secret;
pub mod status;
pub mod systemd;
pub mod x509;
pub mod policy;
pub mod csr;
pub mod certgen;
pub mod lint;
pub mod issue;
