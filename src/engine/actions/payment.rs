//! Remote actions on Stripe: authorize (manual capture), void, capture, refund.
//! Every mutating call carries an idempotency key derived from the saga id and the effect, so a
//! retry after a lost response replays Stripe's answer instead of charging twice.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::StepCtx;
use crate::engine::outcome::{Outcome, RetryCause};
use crate::events::Event;
use crate::stripe::client::{
    AuthorizeRequest, Error as StripeError, PaymentIntentInfo, PaymentIntentStatus, StripeClient,
};

/// How long a saga waits for 3-D Secure when the step sets no `action_deadline`.
pub const DEFAULT_ACTION_DEADLINE: Duration = Duration::from_secs(10 * 60);

const UNEXPECTED_STATE: &str = "payment_intent_unexpected_state";

/// The wait key a saga parks on while its PaymentIntent needs the guest's action.
pub fn wait_key(payment_intent: &str) -> String {
    format!("stripe:payment_intent:{payment_intent}")
}

fn authorize_request(ctx: &StepCtx<'_>) -> AuthorizeRequest {
    let b = ctx.input;
    AuthorizeRequest {
        amount: b.to_charge(),
        currency: b.currency.clone(),
        payment_method: b.payment_method.clone(),
        metadata: vec![
            ("saga_id".to_owned(), ctx.saga_id.to_string()),
            ("listing_id".to_owned(), b.listing_id.clone()),
            ("guest_id".to_owned(), b.guest_id.clone()),
        ],
        description: Some(format!(
            "Booking {} {}..{}",
            b.listing_id, b.check_in, b.check_out
        )),
    }
}

