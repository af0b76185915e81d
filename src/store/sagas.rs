//! The saga table: the durable state machine and its work queue.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{CANCEL_CHANNEL, DONE_CHANNEL, WORK_CHANNEL, bookings, events, inventory, webhooks};
use crate::engine::model::{Fence, SagaStatus, StepOutcome, Transition};
use crate::events::NewEvent;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SagaRow {
    pub id: Uuid,
    pub saga_name: String,
    pub saga_version: i32,
    pub status: String,
    pub current_step: i32,
    pub attempt: i32,
    pub input: serde_json::Value,
    pub context: serde_json::Value,
    pub next_run_at: Option<DateTime<Utc>>,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub wait_key: Option<String>,
    pub wait_deadline: Option<DateTime<Utc>>,
    pub failure_step: Option<String>,
    pub failure_reason: Option<String>,
    pub cancel_requested: bool,
    pub event_version: i32,
    pub idempotency_key: Option<String>,
    pub request_fingerprint: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl SagaRow {
    pub fn status(&self) -> SagaStatus {
        // The column's CHECK constraint admits only known values.
        SagaStatus::parse(&self.status).unwrap_or(SagaStatus::Stuck)
    }
}

const COLUMNS: &str = "id, saga_name, saga_version, status, current_step, attempt, input, context, next_run_at, \
    locked_by, locked_until, wait_key, wait_deadline, failure_step, failure_reason, cancel_requested, \
    event_version, idempotency_key, request_fingerprint, created_at, updated_at, finished_at";

pub struct NewSaga<'a> {
    pub id: Uuid,
    pub saga_name: &'a str,
    pub saga_version: i32,
    pub input: &'a serde_json::Value,
    pub idempotency_key: Option<&'a str>,
    pub request_fingerprint: &'a str,
    /// Insert it already claimed (first attempt) by this worker for this long: the starting
    /// process runs it itself, without a claim.
    pub leased_to: Option<(&'a str, Duration)>,
    /// Its first events: `BookingRequested` (which creates the booking row), then those of the
    /// steps run ahead, if any.
    pub events: &'a [NewEvent],
    /// Leading steps the start statement carries out itself.
    pub ahead: Option<StartAhead<'a>>,
}

/// Leading steps of a new saga that its start statement carries out, planned ahead as having
/// succeeded: the hold they place, the state they lead to and their step rows. When the hold
/// cannot be placed (the dates are taken), the saga starts at its first step as if there were
/// none, with its first event only; a worker then runs the hold step, which finds them taken.
pub struct StartAhead<'a> {
    pub hold: &'a inventory::NewHold<'a>,
    pub current_step: i32,
    pub context: &'a serde_json::Value,
    /// The booking's status after the steps' events.
    pub booking_status: &'a str,
    pub steps: &'a [StepOutcome],
}

pub enum InsertOutcome {
    /// The new saga as inserted: past the steps ahead when its `current_step` is theirs.
    Created(Box<SagaRow>),
    /// The idempotency key was used before: the saga it started and that request's fingerprint.
    Existing { id: Uuid, fingerprint: String },
}

