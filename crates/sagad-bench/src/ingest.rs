//! Verified Stripe webhook ingestion: closed-loop clients POST correctly signed Stripe events to
//! the child's `/webhooks/stripe` (the same `Stripe-Signature` scheme the Stripe double's sender
//! uses), each answered only once the event is verified and committed to the inbox. Some events
//! are delivered twice, as Stripe does; then the bench waits until the inbox workers have
//! processed every event. The events are about PaymentIntents that exist at Stripe (the double)
//! but that no saga has: sagad must record them as `unmatched` (or `ignored`, for a type it does
//! not act on) without retrying.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;

use super::outgoing::env_or;
use super::report::StripeIngestion;
use super::{Bench, EXTRA_CONNECTIONS, ms, progress};
use sagad::inbound::stripe::event::Kind;
use sagad::store;
use stripe_double::envelope;
use stripe_double::signature;

/// Concurrent clients (Stripe sends webhooks concurrently).
const CLIENTS: usize = 16;
/// Every this many events, one is delivered a second time.
const REDELIVER_EVERY: usize = 50;
/// The endpoint secret the child verifies with.
const SECRET: &str = "whsec_sagad_bench_stripe_ingestion";
/// How long the inbox may take to process everything after the last answer.
const PROCESSING_DEADLINE: Duration = Duration::from_secs(120);
/// What a PaymentIntent's life sends, in order, one PaymentIntent per group: four types sagad
/// acts on, one it acknowledges and ignores.
const TYPES: [&str; 5] = [
    "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded",
    "charge.refunded",
    "payment_intent.canceled",
    "charge.succeeded",
];

/// The key the child uses with the Stripe double.
const STRIPE_KEY: &str = "sk_test_sagad_bench";

/// Event `n` of run `run` about PaymentIntent `pi`, in the Stripe double's envelope (as Stripe
/// would send it).
fn event(run: &str, n: usize, pi: &str, created: i64) -> Value {
    let kind = TYPES[n % TYPES.len()];
    let object = if kind.starts_with("charge.") {
        json!({
            "id": format!("ch_{run}_{n:07}"), "object": "charge", "amount": 37_500,
            "amount_captured": 37_500, "amount_refunded": if kind == "charge.refunded" { 37_500 } else { 0 },
            "captured": true, "currency": "eur", "livemode": false, "metadata": {},
            "paid": true, "payment_intent": pi, "refunded": kind == "charge.refunded",
            "status": "succeeded",
        })
    } else {
        json!({
            "id": pi, "object": "payment_intent", "amount": 37_500, "amount_capturable": 0,
            "amount_received": 37_500, "capture_method": "manual", "confirmation_method": "automatic",
            "created": created, "currency": "eur", "livemode": false, "metadata": {},
            "payment_method_types": ["card"], "status": "succeeded",
        })
    };
    envelope(&format!("evt_{run}_{n:07}"), kind, created, object)
}

/// The PaymentIntent event `n` is about (one per group of `TYPES`).
fn payment_intent_of(pis: &[String], n: usize) -> &str {
    pis.get(n / TYPES.len())
        .map_or("pi_missing", String::as_str)
}

/// Creates `count` confirmed, uncaptured PaymentIntents at the Stripe double (no saga knows
/// them); returns their ids.
async fn create_payment_intents(stripe_base: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let resp = http
            .post(format!("{stripe_base}v1/payment_intents"))
            .bearer_auth(STRIPE_KEY)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("amount=37500&currency=eur&capture_method=manual&payment_method=pm_card_visa&confirm=true")
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        match body["id"].as_str() {
            Some(id) if status.is_success() => ids.push(id.to_owned()),
            _ => anyhow::bail!("the Stripe double refused a PaymentIntent ({status}): {body}"),
        }
    }
    Ok(ids)
}

/// Events among the first `n` whose type sagad acts on (the others are stored as `ignored`).
fn handled(n: usize) -> usize {
    (0..n)
        .filter(|i| Kind::of(TYPES[i % TYPES.len()]).is_some())
        .count()
}

