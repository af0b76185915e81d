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
        super::health::healthz,
        super::health::readyz,
    ),
    modifiers(&BearerAuth),
    tags((name = "sagas", description = "Start, inspect and cancel sagas"),
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
