//! `/v1/bookings`: the bookings projection as integrators read it — a filtered, keyset-paginated
//! list, and one booking with its sagas, its money and its history.

use axum::Json;
use axum::Router;
use axum::extract::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::as_of::{AsOf, AsOfParam, AsOfPoint, booking_at, saga_at};
use super::extract::MaybeJsonBody;
use super::operator::CancelSaga;
use super::sagas::{cursor_param, encode_cursor, list_limit};
use super::{Actor, ApiError, ApiPath, ApiQuery, AppState, ErrorBody};
use crate::domain::{SagaId, valid_id};
use crate::engine::model::SagaStatus;
use crate::events::Event;
use crate::store::bookings::{self, Booking, BookingFilter, BookingStatus, Dispute, Payments};
use crate::store::events::{self, EventRecord};
use crate::store::sagas;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/bookings", get(list_bookings))
        .route("/v1/bookings/{id}", get(get_booking))
        .route("/v1/bookings/{id}/cancel", post(cancel_booking))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BookingListParams {
    /// Only this listing's bookings.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub listing_id: Option<String>,
    /// Only this guest's bookings.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub guest_id: Option<String>,
    /// Only bookings with this status.
    #[param(inline, value_type = Option<BookingStatus>)]
    pub status: Option<String>,
    /// Only stays that overlap `[from, to)`: a stay that ends on `from` does not.
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<String>,
    /// Only stays that overlap `[from, to)`: a stay that starts on `to` does not.
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<String>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]+$", max_length = 256)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BookingPage {
    pub bookings: Vec<Booking>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn date_param(name: &str, raw: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    raw.map(|v| {
        NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .ok()
            .filter(|_| v.len() == 10)
            .ok_or_else(|| {
                ApiError::BadRequest(format!("{name} must be an ISO date YYYY-MM-DD, got {v:?}"))
            })
    })
    .transpose()
}

fn id_param(name: &str, raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        Some(v) if !valid_id(&v) => Err(ApiError::BadRequest(format!(
            "{name} must be 1-64 characters of A-Z, a-z, 0-9, '_', '-' or '.', got {v:?}"
        ))),
        other => Ok(other),
    }
}

/// Bookings, newest first, with keyset pagination.
///
/// Filters combine: a guest's bookings (`guest_id`), a listing's (`listing_id`), by `status`, and
/// stays overlapping `from`/`to` (either may be left open).
#[utoipa::path(get, path = "/v1/bookings", tag = "bookings", params(BookingListParams),
    responses((status = 200, description = "A page of bookings", body = BookingPage),
              (status = 400, description = "A malformed listing or guest id, an unknown status, a malformed date or `from` not before `to`, a limit outside 1–500, an invalid cursor, a NUL character or a malformed query string", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_bookings(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<BookingListParams>,
) -> Result<Json<BookingPage>, ApiError> {
    let listing_id = id_param("listing_id", p.listing_id)?;
    let guest_id = id_param("guest_id", p.guest_id)?;
    let status = p
        .status
        .as_deref()
        .map(|s| {
            BookingStatus::parse(s).ok_or_else(|| {
                let known: Vec<&str> = BookingStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::BadRequest(format!(
                    "unknown status {s:?}; use one of {}",
                    known.join(", ")
                ))
            })
        })
        .transpose()?;
    let from = date_param("from", p.from.as_deref())?;
    let to = date_param("to", p.to.as_deref())?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::BadRequest(format!(
            "from ({f}) must be before to ({t})"
        )));
    }
    let limit = list_limit(p.limit)?;
    let before = cursor_param(p.cursor.as_deref())?;
    let mut rows = bookings::list(
        &state.pool,
        &BookingFilter {
            listing_id,
            guest_id,
            status,
            from,
            to,
            before,
            limit: limit + 1,
        },
    )
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|b| encode_cursor(b.created_at, b.saga_id))
    } else {
        None
    };
    Ok(Json(BookingPage {
        bookings: rows,
        next_cursor,
    }))
}

/// A saga that worked on a booking.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingSaga {
    pub id: SagaId,
    pub saga: String,
    pub version: i32,
    pub status: SagaStatus,
    pub url: String,
}

/// One booking: the projection's row, the sagas that made and changed it, its money and its
/// history (every event, in order).
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingDetail {
    #[serde(flatten)]
    pub booking: Booking,
    pub url: String,
    pub sagas: Vec<BookingSaga>,
    pub payments: Payments,
    /// Chargebacks on the booking's payment, oldest first: open, or their outcome.
    pub disputes: Vec<Dispute>,
    pub history: Vec<EventRecord>,
    /// With `?as_of=`: the last event folded (everything above is as of then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOfPoint>,
}

