//! The three work queues as the queue core ([`crate::queue`]) sees them. Each table describes
//! where it keeps its queue (a [`Spec`]: its due column, lease columns, statuses and wake-up
//! channel); the statements the core needs are made from that once, for every table: the claim
//! (`FOR UPDATE SKIP LOCKED` under a lease), the next due time, and the hand-back of leased rows
//! (lease rescue, shutdown). Webhook deliveries claim their own way (per-endpoint slots,
//! [`outbound::claim_due`]). Completing a row stays with each table's own guarded statements.

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres};

use super::{WORK_CHANNEL, outbound, sagas, sqlstate, stripe_inbox};
use crate::domain::{DeliveryId, SagaId};
use crate::queue::Table;

/// Where a table keeps its queue.
pub struct Spec {
    /// The table; also the queue's name in logs and metrics.
    pub table: &'static str,
    /// The columns a claim returns.
    columns: &'static str,
    /// What a row waiting for its turn looks like (not leased, not finished).
    waiting: &'static str,
    /// The column that says when a row is due.
    due: &'static str,
    /// The status a claim sets and the one a handed-back row returns to; `None` where the lease
    /// alone marks a row as taken (a leased saga stays `running` or `compensating`).
    status: Option<(&'static str, &'static str)>,
    /// The column a claim counts its attempt in.
    attempts: &'static str,
    /// Whether a stopping process gives back the attempts its claims counted (they were cut
    /// short, not failed).
    give_back_attempts: bool,
    /// Whether the table records `updated_at`.
    updated_at: bool,
    /// The channel that wakes the table's workers.
    channel: &'static str,
    statements: OnceLock<Statements>,
}

/// The statements made from a [`Spec`], built on first use.
struct Statements {
    claim: String,
    next_due: String,
    rescue: String,
    release: String,
}

/// Which leased rows go back.
#[derive(Clone, Copy)]
enum Whose {
    /// Those whose lease ran out (their worker died or hung).
    Expired,
    /// Those a stopping process holds (`$2`).
    HeldBy,
}

impl Spec {
    fn statements(&self) -> &Statements {
        self.statements.get_or_init(|| Statements {
            claim: self.claim_sql(),
            next_due: format!(
                "SELECT date_part('epoch', min({}) - now()) FROM {} WHERE {}",
                self.due, self.table, self.waiting
            ),
            rescue: self.hand_back_sql(Whose::Expired),
            release: self.hand_back_sql(Whose::HeldBy),
        })
    }

    /// Claims up to `$3` due rows for worker `$1` under a lease of `$2` ms, committed at once;
    /// each claim counts an attempt.
    fn claim_sql(&self) -> String {
        let status = match self.status {
            Some((leased, _)) => format!("status = '{leased}', "),
            None => String::new(),
        };
        let updated_at = if self.updated_at {
            ", updated_at = now()"
        } else {
            ""
        };
        let returning = self
            .columns
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (table, due, attempts) = (self.table, self.due, self.attempts);
        format!(
            "UPDATE {table} s SET {status}locked_by = $1, locked_until = now() + $2 * interval '1 millisecond',
                    {attempts} = s.{attempts} + 1{updated_at}
             FROM (SELECT id FROM {table}
                   WHERE {waiting} AND {due} <= now()
                   ORDER BY {due}
                   LIMIT $3
                   FOR UPDATE SKIP LOCKED) due
             WHERE s.id = due.id
             RETURNING {returning}",
            waiting = self.waiting
        )
    }

    /// Hands rows back, due at once, and wakes the workers at commit (`$1`: the channel);
    /// returns their ids.
    fn hand_back_sql(&self, whose: Whose) -> String {
        let (status, leased) = match self.status {
            Some((leased, back)) => (
                format!("status = '{back}', "),
                format!("status = '{leased}' AND "),
            ),
            None => (String::new(), String::new()),
        };
        let mut set = format!(
            "{status}locked_by = NULL, locked_until = NULL, {} = now()",
            self.due
        );
        if self.updated_at {
            set.push_str(", updated_at = now()");
        }
        let which = match whose {
            Whose::Expired => "locked_until < now()",
            Whose::HeldBy => {
                if self.give_back_attempts {
                    set.push_str(&format!(", {0} = {0} - 1", self.attempts));
                }
                "locked_by = $2"
            }
        };
        format!(
            "WITH r AS (UPDATE {} SET {set} WHERE {leased}{which} RETURNING id),
                  n AS (SELECT pg_notify($1, '') FROM r LIMIT 1)
             SELECT id FROM r LEFT JOIN n ON true",
            self.table
        )
    }

