//! What a benchmark run measured, as a readable table or as JSON, with the issue's targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// The targets of issue 5, on the reference 2-core machine.
pub const TARGET_SAGAS_VS_PGBENCH: f64 = 0.15;
pub const TARGET_START_P99_MS: f64 = 10.0;
pub const TARGET_IDLE_RSS_MIB: f64 = 64.0;

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// `None` for no samples.
    pub fn of(mut samples_ms: Vec<f64>) -> Option<Self> {
        if samples_ms.is_empty() {
            return None;
        }
        samples_ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * samples_ms.len() as f64).ceil() as usize;
            samples_ms[rank.clamp(1, samples_ms.len()) - 1]
        };
        Some(Self {
            count: samples_ms.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: samples_ms[samples_ms.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    /// `/proc/loadavg` when the run started: a busy machine makes every figure worse.
    pub load_average_at_start: String,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            load_average_at_start: read("/proc/loadavg"),
            kernel: read("/proc/sys/kernel/osrelease"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Database {
    /// `embedded (temporary durable cluster)` or `DATABASE_URL`.
    pub kind: String,
    pub server_version: String,
    /// `fsync`, `synchronous_commit`, `full_page_writes`: a benchmark must run with them on.
    pub durability: BTreeMap<String, String>,
}

/// How load was offered in one setting.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// `clients` concurrent clients, each starting a saga and waiting for it before the next.
    ClosedLoop { clients: usize },
    /// Starts at a fixed rate whatever the completions do.
    OpenLoop { rate_per_s: f64 },
}

/// One statement as `pg_stat_statements` counted it, per completed saga.
#[derive(Debug, Clone, Serialize)]
pub struct StatementCount {
    pub calls_per_saga: f64,
    pub rows_per_saga: f64,
    /// Mean execution time of one call, as PostgreSQL timed it (`mean_exec_time`).
    pub exec_ms_per_call: f64,
    pub query: String,
}

/// One worker/connection setting.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub workers: usize,
    pub db_pool_size: u32,
    pub load: Load,
    /// Sagas in the measured window (warm-up excluded).
    pub sagas: usize,
    /// Sagas started before the measured window (one per client), counted only in commits per saga.
    pub warmup: usize,
    /// Final status of every saga of the setting, warm-up included.
    pub outcomes: BTreeMap<String, i64>,
    /// Client-side failures (start RPC refused, no terminal state in time).
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// Completed sagas per second over the measured window (first start to last terminal state).
    pub sagas_per_s: f64,
    /// Start RPC sent → the terminal-state NOTIFY arrived at the bench client.
    pub end_to_end_ms: Option<Percentiles>,
    /// `finished_at - created_at` as the database recorded them (both are transaction start times).
    pub end_to_end_db_ms: Option<Percentiles>,
    /// `POST /v1/sagas` without `?wait`: request sent → 202 body read.
    pub start_rpc_ms: Option<Percentiles>,
    /// `xact_commit` delta of the bench database over the sagad process's life (start, load, stop).
    pub commits: i64,
    pub rollbacks: i64,
    pub commits_per_saga: f64,
    /// Transaction ids assigned (server-wide) per finished saga: the transactions that wrote.
    pub write_transactions_per_saga: f64,
    /// `pg_stat_wal.wal_sync` delta (server-wide) per finished saga: WAL flushes to disk.
    pub wal_syncs_per_saga: f64,
    /// `pg_stat_wal.wal_records` and `wal_bytes` deltas (server-wide) per finished saga.
    pub wal_records_per_saga: f64,
    pub wal_bytes_per_saga: f64,
    /// CPU time per saga over the measured window, machine-wide and by process.
    pub cpu: Option<super::cpu::PerSaga>,
    /// `pgbench -N -c W -j W` on a scratch database of the same server, W = workers.
    pub pgbench_tps: Option<f64>,
    pub sagas_per_pgbench_tps: Option<f64>,
    /// The ceiling: pgbench replaying the statements sagad sends per booking saga
    /// (`crates/sagad-bench/ceiling/saga.sql`) on this setting's database at clients = workers,
    /// with no sagad, HTTP, Stripe double or listener sharing the CPUs: sagas/s sagad cannot beat.
    pub ceiling_sagas_per_s: Option<f64>,
    /// VmRSS of the `sagad serve` child once ready, before any load.
    pub idle_rss_mib: Option<f64>,
    /// VmHWM of the child after the load.
    pub peak_rss_mib: Option<f64>,
    /// Only with `--statements`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statements: Option<Vec<StatementCount>>,
    /// The measured saga that took longest as the database saw it, event by event: where a
    /// latency tail comes from.
    pub slowest: Option<Slowest>,
    /// The start RPC's p99 as sagad's own request histogram saw it (router → handler returned),
    /// read as the upper bound of the bucket that holds it (buckets 1, 2, 3, 5, 7.5, 10, 15, 20,
    /// 30, 50 … ms).
    pub start_rpc_in_sagad_p99_ms: Option<f64>,
    /// Of which waiting for a pooled connection: p99 bucket of `sagad_db_acquire_seconds`.
    pub start_pool_wait_p99_ms: Option<f64>,
}

/// From a Prometheus text exposition: the cumulative buckets (upper bound, count) of `metric`'s
/// series whose labels include each of `labels` (one series), lowest bound first.
pub fn histogram_buckets(text: &str, metric: &str, labels: &[&str]) -> Vec<(f64, u64)> {
    let prefix = format!("{metric}_bucket{{");
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|line| {
            let (set, value) = line.strip_prefix(&prefix)?.rsplit_once("} ")?;
            if !labels.iter().all(|l| set.contains(l)) {
                return None;
            }
            let le = set
                .split(',')
                .find_map(|kv| kv.strip_prefix("le=\""))?
                .strip_suffix('"')?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The upper bound of the bucket that holds the `q` quantile of the observations made between
/// two readings of the same cumulative buckets (`before` may be empty), and how many there were.
pub fn quantile_bound(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<(f64, u64)> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, n.saturating_sub(was))
        })
        .collect();
    let total = delta.last()?.1;
    let wanted = ((q * total as f64).ceil() as u64).max(1);
    delta
        .iter()
        .find(|(_, n)| *n >= wanted)
        .map(|(le, _)| (*le, total))
}

impl Setting {
    /// "8 workers", or "8 workers @132/s" for the open-loop run.
    fn label(&self) -> String {
        match self.load {
            Load::ClosedLoop { .. } => format!("{} workers", self.workers),
            Load::OpenLoop { rate_per_s } => format!("{} workers @{rate_per_s:.0}/s", self.workers),
        }
    }
}

/// One saga's timeline: each event and when it was recorded, after the saga was created.
#[derive(Debug, Clone, Serialize)]
pub struct Slowest {
    pub saga_id: uuid::Uuid,
    pub ms: f64,
    pub events: Vec<(String, f64)>,
}

impl Slowest {
    fn write(&self, out: &mut String, label: &str) {
        let timeline: Vec<String> = self
            .events
            .iter()
            .map(|(t, ms)| format!("{t} +{ms:.1}"))
            .collect();
        let _ = writeln!(
            out,
            "slowest saga ({label}): {:.1} ms, {}: {}",
            self.ms,
            self.saga_id,
            timeline.join(", ")
        );
    }
}

/// A figure the issue asks for whose feature is not in this build yet.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Section<T> {
    NotAvailable { reason: String },
    Measured(T),
}

