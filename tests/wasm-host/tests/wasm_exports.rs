//! The callbacks the real `.wasm` exports: Envoy (proxy-wasm-cpp-host) calls
//! into a VM only for events the module exports, so each callback the
//! router does not use would cost every request a call into V8.

use cell_router_wasm_host::filter_wasm_path;
use std::collections::BTreeSet;

#[test]
fn only_the_callbacks_the_router_uses_are_exported() {
    let path = filter_wasm_path().expect("the filter's .wasm");
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::from_file(&engine, &path).expect("compile the filter");
    let callbacks: BTreeSet<&str> = module
        .exports()
        .map(|e| e.name())
        .filter(|name| name.starts_with("proxy_on_"))
        .collect();
    let expected: BTreeSet<&str> = [
        "proxy_on_configure",
        "proxy_on_context_create",
        "proxy_on_delete",
        "proxy_on_http_call_response",
        "proxy_on_memory_allocate",
        "proxy_on_request_headers",
        "proxy_on_tick",
        "proxy_on_vm_start",
    ]
    .into();
    assert_eq!(callbacks, expected, "{}", path.display());
}
