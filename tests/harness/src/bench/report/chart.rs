//! BENCHMARKS.svg: each configuration's throughput ratio to plain Envoy (1)
//! and to jwt_authn + Lua (4), one bar per connection count.
//!
//! SVG has no text layout, so widths are estimated from character counts
//! (generously: `CHAR_W` is wider than the average glyph of common sans-serif
//! fonts). The label column is as wide as its longest line, and labels longer
//! than `LABEL_CHARS` wrap onto more lines; tick labels that would touch go
//! on a lower tier, each tick's line running down to its own label.

use super::Report;
use crate::bench::cases::{Case, Gateway};
use std::fmt::Write as _;

const FONT: f64 = 11.0;
/// Estimated width of one character at `FONT` (DejaVu Sans averages about
/// 0.6 em, Arial and Helvetica less).
const CHAR_W: f64 = 0.62 * FONT;
/// Distance between the baselines of wrapped label lines and tick tiers.
const LINE_H: f64 = 13.0;
/// Row labels wrap past this many characters.
const LABEL_CHARS: usize = 40;
const LEFT: f64 = 10.0;
/// Between the label column and the bars.
const LABEL_GAP: f64 = 14.0;
const BAR_H: f64 = 9.0;
const PANEL_W: f64 = 300.0;
const PANEL_GAP: f64 = 40.0;
/// Where the bars start: below the title, the legend and the panel titles.
const TOP: f64 = 62.0;
const COLORS: [&str; 4] = ["#4477aa", "#ee6677", "#228833", "#ccbb44"];
/// The panels: title, the ratio each bar shows, and the vertical lines
/// (the goal, dashed; and parity).
const PANELS: [(&str, Ratio, [Line; 2]); 2] = [
    (
        "× plain Envoy (1)",
        Ratio::VsPlain,
        [Line::goal(0.95), Line::parity()],
    ),
    (
        "× jwt_authn + Lua (4)",
        Ratio::VsJwtLua,
        // The Wasm router's goal (parity) and the native one's.
        [Line::goal(1.00), Line::goal(1.10)],
    ),
];

#[derive(Clone, Copy)]
enum Ratio {
    VsPlain,
    VsJwtLua,
}

#[derive(Clone, Copy)]
struct Line {
    at: f64,
    goal: bool,
}

impl Line {
    const fn goal(at: f64) -> Line {
        Line { at, goal: true }
    }

    const fn parity() -> Line {
        Line {
            at: 1.0,
            goal: false,
        }
    }
}

