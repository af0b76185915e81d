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
