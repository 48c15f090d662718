//! The root context: parses the plugin configuration, holds the snapshot in
//! force and the metrics, and drives the snapshot subscription (ticks and
//! HTTP call answers). Thin on purpose: the decisions are in
//! `subscription.rs`, tested natively; this is tested by loading the `.wasm`.
//! Only built for wasm.

use crate::config::Config;
use crate::decide::{Installed, SnapshotSource, VmKeys, VmState};
use crate::hostcalls::{self, Buffer, LogLevel, Map, MetricType};
use crate::key_subscription::{KeyMetrics, KeySubscription, KeysOutcome};
use crate::metrics::{MetricKind, MetricSink, Metrics};
use crate::subscription::{
    Body, BodyPlan, CHECKED_MARK_KEY, CHECKING_KEY, FetchOutcome, FetchRequest, FetchResponse,
    Source, Subscription,
};
use cell_router_mapping::binary;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

pub(crate) fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Sidecar => "sidecar",
        Source::Persisted => "persisted copy",
    }
}

/// Host time a Wasm VM spends applying a snapshot before its worker serves
/// requests again (`Root::apply_slice`), while the VM has requests in
/// flight: what a request may wait for it.
const APPLY_SLICE_BUSY_NS: u64 = 200_000;
/// The same when the VM has served no request for [`IDLE_AFTER_NS`]:
/// longer, so an idle gateway takes a big snapshot in about the time it
/// takes to check it.
const APPLY_SLICE_IDLE_NS: u64 = 20_000_000;
/// A VM is idle once no request was in flight or started for this long: a
/// worker serving a light load has gaps of a millisecond or two between
/// requests, and a 20 ms slice in such a gap held the next ones (p99.9 of
/// 10–17 ms during swaps, measured at a third of the bench's capacity).
const IDLE_AFTER_NS: u64 = 100_000_000;
/// While the gateway serves, a snapshot of several pieces arrives over at
/// least this long (`Subscription::spread_downloads`): back to back, every
/// VM's pieces of a 1 M-override swap (the main thread's too) took a 2-core
/// gateway for 20-40 ms at once under saturating load; spread, they take a
/// share of each millisecond, and the swap still reaches every worker
/// within a second. An idle gateway takes its pieces back to back.
const DOWNLOAD_SPREAD_MS: u64 = 400;
/// Shared data: when a VM of this Envoy last served a request (decimal
/// host nanoseconds), so that a VM that serves nothing itself (Envoy's
/// main-thread VM) knows whether the workers beside it do.
const SERVING_KEY: &str = "cell_router.serving_ns";
/// A serving VM says so at most this often...
const SERVING_SAY_NS: u64 = 50_000_000;
/// ...and the gateway counts as serving this long after the last time one
/// did (longer than [`IDLE_AFTER_NS`]: a worker may only say so on its
/// next tick).
const GATEWAY_IDLE_AFTER_NS: u64 = 2_000_000_000;
/// Bytes checked between two looks at the clock.
const APPLY_STEP_BYTES: usize = 32 * 1024;
/// How often a VM applying a snapshot looks at the marks of the others.
const MARK_LOOK_NS: u64 = 1_000_000;
/// A VM checking records for the others says so again this often...
const CLAIM_REFRESH_NS: u64 = 100_000_000;
/// ...and a claim not renewed for this long is taken over (its VM is gone
/// or stuck): the others then check the records themselves.
const CLAIM_STALE_NS: u64 = 1_000_000_000;

/// The VM's requests, as the exports see them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Load {
    /// HTTP contexts alive now.
    pub in_flight: usize,
    /// Requests started so far (wrapping).
    pub started: u64,
}

fn now_ms() -> u64 {
    hostcalls::now_nanos() / 1_000_000
}

fn random_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    if getrandom::fill(&mut key).is_err() {
        // Not secret then, but still per-VM: the cache keeps working.
        log(
            LogLevel::Warn,
            "cell-router: no random source; a per-VM key (token cache, shed draws) derived from the clock",
        );
        for (slot, byte) in key.iter_mut().zip(hostcalls::now_nanos().to_le_bytes()) {
            *slot = byte;
        }
    }
    key
}

