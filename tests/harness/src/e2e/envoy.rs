//! One Envoy process: its options, the rendering of a config template for
//! free ports, and a stop that drains first (Envoy itself exits at once on
//! SIGTERM, cutting whatever is in flight).

use super::{
    Backends, CONFIG_MARKER, DEFAULT_ADMIN_PORT, DEFAULT_CELL_PORTS, DEFAULT_LISTENER_PORT,
    DEFAULT_PERSISTED_PATH, DEFAULT_PERSISTED_PORT, DEFAULT_SIDECAR_PORT, Process, Reply, client,
    envoy_bin, free_port, get, post, repo_root, wasm_path,
};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `--drain-time-s` of every Envoy the harness and the demo start: how long a
/// graceful stop lets in-flight requests finish before the listeners close.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);
/// `--drain-strategy`: tell every connection to close at its next response
/// at once (`gradual` spreads that over the drain time).
pub const DRAIN_STRATEGY: &str = "immediate";
/// How long [`Envoy::start`] waits for the admin's `/ready`: loading the
/// filter compiles 1 MB of Wasm once per VM, which takes seconds on a busy
/// 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run one Envoy.
pub struct EnvoyOptions {
    /// Config template: `envoy/envoy.yaml` unless another is named.
    pub template: PathBuf,
    /// The cells' ports (`cell-a`, ...), swapped in for `DEFAULT_CELL_PORTS`.
    pub cells: Vec<(String, u16)>,
    pub sidecar_port: u16,
    /// Worker threads (each runs its own Wasm VM).
    pub concurrency: u32,
    /// Replaces the filter's JSON configuration, if given.
    pub plugin_config: Option<serde_json::Value>,
    /// Listener and admin ports; free ones when `None`.
    pub ports: Option<(u16, u16)>,
    /// The file the persisted-copy listener serves (`cellmap serve
    /// --persist`'s output); `<dir>/persisted-snapshot.json` when `None`. An
    /// empty placeholder is written first when it does not exist, because
    /// Envoy refuses a config naming a missing file.
    pub persisted: Option<PathBuf>,
    /// Runs Envoy through this launcher (`envoy/docker/gateway.sh`), which
    /// adds the drain options itself and drains on SIGTERM; its environment
    /// names the Envoy binary and the admin address.
    pub launcher: Option<PathBuf>,
    /// Extra environment for Envoy (e.g. `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`
    /// for `envoy/envoy-native.yaml`).
    pub env: Vec<(String, String)>,
    /// Envoy's `--log-level`: `warn` (what went wrong) unless set here or by
    /// CELL_ROUTER_ENVOY_LOG_LEVEL (`info` shows the filter's info lines).
    pub log_level: Option<String>,
}

impl EnvoyOptions {
    pub fn new(backends: &Backends, sidecar_port: u16) -> Self {
        EnvoyOptions::with_cells(backends.cells.clone(), sidecar_port)
    }

    /// For cells that are not a [`Backends`] process (e.g. [`super::SlowCells`]).
    pub fn with_cells(cells: Vec<(String, u16)>, sidecar_port: u16) -> Self {
        let mut options = EnvoyOptions {
            template: repo_root().join("envoy/envoy.yaml"),
            cells,
            sidecar_port,
            concurrency: 2,
            plugin_config: None,
            ports: None,
            persisted: None,
            launcher: None,
            env: Vec::new(),
            log_level: None,
        };
        if super::build() == super::Build::Native {
            options.use_native_build();
        }
        options
    }

    /// Runs `envoy/envoy-native.yaml` (the native dynamic module) instead of
    /// the Wasm filter, with the module's search path and sidecar address.
    pub fn use_native_build(&mut self) {
        self.template = repo_root().join("envoy/envoy-native.yaml");
        let dir = super::native_dir().unwrap_or_else(|_| repo_root().join("dist"));
        self.env.retain(|(k, _)| {
            k != "ENVOY_DYNAMIC_MODULES_SEARCH_PATH" && k != "CELL_ROUTER_SIDECAR_ADDRESS"
        });
        self.env.push((
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH".into(),
            dir.display().to_string(),
        ));
        self.env.push((
            "CELL_ROUTER_SIDECAR_ADDRESS".into(),
            format!("127.0.0.1:{}", self.sidecar_port),
        ));
    }
}

