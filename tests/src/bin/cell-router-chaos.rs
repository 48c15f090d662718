//! Chaos under load: wrk drives signed requests for many tenants through real
//! Envoy (the filter, `envoy/envoy.yaml`) while the snapshot at the source
//! flips every 100 ms, bad snapshots are injected, and the sidecar is
//! SIGKILLed and restarted. The cell backends judge every request against the
//! snapshot version it carried (`cell-backend --check-snapshots`), so a
//! misroute is a request served by any cell other than the one its own
//! version gives its tenant.
//!
//! Every snapshot is active-only (or a disabled cell with a failover), with no
//! draining cell and no gradual move, so each request has exactly one right
//! answer: a 200 from that cell. Any misroute, 5xx or other non-2xx fails the
//! run (exit 1).
//!
//! `cell-router-chaos --duration 20s [--json report.json]`; needs Envoy,
//! `cellmap` and the filter as the end-to-end tests do (`ENVOY_BIN`,
//! `CELLMAP_BIN`, `CELL_ROUTER_WASM`, or their `make` locations).

use anyhow::{Context, Result, anyhow, bail};
use cell_router_mapping::SnapshotDoc;
use cell_router_mapping::snapshot::encode_slot_table;
use cell_router_tests::e2e::{
    self, Backends, Envoy, EnvoyOptions, Gateway, Process, Sidecar, client,
};
use cell_router_tests::fixtures::{self, bearer};
use cell_router_tests::rng::SplitMix64;
use cell_router_tests::tokens::Alg;
use clap::Parser;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Chaos under load through real Envoy: snapshot flips, bad snapshots, \
                   sidecar kills; counts misroutes and unintended 5xx (both must be 0)"
)]
struct Args {
    /// How long wrk drives load (e.g. 20s, 1m; whole seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Tenants, each with its own pre-minted HS256 token.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// wrk connections (keep-alive; spread over Envoy's workers).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    wrk_threads: u32,
    /// Envoy worker threads (each runs its own Wasm VM).
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// A new snapshot version is published this often.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    flip_every: Duration,
    /// A bad snapshot is injected this often (kinds in turn: invalid JSON,
    /// failover loop, older version, same version with other content).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    bad_every: Duration,
    /// How long a bad snapshot stays at the source (flips pause meanwhile),
    /// so the sidecar's file watch (every 100 ms) surely reads it.
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    bad_hold: Duration,
    /// The sidecar is SIGKILLed this often (the first time at a third of the
    /// run, at most 3 s in).
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    kill_every: Duration,
    /// How long the sidecar stays dead before it restarts on the same port.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    down_for: Duration,
    /// Seed for the generated snapshots.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 20s, 1m, 500ms)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
/// The header naming the tenant for the checker (the router ignores it).
const TENANT_HEADER: &str = "x-test-tenant";

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            print!("{}", report.text());
            if let Some(path) = &args.json
                && let Err(err) = std::fs::write(path, report.json.to_string())
            {
                eprintln!("cell-router-chaos: writing {}: {err}", path.display());
                std::process::exit(2);
            }
            if !report.failures.is_empty() {
                std::process::exit(1);
            }
        }
        Err(err) => {
            eprintln!("cell-router-chaos: {err:#}");
            std::process::exit(2);
        }
    }
}

fn tenant_name(i: usize) -> String {
    format!("chaos-{i:04}")
}

