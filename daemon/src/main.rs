//! The `certd` binary: see [`certd::cli`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// Many threads allocate small buffers per request (TLS records, JSON,
/// DER); mimalloc's per-thread heaps avoid glibc malloc's lock contention.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    certd::cli::main()
}
