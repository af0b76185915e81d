//! The OpenAPI document, generated from the handlers' annotations and the types they use.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "sagad", description = "Durable saga orchestrator: bookings, payments and compensations on PostgreSQL.

Every `/v1` path needs `Authorization: Bearer <token>` and answers 401 without one, whether the route exists or not. \
Every refusal is a 4xx with the error body `{\"error\": {\"code\", \"message\", \"fields\"}}` and writes nothing. \
Request bodies are JSON of at most 64 KiB; an object that repeats a key is refused (400 `malformed_json`), \
and so is a NUL character in any string (422, the field named)."),
    paths(
        super::sagas::start_saga,
        super::sagas::get_saga,
        super::sagas::saga_events,
        super::sagas::list_sagas,
        super::sagas::cancel_saga,
        super::bookings::cancel_booking,
        super::feed::read_feed,
        super::operator::retry_saga,
        super::operator::resolve_saga,
        super::operator::retry_stuck,
        super::bookings::list_bookings,
        super::bookings::get_booking,
        super::changes::change_booking,
        super::listings::availability,
        super::listings::create_block,
        super::listings::remove_block,
        super::outbound::create_endpoint,
        super::outbound::list_endpoints,
        super::outbound::get_endpoint,
        super::outbound::update_endpoint,
        super::outbound::delete_endpoint,
        super::outbound::rotate_secret,
        super::outbound::list_deliveries,
        super::outbound::redrive,
        super::outbound::get_delivery,
        super::outbound::redeliver,
        super::health::healthz,
        super::health::readyz,
    ),
    components(schemas(super::as_of::SagaAsOf)),
    modifiers(&BearerAuth, &Refusals),
    tags((name = "sagas", description = "Start, inspect and cancel sagas; operators retry, resolve and cancel stuck ones"),
         (name = "events", description = "The global event feed"),
         (name = "bookings", description = "Bookings: list, filter and read one with its money and history"),
         (name = "listings", description = "A listing's availability and its host's blocks"),
         (name = "webhooks", description = "Outgoing webhook endpoints, deliveries and redelivery"),
         (name = "operations", description = "Health and readiness"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The refusals every `/v1` operation shares, each with the JSON error body: 401 without a valid
/// token, 400 for a malformed id, query string or JSON body (a duplicate key included), 413 and
/// 422 for a body, 500 for an internal failure. An operation's own description of a status wins.
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                let params = op.parameters.as_deref().unwrap_or_default();
                let in_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
                let in_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
                let body = op.request_body.is_some();
                let mut bad_request = Vec::new();
                if in_path {
                    bad_request.push("a malformed id (not a UUID)");
                }
                if in_query {
                    bad_request.push("a malformed query string or an invalid query parameter");
                }
                if body {
                    bad_request.push("a body that is not JSON or repeats a key (`malformed_json`)");
                }
                let mut refusals = vec![
                    ("401", "No valid bearer token (`unauthorized`)".to_owned()),
                    (
                        "500",
                        "Internal failure (`internal_error`; details in the server log)".to_owned(),
                    ),
                ];
                if !bad_request.is_empty() {
                    refusals.push(("400", format!("Refused: {}", bad_request.join("; "))));
                }
                if body {
                    refusals.push((
                        "413",
                        format!("Body larger than {} bytes", super::BODY_LIMIT),
                    ));
                    refusals.push((
                        "422",
                        "Invalid fields (`validation_failed`), every problem listed".to_owned(),
                    ));
                }
                for (status, description) in refusals {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(&description).into());
                }
            }
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