/// proxy-wasm metrics; a status other than OK leaves the metric out.
pub(crate) struct HostMetrics;

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
pub(crate) enum ForeignCall {
    Unknown,
    Available,
    Missing,
}

/// What the root context shares with its HTTP contexts (one VM, one thread).
pub(crate) struct Shared {
    pub config: Rc<Config>,
    pub vm: VmState,
    pub installed: Option<Rc<Installed>>,
    pub metrics: Metrics,
    pub verify_signature: ForeignCall,
    /// Unknown kids seen by requests, for the key subscription (bounded).
    pub unknown_kids: Vec<crate::key_subscription::UnknownKid>,
}

#[derive(Default)]
pub(crate) struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    subscription: Option<Subscription>,
    /// Tick period asked of the host and not yet accepted by it (ticks
    /// drive retries: without them a failed fetch is never retried).
    tick_pending: Option<u64>,
    /// The tick period the config asks for (ticks run every millisecond
    /// while a snapshot is applied in steps, then go back to this).
    tick_ms: u64,
    /// Ticks were asked every millisecond (a stepwise apply is under way).
    ticking_fast: bool,
    /// `Load::started` at the last tick or answer: requests since then mean
    /// the worker is serving.
    requests_seen: u64,
    /// Host time the VM was last seen serving (a request in flight or
    /// started since the previous look).
    last_served_ns: u64,
    /// When this VM last told the others it serves ([`SERVING_KEY`]).
    serving_said_ns: u64,
    /// Host time spent on the snapshot arriving now (its answers and apply
    /// slices): the VM's own cost of a swap, however long it is spread.
    swap_work_ns: u64,
    /// Sharing a binary snapshot's record checks with the other VMs.
    check_share: CheckShare,
    /// Keys fetched at run time (`jwks_remote`), see `key_subscription.rs`.
    /// One per key source: the top-level one (`None`) or `providers[i]`.
    keys: Vec<(Option<usize>, KeySubscription)>,
    key_metrics: KeyMetrics,
}

impl Root {
    /// The state HTTP contexts share, once configured.
    pub fn shared(&self) -> Option<Rc<RefCell<Shared>>> {
        self.shared.clone()
    }

