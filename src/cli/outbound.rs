//! `sagad webhooks …`: endpoints and deliveries through a running sagad's API.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::ApiArgs;

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Subscriptions: create, list, show, update, delete, rotate secrets, see and redrive deliveries.
    Endpoints {
        #[command(subcommand)]
        command: EndpointsCommand,
    },
    /// One delivery: show it with its attempts, or deliver it again.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum EndpointsCommand {
    /// Subscribe a URL; prints the signing secret once.
    Create {
        #[arg(long)]
        url: String,
        /// Event type or wildcard (`booking.*`, `*`); repeat or comma-separate.
        #[arg(long = "event-type", required = true, value_delimiter = ',')]
        event_types: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Most attempts per second.
        #[arg(long)]
        rate_limit: Option<i32>,
    },
    List,
    Show {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long = "event-type", value_delimiter = ',')]
        event_types: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(long, conflicts_with = "no_rate_limit")]
        rate_limit: Option<i32>,
        /// Remove the rate limit.
        #[arg(long)]
        no_rate_limit: bool,
    },
    Delete {
        id: String,
    },
    /// Issue a new secret; the old one keeps signing for the configured overlap (24 h).
    RotateSecret {
        id: String,
    },
    /// An endpoint's deliveries, newest first.
    Deliveries {
        id: String,
        /// pending, delivering, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Redeliver every dead letter that died at or after `--since` (RFC 3339).
    Redrive {
        id: String,
        #[arg(long)]
        since: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
    /// A delivery and every attempt: time, status, latency, response, error.
    Show { id: String },
    /// Deliver again with a fresh retry schedule (same webhook-id).
    Redeliver { id: String },
}

pub async fn run(api: ApiArgs, command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    let base = api.api_url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let ep = |id: &str| format!("{base}/v1/webhook-endpoints/{id}");
    let req = match command {
        WebhooksCommand::Endpoints { command } => match command {
            EndpointsCommand::Create {
                url,
                event_types,
                description,
                disabled,
                rate_limit,
            } => http.post(format!("{base}/v1/webhook-endpoints")).json(
                &json!({ "url": url, "event_types": event_types, "description": description,
                               "enabled": !disabled, "rate_limit": rate_limit }),
            ),
            EndpointsCommand::List => http.get(format!("{base}/v1/webhook-endpoints")),
            EndpointsCommand::Show { id } => http.get(ep(&id)),
            EndpointsCommand::Update {
                id,
                url,
                event_types,
                description,
                enable,
                disable,
                rate_limit,
                no_rate_limit,
            } => {
                let mut patch = serde_json::Map::new();
                if let Some(u) = url {
                    patch.insert("url".into(), json!(u));
                }
                if let Some(t) = event_types {
                    patch.insert("event_types".into(), json!(t));
                }
                if let Some(d) = description {
                    patch.insert("description".into(), json!(d));
                }
                if enable || disable {
                    patch.insert("enabled".into(), json!(enable));
                }
                if let Some(r) = rate_limit {
                    patch.insert("rate_limit".into(), json!(r));
                } else if no_rate_limit {
                    patch.insert("rate_limit".into(), Value::Null);
                }
                http.patch(ep(&id)).json(&patch)
            }
            EndpointsCommand::Delete { id } => http.delete(ep(&id)),
            EndpointsCommand::RotateSecret { id } => {
                http.post(format!("{}/rotate-secret", ep(&id)))
            }
            EndpointsCommand::Deliveries { id, status, limit } => {
                let mut q = vec![("limit", limit.to_string())];
                if let Some(s) = status {
                    q.push(("status", s));
                }
                http.get(format!("{}/deliveries", ep(&id))).query(&q)
            }
            EndpointsCommand::Redrive { id, since } => http
                .post(format!("{}/redrive", ep(&id)))
                .json(&json!({ "since": since })),
        },
        WebhooksCommand::Deliveries { command } => match command {
            DeliveriesCommand::Show { id } => {
                http.get(format!("{base}/v1/webhook-deliveries/{id}"))
            }
            DeliveriesCommand::Redeliver { id } => {
                http.post(format!("{base}/v1/webhook-deliveries/{id}/redeliver"))
            }
        },
    };
    let body = super::api_call(req, &api).await?;
    if !body.is_null() {
        println!("{}", serde_json::to_string_pretty(&body)?);
    }
    Ok(ExitCode::SUCCESS)
}
