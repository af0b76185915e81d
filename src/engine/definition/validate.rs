//! Walks the spanned TOML tree of one definition file, building a [`SagaDefinition`] and
//! collecting every problem with its location.
//!
//! We walk `toml::de::DeTable` by hand rather than `#[derive(Deserialize)]` because serde stops
//! at the first error, and operators fixing a file want all of them at once.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::duration;
use super::error::{DefinitionError, SourceMap};
use super::suggest::closest;
use super::{ActionCatalog, DEFAULT_TIMEOUT, OnFailure, SagaDefinition, StepDefinition};
use crate::engine::retry::RetryPolicy;

const SAGA_KEYS: &[&str] = &["name", "version", "description", "defaults", "steps"];
const DEFAULTS_KEYS: &[&str] = &["timeout", "retry", "give_up_after", "compensation_retry"];
const STEP_KEYS: &[&str] = &[
    "name",
    "action",
    "compensation",
    "timeout",
    "on_failure",
    "retry",
    "give_up_after",
    "params",
];
const RETRY_KEYS: &[&str] = &["max_attempts", "base_delay", "max_delay", "jitter"];
const NAME_RULE: &str = "lowercase letters, digits and `_`, starting with a letter";

type Value<'i> = Spanned<DeValue<'i>>;

/// What a step takes from `[defaults]` (or the built-ins) when it does not set its own.
struct StepDefaults<'a> {
    timeout: Duration,
    retry: &'a RetryPolicy,
    give_up_after: Option<Duration>,
}

/// A definition plus what [`super::load_dir`] needs to point at it.
pub(super) struct Parsed {
    pub(super) definition: SagaDefinition,
    name_location: DefinitionError,
}

impl Parsed {
    /// An error located at the saga's `name` value.
    pub(super) fn name_error(&self, message: String) -> DefinitionError {
        DefinitionError {
            message,
            ..self.name_location.clone()
        }
    }
}

pub(super) fn parse(
    source: &str,
    file: &str,
    catalog: &ActionCatalog,
) -> Result<Parsed, Vec<DefinitionError>> {
    let map = SourceMap::new(file, source);
    let (root, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        // What follows a syntax error is guesswork; report only the syntax errors.
        let mut errors: Vec<_> = syntax_errors
            .iter()
            .map(|error| {
                let span = error.span().unwrap_or(0..0);
                map.error(span, error.message().trim_end().to_owned())
            })
            .collect();
        sort(&mut errors);
        return Err(errors);
    }
    let mut checker = Checker {
        map,
        catalog,
        errors: Vec::new(),
    };
    let parsed = checker.saga(root.get_ref());
    let mut errors = checker.errors;
    match parsed {
        Some(parsed) if errors.is_empty() => Ok(parsed),
        _ => {
            sort(&mut errors);
            Err(errors)
        }
    }
}

fn sort(errors: &mut [DefinitionError]) {
    errors.sort_by_key(|error| (error.line, error.column));
}

/// A retry table where every field is optional, layered over a base policy.
#[derive(Default)]
struct RetryOverride {
    max_attempts: Option<u32>,
    base_delay: Option<Duration>,
    max_delay: Option<Duration>,
    jitter: Option<f64>,
    span: Range<usize>,
}

impl RetryOverride {
    fn over(&self, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            base_delay: self.base_delay.unwrap_or(base.base_delay),
            max_delay: self.max_delay.unwrap_or(base.max_delay),
            jitter: self.jitter.unwrap_or(base.jitter),
        }
    }
}

