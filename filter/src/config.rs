//! Plugin configuration: parsed strictly (unknown fields, duplicate keys and
//! arrays for objects refused, see `json.rs`), then validated into the form
//! the filter runs with. Every error names the field,
//! so `on_configure` can refuse the config with a message an operator can act
//! on. `README.md` documents the fields; `config.schema.json` mirrors them.

pub use crate::error::ConfigError;
use crate::json::{self, ObjectOnly};
use crate::jwks::{Algorithm, KeySet};
use crate::key_subscription::{self as keysub, RemoteKeysConfig};
use crate::subscription::{PersistedConfig, SidecarConfig};
use cell_router_mapping::Snapshot;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

pub const DEFAULT_TOKEN_HEADER: &str = "authorization";
pub const DEFAULT_TOKEN_PREFIX: &str = "Bearer ";
pub const DEFAULT_CELL_HEADER: &str = "x-cell-id";
pub const DEFAULT_VERSION_HEADER: &str = "x-cell-snapshot";
/// The pool the request was routed in (set with the cell header).
pub const POOL_HEADER: &str = "x-cell-pool";
/// The region a request is forwarded to; Envoy routes on it to cluster
/// `region|<id>` (envoy/README.md, "Regions"). Fixed: the routes name it.
pub const REGION_HEADER: &str = "x-cell-region";
/// The region of the gateway that forwarded a request. A gateway never
/// forwards a request that carries it, so a request crosses at most one region.
pub const FORWARDED_BY_HEADER: &str = "x-cell-forwarded-by";
/// The most bytes of a region id (as a cell id, mapping/SPEC.md).
pub const MAX_REGION_ID_BYTES: usize = 128;
pub const DEFAULT_REALM: &str = "cell-router";
pub const DEFAULT_CLOCK_SKEW_S: u64 = 60;
pub const MAX_CLOCK_SKEW_S: u64 = 600;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
pub const MIN_MAX_TOKEN_BYTES: usize = 256;
pub const MAX_MAX_TOKEN_BYTES: usize = 65536;
pub const DEFAULT_MAX_TENANT_BYTES: usize = 256;
pub const MAX_MAX_TENANT_BYTES: usize = 4096;
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 4096;
pub const MAX_TOKEN_CACHE_ENTRIES: usize = 1_000_000;
pub const MAX_CLAIM_PATH_SEGMENTS: usize = 8;
/// `split_claim` default: gradual moves and ramps split by the token's
/// subject (mapping/SPEC.md, "Routing function").
pub const DEFAULT_SPLIT_CLAIM: &str = "sub";
/// `sidecar.max_snapshot_bytes` default: 64 MiB (a 1,000,000-override
/// snapshot is about 28 MB). The sidecar has its own limit,
/// `cellmap serve --max-snapshot-mib` (512 by default).
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 64 << 20;
pub const MIN_MAX_SNAPSHOT_BYTES: usize = 1024;
/// `sidecar.chunk_bytes` default: a Wasm VM copies each answer's body in
/// one callback (its worker serving nothing meanwhile); 1 MiB takes about a
/// millisecond.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// The smallest `sidecar.chunk_bytes` (other than 0, whole snapshots).
pub const MIN_CHUNK_BYTES: usize = 64 << 10;
pub const DEFAULT_PERSISTED_AUTHORITY: &str = "cellmap-persisted";
pub const DEFAULT_PERSISTED_PATH: &str = "/snapshot";
pub const DEFAULT_PERSISTED_TIMEOUT_MS: u64 = 5000;
/// `readiness_path` default; `null` turns the readiness answer off.
pub const DEFAULT_READINESS_PATH: &str = "/cell-router/ready";
/// Wasm32 memory is 4 GiB at most, and a snapshot being parsed is held about
/// four times over (body, parse, the old snapshot).
pub const MAX_MAX_SNAPSHOT_BYTES: usize = 1 << 30;
const MAX_NAME_BYTES: usize = 256;

/// Registered claims that cannot carry a tenant (not strings, or not ours).
const NON_TENANT_CLAIMS: [&str; 4] = ["aud", "exp", "nbf", "iat"];
/// Registered string claims usable as the tenant (leaf only).
pub const STRING_REGISTERED_CLAIMS: [&str; 4] = ["sub", "iss", "jti", "nonce"];

