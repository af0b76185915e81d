//! Configuration in one place. `args.rs` defines every flag and environment variable of
//! `sagad serve` with its default; [`Settings::from_args`] turns them into the settings of every
//! part of sagad, validated once, with a message that says what is wrong and how to fix it.
//! Tests, `sagad demo` and the benchmark build theirs the same way ([`ServeArgs::defaults`], then
//! [`Settings::from_args`]) and change only what they need.

mod args;
#[cfg(test)]
mod readme;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub(crate) use args::parse_duration;
pub use args::{DEFAULT_LISTEN, DbArgs, OutboundArgs, RelayArgs, Role, ServeArgs};

use crate::domain::BookingRules;
use crate::engine::EngineConfig;
use crate::engine::actions::{self, NotifyConfig};
use crate::engine::definition::{self, DefinitionError, SagaDefinition};
use crate::inbound::stripe::{InboundSettings, InboxConfig};
use crate::maintenance::MaintenanceConfig;
use crate::outbound::{OutboundConfig, RetrySchedule};
use crate::relay::RelayConfig;

/// The booking saga shipped inside the binary, used when no `sagas/` directory is present.
pub const BUILTIN_BOOKING: &str = include_str!("../../sagas/booking.toml");
/// The date/price change saga, used beside the booking saga when there is no `./sagas` directory.
pub const BUILTIN_BOOKING_CHANGE: &str = include_str!("../../sagas/booking_change.toml");

/// The bearer token `--dev` accepts when no `SAGAD_API_TOKENS` are set.
pub const DEV_TOKEN: &str = "dev-token";

/// Everything a sagad process is configured with.
#[derive(Clone)]
pub struct Settings {
    /// What this process runs.
    pub role: Role,
    /// The HTTP API's address.
    pub listen: SocketAddr,
    pub db: DbArgs,
    /// Accepted bearer tokens for `/v1`, each with the name operator actions record.
    pub api_tokens: Vec<ApiToken>,
    pub stripe: StripeSettings,
    /// The notification gateway; `None`: the notify step records that nothing was sent.
    pub notify: Option<NotifyConfig>,
    /// The saga definitions, loaded and checked.
    pub definitions: Vec<SagaDefinition>,
    /// The cancellation policies' refund tiers, loaded and checked.
    pub policies: std::sync::Arc<crate::policies::Policies>,
    /// Longest `?wait=` the start-saga RPC honours.
    pub max_wait: Duration,
    /// What a booking request must satisfy beyond its own fields.
    pub booking_rules: BookingRules,
    /// The saga workers.
    pub engine: EngineConfig,
    /// Stripe's webhooks: endpoint secrets and the inbox workers.
    pub inbound_stripe: InboundSettings,
    /// Webhooks to integrators: the endpoint API's URL policy and the delivery workers.
    pub outbound: OutboundConfig,
    /// Background upkeep, run with the workers.
    pub maintenance: MaintenanceConfig,
    /// Where `/metrics` is served, and whether it needs a token.
    pub metrics: MetricsSettings,
    /// When the dependencies' circuit breakers open and how they probe.
    pub breakers: crate::breaker::Thresholds,
    /// Shifts this process's wall clock ([`crate::clock::Clock::local_now`]) by this much. A test
    /// and diagnostic knob with no flag or environment variable: zero in every process `sagad`
    /// starts. Tests set it to show that no time sagad writes or compares with a column comes
    /// from this machine's clock (the database's clock decides, [`crate::clock`]).
    pub clock_skew: chrono::TimeDelta,
    /// The event relay to NATS JetStream; `None` (no SAGAD_NATS_URL): no relay.
    pub relay: Option<RelayConfig>,
}

/// A bearer token `/v1` accepts, and its name: the actor recorded for the operator actions
/// (retry, resolve, cancel) made with it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for ApiToken {
    // The token itself stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The name `--dev` gives [`DEV_TOKEN`].
pub const DEV_TOKEN_NAME: &str = "dev";

