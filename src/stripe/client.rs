//! The one way sagad talks to Stripe: a thin wrapper over async-stripe that sends every
//! mutating call with the caller's idempotency key, never retries on its own (the saga
//! engine retries durably with the same key), bounds each call with a timeout, and sorts
//! failures into transient (retry), declined, and rejected.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stripe::{ApiErrorsType, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::payment_intent::{
    CancelPaymentIntent, CapturePaymentIntent, CreatePaymentIntent, RetrievePaymentIntent,
};
use stripe_core::refund::{CreateRefund, ListRefund};
use stripe_core::{
    PaymentIntent, PaymentIntentAllowedPaymentMethodTypes, PaymentIntentCaptureMethod, Refund,
};

/// Stripe's production API.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com/";
/// Per-call bound so a hung Stripe cannot hang a saga step.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Failures of a Stripe call, classified for the saga engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Outcome unknown or temporary: connection error, timeout, body cut off or unreadable,
    /// HTTP 5xx, 429, `lock_timeout`, `rate_limit`, a concurrent request with the same key.
    /// Safe to retry with the SAME idempotency key.
    #[error("stripe unavailable or outcome unknown: {0}")]
    Transient(String),
    /// No connection to Stripe (refused, reset, DNS): transient too.
    #[error("stripe unreachable: {0}")]
    Unreachable(String),
    /// The card was refused (any `card_error`): definite, no authorization exists.
    /// Retrying with the same key replays the same decline.
    #[error("card declined ({code}{}): {message}", decline_code.as_deref().map(|d| format!("/{d}")).unwrap_or_default())]
    CardDeclined {
        code: String,
        decline_code: Option<String>,
        message: String,
        payment_intent: Option<String>,
    },
    /// Stripe refused the request: `invalid_request_error`, `idempotency_error`,
    /// `payment_intent_unexpected_state`, `charge_already_refunded`, `resource_missing`…
    #[error("stripe rejected the request (HTTP {status} {kind}{}): {message}", code.as_deref().map(|c| format!("/{c}")).unwrap_or_default())]
    Rejected {
        status: u16,
        kind: String,
        code: Option<String>,
        message: String,
    },
    /// The client is misconfigured (bad key, base URL or idempotency key).
    #[error("stripe client misconfigured: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying with the same idempotency key may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient(_) | Error::Unreachable(_))
    }

    /// Stripe's error code (`card_declined`, `payment_intent_unexpected_state`…).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::CardDeclined { code, .. } => Some(code),
            Error::Rejected { code, .. } => code.as_deref(),
            Error::Transient(_) | Error::Unreachable(_) | Error::Config(_) => None,
        }
    }

    /// The card network's reason for a decline (`insufficient_funds`…).
    pub fn decline_code(&self) -> Option<&str> {
        match self {
            Error::CardDeclined { decline_code, .. } => decline_code.as_deref(),
            _ => None,
        }
    }
}

fn classify(err: StripeError) -> Error {
    match err {
        StripeError::Stripe(api, status) => {
            let kind = api.type_.as_str().to_owned();
            let code = api.code.as_ref().map(|c| c.as_str().to_owned());
            let message = api
                .message
                .clone()
                .unwrap_or_else(|| "(no message)".to_owned());
            let code_is = |c: &str| code.as_deref() == Some(c);
            if status == 429 || status >= 500 || code_is("lock_timeout") || code_is("rate_limit") {
                return Error::Transient(format!(
                    "HTTP {status} {kind}{}: {message}",
                    code.as_deref().map(|c| format!("/{c}")).unwrap_or_default()
                ));
            }
            // A concurrent request with the same key is still running: try again later.
            if status == 409 && api.type_ == ApiErrorsType::IdempotencyError {
                return Error::Transient(format!("HTTP 409 {kind}: {message}"));
            }
            if api.type_ == ApiErrorsType::CardError {
                return Error::CardDeclined {
                    code: code.unwrap_or_else(|| "card_declined".to_owned()),
                    decline_code: api.decline_code.clone(),
                    message,
                    payment_intent: api.payment_intent.as_ref().map(|pi| pi.id.to_string()),
                };
            }
            Error::Rejected {
                status,
                kind,
                code,
                message,
            }
        }
        // A response we could not read may still mean the effect happened.
        StripeError::JSONDeserialize(msg) => {
            Error::Transient(format!("unreadable response: {msg}"))
        }
        StripeError::ClientError(msg) => Error::Unreachable(format!("transport: {msg}")),
        StripeError::Timeout => Error::Transient("timed out waiting for stripe".to_owned()),
        StripeError::ConfigError(msg) => Error::Config(msg),
    }
}

