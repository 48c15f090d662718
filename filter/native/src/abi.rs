//! Declarations of the part of Envoy's dynamic-module C ABI this module uses,
//! written from Envoy 1.40.0's `source/extensions/dynamic_modules/abi/abi.h`
//! (not vendored). Envoy resolves the hooks (`envoy_dynamic_module_on_*`) in
//! this library and exports the callbacks (`envoy_dynamic_module_callback_*`)
//! from its own binary; the callbacks are resolved when the library is
//! loaded into Envoy.
//!
//! Checked against the 1.40.0 binary's machine code as well: `get_headers_size`
//! takes (filter, type) and returns the count; `set_header` takes its key and
//! value as two (ptr, len) pairs in registers; `send_response` reads its
//! `details` buffer from the stack (the sixth and seventh words);
//! `config_increment_counter` and `config_set_gauge` take (config, id,
//! labels, label count, value) and, without labels, add to a stat held since
//! its definition; `set_filter_state_bytes` takes (filter, key, value) as
//! pairs in registers; `config_scheduler_new` takes the config alone.

use std::ffi::c_void;

/// The string `envoy_dynamic_module_on_program_init` returns: the ABI version
/// of Envoy 1.40.0 (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`), NUL-terminated.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

pub type HttpFilterConfigEnvoyPtr = *mut c_void;
pub type HttpFilterConfigModulePtr = *const c_void;
pub type HttpFilterEnvoyPtr = *mut c_void;
pub type HttpFilterModulePtr = *const c_void;
/// A config-level scheduler (`http_filter_config_scheduler_new`).
pub type ConfigSchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_metrics_result`: 0 is success.
pub const METRICS_SUCCESS: u32 = 0;

/// A buffer owned by the module (valid for the call it is passed to).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// One header of Envoy's header map (owned by Envoy).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// One header of a local reply (owned by the module).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const HEADER_TYPE_REQUEST: u32 = 0;

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
pub const REQUEST_HEADERS_CONTINUE: u32 = 0;
pub const REQUEST_HEADERS_STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_LEVEL_INFO: u32 = 2;
pub const LOG_LEVEL_ERROR: u32 = 4;

unsafe extern "C" {
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: HttpFilterEnvoyPtr,
        header_type: u32,
    ) -> usize;

    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: HttpFilterEnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHttpHeader,
    ) -> bool;

    /// Sets (replaces) a header; a null value removes it.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: HttpFilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: HttpFilterEnvoyPtr,
        status_code: u32,
        headers: *const ModuleHttpHeader,
        headers_count: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: HttpFilterEnvoyPtr);

    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);

    /// Metrics: defined only while `on_http_filter_config_new` runs (Envoy
    /// freezes definitions after it), under Envoy's `dynamicmodulescustom.`
    /// namespace. `label_names` may be null when there are none; a labelled
    /// metric's full name is `<name>.<label>.<value>` with the label as a tag.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;

    /// Config-level: an unlabelled metric is one atomic add (any thread); a
    /// labelled one looks its stat up through the thread's stats cache, so
    /// only Envoy's threads (the main thread here) may ask for it.
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    /// Per-request (a worker thread): any metric of the filter's config.
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: HttpFilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    /// Stores bytes in the stream's filter state under `key` (read by
    /// `%FILTER_STATE(key:PLAIN)%` in access logs).
    pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: HttpFilterEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// A scheduler whose commits (from any thread) run
    /// `envoy_dynamic_module_on_http_filter_config_scheduled` on the main thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: HttpFilterConfigEnvoyPtr,
    ) -> ConfigSchedulerPtr;

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: ConfigSchedulerPtr,
        event_id: u64,
    );

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: ConfigSchedulerPtr,
    );
}
