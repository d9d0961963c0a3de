//! `report.csv`: one line per input row, in input order.
//!
//! Rows finish out of order (concurrency), so [`Writer`] holds back only
//! the lines that arrive before their predecessors (about `jobs` of them)
//! and streams the rest to a temporary file, renamed into place at the
//! end: memory does not grow with the batch.

use crate::error::Error;
use serde::Serialize;
use std::path::Path;

/// Report file name.
pub const REPORT: &str = "report.csv";

/// A row's final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Issued (in this run or an earlier one).
    Issued,
    /// certd refused it, or it could not be completed.
    Failed,
    /// Invalid and left out (`--skip-invalid`).
    Skipped,
    /// Not sent: the run stopped first (re-running sends it).
    #[serde(rename = "not_attempted")]
    NotAttempted,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportLine {
    /// Line of the row in the input file.
    pub line: u64,
    /// `email` column.
    pub email: String,
    /// `common_name` column.
    pub common_name: String,
    /// Serial, hex (issued rows).
    pub serial: String,
    /// notAfter, RFC 3339 (issued rows).
    pub not_after: String,
    /// Whether policy shortened the requested validity.
    pub not_after_clamped: bool,
    /// `issued`, `failed`, `skipped` or `not_attempted`.
    pub status: Status,
    /// certd's error code, or ra-cli's (`invalid_row`, `unreachable`, ...).
    pub error_code: String,
    /// What went wrong.
    pub error_message: String,
}

/// Streams report lines, in input order, to `DIR/report.csv`.
pub struct Writer {
    dir: std::path::PathBuf,
    csv: csv::Writer<std::io::BufWriter<tempfile::NamedTempFile>>,
    held: std::collections::BTreeMap<u64, ReportLine>,
    next: u64,
    written: u64,
}

fn report_err(e: impl std::fmt::Display) -> Error {
    Error::output(REPORT, e)
}

impl Writer {
    /// Starts a report in `dir` (a temporary file until [`Writer::finish`]).
    pub fn new(dir: &Path) -> Result<Writer, Error> {
        let tmp = tempfile::Builder::new()
            .prefix(crate::output::TEMP_PREFIX)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(
                crate::output::MODE_PUBLIC,
            ))
            .tempfile_in(dir)
            .map_err(|e| Error::Output {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            csv: csv::Writer::from_writer(std::io::BufWriter::new(tmp)),
            held: std::collections::BTreeMap::new(),
            next: 0,
            written: 0,
        })
    }

    /// Adds the line of the row with input position `seq` (0, 1, 2, ...).
    pub fn push(&mut self, seq: u64, line: ReportLine) -> Result<(), Error> {
        self.held.insert(seq, line);
        while let Some(line) = self.held.remove(&self.next) {
            self.csv.serialize(&line).map_err(report_err)?;
            self.written += 1;
            self.next += 1;
        }
        Ok(())
    }

    /// Writes what is held back (rows never finished leave gaps) and
    /// renames the report into place.
    pub fn finish(mut self) -> Result<std::path::PathBuf, Error> {
        for (_, line) in std::mem::take(&mut self.held) {
            self.csv.serialize(&line).map_err(report_err)?;
            self.written += 1;
        }
        if self.written == 0 {
            self.csv.write_record(HEADER).map_err(report_err)?;
        }
        let buf = self.csv.into_inner().map_err(report_err)?;
        let tmp = buf.into_inner().map_err(report_err)?;
        let path = self.dir.join(REPORT);
        tmp.as_file().sync_data().map_err(report_err)?;
        tmp.persist(&path).map_err(|e| report_err(e.error))?;
        Ok(path)
    }
}

const HEADER: [&str; 9] = [
    "line",
    "email",
    "common_name",
    "serial",
    "not_after",
    "not_after_clamped",
    "status",
    "error_code",
    "error_message",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u64) -> ReportLine {
        ReportLine {
            line: n,
            email: format!("u{n}@example.com"),
            common_name: String::new(),
            serial: format!("{n:02x}"),
            not_after: String::new(),
            not_after_clamped: false,
            status: Status::Issued,
            error_code: String::new(),
            error_message: String::new(),
        }
    }

    #[test]
    fn lines_come_out_in_input_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::new(dir.path()).expect("new");
        for seq in [1, 0, 3, 5, 2] {
            w.push(seq, line(seq + 2)).expect("push");
        }
        assert_eq!(w.held.len(), 1, "only 5 waits for 4");
        let path = w.finish().expect("finish");
        let text = std::fs::read_to_string(path).expect("read");
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split(',').next().unwrap_or(""))
            .collect();
        assert_eq!(lines, vec!["line", "2", "3", "4", "5", "7"]);
    }
}
