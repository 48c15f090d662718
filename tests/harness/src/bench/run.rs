//! The whole benchmark: pools, processes, routing checks, warm-up, the
//! interleaved rounds, memory, propagation, and the report.

use super::anatomy;
use super::cases::{
    Case, DEFAULT_CELLS, Gateway, Tokens, all_cases, cell_cases, paced_cases, table_cases,
};
use super::inner::InnerBenches;
use super::pools::{PoolStore, TokenFile};
use super::propagation::{self, PropagationOptions, PropagationReport};
use super::report::{self, Goal, Memory, Report, RunInfo, Sample, Summary};
use super::stack::{self, Files};
use super::wrk::{self, WrkRun};
use crate::e2e::{self, Envoy, Sidecar};
use anyhow::{Context, Result};
use cell_router_kit::tokens::Alg;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: Vec<u32>,
    pub wrk_threads: u32,
    pub concurrency: u32,
    pub backend_concurrency: u32,
    pub tenants: usize,
    /// Only these case ids (plus the ones they are compared with).
    pub only: Option<Vec<String>>,
    /// Cell counts of the cost-vs-cells rows (group 6), besides the 3 of
    /// every other case; with `cells_router_only`, only the router's rows.
    pub cells: Vec<usize>,
    pub cells_router_only: bool,
    /// Unique tokens per algorithm instead of [`unique_pool_size`] (the
    /// smoke run uses a small pool).
    pub fixed_unique_pool: Option<usize>,
    pub propagation: Option<PropagationOptions>,
    pub out: PathBuf,
    pub svg: Option<PathBuf>,
    pub mapping_output: Option<PathBuf>,
    pub wasm_output: Option<PathBuf>,
    pub work_dir: PathBuf,
    pub token_dir: PathBuf,
    /// Where the probe filter is built (`None`: no probe cases).
    pub probe_target_dir: Option<PathBuf>,
    /// The per-call cost table (needs the probe).
    pub probe_table: bool,
    /// Pin the gateways to one core and everything else to another.
    pub pinning: Option<stack::Pinning>,
    pub command: String,
}

/// What the run found.
pub struct Outcome {
    pub summaries: Vec<Summary>,
    pub goals: Vec<Goal>,
    /// Problems that make the numbers untrustworthy (errors, empty runs).
    pub problems: Vec<String>,
}

/// Unique tokens minted per algorithm: many more than the 2 × 4,096 the
/// filter's caches hold, and as many as minting allows in reasonable time
/// (RS256 signing is by far the slowest; the report gives the minting time).
pub fn unique_pool_size(alg: Alg) -> usize {
    match alg {
        Alg::HS256 => 200_000,
        Alg::ES256 => 60_000,
        _ => 30_000,
    }
}

fn log(message: impl AsRef<str>) {
    eprintln!("cell-router-bench: {}", message.as_ref());
}

fn selected_cases(options: &Options) -> Vec<Case> {
    let mut all = all_cases();
    all.extend(cell_cases(&options.cells, options.cells_router_only));
    all.extend(paced_cases());
    if options.probe_table {
        all.extend(table_cases());
    }
    let Some(only) = &options.only else {
        return all;
    };
    let mut keep: Vec<String> = only.clone();
    keep.push("plain".into());
    if only.iter().any(|id| id.starts_with("probe-table")) {
        keep.push("probe-table-none".into());
    }
    if only
        .iter()
        .any(|id| id.starts_with("probe") && !id.starts_with("probe-table"))
    {
        keep.extend([
            "probe-empty".into(),
            "probe-calls".into(),
            "router-cached-hs256".into(),
        ]);
    }
    if only.iter().any(|id| id.starts_with("native-probe")) {
        keep.extend([
            "native-probe-empty".into(),
            "native-probe-clear".into(),
            "native-cached-hs256".into(),
        ]);
    }
    for case in all.iter().filter(|c| only.contains(&c.id)) {
        keep.extend(case.baseline_jwt_lua());
        keep.extend(case.at_default_cells());
        keep.push(case.plain_twin());
    }
    all.into_iter().filter(|c| keep.contains(&c.id)).collect()
}

