//! `POST /webhooks/stripe`: verify the `Stripe-Signature` on the raw body, store the event in the
//! inbox (keyed by Stripe's event id) and answer 200 once it is committed. Nothing is processed
//! here; the inbox workers do that. Mounted outside bearer auth: the signature is the credential.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::inbound::stripe::event::{StripeEvent, replace_nul};
use crate::inbound::stripe::{self as inbound, BODY_LIMIT};
use crate::store::stripe_inbox::{self, InboxStatus, NewStripeEvent};

pub fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/stripe", post(receive))
}

fn refuse(reason: impl Into<String>) -> ApiError {
    inbound::count("unknown", "rejected");
    ApiError::BadRequest(reason.into())
}

async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request<Body>,
) -> Result<Json<Value>, ApiError> {
    let Some(verifier) = state.stripe_signatures.as_deref() else {
        return Err(ApiError::NotFound("stripe webhook endpoint"));
    };
    // The header first (its size, entries and timestamp: no HMAC yet), then a bounded body.
    let header = headers
        .get("stripe-signature")
        .map(|v| {
            v.to_str()
                .map_err(|_| refuse("malformed Stripe-Signature header"))
        })
        .transpose()?;
    // Stripe signs with its own clock: the tolerance compares it with this machine's wall clock,
    // the one its own time service keeps near Stripe's (not the database's, which only orders
    // sagad's own writes).
    let signed = verifier
        .check_header(header, state.clock.local_now().timestamp())
        .map_err(|e| refuse(e.to_string()))?;
    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| {
            // Over the limit (a client that hangs up reads no answer).
            inbound::count("unknown", "rejected");
            ApiError::PayloadTooLarge(BODY_LIMIT)
        })?;
    verifier
        .check_body(&signed, &body)
        .map_err(|e| refuse(e.to_string()))?;
    // A verified event is Stripe's and is kept even where PostgreSQL cannot hold it as sent: a
    // NUL character is stored as U+FFFD in the payload, beside the exact body.
    let mut payload: Value =
        serde_json::from_slice(&body).map_err(|e| refuse(format!("body is not JSON: {e}")))?;
    let had_nul = replace_nul(&mut payload);
    let event = StripeEvent::from_value(&payload).map_err(|e| refuse(e.to_string()))?;
    let handled = event.kind().is_some();
    let pi = event.payment_intent_id();
    let inserted = stripe_inbox::insert(
        &state.pool,
        &NewStripeEvent {
            id: &event.id,
            event_type: &event.event_type,
            livemode: event.livemode,
            api_version: event.api_version.as_deref(),
            stripe_created: event.created,
            payment_intent_id: pi.as_deref(),
            payload: &payload,
            status: if handled {
                InboxStatus::Pending
            } else {
                InboxStatus::Ignored
            },
            outcome: (!handled).then_some("event type not handled"),
            raw_body: had_nul.then_some(&body[..]),
        },
    )
    .await?;
    inbound::count(
        &event.event_type,
        if inserted { "received" } else { "duplicate" },
    );
    tracing::info!(event_id = %event.id, event_type = %event.event_type, duplicate = !inserted, "stripe event stored");
    Ok(Json(json!({ "received": true, "duplicate": !inserted })))
}
