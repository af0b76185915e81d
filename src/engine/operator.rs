//! What an operator can do with a saga the engine has parked — run its step again now, close it as
//! settled by hand, or cancel it — as pure plans: from where the saga is, the state it moves to
//! and the events that record who did it and why. The store applies a plan under a guard on the
//! state it was planned from (`store::operator::apply`), so an action racing a worker changes
//! nothing.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::actions::Action;
use super::definition::SagaDefinition;
use super::model::{SagaStatus, StepPhase};
use crate::events::{Event, NewEvent};
use crate::policies::Cancellation;
use crate::text_enum::text_enum;

/// The reason recorded when an operator cancels a stuck saga.
pub const OPERATOR_CANCEL: &str = "cancelled_by_operator";

/// Longest reason an operator may give.
pub const MAX_REASON_LEN: usize = 1024;

text_enum! {
    /// How an operator settled a stuck saga by hand.
    #[derive(ToSchema)]
    pub enum Resolution {
        /// What the saga was for happened (e.g. the booking stands, the money was taken).
        Completed = "completed",
        /// What the saga did was undone by hand (e.g. refunded in Stripe's dashboard).
        Compensated = "compensated",
    }
}

/// A saga as the operator actions see it.
pub struct Parked<'a> {
    pub def: &'a SagaDefinition,
    pub status: SagaStatus,
    pub current_step: usize,
    /// Which way the current step was running: `Compensation` when the saga was undoing it.
    pub phase: StepPhase,
    pub failure_step: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
    /// The booking's price and what its capture step recorded as captured.
    pub price: i64,
    pub captured: i64,
}

/// The state an action moves the saga to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub status: SagaStatus,
    pub current_step: i32,
    /// Attempts start afresh: the next claim is attempt 1.
    pub attempt: i32,
    /// Due at once (and the workers woken), or not due at all.
    pub run_now: bool,
    pub failure_step: Option<String>,
    pub failure_reason: Option<String>,
    /// The cancellation to record with the saga (an operator's cancel), read by the
    /// compensations that record it and refund the payment.
    pub cancellation: Option<Cancellation>,
}

#[derive(Debug, Clone)]
pub struct OperatorPlan {
    pub target: Target,
    pub events: Vec<NewEvent>,
}

/// Why an action does not apply to the saga as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("saga is {0}; only a stuck or waiting saga can be retried")]
    NotRetryable(SagaStatus),
    #[error("saga is {0}; only a stuck saga can be resolved")]
    NotStuck(SagaStatus),
}

/// What a saga still holds: what an operator closing it must not forget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Holdings {
    /// An active inventory claim: a hold or a booking.
    pub claim: Option<ClaimHeld>,
    /// Money captured and not refunded.
    pub captured: Option<MoneyHeld>,
    /// An authorization neither captured nor voided.
    pub authorization: Option<MoneyHeld>,
}