/// The PaymentIntent this saga's authorize step created, if it recorded one.
fn payment_intent_id(ctx: &StepCtx<'_>) -> Option<String> {
    ctx.output_of_action("payment.authorize")
        .and_then(|o| o.get("payment_intent_id"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// When the inventory hold taken earlier in the saga expires, if it recorded one.
fn hold_expiry(ctx: &StepCtx<'_>) -> Option<chrono::DateTime<Utc>> {
    ctx.output_of_action("inventory.hold")
        .and_then(|o| o.get("expires_at"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

pub(super) fn transient_or_fail(err: StripeError, what: &str) -> Outcome {
    if err.is_transient() {
        let cause = match &err {
            StripeError::Unreachable(_) => RetryCause::Unreachable,
            // Another request with the same key is under way: Stripe answered.
            StripeError::Transient(m) if m.starts_with("HTTP 409") => RetryCause::Other,
            _ => RetryCause::Unavailable,
        };
        Outcome::unavailable(format!("{what}: {err}"), true, cause)
    } else {
        Outcome::fail(format!("{what} refused by Stripe: {err}"), false)
    }
}

/// Nothing to charge (a change that does not raise the price): the payment steps do nothing.
fn nothing_to_charge(ctx: &StepCtx<'_>) -> Option<Outcome> {
    (ctx.input.to_charge() == 0).then(|| Outcome::done(json!({ "charged": false }), vec![]))
}

pub async fn authorize(stripe: &StripeClient, ctx: &StepCtx<'_>) -> Outcome {
    if let Some(nothing) = nothing_to_charge(ctx) {
        return nothing;
    }
    let own = ctx.output_of(&ctx.step.name);
    let existing = own
        .and_then(|o| o.get("payment_intent_id"))
        .and_then(|v| v.as_str());
    // After a wait, decide by the PaymentIntent's current state, never by what woke us.
    let result = match existing {
        Some(id) => stripe.retrieve(id).await,
        None => {
            stripe
                .authorize(&authorize_request(ctx), &ctx.idempotency_key("authorize"))
                .await
        }
    };
    let pi = match result {
        Ok(pi) => pi,
        Err(StripeError::CardDeclined {
            code, decline_code, ..
        }) => {
            return Outcome::fail(
                format!("card_declined: {}", decline_code.unwrap_or(code)),
                false,
            );
        }
        Err(e) => return transient_or_fail(e, "authorize"),
    };
    match pi.status {
        PaymentIntentStatus::RequiresCapture | PaymentIntentStatus::Succeeded => Outcome::done(
            json!({ "payment_intent_id": pi.id, "amount": pi.amount, "currency": pi.currency }),
            vec![Event::PaymentAuthorized {
                payment_intent_id: pi.id,
                amount: pi.amount,
                currency: pi.currency,
            }],
        ),
        PaymentIntentStatus::RequiresAction => {
            let recorded_deadline = own
                .and_then(|o| o.get("action_deadline"))
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            let deadline = recorded_deadline.unwrap_or_else(|| {
                let wanted = ctx.now
                    + chrono::Duration::from_std(
                        ctx.duration_param("action_deadline", DEFAULT_ACTION_DEADLINE),
                    )
                    .unwrap_or_else(|_| chrono::Duration::minutes(10));
                // Never wait past the inventory hold: the guest would authenticate for nothing.
                hold_expiry(ctx).map_or(wanted, |h| wanted.min(h))
            });
            if ctx.now >= deadline {
                // The guest never completed 3-D Secure: the PaymentIntent exists and must be voided.
                return Outcome::fail("authentication_timeout", true);
            }
            let events = if recorded_deadline.is_none() {
                vec![Event::PaymentActionRequired {
                    payment_intent_id: pi.id.clone(),
                    deadline,
                }]
            } else {
                vec![]
            };
            Outcome::Wait {
                output: json!({ "payment_intent_id": pi.id, "action_deadline": deadline, "pending": true }),
                key: wait_key(&pi.id),
                deadline,
                events,
            }
        }
        PaymentIntentStatus::RequiresPaymentMethod => Outcome::fail(
            "payment_failed: authentication failed or card declined",
            true,
        ),
        PaymentIntentStatus::Canceled => Outcome::fail(
            format!(
                "payment_canceled: {}",
                pi.cancellation_reason.as_deref().unwrap_or("unknown")
            ),
            false,
        ),
        PaymentIntentStatus::Processing
        | PaymentIntentStatus::RequiresConfirmation
        | PaymentIntentStatus::Unknown(_) => {
            Outcome::retry(format!("payment intent {} is {:?}", pi.id, pi.status), true)
        }
    }
}

pub async fn void(stripe: &StripeClient, ctx: &StepCtx<'_>) -> Outcome {
    if let Some(nothing) = nothing_to_charge(ctx) {
        return nothing;
    }
    let pi_id = match payment_intent_id(ctx) {
        Some(id) => id,
        // The authorization may have happened without us seeing the answer: replaying the very same
        // request with the same idempotency key returns the PaymentIntent Stripe created, if any.
        None => match stripe
            .authorize(&authorize_request(ctx), &ctx.idempotency_key("authorize"))
            .await
        {
            Ok(pi) => pi.id,
            Err(StripeError::CardDeclined { .. }) => return Outcome::done(json!({}), vec![]),
            Err(e) => return transient_or_fail(e, "look up the authorization to void"),
        },
    };
    match stripe.cancel(&pi_id, &ctx.idempotency_key("void")).await {
        Ok(pi) if pi.status == PaymentIntentStatus::Canceled => Outcome::done(
            json!({ "payment_intent_id": pi.id, "voided": true }),
            vec![Event::PaymentVoided {
                payment_intent_id: pi.id,
            }],
        ),
        Ok(pi) => settle_unvoidable(pi),
        Err(e) if e.code() == Some(UNEXPECTED_STATE) => match stripe.retrieve(&pi_id).await {
            Ok(pi) => settle_unvoidable(pi),
            Err(e) => transient_or_fail(e, "retrieve the payment to void"),
        },
        Err(e) => transient_or_fail(e, "void"),
    }
}

/// A PaymentIntent that cancel did not (or could not) cancel: already cancelled (e.g. the
/// authorization expired) or captured (the refund compensation gives that money back).
fn settle_unvoidable(pi: PaymentIntentInfo) -> Outcome {
    match pi.status {
        PaymentIntentStatus::Canceled | PaymentIntentStatus::Succeeded => Outcome::done(
            json!({ "payment_intent_id": pi.id, "voided": false, "status": format!("{:?}", pi.status) }),
            vec![],
        ),
        other => Outcome::retry(
            format!("payment intent {} is {other:?}, cannot void yet", pi.id),
            true,
        ),
    }
}

pub async fn capture(stripe: &StripeClient, ctx: &StepCtx<'_>) -> Outcome {
    if let Some(nothing) = nothing_to_charge(ctx) {
        return nothing;
    }
    let Some(pi_id) = payment_intent_id(ctx) else {
        return Outcome::fail("no authorized payment to capture", false);
    };
    let result = match stripe
        .capture(&pi_id, &ctx.idempotency_key("capture"))
        .await
    {
        Err(e) if e.code() == Some(UNEXPECTED_STATE) => stripe.retrieve(&pi_id).await,
        other => other,
    };
    match result {
        Ok(pi) if pi.status == PaymentIntentStatus::Succeeded => Outcome::done(
            json!({ "payment_intent_id": pi.id, "amount": pi.amount_received, "captured": true }),
            vec![Event::PaymentCaptured {
                payment_intent_id: pi.id,
                amount: pi.amount_received,
                currency: pi.currency,
            }],
        ),
        Ok(pi) if pi.status == PaymentIntentStatus::Canceled => Outcome::fail(
            format!(
                "authorization_canceled: {}",
                pi.cancellation_reason.as_deref().unwrap_or("unknown")
            ),
            false,
        ),
        Ok(pi) => Outcome::fail(
            format!(
                "payment intent {} is {:?}, cannot capture",
                pi.id, pi.status
            ),
            false,
        ),
        Err(e) => transient_or_fail(e, "capture"),
    }
}

pub async fn refund(stripe: &StripeClient, ctx: &StepCtx<'_>) -> Outcome {
    let Some(pi_id) = payment_intent_id(ctx) else {
        return Outcome::done(json!({}), vec![]);
    };
    let mut captured = ctx.captured();
    if captured == 0 {
        // The capture's answer was lost: only a captured payment has money to give back.
        match stripe.retrieve(&pi_id).await {
            Ok(pi) if pi.status != PaymentIntentStatus::Succeeded => {
                return Outcome::done(json!({ "refunded": false }), vec![]);
            }
            Ok(pi) => captured = pi.amount_received,
            Err(e) => return transient_or_fail(e, "retrieve the payment to refund"),
        }
    }
    // A cancellation refunds its share of the price, never more than was captured; sagad undoing
    // a failed booking refunds everything.
    let due = ctx
        .cancellation
        .map_or(captured, |c| c.refund_due(ctx.input.amount, captured));
    if due == 0 {
        return Outcome::done(
            json!({ "refunded": false, "amount": 0, "rule": ctx.cancellation.map(|c| &c.rule) }),
            vec![],
        );
    }
    let key = ctx.idempotency_key("refund");
    let result = if due >= captured {
        stripe.refund(&pi_id, &key).await
    } else {
        stripe.refund_amount(&pi_id, due, &key).await
    };
    match result {
        Ok(r) => Outcome::done(
            json!({ "refund_id": r.id, "amount": r.amount, "refunded": true }),
            vec![Event::PaymentRefunded {
                payment_intent_id: pi_id,
                refund_id: r.id,
                amount: r.amount,
            }],
        ),
        Err(e) if e.code() == Some("charge_already_refunded") => Outcome::done(
            json!({ "refunded": false, "already_refunded": true }),
            vec![],
        ),
        Err(e) => transient_or_fail(e, "refund"),
    }
}
