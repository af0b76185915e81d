//! Sign-in with an API token, the session cookie, and the checks every action passes.
//!
//! Signing in with one of the configured API tokens (SAGAD_API_TOKENS) stores a session
//! server-side (`console_sessions`, only the SHA-256 of its id) and sets its id in an HttpOnly,
//! SameSite=Strict cookie. The session ends after [`SESSION_TTL`], at sign-out, or as soon as the
//! token that opened it is no longer configured. Each session has a CSRF token that every form
//! carries; an action without it, or from another origin, is refused with 403 and changes
//! nothing. Without a session, pages redirect to the sign-in page and actions answer 401.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::{Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ConsoleError, Nav, Query, error_page, page};
use crate::http::{ApiError, AppState};
use crate::store::console::{self as store, Session};

/// The cookie that carries the session id.
pub const COOKIE: &str = "sagad_console";
/// How long a session lasts.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::hours(12);
/// Largest form body the console reads.
const FORM_LIMIT: usize = 16 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
}

/// A request with a live session: who is signed in, and the session's CSRF token.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The name of the API token that signed in: the actor of every action.
    pub actor: String,
    csrf: String,
    id_hash: Vec<u8>,
}

impl Signed {
    /// The hidden field every form of the session carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// Refuses (403) an action whose form lacks the session's CSRF token, or that another
    /// origin sent.
    pub fn authorize(&self, headers: &HeaderMap, form: &Form) -> Result<(), ConsoleError> {
        same_origin(headers)?;
        let given = form.get("csrf").unwrap_or("");
        if !crate::http::constant_time_eq(given.as_bytes(), self.csrf.as_bytes()) {
            return Err(forbidden(
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ));
        }
        Ok(())
    }
}

/// 403 with `why`.
fn forbidden(why: &str) -> ConsoleError {
    ConsoleError(ApiError::Forbidden(why.to_owned()))
}

/// Refuses a POST whose `Origin` is not this server (browsers send it on every POST).
fn same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let ok = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o == host);
    if ok {
        Ok(())
    } else {
        Err(forbidden("the action came from another site"))
    }
}

fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Why there is no session: answered by a redirect to the sign-in page for a page, 401 for an
/// action.
pub struct NotSignedIn {
    method: Method,
    next: String,
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        if self.method == Method::GET || self.method == Method::HEAD {
            let next: String =
                form_urlencoded::byte_serialize(self.next.as_bytes()).collect::<String>();
            Redirect::to(&format!("/console/sign-in?next={next}")).into_response()
        } else {
            error_page(
                StatusCode::UNAUTHORIZED,
                "not signed in: sign in to the console first",
            )
        }
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let refuse = || {
            NotSignedIn {
                method: parts.method.clone(),
                next: parts
                    .uri
                    .path_and_query()
                    .map_or("/console".into(), |p| p.as_str().to_owned()),
            }
            .into_response()
        };
        let Some(id) = cookie_value(&parts.headers, COOKIE)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .filter(|v| v.len() == 32)
        else {
            return Err(refuse());
        };
        let id_hash = sha256(&id);
        let session = store::get_session(&state.pool, &id_hash)
            .await
            .map_err(|e| ConsoleError::from(e).into_response())?;
        let Some(session) = session else {
            return Err(refuse());
        };
        // The token that opened the session must still be configured, under the same name.
        let still = state.tokens.iter().any(|t| {
            t.name == session.token_name
                && crate::http::constant_time_eq(&sha256(t.token.as_bytes()), &session.token_hash)
        });
        if !still {
            return Err(refuse());
        }
        Ok(Signed {
            actor: session.token_name,
            csrf: session.csrf,
            id_hash,
        })
    }
}

/// A console action: the signed-in session, and its form once the form carries the session's
/// CSRF token and came from this server ([`Signed::authorize`]). Every action handler takes it
/// (last, as it reads the body), so none can forget the check.
pub struct Authorized {
    pub signed: Signed,
    pub form: Form,
}

