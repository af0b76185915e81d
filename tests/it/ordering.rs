//! The ordering contract of outgoing webhooks (`webhooks/README.md`): published versions have
//! gaps, and each message's `previous_version` lets a receiver that gets messages in any order
//! apply them in the booking's order without waiting for a message that never comes.

use std::collections::{HashMap, HashSet};

use sagad::outbound::catalog;
use sagad_test_support::Receiver;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{TestApp, booking_input, eventually, spawn_app};

/// A receiver's application side: holds a message until the one before it is applied.
#[derive(Default)]
struct Orderer {
    applied: Vec<i64>,
    held: Vec<Value>,
}

impl Orderer {
    /// `previous`: what a message says comes before it (`None`: nothing).
    fn offer(&mut self, m: Value, previous: impl Fn(&Value) -> Option<i64>) {
        self.held.push(m);
        while let Some(i) = self
            .held
            .iter()
            .position(|m| previous(m).is_none_or(|p| self.applied.contains(&p)))
        {
            let m = self.held.remove(i);
            self.applied
                .push(m["aggregate_version"].as_i64().expect("version"));
        }
    }
}

fn by_previous_version(m: &Value) -> Option<i64> {
    m["previous_version"].as_i64()
}

/// The contract that was promised before: versions 1, 2, 3 … without gaps.
fn by_version_minus_one(m: &Value) -> Option<i64> {
    let v = m["aggregate_version"].as_i64().expect("version");
    (v > 1).then_some(v - 1)
}

fn apply_all(messages: &[Value], previous: impl Fn(&Value) -> Option<i64> + Copy) -> Orderer {
    let mut o = Orderer::default();
    for m in messages {
        o.offer(m.clone(), previous);
    }
    o
}

async fn subscribe(app: &TestApp, url: &str, types: &[&str]) -> Uuid {
    let resp = app
        .post("/v1/webhook-endpoints")
        .json(&json!({ "url": url, "event_types": types }))
        .send()
        .await
        .expect("create endpoint");
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.expect("endpoint");
    body["id"].as_str().expect("id").parse().expect("uuid")
}

/// The booking's published events as (version, public type), in version order.
async fn published(app: &TestApp, id: Uuid) -> Vec<(i64, &'static str)> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT version, event_type FROM events WHERE aggregate_id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .expect("events");
    rows.into_iter()
        .filter_map(|(v, t)| catalog::public_type(&t).map(|p| (i64::from(v), p)))
        .collect()
}

/// The distinct messages of aggregate `id` a receiver accepted, in arrival order, once there are
/// `n` of them.
async fn messages(rx: &Receiver, id: Uuid, n: usize) -> Vec<Value> {
    eventually(&format!("{n} messages of {id} at {}", rx.url), || async {
        let mut seen = HashSet::new();
        let got: Vec<Value> = rx
            .hits()
            .into_iter()
            .filter(|h| h.accepted() && seen.insert(h.header("webhook-id")))
            .map(|h| h.json())
            .filter(|m| m["aggregate_id"] == id.to_string())
            .collect();
        (got.len() >= n).then_some(got)
    })
    .await
}

#[tokio::test]
async fn a_receiver_that_reorders_messages_applies_them_in_order_by_previous_version() {
    let app = spawn_app().await;
    let everything = Receiver::start().await;
    let bookings_only = Receiver::start().await;
    subscribe(&app, &everything.url, &["*"]).await;
    subscribe(&app, &bookings_only.url, &["booking.*"]).await;

    let id = app
        .start_booking(booking_input("ordering-1", "pm_card_visa"))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "completed");
    let published = published(&app, id).await;
    let versions: Vec<i64> = published.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.windows(2).any(|w| w[1] != w[0] + 1),
        "a completed booking's published versions have a gap (an internal event): {versions:?}"
    );

    let got = messages(&everything, id, published.len()).await;
    assert_eq!(
        got.len(),
        published.len(),
        "one message per published event"
    );
    for m in &got {
        let v = m["aggregate_version"].as_i64().expect("version");
        let before = versions.iter().rev().find(|p| **p < v).copied();
        assert_eq!(by_previous_version(m), before, "previous_version of {m}");
    }

    // However the receiver reorders them, previous_version puts them in the booking's order and
    // nothing is left waiting.
    let mut orders = vec![got.clone(), got.iter().rev().cloned().collect()];
    for k in 1..got.len() {
        let mut rotated = got.clone();
        rotated.rotate_left(k);
        orders.push(rotated);
    }
    for order in &orders {
        let o = apply_all(order, by_previous_version);
        assert!(o.held.is_empty(), "left waiting: {:?}", o.held);
        assert_eq!(o.applied, versions);
    }
    // Waiting for version - 1, as the old promise said, waits forever at the gap.
    let naive = apply_all(
        &got.iter().rev().cloned().collect::<Vec<_>>(),
        by_version_minus_one,
    );
    assert!(!naive.held.is_empty(), "the gapless promise does not hold");

    // A subscriber to part of the catalog: every message it gets is in version order by
    // aggregate_version, and previous_version still names the previous published event.
    let booking_versions: Vec<i64> = published
        .iter()
        .filter(|(_, t)| t.starts_with("booking."))
        .map(|(v, _)| *v)
        .collect();
    let partial = messages(&bookings_only, id, booking_versions.len()).await;
    let mut got_versions: Vec<i64> = partial
        .iter()
        .map(|m| m["aggregate_version"].as_i64().expect("version"))
        .collect();
    got_versions.sort();
    assert_eq!(got_versions, booking_versions);
    let previous: HashMap<i64, Option<i64>> = got
        .iter()
        .map(|m| {
            (
                m["aggregate_version"].as_i64().expect("v"),
                by_previous_version(m),
            )
        })
        .collect();
    for m in &partial {
        let v = m["aggregate_version"].as_i64().expect("v");
        assert_eq!(
            by_previous_version(m),
            previous[&v],
            "the same in every endpoint's message"
        );
    }

    // A redelivery carries the same previous_version.
    let (delivery,): (Uuid,) = sqlx::query_as(
        "SELECT d.id FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id
         JOIN webhook_endpoints ep ON ep.id = d.endpoint_id
         WHERE e.aggregate_id = $1 AND ep.event_types = '{*}' ORDER BY e.version DESC LIMIT 1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("a delivery");
    eventually("the delivery to be settled as delivered", || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE id = $1")
                .bind(delivery)
                .fetch_one(&app.pool)
                .await
                .expect("status");
        (status == "delivered").then_some(())
    })
    .await;
    let before = everything.count();
    let resp = app
        .post(&format!("/v1/webhook-deliveries/{delivery}/redeliver"))
        .send()
        .await
        .expect("redeliver");
    assert!(resp.status().is_success(), "{}", resp.status());
    let again = everything.wait_hits(before + 1).await;
    let again = again.last().expect("the redelivery").json();
    let last = got
        .iter()
        .find(|m| m["event_id"] == again["event_id"])
        .expect("the original message");
    assert_eq!(again["previous_version"], last["previous_version"]);
    app.stop().await;
}
