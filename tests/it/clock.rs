//! Clock skew: a sagad whose wall clock is 30 s ahead of the database's, or 30 s behind it, still
//! schedules by the database's clock. Each test runs a real flow under both skews and compares the
//! times sagad stored with the database's own (`now()`, `recorded_at`, `updated_at`), never with a
//! wall-clock wait: a time taken from sagad's skewed clock would be 30 s off and fail the margin.

use std::time::Duration;

use chrono::TimeDelta;
use sagad::events::NewEvent;
use sagad::store;
use sagad_test_support::Receiver;
use serde_json::{Value, json};
use sqlx::PgPool;
use stripe_double::{Fault, Operation};
use uuid::Uuid;

use crate::harness::{AppOptions, booking_definition, booking_input, eventually, spawn_app_with};

/// sagad's clock against the database's, in seconds.
const SKEWS: [i64; 2] = [30, -30];

/// How far a stored time may be from the one expected: far above a round trip on a loaded
/// machine, far below the skew.
const MARGIN: f64 = 5.0;

fn skewed(skew: i64, opts: AppOptions) -> AppOptions {
    AppOptions {
        clock_skew: TimeDelta::seconds(skew),
        ..opts
    }
}

/// A number of seconds `sql` computes for `id` (`$1`).
async fn seconds(pool: &PgPool, sql: &'static str, id: Uuid) -> f64 {
    sqlx::query_scalar::<_, f64>(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[track_caller]
fn assert_near(what: &str, skew: i64, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= MARGIN,
        "sagad's clock {skew:+} s from the database's: {what} is {got:.3} s, expected {want:.3} s \
         (± {MARGIN} s) by the database's clock"
    );
}

/// The booking saga with an authorization that may take 10 s, and a capture that waits 20 s (no
/// jitter) after a failure and gives up after a minute.
fn slow_capture_booking() -> sagad::engine::definition::SagaDefinition {
    let mut def = booking_definition();
    let authorize = def
        .steps
        .iter_mut()
        .find(|s| s.name == "authorize_payment")
        .expect("an authorize step");
    authorize.timeout = Duration::from_secs(10);
    let capture = def
        .steps
        .iter_mut()
        .find(|s| s.name == "capture_payment")
        .expect("a capture step");
    capture.retry.base_delay = Duration::from_secs(20);
    capture.retry.max_delay = Duration::from_secs(20);
    capture.retry.jitter = 0.0;
    capture.give_up_after = Some(Duration::from_secs(60));
    def
}

/// A lease taken and kept by a skewed sagad lasts its length by the database's clock (a live lease
/// is not rescued); the hold's expiry, a retry's due time and the give-up deadline's start are the
/// database's time plus their delays (a retry is neither fired early nor 30 s late).
#[tokio::test]
async fn leases_holds_retries_and_give_up_deadlines_follow_the_database_clock() {
    for skew in SKEWS {
        let app = spawn_app_with(skewed(
            skew,
            AppOptions {
                definitions: vec![slow_capture_booking()],
                ..Default::default()
            },
        ))
        .await;
        let lease = 30.0;
        // Authorization answers slowly (the saga is leased meanwhile); the first capture fails.
        app.double
            .inject(Fault::latency(Operation::Create, Duration::from_secs(4)));
        app.double.inject(Fault::server_error(Operation::Capture));
        let id = app
            .start_booking(booking_input("skew-1", "pm_card_visa"))
            .await;

        // The hold: its expiry is 30 minutes after the statement that placed it.
        let hold = seconds(
            &app.pool,
            "SELECT date_part('epoch', (payload->>'expires_at')::timestamptz - recorded_at)
             FROM events WHERE aggregate_id = $1 AND event_type = 'InventoryHeld'",
            id,
        )
        .await;
        assert_near("the hold's lifetime", skew, hold, 30.0 * 60.0);

        // The lease, while the authorization is in flight: it runs a lease from the claim.
        eventually("the slow authorization to be in flight", || async {
            app.double.pending_faults().len().eq(&1).then_some(())
        })
        .await;
        let left = seconds(
            &app.pool,
            "SELECT date_part('epoch', locked_until - now()) FROM sagas
             WHERE id = $1 AND locked_by IS NOT NULL",
            id,
        )
        .await;
        assert!(
            left > lease - 10.0 && left <= lease + MARGIN,
            "sagad's clock {skew:+} s: the live lease has {left:.3} s left of {lease} s"
        );

        // The failed capture: retried 20 s after the statement that recorded the failure.
        let failed = eventually("the capture's failure to be recorded", || async {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT event_id FROM events WHERE aggregate_id = $1 AND event_type = 'StepFailed'
                 AND payload->>'step' = 'capture_payment'",
            )
            .bind(id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
        })
        .await;
        let planned = seconds(
            &app.pool,
            "SELECT date_part('epoch', (payload->>'retry_at')::timestamptz - recorded_at)
             FROM events WHERE event_id = $1",
            failed,
        )
        .await;
        assert_near("the retry's delay", skew, planned, 20.0);
        let (due_in, since): (f64, f64) = sqlx::query_as(
            "SELECT date_part('epoch', s.next_run_at - now()),
                    date_part('epoch', s.retrying_since - e.recorded_at)
             FROM sagas s JOIN events e ON e.aggregate_id = s.id
             WHERE s.id = $1 AND e.event_id = $2",
        )
        .bind(id)
        .bind(failed)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(
            due_in > 20.0 - 2.0 * MARGIN && due_in <= 20.0 + MARGIN,
            "sagad's clock {skew:+} s: the retry is due in {due_in:.3} s by the database's clock, \
             expected about 20 s"
        );
        assert_near(
            "the give-up deadline's start after the failure",
            skew,
            since,
            0.0,
        );

        // Due now: the saga finishes, having made exactly one authorization and two captures.
        sqlx::query("UPDATE sagas SET next_run_at = now() WHERE id = $1")
            .bind(id)
            .execute(&app.pool)
            .await
            .unwrap();
        let v = app.wait_terminal(id).await;
        assert_eq!(v["status"], "completed", "{v:#}");
        let steps: Vec<(String, i32)> = sqlx::query_as(
            "SELECT step_name, attempts FROM saga_steps WHERE saga_id = $1 AND phase = 'forward'
             AND step_name IN ('authorize_payment', 'capture_payment') ORDER BY step_index",
        )
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            steps,
            [
                ("authorize_payment".to_owned(), 1),
                ("capture_payment".to_owned(), 2)
            ],
            "the live lease was not rescued (one authorization), the retry ran once"
        );
        app.stop().await;
    }
}

