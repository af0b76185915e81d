//! Direct dispatch: rows this process leased to itself as it wrote them go straight to its own
//! workers, without a claim (and without a wake-up).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Handover, Leased, Table};

/// Hands rows leased to this process straight to its workers. The lease protects such a row as
/// any claim does: if the process dies, the rescuer frees it.
///
/// When every worker is busy, up to `local_queue` more rows wait in a local queue, leased too, and
/// go before anything claimed from the table, first come, first served: while the queue holds any,
/// a new row queues behind them instead of taking a worker that just freed up (which the loop gives
/// to the queue's head). The bound keeps the wait short next to the lease; should a queued row's
/// lease run out anyway, another process may claim it, and the table's completion guard lets only
/// one of them record anything.
pub struct Direct<T: Table> {
    pub(super) slots: Arc<Semaphore>,
    pub(super) queue: Arc<Semaphore>,
    /// Places in the local queue (all free when nothing waits in it).
    pub(super) queue_places: usize,
    pub(super) tx: mpsc::UnboundedSender<Handover<T::Row>>,
    /// Whom the rows are leased to (`locked_by`).
    pub worker_id: String,
    pub lease: Duration,
}

impl<T: Table> Clone for Direct<T> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
            queue: self.queue.clone(),
            queue_places: self.queue_places,
            tx: self.tx.clone(),
            worker_id: self.worker_id.clone(),
            lease: self.lease,
        }
    }
}

/// Where a directly dispatched row will run.
pub enum Reservation {
    /// A free worker, now.
    Worker(OwnedSemaphorePermit),
    /// A place in the local queue.
    Queued(OwnedSemaphorePermit),
}

impl<T: Table> Direct<T> {
    /// A free worker slot or, failing that, a place in the local queue, if there is one now.
    pub fn try_reserve(&self) -> Option<Reservation> {
        // Nothing waits in the local queue: a free worker may take it now. Otherwise it queues
        // behind those (a new row taking each freed worker would starve them for seconds).
        if self.queue.available_permits() == self.queue_places
            && let Ok(p) = self.slots.clone().try_acquire_owned()
        {
            return Some(Reservation::Worker(p));
        }
        self.queue
            .clone()
            .try_acquire_owned()
            .ok()
            .map(Reservation::Queued)
    }

    /// Gives a row leased to this process to a worker; returns its id if the workers have stopped
    /// (the caller hands its lease back).
    pub fn hand_over(&self, leased: Leased<T::Row>, r: Reservation) -> Result<(), T::Id> {
        self.tx.send((leased, r)).map_err(|e| T::id(&e.0.0.row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Options, Workers};
    use crate::store::queues::SagaQueue;

    #[tokio::test]
    async fn a_new_row_queues_behind_waiting_ones_when_a_worker_frees_up() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://unused")
            .expect("a lazy pool");
        let options = Options {
            workers: 2,
            local_queue: 2,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            worker_id: "w".into(),
        };
        let workers = Workers::new(SagaQueue, pool, options);
        let d = workers.direct();
        let first = d.try_reserve();
        let second = d.try_reserve();
        assert!(matches!(first, Some(Reservation::Worker(_))));
        assert!(matches!(second, Some(Reservation::Worker(_))));
        let waiting = d.try_reserve();
        assert!(matches!(waiting, Some(Reservation::Queued(_))));
        // A worker frees up: it is the waiting row's, so the next one queues behind it.
        drop(first);
        let behind = d.try_reserve();
        assert!(matches!(behind, Some(Reservation::Queued(_))));
        // The loop took both off the queue (the first onto the freed worker): nothing waits any
        // more, so a free worker takes a new row at once.
        drop((waiting, behind, second));
        assert!(matches!(d.try_reserve(), Some(Reservation::Worker(_))));
    }
}
