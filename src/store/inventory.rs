//! Inventory claims: holds and bookings, protected by the `inventory_no_overlap` exclusion constraint.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub enum HoldResult {
    Held {
        hold_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    /// This saga already holds the dates (a replay after a lost commit acknowledgement).
    AlreadyHeld {
        hold_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    /// Another active hold or booking overlaps the stay.
    Unavailable,
}

/// Places a hold. The database decides: an overlapping active claim makes the insert a no-op.
pub async fn hold(
    conn: &mut PgConnection,
    saga_id: Uuid,
    listing_id: &str,
    check_in: NaiveDate,
    check_out: NaiveDate,
    ttl: std::time::Duration,
) -> Result<HoldResult, sqlx::Error> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let inserted: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO inventory_claims (id, saga_id, listing_id, stay, kind, status, expires_at)
         VALUES ($1, $2, $3, daterange($4, $5, '[)'), 'hold', 'active', now() + $6 * interval '1 millisecond')
         ON CONFLICT DO NOTHING
         RETURNING id, expires_at",
    )
    .bind(Uuid::now_v7())
    .bind(saga_id)
    .bind(listing_id)
    .bind(check_in)
    .bind(check_out)
    .bind(ttl_ms as f64)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((hold_id, expires_at)) = inserted {
        return Ok(HoldResult::Held {
            hold_id,
            expires_at,
        });
    }
    let existing: Option<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, expires_at FROM inventory_claims WHERE saga_id = $1 AND status = 'active'",
    )
    .bind(saga_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match existing {
        Some((hold_id, expires_at)) => HoldResult::AlreadyHeld {
            hold_id,
            expires_at: expires_at.unwrap_or_else(Utc::now),
        },
        None => HoldResult::Unavailable,
    })
}

/// Releases the saga's active claim (hold or booking); `None` when there is nothing to release.
pub async fn release(conn: &mut PgConnection, saga_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE inventory_claims SET status = 'released', released_at = now()
         WHERE saga_id = $1 AND status = 'active' RETURNING id",
    )
    .bind(saga_id)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConfirmResult {
    Booked(Uuid),
    /// The hold expired (or was released) before the booking could be confirmed.
    HoldLost,
}

/// Turns the saga's active hold into a booking (no expiry). A hold past its TTL counts as lost even
/// before the expiry sweep marks it.
pub async fn convert_to_booking(
    conn: &mut PgConnection,
    saga_id: Uuid,
) -> Result<ConfirmResult, sqlx::Error> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE inventory_claims SET kind = 'booking', expires_at = NULL
         WHERE saga_id = $1 AND status = 'active' AND (kind = 'booking' OR expires_at > now())
         RETURNING id",
    )
    .bind(saga_id)
    .fetch_optional(conn)
    .await?;
    Ok(id.map_or(ConfirmResult::HoldLost, ConfirmResult::Booked))
}

/// Expires holds past their TTL, returning (saga id, hold id, saga name) of each.
pub async fn expire_holds(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE inventory_claims c SET status = 'expired', released_at = now()
         FROM sagas s
         WHERE c.id IN (SELECT id FROM inventory_claims
                        WHERE status = 'active' AND kind = 'hold' AND expires_at <= now()
                        ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           AND s.id = c.saga_id
         RETURNING c.saga_id, c.id, s.saga_name",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}
