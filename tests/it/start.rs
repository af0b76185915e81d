//! The start statement carries out the booking's first step, the inventory hold, when the dates
//! are free: the saga, its first two events, the hold, the hold's step row and the booking row
//! commit together, and a worker begins with the authorization.

use sagad::config::Role;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{AppOptions, TestApp, booking_input, count, spawn_app_with};

/// An app whose API starts sagas and nothing runs them: what a start writes stays as it wrote it.
async fn api_only() -> TestApp {
    spawn_app_with(AppOptions {
        role: Role::Api,
        ..Default::default()
    })
    .await
}

async fn post_start(app: &TestApp, key: Option<&str>, input: Value) -> (u16, Value) {
    let mut req = app
        .post("/v1/sagas")
        .json(&json!({ "saga": "booking", "input": input }));
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn id_of(v: &Value) -> Uuid {
    v["id"].as_str().unwrap().parse().unwrap()
}

/// (event type, version) of a saga's events.
async fn versions(app: &TestApp, id: Uuid) -> Vec<(String, i32)> {
    sqlx::query_as(
        "SELECT event_type, version FROM events WHERE aggregate_id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_start_places_the_hold_in_its_own_transaction() {
    let app = api_only().await;
    let (status, started) = post_start(&app, None, booking_input("cove-1", "pm_card_visa")).await;
    assert_eq!(status, 202, "{started:#}");
    let id = id_of(&started);

    // Nothing runs sagas here: whatever is written, the start wrote.
    assert_eq!(
        versions(&app, id).await,
        [
            ("BookingRequested".to_owned(), 1),
            ("InventoryHeld".to_owned(), 2)
        ]
    );
    let (saga_at, claim_at, step_at, kind, expires_at): (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        String,
        chrono::DateTime<chrono::Utc>,
    ) = sqlx::query_as(
        "SELECT s.created_at, c.created_at, st.finished_at, c.kind, c.expires_at
         FROM sagas s JOIN inventory_claims c ON c.saga_id = s.id AND c.status = 'active'
              JOIN saga_steps st ON st.saga_id = s.id AND st.step_index = 0 AND st.status = 'succeeded'
         WHERE s.id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // `now()` is the transaction's start: one transaction wrote all three.
    assert_eq!((claim_at, step_at), (saga_at, saga_at));
    assert_eq!(kind, "hold");
    // The hold lives the step's `hold_ttl` (30m in the booking definition).
    let ttl = expires_at - saga_at;
    assert!(
        (ttl - chrono::Duration::minutes(30)).num_seconds().abs() <= 5,
        "{ttl}"
    );

    // The answer is what was written, without reading it back.
    assert_eq!(started["current_step"], "authorize_payment");
    assert_eq!(started["booking"]["status"], "held");
    let read = app.get_json(&format!("/v1/sagas/{id}")).await;
    for field in ["status", "current_step", "attempt", "context", "created_at"] {
        assert_eq!(
            started[field], read[field],
            "{field}: {started:#} vs {read:#}"
        );
    }
    assert_eq!(started["steps"], read["steps"]);
    assert_eq!(started["booking"]["status"], read["booking"]["status"]);
    assert_eq!(
        started["context"]["hold_inventory"]["expires_at"],
        json!(expires_at),
        "the event, the context and the claim carry one expiry"
    );
    let held: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_id = $1 AND event_type = 'InventoryHeld'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        held["hold_id"],
        started["context"]["hold_inventory"]["hold_id"]
    );
    assert_eq!(held["expires_at"], json!(expires_at));

    // A worker takes it from the authorization and completes it, holding nothing twice.
    let worker = app.spawn_sibling(AppOptions::default()).await;
    let v = worker.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["steps"][0]["attempts"], 1, "{v:#}");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM inventory_claims").await,
        1
    );
    let pi = &worker.payment_intents_of(id)[0];
    assert_eq!((pi.effects.authorizations, pi.effects.captures), (1, 1));
    assert_eq!(
        worker
            .event_types(id)
            .await
            .iter()
            .filter(|e| *e == "InventoryHeld")
            .count(),
        1
    );
}

