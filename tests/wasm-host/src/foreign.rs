//! Foreign functions (`proxy_call_foreign_function`) the host offers. Envoy
//! registers a set of them by name; which ones a test host offers is an
//! option, so tests can check the plugin copes when one is missing.

use super::guest::{Status, alloc, write_u32};
use super::state::HostState;
use wasmtime::Caller;

/// Foreign functions a default host offers (Envoy 1.40 registers these and
/// more the filter does not use).
pub const DEFAULT_FOREIGN_FUNCTIONS: &[&str] = &["clear_route_cache", "verify_signature"];

pub(crate) fn call(
    c: &mut Caller<'_, HostState>,
    name: &str,
    arguments: &[u8],
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
        "verify_signature" => {
            let (status, result) = match cell_router_kit::envoy_crypto::verify_signature(arguments)
            {
                Ok(result) => (Status::Ok, result),
                Err(cell_router_kit::envoy_crypto::BadArgument) => {
                    (Status::BadArgument, Vec::new())
                }
            };
            // Envoy allocates the result in the guest and stores its address
            // and size (0 and 0 when the function produced none).
            let address = if result.is_empty() {
                0
            } else {
                alloc(c, &result)?
            };
            if results_ptr != 0 {
                write_u32(c, results_ptr, address);
            }
            if results_size_ptr != 0 {
                write_u32(c, results_size_ptr, result.len() as u32);
            }
            Ok(status)
        }
        other => Err(wasmtime::Error::msg(format!(
            "foreign function {other:?} is offered but not implemented by the test host"
        ))),
    }
}
