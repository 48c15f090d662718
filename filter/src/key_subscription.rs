//! Verification keys fetched at run time: what to ask the JWKS source
//! (the sidecar's `/jwks`, or an identity provider's cluster directly), and
//! what to do with each answer. Plain state machine, driven by the root
//! context with the host clock, like `subscription.rs`; no host calls here.
//!
//! Policy:
//! - The set is refreshed every `refresh_s` (conditional on the last
//!   `ETag`: a 304 keeps the set).
//! - A token with an unknown `kid` asks for a refetch
//!   ([`KeySubscription::unknown_kid`]); fetches start at most once per
//!   `unknown_kid_refetch_s` (per VM), a refetch asked sooner is deferred
//!   to the end of that interval, and a kid already seen within it does not
//!   ask again (a small bounded negative cache). The request itself is not
//!   held: it gets its 401 at once.
//! - A failed fetch (transport, timeout, status other than 200/304) or a
//!   refused set (not JSON, duplicate keys, not a JWKS, no usable key,
//!   larger than `max_jwks_bytes`) keeps the last good set, indefinitely.
//! - A key that leaves the set stays usable for `grace_s` more seconds.
//!   When it finally goes, the root context empties the token cache, so a
//!   token it verified is checked again (and refused) instead of riding the
//!   cache to its own expiry.

use crate::error::ConfigError;
use crate::json;
use crate::jwks::{Algorithm, KeyEntry, KeySet};
use crate::metrics::{MetricKind, MetricSink, name};
use crate::subscription::{Body, BodyPlan, FetchRequest, Source};
use std::collections::HashMap;
use std::time::Duration;

/// `remote` (top level, next to `jwks`) in the plugin config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteKeysConfig {
    /// Envoy cluster of the JWKS source (the sidecar or the IdP).
    pub cluster: String,
    pub authority: String,
    /// Path (and query, e.g. `/jwks?issuer=...`) of the JWKS.
    pub path: String,
    /// Period of the regular refresh.
    pub refresh_s: u64,
    pub timeout_ms: u64,
    /// Shortest time between the starts of two fetches caused by unknown
    /// kids; also the time a kid stays in the negative cache.
    pub unknown_kid_refetch_s: u64,
    /// How long a key removed from the set keeps verifying.
    pub grace_s: u64,
    /// Largest JWKS read; a larger one is refused before it is read.
    pub max_jwks_bytes: usize,
    /// First backoff after a failure; doubles up to `refresh_s`.
    pub retry_min_ms: u64,
}

pub const DEFAULT_REFRESH_S: u64 = 300;
pub const DEFAULT_UNKNOWN_KID_REFETCH_S: u64 = 30;
pub const DEFAULT_GRACE_S: u64 = 600;
pub const DEFAULT_MAX_JWKS_BYTES: usize = 256 << 10;
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_RETRY_MIN_MS: u64 = 1_000;
/// Kids remembered in the negative cache; when full, expired ones are
/// dropped, then the whole cache if still full.
pub const NEGATIVE_CACHE_ENTRIES: usize = 256;
/// Unknown kids noted by requests between two root-context turns.
pub const MAX_PENDING_KIDS: usize = 16;
const LOST_CALL_GRACE_MS: u64 = 5_000;

/// What an answer meant.
#[derive(Debug)]
pub enum KeysOutcome {
    /// A new set (different from the one held): rebuild the keys in force.
    Applied {
        keys: usize,
        skipped: Vec<ConfigError>,
        /// Keys that left the set (kept for the grace period).
        retired: usize,
    },
    /// 304, or a 200 with the same keys.
    Unchanged,
    /// A 200 whose body was refused; the last good set stays.
    Refused { why: String, too_large: bool },
    /// Transport error, timeout or unexpected status; the last good set stays.
    Failed { why: String },
    /// An answer to a call this subscription did not make.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    InFlight { token: u32, since_ms: u64 },
}

#[derive(Clone, Debug)]
pub struct KeySubscription {
    config: RemoteKeysConfig,
    algorithms: Vec<Algorithm>,
    state: State,
    last_wall_ms: u64,
    offset_ms: u64,
    next_fetch_ms: u64,
    last_start_ms: Option<u64>,
    etag: Option<String>,
    failures: u32,
    /// The last good set from the source.
    current: Option<KeySet>,
    /// Keys that left the set, usable until the instant with them.
    retiring: Vec<(KeyEntry, u64)>,
    /// Kids seen unknown, until when they stay ignored.
    negative: HashMap<String, u64>,
    /// Sets applied (the key-set version of this VM).
    version: u64,
    started_ms: u64,
    last_contact_ms: Option<u64>,
    /// Whether the last call started was asked by an unknown kid.
    refetch_pending: bool,
}

