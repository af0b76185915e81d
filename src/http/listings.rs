//! `/v1/listings/{id}`: a listing's availability, and its host's blocks. A block is an inventory
//! claim under the same exclusion constraint as holds and bookings.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{Actor, ApiError, ApiPath, ApiPath2, ApiQuery, AppState, ErrorBody, JsonBody};
use crate::domain::{FieldError, SagaId, earliest_check_in, valid_id};
use crate::events::{BLOCK_AGGREGATE, Event, NewEvent};
use crate::store::events;
use crate::store::inventory::{self, ActiveClaim, Block, ClaimKind, NewBlock};

/// The longest block, and the widest availability window, in nights.
pub const MAX_RANGE_NIGHTS: i64 = 3650;
/// The longest block reason, in characters.
pub const MAX_REASON_LEN: usize = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/listings/{id}/availability", get(availability))
        .route("/v1/listings/{id}/blocks", post(create_block))
        .route("/v1/listings/{id}/blocks/{block_id}", delete(remove_block))
}

pub(crate) fn listing_param(raw: &str) -> Result<String, ApiError> {
    if valid_id(raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::BadRequest(format!(
            "{raw:?} is not a listing id (1-64 characters of A-Z, a-z, 0-9, '_', '-' or '.')"
        )))
    }
}

fn date_param(name: &str, raw: Option<&str>) -> Result<NaiveDate, ApiError> {
    let v = raw.ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))?;
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .filter(|_| v.len() == 10)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("{name} must be an ISO date YYYY-MM-DD, got {v:?}"))
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AvailabilityParams {
    /// First night of the window.
    #[param(value_type = String, format = Date)]
    pub from: Option<String>,
    /// The day after the window's last night (at most 3650 nights after `from`).
    #[param(value_type = String, format = Date)]
    pub to: Option<String>,
}

/// What a range of nights is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RangeState {
    Free,
    /// Held for a booking saga under way.
    Held,
    Booked,
    /// Blocked by the host.
    Blocked,
}

/// Nights `[from, to)` in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub state: RangeState,
    /// The booking holding or having the nights (held, booked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<SagaId>,
    /// The host's block (blocked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Availability {
    pub listing_id: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The window's nights, in order, with no gap and no overlap.
    pub ranges: Vec<Range>,
}

/// The window `[from, to)` cut into ranges: each claim clipped to the window, free in between.
/// `claims` do not overlap (the exclusion constraint) and come in date order.
pub fn ranges(from: NaiveDate, to: NaiveDate, claims: &[ActiveClaim]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut at = from;
    let free = |a, b| Range {
        from: a,
        to: b,
        state: RangeState::Free,
        booking_id: None,
        block_id: None,
    };
    for c in claims {
        let (a, b) = (c.from.max(from), c.to.min(to));
        if a >= b {
            continue;
        }
        if at < a {
            out.push(free(at, a));
        }
        let (state, booking_id, block_id) = match c.kind {
            ClaimKind::Block => (RangeState::Blocked, None, Some(c.id)),
            ClaimKind::Booking => (RangeState::Booked, c.saga_id, None),
            ClaimKind::Hold => (RangeState::Held, c.saga_id, None),
        };
        out.push(Range {
            from: a,
            to: b,
            state,
            booking_id,
            block_id,
        });
        at = at.max(b);
    }
    if at < to {
        out.push(free(at, to));
    }
    out
}

