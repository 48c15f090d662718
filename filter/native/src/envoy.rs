//! A small safe wrapper over the callbacks in `abi`: one [`Stream`] per
//! request, valid only inside the hook Envoy called with its pointer.

use crate::abi::{self, EnvoyHttpHeader, HttpFilterEnvoyPtr, ModuleBuffer, ModuleHttpHeader};

fn module_buffer(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

/// An Envoy-owned (ptr, len) as a slice (empty for null).
///
/// # Safety
/// `ptr` must be null or valid for `len` bytes for as long as `'a`.
unsafe fn borrow<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees ptr is valid for len bytes.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Writes a line to Envoy's log (component `dynamic_modules`).
pub fn log(level: u32, message: &str) {
    // SAFETY: the buffer lives for the call; Envoy copies it.
    unsafe { abi::envoy_dynamic_module_callback_log(level, module_buffer(message.as_bytes())) }
}

/// One request's filter in Envoy, for the duration of one hook.
pub struct Stream {
    ptr: HttpFilterEnvoyPtr,
}

impl Stream {
    /// # Safety
    /// `ptr` must be the filter pointer Envoy passed to the running hook, and
    /// the `Stream` must not outlive that hook.
    pub unsafe fn new(ptr: HttpFilterEnvoyPtr) -> Stream {
        Stream { ptr }
    }

    /// Every request header (in order, repeated names repeated), borrowed
    /// from Envoy's header map: no copy on the request path. The slices stay
    /// valid until the map changes, so the caller drops them before it sets
    /// or removes a header (the borrow of `self` only ties them to the hook).
    pub fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        // SAFETY: self.ptr is the running hook's filter (see `new`).
        let count = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
            )
        };
        if count == 0 {
            return Vec::new();
        }
        let empty = EnvoyHttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        let mut raw = vec![empty; count];
        // SAFETY: `raw` has room for the `count` headers Envoy just reported.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                // SAFETY: Envoy filled each entry with buffers valid during
                // this hook while the header map is unchanged (see above).
                unsafe {
                    (
                        borrow(h.key_ptr, h.key_length),
                        borrow(h.value_ptr, h.value_length),
                    )
                }
            })
            .collect()
    }

    /// Replaces every copy of a request header with one value.
    pub fn set_request_header(&self, name: &str, value: &[u8]) -> bool {
        // SAFETY: the buffers live for the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
                module_buffer(name.as_bytes()),
                module_buffer(value),
            )
        }
    }

    /// Removes every copy of a request header.
    pub fn remove_request_header(&self, name: &str) -> bool {
        let none = ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: as `set_request_header`; a null value means remove.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                abi::HEADER_TYPE_REQUEST,
                module_buffer(name.as_bytes()),
                none,
            )
        }
    }

    /// Makes Envoy pick the route again (the cell header changed).
    pub fn clear_route_cache(&self) {
        // SAFETY: self.ptr is the running hook's filter.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.ptr) }
    }

    /// Answers the request locally.
    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let headers: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr(),
                key_length: k.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: every buffer lives for the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                status,
                headers.as_ptr(),
                headers.len(),
                module_buffer(body),
                module_buffer(details.as_bytes()),
            )
        }
    }
}

impl Stream {
    /// Puts `value` in the stream's filter state under `key`.
    pub fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        // SAFETY: self.ptr is the running hook's filter; Envoy copies both buffers.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.ptr,
                module_buffer(key.as_bytes()),
                module_buffer(value),
            )
        }
    }

    /// Adds to a counter of this filter's config, labelled or not (a
    /// worker thread may ask for labelled stats).
    pub fn increment_counter(&self, id: usize, label: Option<&str>, delta: u64) {
        // On the stack: this runs for every routed request.
        let labels: &[ModuleBuffer] = match label {
            Some(l) => &[module_buffer(l.as_bytes())],
            None => &[],
        };
        // SAFETY: self.ptr is the running hook's filter; the label buffers
        // live for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id,
                labels.as_ptr(),
                labels.len(),
                delta,
            );
        }
    }
}

/// Envoy's side of one filter config, for the config-level callbacks.
#[derive(Clone, Copy)]
pub struct ConfigHandle {
    ptr: abi::HttpFilterConfigEnvoyPtr,
}

// SAFETY: the pointer is only an address handed back to Envoy; who may call
// what from which thread is up to each method (see their comments), and the
// owner keeps it from outliving the config (see `link::ConfigLink`).
unsafe impl Send for ConfigHandle {}
unsafe impl Sync for ConfigHandle {}

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl ConfigHandle {
    /// # Safety
    /// `ptr` is the config pointer Envoy passed to `on_http_filter_config_new`;
    /// the handle must not be used after that config is destroyed.
    pub unsafe fn new(ptr: abi::HttpFilterConfigEnvoyPtr) -> ConfigHandle {
        ConfigHandle { ptr }
    }

    /// Defines a metric; only valid during `on_http_filter_config_new`.
    pub fn define(&self, kind: Kind, name: &str, label: Option<&str>) -> Option<usize> {
        let labels: Vec<ModuleBuffer> = label
            .map(|l| module_buffer(l.as_bytes()))
            .into_iter()
            .collect();
        let mut id = 0usize;
        let define = match kind {
            Kind::Counter => abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
            Kind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
        };
        // SAFETY: config_new is running (the caller's contract); every
        // buffer lives for the call and `id` is a valid out pointer.
        let result = unsafe {
            define(
                self.ptr,
                module_buffer(name.as_bytes()),
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == abi::METRICS_SUCCESS).then_some(id)
    }

    /// Adds to (counter) or sets (gauge) a metric. Unlabelled: from any
    /// thread. Labelled: from the main thread only.
    pub fn update(&self, kind: Kind, id: usize, label: Option<&str>, value: u64) {
        let labels: Vec<ModuleBuffer> = label
            .map(|l| module_buffer(l.as_bytes()))
            .into_iter()
            .collect();
        let update = match kind {
            Kind::Counter => {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_counter
            }
            Kind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_set_gauge,
        };
        // SAFETY: the config is alive (the handle's contract); the label
        // buffers live for the call.
        unsafe {
            update(self.ptr, id, labels.as_ptr(), labels.len(), value);
        }
    }

    /// A scheduler of main-thread events for this config.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: the config is alive (the handle's contract).
        let ptr = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr)
        };
        (!ptr.is_null()).then_some(Scheduler { ptr })
    }
}

/// A config-level scheduler; deleted on drop.
pub struct Scheduler {
    ptr: abi::ConfigSchedulerPtr,
}

// SAFETY: Envoy's scheduler posts to the main dispatcher, which any thread
// may do; deletion happens once, by the owner.
unsafe impl Send for Scheduler {}
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// Runs `on_http_filter_config_scheduled(event)` on the main thread soon.
    pub fn commit(&self, event: u64) {
        // SAFETY: the scheduler is alive until drop.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.ptr, event)
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by scheduler_new, deleted once.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr) }
    }
}
