//! The control-plane builder: a spec (cells, weights, states, overrides,
//! moves) and optionally the previous snapshot → a new snapshot.
//!
//! Rules (`SPEC.md`, "Builder"):
//! - slot quotas by largest remainder over the *active* cells; draining and
//!   disabled cells keep exactly the slots they held and get no new ones, so a
//!   state change never moves a slot;
//! - with a previous snapshot only the slots that must move do: a removed
//!   cell's, and the fewest needed to reach the new quotas;
//! - known tenants whose cell would change because the ring changed are
//!   pinned to their previous cell;
//! - by load ([`build_with_load`], [`load`]), active cells take slots by
//!   weight × headroom, and a cell at or over a threshold takes none.
//!
//! [`drain`] plans the series of snapshots that moves a cell's tenants off
//! in small steps. The same inputs always give byte-identical output.

pub mod drain;
pub mod load;
pub mod pools;

use self::load::{Breach, Load};
use crate::error::{ObjectOnly, PathError, from_json_with_path, index_path, key_path};
use crate::hash::HashKey;
use crate::snapshot::{
    CellDoc, CellState, HASH_ALGORITHM, HashDoc, MAX_SLOTS, MoveDoc, Snapshot, SnapshotDoc,
    encode_slot_table, validate_cells,
};
use crate::table::{EntryKind, MAX_TENANT_BYTES};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::marker::PhantomData;

/// Slots when the spec does not say: 2^16 keeps each cell's share within
/// 1/65,536 of its weight and the table at 128 KiB (175 KB of base64).
pub const DEFAULT_SLOTS: u32 = 65_536;

fn default_slots() -> u32 {
    DEFAULT_SLOTS
}

fn default_algorithm() -> String {
    HASH_ALGORITHM.to_string()
}

/// `hash` in a spec: the key is required, the rest has defaults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecHash {
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    pub key: String,
    #[serde(default = "default_slots")]
    pub slots: u32,
}

/// What the control plane wants: the input of `cellmap build`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The snapshot version when there is no previous snapshot (default 1).
    /// With a previous snapshot the version is always the previous + 1.
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(deserialize_with = "object")]
    pub hash: SpecHash,
    #[serde(deserialize_with = "objects")]
    pub cells: Vec<CellDoc>,
    #[serde(default)]
    pub overrides: TenantMap,
    #[serde(default, deserialize_with = "objects")]
    pub moves: Vec<MoveDoc>,
}

impl Spec {
    /// Parses a spec; errors name the JSON path. Objects must be objects,
    /// a key may be written once, unknown fields are refused.
    pub fn parse(bytes: &[u8]) -> Result<Spec, PathError> {
        from_json_with_path::<ObjectOnly<Spec>>(bytes).map(|s| s.0)
    }
}

/// Tenant → cell. Unlike a plain map, a tenant written twice is an error
/// rather than silently the last one.
pub type TenantMap = UniqueMap<String>;

/// A JSON object read as a sorted map: only an object is accepted, and a key
/// written twice is refused at that key's path (a plain map would silently
/// keep the last one). Used for every map of the builder's inputs: the spec's
/// overrides and the load file's cells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniqueMap<V>(pub BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueMapVisitor(PhantomData))
    }
}

struct UniqueMapVisitor<V>(PhantomData<V>);

/// Reads one map value, failing (at that key's path) if the key was seen.
struct UniqueValue<V> {
    duplicate: bool,
    value: PhantomData<V>,
}

impl<'de, V: Deserialize<'de>> de::DeserializeSeed<'de> for UniqueValue<V> {
    type Value = V;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<V, D::Error> {
        let value = V::deserialize(deserializer)?;
        if self.duplicate {
            return Err(de::Error::custom(
                "appears more than once in this object (each key may be written once)",
            ));
        }
        Ok(value)
    }
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueMapVisitor<V> {
    type Value = UniqueMap<V>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueMap<V>, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let duplicate = out.contains_key(&key);
            let value = map.next_value_seed(UniqueValue {
                duplicate,
                value: PhantomData,
            })?;
            out.insert(key, value);
        }
        Ok(UniqueMap(out))
    }
}

/// `deserialize_with` for a struct field that must be a JSON object (a
/// derived struct alone would also take an array, fields by position).
pub(crate) fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    ObjectOnly::<T>::deserialize(deserializer).map(|o| o.0)
}

