//! The benchmark's native probe: an Envoy 1.40 dynamic module
//! (`envoy.extensions.filters.http.dynamic_modules`) whose filter lets every
//! request continue untouched. Its filter config chooses what it does on a
//! request's headers:
//!
//! - `""`: nothing. Plain Envoy → this probe is what Envoy spends on any
//!   dynamic-module filter (the filter object and the hooks it calls).
//! - `"clear_route_cache"`: it clears the route cache, so Envoy matches the
//!   route again after the filter, as it must for the cell router (whose
//!   header picks the route).
//!
//! The hook signatures are those of Envoy 1.40.0's dynamic-module ABI, as
//! `filter/native/src/abi.rs` declares them (written from Envoy's public
//! `abi.h`); hooks the probe never needs are declared with their first two
//! arguments, the C calling convention leaving the rest to the caller.

use std::ffi::c_void;

/// Envoy 1.40.0's `ENVOY_DYNAMIC_MODULES_ABI_VERSION`, NUL-terminated.
const ABI_VERSION: &[u8] = b"v0.2.0\0";
/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
const CONTINUE: u32 = 0;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
}

/// What a filter config asked for; the config pointer Envoy holds points at
/// one of these (static: nothing to free).
static NOTHING: u8 = 0;
static CLEAR_ROUTE_CACHE: u8 = 1;

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    ABI_VERSION.as_ptr()
}

/// # Safety
/// Envoy passes its name and config buffers, valid for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: *mut c_void,
    _name_ptr: *const u8,
    _name_len: usize,
    config_ptr: *const u8,
    config_len: usize,
) -> *const c_void {
    let config: &[u8] = if config_ptr.is_null() {
        &[]
    } else {
        // SAFETY: Envoy's config buffer is valid for config_len bytes here.
        unsafe { std::slice::from_raw_parts(config_ptr, config_len) }
    };
    let mode: &'static u8 = match config {
        b"" => &NOTHING,
        b"clear_route_cache" => &CLEAR_ROUTE_CACHE,
        // Anything else refuses the config (Envoy then refuses the listener).
        _ => return std::ptr::null(),
    };
    (mode as *const u8).cast()
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: *const c_void) {}

/// The filter is its config's mode: nothing per request.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: *mut c_void,
) -> *const c_void {
    config
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: *const c_void) {}

/// # Safety
/// `filter_envoy` is the running request's filter; `filter` the pointer
/// `filter_new` returned (one of the statics above).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    if std::ptr::eq(filter, (&CLEAR_ROUTE_CACHE as *const u8).cast()) {
        // SAFETY: the filter pointer of this very hook.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(filter_envoy) }
    }
    CONTINUE
}

/// No per-route config: null refuses one.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name_ptr: *const u8,
    _name_len: usize,
) -> *const c_void {
    std::ptr::null()
}

/// Hooks that let the stream go on (status 0 is Continue for each).
macro_rules! continue_hook {
    ($($name:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(_filter_envoy: *mut c_void, _filter: *const c_void) -> u32 {
            CONTINUE
        }
    )*};
}

continue_hook!(
    envoy_dynamic_module_on_http_filter_local_reply,
    envoy_dynamic_module_on_http_filter_request_body,
    envoy_dynamic_module_on_http_filter_request_trailers,
    envoy_dynamic_module_on_http_filter_response_headers,
    envoy_dynamic_module_on_http_filter_response_body,
    envoy_dynamic_module_on_http_filter_response_trailers,
);

/// Hooks Envoy resolves at load that the probe never triggers.
macro_rules! void_hook {
    ($($name:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(_first: *const c_void, _second: *const c_void) {}
    )*};
}

void_hook!(
    envoy_dynamic_module_on_http_filter_config_scheduled,
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