/// A running Envoy, drained and stopped on drop.
pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    pub config: PathBuf,
    pub concurrency: u32,
    /// The file the persisted-copy listener serves, and its port (if the
    /// config has that listener).
    pub persisted: PathBuf,
    pub persisted_port: Option<u16>,
    pub process: Process,
}

/// What a graceful stop saw.
#[derive(Debug, Clone, Default)]
pub struct StopReport {
    /// Downstream requests in flight when the drain began.
    pub in_flight_at_drain: i64,
    /// Still in flight when SIGTERM was sent (cut), if any were left.
    pub in_flight_at_term: i64,
    /// From the drain request to Envoy's exit.
    pub took: Duration,
    /// Admin calls that failed (the drain then was only partial).
    pub admin_errors: Vec<String>,
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
    pub fn start(dir: &Path, options: EnvoyOptions) -> Result<Envoy> {
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
            if let Some((_, p)) = options.cells.iter().find(|(c, _)| c == cell) {
                ports.insert(default_port, *p);
            }
        }
        // The persisted-copy listener is loopback-only: a free port per Envoy,
        // unless the well-known ports were asked for (`make demo-up`).
        if options.ports.is_none()
            && template.contains(&format!("port_value: {DEFAULT_PERSISTED_PORT}"))
        {
            ports.insert(DEFAULT_PERSISTED_PORT, free_port()?);
        }
        let persisted = options
            .persisted
            .clone()
            .unwrap_or_else(|| dir.join("persisted-snapshot.json"));
        ensure_placeholder(&persisted)?;
        let plugin_config = options.plugin_config;
        let config = dir.join(format!("envoy-{port}.yaml"));
        // A template without the Wasm filter (the native build) needs no `.wasm`.
        let wasm = if template.contains("envoy.extensions.filters.http.wasm.v3.Wasm") {
            wasm_path()?
        } else {
            PathBuf::new()
        };
        let rendered = render_envoy_config(&template, &ports, &wasm, plugin_config.as_ref())?
            .replace(DEFAULT_PERSISTED_PATH, &persisted.display().to_string());
        std::fs::write(&config, rendered)?;

