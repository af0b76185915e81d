//! The sagas page: filter by status, saga, step and creation time; search by saga id (a
//! booking's id), confirmation code, listing, guest or PaymentIntent; newest first, keyset
//! pagination.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::Signed;
use super::{ConsoleError, Nav, Query, StepNames, badge, page, render, time};
use crate::domain::SagaId;
use crate::engine::model::SagaStatus;
use crate::http::AppState;
use crate::store::console::{self as store, SagaLine, SagaSearch, SearchTerm};

/// Sagas per page.
pub const PAGE: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new().route("/console/sagas", get(sagas_page))
}

/// The page's query: the form's fields, as typed.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    saga: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    before: String,
}

/// A time typed in the form: `2026-12-03`, `2026-12-03T04:30` (a browser's datetime-local,
/// read as UTC) or RFC 3339; `None` if it is none of these or PostgreSQL cannot hold it (years 1
/// to 9999 only).
pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    parse_any_time(raw.trim()).filter(crate::http::storable_time)
}

fn parse_any_time(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// The keyset cursor of the page after `line`.
fn cursor(line: &SagaLine) -> String {
    format!(
        "{},{}",
        line.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        line.id
    )
}

fn parse_cursor(raw: &str) -> Option<(DateTime<Utc>, SagaId)> {
    let (at, id) = raw.split_once(',')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    crate::http::storable_time(&at).then_some(())?;
    Some((at, id.parse().ok()?))
}

/// The search the params ask for, or what is wrong with them.
fn search(state: &AppState, p: &Params) -> Result<SagaSearch, Vec<String>> {
    let mut problems = Vec::new();
    let mut f = SagaSearch {
        limit: PAGE,
        term: SearchTerm::parse(&p.q),
        ..SagaSearch::default()
    };
    let names = state.registry.names();
    if !p.status.is_empty() {
        match SagaStatus::parse(&p.status) {
            Some(s) => f.status = Some(s),
            None => problems.push(format!("unknown status {:?}", p.status)),
        }
    }
    if !p.saga.is_empty() {
        if names.contains(&p.saga) {
            f.saga_name = Some(p.saga.clone());
        } else {
            problems.push(format!(
                "unknown saga {:?}; known: {}",
                p.saga,
                names.join(", ")
            ));
        }
    }
    if !p.step.is_empty() {
        let at: Vec<(String, i32)> = names
            .iter()
            .filter_map(|n| state.registry.latest(n))
            .filter_map(|d| {
                d.steps
                    .iter()
                    .position(|s| s.name == p.step)
                    .map(|i| (d.name.clone(), i as i32))
            })
            .collect();
        if at.is_empty() {
            problems.push(format!("no saga has a step {:?}", p.step));
        }
        f.at_steps = Some(at);
    }
    for (raw, slot, what) in [
        (&p.from, &mut f.created_from, "from"),
        (&p.to, &mut f.created_to, "to"),
    ] {
        if !raw.trim().is_empty() {
            match parse_time(raw) {
                Some(t) => *slot = Some(t),
                None => problems.push(format!(
                    "{what}: {raw:?} is not a time (use 2026-12-03 or 2026-12-03T04:30, UTC)"
                )),
            }
        }
    }
    if !p.before.is_empty() {
        match parse_cursor(&p.before) {
            Some(c) => f.before = Some(c),
            None => problems.push("the page cursor is malformed: start from the first page".into()),
        }
    }
    if problems.is_empty() {
        Ok(f)
    } else {
        Err(problems)
    }
}

async fn sagas_page(
    State(state): State<AppState>,
    signed: Signed,
    Query(p): Query<Params>,
) -> Result<Response, ConsoleError> {
    let (lines, problems) = match search(&state, &p) {
        Ok(f) => (store::search_sagas(&state.pool, &f).await?, Vec::new()),
        Err(problems) => (Vec::new(), problems),
    };
    // The name of each line's current step, from its own definition version.
    let mut names = StepNames::default();
    let mut steps = Vec::with_capacity(lines.len());
    for l in &lines {
        steps.push(if l.status.is_terminal() {
            String::new()
        } else {
            names
                .name(&state, &l.saga_name, l.saga_version, l.current_step)
                .await
        });
    }
    let next = (lines.len() as i64 == PAGE).then(|| {
        let last = lines.last().map(cursor).unwrap_or_default();
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("q", p.q.as_str()),
                ("status", &p.status),
                ("saga", &p.saga),
                ("step", &p.step),
                ("from", &p.from),
                ("to", &p.to),
                ("before", &last),
            ])
            .finish();
        format!("/console/sagas?{qs}")
    });
    let all_steps: Vec<String> = {
        let mut v: Vec<String> = state
            .registry
            .names()
            .iter()
            .filter_map(|n| state.registry.latest(n))
            .flat_map(|d| d.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
            .collect();
        let mut seen = std::collections::HashSet::new();
        v.retain(|s| seen.insert(s.clone()));
        v
    };
    let body = html! {
        h1 { "Sagas" }
        (filter_form(&state, &p, &all_steps))
        @for pr in &problems { p.problem role="alert" { (pr) } }
        @if problems.is_empty() && lines.is_empty() { p.empty { "No saga matches." } }
        @if !lines.is_empty() {
            div.scroll {
                table.list #sagas {
                    thead { tr { th { "created" } th { "saga" } th { "status" } th { "step" } th { "booking" } th { "why" } } }
                    tbody {
                        @for (l, step) in lines.iter().zip(&steps) {
                            tr {
                                td { (time(Some(l.created_at))) }
                                td { a.id href={ "/console/sagas/" (l.id) } { (l.id) } br; span.muted { (l.saga_name) " v" (l.saga_version) } }
                                td { (badge(l.status.as_str())) }
                                td { (step) @if l.attempt > 0 && !l.status.is_terminal() { span.muted { " attempt " (l.attempt) } } }
                                td {
                                    @if let Some(c) = &l.confirmation_code { span.code { (c) } br; }
                                    @if let Some(li) = &l.listing_id { "listing " (li) }
                                    @if let Some(g) = &l.guest_id { " · guest " (g) }
                                    @if let Some(b) = &l.booking_status { " · " (b) }
                                }
                                td.why {
                                    @if let Some(r) = &l.failure_reason { (l.failure_step.as_deref().unwrap_or("")) ": " (r) }
                                    @else if let Some(w) = &l.wait_reason { (w) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(n) = next { p.pager { a href=(n) rel="next" { "Older sagas →" } } }
    };
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((
        status,
        render(page("Sagas", Nav::Sagas, Some(&signed), body)),
    )
        .into_response())
}

fn filter_form(state: &AppState, p: &Params, steps: &[String]) -> Markup {
    let opt = |value: &str, current: &str, label: &str| {
        html! { option value=(value) selected[value == current] { (label) } }
    };
    html! {
        form.filters method="get" action="/console/sagas" {
            label { "Search" input type="search" name="q" value=(p.q)
                placeholder="saga or booking id, confirmation code, listing, guest, pi_…"; }
            label { "Status" select name="status" {
                (opt("", &p.status, "any"))
                @for s in SagaStatus::ALL { (opt(s.as_str(), &p.status, s.as_str())) }
            } }
            label { "Saga" select name="saga" {
                (opt("", &p.saga, "any"))
                @for n in state.registry.names() { (opt(&n, &p.saga, &n)) }
            } }
            label { "At step" select name="step" {
                (opt("", &p.step, "any"))
                @for s in steps { (opt(s, &p.step, s)) }
            } }
            label { "Created from (UTC)" input type="datetime-local" name="from" value=(p.from); }
            label { "to" input type="datetime-local" name="to" value=(p.to); }
            button type="submit" { "Find" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_from_the_forms_shapes() {
        let t = |s| parse_time(s).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2026-12-03").as_deref(),
            Some("2026-12-03T00:00:00+00:00")
        );
        assert_eq!(
            t("2026-12-03T04:30").as_deref(),
            Some("2026-12-03T04:30:00+00:00")
        );
        assert_eq!(
            t("2026-12-03T05:30:00+01:00").as_deref(),
            Some("2026-12-03T04:30:00+00:00")
        );
        assert_eq!(t("yesterday"), None);
        assert_eq!(t("2026-13-03"), None);
    }

    #[test]
    fn a_cursor_reads_back_as_written() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T04:30:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = SagaId::new();
        let raw = format!("{},{id}", at.to_rfc3339_opts(SecondsFormat::Micros, true));
        assert_eq!(parse_cursor(&raw), Some((at, id)));
        assert_eq!(parse_cursor("2026-12-03,nope"), None);
    }
}
