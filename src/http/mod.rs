//! The HTTP API: `app(state)` builds the router; one file per resource.

mod as_of;
mod bookings;
mod changes;
mod error;
mod extract;
mod feed;
mod health;
mod inbound_stripe;
pub(crate) mod listings;
mod metrics;
mod openapi;
pub(crate) mod operator;
pub(crate) mod outbound;
pub(crate) mod sagas;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorBody};
pub use extract::{ApiPath, ApiPath2, ApiQuery, JsonBody, storable_time};
pub use openapi::ApiDoc;
pub use outbound::{MAX_DESCRIPTION_LEN, MAX_EVENT_TYPES, MAX_URL_LEN};

use crate::domain::SagaId;
use crate::engine::registry::Registry;

/// Largest request body accepted on the API.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Connections for the start statement ([`crate::store::kept`]).
    pub kept: Arc<crate::store::kept::Kept>,
    pub registry: Arc<Registry>,
    /// Accepted bearer tokens and their names.
    pub tokens: Arc<Vec<crate::config::ApiToken>>,
    /// Ids of sagas that reached a terminal state (fed by LISTEN), for `?wait=`.
    pub finished: broadcast::Sender<SagaId>,
    /// Whether this process's engine is claiming work (for `/readyz`); `None` when API-only.
    pub engine_running: Option<Arc<AtomicBool>>,
    /// This process's engine, to hand new sagas straight to it (`None` when API-only).
    pub dispatch: Option<crate::engine::DirectDispatch>,
    pub metrics: PrometheusHandle,
    /// The bearer token `/metrics` requires, if any.
    pub metrics_token: Option<Arc<str>>,
    /// Longest `?wait=` honoured.
    pub max_wait: Duration,
    /// What a booking request must satisfy beyond its own fields.
    pub booking_rules: crate::domain::BookingRules,
    /// The cancellation policies' refund tiers.
    pub policies: Arc<crate::policies::Policies>,
    /// Verifies `POST /webhooks/stripe`; `None` when no STRIPE_WEBHOOK_SECRET is configured.
    pub stripe_signatures: Option<Arc<crate::inbound::stripe::signature::Verifier>>,
    /// Outgoing webhooks: URL policy (SSRF guard, http allowed?) and secret rotation overlap.
    pub outbound: Arc<crate::outbound::OutboundConfig>,
    /// The database's clock ([`crate::clock`]).
    pub clock: crate::clock::Clock,
    /// The operator console's in-memory state (`/console`).
    pub console: Arc<crate::console::Console>,
    /// The relay lag `/readyz` tolerates, where the NATS relay runs (`None`: no relay here).
    pub relay_max_lag: Option<Duration>,
}

/// The router. `api`: serve `/v1` and `/openapi.json` (a worker-only process serves health and
/// metrics alone); `metrics`: serve `/metrics` here (not when it has an address of its own).
pub fn app(state: AppState, api: bool, metrics: bool) -> Router {
    let mut router = Router::new().merge(health::routes());
    if metrics {
        router = router.merge(metrics::routes(&state));
    }
    if api {
        // Any path under /v1, known or not, asks for the token first: without one, nobody can
        // tell a route that exists from one that does not.
        let v1 = sagas::routes()
            .merge(feed::routes())
            .merge(bookings::routes())
            .merge(changes::routes())
            .merge(operator::routes())
            .merge(listings::routes())
            .merge(outbound::routes())
            .route("/v1", any(no_such_route))
            .route("/v1/{*rest}", any(no_such_route))
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(state.clone(), require_token));
        router = router
            .merge(v1)
            .merge(openapi::routes())
            .merge(crate::console::routes());
        // Outside bearer auth: Stripe signs its requests instead. Reads its body with its own limit.
        if state.stripe_signatures.is_some() {
            router = router.merge(inbound_stripe::routes());
        }
    }
    router
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn(track_requests))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The router of `/metrics` on an address of its own (`SAGAD_METRICS_LISTEN`).
pub fn metrics_app(state: AppState) -> Router {
    metrics::routes(&state)
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Times every request that matched a route (see [`crate::telemetry::http_request`]).
async fn track_requests(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let resp = next.run(req).await;
    if let Some(route) = route {
        crate::telemetry::http_request(
            method.as_str(),
            route,
            resp.status().as_u16(),
            started.elapsed(),
        );
    }
    resp
}

async fn no_such_route() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who made a `/v1` request: the name of the API token it presented. Operator actions record it
/// as their actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

/// Bearer-token authentication for `/v1`; the token's name goes on the request as its [`Actor`].
async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let matched = presented.and_then(|p| matching_token(&state.tokens, p));
    match matched {
        Some(token) => {
            req.extensions_mut().insert(Actor(token.name.clone()));
            next.run(req).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// The configured token equal to `presented`. Every token is compared, so the time taken does not
/// tell which one matched.
pub(crate) fn matching_token<'a>(
    tokens: &'a [crate::config::ApiToken],
    presented: &str,
) -> Option<&'a crate::config::ApiToken> {
    tokens.iter().fold(None, |found, t| {
        let eq = constant_time_eq(t.token.as_bytes(), presented.as_bytes());
        found.or(eq.then_some(t))
    })
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer tok", "bearer tok", "BEARER  tok ", "beArer\ttok"] {
            assert_eq!(bearer_token(h), Some("tok"), "{h:?}");
        }
        for h in ["Basic tok", "Bearer", "Bearer ", "Bearertok", "tok"] {
            assert_eq!(bearer_token(h), None, "{h:?}");
        }
    }
}