/// What one POST came to.
struct Answer {
    latency: Duration,
    /// `Ok(duplicate)` for a 2xx, else why not.
    outcome: Result<bool, String>,
}

async fn post(http: &reqwest::Client, url: &str, body: &[u8]) -> Answer {
    let sent = Instant::now();
    let signature = signature::header_value(&[SECRET], chrono::Utc::now().timestamp(), body);
    let answer = async {
        let resp = http
            .post(url)
            .header("Stripe-Signature", signature)
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let json: Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {json}"));
        }
        Ok(json["duplicate"].as_bool().unwrap_or(false))
    }
    .await;
    Answer {
        latency: sent.elapsed(),
        outcome: answer,
    }
}

/// One client's share: (answer, was it a redelivery).
async fn client(
    http: reqwest::Client,
    url: String,
    run: String,
    pis: Arc<Vec<String>>,
    tickets: Arc<AtomicUsize>,
    total: usize,
) -> Vec<(Answer, bool)> {
    let mut answers = Vec::new();
    loop {
        let n = tickets.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            return answers;
        }
        let pi = payment_intent_of(&pis, n);
        let body = event(&run, n, pi, chrono::Utc::now().timestamp()).to_string();
        answers.push((post(&http, &url, body.as_bytes()).await, false));
        // Stripe delivers at least once: the same event again, freshly signed, after it was stored.
        if n.is_multiple_of(REDELIVER_EVERY) {
            answers.push((post(&http, &url, body.as_bytes()).await, true));
        }
    }
}

