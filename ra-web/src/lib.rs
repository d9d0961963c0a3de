//! ra-web, the web registration authority for certd: what RA staff use to
//! request, validate, approve, issue, revoke and publish certificates. An
//! unprivileged process: it holds no key and none of certd's state, and
//! talks to certd as one RA over mutual TLS. The binary (`src/main.rs`)
//! stays thin; everything it serves lives here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounts;
pub mod cli;
pub mod config;
pub mod csr_view;
pub mod issuer;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod publication;
pub mod server;
pub mod sessions;
pub mod store;
pub mod web;
pub mod workflow;
