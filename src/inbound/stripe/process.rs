//! Processing one inbox event: find the saga from our own records, decide by the PaymentIntent's
//! current state (fetched from Stripe), and commit the effect (wake, domain events) together with
//! the inbox row's new status in one transaction.

use crate::domain::SagaId;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::event::{Kind, StripeEvent};
use crate::engine::actions::payment_wait_key;
use crate::engine::model::SagaStatus;
use crate::events::{Event, NewEvent};
use crate::store::stripe_inbox::{self, Claim, InboxStatus, SagaSnapshot};
use crate::store::{bookings, events, sagas};
use crate::stripe::client::{
    Error as StripeError, PaymentIntentInfo, PaymentIntentStatus, RefundInfo, StripeClient,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("retrieving the PaymentIntent failed: {0}")]
    Stripe(#[from] StripeError),
}

/// What processing an event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Committed: the row is now `status`, with this outcome.
    Finished {
        status: InboxStatus,
        saga_id: Option<SagaId>,
        outcome: String,
    },
    /// Not yet: try again after a backoff (e.g. the saga has not parked yet).
    Retry(String),
    /// The saga has not caught up with this event yet (its own commit is on the way): look again
    /// shortly, without counting a failed attempt.
    Defer(String),
    /// Someone else owns the row now (our claim ran out); nothing was committed.
    ClaimLost,
}

