//! The work-queue core that the saga engine, the Stripe inbox and outgoing webhook delivery share,
//! after river's producer: one loop claims due rows for free worker slots (`FOR UPDATE SKIP
//! LOCKED`, under a lease, committed at once), runs each in its own task, sleeps until the next
//! row is due (bounded by the poll interval) unless a NOTIFY wakes it first, and on shutdown
//! stops claiming, lets the tasks in flight finish within a grace period, aborts the rest and
//! hands back every lease this process still holds.
//!
//! What differs between the queues is a [`Table`] (its statements live in `store::queues`) and a
//! handler that runs one claimed row. Rows whose lease ran out are put back by the rescuers in
//! `maintenance`, which use the same [`Table`].
//!
//! A queue may also take rows it leased itself without a claim ([`Direct`]): the saga API inserts
//! each new saga already leased to a free worker of this process, or to a short local queue. Claims
//! happen only while a backlog may exist (start-up, a NOTIFY, the next due time, a full batch), so
//! a busy process fed that way does not query the table after every row; freed workers alternate
//! between the local queue and the table while both have work.

mod direct;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use crate::store::queues::Spec;
pub use direct::{Direct, Reservation};

/// A table of leased work, as the loop and the rescuers see it. Its statements are made from its
/// [`Spec`] (`store::queues`); a table may claim its own way.
pub trait Table: Send + Sync + 'static {
    /// A claimed row, with what its handler needs.
    type Row: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin + 'static;
    /// How logs name a row.
    type Id: std::fmt::Display
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + Send
        + Unpin;
    /// The shortest sleep between two claims when the next row is already due: rows may be due
    /// yet not claimable (a webhook endpoint at its concurrency cap), and the loop must not spin.
    const MIN_SLEEP: Duration = Duration::ZERO;

    /// Where the table keeps its queue.
    fn spec() -> &'static Spec;

    fn id(row: &Self::Row) -> Self::Id;

    /// The queue's name in logs and metrics: its table.
    fn name() -> &'static str {
        Self::spec().table
    }

    /// Claims up to `limit` due rows for `worker` under a lease of `lease`, committed at once.
    fn claim(
        &self,
        pool: &PgPool,
        worker: &str,
        lease: Duration,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send {
        Self::spec().claim(pool, worker, lease, limit)
    }

    /// The claim failed only because a concurrent claim took what it wanted (nothing was
    /// claimed): claim again at once, from a fresh snapshot.
    fn contended(_error: &sqlx::Error) -> bool {
        false
    }
}

/// A row leased to this process, and when the lease was taken by this process's clock: before the
/// statement that took it was sent, so that `since + lease` is never later than the lease's end as
/// the database counts it.
pub struct Leased<R> {
    pub row: R,
    pub since: Instant,
}

/// How a row reached its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Leased by this process's API to a free worker.
    Direct,
    /// Leased by this process's API, then waited in the local queue.
    Queued,
    /// Claimed from the table.
    Claimed,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Queued => "queued",
            Via::Claimed => "claimed",
        }
    }
}

/// How a queue's workers run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows worked on at once by this process.
    pub workers: usize,
    /// Places in the local queue ([`Direct`]); 0 for a queue fed only by claims.
    pub local_queue: usize,
    /// How long a claim lasts.
    pub lease: Duration,
    /// Longest sleep without a NOTIFY.
    pub poll_interval: Duration,
    /// How long tasks in flight may run on shutdown before they are aborted.
    pub shutdown_grace: Duration,
    /// Identifies this process in `locked_by`.
    pub worker_id: String,
}

type Handover<R> = (Leased<R>, Reservation);

/// One queue's workers: the claim loop, its worker slots and its local queue.
pub struct Workers<T: Table> {
    table: T,
    pool: PgPool,
    options: Options,
    slots: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    direct_tx: mpsc::UnboundedSender<Handover<T::Row>>,
    direct_rx: mpsc::UnboundedReceiver<Handover<T::Row>>,
    running: Arc<AtomicBool>,
}