/// Outgoing webhook deliveries to a fast local receiver (one endpoint subscribed to `*`).
#[derive(Debug, Clone, Serialize)]
pub struct WebhookDeliveries {
    /// Backlog deliveries per second: events appended in one transaction ÷ (its COMMIT returned →
    /// the receiver had seen every one of them).
    pub deliveries_per_s: f64,
    /// The figure above is over this many events.
    pub backlog: usize,
    pub backlog_elapsed_s: f64,
    /// Backlog COMMIT returned → the first of its deliveries arrived.
    pub backlog_first_ms: f64,
    /// Event appended and COMMIT returned → its first delivery attempt arrived at the receiver,
    /// one event per transaction at `latency_rate_per_s` (open loop).
    pub commit_to_first_attempt_ms: Option<Percentiles>,
    pub latency_rate_per_s: f64,
    pub latency_events: usize,
    /// Requests the receiver got, all phases; more than the events means redeliveries.
    pub receipts: usize,
    pub duplicates: usize,
    /// Requests whose Standard Webhooks signature did not verify with the endpoint's secret.
    pub bad_signatures: usize,
    /// Events never delivered within the deadline.
    pub missing: usize,
    /// `webhook_deliveries` by status at the end.
    pub outcomes: BTreeMap<String, i64>,
    /// Deliveries that needed more than one attempt.
    pub retried: i64,
    /// The sagad child's delivery settings (`SAGAD_WEBHOOK_WORKERS`,
    /// `SAGAD_WEBHOOK_ENDPOINT_CONCURRENCY`) and database pool.
    pub webhook_workers: usize,
    pub endpoint_concurrency: usize,
    pub db_pool_size: u32,
    /// WARN/ERROR lines the child logged during the measured runs (after start-up).
    pub log_warnings: usize,
    /// VmHWM of the child after the phase.
    pub peak_rss_mib: Option<f64>,
}

