//! Inventory claims: holds, bookings and host blocks, protected by the `inventory_no_overlap`
//! exclusion constraint.

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use super::stmt::{Binds, Param, Statement, Text};
use crate::domain::SagaId;
use crate::text_enum::text_enum;

text_enum! {
    /// Whether a claim holds its nights (`inventory_claims.status`).
    #[derive(ToSchema)]
    pub enum ClaimStatus {
        /// It holds them.
        Active = "active",
        /// Given back: a released hold or booking, a removed block.
        Released = "released",
        /// A hold whose time ran out.
        Expired = "expired",
    }
}

text_enum! {
    /// What holds a listing's nights (`inventory_claims.kind`).
    pub enum ClaimKind {
        /// A booking saga's hold, until payment.
        Hold = "hold",
        /// A confirmed booking.
        Booking = "booking",
        /// The host's block.
        Block = "block",
    }
}

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

/// A hold to place. Its id and expiry are chosen before the statement (the expiry to the
/// microsecond, as the column keeps it), so that a hold placed by a statement that also records
/// its outcome (`progress::start`) carries the same values in its event as in its row.
#[derive(Debug, Clone, PartialEq)]
pub struct NewHold<'a> {
    pub id: Uuid,
    pub saga_id: SagaId,
    /// The booking the hold is for: the saga's own, or the booking a change saga changes (whose
    /// claims it may overlap).
    pub booking_id: SagaId,
    pub listing_id: &'a str,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    pub expires_at: DateTime<Utc>,
}

impl<'a> NewHold<'a> {
    /// A new hold of `listing_id` for the stay, expiring `ttl` from `now`.
    pub fn new(
        saga_id: SagaId,
        listing_id: &'a str,
        (check_in, check_out): (NaiveDate, NaiveDate),
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Self {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let expires_at = now
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Self {
            id: Uuid::now_v7(),
            saga_id,
            booking_id: saga_id,
            listing_id,
            check_in,
            check_out,
            expires_at: expires_at.trunc_subsecs(6),
        }
    }

    /// The same hold, for `booking` (a change saga's hold of a booking's new nights).
    pub fn for_booking(self, booking: SagaId) -> Self {
        Self {
            booking_id: booking,
            ..self
        }
    }
}

/// The `INSERT` of a [`NewHold`]: a statement part. An overlapping active claim (the
/// `inventory_no_overlap` exclusion constraint), or an earlier claim of the same saga, makes it
/// insert nothing: the database decides, concurrent holds included.
pub(crate) struct PlaceHold {
    id: Param,
    booking: Param,
    listing: Param,
    check_in: Param,
    check_out: Param,
    expires_at: Param,
}

impl PlaceHold {
    pub(crate) fn new(b: &mut Binds, hold: &NewHold<'_>) -> Self {
        Self {
            id: b.push(hold.id),
            booking: b.push(hold.booking_id),
            listing: b.push(hold.listing_id),
            check_in: b.push(hold.check_in),
            check_out: b.push(hold.check_out),
            expires_at: b.push(hold.expires_at),
        }
    }

    /// The insert for the saga whose id is `saga_id`, written only when `filter` (a `WHERE`
    /// clause, or `""`) holds.
    pub(crate) fn sql(&self, saga_id: Param, filter: &str) -> String {
        let Self {
            id,
            booking,
            listing,
            check_in,
            check_out,
            expires_at,
        } = self;
        format!(
            "INSERT INTO inventory_claims (id, saga_id, booking_id, listing_id, stay, kind, status, expires_at)
         SELECT {id}::uuid, {saga_id}, {booking}::uuid, {listing}::text, daterange({check_in}::date, {check_out}::date, '[)'),
                'hold', 'active', {expires_at}::timestamptz {filter}
         ON CONFLICT DO NOTHING
         RETURNING id, expires_at"
        )
    }
}

/// The statement of [`hold`].
pub(super) fn hold_statement(new: &NewHold<'_>) -> Statement {
    static TEXT: Text = Text::new();
    let mut b = Binds::new();
    let saga_id = b.push(new.saga_id);
    let hold = PlaceHold::new(&mut b, new);
    TEXT.with(b, || hold.sql(saga_id, ""))
}

/// Places a hold. The database decides: an overlapping active claim makes the insert a no-op.
pub async fn hold(conn: &mut PgConnection, new: &NewHold<'_>) -> Result<HoldResult, sqlx::Error> {
    let inserted = hold_statement(new)
        .query()?
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = inserted {
        return Ok(HoldResult::Held {
            hold_id: row.try_get(0)?,
            expires_at: row.try_get(1)?,
        });
    }
    let existing: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, COALESCE(expires_at, now()) FROM inventory_claims
         WHERE saga_id = $1 AND status = 'active'",
    )
    .bind(new.saga_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match existing {
        Some((hold_id, expires_at)) => HoldResult::AlreadyHeld {
            hold_id,
            expires_at,
        },
        None => HoldResult::Unavailable,
    })
}

