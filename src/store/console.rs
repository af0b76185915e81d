//! What the operator console (`/console`) reads and writes beyond the API's own queries: its
//! sign-in sessions, the saga search, the overview's aggregates, and the rows one saga's page
//! gathers (the deliveries its events caused, the Stripe events about its PaymentIntent), and the
//! plans of the statements its pages run (`explain_*`, for the benchmark).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::outbound::{AttemptRow, DeliveryRow, DeliveryStatus};
use super::sagas::SagaRow;
use super::stripe_inbox::{ListFilter, StripeEventRow};
use crate::domain::{DeliveryId, EndpointId, SagaId};
use crate::engine::model::SagaStatus;

// ---------------------------------------------------------------------------------------------
// Sessions

/// A signed-in browser, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub token_name: String,
    pub token_hash: Vec<u8>,
    pub csrf: String,
}

/// Stores a session that ends `ttl` from now (the database's clock), and drops the sessions
/// that already ended.
pub async fn insert_session(
    pool: &PgPool,
    id_hash: &[u8],
    s: &Session,
    ttl: chrono::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH gone AS (DELETE FROM console_sessions WHERE expires_at < now())
         INSERT INTO console_sessions (id_hash, token_name, token_hash, csrf, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5::float8 * interval '1 second')",
    )
    .bind(id_hash)
    .bind(&s.token_name)
    .bind(&s.token_hash)
    .bind(&s.csrf)
    .bind(ttl.num_seconds() as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// The live session whose id hashes to `id_hash`.
pub async fn get_session(pool: &PgPool, id_hash: &[u8]) -> Result<Option<Session>, sqlx::Error> {
    sqlx::query_as(GET_SESSION)
        .bind(id_hash)
        .fetch_optional(pool)
        .await
}

const GET_SESSION: &str = "SELECT token_name, token_hash, csrf FROM console_sessions
         WHERE id_hash = $1 AND expires_at > now()";

pub async fn delete_session(pool: &PgPool, id_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(pool)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Saga search

/// What the sagas page filters on; every field is optional.
#[derive(Debug, Default, Clone)]
pub struct SagaSearch {
    pub status: Option<SagaStatus>,
    pub saga_name: Option<String>,
    /// (saga name, step index) pairs: the sagas whose current step is one of them.
    pub at_steps: Option<Vec<(String, i32)>>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub term: Option<SearchTerm>,
    /// Keyset cursor: sagas strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, SagaId)>,
    pub limit: i64,
}

/// What the search box holds, told apart by its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchTerm {
    /// A saga id (a booking's id is its saga's).
    Id(Uuid),
    /// A Stripe PaymentIntent id (`pi_…`).
    PaymentIntent(String),
    /// A confirmation code, a listing id or a guest id.
    Text(String),
}

impl SearchTerm {
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return None;
        }
        Some(if let Ok(id) = raw.parse() {
            SearchTerm::Id(id)
        } else if raw.starts_with("pi_") {
            SearchTerm::PaymentIntent(raw.to_owned())
        } else {
            SearchTerm::Text(raw.to_owned())
        })
    }
}

/// One line of the sagas page: the saga and its booking's identifying fields.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SagaLine {
    pub id: SagaId,
    pub saga_name: String,
    pub saga_version: i32,
    pub status: SagaStatus,
    pub current_step: i32,
    pub attempt: i32,
    pub failure_step: Option<String>,
    pub failure_reason: Option<String>,
    pub wait_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub listing_id: Option<String>,
    pub guest_id: Option<String>,
    pub confirmation_code: Option<String>,
    pub booking_status: Option<String>,
}

/// Newest first, keyset-paginated. A text term matches a confirmation code, a listing or a guest
/// (each through its own index on `bookings`).
pub async fn search_sagas(pool: &PgPool, f: &SagaSearch) -> Result<Vec<SagaLine>, sqlx::Error> {
    search_query("", f).build_query_as().fetch_all(pool).await
}

