//! A saga's progress, one statement each: its start (with the steps it runs ahead) and each
//! step outcome (with the local steps chained to it). Both are assembled from parts
//! ([`super::stmt`]): the saga row, the events and their webhook deliveries, the step history,
//! the booking, the inventory claim and the NOTIFYs.

use std::fmt;
use std::time::Duration;

use sqlx::{FromRow, PgConnection, Row};

use super::bookings::{self, InsertRequested, UpdateBooking};
use super::events::{self, AppendEvents};
use super::inventory::{self, PlaceHold};
use super::outbound::WakeDeliveries;
use super::sagas::{COLUMNS, SagaRow};
use super::stmt::{Binds, Param, Statement, Text};
use super::{DONE_CHANNEL, WORK_CHANNEL};
use crate::domain::SagaId;
use crate::engine::model::{Fence, SagaStatus, StepOutcome, Transition};
use crate::events::{Event, NewEvent};

/// A saga to start.
pub struct NewSaga<'a> {
    pub id: SagaId,
    pub saga_name: &'a str,
    pub saga_version: i32,
    pub input: &'a serde_json::Value,
    pub idempotency_key: Option<&'a str>,
    pub request_fingerprint: &'a str,
    /// Insert it already claimed (first attempt) by this worker for this long: the starting
    /// process runs it itself, without a claim.
    pub leased_to: Option<(&'a str, Duration)>,
    /// Its first events: `BookingRequested` (which creates the booking row), then those of the
    /// steps run ahead, if any.
    pub events: &'a [NewEvent],
    /// Leading steps the start statement carries out itself.
    pub ahead: Option<StartAhead<'a>>,
}

/// Leading steps of a new saga that its start statement carries out, planned ahead as having
/// succeeded: the hold they place, the state they lead to and their step rows. When the hold
/// cannot be placed (the dates are taken), the saga starts at its first step as if there were
/// none, with its first event only; a worker then runs the hold step, which finds them taken.
pub struct StartAhead<'a> {
    pub hold: &'a inventory::NewHold<'a>,
    pub current_step: i32,
    pub context: &'a serde_json::Value,
    /// The booking's status after the steps' events.
    pub booking_status: &'a str,
    pub steps: &'a [StepOutcome],
}

pub enum InsertOutcome {
    /// The new saga as inserted: past the steps ahead when its `current_step` is theirs.
    Created(Box<SagaRow>),
    /// The idempotency key was used before: the saga it started and that request's fingerprint.
    Existing { id: SagaId, fingerprint: String },
}

/// The `INSERT` of a new saga as the CTE `s`, which returns its row: a statement part.
struct InsertSaga {
    id: Param,
    name: Param,
    version: Param,
    input: Param,
    idempotency_key: Param,
    fingerprint: Param,
    worker: Param,
    lease: Param,
}

impl InsertSaga {
    fn new(b: &mut Binds, saga: &NewSaga<'_>) -> Self {
        Self {
            id: b.push(saga.id),
            name: b.push(saga.saga_name),
            version: b.push(saga.saga_version),
            input: b.push(saga.input),
            idempotency_key: b.push(saga.idempotency_key),
            fingerprint: b.push(saga.request_fingerprint),
            worker: b.push(saga.leased_to.map(|(w, _)| w)),
            lease: b.push(saga.leased_to.map(|(_, d)| d.as_millis() as f64)),
        }
    }

    /// `step`, `context` and `versions`: the SQL of the saga's current step, context and event
    /// version.
    fn sql(&self, step: &str, context: &str, versions: &str) -> String {
        let Self {
            id,
            name,
            version,
            input,
            idempotency_key,
            fingerprint,
            worker,
            lease,
        } = self;
        format!(
            "s AS (
             INSERT INTO sagas (id, saga_name, saga_version, status, input, next_run_at, idempotency_key,
                                request_fingerprint, locked_by, locked_until, attempt,
                                current_step, context, event_version)
             SELECT {id}, {name}, {version}, 'running', {input}, now(), {idempotency_key}, {fingerprint}, {worker},
                    now() + {lease}::float8 * interval '1 millisecond', CASE WHEN {worker}::text IS NULL THEN 0 ELSE 1 END,
                    {step}, {context}, {versions}
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING {COLUMNS})"
        )
    }
}

