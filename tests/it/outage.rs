//! Riding out outages: give-up deadlines instead of attempt counts for retryable failures.

use std::time::Duration;

use stripe_double::{Fault, Operation};

use crate::harness::{AppOptions, booking_definition, booking_input, eventually, spawn_app_with};

/// The attempts the notify step had before give-up deadlines: a gateway down for longer failed
/// the step for good and cancelled the booking.
const OLD_NOTIFY_ATTEMPTS: usize = 5;

#[tokio::test]
async fn a_quiet_system_waits_out_a_gateway_outage_longer_than_the_old_retry_policy() {
    // One saga on a quiet system (too few calls for any breaker), a test-sized deadline.
    let mut def = booking_definition();
    let notify = def.steps.iter_mut().find(|s| s.name == "notify").unwrap();
    notify.give_up_after = Some(Duration::from_secs(60));
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    app.notify.answer(503);
    let id = app
        .start_booking(booking_input("quiet-1", "pm_card_visa"))
        .await;
    // The gateway stays down for twice the attempts the old policy allowed.
    app.notify.wait_hits(OLD_NOTIFY_ATTEMPTS * 2).await;
    let v: serde_json::Value = app.get_json(&format!("/v1/sagas/{id}")).await;
    assert_eq!(
        v["status"], "running",
        "still waiting the outage out: {v:#}"
    );
    app.notify.answer(200);

    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let events = app.event_types(id).await;
    assert!(
        !events.iter().any(|e| e == "CompensationStarted"),
        "{events:?}"
    );
    let accepted = app.notify.hits().iter().filter(|h| h.accepted()).count();
    assert_eq!(accepted, 1, "the guest got exactly one notification");
    let pis = app.payment_intents_of(id);
    assert_eq!((pis.len(), pis[0].effects.captures), (1, 1));
    let since: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT retrying_since FROM sagas WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(since, None, "cleared once the step succeeded");
}

#[tokio::test]
async fn the_hold_is_kept_alive_while_a_step_waits_out_an_outage() {
    // The hold would expire long before Stripe comes back; capturing keeps failing meanwhile.
    let mut def = booking_definition();
    def.steps[0].params = serde_json::json!({ "hold_ttl": "300ms" });
    def.steps[2].give_up_after = Some(Duration::from_secs(60));
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    app.double
        .inject(Fault::server_error(Operation::Capture).times(1_000_000));
    let id = app
        .start_booking(booking_input("quiet-2", "pm_card_visa"))
        .await;
    let started = chrono::Utc::now();
    // Wait until the hold's original TTL has passed while the capture is still failing.
    let expires_at: chrono::DateTime<chrono::Utc> = eventually("a retried capture", || async {
        let (since, expires_at): (Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as(
                "SELECT s.retrying_since, c.expires_at FROM sagas s JOIN inventory_claims c ON c.saga_id = s.id
                 WHERE s.id = $1 AND c.status = 'active'",
            )
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("the hold is still active");
        (since.is_some() && chrono::Utc::now() > started + chrono::Duration::seconds(1))
            .then_some(expires_at)
    })
    .await;
    assert!(
        expires_at > chrono::Utc::now() + chrono::Duration::minutes(5),
        "the hold was extended past the next retry: {expires_at}"
    );
    app.double.clear_faults();

    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["booking"]["status"], "confirmed", "{v:#}");
    let pis = app.payment_intents_of(id);
    assert_eq!(pis[0].effects.captures, 1);
}

/// The booking saga with give-up deadlines long enough for a test-sized outage.
fn patient_definition() -> sagad::engine::definition::SagaDefinition {
    let mut def = booking_definition();
    for s in &mut def.steps {
        s.give_up_after = s.give_up_after.map(|_| Duration::from_secs(60));
    }
    def
}

/// The breaker's state and how often it opened; a dependency with no row yet (its first outcome
/// not recorded) is closed and never opened.
async fn breaker_state(pool: &sqlx::PgPool, dependency: &str) -> (String, i32) {
    sqlx::query_as("SELECT state, opens FROM dependency_breakers WHERE dependency = $1")
        .bind(dependency)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or_else(|| ("closed".to_owned(), 0))
}

