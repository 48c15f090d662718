//! The cell router as a native Envoy dynamic module
//! (`envoy.extensions.filters.http.dynamic_modules`): the same plain modules
//! of `cell-router-filter` (config, tokens, `decide`) behind Envoy's C ABI
//! instead of proxy-wasm.
//!
//! - `abi`: the few hooks and callbacks used, declared by hand.
//! - `envoy`: a safe wrapper over those callbacks for one request.
//! - here: the hooks Envoy calls. Every hook catches panics (the `native`
//!   profile unwinds), so none crosses into Envoy.
//!
//! One filter config (one per listener filter chain) holds the parsed
//! `Config` and the snapshot in force as an `Arc`, shared by every worker;
//! each worker thread keeps its own token cache (`VmState`), as each Wasm VM
//! does.

mod abi;
mod envoy;
mod metrics;
mod subscriber;

use abi::{
    HttpFilterConfigEnvoyPtr, HttpFilterConfigModulePtr, HttpFilterEnvoyPtr, HttpFilterModulePtr,
};
use cell_router_filter::Config;
use cell_router_filter::decide::{self, Action, Installed, Outcome, VmKeys, VmState};
use cell_router_filter::key_subscription;
use cell_router_filter::metrics::Metrics;
use cell_router_filter::token::Reason;
use envoy::{ConfigHandle, Stream};
use metrics::{Definitions, Sink, Slots, Via};
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use subscriber::{Clusters, Link, Shared};

/// One `DynamicModuleFilter` config: shared by every worker.
struct FilterConfig {
    /// Tells the workers' state of different configs apart.
    id: u64,
    /// Envoy's side, for config-level metrics from any worker.
    envoy: ConfigHandle,
    /// Config, snapshot and keys in force (swapped by the background
    /// thread), and the metric definitions.
    shared: Arc<Shared>,
}

impl Drop for FilterConfig {
    fn drop(&mut self) {
        self.shared.unlink();
    }
}

static NEXT_CONFIG_ID: AtomicU64 = AtomicU64::new(1);

/// A worker thread's own state for one config, as a Wasm VM has: the token
/// cache, the shed draws and the metric ids.
struct Worker {
    config_id: u64,
    vm: VmState,
    metrics: Metrics,
    slots: Slots,
    /// `Shared::cache_epoch` when the token cache was last emptied.
    cache_epoch: u64,
    /// The snapshot version the metric ids were last pruned for.
    version: Option<u64>,
    /// `Workers::uses` when last used.
    last_used: u64,
}

/// Configs whose state one worker keeps at once (one per listener filter
/// chain with the router, as Wasm has a VM per config and worker); past
/// it, the least recently used is replaced (also how the state of a config
/// destroyed by a reload goes).
const MAX_CONFIGS_PER_WORKER: usize = 8;

/// One worker thread's states, one per config, and a use counter that
/// tells the least recently used apart.
#[derive(Default)]
struct Workers {
    uses: u64,
    states: Vec<Worker>,
}

thread_local! {
    static WORKERS: RefCell<Workers> = RefCell::new(Workers::default());
}

fn random_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    if getrandom::fill(&mut key).is_err() {
        for (slot, byte) in key.iter_mut().zip(now_nanos().to_le_bytes()) {
            *slot = byte;
        }
    }
    key
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Runs a hook body; a panic becomes `fallback` (and a log line) instead of
/// unwinding into Envoy.
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            envoy::log(
                abi::LOG_LEVEL_ERROR,
                &format!("cell-router: panic in {hook}; answered conservatively"),
            );
            fallback
        }
    }
}

/// # Safety
/// Called by Envoy once, when it loads the library.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    abi::ABI_VERSION.as_ptr()
}

