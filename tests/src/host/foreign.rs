//! Foreign functions (`proxy_call_foreign_function`) the host offers. Envoy
//! registers a set of them by name; which ones a test host offers is an
//! option, so tests can check the plugin copes when one is missing.

use super::guest::{Status, write_u32};
use super::state::HostState;
use wasmtime::Caller;

/// Foreign functions a default host offers, as Envoy 1.40 does.
pub const DEFAULT_FOREIGN_FUNCTIONS: &[&str] = &["clear_route_cache"];

pub(crate) fn call(
    c: &mut Caller<'_, HostState>,
    name: &str,
    _arguments: &[u8],
    results_ptr: i32,
    results_size_ptr: i32,
) -> wasmtime::Result<Status> {
    if !c.data().foreign_functions.contains(name) {
        return Ok(Status::NotFound);
    }
    match name {
        "clear_route_cache" => {
            let state = c.data_mut();
            let current = state.current;
            if let Some(stream) = state.streams.get_mut(&current) {
                stream.route_cache_clears += 1;
            }
            // No result: Envoy still stores a null pointer and zero size.
            if results_ptr != 0 {
                write_u32(c, results_ptr, 0);
            }
            if results_size_ptr != 0 {
                write_u32(c, results_size_ptr, 0);
            }
            Ok(Status::Ok)
        }
        other => Err(wasmtime::Error::msg(format!(
            "foreign function {other:?} is offered but not implemented by the test host"
        ))),
    }
}