/// Versions 1..=count that move tenants between cells: slot ranges change
/// hands (as a weight change would move them), overrides come and go, and
/// now and then cell-a or cell-b is disabled and fails over. Never a draining
/// cell or a gradual move: each version gives each tenant exactly one cell.
fn generate_versions(count: u64, tenants: usize, seed: u64) -> Vec<SnapshotDoc> {
    let mut rng = SplitMix64::new(seed);
    let slots = fixtures::SLOTS as usize;
    let mut table: Vec<u16> = (0..slots).map(|i| (i % CELLS.len()) as u16).collect();
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for version in 1..=count {
        if version > 1 {
            for _ in 0..1 + rng.index(3) {
                let len = 16 + rng.index(240);
                let start = rng.index(slots);
                let cell = rng.index(CELLS.len()) as u16;
                let end = (start + len).min(slots);
                table[start..end].fill(cell);
            }
            if version % 10 == 0 {
                // A reweighting: contiguous blocks in proportion to new weights.
                let weights: Vec<usize> = (0..CELLS.len()).map(|_| 1 + rng.index(4)).collect();
                let total: usize = weights.iter().sum();
                let mut at = 0;
                for (cell, w) in weights.iter().enumerate() {
                    let end = if cell + 1 == CELLS.len() {
                        slots
                    } else {
                        at + slots * w / total
                    };
                    for slot in &mut table[at..end] {
                        *slot = cell as u16;
                    }
                    at = end;
                }
            }
            let keys: Vec<String> = overrides.keys().cloned().collect();
            for _ in 0..keys.len().min(15) {
                if let Some(key) = keys.get(rng.index(keys.len())) {
                    overrides.remove(key);
                }
            }
            for _ in 0..20 {
                let tenant = tenant_name(rng.index(tenants));
                let cell = CELLS[rng.index(CELLS.len())];
                overrides.insert(tenant, cell.to_string());
            }
        }
        let mut cells = vec![
            fixtures::cell("cell-a"),
            fixtures::cell("cell-b"),
            fixtures::cell("cell-c"),
        ];
        cells[0].failover = Some("cell-b".into());
        cells[1].failover = Some("cell-c".into());
        match version % 13 {
            5 => cells[0] = fixtures::disabled("cell-a", Some("cell-b")),
            11 => cells[1] = fixtures::disabled("cell-b", Some("cell-c")),
            _ => {}
        }
        let mut doc = fixtures::snapshot_with(version, cells);
        doc.slot_table = encode_slot_table(&table);
        doc.overrides = overrides.clone();
        out.push(doc);
    }
    out
}

/// The bad snapshots, each of which the sidecar must refuse.
#[derive(Clone, Copy, Debug)]
enum Bad {
    InvalidJson,
    FailoverLoop,
    OlderVersion,
    SameVersionOtherContent,
}

impl Bad {
    const ALL: [Bad; 4] = [
        Bad::InvalidJson,
        Bad::FailoverLoop,
        Bad::OlderVersion,
        Bad::SameVersionOtherContent,
    ];

    fn name(self) -> &'static str {
        match self {
            Bad::InvalidJson => "invalid_json",
            Bad::FailoverLoop => "failover_loop",
            Bad::OlderVersion => "older_version",
            Bad::SameVersionOtherContent => "same_version_other_content",
        }
    }

    /// The bad document, given the good one the sidecar serves. Each would
    /// route differently (or not at all) if it were ever taken, so the
    /// checker would see it.
    fn bytes(self, served: &SnapshotDoc) -> Vec<u8> {
        let rotated = |doc: &mut SnapshotDoc| {
            let table: Vec<u16> = (0..fixtures::SLOTS as usize)
                .map(|i| ((i + 1) % CELLS.len()) as u16)
                .collect();
            doc.slot_table = encode_slot_table(&table);
            doc.overrides.clear();
        };
        match self {
            Bad::InvalidJson => format!(
                "{{\"version\": {}, \"cells\": [{{\"id\": ",
                served.version + 1
            )
            .into_bytes(),
            Bad::FailoverLoop => {
                let mut doc = served.clone();
                doc.version += 1;
                doc.cells[0] = fixtures::disabled("cell-a", Some("cell-b"));
                doc.cells[1] = fixtures::disabled("cell-b", Some("cell-a"));
                doc.to_json().into_bytes()
            }
            Bad::OlderVersion => {
                let mut doc = served.clone();
                doc.version = served.version.saturating_sub(1).max(1);
                rotated(&mut doc);
                doc.to_json().into_bytes()
            }
            Bad::SameVersionOtherContent => {
                let mut doc = served.clone();
                rotated(&mut doc);
                doc.to_json().into_bytes()
            }
        }
    }
}

