//! LISTEN/NOTIFY wake-ups shared by every queue (sagas, the Stripe inbox, webhook deliveries).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// LISTENs on `channel` and wakes `wake` on every notification until `shutdown`. Reconnects with
/// backoff after errors, and wakes once after every (re)connect because a notification may have
/// been missed meanwhile; the queues' polling covers the gaps.
pub async fn wake_on(
    pool: PgPool,
    channel: &'static str,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let connected = match PgListener::connect_with(&pool).await {
            Ok(mut l) => l.listen(channel).await.map(|()| l),
            Err(e) => Err(e),
        };
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, channel, "LISTEN failed; polling meanwhile");
                tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = shutdown.cancelled() => return }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        wake.notify_one();
        loop {
            tokio::select! {
                r = listener.recv() => match r {
                    Ok(_) => wake.notify_one(),
                    Err(e) => { debug!(error = %e, channel, "LISTEN connection lost"); break; }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
