//! A SIGKILL during a date/price change, then a restart on the same database: the change ends in
//! one of its two valid states, with every effect at most once per idempotency key.
//!
//! Each test runs the real `sagad serve` (the crash run's harness), books a stay, starts a change
//! of it, and kills the process at one point inside the change, chosen by making a peer hold a
//! request: the Stripe double answers late (the effect done and stored under its key, the answer
//! not yet sent) or refuses, the notification gateway hangs. sagad restarts on the same database
//! and port, and the change runs to its end. Then:
//! - completed: the booking has the new nights and price, its one claim is on the new nights, the
//!   nights it gave up are free and bookable, the difference was captured (a higher price) or
//!   refunded from the booking's payment (a lower one) exactly once;
//! - compensated: the booking is exactly as before (nights, price, claim, confirmed), the new
//!   nights are free and bookable, the difference's authorization voided and never captured,
//!   nothing refunded from the booking's payment;
//! - either way: one PaymentIntent for the difference at most; each capture, void and refund of
//!   a PaymentIntent tried under one key only (sagad's key for that effect of the change) and
//!   performed at most once; the change holds no claim; no two bookings' active claims overlap;
//!   the bookings projection folds again from the events without drift.

use std::time::Duration;

use chrono::NaiveDate;
use sagad_test_support::{Receiver, Reply};
use serde_json::{Value, json};
use sqlx::PgPool;
use stripe_double::{AttemptOutcome, Fault, Operation, PaymentIntentRecord, StripeDouble};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::crash::{Env, Sagad, free_port, start_sagad};
use crate::harness::{TOKEN, booking_input, eventually, fresh_database, future_day};

/// How long the double holds back the answer it is made to delay: far longer than the test takes
/// to kill sagad once the effect is done (the killed process never sees the answer), no longer
/// than the restarted process waits for the dead one's lease (so the held request is in the
/// double's log by the time the change ends).
const HELD: Duration = Duration::from_secs(2);

/// The booking being changed: nights `0..3` for 450.00.
const BOOKED: (u64, u64, i64) = (0, 3, 45000);

/// Where the process is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    /// The difference's PaymentIntent created and authorized at Stripe, the answer not back.
    AuthorizeInFlight,
    /// The difference authorized; its capture refused by Stripe (500) and being retried.
    CaptureRetrying,
    /// The difference captured at Stripe, the answer not back.
    CaptureInFlight,
    /// The swap committed (the booking on its new nights), the guest's notification hanging.
    NotifyInFlight,
    /// The capture given up on, the change compensating: the authorization voided at Stripe,
    /// the answer not back.
    VoidInFlight,
    /// A lower price: the swap committed, the difference refunded at Stripe, the answer not back.
    RefundInFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Compensated,
}

impl KillPoint {
    /// The change asked for: nights and price.
    fn change(self) -> (u64, u64, i64) {
        match self {
            // A lower price: one night fewer.
            KillPoint::RefundInFlight => (0, 2, 30000),
            // A higher price: shifted by a night and one longer, overlapping the old stay.
            _ => (1, 5, 60000),
        }
    }

    /// The state this kill point leads to (checked on top of "one of the two").
    fn expected(self) -> End {
        match self {
            KillPoint::VoidInFlight => End::Compensated,
            _ => End::Completed,
        }
    }