/// The start statement, with or without steps ahead (its parameters: [`start`]).
pub(super) fn start_sql(ahead: bool) -> String {
    // With steps ahead, `claim` places their hold, unless the idempotency key was used before (a
    // replay must not hold anything: the earlier saga has its own), and the saga starts past
    // them only if it did; parts gated on `s` write nothing for a reused key. `past(p, v)`: `p`
    // past the steps ahead, else the plain start's `v`.
    const HELD: &str = "EXISTS (SELECT 1 FROM claim)";
    let past = |ahead_value: &str, plain: &str| {
        if ahead {
            format!("CASE WHEN {HELD} THEN {ahead_value} ELSE {plain} END")
        } else {
            plain.to_owned()
        }
    };
    let (claim, steps) = if ahead {
        (
            format!(
                "claim AS ({}),",
                inventory::insert_hold_sql(
                    "$1",
                    29,
                    "WHERE NOT EXISTS (SELECT 1 FROM sagas WHERE idempotency_key = $5)"
                )
            ),
            format!(
                ", {}",
                steps_cte(&format!("(SELECT 1 FROM s WHERE {HELD}) AS ran"), 34)
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let (step, context, versions) = (
        past("$25::int", "0"),
        past("$26::jsonb", "'{}'::jsonb"),
        past("$27::int", "1"),
    );
    format!(
        "WITH {claim}
         s AS (
             INSERT INTO sagas (id, saga_name, saga_version, status, input, next_run_at, idempotency_key,
                                request_fingerprint, locked_by, locked_until, attempt,
                                current_step, context, event_version)
             SELECT $1, $2, $3, 'running', $4, now(), $5, $6, $7,
                    now() + $8::float8 * interval '1 millisecond', CASE WHEN $7::text IS NULL THEN 0 ELSE 1 END,
                    {step}, {context}, {versions}
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING {COLUMNS}),
         {events},
         booking AS ({booking} RETURNING 1){steps}
         SELECT s.*,
                (SELECT count(*) FROM (SELECT pg_notify($9, '') WHERE $10::bool) n) AS notified,
                (SELECT count(*) FROM ({wake_deliveries}) w) AS woke_deliveries
         FROM s",
        // Only the events the saga starts with: the first, or all of them past the steps ahead.
        events = events::append_ctes("$1", "1", "s WHERE e.ord <= s.event_version", 12),
        booking = bookings::insert_requested_sql("$1", 19, "s", &past("$28::text", "'requested'")),
        wake_deliveries = webhooks::WAKE_IF_DELIVERIES.replace("$WAKE", "$11"),
    )
}

/// Starts a saga in **one statement**: the saga (due now, or already leased to the caller's
/// engine), its first event (version 1, fanned out to webhook deliveries), the booking row the
/// event creates, and, unless `wake_workers` is false, the NOTIFY that wakes a worker. With
/// steps ahead, the same statement places their hold and, if it could, records them: their
/// events, step rows and the state past them. A reused idempotency key writes nothing and
/// reports the earlier saga.
pub async fn start(
    conn: &mut PgConnection,
    saga: &NewSaga<'_>,
    wake_workers: bool,
) -> Result<InsertOutcome, sqlx::Error> {
    static PLAIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| start_sql(false));
    static AHEAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| start_sql(true));
    let first = saga
        .events
        .first()
        .ok_or_else(|| sqlx::Error::Protocol("a saga starts with an event".into()))?;
    let batch = events::Batch::new(saga.id, saga.events);
    let sql = if saga.ahead.is_some() { &AHEAD } else { &PLAIN };
    let q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(saga.id)
        .bind(saga.saga_name)
        .bind(saga.saga_version)
        .bind(saga.input)
        .bind(saga.idempotency_key)
        .bind(saga.request_fingerprint)
        .bind(saga.leased_to.map(|(w, _)| w))
        .bind(saga.leased_to.map(|(_, d)| d.as_millis() as f64))
        .bind(WORK_CHANNEL)
        .bind(wake_workers)
        .bind(webhooks::WEBHOOK_CHANNEL);
    let q = bookings::bind_requested(batch.bind(q, saga.saga_name), &first.event);
    let q = match &saga.ahead {
        Some(a) => bind_steps(
            a.hold.bind(
                q.bind(a.current_step)
                    .bind(a.context)
                    .bind(saga.events.len() as i32)
                    .bind(a.booking_status),
            ),
            a.steps,
        ),
        None => q,
    };
    if let Some(row) = q.fetch_optional(&mut *conn).await? {
        return Ok(InsertOutcome::Created(Box::new(SagaRow::from_row(&row)?)));
    }
    let (id, fingerprint): (Uuid, Option<String>) =
        sqlx::query_as("SELECT id, request_fingerprint FROM sagas WHERE idempotency_key = $1")
            .bind(saga.idempotency_key)
            .fetch_one(&mut *conn)
            .await?;
    Ok(InsertOutcome::Existing {
        id,
        fingerprint: fingerprint.unwrap_or_default(),
    })
}

/// The upsert of step history rows (at most one per step and phase) of saga `$1`, written only
/// when `gate` (a FROM item) yields a row; the six arrays are `$first` onwards ([`bind_steps`]).
fn steps_cte(gate: &str, first: usize) -> String {
    let [index, phase, name, status, attempts, error] = super::placeholders(first);
    format!(
        "step AS (
             INSERT INTO saga_steps (saga_id, step_index, phase, step_name, status, attempts, last_error, finished_at)
             SELECT $1, x.i, x.phase, x.name, x.status, x.attempts, x.error,
                    CASE WHEN x.status IN ('succeeded', 'failed', 'skipped') THEN now() END
             FROM {gate}, unnest({index}::int[], {phase}::text[], {name}::text[], {status}::text[],
                                 {attempts}::int[], {error}::text[])
                     AS x(i, phase, name, status, attempts, error)
             ON CONFLICT (saga_id, step_index, phase) DO UPDATE
             SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
                 last_error = COALESCE(EXCLUDED.last_error, saga_steps.last_error),
                 finished_at = EXCLUDED.finished_at
             RETURNING 1)"
    )
}

