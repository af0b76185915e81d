//! How the engine records what its steps came to: the one way every step outcome reaches the
//! database, whichever way the step ran —
//!
//! - planned ahead by a saga's start (the inventory hold): the start statement places the hold
//!   and records the step ([`start`]);
//! - run remote, alone or in a run of remote steps (authorize → capture), then recorded
//!   ([`record`]);
//! - local and planned ahead ([`Action::plan_ahead`](super::actions::Action::plan_ahead)) into
//!   the statement that records the steps before it, which also carries out its effect (a hold
//!   turned into a booking, [`Outcomes::converting_hold`]);
//! - local and run inside the transaction that then records it with the steps before it;
//! - and the plans of a guest cancellation or of a retry after a local step's database error.
//!
//! Plans are folded into [`Outcomes`] (the transition, the events tagged with the worker that
//! produced them, the bookings change they make, the step history rows), which one statement
//! records: a new saga's ([`start`]) or a step outcome's under the worker's fence ([`record`]).

use sqlx::PgConnection;

use super::model::{Fence, StepOutcome, Transition};
use super::plan::{self, Plan};
use super::start::Starting;
use crate::events::NewEvent;
use crate::store::inventory::NewHold;
use crate::store::progress::{self, InsertOutcome, NewSaga, Recorded, StartAhead};
use crate::store::{self, bookings, sqlstate};

/// Step outcomes that commit together, in one statement.
#[derive(Debug)]
pub struct Outcomes {
    transition: Transition,
    events: Vec<NewEvent>,
    booking: bookings::Change,
    steps: Vec<StepOutcome>,
    convert_hold: bool,
}

impl Outcomes {
    /// The outcomes `plans` plan (at least one; each planned on the state the one before leads
    /// to), their events produced by `worker`.
    pub fn of(plans: Vec<Plan>, worker: Option<&str>) -> Self {
        let plan::Batch {
            transition,
            mut events,
            steps,
        } = plan::merge(plans);
        for e in &mut events {
            e.worker = worker.map(str::to_owned);
        }
        let booking = bookings::Change::of(events.iter().map(|e| &e.event));
        Self {
            transition,
            events,
            booking,
            steps,
            convert_hold: false,
        }
    }

    /// With `convert`, a confirm step planned ahead is among them: the statement that records
    /// them also turns the saga's hold into a booking, or, when the hold is lost, fails with
    /// [`sqlstate::HOLD_LOST`] and writes nothing.
    pub fn converting_hold(mut self, convert: bool) -> Self {
        self.convert_hold = convert;
        self
    }

    /// The state they lead to.
    pub fn transition(&self) -> &Transition {
        &self.transition
    }

    pub fn events(&self) -> &[NewEvent] {
        &self.events
    }

    /// What their events change in the bookings projection.
    pub fn booking(&self) -> &bookings::Change {
        &self.booking
    }

    /// Their step history rows, one per step and phase.
    pub fn steps(&self) -> &[StepOutcome] {
        &self.steps
    }
}

/// Records `outcomes` of the saga named `saga_name` in **one statement** if the worker still
/// holds it as `fence` says (atomic on its own, or part of the caller's transaction with the
/// effects of the local steps among them). `None` when the fence no longer holds (the lease ran
/// out and someone else claimed the saga): then nothing was written.
pub async fn record(
    conn: &mut PgConnection,
    fence: &Fence,
    saga_name: &str,
    outcomes: &Outcomes,
) -> Result<Option<Recorded>, sqlx::Error> {
    let record = progress::Record {
        fence,
        transition: &outcomes.transition,
        saga_name,
        events: &outcomes.events,
        booking: &outcomes.booking,
        steps: &outcomes.steps,
        convert_hold: outcomes.convert_hold,
    };
    progress::record(conn, &record).await
}

/// Starts `s` in **one statement** with its first event `first` and, with `ahead`, the hold its
/// leading steps place and their `outcomes`, recorded only if the hold could be placed (the
/// saga otherwise starts at its first step with its first event only). `wake_workers`: NOTIFY
/// the workers, for a saga not leased to this process.
pub async fn start(
    conn: &mut PgConnection,
    s: &Starting<'_>,
    first: NewEvent,
    ahead: Option<(&NewHold<'_>, &Outcomes)>,
    wake_workers: bool,
) -> Result<InsertOutcome, sqlx::Error> {
    let worker = s.leased_to.map(|(w, _)| w.to_owned());
    let mut events = vec![NewEvent { worker, ..first }];
    let Some((hold, outcomes)) = ahead else {
        return progress::start(conn, &new_saga(s, &events, None), wake_workers).await;
    };
    events.extend(outcomes.events.iter().cloned());
    let with_hold = StartAhead {
        hold,
        current_step: outcomes.transition.current_step,
        context: &outcomes.transition.context,
        booking_status: outcomes.booking.status.unwrap_or(bookings::REQUESTED),
        steps: &outcomes.steps,
    };
    match progress::start(conn, &new_saga(s, &events, Some(with_hold)), wake_workers).await {
        // Two requests with one idempotency key, both new when they began: the later one's hold
        // refers to a saga it could not insert. Without the hold, it finds the earlier saga.
        Err(e) if store::sqlstate(&e).as_deref() == Some(sqlstate::FOREIGN_KEY_VIOLATION) => {
            progress::start(conn, &new_saga(s, &events[..1], None), wake_workers).await
        }
        started => started,
    }
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
