//! The no-double-effect invariants, checked after every scale-out run on what the database and the
//! Stripe double hold: one PaymentIntent per saga (exactly one for a completed saga), each
//! captured at most once (exactly once for a completed saga), and no two active bookings or
//! active inventory claims of one listing overlapping.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use serde::Serialize;
use sqlx::PgPool;
use stripe_double::{AttemptOutcome, Operation, StripeDouble};
use uuid::Uuid;

/// Violations listed in the report, at most.
const LISTED: usize = 5;

/// One saga of the run, as the database ended it.
#[derive(Debug, Clone)]
pub struct SagaRow {
    pub id: Uuid,
    pub status: String,
}

/// A PaymentIntent the double holds, with the saga its metadata names.
#[derive(Debug, Clone)]
pub struct Intent {
    pub id: String,
    pub saga_id: Option<Uuid>,
}

/// Something that occupies a listing's nights `[from, to)`: an active booking of the projection or
/// an active inventory claim (hold, booking, host block), owned by `owner` (the booking's saga, the
/// claim's booking).
#[derive(Debug, Clone)]
pub struct Stay {
    pub owner: Uuid,
    pub listing: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Invariants {
    pub sagas: usize,
    pub completed: usize,
    /// PaymentIntents the double created for this run's sagas.
    pub payment_intents: usize,
    /// Captures the double performed (not replayed, not refused) on them.
    pub captures: usize,
    /// Sagas with more than one PaymentIntent.
    pub sagas_with_several_intents: usize,
    /// Completed sagas without a PaymentIntent, or whose PaymentIntent was never captured.
    pub completed_not_charged: usize,
    /// PaymentIntents captured more than once.
    pub captured_twice: usize,
    /// Pairs of active bookings, and of active claims of different bookings, of one listing whose
    /// nights overlap.
    pub overlapping_bookings: usize,
    pub overlapping_claims: usize,
    /// The first violations, in words.
    pub violations: Vec<String>,
}

impl Invariants {
    pub fn violated(&self) -> usize {
        self.sagas_with_several_intents
            + self.completed_not_charged
            + self.captured_twice
            + self.overlapping_bookings
            + self.overlapping_claims
    }

    /// Checks the invariants over one run's rows. `captures` are the PaymentIntents of performed
    /// capture requests, one entry per request.
    pub fn check(
        sagas: &[SagaRow],
        intents: &[Intent],
        captures: &[String],
        bookings: &[Stay],
        claims: &[Stay],
    ) -> Self {
        let mut out = Self {
            sagas: sagas.len(),
            completed: sagas.iter().filter(|s| s.status == "completed").count(),
            ..Self::default()
        };
        let ours: HashSet<Uuid> = sagas.iter().map(|s| s.id).collect();
        let mut intents_of: HashMap<Uuid, Vec<&str>> = HashMap::new();
        for i in intents {
            if let Some(saga) = i.saga_id.filter(|s| ours.contains(s)) {
                intents_of.entry(saga).or_default().push(&i.id);
            }
        }
        let run_intents: HashSet<&str> = intents_of.values().flatten().copied().collect();
        out.payment_intents = run_intents.len();
        let mut captured: HashMap<&str, usize> = HashMap::new();
        for pi in captures
            .iter()
            .filter(|pi| run_intents.contains(pi.as_str()))
        {
            *captured.entry(pi).or_default() += 1;
            out.captures += 1;
        }
        let mut violations = Vec::new();
        for (saga, pis) in &intents_of {
            if pis.len() > 1 {
                out.sagas_with_several_intents += 1;
                violations.push(format!(
                    "saga {saga} has {} PaymentIntents: {pis:?}",
                    pis.len()
                ));
            }
        }
        for (pi, n) in &captured {
            if *n > 1 {
                out.captured_twice += 1;
                violations.push(format!("{pi} captured {n} times"));
            }
        }
        for s in sagas.iter().filter(|s| s.status == "completed") {
            let charged = intents_of
                .get(&s.id)
                .is_some_and(|pis| pis.iter().any(|pi| captured.contains_key(pi)));
            if !charged {
                out.completed_not_charged += 1;
                violations.push(format!(
                    "saga {} completed without a captured PaymentIntent",
                    s.id
                ));
            }
        }
        let (n, v) = overlaps(bookings, "bookings");
        out.overlapping_bookings = n;
        violations.extend(v);
        let (n, v) = overlaps(claims, "claims");
        out.overlapping_claims = n;
        violations.extend(v);
        violations.truncate(LISTED);
        out.violations = violations;
        out
    }