impl KeySubscription {
    pub fn new(config: RemoteKeysConfig, algorithms: Vec<Algorithm>, now_ms: u64) -> Self {
        KeySubscription {
            config,
            algorithms,
            state: State::Idle,
            last_wall_ms: now_ms,
            offset_ms: 0,
            next_fetch_ms: now_ms,
            last_start_ms: None,
            etag: None,
            failures: 0,
            current: None,
            retiring: Vec::new(),
            negative: HashMap::new(),
            version: 0,
            started_ms: now_ms,
            last_contact_ms: None,
            refetch_pending: false,
        }
    }

    /// Host wall clock made monotonic (a step back stands still).
    fn now(&mut self, wall_ms: u64) -> u64 {
        if wall_ms < self.last_wall_ms {
            self.offset_ms = self.offset_ms.saturating_add(self.last_wall_ms - wall_ms);
        }
        self.last_wall_ms = wall_ms;
        wall_ms.saturating_add(self.offset_ms)
    }

    fn peek(&self, wall_ms: u64) -> u64 {
        wall_ms
            .max(self.last_wall_ms)
            .saturating_add(self.offset_ms)
    }

    pub fn config(&self) -> &RemoteKeysConfig {
        &self.config
    }

    /// Number of sets applied so far (0: none yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Seconds since the source last answered 200 or 304 (or since start).
    pub fn age_s(&self, now_ms: u64) -> u64 {
        self.peek(now_ms)
            .saturating_sub(self.last_contact_ms.unwrap_or(self.started_ms))
            / 1000
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    pub fn in_flight(&self) -> bool {
        matches!(self.state, State::InFlight { .. })
    }

    /// Whether `token` is this subscription's call in flight.
    pub fn owns(&self, token: u32) -> bool {
        matches!(self.state, State::InFlight { token: t, .. } if t == token)
    }

    /// When the next fetch may start (none while one is in flight).
    pub fn next_fetch_at_ms(&self) -> Option<u64> {
        match self.state {
            State::Idle => Some(self.next_fetch_ms),
            State::InFlight { .. } => None,
        }
    }

    /// The remote keys in force: the last good set plus the keys still in
    /// their grace period.
    pub fn keys(&self) -> KeySet {
        let mut set = self.current.clone().unwrap_or_default();
        let retiring = KeySet::from_entries(self.retiring.iter().map(|(e, _)| e.clone()).collect());
        set.extend_unique(&retiring);
        set
    }

    /// Keys in their grace period.
    pub fn retiring(&self) -> usize {
        self.retiring.len()
    }

    /// A request was refused for an unknown `kid` (`None`: no kid and no
    /// key fits). Answers whether this asked for a refetch: not when the
    /// kid is in the negative cache or a fetch is in flight. A refetch
    /// starts at once if no fetch started within `unknown_kid_refetch_s`,
    /// else when that interval ends.
    pub fn unknown_kid(&mut self, kid: Option<&str>, now_ms: u64) -> bool {
        let now_ms = self.now(now_ms);
        let interval_ms = self.config.unknown_kid_refetch_s.saturating_mul(1000);
        let kid = kid.unwrap_or("");
        if self.negative.get(kid).is_some_and(|until| now_ms < *until) {
            return false;
        }
        if self.negative.len() >= NEGATIVE_CACHE_ENTRIES {
            self.negative.retain(|_, until| now_ms < *until);
            if self.negative.len() >= NEGATIVE_CACHE_ENTRIES {
                self.negative.clear();
            }
        }
        self.negative
            .insert(kid.to_string(), now_ms.saturating_add(interval_ms));
        if self.in_flight() {
            return false;
        }
        let earliest = self
            .last_start_ms
            .map_or(now_ms, |start| start.saturating_add(interval_ms));
        let at = earliest.max(now_ms);
        if at < self.next_fetch_ms {
            self.next_fetch_ms = at;
            self.refetch_pending = true;
            return true;
        }
        false
    }

    /// Whether the next call to start was asked by an unknown kid.
    pub fn refetch_pending(&self) -> bool {
        self.refetch_pending
    }

    /// Drops retiring keys whose grace is over; true if any went (the keys
    /// in force changed: rebuild them and empty the token cache).
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let now_ms = self.now(now_ms);
        let before = self.retiring.len();
        self.retiring.retain(|(_, until)| now_ms < *until);
        self.retiring.len() != before
    }

