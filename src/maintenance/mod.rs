//! Background upkeep, after river's `internal/maintenance/`: one file per service, all run by one
//! loop in every process that runs workers (not with `SAGAD_ROLE=api`). Each service states how
//! often it runs once, in [`SERVICES`].
//!
//! - [`rescuer`]: rows of the three queues (sagas, Stripe events, webhook deliveries) whose lease
//!   ran out are due again;
//! - [`holds`]: inventory holds past their TTL free their dates;
//! - [`waits`]: sagas parked past their wait deadline are woken;
//! - [`rate_windows`]: old per-second counts of the webhook rate limits go;
//! - [`cleaner`]: delivered webhook deliveries (with their attempts) and settled Stripe events go
//!   once older than the retention. Events stay: they are the record;
//! - [`gauges`]: the database's gauges for `/metrics` (queue depth, sagas by status) are read.

pub mod cleaner;
pub mod gauges;
pub mod holds;
pub mod rate_windows;
pub mod rescuer;
pub mod waits;

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::queues::{DeliveryQueue, SagaQueue, StripeEventQueue};

/// How maintenance runs (built by [`crate::config::Settings`]).
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// The length of one round; each service runs every so many rounds ([`SERVICES`]).
    pub interval: Duration,
    /// How long delivered webhook deliveries (with their attempts) and settled Stripe events are
    /// kept (`SAGAD_RETENTION`).
    pub retention: Duration,
}

/// The length of a round.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a service's run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing more to do now.
    Done,
    /// It stopped at its cap with work left: it runs again next round.
    More,
}

/// A periodic service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    SagaLeases,
    StripeEventLeases,
    DeliveryLeases,
    Holds,
    Waits,
    RateWindows,
    DeliveryCleaner,
    StripeEventCleaner,
    Gauges,
}

/// Cleaners run every this many rounds (a minute by default), and again the next round while
/// they stop at their cap.
const CLEAN_EVERY: u64 = 60;

/// The database's gauges are read every this many rounds (5 seconds by default).
pub const GAUGES_EVERY: u64 = 5;

/// Every service, in the order a round runs them, and every how many rounds it runs.
///
/// Holds expire before waits are woken: a 3-D Secure wait never outlasts its saga's hold, so the
/// two deadlines often fall together, and a woken saga's compensation would otherwise race this
/// round to release the same hold (once either way, but with `authentication_timeout` or
/// `hold_expired` as the reason depending on timing).
pub const SERVICES: [(Service, u64); 9] = [
    (Service::SagaLeases, 1),
    (Service::StripeEventLeases, 1),
    (Service::DeliveryLeases, 1),
    (Service::Holds, 1),
    (Service::Waits, 1),
    (Service::RateWindows, 1),
    (Service::DeliveryCleaner, CLEAN_EVERY),
    (Service::StripeEventCleaner, CLEAN_EVERY),
    (Service::Gauges, GAUGES_EVERY),
];

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::SagaLeases => "saga_leases",
            Service::StripeEventLeases => "stripe_event_leases",
            Service::DeliveryLeases => "delivery_leases",
            Service::Holds => "holds",
            Service::Waits => "waits",
            Service::RateWindows => "rate_windows",
            Service::DeliveryCleaner => "delivery_cleaner",
            Service::StripeEventCleaner => "stripe_event_cleaner",
            Service::Gauges => "gauges",
        }
    }

    /// Runs the service once.
    pub async fn run_once(
        self,
        pool: &PgPool,
        config: &MaintenanceConfig,
    ) -> Result<Progress, sqlx::Error> {
        let batches = cleaner::Batches::default();
        match self {
            Service::SagaLeases => rescuer::run_once::<SagaQueue>(pool)
                .await
                .map(|_| Progress::Done),
            Service::StripeEventLeases => rescuer::run_once::<StripeEventQueue>(pool)
                .await
                .map(|_| Progress::Done),
            Service::DeliveryLeases => rescuer::run_once::<DeliveryQueue>(pool)
                .await
                .map(|_| Progress::Done),
            Service::Holds => holds::run_once(pool).await.map(|_| Progress::Done),
            Service::Waits => waits::run_once(pool).await.map(|_| Progress::Done),
            Service::RateWindows => rate_windows::run_once(pool).await.map(|_| Progress::Done),
            Service::DeliveryCleaner => cleaner::deliveries(pool, config.retention, batches).await,
            Service::StripeEventCleaner => {
                cleaner::stripe_events(pool, config.retention, batches).await
            }
            Service::Gauges => gauges::run_once(pool).await.map(|_| Progress::Done),
        }
    }
}

/// Whether a service that runs every `every` rounds runs in round `round`: on schedule, or
/// because its last run stopped with work left.
fn runs(round: u64, every: u64, behind: bool) -> bool {
    behind || round.is_multiple_of(every.max(1))
}

/// Runs the services round after round, one round per `config.interval`, until `shutdown`. A
/// service that fails is logged and counted; the others run on.
pub async fn run(pool: PgPool, config: MaintenanceConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut behind = [false; SERVICES.len()];
    for round in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for (i, (service, every)) in SERVICES.into_iter().enumerate() {
            if !runs(round, every, behind[i]) {
                continue;
            }
            behind[i] = match service.run_once(&pool, &config).await {
                Ok(progress) => progress == Progress::More,
                Err(e) => {
                    warn!(service = service.name(), error = %e, "maintenance failed");
                    crate::telemetry::count_error("maintenance");
                    false
                }
            };
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_runs_on_its_own_schedule_and_again_while_behind() {
        let rounds = |every: u64| (0..130).filter(|r| runs(*r, every, false)).count();
        assert_eq!(rounds(1), 130);
        assert_eq!(rounds(CLEAN_EVERY), 3, "rounds 0, 60 and 120");
        assert!(
            runs(7, CLEAN_EVERY, true),
            "a cleaner left behind runs next round"
        );
        assert!(!runs(7, CLEAN_EVERY, false));
    }

    #[test]
    fn the_quick_services_run_every_round_and_the_cleaners_and_gauges_seldom() {
        for (service, every) in SERVICES {
            match service {
                Service::DeliveryCleaner | Service::StripeEventCleaner | Service::Gauges => {
                    assert!(every > 1, "{service:?}")
                }
                _ => assert_eq!(every, 1, "{service:?}"),
            }
        }
    }
}
