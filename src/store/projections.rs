//! The SQL of projection rebuilds: a shadow table, the event histories replayed into it, the swap.
//! (The orchestration and the folds are in [`crate::projections`].)

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::bookings::Booking;
use super::events::EventRecord;
use super::feed::Position;

const COLUMNS: &str = "seq, event_id, aggregate_type, aggregate_id, version, event_type, \
                       schema_version, payload, metadata, recorded_at";

/// Up to `limit` events after `(aggregate, version)` in (aggregate_id, version) order: whole
/// histories, read in chunks along the store's unique index.
pub async fn histories_after(
    conn: &mut PgConnection,
    after: (Uuid, i32),
    limit: i64,
) -> Result<Vec<EventRecord>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events WHERE (aggregate_id, version) > ($1, $2)
         ORDER BY aggregate_id, version LIMIT $3"
    )))
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The whole histories of `aggregates`, in (aggregate_id, version) order.
pub async fn histories_of(
    conn: &mut PgConnection,
    aggregates: &[Uuid],
) -> Result<Vec<EventRecord>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_id = ANY($1)
         ORDER BY aggregate_id, version"
    )))
    .bind(aggregates)
    .fetch_all(conn)
    .await
}

/// How many events the store holds (for a progress bar: an estimate is enough).
pub async fn event_count_estimate(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let estimate: i64 = sqlx::query_scalar(
        "SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = 'events'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    if estimate > 0 {
        return Ok(estimate);
    }
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(conn)
        .await
}

/// The aggregates with events after `after` and below `before` (`None`: every committed one).
pub async fn touched_since(
    conn: &mut PgConnection,
    after: Position,
    before: Option<Position>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let before = before.map(|p| p.tx.to_string());
    sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM events
         WHERE (tx, seq) > ($1::text::xid8, $2) AND ($3::text IS NULL OR tx < $3::text::xid8)",
    )
    .bind(after.tx.to_string())
    .bind(after.seq)
    .bind(before)
    .fetch_all(conn)
    .await
}

/// The feed's horizon: every event below it is committed, none can appear below it later.
pub async fn horizon(conn: &mut PgConnection) -> Result<Position, sqlx::Error> {
    let tx: String = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(conn)
        .await?;
    let tx = tx
        .parse()
        .map_err(|_| sqlx::Error::Protocol(format!("not a transaction id: {tx:?}")))?;
    Ok(Position { tx, seq: 0 })
}

/// The shadow table of the bookings projection during a rebuild.
pub const BOOKINGS_SHADOW: &str = "bookings_rebuild";

