//! The root context of the native build: the snapshot subscription (sidecar
//! and persisted copy) and the key subscriptions (`jwks_remote`), the
//! filter's own state machines (`Subscription`, `KeySubscription`), driven
//! by one background thread per filter config. Each call runs on a short
//! thread of its own (plain blocking HTTP to loopback) and reports back on a
//! channel, so a 30 s long-poll does not hold up a key fetch, as Wasm's
//! asynchronous `dispatch_http_call`s do not.
//!
//! Why threads and not Envoy's config-level http callouts: the callouts and
//! their answers would each need their own signatures tested through real
//! Envoy; a thread that swaps one `Arc` is simple to get right and keeps
//! every worker on the same snapshot and keys. The cost: the plugin
//! config's clusters are reached at addresses given in Envoy's environment
//! ([`Clusters`]) rather than through Envoy's cluster manager.

use crate::abi;
use crate::envoy::{self, ConfigHandle, Scheduler};
use crate::metrics::{Definitions, Sink, Slots, Via};
use cell_router_filter::Config;
use cell_router_filter::config::Auth;
use cell_router_filter::decide::{Installed, SnapshotSource};
use cell_router_filter::key_subscription::{
    self, KeyMetrics, KeySubscription, KeysOutcome, UnknownKid,
};
use cell_router_filter::metrics::Metrics;
use cell_router_filter::subscription::{
    Body, FetchOutcome, FetchRequest, FetchResponse, Source, Subscription,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Envoy's environment: `name=host:port` pairs, comma-separated, for the
/// clusters the plugin config names (`sidecar.cluster`,
/// `sidecar.persisted.cluster`, `jwks_remote.cluster`).
pub const CLUSTERS_ENV: &str = "CELL_ROUTER_CLUSTERS";
/// The sidecar's address alone (for `sidecar.cluster`), if `CLUSTERS_ENV`
/// does not name it; default `127.0.0.1:18000`.
pub const SIDECAR_ADDRESS_ENV: &str = "CELL_ROUTER_SIDECAR_ADDRESS";
const DEFAULT_SIDECAR_ADDRESS: &str = "127.0.0.1:18000";

/// The main-thread event: record the per-cell gauges (`ramp_share`).
pub const EVENT_GAUGES: u64 = 1;

/// Cluster name to `host:port`.
#[derive(Clone, Debug, Default)]
pub struct Clusters(HashMap<String, String>);

impl Clusters {
    pub fn from_env(sidecar_cluster: Option<&str>) -> Clusters {
        let mut map: HashMap<String, String> = std::env::var(CLUSTERS_ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| {
                let (name, address) = pair.trim().split_once('=')?;
                Some((name.trim().to_string(), address.trim().to_string()))
            })
            .filter(|(name, address)| !name.is_empty() && !address.is_empty())
            .collect();
        if let Some(cluster) = sidecar_cluster
            && !map.contains_key(cluster)
        {
            let address = std::env::var(SIDECAR_ADDRESS_ENV)
                .unwrap_or_else(|_| DEFAULT_SIDECAR_ADDRESS.to_string());
            map.insert(cluster.to_string(), address);
        }
        Clusters(map)
    }

    fn address(&self, cluster: &str) -> Option<&str> {
        self.0.get(cluster).map(String::as_str)
    }
}

/// Envoy's config while it lives: the background thread may use it only
/// under the read lock; `config_destroy` takes it away under the write lock.
pub struct Link {
    pub config: ConfigHandle,
    pub scheduler: Option<Scheduler>,
}

/// The main thread's metrics (per-cell gauges).
#[derive(Default)]
pub struct MainMetrics {
    pub metrics: Option<Metrics>,
    pub slots: Slots,
}

/// What the workers, the main thread and the background thread share.
pub struct Shared {
    /// The config in force: the plugin config with the fetched keys.
    pub config: RwLock<Arc<Config>>,
    /// The snapshot in force (requests clone the `Arc`, no copy of the map).
    pub installed: RwLock<Option<Arc<Installed>>>,
    /// Bumped when a key left the keys in force: workers empty their token
    /// caches (a cached verification must not outlive its key).
    pub cache_epoch: AtomicU64,
    /// Unknown kids seen by requests, for the key subscriptions (bounded).
    pub unknown_kids: Mutex<Vec<UnknownKid>>,
    pub stop: AtomicBool,
    pub definitions: Definitions,
    pub link: RwLock<Option<Link>>,
    pub main: Mutex<MainMetrics>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    pub fn new(
        config: Config,
        installed: Option<Arc<Installed>>,
        definitions: Definitions,
    ) -> Self {
        Shared {
            config: RwLock::new(Arc::new(config)),
            installed: RwLock::new(installed),
            cache_epoch: AtomicU64::new(0),
            unknown_kids: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            definitions,
            link: RwLock::new(None),
            main: Mutex::new(MainMetrics::default()),
        }
    }

    pub fn installed(&self) -> Option<Arc<Installed>> {
        read(&self.installed)
    }

    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    /// Ends the link to Envoy's config: after this returns, the background
    /// thread no longer touches it (the scheduler is deleted here).
    pub fn unlink(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let link = match self.link.write() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(link);
    }

    /// Runs `body` with Envoy's config if it is still alive.
    fn with_link(&self, body: impl FnOnce(&Link)) {
        let guard = match self.link.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(link) = guard.as_ref() {
            body(link);
        }
    }

    /// The main-thread event: the per-cell gauges at `now_ms`.
    pub fn record_main_gauges(&self, config: ConfigHandle, now_ms: u64) {
        let Some(installed) = self.installed() else {
            return;
        };
        let mut main = lock(&self.main);
        let MainMetrics { metrics, slots } = &mut *main;
        if slots.full() {
            *slots = Slots::default();
            *metrics = None;
        }
        let mut sink = Sink {
            config,
            definitions: &self.definitions,
            slots,
            via: Via::Main,
        };
        let metrics = metrics.get_or_insert_with(|| Metrics::define(&mut sink));
        let cells: HashSet<&str> = installed
            .snapshot()
            .cells()
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        metrics.retain_cells(|id| cells.contains(id));
        metrics.ramp_shares(&mut sink, installed.snapshot(), now_ms);
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Sidecar => "sidecar",
        Source::Persisted => "persisted copy",
    }
}

/// Starts the background thread; it ends soon after `shared.stop` is set.
pub fn start(shared: Arc<Shared>, clusters: Clusters) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cell-router-root".into())
        .spawn(move || {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Root::new(&shared, clusters).run()
            }));
            if caught.is_err() {
                envoy::log(
                    abi::LOG_LEVEL_ERROR,
                    "cell-router: the subscription thread panicked; the snapshot and keys in force stay",
                );
            }
        })
        .map(|_| ())
}

