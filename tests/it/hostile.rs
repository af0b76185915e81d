//! Hostile input over real HTTP: every refusal is a 4xx with the JSON error body, and nothing is
//! written (each test compares every table's rows before and after).

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::harness::{OPS_TOKEN, TOKEN, TestApp, booking_input, spawn_app};

/// Each table's row count and a digest of its rows, for every table of the public schema
/// (sqlx's migration record aside), so that a table added later is covered without a list.
pub async fn snapshot(pool: &PgPool) -> Vec<(String, i64, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(tablename) FROM pg_tables
         WHERE schemaname = 'public' AND tablename NOT LIKE '\\_sqlx%'
         ORDER BY tablename",
    )
    .fetch_all(pool)
    .await
    .expect("the tables");
    assert!(
        tables.iter().any(|t| t == "sagas"),
        "no tables found: {tables:?}"
    );
    let mut out = Vec::new();
    for table in tables {
        let (rows, digest): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
        )))
        .fetch_one(pool)
        .await
        .expect("table snapshot");
        out.push((table, rows, digest));
    }
    out
}

/// [`snapshot`] once the work that came before has settled: the circuit breakers count the
/// answers to a saga's calls in the database at their next refresh, up to
/// [`sagad::store::breakers::REFRESH`] after the saga ends. Waits (10 s at most) for two
/// snapshots a refresh apart to agree.
pub async fn settled_snapshot(pool: &PgPool) -> Vec<(String, i64, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = snapshot(pool).await;
    loop {
        tokio::time::sleep(sagad::store::breakers::REFRESH + std::time::Duration::from_millis(200))
            .await;
        let now = snapshot(pool).await;
        if now == last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tables did not settle"
        );
        last = now;
    }
}

/// The status, the JSON error body's code and the body; fails unless the body is the JSON error.
pub async fn json_error(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.expect("response body");
    assert!(
        content_type.starts_with("application/json"),
        "{status} answered {content_type:?}: {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"))
        .to_owned();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code, body)
}

