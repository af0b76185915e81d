//! Stripe's test payment methods (`pm_card_…`) and what confirming with each one does.

/// What happens when a PaymentIntent is confirmed with a test card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// The charge is authorized (and captured when `capture_method=automatic`).
    Succeeds,
    /// The card is declined with a `card_error`.
    Declines {
        code: &'static str,
        decline_code: Option<&'static str>,
        message: &'static str,
    },
    /// 3-D Secure is required: the PaymentIntent moves to `requires_action`.
    RequiresAuthentication,
}

#[derive(Debug, Clone, Copy)]
pub struct TestCard {
    pub token: &'static str,
    pub behavior: Behavior,
}

const GENERIC_DECLINE: &str = "Your card was declined.";

pub const CARDS: &[TestCard] = &[
    TestCard {
        token: "pm_card_visa",
        behavior: Behavior::Succeeds,
    },
    TestCard {
        token: "pm_card_visa_debit",
        behavior: Behavior::Succeeds,
    },
    TestCard {
        token: "pm_card_mastercard",
        behavior: Behavior::Succeeds,
    },
    TestCard {
        token: "pm_card_amex",
        behavior: Behavior::Succeeds,
    },
    TestCard {
        token: "pm_card_chargeDeclined",
        behavior: Behavior::Declines {
            code: "card_declined",
            decline_code: Some("generic_decline"),
            message: GENERIC_DECLINE,
        },
    },
    TestCard {
        token: "pm_card_chargeDeclinedInsufficientFunds",
        behavior: Behavior::Declines {
            code: "card_declined",
            decline_code: Some("insufficient_funds"),
            message: "Your card has insufficient funds.",
        },
    },
    TestCard {
        token: "pm_card_chargeDeclinedLostCard",
        behavior: Behavior::Declines {
            code: "card_declined",
            decline_code: Some("lost_card"),
            message: GENERIC_DECLINE,
        },
    },
    TestCard {
        token: "pm_card_chargeDeclinedFraudulent",
        behavior: Behavior::Declines {
            code: "card_declined",
            decline_code: Some("fraudulent"),
            message: GENERIC_DECLINE,
        },
    },
    TestCard {
        token: "pm_card_chargeDeclinedExpiredCard",
        behavior: Behavior::Declines {
            code: "expired_card",
            decline_code: Some("expired_card"),
            message: "Your card has expired.",
        },
    },
    TestCard {
        token: "pm_card_chargeDeclinedIncorrectCvc",
        behavior: Behavior::Declines {
            code: "incorrect_cvc",
            decline_code: Some("incorrect_cvc"),
            message: "Your card's security code is incorrect.",
        },
    },
    TestCard {
        token: "pm_card_chargeDeclinedProcessingError",
        behavior: Behavior::Declines {
            code: "processing_error",
            decline_code: None,
            message: "An error occurred while processing your card. Try again in a little bit.",
        },
    },
    TestCard {
        token: "pm_card_authenticationRequired",
        behavior: Behavior::RequiresAuthentication,
    },
    TestCard {
        token: "pm_card_threeDSecure2Required",
        behavior: Behavior::RequiresAuthentication,
    },
];

pub fn by_token(token: &str) -> Option<&'static TestCard> {
    CARDS.iter().find(|c| c.token == token)
}
