//! What was measured (one sample per wrk run) and what it adds up to per
//! case and connection count; the machine and the run, for the header.

use crate::bench::cases::Case;
use crate::bench::wrk::WrkResult;
use serde::{Deserialize, Serialize};

/// One wrk run of one case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub case: String,
    pub connections: u32,
    pub round: usize,
    pub wrk: WrkResult,
    /// CPU seconds used during the run by the gateway Envoy, the backend
    /// Envoy and wrk.
    pub gateway_cpu_s: f64,
    pub backend_cpu_s: f64,
    pub client_cpu_s: f64,
    /// The whole machine: busy and total CPU seconds over the run.
    pub machine_busy_s: f64,
    pub machine_total_s: f64,
    /// Token cache answers during the run (cell router: its verified-token
    /// cache; jwt_authn: its JWT cache), when the gateway has one.
    pub cache_hits: Option<i64>,
    pub cache_misses: Option<i64>,
    /// Requests the gateway refused (filter rejections, jwt_authn denials).
    pub rejected: i64,
}

impl Sample {
    pub fn rps(&self) -> f64 {
        self.wrk.requests_per_s()
    }

    pub fn gateway_cpu_us_per_request(&self) -> f64 {
        if self.wrk.requests == 0 {
            return 0.0;
        }
        self.gateway_cpu_s * 1e6 / self.wrk.requests as f64
    }

    /// The share of the machine's CPU used by processes other than the
    /// ones under test: the noise.
    pub fn foreign_cpu_share(&self) -> f64 {
        if self.machine_total_s <= 0.0 {
            return 0.0;
        }
        let ours = self.gateway_cpu_s + self.backend_cpu_s + self.client_cpu_s;
        ((self.machine_busy_s - ours) / self.machine_total_s).clamp(0.0, 1.0)
    }

