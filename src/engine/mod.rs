//! The saga engine: definitions, retry policy, the state machine, actions and the worker pool.

pub mod actions;
pub mod definition;
pub mod model;
pub mod outcome;
pub mod plan;
pub mod record;
pub mod registry;
pub mod retry;
pub mod runner;
pub mod start;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{self, sagas};
use actions::Deps;
use registry::Registry;
use runner::Worker;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sagas this process drives at once.
    pub workers: usize,
    /// Sagas started here while every worker is busy that wait in this process, already leased
    /// to it, instead of going through the database (a NOTIFY, then a claim); `None`:
    /// [`LOCAL_QUEUE_PER_WORKER`] per worker.
    pub local_queue: Option<usize>,
    /// How long a claim is valid; a worker that dies is replaced after this.
    pub lease: Duration,
    /// Fallback polling when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// How often the maintenance tasks (lease rescuer, wait deadlines, hold expiry) run.
    pub maintenance_interval: Duration,
    /// How long in-flight steps may take to finish on shutdown before their leases are released.
    pub shutdown_grace: Duration,
    /// Identifies this process in `locked_by`.
    pub worker_id: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            local_queue: None,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            maintenance_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(20),
            worker_id: default_worker_id(),
        }
    }
}

/// The local queue's default size, per worker. A closed loop of two clients per worker keeps
/// one saga waiting per worker, and a saga whose worker just finished is followed at once by its
/// client's next start, before the engine has taken the next one off the queue: with places for
/// only one saga per worker, a third of the starts went through the database instead (a NOTIFY
/// and a claim each; `docs/BENCHMARKS.md`).
pub const LOCAL_QUEUE_PER_WORKER: usize = 4;

impl EngineConfig {
    /// Places in the local queue.
    fn local_queue(&self) -> usize {
        self.local_queue
            .unwrap_or(LOCAL_QUEUE_PER_WORKER * self.workers)
    }
}

/// `host-pid-random`: unique per process, readable in `locked_by`.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sagad".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "step `{step}` of saga `{saga}` has a timeout of {timeout:?}, which must be shorter than the lease ({lease:?}); \
         raise SAGAD_LEASE or lower the step's timeout"
    )]
    TimeoutExceedsLease {
        saga: String,
        step: String,
        timeout: Duration,
        lease: Duration,
    },
}

/// Hands sagas started by this process's API straight to its own workers: the saga is inserted
/// already leased to this engine, so no claim (and no wake-up) is needed. The lease protects it as
/// any claim does: if the process dies, the rescuer frees it.
///
/// When every worker is busy, up to `local_queue` more sagas wait in a local queue, leased too, and
/// go before anything claimed from the database, first come, first served: while the queue holds
/// any, a new saga queues behind them instead of taking a worker that just freed up (which the
/// engine gives to the queue's head). The bound keeps the wait short next to the lease;
/// should a queued saga's lease run out anyway, another process may claim it, and the fence lets
/// only one of them record anything.
#[derive(Clone)]
pub struct DirectDispatch {
    slots: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    /// Places in the local queue (all free when nothing waits in it).
    queue_places: usize,
    tx: mpsc::UnboundedSender<(Leased, Reservation)>,
    pub worker_id: String,
    pub lease: Duration,
}

/// A saga leased to this process, and when the lease was taken by this process's clock: before
/// the statement that took it was sent, so that `since + lease` is never later than the lease's
/// end as the database counts it.
pub struct Leased {
    pub row: sagas::SagaRow,
    pub since: std::time::Instant,
}

/// Where a directly dispatched saga will run.
pub enum Reservation {
    /// A free worker, now.
    Worker(OwnedSemaphorePermit),
    /// A place in the local queue.
    Queued(OwnedSemaphorePermit),
}

