//! Draining a cell in small steps (`cellmap drain`, `SPEC.md`, "Draining in
//! steps"): from the snapshot in force, a series of snapshots in which a
//! growing share of the cell's tenants is routed to other cells, until none
//! is left. Nothing is shed: the cell keeps serving the tenants not yet moved,
//! and each moved tenant is served by its new cell from then on (it never
//! comes back within the series).
//!
//! Step `k` of `n` (share `p = min(k·step, 100 %)`):
//! - the first `⌊D·p⌋` of the cell's `D` slots (ascending) belong to the
//!   cells that take them; the other cells' slots never change;
//! - the first `⌊P·p⌋` of the `P` pins to the cell (in the order of their
//!   tenant hash) are released: those tenants follow their slot, whose owner
//!   is another cell by then or soon;
//! - pins to other cells that the ring now gives anyway are dropped.
//!
//! Format 2: the same within the cell's pool and region: its slots in that
//! pool's table for its region go to the other active cells of the pool and
//! region, and that pool's pins are the ones released or dropped. No other
//! table, pool or home region changes.

use super::allocate_slots;
use super::load::{Breach, Load};
use crate::error::{PathError, index_path, push_key};
use crate::pools::PooledSnapshotDoc;
use crate::snapshot::{CellDoc, CellState, MoveDoc, Snapshot, SnapshotDoc, encode_slot_table};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What to drain, and how.
#[derive(Clone, Copy, Debug)]
pub struct DrainOptions<'a> {
    /// The cell to drain.
    pub cell: &'a str,
    /// The share moved per step, in basis points (100 = 1 %), 1 … 10,000.
    pub step_basis_points: u16,
    /// With a load file, the cell's slots go to the other active cells by
    /// `weight × headroom` (none to a closed cell), else by weight.
    pub load: Option<&'a Load>,
    /// `generated_at` of every step.
    pub generated_at: &'a str,
}

/// A cell that takes part of the drained cell's slots.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Receiver {
    pub id: String,
    pub weight: f64,
    /// With a load file: the cell's headroom.
    pub headroom: Option<f64>,
    /// Slots it holds at the start.
    pub slots_before: u32,
    /// Of the drained cell's slots, how many it takes by the last step.
    pub slots_taken: u32,
}

/// The plan, for the operator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainReport {
    pub cell: String,
    /// The version drained from; step `k` has version `from_version + k`.
    pub from_version: u64,
    pub step_basis_points: u16,
    pub steps: usize,
    /// The cell's slots and pins at the start.
    pub slots: u32,
    pub pins: usize,
    /// The state the cell has in every step (an active cell becomes
    /// `draining` with no shedding).
    pub state: CellState,
    pub receivers: Vec<Receiver>,
    /// Active cells that take none of its slots because they are at or over
    /// a threshold of the load file.
    pub closed: Vec<(String, Vec<Breach>)>,
    /// Things the operator should know (shedding left on, failovers into
    /// the cell).
    pub notes: Vec<String>,
}

/// One snapshot of the series.
#[derive(Clone, Debug)]
pub struct DrainStep {
    /// 1 … `steps`.
    pub number: usize,
    /// The share of the cell's slots and pins moved so far, in basis points.
    pub basis_points: u16,
    pub version: u64,
    /// The snapshot, exactly the bytes to write.
    pub json: String,
    /// `json` parsed back and validated.
    pub snapshot: Snapshot,
    /// The cell's slots and pins left.
    pub slots_on_cell: u32,
    pub pins_on_cell: usize,
    /// Since the start: slots given to other cells, pins to the cell
    /// released, pins elsewhere dropped because the ring now agrees.
    pub slots_moved: u32,
    pub pins_released: usize,
    pub pins_dropped: usize,
}

