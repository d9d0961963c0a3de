//! `certd-gen-assets OUT_DIR`: writes the man pages (`OUT_DIR/man/*.1`, one
//! per command and subcommand, from the same clap definitions the binaries
//! parse with) and the shell completions (`OUT_DIR/completions/{bash,zsh,fish}/`)
//! that the packages install. `packaging/build-debs` runs it.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: certd-gen-assets OUT_DIR")?
        .into();
    for command in [
        certd::cli::command(),
        ra_web::cli::command(),
        ra_cli::cli::command(),
    ] {
        write_man_pages(&command, &out.join("man"))?;
        write_completions(command, &out.join("completions"))?;
    }
    Ok(())
}

/// One page for the command and one per subcommand (`certd-init-ca.1`),
/// as `git` does, so `man certd-backup` finds the page of `certd backup`.
fn write_man_pages(command: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(command.clone(), dir)
        .with_context(|| format!("cannot write the man pages of {}", command.get_name()))
}

fn write_completions(mut command: clap::Command, dir: &Path) -> Result<()> {
    let name = command.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let shell_dir = dir.join(shell.to_string());
        std::fs::create_dir_all(&shell_dir)
            .with_context(|| format!("cannot create {}", shell_dir.display()))?;
        clap_complete::generate_to(shell, &mut command, &name, &shell_dir)
            .with_context(|| format!("cannot write the {shell} completion of {name}"))?;
    }
    Ok(())
}
