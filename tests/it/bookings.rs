//! The bookings read API: filters, keyset pagination, one booking with its money and history,
//! and the refusals.

use std::collections::HashSet;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{TestApp, booking_input, future_day, spawn_app};

async fn page(app: &TestApp, query: &str) -> Value {
    let resp = app
        .get(&format!("/v1/bookings?{query}"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// The ids of every booking the query lists, following `next_cursor` page by page.
async fn all_ids(app: &TestApp, query: &str) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let q = match &cursor {
            Some(c) => format!("{query}&cursor={c}"),
            None => query.to_owned(),
        };
        let body = page(app, &q).await;
        ids.extend(
            body["bookings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["saga_id"].as_str().unwrap().parse::<Uuid>().unwrap()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
    panic!("{query}: more than 100 pages");
}

fn set(ids: &[Uuid]) -> HashSet<Uuid> {
    ids.iter().copied().collect()
}

#[tokio::test]
async fn bookings_are_listed_by_guest_listing_status_and_overlapping_stay_page_by_page() {
    let app = spawn_app().await;
    // (listing, guest, first night, departure, card)
    let plan = [
        ("loft-1", "ann", 0, 3, "pm_card_visa"),
        ("loft-1", "bob", 3, 5, "pm_card_visa"),
        ("loft-1", "ann", 10, 12, "pm_card_visa"),
        ("loft-2", "ann", 0, 2, "pm_card_visa"),
        ("loft-2", "cid", 4, 6, "pm_card_chargeDeclined"),
    ];
    let mut ids = Vec::new();
    for (listing, guest, a, b, pm) in plan {
        let mut input = booking_input(listing, pm);
        input["guest_id"] = json!(guest);
        input["check_in"] = json!(future_day(a));
        input["check_out"] = json!(future_day(b));
        let id = app.start_booking(input).await;
        app.wait_terminal(id).await;
        ids.push(id);
    }

    // Newest first, two to a page, nothing twice.
    let listed = all_ids(&app, "limit=2").await;
    assert_eq!(listed, ids.iter().rev().copied().collect::<Vec<_>>());

    assert_eq!(
        set(&all_ids(&app, "guest_id=ann&limit=1").await),
        set(&[ids[0], ids[2], ids[3]])
    );
    assert_eq!(
        set(&all_ids(&app, "listing_id=loft-1").await),
        set(&[ids[0], ids[1], ids[2]])
    );
    assert_eq!(
        set(&all_ids(&app, "listing_id=loft-1&guest_id=ann").await),
        set(&[ids[0], ids[2]])
    );
    assert_eq!(all_ids(&app, "status=failed").await, [ids[4]]);
    assert_eq!(all_ids(&app, "status=confirmed").await.len(), 4);
    // [from, to) overlaps: a stay that ends on `from` or starts on `to` does not.
    let (d3, d4, d10) = (future_day(3), future_day(4), future_day(10));
    assert_eq!(
        set(&all_ids(&app, &format!("listing_id=loft-1&from={d3}&to={d4}")).await),
        set(&[ids[1]])
    );
    assert_eq!(
        set(&all_ids(&app, &format!("from={d4}&to={d10}")).await),
        set(&[ids[1], ids[4]])
    );
    assert_eq!(
        set(&all_ids(&app, &format!("to={d3}")).await),
        set(&[ids[0], ids[3]])
    );
    assert_eq!(
        set(&all_ids(&app, &format!("from={d10}&guest_id=ann&limit=1")).await),
        set(&[ids[2]])
    );
    let first = &page(&app, "guest_id=bob").await["bookings"][0];
    assert_eq!(first["listing_id"], "loft-1");
    assert_eq!(first["cancellation_policy"], "moderate");
}

#[tokio::test]
async fn a_booking_shows_its_saga_money_code_policy_and_history() {
    let app = spawn_app().await;
    let mut input = booking_input("chalet-3", "pm_card_visa");
    input["cancellation_policy"] = json!("flexible");
    let id = app.start_booking(input).await;
    app.wait_terminal(id).await;

    let b = app.get_json(&format!("/v1/bookings/{id}")).await;
    assert_eq!(b["saga_id"], id.to_string(), "{b:#}");
    assert_eq!(b["status"], "confirmed");
    assert_eq!(b["cancellation_policy"], "flexible");
    assert!(
        b["confirmation_code"].as_str().unwrap().starts_with("BK-"),
        "{b:#}"
    );
    assert_eq!(b["sagas"].as_array().unwrap().len(), 1);
    assert_eq!(b["sagas"][0]["saga"], "booking");
    assert_eq!(b["sagas"][0]["status"], "completed");
    let pi = app.payment_intents_of(id);
    assert_eq!(b["payments"]["payment_intent_id"], pi[0].id.as_str());
    assert_eq!(
        (
            &b["payments"]["authorized"],
            &b["payments"]["captured"],
            &b["payments"]["refunded"]
        ),
        (&json!(45000), &json!(45000), &json!(0))
    );
    let history: Vec<&str> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(history, app.event_types(id).await);
    assert_eq!(history.first(), Some(&"BookingRequested"));
    assert_eq!(history.last(), Some(&"SagaCompleted"));

    // The CLI shows the same.
    let cli = |args: Vec<String>| {
        let base = app.base.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
                .args([
                    "bookings",
                    "--api-url",
                    &base,
                    "--token",
                    crate::harness::TOKEN,
                ])
                .args(&args)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let shown = cli(vec!["show".into(), id.to_string()]).await;
    for expected in [
        "status    confirmed",
        "policy    flexible",
        "authorized 45000, captured 45000, refunded 0",
        "SagaCompleted",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
    let listed = cli(vec!["list".into(), "--listing".into(), "chalet-3".into()]).await;
    assert!(listed.contains(&id.to_string()), "{listed}");

    // A cancellation refunds: the booking shows it.
    assert_eq!(
        app.post_status(&format!("/v1/sagas/{id}/cancel")).await,
        202
    );
    app.wait_status(id, &["compensated"]).await;
    let b = app.get_json(&format!("/v1/bookings/{id}")).await;
    assert_eq!(b["status"], "cancelled", "{b:#}");
    assert_eq!(b["payments"]["refunded"], 45000, "{b:#}");
}

#[tokio::test]
async fn bad_booking_queries_are_refused_with_400_and_unknown_ids_with_404() {
    let app = spawn_app().await;
    for query in [
        "status=sold",
        "listing_id=no%20spaces",
        "guest_id=",
        "from=2027-13-01",
        "to=tomorrow",
        "from=2030-01-05&to=2030-01-05",
        "from=2030-01-06&to=2030-01-05",
        "limit=0",
        "limit=501",
        "limit=ten",
        "cursor=not-a-cursor",
    ] {
        let resp = app
            .get(&format!("/v1/bookings?{query}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
    }
    let resp = app.get("/v1/bookings/not-a-uuid").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = app
        .get(&format!("/v1/bookings/{}", Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let resp = app
        .http
        .get(format!("{}/v1/bookings", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn every_booking_filter_has_an_index() {
    use sagad::store::bookings::{BookingFilter, BookingStatus, explain_list};
    let app = spawn_app().await;
    let day = |n: u64| chrono::Utc::now().date_naive() + chrono::Days::new(180 + n);
    let base = BookingFilter {
        limit: 51,
        ..Default::default()
    };
    // Each filter and the index that must serve it.
    let filters = [
        (
            BookingFilter {
                guest_id: Some("ann".into()),
                ..base.clone()
            },
            "bookings_guest_page",
        ),
        (
            BookingFilter {
                listing_id: Some("loft-1".into()),
                ..base.clone()
            },
            "bookings_listing_",
        ),
        (
            BookingFilter {
                status: Some(BookingStatus::Confirmed),
                ..base.clone()
            },
            "bookings_status_page",
        ),
        (
            BookingFilter {
                listing_id: Some("loft-1".into()),
                from: Some(day(0)),
                to: Some(day(90)),
                ..base.clone()
            },
            "bookings_listing_",
        ),
        (
            BookingFilter {
                before: Some((chrono::Utc::now(), sagad::domain::SagaId::new())),
                ..base.clone()
            },
            "bookings_page",
        ),
    ];
    let mut conn = app.pool.acquire().await.unwrap();
    // On an empty table any plan is cheap: forbid sequential scans to see that an index serves
    // each filter (the benchmark reads the plans over a million bookings).
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (f, index) in filters {
        let plan = explain_list(&mut conn, &f).await.unwrap();
        assert!(!plan.contains("Seq Scan on bookings"), "{f:?}:\n{plan}");
        assert!(plan.contains(index), "{f:?} uses no {index}*:\n{plan}");
    }
}

/// Signed `charge.dispute.created` / `closed` webhooks from the Stripe double: the booking shows
/// `disputed` while the dispute is open, then its outcome and what was lost.
#[tokio::test]
async fn a_dispute_through_signed_stripe_webhooks_shows_on_the_booking_then_its_outcome() {
    let app = spawn_app().await;
    app.double.configure_webhooks(stripe_double::WebhookTarget {
        url: format!("{}/webhooks/stripe", app.base),
        secrets: vec![crate::harness::STRIPE_WEBHOOK_SECRET.into()],
        ..Default::default()
    });
    let mut ids = Vec::new();
    for (listing, outcome) in [("cabin-won", "won"), ("cabin-lost", "lost")] {
        let id = app
            .start_booking(booking_input(listing, "pm_card_visa"))
            .await;
        assert_eq!(app.wait_terminal(id).await["status"], "completed");
        ids.push((id, outcome));
    }
    let booking_status = async |id: Uuid, want: &str| {
        crate::harness::eventually(&format!("booking {id} to be {want}"), || async {
            let b = app.get_json(&format!("/v1/bookings/{id}")).await;
            (b["status"] == want).then_some(b)
        })
        .await
    };
    for (id, outcome) in ids {
        let pi = app.payment_intents_of(id)[0].id.clone();
        let dispute = app.double.open_dispute(&pi, "fraudulent").unwrap();
        let b = booking_status(id, "disputed").await;
        assert_eq!(b["disputes"].as_array().unwrap().len(), 1, "{b:#}");
        assert_eq!(b["disputes"][0]["dispute_id"], dispute.as_str());
        assert_eq!(b["disputes"][0]["status"], "open");
        assert_eq!(
            all_ids(&app, "status=disputed").await,
            [id],
            "the list filters by it"
        );

        app.double.close_dispute(&dispute, outcome).unwrap();
        let b = booking_status(id, &format!("dispute_{outcome}")).await;
        assert_eq!(b["disputes"][0]["status"], outcome, "{b:#}");
        let lost = if outcome == "lost" { 45000 } else { 0 };
        assert_eq!(b["disputes"][0]["amount_lost"], lost, "{b:#}");
        assert_eq!(b["disputes"][0]["amount"], 45000, "{b:#}");
    }
}