impl WebhookDeliveries {
    /// Anything that makes the figures untrustworthy.
    pub fn errors(&self) -> usize {
        self.missing + self.bad_signatures
    }
}

/// Verified Stripe webhook ingestion: correctly signed events POSTed to `/webhooks/stripe`.
#[derive(Debug, Clone, Serialize)]
pub struct StripeIngestion {
    /// Requests answered 2xx (signature verified, event stored and committed; redeliveries
    /// included) ÷ (first request sent → last answer read).
    pub events_per_s: f64,
    pub clients: usize,
    /// Requests sent: one per event, plus the redeliveries.
    pub requests: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// Request sent → 2xx answer read.
    pub request_ms: Option<Percentiles>,
    /// Events sent a second time (same id and body, a fresh signature) …
    pub redeliveries_sent: usize,
    /// … and how many of those sagad acknowledged as duplicates (`"duplicate": true`).
    pub redeliveries_deduplicated: usize,
    /// Distinct events in the inbox and the deliveries it counted.
    pub stored_events: i64,
    pub stored_deliveries: i64,
    /// Events of types sagad acts on ÷ (first request sent → no inbox row pending or
    /// processing); `None` if that did not happen within the deadline.
    pub processed_per_s: Option<f64>,
    /// Inbox rows by status at the end (`unmatched`: the PaymentIntent is nobody's here).
    pub outcomes: BTreeMap<String, i64>,
    /// Inbox rows that needed more than one processing attempt.
    pub retried: i64,
    /// `SAGAD_STRIPE_INBOX_WORKERS` of the child, and its database pool.
    pub inbox_workers: usize,
    pub db_pool_size: u32,
    /// WARN/ERROR lines the child logged during the measured runs (after start-up).
    pub log_warnings: usize,
    /// VmHWM of the child after the phase.
    pub peak_rss_mib: Option<f64>,
}

impl StripeIngestion {
    /// Anything that makes the figures untrustworthy.
    pub fn errors(&self) -> usize {
        let distinct = self.requests.saturating_sub(self.redeliveries_sent) as i64;
        self.rejected
            + self
                .redeliveries_sent
                .saturating_sub(self.redeliveries_deduplicated)
            + distinct.abs_diff(self.stored_events) as usize
    }
}

fn ms_or_dash(p: Option<Percentiles>) -> String {
    p.map_or("-".into(), |p| {
        format!("{:.1}/{:.1}/{:.1} ms", p.p50, p.p95, p.p99)
    })
}

fn mib_or_dash(m: Option<f64>) -> String {
    m.map_or("-".into(), |m| format!("{m:.0} MiB"))
}

impl WebhookDeliveries {
    fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "outgoing webhook deliveries/s: {:.1} ({} backlogged events in {:.2} s, first after {:.0} ms; \
             {} delivery workers, {} in flight per endpoint, pool {})",
            self.deliveries_per_s,
            self.backlog,
            self.backlog_elapsed_s,
            self.backlog_first_ms,
            self.webhook_workers,
            self.endpoint_concurrency,
            self.db_pool_size
        );
        let _ = writeln!(
            out,
            "  commit → first attempt p50/p95/p99: {} ({} events, one per transaction at {:.0}/s)",
            ms_or_dash(self.commit_to_first_attempt_ms),
            self.latency_events,
            self.latency_rate_per_s
        );
        let _ = writeln!(
            out,
            "  receipts {}, duplicates {}, bad signatures {}, missing {}, retried {}, deliveries {:?}, \
             log warnings {}, peak RSS {}",
            self.receipts,
            self.duplicates,
            self.bad_signatures,
            self.missing,
            self.retried,
            self.outcomes,
            self.log_warnings,
            mib_or_dash(self.peak_rss_mib)
        );
    }
}

impl StripeIngestion {
    fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "verified Stripe webhook ingestion/s: {:.1} ({} requests from {} clients in {:.2} s; \
             request p50/p95/p99 {}; pool {})",
            self.events_per_s,
            self.requests,
            self.clients,
            self.elapsed_s,
            ms_or_dash(self.request_ms),
            self.db_pool_size
        );
        let _ = writeln!(
            out,
            "  processed/s (until no inbox row is pending, {} inbox workers): {}",
            self.inbox_workers,
            self.processed_per_s
                .map_or("- (not within the deadline)".into(), |p| format!("{p:.1}"))
        );
        let _ = writeln!(
            out,
            "  accepted {}, rejected {}{}, redeliveries {} of which deduplicated {}, stored events {} \
             (deliveries {}), inbox {:?}, retried {}, log warnings {}, peak RSS {}",
            self.accepted,
            self.rejected,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            self.redeliveries_sent,
            self.redeliveries_deduplicated,
            self.stored_events,
            self.stored_deliveries,
            self.outcomes,
            self.retried,
            self.log_warnings,
            mib_or_dash(self.peak_rss_mib)
        );
    }
}

