//! A stateful, Stripe-compatible test double: PaymentIntents (manual and automatic capture,
//! test cards, 3-D Secure), refunds, idempotent replay, and fault injection.
//!
//! It speaks Stripe's HTTP API closely enough for the real async-stripe client to run
//! against it unchanged (`STRIPE_API_BASE` = [`StripeDouble::base_url`]). Tests drive and
//! inspect it through [`StripeDouble`]; standalone users through the `/_double/…` routes:
//!
//! - `POST /_double/faults` (a [`Fault`] as JSON), `GET` lists, `DELETE` clears them
//! - `GET /_double/payment_intents`, `/_double/counters`, `/_double/requests`, `/_double/events`
//! - `GET /_double/attempts` (`?payment_intent=pi_…` for one PaymentIntent): every capture, cancel
//!   and refund request with its idempotency key, performed, replayed, refused or failed
//! - `POST /_double/payment_intents/{id}/authenticate`, `…/fail_authentication`,
//!   `…/expire_authorization`
//! - `GET/POST/DELETE /_double/webhooks`, `POST /_double/disputes`, `…/disputes/{id}/close`:
//!   signed webhooks to sagad (see `webhook_sender`)
//!
//! It depends on nothing of sagad: it is Stripe's side of the wire, for sagad's tests, its
//! benchmark, `sagad demo`, `sagad serve --dev` and `sagad stripe-double`.

mod cards;
mod faults;
mod form;
mod idempotency;
mod model;
mod render;
mod server;
pub mod signature;
mod state;
mod validate;
mod webhook_sender;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use faults::{Fault, FaultKind, Operation};
pub use state::{Counters, Effects, LedgerEvent, PaymentIntentRecord};
pub use webhook_sender::{DeliveryRecord, WebhookTarget, envelope};

use faults::Faults;
use idempotency::IdempotencyStore;
use state::Ledger;

/// One request the double answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// `None` for requests to unknown routes.
    pub operation: Option<Operation>,
    /// The PaymentIntent the request is about: the path's id, a refund's `payment_intent` (or the
    /// owner of its `charge`), the one a create made (also when its card was declined). `None`
    /// when the request names none the double could read (e.g. a create that failed before it).
    pub payment_intent: Option<String>,
    pub idempotency_key: Option<String>,
    /// The HTTP status sent (for a lost response: the status whose body was cut off).
    pub status: u16,
    /// Whether the response was replayed from the idempotency store.
    pub replayed: bool,
    /// The injected faults that applied, if any.
    pub fault: Option<String>,
    pub request_id: String,
    /// The form body as received (a GET's query string), byte for byte (as UTF-8, lossily).
    pub body: String,
}

/// One capture, cancel or refund request for a PaymentIntent, whatever became of it: what a
/// client *tried*, where [`Effects`] counts only what happened. A second capture that Stripe's
/// state rules refuse leaves the effects unchanged but is one more attempt here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub payment_intent: String,
    /// [`Operation::Capture`], [`Operation::Cancel`] or [`Operation::Refund`].
    pub operation: Operation,
    pub idempotency_key: Option<String>,
    pub outcome: AttemptOutcome,
    /// The HTTP status sent (for a lost response: the status whose body was cut off).
    pub status: u16,
    /// The injected faults that applied, if any.
    pub fault: Option<String>,
    pub request_id: String,
}

/// What the double did with an [`Attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Executed and answered 2xx (the answer may still have been lost on the way).
    Performed,
    /// Answered from the idempotency store: nothing executed.
    Replayed,
    /// Answered 4xx: Stripe's rules refused it (wrong state, already refunded, bad key…).
    Refused,
    /// Answered 5xx (an injected server error): nothing executed.
    Failed,
}

impl Attempt {
    /// The effect attempts among the request log, in completion order.
    fn from_request(r: &RequestRecord) -> Option<Self> {
        let operation = r.operation?;
        if !matches!(
            operation,
            Operation::Capture | Operation::Cancel | Operation::Refund
        ) {
            return None;
        }
        let outcome = if r.replayed {
            AttemptOutcome::Replayed
        } else if (200..300).contains(&r.status) {
            AttemptOutcome::Performed
        } else if r.status >= 500 {
            AttemptOutcome::Failed
        } else {
            AttemptOutcome::Refused
        };
        Some(Self {
            payment_intent: r.payment_intent.clone()?,
            operation,
            idempotency_key: r.idempotency_key.clone(),
            outcome,
            status: r.status,
            fault: r.fault.clone(),
            request_id: r.request_id.clone(),
        })
    }
}

/// A control action on the double was refused (unknown PaymentIntent, wrong state).
#[derive(Debug, thiserror::Error)]
#[error("stripe double: {message}")]
pub struct DoubleError {
    pub code: Option<String>,
    pub message: String,
}

#[derive(Debug, Default)]
struct Inner {
    ledger: Ledger,
    idempotency: IdempotencyStore,
    faults: Faults,
    requests: Vec<RequestRecord>,
    webhooks: webhook_sender::WebhookState,
}

