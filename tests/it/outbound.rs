//! Outgoing webhooks against real receivers on 127.0.0.1: signing, retries, Retry-After, timeouts,
//! 410, crash safety, routing, the SSRF guard, dead letters and redelivery, and the catalog.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sagad::config::Role;
use sagad::events::{Event, NewEvent};
use sagad::store;
use sagad_test_support::{Hit, Receiver, Reply};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::harness::{
    AppOptions, TestApp, booking_input, spawn_app_with, spawn_instance, test_outbound_config,
};

// ---------------------------------------------------------------------------------------------
// Helpers

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `f` until it yields a value, for at most 10 s.
async fn wait_some<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn create_endpoint(app: &TestApp, url: &str, types: &[&str]) -> (Uuid, String) {
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": url, "event_types": types, "description": "test receiver" }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().unwrap().parse().unwrap(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

/// Appends `events` to a fresh booking aggregate and commits; returns the aggregate id.
async fn emit(pool: &PgPool, events: Vec<Event>) -> Uuid {
    let id = Uuid::now_v7();
    let events: Vec<NewEvent> = events.into_iter().map(NewEvent::from).collect();
    let mut tx = pool.begin().await.unwrap();
    store::events::append(&mut tx, "booking", id, 1, &events)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

fn cancelled(reason: &str) -> Event {
    sagad::policies::Cancellation::by_sagad(reason).event(45000, 45000)
}

async fn deliveries(pool: &PgPool, endpoint: Uuid) -> Vec<(Uuid, String)> {
    sqlx::query_as(
        "SELECT id, status FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY created_at",
    )
    .bind(endpoint)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn delivery_view(app: &TestApp, id: Uuid) -> Value {
    app.get_json(&format!("/v1/webhook-deliveries/{id}")).await
}

async fn wait_delivery_status(app: &TestApp, endpoint: Uuid, status: &str) -> Uuid {
    wait_some(&format!("a {status} delivery"), || async {
        deliveries(&app.pool, endpoint)
            .await
            .into_iter()
            .find(|(_, s)| s == status)
            .map(|(id, _)| id)
    })
    .await
}

/// An independent Standard Webhooks verifier (not sagad's signing module): every `v1,` signature
/// in the header is checked against `secret`; true if one matches and the timestamp is fresh.
pub(crate) fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let (id, ts, sigs) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    );
    let Ok(ts_num) = ts.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - ts_num).abs() > 300 {
        return false;
    }
    expected_signatures(secret, id, ts, body, sigs)
}

fn expected_signatures(secret: &str, id: &str, ts: &str, body: &[u8], sigs: &str) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    sigs.split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

fn schema_validator(event_type: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/webhooks/schemas/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("no schema for {event_type} at {path}")),
    )
    .unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// Asserts a payload sagad sent matches its type's schema in `webhooks/schemas`.
