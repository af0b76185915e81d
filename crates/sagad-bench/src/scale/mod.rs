//! Scale-out: 1, 2, 4 … `sagad serve` processes on one database. For each process count N, a run
//! with N processes in `SAGAD_ROLE=all` (each serves the API and runs workers), then one with N
//! worker processes (`SAGAD_ROLE=worker`) behind ⌈N/2⌉ API processes (`SAGAD_ROLE=api`). The
//! Stripe double holds every answer back a delay drawn from `--stripe-latency`, so workers wait on
//! the network as they do against Stripe. Closed-loop clients, spread over the API processes,
//! start a fixed number of booking sagas, some on the same listing and some asking for nights
//! another saga just took (see [`load::contended_booking`]). Measured per run: sagas/s,
//! end-to-end latency, PostgreSQL's CPU (its processes in `/proc`) and commits per saga, the
//! connections and what the active backends waited on; then the no-double-effect invariants.

mod chart;
mod invariants;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sagad::config::Role;
use serde::Serialize;
use sqlx::PgPool;
use stripe_double::{Fault, Operation, StripeDouble};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::child::{ChildConfig, Sagad, role_name};
use super::load::{self, Api, Budget, Completions};
use super::report::{self, Percentiles};
use super::{
    Bench, Counters, EXTRA_CONNECTIONS, TOKEN, cpu, drop_database, ms, progress,
    wait_for_no_backends,
};
pub use invariants::Invariants;

/// Sagas per client before the measured window (every pooled connection warm).
const WARM_UP_PER_CLIENT: usize = 2;
/// `SAGAD_DB_POOL_SIZE` of an API-only process: a start request is one short transaction.
const API_POOL: u32 = 10;
/// How often `pg_stat_activity` is sampled during the measured window.
const ACTIVITY_EVERY: Duration = Duration::from_millis(200);

/// The Stripe double's delay per call, drawn uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub min_ms: u64,
    pub max_ms: u64,
}

/// `MIN-MAX` in milliseconds, e.g. `50-150`; one number is a fixed delay.
pub fn parse_latency(s: &str) -> Result<Latency, String> {
    let bad = || format!("{s:?} is not a latency range in milliseconds; use e.g. 50-150");
    let (min, max) = s.split_once('-').unwrap_or((s, s));
    let min: u64 = min.trim().parse().map_err(|_| bad())?;
    let max: u64 = max.trim().parse().map_err(|_| bad())?;
    if max < min || max > 60_000 {
        return Err(format!(
            "{s:?}: the range must be MIN-MAX with MIN ≤ MAX ≤ 60000 ms"
        ));
    }
    Ok(Latency {
        min_ms: min,
        max_ms: max,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// N processes, each the API and workers.
    All,
    /// N worker processes and ⌈N/2⌉ API processes.
    Split,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::All => "all",
            Mode::Split => "api + worker",
        }
    }

    /// The roles of the processes of a run with `n` processes: API-only ones first.
    pub fn roles(self, n: usize) -> Vec<Role> {
        match self {
            Mode::All => vec![Role::All; n],
            Mode::Split => {
                let mut roles = vec![Role::Api; n.div_ceil(2)];
                roles.extend(std::iter::repeat_n(Role::Worker, n));
                roles
            }
        }
    }
}

/// What the scale-out phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOut {
    pub stripe_latency: Latency,
    /// `SAGAD_WORKERS` of each process that runs workers, and its pool (workers + 8).
    pub workers_per_process: usize,
    pub worker_pool: u32,
    /// `SAGAD_DB_POOL_SIZE` of an API-only process.
    pub api_pool: u32,
    pub clients_per_worker: usize,
    /// Booking sagas measured per run, after a warm-up of two per client.
    pub sagas_per_run: usize,
    /// PostgreSQL's `max_connections`.
    pub max_connections: i64,
    pub runs: Vec<ScaleRun>,
    /// Where the chart was written, if asked.
    pub svg: Option<String>,
}

