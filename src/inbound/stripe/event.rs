//! A Stripe event as it arrives (`{"id": "evt_…", "type": …, "data": {"object": …}}`) and what
//! sagad makes of its type.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

/// Why a verified body is still not a Stripe event.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("not a Stripe event: {0}")]
    NotAnEvent(&'static str),
}

/// The envelope fields sagad reads; the whole body is stored as it came.
#[derive(Debug, Clone)]
pub struct StripeEvent {
    pub id: String,
    pub event_type: String,
    pub created: Option<DateTime<Utc>>,
    pub livemode: bool,
    pub api_version: Option<String>,
    /// `data.object`: a snapshot at the time of the event, possibly stale by now.
    pub object: Value,
}

#[derive(Deserialize)]
struct Envelope {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    created: Option<i64>,
    #[serde(default)]
    livemode: bool,
    api_version: Option<String>,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    object: Option<Value>,
}

impl StripeEvent {
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let env: Envelope = serde_json::from_slice(body)?;
        Self::from_envelope(env)
    }

    pub fn from_value(v: &Value) -> Result<Self, ParseError> {
        Self::from_envelope(Envelope::deserialize(v)?)
    }

    fn from_envelope(env: Envelope) -> Result<Self, ParseError> {
        let id = env
            .id
            .filter(|id| !id.is_empty() && id.len() <= 255)
            .ok_or(ParseError::NotAnEvent("no id"))?;
        let event_type = env
            .event_type
            .filter(|t| !t.is_empty() && t.len() <= 255)
            .ok_or(ParseError::NotAnEvent("no type"))?;
        let object = env
            .data
            .and_then(|d| d.object)
            .filter(Value::is_object)
            .ok_or(ParseError::NotAnEvent("no data.object"))?;
        Ok(Self {
            id,
            event_type,
            created: env.created.and_then(|t| DateTime::from_timestamp(t, 0)),
            livemode: env.livemode,
            api_version: env.api_version,
            object,
        })
    }

    pub fn kind(&self) -> Option<Kind> {
        Kind::of(&self.event_type)
    }

    /// The PaymentIntent the event is about, per the payload (a hint: our records decide).
    pub fn payment_intent_id(&self) -> Option<String> {
        let field = match self.kind() {
            Some(k) if k.is_payment_intent() => "id",
            _ => "payment_intent",
        };
        match self.object.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            // An expanded object.
            Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    }

    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.object.get(name).and_then(Value::as_str)
    }

    pub fn int_field(&self, name: &str) -> Option<i64> {
        self.object.get(name).and_then(Value::as_i64)
    }
}

/// Replaces every U+0000 in `v`'s strings and keys with U+FFFD (PostgreSQL's text and jsonb
/// cannot hold NUL); returns whether there was any.
pub fn replace_nul(v: &mut Value) -> bool {
    const NUL: char = '\0';
    match v {
        Value::String(s) if s.contains(NUL) => {
            *s = s.replace(NUL, "\u{FFFD}");
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |any, i| replace_nul(i) | any),
        Value::Object(fields) => {
            let mut any = false;
            if fields.keys().any(|k| k.contains(NUL)) {
                let old = std::mem::take(fields);
                *fields = old
                    .into_iter()
                    .map(|(k, v)| (k.replace(NUL, "\u{FFFD}"), v))
                    .collect();
                any = true;
            }
            fields.values_mut().fold(any, |any, f| replace_nul(f) | any)
        }
        _ => false,
    }
}

/// The event types sagad acts on; any other type is stored and acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `payment_intent.amount_capturable_updated`, `.payment_failed`, `.requires_action`,
    /// `.processing`: the authorization moved; a parked saga re-reads it and decides.
    AuthorizationChanged,
    /// `payment_intent.canceled` (voided by us, or an authorization that expired).
    Canceled,
    /// `payment_intent.succeeded`: captured.
    Succeeded,
    /// `charge.refunded`: `amount_refunded` is cumulative.
    ChargeRefunded,
    DisputeCreated,
    DisputeClosed,
}

impl Kind {
    pub fn of(event_type: &str) -> Option<Kind> {
        Some(match event_type {
            "payment_intent.amount_capturable_updated"
            | "payment_intent.payment_failed"
            | "payment_intent.requires_action"
            | "payment_intent.processing" => Kind::AuthorizationChanged,
            "payment_intent.canceled" => Kind::Canceled,
            "payment_intent.succeeded" => Kind::Succeeded,
            "charge.refunded" => Kind::ChargeRefunded,
            "charge.dispute.created" => Kind::DisputeCreated,
            "charge.dispute.closed" => Kind::DisputeClosed,
            _ => return None,
        })
    }

    pub fn is_payment_intent(self) -> bool {
        matches!(
            self,
            Kind::AuthorizationChanged | Kind::Canceled | Kind::Succeeded
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_payment_intent_per_type() {
        let pi =
            StripeEvent::from_value(&json!({"id": "evt_1", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_1", "object": "payment_intent"}}}))
            .unwrap();
        assert_eq!(pi.payment_intent_id().as_deref(), Some("pi_1"));
        let ch = StripeEvent::from_value(&json!({"id": "evt_2", "type": "charge.refunded",
            "data": {"object": {"id": "ch_1", "payment_intent": "pi_2"}}}))
        .unwrap();
        assert_eq!(ch.payment_intent_id().as_deref(), Some("pi_2"));
        assert!(StripeEvent::from_value(&json!({"id": "evt_3", "type": "x"})).is_err());
        assert!(StripeEvent::parse(b"not json").is_err());
        assert_eq!(Kind::of("customer.created"), None);
    }

    #[test]
    fn nul_characters_are_replaced_in_strings_and_keys() {
        let mut v: Value =
            serde_json::from_str(r#"{"a\u0000": ["x\u0000y", 1, {"b": "\u0000"}], "c": "ok"}"#)
                .unwrap();
        assert!(replace_nul(&mut v));
        assert_eq!(
            v,
            json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, {"b": "\u{FFFD}"}], "c": "ok"})
        );
        assert!(!replace_nul(&mut v));
    }
}