impl Holdings {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ClaimHeld {
    /// `hold` or `booking`.
    pub kind: String,
    pub listing_id: String,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    /// When a hold lapses by itself; null for a booking.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoneyHeld {
    pub payment_intent_id: String,
    /// In minor units.
    pub amount: i64,
    pub currency: String,
}

/// The money a saga's payment events leave with it: the amount captured and not refunded, and
/// an authorization that was neither captured nor voided.
pub fn money_held<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> (Option<MoneyHeld>, Option<MoneyHeld>) {
    let mut authorized: Option<MoneyHeld> = None;
    let (mut captured, mut refunded, mut any_capture, mut voided) = (0i64, 0i64, None, false);
    for e in events {
        match e {
            Event::PaymentAuthorized {
                payment_intent_id,
                amount,
                currency,
            } => {
                authorized = Some(MoneyHeld {
                    payment_intent_id: payment_intent_id.clone(),
                    amount: *amount,
                    currency: currency.clone(),
                });
            }
            Event::PaymentCaptured {
                payment_intent_id,
                amount,
                currency,
            } => {
                captured += amount;
                any_capture = Some((payment_intent_id.clone(), currency.clone()));
            }
            Event::PaymentRefunded { amount, .. } => refunded += amount,
            Event::PaymentVoided { .. } => voided = true,
            _ => {}
        }
    }
    let authorization = authorized.filter(|_| any_capture.is_none() && !voided);
    let captured =
        any_capture
            .filter(|_| captured > refunded)
            .map(|(payment_intent_id, currency)| MoneyHeld {
                payment_intent_id,
                amount: captured - refunded,
                currency,
            });
    (captured, authorization)
}

fn event(event: Event, step: Option<&str>) -> NewEvent {
    NewEvent {
        event,
        causation_id: None,
        step: step.map(str::to_owned),
        attempt: None,
        worker: None,
    }
}

/// Runs the step (or compensation) a stuck or waiting saga is at again, now, with fresh attempts.
pub fn retry(p: &Parked<'_>, actor: &str, reason: &str) -> Result<OperatorPlan, Refusal> {
    if !matches!(p.status, SagaStatus::Stuck | SagaStatus::Waiting) {
        return Err(Refusal::NotRetryable(p.status));
    }
    let step = &p.def.steps[p.current_step];
    let compensating = p.phase == StepPhase::Compensation;
    let target = Target {
        status: if compensating {
            SagaStatus::Compensating
        } else {
            SagaStatus::Running
        },
        current_step: p.current_step as i32,
        attempt: 0,
        run_now: true,
        // A compensation keeps the failure it is undoing; a forward step runs as if it had not
        // failed.
        failure_step: compensating
            .then(|| p.failure_step.map(str::to_owned))
            .flatten(),
        failure_reason: compensating
            .then(|| p.failure_reason.map(str::to_owned))
            .flatten(),
        cancellation: None,
    };
    let events = vec![event(
        Event::SagaRetried {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            step: step.name.clone(),
            phase: p.phase,
        },
        Some(&step.name),
    )];
    Ok(OperatorPlan { target, events })
}

/// Closes a stuck saga that a person settled by hand. `holdings` (what it still holds) goes into
/// the record. Integrators hear of it as of any finished saga (`SagaCompleted` or
/// `SagaCompensated`).
pub fn resolve(
    p: &Parked<'_>,
    actor: &str,
    reason: &str,
    outcome: Resolution,
    holdings: Holdings,
) -> Result<OperatorPlan, Refusal> {
    if p.status != SagaStatus::Stuck {
        return Err(Refusal::NotStuck(p.status));
    }
    let mut events = vec![event(
        Event::SagaResolved {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            outcome,
            still_held: holdings,
        },
        None,
    )];
    let (status, failure_reason) = match outcome {
        Resolution::Completed => {
            events.push(event(Event::SagaCompleted {}, None));
            (SagaStatus::Completed, p.failure_reason.map(str::to_owned))
        }
        Resolution::Compensated => {
            let why = format!("resolved_by_operator: {reason}");
            events.push(event(
                Event::SagaCompensated {
                    reason: why.clone(),
                },
                None,
            ));
            (SagaStatus::Compensated, Some(why))
        }
    };
    Ok(OperatorPlan {
        target: Target {
            status,
            current_step: p.current_step as i32,
            attempt: 0,
            run_now: false,
            failure_step: p.failure_step.map(str::to_owned),
            failure_reason,
            cancellation: None,
        },
        events,
    })
}

/// Cancels a stuck saga: compensates what is left. Stuck while undoing a step, it resumes that
/// compensation with fresh attempts (and the ones before it follow); stuck on a forward step, it
/// compensates from that step (when its effect may have happened) or the one before it.
pub fn cancel_stuck(p: &Parked<'_>, actor: &str, reason: &str) -> Result<OperatorPlan, Refusal> {
    if p.status != SagaStatus::Stuck {
        return Err(Refusal::NotStuck(p.status));
    }
    let step = &p.def.steps[p.current_step];
    let mut events = vec![event(
        Event::OperatorCancelled {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        },
        Some(&step.name),
    )];
    let cancellation = Cancellation::by_operator(actor, reason);
    if p.phase == StepPhase::Compensation {
        let mut plan = retry(p, actor, reason)?;
        plan.events = events;
        plan.target.cancellation = Some(cancellation);
        return Ok(plan);
    }
    // Attempts of a remote step were made: its effect may have happened.
    let local = Action::parse(&step.action).is_some_and(Action::is_local);
    let start = p.current_step as isize - if local { 1 } else { 0 };
    let first = (0..=start)
        .rev()
        .map(|i| i as usize)
        .find(|&i| p.def.steps[i].compensation.is_some());
    events.push(event(
        Event::CompensationStarted {
            failed_step: Some(step.name.clone()),
            reason: OPERATOR_CANCEL.to_owned(),
        },
        Some(&step.name),
    ));
    // The booking is cancelled by the confirm step's compensation when that step is undone.
    let booking_cancel_runs = first.is_some_and(|f| {
        p.def.steps[..=f]
            .iter()
            .any(|s| s.compensation.as_deref() == Some("booking.cancel"))
    });
    if !booking_cancel_runs {
        events.push(event(cancellation.event(p.price, p.captured), None));
    }
    let target = match first {
        Some(first) => Target {
            status: SagaStatus::Compensating,
            current_step: first as i32,
            attempt: 0,
            run_now: true,
            failure_step: Some(step.name.clone()),
            failure_reason: Some(OPERATOR_CANCEL.to_owned()),
            cancellation: Some(cancellation.clone()),
        },
        None => {
            events.push(event(
                Event::SagaCompensated {
                    reason: OPERATOR_CANCEL.to_owned(),
                },
                None,
            ));
            Target {
                status: SagaStatus::Compensated,
                current_step: 0,
                attempt: 0,
                run_now: false,
                failure_step: Some(step.name.clone()),
                failure_reason: Some(OPERATOR_CANCEL.to_owned()),
                cancellation: Some(cancellation),
            }
        }
    };
    Ok(OperatorPlan { target, events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::definition::parse;

    fn booking() -> SagaDefinition {
        parse(
            include_str!("../../sagas/booking.toml"),
            "booking.toml",
            &crate::engine::actions::catalog(),
        )
        .unwrap()
    }

    fn parked(
        def: &SagaDefinition,
        status: SagaStatus,
        step: usize,
        phase: StepPhase,
    ) -> Parked<'_> {
        Parked {
            def,
            status,
            current_step: step,
            phase,
            failure_step: Some("notify"),
            failure_reason: Some("attempts_exhausted: 500"),
            price: 45000,
            captured: 45000,
        }
    }

    fn types(p: &OperatorPlan) -> Vec<&'static str> {
        p.events.iter().map(|e| e.event.type_name()).collect()
    }

    #[test]
    fn retry_resumes_the_phase_the_saga_was_in_with_fresh_attempts() {
        let def = booking();
        let p = retry(
            &parked(&def, SagaStatus::Stuck, 2, StepPhase::Compensation),
            "ops",
            "Stripe is back",
        )
        .unwrap();
        assert_eq!(p.target.status, SagaStatus::Compensating);
        assert_eq!((p.target.current_step, p.target.attempt), (2, 0));
        assert!(p.target.run_now);
        assert_eq!(p.target.failure_step.as_deref(), Some("notify"));
        assert_eq!(types(&p), ["SagaRetried"]);

        let p = retry(
            &parked(&def, SagaStatus::Waiting, 1, StepPhase::Forward),
            "ops",
            "guest says done",
        )
        .unwrap();
        assert_eq!(p.target.status, SagaStatus::Running);
        assert_eq!(p.target.failure_reason, None);
        match &p.events[0].event {
            Event::SagaRetried {
                actor, step, phase, ..
            } => {
                assert_eq!(actor, "ops");
                assert_eq!(step, "authorize_payment");
                assert_eq!(*phase, StepPhase::Forward);
            }
            other => panic!("{other:?}"),
        }
        for status in [
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::Completed,
            SagaStatus::Compensated,
        ] {
            assert_eq!(
                retry(&parked(&def, status, 1, StepPhase::Forward), "ops", "x").unwrap_err(),
                Refusal::NotRetryable(status)
            );
        }
    }

    #[test]
    fn resolve_closes_only_a_stuck_saga_and_says_what_it_holds() {
        let def = booking();
        let held = Holdings {
            authorization: Some(MoneyHeld {
                payment_intent_id: "pi_1".into(),
                amount: 100,
                currency: "eur".into(),
            }),
            ..Default::default()
        };
        let p = resolve(
            &parked(&def, SagaStatus::Stuck, 2, StepPhase::Compensation),
            "ops",
            "voided in the dashboard",
            Resolution::Compensated,
            held.clone(),
        )
        .unwrap();
        assert_eq!(p.target.status, SagaStatus::Compensated);
        assert!(!p.target.run_now);
        assert_eq!(types(&p), ["SagaResolved", "SagaCompensated"]);
        assert!(
            matches!(&p.events[0].event, Event::SagaResolved { still_held, .. } if *still_held == held)
        );
        let p = resolve(
            &parked(&def, SagaStatus::Stuck, 4, StepPhase::Forward),
            "ops",
            "sent by hand",
            Resolution::Completed,
            Holdings::default(),
        )
        .unwrap();
        assert_eq!(p.target.status, SagaStatus::Completed);
        assert_eq!(types(&p), ["SagaResolved", "SagaCompleted"]);
        assert_eq!(
            resolve(
                &parked(&def, SagaStatus::Waiting, 1, StepPhase::Forward),
                "ops",
                "x",
                Resolution::Completed,
                Holdings::default()
            )
            .unwrap_err(),
            Refusal::NotStuck(SagaStatus::Waiting)
        );
    }

    #[test]
    fn cancelling_a_stuck_saga_compensates_what_is_left() {
        let def = booking();
        // Stuck undoing the capture: the refund runs again, the rest follows.
        let p = cancel_stuck(
            &parked(&def, SagaStatus::Stuck, 2, StepPhase::Compensation),
            "ops",
            "guest asked",
        )
        .unwrap();
        assert_eq!(p.target.status, SagaStatus::Compensating);
        assert_eq!(p.target.current_step, 2);
        assert_eq!(types(&p), ["OperatorCancelled"]);
        // Stuck on notify (no compensation): compensation starts at the confirm step, which
        // cancels the booking itself.
        let p = cancel_stuck(
            &parked(&def, SagaStatus::Stuck, 4, StepPhase::Forward),
            "ops",
            "guest unreachable",
        )
        .unwrap();
        assert_eq!(p.target.status, SagaStatus::Compensating);
        assert_eq!(p.target.current_step, 3);
        assert_eq!(p.target.failure_reason.as_deref(), Some(OPERATOR_CANCEL));
        assert_eq!(types(&p), ["OperatorCancelled", "CompensationStarted"]);
        // Stuck on the local confirm step: nothing of it happened; undo from the capture, and
        // record the booking's cancellation here.
        let p = cancel_stuck(
            &parked(&def, SagaStatus::Stuck, 3, StepPhase::Forward),
            "ops",
            "x",
        )
        .unwrap();
        assert_eq!(p.target.current_step, 2);
        assert_eq!(
            types(&p),
            [
                "OperatorCancelled",
                "CompensationStarted",
                "BookingCancelled"
            ]
        );
        assert!(
            cancel_stuck(
                &parked(&def, SagaStatus::Running, 3, StepPhase::Forward),
                "ops",
                "x"
            )
            .is_err()
        );
    }

    #[test]
    fn money_held_follows_the_payment_events() {
        let auth = Event::PaymentAuthorized {
            payment_intent_id: "pi_1".into(),
            amount: 500,
            currency: "eur".into(),
        };
        let capture = Event::PaymentCaptured {
            payment_intent_id: "pi_1".into(),
            amount: 500,
            currency: "eur".into(),
        };
        let refund = |amount| Event::PaymentRefunded {
            payment_intent_id: "pi_1".into(),
            refund_id: "re_1".into(),
            amount,
        };
        let (c, a) = money_held([&auth]);
        assert_eq!((c, a.map(|m| m.amount)), (None, Some(500)));
        let (c, a) = money_held([&auth, &capture, &refund(200)]);
        assert_eq!((c.map(|m| m.amount), a), (Some(300), None));
        let (c, a) = money_held([&auth, &capture, &refund(200), &refund(300)]);
        assert_eq!((c, a), (None, None));
        let voided = Event::PaymentVoided {
            payment_intent_id: "pi_1".into(),
        };
        assert_eq!(money_held([&auth, &voided]), (None, None));
    }
}
