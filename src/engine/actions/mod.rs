//! The actions a saga definition can name, and what each one does.
//!
//! Local actions change only our own database: they run inside the transaction that records their
//! outcome, so their effect and its record commit together or not at all. Remote actions call an
//! outside service: they run outside any transaction, with an idempotency key stable across retries,
//! and their outcome commits afterwards.

mod change;
mod inventory;
mod notify;
mod payment;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;

use super::definition::{ActionCatalog, SagaDefinition, StepDefinition};
use super::outcome::Outcome;
use crate::breaker::{Breakers, Dependency};
use crate::domain::BookingInput;
use crate::domain::SagaId;
use crate::policies::Cancellation;
use crate::stripe::client::StripeClient;

pub use inventory::plan_hold;

/// What a saga's capture step recorded as captured (0 when it recorded no capture).
pub fn captured(def: &SagaDefinition, context: &serde_json::Map<String, serde_json::Value>) -> i64 {
    def.steps
        .iter()
        .find(|s| s.action == "payment.capture")
        .and_then(|s| context.get(&s.name))
        .filter(|o| o.get("captured").and_then(|c| c.as_bool()) == Some(true))
        .and_then(|o| o.get("amount"))
        .and_then(|a| a.as_i64())
        .unwrap_or(0)
}
pub use notify::NotifyConfig;
pub use payment::wait_key as payment_wait_key;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    HoldInventory,
    ReleaseInventory,
    AuthorizePayment,
    VoidPayment,
    CapturePayment,
    RefundPayment,
    ConfirmBooking,
    CancelBooking,
    SendNotification,
    SwapBooking,
    RefundDifference,
}

const FORWARD: [(&str, Action); 7] = [
    ("inventory.hold", Action::HoldInventory),
    ("payment.authorize", Action::AuthorizePayment),
    ("payment.capture", Action::CapturePayment),
    ("booking.confirm", Action::ConfirmBooking),
    ("notification.send", Action::SendNotification),
    ("booking.swap", Action::SwapBooking),
    ("payment.refund_difference", Action::RefundDifference),
];

const COMPENSATIONS: [(&str, Action); 4] = [
    ("inventory.release", Action::ReleaseInventory),
    ("payment.void", Action::VoidPayment),
    ("payment.refund", Action::RefundPayment),
    ("booking.cancel", Action::CancelBooking),
];

const FORWARD_NAMES: [&str; 7] = [
    FORWARD[0].0,
    FORWARD[1].0,
    FORWARD[2].0,
    FORWARD[3].0,
    FORWARD[4].0,
    FORWARD[5].0,
    FORWARD[6].0,
];
const COMPENSATION_NAMES: [&str; 4] = [
    COMPENSATIONS[0].0,
    COMPENSATIONS[1].0,
    COMPENSATIONS[2].0,
    COMPENSATIONS[3].0,
];

/// What saga definitions may name, for the definition validator.
pub fn catalog() -> ActionCatalog<'static> {
    ActionCatalog {
        actions: &FORWARD_NAMES,
        compensations: &COMPENSATION_NAMES,
    }
}

impl Action {
    pub fn parse(name: &str) -> Option<Action> {
        FORWARD
            .iter()
            .chain(COMPENSATIONS.iter())
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// The outside dependency a remote action calls (`None`: a local action, or a notification
    /// with no gateway configured, which calls nothing).
    pub fn dependency(self, deps: &Deps) -> Option<Dependency> {
        match self {
            Action::AuthorizePayment
            | Action::VoidPayment
            | Action::CapturePayment
            | Action::RefundPayment
            | Action::RefundDifference => Some(Dependency::Stripe),
            Action::SendNotification => deps.notify.as_ref().map(|_| Dependency::Notify),
            Action::HoldInventory
            | Action::ReleaseInventory
            | Action::ConfirmBooking
            | Action::CancelBooking
            | Action::SwapBooking => None,
        }
    }

    /// Runs inside the outcome transaction (our own database only).
    pub fn is_local(self) -> bool {
        matches!(
            self,
            Action::HoldInventory
                | Action::ReleaseInventory
                | Action::ConfirmBooking
                | Action::CancelBooking
                | Action::SwapBooking
        )
    }
}

/// What the statement that records a local action planned ahead ([`Action::plan_ahead`]) must
/// also do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AheadEffect {
    /// Nothing: the action's events are all it writes.
    None,
    /// Turn the saga's hold into a booking; if the hold is lost, the statement fails as a whole.
    ConvertHoldToBooking,
}

/// What actions need from the outside world.
#[derive(Clone)]
pub struct Deps {
    pub stripe: StripeClient,
    pub http: reqwest::Client,
    pub notify: Option<NotifyConfig>,
    /// The circuit breakers every remote action's call goes through.
    pub breakers: Arc<Breakers>,
    /// The database's clock, which every time a step records is on.
    pub clock: crate::clock::Clock,
}

