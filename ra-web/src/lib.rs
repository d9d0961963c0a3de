//! ra-web, the web registration authority for certd: what RA staff and
//! subscribers use to request, validate, approve and pick up certificates.
//! The binary (`src/main.rs`) stays thin; everything it serves lives here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod csr_view;
