//! Saga definitions as data: `sagas/*.toml` parsed into [`SagaDefinition`]s.
//!
//! A definition names a saga, gives it a version, and lists its steps in order. Each step has an
//! action, an optional compensation, a timeout, a retry policy and what a permanent failure does.
//! [`parse`] checks one file against the [`ActionCatalog`] the engine knows how to run and reports
//! every problem it finds, located as `file:line:column`. [`load_dir`] loads a whole directory.
//!
//! The engine stores each saga's definition as JSON (serde derives below) so a running saga
//! finishes on the version it started with; [`SagaDefinition::fingerprint`] tells two copies of
//! the same `(name, version)` apart if someone edited a file without bumping `version`.

pub mod duration;
mod error;
mod suggest;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::error::DefinitionError;
pub(crate) use self::error::SourceMap;
use crate::engine::retry::RetryPolicy;

/// Timeout of a step when neither the step nor `[defaults]` set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated saga definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDefinition {
    /// Matches `[a-z][a-z0-9_]*`.
    pub name: String,
    /// At least 1. A `(name, version)` pair names one definition for ever.
    pub version: u32,
    pub description: Option<String>,
    /// At least one, run in this order and compensated in reverse.
    pub steps: Vec<StepDefinition>,
    /// How compensations are retried; when exhausted the saga is parked as `stuck`.
    pub compensation_retry: RetryPolicy,
}

/// One step of a saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Unique within the saga; matches `[a-z][a-z0-9_]*`.
    pub name: String,
    /// An entry of [`ActionCatalog::actions`].
    pub action: String,
    /// An entry of [`ActionCatalog::compensations`]; `None` when the step has nothing to undo.
    pub compensation: Option<String>,
    /// How long one attempt of the action may take. Never zero.
    #[serde(with = "duration::text")]
    pub timeout: Duration,
    /// How the action is retried after a retryable failure.
    pub retry: RetryPolicy,
    /// Wall time, counted from the first failed attempt of the step, during which retryable
    /// failures (5xx, 429, timeouts, connection errors) are retried whatever the attempt count
    /// (which then only paces the backoff); past it the step fails with `dependency_unavailable`.
    /// `None`: retries end when `retry.max_attempts` runs out.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::text_opt"
    )]
    pub give_up_after: Option<Duration>,
    /// What a permanent failure (or exhausted retries) of the action does.
    pub on_failure: OnFailure,
    /// Free-form parameters handed to the action; always a JSON object.
    pub params: serde_json::Value,
}

/// What a step's permanent failure does to the saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Undo the completed steps, newest first (the default).
    Compensate,
    /// Park the saga as `stuck` for an operator to decide.
    Stuck,
}

impl OnFailure {
    pub const ALL: [(&'static str, OnFailure); 2] = [
        ("compensate", OnFailure::Compensate),
        ("stuck", OnFailure::Stuck),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Compensate => "compensate",
            OnFailure::Stuck => "stuck",
        }
    }
}

/// What the engine knows how to run. The caller passes it in, so definitions do not depend on
/// the engine's action code.
#[derive(Clone, Copy, Debug)]
pub struct ActionCatalog<'a> {
    pub actions: &'a [&'a str],
    pub compensations: &'a [&'a str],
}

impl SagaDefinition {
    pub fn step(&self, index: usize) -> Option<&StepDefinition> {
        self.steps.get(index)
    }

    /// The first step whose failure parks the saga (`on_failure = "stuck"`): from it on, the saga
    /// has done what its compensations cannot undo (a change's swap of the booking's nights, say),
    /// so it is not cancelled either. `None`: every step's failure compensates.
    pub fn irreversible_from(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.on_failure == OnFailure::Stuck)
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|step| step.name == name)
    }

    /// The JSON form the engine stores with each saga.
    pub fn to_json(&self) -> serde_json::Value {
        // Only maps with string keys, strings, integers and finite floats: cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Reads back what [`to_json`](Self::to_json) produced. The catalog is not consulted: a stored
    /// definition stays valid for the sagas that started on it.
    pub fn from_json(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(value)
    }

    /// A stable content hash: lowercase hex SHA-256 of the canonical JSON (object keys sorted,
    /// no whitespace). Equal definitions have equal fingerprints across processes and releases.
    pub fn fingerprint(&self) -> String {
        let mut canonical = String::new();
        write_canonical(&self.to_json(), &mut canonical);
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

/// Parses and validates one definition. `file` is only used in error locations.
///
/// Returns every problem found, sorted by position, not just the first.
pub fn parse(
    source: &str,
    file: &str,
    catalog: &ActionCatalog,
) -> Result<SagaDefinition, Vec<DefinitionError>> {
    validate::parse(source, file, catalog).map(|parsed| parsed.definition)
}

/// Loads every `*.toml` file in `dir` (not recursing), sorted by file name.
///
/// Errors from all files are collected. The same `(name, version)` in two files is an error:
/// bump `version` when you change a definition.
pub fn load_dir(
    dir: &Path,
    catalog: &ActionCatalog,
) -> Result<Vec<SagaDefinition>, Vec<DefinitionError>> {
    let label = dir.display().to_string();
    let entries = fs::read_dir(dir).map_err(|error| {
        vec![DefinitionError::whole_file(
            &label,
            format!("cannot read directory: {error}"),
        )]
    })?;
    let mut errors = Vec::new();
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                    paths.push(path);
                }
            }
            Err(error) => errors.push(DefinitionError::whole_file(
                &label,
                format!("cannot list directory: {error}"),
            )),
        }
    }
    paths.sort();

    let mut definitions = Vec::new();
    let mut seen: HashMap<(String, u32), String> = HashMap::new();
    for path in paths {
        let file = path.display().to_string();
        let source = match fs::read_to_string(&path) {
            Ok(source) => source,
            Err(error) => {
                errors.push(DefinitionError::whole_file(
                    &file,
                    format!("cannot read file: {error}"),
                ));
                continue;
            }
        };
        match validate::parse(&source, &file, catalog) {
            Ok(parsed) => {
                let key = (parsed.definition.name.clone(), parsed.definition.version);
                if let Some(first) = seen.get(&key) {
                    errors.push(parsed.name_error(format!(
                        "saga `{}` version {} is already defined in {first}; \
                         bump `version` when you change a definition",
                        key.0, key.1
                    )));
                } else {
                    seen.insert(key, file);
                    definitions.push(parsed.definition);
                }
            }
            Err(mut file_errors) => errors.append(&mut file_errors),
        }
    }
    if errors.is_empty() {
        Ok(definitions)
    } else {
        Err(errors)
    }
}
