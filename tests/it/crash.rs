//! The crash-and-fault run: booking sagas under random Stripe and notification failures while sagad
//! is killed with SIGKILL and restarted, and PostgreSQL is restarted once. When it settles, every
//! invariant the design promises is checked and a summary printed.
//!
//! CI runs a small setting; a larger one runs by hand:
//! `SAGAD_CRASH_SAGAS=1000 SAGAD_CRASH_KILLS=25 cargo test --release --test it crash -- --nocapture`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use sagad::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use sagad_test_support::Receiver;
use serde_json::json;
use sqlx::PgPool;
use stripe_double::{Fault, Operation, StripeDouble};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::harness::{NOTIFY_SECRET, TOKEN};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The booking saga with the shipped steps, fast retries and step timeouts under the 3 s lease.
const DEFINITION: &str = r#"
name = "booking"
version = 1
[defaults]
timeout = "2s"
retry = { max_attempts = 8, base_delay = "20ms", max_delay = "200ms", jitter = 0.2 }
compensation_retry = { max_attempts = 40, base_delay = "20ms", max_delay = "200ms", jitter = 0.2 }
[[steps]]
name = "hold_inventory"
action = "inventory.hold"
compensation = "inventory.release"
params = { hold_ttl = "10m" }
[[steps]]
name = "authorize_payment"
action = "payment.authorize"
compensation = "payment.void"
params = { action_deadline = "300ms" }
[[steps]]
name = "capture_payment"
action = "payment.capture"
compensation = "payment.refund"
[[steps]]
name = "confirm_booking"
action = "booking.confirm"
compensation = "booking.cancel"
[[steps]]
name = "notify"
action = "notification.send"
"#;

const STRIPE_WEBHOOK_SECRET: &str = "whsec_crash_run_secret";

struct Sagad {
    child: Child,
    base: String,
}

struct Env {
    db_url: String,
    stripe_base: String,
    notify_url: String,
    sagas_dir: PathBuf,
    log: PathBuf,
    port: u16,
}

