//! The operator console (`/console`) over a large database: every page requested many times by
//! one signed-in client (session cookie, as a browser holds it), timed at the client against the
//! `sagad serve` child, with the plan PostgreSQL chooses for each statement the pages run
//! (`EXPLAIN`, through the store's `explain_*` functions).
//!
//! The data, bulk-loaded by `INSERT … SELECT … FROM generate_series` (not through sagas): booking
//! sagas of a realistic mix, each with its events, step rows, `bookings` row and inventory claim,
//! on the same listings and guests as the bookings-reads phase (100 bookings per listing, 5 per
//! guest). Per 1000 sagas: 800 completed, 80 completed then cancelled by the guest (compensated,
//! refunded), 105 declined at authorization (compensated), 5 stuck at the notification, 5 waiting
//! on 3-D Secure and 5 paused on Stripe's open breaker. Finished sagas were created over the past
//! year, stuck ones over the past 30 days, waiting and paused ones in the last hour. The sagas of
//! the last 25 days (inside the cleaners' retention) have outgoing deliveries to two endpoints
//! (one attempt each, a few dead letters at the first after three; a third, disabled endpoint
//! holds dead letters)
//! and Stripe inbox rows (processed and ignored; some unmatched and dead). One saga has a long
//! history: 180 failed capture attempts through an outage, each event delivered, 20 Stripe events.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use sqlx::PgPool;
use uuid::Uuid;

use super::report::{ConsolePage, ConsolePages, ConsolePlan, ConsoleRound};
use super::{Bench, EXTRA_CONNECTIONS, TOKEN, ms, progress};
use sagad::domain::{DeliveryId, EndpointId, SagaId};
use sagad::store;
use sagad::store::console::{SagaSearch, SearchTerm};
use sagad::store::outbound::DeliveryStatus;
use sagad::store::stripe_inbox::{InboxStatus, ListFilter};

/// Requests of each page, one after another from one client.
pub const DEFAULT_REQUESTS: usize = 300;
/// Bookings per listing and per guest (as in the bookings-reads phase).
const PER_LISTING: i64 = 100;
const PER_GUEST: i64 = 5;
/// Stays start this many days before today, one every `STRIDE` days per listing.
const FIRST_STAY_DAYS_AGO: i64 = 200;
const STRIDE: i64 = 4;
const NIGHTS: i64 = 3;
/// Rows of `sagas` per bulk-load transaction.
const CHUNK: i64 = 100_000;
/// The page size the console's lists show.
const PAGE: i64 = 50;
/// The tables a console statement must not read with a sequential scan: the ones that grow with
/// the sagas. (`webhook_endpoints`, `dependency_breakers`, `saga_definitions` and
/// `console_sessions` stay small.)
const LARGE: &[&str] = &[
    "sagas",
    "saga_steps",
    "events",
    "bookings",
    "inventory_claims",
    "webhook_deliveries",
    "webhook_attempts",
    "stripe_events",
];
/// The long-history saga's failed capture attempts.
const LONG_ATTEMPTS: i64 = 180;

/// The saga kind of row `g`, as SQL: C completed, X completed then cancelled, D declined,
/// S stuck, W waiting, P paused.
const KIND: &str = "CASE WHEN g % 1000 < 800 THEN 'C' WHEN g % 1000 < 880 THEN 'X'
                         WHEN g % 1000 < 985 THEN 'D' WHEN g % 1000 < 990 THEN 'S'
                         WHEN g % 1000 < 995 THEN 'W' ELSE 'P' END";

fn kind_of(g: i64) -> char {
    match g % 1000 {
        r if r < 800 => 'C',
        r if r < 880 => 'X',
        r if r < 985 => 'D',
        r if r < 990 => 'S',
        r if r < 995 => 'W',
        _ => 'P',
    }
}

/// Sagas of row numbers `gs`: (g, saga id, confirmation code), as the bulk load made them.
async fn sagas_of(db: &PgPool, gs: &[i64]) -> anyhow::Result<Vec<(i64, Uuid, String)>> {
    Ok(sqlx::query_as(
        "SELECT g, md5('booking-' || g)::uuid, 'BK-' || upper(substr(md5('code-' || g), 1, 12))
         FROM unnest($1::int8[]) g",
    )
    .bind(gs)
    .fetch_all(db)
    .await?)
}

fn listing(n: i64) -> String {
    format!("lst-{n:07}")
}

fn guest(n: i64) -> String {
    format!("guest-{n:07}")
}

