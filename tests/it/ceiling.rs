//! The bench's ceiling replay (`crates/sagad-bench/ceiling/saga.sql`: sagad's statements for one
//! booking saga, replayed by pgbench) still does what sagad does: a replayed saga leaves the same
//! rows as a real one. Fails when the schema or the statements' effects change and the script was
//! not regenerated.

use sagad_bench::pgbench::{Length, Pgbench};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{booking_input, spawn_app};

/// What a finished booking saga left in every table it writes, without its ids and times.
const SHAPE: &str = "
SELECT jsonb_build_object(
  'saga', (SELECT jsonb_build_object(
             'saga', saga_name || '/' || saga_version, 'status', status, 'step', current_step,
             'attempt', attempt, 'event_version', event_version, 'cancel', cancel_requested,
             'context', (SELECT jsonb_agg(k ORDER BY k) FROM jsonb_object_keys(context) k),
             'leased', locked_by IS NOT NULL OR locked_until IS NOT NULL, 'due', next_run_at IS NOT NULL,
             'waiting', wait_key IS NOT NULL OR wait_deadline IS NOT NULL,
             'failure', failure_step, 'finished', finished_at IS NOT NULL)
           FROM sagas WHERE id = $1),
  'events', (SELECT jsonb_agg(jsonb_build_array(
               version, aggregate_type, event_type, schema_version,
               (SELECT jsonb_agg(k ORDER BY k) FROM jsonb_object_keys(payload) k),
               (SELECT jsonb_agg(k ORDER BY k) FROM jsonb_object_keys(metadata) k)) ORDER BY version)
             FROM events WHERE aggregate_id = $1),
  'steps', (SELECT jsonb_agg(jsonb_build_array(
              step_index, phase, step_name, status, attempts, last_error, finished_at IS NOT NULL)
              ORDER BY step_index, phase)
            FROM saga_steps WHERE saga_id = $1),
  'booking', (SELECT jsonb_build_object(
                'status', status, 'payment_intent', payment_intent_id IS NOT NULL,
                'confirmation_code', confirmation_code IS NOT NULL, 'cancel', cancel_reason)
              FROM bookings WHERE saga_id = $1),
  'claim', (SELECT jsonb_build_object('kind', kind, 'status', status, 'expires', expires_at IS NOT NULL)
            FROM inventory_claims WHERE saga_id = $1),
  'deliveries', (SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id
                 WHERE e.aggregate_id = $1))";

async fn shape(pool: &sqlx::PgPool, id: Uuid) -> Value {
    sqlx::query_scalar(SHAPE)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_ceiling_replay_writes_what_a_real_booking_saga_writes() {
    let app = spawn_app().await;
    let resp = app
        .post("/v1/sagas?wait=10s")
        .json(&json!({ "saga": "booking", "input": booking_input("ceiling-1", "pm_card_visa") }))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "completed", "{v:#}");
    let real_id: Uuid = v["id"].as_str().unwrap().parse().unwrap();
    let real = shape(&app.pool, real_id).await;

    // The shape says what a booking saga writes, so that equal shapes mean something.
    assert_eq!(real["saga"]["status"], "completed", "{real:#}");
    assert_eq!(real["events"].as_array().map(Vec::len), Some(7), "{real:#}");
    assert_eq!(real["steps"].as_array().map(Vec::len), Some(5), "{real:#}");
    assert_eq!(real["booking"]["status"], "confirmed", "{real:#}");
    assert_eq!(real["claim"]["kind"], "booking", "{real:#}");
    assert_eq!(real["claim"]["status"], "active", "{real:#}");

    let pgbench = Pgbench::find(app.db_url.clone())
        .expect("pgbench (shipped with the PostgreSQL server binaries) is needed by the bench");
    let tps = pgbench
        .ceiling_sagas_per_s(&app.db_url, 1, Length::Transactions(3))
        .await
        .unwrap();
    assert!(tps > 0.0);

    let replayed: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM sagas WHERE id <> $1")
        .bind(real_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 3, "one saga per replayed transaction");
    for id in replayed {
        assert_eq!(
            shape(&app.pool, id).await,
            real,
            "a replayed saga differs from a real one: regenerate crates/sagad-bench/ceiling/saga.sql (docs/BENCHMARKS.md, \"The ceiling\")"
        );
    }
    app.stop().await;
}
