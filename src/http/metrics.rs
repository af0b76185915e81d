//! `GET /metrics` (Prometheus text): on the API's port, or on an address of its own
//! (`SAGAD_METRICS_LISTEN`), behind a bearer token when `SAGAD_METRICS_TOKEN` is set. A scrape
//! runs no query: the database's gauges are read by maintenance ([`crate::maintenance::gauges`]),
//! this process's own from memory.

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, AppState, bearer_token, constant_time_eq};

pub fn routes(state: &AppState) -> Router<AppState> {
    let router = Router::new().route("/metrics", get(metrics));
    if state.metrics_token.is_some() {
        router.route_layer(middleware::from_fn_with_state(state.clone(), require_token))
    } else {
        router
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::telemetry::refresh_pool_gauges(&state.pool, &state.kept);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// `SAGAD_METRICS_TOKEN`, when set, as a bearer token.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match (state.metrics_token.as_deref(), presented) {
        (Some(expected), Some(token))
            if constant_time_eq(expected.as_bytes(), token.as_bytes()) =>
        {
            next.run(req).await
        }
        (None, _) => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}