pub(crate) fn assert_matches_schema(body: &Value) {
    let t = body["type"].as_str().expect("payload has a type");
    let v = schema_validator(t);
    let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{t} payload violates its schema: {errors:?}\n{body:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn the_independent_verifier_passes_the_standard_webhooks_test_vector() {
    assert!(expected_signatures(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ));
    assert!(!expected_signatures(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265331",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ));
}

#[test]
fn every_catalog_type_has_a_schema_and_a_valid_example() {
    for t in sagad::outbound::catalog::public_types() {
        let path = format!("{}/webhooks/examples/{t}.json", env!("CARGO_MANIFEST_DIR"));
        let example: Value = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("no example {path}")),
        )
        .unwrap();
        assert_matches_schema(&example);
        let mut broken = example.clone();
        broken["data"]["unexpected"] = json!(1);
        assert!(
            !schema_validator(t).is_valid(&broken),
            "{t} schema accepts anything"
        );
    }
}

#[tokio::test]
async fn signatures_verify_and_both_secrets_sign_during_rotation() {
    let app = spawn_app_with(AppOptions::default()).await;
    let rx = Receiver::start().await;
    let (endpoint, secret) = create_endpoint(&app, &rx.url, &["booking.*"]).await;
    assert!(secret.starts_with("whsec_"));
    let raw = STANDARD.decode(&secret[6..]).unwrap();
    assert!((24..=64).contains(&raw.len()));

    emit(&app.pool, vec![cancelled("first")]).await;
    let hits = rx.wait_hits(1).await;
    assert!(verify(&secret, &hits[0].headers, &hits[0].body));
    assert!(!verify(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &hits[0].headers,
        &hits[0].body
    ));
    assert!(hits[0].header("webhook-id").starts_with("msg_"));
    let body = hits[0].json();
    assert_eq!(body["type"], "booking.cancelled");
    assert_eq!(body["data"]["reason"], "first");
    assert_eq!(body["aggregate_version"], 1);
    assert_matches_schema(&body);

    let rotated: Value = app
        .post(&format!("/v1/webhook-endpoints/{endpoint}/rotate-secret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    emit(&app.pool, vec![cancelled("second")]).await;
    let hits = rx.wait_hits(2).await;
    assert_eq!(hits[1].header("webhook-signature").split(' ').count(), 2);
    assert!(
        verify(&secret, &hits[1].headers, &hits[1].body),
        "old secret still signs"
    );
    assert!(
        verify(&new_secret, &hits[1].headers, &hits[1].body),
        "new secret signs"
    );
}

#[tokio::test]
async fn down_then_up_is_delivered_with_the_same_webhook_id() {
    // After the second failure the delivery waits (10 minutes) until the test has its receiver
    // up and makes it due: the down phase is exactly two attempts, however slow the machine.
    let mut opts = AppOptions::default();
    opts.outbound.retry.schedule = [30, 600_000, 30].map(Duration::from_millis).to_vec();
    let app = spawn_app_with(opts).await;
    // Reserve a port, then close it: the receiver is down (connection refused).
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let (endpoint, _) = create_endpoint(&app, &url, &["*"]).await;
    emit(&app.pool, vec![cancelled("x")]).await;

    let delivery: Uuid = wait_some("two failed attempts", || async {
        sqlx::query_scalar(
            "SELECT d.id FROM webhook_deliveries d WHERE d.endpoint_id = $1
               AND (SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) >= 2",
        )
        .bind(endpoint)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await;
    // Up again, answering 500 once more, then 200.
    let rx = Receiver::on(TcpListener::bind(("127.0.0.1", port)).await.unwrap())
        .await
        .unwrap();
    rx.script([Reply::Status(500)]);
    wait_for("the second failure to be settled", || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM webhook_deliveries WHERE id = $1")
            .bind(delivery)
            .fetch_one(&app.pool)
            .await
            .unwrap()
            == "pending"
    })
    .await;
    sqlx::query("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = $1")
        .bind(delivery)
        .execute(&app.pool)
        .await
        .unwrap();
    wait_delivery_status(&app, endpoint, "delivered").await;
    let hits = rx.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].header("webhook-id"), hits[1].header("webhook-id"));

    let view = delivery_view(&app, delivery).await;
    assert_eq!(view["webhook_id"], hits[0].header("webhook-id"));
    let attempts = view["attempts"].as_array().unwrap();
    assert!(attempts.len() == 4, "{view:#}");
    assert!(attempts[0]["status_code"].is_null());
    assert!(!attempts[0]["error"].as_str().unwrap().is_empty());
    assert_eq!(attempts[2]["status_code"], 500);
    assert_eq!(attempts[3]["status_code"], 200);
    assert!(attempts[3]["latency_ms"].as_i64().unwrap() >= 0);
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_emits_endpoint_disabled() {
    let app = spawn_app_with(AppOptions::default()).await;
    let gone = Receiver::start().await;
    gone.script([Reply::Status(410)]);
    let watcher = Receiver::start().await;
    let (gone_id, _) = create_endpoint(&app, &gone.url, &["booking.*"]).await;
    let (_, watcher_secret) = create_endpoint(&app, &watcher.url, &["endpoint.*"]).await;

    emit(&app.pool, vec![cancelled("x")]).await;
    let hits = watcher.wait_hits(1).await;
    let body = hits[0].json();
    assert!(verify(&watcher_secret, &hits[0].headers, &hits[0].body));
    assert_eq!(body["type"], "endpoint.disabled");
    assert_eq!(body["aggregate_type"], "webhook_endpoint");
    assert_eq!(body["aggregate_id"], gone_id.to_string());
    assert_eq!(body["aggregate_version"], 1);
    assert_eq!(body["data"]["reason"], "gone");
    assert_matches_schema(&body);

    let ep: Value = app
        .get_json(&format!("/v1/webhook-endpoints/{gone_id}"))
        .await;
    assert_eq!(ep["enabled"], false);
    assert_eq!(ep["disabled_reason"], "gone");
    // A disabled endpoint gets nothing more: the next event reaches an endpoint subscribed to
    // it, and nothing went to the disabled one (fan-out happens in the event's own commit).
    let control = Receiver::start().await;
    create_endpoint(&app, &control.url, &["booking.*"]).await;
    emit(&app.pool, vec![cancelled("y")]).await;
    let seen = control.wait_hits(1).await;
    assert_eq!(seen[0].json()["data"]["reason"], "y");
    assert_eq!(gone.hits().len(), 1);
    assert_eq!(deliveries(&app.pool, gone_id).await.len(), 1);
}

#[tokio::test]
async fn failing_for_the_configured_period_disables_the_endpoint() {
    let app = spawn_app_with(AppOptions::default()).await;
    let rx = Receiver::start().await;
    rx.script([Reply::Status(500)]);
    let (endpoint, _) = create_endpoint(&app, &rx.url, &["*"]).await;
    sqlx::query("UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute' WHERE id = $1")
        .bind(endpoint)
        .execute(&app.pool)
        .await
        .unwrap();
    emit(&app.pool, vec![cancelled("x")]).await;
    wait_for("the endpoint to be disabled", || async {
        let ep = store::outbound::get_endpoint(&app.pool, endpoint.into())
            .await
            .unwrap()
            .unwrap();
        !ep.enabled && ep.disabled_reason.as_deref() == Some("failing")
    })
    .await;
    assert_eq!(app.event_types(endpoint).await, ["EndpointDisabled"]);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    // The third attempt hangs (longer than the test), so the schedule the 500 set stays readable.
    let mut opts = AppOptions::default();
    opts.outbound.timeout = Duration::from_secs(30);
    let app = spawn_app_with(opts).await;
    let rx = Receiver::start().await;
    rx.script([Reply::RetryAfter(429, 1), Reply::Status(500), Reply::Hang]);
    let (endpoint, _) = create_endpoint(&app, &rx.url, &["*"]).await;
    emit(&app.pool, vec![cancelled("x")]).await;
    let hits = rx.wait_hits(3).await;
    let honoured = hits[1].at - hits[0].at;
    assert!(
        honoured >= Duration::from_secs(1),
        "Retry-After: 1 ignored ({honoured:?})"
    );
    // The 500 was followed by the 30 ms schedule, not by the earlier Retry-After: the retry was
    // planned for 30 ms after its answer (the row keeps that plan while the next attempt hangs).
    let (status, next_attempt_at, answered_at): (
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    ) = sqlx::query_as(
        "SELECT d.status, d.next_attempt_at, a.attempted_at + a.latency_ms * interval '1 ms'
             FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id
             WHERE d.endpoint_id = $1 AND a.attempt = 2",
    )
    .bind(endpoint)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(status, "delivering");
    let planned = (next_attempt_at - answered_at).num_milliseconds();
    assert!(
        (0..500).contains(&planned),
        "a 500 should be retried on the 30 ms schedule, was planned {planned} ms after its answer"
    );
}

#[tokio::test]
async fn a_hanging_receiver_times_out_and_is_retried() {
    let mut opts = AppOptions::default();
    opts.outbound.timeout = Duration::from_millis(300);
    let app = spawn_app_with(opts).await;
    let rx = Receiver::start().await;
    rx.script([Reply::Hang]);
    let (endpoint, _) = create_endpoint(&app, &rx.url, &["*"]).await;
    emit(&app.pool, vec![cancelled("x")]).await;
    // The receiver hangs for 30 s: delivered before that only if the first attempt timed out.
    let delivery = wait_delivery_status(&app, endpoint, "delivered").await;
    let view = delivery_view(&app, delivery).await;
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{view:#}");
    assert!(attempts[0]["status_code"].is_null());
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("timed out"),
        "{view:#}"
    );
    assert_eq!(attempts[1]["status_code"], 200);
}

#[tokio::test]
async fn a_slow_endpoint_does_not_starve_the_others() {
    // The slow endpoint's requests hang past the test, so none of its attempts ends meanwhile.
    let mut opts = AppOptions::default();
    opts.outbound.timeout = Duration::from_secs(30);
    opts.outbound.workers = 4;
    opts.outbound.endpoint_concurrency = 2;
    let app = spawn_app_with(opts).await;
    let slow = Receiver::start().await;
    slow.script(std::iter::repeat_n(Reply::Hang, 20));
    let fast = Receiver::start().await;
    let (slow_id, _) = create_endpoint(&app, &slow.url, &["*"]).await;
    create_endpoint(&app, &fast.url, &["*"]).await;
    for i in 0..8 {
        emit(&app.pool, vec![cancelled(&format!("n{i}"))]).await;
    }
    fast.wait_hits(8).await;
    // All eight went to the fast endpoint while the slow one's first requests still hang.
    let slow_attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
         WHERE d.endpoint_id = $1",
    )
    .bind(slow_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        slow_attempts, 0,
        "the fast endpoint waited for the slow one"
    );
    assert_eq!(
        slow.hits().len(),
        2,
        "per-endpoint concurrency cap not applied"
    );
}

/// An API-only app (no dispatcher: the test plays the processes' claims itself) with one endpoint
/// and `n` deliveries due to it.
async fn undispatched_deliveries(n: usize) -> (TestApp, Uuid) {
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        ..AppOptions::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create_endpoint(&app, &receiver.url, &["*"]).await;
    for i in 0..n {
        emit(&app.pool, vec![cancelled(&format!("r{i}"))]).await;
    }
    (app, endpoint)
}

#[tokio::test]
async fn two_processes_claiming_at_once_stay_within_the_endpoint_cap() {
    let (app, _) = undispatched_deliveries(6).await;
    let lease = Duration::from_secs(60);
    let cap = 2;
    // Process A has claimed up to the cap and not committed yet ...
    let mut a = app.pool.begin().await.unwrap();
    let first = store::outbound::claim_due(&mut *a, "process-a", lease, 10, cap)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // ... when process B claims, from a snapshot in which nothing is in flight.
    let pool = app.pool.clone();
    let b = tokio::spawn(async move {
        store::outbound::claim_due(&pool, "process-b", lease, 10, cap).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "B waits for A's slots");
    a.commit().await.unwrap();
    let lost = b
        .await
        .unwrap()
        .expect_err("B's claim of a taken slot fails");
    assert_eq!(
        store::sqlstate(&lost).as_deref(),
        Some(store::sqlstate::UNIQUE_VIOLATION)
    );
    // Claiming again, B sees A's leases: the endpoint is full.
    let again = store::outbound::claim_due(&app.pool, "process-b", lease, 10, cap)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let in_flight: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'delivering'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(in_flight, cap);
}

#[tokio::test]
async fn an_endpoint_rate_limit_holds_over_every_process() {
    let (app, endpoint) = undispatched_deliveries(10).await;
    let claimed = store::outbound::claim_due(&app.pool, "w", Duration::from_secs(60), 10, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10);
    // Ten attempts at once from two "processes" (tasks on their own connections), 3 per second.
    let per_second = 3;
    let mut tasks = tokio::task::JoinSet::new();
    for d in claimed {
        let pool = app.pool.clone();
        tasks.spawn(async move {
            store::outbound::admit_or_defer(&pool, d.id, d.attempts, endpoint.into(), per_second)
                .await
                .unwrap()
        });
    }
    let admitted = tasks.join_all().await.into_iter().filter(|a| *a).count();
    let windows: Vec<(i32,)> = sqlx::query_as(
        "SELECT admitted FROM webhook_rate_windows WHERE endpoint_id = $1 ORDER BY window_start",
    )
    .bind(endpoint)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        windows.iter().all(|(n,)| *n <= per_second),
        "a second admitted more than its limit: {windows:?}"
    );
    let counted: i32 = windows.iter().map(|(n,)| n).sum();
    assert_eq!(admitted as i32, counted, "every admission is counted");
    assert!(
        (3..=6).contains(&admitted),
        "{admitted} admitted: {windows:?}"
    );
    // The others went back to pending, their attempt not counted, due at a whole second.
    let deferred: Vec<(String, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT status, attempts, next_attempt_at FROM webhook_deliveries
         WHERE endpoint_id = $1 AND status <> 'delivering'",
    )
    .bind(endpoint)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(deferred.len(), 10 - admitted);
    for (status, attempts, due) in deferred {
        assert_eq!((status.as_str(), attempts), ("pending", 0));
        assert_eq!(
            due.timestamp_subsec_nanos(),
            0,
            "due at the next second: {due}"
        );
    }
}

#[tokio::test]
async fn two_dispatching_processes_share_one_endpoint_rate_limit() {
    let app = spawn_app_with(AppOptions::default()).await;
    let sibling = app.spawn_sibling(AppOptions::default()).await;
    let rx = Receiver::start().await;
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": rx.url, "event_types": ["*"], "rate_limit": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    for i in 0..8 {
        emit(&app.pool, vec![cancelled(&format!("r{i}"))]).await;
    }
    let hits = rx.wait_hits(8).await;
    // 8 attempts at 2 per second take four one-second windows whichever process makes them: the
    // last comes two seconds or more after the first, give or take the requests' own latency
    // (with a limit in each process, they took two windows: about one second).
    let first = hits.iter().map(|h| h.at).min().unwrap();
    let last = hits.iter().map(|h| h.at).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(1800),
        "8 attempts in {:?} at 2/s",
        last - first
    );
    drop(sibling);
}

#[tokio::test]
async fn events_committed_without_a_worker_are_delivered_after_restart() {
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        ..AppOptions::default()
    })
    .await;
    let rx = Receiver::start().await;
    let (endpoint, secret) = create_endpoint(&app, &rx.url, &["booking.requested"]).await;
    let saga = app
        .start_booking(booking_input("lst-crash", "pm_card_visa"))
        .await;
    let pending = deliveries(&app.pool, endpoint).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1, "pending");
    let (pool, db_url, double, notify) = (
        app.pool.clone(),
        app.db_url.clone(),
        app.double.clone(),
        app.notify.clone(),
    );
    app.stop().await;
    assert!(rx.hits().is_empty());

    let app = spawn_instance(pool, db_url, double, notify, AppOptions::default()).await;
    let hits = rx.wait_hits(1).await;
    let body = hits[0].json();
    assert!(verify(&secret, &hits[0].headers, &hits[0].body));
    assert_eq!(body["type"], "booking.requested");
    assert_eq!(body["aggregate_id"], saga.to_string());
    assert_matches_schema(&body);
    app.wait_terminal(saga).await;
}

