//! A saga's state folded from its events: the pure fold behind point-in-time reads
//! (`GET /v1/sagas/{id}?as_of=`).
//!
//! The engine records each step outcome as one transition of the saga's row and the events that
//! explain it, in one statement ([`super::plan`]). This fold replays the rules of the state machine
//! on those events: after the events of one such statement it gives the row's status, current
//! step, attempt, failure and wait as the statement left them. Two things are not in the events
//! and are taken as arguments instead:
//!
//! - the definition the saga runs on (its steps and which of them have a compensation);
//! - which steps' compensations ran ([`Fold::compensation_ran`], from the step history), which
//!   decides where a compensation starts when the failed step's own effect may or may not have
//!   happened (the action knew; the event does not say).
//!
//! State that changes without an event is not seen: a claim counting an attempt, a compensation
//! that had nothing to undo and recorded nothing, a guest's pending cancellation. It shows from
//! the next event on.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::definition::SagaDefinition;
use super::model::{SagaStatus, StepPhase};
use crate::events::Event;

/// What an event's metadata says about who recorded it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tag {
    /// The step whose action or compensation produced it.
    pub step: Option<String>,
    /// The attempt that produced it (operator events carry none).
    pub attempt: Option<i32>,
    /// The sagad worker that recorded it.
    pub worker: Option<String>,
}

impl Tag {
    /// From the stored `metadata` column.
    pub fn of(metadata: &Value) -> Self {
        let text = |k: &str| metadata.get(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            step: text("step"),
            attempt: metadata
                .get("attempt")
                .and_then(Value::as_i64)
                .and_then(|a| i32::try_from(a).ok()),
            worker: text("worker"),
        }
    }
}

/// A saga as its events leave it.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaAt {
    pub status: SagaStatus,
    /// Index of the step being run or undone (the number of steps once completed, 0 once
    /// compensated), as the saga row counts it.
    pub current_step: usize,
    pub attempt: i32,
    pub failure_step: Option<String>,
    pub failure_reason: Option<String>,
    pub wait_key: Option<String>,
    pub wait_deadline: Option<DateTime<Utc>>,
    /// What each forward step's events recorded, by step name: their payloads' fields merged.
    pub outputs: Map<String, Value>,
}

/// The fold of one saga's events, in version order.
pub struct Fold<'a> {
    def: &'a SagaDefinition,
    compensation_ran: &'a dyn Fn(usize) -> bool,
    state: Option<SagaAt>,
    /// The last event was an operator's: what follows in its statement takes its attempt (0).
    operator: bool,
    /// A stuck saga was closed by an operator: it finishes where it stood.
    resolved: bool,
}

/// Events an action or a compensation produces as its result.
fn is_result(event: &Event) -> bool {
    matches!(
        event,
        Event::InventoryHeld { .. }
            | Event::PaymentActionRequired { .. }
            | Event::PaymentAuthorized { .. }
            | Event::PaymentCaptured { .. }
            | Event::BookingConfirmed { .. }
            | Event::NotificationSent { .. }
            | Event::InventoryReleased { .. }
            | Event::PaymentVoided { .. }
            | Event::PaymentRefunded { .. }
            | Event::BookingCancelled { .. }
    )
}

impl<'a> Fold<'a> {
    /// `compensation_ran(i)`: the compensation of step `i` ran (or the saga is about to run it).
    pub fn new(def: &'a SagaDefinition, compensation_ran: &'a dyn Fn(usize) -> bool) -> Self {
        Self {
            def,
            compensation_ran,
            state: None,
            operator: false,
            resolved: false,
        }
    }

    /// The state so far; `None` before the saga's first event.
    pub fn state(&self) -> Option<&SagaAt> {
        self.state.as_ref()
    }

    fn index(&self, step: &str) -> Option<usize> {
        self.def.steps.iter().position(|s| s.name == step)
    }

    fn compensable_at_or_below(&self, from: isize) -> Option<usize> {
        (0..=from).rev().map(|i| i as usize).find(|&i| {
            self.def
                .steps
                .get(i)
                .is_some_and(|s| s.compensation.is_some())
        })
    }

