//! Fault injection: make the next N matching requests fail, slow down, or lose their response.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The API operation a request performs (and a fault targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `POST /v1/payment_intents`
    Create,
    /// `GET /v1/payment_intents/{id}`
    Retrieve,
    /// `POST /v1/payment_intents/{id}/confirm`
    Confirm,
    /// `POST /v1/payment_intents/{id}/capture`
    Capture,
    /// `POST /v1/payment_intents/{id}/cancel`
    Cancel,
    /// `POST /v1/refunds`
    Refund,
    /// `GET /v1/refunds`
    ListRefunds,
    /// `GET /v1/refunds/{id}`
    RetrieveRefund,
    /// Matches every operation (only meaningful as a fault target).
    Any,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Retrieve => "retrieve",
            Operation::Confirm => "confirm",
            Operation::Capture => "capture",
            Operation::Cancel => "cancel",
            Operation::Refund => "refund",
            Operation::ListRefunds => "list_refunds",
            Operation::RetrieveRefund => "retrieve_refund",
            Operation::Any => "any",
        }
    }

    fn matches(self, op: Operation) -> bool {
        self == Operation::Any || self == op
    }
}

/// What an injected fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// HTTP 500 `api_error` before anything happens; nothing is stored under the idempotency key.
    ServerError,
    /// Hold the response back this long. The effect happens (and is stored) first, so a
    /// client that times out does not know the outcome, as with a slow real Stripe.
    Latency { ms: u64 },
    /// Hold the response back a delay drawn uniformly from `min_ms..=max_ms` for each request,
    /// as [`FaultKind::Latency`] otherwise: a network peer's spread of answer times.
    LatencyRange { min_ms: u64, max_ms: u64 },
    /// Perform the effect, store the idempotent result, then cut the connection in the middle
    /// of the response body: the client sees a transport error and must retry with the same key.
    LoseResponse,
}

/// A fault for the next `times` requests matching `operation`.
///
/// Over HTTP: `POST /_double/faults` with e.g.
/// `{"operation": "capture", "kind": "lose_response", "times": 1}` or
/// `{"operation": "any", "kind": "latency", "ms": 3000, "times": 2}` or
/// `{"operation": "any", "kind": "latency_range", "min_ms": 50, "max_ms": 150, "times": 1000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub operation: Operation,
    #[serde(flatten)]
    pub kind: FaultKind,
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

impl Fault {
    pub fn server_error(operation: Operation) -> Self {
        Self {
            operation,
            kind: FaultKind::ServerError,
            times: 1,
        }
    }

    pub fn latency(operation: Operation, delay: Duration) -> Self {
        Self {
            operation,
            kind: FaultKind::Latency {
                ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
            times: 1,
        }
    }

    /// Each matching request is held back a delay drawn uniformly from `min..=max` (both
    /// rounded down to milliseconds; `max` below `min` is taken as `min`).
    pub fn latency_between(operation: Operation, min: Duration, max: Duration) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            operation,
            kind: FaultKind::LatencyRange {
                min_ms: ms(min),
                max_ms: ms(max).max(ms(min)),
            },
            times: 1,
        }
    }

    pub fn lose_response(operation: Operation) -> Self {
        Self {
            operation,
            kind: FaultKind::LoseResponse,
            times: 1,
        }
    }

    /// Applies the fault to the next `times` matching requests instead of one.
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }
}

/// The faults that apply to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub server_error: bool,
    pub lose_response: bool,
    pub latency: Option<Duration>,
}

