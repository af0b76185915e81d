//! The append-only event store.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::outbound::{self, FAN_OUT_CTE, WakeDeliveries};
use super::stmt::{Binds, Param, Statement, Text};
use crate::events::NewEvent;

/// An event as stored, its payload brought to its type's current schema version
/// ([`crate::upcast::to_current`], applied when the row is decoded).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventRecord {
    /// Global, increasing sequence number (not gapless: a rolled-back append burns numbers).
    pub seq: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// Per-aggregate version: 1, 2, 3 … without gaps.
    pub version: i32,
    pub event_type: String,
    /// The payload's schema version: its type's current one, unless a newer sagad wrote it.
    pub schema_version: i32,
    pub payload: serde_json::Value,
    /// `correlation_id`, `causation_id`, and the step and attempt that produced the event.
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for EventRecord {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let event_type: String = row.try_get("event_type")?;
        let (schema_version, payload) = crate::upcast::to_current(
            &event_type,
            row.try_get("schema_version")?,
            row.try_get("payload")?,
        );
        Ok(Self {
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            version: row.try_get("version")?,
            event_type,
            schema_version,
            payload,
            metadata: row.try_get("metadata")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }
}

/// The events of one append, as the arrays the append statement takes.
pub(crate) struct EventColumns {
    pub ids: Vec<Uuid>,
    types: Vec<String>,
    /// Each event's schema version: its type's current one.
    versions: Vec<i32>,
    payloads: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
}

impl EventColumns {
    pub fn new(aggregate_id: Uuid, events: &[NewEvent]) -> Self {
        let mut b = EventColumns {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
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
            b.versions
                .push(crate::upcast::current_version(e.event.type_name()));
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
}

/// The CTEs that append an [`EventColumns`] and fan it out to webhook deliveries (the outbox): `e`,
/// `appended`, `pub_events` and `deliveries`. A statement part.
pub(crate) struct AppendEvents {
    aggregate_type: Param,
    schema_versions: Param,
    ids: Param,
    types: Param,
    payloads: Param,
    metadata: Param,
    published: Param,
}

impl AppendEvents {
    pub(crate) fn new(b: &mut Binds, batch: &EventColumns, aggregate_type: &str) -> Self {
        Self {
            aggregate_type: b.push(aggregate_type),
            schema_versions: b.push(&batch.versions),
            ids: b.push(&batch.ids),
            types: b.push(&batch.types),
            payloads: b.push(&batch.payloads),
            metadata: b.push(&batch.metadata),
            published: b.push(outbound::published_types(&batch.types)),
        }
    }

    /// The CTEs for the aggregate whose id is `aggregate_id`, its events numbered from the SQL
    /// `first_version`; `gate` is a FROM item that must yield one row for anything to be written
    /// (`""` for none), optionally followed by a `WHERE` clause on it and the events `e` (`e.ord`
    /// counts them from 1).
    pub(crate) fn ctes(
        &self,
        aggregate_id: Param,
        first_version: &dyn fmt::Display,
        gate: &str,
    ) -> String {
        let gate = if gate.is_empty() {
            String::new()
        } else {
            format!(", {gate}")
        };
        let Self {
            aggregate_type,
            schema_versions,
            ids,
            types,
            payloads,
            metadata,
            published,
        } = self;
        format!(
            "e AS (SELECT * FROM unnest({ids}::uuid[], {types}::text[], {payloads}::jsonb[], {metadata}::jsonb[],
                                    {published}::text[], {schema_versions}::int4[])
                   WITH ORDINALITY AS e(id, type, payload, metadata, published, schema_version, ord)),
         appended AS (
             INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                                 schema_version, payload, metadata)
             SELECT e.id, {aggregate_type}, {aggregate_id}, ({first_version}) + e.ord::int - 1, e.type,
                    e.schema_version, e.payload, e.metadata
             FROM e{gate}),
         pub_events AS (SELECT e.id, e.published AS type FROM e{gate}),
         {FAN_OUT_CTE}"
        )
    }
}

/// The statement of [`append`].
pub(super) fn append_statement(
    aggregate_type: &str,
    aggregate_id: Uuid,
    first_version: i32,
    batch: &EventColumns,
) -> Statement {
    static TEXT: Text = Text::new();
    let mut b = Binds::new();
    let id = b.push(aggregate_id);
    let first = b.push(first_version);
    let wake = WakeDeliveries::new(&mut b);
    let events = AppendEvents::new(&mut b, batch, aggregate_type);
    TEXT.with(b, || {
        format!(
            "WITH {} {wake}",
            events.ctes(id, &format_args!("{first}::int"), "")
        )
    })
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
    let batch = EventColumns::new(aggregate_id, events);
    append_statement(aggregate_type, aggregate_id, first_version, &batch)
        .query()?
        .fetch_optional(&mut *conn)
        .await?;
    Ok(batch.ids)
}

/// An aggregate's events in version order.
pub async fn for_aggregate(
    conn: &mut PgConnection,
    aggregate_id: Uuid,
) -> Result<Vec<EventRecord>, sqlx::Error> {
    sqlx::query_as(FOR_AGGREGATE)
        .bind(aggregate_id)
        .fetch_all(conn)
        .await
}

/// The statement of [`for_aggregate`].
pub(super) const FOR_AGGREGATE: &str =
    "SELECT seq, event_id, aggregate_type, aggregate_id, version, event_type, schema_version,
                payload, metadata, recorded_at
         FROM events WHERE aggregate_id = $1 ORDER BY version";