/// Which subscription a call belongs to.
#[derive(Clone, Copy, Debug)]
enum Caller {
    /// The sidecar or the persisted copy (the subscription tells them apart).
    Snapshot,
    Keys(usize),
}

/// One call's answer, from its thread.
struct Answer {
    token: u32,
    caller: Caller,
    result: Result<Fetched, String>,
}

struct Fetched {
    status: u16,
    etag: Option<String>,
    body: FetchedBody,
}

enum FetchedBody {
    Read(Vec<u8>),
    TooLarge(usize),
}

/// The background thread's state (the Wasm root context's).
struct Root<'s> {
    shared: &'s Shared,
    clusters: Clusters,
    subscription: Option<Subscription>,
    keys: Vec<(Option<usize>, KeySubscription)>,
    metrics: Metrics,
    key_metrics: KeyMetrics,
    slots: Slots,
    token: u32,
    answers: Sender<Answer>,
    inbox: Receiver<Answer>,
    last_gauges_ms: u64,
}

impl<'s> Root<'s> {
    fn new(shared: &'s Shared, clusters: Clusters) -> Root<'s> {
        let now = now_ms();
        let config = shared.config();
        let subscription = config.sidecar.clone().map(|mut sidecar| {
            // Whole snapshots: this thread serves no requests, and its
            // client reads bodies of any size (pieces only cost round trips).
            sidecar.chunk_bytes = 0;
            Subscription::new(sidecar, now, now ^ 0x9e37_79b9_7f4a_7c15)
                .with_gateway_region(config.region.clone())
        });
        let mut keys = Vec::new();
        if let Some(jwt) = config.jwt() {
            if let Some(remote) = jwt.remote.clone() {
                keys.push((
                    None,
                    KeySubscription::new(remote, jwt.algorithms.clone(), now),
                ));
            }
            for (i, provider) in jwt.providers.iter().enumerate() {
                if let Some(remote) = provider.remote.clone() {
                    keys.push((
                        Some(i),
                        KeySubscription::new(remote, provider.algorithms.clone(), now),
                    ));
                }
            }
        }
        let (answers, inbox) = channel();
        let mut slots = Slots::default();
        let (metrics, key_metrics) = {
            // Only names are resolved here: no Envoy call.
            let mut sink = Sink {
                config: unlinked(),
                definitions: &shared.definitions,
                slots: &mut slots,
                via: Via::Background,
            };
            (Metrics::define(&mut sink), KeyMetrics::define(&mut sink))
        };
        Root {
            shared,
            clusters,
            subscription,
            keys,
            metrics,
            key_metrics,
            slots,
            token: 0,
            answers,
            inbox,
            last_gauges_ms: 0,
        }
    }

    /// Counts through Envoy's config, if it is still alive.
    fn count(&mut self, what: impl FnOnce(&Metrics, &KeyMetrics, &mut Sink<'_>)) {
        let Root {
            shared,
            metrics,
            key_metrics,
            slots,
            ..
        } = self;
        shared.with_link(|link| {
            let mut sink = Sink {
                config: link.config,
                definitions: &shared.definitions,
                slots,
                via: Via::Background,
            };
            what(metrics, key_metrics, &mut sink);
        });
    }

    fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = now_ms();
            self.fetch_keys_if_due(now);
            self.fetch_snapshot_if_due(now);
            self.update_gauges(now);
            match self.inbox.recv_timeout(Duration::from_millis(50)) {
                Ok(answer) => self.on_answer(answer),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn next_token(&mut self) -> u32 {
        self.token = self.token.wrapping_add(1).max(1);
        self.token
    }

    /// Starts one call on a thread of its own; false if it could not start.
    fn dispatch(
        &mut self,
        caller: Caller,
        request: &FetchRequest,
        max_bytes: usize,
    ) -> Option<u32> {
        let address = self.clusters.address(&request.cluster)?.to_string();
        let token = self.next_token();
        let answers = self.answers.clone();
        let path = request.header(":path").unwrap_or("/").to_string();
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with(':'))
            .map(|(name, value)| (name.to_string(), value.clone()))
            .chain(
                request
                    .header(":authority")
                    .map(|a| ("host".to_string(), a.to_string())),
            )
            .collect();
        let timeout = request.timeout;
        std::thread::Builder::new()
            .name("cell-router-call".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(|| {
                    fetch(&address, &path, &headers, timeout, max_bytes)
                })
                .unwrap_or_else(|_| Err("the call panicked".to_string()));
                let _ = answers.send(Answer {
                    token,
                    caller,
                    result,
                });
            })
            .ok()?;
        Some(token)
    }

    fn fetch_snapshot_if_due(&mut self, now: u64) {
        // Each source starts at most one call per round.
        for _ in 0..4 {
            let Some(subscription) = self.subscription.as_mut() else {
                return;
            };
            let Some(request) = subscription.poll(now) else {
                return;
            };
            let max = subscription.config().max_snapshot_bytes;
            let source = request.source;
            match self.dispatch(Caller::Snapshot, &request, max) {
                Some(token) => {
                    if let Some(subscription) = self.subscription.as_mut() {
                        subscription.dispatched(source, token, now);
                    }
                }
                None => {
                    let failures = self.subscription.as_mut().map_or(0, |s| {
                        s.dispatch_failed(source, now);
                        s.failures_of(source)
                    });
                    self.count(|m, _, s| m.fetch_failed(s, source));
                    if failures.is_power_of_two() {
                        envoy::log(
                            abi::LOG_LEVEL_ERROR,
                            &format!(
                                "cell-router: no address for the {} cluster {:?} (set {CLUSTERS_ENV}); {failures} failure(s) in a row",
                                source_name(source),
                                request.cluster
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Feeds unknown kids to the key subscriptions, drops keys past their
    /// grace, and starts the key fetches that are due.
    fn fetch_keys_if_due(&mut self, now: u64) {
        if self.keys.is_empty() {
            return;
        }
        let kids = std::mem::take(&mut *lock(&self.shared.unknown_kids));
        if !kids.is_empty() {
            let config = self.shared.config();
            if let Some(jwt) = config.jwt() {
                for (issuer, kid) in kids {
                    let Some(source) = key_subscription::source_for(jwt, issuer.as_deref()) else {
                        continue;
                    };
                    if let Some((_, keys)) = self.keys.iter_mut().find(|(p, _)| *p == source) {
                        keys.unknown_kid(kid.as_deref(), now);
                    }
                }
            }
        }
        for slot in 0..self.keys.len() {
            let expired = self
                .keys
                .get_mut(slot)
                .is_some_and(|(_, keys)| keys.expire(now));
            if expired {
                envoy::log(
                    abi::LOG_LEVEL_INFO,
                    "cell-router: removed verification keys reached the end of their grace period",
                );
                self.install_keys(slot);
            }
            let Some((_, keys)) = self.keys.get_mut(slot) else {
                continue;
            };
            let Some(request) = keys.poll(now) else {
                continue;
            };
            let refetch = keys.refetch_pending();
            let max = keys.config().max_jwks_bytes;
            match self.dispatch(Caller::Keys(slot), &request, max) {
                Some(token) => {
                    if let Some((_, keys)) = self.keys.get_mut(slot) {
                        keys.dispatched(token, now);
                    }
                    if refetch {
                        self.count(|_, k, s| k.refetch(s));
                    }
                }
                None => {
                    if let Some((_, keys)) = self.keys.get_mut(slot) {
                        keys.dispatch_failed(now);
                    }
                    self.count(|_, k, s| k.fetch_failed(s));
                }
            }
        }
    }

    fn on_answer(&mut self, answer: Answer) {
        let now = now_ms();
        let (status, etag, body) = match answer.result {
            Ok(fetched) => (
                Some(fetched.status),
                fetched.etag,
                match fetched.body {
                    // Handed over: a binary snapshot is routed by from
                    // these very bytes.
                    FetchedBody::Read(bytes) => Body::Owned(bytes),
                    FetchedBody::TooLarge(size) => Body::TooLarge(size),
                },
            ),
            Err(_) => (None, None, Body::Unreadable),
        };
        let etag = etag.as_deref().map(str::as_bytes);
        match answer.caller {
            Caller::Keys(slot) => {
                let Some((_, keys)) = self.keys.get_mut(slot) else {
                    return;
                };
                let outcome = keys.on_response(answer.token, now, status, etag, body);
                self.count(|_, k, s| k.outcome(s, &outcome));
                match &outcome {
                    KeysOutcome::Applied { keys, retired, .. } => {
                        envoy::log(
                            abi::LOG_LEVEL_INFO,
                            &format!(
                                "cell-router: JWKS applied ({keys} keys, {retired} kept for the grace period)"
                            ),
                        );
                        self.install_keys(slot);
                    }
                    KeysOutcome::Refused { why, .. } => envoy::log(
                        abi::LOG_LEVEL_ERROR,
                        &format!("cell-router: JWKS refused, keeping the last good keys: {why}"),
                    ),
                    KeysOutcome::Failed { why } => envoy::log(
                        abi::LOG_LEVEL_INFO,
                        &format!(
                            "cell-router: JWKS fetch failed: {why}; keeping the last good keys"
                        ),
                    ),
                    KeysOutcome::Unchanged | KeysOutcome::Stale => {}
                }
            }
            Caller::Snapshot => {
                let Some(subscription) = self.subscription.as_mut() else {
                    return;
                };
                let mut outcome = subscription.on_response(
                    answer.token,
                    now,
                    FetchResponse {
                        status,
                        etag,
                        content_range: None,
                        body,
                    },
                );
                // This thread serves no requests: apply in one go.
                while matches!(outcome, FetchOutcome::Applying) {
                    outcome = subscription.apply_step(now, usize::MAX);
                }
                self.on_snapshot_outcome(outcome, now);
            }
        }
        self.update_gauges(now);
    }

    fn on_snapshot_outcome(&mut self, outcome: FetchOutcome, now: u64) {
        match outcome {
            FetchOutcome::Applied { snapshot, source } => {
                let version = snapshot.version();
                let cells = snapshot.cells().len();
                let from = match source {
                    Source::Sidecar => SnapshotSource::Sidecar,
                    Source::Persisted => SnapshotSource::Persisted,
                };
                write(
                    &self.shared.installed,
                    Some(Arc::new(Installed::with_source(*snapshot, from))),
                );
                let mut report = String::new();
                if let Some(subscription) = self.subscription.as_mut() {
                    subscription.installed(version, now);
                    if let Some(r) = subscription.take_apply_report() {
                        report = format!("; {r}");
                    }
                }
                self.count(|m, _, s| m.snapshot_applied(s, source));
                self.main_gauges();
                envoy::log(
                    abi::LOG_LEVEL_INFO,
                    &format!(
                        "cell-router: snapshot version {version} applied from the {} ({cells} cells{report})",
                        source_name(source)
                    ),
                );
            }
            FetchOutcome::Refused {
                source,
                error,
                too_large,
            } => {
                self.count(|m, _, s| m.snapshot_refused(s, too_large));
                envoy::log(
                    abi::LOG_LEVEL_ERROR,
                    &format!(
                        "cell-router: snapshot from the {} refused, keeping the last good one: {error}",
                        source_name(source)
                    ),
                );
            }
            FetchOutcome::Failed { source, why } => {
                let failures = self
                    .subscription
                    .as_ref()
                    .map_or(0, |s| s.failures_of(source));
                self.count(|m, _, s| m.fetch_failed(s, source));
                if failures.is_power_of_two() {
                    envoy::log(
                        abi::LOG_LEVEL_INFO,
                        &format!(
                            "cell-router: snapshot fetch from the {} failed: {why}; {failures} failure(s) in a row, backing off",
                            source_name(source)
                        ),
                    );
                }
            }
            FetchOutcome::Unchanged
            | FetchOutcome::Stale
            | FetchOutcome::Applying
            | FetchOutcome::Downloading => {}
        }
    }

    /// Puts the fetched keys of source `slot` in force (a new config, for
    /// new requests); workers empty their token caches when a key left.
    fn install_keys(&self, slot: usize) {
        let Some((provider, keys)) = self.keys.get(slot) else {
            return;
        };
        let config = self.shared.config();
        let Some(jwt) = config.jwt() else {
            return;
        };
        let mut top = jwt.clone();
        let target = match provider {
            None => &mut top,
            Some(i) => match top.providers.get_mut(*i) {
                Some(p) => p,
                None => return,
            },
        };
        let (settings, removed) = key_subscription::with_keys(target, &keys.keys());
        *target = settings;
        let mut next = (*config).clone();
        next.auth = Auth::Jwt(Box::new(top));
        write(&self.shared.config, Arc::new(next));
        if removed {
            self.shared.cache_epoch.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the main thread to record the per-cell gauges.
    fn main_gauges(&self) {
        self.shared.with_link(|link| {
            if let Some(scheduler) = &link.scheduler {
                scheduler.commit(EVENT_GAUGES);
            }
        });
    }

    /// The snapshot and key-set gauges, at most every 200 ms; the per-cell
    /// ones (main thread) every second.
    fn update_gauges(&mut self, now: u64) {
        if now.saturating_sub(self.last_gauges_ms) < 200 {
            return;
        }
        let second_passed = now / 1000 != self.last_gauges_ms / 1000;
        self.last_gauges_ms = now;
        let version = self.shared.installed().map_or(0, |i| i.version());
        let age = self.subscription.as_ref().map_or(0, |s| s.age_s(now));
        let key_gauges = (!self.keys.is_empty()).then(|| {
            let count = self.shared.config().jwt().map_or(0, |j| {
                j.keys.entries().len()
                    + j.providers
                        .iter()
                        .map(|p| p.keys.entries().len())
                        .sum::<usize>()
            });
            let version: u64 = self.keys.iter().map(|(_, k)| k.version()).sum();
            let age = self
                .keys
                .iter()
                .map(|(_, k)| k.age_s(now))
                .max()
                .unwrap_or(0);
            (version, age, count)
        });
        self.count(|m, k, s| {
            m.gauges(s, version, age);
            if let Some((version, age, count)) = key_gauges {
                k.gauges(s, version, age, count);
            }
        });
        if second_passed {
            self.main_gauges();
        }
    }
}

/// A handle for resolving names only (never called).
fn unlinked() -> ConfigHandle {
    // SAFETY: a null handle; `Sink::define` only resolves names and makes
    // no Envoy call.
    unsafe { ConfigHandle::new(std::ptr::null_mut()) }
}

/// One GET: status, ETag and the body (a 200's, at most `max` bytes).
fn fetch(
    address: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
    max: usize,
) -> Result<Fetched, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let mut response = request.call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // The subscriptions' body plan: only a 200's body, never past `max`.
    let body = if status != 200 {
        FetchedBody::Read(Vec::new())
    } else if let Some(length) = length.filter(|l| *l > max) {
        FetchedBody::TooLarge(length)
    } else {
        let limit = u64::try_from(max.saturating_add(1)).unwrap_or(u64::MAX);
        match response.body_mut().with_config().limit(limit).read_to_vec() {
            Ok(bytes) if bytes.len() > max => FetchedBody::TooLarge(bytes.len()),
            Ok(bytes) => FetchedBody::Read(bytes),
            // No content-length and more than `max` bytes.
            Err(ureq::Error::BodyExceedsLimit(_)) => FetchedBody::TooLarge(max.saturating_add(1)),
            Err(err) => return Err(err.to_string()),
        }
    };
    Ok(Fetched { status, etag, body })
}