impl<T: Table> Workers<T> {
    pub fn new(table: T, pool: PgPool, options: Options) -> Self {
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        Self {
            table,
            pool,
            slots: Arc::new(Semaphore::new(options.workers.max(1))),
            queue: Arc::new(Semaphore::new(options.local_queue)),
            options,
            direct_tx,
            direct_rx,
            running: Arc::default(),
        }
    }

    /// The handle that gives rows leased by this process straight to these workers.
    pub fn direct(&self) -> Direct<T> {
        Direct {
            slots: self.slots.clone(),
            queue: self.queue.clone(),
            queue_places: self.options.local_queue,
            tx: self.direct_tx.clone(),
            worker_id: self.options.worker_id.clone(),
            lease: self.options.lease,
        }
    }

    /// True while the loop claims work (for `/readyz`).
    pub fn running_flag(&self) -> Arc<AtomicBool> {
        self.running.clone()
    }

    /// Claims and runs rows until `shutdown`, then drains and hands back what it holds.
    /// `handle` starts the work on one row (its synchronous part runs in the loop; the future it
    /// returns runs in its own task, holding a worker slot). `wake` fires on the table's NOTIFY
    /// channel ([`crate::store::listen::Channels`]); a handler that puts its row back due soon
    /// may fire it too, so that the loop looks again.
    pub async fn run<H, F>(mut self, wake: Arc<Notify>, shutdown: CancellationToken, mut handle: H)
    where
        H: FnMut(Leased<T::Row>, Via) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let o = self.options.clone();
        let mut tasks = JoinSet::new();
        info!(queue = T::name(), workers = o.workers, worker_id = %o.worker_id, "workers started");
        self.running.store(true, Ordering::SeqCst);