    /// Puts a snapshot in force for new requests; false if it could not be.
    fn install(&self, snapshot: cell_router_mapping::Snapshot, source: Source) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let Ok(mut shared) = shared.try_borrow_mut() else {
            return false;
        };
        let cells: HashSet<&str> = snapshot.cells().iter().map(|c| c.id.as_str()).collect();
        shared.metrics.retain_cells(|id| cells.contains(id));
        drop(cells);
        // New requests take the new Rc; one already deciding keeps its own.
        let source = match source {
            Source::Sidecar => SnapshotSource::Sidecar,
            Source::Persisted => SnapshotSource::Persisted,
        };
        shared.installed = Some(Rc::new(Installed::with_source(snapshot, source)));
        true
    }

    fn update_gauges(&self, now_ms: u64) {
        let Some(shared) = &self.shared else { return };
        let Ok(mut shared) = shared.try_borrow_mut() else {
            return;
        };
        let version = shared.installed.as_ref().map_or(0, |i| i.version());
        let age = self.subscription.as_ref().map_or(0, |s| s.age_s(now_ms));
        shared.metrics.gauges(&mut HostMetrics, version, age);
        if let Some(installed) = shared.installed.clone() {
            shared
                .metrics
                .ramp_shares(&mut HostMetrics, installed.snapshot(), now_ms);
        }
        if !self.keys.is_empty() {
            let count = shared.config.jwt().map_or(0, |j| {
                j.keys.entries().len()
                    + j.providers
                        .iter()
                        .map(|p| p.keys.entries().len())
                        .sum::<usize>()
            });
            let version = self.keys.iter().map(|(_, k)| k.version()).sum();
            let age = self
                .keys
                .iter()
                .map(|(_, k)| k.age_s(now_ms))
                .max()
                .unwrap_or(0);
            self.key_metrics
                .gauges(&mut HostMetrics, version, age, count);
        }
    }

    fn count(&self, what: impl FnOnce(&Metrics, &mut HostMetrics)) {
        if let Some(shared) = &self.shared
            && let Ok(shared) = shared.try_borrow()
        {
            what(&shared.metrics, &mut HostMetrics);
        }
    }

    /// Puts the fetched keys of source `slot` in force (a new config with
    /// them, for new requests); empties the token cache when a key left.
    fn install_keys(&self, slot: usize) {
        let (Some((provider, keys)), Some(shared)) = (self.keys.get(slot), &self.shared) else {
            return;
        };
        let Ok(mut shared) = shared.try_borrow_mut() else {
            return;
        };
        let Some(jwt) = shared.config.jwt() else {
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
        let (settings, removed) = crate::key_subscription::with_keys(target, &keys.keys());
        *target = settings;
        let mut config = (*shared.config).clone();
        config.auth = crate::config::Auth::Jwt(Box::new(top));
        shared.config = Rc::new(config);
        if removed {
            shared.vm.cache.clear();
        }
    }

    /// Feeds unknown kids to the key subscriptions, drops keys past their
    /// grace, and starts the key fetches that are due.
    fn fetch_keys_if_due(&mut self, now_ms: u64) {
        if self.keys.is_empty() {
            return;
        }
        let kids = self
            .shared
            .as_ref()
            .and_then(|s| {
                s.try_borrow_mut()
                    .ok()
                    .map(|mut s| std::mem::take(&mut s.unknown_kids))
            })
            .unwrap_or_default();
        if !kids.is_empty() {
            let config = self
                .shared
                .as_ref()
                .and_then(|s| s.try_borrow().ok().map(|s| Rc::clone(&s.config)));
            if let Some(jwt) = config.as_deref().and_then(|c| c.jwt()) {
                for (issuer, kid) in kids {
                    let Some(source) = crate::key_subscription::source_for(jwt, issuer.as_deref())
                    else {
                        continue;
                    };
                    if let Some((_, keys)) = self.keys.iter_mut().find(|(p, _)| *p == source) {
                        keys.unknown_kid(kid.as_deref(), now_ms);
                    }
                }
            }
        }
        for slot in 0..self.keys.len() {
            let expired = self
                .keys
                .get_mut(slot)
                .is_some_and(|(_, keys)| keys.expire(now_ms));
            if expired {
                log(
                    LogLevel::Info,
                    "cell-router: removed verification keys reached the end of their grace period",
                );
                self.install_keys(slot);
            }
            let Some((_, keys)) = self.keys.get_mut(slot) else {
                continue;
            };
            let Some(request) = keys.poll(now_ms) else {
                continue;
            };
            let refetch = keys.refetch_pending();
            let headers: Vec<(&str, &str)> = request
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            let timeout_ms = u32::try_from(request.timeout.as_millis()).unwrap_or(u32::MAX);
            match hostcalls::http_call(&request.cluster, &headers, timeout_ms) {
                Ok(token) => {
                    keys.dispatched(token, now_ms);
                    if refetch {
                        self.key_metrics.refetch(&mut HostMetrics);
                    }
                }
                Err(status) => {
                    keys.dispatch_failed(now_ms);
                    self.key_metrics.fetch_failed(&mut HostMetrics);
                    let failures = keys.consecutive_failures();
                    if failures.is_power_of_two() {
                        log(
                            LogLevel::Warn,
                            &format!(
                                "cell-router: cannot call JWKS cluster {:?} (status {status}); {failures} failure(s) in a row, keeping the last good keys",
                                request.cluster
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Handles the answer to the key fetch.
    fn on_keys_response(&mut self, slot: usize, token: u32, now: u64, body_size: usize) {
        let Some((_, keys)) = self.keys.get_mut(slot) else {
            return;
        };
        let response = CallResponse::read(body_size, |status| keys.body_plan(status, body_size));
        let outcome = keys.on_response(
            token,
            now,
            response.status,
            response.etag.as_deref(),
            response.body(),
        );
        self.key_metrics.outcome(&mut HostMetrics, &outcome);
        match &outcome {
            KeysOutcome::Applied {
                keys: count,
                skipped,
                retired,
            } => {
                log(
                    LogLevel::Info,
                    &format!(
                        "cell-router: JWKS applied ({count} keys, {} skipped, {retired} kept for the grace period)",
                        skipped.len()
                    ),
                );
                for why in skipped.iter().take(4) {
                    log(
                        LogLevel::Info,
                        &format!("cell-router: JWKS key skipped: {why}"),
                    );
                }
                self.install_keys(slot);
            }
            KeysOutcome::Refused { why, .. } => log(
                LogLevel::Warn,
                &format!("cell-router: JWKS refused, keeping the last good keys: {why}"),
            ),
            KeysOutcome::Failed { why } => {
                let failures = self
                    .keys
                    .get(slot)
                    .map_or(0, |(_, k)| k.consecutive_failures());
                if failures.is_power_of_two() {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "cell-router: JWKS fetch failed: {why}; {failures} failure(s) in a row, keeping the last good keys"
                        ),
                    );
                }
            }
            KeysOutcome::Unchanged | KeysOutcome::Stale => {}
        }
        self.arm_tick();
        self.fetch_keys_if_due(now);
        self.update_gauges(now);
    }

    /// Starts the fetches that are due (the sidecar's, the persisted copy's).
    fn fetch_if_due(&mut self, now_ms: u64) {
        self.fetch_keys_if_due(now_ms);
        // Each source starts at most one call per round; the bound only
        // guards against a state machine that kept answering.
        for _ in 0..4 {
            let Some(subscription) = self.subscription.as_mut() else {
                return;
            };
            let Some(request) = subscription.poll(now_ms) else {
                return;
            };
            let FetchRequest {
                source,
                cluster,
                headers,
                timeout,
            } = request;
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
            match hostcalls::http_call(&cluster, &headers, timeout_ms) {
                Ok(token) => subscription.dispatched(source, token, now_ms),
                Err(status) => {
                    subscription.dispatch_failed(source, now_ms);
                    let failures = subscription.failures_of(source);
                    self.count(|m, s| m.fetch_failed(s, source));
                    if failures.is_power_of_two() {
                        log(
                            LogLevel::Warn,
                            &format!(
                                "cell-router: cannot call {} cluster {cluster:?} (status {status}); {failures} failure(s) in a row, backing off",
                                source_name(source)
                            ),
                        );
                    }
                }
            }
        }
    }

    pub fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        load: Load,
    ) {
        let now = now_ms();
        if let Some(slot) = self.keys.iter().position(|(_, k)| k.owns(token)) {
            self.on_keys_response(slot, token, now, body_size);
            return;
        }
        self.note_load(load);
        let spread_ms = if self.serving() {
            DOWNLOAD_SPREAD_MS
        } else {
            0
        };
        let Some(subscription) = self.subscription.as_mut() else {
            return;
        };
        subscription.spread_downloads(spread_ms);
        let read_from = hostcalls::now_nanos();
        let response = CallResponse::read(body_size, |status| {
            subscription.body_plan(status, body_size)
        });
        let read_ns = hostcalls::now_nanos().saturating_sub(read_from);
        let status = response.status;
        let (etag, content_range, body) = response.into_parts();
        let outcome = subscription.on_response(
            token,
            now,
            FetchResponse {
                status,
                etag: etag.as_deref(),
                content_range: content_range.as_deref(),
                body,
            },
        );
        self.add_swap_work(read_from);
        if matches!(outcome, FetchOutcome::Applying) {
            log(
                LogLevel::Info,
                &format!(
                    "cell-router: snapshot received (last answer of {body_size} bytes read in {:.1} ms); applying it in slices",
                    read_ns as f64 / 1e6
                ),
            );
            // The first slice now; the rest on millisecond ticks, so the
            // worker serves requests between them.
            self.apply_slice(now, load);
        } else {
            self.on_snapshot_outcome(outcome, now, status);
        }
        self.arm_tick();
        // Long-poll again at once, so the next change arrives in milliseconds.
        self.fetch_if_due(now);
        self.sync_tick_speed();
        self.update_gauges(now);
    }

    pub fn on_configure(&mut self, configuration_size: usize) -> bool {
        let bytes = hostcalls::buffer(Buffer::PluginConfiguration, 0, configuration_size)
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
        let vm = VmState::new(
            &config,
            VmKeys {
                cache: random_key(),
                shed: random_key(),
            },
        );
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
                "cell-router {} configured: {mode}; fallback snapshot {}; sidecar {}; persisted copy {}; readiness path {}",
                env!("CARGO_PKG_VERSION"),
                installed
                    .as_ref()
                    .map_or("none".to_string(), |i| format!("version {}", i.version())),
                config
                    .sidecar
                    .as_ref()
                    .map_or("none".to_string(), |s| format!("cluster {:?}", s.cluster)),
                config
                    .sidecar
                    .as_ref()
                    .and_then(|s| s.persisted.as_ref())
                    .map_or("none".to_string(), |p| format!("cluster {:?}", p.cluster)),
                config
                    .readiness_path
                    .as_deref()
                    .map_or("off".to_string(), |p| format!("{p:?}")),
            ),
        );
        self.subscription = config.sidecar.clone().map(|sidecar| {
            let seed = getrandom::u64().unwrap_or(now);
            Subscription::new(sidecar, now, seed).with_gateway_region(config.region.clone())
        });
        self.keys = Vec::new();
        if let Some(jwt) = config.jwt() {
            if let Some(remote) = jwt.remote.clone() {
                let keys = KeySubscription::new(remote, jwt.algorithms.clone(), now);
                self.keys.push((None, keys));
            }
            for (i, provider) in jwt.providers.iter().enumerate() {
                if let Some(remote) = provider.remote.clone() {
                    let keys = KeySubscription::new(remote, provider.algorithms.clone(), now);
                    self.keys.push((Some(i), keys));
                }
            }
        }
        if !self.keys.is_empty() {
            self.key_metrics = KeyMetrics::define(&mut HostMetrics);
        }
        let tick_ms = self
            .subscription
            .as_ref()
            .map_or(1000, |s| s.config().tick_ms);
        // Unknown kids reach the key subscription on ticks.
        let tick_ms = if !self.keys.is_empty() {
            tick_ms.min(100)
        } else {
            tick_ms
        };
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config: Rc::new(config),
            vm,
            installed,
            metrics,
            verify_signature: ForeignCall::Unknown,
            unknown_kids: Vec::new(),
        })));
        self.tick_ms = tick_ms;
        self.tick_pending = Some(tick_ms);
        self.arm_tick();
        self.update_gauges(now);
        true
    }

    /// What an answer (or the last step of a stepwise apply) means: install,
    /// count, log.
    fn on_snapshot_outcome(&mut self, outcome: FetchOutcome, now: u64, status: Option<u16>) {
        let swap_over = matches!(
            outcome,
            FetchOutcome::Applied { .. }
                | FetchOutcome::Refused { .. }
                | FetchOutcome::Failed { .. }
        );
        self.handle_snapshot_outcome(outcome, now, status);
        if swap_over {
            self.swap_work_ns = 0;
        }
    }

    fn handle_snapshot_outcome(&mut self, outcome: FetchOutcome, now: u64, status: Option<u16>) {
        match outcome {
            FetchOutcome::Applied { snapshot, source } => {
                let version = snapshot.version();
                let cells = snapshot.cells().len();
                if self.install(*snapshot, source) {
                    let mut report = String::new();
                    if let Some(subscription) = self.subscription.as_mut() {
                        subscription.installed(version, now);
                        if let Some(r) = subscription.take_apply_report() {
                            report = format!(
                                "; {r}; {:.1} ms of work in this VM",
                                self.swap_work_ns as f64 / 1e6
                            );
                            if let (Some(fingerprint), false) = (r.fingerprint, r.records_trusted) {
                                publish_checked_mark(fingerprint);
                            }
                        }
                    }
                    self.count(|m, s| m.snapshot_applied(s, source));
                    log(
                        LogLevel::Info,
                        &format!(
                            "cell-router: snapshot version {version} applied from the {} ({cells} cells{report})",
                            source_name(source)
                        ),
                    );
                } else {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "cell-router: snapshot version {version} could not be put in force; asking again"
                        ),
                    );
                }
            }
            FetchOutcome::Unchanged
            | FetchOutcome::Stale
            | FetchOutcome::Applying
            | FetchOutcome::Downloading => {}
            FetchOutcome::Refused {
                source,
                error,
                too_large,
            } => {
                self.count(|m, s| m.snapshot_refused(s, too_large));
                log(
                    LogLevel::Warn,
                    &format!(
                        "cell-router: snapshot from the {} refused, keeping the last good one: {error}",
                        source_name(source)
                    ),
                );
            }
            FetchOutcome::Failed { source, why } => {
                // No status: say what Envoy says (it cannot tell a reset
                // from a body over its buffer limit).
                let why = match (status, hostcalls::last_status()) {
                    (None, Some((code, message))) => {
                        format!(
                            "{why}; {}",
                            crate::subscription::host_failure(code, &message)
                        )
                    }
                    _ => why,
                };
                let failures = self
                    .subscription
                    .as_ref()
                    .map_or(0, |s| s.failures_of(source));
                self.count(|m, s| m.fetch_failed(s, source));
                if failures.is_power_of_two() {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "cell-router: snapshot fetch from the {} failed: {why}; {failures} failure(s) in a row, backing off",
                            source_name(source)
                        ),
                    );
                }
            }
        }
    }

    /// Applies the snapshot being checked for up to [`APPLY_SLICE_BUSY_NS`]
    /// of host time ([`APPLY_SLICE_IDLE_NS`] when no request is in flight),
    /// in steps of [`APPLY_STEP_BYTES`]. While more is left, ticks come
    /// every millisecond; once done, the outcome is handled like any
    /// answer's and the configured tick period comes back.
    fn apply_slice(&mut self, now: u64, load: Load) {
        self.note_load(load);
        let slice_ns = if self.serving() {
            APPLY_SLICE_BUSY_NS
        } else {
            APPLY_SLICE_IDLE_NS
        };
        let started = hostcalls::now_nanos();
        loop {
            let Some(subscription) = self.subscription.as_mut() else {
                return;
            };
            if !self.check_share.before_step(subscription) {
                // Another VM is checking these bytes' records: wait for it
                // on the next ticks.
                break;
            }
            let outcome = subscription.apply_step(now, APPLY_STEP_BYTES);
            if !matches!(outcome, FetchOutcome::Applying) {
                self.add_swap_work(started);
                self.check_share
                    .after_outcome(matches!(outcome, FetchOutcome::Applied { .. }));
                self.on_snapshot_outcome(outcome, now_ms(), Some(200));
                if self.ticking_fast {
                    self.ticking_fast = false;
                    self.tick_pending = Some(self.tick_ms);
                    self.arm_tick();
                }
                self.fetch_if_due(now_ms());
                return;
            }
            if hostcalls::now_nanos().saturating_sub(started) >= slice_ns {
                break;
            }
        }
        self.add_swap_work(started);
        if !self.ticking_fast {
            self.ticking_fast = true;
            self.tick_pending = Some(1);
            self.arm_tick();
        }
    }

    /// Adds the host time since `started_ns` to the swap's work.
    fn add_swap_work(&mut self, started_ns: u64) {
        let spent = hostcalls::now_nanos().saturating_sub(started_ns);
        self.swap_work_ns = self.swap_work_ns.saturating_add(spent);
    }

    /// Whether this VM served a request within [`IDLE_AFTER_NS`], or
    /// another VM of this Envoy within [`GATEWAY_IDLE_AFTER_NS`]: Envoy's
    /// main-thread VM serves nothing, and its long slices took a core from
    /// the workers of a small, busy gateway.
    fn serving(&self) -> bool {
        let now = hostcalls::now_nanos();
        if now.saturating_sub(self.last_served_ns) < IDLE_AFTER_NS {
            return true;
        }
        hostcalls::shared_data(SERVING_KEY)
            .ok()
            .flatten()
            .and_then(|(value, _)| std::str::from_utf8(&value).ok()?.parse::<u64>().ok())
            .is_some_and(|said| now.saturating_sub(said) < GATEWAY_IDLE_AFTER_NS)
    }

    /// Millisecond ticks while a snapshot arrives or is applied (paced
    /// pieces and apply slices are due on them), the configured period
    /// otherwise.
    fn sync_tick_speed(&mut self) {
        let fast = self
            .subscription
            .as_ref()
            .is_some_and(|s| s.is_applying() || s.is_downloading());
        if fast != self.ticking_fast {
            self.ticking_fast = fast;
            self.tick_pending = Some(if fast { 1 } else { self.tick_ms });
            self.arm_tick();
        }
    }

    /// Notes whether the VM served requests since the last look.
    fn note_load(&mut self, load: Load) {
        if load.in_flight > 0 || load.started != self.requests_seen {
            let now = hostcalls::now_nanos();
            self.last_served_ns = now;
            if now.saturating_sub(self.serving_said_ns) >= SERVING_SAY_NS {
                self.serving_said_ns = now;
                // Best effort: a VM that misses it only applies faster.
                let _ = hostcalls::set_shared_data(SERVING_KEY, now.to_string().as_bytes(), 0);
            }
        }
        self.requests_seen = load.started;
    }

    /// Asks the host for ticks if it has not accepted the period yet; tried
    /// again on every HTTP call answer until it does.
    fn arm_tick(&mut self) {
        let Some(period_ms) = self.tick_pending else {
            return;
        };
        match hostcalls::set_tick_period(u32::try_from(period_ms).unwrap_or(u32::MAX)) {
            Ok(()) => self.tick_pending = None,
            Err(status) => log(
                LogLevel::Error,
                &format!(
                    "cell-router: the host refused a tick period of {period_ms} ms (status {status}); retrying on the next sidecar answer"
                ),
            ),
        }
    }

    pub fn on_tick(&mut self, load: Load) {
        let now = now_ms();
        if self.subscription.as_ref().is_some_and(|s| s.is_applying()) {
            self.apply_slice(now, load);
        } else {
            self.note_load(load);
        }
        self.fetch_if_due(now);
        self.sync_tick_speed();
        self.update_gauges(now);
    }
}

