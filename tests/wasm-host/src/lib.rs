//! A proxy-wasm ABI 0.2.1 host on wasmtime that behaves like Envoy, for
//! running the real filter `.wasm` in tests and benchmarks.
//!
//! ```no_run
//! # use cell_router_wasm_host::Host;
//! # fn main() -> anyhow::Result<()> {
//! let mut host = Host::new()?;
//! host.configure(r#"{"...": "..."}"#)?;
//! let r = host.request(&[(":path", "/v1/sms"), ("authorization", "Bearer ...")])?;
//! assert_eq!(r.status(), None); // forwarded
//! assert_eq!(r.cell(), Some("cell-b"));
//! # Ok(()) }
//! ```
//!
//! What is modelled on Envoy (1.40, proxy-wasm-cpp-host), because filters
//! get it wrong in exactly these places:
//! * start: `_initialize` (only WASI calls allowed there), root context
//!   create, `proxy_on_vm_start`, then `proxy_on_configure` with the plugin
//!   configuration readable only during that call;
//! * a stream's header maps and bodies exist only in their callbacks (and
//!   request/response headers again for `proxy_on_log`); after `Continue` or
//!   `proxy_continue_stream` the request map is gone (`BadArgument`, which
//!   the SDK's getters turn into a trap);
//! * `proxy_send_local_response` takes effect after the callback returns and
//!   the reply passes back through the filter's response callbacks;
//! * `dispatch_http_call` belongs to the root context: unknown cluster or
//!   missing `:path`/`:method`/`:authority` is `BadArgument`; answers,
//!   resets (no headers, status "reset"), 503s and timeouts (504, fired by
//!   [`Host::advance`]) go to `proxy_on_http_call_response`;
//! * names are lower-cased, values are bytes, `replace` removes every copy,
//!   request-header changes clear the route cache;
//! * metrics ids carry their type, counters refuse negative increments,
//!   stats/shared data/queues/clock are shared by the workers of one Envoy
//!   ([`Host::worker`]);
//! * foreign functions `clear_route_cache` and `verify_signature`; unknown
//!   names are `NotFound`;
//! * a trap fails the VM: that call and every later one is an error.
//!
//! Anything the module imports that Envoy does not provide makes
//! [`Plugin::from_bytes`] fail, as Envoy would refuse to load it.

mod abi;
mod exchange;
mod foreign;
mod guest;
mod headers;
mod lifecycle;
mod pairs;
mod plugin;
mod properties;
mod state;
mod wasi;

pub use exchange::{ClientResponse, Exchange, Outcome, Request};
pub use foreign::DEFAULT_FOREIGN_FUNCTIONS;
pub use guest::Status;
pub use headers::HeaderMap;
pub use lifecycle::HttpCallFailure;
pub use plugin::{Plugin, filter_wasm_path, repo_root};
pub use properties::{DESTINATION_ADDRESS, SOURCE_ADDRESS};
pub use state::{
    ForeignCall, HttpCall, LocalResponse, LogLevel, LogLine, Metric, MetricKind, UpstreamResponse,
};

use anyhow::{Context as _, Result, anyhow, bail};
use guest::GuestHandles;
use state::{HostState, SharedRef, lock, new_shared};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Store, TypedFunc, WasmParams, WasmResults};

