//! One saga's whole story on one page: its state and the operator actions it allows, a timeline
//! of every step and compensation drawn to scale, its booking and Stripe objects, its events
//! with their payloads, the outgoing deliveries those events caused (with every attempt), and
//! the Stripe events about its PaymentIntent.

use std::collections::HashMap;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::Signed;
use super::{
    ConsoleError, Nav, PageResult, Query, badge, json_block, page, render, span_text, time,
};
use crate::domain::SagaId;
use crate::engine::model::SagaStatus;
use crate::http::{ApiError, AppState};
use crate::store::bookings::{self, Booking};
use crate::store::console::{self as store, CausedDelivery, DeliveryAttempt};
use crate::store::events::{self, EventRecord};
use crate::store::outbound::{DeliveryRow, DeliveryStatus};
use crate::store::sagas::{self, SagaRow, StepRecord};
use crate::store::stripe_inbox::StripeEventRow;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/sagas/{id}", get(saga_page))
        .merge(super::actions::routes())
}

#[derive(Debug, Default, Deserialize)]
struct Notice {
    /// The operator action just made (`retry`, `resolve`, `cancel`): the page shows its event.
    done: Option<String>,
    /// A delivery just queued again.
    redelivered: Option<String>,
}

/// Everything the page shows.
struct Story {
    row: SagaRow,
    step_names: Vec<String>,
    steps: Vec<StepRecord>,
    booking: Option<Booking>,
    events: Vec<EventRecord>,
    deliveries: Vec<CausedDelivery>,
    attempts: HashMap<crate::domain::DeliveryId, Vec<DeliveryAttempt>>,
    stripe: Vec<StripeEventRow>,
}

