//! Outgoing webhook endpoints, the integrators' subscriptions: each one's state, deliveries (with
//! every attempt: status, latency, the response body's start), dead letters, and the operator's
//! actions: redeliver one, redrive the dead letters since a time, enable or disable, rotate the
//! signing secret.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{Authorized, Signed};
use super::{ConsoleError, Nav, PageResult, Query, badge, page, render, time};
use crate::domain::EndpointId;
use crate::http::{ApiError, AppState};
use crate::store::console as console_store;
use crate::store::outbound::{self as store, DeliveryStatus, EndpointPatch, EndpointRow};

/// Deliveries per page.
const PAGE: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/webhooks", get(endpoints_page))
        .route("/console/webhooks/{id}", get(endpoint_page))
        .route("/console/webhooks/{id}/enabled", post(set_enabled))
        .route("/console/webhooks/{id}/rotate-secret", post(rotate))
        .route("/console/webhooks/{id}/redrive", post(redrive))
}

fn endpoint_id(raw: &str) -> Result<EndpointId, ConsoleError> {
    raw.parse().map_err(|_| {
        ApiError::BadRequest(format!("{raw:?} is not a webhook endpoint id (a UUID)")).into()
    })
}

async fn endpoints_page(State(state): State<AppState>, signed: Signed) -> PageResult {
    let endpoints = store::list_endpoints(&state.pool).await?;
    let body = html! {
        h1 { "Webhook endpoints" }
        @if endpoints.is_empty() { p.empty { "No endpoint is subscribed." } }
        div.scroll { table.list #endpoints {
            thead { tr { th { "endpoint" } th { "state" } th { "events" } th { "failing since" } } }
            tbody { @for e in &endpoints {
                tr {
                    td { a.url href={ "/console/webhooks/" (e.id) } { (e.url) } br; span.muted { (e.description) } }
                    td { (state_badge(e)) }
                    td { (e.event_types.join(", ")) }
                    td { (time(e.failing_since)) }
                }
            } }
        } }
    };
    Ok(render(page(
        "Webhook endpoints",
        Nav::Webhooks,
        Some(&signed),
        body,
    )))
}

fn state_badge(e: &EndpointRow) -> Markup {
    html! {
        @if !e.enabled { (badge("disabled")) " " span.muted { (e.disabled_reason.as_deref().unwrap_or("")) } }
        @else if e.failing_since.is_some() { (badge("failing")) }
        @else { (badge("enabled")) }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeliveryQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    before: String,
    /// What the action just made did.
    #[serde(default)]
    notice: String,
}

async fn endpoint_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(q): Query<DeliveryQuery>,
) -> PageResult {
    let id = endpoint_id(&id)?;
    let e = store::get_endpoint(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    let status = match q.status.as_str() {
        "" => None,
        s => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown status {s:?}; use pending, delivering, delivered or dead"
            ))
        })?),
    };
    let before = match q.before.as_str() {
        "" => None,
        b => Some(
            DateTime::parse_from_rfc3339(b)
                .map(|t| t.with_timezone(&Utc))
                .ok()
                .filter(crate::http::storable_time)
                .ok_or_else(|| ApiError::BadRequest("the page cursor is malformed".into()))?,
        ),
    };
    let deliveries = store::list_deliveries(&state.pool, id, status, before, PAGE).await?;
    let ids: Vec<_> = deliveries.iter().map(|d| d.id).collect();
    let mut attempts: HashMap<_, Vec<_>> = HashMap::new();
    for a in console_store::attempts_of_deliveries(&state.pool, &ids).await? {
        attempts.entry(a.delivery_id).or_default().push(a);
    }
    let back = format!("/console/webhooks/{id}");
    let next = (deliveries.len() as i64 == PAGE)
        .then(|| deliveries.last())
        .flatten()
        .map(|d| {
            format!(
                "{back}?status={}&before={}",
                q.status,
                d.created_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
                    .replace('+', "%2B")
            )
        });
    let body = html! {
        h1 { "Webhook endpoint" }
        @if !q.notice.is_empty() { p.notice role="status" { (q.notice) } }
        section.summary {
            dl {
                dt { "URL" } dd.url { (e.url) }
                dt { "Description" } dd { (e.description) }
                dt { "State" } dd #endpoint-state { (state_badge(&e)) }
                dt { "Events" } dd { (e.event_types.join(", ")) }
                dt { "Rate limit" } dd { (e.rate_limit.map_or("none".into(), |r| format!("{r}/s"))) }
                dt { "Failing since" } dd { (time(e.failing_since)) }
            }
            div.actions {
                form.action method="post" action={ (back) "/enabled" } {
                    (signed.csrf_field())
                    input type="hidden" name="enabled" value=(if e.enabled { "false" } else { "true" });
                    h3 { @if e.enabled { "Disable" } @else { "Enable" } }
                    p.hint { @if e.enabled { "Deliveries wait until it is enabled again." } @else { "Deliveries that waited are due at once." } }
                    button type="submit" name="toggle" { @if e.enabled { "Disable" } @else { "Enable" } }
                }
                form.action method="post" action={ (back) "/rotate-secret" } {
                    (signed.csrf_field())
                    h3 { "Rotate secret" }
                    p.hint { "A new signing secret, shown once; the previous one signs too until it expires." }
                    button type="submit" name="rotate" { "Rotate" }
                }
                form.action method="post" action={ (back) "/redrive" } {
                    (signed.csrf_field())
                    h3 { "Redrive dead letters" }
                    label { "Dead since (UTC)" input type="datetime-local" name="since" required; }
                    button type="submit" name="redrive" { "Redrive" }
                }
            }
        }
        section #deliveries {
            h2 { "Deliveries" }
            p.filters {
                @for (s, label) in [("", "all"), ("dead", "dead letters"), ("pending", "pending"), ("delivered", "delivered")] {
                    a class=[(q.status == s).then_some("active")] href={ (back) "?status=" (s) } { (label) } " "
                }
            }
            @if deliveries.is_empty() { p.empty { "None." } }
            @for d in &deliveries {
                (super::saga::delivery(&signed, &super::saga::Back::Endpoint(id), d, &e.url,
                    attempts.get(&d.id).map_or(&[][..], |v| v)))
            }
            @if let Some(n) = next { p.pager { a href=(n) rel="next" { "Older deliveries →" } } }
        }
    };
    Ok(render(page(
        "Webhook endpoint",
        Nav::Webhooks,
        Some(&signed),
        body,
    )))
}