/// Where `GET /metrics` is served and who may read it.
#[derive(Clone)]
pub struct MetricsSettings {
    /// Its own address; `None`: the API's (`SAGAD_LISTEN`).
    pub listen: Option<SocketAddr>,
    /// The bearer token it requires; `None`: anyone who reaches it may read it.
    pub token: Option<String>,
}

/// How sagad reaches Stripe.
#[derive(Clone)]
pub struct StripeSettings {
    /// `None` only in development (`--dev`): `sagad serve` then runs the Stripe test double.
    pub secret_key: Option<String>,
    /// Stripe's own API unless set (e.g. the test double).
    pub api_base: Option<String>,
    /// Where `sagad serve --dev` runs the Stripe test double, when it does.
    pub dev_listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    BadBreaker(&'static str),
    #[error(
        "no API token configured: set SAGAD_API_TOKENS (comma-separated bearer tokens), or run `sagad serve --dev` for local development"
    )]
    NoApiTokens,
    #[error("API tokens must be at least 16 characters (token {0} of SAGAD_API_TOKENS is {1})")]
    WeakApiToken(usize, usize),
    #[error(
        "token {0} of SAGAD_API_TOKENS has an invalid name {1:?}: a name is 1-64 letters, digits, `_`, `-` or `.`, given as name:token"
    )]
    BadApiTokenName(usize, String),
    #[error("SAGAD_API_TOKENS names two tokens {0:?}: each name must be unique")]
    DuplicateApiTokenName(String),
    #[error(
        "SAGAD_API_TOKENS lists token {0} twice (as tokens {1} and {0}): each token must be unique"
    )]
    DuplicateApiToken(usize, usize),
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
    #[error("SAGAD_METRICS_TOKEN must be at least 16 characters (it is {0})")]
    WeakMetricsToken(usize),
    #[error(
        "SAGAD_METRICS_LISTEN is SAGAD_LISTEN's address ({0}): give metrics another port, or unset it to serve them with the API"
    )]
    MetricsListenClash(SocketAddr),
    #[error(
        "SAGAD_NATS_URL {0:?} is not a NATS server URL ({1}); use e.g. nats://127.0.0.1:4222 or tls://nats.example:4222"
    )]
    BadNatsUrl(String, String),
    #[error(
        "SAGAD_NATS_STREAM {0:?} is not a JetStream stream name: 1-255 characters, none of `.`, `*`, `>`, `/`, `\\` or whitespace"
    )]
    BadNatsStream(String),
    #[error(
        "SAGAD_NATS_SUBJECT_PREFIX {0:?} is not a subject prefix: dot-separated non-empty tokens without `*`, `>` or whitespace, e.g. sagad.events"
    )]
    BadNatsSubjectPrefix(String),
    #[error("{0}")]
    BadNatsSetting(&'static str),
    #[error("saga definitions are invalid:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Definitions(Vec<DefinitionError>),
    #[error("cancellation policies are invalid:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Policies(Vec<DefinitionError>),
}

/// Checks an http(s) URL.
pub fn http_url(raw: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// The circuit breakers' thresholds.
fn breakers(args: &ServeArgs) -> Result<crate::breaker::Thresholds, ConfigError> {
    let ratio = args.breaker_failure_ratio;
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(ConfigError::BadBreaker(
            "SAGAD_BREAKER_FAILURE_RATIO must be above 0 and at most 1, e.g. 0.5",
        ));
    }
    if args.breaker_window < Duration::from_secs(1) {
        return Err(ConfigError::BadBreaker(
            "SAGAD_BREAKER_WINDOW must be at least 1s, e.g. 30s",
        ));
    }
    if args.breaker_probe_after.is_zero() || args.breaker_probe_after > args.breaker_probe_max {
        return Err(ConfigError::BadBreaker(
            "SAGAD_BREAKER_PROBE_AFTER must be above zero and at most SAGAD_BREAKER_PROBE_MAX",
        ));
    }
    Ok(crate::breaker::Thresholds {
        window: args.breaker_window,
        min_calls: args.breaker_min_calls,
        failure_ratio: ratio,
        connection_failures: args.breaker_connection_failures,
        probe_after: args.breaker_probe_after,
        probe_max: args.breaker_probe_max,
        // The probe is one step's call, which the saga's lease outlasts: a prober whose process
        // dies frees the half-open slot when its saga's lease runs out, not later.
        probe_lease: args.lease,
    })
}