async fn start_sagad(env: &Env) -> Sagad {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&env.log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sagad"))
        .arg("serve")
        .env("DATABASE_URL", &env.db_url)
        .env("SAGAD_LISTEN", format!("127.0.0.1:{}", env.port))
        .env("SAGAD_API_TOKENS", TOKEN)
        .env("STRIPE_SECRET_KEY", "sk_test_crash")
        .env("STRIPE_API_BASE", &env.stripe_base)
        .env("SAGAD_NOTIFY_URL", &env.notify_url)
        .env(
            "SAGAD_NOTIFY_SECRET",
            std::str::from_utf8(NOTIFY_SECRET).unwrap(),
        )
        .env("SAGAD_SAGAS_DIR", &env.sagas_dir)
        .env("SAGAD_LEASE", "3s")
        .env("SAGAD_POLL_INTERVAL", "200ms")
        .env("SAGAD_WORKERS", "16")
        .env("RUST_LOG", "warn,sagad=info")
        .env("SAGAD_WEBHOOK_ALLOW_HTTP", "true")
        .env("SAGAD_WEBHOOK_ALLOW_NETS", "127.0.0.0/8")
        .env(
            "SAGAD_WEBHOOK_RETRY_SCHEDULE",
            "50ms,100ms,200ms,400ms,800ms,1s,2s,2s,2s,2s,2s,2s,2s,2s,2s,2s",
        )
        .env("SAGAD_WEBHOOK_TIMEOUT", "1s")
        .env("STRIPE_WEBHOOK_SECRET", STRIPE_WEBHOOK_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sagad");
    let base = format!("http://127.0.0.1:{}", env.port);
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return Sagad { child, base };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sagad did not start; see {}", env.log.display());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[tokio::test]
async fn sagas_survive_kills_restarts_and_faults_with_every_invariant_intact() {
    let sagas = setting("SAGAD_CRASH_SAGAS", 40);
    let kills = setting("SAGAD_CRASH_KILLS", 3);
    let work = std::env::temp_dir().join(format!("sagad-crash-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(work.join("sagas")).unwrap();
    std::fs::write(work.join("sagas/booking.toml"), DEFINITION).unwrap();
    let result = run(&work, sagas, kills).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("crash run kept its files in {}", work.display());
    }
    result.unwrap();
}

async fn run(work: &Path, sagas: usize, kills: usize) -> anyhow::Result<()> {
    // Its own durable cluster: this test restarts PostgreSQL, which the shared one must not suffer.
    let mut pg = EmbeddedPostgres::start(EmbeddedOptions::persistent(work.join("pg"))).await?;
    let pg_port = pg.port();
    let db_url = pg.url("postgres");
    let pool = sagad::store::connect(&db_url, 5).await?;
    sagad::store::migrate(&pool).await?;

    let double = Arc::new(StripeDouble::start(TcpListener::bind("127.0.0.1:0").await?).await?);
    let notify = Receiver::start().await;
    notify.refuse_containing("-unreachable");
    let env = Env {
        db_url: db_url.clone(),
        stripe_base: double.base_url(),
        notify_url: notify.url.clone(),
        sagas_dir: work.join("sagas"),
        log: work.join("sagad.log"),
        port: free_port(),
    };
    let mut sagad = start_sagad(&env).await;
    // Stripe tells sagad what happened, duplicated, delayed and out of order, through the kills.
    double.configure_webhooks(stripe_double::WebhookTarget {
        url: format!("{}/webhooks/stripe", sagad.base),
        secrets: vec![STRIPE_WEBHOOK_SECRET.into()],
        duplicate: 1,
        delay_ms: 20,
        reorder: true,
        ..Default::default()
    });

    // An integrator subscribed to everything.
    let receiver = Receiver::start().await;
    let created = reqwest::Client::new()
        .post(format!("{}/v1/webhook-endpoints", sagad.base))
        .bearer_auth(TOKEN)
        .json(&json!({"url": receiver.url, "event_types": ["*"]}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success(),
        "endpoint: {}",
        created.text().await?
    );

    // Chaos: random Stripe faults and an unreliable notification gateway, until told to stop.
    let chaos_on = Arc::new(AtomicBool::new(true));
    let chaos = {
        let (double, notify, on) = (double.clone(), notify.clone(), chaos_on.clone());
        tokio::spawn(async move {
            let ops = [
                Operation::Create,
                Operation::Capture,
                Operation::Cancel,
                Operation::Refund,
                Operation::Retrieve,
            ];
            while on.load(Ordering::SeqCst) {
                let (op, kind, flaky) = {
                    let mut rng = rand::rng();
                    (
                        ops[rng.random_range(0..ops.len())],
                        rng.random_range(0..3),
                        rng.random_bool(0.3),
                    )
                };
                let fault = match kind {
                    0 => Fault::server_error(op),
                    1 => Fault::lose_response(op),
                    _ => Fault::latency(op, Duration::from_millis(150)),
                };
                double.inject(fault);
                notify.answer(if flaky { 503 } else { 204 });
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            double.clear_faults();
            notify.answer(204);
        })
    };

    // Load: bookings; a tenth declined, a tenth whose guest cannot be notified (refund after
    // capture), a tenth cancelled by the guest right after the start, a tenth never completing 3-D Secure,
    // every fifth on a contested
    // listing.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut started: HashMap<String, Uuid> = HashMap::new();
    let mut kills_done = 0;
    let mut cancelled = 0;
    let mut down_since: Option<tokio::time::Instant> = None;
    let mut pg_restarted = false;
    let kill_every = (sagas / (kills + 1)).max(1);
    for i in 0..sagas {
        let pm = match i % 10 {
            7 => "pm_card_chargeDeclined",
            8 => "pm_card_authenticationRequired", // 3-D Secure never completes: void at the deadline
            _ => "pm_card_visa",
        };
        let listing = if i % 5 == 0 {
            format!("hot-{}", i % 3)
        } else {
            format!("home-{i}")
        };
        let guest = if i % 10 == 3 {
            format!("g{i}-unreachable")
        } else {
            format!("g{i}")
        };
        let body = json!({"saga": "booking", "input": {
            "listing_id": listing, "guest_id": guest, "check_in": crate::harness::future_day(90),
            "check_out": crate::harness::future_day(92), "amount": 30000, "currency": "usd", "payment_method": pm }});
        let key = format!("crash-{i}");
        // The start RPC is idempotent: retry it across kills until it is answered.
        let id = loop {
            let resp = http
                .post(format!("{}/v1/sagas", sagad.base))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    let v: serde_json::Value = r.json().await?;
                    break v["id"].as_str().unwrap_or_default().parse::<Uuid>()?;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        started.insert(key, id);
        if i % 10 == 6 {
            // A guest cancellation: 202, or 409 when the saga already compensated on its own.
            loop {
                let resp = http
                    .post(format!("{}/v1/sagas/{id}/cancel", sagad.base))
                    .bearer_auth(TOKEN)
                    .send()
                    .await;
                if matches!(&resp, Ok(r) if r.status() == 202 || r.status() == 409) {
                    cancelled += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        // The receiver is down for two seconds in the middle of the run: it answers 503 to
        // everything, as a load balancer in front of a dead service does.
        if i == sagas / 3 {
            receiver.answer(503);
            down_since = Some(tokio::time::Instant::now());
        }
        if down_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) || i + 1 == sagas {
            down_since = None;
            receiver.answer(200);
        }

        if (i + 1) % kill_every == 0 && kills_done < kills {
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..150))).await;
            sagad.child.start_kill()?; // SIGKILL
            sagad.child.wait().await?;
            kills_done += 1;
            if !pg_restarted && kills_done == kills.div_ceil(2) {
                pg.stop().await?;
                pg = EmbeddedPostgres::start(EmbeddedOptions {
                    port: Some(pg_port),
                    ..EmbeddedOptions::persistent(work.join("pg"))
                })
                .await?;
                pg_restarted = true;
            }
            sagad = start_sagad(&env).await;
        }
    }
    // A last kill while the tail of the run is in flight, then calm.
    sagad.child.start_kill()?;
    sagad.child.wait().await?;
    chaos_on.store(false, Ordering::SeqCst);
    chaos.await?;
    let sagad = start_sagad(&env).await;

    let pool = sagad::store::connect(&db_url, 5).await?;
    let load_ended = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE status NOT IN ('completed', 'compensated', 'stuck')",
        )
        .fetch_one(&pool)
        .await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{open} sagas never settled; see {}",
            env.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sagas_settled = load_ended.elapsed();
    let settle_started = tokio::time::Instant::now();
    let webhooks = check_webhooks(&pool, &receiver, &env).await?;
    let webhooks_took = settle_started.elapsed();
    let inbound = check_stripe_inbox(&pool, &double, &env).await?;
    eprintln!(
        "crash run: sagas settled {sagas_settled:?} after the load; webhooks {webhooks_took:?} more, the Stripe inbox {:?}",
        settle_started.elapsed() - webhooks_took
    );
    eprintln!(
        "crash run: sagas settled {:?} after the load",
        load_ended.elapsed()
    );
    let report = check(&pool, &double, &started).await?;
    let report = format!("{report}; {webhooks}; {inbound}");
    println!(
        "{report}; {cancelled} guest cancellations, {kills_done} + 1 SIGKILLs, PostgreSQL restarted once"
    );
    drop(sagad);
    // The daemon's log went to a file: plain text, no terminal colour codes.
    let log = std::fs::read_to_string(&env.log)?;
    anyhow::ensure!(
        log.contains(" INFO "),
        "no info lines in {}",
        env.log.display()
    );
    anyhow::ensure!(
        !log.contains('\u{1b}'),
        "terminal escape codes in {}",
        env.log.display()
    );
    pool.close().await;
    pg.stop().await?;
    Ok(())
}

/// Checks every invariant; returns the summary.
async fn check(
    pool: &PgPool,
    double: &StripeDouble,
    started: &HashMap<String, Uuid>,
) -> anyhow::Result<String> {
    let rows: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, failure_reason FROM sagas")
            .fetch_all(pool)
            .await?;
    anyhow::ensure!(
        rows.len() == started.len(),
        "{} sagas for {} idempotency keys",
        rows.len(),
        started.len()
    );
    let mut by_status: HashMap<String, usize> = HashMap::new();
    let pis = double.payment_intents();
    let mut pis_by_saga: HashMap<String, Vec<_>> = HashMap::new();
    for p in &pis {
        pis_by_saga
            .entry(p.metadata.get("saga_id").cloned().unwrap_or_default())
            .or_default()
            .push(p);
    }
    for (id, status, reason) in &rows {
        *by_status.entry(status.clone()).or_default() += 1;
        let pis = pis_by_saga
            .get(&id.to_string())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        anyhow::ensure!(pis.len() <= 1, "saga {id}: {} PaymentIntents", pis.len());
        let effects = pis.first().map(|p| p.effects.clone()).unwrap_or_default();
        anyhow::ensure!(
            effects.captures <= 1,
            "saga {id}: captured {} times",
            effects.captures
        );
        anyhow::ensure!(
            effects.refunds <= 1 && effects.cancels <= 1,
            "saga {id}: {effects:?}"
        );
        match status.as_str() {
            "completed" => {
                anyhow::ensure!(
                    effects.captures == 1 && effects.refunds == 0,
                    "completed saga {id}: {effects:?}"
                );
            }
            "compensated" => {
                if effects.captures == 1 {
                    anyhow::ensure!(
                        effects.refunds == 1,
                        "compensated saga {id} kept the money: {effects:?}"
                    );
                }
                // Whatever happened, no money or authorization is left behind.
                if let Some(p) = pis.first() {
                    let settled = match p.status.as_str() {
                        "canceled" | "requires_payment_method" => true,
                        "succeeded" => p.amount_refunded == p.amount,
                        _ => false,
                    };
                    anyhow::ensure!(
                        settled,
                        "compensated saga {id} left {} ({effects:?})",
                        p.status
                    );
                }
            }
            "stuck" => anyhow::ensure!(reason.is_some(), "stuck saga {id} without a reason"),
            other => anyhow::bail!("saga {id} is still {other}"),
        }
    }
    let double_booked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_claims a JOIN inventory_claims b
           ON a.listing_id = b.listing_id AND a.id < b.id AND a.stay && b.stay
         WHERE a.status = 'active' AND b.status = 'active'",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        double_booked == 0,
        "{double_booked} overlapping active claims"
    );
    let leftover: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_claims c JOIN sagas s ON s.id = c.saga_id
         WHERE c.status = 'active' AND (s.status = 'compensated' OR (s.status = 'completed' AND c.kind <> 'booking'))",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        leftover == 0,
        "{leftover} holds left active after their saga ended"
    );
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id FROM events GROUP BY aggregate_id
                               HAVING max(version) <> count(*) OR min(version) <> 1) g",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        gaps == 0,
        "{gaps} aggregates with gaps in their event versions"
    );
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        triggers == 2,
        "the event store lost its immutability triggers"
    );
    let per_saga_end: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas s WHERE status IN ('completed', 'compensated', 'stuck') AND NOT EXISTS (
           SELECT 1 FROM events e WHERE e.aggregate_id = s.id
             AND e.event_type IN ('SagaCompleted', 'SagaCompensated', 'SagaStuck'))",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        per_saga_end == 0,
        "{per_saga_end} finished sagas without a terminal event"
    );
    let c = double.counters();
    Ok(format!(
        "crash run: {} sagas: {:?}; Stripe: {} PaymentIntents, {} captures, {} refunds, {} voids; \
         no duplicate effects, no double booking, no leftover holds, gapless event versions",
        rows.len(),
        by_status,
        c.payment_intents_created,
        c.effects.captures,
        c.effects.refunds,
        c.effects.cancels
    ))
}

