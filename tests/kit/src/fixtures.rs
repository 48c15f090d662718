//! Building blocks for cell-router scenarios: snapshots, plugin
//! configurations and tokens that agree with each other (same issuer,
//! audience, tenant claim, keys, sidecar cluster).
//!
//! ```
//! use cell_router_kit::fixtures::{Config, snapshot, token, unix_now};
//! use cell_router_kit::tokens::Alg;
//! let config = Config::jwt(&[Alg::RS256]).fallback(&snapshot(1)).json();
//! let bearer = token(Alg::RS256, unix_now(), "acme");
//! assert!(config.contains("fallback_snapshot") && bearer.split('.').count() == 3);
//! ```
//!
//! The wasmtime host (`cell-router-wasm-host`) and the Envoy harness take
//! these as they are: `host.configure(config)`, then requests with `bearer`.

use crate::tokens::{Alg, Jwks, TokenBuilder};
use cell_router_mapping::snapshot::encode_slot_table;
use cell_router_mapping::{CellDoc, CellState, HashDoc, MoveDoc, SnapshotDoc};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "cell-router";
/// The claim holding the tenant in test tokens.
pub const TENANT_CLAIM: &str = "tenant_id";
/// The Envoy cluster of the sidecar in test configurations.
pub const SIDECAR_CLUSTER: &str = "cellmap";
pub const HASH_KEY: &str = "000102030405060708090a0b0c0d0e0f";
/// Slots in test snapshots: small, so slot tables are easy to reason about.
pub const SLOTS: u32 = 1024;

/// An active cell.
pub fn cell(id: &str) -> CellDoc {
    CellDoc {
        id: id.to_string(),
        state: CellState::Active,
        weight: 1.0,
        shed_ratio: 0.0,
        retry_after_s: 5,
        failover: None,
        ramp: None,
    }
}

/// A draining cell shedding `shed_ratio` of its requests.
pub fn draining(id: &str, shed_ratio: f64, retry_after_s: u32) -> CellDoc {
    CellDoc {
        state: CellState::Draining,
        shed_ratio,
        retry_after_s,
        ..cell(id)
    }
}

/// A disabled cell, failing over to `failover` if given.
pub fn disabled(id: &str, failover: Option<&str>) -> CellDoc {
    CellDoc {
        state: CellState::Disabled,
        failover: failover.map(str::to_string),
        ..cell(id)
    }
}

/// A snapshot whose slots go round-robin over `cells` (slot i → cell i mod n).
pub fn snapshot_with(version: u64, cells: Vec<CellDoc>) -> SnapshotDoc {
    let n = cells.len().max(1);
    let slots: Vec<u16> = (0..SLOTS as usize).map(|i| (i % n) as u16).collect();
    SnapshotDoc {
        version,
        generated_at: "2026-01-01T00:00:00Z".into(),
        hash: HashDoc {
            algorithm: "siphash-1-3".into(),
            key: HASH_KEY.into(),
            slots: SLOTS,
        },
        cells,
        slot_table: encode_slot_table(&slots),
        overrides: BTreeMap::new(),
        pins: BTreeMap::new(),
        moves: Vec::new(),
    }
}

/// Three active cells `cell-a`, `cell-b`, `cell-c`.
pub fn snapshot(version: u64) -> SnapshotDoc {
    snapshot_with(
        version,
        vec![cell("cell-a"), cell("cell-b"), cell("cell-c")],
    )
}

/// Adds an override to a snapshot.
pub fn with_override(mut doc: SnapshotDoc, tenant: &str, cell: &str) -> SnapshotDoc {
    doc.overrides.insert(tenant.into(), cell.into());
    doc
}

/// Adds a gradual move to a snapshot.
pub fn with_move(
    mut doc: SnapshotDoc,
    tenant: &str,
    from: &str,
    to: &str,
    percent: f64,
) -> SnapshotDoc {
    doc.moves.push(MoveDoc {
        tenant: tenant.into(),
        from: from.into(),
        to: to.into(),
        percent,
    });
    doc
}

/// The snapshot as JSON text (what the sidecar serves).
pub fn snapshot_json(doc: &SnapshotDoc) -> String {
    doc.to_json()
}

/// The mapping library's own view of a snapshot, for expected results.
pub fn parsed(doc: &SnapshotDoc) -> cell_router_mapping::Snapshot {
    cell_router_mapping::Snapshot::parse(doc.to_json().as_bytes())
        .unwrap_or_else(|e| panic!("test snapshot is invalid: {e:?}"))
}

/// A plugin configuration under construction.
#[derive(Clone, Debug)]
pub struct Config {
    fields: Map<String, Value>,
}

