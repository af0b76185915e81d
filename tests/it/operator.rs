//! Operators: named API tokens, and the actions an operator takes on sagas.

use sagad::domain::SagaId;
use sagad::engine::definition::OnFailure;
use sagad::engine::model::StepPhase;
use sagad::engine::operator::{self, Parked};
use sagad::store::operator as store_operator;
use sagad::store::sagas;
use serde_json::{Value, json};
use stripe_double::{Fault, Operation};
use uuid::Uuid;

use crate::harness::{
    AppOptions, OPS_TOKEN, TOKEN, TestApp, booking_definition, booking_input, spawn_app,
    spawn_app_with,
};

#[tokio::test]
async fn named_and_bare_tokens_are_accepted_and_anything_else_is_401() {
    let app = spawn_app().await;
    let url = format!("{}/v1/sagas", app.base);
    for token in [TOKEN, OPS_TOKEN] {
        let resp = app.http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "token {token}");
    }
    // The name is not a token, nor is the `name:token` entry as configured.
    for token in [
        "ops",
        "token-1",
        &format!("ops:{OPS_TOKEN}"),
        "unknown-token-0123456789",
    ] {
        let resp = app.http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 401, "token {token}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let resp = app.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401, "no token");
}

/// A booking saga parked as `stuck`: its notification fails for good and the refund that
/// compensates its capture keeps failing (Stripe answers 500 until the faults are cleared).
async fn stuck_in_refund(app: &TestApp, listing: &str) -> Uuid {
    app.notify.answer(500);
    app.double
        .inject(Fault::server_error(Operation::Refund).times(1000));
    let id = app
        .start_booking(booking_input(listing, "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "stuck", "{v:#}");
    id
}

/// What an action must leave alone when refused: the saga as the API shows it and its events.
async fn snapshot(app: &TestApp, id: Uuid) -> (Value, Vec<String>) {
    (
        app.get_json(&format!("/v1/sagas/{id}")).await,
        app.event_types(id).await,
    )
}

/// The saga's last event of `event_type`, its payload and metadata.
async fn last_event(app: &TestApp, id: Uuid, event_type: &str) -> Value {
    let events = app.get_json(&format!("/v1/sagas/{id}/events")).await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["event_type"] == event_type)
        .cloned()
        .unwrap_or_else(|| panic!("no {event_type} event in {events:#}"))
}

/// POSTs `body` to `path` with `token` (none: no Authorization header): status and JSON body.
async fn post_as(app: &TestApp, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let mut req = app.http.post(format!("{}{path}", app.base)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn retry_resumes_a_stuck_compensation_and_refusals_change_nothing() {
    let app = spawn_app().await;
    let id = stuck_in_refund(&app, "op-retry-1").await;
    let before = snapshot(&app, id).await;
    let retry = format!("/v1/sagas/{id}/retry");
    let reason = json!({ "reason": "Stripe is answering again" });
    for (token, body, status) in [
        (None, reason.clone(), 401),
        (Some("unknown-token-0123456789"), reason.clone(), 401),
        (Some(OPS_TOKEN), json!({ "reason": " " }), 422),
        (Some(OPS_TOKEN), json!({}), 422),
        (
            Some(OPS_TOKEN),
            json!({ "reason": "x", "force": true }),
            422,
        ),
    ] {
        let (got, body) = post_as(&app, token, &retry, body).await;
        assert_eq!(got, status, "{body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let (got, body) = post_as(
        &app,
        Some(OPS_TOKEN),
        &format!("/v1/sagas/{id}/resolve"),
        json!({ "outcome": "refunded", "reason": "done by hand" }),
    )
    .await;
    assert_eq!(got, 422, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "outcome", "{body}");
    assert_eq!(
        snapshot(&app, id).await,
        before,
        "a refusal changed the saga"
    );

    app.double.clear_faults();
    let (got, body) = post_as(&app, Some(OPS_TOKEN), &retry, reason.clone()).await;
    assert_eq!(got, 202, "{body}");
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    let retried = last_event(&app, id, "SagaRetried").await;
    assert_eq!(
        retried["payload"],
        json!({ "actor": "ops", "reason": "Stripe is answering again",
                "step": "capture_payment", "phase": "compensation" })
    );
    let types = app.event_types(id).await;
    let at = types.iter().position(|t| t == "SagaRetried").unwrap();
    assert_eq!(
        &types[at..],
        [
            "SagaRetried",
            "PaymentRefunded",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    assert_eq!(app.payment_intents_of(id)[0].effects.refunds, 1);
    assert_eq!(app.active_claims().await, 0);

    // Nothing to retry any more: 409, and nothing changes.
    let before = snapshot(&app, id).await;
    let (got, body) = post_as(&app, Some(OPS_TOKEN), &retry, reason).await;
    assert_eq!(got, 409, "{body}");
    assert_eq!(snapshot(&app, id).await, before);
}

#[tokio::test]
async fn resolve_closes_a_stuck_saga_and_says_what_it_still_holds() {
    let app = spawn_app().await;
    let id = stuck_in_refund(&app, "op-resolve-1").await;
    let resolve = format!("/v1/sagas/{id}/resolve");
    let pi = app.payment_intents_of(id)[0].id.clone();
    // Made with the bare token: its actor is its name by position.
    let (got, body) = post_as(
        &app,
        Some(TOKEN),
        &resolve,
        json!({ "outcome": "compensated", "reason": "refunded in the Stripe dashboard" }),
    )
    .await;
    assert_eq!(got, 200, "{body}");
    assert_eq!(body["saga"]["status"], "compensated", "{body:#}");
    assert_eq!(
        body["still_held"]["captured"],
        json!({ "payment_intent_id": pi, "amount": 45000, "currency": "eur" }),
        "{body:#}"
    );
    assert_eq!(body["still_held"]["authorization"], Value::Null);
    let claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_claims WHERE saga_id = $1 AND status = 'active'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        body["still_held"]["claim"].is_object(),
        claims == 1,
        "{body:#}"
    );
    let resolved = last_event(&app, id, "SagaResolved").await;
    assert_eq!(resolved["payload"]["actor"], "token-1");
    assert_eq!(resolved["payload"]["outcome"], "compensated");
    assert_eq!(resolved["payload"]["still_held"], body["still_held"]);
    let types = app.event_types(id).await;
    assert_eq!(
        &types[types.len() - 2..],
        ["SagaResolved", "SagaCompensated"]
    );

    // Resolved once: not again; and a saga that completed cannot be retried.
    let before = snapshot(&app, id).await;
    let (got, _) = post_as(
        &app,
        Some(OPS_TOKEN),
        &resolve,
        json!({ "outcome": "completed", "reason": "again" }),
    )
    .await;
    assert_eq!(got, 409);
    assert_eq!(snapshot(&app, id).await, before);

    app.notify.answer(200);
    let done = app
        .start_booking(booking_input("op-resolve-2", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(done).await["status"], "completed");
    let before = snapshot(&app, done).await;
    let (got, body) = post_as(
        &app,
        Some(OPS_TOKEN),
        &format!("/v1/sagas/{done}/retry"),
        json!({ "reason": "just in case" }),
    )
    .await;
    assert_eq!(got, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{body}"
    );
    assert_eq!(snapshot(&app, done).await, before);
}

#[tokio::test]
async fn a_stuck_saga_an_operator_retries_to_completion_has_its_booking_confirmed() {
    // Parked as stuck at its last step, whose event (NotificationSent) says nothing of the
    // booking: only the completion can take the booking out of needs_attention.
    let mut def = booking_definition();
    def.steps[4].on_failure = OnFailure::Stuck;
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    app.notify.answer(500);
    let id = app
        .start_booking(booking_input("op-retry-forward-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "stuck", "{v:#}");
    assert_eq!(v["booking"]["status"], "needs_attention", "{v:#}");

    app.notify.answer(200);
    let (got, body) = post_as(
        &app,
        Some(OPS_TOKEN),
        &format!("/v1/sagas/{id}/retry"),
        json!({ "reason": "the gateway is back" }),
    )
    .await;
    assert_eq!(got, 202, "{body}");
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(v["booking"]["status"], "confirmed", "{v:#}");
    let booking = app.get_json(&format!("/v1/bookings/{id}")).await;
    assert_eq!(booking["status"], "confirmed", "{booking:#}");
    let types = app.event_types(id).await;
    let at = types.iter().position(|t| t == "SagaRetried").unwrap();
    assert_eq!(
        &types[at..],
        ["SagaRetried", "NotificationSent", "SagaCompleted"]
    );
    // The fold replayed from the events agrees with the row the live path wrote.
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
async fn cancelling_a_stuck_saga_compensates_what_is_left() {
    let mut def = booking_definition();
    def.steps[4].on_failure = OnFailure::Stuck;
    let app = spawn_app_with(AppOptions {
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    app.notify.answer(500);
    let id = app
        .start_booking(booking_input("op-cancel-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "stuck", "{v:#}");
    assert_eq!(v["failure"]["step"], "notify", "{v:#}");

    let (got, body) = post_as(
        &app,
        Some(OPS_TOKEN),
        &format!("/v1/sagas/{id}/cancel"),
        json!({ "reason": "guest unreachable, booking given up" }),
    )
    .await;
    assert_eq!(got, 202, "{body}");
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["booking"]["status"], "cancelled", "{v:#}");
    let cancelled = last_event(&app, id, "OperatorCancelled").await;
    assert_eq!(
        cancelled["payload"],
        json!({ "actor": "ops", "reason": "guest unreachable, booking given up" })
    );
    let types = app.event_types(id).await;
    let at = types.iter().position(|t| t == "OperatorCancelled").unwrap();
    assert_eq!(
        &types[at..],
        [
            "OperatorCancelled",
            "CompensationStarted",
            "BookingCancelled",
            "PaymentRefunded",
            "InventoryReleased",
            "SagaCompensated"
        ]
    );
    assert_eq!(app.payment_intents_of(id)[0].effects.refunds, 1);
    assert_eq!(app.active_claims().await, 0);
    // Compensated: cancelling again is refused.
    let (got, _) = post_as(
        &app,
        Some(OPS_TOKEN),
        &format!("/v1/sagas/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(got, 409);
}

#[tokio::test]
async fn bulk_retry_takes_the_stuck_sagas_of_a_step_or_since_a_time() {
    let app = spawn_app().await;
    let a = stuck_in_refund(&app, "op-bulk-1").await;
    let b = stuck_in_refund(&app, "op-bulk-2").await;
    let before = (snapshot(&app, a).await, snapshot(&app, b).await);
    for body in [
        json!({ "reason": "everything" }),
        json!({ "step": "capture_the_flag", "reason": "typo" }),
        json!({ "step": "capture_payment", "reason": "" }),
    ] {
        let (got, resp) = post_as(&app, Some(OPS_TOKEN), "/v1/sagas/retry", body).await;
        assert_eq!(got, 422, "{resp}");
    }
    // Nothing was stuck at notify, nor became stuck in the future.
    for body in [
        json!({ "step": "notify", "reason": "r" }),
        json!({ "since": "2999-01-01T00:00:00Z", "reason": "r" }),
    ] {
        let (got, resp) = post_as(&app, Some(OPS_TOKEN), "/v1/sagas/retry", body).await;
        assert_eq!(got, 200, "{resp}");
        assert_eq!(resp["retried"], json!([]), "{resp}");
    }
    assert_eq!(
        (snapshot(&app, a).await, snapshot(&app, b).await),
        before,
        "a refused or empty bulk retry changed a saga"
    );

    app.double.clear_faults();
    let (got, resp) = post_as(
        &app,
        Some(OPS_TOKEN),
        "/v1/sagas/retry",
        json!({ "step": "capture_payment", "since": "2020-01-01T00:00:00Z", "reason": "Stripe recovered" }),
    )
    .await;
    assert_eq!(got, 200, "{resp}");
    let mut retried: Vec<String> = resp["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    retried.sort();
    let mut expected = vec![a.to_string(), b.to_string()];
    expected.sort();
    assert_eq!(retried, expected, "{resp}");
    assert_eq!(resp["more"], false);
    for id in [a, b] {
        assert_eq!(app.wait_terminal(id).await["status"], "compensated");
        let e = last_event(&app, id, "SagaRetried").await;
        assert_eq!(e["payload"]["actor"], "ops");
        assert_eq!(e["payload"]["reason"], "Stripe recovered");
    }
}

#[tokio::test]
async fn an_action_planned_on_a_saga_that_moved_on_writes_nothing() {
    let app = spawn_app().await;
    let id = stuck_in_refund(&app, "op-race-1").await;
    let mut conn = app.pool.acquire().await.unwrap();
    let row = sagas::get(&mut conn, SagaId(id)).await.unwrap().unwrap();
    let def = booking_definition();
    let parked = Parked {
        def: &def,
        status: row.status,
        current_step: row.current_step as usize,
        phase: StepPhase::Compensation,
        failure_step: row.failure_step.as_deref(),
        failure_reason: row.failure_reason.as_deref(),
        price: 45000,
        captured: 45000,
    };
    let plan = operator::retry(&parked, "ops", "racing").unwrap();
    // Meanwhile a worker took the saga (an operator's retry elsewhere, then a claim).
    sqlx::query(
        "UPDATE sagas SET status = 'compensating', attempt = 1, locked_by = 'elsewhere',
                locked_until = now() + interval '1 minute' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    let before = snapshot(&app, id).await;
    assert!(!store_operator::apply(&mut conn, &row, &plan).await.unwrap());
    assert_eq!(snapshot(&app, id).await, before);
    // Held by a worker with the state it was planned from: refused too.
    sqlx::query("UPDATE sagas SET status = 'stuck', attempt = $2 WHERE id = $1")
        .bind(id)
        .bind(row.attempt)
        .execute(&app.pool)
        .await
        .unwrap();
    let before = snapshot(&app, id).await;
    assert!(!store_operator::apply(&mut conn, &row, &plan).await.unwrap());
    assert_eq!(snapshot(&app, id).await, before);
    // Released: it applies.
    sqlx::query("UPDATE sagas SET locked_by = NULL, locked_until = NULL WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(store_operator::apply(&mut conn, &row, &plan).await.unwrap());
}

#[tokio::test]
async fn retrying_a_waiting_saga_looks_at_its_payment_now_and_the_cli_shows_why_it_waits() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("op-wait-1", "pm_card_authenticationRequired"))
        .await;
    let waiting = app.wait_status(id, &["waiting"]).await;
    assert_eq!(waiting["wait"]["reason"], "payment_authentication");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args([
            "saga",
            "list",
            "--status",
            "waiting",
            "--api-url",
            &app.base,
        ])
        .env("SAGAD_API_TOKEN", OPS_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("WAITING FOR"), "{list}");
    let line = list
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("{id} not listed: {list}"));
    assert!(line.contains("payment_authentication"), "{line}");
    assert!(
        line.contains(waiting["wait"]["deadline"].as_str().unwrap()),
        "{line}"
    );

    // The guest authenticated, but no webhook arrives: the operator has the step look now.
    let pi = app.payment_intents_of(id)[0].id.clone();
    app.double.authenticate(&pi).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args([
            "saga",
            "retry",
            &id.to_string(),
            "--reason",
            "guest says it is done",
        ])
        .args(["--api-url", &app.base])
        .env("SAGAD_API_TOKEN", OPS_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let retried = last_event(&app, id, "SagaRetried").await;
    assert_eq!(
        retried["payload"],
        json!({ "actor": "ops", "reason": "guest says it is done",
                "step": "authorize_payment", "phase": "forward" })
    );
}
