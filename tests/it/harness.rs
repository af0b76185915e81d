//! The test harness: a private PostgreSQL cluster per test binary (the same embedded mechanism
//! `sagad serve` uses), a fresh database per test cloned from a migrated template, the real sagad
//! server on 127.0.0.1:0, the Stripe test double and a notification receiver (a capturing
//! [`Receiver`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sagad::config::{Role, ServeArgs, Settings};
use sagad::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use sagad::engine::actions::NotifyConfig;
use sagad::engine::definition::SagaDefinition;
use sagad::outbound::OutboundConfig;
use sagad::server;
use sagad::store;
use sagad_test_support::Receiver;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use stripe_double::StripeDouble;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The tests' bare API token (named `token-1` by its position).
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// A named API token: `ops:` + this in SAGAD_API_TOKENS; operator actions made with it record
/// the actor `ops`.
pub const OPS_TOKEN: &str = "ops-token-0123456789abcdef";
pub const NOTIFY_SECRET: &[u8] = b"notify-secret-for-tests";
/// The Stripe webhook endpoint secret sagad accepts in tests (`AppOptions::stripe_webhook_secrets`).
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_sagad_tests_0123456789";

struct Cluster {
    /// URL of the server's maintenance database, e.g. postgres://…/postgres.
    admin_url: String,
    template: String,
}

/// The cluster lives on its own thread and runtime for the whole test process; when the process
/// exits, the embedded watchdog stops it and removes its directory.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime");
            rt.block_on(async move {
                let result = start_cluster().await;
                let keep = match result {
                    Ok((cluster, pg)) => {
                        let _ = tx.send(Ok(cluster));
                        pg
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                // Keep the handle (and its watchdog pipe) alive until the process ends.
                std::future::pending::<()>().await;
                drop(keep);
            });
        });
        match rx.recv() {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("cannot start PostgreSQL for the tests: {e:#}"),
            Err(_) => panic!("the PostgreSQL thread died"),
        }
    })
}

async fn start_cluster() -> anyhow::Result<(Cluster, Option<EmbeddedPostgres>)> {
    let (admin_url, pg) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let dir = std::env::temp_dir().join(format!("sagad-it-{}", Uuid::new_v4().simple()));
            let pg = EmbeddedPostgres::start(EmbeddedOptions::ephemeral(dir)).await?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let template = format!("sagad_tpl_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {template}")))
        .execute(&mut admin)
        .await?;
    let url = with_database(&admin_url, &template);
    let pool = store::connect(&url, 2).await?;
    store::migrate(&pool).await?;
    pool.close().await;
    Ok((
        Cluster {
            admin_url,
            template,
        },
        pg,
    ))
}

fn with_database(url: &str, db: &str) -> String {
    let mut u = reqwest::Url::parse(url).expect("database url");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A fresh, migrated database for one test.
pub async fn fresh_database() -> (PgPool, String) {
    let c = cluster();
    let name = format!("t_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&c.admin_url)
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {}",
        c.template
    )))
    .execute(&mut admin)
    .await
    .expect("create test database");
    let url = with_database(&c.admin_url, &name);
    let pool = store::connect(&url, 30)
        .await
        .expect("connect test database");
    (pool, url)
}

/// How long the tests' booking saga rides out an outage ([`booking_definition`]).
pub const TEST_GIVE_UP_AFTER: Duration = Duration::from_millis(400);