async fn read(state: &AppState, id: SagaId) -> Result<Option<Story>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let Some(row) = sagas::get(&mut conn, id).await? else {
        return Ok(None);
    };
    let step_names = match state.registry.get(&row.saga_name, row.saga_version).await {
        Ok(def) => def.steps.iter().map(|s| s.name.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let steps = sagas::steps(&mut conn, id).await?;
    let booking = bookings::get(&mut conn, id).await?;
    let events = events::for_aggregate(&mut conn, id.0).await?;
    let event_ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let deliveries = store::deliveries_of_events(&mut *conn, &event_ids).await?;
    let ids: Vec<_> = deliveries.iter().map(|d| d.delivery.id).collect();
    let mut attempts: HashMap<_, Vec<DeliveryAttempt>> = HashMap::new();
    for a in store::attempts_of_deliveries(&mut *conn, &ids).await? {
        attempts.entry(a.delivery_id).or_default().push(a);
    }
    drop(conn);
    let pi = booking
        .as_ref()
        .and_then(|b| b.payment_intent_id.clone())
        .or_else(|| {
            stripe_ids(&row.context)
                .into_iter()
                .find(|(_, v)| v.starts_with("pi_"))
                .map(|(_, v)| v)
        });
    let stripe = match pi {
        Some(pi) => store::stripe_events_of(&state.pool, &pi).await?,
        None => Vec::new(),
    };
    Ok(Some(Story {
        row,
        step_names,
        steps,
        booking,
        events,
        deliveries,
        attempts,
        stripe,
    }))
}

/// The Stripe object ids in a saga's context (`payment_intent_id`, `refund_id`, …), by key.
fn stripe_ids(context: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(steps) = context.as_object() else {
        return out;
    };
    for (step, output) in steps {
        for (k, v) in output.as_object().into_iter().flatten() {
            if let Some(s) = v.as_str()
                && ["pi_", "re_", "ch_", "cus_", "pm_", "seti_"]
                    .iter()
                    .any(|p| s.starts_with(p))
            {
                out.push((format!("{step}.{k}"), s.to_owned()));
            }
        }
    }
    out
}

async fn saga_page(
    State(state): State<AppState>,
    signed: Signed,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let id: SagaId = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a saga id (a UUID)")))?;
    let story = read(&state, id)
        .await?
        .ok_or(ConsoleError(ApiError::NotFound("saga")))?;
    let r = &story.row;
    let current = (!r.status.is_terminal())
        .then(|| {
            story
                .step_names
                .get(r.current_step.max(0) as usize)
                .cloned()
        })
        .flatten();
    let body = html! {
        h1 { "Saga " span.id { (r.id) } }
        (notice_box(&story, &notice))
        section.summary {
            dl {
                dt { "Saga" } dd { (r.saga_name) " v" (r.saga_version) }
                dt { "Status" } dd #status { (badge(r.status.as_str())) }
                @if let Some(c) = &current { dt { "Step" } dd { (c) " (attempt " (r.attempt) ")" } }
                @if let Some(reason) = &r.failure_reason { dt { "Failure" } dd.error { (r.failure_step.as_deref().unwrap_or("")) ": " (reason) } }
                @if let Some(w) = &r.wait_key { dt { "Waits on" } dd { (w) " until " (time(r.wait_deadline)) } }
                @if let Some(w) = &r.wait_reason { dt { "Paused" } dd { (w) " since " (time(r.paused_since)) } }
                @if r.cancel_requested { dt { "Cancel" } dd { "requested" } }
                dt { "Created" } dd { (time(Some(r.created_at))) }
                dt { "Updated" } dd { (time(Some(r.updated_at))) }
                dt { "Finished" } dd { (time(r.finished_at)) }
            }
            (super::actions::forms(&signed, r))
        }
        section #timeline {
            h2 { "Timeline" }
            (timeline(&story, state.clock.db_now()))
        }
        section #booking {
            h2 { "Booking" }
            @match &story.booking {
                None => p { "No booking." },
                Some(b) => dl {
                    dt { "Status" } dd { (badge(&b.status)) }
                    dt { "Confirmation" } dd.code { (b.confirmation_code.as_deref().unwrap_or("—")) }
                    dt { "Listing" } dd { a href={ "/console/sagas?q=" (b.listing_id) } { (b.listing_id) } }
                    dt { "Guest" } dd { (b.guest_id) }
                    dt { "Stay" } dd { (b.check_in) " → " (b.check_out) }
                    dt { "Amount" } dd { (b.amount) " " (b.currency) " (minor units)" }
                    @if let Some(c) = &b.cancel_reason { dt { "Cancelled" } dd { (c) } }
                },
            }
            h3 { "Stripe objects" }
            @let ids = stripe_ids(&r.context);
            @if ids.is_empty() { p { "None yet." } }
            ul.stripe-ids { @for (k, v) in &ids { li { (k) ": " span.code { (v) } } } }
            details { summary { "Input and context" } (json_block(&r.input)) (json_block(&r.context)) }
        }
        section #events {
            h2 { "Events (" (story.events.len()) ")" }
            div.scroll { table.list {
                thead { tr { th { "#" } th { "type" } th { "recorded" } th { "payload" } } }
                tbody { @for e in &story.events {
                    tr {
                        td { (e.version) }
                        td { (e.event_type) }
                        td { (time(Some(e.recorded_at))) }
                        td { (json_block(&e.payload)) details { summary { "metadata" } (json_block(&e.metadata)) } }
                    }
                } }
            } }
        }
        section #deliveries {
            h2 { "Webhook deliveries its events caused (" (story.deliveries.len()) ")" }
            @if story.deliveries.is_empty() { p { "None." } }
            @for d in &story.deliveries { (delivery(&signed, &Back::Saga(r.id), &d.delivery, &d.url, story.attempts.get(&d.delivery.id).map_or(&[][..], |v| v))) }
        }
        section #stripe-events {
            h2 { "Stripe events about it (" (story.stripe.len()) ")" }
            @if story.stripe.is_empty() { p { "None." } }
            @for e in &story.stripe {
                details.stripe-event {
                    summary { span.code { (e.id) } " " (e.event_type) " " (badge(e.status.as_str())) " received " (time(Some(e.received_at))) }
                    dl {
                        @if let Some(o) = &e.outcome { dt { "Outcome" } dd { (o) } }
                        @if let Some(er) = &e.last_error { dt { "Last error" } dd.error { (er) } }
                        dt { "Attempts" } dd { (e.attempts) } dt { "Deliveries" } dd { (e.deliveries) }
                    }
                    (json_block(&e.payload))
                }
            }
        }
    };
    Ok(render(page("Saga", Nav::Sagas, Some(&signed), body)))
}

