//! Cancellation policies as data (`policies/cancellation.toml`): the share of a booking's price a
//! guest cancellation refunds, by days before check-in. Loaded and checked at start; the refund
//! computation is pure.

use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use utoipa::ToSchema;

use crate::domain::CancellationPolicy;
use crate::engine::definition::{DefinitionError, SourceMap};
use crate::events::{CancelledBy, Event, Refund};

/// The policies shipped inside the binary, used when the configured file is the default and absent.
pub const BUILTIN: &str = include_str!("../policies/cancellation.toml");

/// The default path of the policies file (`SAGAD_CANCELLATION_POLICIES`).
pub const DEFAULT_PATH: &str = "policies/cancellation.toml";

/// One row of a policy: cancelling at least `min_days_before` days before check-in refunds
/// `refund_percent` of the price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tier {
    pub min_days_before: i64,
    pub refund_percent: u8,
}

/// Every policy's tiers, most days first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    tiers: Vec<(CancellationPolicy, Vec<Tier>)>,
}

/// What a guest cancellation refunds under a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRefund {
    pub percent: u8,
    /// The tier that applied; `None`: below every tier (or after check-in), nothing refunded.
    pub tier: Option<Tier>,
}

impl Policies {
    /// The tiers of `policy` (every policy has an entry: [`parse`] checks it).
    pub fn tiers(&self, policy: CancellationPolicy) -> &[Tier] {
        self.tiers
            .iter()
            .find(|(p, _)| *p == policy)
            .map_or(&[], |(_, t)| t.as_slice())
    }

    /// What a guest cancelling `days_before` days before check-in gets back under `policy`.
    pub fn refund(&self, policy: CancellationPolicy, days_before: i64) -> PolicyRefund {
        let tier = self
            .tiers(policy)
            .iter()
            .find(|t| days_before >= t.min_days_before)
            .copied();
        PolicyRefund {
            percent: tier.map_or(0, |t| t.refund_percent),
            tier,
        }
    }

    /// The policies built into the binary.
    pub fn builtin() -> Self {
        match parse(BUILTIN, "<built-in>/cancellation.toml") {
            Ok(p) => p,
            // Checked by a unit test: the shipped file parses.
            Err(e) => panic!("the built-in cancellation policies are invalid: {e:?}"),
        }
    }

    /// Loads `path`; the default path, when absent, falls back to the built-in copy.
    pub fn load(path: &Path) -> Result<Self, Vec<DefinitionError>> {
        if !path.exists() && path == Path::new(DEFAULT_PATH) {
            tracing::info!("no {DEFAULT_PATH}: using the built-in cancellation policies");
            return Ok(Self::builtin());
        }
        let label = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| {
            vec![DefinitionError::whole_file(
                &label,
                format!("cannot read the cancellation policies: {e}"),
            )]
        })?;
        parse(&source, &label)
    }
}

/// A cancellation as it was requested: who, why, and the share of the price it refunds, decided
/// when it was requested (stored with the saga, `sagas.cancellation`, and read by the
/// compensations that record the cancellation and give the money back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub by: CancelledBy,
    pub actor: String,
    pub reason: String,
    /// The share of the price refunded, 0-100.
    pub percent: u8,
    /// The policy that set `percent` (a guest cancellation of a booking that has one).
    pub policy: Option<CancellationPolicy>,
    pub days_before_check_in: Option<i64>,
    /// The rule in words.
    pub rule: String,
}

impl Policies {
    /// The cancellation `by` (`actor`, `reason`) of a booking under `policy` (`None`: a booking
    /// made before policies), `days_before` days before check-in. A guest gets what the policy
    /// allows; a host or an operator cancelling refunds in full, as does a guest of a booking that
    /// has no policy (it was sold before policies existed).
    pub fn decide(
        &self,
        by: CancelledBy,
        actor: &str,
        reason: &str,
        policy: Option<CancellationPolicy>,
        days_before: i64,
    ) -> Cancellation {
        let full = |rule: String| Cancellation {
            by,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            percent: 100,
            policy: None,
            days_before_check_in: Some(days_before),
            rule,
        };
        match (by, policy) {
            (CancelledBy::Guest, Some(policy)) => {
                let r = self.refund(policy, days_before);
                let rule = match r.tier {
                    Some(t) => format!(
                        "{policy}: {} or more days before check-in: {}%",
                        t.min_days_before, t.refund_percent
                    ),
                    None => format!(
                        "{policy}: {days_before} days before check-in is below every tier: 0%"
                    ),
                };
                Cancellation {
                    percent: r.percent,
                    policy: Some(policy),
                    rule,
                    ..full(String::new())
                }
            }
            (CancelledBy::Guest, None) => {
                full("the booking has no cancellation policy: full refund".into())
            }
            (by, _) => full(format!("cancelled by the {by}: full refund")),
        }
    }
}

