//! `sagad-bench`: how fast is a sagad binary on this machine, next to what its PostgreSQL can
//! commit.
//!
//! For each worker count it starts `sagad serve` as a child process (the `sagad` built beside this
//! executable, or `--sagad PATH`) on a fresh database of a durable PostgreSQL (the embedded one in
//! a temporary directory, or `DATABASE_URL`), migrated by that binary (`sagad migrate`), with the
//! Stripe test double and a notification receiver answering at once from this process. Closed-loop
//! clients start booking sagas and wait for each one's terminal-state NOTIFY. Then `pgbench -N`
//! runs on the same server at the same client count. Finally one open-loop run at half the best
//! rate measures the start RPC under moderate load. See `docs/BENCHMARKS.md`.
//!
//! The child gets only `serve` and environment variables that sagad has long understood, so an
//! older build can be measured the same way (`--sagad path/to/old/sagad`).

mod child;
mod console;
mod cpu;
mod events;
mod ingest;
mod load;
mod outage;
mod outgoing;
pub mod pgbench;
mod reads;
mod relay;
pub mod report;
mod scale;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;
use tokio::net::TcpListener;

use child::{ChildConfig, Sagad};
use load::{Api, Budget, Completions};
use pgbench::Pgbench;
use report::{Database, Load, Machine, Percentiles, Report, Section, Setting, StatementCount};
use sagad::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use sagad::store;
use sagad_test_support::Receiver;
use stripe_double::StripeDouble;

const TOKEN: &str = "bench-token-0123456789";
/// Sagas per closed-loop client before the measured window: every pooled connection of the fresh
/// sagad child is open and has prepared its statements by then (a production process is warm).
const WARM_UP_PER_CLIENT: usize = 4;
/// The open loop runs this long at its rate before the measured window, for the same reason.
const OPEN_LOOP_WARM_UP: Duration = Duration::from_secs(2);
/// Connections beyond the workers: API requests, the two LISTEN connections, maintenance.
const EXTRA_CONNECTIONS: u32 = 8;