/// The fields named by a 422's `error.fields`.
fn fields(body: &Value) -> Vec<String> {
    body["error"]["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn create_endpoint(app: &TestApp) -> String {
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(
            &json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["booking.*"],
                       "description": "before" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

fn raw_post(app: &TestApp, path: &str, body: &str) -> reqwest::RequestBuilder {
    app.post(path)
        .header("content-type", "application/json")
        .body(body.to_owned())
}

#[tokio::test]
async fn nul_in_an_endpoint_description_is_a_422_on_create_and_update() {
    let app = spawn_app().await;
    let id = create_endpoint(&app).await;
    let before = snapshot(&app.pool).await;

    let resp = raw_post(
        &app,
        "/v1/webhook-endpoints",
        r#"{"url": "http://127.0.0.1:9/x", "event_types": ["*"], "description": "a\u0000b"}"#,
    )
    .send()
    .await
    .unwrap();
    let (status, code, body) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (422, "validation_failed"));
    assert_eq!(fields(&body), ["description"]);

    let resp = app
        .http
        .patch(format!("{}/v1/webhook-endpoints/{id}", app.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"description": "\u0000"}"#)
        .send()
        .await
        .unwrap();
    let (status, code, body) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (422, "validation_failed"));
    assert_eq!(fields(&body), ["description"]);
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn nul_in_a_list_filter_is_a_400() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("nul-filter", "pm_card_visa"))
        .await;
    app.wait_terminal(id).await;
    let before = settled_snapshot(&app.pool).await;
    for path in ["/v1/sagas?saga=%00", "/v1/sagas?status=running%00"] {
        let (status, code, body) = json_error(app.get(path).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{path}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("NUL"),
            "{body}"
        );
    }
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn out_of_range_times_are_refused() {
    let app = spawn_app().await;
    let id = create_endpoint(&app).await;
    let before = snapshot(&app.pool).await;

    let resp = app
        .get(&format!(
            "/v1/webhook-endpoints/{id}/deliveries?before=-5000-01-01T00:00:00Z"
        ))
        .send()
        .await
        .unwrap();
    let (status, code, _) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));

    let resp = app
        .post(&format!("/v1/webhook-endpoints/{id}/redrive"))
        .json(&json!({ "since": "-5000-01-01T00:00:00Z" }))
        .send()
        .await
        .unwrap();
    let (status, code, body) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (422, "validation_failed"));
    assert_eq!(fields(&body), ["since"]);

    // A keyset cursor is a time too.
    use base64::Engine as _;
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("-5000-01-01T00:00:00Z|{}", uuid::Uuid::nil()));
    let resp = app
        .get(&format!("/v1/sagas?cursor={cursor}"))
        .send()
        .await
        .unwrap();
    let (status, code, _) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn query_and_path_rejections_answer_the_json_error_body() {
    let app = spawn_app().await;
    let before = snapshot(&app.pool).await;
    for path in [
        "/v1/sagas?limit=abc",
        "/v1/sagas?limit=99999999999999999999999",
        "/v1/sagas?saga=",
        "/v1/sagas?saga=Booking",
        "/v1/sagas/%FF",
        "/v1/sagas/not-a-uuid/events",
        "/v1/webhook-endpoints/00000000-0000-0000-0000-000000000000/deliveries?limit=x",
    ] {
        let (status, code, _) = json_error(app.get(path).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{path}");
    }
    let resp = app
        .post("/v1/sagas?wait=forever")
        .json(&json!({ "saga": "booking", "input": booking_input("q", "pm_card_visa") }))
        .send()
        .await
        .unwrap();
    let (status, code, _) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn duplicate_json_keys_are_refused_on_every_body() {
    let app = spawn_app().await;
    let id = create_endpoint(&app).await;
    let before = snapshot(&app.pool).await;

    let mut input = booking_input("dup", "pm_card_visa").to_string();
    input = input.replacen("\"amount\":45000", "\"amount\":-1,\"amount\":100", 1);
    assert!(input.contains("\"amount\":-1,\"amount\":100"), "{input}");
    let body = format!(r#"{{"saga": "booking", "input": {input}}}"#);
    let (status, code, err) =
        json_error(raw_post(&app, "/v1/sagas", &body).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "malformed_json"));
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("duplicate key `input.amount`"),
        "{message}"
    );

    for (method, path, body) in [
        (
            "POST",
            "/v1/webhook-endpoints".to_owned(),
            r#"{"url": "http://127.0.0.1:9/a", "url": "http://127.0.0.1:9/b", "event_types": ["*"]}"#,
        ),
        (
            "PATCH",
            format!("/v1/webhook-endpoints/{id}"),
            r#"{"enabled": true, "enabled": false}"#,
        ),
        (
            "POST",
            format!("/v1/webhook-endpoints/{id}/redrive"),
            r#"{"since": "2026-01-01T00:00:00Z", "since": "2026-01-02T00:00:00Z"}"#,
        ),
    ] {
        let resp = app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, code, err) = json_error(resp).await;
        assert_eq!((status, code.as_str()), (400, "malformed_json"), "{path}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("duplicate key"),
            "{err}"
        );
    }
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn endpoint_urls_event_types_and_descriptions_are_bounded() {
    let app = spawn_app().await;
    let id = create_endpoint(&app).await;
    let before = snapshot(&app.pool).await;
    let long_url = format!("http://127.0.0.1:9/{}", "a".repeat(60 * 1024));
    let many: Vec<&str> = vec!["booking.*"; 5000];
    let cases = [
        (json!({ "url": long_url, "event_types": ["*"] }), "url"),
        (
            json!({ "url": "http://127.0.0.1:9/x", "event_types": many }),
            "event_types",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "event_types": vec!["*"; 33] }),
            "event_types",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "event_types": ["*"], "description": "d".repeat(1025) }),
            "description",
        ),
    ];
    for (body, field) in &cases {
        let resp = app
            .post("/v1/webhook-endpoints")
            .json(body)
            .send()
            .await
            .unwrap();
        let (status, code, err) = json_error(resp).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "validation_failed"),
            "{field}"
        );
        assert_eq!(fields(&err), [*field]);

        // The same bounds on PATCH.
        let mut patch = body.clone();
        patch.as_object_mut().unwrap().retain(|k, _| k == field);
        let resp = app
            .http
            .patch(format!("{}/v1/webhook-endpoints/{id}", app.base))
            .bearer_auth(TOKEN)
            .json(&patch)
            .send()
            .await
            .unwrap();
        let (status, _, err) = json_error(resp).await;
        assert_eq!(status, 422, "PATCH {field}");
        assert_eq!(fields(&err), [*field]);
    }
    // 32 patterns are accepted.
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": "http://127.0.0.1:9/x", "event_types": vec!["*"; 32] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let after = snapshot(&app.pool).await;
    let endpoints = |s: &[(String, i64, String)]| {
        s.iter()
            .find(|(t, ..)| t == "webhook_endpoints")
            .map(|(_, n, _)| *n)
    };
    assert_eq!(endpoints(&after), endpoints(&before).map(|n| n + 1));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    for header in [
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
        format!("Bearer {TOKEN}"),
    ] {
        let resp = app
            .http
            .get(format!("{}/v1/sagas", app.base))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{header}");
    }
    let resp = app
        .http
        .get(format!("{}/v1/sagas", app.base))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    let (status, code, _) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
}