/// Bookings reads over a bulk-loaded table (`--read-bookings`).
#[derive(Debug, Clone, Serialize)]
pub struct BookingReads {
    /// Bookings in the table (their sagas and inventory claims alike).
    pub bookings: i64,
    pub listings: i64,
    pub guests: i64,
    /// Seconds the bulk load took, `VACUUM ANALYZE` included.
    pub load_s: f64,
    /// `pg_total_relation_size('bookings')`: the table with its indexes.
    pub bookings_table_mib: f64,
    pub queries: Vec<ReadQuery>,
}

/// One kind of read, one request at a time from one client.
#[derive(Debug, Clone, Serialize)]
pub struct ReadQuery {
    pub request: String,
    /// Request sent → JSON body read, for answers that were 2xx and not empty.
    pub latency_ms: Option<Percentiles>,
    /// Requests refused, failed or answered with nothing.
    pub errors: usize,
    pub first_error: Option<String>,
    /// The plan reads its table through an index, never a sequential scan.
    pub uses_index: bool,
    /// `EXPLAIN` of the query the route runs, for one of the requested values.
    pub plan: String,
}

impl BookingReads {
    /// Anything that makes the figures untrustworthy, or a query without its index.
    pub fn errors(&self) -> usize {
        self.queries
            .iter()
            .map(|q| q.errors + usize::from(!q.uses_index))
            .sum()
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "bookings reads over {} bookings ({} listings, {} guests; bookings table and indexes {:.0} MiB; bulk load {:.0} s), one client, one request at a time:",
            self.bookings, self.listings, self.guests, self.bookings_table_mib, self.load_s
        );
        for q in &self.queries {
            let latency = q.latency_ms.map_or("-".into(), |p| {
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {}",
                    p.p50, p.p99, p.max, p.count
                )
            });
            let _ = writeln!(
                out,
                "  {:<46} {latency}; {} errors{}; index: {}",
                q.request,
                q.errors,
                q.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                if q.uses_index { "yes" } else { "NO" }
            );
            for line in q.plan.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
}

/// The operator console's pages over a bulk-loaded database (`--console`).
#[derive(Debug, Clone, Serialize)]
pub struct ConsolePages {
    pub sagas: i64,
    pub events: i64,
    pub webhook_deliveries: i64,
    pub stripe_events: i64,
    /// Events of the saga whose page is timed as the long history.
    pub long_history_events: i64,
    /// `pg_database_size` after the load.
    pub database_mib: f64,
    /// Seconds the bulk load took, `VACUUM ANALYZE` included.
    pub load_s: f64,
    /// One round of the pages and plans, or two with `--console-without-indexes` (without those
    /// indexes first, then as migrated).
    pub rounds: Vec<ConsoleRound>,
}

/// Every page timed and every statement's plan, on the database as it stood.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleRound {
    /// `as migrated`, or which indexes were dropped.
    pub label: String,
    /// `/proc/loadavg` (1, 5, 15 minutes) as the timed requests began and ended.
    pub load_average_before: Option<String>,
    pub load_average_after: Option<String>,
    pub pages: Vec<ConsolePage>,
    pub plans: Vec<ConsolePlan>,
}

/// One console page, requested one at a time by one signed-in client.
#[derive(Debug, Clone, Serialize)]
pub struct ConsolePage {
    pub page: String,
    /// The first of the paths requested (they cycle over a sample of values).
    pub example: String,
    /// Request sent → HTML body read, for answers that were 200 and showed what they should.
    pub latency_ms: Option<Percentiles>,
    pub mean_kib: f64,
    pub errors: usize,
    pub first_error: Option<String>,
}

/// The plan of one statement a console page runs.
#[derive(Debug, Clone, Serialize)]
pub struct ConsolePlan {
    pub page: String,
    pub statement: String,
    /// No sequential scan of a table that grows with the sagas.
    pub uses_index: bool,
    pub seq_scans: Vec<String>,
    pub plan: String,
}

/// The console's goal: every page's p99 under this.
pub const CONSOLE_P99_GOAL_MS: f64 = 100.0;

