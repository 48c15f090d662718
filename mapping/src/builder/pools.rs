//! Format-2 builds: service pools and region homing (`SPEC.md`, "Builder",
//! "Pools and regions").
//!
//! A format-2 spec names regions (with weights), cells (each in one pool and
//! one region) and pools (match rules, overrides, moves). The build writes
//! - the **region table**: S slots shared among the regions by weight, the
//!   same largest-remainder quotas and fewest-moves assignment as cells get
//!   in format 1;
//! - per pool and region, a **slot table** of that pool's cells in that
//!   region. The region's own slots (those its tenants hash to) and the
//!   other slots (used only by tenants homed there by `region_overrides`)
//!   are shared separately, each by weight: allocated over all slots at
//!   once, a regular region table (`us eu us eu …`) and a regular cell
//!   interleaving (`a b a b …`) would alias and give one cell every tenant;
//! - **region pins**: a known tenant whose ring region would change keeps its
//!   previous home region through a `region_overrides` entry (re-homing is a
//!   data migration: only `rehome` does it);
//! - per pool, **pins** of known tenants whose cell would change, as in
//!   format 1, each inside the tenant's home region.
//!
//! Every pool and region is built from its own previous table only, so a
//! change to one pool's cells never moves a slot of another pool.

use super::load::Load;
use super::{CellReport, SpecHash, TenantMap, allocate_slots, object, objects};
use crate::error::{ObjectOnly, PathError, from_json_with_path, index_path, key_path};
use crate::hash::HashKey;
use crate::pools::{
    MAX_POOLS, MAX_REGIONS, MatchDoc, PoolDoc, PooledCellDoc, PooledSnapshotDoc, RegionDoc,
};
use crate::snapshot::{
    CellDoc, CellState, HASH_ALGORITHM, HashDoc, MAX_SLOTS, MoveDoc, Snapshot, encode_slot_table,
    validate_cells,
};
use crate::table::MAX_TENANT_BYTES;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use crate::pools::FORMAT_POOLS;

fn default_weight() -> f64 {
    1.0
}

fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    ObjectOnly::<T>::deserialize(deserializer).map(|o| Some(o.0))
}

/// The `format` field alone: which spec (or snapshot) shape the rest has.
/// Other fields are skipped here and checked by the real parse.
#[derive(Deserialize)]
struct FormatProbe {
    #[serde(default)]
    format: Option<u64>,
}

/// The format a spec or snapshot document declares: 1 without `format`.
pub fn document_format(bytes: &[u8]) -> Result<u8, PathError> {
    let probe = from_json_with_path::<ObjectOnly<FormatProbe>>(bytes)?.0;
    match probe.format {
        None | Some(1) => Ok(1),
        Some(2) => Ok(FORMAT_POOLS),
        Some(other) => Err(PathError::new(
            "$.format",
            format!("unknown format {other}; this build knows 1 (or no format) and 2"),
        )),
    }
}

/// A region in a spec: its id and its share of the region table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub id: String,
    /// The region's share of new tenants (by the region table), like a
    /// cell's weight. 0: no new tenants are homed there.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

/// A pool in a spec.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub id: String,
    /// None: the default pool (matches every request; last).
    #[serde(default, rename = "match", deserialize_with = "optional_object")]
    pub match_rule: Option<MatchDoc>,
    #[serde(default)]
    pub overrides: TenantMap,
    #[serde(default, deserialize_with = "objects")]
    pub moves: Vec<MoveDoc>,
}

/// A format-2 spec: the input of `cellmap build` with pools and regions.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsSpec {
    /// Always 2.
    pub format: u8,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(deserialize_with = "object")]
    pub hash: SpecHash,
    #[serde(deserialize_with = "objects")]
    pub regions: Vec<RegionSpec>,
    /// Tenant → home region, deliberate placements (data residency).
    #[serde(default)]
    pub region_overrides: TenantMap,
    #[serde(deserialize_with = "objects")]
    pub cells: Vec<PooledCellDoc>,
    #[serde(deserialize_with = "objects")]
    pub pools: Vec<PoolSpec>,
}

impl PoolsSpec {
    /// Parses a format-2 spec; errors name the JSON path.
    pub fn parse(bytes: &[u8]) -> Result<PoolsSpec, PathError> {
        let spec = from_json_with_path::<ObjectOnly<PoolsSpec>>(bytes)?.0;
        if spec.format != FORMAT_POOLS {
            return Err(PathError::new(
                "$.format",
                format!("a pools spec has format 2, got {}", spec.format),
            ));
        }
        Ok(spec)
    }
}

