//! Outgoing webhooks: integrators subscribe endpoints to public event types; every published
//! event is fanned out into a delivery row in the transaction that appends it (the outbox, see
//! `store::outbound::fan_out`); delivery workers sign each attempt (Standard Webhooks), POST it,
//! and retry on a persisted schedule until it is delivered or dead-lettered.

pub mod catalog;
pub mod delivery;
pub mod guard;
pub mod retry;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ipnet::IpNet;

pub use delivery::Dispatcher;
pub use guard::{Guard, GuardError, Resolver};
pub use retry::RetrySchedule;

/// Everything the API and the delivery workers need to know about outgoing webhooks (built by
/// [`crate::config::Settings`]).
#[derive(Clone)]
pub struct OutboundConfig {
    /// Deliveries this process attempts at once.
    pub workers: usize,
    /// Deliveries in flight to one endpoint at once, across all workers (one slow endpoint cannot
    /// take every worker).
    pub endpoint_concurrency: usize,
    /// Request timeout of one attempt.
    pub timeout: Duration,
    /// Fallback polling when no NOTIFY arrives.
    pub poll_interval: Duration,
    pub retry: RetrySchedule,
    /// How long a rotated-out secret keeps signing.
    pub secret_overlap: Duration,
    /// An endpoint failing without a single success for this long is disabled.
    pub disable_after: Duration,
    /// Permit `http://` endpoint URLs (development and tests).
    pub allow_http: bool,
    /// Networks exempt from the SSRF guard.
    pub allow_nets: Vec<IpNet>,
    pub resolver: Resolver,
    /// How long in-flight attempts may run on shutdown.
    pub shutdown_grace: Duration,
    /// Identifies this process in `locked_by`.
    pub worker_id: String,
}

impl OutboundConfig {
    pub fn guard(&self) -> Guard {
        Guard::new(self.allow_nets.clone(), self.resolver.clone())
    }

    /// A claim outlives the longest attempt comfortably; the rescuer frees it after that.
    pub fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(10)
    }

    /// Validates an endpoint URL: http(s), https unless http is allowed, no credentials, and a
    /// host that passes the SSRF guard.
    pub async fn check_url(&self, raw: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(
                    "must be https (SAGAD_WEBHOOK_ALLOW_HTTP=true permits http for development)"
                        .into(),
                );
            }
            other => return Err(format!("scheme {other} is not https")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        self.guard()
            .check_url(&url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(url)
    }
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", STANDARD.encode(bytes))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("building the HTTP client failed: {0}")]
    Client(#[from] reqwest::Error),
}