    /// Applies the next event.
    pub fn apply(&mut self, event: &Event, tag: &Tag) {
        let operator = std::mem::take(&mut self.operator);
        let Some(s) = self.state.as_mut() else {
            // The first event starts the saga at its first step, attempt 1 when it was handed
            // to a worker at once.
            self.state = Some(SagaAt {
                status: SagaStatus::Running,
                current_step: 0,
                attempt: i32::from(tag.worker.is_some()),
                failure_step: None,
                failure_reason: None,
                wait_key: None,
                wait_deadline: None,
                outputs: Map::new(),
            });
            return;
        };
        let steps = self.def.steps.len();
        match event {
            Event::StepFailed {
                step,
                phase,
                attempt,
                error,
                permanent,
                ..
            } => {
                let Some(i) = self.def.steps.iter().position(|s| &s.name == step) else {
                    return;
                };
                s.current_step = i;
                s.attempt = *attempt;
                s.wait_key = None;
                s.wait_deadline = None;
                s.status = match phase {
                    StepPhase::Forward => SagaStatus::Running,
                    StepPhase::Compensation => SagaStatus::Compensating,
                };
                if *permanent {
                    // Kept for the SagaStuck that follows a failed compensation, or replaced by
                    // the CompensationStarted or SagaStuck of a failed forward step.
                    if *phase == StepPhase::Compensation {
                        let name = self.def.steps[i].compensation.clone().unwrap_or_default();
                        let before = s.failure_reason.as_deref().unwrap_or("compensation");
                        s.failure_reason = Some(format!(
                            "{before}; compensation `{name}` of step `{step}` failed: {error}"
                        ));
                    }
                }
            }
            Event::SagaStuck { step, error } => {
                if s.status == SagaStatus::Running {
                    s.failure_step = Some(step.clone());
                    s.failure_reason = Some(error.clone());
                }
                s.status = SagaStatus::Stuck;
            }
            Event::CompensationStarted {
                failed_step,
                reason,
            } => {
                let i = failed_step
                    .as_deref()
                    .and_then(|f| self.def.steps.iter().position(|s| s.name == f));
                let (hi, lo) = match i {
                    Some(i) => (
                        self.compensable_at_or_below(i as isize),
                        self.compensable_at_or_below(i as isize - 1),
                    ),
                    None => {
                        let last = self.compensable_at_or_below(steps as isize - 1);
                        (last, last)
                    }
                };
                let first = match (hi, lo) {
                    (Some(h), _) if (self.compensation_ran)(h) => Some(h),
                    (_, lo) => lo,
                };
                let s = self.state.as_mut().expect("checked above");
                s.status = SagaStatus::Compensating;
                s.current_step = first.unwrap_or(0);
                s.attempt = if operator { 0 } else { 1 };
                s.wait_key = None;
                s.wait_deadline = None;
                if failed_step.is_some() {
                    s.failure_step = failed_step.clone();
                }
                s.failure_reason = Some(reason.clone());
            }
            Event::SagaCompleted {} => {
                if !self.resolved {
                    s.current_step = steps;
                }
                s.status = SagaStatus::Completed;
                s.attempt = 0;
                s.wait_key = None;
                s.wait_deadline = None;
            }
            Event::SagaCompensated { reason } => {
                if self.resolved {
                    s.failure_reason = Some(reason.clone());
                } else {
                    s.current_step = 0;
                }
                s.status = SagaStatus::Compensated;
                s.attempt = 0;
                s.wait_key = None;
                s.wait_deadline = None;
            }
            Event::SagaPaused { step, phase, .. } => {
                if let Some(i) = self.index(step) {
                    let s = self.state.as_mut().expect("checked above");
                    s.current_step = i;
                    s.attempt = (tag.attempt.unwrap_or(1) - 1).max(0);
                    s.status = match phase {
                        StepPhase::Forward => SagaStatus::Running,
                        StepPhase::Compensation => SagaStatus::Compensating,
                    };
                }
            }
            Event::SagaRetried { step, phase, .. } => {
                if let Some(i) = self.index(step) {
                    let s = self.state.as_mut().expect("checked above");
                    s.current_step = i;
                    s.attempt = 0;
                    s.wait_key = None;
                    s.wait_deadline = None;
                    s.status = match phase {
                        StepPhase::Forward => SagaStatus::Running,
                        StepPhase::Compensation => SagaStatus::Compensating,
                    };
                }
            }
            Event::OperatorCancelled { .. } => {
                // Stuck while undoing a step: that compensation runs again with fresh attempts;
                // on a forward step, the CompensationStarted that follows says where it goes.
                if s.status == SagaStatus::Stuck {
                    s.status = SagaStatus::Compensating;
                    s.attempt = 0;
                }
                self.operator = true;
            }
            Event::SagaResolved { .. } => {
                s.attempt = 0;
                self.resolved = true;
            }
            e if is_result(e) && tag.attempt.is_some() => {
                let compensating = s.status == SagaStatus::Compensating;
                let Some(i) = tag.step.as_deref().and_then(|t| self.index(t)) else {
                    return;
                };
                if compensating {
                    // A compensation done: the next step down with one, or (SagaCompensated
                    // follows) none.
                    let next = self.compensable_at_or_below(i as isize - 1);
                    let s = self.state.as_mut().expect("checked above");
                    s.current_step = next.unwrap_or(i);
                    s.attempt = 1;
                    return;
                }
                let name = self.def.steps[i].name.clone();
                let s = self.state.as_mut().expect("checked above");
                let output = s
                    .outputs
                    .entry(name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let (Value::Object(out), Value::Object(fields)) = (output, e.payload()) {
                    out.extend(fields);
                }
                s.wait_key = None;
                s.wait_deadline = None;
                if let Event::PaymentActionRequired {
                    payment_intent_id,
                    deadline,
                } = e
                {
                    s.status = SagaStatus::Waiting;
                    s.current_step = i;
                    s.attempt = tag.attempt.unwrap_or(1);
                    s.wait_key = Some(super::actions::payment_wait_key(payment_intent_id));
                    s.wait_deadline = Some(*deadline);
                } else {
                    s.status = SagaStatus::Running;
                    s.current_step = i + 1;
                    s.attempt = 1;
                }
            }
            // Recorded outside the saga's steps (a Stripe notice, an expired hold): the saga's
            // state stays.
            _ => {}
        }
    }
}

/// Folds `history` (in version order).
pub fn fold<'e>(
    def: &SagaDefinition,
    compensation_ran: &dyn Fn(usize) -> bool,
    history: impl IntoIterator<Item = (&'e Event, &'e Tag)>,
) -> Option<SagaAt> {
    let mut f = Fold::new(def, compensation_ran);
    for (e, tag) in history {
        f.apply(e, tag);
    }
    f.state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::definition::parse;
    use chrono::NaiveDate;
    use uuid::Uuid;

    fn booking() -> SagaDefinition {
        parse(
            include_str!("../../sagas/booking.toml"),
            "booking.toml",
            &crate::engine::actions::catalog(),
        )
        .unwrap()
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2030, 1, d).unwrap()
    }

    fn tagged(step: &str, attempt: i32) -> Tag {
        Tag {
            step: Some(step.into()),
            attempt: Some(attempt),
            worker: Some("w1".into()),
        }
    }

    fn requested() -> Event {
        Event::BookingRequested {
            listing_id: "l".into(),
            guest_id: "g".into(),
            check_in: day(1),
            check_out: day(3),
            amount: 100,
            currency: "eur".into(),
        }
    }

    fn held() -> Event {
        Event::InventoryHeld {
            hold_id: Uuid::nil(),
            listing_id: "l".into(),
            check_in: day(1),
            check_out: day(3),
            expires_at: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
        }
    }

    fn at(history: &[(Event, Tag)], ran: &dyn Fn(usize) -> bool) -> SagaAt {
        fold(&booking(), ran, history.iter().map(|(e, t)| (e, t))).unwrap()
    }

    #[test]
    fn forward_steps_move_on_and_record_their_outputs() {
        let never = |_: usize| false;
        let mut h = vec![(requested(), Tag::default())];
        let s = at(&h, &never);
        assert_eq!(
            (s.status, s.current_step, s.attempt),
            (SagaStatus::Running, 0, 0)
        );
        h.push((held(), tagged("hold_inventory", 1)));
        let s = at(&h, &never);
        assert_eq!((s.current_step, s.attempt), (1, 1));
        assert_eq!(
            s.outputs["hold_inventory"]["hold_id"],
            Uuid::nil().to_string()
        );
        h.push((
            Event::StepFailed {
                step: "authorize_payment".into(),
                phase: StepPhase::Forward,
                attempt: 2,
                error: "502".into(),
                permanent: false,
                retry_at: None,
            },
            tagged("authorize_payment", 2),
        ));
        let s = at(&h, &never);
        assert_eq!(
            (s.status, s.current_step, s.attempt),
            (SagaStatus::Running, 1, 2)
        );
        h.push((
            Event::PaymentActionRequired {
                payment_intent_id: "pi_1".into(),
                deadline: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
            },
            tagged("authorize_payment", 3),
        ));
        let s = at(&h, &never);
        assert_eq!(
            (s.status, s.current_step, s.attempt),
            (SagaStatus::Waiting, 1, 3)
        );
        assert_eq!(s.wait_key.as_deref(), Some("stripe:payment_intent:pi_1"));
        h.push((Event::SagaCompleted {}, Tag::default()));
        let s = at(&h, &never);
        assert_eq!(
            (s.status, s.current_step, s.attempt),
            (SagaStatus::Completed, 5, 0)
        );
        assert_eq!(s.wait_key, None);
    }

    #[test]
    fn a_compensation_starts_at_the_failed_step_only_when_its_compensation_ran() {
        let failed = [
            (requested(), Tag::default()),
            (held(), tagged("hold_inventory", 1)),
            (
                Event::StepFailed {
                    step: "capture_payment".into(),
                    phase: StepPhase::Forward,
                    attempt: 1,
                    error: "boom".into(),
                    permanent: true,
                    retry_at: None,
                },
                tagged("capture_payment", 1),
            ),
            (
                Event::CompensationStarted {
                    failed_step: Some("capture_payment".into()),
                    reason: "boom".into(),
                },
                Tag::default(),
            ),
        ];
        let refunded = |i: usize| i == 2;
        let s = at(&failed, &refunded);
        assert_eq!(
            (s.status, s.current_step, s.attempt),
            (SagaStatus::Compensating, 2, 1)
        );
        assert_eq!(s.failure_step.as_deref(), Some("capture_payment"));
        let s = at(&failed, &|_| false);
        assert_eq!(s.current_step, 1, "the void, when no refund ran");

        let mut h = failed.to_vec();
        h.push((
            Event::PaymentVoided {
                payment_intent_id: "pi".into(),
            },
            tagged("authorize_payment", 1),
        ));
        let s = at(&h, &|_| false);
        assert_eq!((s.status, s.current_step), (SagaStatus::Compensating, 0));
        h.push((
            Event::StepFailed {
                step: "hold_inventory".into(),
                phase: StepPhase::Compensation,
                attempt: 20,
                error: "db down".into(),
                permanent: true,
                retry_at: None,
            },
            Tag::default(),
        ));
        h.push((
            Event::SagaStuck {
                step: "hold_inventory".into(),
                error: "db down".into(),
            },
            Tag::default(),
        ));
        let s = at(&h, &|_| false);
        assert_eq!(
            (s.status, s.current_step, s.attempt),
            (SagaStatus::Stuck, 0, 20)
        );
        assert_eq!(
            s.failure_reason.as_deref(),
            Some("boom; compensation `inventory.release` of step `hold_inventory` failed: db down")
        );
        assert_eq!(s.failure_step.as_deref(), Some("capture_payment"));
    }

    #[test]
    fn nothing_before_the_first_event() {
        assert_eq!(fold(&booking(), &|_| false, []), None);
    }
}