/// Parses the plugin config (the same JSON as the Wasm filter's), defines
/// the metrics and starts the subscriptions; null refuses the config, and
/// Envoy then refuses the listener.
///
/// # Safety
/// Envoy passes its config pointer and its name and config buffers, valid
/// for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: HttpFilterConfigEnvoyPtr,
    _name_ptr: *const u8,
    _name_len: usize,
    config_ptr: *const u8,
    config_len: usize,
) -> HttpFilterConfigModulePtr {
    let bytes: &[u8] = if config_ptr.is_null() || config_len == 0 {
        &[]
    } else {
        // SAFETY: Envoy's config buffer is valid for config_len bytes during this call.
        unsafe { std::slice::from_raw_parts(config_ptr, config_len) }
    };
    // SAFETY: Envoy's pointer for this config; FilterConfig's drop (in
    // config_destroy) ends every use of it.
    let handle = unsafe { ConfigHandle::new(config_envoy) };
    guarded("config_new", std::ptr::null(), || {
        let mut config = match Config::from_json(bytes) {
            Ok(config) => config,
            Err(err) => {
                envoy::log(
                    abi::LOG_LEVEL_ERROR,
                    &format!("cell-router: configuration refused: {err}"),
                );
                return std::ptr::null();
            }
        };
        let installed = config
            .fallback_snapshot
            .take()
            .map(|s| Arc::new(Installed::new(s)));
        let with_keys = config
            .jwt()
            .is_some_and(|j| j.remote.is_some() || j.providers.iter().any(|p| p.remote.is_some()));
        let definitions = Definitions::define(handle, with_keys);
        let clusters = Clusters::from_env(config.sidecar.as_ref().map(|s| s.cluster.as_str()));
        let background = config.sidecar.is_some() || with_keys;
        envoy::log(
            abi::LOG_LEVEL_INFO,
            &format!(
                "cell-router native {} configured; fallback snapshot {}; {} metrics defined; clusters {:?}",
                env!("CARGO_PKG_VERSION"),
                installed
                    .as_ref()
                    .map_or("none".to_string(), |i| format!("v{}", i.version())),
                definitions.count(),
                clusters,
            ),
        );
        let shared = Arc::new(Shared::new(config, installed, definitions));
        match shared.link.write() {
            Ok(mut link) => {
                *link = Some(Link {
                    config: handle,
                    scheduler: handle.scheduler(),
                })
            }
            Err(_) => return std::ptr::null(),
        }
        if background && let Err(err) = subscriber::start(Arc::clone(&shared), clusters) {
            envoy::log(
                abi::LOG_LEVEL_ERROR,
                &format!("cell-router: no subscription thread: {err}"),
            );
            shared.unlink();
            return std::ptr::null();
        }
        let filter_config = Box::new(FilterConfig {
            id: NEXT_CONFIG_ID.fetch_add(1, Ordering::Relaxed),
            envoy: handle,
            shared,
        });
        Box::into_raw(filter_config) as HttpFilterConfigModulePtr
    })
}

/// # Safety
/// `config` is a pointer `config_new` returned; Envoy destroys it once, after
/// every filter made from it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: HttpFilterConfigModulePtr,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in config_new, destroyed once.
    let config = unsafe { Box::from_raw(config as *mut FilterConfig) };
    guarded("config_destroy", (), move || drop(config));
}

/// A main-thread event the background thread scheduled: the per-cell
/// gauges, which only Envoy's own threads may create.
///
/// # Safety
/// `config` is a pointer `config_new` returned, alive for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: HttpFilterConfigEnvoyPtr,
    config: HttpFilterConfigModulePtr,
    event: u64,
) {
    if config.is_null() || event != subscriber::EVENT_GAUGES {
        return;
    }
    // SAFETY: Envoy calls this only while the config lives.
    let config = unsafe { &*(config as *const FilterConfig) };
    guarded("config_scheduled", (), || {
        config
            .shared
            .record_main_gauges(config.envoy, subscriber::now_ms())
    });
}

/// A request's filter: no per-request state, so the config pointer itself.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: HttpFilterConfigModulePtr,
    _filter_envoy: HttpFilterEnvoyPtr,
) -> HttpFilterModulePtr {
    config
}

