//! The HTTP face of the double: Stripe's `/v1` routes and the `/_double` control routes.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use super::faults::{Fault, Operation};
use super::form::Params;
use super::idempotency::{Lookup, StoredResponse};
use super::render::ApiError;
use super::state::{Ledger, OpResult};
use super::validate::new_id;
use super::{RequestRecord, Shared};

/// Request bodies above this are refused (Stripe's own limit is far below it).
const BODY_LIMIT: usize = 1 << 20;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/payment_intents", post(create))
        .route("/v1/payment_intents/{id}", get(retrieve))
        .route("/v1/payment_intents/{id}/confirm", post(confirm))
        .route("/v1/payment_intents/{id}/capture", post(capture))
        .route("/v1/payment_intents/{id}/cancel", post(cancel))
        .route("/v1/refunds", post(refund).get(list_refunds))
        .route("/v1/refunds/{id}", get(retrieve_refund))
        .route(
            "/_double/faults",
            get(list_faults).post(inject_fault).delete(clear_faults),
        )
        .route("/_double/payment_intents", get(list_payment_intents))
        .route(
            "/_double/payment_intents/{id}/authenticate",
            post(authenticate),
        )
        .route(
            "/_double/payment_intents/{id}/fail_authentication",
            post(fail_authentication),
        )
        .route(
            "/_double/payment_intents/{id}/expire_authorization",
            post(expire_authorization),
        )
        .route("/_double/counters", get(counters))
        .route("/_double/requests", get(requests))
        .route("/_double/attempts", get(attempts))
        .route("/_double/events", get(events))
        .fallback(unrecognized)
        .method_not_allowed_fallback(unrecognized)
        .with_state(shared)
}

async fn create(State(s): State<Arc<Shared>>, req: Request) -> Response {
    api(s, Operation::Create, String::new(), req).await
}
async fn retrieve(State(s): State<Arc<Shared>>, Path(id): Path<String>, req: Request) -> Response {
    api(s, Operation::Retrieve, id, req).await
}
async fn confirm(State(s): State<Arc<Shared>>, Path(id): Path<String>, req: Request) -> Response {
    api(s, Operation::Confirm, id, req).await
}
async fn capture(State(s): State<Arc<Shared>>, Path(id): Path<String>, req: Request) -> Response {
    api(s, Operation::Capture, id, req).await
}
async fn cancel(State(s): State<Arc<Shared>>, Path(id): Path<String>, req: Request) -> Response {
    api(s, Operation::Cancel, id, req).await
}
async fn refund(State(s): State<Arc<Shared>>, req: Request) -> Response {
    api(s, Operation::Refund, String::new(), req).await
}
async fn list_refunds(State(s): State<Arc<Shared>>, req: Request) -> Response {
    api(s, Operation::ListRefunds, String::new(), req).await
}
async fn retrieve_refund(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    api(s, Operation::RetrieveRefund, id, req).await
}

async fn unrecognized(req: Request) -> Response {
    let err = ApiError::not_found_url(req.method().as_str(), req.uri().path());
    error_response(&err, &new_id("req"))
}

/// Runs one API request on its own task, so the effect completes even when the client
/// hangs up (as on the real Stripe, a timed-out request may still have happened).
async fn api(shared: Arc<Shared>, op: Operation, id: String, req: Request) -> Response {
    match tokio::spawn(process(shared, op, id, req)).await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(error = %err, "stripe double request task failed");
            error_response(&ApiError::server_error(), &new_id("req"))
        }
    }
}

