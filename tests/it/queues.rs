//! The three work queues (sagas, Stripe events, webhook deliveries) on the shared queue core:
//! maintenance rescues expired leases, shutdown drains the work in flight and hands back what it
//! holds, and the cleaners prune settled rows past the retention, in batches.

use std::time::Duration;

use sagad::config::Role;
use sagad::events::NewEvent;
use sagad::maintenance::{Progress, cleaner};
use sagad::store;
use sqlx::PgPool;
use stripe_double::{Fault, Operation};
use uuid::Uuid;

use crate::harness::{AppOptions, booking_input, count, eventually, spawn_app_with};

fn api_only() -> AppOptions {
    AppOptions {
        role: Role::Api,
        ..Default::default()
    }
}

/// An enabled endpoint for every event type at `url`, and `n` published events fanned out to it:
/// `n` pending deliveries, in event order.
async fn pending_deliveries(pool: &PgPool, url: &str, n: usize) -> (Uuid, Vec<Uuid>) {
    let mut conn = pool.acquire().await.unwrap();
    let endpoint = store::outbound::insert_endpoint(
        &mut conn,
        &store::outbound::NewEndpoint {
            url: url.into(),
            description: "queue tests".into(),
            event_types: vec!["*".into()],
            enabled: true,
            rate_limit: None,
        },
        "whsec_queue_tests",
    )
    .await
    .unwrap()
    .id
    .0;
    let events: Vec<NewEvent> = (0..n)
        .map(|i| {
            NewEvent::from(
                sagad::policies::Cancellation::by_sagad(&format!("reason {i}")).event(100, 100),
            )
        })
        .collect();
    store::events::append(&mut conn, "booking", Uuid::now_v7(), 1, &events)
        .await
        .unwrap();
    let ids = sqlx::query_scalar(
        "SELECT d.id FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id
         WHERE d.endpoint_id = $1 ORDER BY e.version",
    )
    .bind(endpoint)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    (endpoint, ids)
}

/// A URL on 127.0.0.1 where nothing listens.
async fn closed_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}/hook", l.local_addr().unwrap())
}