/// Every published event reached the integrator at least once; counts the duplicates.
async fn check_webhooks(pool: &PgPool, receiver: &Receiver, env: &Env) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let expected: Vec<String> = loop {
        let (open, dead, ids): (i64, i64, Vec<String>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status <> 'delivered'), count(*) FILTER (WHERE status = 'dead'),
                    coalesce(array_agg('msg_' || replace(id::text, '-', '')), '{}') FROM webhook_deliveries",
        )
        .fetch_one(pool)
        .await?;
        if open == 0 {
            break ids;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{open} webhook deliveries never delivered ({dead} dead-lettered); see {}",
            env.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = ANY($1)")
            .bind(
                sagad::outbound::catalog::PUBLISHED
                    .iter()
                    .map(|(internal, _)| internal.to_string())
                    .collect::<Vec<_>>(),
            )
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(
        published == expected.len() as i64,
        "{published} published events but {} deliveries",
        expected.len()
    );
    // What the integrator accepted, not what it refused while down.
    let seen: Vec<String> = receiver
        .hits()
        .iter()
        .filter(|h| h.accepted())
        .map(|h| h.header("webhook-id"))
        .collect();
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    let missing = expected.iter().filter(|id| !unique.contains(id)).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} deliveries never reached the receiver"
    );
    Ok(format!(
        "webhooks: {} events delivered at least once ({} requests, {} duplicates)",
        expected.len(),
        seen.len(),
        seen.len() - unique.len()
    ))
}

