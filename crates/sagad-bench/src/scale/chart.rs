//! The scale-out chart: sagas/s and end-to-end p99 against the process count, one line per mode,
//! as a self-contained SVG (no script, no external font or stylesheet).

use std::fmt::Write as _;

/// One line of a panel: a mode's points (process count, value).
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub dashed: bool,
    pub points: Vec<(usize, f64)>,
}

/// One panel of the chart.
pub struct Panel<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub series: Vec<Series<'a>>,
}

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 64.0;
const TOP: f64 = 70.0;
const GAP: f64 = 90.0;
const BOTTOM: f64 = 80.0;

/// The chart: `panels` side by side under `title` and `subtitle`, the x axis the process counts
/// on a log-2 scale, `x_label` under each.
pub fn svg(title: &str, subtitle: &str, x_label: &str, panels: &[Panel<'_>]) -> String {
    let width = LEFT + panels.len() as f64 * (PANEL_W + GAP);
    let height = TOP + PANEL_H + BOTTOM;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text><text x="{LEFT}" y="44" fill="#555">{}</text>"##,
        escape(title),
        escape(subtitle)
    );
    let counts: Vec<usize> = {
        let mut c: Vec<usize> = panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let (lo, hi) = match (counts.first(), counts.last()) {
        (Some(&lo), Some(&hi)) => ((lo.max(1) as f64).log2(), (hi.max(1) as f64).log2()),
        _ => (0.0, 1.0),
    };
    for (i, panel) in panels.iter().enumerate() {
        let x0 = LEFT + i as f64 * (PANEL_W + GAP);
        let x = |n: usize| {
            let t = if hi > lo {
                ((n.max(1) as f64).log2() - lo) / (hi - lo)
            } else {
                0.5
            };
            x0 + 20.0 + t * (PANEL_W - 40.0)
        };
        let max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0_f64, f64::max);
        let top = nice_ceiling(max);
        let y = |v: f64| TOP + PANEL_H - v / top * PANEL_H;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            x0,
            TOP - 10.0,
            escape(panel.title)
        );
        // Grid and y ticks: five steps.
        for step in 0..=5 {
            let v = top * step as f64 / 5.0;
            let _ = writeln!(
                out,
                r##"<line x1="{x0:.1}" y1="{yy:.1}" x2="{x2:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end" fill="#333">{}</text>"##,
                number(v),
                yy = y(v),
                x2 = x0 + PANEL_W,
                tx = x0 - 6.0,
                ty = y(v) + 4.0,
            );
        }
        let _ = writeln!(
            out,
            r##"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle" fill="#333">{}</text>"##,
            x0 - 48.0,
            TOP + PANEL_H / 2.0,
            escape(panel.unit)
        );
        for &n in &counts {
            let _ = writeln!(
                out,
                r##"<line x1="{xx:.1}" y1="{y0:.1}" x2="{xx:.1}" y2="{y1:.1}" stroke="#999"/><text x="{xx:.1}" y="{ty:.1}" text-anchor="middle" fill="#333">{n}</text>"##,
                xx = x(n),
                y0 = TOP + PANEL_H,
                y1 = TOP + PANEL_H + 5.0,
                ty = TOP + PANEL_H + 19.0,
            );
        }
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" y1="{yb:.1}" x2="{x2:.1}" y2="{yb:.1}" stroke="#333"/><text x="{xm:.1}" y="{ty:.1}" text-anchor="middle" fill="#333">{}</text>"##,
            escape(x_label),
            yb = TOP + PANEL_H,
            x2 = x0 + PANEL_W,
            xm = x0 + PANEL_W / 2.0,
            ty = TOP + PANEL_H + 38.0,
        );
        for (k, s) in panel.series.iter().enumerate() {
            let points: Vec<String> = s
                .points
                .iter()
                .map(|&(n, v)| format!("{:.1},{:.1}", x(n), y(v)))
                .collect();
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                out,
                r#"<polyline class="series" data-name="{}" points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                escape(s.name),
                points.join(" "),
                escape(s.colour)
            );
            for &(n, v) in &s.points {
                // Labels of the second line below its points, of the first above.
                let dy = if k % 2 == 0 { -8.0 } else { 16.0 };
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{c}" font-size="11">{}</text>"#,
                    x(n),
                    y(v),
                    x(n),
                    y(v) + dy,
                    number(v),
                    c = escape(s.colour)
                );
            }
            // Legend, under the axis label.
            let lx = x0 + k as f64 * 200.0;
            let ly = TOP + PANEL_H + 62.0;
            let _ = writeln!(
                out,
                r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" fill="#333">{}</text>"##,
                lx + 28.0,
                lx + 34.0,
                ly + 4.0,
                escape(s.name),
                c = escape(s.colour)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `v` (1 for nothing to show).
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * magnitude)
}

/// A value as a label: whole numbers from 10 up, one decimal below.
fn number(v: f64) -> String {
    if v >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel<'a>(title: &'a str, all: &[f64], split: &[f64]) -> Panel<'a> {
        let points = |v: &[f64]| [1, 2, 4, 8].into_iter().zip(v.iter().copied()).collect();
        Panel {
            title,
            unit: "sagas/s",
            series: vec![
                Series {
                    name: "all",
                    colour: "#1f77b4",
                    dashed: false,
                    points: points(all),
                },
                Series {
                    name: "api + worker",
                    colour: "#ff7f0e",
                    dashed: true,
                    points: points(split),
                },
            ],
        }
    }

    #[test]
    fn draws_one_line_per_mode_in_each_panel_at_log2_spacing() {
        let out = svg(
            "scale-out <1 db>",
            "50–150 ms",
            "processes",
            &[
                panel(
                    "sagas/s",
                    &[60.0, 120.0, 230.0, 300.0],
                    &[55.0, 110.0, 200.0, 280.0],
                ),
                panel(
                    "p99",
                    &[400.0, 420.0, 500.0, 900.0],
                    &[450.0, 470.0, 520.0, 950.0],
                ),
            ],
        );
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        assert_eq!(out.matches("<polyline").count(), 4);
        assert_eq!(out.matches("data-name=\"api + worker\"").count(), 2);
        // Escaped text, never raw markup from a title.
        assert!(out.contains("scale-out &lt;1 db&gt;"));
        assert!(!out.contains("<1 db>"));
        // Equal steps between 1, 2, 4 and 8 on the first line of the first panel.
        let line = out.lines().find(|l| l.contains("<polyline")).unwrap();
        let xs: Vec<f64> = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(xs.len(), 4);
        let steps: Vec<f64> = xs.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            steps.iter().all(|s| (s - steps[0]).abs() < 0.2 && *s > 0.0),
            "{xs:?}"
        );
        // The top of the sagas/s axis is 500 (300 rounded up), a label the tallest point is under.
        assert!(out.contains(">500</text>"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(300.0), 500.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(2100.0), 2500.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }
}
