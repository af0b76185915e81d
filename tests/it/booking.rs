//! The booking saga end to end over HTTP: happy path, a permanent failure at each step, Stripe
//! faults, and the double-booking race.

use serde_json::json;
use stripe_double::{AttemptOutcome, Fault, Operation};

use crate::harness::{
    AppOptions, NOTIFY_SECRET, booking_definition, booking_input, count, spawn_app, spawn_app_with,
    start_concurrently,
};

const HAPPY: [&str; 7] = [
    "BookingRequested",
    "InventoryHeld",
    "PaymentAuthorized",
    "PaymentCaptured",
    "BookingConfirmed",
    "NotificationSent",
    "SagaCompleted",
];

#[tokio::test]
async fn happy_path_completes_with_one_captured_payment_and_a_confirmed_booking() {
    let app = spawn_app().await;
    let resp = app
        .post("/v1/sagas?wait=10s")
        .header("Idempotency-Key", "happy-1")
        .json(&json!({ "saga": "booking", "input": booking_input("villa-1", "pm_card_visa") }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "finished within the wait");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["url"], format!("/v1/sagas/{}", v["id"].as_str().unwrap()));
    let id = v["id"].as_str().unwrap().parse().unwrap();

    assert_eq!(app.event_types(id).await, HAPPY);
    let pis = app.payment_intents_of(id);
    assert_eq!(pis.len(), 1, "one PaymentIntent");
    assert_eq!(pis[0].status, "succeeded");
    assert_eq!(pis[0].capture_method, "manual");
    assert_eq!(pis[0].amount, 45000);
    assert_eq!(pis[0].currency, "eur");
    assert_eq!(pis[0].effects.captures, 1);
    assert_eq!(pis[0].effects.refunds + pis[0].effects.cancels, 0);

    let booking = &v["booking"];
    assert_eq!(booking["status"], "confirmed");
    assert!(
        booking["confirmation_code"]
            .as_str()
            .unwrap()
            .starts_with("BK-")
    );
    assert_eq!(booking["payment_intent_id"], pis[0].id.as_str());
    let (kind, status): (String, String) =
        sqlx::query_as("SELECT kind, status FROM inventory_claims WHERE saga_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), status.as_str()), ("booking", "active"));

    // Each step shows its attempts.
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5);
    assert!(
        steps
            .iter()
            .all(|s| s["status"] == "succeeded" && s["attempts"] == 1)
    );

    // The notification went out once, signed with the Standard Webhooks scheme.
    let notes = app.notify.hits();
    assert_eq!(notes.len(), 1);
    let n = &notes[0];
    let msg_id = n.headers["webhook-id"].to_str().unwrap();
    let ts: i64 = n.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = sagad::signing::sign(NOTIFY_SECRET, msg_id, ts, &n.body);
    assert_eq!(n.headers["webhook-signature"].to_str().unwrap(), expected);
    let body: serde_json::Value = serde_json::from_slice(&n.body).unwrap();
    assert_eq!(
        body["booking"]["confirmation_code"],
        booking["confirmation_code"]
    );
}

/// Compensation events of a saga, in order.
async fn compensation_events(app: &crate::harness::TestApp, id: uuid::Uuid) -> Vec<String> {
    let all = app.event_types(id).await;
    let start = all
        .iter()
        .position(|e| e == "CompensationStarted")
        .unwrap_or_else(|| panic!("no compensation in {all:?}"));
    all[start..].to_vec()
}