#[tokio::test]
async fn unknown_v1_routes_ask_for_the_token_before_saying_anything() {
    let app = spawn_app().await;
    let before = snapshot(&app.pool).await;
    let anonymous = |method: &str, path: &str| {
        app.http
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
    };
    for (method, path) in [
        ("GET", "/v1/no-such-thing"),
        ("GET", "/v1"),
        ("POST", "/v1/sagas/x/y/z"),
        ("GET", "/v1/sagas"),
        ("DELETE", "/v1/sagas"),
    ] {
        let (status, code, _) = json_error(anonymous(method, path).send().await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "unauthorized"),
            "{method} {path}"
        );
        let authed = anonymous(method, path)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        if path == "/v1/sagas" && method == "GET" {
            assert_eq!(authed.status(), 200);
            continue;
        }
        let (status, code, _) = json_error(authed).await;
        let expected = if method == "DELETE" {
            (405, "method_not_allowed")
        } else {
            (404, "not_found")
        };
        assert_eq!((status, code.as_str()), expected, "{method} {path}");
    }
    // Outside /v1 an unknown route is a plain (JSON) 404, a known one with another method a 405.
    let (status, code, _) = json_error(anonymous("GET", "/nope").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    for (method, path) in [("POST", "/healthz"), ("GET", "/webhooks/stripe")] {
        let (status, code, _) = json_error(anonymous(method, path).send().await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (405, "method_not_allowed"),
            "{method} {path}"
        );
    }
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn a_stripe_signature_flood_is_refused_by_its_size_before_any_hmac() {
    let app = spawn_app().await;
    let before = snapshot(&app.pool).await;
    let t = chrono::Utc::now().timestamp();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(255 * 1024 - 20));
    let bogus = format!(",v1={}", "ab".repeat(32));
    let max = sagad::inbound::stripe::signature::MAX_SIGNATURES;
    for (header, expected) in [
        (format!("t={t}{}", bogus.repeat(1000)), "longer than"),
        (format!("t={t}{}", ",v1=0".repeat(max + 1)), "more than"),
        (
            format!("t={}{}", t - 3600, bogus.repeat(max)),
            "outside the tolerance",
        ),
    ] {
        let resp = app
            .http
            .post(format!("{}/webhooks/stripe", app.base))
            .header("stripe-signature", header)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, code, err) = json_error(resp).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn a_signed_stripe_event_with_nul_characters_is_kept_losslessly_and_processed() {
    let app = spawn_app().await;
    // NUL in a description, in metadata keys and in the id and type themselves.
    let body = r#"{"id": "evt_nul_\u0000", "object": "event", "type": "payment_intent.succeeded",
        "created": 1700000000, "livemode": false, "api_version": "2026-09-30.endive",
        "data": {"object": {"id": "pi_nul_unknown", "object": "payment_intent",
                            "description": "room\u0000 7", "metadata": {"k\u0000": "v"}}}}"#;
    let (status, answer) = app.post_signed_stripe_event(body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], false);

    let id = "evt_nul_\u{FFFD}";
    let (payload, raw, event_type): (Value, Option<Vec<u8>>, String) =
        sqlx::query_as("SELECT payload, raw_body, event_type FROM stripe_events WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(event_type, "payment_intent.succeeded");
    assert_eq!(raw.as_deref(), Some(body.as_bytes()), "the body as signed");
    assert_eq!(payload["data"]["object"]["description"], "room\u{FFFD} 7");
    assert_eq!(payload["data"]["object"]["metadata"]["k\u{FFFD}"], "v");

    // Processed as usual: Stripe does not know the PaymentIntent, so it is kept as unmatched.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if status == "unmatched" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event stayed {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A redelivery is a duplicate, not a second row; a NUL in the type is kept too.
    let (status, answer) = app.post_signed_stripe_event(body).await;
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    let odd = body
        .replace("evt_nul_", "evt_nul_type_")
        .replace("payment_intent.succeeded", "custom.\\u0000");
    let (status, _) = app.post_signed_stripe_event(&odd).await;
    assert_eq!(status, 200);
    let (rows, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE raw_body IS NULL) FROM stripe_events",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((rows, plain), (2, 0));
}