/// `s` percent-encoded for a query string.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Loads `total` sagas with their bookings, claims, events and steps, in chunks.
async fn bulk_load(db: &PgPool, total: i64) -> anyhow::Result<()> {
    let version: i32 =
        sqlx::query_scalar("SELECT max(version) FROM saga_definitions WHERE name = 'booking'")
            .fetch_one(db)
            .await
            .context("the booking saga is not registered: has the child started?")?;
    // Stripe's breaker is open, its next probe a day away: the paused sagas stay paused.
    sqlx::query(
        "INSERT INTO dependency_breakers (dependency, state, opens, opened_at, probe_at, changed_at)
         VALUES ('stripe', 'open', 1, now() - interval '10 minutes', now() + interval '1 day',
                 now() - interval '10 minutes')",
    )
    .execute(db)
    .await
    .context("bulk load: the Stripe breaker")?;
    let guests = (total / PER_GUEST).max(1);
    let started = Instant::now();
    let mut lo = 0;
    while lo < total {
        let hi = (lo + CHUNK).min(total) - 1;
        let mut tx = db.begin().await?;
        let q = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql));
        q(format!(
            "INSERT INTO sagas (id, saga_name, saga_version, status, current_step, attempt, input,
                                context, next_run_at, wait_key, wait_deadline, failure_step,
                                failure_reason, wait_reason, paused_since, event_version,
                                created_at, updated_at, finished_at)
             SELECT md5('booking-' || g)::uuid, 'booking', $3,
                    CASE k WHEN 'C' THEN 'completed' WHEN 'S' THEN 'stuck' WHEN 'W' THEN 'waiting'
                           WHEN 'P' THEN 'running' ELSE 'compensated' END,
                    CASE k WHEN 'C' THEN 5 WHEN 'S' THEN 4 WHEN 'W' THEN 1 WHEN 'P' THEN 2 ELSE 0 END,
                    CASE k WHEN 'S' THEN 7 WHEN 'P' THEN 2 ELSE 1 END,
                    jsonb_build_object(
                        'listing_id', 'lst-' || lpad((g / $4)::text, 7, '0'),
                        'guest_id', 'guest-' || lpad((g % $5)::text, 7, '0'),
                        'check_in', current_date - $6::int + (g % $4)::int * $7::int,
                        'check_out', current_date - $6::int + (g % $4)::int * $7::int + $8::int,
                        'amount', 37500, 'currency', 'eur', 'payment_method', 'pm_card_visa',
                        'cancellation_policy', 'moderate'),
                    CASE WHEN k = 'D' THEN jsonb_build_object(
                             'hold_inventory', jsonb_build_object('hold_id', md5('claim-' || g)::uuid))
                         WHEN k = 'W' THEN jsonb_build_object(
                             'hold_inventory', jsonb_build_object('hold_id', md5('claim-' || g)::uuid),
                             'authorize_payment', jsonb_build_object('payment_intent_id', 'pi_bench_' || g,
                                                                     'status', 'requires_action'))
                         ELSE jsonb_build_object(
                             'hold_inventory', jsonb_build_object('hold_id', md5('claim-' || g)::uuid),
                             'authorize_payment', jsonb_build_object('payment_intent_id', 'pi_bench_' || g),
                             'confirm_booking', CASE WHEN k <> 'P' THEN jsonb_build_object(
                                 'confirmation_code', 'BK-' || upper(substr(md5('code-' || g), 1, 12))) END)
                    END,
                    CASE k WHEN 'P' THEN now() + interval '1 day' END,
                    CASE k WHEN 'W' THEN 'payment_intent:pi_bench_' || g END,
                    CASE k WHEN 'W' THEN t + interval '1 day' END,
                    CASE k WHEN 'D' THEN 'authorize_payment' WHEN 'S' THEN 'notify' END,
                    CASE k WHEN 'D' THEN 'card_declined: generic_decline'
                           WHEN 'S' THEN 'notification endpoint answered 503 (7 attempts)' END,
                    CASE k WHEN 'P' THEN 'dependency:stripe' END,
                    CASE k WHEN 'P' THEN t + interval '1 second' END,
                    CASE k WHEN 'C' THEN 7 WHEN 'X' THEN 12 WHEN 'D' THEN 6 WHEN 'S' THEN 13
                           WHEN 'W' THEN 3 ELSE 5 END,
                    t, t + interval '1 second',
                    CASE k WHEN 'C' THEN t + interval '400 ms' WHEN 'D' THEN t + interval '300 ms'
                           WHEN 'X' THEN least(now(), t + interval '2 days')
                           WHEN 'S' THEN t + interval '15 minutes' END
             FROM generate_series($1::int8, $2::int8) g,
                  LATERAL (SELECT {KIND} AS k) kk,
                  LATERAL (SELECT now() - random() * CASE k WHEN 'S' THEN interval '30 days'
                                                            WHEN 'W' THEN interval '1 hour'
                                                            WHEN 'P' THEN interval '1 hour'
                                                            ELSE interval '365 days' END AS t) c"
        ))
        .bind(lo)
        .bind(hi)
        .bind(version)
        .bind(PER_LISTING)
        .bind(guests)
        .bind(FIRST_STAY_DAYS_AGO)
        .bind(STRIDE)
        .bind(NIGHTS)
        .execute(&mut *tx)
        .await
        .context("bulk load: sagas")?;
        q(format!(
            "INSERT INTO bookings (saga_id, listing_id, guest_id, check_in, check_out, amount,
                                   currency, status, payment_intent_id, confirmation_code,
                                   cancel_reason, created_at, updated_at)
             SELECT s.id, s.input->>'listing_id', s.input->>'guest_id',
                    (s.input->>'check_in')::date, (s.input->>'check_out')::date, 37500, 'eur',
                    CASE k WHEN 'C' THEN 'confirmed' WHEN 'X' THEN 'cancelled' WHEN 'D' THEN 'failed'
                           WHEN 'S' THEN 'needs_attention' WHEN 'W' THEN 'awaiting_authentication'
                           ELSE 'authorized' END,
                    'pi_bench_' || g,
                    CASE WHEN k IN ('C', 'X', 'S') THEN 'BK-' || upper(substr(md5('code-' || g), 1, 12)) END,
                    CASE k WHEN 'X' THEN 'guest_cancelled' END, s.created_at, s.updated_at
             FROM generate_series($1::int8, $2::int8) g
             CROSS JOIN LATERAL (SELECT {KIND} AS k) kk
             JOIN sagas s ON s.id = md5('booking-' || g)::uuid"
        ))
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .context("bulk load: bookings")?;
        q(format!(
            "INSERT INTO inventory_claims (id, saga_id, booking_id, listing_id, stay, kind, status,
                                           expires_at, created_at, released_at)
             SELECT md5('claim-' || g)::uuid, b.saga_id, b.saga_id, b.listing_id,
                    daterange(b.check_in, b.check_out, '[)'),
                    CASE WHEN k IN ('D', 'W', 'P') THEN 'hold' ELSE 'booking' END,
                    CASE WHEN k IN ('X', 'D') THEN 'released' ELSE 'active' END,
                    CASE WHEN k IN ('W', 'P') THEN now() + interval '1 day'
                         WHEN k = 'D' THEN b.created_at + interval '15 minutes' END,
                    b.created_at, CASE WHEN k IN ('X', 'D') THEN b.updated_at END
             FROM generate_series($1::int8, $2::int8) g
             CROSS JOIN LATERAL (SELECT {KIND} AS k) kk
             JOIN bookings b ON b.saga_id = md5('booking-' || g)::uuid"
        ))
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .context("bulk load: inventory claims")?;
        // Event ids ordered like the UUIDv7 sagad gives them (the index grows at its end).
        q(format!(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, payload,
                                 metadata, recorded_at)
             SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g * 32 + e.v), 12, '0'))::uuid,
                    'booking', s.id, e.v, e.t, e.p,
                    jsonb_build_object('correlation_id', s.id, 'causation_id', NULL, 'step', e.step,
                                       'attempt', e.a, 'worker', 'bench'),
                    CASE WHEN k = 'X' AND e.v >= 8 THEN s.finished_at - (12 - e.v) * interval '60 ms'
                         ELSE s.created_at + e.v * interval '60 ms' END
             FROM generate_series($1::int8, $2::int8) g
             CROSS JOIN LATERAL (SELECT {KIND} AS k) kk
             JOIN sagas s ON s.id = md5('booking-' || g)::uuid
             CROSS JOIN LATERAL (SELECT 'pi_bench_' || g AS pi, md5('claim-' || g)::uuid AS hold) x
             CROSS JOIN LATERAL (VALUES
               ('CXDSWP', 1, 'BookingRequested', NULL, 1, s.input - 'payment_method' - 'cancellation_policy'),
               ('CXDSWP', 2, 'InventoryHeld', 'hold_inventory', 1, jsonb_build_object(
                   'hold_id', x.hold, 'listing_id', s.input->'listing_id', 'check_in', s.input->'check_in',
                   'check_out', s.input->'check_out', 'expires_at', s.created_at + interval '15 minutes')),
               ('CXSP', 3, 'PaymentAuthorized', 'authorize_payment', 1, jsonb_build_object(
                   'payment_intent_id', x.pi, 'amount', 37500, 'currency', 'eur')),
               ('W', 3, 'PaymentActionRequired', 'authorize_payment', 1, jsonb_build_object(
                   'payment_intent_id', x.pi, 'next_action', 'use_stripe_sdk')),
               ('D', 3, 'StepFailed', 'authorize_payment', 1, jsonb_build_object(
                   'step', 'authorize_payment', 'phase', 'forward', 'attempt', 1,
                   'error', 'card_declined: generic_decline', 'permanent', true)),
               ('D', 4, 'CompensationStarted', NULL, 1, jsonb_build_object(
                   'failed_step', 'authorize_payment', 'reason', 'card_declined: generic_decline')),
               ('D', 5, 'InventoryReleased', 'hold_inventory', 1, jsonb_build_object(
                   'hold_id', x.hold, 'reason', 'card_declined: generic_decline')),
               ('D', 6, 'SagaCompensated', NULL, 1, jsonb_build_object(
                   'reason', 'card_declined: generic_decline')),
               ('CXS', 4, 'PaymentCaptured', 'capture_payment', 1, jsonb_build_object(
                   'payment_intent_id', x.pi, 'amount', 37500, 'currency', 'eur')),
               ('CXS', 5, 'BookingConfirmed', 'confirm_booking', 1, jsonb_build_object(
                   'confirmation_code', 'BK-' || upper(substr(md5('code-' || g), 1, 12)),
                   'listing_id', s.input->'listing_id', 'check_in', s.input->'check_in',
                   'check_out', s.input->'check_out')),
               ('CX', 6, 'NotificationSent', 'notify', 1, jsonb_build_object('status_code', 200)),
               ('CX', 7, 'SagaCompleted', NULL, 1, '{{}}'::jsonb),
               ('X', 8, 'CompensationStarted', NULL, 1, jsonb_build_object(
                   'failed_step', NULL, 'reason', 'cancelled_by_guest')),
               ('X', 9, 'BookingCancelled', 'confirm_booking', 1, jsonb_build_object(
                   'reason', 'cancelled_by_guest', 'by', 'guest', 'actor', 'guest',
                   'refund', jsonb_build_object('amount', 37500, 'percent', 100, 'policy', 'moderate'))),
               ('X', 10, 'PaymentRefunded', 'capture_payment', 1, jsonb_build_object(
                   'payment_intent_id', x.pi, 'refund_id', 're_bench_' || g, 'amount', 37500)),
               ('X', 11, 'InventoryReleased', 'hold_inventory', 1, jsonb_build_object(
                   'hold_id', x.hold, 'reason', 'cancelled_by_guest')),
               ('X', 12, 'SagaCompensated', NULL, 1, jsonb_build_object('reason', 'cancelled_by_guest')),
               ('P', 4, 'StepFailed', 'capture_payment', 1, jsonb_build_object(
                   'step', 'capture_payment', 'phase', 'forward', 'attempt', 1,
                   'error', 'stripe answered 503', 'permanent', false)),
               ('P', 5, 'SagaPaused', NULL, 2, jsonb_build_object(
                   'step', 'capture_payment', 'phase', 'forward', 'dependency', 'stripe'))
             ) e(kinds, v, t, step, a, p)
             WHERE strpos(e.kinds, k) > 0
             UNION ALL
             SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g * 32 + 5 + a), 12, '0'))::uuid,
                    'booking', s.id, 5 + a,
                    CASE WHEN a < 8 THEN 'StepFailed' ELSE 'SagaStuck' END,
                    CASE WHEN a < 8 THEN jsonb_build_object(
                             'step', 'notify', 'phase', 'forward', 'attempt', a,
                             'error', 'notification endpoint answered 503', 'permanent', a = 7)
                         ELSE jsonb_build_object('step', 'notify',
                             'error', 'notification endpoint answered 503 (7 attempts)') END,
                    jsonb_build_object('correlation_id', s.id, 'causation_id', NULL, 'step', 'notify',
                                       'attempt', least(a, 7), 'worker', 'bench'),
                    s.created_at + a * interval '2 minutes'
             FROM generate_series($1::int8, $2::int8) g
             CROSS JOIN LATERAL (SELECT {KIND} AS k) kk
             JOIN sagas s ON s.id = md5('booking-' || g)::uuid
             CROSS JOIN generate_series(1, 8) a
             WHERE k = 'S'"
        ))
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .context("bulk load: events")?;
        q(format!(
            "INSERT INTO saga_steps (saga_id, step_index, phase, step_name, status, attempts,
                                     last_error, started_at, finished_at)
             SELECT s.id, e.i, e.phase, e.name, e.status, e.attempts, e.err,
                    CASE WHEN e.phase = 'compensation' THEN coalesce(s.finished_at, s.created_at) - (4 - e.i) * interval '60 ms'
                         ELSE s.created_at + e.i * interval '80 ms' END,
                    CASE WHEN e.status IN ('running', 'waiting') THEN NULL
                         WHEN e.phase = 'compensation' THEN coalesce(s.finished_at, s.created_at) - (4 - e.i) * interval '60 ms' + interval '40 ms'
                         WHEN k = 'S' AND e.i = 4 THEN s.finished_at
                         ELSE s.created_at + e.i * interval '80 ms' + interval '50 ms' END
             FROM generate_series($1::int8, $2::int8) g
             CROSS JOIN LATERAL (SELECT {KIND} AS k) kk
             JOIN sagas s ON s.id = md5('booking-' || g)::uuid
             CROSS JOIN LATERAL (VALUES
               ('CXDSWP', 0, 'forward', 'hold_inventory', 'succeeded', 1, NULL),
               ('CXSP', 1, 'forward', 'authorize_payment', 'succeeded', 1, NULL),
               ('W', 1, 'forward', 'authorize_payment', 'waiting', 1, NULL),
               ('D', 1, 'forward', 'authorize_payment', 'failed', 1, 'card_declined: generic_decline'),
               ('CXS', 2, 'forward', 'capture_payment', 'succeeded', 1, NULL),
               ('P', 2, 'forward', 'capture_payment', 'running', 2, 'stripe answered 503'),
               ('CXS', 3, 'forward', 'confirm_booking', 'succeeded', 1, NULL),
               ('CX', 4, 'forward', 'notify', 'succeeded', 1, NULL),
               ('S', 4, 'forward', 'notify', 'failed', 7, 'notification endpoint answered 503'),
               ('X', 3, 'compensation', 'confirm_booking', 'succeeded', 1, NULL),
               ('X', 2, 'compensation', 'capture_payment', 'succeeded', 1, NULL),
               ('XD', 0, 'compensation', 'hold_inventory', 'succeeded', 1, NULL)
             ) e(kinds, i, phase, name, status, attempts, err)
             WHERE strpos(e.kinds, k) > 0"
        ))
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .context("bulk load: saga steps")?;
        tx.commit().await?;
        lo = hi + 1;
        progress(format_args!(
            "console: loaded {lo} of {total} sagas ({:.0} s)",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// The webhook endpoint whose pages are timed (the CRM delivers too; the legacy one is disabled).
struct Endpoints {
    ops: EndpointId,
}

/// The outgoing deliveries and Stripe inbox rows of the recent sagas, and the endpoints.
async fn load_recent(db: &PgPool) -> anyhow::Result<Endpoints> {
    let ids = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, enabled, disabled_reason,
                                        disabled_at, failing_since, created_at)
         VALUES ($1, 'https://ops.example.com/sagad', 'operations', '{*}', true, NULL, NULL, NULL,
                 now() - interval '400 days'),
                ($2, 'https://crm.example.com/hooks/bookings', 'CRM', '{booking.*}', true, NULL, NULL,
                 NULL, now() - interval '400 days'),
                ($3, 'https://legacy.example.com/webhook', 'old CRM', '{booking.confirmed}', false,
                 'failing for 5 days', now() - interval '1 day', now() - interval '6 days',
                 now() - interval '400 days')",
    )
    .bind(ids.0)
    .bind(ids.1)
    .bind(ids.2)
    .execute(&mut *tx)
    .await
    .context("bulk load: webhook endpoints")?;
    sqlx::query(
        "INSERT INTO webhook_secrets (endpoint_id, secret, created_at)
         SELECT id, 'whsec_' || encode(sha256(id::text::bytea), 'base64'), created_at
         FROM webhook_endpoints",
    )
    .execute(&mut *tx)
    .await?;
    // Deliveries of the recent sagas' SagaCompleted (to ops, dead for one saga in 997: an old
    // incident's dead letters among many delivered) and BookingConfirmed (to crm, and dead at
    // legacy for one saga in seven), delivery ids ordered like UUIDv7.
    sqlx::query(
        "WITH recent AS (
             SELECT s.id, row_number() OVER (ORDER BY s.created_at, s.id) AS n
             FROM sagas s WHERE s.created_at > now() - interval '25 days' AND s.status = 'completed'),
         picked AS (
             SELECT r.n, e.event_id, e.event_type, e.recorded_at, x.endpoint, x.slot,
                    x.slot = 3 OR (x.slot = 1 AND r.n % 997 = 0) AS dead
             FROM recent r
             CROSS JOIN (VALUES (1, 7, $1::uuid), (2, 5, $2::uuid), (3, 5, $3::uuid)) x(slot, v, endpoint)
             JOIN events e ON e.aggregate_id = r.id AND e.version = x.v
             WHERE x.slot < 3 OR r.n % 7 = 0)
         INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, attempts,
                                         schedule_pos, next_attempt_at, last_status, last_error,
                                         created_at, updated_at, delivered_at, dead_at)
         SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(n * 4 + slot), 12, '0'))::uuid, endpoint,
                event_id, CASE event_type WHEN 'SagaCompleted' THEN 'saga.completed' ELSE 'booking.confirmed' END,
                CASE WHEN dead THEN 'dead' ELSE 'delivered' END,
                CASE WHEN dead THEN 3 ELSE 1 END, CASE WHEN dead THEN 3 ELSE 1 END,
                recorded_at, CASE WHEN dead THEN 500 ELSE 200 END,
                CASE WHEN dead THEN 'HTTP 500' END,
                recorded_at, recorded_at + interval '2 s',
                CASE WHEN NOT dead THEN recorded_at + interval '40 ms' END,
                CASE WHEN dead THEN recorded_at + interval '2 hours' END
         FROM picked",
    )
    .bind(ids.0)
    .bind(ids.1)
    .bind(ids.2)
    .execute(&mut *tx)
    .await
    .context("bulk load: webhook deliveries")?;
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms,
                                       response_body, error)
         SELECT d.id, a, d.created_at + (a - 1) * interval '40 minutes' + interval '5 ms',
                d.last_status, 30 + (a * 7) % 90,
                CASE WHEN d.status = 'dead' THEN '<html><body><h1>500 Internal Server Error</h1></body></html>'
                     ELSE '{\"ok\":true}' END,
                NULL
         FROM webhook_deliveries d CROSS JOIN LATERAL generate_series(1, d.attempts) a",
    )
    .execute(&mut *tx)
    .await
    .context("bulk load: webhook attempts")?;
    // The Stripe inbox: two events per recent paid saga (processed, ignored), a few unmatched
    // and dead ones, and none due (the inbox worker has nothing to do).
    sqlx::query(
        "INSERT INTO stripe_events (id, event_type, livemode, api_version, stripe_created,
                                    payment_intent_id, payload, status, attempts, next_attempt_at,
                                    saga_id, outcome, last_error, received_at, processed_at)
         SELECT 'evt_bench_' || replace(s.id::text, '-', '') || x.suffix, x.t, false, '2026-09-30.endive',
                s.created_at + interval '1 s', b.payment_intent_id,
                jsonb_build_object('id', 'evt_bench_' || replace(s.id::text, '-', '') || x.suffix,
                                   'type', x.t, 'data', jsonb_build_object('object', jsonb_build_object(
                                       'id', b.payment_intent_id, 'object', 'payment_intent',
                                       'amount', 37500, 'currency', 'eur', 'status', x.pi_status))),
                x.status, 1, s.created_at + interval '1 s',
                CASE WHEN x.status = 'processed' THEN s.id END, x.outcome,
                CASE WHEN x.status = 'dead' THEN 'saga lookup timed out' END,
                s.created_at + interval '1 s' + x.after, s.created_at + interval '1 s' + x.after
         FROM sagas s JOIN bookings b ON b.saga_id = s.id
         CROSS JOIN LATERAL (VALUES
             ('_a', 'payment_intent.amount_capturable_updated', 'requires_capture', 'ignored',
              'not acted on', interval '0 s'),
             ('_b', 'payment_intent.succeeded', 'succeeded',
              CASE WHEN abs(hashtext(s.id::text)) % 1000 = 0 THEN 'dead' ELSE 'processed' END,
              'payment received', interval '1 s')) x(suffix, t, pi_status, status, outcome, after)
         WHERE s.created_at > now() - interval '25 days' AND s.status IN ('completed', 'stuck')
         UNION ALL
         SELECT 'evt_bench_unmatched_' || n, 'payment_intent.succeeded', false, '2026-09-30.endive',
                now() - n * interval '1 hour', 'pi_elsewhere_' || n,
                jsonb_build_object('id', 'evt_bench_unmatched_' || n, 'type', 'payment_intent.succeeded'),
                'unmatched', 1, now() - n * interval '1 hour', NULL,
                'no saga has this PaymentIntent', NULL,
                now() - n * interval '1 hour', now() - n * interval '1 hour'
         FROM generate_series(1, 500) n",
    )
    .execute(&mut *tx)
    .await
    .context("bulk load: Stripe inbox")?;
    tx.commit().await?;
    Ok(Endpoints {
        ops: EndpointId(ids.0),
    })
}