/// A 3-D Secure wait deadline set by a skewed sagad is the database's time plus the step's
/// `action_deadline`, and the saga gives up when the database's clock passes it.
#[tokio::test]
async fn a_3ds_wait_deadline_fires_at_the_database_time() {
    for skew in SKEWS {
        let mut def = booking_definition();
        let authorize = def
            .steps
            .iter_mut()
            .find(|s| s.name == "authorize_payment")
            .expect("an authorize step");
        authorize.params = json!({ "action_deadline": "2s" });
        let app = spawn_app_with(skewed(
            skew,
            AppOptions {
                definitions: vec![def],
                ..Default::default()
            },
        ))
        .await;
        let id = app
            .start_booking(booking_input("skew-3ds", "pm_card_authenticationRequired"))
            .await;
        let required = eventually("the 3-D Secure wait to be recorded", || async {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT event_id FROM events
                 WHERE aggregate_id = $1 AND event_type = 'PaymentActionRequired'",
            )
            .bind(id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
        })
        .await;
        let deadline = seconds(
            &app.pool,
            "SELECT date_part('epoch', (payload->>'deadline')::timestamptz - recorded_at)
             FROM events WHERE event_id = $1",
            required,
        )
        .await;
        assert_near("the 3-D Secure deadline", skew, deadline, 2.0);
        let v = app.wait_status(id, &["compensated"]).await;
        let reason = v["failure"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("authentication_timeout"),
            "sagad's clock {skew:+} s: {v:#}"
        );
        // It gave up once the deadline had passed by the database's clock, not 30 s after.
        let after = seconds(
            &app.pool,
            "SELECT date_part('epoch', f.recorded_at - (r.payload->>'deadline')::timestamptz)
             FROM events r JOIN events f ON f.aggregate_id = r.aggregate_id
             WHERE r.aggregate_id = $1 AND r.event_type = 'PaymentActionRequired'
               AND f.event_type = 'StepFailed' AND f.payload->>'step' = 'authorize_payment'",
            id,
        )
        .await;
        assert!(
            (0.0..=MARGIN).contains(&after),
            "sagad's clock {skew:+} s: gave up {after:.3} s after the deadline"
        );
        app.stop().await;
    }
}

