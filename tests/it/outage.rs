//! Riding out outages: give-up deadlines instead of attempt counts for retryable failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sagad_test_support::Receiver;
use serde_json::json;
use stripe_double::{Fault, Operation, StripeDouble};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::harness::{
    AppOptions, TOKEN, booking_definition, booking_input, eventually, spawn_app_with,
};

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
    // 3 s: long enough for the first capture to fail (and extend it) on a loaded machine.
    let mut def = booking_definition();
    def.steps[0].params = serde_json::json!({ "hold_ttl": "3s" });
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
        (since.is_some() && chrono::Utc::now() > started + chrono::Duration::seconds(4))
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

#[tokio::test]
async fn a_gateway_outage_on_two_processes_delays_every_booking_and_each_guest_is_told_once() {
    const SAGAS: usize = 20;
    let opts = || AppOptions {
        definitions: vec![patient_definition()],
        ..Default::default()
    };
    let a = spawn_app_with(opts()).await;
    let b = a.spawn_sibling(opts()).await;
    a.notify.answer(503);
    let inputs = (0..SAGAS)
        .map(|i| booking_input(&format!("gateway-{i}"), "pm_card_visa"))
        .collect();
    let ids = crate::harness::start_concurrently(&[&a, &b], inputs).await;

    // The gateway stays down until every booking has been refused at least once, its breaker has
    // opened, and a probe has failed: far longer than the notify step's 5 attempts would last
    // without its give-up deadline.
    let refused_sagas = || {
        let refused: std::collections::BTreeSet<String> = a
            .notify
            .hits()
            .iter()
            .filter(|h| h.status == 503)
            .map(|h| h.json()["saga_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        refused.len()
    };
    eventually(
        "every booking refused by the gateway, and a failed probe",
        || async {
            (refused_sagas() == SAGAS && breaker_state(&a.pool, "notify").await.1 >= 2)
                .then_some(())
        },
    )
    .await;
    let refusals = a.notify.hits().len();
    a.notify.answer(200);

    for id in &ids {
        let v = a.wait_terminal(*id).await;
        assert_eq!(v["status"], "completed", "{v:#}");
        assert_eq!(v["booking"]["status"], "confirmed", "{v:#}");
        let pis = a.payment_intents_of(*id);
        assert_eq!((pis.len(), pis[0].effects.captures), (1, 1), "{pis:?}");
    }
    let compensations = crate::harness::count(
        &a.pool,
        "SELECT count(*) FROM events WHERE event_type = 'CompensationStarted'",
    )
    .await;
    assert_eq!(compensations, 0, "no booking was turned around");
    // Each guest was told exactly once: one accepted notification per booking.
    let mut accepted: HashMap<Uuid, usize> = HashMap::new();
    for h in a.notify.hits().iter().filter(|h| h.accepted()) {
        let saga = h.json()["saga_id"].as_str().unwrap().parse().unwrap();
        *accepted.entry(saga).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            accepted.get(id),
            Some(&1),
            "accepted notifications of booking {id}, after {refusals} refusals"
        );
    }
    assert_eq!(accepted.len(), SAGAS, "{accepted:?}");
    assert_eq!(breaker_state(&a.pool, "notify").await.0, "closed");
}

type Time = chrono::DateTime<chrono::Utc>;

/// A paused saga as stored: everything a restart could lose or spend.
type PausedRow = (String, i32, i32, Option<String>, Option<Time>, Option<Time>);

async fn paused_sagas(pool: &sqlx::PgPool) -> BTreeMap<Uuid, PausedRow> {
    type Row = (
        Uuid,
        String,
        i32,
        i32,
        Option<String>,
        Option<Time>,
        Option<Time>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, status, current_step, attempt, wait_reason, paused_since, retrying_since
           FROM sagas WHERE paused_since IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, status, step, attempt, reason, paused, since)| {
            (id, (status, step, attempt, reason, paused, since))
        })
        .collect()
}

/// The Stripe breaker as stored: state, opens, when it opened and when it probes.
async fn stripe_breaker(pool: &sqlx::PgPool) -> (String, i32, Option<Time>, Option<Time>) {
    sqlx::query_as(
        "SELECT state, opens, opened_at, probe_at FROM dependency_breakers WHERE dependency = 'stripe'",
    )
    .fetch_one(pool)
    .await
    .expect("the stripe breaker's row")
}

/// Starts a booking saga through a sagad process's API; its id.
async fn start_booking_at(base: &str, i: usize) -> Uuid {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/sagas"))
        .bearer_auth(TOKEN)
        .json(&json!({ "saga": "booking", "input": booking_input(&format!("kill-{i}"), "pm_card_visa") }))
        .send()
        .await
        .expect("start request")
        .json()
        .await
        .expect("start body");
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no saga id: {v}"))
}