        let mut command = match &options.launcher {
            None => {
                let mut command = Command::new(envoy_bin()?);
                command
                    .arg("--drain-time-s")
                    .arg(DRAIN_TIME.as_secs().to_string())
                    .arg("--drain-strategy")
                    .arg(DRAIN_STRATEGY);
                command
            }
            Some(launcher) => {
                let mut command = Command::new(launcher);
                command
                    .env("ENVOY_BIN", envoy_bin()?)
                    .env("ENVOY_ADMIN", format!("127.0.0.1:{admin_port}"))
                    .env("DRAIN_TIME_S", DRAIN_TIME.as_secs().to_string());
                command
            }
        };
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        // The native build reaches the plugin config's clusters (sidecar,
        // persisted copy, JWKS source) at the addresses they have in the
        // rendered config (filter/README.md, "Native build").
        if rendered_is_native(&config)? {
            command.env(
                "CELL_ROUTER_CLUSTERS",
                cluster_addresses(&std::fs::read_to_string(&config)?),
            );
        }
        command
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg(options.log_level.clone().unwrap_or_else(|| {
                std::env::var("CELL_ROUTER_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warn".into())
            }))
            .current_dir(repo_root());
        let process = Process::spawn(&format!("envoy-{port}"), command, dir)?;
        let mut envoy = Envoy {
            port,
            admin_port,
            config,
            concurrency: options.concurrency,
            persisted,
            persisted_port: template
                .contains(&format!("port_value: {DEFAULT_PERSISTED_PORT}"))
                .then(|| ports.get(&DEFAULT_PERSISTED_PORT).copied())
                .map(|p| p.unwrap_or(DEFAULT_PERSISTED_PORT)),
            process,
        };
        envoy.wait_ready(START_TIMEOUT)?;
        Ok(envoy)
    }

    /// Waits for the admin's `/ready` (Envoy's own readiness: listeners up;
    /// it says nothing of the filter's snapshot, see [`Envoy::filter_ready`]).
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let agent = client();
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        let mut tries = 0u32;
        while started.elapsed() < timeout {
            if !self.process.is_running() {
                bail!(
                    "Envoy exited while starting (last /ready: {last})\n{}",
                    self.process.log_tail(40)
                );
            }
            tries += 1;
            match get(&agent, &url, &[]) {
                Ok(reply) if reply.status == 200 => return Ok(()),
                Ok(reply) => last = format!("HTTP {} {}", reply.status, reply.body.trim()),
                Err(err) => last = format!("{err:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "Envoy was not ready within {timeout:?} ({tries} tries of {url}; last: {last})\n{}",
            self.process.log_tail(40)
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The filter's readiness path on the gateway listener (200 with a
    /// snapshot, 503 without), as a load balancer's probe would ask it.
    pub fn filter_ready(&self, agent: &ureq::Agent) -> Result<Reply> {
        get(agent, &self.url(super::FILTER_READY_PATH), &[])
    }

    /// Envoy's counters and gauges whose names match `filter` (a regex), by name.
    pub fn stats(&self, filter: &str) -> Result<HashMap<String, i64>> {
        admin_stats(self.admin_port, filter)
    }

    /// Connections each worker has accepted on the gateway listener
    /// (`listener.<addr>.worker_<n>.downstream_cx_total`), by worker index.
    pub fn worker_connections(&self) -> Result<Vec<i64>> {
        let prefix = format!("listener.127.0.0.1_{}.worker_", self.port);
        let stats = self.stats("worker_.*downstream_cx_total")?;
        let mut counts = vec![0; self.concurrency as usize];
        let mut found = 0;
        for (name, value) in stats {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Some((index, _)) = rest.split_once('.') else {
                continue;
            };
            if let Some(slot) = index.parse::<usize>().ok().and_then(|i| counts.get_mut(i)) {
                *slot = value;
                found += 1;
            }
        }
        if found != counts.len() {
            bail!(
                "{found} per-worker connection counters for {prefix}*, expected {}",
                counts.len()
            );
        }
        Ok(counts)
    }

    /// Downstream requests in flight on every listener but the admin's.
    pub fn requests_in_flight(&self) -> Result<i64> {
        requests_in_flight(self.admin_port)
    }

    /// Stops Envoy the way a gateway should be stopped ([`drain`]), then
    /// SIGTERM. Envoy's own SIGTERM handling does not drain.
    pub fn stop(&mut self) -> StopReport {
        let started = Instant::now();
        if !self.process.is_running() {
            self.process.stop();
            return StopReport::default();
        }
        let process = &self.process;
        let mut report = drain(self.admin_port, || process.is_running_shared());
        if report.in_flight_at_term > 0 {
            eprintln!(
                "harness: Envoy :{} still had {} request(s) in flight after {:?} of draining; stopping it anyway",
                self.port, report.in_flight_at_term, DRAIN_TIME
            );
        }
        self.process.stop();
        report.took = started.elapsed();
        report
    }
}

fn rendered_is_native(config: &Path) -> Result<bool> {
    Ok(std::fs::read_to_string(config)
        .with_context(|| format!("reading {}", config.display()))?
        .contains("dynamic_modules.v3.DynamicModuleFilter"))
}

/// `name=127.0.0.1:port,...` for every cluster of a rendered config with one
/// socket address (the shape of envoy.yaml's clusters: `- name:` under
/// `clusters:`, then its `address:` and `port_value:` lines).
pub fn cluster_addresses(config: &str) -> String {
    let mut out = Vec::new();
    let mut in_clusters = false;
    let mut current: Option<String> = None;
    let mut address: Option<String> = None;
    for line in config.lines() {
        if line.starts_with("  clusters:") {
            in_clusters = true;
            continue;
        }
        if !in_clusters {
            continue;
        }
        let trimmed = line.trim();
        if let Some(name) = line.strip_prefix("  - name: ") {
            current = Some(name.trim().to_string());
            address = None;
        } else if let Some(a) = trimmed.strip_prefix("address: ")
            && !a.is_empty()
        {
            address = Some(a.to_string());
        } else if let Some(port) = trimmed.strip_prefix("port_value: ")
            && let (Some(name), Some(host)) = (current.take(), address.take())
        {
            out.push(format!("{name}={host}:{}", port.trim()));
        } else if !line.starts_with(' ') && !line.is_empty() {
            in_clusters = false;
        }
    }
    out.join(",")
}

/// An Envoy admin's counters and gauges whose names match `filter` (a regex).
pub fn admin_stats(admin_port: u16, filter: &str) -> Result<HashMap<String, i64>> {
    let url = format!("http://127.0.0.1:{admin_port}/stats?filter={filter}");
    let reply = get(&client(), &url, &[])?;
    if reply.status != 200 {
        bail!("{url}: HTTP {} {}", reply.status, reply.body);
    }
    Ok(reply
        .body
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// Downstream requests in flight on every listener of an Envoy but the admin's.
pub fn requests_in_flight(admin_port: u16) -> Result<i64> {
    Ok(admin_stats(admin_port, "downstream_rq_active")?
        .iter()
        .filter(|(name, _)| name.starts_with("http.") && !name.starts_with("http.admin."))
        .map(|(_, v)| *v)
        .sum())
}

/// Drains the Envoy whose admin is on `admin_port`: fail its health checks
/// (`/ready` answers 503, so a load balancer stops sending), start a
/// graceful listener drain (every connection is told to close at its next
/// response), and wait until no request is in flight, at most
/// [`DRAIN_TIME`] and a little, or until `running` says it exited. The
/// caller then sends SIGTERM.
pub fn drain(admin_port: u16, mut running: impl FnMut() -> bool) -> StopReport {
    let started = Instant::now();
    let mut report = StopReport::default();
    let agent = client();
    for path in ["/healthcheck/fail", "/drain_listeners?graceful"] {
        let url = format!("http://127.0.0.1:{admin_port}{path}");
        match post(&agent, &url) {
            Ok(reply) if reply.status == 200 => {}
            Ok(reply) => report.admin_errors.push(format!(
                "POST {path}: HTTP {} {}",
                reply.status,
                reply.body.trim()
            )),
            Err(err) => report.admin_errors.push(format!("POST {path}: {err:#}")),
        }
    }
    report.in_flight_at_drain = requests_in_flight(admin_port).unwrap_or(-1);
    let deadline = started + DRAIN_TIME + Duration::from_secs(2);
    let mut in_flight = report.in_flight_at_drain;
    while in_flight != 0 && Instant::now() < deadline && running() {
        std::thread::sleep(Duration::from_millis(20));
        in_flight = requests_in_flight(admin_port).unwrap_or(-1);
    }
    report.in_flight_at_term = in_flight.max(0);
    report.took = started.elapsed();
    report
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Envoy reads a `direct_response` body file when it loads the config and
/// refuses the config if the file is missing: before the sidecar has ever
/// persisted a snapshot, the listener serves an empty placeholder (which the
/// filter refuses like any unparsable snapshot).
pub fn ensure_placeholder(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, b"").with_context(|| format!("writing placeholder {}", path.display()))
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
    fn cluster_addresses_name_every_single_address_cluster() {
        let config = "\
static_resources:
  listeners:
  - name: gateway
    address:
      socket_address:
        address: 127.0.0.1
        port_value: 40000
  clusters:
  - name: cellmap|sidecar
    type: STATIC
    load_assignment:
      cluster_name: cellmap|sidecar
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: 127.0.0.1
                port_value: 40001
  - name: cell-a
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: 127.0.0.2
                port_value: 40002
";
        assert_eq!(
            cluster_addresses(config),
            "cellmap|sidecar=127.0.0.1:40001,cell-a=127.0.0.2:40002"
        );
    }

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
