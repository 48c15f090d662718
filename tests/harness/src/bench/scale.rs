//! Snapshots at scale (issue #15): a 10,000,000-override snapshot in the
//! Wasm build (Envoy concurrency 2 and 8) and in the native module, and p99
//! under load while 1,000,000-override snapshots are swapped in. Each
//! gateway is `envoy/envoy.yaml` (or `envoy/envoy-native.yaml`) as shipped,
//! with the three size limits raised together for the big snapshot
//! (envoy/README.md, "Snapshot size"), its own sidecar and the e2e cell
//! backends.
//!
//! One swap: a long-poll is held on the sidecar, the new file is renamed
//! into place (t0), the sidecar answers the long-poll with it (t1,
//! "published"), every VM has applied it (`cell_router.snapshot.applied`
//! risen by the number of VMs; the native module counts the same), and
//! requests on fresh connections see every worker route by it (t3). RSS is
//! the gateway Envoy's `VmRSS`; the swap's high-water mark is its `VmHWM`,
//! reset (`/proc/<pid>/clear_refs` = 5) just before the swap. Envoy's own
//! heap (tcmalloc, from the admin's `/memory`: `heap_size` less
//! `pageheap_unmapped`) is read too: it holds the response bodies Envoy
//! buffered (and tcmalloc keeps freed memory for reuse), while the Wasm VMs'
//! linear memory is V8's, outside that heap; RSS less the heap is what the
//! VMs (and V8's code) hold.
//!
//! The load case publishes the binary form (the sidecar takes either), so
//! that the sidecar's JSON parsing does not compete with the gateway for
//! the two cores while p99 is measured: it is the swap in the gateway that
//! is timed.
//!
//! `cell-router-bench scale` runs only these cases and writes their section
//! into BENCHMARKS.md (between `SECTION_BEGIN` and `SECTION_END`); `make
//! bench` runs it after the main run.

use super::stack;
use super::wrk::{self, WrkResult, WrkRun};
use crate::e2e::{
    self, Backends, Envoy, EnvoyOptions, Gateway, Sidecar, free_port, plugin_config_of, publish,
};
use anyhow::{Context, Result, anyhow, bail};
use cell_router_kit::fixtures::{token, unix_now};
use cell_router_kit::tokens::Alg;
use cell_router_mapping::SnapshotDoc;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SECTION_BEGIN: &str = "<!-- scale:begin (cell-router-bench scale) -->";
pub const SECTION_END: &str = "<!-- scale:end -->";

const APPLIED: &str = "cell_router.snapshot.applied";
const RUNTIME_KEY: &str = "http.async_response_buffer_limit: ";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Overrides of the big snapshot (10,000,000); 0 for no big cases.
    pub overrides: usize,
    /// Overrides of the mid-size snapshot swapped twice into the Wasm build
    /// at concurrency 2 (1,000,000: memory per VM, apply time per VM,
    /// propagation); 0 for none.
    pub mid_overrides: usize,
    /// Concurrencies the Wasm build is measured at.
    pub concurrencies: Vec<u32>,
    /// Overrides of the snapshots swapped in under load (1,000,000).
    pub load_overrides: usize,
    /// Seconds of each wrk run of the load case.
    pub load_seconds: u64,
    pub connections: u32,
    /// Quiet/swapping pairs of wrk runs.
    pub load_rounds: usize,
    /// The load case once per think time (ms each wrk connection waits
    /// before each request; 0 saturates the gateway).
    pub load_think_ms: Vec<u32>,
    /// Measure the native module (needs `dist/libcell_router_native.so`).
    pub native: bool,
    /// The three limits (Envoy's runtime key, `max_snapshot_bytes`,
    /// `--max-body-bytes`) for the big snapshot.
    pub limit_bytes: u64,
    pub work_dir: PathBuf,
}

/// One snapshot swap on one gateway.
#[derive(Clone, Debug, Serialize)]
pub struct Swap {
    pub version: u64,
    pub file_to_sidecar_ms: f64,
    pub sidecar_to_every_vm_ms: f64,
    /// From the sidecar serving it to every worker seen routing by it.
    pub sidecar_to_every_worker_ms: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    /// Envoy's resident tcmalloc heap before and after.
    pub heap_before: u64,
    pub heap_after: u64,
    /// `VmHWM` during the swap.
    pub high_water: u64,
    /// Per VM, from its log line (Envoy at `info`): ms from the first piece
    /// to the last, and ms from the last piece to the snapshot in force
    /// (the check, in slices; a VM that trusts another's check waits for
    /// it). Empty for the native module.
    pub vm_download_check_ms: Vec<(u64, u64)>,
    /// Per VM, from the same line: the VM's own time on the swap (its
    /// answers and apply slices), however long they were spread over.
    pub vm_work_ms: Vec<f64>,
}