/// The VMs of one Envoy check a binary snapshot's records once for all
/// (keys in `subscription.rs`): every VM receives its own copy and verifies
/// its checksum; then, unless another VM has vouched for bytes with the same
/// fingerprint, the first to claim them checks the records while the others
/// wait, and trust them once it vouches. A claim not renewed within
/// [`CLAIM_STALE_NS`] is taken over; a claimer whose check refuses the bytes
/// withdraws its claim, so the others check (and refuse) them themselves.
#[derive(Default)]
struct CheckShare {
    /// This VM's name in claims (random, set at the first claim).
    name: u64,
    looked_ns: u64,
    /// The last look found another VM checking these bytes.
    waiting: bool,
    /// The bytes this VM claimed, and when it last said so.
    claimed: Option<(binary::Fingerprint, u64)>,
}

impl CheckShare {
    /// Before a step of the apply: false while another VM is checking these
    /// bytes' records (do not step; look again on a later tick).
    fn before_step(&mut self, subscription: &mut Subscription) -> bool {
        let Some(fingerprint) = subscription.applying_fingerprint() else {
            // Checksum not verified yet, or the records trusted: step on.
            return true;
        };
        let now = hostcalls::now_nanos();
        if let Some((claimed, said)) = self.claimed
            && claimed == fingerprint
        {
            if now.saturating_sub(said) >= CLAIM_REFRESH_NS {
                self.claim(fingerprint, now, 0);
            }
            return true;
        }
        if now.saturating_sub(self.looked_ns) < MARK_LOOK_NS {
            return !self.waiting;
        }
        self.looked_ns = now;
        self.waiting = false;
        if let Ok(Some((mark, _))) = hostcalls::shared_data(CHECKED_MARK_KEY)
            && parse_fingerprint(&mark) == Some(fingerprint)
        {
            subscription.trust_applying_records();
            return true;
        }
        let cas = match hostcalls::shared_data(CHECKING_KEY) {
            Ok(Some((claim, cas))) => {
                if let Some((named, by, at)) = parse_claim(&claim)
                    && named == fingerprint
                    && by != self.name
                    && now.saturating_sub(at) < CLAIM_STALE_NS
                    && at.saturating_sub(now) < CLAIM_STALE_NS
                {
                    self.waiting = true;
                    return false;
                }
                cas
            }
            Ok(None) => 0,
            // No shared data: check here, as a lone VM would.
            Err(_) => return true,
        };
        // Lost the race for the claim: look again on the next look.
        self.waiting = !self.claim(fingerprint, now, cas);
        !self.waiting
    }

