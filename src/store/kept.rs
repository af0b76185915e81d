//! Connections kept between the hot statements, for a moment, out of sqlx's pool.
//!
//! sqlx gives every connection back to its pool with a round trip: a `Sync` message and its
//! `ReadyForQuery` (`Floating::return_to_pool` in sqlx-core 0.9), from a task it spawns. Neither
//! `pg_stat_statements` nor `xact_commit` sees it, yet it wakes the backend and both processes once
//! more per statement: three times per booking saga. The saga's hot statements (the start, the
//! capture's outcome, the notification's outcome) take their connection from here and give it
//! back here when the statement ran to completion, so under load a connection goes from one to the
//! next without that round trip. Everything else is left to sqlx:
//!
//! * a connection whose statement failed, or whose future was dropped mid-statement, is dropped
//!   the sqlx way (checked, or closed when broken);
//! * a connection kept longer than [`KEEP`] goes back to sqlx's pool (with its check), by the next
//!   caller or by [`Kept::run`]'s sweep: connections sit here only while statements come in
//!   quicker than that, and a connection idle for long is never handed out from here;
//! * at most half the pool is kept, so the rest (transactions, the API's reads, maintenance)
//!   always finds connections in sqlx's pool.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio_util::sync::CancellationToken;

/// How long a connection may wait here for its next statement.
pub const KEEP: Duration = Duration::from_millis(200);

pub struct Kept {
    pool: PgPool,
    /// Oldest first; handed out newest first (the connection most likely to be warm).
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    cap: usize,
    closed: AtomicBool,
}

/// A connection for one hot statement. Dropped without [`KeptConn::completed`], it goes back to
/// sqlx's pool the sqlx way.
pub struct KeptConn<'a> {
    kept: &'a Kept,
    conn: Option<PoolConnection<Postgres>>,
}

impl Kept {
    pub fn new(pool: PgPool) -> Self {
        let cap = (pool.options().get_max_connections() as usize / 2).max(1);
        Self {
            pool,
            idle: Mutex::new(Vec::new()),
            cap,
            closed: AtomicBool::new(false),
        }
    }

    /// A kept connection if one is fresh, else one from sqlx's pool.
    pub async fn acquire(&self) -> Result<KeptConn<'_>, sqlx::Error> {
        let (fresh, stale) = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let stale = take_stale(&mut idle, Instant::now());
            (idle.pop(), stale)
        };
        // Outside the lock: dropping a `PoolConnection` spawns sqlx's return to the pool.
        drop(stale);
        let conn = match fresh {
            Some((conn, _)) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(KeptConn {
            kept: self,
            conn: Some(conn),
        })
    }

    /// Connections kept now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back to sqlx's pool every connection kept longer than [`KEEP`].
    pub fn expire(&self) {
        let stale = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            take_stale(&mut idle, Instant::now())
        };
        drop(stale);
    }

    /// Sweeps every [`KEEP`] until `shutdown`; then gives every connection back and keeps no
    /// more, so that closing the pool does not wait for connections kept here.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(KEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.expire(),
                _ = shutdown.cancelled() => break,
            }
        }
        self.close();
    }

    /// Gives every kept connection back to sqlx's pool and keeps none from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let all = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        drop(all);
    }

    fn keep(&self, conn: PoolConnection<Postgres>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.cap {
            idle.push((conn, Instant::now()));
            return;
        }
        drop(idle);
        drop(conn);
    }
}

/// Removes the connections kept longer than [`KEEP`] (the oldest come first).
fn take_stale(
    idle: &mut Vec<(PoolConnection<Postgres>, Instant)>,
    now: Instant,
) -> Vec<(PoolConnection<Postgres>, Instant)> {
    let fresh_from = idle
        .iter()
        .position(|(_, since)| now.duration_since(*since) < KEEP)
        .unwrap_or(idle.len());
    idle.drain(..fresh_from).collect()
}

impl KeptConn<'_> {
    /// The statement ran to completion (whatever it found): keep the connection for the next.
    /// Only for autocommit statements: a connection must never be kept inside a transaction.
    pub fn completed(mut self) {
        if let Some(conn) = self.conn.take()
            && !sqlx::Connection::is_in_transaction(&*conn)
        {
            self.kept.keep(conn);
        }
    }
}

impl Deref for KeptConn<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("taken only by completed()")
    }
}

impl DerefMut for KeptConn<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("taken only by completed()")
    }
}