        // `backlog`: due rows may be waiting (start-up, a NOTIFY, the timer, a full batch). Claims
        // happen only then, so workers fed by direct dispatch do not query after every row.
        let mut backlog = true;
        let mut next_check = tokio::time::Instant::now();
        // Rows this process leased itself while every worker was busy.
        let mut queued: VecDeque<(Leased<T::Row>, OwnedSemaphorePermit)> = VecDeque::new();
        // While both the local queue and the table have work, freed workers alternate between
        // them: under sustained load the local queue is never empty, and a row that went through
        // the table (started while this process was full, or due for a retry) would otherwise
        // wait until the load stops.
        let mut table_turn = false;
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            // Take the worker slots first, then claim that many: direct dispatch takes slots too.
            let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
            while let Ok(permit) = self.slots.clone().try_acquire_owned() {
                if backlog && (queued.is_empty() || table_turn) {
                    table_turn = false;
                    permits.push(permit);
                    continue;
                }
                table_turn = true;
                let Some((leased, place)) = queued.pop_front() else {
                    break;
                };
                drop(place);
                if leased.since + o.lease <= Instant::now() {
                    // Waited past its lease: the rescuer hands it to whoever claims it next.
                    warn!(queue = T::name(), id = %T::id(&leased.row), "a locally queued row outwaited its lease");
                    continue;
                }
                tasks.spawn(holding(permit, handle(leased, Via::Queued)));
            }
            let free = permits.len();
            if free > 0 {
                let since = Instant::now();
                let claimed = match self
                    .table
                    .claim(&self.pool, &o.worker_id, o.lease, free as i64)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) if T::contended(&e) => {
                        debug!(
                            queue = T::name(),
                            "a concurrent claim took the same rows; claiming again"
                        );
                        continue;
                    }
                    Err(e) => {
                        warn!(queue = T::name(), error = %e, "claiming failed");
                        crate::telemetry::count_error(T::spec().table);
                        Vec::new()
                    }
                };
                let got = claimed.len();
                for row in claimed {
                    let Some(permit) = permits.pop() else {
                        break; // cannot happen: at most `free` rows come back
                    };
                    tasks.spawn(holding(permit, handle(Leased { row, since }, Via::Claimed)));
                }
                drop(permits);
                if got < free {
                    // Drained: sleep until the next row is due (or the poll interval).
                    backlog = false;
                    let due = T::spec().next_due_in(&self.pool).await.unwrap_or_else(|e| {
                        debug!(queue = T::name(), error = %e, "next due time unknown");
                        None
                    });
                    next_check =
                        tokio::time::Instant::now() + sleep_for(due, o.poll_interval, T::MIN_SLEEP);
                    if !queued.is_empty() {
                        // The workers the table did not need go to the local queue now.
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = wake.notified() => backlog = true,
                Some((leased, r)) = self.direct_rx.recv() => match r {
                    Reservation::Worker(permit) => {
                        tasks.spawn(holding(permit, handle(leased, Via::Direct)));
                    }
                    Reservation::Queued(place) => queued.push_back((leased, place)),
                },
                // Full and behind: claim (or take from the local queue) as soon as a slot frees.
                Some(_) = tasks.join_next(), if (backlog || !queued.is_empty()) && !tasks.is_empty() => {}
                _ = tokio::time::sleep_until(next_check), if !backlog => backlog = true,
                _ = tokio::time::sleep(o.poll_interval), if backlog => {}
                _ = shutdown.cancelled() => {}
            }
        }
        self.direct_rx.close();
        // Locally queued rows are handed back with every other lease this process holds, below.
        drop(queued);

        info!(
            queue = T::name(),
            in_flight = tasks.len(),
            "stopping: no new claims"
        );
        self.running.store(false, Ordering::SeqCst);
        let drained = tokio::time::timeout(o.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                queue = T::name(),
                in_flight = tasks.len(),
                "grace period over: abandoning the work in flight"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        match T::spec().release(&self.pool, &o.worker_id).await {
            Ok(0) => {}
            Ok(n) => info!(queue = T::name(), released = n, "released leases"),
            Err(e) => {
                warn!(queue = T::name(), error = %e, "could not release leases; they will expire")
            }
        }
        info!(queue = T::name(), "workers stopped");
    }
}

/// Runs `work`, then frees its worker slot.
async fn holding(permit: OwnedSemaphorePermit, work: impl Future<Output = ()>) {
    work.await;
    drop(permit);
}

/// How long the loop sleeps when the table has nothing more to claim now: until the next row is
/// due (`due_in`, by the database's clock: [`Spec::next_due_in`]), at least `floor`, at most
/// `poll` (also when nothing is due, or the time is unknown).
pub fn sleep_for(due_in: Option<Duration>, poll: Duration, floor: Duration) -> Duration {
    match due_in {
        Some(d) => d.clamp(floor.min(poll), poll),
        None => poll,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(1);

    /// Due in `ms` milliseconds (the database says zero for a row already due).
    fn at(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    #[test]
    fn sleeps_until_the_next_row_is_due() {
        assert_eq!(
            sleep_for(at(250), POLL, Duration::ZERO),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn never_sleeps_longer_than_the_poll_interval() {
        assert_eq!(sleep_for(at(60_000), POLL, Duration::ZERO), POLL);
        assert_eq!(sleep_for(None, POLL, Duration::ZERO), POLL);
    }

    #[test]
    fn a_row_already_due_is_claimed_at_once_or_after_the_floor() {
        assert_eq!(sleep_for(at(0), POLL, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            sleep_for(at(0), POLL, Duration::from_millis(5)),
            Duration::from_millis(5)
        );
        assert_eq!(
            sleep_for(at(2), POLL, Duration::from_millis(5)),
            Duration::from_millis(5)
        );
        // A floor above the poll interval gives way to it.
        assert_eq!(sleep_for(at(0), POLL, Duration::from_secs(5)), POLL);
    }
}
