//! Durations written as `250ms`, `30s`, `10m`, `2h`.
//!
//! The same text form is used in `sagas/*.toml` and in the JSON copy of a definition that the
//! engine stores with each saga, so an operator reading either sees the same thing.

use std::fmt;
use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty")]
    Empty,
    #[error(
        "duration `{0}` must start with a whole number, as in \"250ms\", \"30s\", \"10m\" or \"2h\""
    )]
    NoNumber(String),
    #[error("duration `{0}` has no unit; use ms, s, m or h, as in \"30s\"")]
    NoUnit(String),
    #[error("duration `{0}` has unknown unit `{1}`; use ms, s, m or h")]
    UnknownUnit(String, String),
    #[error("duration `{0}` has a fraction; use a smaller unit instead, as in \"1500ms\"")]
    Fraction(String),
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

/// The units accepted in definition files, largest first.
const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses `<whole number><unit>` where unit is `ms`, `s`, `m` or `h`.
///
/// Zero is accepted here (`"0s"`); callers that need a positive duration check it themselves.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    parse_with_units(text, false)
}

/// Formats a duration in the largest unit that represents it exactly (`90s` → `"90s"`,
/// `120s` → `"2m"`). Sub-millisecond durations fall back to `us` / `ns` so nothing is lost.
pub fn format(duration: Duration) -> String {
    DisplayDuration(duration).to_string()
}

/// `Display` adapter for [`format`].
#[derive(Debug, Clone, Copy)]
pub struct DisplayDuration(pub Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos.is_multiple_of(1_000_000) {
            let millis = nanos / 1_000_000;
            for (unit, per) in UNITS {
                if millis.is_multiple_of(u128::from(per)) {
                    return write!(f, "{}{unit}", millis / u128::from(per));
                }
            }
        }
        if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", nanos / 1_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

/// Like [`parse`], and when `fine` is set also accepts `us` and `ns` (only ever produced by
/// [`format`] for durations built in code, never needed in a definition file).
fn parse_with_units(text: &str, fine: bool) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(DurationError::NoNumber(text.to_owned()));
    }
    if unit.is_empty() {
        return Err(DurationError::NoUnit(text.to_owned()));
    }
    if unit.starts_with(['.', ',']) {
        return Err(DurationError::Fraction(text.to_owned()));
    }
    let overflow = || DurationError::Overflow(text.to_owned());
    let value: u64 = number.parse().map_err(|_| overflow())?;
    match unit {
        "us" if fine => Ok(Duration::from_micros(value)),
        "ns" if fine => Ok(Duration::from_nanos(value)),
        _ => {
            let per = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, per)| *per)
                .ok_or_else(|| DurationError::UnknownUnit(text.to_owned(), unit.to_owned()))?;
            let millis = value.checked_mul(per).ok_or_else(overflow)?;
            Ok(Duration::from_millis(millis))
        }
    }
}

/// `#[serde(with = "…::duration::text")]`: a `Duration` as its text form.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&super::DisplayDuration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_with_units(&text, true).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(default, skip_serializing_if = "Option::is_none", with = "…::duration::text_opt")]`:
/// an optional `Duration` as its text form.
pub mod text_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::text::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => super::parse_with_units(&text, true)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_text() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(parse("s"), Err(DurationError::NoNumber(_))));
        assert!(matches!(parse("-5s"), Err(DurationError::NoNumber(_))));
        assert!(matches!(parse("1.5s"), Err(DurationError::Fraction(_))));
        assert!(matches!(parse("30"), Err(DurationError::NoUnit(_))));
        assert!(matches!(parse("3d"), Err(DurationError::UnknownUnit(_, u)) if u == "d"));
        assert!(matches!(
            parse("5us"),
            Err(DurationError::UnknownUnit(_, _))
        ));
        assert!(matches!(
            parse("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("9999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_in_the_largest_exact_unit_and_round_trips() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_micros(1500), "1500us"),
            (Duration::from_nanos(7), "7ns"),
        ] {
            assert_eq!(format(duration), text);
            assert_eq!(parse_with_units(text, true), Ok(duration), "{text}");
        }
    }
}
