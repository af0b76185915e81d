//! The bookings projection, updated in the same transaction as the events it is derived from.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;
use utoipa::ToSchema;

use super::stmt::{Binds, Param, Statement, Text};
use crate::domain::{CancellationPolicy, SagaId};
use crate::engine::model::StepPhase;
use crate::engine::operator::Resolution;
use crate::events::{CancelledBy, Event, Refund};

/// A booking's status when its saga starts with nothing run ahead.
pub const REQUESTED: &str = "requested";
/// A booking whose saga is parked as `stuck`.
const NEEDS_ATTENTION: &str = "needs_attention";

crate::text_enum::text_enum! {
    /// Every status the projection gives a booking (the fold below and the start statement).
    #[derive(ToSchema)]
    pub enum BookingStatus {
        Requested = "requested",
        Held = "held",
        AwaitingAuthentication = "awaiting_authentication",
        Authorized = "authorized",
        Paid = "paid",
        Confirmed = "confirmed",
        Cancelling = "cancelling",
        Cancelled = "cancelled",
        Failed = "failed",
        NeedsAttention = "needs_attention",
        /// A chargeback is open (`DisputeOpened`).
        Disputed = "disputed",
        /// The chargeback was decided for the host: the money stays.
        DisputeWon = "dispute_won",
        /// The chargeback was decided for the guest: its amount is lost.
        DisputeLost = "dispute_lost",
        /// The dispute closed otherwise (an inquiry closed without a chargeback, `warning_closed`).
        DisputeClosed = "dispute_closed",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, ToSchema)]
pub struct Booking {
    pub saga_id: SagaId,
    pub listing_id: String,
    pub guest_id: String,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    pub amount: i64,
    pub currency: String,
    /// requested, held, awaiting_authentication, authorized, paid, confirmed, cancelling,
    /// cancelled, failed, needs_attention, disputed, dispute_won, dispute_lost, dispute_closed.
    pub status: String,
    pub payment_intent_id: Option<String>,
    pub confirmation_code: Option<String>,
    pub cancel_reason: Option<String>,
    /// The policy a guest cancellation's refund follows (null for bookings made before policies).
    #[sqlx(default)]
    pub cancellation_policy: Option<CancellationPolicy>,
    /// Who cancelled it and what was refunded by which rule, once cancelled.
    #[schema(value_type = Option<BookingCancellation>)]
    pub cancellation: Option<Json<BookingCancellation>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Who cancelled a booking and its refund, from its `BookingCancelled` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BookingCancellation {
    pub by: CancelledBy,
    /// The API token's name for an operator, `guest`/`host` as the request said, `sagad`.
    pub actor: String,
    /// The refund and the rule that decided it (`null` for a cancellation recorded before
    /// refunds were: schema version 1).
    pub refund: Option<Refund>,
}

/// The `INSERT … SELECT` of the row a `BookingRequested` event creates (anything else, such as a
/// change saga's `BookingChangeRequested`, binds NULLs and inserts nothing); every later event
/// only updates the row ([`UpdateBooking`]). A statement part.
pub(crate) struct InsertRequested {
    listing: Param,
    guest: Param,
    check_in: Param,
    check_out: Param,
    amount: Param,
    currency: Param,
}

impl InsertRequested {
    pub(crate) fn new(b: &mut Binds, event: &Event) -> Self {
        match event {
            Event::BookingRequested {
                listing_id,
                guest_id,
                check_in,
                check_out,
                amount,
                currency,
            } => Self {
                listing: b.push(listing_id),
                guest: b.push(guest_id),
                check_in: b.push(check_in),
                check_out: b.push(check_out),
                amount: b.push(amount),
                currency: b.push(currency),
            },
            _ => Self {
                listing: b.push(None::<&str>),
                guest: b.push(None::<&str>),
                check_in: b.push(None::<NaiveDate>),
                check_out: b.push(None::<NaiveDate>),
                amount: b.push(None::<i64>),
                currency: b.push(None::<&str>),
            },
        }
    }

