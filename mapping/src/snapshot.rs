//! The mapping snapshot: its JSON form, validation, and the indexed form the
//! router resolves against. `SPEC.md` is the contract; this is its reference
//! implementation.

use crate::error::{ObjectOnly, PathError, index_path, key_path, push_key};
use crate::hash::{HashKey, ratio_to_basis_points};
use crate::pools::{
    DEFAULT_ID, FORMAT_POOLS, MAX_MATCH_ENTRIES, MAX_POOLS, MAX_REGIONS, MatchDoc, MatchRule, Pool,
    PoolDoc, PooledCellDoc, PooledSnapshotDoc, Region, RegionDoc, check_authority,
    check_path_prefix,
};
use crate::ramp::{Ramp, RampDoc};
use crate::table::{EntryKind, Keys, TenantTable};
use base64::Engine as _;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The only hash algorithm defined so far.
pub const HASH_ALGORITHM: &str = "siphash-1-3";
/// Upper bound on `hash.slots`: the slot table is 2 bytes a slot.
pub const MAX_SLOTS: u32 = 1 << 20;
/// Cells are addressed by u16 in the slot table.
pub const MAX_CELLS: usize = u16::MAX as usize;
/// Longest cell id: it is sent as a header value and used in metric names.
pub const MAX_CELL_ID_BYTES: usize = 128;
/// `retry_after_s` when a cell does not say.
pub const DEFAULT_RETRY_AFTER_S: u32 = 5;

/// A cell's operating state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Serves its tenants and takes new ones.
    Active,
    /// Serves its tenants but sheds `shed_ratio` of their requests; takes no
    /// new slots.
    Draining,
    /// Serves nobody: its tenants go to `failover`, or get 503.
    Disabled,
}

impl CellState {
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Active => "active",
            CellState::Draining => "draining",
            CellState::Disabled => "disabled",
        }
    }
}

fn default_weight() -> f64 {
    1.0
}

fn default_retry_after() -> u32 {
    DEFAULT_RETRY_AFTER_S
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// `hash` in a snapshot or spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashDoc {
    pub algorithm: String,
    pub key: String,
    pub slots: u32,
}

/// A cell as written in a snapshot (and in a builder spec).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellDoc {
    pub id: String,
    #[serde(default = "default_state")]
    pub state: CellState,
    #[serde(default = "default_weight")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shed_ratio: f64,
    #[serde(default = "default_retry_after")]
    pub retry_after_s: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
    /// A recovery ramp (active cells with a failover only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampDoc>,
}

fn default_state() -> CellState {
    CellState::Active
}

/// A gradual move of one tenant from one cell to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveDoc {
    pub tenant: String,
    pub from: String,
    pub to: String,
    /// Share of the tenant's requests sent to `to`, 0..=100.
    pub percent: f64,
}

/// A whole snapshot in owned form: what the builder writes. Maps are sorted so
/// the same snapshot always serialises to the same bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnapshotDoc {
    pub version: u64,
    pub generated_at: String,
    pub hash: HashDoc,
    pub cells: Vec<CellDoc>,
    pub slot_table: String,
    pub overrides: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<MoveDoc>,
}

impl SnapshotDoc {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut out = serde_json::to_string_pretty(self).unwrap_or_default();
        out.push('\n');
        out
    }
}

/// Encodes slot indexes as the snapshot's `slot_table` (base64 of u16 LE).
pub fn encode_slot_table(slots: &[u16]) -> String {
    let mut bytes = Vec::with_capacity(slots.len() * 2);
    for slot in slots {
        bytes.extend_from_slice(&slot.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A validated cell.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub id: String,
    pub state: CellState,
    pub weight: f64,
    pub shed_ratio: f64,
    /// `shed_ratio` in basis points: the share actually applied.
    pub shed_basis_points: u16,
    pub retry_after_s: u32,
    pub failover: Option<u16>,
    /// A recovery ramp: the cell keeps [`Ramp::share_bp`] of its requests,
    /// the rest go to `failover`.
    pub ramp: Option<Ramp>,
    /// The cell's pool (index into [`Snapshot::pools`]; 0 in format 1).
    pub pool: u16,
    /// The cell's region (index into [`Snapshot::regions`]; 0 in format 1).
    pub region: u16,
}

impl Cell {
    /// The share of its requests the cell keeps at `now_ms` (Unix ms), in
    /// basis points: 10,000 without a ramp.
    pub fn ramp_share_bp(&self, now_ms: u64) -> u16 {
        self.ramp
            .as_ref()
            .map_or(crate::hash::BASIS_POINTS, |r| r.share_bp(now_ms))
    }
}

/// A validated gradual move.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub tenant: String,
    pub from: u16,
    pub to: u16,
    pub percent: f64,
    /// `percent` in basis points: requests whose draw is below go to `to`.
    pub to_basis_points: u16,
}

/// A validated, indexed snapshot: what the router resolves against.
///
/// Every snapshot has pools and regions: a format-1 document has one pool
/// ([`DEFAULT_ID`], taking every request) and one region ([`DEFAULT_ID`]).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) format: u8,
    pub(crate) version: u64,
    pub(crate) generated_at: String,
    pub(crate) key: HashKey,
    pub(crate) slots: u32,
    pub(crate) cells: Vec<Cell>,
    pub(crate) regions: Vec<Region>,
    /// S region indexes; empty in format 1 (every tenant is in region 0).
    pub(crate) region_table: Vec<u16>,
    /// Tenant → region index (kind `Override`); empty in format 1.
    pub(crate) region_overrides: TenantTable,
    pub(crate) pools: Vec<Pool>,
}

impl Snapshot {
    /// An empty value to move a snapshot out of a struct with (never
    /// routed by).
    pub(crate) fn placeholder() -> Snapshot {
        Snapshot {
            format: 1,
            version: 0,
            generated_at: String::new(),
            key: HashKey::from_bytes([0; 16]),
            slots: 0,
            cells: Vec::new(),
            regions: Vec::new(),
            region_table: Vec::new(),
            region_overrides: TenantTable::EMPTY,
            pools: Vec::new(),
        }
    }

    /// How the tenant tables name their tenants: by id (parsed from JSON,
    /// or the binary form keyed by id) or by hash (SPEC, "Hashed keys"). A
    /// snapshot keyed by hash routes exactly as the one it was made from,
    /// but cannot list its overrides, pins or region overrides: its JSON
    /// document, diffs and builds need the form keyed by id.
    pub fn keys(&self) -> Keys {
        self.pools.first().map_or(Keys::Ids, |p| p.tenants.keys())
    }

    /// The same snapshot with every tenant table keyed by hash
    /// ([`TenantTable::to_hashed`]); refused, naming the tenants and the
    /// table, when two tenants of a table share a hash or an index does
    /// not fit.
    pub fn with_hashed_keys(&self) -> Result<Snapshot, PathError> {
        let key = self.key;
        let hash = |t: &[u8]| key.hash(t);
        let refused = |table: &str, e: crate::table::HashingError| {
            PathError::new(table, format!("cannot key by hash: {e}"))
        };
        let region_overrides = if self.format >= 2 {
            self.region_overrides
                .to_hashed(hash)
                .map_err(|e| refused("$.region_overrides", e))?
        } else {
            TenantTable::EMPTY
        };
        let mut pools = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            let tenants = pool.tenants.to_hashed(hash).map_err(|e| {
                let path = if self.format >= 2 {
                    format!("$.pools[{:?}]", pool.id)
                } else {
                    "$.overrides".to_string()
                };
                refused(&path, e)
            })?;
            pools.push(Pool {
                id: pool.id.clone(),
                match_rule: pool.match_rule.clone(),
                slot_tables: pool.slot_tables.clone(),
                tenants,
                moves: pool.moves.clone(),
            });
        }
        Ok(Snapshot {
            format: self.format,
            version: self.version,
            generated_at: self.generated_at.clone(),
            key,
            slots: self.slots,
            cells: self.cells.clone(),
            regions: self.regions.clone(),
            region_table: self.region_table.clone(),
            region_overrides,
            pools,
        })
    }
}