#[tokio::test]
async fn dates_taken_at_the_start_leave_the_hold_step_to_a_worker() {
    let app = api_only().await;
    let (_, first) = post_start(&app, None, booking_input("cove-2", "pm_card_visa")).await;
    let (status, second) = post_start(&app, None, booking_input("cove-2", "pm_card_visa")).await;
    assert_eq!(status, 202, "{second:#}");
    assert_eq!(second["current_step"], "hold_inventory");
    assert_eq!(second["booking"]["status"], "requested");
    assert_eq!(second["steps"], json!([]));
    let id = id_of(&second);
    assert_eq!(
        versions(&app, id).await,
        [("BookingRequested".to_owned(), 1)]
    );
    let claims: Vec<Uuid> = sqlx::query_scalar("SELECT saga_id FROM inventory_claims")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(claims, [id_of(&first)]);
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM saga_steps").await,
        1,
        "only the first saga's hold"
    );

    // A worker runs the hold step, finds the dates taken and compensates.
    let worker = app.spawn_sibling(AppOptions::default()).await;
    let v = worker.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["reason"], "dates_unavailable");
    assert!(
        worker.payment_intents_of(id).is_empty(),
        "no payment attempted"
    );
    assert_eq!(
        worker.wait_terminal(id_of(&first)).await["status"],
        "completed"
    );
}

#[tokio::test]
async fn a_replayed_start_holds_nothing_more() {
    let app = api_only().await;
    let input = booking_input("cove-3", "pm_card_visa");
    let (s1, first) = post_start(&app, Some("cove-3-key"), input.clone()).await;
    let (s2, again) = post_start(&app, Some("cove-3-key"), input.clone()).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], again["id"]);
    let mut other = input;
    other["listing_id"] = json!("cove-3b");
    let (s3, refused) = post_start(&app, Some("cove-3-key"), other).await;
    assert_eq!(s3, 422, "{refused:#}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sagas").await, 1);
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM inventory_claims").await,
        1,
        "the refused body held nothing"
    );
    assert_eq!(count(&app.pool, "SELECT count(*) FROM events").await, 2);
}

/// Two requests with one key, both new when they began: the later one's hold refers to a saga
/// it cannot insert (the key is taken meanwhile). It is answered like any reuse of the key, and
/// its hold is not left behind.
#[tokio::test]
async fn a_start_racing_another_with_its_key_holds_nothing() {
    let app = api_only().await;
    // The "other request": a saga with the key, inserted and not committed yet.
    let mut other = app.pool.begin().await.unwrap();
    let first = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sagas (id, saga_name, saga_version, status, input, idempotency_key, request_fingerprint)
         VALUES ($1, 'booking', $2, 'running', '{}', 'cove-4-key', 'another body')",
    )
    .bind(first)
    .bind(crate::harness::booking_definition().version as i32)
    .execute(&mut *other)
    .await
    .unwrap();
    let racing = post_start(
        &app,
        Some("cove-4-key"),
        booking_input("cove-4", "pm_card_visa"),
    );
    let commit = async {
        // The racing start is waiting on the key by now: it saw no saga with it and placed its
        // hold. (Its statement cannot finish before the commit, whenever it arrives.)
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let waiting = loop {
            let waiting = count(
                &app.pool,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO sagas%'",
            )
            .await;
            if waiting > 0 || tokio::time::Instant::now() > deadline {
                break waiting > 0;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        other.commit().await.unwrap();
        waiting
    };
    let ((status, body), raced) = tokio::join!(racing, commit);
    assert!(raced, "the start never waited on the key");
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    let sagas: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM sagas")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(sagas, [first]);
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM inventory_claims").await,
        0
    );
    assert_eq!(count(&app.pool, "SELECT count(*) FROM events").await, 0);
}