/// How the simulated Envoy is set up.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// `vm_config.configuration` (handed to `proxy_on_vm_start`).
    pub vm_config: Vec<u8>,
    pub plugin_name: String,
    pub root_id: String,
    pub vm_id: String,
    /// What `proxy_get_log_level` answers.
    pub log_level: LogLevel,
    /// Clusters `dispatch_http_call` may target; `None` accepts any name.
    pub clusters: Option<BTreeSet<String>>,
    /// Foreign functions the host offers (default: `clear_route_cache`).
    pub foreign_functions: BTreeSet<String>,
    /// Environment variables (`vm_config.environment_variables`).
    pub env: Vec<(String, String)>,
    /// Wall clock at start; the clock then moves only when the test says.
    pub start_time: SystemTime,
    /// Seed of `random_get` and of generated request ids.
    pub seed: u64,
    /// Add an `x-request-id` when the client sent none, as Envoy does.
    pub generate_request_id: bool,
    /// `:authority` when the client sent none.
    pub authority: String,
    /// Answer `proxy_set_property` with an error (a host that keeps no
    /// filter state), to check that a failed set fails nothing else.
    pub refuse_set_property: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        // Whole seconds, so `exp`/`iat` claims computed from it are exact.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        HostOptions {
            vm_config: Vec::new(),
            plugin_name: "cell-router".into(),
            root_id: "cell_router".into(),
            vm_id: "cell_router".into(),
            log_level: LogLevel::Info,
            clusters: None,
            foreign_functions: DEFAULT_FOREIGN_FUNCTIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            env: Vec::new(),
            start_time: UNIX_EPOCH + Duration::from_secs(now),
            seed: 0x5eed_cafe_f00d_0001,
            generate_request_id: true,
            authority: "gateway.test".into(),
            refuse_set_property: false,
        }
    }
}

/// `proxy_on_http_call_response(context, token, headers, body, trailers)`.
type HttpCallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The plugin's exported callbacks (absent ones are no-ops, as in Envoy).
struct Exports {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    http_call_response: Option<HttpCallResponseFn>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
}

static NEXT_HOST_ID: AtomicU64 = AtomicU64::new(1);

/// One Envoy worker's VM running the plugin, with its root context started.
pub struct Host {
    plugin: Arc<Plugin>,
    options: HostOptions,
    store: Store<HostState>,
    exports: Arc<Exports>,
    /// Set when the VM trapped: Envoy would have failed it, so every later
    /// call is an error.
    failed: Option<String>,
    requests_sent: u64,
}

impl Host {
    /// The real filter with default options.
    pub fn new() -> Result<Host> {
        Host::with_options(HostOptions::default())
    }

    /// The real filter with these options.
    pub fn with_options(options: HostOptions) -> Result<Host> {
        Host::start(Plugin::filter()?, options, None)
    }

    /// Any proxy-wasm plugin (e.g. a test plugin) with these options.
    pub fn with_plugin(plugin: Arc<Plugin>, options: HostOptions) -> Result<Host> {
        Host::start(plugin, options, None)
    }

    /// Another worker of the same Envoy: its own VM and root context, the
    /// same shared data, queues, stats and clock.
    pub fn worker(&self) -> Result<Host> {
        Host::start(
            self.plugin.clone(),
            self.options.clone(),
            Some(self.store.data().shared.clone()),
        )
    }

