//! The double's ledger: PaymentIntents, refunds, effect counters and the event list,
//! with Stripe's state machine. Everything here is synchronous and runs under one lock.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::Value;

use super::cards::{self, Behavior, TestCard};
use super::form::Params;
use super::render::{self, ApiError};
use super::validate::{bool_param, check_known, enum_param, format_amount, int_param, new_id, now};

pub use super::model::{
    Counters, Effects, Intent, LedgerEvent, PaymentIntentRecord, Refund, Status,
};

#[derive(Debug, Default)]
pub struct Ledger {
    intents: HashMap<String, Intent>,
    /// Creation order, so inspection lists are stable.
    order: Vec<String>,
    refunds: HashMap<String, Refund>,
    /// Refund ids in creation order (lists are newest first).
    refund_order: Vec<String>,
    /// Generated `pm_…` ids → the test card they stand for.
    payment_methods: HashMap<String, &'static TestCard>,
    counters: Counters,
    events: Vec<LedgerEvent>,
}

pub type OpResult = Result<Value, ApiError>;

/// `payment_method_types` is no longer writable in the API version sagad pins
/// (`2026-09-30.endive`): Stripe refuses it on creation and confirmation.
fn refuse_payment_method_types(params: &Params) -> Result<(), ApiError> {
    if params.get("payment_method_types").is_some() {
        return Err(ApiError::invalid_param(
            "payment_method_types_no_longer_supported",
            "payment_method_types",
            "The `payment_method_types` parameter is no longer supported in this API version. \
             Use `allowed_payment_method_types` to limit the payment methods, or dynamic payment methods.",
        ));
    }
    Ok(())
}

const CREATE_PARAMS: &[&str] = &[
    "amount",
    "currency",
    "capture_method",
    "confirm",
    "confirmation_method",
    "description",
    "error_on_requires_action",
    "expand",
    "metadata",
    "off_session",
    "payment_method",
    "payment_method_options",
    "payment_method_types",
    "allowed_payment_method_types",
    "excluded_payment_method_types",
    "automatic_payment_methods",
    "payment_method_configuration",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "use_stripe_sdk",
];
const CONFIRM_PARAMS: &[&str] = &[
    "expand",
    "payment_method",
    "return_url",
    "receipt_email",
    "error_on_requires_action",
    "off_session",
    "use_stripe_sdk",
];
const CAPTURE_PARAMS: &[&str] = &[
    "amount_to_capture",
    "expand",
    "metadata",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "final_capture",
];
const CANCEL_PARAMS: &[&str] = &["cancellation_reason", "expand"];
const REFUND_PARAMS: &[&str] = &[
    "amount",
    "charge",
    "payment_intent",
    "reason",
    "metadata",
    "expand",
    "instructions_email",
    "refund_application_fee",
    "reverse_transfer",
];
const LIST_REFUNDS_PARAMS: &[&str] = &[
    "charge",
    "payment_intent",
    "limit",
    "starting_after",
    "ending_before",
    "created",
    "expand",
];
const CANCELABLE: &[Status] = &[
    Status::RequiresPaymentMethod,
    Status::RequiresCapture,
    Status::RequiresConfirmation,
    Status::RequiresAction,
];

impl Ledger {
    fn record_event(&mut self, kind: &str, object: Value) {
        self.events.push(LedgerEvent {
            id: new_id("evt"),
            kind: kind.to_owned(),
            created: now(),
            object,
        });
    }

    fn intent_event(&mut self, kind: &str, id: &str) {
        if let Some(pi) = self.intents.get(id) {
            let object = render::payment_intent(pi);
            self.record_event(kind, object);
        }
    }

    fn bump(&mut self, id: &str, f: impl Fn(&mut Effects)) {
        f(&mut self.counters.effects);
        if let Some(pi) = self.intents.get_mut(id) {
            f(&mut pi.effects);
        }
    }

