//! What running a step can come to.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::events::Event;

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
    },
    /// A business failure or a refusal that retrying cannot change.
    Fail {
        reason: String,
        effect_possible: bool,
    },
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
        }
    }

    pub fn fail(reason: impl Into<String>, effect_possible: bool) -> Self {
        Outcome::Fail {
            reason: reason.into(),
            effect_possible,
        }
    }
}
