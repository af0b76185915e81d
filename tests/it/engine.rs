//! Engine behaviour: leases, several instances, cancellation, waits, stuck compensations, shutdown
//! and definition versions.

use std::time::Duration;

use sagad::config::Role;
use sagad::engine::model::{Fence, SagaStatus, StepOutcome, Transition};
use sagad::engine::plan::Plan;
use sagad::engine::record::{self, Outcomes};
use sagad::queue::Table;
use sagad::store::queues::SagaQueue;
use serde_json::json;
use stripe_double::{Fault, Operation};

use crate::harness::{
    AppOptions, booking_definition, booking_input, count, spawn_app, spawn_app_with,
    spawn_instance, start_concurrently,
};

/// What `worker` holds after a first claim of step `step` of a running saga.
fn fence(id: uuid::Uuid, step: i32, worker: &str) -> Fence {
    Fence {
        id: id.into(),
        status: SagaStatus::Running,
        current_step: step,
        attempt: 1,
        worker: worker.into(),
    }
}

/// A transition to `status` at `step` (first attempt) that sets nothing else.
fn transition(status: SagaStatus, step: i32) -> Transition {
    Transition::new(status, step, 1, json!({}))
}

#[tokio::test]
async fn a_worker_that_dies_after_its_claim_is_replaced_when_the_lease_expires() {
    // API only: nothing runs the saga until we say so.
    let api = spawn_app_with(AppOptions {
        role: Role::Api,
        ..Default::default()
    })
    .await;
    let id = api
        .start_booking(booking_input("cabin-7", "pm_card_visa"))
        .await;

    // A worker claims it with a short lease and dies without a word.
    let claimed = SagaQueue
        .claim(&api.pool, "doomed-worker", Duration::from_millis(300), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, 1);

    let worker = api
        .spawn_sibling(AppOptions {
            lease: Duration::from_secs(4),
            ..Default::default()
        })
        .await;
    let v = worker.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    // The start placed the hold; the dead worker's claim counted as the first attempt of the
    // step after it.
    assert_eq!(v["steps"][0]["attempts"], 1);
    assert_eq!(v["steps"][1]["step_name"], "authorize_payment");
    assert_eq!(v["steps"][1]["attempts"], 2);
    let pis = worker.payment_intents_of(id);
    assert_eq!(pis.len(), 1);
    assert_eq!(pis[0].effects.captures, 1);
    assert_eq!(
        worker.event_types(id).await.len(),
        7,
        "no step recorded twice"
    );

    // The dead worker cannot record anything now: its fence no longer holds, and none of the
    // statement's parts (events, projection, step history, wake-ups) writes anything.
    let mut conn = api.pool.acquire().await.unwrap();
    let stale = Plan {
        transition: Transition {
            failure_reason: Some("stale".into()),
            ..transition(SagaStatus::Compensated, 0)
        },
        events: vec![sagad::events::NewEvent::from(
            sagad::events::Event::SagaCompensated {
                reason: "stale".into(),
            },
        )],
        step: Some(StepOutcome {
            index: 1,
            phase: sagad::engine::model::StepPhase::Forward,
            name: "authorize_payment".into(),
            status: sagad::engine::model::StepStatus::Failed,
            attempts: 9,
            error: Some("stale".into()),
        }),
    };
    let stale = record::record(
        &mut conn,
        &fence(id, 1, "doomed-worker"),
        "booking",
        &Outcomes::of(vec![stale], Some("doomed-worker")),
    )
    .await
    .unwrap();
    assert!(stale.is_none());
    let after = worker.wait_terminal(id).await;
    assert_eq!(after["status"], "completed", "{after:#}");
    assert_eq!(after["steps"][1]["attempts"], 2, "{after:#}");
    assert_eq!(after["booking"]["status"], "confirmed", "{after:#}");
    assert_eq!(worker.event_types(id).await.len(), 7);
}

