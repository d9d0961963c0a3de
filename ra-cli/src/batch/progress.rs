//! Progress of a batch: an `indicatif` bar with rate and ETA on a
//! terminal, plain periodic lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How to show progress (`--progress`; `--help` lists the values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lowercase")]
pub enum ProgressMode {
    /// A bar when standard error is a terminal, else plain lines.
    Auto,
    /// Always a bar.
    Bar,
    /// Plain lines every few seconds.
    Plain,
    /// Nothing until the summary.
    #[value(alias = "none")]
    Off,
}

/// Counters shown while a batch runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Issued in this run.
    pub issued: u64,
    /// Issued by an earlier run (journal).
    pub already: u64,
    /// Failed.
    pub failed: u64,
    /// Skipped as invalid.
    pub skipped: u64,
    /// Not sent because the run stopped.
    pub not_attempted: u64,
    /// Retries made.
    pub retries: u64,
}

impl Counts {
    /// Rows finished.
    pub fn done(&self) -> u64 {
        self.issued + self.already + self.failed + self.skipped + self.not_attempted
    }
}

/// The display.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
    start: Instant,
    last: Instant,
    every: Duration,
}

impl Progress {
    /// Starts showing progress of `total` rows.
    pub fn new(mode: ProgressMode, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let (bar, plain) = match mode {
            ProgressMode::Bar => (true, false),
            ProgressMode::Auto if terminal => (true, false),
            ProgressMode::Auto | ProgressMode::Plain => (false, true),
            ProgressMode::Off => (false, false),
        };
        let bar = bar.then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let now = Instant::now();
        Progress {
            bar,
            plain,
            total,
            start: now,
            last: now,
            every: Duration::from_secs(2),
        }
    }

    /// Shows the current counts (plain lines at most every two seconds).
    pub fn update(&mut self, c: &Counts) {
        if let Some(b) = &self.bar {
            b.set_position(c.done());
            b.set_message(format!(
                "issued {}  failed {}  skipped {}{}",
                c.issued + c.already,
                c.failed,
                c.skipped,
                if c.retries > 0 {
                    format!("  retries {}", c.retries)
                } else {
                    String::new()
                }
            ));
        } else if self.plain && self.last.elapsed() >= self.every {
            self.last = Instant::now();
            eprintln!("{}", self.line(c));
        }
    }

    fn line(&self, c: &Counts) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = (c.issued + c.failed) as f64 / secs;
        let left = self.total.saturating_sub(c.done());
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "-".into()
        };
        format!(
            "ra-cli: {}/{} rows: issued {} (earlier runs {}), failed {}, skipped {}; {:.1} rows/s, ETA {}",
            c.done(),
            self.total,
            c.issued + c.already,
            c.already,
            c.failed,
            c.skipped,
            rate,
            eta
        )
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
