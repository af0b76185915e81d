//! Operator actions on parked sagas: `POST /v1/sagas/{id}/retry`, `POST /v1/sagas/{id}/resolve`,
//! bulk `POST /v1/sagas/retry`, and what `POST /v1/sagas/{id}/cancel` does to a stuck saga. Each
//! is recorded as an event with its actor (the API token's name) and the reason given.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::storable_time;
use super::sagas::{SagaView, full_view, parse_id};
use super::{Actor, ApiError, ApiPath, AppState, ErrorBody, JsonBody};
use crate::domain::{FieldError, SagaId};
use crate::engine::operator::{self, Holdings, MAX_REASON_LEN, Parked, Resolution};
use crate::events::CancelledBy;
use crate::store::operator as store;
use crate::store::sagas::{self, SagaRow};
use crate::text_enum::text_enum;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sagas/retry", post(retry_stuck))
        .route("/v1/sagas/{id}/retry", post(retry_saga))
        .route("/v1/sagas/{id}/resolve", post(resolve_saga))
}

/// Most sagas one bulk retry takes; call again for the rest.
pub const BULK_LIMIT: i64 = 500;

/// Body of `POST /v1/sagas/{id}/retry`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySaga {
    /// Why, recorded with the actor.
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: String,
}

/// Body of `POST /v1/sagas/{id}/resolve`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveSaga {
    /// How the saga was settled by hand.
    #[schema(value_type = Resolution)]
    pub outcome: String,
    /// What was done, recorded with the actor.
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: String,
}

/// Answer of `POST /v1/sagas/{id}/resolve`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resolved {
    pub saga: SagaView,
    /// What the saga still holds, so that nothing is forgotten: settle each by hand too.
    pub still_held: Holdings,
}

/// Body of `POST /v1/sagas/retry`: every stuck saga of `step`, or stuck since `since` (both:
/// each condition holds).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRetry {
    /// The step the sagas are stuck at (running it or undoing it), e.g. `capture_payment`.
    #[schema(pattern = "^[a-z][a-z0-9_]*$", max_length = 64)]
    pub step: Option<String>,
    /// Only sagas parked as stuck at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Why, recorded with the actor on each saga.
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: String,
}

/// Answer of `POST /v1/sagas/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkRetried {
    /// Sagas whose step runs again.
    pub retried: Vec<SagaId>,
    /// Sagas that matched but moved before they could be retried (e.g. another operator's retry).
    pub skipped: Vec<SagaId>,
    /// More stuck sagas matched than one call takes (500): call again.
    pub more: bool,
}

/// Body of `POST /v1/sagas/{id}/cancel` and `POST /v1/bookings/{id}/cancel`. Optional: no body
/// (or one without `by`) is a guest's cancellation, as the API's cancel always was.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelSaga {
    /// Who cancels: `guest` (the default; the listing's cancellation policy sets the refund),
    /// `host` or `operator` (a full refund; the API token's name is recorded as the actor). A
    /// stuck saga is cancelled by an operator only.
    #[schema(value_type = Option<CancelRequester>)]
    pub by: Option<serde_json::Value>,
    /// Why, recorded on the cancellation's events (default `cancelled_by_<by>`).
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: Option<String>,
}

text_enum! {
    /// Who asks for a cancellation.
    #[derive(ToSchema)]
    pub enum CancelRequester {
        Guest = "guest",
        Host = "host",
        Operator = "operator",
    }
}

impl From<CancelRequester> for CancelledBy {
    fn from(r: CancelRequester) -> Self {
        match r {
            CancelRequester::Guest => CancelledBy::Guest,
            CancelRequester::Host => CancelledBy::Host,
            CancelRequester::Operator => CancelledBy::Operator,
        }
    }
}

/// What an operator does to one saga.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    Retry,
    Resolve(Resolution),
    Cancel,
}

pub(crate) fn check_reason(reason: &str) -> Result<(), FieldError> {
    let n = reason.trim().chars().count();
    if n == 0 || n > MAX_REASON_LEN {
        return Err(FieldError {
            field: "reason".into(),
            message: format!("give a reason of 1 to {MAX_REASON_LEN} characters"),
        });
    }
    Ok(())
}

