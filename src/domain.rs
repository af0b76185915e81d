//! Validated domain types: what crosses the API edge is checked here, once.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::text_enum::text_enum;

/// Declares an id: a UUID that cannot be passed where another table's id is expected. It is
/// the bare UUID in JSON, in SQL and in the OpenAPI document.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
            ToSchema,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7): recent rows sit together in the primary key index.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        /// As the bare UUID, so that logs read the same whatever the id's type.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifier of a saga (and of the booking it drives: one aggregate).
    SagaId
);
uuid_id!(
    /// Identifier of an integrator's webhook endpoint (`webhook_endpoints.id`).
    EndpointId
);
uuid_id!(
    /// Identifier of one outgoing webhook delivery (`webhook_deliveries.id`): one event to one
    /// endpoint, whatever its attempts.
    DeliveryId
);

/// One problem with a request's input, tied to the field that has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `input.check_out`.
    pub field: String,
    /// What is wrong, in words a developer can act on.
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: format!("input.{field}"),
            message: message.into(),
        }
    }
}

/// The booking saga's input as the API receives it (every field optional so that each missing
/// one gets its own precise error instead of serde's first-failure message).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBookingInput {
    /// The listing (room, apartment) to book: 1–64 of `A-Z a-z 0-9 _ - .`.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub listing_id: Option<serde_json::Value>,
    /// The guest making the booking: 1–64 of `A-Z a-z 0-9 _ - .`.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub guest_id: Option<serde_json::Value>,
    /// First night, ISO date `YYYY-MM-DD`.
    #[schema(value_type = String, format = Date, required = true)]
    pub check_in: Option<serde_json::Value>,
    /// Departure day (exclusive), ISO date, after `check_in`.
    #[schema(value_type = String, format = Date, required = true)]
    pub check_out: Option<serde_json::Value>,
    /// Total price in the currency's minor units (cents), > 0.
    #[schema(value_type = i64, required = true, minimum = 1)]
    pub amount: Option<serde_json::Value>,
    /// ISO-4217 currency code, e.g. `EUR` or `usd`.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<serde_json::Value>,
    /// A Stripe PaymentMethod id (`pm_…`).
    #[schema(value_type = String, required = true, max_length = 64, pattern = "^pm_[A-Za-z0-9_.-]{1,61}$")]
    pub payment_method: Option<serde_json::Value>,
    /// The listing's cancellation policy, which sets a guest cancellation's refund; default:
    /// the server's `SAGAD_CANCELLATION_POLICY`.
    #[schema(value_type = Option<CancellationPolicy>)]
    pub cancellation_policy: Option<serde_json::Value>,
}

text_enum! {
    /// A listing's cancellation policy: how much of the price a guest cancellation refunds, by
    /// days before check-in (the table is data: `policies/cancellation.toml`).
    #[derive(ToSchema)]
    pub enum CancellationPolicy {
        Flexible = "flexible",
        Moderate = "moderate",
        Strict = "strict",
    }
}

/// What the server's configuration adds to a booking request's validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookingRules {
    /// The longest stay accepted, in nights (`SAGAD_MAX_NIGHTS`).
    pub max_nights: i64,
    /// The policy of a request that names none (`SAGAD_CANCELLATION_POLICY`).
    pub default_policy: CancellationPolicy,
}

/// A booking request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BookingInput {
    pub listing_id: String,
    pub guest_id: String,
    pub check_in: NaiveDate,
    pub check_out: NaiveDate,
    pub amount: i64,
    /// Lower-case ISO-4217 code, as Stripe wants it.
    pub currency: String,
    pub payment_method: String,
    /// Absent from sagas started before policies existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_policy: Option<CancellationPolicy>,
    /// Present in a date/price change saga's input (`sagas/booking_change.toml`): the booking it
    /// changes and what that booking had. The fields above are then the booking as changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeOf>,
}

/// The booking a change saga changes, as it was when the change was requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeOf {
    pub booking_id: SagaId,
    pub previous_check_in: NaiveDate,
    pub previous_check_out: NaiveDate,
    pub previous_amount: i64,
    /// The booking's PaymentIntent, which a lower price is refunded from …
    pub payment_intent_id: Option<String>,
    /// … up to what it had left to refund (captured minus refunded) when the change was requested.
    pub refundable: i64,
}

impl BookingInput {
    /// The booking the saga's inventory claims are for: its own, or the one a change saga changes.
    pub fn booking_id(&self, saga_id: SagaId) -> SagaId {
        self.change.as_ref().map_or(saga_id, |c| c.booking_id)
    }

    /// What the saga authorizes and captures: a booking's price, or what a change adds to it (0
    /// when the price does not rise).
    pub fn to_charge(&self) -> i64 {
        match &self.change {
            None => self.amount,
            Some(c) => (self.amount - c.previous_amount).max(0),
        }
    }

