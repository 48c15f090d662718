//! proxy-wasm glue: translates host callbacks into calls of the plain modules
//! and applies what they decide. Kept thin on purpose; the decisions are
//! tested natively, this is tested by loading the `.wasm`.

use crate::config::Config;
use crate::decide::{self, Action, Installed, Outcome, VmState};
use crate::envoy_verify::{self, HostVerdict, SignatureHost};
use crate::host::{self, Map};
use crate::metrics::{MetricKind, MetricSink, Metrics};
use crate::subscription::{FetchOutcome, FetchRequest, FetchResponse, Subscription};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as HostAction, BufferType, ContextType, LogLevel, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // After set_log_level, which installs the SDK's own hook: ours names the
    // filter. A panic still traps the VM; this makes it visible.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("cell-router: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_ms() -> u64 {
    host::now_nanos() / 1_000_000
}

fn random_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    if getrandom::fill(&mut key).is_err() {
        // Not secret then, but still per-VM: the cache keeps working.
        log(
            LogLevel::Warn,
            "cell-router: no random source; token cache key derived from the clock",
        );
        key[..8].copy_from_slice(&host::now_nanos().to_le_bytes());
    }
    key
}

/// proxy-wasm metrics.
struct HostMetrics;

impl MetricSink for HostMetrics {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(kind, name).ok()
    }
    fn increment(&mut self, id: u32, delta: i64) {
        let _ = hostcalls::increment_metric(id, delta);
    }
    fn record(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Whether the host has a foreign function, learnt on first use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ForeignCall {
    Unknown,
    Available,
    Missing,
}

/// Envoy's `verify_signature` foreign function (BoringSSL).
struct EnvoyCrypto<'s> {
    state: &'s mut ForeignCall,
}

impl SignatureHost for EnvoyCrypto<'_> {
    fn verify_signature(
        &mut self,
        hash: &str,
        public_key_der: &[u8],
        signature: &[u8],
        text: &[u8],
    ) -> HostVerdict {
        if *self.state == ForeignCall::Missing {
            return HostVerdict::Unavailable;
        }
        let arguments = envoy_verify::encode_arguments(hash, public_key_der, signature, text);
        match hostcalls::call_foreign_function("verify_signature", Some(&arguments)) {
            Ok(Some(result)) => match envoy_verify::decode_result(&result) {
                Some((valid, _)) => {
                    *self.state = ForeignCall::Available;
                    if valid {
                        HostVerdict::Valid
                    } else {
                        HostVerdict::Invalid
                    }
                }
                None => HostVerdict::Unavailable,
            },
            Ok(None) => HostVerdict::Unavailable,
            Err(proxy_wasm::types::Status::NotFound) => {
                *self.state = ForeignCall::Missing;
                log(
                    LogLevel::Info,
                    "cell-router: host has no verify_signature; checking signatures in the VM",
                );
                HostVerdict::Unavailable
            }
            // The host refused the key or the arguments: the VM decides.
            Err(_) => HostVerdict::Unavailable,
        }
    }
}

/// What the root context shares with its HTTP contexts (one VM, one thread).
struct Shared {
    config: Rc<Config>,
    vm: VmState,
    installed: Option<Rc<Installed>>,
    metrics: Metrics,
    clear_route_cache: ForeignCall,
    verify_signature: ForeignCall,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    subscription: Option<Subscription>,
}

impl Root {
    fn install(&self, snapshot: cell_router_mapping::Snapshot) {
        if let Some(shared) = &self.shared
            && let Ok(mut shared) = shared.try_borrow_mut()
        {
            // New requests take the new Rc; one already deciding keeps its own.
            shared.installed = Some(Rc::new(Installed::new(snapshot)));
        }
    }

    fn update_gauges(&self, now_ms: u64) {
        let Some(shared) = &self.shared else { return };
        let Ok(shared) = shared.try_borrow() else {
            return;
        };
        let version = shared.installed.as_ref().map_or(0, |i| i.version());
        let age = self.subscription.as_ref().map_or(0, |s| s.age_s(now_ms));
        shared.metrics.gauges(&mut HostMetrics, version, age);
    }