/// `deserialize_with` for an array of objects.
pub(crate) fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Vec::<ObjectOnly<T>>::deserialize(deserializer).map(|v| v.into_iter().map(|o| o.0).collect())
}

/// Inputs of a build besides the spec.
#[derive(Clone, Copy, Debug)]
pub struct BuildOptions<'a> {
    /// The snapshot in force: slots move as little as possible from it.
    pub previous: Option<&'a Snapshot>,
    /// Known tenant ids to keep in place (needs `previous`).
    pub known_tenants: &'a [String],
    /// `generated_at` of the new snapshot (an input, so builds reproduce).
    pub generated_at: &'a str,
}

/// What a build did, for the operator (`cellmap build` prints it, and
/// writes it as JSON with `--report-json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BuildReport {
    pub version: u64,
    pub slots: u32,
    /// Slots whose cell differs from the previous snapshot (0 without one).
    pub slots_moved: u32,
    /// Slots per cell, in spec order (in JSON: `cells[].slots_after`).
    #[serde(skip)]
    pub slots_per_cell: Vec<(String, u32)>,
    /// Pins in the new snapshot.
    pub pins: usize,
    /// Tenants newly pinned to their previous cell.
    pub pins_added: usize,
    /// Previous pins still needed.
    pub pins_kept: usize,
    /// Previous pins dropped: the ring gives the same cell again, or the spec
    /// now has an explicit override or move for the tenant.
    pub pins_released: usize,
    /// Tenants whose cell changes but could not be pinned because their
    /// previous cell was removed.
    pub unpinnable: usize,
    /// Each cell of the spec, in spec order.
    pub cells: Vec<CellReport>,
    /// Slots that changed hands, by (previous cell, new cell); a removed
    /// cell appears as `from`. Sorted by `from`, then `to`.
    pub slot_moves: Vec<SlotMove>,
    /// Whether new slots were shared by load (`--load`).
    pub by_load: bool,
}

/// One cell in a [`BuildReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellReport {
    pub id: String,
    pub state: CellState,
    pub weight: f64,
    /// Slots in the previous snapshot (None without one; 0 for a new cell).
    pub slots_before: Option<u32>,
    pub slots_after: u32,
    /// `slots_before / S`.
    pub share_before: Option<f64>,
    /// `slots_after / S`: the share of new tenants the cell receives.
    pub share_after: f64,
    /// With `--load`: the cell's headroom (None if the load file does not
    /// list it, as it may not for a draining or disabled cell).
    pub headroom: Option<f64>,
    /// With `--load`: the thresholds the cell meets or exceeds; not empty
    /// means the cell is closed to new tenants.
    pub closed_by: Vec<Breach>,
    /// Pins to this cell in the new snapshot.
    pub pins: usize,
    /// Of those, pins added by this build.
    pub pins_added: usize,
}

/// Slots that went from one cell to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotMove {
    pub from: String,
    pub to: String,
    pub slots: u32,
}

/// A built snapshot in all three forms.
#[derive(Clone, Debug)]
pub struct Build {
    pub doc: SnapshotDoc,
    /// `doc` serialised: exactly the bytes to write.
    pub json: String,
    /// `json` parsed back: the output is validated before anyone sees it.
    pub snapshot: Snapshot,
    pub report: BuildReport,
}

/// Builds a snapshot from a spec.
pub fn build(spec: &Spec, options: &BuildOptions<'_>) -> Result<Build, PathError> {
    build_placed(spec, options, None)
}

/// Builds a snapshot from a spec, sharing the slots among active cells by
/// `weight × headroom` from `load` instead of weight alone, so that new
/// tenants land in proportion to each cell's headroom and none on a cell at
/// or over a threshold (`SPEC.md`, "Placement by load"). Everything else is
/// as [`build`]: draining and disabled cells keep their slots, the fewest
/// slots move, and known tenants whose slot moves are pinned (give
/// `known_tenants` with `previous`, or the tenants of a closed cell move).
///
/// The load file must name only cells of the spec and give figures for every
/// active cell; its errors have paths into the load file
/// ([`Load::check_cells`], which callers may run first to tell the files
/// apart).
pub fn build_with_load(
    spec: &Spec,
    options: &BuildOptions<'_>,
    load: &Load,
) -> Result<Build, PathError> {
    load.check_cells(&spec.cells, None, "spec")?;
    build_placed(spec, options, Some(load))
}

