//! Wiring: one entry point, `run(settings, pool, listener, shutdown)`, that serves the API and runs
//! the engine until `shutdown` fires. Tests bind port 0 and cancel on demand.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Role, Settings};
use crate::engine::actions::Deps;
use crate::engine::registry::{self, Registry};
use crate::engine::{self as engine_mod, Engine};
use crate::http::{self, AppState};
use crate::store;
use crate::stripe::client::StripeClient;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Engine(#[from] engine_mod::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Outbound(#[from] crate::outbound::Error),
    #[error(transparent)]
    Stripe(#[from] crate::stripe::Error),
    #[error(transparent)]
    Relay(#[from] crate::relay::Error),
    #[error(
        "no Stripe secret key: the settings name none (only `sagad serve --dev` runs without one, with the test double)"
    )]
    NoStripeKey,
}

/// The HTTP client for notifications: pooled, with timeouts. Redirects are not followed: a 301 or
/// 302 would turn the signed POST into a GET without its body; the gateway's URL is configured.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("sagad/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Where a sagad process listens: the API's address, and `/metrics`'s own when it has one
/// (`SAGAD_METRICS_LISTEN`; otherwise the API's address serves it).
pub struct Listeners {
    pub api: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Self { api, metrics: None }
    }
}

pub async fn run(
    settings: Settings,
    pool: PgPool,
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Listeners {
        api: listener,
        metrics: metrics_listener,
    } = listeners.into();
    // The recorder first: the background tasks report from their first moment.
    let metrics = crate::telemetry::metrics_handle();
    let secret_key = settings
        .stripe
        .secret_key
        .as_deref()
        .ok_or(Error::NoStripeKey)?;
    let stripe = StripeClient::new(secret_key, settings.stripe.api_base.as_deref())?;
    // The relay runs wherever workers run; NATS must be reachable at start (a wrong URL is found
    // now, not at the first event).
    let relay = match settings.relay.clone() {
        Some(config) if settings.role != Role::Api => {
            Some(crate::relay::Relay::connect(config).await?)
        }
        _ => None,
    };
    let relay_max_lag = relay
        .as_ref()
        .and(settings.relay.as_ref())
        .map(|c| c.max_lag);
    // The database's clock decides every time sagad writes or compares with a column.
    let clock = crate::clock::Clock::synced(&pool, settings.clock_skew).await?;
    let clock_task = tokio::spawn(clock.clone().run(pool.clone(), shutdown.clone()));
    let registry = Arc::new(Registry::load(pool.clone(), settings.definitions).await?);
    let breakers = crate::breaker::Breakers::new(
        pool.clone(),
        settings.engine.worker_id.clone(),
        settings.breakers.clone(),
        clock.clone(),
    );
    // A process that runs sagas knows the breakers before it runs any (a restart while one is
    // open keeps its sagas paused); without the database now, the refresh task catches up.
    if settings.role != Role::Api
        && let Err(e) = breakers.refresh().await
    {
        warn!(error = %e, "could not read the circuit breakers at start");
    }
    let deps = Deps {
        stripe: stripe.clone(),
        http: http_client(),
        notify: settings.notify,
        breakers: breakers.clone(),
        clock: clock.clone(),
    };
    // One LISTEN connection for the whole process (see `store::listen`).
    let mut channels = store::listen::Channels::new(pool.clone());
    let (finished, _) = broadcast::channel(1024);
    channels.forward_ids(store::DONE_CHANNEL, finished.clone());

    // Connections handed from one hot statement to the next without sqlx's check (store::kept).
    let kept = Arc::new(store::kept::Kept::new(pool.clone()));
    let kept_task = tokio::spawn({
        let (kept, shutdown) = (kept.clone(), shutdown.clone());
        async move { kept.run(shutdown).await }
    });
    let (engine_task, engine_running, dispatch) = if settings.role != Role::Api {
        let engine = Engine::new(
            pool.clone(),
            kept.clone(),
            registry.clone(),
            deps,
            settings.engine,
        )?;
        let flag = engine.running_flag();
        // A process that runs both API and workers starts its sagas itself.
        let dispatch = (settings.role == Role::All).then(|| engine.direct_dispatch());
        (
            Some(tokio::spawn(engine.run(
                channels.wake(store::WORK_CHANNEL),
                channels.log_ids(store::CANCEL_CHANNEL),
                shutdown.clone(),
            ))),
            Some(flag),
            dispatch,
        )
    } else {
        (None, None, None)
    };

    // The breakers' copy, counts and wake-ups are kept fresh wherever workers run.
    let breakers_task = (settings.role != Role::Api).then(|| {
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { breakers.run(shutdown).await }
        })
    });

    // The Stripe inbox workers run beside the engine (same role), and stop with it.
    let inbox_task = (settings.role != Role::Api).then(|| {
        tokio::spawn(crate::inbound::stripe::run(
            pool.clone(),
            stripe,
            settings.inbound_stripe.inbox.clone(),
            clock.clone(),
            channels.wake(crate::store::stripe_inbox::INBOX_CHANNEL),
            shutdown.clone(),
        ))
    });
    // Outgoing webhook delivery runs wherever the engine runs.
    let outbound_task = if settings.role != Role::Api {
        let dispatcher = crate::outbound::Dispatcher::new(
            pool.clone(),
            settings.outbound.clone(),
            clock.clone(),
        )?;
        let wake = channels.wake(store::outbound::WEBHOOK_CHANNEL);
        Some(tokio::spawn(dispatcher.run(wake, shutdown.clone())))
    } else {
        None
    };

    // Maintenance (lease rescue, deadlines, cleaners) runs wherever workers run.
    let maintenance_task = (settings.role != Role::Api).then(|| {
        tokio::spawn(crate::maintenance::run(
            pool.clone(),
            settings.maintenance.clone(),
            shutdown.clone(),
        ))
    });

    // The event relay to NATS JetStream, in one process at a time.
    let relay_task =
        relay.map(|r| tokio::spawn(r.run(pool.clone(), clock.clone(), shutdown.clone())));

    let listener_task = tokio::spawn(channels.run(shutdown.clone()));

    let state = AppState {
        pool: pool.clone(),
        kept: kept.clone(),
        registry,
        tokens: Arc::new(settings.api_tokens),
        finished,
        engine_running,
        dispatch,
        metrics,
        metrics_token: settings.metrics.token.as_deref().map(Arc::from),
        max_wait: settings.max_wait,
        booking_rules: settings.booking_rules,
        policies: settings.policies.clone(),
        stripe_signatures: settings.inbound_stripe.verifier().map(Arc::new),
        outbound: Arc::new(settings.outbound),
        clock,
        console: Arc::default(),
        relay_max_lag,
    };
    let metrics_task = match metrics_listener {
        Some(l) => {
            info!(addr = %l.local_addr()?, "metrics listening");
            let stop = shutdown.clone();
            let app = http::metrics_app(state.clone());
            Some(tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }))
        }
        None => None,
    };
    let app = http::app(state, settings.role != Role::Worker, metrics_task.is_none());
    info!(addr = %listener.local_addr()?, role = ?settings.role, "sagad listening");
    let stop = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if served.is_err() {
        // The server died on its own: stop the rest too.
        shutdown.cancel();
    }
    if let Some(t) = engine_task
        && let Err(e) = t.await
    {
        warn!(error = %e, "engine task ended abnormally");
    }
    if let Some(t) = inbox_task
        && let Err(e) = t.await
    {
        warn!(error = %e, "stripe inbox task ended abnormally");
    }
    if let Some(t) = outbound_task
        && let Err(e) = t.await
    {
        warn!(error = %e, "webhook delivery task ended abnormally");
    }
    if let Some(t) = maintenance_task
        && let Err(e) = t.await
    {
        warn!(error = %e, "maintenance task ended abnormally");
    }
    if let Some(t) = relay_task
        && let Err(e) = t.await
    {
        warn!(error = %e, "NATS relay task ended abnormally");
    }
    if let Some(t) = breakers_task
        && let Err(e) = t.await
    {
        warn!(error = %e, "circuit breaker task ended abnormally");
    }
    let metrics_served = match metrics_task {
        Some(t) => match t.await {
            Ok(served) => served,
            Err(e) => {
                warn!(error = %e, "metrics server task ended abnormally");
                Ok(())
            }
        },
        None => Ok(()),
    };
    listener_task.abort();
    clock_task.abort();
    // `Kept::run` gave every kept connection back when shutdown began, and keeps none since.
    let _ = kept_task.await;
    served?;
    metrics_served?;
    Ok(())
}