/// The history's events as the domain knows them (an event this build cannot read is skipped
/// from the sums, never from the history).
fn domain_events(history: &[EventRecord]) -> Vec<Event> {
    history
        .iter()
        .filter_map(|r| Event::from_stored(&r.event_type, &r.payload).ok())
        .collect()
}

/// A booking: status, dates, amount, confirmation code, policy, its sagas, what was authorized,
/// captured and refunded, and its history.
///
/// With `as_of`, the booking as its events left it then: the row the projection's fold made of
/// the events up to that time or version, its sagas' status then, the money and disputes folded
/// from those events, and the history up to there (`as_of` says which event was last).
#[utoipa::path(get, path = "/v1/bookings/{id}", tag = "bookings",
    params(("id" = Uuid, Path, description = "The booking's id (the id of the saga that made it)"), AsOfParam),
    responses((status = 200, description = "The booking", body = BookingDetail),
              (status = 400, description = "The id is not a UUID, or `as_of` is neither a version nor an RFC 3339 timestamp", body = ErrorBody),
              (status = 404, description = "No such booking, or `as_of` is before its first event or past its last version", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_booking(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    ApiQuery(q): ApiQuery<AsOfParam>,
) -> Result<Json<BookingDetail>, ApiError> {
    let id = parse_booking_id(&id)?;
    let as_of = AsOf::from_param(q.as_of.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let booking = bookings::get(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    let saga = sagas::get(&mut conn, id).await?;
    let mut history = events::for_aggregate(&mut conn, id.0).await?;
    let (booking, point, saga_status) = match as_of {
        None => (booking, None, saga.as_ref().map(|s| s.status)),
        Some(as_of) => {
            history = as_of.cut(history, "booking")?;
            let then = booking_at(id, &history, booking.cancellation_policy)
                .ok_or(ApiError::NotFound("booking"))?;
            let status = match &saga {
                Some(row) => saga_at(&state, &mut conn, row, &history)
                    .await?
                    .map(|(at, _)| at.status),
                None => None,
            };
            (then, AsOfPoint::of(&history), status)
        }
    };
    let domain = domain_events(&history);
    let payments = Payments::of(&domain);
    let disputes = Dispute::all_of(&domain);
    Ok(Json(BookingDetail {
        url: format!("/v1/bookings/{id}"),
        booking,
        as_of: point,
        sagas: saga
            .into_iter()
            .map(|s| BookingSaga {
                url: format!("/v1/sagas/{}", s.id),
                id: s.id,
                saga: s.saga_name,
                version: s.saga_version,
                status: saga_status.unwrap_or(s.status),
            })
            .collect(),
        payments,
        disputes,
        history,
    }))
}

/// Cancel a booking: its saga is cancelled as `POST /v1/sagas/{id}/cancel` does (same body, same
/// rules: a guest gets what the policy allows, a host or an operator refunds in full). Answers
/// with the booking; its `cancellation` (who, the refund and its rule) shows once the saga has
/// recorded it.
#[utoipa::path(post, path = "/v1/bookings/{id}/cancel", tag = "bookings",
    params(("id" = Uuid, Path, description = "The booking's id (the id of the saga that made it)")),
    request_body = Option<CancelSaga>,
    responses((status = 202, description = "Cancellation accepted; compensation follows", body = BookingDetail),
              (status = 400, description = "The id is not a UUID, or the body is not JSON", body = ErrorBody),
              (status = 404, description = "No such booking", body = ErrorBody),
              (status = 409, description = "Already cancelled or being cancelled, or not cancellable in its state; nothing changed", body = ErrorBody),
              (status = 422, description = "An unknown `by`, or a reason that is empty or over 1024 characters; nothing changed", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_booking(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(raw): ApiPath,
    MaybeJsonBody(req): MaybeJsonBody<CancelSaga>,
) -> Result<Response, ApiError> {
    let id = parse_booking_id(&raw)?;
    {
        let mut conn = state.pool.acquire().await?;
        if bookings::get(&mut conn, id).await?.is_none() {
            return Err(ApiError::NotFound("booking"));
        }
    }
    super::sagas::cancel(&state, &actor, id, req, "booking").await?;
    let Json(detail) =
        get_booking(State(state), ApiPath(raw), ApiQuery(AsOfParam::default())).await?;
    Ok((StatusCode::ACCEPTED, Json(detail)).into_response())
}

pub(super) fn parse_booking_id(raw: &str) -> Result<SagaId, ApiError> {
    raw.parse::<SagaId>()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a booking id (a UUID)")))
}