fn build_placed(
    spec: &Spec,
    options: &BuildOptions<'_>,
    load: Option<&Load>,
) -> Result<Build, PathError> {
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
    validate_cells(&spec.cells)?;
    check_spec_tenants(spec)?;

    // The previous table in terms of the new cell indexes (None: removed).
    let previous = match options.previous {
        None => None,
        Some(prev) => {
            if prev.key() != key {
                return Err(PathError::new(
                    "$.hash.key",
                    "differs from the previous snapshot's key; a new key would move every tenant (build without --previous to start over)",
                ));
            }
            if prev.slot_table().len() != slots as usize {
                return Err(PathError::new(
                    "$.hash.slots",
                    format!(
                        "{slots} differs from the previous snapshot's {}; changing the slot count would move almost every tenant (build without --previous to start over)",
                        prev.slot_table().len()
                    ),
                ));
            }
            let new_index: HashMap<&str, u16> = spec
                .cells
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id.as_str(), i as u16))
                .collect();
            let mapped: Vec<Option<u16>> = prev
                .cells()
                .iter()
                .map(|c| new_index.get(c.id.as_str()).copied())
                .collect();
            Some(
                prev.slot_table()
                    .iter()
                    .map(|&old| mapped.get(usize::from(old)).copied().flatten())
                    .collect::<Vec<_>>(),
            )
        }
    };

    // By load, an active cell takes slots by weight × headroom: a closed
    // cell's quota is 0, so all its slots go to cells with headroom.
    let table = match load {
        None => allocate_slots(slots, &spec.cells, previous.as_deref())?,
        Some(load) => {
            let placing: Vec<CellDoc> = spec
                .cells
                .iter()
                .map(|c| CellDoc {
                    weight: load.effective_weight(c),
                    ..c.clone()
                })
                .collect();
            allocate_slots(slots, &placing, previous.as_deref()).map_err(|e| {
                PathError::new(
                    e.path,
                    format!(
                        "{}; by load an active cell takes new slots by weight × headroom, so a cell at or over a threshold counts as weight 0: add a cell or raise a threshold",
                        e.message
                    ),
                )
            })?
        }
    };

    let mut report = BuildReport {
        slots,
        by_load: load.is_some(),
        ..BuildReport::default()
    };
    if let Some(prev) = &previous {
        report.slots_moved = table
            .iter()
            .zip(prev)
            .filter(|(new, old)| Some(**new) != **old)
            .count() as u32;
    }
    let mut counts = vec![0u32; spec.cells.len()];
    for &cell in &table {
        if let Some(c) = counts.get_mut(usize::from(cell)) {
            *c += 1;
        }
    }
    report.slots_per_cell = spec
        .cells
        .iter()
        .zip(&counts)
        .map(|(c, &n)| (c.id.clone(), n))
        .collect();

    let mut pins_added_to = BTreeMap::new();
    let pins = match options.previous {
        Some(prev) => pin_tenants(
            spec,
            key,
            &table,
            prev,
            options.known_tenants,
            &mut report,
            &mut pins_added_to,
        ),
        None => BTreeMap::new(),
    };
    report.pins = pins.len();
    report.cells = cell_reports(
        spec,
        &counts,
        previous.as_deref(),
        load,
        &pins,
        &pins_added_to,
    );
    if let Some(prev) = options.previous {
        report.slot_moves = slot_moves(prev, &spec.cells, &table);
    }

    let version = match options.previous {
        Some(prev) => prev.version().checked_add(1).ok_or_else(|| {
            PathError::new("$.version", "the previous snapshot's version is u64::MAX")
        })?,
        None => spec.version.unwrap_or(1),
    };
    report.version = version;

    let doc = SnapshotDoc {
        version,
        generated_at: options.generated_at.to_string(),
        hash: HashDoc {
            algorithm: HASH_ALGORITHM.to_string(),
            key: key.to_hex(),
            slots,
        },
        cells: spec.cells.clone(),
        slot_table: encode_slot_table(&table),
        overrides: spec.overrides.0.clone(),
        pins,
        moves: spec.moves.clone(),
    };
    let json = doc.to_json();
    // The spec's overrides, moves and cells sit at the same paths in the
    // snapshot, so a refusal here still points into the spec.
    let snapshot = Snapshot::parse(json.as_bytes())?;
    Ok(Build {
        doc,
        json,
        snapshot,
        report,
    })
}