/// Binds the six parameters of [`steps_cte`], in order.
fn bind_steps<'q>(q: super::Query<'q>, steps: &[StepOutcome]) -> super::Query<'q> {
    q.bind(steps.iter().map(|s| s.index).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.phase).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.status).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.attempts).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.error.as_deref()).collect::<Vec<_>>())
}

/// Reserves the next `n` event versions of a saga (row-locked until the transaction ends), returning
/// the first one.
pub async fn reserve_event_versions(
    conn: &mut PgConnection,
    id: Uuid,
    n: i32,
) -> Result<i32, sqlx::Error> {
    let last: i32 = sqlx::query_scalar(
        "UPDATE sagas SET event_version = event_version + $2, updated_at = now() WHERE id = $1
         RETURNING event_version",
    )
    .bind(id)
    .bind(n)
    .fetch_one(conn)
    .await?;
    Ok(last - n + 1)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<SagaRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sagas WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Claims up to `limit` due sagas for `worker` with a lease, in one statement that commits at once.
/// Each claim counts as an attempt of the saga's current step.
pub async fn claim_due(
    pool: &PgPool,
    worker: &str,
    lease: Duration,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
        "UPDATE sagas s SET locked_by = $1, locked_until = now() + $2 * interval '1 millisecond',
                            attempt = s.attempt + 1, updated_at = now()
         FROM (SELECT id FROM sagas
               WHERE status IN ('running', 'compensating') AND locked_until IS NULL AND next_run_at <= now()
               ORDER BY next_run_at
               LIMIT $3
               FOR UPDATE SKIP LOCKED) due
         WHERE s.id = due.id
         RETURNING {}",
        COLUMNS
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    });
    sqlx::query_as(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(worker)
        .bind(lease.as_millis() as f64)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Everything a step outcome writes (or the outcomes of a step and of the local steps it chained,
/// committed together): the fenced transition, its events (and their webhook deliveries), the
/// bookings projection, the step history and the wake-ups.
pub struct Record<'a> {
    pub fence: &'a Fence,
    pub transition: &'a Transition,
    pub saga_name: &'a str,
    pub events: &'a [NewEvent],
    pub booking: &'a bookings::Change,
    /// Step history rows, at most one per step and phase.
    pub steps: &'a [StepOutcome],
    /// A confirm step planned ahead is among the outcomes: turn the saga's hold into a booking
    /// in the same statement, which fails with [`sqlstate::HOLD_LOST`](super::sqlstate::HOLD_LOST)
    /// and writes nothing when the hold is lost.
    pub convert_hold: bool,
}

/// The NOTIFY (channel, payload) a saga moving to `status` and letting its lease go sends at
/// commit: workers for due work, waiters for a terminal state.
fn notification(id: Uuid, status: SagaStatus) -> Option<(&'static str, String)> {
    match status {
        SagaStatus::Running | SagaStatus::Compensating => Some((WORK_CHANNEL, String::new())),
        s if s.is_terminal() => Some((DONE_CHANNEL, id.to_string())),
        _ => None,
    }
}

/// What [`record`] did.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    /// The first event version the transition reserved.
    pub first_version: i32,
    /// A guest cancellation was requested meanwhile.
    pub cancel_requested: bool,
    /// The saga would have been parked or completed with a cancellation pending: it was queued
    /// again (status `running`) instead.
    pub requeued: bool,
}

