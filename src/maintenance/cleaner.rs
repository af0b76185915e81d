//! The cleaners: delivered webhook deliveries (with their attempts) and settled Stripe events
//! (processed, ignored or unmatched) go once older than the retention (`SAGAD_RETENTION`).
//! Pending, in-flight and dead rows stay whatever their age, and so do events: they are the
//! record. Rows go in small batches, each its own short statement, so that no statement holds
//! many row locks or runs long; a round stops after a few batches and, if it was cut short, the
//! next round goes on.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tracing::info;

use super::Progress;
use crate::store::{outbound, stripe_inbox};

/// How much one round deletes: `size` rows per statement, at most `per_round` statements.
#[derive(Debug, Clone, Copy)]
pub struct Batches {
    pub size: i64,
    pub per_round: usize,
}

impl Default for Batches {
    fn default() -> Self {
        Self {
            size: 1_000,
            per_round: 10,
        }
    }
}

/// Runs `batch(size)`, which deletes rows of `table`, until a batch deletes fewer than `size`
/// rows ([`Progress::Done`]) or the round's cap is reached ([`Progress::More`]); counts them in
/// `sagad_maintenance_pruned_total{table}`.
pub async fn in_batches<F, Fut>(
    table: &'static str,
    b: Batches,
    mut batch: F,
) -> Result<Progress, sqlx::Error>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    let mut progress = Progress::More;
    for _ in 0..b.per_round {
        let n = batch(b.size).await?;
        pruned(table, n);
        total += n;
        if n < b.size.max(0) as u64 {
            progress = Progress::Done;
            break;
        }
    }
    if total > 0 {
        info!(table, rows = total, "rows past the retention pruned");
    }
    Ok(progress)
}

/// Prunes delivered deliveries older than `retention`, with their attempts.
pub async fn deliveries(
    pool: &PgPool,
    retention: Duration,
    b: Batches,
) -> Result<Progress, sqlx::Error> {
    in_batches("webhook_deliveries", b, |limit| async move {
        let (deliveries, attempts) = outbound::prune_delivered(pool, retention, limit).await?;
        pruned("webhook_attempts", attempts);
        Ok(deliveries)
    })
    .await
}

/// Prunes settled Stripe events older than `retention`.
pub async fn stripe_events(
    pool: &PgPool,
    retention: Duration,
    b: Batches,
) -> Result<Progress, sqlx::Error> {
    in_batches("stripe_events", b, |limit| {
        stripe_inbox::prune_settled(pool, retention, limit)
    })
    .await
}

/// `sagad_maintenance_pruned_total{table}`.
fn pruned(table: &'static str, rows: u64) {
    if rows > 0 {
        metrics::counter!("sagad_maintenance_pruned_total", "table" => table).increment(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a round over `rows` rows: what it says, what it deleted, and each batch's size.
    async fn round(rows: u64, b: Batches) -> (Progress, u64, Vec<u64>) {
        let left = std::cell::Cell::new(rows);
        let batches = std::cell::RefCell::new(Vec::new());
        let progress = in_batches("test", b, |limit| {
            let n = left.get().min(limit as u64);
            left.set(left.get() - n);
            batches.borrow_mut().push(n);
            async move { Ok(n) }
        })
        .await
        .unwrap();
        (progress, rows - left.get(), batches.into_inner())
    }

    #[tokio::test]
    async fn batches_go_on_until_one_comes_back_short() {
        let b = Batches {
            size: 2,
            per_round: 10,
        };
        assert_eq!(round(5, b).await, (Progress::Done, 5, vec![2, 2, 1]));
        // A last full batch needs one more statement to learn that nothing is left.
        assert_eq!(round(4, b).await, (Progress::Done, 4, vec![2, 2, 0]));
        assert_eq!(round(0, b).await, (Progress::Done, 0, vec![0]));
    }

    #[tokio::test]
    async fn a_round_stops_at_its_cap_and_says_more_is_left() {
        let b = Batches {
            size: 2,
            per_round: 3,
        };
        assert_eq!(round(9, b).await, (Progress::More, 6, vec![2, 2, 2]));
    }
}