/// Per-cell lines of the report.
fn cell_reports(
    spec: &Spec,
    counts: &[u32],
    previous: Option<&[Option<u16>]>,
    load: Option<&Load>,
    pins: &BTreeMap<String, String>,
    pins_added_to: &BTreeMap<String, usize>,
) -> Vec<CellReport> {
    let total = f64::from(spec.hash.slots.max(1));
    let held = previous.map(|prev| {
        let mut held = vec![0u32; spec.cells.len()];
        for cell in prev.iter().flatten() {
            if let Some(h) = held.get_mut(usize::from(*cell)) {
                *h += 1;
            }
        }
        held
    });
    let mut pins_to: BTreeMap<&str, usize> = BTreeMap::new();
    for cell in pins.values() {
        *pins_to.entry(cell.as_str()).or_default() += 1;
    }
    spec.cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let slots_before = held.as_ref().map(|h| h.get(i).copied().unwrap_or(0));
            let slots_after = counts.get(i).copied().unwrap_or(0);
            let cell_load = load.and_then(|l| l.cell(&c.id));
            CellReport {
                id: c.id.clone(),
                state: c.state,
                weight: c.weight,
                slots_before,
                slots_after,
                share_before: slots_before.map(|n| f64::from(n) / total),
                share_after: f64::from(slots_after) / total,
                headroom: cell_load.map(|l| l.headroom),
                closed_by: cell_load.map(|l| l.closed_by.clone()).unwrap_or_default(),
                pins: pins_to.get(c.id.as_str()).copied().unwrap_or(0),
                pins_added: pins_added_to.get(&c.id).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// Slots that changed hands, counted by (previous cell id, new cell id).
pub(crate) fn slot_moves(previous: &Snapshot, cells: &[CellDoc], table: &[u16]) -> Vec<SlotMove> {
    let mut pairs: HashMap<(u16, u16), u32> = HashMap::new();
    for (&old, &new) in previous.slot_table().iter().zip(table) {
        let old_id = previous.cell(old).map(|c| c.id.as_str());
        let new_id = cells.get(usize::from(new)).map(|c| c.id.as_str());
        if old_id != new_id {
            *pairs.entry((old, new)).or_default() += 1;
        }
    }
    let mut moves: Vec<SlotMove> = pairs
        .into_iter()
        .map(|((old, new), slots)| SlotMove {
            from: previous.cell(old).map(|c| c.id.clone()).unwrap_or_default(),
            to: cells
                .get(usize::from(new))
                .map(|c| c.id.clone())
                .unwrap_or_default(),
            slots,
        })
        .collect();
    moves.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    moves
}

/// Checks what `Snapshot::parse` would only report after the slot work:
/// overrides and moves name known cells, tenant ids are storable, no tenant
/// is both overridden and moved.
fn check_spec_tenants(spec: &Spec) -> Result<(), PathError> {
    let ids: BTreeSet<&str> = spec.cells.iter().map(|c| c.id.as_str()).collect();
    let check_tenant = |tenant: &str, path: &dyn Fn() -> String| -> Result<(), PathError> {
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
    };
    for (tenant, cell) in &spec.overrides.0 {
        let path = || key_path(["overrides", tenant.as_str()]);
        check_tenant(tenant, &path)?;
        if !ids.contains(cell.as_str()) {
            return Err(PathError::new(path(), format!("unknown cell {cell:?}")));
        }
    }
    let mut moved = BTreeSet::new();
    for (i, m) in spec.moves.iter().enumerate() {
        let path = index_path("moves", i);
        check_tenant(&m.tenant, &|| format!("{path}.tenant"))?;
        for (field, cell) in [("from", &m.from), ("to", &m.to)] {
            if !ids.contains(cell.as_str()) {
                return Err(PathError::new(
                    format!("{path}.{field}"),
                    format!("unknown cell {cell:?}"),
                ));
            }
        }
        if spec.overrides.0.contains_key(&m.tenant) || !moved.insert(m.tenant.as_str()) {
            return Err(PathError::new(
                format!("{path}.tenant"),
                format!(
                    "tenant {:?} appears more than once in overrides and moves",
                    m.tenant
                ),
            ));
        }
    }
    Ok(())
}

/// Slots each cell may own.
///
/// Draining and disabled cells keep exactly what they held (`held`); the
/// remaining slots R go to active cells by weight, largest remainder: each
/// gets ⌊R·w/W⌋ or ⌈R·w/W⌉. The ceilings go first to cells that already hold
/// at least the ceiling (so the fewest slots move), then by largest
/// remainder, then in spec order.
pub fn slot_quotas(slots: u32, cells: &[CellDoc], held: &[u32]) -> Result<Vec<u32>, PathError> {
    let held_at = |i: usize| held.get(i).copied().unwrap_or(0);
    let mut quotas = vec![0u32; cells.len()];
    let mut kept: u64 = 0;
    for (i, cell) in cells.iter().enumerate() {
        if cell.state != CellState::Active
            && let Some(q) = quotas.get_mut(i)
        {
            *q = held_at(i);
            kept += u64::from(held_at(i));
        }
    }
    let remaining = u64::from(slots).saturating_sub(kept);
    if remaining == 0 {
        return Ok(quotas);
    }
    let active: Vec<usize> = cells
        .iter()
        .enumerate()
        .filter(|(_, c)| c.state == CellState::Active)
        .map(|(i, _)| i)
        .collect();
    let weights = integer_weights(
        &active
            .iter()
            .filter_map(|&i| cells.get(i).map(|c| c.weight))
            .collect::<Vec<_>>(),
    );
    let total: u128 = weights.iter().sum();
    if total == 0 {
        return Err(PathError::new(
            "$.cells",
            format!(
                "no active cell with a weight above 0, but {remaining} slots need an owner (draining and disabled cells take no new slots)"
            ),
        ));
    }
    let r = u128::from(remaining);
    let mut assigned: u128 = 0;
    // (cell, floor, remainder numerator over `total`)
    let mut shares = Vec::with_capacity(active.len());
    for (&i, &w) in active.iter().zip(&weights) {
        let floor = r * w / total;
        let rem = r * w % total;
        assigned += floor;
        shares.push((i, floor, rem));
    }
    let extra = usize::try_from(r - assigned).unwrap_or(usize::MAX);
    let mut candidates: Vec<(usize, u128, u128)> = shares
        .iter()
        .copied()
        .filter(|&(_, _, rem)| rem > 0)
        .collect();
    candidates.sort_by(|a, b| {
        let holds_ceiling = |&(i, floor, _): &(usize, u128, u128)| u128::from(held_at(i)) > floor;
        holds_ceiling(b)
            .cmp(&holds_ceiling(a))
            .then(b.2.cmp(&a.2))
            .then(a.0.cmp(&b.0))
    });
    let ceiling: BTreeSet<usize> = candidates.iter().take(extra).map(|c| c.0).collect();
    for (i, floor, _) in shares {
        if let Some(q) = quotas.get_mut(i) {
            let quota = floor + u128::from(ceiling.contains(&i));
            *q = u32::try_from(quota).unwrap_or(u32::MAX);
        }
    }
    Ok(quotas)
}

/// Weights as integers with the same ratios: scaled by a power of two so the
/// largest lands in [2^62, 2^63). Scaling by a power of two is exact, so
/// every weight within ~2^10 of the largest keeps its exact value and the
/// quotas are computed exactly; much smaller weights are rounded to the
/// nearest 2^-62 of the largest.
fn integer_weights(weights: &[f64]) -> Vec<u128> {
    let max = weights
        .iter()
        .copied()
        .filter(|w| w.is_finite() && *w > 0.0)
        .fold(0.0f64, f64::max);
    if max == 0.0 {
        return vec![0; weights.len()];
    }
    let bits = max.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let exponent = if biased == 0 {
        // Subnormal: value = mantissa · 2^-1074.
        let mantissa = bits & ((1 << 52) - 1);
        -1074 + 63 - mantissa.leading_zeros() as i32
    } else {
        biased - 1023
    };
    let shift = 62 - exponent;
    // Two steps so that neither factor overflows for extreme exponents.
    let half = shift / 2;
    let (a, b) = (2f64.powi(half), 2f64.powi(shift - half));
    weights
        .iter()
        .map(|&w| {
            if w.is_finite() && w > 0.0 {
                ((w * a) * b).round() as u64 as u128
            } else {
                0
            }
        })
        .collect()
}

/// The new slot table.
///
/// `previous` is the previous table with each slot's owner as a new cell
/// index (None: that cell was removed). Every slot whose owner is still
/// present and within its quota stays; the freed ones (a removed cell's, an
/// over-quota cell's highest slots) go in ascending order to the cell missing
/// the largest fraction of its quota, ties to the lower index. Without a previous
/// table every slot is free.
pub fn allocate_slots(
    slots: u32,
    cells: &[CellDoc],
    previous: Option<&[Option<u16>]>,
) -> Result<Vec<u16>, PathError> {
    let n = slots as usize;
    let mut held = vec![0u32; cells.len()];
    if let Some(prev) = previous {
        for cell in prev.iter().flatten() {
            if let Some(h) = held.get_mut(usize::from(*cell)) {
                *h += 1;
            }
        }
    }
    let quotas = slot_quotas(slots, cells, &held)?;

    let mut owner: Vec<Option<u16>> = vec![None; n];
    let mut filled = vec![0u32; cells.len()];
    if let Some(prev) = previous {
        for (slot, cell) in owner.iter_mut().zip(prev) {
            let Some(cell) = *cell else { continue };
            let i = usize::from(cell);
            if let (Some(f), Some(q)) = (filled.get_mut(i), quotas.get(i))
                && *f < *q
            {
                *f += 1;
                *slot = Some(cell);
            }
        }
    }

    let mut needs: BinaryHeap<Need> = quotas
        .iter()
        .zip(&filled)
        .enumerate()
        .filter(|(_, (q, f))| q > f)
        .map(|(i, (q, f))| Need {
            deficit: q - f,
            quota: *q,
            cell: i as u16,
        })
        .collect();
    let mut table = Vec::with_capacity(n);
    for slot in owner {
        let cell = match slot {
            Some(cell) => cell,
            None => {
                let Some(need) = needs.pop() else {
                    // Quotas sum to the slot count, so this is unreachable;
                    // refuse rather than write a wrong table.
                    return Err(PathError::new(
                        "$.cells",
                        "internal error: slot quotas do not cover every slot",
                    ));
                };
                if need.deficit > 1 {
                    needs.push(Need {
                        deficit: need.deficit - 1,
                        ..need
                    });
                }
                need.cell
            }
        };
        table.push(cell);
    }
    Ok(table)
}

/// A cell still short of its quota. The most urgent is the one missing the
/// largest fraction of its quota (so cells interleave evenly over the free
/// slots), ties to the lower index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Need {
    deficit: u32,
    quota: u32,
    cell: u16,
}

impl Ord for Need {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let mine = u64::from(self.deficit) * u64::from(other.quota);
        let theirs = u64::from(other.deficit) * u64::from(self.quota);
        mine.cmp(&theirs).then(other.cell.cmp(&self.cell))
    }
}

