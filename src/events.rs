//! The domain events sagad records. Each is appended, immutable, to the event store; the
//! bookings projection and (later) outgoing webhooks are derived from them.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::CancellationPolicy;
use crate::engine::model::StepPhase;
use crate::engine::operator::{Holdings, Resolution};

/// The schema version of every event type that never changed shape. A type whose shape changed
/// has its own current version in [`crate::upcast::current_version`], with an upcaster from each
/// older one.
pub const SCHEMA_VERSION: i32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum Event {
    BookingRequested {
        listing_id: String,
        guest_id: String,
        check_in: NaiveDate,
        check_out: NaiveDate,
        amount: i64,
        currency: String,
    },
    InventoryHeld {
        hold_id: Uuid,
        listing_id: String,
        check_in: NaiveDate,
        check_out: NaiveDate,
        expires_at: DateTime<Utc>,
    },
    PaymentActionRequired {
        payment_intent_id: String,
        deadline: DateTime<Utc>,
    },
    PaymentAuthorized {
        payment_intent_id: String,
        amount: i64,
        currency: String,
    },
    PaymentCaptured {
        payment_intent_id: String,
        amount: i64,
        currency: String,
    },
    BookingConfirmed {
        confirmation_code: String,
        listing_id: String,
        check_in: NaiveDate,
        check_out: NaiveDate,
    },
    NotificationSent {
        status_code: u16,
    },
    StepFailed {
        step: String,
        phase: StepPhase,
        attempt: i32,
        error: String,
        permanent: bool,
        retry_at: Option<DateTime<Utc>>,
    },
    CompensationStarted {
        failed_step: Option<String>,
        reason: String,
    },
    InventoryReleased {
        hold_id: Uuid,
        reason: String,
    },
    PaymentVoided {
        payment_intent_id: String,
    },
    PaymentRefunded {
        payment_intent_id: String,
        refund_id: String,
        amount: i64,
    },
    /// The booking is cancelled (schema version 2; [`crate::upcast`] reads version 1 as 2).
    BookingCancelled {
        /// Why: the reason given with the cancellation, or sagad's own (`cancelled_by_guest`
        /// when none was given, the failure that made sagad undo the booking).
        reason: String,
        /// Who cancelled: `guest`, `host`, `operator`, or `sagad` (it undid a failed booking).
        by: CancelledBy,
        /// Who exactly: the API token's name for an operator, `guest` or `host` as the request
        /// said, `sagad` for sagad.
        actor: String,
        /// What the guest gets back and the rule that decided it; `null` in events recorded
        /// before refunds were (schema version 1).
        refund: Option<Refund>,
    },
    SagaCompleted {},
    /// The saga's next action needs a dependency whose circuit breaker is open: it pauses,
    /// spending no attempt, until the breaker closes (or the step's give-up deadline passes).
    SagaPaused {
        step: String,
        phase: StepPhase,
        dependency: String,
    },
    /// A paused saga runs again (the breaker closed or its deadline came).
    SagaResumed {
        wait_reason: String,
    },
    SagaCompensated {
        reason: String,
    },
    SagaStuck {
        step: String,
        error: String,
    },
    /// Stripe reports the money arrived (`payment_intent.succeeded`).
    PaymentReceived {
        payment_intent_id: String,
        amount: i64,
        currency: String,
    },
    /// A chargeback was opened (`charge.dispute.created`).
    DisputeOpened {
        dispute_id: String,
        payment_intent_id: String,
        amount: i64,
        currency: String,
        reason: String,
    },
    /// A chargeback was decided (`charge.dispute.closed`): `won`, `lost`, `warning_closed`…
    DisputeClosed {
        dispute_id: String,
        payment_intent_id: String,
        status: String,
    },
    /// An operator (`actor`: the API token's name) had the step a stuck or waiting saga was at
    /// run again now, with fresh attempts.
    SagaRetried {
        actor: String,
        reason: String,
        step: String,
        phase: StepPhase,
    },
    /// An operator closed a stuck saga settled by hand; `still_held` is what it held then.
    SagaResolved {
        actor: String,
        reason: String,
        outcome: Resolution,
        still_held: Holdings,
    },
    /// An operator cancelled a stuck saga: what is left is compensated.
    OperatorCancelled {
        actor: String,
        reason: String,
    },
    /// A host blocked a listing's nights `[from, to)` (`POST /v1/listings/{id}/blocks`); the
    /// block is its own aggregate (`listing_block`).
    ListingBlocked {
        block_id: Uuid,
        listing_id: String,
        from: NaiveDate,
        to: NaiveDate,
        reason: String,
        /// The API token's name.
        actor: String,
    },
    /// The block was removed: its nights can be booked again.
    ListingUnblocked {
        block_id: Uuid,
        listing_id: String,
        from: NaiveDate,
        to: NaiveDate,
        /// The block's reason.
        reason: String,
        /// Who removed it: the API token's name.
        actor: String,
    },
    /// A change of a booking's dates and price was requested (`POST /v1/bookings/{id}/change`):
    /// the first event of the change saga, on its own aggregate (`booking_change`).
    BookingChangeRequested {
        booking_id: Uuid,
        check_in: NaiveDate,
        check_out: NaiveDate,
        amount: i64,
        previous_check_in: NaiveDate,
        previous_check_out: NaiveDate,
        previous_amount: i64,
        /// The API token's name.
        actor: String,
    },
    /// The booking now has its new dates and price: the change saga swapped its claim, in the
    /// transaction that recorded this event on the booking's own aggregate.
    BookingChanged {
        /// The change saga.
        change_id: Uuid,
        check_in: NaiveDate,
        check_out: NaiveDate,
        amount: i64,
        previous_check_in: NaiveDate,
        previous_check_out: NaiveDate,
        previous_amount: i64,
    },
    /// A dependency's circuit breaker opened: its calls are not made, and sagas whose next
    /// action needs it pause. On the dependency's own aggregate (`dependency`).
    DependencyCircuitOpened {
        /// `stripe` or `notify`.
        dependency: String,
        /// `system`: sagad opened it on its own.
        actor: String,
        /// Which threshold was crossed: `failure_rate` or `connection_failures`.
        cause: String,
        /// What was counted, in words.
        reason: String,
        /// Calls and retryable failures over the sliding window (rounded: the previous bucket
        /// counts in part).
        calls: i64,
        failures: i64,
        /// Connection failures in a row, over every process.
        connection_failures: i64,
        /// When one probe call goes through.
        probe_at: DateTime<Utc>,
    },
    /// The probe of an open breaker failed (a retryable failure): it stays open, and the next
    /// probe waits twice as long (up to the maximum). Not published.
    DependencyProbeFailed {
        dependency: String,
        actor: String,
        reason: String,
        /// Failed probes since the breaker opened.
        failed_probes: i64,
        probe_at: DateTime<Utc>,
    },
    /// The probe got an answer: the breaker closed, and the sagas paused on it were woken.
    DependencyCircuitClosed {
        dependency: String,
        actor: String,
        reason: String,
        /// When it opened (kept through failed probes).
        opened_at: DateTime<Utc>,
        failed_probes: i64,
        /// Paused sagas woken in the transaction that closed it (oldest first, due at a ramped
        /// rate).
        woken_sagas: i64,
    },
}