#[tokio::test]
async fn a_sigkill_while_the_stripe_breaker_is_open_keeps_it_open_and_the_sagas_paused() {
    const SAGAS: usize = 12;
    let (pool, db_url) = crate::harness::fresh_database().await;
    let double = Arc::new(
        StripeDouble::start(TcpListener::bind("127.0.0.1:0").await.unwrap())
            .await
            .unwrap(),
    );
    let notify = Receiver::start().await;
    let work = std::env::temp_dir().join(format!("sagad-outage-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(work.join("sagas")).unwrap();
    // The crash run's booking saga, riding out a Stripe outage for ten minutes.
    std::fs::write(
        work.join("sagas/booking.toml"),
        crate::crash::DEFINITION.replace("give_up_after = \"30s\"", "give_up_after = \"10m\""),
    )
    .unwrap();
    let env = crate::crash::Env {
        db_url,
        stripe_base: double.base_url(),
        notify_url: notify.url.clone(),
        sagas_dir: work.join("sagas"),
        log: work.join("sagad.log"),
        port: crate::crash::free_port(),
    };
    // No probe comes due unless the test makes it: the breaker stays as the kill leaves it.
    let no_probe = [
        ("SAGAD_BREAKER_PROBE_AFTER", "1h"),
        ("SAGAD_BREAKER_PROBE_MAX", "1h"),
    ];
    let mut sagad = crate::crash::start_sagad(&env, &no_probe).await;
    double.inject(Fault::server_error(Operation::Any).times(u32::MAX));
    let mut ids = Vec::new();
    for i in 0..SAGAS {
        ids.push(start_booking_at(&sagad.base, i).await);
    }
    // The 500s open the breaker (20 calls at sagad's defaults); every saga then pauses.
    eventually("the breaker open and every saga paused on it", || async {
        let open = sqlx::query_scalar::<_, String>(
            "SELECT state FROM dependency_breakers WHERE dependency = 'stripe'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
        .is_some_and(|s| s == "open");
        (open && paused_sagas(&pool).await.len() == SAGAS).then_some(())
    })
    .await;
    let breaker = stripe_breaker(&pool).await;
    let paused = paused_sagas(&pool).await;
    assert!(
        paused
            .values()
            .all(|p| p.3.as_deref() == Some("dependency:stripe")),
        "{paused:?}"
    );

    sagad.child.start_kill().unwrap(); // SIGKILL
    sagad.child.wait().await.unwrap();
    let sagad = crate::crash::start_sagad(&env, &no_probe).await;
    // The restarted process knows the breaker is open: a saga started now pauses without a call.
    let calls = double.requests().len();
    let late = start_booking_at(&sagad.base, SAGAS).await;
    eventually("the saga started after the restart to pause", || async {
        paused_sagas(&pool).await.contains_key(&late).then_some(())
    })
    .await;
    assert_eq!(
        double.requests().len(),
        calls,
        "a call to Stripe while its breaker is open, after the restart"
    );
    // The breaker and the paused sagas are as the kill left them: no attempt spent.
    assert_eq!(
        stripe_breaker(&pool).await,
        breaker,
        "the breaker survived the kill"
    );
    let mut after = paused_sagas(&pool).await;
    after.remove(&late);
    assert_eq!(
        after, paused,
        "the paused sagas survived the kill unchanged"
    );

    // Stripe recovers; the probe comes due now rather than in an hour.
    double.clear_faults();
    sqlx::query("UPDATE dependency_breakers SET probe_at = now() WHERE dependency = 'stripe'")
        .execute(&pool)
        .await
        .unwrap();
    ids.push(late);
    for id in &ids {
        let status: String = eventually("every saga to complete", || async {
            sqlx::query_scalar::<_, String>("SELECT status FROM sagas WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()
                .filter(|s| ["completed", "compensated", "stuck"].contains(&s.as_str()))
        })
        .await;
        assert_eq!(status, "completed", "saga {id}");
        let id = id.to_string();
        let pis: Vec<_> = double
            .payment_intents()
            .into_iter()
            .filter(|p| p.metadata.get("saga_id") == Some(&id))
            .collect();
        assert_eq!(pis.len(), 1, "{pis:?}");
        assert_eq!(pis[0].effects.captures, 1, "captured once: {pis:?}");
    }
    assert_eq!(stripe_breaker(&pool).await.0, "closed");
    drop(sagad);
    let _ = std::fs::remove_dir_all(&work);
}