/// A listing's nights in a window: free, held, booked and blocked ranges.
#[utoipa::path(get, path = "/v1/listings/{id}/availability", tag = "listings",
    params(("id" = String, Path, description = "The listing"), AvailabilityParams),
    responses((status = 200, description = "The window's ranges", body = Availability),
              (status = 400, description = "A malformed listing id, a missing or malformed date, `from` not before `to`, a window over 3650 nights, or a malformed query string", body = ErrorBody),
              (status = 404, description = "No such route; listings are not registered, so any well-formed listing id has availability (all free until claimed)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn availability(
    State(state): State<AppState>,
    ApiPath(listing): ApiPath,
    ApiQuery(p): ApiQuery<AvailabilityParams>,
) -> Result<Json<Availability>, ApiError> {
    let listing = listing_param(&listing)?;
    let from = date_param("from", p.from.as_deref())?;
    let to = date_param("to", p.to.as_deref())?;
    if from >= to {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    if (to - from).num_days() > MAX_RANGE_NIGHTS {
        return Err(ApiError::BadRequest(format!(
            "the window may span at most {MAX_RANGE_NIGHTS} nights"
        )));
    }
    let mut conn = state.pool.acquire().await?;
    let claims = inventory::active_claims(&mut conn, &listing, from, to).await?;
    Ok(Json(Availability {
        ranges: ranges(from, to, &claims),
        listing_id: listing,
        from,
        to,
    }))
}

/// Body of `POST /v1/listings/{id}/blocks` (every field optional here so that each missing one
/// gets its own error).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBlock {
    /// First night to block, ISO date; not in the past.
    #[schema(value_type = String, format = Date, required = true)]
    pub from: Option<serde_json::Value>,
    /// The day after the last night to block (after `from`, at most 3650 nights later).
    #[schema(value_type = String, format = Date, required = true)]
    pub to: Option<serde_json::Value>,
    /// Why (maintenance, owner's stay…): 1–500 characters.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 500)]
    pub reason: Option<serde_json::Value>,
}

struct ValidBlock {
    from: NaiveDate,
    to: NaiveDate,
    reason: String,
}

impl CreateBlock {
    fn validate(self, today: NaiveDate) -> Result<ValidBlock, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.into(),
                message,
            })
        };
        let mut date = |field: &str, v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .ok()
                .filter(|_| s.len() == 10)
                .or_else(|| {
                    err(field, format!("must be an ISO date YYYY-MM-DD, got {s:?}"));
                    None
                }),
            None | Some(serde_json::Value::Null) => {
                err(field, "is required".into());
                None
            }
            Some(_) => {
                err(field, "must be an ISO date YYYY-MM-DD".into());
                None
            }
        };
        let from = date("from", self.from);
        let to = date("to", self.to);
        if let Some(f) = from
            && f < earliest_check_in(today)
        {
            err(
                "from",
                format!("must not be in the past (today is {today} UTC), got {f}"),
            );
        }
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                err("to", format!("must be after from ({f}), got {t}"));
            } else if (t - f).num_days() > MAX_RANGE_NIGHTS {
                err(
                    "to",
                    format!("a block may last at most {MAX_RANGE_NIGHTS} nights"),
                );
            }
        }
        let reason = match self.reason {
            Some(serde_json::Value::String(r))
                if !r.trim().is_empty() && r.chars().count() <= MAX_REASON_LEN =>
            {
                Some(r)
            }
            Some(serde_json::Value::String(_)) => {
                err(
                    "reason",
                    format!("must be 1-{MAX_REASON_LEN} characters, not blank"),
                );
                None
            }
            None | Some(serde_json::Value::Null) => {
                err("reason", "is required".into());
                None
            }
            Some(_) => {
                err("reason", "must be a string".into());
                None
            }
        };
        match (from, to, reason) {
            (Some(from), Some(to), Some(reason)) if errors.is_empty() => {
                Ok(ValidBlock { from, to, reason })
            }
            _ => Err(errors),
        }
    }
}

/// What a conflicting claim is, in words.
fn describe(c: &ActiveClaim) -> String {
    match (c.kind, c.saga_id) {
        (ClaimKind::Block, _) => format!("block {} ({}..{})", c.id, c.from, c.to),
        (ClaimKind::Booking, Some(b)) => format!("booking {b} ({}..{})", c.from, c.to),
        (ClaimKind::Hold, Some(b)) => format!("the hold of booking {b} ({}..{})", c.from, c.to),
        (kind, None) => format!("{kind} {} ({}..{})", c.id, c.from, c.to),
    }
}

