//! The processes under test: the backend Envoy (cells that answer at once),
//! the sidecar, and one gateway Envoy per configuration, built on the e2e
//! harness (`crate::e2e`): free ports, config templates, stop on drop.

use super::cases::{DEFAULT_CELLS, Gateway, cell_id, plain_cell};
use super::pools::tenant;
use crate::e2e::{
    self, Backends, DEFAULT_ADMIN_PORT, DEFAULT_CELL_PORTS, Envoy, EnvoyOptions, Process,
};
use anyhow::{Context, Result, anyhow, bail};
use cell_router_kit::fixtures::Config;
use cell_router_kit::tokens::{Alg, Jwks};
use cell_router_mapping::builder::allocate_slots;
use cell_router_mapping::snapshot::encode_slot_table;
use cell_router_mapping::{CellDoc, CellState, HashDoc, Outcome, Snapshot, SnapshotDoc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The cells of the benchmark snapshot: the three the templates route to.
pub const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
pub const SLOTS: u32 = 65_536;
pub const HASH_KEY: &str = "5e0f2d1c3b4a69788796a5b4c3d2e1f0";
/// Header the jwt_authn configurations copy the tenant claim into.
pub const TENANT_HEADER: &str = "x-tenant-id";
/// The JWT algorithms the benchmark gateways accept.
pub const ALGS: [Alg; 3] = [Alg::HS256, Alg::RS256, Alg::ES256];
/// `envoy/bench/cell_lookup.lua` lines around the generated snapshot table.
pub const LUA_BEGIN: &str = "-- BEGIN SNAPSHOT";
pub const LUA_END: &str = "-- END SNAPSHOT";

pub fn bench_dir() -> PathBuf {
    e2e::repo_root().join("envoy/bench")
}

/// The benchmark snapshot: three equal cells over 65,536 slots; tenant `i`
/// of the first `tenants` has an override when `i % 10 == 0` (so both the
/// override and the hash path are measured), plus `extra_overrides` more
/// overrides for other tenants (the 1 M-override case).
pub fn bench_snapshot(version: u64, tenants: usize, extra_overrides: usize) -> Result<SnapshotDoc> {
    bench_snapshot_cells(
        version,
        tenants,
        extra_overrides,
        DEFAULT_CELLS,
        DEFAULT_CELLS,
    )
}

/// [`bench_snapshot`] with `cells` cells ([`cell_id`]), of which the first
/// `busy` take every tenant (equal weights); the others weigh 0, so they
/// are in the snapshot and take no tenant.
pub fn bench_snapshot_cells(
    version: u64,
    tenants: usize,
    extra_overrides: usize,
    cells: usize,
    busy: usize,
) -> Result<SnapshotDoc> {
    let ids: Vec<String> = (0..cells.max(1)).map(cell_id).collect();
    let busy = busy.clamp(1, ids.len());
    let busy_ids = ids.get(..busy).context("busy cells")?;
    let cells: Vec<CellDoc> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| CellDoc {
            id: id.to_string(),
            state: CellState::Active,
            weight: if i < busy { 1.0 } else { 0.0 },
            shed_ratio: 0.0,
            retry_after_s: 5,
            failover: None,
            ramp: None,
        })
        .collect();
    let table = allocate_slots(SLOTS, &cells, None).map_err(|e| anyhow!("slots: {e:?}"))?;
    let mut overrides = BTreeMap::new();
    for i in (0..tenants).step_by(10) {
        overrides.insert(
            tenant(i),
            busy_ids[(i / 10 + version as usize) % busy_ids.len()].clone(),
        );
    }
    for i in 0..extra_overrides {
        overrides.insert(format!("bulk-{i:07}"), busy_ids[i % busy_ids.len()].clone());
    }
    Ok(SnapshotDoc {
        version,
        generated_at: "2026-01-01T00:00:00Z".into(),
        hash: HashDoc {
            algorithm: "siphash-1-3".into(),
            key: HASH_KEY.into(),
            slots: SLOTS,
        },
        cells,
        slot_table: encode_slot_table(&table),
        overrides,
        pins: BTreeMap::new(),
        moves: Vec::new(),
    })
}

