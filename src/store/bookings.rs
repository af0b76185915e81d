//! The bookings projection, updated in the same transaction as the events it is derived from.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::Event;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Booking {
    pub saga_id: Uuid,
    pub listing_id: String,
    pub guest_id: String,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    pub amount: i64,
    pub currency: String,
    /// requested, held, awaiting_authentication, authorized, paid, confirmed, cancelling,
    /// cancelled, failed, needs_attention.
    pub status: String,
    pub payment_intent_id: Option<String>,
    pub confirmation_code: Option<String>,
    pub cancel_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Folds one event into the projection.
pub async fn apply(
    conn: &mut PgConnection,
    saga_id: Uuid,
    event: &Event,
) -> Result<(), sqlx::Error> {
    let q = match event {
        Event::BookingRequested {
            listing_id,
            guest_id,
            check_in,
            check_out,
            amount,
            currency,
        } => sqlx::query(
            "INSERT INTO bookings (saga_id, listing_id, guest_id, check_in, check_out, amount, currency, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'requested')",
        )
        .bind(saga_id)
        .bind(listing_id)
        .bind(guest_id)
        .bind(check_in)
        .bind(check_out)
        .bind(amount)
        .bind(currency),
        Event::InventoryHeld { .. } => status(saga_id, "held"),
        Event::PaymentActionRequired {
            payment_intent_id, ..
        } => sqlx::query(
            "UPDATE bookings SET status = 'awaiting_authentication', payment_intent_id = $2, updated_at = now()
             WHERE saga_id = $1",
        )
        .bind(saga_id)
        .bind(payment_intent_id),
        Event::PaymentAuthorized {
            payment_intent_id, ..
        } => sqlx::query(
            "UPDATE bookings SET status = 'authorized', payment_intent_id = $2, updated_at = now()
             WHERE saga_id = $1",
        )
        .bind(saga_id)
        .bind(payment_intent_id),
        Event::PaymentCaptured { .. } => status(saga_id, "paid"),
        Event::BookingConfirmed {
            confirmation_code, ..
        } => sqlx::query(
            "UPDATE bookings SET status = 'confirmed', confirmation_code = $2, updated_at = now()
             WHERE saga_id = $1",
        )
        .bind(saga_id)
        .bind(confirmation_code),
        Event::CompensationStarted { .. } => status(saga_id, "cancelling"),
        Event::BookingCancelled { reason } => sqlx::query(
            "UPDATE bookings SET status = 'cancelled', cancel_reason = $2, updated_at = now()
             WHERE saga_id = $1",
        )
        .bind(saga_id)
        .bind(reason),
        Event::SagaCompensated { reason } => sqlx::query(
            "UPDATE bookings SET status = CASE WHEN cancel_reason IS NOT NULL THEN 'cancelled' ELSE 'failed' END,
                                 cancel_reason = COALESCE(cancel_reason, $2), updated_at = now()
             WHERE saga_id = $1",
        )
        .bind(saga_id)
        .bind(reason),
        Event::SagaStuck { .. } => status(saga_id, "needs_attention"),
        Event::NotificationSent { .. }
        | Event::StepFailed { .. }
        | Event::InventoryReleased { .. }
        | Event::PaymentVoided { .. }
        | Event::PaymentRefunded { .. }
        | Event::SagaCompleted {}
        | Event::PaymentReceived { .. }
        | Event::DisputeOpened { .. }
        | Event::DisputeClosed { .. } => return Ok(()),
    };
    q.execute(conn).await?;
    Ok(())
}

fn status(
    saga_id: Uuid,
    status: &'static str,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query("UPDATE bookings SET status = $2, updated_at = now() WHERE saga_id = $1")
        .bind(saga_id)
        .bind(status)
}

pub async fn get(conn: &mut PgConnection, saga_id: Uuid) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bookings WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_optional(conn)
        .await
}
