//! The command line: `sagad serve | migrate | healthcheck | demo | sagas check | saga … | bookings … | events tail | projections rebuild|verify | stripe events … | stripe-double`.

mod bookings;
mod demo;
mod events;
mod healthcheck;
mod outbound;
mod projections;
mod stripe_inbox;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tracing::info;

use crate::config::{DbArgs, ServeArgs, Settings};
use crate::engine::actions;
use crate::telemetry::{self, LogFormat};
use crate::{db, server, shutdown};

#[derive(Parser, Debug)]
#[command(
    name = "sagad",
    version,
    about = "Durable saga orchestrator: bookings, payments and compensations on PostgreSQL",
    long_about = "sagad runs booking sagas (hold inventory → authorize → capture → confirm → notify) durably in \
PostgreSQL and compensates completed steps in reverse when a step fails for good.\n\n\
Without DATABASE_URL, sagad starts a private PostgreSQL cluster from the machine's PostgreSQL binaries."
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "SAGAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: the HTTP API and the saga workers.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Probe a running sagad's readiness (`GET /readyz`): exit 0 when ready, 1 otherwise with the
    /// reason (for container health checks).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Run a few dozen booking sagas against the built-in Stripe test double and show what happened.
    Demo(demo::DemoArgs),
    /// Saga definitions.
    Sagas {
        #[command(subcommand)]
        command: SagasCommand,
    },
    /// Start, inspect, list and cancel sagas through a running sagad's API.
    Saga {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: SagaCommand,
    },
    /// The global event feed through a running sagad's API.
    Events {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// List bookings and show one (its payments and history) through a running sagad's API.
    Bookings {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: bookings::BookingsCommand,
    },
    /// Rebuild or verify a projection (bookings) from the event store.
    Projections {
        #[command(subcommand)]
        command: projections::ProjectionsCommand,
    },
    /// Stripe webhook events sagad received: list, show, reprocess.
    Stripe {
        #[command(subcommand)]
        command: stripe_inbox::StripeCommand,
    },
    /// Manage outgoing webhook endpoints and deliveries through a running sagad's API.
    Webhooks {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: outbound::WebhooksCommand,
    },
    /// Run the Stripe-compatible test double on its own (a stateful stripe-mock).
    StripeDouble {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:12111")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
pub enum SagasCommand {
    /// Validate every saga definition and point at the offending line of each problem.
    Check {
        /// Directory of `*.toml` definitions.
        #[arg(long, env = "SAGAD_SAGAS_DIR", default_value = "sagas")]
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Base URL of the sagad API. (`--api-url`, not `--url`: `webhooks endpoints create --url`
    /// is the endpoint's own URL, and a global `--url` would silently take its value.)
    #[arg(
        long = "api-url",
        global = true,
        env = "SAGAD_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_url: String,
    /// Bearer token (one of the server's SAGAD_API_TOKENS).
    #[arg(
        long,
        env = "SAGAD_API_TOKEN",
        hide_env_values = true,
        default_value = "dev-token"
    )]
    pub token: String,
}

#[derive(Subcommand, Debug)]
pub enum SagaCommand {
    /// Start a booking saga.
    Start {
        #[arg(long)]
        listing: String,
        #[arg(long)]
        guest: String,
        /// First night, YYYY-MM-DD.
        #[arg(long)]
        check_in: String,
        /// Departure day, YYYY-MM-DD.
        #[arg(long)]
        check_out: String,
        /// Amount in minor units (cents).
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "eur")]
        currency: String,
        #[arg(long, default_value = "pm_card_visa")]
        payment_method: String,
        /// flexible, moderate or strict (default: the server's SAGAD_CANCELLATION_POLICY).
        #[arg(long)]
        cancellation_policy: Option<String>,
        /// Makes retrying this command safe.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait up to this long for the saga to finish (e.g. 5s).
        #[arg(long, default_value = "5s")]
        wait: String,
    },
    /// Show one saga: status, steps, attempts, errors, and its events.
    Show {
        id: String,
        /// Show the saga as its events left it then: an RFC 3339 timestamp
        /// (2026-12-03T10:15:00Z) or an event version (4).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// List sagas, newest first.
    List {
        /// running, compensating, waiting, completed, compensated or stuck (`waiting` also
        /// lists the sagas paused on a dependency; each shows why it waits and until when).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        saga: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after the page that printed this cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a saga: compensate what it did (on the guest's behalf unless --by says otherwise;
    /// for a stuck saga, as an operator, compensating what is left).
    Cancel {
        id: String,
        /// Who cancels: guest (the booking's policy sets the refund), host or operator (a full
        /// refund; your token's name is recorded). Default: the guest.
        #[arg(long)]
        by: Option<String>,
        /// Why (recorded on the cancellation's events).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run the step of a stuck or waiting saga again now, with fresh attempts; or, with --step
    /// and/or --since instead of an id, every stuck saga of that step or stuck since that time.
    Retry {
        /// The saga; leave out with --step / --since.
        #[arg(required_unless_present_any = ["step", "since"], conflicts_with_all = ["step", "since"])]
        id: Option<String>,
        /// Every saga stuck at this step (running it or undoing it), e.g. capture_payment.
        #[arg(long)]
        step: Option<String>,
        /// Every saga stuck since this time (RFC 3339, e.g. 2027-06-01T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Why (recorded with your token's name).
        #[arg(long)]
        reason: String,
    },
    /// Close a stuck saga that was settled by hand, and show what it still holds.
    Resolve {
        id: String,
        /// completed or compensated.
        #[arg(long)]
        outcome: String,
        /// What was done (recorded with your token's name).
        #[arg(long)]
        reason: String,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Interactive commands keep the terminal for their own output.
    let filter = match cli.command {
        Command::Demo(_)
        | Command::Saga { .. }
        | Command::Bookings { .. }
        | Command::Sagas { .. }
        | Command::Events { .. }
        | Command::Healthcheck(_) => "warn",
        _ => telemetry::DEFAULT_FILTER,
    };
    telemetry::init_logging(cli.log_format, filter);
    if matches!(
        cli.command,
        Command::Saga { .. }
            | Command::Bookings { .. }
            | Command::Sagas { .. }
            | Command::Events { .. }
            | Command::Projections { .. }
            | Command::Stripe { .. }
            | Command::Webhooks { .. }
    ) {
        // Output commands end quietly when their reader goes away (`sagad saga list | head`),
        // as Unix tools do, instead of failing on a broken pipe. The daemon keeps Rust's default.
        // SAFETY: restores the default disposition of one signal, before any other thread writes.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate { db } => {
            let database = db::open(&db, true).await?;
            info!("migrations applied");
            database.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck(args) => Ok(healthcheck::run(args).await),
        Command::Demo(args) => demo::run(args).await,
        Command::Sagas {
            command: SagasCommand::Check { dir },
        } => Ok(check_definitions(&dir)),
        Command::Saga { api, command } => saga_command(api, command).await,
        Command::Bookings { api, command } => bookings::run(api, command).await,
        Command::Stripe { command } => stripe_inbox::run(command).await,
        Command::Webhooks { api, command } => outbound::run(api, command).await,
        Command::Events { api, command } => events::run(api, command).await,
        Command::Projections { command } => projections::run(command).await,
        Command::StripeDouble { listen } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            info!(%listen, "Stripe test double listening; use STRIPE_API_BASE=http://{listen}/");
            let shutdown = shutdown::on_signal();
            stripe_double::serve(listener, async move { shutdown.cancelled().await }).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_definitions(dir: &std::path::Path) -> ExitCode {
    match crate::engine::definition::load_dir(dir, &actions::catalog()) {
        Ok(defs) if defs.is_empty() => {
            eprintln!("{}: no saga definitions (*.toml) found", dir.display());
            ExitCode::FAILURE
        }
        Ok(defs) => {
            for d in defs {
                println!("ok  {} v{} ({} steps)", d.name, d.version, d.steps.len());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e:#}");
            }
            eprintln!("{} problem(s) found", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// The address to reach a server listening on `addr` from this machine: a wildcard address
/// (`0.0.0.0`, `::`) is reached on loopback.
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::from_args(args)?;
    let shutdown = shutdown::on_signal();

    // Development mode: an in-process Stripe test double when no key is configured. It sends its
    // webhooks to this sagad, signed with a secret generated for this run, so that 3-D Secure
    // completes as it would with Stripe.
    let mut double = None;
    if settings.runs_stripe_double() {
        let listen = settings.stripe.dev_listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (SAGAD_DEV_STRIPE_LISTEN)"))?;
        let started = stripe_double::StripeDouble::start(listener).await?;
        let base = started.base_url();
        let secret = crate::outbound::new_secret();
        settings.inbound_stripe.webhook_secrets.push(secret.clone());
        let webhooks = format!("http://{}/webhooks/stripe", loopback(settings.listen));
        started.configure_webhooks(stripe_double::WebhookTarget {
            url: webhooks.clone(),
            secrets: vec![secret],
            ..Default::default()
        });
        info!(%base, %webhooks, "--dev: using the built-in Stripe test double (no real payments); it sends its webhooks to this sagad under a generated secret");
        settings.stripe.secret_key = Some("sk_test_sagad_dev".to_owned());
        settings.stripe.api_base = Some(base);
        double = Some(started);
    }
    if settings.notify.is_none() {
        tracing::warn!(
            "SAGAD_NOTIFY_URL is not set: the notify step records that no notification was sent"
        );
    }
    if settings.inbound_stripe.verifier().is_none() {
        tracing::warn!(
            "STRIPE_WEBHOOK_SECRET is not set: POST /webhooks/stripe is not served, so 3-D Secure \
             payments wait for their deadline"
        );
    }
    // The daemon keeps its whole pool open (`store::connect_pool`).
    let database = db::open_with(&settings.db, false, settings.db.pool_size).await?;
    let listen = settings.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (SAGAD_LISTEN)"))?;
    let metrics = match settings.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (SAGAD_METRICS_LISTEN)"))?,
        ),
        None => None,
    };
    let listeners = server::Listeners {
        api: listener,
        metrics,
    };
    let result = server::run(settings, database.pool.clone(), listeners, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(d) = double {
        d.stop();
    }
    database.stop().await;
    result?;
    info!("sagad stopped");
    Ok(ExitCode::SUCCESS)
}

/// Sends an API request with the operator's token: the JSON answer (`null` when there is none),
/// or an error carrying the API's own message.
pub(crate) async fn api_call(
    req: reqwest::RequestBuilder,
    api: &ApiArgs,
) -> anyhow::Result<serde_json::Value> {
    let base = api.api_url.trim_end_matches('/');
    let resp = req
        .bearer_auth(&api.token)
        .send()
        .await
        .with_context(|| format!("cannot reach sagad at {base} (set --api-url / SAGAD_URL)"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let msg = body
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .unwrap_or("request failed");
        bail!("HTTP {status}: {msg}");
    }
    Ok(body)
}

async fn saga_command(api: ApiArgs, command: SagaCommand) -> anyhow::Result<ExitCode> {
    let base = api.api_url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let (req, show_events) = match &command {
        SagaCommand::Start {
            listing,
            guest,
            check_in,
            check_out,
            amount,
            currency,
            payment_method,
            cancellation_policy,
            idempotency_key,
            wait,
        } => {
            let mut input = serde_json::json!({ "listing_id": listing, "guest_id": guest,
                "check_in": check_in, "check_out": check_out, "amount": amount,
                "currency": currency, "payment_method": payment_method });
            if let Some(p) = cancellation_policy {
                input["cancellation_policy"] = p.as_str().into();
            }
            let mut req = http
                .post(format!("{base}/v1/sagas"))
                .query(&[("wait", wait)])
                .json(&serde_json::json!({ "saga": "booking", "input": input }));
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            (req, false)
        }
        SagaCommand::Show { id, as_of } => {
            let mut req = http.get(format!("{base}/v1/sagas/{id}"));
            if let Some(t) = as_of {
                req = req.query(&[("as_of", t)]);
            }
            (req, as_of.is_none())
        }
        SagaCommand::List {
            status,
            saga,
            limit,
            cursor,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(c) = cursor {
                q.push(("cursor", c.clone()));
            }
            if let Some(s) = status {
                q.push(("status", s.clone()));
            }
            if let Some(s) = saga {
                q.push(("saga", s.clone()));
            }
            (http.get(format!("{base}/v1/sagas")).query(&q), false)
        }
        SagaCommand::Cancel { id, by, reason } => {
            let mut req = http.post(format!("{base}/v1/sagas/{id}/cancel"));
            if by.is_some() || reason.is_some() {
                let mut body = serde_json::Map::new();
                if let Some(b) = by {
                    body.insert("by".into(), b.as_str().into());
                }
                if let Some(r) = reason {
                    body.insert("reason".into(), r.as_str().into());
                }
                req = req.json(&body);
            }
            (req, false)
        }
        SagaCommand::Retry {
            id: Some(id),
            reason,
            ..
        } => (
            http.post(format!("{base}/v1/sagas/{id}/retry"))
                .json(&serde_json::json!({ "reason": reason })),
            false,
        ),
        SagaCommand::Retry {
            id: None,
            step,
            since,
            reason,
        } => (
            http.post(format!("{base}/v1/sagas/retry"))
                .json(&serde_json::json!({ "step": step, "since": since, "reason": reason })),
            false,
        ),
        SagaCommand::Resolve {
            id,
            outcome,
            reason,
        } => (
            http.post(format!("{base}/v1/sagas/{id}/resolve"))
                .json(&serde_json::json!({ "outcome": outcome, "reason": reason })),
            false,
        ),
    };
    let body = api_call(req, &api).await?;
    match command {
        SagaCommand::List { .. } => print_list(&body),
        SagaCommand::Retry { id: None, .. } => print_bulk(&body),
        SagaCommand::Resolve { .. } => {
            print_saga(&body["saga"]);
            print_held(&body["still_held"]);
        }
        _ => print_saga(&body),
    }
    if show_events && let Some(id) = body.get("id").and_then(|v| v.as_str()) {
        let events = api_call(http.get(format!("{base}/v1/sagas/{id}/events")), &api).await?;
        println!("\nevents:");
        for e in events["events"].as_array().into_iter().flatten() {
            println!(
                "  v{:<3} {}  {:<22} {}",
                e["version"],
                e["recorded_at"].as_str().unwrap_or(""),
                e["event_type"].as_str().unwrap_or(""),
                e["payload"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_saga(v: &serde_json::Value) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or("-")
            .to_owned()
    };
    println!("saga      {} ({} v{})", s("/id"), s("/saga"), v["version"]);
    if let Some(p) = v.get("as_of").filter(|p| !p.is_null()) {
        println!(
            "as of     event v{} {}",
            p["version"],
            s("/as_of/recorded_at")
        );
    }
    println!("status    {}", s("/status"));
    if let Some(step) = v["current_step"].as_str() {
        println!("step      {step} (attempt {})", v["attempt"]);
    }
    if let Some(f) = v.get("failure").filter(|f| !f.is_null()) {
        println!(
            "failure   {} at {}",
            f["reason"].as_str().unwrap_or("-"),
            f["step"].as_str().unwrap_or("-")
        );
    }
    if let Some(b) = v.get("booking").filter(|b| !b.is_null()) {
        println!(
            "booking   {} {}..{} {} {} [{}] {}",
            b["listing_id"].as_str().unwrap_or(""),
            b["check_in"].as_str().unwrap_or(""),
            b["check_out"].as_str().unwrap_or(""),
            b["amount"],
            b["currency"].as_str().unwrap_or(""),
            b["status"].as_str().unwrap_or(""),
            b["confirmation_code"].as_str().unwrap_or("")
        );
    }
    println!(
        "created   {}   finished {}",
        s("/created_at"),
        s("/finished_at")
    );
    for st in v["steps"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {:<18} {:<10} attempts {:<2} {}",
            st["phase"].as_str().unwrap_or(""),
            st["step_name"].as_str().unwrap_or(""),
            st["status"].as_str().unwrap_or(""),
            st["attempts"],
            st["last_error"].as_str().unwrap_or("")
        );
    }
}

fn print_list(v: &serde_json::Value) {
    let sagas = v["sagas"].as_array().map(Vec::as_slice).unwrap_or_default();
    // Why each saga waits, when any of them does (`saga list --status waiting`).
    let waits = sagas.iter().any(|s| s["wait"].is_object());
    let mut header = format!(
        "{:<38} {:<10} {:<13} {:<18}",
        "ID", "SAGA", "STATUS", "STEP"
    );
    if waits {
        header.push_str(&format!(" {:<24} {:<20}", "WAITING FOR", "UNTIL"));
    }
    println!("{header} FAILURE");
    for s in sagas {
        let mut line = format!(
            "{:<38} {:<10} {:<13} {:<18}",
            s["id"].as_str().unwrap_or(""),
            s["saga"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            s["current_step"].as_str().unwrap_or("-"),
        );
        if waits {
            line.push_str(&format!(
                " {:<24} {:<20}",
                s.pointer("/wait/reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("-"),
                s.pointer("/wait/deadline")
                    .and_then(|r| r.as_str())
                    .unwrap_or("-"),
            ));
        }
        println!(
            "{line} {}",
            s.pointer("/failure/reason")
                .and_then(|r| r.as_str())
                .unwrap_or("")
        );
    }
    if let Some(c) = v["next_cursor"].as_str() {
        println!("(more: --cursor {c})");
    }
}

/// What a resolved saga still holds.
fn print_held(v: &serde_json::Value) {
    let mut any = false;
    if let Some(c) = v.get("claim").filter(|c| c.is_object()) {
        any = true;
        println!(
            "still held: {} of {} {}..{}{}",
            c["kind"].as_str().unwrap_or(""),
            c["listing_id"].as_str().unwrap_or(""),
            c["check_in"].as_str().unwrap_or(""),
            c["check_out"].as_str().unwrap_or(""),
            c["expires_at"]
                .as_str()
                .map(|e| format!(" (lapses at {e})"))
                .unwrap_or_default()
        );
    }
    for (key, what) in [
        ("captured", "money captured, not refunded"),
        (
            "authorization",
            "an authorization, neither captured nor voided",
        ),
    ] {
        if let Some(m) = v.get(key).filter(|m| m.is_object()) {
            any = true;
            println!(
                "still held: {what}: {} {} on {}",
                m["amount"],
                m["currency"].as_str().unwrap_or(""),
                m["payment_intent_id"].as_str().unwrap_or("")
            );
        }
    }
    if !any {
        println!("still held: nothing");
    }
}

fn print_bulk(v: &serde_json::Value) {
    let ids = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let (retried, skipped) = (ids("retried"), ids("skipped"));
    println!("retried {} saga(s)", retried.len());
    for id in &retried {
        println!("  {}", id.as_str().unwrap_or(""));
    }
    if !skipped.is_empty() {
        println!("skipped {} that moved on meanwhile:", skipped.len());
        for id in &skipped {
            println!("  {}", id.as_str().unwrap_or(""));
        }
    }
    if v["more"].as_bool() == Some(true) {
        println!("(more stuck sagas match: run it again)");
    }
}