/// The saga with the longest history: stuck after `LONG_ATTEMPTS` failed captures through an
/// outage, every event delivered to ops (a third of them at the second attempt), 20 Stripe
/// events about its PaymentIntent. Its listing is its own.
async fn load_long(db: &PgPool, ops: EndpointId) -> anyhow::Result<SagaId> {
    let id = Uuid::now_v7();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO sagas (id, saga_name, saga_version, status, current_step, attempt, input,
                            context, failure_step, failure_reason, event_version, created_at,
                            updated_at, finished_at)
         SELECT $1, 'booking', max(version), 'stuck', 2, $2,
                jsonb_build_object('listing_id', 'lst-long', 'guest_id', 'guest-long',
                                   'check_in', current_date + 30, 'check_out', current_date + 33,
                                   'amount', 37500, 'currency', 'eur', 'payment_method', 'pm_card_visa',
                                   'cancellation_policy', 'moderate'),
                jsonb_build_object('hold_inventory', jsonb_build_object('hold_id', $1),
                                   'authorize_payment', jsonb_build_object('payment_intent_id', 'pi_bench_long')),
                'capture_payment', 'stripe answered 503 (' || $2 || ' attempts)', $2 + 4,
                now() - interval '2 days', now() - interval '1 day', now() - interval '1 day'
         FROM saga_definitions WHERE name = 'booking'",
    )
    .bind(id)
    .bind(LONG_ATTEMPTS as i32)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO bookings (saga_id, listing_id, guest_id, check_in, check_out, amount, currency,
                               status, payment_intent_id, created_at, updated_at)
         VALUES ($1, 'lst-long', 'guest-long', current_date + 30, current_date + 33, 37500, 'eur',
                 'needs_attention', 'pi_bench_long', now() - interval '2 days', now() - interval '1 day')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO inventory_claims (id, saga_id, booking_id, listing_id, stay, kind, status,
                                       expires_at, created_at)
         VALUES ($1, $1, $1, 'lst-long', daterange(current_date + 30, current_date + 33, '[)'),
                 'hold', 'active', now() + interval '1 day', now() - interval '2 days')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, payload,
                             metadata, recorded_at)
         SELECT gen_random_uuid(), 'booking', $1, v,
                CASE WHEN v = 1 THEN 'BookingRequested' WHEN v = 2 THEN 'InventoryHeld'
                     WHEN v = 3 THEN 'PaymentAuthorized' WHEN v = $2 + 4 THEN 'SagaStuck'
                     ELSE 'StepFailed' END,
                CASE WHEN v <= 3 THEN jsonb_build_object('payment_intent_id', 'pi_bench_long',
                                                         'listing_id', 'lst-long')
                     ELSE jsonb_build_object('step', 'capture_payment', 'phase', 'forward',
                                             'attempt', v - 3, 'error', 'stripe answered 503',
                                             'permanent', v = $2 + 3) END,
                jsonb_build_object('correlation_id', $1, 'step', 'capture_payment', 'attempt', v - 3,
                                   'worker', 'bench'),
                now() - interval '2 days' + v * interval '8 minutes'
         FROM generate_series(1, $2 + 4) v",
    )
    .bind(id)
    .bind(LONG_ATTEMPTS as i32)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO saga_steps (saga_id, step_index, phase, step_name, status, attempts, last_error,
                                 started_at, finished_at)
         VALUES ($1, 0, 'forward', 'hold_inventory', 'succeeded', 1, NULL,
                 now() - interval '2 days', now() - interval '2 days' + interval '50 ms'),
                ($1, 1, 'forward', 'authorize_payment', 'succeeded', 1, NULL,
                 now() - interval '2 days' + interval '1 s', now() - interval '2 days' + interval '2 s'),
                ($1, 2, 'forward', 'capture_payment', 'failed', $2, 'stripe answered 503',
                 now() - interval '2 days' + interval '3 s', now() - interval '1 day')",
    )
    .bind(id)
    .bind(LONG_ATTEMPTS as i32)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, attempts,
                                         schedule_pos, last_status, created_at, updated_at, delivered_at)
         SELECT gen_random_uuid(), $2, event_id, 'saga.' || lower(event_type), 'delivered',
                CASE WHEN version % 3 = 0 THEN 2 ELSE 1 END, 1, 200, recorded_at, recorded_at,
                recorded_at + interval '1 minute'
         FROM events WHERE aggregate_id = $1",
    )
    .bind(id)
    .bind(ops)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms,
                                       response_body, error)
         SELECT d.id, a, d.created_at + (a - 1) * interval '30 s',
                CASE WHEN a < d.attempts THEN NULL ELSE 200 END, 20 + a * 10,
                CASE WHEN a < d.attempts THEN NULL ELSE '{\"ok\":true}' END,
                CASE WHEN a < d.attempts THEN 'operation timed out' END
         FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id
         CROSS JOIN LATERAL generate_series(1, d.attempts) a
         WHERE e.aggregate_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO stripe_events (id, event_type, payment_intent_id, payload, status, attempts,
                                    saga_id, outcome, received_at, processed_at)
         SELECT 'evt_bench_long_' || n, 'payment_intent.amount_capturable_updated', 'pi_bench_long',
                jsonb_build_object('id', 'evt_bench_long_' || n, 'data',
                                   jsonb_build_object('object', jsonb_build_object('id', 'pi_bench_long'))),
                'ignored', 1, $1, 'not acted on', now() - interval '2 days' + n * interval '1 hour',
                now() - interval '2 days' + n * interval '1 hour'
         FROM generate_series(1, 20) n",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(SagaId(id))
}