/// The cell each of the first `tenants` tenants is routed to.
pub fn expected_cells(doc: &SnapshotDoc, tenants: usize) -> Result<Vec<String>> {
    let snapshot =
        Snapshot::parse(doc.to_json().as_bytes()).map_err(|e| anyhow!("snapshot: {e:?}"))?;
    (0..tenants)
        .map(|i| {
            let r = snapshot.resolve(tenant(i).as_bytes(), &cell_router_mapping::Draws::default());
            match r.outcome {
                Outcome::Route { cell } => snapshot
                    .cell(cell)
                    .map(|c| c.id.clone())
                    .ok_or_else(|| anyhow!("no cell {cell}")),
                other => bail!("{} is not routed: {other:?}", tenant(i)),
            }
        })
        .collect()
}

/// The backend listener that serves the cell at `index`: the backend has
/// the three of [`CELLS`], and cell `i`'s cluster points at listener `i % 3`.
pub fn served_by(index: usize) -> &'static str {
    CELLS[index % CELLS.len()]
}

/// A gateway template with `cells` cell clusters: the template's three, and
/// for the cost-vs-cells rows [`cell_id`]`(3..cells)` appended after them
/// (cell `i` on backend port `18001 + i % 3`, which the renderer swaps for
/// the backend's). The template's last section must be its cell clusters.
pub fn with_cells(template: &str, cells: usize) -> Result<String> {
    if cells <= DEFAULT_CELLS {
        return Ok(template.to_string());
    }
    let last_cluster = template
        .lines()
        .rfind(|l| l.starts_with("  - name: "))
        .unwrap_or_default();
    if last_cluster != format!("  - name: {}", cell_id(DEFAULT_CELLS - 1)) {
        bail!("the template does not end with its cell clusters (last: {last_cluster:?})");
    }
    let mut out = template.trim_end().to_string();
    out.push('\n');
    for i in DEFAULT_CELLS..cells {
        let _ = write!(
            out,
            "  - name: {id}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {id}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
",
            id = cell_id(i),
            port = 18001 + i % CELLS.len()
        );
    }
    Ok(out)
}

/// A Lua string literal.
fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b}");
            }
        }
    }
    out.push('"');
    out
}

/// `envoy/bench/cell_lookup.lua` with its snapshot table replaced by `doc`.
pub fn render_lua(template: &str, doc: &SnapshotDoc) -> Result<String> {
    let begin = template
        .find(LUA_BEGIN)
        .ok_or_else(|| anyhow!("no `{LUA_BEGIN}` line"))?;
    let end = template
        .find(LUA_END)
        .ok_or_else(|| anyhow!("no `{LUA_END}` line"))?;
    let mut data = String::new();
    let _ = writeln!(data, "{LUA_BEGIN} (generated by cell-router-bench)");
    data.push_str("local SNAPSHOT = {\n");
    let _ = writeln!(data, "  version = {},", lua_str(&doc.version.to_string()));
    let _ = writeln!(data, "  key = {},", lua_str(&doc.hash.key));
    let _ = writeln!(data, "  slots = {},", doc.hash.slots);
    let _ = writeln!(data, "  slot_table = {},", lua_str(&doc.slot_table));
    data.push_str("  cells = {\n");
    for cell in &doc.cells {
        let failover = cell
            .failover
            .as_deref()
            .map(|f| format!(", failover = {}", lua_str(f)))
            .unwrap_or_default();
        let _ = writeln!(
            data,
            "    {{id = {}, state = {}{failover}}},",
            lua_str(&cell.id),
            lua_str(cell.state.as_str())
        );
    }
    data.push_str("  },\n");
    for (name, map) in [("overrides", &doc.overrides), ("pins", &doc.pins)] {
        let _ = writeln!(data, "  {name} = {{");
        for (tenant, cell) in map {
            let _ = writeln!(data, "    [{}] = {},", lua_str(tenant), lua_str(cell));
        }
        data.push_str("  },\n");
    }
    data.push_str("}\n");
    if !doc.moves.is_empty() {
        bail!("the Lua lookup does not implement moves");
    }
    Ok(format!("{}{data}{}", &template[..begin], &template[end..]))
}

/// The JWKS every benchmark gateway trusts (the test keys of [`ALGS`]).
pub fn bench_jwks() -> Value {
    ALGS.iter()
        .fold(Jwks::new(), |jwks, alg| jwks.with(*alg))
        .to_json()
}

fn sidecar_settings() -> Value {
    json!({
        "cluster": "cellmap|sidecar",
        "authority": "cellmap",
        "path": "/snapshot",
        "long_poll_s": 30,
        "timeout_ms": 35000
    })
}

