//! Actions of a booking's date/price change (`sagas/booking_change.toml`): the swap of the
//! booking's claim onto the nights the change holds, and the refund of a lower price. The hold,
//! the difference's authorization and capture, and their compensations are the booking saga's own
//! actions: a change's input says what it charges ([`BookingInput::to_charge`]).
//!
//! [`BookingInput::to_charge`]: crate::domain::BookingInput::to_charge

use serde_json::json;
use sqlx::PgConnection;

use super::StepCtx;
use super::payment::transient_or_fail;
use crate::engine::outcome::Outcome;
use crate::events::{Event, NewEvent};
use crate::store::inventory::{self, SwapResult};
use crate::store::{bookings, events, sagas};
use crate::stripe::client::StripeClient;

/// Gives the booking the change's nights and price in the recording transaction: the change's
/// hold is released and the booking's claim moves onto its nights (the old nights are free from
/// this commit on, never before), and `BookingChanged` is recorded on the booking's aggregate with
/// its projection. Fails, writing nothing, when the hold has lapsed or the booking is no longer
/// as the change found it (confirmed, with the dates and price it had).
pub async fn swap(conn: &mut PgConnection, ctx: &StepCtx<'_>) -> Result<Outcome, sqlx::Error> {
    let b = ctx.input;
    let Some(change) = &b.change else {
        return Ok(Outcome::fail(
            "booking.swap runs only in a change saga (its input names the booking)",
            false,
        ));
    };
    let booking_saga = match inventory::swap_claim(
        conn,
        ctx.saga_id,
        change.booking_id,
        (change.previous_check_in, change.previous_check_out),
        change.previous_amount,
        (b.check_in, b.check_out),
    )
    .await?
    {
        SwapResult::Swapped { booking_saga } => booking_saga,
        SwapResult::HoldLost => return Ok(Outcome::fail("hold_expired", false)),
        SwapResult::BookingChanged => {
            return Ok(Outcome::fail(
                "booking_changed: the booking is no longer confirmed with the dates and price the change started from",
                false,
            ));
        }
    };
    let event = Event::BookingChanged {
        change_id: ctx.saga_id.0,
        check_in: b.check_in,
        check_out: b.check_out,
        amount: b.amount,
        previous_check_in: change.previous_check_in,
        previous_check_out: change.previous_check_out,
        previous_amount: change.previous_amount,
    };
    let version = sagas::reserve_event_versions(conn, change.booking_id, 1).await?;
    let recorded = NewEvent {
        causation_id: Some(ctx.saga_id.to_string()),
        step: Some(ctx.step.name.clone()),
        attempt: Some(ctx.attempt),
        ..NewEvent::from(event)
    };
    events::append(
        conn,
        &booking_saga,
        change.booking_id.0,
        version,
        std::slice::from_ref(&recorded),
    )
    .await?;
    bookings::apply(conn, change.booking_id, &[&recorded.event]).await?;
    Ok(Outcome::done(
        json!({ "swapped": true, "booking_id": change.booking_id }),
        vec![],
    ))
}

/// Refunds what a lower price gives back ([`BookingInput::to_refund`]) from the booking's
/// PaymentIntent, under a key stable across retries; nothing when the price did not fall.
///
/// [`BookingInput::to_refund`]: crate::domain::BookingInput::to_refund
pub async fn refund_difference(stripe: &StripeClient, ctx: &StepCtx<'_>) -> Outcome {
    let amount = ctx.input.to_refund();
    let pi = ctx
        .input
        .change
        .as_ref()
        .and_then(|c| c.payment_intent_id.clone());
    let (Some(pi), true) = (pi, amount > 0) else {
        return Outcome::done(json!({ "refunded": false }), vec![]);
    };
    match stripe
        .refund_amount(&pi, amount, &ctx.idempotency_key("refund_difference"))
        .await
    {
        Ok(r) => Outcome::done(
            json!({ "refund_id": r.id, "amount": r.amount, "refunded": true }),
            vec![Event::PaymentRefunded {
                payment_intent_id: pi,
                refund_id: r.id,
                amount: r.amount,
            }],
        ),
        Err(e) => transient_or_fail(e, "refund the difference"),
    }
}