    /// The request to send now, if one is due; report it with
    /// [`KeySubscription::dispatched`] or [`KeySubscription::dispatch_failed`].
    pub fn poll(&mut self, now_ms: u64) -> Option<FetchRequest> {
        let now_ms = self.now(now_ms);
        match self.state {
            State::InFlight { since_ms, .. } => {
                if now_ms.saturating_sub(since_ms) > self.config.timeout_ms + LOST_CALL_GRACE_MS {
                    self.fail(now_ms);
                }
                None
            }
            State::Idle if now_ms >= self.next_fetch_ms => Some(self.request()),
            State::Idle => None,
        }
    }

    pub fn request(&self) -> FetchRequest {
        let mut headers = vec![
            (":method", "GET".to_string()),
            (":path", self.config.path.clone()),
            (":authority", self.config.authority.clone()),
            ("accept", "application/json".to_string()),
        ];
        if let Some(etag) = &self.etag {
            headers.push(("if-none-match", etag.clone()));
        }
        FetchRequest {
            // The snapshot's sources do not apply; the root context tells
            // the calls apart by token.
            source: Source::Sidecar,
            cluster: self.config.cluster.clone(),
            headers,
            timeout: Duration::from_millis(self.config.timeout_ms),
        }
    }

    pub fn dispatched(&mut self, token: u32, now_ms: u64) {
        let now_ms = self.now(now_ms);
        self.state = State::InFlight {
            token,
            since_ms: now_ms,
        };
        self.last_start_ms = Some(now_ms);
        self.refetch_pending = false;
    }

    pub fn dispatch_failed(&mut self, now_ms: u64) {
        let now_ms = self.now(now_ms);
        self.last_start_ms = Some(now_ms);
        self.refetch_pending = false;
        self.fail(now_ms);
    }

    pub fn body_plan(&self, status: Option<u16>, body_size: usize) -> BodyPlan {
        if status != Some(200) {
            BodyPlan::Skip
        } else if body_size > self.config.max_jwks_bytes {
            BodyPlan::TooLarge
        } else {
            BodyPlan::Read
        }
    }

    fn fail(&mut self, now_ms: u64) {
        self.state = State::Idle;
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(20);
        let backoff = self
            .config
            .retry_min_ms
            .saturating_mul(1 << shift)
            .min(self.config.refresh_s.saturating_mul(1000).max(1000));
        self.next_fetch_ms = now_ms.saturating_add(backoff);
    }

    fn schedule_refresh(&mut self, now_ms: u64) {
        self.state = State::Idle;
        self.next_fetch_ms = now_ms.saturating_add(self.config.refresh_s.saturating_mul(1000));
    }

    /// Handles the answer to call `token`.
    pub fn on_response(
        &mut self,
        token: u32,
        now_ms: u64,
        status: Option<u16>,
        etag: Option<&[u8]>,
        body: Body<'_>,
    ) -> KeysOutcome {
        let now_ms = self.now(now_ms);
        if !self.owns(token) {
            return KeysOutcome::Stale;
        }
        match status {
            Some(304) if self.current.is_some() => {
                self.failures = 0;
                self.last_contact_ms = Some(now_ms);
                self.schedule_refresh(now_ms);
                KeysOutcome::Unchanged
            }
            Some(200) => {
                self.last_contact_ms = Some(now_ms);
                let outcome = match body {
                    Body::Read(bytes) => self.take(bytes, now_ms),
                    Body::Owned(bytes) => self.take(&bytes, now_ms),
                    Body::TooLarge(size) => KeysOutcome::Refused {
                        why: format!(
                            "the JWKS is {size} bytes, more than max_jwks_bytes = {}",
                            self.config.max_jwks_bytes
                        ),
                        too_large: true,
                    },
                    Body::Unreadable => KeysOutcome::Failed {
                        why: "the host did not hand over the body".to_string(),
                    },
                };
                match &outcome {
                    KeysOutcome::Applied { .. } | KeysOutcome::Unchanged => {
                        self.failures = 0;
                        self.etag = etag
                            .filter(|e| {
                                e.len() <= 256 && e.iter().all(|b| (0x20..0x7f).contains(b))
                            })
                            .and_then(|e| std::str::from_utf8(e).ok())
                            .map(str::to_string);
                        self.schedule_refresh(now_ms);
                    }
                    // A refused set: keep the last good one, back off (the
                    // source may be mid-deploy), do not keep its ETag.
                    _ => self.fail(now_ms),
                }
                outcome
            }
            Some(status) => {
                self.fail(now_ms);
                KeysOutcome::Failed {
                    why: format!("status {status}"),
                }
            }
            None => {
                self.fail(now_ms);
                KeysOutcome::Failed {
                    why: "no answer (connection failure or timeout)".to_string(),
                }
            }
        }
    }