/// What the legacy accessors answer for when a snapshot has no pool (never
/// after validation; it keeps them total).
static EMPTY_POOL: Pool = Pool {
    id: String::new(),
    match_rule: None,
    slot_tables: Vec::new(),
    tenants: TenantTable::EMPTY,
    moves: Vec::new(),
};

impl Snapshot {
    /// Parses and validates a snapshot.
    pub fn parse(bytes: &[u8]) -> Result<Snapshot, PathError> {
        let raw: RawSnapshot = crate::error::from_json_with_path(bytes)?;
        raw.validate()
    }

    /// Parses and validates a snapshot that must be newer than `current`.
    pub fn parse_newer(bytes: &[u8], current: Option<u64>) -> Result<Snapshot, PathError> {
        let snapshot = Snapshot::parse(bytes)?;
        if let Some(current) = current
            && snapshot.version <= current
        {
            return Err(PathError::new(
                "$.version",
                format!(
                    "version {} is not greater than the current version {current}",
                    snapshot.version
                ),
            ));
        }
        Ok(snapshot)
    }

    /// 1 (no `format`, or `"format": 1`) or 2 (pools and regions).
    pub fn format(&self) -> u8 {
        self.format
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn generated_at(&self) -> &str {
        &self.generated_at
    }

    pub fn key(&self) -> HashKey {
        self.key
    }

    /// S, `hash.slots`.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    pub fn cell(&self, index: u16) -> Option<&Cell> {
        self.cells.get(usize::from(index))
    }

    pub fn cell_index(&self, id: &str) -> Option<u16> {
        self.cells.iter().position(|c| c.id == id).map(|i| i as u16)
    }

    /// The pools in document order (format 1: one, `default`).
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn pool(&self, index: u16) -> Option<&Pool> {
        self.pools.get(usize::from(index))
    }

    pub fn pool_index(&self, id: &str) -> Option<u16> {
        self.pools.iter().position(|p| p.id == id).map(|i| i as u16)
    }

    /// The pool without `match` (it is last), if there is one.
    pub fn default_pool(&self) -> Option<u16> {
        self.pools
            .iter()
            .rposition(|p| p.match_rule.is_none())
            .map(|i| i as u16)
    }

    /// The regions in document order (format 1: one, `default`).
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    pub fn region(&self, index: u16) -> Option<&Region> {
        self.regions.get(usize::from(index))
    }

    pub fn region_index(&self, id: &str) -> Option<u16> {
        self.regions
            .iter()
            .position(|r| r.id == id)
            .map(|i| i as u16)
    }

    /// The region table (S region indexes); empty for a format-1 snapshot,
    /// whose tenants are all in region 0.
    pub fn region_table(&self) -> &[u16] {
        &self.region_table
    }

    /// `region_overrides` (values: region indexes).
    pub fn region_override_table(&self) -> &TenantTable {
        &self.region_overrides
    }

    /// `region_overrides` as owned tenant → region id pairs.
    pub fn region_overrides(&self) -> BTreeMap<String, String> {
        self.region_overrides
            .iter()
            .filter_map(|(tenant, _, region)| {
                Some((
                    String::from_utf8_lossy(tenant).into_owned(),
                    self.region(region)?.id.clone(),
                ))
            })
            .collect()
    }

    /// The pool the legacy accessors and [`Self::resolve`] use: the default
    /// pool, else the first.
    pub fn legacy_pool_index(&self) -> u16 {
        self.default_pool().unwrap_or(0)
    }

    fn legacy_pool(&self) -> &Pool {
        self.pool(self.legacy_pool_index())
            .or(self.pools.first())
            .unwrap_or(&EMPTY_POOL)
    }

    /// The slot table of a format-1 snapshot. For a format-2 snapshot: the
    /// default pool's (else the first pool's) table for the first region;
    /// use [`Pool::slot_table`].
    pub fn slot_table(&self) -> &[u16] {
        self.legacy_pool().slot_table(0)
    }

    /// The moves of a format-1 snapshot (format 2: of the legacy pool, see
    /// [`Self::slot_table`]).
    pub fn moves(&self) -> &[Move] {
        self.legacy_pool().moves()
    }

    /// Number of overrides, pins and moves, in all pools.
    pub fn tenant_entries(&self) -> usize {
        self.pools.iter().map(|p| p.tenants.len()).sum()
    }

    /// Every override, pin and move target of a format-1 snapshot (format 2:
    /// of the legacy pool, see [`Self::slot_table`]).
    pub fn tenant_table(&self) -> &TenantTable {
        self.legacy_pool().tenant_table()
    }

