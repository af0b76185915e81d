//! `/v1/events`: the global event feed, by position, with long polling.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::sagas::parse_wait;
use super::{ApiError, ApiQuery, AppState, ErrorBody};
use crate::events::TYPES;
use crate::store::feed::{self, FeedEvent, Position};

/// Most events in one page.
pub const MAX_LIMIT: i64 = 1000;
/// How often a long poll looks at the feed again while it waits.
const POLL_EVERY: Duration = Duration::from_millis(100);

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", get(read_feed))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// The `next` of the previous page (or an event's `position`); from the start without it.
    #[param(pattern = "^[0-9]{1,20}\\.[0-9]{1,20}$")]
    pub after: Option<String>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Only these stored event types, comma-separated (e.g. `BookingConfirmed,BookingCancelled`).
    pub types: Option<String>,
    /// When nothing follows `after`, wait up to this long (e.g. `10s`; at most the server's
    /// maximum, 30s by default) for an event before answering.
    #[param(pattern = "^[0-9]{1,9}(ms|s|m|h)$")]
    pub wait: Option<String>,
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    /// Pass as `after` to read on. It moves even when `events` is empty (past positions where
    /// nothing can appear any more), so a reader keeps it whatever the page held.
    #[schema(value_type = String, example = "761.42")]
    pub next: Position,
}

fn parse_types(raw: &str) -> Result<Vec<String>, ApiError> {
    let types: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if types.is_empty() {
        return Err(ApiError::BadRequest(
            "types is empty: name at least one event type, or leave it out".into(),
        ));
    }
    if let Some(unknown) = types.iter().find(|t| !TYPES.contains(&t.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown event type {unknown:?}; the stored types are {}",
            TYPES.join(", ")
        )));
    }
    Ok(types)
}

/// Every event of every aggregate in one total order (the position), from `after`.
///
/// An event whose transaction commits after later ones is not skipped: the feed never passes a
/// position while a transaction that may still write below it runs.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(FeedParams),
    responses((status = 200, description = "The events after `after`, in feed order", body = FeedPage),
              (status = 400, description = "A malformed `after` or `wait`, a `limit` outside 1–1000, an unknown event type", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn read_feed(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<FeedParams>,
) -> Result<Json<FeedPage>, ApiError> {
    let after = p
        .after
        .as_deref()
        .map(|a| a.parse::<Position>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("after: {e}")))?
        .unwrap_or(Position::START);
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let types = p.types.as_deref().map(parse_types).transpose()?;
    let wait = p
        .wait
        .as_deref()
        .map(|w| parse_wait(w, state.max_wait))
        .transpose()?
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + wait;
    let mut from = after;
    loop {
        // A connection per look, not held while waiting: long polls must not starve the pool.
        let page = {
            let mut conn = state.pool.acquire().await?;
            feed::read(&mut conn, from, limit, types.as_deref()).await?
        };
        if !page.events.is_empty() || tokio::time::Instant::now() + POLL_EVERY > deadline {
            return Ok(Json(FeedPage {
                events: page.events,
                next: page.next,
            }));
        }
        from = page.next;
        tokio::time::sleep(POLL_EVERY).await;
    }
}
