//! The operator console (`/console`) in a real headless Chromium driven over WebDriver (the
//! Debian packages `chromium` and `chromium-driver`; without them these tests fail, naming
//! them), against a real sagad: sign-in, finding a saga by its confirmation code, its timeline,
//! retrying a stuck saga, redelivering a dead letter, hostile payloads rendered as text, and
//! actions refused without a session or without the CSRF token.

use sagad_test_support::{Browser, Receiver, Reply};
use serde_json::json;
use stripe_double::{Fault, Operation};
use uuid::Uuid;

use crate::harness::{OPS_TOKEN, TestApp, booking_input, eventually, spawn_app};

/// What a hostile receiver answers: were it rendered as HTML, it would retitle the page and set
/// a global.
const HOSTILE: &str = "<script>document.title='pwned';window.pwned=1</script>\
    \"><img src=x onerror=\"document.title='pwned';window.pwned=1\">";

async fn browser() -> Browser {
    Browser::start(1280, 1000)
        .await
        .unwrap_or_else(|e| panic!("the console's browser tests need a browser: {e}"))
}

/// Signs `b` in to `app`'s console with `token`, from the page a signed-out visit lands on.
async fn sign_in(app: &TestApp, b: &Browser, token: &str) {
    b.goto(&format!("{}/console", app.base)).await;
    b.wait_for("#token").await.send_keys(token).await;
    b.wait_for("section.signin button[type=submit]")
        .await
        .click()
        .await;
    b.wait_for("#live").await;
}

