//! Outgoing webhooks: endpoints, secrets, the delivery outbox and the attempt log.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::stmt::{Binds, Param, Statement, Text};
use crate::domain::{DeliveryId, EndpointId};
use crate::events::SCHEMA_VERSION;
use crate::outbound::catalog;
use crate::text_enum::text_enum;

text_enum! {
    /// Where a delivery is in its life (`webhook_deliveries.status`).
    #[derive(ToSchema)]
    pub enum DeliveryStatus {
        /// Due for an attempt (now or at `next_attempt_at`).
        Pending = "pending",
        /// An attempt is in flight, under a lease and one of the endpoint's slots.
        Delivering = "delivering",
        /// The endpoint answered 2xx.
        Delivered = "delivered",
        /// Dead-lettered: its schedule ran out, or the endpoint is gone.
        Dead = "dead",
    }
}

/// The channel that wakes idle delivery workers.
pub const WEBHOOK_CHANNEL: &str = "sagad_webhooks";

/// The outbox insert as a CTE named `deliveries`, over a CTE `pub_events(id, type)` that gives each
/// event's published type (NULL: not published): a statement part with no values of its own.
/// The one place subscription patterns are matched: `*`, `prefix.*` or an exact name (what
/// `catalog::validate_pattern` admits). With no enabled endpoint it is an empty index scan.
pub(crate) const FAN_OUT_CTE: &str = "deliveries AS (
             INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type)
             SELECT gen_random_uuid(), ep.id, ev.id, ev.type
             FROM pub_events AS ev
             JOIN webhook_endpoints ep ON ev.type IS NOT NULL AND ep.enabled AND EXISTS (
                 SELECT 1 FROM unnest(ep.event_types) AS p
                 WHERE p = ev.type OR (right(p, 1) = '*' AND starts_with(ev.type, left(p, -1))))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING
             RETURNING 1)";

/// Wakes the delivery workers (at commit) when the fan-out ([`FAN_OUT_CTE`]) inserted anything:
/// a statement part.
pub(crate) struct WakeDeliveries {
    channel: Param,
}

impl WakeDeliveries {
    pub(crate) fn new(b: &mut Binds) -> Self {
        Self {
            channel: b.push(WEBHOOK_CHANNEL),
        }
    }
}

impl fmt::Display for WakeDeliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SELECT pg_notify({}, '') FROM (SELECT 1 FROM deliveries LIMIT 1) AS any_inserted",
            self.channel
        )
    }
}

/// The published type of each internal event type (`None`: not published).
pub fn published_types(internal_types: &[String]) -> Vec<Option<&'static str>> {
    internal_types
        .iter()
        .map(|t| catalog::public_type(t))
        .collect()
}

/// The statement of [`fan_out`].
pub(super) fn fan_out_statement(event_ids: &[Uuid], internal_types: &[String]) -> Statement {
    static TEXT: Text = Text::new();
    let mut b = Binds::new();
    let ids = b.push(event_ids);
    let types = b.push(published_types(internal_types));
    let wake = WakeDeliveries::new(&mut b);
    TEXT.with(b, || {
        format!(
            "WITH pub_events AS (SELECT * FROM unnest({ids}::uuid[], {types}::text[]) AS e(id, type)), {FAN_OUT_CTE} {wake}"
        )
    })
}