    /// Explicit overrides as owned pairs (for diff and the builder; format
    /// 2: the legacy pool's, see [`Self::pool_overrides`]).
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.entries_of(self.legacy_pool(), EntryKind::Override)
    }

    /// Builder pins as owned pairs (format 2: the legacy pool's).
    pub fn pins(&self) -> BTreeMap<String, String> {
        self.entries_of(self.legacy_pool(), EntryKind::Pin)
    }

    /// A pool's overrides as owned pairs.
    pub fn pool_overrides(&self, pool: u16) -> BTreeMap<String, String> {
        self.pool(pool)
            .map(|p| self.entries_of(p, EntryKind::Override))
            .unwrap_or_default()
    }

    /// A pool's pins as owned pairs.
    pub fn pool_pins(&self, pool: u16) -> BTreeMap<String, String> {
        self.pool(pool)
            .map(|p| self.entries_of(p, EntryKind::Pin))
            .unwrap_or_default()
    }

    fn entries_of(&self, pool: &Pool, kind: EntryKind) -> BTreeMap<String, String> {
        pool.tenants
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .filter_map(|(tenant, _, cell)| {
                Some((
                    String::from_utf8_lossy(tenant).into_owned(),
                    self.cell(cell)?.id.clone(),
                ))
            })
            .collect()
    }

    /// Approximate heap bytes held by the indexed snapshot.
    pub fn heap_bytes(&self) -> usize {
        self.pools
            .iter()
            .map(|p| {
                p.tenants.heap_bytes()
                    + p.slot_tables
                        .iter()
                        .map(|t| t.capacity() * 2)
                        .sum::<usize>()
                    + p.moves.capacity() * std::mem::size_of::<Move>()
            })
            .sum::<usize>()
            + self.region_overrides.heap_bytes()
            + self.region_table.capacity() * 2
            + self.cells.capacity() * std::mem::size_of::<Cell>()
            + self.cells.iter().map(|c| c.id.capacity()).sum::<usize>()
    }

    fn cell_doc(&self, c: &Cell) -> CellDoc {
        CellDoc {
            id: c.id.clone(),
            state: c.state,
            weight: c.weight,
            shed_ratio: c.shed_ratio,
            retry_after_s: c.retry_after_s,
            failover: c.failover.and_then(|i| self.cell(i)).map(|f| f.id.clone()),
            ramp: c.ramp.as_ref().map(|r| r.doc.clone()),
        }
    }

    fn move_docs(&self, moves: &[Move]) -> Vec<MoveDoc> {
        let id = |i: u16| self.cell(i).map(|c| c.id.clone()).unwrap_or_default();
        moves
            .iter()
            .map(|m| MoveDoc {
                tenant: m.tenant.clone(),
                from: id(m.from),
                to: id(m.to),
                percent: m.percent,
            })
            .collect()
    }

    /// The owned format-1 document (for the builder and `cellmap` output).
    /// A format-2 snapshot does not fit it: this gives its legacy pool in
    /// its first region (see [`Self::slot_table`]); use
    /// [`Self::to_pooled_doc`].
    pub fn to_doc(&self) -> SnapshotDoc {
        let pool = self.legacy_pool();
        SnapshotDoc {
            version: self.version,
            generated_at: self.generated_at.clone(),
            hash: HashDoc {
                algorithm: HASH_ALGORITHM.to_string(),
                key: self.key.to_hex(),
                slots: self.slots,
            },
            cells: self.cells.iter().map(|c| self.cell_doc(c)).collect(),
            slot_table: encode_slot_table(pool.slot_table(0)),
            overrides: self.entries_of(pool, EntryKind::Override),
            pins: self.entries_of(pool, EntryKind::Pin),
            moves: self.move_docs(pool.moves()),
        }
    }

    /// The owned format-2 document. For a format-1 snapshot this is the
    /// explicit migration: one pool and one region, both `default`, that
    /// routes every request exactly as the format-1 document does.
    pub fn to_pooled_doc(&self) -> PooledSnapshotDoc {
        let region_id = |i: u16| self.region(i).map(|r| r.id.clone()).unwrap_or_default();
        let pool_id = |i: u16| self.pool(i).map(|p| p.id.clone()).unwrap_or_default();
        let region_table = if self.region_table.is_empty() {
            vec![0u16; self.slots as usize]
        } else {
            self.region_table.clone()
        };
        PooledSnapshotDoc {
            format: FORMAT_POOLS,
            version: self.version,
            generated_at: self.generated_at.clone(),
            hash: HashDoc {
                algorithm: HASH_ALGORITHM.to_string(),
                key: self.key.to_hex(),
                slots: self.slots,
            },
            regions: self
                .regions
                .iter()
                .map(|r| RegionDoc { id: r.id.clone() })
                .collect(),
            region_table: encode_slot_table(&region_table),
            region_overrides: self.region_overrides(),
            cells: self
                .cells
                .iter()
                .map(|c| PooledCellDoc::new(self.cell_doc(c), pool_id(c.pool), region_id(c.region)))
                .collect(),
            pools: self
                .pools
                .iter()
                .map(|p| PoolDoc {
                    id: p.id.clone(),
                    match_rule: p.match_rule.as_ref().map(|m| MatchDoc {
                        path_prefixes: m.path_prefixes.clone(),
                        authorities: m.authorities.clone(),
                    }),
                    slot_tables: p
                        .slot_tables
                        .iter()
                        .enumerate()
                        .map(|(r, t)| (region_id(r as u16), encode_slot_table(t)))
                        .collect(),
                    overrides: self.entries_of(p, EntryKind::Override),
                    pins: self.entries_of(p, EntryKind::Pin),
                    moves: self.move_docs(p.moves()),
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing. The top level (and each pool) is visited by hand so that
// `overrides`, `pins` and `region_overrides` stream straight into compact
// tables, whatever order the fields come in: a million-override snapshot
// never exists as a million `String`s. The format is known only once the
// whole document is read (`format` may come last), so every field of both
// formats is collected and the format's rules are applied afterwards.

/// Names (of cells, of regions) as seen in tenant maps before the list they
/// name is known.
#[derive(Default)]
struct Names {
    ids: HashMap<String, u16>,
    names: Vec<String>,
}

impl Names {
    fn intern(&mut self, name: &str) -> Result<u16, String> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = u16::try_from(self.names.len()).map_err(|_| "too many distinct names")?;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        Ok(id)
    }

    fn name(&self, id: u16) -> &str {
        self.names.get(usize::from(id)).map_or("", String::as_str)
    }

    /// Interned ids → indexes in `index_of`.
    fn resolve(&self, index_of: &HashMap<&str, u16>) -> Vec<Option<u16>> {
        self.names
            .iter()
            .map(|n| index_of.get(n.as_str()).copied())
            .collect()
    }
}

/// A cell as written in either format: `pool` and `region` are required in
/// format 2 and refused in format 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnyCellDoc {
    id: String,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default = "default_state")]
    state: CellState,
    #[serde(default = "default_weight")]
    weight: f64,
    #[serde(default)]
    shed_ratio: f64,
    #[serde(default = "default_retry_after")]
    retry_after_s: u32,
    #[serde(default)]
    failover: Option<String>,
    #[serde(default)]
    ramp: Option<RampDoc>,
}

impl AnyCellDoc {
    pub(crate) fn into_parts(self) -> (CellDoc, Option<String>, Option<String>) {
        (
            CellDoc {
                id: self.id,
                state: self.state,
                weight: self.weight,
                shed_ratio: self.shed_ratio,
                retry_after_s: self.retry_after_s,
                failover: self.failover,
                ramp: self.ramp,
            },
            self.pool,
            self.region,
        )
    }
}

/// Overrides, pins and moves (of the format-1 top level, or of a pool).
#[derive(Default)]
struct RawTenants {
    tenants: TenantTable,
    moves: Vec<MoveDoc>,
    /// The first tenant that could not be stored, with its path and why.
    error: Option<PathError>,
}

#[derive(Default)]
struct RawPool {
    id: Option<String>,
    match_rule: Option<MatchDoc>,
    slot_tables: Option<Vec<(String, String)>>,
    entries: RawTenants,
}

#[derive(Default)]
struct RawSnapshot {
    format: Option<u64>,
    version: Option<u64>,
    generated_at: Option<String>,
    hash: Option<HashDoc>,
    cells: Option<Vec<AnyCellDoc>>,
    slot_table: Option<String>,
    regions: Option<Vec<RegionDoc>>,
    region_table: Option<String>,
    region_overrides: Option<RawTenants>,
    pools: Option<Vec<RawPool>>,
    /// Top-level overrides, pins and moves (format 1).
    top: RawTenants,
    /// Which top-level fields were present (see `FIELDS`).
    seen: [bool; FIELDS.len()],
    cell_names: Names,
    region_names: Names,
}

const FIELDS: &[&str] = &[
    "version",
    "generated_at",
    "hash",
    "cells",
    "slot_table",
    "overrides",
    "pins",
    "moves",
    "format",
    "regions",
    "region_table",
    "region_overrides",
    "pools",
];
/// Format-1 only (in format 2 they live in pools).
const FORMAT1_ONLY: &[&str] = &["slot_table", "overrides", "pins", "moves"];
/// Format-2 only.
const FORMAT2_ONLY: &[&str] = &["regions", "region_table", "region_overrides", "pools"];
const POOL_FIELDS: &[&str] = &["id", "match", "slot_tables", "overrides", "pins", "moves"];