#[tokio::test]
async fn a_step_that_goes_on_keeps_its_lease_until_too_little_of_it_remains() {
    let api = spawn_app_with(AppOptions {
        role: Role::Api,
        ..Default::default()
    })
    .await;
    let id = api
        .start_booking(booking_input("cabin-8", "pm_card_visa"))
        .await;
    let lease = Duration::from_secs(60);
    let claimed = SagaQueue.claim(&api.pool, "w1", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let leased = async |step: i32| {
        sqlx::query_as::<
            _,
            (
                i32,
                Option<chrono::DateTime<chrono::Utc>>,
                Option<chrono::DateTime<chrono::Utc>>,
            ),
        >("SELECT current_step, locked_until, next_run_at FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_one(&api.pool)
        .await
        .map(|(s, until, next)| {
            assert_eq!(s, step);
            (until, next)
        })
        .unwrap()
    };
    // The start placed the hold: the claim is of the step after it.
    let (until0, next0) = leased(1).await;
    let go_on = |step: i32, keep_lease: Option<Duration>, floor: Duration| Transition {
        next_run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        keep_lease,
        lease_floor: Some(floor),
        ..transition(SagaStatus::Running, step)
    };
    let mut conn = api.pool.acquire().await.unwrap();
    let mut record = async |from: i32, t: Transition| {
        let outcomes = Outcomes::of(
            vec![Plan {
                transition: t,
                events: Vec::new(),
                step: None,
            }],
            Some("w1"),
        );
        let fence = fence(id, from, "w1");
        let recorded = record::record(&mut conn, &fence, "booking", &outcomes);
        assert!(recorded.await.unwrap().is_some());
    };

    // Plenty of the lease left for the next step: neither the lease nor next_run_at changes (no
    // indexed column of the row does, so PostgreSQL can update it in place).
    record(1, go_on(2, Some(lease), Duration::from_secs(22))).await;
    assert_eq!(leased(2).await, (until0, next0));

    // The next step may take longer than what is left: the lease is renewed.
    record(2, go_on(3, Some(lease), Duration::from_secs(61))).await;
    let (until3, next3) = leased(3).await;
    assert!(until3 > until0, "{until3:?} after {until0:?}");
    assert_eq!(next3, next0);

    // Letting the lease go releases it whatever the floor says, and the saga is due when planned.
    let t = go_on(4, None, Duration::from_secs(1));
    let due = t.next_run_at;
    record(3, t).await;
    let (until4, next4) = leased(4).await;
    assert_eq!(until4, None);
    assert_eq!(
        next4.map(|t| t.timestamp_micros()),
        due.map(|t| t.timestamp_micros())
    );
}

#[tokio::test]
async fn two_instances_run_two_hundred_sagas_with_one_effect_per_step() {
    let a = spawn_app_with(AppOptions {
        workers: 8,
        ..Default::default()
    })
    .await;
    let b = a
        .spawn_sibling(AppOptions {
            workers: 8,
            ..Default::default()
        })
        .await;
    let inputs = (0..200)
        .map(|i| booking_input(&format!("room-{i}"), "pm_card_visa"))
        .collect();
    let ids = start_concurrently(&[&a, &b], inputs).await;
    for id in &ids {
        assert_eq!(a.wait_terminal(*id).await["status"], "completed");
    }
    let c = a.double.counters();
    assert_eq!(c.payment_intents_created, 200);
    let pis = a.double.payment_intents();
    assert!(
        pis.iter()
            .all(|p| p.effects.captures == 1 && p.effects.authorizations == 1)
    );
    assert_eq!(a.notify.count(), 200, "one notification per saga");
    for (event, n) in [
        ("InventoryHeld", 200),
        ("PaymentCaptured", 200),
        ("BookingConfirmed", 200),
        ("SagaCompleted", 200),
    ] {
        let got: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event)
            .fetch_one(&a.pool)
            .await
            .unwrap();
        assert_eq!(got, n, "{event}");
    }
    // Both instances did work: the events a worker records carry its process's worker id, and
    // each instance has its own.
    let workers: i64 = count(
        &a.pool,
        "SELECT count(DISTINCT metadata->>'worker') FROM events
         WHERE event_type = 'PaymentCaptured'",
    )
    .await;
    assert_eq!(workers, 2, "captures recorded by both instances");
}

#[tokio::test]
async fn guest_cancellation_after_completion_refunds_releases_and_cancels() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("yurt-1", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "completed");
    let resp = app
        .post(&format!("/v1/sagas/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v = app.wait_status(id, &["compensated", "stuck"]).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["reason"], "cancelled_by_guest");
    let events = app.event_types(id).await;
    assert_eq!(
        &events[7..],
        [
            "CompensationStarted",
            "BookingCancelled",
            "PaymentRefunded",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    assert_eq!(v["booking"]["status"], "cancelled");
    assert_eq!(v["booking"]["cancel_reason"], "cancelled_by_guest");
    let pis = app.payment_intents_of(id);
    assert_eq!((pis[0].effects.captures, pis[0].effects.refunds), (1, 1));
    // A second cancellation is refused: nothing left to undo.
    assert_eq!(
        app.post_status(&format!("/v1/sagas/{id}/cancel")).await,
        409
    );
    assert_eq!(
        app.post_status(&format!("/v1/sagas/{}/cancel", uuid::Uuid::now_v7()))
            .await,
        404
    );
}

#[tokio::test]
async fn three_d_secure_waits_then_compensates_when_the_deadline_passes() {
    let mut def = booking_definition();
    def.steps[1].params = json!({ "action_deadline": "700ms" });
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    let id = app
        .start_booking(booking_input("igloo-1", "pm_card_authenticationRequired"))
        .await;
    let waiting = app.wait_status(id, &["waiting"]).await;
    assert_eq!(waiting["current_step"], "authorize_payment");
    assert!(
        waiting["wait"]["key"]
            .as_str()
            .unwrap()
            .starts_with("stripe:payment_intent:pi_")
    );
    assert_eq!(waiting["booking"]["status"], "awaiting_authentication");

    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["reason"], "authentication_timeout");
    assert_eq!(
        &app.event_types(id).await[3..],
        [
            "StepFailed",
            "CompensationStarted",
            "PaymentVoided",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    let pis = app.payment_intents_of(id);
    assert_eq!(pis[0].status, "canceled");
    assert_eq!(pis[0].effects.cancels, 1);
}

#[tokio::test]
async fn cancelling_a_waiting_saga_voids_its_payment_intent() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("igloo-2", "pm_card_authenticationRequired"))
        .await;
    app.wait_status(id, &["waiting"]).await;
    assert_eq!(
        app.post_status(&format!("/v1/sagas/{id}/cancel")).await,
        202
    );
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    let events = app.event_types(id).await;
    assert!(
        events.ends_with(&[
            "CompensationStarted".into(),
            "BookingCancelled".into(),
            "PaymentVoided".into(),
            "InventoryReleased".into(),
            "SagaCompensated".into()
        ]),
        "{events:?}"
    );
    assert_eq!(app.payment_intents_of(id)[0].effects.cancels, 1);
}

/// Starts a booking whose authorization takes `latency`, and returns its id once that call is in
/// flight.
async fn start_authorizing(
    app: &crate::harness::TestApp,
    listing: &str,
    payment_method: &str,
    latency: Duration,
) -> uuid::Uuid {
    app.double
        .inject(Fault::latency(Operation::Create, latency));
    let id = app
        .start_booking(booking_input(listing, payment_method))
        .await;
    app.wait_faults_taken().await;
    id
}

/// Starts a booking whose authorization takes 800 ms and, while that call is in flight, asks to
/// cancel it (accepted); returns the saga's id.
async fn cancel_while_authorizing(
    app: &crate::harness::TestApp,
    listing: &str,
    payment_method: &str,
) -> uuid::Uuid {
    let id = start_authorizing(app, listing, payment_method, Duration::from_millis(800)).await;
    assert_eq!(
        app.post_status(&format!("/v1/sagas/{id}/cancel")).await,
        202
    );
    id
}

/// The worker learns of a cancellation from its notification, without a query; when its listener
/// may have missed one (the LISTEN connection broke meanwhile), it asks the database before the
/// capture. Here the cancellation is written without a notification while the connection is cut:
/// only the database can tell, and the payment is voided, never captured.
#[tokio::test]
async fn a_cancellation_the_listener_may_have_missed_is_looked_up_before_the_capture() {
    let app = spawn_app().await;
    let id = start_authorizing(&app, "igloo-9", "pm_card_visa", Duration::from_millis(1500)).await;
    // Under load the listener may still be connecting (or reconnecting) when the saga starts:
    // cut it once it is there.
    let cut: i64 = crate::harness::eventually("the LISTEN connection to be up", || async {
        let cut = count(
            &app.pool,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN %'",
        )
        .await;
        (cut > 0).then_some(cut)
    })
    .await;
    assert_eq!(cut, 1, "one LISTEN connection per process");
    sqlx::query("UPDATE sagas SET cancel_requested = true WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    let pi = &app.payment_intents_of(id)[0];
    assert_eq!((pi.effects.captures, pi.effects.cancels), (0, 1), "{pi:?}");
}

/// The step in flight would park the saga (3-D Secure) when the guest cancels: the same statement
/// that records the outcome puts the saga back in the queue, so it compensates at once instead of
/// waiting out the authentication deadline.
#[tokio::test]
async fn a_cancellation_while_the_step_that_parks_the_saga_runs_is_carried_out_at_once() {
    let app = spawn_app().await;
    let id = cancel_while_authorizing(&app, "igloo-3", "pm_card_authenticationRequired").await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    let events = app.event_types(id).await;
    assert_eq!(
        &events[2..],
        [
            "PaymentActionRequired",
            "CompensationStarted",
            "BookingCancelled",
            "PaymentVoided",
            "InventoryReleased",
            "SagaCompensated"
        ],
        "{events:?}"
    );
    assert_eq!(app.payment_intents_of(id)[0].effects.cancels, 1);
}

/// Sagas started while every worker is busy wait in the process's own queue, already leased to
/// it (no NOTIFY, no claim); once that queue is full they go through the database queue.
#[tokio::test]
async fn sagas_started_while_the_workers_are_busy_wait_in_the_local_queue_then_the_database() {
    // A saga name of its own: the metrics registry is shared by every test in this process.
    let mut def = booking_definition();
    def.name = "local-queue-test".into();
    let app = spawn_app_with(AppOptions {
        workers: 1,
        local_queue: Some(1),
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    app.double
        .inject(Fault::latency(Operation::Create, Duration::from_millis(500)).times(3));
    let mut ids = Vec::new();
    for i in 0..3 {
        let resp = app
            .post("/v1/sagas")
            .json(&json!({
                "saga": "local-queue-test",
                "input": booking_input(&format!("queue-{i}"), "pm_card_visa"),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: serde_json::Value = resp.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let v = app.wait_terminal(id.parse().unwrap()).await;
        assert_eq!(v["status"], "completed", "{v:#}");
    }
    let metrics = app.metrics().await;
    let dispatched = |path: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("sagad_sagas_dispatched_total{")
                    && l.contains("saga=\"local-queue-test\"")
                    && l.contains(&format!("path=\"{path}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // Usually one of each. The first may find its worker slot held for a moment by the engine's
    // own claim (it takes slots before claiming) and wait in the local queue instead; either way
    // the second, started while the first occupies the only worker, waits in the local queue.
    let (direct, queued, claimed) = (
        dispatched("direct"),
        dispatched("queued"),
        dispatched("claimed"),
    );
    assert_eq!(direct + queued + claimed, 3, "{metrics}");
    assert!(queued >= 1, "{metrics}");
    // The third, started while one saga runs and another fills the local queue, went through the
    // database and a worker claimed it from there.
    assert!(claimed >= 1, "{metrics}");
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_parks_the_saga_as_stuck() {
    let app = spawn_app().await;
    app.notify.answer(500);
    app.double
        .inject(Fault::server_error(Operation::Refund).times(1000));
    let id = app
        .start_booking(booking_input("barn-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "stuck", "{v:#}");
    assert!(
        v["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("payment.refund"),
        "{v:#}"
    );
    let events = app.event_types(id).await;
    assert_eq!(events.last().unwrap(), "SagaStuck");
    assert_eq!(v["booking"]["status"], "needs_attention");
    // Visible to operators, and the dates stay taken until someone decides.
    let stuck: serde_json::Value = app.get_json("/v1/sagas?status=stuck").await;
    assert_eq!(stuck["sagas"][0]["id"], id.to_string());
    let claim: (String, String) =
        sqlx::query_as("SELECT kind, status FROM inventory_claims WHERE saga_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(claim, ("booking".to_owned(), "active".to_owned()));
    assert!(
        !events.contains(&"InventoryReleased".to_owned()),
        "{events:?}"
    );
    let refund_attempts: i32 = sqlx::query_scalar(
        "SELECT attempts FROM saga_steps WHERE saga_id = $1 AND phase = 'compensation' AND step_name = 'payment.refund'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        refund_attempts as u32,
        booking_definition().compensation_retry.max_attempts
    );
}

#[tokio::test]
async fn shutdown_finishes_the_step_in_flight_and_hands_the_saga_back() {
    let app = spawn_app().await;
    let id = start_authorizing(&app, "mill-1", "pm_card_visa", Duration::from_millis(600)).await;
    let (pool, db_url, double, notify) = (
        app.pool.clone(),
        app.db_url.clone(),
        app.double.clone(),
        app.notify.clone(),
    );
    app.stop().await;

    let (step, locked_by, status): (i32, Option<String>, String) =
        sqlx::query_as("SELECT current_step, locked_by, status FROM sagas WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (step, locked_by, status.as_str()),
        (2, None, "running"),
        "authorize finished, lease released"
    );

    let next = spawn_instance(pool, db_url, double, notify, AppOptions::default()).await;
    assert_eq!(next.wait_terminal(id).await["status"], "completed");
    assert_eq!(next.double.counters().payment_intents_created, 1);
}

#[tokio::test]
async fn a_running_saga_finishes_on_the_definition_version_it_started_with() {
    let api = spawn_app_with(AppOptions {
        role: Role::Api,
        ..Default::default()
    })
    .await;
    let id = api
        .start_booking(booking_input("tower-1", "pm_card_visa"))
        .await;

    // The next version drops the notification step; a worker that knows only it is deployed.
    let v1 = i64::from(booking_definition().version);
    let mut v2 = booking_definition();
    v2.version += 1;
    v2.steps.pop();
    let worker = api
        .spawn_sibling(AppOptions {
            definitions: vec![v2],
            ..Default::default()
        })
        .await;
    let v = worker.wait_terminal(id).await;
    assert_eq!(v["status"], "completed");
    assert_eq!(v["version"], v1);
    assert_eq!(worker.notify.count(), 1, "v1's notify step ran");

    // New sagas start on v2.
    let id2 = worker
        .start_booking(booking_input("tower-2", "pm_card_visa"))
        .await;
    let v = worker.wait_terminal(id2).await;
    assert_eq!(v["version"], v1 + 1);
    assert_eq!(worker.notify.count(), 1, "v2 has no notify step");

    // Changing a version in use is refused.
    let mut changed = booking_definition();
    changed.steps[0].timeout = Duration::from_millis(1234);
    let err = sagad::engine::registry::Registry::load(api.pool.clone(), vec![changed])
        .await
        .err()
        .expect("a changed v1 is refused");
    assert!(
        err.to_string().contains(&format!("version {}", v1 + 2)),
        "the next free version is suggested: {err}"
    );
}

/// When each forward step was recorded (`now()` is the recording transaction's start).
async fn steps_recorded_at(
    app: &crate::harness::TestApp,
    id: uuid::Uuid,
) -> std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> {
    sqlx::query_as(
        "SELECT step_name, finished_at FROM saga_steps WHERE saga_id = $1 AND phase = 'forward'",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// A remote step followed at once by another one is not recorded on its own: authorize, capture
/// and the chained confirm are recorded by one statement (their step rows share the transaction's
/// timestamp), which saves a writing transaction per saga.
#[tokio::test]
async fn consecutive_remote_steps_are_recorded_together() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("chain-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let at = steps_recorded_at(&app, id).await;
    assert_eq!(at["authorize_payment"], at["capture_payment"], "{at:?}");
    assert_eq!(at["capture_payment"], at["confirm_booking"], "{at:?}");
    assert_ne!(at["hold_inventory"], at["authorize_payment"], "{at:?}");
    let pi = &app.payment_intents_of(id)[0];
    assert_eq!((pi.effects.authorizations, pi.effects.captures), (1, 1));
}

/// Before the next remote step runs unrecorded, the worker checks it still has room in its lease
/// for that step (its timeout + 2 s); with too little left, the outcome is recorded first, which
/// renews the lease.
#[tokio::test]
async fn a_remote_step_with_too_little_lease_left_is_recorded_before_the_next_one() {
    // Test steps time out after ≤ 3 s: the capture needs 5 s of lease left.
    let app = spawn_app_with(AppOptions {
        lease: Duration::from_secs(6),
        ..Default::default()
    })
    .await;
    app.double.inject(Fault::latency(
        Operation::Create,
        Duration::from_millis(1500),
    ));
    let id = app
        .start_booking(booking_input("chain-2", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let at = steps_recorded_at(&app, id).await;
    assert_ne!(at["authorize_payment"], at["capture_payment"], "{at:?}");
    assert_eq!(at["capture_payment"], at["confirm_booking"], "{at:?}");
    assert_eq!(app.payment_intents_of(id)[0].effects.captures, 1);
}

/// A guest cancelling while the authorization runs is learnt before the capture: the
/// authorization is voided and the guest is never charged (a capture then a refund would cost
/// the platform Stripe's fee).
#[tokio::test]
async fn a_cancellation_while_authorizing_voids_instead_of_capturing() {
    let app = spawn_app().await;
    let id = cancel_while_authorizing(&app, "chain-3", "pm_card_visa").await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    let events = app.event_types(id).await;
    assert_eq!(
        events,
        [
            "BookingRequested",
            "InventoryHeld",
            "PaymentAuthorized",
            "CompensationStarted",
            "BookingCancelled",
            "PaymentVoided",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    let pi = &app.payment_intents_of(id)[0];
    assert_eq!((pi.effects.captures, pi.effects.cancels), (0, 1), "{pi:?}");
}

/// `?wait=` looks at the database again every second: a saga whose end was not heard of (the
/// LISTEN connection was reconnecting, say) still ends the wait long before its deadline.
#[tokio::test]
async fn a_wait_ends_when_the_saga_ends_even_if_its_notification_is_lost() {
    // API only: nothing runs the saga, and the end below comes from outside sagad (no NOTIFY).
    let api = spawn_app_with(AppOptions {
        role: Role::Api,
        max_wait: Some(Duration::from_secs(600)),
        ..Default::default()
    })
    .await;
    let waiting = tokio::spawn(
        api.post("/v1/sagas?wait=600s")
            .json(&json!({ "saga": "booking", "input": booking_input("quiet-1", "pm_card_visa") }))
            .send(),
    );
    let id: uuid::Uuid = crate::harness::eventually("the saga's row", || async {
        sqlx::query_scalar("SELECT id FROM sagas")
            .fetch_optional(&api.pool)
            .await
            .unwrap()
    })
    .await;
    sqlx::query(
        "UPDATE sagas SET status = 'stuck', failure_reason = 'ended by the test', finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&api.pool)
    .await
    .unwrap();
    // Without the re-check the answer would only come at the wait's own deadline, 600 s away.
    let resp = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the wait did not end within 60 s of its saga ending (its own deadline is 600 s)")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "stuck", "{v:#}");
    assert_eq!(v["id"], id.to_string(), "{v:#}");
}

/// Under sustained load the local queue never empties; a saga that went through the database
/// (started while this process was full) still runs soon, because freed workers alternate
/// between the two. It used to wait until the load stopped (seconds in the benchmark).
#[tokio::test]
async fn a_saga_queued_in_the_database_is_not_starved_by_the_local_queue() {
    let app = spawn_app_with(AppOptions {
        workers: 1,
        local_queue: Some(1),
        ..Default::default()
    })
    .await;
    app.double
        .inject(Fault::latency(Operation::Create, Duration::from_millis(150)).times(100));
    // One runs, one waits in the local queue, the third goes through the database.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.start_booking(booking_input(&format!("fair-{i}"), "pm_card_visa"))
                .await,
        );
    }
    let through_database = ids[2];
    // Keep the local queue fed: a new saga every 100 ms, faster than one worker finishes them.
    for i in 3..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ids.push(
            app.start_booking(booking_input(&format!("fair-{i}"), "pm_card_visa"))
                .await,
        );
    }
    for id in &ids {
        let v = app.wait_terminal(*id).await;
        assert_eq!(v["status"], "completed", "{v:#}");
    }
    // The start statement holds the inventory; the first step a worker runs is the authorization.
    let authorized: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'PaymentAuthorized' ORDER BY recorded_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let position = authorized
        .iter()
        .position(|id| *id == through_database)
        .unwrap();
    // Third, or fourth if the first saga found its worker taken for a moment by a claim.
    assert!(
        position <= 3,
        "the saga started through the database was authorized {}th of {}",
        position + 1,
        authorized.len()
    );
}