    pub async fn claim<R>(
        &self,
        pool: &PgPool,
        worker: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<R>, sqlx::Error>
    where
        R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        sqlx::query_as(sqlx::AssertSqlSafe(self.statements().claim.as_str()))
            .bind(worker)
            .bind(lease.as_millis() as f64)
            .bind(limit)
            .fetch_all(pool)
            .await
    }

    /// How long until the earliest waiting row becomes due, by the database's clock (zero when
    /// one is due already); `None` when no row waits.
    pub async fn next_due_in(&self, pool: &PgPool) -> Result<Option<Duration>, sqlx::Error> {
        let seconds: Option<f64> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(self.statements().next_due.as_str()))
                .fetch_one(pool)
                .await?;
        Ok(seconds.map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)))
    }

    /// Puts back the rows whose lease ran out, due at once, and wakes the workers; returns their
    /// ids.
    pub async fn rescue<Id>(&self, pool: &PgPool) -> Result<Vec<Id>, sqlx::Error>
    where
        Id: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sqlx::AssertSqlSafe(self.statements().rescue.as_str()))
            .bind(self.channel)
            .fetch_all(pool)
            .await
    }

    /// Hands back every row `worker` holds, due at once, and wakes the workers of every process.
    pub async fn release(&self, pool: &PgPool, worker: &str) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query(sqlx::AssertSqlSafe(self.statements().release.as_str()))
                .bind(self.channel)
                .bind(worker)
                .execute(pool)
                .await?
                .rows_affected(),
        )
    }
}

static SAGAS: Spec = Spec {
    table: "sagas",
    columns: sagas::COLUMNS,
    waiting: "status IN ('running', 'compensating') AND locked_until IS NULL",
    due: "next_run_at",
    status: None,
    attempts: "attempt",
    // A claim is an attempt of the saga's current step, counted by the step's retry policy.
    give_back_attempts: false,
    updated_at: true,
    channel: WORK_CHANNEL,
    statements: OnceLock::new(),
};

static STRIPE_EVENTS: Spec = Spec {
    table: "stripe_events",
    columns: stripe_inbox::COLUMNS,
    waiting: "status = 'pending'",
    due: "next_attempt_at",
    status: Some(("processing", "pending")),
    attempts: "attempts",
    give_back_attempts: true,
    updated_at: false,
    channel: stripe_inbox::INBOX_CHANNEL,
    statements: OnceLock::new(),
};

static WEBHOOK_DELIVERIES: Spec = Spec {
    table: "webhook_deliveries",
    // Unused: deliveries are claimed with their endpoint slots (`outbound::claim_due`).
    columns: "id",
    // Deliveries of a disabled endpoint wait for it to be enabled again.
    waiting: "status = 'pending' AND EXISTS (SELECT 1 FROM webhook_endpoints e
                                            WHERE e.id = endpoint_id AND e.enabled)",
    due: "next_attempt_at",
    status: Some(("delivering", "pending")),
    attempts: "attempts",
    give_back_attempts: true,
    updated_at: true,
    channel: outbound::WEBHOOK_CHANNEL,
    statements: OnceLock::new(),
};

/// Sagas due for their next step (`sagas`).
pub struct SagaQueue;

impl Table for SagaQueue {
    type Row = sagas::SagaRow;
    type Id = SagaId;

    fn spec() -> &'static Spec {
        &SAGAS
    }

    fn id(row: &sagas::SagaRow) -> SagaId {
        row.id
    }
}

/// The Stripe webhook inbox (`stripe_events`).
pub struct StripeEventQueue;

impl Table for StripeEventQueue {
    type Row = stripe_inbox::StripeEventRow;
    type Id = String;

    fn spec() -> &'static Spec {
        &STRIPE_EVENTS
    }

    fn id(row: &stripe_inbox::StripeEventRow) -> String {
        row.id.clone()
    }
}

/// Outgoing webhook deliveries (`webhook_deliveries`), at most `per_endpoint` in flight per
/// endpoint over every process.
pub struct DeliveryQueue {
    pub per_endpoint: i64,
}

impl Table for DeliveryQueue {
    type Row = outbound::ClaimedDelivery;
    type Id = DeliveryId;
    /// Deliveries of an endpoint at its cap are due but not claimable until a slot frees.
    const MIN_SLEEP: Duration = Duration::from_millis(5);