/// Counters read from a gateway before and after a run.
#[derive(Default)]
struct Counters {
    hits: Option<i64>,
    misses: Option<i64>,
    rejected: i64,
}

fn sum_matching(stats: &HashMap<String, i64>, pred: impl Fn(&str) -> bool) -> Option<i64> {
    let values: Vec<i64> = stats
        .iter()
        .filter(|(k, _)| pred(k))
        .map(|(_, v)| *v)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

impl Counters {
    fn read(envoy: &Envoy, gateway: Gateway) -> Counters {
        let mut counters = Counters::default();
        if gateway.routes_by_snapshot() {
            let stats = envoy.stats("cell_router").unwrap_or_default();
            counters.hits = sum_matching(&stats, |k| k.ends_with("token_cache.hit"));
            counters.misses = sum_matching(&stats, |k| k.ends_with("token_cache.miss"));
            counters.rejected += sum_matching(&stats, |k| {
                k.contains("cell_router.rejected.")
                    || k.ends_with("cell_router.no_snapshot")
                    || k.contains("cell_router.shed.")
                    || k.contains("cell_router.unavailable.")
            })
            .unwrap_or(0);
        }
        if gateway.has_jwt_authn() {
            let stats = envoy.stats("jwt_authn").unwrap_or_default();
            counters.hits = sum_matching(&stats, |k| k.ends_with("jwt_cache_hit"));
            counters.misses = sum_matching(&stats, |k| k.ends_with("jwt_cache_miss"));
            counters.rejected +=
                sum_matching(&stats, |k| k.ends_with("jwt_authn.denied")).unwrap_or(0);
        }
        counters
    }

    fn delta(before: Option<i64>, after: Option<i64>) -> Option<i64> {
        Some(after? - before?)
    }
}

/// The snapshot, files and sidecar of one cell count of the cost-vs-cells rows.
struct CellSet {
    dir: PathBuf,
    doc: cell_router_mapping::SnapshotDoc,
    expected: Vec<String>,
    files: Files,
    sidecar: Sidecar,
}

struct Bench<'a> {
    options: &'a Options,
    /// By gateway and [`Case::cell_key`].
    gateways: BTreeMap<(Gateway, (usize, usize)), Envoy>,
    backend_pid: u32,
    script: PathBuf,
}

impl Bench<'_> {
    fn run_case(
        &self,
        case: &Case,
        connections: u32,
        duration: Duration,
        token_file: &Path,
        start: usize,
        round: usize,
    ) -> Result<Sample> {
        let envoy = self
            .gateways
            .get(&(case.gateway, case.cell_key()))
            .with_context(|| {
                format!("no gateway {} ({} cells)", case.gateway.name(), case.cells)
            })?;
        let gateway_pid = envoy.process.pid().unwrap_or(0);
        let before = Counters::read(envoy, case.gateway);
        let gw0 = stack::cpu_seconds(gateway_pid).unwrap_or(0.0);
        let be0 = stack::cpu_seconds(self.backend_pid).unwrap_or(0.0);
        let cl0 = stack::children_cpu_seconds().unwrap_or(0.0);
        let (busy0, total0) = stack::machine_cpu_seconds().unwrap_or((0.0, 0.0));
        let url = envoy.url("/");
        let result = WrkRun {
            url: &url,
            connections,
            threads: self.options.wrk_threads,
            duration,
            script: &self.script,
            token_file,
            start,
            headers: &case.headers(),
            cpus: self.options.pinning.as_ref().map(|p| p.other_cpus.as_str()),
            think_ms: case.think_ms,
        }
        .run()
        .with_context(|| format!("{} at {connections} connections", case.id))?;
        let (busy1, total1) = stack::machine_cpu_seconds().unwrap_or((0.0, 0.0));
        let gw1 = stack::cpu_seconds(gateway_pid).unwrap_or(0.0);
        let be1 = stack::cpu_seconds(self.backend_pid).unwrap_or(0.0);
        let cl1 = stack::children_cpu_seconds().unwrap_or(0.0);
        let after = Counters::read(envoy, case.gateway);
        Ok(Sample {
            case: case.id.clone(),
            connections,
            round,
            wrk: result,
            gateway_cpu_s: gw1 - gw0,
            backend_cpu_s: be1 - be0,
            client_cpu_s: cl1 - cl0,
            machine_busy_s: busy1 - busy0,
            machine_total_s: total1 - total0,
            cache_hits: Counters::delta(before.hits, after.hits),
            cache_misses: Counters::delta(before.misses, after.misses),
            rejected: after.rejected - before.rejected,
        })
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.trim().to_string()
        })
        .unwrap_or_default()
}