/// The statement of [`search_sagas`], after `prefix` (`EXPLAIN `).
fn search_query(prefix: &str, f: &SagaSearch) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut q = sqlx::QueryBuilder::new(format!(
        "{prefix}SELECT s.id, s.saga_name, s.saga_version, s.status, s.current_step, s.attempt,
                s.failure_step, s.failure_reason, s.wait_reason, s.created_at, s.updated_at,
                b.listing_id, b.guest_id, b.confirmation_code, b.status AS booking_status
         FROM sagas s LEFT JOIN bookings b ON b.saga_id = s.id WHERE true"
    ));
    // Only the filters given are in the statement: each combination gets a plan that uses its
    // index (connections use generic plans, see `store::connect`).
    match &f.term {
        None => {}
        Some(SearchTerm::Id(id)) => {
            q.push(" AND s.id = ").push_bind(*id);
        }
        Some(SearchTerm::PaymentIntent(pi)) => {
            q.push(" AND s.id IN (SELECT saga_id FROM bookings WHERE payment_intent_id = ")
                .push_bind(pi)
                .push(")");
        }
        Some(SearchTerm::Text(t)) => {
            q.push(" AND s.id IN (SELECT saga_id FROM bookings WHERE confirmation_code = ")
                .push_bind(t)
                .push(" UNION ALL SELECT saga_id FROM bookings WHERE listing_id = ")
                .push_bind(t)
                .push(" UNION ALL SELECT saga_id FROM bookings WHERE guest_id = ")
                .push_bind(t)
                .push(")");
        }
    }
    if let Some(status) = f.status {
        q.push(" AND s.status = ").push_bind(status);
    }
    if let Some(name) = &f.saga_name {
        q.push(" AND s.saga_name = ").push_bind(name);
    }
    if let Some(steps) = &f.at_steps {
        // One row comparison per saga that has the step (usually one or two), evaluated as a
        // filter on each saga the index walk reads; a semi-join against `unnest` rescanned the
        // function for every one of them.
        q.push(" AND (false");
        for (name, index) in steps {
            q.push(" OR (s.saga_name = ")
                .push_bind(name.clone())
                .push(" AND s.current_step = ")
                .push_bind(*index)
                .push(")");
        }
        q.push(")");
    }
    if let Some(from) = f.created_from {
        q.push(" AND s.created_at >= ").push_bind(from);
    }
    if let Some(to) = f.created_to {
        q.push(" AND s.created_at < ").push_bind(to);
    }
    if let Some((at, id)) = f.before {
        q.push(" AND (s.created_at, s.id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    // The page size is written into the statement: a generic plan for `LIMIT $n` assumes a tenth
    // of the table and gathers it with parallel workers (30 ms for a page of 50 over 1M sagas).
    // The console asks for a few fixed sizes, so this makes a few statements, not one per request.
    q.push(format_args!(
        " ORDER BY s.created_at DESC, s.id DESC LIMIT {}",
        f.limit
    ));
    q
}

// ---------------------------------------------------------------------------------------------
// Stuck and paused

/// Sagas paused on a dependency's open breaker, by dependency then age (index `sagas_paused`).
pub async fn paused_sagas(pool: &PgPool, limit: i64) -> Result<Vec<SagaRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(PAUSED.as_str()))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Sagas waiting on an outside event, soonest deadline first (index `sagas_waiting`).
pub async fn waiting_sagas(pool: &PgPool, limit: i64) -> Result<Vec<SagaRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(WAITING.as_str()))
        .bind(limit)
        .fetch_all(pool)
        .await
}

static PAUSED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM sagas WHERE paused_since IS NOT NULL ORDER BY wait_reason, created_at LIMIT $1",
        super::sagas::COLUMNS
    )
});

static WAITING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM sagas WHERE status = 'waiting' ORDER BY wait_deadline LIMIT $1",
        super::sagas::COLUMNS
    )
});