/// Signs in as a browser does (the sign-in form's POST) and returns the session cookie, checked
/// against a page that shows the session's CSRF field.
async fn sign_in(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", base)
        .body(format!("token={}&next={}", enc(TOKEN), enc("/console")))
        .send()
        .await?;
    if !resp.status().is_redirection() {
        bail!("console sign-in answered {}", resp.status());
    }
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .filter(|c| c.starts_with("sagad_console="))
        })
        .map(str::to_owned)
        .context("the console's sign-in set no session cookie")?;
    let page = http
        .get(format!("{base}/console/webhooks"))
        .header("cookie", &cookie)
        .send()
        .await?;
    let status = page.status();
    let body = page.text().await?;
    if !status.is_success() || !body.contains("name=\"csrf\"") {
        bail!("the console did not accept its own session cookie ({status})");
    }
    Ok(cookie)
}

/// One page to time: its name, the paths to request (cycled), and a text each answer must hold.
struct Target {
    name: &'static str,
    paths: Vec<String>,
    expect: Vec<String>,
}

/// Times `requests` GETs of `target`'s paths with the session `cookie`.
async fn time_page(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    target: &Target,
    requests: usize,
) -> anyhow::Result<ConsolePage> {
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    let mut first_error = None;
    let mut bytes = 0usize;
    for i in 0..requests {
        let path = &target.paths[i % target.paths.len()];
        let expect = &target.expect[i % target.expect.len()];
        let sent = Instant::now();
        let answer = async {
            let resp = http
                .get(format!("{base}{path}"))
                .header("cookie", cookie)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.text().await.map_err(|e| e.to_string())?;
            if status != reqwest::StatusCode::OK {
                return Err(format!("{status}"));
            }
            if !body.contains(expect.as_str()) {
                return Err(format!("the page does not show {expect:?}"));
            }
            Ok(body.len())
        }
        .await;
        let took = sent.elapsed();
        match answer {
            Ok(n) => {
                latencies.push(took);
                bytes += n;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("GET {path}: {e}"));
            }
        }
    }
    let ok = latencies.len().max(1);
    Ok(ConsolePage {
        page: target.name.to_owned(),
        example: target.paths[0].clone(),
        latency_ms: ms(latencies.into_iter()),
        mean_kib: bytes as f64 / ok as f64 / 1024.0,
        errors,
        first_error,
    })
}