/// Now, as the reports write it.
pub fn date_utc() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

/// The commit measured, with "+ uncommitted changes" when the tree differs.
pub fn source_commit() -> String {
    let root = e2e::repo_root();
    let root = root.display().to_string();
    let commit = command_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    // The report files are what a bench run writes (the scale section runs
    // after the main one has rewritten them): not a change to the source.
    let dirty = !command_output(
        "git",
        &[
            "-C",
            &root,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!BENCHMARKS.md",
            ":!BENCHMARKS.svg",
        ],
    )
    .is_empty();
    if dirty {
        format!("{commit} + uncommitted changes")
    } else {
        commit
    }
}

fn run_info(options: &Options) -> RunInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let envoy_version = e2e::envoy_bin()
        .map(|bin| command_output(&bin.display().to_string(), &["--version"]))
        .unwrap_or_default();
    let envoy_version = envoy_version
        .split("version:")
        .nth(1)
        .map(|v| v.trim().to_string())
        .unwrap_or(envoy_version);
    let wrk = command_output("wrk", &["--version"]);
    RunInfo {
        date_utc: date_utc(),
        commit: source_commit(),
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        envoy_version,
        wrk_version: wrk.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
        command: options.command.clone(),
        rounds: options.rounds,
        duration_s: options.duration.as_secs_f64(),
        connections: options.connections.clone(),
        wrk_threads: options.wrk_threads,
        concurrency: options.concurrency,
        backend_concurrency: options.backend_concurrency,
        tenants: options.tenants,
        load_before: loadavg(),
        pinning: options.pinning.as_ref().map(|p| {
            format!(
                "gateways on CPU {}, client, backend and sidecars on CPU {}",
                p.gateway_cpus, p.other_cpus
            )
        }),
        ..RunInfo::default()
    }
}