/// An endpoint subscribed to `listing.*` receives a host block's placing and removal, signed, each
/// matching its schema in `webhooks/`, and nothing of a booking running meanwhile.
#[tokio::test]
async fn a_listing_subscription_receives_blocks_and_unblocks() {
    let app = spawn_app_with(AppOptions::default()).await;
    let rx = Receiver::start().await;
    let (endpoint, secret) = create_endpoint(&app, &rx.url, &["listing.*"]).await;
    let saga = app
        .start_booking(booking_input("lst-hosted", "pm_card_visa"))
        .await;
    let (from, to) = (
        crate::harness::future_day(30),
        crate::harness::future_day(33),
    );
    let resp = app
        .post("/v1/listings/lst-hosted/blocks")
        .json(&json!({ "from": from, "to": to, "reason": "repainting" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let block: Value = resp.json().await.unwrap();
    let block_id = block["id"].as_str().unwrap().to_owned();
    let resp = app
        .http
        .delete(format!(
            "{}/v1/listings/lst-hosted/blocks/{block_id}",
            app.base
        ))
        .bearer_auth(crate::harness::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let mut hits = rx.wait_hits(2).await;
    hits.sort_by_key(|h| h.json()["aggregate_version"].as_i64());
    let mut seen = Vec::new();
    for (hit, (version, previous)) in hits.iter().zip([(1, Value::Null), (2, json!(1))]) {
        assert!(
            verify(&secret, &hit.headers, &hit.body),
            "signed with the endpoint's secret"
        );
        let body = hit.json();
        assert_matches_schema(&body);
        assert_eq!(body["aggregate_type"], "listing_block", "{body:#}");
        assert_eq!(body["aggregate_id"], block_id.as_str(), "{body:#}");
        assert_eq!(body["aggregate_version"], version, "{body:#}");
        assert_eq!(body["previous_version"], previous, "{body:#}");
        assert_eq!(body["data"]["block_id"], block_id.as_str(), "{body:#}");
        assert_eq!(body["data"]["listing_id"], "lst-hosted", "{body:#}");
        assert_eq!(body["data"]["actor"], "token-1", "{body:#}");
        seen.push(body["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["listing.blocked", "listing.unblocked"]);
    let placed = hits[0].json();
    assert_eq!(placed["data"]["from"], from.as_str(), "{placed:#}");
    assert_eq!(placed["data"]["to"], to.as_str(), "{placed:#}");
    assert_eq!(placed["data"]["reason"], "repainting", "{placed:#}");

    // A delivery is made in its event's own commit: once the booking has ended, every event it
    // could have routed here has been considered.
    assert_eq!(app.wait_terminal(saga).await["status"], "completed");
    let routed = deliveries(&app.pool, endpoint).await;
    assert_eq!(routed.len(), 2, "only the block's events: {routed:?}");
}

#[tokio::test]
async fn no_delivery_exists_for_a_rolled_back_event() {
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        ..AppOptions::default()
    })
    .await;
    let rx = Receiver::start().await;
    let (endpoint, _) = create_endpoint(&app, &rx.url, &["*"]).await;
    let mut tx = app.pool.begin().await.unwrap();
    store::events::append(
        &mut tx,
        "booking",
        Uuid::now_v7(),
        1,
        &[cancelled("x").into()],
    )
    .await
    .unwrap();
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, 1, "the fan-out runs in the appending transaction");
    tx.rollback().await.unwrap();
    assert!(deliveries(&app.pool, endpoint).await.is_empty());
    // Internal-only events are not published at all.
    emit(
        &app.pool,
        vec![
            Event::SagaCompleted {},
            Event::CompensationStarted {
                failed_step: None,
                reason: "r".into(),
            },
        ],
    )
    .await;
    let types: Vec<String> = sqlx::query_scalar("SELECT event_type FROM webhook_deliveries")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(types, ["saga.completed"]);
}

#[tokio::test]
async fn type_filters_and_wildcards_route_a_whole_booking() {
    let app = spawn_app_with(AppOptions::default()).await;
    let all = Receiver::start().await;
    let bookings = Receiver::start().await;
    let captured = Receiver::start().await;
    let disabled = Receiver::start().await;
    create_endpoint(&app, &all.url, &["*"]).await;
    create_endpoint(&app, &bookings.url, &["booking.*"]).await;
    create_endpoint(&app, &captured.url, &["payment.captured", "saga.completed"]).await;
    let (off, _) = create_endpoint(&app, &disabled.url, &["*"]).await;
    let r = app
        .http
        .patch(format!("{}/v1/webhook-endpoints/{off}", app.base))
        .bearer_auth(crate::harness::TOKEN)
        .json(&json!({ "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let saga = app
        .start_booking(booking_input("lst-route", "pm_card_visa"))
        .await;
    app.wait_terminal(saga).await;
    let published: Vec<&str> = vec![
        "booking.requested",
        "inventory.held",
        "payment.authorized",
        "payment.captured",
        "booking.confirmed",
        "saga.completed",
    ];
    let got = |rx: &Receiver| {
        let mut hits: Vec<Value> = rx.hits().iter().map(Hit::json).collect();
        hits.sort_by_key(|b| b["aggregate_version"].as_i64());
        hits
    };
    wait_for("every published event at the catch-all", || async {
        all.hits().len() >= published.len()
    })
    .await;
    wait_for("two events at the captured endpoint", || async {
        captured.hits().len() >= 2
    })
    .await;
    wait_for("two booking events", || async {
        bookings.hits().len() >= 2
    })
    .await;
    // Every delivery (made in the events' own commits) has been settled: nothing more is coming.
    wait_for("every delivery to be settled", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
            == 0
    })
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize,
        all.hits().len() + bookings.hits().len() + captured.hits().len(),
        "one request per delivery"
    );
    let all_types: Vec<String> = got(&all)
        .iter()
        .map(|b| b["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all_types, published);
    for b in got(&all) {
        assert_matches_schema(&b);
        assert_eq!(b["aggregate_id"], saga.to_string());
    }
    let types = |rx: &Receiver| -> Vec<String> {
        got(rx)
            .iter()
            .map(|b| b["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(types(&bookings), ["booking.requested", "booking.confirmed"]);
    assert_eq!(types(&captured), ["payment.captured", "saga.completed"]);
    assert!(disabled.hits().is_empty());
}

type Dns = Arc<Mutex<HashMap<String, IpAddr>>>;

fn fake_dns(entries: &[(&str, &str)]) -> (Dns, sagad::outbound::Resolver) {
    let map: Dns = Arc::new(Mutex::new(
        entries
            .iter()
            .map(|(h, a)| (h.to_string(), a.parse().unwrap()))
            .collect(),
    ));
    let m = map.clone();
    let resolver: sagad::outbound::Resolver = Arc::new(move |host: String| {
        let found = m.lock().unwrap().get(&host).copied();
        Box::pin(async move {
            found
                .map(|a| vec![a])
                .ok_or_else(|| std::io::Error::other(format!("no such host {host}")))
        })
    });
    (map, resolver)
}

async fn register_status(app: &TestApp, url: &str) -> (u16, Value) {
    let r = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": url, "event_types": ["*"] }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn ssrf_targets_are_refused_unless_allow_listed() {
    let targets = [
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://internal.example/hook",
    ];
    let (_, resolver) = fake_dns(&[("internal.example", "10.0.0.1")]);
    let mut strict = test_outbound_config();
    strict.allow_nets.clear();
    strict.resolver = resolver.clone();
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        outbound: strict,
        ..AppOptions::default()
    })
    .await;
    for url in targets {
        let (status, body) = register_status(&app, url).await;
        assert_eq!(status, 422, "{url} was accepted: {body}");
        assert_eq!(body["error"]["fields"][0]["field"], "url", "{body}");
    }
    let (status, body) = register_status(&app, "https://internal.example/hook").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10.0.0.1"),
        "{body}"
    );
    drop(app);

    let mut allowed = test_outbound_config();
    allowed.allow_nets = ["127.0.0.0/8", "::1/128", "169.254.169.254/32", "10.0.0.0/8"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    allowed.resolver = resolver;
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        outbound: allowed,
        ..AppOptions::default()
    })
    .await;
    for url in targets {
        let (status, body) = register_status(&app, url).await;
        assert_eq!(status, 201, "{url} was refused: {body}");
    }
}

#[tokio::test]
async fn http_urls_need_the_allow_http_setting() {
    let mut cfg = test_outbound_config();
    cfg.allow_http = false;
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        outbound: cfg,
        ..AppOptions::default()
    })
    .await;
    let (status, body) = register_status(&app, "http://127.0.0.1:9/hook").await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("https"),
        "{body}"
    );
    let (status, body) = register_status(&app, "https://127.0.0.1:9/hook").await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn delivery_dials_only_addresses_that_pass_the_guard() {
    let (dns, resolver) = fake_dns(&[("good.test", "127.0.0.1"), ("rebind.test", "127.0.0.1")]);
    let mut cfg = test_outbound_config();
    cfg.resolver = resolver;
    let app = spawn_app_with(AppOptions {
        outbound: cfg,
        ..AppOptions::default()
    })
    .await;
    let good = Receiver::start().await;
    let victim = Receiver::start().await;
    let (good_id, _) =
        create_endpoint(&app, &good.url.replace("127.0.0.1", "good.test"), &["*"]).await;
    // Registered while the name points at an allowed address…
    let (endpoint, _) = create_endpoint(
        &app,
        &victim.url.replace("127.0.0.1", "rebind.test"),
        &["*"],
    )
    .await;
    // …then the name is rebound inside the network before anything is sent.
    dns.lock()
        .unwrap()
        .insert("rebind.test".into(), "10.0.0.1".parse().unwrap());
    emit(&app.pool, vec![cancelled("x")]).await;
    let dead: Uuid = wait_some("the rebound delivery to die", || async {
        sqlx::query_scalar(
            "SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'dead'",
        )
        .bind(endpoint)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await;
    wait_delivery_status(&app, good_id, "delivered").await;
    assert_eq!(
        good.hits().len(),
        1,
        "resolution through the injected resolver works"
    );
    assert!(victim.hits().is_empty(), "a refused address was dialled");
    let view = delivery_view(&app, dead).await;
    let err = view["attempts"][0]["error"].as_str().unwrap();
    assert!(err.contains("10.0.0.1"), "{err}");
}

#[tokio::test]
async fn dead_letters_are_recorded_visible_and_redeliverable() {
    let app = spawn_app_with(AppOptions::default()).await;
    let rx = Receiver::start().await;
    rx.script(std::iter::repeat_n(Reply::Big(500, 10_000), 4));
    let (endpoint, _) = create_endpoint(&app, &rx.url, &["*"]).await;
    let since = chrono::Utc::now();
    emit(&app.pool, vec![cancelled("x")]).await;
    let id = wait_delivery_status(&app, endpoint, "dead").await;

    let list: Value = app
        .get_json(&format!(
            "/v1/webhook-endpoints/{endpoint}/deliveries?status=dead"
        ))
        .await;
    assert_eq!(list["deliveries"][0]["id"], id.to_string());
    let view = delivery_view(&app, id).await;
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "1 + 3 scheduled retries: {view:#}");
    assert_eq!(attempts[3]["status_code"], 500);
    assert_eq!(attempts[3]["response_body"].as_str().unwrap().len(), 4096);

    // Bulk redrive of the endpoint's dead letters since a time: same webhook-id, delivered.
    let r: Value = app
        .post(&format!("/v1/webhook-endpoints/{endpoint}/redrive"))
        .json(&json!({ "since": since }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["queued"], 1);
    wait_delivery_status(&app, endpoint, "delivered").await;
    let hits = rx.wait_hits(5).await;
    assert!(
        hits.iter()
            .all(|h| h.header("webhook-id") == view["webhook_id"].as_str().unwrap())
    );

    // A single redelivery of a delivered message.
    let r = app
        .post(&format!("/v1/webhook-deliveries/{id}/redeliver"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    rx.wait_hits(6).await;
    wait_delivery_status(&app, endpoint, "delivered").await;
    assert_eq!(
        rx.hits()[5].header("webhook-id"),
        view["webhook_id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn endpoints_can_be_listed_updated_and_deleted() {
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        ..AppOptions::default()
    })
    .await;
    let (id, _) = create_endpoint(&app, "http://127.0.0.1:9/a", &["booking.*"]).await;
    let list: Value = app.get_json("/v1/webhook-endpoints").await;
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1);
    assert!(
        list["endpoints"][0].get("secret").is_none(),
        "the secret is shown once only"
    );
    let patch = |body: Value| {
        app.http
            .patch(format!("{}/v1/webhook-endpoints/{id}", app.base))
            .bearer_auth(crate::harness::TOKEN)
            .json(&body)
            .send()
    };
    let v: Value = patch(json!({ "rate_limit": 5, "description": "d" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rate_limit"], 5);
    assert_eq!(v["event_types"], json!(["booking.*"]));
    let v: Value = patch(json!({ "rate_limit": null }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["rate_limit"].is_null());
    assert_eq!(v["description"], "d");
    let r = patch(json!({ "event_types": ["booking.confirmd"] }))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = app
        .http
        .delete(format!("{}/v1/webhook-endpoints/{id}", app.base))
        .bearer_auth(crate::harness::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .get(&format!("/v1/webhook-endpoints/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .http
        .get(format!("{}/v1/webhook-endpoints", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Runs `sagad webhooks …` against `app`; returns (success, stdout, stderr).
async fn webhooks_cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .arg("webhooks")
        .args(args)
        .env("SAGAD_URL", &app.base)
        .env("SAGAD_API_TOKEN", crate::harness::TOKEN)
        .output()
        .await
        .expect("run sagad webhooks");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The operator's commands, end to end against a running sagad: subscribe, list, pause, look at
/// deliveries and a delivery's attempts, redeliver, rotate the secret, unsubscribe; bad input is
/// refused with the API's message and a failing exit status.
#[tokio::test]
async fn the_webhooks_cli_manages_endpoints_and_deliveries() {
    let app = spawn_app_with(AppOptions::default()).await;
    let rx = Receiver::start().await;

    let (ok, out, err) = webhooks_cli(
        &app,
        &[
            "endpoints",
            "create",
            "--url",
            &rx.url,
            "--event-type",
            "booking.*",
            "--description",
            "calendar sync",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");

    let (ok, out, err) = webhooks_cli(&app, &["endpoints", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&id) && out.contains("calendar sync"), "{out}");

    emit(&app.pool, vec![cancelled("cli")]).await;
    let hits = rx.wait_hits(1).await;
    assert!(verify(&secret, &hits[0].headers, &hits[0].body));
    let delivery = wait_delivery_status(&app, id.parse().unwrap(), "delivered").await;

    let (ok, out, err) = webhooks_cli(
        &app,
        &["endpoints", "deliveries", &id, "--status", "delivered"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains(&delivery.to_string()), "{out}");
    let (ok, out, err) = webhooks_cli(&app, &["deliveries", "show", &delivery.to_string()]).await;
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "delivered", "{shown}");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1, "{shown}");

    // Redeliver: the receiver sees the same webhook-id again.
    let (ok, _, err) =
        webhooks_cli(&app, &["deliveries", "redeliver", &delivery.to_string()]).await;
    assert!(ok, "{err}");
    let hits = rx.wait_hits(2).await;
    assert_eq!(hits[1].header("webhook-id"), hits[0].header("webhook-id"));

    // Pause it: new events are not fanned out to a disabled endpoint.
    let (ok, out, err) = webhooks_cli(&app, &["endpoints", "update", &id, "--disable"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["enabled"],
        false
    );
    emit(&app.pool, vec![cancelled("while paused")]).await;
    assert_eq!(deliveries(&app.pool, id.parse().unwrap()).await.len(), 1);

    // A new secret, printed once; both sign during the overlap.
    let (ok, out, err) = webhooks_cli(&app, &["endpoints", "rotate-secret", &id]).await;
    assert!(ok, "{err}");
    let rotated = serde_json::from_str::<Value>(&out).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(rotated.starts_with("whsec_") && rotated != secret, "{out}");
    let (ok, _, err) = webhooks_cli(&app, &["endpoints", "update", &id, "--enable"]).await;
    assert!(ok, "{err}");
    emit(&app.pool, vec![cancelled("after rotation")]).await;
    let hits = rx.wait_hits(3).await;
    assert_eq!(hits[2].json()["data"]["reason"], "after rotation");
    assert!(
        verify(&secret, &hits[2].headers, &hits[2].body),
        "old secret signs"
    );
    assert!(
        verify(&rotated, &hits[2].headers, &hits[2].body),
        "new secret signs"
    );

    // Bad input: the API's message, a failing exit status, nothing created.
    let (ok, _, err) = webhooks_cli(
        &app,
        &[
            "endpoints",
            "create",
            "--url",
            &rx.url,
            "--event-type",
            "booking.nonsense",
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("HTTP 422") && err.contains("booking.nonsense"),
        "{err}"
    );
    let endpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(endpoints, 1, "the refused endpoint was not created");
    let (ok, _, err) = webhooks_cli(&app, &["endpoints", "show", "not-an-id"]).await;
    assert!(!ok);
    assert!(err.contains("HTTP 4"), "{err}");

    let (ok, _, err) = webhooks_cli(&app, &["endpoints", "delete", &id]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = webhooks_cli(&app, &["endpoints", "show", &id]).await;
    assert!(!ok);
    assert!(err.contains("HTTP 404"), "{err}");
}
