//! The goals of issues 6 and 14, judged from the summaries.

use super::Summary;
use serde::Serialize;

/// One goal at one connection count.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub connections: u32,
    pub measured: Option<f64>,
    /// Slowest and fastest round's ratio (`measured` is their median).
    pub spread: Option<(f64, f64)>,
    /// For throughput goals: the ratio from the gateway's CPU per request.
    pub measured_cpu: Option<f64>,
    pub spread_cpu: Option<(f64, f64)>,
    pub target: f64,
    /// `true`: measured ≥ target; `false`: measured ≤ target.
    pub at_least: bool,
}

/// A goal's verdict, with how sure the rounds make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every round met it.
    Met,
    /// The median met it, some round did not.
    MetWithinNoise,
    /// The median missed it, some round met it.
    MissedWithinNoise,
    /// No round met it.
    Missed,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::MetWithinNoise => "yes (not every round)",
            Verdict::MissedWithinNoise => "**no** (some rounds met it)",
            Verdict::Missed => "**no**",
        }
    }

    pub fn met(self) -> bool {
        matches!(self, Verdict::Met | Verdict::MetWithinNoise)
    }
}

impl Goal {
    pub fn met(&self) -> Option<bool> {
        self.verdict().map(Verdict::met)
    }

    pub fn met_by_cpu(&self) -> Option<bool> {
        self.verdict_cpu().map(Verdict::met)
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.judge(self.measured, self.spread)
    }

    pub fn verdict_cpu(&self) -> Option<Verdict> {
        self.judge(self.measured_cpu, self.spread_cpu)
    }

    fn meets(&self, value: f64) -> bool {
        if self.at_least {
            value >= self.target
        } else {
            value <= self.target
        }
    }

    fn judge(&self, value: Option<f64>, spread: Option<(f64, f64)>) -> Option<Verdict> {
        let m = value?;
        let (lo, hi) = spread.unwrap_or((m, m));
        let (all, any) = (
            self.meets(lo) && self.meets(hi),
            self.meets(lo) || self.meets(hi),
        );
        Some(match (self.meets(m), all, any) {
            (true, true, _) => Verdict::Met,
            (true, false, _) => Verdict::MetWithinNoise,
            (false, _, true) => Verdict::MissedWithinNoise,
            (false, _, false) => Verdict::Missed,
        })
    }
}

fn throughput(s: Option<&Summary>, goal: String, conns: u32, target: f64, base: Base) -> Goal {
    let (measured, spread, cpu, spread_cpu) = match (s, base) {
        (None, _) => (None, None, None, None),
        (Some(s), Base::Plain) => (
            s.vs_plain,
            s.spreads.vs_plain,
            s.cpu_vs_plain,
            s.spreads.cpu_vs_plain,
        ),
        (Some(s), Base::JwtLua) => (
            s.vs_jwt_lua,
            s.spreads.vs_jwt_lua,
            s.cpu_vs_jwt_lua,
            s.spreads.cpu_vs_jwt_lua,
        ),
    };
    Goal {
        goal,
        connections: conns,
        measured,
        spread,
        measured_cpu: cpu,
        spread_cpu,
        target,
        at_least: true,
    }
}

fn p99(s: Option<&Summary>, goal: String, conns: u32) -> Goal {
    Goal {
        goal,
        connections: conns,
        measured: s.and_then(|s| s.p99_vs_plain),
        spread: s.and_then(|s| s.spreads.p99_vs_plain),
        measured_cpu: None,
        spread_cpu: None,
        target: 1.10,
        at_least: false,
    }
}

#[derive(Clone, Copy)]
enum Base {
    Plain,
    JwtLua,
}