    /// Claims the checking of `fingerprint`'s records (only if the claim
    /// key is still at `cas`, unless 0); whether it took.
    fn claim(&mut self, fingerprint: binary::Fingerprint, now: u64, cas: u32) -> bool {
        if self.name == 0 {
            let key = random_key();
            self.name = u64::from_le_bytes(key[..8].try_into().unwrap_or([1; 8])).max(1);
        }
        let claim = format!("{fingerprint} {:016x} {now}", self.name);
        let took = hostcalls::set_shared_data(CHECKING_KEY, claim.as_bytes(), cas).is_ok();
        if took {
            self.claimed = Some((fingerprint, now));
        }
        took
    }

    /// The apply is over: a claimer whose bytes were not put in force
    /// withdraws its claim (an applied one has vouched instead).
    fn after_outcome(&mut self, applied: bool) {
        if self.claimed.take().is_some() && !applied {
            let _ = hostcalls::set_shared_data(CHECKING_KEY, b"", 0);
        }
        self.waiting = false;
    }
}

fn parse_fingerprint(text: &[u8]) -> Option<binary::Fingerprint> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// `<version> <checksum> <claimer> <time ns>`.
fn parse_claim(text: &[u8]) -> Option<(binary::Fingerprint, u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut words = text.split(' ');
    let (version, checksum) = (words.next()?, words.next()?);
    let fingerprint = format!("{version} {checksum}").parse().ok()?;
    let by = u64::from_str_radix(words.next()?, 16).ok()?;
    let at = words.next()?.parse().ok()?;
    words.next().is_none().then_some((fingerprint, by, at))
}

