//! `/v1/sagas`: start a saga, read it, its events, list sagas, cancel one.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::as_of::{self, AsOf, AsOfParam};
use super::extract::{MaybeJsonBody, storable_time};
use super::operator::{self, CancelRequester, CancelSaga};
use super::{Actor, ApiError, ApiPath, ApiQuery, AppState, ErrorBody, JsonBody};
use crate::domain::SagaId;
use crate::domain::{BookingInput, FieldError, RawBookingInput};
use crate::engine::model::SagaStatus;
use crate::engine::plan;
use crate::engine::start::{self, Starting};
use crate::events::{CancelledBy, Event, NewEvent};
use crate::store::bookings::{self, Booking};
use crate::store::events::{self, EventRecord};
use crate::store::progress::InsertOutcome;
use crate::store::sagas::{self, CancelOutcome, ListFilter, SagaRow, StepRecord};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sagas", post(start_saga).get(list_sagas))
        .route("/v1/sagas/{id}", get(get_saga))
        .route("/v1/sagas/{id}/events", get(saga_events))
        .route("/v1/sagas/{id}/cancel", post(cancel_saga))
}

/// Body of `POST /v1/sagas`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSaga {
    /// The saga to run, e.g. `booking`.
    #[schema(pattern = "^[a-z][a-z0-9_]*$", max_length = 64)]
    pub saga: String,
    pub input: RawBookingInput,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParam {
    /// Wait up to this long (e.g. `2s`, `500ms`; at most the server's maximum, 30s by default)
    /// for the saga to finish before answering.
    #[param(pattern = "^[0-9]{1,9}(ms|s|m|h)$")]
    pub wait: Option<String>,
}

/// A saga as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaView {
    pub id: SagaId,
    pub saga: String,
    /// The definition version this saga runs on (it finishes on it, whatever is deployed later).
    pub version: i32,
    pub status: SagaStatus,
    /// Step being run (`running`, `waiting`) or undone (`compensating`); null once finished.
    pub current_step: Option<String>,
    /// Attempts made of the current step.
    pub attempt: i32,
    pub failure: Option<Failure>,
    pub cancel_requested: bool,
    pub wait: Option<WaitView>,
    /// Why a `running` or `compensating` saga waits: `dependency:stripe` or `dependency:notify`
    /// while its next action's dependency has an open circuit breaker (it spends no attempt, and
    /// is woken when the breaker closes, or at its step's give-up deadline).
    pub wait_reason: Option<String>,
    /// Since when it is paused; null once woken (the reason stays until its next step ran).
    pub paused_since: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub url: String,
    pub input: serde_json::Value,
    /// Step outputs so far (PaymentIntent id, hold id, confirmation code…).
    pub context: serde_json::Value,
    /// Each step's attempts and last error, forward steps first, then compensations in the order run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking: Option<Booking>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Failure {
    pub step: Option<String>,
    pub reason: String,
}

/// Why a saga waits: a `waiting` saga, or a `running` or `compensating` one paused on a
/// dependency (`paused_since` set).
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitView {
    /// Why the saga waits: `payment_authentication` (the guest's 3-D Secure, until the
    /// PaymentIntent changes or the deadline), `dependency:stripe` or `dependency:notify` (paused
    /// while that dependency's circuit breaker is open), otherwise what it waits on.
    pub reason: String,
    /// What a `waiting` saga waits for (null for a paused one).
    pub key: Option<String>,
    /// When the wait ends at the latest: the 3-D Secure deadline; for a paused forward step its
    /// give-up deadline (then it fails `dependency_unavailable`), null for a paused compensation.
    pub deadline: Option<DateTime<Utc>>,
}

/// Why a saga parked on `key` waits.
pub(super) fn wait_reason(key: Option<&str>) -> String {
    match key {
        Some(k) if k.starts_with("stripe:payment_intent:") => "payment_authentication".into(),
        Some(k) => k.to_owned(),
        None => "deadline".into(),
    }
}

