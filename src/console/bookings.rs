//! A listing's calendar: every night of a window of weeks, free, held, booked or blocked, with
//! the booking or block that claims it.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{Datelike, Days, NaiveDate};
use maud::html;
use serde::Deserialize;

use super::session::Signed;
use super::{Nav, PageResult, Query, page, render};
use crate::http::listings::{Range, RangeState, listing_param, ranges};
use crate::http::{ApiError, AppState};
use crate::store::inventory;

/// Weeks the calendar shows.
const WEEKS: u64 = 8;

pub fn routes() -> Router<AppState> {
    Router::new().route("/console/bookings", get(calendar_page))
}

#[derive(Debug, Default, Deserialize)]
struct Params {
    #[serde(default)]
    listing: String,
    #[serde(default)]
    from: String,
}

fn state_name(s: RangeState) -> &'static str {
    match s {
        RangeState::Free => "free",
        RangeState::Held => "held",
        RangeState::Booked => "booked",
        RangeState::Blocked => "blocked",
    }
}

async fn calendar_page(
    State(state): State<AppState>,
    signed: Signed,
    Query(p): Query<Params>,
) -> PageResult {
    let listing = p.listing.trim();
    let today = state.clock.db_now().date_naive();
    let from = match p.from.trim() {
        "" => today,
        raw => NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .ok()
            .filter(|d| (1..=9999).contains(&d.year()))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "from: {raw:?} is not a date of years 1 to 9999 (use 2026-12-03)"
                ))
            })?,
    };
    // Whole weeks, Monday first.
    let start = from - Days::new(u64::from(from.weekday().num_days_from_monday()));
    let end = start + Days::new(7 * WEEKS);
    let nights: Vec<Range> = if listing.is_empty() {
        Vec::new()
    } else {
        let listing = listing_param(listing)?;
        let mut conn = state.pool.acquire().await?;
        let claims = inventory::active_claims(&mut conn, &listing, start, end).await?;
        ranges(start, end, &claims)
    };
    let night = |d: NaiveDate| nights.iter().find(|r| r.from <= d && d < r.to);
    let nav = |d: NaiveDate| format!("/console/bookings?listing={listing}&from={d}");
    let body = html! {
        h1 { "Bookings" }
        form.filters method="get" action="/console/bookings" {
            label { "Listing" input type="text" name="listing" value=(listing) required placeholder="listing id"; }
            label { "From" input type="date" name="from" value=(from); }
            button type="submit" { "Show" }
        }
        @if !listing.is_empty() {
            p.pager {
                a href=(nav(start - Days::new(7 * WEEKS))) { "← Earlier" } " "
                a href=(nav(end)) { "Later →" }
            }
            p.legend { span.c-free { "free" } " " span.c-held { "held" } " " span.c-booked { "booked" } " " span.c-blocked { "blocked" } }
            div.scroll { table.calendar #calendar {
                thead { tr { @for d in ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"] { th { (d) } } } }
                tbody {
                    @for w in 0..WEEKS {
                        tr {
                            @for i in 0..7 {
                                @let d = start + Days::new(w * 7 + i);
                                @let r = night(d);
                                @let s = r.map_or("free", |r| state_name(r.state));
                                td class={ "c-" (s) @if d == today { " today" } } data-date=(d) {
                                    span.day { (d.format("%b %e")) }
                                    @if let Some(r) = r {
                                        @if let Some(b) = r.booking_id { a.claim href={ "/console/sagas/" (b) } { (s) } }
                                        @else if r.block_id.is_some() { span.claim { (s) } }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
            h2 { "Claims" }
            ul #claims {
                @for r in nights.iter().filter(|r| r.state != RangeState::Free) {
                    li {
                        (r.from) " → " (r.to) ": " (state_name(r.state))
                        @if let Some(b) = r.booking_id { " · " a.id href={ "/console/sagas/" (b) } { (b) } }
                        @if let Some(b) = r.block_id { " · block " span.code { (b) } }
                    }
                }
            }
        }
    };
    Ok(render(page("Bookings", Nav::Bookings, Some(&signed), body)))
}
