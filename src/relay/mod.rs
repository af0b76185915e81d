//! The event relay to NATS JetStream (off unless `SAGAD_NATS_URL` is set).
//!
//! One process at a time relays (a session advisory lock, [`crate::store::relay`]). It reads the
//! event store through the feed's gap-safe position ([`crate::store::feed`]), publishes every event
//! to `<prefix>.<aggregate>.<type>` with `Nats-Msg-Id` = the event id, waits for JetStream's
//! acknowledgements, and only then stores the position it reached in PostgreSQL. A crash, a lost
//! lock or an outage of NATS resumes from that position: nothing is lost, and what is published a
//! second time (acknowledged but not yet recorded) is dropped by JetStream's deduplication on
//! `Nats-Msg-Id` within the stream's duplicate window.
//!
//! Order: the events of one aggregate are published one at a time, each after the previous one's
//! acknowledgement, so the stream holds them in their version order even when a publish fails in
//! the middle of a batch. Events of different aggregates are published concurrently (a *round*
//! holds the next event of every aggregate in the batch) and may be stored in another order than
//! the feed's.

use std::collections::HashMap;
use std::fmt;
use std::future::IntoFuture;
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{Context, ContextBuilder, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures_util::future::join_all;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::clock::Clock;
use crate::store;
use crate::store::feed::FeedEvent;

/// Events read from the feed per round.
const BATCH: i64 = 500;
/// How long a publish waits for JetStream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a process that does not relay asks for the lock again.
const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// The lag is counted at most this often while the relay is behind.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// The relay's settings (built by [`crate::config::Settings`] from `SAGAD_NATS_*`).
#[derive(Clone)]
pub struct RelayConfig {
    /// The NATS servers (one cluster).
    pub servers: Vec<ServerAddr>,
    /// The JetStream stream; created at start when missing.
    pub stream: String,
    /// Each event goes to `<subject_prefix>.<aggregate>.<type>`.
    pub subject_prefix: String,
    /// The duplicate window of a stream the relay creates.
    pub duplicate_window: Duration,
    /// `/readyz` reports not ready while the oldest event not yet relayed is older than this.
    pub max_lag: Duration,
    /// How often the relay looks for new events once it has caught up.
    pub poll_interval: Duration,
    /// This process's name, recorded as the relay's holder.
    pub worker_id: String,
}

impl fmt::Debug for RelayConfig {
    // Server URLs may carry a user and password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("servers", &servers_text(&self.servers))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_lag", &self.max_lag)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// A server's address as logs and errors may show it: without its password.
pub fn redacted(addr: &ServerAddr) -> String {
    let mut url = addr.clone().into_inner();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

fn servers_text(servers: &[ServerAddr]) -> String {
    servers.iter().map(redacted).collect::<Vec<_>>().join(",")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach NATS at {servers} (SAGAD_NATS_URL): {source}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
    #[error(
        "NATS at {servers} does not answer JetStream requests for stream {stream:?} ({reason}): is JetStream enabled (nats-server -js)?"
    )]
    NoJetStream {
        servers: String,
        stream: String,
        reason: String,
    },
    #[error("cannot set up the JetStream stream {stream:?} (SAGAD_NATS_STREAM): {reason}")]
    Stream { stream: String, reason: String },
}

/// The relay, connected to NATS with its stream in place.
pub struct Relay {
    config: RelayConfig,
    jetstream: Context,
}

impl Relay {
    /// Connects to NATS and creates the stream when it is missing (or adds the relay's subjects
    /// to it when it lacks them). Fails when NATS cannot be reached now; later outages are
    /// ridden out by the client's reconnects and the relay's retries.
    pub async fn connect(config: RelayConfig) -> Result<Self, Error> {
        let servers = servers_text(&config.servers);
        let client = async_nats::ConnectOptions::new()
            .name(format!("sagad relay {}", config.worker_id))
            .connection_timeout(Duration::from_secs(5))
            .connect(config.servers.clone())
            .await
            .map_err(|source| Error::Connect {
                servers: servers.clone(),
                source,
            })?;
        let jetstream = ContextBuilder::new().timeout(ACK_TIMEOUT).build(client);
        ensure_stream(&jetstream, &config, &servers).await?;
        info!(servers = %servers, stream = %config.stream, prefix = %config.subject_prefix,
              "NATS relay connected");
        Ok(Self { config, jetstream })
    }

    /// Relays until `shutdown` whenever this process holds the relay's lock; waits for it
    /// otherwise.
    pub async fn run(self, pool: PgPool, clock: Clock, shutdown: CancellationToken) {
        crate::telemetry::relay_active(false);
        let options = pool.connect_options();
        // The connection that asks for the lock, and holds it once taken.
        let mut conn: Option<PgConnection> = None;
        while !shutdown.is_cancelled() {
            let held = async {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(PgConnection::connect_with(&options).await?),
                };
                store::relay::try_lock(c).await
            }
            .await;
            match held {
                Ok(true) => {
                    let Some(c) = conn.as_mut() else { continue };
                    crate::telemetry::relay_active(true);
                    info!("relaying events to NATS JetStream");
                    let result = self.relay(c, &clock, &shutdown).await;
                    crate::telemetry::relay_active(false);
                    // Closing the connection releases the lock.
                    if let Some(c) = conn.take() {
                        let _ = c.close().await;
                    }
                    match result {
                        Ok(()) => info!("NATS relay stopped"),
                        Err(e) => {
                            crate::telemetry::count_error("relay");
                            warn!(error = %e, "NATS relay lost its database connection; it will take the lock again");
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    conn = None;
                    crate::telemetry::count_error("relay");
                    warn!(error = %e, "NATS relay cannot ask for its lock");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
            }
        }
    }

    /// Relays while `conn` holds the lock, until `shutdown` or a database error.
    async fn relay(
        &self,
        conn: &mut PgConnection,
        clock: &Clock,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let mut position = store::relay::take_over(conn, &self.config.worker_id).await?;
        crate::telemetry::relay_position(position);
        let mut failures: u32 = 0;
        let mut lag_counted: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let page = store::feed::read(conn, position, BATCH, None).await?;
            let caught_up = (page.events.len() as i64) < BATCH;
            match self.publish(&page.events, clock).await {
                Ok(()) => {
                    failures = 0;
                    if page.next > position {
                        store::relay::advance(conn, page.next).await?;
                        position = page.next;
                        crate::telemetry::relay_position(position);
                    }
                }
                Err(failed) => {
                    if let Some(last) = failed.acked.checked_sub(1) {
                        position = page.events[last].position;
                        store::relay::advance(conn, position).await?;
                        crate::telemetry::relay_position(position);
                    }
                    failures += 1;
                    crate::telemetry::relay_publish_error();
                    let error = failed.to_string();
                    warn!(%error, %position, "NATS relay: publishing failed; it retries from its position");
                    store::relay::record_error(conn, &error).await?;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(retry_delay(failures)) => {}
                    }
                    continue;
                }
            }
            if caught_up || lag_counted.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
                let lag = store::relay::lag(&mut *conn, position).await?;
                crate::telemetry::relay_lag(lag.events, lag.seconds);
                lag_counted = Some(Instant::now());
            }
            if caught_up {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
        Ok(())
    }

    /// Publishes `events` in rounds: round k holds the k-th event of every aggregate in the
    /// batch, sent together, and is acknowledged in full before round k + 1 starts. A batch of
    /// whole sagas (their events stand together in the feed) thus takes as many rounds as its
    /// longest saga has events, not one per event. On a failure, no further round starts, and
    /// the error says how many events from the start of the batch were acknowledged.
    async fn publish(&self, events: &[FeedEvent], clock: &Clock) -> Result<(), Failed> {
        let mut acked = vec![false; events.len()];
        for round in rounds(events) {
            let mut acks = Vec::with_capacity(round.len());
            let mut sent = Vec::with_capacity(round.len());
            let mut failure: Option<(usize, String)> = None;
            for &i in &round {
                let e = &events[i];
                let message = match message(e) {
                    Ok(m) => m,
                    Err(error) => {
                        failure = Some((i, error.to_string()));
                        break;
                    }
                };
                match self
                    .jetstream
                    .send_publish(subject(&self.config.subject_prefix, e), message)
                    .await
                {
                    Ok(ack) => {
                        acks.push(ack.into_future());
                        sent.push(i);
                    }
                    Err(error) => {
                        failure = Some((i, publish_failed(e, &error)));
                        break;
                    }
                }
            }
            // Every publish sent is awaited, so that what JetStream stored is known.
            for (i, ack) in sent.into_iter().zip(join_all(acks).await) {
                match ack {
                    Ok(ack) => {
                        acked[i] = true;
                        crate::telemetry::relay_published(
                            ack.duplicate,
                            (clock.db_now() - events[i].event.recorded_at)
                                .to_std()
                                .unwrap_or_default(),
                        );
                    }
                    Err(error) => {
                        if failure.as_ref().is_none_or(|(at, _)| i < *at) {
                            failure = Some((i, publish_failed(&events[i], &error)));
                        }
                    }
                }
            }
            if let Some((_, error)) = failure {
                return Err(Failed {
                    acked: acked.iter().position(|a| !a).unwrap_or(events.len()),
                    error,
                });
            }
        }
        Ok(())
    }
}

fn publish_failed(e: &FeedEvent, error: &PublishError) -> String {
    format!(
        "event {} not acknowledged by JetStream: {error}",
        e.event.event_id
    )
}

/// A batch that stopped: its first `acked` events were stored by JetStream, the next was not.
#[derive(Debug)]
struct Failed {
    acked: usize,
    error: String,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

/// The batch's publishing rounds, as indexes into `events`: round k holds the k-th event of
/// each aggregate, in feed order.
fn rounds(events: &[FeedEvent]) -> Vec<Vec<usize>> {
    let mut next: HashMap<(&str, Uuid), usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let k = next
            .entry((e.event.aggregate_type.as_str(), e.event.aggregate_id))
            .or_default();
        if *k == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

/// `<prefix>.<aggregate>.<type>`, each part made a valid subject token (`.`, `*`, `>` and
/// whitespace become `_`).
pub fn subject(prefix: &str, e: &FeedEvent) -> String {
    format!(
        "{prefix}.{}.{}",
        token(&e.event.aggregate_type),
        token(&e.event.event_type)
    )
}

fn token(raw: &str) -> String {
    if raw.is_empty() {
        return "_".into();
    }
    raw.chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The message of one event: the feed's JSON of it (with its position), and its id as
/// `Nats-Msg-Id`.
fn message(e: &FeedEvent) -> Result<PublishMessage, serde_json::Error> {
    let body = serde_json::to_vec(e)?;
    Ok(PublishMessage::build()
        .payload(Bytes::from(body))
        .message_id(e.event.event_id.to_string()))
}

/// Waits between failed rounds: 200 ms, doubling, at most 5 s (each round already waited for
/// its acknowledgements' timeout when NATS is away).
fn retry_delay(failures: u32) -> Duration {
    let ms = 200u64.saturating_mul(1 << failures.saturating_sub(1).min(5));
    Duration::from_millis(ms.min(5_000))
}

/// Creates the stream when it is missing, or adds `<prefix>.>` to its subjects when they do not
/// cover it. An existing stream's other settings are left as they are.
async fn ensure_stream(js: &Context, config: &RelayConfig, servers: &str) -> Result<(), Error> {
    let wanted = format!("{}.>", config.subject_prefix);
    let stream_error = |reason: String| Error::Stream {
        stream: config.stream.clone(),
        reason,
    };
    match js.get_stream(&config.stream).await {
        Ok(existing) => {
            let info = existing.cached_info();
            if info.config.subjects.iter().any(|s| covers(s, &wanted)) {
                return Ok(());
            }
            let mut updated = info.config.clone();
            updated.subjects.push(wanted.clone());
            js.update_stream(updated)
                .await
                .map_err(|e| stream_error(format!("adding the subjects {wanted:?}: {e}")))?;
            info!(stream = %config.stream, subjects = %wanted, "added the relay's subjects to the JetStream stream");
            Ok(())
        }
        Err(e) => match e.kind() {
            async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                js.create_stream(stream::Config {
                    name: config.stream.clone(),
                    subjects: vec![wanted.clone()],
                    duplicate_window: config.duplicate_window,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| stream_error(format!("creating it: {e}")))?;
                info!(stream = %config.stream, subjects = %wanted,
                      duplicate_window = ?config.duplicate_window, "created the JetStream stream");
                Ok(())
            }
            async_nats::jetstream::context::GetStreamErrorKind::JetStream(j) => {
                Err(stream_error(j.to_string()))
            }
            _ => Err(Error::NoJetStream {
                servers: servers.to_owned(),
                stream: config.stream.clone(),
                reason: e.to_string(),
            }),
        },
    }
}

/// Whether the stream subject `have` takes every subject of `wanted` (`<prefix>.>`).
fn covers(have: &str, wanted: &str) -> bool {
    if have == wanted || have == ">" {
        return true;
    }
    match have.strip_suffix('>') {
        Some(stem) if stem.ends_with('.') => wanted.starts_with(stem),
        _ => false,
    }
}

/// Whether `stream` may name a JetStream stream.
pub fn valid_stream_name(stream: &str) -> bool {
    !stream.is_empty()
        && stream.len() <= 255
        && stream.chars().all(|c| {
            !(c == '.'
                || c == '*'
                || c == '>'
                || c == '/'
                || c == '\\'
                || c.is_whitespace()
                || c.is_control())
        })
}

/// Whether `prefix` is a subject of literal tokens (`sagad.events`).
pub fn valid_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| !(c == '*' || c == '>' || c.is_whitespace() || c.is_control()))
        })
}

/// For `/readyz`: whether the recorded relay lags less than `max_lag`.
pub fn within(lag: &store::relay::Lag, max_lag: Duration) -> bool {
    lag.seconds <= max_lag.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::EventRecord;
    use crate::store::feed::Position;
    use uuid::Uuid;

    fn event(aggregate: Uuid, seq: i64) -> FeedEvent {
        FeedEvent {
            position: Position { tx: 7, seq },
            event: EventRecord {
                seq,
                event_id: Uuid::new_v4(),
                aggregate_type: "saga".into(),
                aggregate_id: aggregate,
                version: 1,
                event_type: "SagaStarted".into(),
                schema_version: 1,
                payload: serde_json::json!({}),
                metadata: serde_json::json!({}),
                recorded_at: crate::clock::wall(),
            },
        }
    }

    #[test]
    fn round_k_holds_the_kth_event_of_each_aggregate() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let events = [
            event(a, 1),
            event(b, 2),
            event(a, 3),
            event(c, 4),
            event(b, 5),
            event(a, 6),
        ];
        assert_eq!(rounds(&events), vec![vec![0, 1, 3], vec![2, 4], vec![5]]);
        let sagas = [
            event(a, 1),
            event(a, 2),
            event(b, 3),
            event(b, 4),
            event(b, 5),
        ];
        assert_eq!(rounds(&sagas), vec![vec![0, 2], vec![1, 3], vec![4]]);
        assert!(rounds(&events[..0]).is_empty());
    }

    #[test]
    fn subjects_are_prefix_aggregate_and_type_with_safe_tokens() {
        let mut e = event(Uuid::new_v4(), 1);
        assert_eq!(subject("sagad.events", &e), "sagad.events.saga.SagaStarted");
        e.event.aggregate_type = "a.b c*".into();
        e.event.event_type = ">".into();
        assert_eq!(subject("p", &e), "p.a_b_c_._");
    }

    #[test]
    fn stream_subjects_cover_the_prefix() {
        assert!(covers("sagad.events.>", "sagad.events.>"));
        assert!(covers("sagad.>", "sagad.events.>"));
        assert!(covers(">", "sagad.events.>"));
        assert!(!covers("sagad.events.saga.*", "sagad.events.>"));
        assert!(!covers("sagad.eventsx.>", "sagad.events.>"));
        assert!(!covers("other.>", "sagad.events.>"));
    }

    #[test]
    fn names_and_prefixes_are_checked() {
        assert!(valid_stream_name("SAGAD"));
        assert!(!valid_stream_name("a.b"));
        assert!(!valid_stream_name(""));
        assert!(!valid_stream_name("a b"));
        assert!(valid_subject_prefix("sagad.events"));
        assert!(!valid_subject_prefix("sagad..events"));
        assert!(!valid_subject_prefix("sagad.*"));
        assert!(!valid_subject_prefix(""));
    }

    #[test]
    fn retries_back_off_to_five_seconds() {
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(2), Duration::from_millis(400));
        assert_eq!(retry_delay(40), Duration::from_secs(5));
    }

    #[test]
    fn passwords_stay_out_of_addresses() {
        let addr: ServerAddr = "nats://relay:s3cret@127.0.0.1:4222".parse().unwrap();
        let shown = redacted(&addr);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1:4222"), "{shown}");
    }
}
