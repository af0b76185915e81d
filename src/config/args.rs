//! Configuration from flags and environment (clap), validated at start with messages that say
//! what is wrong and how to fix it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::definition::duration;

/// Where the HTTP API listens unless `SAGAD_LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 250ms, 30s, 10m or 2h"))
}

/// Where the database is.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    /// PostgreSQL URL. When unset, sagad starts a private PostgreSQL cluster from the machine's own
    /// PostgreSQL binaries in SAGAD_DATA_DIR and stops it on exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded PostgreSQL cluster, with its password and port (used only
    /// without DATABASE_URL). Default: /var/lib/sagad/postgres as root, else
    /// $XDG_DATA_HOME/sagad/postgres.
    #[arg(long, env = "SAGAD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port of the embedded PostgreSQL on 127.0.0.1 (default: the port kept in the data
    /// directory, a free one the first time).
    #[arg(long, env = "SAGAD_EMBEDDED_PG_PORT")]
    pub embedded_port: Option<u16>,
    /// Database connections of this process (`sagad serve` keeps them all open).
    #[arg(long, env = "SAGAD_DB_POOL_SIZE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub pool_size: u32,
    /// Apply pending migrations at start (`false` when a deploy step runs `sagad migrate`).
    #[arg(long, env = "SAGAD_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// API and workers in one process.
    All,
    /// Only the HTTP API.
    Api,
    /// Only the workers (and /healthz, /readyz, /metrics).
    Worker,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Address of the HTTP API.
    #[arg(long, env = "SAGAD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Comma-separated bearer tokens accepted on /v1.
    #[arg(
        long,
        env = "SAGAD_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<String>,
    /// Stripe secret key (sk_live_… or sk_test_…).
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,
    /// Stripe API base URL (e.g. a Stripe test double); default Stripe's.
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
    /// Where the notify step POSTs booking confirmations (an email/SMS gateway).
    #[arg(long, env = "SAGAD_NOTIFY_URL")]
    pub notify_url: Option<String>,
    /// Comma-separated secrets that sign notifications (Standard Webhooks; `whsec_…` or raw).
    #[arg(
        long,
        env = "SAGAD_NOTIFY_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub notify_secret: Vec<String>,
    /// Sagas this process drives at once.
    #[arg(long, env = "SAGAD_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Sagas started here while every worker is busy that wait in this process (already leased to
    /// it) rather than go through the database; default 4 per worker.
    #[arg(long, env = "SAGAD_LOCAL_QUEUE", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub local_queue: Option<u32>,
    /// How long a worker's claim lasts; must exceed every step's timeout.
    #[arg(long, env = "SAGAD_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Fallback polling interval when no NOTIFY arrives.
    #[arg(long, env = "SAGAD_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long in-flight steps may run after SIGTERM before their leases are released.
    #[arg(long, env = "SAGAD_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How long delivered webhook deliveries (with their attempts) and settled Stripe events are
    /// kept before maintenance deletes them (events are kept forever).
    #[arg(long, env = "SAGAD_RETENTION", default_value = "720h", value_parser = parse_duration)]
    pub retention: Duration,
    /// Directory of saga definitions (`*.toml`).
    #[arg(long, env = "SAGAD_SAGAS_DIR", default_value = "sagas")]
    pub sagas_dir: PathBuf,
    /// What this process runs.
    #[arg(long, env = "SAGAD_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Longest `?wait=` the start-saga RPC honours.
    #[arg(long, env = "SAGAD_MAX_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Comma-separated Stripe webhook endpoint secrets (`whsec_…`); more than one during a rotation.
    /// Unset: `POST /webhooks/stripe` is not served.
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub stripe_webhook_secret: Vec<String>,
    /// How far a webhook's signed timestamp may be from our clock.
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE", default_value = "300s", value_parser = parse_duration)]
    pub stripe_webhook_tolerance: Duration,
    /// Stripe events this process processes at once.
    #[arg(long, env = "SAGAD_STRIPE_INBOX_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub stripe_inbox_workers: u32,
    /// Development mode: without STRIPE_SECRET_KEY, run the Stripe test double in-process; without
    /// SAGAD_API_TOKENS, accept the token `dev-token`.
    #[arg(long)]
    pub dev: bool,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no API token configured: set SAGAD_API_TOKENS (comma-separated bearer tokens), or run `sagad serve --dev` for local development"
    )]
    NoApiTokens,
    #[error("API tokens must be at least 16 characters (token {0} of SAGAD_API_TOKENS is {1})")]
    WeakApiToken(usize, usize),
    #[error(
        "STRIPE_SECRET_KEY is not set: set it to your Stripe secret key (sk_test_… for test mode), or run `sagad serve --dev` to use the built-in Stripe test double"
    )]
    NoStripeKey,
    #[error("STRIPE_SECRET_KEY must start with sk_ or rk_ (got something else)")]
    BadStripeKey,
    #[error("STRIPE_API_BASE {0:?} is not an http(s) URL")]
    BadStripeBase(String),
    #[error("SAGAD_NOTIFY_URL {0:?} is not an http(s) URL")]
    BadNotifyUrl(String),
    #[error("SAGAD_NOTIFY_URL is set but SAGAD_NOTIFY_SECRET is not: notifications must be signed")]
    NoNotifySecret,
    #[error("SAGAD_POLL_INTERVAL must be between 10ms and 1h")]
    BadPollInterval,
    #[error("SAGAD_LEASE must be at least 1s")]
    BadLease,
    #[error("STRIPE_WEBHOOK_TOLERANCE must be between 1s and 1h")]
    BadWebhookTolerance,
    #[error("SAGAD_RETENTION must be at least 1m")]
    BadRetention,
}