// `converting`: the statement also turns the saga's hold into a booking, and fails with
// `sqlstate::HOLD_LOST` (writing nothing) when there is no live hold to turn.
pub(super) fn record_sql(converting: bool) -> String {
    let (converted, require) = if converting {
        (
                format!(
                    ", converted AS ({})",
                    inventory::convert_to_booking_sql("$1", " AND EXISTS (SELECT 1 FROM t)")
                ),
                format!(
                    ",\n sagad_require(EXISTS (SELECT 1 FROM converted), '{}',
                                    'hold_lost: the hold expired or was released before the booking was confirmed') AS hold_converted",
                    super::sqlstate::HOLD_LOST
                ),
            )
    } else {
        (String::new(), String::new())
    };
    format!(
            "WITH t AS (
                 UPDATE sagas SET status = CASE WHEN {{requeue}} THEN 'running' ELSE $6 END,
                        current_step = $7, attempt = $8, context = $9,
                        next_run_at = CASE WHEN {{requeue}} THEN now() WHEN $11::float8 IS NOT NULL THEN next_run_at ELSE $10 END,
                        locked_by = CASE WHEN {{requeue}} OR $11::float8 IS NULL THEN NULL ELSE locked_by END,
                        locked_until = CASE WHEN {{requeue}} OR $11::float8 IS NULL THEN NULL
                                            WHEN locked_until >= now() + $41::float8 * interval '1 millisecond' THEN locked_until
                                            ELSE now() + $11::float8 * interval '1 millisecond' END,
                        wait_key = CASE WHEN NOT {{requeue}} THEN $12 END,
                        wait_deadline = CASE WHEN NOT {{requeue}} THEN $13 END,
                        failure_step = COALESCE($14, failure_step), failure_reason = COALESCE($15, failure_reason),
                        finished_at = CASE WHEN NOT {{requeue}} AND $6 IN ('completed', 'compensated', 'stuck') THEN now() END,
                        event_version = event_version + $16, updated_at = now()
                 WHERE id = $1 AND (status, current_step, attempt, locked_by) IS NOT DISTINCT FROM ($2, $3, $4, $5)
                 RETURNING event_version - $16 + 1 AS first_version, cancel_requested, {{requeue}} AS requeued),
             {events},
             booking AS ({booking} AND $30::bool AND EXISTS (SELECT 1 FROM t) RETURNING 1),
             {steps}{converted}
             SELECT t.first_version, t.cancel_requested,
                    t.requeued,
                    (SELECT count(*) FROM (
                         SELECT pg_notify(CASE WHEN t.requeued THEN $40 ELSE $37::text END,
                                          CASE WHEN t.requeued THEN '' ELSE $38::text END)
                         WHERE t.requeued OR $37::text IS NOT NULL) n) AS notified,
                    (SELECT count(*) FROM ({wake_deliveries}) w) AS woke_deliveries{require}
             FROM t",
            events = events::append_ctes("$1", "t.first_version", "t", 17),
            booking = bookings::update_sql("$1", 24),
            steps = steps_cte("t", 31),
            wake_deliveries = webhooks::WAKE_IF_DELIVERIES.replace("$WAKE", "$39"),
        )
        // A guest cancelled while the step ran and the saga would now sit idle (parked or done):
        // it goes back to the queue, so the cancellation is carried out at once.
        .replace("{requeue}", "(cancel_requested AND $6 IN ('waiting', 'completed'))")
}
/// Records `r` in **one statement** if the worker still holds the saga as its fence says (one round
/// trip; atomic on its own, or part of the caller's transaction). `None` when the fence no longer
/// holds (the lease ran out and someone else claimed it): then nothing was written.
///
/// The fence is compared with `IS NOT DISTINCT FROM` (its values are never NULL) because no index
/// can serve that: the row is always found by its primary key. With `status = $2`, a generic plan
/// made while the table was small (a fresh database, sagad forces generic plans) could pick
/// `sagas_status_listing` and walk every saga in that status on each step.
pub async fn record(
    conn: &mut PgConnection,
    r: &Record<'_>,
) -> Result<Option<Recorded>, sqlx::Error> {
    static PLAIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| record_sql(false));
    static CONVERTING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| record_sql(true));
    let (f, t) = (r.fence, r.transition);
    let batch = events::Batch::new(f.id, r.events);
    let notify = match t.keep_lease {
        None => notification(f.id, t.status),
        Some(_) => None,
    };
    let sql = if r.convert_hold { &CONVERTING } else { &PLAIN };
    let q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(f.id)
        .bind(f.status.as_str())
        .bind(f.current_step)
        .bind(f.attempt)
        .bind(&f.worker)
        .bind(t.status.as_str())
        .bind(t.current_step)
        .bind(t.attempt)
        .bind(&t.context)
        .bind(t.next_run_at)
        .bind(t.keep_lease.map(|d| d.as_millis() as f64))
        .bind(&t.wait_key)
        .bind(t.wait_deadline)
        .bind(&t.failure_step)
        .bind(&t.failure_reason)
        .bind(t.events);
    let q = r.booking.bind(batch.bind(q, r.saga_name));
    let row = bind_steps(q.bind(!r.booking.is_empty()), r.steps)
        .bind(notify.as_ref().map(|(c, _)| *c))
        .bind(notify.as_ref().map(|(_, p)| p.as_str()))
        .bind(webhooks::WEBHOOK_CHANNEL)
        .bind(WORK_CHANNEL)
        .bind(t.lease_floor.map(|d| d.as_millis() as f64))
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| {
        Ok(Recorded {
            first_version: row.try_get(0)?,
            cancel_requested: row.try_get(1)?,
            requeued: row.try_get(2)?,
        })
    })
    .transpose()
}

