//! The operator console at `/console`: server-rendered HTML pages over the same store functions
//! the API uses, for an on-call engineer with a browser. One file per page; the layout, the
//! error page and the assets are here, sign-in and CSRF in [`session`].
//!
//! Security: every page needs a session (sign-in with an API token, kept in an HttpOnly,
//! SameSite=Strict cookie); every action is a POST form carrying the session's CSRF token and is
//! recorded with the token's name as its actor; responses carry a strict Content-Security-Policy
//! (no inline script, no inline style); maud escapes every value it renders.

mod actions;
mod bookings;
mod chart;
mod outbound;
mod overview;
mod saga;
mod sagas;
mod session;
mod stripe;
mod stuck;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde::de::DeserializeOwned;

use crate::http::{ApiError, AppState};
pub use overview::Overview;
use session::Signed;

/// What the console keeps in memory: the overview's aggregates, read at most every few seconds.
#[derive(Default)]
pub struct Console {
    overview: Overview,
}

/// The Content-Security-Policy of every console response: scripts and styles only from the
/// console's own files, nothing inline, no framing, forms posting only back here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview::overview_page))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/live", get(overview::live))
        .merge(session::routes())
        .merge(sagas::routes())
        .merge(saga::routes())
        .merge(stuck::routes())
        .merge(bookings::routes())
        .merge(outbound::routes())
        .merge(stripe::routes())
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/{*rest}", axum::routing::any(not_found))
        .layer(middleware::from_fn(refuse_nul))
        .layer(middleware::from_fn(security_headers))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(signed: Signed) -> ConsoleError {
    let _ = signed;
    ConsoleError(ApiError::NotFound("page"))
}

/// Refuses (400, before any handler) a request whose path or query string holds the NUL
/// character, which PostgreSQL cannot store or compare: one check for every page's query and
/// every id in a path. Form fields are checked by [`session::Form`].
async fn refuse_nul(req: Request, next: Next) -> Response {
    if let Err(e) = check_uri(req.uri()) {
        return e.into_response();
    }
    next.run(req).await
}

fn check_uri(uri: &axum::http::Uri) -> Result<(), ConsoleError> {
    // A URI cannot hold a raw NUL; `%00` is the only way to spell one in a segment.
    if uri.path().contains("%00") {
        return Err(nul_refused("the path"));
    }
    let query = uri.query().unwrap_or_default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key.contains('\0') || value.contains('\0') {
            return Err(nul_refused(&format!(
                "query parameter `{}`",
                key.escape_debug()
            )));
        }
    }
    Ok(())
}

/// A page's query string, deserialized. What axum's `Query` would refuse with a plain-text 400 (a
/// parameter given twice, a value of the wrong type) is a 400 page naming the parameter, as every
/// console refusal is. (NUL characters were refused before, by [`refuse_nul`].)
pub(crate) struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ConsoleError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| ConsoleError(ApiError::BadRequest(e.body_text())))
    }
}

/// 400: `what` holds the NUL character.
pub(crate) fn nul_refused(what: &str) -> ConsoleError {
    ConsoleError(ApiError::BadRequest(format!(
        "{what} must not contain the NUL character (%00)"
    )))
}

/// Headers on every console response: the CSP, no sniffing, no referrer to other sites (and an
/// `Origin` on its own POSTs, which [`session`] checks), no framing, and no
/// caching of pages (they show live state and carry the CSRF token).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The console's pages, for the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Sagas,
    Stuck,
    Bookings,
    Webhooks,
    Stripe,
    None,
}