fn view(row: SagaRow, step_names: &[String]) -> SagaView {
    let status = row.status;
    let current_step = if status.is_terminal() {
        None
    } else {
        step_names.get(row.current_step.max(0) as usize).cloned()
    };
    SagaView {
        url: format!("/v1/sagas/{}", row.id),
        id: row.id,
        saga: row.saga_name,
        version: row.saga_version,
        status,
        current_step,
        attempt: row.attempt,
        failure: row.failure_reason.map(|reason| Failure {
            step: row.failure_step,
            reason,
        }),
        cancel_requested: row.cancel_requested,
        wait: if status == SagaStatus::Waiting {
            Some(WaitView {
                reason: wait_reason(row.wait_key.as_deref()),
                key: row.wait_key,
                deadline: row.wait_deadline,
            })
        } else {
            // Paused on a dependency: until the breaker closes, or its step's give-up deadline.
            row.paused_since
                .and(row.wait_reason.clone())
                .map(|reason| WaitView {
                    reason,
                    key: None,
                    deadline: row.next_run_at,
                })
        },
        wait_reason: row.wait_reason,
        paused_since: row.paused_since,
        next_run_at: row.next_run_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
        input: row.input,
        context: row.context,
        steps: None,
        booking: None,
    }
}

pub(super) async fn full_view(state: &AppState, id: SagaId) -> Result<Option<SagaView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let Some(row) = sagas::get(&mut conn, id).await? else {
        return Ok(None);
    };
    let names = match state.registry.get(&row.saga_name, row.saga_version).await {
        Ok(def) => def.steps.iter().map(|s| s.name.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let steps = sagas::steps(&mut conn, id).await?;
    let booking = bookings::get(&mut conn, id).await?;
    let mut v = view(row, &names);
    v.steps = Some(steps);
    v.booking = booking;
    Ok(Some(v))
}

/// Parses `2s`, `1500ms`, `1m`; capped by the server's maximum.
pub(super) fn parse_wait(raw: &str, max: Duration) -> Result<Duration, ApiError> {
    crate::engine::definition::duration::parse(raw)
        .ok()
        .map(|d| d.min(max))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid wait {raw:?}: use a duration such as 2s or 500ms"
            ))
        })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1-255 visible ASCII characters".into())
        })?;
    Ok(Some(s.to_owned()))
}

