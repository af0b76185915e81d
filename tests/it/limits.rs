//! Payloads at the accepted limits: a request exactly at each limit (body size, field lengths,
//! counts) is accepted and stored intact; one byte, character or item more is refused with the
//! precise 4xx, and nothing is written.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{AppOptions, TestApp, booking_input, future_day, spawn_app_with};
use crate::hostile::{json_error, snapshot};

/// The documented limits (OpenAPI `maxLength`): a webhook endpoint's URL in bytes, its
/// description and a block's reason in characters.
const MAX_URL_LEN: usize = 2048;
const MAX_DESCRIPTION_LEN: usize = 1024;
const MAX_REASON_LEN: usize = 500;

/// An API-only sagad: a started saga is stored and left alone (no worker runs it).
async fn api_only() -> TestApp {
    spawn_app_with(AppOptions {
        role: sagad::config::Role::Api,
        ..Default::default()
    })
    .await
}

/// `POST /v1/sagas` of `body` as it is, with `Idempotency-Key: key` when given.
async fn post_saga(app: &TestApp, body: String, key: Option<&str>) -> reqwest::Response {
    let mut req = app
        .post("/v1/sagas")
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(body).send().await.expect("POST /v1/sagas")
}

/// The id of a saga the API accepted.
async fn accepted(resp: reqwest::Response) -> Uuid {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("JSON body");
    assert!(matches!(status, 200 | 202), "{status}: {body}");
    body["id"].as_str().expect("an id").parse().expect("a uuid")
}

