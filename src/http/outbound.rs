//! `/v1/webhook-endpoints` and `/v1/webhook-deliveries`: subscriptions, secret rotation, the
//! delivery log, redelivery and dead-letter redrive.

use super::ErrorBody;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::storable_time;
use super::sagas::list_limit;
use super::{ApiError, ApiPath, ApiQuery, AppState, JsonBody};
use crate::domain::{DeliveryId, EndpointId, FieldError};
use crate::outbound::{catalog, delivery::webhook_id, new_secret};
use crate::store::outbound::{
    self as store, AttemptRow, DeliveryRow, DeliveryStatus, EndpointPatch, EndpointRow,
    NewEndpoint, Redeliver,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/webhook-endpoints",
            post(create_endpoint).get(list_endpoints),
        )
        .route(
            "/v1/webhook-endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route(
            "/v1/webhook-endpoints/{id}/rotate-secret",
            post(rotate_secret),
        )
        .route(
            "/v1/webhook-endpoints/{id}/deliveries",
            get(list_deliveries),
        )
        .route("/v1/webhook-endpoints/{id}/redrive", post(redrive))
        .route("/v1/webhook-deliveries/{id}", get(get_delivery))
        .route("/v1/webhook-deliveries/{id}/redeliver", post(redeliver))
}

/// Body of `POST /v1/webhook-endpoints`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where deliveries are POSTed: https (http only where the server allows it), at most
    /// 2048 bytes, a host that resolves to public addresses only.
    #[schema(format = "uri", max_length = 2048)]
    pub url: String,
    /// Exact types (`booking.confirmed`), category wildcards (`booking.*`) or `*`; 1 to 32.
    #[schema(schema_with = event_types_schema)]
    pub event_types: Vec<String>,
    /// At most 1024 characters.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most attempts per second, over every sagad process.
    #[schema(minimum = 1)]
    pub rate_limit: Option<i32>,
}

/// `event_types`: the catalog's patterns, 1 to [`MAX_EVENT_TYPES`] of them.
fn event_types_schema() -> utoipa::openapi::schema::Array {
    event_types_array().build()
}

/// As [`event_types_schema`], or null (left alone) in a PATCH.
fn event_types_or_null_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{SchemaType, Type};
    event_types_array()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .build()
}

fn event_types_array() -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let mut patterns = vec!["*".to_owned()];
    for t in catalog::public_types() {
        let category = format!("{}.*", t.split('.').next().unwrap_or_default());
        if !patterns.contains(&category) {
            patterns.push(category);
        }
    }
    patterns.extend(catalog::public_types().map(str::to_owned));
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(patterns)),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_EVENT_TYPES))
}

fn yes() -> bool {
    true
}

/// Body of `PATCH /v1/webhook-endpoints/{id}`; absent fields are left alone, `rate_limit: null`
/// removes the limit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    #[schema(format = "uri", max_length = 2048)]
    pub url: Option<String>,
    #[schema(schema_with = event_types_or_null_schema)]
    pub event_types: Option<Vec<String>>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    pub rate_limit: Option<Option<i32>>,
}

/// Tells `"rate_limit": null` (Some(None)) from an absent field (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i32>>, D::Error> {
    Option::<i32>::deserialize(d).map(Some)
}

/// The creation response: the endpoint and, this once, its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: EndpointRow,
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    pub secret: String,
    /// Until then the previous secret signs alongside the new one.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// Longest endpoint URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Most `event_types` one endpoint may list (the catalog has fewer types and categories).
pub const MAX_EVENT_TYPES: usize = 32;
/// Longest endpoint description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

fn parse_id<Id: From<Uuid>>(raw: &str, what: &str) -> Result<Id, ApiError> {
    Uuid::parse_str(raw)
        .map(Id::from)
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a {what} id (a UUID)")))
}

fn field(name: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.into(),
        message: message.into(),
    }
}

async fn check_url(state: &AppState, url: &str, errors: &mut Vec<FieldError>) -> String {
    if url.len() > MAX_URL_LEN {
        errors.push(field(
            "url",
            format!("must be at most {MAX_URL_LEN} bytes long"),
        ));
        return String::new();
    }
    match state.outbound.check_url(url).await {
        Ok(u) => u.to_string(),
        Err(e) => {
            errors.push(field("url", e));
            String::new()
        }
    }
}

