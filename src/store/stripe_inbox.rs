//! The Stripe webhook inbox (`stripe_events`), and the look-ups its workers need.

use std::time::Duration;

use crate::domain::SagaId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::engine::model::SagaStatus;
use crate::text_enum::text_enum;

/// The channel that wakes inbox workers when an event is stored or re-queued.
pub const INBOX_CHANNEL: &str = "sagad_stripe_inbox";

text_enum! {
    /// Where an inbox row is in its life (`stripe_events.status`).
    pub enum InboxStatus {
        /// Due for processing (now or at `next_attempt_at`).
        Pending = "pending",
        /// Claimed by a worker, under a lease.
        Processing = "processing",
        /// Its effect on a saga is recorded.
        Processed = "processed",
        /// A type sagad does not act on, or unreadable.
        Ignored = "ignored",
        /// It concerns no saga sagad knows (the reason is kept).
        Unmatched = "unmatched",
        /// Its attempts ran out; an operator may reprocess it.
        Dead = "dead",
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StripeEventRow {
    pub id: String,
    pub event_type: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub stripe_created: Option<DateTime<Utc>>,
    pub payment_intent_id: Option<String>,
    pub payload: serde_json::Value,
    pub status: InboxStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub saga_id: Option<SagaId>,
    pub outcome: Option<String>,
    pub last_error: Option<String>,
    pub deliveries: i32,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

pub(super) const COLUMNS: &str = "id, event_type, livemode, api_version, stripe_created, payment_intent_id, payload, status, \
    attempts, next_attempt_at, locked_by, locked_until, saga_id, outcome, last_error, deliveries, received_at, processed_at";

pub struct NewStripeEvent<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub livemode: bool,
    pub api_version: Option<&'a str>,
    pub stripe_created: Option<DateTime<Utc>>,
    pub payment_intent_id: Option<&'a str>,
    pub payload: &'a serde_json::Value,
    /// `pending` for types sagad acts on, `ignored` (with `outcome`) for the others.
    pub status: InboxStatus,
    pub outcome: Option<&'a str>,
    /// The body exactly as Stripe sent it, when `payload` had to differ (NUL characters replaced).
    pub raw_body: Option<&'a [u8]>,
}

/// Stores a verified event; a duplicate id stores nothing new (it only counts the delivery).
/// Returns whether this delivery inserted the row. Pending rows wake the workers at commit.
pub async fn insert(pool: &PgPool, e: &NewStripeEvent<'_>) -> Result<bool, sqlx::Error> {
    // `xmax = 0` only for a freshly inserted row: tells a new event from a redelivery.
    let inserted: bool = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO stripe_events (id, event_type, livemode, api_version, stripe_created, payment_intent_id,
                                        payload, status, outcome, processed_at, raw_body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $8 = 'pending' THEN NULL ELSE now() END, $11)
             ON CONFLICT (id) DO UPDATE SET deliveries = stripe_events.deliveries + 1
             RETURNING (xmax = 0) AS inserted, status),
         n AS (SELECT pg_notify($10, '') FROM ins WHERE inserted AND status = 'pending')
         SELECT inserted FROM ins LEFT JOIN n ON true",
    )
    .bind(e.id)
    .bind(e.event_type)
    .bind(e.livemode)
    .bind(e.api_version)
    .bind(e.stripe_created)
    .bind(e.payment_intent_id)
    .bind(e.payload)
    .bind(e.status.as_str())
    .bind(e.outcome)
    .bind(INBOX_CHANNEL)
    .bind(e.raw_body)
    .fetch_one(pool)
    .await?;
    Ok(inserted)
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Option<StripeEventRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM stripe_events WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The body exactly as Stripe sent it, kept when the stored payload differs from it.
pub async fn raw_body(pool: &PgPool, id: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT raw_body FROM stripe_events WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map(Option::flatten)
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<InboxStatus>,
    pub event_type: Option<String>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<StripeEventRow>, sqlx::Error> {
    list_query("", f).build_query_as().fetch_all(pool).await
}

/// The statement of [`list`], after `prefix` (`EXPLAIN `).
pub(super) fn list_query(prefix: &str, f: &ListFilter) -> sqlx::QueryBuilder<sqlx::Postgres> {
    // Only the filters given are in the statement (generic plans, see `store::connect`).
    let mut q = sqlx::QueryBuilder::new(format!(
        "{prefix}SELECT {COLUMNS} FROM stripe_events WHERE true"
    ));
    if let Some(status) = f.status {
        q.push(" AND status = ").push_bind(status);
    }
    if let Some(t) = &f.event_type {
        q.push(" AND event_type = ").push_bind(t);
    }
    q.push(" ORDER BY received_at DESC, id DESC LIMIT ")
        .push_bind(f.limit);
    q
}

/// What a worker holds: its completion must still match it, so a stale worker cannot overwrite newer truth.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: String,
    pub worker: String,
    pub attempts: i32,
}

/// Finishes a claimed event (`processed`, `unmatched` or `ignored`). False when the claim was lost.
pub async fn mark_finished(
    conn: &mut PgConnection,
    claim: &Claim,
    status: InboxStatus,
    saga_id: Option<SagaId>,
    outcome: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE stripe_events SET status = $4, saga_id = COALESCE($5, saga_id), outcome = $6,
                locked_by = NULL, locked_until = NULL, processed_at = now()
         WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3",
    )
    .bind(&claim.id)
    .bind(&claim.worker)
    .bind(claim.attempts)
    .bind(status.as_str())
    .bind(saga_id)
    .bind(outcome)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Schedules another attempt at `at`, or parks the event as `dead` when `at` is `None`.
pub async fn reschedule(
    pool: &PgPool,
    claim: &Claim,
    at: Option<DateTime<Utc>>,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE stripe_events SET status = CASE WHEN $4::timestamptz IS NULL THEN 'dead' ELSE 'pending' END,
                next_attempt_at = COALESCE($4, next_attempt_at), last_error = $5,
                locked_by = NULL, locked_until = NULL
         WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3",
    )
    .bind(&claim.id)
    .bind(&claim.worker)
    .bind(claim.attempts)
    .bind(at)
    .bind(error)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Puts an event back to wait for the saga to catch up (our own commit is not visible yet). A
/// deferral is not a failed attempt: the attempt the claim counted is given back.
pub async fn defer(
    pool: &PgPool,
    claim: &Claim,
    at: DateTime<Utc>,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE stripe_events SET status = 'pending', next_attempt_at = $4, last_error = $5,
                attempts = attempts - 1, locked_by = NULL, locked_until = NULL
         WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3",
    )
    .bind(&claim.id)
    .bind(&claim.worker)
    .bind(claim.attempts)
    .bind(at)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The statement of [`prune_settled`] (`$1`: the retention, `$2`: the batch size).
pub const PRUNE_SETTLED: &str = "DELETE FROM stripe_events
         WHERE id = ANY (ARRAY(SELECT id FROM stripe_events
                               WHERE received_at < now() - $1 AND processed_at < now() - $1
                                 AND status IN ('processed', 'ignored', 'unmatched')
                               ORDER BY received_at
                               LIMIT $2
                               FOR UPDATE SKIP LOCKED))";

/// Deletes up to `limit` settled events (processed, ignored or unmatched; never pending,
/// processing or dead ones) settled more than `retention` ago, oldest first; returns how many.
/// The age bound on `received_at` (never later than `processed_at`) lets `stripe_events_listing`
/// serve the scan; the rows go by primary key (see `outbound::prune_delivered`).
pub async fn prune_settled(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(PRUNE_SETTLED)
        .bind(retention)
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected())
}

