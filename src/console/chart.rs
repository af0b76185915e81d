//! Charts drawn on the server as inline SVG (attributes only: the CSP allows no inline style).

use maud::{Markup, html};

/// Width and height of the per-minute chart's drawing area, in SVG units.
const W: f64 = 600.0;
const H: f64 = 140.0;

/// Sagas started (bars) and completed (line) in each of the last 60 minutes, oldest first.
pub fn per_minute(started: &[i64], completed: &[i64]) -> Markup {
    let n = started.len().max(1);
    let max = started
        .iter()
        .chain(completed)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = W / n as f64;
    let y = |v: i64| H - (v as f64 / max as f64) * (H - 4.0);
    let line: String = completed
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{:.1},{:.1}", slot * (i as f64 + 0.5), y(c)))
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H + 18.0) } role="img"
            aria-label="Sagas started and completed per minute over the last hour" {
            line x1="0" y1=(H) x2=(W) y2=(H) class="axis" {}
            @for (i, &s) in started.iter().enumerate() {
                rect class="bar" x=(format!("{:.1}", slot * i as f64 + 1.0)) y=(format!("{:.1}", y(s)))
                    width=(format!("{:.1}", (slot - 2.0).max(1.0)))
                    height=(format!("{:.1}", H - y(s))) {
                    title { (minutes_ago(n - 1 - i)) ": " (s) " started, " (completed.get(i).copied().unwrap_or(0)) " completed" }
                }
            }
            polyline class="done" points=(line) {}
            text x="0" y=(H + 14.0) class="label" { "60 min ago" }
            text x=(W) y=(H + 14.0) class="label end" { "now" }
            text x="4" y="12" class="label" { "max " (max) "/min" }
        }
    }
}

fn minutes_ago(n: usize) -> String {
    match n {
        0 => "this minute".into(),
        1 => "1 minute ago".into(),
        n => format!("{n} minutes ago"),
    }
}