/// One run: one mode, one process count.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub mode: Mode,
    /// Processes in `all` mode; worker processes when split.
    pub processes: usize,
    pub api_processes: usize,
    pub worker_processes: usize,
    /// `SAGAD_WORKERS` summed over the processes that run workers.
    pub workers: usize,
    pub clients: usize,
    /// Sagas in the measured window.
    pub sagas: usize,
    /// Final status of every saga of the run, warm-up included.
    pub outcomes: BTreeMap<String, i64>,
    /// Client-side failures (start refused, no terminal state in time).
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// Sagas that reached a terminal state ÷ the measured window.
    pub sagas_per_s: f64,
    /// Start RPC sent → terminal NOTIFY received.
    pub end_to_end_ms: Option<Percentiles>,
    pub start_rpc_ms: Option<Percentiles>,
    /// p99 bucket bound of the start RPC's wait for a pooled connection, over the API processes.
    pub start_pool_wait_p99_ms: Option<f64>,
    /// `xact_commit` of the run's database from before the first process started until every
    /// backend had exited, ÷ sagas finished (warm-up included).
    pub commits_per_saga: f64,
    /// Transaction ids assigned (server-wide), likewise.
    pub write_transactions_per_saga: f64,
    /// CPU milliseconds per saga over the measured window: PostgreSQL's processes, the `sagad
    /// serve` processes together, this process (load, Stripe double, receiver).
    pub db_cpu_ms_per_saga: Option<f64>,
    pub sagad_cpu_ms_per_saga: Option<f64>,
    pub bench_cpu_ms_per_saga: Option<f64>,
    /// Share of the machine's CPUs busy, and PostgreSQL's part of the machine, over the window.
    pub machine_busy_share: Option<f64>,
    pub db_cpu_share: Option<f64>,
    /// Requests the Stripe double answered per measured saga.
    pub stripe_calls_per_saga: f64,
    /// `pg_stat_activity` of the run's database, sampled every 200 ms in the measured window:
    /// connections at most, backends running a statement and idle in a transaction on average,
    /// and what the running ones waited on (`CPU` = no wait event), as shares of those samples.
    pub connections_peak: i64,
    pub active_backends_mean: f64,
    pub idle_in_transaction_mean: f64,
    pub waits: Vec<(String, f64)>,
    pub invariants: Invariants,
    /// `/proc/loadavg` at the end of the measured window.
    pub load_average: String,
}

impl ScaleOut {
    /// Client errors, sagas that did not finish, and invariant violations.
    pub fn errors(&self) -> usize {
        self.runs
            .iter()
            .map(|r| r.errors + r.invariants.violated())
            .sum()
    }