impl Report<'_> {
    /// Bars of each case's throughput ratio to (1) and to (4).
    pub fn svg(&self) -> String {
        let conns = &self.info.connections;
        let rows: Vec<(&Case, Vec<String>)> = self
            .cases
            .iter()
            .filter(|c| c.gateway != Gateway::Plain && !matches!(c.group, 6..=8))
            .map(|c| {
                (
                    c,
                    wrap(&format!("({}) {}", c.group, c.label()), LABEL_CHARS),
                )
            })
            .collect();
        let widest = rows
            .iter()
            .flat_map(|(_, lines)| lines.iter().map(|l| text_width(l)))
            .fold(0.0, f64::max);
        let most_lines = rows.iter().map(|(_, l)| l.len()).max().unwrap_or(1);
        let bars_h = BAR_H * conns.len() as f64;
        let row_h = (bars_h + 8.0).max(most_lines as f64 * LINE_H + 6.0);
        let label_w = LEFT + widest + LABEL_GAP;
        let max_ratio = self
            .summaries
            .iter()
            .filter(|s| !matches!(s.group, 6..=8))
            // Medians only: a stalled round's whisker is cut at the panel's
            // edge rather than shrinking every bar.
            .flat_map(|s| [s.vs_plain, s.vs_jwt_lua])
            .flatten()
            .fold(1.2_f64, f64::max)
            .min(5.0)
            * 1.05;
        let scale = PANEL_W / max_ratio;
        let axis = TOP + row_h * rows.len() as f64;
        let ticks: Vec<Vec<(Line, f64, usize)>> = (0..PANELS.len())
            .map(|p| {
                let x0 = label_w + p as f64 * (PANEL_W + PANEL_GAP);
                let lines = PANELS
                    .get(p)
                    .map(|(_, _, l)| l.to_vec())
                    .unwrap_or_default();
                tick_tiers(&lines, x0, scale)
            })
            .collect();
        let tiers = ticks
            .iter()
            .flatten()
            .map(|(_, _, tier)| tier + 1)
            .max()
            .unwrap_or(1);
        let tier_y = |tier: usize| axis + 12.0 + tier as f64 * LINE_H;
        let height = tier_y(tiers - 1) + 10.0;
        let width = label_w + 2.0 * (PANEL_W + PANEL_GAP) + 20.0;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="{FONT}">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="18" font-size="14">cell-router throughput ratios, medians of the rounds; whiskers: lowest to highest round ({})</text>"#,
            self.info.date_utc
        );
        let mut legend_x = LEFT;
        for (i, c) in conns.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{legend_x}" y="28" width="10" height="10" fill="{}"/><text x="{}" y="37">{c} connections</text>"#,
                color(i),
                legend_x + 14.0
            );
            legend_x += 120.0;
        }
        let _ = writeln!(
            s,
            r##"<line x1="{legend_x}" y1="33" x2="{}" y2="33" stroke="#888" stroke-dasharray="4 3"/><text x="{}" y="37">goal</text>"##,
            legend_x + 16.0,
            legend_x + 20.0
        );

        for (p, ((title, ratio, _), ticks)) in PANELS.iter().zip(&ticks).enumerate() {
            let x0 = label_w + p as f64 * (PANEL_W + PANEL_GAP);
            let _ = writeln!(
                s,
                r#"<text x="{x0:.1}" y="{}" font-weight="bold">{title}</text>"#,
                TOP - 6.0
            );
            for (line, x, tier) in ticks {
                let dash = if line.goal {
                    r#" stroke-dasharray="4 3""#
                } else {
                    ""
                };
                let label_y = tier_y(*tier);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#888"{dash}/><text x="{x:.1}" y="{label_y:.1}" text-anchor="middle" fill="#555">{:.2}</text>"##,
                    label_y - FONT,
                    line.at
                );
            }
            for (r, (case, _)) in rows.iter().enumerate() {
                let bars_top = TOP + r as f64 * row_h + (row_h - bars_h) / 2.0;
                for (i, c) in conns.iter().enumerate() {
                    let summary = self
                        .summaries
                        .iter()
                        .find(|s| s.case == case.id && s.connections == *c);
                    let (value, spread) = match (summary, ratio) {
                        (None, _) => (None, None),
                        (Some(s), Ratio::VsPlain) => (s.vs_plain, s.spreads.vs_plain),
                        (Some(s), Ratio::VsJwtLua) => (s.vs_jwt_lua, s.spreads.vs_jwt_lua),
                    };
                    let Some(value) = value else { continue };
                    let by = bars_top + i as f64 * BAR_H;
                    let x = |r: f64| x0 + r.min(max_ratio) * scale;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x0:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} @{c}: {value:.2}</title></rect>"#,
                        (value.min(max_ratio) * scale).max(1.0),
                        BAR_H - 1.0,
                        color(i),
                        case.id,
                    );
                    // The rounds' spread: a whisker from the lowest to the
                    // highest round.
                    let mut right = x(value);
                    if let Some((lo, hi)) = spread.filter(|(lo, hi)| hi > lo) {
                        let mid = by + (BAR_H - 1.0) / 2.0;
                        let _ = writeln!(
                            s,
                            r##"<line x1="{:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="#222" stroke-width="1"/>"##,
                            x(lo),
                            x(hi)
                        );
                        right = right.max(x(hi));
                    }
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" font-size="9" stroke="white" stroke-width="3" paint-order="stroke">{value:.2}</text>"#,
                        right + 3.0,
                        by + BAR_H - 2.0
                    );
                }
            }
        }
        for (r, (_, lines)) in rows.iter().enumerate() {
            let middle = TOP + r as f64 * row_h + row_h / 2.0;
            let first = middle + 0.35 * FONT - (lines.len() as f64 - 1.0) * LINE_H / 2.0;
            for (l, line) in lines.iter().enumerate() {
                let _ = writeln!(
                    s,
                    r#"<text x="{LEFT}" y="{:.1}">{}</text>"#,
                    first + l as f64 * LINE_H,
                    escape(line)
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

fn color(i: usize) -> &'static str {
    COLORS.get(i % COLORS.len()).copied().unwrap_or("#888")
}

/// The estimated width of `text` at `FONT`.
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_W
}

/// Each line's x and tier (0 nearest the axis): lines sorted by position,
/// each label on the first tier where it clears the label before it.
fn tick_tiers(lines: &[Line], x0: f64, scale: f64) -> Vec<(Line, f64, usize)> {
    let mut placed: Vec<(Line, f64, usize)> = lines
        .iter()
        .map(|line| (*line, x0 + line.at * scale, 0))
        .collect();
    placed.sort_by(|a, b| a.1.total_cmp(&b.1));
    // The right edge of the last label on each tier.
    let mut ends: Vec<f64> = Vec::new();
    for (line, x, tier) in &mut placed {
        let half = text_width(&format!("{:.2}", line.at)) / 2.0;
        let free = ends.iter().position(|end| *end + 4.0 <= *x - half);
        *tier = free.unwrap_or(ends.len());
        match ends.get_mut(*tier) {
            Some(end) => *end = *x + half,
            None => ends.push(*x + half),
        }
    }
    placed
}

/// Splits `text` at spaces into lines of at most `max` characters (a longer
/// word stays whole on its own line).
fn wrap(text: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > max {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cases::all_cases;
    use crate::bench::inner::InnerBenches;
    use crate::bench::report::{RunInfo, Summary};

    /// A case's ×(1) and ×(4).
    type Ratios = (Option<f64>, Option<f64>);

    /// ×(1) and ×(4) of the committed BENCHMARKS.md (2026-11-22 run), at 16
    /// and at 64 connections.
    const COMMITTED: [(&str, [Ratios; 2]); 14] = [
        ("plain", [(Some(1.0), None), (Some(1.0), None)]),
        (
            "router-cached-hs256",
            [(Some(0.86), Some(0.99)), (Some(0.83), Some(0.91))],
        ),
        (
            "router-cached-rs256",
            [(Some(0.82), Some(0.92)), (Some(0.82), Some(0.87))],
        ),
        (
            "router-unique-hs256",
            [(Some(0.82), Some(1.02)), (Some(0.81), Some(0.98))],
        ),
        (
            "router-unique-rs256",
            [(Some(0.64), Some(0.87)), (Some(0.64), Some(1.00))],
        ),
        (
            "router-unique-es256",
            [(Some(0.55), Some(0.96)), (Some(0.55), Some(0.95))],
        ),
        (
            "jwtlua-cached-hs256",
            [(Some(0.90), None), (Some(0.87), None)],
        ),
        (
            "jwtlua-cached-rs256",
            [(Some(0.89), None), (Some(0.86), None)],
        ),
        (
            "jwtlua-unique-hs256",
            [(Some(0.81), None), (Some(0.84), None)],
        ),
        (
            "jwtlua-unique-rs256",
            [(Some(0.72), None), (Some(0.68), None)],
        ),
        (
            "jwtlua-unique-es256",
            [(Some(0.61), None), (Some(0.58), None)],
        ),
        (
            "trust-cached-rs256",
            [(Some(0.77), Some(0.87)), (Some(0.76), Some(0.88))],
        ),
        ("probe-empty", [(Some(0.95), None), (Some(0.96), None)]),
        ("probe-calls", [(Some(0.84), None), (Some(0.78), None)]),
    ];

    fn summary(case: &Case, connections: u32, ratios: Ratios) -> Summary {
        Summary {
            case: case.id.clone(),
            label: case.label(),
            group: case.group,
            connections,
            rounds: 3,
            rps: 0.0,
            rps_min: 0.0,
            rps_max: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            vs_plain: ratios.0,
            p99_vs_plain: None,
            vs_jwt_lua: ratios.1,
            cpu_vs_plain: None,
            cpu_vs_jwt_lua: None,
            jwt_lua_case: None,
            vs_default_cells: None,
            cpu_vs_default_cells: None,
            default_cells_case: None,
            spreads: Default::default(),
            gateway_cpu_us: 0.0,
            gateway_cpu_us_min: 0.0,
            gateway_cpu_us_max: 0.0,
            cache_hit_share: None,
            errors: 0,
            empty_runs: 0,
            rejected: 0,
            wraps: 0,
        }
    }

    /// A `<text>` element: x, y, anchored in the middle, content.
    fn texts(svg: &str) -> Vec<(f64, f64, bool, String)> {
        let attr = |tag: &str, name: &str| {
            let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
            let end = tag[start..].find('"')? + start;
            Some(tag[start..end].to_string())
        };
        svg.split("<text ")
            .skip(1)
            .map(|rest| {
                let (tag, after) = rest.split_once('>').unwrap();
                let tag = format!(" {tag}");
                let content = after.split_once("</text>").unwrap().0.to_string();
                (
                    attr(&tag, "x").unwrap().parse().unwrap(),
                    attr(&tag, "y").unwrap().parse().unwrap(),
                    attr(&tag, "text-anchor").as_deref() == Some("middle"),
                    content,
                )
            })
            .collect()
    }

    /// Renders the committed run's chart (set CELL_ROUTER_CHART_OUT=path to
    /// keep the SVG and look at it) and checks, by the chart's own width
    /// estimate, that no row label reaches the bars, that tick labels on one
    /// tier keep apart, and that everything is inside the picture.
    #[test]
    fn labels_clear_the_bars_and_tick_labels_never_overlap() {
        let cases = all_cases();
        let connections = vec![16, 64];
        let mut summaries = Vec::new();
        for (id, by_conns) in COMMITTED {
            let case = cases.iter().find(|c| c.id == id).unwrap();
            for (conns, ratios) in connections.iter().zip(by_conns) {
                summaries.push(summary(case, *conns, ratios));
            }
        }
        let info = RunInfo {
            date_utc: "2026-11-22 10:09 UTC".into(),
            connections,
            ..RunInfo::default()
        };
        let inner = InnerBenches {
            benches: Vec::new(),
        };
        let report = Report {
            info: &info,
            cases: &cases,
            samples: &[],
            summaries: &summaries,
            goals: &[],
            memory: &[],
            propagation: None,
            host_calls: None,
            inner: &inner,
            svg_name: None,
        };
        let svg = report.svg();
        if let Some(path) = std::env::var_os("CELL_ROUTER_CHART_OUT") {
            std::fs::write(path, &svg).unwrap();
        }

        let size = |name: &str| -> f64 {
            let head = svg.split_once('>').unwrap().0;
            let start = head.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            head[start..].split('"').next().unwrap().parse().unwrap()
        };
        let (width, height) = (size("width"), size("height"));
        let first_bar: f64 = svg
            .split("<rect x=\"")
            .skip(1)
            .filter(|r| r.contains("<title>"))
            .map(|r| r.split('"').next().unwrap().parse::<f64>().unwrap())
            .fold(f64::INFINITY, f64::min);
        let texts = texts(&svg);

        let labels: Vec<_> = texts.iter().filter(|t| t.0 == LEFT && t.1 > TOP).collect();
        assert!(labels.len() >= 13, "{labels:?}");
        assert!(
            labels.iter().any(|t| t.3.contains("host calls (probe)")),
            "the longest label is drawn: {labels:?}"
        );
        for (x, _, _, text) in &labels {
            assert!(
                x + text_width(text) + 4.0 <= first_bar,
                "{text:?} runs into the bars at x {first_bar}"
            );
        }

        let mut ticks: Vec<_> = texts.iter().filter(|t| t.2).collect();
        for want in ["0.95", "1.00", "1.10"] {
            assert!(ticks.iter().any(|t| t.3 == want), "no tick {want}");
        }
        ticks.sort_by(|a, b| (a.1, a.0).partial_cmp(&(b.1, b.0)).unwrap());
        for pair in ticks.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.1 == b.1 {
                let gap = (b.0 - text_width(&b.3) / 2.0) - (a.0 + text_width(&a.3) / 2.0);
                assert!(gap >= 2.0, "tick labels {a:?} and {b:?} overlap");
            }
        }

        for (x, y, middle, text) in &texts {
            let right = if *middle {
                x + text_width(text) / 2.0
            } else {
                x + text_width(text)
            };
            assert!(
                right <= width && *y <= height,
                "{text:?} at ({x}, {y}) is outside {width}×{height}"
            );
        }
    }

    #[test]
    fn close_ticks_go_on_separate_tiers() {
        let lines = [Line::goal(0.95), Line::parity(), Line::goal(2.0)];
        let placed = tick_tiers(&lines, 100.0, 250.0);
        let tiers: Vec<(f64, usize)> = placed.iter().map(|(l, _, t)| (l.at, *t)).collect();
        assert_eq!(tiers, vec![(0.95, 0), (1.0, 1), (2.0, 0)]);
    }

    #[test]
    fn wraps_long_labels_at_spaces() {
        assert_eq!(wrap("short label", 40), vec!["short label"]);
        assert_eq!(
            wrap(
                "(0) plain + a Wasm filter making the router's host calls (probe)",
                40
            ),
            vec![
                "(0) plain + a Wasm filter making the",
                "router's host calls (probe)"
            ]
        );
        assert_eq!(
            wrap("averyveryverylongword x", 5),
            vec!["averyveryverylongword", "x"]
        );
    }
}
