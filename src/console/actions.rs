//! The console's actions: retry, resolve and cancel a saga, redeliver a webhook delivery. Each
//! is a POST form with the session's CSRF token and a reason, made through the same functions
//! as the API (recorded with the signed-in token's name as the actor), then redirects to the
//! saga's page, which shows the resulting event.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::routing::post;
use maud::{Markup, html};

use super::ConsoleError;
use super::session::{Authorized, Form, Signed};
use crate::domain::{DeliveryId, SagaId};
use crate::engine::model::SagaStatus;
use crate::engine::operator::Resolution;
use crate::http::operator::{Action, act, check_reason};
use crate::http::{ApiError, AppState};
use crate::store::sagas::SagaRow;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/sagas/{id}/retry", post(retry))
        .route("/console/sagas/{id}/resolve", post(resolve))
        .route("/console/sagas/{id}/cancel", post(cancel))
        .route("/console/deliveries/{id}/redeliver", post(redeliver))
}

/// The action forms a saga in this state allows.
pub fn forms(signed: &Signed, r: &SagaRow) -> Markup {
    let reason = |id: &str| {
        html! {
            label { "Reason" input type="text" name="reason" id=(id) required maxlength="1024"
                placeholder="why, for the record"; }
        }
    };
    let base = format!("/console/sagas/{}", r.id);
    html! {
        div.actions {
            @if matches!(r.status, SagaStatus::Stuck | SagaStatus::Waiting) {
                form.action method="post" action={ (base) "/retry" } {
                    (signed.csrf_field())
                    h3 { "Retry" }
                    p.hint { "Run the step it is at again now, with fresh attempts." }
                    (reason("retry-reason"))
                    button type="submit" name="retry" { "Retry" }
                }
            }
            @if r.status == SagaStatus::Stuck {
                form.action method="post" action={ (base) "/resolve" } {
                    (signed.csrf_field())
                    h3 { "Resolve" }
                    p.hint { "Close it as settled by hand." }
                    label { "Outcome" select name="outcome" {
                        option value="compensated" { "compensated (undone by hand)" }
                        option value="completed" { "completed (it stands)" }
                    } }
                    (reason("resolve-reason"))
                    button type="submit" name="resolve" { "Resolve" }
                }
            }
            @if matches!(r.status, SagaStatus::Stuck | SagaStatus::Running | SagaStatus::Waiting | SagaStatus::Completed) && !r.cancel_requested {
                form.action method="post" action={ (base) "/cancel" } {
                    (signed.csrf_field())
                    h3 { "Cancel" }
                    p.hint { "Compensate what it did." }
                    (reason("cancel-reason"))
                    button type="submit" name="cancel" { "Cancel" }
                }
            }
        }
    }
}

fn saga_id(raw: &str) -> Result<SagaId, ConsoleError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a saga id (a UUID)")).into())
}

/// The form's reason, checked as the API checks it.
fn reason(form: &Form) -> Result<String, ConsoleError> {
    let r = form.get("reason").unwrap_or("");
    check_reason(r).map_err(|e| ApiError::Validation(vec![e]))?;
    Ok(r.trim().to_owned())
}

fn done(id: SagaId, action: &str) -> Redirect {
    Redirect::to(&format!("/console/sagas/{id}?done={action}"))
}

async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, form }: Authorized,
) -> Result<Redirect, ConsoleError> {
    let id = saga_id(&id)?;
    let reason = reason(&form)?;
    act(&state, id, Action::Retry, &signed.actor, &reason).await?;
    Ok(done(id, "retry"))
}

async fn resolve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, form }: Authorized,
) -> Result<Redirect, ConsoleError> {
    let id = saga_id(&id)?;
    let raw = form.get("outcome").unwrap_or("");
    let outcome = Resolution::parse(raw).ok_or_else(|| {
        ApiError::Validation(vec![crate::domain::FieldError {
            field: "outcome".into(),
            message: format!("unknown outcome {raw:?}; use completed or compensated"),
        }])
    })?;
    let reason = reason(&form)?;
    act(&state, id, Action::Resolve(outcome), &signed.actor, &reason).await?;
    Ok(done(id, "resolve"))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, form }: Authorized,
) -> Result<Redirect, ConsoleError> {
    let id = saga_id(&id)?;
    let reason = reason(&form)?;
    // An operator's cancellation: a full refund, recorded with the token's name.
    let req = crate::http::operator::CancelSaga {
        by: Some("operator".into()),
        reason: Some(reason),
    };
    crate::http::sagas::cancel(&state, &signed.actor, id, Some(req), "saga").await?;
    Ok(done(id, "cancel"))
}

async fn redeliver(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Authorized { signed, form }: Authorized,
) -> Result<Redirect, ConsoleError> {
    let id: DeliveryId = id.parse().map_err(|_| {
        ApiError::BadRequest(format!("{id:?} is not a webhook delivery id (a UUID)"))
    })?;
    crate::http::outbound::queue_again(&state, id).await?;
    tracing::info!(delivery_id = %id, actor = %signed.actor, "console redelivery");
    let back = match (
        form.get("saga").map(str::parse::<SagaId>),
        form.get("endpoint")
            .map(str::parse::<crate::domain::EndpointId>),
    ) {
        (Some(Ok(saga)), _) => format!("/console/sagas/{saga}?redelivered={id}"),
        (_, Some(Ok(endpoint))) => {
            format!("/console/webhooks/{endpoint}?notice=Delivery+{id}+queued+for+delivery+again.")
        }
        _ => "/console".to_owned(),
    };
    Ok(Redirect::to(&back))
}