    fn spec() -> &'static Spec {
        &WEBHOOK_DELIVERIES
    }

    fn id(row: &outbound::ClaimedDelivery) -> DeliveryId {
        row.id
    }

    async fn claim(
        &self,
        pool: &PgPool,
        worker: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<outbound::ClaimedDelivery>, sqlx::Error> {
        outbound::claim_due(pool, worker, lease, limit, self.per_endpoint).await
    }

    /// Another process took the same endpoint slot meanwhile (`outbound::claim_due`).
    fn contended(error: &sqlx::Error) -> bool {
        super::sqlstate(error).as_deref() == Some(sqlstate::UNIQUE_VIOLATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squeeze(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn the_saga_claim_and_next_due_time() {
        let s = SAGAS.statements();
        assert_eq!(
            squeeze(&s.claim),
            squeeze(&format!(
                "UPDATE sagas s SET locked_by = $1, locked_until = now() + $2 * interval '1 millisecond',
                        attempt = s.attempt + 1, updated_at = now()
                 FROM (SELECT id FROM sagas
                       WHERE status IN ('running', 'compensating') AND locked_until IS NULL AND next_run_at <= now()
                       ORDER BY next_run_at
                       LIMIT $3
                       FOR UPDATE SKIP LOCKED) due
                 WHERE s.id = due.id
                 RETURNING {}",
                "s.id, s.saga_name, s.saga_version, s.status, s.current_step, s.attempt, s.input, s.context, \
                 s.next_run_at, s.locked_by, s.locked_until, s.wait_key, s.wait_deadline, s.failure_step, \
                 s.failure_reason, s.retrying_since, s.wait_reason, s.paused_since, s.cancel_requested, s.event_version, s.idempotency_key, \
                 s.request_fingerprint, s.created_at, s.updated_at, s.finished_at, s.cancellation"
            ))
        );
        assert_eq!(
            squeeze(&s.next_due),
            "SELECT date_part('epoch', min(next_run_at) - now()) FROM sagas \
             WHERE status IN ('running', 'compensating') AND locked_until IS NULL"
        );
    }

    #[test]
    fn the_stripe_event_claim_sets_the_leased_status() {
        let claim = squeeze(&STRIPE_EVENTS.statements().claim);
        assert!(
            claim.starts_with(
                "UPDATE stripe_events s SET status = 'processing', locked_by = $1, \
                 locked_until = now() + $2 * interval '1 millisecond', attempts = s.attempts + 1 \
                 FROM (SELECT id FROM stripe_events WHERE status = 'pending' AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) due WHERE s.id = due.id \
                 RETURNING s.id, s.event_type,"
            ),
            "{claim}"
        );
    }

    #[test]
    fn rescue_and_release_statements() {
        assert_eq!(
            squeeze(&SAGAS.statements().rescue),
            "WITH r AS (UPDATE sagas SET locked_by = NULL, locked_until = NULL, next_run_at = now(), \
             updated_at = now() WHERE locked_until < now() RETURNING id), \
             n AS (SELECT pg_notify($1, '') FROM r LIMIT 1) SELECT id FROM r LEFT JOIN n ON true"
        );
        assert_eq!(
            squeeze(&SAGAS.statements().release),
            "WITH r AS (UPDATE sagas SET locked_by = NULL, locked_until = NULL, next_run_at = now(), \
             updated_at = now() WHERE locked_by = $2 RETURNING id), \
             n AS (SELECT pg_notify($1, '') FROM r LIMIT 1) SELECT id FROM r LEFT JOIN n ON true"
        );
        assert_eq!(
            squeeze(&STRIPE_EVENTS.statements().rescue),
            "WITH r AS (UPDATE stripe_events SET status = 'pending', locked_by = NULL, locked_until = NULL, \
             next_attempt_at = now() WHERE status = 'processing' AND locked_until < now() RETURNING id), \
             n AS (SELECT pg_notify($1, '') FROM r LIMIT 1) SELECT id FROM r LEFT JOIN n ON true"
        );
        assert_eq!(
            squeeze(&WEBHOOK_DELIVERIES.statements().release),
            "WITH r AS (UPDATE webhook_deliveries SET status = 'pending', locked_by = NULL, locked_until = NULL, \
             next_attempt_at = now(), updated_at = now(), attempts = attempts - 1 \
             WHERE status = 'delivering' AND locked_by = $2 RETURNING id), \
             n AS (SELECT pg_notify($1, '') FROM r LIMIT 1) SELECT id FROM r LEFT JOIN n ON true"
        );
    }
}
