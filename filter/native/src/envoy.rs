//! A small safe wrapper over the callbacks in `abi`: one [`Stream`] per
//! request, valid only inside the hook Envoy called with its pointer.

use crate::abi::{self, EnvoyHttpHeader, HttpFilterEnvoyPtr, ModuleBuffer, ModuleHttpHeader};

fn module_buffer(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

/// Copies an Envoy-owned (ptr, len) into an owned vector (empty for null).
///
/// # Safety
/// `ptr` must be null or valid for `len` bytes.
unsafe fn copy(ptr: *const u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees ptr is valid for len bytes.
    unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
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

    /// Every request header (in order, repeated names repeated), copied.
    pub fn request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
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
                // SAFETY: Envoy filled each entry with buffers valid during this hook.
                unsafe {
                    (
                        copy(h.key_ptr, h.key_length),
                        copy(h.value_ptr, h.value_length),
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