/// The large tables a plan reads with a sequential scan.
fn seq_scans(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|l| l.split("Seq Scan on ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|t| LARGE.contains(t))
        .map(str::to_owned)
        .collect()
}

/// Drops the indexes `names` (each must exist), returning each one's name and definition.
async fn drop_indexes(db: &PgPool, names: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in names {
        let def: Option<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = $1",
        )
        .bind(name)
        .fetch_optional(db)
        .await?;
        let Some(def) = def else {
            bail!("--console-without-indexes: there is no index {name:?}");
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX \"{name}\"")))
            .execute(db)
            .await?;
        out.push((name.clone(), def));
    }
    Ok(out)
}

/// Makes the dropped indexes again, then `VACUUM ANALYZE`s the large tables.
async fn remake_indexes(db: &PgPool, dropped: &[(String, String)]) -> anyhow::Result<()> {
    for (name, def) in dropped {
        progress(format_args!("console: making {name} again"));
        sqlx::query(sqlx::AssertSqlSafe(def.clone()))
            .execute(db)
            .await?;
    }
    for table in LARGE {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(db)
            .await?;
    }
    Ok(())
}

fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{},{id}", at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Bench<'_> {
    /// The console phase on a fresh database of `total` sagas.
    pub(super) async fn console_pages(
        &self,
        total: u64,
        requests: usize,
    ) -> anyhow::Result<ConsolePages> {
        let total = total as i64;
        let name = format!("sagad_bench_{}_console", self.run_id);
        let url = self.fresh_database(&name).await?;
        let workers = 2;
        let sagad = super::Sagad::start(&super::ChildConfig {
            label: "console",
            ..self.child_config(&url, workers, workers as u32 + EXTRA_CONNECTIONS)
        })
        .await?;
        let db = store::connect(&url, 1).await?;
        progress(format_args!(
            "console: bulk-loading {total} sagas into {name} …"
        ));
        let loading = Instant::now();
        bulk_load(&db, total).await?;
        let endpoints = load_recent(&db).await?;
        let long = load_long(&db, endpoints.ops).await?;
        // Statistics and the visibility map, as autovacuum leaves tables that have been up a while.
        for table in LARGE {
            sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
                .execute(&db)
                .await?;
        }
        let load_s = loading.elapsed().as_secs_f64();
        let (sagas, events, database_mib): (i64, i64, f64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sagas), (SELECT count(*) FROM events),
                    pg_database_size(current_database())::float8 / 1048576.0",
        )
        .fetch_one(&db)
        .await?;
        let (deliveries, stripe_events): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_deliveries), (SELECT count(*) FROM stripe_events)",
        )
        .fetch_one(&db)
        .await?;
        progress(format_args!(
            "console: {sagas} sagas, {events} events, {deliveries} deliveries, {stripe_events} Stripe events, {database_mib:.0} MiB, loaded in {load_s:.0} s"
        ));

        // What the pages are asked for.
        let guests = (total / PER_GUEST).max(1);
        let listings = (total / PER_LISTING).max(1);
        let mut rng = rand::rng();
        let picks = 64;
        let pick_of = |rng: &mut rand::rngs::ThreadRng, kinds: &str| loop {
            let g = rng.random_range(0..total);
            if kinds.contains(kind_of(g)) {
                break g;
            }
        };
        let codes: Vec<i64> = (0..picks).map(|_| pick_of(&mut rng, "CXS")).collect();
        let codes = sagas_of(&db, &codes).await?;
        let paid: Vec<i64> = (0..picks).map(|_| pick_of(&mut rng, "CXSP")).collect();
        let paid = sagas_of(&db, &paid).await?;
        let completed: Vec<i64> = (0..picks).map(|_| pick_of(&mut rng, "C")).collect();
        let completed = sagas_of(&db, &completed).await?;
        let guest_ids: Vec<String> = (0..picks)
            .map(|_| guest(rng.random_range(0..guests)))
            .collect();
        let calendar: Vec<(String, String)> = (0..picks)
            .map(|_| {
                let day = chrono::Utc::now().date_naive()
                    - chrono::Days::new(rng.random_range(0..FIRST_STAY_DAYS_AGO as u64));
                (listing(rng.random_range(0..listings)), day.to_string())
            })
            .collect();
        // Keyset cursors anywhere in the list: sagas sampled from the table.
        let cursors: Vec<(DateTime<Utc>, Uuid)> = sqlx::query_as(
            "SELECT created_at, id FROM sagas TABLESAMPLE SYSTEM (1) ORDER BY random() LIMIT 64",
        )
        .fetch_all(&db)
        .await?;
        if cursors.is_empty() {
            bail!("console: no saga to start a keyset page from");
        }

        let targets = vec![
            Target {
                name: "overview",
                paths: vec!["/console".into()],
                expect: vec!["Sagas by status".into()],
            },
            Target {
                name: "sagas, first page",
                paths: vec!["/console/sagas".into()],
                expect: vec!["id=\"sagas\"".into()],
            },
            Target {
                name: "sagas, status=stuck",
                paths: vec!["/console/sagas?status=stuck".into()],
                expect: vec!["id=\"sagas\"".into()],
            },
            Target {
                name: "sagas, step=notify (stuck there)",
                paths: vec!["/console/sagas?step=notify".into()],
                expect: vec!["id=\"sagas\"".into()],
            },
            Target {
                name: "sagas, search confirmation code",
                paths: codes
                    .iter()
                    .map(|(_, _, c)| format!("/console/sagas?{}", query(&[("q", c)])))
                    .collect(),
                expect: codes.iter().map(|(_, _, c)| c.clone()).collect(),
            },
            Target {
                name: "sagas, search guest",
                paths: guest_ids
                    .iter()
                    .map(|g| format!("/console/sagas?{}", query(&[("q", g)])))
                    .collect(),
                expect: guest_ids.clone(),
            },
            Target {
                name: "sagas, search PaymentIntent",
                paths: paid
                    .iter()
                    .map(|(g, _, _)| {
                        format!(
                            "/console/sagas?{}",
                            query(&[("q", &format!("pi_bench_{g}"))])
                        )
                    })
                    .collect(),
                expect: paid.iter().map(|(_, id, _)| id.to_string()).collect(),
            },
            Target {
                name: "sagas, keyset next page",
                paths: cursors
                    .iter()
                    .map(|(at, id)| {
                        format!("/console/sagas?{}", query(&[("before", &cursor(*at, *id))]))
                    })
                    .collect(),
                expect: vec!["id=\"sagas\"".into()],
            },
            Target {
                name: "saga detail, long history",
                paths: vec![format!("/console/sagas/{long}")],
                expect: vec![format!("Events ({})", LONG_ATTEMPTS + 4)],
            },
            Target {
                name: "saga detail, completed",
                paths: completed
                    .iter()
                    .map(|(_, id, _)| format!("/console/sagas/{id}"))
                    .collect(),
                expect: vec!["SagaCompleted".into()],
            },
            Target {
                name: "stuck and paused",
                paths: vec!["/console/stuck".into()],
                expect: vec!["dependency:stripe".into()],
            },
            Target {
                name: "bookings calendar",
                paths: calendar
                    .iter()
                    .map(|(l, from)| {
                        format!(
                            "/console/bookings?{}",
                            query(&[("listing", l), ("from", from)])
                        )
                    })
                    .collect(),
                expect: vec!["id=\"calendar\"".into()],
            },
            Target {
                name: "webhook endpoints",
                paths: vec!["/console/webhooks".into()],
                expect: vec!["ops.example.com".into()],
            },
            Target {
                name: "webhook endpoint, deliveries",
                paths: vec![format!("/console/webhooks/{}", endpoints.ops)],
                expect: vec!["saga.completed".into()],
            },
            Target {
                name: "webhook endpoint, dead letters",
                paths: vec![format!("/console/webhooks/{}?status=dead", endpoints.ops)],
                expect: vec!["data-status=\"dead\"".into()],
            },
            Target {
                name: "Stripe inbox",
                paths: vec!["/console/stripe".into()],
                expect: vec!["payment_intent.".into()],
            },
            Target {
                name: "Stripe inbox, status=dead",
                paths: vec!["/console/stripe?status=dead".into()],
                expect: vec!["saga lookup timed out".into()],
            },
        ];

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let base = sagad.base.clone();
        let cookie = sign_in(&http, &base).await?;
        // The indexes to measure without first, if any: dropped now, made again afterwards from
        // their definitions.
        let dropped = drop_indexes(&db, &self.args.console_without_indexes).await?;
        let mut rounds = Vec::new();
        for round in 0..=usize::from(!dropped.is_empty()) {
            let label = if round == 0 && !dropped.is_empty() {
                format!(
                    "without {}",
                    dropped
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                if round == 1 {
                    remake_indexes(&db, &dropped).await?;
                }
                "as migrated".to_owned()
            };
            // The plans, for one value of each.
            let mut conn = db.acquire().await?;
            let search = |term: Option<SearchTerm>| SagaSearch {
                term,
                limit: PAGE,
                ..SagaSearch::default()
            };
            let (long_events, long_deliveries): (Vec<Uuid>, Vec<DeliveryId>) = {
                let e: Vec<Uuid> =
                    sqlx::query_scalar("SELECT event_id FROM events WHERE aggregate_id = $1")
                        .bind(long.0)
                        .fetch_all(&mut *conn)
                        .await?;
                let d: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM webhook_deliveries WHERE event_id = ANY($1)",
                )
                .bind(&e)
                .fetch_all(&mut *conn)
                .await?;
                (e, d.into_iter().map(DeliveryId).collect())
            };
            let ops_deliveries: Vec<DeliveryId> = sqlx::query_scalar(
                "SELECT id FROM webhook_deliveries WHERE endpoint_id = $1
                 ORDER BY created_at DESC, id DESC LIMIT 50",
            )
            .bind(endpoints.ops.0)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(DeliveryId)
            .collect();
            let notify_steps = vec![("booking".to_owned(), 4)];
            let mut plans: Vec<(&str, store::console::Plan)> = vec![(
                "every page",
                store::console::explain_session(&mut conn).await?,
            )];
            for p in store::console::explain_overview(&mut conn).await? {
                plans.push(("overview", p));
            }
            for (page, f) in [
                ("sagas, first page", search(None)),
                (
                    "sagas, status=stuck",
                    SagaSearch {
                        status: Some(sagad::engine::model::SagaStatus::Stuck),
                        ..search(None)
                    },
                ),
                (
                    "sagas, step=notify (stuck there)",
                    SagaSearch {
                        at_steps: Some(notify_steps),
                        ..search(None)
                    },
                ),
                (
                    "sagas, search confirmation code",
                    search(SearchTerm::parse(&codes[0].2)),
                ),
                (
                    "sagas, search guest",
                    search(SearchTerm::parse(&guest_ids[0])),
                ),
                (
                    "sagas, search PaymentIntent",
                    search(SearchTerm::parse(&format!("pi_bench_{}", paid[0].0))),
                ),
                (
                    "sagas, keyset next page",
                    SagaSearch {
                        before: Some((cursors[0].0, SagaId(cursors[0].1))),
                        ..search(None)
                    },
                ),
            ] {
                plans.push((page, store::console::explain_search(&mut conn, &f).await?));
            }
            for p in store::console::explain_saga(
                &mut conn,
                long,
                &long_events,
                &long_deliveries,
                "pi_bench_long",
            )
            .await?
            {
                plans.push(("saga detail", p));
            }
            for p in store::console::explain_stuck(&mut conn, 100).await? {
                plans.push(("stuck and paused", p));
            }
            let today = chrono::Utc::now().date_naive();
            plans.push((
                "bookings calendar",
                store::console::explain_calendar(
                    &mut conn,
                    &calendar[0].0,
                    today - chrono::Days::new(56),
                    today,
                )
                .await?,
            ));
            for p in store::console::explain_endpoint(
                &mut conn,
                endpoints.ops,
                None,
                PAGE,
                &ops_deliveries,
            )
            .await?
            {
                plans.push(("webhook endpoint, deliveries", p));
            }
            for p in store::console::explain_endpoint(
                &mut conn,
                endpoints.ops,
                Some(DeliveryStatus::Dead),
                PAGE,
                &ops_deliveries,
            )
            .await?
            {
                plans.push(("webhook endpoint, dead letters", p));
            }
            for (page, status) in [
                ("Stripe inbox", None),
                ("Stripe inbox, status=dead", Some(InboxStatus::Dead)),
            ] {
                let f = ListFilter {
                    status,
                    event_type: None,
                    limit: 100,
                };
                plans.push((page, store::console::explain_inbox(&mut conn, &f).await?));
            }
            drop(conn);
            let plans: Vec<ConsolePlan> = plans
                .into_iter()
                .map(|(page, p)| {
                    let scans = seq_scans(&p.plan);
                    ConsolePlan {
                        page: page.to_owned(),
                        statement: p.statement.to_owned(),
                        uses_index: scans.is_empty(),
                        seq_scans: scans,
                        plan: p.plan,
                    }
                })
                .collect();

            // A warm-up pass over every page: the child's pool connections open and prepare.
            for t in &targets {
                let _ = time_page(&http, &base, &cookie, t, 5).await?;
            }
            progress(format_args!(
                "console ({label}): {requests} requests of each of {} pages …",
                targets.len()
            ));
            let load_before = load_average();
            let mut pages = Vec::new();
            for t in &targets {
                pages.push(time_page(&http, &base, &cookie, t, requests).await?);
            }
            let load_after = load_average();
            rounds.push(ConsoleRound {
                label,
                load_average_before: load_before,
                load_average_after: load_after,
                pages,
                plans,
            });
        }
        sagad.stop().await?;
        db.close().await;
        super::drop_database(&self.admin, &name).await?;
        Ok(ConsolePages {
            sagas,
            events,
            webhook_deliveries: deliveries,
            stripe_events,
            long_history_events: LONG_ATTEMPTS + 4,
            database_mib,
            load_s,
            rounds,
        })
    }
}