impl<'de> Deserialize<'de> for RawSnapshot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawSnapshot;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a snapshot object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSnapshot, A::Error> {
        let mut raw = RawSnapshot::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            // Refusals go through `next_value_seed` so the error path names
            // the field (`$.colour`), as it does for nested objects.
            let Some(pos) = FIELDS.iter().position(|f| *f == key.as_ref()) else {
                return map.next_value_seed(Refuse::<RawSnapshot>::new(
                    RefuseReason::Unknown(&key),
                    FIELDS,
                ));
            };
            if let Some(flag) = raw.seen.get_mut(pos) {
                if *flag {
                    return map.next_value_seed(Refuse::<RawSnapshot>::new(
                        RefuseReason::Duplicate(&key),
                        FIELDS,
                    ));
                }
                *flag = true;
            }
            match key.as_ref() {
                "format" => raw.format = Some(map.next_value()?),
                "version" => raw.version = Some(map.next_value()?),
                "generated_at" => raw.generated_at = Some(map.next_value()?),
                // Objects only: a derived struct would also take an array.
                "hash" => raw.hash = Some(map.next_value::<ObjectOnly<HashDoc>>()?.0),
                "cells" => {
                    let cells: Vec<ObjectOnly<AnyCellDoc>> = map.next_value()?;
                    raw.cells = Some(cells.into_iter().map(|c| c.0).collect());
                }
                "slot_table" => raw.slot_table = Some(map.next_value()?),
                "moves" => {
                    let moves: Vec<ObjectOnly<MoveDoc>> = map.next_value()?;
                    raw.top.moves = moves.into_iter().map(|m| m.0).collect();
                }
                "overrides" | "pins" => {
                    let kind = if key == "pins" {
                        EntryKind::Pin
                    } else {
                        EntryKind::Override
                    };
                    map.next_value_seed(TenantMapSeed {
                        target: &mut raw.top,
                        names: &mut raw.cell_names,
                        kind,
                        base: String::from("$"),
                        field: if kind == EntryKind::Pin {
                            "pins"
                        } else {
                            "overrides"
                        },
                    })?;
                }
                "regions" => {
                    let regions: Vec<ObjectOnly<RegionDoc>> = map.next_value()?;
                    raw.regions = Some(regions.into_iter().map(|r| r.0).collect());
                }
                "region_table" => raw.region_table = Some(map.next_value()?),
                "region_overrides" => {
                    let mut target = RawTenants::default();
                    map.next_value_seed(TenantMapSeed {
                        target: &mut target,
                        names: &mut raw.region_names,
                        kind: EntryKind::Override,
                        base: String::from("$"),
                        field: "region_overrides",
                    })?;
                    raw.region_overrides = Some(target);
                }
                "pools" => {
                    let pools = map.next_value_seed(PoolsSeed {
                        names: &mut raw.cell_names,
                    })?;
                    raw.pools = Some(pools);
                }
                _ => return Err(de::Error::unknown_field(&key, FIELDS)),
            }
        }
        Ok(raw)
    }
}

/// The pools array, each pool visited by hand (its tenant maps stream).
struct PoolsSeed<'a> {
    names: &'a mut Names,
}

impl<'de> DeserializeSeed<'de> for PoolsSeed<'_> {
    type Value = Vec<RawPool>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<RawPool>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PoolsSeed<'_> {
    type Value = Vec<RawPool>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of pools")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RawPool>, A::Error> {
        let mut pools = Vec::new();
        while let Some(pool) = seq.next_element_seed(PoolSeed {
            names: &mut *self.names,
            index: pools.len(),
        })? {
            pools.push(pool);
        }
        Ok(pools)
    }
}

struct PoolSeed<'a> {
    names: &'a mut Names,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for PoolSeed<'_> {
    type Value = RawPool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawPool, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PoolSeed<'_> {
    type Value = RawPool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a pool object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPool, A::Error> {
        let mut pool = RawPool::default();
        let mut seen = [false; POOL_FIELDS.len()];
        let base = index_path("pools", self.index);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(pos) = POOL_FIELDS.iter().position(|f| *f == key.as_ref()) else {
                return map.next_value_seed(Refuse::<RawPool>::new(
                    RefuseReason::Unknown(&key),
                    POOL_FIELDS,
                ));
            };
            if let Some(flag) = seen.get_mut(pos) {
                if *flag {
                    return map.next_value_seed(Refuse::<RawPool>::new(
                        RefuseReason::Duplicate(&key),
                        POOL_FIELDS,
                    ));
                }
                *flag = true;
            }
            match key.as_ref() {
                "id" => pool.id = Some(map.next_value()?),
                "match" => pool.match_rule = Some(map.next_value::<ObjectOnly<MatchDoc>>()?.0),
                "slot_tables" => {
                    pool.slot_tables = Some(map.next_value_seed(PairsSeed)?);
                }
                "moves" => {
                    let moves: Vec<ObjectOnly<MoveDoc>> = map.next_value()?;
                    pool.entries.moves = moves.into_iter().map(|m| m.0).collect();
                }
                "overrides" | "pins" => {
                    let kind = if key == "pins" {
                        EntryKind::Pin
                    } else {
                        EntryKind::Override
                    };
                    map.next_value_seed(TenantMapSeed {
                        target: &mut pool.entries,
                        names: &mut *self.names,
                        kind,
                        base: base.clone(),
                        field: if kind == EntryKind::Pin {
                            "pins"
                        } else {
                            "overrides"
                        },
                    })?;
                }
                _ => return Err(de::Error::unknown_field(&key, POOL_FIELDS)),
            }
        }
        Ok(pool)
    }
}

/// A JSON object of strings as (key, value) pairs in document order, a key
/// written twice refused (a map type would keep the last silently).
struct PairsSeed;

impl<'de> DeserializeSeed<'de> for PairsSeed {
    type Value = Vec<(String, String)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PairsSeed {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of region id → base64 slot table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value: String = map.next_value()?;
            pairs.push((key, value));
        }
        Ok(pairs)
    }
}

enum RefuseReason<'a> {
    Unknown(&'a str),
    Duplicate(&'a str),
}

/// A value seed that fails without reading, with the reason.
struct Refuse<'a, T> {
    reason: RefuseReason<'a>,
    fields: &'static [&'static str],
    _value: std::marker::PhantomData<T>,
}

impl<'a, T> Refuse<'a, T> {
    fn new(reason: RefuseReason<'a>, fields: &'static [&'static str]) -> Self {
        Refuse {
            reason,
            fields,
            _value: std::marker::PhantomData,
        }
    }
}

impl<'de, T> DeserializeSeed<'de> for Refuse<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<T, D::Error> {
        Err(match self.reason {
            RefuseReason::Unknown(key) => de::Error::unknown_field(key, self.fields),
            RefuseReason::Duplicate(key) => de::Error::custom(format!("duplicate field `{key}`")),
        })
    }
}

struct TenantMapSeed<'a> {
    target: &'a mut RawTenants,
    names: &'a mut Names,
    kind: EntryKind,
    /// The path of the object holding the map (`$`, `$.pools[2]`).
    base: String,
    field: &'static str,
}