/// A whole page: the navigation, the signed-in actor with a sign-out button, and `body`.
pub(crate) fn page(title: &str, nav: Nav, signed: Option<&Signed>, body: Markup) -> Markup {
    let item = |target: Nav, href: &str, label: &str| {
        html! {
            a href=(href) class=[(nav == target).then_some("active")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sagad console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/console" { "sagad" }
                    @if let Some(s) = signed {
                        nav {
                            (item(Nav::Overview, "/console", "Overview"))
                            (item(Nav::Sagas, "/console/sagas", "Sagas"))
                            (item(Nav::Stuck, "/console/stuck", "Stuck and paused"))
                            (item(Nav::Bookings, "/console/bookings", "Bookings"))
                            (item(Nav::Webhooks, "/console/webhooks", "Webhooks"))
                            (item(Nav::Stripe, "/console/stripe", "Stripe inbox"))
                        }
                        form.signout method="post" action="/console/sign-out" {
                            (s.csrf_field())
                            span.actor { (s.actor) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error as a console page: the status, and what went wrong (vague for internal failures,
/// as in the API).
#[derive(Debug)]
pub struct ConsoleError(pub ApiError);

impl<E: Into<ApiError>> From<E> for ConsoleError {
    fn from(e: E) -> Self {
        ConsoleError(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.0.status_code();
        if let ApiError::Internal(e) = &self.0 {
            tracing::error!(error = ?e, "console request failed");
        }
        let message = match &self.0 {
            ApiError::Validation(f) => f
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        error_page(status, &message)
    }
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let body = page(
        status.canonical_reason().unwrap_or("Error"),
        Nav::None,
        None,
        html! {
            section.error {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.message { (message) }
                p { a href="/console" { "Back to the console" } }
            }
        },
    );
    (status, axum::response::Html(body.into_string())).into_response()
}

pub(crate) type PageResult = Result<axum::response::Html<String>, ConsoleError>;

pub(crate) fn render(m: Markup) -> axum::response::Html<String> {
    axum::response::Html(m.into_string())
}

/// A time as the console shows it (UTC, to the second).
pub(crate) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `t` as a `<time>` element with its exact value in `datetime`.
pub(crate) fn time(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => html! { time datetime=(t.to_rfc3339()) { (when(t)) } },
        None => html! { span.none { "—" } },
    }
}

/// A duration in the unit that reads best.
pub(crate) fn span_text(ms: i64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        ms => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// A status word as a badge (its class names the status, for the colour).
pub(crate) fn badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

/// JSON, pretty-printed and escaped, in a `<pre>`.
pub(crate) fn json_block(v: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    html! { pre.json { (text) } }
}

/// The names of sagas' steps by (saga, version), read from the registry once per page.
#[derive(Default)]
pub(crate) struct StepNames(std::collections::HashMap<(String, i32), Vec<String>>);

impl StepNames {
    /// The name of step `index` of the saga's definition version (`#index` if unknown).
    pub async fn name(&mut self, state: &AppState, saga: &str, version: i32, index: i32) -> String {
        let key = (saga.to_owned(), version);
        if !self.0.contains_key(&key) {
            let names = match state.registry.get(saga, version).await {
                Ok(def) => def.steps.iter().map(|s| s.name.clone()).collect(),
                Err(_) => Vec::new(),
            };
            self.0.insert(key.clone(), names);
        }
        self.0
            .get(&key)
            .and_then(|n| n.get(index.max(0) as usize))
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Page {
        #[allow(dead_code)]
        limit: Option<u32>,
        #[serde(default)]
        #[allow(dead_code)]
        q: String,
    }

    async fn refusal(uri: &str) -> (StatusCode, String, String) {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap_or_default()
            .into_parts();
        let Err(e) = Query::<Page>::from_request_parts(&mut parts, &()).await else {
            panic!("{uri} was read");
        };
        let resp = e.into_response();
        let status = resp.status();
        let content_type = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, content_type, String::from_utf8_lossy(&body).into())
    }

    #[tokio::test]
    async fn an_unreadable_query_is_a_400_page_naming_the_parameter() {
        for (uri, name) in [("/p?limit=abc", "limit"), ("/p?q=a&q=b", "`q`")] {
            let (status, content_type, body) = refusal(uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(content_type.starts_with("text/html"), "{content_type}");
            assert!(body.contains("<p class=\"message\">"), "{body}");
            assert!(body.contains(name), "{uri}: {body}");
        }
    }
}
