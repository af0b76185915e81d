//! Event schema versions and upcasters. Stored events never change: when an event type's shape
//! changes, its current schema version goes up, and a pure function per step (vN → vN+1) brings a
//! payload stored at an older version to the current shape. Every read of stored events goes
//! through [`to_current`] (the store's [`crate::store::events::EventRecord`] decoding: the API,
//! the feed, projection rebuild and verify, a booking's history; and the outbound webhook body),
//! so nothing downstream ever sees an old shape.
//!
//! | type | version | change |
//! |------|---------|--------|
//! | `BookingCancelled` | 2 | adds `by`, `actor` and `refund` (see [`booking_cancelled_v1_to_v2`]) |
//!
//! Every other type is at [`crate::events::SCHEMA_VERSION`] (1).

use serde_json::{Map, Value};

use crate::engine::operator::OPERATOR_CANCEL;
use crate::engine::plan::GUEST_CANCEL;
use crate::events::SCHEMA_VERSION;

/// The schema version events of `event_type` are written at now.
pub fn current_version(event_type: &str) -> i32 {
    match event_type {
        "BookingCancelled" => 2,
        _ => SCHEMA_VERSION,
    }
}

/// The payload of a stored `event_type` event written at schema `version`, brought to the
/// current version, with that version. A payload written by a newer sagad (a version above this
/// build's) is returned as it is.
pub fn to_current(event_type: &str, version: i32, payload: Value) -> (i32, Value) {
    let mut version = version;
    let mut payload = payload;
    let current = current_version(event_type);
    while version < current {
        payload = match (event_type, version) {
            ("BookingCancelled", 1) => booking_cancelled_v1_to_v2(payload),
            // No upcaster: a version this build never wrote (below 1). Leave it be.
            _ => return (version, payload),
        };
        version += 1;
    }
    (version, payload)
}

/// `BookingCancelled` v1 (`{reason}`) → v2 (`{reason, by, actor, refund}`). Version 1 recorded
/// neither who cancelled nor the refund, so:
/// - `by`: `guest` when the reason is `cancelled_by_guest` (the only cancellation the API had),
///   `operator` for `cancelled_by_operator`, otherwise `sagad` (a failed booking undone);
/// - `actor`: `guest` / `unknown` (version 1 did not keep the operator's token name) / `sagad`;
/// - `refund`: `null` (unknown; the booking's `PaymentRefunded` events say what was refunded).
pub fn booking_cancelled_v1_to_v2(payload: Value) -> Value {
    let mut m = match payload {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let reason = m.get("reason").and_then(Value::as_str).unwrap_or_default();
    let (by, actor) = match reason {
        GUEST_CANCEL => ("guest", "guest"),
        OPERATOR_CANCEL => ("operator", "unknown"),
        _ => ("sagad", "sagad"),
    };
    m.entry("by").or_insert_with(|| by.into());
    m.entry("actor").or_insert_with(|| actor.into());
    m.entry("refund").or_insert(Value::Null);
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::events::{CancelledBy, Event};

    #[test]
    fn booking_cancelled_v1_reads_as_v2_with_explicit_defaults() {
        for (reason, by, actor) in [
            ("cancelled_by_guest", CancelledBy::Guest, "guest"),
            ("cancelled_by_operator", CancelledBy::Operator, "unknown"),
            ("card_declined", CancelledBy::Sagad, "sagad"),
        ] {
            let (v, payload) = to_current("BookingCancelled", 1, json!({ "reason": reason }));
            assert_eq!(v, 2);
            assert_eq!(
                Event::from_stored("BookingCancelled", &payload).unwrap(),
                Event::BookingCancelled {
                    reason: reason.into(),
                    by,
                    actor: actor.into(),
                    refund: None,
                }
            );
        }
    }

    #[test]
    fn current_and_newer_payloads_are_left_alone() {
        let v2 = json!({ "reason": "r", "by": "host", "actor": "host", "refund": null });
        assert_eq!(
            to_current("BookingCancelled", 2, v2.clone()),
            (2, v2.clone())
        );
        assert_eq!(
            to_current("BookingCancelled", 3, v2.clone()),
            (3, v2.clone())
        );
        assert_eq!(to_current("SagaCompleted", 1, json!({})), (1, json!({})));
        assert_eq!(current_version("BookingConfirmed"), SCHEMA_VERSION);
    }
}
