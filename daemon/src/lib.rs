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
//! 2. `metrics` — the counters and histograms, and their exposition.
//! 3. `secret` — PINs from files or the terminal.
//! 4. `hsm` — certifier keys in a PKCS#11 token behind the `Signer` trait.
//! 5. `config` — the configuration file as typed structs.
//! 6. `policy` — profiles, grants and name rules: data and pure functions.
//! 7. `approval` — approval and validation evidence checked against the profile.
//! 8. `rate_limit` — per-RA request budgets.
//! 9. `csr` — strict CSR parsing, proof of possession, the names asked for.
//! 10. `x509` — X.509 assembly around a token key, names, times, PEM.
//! 11. `certgen` — subscriber certificates built from the profile only.
//! 12. `certifier` — the certifiers and their locked/active/unavailable life.
//! 13. `lint` — pre-issuance lint of the exact TBSCertificate.
//! 14. `ledger` — the source of truth for serials: records, the index (redb).
//! 15. `audit` — the hash-chained audit log.
//! 16. `journal` — the audit log as write-ahead log: ledger changes and audit
//!     entries in one record, the ledger index applied from it.
//! 17. `anchor` — signed checkpoints that anchor the audit log's end.
//! 18. `backup` — a consistent copy of the journal, and its proven restore.
//! 19. `issue` — the issuance pipeline (`Issuer`).
//! 20. `lookup` — certificates as an RA sees them: by serial, or listed.
//! 21. `crl` — CRLs made, signed, served and kept fresh (`CrlService`).
//! 22. `revoke` — revocation (`Revoker`), which asks for a new CRL.
//! 23. `recovery` — settling what a stop or a full disk interrupted.
//! 24. `status` — the status report and the API's health.
//! 25. `systemd` — readiness, status text and watchdog.
//! 26. `server` — HTTPS with client certificates: HTTP in, pipeline calls, HTTP out.
//! 27. `control` — the local control socket: protocol, client and daemon side.
//! 28. `daemon` — start-up wiring, the run loop, the metrics listener and shutdown.
//! 29. `ceremony` — the key ceremony, a command of its own beside the daemon.
//! 30. `cli` — the `certd` command line over all of the above.
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
