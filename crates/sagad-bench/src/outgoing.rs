//! Outgoing webhooks under load. A receiver in this process answers at once; the bench checks each
//! request's Standard Webhooks signature and notes when each event was first seen. Against one
//! endpoint subscribed to `*`: a backlog of events appended in ONE transaction (how fast sagad
//! drains it), then events appended one per transaction at a moderate open-loop rate (how long from
//! their COMMIT to the first delivery attempt).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::load::Api;
use super::report::WebhookDeliveries;
use super::{Bench, EXTRA_CONNECTIONS, TOKEN, ms, progress};
use sagad::events::{Event, NewEvent};
use sagad::signing;
use sagad::store::{self, events};
use sagad_test_support::Receiver;

/// How long the bench waits for deliveries after the last event is committed.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);
/// Events of the commit → first attempt run (at most).
const LATENCY_EVENTS: usize = 1000;
/// Its rate: half the backlog rate, at most this.
const LATENCY_MAX_RATE: f64 = 200.0;
/// Connections the bench appends through in the open-loop run.
const APPEND_CONNECTIONS: u32 = 8;

/// What the receiver has seen.
#[derive(Debug, Default)]
struct Seen {
    /// When each event's first delivery arrived.
    first: HashMap<Uuid, Instant>,
    receipts: usize,
    bad_signatures: usize,
    /// Bodies without a readable `event_id`.
    unreadable: usize,
}

impl Seen {
    /// Records one request; returns whether its event was new.
    fn record(&mut self, event_id: Option<Uuid>, signature_ok: bool, at: Instant) -> bool {
        self.receipts += 1;
        if !signature_ok {
            self.bad_signatures += 1;
        }
        let Some(id) = event_id else {
            self.unreadable += 1;
            return false;
        };
        match self.first.entry(id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(at);
                true
            }
        }
    }

    /// Requests beyond the first per event.
    fn duplicates(&self) -> usize {
        self.receipts - self.unreadable - self.first.len()
    }
}

/// The integrator's side: what the receiver got, verified and tallied.
struct Tally<'r> {
    receiver: &'r Receiver,
    secret: Vec<u8>,
    seen: Seen,
    /// Requests of the receiver already tallied.
    read: usize,
}

/// The part of a delivery body the bench reads.
#[derive(serde::Deserialize)]
struct Delivered {
    event_id: Uuid,
}

impl<'r> Tally<'r> {
    fn new(receiver: &'r Receiver, secret: Vec<u8>) -> Self {
        Self {
            receiver,
            secret,
            seen: Seen::default(),
            read: 0,
        }
    }

    /// Takes in the requests that came since the last call.
    fn update(&mut self) {
        let hits = self.receiver.hits_from(self.read);
        self.read += hits.len();
        for hit in hits {
            let header = |name: &str| hit.headers.get(name).and_then(|v| v.to_str().ok());
            let ok = signature_ok(
                &self.secret,
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                &hit.body,
            );
            let event_id = serde_json::from_slice::<Delivered>(&hit.body)
                .ok()
                .map(|d| d.event_id);
            self.seen.record(event_id, ok, hit.at);
        }
    }

    /// Waits until `target` distinct events were seen, or the deadline passes.
    async fn wait_for_distinct(&mut self, target: usize) -> bool {
        let mut received = self.receiver.watch();
        let reached = async {
            loop {
                self.update();
                if self.seen.first.len() >= target {
                    return true;
                }
                if received.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(DELIVERY_DEADLINE, reached)
            .await
            .unwrap_or(false)
    }
}

/// Whether one of the space-separated `v1,…` signatures is the endpoint secret's signature of
/// `{id}.{timestamp}.{body}` (Standard Webhooks).
fn signature_ok(
    secret: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (id, timestamp, signatures) else {
        return false;
    };
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        return false;
    };
    let expected = signing::sign(secret, id, timestamp, body);
    signatures.split(' ').any(|s| s == expected)
}

/// The published events of booking `n`, in the order its saga records them.
fn booking_events(n: usize) -> Vec<Event> {
    let day = |d| NaiveDate::from_ymd_opt(2027, 6, d).unwrap_or_default();
    let (listing, pi) = (format!("bench-listing-{n}"), format!("pi_bench_{n}"));
    vec![
        Event::BookingRequested {
            listing_id: listing.clone(),
            guest_id: format!("bench-guest-{n}"),
            check_in: day(1),
            check_out: day(4),
            amount: 37_500,
            currency: "eur".into(),
        },
        Event::InventoryHeld {
            hold_id: Uuid::now_v7(),
            listing_id: listing.clone(),
            check_in: day(1),
            check_out: day(4),
            expires_at: Utc::now() + chrono::Duration::minutes(15),
        },
        Event::PaymentAuthorized {
            payment_intent_id: pi.clone(),
            amount: 37_500,
            currency: "eur".into(),
        },
        Event::PaymentCaptured {
            payment_intent_id: pi,
            amount: 37_500,
            currency: "eur".into(),
        },
        Event::BookingConfirmed {
            confirmation_code: format!("BENCH{n:06}"),
            listing_id: listing,
            check_in: day(1),
            check_out: day(4),
        },
        Event::SagaCompleted {},
    ]
}

/// Appends `n` events (whole bookings, then part of one) in one transaction; returns their ids
/// and when the COMMIT returned.
async fn append_backlog(pool: &PgPool, n: usize) -> anyhow::Result<(Vec<Uuid>, Instant)> {
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(n);
    for booking in 0.. {
        if ids.len() >= n {
            break;
        }
        let batch: Vec<NewEvent> = booking_events(booking)
            .into_iter()
            .take(n - ids.len())
            .map(NewEvent::from)
            .collect();
        ids.extend(events::append(&mut tx, "booking", Uuid::now_v7(), 1, &batch).await?);
    }
    tx.commit().await?;
    Ok((ids, Instant::now()))
}

/// Appends `count` events, each in its own transaction (a fresh booking aggregate), at `rate` per
/// second whatever the commits do; returns each event's id and when its COMMIT returned.
async fn append_open_loop(
    pool: &PgPool,
    count: usize,
    rate: f64,
) -> anyhow::Result<Vec<(Uuid, Instant)>> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for i in 0..count {
        ticker.tick().await;
        let pool = pool.clone();
        let event = NewEvent::from(booking_events(i).swap_remove(i % 6));
        tasks.spawn(async move {
            let mut tx = pool.begin().await?;
            let ids = events::append(&mut tx, "booking", Uuid::now_v7(), 1, &[event]).await?;
            tx.commit().await?;
            let at = Instant::now();
            ids.first()
                .map(|id| (*id, at))
                .context("append returned no event id")
        });
    }
    let mut committed = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        committed.push(joined??);
    }
    Ok(committed)
}

