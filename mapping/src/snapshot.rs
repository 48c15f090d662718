//! The mapping snapshot: its JSON form, validation, and the indexed form the
//! router resolves against. `SPEC.md` is the contract; this is its reference
//! implementation.

use crate::error::{ObjectOnly, PathError, index_path, key_path, push_key};
use crate::hash::{HashKey, ratio_to_basis_points};
use crate::ramp::{Ramp, RampDoc};
use crate::table::{EntryKind, TenantTable};
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
#[derive(Clone, Debug)]
pub struct Snapshot {
    version: u64,
    generated_at: String,
    key: HashKey,
    cells: Vec<Cell>,
    slot_table: Vec<u16>,
    tenants: TenantTable,
    moves: Vec<Move>,
}

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

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn generated_at(&self) -> &str {
        &self.generated_at
    }

    pub fn key(&self) -> HashKey {
        self.key
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

    pub fn slot_table(&self) -> &[u16] {
        &self.slot_table
    }

    pub fn moves(&self) -> &[Move] {
        &self.moves
    }

    /// Number of overrides, pins and moves.
    pub fn tenant_entries(&self) -> usize {
        self.tenants.len()
    }

    /// Every override, pin and move target, in document order.
    pub fn tenant_table(&self) -> &TenantTable {
        &self.tenants
    }

    /// Explicit overrides as owned pairs (for diff and the builder).
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.entries_of(EntryKind::Override)
    }

    /// Builder pins as owned pairs.
    pub fn pins(&self) -> BTreeMap<String, String> {
        self.entries_of(EntryKind::Pin)
    }

    fn entries_of(&self, kind: EntryKind) -> BTreeMap<String, String> {
        self.tenants
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
        self.tenants.heap_bytes()
            + self.slot_table.capacity() * 2
            + self.cells.capacity() * std::mem::size_of::<Cell>()
            + self.cells.iter().map(|c| c.id.capacity()).sum::<usize>()
            + self.moves.capacity() * std::mem::size_of::<Move>()
    }

    /// Assembles a snapshot from parts the caller has validated (the binary
    /// form, `crate::binary`).
    pub(crate) fn from_parts(
        version: u64,
        generated_at: String,
        key: HashKey,
        cells: Vec<Cell>,
        slot_table: Vec<u16>,
        tenants: TenantTable,
        moves: Vec<Move>,
    ) -> Snapshot {
        Snapshot {
            version,
            generated_at,
            key,
            cells,
            slot_table,
            tenants,
            moves,
        }
    }

    /// The owned document form (for the builder and `cellmap` output).
    pub fn to_doc(&self) -> SnapshotDoc {
        let id = |i: u16| self.cell(i).map(|c| c.id.clone()).unwrap_or_default();
        SnapshotDoc {
            version: self.version,
            generated_at: self.generated_at.clone(),
            hash: HashDoc {
                algorithm: HASH_ALGORITHM.to_string(),
                key: self.key.to_hex(),
                slots: self.slot_table.len() as u32,
            },
            cells: self
                .cells
                .iter()
                .map(|c| CellDoc {
                    id: c.id.clone(),
                    state: c.state,
                    weight: c.weight,
                    shed_ratio: c.shed_ratio,
                    retry_after_s: c.retry_after_s,
                    failover: c.failover.map(id),
                    ramp: c.ramp.as_ref().map(|r| r.doc.clone()),
                })
                .collect(),
            slot_table: encode_slot_table(&self.slot_table),
            overrides: self.overrides(),
            pins: self.pins(),
            moves: self
                .moves
                .iter()
                .map(|m| MoveDoc {
                    tenant: m.tenant.clone(),
                    from: id(m.from),
                    to: id(m.to),
                    percent: m.percent,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing. The top level is visited by hand so that `overrides` and `pins`
// stream straight into one compact table, whatever order the fields come in:
// a million-override snapshot never exists as a million `String`s.

/// Cell names as seen in overrides and pins before `cells` is known.
#[derive(Default)]
struct CellNames {
    ids: HashMap<String, u16>,
    names: Vec<String>,
}

impl CellNames {
    fn intern(&mut self, name: &str) -> Result<u16, String> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = u16::try_from(self.names.len()).map_err(|_| "too many distinct cell names")?;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        Ok(id)
    }
}

#[derive(Default)]
struct RawSnapshot {
    version: Option<u64>,
    generated_at: Option<String>,
    hash: Option<HashDoc>,
    cells: Option<Vec<CellDoc>>,
    slot_table: Option<String>,
    moves: Vec<MoveDoc>,
    tenants: TenantTable,
    names: CellNames,
    /// The first tenant that could not be stored, with its path and why.
    tenant_error: Option<PathError>,
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
];

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
        let mut seen = [false; 8];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            // Refusals go through `next_value_seed` so the error path names
            // the field (`$.colour`), as it does for nested objects.
            let Some(pos) = FIELDS.iter().position(|f| *f == key.as_ref()) else {
                return map.next_value_seed(Refuse(RefuseReason::Unknown(&key)));
            };
            if let Some(flag) = seen.get_mut(pos) {
                if *flag {
                    return map.next_value_seed(Refuse(RefuseReason::Duplicate(&key)));
                }
                *flag = true;
            }
            match key.as_ref() {
                "version" => raw.version = Some(map.next_value()?),
                "generated_at" => raw.generated_at = Some(map.next_value()?),
                // Objects only: a derived struct would also take an array.
                "hash" => raw.hash = Some(map.next_value::<ObjectOnly<HashDoc>>()?.0),
                "cells" => {
                    let cells: Vec<ObjectOnly<CellDoc>> = map.next_value()?;
                    raw.cells = Some(cells.into_iter().map(|c| c.0).collect());
                }
                "slot_table" => raw.slot_table = Some(map.next_value()?),
                "moves" => {
                    let moves: Vec<ObjectOnly<MoveDoc>> = map.next_value()?;
                    raw.moves = moves.into_iter().map(|m| m.0).collect();
                }
                "overrides" | "pins" => {
                    let kind = if key == "pins" {
                        EntryKind::Pin
                    } else {
                        EntryKind::Override
                    };
                    map.next_value_seed(TenantMapSeed {
                        raw: &mut raw,
                        kind,
                        field: if kind == EntryKind::Pin {
                            "pins"
                        } else {
                            "overrides"
                        },
                    })?;
                }
                _ => return Err(de::Error::unknown_field(&key, FIELDS)),
            }
        }
        Ok(raw)
    }
}

