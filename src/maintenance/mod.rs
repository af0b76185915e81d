//! Background upkeep, each piece in its own file: re-queue sagas whose lease ran out, wake sagas
//! whose wait deadline passed, expire abandoned inventory holds.

pub mod holds;
pub mod rescuer;
pub mod waits;

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Runs every maintenance task once per `interval` until `shutdown`.
pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = run_once(&pool).await {
            warn!(error = %e, "maintenance round failed");
            crate::telemetry::count_error("maintenance");
        }
    }
}

/// One round of every task (also used by tests to avoid waiting for a tick).
///
/// Holds expire before waits are woken: a 3-D Secure wait never outlasts its saga's hold, so the
/// two deadlines often fall together, and a woken saga's compensation would otherwise race this
/// round to release the same hold (once either way, but with `authentication_timeout` or
/// `hold_expired` as the reason depending on timing).
pub async fn run_once(pool: &PgPool) -> Result<(), sqlx::Error> {
    rescuer::run_once(pool).await?;
    holds::run_once(pool).await?;
    waits::run_once(pool).await?;
    Ok(())
}