// ---------------------------------------------------------------------------
// The JSON form.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    token: Option<ObjectOnly<RawTokenSource>>,
    jwks: Option<Value>,
    jwks_remote: Option<ObjectOnly<RawRemoteKeys>>,
    providers: Option<Vec<ObjectOnly<RawProvider>>>,
    algorithms: Option<Vec<String>>,
    issuers: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    require_exp: Option<bool>,
    clock_skew_s: Option<u64>,
    max_token_bytes: Option<usize>,
    tenant_claim: Option<RawClaimPath>,
    /// Absent: `sub`; `null`: the tenant.
    #[serde(default, deserialize_with = "present")]
    split_claim: Option<Option<RawClaimPath>>,
    token_cache_entries: Option<usize>,
    host_signatures: Option<bool>,
    trust_header: Option<String>,
    max_tenant_bytes: Option<usize>,
    cell_header: Option<String>,
    version_header: Option<String>,
    realm: Option<String>,
    sidecar: Option<ObjectOnly<RawSidecar>>,
    fallback_snapshot: Option<Value>,
    /// Absent: the default; `null`: off.
    #[serde(default, deserialize_with = "present")]
    readiness_path: Option<Option<String>>,
    log_tenant: Option<bool>,
    filter_state: Option<bool>,
    region: Option<String>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokenSource {
    header: Option<String>,
    prefix: Option<String>,
    query_param: Option<String>,
    cookie: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawClaimPath {
    Dotted(String),
    Segments(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    cluster: String,
    authority: Option<String>,
    path: Option<String>,
    long_poll_s: Option<u64>,
    timeout_ms: Option<u64>,
    retry_min_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    tick_ms: Option<u64>,
    min_fetch_interval_ms: Option<u64>,
    max_snapshot_bytes: Option<usize>,
    binary: Option<bool>,
    chunk_bytes: Option<usize>,
    persisted: Option<ObjectOnly<RawPersisted>>,
}

/// One identity provider (as a `jwt_authn` provider): its issuer, keys,
/// algorithms and audiences.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: String,
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    jwks: Option<Value>,
    jwks_remote: Option<ObjectOnly<RawRemoteKeys>>,
}

/// Most entries in `providers`.
pub const MAX_PROVIDERS: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteKeys {
    cluster: String,
    authority: Option<String>,
    path: Option<String>,
    refresh_s: Option<u64>,
    timeout_ms: Option<u64>,
    unknown_kid_refetch_s: Option<u64>,
    grace_s: Option<u64>,
    max_jwks_bytes: Option<usize>,
    retry_min_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersisted {
    cluster: String,
    authority: Option<String>,
    path: Option<String>,
    timeout_ms: Option<u64>,
}

// ---------------------------------------------------------------------------
// The validated form.

/// Where the token is looked for, in this order: header, query, cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSource {
    /// Lowercase header name.
    pub header: String,
    /// Scheme prefix, matched case-insensitively (`Bearer `); may be empty.
    pub prefix: String,
    pub query_param: Option<String>,
    pub cookie: Option<String>,
}

/// Path of the tenant claim inside the token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath {
    pub segments: Vec<String>,
}

impl ClaimPath {
    pub fn display(&self) -> String {
        self.segments.join(".")
    }
}

/// Token verification settings (JWT mode).
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub source: TokenSource,
    /// The keys in force: the inline `jwks`, plus (at run time) the
    /// fetched ones; the root context swaps in a config with new keys.
    pub keys: KeySet,
    /// The inline `jwks` alone (empty without one).
    pub inline_keys: KeySet,
    /// Keys fetched at run time (`jwks_remote`).
    pub remote: Option<RemoteKeysConfig>,
    pub algorithms: Vec<Algorithm>,
    pub issuers: Option<HashSet<String>>,
    pub audiences: Option<HashSet<String>>,
    pub require_exp: bool,
    pub clock_skew_s: u64,
    pub max_token_bytes: usize,
    pub tenant_claim: ClaimPath,
    /// The claim gradual moves and ramps split by (a stable key the client
    /// cannot choose freely); `None`, or a token without it: the tenant.
    pub split_claim: Option<ClaimPath>,
    pub token_cache_entries: usize,
    /// Let Envoy's `verify_signature` (BoringSSL) check RS256/384/512 and
    /// ES256/384 signatures when the host offers it.
    pub host_signatures: bool,
    /// With `providers`: one settings per identity provider (its issuer
    /// alone in `issuers`), chosen by the token's `iss`; the fields above
    /// then hold no keys. Empty otherwise.
    pub providers: Vec<JwtSettings>,
}

/// How the tenant is found.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Verify a JWT and read the tenant claim.
    Jwt(Box<JwtSettings>),
    /// Read the tenant from a header Envoy's `jwt_authn` set
    /// (`claim_to_headers`); no token work here.
    TrustHeader { header: String },
}

