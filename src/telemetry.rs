//! Logs (tracing, text or JSON) and Prometheus metrics.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::engine::model::{SagaStatus, StepPhase};
use crate::store::sagas;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The default filter of a long-running command. async-stripe (`stripe`) warns on every non-2xx
/// answer, including the expected ones (a decline, an unknown PaymentIntent); sagad logs each
/// failed call once itself, classified (`stripe::client::failed`).
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,h2=warn,reqwest=warn,stripe=error";

/// Installs the global subscriber; `RUST_LOG` overrides `default_filter`. Safe to call twice.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for a terminal: a log file or a collector reading a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Buckets (seconds) of the histograms judged against millisecond targets.
const MILLISECOND_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the Prometheus recorder once per process and returns a handle that renders it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ])
                // Requests are judged against millisecond targets (the start RPC's p99 < 10 ms):
                // finer buckets around them.
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("sagad_http_request_duration_seconds".into()),
                        MILLISECOND_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("sagad_db_acquire_seconds".into()),
                        MILLISECOND_BUCKETS,
                    )
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); then ours only renders empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// One HTTP request answered: `sagad_http_request_duration_seconds` (its `_count` counts them) by
/// method, route (the matched path, so ids do not multiply the series) and status. The time is
/// sagad's own, from the request reaching the router to the response leaving the handler.
pub fn http_request(method: &str, route: String, status: u16, took: Duration) {
    histogram!("sagad_http_request_duration_seconds", "method" => method.to_owned(),
               "route" => route, "status" => status.to_string())
    .record(took.as_secs_f64());
}

/// How long a request waited for a pooled database connection: `sagad_db_acquire_seconds` by
/// site (the start RPC's share of its latency that is waiting, not working).
pub fn db_acquired(site: &'static str, waited: Duration) {
    histogram!("sagad_db_acquire_seconds", "site" => site).record(waited.as_secs_f64());
}

pub fn saga_started(saga: &str) {
    counter!("sagad_sagas_started_total", "saga" => saga.to_owned()).increment(1);
}

/// How a worker got a saga: `direct` (started here, a worker was free), `queued` (started here,
/// waited in the local queue) or `claimed` (from the database queue).
pub fn saga_dispatched(saga: &str, path: &'static str) {
    counter!("sagad_sagas_dispatched_total", "saga" => saga.to_owned(), "path" => path)
        .increment(1);
}

pub fn saga_finished(saga: &str, status: SagaStatus) {
    counter!("sagad_sagas_finished_total", "saga" => saga.to_owned(), "status" => status.as_str())
        .increment(1);
}

pub fn step_finished(
    saga: &str,
    step: &str,
    phase: StepPhase,
    outcome: &'static str,
    took: Duration,
) {
    counter!("sagad_step_attempts_total", "saga" => saga.to_owned(), "step" => step.to_owned(),
             "phase" => phase.as_str(), "outcome" => outcome)
    .increment(1);
    histogram!("sagad_step_duration_seconds", "saga" => saga.to_owned(), "step" => step.to_owned(), "phase" => phase.as_str())
        .record(took.as_secs_f64());
}

pub fn count_error(component: &'static str) {
    counter!("sagad_internal_errors_total", "component" => component).increment(1);
}

/// This process's pool gauges, read from memory at scrape time: connections open, idle, and
/// `kept` (between two hot statements, [`crate::store::kept`], which sqlx counts as in use).
pub fn refresh_pool_gauges(pool: &sqlx::PgPool, kept: &crate::store::kept::Kept) {
    gauge!("sagad_db_pool_connections").set(pool.size() as f64);
    gauge!("sagad_db_pool_idle_connections").set(pool.num_idle() as f64);
    gauge!("sagad_db_pool_kept_connections").set(kept.len() as f64);
}

/// The database's gauges, as a maintenance round read them ([`crate::maintenance::gauges`]):
/// sagas due and unclaimed, how long the oldest has been due, and sagas by name and status (every
/// status of a saga name that has rows, so a status that empties reads 0).
pub fn set_saga_gauges(depth: sagas::QueueDepth, counts: &[(String, SagaStatus, i64)]) {
    gauge!("sagad_queue_depth").set(depth.due as f64);
    gauge!("sagad_queue_oldest_due_seconds").set(depth.oldest_due.map_or(0.0, |d| d.as_secs_f64()));
    let names: std::collections::BTreeSet<&str> =
        counts.iter().map(|(name, _, _)| name.as_str()).collect();
    for name in names {
        for status in SagaStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, st, _)| s == name && st == status)
                .map_or(0, |(_, _, n)| *n);
            gauge!("sagad_sagas", "saga" => name.to_owned(), "status" => status.as_str())
                .set(n as f64);
        }
    }
}

/// A dependency's circuit breaker as this process last saw it: 0 closed, 1 half-open, 2 open.
pub fn dependency_state(
    dependency: crate::breaker::Dependency,
    state: crate::breaker::BreakerState,
) {
    gauge!("sagad_dependency_state", "dependency" => dependency.as_str()).set(state.gauge());
}

/// A breaker transition this process made (`opened`, `half_opened`, `reopened`, `closed`).
pub fn dependency_transition(dependency: crate::breaker::Dependency, transition: &'static str) {
    counter!("sagad_dependency_transitions_total", "dependency" => dependency.as_str(), "transition" => transition)
        .increment(1);
}

/// Sagas paused on a dependency, over every process (read every second by each worker process).
pub fn dependency_paused(dependency: crate::breaker::Dependency, n: i64) {
    gauge!("sagad_dependency_paused_sagas", "dependency" => dependency.as_str()).set(n as f64);
}

/// Whether this process is the one relaying events to NATS: `sagad_relay_active` 1 or 0.
pub fn relay_active(active: bool) {
    gauge!("sagad_relay_active").set(if active { 1.0 } else { 0.0 });
}

/// The relay's acknowledged feed position: `sagad_relay_position_tx` and `…_seq`.
pub fn relay_position(position: crate::store::feed::Position) {
    gauge!("sagad_relay_position_tx").set(position.tx as f64);
    gauge!("sagad_relay_position_seq").set(position.seq as f64);
}

/// How far the relay is behind the feed: `sagad_relay_lag_events` (events not yet acknowledged
/// by JetStream) and `sagad_relay_lag_seconds` (the age of the oldest of them).
pub fn relay_lag(events: i64, seconds: f64) {
    gauge!("sagad_relay_lag_events").set(events as f64);
    gauge!("sagad_relay_lag_seconds").set(seconds);
}

/// One event acknowledged by JetStream: `sagad_relay_published_total` (by `duplicate`: whether
/// JetStream had it already), and `sagad_relay_publish_lag_seconds`, from the event's recording
/// to its acknowledgement.
pub fn relay_published(duplicate: bool, since_recorded: Duration) {
    counter!("sagad_relay_published_total", "duplicate" => if duplicate { "true" } else { "false" })
        .increment(1);
    histogram!("sagad_relay_publish_lag_seconds").record(since_recorded.as_secs_f64());
}

/// A relay round that failed to publish: `sagad_relay_publish_errors_total`.
pub fn relay_publish_error() {
    counter!("sagad_relay_publish_errors_total").increment(1);
}
