//! The event relay to NATS JetStream, against a real `nats-server -js` started per test on a free
//! port with its own store directory. Messages are read back with an async-nats pull consumer and
//! compared with the event store: every event once (after JetStream's deduplication on
//! `Nats-Msg-Id`), each aggregate's events in version order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures_util::StreamExt;
use sagad::events::{CancelledBy, Event, NewEvent};
use sagad::relay::RelayConfig;
use sagad::store;
use sagad_test_support::NatsServer;
use serde_json::Value;
use sqlx::PgPool;
use std::process::Stdio;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::harness::{
    AppOptions, TOKEN, booking_input, count, eventually, fresh_database, spawn_app_with,
    start_concurrently,
};

const STREAM: &str = "SAGAD";
const PREFIX: &str = "sagad.events";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `nats-server -js` of this test: its own port and store directory.
struct Nats(NatsServer);

impl Nats {
    async fn start() -> Self {
        Nats(NatsServer::start().await.unwrap_or_else(|e| panic!("{e}")))
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// Starts the server again after [`Nats::stop`], on the same port and store.
    async fn run(&mut self) {
        self.0.run().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    async fn stop(&mut self) {
        self.0.stop().await;
    }

    fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            servers: vec![self.url().parse().expect("NATS URL")],
            stream: STREAM.into(),
            subject_prefix: PREFIX.into(),
            duplicate_window: Duration::from_secs(120),
            max_lag: Duration::from_secs(60),
            poll_interval: Duration::from_millis(20),
            worker_id: String::new(),
        }
    }

    async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.url()).await.expect("connect NATS"))
    }

    /// Messages in the stream (0 when it does not exist yet).
    async fn stored(&self) -> u64 {
        match self.jetstream().await.get_stream(STREAM).await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        }
    }

    /// Every message of the stream, in stream order, read with a pull consumer.
    async fn messages(&self) -> Vec<Relayed> {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(STREAM).await.expect("the relay's stream");
        let total = stream.info().await.expect("stream info").state.messages as usize;
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut out = Vec::with_capacity(total);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while out.len() < total {
            assert!(
                tokio::time::Instant::now() < deadline,
                "read {} of {total} messages",
                out.len()
            );
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("fetch");
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                let sequence = m.info().expect("JetStream message").stream_sequence;
                let msg_id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                out.push(Relayed {
                    sequence,
                    subject: m.subject.to_string(),
                    msg_id,
                    body: serde_json::from_slice(&m.payload).expect("JSON payload"),
                });
            }
        }
        out
    }
}

struct Relayed {
    sequence: u64,
    subject: String,
    msg_id: String,
    body: Value,
}

/// Every event of the store is in `messages` exactly once, under its id as `Nats-Msg-Id`, on
/// `<prefix>.<aggregate>.<type>`, and each aggregate's events come in version order.
async fn assert_relayed(pool: &PgPool, messages: &[Relayed]) {
    let events: Vec<(Uuid, String, Uuid, i32, String)> = sqlx::query_as(
        "SELECT event_id, aggregate_type, aggregate_id, version, event_type FROM events",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut seen = HashSet::new();
    for m in messages {
        assert!(
            seen.insert(m.msg_id.clone()),
            "{} twice in the stream",
            m.msg_id
        );
        assert_eq!(m.body["event_id"].as_str(), Some(m.msg_id.as_str()));
    }
    let by_id: HashMap<String, &(Uuid, String, Uuid, i32, String)> =
        events.iter().map(|e| (e.0.to_string(), e)).collect();
    let missing: Vec<&String> = by_id.keys().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never reached the stream, e.g. {:?}",
        missing.len(),
        events.len(),
        missing.first()
    );
    assert_eq!(messages.len(), events.len(), "messages that are no event");
    let mut last_version: HashMap<Uuid, (i32, u64)> = HashMap::new();
    for m in messages {
        let (_, aggregate_type, aggregate_id, version, event_type) = by_id[&m.msg_id];
        assert_eq!(m.subject, format!("{PREFIX}.{aggregate_type}.{event_type}"));
        assert_eq!(m.body["version"].as_i64(), Some(i64::from(*version)));
        if let Some((before, at)) = last_version.insert(*aggregate_id, (*version, m.sequence)) {
            assert!(
                before < *version,
                "aggregate {aggregate_id}: version {version} (stream seq {}) after version {before} (seq {at})",
                m.sequence
            );
        }
    }
}