    /// The insert for the saga whose id is `id`, gated by `from` (a FROM item such as the CTE
    /// that inserted the saga); `status` is the SQL of the booking's status (`'requested'`, or
    /// what steps recorded with the start made it).
    pub(crate) fn sql(&self, id: Param, from: &str, status: &dyn fmt::Display) -> String {
        let Self {
            listing,
            guest,
            check_in,
            check_out,
            amount,
            currency,
        } = self;
        format!(
            "INSERT INTO bookings (saga_id, listing_id, guest_id, check_in, check_out, amount, currency, status)
         SELECT {id}, {listing}::text, {guest}::text, {check_in}::date, {check_out}::date, {amount}::int8,
                {currency}::text, {status} FROM {from} WHERE {listing}::text IS NOT NULL"
        )
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
    /// New stay and price (`BookingChanged`).
    pub stay: Option<(NaiveDate, NaiveDate)>,
    pub amount: Option<i64>,
    /// `SagaCompleted` with no status after it: a booking at `needs_attention` (a step parked as
    /// stuck, which an operator's retry then completed) is `confirmed`; any other status stays.
    pub completed: bool,
    /// Replaces the row's cancellation.
    pub cancellation: Option<BookingCancellation>,
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
        self.completed = false;
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
            Event::BookingCancelled {
                reason,
                by,
                actor,
                refund,
            } => {
                self.set("cancelled");
                self.cancel_reason = Some(reason.clone());
                self.cancellation = Some(BookingCancellation {
                    by: *by,
                    actor: actor.clone(),
                    refund: refund.clone(),
                });
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
            Event::SagaStuck { .. } => self.set(NEEDS_ATTENTION),
            Event::SagaCompleted {} => self.completed = true,
            // Dates and price only: the booking stays as it was (confirmed).
            Event::BookingChanged {
                check_in,
                check_out,
                amount,
                ..
            } => {
                self.stay = Some((*check_in, *check_out));
                self.amount = Some(*amount);
            }
            Event::DisputeOpened { .. } => self.set(BookingStatus::Disputed.as_str()),
            Event::DisputeClosed { status, .. } => self.set(dispute_outcome(status).as_str()),
            // An operator set a stuck compensation going again, or cancelled the saga.
            Event::SagaRetried {
                phase: StepPhase::Compensation,
                ..
            }
            | Event::OperatorCancelled { .. } => self.set("cancelling"),
            Event::SagaResolved {
                outcome: Resolution::Completed,
                ..
            } => self.set("confirmed"),
            // Created with the saga ([`InsertRequested`]); the rest do not show in the projection.
            Event::BookingRequested { .. }
            | Event::NotificationSent { .. }
            | Event::StepFailed { .. }
            | Event::InventoryReleased { .. }
            | Event::PaymentVoided { .. }
            | Event::PaymentRefunded { .. }
            | Event::SagaPaused { .. }
            | Event::SagaResumed { .. }
            | Event::PaymentReceived { .. }
            | Event::SagaRetried { .. }
            | Event::SagaResolved { .. } => {}
            // A host block's own aggregate, never a booking's; a change saga's, which has no row.
            Event::ListingBlocked { .. }
            | Event::ListingUnblocked { .. }
            | Event::BookingChangeRequested { .. } => {}
            // A dependency's own aggregate.
            Event::DependencyCircuitOpened { .. }
            | Event::DependencyProbeFailed { .. }
            | Event::DependencyCircuitClosed { .. } => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// A completion and nothing else: it writes only a booking at `needs_attention`.
    fn only_completed(&self) -> bool {
        *self
            == Self {
                completed: true,
                ..Self::default()
            }
    }

    /// This change applied to `row` at `at`: what [`UpdateBooking`] does in SQL, for replay. Every
    /// right-hand side reads the row as it was, as `UPDATE … SET` does.
    pub fn apply_to(&self, row: &mut Booking, at: DateTime<Utc>) {
        if self.only_completed() && row.status != NEEDS_ATTENTION {
            return;
        }
        let status = if self.compensated {
            if row.cancel_reason.is_some() {
                "cancelled"
            } else {
                "failed"
            }
        } else {
            match self.status.unwrap_or(&row.status) {
                NEEDS_ATTENTION if self.completed => "confirmed",
                status => status,
            }
        };
        row.status = status.to_owned();
        if let Some(p) = &self.payment_intent_id {
            row.payment_intent_id = Some(p.clone());
        }
        if let Some(c) = &self.confirmation_code {
            row.confirmation_code = Some(c.clone());
        }
        row.cancel_reason = self
            .cancel_reason
            .clone()
            .or(row.cancel_reason.take())
            .or(self.default_cancel_reason.clone());
        if let Some((check_in, check_out)) = self.stay {
            row.check_in = check_in;
            row.check_out = check_out;
        }
        if let Some(amount) = self.amount {
            row.amount = amount;
        }
        if let Some(c) = &self.cancellation {
            row.cancellation = Some(Json(c.clone()));
        }
        row.updated_at = at;
    }
}

/// The booking row a saga's events fold to, in version order with their `recorded_at`: the live
/// path's fold ([`Change`], applied the way [`UpdateBooking`] applies it), replayed. `None` when
/// the history does not begin with `BookingRequested`.
pub fn replay<'a>(
    saga_id: SagaId,
    events: impl IntoIterator<Item = (&'a Event, DateTime<Utc>)>,
) -> Option<Booking> {
    let mut events = events.into_iter();
    let (
        Event::BookingRequested {
            listing_id,
            guest_id,
            check_in,
            check_out,
            amount,
            currency,
        },
        at,
    ) = events.next()?
    else {
        return None;
    };
    let mut row = Booking {
        saga_id,
        listing_id: listing_id.clone(),
        guest_id: guest_id.clone(),
        check_in: *check_in,
        check_out: *check_out,
        amount: *amount,
        currency: currency.clone(),
        status: REQUESTED.to_owned(),
        payment_intent_id: None,
        confirmation_code: None,
        cancel_reason: None,
        // Not a column: read from the saga's input with the row.
        cancellation_policy: None,
        cancellation: None,
        created_at: at,
        updated_at: at,
    };
    // One event at a time: the live path folds each transaction's events into one change, and
    // applying a run of events at once or one by one gives the same row (tested below).
    for (event, at) in events {
        let change = Change::of([event]);
        if !change.is_empty() {
            change.apply_to(&mut row, at);
        }
    }
    Some(row)
}

/// A closed dispute's booking status, by Stripe's final dispute status.
fn dispute_outcome(stripe_status: &str) -> BookingStatus {
    match stripe_status {
        "won" => BookingStatus::DisputeWon,
        "lost" => BookingStatus::DisputeLost,
        _ => BookingStatus::DisputeClosed,
    }
}

/// A chargeback on a booking's payment, as its events tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Dispute {
    pub dispute_id: String,
    /// `open` until it closes, then Stripe's final status (`won`, `lost`, `warning_closed`…).
    pub status: String,
    /// The disputed amount, in the currency's minor units.
    pub amount: i64,
    pub currency: String,
    /// Stripe's reason (`fraudulent`, `product_not_received`…).
    pub reason: String,
    /// What the host lost: the disputed amount when the dispute was lost, else 0.
    pub amount_lost: i64,
}

impl Dispute {
    /// Folds a booking's events, in order: every dispute it has had, oldest first.
    pub fn all_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<Self> {
        let mut out: Vec<Self> = Vec::new();
        for e in events {
            match e {
                Event::DisputeOpened {
                    dispute_id,
                    amount,
                    currency,
                    reason,
                    ..
                } => out.push(Self {
                    dispute_id: dispute_id.clone(),
                    status: "open".into(),
                    amount: *amount,
                    currency: currency.clone(),
                    reason: reason.clone(),
                    amount_lost: 0,
                }),
                Event::DisputeClosed {
                    dispute_id, status, ..
                } => {
                    if let Some(d) = out.iter_mut().find(|d| d.dispute_id == *dispute_id) {
                        d.status = status.clone();
                        d.amount_lost = if dispute_outcome(status) == BookingStatus::DisputeLost {
                            d.amount
                        } else {
                            0
                        };
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// The projection update of a [`Change`]: a statement part.
pub(crate) struct UpdateBooking {
    status: Param,
    compensated: Param,
    payment_intent_id: Param,
    confirmation_code: Param,
    cancel_reason: Param,
    default_cancel_reason: Param,
    check_in: Param,
    check_out: Param,
    amount: Param,
    completed: Param,
    only_completed: Param,
    cancellation: Param,
}

impl UpdateBooking {
    pub(crate) fn new(b: &mut Binds, change: &Change) -> Self {
        Self {
            status: b.push(change.status),
            compensated: b.push(change.compensated),
            payment_intent_id: b.push(change.payment_intent_id.as_deref()),
            confirmation_code: b.push(change.confirmation_code.as_deref()),
            cancel_reason: b.push(change.cancel_reason.as_deref()),
            default_cancel_reason: b.push(change.default_cancel_reason.as_deref()),
            check_in: b.push(change.stay.map(|s| s.0)),
            check_out: b.push(change.stay.map(|s| s.1)),
            amount: b.push(change.amount),
            completed: b.push(change.completed),
            only_completed: b.push(change.only_completed()),
            cancellation: b.push(change.cancellation.clone().map(Json)),
        }
    }

    /// The `UPDATE` of the booking of the saga whose id is `id`.
    pub(crate) fn sql(&self, id: Param) -> String {
        let Self {
            status,
            compensated,
            payment_intent_id,
            confirmation_code,
            cancel_reason,
            default_cancel_reason,
            check_in,
            check_out,
            amount,
            completed,
            only_completed,
            cancellation,
        } = self;
        // A completion alone changes only a booking at needs_attention: others are not written.
        format!(
            "UPDATE bookings SET
        status = CASE WHEN {compensated}::bool THEN
                      CASE WHEN cancel_reason IS NOT NULL THEN 'cancelled' ELSE 'failed' END
                      WHEN {completed}::bool AND COALESCE({status}::text, status) = '{NEEDS_ATTENTION}' THEN 'confirmed'
                 ELSE COALESCE({status}::text, status) END,
        payment_intent_id = COALESCE({payment_intent_id}::text, payment_intent_id),
        confirmation_code = COALESCE({confirmation_code}::text, confirmation_code),
        cancel_reason = COALESCE({cancel_reason}::text, cancel_reason, {default_cancel_reason}::text),
        check_in = COALESCE({check_in}::date, check_in),
        check_out = COALESCE({check_out}::date, check_out),
        amount = COALESCE({amount}::int8, amount),
        cancellation = COALESCE({cancellation}::jsonb, cancellation),
        updated_at = now()
    WHERE saga_id = {id} AND (NOT {only_completed}::bool OR status = '{NEEDS_ATTENTION}')"
        )
    }
}

/// The statement of [`apply`].
pub(super) fn apply_statement(saga_id: SagaId, change: &Change) -> Statement {
    static TEXT: Text = Text::new();
    let mut b = Binds::new();
    let id = b.push(saga_id);
    let update = UpdateBooking::new(&mut b, change);
    TEXT.with(b, || update.sql(id))
}

/// Folds `events` into the projection in one update (none when they change nothing). The row
/// itself is created with the saga (`progress::start`).
pub async fn apply(
    conn: &mut PgConnection,
    saga_id: SagaId,
    events: &[&Event],
) -> Result<(), sqlx::Error> {
    let change = Change::of(events.iter().copied());
    if change.is_empty() {
        return Ok(());
    }
    apply_statement(saga_id, &change)
        .query()?
        .execute(conn)
        .await?;
    Ok(())
}

/// A booking's columns with its policy, which its saga's input holds.
const COLUMNS: &str =
    "b.saga_id, b.listing_id, b.guest_id, b.check_in, b.check_out, b.amount, b.currency,
        b.status, b.payment_intent_id, b.confirmation_code, b.cancel_reason,
        s.input->>'cancellation_policy' AS cancellation_policy, b.cancellation, b.created_at, b.updated_at
    FROM bookings b JOIN sagas s ON s.id = b.saga_id";

pub async fn get(conn: &mut PgConnection, saga_id: SagaId) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(GET.as_str()))
        .bind(saga_id)
        .fetch_optional(conn)
        .await
}

/// The statement of [`get`].
pub(super) static GET: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {COLUMNS} WHERE b.saga_id = $1"));

/// What `GET /v1/bookings` filters by; `None` leaves a filter out.
#[derive(Debug, Default, Clone)]
pub struct BookingFilter {
    pub listing_id: Option<String>,
    pub guest_id: Option<String>,
    pub status: Option<BookingStatus>,
    /// Stays overlapping `[from, to)`; either end may be open.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// Keyset cursor: bookings strictly older than (created_at, saga_id).
    pub before: Option<(DateTime<Utc>, SagaId)>,
    pub limit: i64,
}

/// Newest first, keyset-paginated. Only the filters given are in the statement, so that each
/// combination's generic plan uses its index (migration 0014).
pub async fn list(pool: &sqlx::PgPool, f: &BookingFilter) -> Result<Vec<Booking>, sqlx::Error> {
    list_query("", f).build_query_as().fetch_all(pool).await
}

/// The plan PostgreSQL chooses for [`list`]'s statement (`EXPLAIN`, one line per row), as the
/// benchmark and the index tests read it.
pub async fn explain_list(
    conn: &mut PgConnection,
    f: &BookingFilter,
) -> Result<String, sqlx::Error> {
    let lines: Vec<String> = list_query("EXPLAIN ", f)
        .build_query_scalar()
        .fetch_all(conn)
        .await?;
    Ok(lines.join("\n"))
}

fn list_query(prefix: &str, f: &BookingFilter) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut q = sqlx::QueryBuilder::new(format!("{prefix}SELECT {COLUMNS} WHERE true"));
    if let Some(l) = &f.listing_id {
        q.push(" AND b.listing_id = ").push_bind(l);
    }
    if let Some(g) = &f.guest_id {
        q.push(" AND b.guest_id = ").push_bind(g);
    }
    if let Some(s) = &f.status {
        q.push(" AND b.status = ").push_bind(s);
    }
    if f.from.is_some() || f.to.is_some() {
        // The expression of the GiST index bookings_listing_stay; a NULL bound is open.
        q.push(" AND daterange(b.check_in, b.check_out) && daterange(")
            .push_bind(f.from)
            .push("::date, ")
            .push_bind(f.to)
            .push("::date)");
    }
    if let Some((at, id)) = f.before {
        q.push(" AND (b.created_at, b.saga_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY b.created_at DESC, b.saga_id DESC LIMIT ")
        .push_bind(f.limit);
    q
}

/// A booking's money as its events tell it, in the booking's currency's minor units.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Payments {
    pub payment_intent_id: Option<String>,
    /// Authorized (held on the card), whether or not captured since.
    pub authorized: i64,
    pub captured: i64,
    /// Every refund recorded: sagad's own and those Stripe reported.
    pub refunded: i64,
    /// The authorization was cancelled before any capture.
    pub voided: bool,
}

impl Payments {
    /// Folds a booking's events, in order.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut p = Self::default();
        for e in events {
            match e {
                Event::PaymentAuthorized {
                    payment_intent_id,
                    amount,
                    ..
                } => {
                    p.payment_intent_id = Some(payment_intent_id.clone());
                    p.authorized = *amount;
                }
                Event::PaymentCaptured { amount, .. } => p.captured = *amount,
                Event::PaymentRefunded { amount, .. } => p.refunded += amount,
                Event::PaymentVoided { .. } => p.voided = true,
                _ => {}
            }
        }
        p
    }
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
    fn payments_add_up_refunds_and_keep_the_authorized_and_captured_amounts() {
        let refund = |id: &str, amount| Event::PaymentRefunded {
            payment_intent_id: "pi_1".into(),
            refund_id: id.into(),
            amount,
        };
        let p = Payments::of(&[
            authorized("pi_1"),
            Event::PaymentCaptured {
                payment_intent_id: "pi_1".into(),
                amount: 100,
                currency: "eur".into(),
            },
            refund("re_1", 30),
            refund("re_2", 20),
        ]);
        assert_eq!(
            p,
            Payments {
                payment_intent_id: Some("pi_1".into()),
                authorized: 100,
                captured: 100,
                refunded: 50,
                voided: false,
            }
        );
        let p = Payments::of(&[
            authorized("pi_2"),
            Event::PaymentVoided {
                payment_intent_id: "pi_2".into(),
            },
        ]);
        assert!(p.voided);
        assert_eq!((p.captured, p.refunded), (0, 0));
    }

    #[test]
    fn a_dispute_shows_while_open_then_its_outcome_and_the_amount_lost() {
        let opened = |id: &str| Event::DisputeOpened {
            dispute_id: id.into(),
            payment_intent_id: "pi_1".into(),
            amount: 4500,
            currency: "eur".into(),
            reason: "fraudulent".into(),
        };
        let closed = |id: &str, status: &str| Event::DisputeClosed {
            dispute_id: id.into(),
            payment_intent_id: "pi_1".into(),
            status: status.into(),
        };
        assert_eq!(Change::of(&[opened("dp_1")]).status, Some("disputed"));
        for (stripe, status, lost) in [
            ("lost", "dispute_lost", 4500),
            ("won", "dispute_won", 0),
            ("warning_closed", "dispute_closed", 0),
        ] {
            let events = [opened("dp_1"), closed("dp_1", stripe)];
            assert_eq!(Change::of(&events).status, Some(status));
            let d = Dispute::all_of(&events);
            assert_eq!(
                (d.len(), d[0].status.as_str(), d[0].amount_lost),
                (1, stripe, lost)
            );
        }
        assert_eq!(Dispute::all_of(&[opened("dp_2")])[0].status, "open");
    }

    #[test]
    fn events_that_do_not_show_change_nothing() {
        let c = Change::of(&[Event::NotificationSent { status_code: 204 }]);
        assert!(c.is_empty());
    }

    fn booking_at(status: &str) -> Booking {
        let mut row = replay(
            SagaId(uuid::Uuid::nil()),
            [(&requested(), DateTime::<Utc>::UNIX_EPOCH)],
        )
        .unwrap();
        row.status = status.to_owned();
        row
    }

    #[test]
    fn a_completion_confirms_a_booking_that_needed_attention_and_leaves_others_alone() {
        let c = Change::of(&[
            Event::NotificationSent { status_code: 204 },
            Event::SagaCompleted {},
        ]);
        assert!(c.completed && c.status.is_none());
        let later = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(5);
        let mut row = booking_at("needs_attention");
        c.apply_to(&mut row, later);
        assert_eq!((row.status.as_str(), row.updated_at), ("confirmed", later));
        for status in ["confirmed", "disputed"] {
            let mut row = booking_at(status);
            let before = row.clone();
            c.apply_to(&mut row, later);
            assert_eq!(row, before, "a completion leaves {status} alone, unwritten");
        }
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
                by: CancelledBy::Guest,
                actor: "guest".into(),
                refund: None,
            },
            Event::SagaCompensated {
                reason: "guest_cancelled".into(),
            },
        ]);
        assert_eq!(c.status, Some("cancelled"));
        assert!(!c.compensated);
        assert_eq!(c.cancel_reason.as_deref(), Some("guest_cancelled"));
    }

