//! The NATS relay's figures: throughput (events/s from the event store to JetStream, every
//! publish acknowledged) over a bulk-loaded backlog, and the lag from an append's commit to the
//! moment a NATS subscriber receives the event (p50/p99), with sagad's default relay settings.
//! See `docs/BENCHMARKS.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use sagad::store;
use sagad_test_support::{NatsServer, Receiver};
use sqlx::PgPool;
use stripe_double::StripeDouble;
use tokio::net::TcpListener;
use uuid::Uuid;

use super::child::{self, ChildConfig, Sagad};
use super::events::{append_paced, bulk_load, lag_figures, ms};
use super::{BenchArgs, TOKEN, create_database, database_url, drop_database, progress};

/// sagad's default stream and subject prefix (`SAGAD_NATS_STREAM`, `SAGAD_NATS_SUBJECT_PREFIX`).
const STREAM: &str = "SAGAD";
const SUBJECTS: &str = "sagad.events.>";

/// The relay's row: `(caught up with the newest event, seconds from taking the lock to its
/// last move)`, or `None` before the relay has run.
async fn relay_state(pool: &PgPool) -> anyhow::Result<Option<(bool, f64)>> {
    Ok(sqlx::query_as(
        "SELECT (r.tx, r.seq) >= (SELECT tx, seq FROM events ORDER BY tx DESC, seq DESC LIMIT 1),
                extract(epoch FROM r.moved_at - r.held_since)::float8
         FROM relay_position r",
    )
    .fetch_optional(pool)
    .await?)
}

/// Messages stored in the relay's stream.
async fn stored(nats_url: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let mut stream = js.get_stream(STREAM).await?;
    Ok(stream.info().await?.state.messages)
}

/// Appends `count` events, one per transaction, every `every`, while a core NATS subscriber on
/// the relay's subjects receives them; the lag of each from just before its commit to its
/// receipt, sorted.
async fn publish_lag(
    pool: &PgPool,
    nats_url: &str,
    count: usize,
    every: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let client = async_nats::connect(nats_url).await?;
    let mut messages = client.subscribe(SUBJECTS).await?;
    client.flush().await?;
    let sent: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut lags = Vec::with_capacity(count);
            let deadline = Instant::now() + every * count as u32 + Duration::from_secs(60);
            while lags.len() < count {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(m)) = tokio::time::timeout(left, messages.next()).await else {
                    bail!("NATS delivered {} of {count} events", lags.len());
                };
                let seen = Instant::now();
                let Some(id) = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .and_then(|v| v.as_str().parse::<Uuid>().ok())
                else {
                    continue;
                };
                if let Some(t0) = sent.lock().expect("lock").remove(&id) {
                    lags.push(seen.saturating_duration_since(t0));
                }
            }
            Ok(lags)
        })
    };
    append_paced(pool, count, every, &sent).await?;
    let mut lags = receiver.await??;
    lags.sort();
    Ok(lags)
}

/// The relay figures selected by `args`, printed as they come.
pub async fn run(
    args: &BenchArgs,
    sagad: &Path,
    admin_url: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    if args.relay_events == 0 && args.relay_lag_events == 0 {
        return Ok(());
    }
    let nats = NatsServer::start().await.map_err(|e| anyhow!(e))?;
    let nats_url = nats.url();
    let admin = store::connect(admin_url, 2).await?;
    let name = format!("sagad_bench_relay_{:04x}", rand::random::<u16>());
    create_database(&admin, &name).await?;
    let url = database_url(admin_url, &name)?;
    let result = async {
        child::migrate(sagad, &url, dir).await?;
        let double = StripeDouble::start(TcpListener::bind("127.0.0.1:0").await?).await?;
        let notify = Receiver::on(TcpListener::bind("127.0.0.1:0").await?).await?;
        notify.count_only();
        let (stripe_base, notify_url) = (double.base_url(), notify.url.clone());
        let config = ChildConfig {
            sagad,
            database_url: &url,
            token: TOKEN,
            stripe_base: &stripe_base,
            notify_url: &notify_url,
            workers: 2,
            pool_size: 10,
            role: sagad::config::Role::All,
            label: "relay",
            stripe_webhook_secret: None,
            allow_local_webhooks: false,
            nats_url: None,
            dir,
        };
        let pool = store::connect(&url, 4).await?;
        let loaded = if args.relay_events > 0 {
            // sagad registers its booking definition at start; the load's sagas name it. The
            // relay must not run yet, so this first start is without NATS.
            Sagad::start(&config).await?.stop().await?;
            bulk_load(&pool, args.relay_events).await?
        } else {
            0
        };
        progress(format_args!(
            "relay: starting sagad with SAGAD_NATS_URL={nats_url} over {loaded} events"
        ));
        let child = Sagad::start(&ChildConfig {
            nats_url: Some(&nats_url),
            ..config
        })
        .await?;
        let outcome = async {
            if loaded > 0 {
                let deadline = Instant::now() + Duration::from_secs(3600);
                let mut shown = Instant::now();
                let took = loop {
                    if let Some((true, took)) = relay_state(&pool).await? {
                        break took;
                    }
                    if Instant::now() > deadline {
                        bail!("the relay did not catch up within an hour");
                    }
                    if shown.elapsed() >= Duration::from_secs(5) {
                        shown = Instant::now();
                        progress(format_args!(
                            "relay: {} of {loaded} events in the stream",
                            stored(&nats_url).await.unwrap_or(0)
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let in_stream = stored(&nats_url).await?;
                if in_stream != loaded {
                    bail!("the stream holds {in_stream} messages for {loaded} events");
                }
                println!(
                    "relay backlog: {loaded} events published and acknowledged in {took:.1} s = {:.0} events/s (lock taken → position at the newest event; the stream holds {in_stream})",
                    loaded as f64 / took
                );
            }
            if args.relay_lag_events > 0 {
                let every = Duration::from_millis(10);
                let lags =
                    publish_lag(&pool, &nats_url, args.relay_lag_events as usize, every).await?;
                println!(
                    "relay lag (just before commit → a NATS subscriber has the message), default SAGAD_NATS_POLL_INTERVAL: {} events, one per transaction every {}: {}",
                    lags.len(),
                    ms(every),
                    lag_figures(&lags)
                );
            }
            Ok(())
        }
        .await;
        pool.close().await;
        child.stop().await?;
        outcome
    }
    .await
    .context("relay phase");
    drop_database(&admin, &name).await?;
    result
}
