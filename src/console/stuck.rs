//! Sagas that need an operator: stuck ones (retry, resolve or cancel each on its page, or retry
//! them in bulk here), those paused on a dependency's open breaker, and those waiting on an
//! outside event.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use maud::{Markup, html};

use super::session::{Authorized, Signed};
use super::{Nav, PageResult, StepNames, badge, page, render, time};
use crate::http::operator::{BulkRetry, bulk_retry};
use crate::http::{ApiError, AppState};
use crate::store::console as store;
use crate::store::sagas::SagaRow;

/// Most sagas each list shows.
const SHOWN: i64 = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/stuck", get(stuck_page))
        .route("/console/stuck/retry", post(retry_all))
}

async fn stuck_page(State(state): State<AppState>, signed: Signed) -> PageResult {
    let stuck = crate::store::operator::stuck(&state.pool, None, None, SHOWN).await?;
    let paused = store::paused_sagas(&state.pool, SHOWN).await?;
    let waiting = store::waiting_sagas(&state.pool, SHOWN).await?;
    let mut names = StepNames::default();
    let stuck_rows = rows(&state, &mut names, &stuck, |r| {
        html! {
            (r.failure_step.as_deref().unwrap_or("")) ": " (r.failure_reason.as_deref().unwrap_or("")) br;
            span.muted { "stuck since " (time(r.finished_at)) }
        }
    })
    .await;
    let paused_rows = rows(&state, &mut names, &paused, |r| {
        html! { (r.wait_reason.as_deref().unwrap_or("")) " since " (time(r.paused_since)) }
    })
    .await;
    let waiting_rows = rows(&state, &mut names, &waiting, |r| {
        html! { (r.wait_key.as_deref().unwrap_or("")) " until " (time(r.wait_deadline)) }
    })
    .await;
    let body = html! {
        h1 { "Stuck and paused" }
        section #stuck {
            h2 { "Stuck (" (stuck.len()) @if stuck.len() as i64 == SHOWN { "+" } ")" }
            p.hint { "A compensation that ran out of attempts, parked for an operator. Open one to retry, resolve or cancel it." }
            (stuck_rows)
            (bulk_form(&state, &signed))
        }
        section #paused {
            h2 { "Paused on a dependency (" (paused.len()) ")" }
            p.hint { "Woken when the dependency's breaker closes, or at the step's give-up deadline." }
            (paused_rows)
        }
        section #waiting {
            h2 { "Waiting on an outside event (" (waiting.len()) ")" }
            (waiting_rows)
        }
    };
    Ok(render(page(
        "Stuck and paused",
        Nav::Stuck,
        Some(&signed),
        body,
    )))
}

async fn rows(
    state: &AppState,
    names: &mut StepNames,
    sagas: &[SagaRow],
    why: impl Fn(&SagaRow) -> Markup,
) -> Markup {
    if sagas.is_empty() {
        return html! { p.empty { "None." } };
    }
    let mut lines = Vec::with_capacity(sagas.len());
    for r in sagas {
        let step = names
            .name(state, &r.saga_name, r.saga_version, r.current_step)
            .await;
        lines.push((r, step));
    }
    html! {
        div.scroll { table.list {
            thead { tr { th { "saga" } th { "status" } th { "step" } th { "why" } } }
            tbody { @for (r, step) in &lines {
                tr {
                    td { a.id href={ "/console/sagas/" (r.id) } { (r.id) } br; span.muted { (r.saga_name) " v" (r.saga_version) } }
                    td { (badge(r.status.as_str())) }
                    td { (step) }
                    td.why { (why(r)) }
                }
            } }
        } }
    }
}

fn bulk_form(state: &AppState, signed: &Signed) -> Markup {
    let mut steps: Vec<String> = Vec::new();
    for n in state.registry.names() {
        if let Some(d) = state.registry.latest(&n) {
            for s in &d.steps {
                if !steps.contains(&s.name) {
                    steps.push(s.name.clone());
                }
            }
        }
    }
    html! {
        form.action.bulk method="post" action="/console/stuck/retry" {
            (signed.csrf_field())
            h3 { "Retry in bulk" }
            p.hint { "Every stuck saga at a step, or stuck since a time (both: each holds), oldest first, 500 at most per go." }
            label { "At step" select name="step" #bulk-step {
                option value="" { "any" }
                @for s in &steps { option value=(s) { (s) } }
            } }
            label { "Stuck since (UTC)" input type="datetime-local" name="since"; }
            label { "Reason" input type="text" name="reason" #bulk-reason required maxlength="1024"; }
            button type="submit" name="retry-all" { "Retry them" }
        }
    }
}

async fn retry_all(
    State(state): State<AppState>,
    Authorized { signed, form }: Authorized,
) -> PageResult {
    let since = match form.text("since") {
        None => None,
        Some(raw) => Some(super::sagas::parse_time(raw).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "since: {raw:?} is not a time (use 2026-12-03T04:30, UTC)"
            ))
        })?),
    };
    let req = BulkRetry {
        step: form.text("step").map(str::to_owned),
        since,
        reason: form.get("reason").unwrap_or("").to_owned(),
    };
    let done = bulk_retry(&state, &signed.actor, &req).await?;
    let body = html! {
        h1 { "Retried in bulk" }
        div.notice role="status" {
            p { "Recorded " strong { "SagaRetried" } " on " (done.retried.len()) " saga(s) as " (signed.actor) ", reason: " (req.reason.trim()) }
            @if !done.skipped.is_empty() { p { (done.skipped.len()) " moved on before they could be retried." } }
            @if done.more { p { "More stuck sagas match: retry again for the rest." } }
        }
        ul #retried { @for id in &done.retried { li { a.id href={ "/console/sagas/" (id) } { (id) } } } }
        p { a href="/console/stuck" { "Back to stuck and paused" } }
    };
    Ok(render(page("Retried", Nav::Stuck, Some(&signed), body)))
}
