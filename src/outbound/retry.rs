//! The delivery retry schedule: a pure function of the attempts made, a random draw and an
//! optional `Retry-After`; the result is persisted as `next_attempt_at`, never slept on.

use std::time::Duration;

/// Longest `Retry-After` honoured; a receiver cannot park a delivery for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// Delays before the 2nd, 3rd, … attempt (the first is immediate). After the last, dead.
    pub schedule: Vec<Duration>,
    /// Relative jitter applied to each delay: 0.2 means ±20%.
    pub jitter: f64,
}

impl RetrySchedule {
    /// After the `made`-th failed attempt of the current schedule (1-based): how long until the
    /// next one, or `None` when the schedule is exhausted (dead letter). `draw` is uniform in
    /// [0, 1). A `Retry-After` replaces the scheduled delay (no jitter: the receiver asked).
    pub fn next_delay(
        &self,
        made: usize,
        retry_after: Option<Duration>,
        draw: f64,
    ) -> Option<Duration> {
        let base = *self.schedule.get(made.checked_sub(1)?)?;
        if let Some(ra) = retry_after {
            return Some(ra.min(MAX_RETRY_AFTER));
        }
        let factor = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }

    /// Attempts a delivery gets in one schedule.
    pub fn max_attempts(&self) -> usize {
        self.schedule.len() + 1
    }
}

/// The `Retry-After` of a response, if it has one that parses. `now`: this machine's wall clock
/// ([`crate::clock::Clock::local_now`]): an HTTP date in it is on the peer's clock.
pub fn retry_after_of(
    headers: &reqwest::header::HeaderMap,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule `sagad serve` uses unless told otherwise.
    fn default_schedule() -> RetrySchedule {
        let o = crate::config::ServeArgs::defaults().outbound;
        RetrySchedule {
            schedule: o.webhook_retry_schedule,
            jitter: o.webhook_retry_jitter,
        }
    }

    #[test]
    fn follows_the_schedule_with_bounded_jitter_then_gives_up() {
        let p = default_schedule();
        assert_eq!(p.max_attempts(), 8);
        assert_eq!(p.next_delay(1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(1, None, 0.0), Some(Duration::from_secs(4)));
        let hi = p.next_delay(2, None, 0.999_999).unwrap_or_default();
        assert!(hi <= Duration::from_secs(360) && hi > Duration::from_secs(359));
        assert_eq!(p.next_delay(7, None, 0.5), Some(Duration::from_secs(36000)));
        assert_eq!(p.next_delay(8, None, 0.5), None);
        assert_eq!(p.next_delay(0, None, 0.5), None);
    }

    #[test]
    fn retry_after_replaces_the_delay_but_not_the_limit() {
        let p = default_schedule();
        let ra = Some(Duration::from_secs(90));
        assert_eq!(p.next_delay(1, ra, 0.0), ra);
        assert_eq!(p.next_delay(8, ra, 0.0), None);
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(10 * 86400)), 0.0),
            Some(MAX_RETRY_AFTER)
        );
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-01T10:00:00Z")
            .map(|d| d.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 01 Nov 2026 10:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
