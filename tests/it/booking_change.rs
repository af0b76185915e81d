//! Date and price changes: the `booking_change` saga against real PostgreSQL and the Stripe double.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{TestApp, booking_input, count, future_day, spawn_app};

fn stay(listing: &str, a: u64, b: u64, amount: i64, pm: &str) -> Value {
    let mut input = booking_input(listing, pm);
    input["check_in"] = json!(future_day(a));
    input["check_out"] = json!(future_day(b));
    input["amount"] = json!(amount);
    input
}

async fn confirmed_booking(app: &TestApp, listing: &str, a: u64, b: u64, amount: i64) -> Uuid {
    let id = app
        .start_booking(stay(listing, a, b, amount, "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "completed");
    id
}

async fn post_change(app: &TestApp, booking: Uuid, body: Value) -> (u16, Value) {
    let resp = app
        .post(&format!("/v1/bookings/{booking}/change"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn change_body(a: u64, b: u64, amount: i64) -> Value {
    json!({"check_in": future_day(a), "check_out": future_day(b), "amount": amount})
}

/// Starts a change and waits for its saga to end; returns (change saga id, its final view).
async fn change(app: &TestApp, booking: Uuid, body: Value) -> (Uuid, Value) {
    let (status, started) = post_change(app, booking, body).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["saga"], "booking_change", "{started}");
    let id: Uuid = started["id"].as_str().unwrap().parse().unwrap();
    (id, app.wait_terminal(id).await)
}

/// The listing's ranges over nights `a..b`, as (from, to, state, booking_id).
async fn availability(
    app: &TestApp,
    listing: &str,
    a: u64,
    b: u64,
) -> Vec<(String, String, String, Value)> {
    let v = app
        .get_json(&format!(
            "/v1/listings/{listing}/availability?from={}&to={}",
            future_day(a),
            future_day(b)
        ))
        .await;
    v["ranges"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().to_owned(),
                r["to"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
                r["booking_id"].clone(),
            )
        })
        .collect()
}

fn range(a: u64, b: u64, state: &str, booking: Option<Uuid>) -> (String, String, String, Value) {
    (
        future_day(a),
        future_day(b),
        state.to_owned(),
        booking.map_or(Value::Null, |b| json!(b.to_string())),
    )
}

async fn booking(app: &TestApp, id: Uuid) -> Value {
    app.get_json(&format!("/v1/bookings/{id}")).await
}

fn dates_and_amount(b: &Value) -> (String, String, i64, String) {
    (
        b["check_in"].as_str().unwrap().to_owned(),
        b["check_out"].as_str().unwrap().to_owned(),
        b["amount"].as_i64().unwrap(),
        b["status"].as_str().unwrap().to_owned(),
    )
}

/// The bookings projection folds again from the events to the rows the live path wrote.
async fn projections_verify(app: &TestApp) {
    let verified = sagad::projections::verify(
        &app.pool,
        sagad::projections::Projection::Bookings,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(verified.drift.is_empty(), "{:?}", verified.drift);
}

#[tokio::test]
async fn a_higher_price_on_free_dates_charges_the_difference_once_then_swaps_the_nights() {
    let app = spawn_app().await;
    let id = confirmed_booking(&app, "chalet", 0, 3, 45000).await;
    let original_pi = app.payment_intents_of(id);
    assert_eq!(original_pi.len(), 1);

    // One night more, overlapping the old stay: held beside it, then swapped onto.
    let (change_id, saga) = change(&app, id, change_body(1, 5, 60000)).await;
    assert_eq!(saga["status"], "completed", "{saga:#}");

    // The difference, as its own PaymentIntent, authorized and captured once.
    let pis = app.payment_intents_of(change_id);
    assert_eq!(pis.len(), 1, "{pis:?}");
    assert_eq!(pis[0].amount, 15000);
    assert_eq!(pis[0].amount_received, 15000);
    assert_eq!(
        (pis[0].effects.authorizations, pis[0].effects.captures),
        (1, 1)
    );
    assert_eq!(pis[0].effects.refunds, 0);
    // The booking's own PaymentIntent is untouched.
    let before = &original_pi[0];
    let after = app.double.payment_intent(&before.id).unwrap();
    assert_eq!((after.amount_received, after.amount_refunded), (45000, 0));

    let b = booking(&app, id).await;
    assert_eq!(
        dates_and_amount(&b),
        (future_day(1), future_day(5), 60000, "confirmed".into()),
        "{b:#}"
    );
    let types: Vec<&str> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.last(), Some(&"BookingChanged"), "{types:?}");
    // The old first night is free; the new nights are the booking's.
    assert_eq!(
        availability(&app, "chalet", 0, 6).await,
        [
            range(0, 1, "free", None),
            range(1, 5, "booked", Some(id)),
            range(5, 6, "free", None),
        ]
    );
    assert_eq!(app.active_claims().await, 1);
    let other = app
        .start_booking(stay("chalet", 0, 1, 9000, "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(other).await["status"], "completed");
    projections_verify(&app).await;
}

#[tokio::test]
async fn a_change_to_taken_dates_leaves_the_booking_intact_and_charges_nothing() {
    let app = spawn_app().await;
    let id = confirmed_booking(&app, "barn", 0, 3, 45000).await;
    let neighbour = confirmed_booking(&app, "barn", 5, 8, 30000).await;
    let intents_before = app.double.payment_intents().len();

    let (change_id, saga) = change(&app, id, change_body(4, 7, 70000)).await;
    assert_eq!(saga["status"], "compensated", "{saga:#}");
    assert_eq!(saga["failure"]["reason"], "dates_unavailable", "{saga:#}");
    assert!(app.payment_intents_of(change_id).is_empty());
    assert_eq!(app.double.payment_intents().len(), intents_before);

    let b = booking(&app, id).await;
    assert_eq!(
        dates_and_amount(&b),
        (future_day(0), future_day(3), 45000, "confirmed".into()),
        "{b:#}"
    );
    assert_eq!(
        availability(&app, "barn", 0, 8).await,
        [
            range(0, 3, "booked", Some(id)),
            range(3, 5, "free", None),
            range(5, 8, "booked", Some(neighbour)),
        ]
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM inventory_claims WHERE status <> 'active'"
        )
        .await,
        0,
        "nothing was released"
    );
    projections_verify(&app).await;
}

#[tokio::test]
async fn a_declined_difference_leaves_the_booking_intact() {
    let app = spawn_app().await;
    let id = confirmed_booking(&app, "yurt", 0, 3, 45000).await;
    let mut body = change_body(10, 14, 52000);
    body["payment_method"] = json!("pm_card_chargeDeclined");
    let (change_id, saga) = change(&app, id, body).await;
    assert_eq!(saga["status"], "compensated", "{saga:#}");
    assert!(
        saga["failure"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("card_declined"),
        "{saga:#}"
    );
    for pi in app.payment_intents_of(change_id) {
        assert_eq!(pi.amount_received, 0, "{pi:?}");
    }
    let b = booking(&app, id).await;
    assert_eq!(
        dates_and_amount(&b),
        (future_day(0), future_day(3), 45000, "confirmed".into()),
        "{b:#}"
    );
    assert_eq!(
        availability(&app, "yurt", 0, 14).await,
        [range(0, 3, "booked", Some(id)), range(3, 14, "free", None)]
    );
    projections_verify(&app).await;
}

#[tokio::test]
async fn a_lower_price_refunds_the_difference_once() {
    let app = spawn_app().await;
    let id = confirmed_booking(&app, "hut", 0, 4, 48000).await;
    let (change_id, saga) = change(&app, id, change_body(0, 3, 36000)).await;
    assert_eq!(saga["status"], "completed", "{saga:#}");
    assert!(
        app.payment_intents_of(change_id).is_empty(),
        "nothing charged"
    );
    let pis = app.payment_intents_of(id);
    assert_eq!(pis.len(), 1);
    assert_eq!(pis[0].effects.refunds, 1, "{:?}", pis[0]);
    assert_eq!(pis[0].amount_refunded, 12000);
    let refunds: Vec<_> = app
        .double
        .requests()
        .into_iter()
        .filter(|r| r.operation == Some(stripe_double::Operation::Refund))
        .collect();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(
        refunds[0].idempotency_key.as_deref(),
        Some(format!("sagad:{change_id}:refund_difference").as_str())
    );
    let b = booking(&app, id).await;
    assert_eq!(
        dates_and_amount(&b),
        (future_day(0), future_day(3), 36000, "confirmed".into()),
        "{b:#}"
    );
    assert_eq!(
        availability(&app, "hut", 0, 4).await,
        [range(0, 3, "booked", Some(id)), range(3, 4, "free", None)]
    );
    projections_verify(&app).await;
}

#[tokio::test]
async fn bad_change_requests_get_a_precise_4xx_and_write_nothing() {
    let app = spawn_app().await;
    let id = confirmed_booking(&app, "loft", 0, 3, 45000).await;
    let failed = app
        .start_booking(stay("loft", 1, 2, 1000, "pm_card_chargeDeclined"))
        .await;
    assert_eq!(app.wait_terminal(failed).await["status"], "compensated");
    let written = async || {
        (
            count(&app.pool, "SELECT count(*) FROM sagas").await,
            count(&app.pool, "SELECT count(*) FROM events").await,
            count(&app.pool, "SELECT count(*) FROM inventory_claims").await,
        )
    };
    let before = written().await;

    let resp = app
        .post(&format!("/v1/bookings/{id}/change"))
        .header("content-type", "application/json")
        .body("{\"check_in\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, _) = post_change(&app, id, json!([1, 2])).await;
    assert_eq!(status, 422);
    let (status, _) = post_change(&app, Uuid::now_v7(), change_body(5, 8, 1000)).await;
    assert_eq!(status, 404);
    let resp = app
        .post("/v1/bookings/not-a-uuid/change")
        .json(&change_body(5, 8, 1000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let past = (chrono::Utc::now().date_naive() - chrono::Days::new(3)).to_string();
    let (status, err) = post_change(
        &app,
        id,
        json!({"check_in": past, "check_out": past, "amount": 0}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    let fields: Vec<&str> = err["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["check_in", "check_out", "amount"], "{err}");
    let (status, err) = post_change(&app, id, json!({"check_in": future_day(5)})).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["fields"].as_array().unwrap().len(), 2, "{err}");
    let mut body = change_body(5, 8, 1000);
    body["nights"] = json!(3);
    let (status, _) = post_change(&app, id, body).await;
    assert_eq!(status, 422);
    let (status, err) = post_change(&app, id, change_body(0, 3, 45000)).await;
    assert_eq!(status, 422, "nothing to change: {err}");

    // Only a confirmed booking can be changed.
    let (status, err) = post_change(&app, failed, change_body(5, 8, 1000)).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(written().await, before, "a refused request writes nothing");
}

/// A second change of a booking while one is under way is refused by the database's guard.
#[tokio::test]
async fn one_change_at_a_time() {
    use sagad::config::Role;
    let app = spawn_app().await;
    let id = confirmed_booking(&app, "mill", 0, 3, 45000).await;
    let (pool, db_url, double, notify) = (
        app.pool.clone(),
        app.db_url.clone(),
        app.double.clone(),
        app.notify.clone(),
    );
    app.stop().await;
    // No workers: the first change stays under way.
    let api = crate::harness::spawn_instance(
        pool,
        db_url,
        double,
        notify,
        crate::harness::AppOptions {
            role: Role::Api,
            ..crate::harness::AppOptions::default()
        },
    )
    .await;
    let (status, first) = post_change(&api, id, change_body(10, 12, 50000)).await;
    assert_eq!(status, 202, "{first}");
    let sagas = count(&api.pool, "SELECT count(*) FROM sagas").await;
    let (status, err) = post_change(&api, id, change_body(20, 22, 50000)).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already under way"),
        "{err}"
    );
    assert_eq!(count(&api.pool, "SELECT count(*) FROM sagas").await, sagas);
}

/// A completed change is not undone by cancelling its saga: the booking has its new nights, so
/// refunding what the change charged would leave them paid at the old price.
#[tokio::test]
async fn a_completed_change_cannot_be_cancelled() {
    let app = spawn_app().await;
    let id = confirmed_booking(&app, "croft", 0, 3, 45000).await;
    let (change_id, saga) = change(&app, id, change_body(1, 5, 60000)).await;
    assert_eq!(saga["status"], "completed", "{saga:#}");
    let events = count(&app.pool, "SELECT count(*) FROM events").await;

    for by in ["guest", "host", "operator"] {
        let resp = app
            .post(&format!("/v1/sagas/{change_id}/cancel"))
            .json(&json!({"by": by, "reason": "changed my mind"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 409, "{by}: {body}");
    }
    assert_eq!(app.wait_terminal(change_id).await["status"], "completed");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM events").await,
        events
    );
    let pis = app.payment_intents_of(change_id);
    assert_eq!((pis[0].amount_received, pis[0].amount_refunded), (15000, 0));
    let b = booking(&app, id).await;
    assert_eq!(
        dates_and_amount(&b),
        (future_day(1), future_day(5), 60000, "confirmed".into()),
        "{b:#}"
    );
}

/// Before its swap a change can be cancelled: the booking stays as it was and the difference is
/// voided. Once swapped, a change still running (its notification being retried) cannot.
#[tokio::test]
async fn a_change_is_cancelled_only_before_its_swap() {
    let mut change_def = crate::harness::change_definition();
    let notify = change_def
        .steps
        .iter_mut()
        .find(|s| s.name == "notify")
        .unwrap();
    notify.give_up_after = Some(std::time::Duration::from_secs(60));
    let app = crate::harness::spawn_app_with(crate::harness::AppOptions {
        definitions: vec![crate::harness::booking_definition(), change_def],
        ..Default::default()
    })
    .await;
    let id = confirmed_booking(&app, "byre", 0, 3, 45000).await;
    let cancel = async |saga: Uuid| {
        let resp = app
            .post(&format!("/v1/sagas/{saga}/cancel"))
            .json(&json!({"by": "guest", "reason": "changed my mind"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    };

    // The difference waits for 3-D Secure: nothing swapped yet.
    let mut body = change_body(1, 5, 60000);
    body["payment_method"] = json!("pm_card_threeDSecure2Required");
    let (status, started) = post_change(&app, id, body).await;
    assert_eq!(status, 202, "{started}");
    let first: Uuid = started["id"].as_str().unwrap().parse().unwrap();
    app.wait_status(first, &["waiting"]).await;
    let (status, v) = cancel(first).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(app.wait_terminal(first).await["status"], "compensated");
    let pis = app.payment_intents_of(first);
    assert_eq!(pis.len(), 1);
    assert_eq!(
        (pis[0].status.as_str(), pis[0].amount_received),
        ("canceled", 0)
    );
    assert_eq!(
        dates_and_amount(&booking(&app, id).await),
        (future_day(0), future_day(3), 45000, "confirmed".into())
    );

    // Swapped; the guest's notification is being retried.
    app.notify.answer(503);
    let (status, started) = post_change(&app, id, change_body(1, 5, 60000)).await;
    assert_eq!(status, 202, "{started}");
    let second: Uuid = started["id"].as_str().unwrap().parse().unwrap();
    crate::harness::eventually("the swap, then a refused notification", || async {
        app.notify
            .hits()
            .iter()
            .any(|h| h.status == 503 && h.json()["saga_id"] == json!(second.to_string()))
            .then_some(())
    })
    .await;
    assert_eq!(booking(&app, id).await["check_in"], json!(future_day(1)));
    let (status, err) = cancel(second).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from step `refund_difference` on"),
        "{err}"
    );
    let requested: bool = sqlx::query_scalar("SELECT cancel_requested FROM sagas WHERE id = $1")
        .bind(second)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!requested, "nothing recorded");
    app.notify.answer(200);
    assert_eq!(app.wait_terminal(second).await["status"], "completed");
    let types = app.event_types(second).await;
    assert!(
        !types
            .iter()
            .any(|t| t.contains("Cancel") || t.contains("Compensation")),
        "{types:?}"
    );
    let pis = app.payment_intents_of(second);
    assert_eq!((pis[0].amount_received, pis[0].amount_refunded), (15000, 0));
    assert_eq!(
        dates_and_amount(&booking(&app, id).await),
        (future_day(1), future_day(5), 60000, "confirmed".into())
    );
}