// ---------------------------------------------------------------------------------------------
// Overview

/// Sagas started and completed in each of the last 60 minutes (index 59: the current minute).
#[derive(Debug, Clone, PartialEq)]
pub struct PerMinute {
    pub started: Vec<i64>,
    pub completed: Vec<i64>,
}

pub async fn per_minute(pool: &PgPool) -> Result<PerMinute, sqlx::Error> {
    // Minutes counted back from now: 0 is the current one.
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(PER_MINUTE).fetch_all(pool).await?;
    let mut out = PerMinute {
        started: vec![0; 60],
        completed: vec![0; 60],
    };
    for (ago, s, c) in rows {
        if (0..60).contains(&ago) {
            let i = 59 - ago as usize;
            out.started[i] = s;
            out.completed[i] = c;
        }
    }
    Ok(out)
}

// The bounds are written on `now()` itself, not on a CTE's value: the generic plan can then
// estimate them (an hour of rows, not a third of the table) and reads `sagas_listing` and
// `sagas_finished` instead of every saga.
const PER_MINUTE: &str = "WITH t AS (SELECT date_trunc('minute', now()) AS m),
              s AS (SELECT ((extract(epoch FROM (SELECT m FROM t) - date_trunc('minute', created_at)) / 60))::int AS ago,
                           count(*) AS n
                    FROM sagas WHERE created_at >= date_trunc('minute', now()) - interval '59 minutes'
                    GROUP BY 1),
              c AS (SELECT ((extract(epoch FROM (SELECT m FROM t) - date_trunc('minute', finished_at)) / 60))::int AS ago,
                           count(*) AS n
                    FROM sagas WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
                                 AND status = 'completed' GROUP BY 1)
         SELECT ago, COALESCE(s.n, 0), COALESCE(c.n, 0) FROM s FULL JOIN c USING (ago)";

/// An endpoint that fails or was disabled, for the overview.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailingEndpoint {
    pub id: Uuid,
    pub url: String,
    pub enabled: bool,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub dead: i64,
}

pub async fn failing_endpoints(pool: &PgPool) -> Result<Vec<FailingEndpoint>, sqlx::Error> {
    sqlx::query_as(FAILING_ENDPOINTS).fetch_all(pool).await
}

const FAILING_ENDPOINTS: &str = "SELECT e.id, e.url, e.enabled, e.failing_since, e.disabled_reason,
                (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'dead') AS dead
         FROM webhook_endpoints e
         WHERE e.failing_since IS NOT NULL OR NOT e.enabled
         ORDER BY e.failing_since NULLS LAST, e.id LIMIT 50";

/// The Stripe inbox's backlog: events due or being processed, and dead ones.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct InboxBacklog {
    pub pending: i64,
    pub processing: i64,
    pub dead: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

pub async fn inbox_backlog(pool: &PgPool) -> Result<InboxBacklog, sqlx::Error> {
    sqlx::query_as(INBOX_BACKLOG).fetch_one(pool).await
}

const INBOX_BACKLOG: &str = "SELECT (SELECT count(*) FROM stripe_events WHERE status = 'pending') AS pending,
                (SELECT count(*) FROM stripe_events WHERE status = 'processing') AS processing,
                (SELECT count(*) FROM stripe_events WHERE status = 'dead') AS dead,
                (SELECT min(next_attempt_at) FROM stripe_events WHERE status = 'pending') AS oldest_pending";

// ---------------------------------------------------------------------------------------------
// One saga's page

/// A delivery that one of the saga's events caused, with its endpoint's URL.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CausedDelivery {
    #[sqlx(flatten)]
    pub delivery: DeliveryRow,
    pub url: String,
}