/// Replaces `path` atomically (temporary file, then rename) as a control
/// plane would. Unlike `e2e::publish` there is no fsync: readers see the
/// rename at once, and on a busy machine an fsync every 100 ms stalls the
/// timeline for seconds.
fn publish(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What the sidecar's `/healthz` says.
#[derive(Clone, Copy, Debug, Default)]
struct Health {
    version: Option<u64>,
    refused: u64,
}

fn sidecar_health(port: u16) -> Option<Health> {
    let reply = e2e::get(&client(), &format!("http://127.0.0.1:{port}/healthz"), &[]).ok()?;
    let body = reply.json().ok()?;
    Some(Health {
        version: body["version"].as_u64(),
        refused: body["refused"].as_u64()?,
    })
}

/// The checker's counters (any backend port answers for all cells).
fn checker_report(backends: &Backends) -> Result<Value> {
    let port = backends.cells.first().map(|(_, p)| *p).unwrap_or(0);
    e2e::get(&client(), &format!("http://127.0.0.1:{port}/__chaos"), &[])?.json()
}

fn newest_seen(backends: &Backends) -> u64 {
    checker_report(backends)
        .ok()
        .and_then(|r| r["versions_seen"].as_array()?.last()?.as_u64())
        .unwrap_or(0)
}

fn checked_so_far(backends: &Backends) -> u64 {
    checker_report(backends)
        .ok()
        .and_then(|r| r["checked"].as_u64())
        .unwrap_or(0)
}

#[derive(Debug)]
struct Injection {
    kind: Bad,
    at_s: f64,
    served_before: Option<u64>,
    served_after: Option<u64>,
    refused: bool,
}

#[derive(Debug)]
struct Kill {
    at_s: f64,
    down_s: f64,
    /// Requests judged by the backends while the sidecar was dead.
    served_while_down: u64,
    /// The newest version published before the restart: a version above it
    /// seen later means updates resumed.
    published_before_restart: u64,
    /// From the restart until the backends first saw a newer version.
    resumed_after_s: Option<f64>,
}

/// The wrk script: each request takes the next of the pre-minted tokens (a
/// different stride per thread) and names its tenant for the checker;
/// `done` prints the status counts and errors as one parsable line.
fn wrk_script(tenants: &[String], tokens: &[String]) -> String {
    let mut lua = String::from("local pairs_ = {\n");
    for (tenant, token) in tenants.iter().zip(tokens) {
        let _ = writeln!(lua, "  {{\"{tenant}\", \"{}\"}},", bearer(token));
    }
    lua.push_str(
        r#"}
local n = #pairs_
local at = 0
local stride = 1
statuses = {}
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  -- Coprime strides so threads do not walk the tenants in step.
  local strides = {1, 7, 11, 13, 17, 19, 23, 29}
  stride = strides[((id or 1) - 1) % #strides + 1]
  at = (id or 1) * 97
end

function request()
  at = (at + stride) % n
  local p = pairs_[at + 1]
  wrk.headers["authorization"] = p[2]
  wrk.headers["TENANT_HEADER"] = p[1]
  return wrk.format("GET", "/")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses") or {}
    for status, count in pairs(counts) do
      total[status] = (total[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, status .. "=" .. count)
  end
  io.write("CHAOS-STATUS " .. table.concat(parts, " ") .. "\n")
  io.write(string.format(
    "CHAOS-SUMMARY requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#,
    );
    lua.replace("TENANT_HEADER", TENANT_HEADER)
}

/// wrk's numbers, from the `done` lines of the script.
#[derive(Debug, Default)]
struct Load {
    requests: u64,
    duration_s: f64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn parse_wrk(output: &str) -> Result<Load> {
    let mut load = Load::default();
    let status_line = output
        .lines()
        .find_map(|l| l.strip_prefix("CHAOS-STATUS"))
        .ok_or_else(|| anyhow!("wrk printed no CHAOS-STATUS line:\n{output}"))?;
    for pair in status_line.split_whitespace() {
        let (status, count) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("bad status pair {pair:?}"))?;
        load.statuses.insert(status.parse()?, count.parse()?);
    }
    let summary = output
        .lines()
        .find_map(|l| l.strip_prefix("CHAOS-SUMMARY"))
        .ok_or_else(|| anyhow!("wrk printed no CHAOS-SUMMARY line:\n{output}"))?;
    let mut fields = BTreeMap::new();
    for pair in summary.split_whitespace() {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k.to_string(), v.parse::<u64>()?);
        }
    }
    let field = |k: &str| fields.get(k).copied().unwrap_or(0);
    load.requests = field("requests");
    load.duration_s = field("duration_us") as f64 / 1e6;
    for kind in ["connect", "read", "write", "timeout"] {
        load.errors.insert(kind.to_string(), field(kind));
    }
    load.p50_ms = field("p50_us") as f64 / 1e3;
    load.p99_ms = field("p99_us") as f64 / 1e3;
    load.max_ms = field("max_us") as f64 / 1e3;
    Ok(load)
}

struct Report {
    json: Value,
    failures: Vec<String>,
}

impl Report {
    fn text(&self) -> String {
        let j = &self.json;
        let mut out = String::new();
        let statuses = j["statuses"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let non_2xx = j["non_2xx_by_status"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(out, "\ncell-router chaos under load");
        let _ = writeln!(
            out,
            "  load         wrk {} threads, {} connections, {} tenants (HS256), Envoy concurrency {}",
            j["wrk_threads"], j["connections"], j["tenants"], j["envoy_concurrency"]
        );
        let _ = writeln!(
            out,
            "  duration     {:.1} s",
            j["duration_s"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            out,
            "  requests     {} ({:.0} req/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms)",
            j["requests"],
            j["rps"].as_f64().unwrap_or(0.0),
            j["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            j["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            j["latency_ms"]["max"].as_f64().unwrap_or(0.0),
        );
        let _ = writeln!(out, "  statuses     {statuses}");
        let _ = writeln!(out, "  non-2xx      {non_2xx}");
        let _ = writeln!(out, "  5xx          {}", j["unintended_5xx"]);
        let _ = writeln!(
            out,
            "  socket errs  connect {}, read {}, write {}, timeout {}",
            j["socket_errors"]["connect"],
            j["socket_errors"]["read"],
            j["socket_errors"]["write"],
            j["socket_errors"]["timeout"]
        );
        let _ = writeln!(
            out,
            "  snapshots    {} versions published (one per {} ms; timeline at most {} ms late), {} distinct versions seen by the backends (v{}..v{})",
            j["versions_published"],
            j["flip_every_ms"],
            j["timeline_max_lag_ms"],
            j["versions_seen"],
            j["first_version_seen"],
            j["last_version_seen"]
        );
        let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for i in j["bad_snapshots"].as_array().into_iter().flatten() {
            let entry = by_kind
                .entry(i["kind"].as_str().unwrap_or("?"))
                .or_default();
            entry.0 += 1;
            if i["refused"] == true {
                entry.1 += 1;
            }
        }
        let injections = by_kind
            .iter()
            .map(|(kind, (injected, refused))| format!("{kind} {refused}/{injected}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "  bad          {} injected, {} refused by the sidecar (refused/injected: {injections})",
            j["bad_injected"], j["bad_refused"]
        );
        let _ = writeln!(
            out,
            "  sidecar      {} SIGKILLs, each restarted on the same port",
            j["sidecar_kill_count"]
        );
        for k in j["sidecar_kills"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    at {:4.1} s, down {:.1} s: {} requests served meanwhile; updates {}",
                k["at_s"].as_f64().unwrap_or(0.0),
                k["down_s"].as_f64().unwrap_or(0.0),
                k["served_while_down"],
                match (k["updates_resumed"] == true, k["resumed_after_s"].as_f64()) {
                    (true, Some(s)) => format!("resumed {s:.2} s after the restart"),
                    (true, None) => "resumed".to_string(),
                    (false, _) => "DID NOT RESUME".to_string(),
                }
            );
        }
        let _ = writeln!(
            out,
            "  filter       snapshots applied {}, refused {}, fetch failures {} (Envoy stats, both workers)",
            j["filter"]["applied"], j["filter"]["refused"], j["filter"]["fetch_failures"]
        );
        let _ = writeln!(
            out,
            "  checker      {} judged, {} correct, misroutes {}, unknown version {}, missing headers {}, 2xx not judged {}",
            j["checker"]["checked"],
            j["checker"]["correct"],
            j["misroutes"],
            j["checker"]["unknown_version"],
            j["checker"]["missing_headers"],
            j["unjudged_2xx"]
        );
        let trouble = j["envoy_upstream_trouble"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(out, "  upstreams    {trouble} (Envoy cluster counters)");
        let _ = writeln!(
            out,
            "  self-test    {} of {} deliberately mislabelled requests caught as misroutes (counted apart)",
            j["checker"]["canaries_caught"], j["checker"]["canaries"]
        );
        if let Some(samples) = j["checker"]["misroute_samples"].as_array()
            && !samples.is_empty()
        {
            let _ = writeln!(out, "  samples:");
            for s in samples {
                let _ = writeln!(out, "    {}", s.as_str().unwrap_or(""));
            }
        }
        let _ = writeln!(
            out,
            "  files        {}",
            j["work_dir"].as_str().unwrap_or("")
        );
        if self.failures.is_empty() {
            let _ = writeln!(out, "  verdict      PASS");
        } else {
            let _ = writeln!(out, "  verdict      FAIL");
            for f in &self.failures {
                let _ = writeln!(out, "    - {f}");
            }
        }
        out
    }
}

fn start_backends(dir: &Path, versions_dir: &Path) -> Result<Backends> {
    let mut command = Command::new(e2e::backend_bin()?);
    let mut cells = Vec::new();
    for cell in CELLS {
        let port = e2e::free_port()?;
        command
            .arg("--cell")
            .arg(format!("{cell}=127.0.0.1:{port}"));
        cells.push((cell.to_string(), port));
    }
    command
        .arg("--threads")
        .arg("6")
        .arg("--check-snapshots")
        .arg(versions_dir)
        .arg("--tenant-header")
        .arg(TENANT_HEADER);
    let process = Process::spawn("backends", command, dir)?;
    let backends = Backends { cells, process };
    if !e2e::wait_until(Duration::from_secs(20), || {
        checker_report(&backends).is_ok()
    }) {
        bail!("backends did not start\n{}", backends.process.log_tail(20));
    }
    Ok(backends)
}

/// Envoy cluster counters that explain a failed or slow upstream request.
const UPSTREAM_TROUBLE: [&str; 10] = [
    "upstream_rq_timeout",
    "upstream_rq_per_try_timeout",
    "upstream_rq_5xx",
    "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_rq_rx_reset",
    "upstream_rq_tx_reset",
    "upstream_rq_pending_overflow",
    "upstream_rq_retry",
];

/// Deliberately mislabelled requests the checker must catch.
const CANARIES: u64 = 20;

/// Proves the checker can see a misroute: requests whose token is one
/// tenant's but whose label names a tenant that `first` puts in another cell.
/// The backends count them apart (`x-chaos-canary`).
fn send_canaries(gateway: &Gateway, first: &SnapshotDoc, tenants: &[String]) -> Result<()> {
    let snapshot = fixtures::parsed(first);
    let cell_of = |t: &str| snapshot.resolve(t.as_bytes(), b"").routed_cell();
    let token_tenant = tenants.first().ok_or_else(|| anyhow!("no tenants"))?;
    let label = tenants
        .iter()
        .find(|t| cell_of(t) != cell_of(token_tenant))
        .ok_or_else(|| anyhow!("every tenant is in one cell"))?;
    let agent = client();
    for _ in 0..CANARIES {
        let reply = gateway.call(
            &agent,
            token_tenant,
            &[(TENANT_HEADER, label), ("x-chaos-canary", "1")],
        )?;
        if reply.status != 200 {
            bail!("canary request answered {}: {}", reply.status, reply.body);
        }
    }
    Ok(())
}

fn run(args: &Args) -> Result<Report> {
    if args.tenants == 0 || args.flip_every.is_zero() {
        bail!("--tenants and --flip-every must be above zero");
    }
    let dir = e2e::work_dir("chaos")?;
    let versions_dir = dir.join("versions");
    std::fs::create_dir_all(&versions_dir)?;

    // Enough versions for a flip every `flip_every` all run long, and spare.
    let count = (args.duration.as_secs_f64() / args.flip_every.as_secs_f64()).ceil() as u64 + 20;
    let docs = generate_versions(count, args.tenants, args.seed);
    let bodies: Vec<Vec<u8>> = docs.iter().map(|d| d.to_json().into_bytes()).collect();
    for (doc, body) in docs.iter().zip(&bodies) {
        std::fs::write(versions_dir.join(format!("v{:06}.json", doc.version)), body)?;
    }
    eprintln!(
        "chaos: {} versions in {}",
        docs.len(),
        versions_dir.display()
    );

    let backends = start_backends(&dir, &versions_dir)?;
    let source = dir.join("snapshot.json");
    publish(&source, &bodies[0])?;
    let sidecar = Sidecar::start(&dir, &source)?;
    let mut options = EnvoyOptions::new(&backends, sidecar.port);
    options.concurrency = args.concurrency;
    let envoy = Envoy::start(&dir, options)?;
    let mut gateway = Gateway {
        dir: dir.clone(),
        source: source.clone(),
        backends,
        sidecar,
        envoy,
    };
    if !gateway.wait_for_version(1, Duration::from_secs(20)) {
        bail!(
            "Envoy never routed by snapshot 1\n{}",
            gateway.envoy.process.log_tail(30)
        );
    }

    let tenants: Vec<String> = (0..args.tenants).map(tenant_name).collect();
    send_canaries(&gateway, &docs[0], &tenants)?;
    let now = fixtures::unix_now();
    let tokens: Vec<String> = tenants
        .iter()
        .map(|t| fixtures::token(Alg::HS256, now, t))
        .collect();
    let script = dir.join("chaos.lua");
    std::fs::write(&script, wrk_script(&tenants, &tokens))?;

    // wrk takes whole seconds.
    let load_secs = args.duration.as_secs_f64().ceil().max(1.0) as u64;
    let mut wrk_command = Command::new("wrk");
    wrk_command
        .arg("-t")
        .arg(args.wrk_threads.to_string())
        .arg("-c")
        .arg(args.connections.to_string())
        .arg("-d")
        .arg(format!("{}s", load_secs))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&script)
        .arg(gateway.envoy.url("/"));
    let mut wrk = Process::spawn("wrk", wrk_command, &dir)
        .context("wrk is needed (apt-get install wrk, or scripts/install-tools.sh wrk)")?;
    let started = Instant::now();
    eprintln!(
        "chaos: load for {load_secs} s through Envoy on :{}",
        gateway.envoy.port
    );

    // The timeline: flips, bad snapshots and kills, one at a time, so a bad
    // snapshot is never at the source when the sidecar (re)starts.
    let mut published: u64 = 1;
    let mut next_flip = started + args.flip_every;
    let mut next_bad = started + args.bad_every.min(Duration::from_secs(1));
    let mut next_kill = started + (args.duration / 3).min(Duration::from_secs(3));
    let mut injections: Vec<Injection> = Vec::new();
    let mut kills: Vec<Kill> = Vec::new();
    let mut bad_kind = 0usize;
    let end = started + Duration::from_secs(load_secs);
    let latest = |published: u64| {
        docs.get(published.saturating_sub(1) as usize)
            .ok_or_else(|| anyhow!("ran out of versions at {published}"))
    };
    let never = end + Duration::from_secs(3600);
    // How late the timeline ran (a starved machine shows here).
    let mut flip_lag = Duration::ZERO;
    // (kill, restarted at, newest version published before the restart)
    let mut awaiting_resume: Option<(usize, Instant, u64)> = None;
    while Instant::now() < end {
        if !wrk.is_running() {
            bail!("wrk stopped early\n{}", wrk.log_tail(30));
        }
        let now = Instant::now();
        // Too late in the run for another kill (restart and a flip after
        // it) or bad snapshot (its hold): none.
        if now >= next_kill && now + args.down_for + Duration::from_secs(1) >= end {
            next_kill = never;
        }
        if now >= next_bad && now + args.bad_hold >= end {
            next_bad = never;
        }
        if now >= next_kill {
            let checked_before = checked_so_far(&gateway.backends);
            gateway.sidecar.process.kill();
            let at_s = started.elapsed().as_secs_f64();
            eprintln!("chaos: {at_s:5.1} s sidecar SIGKILLed");
            let restart_at = Instant::now() + args.down_for;
            // The source keeps changing while the sidecar is dead.
            while Instant::now() < restart_at {
                let wake = next_flip.min(restart_at);
                std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                if Instant::now() >= next_flip {
                    if published < count {
                        published += 1;
                        publish(&source, &bodies[published as usize - 1])?;
                    }
                    next_flip += args.flip_every;
                }
            }
            let down_s = started.elapsed().as_secs_f64() - at_s;
            let served_while_down = checked_so_far(&gateway.backends) - checked_before;
            gateway.sidecar = Sidecar::start_on(&dir, &source, gateway.sidecar.port)?;
            eprintln!(
                "chaos: {:5.1} s sidecar restarted ({served_while_down} requests served while it was down)",
                started.elapsed().as_secs_f64()
            );
            kills.push(Kill {
                at_s,
                down_s,
                served_while_down,
                published_before_restart: published,
                resumed_after_s: None,
            });
            awaiting_resume = Some((kills.len() - 1, Instant::now(), published));
            // From now, not from the plan: a late event must not bunch the next ones.
            next_kill = Instant::now() + args.kill_every;
            next_flip = Instant::now() + args.flip_every;
            continue;
        }
        if now >= next_bad {
            let kind = Bad::ALL[bad_kind % Bad::ALL.len()];
            bad_kind += 1;
            // The sidecar must hold the newest good version first, or a
            // same-version document would rightly count as new.
            let port = gateway.sidecar.port;
            e2e::wait_until(Duration::from_secs(2), || {
                sidecar_health(port).and_then(|h| h.version) == Some(published)
            });
            let before = sidecar_health(port).unwrap_or_default();
            let at_s = started.elapsed().as_secs_f64();
            publish(&source, &kind.bytes(latest(published)?))?;
            let injected = Instant::now();
            // At least the hold; longer if a starved sidecar is slow to read it.
            e2e::wait_until(Duration::from_secs(3), || {
                sidecar_health(port).is_some_and(|h| h.refused > before.refused)
            });
            std::thread::sleep(args.bad_hold.saturating_sub(injected.elapsed()));
            let after = sidecar_health(port).unwrap_or_default();
            let refused = after.refused == before.refused + 1 && after.version == before.version;
            eprintln!(
                "chaos: {at_s:5.1} s bad snapshot {} {}",
                kind.name(),
                if refused { "refused" } else { "NOT refused" }
            );
            injections.push(Injection {
                kind,
                at_s,
                served_before: before.version,
                served_after: after.version,
                refused,
            });
            next_bad = Instant::now() + args.bad_every;
            // The next good version replaces it at once.
            next_flip = Instant::now();
            continue;
        }
        if now >= next_flip {
            flip_lag = flip_lag.max(now - next_flip);
            if let Some((kill, restarted, before)) = awaiting_resume
                && newest_seen(&gateway.backends) > before
            {
                if let Some(k) = kills.get_mut(kill) {
                    k.resumed_after_s = Some(restarted.elapsed().as_secs_f64());
                }
                awaiting_resume = None;
            }
            if published < count {
                published += 1;
                publish(&source, &bodies[published as usize - 1])?;
            }
            next_flip += args.flip_every;
            continue;
        }
        let wake = next_flip.min(next_bad).min(next_kill).min(end);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }

    // wrk stops itself after --duration; give it a bounded grace period.
    if !e2e::wait_until(Duration::from_secs(20), || !wrk.is_running()) {
        wrk.kill();
        bail!("wrk did not finish\n{}", wrk.log_tail(20));
    }
    let wrk_output = std::fs::read_to_string(dir.join("wrk.log"))?;
    let load = parse_wrk(&wrk_output).with_context(|| wrk.log_tail(30))?;
    // Let requests still in flight at the backends land before counting.
    std::thread::sleep(Duration::from_millis(200));
    let checker = checker_report(&gateway.backends)?;
    let stats = gateway.envoy.stats("cell_router").unwrap_or_default();
    // Where a stray 5xx or timeout came from, per upstream cluster.
    let upstream: BTreeMap<String, i64> = gateway
        .envoy
        .stats("upstream_")
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, value)| {
            *value > 0
                && UPSTREAM_TROUBLE
                    .iter()
                    .any(|t| name.ends_with(&format!(".{t}")))
        })
        .collect();
    let stat = |name: &str| {
        stats
            .get(&format!("wasmcustom.{name}"))
            .copied()
            .unwrap_or(0)
    };

    let seen: BTreeSet<u64> = checker["versions_seen"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let counter = |name: &str| checker[name].as_u64().unwrap_or(0);
    let ok_2xx: u64 = load
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, c)| c)
        .sum();
    let non_2xx: BTreeMap<String, u64> = load
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(s, c)| (s.to_string(), *c))
        .collect();
    let five_xx: u64 = load
        .statuses
        .iter()
        .filter(|(s, _)| (500..600).contains(*s))
        .map(|(_, c)| c)
        .sum();
    let misroutes = counter("misroutes");
    let unjudged_2xx = ok_2xx.saturating_sub(counter("checked"));
    let kills_json: Vec<Value> = kills
        .iter()
        .map(|k| {
            json!({
                "at_s": k.at_s,
                "down_s": k.down_s,
                "served_while_down": k.served_while_down,
                "published_before_restart": k.published_before_restart,
                "updates_resumed": seen.iter().any(|v| *v > k.published_before_restart),
                "resumed_after_s": k.resumed_after_s,
            })
        })
        .collect();
    let injections_json: Vec<Value> = injections
        .iter()
        .map(|i| {
            json!({
                "kind": i.kind.name(),
                "at_s": i.at_s,
                "served_before": i.served_before,
                "served_after": i.served_after,
                "refused": i.refused,
            })
        })
        .collect();
    let bad_refused = injections.iter().filter(|i| i.refused).count();

    let mut failures = Vec::new();
    if misroutes > 0 {
        failures.push(format!("{misroutes} misroutes"));
    }
    if five_xx > 0 {
        failures.push(format!("{five_xx} unintended 5xx"));
    }
    if !non_2xx.is_empty() {
        failures.push(format!("non-2xx responses: {non_2xx:?}"));
    }
    for name in ["unknown_version", "missing_headers"] {
        if counter(name) > 0 {
            failures.push(format!("{} requests with {name}", counter(name)));
        }
    }
    if unjudged_2xx > 0 {
        failures.push(format!(
            "{unjudged_2xx} 2xx answers that no checking backend judged"
        ));
    }
    if counter("canaries_caught") != CANARIES || counter("canaries") != CANARIES {
        failures.push(format!(
            "the checker caught {} of {} deliberately mislabelled requests ({CANARIES} sent)",
            counter("canaries_caught"),
            counter("canaries")
        ));
    }
    if load.requests == 0 {
        failures.push("no requests completed".into());
    }
    if seen.len() < 2 {
        failures.push(format!("backends saw only {} versions", seen.len()));
    }
    if bad_refused < injections.len() {
        failures.push(format!(
            "{} of {} bad snapshots were not refused",
            injections.len() - bad_refused,
            injections.len()
        ));
    }
    for k in &kills_json {
        if k["served_while_down"] == 0 {
            failures.push(format!(
                "no request was served while the sidecar was down: {k}"
            ));
        }
        if k["updates_resumed"] != true {
            failures.push(format!("updates did not resume after a restart: {k}"));
        }
    }

    let json = json!({
        "duration_s": load.duration_s,
        "requests": load.requests,
        "rps": if load.duration_s > 0.0 { load.requests as f64 / load.duration_s } else { 0.0 },
        "latency_ms": {"p50": load.p50_ms, "p99": load.p99_ms, "max": load.max_ms},
        "statuses": load.statuses.iter().map(|(s, c)| (s.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "non_2xx_by_status": non_2xx,
        "unintended_5xx": five_xx,
        "socket_errors": load.errors,
        "misroutes": misroutes,
        "unjudged_2xx": unjudged_2xx,
        "tenants": args.tenants,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "envoy_concurrency": args.concurrency,
        "flip_every_ms": args.flip_every.as_millis() as u64,
        "timeline_max_lag_ms": flip_lag.as_millis() as u64,
        "versions_published": published,
        "versions_seen": seen.len(),
        "first_version_seen": seen.first().copied().unwrap_or(0),
        "last_version_seen": seen.last().copied().unwrap_or(0),
        "bad_snapshots": injections_json,
        "bad_injected": injections.len(),
        "bad_refused": bad_refused,
        "sidecar_kills": kills_json,
        "sidecar_kill_count": kills.len(),
        "filter": {
            "applied": stat(fixtures::metric::SNAPSHOTS_APPLIED),
            "refused": stat(fixtures::metric::SNAPSHOTS_REFUSED),
            "fetch_failures": stat(fixtures::metric::FETCH_FAILURES),
        },
        "checker": checker,
        "envoy_upstream_trouble": upstream,
        "work_dir": dir.display().to_string(),
        "failures": failures,
    });
    Ok(Report { json, failures })
}
