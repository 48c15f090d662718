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
mod subscriber;

use abi::{
    HttpFilterConfigEnvoyPtr, HttpFilterConfigModulePtr, HttpFilterEnvoyPtr, HttpFilterModulePtr,
};
use cell_router_filter::Config;
use cell_router_filter::decide::{self, Action, Installed, VmKeys, VmState};
use envoy::Stream;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// One `DynamicModuleFilter` config: shared by every worker.
struct FilterConfig {
    /// Tells the workers' token caches of different configs apart.
    id: u64,
    config: Config,
    /// The snapshot in force (requests clone the `Arc`, no copy of the map),
    /// swapped by the subscription thread.
    shared: Arc<subscriber::Shared>,
}

impl FilterConfig {
    fn installed(&self) -> Option<Arc<Installed>> {
        self.shared.installed()
    }
}

impl Drop for FilterConfig {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Where the subscription thread finds the sidecar.
const SIDECAR_ADDRESS_ENV: &str = "CELL_ROUTER_SIDECAR_ADDRESS";
const DEFAULT_SIDECAR_ADDRESS: &str = "127.0.0.1:18000";

static NEXT_CONFIG_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This worker's token cache, for the config it last served.
    static WORKER: RefCell<Option<(u64, VmState)>> = const { RefCell::new(None) };
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

/// The core's clock: unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

/// Parses the plugin config (the same JSON as the Wasm filter's); null
/// refuses it, and Envoy then refuses the listener.
///
/// # Safety
/// Envoy passes its name and config buffers, valid for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: HttpFilterConfigEnvoyPtr,
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
    guarded("config_new", std::ptr::null(), || {
        match Config::from_json(bytes) {
            Ok(mut config) => {
                let installed = config
                    .fallback_snapshot
                    .take()
                    .map(|s| Arc::new(Installed::new(s)));
                envoy::log(
                    abi::LOG_LEVEL_INFO,
                    &format!(
                        "cell-router native {} configured; fallback snapshot {}",
                        env!("CARGO_PKG_VERSION"),
                        installed
                            .as_ref()
                            .map_or("none".to_string(), |i| format!("v{}", i.version())),
                    ),
                );
                let shared = Arc::new(subscriber::Shared {
                    installed: RwLock::new(installed),
                    stop: AtomicBool::new(false),
                });
                if let Some(sidecar) = config.sidecar.clone() {
                    let address = std::env::var(SIDECAR_ADDRESS_ENV)
                        .unwrap_or_else(|_| DEFAULT_SIDECAR_ADDRESS.to_string());
                    if let Err(err) = subscriber::start(Arc::clone(&shared), sidecar, address) {
                        envoy::log(
                            abi::LOG_LEVEL_ERROR,
                            &format!("cell-router: no snapshot subscription thread: {err}"),
                        );
                        return std::ptr::null();
                    }
                }
                let filter_config = Box::new(FilterConfig {
                    id: NEXT_CONFIG_ID.fetch_add(1, Ordering::Relaxed),
                    config,
                    shared,
                });
                Box::into_raw(filter_config) as HttpFilterConfigModulePtr
            }
            Err(err) => {
                envoy::log(
                    abi::LOG_LEVEL_ERROR,
                    &format!("cell-router: configuration refused: {}", err),
                );
                std::ptr::null()
            }
        }
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

/// A request's filter: no per-request state, so the config pointer itself.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: HttpFilterConfigModulePtr,
    _filter_envoy: HttpFilterEnvoyPtr,
) -> HttpFilterModulePtr {
    config
}

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
    let shared = unsafe { &*(filter as *const FilterConfig) };
    // A panic (caught) answers 503: fail closed, never a hung request.
    let answered = guarded("request_headers", None, || {
        Some(on_request_headers(&stream, shared))
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

/// Decides and applies one request; true when it was answered locally.
fn on_request_headers(stream: &Stream, shared: &FilterConfig) -> bool {
    let headers = stream.request_headers();
    let installed = shared.installed();
    WORKER.with(|worker| {
        let Ok(mut worker) = worker.try_borrow_mut() else {
            respond_503(stream, "cell_router_busy", "the cell router state is busy");
            return true;
        };
        if worker.as_ref().is_none_or(|(id, _)| *id != shared.id) {
            *worker = Some((
                shared.id,
                VmState::new(
                    &shared.config,
                    VmKeys {
                        cache: random_key(),
                        shed: random_key(),
                    },
                ),
            ));
        }
        let Some((_, vm)) = worker.as_mut() else {
            respond_503(
                stream,
                "cell_router_busy",
                "the cell router state is missing",
            );
            return true;
        };
        let mut clock = now_ms;
        let decision = decide::decide(
            &shared.config,
            vm,
            &headers,
            &mut clock,
            installed.as_deref(),
        );
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
    envoy_dynamic_module_on_http_filter_config_scheduled,
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