    fn count(&self, what: impl FnOnce(&Metrics, &mut HostMetrics)) {
        if let Some(shared) = &self.shared
            && let Ok(shared) = shared.try_borrow()
        {
            what(&shared.metrics, &mut HostMetrics);
        }
    }

    /// Starts the next fetch if one is due.
    fn fetch_if_due(&mut self, now_ms: u64) {
        let Some(subscription) = self.subscription.as_mut() else {
            return;
        };
        let Some(request) = subscription.poll(now_ms) else {
            return;
        };
        let FetchRequest {
            cluster,
            headers,
            timeout,
        } = request;
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match hostcalls::dispatch_http_call(&cluster, headers, None, vec![], timeout) {
            Ok(token) => subscription.dispatched(token, now_ms),
            Err(status) => {
                subscription.dispatch_failed(now_ms);
                let failures = subscription.consecutive_failures();
                self.count(|m, s| m.fetch_failed(s));
                if failures.is_power_of_two() {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "cell-router: cannot call sidecar cluster {cluster:?} ({status:?}); {failures} failure(s) in a row, backing off"
                        ),
                    );
                }
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let now = now_ms();
        let Some(subscription) = self.subscription.as_mut() else {
            return;
        };
        let raw = host::header_map(Map::HttpCallResponseHeaders).unwrap_or_default();
        let status = host::pairs(&raw)
            .into_iter()
            .find(|(k, _)| *k == b":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
        let body = if body_size > 0 {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let outcome = subscription.on_response(
            token,
            now,
            FetchResponse {
                status,
                body: &body,
            },
        );
        drop(body);
        let failures = subscription.consecutive_failures();
        match outcome {
            FetchOutcome::Applied(snapshot) => {
                let version = snapshot.version();
                let cells = snapshot.cells().len();
                self.install(*snapshot);
                self.count(|m, s| m.snapshot_applied(s));
                log(
                    LogLevel::Info,
                    &format!("cell-router: snapshot version {version} applied ({cells} cells)"),
                );
            }
            FetchOutcome::Unchanged | FetchOutcome::Stale => {}
            FetchOutcome::Refused(error) => {
                self.count(|m, s| m.snapshot_refused(s));
                log(
                    LogLevel::Warn,
                    &format!("cell-router: snapshot refused, keeping the last good one: {error}"),
                );
            }
            FetchOutcome::Failed(why) => {
                self.count(|m, s| m.fetch_failed(s));
                if failures.is_power_of_two() {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "cell-router: snapshot fetch failed: {why}; {failures} failure(s) in a row, backing off"
                        ),
                    );
                }
            }
        }
        // Long-poll again at once, so the next change arrives in milliseconds.
        self.fetch_if_due(now);
        self.update_gauges(now);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log(
                    LogLevel::Error,
                    &format!("cell-router: configuration refused: {error}"),
                );
                return false;
            }
        };
        let now = now_ms();
        let installed = config
            .fallback_snapshot
            .take()
            .map(|s| Rc::new(Installed::new(s)));
        let vm = VmState::new(&config, random_key());
        let metrics = Metrics::define(&mut HostMetrics);
        let mode = match config.jwt() {
            Some(jwt) => format!(
                "jwt ({} keys, algorithms {:?})",
                jwt.keys.entries().len(),
                jwt.algorithms
            ),
            None => "trust_header".to_string(),
        };
        log(
            LogLevel::Info,
            &format!(
                "cell-router {} configured: {mode}; fallback snapshot {}; sidecar {}",
                env!("CARGO_PKG_VERSION"),
                installed
                    .as_ref()
                    .map_or("none".to_string(), |i| format!("version {}", i.version())),
                config
                    .sidecar
                    .as_ref()
                    .map_or("none".to_string(), |s| format!("cluster {:?}", s.cluster)),
            ),
        );
        self.subscription = config.sidecar.clone().map(|sidecar| {
            let seed = getrandom::u64().unwrap_or(now);
            Subscription::new(sidecar, now, seed)
        });
        let tick_ms = self
            .subscription
            .as_ref()
            .map_or(1000, |s| s.config().tick_ms);
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config: Rc::new(config),
            vm,
            installed,
            metrics,
            clear_route_cache: ForeignCall::Unknown,
            verify_signature: ForeignCall::Unknown,
        })));
        let _ = hostcalls::set_tick_period(Duration::from_millis(tick_ms));
        self.update_gauges(now);
        true
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        self.fetch_if_due(now);
        self.update_gauges(now);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    shared: Option<Rc<RefCell<Shared>>>,
}

