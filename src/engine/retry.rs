//! Retry policy: how long to wait before the next attempt, and when to give up.
//!
//! Pure and deterministic: the random part (jitter) and the clock are passed in, so the engine
//! can store `next_attempt_at` in the database and tests can pin every number. Modelled on
//! river's `retry_policy.go` (exponential backoff with jitter) and svix's minimum delay after a
//! rate limit or timeout.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::definition::duration;

/// Exponential backoff with a cap and proportional jitter.
///
/// Durations serialize as text (`"200ms"`, `"30s"`) so the JSON copy stored with a saga reads
/// like the definition file it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts including the first one; `1` means "never retry".
    pub max_attempts: u32,
    /// Delay before the first retry (attempt 2).
    #[serde(with = "duration::text")]
    pub base_delay: Duration,
    /// Upper bound on the delay before jitter is applied.
    #[serde(with = "duration::text")]
    pub max_delay: Duration,
    /// Fraction in `[0, 1]`: the delay is scaled by a factor drawn from `[1 - jitter, 1 + jitter)`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// Built-in policy for a step's action when neither the step nor `[defaults]` set one.
    pub const DEFAULT_ACTION: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        jitter: 0.2,
    };

    /// Built-in policy for compensations when `[defaults]` sets none. Compensations must
    /// eventually succeed, so this one tries much longer before the saga is parked as `stuck`.
    pub const DEFAULT_COMPENSATION: RetryPolicy = RetryPolicy {
        max_attempts: 20,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(300),
        jitter: 0.2,
    };

    /// Delay before attempt `next_attempt` (2 = the first retry): `base_delay * 2^(next_attempt - 2)`,
    /// capped at `max_delay`, then scaled by `1 + jitter * (2 * unit - 1)`.
    ///
    /// `unit` is a random number in `[0, 1)`; `0.5` means "no jitter". Values outside that range
    /// are clamped, and a non-finite `unit` counts as `0.5`. Attempts `0` and `1` have no delay.
    /// Jitter may take the result up to `max_delay * (1 + jitter)`. Never overflows or panics.
    pub fn backoff(&self, next_attempt: u32, unit: f64) -> Duration {
        if next_attempt < 2 {
            return Duration::ZERO;
        }
        let exponent = next_attempt - 2;
        let grown = 2u32
            .checked_pow(exponent)
            .and_then(|factor| self.base_delay.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        let capped = grown.min(self.max_delay);

        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        if factor == 1.0 {
            return capped;
        }
        scale(capped, factor)
    }

    /// [`backoff`](Self::backoff) with jitter drawn from the thread-local random generator.
    pub fn backoff_random(&self, next_attempt: u32) -> Duration {
        self.backoff(next_attempt, rand::random::<f64>())
    }

    /// [`backoff`](Self::backoff), but never shorter than `minimum` up to `max_delay`: use it when
    /// the peer asked us to slow down (`Retry-After`). The policy's `max_delay` still bounds the
    /// wait, so a peer cannot park a saga for longer than its definition allows between attempts.
    pub fn backoff_at_least(&self, next_attempt: u32, unit: f64, minimum: Duration) -> Duration {
        self.backoff(next_attempt, unit)
            .max(minimum.min(self.max_delay))
    }

    /// When attempt `next_attempt` becomes due, counting from `now`. Saturates at the far future.
    pub fn next_attempt_at(
        &self,
        now: DateTime<Utc>,
        next_attempt: u32,
        unit: f64,
    ) -> DateTime<Utc> {
        add_saturating(now, self.backoff(next_attempt, unit))
    }

    /// `true` once `attempts_made` attempts have been made and no more are allowed.
    pub fn exhausted(&self, attempts_made: u32) -> bool {
        attempts_made >= self.max_attempts
    }
}

