//! Webhook rate windows: the per-endpoint, per-second counts of admitted attempts
//! (`webhook_rate_windows`) are needed only for the current second; older ones go.

use sqlx::PgPool;

use crate::store::outbound;

pub async fn run_once(pool: &PgPool) -> Result<u64, sqlx::Error> {
    outbound::prune_rate_windows(pool).await
}
