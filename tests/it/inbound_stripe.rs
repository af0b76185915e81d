//! Inbound Stripe webhooks over real HTTP: signature checks, the inbox (duplicates, unknown types,
//! unknown PaymentIntents, crash recovery), and webhooks from the Stripe double driving sagas
//! (3-D Secure completed, failed or never finished; out-of-order delivery; refunds; disputes).

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sagad::config::Role;
use sagad::inbound::stripe::signature::{SignatureError, Verifier};
use serde_json::{Value, json};
use sha2::Sha256;
use stripe_double::WebhookTarget;
use uuid::Uuid;

use crate::harness::{
    AppOptions, STRIPE_WEBHOOK_SECRET, TestApp, booking_input, count, eventually, spawn_app,
    spawn_app_with, spawn_instance,
};

/// HMAC-SHA256 computed here, independently of sagad's signing code.
fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn event_body(id: &str, kind: &str, object: Value) -> String {
    json!({ "id": id, "object": "event", "type": kind, "created": now(), "livemode": false,
            "api_version": "2026-09-30.endive", "data": { "object": object } })
    .to_string()
}

async fn post_webhook(
    app: &TestApp,
    header: Option<String>,
    body: impl Into<String>,
) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .body(body.into());
    if let Some(h) = header {
        req = req.header("stripe-signature", h);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn webhooks_to(app: &TestApp) -> WebhookTarget {
    WebhookTarget {
        url: format!("{}/webhooks/stripe", app.base),
        secrets: vec![STRIPE_WEBHOOK_SECRET.into()],
        ..Default::default()
    }
}

/// Polls `f` until it returns `Some`, for at most 20 s.
#[derive(Debug, sqlx::FromRow)]
struct Inbox {
    status: String,
    attempts: i32,
    deliveries: i32,
    saga_id: Option<Uuid>,
    outcome: Option<String>,
}

async fn inbox(app: &TestApp, id: &str) -> Option<Inbox> {
    sqlx::query_as(
        "SELECT status, attempts, deliveries, saga_id, outcome FROM stripe_events WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

/// Waits until the inbox row is in a final state.
async fn inbox_final(app: &TestApp, id: &str) -> Inbox {
    eventually(&format!("inbox row {id}"), || async {
        inbox(app, id)
            .await
            .filter(|r| !matches!(r.status.as_str(), "pending" | "processing"))
    })
    .await
}

/// The id of the first event of `kind` about PaymentIntent `pi` the double recorded.
fn double_event(app: &TestApp, kind: &str, pi: &str) -> Value {
    app.double
        .stripe_events()
        .into_iter()
        .find(|e| {
            e["type"] == kind
                && (e["data"]["object"]["id"] == pi || e["data"]["object"]["payment_intent"] == pi)
        })
        .unwrap_or_else(|| panic!("the double recorded no {kind} for {pi}"))
}

async fn events_of(app: &TestApp, saga: Uuid, kind: &str) -> Vec<(Value, Value)> {
    sqlx::query_as(
        "SELECT payload, metadata FROM events WHERE aggregate_id = $1 AND event_type = $2 ORDER BY version",
    )
    .bind(saga)
    .bind(kind)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Starts a 3-D Secure booking and waits until it is parked; returns the saga and its PaymentIntent.
async fn parked_3ds_booking(app: &TestApp, listing: &str) -> (Uuid, String) {
    let id = app
        .start_booking(booking_input(listing, "pm_card_threeDSecure2Required"))
        .await;
    let v = app.wait_status(id, &["waiting"]).await;
    let pi = v["booking"]["payment_intent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, pi)
}

#[test]
fn fixed_test_vector_is_accepted() {
    // Computed outside sagad: printf '%s' '1700000000.{body}' | openssl dgst -sha256 -hmac 'whsec_test_vector_secret'
    let body = br#"{"id":"evt_test_vector","object":"event","type":"payment_intent.succeeded"}"#;
    let header = "t=1700000000,v1=2349192aff70cc4f0241feba88915a6e8d3e203cd7fa97c94e01ce07135bd8d8";
    let v = Verifier::new(&["whsec_test_vector_secret"], Duration::from_secs(300));
    assert_eq!(
        v.verify(Some(header), body, 1_700_000_100),
        Ok(1_700_000_000)
    );
    assert_eq!(
        v.verify(Some(header), body, 1_700_000_300),
        Ok(1_700_000_000)
    );
    assert_eq!(
        v.verify(Some(header), body, 1_700_000_301),
        Err(SignatureError::TimestampOutsideTolerance)
    );
    // A timestamp ahead of our clock: the same tolerance.
    assert_eq!(
        v.verify(Some(header), body, 1_700_000_000 - 300),
        Ok(1_700_000_000)
    );
    assert_eq!(
        v.verify(Some(header), body, 1_700_000_000 - 301),
        Err(SignatureError::TimestampOutsideTolerance)
    );
    let other = Verifier::new(&["whsec_other"], Duration::from_secs(300));
    assert_eq!(
        other.verify(Some(header), body, 1_700_000_100),
        Err(SignatureError::NoMatch)
    );
}

#[tokio::test]
async fn refused_webhooks_answer_400_and_store_nothing() {
    let app = spawn_app().await;
    let body = event_body(
        "evt_refused",
        "payment_intent.succeeded",
        json!({"id": "pi_x"}),
    );
    // sagad reads its clock when each request arrives, at `t` or a second or more later: a
    // timestamp 301 s before `t` is outside the tolerance whenever it arrives; one ahead is
    // refused only if it is still more than 300 s ahead then, so it leads by a minute more than
    // that. The exact edges on both sides, at a fixed clock: `fixed_test_vector_is_accepted`.
    let t = now();
    let ahead = t + 301 + 60;
    let good = signature(STRIPE_WEBHOOK_SECRET, t, &body);
    let cases: Vec<(&str, Option<String>, String)> = vec![
        (
            "tampered body",
            Some(format!("t={t},v1={good}")),
            body.replace("pi_x", "pi_y"),
        ),
        (
            "wrong secret",
            Some(format!("t={t},v1={}", signature("whsec_wrong", t, &body))),
            body.clone(),
        ),
        (
            "301 s old",
            Some(format!(
                "t={},v1={}",
                t - 301,
                signature(STRIPE_WEBHOOK_SECRET, t - 301, &body)
            )),
            body.clone(),
        ),
        (
            "361 s ahead",
            Some(format!(
                "t={ahead},v1={}",
                signature(STRIPE_WEBHOOK_SECRET, ahead, &body)
            )),
            body.clone(),
        ),
        ("missing header", None, body.clone()),
        ("v0 only", Some(format!("t={t},v0={good}")), body.clone()),
        ("malformed header", Some("garbage".into()), body.clone()),
        (
            "not JSON",
            Some(format!(
                "t={t},v1={}",
                signature(STRIPE_WEBHOOK_SECRET, t, "not json")
            )),
            "not json".into(),
        ),
        (
            "not an event",
            Some(format!(
                "t={t},v1={}",
                signature(STRIPE_WEBHOOK_SECRET, t, "{}")
            )),
            "{}".into(),
        ),
    ];
    for (what, header, body) in cases {
        let (status, v) = post_webhook(&app, header, body).await;
        assert_eq!(status, 400, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    let big_sig = signature(STRIPE_WEBHOOK_SECRET, t, &big);
    let (status, v) = post_webhook(&app, Some(format!("t={t},v1={big_sig}")), big).await;
    assert_eq!(status, 413, "too large: {v}");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM stripe_events").await,
        0
    );

    // The same body, correctly signed (with v0 and unknown schemes beside it), is taken.
    let header = format!("t={t},v0=00,v2=abc,v1={good}");
    let (status, v) = post_webhook(&app, Some(header), body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM stripe_events").await,
        1
    );
}

#[tokio::test]
async fn either_of_two_rotated_secrets_verifies() {
    let app = spawn_app_with(AppOptions {
        stripe_webhook_secrets: vec!["whsec_old_one".into(), "whsec_new_one".into()],
        ..Default::default()
    })
    .await;
    let t = now();
    for (i, secret) in ["whsec_old_one", "whsec_new_one", "whsec_unknown"]
        .iter()
        .enumerate()
    {
        let body = event_body(
            &format!("evt_rot_{i}"),
            "customer.created",
            json!({"id": "cus_1"}),
        );
        let (status, _) = post_webhook(
            &app,
            Some(format!("t={t},v1={}", signature(secret, t, &body))),
            body,
        )
        .await;
        assert_eq!(status, if i < 2 { 200 } else { 400 }, "{secret}");
    }
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM stripe_events").await,
        2
    );
}

#[tokio::test]
async fn three_d_secure_webhook_wakes_the_saga_which_completes() {
    let app = spawn_app().await;
    app.double.configure_webhooks(webhooks_to(&app));
    let (id, pi) = parked_3ds_booking(&app, "3ds-1").await;

    app.double.authenticate(&pi).unwrap();
    // Only the webhook can wake it: the deadline is 10 minutes away.
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let woke = double_event(&app, "payment_intent.amount_capturable_updated", &pi);
    let row = inbox_final(&app, woke["id"].as_str().unwrap()).await;
    assert_eq!(row.status, "processed");
    assert_eq!(row.saga_id, Some(id));
    // Whichever of this PaymentIntent's events is processed first after the authentication sees
    // its current state (requires_capture) and wakes the saga; the others find it running.
    let woken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_events WHERE saga_id = $1 AND outcome LIKE '%woke the saga%'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(woken, 1, "exactly one event woke the saga ({row:?})");

    // Capture's payment_intent.succeeded becomes PaymentReceived, caused by that Stripe event.
    let succeeded = double_event(&app, "payment_intent.succeeded", &pi);
    let received = eventually("PaymentReceived", || async {
        let e = events_of(&app, id, "PaymentReceived").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0["amount"], 45000);
    assert_eq!(received[0].1["causation_id"], succeeded["id"]);
    assert_eq!(app.payment_intents_of(id)[0].effects.captures, 1);
}

#[tokio::test]
async fn three_d_secure_without_webhook_hits_the_deadline_and_compensates() {
    let mut def = crate::harness::booking_definition();
    def.steps[1].params = json!({ "action_deadline": "1s" });
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    let (id, pi) = parked_3ds_booking(&app, "3ds-2").await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["reason"], "authentication_timeout");
    let record = app.double.payment_intent(&pi).unwrap();
    assert_eq!(record.status, "canceled", "the PaymentIntent is voided");
    let claim: String =
        sqlx::query_scalar("SELECT status FROM inventory_claims WHERE saga_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(claim, "released");
}

#[tokio::test]
async fn failed_authentication_webhook_compensates() {
    let app = spawn_app().await;
    app.double.configure_webhooks(webhooks_to(&app));
    let (id, pi) = parked_3ds_booking(&app, "3ds-3").await;
    app.double.fail_authentication(&pi).unwrap();
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert!(
        v["failure"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("payment_failed"),
        "{v:#}"
    );
    assert_eq!(app.double.payment_intent(&pi).unwrap().status, "canceled");
}

#[tokio::test]
async fn the_same_event_delivered_five_times_concurrently_is_processed_once() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("dup-1", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "completed");
    let pi = app.payment_intents_of(id)[0].id.clone();
    app.double.configure_webhooks(WebhookTarget {
        duplicate: 4,
        ..webhooks_to(&app)
    });
    let dispute = app.double.open_dispute(&pi, "fraudulent").unwrap();
    let evt = eventually("five deliveries", || async {
        let d = app.double.webhook_deliveries();
        (d.len() >= 5).then(|| d[0].event_id.clone())
    })
    .await;
    let deliveries = app.double.webhook_deliveries();
    assert_eq!(deliveries.len(), 5, "{deliveries:?}");
    assert!(
        deliveries
            .iter()
            .all(|d| d.status == 200 && d.event_id == evt),
        "{deliveries:?}"
    );
    let row = inbox_final(&app, &evt).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.deliveries),
        ("processed", 1, 5),
        "{row:?}"
    );
    let opened = events_of(&app, id, "DisputeOpened").await;
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].0["dispute_id"], dispute.as_str());
    assert_eq!(opened[0].1["causation_id"], evt.as_str());

    app.double.close_dispute(&dispute, "won").unwrap();
    let closed = eventually("DisputeClosed", || async {
        let e = events_of(&app, id, "DisputeClosed").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(closed[0].0["status"], "won");
}

#[tokio::test]
async fn succeeded_before_capturable_updated_still_yields_the_right_final_state() {
    let app = spawn_app().await;
    // The double sends nothing by itself here: the test delivers, in the wrong order.
    app.double.configure_webhooks(WebhookTarget {
        types: vec!["payment_intent.succeeded".into()],
        ..webhooks_to(&app)
    });
    let (id, pi) = parked_3ds_booking(&app, "ooo-1").await;
    app.double.authenticate(&pi).unwrap();
    let capturable = double_event(&app, "payment_intent.amount_capturable_updated", &pi);

    // A `payment_intent.succeeded` that claims more than is true yet arrives first.
    let mut early = capturable.clone();
    early["id"] = json!(format!("evt_early_{}", Uuid::new_v4().simple()));
    early["type"] = json!("payment_intent.succeeded");
    early["data"]["object"]["status"] = json!("succeeded");
    assert_eq!(app.double.send_webhook(&early).await.unwrap(), 200);

    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let early_row = inbox_final(&app, early["id"].as_str().unwrap()).await;
    assert!(
        early_row
            .outcome
            .as_deref()
            .unwrap()
            .contains("not succeeded"),
        "{early_row:?}"
    );

    // The authorization event arrives last: acknowledged, no effect on the finished saga.
    assert_eq!(app.double.send_webhook(&capturable).await.unwrap(), 200);
    let late = inbox_final(&app, capturable["id"].as_str().unwrap()).await;
    assert_eq!(late.status, "processed", "{late:?}");

    // Exactly one PaymentReceived, caused by the real succeeded event (sent by the double after capture).
    let real = double_event(&app, "payment_intent.succeeded", &pi);
    let received = eventually("PaymentReceived", || async {
        let e = events_of(&app, id, "PaymentReceived").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].1["causation_id"], real["id"]);
    let record = app.double.payment_intent(&pi).unwrap();
    assert_eq!(
        (record.status.as_str(), record.effects.captures),
        ("succeeded", 1)
    );
}

#[tokio::test]
async fn refunds_are_recorded_as_deltas_without_duplicating_our_own() {
    let app = spawn_app().await;
    app.double.configure_webhooks(webhooks_to(&app));
    let id = app
        .start_booking(booking_input("refund-1", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "completed");
    let pi = app.payment_intents_of(id)[0].id.clone();

    // A refund made outside sagad (the dashboard): recorded from Stripe's charge.refunded.
    let client =
        sagad::stripe::client::StripeClient::new("sk_test_outside", Some(&app.double.base_url()))
            .unwrap();
    client.refund(&pi, "dashboard-refund-1").await.unwrap();
    let refunded = double_event(&app, "charge.refunded", &pi);
    let row = inbox_final(&app, refunded["id"].as_str().unwrap()).await;
    assert_eq!(row.status, "processed", "{row:?}");
    let refunds = events_of(&app, id, "PaymentRefunded").await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].0["amount"], 45000);
    assert_eq!(refunds[0].1["causation_id"], refunded["id"]);

    // The same cumulative amount again (a redelivery under a new id) records nothing more.
    let mut again = refunded.clone();
    again["id"] = json!(format!("evt_again_{}", Uuid::new_v4().simple()));
    assert_eq!(app.double.send_webhook(&again).await.unwrap(), 200);
    let row = inbox_final(&app, again["id"].as_str().unwrap()).await;
    assert!(
        row.outcome.as_deref().unwrap().contains("already recorded"),
        "{row:?}"
    );
    assert_eq!(events_of(&app, id, "PaymentRefunded").await.len(), 1);
}

#[tokio::test]
async fn unknown_types_and_payment_intents_are_kept_not_dropped() {
    let app = spawn_app().await;
    app.double.configure_webhooks(webhooks_to(&app));
    let t = now();
    let body = event_body(
        "evt_unknown_type",
        "customer.created",
        json!({"id": "cus_1"}),
    );
    let (status, _) = post_webhook(
        &app,
        Some(format!(
            "t={t},v1={}",
            signature(STRIPE_WEBHOOK_SECRET, t, &body)
        )),
        body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        inbox(&app, "evt_unknown_type").await.unwrap().status,
        "ignored"
    );

    // A PaymentIntent Stripe has but no saga of ours knows (its saga_id metadata claims one).
    let client =
        sagad::stripe::client::StripeClient::new("sk_test_outside", Some(&app.double.base_url()))
            .unwrap();
    let stranger = client
        .authorize(
            &sagad::stripe::client::AuthorizeRequest {
                amount: 1000,
                currency: "eur".into(),
                payment_method: "pm_card_visa".into(),
                metadata: vec![("saga_id".into(), Uuid::new_v4().to_string())],
                description: None,
            },
            "stranger-1",
        )
        .await
        .unwrap();
    let evt = double_event(
        &app,
        "payment_intent.amount_capturable_updated",
        &stranger.id,
    );
    let evt_id = evt["id"].as_str().unwrap();
    let row = inbox_final(&app, evt_id).await;
    assert_eq!(row.status, "unmatched", "{row:?}");
    assert!(
        row.outcome.as_deref().unwrap().contains("no saga"),
        "{row:?}"
    );

    // Operators see it and can reprocess it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["stripe", "events", "list", "--status", "unmatched"])
        .env("DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(evt_id));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["stripe", "events", "reprocess", evt_id])
        .env("DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = eventually("reprocessed", || async {
        inbox(&app, evt_id)
            .await
            .filter(|r| r.status == "unmatched" && r.attempts == 1 && r.outcome.is_some())
    })
    .await;
    assert_eq!(row.deliveries, 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["stripe", "events", "reprocess", "evt_unknown_type_nope"])
        .env("DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_processed_after_restart() {
    let app = spawn_app().await;
    let (id, pi) = parked_3ds_booking(&app, "crash-1").await;
    let (pool, db_url, double, notify) = (
        app.pool.clone(),
        app.db_url.clone(),
        app.double.clone(),
        app.notify.clone(),
    );
    app.stop().await;

    // An API-only process takes the webhook in; nothing processes it there.
    let api = spawn_instance(
        pool.clone(),
        db_url.clone(),
        double.clone(),
        notify.clone(),
        AppOptions {
            role: Role::Api,
            ..Default::default()
        },
    )
    .await;
    double.configure_webhooks(webhooks_to(&api));
    double.authenticate(&pi).unwrap();
    let evt = double_event(&api, "payment_intent.amount_capturable_updated", &pi);
    let evt_id = evt["id"].as_str().unwrap().to_owned();
    let row = eventually("stored", || async { inbox(&api, &evt_id).await }).await;
    assert_eq!(row.status, "pending");
    // As if a worker had claimed it and died mid-processing.
    sqlx::query("UPDATE stripe_events SET status = 'processing', locked_by = 'dead-worker', attempts = 1, locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(&evt_id)
        .execute(&pool)
        .await
        .unwrap();
    api.stop().await;
    let status: String = sqlx::query_scalar("SELECT status FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        status, "waiting",
        "nothing processed the event before the restart"
    );

    let restarted = spawn_instance(pool, db_url, double, notify, AppOptions::default()).await;
    let v = restarted.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let row = inbox_final(&restarted, &evt_id).await;
    assert_eq!(
        (row.status.as_str(), row.saga_id),
        ("processed", Some(id)),
        "{row:?}"
    );
}

/// Waits until the inbox has put charge.refunded `evt_id` back for the saga to finish
/// compensating, in a claim that began after its `next_attempt_at` was `after` (`None`: any).
/// Returns the row's new `next_attempt_at` and reason.
async fn deferred_after(
    app: &TestApp,
    evt_id: &str,
    after: Option<chrono::DateTime<chrono::Utc>>,
) -> (chrono::DateTime<chrono::Utc>, String) {
    eventually("the inbox to defer charge.refunded", || async {
        sqlx::query_as(
            "SELECT next_attempt_at, last_error FROM stripe_events
             WHERE id = $1 AND status = 'pending' AND last_error LIKE 'the saga is compensating%'
               AND ($2::timestamptz IS NULL OR next_attempt_at > $2)",
        )
        .bind(evt_id)
        .bind(after)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await
}

/// Stripe's `charge.refunded` for a refund whose response sagad lost arrives while the refund
/// call is in flight and again while the refund's compensation waits for its retry: the inbox
/// defers it, the retry (same key) records the refund once, and the event then finds it recorded.
#[tokio::test]
async fn our_own_refund_is_not_recorded_twice_when_its_response_was_lost() {
    use stripe_double::{AttemptOutcome, Fault, Operation};
    // The refund's retry waits for the test to make it due, so the webhook is taken in first.
    let mut def = crate::harness::booking_definition();
    def.compensation_retry.base_delay = Duration::from_secs(600);
    def.compensation_retry.max_delay = Duration::from_secs(600);
    def.compensation_retry.jitter = 0.0;
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    app.double.configure_webhooks(webhooks_to(&app));
    // The notification fails for good, so the saga refunds; the first refund's answer is lost
    // after Stripe refunded, and comes late: Stripe's webhook is sent when the refund happens,
    // so it reaches the inbox while the refund call is still in flight (as on a loaded machine).
    app.notify.answer(503);
    app.double.inject(Fault::lose_response(Operation::Refund));
    app.double
        .inject(Fault::latency(Operation::Refund, Duration::from_secs(1)));
    let id = app
        .start_booking(booking_input("refund-race", "pm_card_visa"))
        .await;
    let pi = eventually("the saga's PaymentIntent", || async {
        app.payment_intents_of(id).first().map(|p| p.id.clone())
    })
    .await;
    let refunded = eventually("Stripe's charge.refunded", || async {
        app.double
            .stripe_events()
            .into_iter()
            .find(|e| e["type"] == "charge.refunded" && e["data"]["object"]["payment_intent"] == pi)
    })
    .await;
    let evt_id = refunded["id"].as_str().unwrap().to_owned();

    // The refund's first attempt has failed and its retry is scheduled, committed together: the
    // saga is idle until then. Before that commit the step may still be in flight, and the commit
    // would set the very retry time this test moves below.
    let refund_attempts: i32 = eventually("the refund's first attempt to fail", || async {
        sqlx::query_scalar(
            "SELECT st.attempts FROM sagas s JOIN saga_steps st ON st.saga_id = s.id
             WHERE s.id = $1 AND s.status = 'compensating' AND s.locked_by IS NULL
               AND s.next_run_at > now() + interval '1 minute'
               AND st.phase = 'compensation' AND st.step_name = 'payment.refund'",
        )
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(refund_attempts, 1);
    // The inbox looks at the event while the saga waits for the retry, and defers it: a
    // deferral seen here may have been decided while the call was in flight (its row update
    // can land just after the step's commit), so two are awaited, the second claimed after the
    // first was written.
    let before: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT next_attempt_at FROM stripe_events WHERE id = $1")
            .bind(&evt_id)
            .fetch_optional(&app.pool)
            .await
            .unwrap();
    let (first, _) = deferred_after(&app, &evt_id, before).await;
    let (_, reason) = deferred_after(&app, &evt_id, Some(first)).await;
    assert!(reason.contains("the refund may be ours"), "{reason}");
    assert!(
        events_of(&app, id, "PaymentRefunded").await.is_empty(),
        "nothing recorded the refund yet"
    );

    // Now the retry.
    let moved = sqlx::query(
        "UPDATE sagas SET next_run_at = now()
         WHERE id = $1 AND status = 'compensating' AND locked_by IS NULL",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(moved, 1, "the saga waits for its refund's retry");
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    let row = inbox_final(&app, &evt_id).await;
    assert_eq!(row.status, "processed", "{row:?}");
    assert!(
        row.outcome
            .as_deref()
            .unwrap_or("")
            .contains("already recorded"),
        "{row:?}"
    );
    let refunds = events_of(&app, id, "PaymentRefunded").await;
    assert_eq!(refunds.len(), 1, "one refund, recorded once ({row:?})");
    assert_ne!(
        refunds[0].1["causation_id"], refunded["id"],
        "recorded by the compensation, not the event"
    );
    assert_eq!(app.payment_intents_of(id)[0].effects.refunds, 1);
    // Both refund calls carried the one key, and the second was answered from Stripe's record.
    let key = Some(format!("sagad:{id}:refund"));
    let attempts: Vec<_> = app
        .double
        .attempts_on(&pi)
        .into_iter()
        .filter(|a| a.operation != Operation::Cancel)
        .map(|a| (a.operation, a.idempotency_key, a.outcome))
        .collect();
    assert_eq!(
        attempts,
        [
            (
                Operation::Capture,
                Some(format!("sagad:{id}:capture")),
                AttemptOutcome::Performed
            ),
            (Operation::Refund, key.clone(), AttemptOutcome::Performed),
            (Operation::Refund, key, AttemptOutcome::Replayed),
        ]
    );
}