pub fn goals(summaries: &[Summary], connections: &[u32]) -> Vec<Goal> {
    let find = |case: &str, conns: u32| {
        summaries
            .iter()
            .find(|s| s.case == case && s.connections == conns)
    };
    let mut out = Vec::new();
    for &conns in connections {
        // Issue 14: the Wasm router at least as cheap as jwt_authn + Lua;
        // the native one near plain Envoy and well ahead of jwt_authn + Lua.
        for case in ["router-cached-hs256", "router-cached-rs256"] {
            out.push(throughput(
                find(case, conns),
                format!("{case}: throughput ≥ 1.00 × jwt_authn+Lua (cached)"),
                conns,
                1.00,
                Base::JwtLua,
            ));
        }
        for (case, traffic) in [
            ("router-cached-hs256-c1000", "every cell"),
            ("router-cached-hs256-c1000-on3", "traffic on 3"),
        ] {
            if let Some(s) = find(case, conns) {
                out.push(throughput(
                    Some(s),
                    format!(
                        "router-cached-hs256, 1,000 cells ({traffic}): throughput ≥ 1.00 × jwt_authn+Lua (cached, the same cells)"
                    ),
                    conns,
                    1.00,
                    Base::JwtLua,
                ));
            }
        }
        for case in ["native-cached-hs256", "native-cached-rs256"] {
            let s = find(case, conns);
            if s.is_none() {
                continue;
            }
            out.push(throughput(
                s,
                format!("{case}: throughput ≥ 0.95 × plain"),
                conns,
                0.95,
                Base::Plain,
            ));
            out.push(throughput(
                s,
                format!("{case}: throughput ≥ 1.10 × jwt_authn+Lua (cached)"),
                conns,
                1.10,
                Base::JwtLua,
            ));
            out.push(p99(s, format!("{case}: p99 ≤ 1.10 × plain"), conns));
        }
        // p99 below saturation: the latency a filter adds, not a queue.
        for case in ["native-cached-hs256-paced", "router-cached-hs256-paced"] {
            if let Some(s) = find(case, conns) {
                out.push(p99(
                    Some(s),
                    format!(
                        "{}: p99 ≤ 1.10 × plain, both paced (a third of capacity)",
                        case.trim_end_matches("-paced")
                    ),
                    conns,
                ));
            }
        }
        // Issue 14: the router's cost does not grow with the number of
        // cells: judged on the same traffic (3 busy cells of 1,000), and
        // shown with traffic on every cell next to what plain Envoy itself
        // pays for that spread.
        let plain_spread = find("plain-c1000", conns)
            .and_then(|p| p.cpu_vs_default_cells)
            .map_or(String::new(), |r| format!("; plain Envoy itself {r:.2} ×"));
        for (case, name, traffic) in [
            (
                "router-cached-hs256-c1000-on3",
                "router-cached-hs256",
                "the same traffic: 3 busy cells".to_string(),
            ),
            (
                "native-cached-hs256-c1000-on3",
                "native-cached-hs256",
                "the same traffic: 3 busy cells".to_string(),
            ),
            (
                "router-cached-hs256-c1000",
                "router-cached-hs256",
                format!("traffic on every cell{plain_spread}"),
            ),
            (
                "native-cached-hs256-c1000",
                "native-cached-hs256",
                format!("traffic on every cell{plain_spread}"),
            ),
        ] {
            let Some(s) = find(case, conns) else { continue };
            out.push(Goal {
                goal: format!("{name}: cost at 1,000 cells ≤ 1.05 × at 3 cells ({traffic})"),
                connections: conns,
                measured: s.vs_default_cells,
                spread: s.spreads.vs_default_cells,
                measured_cpu: s.cpu_vs_default_cells,
                spread_cpu: s.spreads.cpu_vs_default_cells,
                target: 1.05,
                at_least: false,
            });
        }
        if find("router-cached-hs256-c1000", conns).is_some() {
            // The same without what plain Envoy pays for sending to 1,000
            // clusters instead of 3: the router's own cost over plain's.
            let own = |router: &str, plain: &str| {
                let (r, p) = (find(router, conns)?, find(plain, conns)?);
                Some(r.gateway_cpu_us - p.gateway_cpu_us)
            };
            let ratio = own("router-cached-hs256-c1000", "plain-c1000")
                .zip(own("router-cached-hs256", "plain"))
                .filter(|(_, at3)| *at3 > 0.0)
                .map(|(at1000, at3)| at1000 / at3);
            out.push(Goal {
                goal: "router-cached-hs256: CPU over plain at 1,000 cells ≤ 1.05 × at 3 cells"
                    .into(),
                connections: conns,
                measured: None,
                spread: None,
                measured_cpu: ratio,
                spread_cpu: None,
                target: 1.05,
                at_least: false,
            });
        }
        // Issue 6.
        for case in ["router-cached-hs256", "router-cached-rs256"] {
            let s = find(case, conns);
            out.push(throughput(
                s,
                format!("{case}: throughput ≥ 0.95 × plain"),
                conns,
                0.95,
                Base::Plain,
            ));
            out.push(throughput(
                s,
                format!("{case}: throughput ≥ 1.10 × jwt_authn+Lua (cached; stretch of issue 14)"),
                conns,
                1.10,
                Base::JwtLua,
            ));
            out.push(p99(s, format!("{case}: p99 ≤ 1.10 × plain"), conns));
        }
        out.push(throughput(
            find("router-unique-rs256", conns),
            "router-unique-rs256: throughput ≥ 0.80 × jwt_authn+Lua (unique RS256)".into(),
            conns,
            0.80,
            Base::JwtLua,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal(measured: f64, spread: (f64, f64), at_least: bool) -> Goal {
        Goal {
            goal: String::new(),
            connections: 16,
            measured: Some(measured),
            spread: Some(spread),
            measured_cpu: None,
            spread_cpu: None,
            target: 1.0,
            at_least,
        }
    }

    #[test]
    fn verdicts_say_whether_every_round_agrees() {
        assert_eq!(goal(1.1, (1.05, 1.2), true).verdict(), Some(Verdict::Met));
        assert_eq!(
            goal(1.02, (0.97, 1.1), true).verdict(),
            Some(Verdict::MetWithinNoise)
        );
        assert_eq!(
            goal(0.98, (0.95, 1.03), true).verdict(),
            Some(Verdict::MissedWithinNoise)
        );
        assert_eq!(
            goal(0.9, (0.85, 0.95), true).verdict(),
            Some(Verdict::Missed)
        );
        assert_eq!(goal(0.9, (0.85, 0.95), false).verdict(), Some(Verdict::Met));
        assert_eq!(goal(0.9, (0.85, 0.95), true).verdict_cpu(), None);
        assert_eq!(goal(1.02, (0.97, 1.1), true).met(), Some(true));
    }
}
