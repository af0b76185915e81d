//! The flags of `sagad serve` and the environment variables behind them: the one place where
//! each setting's name and default are stated. [`super::Settings`] is built from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::CancellationPolicy;
use crate::engine::definition::duration;

/// Where the HTTP API listens unless `SAGAD_LISTEN` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 250ms, 30s, 10m or 2h"))
}

fn parse_policy(s: &str) -> Result<CancellationPolicy, String> {
    CancellationPolicy::parse(s).ok_or_else(|| {
        format!("{s:?} is not a cancellation policy; use flexible, moderate or strict")
    })
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
    /// A separate address for `GET /metrics` (e.g. an internal interface); then SAGAD_LISTEN does
    /// not serve it.
    #[arg(long, env = "SAGAD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token that `GET /metrics` requires, wherever it is served (at least 16 characters).
    #[arg(long, env = "SAGAD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Comma-separated bearer tokens accepted on /v1: `name:token` pairs (the name is the actor
    /// of operator actions) or bare tokens, named `token-1`, `token-2`… by position.
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
    /// A dependency's circuit breaker opens when at least this many calls over the window…
    #[arg(long, env = "SAGAD_BREAKER_MIN_CALLS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub breaker_min_calls: u32,
    /// … fail this share of the time (0 to 1; only retryable failures count).
    #[arg(long, env = "SAGAD_BREAKER_FAILURE_RATIO", default_value_t = 0.5)]
    pub breaker_failure_ratio: f64,
    /// The sliding window a breaker counts calls over.
    #[arg(long, env = "SAGAD_BREAKER_WINDOW", default_value = "30s", value_parser = parse_duration)]
    pub breaker_window: Duration,
    /// A breaker also opens after this many connection failures in a row.
    #[arg(long, env = "SAGAD_BREAKER_CONNECTION_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub breaker_connection_failures: u32,
    /// How long an open breaker waits before one probe call; doubles with each reopening…
    #[arg(long, env = "SAGAD_BREAKER_PROBE_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub breaker_probe_after: Duration,
    /// … up to this.
    #[arg(long, env = "SAGAD_BREAKER_PROBE_MAX", default_value = "5m", value_parser = parse_duration)]
    pub breaker_probe_max: Duration,
    /// How long a worker's claim lasts; must exceed every step's timeout. A circuit breaker's
    /// probe (one step's call) holds the half-open slot as long.
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
    /// The longest stay a booking may ask for, in nights.
    #[arg(long, env = "SAGAD_MAX_NIGHTS", default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub max_nights: i64,
    /// The cancellation policy of a booking whose request names none: flexible, moderate or strict.
    #[arg(long, env = "SAGAD_CANCELLATION_POLICY", default_value = "moderate", value_parser = parse_policy)]
    pub cancellation_policy: CancellationPolicy,
    /// The cancellation policies' refund tiers (a TOML file).
    #[arg(long, env = "SAGAD_CANCELLATION_POLICIES", default_value = crate::policies::DEFAULT_PATH)]
    pub cancellation_policies: PathBuf,
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
    /// With --dev and no STRIPE_SECRET_KEY: where the built-in Stripe test double listens (its
    /// `/_double/…` controls complete 3-D Secure, inject faults…).
    #[arg(
        long,
        env = "SAGAD_DEV_STRIPE_LISTEN",
        default_value = "127.0.0.1:12111"
    )]
    pub dev_stripe_listen: SocketAddr,
    #[command(flatten)]
    pub outbound: OutboundArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
}

impl ServeArgs {
    /// The definitions as `sagad serve` would parse `flags`, without reading the environment:
    /// what tests, `sagad demo` and the benchmark start from, so that they use the same defaults.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{Args, FromArgMatches};
        let command =
            Self::augment_args(clap::Command::new("sagad serve")).mut_args(|a| a.env(None));
        let argv = std::iter::once(std::ffi::OsString::from("sagad serve"))
            .chain(flags.into_iter().map(Into::into));
        Self::from_arg_matches(&command.try_get_matches_from(argv)?)
    }

    /// Every default, and nothing else set.
    pub fn defaults() -> Self {
        match Self::from_flags(std::iter::empty::<&str>()) {
            Ok(args) => args,
            // Every argument has a default or is optional: a failure is a bug in the definitions
            // above, which `tests::the_defaults_parse` catches.
            Err(e) => panic!("the flag definitions do not parse without flags: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outgoing webhooks to integrators

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

/// Outgoing webhooks: endpoint URLs and delivery.
#[derive(clap::Args, Debug, Clone)]
pub struct OutboundArgs {
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

// ---------------------------------------------------------------------------------------------
// The event relay to NATS JetStream

/// The event relay to NATS JetStream (off unless SAGAD_NATS_URL is set).
#[derive(clap::Args, Debug, Clone)]
pub struct RelayArgs {
    /// NATS server to relay every event to through JetStream, e.g. nats://127.0.0.1:4222
    /// (comma-separated: servers of one cluster). Unset: no relay.
    #[arg(
        long,
        env = "SAGAD_NATS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub nats_url: Vec<String>,
    /// The JetStream stream events are published to (created at start when missing).
    #[arg(long, env = "SAGAD_NATS_STREAM", default_value = "SAGAD")]
    pub nats_stream: String,
    /// Each event is published to `<prefix>.<aggregate>.<type>`.
    #[arg(
        long,
        env = "SAGAD_NATS_SUBJECT_PREFIX",
        default_value = "sagad.events"
    )]
    pub nats_subject_prefix: String,
    /// The duplicate window of the stream when the relay creates it: a republished event is
    /// dropped by JetStream within it.
    #[arg(long, env = "SAGAD_NATS_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub nats_duplicate_window: Duration,
    /// `/readyz` reports not ready while the oldest event not yet relayed is older than this.
    #[arg(long, env = "SAGAD_NATS_MAX_LAG", default_value = "60s", value_parser = parse_duration)]
    pub nats_max_lag: Duration,
    /// How often the relay looks for new events once it has caught up.
    #[arg(long, env = "SAGAD_NATS_POLL_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub nats_poll_interval: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse() {
        let args = ServeArgs::defaults();
        assert_eq!(args.workers, 16);
        assert_eq!(args.outbound.webhook_retry_schedule.len(), 7);
        assert_eq!(args.max_nights, 365);
        assert_eq!(args.cancellation_policy, CancellationPolicy::Moderate);
    }

    #[test]
    fn flags_parse_without_the_environment() {
        let args = ServeArgs::from_flags(["--workers", "3", "--role", "api"]).unwrap();
        assert_eq!((args.workers, args.role), (3, Role::Api));
        assert!(ServeArgs::from_flags(["--workers", "0"]).is_err());
        assert!(ServeArgs::from_flags(["--cancellation-policy", "lenient"]).is_err());
        assert!(ServeArgs::from_flags(["--max-nights", "0"]).is_err());
    }
}