/// Inserts one delivery per published event and matching enabled endpoint, in the caller's
/// transaction (the outbox), for events already appended. (`events::append` does the same in the
/// statement that appends.) Wakes the workers on commit.
pub async fn fan_out(
    conn: &mut PgConnection,
    event_ids: &[Uuid],
    internal_types: &[String],
) -> Result<(), sqlx::Error> {
    fan_out_statement(event_ids, internal_types)
        .query()?
        .fetch_optional(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Endpoints

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct EndpointRow {
    pub id: EndpointId,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Most delivery attempts per second (per sagad process).
    pub rate_limit: Option<i32>,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, enabled, rate_limit, disabled_reason, disabled_at, failing_since, created_at, updated_at";

pub struct NewEndpoint {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub rate_limit: Option<i32>,
}

pub async fn insert_endpoint(
    conn: &mut PgConnection,
    e: &NewEndpoint,
    secret: &str,
) -> Result<EndpointRow, sqlx::Error> {
    let row: EndpointRow = sqlx::query_as(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, enabled, rate_limit)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, url, description, event_types, enabled, rate_limit, disabled_reason,
                   disabled_at, failing_since, created_at, updated_at",
    )
    .bind(EndpointId::new())
    .bind(&e.url)
    .bind(&e.description)
    .bind(&e.event_types)
    .bind(e.enabled)
    .bind(e.rate_limit)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO webhook_secrets (endpoint_id, secret) VALUES ($1, $2)")
        .bind(row.id)
        .bind(secret)
        .execute(&mut *conn)
        .await?;
    Ok(row)
}

pub async fn get_endpoint(
    db: impl PgExecutor<'_>,
    id: EndpointId,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn list_endpoints(db: impl PgExecutor<'_>) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    )))
    .fetch_all(db)
    .await
}

/// A partial update; `None` leaves a field alone. `rate_limit: Some(None)` clears the limit.
#[derive(Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<Option<i32>>,
}

/// Applies a patch. Re-enabling clears the disable reason and the failure streak.
pub async fn update_endpoint(
    db: impl PgExecutor<'_>,
    id: EndpointId,
    p: &EndpointPatch,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE webhook_endpoints SET
             url = COALESCE($2, url),
             description = COALESCE($3, description),
             event_types = COALESCE($4, event_types),
             enabled = COALESCE($5, enabled),
             rate_limit = CASE WHEN $6 THEN $7 ELSE rate_limit END,
             disabled_reason = CASE WHEN $5 THEN NULL WHEN $5 = false AND enabled THEN 'disabled by operator' ELSE disabled_reason END,
             disabled_at = CASE WHEN $5 THEN NULL WHEN $5 = false AND enabled THEN now() ELSE disabled_at END,
             failing_since = CASE WHEN $5 AND NOT enabled THEN NULL ELSE failing_since END,
             updated_at = now()
         WHERE id = $1
         RETURNING id, url, description, event_types, enabled, rate_limit, disabled_reason,
                   disabled_at, failing_since, created_at, updated_at",
    )
    .bind(id)
    .bind(&p.url)
    .bind(&p.description)
    .bind(&p.event_types)
    .bind(p.enabled)
    .bind(p.rate_limit.is_some())
    .bind(p.rate_limit.flatten())
    .fetch_optional(db)
    .await
}

/// Deletes an endpoint with its secrets, deliveries and attempt log.
pub async fn delete_endpoint(db: impl PgExecutor<'_>, id: EndpointId) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?
        .rows_affected()
        == 1)
}

/// Makes `secret` current; the previous current secret keeps signing for `overlap`. Returns when
/// the previous one expires, or `None` if the endpoint does not exist.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    id: EndpointId,
    secret: &str,
    overlap: Duration,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let exists: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM webhook_endpoints WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Ok(None);
    }
    sqlx::query("DELETE FROM webhook_secrets WHERE endpoint_id = $1 AND expires_at <= now()")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let expires: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE webhook_secrets SET expires_at = now() + $2
         WHERE endpoint_id = $1 AND expires_at IS NULL RETURNING expires_at",
    )
    .bind(id)
    .bind(overlap)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO webhook_secrets (endpoint_id, secret) VALUES ($1, $2)")
        .bind(id)
        .bind(secret)
        .execute(&mut *conn)
        .await?;
    Ok(Some(expires))
}

/// Disables an enabled endpoint and appends an `EndpointDisabled` event to its own aggregate
/// (fanned out like any other event), all in `conn`'s transaction. False if it was not enabled.
pub async fn disable_endpoint(
    conn: &mut PgConnection,
    id: EndpointId,
    reason: &str,
    detail: &str,
) -> Result<bool, sqlx::Error> {
    let event_id = Uuid::now_v7();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "WITH e AS (
             UPDATE webhook_endpoints
             SET enabled = false, disabled_reason = $2, disabled_at = now(),
                 event_version = event_version + 1, updated_at = now()
             WHERE id = $1 AND enabled
             RETURNING id, url, event_version, failing_since)
         INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                             schema_version, payload, metadata)
         SELECT $3, $4, e.id, e.event_version, $5, $6,
                jsonb_build_object('endpoint_id', e.id, 'url', e.url, 'reason', $2,
                                   'detail', $7, 'failing_since', e.failing_since),
                jsonb_build_object('correlation_id', e.id)
         FROM e
         RETURNING event_id",
    )
    .bind(id)
    .bind(reason)
    .bind(event_id)
    .bind(catalog::ENDPOINT_AGGREGATE)
    .bind(catalog::ENDPOINT_DISABLED_INTERNAL)
    .bind(SCHEMA_VERSION)
    .bind(detail)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(event_id) = inserted else {
        return Ok(false);
    };
    fan_out(
        conn,
        &[event_id],
        &[catalog::ENDPOINT_DISABLED_INTERNAL.to_owned()],
    )
    .await?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Deliveries