/// Stores an inbox event in the given state (`received_at` and, when settled, `processed_at`
/// that long ago).
async fn insert_stripe_event(pool: &PgPool, id: &str, status: &str, age: Duration) {
    sqlx::query(
        "INSERT INTO stripe_events (id, event_type, payload, status, received_at, processed_at)
         VALUES ($1, 'customer.created', jsonb_build_object('id', $1, 'type', 'customer.created'),
                 $2, now() - $3, CASE WHEN $2 IN ('processed', 'ignored', 'unmatched') THEN now() - $3 END)",
    )
    .bind(id)
    .bind(status)
    .bind(age)
    .execute(pool)
    .await
    .unwrap();
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Lease {
    status: String,
    attempts: i32,
    locked_by: Option<String>,
}

async fn stripe_event_lease(pool: &PgPool, id: &str) -> Lease {
    sqlx::query_as("SELECT status, attempts, locked_by FROM stripe_events WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn delivery_lease(pool: &PgPool, id: Uuid) -> Lease {
    sqlx::query_as("SELECT status, attempts, locked_by FROM webhook_deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn lease(status: &str, attempts: i32, locked_by: Option<&str>) -> Lease {
    Lease {
        status: status.into(),
        attempts,
        locked_by: locked_by.map(Into::into),
    }
}

// ---------------------------------------------------------------------------------------------
// Lease rescue, by maintenance

#[tokio::test]
async fn maintenance_rescues_a_stripe_event_whose_worker_died() {
    let api = spawn_app_with(api_only()).await;
    insert_stripe_event(&api.pool, "evt_orphan", "pending", Duration::ZERO).await;
    // As if a worker had claimed it and died mid-processing.
    sqlx::query(
        "UPDATE stripe_events SET status = 'processing', attempts = 1, locked_by = 'dead-worker',
                locked_until = now() - interval '1 second'
         WHERE id = 'evt_orphan'",
    )
    .execute(&api.pool)
    .await
    .unwrap();
    let worker = api.spawn_sibling(AppOptions::default()).await;
    let settled = eventually("the orphaned event processed", || async {
        let l = stripe_event_lease(&worker.pool, "evt_orphan").await;
        (l.status != "processing" && l.status != "pending").then_some(l)
    })
    .await;
    // Rescued, claimed again (a second attempt) and settled: sagad does not act on the type.
    assert_eq!(settled, lease("ignored", 2, None));
}

#[tokio::test]
async fn maintenance_rescues_a_delivery_whose_worker_died() {
    let api = spawn_app_with(api_only()).await;
    let (_, ids) = pending_deliveries(&api.pool, &closed_url().await, 1).await;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'delivering', attempts = 1, slot = 1,
                locked_by = 'dead-worker', locked_until = now() - interval '1 second'
         WHERE id = $1",
    )
    .bind(ids[0])
    .execute(&api.pool)
    .await
    .unwrap();

    let worker = api.spawn_sibling(AppOptions::default()).await;
    // Rescued, then attempted again: the dead worker's claim was attempt 1.
    let attempted: i32 = eventually("the orphaned delivery attempted", || async {
        sqlx::query_scalar("SELECT attempt FROM webhook_attempts WHERE delivery_id = $1")
            .bind(ids[0])
            .fetch_optional(&worker.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(attempted, 2);
    let l = delivery_lease(&worker.pool, ids[0]).await;
    assert_ne!(l.locked_by.as_deref(), Some("dead-worker"), "{l:?}");
}

// ---------------------------------------------------------------------------------------------
// Shutdown: drain, then hand back

#[tokio::test]
async fn shutdown_hands_back_a_saga_waiting_in_the_local_queue() {
    let api = spawn_app_with(api_only()).await;
    let app = api
        .spawn_sibling(AppOptions {
            workers: 1,
            ..Default::default()
        })
        .await;
    // The one worker is busy authorizing the first saga when the second starts.
    app.double
        .inject(Fault::latency(Operation::Create, Duration::from_secs(2)));
    let first = app
        .start_booking(booking_input("queue-1", "pm_card_visa"))
        .await;
    app.wait_faults_taken().await;
    let second = app
        .start_booking(booking_input("queue-2", "pm_card_visa"))
        .await;
    let holders: Vec<Option<String>> =
        sqlx::query_scalar("SELECT locked_by FROM sagas WHERE id = ANY($1) ORDER BY id")
            .bind(vec![first, second])
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(
        holders[0].is_some() && holders[0] == holders[1],
        "both leased to this process: {holders:?}"
    );
    app.stop().await;

    let leased = count(
        &api.pool,
        "SELECT count(*) FROM sagas WHERE locked_by IS NOT NULL OR next_run_at > now()",
    )
    .await;
    assert_eq!(leased, 0, "every saga handed back, due at once");
    let next = api.spawn_sibling(AppOptions::default()).await;
    for id in [first, second] {
        assert_eq!(next.wait_terminal(id).await["status"], "completed");
        assert_eq!(next.payment_intents_of(id).len(), 1);
    }
}

#[tokio::test]
async fn shutdown_hands_back_a_stripe_event_still_processing_after_the_grace_period() {
    let app = spawn_app_with(api_only()).await;
    insert_stripe_event(&app.pool, "evt_slow", "pending", Duration::ZERO).await;
    sqlx::query(
        "UPDATE stripe_events SET event_type = 'payment_intent.succeeded',
                payload = '{\"id\": \"evt_slow\", \"type\": \"payment_intent.succeeded\",
                            \"data\": {\"object\": {\"id\": \"pi_slow\", \"object\": \"payment_intent\"}}}'
         WHERE id = 'evt_slow'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Processing reads the PaymentIntent from Stripe, which answers after the grace period.
    app.double
        .inject(Fault::latency(Operation::Retrieve, Duration::from_secs(8)));
    let worker = app.spawn_sibling(AppOptions::default()).await;
    worker.wait_faults_taken().await;
    let held = stripe_event_lease(&worker.pool, "evt_slow").await;
    assert_eq!((held.status.as_str(), held.attempts), ("processing", 1));
    let pool = worker.pool.clone();
    worker.stop().await;

    // Not counted as an attempt: it was cut short, not failed.
    assert_eq!(
        stripe_event_lease(&pool, "evt_slow").await,
        lease("pending", 0, None)
    );
}

#[tokio::test]
async fn shutdown_hands_back_a_delivery_still_in_flight_after_the_grace_period() {
    // A receiver that takes every connection and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = hanging.accept().await {
            open.push(conn);
        }
    });
    let api = spawn_app_with(api_only()).await;
    let (_, ids) = pending_deliveries(&api.pool, &url, 1).await;
    let worker = api
        .spawn_sibling(AppOptions {
            outbound: sagad::outbound::OutboundConfig {
                timeout: Duration::from_secs(30),
                shutdown_grace: Duration::from_millis(300),
                ..crate::harness::test_outbound_config()
            },
            ..Default::default()
        })
        .await;
    eventually("the delivery in flight", || async {
        let l = delivery_lease(&worker.pool, ids[0]).await;
        (l.status == "delivering").then_some(())
    })
    .await;
    let pool = worker.pool.clone();
    worker.stop().await;

    assert_eq!(
        delivery_lease(&pool, ids[0]).await,
        lease("pending", 0, None)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_attempts").await,
        0,
        "no attempt recorded"
    );
    held.abort();
}

// ---------------------------------------------------------------------------------------------
// Cleaners

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn delivered_deliveries_past_the_retention_go_with_their_attempts_in_batches() {
    let app = spawn_app_with(api_only()).await;
    let (endpoint, ids) = pending_deliveries(&app.pool, &closed_url().await, 8).await;
    // Five delivered two hours ago, one delivered just now, one dead and one still pending
    // since two hours ago; two attempts each.
    let states = [
        "delivered-old",
        "delivered-old",
        "delivered-old",
        "delivered-old",
        "delivered-old",
        "delivered-now",
        "dead-old",
        "pending-old",
    ];
    for (id, state) in ids.iter().zip(states) {
        sqlx::query(
            "UPDATE webhook_deliveries
             SET status = split_part($2, '-', 1), attempts = 2,
                 created_at = now() - interval '3 hours',
                 delivered_at = CASE $2 WHEN 'delivered-old' THEN now() - interval '2 hours'
                                        WHEN 'delivered-now' THEN now() END,
                 dead_at = CASE $2 WHEN 'dead-old' THEN now() - interval '2 hours' END
             WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .execute(&app.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, latency_ms)
             SELECT $1, n, now() - interval '2 hours', 5 FROM generate_series(1, 2) n",
        )
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let events_before = count(&app.pool, "SELECT count(*) FROM events").await;

    // Two rows per statement, two statements per round: the round stops with work left.
    let small = cleaner::Batches {
        size: 2,
        per_round: 2,
    };
    let progress = cleaner::deliveries(&app.pool, HOUR, small).await.unwrap();
    assert_eq!(progress, Progress::More);
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM webhook_deliveries").await,
        4
    );
    let progress = cleaner::deliveries(&app.pool, HOUR, small).await.unwrap();
    assert_eq!(progress, Progress::Done);

    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id")
            .bind(endpoint)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let mut kept = ids[5..].to_vec();
    kept.sort();
    assert_eq!(left, kept, "the recent, the dead and the pending stay");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM webhook_attempts").await,
        6,
        "the attempts of the deliveries that stay stay"
    );
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM events").await,
        events_before,
        "events are the record"
    );
    let metrics = app.metrics().await;
    for table in ["webhook_deliveries", "webhook_attempts"] {
        assert!(
            metrics.contains(&format!(
                "sagad_maintenance_pruned_total{{table=\"{table}\"}}"
            )),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn settled_stripe_events_past_the_retention_go_in_batches() {
    let app = spawn_app_with(api_only()).await;
    let old = 2 * HOUR;
    for (id, status, age) in [
        ("evt_processed", "processed", old),
        ("evt_ignored", "ignored", old),
        ("evt_unmatched", "unmatched", old),
        ("evt_processed_2", "processed", old),
        ("evt_recent", "processed", Duration::from_secs(60)),
        ("evt_pending", "pending", old),
        ("evt_dead", "dead", old),
    ] {
        insert_stripe_event(&app.pool, id, status, age).await;
    }
    // Reprocessed lately: received long ago, settled again just now.
    insert_stripe_event(&app.pool, "evt_reprocessed", "processed", old).await;
    sqlx::query("UPDATE stripe_events SET processed_at = now() WHERE id = 'evt_reprocessed'")
        .execute(&app.pool)
        .await
        .unwrap();

    let small = cleaner::Batches {
        size: 3,
        per_round: 1,
    };
    let progress = cleaner::stripe_events(&app.pool, HOUR, small)
        .await
        .unwrap();
    assert_eq!(progress, Progress::More, "one full batch of three");
    let progress = cleaner::stripe_events(&app.pool, HOUR, small)
        .await
        .unwrap();
    assert_eq!(progress, Progress::Done);

    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM stripe_events ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        ["evt_dead", "evt_pending", "evt_recent", "evt_reprocessed"]
    );
    assert!(
        app.metrics()
            .await
            .contains("sagad_maintenance_pruned_total{table=\"stripe_events\"}")
    );
}

/// The cleaners' statements, as planned on sagad's connections (generic plans), find old rows
/// through an index, oldest first, not by reading the whole table.
#[tokio::test]
async fn the_cleaners_find_old_rows_through_an_index() {
    let app = spawn_app_with(api_only()).await;
    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (name, sql, index) in [
        (
            "prune_delivered",
            store::outbound::PRUNE_DELIVERED,
            "webhook_deliveries_delivered",
        ),
        (
            "prune_settled",
            store::stripe_inbox::PRUNE_SETTLED,
            // Either index that walks from the oldest rows: by time alone, or by status then
            // time (migration 0030).
            "stripe_events_",
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PREPARE {name}(interval, bigint) AS {sql}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE {name}('1 hour', 1000)"
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains(&format!("using {index}")),
            "{name} does not use {index}…:\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{name}:\n{plan}");
    }
}