    fn requested() -> Event {
        Event::BookingRequested {
            listing_id: "l".into(),
            guest_id: "g".into(),
            check_in: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            check_out: NaiveDate::from_ymd_opt(2026, 1, 3).unwrap(),
            amount: 100,
            currency: "eur".into(),
        }
    }

    /// Histories whose transactions may have been split anywhere.
    fn histories() -> Vec<Vec<Event>> {
        let held = Event::InventoryHeld {
            hold_id: uuid::Uuid::nil(),
            listing_id: "l".into(),
            check_in: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            check_out: NaiveDate::from_ymd_opt(2026, 1, 3).unwrap(),
            expires_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let compensating = Event::CompensationStarted {
            failed_step: None,
            reason: "r".into(),
        };
        let compensated = Event::SagaCompensated {
            reason: "card_declined".into(),
        };
        let cancelled = crate::policies::Policies::builtin()
            .decide(
                CancelledBy::Guest,
                "guest",
                "guest",
                Some(CancellationPolicy::Moderate),
                1,
            )
            .event(100, 100);
        let stuck = Event::SagaStuck {
            step: "s".into(),
            error: "e".into(),
        };
        vec![
            vec![
                held.clone(),
                authorized("pi_1"),
                compensating.clone(),
                compensated.clone(),
            ],
            vec![
                held.clone(),
                compensating.clone(),
                cancelled.clone(),
                compensated.clone(),
            ],
            vec![
                authorized("pi_2"),
                cancelled.clone(),
                compensating,
                compensated.clone(),
                stuck.clone(),
            ],
            vec![held.clone(), compensated, stuck.clone(), cancelled],
            // Stuck at its last step, retried by an operator, completed.
            vec![
                held,
                authorized("pi_3"),
                stuck,
                Event::SagaRetried {
                    actor: "ops".into(),
                    reason: "r".into(),
                    step: "notify".into(),
                    phase: StepPhase::Forward,
                },
                Event::NotificationSent { status_code: 204 },
                Event::SagaCompleted {},
            ],
        ]
    }

    /// The live path applies each transaction's events as one change; replay applies them one by
    /// one. For every split of a history into two transactions, and for one transaction each,
    /// the rows agree.
    #[test]
    fn replay_agrees_with_the_live_path_however_events_were_batched() {
        let id = SagaId(uuid::Uuid::nil());
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let t1 = t0 + chrono::Duration::seconds(1);
        let t2 = t0 + chrono::Duration::seconds(2);
        for history in histories() {
            let start = requested();
            let base = replay(id, [(&start, t0)]).unwrap();
            for split in 0..=history.len() {
                let (a, b) = history.split_at(split);
                let mut live = base.clone();
                for (batch, at) in [(a, t1), (b, t2)] {
                    let c = Change::of(batch);
                    if !c.is_empty() {
                        c.apply_to(&mut live, at);
                    }
                }
                let events: Vec<(&Event, DateTime<Utc>)> = std::iter::once((&start, t0))
                    .chain(a.iter().map(|e| (e, t1)))
                    .chain(b.iter().map(|e| (e, t2)))
                    .collect();
                assert_eq!(
                    replay(id, events),
                    Some(live),
                    "{history:?} split at {split}"
                );
            }
        }
    }

    #[test]
    fn replay_needs_a_booking_request_first() {
        let t = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(
            replay(SagaId(uuid::Uuid::nil()), [(&Event::SagaCompleted {}, t)]),
            None
        );
        assert_eq!(replay(SagaId(uuid::Uuid::nil()), []), None);
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
