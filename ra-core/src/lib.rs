//! ra-core: what both of certd's registration authorities (ra-web and
//! ra-cli) share, so that it cannot drift between them: the certificate
//! output formats (PEM bundle, DER, PKCS#7 certs-only).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod formats;