/// A validated plugin configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub auth: Auth,
    pub max_tenant_bytes: usize,
    pub cell_header: String,
    pub version_header: String,
    pub realm: String,
    pub sidecar: Option<SidecarConfig>,
    pub fallback_snapshot: Option<Snapshot>,
    /// Requests for this path (query ignored) get the readiness answer,
    /// whatever their token; `None`: off.
    pub readiness_path: Option<String>,
    /// Whether the tenant is written into filter state
    /// (`wasm.cell_router.tenant`) for access logs; off by default, since
    /// a tenant id may be personal data.
    pub log_tenant: bool,
    /// Whether each decision is written into filter state for access logs
    /// (`wasm.cell_router.cell`, `.reason`, …); on by default. Off saves
    /// Envoy about 1 µs per value per request when no log reads them.
    pub filter_state: bool,
    /// The region this gateway is in: requests for tenants homed elsewhere
    /// are forwarded to their home region's gateway. Needed by format-2
    /// snapshots with more than one region; ignored by format-1 ones.
    pub region: Option<String>,
}

impl Config {
    /// Parses and validates the plugin configuration JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "(config)",
                "is empty; the filter needs at least `sidecar` or `fallback_snapshot` and a token setup",
            ));
        }
        // Duplicate keys are refused at any depth (jwks and fallback_snapshot
        // included) before anything is read.
        let value = json::parse(bytes).map_err(|e| ConfigError::new(field(&e.path), e.message))?;
        let ObjectOnly(raw): ObjectOnly<RawConfig> = serde_path_to_error::deserialize(value)
            .map_err(|err| {
                let path = err.path().to_string();
                ConfigError::new(field(&path), err.into_inner().to_string())
            })?;
        raw.validate()
    }

    pub fn jwt(&self) -> Option<&JwtSettings> {
        match &self.auth {
            Auth::Jwt(settings) => Some(settings),
            Auth::TrustHeader { .. } => None,
        }
    }
}