impl Settings {
    /// Validates `args` and builds the settings of every part of sagad from them.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let api_tokens = api_tokens(&args)?;
        let stripe = stripe(&args)?;
        let notify = notify(&args)?;
        if args.poll_interval < Duration::from_millis(10)
            || args.poll_interval > Duration::from_secs(3600)
        {
            return Err(ConfigError::BadPollInterval);
        }
        if args.lease < Duration::from_secs(1) {
            return Err(ConfigError::BadLease);
        }
        if args.retention < Duration::from_secs(60) {
            return Err(ConfigError::BadRetention);
        }
        if args.stripe_webhook_tolerance < Duration::from_secs(1)
            || args.stripe_webhook_tolerance > Duration::from_secs(3600)
        {
            return Err(ConfigError::BadWebhookTolerance);
        }
        let metrics = metrics(&args)?;
        let breakers = breakers(&args)?;
        let policies = crate::policies::Policies::load(&args.cancellation_policies)
            .map_err(ConfigError::Policies)?;
        // One name for this process in every queue's `locked_by`.
        let worker_id = crate::engine::default_worker_id();
        let relay = relay(&args.relay, &worker_id)?;
        let definitions = load_definitions(&args.sagas_dir).map_err(ConfigError::Definitions)?;
        let o = &args.outbound;
        Ok(Self {
            role: args.role,
            listen: args.listen,
            api_tokens,
            stripe,
            notify,
            definitions,
            policies: std::sync::Arc::new(policies),
            max_wait: args.max_wait,
            booking_rules: BookingRules {
                max_nights: args.max_nights,
                default_policy: args.cancellation_policy,
            },
            engine: EngineConfig {
                workers: args.workers as usize,
                local_queue: args.local_queue.map(|n| n as usize),
                lease: args.lease,
                poll_interval: args.poll_interval,
                shutdown_grace: args.shutdown_grace,
                worker_id: worker_id.clone(),
            },
            inbound_stripe: InboundSettings {
                webhook_secrets: args.stripe_webhook_secret.clone(),
                tolerance: args.stripe_webhook_tolerance,
                inbox: InboxConfig {
                    workers: args.stripe_inbox_workers as usize,
                    // Processing an event is one Stripe call and one transaction: the saga lease
                    // bounds it.
                    lease: args.lease,
                    poll_interval: args.poll_interval,
                    retry: crate::inbound::stripe::INBOX_RETRY,
                    shutdown_grace: args.shutdown_grace,
                    worker_id: worker_id.clone(),
                },
            },
            outbound: OutboundConfig {
                workers: o.webhook_workers as usize,
                endpoint_concurrency: o.webhook_endpoint_concurrency as usize,
                timeout: o.webhook_timeout,
                poll_interval: args.poll_interval,
                retry: RetrySchedule {
                    schedule: o.webhook_retry_schedule.clone(),
                    jitter: o.webhook_retry_jitter,
                },
                secret_overlap: o.webhook_secret_overlap,
                disable_after: o.webhook_disable_after,
                allow_http: o.webhook_allow_http,
                allow_nets: o.webhook_allow_nets.clone(),
                resolver: crate::outbound::guard::system_resolver(),
                shutdown_grace: args.shutdown_grace,
                worker_id,
            },
            maintenance: MaintenanceConfig {
                interval: crate::maintenance::INTERVAL,
                retention: args.retention,
            },
            metrics,
            breakers,
            clock_skew: chrono::TimeDelta::zero(),
            relay,
            db: args.db,
        })
    }

    /// Whether `sagad serve` must run the Stripe test double (`--dev` without a key).
    pub fn runs_stripe_double(&self) -> bool {
        self.stripe.secret_key.is_none()
    }
}