struct Checker<'a> {
    map: SourceMap<'a>,
    catalog: &'a ActionCatalog<'a>,
    errors: Vec<DefinitionError>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let error = self.map.error(span, message);
        self.errors.push(error);
    }

    fn saga(&mut self, root: &DeTable<'_>) -> Option<Parsed> {
        self.unknown_keys(root, SAGA_KEYS, "the saga definition");

        let name_value = root.get("name");
        let name = match name_value {
            Some(value) => self
                .string(value, "name")
                .and_then(|name| self.identifier(value, name, "saga name")),
            None => {
                self.error(0..0, "missing required key `name`, e.g. name = \"booking\"");
                None
            }
        };
        let version = match root.get("version") {
            Some(value) => self.integer(value, "version", 1),
            None => {
                self.error(0..0, "missing required key `version`, e.g. version = 1");
                None
            }
        };
        let description = root
            .get("description")
            .and_then(|value| self.string(value, "description"))
            .map(str::to_owned);

        let mut default_timeout = DEFAULT_TIMEOUT;
        let mut default_retry = RetryPolicy::DEFAULT_ACTION;
        let mut compensation_retry = RetryPolicy::DEFAULT_COMPENSATION;
        let mut default_give_up = None;
        if let Some(value) = root.get("defaults")
            && let Some(defaults) = self.table(value, "defaults")
        {
            self.unknown_keys(defaults, DEFAULTS_KEYS, "[defaults]");
            if let Some(timeout) = defaults.get("timeout") {
                default_timeout = self.timeout(timeout).unwrap_or(default_timeout);
            }
            if let Some(retry) = defaults.get("retry") {
                default_retry = self.retry(retry, "retry", &default_retry);
            }
            if let Some(give_up) = defaults.get("give_up_after") {
                default_give_up = self.give_up_after(give_up);
            }
            if let Some(retry) = defaults.get("compensation_retry") {
                compensation_retry = self.retry(retry, "compensation_retry", &compensation_retry);
            }
        }

        let steps = match root.get("steps") {
            Some(value) => self.steps(
                value,
                StepDefaults {
                    timeout: default_timeout,
                    retry: &default_retry,
                    give_up_after: default_give_up,
                },
            ),
            None => {
                self.error(
                    0..0,
                    "missing required key `steps`: add at least one [[steps]] table",
                );
                Vec::new()
            }
        };

        let name_location = self
            .map
            .error(name_value.map_or(0..0, |value| value.span()), String::new());
        Some(Parsed {
            definition: SagaDefinition {
                name: name?,
                version: version?,
                description,
                steps,
                compensation_retry,
            },
            name_location,
        })
    }

    fn steps(&mut self, value: &Value<'_>, defaults: StepDefaults<'_>) -> Vec<StepDefinition> {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span(),
                format!(
                    "`steps` must be an array of tables ([[steps]]), found {}",
                    value.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(value.span(), "a saga needs at least one step");
        }
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut steps = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if let Some((name, span)) = step_name(item) {
                if let Some(&first) = first_seen.get(name) {
                    let (line, _) = self.map.line_col(first);
                    self.error(
                        span,
                        format!("duplicate step name `{name}` (first defined on line {line})"),
                    );
                } else {
                    first_seen.insert(name.to_owned(), span.start);
                }
            }
            if let Some(step) = self.step(index, item, &defaults) {
                steps.push(step);
            }
        }
        steps
    }

    /// One `[[steps]]` table.
    fn step(
        &mut self,
        index: usize,
        value: &Value<'_>,
        defaults: &StepDefaults<'_>,
    ) -> Option<StepDefinition> {
        let ordinal = index + 1;
        let table = self.table(value, &format!("step #{ordinal}"))?;
        self.unknown_keys(table, STEP_KEYS, &format!("step #{ordinal}"));

        let name_value = table.get("name");
        let name = match name_value {
            Some(name_value) => self
                .string(name_value, "name")
                .and_then(|name| self.identifier(name_value, name, "step name")),
            None => {
                self.error(
                    value.span(),
                    format!("step #{ordinal} is missing required key `name`"),
                );
                None
            }
        };
        let action = match table.get("action") {
            Some(action) => self.catalog_entry(action, "action"),
            None => {
                self.error(
                    value.span(),
                    format!("step #{ordinal} is missing required key `action`"),
                );
                None
            }
        };
        // Every field is checked even when an earlier one failed, so all errors are reported.
        let compensation = match table.get("compensation") {
            Some(compensation) => self.catalog_entry(compensation, "compensation").map(Some),
            None => Some(None),
        };
        let timeout = match table.get("timeout") {
            Some(timeout) => self.timeout(timeout),
            None => Some(defaults.timeout),
        };
        let retry = match table.get("retry") {
            Some(retry) => self.retry(retry, "retry", defaults.retry),
            None => defaults.retry.clone(),
        };
        let give_up_after = match table.get("give_up_after") {
            Some(give_up) => self.give_up_after(give_up).map(Some),
            None => Some(defaults.give_up_after),
        };
        let on_failure = match table.get("on_failure") {
            Some(on_failure) => self.on_failure(on_failure),
            None => Some(OnFailure::Compensate),
        };
        let params = match table.get("params") {
            Some(params) => self
                .table(params, "params")
                .and_then(|params| self.json_object(params)),
            None => Some(serde_json::Value::Object(serde_json::Map::new())),
        };
        Some(StepDefinition {
            name: name?,
            action: action?,
            compensation: compensation?,
            timeout: timeout?,
            retry,
            give_up_after: give_up_after?,
            on_failure: on_failure?,
            params: params?,
        })
    }

    fn unknown_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], place: &str) {
        for (key, _) in table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` in {place}; expected one of: {}",
                        key.get_ref(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn table<'t, 'i>(&mut self, value: &'t Value<'i>, what: &str) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.error(
                    value.span(),
                    format!("`{what}` must be a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string<'t>(&mut self, value: &'t Value<'_>, key: &str) -> Option<&'t str> {
        match value.get_ref() {
            DeValue::String(text) => Some(text.as_ref()),
            other => {
                self.error(
                    value.span(),
                    format!("`{key}` must be a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn identifier(&mut self, value: &Value<'_>, text: &str, what: &str) -> Option<String> {
        let mut chars = text.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Some(text.to_owned())
        } else {
            self.error(
                value.span(),
                format!("{what} `{text}` is not valid: use {NAME_RULE}"),
            );
            None
        }
    }

    /// An integer in `[min, u32::MAX]`.
    fn integer(&mut self, value: &Value<'_>, key: &str, min: u32) -> Option<u32> {
        let DeValue::Integer(integer) = value.get_ref() else {
            self.error(
                value.span(),
                format!(
                    "`{key}` must be an integer, found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let parsed = i128::from_str_radix(integer.as_str(), integer.radix()).ok();
        match parsed.and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= min => Some(n),
            _ => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` must be between {min} and {}, found {integer}",
                        u32::MAX
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Value<'_>, key: &str) -> Option<Duration> {
        let text = self.string(value, key)?;
        match duration::parse(text) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.error(value.span(), format!("invalid `{key}`: {error}"));
                None
            }
        }
    }

    fn timeout(&mut self, value: &Value<'_>) -> Option<Duration> {
        let timeout = self.duration(value, "timeout")?;
        if timeout.is_zero() {
            self.error(value.span(), "`timeout` must be longer than zero");
            return None;
        }
        Some(timeout)
    }

    fn give_up_after(&mut self, value: &Value<'_>) -> Option<Duration> {
        let give_up = self.duration(value, "give_up_after")?;
        if give_up.is_zero() {
            self.error(value.span(), "`give_up_after` must be longer than zero");
            return None;
        }
        Some(give_up)
    }

    /// A retry table layered over `base`; problems are reported and `base` fills the gaps.
    fn retry(&mut self, value: &Value<'_>, key: &str, base: &RetryPolicy) -> RetryPolicy {
        let Some(table) = self.table(value, key) else {
            return base.clone();
        };
        self.unknown_keys(table, RETRY_KEYS, &format!("`{key}`"));
        let mut layer = RetryOverride {
            span: value.span(),
            ..RetryOverride::default()
        };
        if let Some(max_attempts) = table.get("max_attempts") {
            layer.max_attempts = self.integer(max_attempts, "max_attempts", 1);
        }
        if let Some(base_delay) = table.get("base_delay") {
            layer.base_delay = self.duration(base_delay, "base_delay");
        }
        if let Some(max_delay) = table.get("max_delay") {
            layer.max_delay = self.duration(max_delay, "max_delay");
        }
        if let Some(jitter) = table.get("jitter") {
            layer.jitter = self.jitter(jitter);
        }
        let policy = layer.over(base);
        if policy.base_delay > policy.max_delay {
            self.error(
                layer.span.clone(),
                format!(
                    "`{key}`: base_delay ({}) must not exceed max_delay ({})",
                    duration::format(policy.base_delay),
                    duration::format(policy.max_delay)
                ),
            );
        }
        policy
    }

    fn jitter(&mut self, value: &Value<'_>) -> Option<f64> {
        let number = match value.get_ref() {
            DeValue::Float(float) => float.as_str().parse::<f64>().ok(),
            DeValue::Integer(integer) => i32::from_str_radix(integer.as_str(), integer.radix())
                .ok()
                .map(f64::from),
            other => {
                self.error(
                    value.span(),
                    format!("`jitter` must be a number, found {}", other.type_str()),
                );
                return None;
            }
        };
        match number {
            Some(jitter) if (0.0..=1.0).contains(&jitter) => Some(jitter),
            _ => {
                self.error(value.span(), "`jitter` must be between 0 and 1, e.g. 0.2");
                None
            }
        }
    }

    fn on_failure(&mut self, value: &Value<'_>) -> Option<OnFailure> {
        let text = self.string(value, "on_failure")?;
        let found = OnFailure::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, on_failure)| *on_failure);
        if found.is_none() {
            self.error(
                value.span(),
                format!("unknown on_failure `{text}`; expected \"compensate\" or \"stuck\""),
            );
        }
        found
    }

    /// `kind` is "action" or "compensation".
    fn catalog_entry(&mut self, value: &Value<'_>, kind: &str) -> Option<String> {
        let text = self.string(value, kind)?;
        let catalog = self.catalog;
        let (known, plural, other, other_is) = if kind == "action" {
            (
                catalog.actions,
                "actions",
                catalog.compensations,
                "a compensation, not an action",
            )
        } else {
            (
                catalog.compensations,
                "compensations",
                catalog.actions,
                "an action, not a compensation",
            )
        };
        if known.contains(&text) {
            return Some(text.to_owned());
        }
        let mut message = if other.contains(&text) {
            format!("`{text}` is {other_is}")
        } else {
            format!("unknown {kind} `{text}`")
        };
        match closest(text, known) {
            Some(suggestion) => {
                message.push_str(&format!("; did you mean `{suggestion}`? Known {plural}: "))
            }
            None => message.push_str(&format!("; known {plural}: ")),
        }
        message.push_str(&known.join(", "));
        self.error(value.span(), message);
        None
    }

    fn json_object(&mut self, table: &DeTable<'_>) -> Option<serde_json::Value> {
        let mut object = serde_json::Map::new();
        let mut ok = true;
        for (key, value) in table.iter() {
            match self.json(value) {
                Some(json) => {
                    object.insert(key.get_ref().to_string(), json);
                }
                None => ok = false,
            }
        }
        ok.then_some(serde_json::Value::Object(object))
    }

    fn json(&mut self, value: &Value<'_>) -> Option<serde_json::Value> {
        use serde_json::Value as Json;
        match value.get_ref() {
            DeValue::String(text) => Some(Json::String(text.to_string())),
            DeValue::Boolean(flag) => Some(Json::Bool(*flag)),
            DeValue::Datetime(datetime) => Some(Json::String(datetime.to_string())),
            DeValue::Integer(integer) => {
                match i64::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(n) => Some(Json::from(n)),
                    Err(_) => {
                        self.error(value.span(), format!("integer {integer} is out of range"));
                        None
                    }
                }
            }
            DeValue::Float(float) => {
                let number = float
                    .as_str()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64);
                if number.is_none() {
                    self.error(
                        value.span(),
                        format!(
                            "float {float} cannot be passed to an action (JSON has no inf or nan)"
                        ),
                    );
                }
                number.map(Json::Number)
            }
            DeValue::Array(items) => {
                let mut array = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items.iter() {
                    match self.json(item) {
                        Some(json) => array.push(json),
                        None => ok = false,
                    }
                }
                ok.then_some(Json::Array(array))
            }
            DeValue::Table(table) => self.json_object(table),
        }
    }
}

/// A step's `name` when it is a string, whatever else is wrong with the step.
fn step_name<'t>(step: &'t Value<'_>) -> Option<(&'t str, Range<usize>)> {
    let name = step.get_ref().as_table()?.get("name")?;
    Some((name.get_ref().as_str()?, name.span()))
}