#[tokio::test]
async fn a_stripe_outage_on_two_processes_is_bounded_by_the_breaker_and_every_saga_completes() {
    const SAGAS: usize = 30;
    let workers = 4;
    let opts = || AppOptions {
        definitions: vec![patient_definition()],
        workers,
        ..Default::default()
    };
    let a = spawn_app_with(opts()).await;
    let b = a.spawn_sibling(opts()).await;
    // Stripe answers 500 to every call.
    a.double
        .inject(Fault::server_error(Operation::Any).times(1_000_000));
    let inputs = (0..SAGAS)
        .map(|i| booking_input(&format!("outage-{i}"), "pm_card_visa"))
        .collect();
    let ids = crate::harness::start_concurrently(&[&a, &b], inputs).await;

    // The breaker opens (one row, which both processes read).
    eventually("the breaker to open", || async {
        (breaker_state(&a.pool, "stripe").await.0 != "closed").then_some(())
    })
    .await;
    // The outage goes on past two failed probes (the old retry policy had long given up).
    let outage_started = std::time::Instant::now();
    eventually("two failed probes", || async {
        (breaker_state(&a.pool, "stripe").await.1 >= 3).then_some(())
    })
    .await;
    let calls = a.double.requests().len();
    let outage = outage_started.elapsed();
    a.double.clear_faults();

    // The calls that opened it (20 at sagad's default thresholds, plus those already in flight on
    // every worker of both processes), then one probe at a time, at most one per probe delay.
    let thresholds = crate::harness::test_settings().breakers;
    let probes = 2 + (outage.as_secs_f64() / thresholds.probe_after.as_secs_f64()).ceil() as usize;
    let bound = thresholds.min_calls as usize + 2 * workers + probes;
    assert!(
        calls <= bound,
        "{calls} calls to Stripe during the outage, more than the breaker allows ({bound}); \
         without it {SAGAS} sagas would each keep retrying"
    );

    for id in &ids {
        let v = a.wait_terminal(*id).await;
        assert_eq!(v["status"], "completed", "{v:#}");
        let pis = a.payment_intents_of(*id);
        assert_eq!(pis.len(), 1, "{pis:?}");
        assert_eq!(pis[0].effects.captures, 1, "captured once");
    }
    assert_eq!(breaker_state(&a.pool, "stripe").await.0, "closed");
    // Some saga paused and resumed.
    let paused = crate::harness::count(
        &a.pool,
        "SELECT count(*) FROM events WHERE event_type = 'SagaPaused'",
    )
    .await;
    let resumed = crate::harness::count(
        &a.pool,
        "SELECT count(*) FROM events WHERE event_type = 'SagaResumed'",
    )
    .await;
    assert!(
        paused > 0 && resumed > 0,
        "paused {paused}, resumed {resumed}"
    );
    let left = crate::harness::count(
        &a.pool,
        "SELECT count(*) FROM sagas WHERE paused_since IS NOT NULL OR wait_reason IS NOT NULL",
    )
    .await;
    assert_eq!(left, 0, "no saga left paused");
}

/// An API-only sagad (nothing runs sagas yet) whose Stripe breaker is open, its probe due after
/// `probe_in`.
async fn api_with_stripe_breaker_open(
    probe_in: Duration,
    def: sagad::engine::definition::SagaDefinition,
) -> crate::harness::TestApp {
    let api = spawn_app_with(AppOptions {
        role: sagad::config::Role::Api,
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    sqlx::query(
        "INSERT INTO dependency_breakers (dependency, state, opens, opened_at, probe_at)
         VALUES ('stripe', 'open', 1, now(), now() + $1 * interval '1 millisecond')",
    )
    .bind(probe_in.as_millis() as f64)
    .execute(&api.pool)
    .await
    .unwrap();
    api
}

/// A worker process started after the breaker opened: it reads the breakers before it runs a saga.
async fn worker(
    api: &crate::harness::TestApp,
    def: sagad::engine::definition::SagaDefinition,
) -> crate::harness::TestApp {
    api.spawn_sibling(AppOptions {
        role: sagad::config::Role::Worker,
        definitions: vec![def],
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_decline_during_half_open_closes_the_breaker_instead_of_reopening_it() {
    let app = api_with_stripe_breaker_open(Duration::from_secs(2), patient_definition()).await;
    let id = app
        .start_booking(booking_input("declined-1", "pm_card_chargeDeclined"))
        .await;
    let _worker = worker(&app, patient_definition()).await;
    // Paused without a call; then, its probe due, it makes the one call: a decline.
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    let reason = v["failure"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("card_declined"), "{reason}");
    let events = app.event_types(id).await;
    assert!(
        events.contains(&"SagaPaused".to_owned()) && events.contains(&"SagaResumed".to_owned()),
        "{events:?}"
    );
    assert_eq!(
        breaker_state(&app.pool, "stripe").await,
        ("closed".to_owned(), 0),
        "a refusal is an answer: the dependency is up"
    );
    assert_eq!(app.double.requests().len(), 1, "one probe, no other call");
}

#[tokio::test]
async fn a_saga_whose_give_up_deadline_passes_while_paused_compensates_as_dependency_unavailable() {
    // The tests' booking saga gives up after 400 ms; the breaker stays open for an hour.
    let app = api_with_stripe_breaker_open(Duration::from_secs(3600), booking_definition()).await;
    let id = app
        .start_booking(booking_input("paused-1", "pm_card_visa"))
        .await;
    let _worker = worker(&app, booking_definition()).await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["step"], "authorize_payment", "{v:#}");
    let reason = v["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("dependency_unavailable: the circuit breaker of stripe is open"),
        "{reason}"
    );
    assert!(app.double.requests().is_empty(), "no call while open");
    assert_eq!(app.active_claims().await, 0, "the hold was released");
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM saga_steps WHERE saga_id = $1 AND step_index = 1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(attempts <= 1, "pausing spends no attempt ({attempts})");
}
