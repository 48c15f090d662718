//! Samples, their summaries, the goals, and the BENCHMARKS.md / SVG output.

use super::anatomy::HostCalls;
use super::cases::{Case, Gateway};
use super::inner::InnerBenches;
use super::propagation::PropagationReport;
use super::wrk::WrkResult;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

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
    pub gateway_cpu_us: f64,
    pub cache_hit_share: Option<f64>,
    pub errors: u64,
    pub rejected: i64,
    pub wraps: u64,
}

fn per_round_ratio(
    samples: &[Sample],
    case: &str,
    base: &str,
    connections: u32,
    value: impl Fn(&Sample) -> f64,
) -> Option<f64> {
    let mut ratios: Vec<f64> = samples
        .iter()
        .filter(|s| s.case == case && s.connections == connections)
        .filter_map(|s| {
            let b = samples
                .iter()
                .find(|b| b.case == base && b.connections == connections && b.round == s.round)?;
            let bv = value(b);
            (bv > 0.0).then(|| value(s) / bv)
        })
        .collect();
    (!ratios.is_empty()).then(|| median(&mut ratios))
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
            let runs: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.case == case.id && s.connections == conns)
                .collect();
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
                vs_plain: per_round_ratio(samples, &case.id, "plain", conns, Sample::rps),
                p99_vs_plain: per_round_ratio(samples, &case.id, "plain", conns, |s| {
                    s.wrk.p99_us as f64
                }),
                vs_jwt_lua: base4
                    .as_deref()
                    .and_then(|b| per_round_ratio(samples, &case.id, b, conns, Sample::rps)),
                cpu_vs_plain: per_round_ratio(samples, &case.id, "plain", conns, inverse_cpu),
                cpu_vs_jwt_lua: base4
                    .as_deref()
                    .and_then(|b| per_round_ratio(samples, &case.id, b, conns, inverse_cpu)),
                jwt_lua_case: base4,
                gateway_cpu_us: median(&mut collect(&Sample::gateway_cpu_us_per_request)),
                cache_hit_share: (!hits.is_empty()).then(|| median(&mut hits)),
                errors: runs.iter().map(|s| s.wrk.errors()).sum(),
                rejected: runs.iter().map(|s| s.rejected).sum(),
                wraps: runs.iter().map(|s| s.wrk.wraps).sum(),
            });
        }
    }
    out
}

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
    pub load_after: String,
    pub minted: usize,
    pub mint_seconds: f64,
    pub routing_checked: usize,
    pub total_seconds: f64,
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into())
}

fn fmt_rps(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Everything BENCHMARKS.md shows.
pub struct Report<'a> {
    pub info: &'a RunInfo,
    pub cases: &'a [Case],
    pub samples: &'a [Sample],
    pub summaries: &'a [Summary],
    pub goals: &'a [Goal],
    pub memory: &'a [Memory],
    pub propagation: Option<&'a PropagationReport>,
    pub host_calls: Option<&'a HostCalls>,
    pub inner: &'a InnerBenches,
    pub svg_name: Option<&'a str>,
}