/// Waits until no inbox row is pending or processing; returns when, or `None` at the deadline.
async fn wait_processed(db: &PgPool) -> anyhow::Result<Option<Instant>> {
    let deadline = Instant::now() + PROCESSING_DEADLINE;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE status IN ('pending', 'processing')",
        )
        .fetch_one(db)
        .await?;
        if open == 0 {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Bench<'_> {
    /// Verified Stripe webhook ingestion/s and processed/s, on a fresh database.
    pub(super) async fn stripe_ingestion(&self, events: usize) -> anyhow::Result<StripeIngestion> {
        let name = format!("sagad_bench_{}_stripe", self.run_id);
        let url = self.fresh_database(&name).await?;
        let workers = self.args.workers.first().copied().unwrap_or(4) as usize;
        let pool_size = workers as u32 + EXTRA_CONNECTIONS;
        let sagad = super::Sagad::start(&super::ChildConfig {
            label: "stripe",
            stripe_webhook_secret: Some(SECRET),
            ..self.child_config(&url, workers, pool_size)
        })
        .await?;
        let db = store::connect(&url, 1).await?;
        let pis = Arc::new(
            create_payment_intents(&self.stripe_base, events.div_ceil(TYPES.len())).await?,
        );
        progress(format_args!(
            "stripe: {events} signed events from {CLIENTS} clients, 1 in {REDELIVER_EVERY} twice"
        ));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(CLIENTS)
            .build()?;
        let endpoint = format!("{}/webhooks/stripe", sagad.base);
        let tickets = Arc::new(AtomicUsize::new(0));
        let log = sagad.log_mark();
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..CLIENTS {
            tasks.spawn(client(
                http.clone(),
                endpoint.clone(),
                self.run_id.clone(),
                pis.clone(),
                tickets.clone(),
                events,
            ));
        }
        let mut answers = Vec::with_capacity(events + events / REDELIVER_EVERY + 1);
        while let Some(joined) = tasks.join_next().await {
            answers.extend(joined?);
        }
        let elapsed = started.elapsed();
        let processed_at = wait_processed(&db).await?;
        let peak = sagad.memory();
        sagad.stop().await?;
        let log_warnings = log.warnings_since();

        let outcomes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM stripe_events GROUP BY status ORDER BY status",
        )
        .fetch_all(&db)
        .await?;
        let (stored_events, stored_deliveries, retried): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), COALESCE(sum(deliveries), 0)::bigint,
                    count(*) FILTER (WHERE attempts > 1)
             FROM stripe_events",
        )
        .fetch_one(&db)
        .await?;
        db.close().await;
        super::wait_for_no_backends(&self.admin, &name).await?;
        super::drop_database(&self.admin, &name).await?;

        let accepted = answers.iter().filter(|(a, _)| a.outcome.is_ok()).count();
        let errors: Vec<&str> = answers
            .iter()
            .filter_map(|(a, _)| a.outcome.as_ref().err().map(String::as_str))
            .collect();
        let redeliveries_sent = answers.iter().filter(|(_, again)| *again).count();
        let redeliveries_deduplicated = answers
            .iter()
            .filter(|(a, again)| *again && matches!(a.outcome, Ok(true)))
            .count();
        let report = StripeIngestion {
            events_per_s: accepted as f64 / elapsed.as_secs_f64().max(1e-9),
            clients: CLIENTS,
            requests: answers.len(),
            accepted,
            rejected: errors.len(),
            first_error: errors.first().map(|e| (*e).to_owned()),
            elapsed_s: elapsed.as_secs_f64(),
            request_ms: ms(answers
                .iter()
                .filter(|(a, _)| a.outcome.is_ok())
                .map(|(a, _)| a.latency)),
            redeliveries_sent,
            redeliveries_deduplicated,
            stored_events,
            stored_deliveries,
            processed_per_s: processed_at.map(|at| {
                handled(events) as f64 / at.duration_since(started).as_secs_f64().max(1e-9)
            }),
            outcomes: outcomes.into_iter().collect::<BTreeMap<_, _>>(),
            retried,
            inbox_workers: env_or(
                "SAGAD_STRIPE_INBOX_WORKERS",
                sagad::config::ServeArgs::defaults().stripe_inbox_workers as usize,
            ),
            db_pool_size: pool_size,
            log_warnings,
            peak_rss_mib: peak.map(|m| m.hwm_mib),
        };
        progress(format_args!(
            "stripe: {:.1} verified events/s, processed/s {}",
            report.events_per_s,
            report
                .processed_per_s
                .map_or("-".into(), |p| format!("{p:.1}"))
        ));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagad::inbound::stripe::event::StripeEvent;
    use sagad::inbound::stripe::signature;

    #[test]
    fn events_verify_and_parse_as_sagad_reads_them() {
        let now = 1_700_000_000;
        let verifier = signature::Verifier::new(&[SECRET], std::time::Duration::from_secs(300));
        for n in 0..TYPES.len() {
            let pis = vec!["pi_first".to_owned()];
            let body = event("b1234", n, payment_intent_of(&pis, n), now).to_string();
            let header = signature::header_value(&[SECRET], now, body.as_bytes());
            assert_eq!(
                verifier.verify(Some(&header), body.as_bytes(), now),
                Ok(now)
            );
            let parsed = StripeEvent::parse(body.as_bytes()).expect("a Stripe event");
            assert_eq!(parsed.id, format!("evt_b1234_{n:07}"));
            assert_eq!(
                parsed.payment_intent_id().as_deref(),
                Some("pi_first"),
                "{}",
                parsed.event_type
            );
        }
    }

    #[test]
    fn four_types_in_five_are_acted_on() {
        assert_eq!(handled(10), 8);
        assert_eq!(handled(3), 3);
        assert_eq!(Kind::of(TYPES[4]), None);
    }

    #[test]
    fn each_payment_intent_gets_one_group_of_events() {
        let pis = vec!["pi_a".to_owned(), "pi_b".to_owned()];
        assert_eq!(payment_intent_of(&pis, 4), "pi_a");
        assert_eq!(payment_intent_of(&pis, 5), "pi_b");
        assert_eq!(payment_intent_of(&pis, 10), "pi_missing");
    }
}