/// Every Stripe webhook was taken in and settled; each capture became one `PaymentReceived`.
async fn check_stripe_inbox(
    pool: &PgPool,
    double: &StripeDouble,
    env: &Env,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let captured = double
        .payment_intents()
        .iter()
        .filter(|p| p.effects.captures > 0)
        .count() as i64;
    loop {
        let (open, received): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM stripe_events WHERE status IN ('pending', 'processing')),
                    (SELECT count(*) FROM events WHERE event_type = 'PaymentReceived')",
        )
        .fetch_one(pool)
        .await?;
        if open == 0 && received == captured {
            break;
        }
        if std::env::var("SAGAD_CRASH_DEBUG").is_ok() {
            let rows: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
                "SELECT event_type, status, attempts, last_error FROM stripe_events WHERE status IN ('pending', 'processing')",
            )
            .fetch_all(pool)
            .await?;
            eprintln!("inbox open={open} received={received}/{captured}: {rows:?}");
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Stripe inbox: {open} unsettled, {received} PaymentReceived for {captured} captures; see {}",
            env.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM stripe_events GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await?;
    anyhow::ensure!(
        by_status.iter().all(|(s, _)| s != "dead"),
        "dead-lettered Stripe events: {by_status:?}"
    );
    let deliveries = double.webhook_deliveries().len();
    Ok(format!(
        "Stripe webhooks: {deliveries} deliveries into {by_status:?}, {captured} PaymentReceived"
    ))
}
