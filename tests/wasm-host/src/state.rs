//! Everything the host keeps between calls: per-VM state (the store data) and
//! the per-process state Envoy shares between worker VMs (shared data, queues,
//! stats, the clock).

use super::guest::GuestHandles;
use super::headers::HeaderMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Log levels, as numbered by the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_abi(level: i32) -> Option<LogLevel> {
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// One line the plugin logged (through `proxy_log` or stdout/stderr).
#[derive(Clone, Debug)]
pub struct LogLine {
    pub level: LogLevel,
    pub context_id: u32,
    pub message: String,
}

/// A `proxy_call_foreign_function` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignCall {
    pub name: String,
    pub arguments: Vec<u8>,
    /// The status the host answered with (`NotFound` for unknown functions).
    pub status: i32,
    /// Time the host spent in the function (signature checks: BoringSSL in
    /// Envoy, RustCrypto here).
    pub elapsed: Duration,
}

/// A local response (`proxy_send_local_response`), as the plugin asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub grpc_status: i32,
}

/// A `dispatch_http_call` the plugin made and the test has not answered yet.
#[derive(Clone, Debug)]
pub struct HttpCall {
    pub token: u32,
    /// The cluster the call goes to.
    pub upstream: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    pub timeout: Duration,
    /// Host clock when the call was made.
    pub dispatched_at: SystemTime,
    /// The context that made the call (root or a stream).
    pub context_id: u32,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn path(&self) -> Option<&str> {
        self.header(":path")
    }

    pub fn deadline(&self) -> Option<SystemTime> {
        (!self.timeout.is_zero()).then(|| self.dispatched_at + self.timeout)
    }
}

/// A response delivered to `proxy_on_http_call_response`.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpCallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_abi(kind: i32) -> Option<MetricKind> {
        Some(match kind {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }

    pub(crate) fn tag(self) -> u32 {
        match self {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
            MetricKind::Histogram => 2,
        }
    }
}

/// An Envoy stat defined by the plugin.
#[derive(Clone, Debug)]
pub struct Metric {
    pub kind: MetricKind,
    /// Counter or gauge value (gauges may go below zero only if the plugin
    /// subtracts more than it added, which Envoy would not allow either).
    pub value: i64,
    /// Every value recorded into a histogram.
    pub samples: Vec<u64>,
}

/// The host clock: frozen unless the test moves it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub wall: SystemTime,
    pub monotonic: Duration,
}

impl Clock {
    pub fn wall_nanos(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

/// Process-wide state shared by every worker VM of one simulated Envoy.
pub(crate) struct Shared {
    pub clock: Clock,
    /// (vm_id, key) → (value, cas).
    pub data: BTreeMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queues: BTreeMap<u32, Queue>,
    pub queue_ids: BTreeMap<(String, Vec<u8>), u32>,
    pub next_queue: u32,
    pub metrics: BTreeMap<String, Metric>,
}

pub(crate) struct Queue {
    pub items: VecDeque<Vec<u8>>,
    /// (host id, root context) to notify with `proxy_on_queue_ready`.
    pub owner: (u64, u32),
    /// Notifications not yet delivered to the owner.
    pub pending_ready: u32,
}

pub(crate) type SharedRef = Arc<Mutex<Shared>>;

pub(crate) fn new_shared(start: SystemTime) -> SharedRef {
    Arc::new(Mutex::new(Shared {
        clock: Clock {
            wall: start,
            monotonic: Duration::from_secs(1_000),
        },
        data: BTreeMap::new(),
        next_cas: 1,
        queues: BTreeMap::new(),
        queue_ids: BTreeMap::new(),
        next_queue: 1,
        metrics: BTreeMap::new(),
    }))
}

pub(crate) fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock only happens in a failing test; keep going.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a stream is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Done,
    Closed,
}

/// What the upstream answers when a request is forwarded.
#[derive(Clone, Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Default for UpstreamResponse {
    fn default() -> Self {
        UpstreamResponse {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"ok".to_vec(),
        }
    }
}

