//! A new saga's start: one statement that persists it with its first event and, when its
//! definition begins with the inventory hold, carries that step out as well.
//!
//! The hold is a local step: its effect is a row in our own database, so placing it and recording
//! its outcome in the start's own statement is as atomic as a worker doing both in a transaction,
//! and saves a writing transaction and four round trips per saga. The step is planned ahead as
//! placed; the database decides (the `inventory_no_overlap` exclusion constraint). When the dates
//! are taken the statement writes the saga as if nothing ran ahead, and a worker runs the hold
//! step as usual, which finds them taken and compensates.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::actions::{self, Action, StepCtx};
use super::definition::SagaDefinition;
use super::model::{SagaStatus, StepOutcome, StepPhase};
use super::plan::{self, Env, Plan, State};
use super::record::{self, Outcomes};
use crate::domain::BookingInput;
use crate::domain::SagaId;
use crate::events::NewEvent;
use crate::store::bookings::REQUESTED;
use crate::store::inventory::NewHold;
use crate::store::progress::InsertOutcome;

/// A saga about to start.
pub struct Starting<'a> {
    pub def: &'a SagaDefinition,
    pub id: SagaId,
    pub input: &'a BookingInput,
    pub input_json: &'a Value,
    pub idempotency_key: Option<&'a str>,
    pub fingerprint: &'a str,
    /// Inserted already leased to this worker (id, lease): this process runs it.
    pub leased_to: Option<(&'a str, Duration)>,
    /// The database's time ([`crate::clock::Clock::db_now`]): what the hold's expiry counts from.
    pub now: chrono::DateTime<chrono::Utc>,
}

/// What [`start`] did.
pub struct Started {
    pub outcome: InsertOutcome,
    /// The steps the start carried out, as their rows in the step history show them.
    pub ran_ahead: Vec<StepOutcome>,
    /// The booking's status as the start left it (`requested`, or `held`).
    pub booking_status: &'static str,
}

/// The hold step planned ahead: the hold to place and the plan of its outcome.
struct HoldAhead<'a> {
    hold: NewHold<'a>,
    plan: Plan,
}

/// The first step planned ahead, when it is the inventory hold and the saga goes on after it.
fn plan_hold_ahead<'a>(s: &Starting<'a>) -> Option<HoldAhead<'a>> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    let step = s.def.steps.first()?;
    if Action::parse(&step.action) != Some(Action::HoldInventory) {
        return None;
    }
    let ctx = StepCtx {
        saga_id: s.id,
        input: s.input,
        context: &EMPTY,
        definition: s.def,
        step,
        attempt: 1,
        failure_reason: None,
        now: s.now,
        cancellation: None,
    };
    let now = s.now;
    let (hold, outcome) = actions::plan_hold(&ctx, now);
    let state = State {
        def: s.def,
        status: SagaStatus::Running,
        current_step: 0,
        attempt: 1,
        context: &EMPTY,
        failure_reason: None,
        retrying_since: None,
    };
    let env = Env {
        now,
        lease: s.leased_to.map_or(Duration::ZERO, |(_, lease)| lease),
        jitter_unit: 0.5,
    };
    let plan = plan::after(&state, &env, outcome);
    // Only a hold the saga goes on from: a definition that ends with it finishes with a worker.
    let t = &plan.transition;
    (t.status == SagaStatus::Running && t.keep_lease.is_some()).then_some(HoldAhead { hold, plan })
}

/// Starts `s` with its first event (`BookingRequested`) in one statement (see the module's
/// documentation); `wake_workers`: NOTIFY the workers, for a saga not leased to this process.
pub async fn start(
    conn: &mut PgConnection,
    s: &Starting<'_>,
    first_event: NewEvent,
    wake_workers: bool,
) -> Result<Started, sqlx::Error> {
    let began = Instant::now();
    let Some(HoldAhead { hold, plan }) = plan_hold_ahead(s) else {
        let outcome = record::start(conn, s, first_event, None, wake_workers).await?;
        return Ok(Started {
            outcome,
            ran_ahead: Vec::new(),
            booking_status: REQUESTED,
        });
    };
    let outcomes = Outcomes::of(vec![plan], s.leased_to.map(|(w, _)| w));
    let outcome =
        record::start(conn, s, first_event, Some((&hold, &outcomes)), wake_workers).await?;
    let held = matches!(&outcome, InsertOutcome::Created(row)
        if row.current_step == outcomes.transition().current_step);
    if !held {
        return Ok(Started {
            outcome,
            ran_ahead: Vec::new(),
            booking_status: REQUESTED,
        });
    }
    crate::telemetry::step_finished(
        &s.def.name,
        &s.def.steps[0].name,
        StepPhase::Forward,
        "done",
        began.elapsed(),
    );
    Ok(Started {
        outcome,
        ran_ahead: outcomes.steps().to_vec(),
        booking_status: outcomes.booking().status.unwrap_or(REQUESTED),
    })
}
