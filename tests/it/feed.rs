//! The global event feed: gap-safe under concurrent writers, long polling, bad input, the CLI.

use std::collections::HashSet;
use std::time::Duration;

use sagad::events::{Event, NewEvent};
use sagad::store::events;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{TOKEN, TestApp, eventually, spawn_app};

/// Appends `n` events to a fresh aggregate, each in its own transaction; their ids.
async fn append_each(pool: &PgPool, n: i32) -> Vec<Uuid> {
    let aggregate = Uuid::now_v7();
    let mut ids = Vec::new();
    for version in 1..=n {
        let mut conn = pool.acquire().await.expect("connection");
        ids.extend(
            events::append(&mut conn, "feed_test", aggregate, version, &[note(version)])
                .await
                .expect("append"),
        );
    }
    ids
}

fn note(i: i32) -> NewEvent {
    NewEvent::from(Event::NotificationSent {
        status_code: 200 + i as u16,
    })
}

fn position(e: &Value) -> (u64, i64) {
    let p = e["position"].as_str().expect("position");
    let (tx, seq) = p.split_once('.').expect("tx.seq");
    (tx.parse().expect("tx"), seq.parse().expect("seq"))
}

async fn page(app: &TestApp, query: &str) -> Value {
    let resp = app
        .get(&format!("/v1/events?{query}"))
        .send()
        .await
        .expect("GET /v1/events");
    assert_eq!(resp.status(), 200, "GET /v1/events?{query}");
    resp.json().await.expect("feed page")
}