/// A fresh, empty database (no migrations applied): its URL.
pub async fn empty_database() -> String {
    let c = cluster();
    let name = format!("e_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&c.admin_url)
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create empty database");
    with_database(&c.admin_url, &name)
}

/// The booking saga from `sagas/booking.toml`, with retry delays shrunk so tests run fast, and
/// its steps' give-up deadlines ([`TEST_GIVE_UP_AFTER`]) too.
pub fn booking_definition() -> SagaDefinition {
    fast_definition(
        include_str!("../../sagas/booking.toml"),
        "sagas/booking.toml",
    )
}

/// The date/price change saga from `sagas/booking_change.toml`, shrunk like [`booking_definition`].
pub fn change_definition() -> SagaDefinition {
    fast_definition(
        include_str!("../../sagas/booking_change.toml"),
        "sagas/booking_change.toml",
    )
}

fn fast_definition(src: &str, path: &str) -> SagaDefinition {
    let mut def = sagad::engine::definition::parse(src, path, &sagad::engine::actions::catalog())
        .unwrap_or_else(|e| panic!("{path} parses: {e:?}"));
    let fast = |p: &mut sagad::engine::retry::RetryPolicy| {
        p.base_delay = Duration::from_millis(5);
        p.max_delay = Duration::from_millis(40);
    };
    for s in &mut def.steps {
        fast(&mut s.retry);
        s.timeout = s.timeout.min(Duration::from_secs(3));
        s.give_up_after = s.give_up_after.map(|_| TEST_GIVE_UP_AFTER);
    }
    fast(&mut def.compensation_retry);
    def
}

pub struct AppOptions {
    pub role: Role,
    pub workers: usize,
    /// Places in the local queue (`None`: the default, per worker).
    pub local_queue: Option<usize>,
    pub lease: Duration,
    pub definitions: Vec<SagaDefinition>,
    /// Endpoint secrets for `POST /webhooks/stripe` (empty: the route is not served).
    pub stripe_webhook_secrets: Vec<String>,
    /// Outgoing webhooks (tests: http and 127.0.0.1 allowed, ms-scale retries).
    pub outbound: OutboundConfig,
    /// Serve `/metrics` on an address of its own ([`TestApp::metrics_base`]).
    pub metrics_listener: bool,
    /// The bearer token `/metrics` requires.
    pub metrics_token: Option<String>,
    /// The longest `?wait=` honoured (`None`: sagad's default).
    pub max_wait: Option<Duration>,
    /// How far this instance's wall clock is from the database's ([`Settings::clock_skew`]).
    pub clock_skew: chrono::TimeDelta,
    /// The NATS relay (`None`: off, as by default).
    pub relay: Option<sagad::relay::RelayConfig>,
}

/// The settings every test instance starts from: sagad's defaults, built the way `sagad serve`
/// builds its own ([`ServeArgs::defaults`], then [`Settings::from_args`]), with what tests need:
/// their token and Stripe key, http and loopback webhook receivers, and waits and retries in
/// milliseconds.
pub fn test_settings() -> Settings {
    let mut args = ServeArgs::defaults();
    args.api_tokens = vec![TOKEN.into(), format!("ops:{OPS_TOKEN}")];
    args.stripe_secret_key = Some("sk_test_sagad_tests".into());
    args.stripe_webhook_secret = vec![STRIPE_WEBHOOK_SECRET.into()];
    args.outbound.webhook_allow_http = true;
    args.outbound.webhook_allow_nets =
        vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    args.outbound.webhook_timeout = Duration::from_secs(2);
    args.outbound.webhook_retry_schedule = vec![Duration::from_millis(30); 3];
    args.outbound.webhook_retry_jitter = 0.0;
    let mut s = Settings::from_args(args).expect("test settings");
    s.definitions = vec![booking_definition(), change_definition()];
    s.engine.poll_interval = Duration::from_millis(200);
    s.engine.shutdown_grace = Duration::from_secs(5);
    let inbox = &mut s.inbound_stripe.inbox;
    inbox.poll_interval = Duration::from_millis(200);
    inbox.retry = sagad::engine::retry::RetryPolicy {
        max_attempts: 12,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        jitter: 0.2,
    };
    inbox.shutdown_grace = Duration::from_secs(2);
    s.outbound.poll_interval = Duration::from_millis(50);
    s.outbound.shutdown_grace = Duration::from_secs(2);
    s.maintenance.interval = Duration::from_millis(100);
    // Breakers probe within a second or two, and open only past 50 calls: a test that makes one
    // saga fail its whole retry policy against the Stripe double (20 compensation attempts) is
    // about that saga, not an outage.
    s.breakers.min_calls = 50;
    s.breakers.probe_after = Duration::from_millis(200);
    s.breakers.probe_max = Duration::from_secs(1);
    s
}

/// Outgoing webhook settings for tests: http and loopback receivers allowed, retries 30 ms apart.
pub fn test_outbound_config() -> OutboundConfig {
    test_settings().outbound
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            role: Role::All,
            workers: 8,
            local_queue: None,
            lease: Duration::from_secs(30),
            definitions: vec![booking_definition(), change_definition()],
            stripe_webhook_secrets: vec![STRIPE_WEBHOOK_SECRET.into()],
            outbound: test_outbound_config(),
            metrics_listener: false,
            metrics_token: None,
            max_wait: None,
            clock_skew: chrono::TimeDelta::zero(),
            relay: None,
        }
    }
}

