//! `sagad stripe events list | show | reprocess`: the Stripe webhook inbox, for operators.
//! Reads the database directly: the same DATABASE_URL as `sagad serve`, or without it the
//! embedded cluster `sagad serve` runs in SAGAD_DATA_DIR (never a new, empty one).

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::config::DbArgs;
use crate::db;
use crate::store::stripe_inbox::{self, InboxStatus, ListFilter, ReprocessOutcome, StripeEventRow};

#[derive(Subcommand, Debug)]
pub enum StripeCommand {
    /// The inbox of Stripe webhook events.
    Events {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// List received events, newest first.
    List {
        /// pending, processing, processed, ignored, unmatched or dead.
        #[arg(long)]
        status: Option<String>,
        /// A Stripe event type, e.g. payment_intent.succeeded.
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one event: status, attempts, outcome, last error and its payload.
    Show { id: String },
    /// Queue a dead, unmatched or ignored event for processing again.
    Reprocess { id: String },
}

pub async fn run(command: StripeCommand) -> anyhow::Result<ExitCode> {
    let StripeCommand::Events { db, command } = command;
    let status = match &command {
        EventsCommand::List {
            status: Some(s), ..
        } => match InboxStatus::parse(s) {
            Some(s) => Some(s),
            None => bail!(
                "--status {s:?} is not one of: {}",
                InboxStatus::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        _ => None,
    };
    let database = db::attach(&db).await?;
    let pool = database.pool.clone();
    let result = async {
        Ok::<_, anyhow::Error>(match command {
            EventsCommand::List {
                event_type, limit, ..
            } => {
                let rows = stripe_inbox::list(
                    &pool,
                    &ListFilter {
                        status,
                        event_type,
                        limit: i64::from(limit.clamp(1, 1000)),
                    },
                )
                .await?;
                println!(
                    "{:<32} {:<42} {:<10} {:>3}  {:<20} OUTCOME",
                    "ID", "TYPE", "STATUS", "TRY", "RECEIVED"
                );
                for r in &rows {
                    println!(
                        "{:<32} {:<42} {:<10} {:>3}  {:<20} {}",
                        r.id,
                        r.event_type,
                        r.status,
                        r.attempts,
                        r.received_at.format("%Y-%m-%d %H:%M:%S"),
                        r.outcome.as_deref().or(r.last_error.as_deref()).unwrap_or("")
                    );
                }
                ExitCode::SUCCESS
            }
            EventsCommand::Show { id } => match stripe_inbox::get(&pool, &id).await? {
                Some(r) => {
                    print_event(&r);
                    if let Some(raw) = stripe_inbox::raw_body(&pool, &id).await? {
                        println!(
                            "body as received ({} bytes; the payload above shows each NUL \
                             character as U+FFFD):\n{}",
                            raw.len(),
                            String::from_utf8_lossy(&raw)
                        );
                    }
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("no Stripe event {id} in the inbox");
                    ExitCode::FAILURE
                }
            },
            EventsCommand::Reprocess { id } => match stripe_inbox::reprocess(&pool, &id).await? {
                ReprocessOutcome::Queued => {
                    println!("{id} queued for processing");
                    ExitCode::SUCCESS
                }
                ReprocessOutcome::NotFound => {
                    eprintln!("no Stripe event {id} in the inbox");
                    ExitCode::FAILURE
                }
                ReprocessOutcome::NotReprocessable(status) => {
                    eprintln!(
                        "{id} is {status}: only dead, unmatched or ignored events can be reprocessed"
                    );
                    ExitCode::FAILURE
                }
            },
        })
    }
    .await;
    database.stop().await;
    result
}

fn print_event(r: &StripeEventRow) {
    println!("id:             {}", r.id);
    println!("type:           {}", r.event_type);
    println!("status:         {}", r.status);
    println!("attempts:       {}", r.attempts);
    println!("deliveries:     {}", r.deliveries);
    if let Some(pi) = &r.payment_intent_id {
        println!("payment intent: {pi}");
    }
    if let Some(s) = r.saga_id {
        println!("saga:           {s}");
    }
    println!("received:       {}", r.received_at);
    if let Some(t) = r.processed_at {
        println!("processed:      {t}");
    } else if r.status == InboxStatus::Pending {
        println!("next attempt:   {}", r.next_attempt_at);
    }
    if let Some(o) = &r.outcome {
        println!("outcome:        {o}");
    }
    if let Some(e) = &r.last_error {
        println!("last error:     {e}");
    }
    println!(
        "payload:\n{}",
        serde_json::to_string_pretty(&r.payload).unwrap_or_default()
    );
}