/// Decodes base64 of u16 LE, each below `limit`.
fn decode_table(b64: &str, slots: u32, limit: usize, path: &str) -> Result<Vec<u16>, PathError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| PathError::new(path, format!("invalid base64: {e}")))?;
    if bytes.len() != slots as usize * 2 {
        return Err(PathError::new(
            path,
            format!(
                "decodes to {} bytes, {slots} slots need {}",
                bytes.len(),
                slots * 2
            ),
        ));
    }
    let mut table = Vec::with_capacity(slots as usize);
    for pair in bytes.chunks_exact(2) {
        let v = match pair {
            [lo, hi] => u16::from_le_bytes([*lo, *hi]),
            _ => 0,
        };
        if usize::from(v) >= limit {
            return Err(PathError::new(
                path,
                format!("index {v} out of range (< {limit})"),
            ));
        }
        table.push(v);
    }
    Ok(table)
}

/// A format-2 snapshot with its tables decoded: the home region and home
/// cell of a tenant, by ids (the builder's and `diff`'s view; the router
/// uses [`Snapshot`]).
#[derive(Clone, Debug)]
pub struct PoolsView<'a> {
    pub doc: &'a PooledSnapshotDoc,
    pub key: HashKey,
    pub region_table: Vec<u16>,
    /// Per pool (document order), per region (document order): the table.
    pub tables: Vec<Vec<Vec<u16>>>,
}

/// Where a tenant is placed in one pool, before cell states apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub region: String,
    /// The cell (a move's `from` side: the cell that holds the tenant's data
    /// until the move completes).
    pub cell: String,
    /// `override`, `pin`, `move` or `slot`.
    pub source: &'static str,
}

impl<'a> PoolsView<'a> {
    /// Decodes the tables of a validated snapshot's owned form
    /// ([`Snapshot::to_pooled_doc`]).
    pub fn new(doc: &'a PooledSnapshotDoc) -> Result<PoolsView<'a>, PathError> {
        let key = HashKey::from_hex(&doc.hash.key).map_err(|e| PathError::new("$.hash.key", e))?;
        let slots = doc.hash.slots;
        let region_table = decode_table(
            &doc.region_table,
            slots,
            doc.regions.len(),
            "$.region_table",
        )?;
        let mut tables = Vec::with_capacity(doc.pools.len());
        for (p, pool) in doc.pools.iter().enumerate() {
            let mut per_region = Vec::with_capacity(doc.regions.len());
            for region in &doc.regions {
                let path = format!("{}.slot_tables", index_path("pools", p));
                let b64 = pool.slot_tables.get(&region.id).ok_or_else(|| {
                    PathError::new(&path, format!("no table for region {:?}", region.id))
                })?;
                per_region.push(decode_table(b64, slots, doc.cells.len(), &path)?);
            }
            tables.push(per_region);
        }
        Ok(PoolsView {
            doc,
            key,
            region_table,
            tables,
        })
    }

    pub fn slot(&self, tenant: &[u8]) -> usize {
        (self.key.hash(tenant) % self.region_table.len().max(1) as u64) as usize
    }

    /// The region the ring gives `slot`.
    pub fn ring_region(&self, slot: usize) -> Option<&'a str> {
        let r = self.region_table.get(slot)?;
        self.doc.regions.get(usize::from(*r)).map(|r| r.id.as_str())
    }

    /// `region_overrides[tenant]`, else the ring's region.
    pub fn home_region(&self, tenant: &str) -> Option<&'a str> {
        match self.doc.region_overrides.get(tenant) {
            Some(r) => Some(r.as_str()),
            None => self.ring_region(self.slot(tenant.as_bytes())),
        }
    }

    pub fn region_index(&self, id: &str) -> Option<usize> {
        self.doc.regions.iter().position(|r| r.id == id)
    }

    pub fn pool_index(&self, id: &str) -> Option<usize> {
        self.doc.pools.iter().position(|p| p.id == id)
    }

    /// The cell id at `slot` of pool `pool`'s table for `region`.
    pub fn table_cell(&self, pool: usize, region: usize, slot: usize) -> Option<&'a str> {
        let cell = self.tables.get(pool)?.get(region)?.get(slot)?;
        self.doc
            .cells
            .get(usize::from(*cell))
            .map(|c| c.id.as_str())
    }

    /// Where `tenant` is placed in pool `pool`.
    pub fn placement(&self, tenant: &str, pool: usize) -> Option<Placement> {
        let doc = self.doc.pools.get(pool)?;
        let region = self.home_region(tenant)?;
        let (cell, source) = if let Some(c) = doc.overrides.get(tenant) {
            (c.as_str(), "override")
        } else if let Some(c) = doc.pins.get(tenant) {
            (c.as_str(), "pin")
        } else if let Some(m) = doc.moves.iter().find(|m| m.tenant == tenant) {
            (m.from.as_str(), "move")
        } else {
            let r = self.region_index(region)?;
            (
                self.table_cell(pool, r, self.slot(tenant.as_bytes()))?,
                "slot",
            )
        };
        Some(Placement {
            region: region.to_string(),
            cell: cell.to_string(),
            source,
        })
    }
}