/// Waits until the stream holds as many messages as the store has events, and the recorded
/// position has reached the end of the feed.
async fn wait_all_relayed(nats: &Nats, pool: &PgPool) {
    eventually("every event acknowledged and recorded", || async {
        let events = count(pool, "SELECT count(*) FROM events").await as u64;
        let mut conn = pool.acquire().await.ok()?;
        let status = store::relay::status(&mut conn).await.ok()?;
        (status.lag.events == 0 && nats.stored().await >= events).then_some(())
    })
    .await;
}

/// Appends `per` events to each of `aggregates` new aggregates, one append per aggregate.
async fn append_backlog(pool: &PgPool, aggregates: usize, per: usize) {
    let mut conn = pool.acquire().await.unwrap();
    let events: Vec<NewEvent> = (0..per)
        .map(|i| {
            NewEvent::from(Event::BookingCancelled {
                reason: format!("backlog {i}"),
                by: CancelledBy::Sagad,
                actor: "sagad".into(),
                refund: None,
            })
        })
        .collect();
    for _ in 0..aggregates {
        store::events::append(&mut conn, "booking", Uuid::now_v7(), 1, &events)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_event_arrives_once_in_per_aggregate_order() {
    let nats = Nats::start().await;
    let app = spawn_app_with(AppOptions {
        relay: Some(nats.relay_config()),
        ..Default::default()
    })
    .await;
    let inputs = (0..8)
        .map(|i| {
            let pm = if i == 3 {
                "pm_card_chargeDeclined"
            } else {
                "pm_card_visa"
            };
            booking_input(&format!("relay-listing-{i}"), pm)
        })
        .collect();
    for id in start_concurrently(&[&app], inputs).await {
        app.wait_terminal(id).await;
    }
    wait_all_relayed(&nats, &app.pool).await;
    assert_relayed(&app.pool, &nats.messages().await).await;

    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["checks"]["relay"], true, "{ready}");
    assert_eq!(ready["relay"]["lag_events"], 0, "{ready}");
    assert!(ready["relay"]["last_error"].is_null(), "{ready}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("sagad_relay_published_total{duplicate=\"false\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("sagad_relay_lag_events"), "{metrics}");
}

#[tokio::test]
async fn a_nats_outage_loses_nothing() {
    let mut nats = Nats::start().await;
    let app = spawn_app_with(AppOptions {
        relay: Some(nats.relay_config()),
        ..Default::default()
    })
    .await;
    let before = (0..3)
        .map(|i| booking_input(&format!("outage-before-{i}"), "pm_card_visa"))
        .collect();
    for id in start_concurrently(&[&app], before).await {
        app.wait_terminal(id).await;
    }
    wait_all_relayed(&nats, &app.pool).await;

    nats.stop().await;
    let during = (0..5)
        .map(|i| booking_input(&format!("outage-during-{i}"), "pm_card_visa"))
        .collect();
    for id in start_concurrently(&[&app], during).await {
        app.wait_terminal(id).await;
    }
    // The relay tried, failed, and says so.
    let error: String = eventually("the relay to record its failure", || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT last_error FROM relay_position")
            .fetch_one(&app.pool)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(error.contains("not acknowledged"), "{error}");
    let ready = app.get_json("/readyz").await;
    assert!(ready["relay"]["last_error"].is_string(), "{ready}");
    assert!(ready["relay"]["lag_events"].as_i64() > Some(0), "{ready}");

    nats.run().await;
    wait_all_relayed(&nats, &app.pool).await;
    assert_relayed(&app.pool, &nats.messages().await).await;
    let cleared: Option<String> = sqlx::query_scalar("SELECT last_error FROM relay_position")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        cleared, None,
        "a publish that succeeds clears the last error"
    );
}

/// A `sagad serve` process (workers only) with the relay on, on `db_url`.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    async fn start(db_url: &str, nats: &Nats) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_sagad"))
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("SAGAD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SAGAD_ROLE", "worker")
            .env("SAGAD_API_TOKENS", TOKEN)
            .env("STRIPE_SECRET_KEY", "sk_test_relay")
            .env("SAGAD_DB_POOL_SIZE", "4")
            .env("SAGAD_NATS_URL", nats.url())
            .env("SAGAD_NATS_POLL_INTERVAL", "20ms")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start sagad");
        let process = Process { child, port };
        eventually("sagad to serve /healthz", || async {
            reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        process
    }

    /// A sample of `/metrics`, when the process answers.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL sagad");
    }

    async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        self.child.wait().await.expect("sagad exits");
    }
}

#[tokio::test]
async fn sigkill_mid_publish_leaves_no_gap_and_jetstream_drops_the_republished() {
    let nats = Nats::start().await;
    let (pool, db_url) = fresh_database().await;
    append_backlog(&pool, 100, 30).await;
    let mut first = Process::start(&db_url, &nats).await;
    eventually("the relay to take over", || async {
        (count(&pool, "SELECT count(*) FROM relay_position").await == 1).then_some(())
    })
    .await;
    // Hold the position row: the relay publishes a batch, has it acknowledged, and then waits
    // to record it. It is killed right there.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM relay_position FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    eventually(
        "the relay to wait to record an acknowledged batch",
        || async {
            (count(
                &pool,
                "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE relay_position%'",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    first.kill().await;
    // The killed process's statement is still queued behind the lock in its backend, which has
    // not noticed yet that its client is gone: end it, as if the statement had never been sent.
    let waiting = "SELECT pid FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE relay_position%'";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM ({waiting}) w"
    )))
    .execute(&pool)
    .await
    .unwrap();
    eventually("the killed relay's backend to end", || async {
        let left: Vec<i32> = sqlx::query_scalar(waiting).fetch_all(&pool).await.ok()?;
        left.is_empty().then_some(())
    })
    .await;
    holder.rollback().await.unwrap();
    let stored = nats.stored().await;
    let (tx, seq): (String, i64) = sqlx::query_as("SELECT tx::text, seq FROM relay_position")
        .fetch_one(&pool)
        .await
        .unwrap();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE (tx, seq) <= ($1::text::xid8, $2)")
            .bind(&tx)
            .bind(seq)
            .fetch_one(&pool)
            .await
            .unwrap();
    let unrecorded = stored as i64 - recorded;
    assert!(
        unrecorded > 0,
        "the kill came after the relay recorded all it published ({stored} stored, {recorded} recorded)"
    );

    let second = Process::start(&db_url, &nats).await;
    wait_all_relayed(&nats, &pool).await;
    assert_relayed(&pool, &nats.messages().await).await;
    let duplicates = eventually("the restarted relay's duplicate count", || {
        second.metric("sagad_relay_published_total{duplicate=\"true\"}")
    })
    .await;
    assert_eq!(
        duplicates as i64, unrecorded,
        "JetStream dropped as duplicates exactly the events acknowledged but not recorded before the kill"
    );
    second.terminate().await;
}

#[tokio::test]
async fn two_processes_relay_one_at_a_time() {
    let nats = Nats::start().await;
    let (pool, db_url) = fresh_database().await;
    let a = Process::start(&db_url, &nats).await;
    let b = Process::start(&db_url, &nats).await;
    let active_a = eventually("exactly one of the two to relay", || async {
        let (x, y) = (
            a.metric("sagad_relay_active").await?,
            b.metric("sagad_relay_active").await?,
        );
        (x + y == 1.0).then_some(x == 1.0)
    })
    .await;
    let locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    assert_eq!(count(&pool, locks).await, 1);
    append_backlog(&pool, 20, 5).await;
    wait_all_relayed(&nats, &pool).await;
    let holder_before: String = sqlx::query_scalar("SELECT holder FROM relay_position")
        .fetch_one(&pool)
        .await
        .unwrap();

    // The active one stops; the other takes over and relays what follows.
    let standby = if active_a {
        a.terminate().await;
        b
    } else {
        b.terminate().await;
        a
    };
    eventually("the other process to take over", || async {
        (standby.metric("sagad_relay_active").await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(count(&pool, locks).await, 1);
    append_backlog(&pool, 20, 5).await;
    wait_all_relayed(&nats, &pool).await;
    assert_relayed(&pool, &nats.messages().await).await;
    let holder_after: String = sqlx::query_scalar("SELECT holder FROM relay_position")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_ne!(holder_before, holder_after);
    standby.terminate().await;
}

#[tokio::test]
async fn a_bad_nats_url_stops_sagad_at_start_with_the_reason() {
    let serve = |url: String, db_url: String| {
        Command::new(env!("CARGO_BIN_EXE_sagad"))
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("SAGAD_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("SAGAD_API_TOKENS", TOKEN)
            .env("STRIPE_SECRET_KEY", "sk_test_relay")
            .env("SAGAD_DB_POOL_SIZE", "2")
            .env("SAGAD_NATS_URL", url)
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .output()
    };
    let (_pool, db_url) = fresh_database().await;

    let out = serve("http://127.0.0.1:4222".into(), db_url.clone())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SAGAD_NATS_URL \"http://127.0.0.1:4222\" is not a NATS server URL"),
        "{err}"
    );

    let port = free_port();
    let out = serve(format!("nats://127.0.0.1:{port}"), db_url.clone())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach NATS at nats://127.0.0.1:{port} (SAGAD_NATS_URL)"
        )),
        "{err}"
    );
}