/// The NOTIFY that wakes the workers when `wake` is true: a statement part.
struct WakeWorkers {
    channel: Param,
    wake: Param,
}

impl WakeWorkers {
    fn new(b: &mut Binds, wake: bool) -> Self {
        Self {
            channel: b.push(WORK_CHANNEL),
            wake: b.push(wake),
        }
    }
}

impl fmt::Display for WakeWorkers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { channel, wake } = self;
        write!(f, "SELECT pg_notify({channel}, '') WHERE {wake}::bool")
    }
}

/// The state a new saga starts in past its steps ahead: a statement part.
struct PastAhead {
    current_step: Param,
    context: Param,
    event_version: Param,
    booking_status: Param,
}

impl PastAhead {
    fn new(b: &mut Binds, ahead: &StartAhead<'_>, events: usize) -> Self {
        Self {
            current_step: b.push(ahead.current_step),
            context: b.push(ahead.context),
            event_version: b.push(events as i32),
            booking_status: b.push(ahead.booking_status),
        }
    }
}

/// The upsert of step history rows (at most one per step and phase) as the CTE `step`: a
/// statement part.
struct StepRows {
    index: Param,
    phase: Param,
    name: Param,
    status: Param,
    attempts: Param,
    error: Param,
}

impl StepRows {
    fn new(b: &mut Binds, steps: &[StepOutcome]) -> Self {
        Self {
            index: b.push(steps.iter().map(|s| s.index).collect::<Vec<_>>()),
            phase: b.push(steps.iter().map(|s| s.phase.as_str()).collect::<Vec<_>>()),
            name: b.push(steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()),
            status: b.push(steps.iter().map(|s| s.status.as_str()).collect::<Vec<_>>()),
            attempts: b.push(steps.iter().map(|s| s.attempts).collect::<Vec<_>>()),
            error: b.push(steps.iter().map(|s| s.error.as_deref()).collect::<Vec<_>>()),
        }
    }

    /// The rows of the saga whose id is `saga_id`, written only when `gate` (a FROM item)
    /// yields a row.
    fn sql(&self, saga_id: Param, gate: &str) -> String {
        let Self {
            index,
            phase,
            name,
            status,
            attempts,
            error,
        } = self;
        format!(
            "step AS (
             INSERT INTO saga_steps (saga_id, step_index, phase, step_name, status, attempts, last_error, finished_at)
             SELECT {saga_id}, x.i, x.phase, x.name, x.status, x.attempts, x.error,
                    CASE WHEN x.status IN ('succeeded', 'failed', 'skipped') THEN now() END
             FROM {gate}, unnest({index}::int[], {phase}::text[], {name}::text[], {status}::text[],
                                 {attempts}::int[], {error}::text[])
                     AS x(i, phase, name, status, attempts, error)
             ON CONFLICT (saga_id, step_index, phase) DO UPDATE
             SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
                 last_error = COALESCE(EXCLUDED.last_error, saga_steps.last_error),
                 finished_at = EXCLUDED.finished_at
             RETURNING 1)"
        )
    }
}

/// The parts of the start statement ([`start`]).
struct Start {
    saga: InsertSaga,
    wake_workers: WakeWorkers,
    wake_deliveries: WakeDeliveries,
    events: AppendEvents,
    booking: InsertRequested,
    ahead: Option<StartAheadParts>,
}

/// The parts that carry out the steps ahead of a new saga.
struct StartAheadParts {
    past: PastAhead,
    hold: PlaceHold,
    steps: StepRows,
}

