//! Projections as folds of the event store, rebuilt and verified by replay.
//!
//! A projection is a table with one row per aggregate, folded from that aggregate's events by a
//! pure function that the live path shares (the bookings projection: [`bookings::Change`], which
//! the live path applies in SQL in the transaction that appends the events, and [`bookings::replay`]
//! applies in Rust). A rebuild folds every history into a shadow table while sagad keeps running,
//! catches up with the events committed meanwhile by following the global feed's positions, and
//! writes it into the live table, the last stragglers under a short lock; verify folds every history again and lists every row
//! that differs. A new projection adds its fold, its shadow table's SQL (`store::projections`) and
//! a [`Projection`] variant.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::domain::SagaId;
use crate::events::Event;
use crate::store::bookings::{self, Booking};
use crate::store::events::EventRecord;
use crate::store::projections as sql;

/// The projections sagad keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Bookings,
}

impl Projection {
    pub const ALL: &[Projection] = &[Projection::Bookings];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Bookings => "bookings",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown projection {name:?}; the projections are: {}",
                    Self::ALL
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// Events read per chunk of a replay.
const CHUNK: i64 = 5_000;
/// The catch-up stops going round and swaps once a round has at most this many aggregates left.
const SWAP_BELOW: usize = 200;
/// At most this many catch-up rounds before the swap (which catches up the rest under the lock).
const MAX_ROUNDS: usize = 20;

/// How a replay is going, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub events: u64,
    /// The store's size when the replay began (an estimate).
    pub total: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub events: u64,
    pub rows: u64,
    /// Aggregates folded again during the catch-up (rounds, then under the lock).
    pub caught_up: u64,
    /// How long `bookings` was locked for the swap.
    pub swap: Duration,
    pub elapsed: Duration,
}

/// A stored event as the fold reads it.
pub fn decode(r: &EventRecord) -> Option<Event> {
    serde_json::from_value(serde_json::json!({ "type": r.event_type, "payload": r.payload })).ok()
}

/// Folds whole histories (in (aggregate_id, version) order) into rows, one per aggregate whose
/// history makes one.
fn fold_histories(events: &[EventRecord]) -> Vec<Booking> {
    let mut rows = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let id = events[start].aggregate_id;
        let end = events[start..]
            .iter()
            .position(|e| e.aggregate_id != id)
            .map_or(events.len(), |n| start + n);
        if let Some(row) = fold_one(&events[start..end]) {
            rows.push(row);
        }
        start = end;
    }
    rows
}

fn fold_one(history: &[EventRecord]) -> Option<Booking> {
    let decoded: Vec<(Event, DateTime<Utc>)> = history
        .iter()
        .filter_map(|r| decode(r).map(|e| (e, r.recorded_at)))
        .collect();
    let id = SagaId(history.first()?.aggregate_id);
    bookings::replay(id, decoded.iter().map(|(e, at)| (e, *at)))
}

/// Reads the whole store in chunks of whole histories, calling `each` with the rows folded from
/// each chunk, and `progress` after each.
async fn replay_all<F>(
    conn: &mut sqlx::PgConnection,
    total: u64,
    started: Instant,
    progress: &mut dyn FnMut(Progress),
    mut each: F,
) -> Result<u64, sqlx::Error>
where
    F: AsyncFnMut(&mut sqlx::PgConnection, Vec<Booking>) -> Result<(), sqlx::Error>,
{
    let mut after = (Uuid::nil(), 0);
    let mut carried: Vec<EventRecord> = Vec::new();
    let mut events = 0u64;
    loop {
        let chunk = sql::histories_after(conn, after, CHUNK).await?;
        let done = (chunk.len() as i64) < CHUNK;
        if let Some(last) = chunk.last() {
            after = (last.aggregate_id, last.version);
        }
        events += chunk.len() as u64;
        carried.extend(chunk);
        // The last aggregate of a full chunk may go on in the next one.
        let keep_from = if done {
            carried.len()
        } else {
            let last = carried.last().map(|e| e.aggregate_id);
            carried
                .iter()
                .position(|e| Some(e.aggregate_id) == last)
                .unwrap_or(0)
        };
        let rest = carried.split_off(keep_from);
        let rows = fold_histories(&carried);
        carried = rest;
        each(conn, rows).await?;
        progress(Progress {
            events,
            total,
            elapsed: started.elapsed(),
        });
        if done {
            return Ok(events);
        }
    }
}

/// Folds the histories of `aggregates` again into the shadow table.
async fn refold(conn: &mut sqlx::PgConnection, aggregates: &[Uuid]) -> Result<(), sqlx::Error> {
    for ids in aggregates.chunks(1000) {
        let events = sql::histories_of(conn, ids).await?;
        sql::upsert_shadow_bookings(conn, &fold_histories(&events)).await?;
    }
    Ok(())
}