/// `duration * factor` rounded to the nanosecond, saturating at `Duration::MAX`.
fn scale(duration: Duration, factor: f64) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    // `as` from f64 saturates (and maps NaN to 0), which is what we want here.
    let nanos = (duration.as_nanos() as f64 * factor).round() as u128;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

fn add_saturating(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(delay)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter: 0.2,
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let p = policy();
        let delays: Vec<_> = (2..=10).map(|attempt| p.backoff(attempt, 0.5)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(ms)
        );
    }

    #[test]
    fn first_attempt_has_no_delay() {
        assert_eq!(policy().backoff(0, 0.9), Duration::ZERO);
        assert_eq!(policy().backoff(1, 0.9), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = policy();
        // u = 0 gives the lowest factor, 1 - jitter.
        assert_eq!(p.backoff(2, 0.0), ms(80));
        assert_eq!(p.backoff(20, 0.0), ms(4000));
        // u -> 1 approaches 1 + jitter.
        let high = p.backoff(20, 1.0 - f64::EPSILON);
        assert!(high <= ms(6000) && high > ms(5999), "{high:?}");
        assert_eq!(p.backoff(2, 0.75), ms(110));
        for i in 0..=100 {
            let delay = p.backoff(3, f64::from(i) / 100.0);
            assert!(delay >= ms(160) && delay <= ms(240), "{delay:?}");
        }
    }

    #[test]
    fn out_of_range_inputs_are_clamped() {
        let p = policy();
        assert_eq!(p.backoff(2, -3.0), ms(80));
        assert_eq!(p.backoff(2, f64::NAN), ms(100));
        let wild = RetryPolicy {
            jitter: 7.0,
            ..policy()
        };
        assert_eq!(wild.backoff(2, 0.0), Duration::ZERO);
        assert_eq!(wild.backoff(2, 1.0), ms(200));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy();
        assert_eq!(p.backoff(1000, 0.5), ms(5000));
        assert_eq!(p.backoff(u32::MAX, 0.5), ms(5000));
        let unbounded = RetryPolicy {
            max_delay: Duration::MAX,
            ..policy()
        };
        assert_eq!(unbounded.backoff(1000, 0.5), Duration::MAX);
        assert_eq!(unbounded.backoff(1000, 0.99), Duration::MAX);
        assert!(unbounded.backoff(1000, 0.0) > Duration::from_secs(u64::MAX / 2));
    }

    #[test]
    fn exhausted_at_max_attempts() {
        let p = policy();
        assert!(!p.exhausted(0));
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
        assert!(p.exhausted(6));
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert!(once.exhausted(1));
    }

    #[test]
    fn minimum_delay_wins_when_larger() {
        let p = policy();
        assert_eq!(p.backoff_at_least(2, 0.5, ms(1000)), ms(1000));
        assert_eq!(p.backoff_at_least(8, 0.5, ms(1000)), ms(5000));
        // A minimum past `max_delay` (5 s) waits `max_delay`, not what the peer asked.
        assert_eq!(p.backoff_at_least(2, 0.5, ms(60_000)), ms(5000));
    }

    #[test]
    fn random_backoff_stays_within_jitter_bounds() {
        let p = policy();
        for _ in 0..200 {
            let delay = p.backoff_random(4);
            assert!(delay >= ms(320) && delay < ms(480), "{delay:?}");
        }
    }

    #[test]
    fn next_attempt_at_adds_the_delay_and_saturates() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let p = policy();
        assert_eq!(
            p.next_attempt_at(now, 3, 0.5),
            now + chrono::TimeDelta::milliseconds(200)
        );
        let unbounded = RetryPolicy {
            max_delay: Duration::MAX,
            ..policy()
        };
        assert_eq!(
            unbounded.next_attempt_at(now, 1000, 0.5),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn serializes_durations_as_text() {
        let json = serde_json::to_value(policy()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"max_attempts": 5, "base_delay": "100ms", "max_delay": "5s", "jitter": 0.2})
        );
        let back: RetryPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, policy());
    }
}
