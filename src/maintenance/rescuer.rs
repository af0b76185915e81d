//! The lease rescuer, for each of the three queues: a row whose worker died (or hung past its
//! lease) is due again at once, and the workers are woken. The completion guard of each table
//! keeps the old worker, should it wake up, from recording anything.

use sqlx::PgPool;
use tracing::info;

use crate::queue::Table;

pub async fn run_once<T: Table>(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let rescued: Vec<T::Id> = T::spec().rescue(pool).await?;
    for id in &rescued {
        info!(queue = T::name(), %id, "lease expired: handed back to the queue");
    }
    Ok(rescued.len())
}
