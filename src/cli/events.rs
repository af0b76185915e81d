//! `sagad events tail`: the global event feed through a running sagad's API.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use super::{ApiArgs, api_call};

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Print every event from a position on, in feed order, and keep following new ones.
    Tail {
        /// Start after this position (an event's `position`, or a page's `next`); from the
        /// start without it.
        #[arg(long)]
        after: Option<String>,
        /// Only these stored event types; repeat or comma-separate.
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Stop once caught up instead of following.
        #[arg(long)]
        once: bool,
    },
}

/// How long each long poll waits for new events while following.
const FOLLOW_WAIT: &str = "25s";

pub async fn run(api: ApiArgs, command: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::Tail { after, types, once } = command;
    let base = api.api_url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut after = after;
    loop {
        let mut q: Vec<(&str, String)> = vec![("limit", "500".into())];
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        if !types.is_empty() {
            q.push(("types", types.join(",")));
        }
        if !once {
            q.push(("wait", FOLLOW_WAIT.into()));
        }
        let page = api_call(http.get(format!("{base}/v1/events")).query(&q), &api).await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            print_event(e);
        }
        if let Some(next) = page["next"].as_str() {
            after = Some(next.to_owned());
        }
        if once && events.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn print_event(e: &Value) {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
    println!(
        "{:<16} {}  {} v{:<3} {:<22} {}",
        s("position"),
        s("recorded_at"),
        s("aggregate_id"),
        e["version"],
        s("event_type"),
        e["payload"]
    );
}
