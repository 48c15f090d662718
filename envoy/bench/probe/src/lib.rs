//! The benchmark's probe filter: on each request it makes the host calls its
//! plugin configuration lists, comma-separated, in order, and lets the request
//! continue. With an empty list it measures what Envoy spends on any Wasm
//! filter (a context per request and its callbacks); with the cell router's
//! calls (`pairs,time,replace,replace,metric,metric,foreign`, as the wasmtime
//! host counts them for a cached token) it measures the host calls too.
//!
//! - `pairs`: `proxy_get_header_map_pairs` (all request headers)
//! - `time`: `proxy_get_current_time_nanoseconds`
//! - `replace`: `proxy_replace_header_map_value` (`x-cell-id`, then
//!   `x-cell-snapshot`; the value routes to cell-a, as the client asked)
//! - `metric`: `proxy_increment_metric` on a counter
//! - `foreign`: `proxy_call_foreign_function("clear_route_cache")`

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};
use std::rc::Rc;

#[derive(Clone, Copy)]
enum Call {
    Pairs,
    Time,
    Replace,
    Metric,
    Foreign,
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Probe { calls: Rc::new(Vec::new()), counter: 0 })
    });
}}

struct Probe {
    calls: Rc<Vec<Call>>,
    counter: u32,
}

impl Context for Probe {}

impl RootContext for Probe {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let mut calls = Vec::new();
        for name in String::from_utf8_lossy(&config).split(',') {
            calls.push(match name.trim() {
                "" => continue,
                "pairs" => Call::Pairs,
                "time" => Call::Time,
                "replace" => Call::Replace,
                "metric" => Call::Metric,
                "foreign" => Call::Foreign,
                other => {
                    proxy_wasm::hostcalls::log(
                        proxy_wasm::types::LogLevel::Error,
                        &format!("probe: unknown call {other:?}"),
                    )
                    .ok();
                    return false;
                }
            });
        }
        self.calls = Rc::new(calls);
        self.counter =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "probe.requests")
                .unwrap_or(0);
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            calls: Rc::clone(&self.calls),
            counter: self.counter,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    calls: Rc<Vec<Call>>,
    counter: u32,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let mut replaced = 0;
        for call in self.calls.iter() {
            match call {
                Call::Pairs => {
                    let _ = self.get_http_request_headers_bytes();
                }
                Call::Time => {
                    let _ = self.get_current_time();
                }
                Call::Replace => {
                    let (name, value): (&str, &[u8]) = if replaced == 0 {
                        ("x-cell-id", b"cell-a")
                    } else {
                        ("x-cell-snapshot", b"1")
                    };
                    replaced += 1;
                    self.set_http_request_header_bytes(name, Some(value));
                }
                Call::Metric => {
                    let _ = proxy_wasm::hostcalls::increment_metric(self.counter, 1);
                }
                Call::Foreign => {
                    let _ = proxy_wasm::hostcalls::call_foreign_function("clear_route_cache", None);
                }
            }
        }
        Action::Continue
    }
}