    pub fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "scale-out on one PostgreSQL (max_connections {}): Stripe double {}–{} ms per call, {} workers per process (pool {}), API-only pool {}, {} clients per worker, {} sagas per run",
            self.max_connections,
            self.stripe_latency.min_ms,
            self.stripe_latency.max_ms,
            self.workers_per_process,
            self.worker_pool,
            self.api_pool,
            self.clients_per_worker,
            self.sagas_per_run
        );
        let _ = writeln!(
            out,
            "| mode | processes (API + worker) | workers | clients | sagas/s | end-to-end p50 / p99 ms | start p99 ms | DB CPU ms/saga | commits/saga | sagad CPU ms/saga | CPU busy (DB) | Stripe calls/saga | connections | active / idle in tx | waits of active backends | invariants | load average |"
        );
        let _ = writeln!(
            out,
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|"
        );
        let or_dash = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
        for r in &self.runs {
            let procs = match r.mode {
                Mode::All => format!("{}", r.processes),
                Mode::Split => format!(
                    "{} ({} + {})",
                    r.api_processes + r.worker_processes,
                    r.api_processes,
                    r.worker_processes
                ),
            };
            let waits: Vec<String> = r
                .waits
                .iter()
                .take(3)
                .map(|(w, s)| format!("{w} {:.0} %", s * 100.0))
                .collect();
            let inv = if r.invariants.violated() == 0 {
                format!(
                    "ok ({} PIs, {} captures, {} sagas)",
                    r.invariants.payment_intents, r.invariants.captures, r.invariants.sagas
                )
            } else {
                format!("{} VIOLATED", r.invariants.violated())
            };
            let _ = writeln!(
                out,
                "| {} | {procs} | {} | {} | {:.1} | {} | {} | {} | {:.2} | {} | {} | {:.2} | {} | {:.1} / {:.1} | {} | {inv} | {} |",
                r.mode.label(),
                r.workers,
                r.clients,
                r.sagas_per_s,
                r.end_to_end_ms
                    .map_or("-".into(), |p| format!("{:.0} / {:.0}", p.p50, p.p99)),
                r.start_rpc_ms
                    .map_or("-".into(), |p| format!("{:.1}", p.p99)),
                or_dash(r.db_cpu_ms_per_saga, &|v| format!("{v:.2}")),
                r.commits_per_saga,
                or_dash(r.sagad_cpu_ms_per_saga, &|v| format!("{v:.2}")),
                match (r.machine_busy_share, r.db_cpu_share) {
                    (Some(m), Some(d)) => format!("{:.0} % ({:.0} %)", m * 100.0, d * 100.0),
                    (Some(m), None) => format!("{:.0} %", m * 100.0),
                    _ => "-".into(),
                },
                r.stripe_calls_per_saga,
                r.connections_peak,
                r.active_backends_mean,
                r.idle_in_transaction_mean,
                waits.join(", "),
                r.load_average,
            );
        }
        let _ = writeln!(
            out,
            "(sagas/s = sagas finished ÷ the measured window; CPU busy = both CPUs of the machine, DB = PostgreSQL's processes' share of them; connections = most seen to the run's database)"
        );
        for r in &self.runs {
            let not_completed: i64 = r
                .outcomes
                .iter()
                .filter(|(k, _)| k.as_str() != "completed")
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(
                out,
                "  {} ×{}: outcomes {:?} ({not_completed} not completed: the nights another saga took), {} client errors{}{}",
                r.mode.label(),
                r.processes,
                r.outcomes,
                r.errors,
                r.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                if r.invariants.violations.is_empty() {
                    String::new()
                } else {
                    format!("; violations: {}", r.invariants.violations.join("; "))
                }
            );
        }
        if let Some(svg) = &self.svg {
            let _ = writeln!(out, "  chart: {svg}");
        }
    }

    /// The chart: sagas/s and end-to-end p99 against the process count, both modes.
    pub fn chart(&self, machine: &str) -> String {
        let series = |mode: Mode, f: &dyn Fn(&ScaleRun) -> Option<f64>| chart::Series {
            name: match mode {
                Mode::All => "SAGAD_ROLE=all",
                Mode::Split => "worker processes + ⌈N/2⌉ API processes",
            },
            colour: match mode {
                Mode::All => "#1f77b4",
                Mode::Split => "#d62728",
            },
            dashed: mode == Mode::Split,
            points: self
                .runs
                .iter()
                .filter(|r| r.mode == mode)
                .filter_map(|r| f(r).map(|v| (r.processes, v)))
                .collect(),
        };
        let rate = |r: &ScaleRun| Some(r.sagas_per_s);
        let p99 = |r: &ScaleRun| r.end_to_end_ms.map(|p| p.p99);
        chart::svg(
            "sagad scale-out on one PostgreSQL: booking sagas",
            &format!(
                "Stripe double {}–{} ms per call; {} workers per process; {} sagas per run; {machine}",
                self.stripe_latency.min_ms,
                self.stripe_latency.max_ms,
                self.workers_per_process,
                self.sagas_per_run
            ),
            "processes running workers (N)",
            &[
                chart::Panel {
                    title: "throughput",
                    unit: "sagas/s",
                    series: vec![series(Mode::All, &rate), series(Mode::Split, &rate)],
                },
                chart::Panel {
                    title: "end-to-end p99",
                    unit: "ms",
                    series: vec![series(Mode::All, &p99), series(Mode::Split, &p99)],
                },
            ],
        )
    }
}

/// What `pg_stat_activity` showed over a window.
#[derive(Debug, Default)]
struct Activity {
    samples: usize,
    connections_peak: i64,
    active: usize,
    idle_in_transaction: usize,
    waits: BTreeMap<String, usize>,
}

