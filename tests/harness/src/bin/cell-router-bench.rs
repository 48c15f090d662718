//! `make bench`: real Envoy with the cell router against plain Envoy and
//! against jwt_authn + Lua, measured with wrk, interleaved over rounds; writes
//! BENCHMARKS.md (and a ratio plot). See `tests/harness/src/bench/`.
//!
//! ```sh
//! cell-router-bench run                       # what `make bench` runs
//! cell-router-bench run --smoke               # ~1 minute, one round, checks it works
//! cell-router-bench scale                     # only the scale cases (issue #15)
//! ```

use anyhow::Result;
use cell_router_harness::bench::propagation::PropagationOptions;
use cell_router_harness::bench::run::{Options, run};
use cell_router_harness::e2e::repo_root;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Benchmark the cell router in real Envoy and write BENCHMARKS.md")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the benchmark and write the report.
    Run(RunArgs),
    /// Only the scale cases (10 M overrides, p99 during 1 M swaps): their
    /// section of the report is replaced (added if missing).
    Scale(ScaleArgs),
}

#[derive(Parser, Debug)]
struct ScaleArgs {
    /// Overrides of the big snapshot (0: no big-snapshot cases).
    #[arg(long, default_value_t = 10_000_000)]
    overrides: usize,
    /// Overrides of the mid-size snapshot swapped twice into the Wasm build
    /// at concurrency 2 (memory and apply time per VM, propagation; 0: none).
    #[arg(long, default_value_t = 1_000_000)]
    mid_overrides: usize,
    /// Envoy concurrencies the Wasm build is measured at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "2,8")]
    concurrency: Vec<u32>,
    /// Overrides of the snapshots swapped in under load.
    #[arg(long, default_value_t = 1_000_000)]
    load_overrides: usize,
    /// Quiet/swapping pairs of wrk runs (0: no load case).
    #[arg(long, default_value_t = 5)]
    load_rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    load_seconds: u64,
    /// The load case once per think time: ms each wrk connection waits
    /// before each request (0: closed loop, saturating; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,2")]
    load_think_ms: Vec<u32>,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Skip the native module (dist/libcell_router_native.so).
    #[arg(long)]
    no_native: bool,
    /// The three size limits for the big snapshot, in MiB.
    #[arg(long, default_value_t = 512)]
    limit_mib: u64,
    /// The report whose scale section is written.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where processes keep their files and logs.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// Rounds: every case is measured once per round and connection count.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per measured run (wrk takes whole seconds).
    #[arg(long, default_value_t = 2.0)]
    duration_s: f64,
    /// Seconds of warm-up per case before the rounds.
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Connection counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    connections: Vec<u32>,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    wrk_threads: u32,
    /// Worker threads of each gateway Envoy (one: the gateways' core is
    /// one core when pinned).
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Worker threads of the backend Envoy.
    #[arg(long, default_value_t = 1)]
    backend_concurrency: u32,
    /// Tenants (one cached token each).
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Only these cases (comma-separated ids, e.g. router-cached-rs256); the
    /// cases they are compared with run too.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Cell counts of the cost-vs-cells rows (plain, the router and
    /// jwt_authn + Lua; every other case has 3 cells); `3` for none.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    cells: Vec<usize>,
    /// Unique tokens per algorithm (default: 200,000 HS256, 60,000 ES256,
    /// 30,000 RS256; minted once and kept for three days).
    #[arg(long)]
    unique_pool: Option<usize>,
    /// Skip the snapshot propagation and 1 M-override measurements.
    #[arg(long)]
    no_propagation: bool,
    /// Overrides in the big snapshot.
    #[arg(long, default_value_t = 1_000_000)]
    big_overrides: usize,
    /// Small snapshot changes timed.
    #[arg(long, default_value_t = 5)]
    small_changes: usize,
    /// Big snapshot changes timed.
    #[arg(long, default_value_t = 2)]
    big_changes: usize,
    /// The report (Markdown).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The ratio plot (SVG); `none` for no plot.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Captured output of `cargo bench -p cell-router-mapping --bench resolve`.
    #[arg(long)]
    mapping_output: Option<PathBuf>,
    /// Captured output of `cargo bench -p cell-router-wasm-host --bench wasm_request`.
    #[arg(long)]
    wasm_output: Option<PathBuf>,
    /// Where processes keep their files and logs.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where token pools are kept between runs.
    #[arg(long)]
    token_dir: Option<PathBuf>,
    /// Skip the probe filter (the "where the time goes" cases and the
    /// per-call table).
    #[arg(long)]
    no_probe: bool,
    /// Skip the per-call cost table.
    #[arg(long)]
    no_call_table: bool,
    /// Do not pin processes to cores (by default, on 2 cores or more, the
    /// gateways run on CPU 0 and everything else on CPU 1).
    #[arg(long)]
    no_pin: bool,
    /// A short run that checks everything works: one round of 2 s at 16
    /// connections, 100 tenants, small fixed token pools, a 20,000-override
    /// big snapshot, one cost-vs-cells row (the router at 1,000 cells), no
    /// per-call table; report under target/cell-router-bench/smoke/.
    #[arg(long)]
    smoke: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Run(args) => main_run(args),
        Commands::Scale(args) => main_scale(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("cell-router-bench: {err:#}");
            std::process::exit(1);
        }
    }
}