/// Inputs of a format-2 build besides the spec.
#[derive(Clone, Copy, Debug)]
pub struct PoolsBuildOptions<'a> {
    /// The snapshot in force. A format-1 one is read as one pool (the
    /// spec's default pool) in one region (the spec's first): see
    /// [`as_first_format_2`].
    pub previous: Option<&'a Snapshot>,
    /// Known tenant ids (`--tenants`): they keep their home region and, in
    /// every pool, their cell. `None`: not given. With a previous snapshot
    /// and a region table that changes, they are required.
    pub known_tenants: Option<&'a [String]>,
    /// Tenants the operator re-homes on purpose (`--rehome`): their home
    /// region follows the spec's `region_overrides`, else the ring.
    pub rehome: &'a BTreeSet<String>,
    /// Per-cell load figures: within each pool and region, active cells
    /// take slots by weight × headroom.
    pub load: Option<&'a Load>,
    pub generated_at: &'a str,
}

/// A region in a [`PoolsBuildReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionReport {
    pub id: String,
    pub weight: f64,
    /// Region-table slots before (None without a previous snapshot).
    pub slots_before: Option<u32>,
    pub slots_after: u32,
    /// `slots_after / S`: the share of new tenants homed here.
    pub share_after: f64,
    /// `region_overrides` entries naming the region (explicit and pins).
    pub region_overrides: usize,
}

/// One pool in one region.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolRegionReport {
    pub region: String,
    /// The region's own slots (those whose tenants are homed there by the
    /// ring): the cells' shares below are of these.
    pub home_slots: u32,
    /// Of the region's own slots, those whose cell changed (0 without a
    /// previous snapshot): the tenants routed by slot that move.
    pub slots_moved: u32,
    /// Cells of the pool in the region, in spec order; `slots_*` count
    /// the region's own slots, `share_after` is of them.
    pub cells: Vec<CellReport>,
}

/// One pool in a [`PoolsBuildReport`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoolReport {
    pub id: String,
    pub regions: Vec<PoolRegionReport>,
    pub pins: usize,
    pub pins_added: usize,
    pub pins_kept: usize,
    pub pins_released: usize,
    /// Known tenants whose cell changes but whose previous cell is gone.
    pub unpinnable: usize,
}

/// What a format-2 build did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PoolsBuildReport {
    pub format: u8,
    pub version: u64,
    pub slots: u32,
    /// Region-table slots whose region changed.
    pub region_slots_moved: u32,
    pub regions: Vec<RegionReport>,
    /// `region_overrides` entries written by the builder to keep a known
    /// tenant in its home region.
    pub region_pins: usize,
    pub region_pins_added: usize,
    pub region_pins_kept: usize,
    pub region_pins_released: usize,
    /// Tenants whose home region changed because of `rehome`.
    pub rehomed: usize,
    pub pools: Vec<PoolReport>,
    pub by_load: bool,
}

/// A built format-2 snapshot.
#[derive(Clone, Debug)]
pub struct PoolsBuild {
    pub doc: PooledSnapshotDoc,
    pub json: String,
    /// `json` parsed back and validated.
    pub snapshot: Snapshot,
    pub report: PoolsBuildReport,
}

fn check_tenant(tenant: &str, path: &dyn Fn() -> String) -> Result<(), PathError> {
    if tenant.is_empty() {
        return Err(PathError::new(path(), "tenant id must not be empty"));
    }
    if tenant.len() > MAX_TENANT_BYTES {
        return Err(PathError::new(
            path(),
            format!(
                "tenant id is {} bytes, more than the {MAX_TENANT_BYTES} allowed",
                tenant.len()
            ),
        ));
    }
    Ok(())
}

/// Ids unique, count in range; id → index.
fn unique_ids<'s>(
    ids: impl Iterator<Item = &'s str>,
    field: &str,
    max: usize,
) -> Result<HashMap<&'s str, usize>, PathError> {
    let mut out = HashMap::new();
    for (i, id) in ids.enumerate() {
        if id.is_empty() {
            return Err(PathError::new(
                format!("{}.id", index_path(field, i)),
                "must not be empty",
            ));
        }
        if out.insert(id, i).is_some() {
            return Err(PathError::new(
                format!("{}.id", index_path(field, i)),
                format!("duplicate id {id:?}"),
            ));
        }
    }
    if out.is_empty() || out.len() > max {
        return Err(PathError::new(
            key_path([field]),
            format!("needs 1 … {max} entries, got {}", out.len()),
        ));
    }
    Ok(out)
}