/// A computed drain: the report, and each step on demand (a series of a
/// hundred snapshots of a million pins each need not be held at once).
#[derive(Clone, Debug)]
pub struct DrainPlan {
    pub report: DrainReport,
    base: BaseDoc,
    /// `generated_at` of every step.
    generated_at: String,
    table: Vec<u16>,
    /// The cell's slots, ascending, each with the cell that takes it.
    drained: Vec<(usize, u16)>,
    /// Tenants pinned to the cell, in release order.
    pinned: Vec<String>,
    /// Pins to other cells whose slot is drained to that very cell: dropped
    /// once the slot has moved (index into `drained`, tenant).
    redundant: Vec<(usize, String)>,
}

/// The snapshot every step starts from, in its owned form.
#[derive(Clone, Debug)]
enum BaseDoc {
    Format1(SnapshotDoc),
    /// Format 2: only the drained cell's pool's table for its region, and
    /// that pool's pins, change.
    Format2 {
        doc: PooledSnapshotDoc,
        pool: usize,
        region: String,
    },
}

impl BaseDoc {
    /// `$.overrides` or `$.pools[i].overrides`: where the drained cell's
    /// pool keeps `field`.
    fn path(&self, field: &str) -> String {
        let mut path = match self {
            BaseDoc::Format1(_) => String::from("$"),
            BaseDoc::Format2 { pool, .. } => index_path("pools", *pool),
        };
        push_key(&mut path, field);
        path
    }

    fn overrides(&self) -> BTreeMap<String, String> {
        match self {
            BaseDoc::Format1(doc) => doc.overrides.clone(),
            BaseDoc::Format2 { doc, pool, .. } => doc
                .pools
                .get(*pool)
                .map(|p| p.overrides.clone())
                .unwrap_or_default(),
        }
    }

    fn moves(&self) -> Vec<MoveDoc> {
        match self {
            BaseDoc::Format1(doc) => doc.moves.clone(),
            BaseDoc::Format2 { doc, pool, .. } => doc
                .pools
                .get(*pool)
                .map(|p| p.moves.clone())
                .unwrap_or_default(),
        }
    }

    fn pins(&self) -> BTreeMap<String, String> {
        match self {
            BaseDoc::Format1(doc) => doc.pins.clone(),
            BaseDoc::Format2 { doc, pool, .. } => doc
                .pools
                .get(*pool)
                .map(|p| p.pins.clone())
                .unwrap_or_default(),
        }
    }

    fn cells(&self) -> Vec<CellDoc> {
        match self {
            BaseDoc::Format1(doc) => doc.cells.clone(),
            BaseDoc::Format2 { doc, .. } => doc.cells.iter().map(|c| c.cell()).collect(),
        }
    }

    /// Whether cell `i` shares the drained cell's pool and region (every
    /// cell does in format 1).
    fn in_group(&self, i: usize) -> bool {
        match self {
            BaseDoc::Format1(_) => true,
            BaseDoc::Format2 { doc, pool, region } => {
                let pool_id = doc.pools.get(*pool).map(|p| p.id.as_str());
                doc.cells
                    .get(i)
                    .is_some_and(|c| Some(c.pool.as_str()) == pool_id && c.region == *region)
            }
        }
    }

    fn set_state(&mut self, i: usize, state: CellState, shed_ratio: f64) {
        match self {
            BaseDoc::Format1(doc) => {
                if let Some(c) = doc.cells.get_mut(i) {
                    c.state = state;
                    c.shed_ratio = shed_ratio;
                }
            }
            BaseDoc::Format2 { doc, .. } => {
                if let Some(c) = doc.cells.get_mut(i) {
                    c.state = state;
                    c.shed_ratio = shed_ratio;
                }
            }
        }
    }