/// A serde_path_to_error path as a config field name.
fn field(path: &str) -> String {
    if path == "." {
        "(config)".to_string()
    } else {
        path.to_string()
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header name as Envoy presents it: a lowercase RFC 9110 token.
fn header_name(field: &str, value: &str) -> Result<String, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(field, "must be a non-empty header name"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(ConfigError::new(
            field,
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if let Some(bad) = value.bytes().find(|b| !is_token_char(*b)) {
        return Err(ConfigError::new(
            field,
            format!(
                "{value:?} is not a valid header name (byte {:?})",
                bad as char
            ),
        ));
    }
    if value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ConfigError::new(
            field,
            format!(
                "{value:?} must be lowercase (Envoy lowercases header names); use {:?}",
                value.to_ascii_lowercase()
            ),
        ));
    }
    Ok(value.to_string())
}

/// Headers the router sets itself (besides the configurable cell and
/// version headers): no configured header may share their names.
pub const RESERVED_HEADERS: [&str; 3] = [POOL_HEADER, REGION_HEADER, FORWARDED_BY_HEADER];

/// The gateway's region id: the alphabet and length of a cell id, since it
/// is sent as a header value and names the cluster `region|<id>`.
fn region_id(id: &str) -> Result<String, ConfigError> {
    if id.is_empty() || id.len() > MAX_REGION_ID_BYTES {
        return Err(ConfigError::new(
            "region",
            format!("must be 1–{MAX_REGION_ID_BYTES} bytes"),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(ConfigError::new(
            "region",
            format!("{id:?} has {bad:?}; only ASCII letters, digits and - _ . : are allowed"),
        ));
    }
    Ok(id.to_string())
}

/// A query parameter or cookie name.
fn plain_name(field: &str, value: &str) -> Result<String, ConfigError> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES {
        return Err(ConfigError::new(
            field,
            format!("must be a non-empty name of at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    if let Some(bad) = value.bytes().find(|b| !is_token_char(*b) || *b == b'&') {
        return Err(ConfigError::new(
            field,
            format!(
                "{value:?} has {:?}; use letters, digits and - _ .",
                bad as char
            ),
        ));
    }
    Ok(value.to_string())
}

fn string_set(
    field: &str,
    values: Option<Vec<String>>,
) -> Result<Option<HashSet<String>>, ConfigError> {
    let Some(values) = values else {
        return Ok(None);
    };
    if values.is_empty() {
        return Err(ConfigError::new(
            field,
            "must list at least one value (leave the field out to accept any)",
        ));
    }
    let mut set = HashSet::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        if value.is_empty() {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                "must be a non-empty string",
            ));
        }
        if !set.insert(value) {
            return Err(ConfigError::new(format!("{field}[{i}]"), "duplicate value"));
        }
    }
    Ok(Some(set))
}

fn in_range<T: PartialOrd + fmt::Display + Copy>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(value)
}

fn claim_path(raw: RawClaimPath) -> Result<ClaimPath, ConfigError> {
    claim_path_of("tenant_claim", raw)
}

/// A claim path for `field` (`tenant_claim`, `split_claim`).
fn claim_path_of(field: &str, raw: RawClaimPath) -> Result<ClaimPath, ConfigError> {
    let segments: Vec<String> = match raw {
        RawClaimPath::Dotted(path) => path.split('.').map(str::to_string).collect(),
        RawClaimPath::Segments(segments) => segments,
    };
    if segments.is_empty() {
        return Err(ConfigError::new(field, "must name a claim"));
    }
    if segments.len() > MAX_CLAIM_PATH_SEGMENTS {
        return Err(ConfigError::new(
            field,
            format!("at most {MAX_CLAIM_PATH_SEGMENTS} levels deep"),
        ));
    }
    if segments.iter().any(String::is_empty) {
        return Err(ConfigError::new(
            field,
            "has an empty segment (a dotted path like \"org.id\"; for claim names with dots use an array: [\"https://example.com/tenant\"])",
        ));
    }
    if let Some(first) = segments.first() {
        if NON_TENANT_CLAIMS.contains(&first.as_str()) {
            return Err(ConfigError::new(
                field,
                format!(
                    "{first:?} is a registered claim that cannot hold {}",
                    if field == "split_claim" {
                        "a user id"
                    } else {
                        "a tenant"
                    }
                ),
            ));
        }
        if STRING_REGISTERED_CLAIMS.contains(&first.as_str()) && segments.len() > 1 {
            return Err(ConfigError::new(
                field,
                format!("{first:?} is a string claim; it has no nested fields"),
            ));
        }
    }
    Ok(ClaimPath { segments })
}

const JWT_ONLY_FIELDS: [&str; 14] = [
    "token",
    "jwks",
    "jwks_remote",
    "providers",
    "algorithms",
    "issuers",
    "audiences",
    "require_exp",
    "clock_skew_s",
    "max_token_bytes",
    "tenant_claim",
    "split_claim",
    "token_cache_entries",
    "host_signatures",
];

impl RawConfig {
    fn jwt_fields_present(&self) -> Vec<&'static str> {
        let present = [
            self.token.is_some(),
            self.jwks.is_some(),
            self.jwks_remote.is_some(),
            self.providers.is_some(),
            self.algorithms.is_some(),
            self.issuers.is_some(),
            self.audiences.is_some(),
            self.require_exp.is_some(),
            self.clock_skew_s.is_some(),
            self.max_token_bytes.is_some(),
            self.tenant_claim.is_some(),
            self.split_claim.is_some(),
            self.token_cache_entries.is_some(),
            self.host_signatures.is_some(),
        ];
        JWT_ONLY_FIELDS
            .iter()
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|(f, _)| *f)
            .collect()
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let cell_header = header_name(
            "cell_header",
            self.cell_header.as_deref().unwrap_or(DEFAULT_CELL_HEADER),
        )?;
        let version_header = header_name(
            "version_header",
            self.version_header
                .as_deref()
                .unwrap_or(DEFAULT_VERSION_HEADER),
        )?;
        if cell_header == version_header {
            return Err(ConfigError::new(
                "version_header",
                "must differ from cell_header",
            ));
        }
        for (field, name) in [
            ("cell_header", &cell_header),
            ("version_header", &version_header),
        ] {
            if name.starts_with(':') || name == "host" {
                return Err(ConfigError::new(field, "cannot be a pseudo-header or host"));
            }
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{name:?} is set by the router for pools and regions; pick another name"
                    ),
                ));
            }
        }
        let region = match self.region.as_deref() {
            None => None,
            Some(id) => Some(region_id(id)?),
        };
        let realm = self
            .realm
            .clone()
            .unwrap_or_else(|| DEFAULT_REALM.to_string());
        if realm.is_empty()
            || realm.len() > MAX_NAME_BYTES
            || realm
                .bytes()
                .any(|b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
        {
            return Err(ConfigError::new(
                "realm",
                "must be 1–256 printable ASCII characters without '\"' or '\\'",
            ));
        }
        let max_tenant_bytes = in_range(
            "max_tenant_bytes",
            self.max_tenant_bytes.unwrap_or(DEFAULT_MAX_TENANT_BYTES),
            1,
            MAX_MAX_TENANT_BYTES,
        )?;

        let auth = match &self.trust_header {
            Some(name) => {
                let header = header_name("trust_header", name)?;
                if let Some(field) = self.jwt_fields_present().first() {
                    return Err(ConfigError::new(
                        *field,
                        "is not used with trust_header (the tenant comes from the header); remove it",
                    ));
                }
                if header == cell_header
                    || header == version_header
                    || RESERVED_HEADERS.contains(&header.as_str())
                {
                    return Err(ConfigError::new(
                        "trust_header",
                        "must differ from cell_header, version_header and the router's x-cell-pool, x-cell-region and x-cell-forwarded-by",
                    ));
                }
                Auth::TrustHeader { header }
            }
            None => Auth::Jwt(Box::new(self.jwt_settings(&cell_header, &version_header)?)),
        };

        let sidecar = match self.sidecar {
            Some(ObjectOnly(raw)) => Some(sidecar(raw)?),
            None => None,
        };
        let fallback_snapshot = match self.fallback_snapshot {
            None => None,
            Some(value) => {
                if !value.is_object() {
                    return Err(ConfigError::new(
                        "fallback_snapshot",
                        "must be a snapshot object (see mapping/SPEC.md)",
                    ));
                }
                let bytes = serde_json::to_vec(&value)
                    .map_err(|e| ConfigError::new("fallback_snapshot", e.to_string()))?;
                let snapshot = Snapshot::parse(&bytes).map_err(|e| {
                    let inner = e.path.strip_prefix('$').unwrap_or(&e.path);
                    ConfigError::new(format!("fallback_snapshot{inner}"), e.message)
                })?;
                Some(snapshot)
            }
        };
        let log_tenant = self.log_tenant.unwrap_or(false);
        let filter_state = self.filter_state.unwrap_or(true);
        if log_tenant && !filter_state {
            return Err(ConfigError::new(
                "log_tenant",
                "writes the tenant into filter state, which filter_state: false turns off",
            ));
        }
        let readiness_path = match self.readiness_path {
            None => Some(DEFAULT_READINESS_PATH.to_string()),
            Some(None) => None,
            Some(Some(path)) => Some(request_path("readiness_path", path)?),
        };
        if let Some(snapshot) = &fallback_snapshot {
            snapshot
                .local_region(region.as_deref())
                .map_err(|e| ConfigError::new("fallback_snapshot", e))?;
        }
        if sidecar.is_none() && fallback_snapshot.is_none() {
            return Err(ConfigError::new(
                "sidecar",
                "missing: the filter needs `sidecar`, `fallback_snapshot`, or both, to have a mapping",
            ));
        }
        Ok(Config {
            auth,
            max_tenant_bytes,
            cell_header,
            version_header,
            realm,
            sidecar,
            fallback_snapshot,
            readiness_path,
            log_tenant,
            filter_state,
            region,
        })
    }

    fn jwt_settings(
        &self,
        cell_header: &str,
        version_header: &str,
    ) -> Result<JwtSettings, ConfigError> {
        let raw_source = self.token.as_ref().map(|t| &t.0);
        let header = header_name(
            "token.header",
            raw_source
                .and_then(|t| t.header.as_deref())
                .unwrap_or(DEFAULT_TOKEN_HEADER),
        )?;
        if header == cell_header
            || header == version_header
            || RESERVED_HEADERS.contains(&header.as_str())
        {
            return Err(ConfigError::new(
                "token.header",
                "must differ from cell_header, version_header and the router's x-cell-pool, x-cell-region and x-cell-forwarded-by",
            ));
        }
        let prefix = raw_source
            .and_then(|t| t.prefix.clone())
            .unwrap_or_else(|| DEFAULT_TOKEN_PREFIX.to_string());
        if prefix.len() > 64 || prefix.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(ConfigError::new(
                "token.prefix",
                "must be at most 64 printable ASCII characters",
            ));
        }
        let query_param = match raw_source.and_then(|t| t.query_param.as_deref()) {
            Some(name) => Some(plain_name("token.query_param", name)?),
            None => None,
        };
        let cookie = match raw_source.and_then(|t| t.cookie.as_deref()) {
            Some(name) => Some(plain_name("token.cookie", name)?),
            None => None,
        };

        if let Some(providers) = &self.providers {
            for field in ["jwks", "jwks_remote", "algorithms", "issuers", "audiences"] {
                let present = match field {
                    "jwks" => self.jwks.is_some(),
                    "jwks_remote" => self.jwks_remote.is_some(),
                    "algorithms" => self.algorithms.is_some(),
                    "issuers" => self.issuers.is_some(),
                    _ => self.audiences.is_some(),
                };
                if present {
                    return Err(ConfigError::new(
                        field,
                        "is set per provider with `providers`; move it into each entry of providers[]",
                    ));
                }
            }
            return self.providers_settings(providers, header, prefix, query_param, cookie);
        }
        let algorithms = algorithm_list("algorithms", self.algorithms.as_ref())?;
        let (keys, remote) = key_sources(
            "",
            self.jwks.as_ref(),
            self.jwks_remote.as_ref().map(|r| &r.0),
            &algorithms,
        )?;

        let issuers = string_set("issuers", self.issuers.clone())?;
        let audiences = string_set("audiences", self.audiences.clone())?;
        let clock_skew_s = in_range(
            "clock_skew_s",
            self.clock_skew_s.unwrap_or(DEFAULT_CLOCK_SKEW_S),
            0,
            MAX_CLOCK_SKEW_S,
        )?;
        let max_token_bytes = in_range(
            "max_token_bytes",
            self.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES),
            MIN_MAX_TOKEN_BYTES,
            MAX_MAX_TOKEN_BYTES,
        )?;
        let token_cache_entries = in_range(
            "token_cache_entries",
            self.token_cache_entries
                .unwrap_or(DEFAULT_TOKEN_CACHE_ENTRIES),
            0,
            MAX_TOKEN_CACHE_ENTRIES,
        )?;
        let tenant_claim = match &self.tenant_claim {
            None => {
                return Err(ConfigError::new(
                    "tenant_claim",
                    "missing: the claim that holds the tenant id, e.g. \"tenant_id\" or \"org.id\"",
                ));
            }
            Some(RawClaimPath::Dotted(s)) => claim_path(RawClaimPath::Dotted(s.clone()))?,
            Some(RawClaimPath::Segments(v)) => claim_path(RawClaimPath::Segments(v.clone()))?,
        };
        let split_claim = match &self.split_claim {
            None => Some(ClaimPath {
                segments: vec![DEFAULT_SPLIT_CLAIM.to_string()],
            }),
            Some(None) => None,
            Some(Some(RawClaimPath::Dotted(s))) => Some(claim_path_of(
                "split_claim",
                RawClaimPath::Dotted(s.clone()),
            )?),
            Some(Some(RawClaimPath::Segments(v))) => Some(claim_path_of(
                "split_claim",
                RawClaimPath::Segments(v.clone()),
            )?),
        };

        Ok(JwtSettings {
            source: TokenSource {
                header,
                prefix,
                query_param,
                cookie,
            },
            inline_keys: keys.clone(),
            keys,
            remote,
            algorithms,
            issuers,
            audiences,
            require_exp: self.require_exp.unwrap_or(true),
            clock_skew_s,
            max_token_bytes,
            tenant_claim,
            split_claim,
            token_cache_entries,
            host_signatures: self.host_signatures.unwrap_or(true),
            providers: Vec::new(),
        })
    }

    /// The settings with `providers`: the shared fields once, then one
    /// settings per provider.
    fn providers_settings(
        &self,
        providers: &[ObjectOnly<RawProvider>],
        header: String,
        prefix: String,
        query_param: Option<String>,
        cookie: Option<String>,
    ) -> Result<JwtSettings, ConfigError> {
        if providers.is_empty() || providers.len() > MAX_PROVIDERS {
            return Err(ConfigError::new(
                "providers",
                format!("must list 1 to {MAX_PROVIDERS} identity providers"),
            ));
        }
        // The shared fields, validated once with a stand-in key source.
        let shared = RawConfig {
            token: None,
            jwks: None,
            jwks_remote: Some(ObjectOnly(RawRemoteKeys {
                cluster: "unused".to_string(),
                authority: None,
                path: None,
                refresh_s: None,
                timeout_ms: None,
                unknown_kid_refetch_s: None,
                grace_s: None,
                max_jwks_bytes: None,
                retry_min_ms: None,
            })),
            algorithms: Some(vec!["RS256".to_string()]),
            tenant_claim: match &self.tenant_claim {
                Some(RawClaimPath::Dotted(s)) => Some(RawClaimPath::Dotted(s.clone())),
                Some(RawClaimPath::Segments(v)) => Some(RawClaimPath::Segments(v.clone())),
                None => None,
            },
            split_claim: self.split_claim.clone(),
            require_exp: self.require_exp,
            clock_skew_s: self.clock_skew_s,
            max_token_bytes: self.max_token_bytes,
            token_cache_entries: self.token_cache_entries,
            host_signatures: self.host_signatures,
            ..RawConfig::default()
        };
        let mut base = shared.jwt_settings("", "")?;
        base.source = TokenSource {
            header,
            prefix,
            query_param,
            cookie,
        };
        base.remote = None;
        let mut list = Vec::with_capacity(providers.len());
        let mut issuers = HashSet::new();
        let mut all_algorithms: Vec<Algorithm> = Vec::new();
        for (i, ObjectOnly(raw)) in providers.iter().enumerate() {
            let at = format!("providers[{i}]");
            if raw.issuer.is_empty() || !issuers.insert(raw.issuer.clone()) {
                return Err(ConfigError::new(
                    format!("{at}.issuer"),
                    "must be a non-empty issuer, different in every provider",
                ));
            }
            let algorithms = algorithm_list(&format!("{at}.algorithms"), raw.algorithms.as_ref())?;
            let (keys, remote) = key_sources(
                &format!("{at}."),
                raw.jwks.as_ref(),
                raw.jwks_remote.as_ref().map(|r| &r.0),
                &algorithms,
            )?;
            for alg in &algorithms {
                if !all_algorithms.contains(alg) {
                    all_algorithms.push(*alg);
                }
            }
            let mut provider = base.clone();
            provider.inline_keys = keys.clone();
            provider.keys = keys;
            provider.remote = remote;
            provider.algorithms = algorithms;
            provider.issuers = Some(HashSet::from([raw.issuer.clone()]));
            provider.audiences = string_set(&format!("{at}.audiences"), raw.audiences.clone())?;
            list.push(provider);
        }
        base.algorithms = all_algorithms;
        base.issuers = Some(issuers);
        base.providers = list;
        Ok(base)
    }
}