fn with_notice(id: EndpointId, notice: &str) -> Redirect {
    let n: String = form_urlencoded::byte_serialize(notice.as_bytes()).collect();
    Redirect::to(&format!("/console/webhooks/{id}?notice={n}"))
}

async fn set_enabled(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, form }: Authorized,
) -> Result<Redirect, ConsoleError> {
    let id = endpoint_id(&id)?;
    let enabled = match form.get("enabled") {
        Some("true") => true,
        Some("false") => false,
        other => {
            return Err(ApiError::BadRequest(format!(
                "enabled must be true or false, not {other:?}"
            ))
            .into());
        }
    };
    let patch = EndpointPatch {
        enabled: Some(enabled),
        ..EndpointPatch::default()
    };
    store::update_endpoint(&state.pool, id, &patch)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    if enabled {
        store::notify(&state.pool).await?;
    }
    tracing::info!(endpoint_id = %id, enabled, actor = %signed.actor, "console endpoint update");
    Ok(with_notice(
        id,
        if enabled { "Enabled." } else { "Disabled." },
    ))
}

async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, .. }: Authorized,
) -> PageResult {
    let id = endpoint_id(&id)?;
    let r = crate::http::outbound::rotate(&state, id).await?;
    tracing::info!(endpoint_id = %id, actor = %signed.actor, "console secret rotation");
    let body = html! {
        h1 { "New signing secret" }
        div.notice role="status" {
            p { "Give this secret to the endpoint's owner now: it is not shown again." }
            p { span.code #new-secret { (r.secret) } }
            p { "The previous secret signs alongside it until " (time(Some(r.previous_secret_expires_at))) "." }
        }
        p { a href={ "/console/webhooks/" (id) } { "Back to the endpoint" } }
    };
    Ok(render(page(
        "New signing secret",
        Nav::Webhooks,
        Some(&signed),
        body,
    )))
}

async fn redrive(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, form }: Authorized,
) -> Result<Redirect, ConsoleError> {
    let id = endpoint_id(&id)?;
    let raw = form.text("since").unwrap_or("");
    let since = super::sagas::parse_time(raw).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "since: {raw:?} is not a time (use 2026-12-03T04:30, UTC)"
        ))
    })?;
    if store::get_endpoint(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("webhook endpoint").into());
    }
    let queued = store::redrive_dead(&state.pool, id, since).await?;
    tracing::info!(endpoint_id = %id, queued, actor = %signed.actor, "console redrive");
    Ok(with_notice(
        id,
        &format!("{queued} dead letter(s) queued for delivery again."),
    ))
}
