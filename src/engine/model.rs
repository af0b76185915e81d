//! The engine's model: where a saga is, the state a step outcome moves it to, and the step
//! history rows outcomes write. The pure state machine (`plan`) speaks it, and the store writes
//! it; it depends on neither.

use std::time::Duration;

use chrono::{DateTime, Utc};
use utoipa::ToSchema;

use crate::domain::SagaId;
use crate::text_enum::text_enum;

text_enum! {
    /// Where a saga is in its life (`sagas.status`).
    #[derive(ToSchema)]
    pub enum SagaStatus {
        /// Running its forward steps.
        Running = "running",
        /// Undoing its completed steps in reverse order.
        Compensating = "compensating",
        /// Parked until an outside event (e.g. 3-D Secure) or its deadline.
        Waiting = "waiting",
        /// Every step succeeded.
        Completed = "completed",
        /// Every needed compensation succeeded.
        Compensated = "compensated",
        /// A compensation could not succeed within its retry limit: an operator must look.
        Stuck = "stuck",
    }
}

impl SagaStatus {
    /// Terminal for the engine: nothing more happens without an operator or a guest.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Stuck
        )
    }
}

text_enum! {
    /// Which way a step ran (`saga_steps.phase`).
    #[derive(ToSchema)]
    pub enum StepPhase {
        /// The step's action.
        Forward = "forward",
        /// The step's compensation, undoing its action.
        Compensation = "compensation",
    }
}

text_enum! {
    /// Where a step is in one phase (`saga_steps.status`).
    #[derive(ToSchema)]
    pub enum StepStatus {
        /// An attempt is under way or due.
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Parked until an outside event or its deadline.
        Waiting = "waiting",
        Skipped = "skipped",
    }
}

/// What a worker holds: the guard its outcome commit must still match.
#[derive(Debug, Clone)]
pub struct Fence {
    pub id: SagaId,
    pub status: SagaStatus,
    pub current_step: i32,
    pub attempt: i32,
    pub worker: String,
}

/// The state a step outcome moves the saga to.
#[derive(Debug, Clone)]
pub struct Transition {
    pub status: SagaStatus,
    pub current_step: i32,
    pub attempt: i32,
    pub context: serde_json::Value,
    pub next_run_at: Option<DateTime<Utc>>,
    /// Keep the lease (the same worker goes on with the next step at once) for this long.
    pub keep_lease: Option<Duration>,
    /// With `keep_lease`: leave the current lease as it is while at least this much of it remains,
    /// renew it otherwise (`None`: always renew). Then a step that goes on touches no indexed
    /// column of `sagas` (`next_run_at` too is left alone while leased), so PostgreSQL can update
    /// the row in place (a HOT update) instead of adding an entry to each of its indexes.
    pub lease_floor: Option<Duration>,
    pub wait_key: Option<String>,
    pub wait_deadline: Option<DateTime<Utc>>,
    pub failure_step: Option<String>,
    pub failure_reason: Option<String>,
    /// When the current step's first failed attempt of a run of retryable failures was made
    /// (its give-up deadline counts from there); `None` unless the step is being retried.
    pub retrying_since: Option<DateTime<Utc>>,
    /// Extend the saga's live inventory hold to at least this time (a step waiting out an outage
    /// must not lose it); `None`: leave it.
    pub hold_until: Option<DateTime<Utc>>,
    /// Why the saga waits without being `waiting` (`dependency:stripe`); kept until the next
    /// outcome after it is woken.
    pub wait_reason: Option<String>,
    /// The saga pauses now (on the dependency of `wait_reason`), until woken.
    pub paused: bool,
    /// Events this transition appends; their versions are reserved by the same statement.
    pub events: i32,
}

impl Transition {
    /// To `status` at `step` (attempt `attempt`) with `context`, setting nothing else: no schedule,
    /// no lease kept, no wait, no failure, no events.
    pub fn new(status: SagaStatus, step: i32, attempt: i32, context: serde_json::Value) -> Self {
        Self {
            status,
            current_step: step,
            attempt,
            context,
            next_run_at: None,
            keep_lease: None,
            lease_floor: None,
            wait_key: None,
            wait_deadline: None,
            failure_step: None,
            failure_reason: None,
            retrying_since: None,
            hold_until: None,
            wait_reason: None,
            paused: false,
            events: 0,
        }
    }
}

/// A step attempt's outcome as its saga's step history shows it: how its row in `saga_steps` (one
/// per step and phase) changes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub index: i32,
    pub phase: StepPhase,
    pub name: String,
    pub status: StepStatus,
    pub attempts: i32,
    pub error: Option<String>,
}
