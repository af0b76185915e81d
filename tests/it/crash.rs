//! The crash-and-fault run: booking sagas under random Stripe and notification failures, an outage
//! of the notification gateway and one of Stripe (every call refused, each shorter than the steps'
//! give-up deadlines), while sagad is killed with SIGKILL and restarted, and PostgreSQL is
//! restarted under the running sagad. When it settles, each saga's outcome is checked against its
//! scenario, what sagad *tried* at Stripe against what the saga should have done, and every
//! invariant the design promises (no saga compensated because of an outage); the bookings
//! projection is verified against the events by `sagad projections verify`; a summary is printed.
//!
//! CI runs a small setting; a larger one runs by hand (see the README's proof section):
//! `SAGAD_CRASH_SAGAS=500 SAGAD_CRASH_KILLS=15 SAGAD_CRASH_PG_RESTARTS=3 cargo test --test it crash -- --nocapture`

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use sagad::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use sagad_test_support::Receiver;
use serde_json::json;
use sqlx::PgPool;
use stripe_double::{Attempt, AttemptOutcome, Fault, Operation, StripeDouble};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

use crate::harness::{NOTIFY_SECRET, TOKEN};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How long the load waits for an answer to one start or cancel request (through kills and
/// database restarts) before the run fails.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// What a saga of the run is made to go through, and so how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Scenario {
    /// Nothing injected but the run's chaos: completes.
    Clean,
    /// `pm_card_chargeDeclined`: compensated, never captured, voided or refunded.
    Declined,
    /// 3-D Secure never completed: voided at the deadline, compensated.
    ThreeDsTimeout,
    /// Cancelled by the guest right after the start: compensated, whatever it had done undone.
    GuestCancel,
    /// The notification gateway refuses the guest (HTTP 422, which retrying cannot change):
    /// captured, then refunded, compensated.
    UnreachableGuest,
    /// Every fifth saga asks for the same dates of one of three listings: one booking each.
    Contested,
}

impl Scenario {
    fn of(i: usize) -> Self {
        if i.is_multiple_of(5) {
            return Scenario::Contested;
        }
        match i % 10 {
            3 => Scenario::UnreachableGuest,
            6 => Scenario::GuestCancel,
            7 => Scenario::Declined,
            8 => Scenario::ThreeDsTimeout,
            _ => Scenario::Clean,
        }
    }

    /// The terminal states this scenario may end in. `stuck` is none's right answer: every
    /// injected failure here has a compensation that must succeed.
    fn allowed(self) -> &'static [&'static str] {
        match self {
            Scenario::Clean => &["completed"],
            Scenario::Contested => &["completed", "compensated"],
            Scenario::Declined
            | Scenario::ThreeDsTimeout
            | Scenario::GuestCancel
            | Scenario::UnreachableGuest => &["compensated"],
        }
    }

    /// Words the failure reason of a compensated saga of this scenario must contain.
    fn reason(self) -> Option<&'static str> {
        match self {
            Scenario::Declined => Some("card_declined"),
            Scenario::ThreeDsTimeout => Some("authentication_timeout"),
            Scenario::GuestCancel => Some("cancelled_by_guest"),
            Scenario::Contested => Some("dates_unavailable"),
            Scenario::UnreachableGuest => Some("HTTP 422"),
            Scenario::Clean => None,
        }
    }

    /// Whether sagad may try to capture this saga's payment at all.
    fn may_capture(self) -> bool {
        !matches!(self, Scenario::Declined | Scenario::ThreeDsTimeout)
    }
}

/// One saga the load started.
struct Started {
    id: Uuid,
    scenario: Scenario,
    listing: String,
}