    /// The step's document: version, generated_at, the drained table and
    /// the pins left.
    fn step_json(
        &self,
        version: u64,
        generated_at: &str,
        table: &[u16],
        gone: &BTreeSet<&str>,
    ) -> String {
        match self.clone() {
            BaseDoc::Format1(mut doc) => {
                doc.version = version;
                doc.generated_at = generated_at.to_string();
                doc.slot_table = encode_slot_table(table);
                doc.pins.retain(|t, _| !gone.contains(t.as_str()));
                doc.to_json()
            }
            BaseDoc::Format2 {
                mut doc,
                pool,
                region,
            } => {
                doc.version = version;
                doc.generated_at = generated_at.to_string();
                if let Some(p) = doc.pools.get_mut(pool) {
                    p.slot_tables.insert(region, encode_slot_table(table));
                    p.pins.retain(|t, _| !gone.contains(t.as_str()));
                }
                doc.to_json()
            }
        }
    }
}

/// Plans the drain of `options.cell` from `current`.
///
/// Refused: an unknown cell; a cell with nothing to drain; an override or a
/// gradual move naming the cell (deliberate placements: change them in the
/// spec first); a disabled cell failing over to it (its requests would keep
/// arriving); no other active cell able to take its slots.
pub fn plan(current: &Snapshot, options: &DrainOptions<'_>) -> Result<DrainPlan, PathError> {
    let step = options.step_basis_points;
    if step == 0 || step > 10_000 {
        return Err(PathError::new(
            "$",
            format!("the step must be 1 … 10000 basis points (0.01 % … 100 %), got {step}"),
        ));
    }
    let Some(index) = current.cell_index(options.cell) else {
        return Err(PathError::new(
            "$.cells",
            format!("no cell {:?} in the snapshot", options.cell),
        ));
    };
    // Format 2: the cell's pool's table for the cell's region is drained,
    // to cells of that pool and region; nothing else changes.
    let (mut base, table) = if current.format() >= 2 {
        let cell = current
            .cell(index)
            .ok_or_else(|| PathError::new("$.cells", "internal error: cell index"))?;
        let pool = current
            .pool(cell.pool)
            .ok_or_else(|| PathError::new("$.cells", "internal error: pool index"))?;
        let region = current
            .region(cell.region)
            .map(|r| r.id.clone())
            .unwrap_or_default();
        (
            BaseDoc::Format2 {
                doc: current.to_pooled_doc(),
                pool: usize::from(cell.pool),
                region,
            },
            pool.slot_table(cell.region).to_vec(),
        )
    } else {
        (
            BaseDoc::Format1(current.to_doc()),
            current.slot_table().to_vec(),
        )
    };
    let name = options.cell;
    let cells = base.cells();

    if let Some(tenant) = base
        .overrides()
        .iter()
        .find(|(_, c)| c.as_str() == name)
        .map(|(t, _)| t)
    {
        let mut path = base.path("overrides");
        push_key(&mut path, tenant);
        return Err(PathError::new(
            path,
            format!(
                "overrides {tenant:?} to {name}, the cell being drained; an override is a deliberate placement: change it in the spec and build first"
            ),
        ));
    }
    for (i, m) in base.moves().iter().enumerate() {
        for (field, cell) in [("from", &m.from), ("to", &m.to)] {
            if cell == name {
                return Err(PathError::new(
                    format!("{}[{i}].{field}", base.path("moves")),
                    format!(
                        "the gradual move of {:?} names {name}, the cell being drained: finish or remove it in the spec and build first",
                        m.tenant
                    ),
                ));
            }
        }
    }
    let mut notes = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        if c.failover.as_deref() != Some(name) {
            continue;
        }
        if c.state == CellState::Disabled {
            return Err(PathError::new(
                format!("{}.failover", index_path("cells", i)),
                format!(
                    "{} is disabled and fails over to {name}, the cell being drained: its requests would keep arriving; change its failover first",
                    c.id
                ),
            ));
        }
        notes.push(format!(
            "{} fails over to {name}: were {} disabled, its requests would go there",
            c.id, c.id
        ));
    }

    if let Some(load) = options.load {
        let group: Vec<CellDoc> = cells
            .iter()
            .enumerate()
            .filter(|(i, _)| base.in_group(*i))
            .map(|(_, c)| c.clone())
            .collect();
        load.check_cells(&group, Some(name), "snapshot")?;
    }
    let key = current.key();
    let pins = base.pins();
    let drained_slots: Vec<usize> = table
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == index)
        .map(|(s, _)| s)
        .collect();
    let mut pinned: Vec<(u64, String)> = pins
        .iter()
        .filter(|(_, c)| c.as_str() == name)
        .map(|(t, _)| (key.hash(t.as_bytes()), t.clone()))
        .collect();
    pinned.sort();
    if drained_slots.is_empty() && pinned.is_empty() {
        return Err(PathError::new(
            "$.cells",
            format!("{name} holds no slots and no pins: nothing to drain"),
        ));
    }

    // Who takes the slots: the other active cells (of the cell's pool and
    // region) by weight, or by weight × headroom with a load file.
    let candidates: Vec<usize> = cells
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            *i != usize::from(index) && c.state == CellState::Active && base.in_group(*i)
        })
        .map(|(i, _)| i)
        .collect();
    let weights: Vec<CellDoc> = candidates
        .iter()
        .filter_map(|&i| cells.get(i))
        .map(|c| CellDoc {
            weight: options.load.map_or(c.weight, |l| l.effective_weight(c)),
            ..c.clone()
        })
        .collect();
    let drained_count = u32::try_from(drained_slots.len()).unwrap_or(u32::MAX);
    let local = allocate_slots(drained_count, &weights, None).map_err(|_| {
        PathError::new(
            "$.cells",
            format!(
                "no active cell other than {name} can take its {drained_count} slots (each has weight 0{})",
                if options.load.is_some() {
                    " or is at or over a threshold of the load file"
                } else {
                    ""
                }
            ),
        )
    })?;
    let drained: Vec<(usize, u16)> = drained_slots
        .iter()
        .zip(&local)
        .filter_map(|(&slot, &r)| {
            let cell = candidates.get(usize::from(r))?;
            Some((slot, u16::try_from(*cell).ok()?))
        })
        .collect();

    // Pins elsewhere that the ring will agree with once their slot moves.
    let order: BTreeMap<usize, (usize, u16)> = drained
        .iter()
        .enumerate()
        .map(|(j, &(slot, to))| (slot, (j, to)))
        .collect();
    let slots = table.len().max(1) as u64;
    // (Format 2: pins to cells of the drained table's region only; a pin
    // to another region's cell uses that region's table.)
    let group_ids: BTreeSet<&str> = cells
        .iter()
        .enumerate()
        .filter(|(i, _)| base.in_group(*i))
        .map(|(_, c)| c.id.as_str())
        .collect();
    let redundant: Vec<(usize, String)> = pins
        .iter()
        .filter(|(_, c)| c.as_str() != name && group_ids.contains(c.as_str()))
        .filter_map(|(t, c)| {
            let slot = (key.hash(t.as_bytes()) % slots) as usize;
            let &(j, to) = order.get(&slot)?;
            let to_id = cells.get(usize::from(to)).map(|c| c.id.as_str());
            (to_id == Some(c.as_str())).then(|| (j, t.clone()))
        })
        .collect();

    // The cell's state in every step: an active cell is draining, without
    // shedding; a draining or disabled one keeps its state.
    let cell_doc = cells
        .get(usize::from(index))
        .ok_or_else(|| PathError::new("$.cells", "internal error: cell index"))?;
    let mut state = cell_doc.state;
    match cell_doc.state {
        CellState::Active => {
            base.set_state(usize::from(index), CellState::Draining, 0.0);
            state = CellState::Draining;
        }
        CellState::Draining if cell_doc.shed_ratio > 0.0 => notes.push(format!(
            "{name} is already draining with shed_ratio {}: it keeps shedding that share of the requests it still gets",
            cell_doc.shed_ratio
        )),
        CellState::Draining => {}
        CellState::Disabled => notes.push(format!(
            "{name} is disabled: its tenants are served by its failover until their slot moves"
        )),
    }

    let steps = usize::from(10_000u16.div_ceil(step));
    current
        .version()
        .checked_add(steps as u64)
        .ok_or_else(|| PathError::new("$.version", "too close to u64::MAX for the series"))?;
    let mut taken = vec![0u32; cells.len()];
    for &(_, to) in &drained {
        if let Some(t) = taken.get_mut(usize::from(to)) {
            *t += 1;
        }
    }
    let mut before = vec![0u32; cells.len()];
    for &c in &table {
        if let Some(b) = before.get_mut(usize::from(c)) {
            *b += 1;
        }
    }
    let receivers = candidates
        .iter()
        .zip(&weights)
        .map(|(&i, w)| Receiver {
            id: w.id.clone(),
            weight: cells.get(i).map_or(0.0, |c| c.weight),
            headroom: options.load.and_then(|l| l.cell(&w.id)).map(|l| l.headroom),
            slots_before: before.get(i).copied().unwrap_or(0),
            slots_taken: taken.get(i).copied().unwrap_or(0),
        })
        .collect();
    let closed = match options.load {
        None => Vec::new(),
        Some(load) => candidates
            .iter()
            .filter_map(|&i| cells.get(i))
            .filter_map(|c| {
                let l = load.cell(&c.id)?;
                l.is_closed().then(|| (c.id.clone(), l.closed_by.clone()))
            })
            .collect(),
    };

    Ok(DrainPlan {
        report: DrainReport {
            cell: name.to_string(),
            from_version: current.version(),
            step_basis_points: step,
            steps,
            slots: drained_count,
            pins: pinned.len(),
            state,
            receivers,
            closed,
            notes,
        },
        base,
        generated_at: options.generated_at.to_string(),
        table,
        drained,
        pinned: pinned.into_iter().map(|(_, t)| t).collect(),
        redundant,
    })
}

