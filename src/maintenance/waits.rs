//! Wait deadlines: a saga parked for an outside event is woken when its deadline passes; its step
//! then looks at the current state and decides (e.g. 3-D Secure never completed → compensate).

use sqlx::PgPool;
use tracing::info;

use crate::store::sagas;

pub async fn run_once(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let woken = sagas::wake_expired_waits(pool).await?;
    for id in &woken {
        info!(saga_id = %id, "wait deadline passed: saga woken");
    }
    Ok(woken.len())
}