/// Nothing per request to free.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: HttpFilterModulePtr) {}

/// # Safety
/// `filter_envoy` is the running request's filter; `filter` the pointer
/// `filter_new` returned (the live config).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the filter pointer of this very hook.
    let stream = unsafe { Stream::new(filter_envoy) };
    if filter.is_null() {
        respond_503(
            &stream,
            "cell_router_unconfigured",
            "the cell router is not configured",
        );
        return abi::REQUEST_HEADERS_STOP_ITERATION;
    }
    // SAFETY: Envoy keeps the config alive while any of its filters lives.
    let config = unsafe { &*(filter as *const FilterConfig) };
    // A panic (caught) answers 503: fail closed, never a hung request.
    let answered = guarded("request_headers", None, || {
        Some(on_request_headers(&stream, config))
    })
    .unwrap_or_else(|| {
        respond_503(&stream, "cell_router_panic", "the cell router failed");
        true
    });
    if answered {
        abi::REQUEST_HEADERS_STOP_ITERATION
    } else {
        abi::REQUEST_HEADERS_CONTINUE
    }
}

fn respond_503(stream: &Stream, details: &str, detail: &str) {
    let body = format!(
        "{{\"error\":\"internal\",\"detail\":{}}}",
        serde_json_string(detail)
    );
    stream.send_response(
        503,
        &[("content-type", "application/json")],
        body.as_bytes(),
        details,
    );
}

fn serde_json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// This worker's state for `config`, made (or made again) as needed.
fn worker_for<'w>(
    workers: &'w mut Workers,
    config: &FilterConfig,
    settings: &Config,
) -> Option<&'w mut Worker> {
    workers.uses = workers.uses.wrapping_add(1);
    let states = &mut workers.states;
    let index = match states.iter().position(|w| w.config_id == config.id) {
        Some(i) => {
            if let Some(worker) = states.get_mut(i).filter(|w| w.slots.full()) {
                *worker = new_worker(config, settings);
            }
            i
        }
        None if states.len() < MAX_CONFIGS_PER_WORKER => {
            states.push(new_worker(config, settings));
            states.len().saturating_sub(1)
        }
        None => {
            let oldest = states
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.last_used)
                .map_or(0, |(i, _)| i);
            if let Some(worker) = states.get_mut(oldest) {
                *worker = new_worker(config, settings);
            }
            oldest
        }
    };
    let worker = states.get_mut(index)?;
    worker.last_used = workers.uses;
    Some(worker)
}

fn new_worker(config: &FilterConfig, settings: &Config) -> Worker {
    let mut slots = Slots::default();
    // Only names are resolved here: no Envoy call.
    let metrics = Metrics::define(&mut Sink {
        config: config.envoy,
        definitions: &config.shared.definitions,
        slots: &mut slots,
        via: Via::Background,
    });
    Worker {
        config_id: config.id,
        vm: VmState::new(
            settings,
            VmKeys {
                cache: random_key(),
                shed: random_key(),
            },
        ),
        metrics,
        slots,
        cache_epoch: config.shared.cache_epoch.load(Ordering::Relaxed),
        version: None,
        last_used: 0,
    }
}