    fn take(&mut self, bytes: &[u8], now_ms: u64) -> KeysOutcome {
        let value = match json::parse(bytes) {
            Ok(value) => value,
            Err(error) => {
                return KeysOutcome::Refused {
                    why: format!("not a JWKS: {error}"),
                    too_large: false,
                };
            }
        };
        let (set, skipped) = match KeySet::from_jwks_lenient(&value, &self.algorithms, "jwks") {
            Ok(parsed) => parsed,
            Err(error) => {
                return KeysOutcome::Refused {
                    why: error.to_string(),
                    too_large: false,
                };
            }
        };
        let grace_ms = self.config.grace_s.saturating_mul(1000);
        let until = now_ms.saturating_add(grace_ms);
        let mut retired = 0;
        let mut changed = false;
        if let Some(old) = &self.current {
            for entry in old.entries() {
                if !set.entries().iter().any(|e| e.same_key(entry)) {
                    changed = true;
                    if grace_ms > 0 {
                        self.retiring.push((entry.clone(), until));
                        retired += 1;
                    }
                }
            }
            changed |= set
                .entries()
                .iter()
                .any(|e| !old.entries().iter().any(|o| o.same_key(e)));
        } else {
            changed = true;
        }
        // A key that came back is current again, not retiring.
        self.retiring
            .retain(|(r, _)| !set.entries().iter().any(|e| e.same_key(r)));
        // Bound the retiring list (a source flapping through many sets).
        while self.retiring.len() > crate::jwks::MAX_KEYS {
            self.retiring.remove(0);
        }
        for entry in set.entries() {
            if let Some(kid) = &entry.kid {
                self.negative.remove(kid);
            }
        }
        if !changed {
            return KeysOutcome::Unchanged;
        }
        let keys = set.entries().len();
        self.current = Some(set);
        self.version = self.version.saturating_add(1);
        KeysOutcome::Applied {
            keys,
            skipped,
            retired,
        }
    }
}

/// The key subscription's metrics.
#[derive(Clone, Debug, Default)]
pub struct KeyMetrics {
    version: Option<u32>,
    age: Option<u32>,
    keys: Option<u32>,
    applied: Option<u32>,
    refused: Option<u32>,
    fetch_failures: Option<u32>,
    unknown_kid_refetches: Option<u32>,
}

/// Every key-subscription metric name, for documentation and tests.
pub fn metric_names() -> Vec<String> {
    [
        ("version", MetricKind::Gauge),
        ("age_s", MetricKind::Gauge),
        ("keys", MetricKind::Gauge),
        ("applied", MetricKind::Counter),
        ("refused", MetricKind::Counter),
        ("fetch_failures", MetricKind::Counter),
        ("unknown_kid_refetches", MetricKind::Counter),
    ]
    .iter()
    .map(|(n, _)| name(&["jwks", n]))
    .collect()
}

impl KeyMetrics {
    pub fn define(sink: &mut dyn MetricSink) -> KeyMetrics {
        let mut d = |kind, n: &str| sink.define(kind, &name(&["jwks", n]));
        KeyMetrics {
            version: d(MetricKind::Gauge, "version"),
            age: d(MetricKind::Gauge, "age_s"),
            keys: d(MetricKind::Gauge, "keys"),
            applied: d(MetricKind::Counter, "applied"),
            refused: d(MetricKind::Counter, "refused"),
            fetch_failures: d(MetricKind::Counter, "fetch_failures"),
            unknown_kid_refetches: d(MetricKind::Counter, "unknown_kid_refetches"),
        }
    }