/// `algorithms` (or a provider's): a non-empty list of known names.
fn algorithm_list(field: &str, names: Option<&Vec<String>>) -> Result<Vec<Algorithm>, ConfigError> {
    let Some(names) = names else {
        return Err(ConfigError::new(
            field,
            "missing: list the JWS algorithms to accept, e.g. [\"RS256\"]",
        ));
    };
    if names.is_empty() {
        return Err(ConfigError::new(field, "must list at least one algorithm"));
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if name.eq_ignore_ascii_case("none") {
            return Err(ConfigError::new(
                field,
                "\"none\" (unsigned tokens) is never allowed",
            ));
        }
        let Some(alg) = Algorithm::from_name(name) else {
            return Err(ConfigError::new(
                field,
                format!(
                    "unknown algorithm {name:?}; one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
                ),
            ));
        };
        if algorithms.contains(&alg) {
            return Err(ConfigError::new(field, format!("duplicate {alg}")));
        }
        algorithms.push(alg);
    }
    Ok(algorithms)
}

/// The inline keys and the remote source; at least one of them. `at` is the
/// field prefix (`""` or `"providers[i]."`).
fn key_sources(
    at: &str,
    jwks: Option<&Value>,
    remote: Option<&RawRemoteKeys>,
    algorithms: &[Algorithm],
) -> Result<(KeySet, Option<RemoteKeysConfig>), ConfigError> {
    let remote = match remote {
        Some(raw) => Some(
            remote_keys(raw)
                .map_err(|e| ConfigError::new(format!("{at}{}", e.field), e.message))?,
        ),
        None => None,
    };
    let keys = match (jwks, &remote) {
        (Some(jwks), _) => KeySet::from_jwks(jwks, algorithms, &format!("{at}jwks"))?,
        (None, Some(_)) => KeySet::default(),
        (None, None) => {
            return Err(ConfigError::new(
                format!("{at}jwks"),
                "missing: an inline JWKS document ({\"keys\": [...]}) with the verification keys, or `jwks_remote` to fetch them",
            ));
        }
    };
    Ok((keys, remote))
}