/// Releases the saga's active claim (hold or booking); `None` when there is nothing to release.
pub async fn release(
    conn: &mut PgConnection,
    saga_id: SagaId,
) -> Result<Option<Uuid>, sqlx::Error> {
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

/// The `UPDATE` that turns the active hold of the saga whose id is `saga_id` into a booking,
/// returning the claim's id (none when the hold is lost); `and` adds conditions (`" AND …"`, or
/// `""`). A statement part with no values of its own.
pub(crate) fn convert_to_booking_sql(saga_id: Param, and: &str) -> String {
    format!(
        "UPDATE inventory_claims SET kind = 'booking', expires_at = NULL
         WHERE saga_id = {saga_id} AND status = 'active' AND (kind = 'booking' OR expires_at > now()){and}
         RETURNING id"
    )
}

/// Extends the saga's live hold to `until` (a timestamp parameter; NULL: nothing), only when
/// `gate` (a FROM item) yields a row. A hold already past its TTL stays lost.
pub(crate) fn extend_hold_sql(saga_id: Param, until: Param, gate: &str) -> String {
    format!(
        "UPDATE inventory_claims SET expires_at = {until}::timestamptz
         FROM {gate}
         WHERE {until}::timestamptz IS NOT NULL AND saga_id = {saga_id} AND status = 'active'
           AND kind = 'hold' AND expires_at > now() AND expires_at < {until}::timestamptz
         RETURNING 1"
    )
}

/// The statement of [`convert_to_booking`].
pub(super) fn convert_to_booking_statement(saga_id: SagaId) -> Statement {
    static TEXT: Text = Text::new();
    let mut b = Binds::new();
    let id = b.push(saga_id);
    TEXT.with(b, || convert_to_booking_sql(id, ""))
}

/// Turns the saga's active hold into a booking (no expiry). A hold past its TTL counts as lost even
/// before the expiry sweep marks it.
pub async fn convert_to_booking(
    conn: &mut PgConnection,
    saga_id: SagaId,
) -> Result<ConfirmResult, sqlx::Error> {
    let id: Option<Uuid> = convert_to_booking_statement(saga_id)
        .query()?
        .fetch_optional(conn)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    Ok(id.map_or(ConfirmResult::HoldLost, ConfirmResult::Booked))
}

/// Expires holds past their TTL, returning (saga id, hold id, saga name) of each.
pub async fn expire_holds(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(SagaId, Uuid, String)>, sqlx::Error> {
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

/// Pairs of active claims (holds or bookings) of one listing whose stays overlap: zero as long as
/// the exclusion constraint holds (`sagad demo` shows it).
pub async fn count_overlapping_active(pool: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM inventory_claims a JOIN inventory_claims b
           ON a.listing_id = b.listing_id AND a.id < b.id AND a.stay && b.stay
         WHERE a.status = 'active' AND b.status = 'active'",
    )
    .fetch_one(pool)
    .await
}

/// A host block of a listing's nights `[from, to)`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Block {
    pub id: Uuid,
    pub listing_id: String,
    /// First blocked night.
    pub from: NaiveDate,
    /// The day after the last blocked night.
    pub to: NaiveDate,
    pub reason: String,
    /// The API token's name that placed it.
    pub created_by: String,
    /// `active`, or `released` once removed.
    pub status: ClaimStatus,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
}

/// A block to place.
#[derive(Debug, Clone)]
pub struct NewBlock<'a> {
    pub id: Uuid,
    pub listing_id: &'a str,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub reason: &'a str,
    pub created_by: &'a str,
}

/// Places a block; `None` when an active hold, booking or block overlaps it (the exclusion
/// constraint decides, concurrent claims included).
pub async fn insert_block(
    conn: &mut PgConnection,
    b: &NewBlock<'_>,
) -> Result<Option<Block>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO inventory_claims (id, saga_id, booking_id, listing_id, stay, kind, status, reason, created_by)
         VALUES ($1, NULL, $1, $2, daterange($3, $4, '[)'), 'block', 'active', $5, $6)
         ON CONFLICT DO NOTHING
         RETURNING id, listing_id, lower(stay) AS \"from\", upper(stay) AS \"to\", reason, created_by,
                   status, created_at, released_at",
    )
    .bind(b.id)
    .bind(b.listing_id)
    .bind(b.from)
    .bind(b.to)
    .bind(b.reason)
    .bind(b.created_by)
    .fetch_optional(conn)
    .await
}