impl Cancellation {
    /// What sagad records when it undoes a booking that failed (`reason`): a full refund.
    pub fn by_sagad(reason: &str) -> Self {
        Self {
            by: CancelledBy::Sagad,
            actor: "sagad".into(),
            reason: reason.to_owned(),
            percent: 100,
            policy: None,
            days_before_check_in: None,
            rule: "sagad undid the booking: full refund".into(),
        }
    }

    /// A guest's cancellation requested before cancellations were recorded with the saga: a full
    /// refund, as every cancellation was then.
    pub fn by_guest_in_full(reason: &str) -> Self {
        Self {
            by: CancelledBy::Guest,
            actor: "guest".into(),
            reason: reason.to_owned(),
            percent: 100,
            policy: None,
            days_before_check_in: None,
            rule: "cancelled before refunds followed policies: full refund".into(),
        }
    }

    /// What an operator's cancellation of a stuck saga records: a full refund.
    pub fn by_operator(actor: &str, reason: &str) -> Self {
        Self {
            by: CancelledBy::Operator,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            percent: 100,
            policy: None,
            days_before_check_in: None,
            rule: "cancelled by the operator: full refund".into(),
        }
    }

    /// What is due back of a booking of `price` of which `captured` was captured: the share of
    /// the price, never more than was captured.
    pub fn refund_due(&self, price: i64, captured: i64) -> i64 {
        percent_of(price, self.percent).min(captured).max(0)
    }

    /// The `BookingCancelled` event of this cancellation.
    pub fn event(&self, price: i64, captured: i64) -> Event {
        Event::BookingCancelled {
            reason: self.reason.clone(),
            by: self.by,
            actor: self.actor.clone(),
            refund: Some(Refund {
                amount: self.refund_due(price, captured),
                percent: self.percent,
                policy: self.policy,
                days_before_check_in: self.days_before_check_in,
                rule: self.rule.clone(),
            }),
        }
    }
}

/// `percent` of `amount`, rounded down (the guest is never given more than the policy says).
pub fn percent_of(amount: i64, percent: u8) -> i64 {
    (i128::from(amount) * i128::from(percent) / 100) as i64
}

const TIER_KEYS: &[&str] = &["min_days_before", "refund_percent"];