impl Activity {
    /// Samples `database`'s backends every [`ACTIVITY_EVERY`] until `stop` fires.
    async fn sample(admin: PgPool, database: String, mut stop: oneshot::Receiver<()>) -> Self {
        let mut a = Self::default();
        let mut tick = tokio::time::interval(ACTIVITY_EVERY);
        loop {
            tokio::select! {
                _ = &mut stop => return a,
                _ = tick.tick() => {}
            }
            let rows: Vec<(String, Option<String>)> = match sqlx::query_as(
                "SELECT coalesce(state, ''), wait_event_type || ':' || wait_event
                 FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&database)
            .fetch_all(&admin)
            .await
            {
                Ok(rows) => rows,
                Err(_) => continue,
            };
            a.samples += 1;
            a.connections_peak = a.connections_peak.max(rows.len() as i64);
            for (state, wait) in rows {
                match state.as_str() {
                    "active" => {
                        a.active += 1;
                        *a.waits
                            .entry(wait.unwrap_or_else(|| "CPU".into()))
                            .or_default() += 1;
                    }
                    "idle in transaction" => a.idle_in_transaction += 1,
                    _ => {}
                }
            }
        }
    }

    fn waits(&self) -> Vec<(String, f64)> {
        let mut w: Vec<(String, f64)> = self
            .waits
            .iter()
            .map(|(k, n)| (k.clone(), *n as f64 / self.active.max(1) as f64))
            .collect();
        w.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        w
    }
}

/// CPU counters at one instant.
struct CpuSample {
    machine: Option<u64>,
    postgres: Option<u64>,
    sagad: Option<u64>,
    bench: Option<u64>,
    at: std::time::Instant,
}

impl CpuSample {
    fn now(postgres: Option<cpu::Postgres>, sagad: &[u32]) -> Self {
        Self {
            machine: cpu::machine_ticks(),
            postgres: postgres.and_then(|p| p.ticks()),
            sagad: cpu::processes(sagad),
            bench: cpu::own_ticks(),
            at: std::time::Instant::now(),
        }
    }
}

