//! certd: an HSM-backed certificate authority signing daemon.
//!
//! The library holds everything; the `certd` binary only parses arguments
//! and calls into it.
//!
//! # Layers
//!
//! The modules read top-down, from what everything stands on, along the
//! issuance pipeline, to the daemon that wires them together. A module uses
//! only modules above it in this list (its own test code may use anything);
//! a test reads every module's `crate::` paths and keeps it so.
//!
//! 1. `clock` — the one source of the time, and its text forms.
//! 2. `secret` — PINs from files or the terminal.
//! 3. `hsm` — certifier keys in a PKCS#11 token behind the `Signer` trait.
//! 4. `config` — the configuration file as typed structs.
//! 5. `policy` — profiles, grants and name rules: data and pure functions.
//! 6. `approval` — approval and validation evidence checked against the profile.
//! 7. `rate_limit` — per-RA request budgets.
//! 8. `csr` — strict CSR parsing, proof of possession, the names asked for.
//! 9. `x509` — X.509 assembly around a token key, names, times, PEM.
//! 10. `certgen` — subscriber certificates built from the profile only.
//! 11. `certifier` — the certifiers and their locked/active/unavailable life.
//! 12. `lint` — pre-issuance lint of the exact TBSCertificate.
//! 13. `ledger` — the source of truth for serials: records, the index (redb).
//! 14. `audit` — the hash-chained audit log.
//! 15. `journal` — the audit log as write-ahead log: ledger changes and audit
//!     entries in one record, the ledger index applied from it.
//! 16. `anchor` — signed checkpoints that anchor the audit log's end.
//! 17. `issue` — the issuance pipeline (`Issuer`).
//! 18. `lookup` — certificates as an RA sees them: by serial, or listed.
//! 19. `crl` — CRLs made, signed, served and kept fresh (`CrlService`).
//! 20. `revoke` — revocation (`Revoker`), which asks for a new CRL.
//! 21. `recovery` — settling what a stop or a full disk interrupted.
//! 22. `status` — the status report and the API's health.
//! 23. `systemd` — readiness, status text and watchdog.
//! 24. `server` — HTTPS with client certificates: HTTP in, pipeline calls, HTTP out.
//! 25. `control` — the local control socket: protocol, client and daemon side.
//! 26. `daemon` — start-up wiring, the run loop and shutdown.
//! 27. `ceremony` — the key ceremony, a command of its own beside the daemon.
//!
//! So nothing in the pipeline reaches into the daemon: each service
//! (`Issuer`, `Revoker`, `Lookup`, `CrlService`) holds the few things it
//! works with, built once in `daemon`, and the API server and the control
//! socket are given those services, not the daemon.
#![forbid(unsafe_code)]

pub mod anchor;
pub mod approval;
pub mod audit;
pub mod backup;
pub mod ceremony;
pub mod certgen;
pub mod certifier;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod crl;
pub mod csr;
pub mod daemon;
pub mod hsm;
pub mod issue;
pub mod journal;
#[cfg(test)]
mod layers;
pub mod ledger;
pub mod lint;
pub mod lookup;
pub mod metrics;
pub mod policy;
pub mod rate_limit;
pub mod recovery;
pub mod revoke;
pub mod secret;
pub mod server;
pub mod status;
pub mod systemd;
#[cfg(test)]
mod testing;
pub mod x509;