fn cluster_name(field: &str, cluster: String) -> Result<String, ConfigError> {
    if cluster.is_empty() || cluster.len() > MAX_NAME_BYTES {
        return Err(ConfigError::new(
            field,
            "must be the non-empty name of an Envoy cluster",
        ));
    }
    Ok(cluster)
}

fn authority(field: &str, authority: String) -> Result<String, ConfigError> {
    if authority.is_empty()
        || authority.len() > MAX_NAME_BYTES
        || authority
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)))
    {
        return Err(ConfigError::new(
            field,
            "must be a host name (optionally with :port)",
        ));
    }
    Ok(authority)
}

/// A request path: `/`, then printable ASCII without query or fragment.
fn request_path(field: &str, path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/')
        || path.len() > MAX_NAME_BYTES
        || path
            .bytes()
            .any(|b| !(0x21..0x7f).contains(&b) || b == b'?' || b == b'#')
    {
        return Err(ConfigError::new(
            field,
            "must start with '/' and hold no query, fragment, spaces or control characters",
        ));
    }
    Ok(path)
}

fn remote_keys(raw: &RawRemoteKeys) -> Result<RemoteKeysConfig, ConfigError> {
    let refresh_s = in_range(
        "jwks_remote.refresh_s",
        raw.refresh_s.unwrap_or(keysub::DEFAULT_REFRESH_S),
        1,
        86_400,
    )?;
    Ok(RemoteKeysConfig {
        cluster: cluster_name("jwks_remote.cluster", raw.cluster.clone())?,
        authority: authority(
            "jwks_remote.authority",
            raw.authority
                .clone()
                .unwrap_or_else(|| "cellmap".to_string()),
        )?,
        path: request_target(
            "jwks_remote.path",
            raw.path.clone().unwrap_or_else(|| "/jwks".to_string()),
        )?,
        refresh_s,
        timeout_ms: in_range(
            "jwks_remote.timeout_ms",
            raw.timeout_ms.unwrap_or(keysub::DEFAULT_TIMEOUT_MS),
            100,
            600_000,
        )?,
        unknown_kid_refetch_s: in_range(
            "jwks_remote.unknown_kid_refetch_s",
            raw.unknown_kid_refetch_s
                .unwrap_or(keysub::DEFAULT_UNKNOWN_KID_REFETCH_S),
            1,
            3_600,
        )?,
        grace_s: in_range(
            "jwks_remote.grace_s",
            raw.grace_s.unwrap_or(keysub::DEFAULT_GRACE_S),
            0,
            604_800,
        )?,
        max_jwks_bytes: in_range(
            "jwks_remote.max_jwks_bytes",
            raw.max_jwks_bytes.unwrap_or(keysub::DEFAULT_MAX_JWKS_BYTES),
            1024,
            16 << 20,
        )?,
        retry_min_ms: in_range(
            "jwks_remote.retry_min_ms",
            raw.retry_min_ms.unwrap_or(keysub::DEFAULT_RETRY_MIN_MS),
            10,
            600_000,
        )?,
    })
}

