//! The event store's figures: rebuilding the bookings projection over a bulk-loaded store
//! (events/s), reading the global feed through the API (events/s), the lag from an append's
//! commit to its visibility in a long-polling reader (p50/p99), and the cost of folding one
//! aggregate (the snapshot decision). Each runs alone by its flag; see `docs/BENCHMARKS.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

use sagad::domain::CancellationPolicy;
use sagad::engine::definition::SagaDefinition;
use sagad::engine::history::{self, Tag};
use sagad::engine::model::StepPhase;
use sagad::events::{CancelledBy, Event, NewEvent, Refund};
use sagad::projections::{self, Projection};
use sagad::store::{self, bookings};
use sagad_test_support::Receiver;
use stripe_double::StripeDouble;

use super::child::{self, ChildConfig, Sagad};
use super::{BenchArgs, TOKEN, create_database, database_url, drop_database, progress};

/// Sagas written per transaction by the bulk load.
const LOAD_BATCH: usize = 2_000;

/// One stored event of a generated history.
struct Stored {
    event: Event,
    step: Option<&'static str>,
    attempt: Option<i32>,
}

fn at(step: &'static str, attempt: i32, event: Event) -> Stored {
    Stored {
        event,
        step: Some(step),
        attempt: Some(attempt),
    }
}

fn bare(event: Event) -> Stored {
    Stored {
        event,
        step: None,
        attempt: None,
    }
}

/// The events of a booking saga of kind `kind % 10`: most complete (7 events), one in ten is
/// declined (6), one is cancelled by its guest after confirmation (11), and one rides out a
/// Stripe outage at capture (`retries` failed attempts), gives up and is compensated, its void
/// failing twice first: the largest real history (`retries` + 12 events).
fn history(n: u64, retries: i32) -> (Vec<Stored>, &'static str) {
    let now = Utc::now();
    let day = NaiveDate::from_ymd_opt(2030, 1, 1).unwrap() + chrono::Days::new(n % 300);
    let listing = format!("listing-{}", n % 5000);
    let pi = format!("pi_{n:016x}");
    let mut h = vec![
        bare(Event::BookingRequested {
            listing_id: listing.clone(),
            guest_id: format!("guest-{}", n % 20000),
            check_in: day,
            check_out: day + chrono::Days::new(3),
            amount: 45_000,
            currency: "eur".into(),
        }),
        at(
            "hold_inventory",
            1,
            Event::InventoryHeld {
                hold_id: Uuid::now_v7(),
                listing_id: listing,
                check_in: day,
                check_out: day + chrono::Days::new(3),
                expires_at: now,
            },
        ),
    ];
    let authorized = at(
        "authorize_payment",
        1,
        Event::PaymentAuthorized {
            payment_intent_id: pi.clone(),
            amount: 45_000,
            currency: "eur".into(),
        },
    );
    let failed = |step: &'static str, phase, attempt, permanent| {
        at(
            step,
            attempt,
            Event::StepFailed {
                step: step.into(),
                phase,
                attempt,
                error: "stripe answered 503".into(),
                permanent,
                retry_at: (!permanent).then_some(now),
            },
        )
    };
    let released = |reason: &str| {
        at(
            "hold_inventory",
            1,
            Event::InventoryReleased {
                hold_id: Uuid::now_v7(),
                reason: reason.into(),
            },
        )
    };
    let status = match n % 10 {
        0 => {
            h.push(failed("authorize_payment", StepPhase::Forward, 1, true));
            h.push(bare(Event::CompensationStarted {
                failed_step: Some("authorize_payment".into()),
                reason: "card_declined: generic_decline".into(),
            }));
            h.push(released("card_declined: generic_decline"));
            h.push(bare(Event::SagaCompensated {
                reason: "card_declined: generic_decline".into(),
            }));
            "compensated"
        }
        1 => {
            h.push(authorized);
            for a in 1..=retries {
                h.push(failed("capture_payment", StepPhase::Forward, a, false));
            }
            h.push(failed(
                "capture_payment",
                StepPhase::Forward,
                retries + 1,
                true,
            ));
            let reason = "dependency_unavailable: stripe answered 503";
            h.push(bare(Event::CompensationStarted {
                failed_step: Some("capture_payment".into()),
                reason: reason.into(),
            }));
            h.push(failed(
                "authorize_payment",
                StepPhase::Compensation,
                1,
                false,
            ));
            h.push(failed(
                "authorize_payment",
                StepPhase::Compensation,
                2,
                false,
            ));
            h.push(at(
                "authorize_payment",
                3,
                Event::PaymentVoided {
                    payment_intent_id: pi,
                },
            ));
            h.push(released(reason));
            h.push(bare(Event::SagaCompensated {
                reason: reason.into(),
            }));
            "compensated"
        }
        k => {
            h.push(authorized);
            h.push(at(
                "capture_payment",
                1,
                Event::PaymentCaptured {
                    payment_intent_id: pi.clone(),
                    amount: 45_000,
                    currency: "eur".into(),
                },
            ));
            h.push(at(
                "confirm_booking",
                1,
                Event::BookingConfirmed {
                    confirmation_code: format!("BK-{n:08X}"),
                    listing_id: format!("listing-{}", n % 5000),
                    check_in: day,
                    check_out: day + chrono::Days::new(3),
                },
            ));
            h.push(at(
                "notify",
                1,
                Event::NotificationSent { status_code: 200 },
            ));
            h.push(bare(Event::SagaCompleted {}));
            if k != 2 {
                return (h, "completed");
            }
            let reason = "cancelled_by_guest";
            h.push(bare(Event::CompensationStarted {
                failed_step: None,
                reason: reason.into(),
            }));
            h.push(at(
                "confirm_booking",
                1,
                Event::BookingCancelled {
                    reason: reason.into(),
                    by: CancelledBy::Guest,
                    actor: "guest".into(),
                    refund: Some(Refund {
                        amount: 45_000,
                        percent: 100,
                        policy: Some(CancellationPolicy::Flexible),
                        days_before_check_in: Some(30),
                        rule: "flexible: 1 or more days before check-in: 100%".into(),
                    }),
                },
            ));
            h.push(at(
                "capture_payment",
                1,
                Event::PaymentRefunded {
                    payment_intent_id: pi,
                    refund_id: format!("re_{n:016x}"),
                    amount: 45_000,
                },
            ));
            h.push(released(reason));
            h.push(bare(Event::SagaCompensated {
                reason: reason.into(),
            }));
            "compensated"
        }
    };
    (h, status)
}

