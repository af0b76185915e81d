//! Remote action: tell the notification service (an email/SMS gateway) that a booking is confirmed.
//! The request is signed like every webhook sagad sends (Standard Webhooks), and its `webhook-id`
//! is stable across retries so the gateway can drop duplicates.

use serde_json::json;

use super::{Deps, StepCtx};
use crate::engine::outcome::Outcome;
use crate::events::Event;

#[derive(Clone, Debug)]
pub struct NotifyConfig {
    pub url: reqwest::Url,
    /// Signing secrets (`whsec_…` or raw); every one signs.
    pub secrets: Vec<Vec<u8>>,
}

pub async fn send(deps: &Deps, ctx: &StepCtx<'_>) -> Outcome {
    let Some(cfg) = &deps.notify else {
        return Outcome::done(
            json!({ "delivered": false, "reason": "SAGAD_NOTIFY_URL is not configured" }),
            vec![],
        );
    };
    let b = ctx.input;
    let code = ctx
        .output_of_action("booking.confirm")
        .and_then(|o| o.get("confirmation_code"))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let body = json!({
        "type": "booking.confirmed",
        "saga_id": ctx.saga_id,
        "booking": {
            "listing_id": b.listing_id, "guest_id": b.guest_id,
            "check_in": b.check_in, "check_out": b.check_out,
            "amount": b.amount, "currency": b.currency,
            "confirmation_code": code,
        }
    });
    let body = body.to_string().into_bytes();
    let msg_id = format!("notify_{}", ctx.saga_id);
    let timestamp = chrono::Utc::now().timestamp();
    let mut req = deps
        .http
        .post(cfg.url.clone())
        .header("content-type", "application/json")
        .timeout(ctx.step.timeout.mul_f64(0.8));
    for (name, value) in crate::signing::headers(&cfg.secrets, &msg_id, timestamp, &body) {
        req = req.header(name, value);
    }
    match req.body(body).send().await {
        Ok(resp) if resp.status().is_success() => Outcome::done(
            json!({ "delivered": true, "status": resp.status().as_u16() }),
            vec![Event::NotificationSent {
                status_code: resp.status().as_u16(),
            }],
        ),
        Ok(resp) => Outcome::retry(
            format!(
                "notification service answered HTTP {}",
                resp.status().as_u16()
            ),
            false,
        ),
        Err(e) => Outcome::retry(format!("notification service unreachable: {e}"), false),
    }
}
