//! Upgrades with data: for every migration in migrations/, a database at the migration before it
//! holds realistic rows (sagas in flight, one of them under a dead worker's lease, the outbox's
//! deliveries, one of them leased, a pending Stripe event), is migrated to the latest schema, and
//! sagad runs over it until everything is settled as it should be.
//!
//! The rows are made once by sagad itself (an API-only instance: nothing runs them) on a database
//! at the latest schema, then copied into each older database column by column, the columns both
//! schemas have. A new migration is covered without a fixture of its own; if it changes a table
//! so that the rows no longer fit the schema before it (or after it), this test fails and says
//! which table.

use std::collections::HashMap;

use sagad::config::Role;
use sagad::store::MIGRATOR;
use sagad_test_support::Receiver;
use serde_json::json;
use sqlx::PgPool;
use stripe_double::StripeDouble;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::harness::{
    AppOptions, TestApp, booking_input, empty_database, eventually, spawn_app_with, spawn_instance,
};

/// Sagas in flight, and how each must end.
struct Source {
    app: TestApp,
    expected: HashMap<Uuid, &'static str>,
    /// The outbound endpoint's receiver (kept up for every upgraded database).
    _receiver: Receiver,
}

async fn source() -> Source {
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        ..Default::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": receiver.url, "event_types": ["*"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let mut expected = HashMap::new();
    for (i, (pm, end)) in [
        ("pm_card_visa", "completed"),
        ("pm_card_visa", "completed"),
        ("pm_card_mastercard", "completed"),
        ("pm_card_chargeDeclined", "compensated"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = app
            .start_booking(booking_input(&format!("upgrade-{i}"), pm))
            .await;
        expected.insert(id, end);
    }
    // One saga under a dead worker's lease, one delivery leased by a dead dispatcher.
    let leased = *expected.keys().next().unwrap();
    sqlx::query(
        "UPDATE sagas SET locked_by = 'dead-worker', locked_until = now() - interval '1 second'
         WHERE id = $1",
    )
    .bind(leased)
    .execute(&app.pool)
    .await
    .unwrap();
    let leased_delivery = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'delivering', attempts = 1, slot = 0,
                locked_by = 'dead-dispatcher', locked_until = now() - interval '1 second'
         WHERE id = (SELECT id FROM webhook_deliveries ORDER BY created_at LIMIT 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(leased_delivery.rows_affected(), 1);
    // A Stripe event about a PaymentIntent sagad does not know, not processed yet.
    let body = json!({
        "id": "evt_upgrade_unknown", "object": "event", "type": "payment_intent.succeeded",
        "created": chrono::Utc::now().timestamp(), "livemode": false,
        "api_version": "2026-09-30.endive",
        "data": { "object": { "id": "pi_upgrade_nobody", "object": "payment_intent" } }
    })
    .to_string();
    assert_eq!(app.post_signed_stripe_event(&body).await.0, 200);
    Source {
        app,
        expected,
        _receiver: receiver,
    }
}

/// Copies every row of `from` into the tables `to` has, the columns both have; returns the
/// tables that received rows.
async fn copy_rows(from: &PgPool, to: &PgPool) -> Vec<String> {
    let columns = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND is_generated = 'NEVER'
                   AND table_name <> '_sqlx_migrations'
                 ORDER BY table_name, ordinal_position",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let mut by_table: HashMap<String, Vec<String>> = HashMap::new();
            for (t, c) in rows {
                by_table.entry(t).or_default().push(c);
            }
            by_table
        }
    };
    let (source, target) = (columns(from).await, columns(to).await);
    let mut tx = to.begin().await.unwrap();
    // No triggers (the event store refuses nothing it would on insert, but foreign keys are
    // checked by triggers and the rows come in table order, not dependency order).
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut copied = Vec::new();
    for (table, target_columns) in &target {
        let Some(source_columns) = source.get(table) else {
            continue;
        };
        let common: Vec<String> = target_columns
            .iter()
            .filter(|c| source_columns.contains(c))
            .map(|c| format!("\"{c}\""))
            .collect();
        let list = common.join(", ");
        let rows: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(json_agg(r), '[]'::json) FROM (SELECT {list} FROM \"{table}\") r"
        )))
        .fetch_one(from)
        .await
        .unwrap();
        if rows.as_array().is_none_or(Vec::is_empty) {
            continue;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{table}\" ({list}) OVERRIDING SYSTEM VALUE
             SELECT {list} FROM jsonb_populate_recordset(NULL::\"{table}\", $1)"
        )))
        .bind(&rows)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("the rows of {table} do not fit this schema: {e}"));
        copied.push(table.clone());
    }
    // Identity sequences continue after the copied values.
    let identities: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND is_identity = 'YES'",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    for (table, column) in identities {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'), max(\"{column}\"))
             FROM \"{table}\" HAVING max(\"{column}\") IS NOT NULL"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    copied.sort();
    copied
}

#[tokio::test]
async fn every_migration_upgrades_a_database_with_sagas_in_flight() {
    let source = source().await;
    let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    assert!(versions.len() >= 12, "{versions:?}");
    for (i, version) in versions.iter().enumerate() {
        let url = empty_database().await;
        let pool = sagad::store::connect(&url, 30).await.unwrap();
        let copied = if i == 0 {
            Vec::new() // Nothing to hold data before the first migration.
        } else {
            MIGRATOR.run_to(versions[i - 1], &pool).await.unwrap();
            copy_rows(&source.app.pool, &pool).await
        };
        if i > 0 {
            assert!(
                copied.contains(&"sagas".to_owned()) && copied.contains(&"events".to_owned()),
                "before {version}: {copied:?}"
            );
        }
        MIGRATOR
            .run(&pool)
            .await
            .unwrap_or_else(|e| panic!("migration {version} over data: {e}"));
        if i == 0 {
            pool.close().await;
            continue;
        }
        let double = std::sync::Arc::new(
            StripeDouble::start(TcpListener::bind("127.0.0.1:0").await.unwrap())
                .await
                .unwrap(),
        );
        let app = spawn_instance(
            pool.clone(),
            url,
            double,
            Receiver::start().await,
            AppOptions::default(),
        )
        .await;
        for (id, end) in &source.expected {
            let v = app.wait_terminal(*id).await;
            assert_eq!(v["status"], *end, "upgraded over {version}: {v:#}");
        }
        if copied.contains(&"webhook_deliveries".to_owned()) {
            eventually(
                &format!("every delivery delivered after {version}"),
                || async {
                    let left: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    (left == 0).then_some(())
                },
            )
            .await;
        }
        if copied.contains(&"stripe_events".to_owned()) {
            let status: String = eventually(
                &format!("the Stripe event settled after {version}"),
                || async {
                    let s: String = sqlx::query_scalar(
                        "SELECT status FROM stripe_events WHERE id = 'evt_upgrade_unknown'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    (!matches!(s.as_str(), "pending" | "processing")).then_some(s)
                },
            )
            .await;
            assert_eq!(status, "unmatched", "after {version}");
        }
        let active: i64 =
            sqlx::query_scalar("SELECT count(*) FROM inventory_claims WHERE status = 'active'")
                .fetch_one(&pool)
                .await
                .unwrap();
        let completed = source
            .expected
            .values()
            .filter(|e| **e == "completed")
            .count();
        assert_eq!(active as usize, completed, "bookings kept after {version}");
        app.stop().await;
    }
}