impl Start {
    fn new(b: &mut Binds, saga: &NewSaga<'_>, first: &Event, wake: bool) -> Self {
        let batch = events::EventColumns::new(saga.id.0, saga.events);
        let insert = InsertSaga::new(b, saga);
        let wake_workers = WakeWorkers::new(b, wake);
        let wake_deliveries = WakeDeliveries::new(b);
        let events = AppendEvents::new(b, &batch, saga.saga_name);
        let booking = InsertRequested::new(b, first);
        let ahead = saga.ahead.as_ref().map(|a| {
            let past = PastAhead::new(b, a, saga.events.len());
            let hold = PlaceHold::new(b, a.hold);
            let steps = StepRows::new(b, a.steps);
            StartAheadParts { past, hold, steps }
        });
        Self {
            saga: insert,
            wake_workers,
            wake_deliveries,
            events,
            booking,
            ahead,
        }
    }

    fn sql(&self) -> String {
        // With steps ahead, `claim` places their hold, unless the idempotency key was used
        // before (a replay must not hold anything: the earlier saga has its own), and the saga
        // starts past them only if it did; parts gated on `s` write nothing for a reused key.
        // `past(p, v)`: `p` past the steps ahead, else the plain start's `v`.
        const HELD: &str = "EXISTS (SELECT 1 FROM claim)";
        let past = |ahead_value: String, plain: &str| {
            format!("CASE WHEN {HELD} THEN {ahead_value} ELSE {plain} END")
        };
        let id = self.saga.id;
        let (claim, steps, step, context, versions, status) = match &self.ahead {
            Some(a) => (
                format!(
                    "claim AS ({}),",
                    a.hold.sql(
                        id,
                        &format!(
                            "WHERE NOT EXISTS (SELECT 1 FROM sagas WHERE idempotency_key = {})",
                            self.saga.idempotency_key
                        )
                    )
                ),
                format!(
                    ", {}",
                    a.steps
                        .sql(id, &format!("(SELECT 1 FROM s WHERE {HELD}) AS ran"))
                ),
                past(format!("{}::int", a.past.current_step), "0"),
                past(format!("{}::jsonb", a.past.context), "'{}'::jsonb"),
                past(format!("{}::int", a.past.event_version), "1"),
                past(format!("{}::text", a.past.booking_status), "'requested'"),
            ),
            None => (
                String::new(),
                String::new(),
                "0".to_owned(),
                "'{}'::jsonb".to_owned(),
                "1".to_owned(),
                "'requested'".to_owned(),
            ),
        };
        format!(
            "WITH {claim}
         {saga},
         {events},
         booking AS ({booking} RETURNING 1){steps}
         SELECT s.*,
                (SELECT count(*) FROM ({wake_workers}) n) AS notified,
                (SELECT count(*) FROM ({wake_deliveries}) w) AS woke_deliveries
         FROM s",
            saga = self.saga.sql(&step, &context, &versions),
            // Only the events the saga starts with: the first, or all of them past the steps
            // ahead.
            events = self
                .events
                .ctes(id, &"1", "s WHERE e.ord <= s.event_version"),
            booking = self.booking.sql(id, "s", &status),
            wake_workers = self.wake_workers,
            wake_deliveries = self.wake_deliveries,
        )
    }
}

/// The start statement of `saga`, whose first event is `first` ([`start`]).
pub(super) fn start_statement(saga: &NewSaga<'_>, first: &Event, wake_workers: bool) -> Statement {
    static PLAIN: Text = Text::new();
    static AHEAD: Text = Text::new();
    let mut b = Binds::new();
    let start = Start::new(&mut b, saga, first, wake_workers);
    let text = if start.ahead.is_some() {
        &AHEAD
    } else {
        &PLAIN
    };
    text.with(b, || start.sql())
}