impl ConsolePages {
    /// Anything that makes the figures untrustworthy, or a statement that reads a large table
    /// without an index.
    /// (A plan without its index counts only as migrated: the round without indexes is there
    /// to show what they change.)
    pub fn errors(&self) -> usize {
        let pages: usize = self
            .rounds
            .iter()
            .flat_map(|r| &r.pages)
            .map(|p| p.errors)
            .sum();
        pages
            + self
                .rounds
                .last()
                .map_or(0, |r| r.plans.iter().filter(|p| !p.uses_index).count())
    }

    /// The slowest page's p99, as migrated.
    pub fn worst_p99(&self) -> Option<f64> {
        self.rounds
            .last()?
            .pages
            .iter()
            .filter_map(|p| p.latency_ms.map(|l| l.p99))
            .max_by(f64::total_cmp)
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "console pages over {} sagas ({} events, {} webhook deliveries, {} Stripe events; the long history {} events; database {:.0} MiB; bulk load {:.0} s), one signed-in client, one request at a time:",
            self.sagas,
            self.events,
            self.webhook_deliveries,
            self.stripe_events,
            self.long_history_events,
            self.database_mib,
            self.load_s,
        );
        for r in &self.rounds {
            r.write(out);
        }
    }
}

impl ConsoleRound {
    fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            " {}; load average {} → {}:",
            self.label,
            self.load_average_before.as_deref().unwrap_or("-"),
            self.load_average_after.as_deref().unwrap_or("-"),
        );
        for p in &self.pages {
            let latency = p.latency_ms.map_or("-".into(), |l| {
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {}",
                    l.p50, l.p99, l.max, l.count
                )
            });
            let _ = writeln!(
                out,
                "  {:<36} {latency}; {:.0} KiB; {} errors{}",
                p.page,
                p.mean_kib,
                p.errors,
                p.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
            );
        }
        let _ = writeln!(out, "  plans (generic, as sagad runs them):");
        for p in &self.plans {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                p.page,
                p.statement,
                if p.uses_index {
                    "indexes only".to_owned()
                } else {
                    format!("SEQUENTIAL SCAN of {}", p.seq_scans.join(", "))
                }
            );
            for line in p.plan.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
}

/// Outage recovery: booking sagas started while Stripe answered 500 to every call.
#[derive(Debug, Clone, Serialize)]
pub struct OutageRecovery {
    pub sagas: usize,
    pub workers: usize,
    /// Stripe answered 500 to every call for this long, from before the first start request.
    pub outage_s: f64,
    /// How long starting every saga took (within the outage).
    pub started_in_s: f64,
    pub start_errors: usize,
    pub first_error: Option<String>,
    /// Requests the Stripe double received during the outage: the calls that opened the breaker
    /// (and those already in flight), then its probes.
    pub stripe_calls_during_outage: usize,
    /// Sagas that paused on the breaker (recorded `SagaPaused`), and those paused as Stripe
    /// recovered.
    pub sagas_paused: i64,
    pub paused_at_recovery: i64,
    /// The Stripe breaker's operator events: openings, failed probes.
    pub breaker_opened: i64,
    pub failed_probes: i64,
    /// Recovery → the breaker closed (the next probe got an answer): `None` without the event.
    pub recovery_to_closed_s: Option<f64>,
    /// Recovery → the bench saw every saga finished (polling every 50 ms); `None` when not
    /// within the deadline.
    pub recovery_to_all_finished_s: Option<f64>,
    /// Recovery → the last saga's `finished_at`.
    pub recovery_to_last_finished_at_s: Option<f64>,
    /// Requests the Stripe double received from recovery until every saga finished.
    pub stripe_calls_after_recovery: usize,
    /// Sagas by status at the end.
    pub outcomes: BTreeMap<String, i64>,
    pub db_pool_size: u32,
    /// WARN/ERROR lines the child logged during the run (each failed call logs one).
    pub log_warnings: usize,
    pub peak_rss_mib: Option<f64>,
}

impl OutageRecovery {
    /// Anything that makes the figures untrustworthy: failed starts, sagas that did not complete.
    pub fn errors(&self) -> usize {
        let completed = self.outcomes.get("completed").copied().unwrap_or(0) as usize;
        self.start_errors + self.sagas.saturating_sub(completed)
    }