/// What an action knows about the saga it runs for.
pub struct StepCtx<'a> {
    pub saga_id: SagaId,
    pub input: &'a BookingInput,
    /// Outputs of the saga's steps so far, by step name.
    pub context: &'a serde_json::Map<String, serde_json::Value>,
    pub definition: &'a SagaDefinition,
    /// The step being run (forward) or undone (compensation).
    pub step: &'a StepDefinition,
    pub attempt: i32,
    /// Why the saga is compensating, when it is.
    pub failure_reason: Option<&'a str>,
    /// When the step began, by the database's clock ([`crate::clock`]): what its deadlines and
    /// expiry times count from.
    pub now: chrono::DateTime<chrono::Utc>,
    /// The cancellation requested, when one was (who, why, the refund's share).
    pub cancellation: Option<&'a Cancellation>,
}

impl StepCtx<'_> {
    /// The output a step left in the context.
    pub fn output_of(&self, step: &str) -> Option<&serde_json::Value> {
        self.context.get(step)
    }

    /// The output of the step that runs `action` (e.g. the PaymentIntent of `payment.authorize`).
    pub fn output_of_action(&self, action: &str) -> Option<&serde_json::Value> {
        self.definition
            .steps
            .iter()
            .find(|s| s.action == action)
            .and_then(|s| self.context.get(&s.name))
    }

    /// What was captured, as the capture step recorded it (0 when it recorded no capture).
    pub fn captured(&self) -> i64 {
        captured(self.definition, self.context)
    }

    /// The `BookingCancelled` event of this saga's cancellation: the one requested, or, when sagad
    /// undoes a failed booking on its own, a full refund with the failure as the reason.
    pub fn cancelled_event(&self) -> crate::events::Event {
        match self.cancellation {
            Some(c) => c.event(self.input.amount, self.captured()),
            None => Cancellation::by_sagad(self.failure_reason.unwrap_or("compensation"))
                .event(self.input.amount, self.captured()),
        }
    }

    /// Stable idempotency key for an effect of this saga: the same on every retry and every process.
    pub fn idempotency_key(&self, effect: &str) -> String {
        format!("sagad:{}:{effect}", self.saga_id)
    }

    /// A duration parameter of the step (`params = { hold_ttl = "30m" }`).
    pub fn duration_param(&self, name: &str, default: Duration) -> Duration {
        self.step
            .params
            .get(name)
            .and_then(|v| v.as_str())
            .and_then(|s| super::definition::duration::parse(s).ok())
            .unwrap_or(default)
    }
}

impl Action {
    /// Runs a remote action (outside any transaction).
    pub async fn run_remote(self, deps: &Deps, ctx: &StepCtx<'_>) -> Outcome {
        match self {
            Action::AuthorizePayment => payment::authorize(&deps.stripe, ctx).await,
            Action::VoidPayment => payment::void(&deps.stripe, ctx).await,
            Action::CapturePayment => payment::capture(&deps.stripe, ctx).await,
            Action::RefundPayment => payment::refund(&deps.stripe, ctx).await,
            Action::SendNotification => notify::send(deps, ctx).await,
            Action::RefundDifference => change::refund_difference(&deps.stripe, ctx).await,
            Action::HoldInventory
            | Action::ReleaseInventory
            | Action::ConfirmBooking
            | Action::CancelBooking
            | Action::SwapBooking => Outcome::fail("local action run as remote (bug)", false),
        }
    }

    /// A local action's outcome planned before it runs, and what the statement that records it
    /// must carry out besides: then one statement does both, or neither. `None` when the outcome
    /// depends on what the action finds (it then runs step by step in the recording transaction).
    pub fn plan_ahead(self, ctx: &StepCtx<'_>) -> Option<(Outcome, AheadEffect)> {
        match self {
            // Planned as booked; the statement fails when the hold turns out to be lost.
            Action::ConfirmBooking => {
                Some((inventory::confirmed(ctx), AheadEffect::ConvertHoldToBooking))
            }
            Action::CancelBooking => Some((inventory::cancelled(ctx), AheadEffect::None)),
            // The hold is planned ahead only by the start statement (`engine::start`), which
            // knows the saga is new; release depends on what is there to release.
            Action::HoldInventory
            | Action::ReleaseInventory
            | Action::AuthorizePayment
            | Action::VoidPayment
            | Action::CapturePayment
            | Action::RefundPayment
            | Action::SendNotification
            | Action::SwapBooking
            | Action::RefundDifference => None,
        }
    }

    /// Runs a local action inside the outcome transaction.
    pub async fn run_local(
        self,
        conn: &mut PgConnection,
        ctx: &StepCtx<'_>,
    ) -> Result<Outcome, sqlx::Error> {
        match self {
            Action::HoldInventory => inventory::hold(conn, ctx).await,
            Action::ReleaseInventory => inventory::release(conn, ctx).await,
            Action::ConfirmBooking => inventory::confirm(conn, ctx).await,
            Action::CancelBooking => inventory::cancel(conn, ctx).await,
            Action::SwapBooking => change::swap(conn, ctx).await,
            Action::AuthorizePayment
            | Action::VoidPayment
            | Action::CapturePayment
            | Action::RefundPayment
            | Action::SendNotification
            | Action::RefundDifference => {
                Ok(Outcome::fail("remote action run as local (bug)", false))
            }
        }
    }
}