/// One running sagad (API and/or workers) on a test database.
pub struct TestApp {
    pub base: String,
    pub pool: PgPool,
    pub db_url: String,
    pub double: Arc<StripeDouble>,
    pub notify: Receiver,
    pub http: reqwest::Client,
    /// `/metrics`'s own base URL, when it has one.
    pub metrics_base: Option<String>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), server::Error>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(opts: AppOptions) -> TestApp {
    let (pool, db_url) = fresh_database().await;
    let double = Arc::new(
        StripeDouble::start(TcpListener::bind("127.0.0.1:0").await.expect("bind double"))
            .await
            .expect("start double"),
    );
    let notify = Receiver::start().await;
    spawn_instance(pool, db_url, double, notify, opts).await
}

/// Another sagad process on the same database and peers (for multi-instance tests).
pub async fn spawn_instance(
    pool: PgPool,
    db_url: String,
    double: Arc<StripeDouble>,
    notify: Receiver,
    opts: AppOptions,
) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut settings = test_settings();
    settings.role = opts.role;
    settings.stripe.api_base = Some(double.base_url());
    settings.notify = Some(NotifyConfig {
        url: reqwest::Url::parse(&notify.url).expect("notify url"),
        secrets: vec![NOTIFY_SECRET.to_vec()],
    });
    settings.engine.workers = opts.workers;
    settings.engine.local_queue = opts.local_queue;
    settings.engine.lease = opts.lease;
    settings.definitions = opts.definitions;
    settings.inbound_stripe.webhook_secrets = opts.stripe_webhook_secrets;
    settings.outbound = OutboundConfig {
        // One name per process, whatever options it was given.
        worker_id: settings.engine.worker_id.clone(),
        ..opts.outbound
    };
    settings.metrics.token = opts.metrics_token;
    settings.clock_skew = opts.clock_skew;
    if let Some(max_wait) = opts.max_wait {
        settings.max_wait = max_wait;
    }
    settings.relay = opts.relay.map(|r| sagad::relay::RelayConfig {
        worker_id: settings.engine.worker_id.clone(),
        ..r
    });
    let metrics_listener = if opts.metrics_listener {
        Some(
            TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind metrics"),
        )
    } else {
        None
    };
    let metrics_base = metrics_listener
        .as_ref()
        .map(|l| format!("http://{}", l.local_addr().expect("metrics addr")));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::run(
        settings,
        pool.clone(),
        server::Listeners {
            api: listener,
            metrics: metrics_listener,
        },
        shutdown.clone(),
    ));
    let mut app = TestApp {
        base,
        pool,
        db_url,
        double,
        notify,
        http: reqwest::Client::new(),
        metrics_base,
        shutdown,
        server: Some(server),
    };
    app.wait_ready().await;
    app
}

/// A date `n` days after a fixed point half a year ahead (`YYYY-MM-DD`): check-ins in the past
/// are refused, so test stays move with the clock.
pub fn future_day(n: u64) -> String {
    (chrono::Utc::now().date_naive() + chrono::Days::new(180 + n)).to_string()
}

pub fn booking_input(listing: &str, pm: &str) -> Value {
    json!({ "listing_id": listing, "guest_id": "guest-1", "check_in": future_day(0),
            "check_out": future_day(3), "amount": 45000, "currency": "EUR", "payment_method": pm })
}

