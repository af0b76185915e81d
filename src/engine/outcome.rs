//! What running a step can come to.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::breaker::{CallResult, Dependency};
use crate::events::Event;

/// Why a retryable failure happened: only a dependency's failures count against its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// The dependency failed to answer properly: 5xx, 429, a timeout, an unreadable answer.
    Unavailable,
    /// No connection to the dependency at all.
    Unreachable,
    /// Anything else (our database, a state that needs time): not the dependency's fault.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The step's effect happened. `output` is kept in the saga's context under the step's name.
    Done {
        output: serde_json::Value,
        events: Vec<Event>,
    },
    /// Try again later. `effect_possible`: the effect may have happened although we saw no answer.
    Retry {
        error: String,
        effect_possible: bool,
        min_delay: Option<Duration>,
        /// What failed, for the dependency's circuit breaker.
        cause: RetryCause,
    },
    /// A business failure or a refusal that retrying cannot change.
    Fail {
        reason: String,
        effect_possible: bool,
    },
    /// Not run: the circuit breaker of the dependency the step needs is open. The saga pauses
    /// without spending an attempt until the breaker closes (or the step's give-up deadline).
    Paused { dependency: Dependency },
    /// Park the saga until an outside event (its `key`) or the deadline.
    Wait {
        output: serde_json::Value,
        key: String,
        deadline: DateTime<Utc>,
        events: Vec<Event>,
    },
}

impl Outcome {
    pub fn done(output: serde_json::Value, events: Vec<Event>) -> Self {
        Outcome::Done { output, events }
    }

    pub fn retry(error: impl Into<String>, effect_possible: bool) -> Self {
        Outcome::Retry {
            error: error.into(),
            effect_possible,
            min_delay: None,
            cause: RetryCause::Other,
        }
    }

    /// A retryable failure of the dependency (`cause` says how).
    pub fn unavailable(error: impl Into<String>, effect_possible: bool, cause: RetryCause) -> Self {
        Outcome::Retry {
            error: error.into(),
            effect_possible,
            min_delay: None,
            cause,
        }
    }

    /// What this outcome of a call tells the dependency's breaker.
    pub fn call_result(&self) -> CallResult {
        match self {
            Outcome::Retry {
                cause: RetryCause::Unavailable,
                ..
            } => CallResult::Failed { connection: false },
            Outcome::Retry {
                cause: RetryCause::Unreachable,
                ..
            } => CallResult::Failed { connection: true },
            _ => CallResult::Answered,
        }
    }

    pub fn fail(reason: impl Into<String>, effect_possible: bool) -> Self {
        Outcome::Fail {
            reason: reason.into(),
            effect_possible,
        }
    }
}