impl Report<'_> {
    pub fn markdown(&self) -> String {
        let info = self.info;
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# Benchmarks\n");
        let _ = writeln!(
            w,
            "Written by `make bench` (`tests/harness/src/bin/cell-router-bench.rs`); do not edit by \
             hand, run it again. Method and caveats at the end.\n"
        );
        let _ = writeln!(
            w,
            "- **Date:** {} · commit `{}`",
            info.date_utc, info.commit
        );
        let _ = writeln!(
            w,
            "- **Machine:** {}, {} cores, {:.0} GiB RAM, Linux {}",
            info.cpu, info.cores, info.memory_gib, info.kernel
        );
        let _ = writeln!(
            w,
            "- **Envoy:** {} — every gateway with `--concurrency {}`; backends: one Envoy \
             (`--concurrency {}`) answering from `direct_response`",
            info.envoy_version, info.concurrency, info.backend_concurrency
        );
        let _ = writeln!(
            w,
            "- **Load:** {} with {} threads, {} connections, {:.0} s per run, {} rounds \
             (every case once per round, order rotated), all on 127.0.0.1; {} tenants",
            info.wrk_version,
            info.wrk_threads,
            info.connections
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            info.duration_s,
            info.rounds,
            info.tenants
        );
        let _ = writeln!(w, "- **Command:** `{}`", info.command);
        let mut foreign: Vec<f64> = self.samples.iter().map(Sample::foreign_cpu_share).collect();
        let foreign_median = median(&mut foreign);
        let _ = writeln!(
            w,
            "- **Noise:** other processes used {:.0}–{:.0} % of the machine's CPU during the \
             runs (median {:.0} %); load average {} before, {} after. Total time {:.0} s \
             ({} tokens minted in {:.0} s; routing of {} requests checked before measuring).\n",
            foreign.first().copied().unwrap_or(0.0) * 100.0,
            foreign.last().copied().unwrap_or(0.0) * 100.0,
            foreign_median * 100.0,
            info.load_before,
            info.load_after,
            info.total_seconds,
            info.minted,
            info.mint_seconds,
            info.routing_checked
        );

        let _ = writeln!(w, "## Goals (issue 6)\n");
        let _ = writeln!(
            w,
            "*measured*: the ratio of throughput (or p99) as wrk saw it, the goal's own \
             terms. *by gateway CPU*: the same throughput ratio computed from the gateway \
             Envoy's CPU time per request, i.e. with the client, the backend and the rest \
             of the machine taken out (see Method).\n"
        );
        let _ = writeln!(
            w,
            "| goal | connections | measured | met | by gateway CPU | met |"
        );
        let _ = writeln!(w, "|---|---:|---:|---|---:|---|");
        let verdict = |met: Option<bool>| match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        for g in self.goals {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                g.goal,
                g.connections,
                fmt_ratio(g.measured),
                verdict(g.met()),
                fmt_ratio(g.measured_cpu),
                verdict(g.met_by_cpu()),
            );
        }
        let _ = writeln!(w);

        let _ = writeln!(w, "## Throughput and latency\n");
        let _ = writeln!(
            w,
            "Medians over the rounds. Ratios are medians of per-round ratios: ×(1) to plain \
             Envoy, ×(4) to jwt_authn + Lua with the same kind of tokens and algorithm. \
             *spread*: slowest–fastest round. *gw CPU*: the gateway Envoy's CPU time per \
             request (all its threads); *CPU ×(1)*, *CPU ×(4)*: the ratios computed \
             from it (requests per gateway CPU-second). *cache*: share of requests answered by the \
             verified-token cache (cell router) or jwt_authn's JWT cache.\n"
        );
        for conns in &info.connections {
            let _ = writeln!(w, "### {conns} connections\n");
            let _ = writeln!(
                w,
                "| # | configuration | req/s | spread | p50 ms | p99 ms | ×(1) | ×(4) | p99 ×(1) | gw CPU µs/req | CPU ×(1) | CPU ×(4) | cache | errors |"
            );
            let _ = writeln!(
                w,
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for s in self.summaries.iter().filter(|s| s.connections == *conns) {
                let cache = s
                    .cache_hit_share
                    .map(|h| format!("{:.0} %", h * 100.0))
                    .unwrap_or_else(|| "–".into());
                let mut errors = (s.errors + s.rejected.max(0) as u64).to_string();
                if s.wraps > 0 && s.case.starts_with("router-unique") {
                    errors.push_str(&format!(" (pool went round {}×)", s.wraps));
                }
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {}–{} | {:.2} | {:.2} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                    s.group,
                    s.label,
                    fmt_rps(s.rps),
                    fmt_rps(s.rps_min),
                    fmt_rps(s.rps_max),
                    s.p50_ms,
                    s.p99_ms,
                    fmt_ratio(s.vs_plain),
                    fmt_ratio(s.vs_jwt_lua),
                    fmt_ratio(s.p99_vs_plain),
                    s.gateway_cpu_us,
                    fmt_ratio(s.cpu_vs_plain),
                    fmt_ratio(s.cpu_vs_jwt_lua),
                    cache,
                    errors
                );
            }
            let _ = writeln!(w);
        }
        if let Some(svg) = self.svg_name {
            let _ = writeln!(w, "![Throughput ratios]({svg})\n");
        }

        self.anatomy(w);

        let _ = writeln!(w, "## Memory\n");
        let plain = self
            .memory
            .iter()
            .find(|m| m.gateway == Gateway::Plain.name())
            .map(|m| m.rss_bytes);
        let _ = writeln!(
            w,
            "Resident memory of each gateway Envoy after its load runs. Envoy 1.40 exposes no \
             per-VM memory figure (its Wasm stats only count VMs), so the Wasm cost is \
             estimated as the RSS above the plain gateway divided by the VMs Envoy's \
             `wasm.envoy.wasm.runtime.v8.active` gauge counts (the workers', the main \
             thread's, and the base VM they are cloned from). It includes the V8 engine \
             itself, the compiled module and each VM's linear memory (snapshot, token cache).\n"
        );
        let _ = writeln!(
            w,
            "| gateway | RSS MiB | above plain MiB | Wasm VMs | per VM MiB |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for m in self.memory {
            let above = plain.map(|p| (m.rss_bytes as f64 - p as f64) / MIB);
            let per_vm = match (above, m.wasm_vms) {
                (Some(a), Some(n)) if n > 0 => format!("{:.1}", a / n as f64),
                _ => "–".into(),
            };
            let _ = writeln!(
                w,
                "| {} | {:.1} | {} | {} | {} |",
                m.gateway,
                m.rss_bytes as f64 / MIB,
                above
                    .map(|a| format!("{a:.1}"))
                    .unwrap_or_else(|| "–".into()),
                m.wasm_vms
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "–".into()),
                per_vm
            );
        }
        let _ = writeln!(w);

        let _ = writeln!(w, "## From inside\n");
        match self.propagation {
            Some(p) => p.markdown(w),
            None => {
                let _ = writeln!(w, "Snapshot propagation: not measured in this run.\n");
            }
        }
        self.inner.markdown(w);

        let _ = writeln!(w, "## Method\n");
        let _ = writeln!(w, "{}", METHOD.trim());
        let _ = writeln!(w);

        let _ = writeln!(w, "## Every run\n");
        let _ = writeln!(
            w,
            "<details><summary>{} runs</summary>\n",
            self.samples.len()
        );
        let _ = writeln!(
            w,
            "| round | connections | case | req/s | p50 ms | p99 ms | gw CPU µs/req | other CPU % | cache hits | errors |"
        );
        let _ = writeln!(w, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for s in self.samples {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} |",
                s.round + 1,
                s.connections,
                s.case,
                fmt_rps(s.rps()),
                s.wrk.p50_us as f64 / 1000.0,
                s.wrk.p99_us as f64 / 1000.0,
                s.gateway_cpu_us_per_request(),
                s.foreign_cpu_share() * 100.0,
                s.cache_hit_share()
                    .map(|h| format!("{:.1} %", h * 100.0))
                    .unwrap_or_else(|| "–".into()),
                s.wrk.errors() + s.rejected.max(0) as u64
            );
        }
        let _ = writeln!(w, "\n</details>");
        md
    }

    /// "Where the time goes": plain → probe doing nothing → probe making the
    /// router's host calls → the router, by gateway CPU per request.
    fn anatomy(&self, w: &mut String) {
        let Some(calls) = self.host_calls else { return };
        let find = |case: &str, conns: u32| {
            self.summaries
                .iter()
                .find(|s| s.case == case && s.connections == conns)
                .map(|s| s.gateway_cpu_us)
        };
        let _ = writeln!(w, "## Where the time goes (cached tokens)\n");
        let _ = writeln!(
            w,
            "The gateway's CPU time per request (medians over the rounds) for plain Envoy, \
             plain + a Wasm filter that does nothing (`envoy/bench/probe`), plain + that \
             filter making exactly the host calls the router makes for a cached token, and \
             the router with cached HS256 tokens. The router's calls per request, counted by \
             the wasmtime host running the real `.wasm`: {}. Its time inside the VM per \
             request there: {:.1} µs (wasmtime; V8 in Envoy is of the same order).\n",
            calls.describe(),
            calls.vm_us
        );
        let missing = calls.not_replicated();
        if !missing.is_empty() {
            let _ = writeln!(
                w,
                "(The probe does not make: {}; their cost counts as the router's own.)\n",
                missing.join(", ")
            );
        }
        let _ = writeln!(
            w,
            "| connections | plain µs | + empty Wasm filter | + the router's host calls | router (cached HS256) | Wasm machinery | host calls | router's own work |"
        );
        let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut ceilings = Vec::new();
        for conns in &self.info.connections {
            let (Some(plain), Some(empty), Some(with_calls), Some(router)) = (
                find("plain", *conns),
                find("probe-empty", *conns),
                find("probe-calls", *conns),
                find("router-cached-hs256", *conns),
            ) else {
                continue;
            };
            let _ = writeln!(
                w,
                "| {conns} | {plain:.0} | {empty:.0} | {with_calls:.0} | {router:.0} | {:+.0} | {:+.0} | {:+.0} |",
                empty - plain,
                with_calls - empty,
                router - with_calls
            );
            ceilings.push((*conns, plain / empty, plain / with_calls));
        }
        let _ = writeln!(w);
        for (conns, any_filter, with_calls) in ceilings {
            let _ = writeln!(
                w,
                "- At {conns} connections, by gateway CPU, any Wasm filter in this Envoy reaches at \
                 most {any_filter:.2}× plain Envoy, and one making the router's host calls at \
                 most {with_calls:.2}× (the goal for cached tokens is 0.95×)."
            );
        }
        let _ = writeln!(w);
    }

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