/// The booking saga with the shipped steps, fast retries and step timeouts under the 3 s lease.
/// The steps that call a peer ride out an outage for [`GIVE_UP_AFTER`]; their 3 attempts only
/// pace the backoff (without the deadline, three failed calls in a row would turn a saga around,
/// and an outage, or the chaos, would decide the booking).
pub(crate) const DEFINITION: &str = r#"
name = "booking"
version = 1
[defaults]
timeout = "2s"
retry = { max_attempts = 12, base_delay = "20ms", max_delay = "200ms", jitter = 0.2 }
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
give_up_after = "30s"
retry = { max_attempts = 3, base_delay = "20ms", max_delay = "200ms", jitter = 0.2 }
[[steps]]
name = "capture_payment"
action = "payment.capture"
compensation = "payment.refund"
give_up_after = "30s"
retry = { max_attempts = 3, base_delay = "20ms", max_delay = "200ms", jitter = 0.2 }
[[steps]]
name = "confirm_booking"
action = "booking.confirm"
compensation = "booking.cancel"
[[steps]]
name = "notify"
action = "notification.send"
give_up_after = "30s"
retry = { max_attempts = 3, base_delay = "20ms", max_delay = "200ms", jitter = 0.2 }
"#;

/// The give-up deadline of the steps that call a peer (`give_up_after` in [`DEFINITION`]).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// How long each outage lasts: far longer than the remote steps' attempts take, far shorter than
/// [`GIVE_UP_AFTER`] and than the compensations' retry policy (40 attempts, about 7 s).
const OUTAGE: Duration = Duration::from_secs(4);

/// Stripe faults injected but not yet used, at most, per operation.
const MAX_PENDING_FAULTS: usize = 2;

const STRIPE_WEBHOOK_SECRET: &str = "whsec_crash_run_secret";

/// A peer that is down for [`OUTAGE`] in the middle of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dependency {
    /// The notification gateway answers 503 to everything.
    Notify,
    /// Stripe answers 500 to every call.
    Stripe,
}

/// Which peers are down. The chaos task and the outages change what the peers answer only while
/// holding it, so a random fault or a flaky answer never covers an outage up.
#[derive(Default)]
struct Down {
    notify: bool,
    stripe: bool,
}

/// The peers and the switch an outage needs.
#[derive(Clone)]
struct Peers {
    double: Arc<StripeDouble>,
    notify: Receiver,
    down: Arc<Mutex<Down>>,
}

impl Peers {
    fn down(&self) -> MutexGuard<'_, Down> {
        self.down.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When an outage was, and how many of the calls it met it refused.
struct Outage {
    dependency: Dependency,
    lasted: Duration,
    refused: usize,
}

/// Takes `dependency` down for [`OUTAGE`], and longer if it has not refused a call by then (an
/// outage that meets no call tests nothing), then up again.
async fn outage(dependency: Dependency, peers: Peers) -> anyhow::Result<Outage> {
    let (began, stripe_log) = {
        let mut down = peers.down();
        match dependency {
            Dependency::Notify => {
                down.notify = true;
                peers.notify.answer(503);
            }
            Dependency::Stripe => {
                down.stripe = true;
                peers.double.clear_faults();
                peers
                    .double
                    .inject(Fault::server_error(Operation::Any).times(u32::MAX));
            }
        }
        (std::time::Instant::now(), peers.double.requests().len())
    };
    let refused = || match dependency {
        Dependency::Notify => peers
            .notify
            .hits()
            .iter()
            .filter(|h| h.at >= began && h.status == 503)
            .count(),
        Dependency::Stripe => peers.double.requests()[stripe_log..]
            .iter()
            .filter(|r| r.status == 500)
            .count(),
    };
    // The outage's length (what the run does to sagad), not a wait for an outcome.
    tokio::time::sleep(OUTAGE).await;
    let deadline = Instant::now() + ANSWER_DEADLINE;
    while refused() == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the {dependency:?} outage met no call in {:?}",
            began.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut down = peers.down();
    match dependency {
        Dependency::Notify => {
            down.notify = false;
            peers.notify.answer(204);
        }
        Dependency::Stripe => {
            down.stripe = false;
            peers.double.clear_faults();
        }
    }
    Ok(Outage {
        dependency,
        lasted: began.elapsed(),
        refused: refused(),
    })
}

/// A `sagad serve` process.
pub(crate) struct Sagad {
    pub(crate) child: Child,
    pub(crate) base: String,
}

/// Where a [`Sagad`] finds its database, peers and definitions, and where it logs and listens.
pub(crate) struct Env {
    pub(crate) db_url: String,
    pub(crate) stripe_base: String,
    pub(crate) notify_url: String,
    pub(crate) sagas_dir: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) port: u16,
}

