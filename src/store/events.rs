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

/// Appends `events` to the aggregate as versions `first_version`, `first_version + 1`, …
/// The unique (aggregate_id, version) key refuses a concurrent writer that read the same version.
/// Published events are fanned out to webhook deliveries in the same transaction (the outbox).
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
    let mut ids = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut metadata = Vec::with_capacity(events.len());
    let mut previous: Option<Uuid> = None;
    for (i, e) in events.iter().enumerate() {
        let id = Uuid::now_v7();
        let causation = e
            .causation_id
            .clone()
            .or_else(|| previous.map(|p| p.to_string()));
        ids.push(id);
        versions.push(first_version + i as i32);
        types.push(e.event.type_name().to_owned());
        payloads.push(e.event.payload());
        metadata.push(serde_json::json!({
            "correlation_id": aggregate_id,
            "causation_id": causation,
            "step": e.step,
            "attempt": e.attempt,
            "worker": e.worker,
        }));
        previous = Some(id);
    }
    // One statement: the events, and their webhook deliveries (the outbox) in the same command.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH e AS (SELECT * FROM unnest($4::uuid[], $5::int[], $6::text[], $7::jsonb[], $8::jsonb[], $9::text[])
                          AS e(id, version, type, payload, metadata, published)),
                  appended AS (
                      INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                                          schema_version, payload, metadata)
                      SELECT e.id, $1, $2, e.version, e.type, $3, e.payload, e.metadata FROM e),
                  pub_events AS (SELECT id, published AS type FROM e),
                  {} {}",
            webhooks::FAN_OUT_CTE,
            webhooks::WAKE_IF_DELIVERIES.replace("$WAKE", "$10")
        )
    });
    sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(SCHEMA_VERSION)
        .bind(&ids)
        .bind(&versions)
        .bind(&types)
        .bind(&payloads)
        .bind(&metadata)
        .bind(webhooks::published_types(&types))
        .bind(webhooks::WEBHOOK_CHANNEL)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(ids)
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