/// Slots of `table` in (`region`'s own, the others), ascending.
fn split_slots(region_table: &[u16], region: u16) -> (Vec<usize>, Vec<usize>) {
    let mut own = Vec::new();
    let mut other = Vec::new();
    for (slot, r) in region_table.iter().enumerate() {
        if *r == region {
            own.push(slot);
        } else {
            other.push(slot);
        }
    }
    (own, other)
}

/// A format-1 snapshot as the previous one of the first format-2 build: its
/// one region is the spec's first region and its one pool the spec's
/// default pool (the one without `match`, else the last). Its cells keep
/// their slots and its known tenants their cells where the spec puts those
/// cells in that pool and region, so moving to format 2 moves nobody.
fn as_first_format_2(previous: &Snapshot, spec: &PoolsSpec) -> PooledSnapshotDoc {
    let mut doc = previous.to_pooled_doc();
    let region = spec
        .regions
        .first()
        .map(|r| r.id.clone())
        .unwrap_or_default();
    let pool = spec
        .pools
        .iter()
        .rev()
        .find(|p| p.match_rule.is_none())
        .or(spec.pools.last())
        .map(|p| p.id.clone())
        .unwrap_or_default();
    for r in &mut doc.regions {
        r.id = region.clone();
    }
    for c in &mut doc.cells {
        c.region = region.clone();
        c.pool = pool.clone();
    }
    for p in &mut doc.pools {
        p.id = pool.clone();
        p.slot_tables = std::mem::take(&mut p.slot_tables)
            .into_values()
            .map(|t| (region.clone(), t))
            .collect();
    }
    doc
}

