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

/// The `INSERT … SELECT` of the row a `BookingRequested` event creates, gated by `from` (a FROM
/// item such as the CTE that inserted the saga); `id` is the saga id's SQL, `status` the SQL of
/// its status (`'requested'`, or what steps recorded with the start made it) and the event's six
/// fields are `$first` onwards ([`bind_requested`]). Every later event only updates the row
/// ([`Change`]).
pub(crate) fn insert_requested_sql(id: &str, first: usize, from: &str, status: &str) -> String {
    let [listing, guest, check_in, check_out, amount, currency] = super::placeholders(first);
    format!(
        "INSERT INTO bookings (saga_id, listing_id, guest_id, check_in, check_out, amount, currency, status)
         SELECT {id}, {listing}::text, {guest}::text, {check_in}::date, {check_out}::date, {amount}::int8,
                {currency}::text, {status} FROM {from}"
    )
}

/// Binds the six parameters of [`insert_requested_sql`] from a `BookingRequested` event (anything
/// else binds NULLs, which the table refuses).
pub(crate) fn bind_requested<'q>(q: super::Query<'q>, event: &'q Event) -> super::Query<'q> {
    match event {
        Event::BookingRequested {
            listing_id,
            guest_id,
            check_in,
            check_out,
            amount,
            currency,
        } => q
            .bind(listing_id)
            .bind(guest_id)
            .bind(check_in)
            .bind(check_out)
            .bind(amount)
            .bind(currency),
        _ => q
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<NaiveDate>)
            .bind(None::<NaiveDate>)
            .bind(None::<i64>)
            .bind(None::<&str>),
    }
}

/// What a run of events changes in a booking: the projection's fold, computed here so that any
/// number of events is one `UPDATE` (or one part of the statement that records a step).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    pub status: Option<&'static str>,
    /// `SagaCompensated` without a cancel reason in these events: `cancelled` when the row already
    /// has a cancel reason (a guest cancellation), else `failed`.
    pub compensated: bool,
    pub payment_intent_id: Option<String>,
    pub confirmation_code: Option<String>,
    /// Replaces the row's cancel reason.
    pub cancel_reason: Option<String>,
    /// Becomes the cancel reason when the row has none.
    pub default_cancel_reason: Option<String>,
}

