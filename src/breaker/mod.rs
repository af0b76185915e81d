//! Circuit breakers toward the outside dependencies (Stripe, the notification gateway), shared by
//! every sagad process through PostgreSQL (`dependency_breakers`, [`crate::store::breakers`]).
//!
//! The hot path costs no statement: each process keeps a copy of every breaker and counts the
//! results of the calls it lets through in memory. A retryable failure is counted in the database
//! at once (it may open the breaker); answers are counted there with the next failure or by the
//! refresh every second, which also reloads the copy. While a breaker is open, a saga whose next
//! action needs the dependency is paused ([`Admission::Paused`]) without a call. Once the breaker's
//! delay has passed, one process (the row lock decides) takes the single probe: the saga it was
//! about to run makes its call. An answer closes the breaker and, in the same transaction, wakes
//! the paused sagas oldest first at a ramped rate (NOTIFY at commit, to every process); a
//! retryable failure reopens it with twice the delay, up to 5 minutes.

pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use model::{Breaker, Tally, Transition};
pub use model::{BreakerState, CallResult, Dependency, Thresholds};

use crate::events::NewEvent;
use crate::store::breakers::{self as store, Ramp};

/// Whether a step may call its dependency now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: call, and report the result.
    Call,
    /// This process holds the one probe of a half-open breaker: call, and report the result.
    Probe,
    /// The breaker is open: do not call; the saga pauses.
    Paused,
}

#[derive(Default)]
struct Local {
    /// The breaker as last read or written by this process (`None` before the first read:
    /// calls go through).
    row: Option<Breaker>,
    /// Results not counted in the database yet.
    pending: Tally,
}

/// This process's handle on the breakers.
pub struct Breakers {
    pool: PgPool,
    worker_id: String,
    thresholds: Thresholds,
    ramp: Ramp,
    local: Mutex<HashMap<Dependency, Local>>,
    /// The database's clock ([`crate::clock`]): a breaker's timings are shared by every process.
    clock: crate::clock::Clock,
}

