//! Remote action: tell the notification service (an email/SMS gateway) that a booking is confirmed.
//! The request is signed like every webhook sagad sends (Standard Webhooks), and its `webhook-id`
//! is stable across retries so the gateway can drop duplicates.

use serde_json::json;

use super::{Deps, StepCtx};
use crate::engine::outcome::{Outcome, RetryCause};
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
    // A change saga's notification says so (`params = { message_type = "booking.changed" }`).
    let message_type = ctx
        .step
        .params
        .get("message_type")
        .and_then(|v| v.as_str())
        .unwrap_or("booking.confirmed");
    let body = json!({
        "type": message_type,
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
    let timestamp = ctx.now.timestamp();
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
        Ok(resp) => answered(
            resp.status().as_u16(),
            resp.headers(),
            deps.clock.local_now(),
        ),
        Err(e) => {
            let cause = if e.is_connect() {
                RetryCause::Unreachable
            } else {
                RetryCause::Unavailable
            };
            Outcome::unavailable(
                format!("notification service unreachable: {e}"),
                false,
                cause,
            )
        }
    }
}

/// A gateway's answer other than 2xx. Overloaded, timed out or failing (408, 425, 429, 5xx):
/// retried, no sooner than its `Retry-After` (the step's `max_delay` still bounds the wait). Any
/// other status (400, 401, 404, 422 …, or a redirect, which is not followed) says the request
/// itself is refused, which retrying cannot change: the step fails for good.
/// `now`: this machine's wall clock, for a `Retry-After` date (on the gateway's clock).
fn answered(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    now: chrono::DateTime<chrono::Utc>,
) -> Outcome {
    let error = format!("notification service answered HTTP {status}");
    if matches!(status, 408 | 425 | 429 | 500..=599) {
        return Outcome::Retry {
            error,
            effect_possible: false,
            min_delay: crate::outbound::retry::retry_after_of(headers, now),
            cause: RetryCause::Unavailable,
        };
    }
    Outcome::fail(error, false)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::*;

    #[test]
    fn overload_and_server_errors_are_retried_no_sooner_than_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("20"));
        for status in [408, 425, 429, 500, 503] {
            let Outcome::Retry { min_delay, .. } = answered(status, &headers, crate::clock::wall())
            else {
                panic!("HTTP {status} is retried");
            };
            assert_eq!(min_delay, Some(Duration::from_secs(20)), "HTTP {status}");
        }
        let Outcome::Retry { min_delay, .. } =
            answered(502, &HeaderMap::new(), crate::clock::wall())
        else {
            panic!("HTTP 502 is retried");
        };
        assert_eq!(
            min_delay, None,
            "no Retry-After, the policy's backoff alone"
        );
    }

    #[test]
    fn a_refused_request_fails_for_good() {
        for status in [301, 400, 401, 403, 404, 410, 422] {
            let outcome = answered(status, &HeaderMap::new(), crate::clock::wall());
            assert_eq!(
                outcome,
                Outcome::fail(
                    format!("notification service answered HTTP {status}"),
                    false
                ),
                "HTTP {status}"
            );
        }
    }
}