/// What the action just made did: its event (the saga's last operator event).
fn notice_box(story: &Story, n: &Notice) -> Markup {
    if let Some(d) = &n.redelivered {
        return html! { p.notice role="status" { "Delivery " span.code { (d) } " queued for delivery again." } };
    }
    let Some(action) = n.done.as_deref() else {
        return html! {};
    };
    let event = story.events.iter().rev().find(|e| {
        matches!(
            e.event_type.as_str(),
            "SagaRetried" | "SagaResolved" | "OperatorCancelled"
        )
    });
    html! {
        div.notice role="status" {
            @match (action, event) {
                ("cancel", _) if story.row.status != SagaStatus::Stuck && event.is_none_or(|e| e.event_type != "OperatorCancelled") => {
                    p { "Cancellation requested: the saga compensates what it did." }
                }
                (_, Some(e)) => {
                    p { "Recorded " strong { (e.event_type) } " at " (time(Some(e.recorded_at))) ":" }
                    (json_block(&e.payload))
                }
                (_, None) => p { "Done." },
            }
        }
    }
}

/// The page a redelivery returns to.
pub(super) enum Back {
    Saga(SagaId),
    Endpoint(crate::domain::EndpointId),
}

/// One delivery, its attempts, and a redeliver button when it is dead (or delivered).
pub(super) fn delivery(
    signed: &Signed,
    back: &Back,
    d: &DeliveryRow,
    url: &str,
    attempts: &[DeliveryAttempt],
) -> Markup {
    html! {
        div.delivery data-id=(d.id) data-status=(d.status.as_str()) {
            p {
                (badge(d.status.as_str())) " " strong { (d.event_type) } " → " span.url { (url) }
                " · " (d.attempt_count) " attempt(s)"
                @if let Some(s) = d.last_status { " · last HTTP " (s) }
            }
            @if matches!(d.status, DeliveryStatus::Dead | DeliveryStatus::Delivered) {
                form.inline method="post" action={ "/console/deliveries/" (d.id) "/redeliver" } {
                    (signed.csrf_field())
                    @match back {
                        Back::Saga(id) => input type="hidden" name="saga" value=(id);,
                        Back::Endpoint(id) => input type="hidden" name="endpoint" value=(id);,
                    }
                    button type="submit" name="redeliver" { "Redeliver" }
                }
            }
            @if !attempts.is_empty() {
                div.scroll { table.list.attempts {
                    thead { tr { th { "#" } th { "at" } th { "status" } th { "latency" } th { "response body (excerpt)" } th { "error" } } }
                    tbody { @for a in attempts {
                        @let a = &a.attempt;
                        tr {
                            td { (a.attempt) }
                            td { (time(Some(a.attempted_at))) }
                            td { (a.status_code.map_or("—".into(), |s| s.to_string())) }
                            td { (a.latency_ms) " ms" }
                            td { pre.excerpt { (excerpt(a.response_body.as_deref().unwrap_or(""), 300)) } }
                            td.error { (a.error.as_deref().unwrap_or("")) }
                        }
                    } }
                } }
            }
        }
    }
}