/// Checks an http(s) URL.
pub fn http_url(raw: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

impl ServeArgs {
    /// Validation that does not depend on what else starts (the Stripe double in `--dev`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.dev {
            if self.api_tokens.iter().all(|t| t.trim().is_empty()) {
                return Err(ConfigError::NoApiTokens);
            }
            if self.stripe_secret_key.is_none() {
                return Err(ConfigError::NoStripeKey);
            }
        }
        for (i, t) in self.api_tokens.iter().enumerate() {
            if t.trim().len() < 16 && !self.dev {
                return Err(ConfigError::WeakApiToken(i + 1, t.trim().len()));
            }
        }
        if let Some(k) = &self.stripe_secret_key
            && !(k.starts_with("sk_") || k.starts_with("rk_"))
        {
            return Err(ConfigError::BadStripeKey);
        }
        if let Some(b) = &self.stripe_api_base
            && http_url(b).is_none()
        {
            return Err(ConfigError::BadStripeBase(b.clone()));
        }
        if let Some(u) = &self.notify_url {
            if http_url(u).is_none() {
                return Err(ConfigError::BadNotifyUrl(u.clone()));
            }
            if self.notify_secret.iter().all(|s| s.is_empty()) {
                return Err(ConfigError::NoNotifySecret);
            }
        }
        if self.poll_interval < Duration::from_millis(10)
            || self.poll_interval > Duration::from_secs(3600)
        {
            return Err(ConfigError::BadPollInterval);
        }
        if self.lease < Duration::from_secs(1) {
            return Err(ConfigError::BadLease);
        }
        if self.retention < Duration::from_secs(60) {
            return Err(ConfigError::BadRetention);
        }
        if self.stripe_webhook_tolerance < Duration::from_secs(1)
            || self.stripe_webhook_tolerance > Duration::from_secs(3600)
        {
            return Err(ConfigError::BadWebhookTolerance);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Outgoing webhooks

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("{s:?} is not a network; use CIDR notation such as 127.0.0.0/8 or ::1/128")
        })
}

fn parse_jitter(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(j) if (0.0..=1.0).contains(&j) => Ok(j),
        _ => Err(format!(
            "{s:?} is not a fraction between 0 and 1 (0.2 means ±20%)"
        )),
    }
}

/// Outgoing webhook delivery.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Permit http:// webhook endpoint URLs (local development and tests only).
    #[arg(long, env = "SAGAD_WEBHOOK_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_http: bool,
    /// Comma-separated networks exempt from the SSRF guard, e.g. 127.0.0.0/8,::1/128.
    #[arg(long, env = "SAGAD_WEBHOOK_ALLOW_NETS", value_delimiter = ',', value_parser = parse_net)]
    pub webhook_allow_nets: Vec<ipnet::IpNet>,
    /// Request timeout of one delivery attempt.
    #[arg(long, env = "SAGAD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// Comma-separated delays before the 2nd, 3rd, … attempt; dead-lettered after the last.
    #[arg(long, env = "SAGAD_WEBHOOK_RETRY_SCHEDULE", value_delimiter = ',', value_parser = parse_duration,
          default_value = "5s,5m,30m,2h,5h,10h,10h")]
    pub webhook_retry_schedule: Vec<Duration>,
    /// Relative jitter of each retry delay (0.2 = ±20%).
    #[arg(long, env = "SAGAD_WEBHOOK_RETRY_JITTER", default_value = "0.2", value_parser = parse_jitter)]
    pub webhook_retry_jitter: f64,
    /// How long a rotated-out signing secret keeps signing alongside the new one.
    #[arg(long, env = "SAGAD_WEBHOOK_SECRET_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    pub webhook_secret_overlap: Duration,
    /// Disable an endpoint after it has failed continuously this long.
    #[arg(long, env = "SAGAD_WEBHOOK_DISABLE_AFTER", default_value = "120h", value_parser = parse_duration)]
    pub webhook_disable_after: Duration,
    /// Webhook deliveries this process attempts at once.
    #[arg(long, env = "SAGAD_WEBHOOK_WORKERS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub webhook_workers: u32,
    /// Deliveries in flight to one endpoint at once (across all processes).
    #[arg(long, env = "SAGAD_WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub webhook_endpoint_concurrency: u32,
}

impl WebhookArgs {
    pub fn to_config(&self, shutdown_grace: Duration) -> crate::outbound::OutboundConfig {
        crate::outbound::OutboundConfig {
            workers: self.webhook_workers as usize,
            endpoint_concurrency: self.webhook_endpoint_concurrency as usize,
            timeout: self.webhook_timeout,
            retry: crate::outbound::RetrySchedule {
                schedule: self.webhook_retry_schedule.clone(),
                jitter: self.webhook_retry_jitter,
            },
            secret_overlap: self.webhook_secret_overlap,
            disable_after: self.webhook_disable_after,
            allow_http: self.webhook_allow_http,
            allow_nets: self.webhook_allow_nets.clone(),
            shutdown_grace,
            ..crate::outbound::OutboundConfig::default()
        }
    }
}