/// The filter's configuration in a gateway (`None`: no filter). No gateway
/// here has an access log, so none writes the decision into filter state
/// (`filter_state: false`), as `jwt_authn` + Lua writes nothing either.
pub fn plugin_config(gateway: Gateway) -> Option<Value> {
    match gateway {
        Gateway::Router | Gateway::RouterUnique | Gateway::RouterNative => Some(
            Config::jwt(&ALGS)
                .set("jwks", bench_jwks())
                .set("filter_state", false)
                .sidecar_with(sidecar_settings())
                .value(),
        ),
        Gateway::TrustHeader => Some(
            Config::trust_header(TENANT_HEADER)
                .set("filter_state", false)
                .sidecar_with(sidecar_settings())
                .value(),
        ),
        _ => None,
    }
}

/// The JWKS and Lua files the templates name as `/etc/envoy/...`, written
/// for this run.
pub struct Files {
    pub jwks: PathBuf,
    pub lua: PathBuf,
    /// The probe filter's `.wasm` and the host calls it is to make.
    pub probe: Option<(PathBuf, String)>,
    /// The directory holding the native probe's `.so`.
    pub native_probe: Option<PathBuf>,
}

impl Files {
    pub fn write(dir: &Path, doc: &SnapshotDoc) -> Result<Files> {
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, serde_json::to_string_pretty(&bench_jwks())?)?;
        let lua_template = std::fs::read_to_string(bench_dir().join("cell_lookup.lua"))?;
        let lua = dir.join("cell_lookup.lua");
        std::fs::write(&lua, render_lua(&lua_template, doc)?)?;
        Ok(Files {
            jwks,
            lua,
            probe: None,
            native_probe: None,
        })
    }
}

/// A gateway's config template with the `/etc/envoy/` files pointed at this
/// run's copies (the Wasm path is `crate::e2e`'s job). The no-cache jwt_authn
/// variant drops `jwt_cache_config`: without it jwt_authn verifies every
/// request.
pub fn gateway_template(gateway: Gateway, files: &Files) -> Result<String> {
    let path = bench_dir().join(gateway.template());
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = text
        .replace("/etc/envoy/jwks.json", &files.jwks.display().to_string())
        .replace(
            "/etc/envoy/cell_lookup.lua",
            &files.lua.display().to_string(),
        );
    if gateway.is_native_probe() {
        let config = match gateway {
            Gateway::NativeProbeClear => "clear_route_cache",
            _ => "",
        };
        text = insert_first_filter(
            &text,
            &path,
            &NATIVE_PROBE_FILTER.replace("PROBE_CONFIG", config),
        )?;
    } else if gateway.is_probe() {
        let (wasm, calls) = files
            .probe
            .as_ref()
            .context("the probe filter was not built")?;
        let calls = match gateway {
            Gateway::ProbeCalls => calls.as_str(),
            Gateway::ProbeTable => "@header",
            _ => "",
        };
        let block = PROBE_FILTER
            .replace("PROBE_WASM", &wasm.display().to_string())
            .replace("PROBE_CALLS", calls);
        text = insert_first_filter(&text, &path, &block)?;
    }
    if gateway == Gateway::JwtLuaNoCache {
        let before = text.lines().count();
        text = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("jwt_cache_config:"))
            .collect::<Vec<_>>()
            .join("\n");
        if text.lines().count() + 1 != before {
            bail!("{}: expected one jwt_cache_config line", path.display());
        }
    }
    Ok(text)
}

/// `block` as the first of the template's HTTP filters.
fn insert_first_filter(text: &str, path: &Path, block: &str) -> Result<String> {
    let marker = "          http_filters:\n";
    if !text.contains(marker) {
        bail!("{}: no http_filters", path.display());
    }
    Ok(text.replacen(marker, &format!("{marker}{block}"), 1))
}

/// The native probe (`envoy/bench/native-probe`), inserted first in
/// plain.yaml's filter chain; Envoy finds its `.so` through
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
const NATIVE_PROBE_FILTER: &str = r#"          - name: native_probe
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                name: cell_router_bench_native_probe
              filter_name: native_probe
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: "PROBE_CONFIG"
"#;

/// The probe filter, inserted first in plain.yaml's filter chain (a
/// measuring instrument, so it has no config file of its own).
const PROBE_FILTER: &str = r#"          - name: probe
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: probe
                root_id: probe
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: probe
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: PROBE_WASM}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "PROBE_CALLS"
"#;

