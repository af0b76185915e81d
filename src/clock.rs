//! Time as sagad reads it: **the database's clock decides.**
//!
//! Every timestamp sagad writes to a column or compares with one (retry times, leases, hold
//! expiry, wait and give-up deadlines, breaker timings, delivery and inbox retries) is on
//! PostgreSQL's clock, so several sagad processes on machines whose clocks disagree with the
//! database's, or with each other, agree on what is due. Statements compute with `now()`
//! themselves where they can; where Rust code needs the time first (a plan that records an
//! absolute retry time and puts it in an event), it asks [`Clock::db_now`]: the database's
//! `now()` read at start (and again every [`RESYNC`]), carried forward by this process's monotonic
//! clock, which a change of the wall clock does not move.
//!
//! The wall clock of this machine ([`Clock::local_now`]) is read only where a peer's clock is
//! compared with ours (Stripe's webhook signature timestamp) and for what is only shown.
//! Reading `chrono::Utc::now()` or `SystemTime::now()` anywhere else is refused by clippy
//! (`clippy.toml`, `disallowed-methods`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often the database's clock is read again: bounds how far the monotonic clock's rate may
/// carry the estimate from the database's, and how long a step of the database's clock takes to
/// reach sagad.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Readings of the database's clock per [`Clock::sync`].
const SAMPLES: usize = 3;

/// sagad's clocks. Cheap to clone; clones share the reading of the database's clock.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Added to this machine's wall clock ([`Clock::local_now`]); zero but in tests and
    /// diagnostics ([`crate::config::Settings::clock_skew`]).
    skew: TimeDelta,
    /// The database's time at a moment of this process's monotonic clock.
    anchor: Mutex<(DateTime<Utc>, Instant)>,
}

impl Clock {
    /// A clock that has not read the database's yet: [`Clock::db_now`] follows this machine's
    /// wall clock (shifted by `skew`) until [`Clock::sync`] succeeds. Unit tests and commands that
    /// talk to no database use it as it is.
    pub fn unsynced(skew: TimeDelta) -> Self {
        let inner = Inner {
            skew,
            anchor: Mutex::new((wall() + skew, Instant::now())),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A clock set to the database's, read once now.
    pub async fn synced(pool: &PgPool, skew: TimeDelta) -> Result<Self, sqlx::Error> {
        let clock = Self::unsynced(skew);
        clock.sync(pool).await?;
        Ok(clock)
    }

    /// Reads the database's clock again: [`SAMPLES`] readings on one connection, keeping the one
    /// with the shortest round trip. Its monotonic instant is taken before the query is sent, so
    /// the estimate runs at most that round trip ahead of the database, never behind it: a time
    /// computed from it is never early by the database's clock.
    pub async fn sync(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let mut best: Option<(Duration, DateTime<Utc>, Instant)> = None;
        for _ in 0..SAMPLES {
            let sent = Instant::now();
            let db = crate::store::db_now(&mut *conn).await?;
            let rtt = sent.elapsed();
            if best.is_none_or(|(shortest, ..)| rtt < shortest) {
                best = Some((rtt, db, sent));
            }
        }
        if let Some((_, db, sent)) = best {
            *self.anchor() = (db, sent);
        }
        Ok(())
    }

    /// The database's time now (see the module's documentation).
    pub fn db_now(&self) -> DateTime<Utc> {
        let (db, at) = *self.anchor();
        db + TimeDelta::from_std(at.elapsed()).unwrap_or(TimeDelta::MAX)
    }

    /// This machine's wall clock (with the diagnostic skew): only where a peer's clock is
    /// compared with ours, or for display.
    pub fn local_now(&self) -> DateTime<Utc> {
        wall() + self.inner.skew
    }

    fn anchor(&self) -> std::sync::MutexGuard<'_, (DateTime<Utc>, Instant)> {
        self.inner.anchor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the database's clock every [`RESYNC`] until `shutdown`; a failed read keeps the
    /// last one (the monotonic clock carries it).
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RESYNC) => {}
            }
            if let Err(e) = self.sync(&pool).await {
                warn!(error = %e, "could not read the database's clock; keeping the last reading");
            }
        }
    }
}

/// This machine's wall clock, unshifted: for what is only shown (dates in demo data) and for
/// tests' own fixtures. Never for a time written to or compared with a column.
#[allow(clippy::disallowed_methods)]
pub fn wall() -> DateTime<Utc> {
    Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_shifts_only_the_local_clock() {
        let c = Clock::unsynced(TimeDelta::seconds(30));
        let local = c.local_now() - wall();
        assert!(
            (TimeDelta::seconds(29)..=TimeDelta::seconds(31)).contains(&local),
            "{local}"
        );
        // Unsynced, the database's clock is the local one as it was read at creation.
        let db = c.db_now() - wall();
        assert!(
            (TimeDelta::seconds(29)..=TimeDelta::seconds(31)).contains(&db),
            "{db}"
        );
    }

    #[test]
    fn the_database_time_advances_with_the_monotonic_clock() {
        let c = Clock::unsynced(TimeDelta::zero());
        let start = DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time");
        *c.anchor() = (start, Instant::now() - Duration::from_secs(5));
        let now = c.db_now();
        assert!(now >= start + TimeDelta::seconds(5), "{now}");
        assert!(now < start + TimeDelta::seconds(60), "{now}");
    }
}
