//! The HTTP stream lifecycle as Envoy drives it, HTTP call responses, and the
//! "after the VM call" actions (local replies, continuing a paused stream).

use super::Host;
use super::exchange::{ClientResponse, Exchange, Outcome, Request};
use super::headers::HeaderMap;
use super::state::{Access, HostState, HttpCallResponse, LocalResponse, Phase, Stream, lock};
use anyhow::{Result, anyhow};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How an HTTP call can fail, and what Envoy then tells the plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpCallFailure {
    /// The stream was reset: `on_http_call_response` with no headers, no
    /// body, and `proxy_get_status` = BrokenConnection "reset".
    Reset,
    /// The call's timeout passed: the router's 504 local reply.
    Timeout,
    /// The upstream refused the connection: a 503 local reply.
    ConnectionFailure,
    /// No healthy host in the cluster: a 503 local reply.
    NoHealthyUpstream,
}

impl Host {
    pub(super) fn open_stream(&mut self, request: Request) -> Result<u32> {
        let exports = self.exports.clone();
        let seq = self.requests_sent;
        let options = self.options.clone();
        let state = self.store.data_mut();
        let id = state.next_context_id;
        state.next_context_id += 1;

        // Envoy puts pseudo-headers first and fills in what HTTP/1.1 lacks.
        let mut headers = HeaderMap::new();
        let given = HeaderMap::from_pairs(&request.headers);
        let defaults = [
            (":method", "GET".to_string()),
            (":scheme", "https".to_string()),
            (":authority", options.authority.clone()),
            (":path", "/".to_string()),
        ];
        for (name, default) in &defaults {
            match given.get_all(name).first() {
                Some(value) => headers.add(name, value),
                None => headers.add(name, default),
            }
        }
        for (k, v) in given.entries() {
            if !k.starts_with(b":") {
                headers.add(k, v);
            }
        }
        if options.generate_request_id && !headers.contains("x-request-id") {
            headers.add("x-request-id", request_id(options.seed, seq));
        }

        let started_at = state.now().wall;
        let first_log = state.logs.len();
        state.streams.insert(
            id,
            Stream {
                phase: Phase::RequestHeaders,
                paused: false,
                resume_request: false,
                resume_response: false,
                reset: false,
                done_requested: false,
                done_called: false,
                request_headers: headers,
                request_body: request.body,
                request_trailers: HeaderMap::new(),
                response_headers: HeaderMap::new(),
                response_body: Vec::new(),
                response_trailers: HeaderMap::new(),
                open: BTreeSet::new(),
                forwarded: false,
                upstream: request.upstream,
                pending_local_reply: None,
                local_reply: None,
                late_local_replies: Vec::new(),
                foreign_calls: Vec::new(),
                route_cache_clears: 0,
                host_calls: BTreeMap::new(),
                http_calls: Vec::new(),
                properties: BTreeMap::new(),
                first_log,
                started_at,
                vm_time: Duration::ZERO,
            },
        );
        let root = state.root_id;
        self.call(
            "proxy_on_context_create",
            exports.context_create.as_ref(),
            id,
            (id as i32, root as i32),
        )?;
        Ok(id)
    }

    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.store.data_mut().streams.get_mut(&id)
    }

    /// Moves a stream forward until it waits for the plugin or closes.
    pub(super) fn drive(&mut self, id: u32) -> Result<()> {
        let exports = self.exports.clone();
        loop {
            let Some(s) = self.stream(id) else {
                return Ok(());
            };
            if s.reset && s.phase < Phase::Done {
                s.open.clear();
                s.paused = false;
                s.phase = Phase::Done;
            }
            if let Some(reply) = s.pending_local_reply.take() {
                if s.phase < Phase::ResponseHeaders {
                    start_local_reply(s, reply);
                } else {
                    s.late_local_replies.push(reply);
                }
            }
            if s.paused {
                let resume = match s.phase {
                    Phase::RequestHeaders | Phase::RequestBody => {
                        std::mem::take(&mut s.resume_request)
                    }
                    Phase::ResponseHeaders | Phase::ResponseBody => {
                        std::mem::take(&mut s.resume_response)
                    }
                    _ => false,
                };
                if !resume {
                    return Ok(());
                }
                s.paused = false;
                advance_phase(s);
                continue;
            }
            match s.phase {
                Phase::RequestHeaders => {
                    s.open.insert(Access::RequestHeaders);
                    let args = (
                        id as i32,
                        s.request_headers.len() as i32,
                        s.request_body.is_empty() as i32,
                    );
                    let action = self.call(
                        "proxy_on_request_headers",
                        exports.request_headers.as_ref(),
                        id,
                        args,
                    )?;
                    self.after_callback(id, action);
                }
                Phase::RequestBody => {
                    s.open.insert(Access::RequestBody);
                    let args = (id as i32, s.request_body.len() as i32, 1);
                    let action = self.call(
                        "proxy_on_request_body",
                        exports.request_body.as_ref(),
                        id,
                        args,
                    )?;
                    self.after_callback(id, action);
                }
                Phase::ResponseHeaders => {
                    s.open.insert(Access::ResponseHeaders);
                    let args = (
                        id as i32,
                        s.response_headers.len() as i32,
                        s.response_body.is_empty() as i32,
                    );
                    let action = self.call(
                        "proxy_on_response_headers",
                        exports.response_headers.as_ref(),
                        id,
                        args,
                    )?;
                    self.after_callback(id, action);
                }
                Phase::ResponseBody => {
                    s.open.insert(Access::ResponseBody);
                    let args = (id as i32, s.response_body.len() as i32, 1);
                    let action = self.call(
                        "proxy_on_response_body",
                        exports.response_body.as_ref(),
                        id,
                        args,
                    )?;
                    self.after_callback(id, action);
                }
                Phase::Done => {
                    if s.done_called && !s.done_requested {
                        return Ok(());
                    }
                    if !s.done_called {
                        s.done_called = true;
                        let done =
                            self.call("proxy_on_done", exports.done.as_ref(), id, id as i32)?;
                        if done == Some(0) {
                            continue;
                        }
                    }
                    // Access logging sees the request and response headers.
                    if let Some(s) = self.stream(id) {
                        s.open = [Access::RequestHeaders, Access::ResponseHeaders].into();
                    }
                    self.call("proxy_on_log", exports.log.as_ref(), id, id as i32)?;
                    if let Some(s) = self.stream(id) {
                        s.open.clear();
                    }
                    self.call("proxy_on_delete", exports.delete.as_ref(), id, id as i32)?;
                    if let Some(s) = self.stream(id) {
                        s.phase = Phase::Closed;
                    }
                    return Ok(());
                }
                Phase::Closed => return Ok(()),
            }
        }
    }

    /// Applies a filter callback's result: Continue moves on (unless a local
    /// reply or reset is pending, which the next loop turn handles); any
    /// other action stops iteration until the plugin continues the stream.
    fn after_callback(&mut self, id: u32, action: Option<i32>) {
        let Some(s) = self.stream(id) else { return };
        if s.pending_local_reply.is_some() || s.reset {
            return;
        }
        if action.unwrap_or(0) == 0 {
            advance_phase(s);
        } else {
            s.paused = true;
        }
    }

    /// Runs what Envoy runs after a VM call returns: local replies, paused
    /// streams the plugin continued, `proxy_done`, queue notifications.
    pub(super) fn settle(&mut self) -> Result<()> {
        let exports = self.exports.clone();
        loop {
            let state = self.store.data();
            let ready = state.streams.iter().find_map(|(id, s)| {
                let waiting = s.pending_local_reply.is_some()
                    || (s.reset && s.phase < Phase::Done)
                    || (s.paused && (s.resume_request || s.resume_response))
                    || (s.phase == Phase::Done && s.done_requested);
                waiting.then_some(*id)
            });
            if let Some(id) = ready {
                self.drive(id)?;
                continue;
            }
            if let Some(queue) = self.take_queue_notification() {
                let root = self.root_id();
                let queue_ready = exports.queue_ready.as_ref();
                self.call(
                    "proxy_on_queue_ready",
                    queue_ready,
                    root,
                    (root as i32, queue as i32),
                )?;
                continue;
            }
            return Ok(());
        }
    }

    fn take_queue_notification(&mut self) -> Option<u32> {
        let state = self.store.data();
        let me = (state.host_id, state.root_id);
        let mut shared = lock(&state.shared);
        shared
            .queues
            .iter_mut()
            .find(|(_, q)| q.owner == me && q.pending_ready > 0)
            .map(|(token, q)| {
                q.pending_ready -= 1;
                *token
            })
    }

    /// Answers an HTTP call the plugin made.
    pub fn respond_http_call(
        &mut self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Result<()> {
        let body = body.as_ref().to_vec();
        let mut map = HeaderMap::new();
        map.add(":status", status.to_string());
        for (k, v) in headers {
            map.add(k, v);
        }
        if !map.contains("content-length") {
            map.add("content-length", body.len().to_string());
        }
        self.deliver_http_call(
            token,
            Some(HttpCallResponse {
                headers: map,
                body,
                trailers: HeaderMap::new(),
            }),
        )
    }

    /// Fails an HTTP call the way Envoy reports that failure.
    pub fn fail_http_call(&mut self, token: u32, failure: HttpCallFailure) -> Result<()> {
        let local_reply = |status: u16, body: &str| {
            let mut headers = HeaderMap::new();
            headers.add(":status", status.to_string());
            headers.add("content-length", body.len().to_string());
            headers.add("content-type", "text/plain");
            Some(HttpCallResponse {
                headers,
                body: body.as_bytes().to_vec(),
                trailers: HeaderMap::new(),
            })
        };
        let response = match failure {
            HttpCallFailure::Reset => None,
            HttpCallFailure::Timeout => local_reply(504, "upstream request timeout"),
            HttpCallFailure::ConnectionFailure => local_reply(
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            HttpCallFailure::NoHealthyUpstream => local_reply(503, "no healthy upstream"),
        };
        self.deliver_http_call(token, response)
    }

    fn deliver_http_call(&mut self, token: u32, response: Option<HttpCallResponse>) -> Result<()> {
        let exports = self.exports.clone();
        self.check_alive()?;
        let state = self.store.data_mut();
        if state.http_calls.remove(&token).is_none() {
            return Err(anyhow!("no pending HTTP call with token {token}"));
        }
        let (headers, body, trailers) = match &response {
            Some(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
            None => (0, 0, 0),
        };
        if response.is_none() {
            state.status = (11, b"reset".to_vec());
        }
        state.http_call_response = response;
        let root = state.root_id;
        let result = self.call(
            "proxy_on_http_call_response",
            exports.http_call_response.as_ref(),
            root,
            (
                root as i32,
                token as i32,
                headers as i32,
                body as i32,
                trailers as i32,
            ),
        );
        let state = self.store.data_mut();
        state.http_call_response = None;
        state.status = (0, Vec::new());
        result?;
        self.settle()
    }
}

/// Envoy's `x-request-id`: a UUID v4 shape, here derived from the seed and a
/// counter so that runs repeat exactly.
fn request_id(seed: u64, seq: u64) -> String {
    let mix = |x: u64| {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(seed ^ seq);
    let b = mix(a ^ 0x5851_f42d_4c95_7f2d);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// Moves to the next phase after the filter let the current one through.
fn advance_phase(s: &mut Stream) {
    s.resume_request = false;
    match s.phase {
        Phase::RequestHeaders | Phase::RequestBody => {
            s.open.remove(&Access::RequestHeaders);
            s.open.remove(&Access::RequestBody);
            if s.phase == Phase::RequestHeaders && !s.request_body.is_empty() {
                s.phase = Phase::RequestBody;
            } else {
                forward(s);
            }
        }
        Phase::ResponseHeaders => {
            s.resume_response = false;
            s.open.remove(&Access::ResponseHeaders);
            s.phase = if s.response_body.is_empty() {
                Phase::Done
            } else {
                Phase::ResponseBody
            };
        }
        Phase::ResponseBody => {
            s.resume_response = false;
            s.open.remove(&Access::ResponseBody);
            s.phase = Phase::Done;
        }
        Phase::Done | Phase::Closed => {}
    }
}

/// The request reaches the upstream, which answers at once.
fn forward(s: &mut Stream) {
    s.forwarded = true;
    let mut headers = HeaderMap::new();
    headers.add(":status", s.upstream.status.to_string());
    for (k, v) in &s.upstream.headers {
        headers.add(k, v);
    }
    if !headers.contains("content-length") {
        headers.add("content-length", s.upstream.body.len().to_string());
    }
    s.response_headers = headers;
    s.response_body = s.upstream.body.clone();
    s.phase = Phase::ResponseHeaders;
}

/// Envoy's sendLocalReply: the reply goes back through the encoder filters,
/// this one included.
fn start_local_reply(s: &mut Stream, reply: LocalResponse) {
    let mut headers = HeaderMap::new();
    headers.add(":status", reply.status.to_string());
    for (k, v) in reply.headers.entries() {
        headers.add(k, v);
    }
    if !reply.body.is_empty() {
        headers.replace("content-length", reply.body.len().to_string());
        if !headers.contains("content-type") {
            headers.add("content-type", "text/plain");
        }
    }
    s.response_headers = headers;
    s.response_body = reply.body.clone();
    s.local_reply = Some(reply);
    s.open.clear();
    s.paused = false;
    s.resume_request = false;
    s.phase = Phase::ResponseHeaders;
}

pub(super) fn snapshot(state: &HostState, id: u32, s: &Stream) -> Exchange {
    let outcome = if s.local_reply.is_some() {
        Outcome::LocalResponse
    } else if s.reset {
        Outcome::Reset
    } else if s.forwarded {
        Outcome::Forwarded
    } else {
        Outcome::Paused
    };
    let response = (s.phase >= Phase::Done && !s.reset).then(|| ClientResponse {
        status: s
            .response_headers
            .get(":status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        headers: s.response_headers.clone(),
        body: s.response_body.clone(),
    });
    Exchange {
        context_id: id,
        outcome,
        request_headers: s.request_headers.clone(),
        local_response: s.local_reply.clone(),
        response,
        late_local_replies: s.late_local_replies.clone(),
        foreign_calls: s.foreign_calls.clone(),
        route_cache_clears: s.route_cache_clears,
        host_calls: s.host_calls.clone(),
        http_calls: s.http_calls.clone(),
        vm_time: s.vm_time,
        properties: s.properties.clone(),
        logs: state
            .logs
            .iter()
            .skip(s.first_log)
            .filter(|l| l.context_id == id)
            .cloned()
            .collect(),
    }
}