pub async fn process(
    pool: &PgPool,
    stripe: &StripeClient,
    claim: &Claim,
    payload: &Value,
) -> Result<Decision, Error> {
    let ev = match StripeEvent::from_value(payload) {
        Ok(ev) => ev,
        Err(e) => {
            return finish(
                pool,
                claim,
                InboxStatus::Ignored,
                None,
                format!("unreadable: {e}"),
            )
            .await;
        }
    };
    let Some(kind) = ev.kind() else {
        return finish(
            pool,
            claim,
            InboxStatus::Ignored,
            None,
            "event type not handled".into(),
        )
        .await;
    };
    let Some(pi) = ev.payment_intent_id() else {
        return finish(
            pool,
            claim,
            InboxStatus::Unmatched,
            None,
            "no PaymentIntent in the event".into(),
        )
        .await;
    };

    // The current state, never the payload's snapshot, decides (events arrive in any order).
    // Fetched before any transaction: never hold one across a call to Stripe.
    let current = if kind.is_payment_intent() {
        match stripe.retrieve(&pi).await {
            Ok(p) => Some(p),
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                let reason = format!("Stripe does not know PaymentIntent {pi}: {e}");
                return finish(pool, claim, InboxStatus::Unmatched, None, reason).await;
            }
        }
    } else {
        None
    };
    // What Stripe shows as refunded decides, never the numbers an event claims.
    let refunds = if kind == Kind::ChargeRefunded {
        match stripe.refunds_of(&pi).await {
            Ok(r) => Some(r),
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                let reason = format!("Stripe lists no refunds for PaymentIntent {pi}: {e}");
                return finish(pool, claim, InboxStatus::Unmatched, None, reason).await;
            }
        }
    } else {
        None
    };

    let mut tx = pool.begin().await?;
    let saga_id = match resolve_saga(&mut tx, &ev, &pi, current.as_ref()).await? {
        Resolved::Saga(id) => id,
        Resolved::NotYet(reason) => return Ok(Decision::Defer(reason)),
        Resolved::Unmatched(reason) => {
            return finish_in(tx, claim, InboxStatus::Unmatched, None, reason).await;
        }
    };
    let Some(saga) = stripe_inbox::lock_saga(&mut tx, saga_id).await? else {
        return finish_in(
            tx,
            claim,
            InboxStatus::Unmatched,
            None,
            format!("saga {saga_id} vanished"),
        )
        .await;
    };

    let mut new_events = Vec::new();
    let outcome = match kind {
        Kind::AuthorizationChanged | Kind::Canceled | Kind::Succeeded => {
            let Some(current) = current else {
                return Ok(Decision::Retry("no current PaymentIntent state".into()));
            };
            let wake = if current.status == PaymentIntentStatus::RequiresAction {
                // Still waiting for the customer: a woken saga would only park again.
                Wake::NotNeeded("the PaymentIntent still requires action".into())
            } else {
                wake_for(&mut tx, &saga, &pi).await?
            };
            let mut notes = match wake {
                Wake::Woken => vec!["woke the saga".to_owned()],
                Wake::NotYet => {
                    return Ok(Decision::Defer(
                        "the saga's authorize step is in flight and has not parked yet".into(),
                    ));
                }
                Wake::NotNeeded(why) => vec![why],
            };
            match (kind, &current.status) {
                (Kind::Succeeded, PaymentIntentStatus::Succeeded) => {
                    if stripe_inbox::has_event(
                        &mut tx,
                        saga.id,
                        "PaymentReceived",
                        "payment_intent_id",
                        &pi,
                    )
                    .await?
                    {
                        notes.push("payment already recorded".into());
                    } else {
                        new_events.push(Event::PaymentReceived {
                            payment_intent_id: pi.clone(),
                            amount: current.amount_received,
                            currency: current.currency.clone(),
                        });
                        notes.push("recorded PaymentReceived".into());
                    }
                }
                (Kind::Succeeded, other) => {
                    notes.push(format!(
                        "stale or early: PaymentIntent is {other}, not succeeded"
                    ));
                }
                (Kind::Canceled, PaymentIntentStatus::Canceled) => notes.push(format!(
                    "PaymentIntent canceled ({})",
                    current
                        .cancellation_reason
                        .as_deref()
                        .unwrap_or("no reason")
                )),
                _ => notes.push(format!("PaymentIntent is {}", current.status)),
            }
            notes.join("; ")
        }
        Kind::ChargeRefunded => {
            if saga.leased || saga.status == SagaStatus::Compensating {
                // Our own refund may not be recorded yet: a step is in flight, or the refund
                // compensation is pending (after a timed-out refund call whose effect happened,
                // its retry records it). Once the compensation is done, the delta is exact.
                return Ok(Decision::Defer(
                    "the saga is compensating; the refund may be ours".into(),
                ));
            }
            let Some(refunds) = refunds else {
                return Ok(Decision::Retry("no refund list from Stripe".into()));
            };
            // Pending refunds count, as in a charge's `amount_refunded`; failed or canceled
            // ones gave the money back to us.
            let counted: Vec<&RefundInfo> = refunds
                .iter()
                .filter(|r| r.payment_intent.as_deref() == Some(pi.as_str()))
                .filter(|r| matches!(r.status.as_str(), "succeeded" | "pending"))
                .collect();
            let cumulative: i64 = counted.iter().map(|r| r.amount).sum();
            let claimed = ev
                .int_field("amount_refunded")
                .map(|c| format!("; the event claimed {c}"))
                .unwrap_or_default();
            let recorded = stripe_inbox::refunded_recorded(&mut tx, saga.id, &pi).await?;
            let delta = cumulative - recorded;
            if delta > 0 {
                new_events.push(Event::PaymentRefunded {
                    payment_intent_id: pi.clone(),
                    // Newest first: the refund that brought the total up to date.
                    refund_id: counted.first().map(|r| r.id.clone()).unwrap_or_default(),
                    amount: delta,
                });
                format!(
                    "recorded a refund of {delta} (Stripe shows {cumulative} refunded{claimed})"
                )
            } else {
                format!(
                    "refunds already recorded ({recorded} of the {cumulative} Stripe shows refunded{claimed})"
                )
            }
        }
        Kind::DisputeCreated | Kind::DisputeClosed => {
            let dispute_id = ev.str_field("id").unwrap_or_default().to_owned();
            let (event_type, event) = if kind == Kind::DisputeCreated {
                (
                    "DisputeOpened",
                    Event::DisputeOpened {
                        dispute_id: dispute_id.clone(),
                        payment_intent_id: pi.clone(),
                        amount: ev.int_field("amount").unwrap_or(0),
                        currency: ev.str_field("currency").unwrap_or_default().to_owned(),
                        reason: ev.str_field("reason").unwrap_or("unknown").to_owned(),
                    },
                )
            } else {
                (
                    "DisputeClosed",
                    Event::DisputeClosed {
                        dispute_id: dispute_id.clone(),
                        payment_intent_id: pi.clone(),
                        status: ev.str_field("status").unwrap_or("unknown").to_owned(),
                    },
                )
            };
            if stripe_inbox::has_event(&mut tx, saga.id, event_type, "dispute_id", &dispute_id)
                .await?
            {
                format!("{event_type} {dispute_id} already recorded")
            } else {
                new_events.push(event);
                format!("recorded {event_type} {dispute_id}")
            }
        }
    };

    if !new_events.is_empty() {
        append(&mut tx, &saga, &ev.id, new_events).await?;
    }
    finish_in(tx, claim, InboxStatus::Processed, Some(saga.id), outcome).await
}

enum Resolved {
    Saga(SagaId),
    NotYet(String),
    Unmatched(String),
}

