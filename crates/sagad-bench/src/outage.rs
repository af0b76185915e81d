//! Outage recovery: booking sagas started while Stripe answers 500 to every call. The Stripe
//! breaker opens after the calls that cross its thresholds and the sagas pause; when Stripe
//! recovers, a probe closes the breaker and the paused sagas are woken oldest first at a ramped
//! rate. Measured: the calls Stripe got during the outage (bounded by the breaker, not sagas ×
//! attempts) and the time from recovery until every saga finished.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stripe_double::{Fault, Operation, StripeDouble};
use tokio::task::JoinSet;

use super::child::{ChildConfig, Sagad};
use super::load::{self, Api};
use super::report::OutageRecovery;
use super::{Bench, EXTRA_CONNECTIONS, TOKEN, drop_database, progress, wait_for_no_backends};
use sagad::store;

/// Start requests in flight at once.
const STARTERS: usize = 32;
/// How long after recovery the bench waits for every saga to finish.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(900);

/// Sagas in a terminal state.
async fn finished(db: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM sagas WHERE status IN ('completed', 'compensated', 'stuck')",
    )
    .fetch_one(db)
    .await?)
}

impl Bench<'_> {
    /// `sagas` booking sagas started at the beginning of a Stripe outage of `outage`, on a sagad
    /// with `workers` workers and its default breaker settings.
    pub(crate) async fn outage_recovery(
        &self,
        double: &StripeDouble,
        sagas: usize,
        outage: Duration,
        workers: usize,
    ) -> anyhow::Result<OutageRecovery> {
        let name = format!("sagad_bench_{}_outage", self.run_id);
        let url = self.fresh_database(&name).await?;
        let pool_size = workers as u32 + EXTRA_CONNECTIONS;
        let sagad = Sagad::start(&ChildConfig {
            label: "outage",
            ..self.child_config(&url, workers, pool_size)
        })
        .await?;
        let api = Api::new(&sagad.base, TOKEN)?;
        let run = format!("{}-outage", self.run_id);
        let db = store::connect(&url, 2).await?;
        let log = sagad.log_mark();

        progress(format_args!(
            "outage recovery: Stripe answers 500 for {} s; {sagas} booking sagas started meanwhile ({workers} workers)",
            outage.as_secs_f64()
        ));
        let calls_before = double.request_count();
        double.inject(Fault::server_error(Operation::Any).times(u32::MAX));
        let outage_began = Instant::now();
        let mut starts = JoinSet::new();
        let mut start_errors = Vec::new();
        let mut collect = |r: Result<anyhow::Result<uuid::Uuid>, tokio::task::JoinError>| match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => start_errors.push(format!("{e:#}")),
            Err(e) => start_errors.push(e.to_string()),
        };
        for n in 0..sagas {
            while starts.len() >= STARTERS {
                if let Some(r) = starts.join_next().await {
                    collect(r);
                }
            }
            let api = api.clone();
            let body = load::booking(&run, n);
            starts.spawn(async move { api.start(&body).await });
        }
        while let Some(r) = starts.join_next().await {
            collect(r);
        }
        let started_in = outage_began.elapsed();
        tokio::time::sleep(outage.saturating_sub(outage_began.elapsed())).await;
        let paused_at_recovery: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sagas WHERE paused_since IS NOT NULL")
                .fetch_one(&db)
                .await?;
        let calls_at_recovery = double.request_count();
        double.clear_faults();
        let recovered = Instant::now();
        let recovered_at = Utc::now();
        progress(format_args!(
            "outage recovery: Stripe is back after {:.1} s ({} calls during the outage, {paused_at_recovery} sagas paused); waiting for every saga",
            recovered.duration_since(outage_began).as_secs_f64(),
            calls_at_recovery - calls_before
        ));
        let expected = (sagas - start_errors.len()) as i64;
        let all_finished = loop {
            if finished(&db).await? >= expected {
                break Some(recovered.elapsed());
            }
            if recovered.elapsed() > RECOVERY_DEADLINE {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let calls_after_recovery = double.request_count() - calls_at_recovery;

        let outcomes: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM sagas GROUP BY status ORDER BY status")
                .fetch_all(&db)
                .await?;
        let last_finished: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(finished_at) FROM sagas")
                .fetch_one(&db)
                .await?;
        // The breaker's operator events (a build without them reports none).
        let transitions: Vec<(String, i64)> = sqlx::query_as(
            "SELECT event_type, count(*) FROM events
             WHERE aggregate_type = 'dependency' AND payload->>'dependency' = 'stripe'
             GROUP BY event_type",
        )
        .fetch_all(&db)
        .await?;
        let closed_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(recorded_at) FROM events
             WHERE event_type = 'DependencyCircuitClosed' AND payload->>'dependency' = 'stripe'
               AND recorded_at >= $1",
        )
        .bind(recovered_at)
        .fetch_one(&db)
        .await?;
        let sagas_paused: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT aggregate_id) FROM events WHERE event_type = 'SagaPaused'",
        )
        .fetch_one(&db)
        .await?;
        db.close().await;
        let peak_rss_mib = sagad.memory().map(|m| m.hwm_mib);
        let log_warnings = log.warnings_since();
        sagad.stop().await?;
        wait_for_no_backends(&self.admin, &name).await?;
        drop_database(&self.admin, &name).await?;

        let count = |t: &str| {
            transitions
                .iter()
                .find(|(e, _)| e == t)
                .map_or(0, |(_, n)| *n)
        };
        let since_recovery =
            |at: DateTime<Utc>| (at - recovered_at).num_milliseconds() as f64 / 1000.0;
        Ok(OutageRecovery {
            sagas,
            workers,
            outage_s: outage.as_secs_f64(),
            started_in_s: started_in.as_secs_f64(),
            start_errors: start_errors.len(),
            first_error: start_errors.into_iter().next(),
            stripe_calls_during_outage: calls_at_recovery - calls_before,
            sagas_paused,
            paused_at_recovery,
            breaker_opened: count("DependencyCircuitOpened"),
            failed_probes: count("DependencyProbeFailed"),
            recovery_to_closed_s: closed_at.map(since_recovery),
            recovery_to_all_finished_s: all_finished.map(|d| d.as_secs_f64()),
            recovery_to_last_finished_at_s: last_finished.map(since_recovery),
            stripe_calls_after_recovery: calls_after_recovery,
            outcomes: outcomes.into_iter().collect::<BTreeMap<_, _>>(),
            db_pool_size: pool_size,
            log_warnings,
            peak_rss_mib,
        })
    }
}