/// Starts the backend Envoy from `envoy/bench/backend.yaml` on free ports;
/// it stands in for [`Backends`] so gateways route to it.
pub fn start_backend(dir: &Path, concurrency: u32) -> Result<Backends> {
    let template = std::fs::read_to_string(bench_dir().join("backend.yaml"))?;
    let admin = e2e::free_port()?;
    let mut ports = HashMap::from([(DEFAULT_ADMIN_PORT, admin)]);
    let mut cells = Vec::new();
    for (cell, default_port) in DEFAULT_CELL_PORTS {
        let port = e2e::free_port()?;
        ports.insert(default_port, port);
        cells.push((cell.to_string(), port));
    }
    let config = dir.join("backend.yaml");
    std::fs::write(
        &config,
        e2e::render_envoy_config(&template, &ports, Path::new("unused.wasm"), None)?,
    )?;
    let mut command = Command::new(e2e::envoy_bin()?);
    command
        .arg("-c")
        .arg(&config)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg("warn");
    let mut process = Process::spawn("backend-envoy", command, dir)?;
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let agent = e2e::client();
    let mut last = String::from("no answer");
    let up = e2e::wait_until(e2e::START_TIMEOUT, || {
        let reply = e2e::get(&agent, &ready, &[]);
        last = match &reply {
            Ok(r) => format!("HTTP {}", r.status),
            Err(err) => format!("{err:#}"),
        };
        reply.is_ok_and(|r| r.status == 200) || !process.is_running_shared()
    });
    if !up || !process.is_running() {
        bail!(
            "backend Envoy did not become ready within {:?} (last /ready: {last})\n{}",
            e2e::START_TIMEOUT,
            process.log_tail(30)
        );
    }
    Ok(Backends { cells, process })
}

/// Starts one gateway Envoy (`concurrency` workers).
pub fn start_gateway(
    dir: &Path,
    gateway: Gateway,
    cells: usize,
    backends: &Backends,
    sidecar_port: u16,
    files: &Files,
    concurrency: u32,
) -> Result<Envoy> {
    let template = dir.join(format!("{}-{cells}.template.yaml", gateway.name()));
    std::fs::write(
        &template,
        with_cells(&gateway_template(gateway, files)?, cells)?,
    )?;
    let mut options = EnvoyOptions::new(backends, sidecar_port);
    if gateway == Gateway::RouterNative {
        // The module's search path and the sidecar's address (the native
        // module subscribes from its own thread, not through a cluster).
        options.use_native_build();
    }
    if gateway.is_native_probe() {
        let dir = files
            .native_probe
            .as_ref()
            .context("the native probe was not built")?;
        options.env.push((
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH".into(),
            dir.display().to_string(),
        ));
    }
    options.template = template;
    options.concurrency = concurrency;
    options.plugin_config = plugin_config(gateway);
    let envoy = Envoy::start(dir, options)
        .with_context(|| format!("starting gateway {} ({cells} cells)", gateway.name()))?;
    Ok(envoy)
}

/// Where the processes run when the benchmark pins them (`taskset`): every
/// gateway Envoy on the first core, the client, the backend, the sidecars
/// and the benchmark itself on the second, so the gateway under test has a
/// core to itself and its CPU time per request is not inflated by sharing
/// one with the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinning {
    pub gateway_cpus: String,
    pub other_cpus: String,
}

impl Pinning {
    /// Two cores or more: the gateways on core 0, the rest on core 1.
    pub fn for_this_machine() -> Option<Pinning> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset").arg("--version").output();
        (cores >= 2 && taskset.is_ok_and(|o| o.status.success())).then(|| Pinning {
            gateway_cpus: "0".into(),
            other_cpus: "1".into(),
        })
    }
}

