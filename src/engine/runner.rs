//! Runs one claimed saga: a step outside any transaction, then its outcome, events, projection and
//! next schedule in one transaction guarded by the fence the claim handed out. While the next step
//! is due at once, the same worker goes on with it under the same lease: a remote one before the
//! outcomes so far are recorded, a local one inside the transaction that records them, or, when
//! its outcome can be planned ahead ([`Action::plan_ahead`]), inside the very statement that
//! records them (no transaction of its own: one round trip).

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::Leased;
use super::actions::{self, Action, AheadEffect, Deps, StepCtx};
use super::definition::{SagaDefinition, StepDefinition};
use super::model::{Fence, SagaStatus, StepPhase, Transition};
use super::outcome::Outcome;
use super::plan::{self, Env, Plan, State};
use super::record::{self, Outcomes};
use super::registry::Registry;
use crate::breaker::{Admission, CallResult};
use crate::domain::BookingInput;
use crate::domain::SagaId;
use crate::events::{Event, NewEvent};
use crate::policies::Cancellation;
use crate::store::listen::Heard;
use crate::store::sagas::{self, SagaRow};
use crate::store::{self, sqlstate};

/// What stops a worker from driving a saga further now: the database, a definition it cannot
/// read, or a saga row that makes no sense. The worker hands the saga back (releases its lease).
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Registry(#[from] super::registry::RegistryError),
    #[error("saga {0} is corrupt: {1}")]
    Corrupt(SagaId, String),
}

pub struct Worker {
    pub pool: PgPool,
    /// Connections for the outcome statements ([`store::kept`]).
    pub kept: Arc<store::kept::Kept>,
    pub registry: Arc<Registry>,
    pub deps: Deps,
    pub worker_id: String,
    pub lease: std::time::Duration,
    /// Cancellations notified to this process ([`sagas::request_cancel`]).
    pub cancellations: Arc<Heard>,
    pub shutdown: CancellationToken,
}

enum Next {
    /// The worker still holds the lease and the next step is due now.
    Continue,
    Stop,
}

