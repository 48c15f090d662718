//! The snapshot subscription: what to ask the sidecar, and what to do with
//! each answer. Plain state machine, driven by the root context with the host
//! clock; no host calls here.
//!
//! Protocol (served by `cellmap serve`): `GET <path>?after=<v>&wait=<s>` with
//! `If-None-Match: "<v>"`. 200 + body = a snapshot newer than `v`; 304 = no
//! newer one within `wait` seconds. `after=0` (nothing held yet) answers what
//! the sidecar has at once.

use cell_router_mapping::{PathError, Snapshot};
use std::time::Duration;

/// `sidecar` in the plugin config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarConfig {
    /// Envoy cluster of the sidecar.
    pub cluster: String,
    /// `:authority` of the requests.
    pub authority: String,
    /// Path of the snapshot endpoint.
    pub path: String,
    /// How long the sidecar may hold a request (0 = plain polling).
    pub long_poll_s: u64,
    /// Timeout of one request; greater than the long-poll.
    pub timeout_ms: u64,
    /// First backoff after a failure; doubles up to `retry_max_ms`.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Tick period of the root context.
    pub tick_ms: u64,
    /// Shortest time between the starts of two fetches, so a sidecar that
    /// answers at once (no long-poll) is not hammered in a loop.
    pub min_fetch_interval_ms: u64,
}

/// A request to dispatch to the sidecar cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub cluster: String,
    pub headers: Vec<(&'static str, String)>,
    pub timeout: Duration,
}

impl FetchRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The sidecar's answer, as far as the host reported it. A failed or timed
/// out call has no status.
#[derive(Clone, Copy, Debug)]
pub struct FetchResponse<'a> {
    pub status: Option<u16>,
    pub body: &'a [u8],
}

/// What a response means for the filter.
#[derive(Debug)]
pub enum FetchOutcome {
    /// A valid, newer snapshot: install it for new requests.
    Applied(Box<Snapshot>),
    /// 304: nothing newer.
    Unchanged,
    /// A 200 whose snapshot was refused; the last good one stays.
    Refused(PathError),
    /// Transport error, timeout, or an unexpected status.
    Failed(String),
    /// A response to a request this subscription did not make (or forgot
    /// after a timeout); ignored.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Free to fetch from `not_before_ms` on.
    Idle {
        not_before_ms: u64,
    },
    InFlight {
        token: u32,
        since_ms: u64,
    },
}

/// Grace beyond the request timeout before a call the host never answered is
/// given up on.
const LOST_CALL_GRACE_MS: u64 = 5_000;

#[derive(Clone, Debug)]
pub struct Subscription {
    config: SidecarConfig,
    state: State,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Version of the last snapshot taken from the sidecar. The fallback
    /// snapshot does not count: any valid sidecar snapshot replaces it.
    version: Option<u64>,
    started_ms: u64,
    last_contact_ms: Option<u64>,
    last_start_ms: Option<u64>,
    rng: u64,
}