/// Start a saga.
///
/// Validates the input, persists the saga and its first event in one transaction, and wakes a
/// worker. With `Idempotency-Key`, a repeated request (same key, same body) returns the saga the
/// first one started; the same key with another body is refused with 422.
#[utoipa::path(post, path = "/v1/sagas", tag = "sagas", request_body = StartSaga, params(WaitParam,
    ("Idempotency-Key" = Option<String>, Header, description = "Makes the start safe to retry")),
    responses(
        (status = 202, description = "Saga accepted (still running)", body = SagaView),
        (status = 200, description = "Saga finished within `wait`", body = SagaView),
        (status = 400, description = "Malformed JSON or a repeated key, a malformed `wait` or Idempotency-Key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid input, unknown saga, or idempotency key reused with another body", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start_saga(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WaitParam>,
    JsonBody { raw, value: req }: JsonBody<StartSaga>,
) -> Result<Response, ApiError> {
    let wait = q
        .wait
        .as_deref()
        .map(|w| parse_wait(w, state.max_wait))
        .transpose()?;
    let key = idempotency_key(&headers)?;
    let def = state.registry.latest(&req.saga).ok_or_else(|| {
        ApiError::Validation(vec![FieldError {
            field: "saga".into(),
            message: format!(
                "unknown saga {:?}; known sagas: {}",
                req.saga,
                state.registry.names().join(", ")
            ),
        }])
    })?;
    let input = req
        .input
        .validate(&state.booking_rules, state.clock.db_now().date_naive())
        .map_err(ApiError::Validation)?;
    let fingerprint = hex::encode(Sha256::digest(raw.to_string().as_bytes()));
    let input_json = serde_json::to_value(&input).map_err(anyhow::Error::from)?;
    let id = SagaId::new();

    // A free worker (or a place in the local queue) in this process takes the saga: it is inserted
    // already leased to it.
    let direct = state
        .dispatch
        .as_ref()
        .and_then(|d| d.try_reserve().map(|r| (d, r)));
    let event = NewEvent {
        event: Event::BookingRequested {
            listing_id: input.listing_id.clone(),
            guest_id: input.guest_id.clone(),
            check_in: input.check_in,
            check_out: input.check_out,
            amount: input.amount,
            currency: input.currency.clone(),
        },
        causation_id: key.clone(),
        step: None,
        attempt: None,
        worker: None,
    };
    // One statement, atomic on its own, which also places the hold when the dates are free.
    // Without a free worker here, a worker (in any process) is woken to claim it.
    let waiting = std::time::Instant::now();
    let mut conn = state.kept.acquire().await?;
    crate::telemetry::db_acquired("start_saga", waiting.elapsed());
    let starting = Starting {
        def: &def,
        id,
        input: &input,
        input_json: &input_json,
        idempotency_key: key.as_deref(),
        fingerprint: &fingerprint,
        leased_to: direct
            .as_ref()
            .map(|(d, _)| (d.worker_id.as_str(), d.lease)),
        now: state.clock.db_now(),
    };
    let started = start::start(&mut conn, &starting, event, direct.is_none()).await?;
    conn.completed();
    let mut fresh = None;
    let id = match started.outcome {
        InsertOutcome::Existing {
            id: existing,
            fingerprint: f,
        } => {
            if f != fingerprint {
                return Err(ApiError::IdempotencyMismatch);
            }
            existing
        }
        InsertOutcome::Created(row) => {
            crate::telemetry::saga_started(&def.name);
            tracing::info!(saga_id = %id, saga = %def.name, direct = direct.is_some(), held = !started.ran_ahead.is_empty(), "saga started");
            let names: Vec<String> = def.steps.iter().map(|s| s.name.clone()).collect();
            // The start's statement wrote the step rows and the booking with the saga: their
            // timestamps are its transaction's, the saga's `created_at`.
            let at = row.created_at;
            let mut v = view((*row).clone(), &names);
            v.steps = Some(
                started
                    .ran_ahead
                    .iter()
                    .map(|r| StepRecord {
                        step_index: r.index,
                        phase: r.phase,
                        step_name: r.name.clone(),
                        status: r.status,
                        attempts: r.attempts,
                        last_error: r.error.clone(),
                        started_at: at,
                        finished_at: Some(at),
                    })
                    .collect(),
            );
            v.booking = Some(Booking {
                saga_id: id,
                listing_id: input.listing_id.clone(),
                guest_id: input.guest_id.clone(),
                check_in: input.check_in,
                check_out: input.check_out,
                amount: input.amount,
                currency: input.currency.clone(),
                status: started.booking_status.into(),
                payment_intent_id: None,
                confirmation_code: None,
                cancel_reason: None,
                cancellation_policy: input.cancellation_policy,
                cancellation: None,
                created_at: row.created_at,
                updated_at: row.created_at,
            });
            fresh = Some(v);
            if let Some((d, slot)) = direct
                && let Err(row) = d.hand_over(
                    crate::engine::Leased {
                        row: *row,
                        since: waiting,
                    },
                    slot,
                )
            {
                // The engine is stopping: give the lease back for another process.
                sagas::release_lease(&state.pool, row, &d.worker_id).await?;
            }
            id
        }
    };

    let v = match (wait, fresh) {
        // Just started and nobody waits: the state is known without reading it back.
        (None, Some(v)) => v,
        (wait, _) => {
            if let Some(wait) = wait {
                wait_until_finished(&state, id, wait).await?;
            }
            full_view(&state, id)
                .await?
                .ok_or(ApiError::NotFound("saga"))?
        }
    };
    let status = if v.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = v.url.clone();
    Ok((status, [(axum::http::header::LOCATION, location)], Json(v)).into_response())
}

/// Returns when the saga is terminal or `wait` has passed.
async fn wait_until_finished(state: &AppState, id: SagaId, wait: Duration) -> Result<(), ApiError> {
    let mut rx = state.finished.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if sagas::status(&state.pool, id)
            .await?
            .is_none_or(SagaStatus::is_terminal)
        {
            return Ok(());
        }
        // Look again at least every second: a notification can be missed (while the LISTEN
        // connection reconnects, say).
        let recheck = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        loop {
            match tokio::time::timeout_at(recheck, rx.recv()).await {
                Err(_) => break,
                Ok(Ok(done)) if done == id => break,
                Ok(Ok(_)) => continue,
                // Missed notifications: look at the database again.
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep_until(
                        deadline.min(tokio::time::Instant::now() + Duration::from_millis(50)),
                    )
                    .await;
                    break;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
    }
}

pub(super) fn parse_id(raw: &str) -> Result<SagaId, ApiError> {
    raw.parse::<SagaId>()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a saga id (a UUID)")))
}

/// A saga: status, current step, each step's attempts and errors, timestamps, the booking.
///
/// With `as_of`, the saga as its events left it then (a `SagaAsOf`: status, current step,
/// attempt, failure, wait, what each step's events recorded, and the booking then), folded from
/// its events up to that time or version.
#[utoipa::path(get, path = "/v1/sagas/{id}", tag = "sagas", params(("id" = Uuid, Path), AsOfParam),
    responses((status = 200, description = "The saga (a `SagaAsOf` with `as_of`)", body = SagaView),
              (status = 400, description = "The id is not a UUID, or `as_of` is neither a version nor an RFC 3339 timestamp", body = ErrorBody),
              (status = 404, description = "No such saga, or `as_of` is before its first event or past its last version", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_saga(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    ApiQuery(q): ApiQuery<AsOfParam>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if let Some(as_of) = AsOf::from_param(q.as_of.as_deref())? {
        return Ok(Json(as_of::saga_as_of(&state, id, as_of).await?).into_response());
    }
    full_view(&state, id)
        .await?
        .map(|v| Json(v).into_response())
        .ok_or(ApiError::NotFound("saga"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventRecord>,
}

/// A saga's events, in order.
#[utoipa::path(get, path = "/v1/sagas/{id}/events", tag = "sagas", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The saga's events", body = EventList),
              (status = 404, description = "No such saga", body = ErrorBody)), security(("bearer" = [])))]
pub async fn saga_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<EventList>, ApiError> {
    let id = parse_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    let events = events::for_aggregate(&mut conn, id.0).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound("saga"));
    }
    Ok(Json(EventList { events }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// running, compensating, waiting, completed, compensated or stuck. `waiting` also lists the
    /// sagas paused on a dependency (status `running` or `compensating`, with `wait`).
    #[param(inline, value_type = Option<SagaStatus>)]
    pub status: Option<String>,
    /// Saga name, e.g. `booking`.
    #[param(pattern = "^[a-z][a-z0-9_]*$", max_length = 64)]
    pub saga: Option<String>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]+$", max_length = 256)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SagaPage {
    pub sagas: Vec<SagaView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

pub(super) fn encode_cursor(at: DateTime<Utc>, id: SagaId) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}|{id}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    ))
}