#[derive(clap::Parser, Debug)]
#[command(
    name = "sagad-bench",
    version,
    about = "Measure a sagad binary: sagas/s, latencies, commits per saga and memory, next to `pgbench -N` on the same PostgreSQL"
)]
pub struct BenchArgs {
    /// The sagad binary to measure (default: the `sagad` next to this executable).
    #[arg(long = "sagad", env = "SAGAD_BIN", value_name = "PATH")]
    pub sagad: Option<PathBuf>,
    /// Use this PostgreSQL server instead of a temporary embedded cluster. The bench creates (and
    /// drops) its own databases there, so the role needs CREATEDB.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Worker counts to measure (SAGAD_WORKERS of the sagad under test), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32", value_parser = clap::value_parser!(u32).range(1..=512))]
    pub workers: Vec<u32>,
    /// Concurrent closed-loop clients per worker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients_per_worker: u32,
    /// Sagas measured per setting (after a warm-up of four sagas per client).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub sagas: u64,
    /// Run each setting for this long instead of a fixed number of sagas (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Length of each `pgbench -N` run, in seconds; 0 skips pgbench.
    #[arg(long, default_value_t = 10)]
    pub pgbench_seconds: u64,
    /// `pgbench -i -s` scale of the scratch database.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pgbench_scale: u32,
    /// Skip the open-loop run at half the peak rate.
    #[arg(long)]
    pub no_half_load: bool,
    /// Skip the ceiling: pgbench replaying sagad's own statements for a booking saga on each
    /// setting's database, for as long as `pgbench -N` runs.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Count statements per saga with pg_stat_statements (the embedded cluster is restarted with
    /// it preloaded; with DATABASE_URL the extension must already be preloaded). Adds a little overhead.
    #[arg(long)]
    pub statements: bool,
    /// Outgoing webhooks: events appended in one transaction as a backlog (deliveries/s), then up
    /// to 1000 more one per transaction at a moderate rate (commit → first attempt); 0 skips.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub webhook_events: u64,
    /// Correctly signed Stripe events POSTed to `/webhooks/stripe` by 16 concurrent clients
    /// (verified ingestion/s); 0 skips.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub stripe_events: u64,
    /// Bookings reads: this many bookings are bulk-loaded into a fresh database (not through
    /// sagas), then `GET /v1/bookings` by guest and by listing and a 90-night availability are
    /// timed, with the plan of each query; 0 skips.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(0..=50_000_000))]
    pub read_bookings: u64,
    /// Requests of each kind in the bookings-reads phase.
    #[arg(long, default_value_t = reads::DEFAULT_REQUESTS as u64, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub read_requests: u64,
    /// Run only the bookings-reads phase (no sagas, pgbench, webhooks or Stripe ingestion).
    #[arg(long)]
    pub reads_only: bool,
    /// Outage recovery: `--outage-sagas` booking sagas started as the Stripe double begins
    /// answering 500 to every call for this many seconds (the breaker opens, they pause), then
    /// the time from recovery until every saga finished, and the calls Stripe got during the
    /// outage; 0 skips. Runs on the largest `--workers`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub outage_seconds: u64,
    /// Sagas of the outage-recovery run.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub outage_sagas: u64,
    /// Run only the outage-recovery phase (no sagas, pgbench, webhooks, Stripe ingestion or
    /// bookings reads); needs `--outage-seconds`.
    #[arg(long, requires = "outage_seconds", conflicts_with = "reads_only")]
    pub outage_only: bool,
    /// Operator console: bulk-load `--console-sagas` sagas (a realistic mix with their events,
    /// steps, bookings, claims, outgoing deliveries and Stripe inbox rows), sign in to `/console`
    /// and time every page, with the plan of each statement the pages run.
    #[arg(long)]
    pub console: bool,
    /// Sagas of the console phase.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..=50_000_000))]
    pub console_sagas: u64,
    /// Requests of each page in the console phase.
    #[arg(long, default_value_t = console::DEFAULT_REQUESTS as u64, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub console_requests: u64,
    /// Console phase: measure first without these indexes (dropped after the load), then with
    /// them made again, in the same run; comma-separated index names.
    #[arg(long, value_delimiter = ',')]
    pub console_without_indexes: Vec<String>,
    /// Run only the console phase (no sagas, pgbench, webhooks, Stripe ingestion, bookings
    /// reads or outage recovery).
    #[arg(long, conflicts_with_all = ["reads_only", "outage_only"])]
    pub console_only: bool,
    /// Scale-out: for each process count N, N `sagad serve` processes in `SAGAD_ROLE=all` on one
    /// database, then N worker processes behind ⌈N/2⌉ API processes; the Stripe double answers
    /// each call after `--stripe-latency`. Comma-separated, e.g. 1,2,4,8; empty skips.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=64))]
    pub scale_out: Vec<u32>,
    /// Run only the scale-out phase (no single-process sagas, pgbench, webhooks, Stripe
    /// ingestion, bookings reads or outage); needs `--scale-out`.
    #[arg(long, requires = "scale_out", conflicts_with_all = ["reads_only", "outage_only", "console_only"])]
    pub scale_out_only: bool,
    /// Sagas measured per scale-out run (after two per client as a warm-up).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub scale_sagas: u64,
    /// `SAGAD_WORKERS` of each scale-out process that runs workers.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub scale_workers: u32,
    /// The Stripe double's delay per call in the scale-out phase, in milliseconds: MIN-MAX drawn
    /// uniformly for each call, or one fixed value.
    #[arg(long, default_value = "50-150", value_parser = scale::parse_latency)]
    pub stripe_latency: scale::Latency,
    /// Write the scale-out chart (SVG: sagas/s and end-to-end p99 against the process count)
    /// to this file.
    #[arg(long, value_name = "PATH", requires = "scale_out")]
    pub scale_out_svg: Option<PathBuf>,
    /// Print the report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Event store: bulk-load at least this many events of realistic booking sagas, rebuild the
    /// bookings projection from them (events/s) and verify it. Any of the event-store options
    /// runs only the event-store figures it selects.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub rebuild_events: u64,
    /// Event store: page through this many bulk-loaded events with `GET /v1/events` (events/s).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub feed_events: u64,
    /// Event store: append this many events, one per transaction every 10 ms, while a reader
    /// long-polls the feed: the lag from commit to visibility (p50/p99).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub feed_lag_events: u64,
    /// Event store: the cost of folding one aggregate (the largest real booking saga and synthetic
    /// long ones), and of reading it back when events are loaded.
    #[arg(long)]
    pub fold: bool,
    /// NATS relay: bulk-load at least this many events, start sagad with `SAGAD_NATS_URL` at a
    /// private `nats-server -js`, and time the relay through the backlog (events/s to
    /// JetStream, every publish acknowledged); 0 skips. Runs only the figures it selects, like
    /// the event-store options.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub relay_events: u64,
    /// NATS relay: append this many events, one per transaction every 10 ms, while a NATS
    /// subscriber receives them: the lag from commit to receipt (p50/p99).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub relay_lag_events: u64,
}

