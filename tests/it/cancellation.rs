//! Cancellations: who cancels (guest, host, operator) with a reason, a guest's refund by the
//! listing's cancellation policy and the days before check-in, one refund however many requests,
//! bad input that writes nothing, and `BookingCancelled` events of schema version 1 (as an older
//! sagad stored them) read as version 2 everywhere events are read.

use chrono::NaiveDate;
use sagad_test_support::Receiver;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{OPS_TOKEN, TestApp, eventually, spawn_app};

const PRICE: i64 = 45000;

/// The database's current date (UTC): what a cancellation's days before check-in count from.
async fn db_today(app: &TestApp) -> NaiveDate {
    sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn stay(listing: &str, check_in: NaiveDate, policy: &str) -> Value {
    json!({ "listing_id": listing, "guest_id": "guest-7", "check_in": check_in.to_string(),
            "check_out": (check_in + chrono::Days::new(2)).to_string(), "amount": PRICE,
            "currency": "EUR", "payment_method": "pm_card_visa", "cancellation_policy": policy })
}

/// Starts a booking checking in `days` after the database's today and waits until it completed.
async fn confirmed(app: &TestApp, listing: &str, days: u64, policy: &str) -> Uuid {
    let check_in = db_today(app).await + chrono::Days::new(days);
    let id = app.start_booking(stay(listing, check_in, policy)).await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    id
}

async fn cancel(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let resp = app.post(path).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// What the Stripe double refunded on the booking's one PaymentIntent, checked against what it
/// captured.
fn refunded_at_the_double(app: &TestApp, id: Uuid) -> (i64, u32) {
    let pis = app.payment_intents_of(id);
    assert_eq!(pis.len(), 1, "{pis:?}");
    let pi = &pis[0];
    assert!(
        pi.effects.refunded_amount <= pi.amount_received,
        "refunded more than captured: {pi:?}"
    );
    (pi.effects.refunded_amount, pi.effects.refunds)
}

async fn events_of(app: &TestApp, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_guest_cancellation_refunds_what_the_policy_allows_by_days_before_check_in() {
    let app = spawn_app().await;
    // (policy, days before check-in, percent refunded) as policies/cancellation.toml has them.
    let cases = [
        ("flexible", 10, 100),
        ("flexible", 5, 100),
        ("flexible", 1, 100),
        ("moderate", 10, 100),
        ("moderate", 5, 100),
        ("moderate", 1, 50),
        ("strict", 10, 50),
        ("strict", 5, 0),
        ("strict", 1, 0),
    ];
    let mut ids = Vec::new();
    for (policy, days, _) in cases {
        ids.push(confirmed(&app, &format!("{policy}-{days}"), days, policy).await);
    }
    for (&id, (policy, days, percent)) in ids.iter().zip(cases) {
        let (status, body) = cancel(
            &app,
            &format!("/v1/sagas/{id}/cancel"),
            json!({ "by": "guest", "reason": "plans changed" }),
        )
        .await;
        assert_eq!(status, 202, "{policy} {days}: {body}");
        let v = app.wait_terminal(id).await;
        assert_eq!(v["status"], "compensated", "{v:#}");
        assert_eq!(v["failure"]["reason"], "cancelled_by_guest");

        let expected = PRICE * percent / 100;
        let (refunded, refunds) = refunded_at_the_double(&app, id);
        assert_eq!(
            (refunded, refunds),
            (expected, u32::from(expected > 0)),
            "{policy}, {days} days before check-in"
        );
        let b = app.get_json(&format!("/v1/bookings/{id}")).await;
        assert_eq!(b["status"], "cancelled", "{b:#}");
        assert_eq!(b["cancel_reason"], "plans changed");
        assert_eq!(b["payments"]["refunded"], expected, "{b:#}");
        let c = &b["cancellation"];
        assert_eq!(
            (c["by"].as_str(), c["actor"].as_str()),
            (Some("guest"), Some("guest"))
        );
        assert_eq!(c["refund"]["amount"], expected, "{c:#}");
        assert_eq!(c["refund"]["percent"], percent, "{c:#}");
        assert_eq!(c["refund"]["policy"], policy, "{c:#}");
        assert_eq!(c["refund"]["days_before_check_in"], days, "{c:#}");
        // The event says the same, at schema version 2.
        let events = app.get_json(&format!("/v1/sagas/{id}/events")).await;
        let cancelled: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == "BookingCancelled")
            .collect();
        assert_eq!(cancelled.len(), 1, "{events:#}");
        assert_eq!(cancelled[0]["schema_version"], 2);
        assert_eq!(cancelled[0]["payload"]["refund"], c["refund"]);
    }
}

#[tokio::test]
async fn a_host_or_an_operator_cancellation_refunds_in_full_whatever_the_policy() {
    let app = spawn_app().await;
    let host = confirmed(&app, "strict-host", 1, "strict").await;
    let (status, _) = cancel(
        &app,
        &format!("/v1/sagas/{host}/cancel"),
        json!({ "by": "host", "reason": "double-booked elsewhere" }),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(app.wait_terminal(host).await["status"], "compensated");
    assert_eq!(refunded_at_the_double(&app, host), (PRICE, 1));
    let b = app.get_json(&format!("/v1/bookings/{host}")).await;
    assert_eq!(b["cancellation"]["by"], "host", "{b:#}");
    assert_eq!(b["cancellation"]["actor"], "host");
    assert_eq!(b["cancellation"]["refund"]["percent"], 100);
    assert_eq!(b["cancellation"]["refund"]["policy"], Value::Null);

    // An operator, through the bookings route, with the ops token: its name is the actor.
    let op = confirmed(&app, "strict-op", 1, "strict").await;
    let resp = app
        .http
        .post(format!("{}/v1/bookings/{op}/cancel", app.base))
        .bearer_auth(OPS_TOKEN)
        .json(&json!({ "by": "operator", "reason": "listing removed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["saga_id"], op.to_string(), "{body:#}");
    assert_eq!(app.wait_terminal(op).await["status"], "compensated");
    assert_eq!(refunded_at_the_double(&app, op), (PRICE, 1));
    let b = app.get_json(&format!("/v1/bookings/{op}")).await;
    assert_eq!(b["cancellation"]["by"], "operator", "{b:#}");
    assert_eq!(b["cancellation"]["actor"], "ops");
    assert_eq!(b["cancel_reason"], "listing removed");
}

#[tokio::test]
async fn concurrent_cancellations_of_one_booking_make_one_cancellation_and_one_refund() {
    let app = spawn_app().await;
    let id = confirmed(&app, "moderate-race", 1, "moderate").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let by = ["guest", "host", "operator"][i % 3];
        let req = app
            .post(&format!(
                "/v1/{}/{id}/cancel",
                if i % 2 == 0 { "sagas" } else { "bookings" }
            ))
            .json(&json!({ "by": by, "reason": format!("request {i}") }));
        tasks.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    let mut statuses = Vec::new();
    while let Some(s) = tasks.join_next().await {
        statuses.push(s.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&s| s == 202 || s == 409),
        "{statuses:?}"
    );
    assert_eq!(app.wait_terminal(id).await["status"], "compensated");
    let (refunded, refunds) = refunded_at_the_double(&app, id);
    assert_eq!(refunds, 1);
    let b = app.get_json(&format!("/v1/bookings/{id}")).await;
    assert_eq!(b["cancellation"]["refund"]["amount"], refunded, "{b:#}");
    let cancelled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'BookingCancelled'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(cancelled, 1);
    // Every refund request to the double carried the one stable key.
    let pi = &app.payment_intents_of(id)[0].id;
    let keys: std::collections::BTreeSet<String> = app
        .double
        .attempts_on(pi)
        .into_iter()
        .filter(|a| a.operation == stripe_double::Operation::Refund)
        .map(|a| a.idempotency_key.unwrap_or_default())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn bad_cancellations_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let id = confirmed(&app, "bad-cancel", 10, "moderate").await;
    let before = events_of(&app, id).await;
    let untouched = || async {
        let (requested, cancellation): (bool, Option<Value>) =
            sqlx::query_as("SELECT cancel_requested, cancellation FROM sagas WHERE id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert!(!requested && cancellation.is_none());
        assert_eq!(events_of(&app, id).await, before);
    };
    for route in ["sagas", "bookings"] {
        let path = format!("/v1/{route}/{id}/cancel");
        let resp = app
            .post(&path)
            .header("content-type", "application/json")
            .body("{\"by\": \"guest\",")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{route}: bad JSON");
        for (body, field) in [
            (json!({ "by": "landlord" }), "by"),
            (json!({ "by": 3 }), "by"),
            (json!({ "by": "sagad" }), "by"),
            (json!({ "by": "guest", "reason": "  " }), "reason"),
            (
                json!({ "by": "host", "reason": "x".repeat(1025) }),
                "reason",
            ),
            (json!({ "by": "guest", "refund": 100 }), "body"),
        ] {
            let (status, resp) = cancel(&app, &path, body.clone()).await;
            assert_eq!(status, 422, "{route} {body}: {resp}");
            assert_eq!(resp["error"]["fields"][0]["field"], field, "{resp}");
        }
        untouched().await;
        let unknown = Uuid::now_v7();
        let (status, resp) = cancel(
            &app,
            &format!("/v1/{route}/{unknown}/cancel"),
            json!({ "by": "guest" }),
        )
        .await;
        assert_eq!(status, 404, "{resp}");
        let (status, _) = cancel(&app, &format!("/v1/{route}/nope/cancel"), json!({})).await;
        assert_eq!(status, 400);
    }
    untouched().await;

    let (status, _) = cancel(
        &app,
        &format!("/v1/sagas/{id}/cancel"),
        json!({ "by": "guest" }),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(app.wait_terminal(id).await["status"], "compensated");
    let after = events_of(&app, id).await;
    let b = app.get_json(&format!("/v1/bookings/{id}")).await;
    for route in ["sagas", "bookings"] {
        let (status, resp) = cancel(
            &app,
            &format!("/v1/{route}/{id}/cancel"),
            json!({ "by": "host", "reason": "again" }),
        )
        .await;
        assert_eq!(status, 409, "{route}: {resp}");
    }
    assert_eq!(events_of(&app, id).await, after);
    assert_eq!(
        app.get_json(&format!("/v1/bookings/{id}")).await["cancellation"],
        b["cancellation"]
    );
    assert_eq!(refunded_at_the_double(&app, id), (PRICE, 1));
}

/// Appends, as a sagad before schema versions did, a guest's `BookingCancelled` of schema
/// version 1 to a completed booking, its projection update and its delivery (already delivered)
/// to `endpoint`; returns the delivery's id.
async fn cancel_as_an_older_sagad(app: &TestApp, id: Uuid, endpoint: Uuid) -> Uuid {
    let mut tx = app.pool.begin().await.unwrap();
    let version: i32 = sqlx::query_scalar(
        "UPDATE sagas SET event_version = event_version + 1, status = 'compensated',
                failure_reason = 'cancelled_by_guest', finished_at = now()
         WHERE id = $1 RETURNING event_version",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                             schema_version, payload)
         VALUES ($1, 'booking', $2, $3, 'BookingCancelled', 1, '{\"reason\": \"cancelled_by_guest\"}')",
    )
    .bind(event_id)
    .bind(id)
    .bind(version)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE bookings SET status = 'cancelled', cancel_reason = 'cancelled_by_guest'
         WHERE saga_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let delivery = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, attempts,
                                         delivered_at)
         VALUES ($1, $2, $3, 'booking.cancelled', 'delivered', 1, now())",
    )
    .bind(delivery)
    .bind(endpoint)
    .bind(event_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    delivery
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/webhooks/schemas/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// What a version-1 `BookingCancelled` of a guest reads as.
fn v2_of_a_v1_guest_cancellation() -> Value {
    json!({ "reason": "cancelled_by_guest", "by": "guest", "actor": "guest", "refund": null })
}

#[tokio::test]
async fn booking_cancelled_v1_events_read_as_v2_in_the_api_the_feed_a_rebuild_and_a_redelivery() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": rx.url, "event_types": ["booking.cancelled"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let endpoint: Uuid = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let id = confirmed(&app, "v1-cancel", 30, "moderate").await;
    let delivery = cancel_as_an_older_sagad(&app, id, endpoint).await;
    let v2 = v2_of_a_v1_guest_cancellation();

    // The API: the saga's events and the booking's history.
    let events = app.get_json(&format!("/v1/sagas/{id}/events")).await;
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event_type"], "BookingCancelled");
    assert_eq!(
        (last["schema_version"].clone(), last["payload"].clone()),
        (json!(2), v2.clone())
    );
    let b = app.get_json(&format!("/v1/bookings/{id}")).await;
    let last = b["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["schema_version"].clone(), last["payload"].clone()),
        (json!(2), v2.clone())
    );

    // The feed.
    let found = eventually("the v1 event in the feed", || async {
        let page = app.get_json("/v1/events?types=BookingCancelled").await;
        page["events"].as_array().and_then(|e| {
            e.iter()
                .find(|e| e["aggregate_id"] == id.to_string())
                .cloned()
        })
    })
    .await;
    assert_eq!(
        (found["schema_version"].clone(), found["payload"].clone()),
        (json!(2), v2.clone())
    );

    // A rebuild folds it as version 2: the booking shows who cancelled (the older sagad's row
    // did not have it).
    assert_eq!(b["cancellation"], Value::Null, "{b:#}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["projections", "rebuild", "bookings"])
        .env("DATABASE_URL", &app.db_url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = app.get_json(&format!("/v1/bookings/{id}")).await;
    assert_eq!(b["status"], "cancelled");
    assert_eq!(
        b["cancellation"],
        json!({ "by": "guest", "actor": "guest", "refund": null }),
        "{b:#}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["projections", "verify", "bookings"])
        .env("DATABASE_URL", &app.db_url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A redelivery sends it as version 2, valid against the current schema.
    let resp = app
        .post(&format!("/v1/webhook-deliveries/{delivery}/redeliver"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let hits = rx.wait_hits(1).await;
    let msg = hits[0].json();
    assert_eq!(msg["type"], "booking.cancelled");
    assert_eq!(msg["schema_version"], 2);
    assert_eq!(msg["data"], v2);
    let errors: Vec<String> = schema("booking.cancelled")
        .iter_errors(&msg)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{msg:#}");
    // The old message shape keeps its own schema, which the new one does not pass.
    let example = format!(
        "{}/webhooks/examples/booking.cancelled.v1.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v1: Value = serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    assert!(schema("booking.cancelled.v1").is_valid(&v1));
    assert!(!schema("booking.cancelled").is_valid(&v1));
    assert!(!schema("booking.cancelled.v1").is_valid(&msg));
}

#[tokio::test]
async fn a_stuck_saga_is_cancelled_by_an_operator_only_and_refunds_in_full() {
    let app = spawn_app().await;
    // The notification fails for good, the saga compensates, and the refund keeps failing.
    app.notify.answer(500);
    app.double
        .inject(stripe_double::Fault::server_error(stripe_double::Operation::Refund).times(1000));
    let input = stay(
        "stuck-cancel",
        db_today(&app).await + chrono::Days::new(1),
        "strict",
    );
    let id = app.start_booking(input).await;
    assert_eq!(app.wait_terminal(id).await["status"], "stuck");
    let before = events_of(&app, id).await;
    for by in ["guest", "host"] {
        let (status, body) = cancel(
            &app,
            &format!("/v1/sagas/{id}/cancel"),
            json!({ "by": by, "reason": "stuck" }),
        )
        .await;
        assert_eq!(status, 409, "{by}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("only an operator"),
            "{body}"
        );
    }
    assert_eq!(events_of(&app, id).await, before);

    app.double.clear_faults();
    let resp = app
        .http
        .post(format!("{}/v1/sagas/{id}/cancel", app.base))
        .bearer_auth(OPS_TOKEN)
        .json(&json!({ "by": "operator", "reason": "refund by hand failed, retrying" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(app.wait_terminal(id).await["status"], "compensated");
    // Strict, one day before check-in, but an operator's cancellation: everything back.
    assert_eq!(refunded_at_the_double(&app, id), (PRICE, 1));
    let (cancellation,): (Value,) = sqlx::query_as("SELECT cancellation FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        (
            &cancellation["by"],
            &cancellation["actor"],
            &cancellation["percent"]
        ),
        (&json!("operator"), &json!("ops"), &json!(100)),
        "{cancellation:#}"
    );
}
