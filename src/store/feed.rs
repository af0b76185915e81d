//! The global event feed: every event in one total order, read from a position.
//!
//! `seq` alone cannot be that order: identity values are taken when a row is inserted, in one
//! order, and become visible when their transactions commit, in another. A reader that has seen
//! `seq` 12 and asks for `seq > 12` never sees a `seq` 11 that committed after it looked.
//!
//! So an event's position is `(tx, seq)`: the id of the transaction that appended it (`xid8`,
//! filled in by the column's default, migration 0016) and its `seq` within the store. A reader
//! reads only the events of transactions below its snapshot's `xmin`: every transaction below it
//! has ended, and every transaction that begins later gets a larger id, so nothing can ever
//! appear at a position the reader has already passed. A transaction that runs long holds the
//! feed back (every reader stops at its id until it ends) rather than letting readers skip it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;

use super::events::EventRecord;

/// A place in the feed: `<tx>.<seq>`. The feed answers the events after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Position {
    /// The appending transaction's id (`xid8`).
    pub tx: u64,
    pub seq: i64,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position { tx: 0, seq: 0 };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tx, self.seq)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a feed position (`<transaction>.<seq>` as the feed gave it, e.g. 761.42)")]
pub struct BadPosition(String);

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, BadPosition> {
        let bad = || BadPosition(s.to_owned());
        let (tx, seq) = s.split_once('.').ok_or_else(bad)?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(tx) || !digits(seq) {
            return Err(bad());
        }
        Ok(Position {
            tx: tx.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An event in the feed, with its position.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeedEvent {
    /// Where this event is in the feed: pass it as `after` to read what follows it.
    #[schema(value_type = String, example = "761.42")]
    pub position: Position,
    #[serde(flatten)]
    pub event: EventRecord,
}

#[derive(sqlx::FromRow)]
struct FeedRow {
    tx: String,
    #[sqlx(flatten)]
    event: EventRecord,
}

/// A page of the feed.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<FeedEvent>,
    /// Where the next read starts: the last event's position, or, when the page is not full, the
    /// first position not yet readable (so a reader filtering by type moves past what it skipped).
    pub next: Position,
}

/// Up to `limit` events after `after` in feed order, only of `types` when given.
pub async fn read(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
    types: Option<&[String]>,
) -> Result<Page, sqlx::Error> {
    // The horizon first: every transaction below it has ended, so a later statement's snapshot
    // sees all their events, and none can ever appear below it.
    let horizon: String =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            .fetch_one(&mut *conn)
            .await?;
    let tx = after.tx.to_string();
    let rows: Vec<FeedRow> = match types {
        None => {
            sqlx::query_as(
                "SELECT tx::text AS tx, seq, event_id, aggregate_type, aggregate_id, version,
                        event_type, schema_version, payload, metadata, recorded_at
                 FROM events
                 WHERE (tx, seq) > ($1::text::xid8, $2) AND tx < $3::text::xid8
                 ORDER BY tx, seq LIMIT $4",
            )
            .bind(&tx)
            .bind(after.seq)
            .bind(&horizon)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
        Some(types) => {
            sqlx::query_as(
                "SELECT tx::text AS tx, seq, event_id, aggregate_type, aggregate_id, version,
                        event_type, schema_version, payload, metadata, recorded_at
                 FROM events
                 WHERE (tx, seq) > ($1::text::xid8, $2) AND tx < $3::text::xid8
                   AND event_type = ANY($5::text[])
                 ORDER BY tx, seq LIMIT $4",
            )
            .bind(&tx)
            .bind(after.seq)
            .bind(&horizon)
            .bind(limit)
            .bind(types)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let events: Vec<FeedEvent> = rows
        .into_iter()
        .map(|r| {
            Ok(FeedEvent {
                position: Position {
                    tx: parse_xid(&r.tx)?,
                    seq: r.event.seq,
                },
                event: r.event,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let next = match events.last() {
        Some(last) if events.len() as i64 >= limit => last.position,
        // Every readable event after `after` (of these types) is in the page: the reader may
        // move on to the horizon, behind which nothing can appear any more.
        last => {
            let horizon = Position {
                tx: parse_xid(&horizon)?,
                seq: 0,
            };
            horizon.max(last.map_or(after, |e| e.position)).max(after)
        }
    };
    Ok(Page { events, next })
}

fn parse_xid(text: &str) -> Result<u64, sqlx::Error> {
    text.parse()
        .map_err(|_| sqlx::Error::Protocol(format!("not a transaction id: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_order_by_transaction_first() {
        let p: Position = "761.42".parse().unwrap();
        assert_eq!(p, Position { tx: 761, seq: 42 });
        assert_eq!(p.to_string(), "761.42");
        assert!(Position { tx: 5, seq: 100 } < Position { tx: 6, seq: 1 });
        assert_eq!("0.0".parse::<Position>().unwrap(), Position::START);
    }

    #[test]
    fn malformed_positions_are_refused() {
        for bad in [
            "",
            "12",
            "12.",
            ".3",
            "a.1",
            "1.-2",
            "1.2.3",
            " 1.2",
            "99999999999999999999.1",
            "1.99999999999999999999",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }
}