/// Which saga the PaymentIntent belongs to: our records decide; the `saga_id` metadata (as Stripe
/// returns it now, else as the payload says) only cross-checks them.
async fn resolve_saga(
    conn: &mut PgConnection,
    ev: &StripeEvent,
    pi: &str,
    current: Option<&PaymentIntentInfo>,
) -> Result<Resolved, sqlx::Error> {
    let metadata: Option<SagaId> = current
        .and_then(|p| p.metadata.get("saga_id").cloned())
        .or_else(|| {
            ev.object
                .get("metadata")
                .and_then(|m| m.get("saga_id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .and_then(|s| s.parse().ok());
    let ours = stripe_inbox::saga_for_payment_intent(conn, pi).await?;
    let named_status = match (ours, metadata) {
        (None, Some(m)) => stripe_inbox::saga_status(conn, m).await?,
        _ => None,
    };
    Ok(match (ours, metadata) {
        (Some(id), Some(m)) if id != m => Resolved::Unmatched(format!(
            "the saga_id metadata ({m}) disagrees with sagad's records ({id}) for PaymentIntent {pi}"
        )),
        (Some(id), _) => Resolved::Saga(id),
        // The webhook may beat the commit of the step that created the PaymentIntent: wait while
        // the saga can still record it. A finished saga never will (e.g. the card was declined).
        (None, Some(m)) => match named_status {
            Some(SagaStatus::Running | SagaStatus::Waiting | SagaStatus::Compensating) => {
                Resolved::NotYet(format!("saga {m} has not recorded PaymentIntent {pi} yet"))
            }
            Some(status) => Resolved::Unmatched(format!(
                "saga {m} is {status} and never recorded PaymentIntent {pi} (e.g. a declined card)"
            )),
            None => {
                Resolved::Unmatched(format!("no saga in sagad's records has PaymentIntent {pi}"))
            }
        },
        (None, _) => {
            Resolved::Unmatched(format!("no saga in sagad's records has PaymentIntent {pi}"))
        }
    })
}

enum Wake {
    Woken,
    /// The authorize step is running now and may park on a state read before this event.
    NotYet,
    NotNeeded(String),
}

async fn wake_for(
    conn: &mut PgConnection,
    saga: &SagaSnapshot,
    pi: &str,
) -> Result<Wake, sqlx::Error> {
    let key = payment_wait_key(pi);
    if saga.status == SagaStatus::Waiting && saga.wait_key.as_deref() == Some(key.as_str()) {
        // The row is ours (locked above), so this wakes exactly that saga.
        return Ok(match sagas::wake(conn, &key).await? {
            Some(_) => Wake::Woken,
            None => Wake::NotNeeded("the saga was no longer waiting".into()),
        });
    }
    let authorizing = saga.context.as_object().is_some_and(|steps| {
        steps.values().any(|out| {
            out.get("payment_intent_id").and_then(Value::as_str) == Some(pi)
                && out.get("pending").and_then(Value::as_bool) == Some(true)
        })
    });
    if authorizing
        && saga.leased
        && matches!(saga.status, SagaStatus::Running | SagaStatus::Compensating)
    {
        return Ok(Wake::NotYet);
    }
    Ok(Wake::NotNeeded(format!("the saga is {}", saga.status)))
}

/// Appends domain events to the saga's aggregate, caused by the Stripe event.
async fn append(
    conn: &mut PgConnection,
    saga: &SagaSnapshot,
    stripe_event_id: &str,
    new: Vec<Event>,
) -> Result<(), sqlx::Error> {
    let first = sagas::reserve_event_versions(conn, saga.id, new.len() as i32).await?;
    let batch: Vec<NewEvent> = new
        .into_iter()
        .map(|event| NewEvent {
            event,
            causation_id: Some(stripe_event_id.to_owned()),
            step: None,
            attempt: None,
            worker: None,
        })
        .collect();
    events::append(conn, &saga.saga_name, saga.id.0, first, &batch).await?;
    let events: Vec<&Event> = batch.iter().map(|e| &e.event).collect();
    bookings::apply(conn, saga.id, &events).await?;
    Ok(())
}

async fn finish(
    pool: &PgPool,
    claim: &Claim,
    status: InboxStatus,
    saga_id: Option<SagaId>,
    outcome: String,
) -> Result<Decision, Error> {
    let tx = pool.begin().await?;
    finish_in(tx, claim, status, saga_id, outcome).await
}

async fn finish_in(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    claim: &Claim,
    status: InboxStatus,
    saga_id: Option<SagaId>,
    outcome: String,
) -> Result<Decision, Error> {
    if !stripe_inbox::mark_finished(&mut tx, claim, status, saga_id, &outcome).await? {
        tx.rollback().await?;
        return Ok(Decision::ClaimLost);
    }
    tx.commit().await?;
    Ok(Decision::Finished {
        status,
        saga_id,
        outcome,
    })
}
