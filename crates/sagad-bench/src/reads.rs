//! Bookings reads over a large table: `GET /v1/bookings` by guest and by listing, and a listing's
//! availability for a 90-day window, timed at the client against the `sagad serve` child, over a
//! database bulk-loaded with `--read-bookings` bookings (`INSERT … SELECT … FROM generate_series`,
//! not through sagas). The plan PostgreSQL chooses for each query (`EXPLAIN`, through the same
//! store functions the routes call) is printed with the figures: each must use an index.
//!
//! The data: 100 bookings per listing, stays of 3 nights every 4 days from 200 days ago on (so a
//! listing's claims never overlap), 5 bookings per guest spread over different listings, created
//! at random times over the past year; every tenth booking is cancelled (its claim released).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use rand::Rng;
use serde_json::Value;
use sqlx::PgPool;

use super::report::BookingReads;
use super::report::ReadQuery;
use super::{Bench, EXTRA_CONNECTIONS, TOKEN, ms, progress};
use sagad::store;
use sagad::store::bookings::BookingFilter;

/// Bookings per listing and per guest.
const PER_LISTING: i64 = 100;
const PER_GUEST: i64 = 5;
/// Stays start this many days before today, one every `STRIDE` days per listing.
const FIRST_STAY_DAYS_AGO: i64 = 200;
const STRIDE: i64 = 4;
const NIGHTS: i64 = 3;
/// The availability window.
const WINDOW_NIGHTS: i64 = 90;
/// Rows per bulk-load statement.
const CHUNK: i64 = 100_000;
/// The page size every list request asks for (the API's default).
const PAGE: i64 = 50;

/// `GET` requests of each kind, one after another from one client.
pub const DEFAULT_REQUESTS: usize = 2000;

fn listing(n: i64) -> String {
    format!("lst-{n:07}")
}

fn guest(n: i64) -> String {
    format!("guest-{n:07}")
}

/// Loads `total` bookings (their sagas, bookings rows and inventory claims) in chunks.
async fn bulk_load(db: &PgPool, total: i64) -> anyhow::Result<()> {
    let version: i32 =
        sqlx::query_scalar("SELECT max(version) FROM saga_definitions WHERE name = 'booking'")
            .fetch_one(db)
            .await
            .context("the booking saga is not registered: has the child started?")?;
    let guests = (total / PER_GUEST).max(1);
    let started = Instant::now();
    let mut lo = 0;
    while lo < total {
        let hi = (lo + CHUNK).min(total) - 1;
        let mut tx = db.begin().await?;
        // One row per g: ids are derived from g, so the three tables agree.
        sqlx::query(
            "INSERT INTO sagas (id, saga_name, saga_version, status, current_step, attempt, input,
                                created_at, updated_at, finished_at)
             SELECT md5('booking-' || g)::uuid, 'booking', $3, 'completed', 5, 1,
                    jsonb_build_object(
                        'listing_id', 'lst-' || lpad((g / $4)::text, 7, '0'),
                        'guest_id', 'guest-' || lpad((g % $5)::text, 7, '0'),
                        'check_in', current_date - $6::int + (g % $4)::int * $7::int,
                        'check_out', current_date - $6::int + (g % $4)::int * $7::int + $8::int,
                        'amount', 37500, 'currency', 'eur', 'payment_method', 'pm_card_visa',
                        'cancellation_policy', 'moderate'),
                    t, t, t
             FROM generate_series($1::int8, $2::int8) g,
                  LATERAL (SELECT now() - random() * interval '365 days' AS t) c",
        )
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
        sqlx::query(
            "INSERT INTO bookings (saga_id, listing_id, guest_id, check_in, check_out, amount,
                                   currency, status, payment_intent_id, confirmation_code,
                                   cancel_reason, created_at, updated_at)
             SELECT s.id, s.input->>'listing_id', s.input->>'guest_id',
                    (s.input->>'check_in')::date, (s.input->>'check_out')::date, 37500, 'eur',
                    CASE WHEN g % 10 = 9 THEN 'cancelled' ELSE 'confirmed' END,
                    'pi_bench_' || g, 'BK-' || upper(substr(md5('code-' || g), 1, 12)),
                    CASE WHEN g % 10 = 9 THEN 'guest_cancelled' END, s.created_at, s.updated_at
             FROM generate_series($1::int8, $2::int8) g
             JOIN sagas s ON s.id = md5('booking-' || g)::uuid",
        )
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .context("bulk load: bookings")?;
        sqlx::query(
            "INSERT INTO inventory_claims (id, saga_id, booking_id, listing_id, stay, kind, status,
                                           created_at, released_at)
             SELECT md5('claim-' || g)::uuid, b.saga_id, b.saga_id, b.listing_id,
                    daterange(b.check_in, b.check_out, '[)'), 'booking',
                    CASE WHEN b.status = 'cancelled' THEN 'released' ELSE 'active' END,
                    b.created_at, CASE WHEN b.status = 'cancelled' THEN b.updated_at END
             FROM generate_series($1::int8, $2::int8) g
             JOIN bookings b ON b.saga_id = md5('booking-' || g)::uuid",
        )
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .context("bulk load: inventory claims")?;
        tx.commit().await?;
        lo = hi + 1;
        progress(format_args!(
            "reads: loaded {lo} of {total} bookings ({:.0} s)",
            started.elapsed().as_secs_f64()
        ));
    }
    // Statistics and the visibility map, as autovacuum leaves a table that has been up a while.
    for table in ["sagas", "bookings", "inventory_claims"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(db)
            .await?;
    }
    Ok(())
}