pub async fn deliveries_of_events(
    db: impl PgExecutor<'_>,
    event_ids: &[Uuid],
) -> Result<Vec<CausedDelivery>, sqlx::Error> {
    sqlx::query_as(DELIVERIES_OF_EVENTS)
        .bind(event_ids)
        .fetch_all(db)
        .await
}

const DELIVERIES_OF_EVENTS: &str =
    "SELECT d.id, d.endpoint_id, d.event_id, d.event_type, d.status, d.attempts AS attempt_count,
                CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
                d.last_status, d.last_error, d.created_at, d.delivered_at, d.dead_at, e.url
         FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
         WHERE d.event_id = ANY($1)
         ORDER BY d.created_at, d.id";

/// An attempt of one of several deliveries.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryAttempt {
    pub delivery_id: DeliveryId,
    #[sqlx(flatten)]
    pub attempt: AttemptRow,
}

pub async fn attempts_of_deliveries(
    db: impl PgExecutor<'_>,
    ids: &[DeliveryId],
) -> Result<Vec<DeliveryAttempt>, sqlx::Error> {
    sqlx::query_as(ATTEMPTS_OF_DELIVERIES)
        .bind(ids)
        .fetch_all(db)
        .await
}

const ATTEMPTS_OF_DELIVERIES: &str =
    "SELECT delivery_id, attempt, attempted_at, status_code, latency_ms, response_body, error
         FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt";

/// The Stripe events about a PaymentIntent, or matched to the saga, oldest first.
pub async fn stripe_events_of(
    pool: &PgPool,
    payment_intent_id: &str,
) -> Result<Vec<StripeEventRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(STRIPE_EVENTS_OF.as_str()))
        .bind(payment_intent_id)
        .fetch_all(pool)
        .await
}

static STRIPE_EVENTS_OF: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {} FROM stripe_events WHERE payment_intent_id = $1 ORDER BY received_at, id LIMIT 200",
        super::stripe_inbox::COLUMNS
    )
});

// ---------------------------------------------------------------------------------------------
// Plans

/// One statement a console page runs and the plan PostgreSQL runs it with (the generic plan, see
/// [`super::explain_generic`]), as the benchmark prints and checks it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub statement: &'static str,
    pub plan: String,
}

async fn explain<'q>(
    conn: &mut PgConnection,
    statement: &'static str,
    query: impl sqlx::Execute<'q, sqlx::Postgres>,
) -> Result<Plan, sqlx::Error> {
    Ok(Plan {
        statement,
        plan: super::explain_generic(conn, query).await?,
    })
}

/// The session lookup every console request makes.
pub async fn explain_session(conn: &mut PgConnection) -> Result<Plan, sqlx::Error> {
    explain(
        conn,
        "session",
        sqlx::query(GET_SESSION).bind(vec![0u8; 32]),
    )
    .await
}

/// The overview's aggregates.
pub async fn explain_overview(conn: &mut PgConnection) -> Result<Vec<Plan>, sqlx::Error> {
    let mut out = Vec::new();
    for (statement, sql) in [
        ("sagas by name and status", super::sagas::COUNT_BY_STATUS),
        ("started and completed per minute", PER_MINUTE),
        ("paused by dependency", super::breakers::PAUSED_COUNTS),
        ("work queue depth", super::sagas::QUEUE_DEPTH),
        ("failing endpoints", FAILING_ENDPOINTS),
        ("Stripe inbox backlog", INBOX_BACKLOG),
    ] {
        out.push(explain(conn, statement, sqlx::query(sql)).await?);
    }
    Ok(out)
}

/// The sagas page's search.
pub async fn explain_search(conn: &mut PgConnection, f: &SagaSearch) -> Result<Plan, sqlx::Error> {
    let mut q = search_query("", f);
    explain(conn, "saga search", q.build()).await
}