    /// The steps' give-up deadline: short where the capture is to fail for good.
    fn give_up_after(self) -> &'static str {
        match self {
            KillPoint::VoidInFlight => "300ms",
            _ => "1m",
        }
    }

    /// Makes the peers hold the change at this point.
    fn arm(self, double: &StripeDouble, notify: &Receiver) {
        match self {
            KillPoint::AuthorizeInFlight => double.inject(Fault::latency(Operation::Create, HELD)),
            KillPoint::CaptureRetrying => {
                double.inject(Fault::server_error(Operation::Capture).times(u32::MAX))
            }
            KillPoint::CaptureInFlight => double.inject(Fault::latency(Operation::Capture, HELD)),
            KillPoint::NotifyInFlight => notify.answer_with(Reply::Hang),
            KillPoint::VoidInFlight => {
                double.inject(Fault::server_error(Operation::Capture).times(u32::MAX));
                double.inject(Fault::latency(Operation::Cancel, HELD));
            }
            KillPoint::RefundInFlight => double.inject(Fault::latency(Operation::Refund, HELD)),
        }
    }

    /// Whether the change has reached this point (read from the peers and the database).
    async fn reached(self, k: &Kill<'_>) -> bool {
        let pi = k.difference();
        match self {
            KillPoint::AuthorizeInFlight => pi.is_some_and(|p| p.effects.authorizations == 1),
            KillPoint::CaptureRetrying => pi.is_some_and(|p| {
                k.double
                    .attempts_on(&p.id)
                    .iter()
                    .any(|a| a.outcome == AttemptOutcome::Failed)
            }),
            KillPoint::CaptureInFlight => pi.is_some_and(|p| p.effects.captures == 1),
            KillPoint::NotifyInFlight => {
                k.booking_changed().await
                    && k.notify
                        .hits()
                        .iter()
                        .any(|h| h.json()["saga_id"] == json!(k.change.to_string()))
            }
            KillPoint::VoidInFlight => pi.is_some_and(|p| p.effects.cancels == 1),
            KillPoint::RefundInFlight => {
                k.double
                    .payment_intent(&k.booking_pi)
                    .is_some_and(|p| p.effects.refunds == 1)
                    && k.booking_changed().await
            }
        }
    }

    /// The Stripe operation whose answer the double holds back, if any.
    fn held(self) -> Option<Operation> {
        match self {
            KillPoint::AuthorizeInFlight => Some(Operation::Create),
            KillPoint::CaptureInFlight => Some(Operation::Capture),
            KillPoint::VoidInFlight => Some(Operation::Cancel),
            KillPoint::RefundInFlight => Some(Operation::Refund),
            KillPoint::CaptureRetrying | KillPoint::NotifyInFlight => None,
        }
    }

    /// The event the killed process had not recorded when it died: the kill landed inside the
    /// step, not after it.
    fn unrecorded(self) -> &'static str {
        match self {
            KillPoint::AuthorizeInFlight => "PaymentAuthorized",
            KillPoint::CaptureRetrying | KillPoint::CaptureInFlight => "PaymentCaptured",
            KillPoint::NotifyInFlight => "NotificationSent",
            KillPoint::VoidInFlight => "PaymentVoided",
            KillPoint::RefundInFlight => "PaymentRefunded",
        }
    }
}

/// One run: the peers, the database, the booking and its change.
struct Kill<'a> {
    point: KillPoint,
    pool: &'a PgPool,
    double: &'a StripeDouble,
    notify: &'a Receiver,
    listing: String,
    booking: Uuid,
    booking_pi: String,
    change: Uuid,
}

impl Kill<'_> {
    /// The difference's PaymentIntent, if the change created one.
    fn difference(&self) -> Option<PaymentIntentRecord> {
        let mut pis = payment_intents_of(self.double, self.change);
        assert!(
            pis.len() <= 1,
            "one PaymentIntent for the difference: {pis:?}"
        );
        pis.pop()
    }

    async fn booking_changed(&self) -> bool {
        events_of(self.pool, self.booking, "BookingChanged").await == 1
    }
}

fn payment_intents_of(double: &StripeDouble, saga: Uuid) -> Vec<PaymentIntentRecord> {
    let saga = saga.to_string();
    double
        .payment_intents()
        .into_iter()
        .filter(|p| p.metadata.get("saga_id") == Some(&saga))
        .collect()
}