async fn process(shared: Arc<Shared>, op: Operation, id: String, req: Request) -> Response {
    let request_id = new_id("req");
    let (parts, body) = req.into_parts();
    let mut record = RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        operation: Some(op),
        payment_intent: None,
        idempotency_key: parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty()),
        status: 0,
        replayed: false,
        fault: None,
        request_id: request_id.clone(),
        body: String::new(),
    };

    // The body is read first, so that every request, refused or not, is logged with the
    // PaymentIntent it names.
    let raw = if parts.method == Method::GET {
        Bytes::copy_from_slice(parts.uri.query().unwrap_or("").as_bytes())
    } else {
        match axum::body::to_bytes(body, BODY_LIMIT).await {
            Ok(bytes) => bytes,
            Err(_) => {
                let err = ApiError::invalid_param(
                    "parameter_invalid",
                    "",
                    "Request body too large or unreadable.",
                );
                return finish(&shared, record, error_response(&err, &request_id));
            }
        }
    };
    record.body = String::from_utf8_lossy(&raw).into_owned();
    record.payment_intent = named_payment_intent(&shared, op, &id, &raw);

    let api_key = match authenticate_key(&parts.headers) {
        Ok(key) => key,
        Err(err) => return finish(&shared, record, error_response(&err, &request_id)),
    };
    let applied = shared.lock().faults.take(op);
    record.fault = applied.label();
    if applied.server_error {
        if let Some(delay) = applied.latency {
            tokio::time::sleep(delay).await;
        }
        let mut response = error_response(&ApiError::server_error(), &request_id);
        response
            .headers_mut()
            .insert("stripe-should-retry", HeaderValue::from_static("true"));
        return finish(&shared, record, response);
    }

    let endpoint = format!("{} {}", parts.method, parts.uri.path());
    let outcome = {
        let mut inner = shared.lock();
        match Params::parse(&raw) {
            Err(e) => {
                let err = ApiError::invalid_param("parameter_invalid", &e.param, e.message);
                stored(&Err(err), &request_id).0
            }
            Ok(params) => match (&record.idempotency_key, parts.method == Method::POST) {
                (Some(key), true) => {
                    match inner
                        .idempotency
                        .lookup(&api_key, key, &endpoint, params.canonical())
                    {
                        Lookup::Replay(previous) => {
                            record.replayed = true;
                            previous
                        }
                        Lookup::Conflict(err) => stored(&Err(err), &request_id).0,
                        Lookup::Miss => {
                            let result = execute(&mut inner.ledger, op, &id, &params);
                            let (response, store) = stored(&result, &request_id);
                            if store {
                                inner.idempotency.store(
                                    &api_key,
                                    key,
                                    &endpoint,
                                    params.canonical(),
                                    response.clone(),
                                );
                            }
                            response
                        }
                    }
                }
                _ => stored(&execute(&mut inner.ledger, op, &id, &params), &request_id).0,
            },
        }
    };

    if op == Operation::Create {
        record.payment_intent = created_payment_intent(&outcome.body);
    }
    if let Some(delay) = applied.latency {
        tokio::time::sleep(delay).await;
    }
    let mut response = json_response(outcome.status, outcome.body.clone(), &outcome.request_id);
    let headers = response.headers_mut();
    if let Some(key) = record
        .idempotency_key
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
    {
        headers.insert("idempotency-key", key);
    }
    if record.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Some(version) = parts.headers.get("stripe-version") {
        headers.insert("stripe-version", version.clone());
    }
    if applied.lose_response {
        *response.body_mut() = broken_body(outcome.body);
    }
    finish(&shared, record, response)
}

/// The PaymentIntent a request names before it runs: the path's id, or a refund's
/// `payment_intent` (or the owner of its `charge`).
fn named_payment_intent(shared: &Shared, op: Operation, id: &str, raw: &[u8]) -> Option<String> {
    match op {
        Operation::Retrieve | Operation::Confirm | Operation::Capture | Operation::Cancel => {
            Some(id.to_owned())
        }
        Operation::Refund => {
            let params = Params::parse(raw).ok()?;
            if let Some(pi) = params.str("payment_intent") {
                return Some(pi.to_owned());
            }
            let charge = params.str("charge")?;
            shared.lock().ledger.intent_of_charge(charge)
        }
        Operation::Create | Operation::ListRefunds | Operation::RetrieveRefund | Operation::Any => {
            None
        }
    }
}

/// The PaymentIntent a create answered with: the object itself, or the one a card error carries.
fn created_payment_intent(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = if value["object"] == "payment_intent" {
        &value
    } else {
        &value["error"]["payment_intent"]
    };
    object["id"].as_str().map(str::to_owned)
}