const MIB: f64 = 1024.0 * 1024.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const METHOD: &str = r#"
- **What runs.** Eight gateway Envoys from `envoy/bench/` (the same binary, each with
  its own process and the same listener, routes and clusters; they differ only in
  their HTTP filters), one backend Envoy whose three listeners (one per cell) answer
  from `direct_response` and echo the routing headers, and the `cellmap serve`
  sidecar. Only the gateway being measured gets load; the others sit idle. Every
  gateway's routing is checked first: each tenant's request (with a spoofed
  `x-cell-id`) must reach the cell `cellmap` resolves for it.
- **Configurations.** (1) `plain.yaml`: routes on the `x-cell-id` the client sends.
  (2) `cell-router.yaml` with 1,000 tokens, one per tenant, rotated (cache hits).
  (3) the same configuration in a separate Envoy fed only unique tokens (a `jti`
  numbers them; a new slice of the pool for every run, so no token repeats).
  (4) `jwt-lua.yaml`: `jwt_authn` (same keys, `claim_to_headers`, `forward: true`
  like the cell router, `jwt_cache_config` of 4,096 like the router's token cache)
  and the Lua lookup in `envoy/bench/cell_lookup.lua` (override table, else
  SipHash-1-3 → slot → cell, then failover — the routing function of
  `mapping/SPEC.md` minus moves and shedding, computed per request, not a
  precomputed tenant table, because users route tenants they have never seen).
  Its unique-token rows run the same file without `jwt_cache_config`: jwt_authn
  then verifies every request whatever the token, which is what unique tokens cost
  it, so its pool need not be unique. (5) `trust-header.yaml`: `jwt_authn` + the
  cell router in `trust_header` mode. Every request carries a bearer token (plain
  Envoy ignores it), so request sizes match.
- **Where the time goes.** `envoy/bench/probe` is a tiny proxy-wasm filter (a
  measuring instrument, not shipped) that makes exactly the host calls its
  configuration lists. The benchmark counts the real `.wasm`'s host calls for a
  cached token in the wasmtime host and runs the probe twice next to plain Envoy:
  with no calls (Envoy's cost for any Wasm filter: a context per request and the
  callbacks into V8) and with the router's calls; the router's own work is what
  remains.
- **Client.** wrk with `tests/harness/src/bench/wrk.lua`: requests are formatted once
  in `init()` and rotated, so the client costs the same in every case. Latency is
  wrk's (closed loop: at a fixed connection count, p99 is mostly queueing).
- **Machine sharing.** Client, gateway and backend share the same cores, so
  throughput here is "requests per CPU-second of the whole box", and the ratios
  show the gateway's extra CPU cost diluted by the client's and the backend's.
  The gateway's own CPU time per request (*gw CPU*) is the undiluted figure.
  Runs of different cases are interleaved round by round; ratios pair runs of the
  same round. *Other CPU* is the machine's busy time not spent by the processes
  under test (other builds or tests on the box) — the noise.
"#;