/// How many events of type `event_type` `aggregate` has.
async fn events_of(pool: &PgPool, aggregate: Uuid, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = $2")
        .bind(aggregate)
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A shipped saga definition with test-sized timings: step timeouts under the crash harness's
/// 3 s lease, retries in milliseconds, `give_up_after` on the steps that have one. Steps,
/// actions, compensations, parameters and failure policies are the shipped ones (checked).
fn test_sized(src: &str, give_up_after: &str) -> String {
    let text: Vec<String> = src
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            match key {
                "timeout" => "timeout = \"2s\"".to_owned(),
                "retry" => "retry = { max_attempts = 12, base_delay = \"20ms\", max_delay = \"200ms\", jitter = 0.2 }".to_owned(),
                "compensation_retry" => "compensation_retry = { max_attempts = 40, base_delay = \"20ms\", max_delay = \"200ms\", jitter = 0.2 }".to_owned(),
                "give_up_after" => format!("give_up_after = \"{give_up_after}\""),
                _ => line.to_owned(),
            }
        })
        .collect();
    let text = text.join("\n");
    let catalog = sagad::engine::actions::catalog();
    let shape = |src: &str| {
        let def = sagad::engine::definition::parse(src, "test.toml", &catalog)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let steps: Vec<_> = def
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    format!("{:?} {:?} {:?}", s.action, s.compensation, s.on_failure),
                    s.params.clone(),
                )
            })
            .collect();
        (def.name, steps)
    };
    assert_eq!(shape(&text), shape(src), "the shipped steps, retimed only");
    text
}

/// The running process and how to start it again.
struct Process {
    env: Env,
    sagad: Sagad,
    http: reqwest::Client,
}

impl Process {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.sagad.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.sagad.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// Books nights `a..b` of `listing` and waits for the booking saga's end; its status.
    async fn book(
        &self,
        pool: &PgPool,
        listing: &str,
        a: u64,
        b: u64,
        amount: i64,
    ) -> (Uuid, String) {
        let mut input = booking_input(listing, "pm_card_visa");
        input["check_in"] = json!(future_day(a));
        input["check_out"] = json!(future_day(b));
        input["amount"] = json!(amount);
        let (status, v) = self
            .post("/v1/sagas", json!({"saga": "booking", "input": input}))
            .await;
        assert!(status == 201 || status == 202, "{status} {v}");
        let id: Uuid = v["id"].as_str().unwrap().parse().unwrap();
        (id, terminal(pool, id).await)
    }

    async fn kill(&mut self) {
        self.sagad.child.start_kill().unwrap(); // SIGKILL
        self.sagad.child.wait().await.unwrap();
    }

    /// Starts `sagad serve` again on the same database and port.
    async fn restart(&mut self) {
        self.sagad = start_sagad(&self.env, &[("SAGAD_WORKERS", "4")]).await;
    }

    /// The listing's ranges over nights `a..b`, as (first night, end, state, booking).
    async fn availability(
        &self,
        listing: &str,
        a: u64,
        b: u64,
    ) -> Vec<(String, String, String, Value)> {
        let v = self
            .get(&format!(
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
                    r["booking_id"].clone(),
                )
            })
            .collect()
    }
}

/// Waits for a saga to end; its status.
async fn terminal(pool: &PgPool, id: Uuid) -> String {
    eventually(&format!("saga {id} to end"), || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM sagas WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .ok()
            .filter(|s| ["completed", "compensated", "stuck"].contains(&s.as_str()))
    })
    .await
}

fn range(a: u64, b: u64, state: &str, booking: Option<Uuid>) -> (String, String, String, Value) {
    (
        future_day(a),
        future_day(b),
        state.to_owned(),
        booking.map_or(Value::Null, |b| json!(b.to_string())),
    )
}

fn day(n: u64) -> NaiveDate {
    future_day(n).parse().unwrap()
}

