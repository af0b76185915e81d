//! The public event catalog: which internal event types are published to integrators, under which
//! public name. The JSON Schemas and examples live in the top-level `webhooks/` directory.
//!
//! Matching is on the stored type name (`events.event_type`), so a new internal event only needs
//! an entry here to be published. Internal bookkeeping events (`StepFailed`,
//! `CompensationStarted`, `NotificationSent`, `PaymentActionRequired`, `DependencyProbeFailed`)
//! are not published: they describe how sagad works, not what happened to a booking or a
//! dependency, and their shape may change freely.

/// (stored type name, public type name).
pub const PUBLISHED: &[(&str, &str)] = &[
    ("BookingRequested", "booking.requested"),
    ("BookingConfirmed", "booking.confirmed"),
    ("BookingCancelled", "booking.cancelled"),
    ("InventoryHeld", "inventory.held"),
    ("InventoryReleased", "inventory.released"),
    ("PaymentAuthorized", "payment.authorized"),
    ("PaymentCaptured", "payment.captured"),
    ("PaymentVoided", "payment.voided"),
    ("PaymentRefunded", "payment.refunded"),
    ("PaymentReceived", "payment.received"),
    ("DisputeOpened", "dispute.opened"),
    ("DisputeClosed", "dispute.closed"),
    ("ListingBlocked", "listing.blocked"),
    ("ListingUnblocked", "listing.unblocked"),
    ("BookingChanged", "booking.changed"),
    ("SagaCompleted", "saga.completed"),
    ("SagaCompensated", "saga.compensated"),
    ("SagaStuck", "saga.stuck"),
    ("DependencyCircuitOpened", "dependency.circuit_opened"),
    ("DependencyCircuitClosed", "dependency.circuit_closed"),
    (ENDPOINT_DISABLED_INTERNAL, ENDPOINT_DISABLED),
];

/// Public name of the event sagad emits when it disables an endpoint.
pub const ENDPOINT_DISABLED: &str = "endpoint.disabled";
/// Its stored type name.
pub const ENDPOINT_DISABLED_INTERNAL: &str = "EndpointDisabled";
/// Aggregate type of endpoint events in the event store.
pub const ENDPOINT_AGGREGATE: &str = "webhook_endpoint";

/// The public type of a stored event type, if it is published.
pub fn public_type(internal: &str) -> Option<&'static str> {
    PUBLISHED
        .iter()
        .find(|(i, _)| *i == internal)
        .map(|(_, p)| *p)
}

/// Every published stored type name, in catalog order.
pub fn published_internal_types() -> Vec<&'static str> {
    PUBLISHED.iter().map(|(i, _)| *i).collect()
}

/// Every public type, in catalog order.
pub fn public_types() -> impl Iterator<Item = &'static str> {
    PUBLISHED.iter().map(|(_, p)| *p)
}

/// Checks a subscription pattern: `*`, `<category>.*` for a category the catalog has, or an
/// exact public type. Unknown names are refused so a typo does not silently subscribe to nothing.
/// Patterns are matched in one place, the outbox insert (`store::outbound::FAN_OUT_CTE`).
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    if let Some(category) = pattern.strip_suffix(".*") {
        if public_types().any(|t| t.split('.').next() == Some(category)) {
            return Ok(());
        }
        return Err(format!("no event type starts with `{category}.`"));
    }
    if public_types().any(|t| t == pattern) {
        return Ok(());
    }
    Err(format!(
        "`{pattern}` is not an event type; known types: {}",
        public_types().collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_catalogued_patterns_are_accepted() {
        assert!(validate_pattern("*").is_ok());
        assert!(validate_pattern("dispute.*").is_ok());
        assert!(validate_pattern("booking.confirmed").is_ok());
        assert!(validate_pattern("booking.confirmd").is_err());
        assert!(validate_pattern("bookings.*").is_err());
        assert_eq!(public_type("StepFailed"), None);
        assert_eq!(public_type("SagaStuck"), Some("saga.stuck"));
    }
}