fn check_types(types: &[String], errors: &mut Vec<FieldError>) {
    if types.is_empty() {
        errors.push(field(
            "event_types",
            "must name at least one event type (or `*`)",
        ));
    }
    if types.len() > MAX_EVENT_TYPES {
        errors.push(field(
            "event_types",
            format!(
                "may list at most {MAX_EVENT_TYPES} patterns (use `category.*` or `*`), got {}",
                types.len()
            ),
        ));
        return;
    }
    for (i, t) in types.iter().enumerate() {
        if let Err(e) = catalog::validate_pattern(t) {
            errors.push(field(&format!("event_types[{i}]"), e));
        }
    }
}

fn check_description(description: &str, errors: &mut Vec<FieldError>) {
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        errors.push(field(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters long"),
        ));
    }
}

fn check_rate_limit(r: Option<i32>, errors: &mut Vec<FieldError>) {
    if let Some(r) = r
        && r < 1
    {
        errors.push(field(
            "rate_limit",
            "must be at least 1 (attempts per second)",
        ));
    }
}

#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "webhooks", request_body = CreateEndpoint,
    responses((status = 201, description = "Created; `secret` is shown this once", body = CreatedEndpoint),
              (status = 422, description = "Invalid fields: a refused URL (scheme, length, an address the SSRF guard refuses), unknown or too many event types, a description too long, a rate limit below 1", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    JsonBody { value: req, .. }: JsonBody<CreateEndpoint>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let url = check_url(&state, &req.url, &mut errors).await;
    check_types(&req.event_types, &mut errors);
    check_description(&req.description, &mut errors);
    check_rate_limit(req.rate_limit, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let secret = new_secret();
    let mut tx = state.pool.begin().await?;
    let endpoint = store::insert_endpoint(
        &mut tx,
        &NewEndpoint {
            url,
            description: req.description,
            event_types: req.event_types,
            enabled: req.enabled,
            rate_limit: req.rate_limit,
        },
        &secret,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(endpoint_id = %endpoint.id, url = %endpoint.url, "webhook endpoint created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpoint { endpoint, secret }),
    )
        .into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointRow>,
}

#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "webhooks",
    responses((status = 200, description = "Every endpoint", body = EndpointList)), security(("bearer" = [])))]
pub async fn list_endpoints(State(state): State<AppState>) -> Result<Json<EndpointList>, ApiError> {
    Ok(Json(EndpointList {
        endpoints: store::list_endpoints(&state.pool).await?,
    }))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The endpoint", body = EndpointRow),
              (status = 404, description = "No such endpoint", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<EndpointRow>, ApiError> {
    let id: EndpointId = parse_id(&id, "webhook endpoint")?;
    store::get_endpoint(&state.pool, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    request_body = UpdateEndpoint,
    responses((status = 200, description = "The endpoint as updated", body = EndpointRow),
              (status = 404, description = "No such endpoint", body = ErrorBody),
              (status = 422, description = "Invalid fields (as on creation)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    JsonBody { value: req, .. }: JsonBody<UpdateEndpoint>,
) -> Result<Json<EndpointRow>, ApiError> {
    let id: EndpointId = parse_id(&id, "webhook endpoint")?;
    let mut errors = Vec::new();
    let url = match &req.url {
        Some(u) => Some(check_url(&state, u, &mut errors).await),
        None => None,
    };
    if let Some(t) = &req.event_types {
        check_types(t, &mut errors);
    }
    if let Some(d) = &req.description {
        check_description(d, &mut errors);
    }
    check_rate_limit(req.rate_limit.flatten(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let patch = EndpointPatch {
        url,
        description: req.description,
        event_types: req.event_types,
        enabled: req.enabled,
        rate_limit: req.rate_limit,
    };
    let row = store::update_endpoint(&state.pool, id, &patch)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    if patch.enabled == Some(true) {
        // Deliveries that waited while it was disabled are due now.
        store::notify(&state.pool).await?;
    }
    Ok(Json(row))
}

#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted, with its deliveries"),
              (status = 404, description = "No such endpoint", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    let id: EndpointId = parse_id(&id, "webhook endpoint")?;
    if store::delete_endpoint(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook endpoint"))
    }
}

#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The new secret, shown this once", body = RotatedSecret),
              (status = 404, description = "No such endpoint", body = ErrorBody)), security(("bearer" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<RotatedSecret>, ApiError> {
    let id: EndpointId = parse_id(&id, "webhook endpoint")?;
    rotate(&state, id).await.map(Json)
}

/// Gives the endpoint a new signing secret; the previous one signs too until it expires.
pub(crate) async fn rotate(state: &AppState, id: EndpointId) -> Result<RotatedSecret, ApiError> {
    let secret = new_secret();
    let mut tx = state.pool.begin().await?;
    let expires = store::rotate_secret(&mut tx, id, &secret, state.outbound.secret_overlap)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    tx.commit().await?;
    Ok(RotatedSecret {
        secret,
        previous_secret_expires_at: expires,
    })
}

/// A delivery as the API shows it: with its `webhook-id` and, singly, its attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    #[serde(flatten)]
    pub delivery: DeliveryRow,
    pub webhook_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptRow>>,
}

impl DeliveryView {
    fn new(delivery: DeliveryRow, attempts: Option<Vec<AttemptRow>>) -> Self {
        Self {
            webhook_id: webhook_id(delivery.id),
            delivery,
            attempts,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// pending, delivering, delivered or dead.
    #[param(pattern = "^(pending|delivering|delivered|dead)$")]
    pub status: Option<String>,
    /// Only deliveries created before this time (the previous page's last `created_at`).
    pub before: Option<DateTime<Utc>>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path), DeliveryParams),
    responses((status = 200, description = "The endpoint's deliveries, newest first", body = DeliveryList),
              (status = 400, description = "An unknown status, a limit outside 1–500, a time outside the years 1–9999, a NUL character or a malformed query string", body = ErrorBody),
              (status = 404, description = "No such endpoint", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    ApiQuery(q): ApiQuery<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let id: EndpointId = parse_id(&id, "webhook endpoint")?;
    if let Some(before) = &q.before
        && !storable_time(before)
    {
        return Err(ApiError::BadRequest(format!(
            "before {before} is out of range: use a time between the years 1 and 9999"
        )));
    }
    let status = match q.status.as_deref().map(|s| (s, DeliveryStatus::parse(s))) {
        None => None,
        Some((_, Some(status))) => Some(status),
        Some((s, None)) => {
            return Err(ApiError::BadRequest(format!(
                "status {s:?} is not one of pending, delivering, delivered, dead"
            )));
        }
    };
    if store::get_endpoint(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    let limit = list_limit(q.limit)?;
    let rows = store::list_deliveries(&state.pool, id, status, q.before, limit).await?;
    Ok(Json(DeliveryList {
        deliveries: rows
            .into_iter()
            .map(|d| DeliveryView::new(d, None))
            .collect(),
    }))
}

#[utoipa::path(get, path = "/v1/webhook-deliveries/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The delivery with every attempt", body = DeliveryView),
              (status = 404, description = "No such delivery", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<DeliveryView>, ApiError> {
    let id: DeliveryId = parse_id(&id, "webhook delivery")?;
    let d = store::get_delivery(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("webhook delivery"))?;
    let attempts = store::attempts_of(&state.pool, id).await?;
    Ok(Json(DeliveryView::new(d, Some(attempts))))
}

#[utoipa::path(post, path = "/v1/webhook-deliveries/{id}/redeliver", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 202, description = "Queued for delivery", body = DeliveryView),
              (status = 404, description = "No such delivery", body = ErrorBody),
              (status = 409, description = "An attempt is in flight", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn redeliver(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Response, ApiError> {
    let id: DeliveryId = parse_id(&id, "webhook delivery")?;
    queue_again(&state, id).await?;
    let d = store::get_delivery(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("webhook delivery"))?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryView::new(d, None))).into_response())
}

/// Queues a delivered or dead delivery for a fresh retry schedule (or hurries a pending one),
/// and wakes the delivery workers.
pub(crate) async fn queue_again(state: &AppState, id: DeliveryId) -> Result<(), ApiError> {
    match store::redeliver(&state.pool, id).await? {
        Redeliver::NotFound => Err(ApiError::NotFound("webhook delivery")),
        Redeliver::InFlight => Err(ApiError::Conflict(
            "the delivery is being attempted right now; try again when the attempt is recorded"
                .into(),
        )),
        Redeliver::Queued => Ok(store::notify(&state.pool).await?),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Redeliver every dead letter of the endpoint that died at or after this time.
    pub since: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedriveResult {
    pub queued: u64,
}

#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/redrive", tag = "webhooks", params(("id" = Uuid, Path)),
    request_body = RedriveRequest,
    responses((status = 200, description = "How many dead letters were queued again", body = RedriveResult),
              (status = 404, description = "No such endpoint", body = ErrorBody)), security(("bearer" = [])))]
pub async fn redrive(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    JsonBody { value: req, .. }: JsonBody<RedriveRequest>,
) -> Result<Json<RedriveResult>, ApiError> {
    let id: EndpointId = parse_id(&id, "webhook endpoint")?;
    if !storable_time(&req.since) {
        return Err(ApiError::Validation(vec![field(
            "since",
            "must be a time between the years 1 and 9999",
        )]));
    }
    if store::get_endpoint(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    let queued = store::redrive_dead(&state.pool, id, req.since).await?;
    Ok(Json(RedriveResult { queued }))
}