impl Change {
    /// Folds `events`, in order, as if each updated the row in turn.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut c = Self::default();
        for e in events {
            c.fold(e);
        }
        c
    }

    fn set(&mut self, status: &'static str) {
        self.status = Some(status);
        self.compensated = false;
    }

    fn fold(&mut self, event: &Event) {
        match event {
            Event::InventoryHeld { .. } => self.set("held"),
            Event::PaymentActionRequired {
                payment_intent_id, ..
            } => {
                self.set("awaiting_authentication");
                self.payment_intent_id = Some(payment_intent_id.clone());
            }
            Event::PaymentAuthorized {
                payment_intent_id, ..
            } => {
                self.set("authorized");
                self.payment_intent_id = Some(payment_intent_id.clone());
            }
            Event::PaymentCaptured { .. } => self.set("paid"),
            Event::BookingConfirmed {
                confirmation_code, ..
            } => {
                self.set("confirmed");
                self.confirmation_code = Some(confirmation_code.clone());
            }
            Event::CompensationStarted { .. } => self.set("cancelling"),
            Event::BookingCancelled { reason } => {
                self.set("cancelled");
                self.cancel_reason = Some(reason.clone());
            }
            Event::SagaCompensated { reason } => {
                if self.cancel_reason.is_some() {
                    self.set("cancelled");
                } else {
                    self.status = None;
                    self.compensated = true;
                    self.default_cancel_reason
                        .get_or_insert_with(|| reason.clone());
                }
            }
            Event::SagaStuck { .. } => self.set("needs_attention"),
            // Created by `insert_requested`; the rest do not show in the projection.
            Event::BookingRequested { .. }
            | Event::NotificationSent { .. }
            | Event::StepFailed { .. }
            | Event::InventoryReleased { .. }
            | Event::PaymentVoided { .. }
            | Event::PaymentRefunded { .. }
            | Event::SagaCompleted {}
            | Event::PaymentReceived { .. }
            | Event::DisputeOpened { .. }
            | Event::DisputeClosed { .. } => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The projection update of a [`Change`], with `{id}`, `{status}`, `{compensated}`, `{pi}`,
/// `{code}`, `{reason}` and `{default_reason}` standing for its parameters.
pub(crate) const UPDATE_TEMPLATE: &str = "UPDATE bookings SET
        status = CASE WHEN {compensated} THEN
                      CASE WHEN cancel_reason IS NOT NULL THEN 'cancelled' ELSE 'failed' END
                 ELSE COALESCE({status}, status) END,
        payment_intent_id = COALESCE({pi}, payment_intent_id),
        confirmation_code = COALESCE({code}, confirmation_code),
        cancel_reason = COALESCE({reason}, cancel_reason, {default_reason}),
        updated_at = now()
    WHERE saga_id = {id}";

/// Fills [`UPDATE_TEMPLATE`]'s parameters with `$first`, `$first + 1`, … in the order
/// status, compensated, payment intent, code, reason, default reason; `id` is the saga id's SQL.
pub(crate) fn update_sql(id: &str, first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    UPDATE_TEMPLATE
        .replace("{id}", id)
        .replace("{status}", &format!("{}::text", p(0)))
        .replace("{compensated}", &format!("{}::bool", p(1)))
        .replace("{pi}", &format!("{}::text", p(2)))
        .replace("{code}", &format!("{}::text", p(3)))
        .replace("{reason}", &format!("{}::text", p(4)))
        .replace("{default_reason}", &format!("{}::text", p(5)))
}

impl Change {
    /// Binds the six parameters of [`update_sql`], in order.
    pub(crate) fn bind<'q>(&'q self, q: super::Query<'q>) -> super::Query<'q> {
        q.bind(self.status)
            .bind(self.compensated)
            .bind(self.payment_intent_id.as_deref())
            .bind(self.confirmation_code.as_deref())
            .bind(self.cancel_reason.as_deref())
            .bind(self.default_cancel_reason.as_deref())
    }
}

/// Folds `events` into the projection in one update (none when they change nothing). The row
/// itself is created with the saga (`sagas::start`).
pub async fn apply(
    conn: &mut PgConnection,
    saga_id: Uuid,
    events: &[&Event],
) -> Result<(), sqlx::Error> {
    let change = Change::of(events.iter().copied());
    if change.is_empty() {
        return Ok(());
    }
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| update_sql("$1", 2));
    change
        .bind(sqlx::query(sqlx::AssertSqlSafe(SQL.as_str())).bind(saga_id))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, saga_id: Uuid) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bookings WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_optional(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorized(pi: &str) -> Event {
        Event::PaymentAuthorized {
            payment_intent_id: pi.into(),
            amount: 100,
            currency: "eur".into(),
        }
    }

    #[test]
    fn events_that_do_not_show_change_nothing() {
        let c = Change::of(&[
            Event::SagaCompleted {},
            Event::NotificationSent { status_code: 204 },
        ]);
        assert!(c.is_empty());
    }

    #[test]
    fn the_last_status_wins_and_fields_accumulate() {
        let c = Change::of(&[
            authorized("pi_1"),
            Event::PaymentCaptured {
                payment_intent_id: "pi_1".into(),
                amount: 100,
                currency: "eur".into(),
            },
            Event::BookingConfirmed {
                confirmation_code: "BK-ABCDEFGH".into(),
                listing_id: "l".into(),
                check_in: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                check_out: NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
            },
        ]);
        assert_eq!(c.status, Some("confirmed"));
        assert_eq!(c.payment_intent_id.as_deref(), Some("pi_1"));
        assert_eq!(c.confirmation_code.as_deref(), Some("BK-ABCDEFGH"));
        assert!(!c.compensated);
    }

    #[test]
    fn compensated_alone_leaves_the_status_to_the_rows_cancel_reason() {
        let c = Change::of(&[Event::SagaCompensated {
            reason: "card_declined".into(),
        }]);
        assert!(c.compensated);
        assert_eq!(c.status, None);
        assert_eq!(c.cancel_reason, None);
        assert_eq!(c.default_cancel_reason.as_deref(), Some("card_declined"));
    }

    #[test]
    fn compensated_after_a_cancellation_in_the_same_run_is_cancelled() {
        let c = Change::of(&[
            Event::BookingCancelled {
                reason: "guest_cancelled".into(),
            },
            Event::SagaCompensated {
                reason: "guest_cancelled".into(),
            },
        ]);
        assert_eq!(c.status, Some("cancelled"));
        assert!(!c.compensated);
        assert_eq!(c.cancel_reason.as_deref(), Some("guest_cancelled"));
    }

    #[test]
    fn a_status_after_compensated_overrides_it() {
        let c = Change::of(&[
            Event::SagaCompensated { reason: "x".into() },
            Event::SagaStuck {
                step: "s".into(),
                error: "e".into(),
            },
        ]);
        assert_eq!(c.status, Some("needs_attention"));
        assert!(!c.compensated);
    }
}