/// Whether `worker` may run the saga's next remote step before the outcome of the one before it is
/// recorded: it still holds the lease, with at least `floor` of it left (by the database's clock),
/// and no guest cancellation is pending (which must be learnt before, say, money is captured).
/// A read by primary key: no transaction, nothing written. (The runner asks only when it cannot
/// tell by itself: its listener may have missed a cancellation.)
pub async fn may_go_on(
    pool: &PgPool,
    id: Uuid,
    worker: &str,
    floor: Duration,
) -> Result<bool, sqlx::Error> {
    let ok: Option<bool> = sqlx::query_scalar(
        "SELECT locked_by IS NOT DISTINCT FROM $2
                AND locked_until >= now() + $3::float8 * interval '1 millisecond'
                AND NOT cancel_requested
         FROM sagas WHERE id = $1",
    )
    .bind(id)
    .bind(worker)
    .bind(floor.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    Ok(ok == Some(true))
}

/// Gives a lease back without an outcome (shutdown): the saga is due again at once.
pub async fn release_lease(pool: &PgPool, id: Uuid, worker: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "WITH r AS (UPDATE sagas SET locked_by = NULL, locked_until = NULL, next_run_at = now(), updated_at = now()
                    WHERE id = $1 AND locked_by = $2 RETURNING id)
         SELECT pg_notify($3, '') FROM r",
    )
    .bind(id)
    .bind(worker)
    .bind(WORK_CHANNEL)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Re-queues sagas whose lease ran out (their worker died or hung).
pub async fn rescue_expired_leases(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH r AS (UPDATE sagas SET locked_by = NULL, locked_until = NULL, next_run_at = now(), updated_at = now()
                    WHERE locked_until < now() RETURNING id),
              n AS (SELECT pg_notify($1, '') FROM r LIMIT 1)
         SELECT id FROM r LEFT JOIN n ON true",
    )
    .bind(WORK_CHANNEL)
    .fetch_all(pool)
    .await
}

/// Wakes parked sagas whose deadline passed; the step re-runs and decides.
pub async fn wake_expired_waits(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH r AS (UPDATE sagas SET status = 'running', wait_key = NULL, attempt = 0, next_run_at = now(), updated_at = now()
                    WHERE status = 'waiting' AND wait_deadline <= now() RETURNING id),
              n AS (SELECT pg_notify($1, '') FROM r LIMIT 1)
         SELECT id FROM r LEFT JOIN n ON true",
    )
    .bind(WORK_CHANNEL)
    .fetch_all(pool)
    .await
}

