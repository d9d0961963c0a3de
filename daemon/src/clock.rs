//! Time: the one place certd reads the clock, and the text forms of times.
//!
//! Every reading of the time goes through a [`Clock`] handed to whoever
//! needs it (issuance validity, revocation times, CRL thisUpdate and
//! nextUpdate and their schedule, audit entry times, rate limits, recovery
//! ages, ledger timestamps, uptime), so tests can run time-dependent
//! behaviour on a clock they move by hand instead of waiting for it.
//! Timers (tokio's `sleep` and `interval`) stay tokio's: tests pause and
//! advance those with tokio's own test clock.

use std::time::{Instant, SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The wall-clock time: what certificates, CRLs and the audit log state.
    fn now(&self) -> SystemTime;

    /// A monotonic instant: for intervals (rate limits, retry spacing,
    /// uptime), which must not jump when the wall clock is set.
    fn instant(&self) -> Instant;

    /// The wall-clock time in Unix seconds.
    fn unix(&self) -> i64 {
        unix_seconds(self.now())
    }
}

/// The operating system's clocks: what the daemon runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Unix seconds of `t`. A time before 1970 reads as 1970 rather than
/// failing whatever asked.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// RFC 3339 text of Unix seconds, as the API shows times (empty for a time
/// outside what RFC 3339 can state).
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Unix seconds of RFC 3339 text.
pub fn parse_rfc3339(text: &str) -> Result<i64, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339).map(|t| t.unix_timestamp())
}

/// RFC 3339 text of `t` in UTC with exactly six fractional digits, as audit
/// entries carry it. Fixed width rather than [`Rfc3339`], which drops the
/// fraction when it happens to be zero.
pub fn rfc3339_micros(t: SystemTime) -> Result<String, time::error::Format> {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    OffsetDateTime::from(t).format(format)
}

/// A clock that stands still until a test moves it. Wall-clock time and
/// the monotonic instant move together.
#[cfg(test)]
pub(crate) struct ManualClock {
    wall: SystemTime,
    start: Instant,
    moved: std::sync::Mutex<std::time::Duration>,
}

#[cfg(test)]
impl ManualClock {
    /// A clock that reads `wall` until it is moved.
    pub(crate) fn at(wall: SystemTime) -> Self {
        Self {
            wall,
            start: Instant::now(),
            moved: std::sync::Mutex::new(std::time::Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub(crate) fn advance(&self, by: std::time::Duration) {
        *self.moved.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    fn moved(&self) -> std::time::Duration {
        *self.moved.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.wall + self.moved()
    }

    fn instant(&self) -> Instant {
        self.start + self.moved()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_both_readings_together() {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let (wall, instant) = (clock.now(), clock.instant());
        assert_eq!((clock.now(), clock.instant()), (wall, instant));
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now(), wall + Duration::from_millis(1_500));
        assert_eq!(clock.instant(), instant + Duration::from_millis(1_500));
        assert_eq!(clock.unix(), 1_700_000_001);
    }

    #[test]
    fn times_read_and_print_as_rfc_3339() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            Ok(1_700_000_000)
        );
        assert!(parse_rfc3339("yesterday").is_err());
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            rfc3339_micros(t).expect("formats"),
            "2023-11-14T22:13:20.000000Z"
        );
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