/// Builds a format-2 snapshot.
pub fn build_pools(
    spec: &PoolsSpec,
    options: &PoolsBuildOptions<'_>,
) -> Result<PoolsBuild, PathError> {
    if spec.format != FORMAT_POOLS {
        return Err(PathError::new("$.format", "a pools spec has format 2"));
    }
    if spec.hash.algorithm != HASH_ALGORITHM {
        return Err(PathError::new(
            "$.hash.algorithm",
            format!(
                "unknown algorithm {:?}; expected {HASH_ALGORITHM:?}",
                spec.hash.algorithm
            ),
        ));
    }
    let key = HashKey::from_hex(&spec.hash.key).map_err(|e| PathError::new("$.hash.key", e))?;
    let slots = spec.hash.slots;
    if slots == 0 || slots > MAX_SLOTS {
        return Err(PathError::new(
            "$.hash.slots",
            format!("must be between 1 and {MAX_SLOTS}, got {slots}"),
        ));
    }
    let region_of = unique_ids(
        spec.regions.iter().map(|r| r.id.as_str()),
        "regions",
        MAX_REGIONS,
    )?;
    let pool_of = unique_ids(spec.pools.iter().map(|p| p.id.as_str()), "pools", MAX_POOLS)?;
    let cell_docs: Vec<CellDoc> = spec.cells.iter().map(PooledCellDoc::cell).collect();
    validate_cells(&cell_docs)?;
    // (pool, region) of each cell.
    let mut placed = Vec::with_capacity(spec.cells.len());
    for (i, c) in spec.cells.iter().enumerate() {
        let path = index_path("cells", i);
        let p = *pool_of.get(c.pool.as_str()).ok_or_else(|| {
            PathError::new(format!("{path}.pool"), format!("unknown pool {:?}", c.pool))
        })?;
        let r = *region_of.get(c.region.as_str()).ok_or_else(|| {
            PathError::new(
                format!("{path}.region"),
                format!("unknown region {:?}", c.region),
            )
        })?;
        placed.push((p, r));
    }
    for (r, region) in spec.regions.iter().enumerate() {
        if !region.weight.is_finite() || region.weight < 0.0 {
            return Err(PathError::new(
                format!("{}.weight", index_path("regions", r)),
                format!("must be a finite number ≥ 0, got {}", region.weight),
            ));
        }
    }
    for (p, pool) in spec.pools.iter().enumerate() {
        for region in &spec.regions {
            let r = region_of.get(region.id.as_str()).copied();
            if !placed.iter().any(|&(cp, cr)| cp == p && Some(cr) == r) {
                return Err(PathError::new(
                    index_path("pools", p),
                    format!(
                        "pool {:?} has no cell in region {:?}: every pool needs at least one cell in every region",
                        pool.id, region.id
                    ),
                ));
            }
        }
    }
    for (tenant, region) in &spec.region_overrides.0 {
        let path = || key_path(["region_overrides", tenant.as_str()]);
        check_tenant(tenant, &path)?;
        if !region_of.contains_key(region.as_str()) {
            return Err(PathError::new(path(), format!("unknown region {region:?}")));
        }
    }
    for (p, pool) in spec.pools.iter().enumerate() {
        let base = index_path("pools", p);
        for tenant in pool.overrides.0.keys() {
            check_tenant(tenant, &|| {
                let mut path = format!("{base}.overrides");
                crate::error::push_key(&mut path, tenant);
                path
            })?;
        }
        for (i, m) in pool.moves.iter().enumerate() {
            check_tenant(&m.tenant, &|| format!("{base}.moves[{i}].tenant"))?;
        }
    }
    if let Some(load) = options.load {
        load.check_cells(&cell_docs, None, "spec")?;
    }

    let previous_doc = match options.previous {
        Some(prev) if prev.format() != FORMAT_POOLS => Some(as_first_format_2(prev, spec)),
        Some(prev) => Some(prev.to_pooled_doc()),
        None => None,
    };
    let previous = match &previous_doc {
        Some(doc) => {
            if HashKey::from_hex(&doc.hash.key).ok() != Some(key) {
                return Err(PathError::new(
                    "$.hash.key",
                    "differs from the previous snapshot's key; a new key would move every tenant (build without --previous to start over)",
                ));
            }
            if doc.hash.slots != slots {
                return Err(PathError::new(
                    "$.hash.slots",
                    format!(
                        "{slots} differs from the previous snapshot's {}; changing the slot count would move almost every tenant (build without --previous to start over)",
                        doc.hash.slots
                    ),
                ));
            }
            Some(PoolsView::new(doc).map_err(|e| {
                PathError::new(e.path, format!("{} (in the previous snapshot)", e.message))
            })?)
        }
        None => None,
    };

    // The region table: regions take slots like cells do.
    let region_cells: Vec<CellDoc> = spec
        .regions
        .iter()
        .map(|r| CellDoc {
            id: r.id.clone(),
            state: CellState::Active,
            weight: r.weight,
            shed_ratio: 0.0,
            retry_after_s: 0,
            failover: None,
            ramp: None,
        })
        .collect();
    let previous_regions: Option<Vec<Option<u16>>> = previous.as_ref().map(|prev| {
        let mapped: Vec<Option<u16>> = prev
            .doc
            .regions
            .iter()
            .map(|r| region_of.get(r.id.as_str()).map(|&i| i as u16))
            .collect();
        prev.region_table
            .iter()
            .map(|&r| mapped.get(usize::from(r)).copied().flatten())
            .collect()
    });
    if !spec.regions.iter().any(|r| r.weight > 0.0) {
        return Err(PathError::new(
            "$.regions",
            "no region has a weight above 0: new tenants need a home region",
        ));
    }
    let region_table = allocate_slots(slots, &region_cells, previous_regions.as_deref())
        .map_err(|e| PathError::new("$.regions", e.message))?;
    let region_id = |r: u16| spec.regions.get(usize::from(r)).map(|r| r.id.as_str());

    let mut report = PoolsBuildReport {
        format: FORMAT_POOLS,
        slots,
        by_load: options.load.is_some(),
        ..PoolsBuildReport::default()
    };
    if let Some(prev) = &previous_regions {
        report.region_slots_moved = region_table
            .iter()
            .zip(prev)
            .filter(|(n, o)| Some(**n) != **o)
            .count() as u32;
    }

    // Home regions: explicit overrides, region pins for known tenants the
    // ring would re-home, and deliberate re-homing.
    let mut region_overrides: BTreeMap<String, String> = spec.region_overrides.0.clone();
    // Tenant → (previous home, new home) for every tenant the build knows.
    let mut homes: BTreeMap<String, (String, String)> = BTreeMap::new();
    if let Some(prev) = &previous {
        if report.region_slots_moved > 0 && options.known_tenants.is_none() {
            return Err(PathError::new(
                "$.regions",
                format!(
                    "{} region-table slots change region: their tenants would be re-homed (a data migration); give the known tenants (--tenants) so that they keep their home region",
                    report.region_slots_moved
                ),
            ));
        }
        let mut known: BTreeSet<&str> = options
            .known_tenants
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .collect();
        known.extend(prev.doc.region_overrides.keys().map(String::as_str));
        for pool in &prev.doc.pools {
            known.extend(pool.overrides.keys().map(String::as_str));
            known.extend(pool.pins.keys().map(String::as_str));
            known.extend(pool.moves.iter().map(|m| m.tenant.as_str()));
        }
        // Tenants the spec places by name exist too: they keep their home
        // region like known tenants (else their override could land in
        // another region than their new home).
        for pool in &spec.pools {
            known.extend(pool.overrides.0.keys().map(String::as_str));
            known.extend(pool.moves.iter().map(|m| m.tenant.as_str()));
        }
        for rehome in options.rehome {
            known.insert(rehome.as_str());
        }
        let mut removed_region: Option<(String, String, usize)> = None;
        for tenant in known {
            if tenant.is_empty() || tenant.len() > MAX_TENANT_BYTES {
                continue;
            }
            let Some(before) = prev.home_region(tenant) else {
                continue;
            };
            let slot = prev.slot(tenant.as_bytes());
            let ring = region_table.get(slot).and_then(|&r| region_id(r));
            let explicit = spec.region_overrides.0.get(tenant).map(String::as_str);
            let was_override = prev.doc.region_overrides.contains_key(tenant);
            let after = if options.rehome.contains(tenant) {
                let after = explicit.or(ring).unwrap_or(before);
                if after != before {
                    report.rehomed += 1;
                }
                if explicit.is_none() {
                    region_overrides.remove(tenant);
                }
                after
            } else if let Some(explicit) = explicit {
                if explicit != before {
                    return Err(PathError::new(
                        key_path(["region_overrides", tenant]),
                        format!(
                            "tenant {tenant:?} is homed in {before}; re-homing it to {explicit} is a data migration: build with --rehome {tenant} once its data is in {explicit}"
                        ),
                    ));
                }
                explicit
            } else if ring == Some(before) {
                report.region_pins_released += usize::from(was_override);
                before
            } else if region_of.contains_key(before) {
                if was_override {
                    report.region_pins_kept += 1;
                } else {
                    report.region_pins_added += 1;
                }
                region_overrides.insert(tenant.to_string(), before.to_string());
                before
            } else {
                match &mut removed_region {
                    Some((_, _, n)) => *n += 1,
                    None => removed_region = Some((tenant.to_string(), before.to_string(), 1)),
                }
                continue;
            };
            homes.insert(tenant.to_string(), (before.to_string(), after.to_string()));
        }
        if let Some((tenant, region, n)) = removed_region {
            return Err(PathError::new(
                "$.regions",
                format!(
                    "region {region:?} is gone but {n} known tenants are homed there (first: {tenant:?}); re-homing is a data migration: keep the region, or re-home them on purpose with --rehome"
                ),
            ));
        }
    }
    report.region_pins = region_overrides
        .keys()
        .filter(|t| !spec.region_overrides.0.contains_key(*t))
        .count();

    // Per pool and region: the slot table.
    let mut previous_home_counts: Vec<Option<u32>> = vec![None; spec.regions.len()];
    if let Some(prev) = &previous_regions {
        for (r, count) in previous_home_counts.iter_mut().enumerate() {
            *count = Some(prev.iter().filter(|x| **x == Some(r as u16)).count() as u32);
        }
    }
    let mut tables: Vec<Vec<Vec<u16>>> = Vec::with_capacity(spec.pools.len());
    for (p, pool) in spec.pools.iter().enumerate() {
        let prev_pool = previous
            .as_ref()
            .and_then(|prev| Some((prev, prev.pool_index(&pool.id)?)));
        let mut per_region = Vec::with_capacity(spec.regions.len());
        let mut pool_report = PoolReport {
            id: pool.id.clone(),
            ..PoolReport::default()
        };
        for (r, region) in spec.regions.iter().enumerate() {
            let members: Vec<usize> = placed
                .iter()
                .enumerate()
                .filter(|(_, (cp, cr))| *cp == p && *cr == r)
                .map(|(i, _)| i)
                .collect();
            let local_of: HashMap<&str, u16> = members
                .iter()
                .enumerate()
                .filter_map(|(l, &g)| Some((spec.cells.get(g)?.id.as_str(), l as u16)))
                .collect();
            let weights: Vec<CellDoc> = members
                .iter()
                .filter_map(|&g| cell_docs.get(g))
                .map(|c| CellDoc {
                    weight: options.load.map_or(c.weight, |l| l.effective_weight(c)),
                    ..c.clone()
                })
                .collect();
            // The previous owner of each slot as a local index (None: gone,
            // or no longer in this pool and region).
            let prev_table: Option<Vec<Option<u16>>> = prev_pool.and_then(|(prev, pp)| {
                let pr = prev.region_index(&region.id)?;
                let table = prev.tables.get(pp)?.get(pr)?;
                let mapped: Vec<Option<u16>> = prev
                    .doc
                    .cells
                    .iter()
                    .map(|c| {
                        if c.pool == pool.id && c.region == region.id {
                            local_of.get(c.id.as_str()).copied()
                        } else {
                            None
                        }
                    })
                    .collect();
                Some(
                    table
                        .iter()
                        .map(|&c| mapped.get(usize::from(c)).copied().flatten())
                        .collect(),
                )
            });
            let (own, other) = split_slots(&region_table, r as u16);
            let mut table = vec![0u16; slots as usize];
            let mut own_local = Vec::new();
            for (is_own, part) in [(true, &own), (false, &other)] {
                let prev_part: Option<Vec<Option<u16>>> = prev_table
                    .as_ref()
                    .map(|t| part.iter().map(|&s| t.get(s).copied().flatten()).collect());
                let n = part.len() as u32;
                let local = if n == 0 {
                    Vec::new()
                } else {
                    allocate_slots(n, &weights, prev_part.as_deref()).map_err(|e| {
                        PathError::new(
                            index_path("pools", p),
                            format!(
                                "region {:?}: {}{}",
                                region.id,
                                e.message,
                                if options.load.is_some() {
                                    " (by load a cell at or over a threshold counts as weight 0)"
                                } else {
                                    ""
                                }
                            ),
                        )
                    })?
                };
                for (&slot, &l) in part.iter().zip(&local) {
                    if let (Some(t), Some(&g)) = (table.get_mut(slot), members.get(usize::from(l)))
                    {
                        *t = g as u16;
                    }
                }
                if is_own {
                    own_local = local;
                }
            }
            // Report over the region's own slots.
            let mut after = vec![0u32; members.len()];
            for &l in &own_local {
                if let Some(a) = after.get_mut(usize::from(l)) {
                    *a += 1;
                }
            }
            let before: Option<Vec<u32>> =
                prev_table
                    .as_ref()
                    .zip(previous_regions.as_ref())
                    .map(|(t, prev_regions)| {
                        let mut before = vec![0u32; members.len()];
                        for (slot, owner) in t.iter().enumerate() {
                            if prev_regions.get(slot).copied().flatten() == Some(r as u16)
                                && let Some(b) = owner.and_then(|l| before.get_mut(usize::from(l)))
                            {
                                *b += 1;
                            }
                        }
                        before
                    });
            // Of the region's own slots, those whose cell (by id) changed.
            let slots_moved = match prev_pool
                .and_then(|(prev, pp)| Some((prev, pp, prev.region_index(&region.id)?)))
            {
                Some((prev, pp, pr)) => own
                    .iter()
                    .filter(|&&s| {
                        let new = table
                            .get(s)
                            .and_then(|&g| spec.cells.get(usize::from(g)))
                            .map(|c| c.id.as_str());
                        new != prev.table_cell(pp, pr, s)
                    })
                    .count() as u32,
                None => 0,
            };
            let home_slots = own.len() as u32;
            let total = f64::from(home_slots.max(1));
            let cells = members
                .iter()
                .enumerate()
                .filter_map(|(l, &g)| {
                    let c = spec.cells.get(g)?;
                    let slots_after = after.get(l).copied().unwrap_or(0);
                    let slots_before = before.as_ref().map(|b| b.get(l).copied().unwrap_or(0));
                    let cell_load = options.load.and_then(|load| load.cell(&c.id));
                    Some(CellReport {
                        id: c.id.clone(),
                        state: c.state,
                        weight: c.weight,
                        slots_before,
                        slots_after,
                        share_before: slots_before
                            .zip(previous_home_counts.get(r).copied().flatten())
                            .map(|(n, h)| f64::from(n) / f64::from(h.max(1))),
                        share_after: f64::from(slots_after) / total,
                        headroom: cell_load.map(|l| l.headroom),
                        closed_by: cell_load.map(|l| l.closed_by.clone()).unwrap_or_default(),
                        pins: 0,
                        pins_added: 0,
                    })
                })
                .collect();
            pool_report.regions.push(PoolRegionReport {
                region: region.id.clone(),
                home_slots,
                slots_moved,
                cells,
            });
            per_region.push(table);
        }
        tables.push(per_region);
        report.pools.push(pool_report);
    }

    // Pins per pool: a known tenant whose cell in its (unchanged) home
    // region would change keeps its previous cell.
    let mut pools_pins: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); spec.pools.len()];
    if let Some(prev) = &previous {
        let known: BTreeSet<&str> = options
            .known_tenants
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .collect();
        for (p, pool) in spec.pools.iter().enumerate() {
            let Some(pp) = prev.pool_index(&pool.id) else {
                continue;
            };
            let Some(prev_pool) = prev.doc.pools.get(pp) else {
                continue;
            };
            let explicit: BTreeSet<&str> = pool
                .overrides
                .0
                .keys()
                .map(String::as_str)
                .chain(pool.moves.iter().map(|m| m.tenant.as_str()))
                .collect();
            let mut candidates: BTreeSet<&str> =
                prev_pool.pins.keys().map(String::as_str).collect();
            candidates.extend(known.iter().copied());
            let Some(pool_report) = report.pools.get_mut(p) else {
                continue;
            };
            let pins = pools_pins.get_mut(p);
            let Some(pins) = pins else { continue };
            let mut added_to: BTreeMap<String, usize> = BTreeMap::new();
            for tenant in candidates {
                let was_pinned = prev_pool.pins.contains_key(tenant);
                if tenant.is_empty() || tenant.len() > MAX_TENANT_BYTES || explicit.contains(tenant)
                {
                    pool_report.pins_released += usize::from(was_pinned);
                    continue;
                }
                // A deliberate override or move the spec no longer has: the
                // tenant follows the ring.
                if prev_pool.overrides.contains_key(tenant)
                    || prev_pool.moves.iter().any(|m| m.tenant == tenant)
                {
                    continue;
                }
                let Some((before, after)) = homes.get(tenant) else {
                    continue;
                };
                if before != after {
                    // Re-homed on purpose: placed afresh in the new region.
                    pool_report.pins_released += usize::from(was_pinned);
                    continue;
                }
                let Some(placement) = prev.placement(tenant, pp) else {
                    continue;
                };
                let slot = prev.slot(tenant.as_bytes());
                let Some(r) = region_of.get(after.as_str()).copied() else {
                    continue;
                };
                let ring_cell = tables
                    .get(p)
                    .and_then(|t| t.get(r))
                    .and_then(|t| t.get(slot))
                    .and_then(|&g| spec.cells.get(usize::from(g)))
                    .map(|c| c.id.as_str());
                let still_here = spec
                    .cells
                    .iter()
                    .any(|c| c.id == placement.cell && c.pool == pool.id && c.region == *after);
                if ring_cell == Some(placement.cell.as_str()) {
                    pool_report.pins_released += usize::from(was_pinned);
                } else if still_here {
                    if was_pinned {
                        pool_report.pins_kept += 1;
                    } else {
                        pool_report.pins_added += 1;
                        *added_to.entry(placement.cell.clone()).or_default() += 1;
                    }
                    pins.insert(tenant.to_string(), placement.cell);
                } else {
                    pool_report.unpinnable += 1;
                    pool_report.pins_released += usize::from(was_pinned);
                }
            }
            pool_report.pins = pins.len();
            let mut pins_to: BTreeMap<&str, usize> = BTreeMap::new();
            for cell in pins.values() {
                *pins_to.entry(cell.as_str()).or_default() += 1;
            }
            for region in &mut pool_report.regions {
                for cell in &mut region.cells {
                    cell.pins = pins_to.get(cell.id.as_str()).copied().unwrap_or(0);
                    cell.pins_added = added_to.get(&cell.id).copied().unwrap_or(0);
                }
            }
        }
    }

    let version = match options.previous {
        Some(prev) => prev.version().checked_add(1).ok_or_else(|| {
            PathError::new("$.version", "the previous snapshot's version is u64::MAX")
        })?,
        None => spec.version.unwrap_or(1),
    };
    report.version = version;
    let mut region_counts = vec![0u32; spec.regions.len()];
    for &r in &region_table {
        if let Some(c) = region_counts.get_mut(usize::from(r)) {
            *c += 1;
        }
    }
    report.regions = spec
        .regions
        .iter()
        .enumerate()
        .map(|(r, region)| {
            let after = region_counts.get(r).copied().unwrap_or(0);
            RegionReport {
                id: region.id.clone(),
                weight: region.weight,
                slots_before: previous_home_counts.get(r).copied().flatten(),
                slots_after: after,
                share_after: f64::from(after) / f64::from(slots.max(1)),
                region_overrides: region_overrides
                    .values()
                    .filter(|v| **v == region.id)
                    .count(),
            }
        })
        .collect();

    let doc = PooledSnapshotDoc {
        format: FORMAT_POOLS,
        version,
        generated_at: options.generated_at.to_string(),
        hash: HashDoc {
            algorithm: HASH_ALGORITHM.to_string(),
            key: key.to_hex(),
            slots,
        },
        regions: spec
            .regions
            .iter()
            .map(|r| RegionDoc { id: r.id.clone() })
            .collect(),
        region_table: encode_slot_table(&region_table),
        region_overrides,
        cells: spec.cells.clone(),
        pools: spec
            .pools
            .iter()
            .zip(tables)
            .zip(pools_pins)
            .map(|((pool, per_region), pins)| PoolDoc {
                id: pool.id.clone(),
                match_rule: pool.match_rule.clone(),
                slot_tables: spec
                    .regions
                    .iter()
                    .zip(&per_region)
                    .map(|(r, t)| (r.id.clone(), encode_slot_table(t)))
                    .collect(),
                overrides: pool.overrides.0.clone(),
                pins,
                moves: pool.moves.clone(),
            })
            .collect(),
    };
    let json = doc.to_json();
    // The spec's cells, pools and region overrides sit at the same paths in
    // the snapshot, so a refusal here still points into the spec.
    let snapshot = Snapshot::parse(json.as_bytes())?;
    Ok(PoolsBuild {
        doc,
        json,
        snapshot,
        report,
    })
}