/// Plans `action` on the saga as it is in `row` and writes it under the guard of that state.
/// Returns what the saga held, for a resolution.
async fn act_on(
    state: &AppState,
    row: &SagaRow,
    action: Action,
    actor: &str,
    reason: &str,
) -> Result<Option<Holdings>, ApiError> {
    let def = state
        .registry
        .get(&row.saga_name, row.saga_version)
        .await
        .map_err(anyhow::Error::from)?;
    let mut conn = state.pool.acquire().await?;
    let phase = store::phase_at(&mut conn, row.id, row.current_step).await?;
    let parked = Parked {
        def: &def,
        status: row.status,
        // A finished saga's step is past the last one; the action refuses it by its status.
        current_step: (row.current_step.max(0) as usize).min(def.steps.len() - 1),
        phase,
        failure_step: row.failure_step.as_deref(),
        failure_reason: row.failure_reason.as_deref(),
        price: row
            .input
            .get("amount")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0),
        captured: crate::engine::actions::captured(
            &def,
            row.context.as_object().unwrap_or(&serde_json::Map::new()),
        ),
    };
    let reason = reason.trim();
    let (plan, held) = match action {
        Action::Retry => (operator::retry(&parked, actor, reason), None),
        Action::Cancel => (operator::cancel_stuck(&parked, actor, reason), None),
        Action::Resolve(outcome) => {
            let held = store::holdings(&mut conn, row.id).await?;
            (
                operator::resolve(&parked, actor, reason, outcome, held.clone()),
                Some(held),
            )
        }
    };
    let plan = plan.map_err(|r| ApiError::Conflict(r.to_string()))?;
    if !store::apply(&mut conn, row, &plan).await? {
        return Err(ApiError::Conflict(
            "the saga moved on while the action was being made: look at it again".into(),
        ));
    }
    tracing::info!(saga_id = %row.id, ?action, actor, reason, status = %plan.target.status, "operator action");
    Ok(held)
}

/// [`act_on`] the saga `id`.
pub(crate) async fn act(
    state: &AppState,
    id: SagaId,
    action: Action,
    actor: &str,
    reason: &str,
) -> Result<Option<Holdings>, ApiError> {
    let row = {
        let mut conn = state.pool.acquire().await?;
        sagas::get(&mut conn, id)
            .await?
            .ok_or(ApiError::NotFound("saga"))?
    };
    act_on(state, &row, action, actor, reason).await
}