/// A list's page size: 1–500, 50 when left out.
pub(super) fn list_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 500, got {limit}"
        )));
    }
    Ok(limit)
}

/// The keyset cursor a list continues after, when one is given.
pub(super) fn cursor_param(raw: Option<&str>) -> Result<Option<(DateTime<Utc>, SagaId)>, ApiError> {
    raw.map(|c| decode_cursor(c).ok_or_else(|| ApiError::BadRequest("invalid cursor".into())))
        .transpose()
}

pub(super) fn decode_cursor(raw: &str) -> Option<(DateTime<Utc>, SagaId)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let (at, id) = text.split_once('|')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    storable_time(&at).then_some((at, id.parse::<SagaId>().ok()?))
}

/// `[a-z][a-z0-9_]*`, at most 64 characters, as definitions name their sagas.
fn is_saga_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Sagas, newest first, with keyset pagination.
#[utoipa::path(get, path = "/v1/sagas", tag = "sagas", params(ListParams),
    responses((status = 200, description = "A page of sagas", body = SagaPage),
              (status = 400, description = "An unknown status, a malformed saga name, a limit outside 1–500, an invalid cursor, a NUL character or a malformed query string", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_sagas(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<SagaPage>, ApiError> {
    let status = p
        .status
        .as_deref()
        .map(|s| {
            SagaStatus::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown status {s:?}; use one of running, compensating, waiting, completed, compensated, stuck"
                ))
            })
        })
        .transpose()?;
    if let Some(name) = &p.saga
        && !is_saga_name(name)
    {
        return Err(ApiError::BadRequest(format!(
            "saga {name:?} is not a saga name ([a-z][a-z0-9_]*, at most 64 characters)"
        )));
    }
    let limit = list_limit(p.limit)?;
    let before = cursor_param(p.cursor.as_deref())?;
    let rows = sagas::list(
        &state.pool,
        &ListFilter {
            status,
            saga_name: p.saga,
            before,
            limit: limit + 1,
        },
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.into_iter().take(limit as usize) {
        let names = match state.registry.get(&row.saga_name, row.saga_version).await {
            Ok(def) => def.steps.iter().map(|s| s.name.clone()).collect(),
            Err(_) => Vec::new(),
        };
        out.push(view(row, &names));
    }
    let next_cursor = if more {
        out.last().map(|v| encode_cursor(v.created_at, v.id))
    } else {
        None
    };
    Ok(Json(SagaPage {
        sagas: out,
        next_cursor,
    }))
}