/// The stuck-and-paused page's three lists.
pub async fn explain_stuck(conn: &mut PgConnection, limit: i64) -> Result<Vec<Plan>, sqlx::Error> {
    let stuck = sqlx::query(sqlx::AssertSqlSafe(super::operator::STUCK.as_str()))
        .bind(None::<String>)
        .bind(None::<DateTime<Utc>>)
        .bind(limit);
    Ok(vec![
        explain(conn, "stuck sagas", stuck).await?,
        explain(
            conn,
            "paused sagas",
            sqlx::query(sqlx::AssertSqlSafe(PAUSED.as_str())).bind(limit),
        )
        .await?,
        explain(
            conn,
            "waiting sagas",
            sqlx::query(sqlx::AssertSqlSafe(WAITING.as_str())).bind(limit),
        )
        .await?,
    ])
}

/// One saga's page: the saga, its steps, booking and events, the deliveries its events caused
/// and their attempts, and the Stripe events about its PaymentIntent.
pub async fn explain_saga(
    conn: &mut PgConnection,
    id: SagaId,
    event_ids: &[Uuid],
    delivery_ids: &[DeliveryId],
    payment_intent_id: &str,
) -> Result<Vec<Plan>, sqlx::Error> {
    let saga = format!("SELECT {} FROM sagas WHERE id = $1", super::sagas::COLUMNS);
    Ok(vec![
        explain(
            conn,
            "saga",
            sqlx::query(sqlx::AssertSqlSafe(saga)).bind(id),
        )
        .await?,
        explain(conn, "steps", sqlx::query(super::sagas::STEPS).bind(id)).await?,
        explain(
            conn,
            "booking",
            sqlx::query(sqlx::AssertSqlSafe(super::bookings::GET.as_str())).bind(id),
        )
        .await?,
        explain(
            conn,
            "events",
            sqlx::query(super::events::FOR_AGGREGATE).bind(id.0),
        )
        .await?,
        explain(
            conn,
            "deliveries its events caused",
            sqlx::query(DELIVERIES_OF_EVENTS).bind(event_ids.to_vec()),
        )
        .await?,
        explain_attempts(conn, delivery_ids).await?,
        explain(
            conn,
            "Stripe events about it",
            sqlx::query(sqlx::AssertSqlSafe(STRIPE_EVENTS_OF.as_str()))
                .bind(payment_intent_id.to_owned()),
        )
        .await?,
    ])
}

async fn explain_attempts(
    conn: &mut PgConnection,
    delivery_ids: &[DeliveryId],
) -> Result<Plan, sqlx::Error> {
    explain(
        conn,
        "delivery attempts",
        sqlx::query(ATTEMPTS_OF_DELIVERIES).bind(delivery_ids.to_vec()),
    )
    .await
}

/// An endpoint's page: a page of its deliveries (of one status, if given) and their attempts.
pub async fn explain_endpoint(
    conn: &mut PgConnection,
    endpoint_id: EndpointId,
    status: Option<DeliveryStatus>,
    limit: i64,
    delivery_ids: &[DeliveryId],
) -> Result<Vec<Plan>, sqlx::Error> {
    let mut q = super::outbound::list_deliveries_query("", endpoint_id, status, None, limit);
    Ok(vec![
        explain(conn, "endpoint's deliveries", q.build()).await?,
        explain_attempts(conn, delivery_ids).await?,
    ])
}

/// The Stripe inbox page's list.
pub async fn explain_inbox(conn: &mut PgConnection, f: &ListFilter) -> Result<Plan, sqlx::Error> {
    let mut q = super::stripe_inbox::list_query("", f);
    explain(conn, "Stripe inbox", q.build()).await
}

/// A listing's calendar: its active claims in a window.
pub async fn explain_calendar(
    conn: &mut PgConnection,
    listing_id: &str,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) -> Result<Plan, sqlx::Error> {
    explain(
        conn,
        "active claims",
        sqlx::query(super::inventory::ACTIVE_CLAIMS)
            .bind(listing_id.to_owned())
            .bind(from)
            .bind(to),
    )
    .await
}