impl Worker {
    /// Drives a claimed saga as far as it can go now.
    pub async fn drive(&self, saga: Leased) {
        let Leased { mut row, since } = saga;
        let span = tracing::info_span!("saga", saga_id = %row.id, saga = %row.saga_name);
        async {
            loop {
                match self.step(&mut row, since).await {
                    Ok(Next::Continue) if !self.shutdown.is_cancelled() => continue,
                    Ok(Next::Continue) => {
                        // Shutting down: hand the saga back rather than start another step.
                        if let Err(e) =
                            sagas::release_lease(&self.pool, row.id, &self.worker_id).await
                        {
                            warn!(error = %e, "could not release lease; it will expire");
                        }
                        break;
                    }
                    Ok(Next::Stop) => break,
                    Err(e) => {
                        warn!(error = %e, "step could not be recorded; handing the saga back");
                        crate::telemetry::count_error("runner");
                        // Safe whatever happened: the next claim gets a new fence. If the database
                        // is unreachable, the lease simply expires.
                        let _ = sagas::release_lease(&self.pool, row.id, &self.worker_id).await;
                        break;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs the saga's current step and records its outcome. Remote steps that follow at once run
    /// first (their outcomes are recorded together); local steps that follow run in the record's
    /// transaction (their effect and record commit together with the steps before them).
    /// `leased`: when this process took the lease ([`Leased::since`]).
    async fn step(&self, row: &mut SagaRow, leased: Instant) -> Result<Next, DriveError> {
        let def = self.registry.get(&row.saga_name, row.saga_version).await?;
        let status = row.status;

        if row.cancel_requested && status == SagaStatus::Running {
            let local = def
                .steps
                .get(row.current_step.max(0) as usize)
                .and_then(|s| Action::parse(&s.action))
                .is_some_and(Action::is_local);
            // The row may have been read before the cancellation was written: read it now.
            let mut conn = self.pool.acquire().await?;
            row.cancellation = sagas::cancellation(&mut conn, row.id).await?;
            // Requested before cancellations were recorded with the saga: a guest's, in full.
            let c = row.cancellation.as_ref().map_or_else(
                || Cancellation::by_guest_in_full(plan::GUEST_CANCEL),
                |c| c.0.clone(),
            );
            let price = row
                .input
                .get("amount")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0);
            let cancelled = c.event(price, actions::captured(&def, context_of(row)));
            let by = c.by;
            info!(by = %by, "cancellation: compensating");
            // One statement, atomic on its own.
            let next = self
                .record_with(&mut conn, &def, row, |state, env| {
                    plan::cancel(state, env, local, &plan::cancel_reason(by), cancelled)
                })
                .await?;
            return Ok(next.unwrap_or(Next::Stop));
        }
        let Some(action) = current_action(&def, row)? else {
            sagas::release_lease(&self.pool, row.id, &self.worker_id).await?;
            return Ok(Next::Stop);
        };

        if action.is_local() {
            if let Some(next) = self
                .record_ahead(&def, row, &self.fence(row), Vec::new())
                .await?
            {
                return Ok(next);
            }
            let mut tx = self.pool.begin().await?;
            let (fence, plan) = match self.run_local(&mut tx, &def, row, action).await {
                Ok(planned) => planned,
                Err(DriveError::Db(e)) => {
                    // The local effect failed in the database: nothing happened; retry the step.
                    tx.rollback().await?;
                    let mut conn = self.pool.acquire().await?;
                    let o = Outcome::retry(format!("database: {e}"), false);
                    let next = self.record_outcome(&mut conn, &def, row, o).await?;
                    return Ok(next.unwrap_or(Next::Stop));
                }
                Err(e) => return Err(e),
            };
            return self.chain(tx, &def, row, fence, vec![plan]).await;
        }
        let outcome = self.run_remote(&def, row, action).await?;
        let (fence, plan) = self.plan(&def, row, |state, env| plan::after(state, env, outcome));
        let mut plans = vec![plan];
        // Remote steps that follow at once run before anything is recorded (see `next_remote`).
        while let Some(action) = self
            .next_remote(&def, row, leased, plans.last().expect("one plan at least"))
            .await?
        {
            let outcome = self.run_remote(&def, row, action).await?;
            let (_, plan) = self.plan(&def, row, |state, env| plan::after(state, env, outcome));
            plans.push(plan);
        }
        if !chains_local(&def, plans.last().expect("one plan at least"), row.id)? {
            // One statement, atomic on its own: no BEGIN/COMMIT round trips.
            let mut conn = self.kept.acquire().await?;
            let next = self.record(&mut conn, row, &fence, plans, false).await?;
            conn.completed();
            return Ok(next.unwrap_or(Next::Stop));
        }
        if let Some(next) = self.record_ahead(&def, row, &fence, plans.clone()).await? {
            return Ok(next);
        }
        let tx = self.pool.begin().await?;
        self.chain(tx, &def, row, fence, plans).await
    }

    /// Records `plans` (outcomes not recorded yet; none when the saga's current step is local)
    /// together with the local steps they go on with, each planned ahead
    /// ([`Action::plan_ahead`]), in **one statement** under `fence`, without BEGIN/COMMIT: the
    /// statement carries out their effects (a hold turned into a booking) and records every
    /// outcome, or does neither.
    ///
    /// `None` when nothing was written and the caller must go step by step in a transaction: a
    /// local step's outcome depends on what it finds (it cannot be planned ahead), or the
    /// statement found its effect impossible (the hold was lost: the confirm step then fails as
    /// it should, step by step).
    async fn record_ahead(
        &self,
        def: &SagaDefinition,
        row: &mut SagaRow,
        fence: &Fence,
        mut plans: Vec<Plan>,
    ) -> Result<Option<Next>, DriveError> {
        // The state each planned step starts from; `row` itself moves only once recorded.
        let mut ahead = row.clone();
        let mut planned = Vec::new();
        let mut convert_hold = false;
        loop {
            if let Some(last) = plans.last() {
                if !chains_local(def, last, row.id)? {
                    break;
                }
                advance(&mut ahead, &last.transition);
            }
            let Some(action) = current_action(def, &ahead)?.filter(|a| a.is_local()) else {
                break;
            };
            let input = parse_input(&ahead)?;
            let ctx = step_ctx(def, &ahead, &input, self.deps.clock.db_now());
            let Some((outcome, effect)) = action.plan_ahead(&ctx) else {
                return Ok(None);
            };
            convert_hold |= effect == AheadEffect::ConvertHoldToBooking;
            planned.push((
                ctx.step.name.clone(),
                phase_of(&ahead),
                outcome_kind(&outcome),
            ));
            let (_, plan) = self.plan(def, &ahead, |state, env| plan::after(state, env, outcome));
            plans.push(plan);
        }
        if planned.is_empty() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let mut conn = self.kept.acquire().await?;
        match self
            .record(&mut conn, row, fence, plans, convert_hold)
            .await
        {
            Ok(next) => {
                conn.completed();
                for (step, phase, kind) in planned {
                    crate::telemetry::step_finished(
                        &row.saga_name,
                        &step,
                        phase,
                        kind,
                        started.elapsed(),
                    );
                }
                Ok(Some(next.unwrap_or(Next::Stop)))
            }
            Err(DriveError::Db(e))
                if store::sqlstate(&e).as_deref() == Some(sqlstate::HOLD_LOST) =>
            {
                info!("the hold is gone: confirming step by step");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The remote step `last` (the latest of the outcomes not recorded yet) goes on with, when it
    /// may run before they are recorded; `row` is then moved to the state they lead to.
    ///
    /// Recording a remote step's outcome before the next remote call would cost a writing
    /// transaction and buys nothing for exactly-once effects: every remote call carries an
    /// idempotency key derived from the saga and the effect, so if this process dies before the
    /// record, the next owner repeats the calls and gets the same answers (the effects are not
    /// repeated). It goes on only while it keeps the lease with room for the next step, and not
    /// when a guest cancellation is pending: that must be learnt before, say, a capture.
    ///
    /// Both are known here without a query, as a rule: the lease by this process's clock (from
    /// when it was taken, `leased`, not counting renewals: an underestimate), the cancellation from
    /// the notification its commit sends. Only when the listener may have missed one (it was not
    /// listening without a break since `leased`) does it ask the database.
    async fn next_remote(
        &self,
        def: &SagaDefinition,
        row: &mut SagaRow,
        leased: Instant,
        last: &Plan,
    ) -> Result<Option<Action>, DriveError> {
        if self.shutdown.is_cancelled() {
            return Ok(None);
        }
        let t = &last.transition;
        let Some(action) = next_action(def, last, row.id)?.filter(|a| !a.is_local()) else {
            return Ok(None);
        };
        let floor = t.lease_floor.unwrap_or(self.lease);
        let room = (leased + self.lease).saturating_duration_since(Instant::now()) >= floor;
        let go_on = room
            && match self.cancellations.since(row.id, leased) {
                Some(cancelled) => !cancelled,
                None => sagas::may_go_on(&self.pool, row.id, &self.worker_id, floor).await?,
            };
        if !go_on {
            return Ok(None);
        }
        advance(row, t);
        Ok(Some(action))
    }

    /// Runs in `tx` the local steps that the last of `plans` goes on with, each planned on the
    /// state the one before it leads to, then records every outcome in **one statement** under
    /// `fence` (the state before the first plan) and commits: the local effects and all the
    /// outcomes commit together, or, when the fence no longer holds, none of them does.
    ///
    /// A guest cancellation arriving meanwhile is learnt from the record, so the chained steps
    /// run and are then compensated like any completed step.
    async fn chain(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        def: &SagaDefinition,
        row: &mut SagaRow,
        fence: Fence,
        mut plans: Vec<Plan>,
    ) -> Result<Next, DriveError> {
        while let Some(last) = plans.last()
            && !self.shutdown.is_cancelled()
            && chains_local(def, last, row.id)?
        {
            advance(row, &last.transition);
            let Some(action) = current_action(def, row)? else {
                break;
            };
            let (_, plan) = self.run_local(&mut tx, def, row, action).await?;
            plans.push(plan);
        }
        match self.record(&mut tx, row, &fence, plans, false).await? {
            Some(next) => {
                tx.commit().await?;
                Ok(next)
            }
            // The transaction rolls back when dropped, the local effects with it.
            None => Ok(Next::Stop),
        }
    }

    /// Runs a local action in `tx` and plans its outcome; the caller records it.
    async fn run_local(
        &self,
        tx: &mut PgConnection,
        def: &SagaDefinition,
        row: &SagaRow,
        action: Action,
    ) -> Result<(Fence, Plan), DriveError> {
        let started = std::time::Instant::now();
        let input = parse_input(row)?;
        let ctx = step_ctx(def, row, &input, self.deps.clock.db_now());
        let step = ctx.step;
        let span = step_span(row, step, action);
        let outcome = action.run_local(tx, &ctx).instrument(span).await?;
        crate::telemetry::step_finished(
            &row.saga_name,
            &step.name,
            phase_of(row),
            outcome_kind(&outcome),
            started.elapsed(),
        );
        Ok(self.plan(def, row, |state, env| plan::after(state, env, outcome)))
    }

    /// Runs a remote action outside any transaction, bounded by the step's timeout.
    async fn run_remote(
        &self,
        def: &SagaDefinition,
        row: &SagaRow,
        action: Action,
    ) -> Result<Outcome, DriveError> {
        let started = std::time::Instant::now();
        let input = parse_input(row)?;
        let ctx = step_ctx(def, row, &input, self.deps.clock.db_now());
        let step = ctx.step;
        let span = step_span(row, step, action);
        let dependency = action.dependency(&self.deps);
        let breakers = &self.deps.breakers;
        let admission = match dependency {
            Some(d) => breakers.admit(d).await,
            None => Admission::Call,
        };
        if let (Some(dependency), Admission::Paused) = (dependency, admission) {
            span.in_scope(|| debug!(%dependency, "circuit breaker open: pausing"));
            return Ok(Outcome::Paused { dependency });
        }
        let (outcome, call) =
            match tokio::time::timeout(step.timeout, action.run_remote(&self.deps, &ctx))
                .instrument(span.clone())
                .await
            {
                Ok(o) => {
                    let call = o.call_result();
                    (o, call)
                }
                Err(_) => (
                    Outcome::fail(
                        format!("step_timeout: no result within {:?}", step.timeout),
                        true,
                    ),
                    CallResult::Failed { connection: false },
                ),
            };
        if let Some(d) = dependency {
            breakers.report(d, admission, call).await;
        }
        span.in_scope(|| debug!(outcome = ?outcome, "step ran"));
        let kind = outcome_kind(&outcome);
        crate::telemetry::step_finished(
            &row.saga_name,
            &step.name,
            phase_of(row),
            kind,
            started.elapsed(),
        );
        Ok(outcome)
    }

    async fn record_outcome(
        &self,
        tx: &mut PgConnection,
        def: &SagaDefinition,
        row: &mut SagaRow,
        outcome: Outcome,
    ) -> Result<Option<Next>, DriveError> {
        self.record_with(tx, def, row, |state, env| plan::after(state, env, outcome))
            .await
    }

    /// Plans the transition from the saga's current state with `make`, then records it.
    async fn record_with(
        &self,
        tx: &mut PgConnection,
        def: &SagaDefinition,
        row: &mut SagaRow,
        make: impl FnOnce(&State<'_>, &Env) -> Plan,
    ) -> Result<Option<Next>, DriveError> {
        let (fence, plan) = self.plan(def, row, make);
        self.record(tx, row, &fence, vec![plan], false).await
    }

    /// The transition from the saga's current state that `make` plans, and the fence it is
    /// recorded under.
    fn plan(
        &self,
        def: &SagaDefinition,
        row: &SagaRow,
        make: impl FnOnce(&State<'_>, &Env) -> Plan,
    ) -> (Fence, Plan) {
        let status = row.status;
        let fence = self.fence(row);
        let state = State {
            def,
            status,
            current_step: row.current_step.max(0) as usize,
            attempt: row.attempt,
            context: context_of(row),
            failure_reason: row.failure_reason.as_deref(),
            retrying_since: row.retrying_since,
        };
        let env = Env {
            now: self.deps.clock.db_now(),
            lease: self.lease,
            jitter_unit: rand::rng().random::<f64>(),
        };
        let mut plan = make(&state, &env);
        // A paused saga that runs again: say so before what its step came to.
        if let Some(reason) = row.wait_reason.as_deref()
            && !plan.transition.paused
        {
            plan.events.insert(
                0,
                NewEvent::from(Event::SagaResumed {
                    wait_reason: reason.to_owned(),
                }),
            );
            plan.transition.events = plan.events.len() as i32;
        }
        (fence, plan)
    }

    /// What this worker holds of `row`: the guard its outcome must still match.
    fn fence(&self, row: &SagaRow) -> Fence {
        Fence {
            id: row.id,
            status: row.status,
            current_step: row.current_step,
            attempt: row.attempt,
            worker: self.worker_id.clone(),
        }
    }

    /// Records `plans` (one step's outcome and those of the local steps it chained) in one
    /// statement on `conn` if the fence still holds ([`record::record`]); updates `row` to the
    /// new state. `convert_hold`: a confirm step among them was planned ahead
    /// ([`Outcomes::converting_hold`]).
    async fn record(
        &self,
        conn: &mut PgConnection,
        row: &mut SagaRow,
        fence: &Fence,
        plans: Vec<Plan>,
        convert_hold: bool,
    ) -> Result<Option<Next>, DriveError> {
        let outcomes = Outcomes::of(plans, Some(&self.worker_id)).converting_hold(convert_hold);
        let Some(recorded) = record::record(conn, fence, &row.saga_name, &outcomes).await? else {
            warn!("lease lost before the outcome was recorded; another worker owns the saga now");
            return Ok(None);
        };
        let t = outcomes.transition();
        let requeued = recorded.requeued;
        if t.status.is_terminal() && !requeued {
            let reason = t
                .failure_reason
                .as_deref()
                .or(row.failure_reason.as_deref());
            info!(status = %t.status, reason = reason.unwrap_or("-"), "saga finished");
            crate::telemetry::saga_finished(&row.saga_name, t.status);
        }
        advance(row, t);
        if requeued {
            row.status = SagaStatus::Running;
        }
        row.event_version = recorded.first_version + outcomes.events().len() as i32 - 1;
        row.cancel_requested = recorded.cancel_requested;
        Ok(Some(if t.keep_lease.is_some() {
            Next::Continue
        } else {
            Next::Stop
        }))
    }
}

/// Moves `row` to the state `t` leads to (what is known of it before it is recorded).
fn advance(row: &mut SagaRow, t: &Transition) {
    row.status = t.status;
    row.current_step = t.current_step;
    row.attempt = t.attempt;
    row.context = t.context.clone();
    row.retrying_since = t.retrying_since;
    row.wait_reason = t.wait_reason.clone();
    row.paused_since = None;
    if t.failure_reason.is_some() {
        row.failure_reason = t.failure_reason.clone();
        row.failure_step = t.failure_step.clone().or(row.failure_step.take());
    }
}

/// The action the saga's current step runs now (its compensation while compensating); `None` when
/// the saga has nothing to run.
fn current_action(def: &SagaDefinition, row: &SagaRow) -> Result<Option<Action>, DriveError> {
    action_at(def, row.status, row.current_step)
        .map_err(|name| DriveError::Corrupt(row.id, format!("unknown action `{name}`")))
}

/// True when `plan` keeps the lease for a local step: it then runs in the same transaction.
fn chains_local(def: &SagaDefinition, plan: &Plan, id: SagaId) -> Result<bool, DriveError> {
    Ok(next_action(def, plan, id)?.is_some_and(Action::is_local))
}

/// The action the same worker goes on with once `plan` is done (it keeps the lease), if any.
fn next_action(
    def: &SagaDefinition,
    plan: &Plan,
    id: SagaId,
) -> Result<Option<Action>, DriveError> {
    let t = &plan.transition;
    if t.keep_lease.is_none() {
        return Ok(None);
    }
    action_at(def, t.status, t.current_step)
        .map_err(|name| DriveError::Corrupt(id, format!("unknown action `{name}`")))
}

/// The action step `index` runs in `status` (its compensation while compensating); `Err` carries
/// an unknown action's name.
fn action_at(
    def: &SagaDefinition,
    status: SagaStatus,
    index: i32,
) -> Result<Option<Action>, String> {
    let Some(step) = def.steps.get(index.max(0) as usize) else {
        return Ok(None);
    };
    let name = match status {
        SagaStatus::Running => step.action.as_str(),
        SagaStatus::Compensating => step.compensation.as_deref().unwrap_or_default(),
        _ => return Ok(None),
    };
    Action::parse(name).map(Some).ok_or_else(|| name.to_owned())
}

fn parse_input(row: &SagaRow) -> Result<BookingInput, DriveError> {
    BookingInput::deserialize(&row.input)
        .map_err(|e| DriveError::Corrupt(row.id, format!("input: {e}")))
}

/// The outputs of the saga's steps so far (borrowed; empty when there are none).
fn context_of(row: &SagaRow) -> &serde_json::Map<String, serde_json::Value> {
    static EMPTY: std::sync::LazyLock<serde_json::Map<String, serde_json::Value>> =
        std::sync::LazyLock::new(serde_json::Map::new);
    row.context.as_object().unwrap_or(&EMPTY)
}

/// What the current step's action reads.
/// `now`: the database's time ([`crate::clock::Clock::db_now`]).
fn step_ctx<'a>(
    def: &'a SagaDefinition,
    row: &'a SagaRow,
    input: &'a BookingInput,
    now: chrono::DateTime<chrono::Utc>,
) -> StepCtx<'a> {
    StepCtx {
        saga_id: row.id,
        input,
        context: context_of(row),
        definition: def,
        step: &def.steps[row.current_step as usize],
        attempt: row.attempt,
        failure_reason: row.failure_reason.as_deref(),
        now,
        cancellation: row.cancellation.as_ref().map(|c| &c.0),
    }
}

fn phase_of(row: &SagaRow) -> StepPhase {
    if row.status == SagaStatus::Compensating {
        StepPhase::Compensation
    } else {
        StepPhase::Forward
    }
}

fn step_span(row: &SagaRow, step: &StepDefinition, action: Action) -> tracing::Span {
    tracing::info_span!("step", step = %step.name, phase = phase_of(row).as_str(), action = ?action, attempt = row.attempt)
}

fn outcome_kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::Done { .. } => "done",
        Outcome::Retry { .. } => "retry",
        Outcome::Fail { .. } => "fail",
        Outcome::Wait { .. } => "wait",
        Outcome::Paused { .. } => "paused",
    }
}
