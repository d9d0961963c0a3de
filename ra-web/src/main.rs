//! `ra-web`: see `ra-web --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ra_web::cli::main()
}
