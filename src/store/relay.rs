//! The NATS relay's state (`relay_position`, migration 0026): its lock, its acknowledged feed
//! position, its last error, and how far it lags the feed.
//!
//! Every statement of the active relay runs on the connection that holds its advisory lock: when
//! that connection ends, the lock goes with it, and the statements fail instead of moving the
//! position of a relay that another process now runs.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::feed::Position;

/// The advisory lock key the active relay holds ("sagadrly" in ASCII).
const LOCK_KEY: i64 = 0x7361_6761_6472_6c79;

/// Lag counts stop here: the count is a scan of the feed index past the position.
pub const LAG_COUNT_CAP: i64 = 1_000_000;

/// Takes the relay's lock on `conn` for its session, when no other session holds it.
pub async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// Records `holder` as the relay, creating the row at the start of the feed the first time, and
/// returns the acknowledged position.
pub async fn take_over(conn: &mut PgConnection, holder: &str) -> Result<Position, sqlx::Error> {
    let (tx, seq): (String, i64) = sqlx::query_as(
        "INSERT INTO relay_position (tx, seq, holder) VALUES ('0'::xid8, 0, $1)
         ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, held_since = now()
         RETURNING tx::text, seq",
    )
    .bind(holder)
    .fetch_one(conn)
    .await?;
    Ok(Position {
        tx: parse_tx(&tx)?,
        seq,
    })
}

/// Moves the acknowledged position forward to `to` (never back) and clears the last error.
pub async fn advance(conn: &mut PgConnection, to: Position) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE relay_position
         SET tx = $1::text::xid8, seq = $2, moved_at = now(), last_error = NULL, last_error_at = NULL
         WHERE (tx, seq) < ($1::text::xid8, $2)",
    )
    .bind(to.tx.to_string())
    .bind(to.seq)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failure to publish (or to reach NATS).
pub async fn record_error(conn: &mut PgConnection, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE relay_position SET last_error = $1, last_error_at = now()")
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

/// How far the relay is behind the feed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Events after the position (counted up to [`LAG_COUNT_CAP`]).
    pub events: i64,
    /// How long ago the oldest of them was recorded (0 when there are none), by the database's
    /// clock.
    pub seconds: f64,
}

/// The events after `position` and the age of the oldest of them.
pub async fn lag(conn: impl PgExecutor<'_>, position: Position) -> Result<Lag, sqlx::Error> {
    let (events, seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(recorded_at))::float8
         FROM (SELECT recorded_at FROM events WHERE (tx, seq) > ($1::text::xid8, $2)
               ORDER BY tx, seq LIMIT $3) behind",
    )
    .bind(position.tx.to_string())
    .bind(position.seq)
    .bind(LAG_COUNT_CAP)
    .fetch_one(conn)
    .await?;
    Ok(Lag {
        events,
        seconds: seconds.unwrap_or(0.0).max(0.0),
    })
}

/// The relay as the database records it.
#[derive(Debug, Clone)]
pub struct Status {
    /// `None`: no relay has run on this database yet.
    pub holder: Option<String>,
    pub position: Position,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub lag: Lag,
}

/// The recorded relay and its lag, from any connection.
pub async fn status(conn: &mut PgConnection) -> Result<Status, sqlx::Error> {
    type Row = (String, i64, String, Option<String>, Option<DateTime<Utc>>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT tx::text, seq, holder, last_error, last_error_at FROM relay_position",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let (position, holder, last_error, last_error_at) = match row {
        Some((tx, seq, holder, error, at)) => (
            Position {
                tx: parse_tx(&tx)?,
                seq,
            },
            Some(holder),
            error,
            at,
        ),
        None => (Position::START, None, None, None),
    };
    Ok(Status {
        holder,
        position,
        last_error,
        last_error_at,
        lag: lag(&mut *conn, position).await?,
    })
}

fn parse_tx(text: &str) -> Result<u64, sqlx::Error> {
    text.parse()
        .map_err(|_| sqlx::Error::Protocol(format!("not a transaction id: {text:?}")))
}