impl<'de> DeserializeSeed<'de> for TenantMapSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TenantMapSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.field == "region_overrides" {
            f.write_str("an object of tenant id → region id")
        } else {
            f.write_str("an object of tenant id → cell id")
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Reserve, never replace: `overrides` and `pins` share one table.
        if let Some(n) = map.size_hint() {
            self.target.tenants.reserve(n, n.saturating_mul(16));
        }
        while let Some(tenant) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let cell = map.next_value::<std::borrow::Cow<'de, str>>()?;
            let name = self.names.intern(&cell).map_err(de::Error::custom)?;
            if let Err(err) = self.target.tenants.push(tenant.as_bytes(), self.kind, name)
                && self.target.error.is_none()
            {
                let mut path = self.base.clone();
                push_key(&mut path, self.field);
                push_key(&mut path, tenant.as_ref());
                self.target.error = Some(PathError::new(path, err.to_string()));
            }
        }
        Ok(())
    }
}

fn missing(field: &str) -> PathError {
    PathError::new(key_path([field]), "missing field")
}

/// Checks an id (of a cell, pool or region): 1–128 bytes of
/// `A–Z a–z 0–9 - _ . :`.
fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} id must not be empty"));
    }
    if id.len() > MAX_CELL_ID_BYTES {
        return Err(format!(
            "{what} id is longer than {MAX_CELL_ID_BYTES} bytes"
        ));
    }
    // Sent as a header value and used in metric names: keep it to a safe set.
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "{what} id {id:?} has {bad:?}; only ASCII letters, digits and - _ . : are allowed"
        ));
    }
    Ok(())
}

fn check_cell_id(id: &str) -> Result<(), String> {
    check_id("cell", id)
}

/// The path of a tenant entry of kind `kind` in the object at `base`.
fn entry_path(base: &str, kind: EntryKind, tenant: &[u8], value: u16) -> String {
    let tenant = String::from_utf8_lossy(tenant);
    let mut path = base.to_string();
    match kind {
        EntryKind::Override => {
            push_key(&mut path, "overrides");
            push_key(&mut path, &tenant);
        }
        EntryKind::Pin => {
            push_key(&mut path, "pins");
            push_key(&mut path, &tenant);
        }
        EntryKind::Move => {
            push_key(&mut path, "moves");
            path.push_str(&format!("[{value}].tenant"));
        }
    }
    path
}

/// The checks common to both formats: version, generated_at, hash.
struct Common {
    version: u64,
    generated_at: String,
    key: HashKey,
    slots: u32,
}

impl RawSnapshot {
    fn present(&self, field: &str) -> bool {
        FIELDS
            .iter()
            .position(|f| *f == field)
            .and_then(|i| self.seen.get(i).copied())
            .unwrap_or(false)
    }

    fn validate(mut self) -> Result<Snapshot, PathError> {
        let format = match self.format {
            None | Some(1) => 1,
            Some(2) => FORMAT_POOLS,
            Some(other) => {
                return Err(PathError::new(
                    "$.format",
                    format!("unknown format {other}; this reader knows 1 and 2"),
                ));
            }
        };
        let (refused, why) = if format == 1 {
            (
                FORMAT2_ONLY,
                "only in a format-2 snapshot (add \"format\": 2)",
            )
        } else {
            (
                FORMAT1_ONLY,
                "not in a format-2 snapshot: each pool has its own (in $.pools[i])",
            )
        };
        if let Some(field) = refused.iter().find(|f| self.present(f)) {
            return Err(PathError::new(key_path([*field]), why));
        }

        let version = self.version.take().ok_or_else(|| missing("version"))?;
        let generated_at = self
            .generated_at
            .take()
            .ok_or_else(|| missing("generated_at"))?;
        let hash = self.hash.take().ok_or_else(|| missing("hash"))?;
        let cell_docs = self.cells.take().ok_or_else(|| missing("cells"))?;
        if format == 1 {
            let slot_table_b64 = self
                .slot_table
                .take()
                .ok_or_else(|| missing("slot_table"))?;
            let common = check_hash(version, generated_at, &hash)?;
            self.validate_format1(common, cell_docs, &slot_table_b64)
        } else {
            let common = check_hash(version, generated_at, &hash)?;
            self.validate_format2(common, cell_docs)
        }
    }

    fn validate_format1(
        self,
        common: Common,
        cell_docs: Vec<AnyCellDoc>,
        slot_table_b64: &str,
    ) -> Result<Snapshot, PathError> {
        let mut docs = Vec::with_capacity(cell_docs.len());
        for (i, doc) in cell_docs.into_iter().enumerate() {
            let (doc, pool, region) = doc.into_parts();
            for (field, value) in [("pool", pool), ("region", region)] {
                if value.is_some() {
                    return Err(PathError::new(
                        format!("{}.{field}", index_path("cells", i)),
                        "only in a format-2 snapshot (add \"format\": 2)",
                    ));
                }
            }
            docs.push(doc);
        }
        let cells = validate_cells(&docs)?;
        let slot_table = decode_u16_table(
            slot_table_b64,
            common.slots,
            cells.len(),
            "$.slot_table",
            "cell",
        )?;
        let index_of: HashMap<&str, u16> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i as u16))
            .collect();
        let resolved = self.cell_names.resolve(&index_of);
        let (tenants, moves) = finish_tenants(
            self.top,
            "$",
            &self.cell_names,
            &resolved,
            &index_of,
            common.key,
            |_, _, _| Ok(()),
        )?;
        Ok(Snapshot {
            format: 1,
            version: common.version,
            generated_at: common.generated_at,
            key: common.key,
            slots: common.slots,
            cells,
            regions: vec![Region {
                id: DEFAULT_ID.to_string(),
            }],
            region_table: Vec::new(),
            region_overrides: TenantTable::default(),
            pools: vec![Pool {
                id: DEFAULT_ID.to_string(),
                match_rule: None,
                slot_tables: vec![slot_table],
                tenants,
                moves,
            }],
        })
    }

    fn validate_format2(
        self,
        common: Common,
        cell_docs: Vec<AnyCellDoc>,
    ) -> Result<Snapshot, PathError> {
        let key = common.key;
        let slots = common.slots;
        let region_docs = self.regions.ok_or_else(|| missing("regions"))?;
        let region_of = check_regions(&region_docs)?;
        let region_table_b64 = self.region_table.ok_or_else(|| missing("region_table"))?;
        let region_table = decode_u16_table(
            &region_table_b64,
            slots,
            region_docs.len(),
            "$.region_table",
            "region",
        )?;
        let raw_pools = self.pools.ok_or_else(|| missing("pools"))?;
        let heads: Vec<(Option<&str>, Option<&MatchDoc>)> = raw_pools
            .iter()
            .map(|p| (p.id.as_deref(), p.match_rule.as_ref()))
            .collect();
        let (pool_of, match_rules) = check_pool_heads(&heads)?;
        let places = Places {
            pools: raw_pools
                .iter()
                .map(|p| p.id.clone().unwrap_or_default())
                .collect(),
            regions: region_docs.iter().map(|r| r.id.clone()).collect(),
        };
        let cells = check_pooled_cells(cell_docs, &pool_of, &region_of, &places)?;

        // Region overrides.
        let mut region_overrides = TenantTable::default();
        if let Some(raw) = self.region_overrides {
            if let Some(err) = raw.error {
                return Err(err);
            }
            let resolved = self.region_names.resolve(&region_of);
            region_overrides = raw.tenants;
            let mut bad = None;
            for (tenant, _, name) in region_overrides.iter() {
                if resolved.get(usize::from(name)).copied().flatten().is_none() {
                    bad = Some((tenant.to_vec(), name));
                    break;
                }
            }
            if let Some((tenant, name)) = bad {
                return Err(PathError::new(
                    key_path(["region_overrides", &String::from_utf8_lossy(&tenant)]),
                    format!("unknown region {:?}", self.region_names.name(name)),
                ));
            }
            region_overrides
                .map_values(|_, v| resolved.get(usize::from(v)).copied().flatten().unwrap_or(0));
        }
        // Indexed even when empty: the binary form stores the directory.
        if let Err(dup) = region_overrides.build_index(|t| key.hash(t)) {
            let tenant = region_overrides
                .entry(dup)
                .map(|(t, _, _)| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default();
            return Err(PathError::new(
                key_path(["region_overrides", tenant.as_str()]),
                format!("tenant {tenant:?} appears more than once"),
            ));
        }
        // With one region every tenant is homed there: no hash needed.
        let single_region = region_docs.len() == 1;
        let home_region = |tenant: &[u8]| -> u16 {
            if single_region {
                return 0;
            }
            home_region_of(
                &region_overrides,
                &region_table,
                slots,
                tenant,
                key.hash(tenant),
            )
        };

        // Each pool: slot tables, then its tenants.
        let index_of: HashMap<&str, u16> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i as u16))
            .collect();
        let resolved = self.cell_names.resolve(&index_of);
        let mut built = Vec::with_capacity(raw_pools.len());
        for ((i, raw), match_rule) in raw_pools.into_iter().enumerate().zip(match_rules) {
            let p = i as u16;
            let base = index_path("pools", i);
            let pairs = raw
                .slot_tables
                .ok_or_else(|| PathError::new(format!("{base}.slot_tables"), "missing field"))?;
            let mut tables: Vec<Option<Vec<u16>>> = vec![None; region_docs.len()];
            for (region_id, b64) in &pairs {
                let mut path = format!("{base}.slot_tables");
                push_key(&mut path, region_id);
                let r = *region_of.get(region_id.as_str()).ok_or_else(|| {
                    PathError::new(path.clone(), format!("unknown region {region_id:?}"))
                })?;
                let table = decode_u16_table(b64, slots, cells.len(), &path, "cell")?;
                check_slot_table_places(&table, p, r, &cells, &places, &path)?;
                if let Some(t) = tables.get_mut(usize::from(r)) {
                    *t = Some(table);
                }
            }
            let mut slot_tables = Vec::with_capacity(tables.len());
            for (r, table) in tables.into_iter().enumerate() {
                slot_tables.push(table.ok_or_else(|| {
                    PathError::new(
                        format!("{base}.slot_tables"),
                        format!(
                            "no slot table for region {:?}: every pool needs one for every region",
                            places.region(r as u16)
                        ),
                    )
                })?);
            }
            let (tenants, moves) = finish_tenants(
                raw.entries,
                &base,
                &self.cell_names,
                &resolved,
                &index_of,
                key,
                |tenant, cell, path| {
                    check_place(&cells, &places, p, cell, tenant, home_region(tenant), path)
                },
            )?;
            built.push(Pool {
                id: raw.id.unwrap_or_default(),
                match_rule,
                slot_tables,
                tenants,
                moves,
            });
        }

        Ok(Snapshot {
            format: FORMAT_POOLS,
            version: common.version,
            generated_at: common.generated_at,
            key,
            slots,
            cells,
            regions: region_docs
                .into_iter()
                .map(|r| Region { id: r.id })
                .collect(),
            region_table,
            region_overrides,
            pools: built,
        })
    }
}