/// Creates the empty shadow table, shaped as `bookings` is now (columns, defaults, checks,
/// indexes, storage parameters); drops a shadow a failed rebuild left behind. It has no foreign
/// key: its rows come from sagas' own events, and `bookings` checks the reference at the swap
/// (a foreign key would also make dropping the shadow lock `sagas`).
pub async fn create_bookings_shadow(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {BOOKINGS_SHADOW}"
    )))
    .execute(&mut *conn)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {BOOKINGS_SHADOW} (LIKE bookings INCLUDING ALL)"
    )))
    .execute(&mut *conn)
    .await?;
    // Storage parameters (the fillfactor that keeps updates HOT) are not copied by LIKE.
    let options: Option<String> = sqlx::query_scalar(
        "SELECT array_to_string(reloptions, ', ') FROM pg_class WHERE oid = 'bookings'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    if let Some(options) = options.filter(|o| !o.is_empty()) {
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE {BOOKINGS_SHADOW} SET ({options})"
        )))
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Drops the shadow table (after a failed rebuild).
pub async fn drop_bookings_shadow(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {BOOKINGS_SHADOW}"
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// Refreshes the planner's statistics of `bookings` (after a rebuild rewrote it).
pub async fn analyze_bookings(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("ANALYZE bookings").execute(conn).await?;
    Ok(())
}

/// Makes the transaction open on `conn` read only, every statement in it reading one snapshot
/// (repeatable read). Must come before the transaction's first query.
pub async fn read_only_snapshot(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes `rows` into the shadow table, replacing the rows of the same sagas.
pub async fn upsert_shadow_bookings(
    conn: &mut PgConnection,
    rows: &[Booking],
) -> Result<(), sqlx::Error> {
    upsert_bookings_into(conn, BOOKINGS_SHADOW, rows).await
}

/// Writes `rows` into `bookings` itself, replacing the rows of the same sagas (under the swap's
/// lock).
pub async fn upsert_bookings(conn: &mut PgConnection, rows: &[Booking]) -> Result<(), sqlx::Error> {
    upsert_bookings_into(conn, "bookings", rows).await
}

/// Writes `rows` into `table` (`bookings` or its shadow), replacing the rows of the same sagas.
async fn upsert_bookings_into(
    conn: &mut PgConnection,
    table: &'static str,
    rows: &[Booking],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Booking) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.saga_id.0).collect();
    let check_in: Vec<NaiveDate> = rows.iter().map(|r| r.check_in).collect();
    let check_out: Vec<NaiveDate> = rows.iter().map(|r| r.check_out).collect();
    let amount: Vec<i64> = rows.iter().map(|r| r.amount).collect();
    let opt = |f: fn(&Booking) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let updated: Vec<DateTime<Utc>> = rows.iter().map(|r| r.updated_at).collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (saga_id, listing_id, guest_id, check_in, check_out, amount,
             currency, status, payment_intent_id, confirmation_code, cancel_reason, created_at, updated_at,
             cancellation)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::date[], $5::date[], $6::int8[],
             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],
             $13::timestamptz[], $14::jsonb[])
         ON CONFLICT (saga_id) DO UPDATE SET
             listing_id = EXCLUDED.listing_id, guest_id = EXCLUDED.guest_id,
             check_in = EXCLUDED.check_in, check_out = EXCLUDED.check_out, amount = EXCLUDED.amount,
             currency = EXCLUDED.currency, status = EXCLUDED.status,
             payment_intent_id = EXCLUDED.payment_intent_id,
             confirmation_code = EXCLUDED.confirmation_code,
             cancel_reason = EXCLUDED.cancel_reason, created_at = EXCLUDED.created_at,
             updated_at = EXCLUDED.updated_at, cancellation = EXCLUDED.cancellation"
    )))
    .bind(ids)
    .bind(col(|r| r.listing_id.clone()))
    .bind(col(|r| r.guest_id.clone()))
    .bind(check_in)
    .bind(check_out)
    .bind(amount)
    .bind(col(|r| r.currency.clone()))
    .bind(col(|r| r.status.clone()))
    .bind(opt(|r| r.payment_intent_id.clone()))
    .bind(opt(|r| r.confirmation_code.clone()))
    .bind(opt(|r| r.cancel_reason.clone()))
    .bind(created)
    .bind(updated)
    .bind(
        rows.iter()
            .map(|r| r.cancellation.clone())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks `sagas` against writers, then `bookings` against everyone, until the transaction ends
/// (the swap). In that order: every live writer of `bookings` writes `sagas` first, so none can
/// hold a lock the swap waits for while it waits for the swap; and the swap's foreign-key checks
/// on `sagas` rows cannot meet a worker's row lock.
pub async fn lock_bookings(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("LOCK TABLE sagas IN EXCLUSIVE MODE")
        .execute(&mut *conn)
        .await?;
    sqlx::query("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes `bookings` hold the shadow's rows without locking the table, so live updates go on:
/// rows that differ are updated, rows missing are inserted, and rows that no history makes (no
/// `BookingRequested`, which every live booking is created with) are deleted. Each statement
/// writes only the rows that differ. A live update racing it may be overwritten by the shadow's
/// older fold of that booking: every aggregate with an event after the shadow's horizon is folded
/// again into `bookings` under [`lock_bookings`], which is what the lock is held for.
///
/// Rows are written in place rather than the tables renamed: `bookings` keeps its identity (its
/// OID), so the statements every sagad process has prepared against it stay valid.
pub async fn sync_bookings_from_shadow(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(attname) FROM pg_attribute
         WHERE attrelid = 'bookings'::regclass AND attnum > 0 AND NOT attisdropped
           AND attname <> 'saga_id'
         ORDER BY attnum",
    )
    .fetch_all(&mut *conn)
    .await?;
    // Both tables analyzed first: the statements below join them, and a plan made on the
    // statistics of an empty `bookings` (a first backfill) or of a shadow never analyzed probes
    // one table by scanning the other once per row.
    for table in [BOOKINGS_SHADOW, "bookings"] {
        sqlx::query(AssertSqlSafe(format!("ANALYZE {table}")))
            .execute(&mut *conn)
            .await?;
    }
    let targets = columns.join(", ");
    let sources = columns
        .iter()
        .map(|c| format!("s.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut written = 0;
    for stmt in [
        format!(
            "UPDATE bookings b SET ({targets}) = ROW({sources}) FROM {BOOKINGS_SHADOW} s
             WHERE b.saga_id = s.saga_id AND ROW(b.*) IS DISTINCT FROM ROW(s.*)"
        ),
        format!(
            "INSERT INTO bookings SELECT s.* FROM {BOOKINGS_SHADOW} s
             ON CONFLICT (saga_id) DO NOTHING"
        ),
        format!(
            "DELETE FROM bookings b
             WHERE NOT EXISTS (SELECT 1 FROM {BOOKINGS_SHADOW} s WHERE s.saga_id = b.saga_id)
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = b.saga_id
                                AND e.version = 1 AND e.event_type = 'BookingRequested')"
        ),
    ] {
        written += sqlx::query(AssertSqlSafe(stmt))
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(written)
}

/// Every row of `bookings` of these sagas.
pub async fn bookings_of(
    conn: &mut PgConnection,
    sagas: &[Uuid],
) -> Result<Vec<Booking>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bookings WHERE saga_id = ANY($1)")
        .bind(sagas)
        .fetch_all(conn)
        .await
}

/// Rows of `bookings` whose saga has no `BookingRequested` event (nothing they could fold from).
pub async fn bookings_without_history(
    conn: &mut PgConnection,
) -> Result<Vec<Booking>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM bookings b WHERE NOT EXISTS (
             SELECT 1 FROM events e WHERE e.aggregate_id = b.saga_id AND e.version = 1
                                      AND e.event_type = 'BookingRequested')",
    )
    .fetch_all(conn)
    .await
}