impl DirectDispatch {
    /// A free worker slot or, failing that, a place in the local queue, if there is one now.
    pub fn try_reserve(&self) -> Option<Reservation> {
        // Nothing waits in the local queue: a free worker may take it now. Otherwise it queues
        // behind those (a new saga taking each freed worker would starve them for seconds).
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

    /// Gives a saga leased to this engine to a worker; returns its id if the engine has stopped.
    pub fn hand_over(&self, saga: Leased, r: Reservation) -> Result<(), uuid::Uuid> {
        self.tx.send((saga, r)).map_err(|e| e.0.0.row.id)
    }
}

pub struct Engine {
    running: Arc<std::sync::atomic::AtomicBool>,
    slots: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    direct_tx: mpsc::UnboundedSender<(Leased, Reservation)>,
    direct_rx: mpsc::UnboundedReceiver<(Leased, Reservation)>,
    pool: PgPool,
    kept: Arc<store::kept::Kept>,
    registry: Arc<Registry>,
    deps: Deps,
    config: EngineConfig,
}

impl Engine {
    /// `kept`: where the workers' outcome statements take their connections
    /// ([`store::kept`]), shared with the API's start statements.
    pub fn new(
        pool: PgPool,
        kept: Arc<store::kept::Kept>,
        registry: Arc<Registry>,
        deps: Deps,
        config: EngineConfig,
    ) -> Result<Self, Error> {
        for name in registry.names() {
            if let Some(def) = registry.latest(&name) {
                for step in &def.steps {
                    if step.timeout >= config.lease {
                        return Err(Error::TimeoutExceedsLease {
                            saga: def.name.clone(),
                            step: step.name.clone(),
                            timeout: step.timeout,
                            lease: config.lease,
                        });
                    }
                }
            }
        }
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        Ok(Self {
            running: Arc::default(),
            slots: Arc::new(Semaphore::new(config.workers)),
            queue: Arc::new(Semaphore::new(config.local_queue())),
            direct_tx,
            direct_rx,
            pool,
            kept,
            registry,
            deps,
            config,
        })
    }

    /// The handle the API uses to give new sagas straight to this engine.
    pub fn direct_dispatch(&self) -> DirectDispatch {
        DirectDispatch {
            slots: self.slots.clone(),
            queue: self.queue.clone(),
            queue_places: self.config.local_queue(),
            tx: self.direct_tx.clone(),
            worker_id: self.config.worker_id.clone(),
            lease: self.config.lease,
        }
    }

    /// True while the dispatcher claims work (for `/readyz`).
    pub fn running_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.running.clone()
    }

