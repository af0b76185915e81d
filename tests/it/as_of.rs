//! Point-in-time reads: `GET /v1/sagas/{id}?as_of=` and `GET /v1/bookings/{id}?as_of=` against
//! the state the saga and its booking really had after each transaction that recorded events.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use stripe_double::{Fault, Operation};
use uuid::Uuid;

use crate::harness::{TestApp, booking_input, spawn_app};

/// Records, when each transaction that appends events commits, the saga's row and its booking as
/// that transaction left them (a deferred trigger sees the transaction's final state).
async fn capture_states(app: &TestApp) {
    for sql in [
        "CREATE TABLE as_of_capture (tx xid8, saga_id uuid, version int, saga jsonb, booking jsonb)",
        "CREATE FUNCTION as_of_capture() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO as_of_capture
             SELECT pg_current_xact_id(), NEW.aggregate_id, NEW.version,
                    (SELECT to_jsonb(s) FROM sagas s WHERE s.id = NEW.aggregate_id),
                    (SELECT to_jsonb(b) FROM bookings b WHERE b.saga_id = NEW.aggregate_id);
             RETURN NULL;
         END $$",
        "CREATE CONSTRAINT TRIGGER as_of_capture AFTER INSERT ON events
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION as_of_capture()",
    ] {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
}

/// Per transaction that recorded events of `id`: its last version, when it was recorded, and the
/// saga's and booking's rows at its commit.
async fn captured(app: &TestApp, id: Uuid) -> Vec<(i32, DateTime<Utc>, Value, Value)> {
    let rows: Vec<(i32, DateTime<Utc>, Value, Option<Value>)> = sqlx::query_as(
        "SELECT DISTINCT ON (c.tx) c.version, e.recorded_at, c.saga, c.booking
         FROM as_of_capture c JOIN events e ON e.aggregate_id = c.saga_id AND e.version = c.version
         WHERE c.saga_id = $1 ORDER BY c.tx, c.version DESC",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|(v, at, s, b)| (v, at, s, b.unwrap_or(Value::Null)))
        .collect();
    rows.sort_by_key(|r| r.0);
    rows
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = app.get(path).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The saga's state as the API's as-of read shows it and as its row was, side by side.
fn saga_fields(v: &Value) -> Value {
    serde_json::json!({
        "status": v["status"],
        "current_step": v["current_step"],
        "attempt": v["attempt"],
        "failure_step": v["failure"]["step"],
        "failure_reason": v["failure"]["reason"],
        "wait_key": v["wait"]["key"],
        "wait_deadline": time(&v["wait"]["deadline"]),
    })
}

fn row_fields(row: &Value, steps: &[&str]) -> Value {
    let status = row["status"].as_str().unwrap();
    let terminal = ["completed", "compensated", "stuck"].contains(&status);
    let step = row["current_step"].as_u64().unwrap() as usize;
    serde_json::json!({
        "status": status,
        "current_step": if terminal { Value::Null } else { steps.get(step).copied().into() },
        "attempt": row["attempt"],
        "failure_step": row["failure_step"],
        "failure_reason": row["failure_reason"],
        "wait_key": if status == "waiting" { row["wait_key"].clone() } else { Value::Null },
        "wait_deadline": if status == "waiting" { time(&row["wait_deadline"]) } else { None },
    })
}

fn booking_fields(b: &Value) -> Value {
    serde_json::json!({
        "status": b["status"],
        "payment_intent_id": b["payment_intent_id"],
        "confirmation_code": b["confirmation_code"],
        "cancel_reason": b["cancel_reason"],
        "amount": b["amount"],
        "created_at": time(&b["created_at"]),
        "updated_at": time(&b["updated_at"]),
    })
}

const STEPS: [&str; 5] = [
    "hold_inventory",
    "authorize_payment",
    "capture_payment",
    "confirm_booking",
    "notify",
];

/// Compares the as-of reads of `id` at every captured transaction, by version and by time, and
/// returns the saga statuses seen.
async fn check_every_version(app: &TestApp, id: Uuid) -> BTreeSet<String> {
    let states = captured(app, id).await;
    assert!(states.len() >= 2, "{id}: few transactions: {states:?}");
    let mut seen = BTreeSet::new();
    for (version, at, row, booking) in &states {
        let expected = row_fields(row, &STEPS);
        seen.insert(expected["status"].as_str().unwrap().to_owned());
        let by_time = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for as_of in [version.to_string(), by_time.replace('+', "%2B")] {
            let (code, v) = get(app, &format!("/v1/sagas/{id}?as_of={as_of}")).await;
            assert_eq!(code, 200, "{v}");
            assert_eq!(v["as_of"]["version"], *version, "as_of={as_of}: {v:#}");
            assert_eq!(
                saga_fields(&v),
                expected,
                "saga {id} as of {as_of}: the read (left) differs from the row then (right)"
            );
            assert_eq!(
                booking_fields(&v["booking"]),
                booking_fields(booking),
                "booking in the saga as of {as_of}"
            );
            let (code, b) = get(app, &format!("/v1/bookings/{id}?as_of={as_of}")).await;
            assert_eq!(code, 200, "{b}");
            assert_eq!(
                booking_fields(&b),
                booking_fields(booking),
                "booking {id} as of {as_of}: the read (left) differs from the row then (right)"
            );
            assert_eq!(b["as_of"]["version"], *version);
            assert_eq!(
                b["history"].as_array().unwrap().len(),
                *version as usize,
                "the history up to then"
            );
            assert_eq!(b["sagas"][0]["status"], expected["status"]);
        }
    }
    seen
}

#[tokio::test]
async fn an_as_of_read_at_each_version_equals_the_state_recorded_then() {
    let app = spawn_app().await;
    capture_states(&app).await;

    // Declined: compensated at authorization.
    let declined = app
        .start_booking(booking_input("asof-1", "pm_card_chargeDeclined"))
        .await;
    assert_eq!(app.wait_terminal(declined).await["status"], "compensated");
    // Completed after two failed authorization attempts.
    app.double
        .inject(Fault::server_error(Operation::Create).times(2));
    let happy = app
        .start_booking(booking_input("asof-2", "pm_card_visa"))
        .await;
    let v = app.wait_terminal(happy).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    // Capture failing past its give-up deadline: refund (nothing to refund), void (failing once,
    // so the saga commits as compensating), release.
    app.double
        .inject(Fault::server_error(Operation::Capture).times(100));
    app.double
        .inject(Fault::server_error(Operation::Cancel).times(1));
    let undone = app
        .start_booking(booking_input("asof-3", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(undone).await["status"], "compensated");

    let mut seen = BTreeSet::new();
    for id in [declined, happy, undone] {
        seen.extend(check_every_version(&app, id).await);
    }
    // Earlier states were compared, not only the final ones.
    for status in ["running", "compensating", "completed", "compensated"] {
        assert!(
            seen.contains(status),
            "no {status} state compared: {seen:?}"
        );
    }
    // The happy saga's authorization attempts show as they were made.
    let versions: Vec<i32> = captured(&app, happy)
        .await
        .into_iter()
        .map(|(v, ..)| v)
        .collect();
    let mut authorize_attempts = BTreeSet::new();
    for v in &versions {
        let (_, s) = get(&app, &format!("/v1/sagas/{happy}?as_of={v}")).await;
        if s["current_step"] == "authorize_payment" {
            authorize_attempts.insert(s["attempt"].as_i64().unwrap());
        }
    }
    assert!(
        authorize_attempts.is_superset(&BTreeSet::from([1, 2])),
        "{authorize_attempts:?}"
    );
    // What the steps' events recorded, as of the end.
    let (_, end) = get(&app, &format!("/v1/sagas/{happy}?as_of={}", u16::MAX)).await;
    assert_eq!(end["error"]["code"], "not_found", "{end}");
    let last = captured(&app, happy).await.last().unwrap().0;
    let (_, end) = get(&app, &format!("/v1/sagas/{happy}?as_of={last}")).await;
    assert_eq!(
        end["outputs"]["confirm_booking"]["confirmation_code"],
        v["context"]["confirm_booking"]["confirmation_code"]
    );
    assert_eq!(
        end["outputs"]["authorize_payment"]["payment_intent_id"],
        v["context"]["authorize_payment"]["payment_intent_id"]
    );
}

#[tokio::test]
async fn malformed_or_out_of_range_as_of_is_refused_with_a_message() {
    let app = spawn_app().await;
    let id = app
        .start_booking(booking_input("asof-bad", "pm_card_visa"))
        .await;
    app.wait_terminal(id).await;
    for path in [format!("/v1/sagas/{id}"), format!("/v1/bookings/{id}")] {
        for bad in [
            "yesterday",
            "0",
            "-3",
            "4.5",
            "2026-12-03",
            "2026-12-03T10:15:00",
            "99999999999",
        ] {
            let (code, v) = get(&app, &format!("{path}?as_of={bad}")).await;
            assert_eq!(code, 400, "{path}?as_of={bad}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.starts_with("as_of must be"), "{msg}");
            assert!(msg.contains(bad), "{msg}");
        }
        let (code, v) = get(&app, &format!("{path}?as_of=2000-01-01T00:00:00Z")).await;
        assert_eq!(code, 404, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("did not exist at 2000-01-01"), "{msg}");
        let (code, v) = get(&app, &format!("{path}?as_of=500")).await;
        assert_eq!(code, 404, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("as_of version 500 is past the last one"),
            "{msg}"
        );
        // The read without as_of is unchanged.
        let (code, _) = get(&app, &path).await;
        assert_eq!(code, 200);
    }
    let unknown = Uuid::new_v4();
    for path in [
        format!("/v1/sagas/{unknown}"),
        format!("/v1/bookings/{unknown}"),
    ] {
        let (code, v) = get(&app, &format!("{path}?as_of=1")).await;
        assert_eq!(code, 404, "{v}");
    }
}
