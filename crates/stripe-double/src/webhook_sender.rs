//! The double's webhook sender: it turns the events the ledger records (3-D Secure completed or
//! failed, authorization expired or voided, capture, refund) and the disputes opened through the
//! control API into Stripe-shaped events, and POSTs them to a configured endpoint signed exactly
//! as Stripe signs them (`Stripe-Signature: t=…,v1=…`). Deliveries can be duplicated, delayed and
//! reordered, to show that the receiver copes with what Stripe does not guarantee.
//!
//! Control routes: `GET/POST/DELETE /_double/webhooks` (a [`WebhookTarget`] as JSON),
//! `POST /_double/disputes` (`{"payment_intent": "pi_…", "reason": "fraudulent"}`) and
//! `POST /_double/disputes/{id}/close` (`{"status": "won"}`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::validate::{new_id, now};
use super::{DoubleError, LedgerEvent, Shared};
use crate::signature;

/// The API version stamped on events (the one async-stripe pins).
pub const API_VERSION: &str = "2026-09-30.endive";

/// Where and how the double delivers webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTarget {
    /// The receiving endpoint, e.g. `http://127.0.0.1:8080/webhooks/stripe`.
    pub url: String,
    /// Endpoint secrets; each adds a `v1` signature (as Stripe does while a secret rolls).
    pub secrets: Vec<String>,
    /// Extra copies of every delivery, sent concurrently.
    #[serde(default)]
    pub duplicate: u32,
    /// Wait this long before each delivery.
    #[serde(default)]
    pub delay_ms: u64,
    /// Deliver each batch of events newest first.
    #[serde(default)]
    pub reorder: bool,
    /// Deliver only these event types (empty: all).
    #[serde(default)]
    pub types: Vec<String>,
}

/// One HTTP delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// HTTP status, or 0 when the connection failed.
    pub status: u16,
    pub attempt: u32,
}

#[derive(Debug, Default)]
pub(super) struct WebhookState {
    config: Option<WebhookTarget>,
    /// Ledger events already looked at.
    cursor: usize,
    /// Events made outside the ledger (disputes), waiting to be sent.
    extra: Vec<Value>,
    disputes: HashMap<String, Value>,
    deliveries: Vec<DeliveryRecord>,
}

/// A Stripe event envelope around `object`.
pub fn envelope(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": kind,
    })
}

impl Shared {
    /// The ledger's record as Stripe would send it. `charge.refunded` carries a Charge (the
    /// ledger snapshots the PaymentIntent), with the cumulative `amount_refunded`.
    fn stripe_event(&self, rec: &LedgerEvent, amount_refunded: impl Fn(&str) -> i64) -> Value {
        let object = if rec.kind == "charge.refunded" {
            let pi = &rec.object;
            let pi_id = pi["id"].as_str().unwrap_or_default();
            let refunded = amount_refunded(pi_id);
            json!({
                "id": pi["latest_charge"],
                "object": "charge",
                "amount": pi["amount"],
                "amount_captured": pi["amount_received"],
                "amount_refunded": refunded,
                "captured": true,
                "currency": pi["currency"],
                "livemode": false,
                "metadata": pi["metadata"],
                "paid": true,
                "payment_intent": pi_id,
                "refunded": Some(refunded) == pi["amount_received"].as_i64(),
                "status": "succeeded",
            })
        } else {
            rec.object.clone()
        };
        envelope(&rec.id, &rec.kind, rec.created, object)
    }

