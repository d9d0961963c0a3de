//! Per-RA rate budgets: a token bucket per RA and operation (issuance,
//! revocation, listing) that holds a minute's worth of requests and refills
//! continuously. The time comes in as an argument, so the buckets are
//! tested without a clock.

use crate::policy::Grant;
use certd_api::{ApiError, ErrorCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What a budget is spent on: each operation has a bucket of its own, of
/// the RA's `rate_limit_per_minute`, so a listing loop does not starve the
/// RA's issuance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v1/certificates`.
    Issue,
    /// `POST /v1/certificates/{serial}/revoke`.
    Revoke,
    /// `GET /v1/certificates?...`.
    List,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Issue => "issuance",
            Operation::Revoke => "revocation",
            Operation::List => "listing",
        }
    }
}

/// Per-RA token buckets.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token from `ra`'s bucket as of `now`. The bucket holds
    /// `per_minute` tokens, starts full and refills continuously at
    /// `per_minute` a minute; a lowered limit applies at once.
    fn take(&self, ra: &str, per_minute: u32, now: Instant) -> bool {
        let capacity = f64::from(per_minute);
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = b.entry(ra.to_string()).or_insert((capacity, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * capacity / 60.0).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one request from the RA's budget as of `now`; refuses with
    /// `rate_limited` when it is spent. No limit (or 0) lets everything
    /// through.
    pub fn check(&self, grant: &Grant, now: Instant) -> Result<(), ApiError> {
        self.check_op(grant, Operation::Issue, now)
    }

    /// [`RateLimiter::check`] for the bucket of `op`.
    pub fn check_op(&self, grant: &Grant, op: Operation, now: Instant) -> Result<(), ApiError> {
        let key = match op {
            Operation::Issue => grant.name().to_string(),
            other => format!("{}\0{}", grant.name(), other.as_str()),
        };
        match grant.config.rate_limit_per_minute {
            Some(n) if n > 0 && !self.take(&key, n, now) => Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "RA {:?} is over its limit of {n} {} requests per minute; retry later",
                    grant.name(),
                    op.as_str()
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestCa;
    use std::time::Duration;

    /// How many requests in a row the bucket lets through at `now`.
    fn burst(limiter: &RateLimiter, ra: &str, per_minute: u32, now: Instant) -> usize {
        (0..10 * per_minute as usize)
            .take_while(|_| limiter.take(ra, per_minute, now))
            .count()
    }

    #[test]
    fn rate_limit_buckets_hold_a_minute_and_refill_continuously() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Full at first: a minute's worth at once, and no more.
        assert_eq!(burst(&limiter, "ra1", 60, t0), 60);
        // At 60 a minute, half a second refills half a request: none yet.
        assert_eq!(burst(&limiter, "ra1", 60, at(500)), 0);
        // The other half arrives by the second.
        assert_eq!(burst(&limiter, "ra1", 60, at(1_000)), 1);
        // 2.5 s later: two requests, with half of one left over.
        assert_eq!(burst(&limiter, "ra1", 60, at(3_500)), 2);
        assert_eq!(burst(&limiter, "ra1", 60, at(4_000)), 1);
        // Another RA has its own bucket.
        assert_eq!(burst(&limiter, "ra2", 60, at(4_000)), 60);
        // A long pause refills only up to the capacity.
        assert_eq!(burst(&limiter, "ra1", 60, at(3_600_000)), 60);
        // A lowered limit caps a refilled bucket at once.
        assert_eq!(burst(&limiter, "ra2", 2, at(7_200_000)), 2);
    }

    #[test]
    fn rate_limited_requests_are_refused_with_their_code() {
        const PROFILE: &str =
            "[[profile]]\nname = \"tls-client\"\nkind = \"tls-client\"\nmax_validity_days = 30\n";
        let limited = TestCa::new(
            PROFILE,
            "profiles = [\"tls-client\"]\nrate_limit_per_minute = 2",
        );
        let t0 = Instant::now();
        let grant = limited.grant();
        let limiter = RateLimiter::default();
        assert!(limiter.check(&grant, t0).is_ok());
        assert!(limiter.check(&grant, t0).is_ok());
        let err = limiter.check(&grant, t0).expect_err("over the limit");
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert_eq!(
            err.message,
            "RA \"ra1\" is over its limit of 2 issuance requests per minute; retry later"
        );
        // Revocation and listing have buckets of their own.
        for op in [Operation::Revoke, Operation::List] {
            assert!(limiter.check_op(&grant, op, t0).is_ok());
            assert!(limiter.check_op(&grant, op, t0).is_ok());
            let err = limiter.check_op(&grant, op, t0).expect_err("over");
            assert_eq!(err.code, ErrorCode::RateLimited);
            assert!(err.message.contains(op.as_str()), "{}", err.message);
        }
        // Thirty seconds bring one request back.
        let later = t0 + Duration::from_secs(30);
        assert!(limiter.check(&grant, later).is_ok());
        assert!(limiter.check(&grant, later).is_err());

        // 0 (like no setting) means no limit.
        let unlimited = TestCa::new(
            PROFILE,
            "profiles = [\"tls-client\"]\nrate_limit_per_minute = 0",
        );
        let grant = unlimited.grant();
        let limiter = RateLimiter::default();
        for _ in 0..1_000 {
            assert!(limiter.check(&grant, t0).is_ok());
        }
    }
}