/// Pool and region ids by index, for messages.
pub(crate) struct Places {
    pub(crate) pools: Vec<String>,
    pub(crate) regions: Vec<String>,
}

impl Places {
    pub(crate) fn pool(&self, i: u16) -> &str {
        self.pools.get(usize::from(i)).map_or("", String::as_str)
    }

    pub(crate) fn region(&self, i: u16) -> &str {
        self.regions.get(usize::from(i)).map_or("", String::as_str)
    }
}

/// `regions`: 1 … 255, ids well formed and unique. Region id → index.
pub(crate) fn check_regions(docs: &[RegionDoc]) -> Result<HashMap<&str, u16>, PathError> {
    if docs.is_empty() || docs.len() > MAX_REGIONS {
        return Err(PathError::new(
            "$.regions",
            format!("must list 1 to {MAX_REGIONS} regions, got {}", docs.len()),
        ));
    }
    let mut region_of: HashMap<&str, u16> = HashMap::new();
    for (i, r) in docs.iter().enumerate() {
        let path = format!("{}.id", index_path("regions", i));
        check_id("region", &r.id).map_err(|e| PathError::new(path.clone(), e))?;
        if region_of.insert(r.id.as_str(), i as u16).is_some() {
            return Err(PathError::new(
                path,
                format!("duplicate region id {:?}", r.id),
            ));
        }
    }
    Ok(region_of)
}

/// Pool id → index, and each pool's match rule.
pub(crate) type PoolHeads<'a> = (HashMap<&'a str, u16>, Vec<Option<MatchRule>>);

/// `pools[i].id` and `.match` for every pool: 1 … 64 pools, ids well
/// formed and unique, match rules valid, only the last without `match`.
pub(crate) fn check_pool_heads<'a>(
    heads: &[(Option<&'a str>, Option<&MatchDoc>)],
) -> Result<PoolHeads<'a>, PathError> {
    if heads.is_empty() || heads.len() > MAX_POOLS {
        return Err(PathError::new(
            "$.pools",
            format!("must list 1 to {MAX_POOLS} pools, got {}", heads.len()),
        ));
    }
    let mut pool_of: HashMap<&str, u16> = HashMap::new();
    let mut match_rules = Vec::with_capacity(heads.len());
    for (i, (id, match_doc)) in heads.iter().enumerate() {
        let base = index_path("pools", i);
        let id = id.ok_or_else(|| PathError::new(format!("{base}.id"), "missing field"))?;
        check_id("pool", id).map_err(|e| PathError::new(format!("{base}.id"), e))?;
        if pool_of.insert(id, i as u16).is_some() {
            return Err(PathError::new(
                format!("{base}.id"),
                format!("duplicate pool id {id:?}"),
            ));
        }
        match_rules.push(check_match(&base, *match_doc, i + 1 == heads.len())?);
    }
    Ok((pool_of, match_rules))
}

/// Format-2 cells: `pool` and `region` required and known, the common cell
/// checks, failover within the cell's pool and region.
pub(crate) fn check_pooled_cells(
    cell_docs: Vec<AnyCellDoc>,
    pool_of: &HashMap<&str, u16>,
    region_of: &HashMap<&str, u16>,
    places: &Places,
) -> Result<Vec<Cell>, PathError> {
    let mut docs = Vec::with_capacity(cell_docs.len());
    let mut at = Vec::with_capacity(cell_docs.len());
    for (i, doc) in cell_docs.into_iter().enumerate() {
        let (doc, pool, region) = doc.into_parts();
        let path = index_path("cells", i);
        let pool = pool.ok_or_else(|| PathError::new(format!("{path}.pool"), "missing field"))?;
        let pool = *pool_of.get(pool.as_str()).ok_or_else(|| {
            PathError::new(format!("{path}.pool"), format!("unknown pool {pool:?}"))
        })?;
        let region =
            region.ok_or_else(|| PathError::new(format!("{path}.region"), "missing field"))?;
        let region = *region_of.get(region.as_str()).ok_or_else(|| {
            PathError::new(
                format!("{path}.region"),
                format!("unknown region {region:?}"),
            )
        })?;
        at.push((pool, region));
        docs.push(doc);
    }
    let mut cells = validate_cells(&docs)?;
    for (cell, (pool, region)) in cells.iter_mut().zip(&at) {
        cell.pool = *pool;
        cell.region = *region;
    }
    for (i, cell) in cells.iter().enumerate() {
        let Some(target) = cell.failover.and_then(|f| cells.get(usize::from(f))) else {
            continue;
        };
        if (target.pool, target.region) != (cell.pool, cell.region) {
            return Err(PathError::new(
                format!("{}.failover", index_path("cells", i)),
                format!(
                    "cell {} (pool {}, region {}) fails over to {} (pool {}, region {}); failover stays in the cell's pool and region",
                    cell.id,
                    places.pool(cell.pool),
                    places.region(cell.region),
                    target.id,
                    places.pool(target.pool),
                    places.region(target.region)
                ),
            ));
        }
    }
    Ok(cells)
}

