//! `sagad bookings list|show`: the bookings read API from the command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{ApiArgs, api_call};

#[derive(Subcommand, Debug)]
pub enum BookingsCommand {
    /// List bookings, newest first.
    List {
        #[arg(long)]
        listing: Option<String>,
        #[arg(long)]
        guest: Option<String>,
        /// requested, held, awaiting_authentication, authorized, paid, confirmed, cancelling,
        /// cancelled, failed or needs_attention.
        #[arg(long)]
        status: Option<String>,
        /// Only stays overlapping [from, to) (YYYY-MM-DD; either may be left open).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after the page that printed this cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one booking: its sagas, payments and history.
    Show {
        id: String,
        /// Show the booking as its events left it then: an RFC 3339 timestamp
        /// (2026-12-03T10:15:00Z) or an event version (4).
        #[arg(long)]
        as_of: Option<String>,
    },
}

pub async fn run(api: ApiArgs, command: BookingsCommand) -> anyhow::Result<ExitCode> {
    let base = api.api_url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    match command {
        BookingsCommand::List {
            listing,
            guest,
            status,
            from,
            to,
            limit,
            cursor,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            for (name, value) in [
                ("listing_id", listing),
                ("guest_id", guest),
                ("status", status),
                ("from", from),
                ("to", to),
                ("cursor", cursor),
            ] {
                if let Some(v) = value {
                    q.push((name, v));
                }
            }
            let body = api_call(http.get(format!("{base}/v1/bookings")).query(&q), &api).await?;
            print_list(&body);
        }
        BookingsCommand::Show { id, as_of } => {
            let mut req = http.get(format!("{base}/v1/bookings/{id}"));
            if let Some(t) = &as_of {
                req = req.query(&[("as_of", t)]);
            }
            let body = api_call(req, &api).await?;
            print_booking(&body);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or("-").to_owned()
}

fn print_list(v: &serde_json::Value) {
    println!(
        "{:<38} {:<16} {:<16} {:<23} {:>10} {:<12} CODE",
        "ID", "LISTING", "GUEST", "STAY", "AMOUNT", "STATUS"
    );
    for b in v["bookings"].as_array().into_iter().flatten() {
        println!(
            "{:<38} {:<16} {:<16} {:<23} {:>10} {:<12} {}",
            text(b, "saga_id"),
            text(b, "listing_id"),
            text(b, "guest_id"),
            format!("{}..{}", text(b, "check_in"), text(b, "check_out")),
            format!("{} {}", b["amount"], text(b, "currency")),
            text(b, "status"),
            b["confirmation_code"].as_str().unwrap_or("")
        );
    }
    if let Some(c) = v["next_cursor"].as_str() {
        println!("(more: --cursor {c})");
    }
}

fn print_booking(b: &serde_json::Value) {
    println!("booking   {}", text(b, "saga_id"));
    if let Some(p) = b.get("as_of").filter(|p| !p.is_null()) {
        println!("as of     v{} {}", p["version"], text(p, "recorded_at"));
    }
    println!("status    {}", text(b, "status"));
    println!(
        "stay      {} {}..{} for {}",
        text(b, "listing_id"),
        text(b, "check_in"),
        text(b, "check_out"),
        text(b, "guest_id")
    );
    println!("amount    {} {}", b["amount"], text(b, "currency"));
    println!("code      {}", text(b, "confirmation_code"));
    println!("policy    {}", text(b, "cancellation_policy"));
    if let Some(r) = b["cancel_reason"].as_str() {
        println!("cancelled {r}");
    }
    let c = &b["cancellation"];
    if c.is_object() {
        println!("by        {} ({})", text(c, "by"), text(c, "actor"));
        let r = &c["refund"];
        if r.is_object() {
            println!("refund    {} ({})", r["amount"], text(r, "rule"));
        }
    }
    let p = &b["payments"];
    println!(
        "payments  {} authorized {}, captured {}, refunded {}{}",
        p["payment_intent_id"].as_str().unwrap_or("-"),
        p["authorized"],
        p["captured"],
        p["refunded"],
        if p["voided"] == true { ", voided" } else { "" }
    );
    for s in b["sagas"].as_array().into_iter().flatten() {
        println!(
            "saga      {} ({} v{}) {}",
            text(s, "id"),
            text(s, "saga"),
            s["version"],
            text(s, "status")
        );
    }
    println!("\nhistory:");
    for e in b["history"].as_array().into_iter().flatten() {
        println!(
            "  v{:<3} {}  {:<22} {}",
            e["version"],
            e["recorded_at"].as_str().unwrap_or(""),
            e["event_type"].as_str().unwrap_or(""),
            e["payload"]
        );
    }
}
