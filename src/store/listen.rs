//! LISTEN/NOTIFY: **one** listening connection per process for every channel sagad listens on
//! (the saga queue, the Stripe inbox, webhook deliveries, finished and cancelled sagas).
//!
//! One connection, not one per queue, because PostgreSQL (≤ 16) signals every listening backend of
//! a database on every NOTIFY, whatever its channels, and each signalled backend wakes up and runs
//! a transaction to read the notification queue: with four listeners, each saga's two NOTIFYs cost
//! eight wake-ups and eight (empty) transactions on a busy server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::SagaId;
use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

enum Sink {
    /// Wake a queue's dispatcher; the payload does not matter.
    Wake(Arc<Notify>),
    /// Forward the payload, a saga id, to whoever waits for it.
    Ids(broadcast::Sender<SagaId>),
    /// Note the payload, a saga id, and when it was heard.
    Log(Arc<Heard>),
}

/// How the LISTEN connection is made again after an error: 100 ms, doubling, at most 5 s apart,
/// for as long as it takes (the queues poll meanwhile).
const RECONNECT: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_factor(2.0)
    .with_max_delay(Duration::from_secs(5))
    .without_max_times();

/// How long [`Heard`] remembers an id.
const HEARD_FOR: Duration = Duration::from_secs(10 * 60);

/// The saga ids heard on a channel lately, and whether the listening connection was up all along,
/// so that a reader can tell "not notified" from "perhaps missed".
#[derive(Default)]
pub struct Heard {
    state: Mutex<HeardState>,
}

#[derive(Default)]
struct HeardState {
    /// Since when the connection has been listening without a break (`None`: it is down).
    listening_since: Option<Instant>,
    ids: HashMap<SagaId, Instant>,
}

impl Heard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeardState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `id` was heard at or after `since`: `Some(false)` only when every notification sent
    /// since then has been received (the connection listened throughout, and `since` is recent
    /// enough to be remembered); `None` when one may have been missed.
    pub fn since(&self, id: SagaId, since: Instant) -> Option<bool> {
        let s = self.lock();
        if s.ids.get(&id).is_some_and(|at| *at >= since) {
            return Some(true);
        }
        let listening = s.listening_since.is_some_and(|from| from <= since);
        (listening && since.elapsed() < HEARD_FOR).then_some(false)
    }

    fn heard(&self, id: SagaId) {
        let now = Instant::now();
        let mut s = self.lock();
        s.ids.retain(|_, at| now.duration_since(*at) < HEARD_FOR);
        s.ids.insert(id, now);
    }

    fn listening(&self, up: bool) {
        self.lock().listening_since = up.then(Instant::now);
    }
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
    pub fn forward_ids(&mut self, channel: &'static str, to: broadcast::Sender<SagaId>) {
        self.sinks.push((channel, Sink::Ids(to)));
    }

    /// Notes `channel`'s payloads that parse as a UUID, and when, in the returned log.
    pub fn log_ids(&mut self, channel: &'static str) -> Arc<Heard> {
        let heard = Arc::new(Heard::default());
        self.sinks.push((channel, Sink::Log(heard.clone())));
        heard
    }

    /// After a (re)connect: the queues look for what they may have missed; the logs know since
    /// when they hear everything.
    fn connected(&self) {
        for (_, sink) in &self.sinks {
            match sink {
                Sink::Wake(w) => w.notify_one(),
                Sink::Log(heard) => heard.listening(true),
                Sink::Ids(_) => {}
            }
        }
    }

    fn disconnected(&self) {
        for (_, sink) in &self.sinks {
            if let Sink::Log(heard) = sink {
                heard.listening(false);
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
                    if let Ok(id) = payload.parse::<SagaId>() {
                        let _ = to.send(id);
                    }
                }
                Sink::Log(heard) => {
                    if let Ok(id) = payload.parse::<SagaId>() {
                        heard.heard(id);
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
        let connect = || async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen_all(names.iter().copied()).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        while !shutdown.is_cancelled() {
            // Each (re)connect starts its backoff afresh.
            let connected = connect.retry(RECONNECT).notify(|e, _| {
                warn!(error = %e, channels = ?names, "LISTEN failed; polling meanwhile");
            });
            let mut listener = tokio::select! {
                c = connected => match c {
                    Ok(l) => l,
                    // Retried without limit: no error comes back.
                    Err(_) => continue,
                },
                _ = shutdown.cancelled() => return,
            };
            self.connected();
            loop {
                tokio::select! {
                    r = listener.try_recv() => match r {
                        Ok(Some(n)) => self.deliver(n.channel(), n.payload()),
                        // The connection was lost and made again, listening on every channel:
                        // what was sent in between is gone, as after any (re)connect.
                        Ok(None) => {
                            debug!("LISTEN connection lost and made again");
                            self.connected();
                        }
                        Err(e) => { debug!(error = %e, "LISTEN connection lost"); break; }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
            self.disconnected();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_after_100ms_doubling_up_to_5s_without_end() {
        use backon::BackoffBuilder;
        let delays: Vec<u64> = RECONNECT
            .build()
            .take(9)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(RECONNECT.build().nth(10_000).is_some());
    }

    #[test]
    fn heard_tells_notified_from_not_notified_only_while_listening_throughout() {
        let heard = Heard::default();
        let (a, b) = (SagaId::new(), SagaId::new());
        let before_listening = Instant::now();
        // Not listening yet: nothing can be told.
        assert_eq!(heard.since(a, before_listening), None);

        heard.listening(true);
        let since = Instant::now();
        assert_eq!(heard.since(a, since), Some(false));
        // Listening began after that instant: a notification sent before may be lost.
        assert_eq!(heard.since(a, before_listening), None);

        heard.heard(a);
        assert_eq!(heard.since(a, since), Some(true));
        assert_eq!(heard.since(b, since), Some(false));
        // Heard before the instant asked about: it says nothing of what came after.
        let later = Instant::now();
        assert_eq!(heard.since(a, later), Some(false));

        // A break in listening: from then on, what was not heard may have been missed.
        heard.listening(false);
        assert_eq!(heard.since(b, since), None);
        assert_eq!(
            heard.since(a, since),
            Some(true),
            "what was heard stays heard"
        );
        heard.listening(true);
        assert_eq!(heard.since(b, since), None);
        assert_eq!(heard.since(b, Instant::now()), Some(false));
    }
}