/// Starts a saga in **one statement**: the saga (due now, or already leased to the caller's
/// engine), its first event (version 1, fanned out to webhook deliveries), the booking row the
/// event creates, and, unless `wake_workers` is false, the NOTIFY that wakes a worker. With
/// steps ahead, the same statement places their hold and, if it could, records them: their
/// events, step rows and the state past them. A reused idempotency key writes nothing and
/// reports the earlier saga.
pub async fn start(
    conn: &mut PgConnection,
    saga: &NewSaga<'_>,
    wake_workers: bool,
) -> Result<InsertOutcome, sqlx::Error> {
    let first = saga
        .events
        .first()
        .ok_or_else(|| sqlx::Error::Protocol("a saga starts with an event".into()))?;
    let q = start_statement(saga, &first.event, wake_workers).query()?;
    if let Some(row) = q.fetch_optional(&mut *conn).await? {
        return Ok(InsertOutcome::Created(Box::new(SagaRow::from_row(&row)?)));
    }
    let (id, fingerprint): (SagaId, Option<String>) =
        sqlx::query_as("SELECT id, request_fingerprint FROM sagas WHERE idempotency_key = $1")
            .bind(saga.idempotency_key)
            .fetch_one(&mut *conn)
            .await?;
    Ok(InsertOutcome::Existing {
        id,
        fingerprint: fingerprint.unwrap_or_default(),
    })
}

/// Everything a step outcome writes (or the outcomes of a step and of the local steps it chained,
/// committed together): the fenced transition, its events (and their webhook deliveries), the
/// bookings projection, the step history and the wake-ups.
pub struct Record<'a> {
    pub fence: &'a Fence,
    pub transition: &'a Transition,
    pub saga_name: &'a str,
    pub events: &'a [NewEvent],
    pub booking: &'a bookings::Change,
    /// Step history rows, at most one per step and phase.
    pub steps: &'a [StepOutcome],
    /// A confirm step planned ahead is among the outcomes: turn the saga's hold into a booking
    /// in the same statement, which fails with [`sqlstate::HOLD_LOST`](super::sqlstate::HOLD_LOST)
    /// and writes nothing when the hold is lost.
    pub convert_hold: bool,
}

/// What [`record`] did.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    /// The first event version the transition reserved.
    pub first_version: i32,
    /// A guest cancellation was requested meanwhile.
    pub cancel_requested: bool,
    /// The saga would have been parked or completed with a cancellation pending: it was queued
    /// again (status `running`) instead.
    pub requeued: bool,
}

/// The fenced `UPDATE` of the saga row to a [`Transition`] as the CTE `t`, which reserves the
/// transition's event versions and says whether a pending cancellation requeued the saga: a
/// statement part.
struct UpdateSaga {
    id: Param,
    fence_status: Param,
    fence_step: Param,
    fence_attempt: Param,
    fence_worker: Param,
    status: Param,
    current_step: Param,
    attempt: Param,
    context: Param,
    next_run_at: Param,
    keep_lease: Param,
    wait_key: Param,
    wait_deadline: Param,
    failure_step: Param,
    failure_reason: Param,
    retrying_since: Param,
    wait_reason: Param,
    paused: Param,
    events: Param,
}

impl UpdateSaga {
    fn new(b: &mut Binds, f: &Fence, t: &Transition) -> Self {
        Self {
            id: b.push(f.id),
            fence_status: b.push(f.status.as_str()),
            fence_step: b.push(f.current_step),
            fence_attempt: b.push(f.attempt),
            fence_worker: b.push(&f.worker),
            status: b.push(t.status.as_str()),
            current_step: b.push(t.current_step),
            attempt: b.push(t.attempt),
            context: b.push(&t.context),
            next_run_at: b.push(t.next_run_at),
            keep_lease: b.push(t.keep_lease.map(|d| d.as_millis() as f64)),
            wait_key: b.push(&t.wait_key),
            wait_deadline: b.push(t.wait_deadline),
            failure_step: b.push(&t.failure_step),
            failure_reason: b.push(&t.failure_reason),
            retrying_since: b.push(t.retrying_since),
            wait_reason: b.push(&t.wait_reason),
            paused: b.push(t.paused),
            events: b.push(t.events),
        }
    }

