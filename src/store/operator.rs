//! What operator actions read and write: the phase a parked saga was in, what it still holds, the
//! stuck sagas a bulk retry takes, and the guarded write of an action's plan.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use super::sagas::{COLUMNS, SagaRow};
use super::{DONE_CHANNEL, WORK_CHANNEL, bookings, events};
use crate::domain::SagaId;
use crate::engine::model::StepPhase;
use crate::engine::operator::{ClaimHeld, Holdings, OperatorPlan, money_held};
use crate::events::Event;

/// Which way the saga's current step was running: `Compensation` when a compensation of that
/// step was recorded (a saga undoing a step has one; a forward step's failure comes before any).
pub async fn phase_at(
    conn: &mut PgConnection,
    id: SagaId,
    step: i32,
) -> Result<StepPhase, sqlx::Error> {
    let compensating: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM saga_steps
                        WHERE saga_id = $1 AND step_index = $2 AND phase = 'compensation')",
    )
    .bind(id)
    .bind(step)
    .fetch_one(conn)
    .await?;
    Ok(if compensating {
        StepPhase::Compensation
    } else {
        StepPhase::Forward
    })
}

/// What the saga still holds: its active inventory claim, and the money its payment events leave
/// with it (captured and not refunded; authorized and neither captured nor voided).
pub async fn holdings(conn: &mut PgConnection, id: SagaId) -> Result<Holdings, sqlx::Error> {
    let claim: Option<ClaimHeld> = sqlx::query_as(
        "SELECT kind, listing_id, lower(stay) AS check_in, upper(stay) AS check_out, expires_at
         FROM inventory_claims WHERE saga_id = $1 AND status = 'active'",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let payments: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM events
         WHERE aggregate_id = $1
           AND event_type IN ('PaymentAuthorized', 'PaymentCaptured', 'PaymentVoided', 'PaymentRefunded')
         ORDER BY version",
    )
    .bind(id.0)
    .fetch_all(&mut *conn)
    .await?;
    let payments: Vec<Event> = payments
        .into_iter()
        .map(|(t, payload)| {
            serde_json::from_value(serde_json::json!({ "type": t, "payload": payload }))
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        })
        .collect::<Result<_, _>>()?;
    let (captured, authorization) = money_held(&payments);
    Ok(Holdings {
        claim,
        captured,
        authorization,
    })
}

/// Stuck sagas, oldest first: those stuck at step `step` (running it or undoing it) and parked
/// as stuck at or after `since`, each condition only when given; at most `limit`.
pub async fn stuck(
    pool: &PgPool,
    step: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(STUCK.as_str()))
        .bind(step)
        .bind(since)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The statement of [`stuck`].
pub(super) static STUCK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // The step's name is in the definition the saga runs on, as stored when first loaded.
    format!(
        "SELECT {} FROM sagas s
         JOIN saga_definitions d ON d.name = s.saga_name AND d.version = s.saga_version
         WHERE s.status = 'stuck'
           AND ($1::text IS NULL OR d.definition -> 'steps' -> s.current_step ->> 'name' = $1)
           AND ($2::timestamptz IS NULL OR s.finished_at >= $2)
         ORDER BY s.finished_at, s.id LIMIT $3",
        COLUMNS
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
});

/// Writes `plan` for the saga, if it is still where the plan was made from: the same status,
/// step and attempt, and no worker holding it. The state, the events (and their outgoing-webhook
/// deliveries) and the bookings projection commit together; workers are woken when the saga is
/// due, and `?wait=` callers when it finished. `false`: the saga moved meanwhile, nothing was
/// written.
pub async fn apply(
    conn: &mut PgConnection,
    row: &SagaRow,
    plan: &OperatorPlan,
) -> Result<bool, sqlx::Error> {
    let t = &plan.target;
    let n = plan.events.len() as i32;
    let mut tx = conn.begin().await?;
    let last: Option<i32> = sqlx::query_scalar(
        "UPDATE sagas SET status = $5, current_step = $6, attempt = $7,
                next_run_at = CASE WHEN $8 THEN now() END,
                wait_key = NULL, wait_deadline = NULL, retrying_since = NULL,
                failure_step = $9, failure_reason = $10,
                finished_at = CASE WHEN $5 IN ('completed', 'compensated', 'stuck') THEN now() END,
                event_version = event_version + $11, updated_at = now(),
                cancellation = COALESCE(cancellation, $12)
         WHERE id = $1 AND status = $2 AND current_step = $3 AND attempt = $4 AND locked_by IS NULL
         RETURNING event_version",
    )
    .bind(row.id)
    .bind(row.status)
    .bind(row.current_step)
    .bind(row.attempt)
    .bind(t.status)
    .bind(t.current_step)
    .bind(t.attempt)
    .bind(t.run_now)
    .bind(t.failure_step.as_deref())
    .bind(t.failure_reason.as_deref())
    .bind(n)
    .bind(t.cancellation.clone().map(sqlx::types::Json))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(last) = last else {
        return Ok(false);
    };
    events::append(
        &mut tx,
        &row.saga_name,
        row.id.0,
        last - n + 1,
        &plan.events,
    )
    .await?;
    let evs: Vec<&Event> = plan.events.iter().map(|e| &e.event).collect();
    bookings::apply(&mut tx, row.id, &evs).await?;
    let (channel, payload) = if t.run_now {
        (WORK_CHANNEL, String::new())
    } else if t.status.is_terminal() {
        (DONE_CHANNEL, row.id.to_string())
    } else {
        ("", String::new())
    };
    if !channel.is_empty() {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}