/// Pins every thread of process `pid` to `cpus` (threads it starts later
/// inherit the mask).
pub fn pin(pid: u32, cpus: &str) -> Result<()> {
    // `taskset -a` sets every thread in turn; one that exits meanwhile (the
    // native module's fetch threads come and go) fails it with "No such
    // process". The threads already set keep their CPUs and new ones
    // inherit their creator's, so another pass settles it.
    let mut last = String::new();
    for _ in 0..10 {
        let output = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .output()
            .context("running taskset")?;
        if output.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let vanished_thread = last.contains("No such process")
            && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !vanished_thread {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!("taskset -a -p -c {cpus} {pid}: {last}")
}

/// What the backend says about one request.
#[derive(Debug)]
pub struct Routed {
    pub status: u16,
    pub served_by: Option<String>,
    /// The cell header the gateway sent on (`x-routed-cell`).
    pub routed_cell: Option<String>,
    pub snapshot: Option<String>,
}

/// Sends one request with `token` (and `headers`) on `agent`.
pub fn send(
    agent: &ureq::Agent,
    envoy: &Envoy,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<Routed> {
    let bearer = format!("Bearer {token}");
    let mut all = vec![("authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    let reply = e2e::get(agent, &envoy.url("/"), &all)?;
    Ok(Routed {
        status: reply.status,
        served_by: reply.header("x-served-by").map(str::to_string),
        routed_cell: reply.header("x-routed-cell").map(str::to_string),
        snapshot: reply.header("x-routed-snapshot").map(str::to_string),
    })
}

/// Checks that `gateway` sends every tenant's request to its cell (the plain
/// gateway: to the cell the client named) under snapshot `doc`: the cell
/// header the backend saw is the expected cell's id and the backend
/// listener that answered is the one its cluster points at; the number of
/// requests checked.
pub fn check_routing(
    envoy: &Envoy,
    gateway: Gateway,
    tokens: &[String],
    doc: &SnapshotDoc,
    expected: &[String],
) -> Result<usize> {
    let agent = e2e::client();
    let version = doc.version.to_string();
    let index_of = |id: &str| doc.cells.iter().position(|c| c.id == id);
    let plain = plain_cell(doc.cells.len());
    for (i, token) in tokens.iter().enumerate() {
        let (want, headers): (&str, Vec<(&str, &str)>) = match gateway {
            g if g.is_probe() => ("cell-a", vec![("x-cell-id", "cell-a")]),
            Gateway::Plain => (plain.as_str(), vec![("x-cell-id", plain.as_str())]),
            // A spoofed header must make no difference.
            _ => (
                expected
                    .get(i % expected.len().max(1))
                    .map(String::as_str)
                    .unwrap_or(""),
                vec![("x-cell-id", "cell-c")],
            ),
        };
        let want_served = index_of(want).map(served_by);
        // A request that gets no answer at all (a busy machine) is sent
        // again, twice at most; a wrong answer is never retried.
        let mut attempt = 0;
        let routed = loop {
            attempt += 1;
            match send(&agent, envoy, token, &headers) {
                Ok(routed) => break routed,
                Err(err) if attempt < 3 => {
                    eprintln!(
                        "cell-router-bench: routing check, no answer (try {attempt}): {err:#}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => {
                    return Err(err.context(format!(
                        "gateway {}: routing check of {} failed {attempt} times",
                        gateway.name(),
                        tenant(i % expected.len().max(1))
                    )));
                }
            }
        };
        let snapshot_ok =
            !gateway.routes_by_snapshot() || routed.snapshot.as_deref() == Some(&version);
        if routed.status != 200
            || routed.served_by.as_deref() != want_served
            || routed.routed_cell.as_deref() != Some(want)
            || !snapshot_ok
        {
            bail!(
                "gateway {} ({} cells): {} went to {:?} as {:?} (status {}, snapshot {:?}), expected {want} (served by {want_served:?}) under {version}\n{}",
                gateway.name(),
                doc.cells.len(),
                tenant(i % expected.len().max(1)),
                routed.served_by,
                routed.routed_cell,
                routed.status,
                routed.snapshot,
                envoy.process.log_tail(20)
            );
        }
    }
    Ok(tokens.len())
}

/// Waits until every worker of `envoy` routes by snapshot `version` (or a
/// later one), probing on fresh connections with `token`; on failure, the
/// error says what each worker answered. The deadline is at least
/// [`e2e::VERSION_TIMEOUT`]: a wait for a state, not a measurement.
pub fn await_version(
    envoy: &Envoy,
    token: &str,
    version: u64,
    timeout: Duration,
) -> Result<e2e::Reached> {
    let bearer = format!("Bearer {token}");
    e2e::await_version(envoy, version, timeout.max(e2e::VERSION_TIMEOUT), |agent| {
        e2e::probe_body_version(e2e::get(
            agent,
            &envoy.url("/"),
            &[("authorization", &bearer), ("connection", "close")],
        ))
    })
}

/// Resident memory of a process, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU time of this process's waited-for children (wrk runs), in seconds.
pub fn children_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cutime: f64 = fields.get(13)?.parse().ok()?;
    let cstime: f64 = fields.get(14)?.parse().ok()?;
    Some((cutime + cstime) / clock_ticks())
}

/// Busy and total CPU time of the whole machine, in seconds (`/proc/stat`).
pub fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / clock_ticks(), total / clock_ticks()))
}

/// `USER_HZ`: 100 on every Linux this runs on (it is not the kernel's HZ).
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_plugin_configs_are_the_ones_measured() {
        for gateway in [Gateway::Router, Gateway::RouterNative, Gateway::TrustHeader] {
            let path = bench_dir().join(gateway.template());
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                e2e::plugin_config_of(&text).unwrap(),
                plugin_config(gateway).unwrap(),
                "{}: the inline plugin configuration differs from the one the benchmark writes",
                path.display()
            );
        }
    }

    #[test]
    fn committed_jwks_is_the_test_keys() {
        let text = std::fs::read_to_string(bench_dir().join("jwks.json")).unwrap();
        let committed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(committed, bench_jwks());
    }

    /// The gateways differ from plain.yaml only in their filters (and the
    /// sidecar cluster the filter needs, and the tags of the filter's own
    /// metrics: `stats_config`), so the comparison is of filters.
    #[test]
    fn gateway_templates_are_plain_plus_filters() {
        fn skeleton(text: &str) -> String {
            let mut out = Vec::new();
            let mut skipping: Option<usize> = None;
            for line in text.lines() {
                let indent = line.len() - line.trim_start().len();
                if let Some(level) = skipping {
                    if line.trim().is_empty() || indent > level {
                        continue;
                    }
                    skipping = None;
                }
                if line.starts_with('#') {
                    continue;
                }
                let trimmed = line.trim_start();
                let filter = trimmed.starts_with("- name: ")
                    && !trimmed.contains("envoy.filters.http.router")
                    && (trimmed.contains("envoy.filters.http.") || trimmed.contains("cell_router"));
                if filter
                    || line == "stats_config:"
                    || trimmed.starts_with("# The sidecar")
                    || trimmed == "- name: cellmap|sidecar"
                {
                    skipping = Some(indent);
                    continue;
                }
                out.push(line.to_string());
            }
            out.join("\n")
        }
        let plain = std::fs::read_to_string(bench_dir().join("plain.yaml")).unwrap();
        for gateway in [
            Gateway::Router,
            Gateway::RouterNative,
            Gateway::JwtLua,
            Gateway::TrustHeader,
        ] {
            let text = std::fs::read_to_string(bench_dir().join(gateway.template())).unwrap();
            assert_eq!(skeleton(&text), skeleton(&plain), "{}", gateway.template());
            assert_ne!(text.lines().count(), plain.lines().count());
        }
    }

    #[test]
    fn lua_table_is_replaced_by_the_snapshot() {
        let template = std::fs::read_to_string(bench_dir().join("cell_lookup.lua")).unwrap();
        let doc = bench_snapshot(7, 30, 2).unwrap();
        let lua = render_lua(&template, &doc).unwrap();
        assert!(lua.contains("version = \"7\","), "{lua}");
        assert!(lua.contains(&format!("slot_table = \"{}\",", doc.slot_table)));
        assert!(lua.contains("[\"tenant-00010\"] = \"cell-c\","), "{lua}");
        assert!(lua.contains("[\"bulk-0000001\"] = \"cell-b\","), "{lua}");
        assert!(lua.contains("function envoy_on_request"));
        assert_eq!(lua.matches("local SNAPSHOT = {").count(), 1);
        assert_eq!(lua_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\10\"");
    }

    #[test]
    fn overrides_cover_a_tenth_and_the_rest_hash() {
        let doc = bench_snapshot(1, 1000, 0).unwrap();
        assert_eq!(doc.overrides.len(), 100);
        let cells = expected_cells(&doc, 1000).unwrap();
        for cell in CELLS {
            let n = cells.iter().filter(|c| c.as_str() == cell).count();
            assert!((250..=420).contains(&n), "{cell}: {n}");
        }
    }

    #[test]
    fn idle_cells_are_in_the_snapshot_and_take_no_tenant() {
        let doc = bench_snapshot_cells(1, 1000, 0, 1000, 3).unwrap();
        assert_eq!(doc.cells.len(), 1000);
        let cells = expected_cells(&doc, 1000).unwrap();
        for cell in CELLS {
            let n = cells.iter().filter(|c| c.as_str() == cell).count();
            assert!((250..=420).contains(&n), "{cell}: {n}");
        }
        assert!(cells.iter().all(|c| CELLS.contains(&c.as_str())));
        // Every cell busy: tenants land far beyond the first three.
        let spread =
            expected_cells(&bench_snapshot_cells(1, 1000, 0, 1000, 1000).unwrap(), 1000).unwrap();
        assert!(
            spread
                .iter()
                .filter(|c| !CELLS.contains(&c.as_str()))
                .count()
                > 900
        );
    }
}