impl PartialOrd for Need {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Pins for the new snapshot: previous pins still needed, and known tenants
/// the ring would move, each to its previous cell.
fn pin_tenants(
    spec: &Spec,
    key: HashKey,
    table: &[u16],
    previous: &Snapshot,
    known: &[String],
    report: &mut BuildReport,
    added_to: &mut BTreeMap<String, usize>,
) -> BTreeMap<String, String> {
    let explicit: BTreeSet<&str> = spec
        .overrides
        .0
        .keys()
        .map(String::as_str)
        .chain(spec.moves.iter().map(|m| m.tenant.as_str()))
        .collect();
    let new_ids: BTreeSet<&str> = spec.cells.iter().map(|c| c.id.as_str()).collect();
    let previous_pins = previous.pins();
    let mut candidates: BTreeSet<&str> = previous_pins.keys().map(String::as_str).collect();
    candidates.extend(known.iter().map(String::as_str));

    let mut pins = BTreeMap::new();
    for tenant in candidates {
        let was_pinned = previous_pins.contains_key(tenant);
        let bytes = tenant.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_TENANT_BYTES || explicit.contains(tenant) {
            report.pins_released += usize::from(was_pinned);
            continue;
        }
        let h = key.hash(bytes);
        let slot = (h % table.len().max(1) as u64) as usize;
        let previous_home = match previous.tenant_table().get(bytes, h) {
            // An explicit override or move the spec no longer has: a
            // deliberate migration, so the tenant follows the ring.
            Some((EntryKind::Override | EntryKind::Move, _)) => continue,
            Some((EntryKind::Pin, cell)) => cell,
            None => previous.slot_table().get(slot).copied().unwrap_or(0),
        };
        let Some(previous_home) = previous.cell(previous_home).map(|c| c.id.as_str()) else {
            continue;
        };
        let ring_home = table
            .get(slot)
            .and_then(|&c| spec.cells.get(usize::from(c)))
            .map(|c| c.id.as_str());
        if ring_home == Some(previous_home) {
            report.pins_released += usize::from(was_pinned);
        } else if new_ids.contains(previous_home) {
            if was_pinned {
                report.pins_kept += 1;
            } else {
                report.pins_added += 1;
                *added_to.entry(previous_home.to_string()).or_default() += 1;
            }
            pins.insert(tenant.to_string(), previous_home.to_string());
        } else {
            report.unpinnable += 1;
            report.pins_released += usize::from(was_pinned);
        }
    }
    pins
}

/// Reads a known-tenants file: one tenant id per line, exactly as the router
/// receives it (only the line ending, `\n` or `\r\n`, is removed); blank lines
/// are skipped. Errors name the line.
pub fn parse_known_tenants(text: &str) -> Result<Vec<String>, String> {
    let mut tenants = Vec::new();
    for (number, line) in text.split('\n').enumerate() {
        let tenant = line.strip_suffix('\r').unwrap_or(line);
        if tenant.is_empty() {
            continue;
        }
        if tenant.len() > MAX_TENANT_BYTES {
            return Err(format!(
                "line {}: tenant id is {} bytes, more than the {MAX_TENANT_BYTES} allowed",
                number + 1,
                tenant.len()
            ));
        }
        tenants.push(tenant.to_string());
    }
    Ok(tenants)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(id: &str, weight: f64, state: CellState) -> CellDoc {
        CellDoc {
            id: id.into(),
            state,
            weight,
            shed_ratio: 0.0,
            retry_after_s: 5,
            failover: None,
            ramp: None,
        }
    }

    #[test]
    fn integer_weights_are_exact_for_ordinary_weights() {
        assert_eq!(
            integer_weights(&[1.0, 2.0, 0.5]),
            vec![1 << 61, 1 << 62, 1 << 60]
        );
        let w = integer_weights(&[0.1, 0.2, 0.7]);
        assert!(w.iter().all(|&x| x > 0));
        assert_eq!(integer_weights(&[0.0, 0.0]), vec![0, 0]);
        // Extreme ranges do not overflow.
        let w = integer_weights(&[f64::MAX, 1.0, 5e-324]);
        assert_eq!(w[0], (f64::MAX * 2f64.powi(-961)) as u128);
        assert_eq!(w[1], 0);
        assert_eq!(integer_weights(&[5e-324]), vec![1 << 62]);
    }

    #[test]
    fn quotas_prefer_cells_already_at_the_ceiling() {
        let cells = vec![
            cell("a", 1.0, CellState::Active),
            cell("b", 1.0, CellState::Active),
            cell("c", 1.0, CellState::Active),
        ];
        // 10 slots by 3: 3.33 each, one ceiling. Without history, spec order.
        assert_eq!(slot_quotas(10, &cells, &[]).unwrap(), vec![4, 3, 3]);
        // c already holds 4: it keeps the ceiling, nothing moves needlessly.
        assert_eq!(slot_quotas(10, &cells, &[3, 3, 4]).unwrap(), vec![3, 3, 4]);
    }

    #[test]
    fn quotas_keep_draining_cells_where_they_were() {
        let cells = vec![
            cell("a", 1.0, CellState::Draining),
            cell("b", 1.0, CellState::Active),
            cell("c", 3.0, CellState::Active),
        ];
        assert_eq!(
            slot_quotas(100, &cells, &[40, 30, 30]).unwrap(),
            vec![40, 15, 45]
        );
        assert_eq!(slot_quotas(100, &cells, &[]).unwrap(), vec![0, 25, 75]);
    }

    #[test]
    fn quotas_need_an_active_owner() {
        let cells = vec![
            cell("a", 1.0, CellState::Disabled),
            cell("b", 0.0, CellState::Active),
        ];
        let err = slot_quotas(8, &cells, &[]).unwrap_err();
        assert_eq!(err.path, "$.cells");
        // Every slot already held by the disabled cell: nothing needs an owner.
        assert_eq!(slot_quotas(8, &cells, &[8, 0]).unwrap(), vec![8, 0]);
    }

    #[test]
    fn known_tenant_lines() {
        assert_eq!(
            parse_known_tenants("a\r\nb\n\n c \n").unwrap(),
            vec!["a", "b", " c "]
        );
        assert!(parse_known_tenants(&"x".repeat(MAX_TENANT_BYTES + 1)).is_err());
    }
}