/// The big snapshot on one gateway: applied twice (two swaps after a small
/// snapshot).
#[derive(Clone, Debug, Serialize)]
pub struct BigRun {
    pub build: &'static str,
    pub concurrency: u32,
    /// VMs that apply each snapshot (workers + main thread); 0 for native
    /// (one copy for the process).
    pub vms: i64,
    pub overrides: usize,
    pub binary_bytes: u64,
    /// RSS with the small snapshot, before the swaps.
    pub rss_small: u64,
    /// Envoy's resident tcmalloc heap then.
    pub heap_small: u64,
    pub swaps: Vec<Swap>,
}

impl BigRun {
    fn rss_growth(&self) -> Option<f64> {
        let last = self.swaps.last()?;
        Some(last.rss_after as f64 - self.rss_small as f64)
    }

    /// RSS growth per VM after the swaps.
    fn per_vm(&self) -> Option<f64> {
        Some(self.rss_growth()? / self.vms.max(1) as f64)
    }

    /// Growth outside Envoy's heap (the VMs' linear memory) per VM.
    fn per_vm_outside_heap(&self) -> Option<f64> {
        let last = self.swaps.last()?;
        let outside = |rss: u64, heap: u64| rss as f64 - heap as f64;
        Some(
            (outside(last.rss_after, last.heap_after) - outside(self.rss_small, self.heap_small))
                / self.vms.max(1) as f64,
        )
    }

    fn worst_propagation_ms(&self) -> Option<f64> {
        self.swaps
            .iter()
            .map(|s| s.sidecar_to_every_worker_ms)
            .reduce(f64::max)
    }

    fn high_water(&self) -> Option<u64> {
        self.swaps.iter().map(|s| s.high_water).max()
    }

    /// The slowest VM's apply (download + check), and its check alone, over
    /// every swap.
    fn slowest_apply_ms(&self) -> Option<(u64, u64)> {
        self.swaps
            .iter()
            .flat_map(|s| s.vm_download_check_ms.iter())
            .map(|&(download, check)| (download + check, check))
            .max()
    }

    /// The most time a VM spent on one swap itself.
    fn most_work_ms(&self) -> Option<f64> {
        self.swaps
            .iter()
            .flat_map(|s| s.vm_work_ms.iter().copied())
            .reduce(f64::max)
    }

    /// The slowest check over every swap and VM.
    fn slowest_check_ms(&self) -> Option<u64> {
        self.swaps
            .iter()
            .flat_map(|s| s.vm_download_check_ms.iter())
            .map(|&(_, check)| check)
            .max()
    }
}

/// `(download ms, check ms)` of each VM's "snapshot version `version`
/// applied from the sidecar" log line.
fn apply_times(log: &str, version: u64) -> Vec<(u64, u64)> {
    let marker = format!("snapshot version {version} applied from the sidecar");
    let number_before = |text: &str, suffix: &str| -> Option<u64> {
        let end = text.find(suffix)?;
        let head = &text[..end];
        let start = head
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        head[start..].parse().ok()
    };
    log.lines()
        .filter(|l| l.contains(&marker))
        .filter_map(|l| {
            let over = &l[l.find(" over ")? + 6..];
            let download = number_before(over, " ms")?;
            let checked = &l[l.find("checked in ")? + 11..];
            let check = number_before(checked, " ms")?;
            Some((download, check))
        })
        .collect()
}