/// The inbox row's final status and outcome.
async fn settled_stripe_event(app: &TestApp, id: &str) -> (String, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, outcome FROM stripe_events WHERE id = $1")
                .bind(id)
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        if let Some((status, outcome)) = row
            && !matches!(status.as_str(), "pending" | "processing")
        {
            return (status, outcome.unwrap_or_default());
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never settled");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn charge_refunded(id: &str, pi: &str, amount_refunded: i64) -> String {
    json!({ "id": id, "object": "event", "type": "charge.refunded", "created": 1700000000,
            "livemode": false, "api_version": "2026-09-30.endive",
            "data": { "object": { "id": "ch_forged", "object": "charge", "payment_intent": pi,
                                  "amount": 45000, "amount_refunded": amount_refunded,
                                  "refunded": true,
                                  "refunds": { "data": [{ "id": "re_forged", "amount": amount_refunded }] } } } })
    .to_string()
}

#[tokio::test]
async fn a_signed_refund_that_stripe_does_not_show_records_nothing() {
    let app = spawn_app().await;
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": "http://127.0.0.1:9/all", "event_types": ["*"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = app
        .start_booking(booking_input("forged-refund", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "completed");
    let pi = app.payment_intents_of(id)[0].id.clone();
    let published = |kind: &'static str| {
        let pool = app.pool.clone();
        async move {
            let events: i64 =
                sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
                    .bind(kind)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let deliveries: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id
                 WHERE e.event_type = $1",
            )
            .bind(kind)
            .fetch_one(&pool)
            .await
            .unwrap();
            (events, deliveries)
        }
    };
    let all_events =
        || async { crate::harness::count(&app.pool, "SELECT count(*) FROM events").await };
    let events_before = all_events().await;

    // Signed, but Stripe shows no refund at all.
    let (status, _) = app
        .post_signed_stripe_event(&charge_refunded("evt_forged_1", &pi, 45000))
        .await;
    assert_eq!(status, 200);
    let (status, outcome) = settled_stripe_event(&app, "evt_forged_1").await;
    assert_eq!(status, "processed");
    assert!(outcome.contains("the event claimed 45000"), "{outcome}");
    assert_eq!(published("PaymentRefunded").await, (0, 0));
    assert_eq!(all_events().await, events_before);
    assert_eq!(app.double.payment_intent(&pi).unwrap().amount_refunded, 0);

    // A real partial refund: the same claim of 45000 records what Stripe shows, 10000.
    let client =
        sagad::stripe::client::StripeClient::new("sk_test_outside", Some(&app.double.base_url()))
            .unwrap();
    let refund = client
        .refund_amount(&pi, 10000, "dashboard-partial-1")
        .await
        .unwrap();
    let (status, _) = app
        .post_signed_stripe_event(&charge_refunded("evt_forged_2", &pi, 45000))
        .await;
    assert_eq!(status, 200);
    let (status, outcome) = settled_stripe_event(&app, "evt_forged_2").await;
    assert_eq!(status, "processed", "{outcome}");
    let (amount, refund_id): (i64, String) = sqlx::query_as(
        "SELECT (payload->>'amount')::bigint, payload->>'refund_id' FROM events
         WHERE aggregate_id = $1 AND event_type = 'PaymentRefunded'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((amount, refund_id), (10000, refund.id));
    let (events, deliveries) = published("PaymentRefunded").await;
    assert_eq!((events, deliveries), (1, 1));
}

#[tokio::test]
async fn special_purpose_and_embedded_ipv4_addresses_are_refused_at_registration() {
    let mut strict = crate::harness::test_outbound_config();
    strict.allow_nets.clear();
    let app = crate::harness::spawn_app_with(crate::harness::AppOptions {
        role: sagad::config::Role::Api,
        outbound: strict,
        ..Default::default()
    })
    .await;
    let before = snapshot(&app.pool).await;
    for url in [
        "http://[::127.0.0.1]/hook",
        "http://[64:ff9b:1::a00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",
        "http://192.0.0.1/hook",
        "http://198.18.0.1/hook",
        "http://192.0.2.1/hook",
        "http://[2001:db8::1]/hook",
    ] {
        let resp = app
            .post("/v1/webhook-endpoints")
            .json(&json!({ "url": url, "event_types": ["*"] }))
            .send()
            .await
            .unwrap();
        let (status, code, body) = json_error(resp).await;
        assert_eq!((status, code.as_str()), (422, "validation_failed"), "{url}");
        assert_eq!(fields(&body), ["url"], "{url}");
    }
    assert_eq!(snapshot(&app.pool).await, before);
}

/// A console session over plain HTTP: the session cookie and the CSRF token its forms carry.
pub(crate) async fn console_session(app: &TestApp, http: &reqwest::Client) -> (String, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("token", OPS_TOKEN), ("next", "/console")])
        .finish();
    let r = http
        .post(format!("{}/console/sign-in", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in");
    let set = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = http
        .get(format!("{}/console/stuck", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF field in {page}"))
        .to_owned();
    (cookie, csrf)
}

/// Every console route: its method, its path (`{id}` stands for the id below), the query
/// parameters or form fields it reads, and an id that exists.
struct ConsoleRoute {
    post: bool,
    path: &'static str,
    fields: &'static [&'static str],
}

const fn get(path: &'static str, fields: &'static [&'static str]) -> ConsoleRoute {
    ConsoleRoute {
        post: false,
        path,
        fields,
    }
}

const fn post(path: &'static str, fields: &'static [&'static str]) -> ConsoleRoute {
    ConsoleRoute {
        post: true,
        path,
        fields,
    }
}

const CONSOLE_ROUTES: &[ConsoleRoute] = &[
    get("/console", &[]),
    get("/console/live", &[]),
    get(
        "/console/sagas",
        &["q", "status", "saga", "step", "from", "to", "before"],
    ),
    get("/console/sagas/{saga}", &["done", "redelivered"]),
    post("/console/sagas/{saga}/retry", &["csrf", "reason"]),
    post(
        "/console/sagas/{saga}/resolve",
        &["csrf", "outcome", "reason"],
    ),
    post("/console/sagas/{saga}/cancel", &["csrf", "reason"]),
    post(
        "/console/deliveries/{delivery}/redeliver",
        &["csrf", "saga", "endpoint"],
    ),
    get("/console/stuck", &[]),
    post("/console/stuck/retry", &["csrf", "step", "since", "reason"]),
    get("/console/bookings", &["listing", "from"]),
    get("/console/webhooks", &[]),
    get(
        "/console/webhooks/{endpoint}",
        &["status", "before", "notice"],
    ),
    post("/console/webhooks/{endpoint}/enabled", &["csrf", "enabled"]),
    post("/console/webhooks/{endpoint}/rotate-secret", &["csrf"]),
    post("/console/webhooks/{endpoint}/redrive", &["csrf", "since"]),
    get("/console/stripe", &["status", "type", "reprocessed"]),
    post("/console/stripe/{event}/reprocess", &["csrf"]),
    get("/console/no-such-page", &[]),
    // Last: a probe these let through would sign in, or end the session the others use.
    get("/console/sign-in", &["next"]),
    post("/console/sign-in", &["token", "next"]),
    post("/console/sign-out", &["csrf"]),
];

/// One request of the probe: its route, what is probed, the request's path and its fields.
type Probe<'r> = (&'r ConsoleRoute, String, String, Vec<(String, String)>);

/// The value a field has when another one is probed: what a form would send.
fn usual(field: &str, csrf: &str, listing: &str) -> String {
    match field {
        "csrf" => csrf.to_owned(),
        "token" => OPS_TOKEN.to_owned(),
        "next" => "/console".to_owned(),
        "reason" => "probing".to_owned(),
        "outcome" => "compensated".to_owned(),
        "enabled" => "false".to_owned(),
        "listing" => listing.to_owned(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn nul_and_out_of_range_times_anywhere_in_the_console_are_a_400_page_that_writes_nothing() {
    let app = spawn_app().await;
    let saga = app
        .start_booking(booking_input("console-nul", "pm_card_visa"))
        .await;
    app.wait_terminal(saga).await;
    let endpoint = create_endpoint(&app).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, csrf) = console_session(&app, &http).await;
    let before = settled_snapshot(&app.pool).await;
    let ids = [
        ("{saga}", saga.to_string()),
        ("{delivery}", uuid::Uuid::now_v7().to_string()),
        ("{endpoint}", endpoint),
        ("{event}", "evt_console_nul".to_owned()),
    ];

    let mut probes: Vec<Probe> = Vec::new();
    for route in CONSOLE_ROUTES {
        let mut path = route.path.to_owned();
        for (name, id) in &ids {
            path = path.replace(name, id);
        }
        let usual: Vec<(String, String)> = route
            .fields
            .iter()
            .map(|f| (f.to_string(), usual(f, &csrf, "console-nul")))
            .collect();
        let mut with = |what: String, path: String, field: Option<(&str, &str)>| {
            let mut fields = usual.clone();
            if let Some((name, value)) = field {
                for (k, v) in &mut fields {
                    if k == name {
                        *v = value.to_owned();
                    }
                }
            }
            probes.push((route, what, path, fields));
        };
        for field in route.fields {
            with(
                format!("NUL in {field}"),
                path.clone(),
                Some((field, "a\0b")),
            );
            if ["from", "to", "since"].contains(field) {
                for t in ["-262143-01-01T00:00", "+262143-12-31T00:00", "0000-01-01"] {
                    with(format!("{field}={t}"), path.clone(), Some((field, t)));
                }
                if route.path == "/console/bookings" {
                    for t in ["-262143-01-01", "+262143-12-31"] {
                        with(format!("{field}={t}"), path.clone(), Some((field, t)));
                    }
                }
            }
        }
        // NUL in each path segment after /console.
        let segments: Vec<&str> = path.split('/').collect();
        for i in 2..segments.len() {
            let mut s = segments.clone();
            let bad = format!("{}%00x", s[i]);
            s[i] = &bad;
            with(format!("NUL in path segment {i}"), s.join("/"), None);
        }
        // NUL in the name of a parameter or field.
        with("NUL in a name".into(), path.clone(), None);
        if let Some(last) = probes.last_mut() {
            last.3.push(("a\0b".into(), "x".into()));
        }
    }

    let mut wrong = Vec::new();
    for (route, what, path, fields) in &probes {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields.iter())
            .finish();
        let req = if route.post {
            http.post(format!("{}{path}", app.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(encoded)
        } else {
            http.get(format!("{}{path}?{encoded}", app.base))
        };
        let context = format!("{} {path} ({what})", route.path);
        let resp = match req.header("cookie", &cookie).send().await {
            Ok(r) => r,
            Err(e) => {
                wrong.push(format!("{context}: {e}"));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let html = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
        let text = resp.text().await.unwrap_or_default();
        // What the page says is wrong.
        let message = text
            .split("<p class=\"message\">")
            .nth(1)
            .or_else(|| text.split("role=\"alert\">").nth(1))
            .and_then(|s| s.split("</p>").next())
            .unwrap_or("");
        let nul = what.starts_with("NUL");
        if !(400..500).contains(&status)
            || !html
            || (nul && (status != 400 || !message.contains("NUL character")))
        {
            wrong.push(format!("{context}: {status} {message:?}"));
        }
        let now = snapshot(&app.pool).await;
        if now != before {
            let changed: Vec<&str> = now
                .iter()
                .zip(&before)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0.as_str())
                .collect();
            wrong.push(format!("{context}: wrote {changed:?}"));
            break;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} probes:\n{}",
        wrong.len(),
        probes.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn a_console_query_that_cannot_be_read_is_a_400_page_naming_the_parameter() {
    let app = spawn_app().await;
    let saga = app
        .start_booking(booking_input("console-query", "pm_card_visa"))
        .await;
    app.wait_terminal(saga).await;
    let endpoint = create_endpoint(&app).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, csrf) = console_session(&app, &http).await;
    let before = settled_snapshot(&app.pool).await;
    let ids = [("{saga}", saga.to_string()), ("{endpoint}", endpoint)];

    // Every page that reads a query, each of its parameters given twice (a page reads one value).
    let mut probed = 0;
    let mut wrong = Vec::new();
    for route in CONSOLE_ROUTES
        .iter()
        .filter(|r| !r.post && !r.fields.is_empty())
    {
        let mut path = route.path.to_owned();
        for (name, id) in &ids {
            path = path.replace(name, id);
        }
        for field in route.fields {
            let mut pairs: Vec<(String, String)> = route
                .fields
                .iter()
                .map(|f| (f.to_string(), usual(f, &csrf, "console-query")))
                .collect();
            pairs.push((field.to_string(), "again".into()));
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            let resp = http
                .get(format!("{}{path}?{query}", app.base))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            probed += 1;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let text = resp.text().await.unwrap_or_default();
            let message = text
                .split("<p class=\"message\">")
                .nth(1)
                .and_then(|s| s.split("</p>").next())
                .unwrap_or("");
            if status != 400
                || !content_type.starts_with("text/html")
                || !message.contains(&format!("`{field}`"))
            {
                wrong.push(format!(
                    "{} ({field} twice): {status} {content_type} {message:?} {text:.200}",
                    route.path
                ));
            }
        }
    }
    assert_eq!(probed, 18, "the console pages' query parameters");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(snapshot(&app.pool).await, before);
}