/// A plain HTTP client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A URL-encoded form body.
fn form_body(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Waits for the page at `url` to show `css` with `text`, reloading it meanwhile.
async fn reload_until(b: &Browser, url: &str, css: &str, text: &str) {
    eventually(&format!("{css} to read {text:?} at {url}"), || async {
        b.goto(url).await;
        let found = b.find_all(css).await;
        for e in &found {
            if e.text().await.contains(text) {
                return Some(());
            }
        }
        None
    })
    .await
}

async fn saga_status(app: &TestApp, id: Uuid) -> (String, Vec<String>) {
    let v = app.get_json(&format!("/v1/sagas/{id}")).await;
    (
        v["status"].as_str().unwrap_or_default().to_owned(),
        app.event_types(id).await,
    )
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_sign_in_and_actions_are_refused() {
    let app = spawn_app().await;
    let http = no_redirects();
    let r = http
        .get(format!("{}/console/sagas?status=stuck", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/console/sign-in?next=%2Fconsole%2Fsagas%3Fstatus%3Dstuck"
    );
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");

    let id = Uuid::now_v7();
    for path in [
        format!("/console/sagas/{id}/retry"),
        format!("/console/sagas/{id}/cancel"),
        format!("/console/deliveries/{id}/redeliver"),
        "/console/sign-out".to_owned(),
    ] {
        let r = http
            .post(format!("{}{path}", app.base))
            .header(
                "cookie",
                "sagad_console=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("reason", "x"), ("csrf", "x")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // A wrong token does not sign in, nor does an API token as a bearer header on a page.
    let r = http
        .post(format!("{}/console/sign-in", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("token", "not-a-token"), ("next", "/console")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = app.get("/console").send().await.unwrap();
    assert!(
        r.url().path().starts_with("/console/sign-in"),
        "{}",
        r.url()
    );
}

#[tokio::test]
async fn sign_in_then_find_a_saga_by_its_confirmation_code_and_see_its_timeline() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("console-find-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let code = v["booking"]["confirmation_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let steps = v["steps"].as_array().unwrap().len();

    let b = browser().await;
    b.goto(&format!("{}/console", app.base)).await;
    b.wait_for("#token").await.send_keys("wrong-token").await;
    b.wait_for("section.signin button[type=submit]")
        .await
        .click()
        .await;
    let problem = b.wait_for("p.problem").await.text().await;
    assert!(
        problem.contains("not one of this server's API tokens"),
        "{problem}"
    );
    sign_in(&app, &b, OPS_TOKEN).await;
    assert_eq!(b.wait_for("span.actor").await.text().await, "ops");
    let cookie = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "sagad_console")
        .expect("the session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    // The script cannot read it.
    assert_eq!(b.execute("return document.cookie", json!([])).await, "");

    b.goto(&format!("{}/console/sagas", app.base)).await;
    b.wait_for("input[name=q]").await.send_keys(&code).await;
    b.wait_for("form.filters button[type=submit]")
        .await
        .click()
        .await;
    let link = b.wait_for("#sagas a.id").await;
    assert_eq!(b.find_all("#sagas tbody tr").await.len(), 1);
    assert_eq!(link.text().await, id.to_string());
    link.click().await;

    b.wait_for("#timeline svg.timeline").await;
    assert!(b.url().await.ends_with(&format!("/console/sagas/{id}")));
    assert_eq!(b.wait_for("#status").await.text().await, "completed");
    assert_eq!(
        b.find_all("#timeline svg.timeline g.step rect").await.len(),
        steps,
        "one bar per step record"
    );
    let events = app.event_types(id).await;
    assert_eq!(
        b.find_all("#timeline svg.timeline line.tick").await.len(),
        events.len(),
        "one tick per event"
    );
    // Drawn to scale: each bar starts where its step started, after the one before it.
    let xs: Vec<f64> = b
        .execute(
            "return Array.from(document.querySelectorAll('#timeline g.step rect'))
                .map(r => parseFloat(r.getAttribute('x')))",
            json!([]),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(xs.windows(2).all(|w| w[0] <= w[1]), "{xs:?}");
    let booking = b.wait_for("#booking").await.text().await;
    assert!(booking.contains(&code), "{booking}");
    let shown = b.wait_for("#events").await.text().await;
    for t in &events {
        assert!(shown.contains(t.as_str()), "{t} missing from {shown}");
    }
    b.quit().await;
}

#[tokio::test]
async fn retry_a_stuck_saga_and_redeliver_a_dead_letter_with_hostile_bodies_shown_as_text() {
    let app = spawn_app().await;
    // Every webhook delivery fails with a hostile body until told otherwise: they die.
    let rx = Receiver::start().await;
    rx.answer_with(Reply::Body(500, HOSTILE.into()));
    let r = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": rx.url, "event_types": ["*"], "description": "console test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Stuck: the notification fails for good and the refund that compensates the capture too.
    app.notify.answer(500);
    app.double
        .inject(Fault::server_error(Operation::Refund).times(1000));
    let id = app
        .start_booking(booking_input("console-stuck-1", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "stuck");
    let dead: Uuid = eventually("a dead delivery of the saga's events", || async {
        sqlx::query_scalar(
            "SELECT d.id FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id
             WHERE e.aggregate_id = $1 AND d.status = 'dead' ORDER BY d.created_at LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    })
    .await;

    let b = browser().await;
    sign_in(&app, &b, OPS_TOKEN).await;
    let page = format!("{}/console/sagas/{id}", app.base);
    b.goto(&page).await;
    b.wait_for("#deliveries").await;
    // The hostile body is on the page as text, and nothing of it ran or became an element.
    let shown = b.wait_for("#deliveries").await.text().await;
    assert!(shown.contains("<script>document.title='pwned'"), "{shown}");
    assert!(shown.contains("<img src=x onerror="), "{shown}");
    assert_eq!(b.title().await, "Saga · sagad console");
    assert_eq!(
        b.execute("return window.pwned === undefined", json!([]))
            .await,
        true
    );
    assert!(b.find_all("script:not([src])").await.is_empty());
    assert!(b.find_all("img").await.is_empty());

    // Without the CSRF token, or with a wrong one, the session's own cookie changes nothing.
    let cookie = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "sagad_console")
        .expect("the session cookie");
    let cookie = format!("sagad_console={}", cookie["value"].as_str().unwrap());
    let before = saga_status(&app, id).await;
    let http = no_redirects();
    for form in [
        vec![("reason", "csrf test")],
        vec![("reason", "csrf test"), ("csrf", "forged")],
    ] {
        for path in [
            format!("/console/sagas/{id}/retry"),
            format!("/console/sagas/{id}/cancel"),
        ] {
            let r = http
                .post(format!("{}{path}", app.base))
                .header("cookie", &cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_body(&form))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path} {form:?}");
        }
    }
    let r = http
        .post(format!("{}/console/deliveries/{dead}/redeliver", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        saga_status(&app, id).await,
        before,
        "a refused action changed the saga"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE id = $1")
        .bind(dead)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "dead", "a refused redelivery changed the delivery");

    // Redeliver the dead letter, now that the receiver answers.
    rx.answer(200);
    let form = format!("form[action='/console/deliveries/{dead}/redeliver'] button");
    b.wait_for(&form).await.click().await;
    let notice = b.wait_for("p.notice").await.text().await;
    assert!(notice.contains(&dead.to_string()), "{notice}");
    reload_until(
        &b,
        &page,
        &format!("div.delivery[data-id='{dead}'][data-status='delivered']"),
        "delivered",
    )
    .await;
    eventually("the redelivered letter to be delivered", || async {
        let s: String = sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE id = $1")
            .bind(dead)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (s == "delivered").then_some(())
    })
    .await;

    // Retry the stuck saga, with a reason, once Stripe refunds again: it completes its
    // compensation, and the page shows the SagaRetried event with the actor.
    app.double.clear_faults();
    b.goto(&page).await;
    b.wait_for("#retry-reason")
        .await
        .send_keys("Stripe refunds again")
        .await;
    b.wait_for("button[name=retry]").await.click().await;
    let notice = b.wait_for("div.notice").await.text().await;
    assert!(notice.contains("SagaRetried"), "{notice}");
    assert!(notice.contains("\"actor\": \"ops\""), "{notice}");
    assert!(notice.contains("Stripe refunds again"), "{notice}");
    reload_until(&b, &page, "#status", "compensated").await;
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    b.quit().await;
}

/// Waits for an element matching `css` whose text contains `text` (the page an action led to).
async fn wait_text(b: &Browser, css: &str, text: &str) {
    eventually(&format!("{css} to read {text:?}"), || async {
        for e in b.find_all(css).await {
            if e.text().await.contains(text) {
                return Some(());
            }
        }
        None
    })
    .await
}

/// The status and processing time of a Stripe inbox event.
async fn inbox_row(app: &TestApp, id: &str) -> (String, Option<chrono::DateTime<chrono::Utc>>) {
    sqlx::query_as("SELECT status, processed_at FROM stripe_events WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn bulk_retry_a_listings_calendar_a_stripe_reprocess_and_an_endpoints_actions() {
    let app = spawn_app().await;
    let booked = app
        .start_booking(booking_input("console-cal-1", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(booked).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let check_in = v["booking"]["check_in"].as_str().unwrap().to_owned();
    app.notify.answer(500);
    app.double
        .inject(Fault::server_error(Operation::Refund).times(1000));
    let stuck = app
        .start_booking(booking_input("console-stuck-2", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(stuck).await["status"], "stuck");
    let evt = "evt_console_unknown_pi";
    let body = json!({
        "id": evt, "object": "event", "type": "payment_intent.succeeded",
        "created": chrono::Utc::now().timestamp(), "livemode": false,
        "api_version": "2026-09-30.endive",
        "data": { "object": { "id": "pi_console_nobody", "object": "payment_intent",
                              "description": HOSTILE } }
    })
    .to_string();
    assert_eq!(app.post_signed_stripe_event(&body).await.0, 200);
    let (_, first) = eventually("the event to be settled as unmatched", || async {
        let row = inbox_row(&app, evt).await;
        (row.0 == "unmatched").then_some(row)
    })
    .await;
    let rx = Receiver::start().await;
    let r = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": rx.url, "event_types": ["listing.*"], "description": HOSTILE }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let endpoint = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let b = browser().await;
    sign_in(&app, &b, OPS_TOKEN).await;

    // The listing's calendar: the booking's three nights, linked to its saga.
    b.goto(&format!(
        "{}/console/bookings?listing=console-cal-1&from={check_in}",
        app.base
    ))
    .await;
    b.wait_for("#calendar").await;
    let booked_nights = b.find_all("#calendar td.c-booked").await;
    assert_eq!(booked_nights.len(), 3);
    assert_eq!(
        booked_nights[0].attr("data-date").await.as_deref(),
        Some(check_in.as_str())
    );
    assert_eq!(
        b.find_all(&format!(
            "#calendar td.c-booked a[href='/console/sagas/{booked}']"
        ))
        .await
        .len(),
        3
    );

    // Stuck and paused: the stuck saga is listed; a bulk retry of its step completes it.
    b.goto(&format!("{}/console/stuck", app.base)).await;
    let listed = b.wait_for("#stuck a.id").await.text().await;
    assert_eq!(listed, stuck.to_string());
    app.double.clear_faults();
    b.wait_for("#bulk-step option[value=capture_payment]")
        .await
        .click()
        .await;
    b.wait_for("#bulk-reason")
        .await
        .send_keys("refunds work again")
        .await;
    b.wait_for("button[name=retry-all]").await.click().await;
    assert_eq!(
        b.wait_for("#retried a.id").await.text().await,
        stuck.to_string()
    );
    let notice = b.wait_for("div.notice").await.text().await;
    assert!(
        notice.contains("SagaRetried on 1 saga(s) as ops"),
        "{notice}"
    );
    assert_eq!(app.wait_terminal(stuck).await["status"], "compensated");

    // The Stripe inbox: the unmatched event (its hostile description shown as text), reprocessed.
    b.goto(&format!("{}/console/stripe?status=unmatched", app.base))
        .await;
    let row = format!("details.stripe-event[data-id='{evt}']");
    b.wait_for(&format!("{row} summary")).await.click().await;
    let shown = b.wait_for(&row).await.text().await;
    assert!(shown.contains("<script>document.title='pwned'"), "{shown}");
    assert_eq!(b.title().await, "Stripe inbox · sagad console");
    assert!(b.find_all("img").await.is_empty());
    b.wait_for(&format!("{row} button[name=reprocess]"))
        .await
        .click()
        .await;
    let notice = b.wait_for("p.notice").await.text().await;
    assert!(notice.contains(evt), "{notice}");
    eventually("the reprocessed event to be settled again", || async {
        let (status, at) = inbox_row(&app, evt).await;
        (status == "unmatched" && at > first).then_some(())
    })
    .await;

    // The endpoint: disabled, enabled, its secret rotated.
    b.goto(&format!("{}/console/webhooks", app.base)).await;
    b.wait_for(&format!(
        "#endpoints a[href='/console/webhooks/{endpoint}']"
    ))
    .await
    .click()
    .await;
    b.wait_for("button[name=toggle]").await.click().await;
    wait_text(&b, "p.notice", "Disabled.").await;
    let enabled = |app: &TestApp| {
        let pool = app.pool.clone();
        let id: Uuid = endpoint.parse().unwrap();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT enabled FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(!enabled(&app).await);
    b.wait_for("button[name=toggle]").await.click().await;
    wait_text(&b, "p.notice", "Enabled.").await;
    assert!(enabled(&app).await);
    b.wait_for("button[name=rotate]").await.click().await;
    let secret = b.wait_for("#new-secret").await.text().await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    b.quit().await;
}

/// Refreshes the screenshots in docs/ (the overview and a saga's timeline, at a laptop's width
/// and the overview at a phone's): `cargo test --test it -- console::screenshots --ignored`.
#[tokio::test]
#[ignore = "writes docs/console-*.png; run it to refresh them"]
async fn screenshots() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let pm = if i % 4 == 3 {
            "pm_card_chargeDeclined"
        } else {
            "pm_card_visa"
        };
        ids.push(
            app.start_booking(booking_input(&format!("screenshot-{i}"), pm))
                .await,
        );
    }
    for id in &ids {
        app.wait_terminal(*id).await;
    }
    let b = browser().await;
    sign_in(&app, &b, OPS_TOKEN).await;
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    b.goto(&format!("{}/console", app.base)).await;
    b.wait_for("svg.chart").await;
    std::fs::write(docs.join("console-overview.png"), b.screenshot().await).unwrap();
    b.goto(&format!("{}/console/sagas/{}", app.base, ids[0]))
        .await;
    b.wait_for("svg.timeline").await;
    std::fs::write(docs.join("console-saga.png"), b.screenshot().await).unwrap();
    b.resize(390, 844).await;
    b.goto(&format!("{}/console", app.base)).await;
    b.wait_for("svg.chart").await;
    std::fs::write(docs.join("console-phone.png"), b.screenshot().await).unwrap();
    b.quit().await;
}

/// The saga list filtered by a step shows exactly the sagas whose current step it is: a saga
/// declined at authorization is at its failed step, a completed one is past the last step.
#[tokio::test]
async fn the_saga_list_filtered_by_step_shows_the_sagas_at_that_step() {
    let app = spawn_app().await;
    let declined = app
        .start_booking(booking_input("step-filter-1", "pm_card_chargeDeclined"))
        .await;
    let completed = app
        .start_booking(booking_input("step-filter-2", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(declined).await["status"], "compensated");
    assert_eq!(app.wait_terminal(completed).await["status"], "completed");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, _) = crate::hostile::console_session(&app, &http).await;
    let steps = [
        "hold_inventory",
        "authorize_payment",
        "capture_payment",
        "confirm_booking",
        "notify",
    ];
    let mut listed_anywhere = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let r = http
            .get(format!("{}/console/sagas?step={step}", app.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "step={step}");
        let page = r.text().await.unwrap();
        for id in [declined, completed] {
            let current: i32 = sqlx::query_scalar("SELECT current_step FROM sagas WHERE id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
            let shown = page.contains(&format!("/console/sagas/{id}\""));
            assert_eq!(
                shown,
                current == index as i32,
                "saga {id} at step index {current}, list of step={step}"
            );
            if shown {
                listed_anywhere.push(id);
            }
        }
    }
    assert_eq!(
        listed_anywhere,
        [declined],
        "the completed saga is at no step"
    );
}