impl Applied {
    pub fn label(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.server_error {
            parts.push("server_error".to_owned());
        }
        if self.lose_response {
            parts.push("lose_response".to_owned());
        }
        if let Some(d) = self.latency {
            parts.push(format!("latency {}ms", d.as_millis()));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Pending faults, consumed in the order they were injected.
#[derive(Debug, Default)]
pub struct Faults {
    pending: Vec<Fault>,
}

impl Faults {
    pub fn inject(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.pending.push(fault);
        }
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn pending(&self) -> Vec<Fault> {
        self.pending.clone()
    }

    /// Takes at most one latency fault and one failing fault (server error or lost response)
    /// matching `op`, decrementing their counts.
    pub fn take(&mut self, op: Operation) -> Applied {
        let mut applied = Applied::default();
        for fault in &mut self.pending {
            if !fault.operation.matches(op) || fault.times == 0 {
                continue;
            }
            match fault.kind {
                FaultKind::Latency { ms } if applied.latency.is_none() => {
                    applied.latency = Some(Duration::from_millis(ms));
                    fault.times -= 1;
                }
                FaultKind::LatencyRange { min_ms, max_ms } if applied.latency.is_none() => {
                    let ms = rand::random_range(min_ms..=max_ms.max(min_ms));
                    applied.latency = Some(Duration::from_millis(ms));
                    fault.times -= 1;
                }
                FaultKind::ServerError if !applied.server_error && !applied.lose_response => {
                    applied.server_error = true;
                    fault.times -= 1;
                }
                FaultKind::LoseResponse if !applied.server_error && !applied.lose_response => {
                    applied.lose_response = true;
                    fault.times -= 1;
                }
                _ => {}
            }
        }
        self.pending.retain(|f| f.times > 0);
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_per_matching_request() {
        let mut faults = Faults::default();
        faults.inject(Fault::server_error(Operation::Capture).times(2));
        faults.inject(Fault::latency(Operation::Any, Duration::from_millis(5)));
        assert_eq!(
            faults.take(Operation::Create).latency,
            Some(Duration::from_millis(5))
        );
        assert!(!faults.take(Operation::Create).server_error);
        assert!(faults.take(Operation::Capture).server_error);
        assert!(faults.take(Operation::Capture).server_error);
        assert_eq!(faults.take(Operation::Capture), Applied::default());
        assert!(faults.pending().is_empty());
    }

    #[test]
    fn latency_range_draws_each_request_within_its_bounds() {
        let mut faults = Faults::default();
        faults.inject(
            Fault::latency_between(
                Operation::Any,
                Duration::from_millis(50),
                Duration::from_millis(150),
            )
            .times(2000),
        );
        let delays: Vec<Duration> = (0..2000)
            .map(|_| faults.take(Operation::Capture).latency.unwrap())
            .collect();
        let (min, max) = (Duration::from_millis(50), Duration::from_millis(150));
        assert!(delays.iter().all(|d| (min..=max).contains(d)), "{delays:?}");
        // Spread over the range, not one fixed value: both thirds at the ends are drawn.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(84)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(116)));
        assert!(faults.pending().is_empty());
        // An inverted range is the lower bound.
        let f = Fault::latency_between(
            Operation::Any,
            Duration::from_millis(30),
            Duration::from_millis(10),
        );
        assert_eq!(
            f.kind,
            FaultKind::LatencyRange {
                min_ms: 30,
                max_ms: 30
            }
        );
    }

    #[test]
    fn fault_json_shape() {
        let f: Fault =
            serde_json::from_str(r#"{"operation":"any","kind":"latency","ms":30,"times":2}"#)
                .unwrap();
        assert_eq!(
            f,
            Fault::latency(Operation::Any, Duration::from_millis(30)).times(2)
        );
        let f: Fault = serde_json::from_str(
            r#"{"operation":"any","kind":"latency_range","min_ms":50,"max_ms":150,"times":9}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Fault::latency_between(
                Operation::Any,
                Duration::from_millis(50),
                Duration::from_millis(150)
            )
            .times(9)
        );
        let f: Fault =
            serde_json::from_str(r#"{"operation":"capture","kind":"lose_response"}"#).unwrap();
        assert_eq!(f, Fault::lose_response(Operation::Capture));
    }
}