/// What sagad asks Stripe to authorize (a PaymentIntent with manual capture, confirmed at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    /// In the currency's smallest unit (cents).
    pub amount: i64,
    /// ISO code, lower case (`usd`).
    pub currency: String,
    /// A PaymentMethod id or test token (`pm_card_visa`).
    pub payment_method: String,
    /// Saved on the PaymentIntent (`saga_id`, `booking_id`…).
    pub metadata: Vec<(String, String)>,
    pub description: Option<String>,
}

/// A PaymentIntent's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum PaymentIntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Processing,
    RequiresCapture,
    Canceled,
    Succeeded,
    /// A status this build does not know yet.
    Unknown(String),
}

impl PaymentIntentStatus {
    pub fn as_str(&self) -> &str {
        match self {
            Self::RequiresPaymentMethod => "requires_payment_method",
            Self::RequiresConfirmation => "requires_confirmation",
            Self::RequiresAction => "requires_action",
            Self::Processing => "processing",
            Self::RequiresCapture => "requires_capture",
            Self::Canceled => "canceled",
            Self::Succeeded => "succeeded",
            Self::Unknown(s) => s,
        }
    }
}

impl From<String> for PaymentIntentStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "requires_payment_method" => Self::RequiresPaymentMethod,
            "requires_confirmation" => Self::RequiresConfirmation,
            "requires_action" => Self::RequiresAction,
            "processing" => Self::Processing,
            "requires_capture" => Self::RequiresCapture,
            "canceled" => Self::Canceled,
            "succeeded" => Self::Succeeded,
            _ => Self::Unknown(s),
        }
    }
}

impl From<PaymentIntentStatus> for String {
    fn from(s: PaymentIntentStatus) -> Self {
        s.as_str().to_owned()
    }
}

impl fmt::Display for PaymentIntentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of a PaymentIntent sagad acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntentInfo {
    pub id: String,
    pub status: PaymentIntentStatus,
    pub amount: i64,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub currency: String,
    pub cancellation_reason: Option<String>,
    /// The `ch_…` of the latest charge attempt (set once authorized, or after a decline).
    pub latest_charge: Option<String>,
    pub metadata: HashMap<String, String>,
}

impl From<PaymentIntent> for PaymentIntentInfo {
    fn from(pi: PaymentIntent) -> Self {
        Self {
            id: pi.id.to_string(),
            status: PaymentIntentStatus::from(pi.status.as_str().to_owned()),
            amount: pi.amount,
            amount_capturable: pi.amount_capturable,
            amount_received: pi.amount_received,
            currency: pi.currency.to_string(),
            cancellation_reason: pi.cancellation_reason.map(|r| r.as_str().to_owned()),
            latest_charge: pi.latest_charge.map(|c| c.id().to_string()),
            metadata: pi.metadata,
        }
    }
}

/// The parts of a Refund sagad acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundInfo {
    pub id: String,
    /// `pending`, `succeeded`, `failed`, `canceled`, `requires_action` (`unknown` if absent).
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub payment_intent: Option<String>,
}

impl From<Refund> for RefundInfo {
    fn from(r: Refund) -> Self {
        Self {
            id: r.id.to_string(),
            status: r.status.unwrap_or_else(|| "unknown".to_owned()),
            amount: r.amount,
            currency: r.currency.to_string(),
            payment_intent: r.payment_intent.map(|pi| pi.id().to_string()),
        }
    }
}

/// Where and how to reach Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// `None` = Stripe's production API. A base with a path gets a trailing slash.
    pub api_base: Option<String>,
    /// Bound on each call, connection to last body byte.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            api_base: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A cheap-to-clone Stripe client.
#[derive(Clone)]
pub struct StripeClient {
    /// async-stripe's request types, sent over sagad's pooled transport.
    inner: super::transport::Transport,
    api_base: String,
}