fn execute(ledger: &mut Ledger, op: Operation, id: &str, params: &Params) -> OpResult {
    match op {
        Operation::Create => ledger.create_payment_intent(params),
        Operation::Retrieve => ledger.retrieve_payment_intent(id),
        Operation::Confirm => ledger.confirm_payment_intent(id, params),
        Operation::Capture => ledger.capture_payment_intent(id, params),
        Operation::Cancel => ledger.cancel_payment_intent(id, params),
        Operation::Refund => ledger.create_refund(params),
        Operation::ListRefunds => ledger.list_refunds(params),
        Operation::RetrieveRefund => ledger.retrieve_refund(id),
        Operation::Any => Err(ApiError::server_error()),
    }
}

/// Serializes a result once; the bytes are what a replay sends back. Returns whether
/// Stripe would save this result under the idempotency key.
fn stored(result: &OpResult, request_id: &str) -> (StoredResponse, bool) {
    let (status, value, store) = match result {
        Ok(value) => (StatusCode::OK, value.clone(), true),
        Err(err) => (err.status, err.body(), err.store),
    };
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    (
        StoredResponse {
            status,
            body: Bytes::from(body),
            request_id: request_id.to_owned(),
        },
        store,
    )
}

fn json_response(status: StatusCode, body: Bytes, request_id: &str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("request-id", v);
    }
    response
}

fn error_response(err: &ApiError, request_id: &str) -> Response {
    let body = serde_json::to_vec_pretty(&err.body()).unwrap_or_default();
    json_response(err.status, Bytes::from(body), request_id)
}

/// Half the body, then an error: hyper aborts the connection mid-message.
fn broken_body(body: Bytes) -> Body {
    let half = body.slice(..body.len() / 2);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "response lost (injected by the Stripe test double)",
        )),
    ];
    Body::from_stream(futures_util::stream::iter(chunks))
}

fn finish(shared: &Shared, mut record: RequestRecord, response: Response) -> Response {
    record.status = response.status().as_u16();
    tracing::debug!(
        method = %record.method,
        path = %record.path,
        status = record.status,
        replayed = record.replayed,
        fault = record.fault.as_deref(),
        "stripe double request"
    );
    shared.lock().requests.push(record);
    response
}

/// `Authorization: Bearer sk_test_…` (or Basic with the key as user name), test keys only.
fn authenticate_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the Authorization \
             header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        ));
    };
    let key = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .map(|s| s.split(':').next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let is_test_key = (key.starts_with("sk_test_") || key.starts_with("rk_test_")) && key.len() > 8;
    if is_test_key {
        Ok(key)
    } else {
        let shown: String = key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(ApiError::unauthorized(format!(
            "Invalid API Key provided: ****{shown}. The Stripe test double accepts only test-mode keys (sk_test_…)."
        )))
    }
}

async fn list_faults(State(s): State<Arc<Shared>>) -> Json<Vec<Fault>> {
    Json(s.lock().faults.pending())
}

async fn inject_fault(State(s): State<Arc<Shared>>, Json(fault): Json<Fault>) -> Json<Vec<Fault>> {
    let mut inner = s.lock();
    inner.faults.inject(fault);
    Json(inner.faults.pending())
}

async fn clear_faults(State(s): State<Arc<Shared>>) -> StatusCode {
    s.lock().faults.clear();
    StatusCode::NO_CONTENT
}

async fn list_payment_intents(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().ledger.records()).into_response()
}

async fn counters(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().ledger.counters()).into_response()
}

async fn requests(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().requests.clone()).into_response()
}

#[derive(serde::Deserialize)]
struct AttemptsQuery {
    payment_intent: Option<String>,
}

async fn attempts(
    State(s): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<AttemptsQuery>,
) -> Response {
    let attempts = super::attempts(&s.lock().requests, q.payment_intent.as_deref());
    Json(json!({ "data": attempts })).into_response()
}

async fn events(State(s): State<Arc<Shared>>) -> Response {
    Json(json!({ "data": s.lock().ledger.events() })).into_response()
}

async fn authenticate(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    control(s.lock().ledger.authenticate(&id))
}

async fn fail_authentication(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    control(s.lock().ledger.fail_authentication(&id))
}

async fn expire_authorization(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    control(s.lock().ledger.expire_authorization(&id))
}

fn control(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(err) => error_response(&err, &new_id("req")),
    }
}
