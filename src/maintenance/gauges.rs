//! The gauges `/metrics` shows about the database (saga queue depth, the oldest due saga's wait,
//! sagas by name and status), read here every few seconds rather than at each scrape: a scrape
//! costs no query, whoever sends it and however often.

use sqlx::PgPool;

use crate::store::sagas;

pub async fn run_once(pool: &PgPool) -> Result<(), sqlx::Error> {
    let depth = sagas::queue_depth(pool).await?;
    let counts = sagas::count_by_status(pool).await?;
    crate::telemetry::set_saga_gauges(depth, &counts);
    Ok(())
}