    /// What a change gives back from the booking's PaymentIntent when the price falls: the
    /// difference, never more than that PaymentIntent had left to refund.
    pub fn to_refund(&self) -> i64 {
        match &self.change {
            None => 0,
            Some(c) => (c.previous_amount - self.amount)
                .max(0)
                .min(c.refundable.max(0)),
        }
    }
}

/// The earliest check-in accepted on `today` (UTC): yesterday, the date it still is somewhere
/// (no time zone is more than 12 hours behind UTC), so a guest booking tonight is never refused.
pub fn earliest_check_in(today: NaiveDate) -> NaiveDate {
    today.pred_opt().unwrap_or(today)
}

/// ISO-4217 active codes (2024). Kept as data: the list changes rarely and a typo'd currency must
/// be refused before it reaches Stripe.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL";

fn is_iso_4217(code: &str) -> bool {
    code.len() == 3 && ISO_4217.split(' ').any(|c| c.eq_ignore_ascii_case(code))
}

/// 1–64 characters of `A-Z a-z 0-9 _ - .`: listing and guest ids.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl RawBookingInput {
    /// Checks every field against `rules`, with `today` the current UTC date, and reports every
    /// problem at once.
    pub fn validate(
        self,
        rules: &BookingRules,
        today: NaiveDate,
    ) -> Result<BookingInput, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut text = |field: &str, value: Option<serde_json::Value>| -> Option<String> {
            match value {
                None | Some(serde_json::Value::Null) => {
                    errors.push(FieldError::new(field, "is required"));
                    None
                }
                Some(serde_json::Value::String(s)) => Some(s),
                Some(other) => {
                    errors.push(FieldError::new(
                        field,
                        format!("must be a string, got {}", json_kind(&other)),
                    ));
                    None
                }
            }
        };
        let listing_id = text("listing_id", self.listing_id);
        let guest_id = text("guest_id", self.guest_id);
        let check_in = text("check_in", self.check_in);
        let check_out = text("check_out", self.check_out);
        let currency = text("currency", self.currency);
        let payment_method = text("payment_method", self.payment_method);

        for (field, value) in [("listing_id", &listing_id), ("guest_id", &guest_id)] {
            if let Some(v) = value
                && !valid_id(v)
            {
                errors.push(FieldError::new(
                    field,
                    "must be 1-64 characters of A-Z, a-z, 0-9, '_', '-' or '.'",
                ));
            }
        }

        let mut date = |field: &str, value: &Option<String>| -> Option<NaiveDate> {
            let v = value.as_ref()?;
            match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
                Ok(d) if v.len() == 10 => Some(d),
                _ => {
                    errors.push(FieldError::new(
                        field,
                        format!("must be an ISO date YYYY-MM-DD, got {v:?}"),
                    ));
                    None
                }
            }
        };
        let check_in = date("check_in", &check_in);
        let check_out = date("check_out", &check_out);
        if let Some(a) = check_in
            && a < earliest_check_in(today)
        {
            errors.push(FieldError::new(
                "check_in",
                format!("must not be in the past (today is {today} UTC), got {a}"),
            ));
        }
        if let (Some(a), Some(b)) = (check_in, check_out) {
            if b <= a {
                errors.push(FieldError::new(
                    "check_out",
                    format!("must be after check_in ({a}), got {b}"),
                ));
            } else if (b - a).num_days() > rules.max_nights {
                errors.push(FieldError::new(
                    "check_out",
                    format!(
                        "a stay may last at most {} nights, got {}",
                        rules.max_nights,
                        (b - a).num_days()
                    ),
                ));
            }
        }

        let amount = match self.amount {
            None | Some(serde_json::Value::Null) => {
                errors.push(FieldError::new("amount", "is required"));
                None
            }
            Some(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(a) if a > 0 => Some(a),
                Some(a) => {
                    errors.push(FieldError::new(
                        "amount",
                        format!("must be greater than 0 (minor units, e.g. cents), got {a}"),
                    ));
                    None
                }
                None => {
                    errors.push(FieldError::new(
                        "amount",
                        format!("must be a whole number of minor units (e.g. cents), got {n}"),
                    ));
                    None
                }
            },
            Some(other) => {
                errors.push(FieldError::new(
                    "amount",
                    format!("must be an integer, got {}", json_kind(&other)),
                ));
                None
            }
        };

        if let Some(c) = &currency
            && !is_iso_4217(c)
        {
            errors.push(FieldError::new(
                "currency",
                format!("must be an ISO-4217 currency code such as EUR or USD, got {c:?}"),
            ));
        }
        if let Some(pm) = &payment_method
            && !(pm.starts_with("pm_") && pm.len() > 3 && valid_id(pm))
        {
            errors.push(FieldError::new(
                "payment_method",
                format!("must be a Stripe PaymentMethod id such as pm_card_visa, got {pm:?}"),
            ));
        }

        let policy = match self.cancellation_policy {
            None | Some(serde_json::Value::Null) => Some(rules.default_policy),
            Some(serde_json::Value::String(p)) => {
                let parsed = CancellationPolicy::parse(&p);
                if parsed.is_none() {
                    errors.push(FieldError::new(
                        "cancellation_policy",
                        format!("must be one of flexible, moderate, strict, got {p:?}"),
                    ));
                }
                parsed
            }
            Some(other) => {
                errors.push(FieldError::new(
                    "cancellation_policy",
                    format!("must be a string, got {}", json_kind(&other)),
                ));
                None
            }
        };

        match (
            listing_id,
            guest_id,
            check_in,
            check_out,
            amount,
            currency,
            payment_method,
            policy,
        ) {
            (Some(l), Some(g), Some(ci), Some(co), Some(a), Some(c), Some(pm), Some(policy))
                if errors.is_empty() =>
            {
                Ok(BookingInput {
                    listing_id: l,
                    guest_id: g,
                    check_in: ci,
                    check_out: co,
                    amount: a,
                    currency: c.to_ascii_lowercase(),
                    payment_method: pm,
                    cancellation_policy: Some(policy),
                    change: None,
                })
            }
            _ => Err(errors),
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: serde_json::Value) -> RawBookingInput {
        serde_json::from_value(v).unwrap()
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 2, 1).unwrap()
    }

    fn check(v: serde_json::Value) -> Result<BookingInput, Vec<FieldError>> {
        raw(v).validate(&crate::config::Settings::dev().booking_rules, today())
    }

    fn good() -> serde_json::Value {
        json!({"listing_id": "l-1", "guest_id": "g_1", "check_in": "2027-03-01",
               "check_out": "2027-03-04", "amount": 45000, "currency": "EUR",
               "payment_method": "pm_card_visa"})
    }

    #[test]
    fn accepts_a_good_booking_and_lowercases_currency() {
        let b = check(good()).unwrap();
        assert_eq!(b.currency, "eur");
        assert_eq!(b.amount, 45000);
        assert_eq!(b.cancellation_policy, Some(CancellationPolicy::Moderate));
    }

    #[test]
    fn past_check_ins_long_stays_zero_amounts_and_unknown_policies_are_each_reported() {
        let mut v = good();
        v["check_in"] = json!("2027-01-30");
        v["check_out"] = json!("2027-03-01");
        v["amount"] = json!(0);
        v["cancellation_policy"] = json!("lenient");
        let rules = BookingRules {
            max_nights: 14,
            default_policy: CancellationPolicy::Strict,
        };
        let errs = raw(v).validate(&rules, today()).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "input.check_in",
                "input.check_out",
                "input.amount",
                "input.cancellation_policy"
            ],
            "{errs:?}"
        );
        assert!(errs[1].message.contains("at most 14 nights"), "{errs:?}");
    }

    #[test]
    fn yesterday_is_still_today_somewhere_and_the_default_policy_is_configured() {
        let mut v = good();
        v["check_in"] = json!("2027-01-31");
        let rules = BookingRules {
            max_nights: 365,
            default_policy: CancellationPolicy::Flexible,
        };
        let b = raw(v).validate(&rules, today()).unwrap();
        assert_eq!(b.cancellation_policy, Some(CancellationPolicy::Flexible));
        let mut v = good();
        v["cancellation_policy"] = json!("strict");
        let b = raw(v).validate(&rules, today()).unwrap();
        assert_eq!(b.cancellation_policy, Some(CancellationPolicy::Strict));
    }

    #[test]
    fn reports_every_problem_with_its_field() {
        let mut v = good();
        v["check_out"] = json!("2027-03-01");
        v["amount"] = json!(-5);
        v["currency"] = json!("EURO");
        v["payment_method"] = json!("card");
        v.as_object_mut().unwrap().remove("guest_id");
        let errs = check(v).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "input.guest_id",
                "input.check_out",
                "input.amount",
                "input.currency",
                "input.payment_method"
            ]
        );
    }

    #[test]
    fn rejects_bad_dates_and_fractional_amounts() {
        let mut v = good();
        v["check_in"] = json!("2027-02-30");
        v["amount"] = json!(10.5);
        let errs = check(v).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].message.contains("ISO date"));
        assert!(errs[1].message.contains("whole number"));
    }

    #[test]
    fn knows_real_currencies_only() {
        assert!(is_iso_4217("usd"));
        assert!(is_iso_4217("JPY"));
        assert!(!is_iso_4217("XXX1"));
        assert!(!is_iso_4217("ABC"));
    }
}