enum RefuseReason<'a> {
    Unknown(&'a str),
    Duplicate(&'a str),
}

/// A value seed that fails without reading, with the reason.
struct Refuse<'a>(RefuseReason<'a>);

impl<'de> DeserializeSeed<'de> for Refuse<'_> {
    type Value = RawSnapshot;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<RawSnapshot, D::Error> {
        Err(match self.0 {
            RefuseReason::Unknown(key) => de::Error::unknown_field(key, FIELDS),
            RefuseReason::Duplicate(key) => de::Error::custom(format!("duplicate field `{key}`")),
        })
    }
}

struct TenantMapSeed<'a> {
    raw: &'a mut RawSnapshot,
    kind: EntryKind,
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
        f.write_str("an object of tenant id → cell id")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Reserve, never replace: `overrides` and `pins` share one table.
        if let Some(n) = map.size_hint() {
            self.raw.tenants.reserve(n, n.saturating_mul(16));
        }
        while let Some(tenant) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let cell = map.next_value::<std::borrow::Cow<'de, str>>()?;
            let name = self.raw.names.intern(&cell).map_err(de::Error::custom)?;
            if let Err(err) = self.raw.tenants.push(tenant.as_bytes(), self.kind, name)
                && self.raw.tenant_error.is_none()
            {
                self.raw.tenant_error = Some(PathError::new(
                    key_path([self.field, tenant.as_ref()]),
                    err.to_string(),
                ));
            }
        }
        Ok(())
    }
}

fn missing(field: &str) -> PathError {
    PathError::new(key_path([field]), "missing field")
}

fn check_cell_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("cell id must not be empty".into());
    }
    if id.len() > MAX_CELL_ID_BYTES {
        return Err(format!("cell id is longer than {MAX_CELL_ID_BYTES} bytes"));
    }
    // Sent as a header value and used in metric names: keep it to a safe set.
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "cell id {id:?} has {bad:?}; only ASCII letters, digits and - _ . : are allowed"
        ));
    }
    Ok(())
}

