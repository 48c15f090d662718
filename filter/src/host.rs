//! The few proxy-wasm host calls on the request path, declared directly so a
//! surprising status from the host is an error to handle, not a panic (the
//! SDK's wrappers panic on statuses they do not expect, and its header
//! getters unwrap UTF-8 names). Only built for wasm.

use crate::header_pairs::parse_pairs;
use std::ptr::{null, null_mut};

/// proxy_status_t OK.
const OK: u32 = 0;

/// Header maps (proxy_map_type_t).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    HttpCallResponseHeaders = 6,
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
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
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
}

/// The serialized header map, as one buffer (parse it with [`pairs`]).
pub fn header_map(map: Map) -> Result<Vec<u8>, u32> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated through this module's
    // proxy_on_memory_allocate (a Vec<u8> of capacity `size`, forgotten by
    // the SDK's allocator), which we take back exactly as the SDK does.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    if status != OK {
        return Err(status);
    }
    if data.is_null() || size == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: see above; `data` is non-null and owns `size` bytes.
    Ok(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Name/value pairs of a serialized map; an unparsable map reads as empty.
pub fn pairs(buffer: &[u8]) -> Vec<(&[u8], &[u8])> {
    parse_pairs(buffer).unwrap_or_default()
}

pub fn replace_header(map: Map, name: &str, value: &[u8]) -> Result<(), u32> {
    // SAFETY: pointers and lengths of live slices; the host copies them.
    let status = unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    if status == OK { Ok(()) } else { Err(status) }
}

pub fn remove_header(map: Map, name: &str) -> Result<(), u32> {
    // SAFETY: pointer and length of a live str; the host copies it.
    let status = unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
    if status == OK { Ok(()) } else { Err(status) }
}

pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), u32> {
    let serialized = crate::header_pairs::serialize_pairs(headers);
    // SAFETY: pointers and lengths of live buffers; the host copies them.
    let result = unsafe {
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
    };
    if result == OK { Ok(()) } else { Err(result) }
}

/// Host clock, nanoseconds since the epoch (0 if the host fails).
pub fn now_nanos() -> u64 {
    let mut time: u64 = 0;
    // SAFETY: the host writes one u64 into `time`.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut time) };
    if status == OK { time } else { 0 }
}
