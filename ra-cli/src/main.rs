//! `ra-cli`: the operator's command-line registration authority for certd;
//! see [`ra_cli::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ra_cli::cli::main()
}