/// Cumulative histogram buckets of several processes, added bound by bound.
fn sum_buckets(per_process: &[Vec<(f64, u64)>]) -> Vec<(f64, u64)> {
    let mut sum: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for buckets in per_process {
        for &(le, n) in buckets {
            sum.entry(le.to_bits()).or_insert((le, 0)).1 += n;
        }
    }
    let mut out: Vec<(f64, u64)> = sum.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

async fn start_pool_waits(apis: &[Api]) -> Vec<(f64, u64)> {
    let mut per = Vec::new();
    for api in apis {
        let text = api.metrics().await.unwrap_or_default();
        per.push(report::histogram_buckets(
            &text,
            "sagad_db_acquire_seconds",
            &["site=\"start_saga\""],
        ));
    }
    sum_buckets(&per)
}

impl Bench<'_> {
    /// Every run of the scale-out phase, `counts` in each mode; the chart written to `svg`.
    pub(crate) async fn scale_out(
        &self,
        double: &StripeDouble,
        counts: &[u32],
        svg: Option<&Path>,
    ) -> anyhow::Result<ScaleOut> {
        let latency = self.args.stripe_latency;
        let max_connections: i64 = sqlx::query_scalar(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'max_connections'",
        )
        .fetch_one(&self.admin)
        .await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&self.admin)
            .await?;
        let postgres = u32::try_from(backend)
            .ok()
            .and_then(cpu::Postgres::of_backend);
        if postgres.is_none() {
            progress(format_args!(
                "scale-out: PostgreSQL's processes are not on this machine: no database CPU figures"
            ));
        }
        double.inject(
            Fault::latency_between(
                Operation::Any,
                Duration::from_millis(latency.min_ms),
                Duration::from_millis(latency.max_ms),
            )
            .times(u32::MAX),
        );
        let mut runs = Vec::new();
        let outcome = async {
            for mode in [Mode::All, Mode::Split] {
                for &n in counts {
                    runs.push(self.scale_run(double, postgres, mode, n as usize).await?);
                }
            }
            anyhow::Ok(())
        }
        .await;
        double.clear_faults();
        outcome?;
        let workers = self.args.scale_workers as usize;
        let mut scale = ScaleOut {
            stripe_latency: latency,
            workers_per_process: workers,
            worker_pool: workers as u32 + EXTRA_CONNECTIONS,
            api_pool: API_POOL,
            clients_per_worker: self.args.clients_per_worker as usize,
            sagas_per_run: self.args.scale_sagas as usize,
            max_connections,
            runs,
            svg: None,
        };
        if let Some(path) = svg {
            let m = super::report::Machine::describe();
            let machine = format!("{} CPUs ({})", m.cpus, m.cpu_model);
            std::fs::write(path, scale.chart(&machine))
                .with_context(|| format!("cannot write {}", path.display()))?;
            scale.svg = Some(path.display().to_string());
        }
        Ok(scale)
    }

    async fn scale_run(
        &self,
        double: &StripeDouble,
        postgres: Option<cpu::Postgres>,
        mode: Mode,
        n: usize,
    ) -> anyhow::Result<ScaleRun> {
        let tag = match mode {
            Mode::All => "all",
            Mode::Split => "split",
        };
        let name = format!("sagad_bench_{}_scale_{tag}{n}", self.run_id);
        let url = self.fresh_database(&name).await?;
        let before = Counters::read(&self.admin, &name).await?;
        let workers_each = self.args.scale_workers as usize;
        let roles = mode.roles(n);
        let mut children = Vec::with_capacity(roles.len());
        for (i, role) in roles.iter().enumerate() {
            let pool = match role {
                Role::Api => API_POOL,
                _ => workers_each as u32 + EXTRA_CONNECTIONS,
            };
            let label = format!("scale-{tag}{n}-{i}-{}", role_name(*role));
            children.push(
                Sagad::start(&ChildConfig {
                    role: *role,
                    label: &label,
                    ..self.child_config(&url, workers_each, pool)
                })
                .await?,
            );
        }
        let apis: Vec<Api> = children
            .iter()
            .zip(&roles)
            .filter(|(_, r)| **r != Role::Worker)
            .map(|(c, _)| Api::new(&c.base, TOKEN))
            .collect::<anyhow::Result<_>>()?;
        let pids: Vec<u32> = children.iter().map(Sagad::pid).collect();
        let worker_processes = roles.iter().filter(|r| **r != Role::Api).count();
        let workers = worker_processes * workers_each;
        let clients = workers * self.args.clients_per_worker as usize;
        let budget = Budget::Sagas(self.args.scale_sagas as usize);
        progress(format_args!(
            "scale-out, {} ×{n}: {} processes ({} API-serving), {workers} workers, {clients} clients: warming up, then {} sagas",
            mode.label(),
            roles.len(),
            apis.len(),
            self.args.scale_sagas
        ));

        let done = Completions::listen(&url).await?;
        let run = format!("{}-{tag}{n}", self.run_id);
        load::closed_loop(
            &apis,
            &done,
            &format!("{run}-warm"),
            clients,
            Budget::Sagas(clients * WARM_UP_PER_CLIENT),
            load::contended_booking,
        )
        .await?;
        let waits_before = start_pool_waits(&apis).await;
        let (stop_sampling, stop) = oneshot::channel();
        let sampler = tokio::spawn(Activity::sample(self.admin.clone(), name.clone(), stop));
        let calls_before = double.request_count();
        let cpu_before = CpuSample::now(postgres, &pids);
        let measured =
            load::closed_loop(&apis, &done, &run, clients, budget, load::contended_booking).await?;
        let cpu_after = CpuSample::now(postgres, &pids);
        let calls = double.request_count() - calls_before;
        let _ = stop_sampling.send(());
        let activity = sampler.await.context("the activity sampler failed")?;
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let waits_after = start_pool_waits(&apis).await;
        drop(done);

        let mut stopping = JoinSet::new();
        for c in children {
            stopping.spawn(c.stop());
        }
        while let Some(stopped) = stopping.join_next().await {
            stopped??;
        }
        wait_for_no_backends(&self.admin, &name).await?;
        let after = Counters::read(&self.admin, &name).await?;

        let db = sagad::store::connect(&url, 2).await?;
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
        let invariants = Invariants::read(&db, double).await?;
        db.close().await;
        drop_database(&self.admin, &name).await?;

        let samples = &measured.samples;
        let completed = samples.iter().filter(|s| s.end_to_end.is_some()).count();
        let errors: Vec<&str> = samples.iter().filter_map(|s| s.error.as_deref()).collect();
        let per_finished = |d: i64| d as f64 / finished.max(1) as f64;
        let window = cpu_after.at.duration_since(cpu_before.at).as_secs_f64();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let delta = |a: Option<u64>, b: Option<u64>| a.zip(b).and_then(|(a, b)| a.checked_sub(b));
        let per_saga = |ticks: Option<u64>| {
            ticks
                .filter(|_| completed > 0)
                .map(|t| cpu::ticks_ms(t) / completed as f64)
        };
        let share = |ticks: Option<u64>| ticks.map(|t| cpu::ticks_ms(t) / 1000.0 / (window * cpus));
        let db_ticks = delta(cpu_after.postgres, cpu_before.postgres);
        let result = ScaleRun {
            mode,
            processes: n,
            api_processes: roles.iter().filter(|r| **r == Role::Api).count(),
            worker_processes,
            workers,
            clients,
            sagas: samples.len(),
            outcomes,
            errors: errors.len(),
            first_error: errors.first().map(|e| (*e).to_owned()),
            elapsed_s: measured.elapsed.as_secs_f64(),
            sagas_per_s: completed as f64 / measured.elapsed.as_secs_f64().max(1e-9),
            end_to_end_ms: ms(samples.iter().filter_map(|s| s.end_to_end)),
            start_rpc_ms: ms(samples.iter().filter_map(|s| s.start_rpc)),
            start_pool_wait_p99_ms: report::quantile_bound(&waits_before, &waits_after, 0.99)
                .map(|(le, _)| le * 1000.0),
            commits_per_saga: per_finished(after.xact_commit - before.xact_commit),
            write_transactions_per_saga: per_finished(after.next_xid - before.next_xid),
            db_cpu_ms_per_saga: per_saga(db_ticks),
            sagad_cpu_ms_per_saga: per_saga(delta(cpu_after.sagad, cpu_before.sagad)),
            bench_cpu_ms_per_saga: per_saga(delta(cpu_after.bench, cpu_before.bench)),
            machine_busy_share: share(delta(cpu_after.machine, cpu_before.machine)),
            db_cpu_share: share(db_ticks),
            stripe_calls_per_saga: calls as f64 / samples.len().max(1) as f64,
            connections_peak: activity.connections_peak,
            active_backends_mean: activity.active as f64 / activity.samples.max(1) as f64,
            idle_in_transaction_mean: activity.idle_in_transaction as f64
                / activity.samples.max(1) as f64,
            waits: activity.waits(),
            invariants,
            load_average,
        };
        progress(format_args!(
            "scale-out, {} ×{n}: {:.1} sagas/s, p50/p99 {}, DB CPU {} ms/saga, {:.2} commits/saga, invariants {}",
            mode.label(),
            result.sagas_per_s,
            result
                .end_to_end_ms
                .map_or("-".into(), |p| format!("{:.0}/{:.0} ms", p.p50, p.p99)),
            result
                .db_cpu_ms_per_saga
                .map_or("-".into(), |v| format!("{v:.2}")),
            result.commits_per_saga,
            if result.invariants.violated() == 0 {
                "ok".to_owned()
            } else {
                format!("{} VIOLATED", result.invariants.violated())
            }
        ));
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_runs_put_half_as_many_api_processes_before_the_workers() {
        assert_eq!(Mode::All.roles(2), vec![Role::All, Role::All]);
        assert_eq!(Mode::Split.roles(1), vec![Role::Api, Role::Worker]);
        let eight = Mode::Split.roles(8);
        assert_eq!(eight.iter().filter(|r| **r == Role::Api).count(), 4);
        assert_eq!(eight.iter().filter(|r| **r == Role::Worker).count(), 8);
        assert_eq!(Mode::Split.roles(3)[..2], [Role::Api, Role::Api]);
    }

    #[test]
    fn latency_ranges() {
        assert_eq!(
            parse_latency("50-150"),
            Ok(Latency {
                min_ms: 50,
                max_ms: 150
            })
        );
        assert_eq!(
            parse_latency("100"),
            Ok(Latency {
                min_ms: 100,
                max_ms: 100
            })
        );
        assert!(parse_latency("150-50").is_err());
        assert!(parse_latency("fast").is_err());
        assert!(parse_latency("1-90000").is_err());
    }

    #[test]
    fn bucket_counts_add_up_across_processes() {
        let a = vec![(0.001, 5), (0.01, 9), (f64::INFINITY, 10)];
        let b = vec![(0.001, 1), (0.01, 1), (f64::INFINITY, 4)];
        assert_eq!(
            sum_buckets(&[a, b]),
            vec![(0.001, 6), (0.01, 10), (f64::INFINITY, 14)]
        );
    }
}