/// Cancel a saga: compensate whatever it has done (refund, void, release) and cancel the booking.
///
/// A running, waiting or completed saga is cancelled by whoever `by` names (a guest when the body
/// is empty or has no `by`). A guest gets what the booking's cancellation policy allows at the
/// database's current date (UTC) against check-in; a host or an operator cancellation refunds in
/// full; never more than was captured. Who, why and the refund with its rule are recorded on the
/// `BookingCancelled` event and shown on the booking. The first cancellation of a saga stands:
/// concurrent ones get 409, and there is one refund. A stuck saga is cancelled by an operator:
/// what is left is compensated (a stuck compensation runs again with fresh attempts and the ones
/// before it follow), recorded as `OperatorCancelled` with the actor (the API token's name) and
/// the reason. A saga that has reached a step whose failure parks it (`on_failure = "stuck"`), or
/// completed such a saga, is past what its compensations can undo (a date change once it has
/// swapped the booking's nights): it is not cancelled (409).
#[utoipa::path(post, path = "/v1/sagas/{id}/cancel", tag = "sagas", params(("id" = Uuid, Path)),
    request_body = Option<CancelSaga>,
    responses((status = 202, description = "Cancellation accepted; compensation follows", body = SagaView),
              (status = 400, description = "The id is not a UUID, or the body is not JSON", body = ErrorBody),
              (status = 404, description = "No such saga", body = ErrorBody),
              (status = 409, description = "Already cancelled or being cancelled, compensating or compensated, a stuck saga cancelled by other than an operator, one that moved on meanwhile, or one past what its compensations can undo (it reached a step with on_failure = stuck, or completed such a saga: a date change once swapped); nothing changed", body = ErrorBody),
              (status = 422, description = "An unknown `by`, or a reason that is empty or over 1024 characters; nothing changed", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_saga(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(id): ApiPath,
    MaybeJsonBody(req): MaybeJsonBody<CancelSaga>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    cancel(&state, &actor, id, req, "saga").await?;
    let v = full_view(&state, id)
        .await?
        .ok_or(ApiError::NotFound("saga"))?;
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// Requests the cancellation of saga `id` (see [`cancel_saga`]); `token` is the API token's name,
/// `what` names the saga in a 404 (`saga`, `booking`).
pub(crate) async fn cancel(
    state: &AppState,
    token: &str,
    id: SagaId,
    req: Option<CancelSaga>,
    what: &'static str,
) -> Result<(), ApiError> {
    let req = req.unwrap_or_default();
    let (requested_by, reason) = operator::check_cancel(&req)?;
    let by = CancelledBy::from(requested_by.unwrap_or(CancelRequester::Guest));
    let actor = match by {
        CancelledBy::Operator => token.to_owned(),
        other => other.to_string(),
    };
    let why = reason.clone().unwrap_or_else(|| plan::cancel_reason(by));
    let policies = state.policies.clone();
    // A saga's definition never changes under it: read outside the saga's lock.
    let row = sagas::get(&mut *state.pool.acquire().await?, id)
        .await?
        .ok_or(ApiError::NotFound(what))?;
    let def = state
        .registry
        .get(&row.saga_name, row.saga_version)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let irreversible = def.irreversible_from();
    let outcome = sagas::request_cancel(&state.pool, id, |basis| {
        let past = irreversible.is_some_and(|from| {
            basis.status == SagaStatus::Completed || basis.current_step as usize >= from
        });
        if past {
            return None;
        }
        // A booking saga's input; the days count from the database's date.
        let input = BookingInput::deserialize(basis.input).ok();
        let policy = input.as_ref().and_then(|i| i.cancellation_policy);
        let days = input.map_or(0, |i| (i.check_in - basis.today).num_days());
        Some(policies.decide(by, &actor, &why, policy, days))
    })
    .await?;
    match outcome {
        CancelOutcome::NotFound => return Err(ApiError::NotFound(what)),
        CancelOutcome::NotCancellable(SagaStatus::Stuck) => {
            if requested_by.is_some_and(|b| b != CancelRequester::Operator) {
                return Err(ApiError::Conflict(format!(
                    "saga is stuck; only an operator cancels a stuck saga (\"by\": \"operator\"), not the {by}"
                )));
            }
            operator::cancel_stuck(state, id, token, reason.as_deref()).await?;
        }
        CancelOutcome::NotCancellable(s) => {
            return Err(ApiError::Conflict(format!(
                "saga is {s}; it cannot be cancelled"
            )));
        }
        CancelOutcome::Irreversible(s) => {
            let step = irreversible
                .and_then(|i| def.step(i))
                .map_or("", |st| st.name.as_str());
            return Err(ApiError::Conflict(format!(
                "saga is {s} and past what its compensations can undo (from step `{step}` on it is \
                 not undone); it cannot be cancelled"
            )));
        }
        CancelOutcome::AlreadyRequested(s) => {
            return Err(ApiError::Conflict(format!(
                "a cancellation was already requested (the saga is {s}); it stands"
            )));
        }
        CancelOutcome::Requested(_) => {
            tracing::info!(saga_id = %id, by = %by, "cancellation requested");
        }
    }
    Ok(())
}