/// Removes the listing's active block `id`; `None` when it has no such active block.
pub async fn release_block(
    conn: &mut PgConnection,
    listing_id: &str,
    id: Uuid,
) -> Result<Option<Block>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE inventory_claims SET status = 'released', released_at = now()
         WHERE id = $1 AND listing_id = $2 AND kind = 'block' AND status = 'active'
         RETURNING id, listing_id, lower(stay) AS \"from\", upper(stay) AS \"to\", reason, created_by,
                   status, created_at, released_at",
    )
    .bind(id)
    .bind(listing_id)
    .fetch_optional(conn)
    .await
}

/// The listing's block `id`, whatever its status.
pub async fn get_block(
    conn: &mut PgConnection,
    listing_id: &str,
    id: Uuid,
) -> Result<Option<Block>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, listing_id, lower(stay) AS \"from\", upper(stay) AS \"to\", reason, created_by,
                status, created_at, released_at
         FROM inventory_claims WHERE id = $1 AND listing_id = $2 AND kind = 'block'",
    )
    .bind(id)
    .bind(listing_id)
    .fetch_optional(conn)
    .await
}

/// An active claim on a listing's nights `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActiveClaim {
    pub id: Uuid,
    pub kind: ClaimKind,
    /// The booking's saga (holds and bookings).
    pub saga_id: Option<SagaId>,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// The listing's active claims that overlap `[from, to)`, in date order (they never overlap each
/// other). Served by the exclusion constraint's GiST index.
pub async fn active_claims(
    conn: &mut PgConnection,
    listing_id: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<ActiveClaim>, sqlx::Error> {
    sqlx::query_as(ACTIVE_CLAIMS)
        .bind(listing_id)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await
}

/// The statement of [`active_claims`].
pub(super) const ACTIVE_CLAIMS: &str =
    "SELECT id, kind, saga_id, lower(stay) AS \"from\", upper(stay) AS \"to\"
         FROM inventory_claims
         WHERE listing_id = $1 AND status = 'active' AND stay && daterange($2, $3, '[)')
         ORDER BY lower(stay)";

/// The plan PostgreSQL chooses for [`active_claims`]'s statement (`EXPLAIN`, one line per row), as
/// the benchmark prints it.
pub async fn explain_active_claims(
    conn: &mut PgConnection,
    listing_id: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<String, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("EXPLAIN {ACTIVE_CLAIMS}"));
    let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(listing_id)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await?;
    Ok(lines.join("\n"))
}

/// What [`swap_claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapResult {
    /// The booking's claim is on the new nights; the change's hold is released. `booking_saga`:
    /// the booking's saga name (its events' aggregate type).
    Swapped { booking_saga: String },
    /// The change's hold lapsed (or was released): the new nights were not kept.
    HoldLost,
    /// The booking is no longer confirmed with its claim, the stay and the price the change
    /// started from.
    BookingChanged,
}

/// Swaps booking `booking`'s claim for the hold of change saga `change`, in the caller's
/// transaction: the hold is released and the booking's own claim takes its nights, so the old
/// nights stay the booking's until this commits, and the new ones never were anyone else's (the
/// hold kept them; the exclusion constraint lets one booking's claims overlap). Checks first,
/// locking the rows it then writes; writes nothing unless both hold.
pub async fn swap_claim(
    conn: &mut PgConnection,
    change: SagaId,
    booking: SagaId,
    previous: (NaiveDate, NaiveDate),
    previous_amount: i64,
    new: (NaiveDate, NaiveDate),
) -> Result<SwapResult, sqlx::Error> {
    let found: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT c.id, s.saga_name
         FROM bookings b
         JOIN sagas s ON s.id = b.saga_id
         JOIN inventory_claims c ON c.saga_id = b.saga_id AND c.status = 'active' AND c.kind = 'booking'
         WHERE b.saga_id = $1 AND b.status = 'confirmed' AND b.check_in = $2 AND b.check_out = $3
           AND b.amount = $4
           AND c.stay = daterange($2, $3, '[)')
         FOR UPDATE OF b, c",
    )
    .bind(booking)
    .bind(previous.0)
    .bind(previous.1)
    .bind(previous_amount)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((claim, booking_saga)) = found else {
        return Ok(SwapResult::BookingChanged);
    };
    let hold: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM inventory_claims
         WHERE saga_id = $1 AND booking_id = $2 AND status = 'active' AND kind = 'hold'
           AND expires_at > now() AND stay = daterange($3, $4, '[)')
         FOR UPDATE",
    )
    .bind(change)
    .bind(booking)
    .bind(new.0)
    .bind(new.1)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(hold) = hold else {
        return Ok(SwapResult::HoldLost);
    };
    sqlx::query(
        "UPDATE inventory_claims SET status = 'released', released_at = now() WHERE id = $1",
    )
    .bind(hold)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE inventory_claims SET stay = daterange($2, $3, '[)') WHERE id = $1")
        .bind(claim)
        .bind(new.0)
        .bind(new.1)
        .execute(&mut *conn)
        .await?;
    Ok(SwapResult::Swapped { booking_saga })
}