/// A delivery claimed by a worker, with what it needs to build the request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedDelivery {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub event_id: Uuid,
    pub event_type: String,
    /// Attempt number this claim makes (1-based, over the delivery's life).
    pub attempts: i32,
    /// Attempts already made in the current schedule.
    pub schedule_pos: i32,
    pub url: String,
    pub rate_limit: Option<i32>,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub version: i32,
    /// The version of the aggregate's previous published event (of any published type), if any.
    pub previous_version: Option<i32>,
    /// The event's stored type name and the schema version its payload was stored at.
    pub stored_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    /// The secrets that sign the attempt: the current one first, then any still in overlap.
    pub secrets: Vec<String>,
}

/// Claims up to `limit` due deliveries of enabled endpoints, at most `per_endpoint` in flight per
/// endpoint (counting other workers' leases), with SKIP LOCKED and a lease; each with what its
/// attempt needs (URL, event, signing secrets), so an attempt makes no other query.
///
/// Each leased delivery takes a free slot `1..=per_endpoint` of its endpoint, unique among leased
/// deliveries (`webhook_deliveries_slot`): when another process claimed for the same endpoint from
/// a snapshot that did not see this one's leases, one of the two claims fails with a unique
/// violation ([`super::sqlstate::UNIQUE_VIOLATION`]), claiming nothing, rather than both leasing
/// up to the cap. The caller then claims again.
pub async fn claim_due(
    db: impl PgExecutor<'_>,
    worker: &str,
    lease: Duration,
    limit: i64,
    per_endpoint: i64,
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    sqlx::query_as(
        "WITH busy AS (
             SELECT endpoint_id, slot FROM webhook_deliveries WHERE status = 'delivering'),
         candidates AS (
             SELECT d.id, d.endpoint_id,
                    row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS n
             FROM (
                 SELECT d.id, d.endpoint_id, d.next_attempt_at FROM webhook_endpoints e
                 CROSS JOIN LATERAL (
                     SELECT d.id, d.endpoint_id, d.next_attempt_at FROM webhook_deliveries d
                     WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                     ORDER BY d.next_attempt_at
                     LIMIT greatest($4 - (SELECT count(*) FROM busy b WHERE b.endpoint_id = e.id), 0)
                     FOR UPDATE SKIP LOCKED) d
                 WHERE e.enabled
                 LIMIT $3) d),
         free AS (
             SELECT c.endpoint_id, s.slot,
                    row_number() OVER (PARTITION BY c.endpoint_id ORDER BY s.slot) AS n
             FROM (SELECT DISTINCT endpoint_id FROM candidates) c
             CROSS JOIN LATERAL generate_series(1, $4::int) AS s (slot)
             WHERE NOT EXISTS (SELECT 1 FROM busy b
                               WHERE b.endpoint_id = c.endpoint_id AND b.slot = s.slot)),
         chosen AS (
             SELECT c.id, f.slot FROM candidates c
             JOIN free f ON f.endpoint_id = c.endpoint_id AND f.n = c.n)
         UPDATE webhook_deliveries d
         SET status = 'delivering', slot = chosen.slot, attempts = d.attempts + 1, locked_by = $1,
             locked_until = now() + $2, updated_at = now()
         FROM chosen, webhook_endpoints e, events ev
         WHERE d.id = chosen.id AND e.id = d.endpoint_id AND ev.event_id = d.event_id
         RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.attempts, d.schedule_pos,
                   e.url, e.rate_limit, ev.aggregate_type, ev.aggregate_id, ev.version,
                   (SELECT max(p.version) FROM events p
                    WHERE p.aggregate_id = ev.aggregate_id AND p.version < ev.version
                      AND p.event_type = ANY($5::text[])) AS previous_version,
                   ev.event_type AS stored_type, ev.schema_version, ev.payload, ev.recorded_at,
                   ARRAY(SELECT s.secret FROM webhook_secrets s
                         WHERE s.endpoint_id = e.id AND (s.expires_at IS NULL OR s.expires_at > now())
                         ORDER BY s.expires_at IS NOT NULL, s.created_at DESC) AS secrets",
    )
    .bind(worker)
    .bind(lease)
    .bind(limit)
    .bind(per_endpoint)
    .bind(catalog::published_internal_types())
    .fetch_all(db)
    .await
}

