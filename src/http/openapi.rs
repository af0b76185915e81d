//! The OpenAPI document, generated from the handlers' annotations and the types they use.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "sagad", description = "Durable saga orchestrator: bookings, payments and compensations on PostgreSQL."),
    paths(
        super::sagas::start_saga,
        super::sagas::get_saga,
        super::sagas::saga_events,
        super::sagas::list_sagas,
        super::sagas::cancel_saga,
        super::webhooks::create_endpoint,
        super::webhooks::list_endpoints,
        super::webhooks::get_endpoint,
        super::webhooks::update_endpoint,
        super::webhooks::delete_endpoint,
        super::webhooks::rotate_secret,
        super::webhooks::list_deliveries,
        super::webhooks::redrive,
        super::webhooks::get_delivery,
        super::webhooks::redeliver,
        super::health::healthz,
        super::health::readyz,
    ),
    modifiers(&BearerAuth),
    tags((name = "sagas", description = "Start, inspect and cancel sagas"),
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

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