/// Block a listing's nights `[from, to)`.
///
/// The block and the booking's holds are claims under one exclusion constraint: nights that are
/// held, booked or already blocked are refused with 409, naming what has them, and a booking
/// over blocked nights fails `dates_unavailable`. Recorded as `ListingBlocked` (webhook
/// `listing.blocked`) in the same transaction.
#[utoipa::path(post, path = "/v1/listings/{id}/blocks", tag = "listings",
    params(("id" = String, Path, description = "The listing")), request_body = CreateBlock,
    responses((status = 201, description = "Blocked", body = Block),
              (status = 400, description = "A malformed listing id or JSON body", body = ErrorBody),
              (status = 404, description = "No such route (listings are not registered: any well-formed listing id can be blocked)", body = ErrorBody),
              (status = 409, description = "The nights are held, booked or blocked: the message names the booking or block", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "Invalid fields, every problem listed", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_block(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(listing): ApiPath,
    JsonBody { value: req, .. }: JsonBody<CreateBlock>,
) -> Result<Response, ApiError> {
    let listing = listing_param(&listing)?;
    let b = req
        .validate(state.clock.db_now().date_naive())
        .map_err(ApiError::Validation)?;
    let new = NewBlock {
        id: Uuid::now_v7(),
        listing_id: &listing,
        from: b.from,
        to: b.to,
        reason: &b.reason,
        created_by: &actor.0,
    };
    let mut tx = state.pool.begin().await?;
    let Some(block) = inventory::insert_block(&mut tx, &new).await? else {
        tx.rollback().await?;
        let mut conn = state.pool.acquire().await?;
        let taken = inventory::active_claims(&mut conn, &listing, b.from, b.to).await?;
        let named: Vec<String> = taken.iter().map(describe).collect();
        return Err(ApiError::Conflict(if named.is_empty() {
            "the nights were taken by a claim released since; try again".into()
        } else {
            format!("the nights overlap {}", named.join(", "))
        }));
    };
    let event = Event::ListingBlocked {
        block_id: block.id,
        listing_id: listing.clone(),
        from: block.from,
        to: block.to,
        reason: block.reason.clone(),
        actor: actor.0.clone(),
    };
    events::append(
        &mut tx,
        BLOCK_AGGREGATE,
        block.id,
        1,
        &[NewEvent::from(event)],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(listing = %listing, block_id = %block.id, actor = %actor.0, "listing blocked");
    let location = format!("/v1/listings/{listing}/blocks/{}", block.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(block),
    )
        .into_response())
}

/// Remove a block: its nights can be booked again. Recorded as `ListingUnblocked` (webhook
/// `listing.unblocked`).
#[utoipa::path(delete, path = "/v1/listings/{id}/blocks/{block_id}", tag = "listings",
    params(("id" = String, Path, description = "The listing"), ("block_id" = Uuid, Path)),
    responses((status = 200, description = "Removed; the block as it now is", body = Block),
              (status = 400, description = "A malformed listing or block id", body = ErrorBody),
              (status = 404, description = "The listing has no such block", body = ErrorBody),
              (status = 409, description = "The block was already removed", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_block(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath2(listing, block_id): ApiPath2,
) -> Result<Json<Block>, ApiError> {
    let listing = listing_param(&listing)?;
    let block_id = block_id
        .parse::<Uuid>()
        .map_err(|_| ApiError::BadRequest(format!("{block_id:?} is not a block id (a UUID)")))?;
    let mut tx = state.pool.begin().await?;
    let Some(block) = inventory::release_block(&mut tx, &listing, block_id).await? else {
        return match inventory::get_block(&mut tx, &listing, block_id).await? {
            None => Err(ApiError::NotFound("block")),
            Some(b) => Err(ApiError::Conflict(format!(
                "block {} was already removed at {}",
                b.id,
                b.released_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            ))),
        };
    };
    let event = Event::ListingUnblocked {
        block_id: block.id,
        listing_id: listing.clone(),
        from: block.from,
        to: block.to,
        reason: block.reason.clone(),
        actor: actor.0.clone(),
    };
    events::append(
        &mut tx,
        BLOCK_AGGREGATE,
        block.id,
        2,
        &[NewEvent::from(event)],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(listing = %listing, block_id = %block.id, actor = %actor.0, "listing unblocked");
    Ok(Json(block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 6, n).unwrap()
    }

    fn claim(kind: &str, a: u32, b: u32) -> ActiveClaim {
        let kind = ClaimKind::parse(kind).expect("a claim kind");
        ActiveClaim {
            id: Uuid::nil(),
            kind,
            saga_id: (kind != ClaimKind::Block).then(|| SagaId(Uuid::nil())),
            from: d(a),
            to: d(b),
        }
    }

    #[test]
    fn ranges_cover_the_window_with_claims_clipped_and_free_between() {
        let r = ranges(
            d(5),
            d(20),
            &[
                claim("booking", 1, 7),
                claim("hold", 9, 10),
                claim("block", 10, 12),
                claim("booking", 18, 25),
            ],
        );
        let got: Vec<_> = r.iter().map(|r| (r.from, r.to, r.state)).collect();
        assert_eq!(
            got,
            [
                (d(5), d(7), RangeState::Booked),
                (d(7), d(9), RangeState::Free),
                (d(9), d(10), RangeState::Held),
                (d(10), d(12), RangeState::Blocked),
                (d(12), d(18), RangeState::Free),
                (d(18), d(20), RangeState::Booked),
            ]
        );
        assert!(r[3].block_id.is_some() && r[3].booking_id.is_none());
        assert_eq!(
            ranges(d(1), d(3), &[]),
            [Range {
                from: d(1),
                to: d(3),
                state: RangeState::Free,
                booking_id: None,
                block_id: None
            }]
        );
    }
}