/// A failed webhook delivery of a skewed sagad is retried after the schedule's delay by the
/// database's clock, and its attempt is recorded at the database's time.
#[tokio::test]
async fn webhook_delivery_retries_follow_the_database_clock() {
    for skew in SKEWS {
        let mut opts = AppOptions::default();
        opts.outbound.retry.schedule = vec![Duration::from_secs(60); 3];
        let app = spawn_app_with(skewed(skew, opts)).await;
        let rx = Receiver::start().await;
        rx.answer(500);
        let endpoint: Value = app
            .post("/v1/webhook-endpoints")
            .json(&json!({ "url": rx.url, "event_types": ["*"] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let endpoint: Uuid = endpoint["id"].as_str().unwrap().parse().unwrap();
        let mut tx = app.pool.begin().await.unwrap();
        let event =
            NewEvent::from(sagad::policies::Cancellation::by_sagad("clock").event(45000, 45000));
        store::events::append(&mut tx, "booking", Uuid::now_v7(), 1, &[event])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let delivery = eventually("the failed attempt to be recorded", || async {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM webhook_deliveries
                 WHERE endpoint_id = $1 AND status = 'pending' AND schedule_pos = 1",
            )
            .bind(endpoint)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
        })
        .await;
        let (planned, due_in, attempted): (f64, f64, f64) = sqlx::query_as(
            "SELECT date_part('epoch', d.next_attempt_at - d.updated_at),
                    date_part('epoch', d.next_attempt_at - now()),
                    date_part('epoch', a.attempted_at - d.updated_at)
             FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id
             WHERE d.id = $1",
        )
        .bind(delivery)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_near("the delivery's retry delay", skew, planned, 60.0);
        assert!(
            due_in > 60.0 - 2.0 * MARGIN,
            "sagad's clock {skew:+} s: the retry is due in {due_in:.3} s, early"
        );
        assert_near("the attempt's time before its record", skew, attempted, 0.0);
        app.stop().await;
    }
}

/// A Stripe event whose processing failed is retried by a skewed sagad after the inbox policy's
/// delay (at most 300 ms in tests) by the database's clock: neither at once nor 30 s later.
#[tokio::test]
async fn stripe_inbox_retries_follow_the_database_clock() {
    for skew in SKEWS {
        let app = spawn_app_with(skewed(skew, AppOptions::default())).await;
        // Stripe cannot be asked about the PaymentIntent: every processing attempt fails.
        app.double
            .inject(Fault::server_error(Operation::Retrieve).times(1000));
        let id = format!("evt_clock_{}", skew.unsigned_abs());
        let body = json!({
            "id": id, "object": "event", "type": "payment_intent.succeeded",
            "created": 1_700_000_000, "livemode": false, "api_version": "2026-09-30.endive",
            "data": { "object": { "id": "pi_clock_unknown", "object": "payment_intent" } }
        })
        .to_string();
        let (status, answer) = app.post_signed_stripe_event(&body).await;
        assert_eq!(status, 200, "{answer}");
        let due_in = eventually("the event to wait for its retry", || async {
            sqlx::query_scalar::<_, f64>(
                "SELECT date_part('epoch', next_attempt_at - now()) FROM stripe_events
                 WHERE id = $1 AND status = 'pending' AND attempts >= 1 AND last_error IS NOT NULL",
            )
            .bind(&id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
        })
        .await;
        assert!(
            due_in > -MARGIN && due_in <= 0.3 + MARGIN,
            "sagad's clock {skew:+} s: the event's retry is due in {due_in:.3} s by the \
             database's clock, expected at most 0.3 s"
        );
        app.double.clear_faults();
        app.stop().await;
    }
}