impl Config {
    /// JWT mode accepting `algs`, with their keys in an inline JWKS, our
    /// issuer and audience, and the tenant in [`TENANT_CLAIM`].
    pub fn jwt(algs: &[Alg]) -> Config {
        let jwks = algs.iter().fold(Jwks::new(), |j, a| j.with(*a));
        let mut fields = Map::new();
        fields.insert("jwks".into(), jwks.to_json());
        fields.insert(
            "algorithms".into(),
            algs.iter().map(|a| a.name()).collect::<Vec<_>>().into(),
        );
        fields.insert("issuers".into(), json!([ISSUER]));
        fields.insert("audiences".into(), json!([AUDIENCE]));
        fields.insert("tenant_claim".into(), TENANT_CLAIM.into());
        Config { fields }
    }

    /// Every supported algorithm.
    pub fn jwt_all() -> Config {
        Config::jwt(&Alg::ALL)
    }

    /// `trust_header` mode: the tenant comes from this header.
    pub fn trust_header(header: &str) -> Config {
        let mut fields = Map::new();
        fields.insert("trust_header".into(), header.into());
        Config { fields }
    }

    /// An inline fallback snapshot.
    pub fn fallback(self, doc: &SnapshotDoc) -> Config {
        let value: Value = serde_json::from_str(&doc.to_json()).unwrap_or(Value::Null);
        self.set("fallback_snapshot", value)
    }

    /// The sidecar subscription with defaults (cluster [`SIDECAR_CLUSTER`]).
    pub fn sidecar(self) -> Config {
        self.set("sidecar", json!({"cluster": SIDECAR_CLUSTER}))
    }

    /// The sidecar subscription with these settings (cluster added if absent).
    pub fn sidecar_with(self, settings: Value) -> Config {
        let mut settings = settings;
        if let Some(map) = settings.as_object_mut() {
            map.entry("cluster").or_insert(SIDECAR_CLUSTER.into());
        }
        self.set("sidecar", settings)
    }

    /// Any field.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Config {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Removes a field.
    pub fn without(mut self, key: &str) -> Config {
        self.fields.remove(key);
        self
    }

    pub fn value(&self) -> Value {
        Value::Object(self.fields.clone())
    }

    pub fn json(&self) -> String {
        self.value().to_string()
    }
}

/// The wall clock in unix seconds, what tokens for real Envoy are issued at
/// (the wasmtime host has its own clock: `Host::now_unix` in cell-router-wasm-host).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A valid token for `tenant`: our issuer and audience, issued at `now`.
pub fn token(alg: Alg, now: u64, tenant: &str) -> String {
    token_builder(alg, now, tenant).sign()
}

/// The builder behind [`token`], to change one thing.
pub fn token_builder(alg: Alg, now: u64, tenant: &str) -> TokenBuilder {
    TokenBuilder::new(alg, now)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .claim(TENANT_CLAIM, tenant)
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The metric names the filter uses.
pub mod metric {
    pub fn routed(cell: &str) -> String {
        format!("cell_router.routed.{cell}")
    }
    pub fn shed(cell: &str) -> String {
        format!("cell_router.shed.{cell}")
    }
    pub fn failover(cell: &str) -> String {
        format!("cell_router.failover.{cell}")
    }
    pub fn unavailable(cell: &str) -> String {
        format!("cell_router.unavailable.{cell}")
    }
    pub fn rejected(reason: &str) -> String {
        format!("cell_router.rejected.{reason}")
    }
    pub const NO_SNAPSHOT: &str = "cell_router.no_snapshot";
    pub const CACHE_HIT: &str = "cell_router.token_cache.hit";
    pub const CACHE_MISS: &str = "cell_router.token_cache.miss";
    pub const SNAPSHOT_VERSION: &str = "cell_router.snapshot.version";
    pub const SNAPSHOT_AGE: &str = "cell_router.snapshot.age_s";
    pub const FETCH_FAILURES: &str = "cell_router.snapshot.fetch_failures";
    pub const SNAPSHOTS_REFUSED: &str = "cell_router.snapshot.refused";
    pub const SNAPSHOTS_APPLIED: &str = "cell_router.snapshot.applied";
}

/// The example snapshot shipped with the mapping crate (65,536 slots).
pub fn example_snapshot_path() -> std::path::PathBuf {
    crate::repo_root().join("mapping/examples/snapshot.json")
}

/// The `cellmap` binary: `CELLMAP_BIN` if set, else `target/release/cellmap`
/// (under `CARGO_TARGET_DIR` when set), built first if it is missing.
pub fn cellmap_bin() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::{Context as _, bail};
    if let Some(path) = std::env::var_os("CELLMAP_BIN") {
        let path = std::path::PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
    }
    let root = crate::repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/cellmap");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--locked",
                "--release",
                "-p",
                "cellmap",
                "--bin",
                "cellmap",
            ])
            .current_dir(&root)
            .status()
            .context("running cargo build for cellmap")?;
        if !status.success() || !bin.is_file() {
            bail!("could not build {} ({status})", bin.display());
        }
    }
    Ok(bin)
}
