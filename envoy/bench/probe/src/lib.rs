//! The benchmark's probe filter: on each request it makes the host calls its
//! plugin configuration lists, comma-separated, in order, and lets the request
//! continue. With an empty list it measures what Envoy spends on any Wasm
//! filter (a context per request and its callbacks); with the cell router's
//! calls (as the wasmtime host counts them for a cached token) it measures
//! the host calls too. A name may carry a count, `metric*100`.
//!
//! With the configuration `@header` it reads the list from the request's
//! `x-probe-calls` header instead (`none`: no call), so one gateway measures
//! every row of the per-call table: the header read costs every row the same
//! and drops out of the per-call slope.
//!
//! - `pairs`: `proxy_get_header_map_pairs` (all request headers)
//! - `get`: `proxy_get_header_map_value` (`x-cell-id`)
//! - `replace`: `proxy_replace_header_map_value` (`x-cell-id`, then
//!   `x-cell-snapshot`; the value routes to cell-a, as the client asked)
//! - `remove`: `proxy_remove_header_map_value` (`x-probe-absent`, a header
//!   the request lacks)
//! - `time`: `proxy_get_current_time_nanoseconds`
//! - `metric`: `proxy_increment_metric` on a counter
//! - `foreign`: `proxy_call_foreign_function("clear_route_cache")`
//! - `property_get`: `proxy_get_property(["request", "path"])`
//! - `property_set`: `proxy_set_property(["probe"], "1")` (filter state)

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use std::rc::Rc;

#[derive(Clone, Copy)]
enum Call {
    Pairs,
    Get,
    Replace,
    Remove,
    Time,
    Metric,
    Foreign,
    PropertyGet,
    PropertySet,
}

/// Most calls of one name per request (a bound on what a header asks).
const MAX_REPEAT: usize = 10_000;

/// `name` or `name*count`, comma-separated; `none` or nothing: no call.
fn parse(list: &str) -> Result<Vec<Call>, String> {
    let mut calls = Vec::new();
    for item in list.split(',') {
        let (name, count) = match item.trim().split_once('*') {
            Some((name, count)) => (
                name.trim(),
                count
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad count in {item:?}"))?,
            ),
            None => (item.trim(), 1),
        };
        let call = match name {
            "" | "none" => continue,
            "pairs" => Call::Pairs,
            "get" => Call::Get,
            "replace" => Call::Replace,
            "remove" => Call::Remove,
            "time" => Call::Time,
            "metric" => Call::Metric,
            "foreign" => Call::Foreign,
            "property_get" => Call::PropertyGet,
            "property_set" => Call::PropertySet,
            other => return Err(format!("unknown call {other:?}")),
        };
        calls.extend(std::iter::repeat_n(call, count.min(MAX_REPEAT)));
    }
    Ok(calls)
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Probe { calls: None, counter: 0 })
    });
}}

struct Probe {
    /// `None`: read from each request's `x-probe-calls` header.
    calls: Option<Rc<Vec<Call>>>,
    counter: u32,
}

impl Context for Probe {}

impl RootContext for Probe {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        self.calls = if config.trim() == "@header" {
            None
        } else {
            match parse(&config) {
                Ok(calls) => Some(Rc::new(calls)),
                Err(err) => {
                    hostcalls::log(LogLevel::Error, &format!("probe: {err}")).ok();
                    return false;
                }
            }
        };
        self.counter = hostcalls::define_metric(MetricType::Counter, "probe.requests").unwrap_or(0);
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            calls: self.calls.clone(),
            counter: self.counter,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    calls: Option<Rc<Vec<Call>>>,
    counter: u32,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let calls = match &self.calls {
            Some(calls) => Rc::clone(calls),
            None => {
                let list = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-probe-calls")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                match parse(&list) {
                    Ok(calls) => Rc::new(calls),
                    Err(err) => {
                        hostcalls::log(LogLevel::Error, &format!("probe: {err}")).ok();
                        Rc::new(Vec::new())
                    }
                }
            }
        };
        let mut replaced = 0;
        for call in calls.iter() {
            match call {
                Call::Pairs => {
                    let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
                }
                Call::Get => {
                    let _ =
                        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-cell-id");
                }
                Call::Replace => {
                    let (name, value): (&str, &[u8]) = if replaced % 2 == 0 {
                        ("x-cell-id", b"cell-a")
                    } else {
                        ("x-cell-snapshot", b"1")
                    };
                    replaced += 1;
                    let _ = hostcalls::set_map_value_bytes(
                        MapType::HttpRequestHeaders,
                        name,
                        Some(value),
                    );
                }
                Call::Remove => {
                    let _ = hostcalls::set_map_value_bytes(
                        MapType::HttpRequestHeaders,
                        "x-probe-absent",
                        None,
                    );
                }
                Call::Time => {
                    let _ = hostcalls::get_current_time();
                }
                Call::Metric => {
                    let _ = hostcalls::increment_metric(self.counter, 1);
                }
                Call::Foreign => {
                    let _ = hostcalls::call_foreign_function("clear_route_cache", None);
                }
                Call::PropertyGet => {
                    let _ = hostcalls::get_property(vec!["request", "path"]);
                }
                Call::PropertySet => {
                    let _ = hostcalls::set_property(vec!["probe"], Some(b"1"));
                }
            }
        }
        Action::Continue
    }
}
