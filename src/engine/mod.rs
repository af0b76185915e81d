//! The saga engine: definitions, retry policy, the state machine, actions and the worker pool.

pub mod actions;
pub mod definition;
pub mod history;
pub mod model;
pub mod operator;
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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::{self, Workers};
use crate::store::{self, queues::SagaQueue, sagas};
use actions::Deps;
use registry::Registry;
use runner::Worker;

/// How the saga workers run (built by [`crate::config::Settings`]).
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
    /// How long in-flight steps may take to finish on shutdown before their leases are released.
    pub shutdown_grace: Duration,
    /// Identifies this process in `locked_by`.
    pub worker_id: String,
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

/// Why the engine cannot start with these definitions and this configuration.
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
/// already leased to this engine, so no claim (and no wake-up) is needed ([`queue::Direct`]).
pub type DirectDispatch = queue::Direct<SagaQueue>;

/// A saga leased to this process, and since when ([`queue::Leased`]).
pub type Leased = queue::Leased<sagas::SagaRow>;

pub use queue::Reservation;

pub struct Engine {
    workers: Workers<SagaQueue>,
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
        let workers = Workers::new(
            SagaQueue,
            pool.clone(),
            queue::Options {
                workers: config.workers,
                local_queue: config.local_queue(),
                lease: config.lease,
                poll_interval: config.poll_interval,
                shutdown_grace: config.shutdown_grace,
                worker_id: config.worker_id.clone(),
            },
        );
        Ok(Self {
            workers,
            pool,
            kept,
            registry,
            deps,
            config,
        })
    }

    /// The handle the API uses to give new sagas straight to this engine.
    pub fn direct_dispatch(&self) -> DirectDispatch {
        self.workers.direct()
    }

    /// True while the dispatcher claims work (for `/readyz`).
    pub fn running_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.workers.running_flag()
    }

    /// Claims and drives sagas until `shutdown`; then stops claiming, lets in-flight steps finish
    /// within the grace period, and releases the leases of any that did not ([`Workers::run`]).
    /// `wake` fires on `store::WORK_CHANNEL` notifications; `cancellations` logs the sagas whose
    /// cancellation was notified on `store::CANCEL_CHANNEL` ([`store::listen::Channels`]).
    pub async fn run(
        self,
        wake: Arc<Notify>,
        cancellations: Arc<store::listen::Heard>,
        shutdown: CancellationToken,
    ) {
        let worker = Arc::new(Worker {
            pool: self.pool,
            kept: self.kept,
            registry: self.registry,
            deps: self.deps,
            worker_id: self.config.worker_id,
            lease: self.config.lease,
            cancellations,
            shutdown: shutdown.clone(),
        });
        self.workers
            .run(wake, shutdown, |saga: Leased, via| {
                crate::telemetry::saga_dispatched(&saga.row.saga_name, via.as_str());
                let worker = worker.clone();
                async move { worker.drive(saga).await }
            })
            .await
    }
}