/// A transaction that appended first and commits last must not be skipped: a reader polling all
/// along sees every event exactly once, in position order. A reader of `seq > $after` (checked
/// here too, on the same data) misses it.
#[tokio::test]
async fn the_feed_never_skips_an_event_whose_transaction_commits_late() {
    const WRITERS: usize = 4;
    const EACH: i32 = 25;
    let app = spawn_app().await;

    // The slow transaction takes the smallest seq of all, and holds it.
    let mut slow = app.pool.begin().await.expect("begin");
    let slow_id = events::append(&mut slow, "feed_test", Uuid::now_v7(), 1, &[note(0)])
        .await
        .expect("slow append")[0];
    let slow_seq: i64 = sqlx::query_scalar("SELECT seq FROM events WHERE event_id = $1")
        .bind(slow_id)
        .fetch_one(&mut *slow)
        .await
        .expect("slow seq");

    let total = 1 + WRITERS * EACH as usize;
    let (polls_tx, mut polls) = tokio::sync::watch::channel(0u64);
    let reader = {
        let http = app.http.clone();
        let base = app.base.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut after = String::from("0.0");
            let mut seen: Vec<Value> = Vec::new();
            while seen.len() < total {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the feed reader saw {} of {total} events; missing the slow one: {}",
                    seen.len(),
                    !seen.iter().any(|e| e["event_id"] == slow_id.to_string())
                );
                let page: Value = http
                    .get(format!("{base}/v1/events"))
                    .query(&[("after", after.as_str()), ("limit", "5")])
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .expect("poll")
                    .json()
                    .await
                    .expect("page");
                seen.extend(page["events"].as_array().expect("events").iter().cloned());
                after = page["next"].as_str().expect("next").to_owned();
                polls_tx.send_modify(|n| *n += 1);
                tokio::task::yield_now().await;
            }
            seen
        })
    };

    // Concurrent writers commit later events while the slow transaction is open.
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let pool = app.pool.clone();
            tokio::spawn(async move { append_each(&pool, EACH).await })
        })
        .collect();
    let mut written: HashSet<String> = HashSet::from([slow_id.to_string()]);
    for w in writers {
        for id in w.await.expect("writer") {
            written.insert(id.to_string());
        }
    }

    // A naive reader, on the same data, has read past the slow event's seq by now.
    let naive_after: i64 = sqlx::query_scalar("SELECT max(seq) FROM events")
        .fetch_one(&app.pool)
        .await
        .expect("naive read");
    assert!(
        naive_after > slow_seq,
        "the writers' seqs follow the slow one"
    );

    // Let the feed reader poll twice more with everything but the slow event committed.
    let at = *polls.borrow();
    tokio::time::timeout(Duration::from_secs(20), polls.wait_for(|n| *n >= at + 2))
        .await
        .expect("the feed reader to poll twice after the writers finished")
        .expect("reader alive");
    slow.commit().await.expect("commit the slow transaction");

    let naive_rest: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE seq > $1 ORDER BY seq")
            .bind(naive_after)
            .fetch_all(&app.pool)
            .await
            .expect("naive read on");
    assert!(
        !naive_rest.contains(&slow_id),
        "a reader of seq > $after skips the late commit"
    );

    let seen = reader.await.expect("reader");
    let ids: Vec<String> = seen
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "every event exactly once");
    assert_eq!(unique, written, "every event written, nothing else");
    let positions: Vec<(u64, i64)> = seen.iter().map(position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in position order: {positions:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_long_poll_answers_with_the_event_that_arrives_and_types_filter() {
    let app = spawn_app().await;
    let first = page(&app, "").await;
    assert_eq!(first["events"], Value::Array(vec![]));
    let after = first["next"].as_str().expect("next").to_owned();

    let poll = {
        let req = app
            .get("/v1/events")
            .query(&[("after", after.as_str()), ("wait", "20s")]);
        tokio::spawn(async move { req.send().await.expect("long poll").json::<Value>().await })
    };
    let ids = append_each(&app.pool, 1).await;
    let got = poll.await.expect("poll task").expect("page");
    assert_eq!(got["events"][0]["event_id"], ids[0].to_string());
    assert_eq!(got["events"][0]["event_type"], "NotificationSent");
    let next = position(&serde_json::json!({ "position": got["next"] }));
    assert!(
        next >= position(&got["events"][0]),
        "next is not behind the event read"
    );

    // A filter that matches nothing still moves `next` past what it skipped.
    let skipped = page(
        &app,
        &format!("after={after}&types=BookingCancelled,SagaStuck"),
    )
    .await;
    assert_eq!(skipped["events"], Value::Array(vec![]));
    let next = skipped["next"].as_str().expect("next");
    let next = position(&serde_json::json!({ "position": next }));
    assert!(
        next > position(&got["events"][0]),
        "{next:?} is past the skipped event"
    );
    let matching = page(&app, &format!("after={after}&types=NotificationSent")).await;
    assert_eq!(matching["events"][0]["event_id"], ids[0].to_string());
    app.stop().await;
}

#[tokio::test]
async fn bad_feed_queries_are_400_with_a_message() {
    let app = spawn_app().await;
    for (query, says) in [
        ("after=12", "is not a feed position"),
        ("after=abc.1", "is not a feed position"),
        ("after=-1.2", "is not a feed position"),
        ("after=1.2.3", "is not a feed position"),
        ("after=123456789012345678901.1", "is not a feed position"),
        ("limit=-5", "limit must be between 1 and 1000"),
        ("limit=0", "limit must be between 1 and 1000"),
        ("limit=1001", "limit must be between 1 and 1000"),
        ("limit=ten", "limit"),
        (
            "types=BookingCanceled",
            "unknown event type \"BookingCanceled\"",
        ),
        ("types=,", "types is empty"),
        ("wait=soon", "invalid wait"),
    ] {
        let resp = app
            .get(&format!("/v1/events?{query}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await.expect("error body");
        let msg = body["error"]["message"].as_str().expect("message");
        assert!(msg.contains(says), "{query}: {msg}");
    }
    app.stop().await;
}

#[tokio::test]
async fn events_tail_prints_the_feed_and_refuses_a_bad_position() {
    let app = spawn_app().await;
    append_each(&app.pool, 3).await;
    // Readable once every transaction that began before they committed has ended.
    eventually("the three events in the feed", || async {
        let p = page(&app, "").await;
        (p["events"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    let tail = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
            .args([
                "events",
                "--api-url",
                &app.base,
                "--token",
                TOKEN,
                "tail",
                "--once",
            ])
            .args(args)
            .output()
    };
    let out = tail(&[]).await.expect("run sagad events tail");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in &lines {
        assert!(line.contains("NotificationSent"), "{line}");
    }
    // From the first event's position on: the two others.
    let first = lines[0].split_whitespace().next().expect("position");
    let out = tail(&["--after", first]).await.expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(!stdout.contains(first), "{stdout}");

    let out = tail(&["--types", "SagaStuck"]).await.expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 0);

    let out = tail(&["--after", "yesterday"]).await.expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 400") && err.contains("is not a feed position"),
        "{err}"
    );
    let out = tail(&["--types", "BookingCanceled"]).await.expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 400") && err.contains("unknown event type \"BookingCanceled\""),
        "{err}"
    );
    app.stop().await;
}
