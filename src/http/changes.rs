//! `POST /v1/bookings/{id}/change`: new dates and a new price for a confirmed booking, carried out
//! by the `booking_change` saga (`sagas/booking_change.toml`).

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::bookings::parse_booking_id;
use super::sagas::{SagaView, full_view};
use super::{Actor, ApiError, ApiPath, AppState, ErrorBody, JsonBody};
use crate::domain::{BookingInput, ChangeOf, FieldError, RawBookingInput, SagaId};
use crate::engine::model::SagaStatus;
use crate::engine::start::{self, Starting};
use crate::events::{Event, NewEvent};
use crate::store::bookings::{self, BookingStatus, Payments};
use crate::store::{self, events, sagas, sqlstate};

/// The saga a change runs.
pub const CHANGE_SAGA: &str = "booking_change";
/// The database's guard of one change under way per booking (migration 0021).
const ONE_CHANGE: &str = "sagas_one_change_per_booking";

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/bookings/{id}/change", post(change_booking))
}

/// Body of `POST /v1/bookings/{id}/change` (every field optional here so that each missing one
/// gets its own error).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBooking {
    /// New first night, ISO date; not in the past.
    #[schema(value_type = String, format = Date, required = true)]
    pub check_in: Option<serde_json::Value>,
    /// New departure day (exclusive), after `check_in`, within the longest stay allowed.
    #[schema(value_type = String, format = Date, required = true)]
    pub check_out: Option<serde_json::Value>,
    /// New total price in the booking's currency's minor units, > 0. A higher price charges the
    /// difference as its own PaymentIntent; a lower one refunds it.
    #[schema(value_type = i64, required = true, minimum = 1)]
    pub amount: Option<serde_json::Value>,
    /// The Stripe PaymentMethod that pays a higher price's difference; default: the booking's.
    #[schema(value_type = Option<String>, max_length = 64, pattern = "^pm_[A-Za-z0-9_.-]{1,61}$")]
    pub payment_method: Option<serde_json::Value>,
}

/// The booking as changed, validated as a booking request is (its fields, as `check_in`…).
fn changed_input(
    original: &BookingInput,
    req: ChangeBooking,
    state: &AppState,
) -> Result<BookingInput, ApiError> {
    let raw = RawBookingInput {
        listing_id: Some(json!(original.listing_id)),
        guest_id: Some(json!(original.guest_id)),
        check_in: req.check_in,
        check_out: req.check_out,
        amount: req.amount,
        currency: Some(json!(original.currency)),
        payment_method: req
            .payment_method
            .or_else(|| Some(json!(original.payment_method))),
        cancellation_policy: original.cancellation_policy.map(|p| json!(p.as_str())),
    };
    let input = raw
        .validate(&state.booking_rules, state.clock.db_now().date_naive())
        .map_err(|errors| {
            ApiError::Validation(
                errors
                    .into_iter()
                    .map(|e| FieldError {
                        field: e.field.trim_start_matches("input.").to_owned(),
                        message: e.message,
                    })
                    .collect(),
            )
        })?;
    if (input.check_in, input.check_out, input.amount)
        == (original.check_in, original.check_out, original.amount)
    {
        return Err(ApiError::Validation(vec![FieldError {
            field: "check_in".into(),
            message: "the booking already has these dates and this amount: nothing to change"
                .into(),
        }]));
    }
    Ok(input)
}

/// Change a booking's dates and price.
///
/// Starts the `booking_change` saga: it holds the new nights beside the old ones, charges (or,
/// after the swap, refunds) the difference, swaps the booking onto the new nights in one
/// transaction (`BookingChanged`, webhook `booking.changed`) and notifies the guest. If a step
/// before the swap fails for good, the booking stays exactly as it was. Follow the saga at `url`.
#[utoipa::path(post, path = "/v1/bookings/{id}/change", tag = "bookings", request_body = ChangeBooking,
    params(("id" = Uuid, Path, description = "The booking's id (the id of the saga that made it)")),
    responses((status = 202, description = "The change saga, started", body = SagaView),
              (status = 400, description = "The id is not a UUID, or the body is not JSON", body = ErrorBody),
              (status = 404, description = "No such booking", body = ErrorBody),
              (status = 409, description = "The booking is not confirmed (or its saga has not finished), or a change of it is under way", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "Invalid fields (as in a booking request), every problem listed, or nothing to change", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn change_booking(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiPath(id): ApiPath,
    JsonBody { value: req, .. }: JsonBody<ChangeBooking>,
) -> Result<Response, ApiError> {
    let booking_id = parse_booking_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    let booking = bookings::get(&mut conn, booking_id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    let saga = sagas::get(&mut conn, booking_id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    let original = BookingInput::deserialize(&saga.input)
        .map_err(|e| anyhow::anyhow!("booking {booking_id}'s input: {e}"))?;
    let input = changed_input(&original, req, &state)?;
    if booking.status != BookingStatus::Confirmed.as_str() || saga.status != SagaStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "booking {booking_id} is {} (its saga {}): only a confirmed booking whose saga has completed can be changed",
            booking.status, saga.status
        )));
    }
    let def = state.registry.latest(CHANGE_SAGA).ok_or_else(|| {
        ApiError::Conflict(format!(
            "this server has no `{CHANGE_SAGA}` saga definition loaded"
        ))
    })?;
    let history = events::for_aggregate(&mut conn, booking_id.0).await?;
    let domain: Vec<Event> = history
        .iter()
        .filter_map(|r| Event::from_stored(&r.event_type, &r.payload).ok())
        .collect();
    let paid = Payments::of(&domain);
    let input = BookingInput {
        change: Some(ChangeOf {
            booking_id,
            previous_check_in: booking.check_in,
            previous_check_out: booking.check_out,
            previous_amount: booking.amount,
            payment_intent_id: booking.payment_intent_id.clone(),
            refundable: (paid.captured - paid.refunded).max(0),
        }),
        ..input
    };
    let input_json = serde_json::to_value(&input).map_err(anyhow::Error::from)?;
    let id = SagaId::new();
    let event = NewEvent::from(Event::BookingChangeRequested {
        booking_id: booking_id.0,
        check_in: input.check_in,
        check_out: input.check_out,
        amount: input.amount,
        previous_check_in: booking.check_in,
        previous_check_out: booking.check_out,
        previous_amount: booking.amount,
        actor: actor.0.clone(),
    });
    let starting = Starting {
        def: &def,
        id,
        input: &input,
        input_json: &input_json,
        idempotency_key: None,
        fingerprint: "",
        leased_to: None,
        now: state.clock.db_now(),
    };
    match start::start(&mut conn, &starting, event, true).await {
        Ok(_) => {}
        Err(e)
            if store::sqlstate(&e).as_deref() == Some(sqlstate::UNIQUE_VIOLATION)
                && e.as_database_error().and_then(|d| d.constraint()) == Some(ONE_CHANGE) =>
        {
            return Err(ApiError::Conflict(format!(
                "a change of booking {booking_id} is already under way"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    drop(conn);
    crate::telemetry::saga_started(&def.name);
    tracing::info!(saga_id = %id, booking_id = %booking_id, "booking change started");
    let view = full_view(&state, id)
        .await?
        .ok_or(ApiError::NotFound("saga"))?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
