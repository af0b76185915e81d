//! The saga table: the durable state machine and its work queue.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;

use super::{CANCEL_CHANNEL, WORK_CHANNEL};
use crate::domain::SagaId;
use crate::engine::model::{SagaStatus, StepPhase, StepStatus};
use crate::policies::Cancellation;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SagaRow {
    pub id: SagaId,
    pub saga_name: String,
    pub saga_version: i32,
    pub status: SagaStatus,
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
    /// When the current step's run of retryable failures began.
    pub retrying_since: Option<DateTime<Utc>>,
    /// Why the saga waits while `running`/`compensating` (`dependency:stripe`).
    pub wait_reason: Option<String>,
    /// Since when it is paused on that dependency; `None` once woken.
    pub paused_since: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub event_version: i32,
    pub idempotency_key: Option<String>,
    pub request_fingerprint: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The cancellation requested, once one is (who, why, the refund's share).
    pub cancellation: Option<sqlx::types::Json<Cancellation>>,
}

pub(super) const COLUMNS: &str = "id, saga_name, saga_version, status, current_step, attempt, input, context, next_run_at, \
    locked_by, locked_until, wait_key, wait_deadline, failure_step, failure_reason, retrying_since, wait_reason, paused_since, cancel_requested, \
    event_version, idempotency_key, request_fingerprint, created_at, updated_at, finished_at, cancellation";

/// Reserves the next `n` event versions of a saga (row-locked until the transaction ends), returning
/// the first one.
pub async fn reserve_event_versions(
    conn: &mut PgConnection,
    id: SagaId,
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

pub async fn get(conn: &mut PgConnection, id: SagaId) -> Result<Option<SagaRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sagas WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Whether `worker` may run the saga's next remote step before the outcome of the one before it is
/// recorded: it still holds the lease, with at least `floor` of it left (by the database's clock),
/// and no guest cancellation is pending (which must be learnt before, say, money is captured).
/// A read by primary key: no transaction, nothing written. (The runner asks only when it cannot
/// tell by itself: its listener may have missed a cancellation.)
pub async fn may_go_on(
    pool: &PgPool,
    id: SagaId,
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
pub async fn release_lease(pool: &PgPool, id: SagaId, worker: &str) -> Result<bool, sqlx::Error> {
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

/// Wakes parked sagas whose deadline passed; the step re-runs and decides.
pub async fn wake_expired_waits(pool: &PgPool) -> Result<Vec<SagaId>, sqlx::Error> {
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
pub async fn wake(conn: &mut PgConnection, wait_key: &str) -> Result<Option<SagaId>, sqlx::Error> {
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

/// The cancellation requested of a saga, if any.
pub async fn cancellation(
    conn: &mut PgConnection,
    id: SagaId,
) -> Result<Option<sqlx::types::Json<Cancellation>>, sqlx::Error> {
    let c: Option<Option<sqlx::types::Json<Cancellation>>> =
        sqlx::query_scalar("SELECT cancellation FROM sagas WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(c.flatten())
}

pub enum CancelOutcome {
    Requested(SagaStatus),
    NotFound,
    /// Already compensating, compensated or stuck.
    NotCancellable(SagaStatus),
    /// A cancellation was requested before: it stands (the saga is then `running` while it
    /// compensates, or `compensated`).
    AlreadyRequested(SagaStatus),
    /// The saga is past what its compensations can undo (`decide` refused): nothing recorded.
    Irreversible(SagaStatus),
}

/// What a cancellation is decided from: the saga's input (the booking's check-in, price and
/// policy) and the database's current date (UTC).
pub struct CancelBasis<'a> {
    pub input: &'a serde_json::Value,
    pub today: chrono::NaiveDate,
    /// The saga's status and step when locked: `running`, `waiting` or `completed`.
    pub status: SagaStatus,
    pub current_step: i32,
}

/// Records a cancellation, decided by `decide` (who, why, the refund's share; or `None`, refused:
/// the saga is past undoing) from the saga as it is when locked. A worker turns it into
/// compensation: at once if the saga is idle, after the step in flight otherwise. A completed saga is re-opened to be compensated. The saga's row lock
/// makes concurrent requests one cancellation: the first records it, the others find it
/// recorded. The commit also notifies `CANCEL_CHANNEL` with the saga id: a worker in the middle
/// of a run of remote steps learns of it before the next one (a capture, say).
pub async fn request_cancel(
    pool: &PgPool,
    id: SagaId,
    decide: impl FnOnce(&CancelBasis<'_>) -> Option<Cancellation>,
) -> Result<CancelOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    type Locked = (SagaStatus, i32, bool, serde_json::Value, chrono::NaiveDate);
    let cur: Option<Locked> = sqlx::query_as(
        "SELECT status, current_step, cancel_requested, input, (now() AT TIME ZONE 'UTC')::date
         FROM sagas WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, current_step, requested, input, today)) = cur else {
        return Ok(CancelOutcome::NotFound);
    };
    if requested {
        return Ok(CancelOutcome::AlreadyRequested(status));
    }
    if !matches!(
        status,
        SagaStatus::Running | SagaStatus::Waiting | SagaStatus::Completed
    ) {
        return Ok(CancelOutcome::NotCancellable(status));
    }
    let Some(cancellation) = decide(&CancelBasis {
        input: &input,
        today,
        status,
        current_step,
    }) else {
        return Ok(CancelOutcome::Irreversible(status));
    };
    sqlx::query(
        "WITH upd AS (UPDATE sagas s SET cancel_requested = true, cancellation = $4,
                             status = CASE WHEN s.status IN ('waiting', 'completed') THEN 'running' ELSE s.status END,
                             wait_key = NULL, wait_deadline = NULL, finished_at = NULL,
                             attempt = CASE WHEN s.status = 'running' THEN s.attempt ELSE 0 END,
                             next_run_at = CASE WHEN s.locked_by IS NULL THEN now() ELSE s.next_run_at END,
                             updated_at = now()
                      WHERE s.id = $1
                      RETURNING s.id),
              n AS (SELECT pg_notify($2, '') FROM upd),
              c AS (SELECT pg_notify($3, upd.id::text) FROM upd)
         SELECT 1 FROM upd LEFT JOIN n ON true LEFT JOIN c ON true",
    )
    .bind(id)
    .bind(WORK_CHANNEL)
    .bind(CANCEL_CHANNEL)
    .bind(sqlx::types::Json(&cancellation))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(CancelOutcome::Requested(status))
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<SagaStatus>,
    pub saga_name: Option<String>,
    /// Keyset cursor: list sagas strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, SagaId)>,
    pub limit: i64,
}

/// Newest first, keyset-paginated.
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<SagaRow>, sqlx::Error> {
    // Only the filters given are in the statement: each combination gets a plan that uses its
    // index (connections use generic plans, see `store::connect`).
    let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM sagas WHERE true"));
    match f.status {
        // Waiting for an outside event, or paused on a dependency.
        Some(SagaStatus::Waiting) => {
            q.push(" AND (status = 'waiting' OR paused_since IS NOT NULL)");
        }
        Some(status) => {
            q.push(" AND status = ").push_bind(status);
        }
        None => {}
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
    pub phase: StepPhase,
    pub step_name: String,
    pub status: StepStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn steps(
    conn: &mut PgConnection,
    saga_id: SagaId,
) -> Result<Vec<StepRecord>, sqlx::Error> {
    sqlx::query_as(STEPS).bind(saga_id).fetch_all(conn).await
}

/// The statement of [`steps`].
pub(super) const STEPS: &str =
    "SELECT step_index, phase, step_name, status, attempts, last_error, started_at, finished_at
         FROM saga_steps WHERE saga_id = $1
         ORDER BY CASE phase WHEN 'forward' THEN 0 ELSE 1 END,
                  CASE phase WHEN 'forward' THEN step_index ELSE -step_index END";

/// A saga's status; `None` when there is no such saga.
pub async fn status(pool: &PgPool, id: SagaId) -> Result<Option<SagaStatus>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The work queue at a glance: how many sagas are due and unclaimed, and how long the oldest of
/// them has been due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueDepth {
    pub due: i64,
    pub oldest_due: Option<Duration>,
}

pub async fn queue_depth(pool: &PgPool) -> Result<QueueDepth, sqlx::Error> {
    let (due, oldest): (i64, Option<f64>) = sqlx::query_as(QUEUE_DEPTH).fetch_one(pool).await?;
    Ok(QueueDepth {
        due,
        oldest_due: oldest.and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()),
    })
}

/// The statement of [`queue_depth`].
pub(super) const QUEUE_DEPTH: &str =
    "SELECT count(*), extract(epoch FROM now() - min(next_run_at))::float8
         FROM sagas WHERE status IN ('running', 'compensating') AND locked_until IS NULL AND next_run_at <= now()";

/// How many sagas there are of each (saga name, status).
pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(String, SagaStatus, i64)>, sqlx::Error> {
    sqlx::query_as(COUNT_BY_STATUS).fetch_all(pool).await
}

/// The statement of [`count_by_status`].
pub(super) const COUNT_BY_STATUS: &str =
    "SELECT saga_name, status, count(*) FROM sagas GROUP BY 1, 2";
