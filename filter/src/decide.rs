//! The per-request decision: request headers (as bytes), the clock and the
//! snapshot in force in; headers to remove and set, or a local reply, out.
//! No host calls: `http_context.rs` applies the decision.

use crate::cache::TokenCache;
use crate::config::{Auth, Config, FORWARDED_BY_HEADER, POOL_HEADER, REGION_HEADER};
use crate::envoy_verify::{NoHost, SignatureHost};
use crate::shed_draw::ShedDraws;
use crate::token::{self, Reason, Rejection};
use cell_router_mapping::{Draws, Outcome as Resolved, Snapshot};

/// Where the snapshot in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSource {
    /// The sidecar's long-poll.
    Sidecar,
    /// The sidecar's persisted copy, served by Envoy from a file.
    Persisted,
    /// The inline `fallback_snapshot` of the plugin config.
    Fallback,
}

impl SnapshotSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotSource::Sidecar => "sidecar",
            SnapshotSource::Persisted => "persisted",
            SnapshotSource::Fallback => "fallback",
        }
    }
}

/// A snapshot in force, with what every routed request needs precomputed.
#[derive(Debug)]
pub struct Installed {
    snapshot: Snapshot,
    source: SnapshotSource,
    version_value: String,
}

impl Installed {
    /// The config's inline fallback snapshot.
    pub fn new(snapshot: Snapshot) -> Self {
        Installed::with_source(snapshot, SnapshotSource::Fallback)
    }

    pub fn with_source(snapshot: Snapshot, source: SnapshotSource) -> Self {
        let version_value = snapshot.version().to_string();
        Installed {
            snapshot,
            source,
            version_value,
        }
    }

    pub fn source(&self) -> SnapshotSource {
        self.source
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version()
    }

    /// The version as the filter writes it (header, filter state).
    pub fn version_value(&self) -> &str {
        &self.version_value
    }
}

/// Per-VM mutable state used by requests.
pub struct VmState {
    pub cache: TokenCache,
    /// Where shed draws come from: never from the request.
    pub shed: ShedDraws,
}

/// The per-VM secrets, taken from the host's random source once.
#[derive(Clone, Copy, Debug)]
pub struct VmKeys {
    /// The token cache's SipHash key (see [`TokenCache`]).
    pub cache: [u8; 16],
    /// The shed-draw generator's key (see [`ShedDraws`]).
    pub shed: [u8; 16],
}

impl VmKeys {
    /// Fixed keys for tests and fuzzing: not secret.
    pub fn fixed(byte: u8) -> VmKeys {
        VmKeys {
            cache: [byte; 16],
            shed: [byte ^ 0x5a; 16],
        }
    }
}

impl VmState {
    /// `keys` must be random per VM.
    pub fn new(config: &Config, keys: VmKeys) -> Self {
        let (entries, skew) = config
            .jwt()
            .map_or((0, 0), |jwt| (jwt.token_cache_entries, jwt.clock_skew_s));
        VmState {
            cache: TokenCache::new(entries, skew, keys.cache),
            shed: ShedDraws::new(keys.shed),
        }
    }
}

/// The host clock, read at most once per request, and only when needed.
struct Clock<'c> {
    read: &'c mut dyn FnMut() -> u64,
    now_ms: Option<u64>,
}

impl Clock<'_> {
    fn ms(&mut self) -> u64 {
        match self.now_ms {
            Some(now) => now,
            None => {
                let now = (self.read)();
                self.now_ms = Some(now);
                now
            }
        }
    }

    fn s(&mut self) -> u64 {
        self.ms() / 1000
    }
}

