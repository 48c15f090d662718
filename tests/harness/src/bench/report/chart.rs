//! BENCHMARKS.svg: each configuration's throughput ratio to plain Envoy (1)
//! and to jwt_authn + Lua (4), one bar per connection count.

use super::Report;
use crate::bench::cases::{Case, Gateway};
use std::fmt::Write as _;

impl Report<'_> {
    /// Bars of each case's throughput ratio to (1) and to (4).
    pub fn svg(&self) -> String {
        let conns = &self.info.connections;
        let rows: Vec<&Case> = self
            .cases
            .iter()
            .filter(|c| c.gateway != Gateway::Plain)
            .collect();
        let bar_h = 9.0;
        let row_h = bar_h * conns.len() as f64 + 8.0;
        let label_w = 300.0;
        let panel_w = 300.0;
        let top = 50.0;
        let height = top + row_h * rows.len() as f64 + 40.0;
        let width = label_w + 2.0 * (panel_w + 40.0) + 20.0;
        let max_ratio = self
            .summaries
            .iter()
            .flat_map(|s| [s.vs_plain, s.vs_jwt_lua])
            .flatten()
            .fold(1.2_f64, f64::max)
            .min(5.0);
        let colors = ["#4477aa", "#ee6677", "#228833", "#ccbb44"];
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="18" font-size="14">cell-router throughput ratios ({})</text>"#,
            self.info.date_utc
        );
        for (i, c) in conns.iter().enumerate() {
            let x = 10.0 + i as f64 * 120.0;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="28" width="10" height="10" fill="{}"/><text x="{}" y="37">{c} connections</text>"#,
                colors[i % colors.len()],
                x + 14.0
            );
        }
        for (p, (title, lines)) in [
            ("× plain Envoy (1)", [0.95, 1.0]),
            ("× jwt_authn + Lua (4)", [1.10, 1.0]),
        ]
        .iter()
        .enumerate()
        {
            let x0 = label_w + p as f64 * (panel_w + 40.0);
            let scale = panel_w / max_ratio;
            let _ = writeln!(
                s,
                r#"<text x="{x0}" y="{}" font-weight="bold">{title}</text>"#,
                top - 6.0
            );
            for line in lines {
                let x = x0 + line * scale;
                let dash = if *line == 1.0 {
                    ""
                } else {
                    r#" stroke-dasharray="4 3""#
                };
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#888"{dash}/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{line:.2}</text>"##,
                    height - 30.0,
                    height - 18.0
                );
            }
            for (r, case) in rows.iter().enumerate() {
                let y = top + r as f64 * row_h;
                for (i, c) in conns.iter().enumerate() {
                    let summary = self
                        .summaries
                        .iter()
                        .find(|s| s.case == case.id && s.connections == *c);
                    let ratio =
                        summary.and_then(|s| if p == 0 { s.vs_plain } else { s.vs_jwt_lua });
                    let Some(ratio) = ratio else { continue };
                    let by = y + i as f64 * bar_h;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x0}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} @{c}: {ratio:.2}</title></rect><text x="{:.1}" y="{:.1}" font-size="9">{ratio:.2}</text>"#,
                        (ratio.min(max_ratio) * scale).max(1.0),
                        bar_h - 1.0,
                        colors[i % colors.len()],
                        case.id,
                        x0 + (ratio.min(max_ratio) * scale) + 3.0,
                        by + bar_h - 2.0
                    );
                }
            }
        }
        for (r, case) in rows.iter().enumerate() {
            let y = top + r as f64 * row_h + row_h / 2.0;
            let _ = writeln!(
                s,
                r#"<text x="10" y="{y:.1}">({}) {}</text>"#,
                case.group,
                escape(&case.label())
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
