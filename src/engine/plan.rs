//! The saga state machine as a pure function: given where a saga is and what its step came to,
//! what state it moves to and which events record that. No I/O here, so every rule is unit-tested.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::definition::{OnFailure, SagaDefinition};
use super::model::{SagaStatus, StepOutcome, StepPhase, StepStatus, Transition};
use super::outcome::Outcome;
use crate::breaker::Dependency;
use crate::events::{Event, NewEvent};

/// The reason recorded when a guest cancels (and no reason is given).
pub const GUEST_CANCEL: &str = "cancelled_by_guest";

/// The saga's failure reason when it is cancelled by `by` (`cancelled_by_guest`…).
pub fn cancel_reason(by: crate::events::CancelledBy) -> String {
    format!("cancelled_by_{by}")
}

/// The failure reason (before the last error) of a step whose retryable failures outlasted its
/// `give_up_after`.
pub const DEPENDENCY_UNAVAILABLE: &str = "dependency_unavailable";

/// How far past a retry's due time a step retried within its give-up deadline keeps the saga's
/// inventory hold alive: room for the attempt and the steps after it.
pub const HOLD_SLACK: Duration = Duration::from_secs(10 * 60);

/// Where a claimed saga is.
pub struct State<'a> {
    pub def: &'a SagaDefinition,
    pub status: SagaStatus,
    pub current_step: usize,
    pub attempt: i32,
    pub context: &'a Map<String, Value>,
    pub failure_reason: Option<&'a str>,
    /// When the current step's run of retryable failures began ([`Transition::retrying_since`]).
    pub retrying_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub transition: Transition,
    pub events: Vec<NewEvent>,
    pub step: Option<StepOutcome>,
}

/// Inputs that are not state: the clock, the lease to keep, and a jitter draw in [0, 1).
pub struct Env {
    pub now: DateTime<Utc>,
    pub lease: Duration,
    pub jitter_unit: f64,
}