pub fn run(options: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let mut info = run_info(options);
    let dir = options.work_dir.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cases = selected_cases(options);
    if options.probe_target_dir.is_none() {
        cases.retain(|c| !c.gateway.is_probe());
    }
    if let Err(err) = e2e::native_dir() {
        log(format!("no native cases: {err:#}"));
        cases.retain(|c| c.gateway != Gateway::RouterNative);
    }
    if let Some(pinning) = &options.pinning {
        // The benchmark itself (and the wrk runs it starts) off the
        // gateways' core.
        stack::pin(std::process::id(), &pinning.other_cpus)?;
    }
    let max_conns = options.connections.iter().copied().max().unwrap_or(16);

    // Tokens: the cached pools first (the routing check uses them).
    let mut store = PoolStore::new(&options.token_dir, options.tenants)?;
    let mut cached: BTreeMap<&'static str, TokenFile> = BTreeMap::new();
    for alg in [Alg::HS256, Alg::RS256, Alg::ES256] {
        let used = cases.iter().any(|c| c.tokens == Tokens::Cached(alg));
        if used || alg == Alg::HS256 || alg == Alg::RS256 {
            log(format!(
                "cached {} tokens for {} tenants",
                alg.name(),
                options.tenants
            ));
            cached.insert(alg.name(), store.cached(alg)?);
        }
    }
    let probe = cached
        .get("HS256")
        .map(TokenFile::tokens)
        .transpose()?
        .and_then(|t| t.into_iter().next())
        .context("no HS256 token")?;

    // Processes.
    let doc = stack::bench_snapshot(1, options.tenants, 0)?;
    let expected = stack::expected_cells(&doc, options.tenants)?;
    let mut files = Files::write(&dir, &doc)?;
    let mut host_calls = None;
    if let (Some(target), true) = (
        &options.probe_target_dir,
        cases.iter().any(|c| c.gateway.is_probe()),
    ) {
        log("building the probe filter and counting the router's host calls");
        let probe = anatomy::build_probe(target)
            .and_then(|wasm| Ok((wasm, anatomy::count_router_host_calls(&doc)?)));
        match probe {
            Ok((wasm, calls)) => {
                files.probe = Some((wasm, calls.probe_config()));
                host_calls = Some(calls);
            }
            Err(err) => {
                log(format!("no probe cases: {err:#}"));
                cases.retain(|c| !c.gateway.is_probe());
            }
        }
    }
    if let (Some(target), true) = (
        &options.probe_target_dir,
        cases.iter().any(|c| c.gateway.is_native_probe()),
    ) {
        log("building the native probe");
        match anatomy::build_native_probe(target) {
            Ok(dir) => files.native_probe = Some(dir),
            Err(err) => {
                log(format!("no native probe cases: {err:#}"));
                cases.retain(|c| !c.gateway.is_native_probe());
            }
        }
    }
    let source = dir.join("snapshot.json");
    e2e::publish(&source, doc.to_json().as_bytes())?;
    log("starting the backend Envoy, the sidecar and the gateways");
    let backends = stack::start_backend(&dir, options.backend_concurrency)?;
    let sidecar = Sidecar::start(&dir, &source)?;
    let pin_other = |process: &e2e::Process| -> Result<()> {
        if let (Some(pinning), Some(pid)) = (&options.pinning, process.pid()) {
            stack::pin(pid, &pinning.other_cpus)?;
        }
        Ok(())
    };
    pin_other(&backends.process)?;
    pin_other(&sidecar.process)?;
    // The cost-vs-cells rows: a snapshot of that many cells, its sidecar,
    // its Lua table, and gateways with that many cell clusters.
    let default_key = (DEFAULT_CELLS, DEFAULT_CELLS);
    let mut cell_sets: BTreeMap<(usize, usize), CellSet> = BTreeMap::new();
    for key in cases
        .iter()
        .map(Case::cell_key)
        .filter(|k| *k != default_key)
    {
        if cell_sets.contains_key(&key) {
            continue;
        }
        let (n, busy) = key;
        let cell_dir = if busy == n {
            dir.join(format!("cells-{n}"))
        } else {
            dir.join(format!("cells-{n}-on{busy}"))
        };
        std::fs::create_dir_all(&cell_dir)?;
        let doc = stack::bench_snapshot_cells(1, options.tenants, 0, n, busy)?;
        let expected = stack::expected_cells(&doc, options.tenants)?;
        let files = Files::write(&cell_dir, &doc)?;
        let source = cell_dir.join("snapshot.json");
        e2e::publish(&source, doc.to_json().as_bytes())?;
        let sidecar = Sidecar::start(&cell_dir, &source)?;
        pin_other(&sidecar.process)?;
        cell_sets.insert(
            key,
            CellSet {
                dir: cell_dir,
                doc,
                expected,
                files,
                sidecar,
            },
        );
    }
    let mut gateways = BTreeMap::new();
    for gateway in Gateway::ALL {
        let mut keys: Vec<(usize, usize)> = cases
            .iter()
            .filter(|c| c.gateway == gateway)
            .map(Case::cell_key)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let n = key.0;
            let (gw_dir, port, gw_files) = match cell_sets.get(&key) {
                Some(set) => (&set.dir, set.sidecar.port, &set.files),
                None => (&dir, sidecar.port, &files),
            };
            log(format!("starting gateway {} ({n} cells)", gateway.name()));
            let envoy = stack::start_gateway(
                gw_dir,
                gateway,
                n,
                &backends,
                port,
                gw_files,
                options.concurrency,
            )?;
            if let (Some(pinning), Some(pid)) = (&options.pinning, envoy.process.pid()) {
                stack::pin(pid, &pinning.gateway_cpus)?;
            }
            gateways.insert((gateway, key), envoy);
        }
    }
    for ((gateway, key), envoy) in &gateways {
        let n = key.0;
        if gateway.routes_by_snapshot() {
            let log_tail = cell_sets
                .get(key)
                .map_or(&sidecar, |s| &s.sidecar)
                .process
                .log_tail(10);
            stack::await_version(envoy, &probe, doc.version, e2e::VERSION_TIMEOUT).with_context(
                || {
                    format!(
                        "gateway {} ({n} cells): sidecar log:\n{log_tail}",
                        gateway.name(),
                    )
                },
            )?;
        }
    }
    let rs256 = cached.get("RS256").context("no RS256 pool")?.tokens()?;
    for ((gateway, key), envoy) in &gateways {
        log(format!(
            "checking the routing of gateway {} ({} cells, traffic on {})",
            gateway.name(),
            key.0,
            key.1
        ));
        let (cell_doc, cell_expected) = match cell_sets.get(key) {
            Some(set) => (&set.doc, &set.expected),
            None => (&doc, &expected),
        };
        info.routing_checked +=
            stack::check_routing(envoy, *gateway, &rs256, cell_doc, cell_expected)?;
    }

    let bench = Bench {
        options,
        backend_pid: backends.process.pid().unwrap_or(0),
        gateways,
        script: wrk::write_script(&dir)?,
    };

    // Unique tokens: one pool per algorithm, each run starting at another
    // place in it. The pools are much larger than the token cache (4,096 per
    // VM), so a token comes round again only long after it was evicted; the
    // cache hit share of every run is reported to show it.
    let mut unique: BTreeMap<&'static str, TokenFile> = BTreeMap::new();
    for case in cases.iter().filter(|c| c.tokens.is_unique()) {
        let alg = case.tokens.alg();
        if unique.contains_key(alg.name()) {
            continue;
        }
        let size = options
            .fixed_unique_pool
            .unwrap_or_else(|| unique_pool_size(alg));
        log(format!(
            "{size} unique {} tokens (minted once, then kept under {})",
            alg.name(),
            options.token_dir.display()
        ));
        unique.insert(alg.name(), store.unique(alg, size)?);
    }
    info.minted = store.minted;
    info.mint_seconds = store.mint_seconds;
    let runs = 1 + options.rounds * options.connections.len();
    let token_file = |case: &Case, run: usize| -> Result<(PathBuf, usize)> {
        match case.tokens {
            Tokens::Cached(alg) => cached
                .get(alg.name())
                .map(|f| (f.path.clone(), 0))
                .context("no cached pool"),
            Tokens::Unique(alg) => unique
                .get(alg.name())
                .map(|f| (f.path.clone(), run * f.count / runs))
                .context("no unique pool"),
        }
    };

    // Warm-up: JIT tiers, caches, connection pools.
    for case in &cases {
        let (file, start) = token_file(case, 0)?;
        log(format!("warm-up {}", case.id));
        bench.run_case(case, max_conns, options.warmup, &file, start, 0)?;
    }

    // The rounds: every case once per round and connection count, order
    // rotated each round.
    let mut samples = Vec::new();
    for round in 0..options.rounds {
        let mut conns_order = options.connections.clone();
        if round % 2 == 1 {
            conns_order.reverse();
        }
        for &conns in &conns_order {
            let conn_index = options
                .connections
                .iter()
                .position(|c| *c == conns)
                .unwrap_or(0);
            let run = 1 + round * options.connections.len() + conn_index;
            let n = cases.len();
            for case in cases.iter().cycle().skip(round % n.max(1)).take(n) {
                if !case.runs_at(conns, &options.connections) {
                    continue;
                }
                let (file, start) = token_file(case, run)?;
                let sample = bench.run_case(case, conns, options.duration, &file, start, round)?;
                log(format!(
                    "round {}/{} {conns:>3} conns {:<22} {:>8.0} req/s p50 {:>6.2} ms p99 {:>7.2} ms gw {:>4.0} µs/req other CPU {:>3.0} %",
                    round + 1,
                    options.rounds,
                    case.id,
                    sample.rps(),
                    sample.wrk.p50_us as f64 / 1000.0,
                    sample.wrk.p99_us as f64 / 1000.0,
                    sample.gateway_cpu_us_per_request(),
                    sample.foreign_cpu_share() * 100.0
                ));
                samples.push(sample);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    // Memory after the load.
    let mut memory = Vec::new();
    for ((gateway, (n, busy)), envoy) in &bench.gateways {
        let stats = envoy.stats("wasm").unwrap_or_default();
        let vms = sum_matching(&stats, |k| {
            k.starts_with("wasm.envoy.wasm.runtime.") && k.ends_with(".active")
        });
        memory.push(Memory {
            gateway: if (*n, *busy) == (DEFAULT_CELLS, DEFAULT_CELLS) {
                gateway.name().to_string()
            } else if n == busy {
                format!("{} ({n} cells)", gateway.name())
            } else {
                format!("{} ({n} cells, traffic on {busy})", gateway.name())
            },
            rss_bytes: envoy.process.pid().and_then(stack::rss_bytes).unwrap_or(0),
            wasm_vms: vms.filter(|_| gateway.has_filter()),
        });
    }
    let Bench { gateways, .. } = bench;
    drop(gateways);
    drop(sidecar);
    drop(cell_sets);

    let propagation: Option<PropagationReport> = match &options.propagation {
        Some(p) => {
            log("snapshot propagation");
            Some(propagation::measure(&dir, &backends, &files, &probe, p)?)
        }
        None => None,
    };
    drop(backends);

    info.load_after = loadavg();
    info.total_seconds = started.elapsed().as_secs_f64();
    let summaries = report::summarize(&cases, &samples, &options.connections);
    let goals = report::goals(&summaries, &options.connections);
    let inner = InnerBenches::read(
        options.mapping_output.as_deref(),
        options.wasm_output.as_deref(),
    );
    let svg_name = options.svg.as_ref().and_then(|svg| {
        let same_dir = svg.parent() == options.out.parent();
        same_dir
            .then(|| svg.file_name())
            .flatten()
            .and_then(|n| n.to_str())
    });
    let report = Report {
        info: &info,
        cases: &cases,
        samples: &samples,
        summaries: &summaries,
        goals: &goals,
        memory: &memory,
        propagation: propagation.as_ref(),
        host_calls: host_calls.as_ref(),
        inner: &inner,
        svg_name,
    };
    if let Some(parent) = options.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.out, report.markdown())
        .with_context(|| format!("writing {}", options.out.display()))?;
    if let Some(svg) = &options.svg {
        std::fs::write(svg, report.svg())?;
    }
    let json = serde_json::json!({
        "info": info,
        "samples": samples,
        "summaries": summaries,
        "goals": goals,
        "memory": memory,
        "propagation": propagation,
        "router_host_calls": host_calls.as_ref().map(|h| &h.per_request),
    });
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&json)?)?;

    let mut problems = Vec::new();
    for case in &cases {
        for conns in &options.connections {
            if !case.runs_at(*conns, &options.connections) {
                continue;
            }
            match summaries
                .iter()
                .find(|s| s.case == case.id && s.connections == *conns)
            {
                None => problems.push(format!("{} @{conns}: no result", case.id)),
                Some(s) if s.rps <= 0.0 => {
                    problems.push(format!("{} @{conns}: no requests", case.id))
                }
                Some(s) if s.empty_runs > 0 => problems.push(format!(
                    "{} @{conns}: {} runs without a single answer",
                    case.id, s.empty_runs
                )),
                Some(s) if s.errors > 0 || s.rejected > 0 => problems.push(format!(
                    "{} @{conns}: {} errors, {} rejected",
                    case.id, s.errors, s.rejected
                )),
                Some(_) => {}
            }
        }
    }
    Ok(Outcome {
        summaries,
        goals,
        problems,
    })
}