/// Every entry of pool `p`'s slot table for region `r` names a cell of
/// that pool and region.
pub(crate) fn check_slot_table_places(
    table: &[u16],
    p: u16,
    r: u16,
    cells: &[Cell],
    places: &Places,
    path: &str,
) -> Result<(), PathError> {
    for (slot, &c) in table.iter().enumerate() {
        let cell = cells.get(usize::from(c));
        if cell.is_some_and(|cell| cell.pool == p && cell.region == r) {
            continue;
        }
        let (id, pool, region) = cell.map_or(("", 0, 0), |cell| {
            (cell.id.as_str(), cell.pool, cell.region)
        });
        return Err(PathError::new(
            path,
            format!(
                "slot {slot} points at cell {id} (pool {}, region {}); this table is pool {}'s for region {}",
                places.pool(pool),
                places.region(region),
                places.pool(p),
                places.region(r)
            ),
        ));
    }
    Ok(())
}

/// An override, pin or move of pool `p` for `tenant` (homed in `home`)
/// names a cell of that pool in the tenant's home region.
pub(crate) fn check_place(
    cells: &[Cell],
    places: &Places,
    p: u16,
    cell: u16,
    tenant: &[u8],
    home: u16,
    path: impl FnOnce() -> String,
) -> Result<(), PathError> {
    let Some(cell) = cells.get(usize::from(cell)) else {
        return Ok(());
    };
    if cell.pool != p {
        return Err(PathError::new(
            path(),
            format!(
                "cell {} is in pool {}, not in pool {}",
                cell.id,
                places.pool(cell.pool),
                places.pool(p)
            ),
        ));
    }
    if cell.region != home {
        return Err(PathError::new(
            path(),
            format!(
                "cell {} is in region {} but tenant {} is homed in {}",
                cell.id,
                places.region(cell.region),
                String::from_utf8_lossy(tenant),
                places.region(home)
            ),
        ));
    }
    Ok(())
}

/// The home region of a tenant with hash `h` (see
/// [`Snapshot::home_region`]).
#[inline]
pub(crate) fn home_region_of(
    overrides: &TenantTable,
    table: &[u16],
    slots: u32,
    tenant: &[u8],
    h: u64,
) -> u16 {
    if let Some((_, region)) = overrides.get(tenant, h) {
        return region;
    }
    let slot = (h % u64::from(slots.max(1))) as usize;
    table.get(slot).copied().unwrap_or(0)
}

fn check_hash(version: u64, generated_at: String, hash: &HashDoc) -> Result<Common, PathError> {
    if hash.algorithm != HASH_ALGORITHM {
        return Err(PathError::new(
            "$.hash.algorithm",
            format!(
                "unknown algorithm {:?}; expected {HASH_ALGORITHM:?}",
                hash.algorithm
            ),
        ));
    }
    let key = HashKey::from_hex(&hash.key).map_err(|e| PathError::new("$.hash.key", e))?;
    if hash.slots == 0 || hash.slots > MAX_SLOTS {
        return Err(PathError::new(
            "$.hash.slots",
            format!("must be between 1 and {MAX_SLOTS}, got {}", hash.slots),
        ));
    }
    Ok(Common {
        version,
        generated_at,
        key,
        slots: hash.slots,
    })
}

/// Validates a pool's `match` (`base` is the pool's path).
fn check_match(
    base: &str,
    doc: Option<&MatchDoc>,
    last: bool,
) -> Result<Option<MatchRule>, PathError> {
    let Some(doc) = doc else {
        if !last {
            return Err(PathError::new(
                format!("{base}.match"),
                "missing field: only the last pool may leave out `match` (it takes every request no other pool takes)",
            ));
        }
        return Ok(None);
    };
    if doc.path_prefixes.is_empty() && doc.authorities.is_empty() {
        return Err(PathError::new(
            format!("{base}.match"),
            "must list path_prefixes or authorities; leave `match` out for the default pool (the last)",
        ));
    }
    for (field, list) in [
        ("path_prefixes", &doc.path_prefixes),
        ("authorities", &doc.authorities),
    ] {
        if list.len() > MAX_MATCH_ENTRIES {
            return Err(PathError::new(
                format!("{base}.match.{field}"),
                format!("at most {MAX_MATCH_ENTRIES} entries"),
            ));
        }
        for (j, entry) in list.iter().enumerate() {
            let checked = if field == "path_prefixes" {
                check_path_prefix(entry)
            } else {
                check_authority(entry)
            };
            checked.map_err(|e| PathError::new(format!("{base}.match.{field}[{j}]"), e))?;
        }
    }
    Ok(Some(MatchRule {
        path_prefixes: doc.path_prefixes.clone(),
        authorities: doc.authorities.clone(),
    }))
}