/// Parses a policies file, reporting every problem with its `file:line:column`.
pub fn parse(source: &str, file: &str) -> Result<Policies, Vec<DefinitionError>> {
    let map = SourceMap::new(file, source);
    let (root, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        return Err(syntax_errors
            .iter()
            .map(|e| map.error(e.span().unwrap_or(0..0), e.message().trim_end().to_owned()))
            .collect());
    }
    let mut c = Checker {
        map,
        errors: Vec::new(),
    };
    let root = root.get_ref();
    for (key, _) in root.iter() {
        if CancellationPolicy::parse(key.get_ref()).is_none() {
            c.error(
                key.span(),
                format!(
                    "unknown policy `{}`; expected one of: flexible, moderate, strict",
                    key.get_ref()
                ),
            );
        }
    }
    let mut tiers = Vec::new();
    for &policy in CancellationPolicy::ALL {
        match root.get(policy.as_str()) {
            None => c.errors.push(DefinitionError::whole_file(
                file,
                format!(
                    "missing policy `[{policy}]`: every policy a booking may name needs its tiers"
                ),
            )),
            Some(value) => {
                if let Some(t) = c.policy(policy, value) {
                    tiers.push((policy, t));
                }
            }
        }
    }
    let mut errors = c.errors;
    if errors.is_empty() {
        Ok(Policies { tiers })
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(errors)
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Checker<'a> {
    map: SourceMap<'a>,
    errors: Vec<DefinitionError>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.map.error(span, message);
        self.errors.push(e);
    }

    fn policy(&mut self, policy: CancellationPolicy, value: &Value<'_>) -> Option<Vec<Tier>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                format!(
                    "`{policy}` must be a table, found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        for (key, _) in table.iter() {
            if key.get_ref() != "tiers" {
                self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` in [{policy}]; expected: tiers",
                        key.get_ref()
                    ),
                );
            }
        }
        let Some(items) = table.get("tiers") else {
            self.error(
                value.span(),
                format!("[{policy}] needs `tiers`, e.g. tiers = [{{ min_days_before = 1, refund_percent = 100 }}]"),
            );
            return None;
        };
        let DeValue::Array(list) = items.get_ref() else {
            self.error(
                items.span(),
                format!(
                    "`tiers` must be an array of tables, found {}",
                    items.get_ref().type_str()
                ),
            );
            return None;
        };
        if list.is_empty() {
            self.error(items.span(), format!("[{policy}] needs at least one tier"));
        }
        let mut out: Vec<Tier> = Vec::new();
        let mut ok = true;
        for item in list {
            match self.tier(item) {
                Some(t) => {
                    if let Some(prev) = out.last()
                        && t.min_days_before >= prev.min_days_before
                    {
                        self.error(
                            item.span(),
                            format!(
                                "tiers must go from the most days before check-in down: {} days after {} days",
                                t.min_days_before, prev.min_days_before
                            ),
                        );
                        ok = false;
                    }
                    out.push(t);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn tier(&mut self, value: &Value<'_>) -> Option<Tier> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                format!(
                    "a tier must be a table such as {{ min_days_before = 5, refund_percent = 100 }}, found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        for (key, _) in table.iter() {
            if !TIER_KEYS.contains(&key.get_ref().as_ref()) {
                self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` in a tier; expected one of: {}",
                        key.get_ref(),
                        TIER_KEYS.join(", ")
                    ),
                );
            }
        }
        let days = self.int_key(table, value, "min_days_before", 0, 3650);
        let percent = self.int_key(table, value, "refund_percent", 0, 100);
        Some(Tier {
            min_days_before: days?,
            refund_percent: u8::try_from(percent?).ok()?,
        })
    }

    fn int_key(
        &mut self,
        table: &DeTable<'_>,
        at: &Value<'_>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let Some(value) = table.get(key) else {
            self.error(at.span(), format!("a tier needs `{key}`"));
            return None;
        };
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
        match parsed.and_then(|n| i64::try_from(n).ok()) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(
                    value.span(),
                    format!("`{key}` must be between {min} and {max}, found {integer}"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CancellationPolicy::*;

    #[test]
    fn the_shipped_policies_refund_as_booking_platforms_do() {
        let p = Policies::builtin();
        let percent = |policy, days| p.refund(policy, days).percent;
        for (policy, expected) in [
            (Flexible, [100, 100, 100, 0, 0]),
            (Moderate, [100, 100, 50, 50, 0]),
            (Strict, [50, 0, 0, 0, 0]),
        ] {
            let got: Vec<u8> = [10, 5, 1, 0, -1]
                .iter()
                .map(|&d| percent(policy, d))
                .collect();
            assert_eq!(got, expected, "{policy}");
        }
        assert_eq!(
            p.refund(Strict, 7).tier,
            Some(Tier {
                min_days_before: 7,
                refund_percent: 50
            })
        );
        assert_eq!(p.refund(Strict, 6).tier, None);
    }

    #[test]
    fn a_guest_gets_what_the_policy_allows_a_host_or_operator_refunds_in_full() {
        let p = Policies::builtin();
        let c = p.decide(
            CancelledBy::Guest,
            "guest",
            "plans changed",
            Some(Moderate),
            1,
        );
        assert_eq!((c.percent, c.policy), (50, Some(Moderate)));
        assert_eq!(c.rule, "moderate: 0 or more days before check-in: 50%");
        assert_eq!(c.refund_due(45000, 45000), 22500);
        // Never more than was captured; nothing when nothing was.
        assert_eq!(c.refund_due(45000, 10000), 10000);
        assert_eq!(c.refund_due(45000, 0), 0);
        let c = p.decide(CancelledBy::Guest, "guest", "r", Some(Strict), 3);
        assert_eq!(
            (c.percent, c.rule.as_str()),
            (0, "strict: 3 days before check-in is below every tier: 0%")
        );
        for by in [CancelledBy::Host, CancelledBy::Operator] {
            let c = p.decide(by, "x", "r", Some(Strict), 1);
            assert_eq!((c.percent, c.policy), (100, None), "{by}");
            assert_eq!(c.refund_due(45000, 45000), 45000);
        }
        let c = p.decide(CancelledBy::Guest, "guest", "r", None, 1);
        assert_eq!(c.percent, 100);
        match c.event(45000, 45000) {
            Event::BookingCancelled {
                by,
                refund: Some(r),
                ..
            } => {
                assert_eq!(
                    (by, r.amount, r.days_before_check_in),
                    (CancelledBy::Guest, 45000, Some(1))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn percentages_round_down() {
        assert_eq!(percent_of(45000, 50), 22500);
        assert_eq!(percent_of(999, 50), 499);
        assert_eq!(percent_of(999, 100), 999);
        assert_eq!(percent_of(999, 0), 0);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let src = "[flexible]\ntiers = [{ min_days_before = 1, refund_percent = 120 }]\n\
                   [moderate]\ntiers = [{ min_days_before = 0, refund_percent = 50 }, { min_days_before = 5, refund_percent = 100 }]\n\
                   [lenient]\ntiers = []\n";
        let errors = parse(src, "p.toml").unwrap_err();
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "p.toml: missing policy `[strict]`: every policy a booking may name needs its tiers",
                "p.toml:2:50: `refund_percent` must be between 0 and 100, found 120",
                "p.toml:4:56: tiers must go from the most days before check-in down: 5 days after 0 days",
                "p.toml:5:2: unknown policy `lenient`; expected one of: flexible, moderate, strict",
            ],
            "{lines:#?}"
        );
        let errors = parse("[flexible\n", "q.toml").unwrap_err();
        assert!(errors[0].to_string().starts_with("q.toml:1:"), "{errors:?}");
    }
}
