//! Hold expiry: an inventory hold past its TTL stops blocking the dates, and the saga that owned it
//! gets an `InventoryReleased` event (reason `hold_expired`) in the same transaction.

use sqlx::PgPool;
use tracing::info;

use crate::events::{Event, NewEvent};
use crate::store::{events, inventory, sagas};

pub async fn run_once(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let expired = inventory::expire_holds(&mut tx, 100).await?;
    for (saga_id, hold_id, saga_name) in &expired {
        let version = sagas::reserve_event_versions(&mut tx, *saga_id, 1).await?;
        let event = NewEvent::from(Event::InventoryReleased {
            hold_id: *hold_id,
            reason: "hold_expired".into(),
        });
        events::append(&mut tx, saga_name, saga_id.0, version, &[event]).await?;
        info!(saga_id = %saga_id, hold_id = %hold_id, "inventory hold expired");
    }
    tx.commit().await?;
    Ok(expired.len())
}
