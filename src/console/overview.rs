//! The overview: sagas by status, starts and completions per minute over the last hour, paused
//! sagas by dependency, circuit breakers, the work queue, failing webhook endpoints and the
//! Stripe inbox's backlog. The page polls `/console/live` for a fresh copy of its body.
//!
//! The aggregates are read at most every [`FRESH`] per process, whoever asks and however often:
//! a request past that answers with the last reading and reads again in the background.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use sqlx::PgPool;

use super::session::Signed;
use super::{Nav, PageResult, badge, chart, page, render, span_text, time};
use crate::breaker::model::Breaker;
use crate::engine::model::SagaStatus;
use crate::http::{ApiError, AppState};
use crate::store::console::{self as store, FailingEndpoint, InboxBacklog, PerMinute};
use crate::store::sagas::{self, QueueDepth};

/// How long one reading of the aggregates serves.
pub const FRESH: Duration = Duration::from_secs(3);

/// The last reading of the aggregates.
#[derive(Default)]
pub struct Overview {
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    refreshing: AtomicBool,
}

/// The aggregates, as read at `read_at`.
pub struct Snapshot {
    pub read_at: DateTime<Utc>,
    /// (saga name, status, count), every pair with any saga.
    pub counts: Vec<(String, SagaStatus, i64)>,
    pub per_minute: PerMinute,
    pub paused: Vec<(String, i64)>,
    pub breakers: Vec<Breaker>,
    pub depth: QueueDepth,
    pub failing: Vec<FailingEndpoint>,
    pub inbox: InboxBacklog,
}

impl Snapshot {
    async fn read(pool: &PgPool, clock: &crate::clock::Clock) -> Result<Self, sqlx::Error> {
        let (counts, per_minute, paused, breakers, depth, failing, inbox) = tokio::try_join!(
            sagas::count_by_status(pool),
            store::per_minute(pool),
            crate::store::breakers::paused_counts(pool),
            crate::store::breakers::get_all(pool),
            sagas::queue_depth(pool),
            store::failing_endpoints(pool),
            store::inbox_backlog(pool),
        )?;
        Ok(Snapshot {
            read_at: clock.db_now(),
            counts,
            per_minute,
            paused,
            breakers,
            depth,
            failing,
            inbox,
        })
    }
}

/// The aggregates no older than [`FRESH`], or the last ones while a fresh reading is made.
async fn snapshot(state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
    let o = &state.console.overview;
    let last = o
        .last
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match last {
        Some((at, snap)) if at.elapsed() < FRESH => Ok(snap),
        Some((_, snap)) => {
            if !o.refreshing.swap(true, Ordering::AcqRel) {
                let console = state.console.clone();
                let pool = state.pool.clone();
                let clock = state.clock.clone();
                tokio::spawn(async move {
                    let o = &console.overview;
                    match Snapshot::read(&pool, &clock).await {
                        Ok(s) => {
                            store_reading(o, s);
                        }
                        Err(e) => tracing::warn!(error = %e, "console overview: reading failed"),
                    }
                    o.refreshing.store(false, Ordering::Release);
                });
            }
            Ok(snap)
        }
        None => {
            let s = Snapshot::read(&state.pool, &state.clock).await?;
            Ok(store_reading(o, s))
        }
    }
}

fn store_reading(o: &Overview, s: Snapshot) -> Arc<Snapshot> {
    let s = Arc::new(s);
    *o.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), s.clone()));
    s
}

pub async fn overview_page(State(state): State<AppState>, signed: Signed) -> PageResult {
    let snap = snapshot(&state).await?;
    Ok(render(page(
        "Overview",
        Nav::Overview,
        Some(&signed),
        html! {
            h1 { "Overview" }
            div #live data-refresh="/console/live" data-every="5000" { (live_body(&snap)) }
        },
    )))
}

/// The overview's body alone, for the page's poll.
pub async fn live(State(state): State<AppState>, _signed: Signed) -> PageResult {
    let snap = snapshot(&state).await?;
    Ok(render(live_body(&snap)))
}

fn live_body(s: &Snapshot) -> Markup {
    let total = |st: SagaStatus| -> i64 {
        s.counts
            .iter()
            .filter(|(_, x, _)| *x == st)
            .map(|(_, _, n)| n)
            .sum()
    };
    let names: std::collections::BTreeSet<&str> =
        s.counts.iter().map(|(n, _, _)| n.as_str()).collect();
    let started: i64 = s.per_minute.started.iter().sum();
    let completed: i64 = s.per_minute.completed.iter().sum();
    html! {
        p.asof { "As of " (time(Some(s.read_at))) " UTC" }
        div.cards {
            section.card.wide {
                h2 { "Sagas by status" }
                div.scroll { table.counts {
                    thead { tr { th { "saga" } @for st in SagaStatus::ALL { th { (badge(st.as_str())) } } } }
                    tbody {
                        @for name in &names {
                            tr {
                                td { (name) }
                                @for st in SagaStatus::ALL {
                                    @let n = s.counts.iter().find(|(a, b, _)| a == name && b == st).map_or(0, |c| c.2);
                                    td.num { a href={ "/console/sagas?saga=" (name) "&status=" (st.as_str()) } { (n) } }
                                }
                            }
                        }
                        tr.total { td { "all" } @for st in SagaStatus::ALL { td.num { a href={ "/console/sagas?status=" (st.as_str()) } { (total(*st)) } } } }
                    }
                } }
            }
            section.card.wide {
                h2 { "Started and completed per minute, last hour" }
                p.legend { span.key-started { "■ started " (started) } " " span.key-done { "— completed " (completed) } }
                (chart::per_minute(&s.per_minute.started, &s.per_minute.completed))
            }
            section.card {
                h2 { "Work queue" }
                dl {
                    dt { "Due, unclaimed" } dd #queue-due { (s.depth.due) }
                    dt { "Oldest due for" } dd { (s.depth.oldest_due.map_or("—".into(), |d| span_text(d.as_millis() as i64))) }
                }
            }
            section.card {
                h2 { "Circuit breakers" }
                @if s.breakers.is_empty() { p { "No dependency has had a call yet: all closed." } }
                table {
                    @for b in &s.breakers {
                        tr { td { (b.dependency.as_str()) } td { (badge(b.state.as_str())) } td { "since " (time(Some(b.changed_at))) } }
                    }
                }
                h3 { "Paused sagas" }
                @if s.paused.is_empty() { p { "None." } }
                ul {
                    @for (dep, n) in &s.paused {
                        li { (dep) ": " (n) }
                    }
                }
            }
            section.card {
                h2 { "Failing webhook endpoints" }
                @if s.failing.is_empty() { p { "None: every endpoint delivers." } }
                ul {
                    @for e in &s.failing {
                        li {
                            span.url { (e.url) } " "
                            @if !e.enabled { (badge("disabled")) " " (e.disabled_reason.as_deref().unwrap_or("")) }
                            @if let Some(f) = e.failing_since { " failing since " (time(Some(f))) }
                            " · " (e.dead) " dead"
                        }
                    }
                }
            }
            section.card {
                h2 { "Stripe inbox" }
                dl {
                    dt { "Pending" } dd { (s.inbox.pending) }
                    dt { "Processing" } dd { (s.inbox.processing) }
                    dt { "Dead" } dd { (s.inbox.dead) }
                    dt { "Oldest pending due" } dd { (time(s.inbox.oldest_pending)) }
                }
            }
        }
    }
}
