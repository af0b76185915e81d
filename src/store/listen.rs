//! LISTEN/NOTIFY: **one** listening connection per process for every channel sagad listens on
//! (the saga queue, the Stripe inbox, webhook deliveries, finished sagas).
//!
//! One connection, not one per queue, because PostgreSQL (≤ 16) signals every listening backend of
//! a database on every NOTIFY, whatever its channels, and each signalled backend wakes up and runs
//! a transaction to read the notification queue: with four listeners, each saga's two NOTIFYs cost
//! eight wake-ups and eight (empty) transactions on a busy server.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

enum Sink {
    /// Wake a queue's dispatcher; the payload does not matter.
    Wake(Arc<Notify>),
    /// Forward the payload, a saga id, to whoever waits for it.
    Ids(broadcast::Sender<Uuid>),
}

/// The channels this process listens on, and where their notifications go.
pub struct Channels {
    pool: PgPool,
    sinks: Vec<(&'static str, Sink)>,
}

impl Channels {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sinks: Vec::new(),
        }
    }

    /// A wake-up for `channel`: notified on every notification, and once after every (re)connect
    /// because a notification may have been missed meanwhile (the queues' polling covers gaps).
    pub fn wake(&mut self, channel: &'static str) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        self.sinks.push((channel, Sink::Wake(wake.clone())));
        wake
    }

    /// Forwards `channel`'s payloads that parse as a UUID to `to`.
    pub fn forward_ids(&mut self, channel: &'static str, to: broadcast::Sender<Uuid>) {
        self.sinks.push((channel, Sink::Ids(to)));
    }

    fn wake_all(&self) {
        for (_, sink) in &self.sinks {
            if let Sink::Wake(w) = sink {
                w.notify_one();
            }
        }
    }

    fn deliver(&self, channel: &str, payload: &str) {
        for (c, sink) in &self.sinks {
            if *c != channel {
                continue;
            }
            match sink {
                Sink::Wake(w) => w.notify_one(),
                Sink::Ids(to) => {
                    if let Ok(id) = payload.parse::<Uuid>() {
                        let _ = to.send(id);
                    }
                }
            }
        }
    }

    /// LISTENs until `shutdown`, reconnecting with backoff after errors.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.sinks.is_empty() {
            return;
        }
        let mut names: Vec<&str> = self.sinks.iter().map(|(c, _)| *c).collect();
        names.sort_unstable();
        names.dedup();
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let connected = match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => l.listen_all(names.iter().copied()).await.map(|()| l),
                Err(e) => Err(e),
            };
            let mut listener = match connected {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, channels = ?names, "LISTEN failed; polling meanwhile");
                    tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = shutdown.cancelled() => return }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            self.wake_all();
            loop {
                tokio::select! {
                    r = listener.recv() => match r {
                        Ok(n) => self.deliver(n.channel(), n.payload()),
                        Err(e) => { debug!(error = %e, "LISTEN connection lost"); break; }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