impl BenchArgs {
    /// An event-store figure was asked for: only those run.
    fn event_store(&self) -> bool {
        self.fold
            || self.rebuild_events > 0
            || self.feed_events > 0
            || self.feed_lag_events > 0
            || self.relay_events > 0
            || self.relay_lag_events > 0
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let sagad = sagad_binary(args.sagad.as_deref())?;
    if args.event_store() {
        let dir = std::env::temp_dir().join(format!("sagad-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let stop = sagad::shutdown::on_signal();
        let outcome = tokio::select! {
            r = run_events(&args, &sagad, &dir) => r,
            _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
        };
        let _ = std::fs::remove_dir_all(&dir);
        outcome?;
        return Ok(ExitCode::SUCCESS);
    }
    progress(format_args!("measuring {}", sagad.display()));
    let dir = std::env::temp_dir().join(format!("sagad-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stop = sagad::shutdown::on_signal();
    let outcome = tokio::select! {
        r = run_in(&args, &sagad, &dir) => r,
        _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    // The embedded cluster (if any) was stopped inside; the directory held it and the logs.
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "could not remove the bench directory");
    }
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let failed = report
        .settings
        .iter()
        .chain(report.half_load.iter())
        .any(|s| s.errors > 0)
        || matches!(&report.webhook_deliveries, Section::Measured(w) if w.errors() > 0)
        || matches!(&report.stripe_ingestion, Section::Measured(i) if i.errors() > 0)
        || matches!(&report.bookings_reads, Section::Measured(r) if r.errors() > 0)
        || matches!(&report.outage_recovery, Section::Measured(o) if o.errors() > 0)
        || matches!(&report.console_pages, Section::Measured(c) if c.errors() > 0)
        || matches!(&report.scale_out, Section::Measured(s) if s.errors() > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The sagad to measure: `given`, else the `sagad` next to this executable (`target/release/` holds
/// both after `cargo build --release --workspace`).
fn sagad_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .context("cannot locate the sagad-bench executable")?
            .with_file_name(format!("sagad{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!(
            "no sagad binary at {}: build it first: cargo build --release --workspace (or give --sagad PATH)",
            path.display()
        );
    }
    // The child runs in the bench's own directory: a relative path must not depend on it.
    std::fs::canonicalize(&path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// The event-store figures, on the same kind of PostgreSQL as the rest.
async fn run_events(args: &BenchArgs, sagad: &Path, dir: &Path) -> anyhow::Result<()> {
    let Some(url) = &args.database_url else {
        let pg_dir = dir.join("postgres");
        progress(format_args!(
            "starting a temporary durable PostgreSQL in {} …",
            pg_dir.display()
        ));
        let pg = EmbeddedPostgres::start(EmbeddedOptions {
            max_connections: 300,
            ..EmbeddedOptions::persistent(&pg_dir)
        })
        .await?;
        preallocate_wal(&pg.url("postgres")).await?;
        let admin = pg.url("postgres");
        let result = match events::run(args, sagad, &admin, dir).await {
            Ok(()) => relay::run(args, sagad, &admin, dir).await,
            Err(e) => Err(e),
        };
        pg.stop().await?;
        return result;
    };
    events::run(args, sagad, url, dir).await?;
    relay::run(args, sagad, url, dir).await
}

async fn run_in(args: &BenchArgs, sagad: &Path, dir: &Path) -> anyhow::Result<Report> {
    let machine = Machine::describe();
    let (admin_url, embedded, kind) = match &args.database_url {
        Some(url) => (url.clone(), None, "DATABASE_URL".to_owned()),
        None => {
            let pg_dir = dir.join("postgres");
            progress(format_args!(
                "starting a temporary durable PostgreSQL in {} …",
                pg_dir.display()
            ));
            let opts = EmbeddedOptions {
                max_connections: 300,
                ..EmbeddedOptions::persistent(&pg_dir)
            };
            let mut pg = EmbeddedPostgres::start(opts.clone()).await?;
            if args.statements {
                pg = preload_pg_stat_statements(pg, opts).await?;
            }
            preallocate_wal(&pg.url("postgres")).await?;
            (
                pg.url("postgres"),
                Some(pg),
                "embedded (temporary durable cluster, default settings, WAL segments preallocated)"
                    .to_owned(),
            )
        }
    };
    let result = bench(args, sagad, &admin_url, kind, machine, dir).await;
    if let Some(pg) = embedded {
        pg.stop().await?;
    }
    result
}

/// WAL segments the embedded cluster is given before any measurement (1 GiB).
const PREALLOCATED_WAL_SEGMENTS: u32 = 64;

/// Makes the fresh cluster write its WAL into recycled segments, as a server that has been up for
/// a while does. A new cluster has none: each 16 MiB segment is created when the previous one
/// fills, zero-filled and flushed by the backend that needs it while every committing backend
/// waits (`IO:WALInitWrite`/`WALInitSync` in `pg_stat_activity`), a stall of tens of milliseconds
/// every few seconds that lands in whichever run is measuring then. So: keep up to 1 GiB of
/// segments for reuse (`min_wal_size`), fill that many once, and checkpoint, which recycles
/// them. pgbench runs on the same cluster and benefits alike.
async fn preallocate_wal(admin_url: &str) -> anyhow::Result<()> {
    progress(format_args!(
        "preallocating {PREALLOCATED_WAL_SEGMENTS} WAL segments (min_wal_size = 1GB) …"
    ));
    let pool = store::connect(admin_url, 1).await?;
    sqlx::query("ALTER SYSTEM SET min_wal_size = '1GB'")
        .execute(&pool)
        .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&pool)
        .await?;
    for _ in 0..PREALLOCATED_WAL_SEGMENTS {
        // A transaction id's commit record, so that the switch has something to end.
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&pool)
            .await?;
        sqlx::query("SELECT pg_switch_wal()").execute(&pool).await?;
    }
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    pool.close().await;
    Ok(())
}

/// `ALTER SYSTEM` then a restart: pg_stat_statements must be loaded at server start.
async fn preload_pg_stat_statements(
    pg: EmbeddedPostgres,
    opts: EmbeddedOptions,
) -> anyhow::Result<EmbeddedPostgres> {
    let pool = store::connect(&pg.url("postgres"), 1).await?;
    sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .execute(&pool)
        .await?;
    pool.close().await;
    let port = pg.port();
    pg.stop().await?;
    Ok(EmbeddedPostgres::start(EmbeddedOptions {
        port: Some(port),
        ..opts
    })
    .await?)
}

fn progress(msg: std::fmt::Arguments<'_>) {
    eprintln!("bench: {msg}");
}

/// `admin_url` with another database name.
fn database_url(admin_url: &str, database: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(admin_url).context("DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

/// Everything a setting needs that outlives it.
struct Bench<'a> {
    args: &'a BenchArgs,
    /// The sagad binary under test.
    sagad: &'a Path,
    admin: PgPool,
    admin_url: &'a str,
    dir: std::path::PathBuf,
    stripe_base: String,
    notify_url: String,
    pgbench: Option<Pgbench>,
    statements: bool,
    run_id: String,
}

async fn bench(
    args: &BenchArgs,
    sagad: &Path,
    admin_url: &str,
    kind: String,
    machine: Machine,
    dir: &Path,
) -> anyhow::Result<Report> {
    let admin = store::connect(admin_url, 2).await?;
    let server_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await?;
    let mut durability = BTreeMap::new();
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&admin)
            .await?;
        if value != "on" {
            progress(format_args!(
                "warning: {setting}={value}: figures will not reflect a durable deployment"
            ));
        }
        durability.insert(setting.to_owned(), value);
    }
    let statements = args.statements && enable_statements(&admin).await;

    // The outside peers, answering at once from this process.
    let double = StripeDouble::start(TcpListener::bind("127.0.0.1:0").await?).await?;
    let notify = Receiver::on(TcpListener::bind("127.0.0.1:0").await?).await?;
    notify.count_only();

    let run_id = format!("b{:04x}", rand::random::<u16>());
    // The one phase run alone, if any.
    let only = if args.reads_only {
        Some("--reads-only")
    } else if args.outage_only {
        Some("--outage-only")
    } else if args.console_only {
        Some("--console-only")
    } else if args.scale_out_only {
        Some("--scale-out-only")
    } else {
        None
    };
    let pgbench = if args.pgbench_seconds == 0 || only.is_some() {
        None
    } else {
        let name = format!("sagad_bench_{run_id}_pgbench");
        let url = database_url(admin_url, &name)?;
        match Pgbench::find(url) {
            Some(p) => {
                create_database(&admin, &name).await?;
                progress(format_args!(
                    "initialising {name} with {} -i -s {}",
                    p.binary().display(),
                    args.pgbench_scale
                ));
                p.init(args.pgbench_scale).await?;
                Some((p, name))
            }
            None => {
                progress(format_args!(
                    "warning: no pgbench binary found: the pgbench comparison is skipped"
                ));
                None
            }
        }
    };
    let (pgbench, pgbench_db) = pgbench.unzip();

    let ctx = Bench {
        args,
        sagad,
        admin: admin.clone(),
        admin_url,
        dir: dir.to_owned(),
        stripe_base: double.base_url(),
        notify_url: notify.url.clone(),
        pgbench,
        statements,
        run_id,
    };
    let budget = match args.duration {
        Some(d) => Budget::Time(d),
        None => Budget::Sagas(args.sagas as usize),
    };
    let mut settings = Vec::new();
    for &workers in args.workers.iter().filter(|_| only.is_none()) {
        let workers = workers as usize;
        let clients = workers * args.clients_per_worker as usize;
        settings.push(
            ctx.setting(workers, Load::ClosedLoop { clients }, budget)
                .await?,
        );
    }
    let peak = settings
        .iter()
        .max_by(|a, b| a.sagas_per_s.total_cmp(&b.sagas_per_s))
        .filter(|p| p.sagas_per_s > 0.0)
        .map(|p| (p.workers, p.sagas_per_s));
    let half_load = match peak {
        Some((workers, rate)) if !args.no_half_load => {
            let rate = rate / 2.0;
            Some(
                ctx.setting(workers, Load::OpenLoop { rate_per_s: rate }, budget)
                    .await?,
            )
        }
        _ => None,
    };
    let skipped = || format!("skipped ({})", only.unwrap_or_default());
    let webhook_deliveries = match args.webhook_events {
        _ if only.is_some() => Section::NotAvailable { reason: skipped() },
        0 => Section::NotAvailable {
            reason: "skipped (--webhook-events 0)".into(),
        },
        n => Section::Measured(ctx.webhook_deliveries(n as usize).await?),
    };
    let stripe_ingestion = match args.stripe_events {
        _ if only.is_some() => Section::NotAvailable { reason: skipped() },
        0 => Section::NotAvailable {
            reason: "skipped (--stripe-events 0)".into(),
        },
        n => Section::Measured(ctx.stripe_ingestion(n as usize).await?),
    };
    let alone = |flag: &str| only.is_none_or(|o| o == flag);
    let bookings_reads = match args.read_bookings {
        _ if !alone("--reads-only") => Section::NotAvailable { reason: skipped() },
        0 => Section::NotAvailable {
            reason: "skipped (--read-bookings 0)".into(),
        },
        n => Section::Measured(ctx.bookings_reads(n, args.read_requests as usize).await?),
    };
    let outage_recovery = match args.outage_seconds {
        _ if !alone("--outage-only") => Section::NotAvailable { reason: skipped() },
        0 => Section::NotAvailable {
            reason: "skipped (--outage-seconds 0)".into(),
        },
        seconds => Section::Measured(
            ctx.outage_recovery(
                &double,
                args.outage_sagas as usize,
                Duration::from_secs(seconds),
                args.workers.iter().copied().max().unwrap_or(16) as usize,
            )
            .await?,
        ),
    };
    let scale_out = match args.scale_out.as_slice() {
        _ if !alone("--scale-out-only") => Section::NotAvailable { reason: skipped() },
        [] => Section::NotAvailable {
            reason: "skipped (no --scale-out)".into(),
        },
        counts => Section::Measured(
            ctx.scale_out(&double, counts, args.scale_out_svg.as_deref())
                .await?,
        ),
    };

    let console_pages = if args.console || args.console_only {
        Section::Measured(
            ctx.console_pages(args.console_sagas, args.console_requests as usize)
                .await?,
        )
    } else {
        Section::NotAvailable {
            reason: "skipped (without --console)".into(),
        }
    };

    if let Some(name) = pgbench_db {
        drop_database(&admin, &name).await?;
    }
    drop(double);
    admin.close().await;

    let mut report = Report {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sagad: sagad.display().to_string(),
        machine,
        database: Database {
            kind,
            server_version,
            durability,
        },
        settings,
        half_load,
        webhook_deliveries,
        stripe_ingestion,
        bookings_reads,
        outage_recovery,
        console_pages,
        scale_out,
        targets: Vec::new(),
    };
    report.evaluate_targets();
    Ok(report)
}

/// True when pg_stat_statements is loaded and its view can be read.
async fn enable_statements(admin: &PgPool) -> bool {
    let ok = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(admin)
        .await
        .is_ok()
        && sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(admin)
            .await
            .is_ok();
    if !ok {
        progress(format_args!(
            "warning: pg_stat_statements is not available (it must be in shared_preload_libraries): no statement counts"
        ));
    }
    ok
}

async fn create_database(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    drop_database(admin, name).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(admin)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    Ok(())
}

async fn drop_database(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .with_context(|| format!("cannot drop database {name}"))?;
    Ok(())
}

/// `xact_commit`, `xact_rollback` of one database.
/// What the server counted, read before and after a setting.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Counters {
    /// `pg_stat_database.xact_commit` of the bench database: every transaction, including the
    /// empty ones a listening backend runs to read a NOTIFY and read-only autocommit statements.
    xact_commit: i64,
    xact_rollback: i64,
    /// The next transaction id (server-wide): its delta counts transactions that wrote, the ones
    /// whose commit must reach the WAL.
    next_xid: i64,
    /// `pg_stat_wal.wal_sync` (server-wide): WAL flushes to disk. Concurrent commits share one
    /// (group commit), so this is what durability costs.
    wal_sync: i64,
    /// `pg_stat_wal.wal_records` and `wal_bytes` (server-wide): what the writes cost in WAL.
    wal_records: i64,
    wal_bytes: i64,
}

impl Counters {
    async fn read(admin: &PgPool, name: &str) -> anyhow::Result<Self> {
        Ok(sqlx::query_as(
            "SELECT d.xact_commit, d.xact_rollback,
                    pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS next_xid,
                    w.wal_sync, w.wal_records, w.wal_bytes::int8 AS wal_bytes
             FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = $1",
        )
        .bind(name)
        .fetch_one(admin)
        .await?)
    }
}

/// Backends publish their counters when they exit: wait until none is left on `name`.
async fn wait_for_no_backends(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(name)
            .fetch_one(admin)
            .await?;
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(samples: impl Iterator<Item = Duration>) -> Option<Percentiles> {
    Percentiles::of(samples.map(|d| d.as_secs_f64() * 1000.0).collect())
}

impl Bench<'_> {
    /// Creates (or re-creates) database `name` and has the sagad under test migrate it (so an
    /// older build gets the schema it knows); returns its URL.
    async fn fresh_database(&self, name: &str) -> anyhow::Result<String> {
        let url = database_url(self.admin_url, name)?;
        create_database(&self.admin, name).await?;
        child::migrate(self.sagad, &url, &self.dir).await?;
        wait_for_no_backends(&self.admin, name).await?;
        Ok(url)
    }

    /// The `sagad serve` child of a setting or phase; callers set `label` and what they need.
    fn child_config<'c>(&'c self, url: &'c str, workers: usize, pool_size: u32) -> ChildConfig<'c> {
        ChildConfig {
            sagad: self.sagad,
            database_url: url,
            token: TOKEN,
            stripe_base: &self.stripe_base,
            notify_url: &self.notify_url,
            workers,
            pool_size,
            role: sagad::config::Role::All,
            label: "sagad",
            stripe_webhook_secret: None,
            allow_local_webhooks: false,
            nats_url: None,
            dir: &self.dir,
        }
    }

    /// One setting on a fresh database: sagad up, warm-up, measured load, sagad down, then the
    /// database's own counters and, for closed-loop settings, pgbench at the same client count.
    async fn setting(&self, workers: usize, load: Load, budget: Budget) -> anyhow::Result<Setting> {
        let name = format!("sagad_bench_{}_w{workers}", self.run_id);
        let name = match load {
            Load::ClosedLoop { .. } => name,
            Load::OpenLoop { .. } => format!("{name}_half"),
        };
        let url = self.fresh_database(&name).await?;
        if self.statements {
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&self.admin)
                .await?;
        }
        let before = Counters::read(&self.admin, &name).await?;
        let pool_size = workers as u32 + EXTRA_CONNECTIONS;
        let label = match load {
            Load::ClosedLoop { .. } => format!("{workers}-workers"),
            Load::OpenLoop { .. } => format!("{workers}-workers-half"),
        };
        let sagad = Sagad::start(&ChildConfig {
            label: &label,
            ..self.child_config(&url, workers, pool_size)
        })
        .await?;
        // Let start-up settle (first maintenance pass, pool warm-up) before reading idle memory.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = sagad.memory();

        let api = Api::new(&sagad.base, TOKEN)?;
        let done = Completions::listen(&url).await?;
        let run = format!("{}-w{workers}", self.run_id);
        let starts_before;
        let cpu_before;
        let (warmup, measured) = match load {
            Load::ClosedLoop { clients } => {
                progress(format_args!(
                    "{workers} workers, {clients} closed-loop clients: warming up, then {}",
                    describe(budget)
                ));
                let warm = load::closed_loop(
                    std::slice::from_ref(&api),
                    &done,
                    &format!("{run}-warm"),
                    clients,
                    Budget::Sagas(clients * WARM_UP_PER_CLIENT),
                    load::booking,
                )
                .await?;
                starts_before = sagad_histograms(&api).await;
                cpu_before = cpu::Sample::now(sagad.pid());
                let measured = load::closed_loop(
                    std::slice::from_ref(&api),
                    &done,
                    &run,
                    clients,
                    budget,
                    load::booking,
                )
                .await?;
                (warm.samples.len(), measured)
            }
            Load::OpenLoop { rate_per_s } => {
                progress(format_args!(
                    "{workers} workers, open loop at {rate_per_s:.1} sagas/s (half the peak): warming up for {OPEN_LOOP_WARM_UP:?}, then {}",
                    describe(budget)
                ));
                let warm = load::open_loop(
                    &api,
                    &done,
                    &format!("{run}-warm"),
                    rate_per_s,
                    Budget::Time(OPEN_LOOP_WARM_UP),
                )
                .await?;
                starts_before = sagad_histograms(&api).await;
                cpu_before = cpu::Sample::now(sagad.pid());
                (
                    warm.samples.len(),
                    load::open_loop(&api, &done, &run, rate_per_s, budget).await?,
                )
            }
        };
        let cpu_after = cpu::Sample::now(sagad.pid());
        let peak = sagad.memory();
        // The start RPC as sagad itself timed it, over the measured window: tells sagad's share
        // of the client-side figure from the client's, the network's and the scheduler's.
        let after = sagad_histograms(&api).await;
        let start_rpc_in_sagad = report::quantile_bound(&starts_before.0, &after.0, 0.99);
        let start_pool_wait = report::quantile_bound(&starts_before.1, &after.1, 0.99);
        drop(done);
        sagad.stop().await?;
        wait_for_no_backends(&self.admin, &name).await?;
        let after = Counters::read(&self.admin, &name).await?;

        let db = store::connect(&url, 1).await?;
        let outcomes: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM sagas GROUP BY status ORDER BY status")
                .fetch_all(&db)
                .await?;
        let outcomes: BTreeMap<String, i64> = outcomes.into_iter().collect();
        let finished: i64 = outcomes
            .iter()
            .filter(|(s, _)| matches!(s.as_str(), "completed" | "compensated" | "stuck"))
            .map(|(_, n)| n)
            .sum();
        let ids: Vec<uuid::Uuid> = measured.samples.iter().filter_map(|s| s.id).collect();
        let db_latency: Vec<f64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM finished_at - created_at) * 1000)::float8
             FROM sagas WHERE id = ANY($1) AND finished_at IS NOT NULL",
        )
        .bind(&ids)
        .fetch_all(&db)
        .await?;
        let slowest = slowest_saga(&db, &ids).await?;
        db.close().await;
        let statements = if self.statements {
            Some(self.statement_counts(&name, finished).await?)
        } else {
            None
        };
        // On the setting's own database, now holding its sagas, with sagad stopped.
        let ceiling = match (&self.pgbench, load) {
            (Some(p), Load::ClosedLoop { .. }) if !self.args.no_ceiling => {
                progress(format_args!(
                    "ceiling: pgbench replaying the booking saga's statements, -c {workers} -j {workers} -T {}",
                    self.args.pgbench_seconds
                ));
                Some(
                    p.ceiling_sagas_per_s(
                        &url,
                        workers,
                        pgbench::Length::Seconds(self.args.pgbench_seconds),
                    )
                    .await?,
                )
            }
            _ => None,
        };
        drop_database(&self.admin, &name).await?;

        let samples = &measured.samples;
        let completed = samples.iter().filter(|s| s.end_to_end.is_some()).count();
        let errors: Vec<&str> = samples.iter().filter_map(|s| s.error.as_deref()).collect();
        let sagas_per_s = completed as f64 / measured.elapsed.as_secs_f64().max(1e-9);
        let commits = after.xact_commit - before.xact_commit;
        let per_saga = |n: i64| n as f64 / (finished.max(1) as f64);

        let pgbench_tps = match (&self.pgbench, load) {
            (Some(p), Load::ClosedLoop { .. }) => {
                progress(format_args!(
                    "pgbench -N -c {workers} -j {workers} -T {}",
                    self.args.pgbench_seconds
                ));
                Some(
                    p.simple_update_tps(workers, self.args.pgbench_seconds)
                        .await?,
                )
            }
            _ => None,
        };
        let setting = Setting {
            workers,
            db_pool_size: pool_size,
            load,
            sagas: samples.len(),
            warmup,
            outcomes,
            errors: errors.len(),
            first_error: errors.first().map(|e| (*e).to_owned()),
            elapsed_s: measured.elapsed.as_secs_f64(),
            sagas_per_s,
            end_to_end_ms: ms(samples.iter().filter_map(|s| s.end_to_end)),
            end_to_end_db_ms: Percentiles::of(db_latency),
            start_rpc_ms: ms(samples.iter().filter_map(|s| s.start_rpc)),
            commits,
            rollbacks: after.xact_rollback - before.xact_rollback,
            commits_per_saga: per_saga(commits),
            write_transactions_per_saga: per_saga(after.next_xid - before.next_xid),
            wal_syncs_per_saga: per_saga(after.wal_sync - before.wal_sync),
            wal_records_per_saga: per_saga(after.wal_records - before.wal_records),
            wal_bytes_per_saga: per_saga(after.wal_bytes - before.wal_bytes),
            cpu: cpu_before.zip(cpu_after).and_then(|(b, a)| {
                cpu::PerSaga::between(
                    b,
                    a,
                    completed,
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )
            }),
            pgbench_tps,
            sagas_per_pgbench_tps: pgbench_tps.filter(|t| *t > 0.0).map(|t| sagas_per_s / t),
            ceiling_sagas_per_s: ceiling,
            idle_rss_mib: idle.map(|m| m.rss_mib),
            peak_rss_mib: peak.map(|m| m.hwm_mib),
            statements,
            slowest,
            start_rpc_in_sagad_p99_ms: start_rpc_in_sagad.map(|(le, _)| le * 1000.0),
            start_pool_wait_p99_ms: start_pool_wait.map(|(le, _)| le * 1000.0),
        };
        progress(format_args!(
            "{workers} workers: {:.1} sagas/s, {:.1} commits/saga ({:.1} writing, {:.2} WAL flushes){}",
            setting.sagas_per_s,
            setting.commits_per_saga,
            setting.write_transactions_per_saga,
            setting.wal_syncs_per_saga,
            pgbench_tps
                .map(|t| format!(", pgbench -N {t:.0} TPS"))
                .unwrap_or_default()
        ));
        Ok(setting)
    }

