//! The start-saga RPC's edges: authentication, validation, idempotency, limits, reads.

use serde_json::{Value, json};

use crate::harness::{TestApp, booking_input, count, eventually, spawn_app};

async fn nothing_stored(app: &TestApp) {
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sagas").await, 0);
    assert_eq!(count(&app.pool, "SELECT count(*) FROM events").await, 0);
    assert_eq!(count(&app.pool, "SELECT count(*) FROM bookings").await, 0);
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn start_is_idempotent_and_refuses_a_reused_key_with_another_body() {
    let app = spawn_app().await;
    let body = json!({ "saga": "booking", "input": booking_input("villa-9", "pm_card_visa") });
    let send = |body: Value| {
        app.post("/v1/sagas")
            .header("Idempotency-Key", "booking-42")
            .json(&body)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(
        first.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/sagas/")
    );
    let first: Value = first.json().await.unwrap();
    let second: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(first["id"], second["id"], "same key and body → same saga");
    assert_eq!(first["url"], second["url"]);

    let mut other = body.clone();
    other["input"]["amount"] = json!(1);
    let (status, err) = error_of(send(other).await.unwrap()).await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["code"], "idempotency_key_reused");

    let id = first["id"].as_str().unwrap().parse().unwrap();
    app.wait_terminal(id).await;
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sagas").await, 1);
    assert_eq!(app.double.counters().payment_intents_created, 1);
}

#[tokio::test]
async fn bad_input_gets_a_precise_4xx_and_stores_nothing() {
    let app = spawn_app().await;
    let post = |body: String| {
        app.post("/v1/sagas")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A 422 and its error body.
    let unprocessable = async |body: Value| {
        let (status, err) = error_of(post(body.to_string()).await.unwrap()).await;
        assert_eq!(status, 422, "{err}");
        err
    };

    let (status, err) = error_of(post("{\"saga\": \"booking\", ".into()).await.unwrap()).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );

    let err = unprocessable(json!({"saga": "booking", "input": {}})).await;
    let fields: Vec<&str> = err["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "input.listing_id",
            "input.guest_id",
            "input.check_in",
            "input.check_out",
            "input.currency",
            "input.payment_method",
            "input.amount"
        ]
    );
    assert!(
        err["error"]["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("required")
    );

    let mut input = booking_input("x", "pm_card_visa");
    input["check_out"] = input["check_in"].clone();
    let err = unprocessable(json!({"saga": "booking", "input": input})).await;
    assert_eq!(err["error"]["fields"][0]["field"], "input.check_out");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be after check_in")
    );

    let mut input = booking_input("x", "pm_card_visa");
    input["amount"] = json!(-100);
    let err = unprocessable(json!({"saga": "booking", "input": input})).await;
    assert_eq!(err["error"]["fields"][0]["field"], "input.amount");

    let mut input = booking_input("x", "pm_card_visa");
    input["currency"] = json!("EURO");
    input["payment_method"] = json!("card_123");
    let err = unprocessable(json!({"saga": "booking", "input": input})).await;
    assert_eq!(err["error"]["fields"].as_array().unwrap().len(), 2);

    let err =
        unprocessable(json!({"saga": "teleport", "input": booking_input("x", "pm_card_visa")}))
            .await;
    assert_eq!(err["error"]["fields"][0]["field"], "saga");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("known sagas: booking")
    );

    let mut input = booking_input("x", "pm_card_visa");
    input["coupon"] = json!("FREE");
    let err = unprocessable(json!({"saga": "booking", "input": input})).await;
    assert!(
        err["error"]["message"].as_str().unwrap().contains("coupon"),
        "{err}"
    );

    let huge =
        json!({"saga": "booking", "input": booking_input(&"x".repeat(70_000), "pm_card_visa")});
    let (status, err) = error_of(post(huge.to_string()).await.unwrap()).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    let resp = app
        .http
        .post(format!("{}/v1/sagas", app.base))
        .json(&json!({"saga": "booking", "input": booking_input("x", "pm_card_visa")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let resp = app
        .http
        .post(format!("{}/v1/sagas", app.base))
        .bearer_auth("not-the-token")
        .json(&json!({"saga": "booking", "input": booking_input("x", "pm_card_visa")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp = app
        .post("/v1/sagas?wait=forever")
        .json(&json!({"saga": "booking", "input": booking_input("x", "pm_card_visa")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    nothing_stored(&app).await;
}

#[tokio::test]
async fn reads_list_with_keyset_pagination_and_show_events() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.start_booking(booking_input(&format!("flat-{i}"), "pm_card_visa"))
                .await,
        );
    }
    ids.push(
        app.start_booking(booking_input("flat-x", "pm_card_chargeDeclined"))
            .await,
    );
    for id in &ids {
        app.wait_terminal(*id).await;
    }

    // Page through everything two at a time, newest first, without repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = "/v1/sagas?limit=2".to_owned();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app.get_json(&url).await;
        for s in page["sagas"].as_array().unwrap() {
            seen.push(s["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let page: Value = app
        .get_json("/v1/sagas?status=compensated&saga=booking")
        .await;
    assert_eq!(page["sagas"].as_array().unwrap().len(), 1);
    assert_eq!(page["sagas"][0]["id"], ids[5].to_string());
    assert_eq!(
        app.get("/v1/sagas?status=nope")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        app.get("/v1/sagas?limit=0").send().await.unwrap().status(),
        400
    );

    let events: Value = app.get_json(&format!("/v1/sagas/{}/events", ids[0])).await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 7);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["version"], i as i64 + 1, "versions are gapless");
        assert_eq!(e["metadata"]["correlation_id"], ids[0].to_string());
    }
    assert_eq!(events[0]["event_type"], "BookingRequested");
    assert_eq!(events[0]["payload"]["listing_id"], "flat-0");

    assert_eq!(
        app.get(&format!("/v1/sagas/{}", uuid::Uuid::now_v7()))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.get("/v1/sagas/not-a-uuid")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

#[tokio::test]
async fn the_event_store_refuses_update_and_delete() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("inn-1", "pm_card_visa"))
        .await;
    app.wait_terminal(id).await;
    for sql in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&app.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // Two writers of one version: the unique key refuses the second.
    let err = sqlx::query(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, payload)
         VALUES (gen_random_uuid(), 'booking', $1, 1, 'Dup', '{}')",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap_err();
    assert_eq!(sagad::store::sqlstate(&err).as_deref(), Some("23505"));
    assert_eq!(count(&app.pool, "SELECT count(*) FROM events").await, 7);
}

#[tokio::test]
async fn openapi_health_and_metrics_are_served() {
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/sagas",
        "/v1/sagas/{id}",
        "/v1/sagas/{id}/events",
        "/v1/sagas/{id}/cancel",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["SagaView"].is_object());
    assert!(doc["components"]["schemas"]["CreatedEndpoint"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready["checks"],
        json!({"database": true, "migrations": true, "workers": true})
    );

    let id = app
        .start_booking(booking_input("inn-2", "pm_card_visa"))
        .await;
    app.wait_terminal(id).await;
    // The database's gauges are read by a maintenance round, not at scrape time: the first
    // scrape after start-up may come before the first round has read them.
    let metrics = eventually("sagad_queue_depth in /metrics", || async {
        let metrics = app.metrics().await;
        metrics.contains("sagad_queue_depth").then_some(metrics)
    })
    .await;
    for gauge in [
        "sagad_db_pool_connections",
        "sagad_db_pool_idle_connections",
        "sagad_db_pool_kept_connections",
    ] {
        assert!(metrics.contains(gauge), "{gauge}: {metrics}");
    }
    // Requests are timed by route: the matched path, not the saga's own (ids would make a series
    // per saga).
    assert!(
        metrics.contains(
            r#"sagad_http_request_duration_seconds_bucket{method="POST",route="/v1/sagas",status="202",le="0.0075"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"route="/v1/sagas/{id}""#), "{metrics}");
    assert!(!metrics.contains(&id.to_string()), "{metrics}");
    // The start RPC's wait for a pooled connection, apart.
    assert!(
        metrics.contains(r#"sagad_db_acquire_seconds_bucket{site="start_saga",le="0.0075"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_past_check_in_a_long_stay_a_zero_amount_and_an_unknown_policy_are_all_refused() {
    let app = spawn_app().await;
    let today = chrono::Utc::now().date_naive();
    let mut input = booking_input("villa-past", "pm_card_visa");
    input["check_in"] = json!((today - chrono::Days::new(2)).to_string());
    input["check_out"] = json!((today + chrono::Days::new(400)).to_string());
    input["amount"] = json!(0);
    input["cancellation_policy"] = json!("lenient");
    let resp = app
        .post("/v1/sagas")
        .json(&json!({"saga": "booking", "input": input}))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 422, "{err}");
    let fields: Vec<&str> = err["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "input.check_in",
            "input.check_out",
            "input.amount",
            "input.cancellation_policy"
        ],
        "{err}"
    );
    let messages = err["error"]["fields"].to_string();
    assert!(messages.contains("in the past"), "{messages}");
    assert!(messages.contains("at most 365 nights"), "{messages}");
    nothing_stored(&app).await;

    // A named policy is kept with the saga; without one, the configured default applies.
    let mut input = booking_input("villa-policy", "pm_card_visa");
    input["cancellation_policy"] = json!("strict");
    let resp: Value = app
        .post("/v1/sagas")
        .json(&json!({"saga": "booking", "input": input}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["input"]["cancellation_policy"], "strict", "{resp}");
    let resp: Value = app
        .post("/v1/sagas")
        .json(&json!({"saga": "booking", "input": booking_input("villa-default", "pm_card_visa")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["input"]["cancellation_policy"], "moderate", "{resp}");
}