#[cfg(test)]
impl Settings {
    /// `sagad serve --dev`'s settings, for unit tests.
    pub(crate) fn dev() -> Self {
        let mut args = ServeArgs::defaults();
        args.dev = true;
        match Self::from_args(args) {
            Ok(s) => s,
            Err(e) => panic!("the --dev settings are refused: {e}"),
        }
    }
}

/// Whether `name` may name an API token: 1-64 ASCII letters, digits, `_`, `-` or `.`.
fn is_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// One entry of SAGAD_API_TOKENS (the `n`th, from 1): `name:token` (an entry with a `:` is
/// always a pair), or a bare token, named `token-n`.
fn api_token(n: usize, raw: &str) -> Result<ApiToken, ConfigError> {
    let (name, token) = match raw.split_once(':') {
        Some((name, token)) => {
            let name = name.trim();
            if !is_token_name(name) {
                return Err(ConfigError::BadApiTokenName(n, name.to_owned()));
            }
            (name.to_owned(), token.trim())
        }
        None => (format!("token-{n}"), raw),
    };
    Ok(ApiToken {
        name,
        token: token.to_owned(),
    })
}

/// The tokens (`name:token` or bare, named by position), trimmed; `--dev` without any accepts
/// [`DEV_TOKEN`], named [`DEV_TOKEN_NAME`].
fn api_tokens(args: &ServeArgs) -> Result<Vec<ApiToken>, ConfigError> {
    let mut tokens: Vec<ApiToken> = Vec::new();
    for (i, raw) in args
        .api_tokens
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .enumerate()
    {
        let n = i + 1;
        let t = api_token(n, raw)?;
        if !args.dev && t.token.len() < 16 {
            return Err(ConfigError::WeakApiToken(n, t.token.len()));
        }
        if tokens.iter().any(|o| o.name == t.name) {
            return Err(ConfigError::DuplicateApiTokenName(t.name));
        }
        if let Some(first) = tokens.iter().position(|o| o.token == t.token) {
            return Err(ConfigError::DuplicateApiToken(n, first + 1));
        }
        tokens.push(t);
    }
    if tokens.is_empty() {
        if !args.dev {
            return Err(ConfigError::NoApiTokens);
        }
        tracing::info!("--dev: API token is `{DEV_TOKEN}`");
        tokens.push(ApiToken {
            name: DEV_TOKEN_NAME.into(),
            token: DEV_TOKEN.into(),
        });
    }
    Ok(tokens)
}

/// The relay's settings, when SAGAD_NATS_URL names a server.
fn relay(args: &RelayArgs, worker_id: &str) -> Result<Option<RelayConfig>, ConfigError> {
    let urls: Vec<&str> = args
        .nats_url
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Ok(None);
    }
    let mut servers = Vec::with_capacity(urls.len());
    for raw in urls {
        // The message shows the URL without its password.
        let shown = |raw: &str| match reqwest::Url::parse(raw) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => raw.to_owned(),
        };
        let addr: async_nats::ServerAddr = raw
            .parse()
            .map_err(|e: std::io::Error| ConfigError::BadNatsUrl(shown(raw), e.to_string()))?;
        if !matches!(addr.clone().into_inner().scheme(), "nats" | "tls") {
            return Err(ConfigError::BadNatsUrl(
                shown(raw),
                "the scheme must be nats:// or tls://".into(),
            ));
        }
        if addr
            .clone()
            .into_inner()
            .host_str()
            .is_none_or(str::is_empty)
        {
            return Err(ConfigError::BadNatsUrl(
                shown(raw),
                "it names no host".into(),
            ));
        }
        servers.push(addr);
    }
    if !crate::relay::valid_stream_name(&args.nats_stream) {
        return Err(ConfigError::BadNatsStream(args.nats_stream.clone()));
    }
    if !crate::relay::valid_subject_prefix(&args.nats_subject_prefix) {
        return Err(ConfigError::BadNatsSubjectPrefix(
            args.nats_subject_prefix.clone(),
        ));
    }
    if args.nats_duplicate_window < Duration::from_secs(1) {
        return Err(ConfigError::BadNatsSetting(
            "SAGAD_NATS_DUPLICATE_WINDOW must be at least 1s, e.g. 2m",
        ));
    }
    if args.nats_max_lag < Duration::from_secs(1) {
        return Err(ConfigError::BadNatsSetting(
            "SAGAD_NATS_MAX_LAG must be at least 1s, e.g. 60s",
        ));
    }
    if args.nats_poll_interval < Duration::from_millis(10)
        || args.nats_poll_interval > Duration::from_secs(3600)
    {
        return Err(ConfigError::BadNatsSetting(
            "SAGAD_NATS_POLL_INTERVAL must be between 10ms and 1h",
        ));
    }
    Ok(Some(RelayConfig {
        servers,
        stream: args.nats_stream.clone(),
        subject_prefix: args.nats_subject_prefix.clone(),
        duplicate_window: args.nats_duplicate_window,
        max_lag: args.nats_max_lag,
        poll_interval: args.nats_poll_interval,
        worker_id: worker_id.to_owned(),
    }))
}