/// For each committed event the receiver saw: COMMIT returned → first delivery arrived. Also how
/// many it never saw.
fn commit_to_first(
    committed: &[(Uuid, Instant)],
    first: &HashMap<Uuid, Instant>,
) -> (Vec<Duration>, usize) {
    let mut delays = Vec::with_capacity(committed.len());
    let mut missing = 0;
    for (id, at) in committed {
        match first.get(id) {
            Some(seen) => delays.push(seen.saturating_duration_since(*at)),
            None => missing += 1,
        }
    }
    (delays, missing)
}

/// A setting of the child as it will read it: the inherited environment, else the default.
pub(super) fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Bench<'_> {
    /// Outgoing webhook deliveries/s and commit → first attempt, on a fresh database.
    pub(super) async fn webhook_deliveries(
        &self,
        backlog: usize,
    ) -> anyhow::Result<WebhookDeliveries> {
        let name = format!("sagad_bench_{}_webhooks", self.run_id);
        let url = self.fresh_database(&name).await?;
        let workers = self.args.workers.first().copied().unwrap_or(4) as usize;
        let pool_size = workers as u32 + EXTRA_CONNECTIONS;
        let sagad = super::Sagad::start(&super::ChildConfig {
            label: "webhooks",
            allow_local_webhooks: true,
            nats_url: None,
            ..self.child_config(&url, workers, pool_size)
        })
        .await?;
        let db = store::connect(&url, APPEND_CONNECTIONS).await?;
        let log = sagad.log_mark();
        let result = self.deliveries(&sagad.base, &db, backlog).await;
        let peak = sagad.memory();
        sagad.stop().await?;
        let log_warnings = log.warnings_since();
        let measured = result?;

        let outcomes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM webhook_deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&db)
        .await?;
        let retried: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE attempts > 1")
                .fetch_one(&db)
                .await?;
        db.close().await;
        super::wait_for_no_backends(&self.admin, &name).await?;
        super::drop_database(&self.admin, &name).await?;

        // What the child runs with: its environment, else sagad's defaults.
        let defaults = sagad::config::ServeArgs::defaults().outbound;
        let report = WebhookDeliveries {
            outcomes: outcomes.into_iter().collect::<BTreeMap<_, _>>(),
            retried,
            webhook_workers: env_or("SAGAD_WEBHOOK_WORKERS", defaults.webhook_workers as usize),
            endpoint_concurrency: env_or(
                "SAGAD_WEBHOOK_ENDPOINT_CONCURRENCY",
                defaults.webhook_endpoint_concurrency as usize,
            ),
            db_pool_size: pool_size,
            log_warnings,
            peak_rss_mib: peak.map(|m| m.hwm_mib),
            ..measured
        };
        progress(format_args!(
            "webhooks: {:.1} deliveries/s, commit → first attempt p99 {}",
            report.deliveries_per_s,
            report
                .commit_to_first_attempt_ms
                .map_or("-".into(), |p| format!("{:.1} ms", p.p99))
        ));
        Ok(report)
    }

    /// The two runs against a running child; settings the caller knows are left empty.
    async fn deliveries(
        &self,
        base: &str,
        db: &PgPool,
        backlog: usize,
    ) -> anyhow::Result<WebhookDeliveries> {
        // Always 2xx: a refusal would make sagad retry; a bad signature is counted instead.
        let receiver = Receiver::on(TcpListener::bind("127.0.0.1:0").await?).await?;
        let api = Api::new(base, TOKEN)?;
        let created = api
            .post_json(
                "/v1/webhook-endpoints",
                &json!({ "url": receiver.url, "event_types": ["*"], "description": "sagad-bench" }),
            )
            .await
            .context("registering the bench's webhook endpoint")?;
        let secret = created["secret"]
            .as_str()
            .context("the endpoint was created without a secret")?;
        let mut tally = Tally::new(&receiver, signing::secret_bytes(secret));

        progress(format_args!(
            "webhooks: {backlog} events appended in one transaction, then delivered"
        ));
        let (backlog_ids, committed_at) = append_backlog(db, backlog).await?;
        tally.wait_for_distinct(backlog_ids.len()).await;
        let firsts: Vec<Instant> = backlog_ids
            .iter()
            .filter_map(|id| tally.seen.first.get(id).copied())
            .collect();
        let backlog_missing = backlog_ids.len() - firsts.len();
        let elapsed = firsts.iter().max().map_or(Duration::ZERO, |last| {
            last.saturating_duration_since(committed_at)
        });
        let first_ms = firsts.iter().min().map_or(0.0, |first| {
            first.saturating_duration_since(committed_at).as_secs_f64() * 1000.0
        });
        let deliveries_per_s = firsts.len() as f64 / elapsed.as_secs_f64().max(1e-9);

        let count = backlog.min(LATENCY_EVENTS);
        let rate = (deliveries_per_s / 2.0).clamp(1.0, LATENCY_MAX_RATE);
        progress(format_args!(
            "webhooks: {deliveries_per_s:.1} deliveries/s; now {count} events, one per transaction at {rate:.0}/s"
        ));
        let committed = append_open_loop(db, count, rate).await?;
        tally.wait_for_distinct(backlog_ids.len() + count).await;
        let seen = &tally.seen;
        let (delays, latency_missing) = commit_to_first(&committed, &seen.first);
        Ok(WebhookDeliveries {
            deliveries_per_s,
            backlog: backlog_ids.len(),
            backlog_elapsed_s: elapsed.as_secs_f64(),
            backlog_first_ms: first_ms,
            commit_to_first_attempt_ms: ms(delays.into_iter()),
            latency_rate_per_s: rate,
            latency_events: committed.len(),
            receipts: seen.receipts,
            duplicates: seen.duplicates(),
            bad_signatures: seen.bad_signatures + seen.unreadable,
            missing: backlog_missing + latency_missing,
            outcomes: BTreeMap::new(),
            retried: 0,
            webhook_workers: 0,
            endpoint_concurrency: 0,
            db_pool_size: 0,
            log_warnings: 0,
            peak_rss_mib: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_standard_webhooks_signatures() {
        let secret = signing::secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"event_id":"0190b6c4-0000-7000-8000-000000000000"}"#;
        let good = signing::sign(&secret, "msg_1", 1_700_000_000, body);
        let other = signing::sign(b"another secret", "msg_1", 1_700_000_000, body);
        let check =
            |sigs: &str, ts: &str| signature_ok(&secret, Some("msg_1"), Some(ts), Some(sigs), body);
        assert!(check(&good, "1700000000"));
        assert!(check(&format!("{other} {good}"), "1700000000"));
        assert!(!check(&other, "1700000000"));
        assert!(!check(&good, "1700000001"));
        assert!(!check(&good, "soon"));
        assert!(!signature_ok(
            &secret,
            None,
            Some("1700000000"),
            Some(&good),
            body
        ));
        assert!(!signature_ok(
            &secret,
            Some("msg_1"),
            Some("1700000000"),
            Some(&good),
            b"{}"
        ));
    }

    #[test]
    fn the_first_delivery_counts_and_later_ones_are_duplicates() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let mut seen = Seen::default();
        assert!(seen.record(Some(a), true, t0));
        assert!(!seen.record(Some(a), true, later));
        assert!(seen.record(Some(b), false, later));
        assert!(!seen.record(None, true, later));
        assert_eq!(seen.first.get(&a), Some(&t0));
        assert_eq!(
            (
                seen.receipts,
                seen.duplicates(),
                seen.bad_signatures,
                seen.unreadable
            ),
            (4, 1, 1, 1)
        );
    }

    #[test]
    fn matches_commits_to_first_deliveries() {
        let t0 = Instant::now();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let first = HashMap::from([
            (a, t0 + Duration::from_millis(7)),
            // Seen "before" its commit returned (the reply raced the delivery): zero, not negative.
            (b, t0),
        ]);
        let committed = [(a, t0), (b, t0 + Duration::from_millis(1)), (c, t0)];
        let (delays, missing) = commit_to_first(&committed, &first);
        assert_eq!(delays, vec![Duration::from_millis(7), Duration::ZERO]);
        assert_eq!(missing, 1);
    }

    #[test]
    fn a_booking_publishes_six_catalogued_events() {
        let events = booking_events(3);
        assert_eq!(events.len(), 6);
        for e in &events {
            assert!(
                sagad::outbound::catalog::public_type(e.type_name()).is_some(),
                "{} is not published",
                e.type_name()
            );
        }
    }
}
