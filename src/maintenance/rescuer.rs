//! The lease rescuer: a saga whose worker died (or hung past its lease) is queued again. The
//! attempt fence keeps the old worker, should it wake up, from recording anything.

use sqlx::PgPool;
use tracing::info;

use crate::store::sagas;

pub async fn run_once(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let rescued = sagas::rescue_expired_leases(pool).await?;
    for id in &rescued {
        info!(saga_id = %id, "lease expired: saga re-queued");
    }
    Ok(rescued.len())
}
