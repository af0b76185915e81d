//! Stripe webhook ingestion: the HTTP route (`http::inbound_stripe`) verifies and stores each
//! event in the inbox; the workers here claim inbox rows (SKIP LOCKED, under a lease), process them
//! (`process`), and retry with backoff until they are done or dead (visible to operators).

pub mod event;
pub mod process;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::engine::retry::RetryPolicy;
use crate::queue::{self, Workers};
use crate::store::queues::StripeEventQueue;
use crate::store::stripe_inbox::{self, Claim, StripeEventRow};
use crate::stripe::client::StripeClient;
use process::Decision;
use signature::Verifier;

/// Largest webhook body accepted (Stripe's events are far smaller).
pub const BODY_LIMIT: usize = 256 * 1024;

/// How the inbox workers run (built by [`crate::config::Settings`]).
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// Events processed at once by this process.
    pub workers: usize,
    /// How long a claim lasts; a worker that dies is replaced after this.
    pub lease: Duration,
    /// Fallback polling when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Backoff between attempts, and when an event is declared dead.
    pub retry: RetryPolicy,
    /// How long events in flight may take to finish on shutdown before their claims are handed
    /// back.
    pub shutdown_grace: Duration,
    /// Identifies this process in `locked_by`.
    pub worker_id: String,
}

/// Backoff between an inbox event's attempts: 250ms, 500ms, 1s … capped at 2m, about 10 minutes
/// before an event is dead, which covers a slow authorize step and a saga that has not parked
/// yet.
pub const INBOX_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 12,
    base_delay: Duration::from_millis(250),
    max_delay: Duration::from_secs(120),
    jitter: 0.2,
};

/// Everything about inbound Stripe webhooks.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    /// Endpoint secrets (`STRIPE_WEBHOOK_SECRET`); none = the route is not mounted.
    pub webhook_secrets: Vec<String>,
    pub tolerance: Duration,
    pub inbox: InboxConfig,
}

impl InboundSettings {
    /// The verifier for the HTTP route, when secrets are configured.
    pub fn verifier(&self) -> Option<Verifier> {
        let v = Verifier::new(&self.webhook_secrets, self.tolerance);
        v.has_secrets().then_some(v)
    }
}

/// Claims and processes inbox events until `shutdown`; in-flight events finish (within the
/// grace period) and whatever this process still holds is handed back before it returns
/// ([`Workers::run`]). `wake` fires on `INBOX_CHANNEL` notifications
/// ([`crate::store::listen::Channels`]). `clock`: the database's, which retry times are on.
pub async fn run(
    pool: PgPool,
    stripe: StripeClient,
    config: InboxConfig,
    clock: crate::clock::Clock,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let workers = Workers::new(
        StripeEventQueue,
        pool.clone(),
        queue::Options {
            workers: config.workers,
            local_queue: 0,
            lease: config.lease,
            poll_interval: config.poll_interval,
            shutdown_grace: config.shutdown_grace,
            worker_id: config.worker_id.clone(),
        },
    );
    let config = Arc::new(config);
    let looked_again = wake.clone();
    workers
        .run(wake, shutdown, |event, _| {
            let row = event.row;
            let (pool, stripe, config) = (pool.clone(), stripe.clone(), config.clone());
            let clock = clock.clone();
            let wake = looked_again.clone();
            let span = tracing::info_span!("stripe_event", event_id = %row.id, event_type = %row.event_type);
            async move {
                // Put back for later: the loop looks for the next due time again.
                if handle(&pool, &stripe, &config, &clock, row).await {
                    wake.notify_one();
                }
            }
            .instrument(span)
        })
        .await
}

/// Processes one claimed event and settles it; true when it was put back to be tried again.
async fn handle(
    pool: &PgPool,
    stripe: &StripeClient,
    config: &InboxConfig,
    clock: &crate::clock::Clock,
    row: StripeEventRow,
) -> bool {
    let claim = Claim {
        id: row.id.clone(),
        worker: config.worker_id.clone(),
        attempts: row.attempts,
    };
    let result = process::process(pool, stripe, &claim, &row.payload).await;
    let (outcome, retry_reason) = match result {
        Ok(Decision::Finished {
            status,
            saga_id,
            outcome,
        }) => {
            info!(status = status.as_str(), saga_id = ?saga_id, outcome, "stripe event processed");
            (status.as_str(), None)
        }
        Ok(Decision::ClaimLost) => {
            warn!("claim lost before the stripe event was recorded; another worker has it");
            ("claim_lost", None)
        }
        Ok(Decision::Retry(reason)) => ("retry", Some(reason)),
        Ok(Decision::Defer(reason)) => {
            let delay = rand::rng().random_range(200..800);
            let at = clock.db_now() + chrono::Duration::milliseconds(delay);
            debug!(reason, "stripe event deferred until the saga catches up");
            if let Err(e) = stripe_inbox::defer(pool, &claim, at, &reason).await {
                warn!(error = %e, "could not defer the stripe event; its lease will expire");
            }
            count(&row.event_type, "deferred");
            return true;
        }
        Err(e) => ("error", Some(e.to_string())),
    };
    if let Some(reason) = retry_reason {
        let attempts = row.attempts.max(0) as u32;
        let at = (!config.retry.exhausted(attempts)).then(|| {
            config
                .retry
                .next_attempt_at(clock.db_now(), attempts + 1, rand::rng().random::<f64>())
        });
        if at.is_none() {
            warn!(attempts, reason, "stripe event dead after its last attempt");
        } else {
            debug!(attempts, reason, "stripe event retried later");
        }
        if let Err(e) = stripe_inbox::reschedule(pool, &claim, at, &reason).await {
            warn!(error = %e, "could not reschedule the stripe event; its lease will expire");
        }
        count(&row.event_type, if at.is_none() { "dead" } else { outcome });
        return at.is_some();
    }
    count(&row.event_type, outcome);
    false
}

/// `sagad_stripe_events_total{type, outcome}`.
pub fn count(event_type: &str, outcome: &'static str) {
    metrics::counter!("sagad_stripe_events_total", "type" => event_type.to_owned(), "outcome" => outcome)
        .increment(1);
}