/// A request path with an optional query: `/`, then printable ASCII
/// without spaces or fragment.
fn request_target(field: &str, path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/')
        || path.len() > MAX_NAME_BYTES
        || path
            .bytes()
            .any(|b| !(0x21..0x7f).contains(&b) || b == b'#')
    {
        return Err(ConfigError::new(
            field,
            "must start with '/' and hold no fragment, spaces or control characters",
        ));
    }
    Ok(path)
}

fn persisted(raw: RawPersisted) -> Result<PersistedConfig, ConfigError> {
    Ok(PersistedConfig {
        cluster: cluster_name("sidecar.persisted.cluster", raw.cluster)?,
        authority: authority(
            "sidecar.persisted.authority",
            raw.authority
                .unwrap_or_else(|| DEFAULT_PERSISTED_AUTHORITY.to_string()),
        )?,
        path: request_path(
            "sidecar.persisted.path",
            raw.path
                .unwrap_or_else(|| DEFAULT_PERSISTED_PATH.to_string()),
        )?,
        timeout_ms: in_range(
            "sidecar.persisted.timeout_ms",
            raw.timeout_ms.unwrap_or(DEFAULT_PERSISTED_TIMEOUT_MS),
            100,
            600_000,
        )?,
    })
}

fn sidecar(raw: RawSidecar) -> Result<SidecarConfig, ConfigError> {
    let cluster = cluster_name("sidecar.cluster", raw.cluster)?;
    let authority = authority(
        "sidecar.authority",
        raw.authority.unwrap_or_else(|| "cellmap".to_string()),
    )?;
    let path = request_path(
        "sidecar.path",
        raw.path.unwrap_or_else(|| "/snapshot".to_string()),
    )?;
    let long_poll_s = in_range("sidecar.long_poll_s", raw.long_poll_s.unwrap_or(30), 0, 300)?;
    let timeout_ms = raw.timeout_ms.unwrap_or(long_poll_s * 1000 + 5000);
    if timeout_ms <= long_poll_s * 1000 {
        return Err(ConfigError::new(
            "sidecar.timeout_ms",
            format!(
                "must be greater than long_poll_s × 1000 = {} (the sidecar may hold a request that long)",
                long_poll_s * 1000
            ),
        ));
    }
    let timeout_ms = in_range("sidecar.timeout_ms", timeout_ms, 100, 600_000)?;
    let retry_min_ms = in_range(
        "sidecar.retry_min_ms",
        raw.retry_min_ms.unwrap_or(200),
        10,
        60_000,
    )?;
    let retry_max_ms = in_range(
        "sidecar.retry_max_ms",
        raw.retry_max_ms.unwrap_or(5000),
        retry_min_ms,
        600_000,
    )?;
    let tick_ms = in_range("sidecar.tick_ms", raw.tick_ms.unwrap_or(100), 10, 10_000)?;
    let min_fetch_interval_ms = in_range(
        "sidecar.min_fetch_interval_ms",
        raw.min_fetch_interval_ms.unwrap_or(100),
        0,
        600_000,
    )?;
    let max_snapshot_bytes = in_range(
        "sidecar.max_snapshot_bytes",
        raw.max_snapshot_bytes.unwrap_or(DEFAULT_MAX_SNAPSHOT_BYTES),
        MIN_MAX_SNAPSHOT_BYTES,
        MAX_MAX_SNAPSHOT_BYTES,
    )?;
    let chunk_bytes = match raw.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES) {
        0 => 0,
        chunk => in_range(
            "sidecar.chunk_bytes",
            chunk,
            MIN_CHUNK_BYTES,
            MAX_MAX_SNAPSHOT_BYTES,
        )?,
    };
    let persisted = match raw.persisted {
        Some(ObjectOnly(raw)) => Some(persisted(raw)?),
        None => None,
    };
    Ok(SidecarConfig {
        cluster,
        authority,
        path,
        long_poll_s,
        timeout_ms,
        retry_min_ms,
        retry_max_ms,
        tick_ms,
        min_fetch_interval_ms,
        max_snapshot_bytes,
        binary: raw.binary.unwrap_or(true),
        chunk_bytes,
        persisted,
    })
}
