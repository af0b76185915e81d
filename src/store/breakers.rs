//! The circuit breakers every process shares (`dependency_breakers`) and the sagas paused on
//! them (`sagas.wait_reason`, `sagas.paused_since`).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::{WORK_CHANNEL, events};
use crate::breaker::model::{Breaker, Dependency};
use crate::events::{DEPENDENCY_AGGREGATE, NewEvent};

const COLUMNS: &str = "dependency, state, window_start, calls, failures, prev_calls, prev_failures, \
    connection_failures, opens, opened_at, probe_at, probe_by, probe_until, changed_at";

/// Every breaker as stored.
pub async fn get_all(pool: &PgPool) -> Result<Vec<Breaker>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM dependency_breakers ORDER BY dependency"
    )))
    .fetch_all(pool)
    .await
}

/// The breaker of `dependency` (made, closed, if it has no row yet), locked until the caller's
/// transaction ends.
pub async fn lock(conn: &mut PgConnection, dependency: Dependency) -> Result<Breaker, sqlx::Error> {
    sqlx::query("INSERT INTO dependency_breakers (dependency) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(dependency.as_str())
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM dependency_breakers WHERE dependency = $1 FOR UPDATE"
    )))
    .bind(dependency.as_str())
    .fetch_one(conn)
    .await
}

/// Writes `b` back (after [`lock`], in the same transaction).
pub async fn save(conn: &mut PgConnection, b: &Breaker) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dependency_breakers SET state = $2, window_start = $3, calls = $4, failures = $5,
                prev_calls = $6, prev_failures = $7, connection_failures = $8, opens = $9,
                opened_at = $10, probe_at = $11, probe_by = $12, probe_until = $13, changed_at = $14
         WHERE dependency = $1",
    )
    .bind(b.dependency.as_str())
    .bind(b.state.as_str())
    .bind(b.window_start)
    .bind(b.calls)
    .bind(b.failures)
    .bind(b.prev_calls)
    .bind(b.prev_failures)
    .bind(b.connection_failures)
    .bind(b.opens)
    .bind(b.opened_at)
    .bind(b.probe_at)
    .bind(&b.probe_by)
    .bind(b.probe_until)
    .bind(b.changed_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends `event` to the events of `dependency` (after [`lock`], in the same transaction, so
/// the breaker's change and its event commit together), fanned out to the webhook endpoints
/// subscribed to it.
pub async fn record_event(
    conn: &mut PgConnection,
    dependency: Dependency,
    event: NewEvent,
) -> Result<(), sqlx::Error> {
    let (aggregate_id, version): (uuid::Uuid, i32) = sqlx::query_as(
        "UPDATE dependency_breakers SET event_version = event_version + 1 WHERE dependency = $1
         RETURNING aggregate_id, event_version",
    )
    .bind(dependency.as_str())
    .fetch_one(&mut *conn)
    .await?;
    events::append(conn, DEPENDENCY_AGGREGATE, aggregate_id, version, &[event]).await?;
    Ok(())
}

/// How fast woken sagas come due: the k-th (oldest first, from 0) at `now + t(k)` where
/// `k = start·t + ramp·t²/2`, so the rate starts at `start` per second and grows by `ramp`
/// per second each second.
#[derive(Clone, Copy, Debug)]
pub struct Ramp {
    pub start: f64,
    pub ramp: f64,
}

impl Default for Ramp {
    fn default() -> Self {
        Self {
            start: 10.0,
            ramp: 10.0,
        }
    }
}

/// Wakes the sagas paused on `dependency`, oldest first, due at a ramped rate, and wakes every
/// process's workers (NOTIFY at commit). `only_if_closed`: only while its breaker is closed
/// (the safety net for a saga paused just as the breaker closed). Returns how many woke.
pub async fn wake_paused(
    conn: &mut PgConnection,
    dependency: Dependency,
    ramp: Ramp,
    only_if_closed: bool,
) -> Result<u64, sqlx::Error> {
    let woke: i64 = sqlx::query_scalar(
        "WITH locked AS (
             SELECT id, created_at FROM sagas
             WHERE paused_since IS NOT NULL AND wait_reason = $1
               AND (NOT $5::bool OR EXISTS (SELECT 1 FROM dependency_breakers
                                            WHERE dependency = $2 AND state = 'closed'))
             FOR UPDATE SKIP LOCKED),
         paused AS (SELECT id, row_number() OVER (ORDER BY created_at, id) - 1 AS k FROM locked),
         woke AS (
             UPDATE sagas s SET paused_since = NULL, updated_at = now(),
                    next_run_at = now() + (sqrt($3::float8 * $3::float8 + 2 * $4::float8 * p.k) - $3::float8)
                                          / $4::float8 * interval '1 second'
             FROM paused p WHERE s.id = p.id AND s.locked_until IS NULL
             RETURNING 1)
         SELECT count(*) FROM woke, (SELECT pg_notify($6, '')) n",
    )
    .bind(dependency.wait_reason())
    .bind(dependency.as_str())
    .bind(ramp.start.max(0.001))
    .bind(ramp.ramp.max(0.001))
    .bind(only_if_closed)
    .bind(WORK_CHANNEL)
    .fetch_one(conn)
    .await?;
    Ok(woke as u64)
}

/// Makes the saga paused longest on `dependency` due now, to carry the breaker's probe (a paused
/// saga is otherwise due only when woken). A prober whose call fails pauses again, at the back:
/// one saga whose own request keeps failing cannot be the only probe. Returns whether there was
/// one.
pub async fn wake_prober(pool: &PgPool, dependency: Dependency) -> Result<bool, sqlx::Error> {
    let woke: i64 = sqlx::query_scalar(
        "WITH one AS (
             UPDATE sagas SET next_run_at = now(), updated_at = now()
             WHERE id = (SELECT id FROM sagas
                         WHERE paused_since IS NOT NULL AND wait_reason = $1 AND locked_until IS NULL
                         ORDER BY paused_since, id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING 1)
         SELECT count(*) FROM one, (SELECT pg_notify($2, '')) n",
    )
    .bind(dependency.wait_reason())
    .bind(WORK_CHANNEL)
    .fetch_one(pool)
    .await?;
    Ok(woke > 0)
}

/// Sagas paused per dependency (only those with any).
pub async fn paused_counts(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(PAUSED_COUNTS).fetch_all(pool).await
}

/// The statement of [`paused_counts`].
pub(super) const PAUSED_COUNTS: &str =
    "SELECT wait_reason, count(*) FROM sagas WHERE paused_since IS NOT NULL GROUP BY wait_reason";

/// How long to wait between refreshes of a process's copy of the breakers.
pub const REFRESH: Duration = Duration::from_secs(1);