impl DrainPlan {
    /// The number of steps.
    pub fn steps(&self) -> usize {
        self.report.steps
    }

    /// Step `number` (1 … `steps()`), validated.
    pub fn step(&self, number: usize) -> Result<DrainStep, PathError> {
        let steps = self.report.steps;
        if number == 0 || number > steps {
            return Err(PathError::new(
                "$",
                format!("step {number} out of 1 … {steps}"),
            ));
        }
        let basis_points = if number == steps {
            10_000
        } else {
            (number as u64 * u64::from(self.report.step_basis_points)).min(10_000) as u16
        };
        let share = |n: usize| (n as u64 * u64::from(basis_points) / 10_000) as usize;
        let slots_moved = share(self.drained.len());
        let pins_released = share(self.pinned.len());

        let mut table = self.table.clone();
        for &(slot, to) in self.drained.iter().take(slots_moved) {
            if let Some(s) = table.get_mut(slot) {
                *s = to;
            }
        }
        let version = self.report.from_version + number as u64;
        let mut gone: BTreeSet<&str> = self
            .pinned
            .iter()
            .take(pins_released)
            .map(String::as_str)
            .collect();
        let dropped: Vec<&str> = self
            .redundant
            .iter()
            .filter(|(j, _)| *j < slots_moved)
            .map(|(_, t)| t.as_str())
            .collect();
        let pins_dropped = dropped.len();
        gone.extend(dropped);

        let json = self
            .base
            .step_json(version, &self.generated_at, &table, &gone);
        let snapshot = Snapshot::parse(json.as_bytes())?;
        Ok(DrainStep {
            number,
            basis_points,
            version,
            json,
            snapshot,
            slots_on_cell: (self.drained.len() - slots_moved) as u32,
            pins_on_cell: self.pinned.len() - pins_released,
            slots_moved: slots_moved as u32,
            pins_released,
            pins_dropped,
        })
    }
}
