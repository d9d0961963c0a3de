//! certd: an HSM-backed certificate authority signing daemon.
//!
//! The library holds everything; the `certd` binary only parses arguments
//! and calls into it. Modules follow the issuance pipeline described in
//! the project's design document.
#![forbid(unsafe_code)]

pub mod audit;
pub mod ceremony;
pub mod certgen;
pub mod certifier;
pub mod config;
pub mod control;
pub mod crl;
pub mod csr;
pub mod daemon;
mod group_commit;
pub mod hsm;
pub mod index;
pub mod issue;
pub mod journal;
pub mod ledger;
pub mod lint;
pub mod policy;
pub mod recovery;
pub mod secret;
pub mod server;
pub mod status;
pub mod systemd;
#[cfg(test)]
mod testing;
pub mod x509;
