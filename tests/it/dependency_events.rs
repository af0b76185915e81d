//! A dependency's circuit breaker, seen from outside: its transitions as operator events,
//! published as `dependency.circuit_opened` / `dependency.circuit_closed`, its metrics, and the
//! sagas paused on it listed as waiting.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{
    AppOptions, TestApp, booking_definition, booking_input, eventually, spawn_app_with,
    start_concurrently, test_settings,
};
use crate::outbound::{assert_matches_schema, create_endpoint, verify};
use sagad_test_support::Receiver;

/// The booking saga with give-up deadlines long enough for a test-sized outage.
fn patient_definition() -> sagad::engine::definition::SagaDefinition {
    let mut def = booking_definition();
    for s in &mut def.steps {
        s.give_up_after = s.give_up_after.map(|_| Duration::from_secs(60));
    }
    def
}

/// The value of the series `name{labels}` in a Prometheus scrape (labels as written there,
/// e.g. `dependency="notify"`), if the scrape has it.
fn metric(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The events of every dependency aggregate: (type, version, payload, metadata).
async fn dependency_events(pool: &PgPool) -> Vec<(String, i32, Value, Value)> {
    sqlx::query_as(
        "SELECT event_type, version, payload, metadata FROM events
         WHERE aggregate_type = 'dependency' ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn transitions(app: &TestApp, transition: &str) -> f64 {
    metric(
        &app.metrics().await,
        "sagad_dependency_transitions_total",
        &[
            "dependency=\"notify\"",
            &format!("transition=\"{transition}\""),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_gateway_outage_publishes_opened_then_closed_and_a_decline_publishes_nothing() {
    let app = spawn_app_with(AppOptions {
        definitions: vec![patient_definition()],
        ..Default::default()
    })
    .await;
    let rx = Receiver::start().await;
    let (endpoint, secret) = create_endpoint(&app, &rx.url, &["dependency.*"]).await;
    // The recorder is shared by every test of this process: only this test opens the notify
    // breaker, and its counters only grow.
    let (opened_before, closed_before) = (
        transitions(&app, "opened").await,
        transitions(&app, "closed").await,
    );

    // Stripe declines enough cards to open its breaker, were a decline a failure.
    let min_calls = test_settings().breakers.min_calls as usize;
    let declined = start_concurrently(
        &[&app],
        (0..min_calls)
            .map(|i| booking_input(&format!("dep-decline-{i}"), "pm_card_chargeDeclined"))
            .collect(),
    )
    .await;
    for id in &declined {
        assert_eq!(app.wait_terminal(*id).await["status"], "compensated");
    }
    // Every decline counted against the breaker (answers are counted within a second).
    eventually(
        "the declines counted against the Stripe breaker",
        || async {
            let counted: Option<(String, i32)> = sqlx::query_as(
            "SELECT state, calls + prev_calls FROM dependency_breakers WHERE dependency = 'stripe'",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap();
            counted.filter(|(_, calls)| *calls as usize >= min_calls)
        },
    )
    .await;
    let (state, _): (String, i32) =
        sqlx::query_as("SELECT state, opens FROM dependency_breakers WHERE dependency = 'stripe'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(state, "closed", "a decline is an answer");
    let events = dependency_events(&app.pool).await;
    assert!(events.is_empty(), "{events:?}");

    // The notification gateway goes down while sagas reach their last step.
    const SAGAS: usize = 5;
    app.notify.answer(503);
    let ids = start_concurrently(
        &[&app],
        (0..SAGAS)
            .map(|i| booking_input(&format!("dep-outage-{i}"), "pm_card_visa"))
            .collect(),
    )
    .await;
    eventually("dependency.circuit_opened at the endpoint", || async {
        (rx.count() >= 1).then_some(())
    })
    .await;
    // While it is open: the breaker's state, and the sagas paused on it, in the metrics.
    eventually("sagad_dependency_state 2 (open) for notify", || async {
        let scrape = app.metrics().await;
        (metric(
            &scrape,
            "sagad_dependency_state",
            &["dependency=\"notify\""],
        ) == Some(2.0))
        .then_some(())
    })
    .await;
    eventually("sagas paused on notify in the metrics", || async {
        let scrape = app.metrics().await;
        metric(
            &scrape,
            "sagad_dependency_paused_sagas",
            &["dependency=\"notify\""],
        )
        .filter(|n| *n >= 1.0)
    })
    .await;

    // Every saga waits at notify, paused (the probe's saga too, between its probes).
    eventually("every saga paused on notify", || async {
        let paused: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE paused_since IS NOT NULL
               AND wait_reason = 'dependency:notify'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (paused as usize == SAGAS).then_some(())
    })
    .await;

    // Listed as waiting, with why and until when: through the API and `sagad saga list` (a saga
    // making the breaker's probe is running meanwhile, so each waits for a listing of all five).
    let listed = eventually("the paused sagas listed as waiting", || async {
        let page = app.get_json("/v1/sagas?status=waiting").await;
        let listed = page["sagas"].as_array().cloned().unwrap_or_default();
        (listed.len() == SAGAS).then_some(listed)
    })
    .await;
    for v in &listed {
        assert_eq!(v["status"], "running", "{v:#}");
        assert_eq!(v["wait"]["reason"], "dependency:notify", "{v:#}");
        assert!(
            v["wait"]["deadline"].is_string(),
            "its give-up deadline: {v:#}"
        );
    }
    let list = eventually(
        "sagad saga list --status waiting to list all five",
        || async {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
                .args([
                    "saga",
                    "list",
                    "--status",
                    "waiting",
                    "--api-url",
                    &app.base,
                ])
                .env("SAGAD_API_TOKEN", crate::harness::OPS_TOKEN)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let list = String::from_utf8_lossy(&out.stdout).into_owned();
            ids.iter()
                .all(|id| list.contains(&id.to_string()))
                .then_some(list)
        },
    )
    .await;
    assert!(list.contains("WAITING FOR"), "{list}");
    for id in &ids {
        let line = list
            .lines()
            .find(|l| l.starts_with(&id.to_string()))
            .unwrap_or_else(|| panic!("{id} not listed: {list}"));
        assert!(line.contains("dependency:notify"), "{line}");
    }

    app.notify.answer(200);
    eventually("dependency.circuit_closed at the endpoint", || async {
        (rx.count() >= 2).then_some(())
    })
    .await;
    for id in &ids {
        let v = app.wait_terminal(*id).await;
        assert_eq!(v["status"], "completed", "{v:#}");
    }
    let accepted = app.notify.hits().iter().filter(|h| h.accepted()).count();
    assert_eq!(accepted, SAGAS, "each guest got exactly one notification");

    // The event store: opened, the probes that failed, closed; one aggregate, versions 1, 2, …
    let events = dependency_events(&app.pool).await;
    let types: Vec<&str> = events.iter().map(|(t, ..)| t.as_str()).collect();
    let failed_probes = types.len() - 2;
    assert_eq!(types[0], "DependencyCircuitOpened", "{types:?}");
    assert_eq!(
        types[types.len() - 1],
        "DependencyCircuitClosed",
        "{types:?}"
    );
    assert!(
        types[1..types.len() - 1]
            .iter()
            .all(|t| *t == "DependencyProbeFailed"),
        "{types:?}"
    );
    let versions: Vec<i32> = events.iter().map(|(_, v, ..)| *v).collect();
    assert_eq!(versions, (1..=types.len() as i32).collect::<Vec<_>>());
    for (_, _, payload, metadata) in &events {
        assert_eq!(payload["dependency"], "notify", "{payload}");
        assert_eq!(payload["actor"], "system", "{payload}");
        assert!(metadata["worker"].is_string(), "{metadata}");
    }

    // The endpoint got exactly the two published ones, signed, as the schemas document them.
    let delivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'delivered'",
    )
    .bind(endpoint)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(delivered, 2);
    let hits = rx.hits();
    assert_eq!(hits.len(), 2, "one delivery each, both accepted first time");
    for h in &hits {
        assert!(verify(&secret, &h.headers, &h.body), "signed");
        assert_matches_schema(&h.json());
    }
    let (opened, closed) = (hits[0].json(), hits[1].json());
    assert_eq!(opened["type"], "dependency.circuit_opened", "{opened:#}");
    assert_eq!(closed["type"], "dependency.circuit_closed", "{closed:#}");
    let aggregate: Uuid = opened["aggregate_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(closed["aggregate_id"], opened["aggregate_id"]);
    assert_eq!(opened["aggregate_type"], "dependency");
    assert_eq!(
        (&opened["aggregate_version"], &opened["previous_version"]),
        (&Value::from(1), &Value::Null)
    );
    assert_eq!(closed["previous_version"], 1, "{closed:#}");
    assert_eq!(closed["aggregate_version"], types.len());
    let o = &opened["data"];
    assert_eq!(
        (&o["dependency"], &o["cause"]),
        (&Value::from("notify"), &Value::from("failure_rate")),
        "{o:#}"
    );
    let (calls, failures) = (
        o["calls"].as_i64().unwrap(),
        o["failures"].as_i64().unwrap(),
    );
    assert!(
        calls >= min_calls as i64 && failures * 2 >= calls,
        "opened at {failures} failures of {calls} calls"
    );
    assert!(
        o["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{failures} of {calls} calls failed")),
        "{o:#}"
    );
    let c = &closed["data"];
    assert_eq!(c["failed_probes"], failed_probes, "{c:#}");
    assert!(c["woken_sagas"].as_i64().unwrap() >= 1, "{c:#}");
    let row_aggregate: Uuid = sqlx::query_scalar(
        "SELECT aggregate_id FROM dependency_breakers WHERE dependency = 'notify'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(aggregate, row_aggregate);

    // The transitions this process made.
    assert!(transitions(&app, "opened").await > opened_before);
    assert!(transitions(&app, "closed").await > closed_before);
}