impl FromRequest<AppState> for Authorized {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let form = Form::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        signed
            .authorize(&headers, &form)
            .map_err(IntoResponse::into_response)?;
        Ok(Self { signed, form })
    }
}

/// A URL-encoded form body. A field or name holding the NUL character is refused (400).
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field trimmed, `None` when missing or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|s| !s.is_empty())
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ConsoleError(ApiError::BadRequest(e.body_text())))?;
        if bytes.len() > FORM_LIMIT {
            return Err(ConsoleError(ApiError::PayloadTooLarge(FORM_LIMIT)));
        }
        let mut fields = Vec::new();
        for (k, v) in form_urlencoded::parse(&bytes) {
            if k.contains('\0') || v.contains('\0') {
                return Err(super::nul_refused(&format!(
                    "form field `{}`",
                    k.escape_debug()
                )));
            }
            fields.push((k.into_owned(), v.into_owned()));
        }
        Ok(Form(fields))
    }
}

#[derive(Deserialize)]
struct NextParam {
    next: Option<String>,
}

/// Where to go after signing in: a console path, nothing else (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/console") && !n.contains("//") && !n.contains('\\') => n,
        _ => "/console",
    }
}

fn sign_in_form(next: &str, problem: Option<&str>) -> Markup {
    page(
        "Sign in",
        Nav::None,
        None,
        html! {
            section.signin {
                h1 { "Sign in" }
                p { "Sign in with an API token (one of SAGAD_API_TOKENS). Your actions are recorded under its name." }
                @if let Some(p) = problem { p.problem role="alert" { (p) } }
                form method="post" action="/console/sign-in" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="off" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

async fn sign_in_page(Query(q): Query<NextParam>) -> Response {
    super::render(sign_in_form(safe_next(q.next.as_deref()), None)).into_response()
}

async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    same_origin(&headers)?;
    let next = safe_next(form.get("next")).to_owned();
    let presented = form.text("token").unwrap_or("");
    let Some(token) = crate::http::matching_token(&state.tokens, presented) else {
        let body = sign_in_form(
            &next,
            Some("That token is not one of this server's API tokens."),
        );
        return Ok((StatusCode::UNAUTHORIZED, super::render(body)).into_response());
    };
    let id: [u8; 32] = rand::random();
    let csrf: [u8; 32] = rand::random();
    let session = Session {
        token_name: token.name.clone(),
        token_hash: sha256(token.token.as_bytes()),
        csrf: URL_SAFE_NO_PAD.encode(csrf),
    };
    store::insert_session(&state.pool, &sha256(&id), &session, SESSION_TTL).await?;
    tracing::info!(actor = %token.name, "console sign-in");
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        URL_SAFE_NO_PAD.encode(id),
        SESSION_TTL.num_seconds(),
        if secure { "; Secure" } else { "" }
    );
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?,
    );
    Ok(resp)
}

async fn sign_out(
    State(state): State<AppState>,
    Authorized { signed, .. }: Authorized,
) -> Result<Response, ConsoleError> {
    store::delete_session(&state.pool, &signed.id_hash).await?;
    let mut resp = Redirect::to("/console/sign-in").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "sagad_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_followed_after_sign_in() {
        for ok in ["/console", "/console/sagas?status=stuck"] {
            assert_eq!(safe_next(Some(ok)), ok);
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/console",
            "/console//evil",
            "/v1/sagas",
            "/console\\@evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console", "{bad}");
        }
    }

    #[test]
    fn the_origin_must_be_this_host() {
        let h = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            h
        };
        assert!(same_origin(&h(None)).is_ok());
        assert!(same_origin(&h(Some("http://127.0.0.1:8080"))).is_ok());
        for bad in ["http://evil.example", "null", "http://127.0.0.1:8081"] {
            assert!(same_origin(&h(Some(bad))).is_err(), "{bad}");
        }
    }
}
