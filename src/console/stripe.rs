//! The Stripe inbox: the events Stripe sent, filtered by status and type, and reprocessing of a
//! dead, unmatched or ignored one.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use super::session::{Authorized, Signed};
use super::{ConsoleError, Nav, PageResult, Query, badge, json_block, page, render, time};
use crate::http::{ApiError, AppState};
use crate::store::stripe_inbox::{self as store, InboxStatus, ListFilter, ReprocessOutcome};

/// Events shown.
const SHOWN: i64 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/stripe", get(inbox_page))
        .route("/console/stripe/{id}/reprocess", post(reprocess))
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    status: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    reprocessed: String,
}

async fn inbox_page(
    State(state): State<AppState>,
    signed: Signed,
    Query(f): Query<Filter>,
) -> PageResult {
    let status = match f.status.as_str() {
        "" => None,
        s => Some(InboxStatus::parse(s).ok_or_else(|| {
            let known: Vec<&str> = InboxStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!(
                "unknown status {s:?}; use one of {}",
                known.join(", ")
            ))
        })?),
    };
    let event_type = f.event_type.trim();
    let events = store::list(
        &state.pool,
        &ListFilter {
            status,
            event_type: (!event_type.is_empty()).then(|| event_type.to_owned()),
            limit: SHOWN,
        },
    )
    .await?;
    let body = html! {
        h1 { "Stripe inbox" }
        @if !f.reprocessed.is_empty() { p.notice role="status" { "Event " span.code { (f.reprocessed) } " queued for processing again." } }
        form.filters method="get" action="/console/stripe" {
            label { "Status" select name="status" {
                option value="" selected[f.status.is_empty()] { "any" }
                @for s in InboxStatus::ALL { option value=(s.as_str()) selected[f.status == s.as_str()] { (s.as_str()) } }
            } }
            label { "Type" input type="text" name="type" value=(event_type) placeholder="payment_intent.succeeded"; }
            button type="submit" { "Filter" }
        }
        @if events.is_empty() { p.empty { "No event matches." } }
        @for e in &events {
            details.stripe-event data-id=(e.id) data-status=(e.status.as_str()) {
                summary { span.code { (e.id) } " " (e.event_type) " " (badge(e.status.as_str())) " received " (time(Some(e.received_at))) }
                dl {
                    @if let Some(pi) = &e.payment_intent_id { dt { "PaymentIntent" } dd { a.code href={ "/console/sagas?q=" (pi) } { (pi) } } }
                    @if let Some(s) = e.saga_id { dt { "Saga" } dd { a.id href={ "/console/sagas/" (s) } { (s) } } }
                    @if let Some(o) = &e.outcome { dt { "Outcome" } dd { (o) } }
                    @if let Some(er) = &e.last_error { dt { "Last error" } dd.error { (er) } }
                    dt { "Attempts" } dd { (e.attempts) }
                    dt { "Deliveries by Stripe" } dd { (e.deliveries) }
                    dt { "Processed" } dd { (time(e.processed_at)) }
                }
                @if matches!(e.status, InboxStatus::Dead | InboxStatus::Unmatched | InboxStatus::Ignored) {
                    form.inline method="post" action={ "/console/stripe/" (e.id) "/reprocess" } {
                        (signed.csrf_field())
                        button type="submit" name="reprocess" { "Reprocess" }
                    }
                }
                (json_block(&e.payload))
            }
        }
    };
    Ok(render(page(
        "Stripe inbox",
        Nav::Stripe,
        Some(&signed),
        body,
    )))
}

async fn reprocess(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, .. }: Authorized,
) -> Result<Redirect, ConsoleError> {
    match store::reprocess(&state.pool, &id).await? {
        ReprocessOutcome::NotFound => Err(ApiError::NotFound("Stripe event").into()),
        ReprocessOutcome::NotReprocessable(status) => Err(ApiError::Conflict(format!(
            "the event is {status}: only dead, unmatched or ignored events can be reprocessed"
        ))
        .into()),
        ReprocessOutcome::Queued => {
            tracing::info!(event_id = %id, actor = %signed.actor, "console reprocess");
            let q: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
            Ok(Redirect::to(&format!("/console/stripe?reprocessed={q}")))
        }
    }
}