/// Writes generated booking sagas and their events until the store holds at least `target`
/// events; returns how many it wrote.
pub(crate) async fn bulk_load(pool: &PgPool, target: u64) -> anyhow::Result<u64> {
    let version: i32 =
        sqlx::query_scalar("SELECT max(version) FROM saga_definitions WHERE name = 'booking'")
            .fetch_one(pool)
            .await
            .context("the booking definition is not registered")?;
    let started = Instant::now();
    let mut written = 0u64;
    let mut n = 0u64;
    let base = Utc::now() - chrono::Duration::days(30);
    while written < target {
        let mut ids = Vec::new();
        let mut statuses = Vec::new();
        let mut versions = Vec::new();
        let mut e_ids = Vec::new();
        let mut e_aggs = Vec::new();
        let mut e_versions = Vec::new();
        let mut e_types = Vec::new();
        let mut e_payloads = Vec::new();
        let mut e_meta = Vec::new();
        let mut e_at: Vec<DateTime<Utc>> = Vec::new();
        for _ in 0..LOAD_BATCH {
            let id = Uuid::now_v7();
            let (events, status) = history(n, 8);
            let t0 = base + chrono::Duration::milliseconds(n as i64 * 10);
            for (i, s) in events.iter().enumerate() {
                e_ids.push(Uuid::now_v7());
                e_aggs.push(id);
                e_versions.push(i as i32 + 1);
                e_types.push(s.event.type_name().to_owned());
                e_payloads.push(s.event.payload());
                e_meta.push(
                    json!({ "correlation_id": id, "causation_id": null, "step": s.step,
                                    "attempt": s.attempt, "worker": "bench" }),
                );
                e_at.push(t0 + chrono::Duration::milliseconds(i as i64));
            }
            ids.push(id);
            statuses.push(status);
            versions.push(events.len() as i32);
            n += 1;
            written += events.len() as u64;
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO sagas (id, saga_name, saga_version, status, input, event_version, finished_at)
             SELECT id, 'booking', $2, status, '{}'::jsonb, v, now()
             FROM unnest($1::uuid[], $3::text[], $4::int[]) AS x(id, status, v)",
        )
        .bind(&ids)
        .bind(version)
        .bind(&statuses)
        .bind(&versions)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                                 payload, metadata, recorded_at)
             SELECT * FROM unnest($1::uuid[], array_fill('booking'::text, ARRAY[cardinality($1::uuid[])]),
                                  $2::uuid[], $3::int[], $4::text[], $5::jsonb[], $6::jsonb[],
                                  $7::timestamptz[])",
        )
        .bind(&e_ids)
        .bind(&e_aggs)
        .bind(&e_versions)
        .bind(&e_types)
        .bind(&e_payloads)
        .bind(&e_meta)
        .bind(&e_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    progress(format_args!(
        "loaded {written} events of {n} booking sagas in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(written)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Pages through `GET /v1/events` from the start until it is caught up.
async fn feed_read(http: &reqwest::Client, base: &str) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut after: Option<String> = None;
    let mut events = 0u64;
    loop {
        let mut req = http
            .get(format!("{base}/v1/events"))
            .bearer_auth(TOKEN)
            .query(&[("limit", "1000")]);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let page: Value = req.send().await?.error_for_status()?.json().await?;
        let n = page["events"].as_array().map_or(0, Vec::len);
        events += n as u64;
        after = page["next"].as_str().map(str::to_owned);
        if n == 0 {
            return Ok((events, started.elapsed()));
        }
    }
}

/// A writer appends `count` events, one per transaction, every `every`, while a reader
/// long-polls the feed; the lag of each event from just before its commit to the reader's
/// receipt of the page that holds it, sorted.
async fn feed_lag(
    pool: &PgPool,
    http: &reqwest::Client,
    base: &str,
    count: usize,
    every: Duration,
) -> anyhow::Result<Vec<Duration>> {
    // Start the reader where the feed is now.
    let mut after: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{base}/v1/events"))
            .bearer_auth(TOKEN)
            .query(&[("limit", "1000")]);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let page: Value = req.send().await?.error_for_status()?.json().await?;
        after = page["next"].as_str().map(str::to_owned);
        if page["events"].as_array().is_none_or(Vec::is_empty) {
            break;
        }
    }
    let sent: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let reader = {
        let (http, base, sent) = (http.clone(), base.to_owned(), sent.clone());
        tokio::spawn(async move {
            let mut lags = Vec::with_capacity(count);
            let mut after = after;
            let deadline = Instant::now() + every * count as u32 + Duration::from_secs(60);
            while lags.len() < count {
                if Instant::now() > deadline {
                    bail!("the feed showed {} of {count} events", lags.len());
                }
                let mut req = http
                    .get(format!("{base}/v1/events"))
                    .bearer_auth(TOKEN)
                    .query(&[("limit", "1000"), ("wait", "10s"), ("types", "SagaResumed")]);
                if let Some(a) = &after {
                    req = req.query(&[("after", a)]);
                }
                let page: Value = req.send().await?.error_for_status()?.json().await?;
                let seen = Instant::now();
                after = page["next"].as_str().map(str::to_owned);
                for e in page["events"].as_array().into_iter().flatten() {
                    let id: Uuid = e["event_id"].as_str().unwrap_or_default().parse()?;
                    if let Some(t0) = sent.lock().expect("lock").get(&id) {
                        lags.push(seen.saturating_duration_since(*t0));
                    }
                }
            }
            Ok(lags)
        })
    };
    append_paced(pool, count, every, &sent).await?;
    let mut lags = reader.await??;
    lags.sort();
    Ok(lags)
}

/// Appends `count` `SagaResumed` events, one per transaction, one every `every`, and notes in
/// `sent` each event's id with the instant just before its commit.
pub(crate) async fn append_paced(
    pool: &PgPool,
    count: usize,
    every: Duration,
    sent: &Mutex<HashMap<Uuid, Instant>>,
) -> anyhow::Result<()> {
    for _ in 0..count {
        let next = Instant::now() + every;
        let mut tx = pool.begin().await?;
        let event = NewEvent::from(Event::SagaResumed {
            wait_reason: "bench".into(),
        });
        let ids = store::events::append(&mut tx, "bench", Uuid::now_v7(), 1, &[event]).await?;
        sent.lock().expect("lock").insert(ids[0], Instant::now());
        tx.commit().await?;
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(())
}

/// `p50 …, p99 …, max …` of sorted lags.
pub(crate) fn lag_figures(sorted: &[Duration]) -> String {
    format!(
        "p50 {}, p99 {}, max {}",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

/// Decodes and folds `records` `rounds` times (the saga's state and its booking); per fold.
fn fold_cost(def: &SagaDefinition, stored: &[(String, Value, Value, DateTime<Utc>)]) -> Duration {
    let id = sagad::domain::SagaId(Uuid::nil());
    let rounds = (200_000 / stored.len().max(1)).clamp(20, 20_000);
    let started = Instant::now();
    for _ in 0..rounds {
        let decoded: Vec<(Event, Tag, DateTime<Utc>)> = stored
            .iter()
            .filter_map(|(t, p, m, at)| Event::from_stored(t, p).ok().map(|e| (e, Tag::of(m), *at)))
            .collect();
        let saga = history::fold(def, &|_| false, decoded.iter().map(|(e, t, _)| (e, t)));
        let booking = bookings::replay(id, decoded.iter().map(|(e, _, at)| (e, *at)));
        std::hint::black_box((saga, booking));
    }
    started.elapsed() / rounds as u32
}

fn as_stored(events: &[Stored]) -> Vec<(String, Value, Value, DateTime<Utc>)> {
    events
        .iter()
        .map(|s| {
            (
                s.event.type_name().to_owned(),
                s.event.payload(),
                json!({ "step": s.step, "attempt": s.attempt, "worker": "bench" }),
                Utc::now(),
            )
        })
        .collect()
}

/// The event-store figures selected by `args`, printed as they come.
pub async fn run(
    args: &BenchArgs,
    sagad: &Path,
    admin_url: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    if args.fold {
        let def = sagad::engine::definition::parse(
            include_str!("../../../sagas/booking.toml"),
            "booking.toml",
            &sagad::engine::actions::catalog(),
        )
        .map_err(|e| anyhow::anyhow!("the built-in booking definition: {e:?}"))?;
        let (largest, _) = history(1, 8);
        let per = fold_cost(&def, &as_stored(&largest));
        println!(
            "fold: largest real booking saga ({} events: 8 capture retries, give-up, void failing twice): {:.1} µs per fold (decode + saga + booking)",
            largest.len(),
            per.as_secs_f64() * 1e6
        );
        for retries in [1_000, 10_000] {
            let (long, _) = history(1, retries);
            let per = fold_cost(&def, &as_stored(&long));
            println!(
                "fold: synthetic saga of {} events: {:.2} ms per fold ({:.2} µs per event)",
                long.len(),
                per.as_secs_f64() * 1e3,
                per.as_secs_f64() * 1e6 / long.len() as f64
            );
        }
    }
    let load = args.rebuild_events.max(args.feed_events);
    if load == 0 && args.feed_lag_events == 0 {
        return Ok(());
    }
    let admin = store::connect(admin_url, 2).await?;
    let name = format!("sagad_bench_events_{:04x}", rand::random::<u16>());
    create_database(&admin, &name).await?;
    let url = database_url(admin_url, &name)?;
    let result = async {
        child::migrate(sagad, &url, dir).await?;
        let double = StripeDouble::start(TcpListener::bind("127.0.0.1:0").await?).await?;
        let notify = Receiver::on(TcpListener::bind("127.0.0.1:0").await?).await?;
        notify.count_only();
        let stripe_base = double.base_url();
        let notify_url = notify.url.clone();
        let child = Sagad::start(&ChildConfig {
            sagad,
            database_url: &url,
            token: TOKEN,
            stripe_base: &stripe_base,
            notify_url: &notify_url,
            workers: 4,
            pool_size: 12,
            role: sagad::config::Role::All,
            label: "events",
            stripe_webhook_secret: None,
            allow_local_webhooks: false,
            nats_url: None,
            dir,
        })
        .await?;
        let pool = store::connect(&url, 4).await?;
        let http = reqwest::Client::new();
        let outcome = async {
            if load > 0 {
                let loaded = bulk_load(&pool, load).await?;
                if args.fold {
                    // Reading the largest real history back, as a point-in-time read does.
                    let id: Uuid = sqlx::query_scalar(
                        "SELECT aggregate_id FROM events GROUP BY aggregate_id ORDER BY count(*) DESC LIMIT 1",
                    )
                    .fetch_one(&pool)
                    .await?;
                    let mut conn = pool.acquire().await?;
                    let mut reads = Vec::with_capacity(2000);
                    let mut n = 0;
                    for _ in 0..2000 {
                        let t = Instant::now();
                        n = store::events::for_aggregate(&mut conn, id).await?.len();
                        reads.push(t.elapsed());
                    }
                    reads.sort();
                    println!(
                        "fold: reading that history ({n} events) from PostgreSQL: p50 {:.0} µs, p99 {:.0} µs",
                        percentile(&reads, 0.5).as_secs_f64() * 1e6,
                        percentile(&reads, 0.99).as_secs_f64() * 1e6
                    );
                }
                if args.rebuild_events > 0 {
                    let mut last = Instant::now();
                    let r = projections::rebuild(&pool, Projection::Bookings, &mut |p| {
                        if last.elapsed() >= Duration::from_secs(5) {
                            last = Instant::now();
                            progress(format_args!(
                                "rebuild: {} of ~{} events, {:.0} events/s",
                                p.events,
                                p.total,
                                p.per_second()
                            ));
                        }
                    })
                    .await?;
                    println!(
                        "rebuild bookings: {} events ({} rows) in {:.1} s = {:.0} events/s; swap held the lock {}",
                        r.events,
                        r.rows,
                        r.elapsed.as_secs_f64(),
                        r.events as f64 / r.elapsed.as_secs_f64(),
                        ms(r.swap)
                    );
                    let v = projections::verify(&pool, Projection::Bookings, &mut |_| {}).await?;
                    println!(
                        "verify bookings: {} events, {} rows, {} differ",
                        v.events,
                        v.rows,
                        v.drift.len()
                    );
                    if !v.drift.is_empty() {
                        bail!("verify found {} rows that differ", v.drift.len());
                    }
                }
                if args.feed_events > 0 {
                    let (events, took) = feed_read(&http, &child.base).await?;
                    if events < loaded {
                        bail!("the feed read {events} events of {loaded}");
                    }
                    println!(
                        "feed read: {events} events in {:.1} s = {:.0} events/s (GET /v1/events, limit 1000, one reader)",
                        took.as_secs_f64(),
                        events as f64 / took.as_secs_f64()
                    );
                }
            }
            if args.feed_lag_events > 0 {
                let every = Duration::from_millis(10);
                let lags =
                    feed_lag(&pool, &http, &child.base, args.feed_lag_events as usize, every)
                        .await?;
                println!(
                    "feed lag (just before commit → the long-polling reader has the page): {} events, one per transaction every {}: {}",
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
    .await;
    drop_database(&admin, &name).await?;
    result
}