fn main_scale(args: ScaleArgs) -> Result<i32> {
    use cell_router_harness::bench::scale;
    let command = std::env::var("CELL_ROUTER_BENCH_COMMAND")
        .unwrap_or_else(|_| "cell-router-bench scale".to_string());
    let options = scale::ScaleOptions {
        overrides: args.overrides,
        mid_overrides: args.mid_overrides,
        concurrencies: args.concurrency,
        load_overrides: args.load_overrides,
        load_seconds: args.load_seconds,
        connections: args.connections,
        load_rounds: args.load_rounds,
        load_think_ms: args.load_think_ms,
        native: !args.no_native,
        limit_bytes: args.limit_mib.saturating_mul(1 << 20),
        work_dir: args
            .work_dir
            .unwrap_or_else(|| repo_root().join("target/cell-router-bench/scale")),
    };
    let report = scale::measure(&options)?;
    let out = args
        .out
        .unwrap_or_else(|| repo_root().join("BENCHMARKS.md"));
    let existing = std::fs::read_to_string(&out).unwrap_or_default();
    std::fs::write(&out, scale::splice(&existing, &report.markdown(&command)))?;
    std::fs::write(
        options.work_dir.join("results.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    println!(
        "cell-router-bench scale: wrote its section of {}",
        out.display()
    );
    for failure in &report.failures {
        println!("  not measured: {failure}");
    }
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}

fn main_run(mut args: RunArgs) -> Result<i32> {
    let command = std::env::var("CELL_ROUTER_BENCH_COMMAND").unwrap_or_else(|_| {
        std::env::args()
            .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let base = repo_root().join("target/cell-router-bench");
    if args.smoke {
        args.rounds = 1;
        args.duration_s = 2.0;
        args.warmup_s = 1.0;
        args.connections = vec![16];
        args.tenants = 100;
        args.unique_pool = Some(300);
        args.big_overrides = 20_000;
        args.small_changes = 1;
        args.big_changes = 1;
        args.cells = vec![1000];
        args.no_call_table = true;
    }
    let run_dir = if args.smoke {
        base.join("smoke")
    } else {
        base.clone()
    };
    let out = args.out.clone().unwrap_or_else(|| {
        if args.smoke {
            run_dir.join("BENCHMARKS.md")
        } else {
            repo_root().join("BENCHMARKS.md")
        }
    });
    let svg = match &args.svg {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None => out.parent().map(|d| d.join("BENCHMARKS.svg")),
    };
    let options = Options {
        rounds: args.rounds.max(1),
        duration: Duration::from_secs_f64(args.duration_s),
        warmup: Duration::from_secs_f64(args.warmup_s),
        connections: args.connections.clone(),
        wrk_threads: args.wrk_threads,
        concurrency: args.concurrency,
        backend_concurrency: args.backend_concurrency,
        tenants: args.tenants,
        only: args.only.clone(),
        cells: args.cells.clone(),
        cells_router_only: args.smoke,
        fixed_unique_pool: args.unique_pool,
        propagation: (!args.no_propagation).then_some(PropagationOptions {
            tenants: args.tenants,
            small_changes: args.small_changes,
            big_overrides: args.big_overrides,
            big_changes: args.big_changes,
            concurrency: args.concurrency,
        }),
        out: out.clone(),
        svg,
        mapping_output: args.mapping_output.clone(),
        wasm_output: args.wasm_output.clone(),
        work_dir: args.work_dir.clone().unwrap_or_else(|| run_dir.join("run")),
        token_dir: args
            .token_dir
            .clone()
            .unwrap_or_else(|| base.join("tokens")),
        probe_target_dir: (!args.no_probe).then(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target"))
                .join("bench-probe")
        }),
        probe_table: !args.no_probe && !args.no_call_table,
        pinning: if args.no_pin {
            None
        } else {
            cell_router_harness::bench::stack::Pinning::for_this_machine()
        },
        command,
    };
    let outcome = run(&options)?;
    println!("cell-router-bench: wrote {}", out.display());
    for goal in &outcome.goals {
        let verdict = match goal.met() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let by_cpu = match goal.met_by_cpu() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        let fmt = |v: Option<f64>| v.map(|m| format!("{m:.2}")).unwrap_or_else(|| "–".into());
        println!(
            "  {:<70} @{:>3}: {:>6} → {verdict:<7} by gateway CPU {:>6} {by_cpu}",
            goal.goal,
            goal.connections,
            fmt(goal.measured),
            fmt(goal.measured_cpu)
        );
    }
    if outcome.problems.is_empty() {
        Ok(0)
    } else {
        for problem in &outcome.problems {
            eprintln!("cell-router-bench: problem: {problem}");
        }
        Ok(1)
    }
}
