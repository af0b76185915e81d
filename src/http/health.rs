//! `/healthz` (the process answers) and `/readyz` (it can do its job).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::AppState;
use crate::store;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Database reachable, migrations current, workers running, and where the NATS relay runs, its lag within SAGAD_NATS_MAX_LAG (the body's `relay` says its position, lag and last error)"),
    (status = 503, description = "Not ready; the body says which check failed")))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = store::ping(&state.pool).await.is_ok();
    let migrations = database
        && store::migrations_current(&state.pool)
            .await
            .unwrap_or(false);
    let workers = state
        .engine_running
        .as_ref()
        .map(|r| r.load(Ordering::SeqCst));
    // The relay's lag, over every process (the database records the relay's position).
    let relay = match state.relay_max_lag {
        Some(max_lag) if database => relay_status(&state, max_lag).await,
        Some(_) => Some((false, serde_json::Value::Null)),
        None => None,
    };
    let ready = database
        && migrations
        && workers.unwrap_or(true)
        && relay.as_ref().is_none_or(|(ok, _)| *ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": { "database": database, "migrations": migrations, "workers": workers },
    });
    // The relay's check and state only where it runs.
    if let Some((ok, relay)) = relay {
        body["checks"]["relay"] = json!(ok);
        body["relay"] = relay;
    }
    (status, Json(body))
}

/// Whether the relay lags less than `max_lag`, and what the database records of it.
async fn relay_status(
    state: &AppState,
    max_lag: std::time::Duration,
) -> Option<(bool, serde_json::Value)> {
    let mut conn = match state.pool.acquire().await {
        Ok(c) => c,
        Err(_) => return Some((false, serde_json::Value::Null)),
    };
    match store::relay::status(&mut conn).await {
        Ok(s) => Some((
            crate::relay::within(&s.lag, max_lag),
            json!({
                "holder": s.holder,
                "position": s.position,
                "lag_events": s.lag.events,
                "lag_seconds": s.lag.seconds,
                "max_lag_seconds": max_lag.as_secs_f64(),
                "last_error": s.last_error,
                "last_error_at": s.last_error_at,
            }),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "/readyz cannot read the relay's position");
            Some((false, serde_json::Value::Null))
        }
    }
}
