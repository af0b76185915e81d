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

use chrono::Utc;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::actions::{self, Action, StepCtx};
use super::definition::SagaDefinition;
use super::model::{SagaStatus, StepOutcome};
use super::plan::{self, Env, Plan, State};
use crate::domain::BookingInput;
use crate::events::NewEvent;
use crate::store::inventory::NewHold;
use crate::store::sagas::{self, InsertOutcome, NewSaga, StartAhead};
use crate::store::{self, bookings, sqlstate};

/// A booking's status when its saga starts with nothing run ahead.
const REQUESTED: &str = "requested";

/// A saga about to start.
pub struct Starting<'a> {
    pub def: &'a SagaDefinition,
    pub id: Uuid,
    pub input: &'a BookingInput,
    pub input_json: &'a Value,
    pub idempotency_key: Option<&'a str>,
    pub fingerprint: &'a str,
    /// Inserted already leased to this worker (id, lease): this process runs it.
    pub leased_to: Option<(&'a str, Duration)>,
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
    };
    let now = Utc::now();
    let (hold, outcome) = actions::plan_hold(&ctx, now);
    let state = State {
        def: s.def,
        status: SagaStatus::Running,
        current_step: 0,
        attempt: 1,
        context: &EMPTY,
        failure_reason: None,
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

/// What the store's start statement is given for `s`.
fn new_saga<'b>(
    s: &'b Starting<'_>,
    events: &'b [NewEvent],
    ahead: Option<StartAhead<'b>>,
) -> NewSaga<'b> {
    NewSaga {
        id: s.id,
        saga_name: &s.def.name,
        saga_version: s.def.version as i32,
        input: s.input_json,
        idempotency_key: s.idempotency_key,
        request_fingerprint: s.fingerprint,
        leased_to: s.leased_to,
        events,
        ahead,
    }
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
    let ahead = plan_hold_ahead(s);
    let worker = s.leased_to.map(|(w, _)| w.to_owned());
    let mut events = vec![first_event];
    if let Some(a) = &ahead {
        events.extend(a.plan.events.iter().cloned());
    }
    for e in &mut events {
        e.worker.clone_from(&worker);
    }
    let steps: Vec<StepOutcome> = ahead.iter().filter_map(|a| a.plan.step.clone()).collect();
    let booking_status = bookings::Change::of(events.iter().map(|e| &e.event))
        .status
        .unwrap_or(REQUESTED);
    let Some(a) = &ahead else {
        let outcome = sagas::start(conn, &new_saga(s, &events, None), wake_workers).await?;
        return Ok(Started {
            outcome,
            ran_ahead: Vec::new(),
            booking_status: REQUESTED,
        });
    };
    let with_hold = StartAhead {
        hold: &a.hold,
        current_step: a.plan.transition.current_step,
        context: &a.plan.transition.context,
        booking_status,
        steps: &steps,
    };
    let outcome =
        match sagas::start(conn, &new_saga(s, &events, Some(with_hold)), wake_workers).await {
            Ok(outcome) => outcome,
            // Two requests with one idempotency key, both new when they began: the later one's hold
            // refers to a saga it could not insert. Without the hold, it finds the earlier saga.
            Err(e) if store::sqlstate(&e).as_deref() == Some(sqlstate::FOREIGN_KEY_VIOLATION) => {
                sagas::start(conn, &new_saga(s, &events[..1], None), wake_workers).await?
            }
            Err(e) => return Err(e),
        };
    let (ran_ahead, booking_status) = match &outcome {
        InsertOutcome::Created(row) if row.current_step == a.plan.transition.current_step => {
            crate::telemetry::step_finished(
                &s.def.name,
                &s.def.steps[0].name,
                "forward",
                "done",
                began.elapsed(),
            );
            (a.plan.step.iter().cloned().collect(), booking_status)
        }
        _ => (Vec::new(), REQUESTED),
    };
    Ok(Started {
        outcome,
        ran_ahead,
        booking_status,
    })
}