fn metrics(args: &ServeArgs) -> Result<MetricsSettings, ConfigError> {
    if args.metrics_listen == Some(args.listen) {
        return Err(ConfigError::MetricsListenClash(args.listen));
    }
    let token = args
        .metrics_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(t) = token
        && t.len() < 16
    {
        return Err(ConfigError::WeakMetricsToken(t.len()));
    }
    Ok(MetricsSettings {
        listen: args.metrics_listen,
        token: token.map(str::to_owned),
    })
}

fn stripe(args: &ServeArgs) -> Result<StripeSettings, ConfigError> {
    match &args.stripe_secret_key {
        None if !args.dev => return Err(ConfigError::NoStripeKey),
        Some(k) if !(k.starts_with("sk_") || k.starts_with("rk_")) => {
            return Err(ConfigError::BadStripeKey);
        }
        _ => {}
    }
    if let Some(b) = &args.stripe_api_base
        && http_url(b).is_none()
    {
        return Err(ConfigError::BadStripeBase(b.clone()));
    }
    Ok(StripeSettings {
        secret_key: args.stripe_secret_key.clone(),
        api_base: args.stripe_api_base.clone(),
        dev_listen: args.dev_stripe_listen,
    })
}

fn notify(args: &ServeArgs) -> Result<Option<NotifyConfig>, ConfigError> {
    let Some(raw) = &args.notify_url else {
        return Ok(None);
    };
    let url = http_url(raw).ok_or_else(|| ConfigError::BadNotifyUrl(raw.clone()))?;
    if args.notify_secret.iter().all(|s| s.is_empty()) {
        return Err(ConfigError::NoNotifySecret);
    }
    Ok(Some(NotifyConfig {
        url,
        secrets: args
            .notify_secret
            .iter()
            .map(|s| crate::signing::secret_bytes(s))
            .collect(),
    }))
}