    /// Reads the run's rows from its database and the double, and checks them.
    pub async fn read(db: &PgPool, double: &StripeDouble) -> anyhow::Result<Self> {
        let sagas: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM sagas")
            .fetch_all(db)
            .await?;
        let sagas: Vec<SagaRow> = sagas
            .into_iter()
            .map(|(id, status)| SagaRow { id, status })
            .collect();
        let stays = |rows: Vec<(Uuid, String, NaiveDate, NaiveDate)>| -> Vec<Stay> {
            rows.into_iter()
                .map(|(owner, listing, from, to)| Stay {
                    owner,
                    listing,
                    from,
                    to,
                })
                .collect()
        };
        let bookings = stays(
            sqlx::query_as(
                "SELECT saga_id, listing_id, check_in, check_out FROM bookings
                 WHERE status NOT IN ('cancelled', 'failed')",
            )
            .fetch_all(db)
            .await?,
        );
        let claims = stays(
            sqlx::query_as(
                "SELECT booking_id, listing_id, lower(stay), upper(stay) FROM inventory_claims
                 WHERE status = 'active'",
            )
            .fetch_all(db)
            .await?,
        );
        let intents: Vec<Intent> = double
            .payment_intents()
            .into_iter()
            .map(|pi| Intent {
                saga_id: pi.metadata.get("saga_id").and_then(|s| s.parse().ok()),
                id: pi.id,
            })
            .collect();
        let captures: Vec<String> = double
            .attempts()
            .into_iter()
            .filter(|a| a.operation == Operation::Capture && a.outcome == AttemptOutcome::Performed)
            .map(|a| a.payment_intent)
            .collect();
        Ok(Self::check(&sagas, &intents, &captures, &bookings, &claims))
    }
}

/// Pairs of stays of one listing whose nights overlap and whose owners differ.
fn overlaps(stays: &[Stay], what: &str) -> (usize, Vec<String>) {
    let mut by_listing: BTreeMap<&str, Vec<&Stay>> = BTreeMap::new();
    for s in stays {
        by_listing.entry(&s.listing).or_default().push(s);
    }
    let mut n = 0;
    let mut listed = Vec::new();
    for (listing, stays) in by_listing {
        for (i, a) in stays.iter().enumerate() {
            for b in &stays[i + 1..] {
                if a.owner != b.owner && a.from < b.to && b.from < a.to {
                    n += 1;
                    listed.push(format!(
                        "{what} of listing {listing} overlap: {} [{}, {}) and {} [{}, {})",
                        a.owner, a.from, a.to, b.owner, b.from, b.to
                    ));
                }
            }
        }
    }
    (n, listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(n: u128, status: &str) -> SagaRow {
        SagaRow {
            id: Uuid::from_u128(n),
            status: status.into(),
        }
    }

    fn intent(id: &str, saga: u128) -> Intent {
        Intent {
            id: id.into(),
            saga_id: Some(Uuid::from_u128(saga)),
        }
    }

    fn stay(owner: u128, listing: &str, from: u32, to: u32) -> Stay {
        let d = |day| NaiveDate::from_ymd_opt(2027, 6, day).unwrap();
        Stay {
            owner: Uuid::from_u128(owner),
            listing: listing.into(),
            from: d(from),
            to: d(to),
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let sagas = [
            saga(1, "completed"),
            saga(2, "completed"),
            saga(3, "compensated"),
        ];
        let intents = [intent("pi_1", 1), intent("pi_2", 2), intent("pi_other", 99)];
        let captures = ["pi_1".to_owned(), "pi_2".to_owned(), "pi_other".to_owned()];
        // Back-to-back stays of one listing, and the same nights on another listing.
        let bookings = [
            stay(1, "l1", 1, 4),
            stay(2, "l1", 4, 7),
            stay(3, "l2", 1, 4),
        ];
        // One booking's two claims may overlap (a date change's second claim).
        let claims = [stay(1, "l1", 1, 4), stay(1, "l1", 2, 5)];
        let inv = Invariants::check(&sagas, &intents, &captures, &bookings, &claims);
        assert_eq!(inv.violated(), 0, "{inv:?}");
        assert_eq!((inv.sagas, inv.completed), (3, 2));
        // The other run's PaymentIntent and capture are not this run's.
        assert_eq!((inv.payment_intents, inv.captures), (2, 2));
    }

    #[test]
    fn each_double_effect_is_found() {
        let sagas = [
            saga(1, "completed"),
            saga(2, "completed"),
            saga(3, "completed"),
        ];
        let intents = [intent("pi_1a", 1), intent("pi_1b", 1), intent("pi_2", 2)];
        let captures = [
            "pi_1a".to_owned(),
            "pi_2".to_owned(),
            "pi_2".to_owned(), // captured twice
        ];
        let bookings = [stay(1, "l1", 1, 4), stay(2, "l1", 3, 6)];
        let claims = [
            stay(1, "l1", 1, 4),
            stay(2, "l1", 3, 6),
            stay(3, "l9", 1, 2),
        ];
        let inv = Invariants::check(&sagas, &intents, &captures, &bookings, &claims);
        assert_eq!(inv.sagas_with_several_intents, 1);
        assert_eq!(inv.captured_twice, 1);
        // Saga 3 has no PaymentIntent at all.
        assert_eq!(inv.completed_not_charged, 1);
        assert_eq!((inv.overlapping_bookings, inv.overlapping_claims), (1, 1));
        assert_eq!(inv.violated(), 5);
        assert_eq!(inv.violations.len(), 5);
        assert!(
            inv.violations
                .iter()
                .any(|v| v.contains("pi_2 captured 2 times")),
            "{:?}",
            inv.violations
        );
    }

    #[test]
    fn a_completed_saga_whose_intent_was_never_captured_is_found() {
        let sagas = [saga(1, "completed")];
        let inv = Invariants::check(&sagas, &[intent("pi_1", 1)], &[], &[], &[]);
        assert_eq!(inv.completed_not_charged, 1);
        assert_eq!(inv.violated(), 1);
    }
}