impl Breakers {
    pub fn new(
        pool: PgPool,
        worker_id: String,
        thresholds: Thresholds,
        clock: crate::clock::Clock,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            worker_id,
            thresholds,
            ramp: Ramp::default(),
            local: Mutex::new(HashMap::new()),
            clock,
        })
    }

    fn with_local<T>(&self, dependency: Dependency, f: impl FnOnce(&mut Local) -> T) -> T {
        let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(dependency).or_default())
    }

    /// The state this process last saw.
    pub fn state(&self, dependency: Dependency) -> BreakerState {
        self.with_local(dependency, |l| {
            l.row.as_ref().map_or(BreakerState::Closed, |r| r.state)
        })
    }

    fn remember(&self, row: Breaker) {
        crate::telemetry::dependency_state(row.dependency, row.state);
        self.with_local(row.dependency, |l| l.row = Some(row));
    }

    /// Whether a step may call `dependency` now. Without the database it says [`Admission::Call`]
    /// when the breaker was closed, [`Admission::Paused`] otherwise.
    pub async fn admit(&self, dependency: Dependency) -> Admission {
        let now = self.clock.db_now();
        let (state, due) = self.with_local(dependency, |l| match &l.row {
            None => (BreakerState::Closed, false),
            Some(r) => (r.state, r.probe_due(now)),
        });
        if state == BreakerState::Closed {
            return Admission::Call;
        }
        if !due {
            return Admission::Paused;
        }
        match self
            .change(dependency, |b, now, th| {
                b.take_probe(&self.worker_id, now, th)
            })
            .await
        {
            Ok(Some(Transition::ProbeTaken)) => Admission::Probe,
            Ok(_) => Admission::Paused,
            Err(e) => {
                warn!(error = %e, %dependency, "could not take the breaker's probe");
                Admission::Paused
            }
        }
    }

    /// Counts the result of a call `admit` allowed.
    pub async fn report(&self, dependency: Dependency, admission: Admission, result: CallResult) {
        match admission {
            Admission::Paused => {}
            Admission::Probe => {
                let me = self.worker_id.clone();
                if let Err(e) = self
                    .change(dependency, |b, now, th| {
                        b.probe_result(&me, result, now, th)
                    })
                    .await
                {
                    warn!(error = %e, %dependency, "could not record the probe's result; its slot will run out");
                }
            }
            Admission::Call => {
                self.with_local(dependency, |l| l.pending.add(result));
                if matches!(result, CallResult::Failed { .. }) {
                    self.flush(dependency).await;
                }
            }
        }
    }

    /// Counts this process's pending results of `dependency` in the database.
    async fn flush(&self, dependency: Dependency) {
        let tally = self.with_local(dependency, |l| std::mem::take(&mut l.pending));
        if tally.is_empty() {
            return;
        }
        if let Err(e) = self
            .change(dependency, |b, now, th| b.count(tally, now, th))
            .await
        {
            warn!(error = %e, %dependency, "could not count calls against the breaker");
            crate::telemetry::count_error("breaker");
        }
    }

    /// Locks the breaker's row, applies `f`, writes it back; a transition to closed wakes the
    /// sagas paused on it, and a transition records its operator event (published as
    /// `dependency.circuit_opened` / `dependency.circuit_closed`), in the same transaction.
    async fn change(
        &self,
        dependency: Dependency,
        f: impl FnOnce(&mut Breaker, chrono::DateTime<Utc>, &Thresholds) -> Option<Transition>,
    ) -> Result<Option<Transition>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut b = store::lock(&mut tx, dependency).await?;
        let before = b.clone();
        let now = self.clock.db_now();
        let transition = f(&mut b, now, &self.thresholds);
        let mut woke = 0;
        if b != before {
            store::save(&mut tx, &b).await?;
            if transition == Some(Transition::Closed) {
                woke = store::wake_paused(&mut tx, dependency, self.ramp, false).await?;
            }
            if let Some(event) =
                transition.and_then(|t| b.operator_event(&before, t, now, &self.thresholds, woke))
            {
                let event = NewEvent {
                    worker: Some(self.worker_id.clone()),
                    ..NewEvent::from(event)
                };
                store::record_event(&mut tx, dependency, event).await?;
            }
        }
        tx.commit().await?;
        if let Some(t) = transition {
            info!(%dependency, transition = t.as_str(), woke, "circuit breaker");
            crate::telemetry::dependency_transition(dependency, t.as_str());
        }
        self.remember(b);
        Ok(transition)
    }

    /// Counts pending results, reloads every breaker, wakes sagas paused on a closed breaker (one
    /// that paused just as it closed) and reads the paused gauges.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        for dependency in Dependency::ALL {
            self.flush(*dependency).await;
        }
        let counts = store::paused_counts(&self.pool).await?;
        let now = self.clock.db_now();
        let mut rows = store::get_all(&self.pool).await?;
        for dependency in Dependency::ALL.iter().copied() {
            let reason = dependency.wait_reason();
            let paused = counts
                .iter()
                .find(|(r, _)| *r == reason)
                .map_or(0, |(_, n)| *n);
            crate::telemetry::dependency_paused(dependency, paused);
            let Some(at) = rows.iter().position(|r| r.dependency == dependency) else {
                // No call counted yet: closed.
                crate::telemetry::dependency_state(dependency, BreakerState::Closed);
                continue;
            };
            let row = rows.swap_remove(at);
            let (closed, probe_due) = (row.state == BreakerState::Closed, row.probe_due(now));
            self.remember(row);
            if paused == 0 {
                continue;
            }
            if closed {
                let mut conn = self.pool.acquire().await?;
                store::wake_paused(&mut conn, dependency, self.ramp, true).await?;
            } else if probe_due {
                // Nothing else may come to probe: the oldest paused saga does.
                store::wake_prober(&self.pool, dependency).await?;
            }
        }
        Ok(())
    }

    /// Refreshes every [`store::REFRESH`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.refresh().await {
                warn!(error = %e, "could not refresh the circuit breakers");
                crate::telemetry::count_error("breaker");
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.flush(Dependency::Stripe).await;
                    self.flush(Dependency::Notify).await;
                    return;
                }
                _ = tokio::time::sleep(store::REFRESH) => {}
            }
        }
    }
}
