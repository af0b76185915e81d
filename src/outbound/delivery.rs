//! Delivery workers: claim due deliveries (SKIP LOCKED, a lease, a per-endpoint cap), sign and
//! POST each, record the attempt, and settle the delivery: delivered, retry at a persisted time, or
//! dead. One pooled HTTP client whose resolver is the SSRF guard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::retry::retry_after_of;
use super::{Error, Guard, OutboundConfig};
use crate::domain::DeliveryId;
use crate::queue::{self, Workers};
use crate::signing;
use crate::store::outbound::{self as store, AttemptRow, ClaimedDelivery, Settle};
use crate::store::queues::DeliveryQueue;

/// Most response-body bytes kept per attempt.
pub const RESPONSE_BODY_LIMIT: usize = 4096;

pub struct Dispatcher {
    pool: PgPool,
    config: OutboundConfig,
    client: reqwest::Client,
    guard: Guard,
    clock: crate::clock::Clock,
}

/// What one HTTP attempt came to.
struct Response {
    status: Option<u16>,
    retry_after: Option<Duration>,
    body: Option<String>,
    error: Option<String>,
}

impl Dispatcher {
    /// `clock`: the database's ([`crate::clock`]), for the attempt's time and the failure
    /// streak's length.
    pub fn new(
        pool: PgPool,
        config: OutboundConfig,
        clock: crate::clock::Clock,
    ) -> Result<Self, Error> {
        let guard = config.guard();
        let client = reqwest::Client::builder()
            // The guard resolves every name dialled; no proxy may dial on our behalf, and no
            // redirect may lead somewhere the guard did not see.
            .dns_resolver(guard.clone())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("sagad-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            pool,
            config,
            client,
            guard,
            clock,
        })
    }

    /// Claims and delivers until `shutdown`; then lets in-flight attempts finish within the grace
    /// period and hands back whatever this process still holds ([`Workers::run`]).
    /// `wake` fires on `store::WEBHOOK_CHANNEL` notifications ([`crate::store::listen::Channels`]).
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let workers = Workers::new(
            DeliveryQueue {
                per_endpoint: self.config.endpoint_concurrency as i64,
            },
            self.pool.clone(),
            queue::Options {
                workers: self.config.workers,
                local_queue: 0,
                lease: self.config.lease(),
                poll_interval: self.config.poll_interval,
                shutdown_grace: self.config.shutdown_grace,
                worker_id: self.config.worker_id.clone(),
            },
        );
        let this = Arc::new(self);
        let looked_again = wake.clone();
        workers
            .run(wake, shutdown, |delivery, _| {
                let d = delivery.row;
                let (this, wake) = (this.clone(), looked_again.clone());
                let span = tracing::info_span!("webhook_delivery", delivery_id = %d.id,
                    endpoint_id = %d.endpoint_id, attempt = d.attempts);
                async move {
                    this.deliver(d).await;
                    // The attempt freed one of its endpoint's slots (or put the delivery back
                    // due soon): the loop claims again.
                    wake.notify_one();
                }
                .instrument(span)
            })
            .await
    }

    async fn deliver(&self, d: ClaimedDelivery) {
        if let Some(limit) = d.rate_limit {
            match store::admit_or_defer(&self.pool, d.id, d.attempts, d.endpoint_id, limit).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    warn!(error = %e, "the rate limit could not be checked; the lease will expire");
                    return;
                }
            }
        }
        let body = body(&d);
        let msg_id = webhook_id(d.id);
        let secrets: Vec<Vec<u8>> = d.secrets.iter().map(|s| signing::secret_bytes(s)).collect();
        let attempted_at = self.clock.db_now();
        let started = Instant::now();
        let resp = self
            .send(&d.url, &msg_id, attempted_at.timestamp(), &secrets, body)
            .await;
        let latency = started.elapsed();

        let (outcome, disable) = self.classify(&d, &resp);
        let attempt = AttemptRow {
            attempt: d.attempts,
            attempted_at,
            status_code: resp.status.map(i32::from),
            latency_ms: latency.as_millis().min(i32::MAX as u128) as i32,
            response_body: resp.body,
            error: resp.error,
        };
        let label = match (&outcome, resp.status) {
            (Settle::Delivered, _) => "delivered",
            (Settle::Dead, Some(410)) => "gone",
            (Settle::Dead, _) => "dead",
            (Settle::Retry(_), _) => "retry",
        };
        match self.settle(&d, &attempt, &outcome, disable).await {
            Ok(true) => {
                metrics::counter!("sagad_webhook_deliveries_total",
                    "outcome" => label, "endpoint" => d.endpoint_id.to_string())
                .increment(1);
                debug!(outcome = label, status = ?attempt.status_code, latency_ms = attempt.latency_ms, "webhook attempt");
            }
            Ok(false) => warn!("webhook lease lost before the attempt was recorded"),
            Err(e) => {
                warn!(error = %e, "recording a webhook attempt failed; the lease will expire")
            }
        }
    }

    /// The delivery's next state, and whether (why) the endpoint must be disabled.
    fn classify(&self, d: &ClaimedDelivery, r: &Response) -> (Settle, Option<&'static str>) {
        match r.status {
            Some(s) if (200..300).contains(&s) => return (Settle::Delivered, None),
            Some(410) => return (Settle::Dead, Some("gone")),
            _ => {}
        }
        let retry_after = match r.status {
            Some(429 | 503) => r.retry_after,
            _ => None,
        };
        let made = d.schedule_pos as usize + 1;
        match self
            .config
            .retry
            .next_delay(made, retry_after, rand::random::<f64>())
        {
            Some(delay) => (Settle::Retry(delay), None),
            None => (Settle::Dead, None),
        }
    }

    async fn settle(
        &self,
        d: &ClaimedDelivery,
        attempt: &AttemptRow,
        outcome: &Settle,
        disable: Option<&'static str>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (settled, failing_since) =
            store::settle(&mut tx, d.id, d.endpoint_id, attempt, outcome).await?;
        if !settled {
            return Ok(false);
        }
        let reason = match (disable, failing_since) {
            (Some(r), _) => Some((r, "the endpoint answered 410 Gone".to_owned())),
            (None, Some(since))
                if (self.clock.db_now() - since).to_std().unwrap_or_default()
                    >= self.config.disable_after =>
            {
                Some((
                    "failing",
                    format!("every attempt has failed since {}", since.to_rfc3339()),
                ))
            }
            _ => None,
        };
        if let Some((reason, detail)) = reason
            && store::disable_endpoint(&mut tx, d.endpoint_id, reason, &detail).await?
        {
            warn!(reason, %detail, "webhook endpoint disabled");
        }
        tx.commit().await?;
        Ok(true)
    }

    /// One signed POST. Never fails: every problem becomes the attempt's `error`.
    async fn send(
        &self,
        url: &str,
        msg_id: &str,
        timestamp: i64,
        secrets: &[Vec<u8>],
        body: Vec<u8>,
    ) -> Response {
        let failed = |error: String| Response {
            status: None,
            retry_after: None,
            body: None,
            error: Some(error),
        };
        let url = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return failed(format!("invalid endpoint URL: {e}")),
        };
        // The client's resolver checks names; IP literals never reach it, so check them here.
        if let Some(host) = url.host_str()
            && host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok()
            && let Err(e) = self.guard.check_url(&url).await
        {
            return failed(e.to_string());
        }
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in signing::headers(secrets, msg_id, timestamp, &body) {
            req = req.header(name, value);
        }
        let mut resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return failed(describe(&e, self.config.timeout)),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after_of(resp.headers(), self.clock.local_now());
        let mut kept = Vec::new();
        let mut error = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = RESPONSE_BODY_LIMIT - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if kept.len() >= RESPONSE_BODY_LIMIT {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(format!(
                        "reading the response: {}",
                        describe(&e, self.config.timeout)
                    ));
                    break;
                }
            }
        }
        Response {
            status: Some(status),
            retry_after,
            body: Some(String::from_utf8_lossy(&kept).into_owned()),
            error,
        }
    }
}

/// The `webhook-id` of a delivery: the same on every attempt and redelivery.
pub fn webhook_id(delivery_id: DeliveryId) -> String {
    format!("msg_{}", delivery_id.0.simple())
}

/// The JSON body: the public type, when it happened, the aggregate and its version (receivers
/// order by it; delivery order is not guaranteed), the version of the aggregate's previous
/// published event (published versions have gaps: internal events take versions too), and the
/// event's data at its type's current schema version (`schema_version`; a payload stored at an
/// older version is upcast, on every attempt and redelivery).
pub fn body(d: &ClaimedDelivery) -> Vec<u8> {
    let (schema_version, data) =
        crate::upcast::to_current(&d.stored_type, d.schema_version, d.payload.clone());
    let v = serde_json::json!({
        "type": d.event_type,
        "schema_version": schema_version,
        "timestamp": d.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "event_id": d.event_id,
        "aggregate_type": d.aggregate_type,
        "aggregate_id": d.aggregate_id,
        "aggregate_version": d.version,
        "previous_version": d.previous_version,
        "data": data,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
