//! The real `./demo --setup-only` as a test fixture, and the `demo.env` it
//! writes.

use crate::process::{run, tool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The variables of a `demo.env` file (`export NAME='value'` lines).
#[derive(Debug, Clone, Default)]
pub struct DemoEnv {
    vars: BTreeMap<String, String>,
    path: PathBuf,
}

impl DemoEnv {
    /// Parses `path`; panics, naming it, if it cannot be read.
    pub fn read(path: &Path) -> DemoEnv {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        DemoEnv::parse(&text, path)
    }

    /// Parses the text of a `demo.env` (read from `path`, for messages).
    pub fn parse(text: &str, path: &Path) -> DemoEnv {
        let vars = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().trim_matches('\'').to_string()))
            .collect();
        DemoEnv {
            vars,
            path: path.to_path_buf(),
        }
    }

    /// The value of `key`; panics, listing what there is, when it is absent.
    #[track_caller]
    pub fn get(&self, key: &str) -> &str {
        self.vars.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "{} has no {key} (it has {:?})",
                self.path.display(),
                self.vars.keys().collect::<Vec<_>>()
            )
        })
    }

    /// The value of `key` as a path.
    #[track_caller]
    pub fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.get(key))
    }

    /// Every variable, in name order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Runs the real `./demo --setup-only --dir DIR --port PORT` with the
/// binaries of the running test's profile (`--debug-build`, or
/// `--release-build` when the test is itself a release build), and returns
/// the `demo.env` it wrote. The demo certifier stays locked.
pub fn setup(dir: &Path, port: u16) -> DemoEnv {
    setup_with(dir, port, &[])
}

/// [`setup`] with more options for `./demo` (e.g. `--web-port`).
pub fn setup_with(dir: &Path, port: u16, extra: &[&str]) -> DemoEnv {
    let certd = crate::bin("certd");
    // ra-cli's and ra-web's configurations are part of the set-up (ra-web
    // checks its own and creates the admin account).
    let _ = crate::bin("ra-cli");
    let _ = crate::bin("ra-web");
    let profile_flag = match certd
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("release") => "--release-build",
        _ => "--debug-build",
    };
    let out = run(tool(crate::repo_root().join("demo"))
        .arg("--setup-only")
        .arg("--dir")
        .arg(dir)
        .args(["--port", &port.to_string(), profile_flag])
        .args(extra));
    out.assert_success();
    DemoEnv::read(&dir.join("demo.env"))
}
