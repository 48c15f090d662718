//! The proxy-wasm ABI 0.2.1 entry points Envoy calls (`proxy_on_*`), routed
//! to the root contexts (`root_context.rs`) and HTTP contexts
//! (`http_context.rs`) they belong to. Written here instead of taken from the
//! SDK: the SDK's dispatcher panics on any context id or HTTP call token it
//! did not see created (and only learns tokens through its own panicking
//! `dispatch_http_call`); here an unknown id is ignored and a request on an
//! unknown context is refused with a 503. Only built for wasm.

use crate::hostcalls::{self, LogLevel};
use crate::http_context::Filter;
use crate::root_context::Root;
use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;

/// Every context of this VM. One VM runs one thread: a callback borrows it
/// for its whole duration (Envoy defers callbacks a host call would cause
/// until the current one returns).
#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Root>,
    filters: HashMap<u32, Filter>,
    /// Requests this VM has seen start (wrapping): a root applying a
    /// snapshot in slices keeps them short while requests come.
    requests_started: u64,
}

impl Contexts {
    /// What a root needs to know of the VM's requests.
    fn load(&self) -> crate::root_context::Load {
        crate::root_context::Load {
            in_flight: self.filters.len(),
            started: self.requests_started,
        }
    }
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the contexts, or answers `busy` if they are borrowed (which
/// only a host calling back into the VM during a host call could cause).
fn with_contexts<T>(busy: T, f: impl FnOnce(&mut Contexts) -> T) -> T {
    CONTEXTS.with(|contexts| match contexts.try_borrow_mut() {
        Ok(mut contexts) => f(&mut contexts),
        Err(_) => busy,
    })
}

/// proxy_action_t.
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

#[cfg(target_os = "wasi")]
unsafe extern "C" {
    fn __wasm_call_ctors();
}

/// Module start (reactor): static constructors, then the panic hook. No
/// proxy calls are allowed here, only WASI.
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: the reactor's start function, run once before any other export.
    unsafe {
        __wasm_call_ctors();
    }
    // A panic still traps the VM (panic = "abort"); this makes it visible.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("cell-router: panic: {info}"));
    }));
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host allocates here the buffers it hands to the VM; `hostcalls`
/// takes them back as `Vec<u8>` of exactly `size` bytes. A size the VM
/// cannot hold answers null (the host then fails its call) instead of
/// trapping on a capacity overflow.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<MaybeUninit<u8>> = Vec::new();
    if buffer.try_reserve_exact(size).is_err() {
        return std::ptr::null_mut();
    }
    // SAFETY: MaybeUninit needs no initialisation; the capacity is `size`.
    unsafe { buffer.set_len(size) };
    Box::into_raw(buffer.into_boxed_slice()).cast::<u8>()
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    with_contexts((), |c| {
        if parent_id == 0 {
            c.roots.insert(context_id, Root::default());
        } else {
            // A request on a root this VM does not know (or one not
            // configured) gets a filter without state: it answers 503.
            let shared = c.roots.get(&parent_id).and_then(Root::shared);
            c.filters.insert(context_id, Filter::new(shared));
            c.requests_started = c.requests_started.wrapping_add(1);
        }
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(root_id: u32, configuration_size: usize) -> bool {
    with_contexts(false, |c| {
        c.roots
            .get_mut(&root_id)
            .is_some_and(|root| root.on_configure(configuration_size))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    with_contexts((), |c| {
        let load = c.load();
        if let Some(root) = c.roots.get_mut(&root_id) {
            root.on_tick(load);
        }
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    root_id: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    with_contexts((), |c| {
        let load = c.load();
        if let Some(root) = c.roots.get_mut(&root_id) {
            root.on_http_call_response(token, headers, body_size, load);
        }
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    let action = with_contexts(None, |c| {
        Some(match c.filters.get_mut(&context_id) {
            Some(filter) => filter.on_request_headers(),
            None => Filter::new(None).on_request_headers(),
        })
    });
    match action {
        Some(true) => CONTINUE,
        Some(false) => PAUSE,
        None => {
            crate::http_context::respond_503("cell_router_busy", "the cell router state is busy");
            PAUSE
        }
    }
}

// No proxy_on_request_body, _trailers, proxy_on_response_*, proxy_on_done
// or proxy_on_log: the router only reads request headers, and the host
// (proxy-wasm-cpp-host, so Envoy and Istio) skips an event whose callback a
// module does not export; each one exported would cost every request a
// call into the VM that only answers "continue" (or "done").

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with_contexts((), |c| {
        if c.filters.remove(&context_id).is_none() {
            c.roots.remove(&context_id);
        }
    });
}
