//! BENCHMARKS.md: the header, the goals, the throughput tables, where the
//! time goes, memory, what was measured from inside, the method and every
//! run, in that order.

use super::method::METHOD;
use super::{Report, Sample, median};
use crate::bench::cases::{Gateway, thousands};
use std::fmt::Write as _;

impl Report<'_> {
    /// BENCHMARKS.md, section by section.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        self.header(w);
        self.goal_table(w);
        self.throughput(w);
        self.cells(w);
        self.anatomy(w);
        self.native_anatomy(w);
        self.call_table(w);
        self.memory(w);
        self.inside(w);
        let _ = writeln!(w, "## Method\n");
        let _ = writeln!(w, "{}", METHOD.trim());
        let _ = writeln!(w);
        self.every_run(w);
        md
    }

    /// The title, and the machine and run the figures come from.
    fn header(&self, w: &mut String) {
        let info = self.info;
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
        let _ = writeln!(
            w,
            "- **Pinning:** {}",
            info.pinning
                .as_deref()
                .unwrap_or("none (fewer than 2 cores or no taskset): every process on every core")
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
    }

    /// The goals, each met or not, measured and by gateway CPU.
    fn goal_table(&self, w: &mut String) {
        let _ = writeln!(w, "## Goals (issues 6 and 14)\n");
        let _ = writeln!(
            w,
            "*measured*: the ratio of throughput (or p99) as wrk saw it, the goal's own \
             terms. *by gateway CPU*: the same throughput ratio computed from the gateway \
             Envoy's CPU time per request, i.e. with the client, the backend and the rest \
             of the machine taken out (see Method).\n"
        );
        let _ = writeln!(
            w,
            "Each ratio is the median of the per-round ratios (runs of the same round paired), \
             with the lowest and highest round in brackets; *yes (not every round)* and *no \
             (some rounds met it)* mark goals the rounds disagree on, i.e. within the noise.\n"
        );
        let _ = writeln!(
            w,
            "| goal | connections | measured [rounds] | met | by gateway CPU [rounds] | met |"
        );
        let _ = writeln!(w, "|---|---:|---:|---|---:|---|");
        let verdict = |v: Option<super::Verdict>| v.map_or("–", super::Verdict::text);
        for g in self.goals {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                g.goal,
                g.connections,
                fmt_spread(g.measured, g.spread),
                verdict(g.verdict()),
                fmt_spread(g.measured_cpu, g.spread_cpu),
                verdict(g.verdict_cpu()),
            );
        }
        let _ = writeln!(w);
    }

    /// Per connection count, every configuration side by side; then the chart.
    fn throughput(&self, w: &mut String) {
        let info = self.info;
        let _ = writeln!(w, "## Throughput and latency\n");
        let _ = writeln!(
            w,
            "Medians over the rounds. Ratios are medians of per-round ratios: ×(1) to plain \
             Envoy, ×(4) to jwt_authn + Lua with the same kind of tokens and algorithm. \
             *spread*: slowest–fastest round; the brackets after a ratio: its lowest and \
             highest round. *gw CPU*: the gateway Envoy's CPU time per \
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
            for s in self
                .summaries
                .iter()
                .filter(|s| s.connections == *conns && s.group != 7)
            {
                let cache = s
                    .cache_hit_share
                    .map(|h| format!("{:.0} %", h * 100.0))
                    .unwrap_or_else(|| "–".into());
                let mut errors = (s.errors + s.rejected.max(0) as u64).to_string();
                if s.empty_runs > 0 {
                    errors.push_str(&format!(
                        " ({} runs without an answer, left out)",
                        s.empty_runs
                    ));
                }
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
                    fmt_spread(s.vs_plain, s.spreads.vs_plain),
                    fmt_spread(s.vs_jwt_lua, s.spreads.vs_jwt_lua),
                    fmt_ratio(s.p99_vs_plain),
                    s.gateway_cpu_us,
                    fmt_spread(s.cpu_vs_plain, s.spreads.cpu_vs_plain),
                    fmt_spread(s.cpu_vs_jwt_lua, s.spreads.cpu_vs_jwt_lua),
                    cache,
                    errors
                );
            }
            let _ = writeln!(w);
        }
        if let Some(svg) = self.svg_name {
            let _ = writeln!(w, "![Throughput ratios]({svg})\n");
        }
    }

    /// Issue 14: the gateway's CPU per request at 3, 100 and 1,000 cells.
    fn cells(&self, w: &mut String) {
        let scaled: Vec<_> = self.summaries.iter().filter(|s| s.group == 6).collect();
        if scaled.is_empty() {
            return;
        }
        // The 3-cell rows they are compared with, then theirs, in order.
        let mut rows: Vec<&super::Summary> = Vec::new();
        for s in self.summaries.iter().filter(|s| s.group != 6) {
            if scaled
                .iter()
                .any(|x| x.default_cells_case.as_deref() == Some(s.case.as_str()))
            {
                rows.push(s);
                rows.extend(
                    scaled
                        .iter()
                        .filter(|x| {
                            x.default_cells_case.as_deref() == Some(s.case.as_str())
                                && x.connections == s.connections
                        })
                        .copied(),
                );
            }
        }
        let _ = writeln!(w, "## Cost and the number of cells (issue 14)\n");
        let _ = writeln!(
            w,
            "Each configuration in its best routing style: one route naming the cell's \
             cluster by the `x-cell-id` header (`cluster_header`, guarded; envoy/README.md, \
             \"Routing\"), with that many cells in the snapshot, the Lua table and the \
             gateway's clusters (all pointing at the same three backend listeners); the plain \
             clients name every cell in turn, as the tenants land on every cell. The rows \
             *traffic on 3* change the number of cells alone: 1,000 clusters and 1,000 cells in \
             the snapshot and the Lua table, but only the first three take tenants (the others \
             weigh 0) and the plain clients name only those, so each request goes where it goes \
             at 3 cells. *cost ×3 cells*: this row's gateway CPU per request over the same \
             configuration's at 3 cells (median of per-round ratios). *over plain*: gateway CPU \
             per request minus plain Envoy's with the same cells and traffic, i.e. what the \
             filter (or jwt_authn + Lua) adds. Plain Envoy itself pays more when its requests \
             spread over 1,000 clusters than over 3 (a connection pool and an upstream \
             connection per cluster, each used rarely: colder caches; no new connections), not \
             for having 1,000 clusters: compare the *traffic on 3* rows. Goal: the router's \
             cost at 1,000 cells ≤ 1.05 × at 3, judged on the same traffic (*traffic on 3*).\n"
        );
        let _ = writeln!(
            w,
            "| configuration | connections | cells | req/s | gw CPU µs/req | at 3 cells µs/req | cost ×3 cells | by throughput | over plain µs/req |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for s in rows {
            let base = s.default_cells_case.as_deref().and_then(|b| {
                self.summaries
                    .iter()
                    .find(|x| x.case == b && x.connections == s.connections)
            });
            let case = self.cases.iter().find(|c| c.id == s.case);
            let cells = case.map_or("3".into(), |c| {
                if c.busy_cells == c.cells {
                    thousands(c.cells)
                } else {
                    format!("{} (traffic on {})", thousands(c.cells), c.busy_cells)
                }
            });
            let plain_id = case.map_or("plain".into(), |c| c.plain_twin());
            let over_plain = |x: &super::Summary| {
                self.summaries
                    .iter()
                    .find(|p| p.case == plain_id && p.connections == x.connections)
                    .filter(|p| p.case != x.case)
                    .map_or("–".into(), |p| {
                        format!("{:.0}", x.gateway_cpu_us - p.gateway_cpu_us)
                    })
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                s.label,
                s.connections,
                cells,
                fmt_rps(s.rps),
                s.gateway_cpu_us,
                base.map_or("–".into(), |b| format!("{:.0}", b.gateway_cpu_us)),
                fmt_spread(s.cpu_vs_default_cells, s.spreads.cpu_vs_default_cells),
                fmt_spread(s.vs_default_cells, s.spreads.vs_default_cells),
                over_plain(s),
            );
        }
        let _ = writeln!(w);
    }

    /// Resident memory per gateway and the per-VM estimate.
    fn memory(&self, w: &mut String) {
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
    }

    /// Snapshot propagation and the in-process benchmarks.
    fn inside(&self, w: &mut String) {
        let _ = writeln!(w, "## From inside\n");
        match self.propagation {
            Some(p) => p.markdown(w),
            None => {
                let _ = writeln!(w, "Snapshot propagation: not measured in this run.\n");
            }
        }
        self.inner.markdown(w);
    }

    /// Every wrk run, folded.
    fn every_run(&self, w: &mut String) {
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

    /// The native build's counterpart: plain → a dynamic module doing
    /// nothing → that module clearing the route cache (Envoy matches the
    /// route again) → the native router with cached HS256 tokens.
    fn native_anatomy(&self, w: &mut String) {
        let find = |case: &str, conns: u32| {
            self.summaries
                .iter()
                .find(|s| s.case == case && s.connections == conns)
                .map(|s| s.gateway_cpu_us)
        };
        let rows: Vec<(u32, [f64; 4])> = self
            .info
            .connections
            .iter()
            .filter_map(|conns| {
                Some((
                    *conns,
                    [
                        find("plain", *conns)?,
                        find("native-probe-empty", *conns)?,
                        find("native-probe-clear", *conns)?,
                        find("native-cached-hs256", *conns)?,
                    ],
                ))
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(w, "### The native build (dynamic module)\n");
        let _ = writeln!(
            w,
            "The same split for the native build: plain Envoy, plain + a dynamic module whose \
             filter does nothing (`envoy/bench/native-probe`), plain + that module clearing the \
             route cache on every request (Envoy then matches the route a second time, as it \
             must for the router, whose header picks the route), and the native router with \
             cached HS256 tokens.\n"
        );
        let _ = writeln!(
            w,
            "| connections | plain µs | + empty dynamic module | + clearing the route cache | native router (cached HS256) | module machinery | second route match | router's own work |"
        );
        let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (conns, [plain, empty, clear, router]) in &rows {
            let _ = writeln!(
                w,
                "| {conns} | {plain:.0} | {empty:.0} | {clear:.0} | {router:.0} | {:+.0} | {:+.0} | {:+.0} |",
                empty - plain,
                clear - empty,
                router - clear
            );
        }
        let _ = writeln!(w);
        for (conns, [plain, empty, clear, _]) in &rows {
            let _ = writeln!(
                w,
                "- At {conns} connections, by gateway CPU, any dynamic-module filter in this Envoy \
                 reaches at most {:.2}× plain Envoy, and one that makes Envoy match the route \
                 again at most {:.2}× (the native goal is 0.95×).",
                plain / empty,
                plain / clear
            );
        }
        let _ = writeln!(w);
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into())
}

/// A ratio and its lowest and highest round: `0.97 [0.95–0.99]`.
fn fmt_spread(r: Option<f64>, spread: Option<(f64, f64)>) -> String {
    match (r, spread) {
        (Some(r), Some((lo, hi))) if hi > lo => format!("{r:.2} [{lo:.2}–{hi:.2}]"),
        _ => fmt_ratio(r),
    }
}

fn fmt_rps(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