/// Rebuilds `projection` from the event store while sagad runs, then swaps it in.
pub async fn rebuild(
    pool: &PgPool,
    projection: Projection,
    progress: &mut dyn FnMut(Progress),
) -> Result<Rebuilt, sqlx::Error> {
    let Projection::Bookings = projection;
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let total = sql::event_count_estimate(&mut conn).await?.max(0) as u64;
    sql::create_bookings_shadow(&mut conn).await?;
    let result = async {
        // Everything below this position is read by the replay (it reads every committed event,
        // and more); what commits from here on is caught up with by position.
        let mut from = sql::horizon(&mut conn).await?;
        let mut rows = 0u64;
        let events = replay_all(&mut conn, total, started, progress, async |c, batch| {
            rows += batch.len() as u64;
            sql::upsert_shadow_bookings(c, &batch).await
        })
        .await?;
        let mut caught_up = 0u64;
        for _ in 0..MAX_ROUNDS {
            let to = sql::horizon(&mut conn).await?;
            let touched = sql::touched_since(&mut conn, from, Some(to)).await?;
            from = to;
            caught_up += touched.len() as u64;
            refold(&mut conn, &touched).await?;
            if touched.len() <= SWAP_BELOW {
                break;
            }
        }
        // `bookings` brought to the shadow's rows while live updates go on (what it overwrites of
        // them is folded again below: every such booking has an event after `from`).
        sql::sync_bookings_from_shadow(&mut conn).await?;
        // The swap: with `bookings` locked no live update can land, and every event that changes
        // a booking commits with its update, so every one is visible now. Only the bookings with
        // events after `from` are written under the lock, folded from their whole histories.
        let locked = Instant::now();
        let mut tx = conn.begin().await?;
        sql::lock_bookings(&mut tx).await?;
        let touched = sql::touched_since(&mut tx, from, None).await?;
        caught_up += touched.len() as u64;
        for ids in touched.chunks(1000) {
            let events = sql::histories_of(&mut tx, ids).await?;
            sql::upsert_bookings(&mut tx, &fold_histories(&events)).await?;
        }
        tx.commit().await?;
        let swap = locked.elapsed();
        sql::drop_bookings_shadow(&mut conn).await?;
        sql::analyze_bookings(&mut conn).await?;
        Ok(Rebuilt {
            events,
            rows,
            caught_up,
            swap,
            elapsed: started.elapsed(),
        })
    }
    .await;
    if result.is_err() {
        let _ = sql::drop_bookings_shadow(&mut conn).await;
    }
    result
}

/// One row that differs between the projection and the fold of the events.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub id: Uuid,
    /// `(column, in the table, from the events)`; a missing row shows as `row`.
    pub columns: Vec<(&'static str, String, String)>,
}

fn compare(
    table: Option<&Booking>,
    folded: Option<&Booking>,
) -> Vec<(&'static str, String, String)> {
    let (t, f) = match (table, folded) {
        (Some(t), Some(f)) => (t, f),
        (None, None) => return Vec::new(),
        (t, f) => {
            let show = |b: Option<&Booking>| b.map_or("missing".to_owned(), |_| "present".into());
            return vec![("row", show(t), show(f))];
        }
    };
    let mut out = Vec::new();
    let mut cmp = |name: &'static str, a: String, b: String| {
        if a != b {
            out.push((name, a, b));
        }
    };
    cmp("listing_id", t.listing_id.clone(), f.listing_id.clone());
    cmp("guest_id", t.guest_id.clone(), f.guest_id.clone());
    cmp("check_in", t.check_in.to_string(), f.check_in.to_string());
    cmp(
        "check_out",
        t.check_out.to_string(),
        f.check_out.to_string(),
    );
    cmp("amount", t.amount.to_string(), f.amount.to_string());
    cmp("currency", t.currency.clone(), f.currency.clone());
    cmp("status", t.status.clone(), f.status.clone());
    cmp(
        "payment_intent_id",
        format!("{:?}", t.payment_intent_id),
        format!("{:?}", f.payment_intent_id),
    );
    cmp(
        "confirmation_code",
        format!("{:?}", t.confirmation_code),
        format!("{:?}", f.confirmation_code),
    );
    cmp(
        "cancel_reason",
        format!("{:?}", t.cancel_reason),
        format!("{:?}", f.cancel_reason),
    );
    cmp(
        "created_at",
        t.created_at.to_rfc3339(),
        f.created_at.to_rfc3339(),
    );
    cmp(
        "updated_at",
        t.updated_at.to_rfc3339(),
        f.updated_at.to_rfc3339(),
    );
    out
}

/// What verify found.
#[derive(Debug, Clone)]
pub struct Verified {
    pub events: u64,
    pub rows: u64,
    pub drift: Vec<Drift>,
}

/// Folds every history again and compares it with the projection, row by row, in one snapshot
/// (the live path writes events and rows in one transaction, so the snapshot is consistent).
pub async fn verify(
    pool: &PgPool,
    projection: Projection,
    progress: &mut dyn FnMut(Progress),
) -> Result<Verified, sqlx::Error> {
    let Projection::Bookings = projection;
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let total = sql::event_count_estimate(&mut conn).await?.max(0) as u64;
    let mut tx = conn.begin().await?;
    sql::read_only_snapshot(&mut tx).await?;
    let mut drift = Vec::new();
    let mut rows = 0u64;
    let events = replay_all(&mut tx, total, started, progress, async |c, folded| {
        let ids: Vec<Uuid> = folded.iter().map(|b| b.saga_id.0).collect();
        let table = sql::bookings_of(c, &ids).await?;
        rows += table.len() as u64;
        for f in &folded {
            let t = table.iter().find(|t| t.saga_id == f.saga_id);
            let columns = compare(t, Some(f));
            if !columns.is_empty() {
                drift.push(Drift {
                    id: f.saga_id.0,
                    columns,
                });
            }
        }
        Ok(())
    })
    .await?;
    for extra in sql::bookings_without_history(&mut tx).await? {
        rows += 1;
        drift.push(Drift {
            id: extra.saga_id.0,
            columns: compare(Some(&extra), None),
        });
    }
    tx.commit().await?;
    Ok(Verified {
        events,
        rows,
        drift,
    })
}