/// A response sent by the filter instead of forwarding the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%` in access
    /// logs), e.g. `cell_router_expired`.
    pub details: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` member of the JSON body.
    pub fn error_code(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        body.get("error")?.as_str().map(str::to_string)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Forward the request with these headers set (replacing any copy).
    Continue { set: Vec<(&'a str, &'a [u8])> },
    /// Answer locally.
    Respond(LocalReply),
}

/// What happened, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    Routed {
        cell: &'a str,
        reason: &'static str,
    },
    Shed {
        cell: &'a str,
    },
    Unavailable {
        cell: &'a str,
    },
    /// The tenant is homed in `region`: sent to that region's gateway.
    Forwarded {
        region: &'a str,
    },
    /// The tenant is homed in `region`, and the request was already
    /// forwarded once: refused (503) rather than forwarded again.
    WrongRegion {
        region: &'a str,
    },
    /// No pool of the snapshot takes the request's authority and path (404).
    NoPool,
    /// The snapshot in force does not fit this gateway's `region` (only a
    /// host that skipped [`Snapshot::local_region`] when installing it): 503.
    RegionMismatch,
    NoSnapshot,
    Rejected(Reason),
    /// The readiness path, answered whatever the token.
    Readiness {
        ready: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Client-sent headers to remove first (the cell and version headers).
    pub remove: Vec<&'a str>,
    pub action: Action<'a>,
    pub outcome: Outcome<'a>,
    /// Whether the token cache answered (None when it was not consulted).
    pub cache_hit: Option<bool>,
    /// Who checked the signature of a token verified for this request: the
    /// host (`true`) or the VM (`false`); None when nothing was verified.
    pub verified_by_host: Option<bool>,
    /// The tenant, once known.
    pub tenant: Option<String>,
    /// The pool the request was resolved in, once chosen.
    pub pool: Option<&'a str>,
    /// The tenant's home region (format-2 snapshots only), once resolved.
    pub region: Option<&'a str>,
}

fn json_body(error: &str, detail: &str) -> Vec<u8> {
    serde_json::json!({ "error": error, "detail": detail })
        .to_string()
        .into_bytes()
}

fn json_reply(status: u32, details: &str, error: &str, detail: &str) -> LocalReply {
    LocalReply {
        status,
        details: format!("cell_router_{details}"),
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        body: json_body(error, detail),
    }
}

/// The reply for a refused token or tenant.
pub fn rejection_reply(realm: &str, rejection: &Rejection) -> LocalReply {
    let reason = rejection.reason;
    let mut reply = json_reply(
        reason.status(),
        reason.metric_name(),
        reason.error_code(),
        &rejection.detail,
    );
    if reason.challenges() {
        let challenge = match reason.bearer_error() {
            Some(error) => format!("Bearer realm=\"{realm}\", error=\"{error}\""),
            None => format!("Bearer realm=\"{realm}\""),
        };
        reply.headers.push(("www-authenticate", challenge));
    }
    reply
}

fn header<'h, K: AsRef<[u8]>, V: AsRef<[u8]>>(
    headers: &'h [(K, V)],
    name: &str,
) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_ref())
}

/// Decides one request, every signature checked in the VM. `now_ms` (Unix
/// milliseconds, host clock) is called at most once: when a token needs
/// checking or the tenant is routed.
pub fn decide<'a, K: AsRef<[u8]>, V: AsRef<[u8]>>(
    config: &'a Config,
    vm: &mut VmState,
    headers: &[(K, V)],
    now_ms: &mut dyn FnMut() -> u64,
    installed: Option<&'a Installed>,
) -> Decision<'a> {
    decide_with(config, vm, headers, now_ms, installed, &mut NoHost)
}

/// Like [`decide`], with a host that may check RSA/ECDSA signatures.
pub fn decide_with<'a, K: AsRef<[u8]>, V: AsRef<[u8]>>(
    config: &'a Config,
    vm: &mut VmState,
    headers: &[(K, V)],
    now_ms: &mut dyn FnMut() -> u64,
    installed: Option<&'a Installed>,
    host: &mut dyn SignatureHost,
) -> Decision<'a> {
    let mut clock = Clock {
        read: now_ms,
        now_ms: None,
    };
    // 1. Client copies of our headers never reach a cell, nor pick a
    // region route (`x-cell-forwarded-by` stays: it only restricts).
    let mut remove = Vec::new();
    for name in [
        config.cell_header.as_str(),
        config.version_header.as_str(),
        POOL_HEADER,
        REGION_HEADER,
    ] {
        if header(headers, name).is_some() {
            remove.push(name);
        }
    }

    // The readiness probe: answered here, whatever the token.
    if let Some(path) = &config.readiness_path
        && header(headers, ":path").is_some_and(|p| request_path(p) == path.as_bytes())
    {
        return readiness(config, installed, remove);
    }

    // 2. Who is this?
    let mut cache_hit = None;
    let mut verified_by_host = None;
    // The tenant, and the split key moves and ramps use (the token's
    // `split_claim`; the tenant when there is none).
    let identity = match &config.auth {
        Auth::TrustHeader { header } => {
            token::tenant_from_header(headers, header, config.max_tenant_bytes)
                .map(|tenant| (tenant, None))
        }
        Auth::Jwt(jwt) => token::extract(&jwt.source, headers).and_then(|token| {
            let now = clock.s();
            if vm.cache.enabled() {
                let key = vm.cache.key(&token);
                if let Some((tenant, split_key)) = vm.cache.get(key, now) {
                    cache_hit = Some(true);
                    return Ok((tenant.to_string(), split_key.map(str::to_string)));
                }
                cache_hit = Some(false);
                let verified = token::verify_with(jwt, config.max_tenant_bytes, &token, now, host)?;
                verified_by_host = Some(verified.by_host);
                vm.cache.insert(key, &verified, now);
                Ok((verified.tenant, verified.split_key))
            } else {
                let verified = token::verify_with(jwt, config.max_tenant_bytes, &token, now, host)?;
                verified_by_host = Some(verified.by_host);
                Ok((verified.tenant, verified.split_key))
            }
        }),
    };
    let (tenant, split_key) = match identity {
        Ok(identity) => identity,
        Err(rejection) => {
            return Decision {
                remove,
                action: Action::Respond(rejection_reply(&config.realm, &rejection)),
                outcome: Outcome::Rejected(rejection.reason),
                cache_hit,
                verified_by_host,
                tenant: None,
                pool: None,
                region: None,
            };
        }
    };

    // 3. Where does it go?
    let Some(installed) = installed else {
        let mut reply = json_reply(
            503,
            "no_snapshot",
            "no_snapshot",
            "the routing table is not loaded yet; retry shortly",
        );
        reply.headers.push(("retry-after", "1".to_string()));
        return Decision {
            remove,
            action: Action::Respond(reply),
            outcome: Outcome::NoSnapshot,
            cache_hit,
            verified_by_host,
            tenant: Some(tenant),
            pool: None,
            region: None,
        };
    };
    let snapshot = installed.snapshot();
    // Answered before a pool is known (the tenant is added by the caller).
    let refuse = |reply: LocalReply, outcome: Outcome<'a>| Decision {
        remove: remove.clone(),
        action: Action::Respond(reply),
        outcome,
        cache_hit,
        verified_by_host,
        tenant: None,
        pool: None,
        region: None,
    };
    // The gateway-region rule (mapping/SPEC.md, "Region homing"); a host
    // refuses a snapshot that breaks it before putting it in force.
    let Ok(local_region) = snapshot.local_region(config.region.as_deref()) else {
        let mut decision = refuse(
            json_reply(
                503,
                "region_mismatch",
                "internal",
                "the routing table does not list this gateway's region",
            ),
            Outcome::RegionMismatch,
        );
        decision.tenant = Some(tenant);
        return decision;
    };
    // The pool, from the request as Envoy normalised it (the HCM settings in
    // envoy/README.md, "Paths").
    let authority = header(headers, ":authority").unwrap_or_default();
    let path = header(headers, ":path").unwrap_or_default();
    let Some(pool) = snapshot.pool_for(authority, path) else {
        let mut decision = refuse(
            json_reply(
                404,
                "no_pool",
                "no_pool",
                "no service pool takes this host and path",
            ),
            Outcome::NoPool,
        );
        decision.tenant = Some(tenant);
        return decision;
    };
    // Format 1 has one implicit pool and region: nothing to tell the cell,
    // and it is routed (and logged) exactly as before pools existed.
    let pools = snapshot.format() >= 2;
    let pool_id = snapshot
        .pools()
        .get(usize::from(pool))
        .filter(|_| pools)
        .map(|p| p.id.as_str());
    let forwarded = header(headers, FORWARDED_BY_HEADER).is_some();
    // Nothing the client sends per request (x-request-id included) enters
    // the draws: moves and ramps split by the verified split key, and the
    // shed draw comes from the VM's own generator.
    let draws = Draws::new(
        split_key.as_deref().unwrap_or(&tenant).as_bytes(),
        vm.shed.draw(),
        clock.ms(),
    );
    let resolution = snapshot.resolve_in(tenant.as_bytes(), pool, local_region, forwarded, &draws);
    let cell_id = |index: u16| snapshot.cell(index).map_or("", |c| c.id.as_str());
    let region_id = |index: u16| {
        snapshot
            .regions()
            .get(usize::from(index))
            .map_or("", |r| r.id.as_str())
    };

    let (action, outcome) = match resolution.outcome {
        Resolved::Route { cell } => {
            let id = cell_id(cell);
            let mut set = vec![
                (config.cell_header.as_str(), id.as_bytes()),
                (
                    config.version_header.as_str(),
                    installed.version_value.as_bytes(),
                ),
            ];
            if let Some(pool) = pool_id {
                set.push((POOL_HEADER, pool.as_bytes()));
            }
            (
                Action::Continue { set },
                Outcome::Routed {
                    cell: id,
                    reason: resolution.reason(),
                },
            )
        }
        Resolved::Shed {
            cell,
            retry_after_s,
        } => {
            let mut reply = json_reply(
                503,
                "shed",
                "cell_draining",
                &format!("the tenant's cell is draining; retry after {retry_after_s} seconds"),
            );
            reply
                .headers
                .push(("retry-after", retry_after_s.to_string()));
            (
                Action::Respond(reply),
                Outcome::Shed {
                    cell: cell_id(cell),
                },
            )
        }
        Resolved::Unavailable { cell } => {
            // Disabled cells come back: clients back off and retry, and
            // never reach another region's cell meanwhile.
            let retry_after_s = snapshot
                .cell(cell)
                .map_or(cell_router_mapping::snapshot::DEFAULT_RETRY_AFTER_S, |c| {
                    c.retry_after_s
                });
            let mut reply = json_reply(
                503,
                "unavailable",
                "cell_unavailable",
                "the tenant's cell is disabled and has no failover",
            );
            reply
                .headers
                .push(("retry-after", retry_after_s.to_string()));
            (
                Action::Respond(reply),
                Outcome::Unavailable {
                    cell: cell_id(cell),
                },
            )
        }
        Resolved::Forward { region } => {
            let home = region_id(region);
            let here = local_region.map_or("", region_id);
            (
                Action::Continue {
                    set: vec![
                        (REGION_HEADER, home.as_bytes()),
                        (FORWARDED_BY_HEADER, here.as_bytes()),
                    ],
                },
                Outcome::Forwarded { region: home },
            )
        }
        Resolved::WrongRegion { region } => {
            let home = region_id(region);
            let mut reply = json_reply(
                503,
                "wrong_region",
                "wrong_region",
                &format!(
                    "the tenant is homed in region {home}; this request was already forwarded once"
                ),
            );
            reply.headers.push(("retry-after", "1".to_string()));
            (
                Action::Respond(reply),
                Outcome::WrongRegion { region: home },
            )
        }
    };
    Decision {
        remove,
        action,
        outcome,
        cache_hit,
        verified_by_host,
        tenant: Some(tenant),
        pool: pool_id,
        region: pools.then(|| region_id(resolution.home_region)),
    }
}

/// The path of a `:path` value, without its query.
fn request_path(value: &[u8]) -> &[u8] {
    match value.iter().position(|b| *b == b'?') {
        Some(at) => value.get(..at).unwrap_or(value),
        None => value,
    }
}

/// Whether this VM routes by what the sidecar serves: it holds a snapshot
/// from the sidecar or its persisted copy. Only the fallback (a static
/// table, stale by construction) is not ready when a sidecar is configured;
/// without a sidecar the fallback is the configured mapping.
pub fn is_ready(config: &Config, installed: Option<&Installed>) -> bool {
    match installed.map(Installed::source) {
        Some(SnapshotSource::Sidecar | SnapshotSource::Persisted) => true,
        Some(SnapshotSource::Fallback) => config.sidecar.is_none(),
        None => false,
    }
}

fn readiness<'a>(
    config: &Config,
    installed: Option<&Installed>,
    remove: Vec<&'a str>,
) -> Decision<'a> {
    let ready = is_ready(config, installed);
    let body = serde_json::json!({
        "ready": ready,
        "version": installed.map(Installed::version),
        "source": installed.map(|i| i.source().as_str()),
    });
    let (status, details) = if ready {
        (200, "cell_router_ready")
    } else {
        (503, "cell_router_not_ready")
    };
    Decision {
        remove,
        action: Action::Respond(LocalReply {
            status,
            details: details.to_string(),
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body: body.to_string().into_bytes(),
        }),
        outcome: Outcome::Readiness { ready },
        cache_hit: None,
        verified_by_host: None,
        tenant: None,
        pool: None,
        region: None,
    }
}

impl<'a> Decision<'a> {
    /// The local reply, if the request is answered by the filter.
    pub fn reply(&self) -> Option<&LocalReply> {
        match &self.action {
            Action::Respond(reply) => Some(reply),
            Action::Continue { .. } => None,
        }
    }

    /// A header the decision sets on the forwarded request.
    pub fn set_header(&self, name: &str) -> Option<&'a [u8]> {
        match &self.action {
            Action::Continue { set } => set.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            Action::Respond(_) => None,
        }
    }

    /// The cell the request is routed to.
    pub fn routed_cell(&self) -> Option<&'a str> {
        match self.outcome {
            Outcome::Routed { cell, .. } => Some(cell),
            _ => None,
        }
    }
}

/// Filter-state keys the decision is written under. Envoy stores a property
/// set at path `cell_router.cell` as filter state `wasm.cell_router.cell`,
/// which an access log prints with `%FILTER_STATE(wasm.cell_router.cell:PLAIN)%`.
pub mod state_key {
    pub const CELL: &str = "cell_router.cell";
    pub const REASON: &str = "cell_router.reason";
    pub const SNAPSHOT: &str = "cell_router.snapshot";
    pub const TENANT: &str = "cell_router.tenant";
    pub const POOL: &str = "cell_router.pool";
    pub const REGION: &str = "cell_router.region";
}

/// What the filter writes into filter state for a decision, as (key, value):
/// the cell that decided (routed to, shed by or unavailable), the reason
/// (`slot`, `override`, `pin`, `split`, `failover`, `ramp`, `shed`, `unavailable`,
/// `forward`, `wrong_region`, `no_pool`, `region_mismatch`, `no_snapshot`,
/// or the rejection's metric name), the snapshot version consulted, the pool
/// and the tenant's home region (format 2) once known, and the tenant only
/// with `log_tenant`. Nothing for the readiness answer.
pub fn filter_state<'d>(
    decision: &'d Decision<'_>,
    installed: Option<&'d Installed>,
    log_tenant: bool,
) -> Vec<(&'static str, &'d str)> {
    let (cell, reason, consulted) = match decision.outcome {
        Outcome::Routed { cell, reason } => (Some(cell), reason, true),
        Outcome::Shed { cell } => (Some(cell), "shed", true),
        Outcome::Unavailable { cell } => (Some(cell), "unavailable", true),
        Outcome::Forwarded { .. } => (None, "forward", true),
        Outcome::WrongRegion { .. } => (None, "wrong_region", true),
        Outcome::NoPool => (None, "no_pool", true),
        Outcome::RegionMismatch => (None, "region_mismatch", true),
        Outcome::NoSnapshot => (None, "no_snapshot", false),
        Outcome::Rejected(reason) => (None, reason.metric_name(), false),
        Outcome::Readiness { .. } => return Vec::new(),
    };
    let mut state = Vec::with_capacity(6);
    if let Some(cell) = cell {
        state.push((state_key::CELL, cell));
    }
    state.push((state_key::REASON, reason));
    if consulted && let Some(installed) = installed {
        state.push((state_key::SNAPSHOT, installed.version_value()));
    }
    if let Some(pool) = decision.pool {
        state.push((state_key::POOL, pool));
    }
    if let Some(region) = decision.region {
        state.push((state_key::REGION, region));
    }
    if log_tenant && let Some(tenant) = &decision.tenant {
        state.push((state_key::TENANT, tenant.as_str()));
    }
    state
}