fn at(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The highest step index ≤ `from` that has a compensation.
fn compensable_at_or_below(def: &SagaDefinition, from: isize) -> Option<usize> {
    (0..=from)
        .rev()
        .map(|i| i as usize)
        .find(|&i| def.steps.get(i).is_some_and(|s| s.compensation.is_some()))
}

fn transition(
    status: SagaStatus,
    step: usize,
    attempt: i32,
    context: &Map<String, Value>,
) -> Transition {
    Transition::new(status, step as i32, attempt, Value::Object(context.clone()))
}

/// Slack on top of the next step's timeout that a kept lease must still have: recording the
/// outcome after the timeout fired takes a round trip or two.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// The same worker goes on with step `step` at once, under its lease. The lease is renewed only
/// when less of it remains than that step may take (see [`Transition::lease_floor`]).
fn go_on(
    status: SagaStatus,
    step: usize,
    def: &SagaDefinition,
    context: &Map<String, Value>,
    env: &Env,
) -> Transition {
    let mut t = transition(status, step, 1, context);
    t.keep_lease = Some(env.lease);
    t.lease_floor = def.steps.get(step).map(|s| s.timeout + LEASE_MARGIN);
    t
}

fn tagged(events: Vec<Event>, step: &str, attempt: i32) -> Vec<NewEvent> {
    events
        .into_iter()
        .map(|event| NewEvent {
            event,
            causation_id: None,
            step: Some(step.to_owned()),
            attempt: Some(attempt),
            worker: None,
        })
        .collect()
}

fn finish(mut plan: Plan) -> Plan {
    plan.transition.events = plan.events.len() as i32;
    plan
}

/// Turns the saga around: compensate from `start` (inclusive) down to the first step.
/// `failed_step` is the forward step whose failure (or cancellation) caused it; `events` come
/// before `CompensationStarted`, `then` after it.
#[allow(clippy::too_many_arguments)]
fn compensate(
    s: &State<'_>,
    env: &Env,
    context: &Map<String, Value>,
    start: isize,
    failed_step: Option<&str>,
    reason: &str,
    mut events: Vec<NewEvent>,
    then: Vec<NewEvent>,
) -> Plan {
    events.push(NewEvent::from(Event::CompensationStarted {
        failed_step: failed_step.map(str::to_owned),
        reason: reason.to_owned(),
    }));
    events.extend(then);
    let mut t = match compensable_at_or_below(s.def, start) {
        Some(first) => go_on(SagaStatus::Compensating, first, s.def, context, env),
        None => {
            events.push(NewEvent::from(Event::SagaCompensated {
                reason: reason.to_owned(),
            }));
            transition(SagaStatus::Compensated, 0, 0, context)
        }
    };
    t.failure_step = failed_step.map(str::to_owned);
    t.failure_reason = Some(reason.to_owned());
    finish(Plan {
        transition: t,
        events,
        step: None,
    })
}

/// A cancellation (by a guest, a host or an operator) found by the worker before it runs the
/// saga's next step: the saga compensates with `reason` (`cancelled_by_guest`…) as its failure
/// reason, and `cancelled` (the `BookingCancelled` event) is recorded here unless the confirm
/// step's compensation, which records it, is among those that run.
pub fn cancel(
    s: &State<'_>,
    env: &Env,
    step_is_local: bool,
    reason: &str,
    cancelled: Event,
) -> Plan {
    let n = s.def.steps.len();
    let (start, failed_step) = if s.current_step >= n {
        (n as isize - 1, None)
    } else {
        let step = &s.def.steps[s.current_step];
        // Earlier attempts of a remote step (or a wait) may have had an effect: undo it too.
        let effect_possible =
            !step_is_local && (s.attempt > 1 || s.context.contains_key(&step.name));
        let start = s.current_step as isize - if effect_possible { 0 } else { 1 };
        (start, Some(step.name.as_str()))
    };
    let mut then = Vec::new();
    // The booking is cancelled by the confirm step's compensation when that step is undone;
    // otherwise the cancellation is recorded here.
    let booking_cancel_runs = start >= 0
        && s.def.steps[..=(start as usize).min(n.saturating_sub(1))]
            .iter()
            .any(|st| st.compensation.as_deref() == Some("booking.cancel"));
    if !booking_cancel_runs {
        then.push(NewEvent::from(cancelled));
    }
    compensate(
        s,
        env,
        s.context,
        start,
        failed_step,
        reason,
        Vec::new(),
        then,
    )
}

/// The state after the claimed step's `outcome`.
pub fn after(s: &State<'_>, env: &Env, outcome: Outcome) -> Plan {
    match s.status {
        SagaStatus::Compensating => after_compensation(s, env, outcome),
        _ => after_forward(s, env, outcome),
    }
}

fn after_forward(s: &State<'_>, env: &Env, outcome: Outcome) -> Plan {
    let i = s.current_step;
    let step = &s.def.steps[i];
    let record = |status: StepStatus, error: Option<String>| StepOutcome {
        index: i as i32,
        phase: StepPhase::Forward,
        name: step.name.clone(),
        status,
        attempts: s.attempt,
        error,
    };
    let mut context = s.context.clone();
    match outcome {
        Outcome::Done { output, events } => {
            context.insert(step.name.clone(), output);
            let mut events = tagged(events, &step.name, s.attempt);
            let t = if i + 1 < s.def.steps.len() {
                go_on(SagaStatus::Running, i + 1, s.def, &context, env)
            } else {
                events.push(NewEvent::from(Event::SagaCompleted {}));
                transition(SagaStatus::Completed, s.def.steps.len(), 0, &context)
            };
            finish(Plan {
                transition: t,
                events,
                step: Some(record(StepStatus::Succeeded, None)),
            })
        }
        Outcome::Wait {
            output,
            key,
            deadline,
            events,
        } => {
            context.insert(step.name.clone(), output);
            let mut t = transition(SagaStatus::Waiting, i, s.attempt, &context);
            t.wait_key = Some(key);
            t.wait_deadline = Some(deadline);
            finish(Plan {
                transition: t,
                events: tagged(events, &step.name, s.attempt),
                step: Some(record(StepStatus::Waiting, None)),
            })
        }
        Outcome::Paused { dependency } => {
            let since = s.retrying_since.unwrap_or(env.now);
            let deadline = step.give_up_after.map(|g| at(since, g));
            if deadline.is_some_and(|d| env.now >= d) {
                let reason = format!(
                    "{DEPENDENCY_UNAVAILABLE}: the circuit breaker of {dependency} is open"
                );
                // Earlier attempts (before it opened) may have acted; pauses give their attempt
                // back, so only a call made counts here.
                let effect_possible = s.attempt > 1;
                return fail_forward(s, env, context, reason, effect_possible, record);
            }
            let mut t = pause(s, SagaStatus::Running, &context, dependency);
            // The give-up deadline still ends the pause; the hold lives until then.
            t.next_run_at = deadline;
            t.retrying_since = Some(since);
            t.hold_until = deadline.map(|d| at(d, HOLD_SLACK));
            finish(Plan {
                transition: t,
                events: paused_events(step, StepPhase::Forward, dependency, s.attempt),
                step: Some(record(
                    StepStatus::Running,
                    Some(format!(
                        "paused: the circuit breaker of {dependency} is open"
                    )),
                )),
            })
        }
        Outcome::Retry {
            error,
            effect_possible,
            min_delay,
            ..
        } => {
            // With a give-up deadline, an outage is waited out until it passes, however many
            // attempts that takes; the attempt count only paces the backoff.
            let since = s.retrying_since.unwrap_or(env.now);
            let deadline = step.give_up_after.map(|g| at(since, g));
            match deadline {
                Some(deadline) if env.now >= deadline => {
                    let reason = format!("{DEPENDENCY_UNAVAILABLE}: {error}");
                    return fail_forward(s, env, context, reason, effect_possible, record);
                }
                None if step.retry.exhausted(s.attempt as u32) => {
                    let reason = format!("attempts_exhausted: {error}");
                    return fail_forward(s, env, context, reason, effect_possible, record);
                }
                _ => {}
            }
            let delay = step.retry.backoff_at_least(
                s.attempt as u32 + 1,
                env.jitter_unit,
                min_delay.unwrap_or_default(),
            );
            // The last attempt is made at the deadline, not after it.
            let retry_at = deadline.map_or(at(env.now, delay), |d| at(env.now, delay).min(d));
            let mut t = transition(SagaStatus::Running, i, s.attempt, &context);
            t.next_run_at = Some(retry_at);
            t.retrying_since = Some(since);
            if deadline.is_some() {
                t.hold_until = Some(at(retry_at, HOLD_SLACK));
            }
            let events = vec![NewEvent {
                event: Event::StepFailed {
                    step: step.name.clone(),
                    phase: StepPhase::Forward,
                    attempt: s.attempt,
                    error: error.clone(),
                    permanent: false,
                    retry_at: Some(retry_at),
                },
                causation_id: None,
                step: Some(step.name.clone()),
                attempt: Some(s.attempt),
                worker: None,
            }];
            finish(Plan {
                transition: t,
                events,
                step: Some(record(StepStatus::Running, Some(error))),
            })
        }
        Outcome::Fail {
            reason,
            effect_possible,
        } => fail_forward(s, env, context, reason, effect_possible, record),
    }
}

/// The saga stays at its step, paused on `dependency`: the attempt its claim counted is given
/// back (none was made), and it is due only when woken.
fn pause(
    s: &State<'_>,
    status: SagaStatus,
    context: &Map<String, Value>,
    dependency: Dependency,
) -> Transition {
    let mut t = transition(status, s.current_step, (s.attempt - 1).max(0), context);
    t.wait_reason = Some(dependency.wait_reason());
    t.paused = true;
    t
}

fn paused_events(
    step: &crate::engine::definition::StepDefinition,
    phase: StepPhase,
    dependency: Dependency,
    attempt: i32,
) -> Vec<NewEvent> {
    vec![NewEvent {
        event: Event::SagaPaused {
            step: step.name.clone(),
            phase,
            dependency: dependency.as_str().to_owned(),
        },
        causation_id: None,
        step: Some(step.name.clone()),
        attempt: Some(attempt),
        worker: None,
    }]
}

fn fail_forward(
    s: &State<'_>,
    env: &Env,
    context: Map<String, Value>,
    reason: String,
    effect_possible: bool,
    record: impl Fn(StepStatus, Option<String>) -> StepOutcome,
) -> Plan {
    let i = s.current_step;
    let step = &s.def.steps[i];
    let failed = NewEvent {
        event: Event::StepFailed {
            step: step.name.clone(),
            phase: StepPhase::Forward,
            attempt: s.attempt,
            error: reason.clone(),
            permanent: true,
            retry_at: None,
        },
        causation_id: None,
        step: Some(step.name.clone()),
        attempt: Some(s.attempt),
        worker: None,
    };
    let mut plan = match step.on_failure {
        OnFailure::Stuck => {
            let mut t = transition(SagaStatus::Stuck, i, s.attempt, &context);
            t.failure_step = Some(step.name.clone());
            t.failure_reason = Some(reason.clone());
            finish(Plan {
                transition: t,
                events: vec![
                    failed,
                    NewEvent::from(Event::SagaStuck {
                        step: step.name.clone(),
                        error: reason.clone(),
                    }),
                ],
                step: None,
            })
        }
        OnFailure::Compensate => {
            let start = i as isize - if effect_possible { 0 } else { 1 };
            compensate(
                s,
                env,
                &context,
                start,
                Some(&step.name),
                &reason,
                vec![failed],
                Vec::new(),
            )
        }
    };
    plan.step = Some(record(StepStatus::Failed, Some(reason)));
    plan
}

fn after_compensation(s: &State<'_>, env: &Env, outcome: Outcome) -> Plan {
    let j = s.current_step;
    let step = &s.def.steps[j];
    let name = step.compensation.clone().unwrap_or_default();
    let record = |status: StepStatus, error: Option<String>| StepOutcome {
        index: j as i32,
        phase: StepPhase::Compensation,
        name: name.clone(),
        status,
        attempts: s.attempt,
        error,
    };
    let reason = s.failure_reason.unwrap_or("compensation").to_owned();
    let stuck = |error: String| {
        let mut t = transition(SagaStatus::Stuck, j, s.attempt, s.context);
        t.failure_reason = Some(format!(
            "{reason}; compensation `{name}` of step `{}` failed: {error}",
            step.name
        ));
        finish(Plan {
            transition: t,
            events: vec![
                NewEvent::from(Event::StepFailed {
                    step: step.name.clone(),
                    phase: StepPhase::Compensation,
                    attempt: s.attempt,
                    error: error.clone(),
                    permanent: true,
                    retry_at: None,
                }),
                NewEvent::from(Event::SagaStuck {
                    step: step.name.clone(),
                    error: error.clone(),
                }),
            ],
            step: Some(record(StepStatus::Failed, Some(error))),
        })
    };
    match outcome {
        Outcome::Done { events, .. } => {
            let mut events = tagged(events, &step.name, s.attempt);
            let t = match compensable_at_or_below(s.def, j as isize - 1) {
                Some(next) => go_on(SagaStatus::Compensating, next, s.def, s.context, env),
                None => {
                    events.push(NewEvent::from(Event::SagaCompensated {
                        reason: reason.clone(),
                    }));
                    transition(SagaStatus::Compensated, 0, 0, s.context)
                }
            };
            finish(Plan {
                transition: t,
                events,
                step: Some(record(StepStatus::Succeeded, None)),
            })
        }
        Outcome::Fail { reason: error, .. } => stuck(error),
        Outcome::Retry {
            error, min_delay, ..
        } => {
            let policy = &s.def.compensation_retry;
            if policy.exhausted(s.attempt as u32) {
                return stuck(format!("attempts_exhausted: {error}"));
            }
            let delay = policy.backoff_at_least(
                s.attempt as u32 + 1,
                env.jitter_unit,
                min_delay.unwrap_or_default(),
            );
            let retry_at = at(env.now, delay);
            let mut t = transition(SagaStatus::Compensating, j, s.attempt, s.context);
            t.next_run_at = Some(retry_at);
            finish(Plan {
                transition: t,
                events: vec![NewEvent::from(Event::StepFailed {
                    step: step.name.clone(),
                    phase: StepPhase::Compensation,
                    attempt: s.attempt,
                    error: error.clone(),
                    permanent: false,
                    retry_at: Some(retry_at),
                })],
                step: Some(record(StepStatus::Running, Some(error))),
            })
        }
        // Compensations pause too, without a deadline: they are never dropped.
        Outcome::Paused { dependency } => {
            let t = pause(s, SagaStatus::Compensating, s.context, dependency);
            finish(Plan {
                transition: t,
                events: paused_events(step, StepPhase::Compensation, dependency, s.attempt),
                step: Some(record(
                    StepStatus::Running,
                    Some(format!(
                        "paused: the circuit breaker of {dependency} is open"
                    )),
                )),
            })
        }
        // A compensation cannot park; treat it as a retry.
        Outcome::Wait { .. } => after_compensation(
            s,
            env,
            Outcome::retry("compensation asked to wait; retrying", true),
        ),
    }
}

/// Plans that commit together, in one statement: a step's outcome and the outcomes of the local
/// steps it chained, in order.
#[derive(Debug)]
pub struct Batch {
    /// The last plan's transition, counting every plan's events and keeping the latest failure.
    pub transition: Transition,
    pub events: Vec<NewEvent>,
    /// One per step and phase: a later record of the same step replaces an earlier one.
    pub steps: Vec<StepOutcome>,
}

/// Folds `plans` (at least one, each planned on the state the one before leads to) into what one
/// outcome statement records.
pub fn merge(plans: Vec<Plan>) -> Batch {
    let mut events = Vec::new();
    let mut steps: Vec<StepOutcome> = Vec::new();
    let (mut failure_step, mut failure_reason) = (None, None);
    let mut transition = None;
    for plan in plans {
        events.extend(plan.events);
        if let Some(step) = plan.step {
            steps.retain(|s| (s.index, s.phase) != (step.index, step.phase));
            steps.push(step);
        }
        let t = plan.transition;
        if t.failure_reason.is_some() {
            (failure_step, failure_reason) = (t.failure_step.clone(), t.failure_reason.clone());
        }
        transition = Some(t);
    }
    let mut transition = transition.expect("merge needs at least one plan");
    transition.events = events.len() as i32;
    transition.failure_step = failure_step;
    transition.failure_reason = failure_reason;
    Batch {
        transition,
        events,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::definition::{SagaDefinition, parse};
    use serde_json::json;

    #[test]
    fn the_pure_core_imports_nothing_from_the_store() {
        // Spelled in pieces, so that this test's own text does not match.
        let store = ["store", "::"].concat();
        for (n, line) in include_str!("plan.rs").lines().enumerate() {
            let import = line.trim_start().starts_with("use ") && line.contains("store");
            assert!(
                !line.contains(&store) && !import,
                "plan.rs:{}: the pure core uses the store: {line}",
                n + 1
            );
        }
    }

    fn booking() -> SagaDefinition {
        parse(
            include_str!("../../sagas/booking.toml"),
            "booking.toml",
            &crate::engine::actions::catalog(),
        )
        .unwrap()
    }

    fn env() -> Env {
        Env {
            now: DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time"),
            lease: Duration::from_secs(30),
            jitter_unit: 0.5,
        }
    }

    fn state<'a>(
        def: &'a SagaDefinition,
        status: SagaStatus,
        step: usize,
        attempt: i32,
        context: &'a Map<String, Value>,
    ) -> State<'a> {
        State {
            def,
            status,
            current_step: step,
            attempt,
            context,
            failure_reason: Some("boom"),
            retrying_since: None,
        }
    }

    fn types(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.event.type_name()).collect()
    }

    #[test]
    fn done_moves_on_under_the_same_lease_and_the_last_step_completes() {
        let def = booking();
        let ctx = Map::new();
        let p = after(
            &state(&def, SagaStatus::Running, 0, 1, &ctx),
            &env(),
            Outcome::done(json!({"hold_id": 1}), vec![]),
        );
        assert_eq!(p.transition.status, SagaStatus::Running);
        assert_eq!((p.transition.current_step, p.transition.attempt), (1, 1));
        assert!(p.transition.keep_lease.is_some());
        assert_eq!(
            p.transition.context["hold_inventory"],
            json!({"hold_id": 1})
        );

        let p = after(
            &state(&def, SagaStatus::Running, 4, 1, &ctx),
            &env(),
            Outcome::done(json!({}), vec![]),
        );
        assert_eq!(p.transition.status, SagaStatus::Completed);
        assert_eq!(types(&p), ["SagaCompleted"]);
        assert_eq!(p.transition.events, 1);
        assert!(p.transition.keep_lease.is_none());
    }

    #[test]
    fn a_kept_lease_is_renewed_only_below_what_the_next_step_may_take() {
        let def = booking();
        let ctx = Map::new();
        let p = after(
            &state(&def, SagaStatus::Running, 0, 1, &ctx),
            &env(),
            Outcome::done(json!({}), vec![]),
        );
        // The next step (authorize_payment) may take its 20 s timeout, plus the margin.
        assert_eq!(
            p.transition.lease_floor,
            Some(def.steps[1].timeout + LEASE_MARGIN)
        );
        assert_eq!(p.transition.next_run_at, None, "left alone while leased");
    }

    #[test]
    fn merged_plans_record_the_last_state_every_event_and_each_step_once() {
        let def = booking();
        let ctx = Map::new();
        // capture_payment fails for good: compensation starts (with a failure reason) ...
        let failed = after(
            &state(&def, SagaStatus::Running, 2, 1, &ctx),
            &env(),
            Outcome::fail("card_declined", false),
        );
        assert_eq!(failed.transition.status, SagaStatus::Compensating);
        let first_reason = failed.transition.failure_reason.clone();
        assert!(first_reason.is_some());
        // ... and the next plan, for the compensation that ran after it, carries none.
        let compensated = after(
            &state(&def, SagaStatus::Compensating, 1, 1, &ctx),
            &env(),
            Outcome::done(json!({}), vec![]),
        );
        assert_eq!(compensated.transition.failure_reason, None);
        let (n1, n2) = (failed.events.len(), compensated.events.len());
        let last = compensated.transition.clone();
        let mut retried_step = failed.step.clone().unwrap();
        retried_step.status = StepStatus::Succeeded;
        let again = Plan {
            transition: last.clone(),
            events: vec![],
            step: Some(retried_step.clone()),
        };

        let b = merge(vec![failed, compensated, again]);
        assert_eq!(
            (b.transition.status, b.transition.current_step),
            (last.status, last.current_step)
        );
        assert_eq!(b.events.len(), n1 + n2);
        assert_eq!(b.transition.events as usize, n1 + n2);
        assert_eq!(
            b.transition.failure_reason, first_reason,
            "the failure is kept"
        );
        assert_eq!(b.steps.len(), 2, "{:?}", b.steps);
        assert_eq!(
            b.steps.last(),
            Some(&retried_step),
            "the later record of a step wins"
        );
    }

    #[test]
    fn retries_are_scheduled_until_the_policy_runs_out() {
        let mut def = booking();
        def.steps[1].give_up_after = None;
        let ctx = Map::new();
        let e = env();
        let p = after(
            &state(&def, SagaStatus::Running, 1, 1, &ctx),
            &e,
            Outcome::retry("503", true),
        );
        assert_eq!(p.transition.status, SagaStatus::Running);
        assert_eq!(
            p.transition.attempt, 1,
            "the next claim counts the next attempt"
        );
        assert!(p.transition.keep_lease.is_none(), "the lease is released");
        let delay = p.transition.next_run_at.unwrap() - e.now;
        assert_eq!(
            delay.num_milliseconds(),
            500,
            "base delay, jitter unit 0.5 = no spread"
        );
        assert_eq!(types(&p), ["StepFailed"]);

        let max = def.steps[1].retry.max_attempts as i32;
        let p = after(
            &state(&def, SagaStatus::Running, 1, max, &ctx),
            &e,
            Outcome::retry("503", true),
        );
        assert_eq!(p.transition.status, SagaStatus::Compensating);
        assert_eq!(
            p.transition.current_step, 1,
            "the authorization may exist: void it"
        );
        assert!(
            p.transition
                .failure_reason
                .as_deref()
                .unwrap()
                .starts_with("attempts_exhausted")
        );
    }

    #[test]
    fn with_a_give_up_deadline_attempts_only_pace_the_backoff_until_it_passes() {
        let def = booking();
        let step = &def.steps[4];
        let give_up = step.give_up_after.expect("notify has a give-up deadline");
        let ctx = Map::new();
        let e = env();
        let many = step.retry.max_attempts as i32 * 10;
        // Far past max_attempts, one minute into the outage: retried, not compensated.
        let since = e.now - chrono::Duration::minutes(1);
        let mut s = state(&def, SagaStatus::Running, 4, many, &ctx);
        s.retrying_since = Some(since);
        let p = after(&s, &e, Outcome::retry("HTTP 503", false));
        assert_eq!(p.transition.status, SagaStatus::Running, "{p:?}");
        assert_eq!(
            p.transition.retrying_since,
            Some(since),
            "kept from the first failure"
        );
        let retry_at = p.transition.next_run_at.unwrap();
        assert!(retry_at > e.now);
        assert_eq!(
            retry_at - e.now,
            chrono::Duration::from_std(step.retry.max_delay).unwrap(),
            "backoff capped, no jitter at unit 0.5"
        );
        assert_eq!(
            p.transition.hold_until,
            Some(at(retry_at, HOLD_SLACK)),
            "the hold outlives the retry"
        );

        // The first failure starts the clock.
        let p = after(
            &state(&def, SagaStatus::Running, 4, 1, &ctx),
            &e,
            Outcome::retry("HTTP 503", false),
        );
        assert_eq!(p.transition.retrying_since, Some(e.now));

        // Close to the deadline: the last attempt is due at the deadline, not past it.
        let since =
            e.now - chrono::Duration::from_std(give_up).unwrap() + chrono::Duration::seconds(1);
        s.retrying_since = Some(since);
        let p = after(&s, &e, Outcome::retry("HTTP 503", false));
        assert_eq!(p.transition.next_run_at, Some(at(since, give_up)));

        // Past it: the step fails, the saga compensates with `dependency_unavailable`.
        s.retrying_since = Some(e.now - chrono::Duration::from_std(give_up).unwrap());
        let p = after(&s, &e, Outcome::retry("HTTP 503", false));
        assert_eq!(p.transition.status, SagaStatus::Compensating, "{p:?}");
        assert_eq!(
            p.transition.failure_reason.as_deref(),
            Some("dependency_unavailable: HTTP 503")
        );
        assert_eq!(p.transition.retrying_since, None);
        assert_eq!(p.transition.hold_until, None);
    }

    #[test]
    fn a_paused_step_gives_its_attempt_back_and_waits_until_its_deadline_at_most() {
        let def = booking();
        let ctx = Map::new();
        let e = env();
        let give_up = def.steps[2].give_up_after.unwrap();
        let stripe = Dependency::Stripe;
        let p = after(
            &state(&def, SagaStatus::Running, 2, 3, &ctx),
            &e,
            Outcome::Paused { dependency: stripe },
        );
        let t = &p.transition;
        assert_eq!(
            (t.status, t.current_step, t.attempt),
            (SagaStatus::Running, 2, 2)
        );
        assert!(t.paused);
        assert_eq!(t.wait_reason.as_deref(), Some("dependency:stripe"));
        assert_eq!(
            t.next_run_at,
            Some(at(e.now, give_up)),
            "due at its give-up deadline"
        );
        assert_eq!(t.hold_until, Some(at(at(e.now, give_up), HOLD_SLACK)));
        assert_eq!(types(&p), ["SagaPaused"]);

        // A compensation pauses with no deadline at all.
        let p = after(
            &state(&def, SagaStatus::Compensating, 1, 1, &ctx),
            &e,
            Outcome::Paused { dependency: stripe },
        );
        let t = &p.transition;
        assert_eq!(
            (t.status, t.attempt, t.next_run_at),
            (SagaStatus::Compensating, 0, None)
        );
        assert!(t.paused);

        // Past the deadline: dependency_unavailable; nothing was called, so the step itself is
        // not undone (only the hold is released).
        let mut s = state(&def, SagaStatus::Running, 1, 1, &ctx);
        s.retrying_since = Some(e.now - chrono::Duration::hours(1));
        let p = after(&s, &e, Outcome::Paused { dependency: stripe });
        assert_eq!(
            (p.transition.status, p.transition.current_step),
            (SagaStatus::Compensating, 0)
        );
        assert!(
            p.transition
                .failure_reason
                .as_deref()
                .unwrap()
                .starts_with("dependency_unavailable")
        );
    }

    #[test]
    fn a_failure_compensates_completed_steps_and_the_failed_one_if_it_may_have_acted() {
        let def = booking();
        let ctx = Map::new();
        // A decline at authorize: nothing happened there, start with the hold's release.
        let p = after(
            &state(&def, SagaStatus::Running, 1, 1, &ctx),
            &env(),
            Outcome::fail("card_declined", false),
        );
        assert_eq!(
            (p.transition.status, p.transition.current_step),
            (SagaStatus::Compensating, 0)
        );
        assert_eq!(types(&p), ["StepFailed", "CompensationStarted"]);
        assert_eq!(p.step.as_ref().unwrap().status, StepStatus::Failed);

        // notify has no compensation: start at confirm.
        let p = after(
            &state(&def, SagaStatus::Running, 4, 5, &ctx),
            &env(),
            Outcome::fail("gateway down", true),
        );
        assert_eq!(p.transition.current_step, 3);

        // The first step failing without effect: nothing to undo, compensated at once.
        let p = after(
            &state(&def, SagaStatus::Running, 0, 1, &ctx),
            &env(),
            Outcome::fail("dates_unavailable", false),
        );
        assert_eq!(p.transition.status, SagaStatus::Compensated);
        assert_eq!(
            types(&p),
            ["StepFailed", "CompensationStarted", "SagaCompensated"]
        );
    }

    #[test]
    fn compensations_walk_down_and_get_stuck_past_their_limit() {
        let def = booking();
        let ctx = Map::new();
        let p = after(
            &state(&def, SagaStatus::Compensating, 2, 1, &ctx),
            &env(),
            Outcome::done(json!({}), vec![]),
        );
        assert_eq!(
            (p.transition.status, p.transition.current_step),
            (SagaStatus::Compensating, 1)
        );
        let p = after(
            &state(&def, SagaStatus::Compensating, 0, 1, &ctx),
            &env(),
            Outcome::done(json!({}), vec![]),
        );
        assert_eq!(p.transition.status, SagaStatus::Compensated);
        assert_eq!(types(&p), ["SagaCompensated"]);

        let max = def.compensation_retry.max_attempts as i32;
        let p = after(
            &state(&def, SagaStatus::Compensating, 2, max, &ctx),
            &env(),
            Outcome::retry("stripe down", true),
        );
        assert_eq!(p.transition.status, SagaStatus::Stuck);
        assert_eq!(types(&p), ["StepFailed", "SagaStuck"]);
        // A compensation that is refused outright cannot succeed by retrying.
        let p = after(
            &state(&def, SagaStatus::Compensating, 2, 1, &ctx),
            &env(),
            Outcome::fail("refused", false),
        );
        assert_eq!(p.transition.status, SagaStatus::Stuck);
    }

    #[test]
    fn a_step_set_to_stuck_parks_instead_of_compensating() {
        let mut def = booking();
        def.steps[3].on_failure = OnFailure::Stuck;
        let ctx = Map::new();
        let p = after(
            &state(&def, SagaStatus::Running, 3, 1, &ctx),
            &env(),
            Outcome::fail("hold_expired", false),
        );
        assert_eq!(p.transition.status, SagaStatus::Stuck);
        assert_eq!(types(&p), ["StepFailed", "SagaStuck"]);
    }

    #[test]
    fn guest_cancellation_starts_where_effects_may_exist() {
        let def = booking();
        let mut ctx = Map::new();
        let cancelled = || crate::policies::Cancellation::by_sagad("r").event(100, 0);
        let cancel = |s: &State<'_>, env: &Env, local: bool| {
            cancel(s, env, local, GUEST_CANCEL, cancelled())
        };
        // Completed saga: everything is undone, confirm's compensation cancels the booking.
        let p = cancel(&state(&def, SagaStatus::Running, 5, 1, &ctx), &env(), false);
        assert_eq!(p.transition.current_step, 3);
        assert_eq!(types(&p), ["CompensationStarted"]);
        // Waiting in authorize (a PaymentIntent exists): void it; the booking is cancelled here.
        ctx.insert(
            "authorize_payment".into(),
            json!({"payment_intent_id": "pi_1"}),
        );
        let p = cancel(&state(&def, SagaStatus::Running, 1, 1, &ctx), &env(), false);
        assert_eq!(p.transition.current_step, 1);
        assert_eq!(types(&p), ["CompensationStarted", "BookingCancelled"]);
        assert_eq!(p.transition.failure_reason.as_deref(), Some(GUEST_CANCEL));
        // Before a local step ran: only what completed.
        let p = cancel(
            &state(&def, SagaStatus::Running, 3, 1, &Map::new()),
            &env(),
            true,
        );
        assert_eq!(p.transition.current_step, 2);
    }
}