pub enum ReprocessOutcome {
    Queued,
    NotFound,
    /// Pending, processing or processed: nothing to do.
    NotReprocessable(String),
}

/// An operator re-queues an event that is `dead`, `unmatched` or `ignored`, with fresh attempts.
pub async fn reprocess(pool: &PgPool, id: &str) -> Result<ReprocessOutcome, sqlx::Error> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "WITH cur AS (SELECT id, status FROM stripe_events WHERE id = $1 FOR UPDATE),
              upd AS (UPDATE stripe_events s SET status = 'pending', attempts = 0, next_attempt_at = now(),
                             processed_at = NULL
                      FROM cur WHERE s.id = cur.id AND cur.status IN ('dead', 'unmatched', 'ignored')
                      RETURNING s.id),
              n AS (SELECT pg_notify($2, '') FROM upd)
         SELECT cur.status, EXISTS (SELECT 1 FROM upd) FROM cur LEFT JOIN n ON true",
    )
    .bind(id)
    .bind(INBOX_CHANNEL)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => ReprocessOutcome::NotFound,
        Some((_, true)) => ReprocessOutcome::Queued,
        Some((status, false)) => ReprocessOutcome::NotReprocessable(status),
    })
}

/// The saga our own records tie to a PaymentIntent: the bookings projection, else a step output
/// in a saga's context (`{"authorize_payment": {"payment_intent_id": …}}`).
pub async fn saga_for_payment_intent(
    conn: &mut PgConnection,
    payment_intent: &str,
) -> Result<Option<SagaId>, sqlx::Error> {
    let by_booking: Option<SagaId> =
        sqlx::query_scalar("SELECT saga_id FROM bookings WHERE payment_intent_id = $1")
            .bind(payment_intent)
            .fetch_optional(&mut *conn)
            .await?;
    if by_booking.is_some() {
        return Ok(by_booking);
    }
    sqlx::query_scalar(
        "SELECT id FROM sagas
         WHERE jsonb_path_exists(context, '$.*.payment_intent_id ? (@ == $pi)', jsonb_build_object('pi', $1::text))
         LIMIT 1",
    )
    .bind(payment_intent)
    .fetch_optional(conn)
    .await
}