crate::text_enum::text_enum! {
    /// Who cancelled a booking.
    #[derive(utoipa::ToSchema)]
    pub enum CancelledBy {
        /// The guest: the listing's cancellation policy sets the refund.
        Guest = "guest",
        /// The host: a full refund.
        Host = "host",
        /// An operator (the API token's name is the actor): a full refund.
        Operator = "operator",
        /// sagad itself, undoing a booking that failed: a full refund.
        Sagad = "sagad",
    }
}

/// A cancellation's refund: how much, and the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Refund {
    /// What is refunded, in the currency's minor units: `percent` of the price, rounded down,
    /// and never more than was captured (an authorization not yet captured is voided instead, and
    /// this is 0).
    pub amount: i64,
    /// The share of the price the rule grants, 0-100.
    pub percent: u8,
    /// The listing's cancellation policy, when it decided (a guest cancellation); `null` for a
    /// full refund that does not depend on it.
    pub policy: Option<CancellationPolicy>,
    /// Check-in minus the database's current date (UTC) when the cancellation was requested;
    /// `null` when sagad undid a failed booking.
    pub days_before_check_in: Option<i64>,
    /// The rule in words, e.g. `moderate: 5 or more days before check-in: 100%`.
    pub rule: String,
}

/// The aggregate type of a host block's events.
pub const BLOCK_AGGREGATE: &str = "listing_block";
/// The aggregate type of a dependency's breaker events (its id: `dependency_breakers.aggregate_id`).
pub const DEPENDENCY_AGGREGATE: &str = "dependency";

