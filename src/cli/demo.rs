//! `sagad demo`: the whole mission in one command. Starts sagad on an embedded PostgreSQL with the
//! Stripe test double and a notification receiver, runs a few dozen booking sagas (happy paths,
//! declines, a double-booking race, a failing notification, a guest cancellation), then prints what
//! happened to each kind.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use stripe_double::StripeDouble;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ServeArgs, Settings};
use crate::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use crate::{server, store};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Use this PostgreSQL instead of a temporary embedded cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How many sagas to run (at least 20).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(20..=10_000))]
    pub sagas: u32,
}

const TOKEN: &str = "demo-token-0123456789";

struct Scenario {
    name: &'static str,
    expect: &'static str,
    requests: Vec<Value>,
    cancel_after: bool,
}

/// Nights counted from a day half a year ahead (check-ins in the past are refused).
fn booking(listing: &str, guest: &str, nights: (u32, u32), pm: &str) -> Value {
    let day = |n: u32| {
        (crate::clock::wall().date_naive() + chrono::Days::new(180 + u64::from(n))).to_string()
    };
    json!({ "saga": "booking", "input": {
        "listing_id": listing, "guest_id": guest,
        "check_in": day(nights.0), "check_out": day(nights.1),
        "amount": 12_500 * (nights.1 - nights.0) as i64, "currency": "eur", "payment_method": pm }})
}

