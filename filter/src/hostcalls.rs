//! The proxy-wasm host functions the filter calls (ABI 0.2.1 `env.proxy_*`
//! imports), declared here and wrapped so that every status the host answers
//! is a value to handle, never a panic. The SDK's wrappers panic on statuses
//! they do not expect (and its header getters unwrap UTF-8), which would
//! trap the worker's VM; the filter does not use them. Only built for wasm.

use crate::header_pairs::{parse_pairs, serialize_pairs};
use std::ptr::{null, null_mut};

/// proxy_status_t values the filter tells apart.
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
}

/// A proxy_status_t other than OK.
pub type Status = u32;

/// Header maps (proxy_map_type_t).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    HttpCallResponseHeaders = 6,
}

/// Buffers (proxy_buffer_type_t).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Buffer {
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// proxy_log_level_t.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// proxy_metric_type_t.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_get_status(code: *mut u32, message: *mut *mut u8, message_size: *mut usize) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        results: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

fn result(status: u32) -> Result<(), Status> {
    if status == status::OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// Takes back a buffer the host allocated through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` must be null or a pointer the host got from this module's
/// `proxy_on_memory_allocate(size)` (a boxed slice of exactly `size` bytes),
/// not yet taken back.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: see the function's contract; capacity = length = size.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

pub fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live str; the host copies it.
    result(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// Host clock, nanoseconds since the epoch (0 if the host fails).
pub fn now_nanos() -> u64 {
    let mut time: u64 = 0;
    // SAFETY: the host writes one u64 into `time`.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut time) };
    if status == status::OK { time } else { 0 }
}

/// The host's status of the last call (code and message), e.g. why an HTTP
/// call got no response; `None` if the host does not say.
pub fn last_status() -> Option<(u32, String)> {
    let mut code: u32 = 0;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a code, a pointer and a size into our locals.
    let status = unsafe { proxy_get_status(&mut code, &mut data, &mut size) };
    // SAFETY: the host allocated `data` with proxy_on_memory_allocate(size).
    let message = unsafe { take_host_buffer(data, size) };
    (status == status::OK).then(|| (code, String::from_utf8_lossy(&message).into_owned()))
}

/// Asks the host to call `proxy_on_tick` every `period_ms` (it re-arms the
/// timer itself until told otherwise).
pub fn set_tick_period(period_ms: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    result(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// Up to `max_size` bytes of a buffer from `start`; `None` when the host has
/// no such buffer now.
pub fn buffer(buffer: Buffer, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into our locals.
    let status =
        unsafe { proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size) };
    match status {
        status::OK => {
            if data.is_null() {
                return Ok(None);
            }
            // SAFETY: the host allocated `data` with proxy_on_memory_allocate(size).
            Ok(Some(unsafe { take_host_buffer(data, size) }))
        }
        status::NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

/// The value of `key` in the data the VMs of this plugin's `vm_id` share
/// (the host's, one per Envoy process); `None` when it has none.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the key is a live slice; the host writes a pointer, a size and
    // a CAS into our locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    // SAFETY: the host allocated `data` with proxy_on_memory_allocate(size).
    let value = unsafe { take_host_buffer(data, size) };
    match status {
        status::OK => Ok(Some((value, cas))),
        status::NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

/// Sets `key` in the shared data: with `cas` 0 whatever it holds, else only
/// if it is still at that CAS (an error status otherwise).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: both slices are live for the call.
    result(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// The serialized header map, as one buffer (parse it with [`pairs`]).
pub fn header_map(map: Map) -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into our locals.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    result(status)?;
    // SAFETY: the host allocated `data` with proxy_on_memory_allocate(size).
    Ok(unsafe { take_host_buffer(data, size) })
}

/// Name/value pairs of a serialized map; an unparsable map reads as empty.
pub fn pairs(buffer: &[u8]) -> Vec<(&[u8], &[u8])> {
    parse_pairs(buffer).unwrap_or_default()
}

pub fn replace_header(map: Map, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices; the host copies them.
    result(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: Map, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live str; the host copies it.
    result(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Sets a property of the current stream. `path` is one segment (no NUL):
/// Envoy keeps it as filter state `wasm.<path>`, a bytes value that access
/// logs print with `%FILTER_STATE(wasm.<path>:PLAIN)%`.
pub fn set_property(path: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices; the host copies them.
    result(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Status> {
    let serialized = serialize_pairs(headers);
    // SAFETY: pointers and lengths of live buffers; the host copies them.
    result(unsafe {
        proxy_send_local_response(
            status,
            if details.is_empty() {
                null()
            } else {
                details.as_ptr()
            },
            details.len(),
            body.as_ptr(),
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            -1,
        )
    })
}

/// Starts an HTTP call to `cluster` (no body, no trailers); the answer comes
/// to `proxy_on_http_call_response` with the returned token.
pub fn http_call(cluster: &str, headers: &[(&str, &str)], timeout_ms: u32) -> Result<u32, Status> {
    let serialized = serialize_pairs(headers);
    let trailers = serialize_pairs::<&str, &str>(&[]);
    let mut token: u32 = 0;
    // SAFETY: pointers and lengths of live buffers (the host copies them);
    // the host writes the token into our local.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            serialized.as_ptr(),
            serialized.len(),
            null(),
            0,
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    };
    result(status).map(|()| token)
}

pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: pointer and length of a live str; the host writes the id.
    result(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })
        .map(|()| id)
}

pub fn increment_metric(id: u32, delta: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    result(unsafe { proxy_increment_metric(id, delta) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    result(unsafe { proxy_record_metric(id, value) })
}

/// Calls a host foreign function; `Err(status::NOT_FOUND)` when the host
/// has none of that name.
pub fn call_foreign_function(name: &str, arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: pointers and lengths of live buffers (the host copies them);
    // the host writes a pointer and a size into our locals.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            if arguments.is_empty() {
                null()
            } else {
                arguments.as_ptr()
            },
            arguments.len(),
            &mut data,
            &mut size,
        )
    };
    result(status)?;
    // SAFETY: the host allocated `data` with proxy_on_memory_allocate(size).
    Ok(unsafe { take_host_buffer(data, size) })
}