/// Loads every `*.toml` of `dir`; a missing default directory falls back to the built-in booking
/// saga.
pub fn load_definitions(dir: &Path) -> Result<Vec<SagaDefinition>, Vec<DefinitionError>> {
    if !dir.exists() && dir == Path::new("sagas") {
        tracing::info!("no ./sagas directory: using the built-in booking and booking_change sagas");
        let mut errors = Vec::new();
        let mut defs = Vec::new();
        for (src, path) in [
            (BUILTIN_BOOKING, "<built-in>/booking.toml"),
            (BUILTIN_BOOKING_CHANGE, "<built-in>/booking_change.toml"),
        ] {
            match definition::parse(src, path, &actions::catalog()) {
                Ok(d) => defs.push(d),
                Err(e) => errors.extend(e),
            }
        }
        return if errors.is_empty() {
            Ok(defs)
        } else {
            Err(errors)
        };
    }
    definition::load_dir(dir, &actions::catalog())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ServeArgs {
        let mut args = ServeArgs::defaults();
        args.api_tokens = vec!["0123456789abcdef".into()];
        args.stripe_secret_key = Some("sk_test_x".into());
        args
    }

    #[test]
    fn a_breaker_probe_holds_the_half_open_slot_for_the_lease() {
        let mut args = valid();
        args.lease = Duration::from_secs(3);
        let s = Settings::from_args(args).unwrap();
        assert_eq!(s.breakers.probe_lease, Duration::from_secs(3));
    }

    #[test]
    fn the_defaults_reach_every_part() {
        let s = Settings::from_args(valid()).unwrap();
        assert_eq!(s.engine.workers, 16);
        assert_eq!(s.engine.lease, Duration::from_secs(60));
        assert_eq!(s.inbound_stripe.inbox.workers, 4);
        assert_eq!(s.inbound_stripe.inbox.lease, s.engine.lease);
        assert_eq!(s.outbound.workers, 32);
        assert_eq!(s.outbound.retry.schedule[0], Duration::from_secs(5));
        assert_eq!(s.outbound.poll_interval, s.engine.poll_interval);
        assert_eq!(s.maintenance.retention, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(s.engine.worker_id, s.outbound.worker_id);
        assert_eq!(
            s.api_tokens,
            vec![ApiToken {
                name: "token-1".into(),
                token: "0123456789abcdef".into()
            }]
        );
        assert!(!s.runs_stripe_double());
        assert!(s.relay.is_none(), "the relay is off by default");
    }

    #[test]
    fn the_relay_is_on_with_a_nats_url_and_keeps_its_password_out_of_errors() {
        let mut args = valid();
        args.relay.nats_url = vec!["nats://127.0.0.1:4222, 127.0.0.1:4223".into()];
        args.relay.nats_url = args.relay.nats_url[0]
            .split(',')
            .map(str::to_owned)
            .collect();
        let relay = Settings::from_args(args).unwrap().relay.expect("relay on");
        assert_eq!(relay.servers.len(), 2);
        assert_eq!(
            (relay.stream.as_str(), relay.subject_prefix.as_str()),
            ("SAGAD", "sagad.events")
        );
        assert_eq!(relay.duplicate_window, Duration::from_secs(120));
        let mut args = valid();
        args.relay.nats_url = vec!["ftp://relay:s3cret@nats.example".into()];
        let err = Settings::from_args(args)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("nats://") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn each_problem_says_what_to_set() {
        type Change = Box<dyn Fn(&mut ServeArgs)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|a| a.api_tokens.clear()), "SAGAD_API_TOKENS"),
            (
                Box::new(|a| a.api_tokens = vec!["short".into()]),
                "at least 16",
            ),
            (
                Box::new(|a| a.api_tokens = vec!["ops:short".into()]),
                "at least 16",
            ),
            (
                Box::new(|a| a.api_tokens = vec!["o p:0123456789abcdef".into()]),
                "invalid name \"o p\"",
            ),
            (
                Box::new(|a| a.api_tokens = vec![":0123456789abcdef".into()]),
                "invalid name",
            ),
            (
                Box::new(|a| {
                    a.api_tokens =
                        vec!["ops:0123456789abcdef".into(), "ops:fedcba9876543210".into()]
                }),
                "names two tokens \"ops\"",
            ),
            (
                Box::new(|a| {
                    a.api_tokens = vec!["ops:0123456789abcdef".into(), "0123456789abcdef".into()]
                }),
                "lists token 2 twice",
            ),
            (
                Box::new(|a| a.stripe_secret_key = None),
                "STRIPE_SECRET_KEY",
            ),
            (
                Box::new(|a| a.stripe_secret_key = Some("pk_x".into())),
                "sk_ or rk_",
            ),
            (
                Box::new(|a| a.stripe_api_base = Some("ftp://x".into())),
                "STRIPE_API_BASE",
            ),
            (
                Box::new(|a| a.notify_url = Some("http://gw/".into())),
                "SAGAD_NOTIFY_SECRET",
            ),
            (
                Box::new(|a| a.poll_interval = Duration::ZERO),
                "SAGAD_POLL_INTERVAL",
            ),
            (
                Box::new(|a| a.lease = Duration::from_millis(10)),
                "SAGAD_LEASE",
            ),
            (
                Box::new(|a| a.retention = Duration::from_secs(1)),
                "SAGAD_RETENTION",
            ),
            (
                Box::new(|a| a.metrics_token = Some("short".into())),
                "SAGAD_METRICS_TOKEN",
            ),
            (
                Box::new(|a| a.metrics_listen = Some(a.listen)),
                "SAGAD_METRICS_LISTEN",
            ),
            (
                Box::new(|a| a.stripe_webhook_tolerance = Duration::ZERO),
                "STRIPE_WEBHOOK_TOLERANCE",
            ),
            (
                Box::new(|a| a.sagas_dir = "/nonexistent/sagas".into()),
                "saga definitions",
            ),
            (
                Box::new(|a| a.relay.nats_url = vec!["http://127.0.0.1:4222".into()]),
                "SAGAD_NATS_URL \"http://127.0.0.1:4222\"",
            ),
            (
                Box::new(|a| a.relay.nats_url = vec!["nats://u:secret@[::1".into()]),
                "SAGAD_NATS_URL",
            ),
            (
                Box::new(|a| {
                    a.relay.nats_url = vec!["nats://127.0.0.1:4222".into()];
                    a.relay.nats_stream = "sagad.events".into();
                }),
                "SAGAD_NATS_STREAM",
            ),
            (
                Box::new(|a| {
                    a.relay.nats_url = vec!["nats://127.0.0.1:4222".into()];
                    a.relay.nats_subject_prefix = "sagad.>".into();
                }),
                "SAGAD_NATS_SUBJECT_PREFIX",
            ),
            (
                Box::new(|a| {
                    a.relay.nats_url = vec!["nats://127.0.0.1:4222".into()];
                    a.relay.nats_poll_interval = Duration::ZERO;
                }),
                "SAGAD_NATS_POLL_INTERVAL",
            ),
            (
                Box::new(|a| a.cancellation_policies = "/nonexistent/policies.toml".into()),
                "cancellation policies are invalid:\n/nonexistent/policies.toml: cannot read",
            ),
            (
                Box::new(|a| a.cancellation_policies = "Cargo.toml".into()),
                "Cargo.toml:1:2: unknown policy `package`",
            ),
        ];
        for (change, says) in cases {
            let mut args = valid();
            change(&mut args);
            let err = Settings::from_args(args)
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(says), "{err:?} should mention {says}");
        }
    }

    #[test]
    fn dev_mode_needs_neither_token_nor_key() {
        let mut args = ServeArgs::defaults();
        args.dev = true;
        let s = Settings::from_args(args).unwrap();
        assert_eq!(
            s.api_tokens,
            vec![ApiToken {
                name: DEV_TOKEN_NAME.into(),
                token: DEV_TOKEN.into()
            }]
        );
        assert!(s.runs_stripe_double());
    }

    #[test]
    fn tokens_are_named_pairs_or_bare_and_named_by_position() {
        let mut args = valid();
        args.api_tokens = vec![
            " ops-team:0123456789abcdef ".into(),
            "fedcba9876543210fedcba".into(),
            "booking.api:abcdefghijklmnop:q".into(),
        ];
        let s = Settings::from_args(args).unwrap();
        let names: Vec<(&str, &str)> = s
            .api_tokens
            .iter()
            .map(|t| (t.name.as_str(), t.token.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("ops-team", "0123456789abcdef"),
                ("token-2", "fedcba9876543210fedcba"),
                ("booking.api", "abcdefghijklmnop:q"),
            ]
        );
        assert!(!format!("{:?}", s.api_tokens).contains("0123456789abcdef"));
    }
}
