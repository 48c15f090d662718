//! The per-call cost table: the probe repeating one host call N times per
//! request (N = 1, 10, 100; group 7), and each call's cost as the slope of
//! the gateway's CPU per request over N (least squares), so what every
//! request costs anyway (Envoy, the Wasm context, the probe reading its
//! header) drops out.

use super::{Report, Sample};
use crate::bench::cases::{Case, TABLE_CALLS};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// One host call's cost in Envoy's V8.
#[derive(Clone, Debug, Serialize)]
pub struct CallCost {
    pub call: &'static str,
    pub what: &'static str,
    /// Least-squares slope over every run of every N, ns per call.
    pub ns: f64,
    /// Lowest and highest slope fitted to one round's runs alone.
    pub ns_min: f64,
    pub ns_max: f64,
    /// Runs the fit used.
    pub runs: usize,
}

/// Least-squares slope of y over x; `None` with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Every call's slope, from the table's runs at `connections`.
pub fn call_costs(cases: &[Case], samples: &[Sample], connections: u32) -> Vec<CallCost> {
    let mut out = Vec::new();
    for (call, what) in TABLE_CALLS {
        let points: Vec<(usize, f64, f64)> = samples
            .iter()
            .filter(|s| s.connections == connections && s.wrk.requests > 0)
            .filter_map(|s| {
                let case = cases.iter().find(|c| c.id == s.case)?;
                let (c, n) = case.probe?;
                (c == call && n > 0)
                    .then(|| (s.round, f64::from(n), s.gateway_cpu_us_per_request()))
            })
            .collect();
        let all: Vec<(f64, f64)> = points.iter().map(|p| (p.1, p.2)).collect();
        let Some(us) = slope(&all) else { continue };
        let rounds: BTreeSet<usize> = points.iter().map(|p| p.0).collect();
        let per_round: Vec<f64> = rounds
            .iter()
            .filter_map(|r| {
                let pts: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.0 == *r)
                    .map(|p| (p.1, p.2))
                    .collect();
                slope(&pts)
            })
            .collect();
        out.push(CallCost {
            call,
            what,
            ns: us * 1000.0,
            ns_min: per_round.iter().copied().fold(f64::INFINITY, f64::min) * 1000.0,
            ns_max: per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max) * 1000.0,
            runs: all.len(),
        });
    }
    out
}

impl Report<'_> {
    /// The per-call table, with what the router's calls add up to.
    pub(super) fn call_table(&self, w: &mut String) {
        let Some(conns) = self.info.connections.first().copied() else {
            return;
        };
        let costs = call_costs(self.cases, self.samples, conns);
        if costs.is_empty() {
            return;
        }
        let base = self
            .summaries
            .iter()
            .find(|s| s.case == "probe-table-none" && s.connections == conns);
        let _ = writeln!(w, "## What each host call costs (Envoy's V8)\n");
        let _ = writeln!(
            w,
            "The probe filter (`envoy/bench/probe`) in front of plain Envoy repeats one host \
             call N times per request (N = 1, 10, 100; the request's `x-probe-calls` header \
             says which), at {conns} connections. *ns per call*: the least-squares slope of \
             the gateway's CPU per request over N, all rounds' runs together; *rounds*: the \
             lowest and highest slope fitted to one round alone. Everything else a request \
             costs (Envoy, the Wasm context, the probe reading its header{}) is the same \
             for every N and drops out. *router ×*: how often the router makes the call for \
             a cached token (counted in the wasmtime host); *router µs*: that many calls at \
             this cost.\n",
            base.map_or(String::new(), |b| format!(
                ": {:.1} µs per request in all",
                b.gateway_cpu_us
            ))
        );
        let _ = writeln!(
            w,
            "| host call | ns per call | rounds | runs | router × | router µs |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
        let mut router_total = 0.0;
        for c in &costs {
            let per_request = self
                .host_calls
                .map(|h| h.calls_of_probe_name(c.call))
                .unwrap_or(0);
            let router_us = per_request as f64 * c.ns / 1000.0;
            router_total += router_us;
            let _ = writeln!(
                w,
                "| `{}` — {} | {:.0} | {:.0}–{:.0} | {} | {} | {} |",
                c.call,
                c.what,
                c.ns,
                c.ns_min,
                c.ns_max,
                c.runs,
                if per_request > 0 {
                    per_request.to_string()
                } else {
                    "–".into()
                },
                if per_request > 0 {
                    format!("{router_us:.2}")
                } else {
                    "–".into()
                }
            );
        }
        let _ = writeln!(w);
        if self.host_calls.is_some() {
            let _ = writeln!(
                w,
                "The router's host calls for a cached token add up to about {router_total:.1} µs \
                 per request at these costs.\n"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_least_squares() {
        let points = [(1.0, 10.5), (10.0, 12.0), (100.0, 30.0)];
        let s = slope(&points).unwrap();
        // Sxy / Sxx = 1188 / 5994 (by hand).
        assert!((s - 0.198_198).abs() < 1e-5, "{s}");
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(5.0, 2.0), (5.0, 3.0)]), None);
    }
}