impl TestApp {
    /// POSTs `body` to `/webhooks/stripe` signed now with the test secret, as Stripe would;
    /// the answer's status and JSON body (`null` when it has none).
    pub async fn post_signed_stripe_event(&self, body: &str) -> (u16, serde_json::Value) {
        let header = sagad::inbound::stripe::signature::header_value(
            &[STRIPE_WEBHOOK_SECRET],
            chrono::Utc::now().timestamp(),
            body.as_bytes(),
        );
        let resp = self
            .http
            .post(format!("{}/webhooks/stripe", self.base))
            .header("stripe-signature", header)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Another sagad process on this one's database and peers (multi-instance tests).
    pub async fn spawn_sibling(&self, opts: AppOptions) -> TestApp {
        spawn_instance(
            self.pool.clone(),
            self.db_url.clone(),
            self.double.clone(),
            self.notify.clone(),
            opts,
        )
        .await
    }

    async fn wait_ready(&mut self) {
        for _ in 0..200 {
            if self.server.as_ref().is_some_and(|s| s.is_finished()) {
                let result = self.server.take().expect("server task").await;
                panic!("sagad stopped during start-up: {result:?}");
            }
            if let Ok(r) = self.http.get(format!("{}/healthz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sagad did not come up at {}", self.base);
    }

    /// `GET path`'s JSON body (whatever the status).
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path)
            .send()
            .await
            .expect("GET request")
            .json()
            .await
            .expect("JSON body")
    }

    /// The Prometheus exposition at `/metrics`.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// `POST path` without a body: the status.
    pub async fn post_status(&self, path: &str) -> u16 {
        self.post(path)
            .send()
            .await
            .expect("POST request")
            .status()
            .as_u16()
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// Starts a booking saga and returns its id.
    pub async fn start_booking(&self, input: Value) -> Uuid {
        let resp = self
            .post("/v1/sagas")
            .json(&json!({ "saga": "booking", "input": input }))
            .send()
            .await
            .expect("start request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("start response body");
        assert!(status.is_success(), "start failed: {status} {body}");
        body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("saga id")
    }

    /// Waits until the Stripe double has taken every injected fault: with a latency fault, the
    /// faulted call is then in flight.
    pub async fn wait_faults_taken(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.double.pending_faults().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the double never took {:?}",
                self.double.pending_faults()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls the saga until it is terminal (completed, compensated, stuck), for at most 30 s.
    pub async fn wait_terminal(&self, id: Uuid) -> Value {
        self.wait_status(id, &["completed", "compensated", "stuck"])
            .await
    }

    pub async fn wait_status(&self, id: Uuid, statuses: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v: Value = self
                .get(&format!("/v1/sagas/{id}"))
                .send()
                .await
                .expect("get saga")
                .json()
                .await
                .expect("saga json");
            if statuses.contains(&v["status"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga {id} did not reach {statuses:?}: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Active inventory claims (holds and bookings), over every listing.
    pub async fn active_claims(&self) -> i64 {
        count(
            &self.pool,
            "SELECT count(*) FROM inventory_claims WHERE status = 'active'",
        )
        .await
    }

    /// The saga's event types, in version order.
    pub async fn event_types(&self, id: Uuid) -> Vec<String> {
        sqlx::query_scalar("SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY version")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .expect("events")
    }

    /// PaymentIntents the double holds for one saga (by the saga_id metadata sagad sets).
    pub fn payment_intents_of(&self, id: Uuid) -> Vec<stripe_double::PaymentIntentRecord> {
        let id = id.to_string();
        self.double
            .payment_intents()
            .into_iter()
            .filter(|p| p.metadata.get("saga_id") == Some(&id))
            .collect()
    }

    /// Stops the server (SIGTERM path): no new claims, in-flight steps finish, leases released.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts one booking saga per input, all at once, spread round-robin over `apps`; returns the
/// saga ids in input order.
pub async fn start_concurrently(apps: &[&TestApp], inputs: Vec<Value>) -> Vec<Uuid> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, input) in inputs.into_iter().enumerate() {
        let app = apps[i % apps.len()];
        let req = app
            .post("/v1/sagas")
            .json(&json!({ "saga": "booking", "input": input }));
        tasks.spawn(async move {
            let v: Value = req
                .send()
                .await
                .expect("start request")
                .json()
                .await
                .expect("start body");
            let id = v["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no saga id: {v}"));
            (i, id)
        });
    }
    let mut ids = vec![Uuid::nil(); tasks.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, id) = r.expect("start task");
        ids[i] = id;
    }
    ids
}

/// Counts rows of `sql` (a `SELECT count(*) …`).
pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count query")
}

/// Polls `f` until it yields a value, for at most 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