/// Turns parsed overrides, pins and moves (at `base`: `$` or a pool) into
/// an indexed table and moves: names → cell indexes, `place` checks each
/// target cell (pool and region, in format 2; for a move both `from` and
/// `to`), then duplicates.
fn finish_tenants(
    raw: RawTenants,
    base: &str,
    names: &Names,
    resolved: &[Option<u16>],
    index_of: &HashMap<&str, u16>,
    key: HashKey,
    mut place: impl FnMut(&[u8], u16, &dyn Fn() -> String) -> Result<(), PathError>,
) -> Result<(TenantTable, Vec<Move>), PathError> {
    if let Some(err) = raw.error {
        return Err(err);
    }
    let mut tenants = raw.tenants;
    // Interned names → cell indexes, in document order: the first entry
    // naming an unknown cell (or a misplaced one) is the one reported.
    for (tenant, kind, name) in tenants.iter() {
        let path = || entry_path(base, kind, tenant, name);
        match resolved.get(usize::from(name)).copied().flatten() {
            // The path is built only for an error: a million entries.
            Some(cell) => place(tenant, cell, &path)?,
            None => {
                return Err(PathError::new(
                    path(),
                    format!("unknown cell {:?}", names.name(name)),
                ));
            }
        }
    }
    tenants.map_values(|_, v| resolved.get(usize::from(v)).copied().flatten().unwrap_or(0));

    let mut moves = Vec::with_capacity(raw.moves.len());
    for (i, m) in raw.moves.into_iter().enumerate() {
        let mut path = base.to_string();
        push_key(&mut path, "moves");
        path.push_str(&format!("[{i}]"));
        let cell = |field: &str, id: &str| -> Result<u16, PathError> {
            index_of.get(id).copied().ok_or_else(|| {
                PathError::new(format!("{path}.{field}"), format!("unknown cell {id:?}"))
            })
        };
        let from = cell("from", &m.from)?;
        let to = cell("to", &m.to)?;
        if from == to {
            return Err(PathError::new(
                format!("{path}.to"),
                "must differ from `from`",
            ));
        }
        if !m.percent.is_finite() || !(0.0..=100.0).contains(&m.percent) {
            return Err(PathError::new(
                format!("{path}.percent"),
                format!("must be between 0 and 100, got {}", m.percent),
            ));
        }
        place(m.tenant.as_bytes(), from, &|| format!("{path}.from"))?;
        place(m.tenant.as_bytes(), to, &|| format!("{path}.to"))?;
        let index = u16::try_from(i)
            .map_err(|_| PathError::new(path.clone(), "too many moves (at most 65535)"))?;
        tenants
            .push(m.tenant.as_bytes(), EntryKind::Move, index)
            .map_err(|e| PathError::new(format!("{path}.tenant"), e.to_string()))?;
        moves.push(Move {
            tenant: m.tenant,
            from,
            to,
            percent: m.percent,
            to_basis_points: ratio_to_basis_points(m.percent / 100.0),
        });
    }

    if let Err(dup) = tenants.build_index(|t| key.hash(t)) {
        let (tenant, kind, value) = tenants.entry(dup).unwrap_or((b"", EntryKind::Override, 0));
        let path = entry_path(base, kind, tenant, value);
        let tenant = String::from_utf8_lossy(tenant).into_owned();
        let within = if base == "$" {
            "overrides, pins and moves".to_string()
        } else {
            format!("the overrides, pins and moves of {base}")
        };
        return Err(PathError::new(
            path,
            format!("tenant {tenant:?} appears more than once in {within}"),
        ));
    }
    Ok((tenants, moves))
}

/// Validates the cell list: ids, numbers, failover targets and loops.
pub fn validate_cells(docs: &[CellDoc]) -> Result<Vec<Cell>, PathError> {
    if docs.is_empty() {
        return Err(PathError::new("$.cells", "at least one cell is required"));
    }
    if docs.len() > MAX_CELLS {
        return Err(PathError::new(
            "$.cells",
            format!("at most {MAX_CELLS} cells"),
        ));
    }
    let mut index_of: HashMap<&str, u16> = HashMap::with_capacity(docs.len());
    let mut ramps: Vec<Option<Ramp>> = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let path = index_path("cells", i);
        check_cell_id(&doc.id).map_err(|e| PathError::new(format!("{path}.id"), e))?;
        if index_of.insert(doc.id.as_str(), i as u16).is_some() {
            return Err(PathError::new(
                format!("{path}.id"),
                format!("duplicate cell id {:?}", doc.id),
            ));
        }
        if !doc.weight.is_finite() || doc.weight < 0.0 {
            return Err(PathError::new(
                format!("{path}.weight"),
                format!("must be a finite number ≥ 0, got {}", doc.weight),
            ));
        }
        if !doc.shed_ratio.is_finite() || !(0.0..=1.0).contains(&doc.shed_ratio) {
            return Err(PathError::new(
                format!("{path}.shed_ratio"),
                format!("must be between 0 and 1, got {}", doc.shed_ratio),
            ));
        }
        if let Some(ramp) = &doc.ramp {
            if doc.state != CellState::Active {
                return Err(PathError::new(
                    format!("{path}.ramp"),
                    format!(
                        "only an active cell can ramp; this one is {}",
                        doc.state.as_str()
                    ),
                ));
            }
            if doc.failover.is_none() {
                return Err(PathError::new(
                    format!("{path}.ramp"),
                    "a ramp needs a failover: the requests the cell does not take yet go there",
                ));
            }
            let ramp = Ramp::from_doc(ramp)
                .map_err(|(field, why)| PathError::new(format!("{path}.ramp.{field}"), why))?;
            ramps.push(Some(ramp));
        } else {
            ramps.push(None);
        }
    }
    let mut cells = Vec::with_capacity(docs.len());
    for ((i, doc), ramp) in docs.iter().enumerate().zip(ramps) {
        let failover = match &doc.failover {
            None => None,
            Some(target) => Some(*index_of.get(target.as_str()).ok_or_else(|| {
                PathError::new(
                    format!("{}.failover", index_path("cells", i)),
                    format!("unknown cell {target:?}"),
                )
            })?),
        };
        cells.push(Cell {
            id: doc.id.clone(),
            state: doc.state,
            weight: doc.weight,
            shed_ratio: doc.shed_ratio,
            shed_basis_points: ratio_to_basis_points(doc.shed_ratio),
            retry_after_s: doc.retry_after_s,
            failover,
            ramp,
            pool: 0,
            region: 0,
        });
    }
    // A failover chain must end: following it from any cell may not come
    // back. Each cell is walked once (a cell already known to reach the end of
    // its chain stops the walk), so a 65,535-cell chain costs O(n), not O(n²).
    const UNSEEN: u8 = 0;
    const ON_PATH: u8 = 1;
    const ENDS: u8 = 2;
    let mut mark = vec![UNSEEN; cells.len()];
    for start in 0..cells.len() {
        let mut chain: Vec<usize> = Vec::new();
        let mut current = start;
        loop {
            match mark.get(current).copied() {
                Some(UNSEEN) => {}
                Some(ON_PATH) => {
                    let names: Vec<&str> = chain
                        .iter()
                        .skip_while(|&&i| i != current)
                        .chain(std::iter::once(&current))
                        .filter_map(|&i| cells.get(i).map(|c: &Cell| c.id.as_str()))
                        .collect();
                    return Err(PathError::new(
                        format!("{}.failover", index_path("cells", current)),
                        format!("failover loop: {}", names.join(" → ")),
                    ));
                }
                _ => break,
            }
            if let Some(m) = mark.get_mut(current) {
                *m = ON_PATH;
            }
            chain.push(current);
            match cells.get(current).and_then(|c| c.failover) {
                Some(next) => current = usize::from(next),
                None => break,
            }
        }
        for i in chain {
            if let Some(m) = mark.get_mut(i) {
                *m = ENDS;
            }
        }
    }
    Ok(cells)
}

/// Decodes a base64 table of S little-endian u16 indexes, each below
/// `limit` (`what`: "cell" or "region"); errors at `path`.
pub(crate) fn decode_u16_table(
    b64: &str,
    slots: u32,
    limit: usize,
    path: &str,
    what: &str,
) -> Result<Vec<u16>, PathError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| {
            PathError::new(
                path,
                format!("invalid base64 (standard alphabet, padded): {e}"),
            )
        })?;
    let expected = slots as usize * 2;
    if bytes.len() != expected {
        return Err(PathError::new(
            path,
            format!(
                "decodes to {} bytes; hash.slots = {slots} needs {expected} (2 bytes a slot)",
                bytes.len()
            ),
        ));
    }
    let mut table = Vec::with_capacity(slots as usize);
    for (slot, pair) in bytes.chunks_exact(2).enumerate() {
        let index = match pair {
            [lo, hi] => u16::from_le_bytes([*lo, *hi]),
            _ => 0,
        };
        if usize::from(index) >= limit {
            return Err(PathError::new(
                path,
                format!(
                    "slot {slot} points at {what} index {index}, but there are {limit} {what}s"
                ),
            ));
        }
        table.push(index);
    }
    Ok(table)
}