impl Subscription {
    /// `seed` spreads the backoff of the workers apart (any value works).
    pub fn new(config: SidecarConfig, now_ms: u64, seed: u64) -> Self {
        Subscription {
            config,
            state: State::Idle {
                not_before_ms: now_ms,
            },
            failures: 0,
            version: None,
            started_ms: now_ms,
            last_contact_ms: None,
            last_start_ms: None,
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    pub fn config(&self) -> &SidecarConfig {
        &self.config
    }

    /// Version of the last snapshot applied from the sidecar.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn in_flight(&self) -> bool {
        matches!(self.state, State::InFlight { .. })
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// When the next fetch may start, if none is in flight.
    pub fn next_fetch_at_ms(&self) -> Option<u64> {
        match self.state {
            State::Idle { not_before_ms } => Some(not_before_ms),
            State::InFlight { .. } => None,
        }
    }

    /// Seconds since the last successful contact (200 or 304), or since the
    /// start when there was none yet.
    pub fn age_s(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_contact_ms.unwrap_or(self.started_ms)) / 1000
    }

    /// The request to send now, if one is due. Call on every tick and after
    /// every response; then report [`Subscription::dispatched`] or
    /// [`Subscription::dispatch_failed`].
    pub fn poll(&mut self, now_ms: u64) -> Option<FetchRequest> {
        match self.state {
            State::InFlight { since_ms, .. } => {
                // The host always answers (Envoy enforces the timeout); this
                // only guards against one that never does.
                if now_ms.saturating_sub(since_ms) > self.config.timeout_ms + LOST_CALL_GRACE_MS {
                    self.fail(now_ms);
                }
                None
            }
            State::Idle { not_before_ms } if now_ms >= not_before_ms => Some(self.request()),
            State::Idle { .. } => None,
        }
    }

    /// The request for the version held now.
    pub fn request(&self) -> FetchRequest {
        let after = self.version.unwrap_or(0);
        let mut headers = vec![
            (":method", "GET".to_string()),
            (
                ":path",
                format!(
                    "{}?after={after}&wait={}",
                    self.config.path, self.config.long_poll_s
                ),
            ),
            (":authority", self.config.authority.clone()),
            ("accept", "application/json".to_string()),
        ];
        if let Some(version) = self.version {
            headers.push(("if-none-match", format!("\"{version}\"")));
        }
        FetchRequest {
            cluster: self.config.cluster.clone(),
            headers,
            timeout: Duration::from_millis(self.config.timeout_ms),
        }
    }

    /// The host accepted the call.
    pub fn dispatched(&mut self, token: u32, now_ms: u64) {
        self.state = State::InFlight {
            token,
            since_ms: now_ms,
        };
        self.last_start_ms = Some(now_ms);
    }

    /// The host refused the call (e.g. unknown cluster): back off.
    pub fn dispatch_failed(&mut self, now_ms: u64) {
        self.last_start_ms = Some(now_ms);
        self.fail(now_ms);
    }

    /// Handles the answer to call `token`.
    pub fn on_response(
        &mut self,
        token: u32,
        now_ms: u64,
        response: FetchResponse<'_>,
    ) -> FetchOutcome {
        match self.state {
            State::InFlight {
                token: expected, ..
            } if expected == token => {}
            _ => return FetchOutcome::Stale,
        }
        match response.status {
            Some(200) => match Snapshot::parse_newer(response.body, self.version) {
                Ok(snapshot) => {
                    self.version = Some(snapshot.version());
                    self.succeed(now_ms);
                    FetchOutcome::Applied(Box::new(snapshot))
                }
                Err(err) => {
                    // The sidecar keeps serving what we refused; asking again
                    // at once would only loop. Not a successful contact either:
                    // what we serve is getting older.
                    self.fail(now_ms);
                    FetchOutcome::Refused(err)
                }
            },
            Some(304) => {
                self.succeed(now_ms);
                FetchOutcome::Unchanged
            }
            Some(status) => {
                self.fail(now_ms);
                FetchOutcome::Failed(format!("sidecar answered HTTP {status}"))
            }
            None => {
                self.fail(now_ms);
                FetchOutcome::Failed("no response (connection failure or timeout)".to_string())
            }
        }
    }

    fn succeed(&mut self, now_ms: u64) {
        self.failures = 0;
        self.last_contact_ms = Some(now_ms);
        let earliest = self
            .last_start_ms
            .map_or(now_ms, |start| start + self.config.min_fetch_interval_ms);
        self.state = State::Idle {
            not_before_ms: earliest.max(now_ms),
        };
    }

    fn fail(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff_ms();
        self.state = State::Idle {
            not_before_ms: now_ms + delay,
        };
    }

    /// Exponential backoff with jitter in [d/2, d], d = min(max, min·2^(n-1)).
    fn backoff_ms(&mut self) -> u64 {
        let exponent = self.failures.saturating_sub(1).min(32);
        let full = self
            .config
            .retry_min_ms
            .saturating_mul(1u64 << exponent)
            .min(self.config.retry_max_ms);
        let half = full / 2;
        half + self.next_random() % (full - half + 1)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough to spread workers; not security-relevant.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}