impl Context for Filter {}

fn respond_503(details: &str, detail: &str) -> HostAction {
    let body = serde_json::json!({"error": "internal", "detail": detail}).to_string();
    let _ = host::send_local_response(
        503,
        details,
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    HostAction::Pause
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> HostAction {
        // Fail closed: a filter without a configuration routes nothing.
        let Some(shared) = &self.shared else {
            return respond_503(
                "cell_router_unconfigured",
                "the cell router is not configured",
            );
        };
        let Ok(mut shared) = shared.try_borrow_mut() else {
            return respond_503("cell_router_busy", "the cell router state is busy");
        };
        let config = Rc::clone(&shared.config);
        let installed = shared.installed.clone();
        let raw = host::header_map(Map::RequestHeaders).unwrap_or_default();
        let headers = host::pairs(&raw);
        let mut clock = || host::now_nanos() / 1_000_000_000;
        let Shared {
            vm,
            metrics,
            clear_route_cache,
            verify_signature,
            ..
        } = &mut *shared;
        let mut crypto = EnvoyCrypto {
            state: verify_signature,
        };
        let decision = decide::decide_with(
            &config,
            vm,
            &headers,
            &mut clock,
            installed.as_deref(),
            &mut crypto,
        );

        let sink = &mut HostMetrics;
        if let Some(hit) = decision.cache_hit {
            metrics.cache(sink, hit);
        }
        if let Some(by_host) = decision.verified_by_host {
            metrics.verified(sink, by_host);
        }
        match decision.outcome {
            Outcome::Routed { cell, .. } => metrics.routed(sink, cell),
            Outcome::Shed { cell } => metrics.shed(sink, cell),
            Outcome::Unavailable { cell } => metrics.unavailable(sink, cell),
            Outcome::NoSnapshot => metrics.no_snapshot(sink),
            Outcome::Rejected(reason) => metrics.rejected(sink, reason),
        }

        match decision.action {
            Action::Continue { set } => {
                for name in &decision.remove {
                    let _ = host::remove_header(Map::RequestHeaders, name);
                }
                for (name, value) in set {
                    if host::replace_header(Map::RequestHeaders, name, value).is_err() {
                        // Without the cell header the request must not pass.
                        return respond_503(
                            "cell_router_header_failed",
                            "could not set the cell header",
                        );
                    }
                }
                if *clear_route_cache != ForeignCall::Missing {
                    match hostcalls::call_foreign_function("clear_route_cache", None) {
                        Ok(_) => *clear_route_cache = ForeignCall::Available,
                        Err(proxy_wasm::types::Status::NotFound) => {
                            *clear_route_cache = ForeignCall::Missing;
                            log(
                                LogLevel::Info,
                                "cell-router: host has no clear_route_cache; relying on its own route refresh",
                            );
                        }
                        Err(_) => {}
                    }
                }
                HostAction::Continue
            }
            Action::Respond(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                if host::send_local_response(reply.status, &reply.details, &headers, &reply.body)
                    .is_err()
                {
                    log(
                        LogLevel::Error,
                        "cell-router: host refused the local response",
                    );
                }
                HostAction::Pause
            }
        }
    }
}
