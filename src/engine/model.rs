//! The engine's model: where a saga is, the state a step outcome moves it to, and the step
//! history rows outcomes write. The pure state machine (`plan`) speaks it, and the store writes
//! it; it depends on neither.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its forward steps.
    Running,
    /// Undoing its completed steps in reverse order.
    Compensating,
    /// Parked until an outside event (e.g. 3-D Secure) or its deadline.
    Waiting,
    /// Every step succeeded.
    Completed,
    /// Every needed compensation succeeded.
    Compensated,
    /// A compensation could not succeed within its retry limit: an operator must look.
    Stuck,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 6] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Waiting,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Stuck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Waiting => "waiting",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Stuck => "stuck",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Terminal for the engine: nothing more happens without an operator or a guest.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Stuck
        )
    }
}

impl std::fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker holds: the guard its outcome commit must still match.
#[derive(Debug, Clone)]
pub struct Fence {
    pub id: Uuid,
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
            events: 0,
        }
    }
}

/// A step attempt's outcome as its saga's step history shows it: how its row in `saga_steps` (one
/// per step and phase) changes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub index: i32,
    /// `forward` or `compensation`.
    pub phase: &'static str,
    pub name: String,
    /// `running`, `succeeded`, `failed`, `waiting` or `skipped`.
    pub status: &'static str,
    pub attempts: i32,
    pub error: Option<String>,
}