/// Times `requests` GETs of the paths `path` yields; the answer's JSON is checked by `check`.
async fn time_gets(
    http: &reqwest::Client,
    base: &str,
    requests: usize,
    mut path: impl FnMut() -> String,
    check: impl Fn(&Value) -> Result<(), String>,
) -> anyhow::Result<(Vec<Duration>, usize, Option<String>)> {
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    let mut first_error = None;
    for _ in 0..requests {
        let p = path();
        let sent = Instant::now();
        let answer = async {
            let resp = http
                .get(format!("{base}{p}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body: Value = resp.json().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {body}"));
            }
            check(&body)
        }
        .await;
        let took = sent.elapsed();
        match answer {
            Ok(()) => latencies.push(took),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("GET {p}: {e}"));
            }
        }
    }
    Ok((latencies, errors, first_error))
}

/// Whether a plan reads its table through an index (and never a sequential scan of it).
fn uses_index(plan: &str, table: &str) -> bool {
    !plan.contains(&format!("Seq Scan on {table}")) && plan.contains("Index")
}

fn non_empty(key: &'static str) -> impl Fn(&Value) -> Result<(), String> {
    move |body| match body[key].as_array() {
        Some(a) if !a.is_empty() => Ok(()),
        _ => Err(format!("no {key} in the answer")),
    }
}