/// Every stored event type name: each [`Event`]'s [`Event::type_name`], and the endpoint events
/// outgoing webhooks record ([`crate::outbound::catalog::ENDPOINT_DISABLED_INTERNAL`]).
pub const TYPES: &[&str] = &[
    "BookingRequested",
    "InventoryHeld",
    "PaymentActionRequired",
    "PaymentAuthorized",
    "PaymentCaptured",
    "BookingConfirmed",
    "NotificationSent",
    "StepFailed",
    "CompensationStarted",
    "InventoryReleased",
    "PaymentVoided",
    "PaymentRefunded",
    "BookingCancelled",
    "SagaCompleted",
    "SagaCompensated",
    "SagaStuck",
    "PaymentReceived",
    "DisputeOpened",
    "DisputeClosed",
    "ListingBlocked",
    "ListingUnblocked",
    "SagaRetried",
    "SagaResolved",
    "OperatorCancelled",
    "SagaPaused",
    "SagaResumed",
    "BookingChangeRequested",
    "BookingChanged",
    "DependencyCircuitOpened",
    "DependencyProbeFailed",
    "DependencyCircuitClosed",
    crate::outbound::catalog::ENDPOINT_DISABLED_INTERNAL,
];

impl Event {
    /// The event's type name as stored (`event_type` column).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::BookingRequested { .. } => "BookingRequested",
            Event::InventoryHeld { .. } => "InventoryHeld",
            Event::PaymentActionRequired { .. } => "PaymentActionRequired",
            Event::PaymentAuthorized { .. } => "PaymentAuthorized",
            Event::PaymentCaptured { .. } => "PaymentCaptured",
            Event::BookingConfirmed { .. } => "BookingConfirmed",
            Event::NotificationSent { .. } => "NotificationSent",
            Event::StepFailed { .. } => "StepFailed",
            Event::CompensationStarted { .. } => "CompensationStarted",
            Event::InventoryReleased { .. } => "InventoryReleased",
            Event::PaymentVoided { .. } => "PaymentVoided",
            Event::PaymentRefunded { .. } => "PaymentRefunded",
            Event::BookingCancelled { .. } => "BookingCancelled",
            Event::SagaCompleted { .. } => "SagaCompleted",
            Event::SagaPaused { .. } => "SagaPaused",
            Event::SagaResumed { .. } => "SagaResumed",
            Event::SagaCompensated { .. } => "SagaCompensated",
            Event::SagaStuck { .. } => "SagaStuck",
            Event::PaymentReceived { .. } => "PaymentReceived",
            Event::DisputeOpened { .. } => "DisputeOpened",
            Event::DisputeClosed { .. } => "DisputeClosed",
            Event::SagaRetried { .. } => "SagaRetried",
            Event::SagaResolved { .. } => "SagaResolved",
            Event::OperatorCancelled { .. } => "OperatorCancelled",
            Event::ListingBlocked { .. } => "ListingBlocked",
            Event::ListingUnblocked { .. } => "ListingUnblocked",
            Event::BookingChangeRequested { .. } => "BookingChangeRequested",
            Event::BookingChanged { .. } => "BookingChanged",
            Event::DependencyCircuitOpened { .. } => "DependencyCircuitOpened",
            Event::DependencyProbeFailed { .. } => "DependencyProbeFailed",
            Event::DependencyCircuitClosed { .. } => "DependencyCircuitClosed",
        }
    }

    /// The event stored with type `event_type` and `payload`.
    pub fn from_stored(
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "type": event_type, "payload": payload }))
    }

    /// The payload as stored (`payload` column): the variant's fields.
    pub fn payload(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut m)) => m
                .remove("payload")
                .unwrap_or(serde_json::Value::Object(Default::default())),
            // Serialising plain data into a Value cannot fail; keep the type name at least.
            _ => serde_json::Value::Null,
        }
    }
}

/// An event on its way into the store, with the metadata that explains it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    /// What caused it: a request's idempotency key, a Stripe event id, a previous event id.
    pub causation_id: Option<String>,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    /// The sagad process that recorded it (its worker id).
    pub worker: Option<String>,
}

impl From<Event> for NewEvent {
    fn from(event: Event) -> Self {
        Self {
            event,
            causation_id: None,
            step: None,
            attempt: None,
            worker: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_the_variant_fields() {
        let e = Event::BookingCancelled {
            reason: "cancelled_by_guest".into(),
            by: CancelledBy::Guest,
            actor: "guest".into(),
            refund: None,
        };
        assert_eq!(e.type_name(), "BookingCancelled");
        assert_eq!(
            e.payload(),
            serde_json::json!({"reason": "cancelled_by_guest", "by": "guest", "actor": "guest", "refund": null})
        );
        assert_eq!(Event::SagaCompleted {}.payload(), serde_json::json!({}));
        assert_eq!(Event::from_stored(e.type_name(), &e.payload()).unwrap(), e);
    }
}