/// Asserts a refusal: `status` and `code`, with `field` named when given; nothing written.
async fn assert_refused(
    app: &TestApp,
    before: &[(String, i64, String)],
    resp: reqwest::Response,
    (status, code): (u16, &str),
    field: Option<&str>,
    what: &str,
) {
    let (got, got_code, body) = json_error(resp).await;
    assert_eq!((got, got_code.as_str()), (status, code), "{what}: {body}");
    if let Some(field) = field {
        let named: Vec<&str> = body["error"]["fields"]
            .as_array()
            .map(|f| f.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(named, [field], "{what}: {body}");
    }
    assert_eq!(snapshot(&app.pool).await, before, "{what} wrote something");
}

/// `{"saga": "booking", "input": input}` padded with spaces to exactly `len` bytes.
fn padded_start(input: &Value, len: usize) -> String {
    let mut body = json!({ "saga": "booking", "input": input }).to_string();
    assert!(
        body.len() <= len,
        "the body is already {} bytes",
        body.len()
    );
    body.push_str(&" ".repeat(len - body.len()));
    body
}

#[tokio::test]
async fn a_request_body_at_64_kib_is_accepted_and_one_byte_more_is_a_413() {
    let app = api_only().await;
    let limit = sagad::http::BODY_LIMIT;
    let input = booking_input("limit-body", "pm_card_visa");
    let id = accepted(post_saga(&app, padded_start(&input, limit), None).await).await;
    let stored: Value = sqlx::query_scalar("SELECT input FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    for field in ["listing_id", "guest_id", "check_in", "check_out", "amount"] {
        assert_eq!(stored[field], input[field], "{field} stored as sent");
    }

    let before = snapshot(&app.pool).await;
    let mut over = input.clone();
    over["listing_id"] = json!("limit-body-2");
    let resp = post_saga(&app, padded_start(&over, limit + 1), None).await;
    assert_refused(
        &app,
        &before,
        resp,
        (413, "payload_too_large"),
        None,
        "a body one byte over",
    )
    .await;
}

#[tokio::test]
async fn booking_fields_and_the_idempotency_key_at_their_limits_are_stored_intact() {
    let app = api_only().await;
    let listing = "l".repeat(64);
    let guest = format!("g.{}", "-".repeat(62));
    let pm = format!("pm_{}", "x".repeat(61));
    let key = "k".repeat(255);
    let mut input = booking_input(&listing, &pm);
    input["guest_id"] = json!(guest);
    let body = json!({ "saga": "booking", "input": input }).to_string();
    let id = accepted(post_saga(&app, body, Some(&key)).await).await;
    let (stored, stored_key): (Value, Option<String>) =
        sqlx::query_as("SELECT input, idempotency_key FROM sagas WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored["listing_id"], json!(listing));
    assert_eq!(stored["guest_id"], json!(guest));
    assert_eq!(stored["payment_method"], json!(pm));
    assert_eq!(stored_key.as_deref(), Some(key.as_str()));

    let before = snapshot(&app.pool).await;
    for (field, value) in [
        ("listing_id", "l".repeat(65)),
        ("guest_id", "g".repeat(65)),
        ("payment_method", format!("pm_{}", "x".repeat(62))),
    ] {
        let mut over = booking_input("limit-fields-2", "pm_card_visa");
        over[field] = json!(value);
        let body = json!({ "saga": "booking", "input": over }).to_string();
        let resp = post_saga(&app, body, None).await;
        let what = format!("a {field} one character over");
        assert_refused(
            &app,
            &before,
            resp,
            (422, "validation_failed"),
            Some(&format!("input.{field}")),
            &what,
        )
        .await;
    }
    let body = json!({ "saga": "booking", "input": booking_input("limit-key", "pm_card_visa") })
        .to_string();
    let resp = post_saga(&app, body, Some(&"k".repeat(256))).await;
    assert_refused(
        &app,
        &before,
        resp,
        (400, "bad_request"),
        None,
        "an Idempotency-Key one character over",
    )
    .await;
}

#[tokio::test]
async fn the_longest_stay_is_accepted_and_one_night_more_is_refused() {
    let app = api_only().await;
    let max_nights = crate::harness::test_settings().booking_rules.max_nights;
    let mut input = booking_input("limit-stay", "pm_card_visa");
    let check_in: chrono::NaiveDate = future_day(0).parse().unwrap();
    let last = check_in + chrono::Days::new(max_nights as u64);
    input["check_out"] = json!(last.to_string());
    let body = json!({ "saga": "booking", "input": input }).to_string();
    let id = accepted(post_saga(&app, body, None).await).await;
    let stored: Value = sqlx::query_scalar("SELECT input FROM sagas WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored["check_out"], json!(last.to_string()));

    let before = snapshot(&app.pool).await;
    let mut over = booking_input("limit-stay-2", "pm_card_visa");
    over["check_out"] = json!((last + chrono::Days::new(1)).to_string());
    let body = json!({ "saga": "booking", "input": over }).to_string();
    let resp = post_saga(&app, body, None).await;
    assert_refused(
        &app,
        &before,
        resp,
        (422, "validation_failed"),
        Some("input.check_out"),
        "a stay one night over",
    )
    .await;
}

#[tokio::test]
async fn an_endpoint_url_and_description_at_their_limits_are_stored_intact() {
    let app = api_only().await;
    let prefix = "http://127.0.0.1:9/";
    let url = format!("{prefix}{}", "u".repeat(MAX_URL_LEN - prefix.len()));
    // Characters, not bytes: 1024 two-byte characters are 2048 bytes.
    let description = "é".repeat(MAX_DESCRIPTION_LEN);
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": url, "event_types": ["*"], "description": description }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let (stored_url, stored_description): (String, String) =
        sqlx::query_as("SELECT url, description FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored_url, url);
    assert_eq!(stored_description, description);

    let before = snapshot(&app.pool).await;
    let cases = [
        (
            json!({ "url": format!("{url}u"), "event_types": ["*"] }),
            "url",
        ),
        (
            json!({ "url": prefix, "event_types": ["*"], "description": format!("{description}é") }),
            "description",
        ),
    ];
    for (body, field) in cases {
        let resp = app
            .post("/v1/webhook-endpoints")
            .json(&body)
            .send()
            .await
            .unwrap();
        let what = format!("a {field} one over");
        assert_refused(
            &app,
            &before,
            resp,
            (422, "validation_failed"),
            Some(field),
            &what,
        )
        .await;
    }
}

#[tokio::test]
async fn a_block_reason_at_500_characters_is_stored_intact_and_501_is_refused() {
    let app = api_only().await;
    let reason = "r".repeat(MAX_REASON_LEN);
    let block =
        |reason: &str| json!({ "from": future_day(10), "to": future_day(12), "reason": reason });
    let resp = app
        .post("/v1/listings/limit-block/blocks")
        .json(&block(&reason))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let stored: String = sqlx::query_scalar(
        "SELECT reason FROM inventory_claims WHERE listing_id = 'limit-block' AND kind = 'block'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, reason);

    let before = snapshot(&app.pool).await;
    let resp = app
        .post("/v1/listings/limit-block-2/blocks")
        .json(&block(&format!("{reason}r")))
        .send()
        .await
        .unwrap();
    assert_refused(
        &app,
        &before,
        resp,
        (422, "validation_failed"),
        Some("reason"),
        "a reason one character over",
    )
    .await;
}

/// A signed Stripe event of exactly `len` bytes, its metadata carrying the padding.
fn stripe_event(id: &str, len: usize) -> String {
    let event = |pad: &str| {
        json!({
            "id": id, "object": "event", "type": "payment_intent.succeeded",
            "created": 1_700_000_000, "livemode": false, "api_version": "2026-09-30.endive",
            "data": { "object": { "id": "pi_limit_unknown", "object": "payment_intent",
                                  "metadata": { "note": pad } } }
        })
        .to_string()
    };
    let bare = event("").len();
    assert!(bare <= len);
    let body = event(&"m".repeat(len - bare));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn a_stripe_event_at_256_kib_is_stored_intact_and_one_byte_more_is_a_413() {
    let app = api_only().await;
    let limit = sagad::inbound::stripe::BODY_LIMIT;
    let body = stripe_event("evt_limit_at", limit);
    let (status, answer) = app.post_signed_stripe_event(&body).await;
    assert_eq!(status, 200, "{answer}");
    let payload: Value = sqlx::query_scalar("SELECT payload FROM stripe_events WHERE id = $1")
        .bind("evt_limit_at")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(payload, serde_json::from_str::<Value>(&body).unwrap());

    let before = snapshot(&app.pool).await;
    let (status, answer) = app
        .post_signed_stripe_event(&stripe_event("evt_limit_over", limit + 1))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{answer}"
    );
    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "an event one byte over wrote something"
    );
}