    /// Takes the events not sent yet, in the order to send them, with the config to use.
    fn take_batch(&self) -> Option<(WebhookTarget, Vec<Value>)> {
        let mut inner = self.lock();
        let total = inner.ledger.event_count();
        let Some(config) = inner.webhooks.config.clone() else {
            // Nobody listens: skip what happened meanwhile, cheaply.
            inner.webhooks.cursor = total;
            inner.webhooks.extra.clear();
            return None;
        };
        if inner.webhooks.cursor >= total && inner.webhooks.extra.is_empty() {
            return None;
        }
        let fresh = inner.ledger.events_since(inner.webhooks.cursor);
        inner.webhooks.cursor = total;
        let extra = std::mem::take(&mut inner.webhooks.extra);
        let refunded = |pi: &str| inner.ledger.amount_refunded(pi);
        let mut batch: Vec<Value> = fresh
            .iter()
            .map(|r| self.stripe_event(r, refunded))
            .chain(extra)
            .filter(|e| {
                config.types.is_empty()
                    || config
                        .types
                        .iter()
                        .any(|t| Some(t.as_str()) == e["type"].as_str())
            })
            .collect();
        if config.reorder {
            batch.reverse();
        }
        Some((config, batch))
    }

    fn record_delivery(&self, d: DeliveryRecord) {
        self.lock().webhooks.deliveries.push(d);
    }
}

/// Delivers events until `stop`: checks for new ones every few milliseconds.
pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some((config, batch)) = shared.take_batch() else {
            continue;
        };
        for (i, event) in batch.into_iter().enumerate() {
            for _copy in 0..=config.duplicate {
                let (shared, http, config, event) =
                    (shared.clone(), http.clone(), config.clone(), event.clone());
                // Reordered batches keep their order on the wire: later ones leave a little later.
                let stagger = Duration::from_millis(5 * i as u64);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(config.delay_ms) + stagger).await;
                    deliver(&shared, &http, &config, &event).await;
                });
            }
        }
    }
}

/// POSTs one event, retrying a few times on failure as Stripe does (much faster here).
async fn deliver(shared: &Shared, http: &reqwest::Client, config: &WebhookTarget, event: &Value) {
    let body = event.to_string();
    for attempt in 1..=5u32 {
        let status = send(http, &config.url, &config.secrets, body.as_bytes()).await;
        shared.record_delivery(DeliveryRecord {
            event_id: event["id"].as_str().unwrap_or_default().to_owned(),
            kind: event["type"].as_str().unwrap_or_default().to_owned(),
            status,
            attempt,
        });
        if (200..300).contains(&status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
}

/// One signed POST; the HTTP status, or 0 when no answer came.
pub async fn send(http: &reqwest::Client, url: &str, secrets: &[String], body: &[u8]) -> u16 {
    let header = signature::header_value(secrets, now(), body);
    match http
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .header("stripe-signature", header)
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(e) => {
            tracing::debug!(error = %e, "stripe double: webhook delivery failed");
            0
        }
    }
}

impl super::StripeDouble {
    /// Starts (or changes) webhook delivery. Only events that happen from now on are sent.
    pub fn configure_webhooks(&self, config: WebhookTarget) {
        let mut inner = self.shared.lock();
        inner.webhooks.cursor = inner.ledger.events().len();
        inner.webhooks.config = Some(config);
    }

    /// Stops webhook delivery.
    pub fn disable_webhooks(&self) {
        self.shared.lock().webhooks.config = None;
    }

    /// Every delivery attempt so far.
    pub fn webhook_deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.lock().webhooks.deliveries.clone()
    }

    /// The ledger's events as Stripe would send them, oldest first (for tests that deliver by hand).
    pub fn stripe_events(&self) -> Vec<Value> {
        let inner = self.shared.lock();
        let records = inner.ledger.records();
        let refunded = |pi: &str| {
            records
                .iter()
                .find(|r| r.id == pi)
                .map_or(0, |r| r.amount_refunded)
        };
        inner
            .ledger
            .events()
            .iter()
            .map(|r| self.shared.stripe_event(r, refunded))
            .collect()
    }

    /// Signs `event` like Stripe and POSTs it to the configured endpoint now; the HTTP status.
    pub async fn send_webhook(&self, event: &Value) -> Result<u16, DoubleError> {
        let config = self
            .shared
            .lock()
            .webhooks
            .config
            .clone()
            .ok_or_else(|| DoubleError {
                code: None,
                message: "webhooks are not configured".to_owned(),
            })?;
        let body = event.to_string();
        Ok(send(
            &reqwest::Client::new(),
            &config.url,
            &config.secrets,
            body.as_bytes(),
        )
        .await)
    }

    /// The cardholder disputes the captured payment: `charge.dispute.created`. Returns `dp_…`.
    pub fn open_dispute(&self, payment_intent: &str, reason: &str) -> Result<String, DoubleError> {
        open_dispute(&self.shared, payment_intent, reason)
    }

    /// The dispute is decided (`won`, `lost`…): `charge.dispute.closed`.
    pub fn close_dispute(&self, dispute: &str, status: &str) -> Result<(), DoubleError> {
        close_dispute(&self.shared, dispute, status)
    }
}