fn scenarios(total: u32, run: &str) -> Vec<Scenario> {
    let race = 8;
    let fixed = 4 + 2 + race + 1 + 1;
    let happy = total.saturating_sub(fixed).max(1);
    vec![
        Scenario {
            name: "happy path",
            expect: "completed",
            requests: (0..happy)
                .map(|i| {
                    booking(
                        &format!("{run}-villa-{i}"),
                        &format!("guest-{i}"),
                        (1, 4),
                        "pm_card_visa",
                    )
                })
                .collect(),
            cancel_after: false,
        },
        Scenario {
            name: "card declined",
            expect: "compensated (card_declined)",
            requests: (0..4)
                .map(|i| {
                    booking(
                        &format!("{run}-loft-{i}"),
                        "guest-d",
                        (2, 5),
                        "pm_card_chargeDeclined",
                    )
                })
                .collect(),
            cancel_after: false,
        },
        Scenario {
            name: "insufficient funds",
            expect: "compensated (card_declined)",
            requests: (0..2)
                .map(|i| {
                    booking(
                        &format!("{run}-cabin-{i}"),
                        "guest-f",
                        (2, 5),
                        "pm_card_chargeDeclinedInsufficientFunds",
                    )
                })
                .collect(),
            cancel_after: false,
        },
        Scenario {
            name: "double-booking race",
            expect: "1 completed, the rest dates_unavailable",
            requests: (0..race)
                .map(|i| {
                    booking(
                        &format!("{run}-penthouse"),
                        &format!("racer-{i}"),
                        (10, 13 + i % 2),
                        "pm_card_visa",
                    )
                })
                .collect(),
            cancel_after: false,
        },
        Scenario {
            name: "notification fails",
            expect: "compensated: refunded, released",
            requests: vec![booking(
                &format!("{run}-chalet"),
                "guest-unreachable",
                (5, 7),
                "pm_card_visa",
            )],
            cancel_after: false,
        },
        Scenario {
            name: "guest cancels",
            expect: "completed, then compensated",
            requests: vec![booking(
                &format!("{run}-houseboat"),
                "guest-c",
                (8, 9),
                "pm_card_visa",
            )],
            cancel_after: true,
        },
    ]
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let (url, embedded) = match &args.database_url {
        Some(u) => (u.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("sagad-demo-{}", std::process::id()));
            eprintln!("starting a temporary PostgreSQL in {} …", dir.display());
            let pg = EmbeddedPostgres::start(EmbeddedOptions {
                data_dir: dir,
                port: None,
                ephemeral: true,
                max_connections: 100,
            })
            .await?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let result = run_with(&url, args.sagas, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(pg) = embedded {
        pg.stop().await?;
    }
    result
}

async fn run_with(url: &str, total: u32, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let pool = store::connect(url, 30).await?;
    store::migrate(&pool).await?;

    let double = StripeDouble::start(TcpListener::bind("127.0.0.1:0").await?).await?;
    let receiver = TcpListener::bind("127.0.0.1:0").await?;
    let notify_url = format!("http://{}/notify", receiver.local_addr()?);
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/notify",
            axum::routing::post(|body: String| async move {
                // The gateway refuses this guest's address outright (an outage would only delay
                // the notification: the booking saga waits it out for 24 hours).
                if body.contains("guest-unreachable") {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let _ = axum::serve(receiver, app).await;
    });

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut args = ServeArgs::defaults();
    args.api_tokens = vec![TOKEN.into()];
    args.stripe_secret_key = Some("sk_test_sagad_demo".into());
    args.stripe_api_base = Some(double.base_url());
    args.notify_url = Some(notify_url);
    args.notify_secret = vec!["demo-notify-secret".into()];
    args.max_wait = Duration::from_secs(60);
    let settings = Settings::from_args(args)?;
    let server = tokio::spawn(server::run(
        settings,
        pool.clone(),
        listener,
        shutdown.clone(),
    ));

    let run_id = format!("demo{:04x}", rand::random::<u16>());
    let scenarios = scenarios(total, &run_id);
    let count: usize = scenarios.iter().map(|s| s.requests.len()).sum();
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} sagas finished {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let http = reqwest::Client::new();
    let bar = Arc::new(bar);
    let mut tasks = tokio::task::JoinSet::new();
    for (si, s) in scenarios.iter().enumerate() {
        for body in &s.requests {
            let (http, base, body, bar, cancel) = (
                http.clone(),
                base.clone(),
                body.clone(),
                bar.clone(),
                s.cancel_after,
            );
            tasks.spawn(async move {
                let r = start_and_finish(&http, &base, &body, cancel).await;
                bar.inc(1);
                (si, r)
            });
        }
    }
    let mut results: BTreeMap<usize, Vec<anyhow::Result<Value>>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (si, r) = joined?;
        results.entry(si).or_default().push(r);
    }
    bar.finish_with_message("done");

    println!();
    println!(
        "{:<22} {:>5} {:>10} {:>12} {:>6}  {:<40} expected",
        "scenario", "sagas", "completed", "compensated", "other", "reasons"
    );
    let mut all_ok = true;
    for (si, s) in scenarios.iter().enumerate() {
        let rs = results.remove(&si).unwrap_or_default();
        let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rs {
            match r {
                Ok(v) => {
                    *by_status
                        .entry(v["status"].as_str().unwrap_or("?").to_owned())
                        .or_default() += 1;
                    if let Some(reason) = v.pointer("/failure/reason").and_then(|r| r.as_str()) {
                        let short = reason.split(':').next().unwrap_or(reason).to_owned();
                        *reasons.entry(short).or_default() += 1;
                    }
                }
                Err(e) => {
                    *by_status.entry("error".into()).or_default() += 1;
                    *reasons.entry(format!("{e:#}")).or_default() += 1;
                }
            }
        }
        let completed = by_status.get("completed").copied().unwrap_or(0);
        let compensated = by_status.get("compensated").copied().unwrap_or(0);
        let other = rs.len() - completed - compensated;
        all_ok &= other == 0;
        let reasons = reasons
            .iter()
            .map(|(r, n)| format!("{r}×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:<22} {:>5} {:>10} {:>12} {:>6}  {:<40} {}",
            s.name,
            rs.len(),
            completed,
            compensated,
            other,
            reasons,
            s.expect
        );
    }
    let pis = double.payment_intents();
    let captured = pis.iter().filter(|p| p.effects.captures > 0).count();
    let refunded = pis.iter().filter(|p| p.effects.refunds > 0).count();
    let voided = pis.iter().filter(|p| p.effects.cancels > 0).count();
    println!();
    println!(
        "Stripe test double: {} PaymentIntents, {captured} captured, {refunded} refunded, {voided} voided",
        pis.len()
    );
    let double_booked = store::inventory::count_overlapping_active(&pool).await?;
    println!("Overlapping active bookings in the database: {double_booked}");
    println!(
        "Inspect any saga: GET {base}/v1/sagas/<id> (token {TOKEN}) while the demo runs, or re-run with DATABASE_URL to keep the data."
    );

    shutdown.cancel();
    let _ = server.await;
    pool.close().await;
    Ok(if all_ok && double_booked == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts a saga, waits for it to finish (and cancels it if asked), returns its final view.
async fn start_and_finish(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
    cancel: bool,
) -> anyhow::Result<Value> {
    let auth = format!("Bearer {TOKEN}");
    let started: Value = http
        .post(format!("{base}/v1/sagas?wait=60s"))
        .header("Authorization", &auth)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = started["id"].as_str().context("no saga id")?.to_owned();
    let mut view = started;
    if cancel && view["status"] == "completed" {
        http.post(format!("{base}/v1/sagas/{id}/cancel"))
            .header("Authorization", &auth)
            .send()
            .await?
            .error_for_status()?;
    }
    for _ in 0..600 {
        let terminal = matches!(
            view["status"].as_str(),
            Some("completed" | "compensated" | "stuck")
        );
        let cancelling = cancel && view["status"] == "completed";
        if terminal && !cancelling {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        view = http
            .get(format!("{base}/v1/sagas/{id}"))
            .header("Authorization", &auth)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
    }
    Ok(view)
}