/// Decides and applies one request; true when it was answered locally.
fn on_request_headers(stream: &Stream, config: &FilterConfig) -> bool {
    let shared = &config.shared;
    let installed = shared.installed();
    let installed = installed.as_deref();
    let settings = shared.config();
    let settings: &Config = &settings;
    WORKERS.with(|workers| {
        let Ok(mut workers) = workers.try_borrow_mut() else {
            respond_503(stream, "cell_router_busy", "the cell router state is busy");
            return true;
        };
        let Some(worker) = worker_for(&mut workers, config, settings) else {
            respond_503(
                stream,
                "cell_router_busy",
                "the cell router state is missing",
            );
            return true;
        };
        let epoch = shared.cache_epoch.load(Ordering::Relaxed);
        if epoch != worker.cache_epoch {
            worker.vm.cache.clear();
            worker.cache_epoch = epoch;
        }
        let Worker {
            vm,
            metrics,
            slots,
            version,
            ..
        } = worker;
        let mut sink = Sink {
            config: config.envoy,
            definitions: &shared.definitions,
            slots,
            via: Via::Request(stream),
        };
        // Per-cell ids only for the cells in force, as Wasm's install does.
        if let Some(installed) = installed
            && *version != Some(installed.version())
        {
            let cells = installed.snapshot();
            metrics.retain_cells(|id| cells.cell_index(id).is_some());
            *version = Some(installed.version());
        }
        // Borrowed from Envoy's map: dropped below, before any header changes.
        let headers = stream.request_headers();
        let mut clock = subscriber::now_ms;
        let decision = decide::decide(settings, vm, &headers, &mut clock, installed);

        if let Some(hit) = decision.cache_hit {
            metrics.cache(&mut sink, hit);
        }
        if let Some(by_host) = decision.verified_by_host {
            metrics.verified(&mut sink, by_host);
        }
        // The same bookkeeping as the Wasm filter's (`Metrics::outcome`).
        metrics.outcome(&mut sink, decision.outcome);
        // Keys fetched at run time: an unknown kid may be a new key.
        if decision.outcome == Outcome::Rejected(Reason::UnknownKid)
            && let Some(jwt) = settings.jwt()
            && let Some(kid) = key_subscription::unknown_kid_of(jwt, &headers)
        {
            key_subscription::note_unknown_kid(&mut subscriber::lock(&shared.unknown_kids), kid);
        }
        drop(headers);

        // The decision, where access logs read it (`%FILTER_STATE(cell_router.cell:PLAIN)%`).
        if settings.filter_state {
            for (key, value) in decide::filter_state(&decision, installed, settings.log_tenant) {
                let _ = stream.set_filter_state(key, value.as_bytes());
            }
        }
        // Client copies go whatever the answer.
        for name in &decision.remove {
            let _ = stream.remove_request_header(name);
        }
        match decision.action {
            Action::Continue { set } => {
                for (name, value) in set {
                    if !stream.set_request_header(name, value) {
                        respond_503(
                            stream,
                            "cell_router_header_failed",
                            "could not set the cell header",
                        );
                        return true;
                    }
                }
                stream.clear_route_cache();
                false
            }
            Action::Respond(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                stream.send_response(reply.status, &headers, &reply.body, &reply.details);
                true
            }
        }
    })
}

macro_rules! continue_hook {
    ($($name:ident),* $(,)?) => {$(
        /// Not used by the router: lets the stream go on.
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(_filter_envoy: HttpFilterEnvoyPtr, _filter: HttpFilterModulePtr) -> u32 {
            0
        }
    )*};
}

continue_hook!(
    // (.., status, details, reset_imminent) -> Continue: the reply goes out.
    envoy_dynamic_module_on_http_filter_local_reply,
    envoy_dynamic_module_on_http_filter_request_body,
    envoy_dynamic_module_on_http_filter_request_trailers,
    envoy_dynamic_module_on_http_filter_response_headers,
    envoy_dynamic_module_on_http_filter_response_body,
    envoy_dynamic_module_on_http_filter_response_trailers,
);

/// Hooks Envoy resolves when it loads the module but the router never
/// triggers (it makes no callouts, schedules nothing, has no per-route
/// config). Declared with their first two pointer arguments only; the C
/// calling convention leaves the rest to the caller, so ignoring them is sound.
macro_rules! void_hook {
    ($($name:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(_first: *const std::ffi::c_void, _second: *const std::ffi::c_void) {}
    )*};
}

void_hook!(
    envoy_dynamic_module_on_http_filter_stream_complete,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
);

/// No per-route config is supported: null refuses one.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name_ptr: *const u8,
    _name_len: usize,
) -> *const std::ffi::c_void {
    std::ptr::null()
}