/// The "N ms of work in this VM" of each VM's "snapshot version `version`
/// applied from the sidecar" log line.
fn work_times(log: &str, version: u64) -> Vec<f64> {
    let marker = format!("snapshot version {version} applied from the sidecar");
    log.lines()
        .filter(|l| l.contains(&marker))
        .filter_map(|l| {
            let head = &l[..l.find(" ms of work")?];
            let start = head
                .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
                .map_or(0, |i| i + 1);
            head[start..].parse().ok()
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadRound {
    pub quiet: WrkResult,
    pub swapping: WrkResult,
    /// Swaps every VM finished during the swapping run.
    pub swaps: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadRun {
    pub concurrency: u32,
    /// Ms each connection waited before each request (0: closed loop).
    pub think_ms: u32,
    pub overrides: usize,
    pub connections: u32,
    pub seconds: u64,
    pub rounds: Vec<LoadRound>,
}

impl LoadRun {
    fn p99_ms(&self, pick: impl Fn(&LoadRound) -> &WrkResult) -> Option<f64> {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| pick(r).p99_us as f64 / 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// How the load was offered, for the report.
    fn pacing(&self) -> String {
        match self.think_ms {
            0 => "closed loop, saturating the gateway".to_string(),
            ms => format!("paced: each connection waits {ms} ms before each request"),
        }
    }

    /// Each round's p99 with swaps over its p99 without: the two runs of a
    /// round are back to back, so a machine that slows down or speeds up
    /// between rounds moves both.
    fn round_ratios(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .filter(|r| r.quiet.p99_us > 0)
            .map(|r| r.swapping.p99_us as f64 / r.quiet.p99_us as f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median of the rounds' ratios.
    fn ratio(&self) -> Option<f64> {
        let v = self.round_ratios();
        v.get(v.len() / 2).copied()
    }

    /// The lowest and highest round's ratio.
    fn ratio_spread(&self) -> Option<(f64, f64)> {
        let v = self.round_ratios();
        Some((*v.first()?, *v.last()?))
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleReport {
    /// The mid-size snapshot (1 M) in the Wasm build.
    pub mid: Option<BigRun>,
    pub wasm: Vec<BigRun>,
    pub native: Option<BigRun>,
    pub load: Vec<LoadRun>,
    /// Cases that could not be measured, and why.
    pub failures: Vec<String>,
    /// When and at which commit (the section can be run on its own).
    pub measured: String,
}

fn log(message: &str) {
    eprintln!("cell-router-bench scale: {message}");
}

/// Runs every case; a case that fails is reported (`failures`), the others
/// still run.
pub fn measure(options: &ScaleOptions) -> Result<ScaleReport> {
    std::fs::create_dir_all(&options.work_dir)?;
    let mut report = ScaleReport {
        measured: format!(
            "{} at commit `{}`",
            super::run::date_utc(),
            super::run::source_commit()
        ),
        ..ScaleReport::default()
    };
    if options.mid_overrides > 0 {
        log(&format!(
            "wasm, concurrency 2, {}-override snapshots",
            options.mid_overrides
        ));
        match BigDocs::new(options.mid_overrides)
            .and_then(|mid| big_run(options, &mid, Build::Wasm, 2))
        {
            Ok(run) => report.mid = Some(run),
            Err(err) => report.failures.push(format!(
                "wasm, {} overrides: {err:#}",
                options.mid_overrides
            )),
        }
    }
    log(&format!(
        "building the {}-override snapshots",
        options.overrides
    ));
    let big = BigDocs::new(options.overrides)?;
    let concurrencies = if options.overrides == 0 {
        &[][..]
    } else {
        &options.concurrencies[..]
    };
    for &concurrency in concurrencies {
        log(&format!("wasm, concurrency {concurrency}"));
        match big_run(options, &big, Build::Wasm, concurrency) {
            Ok(run) => report.wasm.push(run),
            Err(err) => report
                .failures
                .push(format!("wasm, concurrency {concurrency}: {err:#}")),
        }
    }
    if options.native && options.overrides > 0 {
        log("native");
        match big_run(options, &big, Build::Native, 2) {
            Ok(run) => report.native = Some(run),
            Err(err) => report.failures.push(format!("native: {err:#}")),
        }
    }
    drop(big);
    for &think_ms in options
        .load_think_ms
        .iter()
        .filter(|_| options.load_rounds > 0)
    {
        log(&format!(
            "p99 under load ({think_ms} ms think time) with {}-override swaps",
            options.load_overrides
        ));
        match load_run(options, think_ms) {
            Ok(run) => report.load.push(run),
            Err(err) => report
                .failures
                .push(format!("load ({think_ms} ms think time): {err:#}")),
        }
    }
    Ok(report)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    Wasm,
    Native,
}

impl Build {
    fn name(self) -> &'static str {
        match self {
            Build::Wasm => "wasm",
            Build::Native => "native",
        }
    }
}

/// The two big snapshots' JSON (versions 2 and 3) and the binary form's size.
struct BigDocs {
    overrides: usize,
    json: Vec<Vec<u8>>,
    binary_bytes: u64,
}

impl BigDocs {
    fn new(overrides: usize) -> Result<BigDocs> {
        if overrides == 0 {
            return Ok(BigDocs {
                overrides,
                json: Vec::new(),
                binary_bytes: 0,
            });
        }
        let mut doc = stack::bench_snapshot(2, 0, overrides)?;
        let first = doc.to_json().into_bytes();
        let snapshot = cell_router_mapping::binary::parse_any(&first)
            .map_err(|e| anyhow!("the big snapshot is invalid: {e}"))?;
        // What the sidecar serves gateways (`--binary-keys hashes`).
        let binary_bytes = cell_router_mapping::binary::encode_hashed(&snapshot)
            .map_err(|e| anyhow!("the big snapshot cannot be keyed by hash: {e}"))?
            .len() as u64;
        drop(snapshot);
        doc.version = 3;
        let second = doc.to_json().into_bytes();
        Ok(BigDocs {
            overrides,
            json: vec![first, second],
            binary_bytes,
        })
    }
}

fn small_doc(version: u64) -> Result<SnapshotDoc> {
    stack::bench_snapshot(version, 100, 0)
}

/// `envoy/envoy.yaml` (or the native one) with the runtime key at `limit`.
fn template(dir: &Path, build: Build, limit: u64) -> Result<PathBuf> {
    let name = match build {
        Build::Wasm => "envoy/envoy.yaml",
        Build::Native => "envoy/envoy-native.yaml",
    };
    let shipped = std::fs::read_to_string(e2e::repo_root().join(name))?;
    let at = shipped
        .find(RUNTIME_KEY)
        .with_context(|| format!("{name} sets no {RUNTIME_KEY}"))?;
    let end = at + shipped[at..].find('\n').unwrap_or(shipped.len() - at);
    let path = dir.join(format!("{}-template.yaml", build.name()));
    std::fs::write(
        &path,
        format!("{}{RUNTIME_KEY}{limit}{}", &shipped[..at], &shipped[end..]),
    )?;
    Ok(path)
}

/// A gateway (cells, sidecar, Envoy) routing by a small version 1, with the
/// three limits at `limit`.
fn start(dir: &Path, build: Build, concurrency: u32, limit: u64) -> Result<Gateway> {
    std::fs::create_dir_all(dir)?;
    let source = dir.join("snapshot.json");
    publish(&source, small_doc(1)?.to_json().as_bytes())?;
    let backends = Backends::start(dir, &stack::CELLS)?;
    let limit_arg = limit.to_string();
    let sidecar = Sidecar::start_with_args(
        dir,
        &source,
        free_port()?,
        None,
        &["--max-body-bytes", &limit_arg, "--max-snapshot-mib", "2048"],
    )?;
    let mut options = EnvoyOptions::new(&backends, sidecar.port);
    if build == Build::Native {
        options.use_native_build();
    }
    // The filter logs each apply's download and check times at info.
    options.log_level = Some("info".into());
    options.template = template(dir, build, limit)?;
    options.concurrency = concurrency;
    let mut config = plugin_config_of(&std::fs::read_to_string(&options.template)?)?;
    config["sidecar"]["max_snapshot_bytes"] = limit.into();
    options.plugin_config = Some(config);
    let envoy = Envoy::start(dir, options)?;
    let gateway = Gateway {
        dir: dir.to_path_buf(),
        source,
        backends,
        sidecar,
        envoy,
    };
    gateway.await_version(1, e2e::VERSION_TIMEOUT)?;
    Ok(gateway)
}

fn applied(envoy: &Envoy) -> i64 {
    envoy
        .stats(APPLIED)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.ends_with(APPLIED))
                .map(|(_, v)| *v)
                .sum()
        })
        .unwrap_or(-1)
}

/// Waits until `applied` reaches `want`; what it reached.
fn await_applied(envoy: &Envoy, want: i64, timeout: Duration) -> i64 {
    await_applied_every(envoy, want, timeout, Duration::from_millis(5))
}

/// [`await_applied`], asking Envoy's admin every `every`.
fn await_applied_every(envoy: &Envoy, want: i64, timeout: Duration, every: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    let mut seen = applied(envoy);
    while seen < want && Instant::now() < deadline {
        std::thread::sleep(every);
        seen = applied(envoy);
    }
    seen
}

/// Envoy's resident tcmalloc heap (`/memory`: `heap_size` less
/// `pageheap_unmapped`), in bytes.
fn envoy_heap(envoy: &Envoy) -> u64 {
    let url = format!("http://127.0.0.1:{}/memory", envoy.admin_port);
    let Ok(reply) = e2e::get(&e2e::client(), &url, &[]) else {
        return 0;
    };
    let Ok(memory) = reply.json() else { return 0 };
    let field = |name: &str| -> u64 {
        match &memory[name] {
            serde_json::Value::String(s) => s.parse().unwrap_or(0),
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
            _ => 0,
        }
    };
    field("heap_size").saturating_sub(field("pageheap_unmapped"))
}

/// `VmHWM` of a process, in bytes.
fn high_water_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5).
fn reset_high_water(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Holds a long-poll on the sidecar for a version after `after`; the instant
/// its answer's status line arrives.
fn long_poll(port: u16, after: u64) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        // JSON: a header-only answer would do, but the sidecar has none.
        let url = format!("http://127.0.0.1:{port}/snapshot?after={after}&wait=240");
        let response = agent.get(&url).call().ok()?;
        let at = Instant::now();
        (response.status().as_u16() == 200).then_some(at)
    })
}

/// Publishes `bytes` (version `version`) and times it until every worker
/// routes by it.
fn swap(gateway: &Gateway, bytes: &[u8], version: u64, vms: i64) -> Result<Swap> {
    let envoy = &gateway.envoy;
    let pid = envoy.process.pid().context("Envoy has no pid")?;
    let base = applied(envoy);
    let rss_before = stack::rss_bytes(pid).unwrap_or(0);
    let heap_before = envoy_heap(envoy);
    let poll = long_poll(gateway.sidecar.port, version - 1);
    std::thread::sleep(Duration::from_millis(300));
    reset_high_water(pid);
    let t0 = Instant::now();
    publish(&gateway.source, bytes)?;
    // The native module has no applied counter: its time to every VM is
    // its time to routing.
    let seen = if vms > 0 {
        await_applied(envoy, base + vms, Duration::from_secs(300))
    } else {
        gateway
            .await_version(version, Duration::from_secs(300))
            .with_context(|| format!("routing by version {version}"))?;
        base
    };
    let t2 = Instant::now();
    if seen < base + vms {
        bail!(
            "version {version}: {} of {vms} VMs applied it within 300 s (the sidecar serves {:?})\n{}",
            seen - base,
            gateway.sidecar.version(),
            envoy.process.log_tail(20)
        );
    }
    let t1 = poll.join().ok().flatten().unwrap_or(t2);
    gateway
        .await_version(version, e2e::VERSION_TIMEOUT)
        .with_context(|| format!("routing by version {version}"))?;
    let t3 = Instant::now();
    let high_water = high_water_bytes(pid).unwrap_or(0);
    // Let freed memory settle before reading RSS.
    std::thread::sleep(Duration::from_millis(1000));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(Swap {
        version,
        file_to_sidecar_ms: ms(t1.saturating_duration_since(t0)),
        sidecar_to_every_vm_ms: ms(t2.saturating_duration_since(t1)),
        sidecar_to_every_worker_ms: ms(t3.saturating_duration_since(t1)),
        rss_before,
        rss_after: stack::rss_bytes(pid).unwrap_or(0),
        heap_before,
        heap_after: envoy_heap(envoy),
        high_water,
        // The native module applies in one go on its own thread: no times.
        vm_download_check_ms: if vms > 0 {
            apply_times(&envoy.process.log_tail(usize::MAX), version)
        } else {
            Vec::new()
        },
        vm_work_ms: if vms > 0 {
            work_times(&envoy.process.log_tail(usize::MAX), version)
        } else {
            Vec::new()
        },
    })
}

fn big_run(
    options: &ScaleOptions,
    big: &BigDocs,
    build: Build,
    concurrency: u32,
) -> Result<BigRun> {
    let dir = options
        .work_dir
        .join(format!("{}-c{concurrency}-{}", build.name(), big.overrides));
    let _ = std::fs::remove_dir_all(&dir);
    let gateway = start(&dir, build, concurrency, options.limit_bytes)?;
    // The Wasm build has a VM per worker and one on the main thread; the
    // native module one snapshot for the process (and no applied counter).
    let vms = match build {
        Build::Wasm => i64::from(concurrency) + 1,
        Build::Native => 0,
    };
    let base = await_applied(&gateway.envoy, vms, e2e::VERSION_TIMEOUT);
    if base < vms {
        bail!("{APPLIED} is {base} after version 1, expected {vms}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = gateway.envoy.process.pid().context("Envoy has no pid")?;
    let rss_small = stack::rss_bytes(pid).unwrap_or(0);
    let heap_small = envoy_heap(&gateway.envoy);
    let mut swaps = Vec::new();
    for (i, json) in big.json.iter().enumerate() {
        let version = 2 + i as u64;
        let swap = swap(&gateway, json, version, vms)?;
        log(&format!(
            "  v{version}: file→sidecar {:.0} ms, sidecar→every VM {:.0} ms, →every worker routing {:.0} ms, RSS {:.0}→{:.0} MiB (Envoy heap {:.0}→{:.0}), high water {:.0} MiB",
            swap.file_to_sidecar_ms,
            swap.sidecar_to_every_vm_ms,
            swap.sidecar_to_every_worker_ms,
            swap.rss_before as f64 / MIB,
            swap.rss_after as f64 / MIB,
            swap.heap_before as f64 / MIB,
            swap.heap_after as f64 / MIB,
            swap.high_water as f64 / MIB
        ));
        swaps.push(swap);
    }
    Ok(BigRun {
        build: build.name(),
        concurrency,
        vms,
        overrides: big.overrides,
        binary_bytes: big.binary_bytes,
        rss_small,
        heap_small,
        swaps,
    })
}

fn load_run(options: &ScaleOptions, think_ms: u32) -> Result<LoadRun> {
    let dir = options.work_dir.join(match think_ms {
        0 => "load".to_string(),
        ms => format!("load-think-{ms}ms"),
    });
    let _ = std::fs::remove_dir_all(&dir);
    let concurrency = 2;
    let gateway = start(&dir, Build::Wasm, concurrency, 64 << 20)?;
    let vms = i64::from(concurrency) + 1;
    let script = wrk::write_script(&dir)?;
    let tokens = dir.join("tokens.txt");
    let now = unix_now();
    let lines: Vec<String> = (0..200)
        .map(|i| token(Alg::HS256, now, &format!("load-tenant-{i}")))
        .collect();
    std::fs::write(&tokens, lines.join("\n") + "\n")?;
    let url = gateway.envoy.url("/");
    let wrk_run = |start: usize| {
        WrkRun {
            url: &url,
            connections: options.connections,
            threads: 2,
            duration: Duration::from_secs(options.load_seconds),
            script: &script,
            token_file: &tokens,
            start,
            headers: &[],
            // Not pinned: the scale cases measure memory and swap latency,
            // not a per-request CPU ratio.
            cpus: None,
            think_ms,
        }
        .run()
    };
    // Warm-up.
    wrk_run(0)?;
    let mut version = 1;
    let mut rounds = Vec::new();
    for round in 0..options.load_rounds {
        let quiet = wrk_run(round * 10)?;
        // Swaps during the run: as many as fit, one after the other.
        let docs: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                stack::bench_snapshot(version + 1 + i, 100, options.load_overrides).and_then(|d| {
                    let parsed = cell_router_mapping::binary::parse_any(d.to_json().as_bytes())
                        .map_err(|e| anyhow!("load snapshot: {e}"))?;
                    // As `cellmap build --binary-keys hashes` writes it.
                    cell_router_mapping::binary::encode_hashed(&parsed)
                        .map_err(|e| anyhow!("load snapshot: {e}"))
                })
            })
            .collect::<Result<_>>()?;
        let run_for = Duration::from_secs(options.load_seconds);
        // Read before the load: the admin answers slowly under it.
        let mut target = applied(&gateway.envoy);
        let load = std::thread::scope(|scope| {
            let handle = scope.spawn(|| wrk_run(round * 10 + 5));
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(500));
            let mut swaps = 0u64;
            for doc in &docs {
                if started.elapsed() + Duration::from_secs(3) > run_for {
                    break;
                }
                if publish(&gateway.source, doc).is_err() {
                    break;
                }
                version += 1;
                target += vms;
                let left = run_for.saturating_sub(started.elapsed());
                // Every 100 ms: the admin's stats dump runs on Envoy's
                // main thread and would add its own load to what is measured.
                if await_applied_every(&gateway.envoy, target, left, Duration::from_millis(100))
                    >= target
                    && started.elapsed() < run_for
                {
                    swaps += 1;
                }
            }
            handle
                .join()
                .map_err(|_| anyhow!("the wrk thread panicked"))
                .and_then(|r| r)
                .map(|swapping| (swapping, swaps))
        })?;
        // The last swap may end after the run: let it finish.
        gateway.await_version(version, e2e::VERSION_TIMEOUT)?;
        log(&format!(
            "  round {}: p99 quiet {:.2} ms, swapping {:.2} ms ({} swaps)",
            round + 1,
            quiet.p99_us as f64 / 1000.0,
            load.0.p99_us as f64 / 1000.0,
            load.1
        ));
        rounds.push(LoadRound {
            quiet,
            swapping: load.0,
            swaps: load.1,
        });
    }
    Ok(LoadRun {
        concurrency,
        think_ms,
        overrides: options.load_overrides,
        connections: options.connections,
        seconds: options.load_seconds,
        rounds,
    })
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / MIB)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

impl ScaleReport {
    /// The goal table and the measurements, as a BENCHMARKS.md section.
    pub fn markdown(&self, command: &str) -> String {
        let mut w = String::new();
        let _ = writeln!(w, "{SECTION_BEGIN}");
        let _ = writeln!(w, "## Scale: ten million overrides (issue #15)\n");
        let _ = writeln!(
            w,
            "Measured {}. Written by `{command}` (`tests/harness/src/bench/scale.rs`, which says how \
             each figure is taken). Each gateway is `envoy/envoy.yaml` (Wasm) or \
             `envoy/envoy-native.yaml` (native) with its own sidecar; Envoy's \
             `http.async_response_buffer_limit`, `sidecar.max_snapshot_bytes` and \
             `cellmap serve --max-body-bytes` are raised together for the big snapshot. \
             *Published*: the sidecar answers a long-poll with the new version. On a \
             shared 2-core machine: times include waiting for a core.\n",
            self.measured
        );
        let _ = writeln!(w, "| goal | measured | met? |");
        let _ = writeln!(w, "|---|---|---|");
        match &self.mid {
            Some(run) => {
                let per_vm = run.per_vm_outside_heap();
                let _ = writeln!(
                    w,
                    "| {} overrides: resident per Wasm VM after two swaps ≤ 32 MiB (concurrency 2) | {} outside Envoy's heap ({} of RSS growth over {} VMs, Envoy's heap included) | {} |",
                    run.overrides,
                    per_vm.map_or("–".into(), mib),
                    run.per_vm().map_or("–".into(), mib),
                    run.vms,
                    verdict(per_vm.map(|b| b <= 32.0 * MIB))
                );
                let slowest = run.slowest_apply_ms();
                let _ = writeln!(
                    w,
                    "| {} overrides: apply per VM ≤ 100 ms | the most a VM spent on one swap: {} of its own time (spread on purpose: first piece to in force took at most {}, the check at most {} ms; pieces over ≥ 0.4 s, checks in 0.2 ms slices while serving; a VM that trusts another's check waits for it) | {} |",
                    run.overrides,
                    run.most_work_ms()
                        .map_or("–".into(), |ms| format!("{ms:.0} ms")),
                    slowest.map_or("–".into(), |(total, _)| format!("{total} ms")),
                    run.slowest_check_ms()
                        .map_or("–".into(), |ms| ms.to_string()),
                    verdict(run.most_work_ms().map(|ms| ms <= 100.0))
                );
                let worst = run.worst_propagation_ms();
                let _ = writeln!(
                    w,
                    "| propagation of a {}-override snapshot to every worker ≤ 1 s | {} (published → every worker routing, worst of {} swaps) | {} |",
                    run.overrides,
                    worst.map_or("–".into(), |ms| format!("{ms:.0} ms")),
                    run.swaps.len(),
                    verdict(worst.map(|ms| ms <= 1000.0))
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "| 1,000,000 overrides per Wasm VM | not measured | not measured |"
                );
            }
        }
        for run in &self.wasm {
            let c = run.concurrency;
            let works = !run.swaps.is_empty();
            let _ = writeln!(
                w,
                "| {} overrides in the Wasm build (concurrency {c}) work | every VM applied it twice, every worker routed by it | {} |",
                run.overrides,
                verdict(Some(works))
            );
            let per_vm = run.per_vm_outside_heap();
            let _ = writeln!(
                w,
                "| per VM ≤ 256 MiB (concurrency {c}) | {} outside Envoy's heap ({} of RSS growth over {} VMs, Envoy's heap included) | {} |",
                per_vm.map_or("–".into(), mib),
                run.per_vm().map_or("–".into(), mib),
                run.vms,
                verdict(per_vm.map(|b| b <= 256.0 * MIB))
            );
            let worst = run.worst_propagation_ms();
            let _ = writeln!(
                w,
                "| every worker routes by it ≤ 3 s after publish (concurrency {c}) | {} (worst of {} swaps) | {} |",
                worst.map_or("–".into(), |ms| format!("{:.1} s", ms / 1000.0)),
                run.swaps.len(),
                verdict(worst.map(|ms| ms <= 3000.0))
            );
        }
        if self.wasm.is_empty() {
            let _ = writeln!(
                w,
                "| 10,000,000 overrides in the Wasm build | not measured | not measured |"
            );
        }
        for load in &self.load {
            let _ = writeln!(
                w,
                "| p99 during {}-override swaps ≤ 1.5 × p99 without ({}) | {} (median of the rounds' ratios, lowest and highest round in brackets; median p99 {:.2} ms vs {:.2} ms) | {} |",
                load.overrides,
                load.pacing(),
                match (load.ratio(), load.ratio_spread()) {
                    (Some(r), Some((lo, hi))) => format!("{r:.2} × [{lo:.2}–{hi:.2}]"),
                    _ => "–".into(),
                },
                load.p99_ms(|r| &r.swapping).unwrap_or(0.0),
                load.p99_ms(|r| &r.quiet).unwrap_or(0.0),
                verdict(load.ratio().map(|r| r <= 1.5))
            );
        }
        if self.load.is_empty() {
            let _ = writeln!(
                w,
                "| p99 during 1 M swaps ≤ 1.5 × p99 without | not measured | not measured |"
            );
        }
        match &self.native {
            Some(run) => {
                let ratio = run.rss_growth().map(|g| g / run.binary_bytes as f64);
                let _ = writeln!(
                    w,
                    "| native: {} overrides, RSS growth ≤ 1.3 × the snapshot | {} (growth {}, binary form {}) | {} |",
                    run.overrides,
                    ratio.map_or("–".into(), |r| format!("{r:.2} ×")),
                    run.rss_growth().map_or("–".into(), mib),
                    mib(run.binary_bytes as f64),
                    verdict(ratio.map(|r| r <= 1.3))
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "| native: RSS growth ≤ 1.3 × the snapshot | not measured | not measured |"
                );
            }
        }
        let _ = writeln!(w);
        let runs: Vec<&BigRun> = self
            .mid
            .iter()
            .chain(&self.wasm)
            .chain(self.native.as_ref())
            .collect();
        if !runs.is_empty() {
            let _ = writeln!(
                w,
                "Big-snapshot swaps (the binary form the sidecar serves, keyed by hash: {}; RSS before is with a 100-tenant snapshot). *VMs: download / check / work ms*: each VM's own log line (from the first piece to the last; from the last to the snapshot in force; the VM's own time on it).\n",
                {
                    let mut sizes: Vec<String> = runs
                        .iter()
                        .map(|r| {
                            format!("{} overrides {}", r.overrides, mib(r.binary_bytes as f64))
                        })
                        .collect();
                    sizes.dedup();
                    sizes.join(", ")
                }
            );
            let _ = writeln!(
                w,
                "| build | overrides | concurrency | VMs | version | file → published ms | published → every VM applied ms | published → every worker routing ms | VMs: download / check / work ms | RSS before | RSS after | Envoy heap before → after | high-water mark in the swap |"
            );
            let _ = writeln!(
                w,
                "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
            );
            for run in runs {
                for s in &run.swaps {
                    let per_vm = if s.vm_download_check_ms.is_empty() {
                        "–".to_string()
                    } else {
                        s.vm_download_check_ms
                            .iter()
                            .enumerate()
                            .map(|(i, (d, c))| match s.vm_work_ms.get(i) {
                                Some(work) => format!("{d} / {c} / {work:.0}"),
                                None => format!("{d} / {c} / –"),
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {per_vm} | {} | {} | {} → {} | {} |",
                        run.build,
                        run.overrides,
                        run.concurrency,
                        run.vms,
                        s.version,
                        s.file_to_sidecar_ms,
                        s.sidecar_to_every_vm_ms,
                        s.sidecar_to_every_worker_ms,
                        mib(s.rss_before as f64),
                        mib(s.rss_after as f64),
                        mib(s.heap_before as f64),
                        mib(s.heap_after as f64),
                        mib(s.high_water as f64)
                    );
                }
                if let (Some(hw), Some(last)) = (run.high_water(), run.swaps.last()) {
                    let _ = writeln!(
                        w,
                        "| | | | | swap peak over the steady state | | | | | | | | {} ({} per VM) |",
                        mib(hw as f64 - last.rss_after as f64),
                        mib((hw as f64 - last.rss_after as f64) / run.vms.max(1) as f64)
                    );
                }
            }
            let _ = writeln!(w);
        }
        for load in &self.load {
            let _ = writeln!(
                w,
                "Load ({}): wrk, {} connections, {} s per run, HS256 tokens, Wasm build at \
                 concurrency {}; each round is a run without swaps, then a run during which \
                 {}-override snapshots (the binary form) are published one after the other.\n",
                load.pacing(),
                load.connections,
                load.seconds,
                load.concurrency,
                load.overrides
            );
            let _ = writeln!(
                w,
                "| round | p99 quiet ms | p99 swapping ms | ratio | swaps in the run | requests/s quiet | requests/s swapping | errors |"
            );
            let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|");
            for (i, r) in load.rounds.iter().enumerate() {
                let ratio = if r.quiet.p99_us > 0 {
                    format!("{:.2}", r.swapping.p99_us as f64 / r.quiet.p99_us as f64)
                } else {
                    "–".into()
                };
                let _ = writeln!(
                    w,
                    "| {} | {:.2} | {:.2} | {ratio} | {} | {:.0} | {:.0} | {} |",
                    i + 1,
                    r.quiet.p99_us as f64 / 1000.0,
                    r.swapping.p99_us as f64 / 1000.0,
                    r.swaps,
                    r.quiet.requests_per_s(),
                    r.swapping.requests_per_s(),
                    r.quiet.errors() + r.swapping.errors()
                );
            }
            let _ = writeln!(w);
        }
        for failure in &self.failures {
            let _ = writeln!(w, "- not measured: {}", failure.replace('\n', " "));
        }
        if !self.failures.is_empty() {
            let _ = writeln!(w);
        }
        let _ = writeln!(w, "{SECTION_END}");
        w
    }
}

/// `report` with the scale section replaced by `section` (appended when it
/// has none).
pub fn splice(report: &str, section: &str) -> String {
    match (report.find(SECTION_BEGIN), report.find(SECTION_END)) {
        (Some(begin), Some(end)) if end > begin => {
            let end = end + SECTION_END.len();
            let rest = report[end..].strip_prefix('\n').unwrap_or(&report[end..]);
            format!("{}{section}{rest}", &report[..begin])
        }
        _ => {
            let sep = if report.ends_with("\n\n") || report.is_empty() {
                ""
            } else if report.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{report}{sep}{section}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_lines_give_download_check_and_work() {
        let log = "[info] wasm log: cell-router: snapshot version 7 applied from the sidecar (3 cells; 12131571 bytes in 12 piece(s) over 381 ms, checked in 143 ms; 31.4 ms of work in this VM)\n\
                   [info] wasm log: cell-router: snapshot version 7 applied from the sidecar (3 cells; 12131571 bytes in 12 piece(s) over 384 ms, checked in 12 ms (records already checked by another VM of this Envoy); 9.0 ms of work in this VM)\n\
                   [info] wasm log: cell-router: snapshot version 8 applied from the sidecar (3 cells; 1 bytes in 1 piece(s) over 0 ms, checked in 0 ms; 0.1 ms of work in this VM)\n";
        assert_eq!(apply_times(log, 7), [(381, 143), (384, 12)]);
        assert_eq!(work_times(log, 7), [31.4, 9.0]);
        assert_eq!(work_times(log, 9), Vec::<f64>::new());
    }

    #[test]
    fn the_section_is_replaced_or_appended() {
        let section = format!("{SECTION_BEGIN}\nnew\n{SECTION_END}\n");
        let appended = splice("# Report\n", &section);
        assert_eq!(appended, format!("# Report\n\n{section}"));
        let old = format!("# Report\n\n{SECTION_BEGIN}\nold\n{SECTION_END}\n\n## After\n");
        assert_eq!(
            splice(&old, &section),
            format!("# Report\n\n{section}\n## After\n")
        );
    }
}
