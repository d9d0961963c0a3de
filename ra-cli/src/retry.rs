//! Retries with exponential backoff for transient failures (503s, rate
//! limits, connection resets, time-outs). Policy refusals are never
//! retried. Retrying an issuance is safe because its `request_id` makes
//! certd answer a repeat with the original certificate.

use certd_api::ClientError;
use std::future::Future;
use std::time::Duration;

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(250),
            max: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): `base · 2^(n-1)`,
    /// capped at `max`, scaled by `jitter` in `[0.5, 1.0]` so that many
    /// workers do not retry in lockstep.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        exp.min(self.max).mul_f64(jitter.clamp(0.5, 1.0))
    }
}

/// Whether an error is worth retrying: certd's transient codes and
/// transport failures, except a locked certifier, which waits for an
/// operator (`certd activate`), not for time.
pub fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Api(api) if api.code == certd_api::ErrorCode::CertifierLocked => false,
        other => other.is_transient(),
    }
}

/// A jitter factor in `[0.5, 1.0]` from the OS RNG.
pub fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0
}

/// Runs `op` until it succeeds, fails with a non-transient error, or the
/// attempts are used up. `on_retry(attempt, error, delay)` is told about
/// each retry. Returns the result and the number of attempts made.
pub async fn retry<T, F, Fut>(
    policy: RetryPolicy,
    mut op: F,
    mut on_retry: impl FnMut(u32, &ClientError, Duration),
) -> (Result<T, ClientError>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return (Ok(v), attempt),
            Err(e) if retryable(&e) && attempt < policy.attempts => {
                let d = policy.delay(attempt, jitter());
                on_retry(attempt, &e, d);
                tokio::time::sleep(d).await;
                attempt += 1;
            }
            Err(e) => return (Err(e), attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certd_api::{ApiError, ErrorCode};
    use std::cell::Cell;

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(4, 1.0), Duration::from_millis(800));
        assert_eq!(p.delay(9, 1.0), Duration::from_secs(1));
        assert_eq!(p.delay(2, 0.5), Duration::from_millis(100));
        let j = jitter();
        assert!((0.5..=1.0).contains(&j));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_refusals_are_not() {
        let calls = Cell::new(0);
        let (r, n) = retry(
            policy(),
            || {
                calls.set(calls.get() + 1);
                let c = calls.get();
                async move {
                    if c < 3 {
                        Err(ClientError::Api(ApiError::new(
                            ErrorCode::CertifierUnavailable,
                            "later",
                        )))
                    } else {
                        Ok(c)
                    }
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!((r.ok(), n), (Some(3), 3));

        let calls = Cell::new(0);
        let (r, n) = retry(
            policy(),
            || {
                calls.set(calls.get() + 1);
                async {
                    Err::<(), _>(ClientError::Api(ApiError::new(
                        ErrorCode::NameNotPermitted,
                        "no",
                    )))
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!((r.is_err(), n, calls.get()), (true, 1, 1));

        let (r, n) = retry(
            policy(),
            || async { Err::<(), _>(ClientError::Transport("connection reset".into())) },
            |_, _, _| {},
        )
        .await;
        assert_eq!((r.is_err(), n), (true, 4));
    }
}