/// Admits one attempt of claimed delivery `id` (attempt `attempt`) under its endpoint's
/// `per_second` limit, counted in the database over every process (`webhook_rate_windows`, one
/// row per endpoint and second). When this second is full, hands the delivery back without
/// counting the attempt, due at the start of the next second, and returns `false`.
pub async fn admit_or_defer(
    db: impl PgExecutor<'_>,
    id: DeliveryId,
    attempt: i32,
    endpoint_id: EndpointId,
    per_second: i32,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH admitted AS (
             INSERT INTO webhook_rate_windows AS w (endpoint_id, window_start, admitted)
             VALUES ($3, date_trunc('second', now()), 1)
             ON CONFLICT (endpoint_id, window_start) DO UPDATE SET admitted = w.admitted + 1
             WHERE w.admitted < $4
             RETURNING 1),
         deferred AS (
             UPDATE webhook_deliveries
             SET status = 'pending', attempts = attempts - 1,
                 next_attempt_at = date_trunc('second', now()) + interval '1 second',
                 locked_by = NULL, locked_until = NULL, updated_at = now()
             WHERE id = $1 AND status = 'delivering' AND attempts = $2
               AND NOT EXISTS (SELECT 1 FROM admitted)
             RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM admitted)",
    )
    .bind(id)
    .bind(attempt)
    .bind(endpoint_id)
    .bind(per_second)
    .fetch_one(db)
    .await
}

/// Deletes the rate-limit counts of seconds more than a minute ago.
pub async fn prune_rate_windows(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM webhook_rate_windows WHERE window_start < now() - interval '1 minute'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// One attempt, as recorded.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct AttemptRow {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    /// The first 4 KiB of the response body.
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// What an attempt leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    Delivered,
    /// Back to pending, due after the delay by the database's clock.
    Retry(std::time::Duration),
    /// Dead-lettered: the schedule is exhausted, or the endpoint is gone.
    Dead,
}

/// Records an attempt and settles the delivery, fenced by the claim (`attempts = attempt`, still
/// `delivering`). Returns false, changing nothing, when the lease was lost. Also maintains the
/// endpoint's failure streak; returns the streak's start after a failure.
pub async fn settle(
    conn: &mut PgConnection,
    id: DeliveryId,
    endpoint_id: EndpointId,
    a: &AttemptRow,
    outcome: &Settle,
) -> Result<(bool, Option<DateTime<Utc>>), sqlx::Error> {
    let (status, next_at) = match outcome {
        Settle::Delivered => (DeliveryStatus::Delivered, None),
        Settle::Retry(delay) => (DeliveryStatus::Pending, Some(delay.as_millis() as f64)),
        Settle::Dead => (DeliveryStatus::Dead, None),
    };
    let updated = sqlx::query(
        "UPDATE webhook_deliveries
         SET status = $3, schedule_pos = schedule_pos + 1,
             next_attempt_at = COALESCE(now() + $4::float8 * interval '1 millisecond', next_attempt_at),
             locked_by = NULL, locked_until = NULL,
             last_status = $5, last_error = $6, updated_at = now(),
             delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END,
             dead_at = CASE WHEN $3 = 'dead' THEN now() ELSE NULL END
         WHERE id = $1 AND status = 'delivering' AND attempts = $2",
    )
    .bind(id)
    .bind(a.attempt)
    .bind(status)
    .bind(next_at)
    .bind(a.status_code)
    .bind(&a.error)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok((false, None));
    }
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms,
                                       response_body, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(a.attempt)
    .bind(a.attempted_at)
    .bind(a.status_code)
    .bind(a.latency_ms)
    .bind(&a.response_body)
    .bind(&a.error)
    .execute(&mut *conn)
    .await?;
    let streak = if *outcome == Settle::Delivered {
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL
             WHERE id = $1 AND failing_since IS NOT NULL",
        )
        .bind(endpoint_id)
        .execute(&mut *conn)
        .await?;
        None
    } else {
        sqlx::query_scalar(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, now())
             WHERE id = $1 RETURNING failing_since",
        )
        .bind(endpoint_id)
        .fetch_optional(&mut *conn)
        .await?
        .flatten()
    };
    Ok((true, streak))
}

/// The statement of [`prune_delivered`] (`$1`: the retention, `$2`: the batch size).
pub const PRUNE_DELIVERED: &str = "WITH old AS (
             SELECT ARRAY(SELECT id FROM webhook_deliveries
                          WHERE status = 'delivered' AND delivered_at < now() - $1
                          ORDER BY delivered_at
                          LIMIT $2
                          FOR UPDATE SKIP LOCKED) AS ids),
         attempts AS (DELETE FROM webhook_attempts WHERE delivery_id = ANY ((SELECT ids FROM old)::uuid[])
                      RETURNING 1),
         deliveries AS (DELETE FROM webhook_deliveries WHERE id = ANY ((SELECT ids FROM old)::uuid[])
                        RETURNING 1)
         SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM attempts)";