impl fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("StripeClient")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    /// A client with the default timeout; `api_base` is `STRIPE_API_BASE` (None = Stripe).
    pub fn new(secret_key: &str, api_base: Option<&str>) -> Result<Self, Error> {
        Self::with_options(
            secret_key,
            ClientOptions {
                api_base: api_base.map(str::to_owned),
                ..ClientOptions::default()
            },
        )
    }

    pub fn with_options(secret_key: &str, options: ClientOptions) -> Result<Self, Error> {
        if secret_key.trim().is_empty() || secret_key.trim() != secret_key {
            return Err(Error::Config(
                "the Stripe secret key is empty or padded".to_owned(),
            ));
        }
        if options.timeout.is_zero() {
            return Err(Error::Config(
                "the Stripe timeout must be positive".to_owned(),
            ));
        }
        let api_base = normalize_base(options.api_base.as_deref().unwrap_or(DEFAULT_API_BASE))?;
        let inner = super::transport::Transport::new(secret_key, api_base.clone(), options.timeout)
            .map_err(Error::Config)?;
        Ok(Self { inner, api_base })
    }

    /// The base URL requests go to (always ends in `/`).
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// Creates and confirms a PaymentIntent with `capture_method=manual`: on success the
    /// funds are held (`requires_capture`), or 3-D Secure is pending (`requires_action`).
    #[tracing::instrument(skip_all, fields(idempotency_key, payment_intent))]
    pub async fn authorize(
        &self,
        req: &AuthorizeRequest,
        idempotency_key: &str,
    ) -> Result<PaymentIntentInfo, Error> {
        tracing::Span::current().record("idempotency_key", idempotency_key);
        let currency: stripe_types::Currency = req
            .currency
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| Error::Config(format!("invalid currency {}", req.currency)))?;
        let mut create = CreatePaymentIntent::new(req.amount, currency)
            .capture_method(PaymentIntentCaptureMethod::Manual)
            .confirm(true)
            .payment_method(req.payment_method.clone())
            .allowed_payment_method_types(vec![PaymentIntentAllowedPaymentMethodTypes::Card])
            .metadata(req.metadata.iter().cloned().collect::<HashMap<_, _>>());
        if let Some(description) = &req.description {
            create = create.description(description.clone());
        }
        let pi = self.send(create, idempotent(idempotency_key)?).await?;
        tracing::Span::current().record("payment_intent", pi.id.as_str());
        Ok(pi.into())
    }

    /// Reads a PaymentIntent (safe to call any number of times).
    #[tracing::instrument(skip(self))]
    pub async fn retrieve(&self, payment_intent: &str) -> Result<PaymentIntentInfo, Error> {
        let pi = self
            .send(
                RetrievePaymentIntent::new(payment_intent),
                RequestStrategy::Once,
            )
            .await?;
        Ok(pi.into())
    }

    /// Captures the full authorized amount.
    #[tracing::instrument(skip(self))]
    pub async fn capture(
        &self,
        payment_intent: &str,
        idempotency_key: &str,
    ) -> Result<PaymentIntentInfo, Error> {
        let pi = self
            .send(
                CapturePaymentIntent::new(payment_intent),
                idempotent(idempotency_key)?,
            )
            .await?;
        Ok(pi.into())
    }

    /// Voids an authorization (or abandons an unconfirmed PaymentIntent).
    #[tracing::instrument(skip(self))]
    pub async fn cancel(
        &self,
        payment_intent: &str,
        idempotency_key: &str,
    ) -> Result<PaymentIntentInfo, Error> {
        let pi = self
            .send(
                CancelPaymentIntent::new(payment_intent),
                idempotent(idempotency_key)?,
            )
            .await?;
        Ok(pi.into())
    }

    /// Refunds everything not yet refunded on a captured PaymentIntent.
    #[tracing::instrument(skip(self))]
    pub async fn refund(
        &self,
        payment_intent: &str,
        idempotency_key: &str,
    ) -> Result<RefundInfo, Error> {
        let refund = self
            .send(
                CreateRefund::new().payment_intent(payment_intent),
                idempotent(idempotency_key)?,
            )
            .await?;
        Ok(refund.into())
    }

    /// Refunds `amount` (smallest currency unit) of a captured PaymentIntent.
    #[tracing::instrument(skip(self))]
    pub async fn refund_amount(
        &self,
        payment_intent: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<RefundInfo, Error> {
        let refund = self
            .send(
                CreateRefund::new()
                    .payment_intent(payment_intent)
                    .amount(amount),
                idempotent(idempotency_key)?,
            )
            .await?;
        Ok(refund.into())
    }
}

