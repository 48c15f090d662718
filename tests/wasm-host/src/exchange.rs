//! What a test sends (`Request`) and what it gets back (`Exchange`).

use super::headers::HeaderMap;
use super::state::{ForeignCall, LocalResponse, LogLine, UpstreamResponse};
use std::collections::BTreeMap;

/// A downstream request. Envoy's HTTP connection manager fills in what a
/// client does not send: `:method` (GET), `:scheme` (https), `:authority`
/// and an `x-request-id` (deterministic per host, so runs repeat).
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) upstream: UpstreamResponse,
}

impl Request {
    /// A request with these headers (names as given, values as UTF-8).
    pub fn new<K: AsRef<str>, V: AsRef<str>>(headers: &[(K, V)]) -> Request {
        let mut request = Request::default();
        for (k, v) in headers {
            request = request.header(k.as_ref(), v.as_ref());
        }
        request
    }

    /// `GET path`.
    pub fn get(path: &str) -> Request {
        Request::default().header(":path", path)
    }

    pub fn header(self, name: &str, value: &str) -> Request {
        self.header_bytes(name, value.as_bytes())
    }

    /// A header with arbitrary value bytes (Envoy passes non-UTF-8 values
    /// through; names are validated by its codecs, so names stay text).
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Request {
        self.headers
            .push((name.as_bytes().to_vec(), value.to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// What the upstream answers if the filter lets the request through.
    pub fn upstream_response(
        mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Request {
        self.upstream = UpstreamResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
        };
        self
    }
}

impl<K: AsRef<str>, V: AsRef<str>> From<&[(K, V)]> for Request {
    fn from(headers: &[(K, V)]) -> Request {
        Request::new(headers)
    }
}

/// Where a stream ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The filter let the request through to the upstream.
    Forwarded,
    /// The filter answered with a local response.
    LocalResponse,
    /// The filter stopped iteration and has not resumed yet.
    Paused,
    /// The filter reset the stream.
    Reset,
}

/// The response the client received.
#[derive(Clone, Debug)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Everything observable about one request through the plugin.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub context_id: u32,
    pub outcome: Outcome,
    /// Request headers as they stand after the filter (what the upstream
    /// gets when forwarded).
    pub request_headers: HeaderMap,
    /// The local response the plugin sent, as it asked for it.
    pub local_response: Option<LocalResponse>,
    /// What the client received, after the filter's response callbacks.
    pub response: Option<ClientResponse>,
    /// Local replies asked for after the response had started (ignored).
    pub late_local_replies: Vec<LocalResponse>,
    pub foreign_calls: Vec<ForeignCall>,
    /// Route cache clears: explicit (`clear_route_cache`) and implicit
    /// (Envoy clears it whenever a filter changes request headers).
    pub route_cache_clears: u32,
    /// Host calls made while this stream's context was active, by name.
    pub host_calls: BTreeMap<&'static str, u64>,
    /// Tokens of HTTP calls this stream dispatched.
    pub http_calls: Vec<u32>,
    /// Wall time spent in this stream's plugin callbacks (host functions
    /// included, the test host's own bookkeeping excluded).
    pub vm_time: std::time::Duration,
    /// Lines logged while this stream was active (for diagnosis only).
    pub logs: Vec<LogLine>,
    /// Properties the plugin set on this stream (Envoy: filter state
    /// `wasm.<path>`), by path.
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Exchange {
    /// A property the plugin set, as text.
    pub fn property(&self, path: &str) -> Option<String> {
        self.properties
            .get(path.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

impl Exchange {
    /// The local response status, or `None` when the request went upstream
    /// (or is still paused).
    pub fn status(&self) -> Option<u16> {
        if self.outcome != Outcome::LocalResponse {
            return None;
        }
        self.response.as_ref().map(|r| r.status)
    }

    pub fn forwarded(&self) -> bool {
        self.outcome == Outcome::Forwarded
    }

    pub fn paused(&self) -> bool {
        self.outcome == Outcome::Paused
    }

    /// A request header as forwarded (first value, if UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request_headers.get(name)
    }

    /// Every copy of a request header as forwarded.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        self.request_headers.get_all(name)
    }

    /// The `x-cell-id` request header the filter set.
    pub fn cell(&self) -> Option<&str> {
        self.header("x-cell-id")
    }

    /// A header of the response the client received.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response.as_ref()?.headers.get(name)
    }

    /// The body of the response the client received.
    pub fn body(&self) -> &[u8] {
        self.response.as_ref().map_or(&[], |r| r.body.as_slice())
    }

    /// The response body parsed as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.body()).unwrap_or(serde_json::Value::Null)
    }

    /// How many times the plugin called a foreign function by this name.
    pub fn foreign_call_count(&self, name: &str) -> usize {
        self.foreign_calls.iter().filter(|c| c.name == name).count()
    }

    /// Total host calls made for this request.
    pub fn host_call_total(&self) -> u64 {
        self.host_calls.values().sum()
    }
}