    /// Claims and drives sagas until `shutdown`; then stops claiming, lets in-flight steps finish
    /// within the grace period, and releases the leases of any that did not.
    /// `wake` fires on `store::WORK_CHANNEL` notifications; `cancellations` logs the sagas whose
    /// cancellation was notified on `store::CANCEL_CHANNEL` ([`store::listen::Channels`]).
    pub async fn run(
        mut self,
        wake: Arc<Notify>,
        cancellations: Arc<store::listen::Heard>,
        shutdown: CancellationToken,
    ) {
        let mut background = JoinSet::new();
        background.spawn(crate::maintenance::run(
            self.pool.clone(),
            self.config.maintenance_interval,
            shutdown.clone(),
        ));

        let worker = Arc::new(Worker {
            pool: self.pool.clone(),
            kept: self.kept.clone(),
            registry: self.registry.clone(),
            deps: self.deps.clone(),
            worker_id: self.config.worker_id.clone(),
            lease: self.config.lease,
            cancellations,
            shutdown: shutdown.clone(),
        });
        let slots = self.slots.clone();
        let mut tasks = JoinSet::new();
        info!(workers = self.config.workers, worker_id = %self.config.worker_id, "engine started");
        self.running
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let spawn = |tasks: &mut JoinSet<()>, saga: Leased, permit: OwnedSemaphorePermit| {
            let worker = worker.clone();
            tasks.spawn(async move {
                worker.drive(saga).await;
                drop(permit);
            });
        };

        // `backlog`: due sagas may be waiting (start-up, a NOTIFY, the timer, a full batch).
        // Claims happen only then, so a busy engine fed by direct dispatch does not query the
        // queue after every saga.
        let mut backlog = true;
        let mut next_check = tokio::time::Instant::now();
        // Sagas the API started and leased to this engine while every worker was busy.
        let mut queued: std::collections::VecDeque<(Leased, OwnedSemaphorePermit)> =
            Default::default();
        // While both the local queue and the database have work, freed workers alternate
        // between them: under sustained load the local queue is never empty, and a saga that
        // went through the database (started while this process was full, or due for a retry)
        // would otherwise wait until the load stops.
        let mut database_turn = false;
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            // Take the worker slots first, then claim that many: the API may take slots too.
            let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                if backlog && (queued.is_empty() || database_turn) {
                    database_turn = false;
                    permits.push(permit);
                    continue;
                }
                database_turn = true;
                // The local queue: those sagas are leased to this engine already.
                let Some((saga, place)) = queued.pop_front() else {
                    break;
                };
                drop(place);
                let row = &saga.row;
                if saga.since + self.config.lease <= std::time::Instant::now() {
                    // Waited past its lease: the rescuer hands it to whoever claims it next.
                    warn!(saga_id = %row.id, "a locally queued saga outwaited its lease");
                    continue;
                }
                crate::telemetry::saga_dispatched(&row.saga_name, "queued");
                spawn(&mut tasks, saga, permit);
            }
            let free = permits.len();
            if free > 0 {
                let since = std::time::Instant::now();
                let claimed = match sagas::claim_due(
                    &self.pool,
                    &self.config.worker_id,
                    self.config.lease,
                    free as i64,
                )
                .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        warn!(error = %e, "claiming sagas failed");
                        crate::telemetry::count_error("claim");
                        Vec::new()
                    }
                };
                let got = claimed.len();
                for row in claimed {
                    let Some(permit) = permits.pop() else {
                        break; // cannot happen: at most `free` rows come back
                    };
                    crate::telemetry::saga_dispatched(&row.saga_name, "claimed");
                    spawn(&mut tasks, Leased { row, since }, permit);
                }
                drop(permits);
                if got < free {
                    // Drained: sleep until the next saga is due (or the poll interval).
                    backlog = false;
                    next_check = tokio::time::Instant::now()
                        + next_due_in(&self.pool, self.config.poll_interval).await;
                    if !queued.is_empty() {
                        // The workers the database did not need go to the local queue now.
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = wake.notified() => backlog = true,
                Some((saga, r)) = self.direct_rx.recv() => match r {
                    Reservation::Worker(permit) => {
                        crate::telemetry::saga_dispatched(&saga.row.saga_name, "direct");
                        spawn(&mut tasks, saga, permit)
                    }
                    Reservation::Queued(place) => queued.push_back((saga, place)),
                },
                // Full and behind: claim (or take from the local queue) as soon as a slot frees.
                Some(_) = tasks.join_next(), if (backlog || !queued.is_empty()) && !tasks.is_empty() => {}
                _ = tokio::time::sleep_until(next_check), if !backlog => backlog = true,
                _ = tokio::time::sleep(self.config.poll_interval), if backlog => {}
                _ = shutdown.cancelled() => {}
            }
        }
        self.direct_rx.close();
        // Queued sagas are released with every other lease this process holds, below.
        drop(queued);

        info!(in_flight = tasks.len(), "engine stopping: no new claims");
        self.running
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                in_flight = tasks.len(),
                "grace period over: abandoning in-flight steps"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Anything still leased by this process is handed back for another instance.
        match release_all(&self.pool, &self.config.worker_id).await {
            Ok(0) => {}
            Ok(n) => info!(released = n, "released leases"),
            Err(e) => warn!(error = %e, "could not release leases; they will expire"),
        }
        background.abort_all();
        while background.join_next().await.is_some() {}
        info!("engine stopped");
    }
}

async fn next_due_in(pool: &PgPool, max: Duration) -> Duration {
    match sagas::next_due_at(pool).await {
        Ok(Some(at)) => (at - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(max),
        _ => max,
    }
}

async fn release_all(pool: &PgPool, worker: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "WITH r AS (UPDATE sagas SET locked_by = NULL, locked_until = NULL, next_run_at = now()
                    WHERE locked_by = $1 RETURNING id)
         SELECT pg_notify($2, '') FROM r",
    )
    .bind(worker)
    .bind(store::WORK_CHANNEL)
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch(workers: usize) -> DirectDispatch {
        let (tx, _) = mpsc::unbounded_channel();
        DirectDispatch {
            slots: Arc::new(Semaphore::new(workers)),
            queue: Arc::new(Semaphore::new(workers)),
            queue_places: workers,
            tx,
            worker_id: "w".into(),
            lease: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_new_saga_queues_behind_waiting_ones_when_a_worker_frees_up() {
        let d = dispatch(2);
        let first = d.try_reserve();
        let second = d.try_reserve();
        assert!(matches!(first, Some(Reservation::Worker(_))));
        assert!(matches!(second, Some(Reservation::Worker(_))));
        let waiting = d.try_reserve();
        assert!(matches!(waiting, Some(Reservation::Queued(_))));
        // A worker frees up: it is the waiting saga's, so the next one queues behind it.
        drop(first);
        let behind = d.try_reserve();
        assert!(matches!(behind, Some(Reservation::Queued(_))));
        // The engine took both off the queue (the first onto the freed worker): nothing waits
        // any more, so a free worker takes a new saga at once.
        drop((waiting, behind, second));
        assert!(matches!(d.try_reserve(), Some(Reservation::Worker(_))));
    }
}
