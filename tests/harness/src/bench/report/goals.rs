//! The goals of issue 6, judged from the summaries.

use super::Summary;
use serde::Serialize;

/// One goal of issue 6 at one connection count.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub connections: u32,
    pub measured: Option<f64>,
    /// For throughput goals: the ratio from the gateway's CPU per request.
    pub measured_cpu: Option<f64>,
    pub target: f64,
    /// `true`: measured ≥ target; `false`: measured ≤ target.
    pub at_least: bool,
}

impl Goal {
    pub fn met(&self) -> Option<bool> {
        self.judge(self.measured)
    }

    pub fn met_by_cpu(&self) -> Option<bool> {
        self.judge(self.measured_cpu)
    }

    fn judge(&self, value: Option<f64>) -> Option<bool> {
        let m = value?;
        Some(if self.at_least {
            m >= self.target
        } else {
            m <= self.target
        })
    }
}

pub fn goals(summaries: &[Summary], connections: &[u32]) -> Vec<Goal> {
    let find = |case: &str, conns: u32| {
        summaries
            .iter()
            .find(|s| s.case == case && s.connections == conns)
    };
    let mut out = Vec::new();
    for &conns in connections {
        for case in ["router-cached-hs256", "router-cached-rs256"] {
            let s = find(case, conns);
            out.push(Goal {
                goal: format!("{case}: throughput ≥ 0.95 × plain"),
                connections: conns,
                measured: s.and_then(|s| s.vs_plain),
                measured_cpu: s.and_then(|s| s.cpu_vs_plain),
                target: 0.95,
                at_least: true,
            });
            out.push(Goal {
                goal: format!("{case}: throughput ≥ 1.10 × jwt_authn+Lua (cached)"),
                connections: conns,
                measured: s.and_then(|s| s.vs_jwt_lua),
                measured_cpu: s.and_then(|s| s.cpu_vs_jwt_lua),
                target: 1.10,
                at_least: true,
            });
            out.push(Goal {
                goal: format!("{case}: p99 ≤ 1.10 × plain"),
                connections: conns,
                measured: s.and_then(|s| s.p99_vs_plain),
                measured_cpu: None,
                target: 1.10,
                at_least: false,
            });
        }
        // Issue 14: the router's cost does not grow with the number of cells.
        if let Some(s) = find("router-cached-hs256-c1000", conns) {
            out.push(Goal {
                goal: "router-cached-hs256: cost at 1,000 cells ≤ 1.05 × at 3 cells".into(),
                connections: conns,
                measured: s.vs_default_cells,
                measured_cpu: s.cpu_vs_default_cells,
                target: 1.05,
                at_least: false,
            });
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
                measured_cpu: ratio,
                target: 1.05,
                at_least: false,
            });
        }
        out.push(Goal {
            goal: "router-unique-rs256: throughput ≥ 0.80 × jwt_authn+Lua (unique RS256)".into(),
            connections: conns,
            measured: find("router-unique-rs256", conns).and_then(|s| s.vs_jwt_lua),
            measured_cpu: find("router-unique-rs256", conns).and_then(|s| s.cpu_vs_jwt_lua),
            target: 0.80,
            at_least: true,
        });
    }
    out
}