fn open_dispute(
    shared: &Shared,
    payment_intent: &str,
    reason: &str,
) -> Result<String, DoubleError> {
    let mut inner = shared.lock();
    let pi = inner
        .ledger
        .records()
        .into_iter()
        .find(|p| p.id == payment_intent && p.status == "succeeded")
        .ok_or_else(|| DoubleError {
            code: Some("resource_missing".to_owned()),
            message: format!("No captured payment_intent '{payment_intent}' to dispute"),
        })?;
    let id = new_id("dp");
    let dispute = json!({
        "id": id,
        "object": "dispute",
        "amount": pi.amount_received,
        "charge": pi.latest_charge,
        "created": now(),
        "currency": pi.currency,
        "livemode": false,
        "metadata": {},
        "payment_intent": pi.id,
        "reason": reason,
        "status": "needs_response",
    });
    inner.webhooks.disputes.insert(id.clone(), dispute.clone());
    let event = envelope(&new_id("evt"), "charge.dispute.created", now(), dispute);
    inner.webhooks.extra.push(event);
    Ok(id)
}

fn close_dispute(shared: &Shared, dispute: &str, status: &str) -> Result<(), DoubleError> {
    let mut inner = shared.lock();
    let object = inner
        .webhooks
        .disputes
        .get_mut(dispute)
        .ok_or_else(|| DoubleError {
            code: Some("resource_missing".to_owned()),
            message: format!("No such dispute: '{dispute}'"),
        })?;
    object["status"] = json!(status);
    let object = object.clone();
    let event = envelope(&new_id("evt"), "charge.dispute.closed", now(), object);
    inner.webhooks.extra.push(event);
    Ok(())
}

pub(super) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/_double/webhooks",
            post(configure).get(show).delete(disable),
        )
        .route("/_double/disputes", post(dispute))
        .route("/_double/disputes/{id}/close", post(close))
        .with_state(shared)
}

async fn configure(State(s): State<Arc<Shared>>, Json(config): Json<WebhookTarget>) -> Response {
    let mut inner = s.lock();
    inner.webhooks.cursor = inner.ledger.events().len();
    inner.webhooks.config = Some(config.clone());
    Json(json!({ "config": config })).into_response()
}

async fn show(State(s): State<Arc<Shared>>) -> Response {
    let inner = s.lock();
    Json(json!({ "config": inner.webhooks.config, "deliveries": inner.webhooks.deliveries }))
        .into_response()
}

async fn disable(State(s): State<Arc<Shared>>) -> Response {
    s.lock().webhooks.config = None;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct DisputeRequest {
    payment_intent: String,
    #[serde(default = "default_reason")]
    reason: String,
}

fn default_reason() -> String {
    "fraudulent".to_owned()
}

#[derive(Deserialize)]
struct CloseRequest {
    status: String,
}

fn control_error(e: DoubleError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": { "code": e.code, "message": e.message } })),
    )
        .into_response()
}

async fn dispute(State(s): State<Arc<Shared>>, Json(req): Json<DisputeRequest>) -> Response {
    match open_dispute(&s, &req.payment_intent, &req.reason) {
        Ok(id) => Json(json!({ "id": id })).into_response(),
        Err(e) => control_error(e),
    }
}

async fn close(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(req): Json<CloseRequest>,
) -> Response {
    match close_dispute(&s, &id, &req.status) {
        Ok(()) => Json(json!({ "id": id, "status": req.status })).into_response(),
        Err(e) => control_error(e),
    }
}
