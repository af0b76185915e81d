//! Local actions on the inventory and the booking: hold, release, confirm, cancel.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StepCtx;
use crate::engine::outcome::Outcome;
use crate::events::Event;
use crate::store::inventory::{self, ConfirmResult, HoldResult, NewHold};

/// How long a hold lasts when the step sets no `hold_ttl`.
pub const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(30 * 60);

pub async fn hold(conn: &mut PgConnection, ctx: &StepCtx<'_>) -> Result<Outcome, sqlx::Error> {
    let new = new_hold(ctx, ctx.now);
    Ok(match inventory::hold(conn, &new).await? {
        HoldResult::Held {
            hold_id,
            expires_at,
        } => held(ctx, hold_id, expires_at, true),
        HoldResult::AlreadyHeld {
            hold_id,
            expires_at,
        } => held(ctx, hold_id, expires_at, false),
        HoldResult::Unavailable => Outcome::fail("dates_unavailable", false),
    })
}

/// The hold the step places when run at `now`: the saga's stay, for the step's `hold_ttl`.
fn new_hold<'a>(ctx: &StepCtx<'a>, now: DateTime<Utc>) -> NewHold<'a> {
    let b = ctx.input;
    let ttl = ctx.duration_param("hold_ttl", DEFAULT_HOLD_TTL);
    NewHold::new(
        ctx.saga_id,
        &b.listing_id,
        (b.check_in, b.check_out),
        now,
        ttl,
    )
    .for_booking(b.booking_id(ctx.saga_id))
}

/// The hold step's outcome once the hold is in place; `placed`: by this attempt (an earlier one's
/// placing was recorded with its own event).
fn held(ctx: &StepCtx<'_>, hold_id: Uuid, expires_at: DateTime<Utc>, placed: bool) -> Outcome {
    let b = ctx.input;
    let events = if placed {
        vec![Event::InventoryHeld {
            hold_id,
            listing_id: b.listing_id.clone(),
            check_in: b.check_in,
            check_out: b.check_out,
            expires_at,
        }]
    } else {
        vec![]
    };
    Outcome::done(
        json!({ "hold_id": hold_id, "expires_at": expires_at }),
        events,
    )
}

/// The hold step planned ahead at `now`: the hold to place and the step's outcome once it is
/// placed, for a statement that places it and records that outcome together, or neither
/// (`store::progress::start`).
pub fn plan_hold<'a>(ctx: &StepCtx<'a>, now: DateTime<Utc>) -> (NewHold<'a>, Outcome) {
    let new = new_hold(ctx, now);
    let outcome = held(ctx, new.id, new.expires_at, true);
    (new, outcome)
}

pub async fn release(conn: &mut PgConnection, ctx: &StepCtx<'_>) -> Result<Outcome, sqlx::Error> {
    let events = match inventory::release(conn, ctx.saga_id).await? {
        Some(hold_id) => vec![Event::InventoryReleased {
            hold_id,
            reason: ctx.failure_reason.unwrap_or("compensation").to_owned(),
        }],
        // Expired already, or never held: nothing to give back.
        None => vec![],
    };
    Ok(Outcome::done(json!({}), events))
}

pub async fn confirm(conn: &mut PgConnection, ctx: &StepCtx<'_>) -> Result<Outcome, sqlx::Error> {
    Ok(
        match inventory::convert_to_booking(conn, ctx.saga_id).await? {
            ConfirmResult::HoldLost => Outcome::fail("hold_expired", false),
            ConfirmResult::Booked(_) => confirmed(ctx),
        },
    )
}

/// The confirm step's outcome once the hold is a booking.
pub fn confirmed(ctx: &StepCtx<'_>) -> Outcome {
    let code = confirmation_code();
    let b = ctx.input;
    Outcome::done(
        json!({ "confirmation_code": code }),
        vec![Event::BookingConfirmed {
            confirmation_code: code,
            listing_id: b.listing_id.clone(),
            check_in: b.check_in,
            check_out: b.check_out,
        }],
    )
}

/// Undoes a confirmation: the booking is cancelled (the inventory goes back when the hold's own
/// compensation releases it).
pub async fn cancel(_conn: &mut PgConnection, ctx: &StepCtx<'_>) -> Result<Outcome, sqlx::Error> {
    Ok(cancelled(ctx))
}

/// The cancel step's outcome: it changes nothing in the database but the events it records.
pub fn cancelled(ctx: &StepCtx<'_>) -> Outcome {
    Outcome::done(json!({}), vec![ctx.cancelled_event()])
}

/// `BK-` and eight characters without look-alikes (no 0/O, 1/I/L); unique in the bookings table.
fn confirmation_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    let code: String = (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("BK-{code}")
}