async fn killed_during_a_change(point: KillPoint) {
    let (pool, db_url) = fresh_database().await;
    let double = StripeDouble::start(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    let notify = Receiver::start().await;
    let work = std::env::temp_dir().join(format!("sagad-change-kill-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(work.join("sagas")).unwrap();
    for (file, src) in [
        ("booking.toml", include_str!("../../sagas/booking.toml")),
        ("booking_change.toml", sagad::config::BUILTIN_BOOKING_CHANGE),
    ] {
        let text = test_sized(src, point.give_up_after());
        std::fs::write(work.join("sagas").join(file), text).unwrap();
    }
    let env = Env {
        db_url,
        stripe_base: double.base_url(),
        notify_url: notify.url.clone(),
        sagas_dir: work.join("sagas"),
        log: work.join("sagad.log"),
        port: free_port(),
    };
    let sagad = start_sagad(&env, &[("SAGAD_WORKERS", "4")]).await;
    let mut p = Process {
        env,
        sagad,
        http: reqwest::Client::new(),
    };
    let listing = format!("kill-{point:?}");

    let (a, b, amount) = BOOKED;
    let (booking, status) = p.book(&pool, &listing, a, b, amount).await;
    assert_eq!(status, "completed");
    let booking_pi = payment_intents_of(&double, booking).pop().unwrap().id;

    point.arm(&double, &notify);
    let (na, nb, new_amount) = point.change();
    let (status, started) = p
        .post(
            &format!("/v1/bookings/{booking}/change"),
            json!({"check_in": future_day(na), "check_out": future_day(nb), "amount": new_amount}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let k = Kill {
        point,
        pool: &pool,
        double: &double,
        notify: &notify,
        listing,
        booking,
        booking_pi,
        change: started["id"].as_str().unwrap().parse().unwrap(),
    };
    eventually(&format!("the change to reach {point:?}"), || async {
        point.reached(&k).await.then_some(())
    })
    .await;
    p.kill().await;
    assert_eq!(
        events_of(&pool, k.change, point.unrecorded()).await,
        0,
        "the kill landed after {} was recorded",
        point.unrecorded()
    );
    // The peers answer again: the retried step meets what the killed one left at Stripe.
    double.clear_faults();
    notify.answer(200);
    p.restart().await;
    let end = match terminal(&pool, k.change).await.as_str() {
        "completed" => End::Completed,
        "compensated" => End::Compensated,
        other => panic!("the change ended {other}; see {}", p.env.log.display()),
    };
    if let Some(held) = point.held() {
        // The held answer went to the dead process; once sent, it is in the double's log.
        eventually("the held request in the double's log", || async {
            double
                .requests()
                .iter()
                .any(|r| r.operation == Some(held) && r.fault.is_some())
                .then_some(())
        })
        .await;
    }

    assert_eq!(end, point.expected(), "killed at {point:?}");
    k.check_booking(&p, end).await;
    k.check_money(end);
    k.check_one_effect_per_key(point, end);
    k.check_nights(&p, end).await;
    let verified =
        sagad::projections::verify(&pool, sagad::projections::Projection::Bookings, &mut |_| {})
            .await
            .unwrap();
    assert!(verified.drift.is_empty(), "{:?}", verified.drift);
    drop(p);
    let _ = std::fs::remove_dir_all(&work);
}

impl Kill<'_> {
    /// The nights, price and status the booking should end with.
    fn expected_stay(&self, end: End) -> (u64, u64, i64) {
        match end {
            End::Completed => self.point.change(),
            End::Compensated => BOOKED,
        }
    }

    /// The booking as shown and as claimed: the new stay, or exactly the old one.
    async fn check_booking(&self, p: &Process, end: End) {
        let (a, b, amount) = self.expected_stay(end);
        let view = p.get(&format!("/v1/bookings/{}", self.booking)).await;
        let shown = (
            view["check_in"].as_str().unwrap().to_owned(),
            view["check_out"].as_str().unwrap().to_owned(),
            view["amount"].as_i64().unwrap(),
            view["status"].as_str().unwrap().to_owned(),
        );
        assert_eq!(
            shown,
            (future_day(a), future_day(b), amount, "confirmed".into()),
            "{view:#}"
        );
        let claims: Vec<(String, NaiveDate, NaiveDate)> = sqlx::query_as(
            "SELECT kind, lower(stay), upper(stay) FROM inventory_claims
             WHERE booking_id = $1 AND status = 'active'",
        )
        .bind(self.booking)
        .fetch_all(self.pool)
        .await
        .unwrap();
        assert_eq!(claims, [("booking".into(), day(a), day(b))]);
        let changed = events_of(self.pool, self.booking, "BookingChanged").await;
        assert_eq!(changed, i64::from(end == End::Completed));
    }

    /// The money at the double: the difference captured or refunded once, or voided.
    fn check_money(&self, end: End) {
        let (_, _, amount) = BOOKED;
        let (_, _, new_amount) = self.point.change();
        let difference = payment_intents_of(self.double, self.change);
        let original = self.double.payment_intent(&self.booking_pi).unwrap();
        assert!(difference.len() <= 1, "{difference:?}");
        match end {
            End::Completed if new_amount > amount => {
                assert_eq!(difference.len(), 1, "{difference:?}");
                let pi = &difference[0];
                assert_eq!(
                    (pi.amount, pi.amount_received, pi.status.as_str()),
                    (new_amount - amount, new_amount - amount, "succeeded"),
                    "{pi:?}"
                );
                assert_eq!((pi.effects.captures, pi.effects.refunds), (1, 0), "{pi:?}");
                assert_eq!(
                    (original.amount_received, original.amount_refunded),
                    (amount, 0)
                );
            }
            End::Completed => {
                assert!(difference.is_empty(), "nothing charged: {difference:?}");
                assert_eq!(
                    (original.effects.refunds, original.amount_refunded),
                    (1, amount - new_amount),
                    "{original:?}"
                );
            }
            End::Compensated => {
                for pi in &difference {
                    assert_eq!(
                        (pi.status.as_str(), pi.amount_received, pi.effects.captures),
                        ("canceled", 0, 0),
                        "voided, never captured: {pi:?}"
                    );
                }
                assert_eq!((original.amount_refunded, original.effects.refunds), (0, 0));
            }
        }
    }

    /// Every capture, void and refund sagad tried was under its key for that effect (one key per
    /// effect of a PaymentIntent) and performed at most once; the held request was asked again
    /// under its key and answered from Stripe's idempotency store; the difference's
    /// PaymentIntent was created under the change's authorize key; the guest's notifications of
    /// the change carry one message id.
    fn check_one_effect_per_key(&self, point: KillPoint, end: End) {
        let (booking, change) = (self.booking, self.change);
        let attempts = self.double.attempts();
        for a in &attempts {
            let want = match (a.payment_intent == self.booking_pi, a.operation) {
                // The booking's own capture, then the change's refund of a lower price.
                (true, Operation::Capture) => format!("sagad:{booking}:capture"),
                (true, Operation::Refund) => format!("sagad:{change}:refund_difference"),
                (false, Operation::Capture) => format!("sagad:{change}:capture"),
                (false, Operation::Cancel) => format!("sagad:{change}:void"),
                (false, Operation::Refund) => format!("sagad:{change}:refund"),
                _ => panic!("an attempt no step makes: {a:?}"),
            };
            assert_eq!(
                a.idempotency_key.as_deref(),
                Some(want.as_str()),
                "{a:?}\nall attempts: {attempts:#?}"
            );
        }
        let mut performed = std::collections::BTreeMap::new();
        for a in attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Performed)
        {
            *performed
                .entry((&a.payment_intent, a.operation))
                .or_insert(0) += 1;
        }
        assert!(
            performed.values().all(|n| *n == 1),
            "{performed:?}\nall attempts: {attempts:#?}"
        );

        let log = self.double.requests();
        if let Some(held) = point.held() {
            let tried: Vec<_> = log.iter().filter(|r| r.operation == Some(held)).collect();
            let first = tried.iter().find(|r| r.fault.is_some()).unwrap();
            assert!(
                tried
                    .iter()
                    .any(|r| r.replayed && r.idempotency_key == first.idempotency_key),
                "no replay of {held:?} under its key after the restart: {tried:#?}"
            );
        }
        let difference = payment_intents_of(self.double, change);
        for r in log
            .iter()
            .filter(|r| r.operation == Some(Operation::Create))
            .filter(|r| {
                difference
                    .iter()
                    .any(|p| r.payment_intent.as_ref() == Some(&p.id))
            })
        {
            assert_eq!(
                r.idempotency_key.as_deref(),
                Some(format!("sagad:{change}:authorize").as_str()),
                "{r:?}"
            );
        }

        let ids: Vec<String> = self
            .notify
            .hits()
            .iter()
            .filter(|h| h.json()["saga_id"] == json!(change.to_string()))
            .map(|h| h.header("webhook-id"))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let want: &[String] = match end {
            End::Completed => &[format!("notify_{change}")],
            End::Compensated => &[],
        };
        assert_eq!(ids, want);
    }

    /// No hold is left and no two bookings' claims overlap; the nights the booking does not
    /// have (given up by the change, or those the change failed to take) are free, and bookable.
    async fn check_nights(&self, p: &Process, end: End) {
        let held = crate::harness::count(
            self.pool,
            "SELECT count(*) FROM inventory_claims WHERE status = 'active' AND kind = 'hold'",
        )
        .await;
        assert_eq!(held, 0, "a hold left active");
        let overlaps = crate::harness::count(
            self.pool,
            "SELECT count(*) FROM inventory_claims x JOIN inventory_claims y
               ON x.listing_id = y.listing_id AND x.id < y.id AND x.stay && y.stay
              AND x.booking_id <> y.booking_id
             WHERE x.status = 'active' AND y.status = 'active'",
        )
        .await;
        assert_eq!(overlaps, 0);

        let (a, b, _) = BOOKED;
        let (na, nb, _) = self.point.change();
        let (keep, free) = match end {
            // The changes here move the start later or the end earlier.
            End::Completed if na > a => ((na, nb), (a, na)),
            End::Completed => ((na, nb), (nb, b)),
            // Those that end compensated would have added nights after the stay.
            End::Compensated => ((a, b), (b, nb)),
        };
        let mut expected = vec![
            range(keep.0, keep.1, "booked", Some(self.booking)),
            range(free.0, free.1, "free", None),
        ];
        expected.sort_by(|x, y| x.0.cmp(&y.0));
        let shown = p.availability(&self.listing, a.min(na), b.max(nb)).await;
        assert_eq!(shown, expected);
        let (_, status) = p.book(self.pool, &self.listing, free.0, free.1, 9000).await;
        assert_eq!(status, "completed", "the free nights are bookable");
    }
}

#[tokio::test]
async fn a_change_killed_while_the_difference_is_authorized_completes_with_one_payment_intent() {
    killed_during_a_change(KillPoint::AuthorizeInFlight).await;
}

#[tokio::test]
async fn a_change_killed_while_its_capture_is_refused_completes_once_stripe_answers() {
    killed_during_a_change(KillPoint::CaptureRetrying).await;
}

#[tokio::test]
async fn a_change_killed_while_the_difference_is_captured_completes_with_one_capture() {
    killed_during_a_change(KillPoint::CaptureInFlight).await;
}

#[tokio::test]
async fn a_change_killed_after_the_swap_while_notifying_completes() {
    killed_during_a_change(KillPoint::NotifyInFlight).await;
}

#[tokio::test]
async fn a_change_killed_while_voiding_the_difference_leaves_the_booking_as_it_was() {
    killed_during_a_change(KillPoint::VoidInFlight).await;
}

#[tokio::test]
async fn a_change_killed_while_refunding_a_lower_price_refunds_it_once() {
    killed_during_a_change(KillPoint::RefundInFlight).await;
}