    fn write(&self, out: &mut String) {
        let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.1} s"));
        let _ = writeln!(
            out,
            "outage recovery: {} sagas, Stripe down {:.0} s: recovery → all finished {} \
             (last finished_at {}), → breaker closed {}; Stripe calls during the outage {}",
            self.sagas,
            self.outage_s,
            secs(self.recovery_to_all_finished_s),
            secs(self.recovery_to_last_finished_at_s),
            secs(self.recovery_to_closed_s),
            self.stripe_calls_during_outage,
        );
        let _ = writeln!(
            out,
            "  {} workers, pool {}; started in {:.1} s ({} start errors{}); paused {} (at recovery {}); \
             breaker opened {}, failed probes {}; Stripe calls after recovery {}; sagas {:?}; \
             log warnings {}, peak RSS {}",
            self.workers,
            self.db_pool_size,
            self.started_in_s,
            self.start_errors,
            self.first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default(),
            self.sagas_paused,
            self.paused_at_recovery,
            self.breaker_opened,
            self.failed_probes,
            self.stripe_calls_after_recovery,
            self.outcomes,
            self.log_warnings,
            mib_or_dash(self.peak_rss_mib)
        );
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: Option<f64>,
    pub goal: String,
    /// `None` when the figure could not be measured.
    pub pass: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    /// The sagad binary measured.
    pub sagad: String,
    pub machine: Machine,
    pub database: Database,
    pub settings: Vec<Setting>,
    /// The open-loop run at half the best closed-loop rate.
    pub half_load: Option<Setting>,
    pub webhook_deliveries: Section<WebhookDeliveries>,
    pub stripe_ingestion: Section<StripeIngestion>,
    pub bookings_reads: Section<BookingReads>,
    pub outage_recovery: Section<OutageRecovery>,
    pub console_pages: Section<ConsolePages>,
    pub scale_out: Section<crate::scale::ScaleOut>,
    pub targets: Vec<Target>,
}

impl Report {
    /// The best closed-loop setting by sagas/s.
    pub fn peak(&self) -> Option<&Setting> {
        self.settings
            .iter()
            .max_by(|a, b| a.sagas_per_s.total_cmp(&b.sagas_per_s))
    }