impl RawSnapshot {
    fn validate(self) -> Result<Snapshot, PathError> {
        let version = self.version.ok_or_else(|| missing("version"))?;
        let generated_at = self.generated_at.ok_or_else(|| missing("generated_at"))?;
        let hash = self.hash.ok_or_else(|| missing("hash"))?;
        let cell_docs = self.cells.ok_or_else(|| missing("cells"))?;
        let slot_table_b64 = self.slot_table.ok_or_else(|| missing("slot_table"))?;

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

        let cells = validate_cells(&cell_docs)?;
        let slot_table = decode_slot_table(&slot_table_b64, hash.slots, cells.len())?;

        let index_of: HashMap<&str, u16> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i as u16))
            .collect();

        if let Some(err) = self.tenant_error {
            return Err(err);
        }
        let mut tenants = self.tenants;
        // Interned names → cell indexes; remember the first unknown name.
        let resolved: Vec<Option<u16>> = self
            .names
            .names
            .iter()
            .map(|n| index_of.get(n.as_str()).copied())
            .collect();
        if let Some(bad) = resolved.iter().position(Option::is_none) {
            let bad = bad as u16;
            let (tenant, kind) = tenants
                .iter()
                .find(|(_, _, v)| *v == bad)
                .map(|(t, k, _)| (String::from_utf8_lossy(t).into_owned(), k))
                .unwrap_or((String::new(), EntryKind::Override));
            let field = if kind == EntryKind::Pin {
                "pins"
            } else {
                "overrides"
            };
            let name = self
                .names
                .names
                .get(usize::from(bad))
                .cloned()
                .unwrap_or_default();
            return Err(PathError::new(
                key_path([field, tenant.as_str()]),
                format!("unknown cell {name:?}"),
            ));
        }
        tenants.map_values(|_, v| resolved.get(usize::from(v)).copied().flatten().unwrap_or(0));

        let mut moves = Vec::with_capacity(self.moves.len());
        for (i, m) in self.moves.iter().enumerate() {
            let path = index_path("moves", i);
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
            let index = u16::try_from(i)
                .map_err(|_| PathError::new(path.clone(), "too many moves (at most 65535)"))?;
            tenants
                .push(m.tenant.as_bytes(), EntryKind::Move, index)
                .map_err(|e| PathError::new(format!("{path}.tenant"), e.to_string()))?;
            moves.push(Move {
                tenant: m.tenant.clone(),
                from,
                to,
                percent: m.percent,
                to_basis_points: ratio_to_basis_points(m.percent / 100.0),
            });
        }

        if let Err(dup) = tenants.build_index(|t| key.hash(t)) {
            let (tenant, kind, value) = tenants.entry(dup).unwrap_or((b"", EntryKind::Override, 0));
            let tenant = String::from_utf8_lossy(tenant).into_owned();
            let path = match kind {
                EntryKind::Override => key_path(["overrides", tenant.as_str()]),
                EntryKind::Pin => key_path(["pins", tenant.as_str()]),
                EntryKind::Move => format!("{}.tenant", index_path("moves", usize::from(value))),
            };
            return Err(PathError::new(
                path,
                format!("tenant {tenant:?} appears more than once in overrides, pins and moves"),
            ));
        }

        Ok(Snapshot {
            version,
            generated_at,
            key,
            cells,
            slot_table,
            tenants,
            moves,
        })
    }
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

fn decode_slot_table(b64: &str, slots: u32, cells: usize) -> Result<Vec<u16>, PathError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| {
            PathError::new(
                "$.slot_table",
                format!("invalid base64 (standard alphabet, padded): {e}"),
            )
        })?;
    let expected = slots as usize * 2;
    if bytes.len() != expected {
        return Err(PathError::new(
            "$.slot_table",
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
        if usize::from(index) >= cells {
            let mut path = String::from("$");
            push_key(&mut path, "slot_table");
            return Err(PathError::new(
                path,
                format!("slot {slot} points at cell index {index}, but there are {cells} cells"),
            ));
        }
        table.push(index);
    }
    Ok(table)
}