/// Wakes the saga parked on `wait_key` (an outside event arrived). Returns its id if one was waiting.
pub async fn wake(conn: &mut PgConnection, wait_key: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH r AS (UPDATE sagas SET status = 'running', wait_key = NULL, attempt = 0, next_run_at = now(), updated_at = now()
                    WHERE status = 'waiting' AND wait_key = $1 RETURNING id),
              n AS (SELECT pg_notify($2, '') FROM r)
         SELECT id FROM r LEFT JOIN n ON true",
    )
    .bind(wait_key)
    .bind(WORK_CHANNEL)
    .fetch_optional(conn)
    .await
}

pub enum CancelOutcome {
    Requested(SagaStatus),
    NotFound,
    /// Already compensating, compensated or stuck.
    NotCancellable(SagaStatus),
}

/// Records a guest's cancellation. A worker turns it into compensation: at once if the saga is idle,
/// after the step in flight otherwise. A completed saga is re-opened to be compensated. The
/// commit also notifies `CANCEL_CHANNEL` with the saga id: a worker in the middle of a run of
/// remote steps learns of it before the next one (a capture, say).
pub async fn request_cancel(pool: &PgPool, id: Uuid) -> Result<CancelOutcome, sqlx::Error> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "WITH cur AS (SELECT id, status FROM sagas WHERE id = $1 FOR UPDATE),
              upd AS (UPDATE sagas s SET cancel_requested = true,
                             status = CASE WHEN s.status IN ('waiting', 'completed') THEN 'running' ELSE s.status END,
                             wait_key = NULL, wait_deadline = NULL, finished_at = NULL,
                             attempt = CASE WHEN s.status = 'running' THEN s.attempt ELSE 0 END,
                             next_run_at = CASE WHEN s.locked_by IS NULL THEN now() ELSE s.next_run_at END,
                             updated_at = now()
                      FROM cur WHERE s.id = cur.id AND cur.status IN ('running', 'waiting', 'completed')
                      RETURNING s.id),
              n AS (SELECT pg_notify($2, '') FROM upd),
              c AS (SELECT pg_notify($3, upd.id::text) FROM upd)
         SELECT cur.status, EXISTS (SELECT 1 FROM upd) FROM cur LEFT JOIN n ON true LEFT JOIN c ON true",
    )
    .bind(id)
    .bind(WORK_CHANNEL)
    .bind(CANCEL_CHANNEL)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => CancelOutcome::NotFound,
        Some((status, true)) => {
            CancelOutcome::Requested(SagaStatus::parse(&status).unwrap_or(SagaStatus::Running))
        }
        Some((status, false)) => {
            CancelOutcome::NotCancellable(SagaStatus::parse(&status).unwrap_or(SagaStatus::Stuck))
        }
    })
}

/// The earliest time a saga becomes due, to sleep exactly that long when idle.
pub async fn next_due_at(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(next_run_at) FROM sagas
         WHERE status IN ('running', 'compensating') AND locked_until IS NULL",
    )
    .fetch_one(pool)
    .await
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<SagaStatus>,
    pub saga_name: Option<String>,
    /// Keyset cursor: list sagas strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Newest first, keyset-paginated.
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<SagaRow>, sqlx::Error> {
    // Only the filters given are in the statement: each combination gets a plan that uses its
    // index (connections use generic plans, see `store::connect`).
    let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM sagas WHERE true"));
    if let Some(status) = f.status {
        q.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(name) = &f.saga_name {
        q.push(" AND saga_name = ").push_bind(name);
    }
    if let Some((at, id)) = f.before {
        q.push(" AND (created_at, id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(f.limit);
    q.build_query_as().fetch_all(pool).await
}

/// One step's record as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct StepRecord {
    pub step_index: i32,
    /// `forward` or `compensation`.
    pub phase: String,
    pub step_name: String,
    /// running, succeeded, failed, waiting or skipped.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn steps(conn: &mut PgConnection, saga_id: Uuid) -> Result<Vec<StepRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT step_index, phase, step_name, status, attempts, last_error, started_at, finished_at
         FROM saga_steps WHERE saga_id = $1
         ORDER BY CASE phase WHEN 'forward' THEN 0 ELSE 1 END,
                  CASE phase WHEN 'forward' THEN step_index ELSE -step_index END",
    )
    .bind(saga_id)
    .fetch_all(conn)
    .await
}
