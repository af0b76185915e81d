//! Stripe's JSON shapes: PaymentIntent, Refund, Event and the error object.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::model::{Intent, Refund};

/// A Stripe error response: `{"error": {type, code, decline_code, message, param, payment_intent…}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    /// Card-error details, boxed to keep `Result<_, ApiError>` small.
    pub card: Option<Box<CardDetails>>,
    /// Whether Stripe would save this result under the idempotency key. Stripe saves a result
    /// once the endpoint started executing; failed parameter validation saves nothing.
    pub store: bool,
}

/// The parts of an error object only card errors and state errors carry.
#[derive(Debug, Clone, Default)]
pub struct CardDetails {
    pub decline_code: Option<String>,
    pub charge: Option<String>,
    /// The full PaymentIntent, as Stripe embeds it in the error.
    pub payment_intent: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: None,
            message: message.into(),
            param: None,
            card: None,
            store: true,
        }
    }

    /// 400 `invalid_request_error` raised while validating parameters (not stored).
    pub fn invalid_param(code: &str, param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.code = Some(code.to_owned());
        e.param = Some(param.to_owned());
        e.store = false;
        e
    }

    /// 400 `invalid_request_error` raised while executing (stored).
    pub fn invalid_request(code: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.code = Some(code.to_owned());
        e
    }

    pub fn missing_param(param: &str) -> Self {
        Self::invalid_param(
            "parameter_missing",
            param,
            format!("Missing required param: {param}."),
        )
    }

    pub fn unknown_param(param: &str) -> Self {
        Self::invalid_param(
            "parameter_unknown",
            param,
            format!(
                "Received unknown parameter: {param}. Did you mean to pass it in a nested hash?"
            ),
        )
    }

    /// `resource_missing`: 404 for the object in the URL, 400 for an object named in a parameter.
    pub fn no_such(object: &str, id: &str, param: &str, status: StatusCode) -> Self {
        let mut e = Self::new(
            status,
            "invalid_request_error",
            format!("No such {object}: '{id}'"),
        );
        e.code = Some("resource_missing".to_owned());
        e.param = Some(param.to_owned());
        e
    }

    pub fn unexpected_state(message: impl Into<String>, intent: &Intent) -> Self {
        let mut e = Self::invalid_request("payment_intent_unexpected_state", message);
        e.card = Some(Box::new(CardDetails {
            payment_intent: Some(payment_intent(intent)),
            ..CardDetails::default()
        }));
        e
    }

    pub fn card_error(
        code: &str,
        decline_code: Option<&str>,
        message: &str,
        charge: Option<String>,
        intent: &Intent,
    ) -> Self {
        let mut e = Self::new(StatusCode::PAYMENT_REQUIRED, "card_error", message);
        e.code = Some(code.to_owned());
        e.card = Some(Box::new(CardDetails {
            decline_code: decline_code.map(str::to_owned),
            charge,
            payment_intent: Some(payment_intent(intent)),
        }));
        e
    }

    pub fn idempotency(status: StatusCode, message: impl Into<String>) -> Self {
        let mut e = Self::new(status, "idempotency_error", message);
        e.code = Some("idempotency_key_in_use".to_owned()).filter(|_| status.as_u16() == 409);
        e.store = false;
        e
    }

    pub fn server_error() -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "An unknown error occurred (injected by the Stripe test double).",
        );
        e.store = false;
        e
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message);
        e.store = false;
        e
    }

    pub fn not_found_url(method: &str, path: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
                 or we can help at https://support.stripe.com/."
            ),
        );
        e.store = false;
        e
    }

    /// The `error` object without the wrapper (also used as `last_payment_error`).
    pub fn object(&self) -> Value {
        let mut obj = json!({
            "type": self.kind,
            "message": self.message,
        });
        let card = self.card.as_deref();
        let fields = [
            ("code", self.code.as_ref()),
            ("decline_code", card.and_then(|c| c.decline_code.as_ref())),
            ("param", self.param.as_ref()),
            ("charge", card.and_then(|c| c.charge.as_ref())),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                obj[name] = json!(v);
            }
        }
        if let Some(code) = &self.code {
            obj["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{code}"));
        }
        if let Some(pi) = card.and_then(|c| c.payment_intent.as_ref()) {
            obj["payment_intent"] = pi.clone();
        }
        obj
    }

    /// The error object without the embedded PaymentIntent (for `last_payment_error`).
    pub fn object_without_intent(&self) -> Value {
        let mut obj = self.object();
        if let Some(map) = obj.as_object_mut() {
            map.remove("payment_intent");
        }
        obj
    }

    pub fn body(&self) -> Value {
        json!({ "error": self.object() })
    }
}

pub fn payment_intent(pi: &Intent) -> Value {
    json!({
        "id": pi.id,
        "object": "payment_intent",
        "amount": pi.amount,
        "amount_capturable": pi.amount_capturable,
        "amount_received": pi.amount_received,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": null,
        "canceled_at": pi.canceled_at,
        "cancellation_reason": pi.cancellation_reason,
        "capture_method": pi.capture_method,
        "client_secret": pi.client_secret,
        "confirmation_method": pi.confirmation_method,
        "created": pi.created,
        "currency": pi.currency,
        "customer": null,
        "description": pi.description,
        "last_payment_error": pi.last_payment_error,
        "latest_charge": pi.latest_charge,
        "livemode": false,
        "metadata": pi.metadata,
        "next_action": pi.next_action,
        "on_behalf_of": null,
        "payment_method": pi.payment_method,
        "payment_method_types": pi.payment_method_types,
        "processing": null,
        "receipt_email": pi.receipt_email,
        "review": null,
        "setup_future_usage": null,
        "shipping": null,
        "source": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": null,
        "status": pi.status.as_str(),
        "transfer_data": null,
        "transfer_group": null,
    })
}

pub fn refund(r: &Refund) -> Value {
    json!({
        "id": r.id,
        "object": "refund",
        "amount": r.amount,
        "balance_transaction": r.balance_transaction,
        "charge": r.charge,
        "created": r.created,
        "currency": r.currency,
        "metadata": r.metadata,
        "payment_intent": r.payment_intent,
        "reason": r.reason,
        "receipt_number": null,
        "source_transfer_reversal": null,
        "status": "succeeded",
        "transfer_reversal": null,
    })
}

/// `next_action` for a 3-D Secure challenge.
pub fn three_d_secure_action(intent_id: &str, return_url: Option<&str>) -> Value {
    let challenge_url =
        format!("https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={intent_id}");
    match return_url {
        Some(return_url) => json!({
            "type": "redirect_to_url",
            "redirect_to_url": { "return_url": return_url, "url": challenge_url },
        }),
        None => json!({
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {
                "type": "three_d_secure_redirect",
                "stripe_js": challenge_url,
                "source": format!("src_{}", &intent_id[3.min(intent_id.len())..]),
            },
        }),
    }
}