#[tokio::test]
async fn failure_at_hold_compensates_nothing() {
    let app = spawn_app().await;
    let first = app
        .start_booking(booking_input("loft-1", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(first).await["status"], "completed");

    let second = app
        .start_booking(booking_input("loft-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(second).await;
    assert_eq!(v["status"], "compensated");
    assert_eq!(v["failure"]["reason"], "dates_unavailable");
    assert_eq!(v["failure"]["step"], "hold_inventory");
    assert_eq!(
        app.event_types(second).await,
        [
            "BookingRequested",
            "StepFailed",
            "CompensationStarted",
            "SagaCompensated"
        ]
    );
    assert!(
        app.payment_intents_of(second).is_empty(),
        "no payment attempted"
    );
    assert_eq!(v["booking"]["status"], "failed");
}

#[tokio::test]
async fn failure_at_authorize_releases_the_hold_once() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("loft-2", "pm_card_chargeDeclined"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated");
    assert_eq!(v["failure"]["reason"], "card_declined: generic_decline");
    assert_eq!(
        compensation_events(&app, id).await,
        [
            "CompensationStarted",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    let pis = app.payment_intents_of(id);
    assert_eq!(pis.len(), 1);
    assert_eq!(
        pis[0].effects.captures + pis[0].effects.cancels + pis[0].effects.refunds,
        0
    );
    assert_eq!(app.active_claims().await, 0);
}

#[tokio::test]
async fn failure_at_capture_voids_the_authorization_once_and_releases() {
    let app = spawn_app().await;
    // Stripe keeps failing captures past the step's give-up deadline; the capture may have happened, so its own
    // compensation (refund) runs first and finds nothing captured; then void, then release.
    app.double
        .inject(Fault::server_error(Operation::Capture).times(100));
    let id = app
        .start_booking(booking_input("loft-3", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["step"], "capture_payment");
    let reason = v["failure"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("dependency_unavailable"), "{reason}");
    assert_eq!(
        compensation_events(&app, id).await,
        [
            "CompensationStarted",
            "PaymentVoided",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    let pis = app.payment_intents_of(id);
    assert_eq!(pis.len(), 1);
    assert_eq!(
        (
            pis[0].effects.captures,
            pis[0].effects.cancels,
            pis[0].effects.refunds
        ),
        (0, 1, 0)
    );
    assert_eq!(pis[0].status, "canceled");
}

#[tokio::test]
async fn failure_at_confirm_refunds_and_releases_once() {
    let mut def = crate::harness::booking_definition();
    // The hold expires before the booking can be confirmed.
    def.steps[0].params = json!({ "hold_ttl": "1ms" });
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    let id = app
        .start_booking(booking_input("loft-4", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["reason"], "hold_expired");
    // In reverse, the whole way: the refund, then the hold's release (already given back by its
    // expiry); a captured payment is refunded, not voided.
    let events = compensation_events(&app, id).await;
    // The expired hold is given back by the maintenance pass (at any time: its event carries no
    // step), or else by the release step, which comes after the refund.
    let tagged: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT event_type, metadata->>'step' FROM events
         WHERE aggregate_id = $1 AND version >= (SELECT version FROM events
                                                 WHERE aggregate_id = $1 AND event_type = 'CompensationStarted')
         ORDER BY version",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let by_steps: Vec<&str> = tagged
        .iter()
        .filter(|(t, step)| !(t == "InventoryReleased" && step.is_none()))
        .map(|(t, _)| t.as_str())
        .collect();
    let expected: &[&str] = if by_steps.contains(&"InventoryReleased") {
        &[
            "CompensationStarted",
            "PaymentRefunded",
            "InventoryReleased",
            "SagaCompensated",
        ]
    } else {
        &["CompensationStarted", "PaymentRefunded", "SagaCompensated"]
    };
    assert_eq!(by_steps, expected, "{tagged:?}");
    assert_eq!(events.len(), tagged.len());
    let steps: Vec<(String, String)> = sqlx::query_as(
        "SELECT step_name, status FROM saga_steps
         WHERE saga_id = $1 AND phase = 'compensation' ORDER BY finished_at, step_index DESC",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected = [
        ("payment.refund", "succeeded"),
        ("payment.void", "succeeded"),
        ("inventory.release", "succeeded"),
    ]
    .map(|(n, s)| (n.to_owned(), s.to_owned()));
    assert_eq!(
        steps, expected,
        "compensations in reverse, one after another"
    );
    let pis = app.payment_intents_of(id);
    assert_eq!(
        (
            pis[0].effects.captures,
            pis[0].effects.refunds,
            pis[0].effects.cancels
        ),
        (1, 1, 0)
    );
    assert_eq!(pis[0].amount_refunded, 45000);
    // The hold was given back exactly once (by expiry, recorded as an event).
    let released = app
        .event_types(id)
        .await
        .iter()
        .filter(|e| *e == "InventoryReleased")
        .count();
    assert_eq!(released, 1);
}

/// A booking whose gateway answers `status` to every notification: compensated at `notify`, in
/// reverse. Returns the app, the saga and its final view.
async fn notify_failing_with(
    status: u16,
    listing: &str,
) -> (crate::harness::TestApp, uuid::Uuid, serde_json::Value) {
    let app = spawn_app().await;
    app.notify.answer(status);
    let id = app
        .start_booking(booking_input(listing, "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["step"], "notify");
    let reason = v["failure"]["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
    assert_eq!(
        compensation_events(&app, id).await,
        [
            "CompensationStarted",
            "BookingCancelled",
            "PaymentRefunded",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    assert_eq!(v["booking"]["status"], "cancelled");
    assert_eq!(app.active_claims().await, 0);
    (app, id, v)
}

#[tokio::test]
async fn failure_at_notify_cancels_refunds_and_releases_in_reverse() {
    // The gateway answers 503 past the notify step's give-up deadline: however many attempts
    // that took, the saga then compensates because the dependency stayed unavailable.
    let (app, id, v) = notify_failing_with(503, "loft-5").await;
    assert!(
        v["failure"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("dependency_unavailable"),
        "{v:#}"
    );
    assert!(
        app.notify.count() > 1,
        "a retryable failure is retried until the deadline"
    );
    let pis = app.payment_intents_of(id);
    assert_eq!(
        (
            pis[0].effects.captures,
            pis[0].effects.refunds,
            pis[0].effects.cancels
        ),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_gateway_that_refuses_the_notification_compensates_after_one_attempt() {
    let (app, _, v) = notify_failing_with(422, "loft-6").await;
    let reason = v["failure"]["reason"].as_str().unwrap();
    assert!(!reason.contains("attempts_exhausted"), "{reason}");
    assert_eq!(app.notify.count(), 1, "a refused request is not sent again");
}

#[tokio::test]
async fn a_gateway_asking_to_retry_later_is_not_retried_sooner() {
    // The tests' booking saga retries after 5 ms (base_delay); its notify step gets booking.toml's
    // max_delay (30 s) back, and the gateway asks for 2 s, within it, once; then it accepts.
    let mut def = booking_definition();
    let notify = def.steps.iter_mut().find(|s| s.name == "notify").unwrap();
    notify.retry.max_delay = std::time::Duration::from_secs(30);
    notify.give_up_after = Some(std::time::Duration::from_secs(60));
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    app.notify
        .script([sagad_test_support::Reply::RetryAfter(503, 2)]);
    let id = app
        .start_booking(booking_input("loft-7", "pm_card_visa"))
        .await;
    let failed = crate::harness::eventually("the notify step's StepFailed event", || async {
        let events: serde_json::Value = app.get_json(&format!("/v1/sagas/{id}/events")).await;
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_type"] == "StepFailed")
            .cloned()
    })
    .await;
    assert_eq!(failed["payload"]["step"], "notify", "{failed:#}");
    let at = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp")).unwrap()
    };
    // retry_at counts from the gateway's answer; the event is recorded a moment later (longer on
    // a loaded machine), so the recorded wait is at most the 2 s asked for, not 30 s.
    let wait = at(&failed["payload"]["retry_at"]) - at(&failed["recorded_at"]);
    assert!(
        (1..=2_100).contains(&wait.num_milliseconds()),
        "retry planned {wait} after recording (Retry-After: 2): {failed:#}"
    );
    // The retry comes (the saga completes), and no sooner than the gateway asked.
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let hits = app.notify.hits();
    assert_eq!(hits.len(), 2, "one refused attempt, one accepted");
    assert_eq!((hits[0].status, hits[1].status), (503, 200));
    let gap = hits[1].at - hits[0].at;
    assert!(
        (std::time::Duration::from_millis(1_900)..std::time::Duration::from_secs(10))
            .contains(&gap),
        "retried {gap:?} after a Retry-After: 2"
    );
    let attempts: i32 = sqlx::query_scalar(
        "SELECT attempts FROM saga_steps WHERE saga_id = $1 AND phase = 'forward' AND step_name = 'notify'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 2, "{v:#}");
}

#[tokio::test]
async fn stripe_errors_and_lost_responses_are_retried_with_the_same_key() {
    let app = spawn_app().await;
    app.double
        .inject(Fault::server_error(Operation::Create).times(2));
    app.double
        .inject(Fault::lose_response(Operation::Create).times(1));
    app.double
        .inject(Fault::lose_response(Operation::Capture).times(1));
    let id = app
        .start_booking(booking_input("suite-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");

    let pis = app.payment_intents_of(id);
    assert_eq!(pis.len(), 1, "exactly one PaymentIntent");
    assert_eq!(pis[0].effects.captures, 1, "captured once");
    assert_eq!(app.double.counters().payment_intents_created, 1);
    let creates: Vec<_> = app
        .double
        .requests()
        .into_iter()
        .filter(|r| r.operation == Some(Operation::Create))
        .collect();
    assert_eq!(creates.len(), 4, "two 500s, one lost response, one replay");
    // The capture whose response was lost is retried under its own key, the same both times,
    // and Stripe answers the retry from its record.
    let attempts: Vec<_> = app
        .double
        .attempts_on(&pis[0].id)
        .into_iter()
        .map(|a| (a.operation, a.idempotency_key, a.outcome))
        .collect();
    let capture_key = Some(format!("sagad:{id}:capture"));
    assert_eq!(
        attempts,
        [
            (
                Operation::Capture,
                capture_key.clone(),
                AttemptOutcome::Performed
            ),
            (Operation::Capture, capture_key, AttemptOutcome::Replayed),
        ]
    );
    let key = creates[0]
        .idempotency_key
        .clone()
        .expect("an idempotency key");
    assert!(
        creates
            .iter()
            .all(|r| r.idempotency_key.as_ref() == Some(&key))
    );
    assert!(
        creates.last().unwrap().replayed,
        "the last create was an idempotent replay"
    );
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps[1]["attempts"], 4);
}

#[tokio::test]
async fn fifty_concurrent_bookings_of_one_listing_confirm_exactly_one() {
    let app = spawn_app_with(AppOptions {
        workers: 16,
        ..Default::default()
    })
    .await;
    // Overlapping, not identical, stays.
    let inputs = (0..50)
        .map(|i| {
            let mut input = booking_input("penthouse", "pm_card_visa");
            input["check_in"] = json!(crate::harness::future_day(30 + i % 3));
            input["check_out"] = json!(crate::harness::future_day(34 + i % 4));
            input["guest_id"] = json!(format!("guest-{i}"));
            input
        })
        .collect();
    let ids = start_concurrently(&[&app], inputs).await;
    let mut completed = 0;
    for id in ids {
        let v = app.wait_terminal(id).await;
        match v["status"].as_str().unwrap() {
            "completed" => completed += 1,
            "compensated" => assert_eq!(v["failure"]["reason"], "dates_unavailable", "{v:#}"),
            other => panic!("unexpected {other}: {v:#}"),
        }
    }
    assert_eq!(completed, 1);
    assert_eq!(app.active_claims().await, 1);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM bookings WHERE status = 'confirmed'"
        )
        .await,
        1
    );
    assert_eq!(
        app.double.counters().payment_intents_created,
        1,
        "losers never reached Stripe"
    );
}

/// A hold past its TTL stops blocking the dates, and its saga gets `InventoryReleased
/// (hold_expired)` as its next event version, in the maintenance pass's own transaction.
#[tokio::test]
async fn an_expired_hold_is_released_with_an_event_on_its_saga() {
    let mut def = crate::harness::booking_definition();
    // Long enough for the authorization to park the saga first on a loaded machine (it never
    // waits past the hold: with 300 ms it sometimes timed out before parking).
    def.steps[0].params = json!({ "hold_ttl": "3s" });
    def.steps[1].params = json!({ "action_deadline": "1m" });
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    // 3-D Secure parks the saga after the hold, so nothing but the expiry touches the hold.
    let id = app
        .start_booking(booking_input("barn-9", "pm_card_authenticationRequired"))
        .await;
    app.wait_status(id, &["waiting"]).await;
    crate::harness::eventually(
        "the hold to pass its expiry by the database's clock",
        || async {
            let passed: bool = sqlx::query_scalar(
                "SELECT expires_at < now() FROM inventory_claims WHERE saga_id = $1",
            )
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
            passed.then_some(())
        },
    )
    .await;
    // The background expiry may hold the row (SKIP LOCKED) when this pass looks: either pass may
    // release it, so await the release rather than assert it right after this one.
    sagad::maintenance::holds::run_once(&app.pool)
        .await
        .unwrap();
    crate::harness::eventually("the expired hold to be released", || async {
        (app.active_claims().await == 0).then_some(())
    })
    .await;
    let released: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload->>'reason', aggregate_type FROM events
         WHERE aggregate_id = $1 AND event_type = 'InventoryReleased'",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // Once: whatever the saga does next does not release the dates again.
    assert_eq!(
        released,
        [("hold_expired".to_owned(), "booking".to_owned())]
    );
    let events = app.event_types(id).await;
    let position = |t: &str| {
        events
            .iter()
            .position(|e| e == t)
            .unwrap_or_else(|| panic!("no {t} in {events:?}"))
    };
    assert!(
        position("InventoryHeld") < position("InventoryReleased"),
        "{events:?}"
    );
}