/// What the inbox needs to know about a saga, read under a row lock held until the transaction ends.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SagaSnapshot {
    pub id: SagaId,
    pub saga_name: String,
    pub status: SagaStatus,
    pub current_step: i32,
    pub wait_key: Option<String>,
    /// Whether a worker holds a lease on it right now (a step in flight).
    pub leased: bool,
    pub context: serde_json::Value,
}

pub async fn lock_saga(
    conn: &mut PgConnection,
    id: SagaId,
) -> Result<Option<SagaSnapshot>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, saga_name, status, current_step, wait_key,
                (locked_until IS NOT NULL AND locked_until > now()) AS leased, context
         FROM sagas WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Whether a saga exists (for the `saga_id` metadata cross-check).
/// The status of a saga, if it exists.
pub async fn saga_status(
    conn: &mut PgConnection,
    id: SagaId,
) -> Result<Option<SagaStatus>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Total of the `PaymentRefunded` events recorded for a PaymentIntent on a saga (ours and Stripe's).
pub async fn refunded_recorded(
    conn: &mut PgConnection,
    saga_id: SagaId,
    payment_intent: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum((payload->>'amount')::bigint), 0)::bigint FROM events
         WHERE aggregate_id = $1 AND event_type = 'PaymentRefunded' AND payload->>'payment_intent_id' = $2",
    )
    .bind(saga_id)
    .bind(payment_intent)
    .fetch_one(conn)
    .await
}

/// Whether the saga already has an event of `event_type` whose payload field `field` is `value`.
pub async fn has_event(
    conn: &mut PgConnection,
    saga_id: SagaId,
    event_type: &str,
    field: &str,
    value: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events
                        WHERE aggregate_id = $1 AND event_type = $2 AND payload->>$3 = $4)",
    )
    .bind(saga_id)
    .bind(event_type)
    .bind(field)
    .bind(value)
    .fetch_one(conn)
    .await
}
