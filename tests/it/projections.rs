//! `sagad projections rebuild | verify bookings`: the projection folded again from the events.

use std::process::Output;

use serde_json::Value;
use uuid::Uuid;

use crate::harness::{TestApp, booking_input, spawn_app};

async fn projections(app: &TestApp, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .arg("projections")
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .output()
        .await
        .expect("run sagad projections")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn index_names(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexrelid::regclass::text FROM pg_index
         WHERE indrelid = 'bookings'::regclass ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .expect("indexes")
}

async fn bookings(app: &TestApp) -> Vec<(Uuid, String, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT saga_id, status, cancel_reason, confirmation_code FROM bookings ORDER BY saga_id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("bookings")
}

#[tokio::test]
async fn verify_reports_a_corrupted_row_and_exits_non_zero() {
    let app = spawn_app().await;
    let ok = app
        .start_booking(booking_input("verify-1", "pm_card_visa"))
        .await;
    let declined = app
        .start_booking(booking_input("verify-2", "pm_card_chargeDeclined"))
        .await;
    app.wait_terminal(ok).await;
    app.wait_terminal(declined).await;

    let out = projections(&app, &["verify", "bookings"]).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("2 rows match"),
        "{}",
        text(&out.stdout)
    );

    sqlx::query(
        "UPDATE bookings SET status = 'confirmed', cancel_reason = NULL WHERE saga_id = $1",
    )
    .bind(declined)
    .execute(&app.pool)
    .await
    .expect("corrupt a row");
    let out = projections(&app, &["verify", "bookings"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{declined} status: table confirmed, events failed"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{declined} cancel_reason: table None")),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&ok.to_string()),
        "only the corrupted row: {stdout}"
    );
    assert!(
        text(&out.stderr).contains("1 of 2 rows differ"),
        "{}",
        text(&out.stderr)
    );

    // The rebuild repairs it.
    let out = projections(&app, &["rebuild", "bookings"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("events/s"),
        "a progress bar: {}",
        text(&out.stderr)
    );
    let out = projections(&app, &["verify", "bookings"]).await;
    assert!(out.status.success(), "{}", text(&out.stdout));
    app.stop().await;
}

#[tokio::test]
async fn rebuild_under_load_loses_no_update_and_verify_passes() {
    let app = spawn_app().await;
    let indexes = index_names(&app).await;
    // Sagas finished before, and sagas running all through the rebuild.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.start_booking(booking_input(&format!("before-{i}"), "pm_card_visa"))
                .await,
        );
    }
    let load = {
        let http = app.http.clone();
        let base = app.base.clone();
        tokio::spawn(async move {
            let mut started = Vec::new();
            for i in 0..30 {
                let pm = if i % 4 == 0 {
                    "pm_card_chargeDeclined"
                } else {
                    "pm_card_visa"
                };
                let resp: Value = http
                    .post(format!("{base}/v1/sagas"))
                    .bearer_auth(crate::harness::TOKEN)
                    .json(&serde_json::json!({
                        "saga": "booking",
                        "input": booking_input(&format!("during-{i}"), pm),
                    }))
                    .send()
                    .await
                    .expect("start")
                    .json()
                    .await
                    .expect("started");
                started.push(
                    resp["id"]
                        .as_str()
                        .unwrap_or_else(|| panic!("a saga id in {resp}"))
                        .parse::<Uuid>()
                        .expect("uuid"),
                );
            }
            started
        })
    };
    let out = projections(&app, &["rebuild", "bookings"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("rebuilt bookings"),
        "{}",
        text(&out.stdout)
    );
    ids.extend(load.await.expect("load"));
    for id in &ids {
        app.wait_terminal(*id).await;
    }
    // Every saga's booking reached its final state in the swapped-in table: the updates made
    // after the swap landed in it, and those made during the rebuild were caught up.
    let rows = bookings(&app).await;
    assert_eq!(rows.len(), ids.len());
    for (id, status, _, code) in &rows {
        assert!(
            status == "confirmed" && code.is_some() || status == "failed",
            "{id}: {status}"
        );
    }
    let out = projections(&app, &["verify", "bookings"]).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        index_names(&app).await,
        indexes,
        "the indexes keep their names"
    );
    let fk: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint
         WHERE conrelid = 'bookings'::regclass AND contype = 'f' AND confrelid = 'sagas'::regclass",
    )
    .fetch_one(&app.pool)
    .await
    .expect("constraints");
    assert_eq!(fk, 1, "the reference to sagas");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_projection_is_refused_with_a_message() {
    let app = spawn_app().await;
    for cmd in ["rebuild", "verify"] {
        let out = projections(&app, &[cmd, "booking"]).await;
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains("unknown projection \"booking\"; the projections are: bookings"),
            "{err}"
        );
    }
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = 'bookings_rebuild'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(tables, 0, "nothing written");
    app.stop().await;
}