/// Run the step of a stuck or waiting saga again, now.
///
/// The step (or the compensation) the saga is at runs at once with fresh attempts: a stuck
/// compensation resumes, a stuck forward step runs again, a waiting step (3-D Secure) looks at its
/// outside state now instead of at its deadline. Recorded as `SagaRetried` with the actor (the
/// API token's name) and the reason.
#[utoipa::path(post, path = "/v1/sagas/{id}/retry", tag = "sagas", params(("id" = Uuid, Path)),
    request_body = RetrySaga,
    responses(
        (status = 202, description = "The step runs again", body = SagaView),
        (status = 404, description = "No such saga", body = ErrorBody),
        (status = 409, description = "The saga is neither stuck nor waiting, or moved on meanwhile; nothing changed", body = ErrorBody),
        (status = 422, description = "No reason, or one over 1024 characters", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry_saga(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(id): ApiPath,
    JsonBody { value: req, .. }: JsonBody<RetrySaga>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    check_reason(&req.reason).map_err(|e| ApiError::Validation(vec![e]))?;
    act(&state, id, Action::Retry, &actor, &req.reason).await?;
    let v = full_view(&state, id)
        .await?
        .ok_or(ApiError::NotFound("saga"))?;
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// Close a stuck saga that a person settled by hand.
///
/// `completed`: what the saga was for stands; `compensated`: what it did was undone by hand.
/// Recorded as `SagaResolved` (actor, reason, and what the saga still held), then `SagaCompleted`
/// or `SagaCompensated` as for any finished saga. The answer lists what the saga still holds — an
/// active inventory claim, money captured and not refunded, an authorization neither captured nor
/// voided — which sagad no longer looks after.
#[utoipa::path(post, path = "/v1/sagas/{id}/resolve", tag = "sagas", params(("id" = Uuid, Path)),
    request_body = ResolveSaga,
    responses(
        (status = 200, description = "Closed; what it still holds", body = Resolved),
        (status = 404, description = "No such saga", body = ErrorBody),
        (status = 409, description = "The saga is not stuck, or moved on meanwhile; nothing changed", body = ErrorBody),
        (status = 422, description = "An unknown outcome, no reason, or one over 1024 characters", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resolve_saga(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(id): ApiPath,
    JsonBody { value: req, .. }: JsonBody<ResolveSaga>,
) -> Result<Json<Resolved>, ApiError> {
    let id = parse_id(&id)?;
    let mut problems = Vec::new();
    let outcome = Resolution::parse(&req.outcome);
    if outcome.is_none() {
        problems.push(FieldError {
            field: "outcome".into(),
            message: format!(
                "unknown outcome {:?}; use completed or compensated",
                req.outcome
            ),
        });
    }
    problems.extend(check_reason(&req.reason).err());
    let Some(outcome) = outcome.filter(|_| problems.is_empty()) else {
        return Err(ApiError::Validation(problems));
    };
    let held = act(&state, id, Action::Resolve(outcome), &actor, &req.reason)
        .await?
        .unwrap_or_default();
    let saga = full_view(&state, id)
        .await?
        .ok_or(ApiError::NotFound("saga"))?;
    Ok(Json(Resolved {
        saga,
        still_held: held,
    }))
}

/// Retry every stuck saga of a step, or stuck since a time.
///
/// Each matching saga is retried as by `POST /v1/sagas/{id}/retry` (one `SagaRetried` event
/// each), at most 500 per call, oldest first.
#[utoipa::path(post, path = "/v1/sagas/retry", tag = "sagas", request_body = BulkRetry,
    responses(
        (status = 200, description = "The sagas retried", body = BulkRetried),
        (status = 422, description = "Neither `step` nor `since`, an unknown step, no reason, or one over 1024 characters", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry_stuck(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    JsonBody { value: req, .. }: JsonBody<BulkRetry>,
) -> Result<Json<BulkRetried>, ApiError> {
    bulk_retry(&state, &actor, &req).await.map(Json)
}

/// Retries every stuck saga `req` selects, at most [`BULK_LIMIT`], as `actor`.
pub(crate) async fn bulk_retry(
    state: &AppState,
    actor: &str,
    req: &BulkRetry,
) -> Result<BulkRetried, ApiError> {
    let mut problems = Vec::new();
    if req.step.is_none() && req.since.is_none() {
        problems.push(FieldError {
            field: "step".into(),
            message:
                "give `step`, `since` or both: a bulk retry never takes every stuck saga unasked"
                    .into(),
        });
    }
    if let Some(step) = &req.step {
        let known = state.registry.names().iter().any(|n| {
            state
                .registry
                .latest(n)
                .is_some_and(|d| d.steps.iter().any(|s| &s.name == step))
        });
        if !known {
            problems.push(FieldError {
                field: "step".into(),
                message: format!("no saga has a step {step:?}"),
            });
        }
    }
    if let Some(since) = &req.since
        && !storable_time(since)
    {
        problems.push(FieldError {
            field: "since".into(),
            message: "a time between the years 1 and 9999".into(),
        });
    }
    problems.extend(check_reason(&req.reason).err());
    if !problems.is_empty() {
        return Err(ApiError::Validation(problems));
    }
    let rows = store::stuck(&state.pool, req.step.as_deref(), req.since, BULK_LIMIT + 1).await?;
    let more = rows.len() as i64 > BULK_LIMIT;
    let (mut retried, mut skipped) = (Vec::new(), Vec::new());
    for row in rows.iter().take(BULK_LIMIT as usize) {
        match act_on(state, row, Action::Retry, actor, &req.reason).await {
            Ok(_) => retried.push(row.id),
            Err(ApiError::Conflict(_)) => skipped.push(row.id),
            Err(e) => return Err(e),
        }
    }
    Ok(BulkRetried {
        retried,
        skipped,
        more,
    })
}

/// An operator's cancellation of a stuck saga (see `sagas::cancel_saga`).
pub(super) async fn cancel_stuck(
    state: &AppState,
    id: SagaId,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    let reason = reason.unwrap_or(operator::OPERATOR_CANCEL);
    act(state, id, Action::Cancel, actor, reason).await?;
    Ok(())
}

/// Checks a cancellation's body, reporting every problem: who asks (`None`: not said), and the
/// reason, trimmed.
pub(super) fn check_cancel(
    req: &CancelSaga,
) -> Result<(Option<CancelRequester>, Option<String>), ApiError> {
    let mut errors = Vec::new();
    let by = match &req.by {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if CancelRequester::parse(s).is_some() => {
            CancelRequester::parse(s)
        }
        Some(other) => {
            errors.push(FieldError {
                field: "by".into(),
                message: format!("must be one of guest, host, operator, got {other}"),
            });
            None
        }
    };
    if let Some(r) = &req.reason
        && let Err(e) = check_reason(r)
    {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok((by, req.reason.as_deref().map(|r| r.trim().to_owned())))
    } else {
        Err(ApiError::Validation(errors))
    }
}