impl StripeClient {
    /// Every refund of a PaymentIntent, newest first (safe to call any number of times).
    #[tracing::instrument(skip(self))]
    pub async fn refunds_of(&self, payment_intent: &str) -> Result<Vec<RefundInfo>, Error> {
        /// Pages read at most (100 refunds each), so a misbehaving server cannot loop us.
        const MAX_PAGES: usize = 20;
        let mut out: Vec<RefundInfo> = Vec::new();
        for _ in 0..MAX_PAGES {
            let mut list = ListRefund::new().payment_intent(payment_intent).limit(100);
            if let Some(last) = out.last() {
                list = list.starting_after(last.id.clone());
            }
            let page = self.send(list, RequestStrategy::Once).await?;
            let more = page.has_more && !page.data.is_empty();
            out.extend(page.data.into_iter().map(RefundInfo::from));
            if !more {
                return Ok(out);
            }
        }
        Err(Error::Transient(format!(
            "more than {} refunds listed for {payment_intent}",
            MAX_PAGES * 100
        )))
    }
}

impl StripeClient {
    /// Sends `req` once under `strategy` over the pooled transport, classifying a failure.
    async fn send<R>(&self, req: R, strategy: RequestStrategy) -> Result<R::Output, Error>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        req.customize()
            .request_strategy(strategy)
            .send(&self.inner)
            .await
            .map_err(failed)
    }
}

/// One attempt with the caller's key: async-stripe's own retry strategies would send no
/// key or a fresh one per call, which is exactly what a durable saga must not do.
fn idempotent(key: &str) -> Result<RequestStrategy, Error> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| Error::Config(format!("invalid idempotency key: {e}")))
}

/// Classifies a failed call and logs it once: a warning when the outcome is unknown or sagad is
/// misconfigured, info for Stripe's definite answers (a decline, a refusal such as an unknown
/// PaymentIntent), which the caller turns into saga outcomes.
fn failed(err: StripeError) -> Error {
    let err = classify(err);
    match &err {
        Error::Transient(_) | Error::Unreachable(_) | Error::Config(_) => {
            tracing::warn!(error = %err, transient = err.is_transient(), "stripe call failed")
        }
        Error::CardDeclined { .. } | Error::Rejected { .. } => {
            tracing::info!(error = %err, "stripe answered with an error")
        }
    }
    err
}

/// Checks the scheme and adds the trailing slash async-stripe needs before `v1/…`.
fn normalize_base(base: &str) -> Result<String, Error> {
    let base = base.trim();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::Config(format!(
            "STRIPE_API_BASE must be an http(s) URL, got {base:?}"
        )));
    }
    Ok(if base.ends_with('/') {
        base.to_owned()
    } else {
        format!("{base}/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_gets_a_trailing_slash() {
        assert_eq!(
            normalize_base("http://127.0.0.1:1").unwrap(),
            "http://127.0.0.1:1/"
        );
        assert_eq!(
            normalize_base("http://h/stripe/").unwrap(),
            "http://h/stripe/"
        );
        assert!(normalize_base("127.0.0.1:1").is_err());
    }

    #[test]
    fn status_round_trips_through_strings() {
        for s in ["requires_capture", "succeeded", "something_new"] {
            assert_eq!(PaymentIntentStatus::from(s.to_owned()).as_str(), s);
        }
        assert_eq!(
            PaymentIntentStatus::from("canceled".to_owned()),
            PaymentIntentStatus::Canceled
        );
    }

    #[test]
    fn transport_and_timeouts_are_transient() {
        assert!(classify(StripeError::Timeout).is_transient());
        assert!(classify(StripeError::ClientError("reset".into())).is_transient());
        assert!(classify(StripeError::JSONDeserialize("eof".into())).is_transient());
        assert!(!classify(StripeError::ConfigError("x".into())).is_transient());
    }
}