/// State shared by the handlers and the handle. Never locked across an await.
#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// TCP connections accepted, to see whether clients reuse them.
    connections: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running double. Dropping it stops the server.
#[derive(Debug)]
pub struct StripeDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    /// Stops the webhook sender.
    sender: tokio_util::sync::CancellationToken,
}

impl StripeDouble {
    /// Serves the double on `listener` from a background task.
    pub async fn start(listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = oneshot::channel::<()>();
        let app = server::router(shared.clone()).merge(webhook_sender::routes(shared.clone()));
        let sender = tokio_util::sync::CancellationToken::new();
        tokio::spawn(webhook_sender::run(shared.clone(), sender.clone()));
        let shared_conns = shared.clone();
        tokio::spawn(async move {
            let shutdown = async {
                // Resolves on an explicit stop and when the handle is dropped.
                let _ = rx.await;
            };
            let counted = shared_conns.clone();
            let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
                counted
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %err, "stripe double server failed");
            }
        });
        Ok(Self {
            shared,
            addr,
            shutdown: Some(tx),
            sender,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What to pass as `STRIPE_API_BASE` (async-stripe appends `v1/…`).
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Makes the next `fault.times` requests of `fault.operation` misbehave.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.inject(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Faults not yet used up.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.shared.lock().faults.pending()
    }

    /// Every PaymentIntent, in creation order, with its per-intent effect counters.
    pub fn payment_intents(&self) -> Vec<PaymentIntentRecord> {
        self.shared.lock().ledger.records()
    }

    pub fn payment_intent(&self, id: &str) -> Option<PaymentIntentRecord> {
        self.payment_intents().into_iter().find(|pi| pi.id == id)
    }

    /// Effects actually performed since start (replays and failed requests perform none).
    pub fn counters(&self) -> Counters {
        self.shared.lock().ledger.counters()
    }

    /// TCP connections the double has accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many requests the double has answered (what [`Self::requests`] would list).
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Every request answered, in completion order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Every capture, cancel and refund request naming a PaymentIntent, in completion order,
    /// whether it was performed, replayed, refused or failed.
    pub fn attempts(&self) -> Vec<Attempt> {
        attempts(&self.shared.lock().requests, None)
    }

    /// [`Self::attempts`] for one PaymentIntent.
    pub fn attempts_on(&self, payment_intent: &str) -> Vec<Attempt> {
        attempts(&self.shared.lock().requests, Some(payment_intent))
    }

    /// The events Stripe would have emitted (`payment_intent.succeeded`…), oldest first.
    pub fn events(&self) -> Vec<LedgerEvent> {
        self.shared.lock().ledger.events()
    }

    /// The customer completes 3-D Secure: `requires_action` → `requires_capture` (or `succeeded`).
    pub fn authenticate(&self, payment_intent: &str) -> Result<PaymentIntentRecord, DoubleError> {
        self.control(payment_intent, Ledger::authenticate)
    }

    /// The customer fails 3-D Secure: `requires_action` → `requires_payment_method`.
    pub fn fail_authentication(
        &self,
        payment_intent: &str,
    ) -> Result<PaymentIntentRecord, DoubleError> {
        self.control(payment_intent, Ledger::fail_authentication)
    }

    /// The uncaptured authorization lapses: `requires_capture` → `canceled` (`automatic`).
    pub fn expire_authorization(
        &self,
        payment_intent: &str,
    ) -> Result<PaymentIntentRecord, DoubleError> {
        self.control(payment_intent, Ledger::expire_authorization)
    }

    fn control(
        &self,
        id: &str,
        action: impl FnOnce(&mut Ledger, &str) -> state::OpResult,
    ) -> Result<PaymentIntentRecord, DoubleError> {
        let mut inner = self.shared.lock();
        action(&mut inner.ledger, id).map_err(|e| DoubleError {
            code: e.code,
            message: e.message,
        })?;
        inner
            .ledger
            .records()
            .into_iter()
            .find(|pi| pi.id == id)
            .ok_or_else(|| DoubleError {
                code: Some("resource_missing".to_owned()),
                message: format!("No such payment_intent: '{id}'"),
            })
    }

    /// Stops accepting connections and lets in-flight requests finish.
    pub fn stop(mut self) {
        self.sender.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for StripeDouble {
    fn drop(&mut self) {
        self.sender.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn attempts(requests: &[RequestRecord], payment_intent: Option<&str>) -> Vec<Attempt> {
    requests
        .iter()
        .filter_map(Attempt::from_request)
        .filter(|a| payment_intent.is_none_or(|pi| a.payment_intent == pi))
        .collect()
}

/// Serves a fresh double on `listener` until `shutdown` resolves (`sagad stripe-double`).
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared::default());
    tracing::info!(addr = %listener.local_addr()?, "stripe test double listening");
    let sender = tokio_util::sync::CancellationToken::new();
    tokio::spawn(webhook_sender::run(shared.clone(), sender.clone()));
    let app = server::router(shared.clone()).merge(webhook_sender::routes(shared));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    sender.cancel();
    served
}
