//! The `env.proxy_*` host functions of proxy-wasm ABI 0.2.1, with Envoy's
//! semantics (statuses, which maps exist in which callback, deferred local
//! replies and stream continuation, root-context HTTP calls).

use super::guest::{Status, copy_out, read, write_u32, write_u64};
use super::headers::HeaderMap;
use super::pairs;
use super::state::{
    Access, ForeignCall, HostState, HttpCall, LocalResponse, LogLevel, Metric, MetricKind, Queue,
    lock,
};
use std::time::Duration;
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

/// Counts the call and refuses proxy calls while the VM starts: Envoy only
/// allows WASI functions inside `_initialize`/`_start`.
fn enter(c: &mut C<'_>, name: &'static str) -> wasmtime::Result<()> {
    if c.data().starting {
        return Err(wasmtime::Error::msg(format!(
            "{name} called during _initialize/_start; Envoy allows only WASI calls there"
        )));
    }
    c.data_mut().count(name);
    Ok(())
}

fn ok(status: Status) -> R {
    Ok(status.code())
}

/// Bytes from guest memory, or the status Envoy answers for a bad pointer.
macro_rules! mem {
    ($c:expr, $ptr:expr, $len:expr) => {
        match read($c, $ptr, $len) {
            Some(bytes) => bytes,
            None => return ok(Status::InvalidMemoryAccess),
        }
    };
}

pub(crate) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    define_general(linker)?;
    define_buffers_and_maps(linker)?;
    define_stream_control(linker)?;
    define_shared(linker)?;
    define_metrics(linker)?;
    define_unsupported(linker)?;
    Ok(())
}