    /// `lease_floor`: the transition's [`Transition::lease_floor`] in milliseconds.
    fn sql(&self, lease_floor: Param) -> String {
        let Self {
            id,
            fence_status,
            fence_step,
            fence_attempt,
            fence_worker,
            status,
            current_step,
            attempt,
            context,
            next_run_at,
            keep_lease,
            wait_key,
            wait_deadline,
            failure_step,
            failure_reason,
            retrying_since,
            wait_reason,
            paused,
            events,
        } = self;
        // A guest cancelled while the step ran and the saga would now sit idle (parked or done):
        // it goes back to the queue, so the cancellation is carried out at once.
        let requeue = format!("(cancel_requested AND {status} IN ('waiting', 'completed'))");
        format!(
            "t AS (
                 UPDATE sagas SET status = CASE WHEN {requeue} THEN 'running' ELSE {status} END,
                        current_step = {current_step}, attempt = {attempt}, context = {context},
                        next_run_at = CASE WHEN {requeue} THEN now() WHEN {keep_lease}::float8 IS NOT NULL THEN next_run_at ELSE {next_run_at} END,
                        locked_by = CASE WHEN {requeue} OR {keep_lease}::float8 IS NULL THEN NULL ELSE locked_by END,
                        locked_until = CASE WHEN {requeue} OR {keep_lease}::float8 IS NULL THEN NULL
                                            WHEN locked_until >= now() + {lease_floor}::float8 * interval '1 millisecond' THEN locked_until
                                            ELSE now() + {keep_lease}::float8 * interval '1 millisecond' END,
                        wait_key = CASE WHEN NOT {requeue} THEN {wait_key} END,
                        wait_deadline = CASE WHEN NOT {requeue} THEN {wait_deadline} END,
                        failure_step = COALESCE({failure_step}, failure_step), failure_reason = COALESCE({failure_reason}, failure_reason),
                        retrying_since = CASE WHEN NOT {requeue} THEN {retrying_since}::timestamptz END,
                        wait_reason = {wait_reason}::text,
                        paused_since = CASE WHEN {paused}::bool THEN now() END,
                        finished_at = CASE WHEN NOT {requeue} AND {status} IN ('completed', 'compensated', 'stuck') THEN now() END,
                        event_version = event_version + {events}, updated_at = now()
                 WHERE id = {id} AND (status, current_step, attempt, locked_by) IS NOT DISTINCT FROM ({fence_status}, {fence_step}, {fence_attempt}, {fence_worker})
                 RETURNING event_version - {events} + 1 AS first_version, cancel_requested, {requeue} AS requeued)"
        )
    }
}

/// The NOTIFY a saga moving to `status` and letting its lease go sends at commit (workers for
/// due work, waiters for a terminal state), if any: a statement part.
struct NotifyOutcome {
    channel: Param,
    payload: Param,
}

impl NotifyOutcome {
    fn new(b: &mut Binds, id: SagaId, t: &Transition) -> Self {
        let (channel, payload) = match (t.keep_lease, t.status) {
            (Some(_), _) => (None, None),
            (None, SagaStatus::Running | SagaStatus::Compensating) => {
                (Some(WORK_CHANNEL), Some(String::new()))
            }
            (None, s) if s.is_terminal() => (Some(DONE_CHANNEL), Some(id.to_string())),
            (None, _) => (None, None),
        };
        Self {
            channel: b.push(channel),
            payload: b.push(payload),
        }
    }
}

/// The parts of the outcome statement ([`record`]).
struct Outcome {
    saga: UpdateSaga,
    events: AppendEvents,
    booking: UpdateBooking,
    booking_changes: Param,
    steps: StepRows,
    notify: NotifyOutcome,
    wake_deliveries: WakeDeliveries,
    /// The channel a saga requeued by a pending cancellation notifies.
    requeue_channel: Param,
    lease_floor: Param,
    hold_until: Param,
    convert_hold: bool,
}