    /// Resolves a `payment_method` parameter: a test token or a `pm_…` id handed out earlier.
    fn resolve_payment_method(
        &mut self,
        value: &str,
    ) -> Result<(String, &'static TestCard), ApiError> {
        if let Some(card) = self.payment_methods.get(value) {
            return Ok((value.to_owned(), card));
        }
        let card = cards::by_token(value).ok_or_else(|| {
            ApiError::no_such(
                "PaymentMethod",
                value,
                "payment_method",
                StatusCode::BAD_REQUEST,
            )
        })?;
        let id = new_id("pm");
        self.payment_methods.insert(id.clone(), card);
        Ok((id, card))
    }

    fn intent_mut(
        &mut self,
        id: &str,
        status: StatusCode,
        param: &str,
    ) -> Result<&mut Intent, ApiError> {
        self.intents
            .get_mut(id)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, param, status))
    }

    pub fn create_payment_intent(&mut self, params: &Params) -> OpResult {
        check_known(params, CREATE_PARAMS)?;
        refuse_payment_method_types(params)?;
        // `allowed_payment_method_types` excludes the other ways of choosing payment methods.
        if params.get("allowed_payment_method_types").is_some() {
            for other in [
                "excluded_payment_method_types",
                "automatic_payment_methods",
                "payment_method_configuration",
            ] {
                if params.get(other).is_some() {
                    return Err(ApiError::invalid_param(
                        "parameters_exclusive",
                        other,
                        format!(
                            "You may only specify one of these parameters: allowed_payment_method_types, {other}."
                        ),
                    ));
                }
            }
        }
        let amount =
            int_param(params, "amount")?.ok_or_else(|| ApiError::missing_param("amount"))?;
        let currency = params
            .str("currency")
            .ok_or_else(|| ApiError::missing_param("currency"))?
            .to_ascii_lowercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(ApiError::invalid_param(
                "parameter_invalid_string",
                "currency",
                format!("Invalid currency: {currency}."),
            ));
        }
        if amount < 50 {
            return Err(ApiError::invalid_param(
                "amount_too_small",
                "amount",
                format!("Amount must be at least {}", format_amount(50, &currency)),
            ));
        }
        if amount > 99_999_999 {
            return Err(ApiError::invalid_param(
                "amount_too_large",
                "amount",
                format!(
                    "Amount must be no more than {}",
                    format_amount(99_999_999, &currency)
                ),
            ));
        }
        let capture_method = enum_param(
            params,
            "capture_method",
            &["automatic", "automatic_async", "manual"],
        )?
        .unwrap_or_else(|| "automatic_async".to_owned());
        let confirmation_method =
            enum_param(params, "confirmation_method", &["automatic", "manual"])?
                .unwrap_or_else(|| "automatic".to_owned());
        let confirm = bool_param(params, "confirm")?.unwrap_or(false);
        bool_param(params, "error_on_requires_action")?;
        // Unlike the removed `payment_method_types`, `allowed_payment_method_types` filters out
        // what cannot be used silently; the double knows cards only.
        let payment_method_types = match params.string_list("allowed_payment_method_types") {
            Some(types) if !types.iter().any(|t| t == "card") => {
                return Err(ApiError::invalid_param(
                    "parameter_invalid_string",
                    "allowed_payment_method_types",
                    "None of the allowed payment method types can be used for this PaymentIntent \
                     (the Stripe test double knows card only).",
                ));
            }
            _ => vec!["card".to_owned()],
        };
        let payment_method = match params.str("payment_method") {
            Some(pm) => Some(self.resolve_payment_method(pm)?),
            None => None,
        };
        if confirm && payment_method.is_none() {
            return Err(ApiError::invalid_param(
                "payment_intent_unexpected_state",
                "payment_method",
                "You cannot confirm this PaymentIntent because it's missing a payment method. \
                 To confirm the PaymentIntent with a payment method, pass `payment_method`.",
            ));
        }

        let id = new_id("pi");
        let card = payment_method.as_ref().map(|(_, card)| *card);
        let status = if payment_method.is_some() {
            Status::RequiresConfirmation
        } else {
            Status::RequiresPaymentMethod
        };
        let intent = Intent {
            client_secret: format!("{id}_secret_{}", &new_id("s")[2..]),
            id: id.clone(),
            created: now(),
            amount,
            amount_capturable: 0,
            amount_received: 0,
            amount_refunded: 0,
            currency,
            capture_method,
            confirmation_method,
            status,
            description: params.str("description").map(str::to_owned),
            receipt_email: params.str("receipt_email").map(str::to_owned),
            metadata: params.string_map("metadata"),
            payment_method_types,
            card,
            card_token: card.map(|c| c.token),
            payment_method: payment_method.map(|(id, _)| id),
            return_url: params.str("return_url").map(str::to_owned),
            latest_charge: None,
            cancellation_reason: None,
            canceled_at: None,
            last_payment_error: None,
            next_action: None,
            effects: Effects::default(),
        };
        self.intents.insert(id.clone(), intent);
        self.order.push(id.clone());
        self.counters.payment_intents_created += 1;
        self.intent_event("payment_intent.created", &id);
        if confirm {
            self.confirm_intent(&id)?;
        }
        self.render_intent(&id)
    }

    pub fn retrieve_payment_intent(&self, id: &str) -> OpResult {
        self.intents
            .get(id)
            .map(render::payment_intent)
            .ok_or_else(|| ApiError::no_such("payment_intent", id, "intent", StatusCode::NOT_FOUND))
    }

    fn render_intent(&self, id: &str) -> OpResult {
        self.retrieve_payment_intent(id)
    }

    pub fn confirm_payment_intent(&mut self, id: &str, params: &Params) -> OpResult {
        refuse_payment_method_types(params)?;
        check_known(params, CONFIRM_PARAMS)?;
        let payment_method = match params.str("payment_method") {
            Some(pm) => Some(self.resolve_payment_method(pm)?),
            None => None,
        };
        let pi = self.intent_mut(id, StatusCode::NOT_FOUND, "intent")?;
        if !matches!(
            pi.status,
            Status::RequiresPaymentMethod | Status::RequiresConfirmation
        ) {
            let msg = format!(
                "This PaymentIntent's payment_method could not be updated because it has a status of {}. \
                 You may only update the payment_method of a PaymentIntent with one of the following statuses: \
                 requires_payment_method, requires_confirmation, requires_action.",
                pi.status.as_str()
            );
            return Err(ApiError::unexpected_state(msg, pi));
        }
        if let Some((pm, card)) = payment_method {
            pi.payment_method = Some(pm);
            pi.card = Some(card);
            pi.card_token = Some(card.token);
        }
        if pi.card.is_none() {
            return Err(ApiError::unexpected_state(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                pi,
            ));
        }
        if let Some(url) = params.str("return_url") {
            pi.return_url = Some(url.to_owned());
        }
        self.confirm_intent(id)?;
        self.render_intent(id)
    }

    /// Runs the confirmation with the attached test card.
    fn confirm_intent(&mut self, id: &str) -> Result<(), ApiError> {
        let Some(pi) = self.intents.get_mut(id) else {
            return Err(ApiError::no_such(
                "payment_intent",
                id,
                "intent",
                StatusCode::NOT_FOUND,
            ));
        };
        let Some(card) = pi.card else {
            return Err(ApiError::unexpected_state(
                "The PaymentIntent has no payment method.",
                pi,
            ));
        };
        match card.behavior {
            Behavior::Succeeds => {
                self.authorize(id);
                Ok(())
            }
            Behavior::RequiresAuthentication => {
                pi.status = Status::RequiresAction;
                pi.next_action = Some(render::three_d_secure_action(
                    &pi.id,
                    pi.return_url.as_deref(),
                ));
                self.bump(id, |e| e.authentications_required += 1);
                self.intent_event("payment_intent.requires_action", id);
                Ok(())
            }
            Behavior::Declines {
                code,
                decline_code,
                message,
            } => {
                let charge = new_id("ch");
                pi.status = Status::RequiresPaymentMethod;
                pi.latest_charge = Some(charge.clone());
                pi.payment_method = None;
                pi.card = None;
                pi.next_action = None;
                let last =
                    ApiError::card_error(code, decline_code, message, Some(charge.clone()), pi);
                pi.last_payment_error = Some(last.object_without_intent());
                let err = ApiError::card_error(code, decline_code, message, Some(charge), pi);
                self.bump(id, |e| e.declines += 1);
                self.intent_event("payment_intent.payment_failed", id);
                Err(err)
            }
        }
    }

    /// A successful charge: held for manual capture, or captured at once.
    fn authorize(&mut self, id: &str) {
        let Some(pi) = self.intents.get_mut(id) else {
            return;
        };
        pi.latest_charge = Some(new_id("ch"));
        pi.next_action = None;
        pi.last_payment_error = None;
        if pi.capture_method == "manual" {
            pi.status = Status::RequiresCapture;
            pi.amount_capturable = pi.amount;
            self.bump(id, |e| e.authorizations += 1);
            self.intent_event("payment_intent.amount_capturable_updated", id);
        } else {
            pi.status = Status::Succeeded;
            pi.amount_received = pi.amount;
            self.bump(id, |e| {
                e.authorizations += 1;
                e.captures += 1;
            });
            self.intent_event("payment_intent.succeeded", id);
        }
    }

    pub fn capture_payment_intent(&mut self, id: &str, params: &Params) -> OpResult {
        check_known(params, CAPTURE_PARAMS)?;
        let amount_to_capture = int_param(params, "amount_to_capture")?;
        let pi = self.intent_mut(id, StatusCode::NOT_FOUND, "intent")?;
        if pi.status != Status::RequiresCapture {
            let msg = format!(
                "This PaymentIntent could not be captured because it has a status of {}. \
                 Only a PaymentIntent with one of the following statuses may be captured: requires_capture.",
                pi.status.as_str()
            );
            return Err(ApiError::unexpected_state(msg, pi));
        }
        let amount = amount_to_capture.unwrap_or(pi.amount_capturable);
        if amount <= 0 || amount > pi.amount_capturable {
            let mut e = ApiError::invalid_request(
                "amount_too_large",
                format!(
                    "The amount to capture ({}) must be positive and no more than the capturable amount ({}).",
                    format_amount(amount, &pi.currency),
                    format_amount(pi.amount_capturable, &pi.currency)
                ),
            );
            e.param = Some("amount_to_capture".to_owned());
            return Err(e);
        }
        for (k, v) in params.string_map("metadata") {
            pi.metadata.insert(k, v);
        }
        pi.status = Status::Succeeded;
        pi.amount_received = amount;
        pi.amount_capturable = 0;
        self.bump(id, |e| e.captures += 1);
        self.intent_event("payment_intent.succeeded", id);
        self.render_intent(id)
    }

    pub fn cancel_payment_intent(&mut self, id: &str, params: &Params) -> OpResult {
        check_known(params, CANCEL_PARAMS)?;
        let reason = enum_param(
            params,
            "cancellation_reason",
            &[
                "abandoned",
                "duplicate",
                "fraudulent",
                "requested_by_customer",
            ],
        )?;
        let pi = self.intent_mut(id, StatusCode::NOT_FOUND, "intent")?;
        if !CANCELABLE.contains(&pi.status) {
            let msg = format!(
                "You cannot cancel this PaymentIntent because it has a status of {}. \
                 Only a PaymentIntent with one of the following statuses may be canceled: \
                 requires_payment_method, requires_capture, requires_confirmation, requires_action, processing.",
                pi.status.as_str()
            );
            return Err(ApiError::unexpected_state(msg, pi));
        }
        self.cancel_intent(id, reason);
        self.render_intent(id)
    }

    fn cancel_intent(&mut self, id: &str, reason: Option<String>) {
        let Some(pi) = self.intents.get_mut(id) else {
            return;
        };
        pi.status = Status::Canceled;
        pi.cancellation_reason = reason;
        pi.canceled_at = Some(now());
        pi.amount_capturable = 0;
        pi.next_action = None;
        self.bump(id, |e| e.cancels += 1);
        self.intent_event("payment_intent.canceled", id);
    }

    pub fn create_refund(&mut self, params: &Params) -> OpResult {
        check_known(params, REFUND_PARAMS)?;
        let amount = int_param(params, "amount")?;
        let reason = enum_param(
            params,
            "reason",
            &["duplicate", "fraudulent", "requested_by_customer"],
        )?;
        let id = match (params.str("payment_intent"), params.str("charge")) {
            (Some(pi), None) => {
                if !self.intents.contains_key(pi) {
                    return Err(ApiError::no_such(
                        "payment_intent",
                        pi,
                        "payment_intent",
                        StatusCode::BAD_REQUEST,
                    ));
                }
                pi.to_owned()
            }
            (None, Some(charge)) => self
                .intents
                .values()
                .find(|pi| pi.latest_charge.as_deref() == Some(charge))
                .map(|pi| pi.id.clone())
                .ok_or_else(|| {
                    ApiError::no_such("charge", charge, "charge", StatusCode::BAD_REQUEST)
                })?,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_param(
                    "parameter_invalid_string",
                    "charge",
                    "You may only specify one of these parameters: charge, payment_intent.",
                ));
            }
            (None, None) => {
                return Err(ApiError::invalid_param(
                    "parameter_missing",
                    "payment_intent",
                    "One of the following params should be provided for this request: payment_intent or charge.",
                ));
            }
        };
        let pi = self.intent_mut(&id, StatusCode::BAD_REQUEST, "payment_intent")?;
        if pi.status != Status::Succeeded {
            let msg = format!(
                "This PaymentIntent ({}) does not have a successful charge to refund (status {}).",
                pi.id,
                pi.status.as_str()
            );
            return Err(ApiError::unexpected_state(msg, pi));
        }
        let remaining = pi.amount_received - pi.amount_refunded;
        let charge = pi.latest_charge.clone();
        if remaining <= 0 {
            return Err(ApiError::invalid_request(
                "charge_already_refunded",
                format!(
                    "Charge {} has already been refunded.",
                    charge.as_deref().unwrap_or("")
                ),
            ));
        }
        let amount = amount.unwrap_or(remaining);
        if amount <= 0 || amount > remaining {
            let mut e = ApiError::invalid_request(
                "amount_too_large",
                format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    format_amount(amount, &pi.currency),
                    format_amount(remaining, &pi.currency)
                ),
            );
            e.param = Some("amount".to_owned());
            return Err(e);
        }
        pi.amount_refunded += amount;
        let refund = Refund {
            id: new_id("re"),
            amount,
            balance_transaction: new_id("txn"),
            charge,
            created: now(),
            currency: pi.currency.clone(),
            metadata: params.string_map("metadata"),
            payment_intent: pi.id.clone(),
            reason,
        };
        let body = render::refund(&refund);
        self.refund_order.push(refund.id.clone());
        self.refunds.insert(refund.id.clone(), refund);
        self.bump(&id, |e| {
            e.refunds += 1;
            e.refunded_amount += amount;
        });
        self.record_event("refund.created", body.clone());
        self.intent_event("charge.refunded", &id);
        Ok(body)
    }

    /// `GET /v1/refunds`: newest first, filtered by `payment_intent` or `charge`, paged by `limit`
    /// (1–100, default 10) and `starting_after`.
    pub fn list_refunds(&self, params: &Params) -> OpResult {
        check_known(params, LIST_REFUNDS_PARAMS)?;
        let limit = int_param(params, "limit")?.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::invalid_param(
                "parameter_invalid_integer",
                "limit",
                "This value must be between 1 and 100.",
            ));
        }
        let pi = params.str("payment_intent");
        let charge = params.str("charge");
        let mut newest_first = self
            .refund_order
            .iter()
            .rev()
            .filter_map(|id| self.refunds.get(id))
            .filter(|r| pi.is_none_or(|pi| r.payment_intent == pi))
            .filter(|r| charge.is_none_or(|c| r.charge.as_deref() == Some(c)))
            .skip_while(|r| {
                params
                    .str("starting_after")
                    .is_some_and(|after| r.id != after)
            });
        if params.str("starting_after").is_some() {
            newest_first.next();
        }
        let page: Vec<&Refund> = newest_first.by_ref().take(limit as usize).collect();
        let has_more = newest_first.next().is_some();
        Ok(serde_json::json!({
            "object": "list",
            "data": page.into_iter().map(render::refund).collect::<Vec<_>>(),
            "has_more": has_more,
            "url": "/v1/refunds",
        }))
    }

    pub fn retrieve_refund(&self, id: &str) -> OpResult {
        self.refunds
            .get(id)
            .map(render::refund)
            .ok_or_else(|| ApiError::no_such("refund", id, "id", StatusCode::NOT_FOUND))
    }

    /// The customer passed 3-D Secure: `requires_action` → authorized.
    pub fn authenticate(&mut self, id: &str) -> OpResult {
        let pi = self.intent_mut(id, StatusCode::NOT_FOUND, "intent")?;
        if pi.status != Status::RequiresAction {
            let msg = format!(
                "Cannot authenticate a PaymentIntent with status {}.",
                pi.status.as_str()
            );
            return Err(ApiError::unexpected_state(msg, pi));
        }
        self.authorize(id);
        self.render_intent(id)
    }

    /// The customer failed 3-D Secure: `requires_action` → `requires_payment_method`.
    pub fn fail_authentication(&mut self, id: &str) -> OpResult {
        let pi = self.intent_mut(id, StatusCode::NOT_FOUND, "intent")?;
        if pi.status != Status::RequiresAction {
            let msg = format!(
                "Cannot fail authentication of a PaymentIntent with status {}.",
                pi.status.as_str()
            );
            return Err(ApiError::unexpected_state(msg, pi));
        }
        let err = ApiError::card_error(
            "payment_intent_authentication_failure",
            None,
            "The provided PaymentMethod has failed authentication. You can provide payment_method_data \
             or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
            None,
            pi,
        );
        pi.status = Status::RequiresPaymentMethod;
        pi.payment_method = None;
        pi.card = None;
        pi.next_action = None;
        pi.last_payment_error = Some(err.object_without_intent());
        self.bump(id, |e| e.declines += 1);
        self.intent_event("payment_intent.payment_failed", id);
        self.render_intent(id)
    }

    /// The authorization lapsed uncaptured: `requires_capture` → `canceled` (reason `automatic`).
    pub fn expire_authorization(&mut self, id: &str) -> OpResult {
        let pi = self.intent_mut(id, StatusCode::NOT_FOUND, "intent")?;
        if pi.status != Status::RequiresCapture {
            let msg = format!(
                "Only an uncaptured authorization can expire; status is {}.",
                pi.status.as_str()
            );
            return Err(ApiError::unexpected_state(msg, pi));
        }
        self.cancel_intent(id, Some("automatic".to_owned()));
        self.render_intent(id)
    }

    pub fn records(&self) -> Vec<PaymentIntentRecord> {
        self.order
            .iter()
            .filter_map(|id| self.intents.get(id))
            .map(|pi| PaymentIntentRecord {
                id: pi.id.clone(),
                status: pi.status.as_str().to_owned(),
                amount: pi.amount,
                amount_capturable: pi.amount_capturable,
                amount_received: pi.amount_received,
                amount_refunded: pi.amount_refunded,
                currency: pi.currency.clone(),
                capture_method: pi.capture_method.clone(),
                payment_method_token: pi.card_token.map(str::to_owned),
                metadata: pi.metadata.clone(),
                description: pi.description.clone(),
                latest_charge: pi.latest_charge.clone(),
                cancellation_reason: pi.cancellation_reason.clone(),
                created: pi.created,
                effects: pi.effects.clone(),
            })
            .collect()
    }

    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    pub fn events(&self) -> Vec<LedgerEvent> {
        self.events.clone()
    }

    /// How many events were recorded so far.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// The events recorded after the first `from` (cheap: clones only those).
    pub fn events_since(&self, from: usize) -> Vec<LedgerEvent> {
        self.events[from.min(self.events.len())..].to_vec()
    }

    /// The PaymentIntent whose latest charge is `charge`.
    pub fn intent_of_charge(&self, charge: &str) -> Option<String> {
        self.intents
            .values()
            .find(|pi| pi.latest_charge.as_deref() == Some(charge))
            .map(|pi| pi.id.clone())
    }

    /// Amount refunded so far on one PaymentIntent.
    pub fn amount_refunded(&self, payment_intent: &str) -> i64 {
        self.intents
            .get(payment_intent)
            .map_or(0, |pi| pi.amount_refunded)
    }
}
