//! Local actions on the inventory and the booking: hold, release, confirm, cancel.

use std::time::Duration;

use rand::Rng;
use serde_json::json;
use sqlx::PgConnection;

use super::StepCtx;
use crate::engine::outcome::Outcome;
use crate::events::Event;
use crate::store::inventory::{self, ConfirmResult, HoldResult};

/// How long a hold lasts when the step sets no `hold_ttl`.
pub const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(30 * 60);

pub async fn hold(conn: &mut PgConnection, ctx: &StepCtx<'_>) -> Result<Outcome, sqlx::Error> {
    let b = ctx.input;
    let ttl = ctx.duration_param("hold_ttl", DEFAULT_HOLD_TTL);
    let result = inventory::hold(
        conn,
        ctx.saga_id,
        &b.listing_id,
        b.check_in,
        b.check_out,
        ttl,
    )
    .await?;
    Ok(match result {
        HoldResult::Held {
            hold_id,
            expires_at,
        } => Outcome::done(
            json!({ "hold_id": hold_id, "expires_at": expires_at }),
            vec![Event::InventoryHeld {
                hold_id,
                listing_id: b.listing_id.clone(),
                check_in: b.check_in,
                check_out: b.check_out,
                expires_at,
            }],
        ),
        HoldResult::AlreadyHeld {
            hold_id,
            expires_at,
        } => Outcome::done(
            json!({ "hold_id": hold_id, "expires_at": expires_at }),
            vec![],
        ),
        HoldResult::Unavailable => Outcome::fail("dates_unavailable", false),
    })
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
    match inventory::convert_to_booking(conn, ctx.saga_id).await? {
        ConfirmResult::HoldLost => Ok(Outcome::fail("hold_expired", false)),
        ConfirmResult::Booked(_) => {
            let code = confirmation_code();
            let b = ctx.input;
            Ok(Outcome::done(
                json!({ "confirmation_code": code }),
                vec![Event::BookingConfirmed {
                    confirmation_code: code,
                    listing_id: b.listing_id.clone(),
                    check_in: b.check_in,
                    check_out: b.check_out,
                }],
            ))
        }
    }
}

/// Undoes a confirmation: the booking is cancelled (the inventory goes back when the hold's own
/// compensation releases it).
pub async fn cancel(_conn: &mut PgConnection, ctx: &StepCtx<'_>) -> Result<Outcome, sqlx::Error> {
    Ok(Outcome::done(
        json!({}),
        vec![Event::BookingCancelled {
            reason: ctx.failure_reason.unwrap_or("compensation").to_owned(),
        }],
    ))
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