    pub fn evaluate_targets(&mut self) {
        let mut targets = Vec::new();
        for s in &self.settings {
            targets.push(Target {
                name: format!("sagas/s ÷ pgbench -N TPS, {} workers", s.workers),
                measured: s.sagas_per_pgbench_tps,
                goal: format!("≥ {TARGET_SAGAS_VS_PGBENCH:.2}"),
                pass: s
                    .sagas_per_pgbench_tps
                    .map(|r| r >= TARGET_SAGAS_VS_PGBENCH),
            });
        }
        let p99 = self
            .half_load
            .as_ref()
            .and_then(|h| h.start_rpc_ms)
            .map(|p| p.p99);
        targets.push(Target {
            name: "start-RPC p99 at half the peak rate (ms)".into(),
            measured: p99,
            goal: format!("< {TARGET_START_P99_MS}"),
            pass: p99.map(|p| p < TARGET_START_P99_MS),
        });
        let idle = self
            .settings
            .iter()
            .filter_map(|s| s.idle_rss_mib)
            .reduce(f64::max);
        targets.push(Target {
            name: "idle RSS of sagad serve (MiB)".into(),
            measured: idle,
            goal: format!("< {TARGET_IDLE_RSS_MIB}"),
            pass: idle.map(|m| m < TARGET_IDLE_RSS_MIB),
        });
        if let Section::Measured(c) = &self.console_pages {
            let worst = c.worst_p99();
            targets.push(Target {
                name: "slowest console page p99 (ms)".into(),
                measured: worst,
                goal: format!("< {CONSOLE_P99_GOAL_MS}"),
                pass: worst.map(|p| p < CONSOLE_P99_GOAL_MS),
            });
        }
        self.targets = targets;
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "sagad-bench — {}", self.date);
        let _ = writeln!(out, "command:  {}", self.command);
        let _ = writeln!(out, "sagad:    {}", self.sagad);
        let _ = writeln!(
            out,
            "machine:  {} CPUs ({}), {} GiB RAM, kernel {}, load average at start {}",
            m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.load_average_at_start
        );
        let durability = self
            .database
            .durability
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "database: {}, PostgreSQL {}, {durability}",
            self.database.kind, self.database.server_version
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>6} {:>8} {:>23} {:>16} {:>20} {:>9} {:>7} {:>13}",
            "workers",
            "clients",
            "sagas",
            "sagas/s",
            "end-to-end p50/95/99 ms",
            "start p50/99 ms",
            "commit/write/fsync",
            "pgbench",
            "ratio",
            "RSS idle/peak"
        );
        for s in self.settings.iter().chain(self.half_load.iter()) {
            let clients = match s.load {
                Load::ClosedLoop { clients } => clients.to_string(),
                Load::OpenLoop { rate_per_s } => format!("@{rate_per_s:.0}/s"),
            };
            let e2e = s.end_to_end_ms.map_or("-".into(), |p| {
                format!("{:.0}/{:.0}/{:.0}", p.p50, p.p95, p.p99)
            });
            let start = s
                .start_rpc_ms
                .map_or("-".into(), |p| format!("{:.1}/{:.1}", p.p50, p.p99));
            let ratio = s
                .sagas_per_pgbench_tps
                .map_or("-".into(), |r| format!("{r:.3}"));
            let pgbench = s.pgbench_tps.map_or("-".into(), |t| format!("{t:.0}"));
            let rss = format!(
                "{}/{}",
                s.idle_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                s.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}"))
            );
            let commits = format!(
                "{:.1}/{:.1}/{:.2}",
                s.commits_per_saga, s.write_transactions_per_saga, s.wal_syncs_per_saga
            );
            let _ = writeln!(
                out,
                "{:>7} {:>7} {:>6} {:>8.1} {:>23} {:>16} {:>20} {:>9} {:>7} {:>13}",
                s.workers,
                clients,
                s.sagas,
                s.sagas_per_s,
                e2e,
                start,
                commits,
                pgbench,
                ratio,
                rss
            );
        }
        let _ = writeln!(
            out,
            "(per saga: commit = pg_stat_database.xact_commit, write = transaction ids assigned, fsync = pg_stat_wal.wal_sync;\n pgbench = `pgbench -N` TPS at clients = workers; ratio = sagas/s ÷ pgbench; RSS in MiB of the `sagad serve` child)"
        );
        for s in self.settings.iter().chain(self.half_load.iter()) {
            let not_completed: i64 = s
                .outcomes
                .iter()
                .filter(|(k, _)| k.as_str() != "completed")
                .map(|(_, n)| n)
                .sum();
            if not_completed > 0 || s.errors > 0 {
                let _ = writeln!(
                    out,
                    "warning: {} workers: outcomes {:?}, {} client errors{}",
                    s.workers,
                    s.outcomes,
                    s.errors,
                    s.first_error
                        .as_deref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                );
            }
        }
        for s in &self.settings {
            if let Some(c) = s.ceiling_sagas_per_s.filter(|c| *c > 0.0) {
                let vs_pgbench = s
                    .pgbench_tps
                    .filter(|t| *t > 0.0)
                    .map(|t| format!(" = {:.3} × pgbench -N", c / t))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "ceiling ({} workers): the database alone replaying sagad's statements for the saga: {c:.1} sagas/s{vs_pgbench}; sagad reached {:.0} % of it",
                    s.workers,
                    s.sagas_per_s / c * 100.0
                );
            }
        }
        if let Some(db) = self
            .peak()
            .and_then(|p| p.end_to_end_db_ms.map(|d| (p.workers, d)))
        {
            let _ = writeln!(
                out,
                "end-to-end as the database saw it ({} workers): p50 {:.1} ms, p99 {:.1} ms",
                db.0, db.1.p50, db.1.p99
            );
        }
        for s in self.settings.iter().chain(self.half_load.iter()) {
            if let Some(slow) = &s.slowest {
                slow.write(&mut out, &s.label());
            }
        }
        for s in self.settings.iter().chain(self.half_load.iter()) {
            if let Some(c) = &s.cpu {
                let _ = writeln!(
                    out,
                    "CPU per saga ({}): {:.2} ms (sagad {:.2}, bench driver and peers {:.2}, PostgreSQL and the rest {:.2}; CPUs {:.0} % busy); WAL per saga {:.0} records, {:.1} KiB",
                    s.label(),
                    c.total_ms,
                    c.sagad_ms,
                    c.bench_ms,
                    c.rest_ms,
                    c.busy_share * 100.0,
                    s.wal_records_per_saga,
                    s.wal_bytes_per_saga / 1024.0,
                );
            }
        }
        for s in self.settings.iter().chain(self.half_load.iter()) {
            if let Some(p99) = s.start_rpc_in_sagad_p99_ms {
                let _ = writeln!(
                    out,
                    "start RPC as sagad timed it ({}): p99 ≤ {p99} ms, waiting for a connection p99 ≤ {} ms (client side: {})",
                    s.label(),
                    s.start_pool_wait_p99_ms
                        .map_or("-".into(), |w| w.to_string()),
                    s.start_rpc_ms
                        .map_or("-".into(), |p| format!("p99 {:.1} ms", p.p99)),
                );
            }
        }
        let _ = writeln!(out);
        match &self.webhook_deliveries {
            Section::NotAvailable { reason } => {
                let _ = writeln!(out, "outgoing webhook deliveries/s: {reason}");
            }
            Section::Measured(w) => w.write(&mut out),
        }
        match &self.stripe_ingestion {
            Section::NotAvailable { reason } => {
                let _ = writeln!(out, "verified Stripe webhook ingestion/s: {reason}");
            }
            Section::Measured(i) => i.write(&mut out),
        }
        match &self.bookings_reads {
            Section::NotAvailable { reason } => {
                let _ = writeln!(out, "bookings reads: {reason}");
            }
            Section::Measured(r) => r.write(&mut out),
        }
        match &self.outage_recovery {
            Section::NotAvailable { reason } => {
                let _ = writeln!(out, "outage recovery: {reason}");
            }
            Section::Measured(o) => o.write(&mut out),
        }
        match &self.console_pages {
            Section::NotAvailable { reason } => {
                let _ = writeln!(out, "console pages: {reason}");
            }
            Section::Measured(c) => c.write(&mut out),
        }
        match &self.scale_out {
            Section::NotAvailable { reason } => {
                let _ = writeln!(out, "scale-out: {reason}");
            }
            Section::Measured(s) => s.write(&mut out),
        }
        if let Some(statements) = self
            .settings
            .iter()
            .find_map(|s| s.statements.as_ref().map(|st| (s.workers, st)))
        {
            let total: f64 = statements.1.iter().map(|s| s.calls_per_saga).sum();
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "statements per completed saga ({} workers, pg_stat_statements): {total:.1}, executing {:.2} ms",
                statements.0,
                statements
                    .1
                    .iter()
                    .map(|s| s.calls_per_saga * s.exec_ms_per_call)
                    .sum::<f64>()
            );
            let _ = writeln!(out, "   calls  ms/call  statement");
            for s in statements.1.iter().filter(|s| s.calls_per_saga >= 0.05) {
                let query: String = s.query.split_whitespace().collect::<Vec<_>>().join(" ");
                let short: String = query.chars().take(90).collect();
                let _ = writeln!(
                    out,
                    "  {:>6.2}  {:>7.3}  {short}",
                    s.calls_per_saga, s.exec_ms_per_call
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "targets:");
        for t in &self.targets {
            let verdict = match t.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "n/a ",
            };
            let _ = writeln!(
                out,
                "  {verdict}  {:<48} {:>10} (goal {})",
                t.name,
                t.measured.map_or("-".into(), |v| format!("{v:.3}")),
                t.goal
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_quantile_is_read_as_its_buckets_upper_bound() {
        let reading = |fast: u64, slow: u64| {
            format!(
                r#"# TYPE sagad_http_request_duration_seconds histogram
sagad_http_request_duration_seconds_bucket{{method="POST",route="/v1/sagas",status="202",le="0.005"}} {fast}
sagad_http_request_duration_seconds_bucket{{method="POST",route="/v1/sagas",status="202",le="0.05"}} {}
sagad_http_request_duration_seconds_bucket{{method="POST",route="/v1/sagas",status="202",le="+Inf"}} {}
sagad_http_request_duration_seconds_bucket{{method="GET",route="/v1/sagas/{{id}}",status="200",le="0.005"}} 1
sagad_http_request_duration_seconds_bucket{{method="GET",route="/v1/sagas/{{id}}",status="200",le="+Inf"}} 1
"#,
                fast + slow,
                fast + slow
            )
        };
        let start = ["method=\"POST\"", "route=\"/v1/sagas\"", "status=\"202\""];
        let buckets =
            |text: &str| histogram_buckets(text, "sagad_http_request_duration_seconds", &start);
        // A slow warm-up (2 of 100) decides the p99 of the whole...
        let warm = buckets(&reading(0, 2));
        let after = buckets(&reading(98, 2));
        assert_eq!(quantile_bound(&[], &after, 0.99), Some((0.05, 100)));
        assert_eq!(quantile_bound(&[], &after, 0.98), Some((0.005, 100)));
        // ... and not that of the window after it.
        assert_eq!(quantile_bound(&warm, &after, 0.99), Some((0.005, 98)));
        let other = ["route=\"/nope\""];
        let none = histogram_buckets(
            &reading(1, 1),
            "sagad_http_request_duration_seconds",
            &other,
        );
        assert!(none.is_empty());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        let one = Percentiles::of(vec![7.0]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(Percentiles::of(Vec::new()).is_none());
    }
}