/// Starts `sagad serve` as the run configures it (`extra` settings on top) and waits until it
/// answers.
pub(crate) async fn start_sagad(env: &Env, extra: &[(&str, &str)]) -> Sagad {
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
        // Circuit breakers probe within a second, so an outage is over within the run's deadlines.
        .env("SAGAD_BREAKER_PROBE_AFTER", "200ms")
        .env("SAGAD_BREAKER_PROBE_MAX", "1s")
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
        .envs(extra.iter().copied())
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

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[tokio::test]
async fn sagas_survive_kills_restarts_and_faults_with_every_invariant_intact() {
    let sagas = setting("SAGAD_CRASH_SAGAS", 40);
    let kills = setting("SAGAD_CRASH_KILLS", 3);
    let pg_restarts = setting("SAGAD_CRASH_PG_RESTARTS", 1).max(1);
    let work = std::env::temp_dir().join(format!("sagad-crash-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(work.join("sagas")).unwrap();
    std::fs::write(work.join("sagas/booking.toml"), DEFINITION).unwrap();
    let result = run(&work, sagas, kills, pg_restarts).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("crash run kept its files in {}", work.display());
    }
    result.unwrap();
}

/// Restarts PostgreSQL (fast shutdown, then the same data directory on the same port) while
/// sagad keeps running, and waits until sagad listens again.
async fn restart_postgres(
    pg: EmbeddedPostgres,
    work: &Path,
    sagad: &mut Sagad,
    env: &Env,
) -> anyhow::Result<EmbeddedPostgres> {
    let port = pg.port();
    pg.stop().await?;
    let pg = EmbeddedPostgres::start(EmbeddedOptions {
        port: Some(port),
        ..EmbeddedOptions::persistent(work.join("pg"))
    })
    .await?;
    // sagad lived through it ...
    anyhow::ensure!(
        sagad.child.try_wait()?.is_none(),
        "sagad exited when PostgreSQL restarted; see {}",
        env.log.display()
    );
    // ... and made its LISTEN connection again (the queues poll meanwhile, so nothing else would
    // show that it did).
    let pool = sagad::store::connect(&env.db_url, 1).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await?;
        if listening > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sagad did not LISTEN again within 30 s of the PostgreSQL restart; see {}",
            env.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;
    Ok(pg)
}

async fn run(work: &Path, sagas: usize, kills: usize, pg_restarts: usize) -> anyhow::Result<()> {
    // Its own durable cluster: this test restarts PostgreSQL, which the shared one must not suffer.
    let mut pg = EmbeddedPostgres::start(EmbeddedOptions::persistent(work.join("pg"))).await?;
    let db_url = pg.url("postgres");
    let pool = sagad::store::connect(&db_url, 5).await?;
    sagad::store::migrate(&pool).await?;
    pool.close().await;

    let double = Arc::new(StripeDouble::start(TcpListener::bind("127.0.0.1:0").await?).await?);
    let notify = Receiver::start().await;
    notify.refuse_containing("-unreachable", 422);
    let env = Env {
        db_url: db_url.clone(),
        stripe_base: double.base_url(),
        notify_url: notify.url.clone(),
        sagas_dir: work.join("sagas"),
        log: work.join("sagad.log"),
        port: free_port(),
    };
    let mut sagad = start_sagad(&env, &[]).await;
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

    // Chaos: random Stripe faults and an unreliable notification gateway, until told to stop;
    // quiet towards a peer while its outage lasts.
    let peers = Peers {
        double: double.clone(),
        notify: notify.clone(),
        down: Arc::default(),
    };
    let chaos_on = Arc::new(AtomicBool::new(true));
    let chaos = {
        let (peers, on) = (peers.clone(), chaos_on.clone());
        tokio::spawn(async move {
            let (double, notify) = (&peers.double, &peers.notify);
            let ops = [
                Operation::Create,
                Operation::Capture,
                Operation::Cancel,
                Operation::Refund,
                Operation::Retrieve,
            ];
            let mut injected = 0usize;
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
                // At most a few faults wait at a time: left to pile up (faster than the rarer
                // operations use them), a backlog of 500s would exhaust a compensation's every
                // retry, and its saga would rightly be parked. Chaos here may delay a saga, not
                // decide it.
                {
                    let down = peers.down();
                    let waiting = double
                        .pending_faults()
                        .iter()
                        .filter(|f| f.operation == op)
                        .count();
                    if !down.stripe && waiting < MAX_PENDING_FAULTS {
                        double.inject(fault);
                        injected += 1;
                    }
                    notify.answer(if down.notify || flaky { 503 } else { 204 });
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            double.clear_faults();
            notify.answer(204);
            injected
        })
    };
    // The gateway's outage begins before the first kill, Stripe's before the last; the kills,
    // the PostgreSQL restarts and the load go on meanwhile.
    let outage_at: BTreeMap<usize, Dependency> = [
        (sagas / 5, Dependency::Notify),
        (sagas * 7 / 10, Dependency::Stripe),
    ]
    .into();
    let mut outages = Vec::new();

    // Load: bookings of each scenario (see `Scenario::of`).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut started: Vec<Started> = Vec::with_capacity(sagas);
    let mut kills_done = 0;
    let mut pg_restarts_done = 0;
    let mut cancelled = 0;
    let mut down_since: Option<Instant> = None;
    let kill_every = (sagas / (kills + 1)).max(1);
    // PostgreSQL restarts half-way between kills, while sagad has sagas in flight.
    let restart_at: BTreeSet<usize> = (0..pg_restarts)
        .map(|k| {
            (sagas * (2 * k + 1) / (2 * pg_restarts) + kill_every / 2).min(sagas.saturating_sub(1))
        })
        .collect();
    for i in 0..sagas {
        let scenario = Scenario::of(i);
        let pm = match scenario {
            Scenario::Declined => "pm_card_chargeDeclined",
            Scenario::ThreeDsTimeout => "pm_card_authenticationRequired",
            _ => "pm_card_visa",
        };
        let listing = if scenario == Scenario::Contested {
            format!("hot-{}", i % 3)
        } else {
            format!("home-{i}")
        };
        let guest = if scenario == Scenario::UnreachableGuest {
            format!("g{i}-unreachable")
        } else {
            format!("g{i}")
        };
        let body = json!({"saga": "booking", "input": {
            "listing_id": listing, "guest_id": guest, "check_in": crate::harness::future_day(90),
            "check_out": crate::harness::future_day(92), "amount": 30000, "currency": "usd", "payment_method": pm }});
        let key = format!("crash-{i}");
        // The start RPC is idempotent: retry it across kills and database restarts until it is answered.
        let give_up = Instant::now() + ANSWER_DEADLINE;
        let id = loop {
            let resp = http
                .post(format!("{}/v1/sagas", sagad.base))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            let last = match resp {
                Ok(r) if r.status().is_success() => {
                    let v: serde_json::Value = r.json().await?;
                    break v["id"].as_str().unwrap_or_default().parse::<Uuid>()?;
                }
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            anyhow::ensure!(
                Instant::now() < give_up,
                "saga {key} was not started within {ANSWER_DEADLINE:?}; last answer: {last}; see {}",
                env.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        started.push(Started {
            id,
            scenario,
            listing,
        });
        if scenario == Scenario::GuestCancel {
            // A guest cancellation: 202, or 409 when the saga already compensated on its own.
            let give_up = Instant::now() + ANSWER_DEADLINE;
            loop {
                let resp = http
                    .post(format!("{}/v1/sagas/{id}/cancel", sagad.base))
                    .bearer_auth(TOKEN)
                    .send()
                    .await;
                let last = match resp {
                    Ok(r) if r.status() == 202 || r.status() == 409 => {
                        cancelled += 1;
                        break;
                    }
                    Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                anyhow::ensure!(
                    Instant::now() < give_up,
                    "the cancellation of saga {id} was not answered 202 or 409 within {ANSWER_DEADLINE:?}; \
                     last answer: {last}; see {}",
                    env.log.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        // The receiver is down for two seconds in the middle of the run: it answers 503 to
        // everything, as a load balancer in front of a dead service does.
        if i == sagas / 3 {
            receiver.answer(503);
            down_since = Some(Instant::now());
        }
        if down_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) || i + 1 == sagas {
            down_since = None;
            receiver.answer(200);
        }

        if let Some(dependency) = outage_at.get(&i) {
            outages.push(tokio::spawn(outage(*dependency, peers.clone())));
        }
        if restart_at.contains(&i) {
            pg = restart_postgres(pg, work, &mut sagad, &env).await?;
            pg_restarts_done += 1;
        }
        if (i + 1) % kill_every == 0 && kills_done < kills {
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..150))).await;
            sagad.child.start_kill()?; // SIGKILL
            sagad.child.wait().await?;
            kills_done += 1;
            sagad = start_sagad(&env, &[]).await;
        }
    }
    // Both outages run their full length while sagas are in flight.
    let mut outage_summary = Vec::new();
    for o in outages {
        let o = o.await??;
        outage_summary.push(format!(
            "{:?} down {:.1?} ({} calls refused)",
            o.dependency, o.lasted, o.refused
        ));
    }
    // A last kill while the tail of the run is in flight, then calm.
    anyhow::ensure!(
        sagad.child.try_wait()?.is_none(),
        "sagad exited during the load; see {}",
        env.log.display()
    );
    sagad.child.start_kill()?;
    sagad.child.wait().await?;
    chaos_on.store(false, Ordering::SeqCst);
    let faults_injected = chaos.await?;
    let sagad = start_sagad(&env, &[]).await;

    let pool = sagad::store::connect(&db_url, 5).await?;
    let load_ended = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE status NOT IN ('completed', 'compensated', 'stuck')",
        )
        .fetch_one(&pool)
        .await?;
        if open == 0 {
            break;
        }
        if std::env::var("SAGAD_CRASH_DEBUG").is_ok() {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT format('%s step %s attempt %s %s due in %s leased for %s paused for %s',
                               status, current_step, attempt, wait_reason, next_run_at - now(),
                               locked_until - now(), now() - paused_since)
                   FROM sagas WHERE status NOT IN ('completed', 'compensated', 'stuck')",
            )
            .fetch_all(&pool)
            .await?;
            eprintln!("{:?} open: {rows:?}", load_ended.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{open} sagas never settled; see {}",
            env.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sagas_settled = load_ended.elapsed();
    let settle_started = Instant::now();
    let webhooks = check_webhooks(&pool, &receiver, &env).await?;
    let webhooks_took = settle_started.elapsed();
    let inbound = check_stripe_inbox(&pool, &double, &env).await?;
    eprintln!(
        "crash run: sagas settled {sagas_settled:?} after the load; webhooks {webhooks_took:?} more, the Stripe inbox {:?}",
        settle_started.elapsed() - webhooks_took
    );
    let report = check(&pool, &double, &started).await?;
    let projection = verify_projection(&pool, &env).await?;
    println!(
        "{report}\ncrash run: {webhooks}; {inbound}; {projection}\ncrash run: {faults_injected} Stripe \
         faults injected, outages: {}, {cancelled} guest cancellations, {kills_done} + 1 SIGKILLs, \
         {pg_restarts_done} PostgreSQL restarts under the running sagad",
        outage_summary.join(", ")
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

/// `sagad projections verify bookings` (the real binary) finds every row of the bookings
/// projection equal to the fold of the events.
async fn verify_projection(pool: &PgPool, env: &Env) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["projections", "verify", "bookings"])
        .env("DATABASE_URL", &env.db_url)
        .stdin(Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "sagad projections verify bookings exited with {}:\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM bookings")
        .fetch_one(pool)
        .await?;
    let expected = format!("bookings: {rows} rows match the fold of ");
    anyhow::ensure!(
        rows > 0 && stdout.starts_with(&expected),
        "sagad projections verify bookings should report {expected:?}: {stdout}"
    );
    Ok(format!("verify: {}", stdout.trim()))
}

/// The key sagad must send for `operation` on `saga`'s PaymentIntent (`sagad:{saga}:{effect}`).
fn expected_key(saga: Uuid, operation: Operation) -> String {
    let effect = match operation {
        Operation::Create => "authorize",
        Operation::Capture => "capture",
        Operation::Cancel => "void",
        Operation::Refund => "refund",
        other => other.as_str(),
    };
    format!("sagad:{saga}:{effect}")
}

/// Checks each saga's outcome against its scenario, what sagad tried at Stripe and the
/// invariants; returns the summary. Every violation is listed, not only the first.
async fn check(
    pool: &PgPool,
    double: &StripeDouble,
    started: &[Started],
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
    let rows: HashMap<Uuid, (String, Option<String>)> = rows
        .into_iter()
        .map(|(id, status, reason)| (id, (status, reason)))
        .collect();
    let mut problems: Vec<String> = Vec::new();

    // What Stripe holds and what sagad tried, by saga (the PaymentIntent's metadata says whose).
    let pis = double.payment_intents();
    let mut pis_by_saga: HashMap<Uuid, Vec<_>> = HashMap::new();
    let mut saga_of_pi: HashMap<String, Uuid> = HashMap::new();
    for p in &pis {
        match p
            .metadata
            .get("saga_id")
            .and_then(|s| s.parse::<Uuid>().ok())
        {
            Some(saga) => {
                saga_of_pi.insert(p.id.clone(), saga);
                pis_by_saga.entry(saga).or_default().push(p);
            }
            None => problems.push(format!("PaymentIntent {} names no saga", p.id)),
        }
    }
    let attempts = double.attempts();
    let mut tried: HashMap<(Uuid, Operation), Vec<&Attempt>> = HashMap::new();
    for a in &attempts {
        match saga_of_pi.get(&a.payment_intent) {
            Some(saga) => tried.entry((*saga, a.operation)).or_default().push(a),
            None => problems.push(format!(
                "{:?} attempted on {}, which no saga's authorization created",
                a.operation, a.payment_intent
            )),
        }
    }
    // Authorizations are attributed by their key alone (a create that failed names no PaymentIntent).
    let mut creates: HashMap<Uuid, usize> = HashMap::new();
    for r in double.requests() {
        if r.operation != Some(Operation::Create) {
            continue;
        }
        let saga = r
            .idempotency_key
            .as_deref()
            .and_then(|k| k.strip_prefix("sagad:"))
            .and_then(|k| k.strip_suffix(":authorize"))
            .and_then(|id| id.parse::<Uuid>().ok());
        match saga {
            Some(saga) if rows.contains_key(&saga) => *creates.entry(saga).or_default() += 1,
            _ => problems.push(format!(
                "a PaymentIntent create under key {:?}, not an authorization of a saga of the run",
                r.idempotency_key
            )),
        }
        if let (Some(saga), Some(pi)) = (saga, &r.payment_intent)
            && saga_of_pi.get(pi) != Some(&saga)
        {
            problems.push(format!(
                "the create under saga {saga}'s key answered with {pi}, another saga's"
            ));
        }
    }

    let mut outcomes: BTreeMap<Scenario, BTreeMap<String, usize>> = BTreeMap::new();
    let mut keys_seen = 0;
    for s in started {
        let id = s.id;
        let Some((status, reason)) = rows.get(&id) else {
            problems.push(format!("saga {id} ({:?}) is missing", s.scenario));
            continue;
        };
        *outcomes
            .entry(s.scenario)
            .or_default()
            .entry(status.clone())
            .or_default() += 1;
        let what = format!("{:?} saga {id} ({status}, {reason:?})", s.scenario);

        // 1. The outcome the scenario calls for.
        if !s.scenario.allowed().contains(&status.as_str()) {
            problems.push(format!(
                "{what}: expected {}",
                s.scenario.allowed().join(" or ")
            ));
        }
        if status == "compensated"
            && let Some(words) = s.scenario.reason()
            && !reason.as_deref().unwrap_or_default().contains(words)
        {
            problems.push(format!("{what}: the failure reason should say {words}"));
        }

        // 2. What sagad tried: one key per effect, the saga's own, on every retry.
        let pis = pis_by_saga.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        if pis.len() > 1 {
            problems.push(format!("{what}: {} PaymentIntents", pis.len()));
        }
        let attempts_of = |op| tried.get(&(id, op)).map(Vec::as_slice).unwrap_or(&[]);
        for op in [Operation::Capture, Operation::Cancel, Operation::Refund] {
            let keys: BTreeSet<Option<&str>> = attempts_of(op)
                .iter()
                .map(|a| a.idempotency_key.as_deref())
                .collect();
            keys_seen += keys.len();
            let expected = expected_key(id, op);
            if keys.iter().any(|k| *k != Some(expected.as_str())) {
                problems.push(format!(
                    "{what}: {op:?} attempted under keys {keys:?}; every attempt and retry must carry {expected}"
                ));
            }
        }
        let (captures, cancels, refunds) = (
            attempts_of(Operation::Capture),
            attempts_of(Operation::Cancel),
            attempts_of(Operation::Refund),
        );

        // 3. No effect attempted where it does not belong.
        if !s.scenario.may_capture() && !captures.is_empty() {
            problems.push(format!("{what}: {} capture attempts", captures.len()));
        }
        if s.scenario == Scenario::Declined && !(cancels.is_empty() && refunds.is_empty()) {
            problems.push(format!(
                "{what}: a declined card has nothing to void or refund, yet {} void and {} refund attempts",
                cancels.len(),
                refunds.len()
            ));
        }
        if status == "completed" && !(cancels.is_empty() && refunds.is_empty()) {
            problems.push(format!(
                "{what}: {} void and {} refund attempts on a completed booking",
                cancels.len(),
                refunds.len()
            ));
        }
        let captured = pis.first().is_some_and(|p| p.effects.captures > 0);
        if !captured && !refunds.is_empty() {
            problems.push(format!(
                "{what}: {} refund attempts on a payment never captured",
                refunds.len()
            ));
        }
        if reason
            .as_deref()
            .is_some_and(|r| r.contains("dates_unavailable"))
            && (creates.contains_key(&id) || !pis.is_empty())
        {
            problems.push(format!(
                "{what}: lost its dates yet tried to authorize a payment"
            ));
        }

        // 4. Where the money is.
        let pi = pis.first();
        let kept = pi.is_some_and(|p| {
            p.status == "succeeded" && p.effects.captures == 1 && p.amount_refunded == 0
        });
        if status == "completed" && !kept {
            problems.push(format!(
                "{what}: the payment is not captured exactly once and kept: {:?}",
                pi.map(|p| (&p.status, &p.effects))
            ));
        }
        // A compensated saga leaves no money or authorization behind.
        let settled = pi.is_none_or(|p| match p.status.as_str() {
            "canceled" | "requires_payment_method" => true,
            "succeeded" => p.amount_refunded == p.amount,
            _ => false,
        });
        if status == "compensated" && !settled {
            problems.push(format!(
                "{what}: left the payment {:?}",
                pi.map(|p| (&p.status, &p.effects))
            ));
        }
        let voided = pi.is_some_and(|p| p.status == "canceled");
        if s.scenario == Scenario::ThreeDsTimeout && !voided {
            problems.push(format!(
                "{what}: the authorization awaiting 3-D Secure was not voided: {:?}",
                pi.map(|p| &p.status)
            ));
        }
        let refunded = pi.is_some_and(|p| p.effects.captures == 1 && p.effects.refunds == 1);
        if s.scenario == Scenario::UnreachableGuest && !refunded {
            problems.push(format!(
                "{what}: expected a capture and its refund: {:?}",
                pi.map(|p| &p.effects)
            ));
        }
    }

    // The business outcome of the race: one confirmed booking per contested listing, the
    // winner's; and everywhere a confirmed booking exactly where a saga completed.
    let confirmed: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT saga_id, listing_id FROM bookings WHERE status = 'confirmed'")
            .fetch_all(pool)
            .await?;
    let confirmed_ids: BTreeSet<Uuid> = confirmed.iter().map(|(id, _)| *id).collect();
    for s in started {
        let completed = rows.get(&s.id).is_some_and(|(st, _)| st == "completed");
        if completed != confirmed_ids.contains(&s.id) {
            problems.push(format!(
                "{:?} saga {}: completed is {completed}, yet a confirmed booking is {}",
                s.scenario, s.id, !completed
            ));
        }
    }
    let contested: BTreeSet<&str> = started
        .iter()
        .filter(|s| s.scenario == Scenario::Contested)
        .map(|s| s.listing.as_str())
        .collect();
    for listing in &contested {
        let bookings = confirmed.iter().filter(|(_, l)| l == listing).count();
        if bookings != 1 {
            problems.push(format!(
                "contested listing {listing}: {bookings} confirmed bookings, expected exactly 1"
            ));
        }
    }

    // No saga compensated because of an outage: every outage of the run is shorter than the
    // give-up deadline of the step it meets, so a retryable failure never turns a saga around
    // (neither `dependency_unavailable` nor a retry policy's attempts spent).
    let turned_by_outage: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT aggregate_id, payload->>'reason' FROM events
          WHERE event_type = 'CompensationStarted'
            AND (payload->>'reason' LIKE $1 || '%' OR payload->>'reason' LIKE 'attempts_exhausted%')",
    )
    .bind(sagad::engine::plan::DEPENDENCY_UNAVAILABLE)
    .fetch_all(pool)
    .await?;
    let scenario_of: HashMap<Uuid, Scenario> = started.iter().map(|s| (s.id, s.scenario)).collect();
    for (id, reason) in turned_by_outage {
        problems.push(format!(
            "{:?} saga {id} compensated because of an outage shorter than its give-up deadline \
             ({GIVE_UP_AFTER:?}): {reason}",
            scenario_of.get(&id)
        ));
    }

    let leftover: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inventory_claims c JOIN sagas s ON s.id = c.saga_id
         WHERE c.status = 'active' AND (s.status = 'compensated' OR (s.status = 'completed' AND c.kind <> 'booking'))",
    )
    .fetch_one(pool)
    .await?;
    if leftover != 0 {
        problems.push(format!(
            "{leftover} holds left active after their saga ended"
        ));
    }
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id FROM events GROUP BY aggregate_id
                               HAVING max(version) <> count(*) OR min(version) <> 1) g",
    )
    .fetch_one(pool)
    .await?;
    if gaps != 0 {
        problems.push(format!(
            "{gaps} aggregates with gaps in their event versions"
        ));
    }
    let per_saga_end: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas s WHERE status IN ('completed', 'compensated', 'stuck') AND NOT EXISTS (
           SELECT 1 FROM events e WHERE e.aggregate_id = s.id
             AND e.event_type IN ('SagaCompleted', 'SagaCompensated', 'SagaStuck'))",
    )
    .fetch_one(pool)
    .await?;
    if per_saga_end != 0 {
        problems.push(format!(
            "{per_saga_end} finished sagas without a terminal event"
        ));
    }

    if !problems.is_empty() {
        let shown = problems.len().min(30);
        anyhow::bail!(
            "{} problems (first {shown}):\n{}\noutcomes by scenario: {outcomes:?}",
            problems.len(),
            problems[..shown].join("\n")
        );
    }
    let mut by_outcome: BTreeMap<(Operation, AttemptOutcome), usize> = BTreeMap::new();
    for a in &attempts {
        *by_outcome.entry((a.operation, a.outcome)).or_default() += 1;
    }
    let c = double.counters();
    Ok(format!(
        "crash run: {} sagas, outcomes by scenario: {outcomes:?}\n\
         crash run: Stripe: {} PaymentIntents, {} captures, {} refunds, {} voids performed; \
         {} attempts under {keys_seen} keys (one per effect and saga): {by_outcome:?}; \
         {} confirmed bookings, one per contested listing ({})",
        rows.len(),
        c.payment_intents_created,
        c.effects.captures,
        c.effects.refunds,
        c.effects.cancels,
        attempts.len(),
        confirmed.len(),
        contested.len()
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