impl Outcome {
    fn new(b: &mut Binds, r: &Record<'_>) -> Self {
        let (f, t) = (r.fence, r.transition);
        let batch = events::EventColumns::new(f.id.0, r.events);
        let saga = UpdateSaga::new(b, f, t);
        let events = AppendEvents::new(b, &batch, r.saga_name);
        let booking = UpdateBooking::new(b, r.booking);
        let booking_changes = b.push(!r.booking.is_empty());
        let steps = StepRows::new(b, r.steps);
        let notify = NotifyOutcome::new(b, f.id, t);
        let wake_deliveries = WakeDeliveries::new(b);
        let requeue_channel = b.push(WORK_CHANNEL);
        let lease_floor = b.push(t.lease_floor.map(|d| d.as_millis() as f64));
        let hold_until = b.push(t.hold_until);
        Self {
            saga,
            events,
            booking,
            booking_changes,
            steps,
            notify,
            wake_deliveries,
            requeue_channel,
            lease_floor,
            hold_until,
            convert_hold: r.convert_hold,
        }
    }

    fn sql(&self) -> String {
        let id = self.saga.id;
        // Converting: the statement also turns the saga's hold into a booking, and fails with
        // `sqlstate::HOLD_LOST` (writing nothing) when there is no live hold to turn.
        let (converted, require) = if self.convert_hold {
            (
                format!(
                    ", converted AS ({})",
                    inventory::convert_to_booking_sql(id, " AND EXISTS (SELECT 1 FROM t)")
                ),
                format!(
                    ",\n sagad_require(EXISTS (SELECT 1 FROM converted), '{}',
                                    'hold_lost: the hold expired or was released before the booking was confirmed') AS hold_converted",
                    super::sqlstate::HOLD_LOST
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let NotifyOutcome { channel, payload } = &self.notify;
        format!(
            "WITH {saga},
             {events},
             booking AS ({booking} AND {booking_changes}::bool AND EXISTS (SELECT 1 FROM t) RETURNING 1),
             {steps}{converted},
             held AS ({held})
             SELECT t.first_version, t.cancel_requested,
                    t.requeued,
                    (SELECT count(*) FROM (
                         SELECT pg_notify(CASE WHEN t.requeued THEN {requeue_channel} ELSE {channel}::text END,
                                          CASE WHEN t.requeued THEN '' ELSE {payload}::text END)
                         WHERE t.requeued OR {channel}::text IS NOT NULL) n) AS notified,
                    (SELECT count(*) FROM ({wake_deliveries}) w) AS woke_deliveries{require}
             FROM t",
            saga = self.saga.sql(self.lease_floor),
            held = inventory::extend_hold_sql(id, self.hold_until, "t"),
            events = self.events.ctes(id, &"t.first_version", "t"),
            booking = self.booking.sql(id),
            booking_changes = self.booking_changes,
            steps = self.steps.sql(id, "t"),
            requeue_channel = self.requeue_channel,
            wake_deliveries = self.wake_deliveries,
        )
    }
}

/// The outcome statement of `r` ([`record`]).
pub(super) fn record_statement(r: &Record<'_>) -> Statement {
    static PLAIN: Text = Text::new();
    static CONVERTING: Text = Text::new();
    let mut b = Binds::new();
    let outcome = Outcome::new(&mut b, r);
    let text = if r.convert_hold { &CONVERTING } else { &PLAIN };
    text.with(b, || outcome.sql())
}

/// Records `r` in **one statement** if the worker still holds the saga as its fence says (one round
/// trip; atomic on its own, or part of the caller's transaction). `None` when the fence no longer
/// holds (the lease ran out and someone else claimed it): then nothing was written.
///
/// The fence is compared with `IS NOT DISTINCT FROM` (its values are never NULL) because no index
/// can serve that: the row is always found by its primary key. With `status = $2`, a generic plan
/// made while the table was small (a fresh database, sagad forces generic plans) could pick
/// `sagas_status_listing` and walk every saga in that status on each step.
pub async fn record(
    conn: &mut PgConnection,
    r: &Record<'_>,
) -> Result<Option<Recorded>, sqlx::Error> {
    let row = record_statement(r)
        .query()?
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| {
        Ok(Recorded {
            first_version: row.try_get(0)?,
            cancel_requested: row.try_get(1)?,
            requeued: row.try_get(2)?,
        })
    })
    .transpose()
}