    fn bump(sink: &mut dyn MetricSink, id: Option<u32>) {
        if let Some(id) = id {
            sink.increment(id, 1);
        }
    }

    pub fn outcome(&self, sink: &mut dyn MetricSink, outcome: &KeysOutcome) {
        match outcome {
            KeysOutcome::Applied { .. } => Self::bump(sink, self.applied),
            KeysOutcome::Refused { .. } => Self::bump(sink, self.refused),
            KeysOutcome::Failed { .. } => Self::bump(sink, self.fetch_failures),
            KeysOutcome::Unchanged | KeysOutcome::Stale => {}
        }
    }

    pub fn fetch_failed(&self, sink: &mut dyn MetricSink) {
        Self::bump(sink, self.fetch_failures);
    }

    pub fn refetch(&self, sink: &mut dyn MetricSink) {
        Self::bump(sink, self.unknown_kid_refetches);
    }

    pub fn gauges(&self, sink: &mut dyn MetricSink, version: u64, age_s: u64, keys: usize) {
        for (id, value) in [
            (self.version, version),
            (self.age, age_s),
            (self.keys, u64::try_from(keys).unwrap_or(u64::MAX)),
        ] {
            if let Some(id) = id {
                sink.record(id, value);
            }
        }
    }
}

/// The `kid` of a token's JOSE header, if the token is a JWS whose header
/// parses; for telling the key subscription which kid was unknown. Reads at
/// most `max_token_bytes`; never fails loudly.
pub fn token_kid(token: &[u8], max_token_bytes: usize) -> Option<String> {
    use base64::Engine as _;
    if token.len() > max_token_bytes {
        return None;
    }
    let header_b64 = token.split(|b| *b == b'.').next()?;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()?;
    let object = json::parse_object(&header).ok()?;
    let kid = object.get("kid")?.as_str()?;
    (kid.len() <= crate::jwks::MAX_KID_BYTES).then(|| kid.to_string())
}

/// An unknown kid seen by a request: the token's unverified issuer (to
/// pick the provider) and its kid (`None` when it has none).
pub type UnknownKid = (Option<String>, Option<String>);

/// For a request refused with `unknown_kid`: the token's issuer and kid,
/// if the config fetches keys at run time. The HTTP context queues it for
/// the root context, which owns the subscriptions.
pub fn unknown_kid_of<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    jwt: &crate::config::JwtSettings,
    headers: &[(K, V)],
) -> Option<UnknownKid> {
    if jwt.remote.is_none() && jwt.providers.iter().all(|p| p.remote.is_none()) {
        return None;
    }
    let token = crate::token::extract(&jwt.source, headers).ok()?;
    Some((
        crate::token::unverified_issuer(&token, jwt.max_token_bytes),
        token_kid(&token, jwt.max_token_bytes),
    ))
}

/// Queues an unknown kid for the root context, bounded.
pub fn note_unknown_kid(pending: &mut Vec<UnknownKid>, kid: UnknownKid) {
    if pending.len() < MAX_PENDING_KIDS && !pending.contains(&kid) {
        pending.push(kid);
    }
}

/// Which key source an unknown kid is for: `Some(None)` for the top-level
/// `jwks_remote`, `Some(Some(i))` for `providers[i]`; `None` if no source
/// fetches keys for that issuer.
pub fn source_for(jwt: &crate::config::JwtSettings, issuer: Option<&str>) -> Option<Option<usize>> {
    if jwt.providers.is_empty() {
        return jwt.remote.as_ref().map(|_| None);
    }
    let issuer = issuer?;
    jwt.providers
        .iter()
        .position(|p| p.remote.is_some() && p.issuers.as_ref().is_some_and(|s| s.contains(issuer)))
        .map(Some)
}

/// The keys in force for `jwt`: the inline ones, then the fetched ones
/// (an inline key wins a kid clash). Answers the settings with them and
/// whether a key that was in force is gone (empty the token cache then).
pub fn with_keys(
    jwt: &crate::config::JwtSettings,
    remote: &KeySet,
) -> (crate::config::JwtSettings, bool) {
    let mut keys = jwt.inline_keys.clone();
    keys.extend_unique(remote);
    let removed = jwt
        .keys
        .entries()
        .iter()
        .any(|old| !keys.entries().iter().any(|new| new.same_key(old)));
    let mut settings = jwt.clone();
    settings.keys = keys;
    (settings, removed)
}