/// Vouches for a binary snapshot this VM checked in full and put in force.
fn publish_checked_mark(fingerprint: binary::Fingerprint) {
    if let Err(status) =
        hostcalls::set_shared_data(CHECKED_MARK_KEY, fingerprint.to_string().as_bytes(), 0)
    {
        // The other VMs then check it themselves, as without the mark.
        log(
            LogLevel::Warn,
            &format!(
                "cell-router: could not share that snapshot {fingerprint} was checked (status {status})"
            ),
        );
    }
}

/// The answer to one of the root context's http calls, as the host holds it
/// during `on_http_call_response`: the status, the ETag, and the body, read
/// only when `plan` wants it and never past the size limit it applied.
struct CallResponse {
    status: Option<u16>,
    etag: Option<Vec<u8>>,
    content_range: Option<Vec<u8>>,
    body: CallBody,
}

enum CallBody {
    Read(Vec<u8>),
    TooLarge(usize),
    Unreadable,
}

impl CallResponse {
    fn read(body_size: usize, plan: impl FnOnce(Option<u16>) -> BodyPlan) -> CallResponse {
        let raw = hostcalls::header_map(Map::HttpCallResponseHeaders).unwrap_or_default();
        let pairs = hostcalls::pairs(&raw);
        let header = |name: &[u8]| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let status =
            header(b":status").and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
        let etag = header(b"etag").map(<[u8]>::to_vec);
        let content_range = header(b"content-range").map(<[u8]>::to_vec);
        let body = match plan(status) {
            BodyPlan::Skip => CallBody::Read(Vec::new()),
            BodyPlan::TooLarge => CallBody::TooLarge(body_size),
            BodyPlan::Read if body_size == 0 => CallBody::Read(Vec::new()),
            BodyPlan::Read => match hostcalls::buffer(Buffer::HttpCallResponseBody, 0, body_size) {
                Ok(Some(read)) if read.len() == body_size => CallBody::Read(read),
                _ => CallBody::Unreadable,
            },
        };
        CallResponse {
            status,
            etag,
            content_range,
            body,
        }
    }

    /// The ETag and the body, handed over (a binary snapshot is routed by
    /// from the body's own bytes).
    fn into_parts(self) -> (Option<Vec<u8>>, Option<Vec<u8>>, Body<'static>) {
        let body = match self.body {
            CallBody::Read(bytes) => Body::Owned(bytes),
            CallBody::TooLarge(size) => Body::TooLarge(size),
            CallBody::Unreadable => Body::Unreadable,
        };
        (self.etag, self.content_range, body)
    }

    fn body(&self) -> Body<'_> {
        match &self.body {
            CallBody::Read(bytes) => Body::Read(bytes),
            CallBody::TooLarge(size) => Body::TooLarge(*size),
            CallBody::Unreadable => Body::Unreadable,
        }
    }
}