/// Deletes up to `limit` deliveries delivered more than `retention` ago, oldest first, with their
/// attempts (`webhook_deliveries_delivered` serves the scan). Pending, in-flight and dead
/// deliveries stay, and so do their events. Returns how many deliveries and attempts went.
///
/// The rows go by primary key (`= ANY` of the ids picked): a join with the picked rows could be
/// planned as a scan of the whole table, the generic plan not knowing how small `limit` is.
pub async fn prune_delivered(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<(u64, u64), sqlx::Error> {
    let (deliveries, attempts): (i64, i64) = sqlx::query_as(PRUNE_DELIVERED)
        .bind(retention)
        .bind(limit)
        .fetch_one(pool)
        .await?;
    Ok((deliveries as u64, attempts as u64))
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct DeliveryRow {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, event_type, status, attempts AS attempt_count, CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at, last_status, last_error, created_at, delivered_at, dead_at";

/// An endpoint's deliveries, newest first, optionally of one status, created before `before`.
pub async fn list_deliveries(
    db: impl PgExecutor<'_>,
    endpoint_id: EndpointId,
    status: Option<DeliveryStatus>,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    list_deliveries_query("", endpoint_id, status, before, limit)
        .build_query_as()
        .fetch_all(db)
        .await
}

/// The statement of [`list_deliveries`], after `prefix` (`EXPLAIN `).
pub(super) fn list_deliveries_query(
    prefix: &str,
    endpoint_id: EndpointId,
    status: Option<DeliveryStatus>,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> sqlx::QueryBuilder<sqlx::Postgres> {
    // Only the filters given are in the statement (generic plans, see `store::connect`).
    let mut q = sqlx::QueryBuilder::new(format!(
        "{prefix}SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = "
    ));
    q.push_bind(endpoint_id);
    if let Some(status) = status {
        q.push(" AND status = ").push_bind(status);
    }
    if let Some(before) = before {
        q.push(" AND created_at < ").push_bind(before);
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    q
}

pub async fn get_delivery(
    db: impl PgExecutor<'_>,
    id: DeliveryId,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn attempts_of(
    db: impl PgExecutor<'_>,
    delivery_id: DeliveryId,
) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, attempted_at, status_code, latency_ms, response_body, error
         FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery_id)
    .fetch_all(db)
    .await
}

/// What a redelivery request found.
#[derive(Debug, PartialEq, Eq)]
pub enum Redeliver {
    Queued,
    InFlight,
    NotFound,
}

/// Queues a delivered or dead delivery (or hurries a pending one) for a fresh retry schedule,
/// keeping its id, so the receiver sees the same `webhook-id`.
pub async fn redeliver(db: impl PgExecutor<'_>, id: DeliveryId) -> Result<Redeliver, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar(
        "WITH target AS (SELECT id, status FROM webhook_deliveries WHERE id = $1),
              upd AS (
                  UPDATE webhook_deliveries d
                  SET status = 'pending', schedule_pos = 0, next_attempt_at = now(),
                      dead_at = NULL, updated_at = now()
                  FROM target WHERE d.id = target.id AND target.status <> 'delivering'
                  RETURNING d.id)
         SELECT target.status || CASE WHEN EXISTS (SELECT 1 FROM upd) THEN ':queued' ELSE '' END
         FROM target",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(match status {
        None => Redeliver::NotFound,
        Some(s) if s.ends_with(":queued") => Redeliver::Queued,
        Some(_) => Redeliver::InFlight,
    })
}

/// Queues again every dead delivery of the endpoint that died at or after `since`.
pub async fn redrive_dead(
    db: impl PgExecutor<'_>,
    endpoint_id: EndpointId,
    since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "WITH r AS (
             UPDATE webhook_deliveries
             SET status = 'pending', schedule_pos = 0, next_attempt_at = now(), dead_at = NULL,
                 updated_at = now()
             WHERE endpoint_id = $1 AND status = 'dead' AND dead_at >= $2
             RETURNING 1)
         SELECT pg_notify($3, '') FROM r",
    )
    .bind(endpoint_id)
    .bind(since)
    .bind(WEBHOOK_CHANNEL)
    .execute(db)
    .await?
    .rows_affected())
}

/// Wakes the delivery workers (after a redelivery).
pub async fn notify(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WEBHOOK_CHANNEL)
        .execute(db)
        .await?;
    Ok(())
}