    async fn statement_counts(
        &self,
        database: &str,
        sagas: i64,
    ) -> anyhow::Result<Vec<StatementCount>> {
        let rows: Vec<(i64, i64, f64, String)> = sqlx::query_as(
            "SELECT s.calls, s.rows, s.mean_exec_time, s.query FROM pg_stat_statements s
             JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = $1 ORDER BY s.calls DESC, s.query",
        )
        .bind(database)
        .fetch_all(&self.admin)
        .await?;
        let per = sagas.max(1) as f64;
        Ok(rows
            .into_iter()
            .map(|(calls, rows, exec_ms_per_call, query)| StatementCount {
                calls_per_saga: calls as f64 / per,
                rows_per_saga: rows as f64 / per,
                exec_ms_per_call,
                query,
            })
            .collect())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sagad::engine::definition::duration::parse(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 30s or 2m"))
}

fn describe(budget: Budget) -> String {
    match budget {
        Budget::Sagas(n) => format!("{n} sagas"),
        Budget::Time(d) => format!("{d:?} of load"),
    }
}

/// The saga among `ids` that took longest from creation to its end, with its events' offsets.
async fn slowest_saga(
    db: &sqlx::PgPool,
    ids: &[uuid::Uuid],
) -> anyhow::Result<Option<report::Slowest>> {
    let rows: Vec<(uuid::Uuid, f64, String, f64)> = sqlx::query_as(
        "WITH s AS (SELECT id, created_at, finished_at FROM sagas
                    WHERE id = ANY($1) AND finished_at IS NOT NULL
                    ORDER BY finished_at - created_at DESC LIMIT 1)
         SELECT s.id, (extract(epoch FROM s.finished_at - s.created_at) * 1000)::float8,
                e.event_type, (extract(epoch FROM e.recorded_at - s.created_at) * 1000)::float8
         FROM s JOIN events e ON e.aggregate_id = s.id
         ORDER BY e.version",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows.first().map(|(id, ms, _, _)| report::Slowest {
        saga_id: *id,
        ms: *ms,
        events: rows.iter().map(|(_, _, t, at)| (t.clone(), *at)).collect(),
    }))
}

/// From sagad's `/metrics` (empty if unreadable): the start RPC's request-duration buckets and its
/// wait for a pooled connection.
async fn sagad_histograms(api: &Api) -> (Vec<(f64, u64)>, Vec<(f64, u64)>) {
    let text = api.metrics().await.unwrap_or_default();
    (
        report::histogram_buckets(
            &text,
            "sagad_http_request_duration_seconds",
            &["method=\"POST\"", "route=\"/v1/sagas\"", "status=\"202\""],
        ),
        report::histogram_buckets(&text, "sagad_db_acquire_seconds", &["site=\"start_saga\""]),
    )
}