impl Bench<'_> {
    /// The bookings-reads phase on a fresh database of `total` bookings.
    pub(super) async fn bookings_reads(
        &self,
        total: u64,
        requests: usize,
    ) -> anyhow::Result<BookingReads> {
        let total = total as i64;
        let name = format!("sagad_bench_{}_reads", self.run_id);
        let url = self.fresh_database(&name).await?;
        let workers = 2;
        let sagad = super::Sagad::start(&super::ChildConfig {
            label: "reads",
            ..self.child_config(&url, workers, workers as u32 + EXTRA_CONNECTIONS)
        })
        .await?;
        let db = store::connect(&url, 1).await?;
        progress(format_args!(
            "reads: bulk-loading {total} bookings into {name} …"
        ));
        let loading = Instant::now();
        bulk_load(&db, total).await?;
        let load_s = loading.elapsed().as_secs_f64();
        let table_mib: f64 =
            sqlx::query_scalar("SELECT pg_total_relation_size('bookings')::float8 / 1048576.0")
                .fetch_one(&db)
                .await?;

        let listings = (total / PER_LISTING).max(1);
        let guests = (total / PER_GUEST).max(1);
        let today = chrono::Utc::now().date_naive();
        let first = today - chrono::Days::new(FIRST_STAY_DAYS_AGO as u64);
        let span = PER_LISTING * STRIDE;
        let window = |offset: i64| -> (NaiveDate, NaiveDate) {
            let from = first + chrono::Days::new(offset as u64);
            (from, from + chrono::Days::new(WINDOW_NIGHTS as u64))
        };

        // The plans, for one guest, one listing and one window.
        let mut conn = db.acquire().await?;
        let by_guest = BookingFilter {
            guest_id: Some(guest(guests / 2)),
            limit: PAGE + 1,
            ..Default::default()
        };
        let by_listing = BookingFilter {
            listing_id: Some(listing(listings / 2)),
            limit: PAGE + 1,
            ..Default::default()
        };
        let (from, to) = window(span / 3);
        let plans = [
            store::bookings::explain_list(&mut conn, &by_guest).await?,
            store::bookings::explain_list(&mut conn, &by_listing).await?,
            store::inventory::explain_active_claims(&mut conn, &listing(listings / 2), from, to)
                .await?,
        ];
        drop(conn);

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let base = sagad.base.clone();
        let mut rng = rand::rng();
        let mut guest_ids = (0..requests)
            .map(|_| guest(rng.random_range(0..guests)))
            .collect::<Vec<_>>()
            .into_iter();
        let mut listing_ids = (0..requests)
            .map(|_| listing(rng.random_range(0..listings)))
            .collect::<Vec<_>>()
            .into_iter();
        let mut windows = (0..requests)
            .map(|_| {
                (
                    listing(rng.random_range(0..listings)),
                    window(rng.random_range(0..span - WINDOW_NIGHTS)),
                )
            })
            .collect::<Vec<_>>()
            .into_iter();
        // A warm-up pass of each kind: the child's pool connections open and prepare.
        for _ in 0..20 {
            let _ = time_gets(
                &http,
                &base,
                1,
                || format!("/v1/bookings?guest_id={}", guest(0)),
                |_| Ok(()),
            )
            .await?;
        }
        progress(format_args!(
            "reads: {requests} requests each by guest, by listing and of availability …"
        ));
        let by_guest = time_gets(
            &http,
            &base,
            requests,
            || {
                format!(
                    "/v1/bookings?guest_id={}",
                    guest_ids.next().unwrap_or_default()
                )
            },
            non_empty("bookings"),
        )
        .await?;
        let by_listing = time_gets(
            &http,
            &base,
            requests,
            || {
                format!(
                    "/v1/bookings?listing_id={}",
                    listing_ids.next().unwrap_or_default()
                )
            },
            non_empty("bookings"),
        )
        .await?;
        let availability = time_gets(
            &http,
            &base,
            requests,
            || {
                let (l, (from, to)) = windows.next().unwrap_or_else(|| (listing(0), window(0)));
                format!("/v1/listings/{l}/availability?from={from}&to={to}")
            },
            non_empty("ranges"),
        )
        .await?;
        let queries = [
            ("GET /v1/bookings?guest_id=…", "bookings", by_guest),
            ("GET /v1/bookings?listing_id=…", "bookings", by_listing),
            (
                "GET /v1/listings/{id}/availability, 90 nights",
                "inventory_claims",
                availability,
            ),
        ]
        .into_iter()
        .zip(plans)
        .map(
            |((request, table, (latencies, errors, first_error)), plan)| ReadQuery {
                request: request.to_owned(),
                latency_ms: ms(latencies.into_iter()),
                errors,
                first_error,
                uses_index: uses_index(&plan, table),
                plan,
            },
        )
        .collect();
        sagad.stop().await?;
        db.close().await;
        super::drop_database(&self.admin, &name).await?;
        Ok(BookingReads {
            bookings: total,
            listings,
            guests,
            load_s,
            bookings_table_mib: table_mib,
            queries,
        })
    }
}
