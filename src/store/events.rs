//! The append-only event store.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::webhooks;
use crate::events::{NewEvent, SCHEMA_VERSION};

/// An event as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct EventRecord {
    /// Global, increasing sequence number (not gapless: a rolled-back append burns numbers).
    pub seq: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// Per-aggregate version: 1, 2, 3 … without gaps.
    pub version: i32,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    /// `correlation_id`, `causation_id`, and the step and attempt that produced the event.
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// The events of one append, as the arrays the append statement takes.
pub(crate) struct Batch {
    pub ids: Vec<Uuid>,
    types: Vec<String>,
    payloads: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
}

impl Batch {
    pub fn new(aggregate_id: Uuid, events: &[NewEvent]) -> Self {
        let mut b = Batch {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
        };
        let mut previous: Option<Uuid> = None;
        for e in events {
            let id = Uuid::now_v7();
            let causation = e
                .causation_id
                .clone()
                .or_else(|| previous.map(|p| p.to_string()));
            b.ids.push(id);
            b.types.push(e.event.type_name().to_owned());
            b.payloads.push(e.event.payload());
            b.metadata.push(serde_json::json!({
                "correlation_id": aggregate_id,
                "causation_id": causation,
                "step": e.step,
                "attempt": e.attempt,
                "worker": e.worker,
            }));
            previous = Some(id);
        }
        b
    }

    /// Binds the seven parameters of [`append_ctes`], in order.
    pub(crate) fn bind<'q>(
        &'q self,
        q: super::Query<'q>,
        aggregate_type: &'q str,
    ) -> super::Query<'q> {
        q.bind(aggregate_type)
            .bind(SCHEMA_VERSION)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(webhooks::published_types(&self.types))
    }
}

/// The CTEs that append a [`Batch`] and fan it out to webhook deliveries (the outbox): `e`,
/// `appended`, `pub_events` and `deliveries`. `aggregate_id` and `first_version` are SQL
/// expressions; `gate` is a FROM item that must yield one row for anything to be written (`""`
/// for none), optionally followed by a `WHERE` clause on it and the events `e` (`e.ord` counts
/// them from 1); the batch's seven parameters are `$first_param` onwards ([`Batch::bind`]).
pub(crate) fn append_ctes(
    aggregate_id: &str,
    first_version: &str,
    gate: &str,
    first_param: usize,
) -> String {
    let p = |i: usize| format!("${}", first_param + i);
    let gate = if gate.is_empty() {
        String::new()
    } else {
        format!(", {gate}")
    };
    format!(
        "e AS (SELECT * FROM unnest({ids}::uuid[], {types}::text[], {payloads}::jsonb[], {metadata}::jsonb[],
                                    {published}::text[])
                   WITH ORDINALITY AS e(id, type, payload, metadata, published, ord)),
         appended AS (
             INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                                 schema_version, payload, metadata)
             SELECT e.id, {agg_type}, {aggregate_id}, ({first_version}) + e.ord::int - 1, e.type,
                    {schema}, e.payload, e.metadata
             FROM e{gate}),
         pub_events AS (SELECT e.id, e.published AS type FROM e{gate}),
         {fan_out}",
        agg_type = p(0),
        schema = p(1),
        ids = p(2),
        types = p(3),
        payloads = p(4),
        metadata = p(5),
        published = p(6),
        fan_out = webhooks::FAN_OUT_CTE,
    )
}

/// The statement of [`append`].
pub(super) fn append_sql() -> String {
    format!(
        "WITH {} {}",
        append_ctes("$1", "$2::int", "", 4),
        webhooks::WAKE_IF_DELIVERIES.replace("$WAKE", "$3")
    )
}

/// Appends `events` to the aggregate as versions `first_version`, `first_version + 1`, …
/// The unique (aggregate_id, version) key refuses a concurrent writer that read the same version.
/// Published events are fanned out to webhook deliveries in the same statement (the outbox).
pub async fn append(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: Uuid,
    first_version: i32,
    events: &[NewEvent],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let batch = Batch::new(aggregate_id, events);
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(append_sql);
    let q = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(aggregate_id)
        .bind(first_version)
        .bind(webhooks::WEBHOOK_CHANNEL);
    batch
        .bind(q, aggregate_type)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(batch.ids)
}

/// An aggregate's events in version order.
pub async fn for_aggregate(
    conn: &mut PgConnection,
    aggregate_id: Uuid,
) -> Result<Vec<EventRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, event_id, aggregate_type, aggregate_id, version, event_type, schema_version,
                payload, metadata, recorded_at
         FROM events WHERE aggregate_id = $1 ORDER BY version",
    )
    .bind(aggregate_id)
    .fetch_all(conn)
    .await
}