/// The first `n` characters of `s`, with an ellipsis when cut.
fn excerpt(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Width of the timeline's label column and bar area, in SVG units.
const LABEL: f64 = 190.0;
const BARS: f64 = 600.0;
const ROW: f64 = 24.0;

/// Each step and compensation as a bar from its start to its end (or now), on one time scale
/// from the saga's creation (a step still running ends at `now`); the events as ticks on a last
/// row.
fn timeline(s: &Story, now: DateTime<Utc>) -> Markup {
    let t0 = s.row.created_at;
    let end = s
        .steps
        .iter()
        .map(|st| st.finished_at.unwrap_or(now))
        .chain(s.row.finished_at)
        .chain(s.events.last().map(|e| e.recorded_at))
        .max()
        .unwrap_or(now)
        .max(t0);
    let span_ms = (end - t0).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| LABEL + ((t - t0).num_milliseconds().max(0) as f64 / span_ms) * BARS;
    let height = ROW * (s.steps.len() as f64 + 1.0) + 20.0;
    html! {
        svg.timeline viewBox={ "0 0 " (LABEL + BARS + 10.0) " " (height) } role="img"
            aria-label="Steps and compensations over time" {
            @for (i, st) in s.steps.iter().enumerate() {
                @let y = ROW * i as f64;
                @let stop = st.finished_at.unwrap_or(now);
                @let dur = (stop - st.started_at).num_milliseconds().max(0);
                g class={ "step " (st.phase.as_str()) " t-" (st.status.as_str()) } {
                    text x="0" y=(format!("{:.1}", y + 16.0)) class="label" {
                        (st.step_name) @if st.phase.as_str() == "compensation" { " ↺" }
                    }
                    rect x=(format!("{:.1}", x(st.started_at))) y=(format!("{:.1}", y + 4.0))
                        width=(format!("{:.1}", (x(stop) - x(st.started_at)).max(2.0))) height=(ROW - 8.0) {
                        title {
                            (st.step_name) " (" (st.phase.as_str()) "): " (st.status.as_str()) ", "
                            (st.attempts) " attempt(s), " (span_text(dur))
                            @if let Some(e) = &st.last_error { " — " (e) }
                        }
                    }
                }
            }
            @let y = ROW * s.steps.len() as f64;
            text x="0" y=(format!("{:.1}", y + 16.0)) class="label" { "events" }
            @for e in &s.events {
                line class="tick" x1=(format!("{:.1}", x(e.recorded_at))) x2=(format!("{:.1}", x(e.recorded_at)))
                    y1=(format!("{:.1}", y + 4.0)) y2=(format!("{:.1}", y + ROW - 4.0)) {
                    title { (e.event_type) " at +" (span_text((e.recorded_at - t0).num_milliseconds().max(0))) }
                }
            }
            text x=(LABEL) y=(height - 4.0) class="label" { "0" }
            text x=(LABEL + BARS) y=(height - 4.0) class="label end" { "+" (span_text(span_ms as i64)) }
        }
        div.scroll { table.list.steps {
            thead { tr { th { "step" } th { "phase" } th { "status" } th { "attempts" } th { "started" } th { "took" } th { "last error" } } }
            tbody { @for st in &s.steps {
                tr {
                    td { (st.step_name) }
                    td { (st.phase.as_str()) }
                    td { (badge(st.status.as_str())) }
                    td { (st.attempts) }
                    td { "+" (span_text((st.started_at - t0).num_milliseconds().max(0))) }
                    td { (st.finished_at.map_or("running".into(), |f| span_text((f - st.started_at).num_milliseconds().max(0)))) }
                    td.error { (st.last_error.as_deref().unwrap_or("")) }
                }
            } }
        } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("héllo", 10), "héllo");
        assert_eq!(excerpt("héllo", 2), "hé…");
    }

    #[test]
    fn stripe_ids_are_found_in_step_outputs() {
        let ctx = serde_json::json!({
            "authorize_payment": { "payment_intent_id": "pi_1", "amount": 5 },
            "hold_inventory": { "hold_id": "0190-..." },
        });
        assert_eq!(
            stripe_ids(&ctx),
            vec![("authorize_payment.payment_intent_id".into(), "pi_1".into())]
        );
    }
}
