//! What the double stores: PaymentIntents, refunds, effect counters, events.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::cards::TestCard;

/// A PaymentIntent's status, as Stripe spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    RequiresCapture,
    Canceled,
    Succeeded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::RequiresPaymentMethod => "requires_payment_method",
            Status::RequiresConfirmation => "requires_confirmation",
            Status::RequiresAction => "requires_action",
            Status::RequiresCapture => "requires_capture",
            Status::Canceled => "canceled",
            Status::Succeeded => "succeeded",
        }
    }
}

/// A PaymentIntent as the double stores it.
#[derive(Debug, Clone)]
pub struct Intent {
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub amount_refunded: i64,
    pub currency: String,
    pub capture_method: String,
    pub confirmation_method: String,
    pub status: Status,
    pub client_secret: String,
    pub description: Option<String>,
    pub receipt_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub payment_method_types: Vec<String>,
    /// The `pm_…` id shown to clients.
    pub payment_method: Option<String>,
    /// The test card behind `payment_method`.
    pub card: Option<&'static TestCard>,
    /// The last test card token attached (kept after a decline detaches the card).
    pub card_token: Option<&'static str>,
    pub return_url: Option<String>,
    pub latest_charge: Option<String>,
    pub cancellation_reason: Option<String>,
    pub canceled_at: Option<i64>,
    pub last_payment_error: Option<Value>,
    pub next_action: Option<Value>,
    pub effects: Effects,
}

/// Effects actually performed, per PaymentIntent or in total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Effects {
    pub authorizations: u32,
    pub declines: u32,
    pub authentications_required: u32,
    pub captures: u32,
    pub cancels: u32,
    pub refunds: u32,
    pub refunded_amount: i64,
}

/// Totals over the double's lifetime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub payment_intents_created: u32,
    #[serde(flatten)]
    pub effects: Effects,
}

/// What the inspection API shows for one PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentIntentRecord {
    pub id: String,
    pub status: String,
    pub amount: i64,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub amount_refunded: i64,
    pub currency: String,
    pub capture_method: String,
    /// The test card token (`pm_card_visa`…) the PaymentIntent was confirmed with.
    pub payment_method_token: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub description: Option<String>,
    pub latest_charge: Option<String>,
    pub cancellation_reason: Option<String>,
    pub created: i64,
    pub effects: Effects,
}

#[derive(Debug, Clone)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub balance_transaction: String,
    pub charge: Option<String>,
    pub created: i64,
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
    pub payment_intent: String,
    pub reason: Option<String>,
}

/// An event the double would deliver as a webhook (`payment_intent.succeeded`…).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    /// A snapshot of the object (`data.object` in a Stripe event).
    pub object: Value,
}
