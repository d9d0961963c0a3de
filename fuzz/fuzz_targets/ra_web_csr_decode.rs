//! cargo-fuzz target; the harness is `certd_fuzz::ra_web_csr_decode`.
//! (`fuzz_target!` exports a `#[no_mangle]` entry point, which the
//! `unsafe_code` lint counts, so only the library forbids unsafe code.)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certd_fuzz::ra_web_csr_decode(data));