    fn start(plugin: Arc<Plugin>, options: HostOptions, shared: Option<SharedRef>) -> Result<Host> {
        let shared = shared.unwrap_or_else(|| new_shared(options.start_time));
        let host_id = NEXT_HOST_ID.fetch_add(1, Ordering::Relaxed);
        let state = HostState {
            host_id,
            shared,
            guest: None,
            starting: true,
            vm_id: options.vm_id.clone(),
            plugin_name: options.plugin_name.clone(),
            root_name: options.root_id.clone(),
            vm_config: options.vm_config.clone(),
            log_level: options.log_level,
            clusters: options.clusters.clone(),
            foreign_functions: options.foreign_functions.clone(),
            env: options.env.clone(),
            root_id: 1,
            next_context_id: 2,
            current: 1,
            effective: None,
            plugin_config: None,
            tick_period: None,
            next_tick: None,
            streams: BTreeMap::new(),
            http_calls: BTreeMap::new(),
            next_http_token: 1,
            http_call_response: None,
            status: (0, Vec::new()),
            metric_ids: BTreeMap::new(),
            next_metric_id: [0, 1, 2],
            logs: Vec::new(),
            host_calls: BTreeMap::new(),
            root_foreign_calls: Vec::new(),
            properties: BTreeMap::new(),
            refuse_set_property: options.refuse_set_property,
            vm_time: Duration::ZERO,
            rng: options.seed ^ host_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        };
        let mut store = Store::new(plugin::engine(), state);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("instantiating {}: {e:#}", plugin.name()))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow!("{} exports no memory", plugin.name()))?;
        let alloc = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|name| instance.get_typed_func::<i32, i32>(&mut store, name).ok())
            .ok_or_else(|| anyhow!("{} exports no proxy_on_memory_allocate", plugin.name()))?;
        store.data_mut().guest = Some(GuestHandles { memory, alloc });

        fn typed<P: WasmParams, R: WasmResults>(
            instance: &wasmtime::Instance,
            store: &mut Store<HostState>,
            name: &str,
        ) -> Result<Option<TypedFunc<P, R>>> {
            match instance.get_func(&mut *store, name) {
                None => Ok(None),
                Some(func) => func
                    .typed(&*store)
                    .map(Some)
                    .map_err(|e| anyhow!("export {name} has the wrong signature: {e:#}")),
            }
        }
        let s = &mut store;
        let exports = Arc::new(Exports {
            context_create: typed(&instance, s, "proxy_on_context_create")?,
            vm_start: typed(&instance, s, "proxy_on_vm_start")?,
            configure: typed(&instance, s, "proxy_on_configure")?,
            tick: typed(&instance, s, "proxy_on_tick")?,
            queue_ready: typed(&instance, s, "proxy_on_queue_ready")?,
            request_headers: typed(&instance, s, "proxy_on_request_headers")?,
            request_body: typed(&instance, s, "proxy_on_request_body")?,
            response_headers: typed(&instance, s, "proxy_on_response_headers")?,
            response_body: typed(&instance, s, "proxy_on_response_body")?,
            http_call_response: typed(&instance, s, "proxy_on_http_call_response")?,
            done: typed(&instance, s, "proxy_on_done")?,
            log: typed(&instance, s, "proxy_on_log")?,
            delete: typed(&instance, s, "proxy_on_delete")?,
        });
        let initialize: Option<TypedFunc<(), ()>> = typed(&instance, s, "_initialize")?;
        let start: Option<TypedFunc<(), ()>> = typed(&instance, s, "_start")?;
        let main: Option<TypedFunc<(i32, i32), i32>> = typed(&instance, s, "main")?;

        let mut host = Host {
            plugin,
            options,
            store,
            exports,
            failed: None,
            requests_sent: 0,
        };
        let exports = host.exports.clone();
        // Envoy: `_initialize` (then `main` if a reactor has one), else `_start`.
        if let Some(f) = initialize {
            host.call("_initialize", Some(&f), 0, ())?;
            if let Some(main) = main {
                host.call("main", Some(&main), 0, (0, 0))?;
            }
        } else if let Some(f) = start {
            host.call("_start", Some(&f), 0, ())?;
        }
        host.store.data_mut().starting = false;

        let root = host.root_id();
        host.call(
            "proxy_on_context_create",
            exports.context_create.as_ref(),
            root,
            (root as i32, 0),
        )?;
        let vm_config_len = host.options.vm_config.len() as i32;
        let started = host
            .call(
                "proxy_on_vm_start",
                exports.vm_start.as_ref(),
                root,
                (root as i32, vm_config_len),
            )?
            .is_none_or(|r| r != 0);
        if !started {
            bail!("proxy_on_vm_start returned false: Envoy would refuse the VM");
        }
        host.settle()?;
        Ok(host)
    }

    /// Calls a plugin export with `context` as the current context. A trap
    /// fails the VM (as in Envoy) and is returned as an error with the
    /// plugin's last log lines.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        what: &str,
        func: Option<&TypedFunc<P, R>>,
        context: u32,
        args: P,
    ) -> Result<Option<R>> {
        self.check_alive()?;
        let Some(func) = func else {
            return Ok(None);
        };
        let state = self.store.data_mut();
        state.current = context;
        state.effective = None;
        let started = std::time::Instant::now();
        let result = func.call(&mut self.store, args);
        let elapsed = started.elapsed();
        let state = self.store.data_mut();
        state.effective = None;
        state.current = state.root_id;
        state.vm_time += elapsed;
        if let Some(stream) = state.streams.get_mut(&context) {
            stream.vm_time += elapsed;
        }
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let tail: Vec<String> = state
                    .logs
                    .iter()
                    .rev()
                    .take(5)
                    .rev()
                    .map(|l| format!("  [{:?}] {}", l.level, l.message))
                    .collect();
                let message = format!(
                    "{what}(context {context}) trapped: {e:#}\nlast plugin log lines:\n{}",
                    tail.join("\n")
                );
                self.failed = Some(message.clone());
                Err(anyhow!(message))
            }
        }
    }

    fn check_alive(&self) -> Result<()> {
        match &self.failed {
            Some(why) => bail!("the VM failed earlier: {why}"),
            None => Ok(()),
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    pub fn root_id(&self) -> u32 {
        self.store.data().root_id
    }

    /// Configures the plugin; an error if it refuses the configuration.
    pub fn configure(&mut self, config: impl AsRef<[u8]>) -> Result<()> {
        if !self.try_configure(config)? {
            bail!(
                "proxy_on_configure refused the configuration; plugin log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    /// Configures the plugin; `Ok(false)` when it refuses the configuration
    /// (Envoy would then reject the listener update).
    pub fn try_configure(&mut self, config: impl AsRef<[u8]>) -> Result<bool> {
        let exports = self.exports.clone();
        let config = config.as_ref().to_vec();
        let len = config.len() as i32;
        self.store.data_mut().plugin_config = Some(config);
        let root = self.root_id();
        let result = self.call(
            "proxy_on_configure",
            exports.configure.as_ref(),
            root,
            (root as i32, len),
        );
        self.store.data_mut().plugin_config = None;
        let accepted = result?.is_none_or(|r| r != 0);
        self.settle()?;
        Ok(accepted)
    }

    /// Runs the root context's tick now (as Envoy's timer would).
    pub fn tick(&mut self) -> Result<()> {
        let exports = self.exports.clone();
        let root = self.root_id();
        let now = self.now();
        let state = self.store.data_mut();
        state.next_tick = state.tick_period.map(|p| now + p);
        self.call("proxy_on_tick", exports.tick.as_ref(), root, root as i32)?;
        self.settle()
    }

    /// The tick period the plugin asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        self.store.data().tick_period
    }

    /// The host's wall clock.
    pub fn now(&self) -> SystemTime {
        self.store.data().now().wall
    }

    /// The host's wall clock in whole seconds since the epoch (for claims).
    pub fn now_unix(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Moves the clock without firing anything (ticks and timeouts wait for
    /// `advance` or `tick`).
    pub fn advance_clock(&mut self, by: Duration) {
        let mut shared = lock(&self.store.data().shared);
        shared.clock.wall += by;
        shared.clock.monotonic += by;
    }

    /// Lets `by` pass: ticks fire when due and HTTP calls past their
    /// timeout get Envoy's 504, in time order.
    pub fn advance(&mut self, by: Duration) -> Result<()> {
        let target = self.now() + by;
        loop {
            let state = self.store.data();
            let tick = state.next_tick.filter(|t| *t <= target);
            let timeout = state
                .http_calls
                .values()
                .filter_map(|c| Some((c.deadline()?, c.token)))
                .filter(|(t, _)| *t <= target)
                .min();
            let next = match (tick, timeout) {
                (None, None) => break,
                (Some(t), Some((d, _))) if t <= d => Err(t),
                (Some(t), None) => Err(t),
                (_, Some((d, token))) => Ok((d, token)),
            };
            let at = match next {
                Err(t) | Ok((t, _)) => t,
            };
            let now = self.now();
            if at > now {
                self.advance_clock(at.duration_since(now).unwrap_or_default());
            }
            match next {
                Err(_) => self.tick()?,
                Ok((_, token)) => self.fail_http_call(token, HttpCallFailure::Timeout)?,
            }
        }
        let now = self.now();
        if target > now {
            self.advance_clock(target.duration_since(now).unwrap_or_default());
        }
        Ok(())
    }

    /// HTTP calls the plugin made that have not been answered, oldest first.
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.store.data().http_calls.values().cloned().collect()
    }

    /// Sets a property the plugin can read (`path` segments, raw value).
    pub fn set_property(&mut self, path: &[&str], value: impl AsRef<[u8]>) {
        let key = path.join("\0").into_bytes();
        self.store
            .data_mut()
            .properties
            .insert(key, value.as_ref().to_vec());
    }

    /// A stat's value (counter or gauge) by the name the plugin defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        lock(&self.store.data().shared)
            .metrics
            .get(name)
            .map(|m| m.value)
    }

    /// Every stat the plugin defined (shared by all workers).
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        lock(&self.store.data().shared).metrics.clone()
    }

    /// A shared-data entry: (value, cas).
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let state = self.store.data();
        lock(&state.shared)
            .data
            .get(&(state.vm_id.clone(), key.as_bytes().to_vec()))
            .cloned()
    }

    /// Sets a shared-data entry as another VM of this Envoy would.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let state = self.store.data();
        let mut shared = lock(&state.shared);
        let cas = shared.next_cas;
        shared.next_cas = shared.next_cas.wrapping_add(1).max(1);
        shared.data.insert(
            (state.vm_id.clone(), key.as_bytes().to_vec()),
            (value.to_vec(), cas),
        );
    }

    /// Everything the plugin logged so far.
    pub fn logs(&self) -> &[LogLine] {
        &self.store.data().logs
    }

    pub fn clear_logs(&mut self) {
        self.store.data_mut().logs.clear();
    }

    /// The log as text, for error messages.
    pub fn log_text(&self) -> String {
        self.logs()
            .iter()
            .map(|l| format!("[{:?}] {}", l.level, l.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wall time spent inside plugin callbacks so far (host functions
    /// included, the host's own bookkeeping excluded).
    pub fn vm_time(&self) -> Duration {
        self.store.data().vm_time
    }

    /// Host calls made by this VM so far, by name.
    pub fn host_calls(&self) -> &BTreeMap<&'static str, u64> {
        &self.store.data().host_calls
    }

    /// Foreign function calls made outside any stream.
    pub fn root_foreign_calls(&self) -> &[ForeignCall] {
        &self.store.data().root_foreign_calls
    }

    /// The VM's linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        match &self.store.data().guest {
            Some(g) => g.memory.data_size(&self.store),
            None => 0,
        }
    }

    /// The current state of a stream that is still open (e.g. paused).
    pub fn exchange(&self, context_id: u32) -> Option<Exchange> {
        self.store
            .data()
            .streams
            .get(&context_id)
            .map(|s| lifecycle::snapshot(self.store.data(), context_id, s))
    }

    /// Sends a request with these headers through the filter and, if the
    /// filter lets it through, a 200 response back.
    pub fn request<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        headers: &[(K, V)],
    ) -> Result<Exchange> {
        self.send(Request::new(headers))
    }

    /// Sends a request through the filter; see [`Request`].
    pub fn send(&mut self, request: Request) -> Result<Exchange> {
        self.check_alive()?;
        self.requests_sent += 1;
        let id = self.open_stream(request)?;
        self.drive(id)?;
        self.settle()?;
        let state = self.store.data_mut();
        let closed = state
            .streams
            .get(&id)
            .is_some_and(|s| s.phase == state::Phase::Closed);
        let stream = state.streams.get(&id).context("stream vanished")?;
        let exchange = lifecycle::snapshot(state, id, stream);
        if closed {
            state.streams.remove(&id);
        }
        Ok(exchange)
    }
}