fn define_general(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> R {
            enter(&mut c, "proxy_log")?;
            let Some(level) = LogLevel::from_abi(level) else {
                return ok(Status::BadArgument);
            };
            let message = mem!(&mut c, ptr, len);
            let message = String::from_utf8_lossy(&message).into_owned();
            c.data_mut().log(level, message);
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ptr: i32| -> R {
            enter(&mut c, "proxy_get_log_level")?;
            let level = c.data().log_level as u32;
            if !write_u32(&mut c, ptr, level) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ptr: i32| -> R {
            enter(&mut c, "proxy_get_current_time_nanoseconds")?;
            let now = c.data().now().wall_nanos();
            if !write_u64(&mut c, ptr, now) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> R {
            enter(&mut c, "proxy_set_tick_period_milliseconds")?;
            let period = Duration::from_millis(u64::from(period as u32));
            let now = c.data().now().wall;
            let state = c.data_mut();
            if period.is_zero() {
                state.tick_period = None;
                state.next_tick = None;
            } else {
                state.tick_period = Some(period);
                state.next_tick = Some(now + period);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, path_ptr: i32, path_len: i32, value_ptr: i32, size_ptr: i32| -> R {
            enter(&mut c, "proxy_get_property")?;
            let path = mem!(&mut c, path_ptr, path_len);
            match super::properties::get(c.data(), &path) {
                Some(value) => Ok(copy_out(&mut c, &value, value_ptr, size_ptr)?.code()),
                None => ok(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, path_ptr: i32, path_len: i32, value_ptr: i32, value_len: i32| -> R {
            enter(&mut c, "proxy_set_property")?;
            let path = mem!(&mut c, path_ptr, path_len);
            let value = mem!(&mut c, value_ptr, value_len);
            if c.data().refuse_set_property {
                return ok(Status::InternalFailure);
            }
            // Envoy keeps properties in the stream's filter state; the root
            // context has none.
            match c.data_mut().active_stream() {
                Some(stream) => {
                    stream.properties.insert(path, value);
                    ok(Status::Ok)
                }
                None => ok(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> R {
            enter(&mut c, "proxy_set_effective_context")?;
            let id = id as u32;
            let state = c.data_mut();
            let live_stream = state
                .streams
                .get(&id)
                .is_some_and(|s| s.phase != super::state::Phase::Closed);
            if id != state.root_id && !live_stream {
                return ok(Status::BadArgument);
            }
            state.effective = Some(id);
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap("env", "proxy_done", |mut c: C<'_>| -> R {
        enter(&mut c, "proxy_done")?;
        match c.data_mut().active_stream() {
            Some(stream) => {
                stream.done_requested = true;
                ok(Status::Ok)
            }
            None => ok(Status::NotFound),
        }
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: i32, msg_ptr: i32, msg_size_ptr: i32| -> R {
            enter(&mut c, "proxy_get_status")?;
            let (code, message) = c.data().status.clone();
            if !write_u32(&mut c, code_ptr, code) {
                return ok(Status::InvalidMemoryAccess);
            }
            Ok(copy_out(&mut c, &message, msg_ptr, msg_size_ptr)?.code())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>,
         name_ptr: i32,
         name_len: i32,
         args_ptr: i32,
         args_len: i32,
         results_ptr: i32,
         results_size_ptr: i32|
         -> R {
            enter(&mut c, "proxy_call_foreign_function")?;
            let name = mem!(&mut c, name_ptr, name_len);
            let arguments = mem!(&mut c, args_ptr, args_len);
            let name = String::from_utf8_lossy(&name).into_owned();
            let started = std::time::Instant::now();
            let status =
                super::foreign::call(&mut c, &name, &arguments, results_ptr, results_size_ptr)?;
            let record = ForeignCall {
                name,
                arguments,
                status: status.code(),
                elapsed: started.elapsed(),
            };
            // Envoy runs foreign functions against the current context, not
            // the effective one.
            let state = c.data_mut();
            let current = state.current;
            match state.streams.get_mut(&current) {
                Some(stream) => stream.foreign_calls.push(record),
                None => state.root_foreign_calls.push(record),
            }
            ok(status)
        },
    )?;
    Ok(())
}

/// Envoy's `getBuffer`: which buffer a type means in the active context.
fn buffer(state: &HostState, kind: i32) -> Result<Option<Vec<u8>>, Status> {
    let stream = state.streams.get(&state.active());
    Ok(match kind {
        0 => stream.map(|s| {
            if s.open.contains(&Access::RequestBody) {
                s.request_body.clone()
            } else {
                Vec::new()
            }
        }),
        1 => stream.map(|s| {
            if s.open.contains(&Access::ResponseBody) {
                s.response_body.clone()
            } else {
                Vec::new()
            }
        }),
        4 => state.http_call_response.as_ref().map(|r| r.body.clone()),
        6 => Some(state.vm_config.clone()),
        7 => state.plugin_config.clone(),
        2 | 3 | 5 | 8 => None,
        _ => return Err(Status::BadArgument),
    })
}

fn body_mut(state: &mut HostState, kind: i32) -> Result<&mut Vec<u8>, Status> {
    let access = match kind {
        0 => Access::RequestBody,
        1 => Access::ResponseBody,
        2..=8 => return Err(Status::NotFound),
        _ => return Err(Status::BadArgument),
    };
    let stream = state.active_stream().ok_or(Status::NotFound)?;
    if !stream.open.contains(&access) {
        // Envoy's wrapper around a missing buffer is read-only.
        return Err(Status::BadArgument);
    }
    Ok(match access {
        Access::RequestBody => &mut stream.request_body,
        _ => &mut stream.response_body,
    })
}

/// Which header map a type means in the active context; `Ok(None)` when it
/// does not exist right now (Envoy hands maps out only in their callbacks).
fn map(state: &HostState, kind: i32) -> Result<Option<&HeaderMap>, Status> {
    let stream = state.streams.get(&state.active());
    let from_stream = |access: Access, pick: fn(&super::state::Stream) -> &HeaderMap| {
        stream.filter(|s| s.open.contains(&access)).map(pick)
    };
    Ok(match kind {
        0 => from_stream(Access::RequestHeaders, |s| &s.request_headers),
        1 => from_stream(Access::RequestTrailers, |s| &s.request_trailers),
        2 => from_stream(Access::ResponseHeaders, |s| &s.response_headers),
        3 => from_stream(Access::ResponseTrailers, |s| &s.response_trailers),
        4 | 5 => None,
        6 => state.http_call_response.as_ref().map(|r| &r.headers),
        7 => state.http_call_response.as_ref().map(|r| &r.trailers),
        _ => return Err(Status::BadArgument),
    })
}

fn map_mut(state: &mut HostState, kind: i32) -> Result<&mut HeaderMap, Status> {
    let (access, is_request) = match kind {
        0 => (Access::RequestHeaders, true),
        1 => (Access::RequestTrailers, false),
        2 => (Access::ResponseHeaders, false),
        3 => (Access::ResponseTrailers, false),
        // HTTP call responses and gRPC metadata are read-only here.
        4..=7 => return Err(Status::BadArgument),
        _ => return Err(Status::BadArgument),
    };
    let stream = state.active_stream().ok_or(Status::BadArgument)?;
    if !stream.open.contains(&access) {
        return Err(Status::BadArgument);
    }
    // Envoy clears the route cache whenever a filter changes request headers.
    if is_request {
        stream.route_cache_clears += 1;
    }
    Ok(match access {
        Access::RequestHeaders => &mut stream.request_headers,
        Access::RequestTrailers => &mut stream.request_trailers,
        Access::ResponseHeaders => &mut stream.response_headers,
        _ => &mut stream.response_trailers,
    })
}

fn define_buffers_and_maps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            enter(&mut c, "proxy_get_buffer_bytes")?;
            let data = match buffer(c.data(), kind) {
                Err(status) => return ok(status),
                Ok(None) => return ok(Status::NotFound),
                Ok(Some(data)) => data,
            };
            let start = start as u32 as usize;
            let len = (max as u32 as usize).min(data.len().saturating_sub(start));
            if len == 0 {
                // Envoy writes nothing back for an empty range.
                return ok(Status::Ok);
            }
            let slice = data.get(start..start + len).unwrap_or_default();
            Ok(copy_out(&mut c, slice, ptr_ptr, size_ptr)?.code())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, kind: i32, len_ptr: i32, flags_ptr: i32| -> R {
            enter(&mut c, "proxy_get_buffer_status")?;
            let len = match buffer(c.data(), kind) {
                Err(status) => return ok(status),
                Ok(None) => return ok(Status::NotFound),
                Ok(Some(data)) => data.len() as u32,
            };
            if !write_u32(&mut c, len_ptr, len) || !write_u32(&mut c, flags_ptr, 0) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, len: i32, data_ptr: i32, data_len: i32| -> R {
            enter(&mut c, "proxy_set_buffer_bytes")?;
            let data = mem!(&mut c, data_ptr, data_len);
            let (start, len) = (start as u32 as usize, len as u32 as usize);
            let body = match body_mut(c.data_mut(), kind) {
                Ok(body) => body,
                Err(status) => return ok(status),
            };
            // Envoy's Buffer::copyFrom: prepend, replace all, or append.
            if start == 0 && len == 0 {
                body.splice(0..0, data);
            } else if start == 0 && len >= body.len() {
                *body = data;
            } else if start >= body.len() {
                body.extend_from_slice(&data);
            } else {
                return ok(Status::BadArgument);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, kind: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            enter(&mut c, "proxy_get_header_map_pairs")?;
            let encoded = match map(c.data(), kind) {
                Err(status) => return ok(status),
                Ok(None) => Vec::new(),
                Ok(Some(map)) if map.is_empty() => Vec::new(),
                Ok(Some(map)) => pairs::encode(map.entries()),
            };
            Ok(copy_out(&mut c, &encoded, ptr_ptr, size_ptr)?.code())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, kind: i32, ptr: i32, len: i32| -> R {
            enter(&mut c, "proxy_set_header_map_pairs")?;
            let data = mem!(&mut c, ptr, len);
            match map_mut(c.data_mut(), kind) {
                Ok(map) => {
                    map.set_all(pairs::decode(&data));
                    ok(Status::Ok)
                }
                Err(status) => ok(status),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, kind: i32, key_ptr: i32, key_len: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            enter(&mut c, "proxy_get_header_map_value")?;
            let key = mem!(&mut c, key_ptr, key_len);
            let value = match map(c.data(), kind) {
                Err(status) => return ok(status),
                Ok(None) => return ok(Status::BadArgument),
                Ok(Some(map)) => match map.get_bytes(&key) {
                    Some(value) => value.to_vec(),
                    None => return ok(Status::NotFound),
                },
            };
            Ok(copy_out(&mut c, &value, ptr_ptr, size_ptr)?.code())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, kind: i32, size_ptr: i32| -> R {
            enter(&mut c, "proxy_get_header_map_size")?;
            let size = match map(c.data(), kind) {
                Err(status) => return ok(status),
                Ok(None) => return ok(Status::BadArgument),
                Ok(Some(map)) => map.byte_size() as u32,
            };
            if !write_u32(&mut c, size_ptr, size) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>,
         kind: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32|
         -> R {
            enter(&mut c, "proxy_add_header_map_value")?;
            let key = mem!(&mut c, key_ptr, key_len);
            let value = mem!(&mut c, value_ptr, value_len);
            match map_mut(c.data_mut(), kind) {
                Ok(map) => {
                    map.add(key, value);
                    ok(Status::Ok)
                }
                Err(status) => ok(status),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>,
         kind: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32|
         -> R {
            enter(&mut c, "proxy_replace_header_map_value")?;
            let key = mem!(&mut c, key_ptr, key_len);
            let value = mem!(&mut c, value_ptr, value_len);
            match map_mut(c.data_mut(), kind) {
                Ok(map) => {
                    map.replace(key, value);
                    ok(Status::Ok)
                }
                Err(status) => ok(status),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, kind: i32, key_ptr: i32, key_len: i32| -> R {
            enter(&mut c, "proxy_remove_header_map_value")?;
            let key = mem!(&mut c, key_ptr, key_len);
            match map_mut(c.data_mut(), kind) {
                Ok(map) => {
                    map.remove(key);
                    ok(Status::Ok)
                }
                Err(status) => ok(status),
            }
        },
    )?;
    Ok(())
}

fn define_stream_control(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, kind: i32| -> R {
            enter(&mut c, "proxy_continue_stream")?;
            let Some(stream) = c.data_mut().active_stream() else {
                // No stream callbacks (e.g. the root context): Envoy ignores it.
                return ok(if (0..=1).contains(&kind) {
                    Status::Ok
                } else {
                    Status::BadArgument
                });
            };
            match kind {
                0 => {
                    // Envoy continues decoding after the VM call returns and
                    // drops its request-side map pointers at once.
                    stream.resume_request = true;
                    stream.open.remove(&Access::RequestHeaders);
                    stream.open.remove(&Access::RequestBody);
                    stream.open.remove(&Access::RequestTrailers);
                }
                1 => stream.resume_response = true,
                _ => return ok(Status::BadArgument),
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, kind: i32| -> R {
            enter(&mut c, "proxy_close_stream")?;
            if !(0..=3).contains(&kind) {
                return ok(Status::BadArgument);
            }
            if let Some(stream) = c.data_mut().active_stream()
                && kind <= 1
            {
                stream.reset = true;
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc_status: i32|
         -> R {
            enter(&mut c, "proxy_send_local_response")?;
            let details = mem!(&mut c, details_ptr, details_len);
            let body = mem!(&mut c, body_ptr, body_len);
            let headers = mem!(&mut c, headers_ptr, headers_len);
            let reply = LocalResponse {
                status: status as u32 as u16,
                details: String::from_utf8_lossy(&details).into_owned(),
                headers: {
                    let mut map = HeaderMap::new();
                    map.set_all(pairs::decode(&headers));
                    map
                },
                body,
                grpc_status,
            };
            // Envoy sends the reply after the VM call returns; without a
            // stream (root context) there is nothing to reply to.
            if let Some(stream) = c.data_mut().active_stream() {
                stream.pending_local_reply = Some(reply);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         upstream_ptr: i32,
         upstream_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         trailers_ptr: i32,
         trailers_len: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> R {
            enter(&mut c, "proxy_http_call")?;
            let upstream = mem!(&mut c, upstream_ptr, upstream_len);
            let headers = mem!(&mut c, headers_ptr, headers_len);
            let body = mem!(&mut c, body_ptr, body_len);
            let trailers = mem!(&mut c, trailers_ptr, trailers_len);
            if !write_u32(&mut c, token_ptr, 0) {
                return ok(Status::InvalidMemoryAccess);
            }
            if timeout_ms < 0 {
                return ok(Status::BadArgument);
            }
            let upstream = String::from_utf8_lossy(&upstream).into_owned();
            let state = c.data_mut();
            if let Some(known) = &state.clusters
                && !known.contains(&upstream)
            {
                return ok(Status::BadArgument);
            }
            let mut header_map = HeaderMap::new();
            header_map.set_all(pairs::decode(&headers));
            // Envoy refuses calls without these three.
            if [":path", ":method", ":authority"]
                .iter()
                .any(|h| !header_map.contains(h))
            {
                return ok(Status::BadArgument);
            }
            let mut trailer_map = HeaderMap::new();
            trailer_map.set_all(pairs::decode(&trailers));
            let token = state.next_http_token;
            state.next_http_token = state.next_http_token.wrapping_add(1).max(1);
            let context_id = state.active();
            let dispatched_at = state.now().wall;
            state.http_calls.insert(
                token,
                HttpCall {
                    token,
                    upstream,
                    headers: header_map,
                    body,
                    trailers: trailer_map,
                    timeout: Duration::from_millis(u64::from(timeout_ms as u32)),
                    dispatched_at,
                    context_id,
                },
            );
            if let Some(stream) = state.active_stream() {
                stream.http_calls.push(token);
            }
            if !write_u32(&mut c, token_ptr, token) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    Ok(())
}

fn define_shared(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         size_ptr: i32,
         cas_ptr: i32|
         -> R {
            enter(&mut c, "proxy_get_shared_data")?;
            let key = mem!(&mut c, key_ptr, key_len);
            let vm_id = c.data().vm_id.clone();
            let entry = lock(&c.data().shared).data.get(&(vm_id, key)).cloned();
            let Some((value, cas)) = entry else {
                return ok(Status::NotFound);
            };
            let status = copy_out(&mut c, &value, value_ptr, size_ptr)?;
            if status != Status::Ok {
                return ok(status);
            }
            if !write_u32(&mut c, cas_ptr, cas) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32, cas: i32| -> R {
            enter(&mut c, "proxy_set_shared_data")?;
            let key = mem!(&mut c, key_ptr, key_len);
            let value = mem!(&mut c, value_ptr, value_len);
            let vm_id = c.data().vm_id.clone();
            let mut shared = lock(&c.data().shared);
            let cas = cas as u32;
            let next = shared.next_cas;
            shared.next_cas = shared.next_cas.wrapping_add(1).max(1);
            match shared.data.get_mut(&(vm_id.clone(), key.clone())) {
                Some(entry) => {
                    if cas != 0 && cas != entry.1 {
                        return ok(Status::CasMismatch);
                    }
                    *entry = (value, next);
                }
                None => {
                    shared.data.insert((vm_id, key), (value, next));
                }
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, name_ptr: i32, name_len: i32, token_ptr: i32| -> R {
            enter(&mut c, "proxy_register_shared_queue")?;
            let name = mem!(&mut c, name_ptr, name_len);
            let state = c.data();
            let owner = (state.host_id, state.root_id);
            let key = (state.vm_id.clone(), name);
            let token = {
                let mut shared = lock(&state.shared);
                match shared.queue_ids.get(&key) {
                    Some(token) => *token,
                    None => {
                        let token = shared.next_queue;
                        shared.next_queue += 1;
                        shared.queue_ids.insert(key, token);
                        shared.queues.insert(
                            token,
                            Queue {
                                items: Default::default(),
                                owner,
                                pending_ready: 0,
                            },
                        );
                        token
                    }
                }
            };
            if !write_u32(&mut c, token_ptr, token) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>,
         vm_ptr: i32,
         vm_len: i32,
         name_ptr: i32,
         name_len: i32,
         token_ptr: i32|
         -> R {
            enter(&mut c, "proxy_resolve_shared_queue")?;
            let vm_id = mem!(&mut c, vm_ptr, vm_len);
            let name = mem!(&mut c, name_ptr, name_len);
            let key = (String::from_utf8_lossy(&vm_id).into_owned(), name);
            let token = lock(&c.data().shared).queue_ids.get(&key).copied();
            let Some(token) = token else {
                return ok(Status::NotFound);
            };
            if !write_u32(&mut c, token_ptr, token) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, token: i32, data_ptr: i32, data_len: i32| -> R {
            enter(&mut c, "proxy_enqueue_shared_queue")?;
            let data = mem!(&mut c, data_ptr, data_len);
            let mut shared = lock(&c.data().shared);
            match shared.queues.get_mut(&(token as u32)) {
                Some(queue) => {
                    queue.items.push_back(data);
                    queue.pending_ready += 1;
                    ok(Status::Ok)
                }
                None => ok(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, token: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            enter(&mut c, "proxy_dequeue_shared_queue")?;
            let item = {
                let mut shared = lock(&c.data().shared);
                match shared.queues.get_mut(&(token as u32)) {
                    None => return ok(Status::NotFound),
                    Some(queue) => queue.items.pop_front(),
                }
            };
            match item {
                None => ok(Status::Empty),
                Some(item) => Ok(copy_out(&mut c, &item, ptr_ptr, size_ptr)?.code()),
            }
        },
    )?;
    Ok(())
}

fn define_metrics(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, name_ptr: i32, name_len: i32, id_ptr: i32| -> R {
            enter(&mut c, "proxy_define_metric")?;
            let Some(kind) = MetricKind::from_abi(kind) else {
                return ok(Status::BadArgument);
            };
            let name = mem!(&mut c, name_ptr, name_len);
            let name = String::from_utf8_lossy(&name).into_owned();
            let state = c.data_mut();
            // Envoy: a fresh id per definition, the type in the low two bits,
            // every id of one name pointing at the same stat.
            let slot = &mut state.next_metric_id[kind.tag() as usize];
            *slot += 4;
            let id = *slot;
            state.metric_ids.insert(id, name.clone());
            lock(&state.shared).metrics.entry(name).or_insert(Metric {
                kind,
                value: 0,
                samples: Vec::new(),
            });
            if !write_u32(&mut c, id_ptr, id) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, offset: i64| -> R {
            enter(&mut c, "proxy_increment_metric")?;
            with_metric(c.data(), id as u32, |metric| match metric.kind {
                MetricKind::Counter if offset > 0 => {
                    metric.value += offset;
                    Status::Ok
                }
                MetricKind::Gauge => {
                    metric.value += offset;
                    Status::Ok
                }
                _ => Status::BadArgument,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C<'_>, id: i32, value: i64| -> R {
            enter(&mut c, "proxy_record_metric")?;
            with_metric(c.data(), id as u32, |metric| {
                match metric.kind {
                    MetricKind::Counter => metric.value += value,
                    MetricKind::Gauge => metric.value = value,
                    MetricKind::Histogram => metric.samples.push(value as u64),
                }
                Status::Ok
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, value_ptr: i32| -> R {
            enter(&mut c, "proxy_get_metric")?;
            let mut value = 0i64;
            let status = with_metric(c.data(), id as u32, |metric| match metric.kind {
                MetricKind::Histogram => Status::BadArgument,
                _ => {
                    value = metric.value;
                    Status::Ok
                }
            })?;
            if status != Status::Ok.code() {
                return Ok(status);
            }
            if !write_u64(&mut c, value_ptr, value as u64) {
                return ok(Status::InvalidMemoryAccess);
            }
            ok(Status::Ok)
        },
    )?;
    Ok(())
}

fn with_metric(state: &HostState, id: u32, f: impl FnOnce(&mut Metric) -> Status) -> R {
    let Some(name) = state.metric_ids.get(&id) else {
        return ok(if id & 3 == 3 {
            Status::BadArgument
        } else {
            Status::NotFound
        });
    };
    let mut shared = lock(&state.shared);
    match shared.metrics.get_mut(name) {
        Some(metric) => ok(f(metric)),
        None => ok(Status::NotFound),
    }
}

/// gRPC is not used by the cell router: a call fails the test loudly rather
/// than pretending to work.
fn define_unsupported(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    fn unsupported(name: &str) -> wasmtime::Error {
        wasmtime::Error::msg(format!("{name} is not supported by the test host"))
    }
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: C<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> R { Err(unsupported("proxy_grpc_call")) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> R {
            Err(unsupported("proxy_grpc_stream"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32| -> R { Err(unsupported("proxy_grpc_send")) },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_: C<'_>, _: i32| -> R {
        Err(unsupported("proxy_grpc_cancel"))
    })?;
    linker.func_wrap("env", "proxy_grpc_close", |_: C<'_>, _: i32| -> R {
        Err(unsupported("proxy_grpc_close"))
    })?;
    Ok(())
}
