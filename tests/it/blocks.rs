//! Host blocks and availability: one exclusion constraint for holds, bookings and blocks.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{TestApp, booking_input, count, future_day, spawn_app};

fn stay(listing: &str, a: u64, b: u64, pm: &str) -> Value {
    let mut input = booking_input(listing, pm);
    input["check_in"] = json!(future_day(a));
    input["check_out"] = json!(future_day(b));
    input
}

async fn post_block(app: &TestApp, listing: &str, body: Value) -> (u16, Value) {
    let resp = app
        .post(&format!("/v1/listings/{listing}/blocks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn block_body(a: u64, b: u64) -> Value {
    json!({"from": future_day(a), "to": future_day(b), "reason": "roof repairs"})
}

async fn availability(
    app: &TestApp,
    listing: &str,
    a: u64,
    b: u64,
) -> Vec<(String, String, String)> {
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
            )
        })
        .collect()
}

fn range(a: u64, b: u64, state: &str) -> (String, String, String) {
    (future_day(a), future_day(b), state.to_owned())
}

async fn block_events(app: &TestApp) -> Vec<(String, i32, Value)> {
    sqlx::query_as(
        "SELECT event_type, version, payload FROM events WHERE aggregate_type = 'listing_block'
         ORDER BY seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn blocks_share_the_exclusion_constraint_and_availability_shows_every_kind_of_range() {
    let app = spawn_app().await;
    let booked = app
        .start_booking(stay("cottage", 0, 3, "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(booked).await["status"], "completed");
    // 3-D Secure parks this one while it holds its nights.
    let held = app
        .start_booking(stay("cottage", 5, 7, "pm_card_authenticationRequired"))
        .await;
    app.wait_status(held, &["waiting"]).await;

    // A block over the booking is refused, naming it; nothing is written.
    let (status, err) = post_block(&app, "cottage", block_body(2, 4)).await;
    assert_eq!(status, 409, "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("booking {booked}")), "{msg}");
    let (status, err) = post_block(&app, "cottage", block_body(6, 8)).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("hold of booking {held}")),
        "{err}"
    );
    assert!(block_events(&app).await.is_empty());

    let (status, block) = post_block(&app, "cottage", block_body(10, 14)).await;
    assert_eq!(status, 201, "{block}");
    assert_eq!(block["status"], "active");
    assert_eq!(block["created_by"], "token-1");
    let block_id = block["id"].as_str().unwrap().to_owned();
    // Blocks cannot overlap each other either.
    let (status, err) = post_block(&app, "cottage", block_body(13, 15)).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("block {block_id}")),
        "{err}"
    );

    assert_eq!(
        availability(&app, "cottage", 1, 16).await,
        [
            range(1, 3, "booked"),
            range(3, 5, "free"),
            range(5, 7, "held"),
            range(7, 10, "free"),
            range(10, 14, "blocked"),
            range(14, 16, "free"),
        ]
    );

    // A booking over blocked nights fails as over anyone else's.
    let refused = app
        .start_booking(stay("cottage", 12, 13, "pm_card_visa"))
        .await;
    let v = app.wait_terminal(refused).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(v["failure"]["reason"], "dates_unavailable", "{v:#}");

    let resp = app
        .http
        .delete(format!(
            "{}/v1/listings/cottage/blocks/{block_id}",
            app.base
        ))
        .bearer_auth(crate::harness::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let removed: Value = resp.json().await.unwrap();
    assert_eq!(removed["status"], "released");
    let events = block_events(&app).await;
    let kinds: Vec<(&str, i32)> = events.iter().map(|(t, v, _)| (t.as_str(), *v)).collect();
    assert_eq!(kinds, [("ListingBlocked", 1), ("ListingUnblocked", 2)]);
    assert_eq!(events[0].2["reason"], "roof repairs");
    assert_eq!(events[0].2["actor"], "token-1");
    assert_eq!(events[0].2["block_id"], block_id.as_str());
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'listing_block'
           AND event_type IN ('ListingBlocked', 'ListingUnblocked')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(published, 2);
    assert_eq!(
        availability(&app, "cottage", 10, 14).await,
        [range(10, 14, "free")]
    );
    let again = app
        .start_booking(stay("cottage", 12, 13, "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(again).await["status"], "completed");
}

#[tokio::test]
async fn bad_block_requests_get_a_precise_4xx_and_write_nothing() {
    let app = spawn_app().await;
    let nothing_written = async || {
        assert_eq!(
            count(&app.pool, "SELECT count(*) FROM inventory_claims").await,
            0
        );
        assert_eq!(count(&app.pool, "SELECT count(*) FROM events").await, 0);
    };
    let resp = app
        .post("/v1/listings/loft/blocks")
        .header("content-type", "application/json")
        .body("{\"from\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let past = (chrono::Utc::now().date_naive() - chrono::Days::new(3)).to_string();
    let (status, err) = post_block(
        &app,
        "loft",
        json!({"from": past, "to": "2020-01-01", "reason": " "}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    let fields: Vec<&str> = err["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["from", "to", "reason"], "{err}");
    let (status, err) = post_block(&app, "loft", json!({"from": future_day(1)})).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["fields"].as_array().unwrap().len(), 2, "{err}");
    let mut body = block_body(1, 2);
    body["until"] = json!("forever");
    let (status, err) = post_block(&app, "loft", body).await;
    assert_eq!(status, 422, "{err}");
    let (status, _) = post_block(&app, "no%20such%20id", block_body(1, 2)).await;
    assert_eq!(status, 400);
    nothing_written().await;

    let delete = async |path: &str| {
        app.http
            .delete(format!("{}{path}", app.base))
            .bearer_auth(crate::harness::TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(delete("/v1/listings/loft/blocks/not-a-uuid").await, 400);
    assert_eq!(
        delete(&format!("/v1/listings/loft/blocks/{}", Uuid::new_v4())).await,
        404
    );
    // Another listing's block is not this listing's.
    let (status, block) = post_block(&app, "loft", block_body(1, 2)).await;
    assert_eq!(status, 201, "{block}");
    let id = block["id"].as_str().unwrap();
    assert_eq!(
        delete(&format!("/v1/listings/attic/blocks/{id}")).await,
        404
    );
    assert_eq!(delete(&format!("/v1/listings/loft/blocks/{id}")).await, 200);
    assert_eq!(delete(&format!("/v1/listings/loft/blocks/{id}")).await, 409);
    assert_eq!(block_events(&app).await.len(), 2);

    for query in [
        "",
        "from=2030-01-01",
        "from=2030-01-05&to=2030-01-05",
        "from=2030-01-01&to=2045-01-01",
        "from=soon&to=2030-01-02",
    ] {
        let resp = app
            .get(&format!("/v1/listings/loft/availability?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
    }
}

/// A block and a booking race for the same nights, 50 times at once: each time exactly one wins.
#[tokio::test]
async fn a_block_and_a_booking_racing_for_the_same_nights_never_both_win() {
    let app = spawn_app().await;
    // Each race in its own task, all at once: a booking's start and a block's POST.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (http, base) = (app.http.clone(), app.base.clone());
        let listing = format!("race-{i}");
        let booking = json!({"saga": "booking", "input": stay(&listing, 40, 43, "pm_card_visa")});
        let block = block_body(41, 44);
        tasks.spawn(async move {
            let post = |path: String, body: Value| {
                http.post(format!("{base}{path}"))
                    .bearer_auth(crate::harness::TOKEN)
                    .json(&body)
                    .send()
            };
            let (started, blocked) = tokio::join!(
                post("/v1/sagas".into(), booking),
                post(format!("/v1/listings/{listing}/blocks"), block),
            );
            let started: Value = started.unwrap().json().await.unwrap();
            let blocked = blocked.unwrap();
            let status = blocked.status().as_u16();
            let body: Value = blocked.json().await.unwrap();
            let id: Uuid = started["id"].as_str().unwrap().parse().unwrap();
            (listing, id, (status, body))
        });
    }
    let results = tasks.join_all().await;
    let (mut blocks_won, mut bookings_won) = (0, 0);
    for (listing, booking, (status, body)) in results {
        let saga = app.wait_terminal(booking).await;
        let booked = saga["status"] == "completed";
        let blocked = status == 201;
        assert!(
            booked != blocked,
            "{listing}: booking {} and block {status} {body}",
            saga["status"]
        );
        if blocked {
            assert_eq!(saga["failure"]["reason"], "dates_unavailable", "{saga:#}");
            blocks_won += 1;
        } else {
            assert_eq!(status, 409, "{listing}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&booking.to_string()),
                "{listing}: {body}"
            );
            bookings_won += 1;
        }
    }
    assert_eq!(blocks_won + bookings_won, 50);
    assert_eq!(app.active_claims().await, 50);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM inventory_claims a JOIN inventory_claims b
               ON a.listing_id = b.listing_id AND a.id < b.id AND a.stay && b.stay
             WHERE a.status = 'active' AND b.status = 'active'"
        )
        .await,
        0
    );
    eprintln!("blocks won {blocks_won}, bookings won {bookings_won}");
}