    pub fn cache_hit_share(&self) -> Option<f64> {
        let (h, m) = (self.cache_hits?, self.cache_misses?);
        (h + m > 0).then(|| h as f64 / (h + m) as f64)
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// One case at one connection count, over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub case: String,
    pub label: String,
    pub group: u8,
    pub connections: u32,
    pub rounds: usize,
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Medians of the per-round ratios (each round's runs are minutes apart
    /// at most, so pairing them cancels slow drifts of the machine).
    pub vs_plain: Option<f64>,
    pub p99_vs_plain: Option<f64>,
    pub vs_jwt_lua: Option<f64>,
    /// The same ratios from the gateway's CPU time per request (baseline's
    /// over this case's): what the throughput ratio would be if the gateway
    /// had its cores to itself; far less sensitive to other load.
    pub cpu_vs_plain: Option<f64>,
    pub cpu_vs_jwt_lua: Option<f64>,
    pub jwt_lua_case: Option<String>,
    /// Cost-vs-cells rows: this case's cost over the same case's at 3
    /// cells, as throughput (3-cell req/s over this one's) and as gateway
    /// CPU per request (this one's over the 3-cell one's); ≤ 1 is as cheap.
    pub vs_default_cells: Option<f64>,
    pub cpu_vs_default_cells: Option<f64>,
    pub default_cells_case: Option<String>,
    /// Slowest and fastest round of each ratio above (of the per-round
    /// ratios the median is taken over).
    pub spreads: Spreads,
    pub gateway_cpu_us: f64,
    pub gateway_cpu_us_min: f64,
    pub gateway_cpu_us_max: f64,
    pub cache_hit_share: Option<f64>,
    pub errors: u64,
    /// Runs that got no answer at all (left out of every figure above).
    pub empty_runs: usize,
    pub rejected: i64,
    pub wraps: u64,
}

/// Lowest and highest per-round value of each ratio of a [`Summary`].
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spreads {
    pub vs_plain: Option<(f64, f64)>,
    pub p99_vs_plain: Option<(f64, f64)>,
    pub vs_jwt_lua: Option<(f64, f64)>,
    pub cpu_vs_plain: Option<(f64, f64)>,
    pub cpu_vs_jwt_lua: Option<(f64, f64)>,
    pub vs_default_cells: Option<(f64, f64)>,
    pub cpu_vs_default_cells: Option<(f64, f64)>,
}

/// A ratio over the rounds: the median of the per-round ratios, and the
/// lowest and highest of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundRatio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl RoundRatio {
    fn of(mut ratios: Vec<f64>) -> Option<RoundRatio> {
        if ratios.is_empty() {
            return None;
        }
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(RoundRatio {
            median: median(&mut ratios),
            min,
            max,
        })
    }

    fn inverse(self) -> RoundRatio {
        RoundRatio {
            median: 1.0 / self.median,
            min: 1.0 / self.max,
            max: 1.0 / self.min,
        }
    }
}

fn split(r: Option<RoundRatio>) -> (Option<f64>, Option<(f64, f64)>) {
    (r.map(|r| r.median), r.map(|r| (r.min, r.max)))
}

fn per_round_ratio(
    samples: &[Sample],
    case: &str,
    base: &str,
    connections: u32,
    value: impl Fn(&Sample) -> f64,
) -> Option<RoundRatio> {
    // A run that got no answer (the machine stalled, wrk failed) has no
    // ratio; it counts as a problem of the run instead.
    let ratios: Vec<f64> = samples
        .iter()
        .filter(|s| s.case == case && s.connections == connections && s.wrk.requests > 0)
        .filter_map(|s| {
            let b = samples.iter().find(|b| {
                b.case == base
                    && b.connections == connections
                    && b.round == s.round
                    && b.wrk.requests > 0
            })?;
            let (sv, bv) = (value(s), value(b));
            (sv > 0.0 && bv > 0.0).then(|| sv / bv)
        })
        .collect();
    RoundRatio::of(ratios)
}

/// Requests per gateway CPU-second.
fn inverse_cpu(s: &Sample) -> f64 {
    let us = s.gateway_cpu_us_per_request();
    if us > 0.0 { 1e6 / us } else { 0.0 }
}

pub fn summarize(cases: &[Case], samples: &[Sample], connections: &[u32]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &conns in connections {
        for case in cases {
            let all_runs = samples
                .iter()
                .filter(|s| s.case == case.id && s.connections == conns);
            let empty_runs = all_runs.clone().filter(|s| s.wrk.requests == 0).count();
            let runs: Vec<&Sample> = all_runs.filter(|s| s.wrk.requests > 0).collect();
            if runs.is_empty() {
                continue;
            }
            let collect =
                |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { runs.iter().map(|s| f(s)).collect() };
            let rps = collect(&|s| s.rps());
            let base4 = case
                .baseline_jwt_lua()
                .filter(|b| *b != case.id && samples.iter().any(|s| &s.case == b));
            let mut hits: Vec<f64> = runs.iter().filter_map(|s| s.cache_hit_share()).collect();
            let base3 = case
                .at_default_cells()
                .filter(|b| samples.iter().any(|s| &s.case == b));
            let ratio = |base: Option<&str>, value: &dyn Fn(&Sample) -> f64| {
                split(base.and_then(|b| per_round_ratio(samples, &case.id, b, conns, value)))
            };
            // The paced rows are compared with plain Envoy at the same pace.
            let plain = if case.think_ms > 0 {
                case.plain_twin()
            } else {
                "plain".to_string()
            };
            let plain = Some(plain.as_str());
            let (vs_plain, vs_plain_spread) = ratio(plain, &Sample::rps);
            let (p99_vs_plain, p99_spread) = ratio(plain, &|s: &Sample| s.wrk.p99_us as f64);
            let (vs_jwt_lua, vs_jwt_lua_spread) = ratio(base4.as_deref(), &Sample::rps);
            let (cpu_vs_plain, cpu_vs_plain_spread) = ratio(plain, &inverse_cpu);
            let (cpu_vs_jwt_lua, cpu_vs_jwt_lua_spread) = ratio(base4.as_deref(), &inverse_cpu);
            let (vs_default_cells, vs_default_cells_spread) = split(
                base3
                    .as_deref()
                    .and_then(|b| per_round_ratio(samples, &case.id, b, conns, Sample::rps))
                    .filter(|r| r.min > 0.0)
                    .map(RoundRatio::inverse),
            );
            let (cpu_vs_default_cells, cpu_vs_default_cells_spread) =
                ratio(base3.as_deref(), &Sample::gateway_cpu_us_per_request);
            let cpu = collect(&Sample::gateway_cpu_us_per_request);
            out.push(Summary {
                case: case.id.clone(),
                label: case.label(),
                group: case.group,
                connections: conns,
                rounds: runs.len(),
                rps: median(&mut rps.clone()),
                rps_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
                rps_max: rps.iter().copied().fold(0.0, f64::max),
                p50_ms: median(&mut collect(&|s| s.wrk.p50_us as f64 / 1000.0)),
                p99_ms: median(&mut collect(&|s| s.wrk.p99_us as f64 / 1000.0)),
                vs_plain,
                p99_vs_plain,
                vs_jwt_lua,
                cpu_vs_plain,
                cpu_vs_jwt_lua,
                jwt_lua_case: base4,
                vs_default_cells,
                cpu_vs_default_cells,
                default_cells_case: base3,
                spreads: Spreads {
                    vs_plain: vs_plain_spread,
                    p99_vs_plain: p99_spread,
                    vs_jwt_lua: vs_jwt_lua_spread,
                    cpu_vs_plain: cpu_vs_plain_spread,
                    cpu_vs_jwt_lua: cpu_vs_jwt_lua_spread,
                    vs_default_cells: vs_default_cells_spread,
                    cpu_vs_default_cells: cpu_vs_default_cells_spread,
                },
                gateway_cpu_us: median(&mut cpu.clone()),
                gateway_cpu_us_min: cpu.iter().copied().fold(f64::INFINITY, f64::min),
                gateway_cpu_us_max: cpu.iter().copied().fold(0.0, f64::max),
                cache_hit_share: (!hits.is_empty()).then(|| median(&mut hits)),
                errors: runs.iter().map(|s| s.wrk.errors()).sum(),
                empty_runs,
                rejected: runs.iter().map(|s| s.rejected).sum(),
                wraps: runs.iter().map(|s| s.wrk.wraps).sum(),
            });
        }
    }
    out
}

/// Resident memory of each gateway at the end of the load rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub gateway: String,
    pub rss_bytes: u64,
    /// Wasm VMs Envoy reports (`wasm.*active` gauges), if any.
    pub wasm_vms: Option<i64>,
}

/// About the machine and the run, for the header.
#[derive(Clone, Debug, Serialize, Default)]
pub struct RunInfo {
    pub date_utc: String,
    pub commit: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub envoy_version: String,
    pub wrk_version: String,
    pub command: String,
    pub rounds: usize,
    pub duration_s: f64,
    pub connections: Vec<u32>,
    pub wrk_threads: u32,
    pub concurrency: u32,
    pub backend_concurrency: u32,
    pub tenants: usize,
    pub load_before: String,
    /// Where the processes ran (`None`: not pinned).
    pub pinning: Option<String>,
    pub load_after: String,
    pub minted: usize,
    pub mint_seconds: f64,
    pub routing_checked: usize,
    pub total_seconds: f64,
}