/// One HTTP stream (request context).
pub(crate) struct Stream {
    pub phase: Phase,
    /// The filter stopped iteration in the current phase.
    pub paused: bool,
    pub resume_request: bool,
    pub resume_response: bool,
    pub reset: bool,
    pub done_requested: bool,
    pub done_called: bool,

    pub request_headers: HeaderMap,
    pub request_body: Vec<u8>,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_body: Vec<u8>,
    pub response_trailers: HeaderMap,
    /// Which maps and buffers the filter may touch right now (Envoy hands
    /// them out only during the matching callback, and for logging).
    pub open: BTreeSet<Access>,

    pub forwarded: bool,
    pub upstream: UpstreamResponse,
    pub pending_local_reply: Option<LocalResponse>,
    pub local_reply: Option<LocalResponse>,
    /// Local replies asked for after the response had started.
    pub late_local_replies: Vec<LocalResponse>,

    pub foreign_calls: Vec<ForeignCall>,
    pub route_cache_clears: u32,
    pub host_calls: BTreeMap<&'static str, u64>,
    pub http_calls: Vec<u32>,
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
    pub first_log: usize,
    pub started_at: SystemTime,
    /// Wall time spent in this stream's callbacks.
    pub vm_time: Duration,
}

/// A map or buffer of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Access {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// Per-VM state: the wasmtime store data.
pub struct HostState {
    pub(crate) host_id: u64,
    pub(crate) shared: SharedRef,
    pub(crate) guest: Option<GuestHandles>,
    /// True while `_initialize`/`_start` runs: Envoy allows only WASI then.
    pub(crate) starting: bool,

    pub(crate) vm_id: String,
    pub(crate) plugin_name: String,
    pub(crate) root_name: String,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) log_level: LogLevel,
    pub(crate) clusters: Option<BTreeSet<String>>,
    pub(crate) foreign_functions: BTreeSet<String>,
    pub(crate) env: Vec<(String, String)>,

    pub(crate) root_id: u32,
    pub(crate) next_context_id: u32,
    /// The context the host is calling into.
    pub(crate) current: u32,
    /// Set by `proxy_set_effective_context` for the rest of one callback.
    pub(crate) effective: Option<u32>,

    pub(crate) plugin_config: Option<Vec<u8>>,
    pub(crate) tick_period: Option<Duration>,
    pub(crate) next_tick: Option<SystemTime>,

    pub(crate) streams: BTreeMap<u32, Stream>,
    pub(crate) http_calls: BTreeMap<u32, HttpCall>,
    pub(crate) next_http_token: u32,
    pub(crate) http_call_response: Option<HttpCallResponse>,
    /// `proxy_get_status` answer (set when an HTTP call failed).
    pub(crate) status: (u32, Vec<u8>),

    pub(crate) metric_ids: BTreeMap<u32, String>,
    pub(crate) next_metric_id: [u32; 3],
    pub(crate) logs: Vec<LogLine>,
    pub(crate) host_calls: BTreeMap<&'static str, u64>,
    pub(crate) root_foreign_calls: Vec<ForeignCall>,
    pub(crate) properties: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) refuse_set_property: bool,
    pub(crate) vm_time: Duration,
    pub(crate) rng: u64,
}

impl HostState {
    /// The context host calls act on (Envoy's `contextOrEffectiveContext`).
    pub(crate) fn active(&self) -> u32 {
        self.effective.unwrap_or(self.current)
    }

    pub(crate) fn active_stream(&mut self) -> Option<&mut Stream> {
        let id = self.active();
        self.streams.get_mut(&id)
    }

    pub(crate) fn now(&self) -> Clock {
        lock(&self.shared).clock
    }

    /// Counts one host call, for the VM and for the stream it acts on.
    pub(crate) fn count(&mut self, name: &'static str) {
        *self.host_calls.entry(name).or_default() += 1;
        if let Some(stream) = self.active_stream() {
            *stream.host_calls.entry(name).or_default() += 1;
        }
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        let context_id = self.active();
        self.logs.push(LogLine {
            level,
            context_id,
            message,
        });
    }

    /// xorshift64*: deterministic "randomness" so runs are reproducible.
    pub(crate) fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
